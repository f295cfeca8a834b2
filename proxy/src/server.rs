//! The accept loop, and the top of a client's command path: `UMCTL` (the control commands
//! on the data port) here, everything else through [`dispatch`].

use crate::control::Control;
use crate::session::{self, noauth, Commands, Flow, Session};
use crate::socket::Socket;
use crate::state::Shared;
use crate::{dispatch, umctl};
use sluice_common::resp::Command;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

/// What a client's commands run through.
struct Router {
    control: Control,
}

impl Commands for Router {
    async fn handle(&self, s: &mut Session, cmd: Command) -> Flow {
        if cmd.name().eq_ignore_ascii_case(b"umctl") {
            if !s.is_authenticated() {
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
            Ok((stream, addr)) => {
                // One span per connection, never one per command: `id` is the CLIENT ID the
                // session takes (recorded by `session::serve`), `peer` the client's address.
                let span = tracing::info_span!("client", id = tracing::field::Empty, peer = %addr);
                tokio::spawn(start_session(stream, addr, shared.clone(), router.clone()).instrument(span));
            }
            Err(e) => {
                // Out of file descriptors and similar: log, wait a moment, go on.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// How long a client may take over its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS handshake when the port speaks TLS (a client that does not is dropped), then the
/// session.
async fn start_session(stream: TcpStream, addr: SocketAddr, shared: Arc<Shared>, router: Arc<Router>) {
    // `--maxclients`: the place is taken before the handshake, the refusal written after it
    // (a TLS client could not read it otherwise).
    let slot = session::admit(&shared);
    let local_addr = stream.local_addr().ok();
    let _ = stream.set_nodelay(true);
    let socket = match &shared.tls {
        None => Socket::Plain(stream),
        Some(tls) => match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
            Ok(Ok(socket)) => socket,
            Ok(Err(e)) => {
                tracing::debug!(client = %addr, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(client = %addr, "no TLS handshake in time");
                return;
            }
        },
    };
    match slot {
        Some(slot) => session::serve(socket, Some(addr), local_addr, shared, router, slot).await,
        None => session::refuse(socket).await,
    }
}
