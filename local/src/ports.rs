//! Free loopback ports.

use std::net::TcpListener;

/// A port that was free a moment ago (the kernel picked it). Callers that start a server on
/// it retry with another port if the server cannot bind.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

/// A base port for `sluice local --base-port` with `n` proxies: each one's data port, its
/// control port (10000 above) and its metrics port (20000 above) were all free a moment ago.
pub fn free_base_port(n: u16) -> u16 {
    loop {
        let base = free_port();
        if !(20000..=45000).contains(&base) {
            continue;
        }
        let all_free = (0..n)
            .flat_map(|i| [base + i, base + i + 10000, base + i + 20000])
            .all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok());
        if all_free {
            return base;
        }
    }
}
