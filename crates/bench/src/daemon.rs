//! `idle`, `latency`, `burst` and `change`: the daemon (`sharepush run`) as a child
//! process watching a folder, against graph-emulator started in this process
//! (plain HTTP on 127.0.0.1:0, app-only sign-in), as `tests/it/daemon.rs`
//! does. The daemon's CPU and memory come from `/proc/<pid>/stat`
//! (utime + stime) and `/proc/<pid>/status` (VmHWM, reset through
//! `/proc/<pid>/clear_refs` where a window should not include the startup
//! run); the emulator's own work is in this process and not counted.
//!
//! - `idle`: a tree of `--idle-files` files (default 100,000), uploaded by
//!   the daemon's startup run, then `--idle-minutes` (default 10) with no
//!   change: CPU seconds in that window, scaled per 10 minutes, and the peak
//!   RSS within it. Targets: < 1 CPU-second per 10 minutes, RSS < 64 MiB.
//! - `latency`: `--writes` (default 200) files written one after the other;
//!   for each, the time from closing it until the emulator holds its bytes
//!   (polled every 5 ms). Targets: p50 <= debounce + settle + 300 ms,
//!   p99 <= debounce + settle + 1 s, with `--debounce-ms`/`--settle-ms`
//!   (default 2000/5000, the config defaults).
//! - `burst`: `--burst-files` (default 10,000) files created at once in ten
//!   new folders while watching: all arrive with the right size, none is
//!   uploaded twice (createUploadSession and simple PUT counted per name in
//!   the emulator's request log), peak RSS < 128 MiB.
//! - `change`: what one edited file costs a watching daemon over a large
//!   tree. `--change-files` files (default 20,000, aged so none is racily
//!   clean) are uploaded by the startup run; the baseline is the daemon's
//!   CPU for one full rescan of the unchanged tree (SIGUSR1 asks for a full
//!   run); then 20 files are edited one after the other, each once the last
//!   one arrived, and the daemon's CPU per edit is compared with it.
//!   Target: below half a full rescan (what remains is each run's fixed
//!   work: the delta request, the run's records, status).

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use graph_emulator::{Handle, Options};

use crate::Args;
use crate::measure::{Cost, Row};

const CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";
/// graph-emulator's default client secret.
const SECRET: &str = "emulator-secret";
const FOLDER: &str = "backup";
const MIB_KIB: u64 = 1024;

/// A running `sharepush run`; counts "job run done" lines and keeps the log's tail.
struct Daemon {
    child: Child,
    runs_done: Arc<AtomicUsize>,
    tail: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    fn start(bin: &Path, config: &Path) -> anyhow::Result<Daemon> {
        let mut child = Command::new(bin)
            .arg("--config")
            .arg(config)
            .arg("run")
            .env_remove("RUST_LOG")
            .env_remove("SHAREPUSH_CONFIG")
            .env_remove("SHAREPUSH_STATE_DIR")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {} run", bin.display()))?;
        let stderr = child.stderr.take().context("daemon stderr")?;
        let runs_done = Arc::new(AtomicUsize::new(0));
        let tail = Arc::new(Mutex::new(Vec::new()));
        let (runs, t) = (Arc::clone(&runs_done), Arc::clone(&tail));
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("job run done") {
                    runs.fetch_add(1, Ordering::SeqCst);
                }
                let mut t = t.lock().unwrap_or_else(|e| e.into_inner());
                if t.len() >= 40 {
                    t.remove(0);
                }
                t.push(line);
            }
        });
        Ok(Daemon {
            child,
            runs_done,
            tail,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn tail(&self) -> String {
        self.tail
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n")
    }

    /// Waits until `n` runs have finished (log lines), or fails with the log.
    async fn wait_runs(&mut self, n: usize, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.runs_done.load(Ordering::SeqCst) >= n {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("sharepush run exited ({status}):\n{}", self.tail());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "sharepush run finished no {n}. run within {within:?}:\n{}",
            self.tail()
        )
    }

    /// utime + stime in seconds.
    fn cpu_seconds(&self) -> anyhow::Result<f64> {
        crate::measure::process_cpu_seconds(self.pid())
    }

    /// A `/proc/<pid>/status` value in KiB (VmHWM, VmRSS).
    fn status_kib(&self, key: &str) -> anyhow::Result<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .with_context(|| format!("no {key} in /proc/<pid>/status"))?;
        Ok(line.trim().trim_end_matches("kB").trim().parse()?)
    }

    /// Resets VmHWM to the current RSS (clear_refs 5, Linux >= 4.0).
    fn reset_peak(&self) -> anyhow::Result<()> {
        fs::write(format!("/proc/{}/clear_refs", self.pid()), "5")
            .context("resetting the daemon's peak RSS")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sharepush_bin(args: &Args) -> anyhow::Result<PathBuf> {
    if let Some(p) = &args.sharepush {
        return Ok(p.clone());
    }
    let p = std::env::current_exe()?.with_file_name("sharepush");
    ensure!(
        p.exists(),
        "{} not found: build it first (`cargo build --release -p sharepush -p sharepush-bench`)",
        p.display()
    );
    Ok(p)
}

/// A fresh directory for one scenario: `source/`, `state/`, the config.
struct Setup {
    dir: PathBuf,
    source: PathBuf,
    config: PathBuf,
}

impl Setup {
    fn new(args: &Args, name: &str, emu: &Handle, defaults: &str) -> anyhow::Result<Setup> {
        fs::create_dir_all(&args.work_dir)?;
        let dir = fs::canonicalize(&args.work_dir)?.join(format!("daemon-{name}"));
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        let source = dir.join("source");
        let state = dir.join("state");
        fs::create_dir_all(&source)?;
        fs::create_dir_all(&state)?;
        let secret = dir.join("secret");
        fs::write(&secret, format!("{SECRET}\n"))?;
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o600))?;
        let text = format!(
            r#"[auth]
tenant = "contoso.onmicrosoft.com"
client_id = "{CLIENT_ID}"
mode = "client_credentials"
client_secret_file = "{secret}"
authority = "{authority}"
graph_url = "{graph}"

[defaults]
{defaults}

[daemon]
state_dir = "{state}"

[[job]]
name = "bench"
source = "{source}"
site = "https://contoso.sharepoint.com/sites/demo"
library = "Documents"
folder = "{FOLDER}"
watch = true
"#,
            secret = secret.display(),
            authority = emu.authority(),
            graph = emu.graph_url(),
            state = state.display(),
            source = source.display(),
        );
        let config = dir.join("config.toml");
        fs::write(&config, text)?;
        Ok(Setup {
            dir,
            source,
            config,
        })
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

async fn start_emulator() -> anyhow::Result<Handle> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    Ok(graph_emulator::serve(listener, Options::default(), std::future::pending()).await?)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// Writes `count` files of 1 KiB into `dirs` folders under `root`; returns
/// their names relative to `root`.
fn write_files(
    root: &Path,
    prefix: &str,
    count: usize,
    dirs: usize,
) -> anyhow::Result<Vec<String>> {
    for d in 0..dirs {
        fs::create_dir_all(root.join(format!("{prefix}{d:02}")))?;
    }
    let mut body = vec![b'.'; 1024];
    let mut names = Vec::with_capacity(count);
    for i in 0..count {
        let rel = format!("{prefix}{:02}/{prefix}{i:06}.txt", i % dirs);
        let tag = format!("{rel}\n");
        body[..tag.len()].copy_from_slice(tag.as_bytes());
        fs::write(root.join(&rel), &body)?;
        names.push(rel);
    }
    Ok(names)
}

/// How many of `names` (relative to the job folder) the emulator holds with 1 KiB.
fn arrived(emu: &Handle, names: &[String]) -> usize {
    let tree: BTreeMap<String, u64> = emu.tree().into_iter().map(|e| (e.path, e.size)).collect();
    names
        .iter()
        .filter(|n| tree.get(&format!("{FOLDER}/{n}")) == Some(&1024))
        .count()
}

async fn wait_arrived(emu: &Handle, names: &[String], within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let n = arrived(emu, names);
        if n == names.len() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{n} of {} files arrived within {within:?}", names.len());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub fn idle(args: &Args) -> anyhow::Result<Vec<Row>> {
    runtime()?.block_on(idle_run(args))
}

async fn idle_run(args: &Args) -> anyhow::Result<Vec<Row>> {
    let bin = sharepush_bin(args)?;
    let emu = start_emulator().await?;
    let setup = Setup::new(args, "idle", &emu, "")?;
    let files = args.idle_files;
    eprintln!("idle: writing {files} files ...");
    let names = write_files(&setup.source, "i", files, (files / 100).clamp(1, 1000))?;
    let mut daemon = Daemon::start(&bin, &setup.config)?;
    let started = Instant::now();
    eprintln!("idle: startup run uploading {files} files ...");
    daemon
        .wait_runs(1, Duration::from_secs(3600))
        .await
        .context("startup run")?;
    let startup_s = started.elapsed().as_secs_f64();
    ensure!(
        arrived(&emu, &names) == files,
        "startup run left files behind:\n{}",
        daemon.tail()
    );
    let startup_peak = daemon.status_kib("VmHWM")?;
    daemon.reset_peak()?;

    let window = Duration::from_secs_f64(args.idle_minutes * 60.0);
    eprintln!("idle: watching for {window:?} with no change ...");
    let requests_before = emu.requests().len();
    let cpu_before = daemon.cpu_seconds()?;
    let t0 = Instant::now();
    // The scenario is the passage of time: check now and then that the
    // daemon is alive, nothing else.
    while t0.elapsed() < window {
        if let Some(status) = daemon.child.try_wait()? {
            bail!(
                "sharepush run exited while idle ({status}):\n{}",
                daemon.tail()
            );
        }
        tokio::time::sleep((window - t0.elapsed()).min(Duration::from_secs(1))).await;
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = daemon.cpu_seconds()? - cpu_before;
    let peak = daemon.status_kib("VmHWM")?;
    let rss_now = daemon.status_kib("VmRSS")?;
    let requests = emu.requests().len() - requests_before;
    drop(daemon);
    emu.shutdown().await.ok();

    let per_10min = cpu * 600.0 / wall;
    let ok = per_10min < 1.0 && peak < 64 * MIB_KIB;
    Ok(vec![
        Row {
            scenario: "idle".into(),
            name: format!(
                "startup run, {files} files uploaded ({startup_s:.0} s, peak RSS {:.1} MiB)",
                startup_peak as f64 / 1024.0
            ),
            cost: Cost {
                wall_s: startup_s,
                cpu_s: 0.0,
                max_rss_kib: startup_peak,
            },
            mb_per_s: None,
            ratio: None,
            target: "setup, not judged".into(),
            met: None,
        },
        Row {
            scenario: "idle".into(),
            name: format!(
                "watching {files} files, {:.1} min idle: {per_10min:.3} CPU s per 10 min, RSS now {:.1} MiB, {requests} requests",
                wall / 60.0,
                rss_now as f64 / 1024.0
            ),
            cost: Cost {
                wall_s: wall,
                cpu_s: cpu,
                max_rss_kib: peak,
            },
            mb_per_s: None,
            ratio: None,
            target: "< 1 CPU s / 10 min, peak RSS < 64 MiB".into(),
            met: Some(ok),
        },
    ])
}

pub fn latency(args: &Args) -> anyhow::Result<Vec<Row>> {
    runtime()?.block_on(latency_run(args))
}

async fn latency_run(args: &Args) -> anyhow::Result<Vec<Row>> {
    let bin = sharepush_bin(args)?;
    let emu = start_emulator().await?;
    let (debounce, settle) = (args.debounce_ms, args.settle_ms);
    let defaults = format!("debounce = \"{debounce}ms\"\nsettle = \"{settle}ms\"");
    let setup = Setup::new(args, "latency", &emu, &defaults)?;
    let mut daemon = Daemon::start(&bin, &setup.config)?;
    daemon
        .wait_runs(1, Duration::from_secs(60))
        .await
        .context("startup run")?;
    let cpu_before = daemon.cpu_seconds()?;
    let base = Duration::from_millis(debounce + settle);
    let per_write = base + Duration::from_secs(60);
    let t_all = Instant::now();
    let mut times = Vec::with_capacity(args.writes);
    for i in 0..args.writes {
        let name = format!("w{i:04}.txt");
        let body = format!("write {i} of the latency benchmark\n").into_bytes();
        fs::write(setup.source.join(&name), &body)?;
        let t0 = Instant::now();
        let remote = format!("{FOLDER}/{name}");
        loop {
            if emu.read_file(&remote).as_deref() == Some(&body[..]) {
                break;
            }
            if t0.elapsed() > per_write {
                bail!(
                    "write {i} did not arrive within {per_write:?}:\n{}",
                    daemon.tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        times.push(t0.elapsed().as_secs_f64());
    }
    let wall = t_all.elapsed().as_secs_f64();
    let cpu = daemon.cpu_seconds()? - cpu_before;
    let peak = daemon.status_kib("VmHWM")?;
    drop(daemon);
    emu.shutdown().await.ok();

    times.sort_by(f64::total_cmp);
    let n = times.len();
    let pick = |q: f64| times[((q * n as f64).ceil() as usize).clamp(1, n) - 1];
    let (p50, p99) = (pick(0.50), pick(0.99));
    let base_s = base.as_secs_f64();
    let row = |label: &str, v: f64, slack: f64| Row {
        scenario: "latency".into(),
        name: format!(
            "{label} of {n} writes: {v:.3} s (debounce {debounce} ms + settle {settle} ms = {base_s:.1} s; min {:.3}, max {:.3})",
            times[0],
            times[n - 1]
        ),
        cost: Cost {
            wall_s: wall,
            cpu_s: cpu,
            max_rss_kib: peak,
        },
        mb_per_s: None,
        ratio: Some(v / (base_s + slack)),
        target: format!("<= debounce + settle + {:.0} ms", slack * 1000.0),
        met: Some(v <= base_s + slack),
    };
    Ok(vec![row("p50", p50, 0.3), row("p99", p99, 1.0)])
}

pub fn change(args: &Args) -> anyhow::Result<Vec<Row>> {
    runtime()?.block_on(change_run(args))
}

async fn change_run(args: &Args) -> anyhow::Result<Vec<Row>> {
    const EDITS: usize = 20;
    let bin = sharepush_bin(args)?;
    let emu = start_emulator().await?;
    let defaults = "debounce = \"200ms\"\nsettle = \"500ms\"";
    let setup = Setup::new(args, "change", &emu, defaults)?;
    let files = args.change_files.max(EDITS);
    eprintln!("change: writing {files} files ...");
    let names = write_files(&setup.source, "c", files, (files / 100).clamp(1, 1000))?;
    // Old enough that no file is racily clean: such files are looked at
    // again by the next run, which is not what is measured here.
    let old = std::time::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    for name in &names {
        fs::File::options()
            .write(true)
            .open(setup.source.join(name))?
            .set_modified(old)?;
    }
    let mut daemon = Daemon::start(&bin, &setup.config)?;
    eprintln!("change: startup run uploading {files} files ...");
    daemon
        .wait_runs(1, Duration::from_secs(3600))
        .await
        .context("startup run")?;
    ensure!(
        arrived(&emu, &names) == files,
        "startup run left files behind:\n{}",
        daemon.tail()
    );

    // Baseline: what every watch-triggered run used to cost.
    let cpu_before = daemon.cpu_seconds()?;
    let t0 = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.pid() as i32),
        nix::sys::signal::Signal::SIGUSR1,
    )?;
    daemon
        .wait_runs(2, Duration::from_secs(600))
        .await
        .context("full rescan (SIGUSR1)")?;
    let full = Cost {
        wall_s: t0.elapsed().as_secs_f64(),
        cpu_s: daemon.cpu_seconds()? - cpu_before,
        max_rss_kib: 0,
    };

    let cpu_before = daemon.cpu_seconds()?;
    let t0 = Instant::now();
    for i in 0..EDITS {
        let name = &names[i * (files / EDITS)];
        let body = format!("edit {i} of the change benchmark\n").into_bytes();
        fs::write(setup.source.join(name), &body)?;
        let remote = format!("{FOLDER}/{name}");
        let deadline = Instant::now() + Duration::from_secs(60);
        while emu.read_file(&remote).as_deref() != Some(&body[..]) {
            ensure!(
                Instant::now() < deadline,
                "edit {i} did not arrive within 60 s:\n{}",
                daemon.tail()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Its run is over (and its CPU spent) before the next edit.
        daemon
            .wait_runs(3 + i, Duration::from_secs(60))
            .await
            .with_context(|| format!("the run of edit {i}"))?;
    }
    let per_edit = Cost {
        wall_s: t0.elapsed().as_secs_f64() / EDITS as f64,
        cpu_s: (daemon.cpu_seconds()? - cpu_before) / EDITS as f64,
        max_rss_kib: daemon.status_kib("VmHWM")?,
    };
    drop(daemon);
    emu.shutdown().await.ok();
    let ratio = per_edit.cpu_s / full.cpu_s.max(1e-9);
    Ok(vec![
        Row::baseline(
            "change",
            &format!("full rescan of {files} unchanged files (SIGUSR1), daemon CPU"),
            full,
            None,
        ),
        Row {
            scenario: "change".into(),
            name: format!(
                "one edited file of {files}, watch-triggered run, daemon CPU per edit ({EDITS} edits)"
            ),
            cost: per_edit,
            mb_per_s: None,
            ratio: Some(ratio),
            target: "< 0.5x a full rescan's CPU".into(),
            met: Some(ratio < 0.5),
        },
    ])
}

pub fn burst(args: &Args) -> anyhow::Result<Vec<Row>> {
    runtime()?.block_on(burst_run(args))
}

/// The file name an upload request is for: `...<name>:/content` (PUT) or
/// `...<name>:/createUploadSession` (POST); None for other requests.
fn upload_target(method: &str, path: &str) -> Option<String> {
    let head = match method {
        "PUT" => path.strip_suffix(":/content")?,
        "POST" => path.strip_suffix(":/createUploadSession")?,
        _ => return None,
    };
    Some(head.rsplit('/').next()?.to_string())
}

async fn burst_run(args: &Args) -> anyhow::Result<Vec<Row>> {
    let bin = sharepush_bin(args)?;
    let emu = start_emulator().await?;
    let setup = Setup::new(args, "burst", &emu, "")?;
    let mut daemon = Daemon::start(&bin, &setup.config)?;
    daemon
        .wait_runs(1, Duration::from_secs(60))
        .await
        .context("startup run")?;
    let cpu_before = daemon.cpu_seconds()?;
    let files = args.burst_files;
    let t0 = Instant::now();
    let names = write_files(&setup.source, "b", files, 10)?;
    let written_s = t0.elapsed().as_secs_f64();
    wait_arrived(&emu, &names, Duration::from_secs(1800))
        .await
        .with_context(|| daemon.tail())?;
    let wall = t0.elapsed().as_secs_f64();
    // A marker written after everything arrived: once it is there, any
    // follow-up run the burst queued has finished too.
    fs::write(setup.source.join("marker.txt"), vec![b'm'; 1024])?;
    wait_arrived(&emu, &["marker.txt".to_string()], Duration::from_secs(300)).await?;
    let cpu = daemon.cpu_seconds()? - cpu_before;
    let peak = daemon.status_kib("VmHWM")?;
    drop(daemon);

    let mut per_name: BTreeMap<String, usize> = BTreeMap::new();
    for r in emu.requests() {
        if let Some(name) = upload_target(&r.method, &r.path) {
            *per_name.entry(name).or_default() += 1;
        }
    }
    emu.shutdown().await.ok();
    let uploaded = names
        .iter()
        .filter(|n| per_name.contains_key(n.rsplit('/').next().unwrap_or(n)))
        .count();
    let twice: Vec<_> = per_name.iter().filter(|(_, c)| **c > 1).collect();
    ensure!(
        uploaded == files,
        "burst: request log shows uploads for {uploaded} of {files} files"
    );
    let ok = twice.is_empty() && peak < 128 * MIB_KIB;
    Ok(vec![Row {
        scenario: "burst".into(),
        name: format!(
            "{files} x 1 KiB created in 10 new folders ({written_s:.1} s), all arrived, {} uploaded more than once{}",
            twice.len(),
            twice
                .first()
                .map_or(String::new(), |(n, c)| format!(" (e.g. {n} {c}x)"))
        ),
        cost: Cost {
            wall_s: wall,
            cpu_s: cpu,
            max_rss_kib: peak,
        },
        mb_per_s: None,
        ratio: None,
        target: "all once, peak RSS < 128 MiB".into(),
        met: Some(ok),
    }])
}

#[cfg(test)]
mod tests {
    use super::upload_target;

    #[test]
    fn upload_requests_are_attributed_to_their_file_name() {
        assert_eq!(
            upload_target(
                "POST",
                "/v1.0/drives/d/root:/backup/b03/b000003.txt:/createUploadSession"
            )
            .as_deref(),
            Some("b000003.txt")
        );
        assert_eq!(
            upload_target("PUT", "/v1.0/drives/d/items/01AB:/b1.txt:/content").as_deref(),
            Some("b1.txt")
        );
        assert_eq!(upload_target("PUT", "/upload/session/123"), None);
        assert_eq!(
            upload_target("GET", "/v1.0/drives/d/root:/a.txt:/content"),
            None
        );
    }
}
