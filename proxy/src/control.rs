//! The gRPC control service (`proto/sluice.proto`) on `--control`. `UMCTL` on the data
//! port calls the same code (see [`crate::umctl`]).

use crate::migration::{destination, keys, phase_name, Role, Task};
use crate::state::{Applied, ConfigError, Shared};
use crate::status;
use sluice_common::model::MigrationMode;
use sluice_common::model::ProxyConfig;
use sluice_proto::control::{
    MigrationTask, SetConfigReply, SetConfigRequest, StatusReply, StatusRequest, TmpSwitchReply, TmpSwitchRequest,
};
use sluice_proto::{ProxyControl, ProxyControlServer};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

pub struct ControlService {
    shared: Arc<Shared>,
}

/// Serves the control service on `listener` until the process ends.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(ProxyControlServer::new(ControlService { shared }))
        .serve_with_incoming(TcpListenerStream::new(listener))
        .await
}

/// Takes a config given as JSON (gRPC `SetConfig` and `UMCTL SETDB`).
pub async fn set_config_json(shared: &Arc<Shared>, json: &[u8]) -> Result<Applied, ConfigError> {
    let config: ProxyConfig =
        serde_json::from_slice(json).map_err(|e| ConfigError::Invalid(format!("invalid config JSON: {e}")))?;
    shared.apply_config(config).await
}

/// The temporary switch of a migration, on its destination: serve the slots (in
/// replication mode once the source has promoted our node).
pub async fn tmp_switch(shared: &Arc<Shared>, migration_id: &str, epoch: u64) -> Result<(), String> {
    let task = destination_task(shared, migration_id, epoch)?;
    match task.meta.mode {
        MigrationMode::Keys => keys::tmp_switch(shared, &task).await,
        _ => destination::tmp_switch(shared, &task).await,
    }
}

/// Whether the destination of a replication-mode migration follows its source, ready to
/// serve once the source promotes its node.
pub async fn ready(shared: &Arc<Shared>, migration_id: &str, epoch: u64) -> Result<(), String> {
    let task = destination_task(shared, migration_id, epoch)?;
    match task.meta.mode {
        MigrationMode::Replication => destination::ready(shared, &task).await,
        _ => Err(format!("migration {migration_id} does not replicate")),
    }
}

fn destination_task(shared: &Shared, migration_id: &str, epoch: u64) -> Result<Arc<Task>, String> {
    shared
        .migrations
        .get(migration_id)
        .filter(|t| t.meta.epoch == epoch && t.role == Role::Destination)
        .ok_or_else(|| format!("no migration {migration_id} started at epoch {epoch} imports into this proxy"))
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
        let applied = self.shared.apply_config(config).await.map_err(to_status)?;
        Ok(Response::new(SetConfigReply {
            epoch: self.shared.epoch(),
            changed: matches!(applied, Applied::Updated { .. }),
        }))
    }

    async fn tmp_switch(&self, request: Request<TmpSwitchRequest>) -> Result<Response<TmpSwitchReply>, Status> {
        let req = request.into_inner();
        tmp_switch(&self.shared, &req.migration_id, req.epoch).await.map_err(Status::failed_precondition)?;
        Ok(Response::new(TmpSwitchReply { switched: true }))
    }

    async fn status(&self, _request: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        let s = status::collect(&self.shared).await;
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
                .shared
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
            clean_epoch: self.shared.gc.clean_epoch.load(Ordering::SeqCst),
        }))
    }
}
