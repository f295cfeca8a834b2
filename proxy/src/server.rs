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

/// Serves clients on `listener` forever.
pub async fn run(listener: TcpListener, control: Control) -> std::io::Result<()> {
    let shared = control.shared.clone();
    let router = Arc::new(Router { control });
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(session::serve(stream, shared.clone(), router.clone()));
            }
            Err(e) => {
                // Out of file descriptors and similar: log, wait a moment, go on.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}
