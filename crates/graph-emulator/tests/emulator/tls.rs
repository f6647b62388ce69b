//! HTTPS (feature `tls`): the emulator serves TLS and hands out https URLs.

use crate::common::TENANT;
use graph_emulator::{Options, TlsFiles};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::{TlsConnector, rustls};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// One HTTP/1.1 request over TLS with `Connection: close`.
async fn request(port: u16, method: &str, path: &str, headers: &str, body: &str) -> (u16, Value) {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(fixture("localhost.crt")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\nContent-Length: {}\r\n{headers}\r\n{body}",
        body.len()
    );
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap();
    let status = head[9..12].parse().unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        // One chunk is all these small replies need.
        rest.split_once("\r\n")
            .map(|(_, r)| r)
            .unwrap_or("")
            .rsplit_once("\r\n0")
            .map(|(b, _)| b)
            .unwrap_or("")
            .to_string()
    } else {
        rest.to_string()
    };
    (
        status,
        serde_json::from_str(body.trim()).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn serves_https_and_builds_https_urls() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let opts = Options {
        tls: Some(TlsFiles {
            cert: fixture("localhost.crt"),
            key: fixture("localhost.key"),
        }),
        ..Options::default()
    };
    let emu = graph_emulator::serve(listener, opts, std::future::pending())
        .await
        .unwrap();
    assert!(emu.url().starts_with("https://"));
    let (status, info) = request(port, "GET", "/_emulator/info", "", "").await;
    assert_eq!(status, 200);
    assert_eq!(info["graph_url"], format!("https://localhost:{port}/v1.0"));

    let form = "grant_type=client_credentials&client_id=app&client_secret=emulator-secret&scope=https%3A%2F%2Fgraph.microsoft.com%2F.default";
    let (status, tok) = request(
        port,
        "POST",
        &format!("/{TENANT}/oauth2/v2.0/token"),
        "Content-Type: application/x-www-form-urlencoded\r\n",
        form,
    )
    .await;
    assert_eq!(status, 200);
    let token = tok["access_token"].as_str().unwrap();
    let (status, session) = request(
        port,
        "POST",
        &format!(
            "/v1.0/drives/{}/root:/t.bin:/createUploadSession",
            emu.drive_id()
        ),
        &format!("Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"),
        "{}",
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        session["uploadUrl"]
            .as_str()
            .unwrap()
            .starts_with(&format!("https://localhost:{port}/_upload/"))
    );
    emu.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_bad_certificate_path_is_a_start_error() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let opts = Options {
        tls: Some(TlsFiles {
            cert: fixture("missing.crt"),
            key: fixture("localhost.key"),
        }),
        ..Options::default()
    };
    let err = graph_emulator::serve(listener, opts, std::future::pending())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("missing.crt"), "{err}");
}
