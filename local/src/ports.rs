//! Free loopback ports.

use std::net::TcpListener;

/// A port that was free a moment ago (the kernel picked it). Callers that start a server on
/// it retry with another port if the server cannot bind.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}
