//! The accept loop, and the top of a client's command path: `UMCTL` (the control commands
//! on the data port) here, everything else through [`dispatch`].

use crate::control::Control;
use crate::session::{self, noauth, Commands, Flow, Session};
use crate::{dispatch, umctl};
use sluice_common::resp::Command;
use std::sync::Arc;
use tokio::net::TcpListener;

/// What a client's commands run through.
struct Router {
    control: Control,
}

impl Commands for Router {
    async fn handle(&self, s: &mut Session, cmd: Command) -> Flow {
        if cmd.name().eq_ignore_ascii_case(b"umctl") {
            if !s.authenticated {
                return s.reply(noauth()).await;
            }
            return umctl::handle(s, cmd, &self.control).await;
        }
        dispatch::handle(s, cmd).await
    }
}

/// Serves clients on `listener` until the proxy shuts down (`Shared::shutdown`), then
/// stops accepting (the listener is closed when this returns).
pub async fn run(listener: TcpListener, control: Control) -> std::io::Result<()> {
    let shared = control.shared.clone();
    let router = Arc::new(Router { control });
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shared.shutdown.cancelled() => return Ok(()),
        };
        match accepted {
            Ok((stream, _)) => {
                let shared = shared.clone();
                let router = router.clone();
                tokio::spawn(async move {
                    // `--maxclients`: a refused client is answered and closed right here.
                    if let Some((stream, slot)) = session::admit(stream, &shared).await {
                        session::serve(stream, shared, router, slot).await;
                    }
                });
            }
            Err(e) => {
                // Out of file descriptors and similar: log, wait a moment, go on.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}
