//! The gRPC control service (`proto/sluice.proto`) on `--control`. `UMCTL` on the data
//! port calls the same code (see [`crate::umctl`]).

use crate::state::{Applied, ConfigError, Shared};
use crate::status;
use sluice_common::model::ProxyConfig;
use sluice_proto::control::{
    MigrationTask, SetConfigReply, SetConfigRequest, StatusReply, StatusRequest, TmpSwitchReply, TmpSwitchRequest,
};
use sluice_proto::{ProxyControl, ProxyControlServer};
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
pub fn set_config_json(shared: &Shared, json: &[u8]) -> Result<Applied, ConfigError> {
    let config: ProxyConfig =
        serde_json::from_slice(json).map_err(|e| ConfigError::Invalid(format!("invalid config JSON: {e}")))?;
    shared.apply_config(config)
}

/// The temporary switch of a migration. No migration runs on a proxy yet, so every request
/// names a migration this proxy does not have.
pub fn tmp_switch(shared: &Shared, migration_id: &str, epoch: u64) -> Result<(), String> {
    let routes = shared.routes();
    if !routes.config.migrations.iter().any(|m| m.id == migration_id && m.epoch == epoch) {
        return Err(format!("no migration {migration_id} started at epoch {epoch} on this proxy"));
    }
    Err(format!("migration {migration_id}: this proxy cannot run migrations yet"))
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
        let applied = self.shared.apply_config(config).map_err(to_status)?;
        Ok(Response::new(SetConfigReply {
            epoch: self.shared.epoch(),
            changed: matches!(applied, Applied::Updated { .. }),
        }))
    }

    async fn tmp_switch(&self, request: Request<TmpSwitchRequest>) -> Result<Response<TmpSwitchReply>, Status> {
        let req = request.into_inner();
        tmp_switch(&self.shared, &req.migration_id, req.epoch).map_err(Status::failed_precondition)?;
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
            migrations: Vec::<MigrationTask>::new(),
        }))
    }
}
