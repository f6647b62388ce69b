//! `upload-small` and `upload-large`: `sharepush sync` against the
//! `graph-emulator` binary (a child process, so its CPU is not ours), next to
//! `rclone copy` against the same kind of emulator and, for the large file,
//! the emulator's own ingest rate measured in the same run.
//!
//! - ours: the emulator on `127.0.0.1:0` over plain HTTP (strict: no
//!   `Authorization` on upload URLs), a config with `authority`/`graph_url`
//!   pointing at it, a refresh token minted by `POST /_emulator/login` and
//!   imported with `sharepush login --refresh-token-file`, then
//!   `sharepush -q sync` in the measuring child.
//! - rclone: the onedrive backend has fixed host names, so the emulator
//!   serves HTTPS on `127.x.y.z:443` with the emulator's test certificate and
//!   `--lenient-upload-auth` (rclone sends `Authorization` to upload URLs), and
//!   rclone runs in a private mount namespace (`unshare -m`) whose `/etc/hosts`
//!   points those names there, trusting the certificate via `SSL_CERT_FILE`
//!   (as the emulator's rclone interop test does). Default flags,
//!   `drive_type = business`, a preset token.
//! - ours over TLS: `sharepush sync` in exactly rclone's setup (same
//!   namespace trick, real host names), so TLS cost is equal on both sides.
//!
//! Every run starts from an empty emulator with the same `--latency`, and
//! what arrived is checked through `GET /_emulator/tree` (count and sizes).
//! `upload-large` alternates the emulator's ingest and `sharepush sync`
//! `--repeat` times and judges each side by its fastest run. It also reads
//! the emulator's CPU seconds from `/proc` around each run and adds a "CPU
//! floor" row: on a machine where client and emulator share the cores, the
//! fastest run cannot beat their CPU seconds spread over every core.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};

use crate::Args;
use crate::measure::{Cost, Row, run_measured};

/// Any GUID: the emulator accepts every client id by default.
const CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";
const SCOPE: &str = "Files.ReadWrite.All Sites.ReadWrite.All offline_access";
/// The job's folder in the library (and rclone's destination).
const FOLDER: &str = "backup";
const RSS_LIMIT_KIB: u64 = 100 * 1024;
/// Every generated file's mtime (2024-03-04T05:06:07Z).
const MTIME: u64 = 1_709_528_767;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../graph-emulator/tests/fixtures")
        .join(name)
}

fn sibling(args_path: &Option<PathBuf>, name: &str) -> anyhow::Result<PathBuf> {
    if let Some(p) = args_path {
        return Ok(p.clone());
    }
    let p = std::env::current_exe()?.with_file_name(name);
    ensure!(
        p.exists(),
        "{} not found: build it first (`cargo build --release -p sharepush -p sharepush-bench -p graph-emulator --features graph-emulator/tls`)",
        p.display()
    );
    Ok(p)
}

fn s(p: &Path) -> anyhow::Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not valid UTF-8", p.display()))
}

fn on_path(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(cmd))
        .find(|p| p.is_file())
}

/// A `graph-emulator` child process and an admin client for it.
struct Emulator {
    child: Child,
    /// Base URL the admin API is called on.
    base: String,
    drive_id: String,
    data: PathBuf,
    http: reqwest::Client,
    rt: tokio::runtime::Runtime,
}

/// How an emulator is started.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Plain HTTP on 127.0.0.1:0, strict upload auth.
    Http,
    /// HTTPS on `ip:443` under the real host names, lenient upload auth.
    Tls(IpAddr),
}

impl Emulator {
    fn start(bin: &Path, data: &Path, latency_ms: u64, mode: Mode) -> anyhow::Result<Emulator> {
        if data.exists() {
            fs::remove_dir_all(data)?;
        }
        let mut cmd = Command::new(bin);
        cmd.args(["--data", s(data)?, "--latency", &latency_ms.to_string()]);
        match mode {
            Mode::Http => {
                cmd.args(["--listen", "127.0.0.1:0"]);
            }
            Mode::Tls(ip) => {
                cmd.args(["--listen", &format!("{ip}:443")])
                    .args(["--tls-cert", s(&fixture("localhost.crt"))?])
                    .args(["--tls-key", s(&fixture("localhost.key"))?])
                    .arg("--lenient-upload-auth");
            }
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdout = child.stdout.take().context("emulator stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let mut url = None;
        let mut drive_id = None;
        for line in lines.by_ref() {
            let line = line?;
            if let Some(u) = line.strip_prefix("graph-emulator listening on ") {
                url = Some(u.trim().to_string());
            } else if let Some(d) = line.strip_prefix("drive_id ") {
                drive_id = Some(d.trim().to_string());
                break;
            }
        }
        let (Some(url), Some(drive_id)) = (url, drive_id) else {
            let _ = child.kill();
            let status = child.wait()?;
            bail!("graph-emulator did not start ({status})");
        };
        let _ = rustls::crypto::ring::default_provider().install_default();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let (http, base) = match mode {
            Mode::Http => (reqwest::Client::builder().build()?, url),
            Mode::Tls(ip) => {
                let cert = reqwest::Certificate::from_pem(&fs::read(fixture("localhost.crt"))?)?;
                let http = reqwest::Client::builder()
                    .tls_certs_only([cert])
                    .resolve("graph.microsoft.com", SocketAddr::new(ip, 443))
                    .build()?;
                (http, "https://graph.microsoft.com".to_string())
            }
        };
        Ok(Emulator {
            child,
            base,
            drive_id,
            data: data.to_path_buf(),
            http,
            rt,
        })
    }

    fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}/_emulator/{path}", self.base);
        self.rt.block_on(async {
            let mut req = self.http.request(method, &url);
            if let Some(b) = body {
                req = req.json(&b);
            }
            let resp = req.send().await.with_context(|| url.clone())?;
            let status = resp.status();
            let v: Value = resp.json().await.unwrap_or(Value::Null);
            ensure!(status.is_success(), "{url}: HTTP {status}: {v}");
            Ok(v)
        })
    }

    /// A signed-in user's token reply for `CLIENT_ID` (or `client_id`).
    fn login(&self, client_id: &str) -> anyhow::Result<Value> {
        self.admin(
            reqwest::Method::POST,
            "login",
            Some(json!({"client_id": client_id, "scope": SCOPE})),
        )
    }

    /// Files under `FOLDER/` as (relative path, size).
    fn arrived(&self) -> anyhow::Result<Vec<(String, u64)>> {
        let tree = self.admin(reqwest::Method::GET, "tree", None)?;
        let prefix = format!("{FOLDER}/");
        Ok(tree
            .as_array()
            .context("tree is not an array")?
            .iter()
            .filter_map(|e| {
                let p = e["path"].as_str()?.strip_prefix(&prefix)?.to_string();
                Some((p, e["size"].as_u64()?))
            })
            .collect())
    }

    /// Requests logged so far, by route, and how busy the service was:
    /// mean requests in flight (arrival to reply, latency included) over the
    /// span from the first arrival to the last reply.
    fn request_summary(&self) -> anyhow::Result<String> {
        let c = self.admin(reqwest::Method::GET, "counters", None)?;
        let log = self.admin(reqwest::Method::GET, "requests", None)?;
        let log = log.as_array().context("request log is not an array")?;
        let t = |r: &Value, k: &str| r[k].as_u64().unwrap_or(0) as f64;
        let busy: f64 = log.iter().map(|r| t(r, "t_ms") - t(r, "t_start_ms")).sum();
        let first = log
            .iter()
            .map(|r| t(r, "t_start_ms"))
            .fold(f64::MAX, f64::min);
        let last = log.iter().map(|r| t(r, "t_ms")).fold(0.0, f64::max);
        let span = (last - first).max(1.0);
        Ok(format!(
            "{c}; span {:.1} s, mean in flight {:.2}",
            span / 1e3,
            busy / span
        ))
    }

    /// CPU seconds (user + system) the emulator process has used so far,
    /// from `/proc`: what the service side of a run cost, beside the
    /// client's own CPU.
    fn cpu_s(&self) -> anyhow::Result<f64> {
        crate::measure::process_cpu_seconds(self.child.id())
    }

    fn stop(mut self) -> anyhow::Result<()> {
        self.terminate();
        let _ = fs::remove_dir_all(&self.data);
        Ok(())
    }

    fn terminate(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// The expected tree: relative path -> size.
type Expected = Vec<(String, u64)>;

fn check_arrived(emu: &Emulator, expected: &Expected, who: &str) -> anyhow::Result<()> {
    let mut got = emu.arrived()?;
    got.sort();
    let mut want = expected.clone();
    want.sort();
    if got != want {
        let missing = want.iter().filter(|w| !got.contains(w)).count();
        let extra = got.iter().filter(|g| !want.contains(g)).count();
        bail!(
            "{who}: {} of {} files arrived with the right size ({missing} missing or wrong, {extra} unexpected)",
            want.len() - missing,
            want.len()
        );
    }
    Ok(())
}

/// A deterministic generator (same data on every machine).
struct XorShift(u64);

impl XorShift {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
    }
}

fn set_mtime(path: &Path) -> anyhow::Result<()> {
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(MTIME);
    fs::File::options()
        .write(true)
        .open(path)?
        .set_times(fs::FileTimes::new().set_modified(t))?;
    Ok(())
}

/// `count` files of `size` bytes in `dirs` folders under `root`, unless that
/// shape is already there (marker beside the tree).
fn small_tree(root: &Path, count: usize, size: usize, dirs: usize) -> anyhow::Result<Expected> {
    let rel = |i: usize| format!("d{:02}/f{i:05}.bin", i % dirs);
    let expected: Expected = (0..count).map(|i| (rel(i), size as u64)).collect();
    let shape = format!("files={count} size={size} dirs={dirs}\n");
    let marker = root.with_extension("shape");
    if fs::read_to_string(&marker).ok().as_deref() == Some(shape.as_str()) {
        return Ok(expected);
    }
    if root.exists() {
        fs::remove_dir_all(root)?;
    }
    eprintln!(
        "generating {count} files of {size} bytes under {} ...",
        root.display()
    );
    let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
    let mut buf = vec![0u8; size];
    for d in 0..dirs {
        fs::create_dir_all(root.join(format!("d{d:02}")))?;
    }
    for i in 0..count {
        rng.fill(&mut buf);
        let p = root.join(rel(i));
        fs::write(&p, &buf)?;
        set_mtime(&p)?;
    }
    fs::write(&marker, shape)?;
    Ok(expected)
}

/// One file of `mib` MiB under `root`.
fn large_tree(root: &Path, mib: usize) -> anyhow::Result<Expected> {
    let size = mib as u64 * 1024 * 1024;
    let file = root.join("big.bin");
    let expected = vec![("big.bin".to_string(), size)];
    if fs::metadata(&file).map(|m| m.len()).ok() == Some(size) {
        return Ok(expected);
    }
    if root.exists() {
        fs::remove_dir_all(root)?;
    }
    fs::create_dir_all(root)?;
    eprintln!("generating {} ...", file.display());
    let mut rng = XorShift(0xD1B5_4A32_D192_ED03);
    let mut f = fs::File::create(&file)?;
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..mib {
        rng.fill(&mut buf);
        f.write_all(&buf)?;
    }
    f.sync_all()?;
    drop(f);
    set_mtime(&file)?;
    Ok(expected)
}

/// Reads every file under `root` once (page cache warm for every contender)
/// and flushes dirty pages (the previous run's emulator data), so no run
/// pays for another's write-back.
fn warm(root: &Path) -> anyhow::Result<()> {
    run_measured("sync", &[])?;
    run_measured(
        "sh",
        &[
            "-c",
            "find \"$0\" -type f -print0 | xargs -0 cat > /dev/null",
            s(root)?,
        ],
    )?;
    Ok(())
}

/// The namespace wrapper rclone (and ours over TLS) run in: private mount
/// namespace, our /etc/hosts, the test certificate trusted.
struct Namespace {
    ip: IpAddr,
    hosts: PathBuf,
    home: PathBuf,
}

impl Namespace {
    /// Why rclone cannot run here, if it cannot.
    fn unavailable() -> Option<String> {
        if on_path("rclone").is_none() {
            return Some("rclone is not installed (apt-get install rclone)".into());
        }
        let ok = Command::new("unshare")
            .args(["-m", "true"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Some("cannot create a mount namespace (`unshare -m` needs root)".into());
        }
        None
    }

    fn new(dir: &Path) -> anyhow::Result<Namespace> {
        let pid = std::process::id();
        let ip: IpAddr = format!(
            "127.{}.{}.{}",
            200 + (pid >> 16) % 50,
            (pid >> 8) % 250 + 1,
            pid % 250 + 1
        )
        .parse()?;
        fs::create_dir_all(dir)?;
        let hosts = dir.join("hosts");
        fs::write(
            &hosts,
            format!(
                "127.0.0.1 localhost\n{ip} graph.microsoft.com login.microsoftonline.com contoso.sharepoint.com\n"
            ),
        )?;
        Ok(Namespace {
            ip,
            hosts,
            home: dir.to_path_buf(),
        })
    }

    /// `env ... unshare -m sh -c 'mount --bind hosts /etc/hosts && exec "$@"' hosts program args...`
    fn wrap(&self, program: &str, args: &[&str]) -> anyhow::Result<Vec<String>> {
        let mut v: Vec<String> = vec![
            format!("SSL_CERT_FILE={}", s(&fixture("localhost.crt"))?),
            format!("HOME={}", s(&self.home)?),
            "unshare".into(),
            "-m".into(),
            "sh".into(),
            "-c".into(),
            "mount --bind \"$0\" /etc/hosts && exec \"$@\"".into(),
            s(&self.hosts)?.into(),
            program.into(),
        ];
        v.extend(args.iter().map(|a| a.to_string()));
        Ok(v)
    }

    fn run_measured(&self, program: &str, args: &[&str]) -> anyhow::Result<(String, Cost)> {
        let v = self.wrap(program, args)?;
        let refs: Vec<&str> = v.iter().map(String::as_str).collect();
        run_measured("env", &refs)
    }
}

/// Writes the sharepush config and imports a fresh refresh token.
#[allow(clippy::too_many_arguments)]
fn prepare_sharepush(
    bin: &Path,
    dir: &Path,
    emu: &Emulator,
    source: &Path,
    authority: &str,
    graph_url: &str,
    ns: Option<&Namespace>,
    defaults: &str,
) -> anyhow::Result<PathBuf> {
    if dir.exists() {
        fs::remove_dir_all(dir)?;
    }
    fs::create_dir_all(dir)?;
    let state = dir.join("state");
    let config = dir.join("config.toml");
    // Only what pointing at the emulator needs: every tuning knob at its
    // default unless --sharepush-defaults says otherwise.
    fs::write(
        &config,
        format!(
            "[auth]\ntenant = \"contoso.onmicrosoft.com\"\nclient_id = \"{CLIENT_ID}\"\nmode = \"device_code\"\nauthority = \"{authority}\"\ngraph_url = \"{graph_url}\"\n\n[defaults]\n{defaults}\n\n[daemon]\nstate_dir = \"{}\"\n\n[[job]]\nname = \"bench\"\nsource = \"{}\"\nsite = \"https://contoso.sharepoint.com/sites/demo\"\nlibrary = \"Documents\"\nfolder = \"{FOLDER}\"\nschedule = \"@daily\"\n",
            s(&state)?,
            s(source)?,
        ),
    )?;
    let tokens = emu.login(CLIENT_ID)?;
    let token_file = dir.join("refresh-token.txt");
    fs::write(
        &token_file,
        tokens["refresh_token"]
            .as_str()
            .context("emulator minted no refresh token")?,
    )?;
    let args = [
        "--config",
        s(&config)?,
        "-q",
        "login",
        "--refresh-token-file",
        s(&token_file)?,
    ];
    match ns {
        None => run_measured(s(bin)?, &args)?,
        Some(ns) => ns.run_measured(s(bin)?, &args)?,
    };
    Ok(config)
}

/// `sharepush -q sync` in the measuring child; checks what arrived.
#[allow(clippy::too_many_arguments)]
fn measure_sharepush(
    bin: &Path,
    work: &Path,
    emulator: &Path,
    source: &Path,
    expected: &Expected,
    latency_ms: u64,
    ns: Option<&Namespace>,
    label: &str,
    defaults: &str,
) -> anyhow::Result<(Cost, f64)> {
    let mode = ns.map_or(Mode::Http, |n| Mode::Tls(n.ip));
    let emu = Emulator::start(emulator, &emu_data(work), latency_ms, mode)?;
    let (authority, graph) = match ns {
        None => (emu.base.clone(), format!("{}/v1.0", emu.base)),
        Some(_) => (
            "https://login.microsoftonline.com".to_string(),
            "https://graph.microsoft.com/v1.0".to_string(),
        ),
    };
    let config = prepare_sharepush(
        bin,
        &work.join("sp"),
        &emu,
        source,
        &authority,
        &graph,
        ns,
        defaults,
    )?;
    let args = ["--config", s(&config)?, "-q", "sync"];
    let emu_before = emu.cpu_s()?;
    let (_, cost) = match ns {
        None => run_measured(s(bin)?, &args),
        Some(ns) => ns.run_measured(s(bin)?, &args),
    }
    .with_context(|| format!("{label}: sharepush sync"))?;
    let emu_cpu = emu.cpu_s()? - emu_before;
    check_arrived(&emu, expected, label)?;
    eprintln!("{label}: requests {}", emu.request_summary()?);
    emu.stop()?;
    Ok((cost, emu_cpu))
}

/// `rclone copy` with default flags in the namespace; checks what arrived.
fn measure_rclone(
    work: &Path,
    emulator: &Path,
    source: &Path,
    expected: &Expected,
    latency_ms: u64,
    ns: &Namespace,
) -> anyhow::Result<Cost> {
    let emu = Emulator::start(emulator, &emu_data(work), latency_ms, Mode::Tls(ns.ip)).context(
        "starting the TLS emulator for rclone (built with --features graph-emulator/tls?)",
    )?;
    let tok = emu.login("rclone-bench")?;
    let token = json!({
        "access_token": tok["access_token"],
        "token_type": "Bearer",
        "refresh_token": tok["refresh_token"],
        "expiry": "2099-01-01T00:00:00Z",
    });
    let conf = work.join("rclone.conf");
    fs::write(
        &conf,
        format!(
            "[emu]\ntype = onedrive\nclient_id = rclone-bench\nclient_secret = emulator-secret\ntoken = {token}\ndrive_id = {}\ndrive_type = business\n",
            emu.drive_id
        ),
    )?;
    let dest = format!("emu:{FOLDER}");
    let (_, cost) = ns
        .run_measured(
            "rclone",
            &["copy", s(source)?, &dest, "--config", s(&conf)?],
        )
        .context("rclone copy")?;
    check_arrived(&emu, expected, "rclone")?;
    eprintln!("rclone: requests {}", emu.request_summary()?);
    emu.stop()?;
    Ok(cost)
}

/// The emulator's ingest rate: one upload session of `total` bytes in 10 MiB
/// fragments from a bare client in this process (no file read), against the
/// same binary over plain HTTP with no latency. Also returns the emulator's
/// own CPU seconds for it.
fn measure_ingest(work: &Path, emulator: &Path, total: u64) -> anyhow::Result<(Cost, f64)> {
    let emu = Emulator::start(emulator, &emu_data(work), 0, Mode::Http)?;
    let tok = emu.login(CLIENT_ID)?;
    let client = crate::emulator::Client {
        http: reqwest::Client::builder().build()?,
        graph: format!("{}/v1.0", emu.base),
        drive: emu.drive_id.clone(),
        token: tok["access_token"]
            .as_str()
            .context("no access token")?
            .to_string(),
    };
    let before = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)?;
    let emu_before = emu.cpu_s()?;
    let started = Instant::now();
    emu.rt
        .block_on(client.session_upload("ingest.bin", total))?;
    let wall = started.elapsed().as_secs_f64();
    let after = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)?;
    let emu_cpu = emu.cpu_s()? - emu_before;
    let arrived = emu.admin(reqwest::Method::GET, "tree", None)?;
    ensure!(
        arrived.as_array().is_some_and(|a| a
            .iter()
            .any(|e| e["path"] == "ingest.bin" && e["size"] == total)),
        "ingest.bin did not arrive whole"
    );
    emu.stop()?;
    let cost = Cost {
        wall_s: wall,
        cpu_s: crate::measure::cpu_seconds(&after) - crate::measure::cpu_seconds(&before),
        max_rss_kib: 0,
    };
    Ok((cost, emu_cpu))
}

/// `--emulator-data`, once set by [`setup`].
static EMU_ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Where the emulator keeps content: under `--emulator-data` (e.g. a tmpfs,
/// so the disk's write-back does not decide the numbers) or the work dir.
fn emu_data(work: &Path) -> PathBuf {
    EMU_ROOT
        .get()
        .map_or(work, PathBuf::as_path)
        .join("emu-data")
}

struct Setup {
    work: PathBuf,
    sharepush: PathBuf,
    emulator: PathBuf,
    /// `None` with the reason printed when rclone cannot run here.
    ns: Option<Namespace>,
    /// Extra `[defaults]` lines for sharepush's config (experiments).
    defaults: String,
}

fn setup(args: &Args, scenario: &str) -> anyhow::Result<Setup> {
    fs::create_dir_all(&args.work_dir)?;
    let work = fs::canonicalize(&args.work_dir)?.join(scenario);
    fs::create_dir_all(&work)?;
    if let Some(d) = &args.emulator_data {
        fs::create_dir_all(d)?;
        let _ = EMU_ROOT.set(fs::canonicalize(d)?);
    }
    let sharepush = sibling(&args.sharepush, "sharepush")?;
    let emulator = sibling(&args.emulator, "graph-emulator")?;
    let skip = args.no_rclone.then(|| "--no-rclone given".to_string());
    let ns = match skip.or_else(Namespace::unavailable) {
        Some(why) => {
            eprintln!("{scenario}: rclone comparison skipped: {why}");
            None
        }
        None => Some(Namespace::new(&work.join("ns"))?),
    };
    Ok(Setup {
        work,
        sharepush,
        emulator,
        ns,
        defaults: args.sharepush_defaults.clone().unwrap_or_default(),
    })
}

/// Marks sharepush rows measured with a non-default config.
fn mark_overrides(st: &Setup, mut rows: Vec<Row>) -> Vec<Row> {
    if !st.defaults.trim().is_empty() {
        for r in rows.iter_mut().filter(|r| r.name.starts_with("sharepush")) {
            r.name = format!("{} [config: {}]", r.name, st.defaults.trim());
        }
    }
    rows
}

fn rss_ok(c: &Cost) -> bool {
    c.max_rss_kib > 0 && c.max_rss_kib < RSS_LIMIT_KIB
}

/// `upload-small`: 5,000 files of 8 KiB, emulator latency per request.
pub fn upload_small(args: &Args) -> anyhow::Result<Vec<Row>> {
    let st = setup(args, "upload-small")?;
    let source = st.work.join("src");
    let expected = small_tree(&source, args.small_files, 8 * 1024, 50)?;
    let bytes = expected.iter().map(|e| e.1).sum::<u64>() as f64;
    let lat = args.latency_ms;
    warm(&source)?;

    let (ours, _) = measure_sharepush(
        &st.sharepush,
        &st.work,
        &st.emulator,
        &source,
        &expected,
        lat,
        None,
        "sharepush",
        &st.defaults,
    )?;
    let mut rows = Vec::new();
    let n = expected.len();
    let target = ">= 2.0x faster than rclone, RSS < 100 MiB".to_string();
    let name = |who: &str, c: &Cost| {
        format!(
            "{who}: {n} x 8 KiB, {lat} ms/request, {:.0} files/s",
            n as f64 / c.wall_s
        )
    };
    let mbs = |c: &Cost| Some(bytes / 1e6 / c.wall_s);
    match &st.ns {
        None => rows.push(Row {
            scenario: "upload-small".into(),
            name: name("sharepush sync", &ours),
            cost: ours,
            mb_per_s: mbs(&ours),
            ratio: None,
            target: format!("{target} (rclone not run)"),
            met: None,
        }),
        Some(ns) => {
            warm(&source)?;
            let rclone = measure_rclone(&st.work, &st.emulator, &source, &expected, lat, ns)?;
            warm(&source)?;
            let (ours_tls, _) = measure_sharepush(
                &st.sharepush,
                &st.work,
                &st.emulator,
                &source,
                &expected,
                lat,
                Some(ns),
                "sharepush over TLS",
                &st.defaults,
            )?;
            rows.push(Row::baseline(
                "upload-small",
                &name("rclone copy (TLS, defaults)", &rclone),
                rclone,
                mbs(&rclone),
            ));
            for (who, cost) in [
                ("sharepush sync (HTTP)", ours),
                ("sharepush sync (TLS, rclone's setup)", ours_tls),
            ] {
                let ratio = rclone.wall_s / cost.wall_s;
                rows.push(Row {
                    scenario: "upload-small".into(),
                    name: name(who, &cost),
                    cost,
                    mb_per_s: mbs(&cost),
                    ratio: Some(ratio),
                    target: target.clone(),
                    met: Some(ratio >= 2.0 && rss_ok(&cost)),
                });
            }
        }
    }
    Ok(mark_overrides(&st, rows))
}

/// What this machine allows the run `ours` (its fastest): the client and the
/// emulator share the same cores, so the run cannot take less wall time than
/// their CPU seconds spread over every core. The ratio is the best `ours`
/// could reach against the ingest run (`ingest_wall_s`) without using less
/// CPU; the wall column is that shortest time.
fn cpu_floor(ours: Cost, emulator_cpu_s: f64, ingest_wall_s: f64, mb: f64) -> Row {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu_s = ours.cpu_s + emulator_cpu_s;
    let wall_s = cpu_s / cores as f64;
    Row {
        scenario: "upload-large".into(),
        name: format!(
            "CPU floor of that run: (sharepush {:.2} + emulator {emulator_cpu_s:.2} CPU-s) / {cores} cores",
            ours.cpu_s
        ),
        cost: Cost {
            wall_s,
            cpu_s,
            max_rss_kib: 0,
        },
        mb_per_s: Some(mb / wall_s),
        ratio: Some(ingest_wall_s / wall_s),
        target: "upper bound on the ratio here (information)".into(),
        met: None,
    }
}

/// `upload-large`: one file (2 GiB by default), no added latency.
pub fn upload_large(args: &Args) -> anyhow::Result<Vec<Row>> {
    let st = setup(args, "upload-large")?;
    let source = st.work.join("src");
    let expected = large_tree(&source, args.large_mib)?;
    let total = expected[0].1;
    let mb = total as f64 / 1e6;
    let mib = args.large_mib;
    warm(&source)?;

    // Alternated, so drift on the machine touches both sides alike; each
    // side keeps its fastest run.
    let repeat = args.repeat.max(1);
    // Each run with the emulator's CPU seconds during it.
    type Run = (Cost, f64);
    let (mut ingest, mut ours): (Option<Run>, Option<Run>) = (None, None);
    let fastest = |best: Option<Run>, c: Run| match best {
        Some(b) if b.0.wall_s <= c.0.wall_s => Some(b),
        _ => Some(c),
    };
    for run in 1..=repeat {
        let i = measure_ingest(&st.work, &st.emulator, total)?;
        warm(&source)?;
        let o = measure_sharepush(
            &st.sharepush,
            &st.work,
            &st.emulator,
            &source,
            &expected,
            0,
            None,
            "sharepush",
            &st.defaults,
        )?;
        warm(&source)?;
        eprintln!(
            "upload-large: run {run}/{repeat}: ingest {:.3} s (CPU: client {:.2} s, emulator {:.2} s), \
             sharepush {:.3} s (CPU: sharepush {:.2} s, emulator {:.2} s): {:.2}x",
            i.0.wall_s,
            i.0.cpu_s,
            i.1,
            o.0.wall_s,
            o.0.cpu_s,
            o.1,
            i.0.wall_s / o.0.wall_s
        );
        ingest = fastest(ingest, i);
        ours = fastest(ours, o);
    }
    let (ingest, (ours, ours_emulator_cpu)) =
        (ingest.expect("repeat >= 1").0, ours.expect("repeat >= 1"));
    let ingest_speed = mb / ingest.wall_s;
    let speed = |c: &Cost| mb / c.wall_s;
    let best = if repeat > 1 {
        format!(", fastest of {repeat}")
    } else {
        String::new()
    };
    let mut rows = vec![Row::baseline(
        "upload-large",
        &format!("emulator ingest, bare client, {mib} MiB, 10 MiB fragments{best}"),
        ingest,
        Some(ingest_speed),
    )];
    let vs_ingest = |cost: Cost, who: &str, runs: &str| {
        let ratio = speed(&cost) / ingest_speed;
        Row {
            scenario: "upload-large".into(),
            name: format!("{who}: {mib} MiB, vs emulator ingest{runs}"),
            cost,
            mb_per_s: Some(speed(&cost)),
            ratio: Some(ratio),
            target: ">= 0.70x ingest, RSS < 100 MiB".into(),
            met: Some(ratio >= 0.7 && rss_ok(&cost)),
        }
    };
    rows.push(vs_ingest(ours, "sharepush sync (HTTP)", &best));
    rows.push(cpu_floor(ours, ours_emulator_cpu, ingest.wall_s, mb));
    if let Some(ns) = &st.ns {
        warm(&source)?;
        let rclone = measure_rclone(&st.work, &st.emulator, &source, &expected, 0, ns)?;
        warm(&source)?;
        let (ours_tls, _) = measure_sharepush(
            &st.sharepush,
            &st.work,
            &st.emulator,
            &source,
            &expected,
            0,
            Some(ns),
            "sharepush over TLS",
            &st.defaults,
        )?;
        rows.push(Row::baseline(
            "upload-large",
            &format!("rclone copy (TLS, defaults): {mib} MiB"),
            rclone,
            Some(speed(&rclone)),
        ));
        for (who, cost) in [
            ("sharepush sync (HTTP)", ours),
            ("sharepush sync (TLS, rclone's setup)", ours_tls),
        ] {
            let ratio = rclone.wall_s / cost.wall_s;
            rows.push(Row {
                scenario: "upload-large".into(),
                name: format!("{who}: {mib} MiB, vs rclone"),
                cost,
                mb_per_s: Some(speed(&cost)),
                ratio: Some(ratio),
                target: ">= 1.0x rclone's speed, RSS < 100 MiB".into(),
                met: Some(ratio >= 1.0 && rss_ok(&cost)),
            });
        }
        rows.push(vs_ingest(
            ours_tls,
            "sharepush sync (TLS, rclone's setup)",
            ", one run",
        ));
    }
    Ok(mark_overrides(&st, rows))
}

/// Size of every file of the `reconcile` scenario (content
/// `graph_emulator::seed_content`, written locally the same way).
const RECONCILE_FILE_SIZE: usize = 1024;
/// Remote edits made before the second run of `reconcile`.
const RECONCILE_CHANGES: usize = 100;
const RECONCILE_RSS_KIB: u64 = 64 * 1024;

/// The job's local tree for `reconcile`: `dNNNNN/fNNNNNNN.bin`, 1,000 per
/// folder, exactly what `POST /_emulator/seed` creates under the job folder.
fn seeded_tree(root: &Path, count: usize) -> anyhow::Result<()> {
    // Beside the tree, not in it: the job would upload it.
    let marker = root.with_extension("complete");
    if fs::read_to_string(&marker).ok().as_deref() == Some(&count.to_string()) {
        return Ok(());
    }
    if root.exists() {
        fs::remove_dir_all(root)?;
    }
    let _ = fs::remove_file(&marker);
    let content = graph_emulator::seed_content(RECONCILE_FILE_SIZE);
    for i in 0..count {
        let dir = root.join(format!("d{:05}", i / 1000));
        if i % 1000 == 0 {
            fs::create_dir_all(&dir)?;
        }
        let p = dir.join(format!("f{i:07}.bin"));
        fs::write(&p, &content)?;
        set_mtime(&p)?;
    }
    fs::write(marker, count.to_string())?;
    Ok(())
}

/// Request log since the last clear: total and per route.
fn request_counts(emu: &Emulator) -> anyhow::Result<(usize, String)> {
    let log = emu.admin(reqwest::Method::GET, "requests", None)?;
    let log = log.as_array().context("request log is not an array")?;
    let mut by: std::collections::BTreeMap<String, usize> = Default::default();
    for r in log {
        *by.entry(format!(
            "{} {}",
            r["method"].as_str().unwrap_or("?"),
            r["route"].as_str().unwrap_or("?")
        ))
        .or_default() += 1;
    }
    let parts: Vec<String> = by.iter().map(|(k, n)| format!("{n} {k}")).collect();
    Ok((log.len(), parts.join(", ")))
}

/// `reconcile`: a library of `library` items of which the job's folder owns
/// `ours`, the job's local folder holding the same files. Measures sharepush's
/// first `sync` (delta from `token=latest`, the walk of its own folder,
/// adopting every file: no upload) and a `sync` after `RECONCILE_CHANGES`
/// remote edits of our files (delta pages with those changes; the default
/// `on_remote_change = "overwrite"` uploads ours again).
fn reconcile_one(
    st: &Setup,
    source: &Path,
    library: usize,
    ours: usize,
) -> anyhow::Result<Vec<Row>> {
    let emu = Emulator::start(&st.emulator, &emu_data(&st.work), 0, Mode::Http)?;
    let t = Instant::now();
    emu.admin(
        reqwest::Method::POST,
        "seed",
        Some(json!({"folder": FOLDER, "files": ours, "per_folder": 1000, "size": RECONCILE_FILE_SIZE})),
    )?;
    if library > ours {
        emu.admin(
            reqwest::Method::POST,
            "seed",
            Some(json!({"folder": "others/archive", "files": library - ours, "per_folder": 1000, "size": RECONCILE_FILE_SIZE})),
        )?;
    }
    eprintln!(
        "reconcile: seeded {library} items ({ours} ours) in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let config = prepare_sharepush(
        &st.sharepush,
        &st.work.join("sp"),
        &emu,
        source,
        &emu.base,
        &format!("{}/v1.0", emu.base),
        None,
        &st.defaults,
    )?;
    let args = ["--config", s(&config)?, "-q", "sync"];
    let mut rows = Vec::new();
    let target = "peak RSS < 64 MiB".to_string();

    emu.admin(reqwest::Method::DELETE, "requests", None)?;
    let (_, first) = run_measured(s(&st.sharepush)?, &args).context("reconcile: first sync")?;
    let (n, detail) = request_counts(&emu)?;
    ensure!(
        !detail.contains("PUT") && !detail.contains("upload") && !detail.contains("session"),
        "reconcile: the first sync uploaded although every file matched: {detail}"
    );
    eprintln!("reconcile {library}: first sync requests: {detail}");
    rows.push(Row {
        scenario: "reconcile".into(),
        name: format!(
            "first sync, library {library} items, job owns {ours} (all adopted), {n} requests"
        ),
        cost: first,
        mb_per_s: None,
        ratio: None,
        target: target.clone(),
        met: Some(first.max_rss_kib > 0 && first.max_rss_kib < RECONCILE_RSS_KIB),
    });

    // Someone else edits RECONCILE_CHANGES of our files through Graph.
    let token = emu.login(CLIENT_ID)?["access_token"]
        .as_str()
        .context("emulator minted no access token")?
        .to_string();
    let edits = RECONCILE_CHANGES.min(ours);
    emu.rt.block_on(async {
        for i in 0..edits {
            let i = i * (ours / edits.max(1));
            let url = format!(
                "{}/v1.0/drives/{}/root:/{FOLDER}/d{:05}/f{i:07}.bin:/content",
                emu.base,
                emu.drive_id,
                i / 1000
            );
            let r = emu
                .http
                .put(&url)
                .bearer_auth(&token)
                .body(format!("edited elsewhere {i}"))
                .send()
                .await?;
            ensure!(r.status().is_success(), "{url}: HTTP {}", r.status());
        }
        Ok(())
    })?;
    emu.admin(reqwest::Method::DELETE, "requests", None)?;
    let (_, delta) = run_measured(s(&st.sharepush)?, &args).context("reconcile: delta sync")?;
    let (n, detail) = request_counts(&emu)?;
    eprintln!("reconcile {library}: sync after {edits} remote edits, requests: {detail}");
    let restored = emu
        .admin(reqwest::Method::GET, "tree", None)?
        .as_array()
        .context("tree is not an array")?
        .iter()
        .filter(|e| {
            e["path"].as_str().is_some_and(|p| p.starts_with(FOLDER))
                && e["size"].as_u64() == Some(RECONCILE_FILE_SIZE as u64)
        })
        .count();
    ensure!(
        restored == ours,
        "reconcile: after the delta sync {restored} of {ours} files hold our content"
    );
    rows.push(Row {
        scenario: "reconcile".into(),
        name: format!(
            "sync after {edits} remote edits (delta + {edits} overwrites), library {library}, {n} requests"
        ),
        cost: delta,
        mb_per_s: None,
        ratio: None,
        target: "CPU < 1 s, peak RSS < 64 MiB".into(),
        met: Some(
            delta.cpu_s < 1.0 && delta.max_rss_kib > 0 && delta.max_rss_kib < RECONCILE_RSS_KIB,
        ),
    });
    emu.stop()?;
    Ok(rows)
}

/// `reconcile`: the same job (`--job-items` files) against a library of
/// exactly its files and one of `--library-items` items: RSS must not grow
/// with the library.
pub fn reconcile(args: &Args) -> anyhow::Result<Vec<Row>> {
    let st = setup_plain(args, "reconcile")?;
    let ours = args.job_items;
    ensure!(ours > 0, "--job-items must be at least 1");
    let source = st.work.join("src");
    seeded_tree(&source, ours)?;
    warm(&source)?;
    let mut rows = Vec::new();
    let mut sizes = vec![ours, args.library_items.max(ours)];
    sizes.dedup();
    for library in sizes {
        rows.extend(reconcile_one(&st, &source, library, ours)?);
    }
    Ok(mark_overrides(&st, rows))
}

/// `setup` without the rclone namespace.
fn setup_plain(args: &Args, scenario: &str) -> anyhow::Result<Setup> {
    fs::create_dir_all(&args.work_dir)?;
    let work = fs::canonicalize(&args.work_dir)?.join(scenario);
    fs::create_dir_all(&work)?;
    if let Some(d) = &args.emulator_data {
        fs::create_dir_all(d)?;
        let _ = EMU_ROOT.set(fs::canonicalize(d)?);
    }
    Ok(Setup {
        work,
        sharepush: sibling(&args.sharepush, "sharepush")?,
        emulator: sibling(&args.emulator, "graph-emulator")?,
        ns: None,
        defaults: args.sharepush_defaults.clone().unwrap_or_default(),
    })
}
