//! The gRPC control service (`proto/sluice.proto`) on `--control`. `UMCTL` on the data
//! port calls the same code (see [`crate::umctl`]).

use crate::migration::error::{refused, MigrationError};
use crate::migration::{destination, filtered, keys_mode, phase_name, Migrations, Role, Task};
use crate::state::{Applied, ConfigError, Shared};
use crate::status;
use sluice_common::model::MigrationMode;
use sluice_common::model::ProxyConfig;
use sluice_proto::control::{
    AdvanceEpochReply, AdvanceEpochRequest, MigrationTask, SetConfigReply, SetConfigRequest, StatusReply,
    StatusRequest, TmpSwitchReply, TmpSwitchRequest,
};
use sluice_proto::{ProxyControl, ProxyControlServer};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};
use tracing::Instrument;

/// What the control operations act on: the proxy's shared state and its migration tasks.
/// Built once at start; the gRPC service and `UMCTL` on the data port hold one each.
#[derive(Clone)]
pub struct Control {
    pub shared: Arc<Shared>,
    pub migrations: Arc<Migrations>,
}

impl Control {
    pub fn new(shared: Arc<Shared>) -> Control {
        Control { shared, migrations: Arc::new(Migrations::default()) }
    }

    /// Takes a config (gRPC `SetConfig` and `UMCTL SETDB`), starting and telling tasks.
    pub async fn set_config(&self, config: ProxyConfig) -> Result<Applied, ConfigError> {
        self.shared.apply_config(config, &*self.migrations).await
    }

    /// Moves the held config to `epoch` if its content has `version` (gRPC `AdvanceEpoch`);
    /// `Ok(None)`: it does not, nothing changed.
    pub async fn advance_epoch(&self, epoch: u64, version: &str) -> Result<Option<Applied>, ConfigError> {
        self.shared.advance_epoch(epoch, version, &*self.migrations).await
    }

    /// Takes a config given as JSON.
    pub async fn set_config_json(&self, json: &[u8]) -> Result<Applied, ConfigError> {
        let config: ProxyConfig =
            serde_json::from_slice(json).map_err(|e| ConfigError::Invalid(format!("invalid config JSON: {e}")))?;
        self.set_config(config).await
    }

    /// The temporary switch of a migration, on its destination: serve the slots (in
    /// replication mode once the source has promoted our node; in filtered mode once the
    /// broker recorded it, unless `attempt` was refused: see [`filtered`]).
    pub async fn tmp_switch(&self, migration_id: &str, epoch: u64, attempt: u64) -> Result<(), MigrationError> {
        let task = self.destination_task(migration_id, epoch)?;
        let switch = async {
            tracing::info!(attempt, "TmpSwitch asked by the source");
            match task.meta.mode {
                MigrationMode::Keys => keys_mode::tmp_switch(&self.shared, &task).await,
                MigrationMode::Filtered => filtered::tmp_switch(&self.shared, &task, attempt).await,
                _ => destination::tmp_switch(&self.shared, &task).await,
            }
        };
        switch.instrument(task.span()).await
    }

    /// Whether the destination of a filtered migration serves its slots; when not, refuses
    /// switch attempts up to `attempt` from now on.
    pub async fn switched(&self, migration_id: &str, epoch: u64, attempt: u64) -> Result<bool, MigrationError> {
        let task = self.destination_task(migration_id, epoch)?;
        match task.meta.mode {
            MigrationMode::Filtered => {
                filtered::switched_or_refuse(&self.shared, &task, attempt).instrument(task.span()).await
            }
            _ => Err(refused!("migration {migration_id} is not filtered")),
        }
    }

    /// Whether the destination of a replication-mode migration follows its source, ready to
    /// serve once the source promotes its node.
    pub async fn ready(&self, migration_id: &str, epoch: u64) -> Result<(), MigrationError> {
        let task = self.destination_task(migration_id, epoch)?;
        match task.meta.mode {
            MigrationMode::Replication => destination::ready(&self.shared, &task).instrument(task.span()).await,
            _ => Err(refused!("migration {migration_id} does not replicate")),
        }
    }

    fn destination_task(&self, migration_id: &str, epoch: u64) -> Result<Arc<Task>, MigrationError> {
        self.migrations
            .get(migration_id)
            .filter(|t| t.meta.epoch == epoch && t.role == Role::Destination)
            .ok_or_else(|| refused!("no migration {migration_id} started at epoch {epoch} imports into this proxy"))
    }
}

pub struct ControlService {
    control: Control,
}

/// Serves the control service on `listener` until the process ends.
pub async fn serve(listener: TcpListener, control: Control) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(ProxyControlServer::new(ControlService { control }))
        .serve_with_incoming(TcpListenerStream::new(listener))
        .await
}

fn to_status(e: ConfigError) -> Status {
    match e {
        ConfigError::Stale { .. } | ConfigError::Conflict { .. } => Status::failed_precondition(e.to_string()),
        ConfigError::WrongProxy { .. } | ConfigError::Invalid(_) => Status::invalid_argument(e.to_string()),
    }
}

#[tonic::async_trait]
impl ProxyControl for ControlService {
    async fn set_config(&self, request: Request<SetConfigRequest>) -> Result<Response<SetConfigReply>, Status> {
        let req = request.into_inner();
        let config: ProxyConfig = serde_json::from_str(&req.config_json)
            .map_err(|e| Status::invalid_argument(format!("invalid config JSON: {e}")))?;
        if config.epoch != req.epoch {
            return Err(Status::invalid_argument(format!(
                "epoch {} of the request differs from epoch {} inside the config",
                req.epoch, config.epoch
            )));
        }
        let applied = self.control.set_config(config).await.map_err(to_status)?;
        Ok(Response::new(SetConfigReply {
            epoch: self.control.shared.epoch(),
            changed: matches!(applied, Applied::Updated { .. }),
            config_version: self.control.shared.config_version(),
        }))
    }

    async fn advance_epoch(
        &self,
        request: Request<AdvanceEpochRequest>,
    ) -> Result<Response<AdvanceEpochReply>, Status> {
        let req = request.into_inner();
        let applied = self.control.advance_epoch(req.epoch, &req.config_version).await.map_err(to_status)?;
        Ok(Response::new(AdvanceEpochReply {
            epoch: self.control.shared.epoch(),
            changed: matches!(applied, Some(Applied::Updated { .. })),
            matched: applied.is_some(),
            config_version: self.control.shared.config_version(),
        }))
    }

    async fn tmp_switch(&self, request: Request<TmpSwitchRequest>) -> Result<Response<TmpSwitchReply>, Status> {
        let req = request.into_inner();
        self.control
            .tmp_switch(&req.migration_id, req.epoch, req.src_offset)
            .await
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        Ok(Response::new(TmpSwitchReply { switched: true }))
    }

    async fn status(&self, _request: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        let s = status::collect(&self.control.shared).await;
        Ok(Response::new(StatusReply {
            proxy: s.proxy,
            node: s.node,
            epoch: s.epoch,
            cluster: s.cluster.unwrap_or_default(),
            node_healthy: s.node_healthy,
            node_error: s.node_error.unwrap_or_default(),
            dbsize: s.dbsize.unwrap_or(-1),
            connected_clients: s.connected_clients as u64,
            migrations: self
                .control
                .migrations
                .reports()
                .into_iter()
                .map(|t| MigrationTask {
                    id: t.id,
                    epoch: t.epoch,
                    phase: phase_name(t.phase),
                    progress_json: t.progress.to_string(),
                    error: t.error.unwrap_or_default(),
                    is_source: t.is_source,
                })
                .collect(),
            clean_epoch: self.control.shared.gc.clean_epoch.load(Ordering::SeqCst),
            repl_role: s.repl_role.unwrap_or_default(),
            repl_offset: s.repl_offset,
            master_link_up: s.master_link_up,
            handover_ready_epoch: self.control.shared.handover_ready.load(Ordering::SeqCst),
            config_version: self.control.shared.config_version(),
        }))
    }
}
