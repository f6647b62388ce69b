//! `sharepush demo`: the whole pipeline with no tenant (cargo feature `demo`).
//!
//! From the repository root, `sharepush --config config/demo.toml demo`:
//!
//! 1. starts the Graph emulator (`graph-emulator`) in this process on the
//!    loopback address and port of the config's `[auth] authority`
//!    (`127.0.0.1:8070`; `--port` overrides, `--port 0` picks a free one),
//!    keeping its data in `<state_dir>/emulator`, so the remote side
//!    persists between runs exactly as the local state does;
//! 2. signs in without a person: the emulator mints a user's refresh token
//!    and the real import path of `sharepush login --refresh-token-file`
//!    stores it in the state dir (and proves it by refreshing once);
//! 3. runs one `sharepush sync` of every job of the config (the same
//!    [`crate::job::sync_jobs`] and the same summary lines);
//! 4. reads the library back through the emulator's inspection API and
//!    prints each remote path, size and quickXorHash, and whether it matches
//!    the local file hashed afresh;
//! 5. keeps running the daemon ([`crate::daemon::serve`], the same one as
//!    `sharepush run`) in this process over the same config: the jobs watch
//!    their source, and every file the emulator commits from then on is
//!    printed as one `uploaded NAME (SIZE) -> LIBRARY/PATH, quickXorHash H`
//!    line, read back from the emulator's library (polled every
//!    [`WATCH_POLL`]). Ctrl-C or SIGTERM stops the daemon and the emulator
//!    cleanly (exit 0).
//!
//! `--once` stops after step 4 (the one-shot demo, what the tests of the
//! first sync and CI use); `--serve` instead keeps only the emulator up
//! until Ctrl-C/SIGTERM, without the daemon. `--source DIR` backs up DIR
//! instead of each job's configured source, so a copy can be edited without
//! touching the repository.
//!
//! A second run finds everything up to date and says that nothing carried
//! file content. Delete the state dir to start over (both sides go).
//!
//! The demo refuses a config whose authority or graph_url is not a plain
//! http loopback URL of one emulator, so it can never upload to a real
//! tenant.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::PathBuf;

use graph_emulator::{Handle, Options, RequestRecord, TreeEntry};

use crate::cli::{DemoArgs, GlobalArgs};
use crate::config::{AuthMode, Config, JobSpec};
use crate::error::ExitCode;
use crate::remote::names;
use crate::scan::{self, ScanOptions};

/// Delegated permissions of the demo user's token (what `login` asks for).
const SCOPE: &str = "Files.ReadWrite.All Sites.ReadWrite.All offline_access";

/// How to run the demo, for messages.
const HOW: &str = "from the repository root: cargo run --release -- --config config/demo.toml demo";

/// How often the watching demo reads the emulator's library for new uploads.
pub const WATCH_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// `sharepush demo [--port P] [--once | --serve] [--source DIR]`.
pub fn run(
    global: &GlobalArgs,
    args: &DemoArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> ExitCode {
    if !global.config.exists() {
        let _ = writeln!(
            err,
            "error: {} does not exist; the demo runs with the bundled config, {HOW}",
            global.config.display()
        );
        return ExitCode::Config;
    }
    let mut config = match crate::commands::load_config(global, err) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Some(dir) = &args.source {
        let dir = match fs::canonicalize(dir) {
            Ok(d) if d.is_dir() => d,
            Ok(_) => {
                let _ = writeln!(err, "error: --source {}: not a directory", dir.display());
                return ExitCode::Usage;
            }
            Err(e) => {
                let _ = writeln!(err, "error: --source {}: {e}", dir.display());
                return ExitCode::Usage;
            }
        };
        for job in &mut config.jobs {
            job.source = dir.clone();
        }
    }
    let addr = match listen_address(&config, args.port) {
        Ok(a) => a,
        Err(why) => {
            let _ = writeln!(
                err,
                "error: {}: {why}. `sharepush demo` only talks to the emulator it starts; {HOW}",
                config.path.display()
            );
            return ExitCode::Config;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(err, "error: cannot start the async runtime: {e}");
            return ExitCode::TempFail;
        }
    };
    let code = rt.block_on(demo(config, addr, args, out, err));
    // Blocking work still in flight (a scan, a watcher thread) is not
    // waited for beyond this, as in `sharepush run`.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

/// The address to serve on: the config's loopback authority, with `port`
/// instead of its port when given. Refuses anything that could reach a
/// real tenant.
fn listen_address(config: &Config, port: Option<u16>) -> Result<SocketAddr, String> {
    let authority = config.auth.authority.trim_end_matches('/');
    let graph = config.auth.graph_url.trim_end_matches('/');
    let Some(host_port) = authority.strip_prefix("http://") else {
        return Err(format!(
            "[auth] authority is {authority:?}; the demo serves plain http on loopback \
             (authority = \"http://127.0.0.1:8070\")"
        ));
    };
    if graph != format!("{authority}/v1.0") {
        return Err(format!(
            "[auth] graph_url is {graph:?}; the demo needs \"{authority}/v1.0\""
        ));
    }
    let (host, config_port) = match host_port.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => (h, p.parse::<u16>().ok()),
        _ => (host_port, None),
    };
    let ip = match host.trim_start_matches('[').trim_end_matches(']') {
        "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
        h => match h.parse::<IpAddr>() {
            Ok(ip) if ip.is_loopback() => ip,
            _ => {
                return Err(format!(
                    "[auth] authority {authority:?} is not a loopback address"
                ));
            }
        },
    };
    let port = match (port, config_port) {
        (Some(p), _) | (None, Some(p)) => p,
        (None, None) => {
            return Err(format!(
                "[auth] authority {authority:?} names no port (e.g. http://127.0.0.1:8070)"
            ));
        }
    };
    Ok(SocketAddr::new(
        if ip == IpAddr::V6(Ipv6Addr::LOCALHOST) {
            ip
        } else {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        },
        port,
    ))
}

async fn demo(
    mut config: Config,
    addr: SocketAddr,
    args: &DemoArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> ExitCode {
    let state_dir = config.daemon.state_dir.clone();
    let data_dir = state_dir.join("emulator");
    if let Err(e) = fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&state_dir)
    {
        let _ = writeln!(err, "error: cannot create {}: {e}", state_dir.display());
        return ExitCode::TempFail;
    }

    // 1. The emulator, on the configured port (or --port).
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            let _ = writeln!(
                err,
                "error: cannot listen on {addr}: {e}.{} Run the demo on another port with \
                 `--port {}` (or `--port 0` for any free one).",
                if e.kind() == std::io::ErrorKind::AddrInUse {
                    format!(
                        " Port {} is taken (another `sharepush demo --serve` or graph-emulator?).",
                        addr.port()
                    )
                } else {
                    String::new()
                },
                addr.port().wrapping_add(1).max(1024)
            );
            return ExitCode::TempFail;
        }
    };
    let options = Options {
        data_dir: Some(data_dir.clone()),
        tenant: config.auth.tenant.clone(),
        ..Options::default()
    };
    let emu = match graph_emulator::serve(listener, options, std::future::pending()).await {
        Ok(h) => h,
        Err(e) => {
            let _ = writeln!(err, "error: cannot start the Graph emulator: {e}");
            return ExitCode::TempFail;
        }
    };
    config.auth.authority = emu.authority();
    config.auth.graph_url = emu.graph_url();
    let _ = writeln!(
        out,
        "Graph emulator running in this process at {} (its files: {})",
        emu.url(),
        data_dir.display()
    );

    let code = sign_in_and_sync(&config, &emu, out, err).await;

    let code = if args.serve && code != ExitCode::TempFail {
        serve_until_stopped(&config, &emu, args, out).await;
        code
    } else if !args.once && code != ExitCode::TempFail && code != ExitCode::AuthNeeded {
        watch_until_stopped(&config, &emu, out, err).await
    } else {
        if code == ExitCode::Ok {
            let source = config
                .jobs
                .first()
                .map(|j| j.source.display().to_string())
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "\nRun it again: nothing is re-uploaded. Edit or add a file in {source} and run \
                 it again: exactly that file goes up. Without --once the demo keeps watching \
                 and shows each upload as you edit; `demo --serve` keeps only the emulator \
                 running for curl, rclone or `sharepush sync`. To start over, delete {}.",
                state_dir.display()
            );
        }
        code
    };
    // Writes the emulator's metadata snapshot, so the next run sees the same library.
    if let Err(e) = emu.shutdown().await {
        let _ = writeln!(err, "warning: the emulator stopped with an error: {e}");
    }
    code
}

/// Steps 2-4: sign in, sync, show what arrived.
async fn sign_in_and_sync(
    config: &Config,
    emu: &Handle,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> ExitCode {
    if config.auth.mode == AuthMode::DeviceCode {
        match sign_in(config, emu).await {
            Ok(stored) => {
                let _ = writeln!(
                    out,
                    "Signed in without a person: the emulator minted a user's refresh token and \
                     `login --refresh-token-file` stored it in {}",
                    stored.display()
                );
            }
            Err(why) => {
                let _ = writeln!(err, "error: demo sign-in failed: {why}");
                return ExitCode::AuthNeeded;
            }
        }
    } else {
        let _ = writeln!(out, "App-only sign-in ([auth] mode): nothing to log in to.");
    }

    let jobs: Vec<&JobSpec> = config.jobs.iter().collect();
    for job in &jobs {
        let _ = writeln!(
            out,
            "Syncing job {}: {} -> {} / {} / {}",
            job.name,
            job.source.display(),
            job.site,
            job.library,
            job.folder
        );
    }
    let before = emu.requests().len();
    let reports = match crate::job::sync_jobs(config, &jobs, &Default::default()).await {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return ExitCode::TempFail;
        }
    };
    let mut code = crate::commands::report_sync(&reports, out, err);
    let requests = emu.requests();
    let sync_requests = requests.get(before..).unwrap_or_default();
    let content = sync_requests.iter().filter(|r| carries_content(r)).count();
    let _ = writeln!(
        out,
        "{} request(s) to the emulator, {content} with file content{}",
        sync_requests.len(),
        if content == 0 {
            ": nothing was (re-)uploaded, everything was up to date"
        } else {
            ""
        }
    );

    let tree = emu.tree();
    let mut bad = 0;
    for job in &jobs {
        match show_job(job, &tree, out).await {
            Ok(n) => bad += n,
            Err(e) => {
                let _ = writeln!(err, "error: job {}: cannot read the source: {e}", job.name);
                bad += 1;
            }
        }
    }
    if bad > 0 && code == ExitCode::Ok {
        code = ExitCode::SomeFilesFailed;
    }
    code
}

/// Mints a refresh token through the emulator (the person's part of the
/// device code flow) and imports it the way `sharepush login
/// --refresh-token-file` does. Returns where the token is stored.
async fn sign_in(config: &Config, emu: &Handle) -> Result<PathBuf, String> {
    let reply = emu.user_tokens(&config.auth.client_id, SCOPE);
    let token = reply["refresh_token"]
        .as_str()
        .ok_or_else(|| format!("the emulator sent no refresh token: {reply}"))?;
    let file = config.daemon.state_dir.join("demo-refresh-token");
    let written = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&file)
        .and_then(|mut f| f.write_all(token.as_bytes()));
    if let Err(e) = written {
        return Err(format!("cannot write {}: {e}", file.display()));
    }
    let http = crate::remote::graph::http_client().map_err(|e| e.to_string())?;
    let tokens = crate::remote::auth::TokenProvider::new(
        config.auth.clone(),
        http,
        &config.daemon.state_dir,
        crate::retry::RetryPolicy::default(),
    );
    let imported = crate::remote::auth::import_refresh_token(&tokens, &file).await;
    let _ = fs::remove_file(&file);
    imported.map_err(|e| e.to_string())?;
    Ok(tokens.store().path().to_path_buf())
}

/// A request that sent file bytes: a simple upload, the start of an upload
/// session or one of its fragments.
fn carries_content(r: &RequestRecord) -> bool {
    r.route == "upload"
        || (r.method == "PUT" && r.path.ends_with("/content"))
        || r.path.ends_with("createUploadSession")
}

/// Prints every local file of `job` with its remote path, size and
/// quickXorHash as the emulator stores them, and whether they match the
/// local file (hashed now). Returns how many do not.
async fn show_job(job: &JobSpec, tree: &[TreeEntry], out: &mut dyn Write) -> Result<usize, String> {
    let options = ScanOptions::from(job);
    let report = tokio::task::spawn_blocking(move || scan::scan(&options, HashMap::new()))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let prefix = if job.folder.is_empty() {
        String::new()
    } else {
        format!("{}/", job.folder)
    };
    let remote: HashMap<String, &TreeEntry> =
        tree.iter().map(|e| (e.path.to_lowercase(), e)).collect();
    let _ = writeln!(
        out,
        "\nWhat arrived in {} / {} (read back from the emulator):",
        job.site, job.library
    );
    let _ = writeln!(
        out,
        "  {:>9}  {:<28}  {:<7}  remote path",
        "size", "quickXorHash", "local"
    );
    let (mut good, mut bad) = (0, 0);
    let mut seen = std::collections::HashSet::new();
    for entry in &report.entries {
        let mapped = match names::map_path(
            &entry.path,
            job.settings.invalid_names,
            job.folder.is_empty(),
        ) {
            Ok(m) => m.remote.segments().join("/"),
            Err(problem) => {
                bad += 1;
                let _ = writeln!(
                    out,
                    "  {:>9}  {:<28}  {:<7}  ({}: {problem})",
                    entry.size, "-", "SKIPPED", entry.path
                );
                continue;
            }
        };
        let path = format!("{prefix}{mapped}");
        let local_note = if mapped == entry.path {
            String::new()
        } else {
            format!("   (local: {})", entry.path)
        };
        match remote.get(&path.to_lowercase()) {
            Some(e) => {
                seen.insert(e.path.clone());
                // The demo's own scan hashes every file (`hash_new`).
                let local_qx = entry.hashes.as_ref().map_or("", |h| h.quick_xor.as_str());
                let matches = e.size == entry.size && e.quick_xor_hash == local_qx;
                if matches {
                    good += 1;
                } else {
                    bad += 1;
                }
                let _ = writeln!(
                    out,
                    "  {:>9}  {:<28}  {:<7}  {}{local_note}{}",
                    e.size,
                    e.quick_xor_hash,
                    if matches { "match" } else { "DIFFERS" },
                    e.path,
                    if matches {
                        String::new()
                    } else {
                        format!("; local {} bytes, {local_qx}", entry.size)
                    }
                );
            }
            None => {
                bad += 1;
                let _ = writeln!(
                    out,
                    "  {:>9}  {:<28}  {:<7}  {path}{local_note}",
                    "-", "-", "MISSING"
                );
            }
        }
    }
    for e in tree {
        if e.path.to_lowercase().starts_with(&prefix.to_lowercase()) && !seen.contains(&e.path) {
            let _ = writeln!(
                out,
                "  {:>9}  {:<28}  {:<7}  {}   (no local file: delete = {:?} keeps it)",
                e.size, e.quick_xor_hash, "-", e.path, job.delete
            );
        }
    }
    for s in &report.skipped {
        let _ = writeln!(out, "  skipped locally: {} ({})", s.path, s.reason);
    }
    let _ = writeln!(
        out,
        "{good} of {} file(s) match their local copy (size and quickXorHash).",
        good + bad
    );
    Ok(bad)
}

/// `--serve`: print where the emulator is and wait for Ctrl-C or SIGTERM.
async fn serve_until_stopped(config: &Config, emu: &Handle, args: &DemoArgs, out: &mut dyn Write) {
    let _ = writeln!(
        out,
        "\nThe emulator keeps running until Ctrl-C:\n  authority  {}\n  graph_url  {}\n  \
         files      curl -s {}/_emulator/tree",
        emu.authority(),
        emu.graph_url(),
        emu.url()
    );
    if args.port.is_none() {
        let _ = writeln!(
            out,
            "  sync again sharepush --config {} --state-dir {} sync   (in another terminal)",
            config.path.display(),
            config.daemon.state_dir.display()
        );
    }
    let _ = out.flush();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let terminated = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminated => {}
    }
    let _ = writeln!(out, "Stopping the emulator.");
}

/// Step 5: run the daemon over `config` until Ctrl-C/SIGTERM, printing one
/// line per file the emulator commits (new path, or new size or hash).
async fn watch_until_stopped(
    config: &Config,
    emu: &Handle,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> ExitCode {
    let mut seen: HashMap<String, (u64, String)> = emu
        .tree()
        .into_iter()
        .map(|e| (e.path, (e.size, e.quick_xor_hash)))
        .collect();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (reload_tx, reload_rx) = tokio::sync::mpsc::unbounded_channel();
    let signals = match crate::daemon::signals(shutdown.clone(), reload_tx) {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(err, "error: cannot install signal handlers: {e}");
            return ExitCode::TempFail;
        }
    };
    let options = crate::daemon::DaemonOptions {
        state_dir_override: Some(config.daemon.state_dir.clone()),
        ..crate::daemon::DaemonOptions::default()
    };
    let mut daemon = tokio::spawn(crate::daemon::serve(
        config.clone(),
        options,
        shutdown.clone(),
        reload_rx,
        crate::systemd::Notifier::from_env(),
    ));
    let sources: Vec<String> = config
        .jobs
        .iter()
        .map(|j| j.source.display().to_string())
        .collect();
    let _ = writeln!(
        out,
        "\nWatching {} (debounce {:?}, settle {:?}): edit, add or rename files there and \
         each upload shows here. Ctrl-C stops.",
        sources.join(", "),
        config.defaults.debounce,
        config.defaults.settle
    );
    let _ = out.flush();
    let mut tick = tokio::time::interval(WATCH_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        tokio::select! {
            r = &mut daemon => break Some(r),
            _ = shutdown.cancelled() => break None,
            _ = tick.tick() => print_new_uploads(config, emu, &mut seen, out),
        }
    };
    let result = match result {
        Some(r) => r,
        None => {
            let _ = writeln!(out, "Stopping the daemon and the emulator.");
            match tokio::time::timeout(crate::daemon::STOP_GRACE * 2, daemon).await {
                Ok(r) => r,
                Err(_) => {
                    let _ = writeln!(err, "error: the daemon did not stop in time");
                    return ExitCode::TempFail;
                }
            }
        }
    };
    shutdown.cancel();
    let _ = signals.await;
    // Uploads that landed while stopping.
    print_new_uploads(config, emu, &mut seen, out);
    match result {
        Ok(Ok(())) => ExitCode::Ok,
        Ok(Err(e)) => {
            let _ = writeln!(err, "error: {e}");
            ExitCode::TempFail
        }
        Err(e) => {
            let _ = writeln!(err, "error: the daemon task failed: {e}");
            ExitCode::TempFail
        }
    }
}

/// Prints `uploaded NAME (SIZE) -> LIBRARY/PATH, quickXorHash H` for every
/// file of the emulator's library that is new or changed since `seen`.
fn print_new_uploads(
    config: &Config,
    emu: &Handle,
    seen: &mut HashMap<String, (u64, String)>,
    out: &mut dyn Write,
) {
    for entry in emu.tree() {
        let now = (entry.size, entry.quick_xor_hash.clone());
        if seen.get(&entry.path) == Some(&now) {
            continue;
        }
        // The name relative to the job folder it belongs to.
        let (library, name) = config
            .jobs
            .iter()
            .find_map(|j| {
                let prefix = format!("{}/", j.folder);
                let rel = if j.folder.is_empty() {
                    Some(entry.path.as_str())
                } else {
                    entry
                        .path
                        .get(..prefix.len())
                        .filter(|p| p.eq_ignore_ascii_case(&prefix))
                        .and_then(|_| entry.path.get(prefix.len()..))
                        .filter(|r| !r.is_empty())
                };
                rel.map(|r| (j.library.as_str(), r))
            })
            .unwrap_or(("", entry.path.as_str()));
        let _ = writeln!(
            out,
            "uploaded {name} ({}) -> {}{}, quickXorHash {}",
            crate::commands::human_bytes(entry.size),
            if library.is_empty() {
                String::new()
            } else {
                format!("{library}/")
            },
            entry.path,
            entry.quick_xor_hash
        );
        seen.insert(entry.path, now);
    }
    let _ = out.flush();
}
