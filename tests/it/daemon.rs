//! `sharepush run` as a real process against the Graph emulator over HTTP:
//! watching, settle, cron, signals, reload and systemd notifications
//! (issue 5). Every wait is on a condition (a log line, a file in the
//! emulator, a datagram) with a deadline.

use std::fs;
use std::io::{BufRead as _, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use graph_emulator::{Handle, Options};

use crate::emu::{self, CLIENT_ID, SECRET};
use crate::support::Fixture;

/// A running `sharepush run` with its stderr collected line by line.
struct Daemon {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Daemon {
    fn start(fx: &Fixture, config: &Path, env: &[(&str, &str)]) -> Daemon {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sharepush"));
        cmd.arg("--config")
            .arg(config)
            .arg("run")
            .env_remove("RUST_LOG")
            .env_remove("SHAREPUSH_CONFIG")
            .env_remove("SHAREPUSH_STATE_DIR")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("SHAREPUSH_WATCH_FAIL")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let _ = fx;
        let mut child = cmd.spawn().expect("starting sharepush run");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        Daemon { child, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log has `needle` `count` times.
    async fn wait_log(&self, needle: &str, count: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.log().matches(needle).count() >= count {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "no {count}x {needle:?} in the log within {within:?}:\n{}",
            self.log()
        );
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig}");
    }

    /// Waits for the process to exit; returns its code and how long it took.
    async fn wait_exit(&mut self, within: Duration) -> (Option<i32>, Duration) {
        let t0 = Instant::now();
        while t0.elapsed() < within {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code(), t0.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "sharepush run did not exit within {within:?}:\n{}",
            self.log()
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One job in the test config.
struct JobToml<'a> {
    name: &'a str,
    source: PathBuf,
    folder: &'a str,
    extra: &'a str,
}

/// A config with one job, `docs`: the fixture's source to `backup`, with
/// `extra` job lines, and the fast retry defaults.
fn docs_job(fx: &Fixture, emu: &Handle, extra: &str) -> PathBuf {
    let job = JobToml {
        name: "docs",
        source: fx.source(),
        folder: "backup",
        extra,
    };
    write_config(fx, emu, FAST, &[job])
}

/// A config for the emulator with app-only sign-in and the given jobs.
fn write_config(fx: &Fixture, emu: &Handle, defaults: &str, jobs: &[JobToml]) -> PathBuf {
    let secret = fx.path("secret");
    if !secret.exists() {
        fs::write(&secret, format!("{SECRET}\n")).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    }
    let mut text = format!(
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
"#,
        secret = secret.display(),
        authority = emu.authority(),
        graph = emu.graph_url(),
        state = fx.state().display(),
    );
    for job in jobs {
        fs::create_dir_all(&job.source).unwrap();
        text.push_str(&format!(
            r#"
[[job]]
name = "{}"
source = "{}"
site = "https://contoso.sharepoint.com/sites/demo"
library = "Documents"
folder = "{}"
{}
"#,
            job.name,
            job.source.display(),
            job.folder,
            job.extra
        ));
    }
    let config = fx.path("config.toml");
    fs::write(&config, text).unwrap();
    config
}

/// Fast watch settings for tests.
const FAST: &str = "debounce = \"200ms\"\nsettle = \"1s\"";

fn watched(fx: &Fixture) -> JobToml<'static> {
    JobToml {
        name: "docs",
        source: fx.source(),
        folder: "backup",
        extra: "watch = true",
    }
}

/// Waits until `path` in the emulator holds exactly `bytes`.
async fn wait_remote(emu: &Handle, path: &str, bytes: &[u8], within: Duration) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if emu.read_file(path).as_deref() == Some(bytes) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tree: Vec<_> = emu.tree().into_iter().map(|e| (e.path, e.size)).collect();
    panic!(
        "{path} did not arrive with the expected {} byte(s) within {within:?}; tree: {tree:?}",
        bytes.len()
    );
}

fn sessions_for(emu: &Handle, name: &str) -> usize {
    emu.requests()
        .iter()
        .filter(|r| r.path.ends_with("/createUploadSession") && r.path.contains(name))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_modified_renamed_and_deleted_files_reach_the_emulator_with_keep() {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let config = write_config(&fx, &emu, FAST, &[watched(&fx)]);
    fs::create_dir_all(fx.source()).unwrap();
    fs::write(fx.source().join("before.txt"), b"written while down").unwrap();
    let d = Daemon::start(&fx, &config, &[]);
    // The startup run catches up on what changed while it was down.
    wait_remote(
        &emu,
        "backup/before.txt",
        b"written while down",
        Duration::from_secs(30),
    )
    .await;
    // `status` reads the running daemon's state beside it.
    let out = fx.sharepush(&config, &["status", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(json["daemon"]["running"], true, "{json}");
    assert_eq!(json["daemon"]["pid"], d.child.id(), "{json}");
    assert_eq!(json["jobs"][0]["watch"], "watching", "{json}");

    fs::create_dir_all(fx.source().join("sub")).unwrap();
    fs::write(fx.source().join("sub/a.txt"), b"first").unwrap();
    wait_remote(&emu, "backup/sub/a.txt", b"first", Duration::from_secs(20)).await;

    fs::write(fx.source().join("sub/a.txt"), b"second version").unwrap();
    wait_remote(
        &emu,
        "backup/sub/a.txt",
        b"second version",
        Duration::from_secs(20),
    )
    .await;

    fs::rename(fx.source().join("sub/a.txt"), fx.source().join("sub/b.txt")).unwrap();
    wait_remote(
        &emu,
        "backup/sub/b.txt",
        b"second version",
        Duration::from_secs(20),
    )
    .await;

    fs::remove_file(fx.source().join("before.txt")).unwrap();
    // A marker proves the delete's run has happened before we look.
    fs::write(fx.source().join("marker.txt"), b"m").unwrap();
    wait_remote(&emu, "backup/marker.txt", b"m", Duration::from_secs(20)).await;
    // delete = "keep": nothing is deleted remotely.
    assert_eq!(
        emu.read_file("backup/before.txt").as_deref(),
        Some(&b"written while down"[..])
    );
    // A rename is a server-side move (issue 6), not a delete: the item and
    // its version history moved to the new name.
    assert_eq!(emu.read_file("backup/sub/a.txt"), None);
    // Excluded-by-nothing temp files aside, no file was uploaded twice for one version.
    assert_eq!(emu.throttle_violations(), 0);
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_batch_scans_its_own_paths_not_the_whole_tree() {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    for i in 0..40 {
        let dir = fx.source().join(format!("d{}", i % 4));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("f{i}.txt"));
        fs::write(&path, format!("file {i}")).unwrap();
        // Old enough not to be racily clean (those are looked at again).
        let f = fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(1_600_000_000))
            .unwrap();
    }
    let config = write_config(&fx, &emu, FAST, &[watched(&fx)]);
    let d = Daemon::start(&fx, &config, &[("RUST_LOG", "sharepush=debug")]);
    wait_remote(
        &emu,
        "backup/d3/f39.txt",
        b"file 39",
        Duration::from_secs(30),
    )
    .await;
    // The startup run walked everything.
    assert!(!d.log().contains("scan scoped"), "{}", d.log());

    fs::write(fx.source().join("d1/f1.txt"), b"edited").unwrap();
    wait_remote(&emu, "backup/d1/f1.txt", b"edited", Duration::from_secs(20)).await;
    d.wait_log("run finished", 2, Duration::from_secs(20)).await;
    let log = d.log();
    let scoped: Vec<&str> = log.lines().filter(|l| l.contains("scan scoped")).collect();
    assert_eq!(scoped.len(), 1, "{log}");
    // One record looked up (the edited file's), not forty.
    assert!(scoped[0].contains("paths=1 known=1"), "{log}");
    // Yet the run counts the other 39 as up to date, as a full scan would.
    let finished = log
        .lines()
        .filter(|l| l.contains("run finished"))
        .nth(1)
        .unwrap();
    assert!(
        finished.contains("changed=1") && finished.contains("up_to_date=39"),
        "{finished}"
    );

    // A new folder moved in is walked whole.
    let outside = fx.path("incoming");
    fs::create_dir_all(outside.join("deep")).unwrap();
    fs::write(outside.join("deep/g.txt"), b"moved in").unwrap();
    fs::rename(&outside, fx.source().join("incoming")).unwrap();
    wait_remote(
        &emu,
        "backup/incoming/deep/g.txt",
        b"moved in",
        Duration::from_secs(20),
    )
    .await;
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_written_slowly_over_five_seconds_is_uploaded_once_complete() {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    // settle (2 s) well above the writer's pauses (0.5 s), so a loaded
    // machine stretching one pause cannot pass for a finished file.
    let settings = "debounce = \"200ms\"\nsettle = \"2s\"";
    let config = write_config(&fx, &emu, settings, &[watched(&fx)]);
    let d = Daemon::start(&fx, &config, &[]);
    d.wait_log("trigger=\"startup\"", 1, Duration::from_secs(30))
        .await;

    let chunk = emu::content(64 * 1024, 7);
    let mut expected = Vec::new();
    {
        use std::io::Write as _;
        let mut f = fs::File::create(fx.source().join("slow.bin")).unwrap();
        for _ in 0..10 {
            f.write_all(&chunk).unwrap();
            f.flush().unwrap();
            expected.extend_from_slice(&chunk);
            // The slow writer under test: a chunk every half second.
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    wait_remote(&emu, "backup/slow.bin", &expected, Duration::from_secs(30)).await;
    // A later file's arrival shows the daemon has gone on since.
    fs::write(fx.source().join("after.txt"), b"after").unwrap();
    wait_remote(&emu, "backup/after.txt", b"after", Duration::from_secs(20)).await;
    assert_eq!(sessions_for(&emu, "slow.bin"), 1, "{:?}", emu.requests());
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cron_only_job_uploads_on_its_tick_and_not_before() {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let config = docs_job(&fx, &emu, "schedule = \"* * * * *\"\nwatch = false");
    let d = Daemon::start(&fx, &config, &[]);
    d.wait_log("trigger=\"startup\"", 1, Duration::from_secs(30))
        .await;

    let until_minute = |now: chrono::DateTime<chrono::Local>| {
        use chrono::Timelike as _;
        Duration::from_millis(
            60_000
                - (now.second() as u64 * 1000 + now.timestamp_subsec_millis() as u64).min(59_999),
        )
    };
    // Too close to a tick to tell "before" from "on": take the next minute.
    if until_minute(chrono::Local::now()) < Duration::from_secs(3) {
        d.wait_log("trigger=\"schedule\"", 1, Duration::from_secs(10))
            .await;
    }
    let ticks_before = d.log().matches("trigger=\"schedule\"").count();
    fs::write(fx.source().join("cron.txt"), b"on the tick").unwrap();
    let boundary = Instant::now() + until_minute(chrono::Local::now());
    while Instant::now() + Duration::from_millis(300) < boundary {
        assert!(
            emu.read_file("backup/cron.txt").is_none(),
            "uploaded before the tick:\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_remote(
        &emu,
        "backup/cron.txt",
        b"on the tick",
        Duration::from_secs(20),
    )
    .await;
    d.wait_log(
        "trigger=\"schedule\"",
        ticks_before + 1,
        Duration::from_secs(5),
    )
    .await;
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_large_upload_exits_fast_and_the_next_start_resumes() {
    let emu = emu::start(Options {
        faults: Some("upload:latency:ms=700".into()),
        ..Options::default()
    })
    .await;
    let fx = Fixture::new();
    let config = write_config(&fx, &emu, FAST, &[watched(&fx)]);
    let big = emu::content(200 * emu::MIB, 9);
    fs::create_dir_all(fx.source()).unwrap();
    fs::write(fx.source().join("big.bin"), &big).unwrap();

    let mut d = Daemon::start(&fx, &config, &[]);
    // In flight: the session exists and a few fragments are in.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let puts = emu
            .requests()
            .iter()
            .filter(|r| r.method == "PUT" && r.path.contains("upload"))
            .count();
        if sessions_for(&emu, "big.bin") == 1 && puts >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "upload never started:\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        emu.read_file("backup/big.bin").is_none(),
        "finished too soon to test"
    );
    d.signal("TERM");
    let (code, took) = d.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(code, Some(0), "{}", d.log());
    assert!(took < Duration::from_secs(10), "took {took:?}");
    drop(d);

    emu.clear_faults();
    let d = Daemon::start(&fx, &config, &[]);
    wait_remote(&emu, "backup/big.bin", &big, Duration::from_secs(120)).await;
    assert_eq!(
        sessions_for(&emu, "big.bin"),
        1,
        "the restart opened a second upload session instead of resuming:\n{}",
        d.log()
    );
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_keeps_the_old_jobs_on_a_broken_config_and_adds_a_new_job() {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let config = write_config(&fx, &emu, FAST, &[watched(&fx)]);
    let d = Daemon::start(&fx, &config, &[]);
    d.wait_log("trigger=\"startup\"", 1, Duration::from_secs(30))
        .await;

    let good = fs::read_to_string(&config).unwrap();
    fs::write(
        &config,
        good.replace("watch = true", "watch = true\nwacth = 1"),
    )
    .unwrap();
    d.signal("HUP");
    d.wait_log("reload rejected", 1, Duration::from_secs(10))
        .await;
    assert!(
        d.log().contains("wacth"),
        "the error names the key:\n{}",
        d.log()
    );
    fs::write(fx.source().join("still.txt"), b"old job runs").unwrap();
    wait_remote(
        &emu,
        "backup/still.txt",
        b"old job runs",
        Duration::from_secs(20),
    )
    .await;

    let more = fx.path("more");
    write_config(
        &fx,
        &emu,
        FAST,
        &[
            watched(&fx),
            JobToml {
                name: "more",
                source: more.clone(),
                folder: "more",
                extra: "watch = true",
            },
        ],
    );
    fs::write(more.join("new-job.txt"), b"new job").unwrap();
    d.signal("HUP");
    d.wait_log("configuration reloaded", 1, Duration::from_secs(10))
        .await;
    wait_remote(
        &emu,
        "more/new-job.txt",
        b"new job",
        Duration::from_secs(20),
    )
    .await;
    fs::write(more.join("watched.txt"), b"watched").unwrap();
    wait_remote(
        &emu,
        "more/watched.txt",
        b"watched",
        Duration::from_secs(20),
    )
    .await;

    // A job asking for more uploads at once raises the shared limit now.
    write_config(
        &fx,
        &emu,
        FAST,
        &[
            watched(&fx),
            JobToml {
                name: "more",
                source: more.clone(),
                folder: "more",
                extra: "watch = true\nconcurrency = 12",
            },
        ],
    );
    d.signal("HUP");
    d.wait_log("uploads at once raised", 1, Duration::from_secs(10))
        .await;
    assert!(d.log().contains("slots=12"), "{}", d.log());
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_status_and_stopping() {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let config = write_config(&fx, &emu, FAST, &[watched(&fx)]);
    let socket_path = fx.path("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut d = Daemon::start(
        &fx,
        &config,
        &[("NOTIFY_SOCKET", socket_path.to_str().unwrap())],
    );
    let mut heard = Vec::<String>::new();
    let listen_until = |pred: &dyn Fn(&str) -> bool, heard: &mut Vec<String>| {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = socket.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let hit = pred(&msg);
                heard.push(msg);
                if hit {
                    return;
                }
            }
        }
        panic!("not heard; heard {heard:?}");
    };
    listen_until(&|m| m.contains("READY=1"), &mut heard);
    let ready = heard.last().unwrap().clone();
    assert!(ready.contains("STATUS=1 job(s)"), "{ready}");
    d.signal("TERM");
    listen_until(&|m| m.contains("STOPPING=1"), &mut heard);
    let (code, _) = d.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(code, Some(0), "{}", d.log());
    // READY came once, before STOPPING.
    assert_eq!(
        heard.iter().filter(|m| m.contains("READY=1")).count(),
        1,
        "{heard:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_source_vanishes_does_not_stop_the_others() {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let gone = fx.path("gone");
    let config = write_config(
        &fx,
        &emu,
        FAST,
        &[
            watched(&fx),
            JobToml {
                name: "gone",
                source: gone.clone(),
                folder: "gone",
                extra: "watch = true\ndelete = \"mirror\"",
            },
        ],
    );
    fs::write(gone.join("kept.txt"), b"kept").unwrap();
    let d = Daemon::start(&fx, &config, &[]);
    wait_remote(&emu, "gone/kept.txt", b"kept", Duration::from_secs(30)).await;
    fs::remove_dir_all(&gone).unwrap();
    d.wait_log("does not exist", 1, Duration::from_secs(20))
        .await;
    fs::write(fx.source().join("other.txt"), b"other job").unwrap();
    wait_remote(
        &emu,
        "backup/other.txt",
        b"other job",
        Duration::from_secs(20),
    )
    .await;
    // Even with mirror, a vanished source deletes nothing remotely.
    assert_eq!(
        emu.read_file("gone/kept.txt").as_deref(),
        Some(&b"kept"[..])
    );
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_watch_falls_back_to_scans_and_says_so_once() {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let config = write_config(&fx, &emu, FAST, &[watched(&fx)]);
    fs::write(fx.source().join("start.txt"), b"startup scan").unwrap();
    let mut d = Daemon::start(&fx, &config, &[("SHAREPUSH_WATCH_FAIL", "limit")]);
    wait_remote(
        &emu,
        "backup/start.txt",
        b"startup scan",
        Duration::from_secs(30),
    )
    .await;
    d.signal("TERM");
    d.wait_exit(Duration::from_secs(10)).await;
    let log = d.log();
    let warnings = log
        .lines()
        .filter(|l| l.contains("fs.inotify.max_user_watches"))
        .count();
    assert_eq!(warnings, 1, "{log}");
    assert!(
        log.contains("falling back to a full scan every 5 min"),
        "{log}"
    );
}

/// Waits until `path` is gone from the emulator.
async fn wait_gone(emu: &Handle, path: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if emu.read_file(path).is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{path} was not deleted remotely within {within:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_deletes_and_renames_remotely_but_never_for_an_emptied_source() {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let config = docs_job(&fx, &emu, "watch = true\ndelete = \"mirror\"");
    for name in ["a.txt", "b.txt", "c.txt"] {
        fs::write(fx.source().join(name), name.as_bytes()).unwrap();
    }
    let d = Daemon::start(&fx, &config, &[]);
    for name in ["a.txt", "b.txt", "c.txt"] {
        wait_remote(
            &emu,
            &format!("backup/{name}"),
            name.as_bytes(),
            Duration::from_secs(30),
        )
        .await;
    }
    fs::remove_file(fx.source().join("a.txt")).unwrap();
    wait_gone(&emu, "backup/a.txt", Duration::from_secs(20)).await;
    fs::rename(fx.source().join("b.txt"), fx.source().join("renamed.txt")).unwrap();
    wait_remote(
        &emu,
        "backup/renamed.txt",
        b"b.txt",
        Duration::from_secs(20),
    )
    .await;
    wait_gone(&emu, "backup/b.txt", Duration::from_secs(20)).await;

    // A folder deleted locally goes too, once its files are gone.
    fs::create_dir(fx.source().join("sub")).unwrap();
    fs::write(fx.source().join("sub/x.txt"), b"x").unwrap();
    wait_remote(&emu, "backup/sub/x.txt", b"x", Duration::from_secs(20)).await;
    fs::remove_dir_all(fx.source().join("sub")).unwrap();
    // The run's summary line counts both deletes.
    d.wait_log("folders_deleted=1", 1, Duration::from_secs(20))
        .await;
    assert_eq!(emu::remote_status(&emu, "sub").await, 404);
    let log = d.log();
    let finished = log
        .lines()
        .find(|l| l.contains("folders_deleted=1"))
        .unwrap();
    assert!(
        finished.contains("run finished") && finished.contains(" deleted=1"),
        "{finished}"
    );

    // Everything gone at once (an unmounted disk looks like this): held.
    let held_before = d.log().matches("remote deletes held").count();
    fs::remove_file(fx.source().join("c.txt")).unwrap();
    fs::remove_file(fx.source().join("renamed.txt")).unwrap();
    d.wait_log(
        "remote deletes held",
        held_before + 1,
        Duration::from_secs(20),
    )
    .await;
    assert!(d.log().contains("is empty"), "{}", d.log());
    assert_eq!(
        emu.read_file("backup/c.txt").as_deref(),
        Some(&b"c.txt"[..])
    );
    assert_eq!(
        emu.read_file("backup/renamed.txt").as_deref(),
        Some(&b"b.txt"[..])
    );
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_periodic_reconcile_restores_a_remote_delete_without_a_local_change() {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    // No watch and a cron tick once a year: only the periodic reconcile
    // (every second here) can notice the remote delete.
    let config = docs_job(
        &fx,
        &emu,
        "schedule = \"0 0 1 1 *\"\nwatch = false\nreconcile_interval = \"1s\"",
    );
    fs::write(fx.source().join("keep.txt"), b"backed up").unwrap();
    let d = Daemon::start(&fx, &config, &[]);
    wait_remote(
        &emu,
        "backup/keep.txt",
        b"backed up",
        Duration::from_secs(30),
    )
    .await;
    d.wait_log("trigger=\"startup\"", 1, Duration::from_secs(30))
        .await;

    // Someone deletes it in SharePoint (Graph, another user's token).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let token =
        emu.user_tokens(CLIENT_ID, "Files.ReadWrite.All Sites.ReadWrite.All")["access_token"]
            .as_str()
            .unwrap()
            .to_string();
    let url = format!(
        "{}/drives/{}/root:/backup/keep.txt:",
        emu.graph_url(),
        emu.drive_id()
    );
    let r = reqwest::Client::new()
        .delete(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(emu.read_file("backup/keep.txt"), None);

    // The daemon notices and uploads it again (on_remote_delete = "restore").
    wait_remote(
        &emu,
        "backup/keep.txt",
        b"backed up",
        Duration::from_secs(30),
    )
    .await;
    d.wait_log("trigger=\"reconcile\"", 1, Duration::from_secs(10))
        .await;
    let log = d.log();
    assert!(
        log.contains("deleted in SharePoint; uploading it again"),
        "{log}"
    );
    assert_eq!(log.matches("trigger=\"schedule\"").count(), 0, "{log}");
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_library_is_deleted_fails_naming_it_while_the_others_go_on() {
    let emu = emu::start(Options {
        sites: vec![graph_emulator::SiteOptions {
            path: "/sites/demo".into(),
            libraries: vec!["Documents".into(), "Archive".into()],
        }],
        ..Options::default()
    })
    .await;
    let fx = Fixture::new();
    let archive = fx.path("archive");
    let config = write_config(
        &fx,
        &emu,
        FAST,
        &[
            watched(&fx),
            JobToml {
                name: "arch",
                source: archive.clone(),
                folder: "arch",
                extra: "watch = true",
            },
        ],
    );
    // The second job's library is "Archive" (the helper writes Documents).
    let text = fs::read_to_string(&config).unwrap();
    let at = text.find("name = \"arch\"").unwrap();
    let (head, tail) = text.split_at(at);
    fs::write(
        &config,
        format!("{head}{}", tail.replacen("\"Documents\"", "\"Archive\"", 1)),
    )
    .unwrap();
    let d = Daemon::start(&fx, &config, &[]);
    d.wait_log("job run done", 2, Duration::from_secs(30)).await;

    emu.delete_library(Some("/sites/demo"), "Archive").unwrap();
    fs::write(archive.join("a.txt"), b"archive").unwrap();
    d.wait_log(
        "library \"Archive\" not found on site https://contoso.sharepoint.com/sites/demo",
        1,
        Duration::from_secs(30),
    )
    .await;
    assert!(d.log().contains("retrying with backoff"), "{}", d.log());
    // The other job goes on uploading into its own library.
    fs::write(fx.source().join("doc.txt"), b"docs job").unwrap();
    wait_remote(&emu, "backup/doc.txt", b"docs job", Duration::from_secs(30)).await;
    // The archive change is recorded, waiting for the library.
    let store = sharepush::state::Store::open_read_only(&fx.state()).unwrap();
    assert_eq!(
        store.file("arch", "a.txt").unwrap().unwrap().state,
        sharepush::state::FileState::Pending
    );
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_runs_every_job_now() {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    // No watch and a cron tick once a year: nothing but SIGUSR1 can make a
    // run after the startup one.
    let config = docs_job(
        &fx,
        &emu,
        "schedule = \"0 0 1 1 *\"\nwatch = false\nreconcile_interval = \"off\"",
    );
    fs::write(fx.source().join("first.txt"), b"first").unwrap();
    let d = Daemon::start(&fx, &config, &[]);
    wait_remote(&emu, "backup/first.txt", b"first", Duration::from_secs(30)).await;
    d.wait_log("run finished", 1, Duration::from_secs(30)).await;

    fs::write(fx.source().join("later.txt"), b"later").unwrap();
    d.signal("USR1");
    wait_remote(&emu, "backup/later.txt", b"later", Duration::from_secs(30)).await;
    d.wait_log("trigger=\"manual\"", 1, Duration::from_secs(10))
        .await;
    d.wait_log("run finished", 2, Duration::from_secs(10)).await;
    let log = d.log();
    assert!(log.contains("SIGUSR1: running every job now"), "{log}");
    drop(d);
}

/// Sets `path`'s mtime far in the past (not racily clean: a watch run does
/// not look at it again unless an event names it).
fn aged(path: &std::path::Path) {
    let f = fs::File::options().write(true).open(path).unwrap();
    f.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(1_600_000_000))
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_held_by_one_watch_run_still_count_when_the_next_one_empties_the_source() {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    for i in 0..10 {
        let dir = fx.source().join(if i < 6 { "a" } else { "b" });
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join(format!("f{i}.txt"));
        fs::write(&p, format!("{i}")).unwrap();
        aged(&p);
    }
    let job = JobToml {
        name: "docs",
        source: fx.source(),
        folder: "backup",
        extra: "watch = true\ndelete = \"mirror\"\nmax_delete = \"50%\"",
    };
    let config = write_config(&fx, &emu, FAST, &[job]);
    let d = Daemon::start(&fx, &config, &[("RUST_LOG", "sharepush=debug")]);
    wait_remote(&emu, "backup/b/f9.txt", b"9", Duration::from_secs(30)).await;
    d.wait_log("run finished", 1, Duration::from_secs(20)).await;
    // 6 of 10: more than max_delete, held.
    fs::remove_dir_all(fx.source().join("a")).unwrap();
    d.wait_log("remote deletes held", 1, Duration::from_secs(20))
        .await;
    d.wait_log("run finished", 2, Duration::from_secs(20)).await;
    // The other 4: the source is empty now, which is never mirrored. The
    // scoped run must not count the 6 held (gone) files as still there.
    fs::remove_dir_all(fx.source().join("b")).unwrap();
    d.wait_log("remote deletes held", 2, Duration::from_secs(20))
        .await;
    d.wait_log("run finished", 3, Duration::from_secs(20)).await;
    let log = d.log();
    assert!(log.contains("is empty (an unmounted disk?)"), "{log}");
    for i in 0..10 {
        let dir = if i < 6 { "a" } else { "b" };
        assert!(
            emu.read_file(&format!("backup/{dir}/f{i}.txt")).is_some(),
            "f{i} deleted remotely from an emptied source"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_replaced_by_a_file_the_patterns_leave_out_has_its_files_deleted() {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    for rel in ["docs/a.txt", "keep.txt"] {
        let p = fx.source().join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, rel).unwrap();
        aged(&p);
    }
    let job = JobToml {
        name: "docs",
        source: fx.source(),
        folder: "backup",
        extra: "watch = true\ndelete = \"mirror\"\ninclude = [\"*.txt\"]",
    };
    let config = write_config(&fx, &emu, FAST, &[job]);
    let d = Daemon::start(&fx, &config, &[("RUST_LOG", "sharepush=debug")]);
    wait_remote(
        &emu,
        "backup/docs/a.txt",
        b"docs/a.txt",
        Duration::from_secs(30),
    )
    .await;
    d.wait_log("run finished", 1, Duration::from_secs(20)).await;
    // Within one debounce window: the folder's removes fold into one event
    // for "docs", which is now a file that `*.txt` leaves out.
    fs::remove_dir_all(fx.source().join("docs")).unwrap();
    fs::write(fx.source().join("docs"), b"now a file").unwrap();
    // A watch run (no full scan) deletes it.
    wait_gone(&emu, "backup/docs/a.txt", Duration::from_secs(20)).await;
    assert!(!d.log().contains("trigger=\"manual\""));
    assert!(emu.read_file("backup/keep.txt").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_runs_a_failed_job_now_instead_of_after_its_retry_delay() {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let config = docs_job(
        &fx,
        &emu,
        "schedule = \"0 0 1 1 *\"\nwatch = false\nreconcile_interval = \"off\"",
    );
    // The source is not there (an unmounted disk): the startup run fails
    // and waits to be retried.
    let source = fx.source();
    fs::remove_dir_all(&source).unwrap();
    let d = Daemon::start(&fx, &config, &[]);
    d.wait_log("retrying with backoff", 1, Duration::from_secs(30))
        .await;
    // Fixed; the administrator asks for a run now.
    fs::create_dir_all(&source).unwrap();
    fs::write(source.join("back.txt"), b"mounted again").unwrap();
    d.signal("USR1");
    // Well inside the first retry delay.
    assert!(sharepush::job_task::retry_delay(1) >= Duration::from_secs(15));
    wait_remote(
        &emu,
        "backup/back.txt",
        b"mounted again",
        Duration::from_secs(10),
    )
    .await;
    d.wait_log("trigger=\"manual\"", 1, Duration::from_secs(10))
        .await;
    drop(d);
}

/// A reload that changes several busy jobs stops them all at once, within
/// one grace period: one after another it held the supervisor (and its
/// watchdog pings) for a grace period per busy job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_stops_the_busy_jobs_it_changes_all_at_once() {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let names = ["a", "b", "c"];
    let jobs: Vec<JobToml> = names
        .iter()
        .map(|&n| {
            let source = fx.path(n);
            fs::create_dir_all(&source).unwrap();
            fs::write(source.join("big.bin"), emu::content(emu::MIB, 1)).unwrap();
            JobToml {
                name: n,
                source,
                folder: n,
                extra: "watch = true",
            }
        })
        .collect();
    // Every fragment hangs, so each job is mid-upload at the reload.
    emu.add_faults("upload:latency:ms=60000").unwrap();
    let config = write_config(&fx, &emu, FAST, &jobs);
    let d = Daemon::start(&fx, &config, &[]);
    assert!(
        emu.wait_for_requests(Duration::from_secs(30), |log| {
            log.iter()
                .filter(|r| r.path.ends_with("/createUploadSession"))
                .count()
                >= 3
        })
        .await,
        "three uploads in flight"
    );
    // A [defaults] change changes every job.
    write_config(
        &fx,
        &emu,
        &format!("{FAST}\nbandwidth_limit = \"100MiB/s\""),
        &jobs,
    );
    let asked = std::time::Instant::now();
    d.signal("HUP");
    d.wait_log("configuration reloaded", 1, Duration::from_secs(30))
        .await;
    let took = asked.elapsed();
    assert!(
        took < sharepush::daemon::STOP_GRACE + Duration::from_secs(3),
        "reload took {took:?}:\n{}",
        d.log()
    );
    emu.clear_faults();
    drop(d);
}

/// What the daemon hands its job tasks, for running one in the test's
/// process against the emulator `config` names.
async fn job_context(
    config: &sharepush::config::Config,
) -> Arc<sharepush::job_task::JobContext<sharepush::remote::GraphRemote>> {
    let (remote, throttle) = emu::graph_remote(
        config,
        sharepush::remote::graph::http_client().unwrap(),
        sharepush::retry::RetryPolicy::default(),
        4,
    );
    let store = sharepush::state::Store::open(&config.daemon.state_dir).unwrap();
    Arc::new(sharepush::job_task::JobContext {
        remote,
        store: sharepush::upload::SharedStore::new(store),
        throttle,
        scheduler: sharepush::scheduler::Scheduler::start().await.unwrap(),
    })
}

/// A job task stopped before its first run could start (a reload or a
/// shutdown while its watch was being armed) starts none: it used to make
/// its startup run anyway, beside the successor a reload had started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_task_stopped_before_its_first_run_makes_none() {
    use sharepush::job_task::run_job;
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let config = emu::config_with_job_lines(&fx, &emu, "watch = true");
    emu::put(&fx, "a.txt", b"alpha");
    let ctx = job_context(&config).await;
    let cancel = tokio_util::sync::CancellationToken::new();
    cancel.cancel();
    let (_manual, manual_rx) = tokio::sync::mpsc::unbounded_channel();
    let (ready, _ready_rx) = tokio::sync::oneshot::channel();
    tokio::time::timeout(
        Duration::from_secs(5),
        run_job(
            Arc::new(config.jobs[0].clone()),
            Arc::clone(&ctx),
            manual_rx,
            cancel,
            Arc::default(),
            ready,
        ),
    )
    .await
    .expect("the task ends at once");
    assert_eq!(emu.requests().len(), 0, "{:?}", emu.requests());
    let name = config.jobs[0].name.clone();
    let last = ctx.store.call(move |s| s.last_run(&name)).await.unwrap();
    assert!(last.is_none(), "{last:?}");
}

/// A job whose watch does not work arms it again before each run; a stop
/// that comes while it arms (a walk of the whole tree, which cannot be
/// interrupted) used to start the run anyway, beside a successor a reload
/// may have started. On one runtime thread the stop lands exactly while
/// the task arms.
#[tokio::test]
async fn a_job_task_stopped_while_it_arms_its_watch_again_makes_no_run() {
    use sharepush::job_task::run_job;
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let config = emu::config_with_job_lines(&fx, &emu, "watch = true");
    // No source: the watch cannot be armed, so the task tries again
    // before its startup run.
    std::fs::remove_dir_all(fx.source()).unwrap();
    let ctx = job_context(&config).await;
    let cancel = tokio_util::sync::CancellationToken::new();
    let (_manual, manual_rx) = tokio::sync::mpsc::unbounded_channel();
    let (ready, ready_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(run_job(
        Arc::new(config.jobs[0].clone()),
        Arc::clone(&ctx),
        manual_rx,
        cancel.clone(),
        Arc::default(),
        ready,
    ));
    // Sent after the first arming; the task then goes on to arm again.
    // The stop comes from a task, queued when `ready` wakes it: it runs
    // the first time the job task gives the thread up, at the latest at
    // the yield after the arming. (Under load both waits of the arming
    // could end without a yield; then a stop from the test's own future,
    // polled only when no task is runnable, came after the run started.)
    let stopper = tokio::spawn({
        let cancel = cancel.clone();
        async move {
            ready_rx.await.unwrap();
            cancel.cancel();
        }
    });
    stopper.await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the task ends at once")
        .unwrap();
    assert_eq!(emu.requests().len(), 0, "{:?}", emu.requests());
    let name = config.jobs[0].name.clone();
    let last = ctx.store.call(move |s| s.last_run(&name)).await.unwrap();
    assert!(last.is_none(), "{last:?}");
}
