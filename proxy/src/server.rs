//! The accept loop.

use crate::session;
use crate::state::Shared;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Serves clients on `listener` forever.
pub async fn run(listener: TcpListener, shared: Arc<Shared>) -> std::io::Result<()> {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(session::serve(stream, shared.clone()));
            }
            Err(e) => {
                // Out of file descriptors and similar: log, wait a moment, go on.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}
