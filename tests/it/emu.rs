//! Helpers for tests against the Graph emulator: start it on 127.0.0.1:0,
//! write a config pointing at it, build source trees with known mtimes, and
//! check what arrived.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use graph_emulator::{Handle, Options};
use sharepush::config::Config;
use sharepush::job::{JobReport, SyncOptions};
use sharepush::retry::RetryPolicy;

use crate::support::Fixture;

/// Any GUID: the emulator accepts every client id by default.
pub const CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";
/// The emulator's default client secret.
pub const SECRET: &str = "emulator-secret";
/// The job's folder inside the library.
pub const FOLDER: &str = "backup";
/// Every file's modification time in these tests (2024-03-04T05:06:07Z).
pub const MTIME: u64 = 1_709_528_767;
pub const MTIME_TEXT: &str = "2024-03-04T05:06:07Z";
/// 320 KiB, the fragment unit.
pub const K320: usize = 320 * 1024;
pub const MIB: usize = 1024 * 1024;

/// Starts an emulator with `opts` on a free loopback port.
pub async fn start(opts: Options) -> Handle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    graph_emulator::serve(listener, opts, std::future::pending())
        .await
        .unwrap()
}

/// Retries quick enough for tests (the production defaults wait seconds).
pub fn fast_policy() -> SyncOptions {
    SyncOptions {
        policy: RetryPolicy {
            base: Duration::from_millis(5),
            cap: Duration::from_millis(100),
            max_attempts: 10,
            max_throttled: 30,
            session_gone_delay: Duration::from_millis(50),
        },
        progress: None,
        cancel: Default::default(),
    }
}

/// How the test config signs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sign {
    /// App-only with the emulator's secret in a 0600 file.
    Secret,
    /// Delegated: a refresh token in the state directory.
    DeviceCode,
    /// App-only with the emulator's test certificate and key ([`certificate`]).
    Certificate,
}

/// The emulator's test certificate (register it with
/// `Options::client_certificates`).
pub fn certificate() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/graph-emulator/tests/fixtures/localhost.crt")
}

/// Writes `config.toml` with one job `docs` over `fx.source()` into the
/// emulator's default library, folder `backup`. `extra` goes into
/// `[defaults]`.
pub fn write_config(fx: &Fixture, emu: &Handle, sign: Sign, extra: &str) -> PathBuf {
    fs::create_dir_all(fx.source()).unwrap();
    let auth = match sign {
        Sign::Secret => {
            let secret = fx.path("secret");
            fs::write(&secret, format!("{SECRET}\n")).unwrap();
            fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
            format!(
                "mode = \"client_credentials\"\nclient_secret_file = \"{}\"",
                secret.display()
            )
        }
        Sign::DeviceCode => "mode = \"device_code\"".to_string(),
        Sign::Certificate => {
            // A private copy: a checkout does not keep the key's 0600 mode.
            let key = fx.path("app.key");
            fs::copy(certificate().with_extension("key"), &key).unwrap();
            fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
            format!(
                "mode = \"client_credentials\"\ncertificate = \"{}\"\nprivate_key = \"{}\"",
                certificate().display(),
                key.display()
            )
        }
    };
    let config = fx.path("config.toml");
    fs::write(
        &config,
        format!(
            r#"[auth]
tenant = "contoso.onmicrosoft.com"
client_id = "{CLIENT_ID}"
{auth}
authority = "{authority}"
graph_url = "{graph}"

[defaults]
fragment_size = "960KiB"
{extra}

[daemon]
state_dir = "{state}"

[[job]]
name = "docs"
source = "{source}"
site = "https://contoso.sharepoint.com/sites/demo"
library = "Documents"
folder = "{FOLDER}"
schedule = "@hourly"
"#,
            authority = emu.authority(),
            graph = emu.graph_url(),
            state = fx.state().display(),
            source = fx.source().display(),
        ),
    )
    .unwrap();
    config
}

/// Stores a signed-in user's refresh token in the fixture's state dir, as
/// `sharepush login` would.
pub fn preset_login(fx: &Fixture, emu: &Handle) -> String {
    let reply = emu.user_tokens(
        CLIENT_ID,
        "Files.ReadWrite.All Sites.ReadWrite.All offline_access",
    );
    let refresh = reply["refresh_token"].as_str().unwrap().to_string();
    fs::create_dir_all(fx.state()).unwrap();
    fs::write(fx.state().join("refresh-token"), &refresh).unwrap();
    refresh
}

pub fn load(config: &Path) -> Config {
    Config::load(config).unwrap_or_else(|e| panic!("{e}"))
}

/// [`write_config`] (secret sign-in, no `[defaults]`) with `job_lines`
/// added to the job's table, loaded.
pub fn config_with_job_lines(fx: &Fixture, emu: &Handle, job_lines: &str) -> Config {
    let path = write_config(fx, emu, Sign::Secret, "");
    if !job_lines.is_empty() {
        let mut text = fs::read_to_string(&path).unwrap();
        text.push_str(job_lines);
        text.push('\n');
        fs::write(&path, text).unwrap();
    }
    load(&path)
}

/// Deterministic content: `len` bytes from a seed.
pub fn content(len: usize, seed: u8) -> Vec<u8> {
    let mut x = 0x9E37_79B9u32 ^ seed as u32;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

/// Writes `rel` under the source with `bytes` and the fixed test mtime.
pub fn put(fx: &Fixture, rel: &str, bytes: &[u8]) {
    let path = fx.source().join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, bytes).unwrap();
    let t = UNIX_EPOCH + Duration::from_secs(MTIME);
    let f = fs::File::options().write(true).open(&path).unwrap();
    f.set_times(
        fs::FileTimes::new()
            .set_modified(t)
            .set_accessed(SystemTime::now()),
    )
    .unwrap();
}

/// The acceptance tree: nested folders, 0 B, 1 B, exactly 320 KiB,
/// 10 MiB + 1 and (when `large`) 40 MiB.
pub fn acceptance_tree(fx: &Fixture, large: bool) -> Vec<(String, Vec<u8>)> {
    let mut files = vec![
        ("empty.bin".to_string(), Vec::new()),
        ("one.bin".to_string(), vec![0x4a]),
        ("nested/deeper/k320.bin".to_string(), content(K320, 1)),
        ("nested/ten.bin".to_string(), content(10 * MIB + 1, 2)),
        (
            "nested/deeper/deepest/note.txt".to_string(),
            b"hello world".to_vec(),
        ),
    ];
    if large {
        files.push(("forty.bin".to_string(), content(40 * MIB, 3)));
    }
    for (rel, bytes) in &files {
        put(fx, rel, bytes);
    }
    files
}

/// Asserts every file arrived under `backup/` byte-identical, with the
/// local quickXorHash, size and mtime.
pub fn assert_arrived(emu: &Handle, files: &[(String, Vec<u8>)]) {
    let tree = emu.tree();
    for (rel, bytes) in files {
        let remote = format!("{FOLDER}/{rel}");
        let entry = tree
            .iter()
            .find(|e| e.path == remote)
            .unwrap_or_else(|| panic!("{remote} missing; tree: {tree:?}"));
        assert_eq!(entry.size, bytes.len() as u64, "{remote} size");
        assert_eq!(
            entry.quick_xor_hash,
            sharepush::hash::hash_bytes(bytes).quick_xor,
            "{remote} hash"
        );
        assert_eq!(entry.last_modified, MTIME_TEXT, "{remote} mtime");
        let stored = emu.read_file(&remote).expect("content");
        assert!(stored == *bytes, "{remote}: content differs");
    }
}

/// One report per job, for jobs that must have nothing failed.
pub fn assert_clean(reports: &[JobReport]) {
    for r in reports {
        assert!(r.failed.is_empty(), "failed: {:?}", r.failed);
        assert!(r.error.is_none(), "error: {:?}", r.error);
        assert!(r.login_needed.is_none(), "login: {:?}", r.login_needed);
        assert!(r.held.is_empty(), "held: {:?}", r.held);
    }
}

/// Runs `sync` in-process over every job.
pub async fn sync(config: &Config, options: &SyncOptions) -> Vec<JobReport> {
    let jobs: Vec<_> = config.jobs.iter().collect();
    sharepush::job::sync_jobs(config, &jobs, options)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// What a `sharepush` process builds from `config` to reach the service:
/// its sign-in over `http`, a tenant gate of `slots` uploads at once, and
/// the Graph remote through both; for tests that drive a job or the remote
/// in their own process.
pub fn graph_remote(
    config: &Config,
    http: reqwest::Client,
    policy: RetryPolicy,
    slots: usize,
) -> (
    sharepush::remote::GraphRemote,
    std::sync::Arc<sharepush::retry::Throttle>,
) {
    let tokens = std::sync::Arc::new(sharepush::remote::auth::TokenProvider::new(
        config.auth.clone(),
        http.clone(),
        &config.daemon.state_dir,
        policy.clone(),
    ));
    let throttle = std::sync::Arc::new(sharepush::retry::Throttle::new(slots, policy));
    let remote = sharepush::remote::GraphRemote::new(
        http,
        &config.auth.graph_url,
        tokens,
        std::sync::Arc::clone(&throttle),
    );
    (remote, throttle)
}

/// Requests since `before` other than signing in and the drive's delta
/// (every run asks what changed remotely): what a quiet run must not send.
pub fn requests_besides_delta(emu: &Handle, before: usize) -> Vec<graph_emulator::RequestRecord> {
    emu.requests()[before..]
        .iter()
        .filter(|r| r.route != "token" && !r.path.contains("/delta"))
        .cloned()
        .collect()
}

/// Someone else's access token (a second signed-in user session).
pub fn other_token(emu: &Handle) -> String {
    let reply = emu.user_tokens(CLIENT_ID, "Files.ReadWrite.All Sites.ReadWrite.All");
    reply["access_token"].as_str().unwrap().to_string()
}

pub fn item_url(emu: &Handle, rel: &str, route: &str) -> String {
    format!(
        "{}/drives/{}/root:/{FOLDER}/{rel}:{route}",
        emu.graph_url(),
        emu.drive_id()
    )
}

pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// The HTTP status of a Graph lookup of `rel` (under the job folder) by
/// another user: 200 when an item is there, 404 when not.
pub async fn remote_status(emu: &Handle, rel: &str) -> u16 {
    http()
        .get(item_url(emu, rel, ""))
        .bearer_auth(other_token(emu))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Puts a small file at `rel` (under the job folder) through Graph as
/// another user.
pub async fn remote_put(emu: &Handle, rel: &str, bytes: &[u8]) {
    let r = http()
        .put(item_url(emu, rel, "/content"))
        .bearer_auth(other_token(emu))
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "put {rel}: {}", r.status());
}

/// Creates the folder `rel` (under the job folder; `""` is the job folder
/// itself) through Graph as another user. Its parent must exist.
pub async fn remote_mkdir(emu: &Handle, rel: &str) {
    let (parent, name) = match rel.rsplit_once('/') {
        Some((p, n)) => (format!("{FOLDER}/{p}"), n),
        None if rel.is_empty() => (String::new(), FOLDER),
        None => (FOLDER.to_string(), rel),
    };
    let url = if parent.is_empty() {
        format!(
            "{}/drives/{}/root/children",
            emu.graph_url(),
            emu.drive_id()
        )
    } else {
        format!(
            "{}/drives/{}/root:/{parent}:/children",
            emu.graph_url(),
            emu.drive_id()
        )
    };
    let r = http()
        .post(url)
        .bearer_auth(other_token(emu))
        .json(&serde_json::json!({"name": name, "folder": {}}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "mkdir {rel}: {}", r.status());
}
