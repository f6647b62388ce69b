//! HTTPS for the emulator (feature `tls`): a listener that completes the
//! rustls handshake before handing the stream to axum.
//!
//! Only HTTP/1.1 is offered (ALPN `http/1.1`), as the reference clients use.
//! Certificates come from PEM files; this module does not generate them (see
//! the README for a one-line `openssl` command).

use crate::Error;
use axum::serve::Listener;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

/// A TCP listener that yields TLS streams.
pub struct TlsListener {
    /// The bound socket.
    tcp: TcpListener,
    /// Server config (certificate, key, ALPN).
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener")
            .field("tcp", &self.tcp)
            .finish_non_exhaustive()
    }
}

fn tls_err(what: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Tls(format!("{}: {reason}", what.display()))
}

impl TlsListener {
    /// Wrap a bound listener with the certificate chain and key in PEM files.
    pub fn new(tcp: TcpListener, cert: &Path, key: &Path) -> Result<Self, Error> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .map_err(|e| tls_err(cert, e))?
            .collect::<Result<_, _>>()
            .map_err(|e| tls_err(cert, e))?;
        if certs.is_empty() {
            return Err(tls_err(cert, "no certificate found"));
        }
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| tls_err(key, e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| Error::Tls(e.to_string()))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            tcp,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }
}

impl Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (tcp, addr) = match self.tcp.accept().await {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off a little.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            match tokio::time::timeout(Duration::from_secs(10), self.acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => return (tls, addr),
                Ok(Err(e)) => tracing::debug!(error = %e, %addr, "TLS handshake failed"),
                Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}
