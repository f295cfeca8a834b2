//! TLS on the client port (`--tls-cert`, `--tls-key`, `--tls-ca`), with rustls and its
//! `ring` provider (no C toolchain beyond what `ring` needs, no cmake).
//!
//! When TLS is on, the client port speaks TLS only (as Redis with `port 0` and a
//! `tls-port`). The peer proxies' data ports are then TLS too, so forwarding, pulls and the
//! migration switch's `UMCTL` dial them with TLS: trusting `--tls-ca`, or, without it, the
//! last certificate of `--tls-cert` (the chain's root: a self-signed certificate trusts
//! itself). Clients are not asked for certificates.

use crate::options::ProxyOptions;
use crate::socket::Socket;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Why the TLS files could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("cannot use {path} as a trusted certificate: {reason}")]
    BadCa { path: PathBuf, reason: String },
    #[error("TLS configuration refused: {0}")]
    Config(#[from] rustls::Error),
}

/// The server side (clients, peers dialling us) and the client side (us dialling peers).
pub struct Tls {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
}

impl Tls {
    /// The TLS setup of `opts`; `None` when `--tls-cert` is not given (plain TCP).
    pub fn from_options(opts: &ProxyOptions) -> Result<Option<Tls>, TlsError> {
        let (Some(cert), Some(key)) = (&opts.tls_cert, &opts.tls_key) else {
            return Ok(None);
        };
        Tls::load(cert, key, opts.tls_ca.as_deref()).map(Some)
    }

    pub fn load(cert: &Path, key: &Path, ca: Option<&Path>) -> Result<Tls, TlsError> {
        let chain = certificates(cert)?;
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| TlsError::Read { path: key.to_path_buf(), reason: e.to_string() })?;
        // `ring` builds without cmake (aws-lc-rs needs it); rustls deprecates this provider
        // only for its lack of post-quantum key exchange.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());

        let mut roots = rustls::RootCertStore::empty();
        let (trusted, trusted_path) = match ca {
            Some(ca) => (certificates(ca)?, ca),
            // The chain's last certificate: its root, or the certificate itself if self-signed.
            None => (chain.last().cloned().into_iter().collect(), cert),
        };
        for c in trusted {
            roots.add(c).map_err(|e| TlsError::BadCa { path: trusted_path.to_path_buf(), reason: e.to_string() })?;
        }

        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Tls { acceptor: TlsAcceptor::from(Arc::new(server)), connector: TlsConnector::from(Arc::new(client)) })
    }

    /// The server handshake with a client (or a peer proxy) that connected to us.
    pub async fn accept(&self, tcp: TcpStream) -> std::io::Result<Socket> {
        Ok(Socket::TlsServer(Box::new(self.acceptor.accept(tcp).await?)))
    }

    /// The client handshake with the peer proxy at `addr` (`host:port`), whose certificate
    /// must name `host`.
    pub async fn connect(&self, addr: &str, tcp: TcpStream) -> std::io::Result<Socket> {
        let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{host}: {e}")))?;
        Ok(Socket::TlsClient(Box::new(self.connector.connect(name, tcp).await?)))
    }
}

/// Every PEM certificate in `path`; at least one.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read = |e: rustls::pki_types::pem::Error| TlsError::Read { path: path.to_path_buf(), reason: e.to_string() };
    let certs = CertificateDer::pem_file_iter(path).map_err(read)?.collect::<Result<Vec<_>, _>>().map_err(read)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path.to_path_buf() });
    }
    Ok(certs)
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn cert_and_key_go_together() {
        for args in [
            &["sluice-proxy", "--tls-cert", "c.pem"][..],
            &["sluice-proxy", "--tls-key", "k.pem"][..],
            &["sluice-proxy", "--tls-ca", "ca.pem"][..],
        ] {
            assert!(ProxyOptions::try_parse_from(args).is_err(), "{args:?} was accepted");
        }
        let plain = ProxyOptions::parse_from(["sluice-proxy"]);
        assert!(Tls::from_options(&plain).expect("no TLS asked").is_none());
    }

    #[test]
    fn unusable_files_are_named_in_the_error() {
        let dir = std::env::temp_dir().join(format!("sluice-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let missing = dir.join("missing.pem");
        let err = Tls::load(&missing, &missing, None).expect_err("a missing file is refused");
        assert!(matches!(err, TlsError::Read { .. }) && err.to_string().contains("missing.pem"), "{err}");

        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").expect("write");
        let err = Tls::load(&garbage, &garbage, None).expect_err("a file without a certificate is refused");
        assert!(matches!(err, TlsError::NoCertificate { .. }) && err.to_string().contains("garbage.pem"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
