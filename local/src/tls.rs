//! TLS towards proxies started with `--tls-cert` (their client port speaks TLS only).
//!
//! A proxy started by this crate with TLS is recorded here with the certificate its
//! clients trust, and [`crate::client::RespConn::connect`] speaks TLS to the addresses
//! recorded: every helper (readiness, `UMCTL`, the convergence wait) then works against a
//! TLS deployment unchanged. Tests that must speak plain TCP to such a port open a
//! `TcpStream` themselves.

use anyhow::{anyhow, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use tokio::net::TcpStream;

/// A client configuration trusting given certificates.
#[derive(Clone)]
pub struct ClientTls(Arc<rustls::ClientConfig>);

impl ClientTls {
    /// Trusts every PEM certificate in `ca`.
    pub fn trusting(ca: &Path) -> Result<ClientTls> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).with_context(|| format!("read {}", ca.display()))? {
            roots.add(cert.with_context(|| format!("parse {}", ca.display()))?)?;
        }
        // ring: what the proxy uses; deprecated only for lacking post-quantum key exchange.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(ClientTls(Arc::new(config)))
    }

    /// The TLS handshake over `tcp` with the server at `addr` (`host:port`).
    pub async fn connect(&self, addr: &str, tcp: TcpStream) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
        let name = ServerName::try_from(host.to_string()).map_err(|e| anyhow!("{host}: {e}"))?;
        let connector = tokio_rustls::TlsConnector::from(self.0.clone());
        connector.connect(name, tcp).await.with_context(|| format!("TLS handshake with {addr}"))
    }
}

fn registry() -> &'static Mutex<HashMap<String, ClientTls>> {
    static REGISTRY: OnceLock<Mutex<HashMap<String, ClientTls>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// Records that `addr` speaks TLS (or, with `None`, no longer does).
pub fn set_tls(addr: &str, tls: Option<ClientTls>) {
    let mut map = registry().lock().unwrap_or_else(|p| p.into_inner());
    match tls {
        Some(t) => map.insert(addr.to_string(), t),
        None => map.remove(addr),
    };
}

/// How to reach `addr` with TLS, if it speaks TLS.
pub fn tls_for(addr: &str) -> Option<ClientTls> {
    registry().lock().unwrap_or_else(|p| p.into_inner()).get(addr).cloned()
}
