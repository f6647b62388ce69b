//! `graph-emulator` binary: parse flags, bind, call `graph_emulator::serve`,
//! print the URLs clients need, stop on SIGINT/SIGTERM. Nothing else.

use anyhow::Context as _;
use clap::Parser;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

/// A local Microsoft Graph (SharePoint) + Entra ID token service.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Address to listen on (`127.0.0.1:0` picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Data directory (content, sessions, metadata snapshot); a temporary
    /// one, removed on exit, when absent.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Serve HTTPS with this PEM certificate chain (needs `--tls-key`;
    /// build with the `tls` feature).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for `--tls-cert`.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Fault spec, e.g. `upload:429:retry-after=2:count=3,graph:503:rate=0.05,seed=42`.
    #[arg(long)]
    faults: Option<String>,
    /// Latency added to every request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency: u64,
    /// Accept only this client_id (any is accepted by default).
    #[arg(long)]
    client_id: Option<String>,
    /// Secret accepted by client credentials.
    #[arg(long, default_value = "emulator-secret")]
    client_secret: String,
    /// PEM certificate whose key may sign client assertions (repeatable;
    /// build with the `cert-auth` feature).
    #[arg(long = "client-certificate")]
    client_certificates: Vec<PathBuf>,
    /// Access token lifetime in seconds.
    #[arg(long, default_value_t = 3599)]
    token_lifetime: u64,
    /// Device code polling interval in seconds (polling faster: slow_down).
    #[arg(long, default_value_t = 5)]
    device_code_interval: u64,
    /// Upload session lifetime (extended by each fragment), in seconds.
    #[arg(long, default_value_t = 900)]
    session_lifetime: u64,
    /// Largest simple upload in bytes (the strict side of graph-api.md §3:
    /// 4 MB in older OneDrive docs; Graph v1.0 documents 250 MB).
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    simple_upload_max: u64,
    /// Quota per library in bytes.
    #[arg(long, default_value_t = 1 << 40)]
    quota: u64,
    /// Accept a refresh token again after it has been used (the service
    /// tolerates reuse for a while); by default it is refused after its
    /// first use, the strict side.
    #[arg(long)]
    allow_refresh_token_reuse: bool,
    /// Append bytes to Office/PDF/HTML files after upload, as SharePoint does.
    #[arg(long)]
    rewrite_office: bool,
    /// Accept an Authorization header on upload URLs (the service may not).
    #[arg(long)]
    lenient_upload_auth: bool,
    /// Tenant domain.
    #[arg(long, default_value = "contoso.onmicrosoft.com")]
    tenant: String,
    /// SharePoint host name.
    #[arg(long, default_value = "contoso.sharepoint.com")]
    hostname: String,
    /// Extra site (server-relative path, e.g. `/sites/Finance`); repeatable.
    /// Each has one library "Documents". `/sites/demo` always exists.
    #[arg(long = "site")]
    sites: Vec<String>,
    /// Extra library of `/sites/demo` besides "Documents"; repeatable.
    #[arg(long = "library")]
    libraries: Vec<String>,
    /// Do not throttle requests sent inside a Retry-After window.
    #[arg(long)]
    no_enforce_retry_after: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let cli = Cli::parse();
    let tls = match (cli.tls_cert, cli.tls_key) {
        (Some(cert), Some(key)) => Some(graph_emulator::TlsFiles { cert, key }),
        _ => None,
    };
    let mut opts = graph_emulator::Options {
        tls,
        data_dir: cli.data,
        faults: cli.faults,
        latency: Duration::from_millis(cli.latency),
        client_id: cli.client_id,
        client_secret: cli.client_secret,
        client_certificates: cli.client_certificates,
        token_lifetime: Duration::from_secs(cli.token_lifetime),
        device_code_interval: Duration::from_secs(cli.device_code_interval),
        session_lifetime: Duration::from_secs(cli.session_lifetime),
        simple_upload_max: cli.simple_upload_max,
        quota_bytes: cli.quota,
        invalidate_old_refresh_tokens: !cli.allow_refresh_token_reuse,
        rewrite_office: cli.rewrite_office,
        strict: !cli.lenient_upload_auth,
        enforce_retry_after: !cli.no_enforce_retry_after,
        tenant: cli.tenant,
        hostname: cli.hostname,
        ..Default::default()
    };
    opts.sites[0].libraries.extend(cli.libraries);
    for s in cli.sites {
        opts.sites.push(graph_emulator::SiteOptions {
            path: s,
            libraries: vec!["Documents".into()],
        });
    }
    let listener = tokio::net::TcpListener::bind(&cli.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    let handle = graph_emulator::serve(listener, opts, shutdown_signal())
        .await
        .context("cannot start the emulator")?;
    let info = handle.info();
    let mut out = std::io::stdout().lock();
    writeln!(out, "graph-emulator listening on {}", handle.url())?;
    writeln!(out, "authority {}", handle.authority())?;
    writeln!(out, "graph_url {}", handle.graph_url())?;
    writeln!(
        out,
        "tenant {}",
        info["tenant"].as_str().unwrap_or_default()
    )?;
    writeln!(
        out,
        "site_url {}",
        info["site_url"].as_str().unwrap_or_default()
    )?;
    writeln!(
        out,
        "drive_id {}",
        info["drive_id"].as_str().unwrap_or_default()
    )?;
    out.flush()?;
    drop(out);
    handle.join().await.context("server failed")?;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
