//! `sharepush status` over state made by real `sync` runs against the
//! emulator: the report, its JSON, and the exit codes a monitoring check
//! relies on (0 healthy, 1 failures, 77 login needed).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use graph_emulator::Options;
use serde_json::Value;

use crate::emu::{self, MIB, Sign};
use crate::support::{Fixture, text};

/// Runs the binary with `--config config ARGS` off the async threads.
async fn sharepush(config: &Path, args: &[&str]) -> Output {
    let config: PathBuf = config.to_path_buf();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_sharepush"))
            .arg("--config")
            .arg(config)
            .args(&args)
            .env_remove("RUST_LOG")
            .env_remove("SHAREPUSH_CONFIG")
            .env_remove("SHAREPUSH_STATE_DIR")
            .output()
            .expect("running sharepush")
    })
    .await
    .unwrap()
}

/// The pid of a process that has exited (and been reaped).
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

/// `status --json`, parsed, with the exit code.
async fn status_json(config: &Path) -> (Option<i32>, Value) {
    let out = sharepush(config, &["status", "--json"]).await;
    let (stdout, stderr) = text(&out);
    let json: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e}):\n{stdout}\n{stderr}"));
    (out.status.code(), json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_clean_sync_status_shows_the_run_and_exits_0() {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let config = emu::write_config(&fx, &emu, Sign::Secret, "");
    emu::put(&fx, "a.txt", b"hello");
    emu::put(&fx, "sub/b.bin", &emu::content(3 * MIB, 7));
    let out = sharepush(&config, &["sync"]).await;
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));

    let (code, json) = status_json(&config).await;
    assert_eq!(code, Some(0), "{json:#}");
    assert_eq!(json["exit_code"], 0);
    assert_eq!(json["state_dir"], fx.state().display().to_string());
    assert!(json["daemon"].is_null(), "no daemon ever ran: {json:#}");
    assert_eq!(json["auth"]["mode"], "client_secret");
    assert_eq!(json["auth"]["login_needed"], false);
    assert!(json["auth"]["signed_in_at"].is_string(), "{json:#}");
    let job = &json["jobs"][0];
    assert_eq!(job["name"], "docs");
    assert_eq!(job["in_config"], true);
    let run = &job["last_run"];
    assert_eq!(run["trigger"], "manual");
    assert_eq!(run["outcome"], "ok");
    assert_eq!(run["new"], 2);
    assert_eq!(run["uploaded"], 2);
    assert_eq!(run["failed"], 0);
    let bytes = 5 + 3 * MIB as u64;
    assert_eq!(run["bytes"], bytes);
    assert_eq!(job["bytes_last_run"], bytes);
    assert_eq!(job["bytes_total"], bytes);
    assert_eq!(job["files"]["synced"], 2);
    assert_eq!(job["files"]["pending"], 0);
    assert_eq!(job["failed_files"].as_array().unwrap().len(), 0);
    assert_eq!(job["schedule"], "@hourly");
    // The next top of the hour, in local time.
    let next = job["next_run"].as_str().expect("next_run");
    let next = chrono::DateTime::parse_from_rfc3339(next)
        .unwrap()
        .with_timezone(&chrono::Local);
    let now = chrono::Local::now();
    assert!(
        next > now && next - now <= chrono::Duration::hours(1),
        "{next}"
    );
    assert_eq!(chrono::Timelike::minute(&next), 0);

    // A second sync sends nothing: the total stays, the last run is 0 bytes.
    let out = sharepush(&config, &["sync"]).await;
    assert_eq!(out.status.code(), Some(0));
    let (code, json) = status_json(&config).await;
    assert_eq!(code, Some(0));
    assert_eq!(json["jobs"][0]["bytes_last_run"], 0);
    assert_eq!(json["jobs"][0]["bytes_total"], bytes);

    let out = sharepush(&config, &["status"]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("job docs"), "{stdout}");
    assert!(stdout.contains("files: 2 synced, 0 pending"), "{stdout}");
    assert!(
        stdout.contains("(schedule @hourly, time zone local)"),
        "{stdout}"
    );
    assert!(stdout.contains("daemon: not running"), "{stdout}");
}

/// `timezone` moves the next run: `@hourly` in Kolkata (+05:30) is at
/// half past the UTC hour, shown with that offset, and `--json` names the zone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_next_run_in_the_jobs_time_zone() {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let config = emu::write_config(&fx, &emu, Sign::Secret, "timezone = \"Asia/Kolkata\"");
    emu::put(&fx, "a.txt", b"hello");
    let out = sharepush(&config, &["sync"]).await;
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));

    let (code, json) = status_json(&config).await;
    assert_eq!(code, Some(0), "{json:#}");
    let job = &json["jobs"][0];
    assert_eq!(job["schedule"], "@hourly");
    assert_eq!(job["timezone"], "Asia/Kolkata");
    let next = job["next_run"].as_str().expect("next_run");
    assert!(next.ends_with(":00:00+05:30"), "{next}");
    let next = chrono::DateTime::parse_from_rfc3339(next)
        .unwrap()
        .with_timezone(&chrono::Utc);
    let now = chrono::Utc::now();
    assert!(
        next > now && next - now <= chrono::Duration::hours(1),
        "{next}"
    );
    assert_eq!(chrono::Timelike::minute(&next), 30);

    let out = sharepush(&config, &["status"]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("(schedule @hourly, time zone Asia/Kolkata)"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_file_makes_status_exit_1_and_list_it_with_its_error() {
    let emu = emu::start(Options {
        quota_bytes: MIB as u64,
        ..Options::default()
    })
    .await;
    let fx = Fixture::new();
    let config = emu::write_config(&fx, &emu, Sign::Secret, "");
    emu::put(&fx, "small.txt", b"fits");
    emu::put(&fx, "big.bin", &emu::content(2 * MIB, 1));
    let out = sharepush(&config, &["sync"]).await;
    assert_eq!(out.status.code(), Some(1), "{:?}", text(&out));

    // A full library fails the run and leaves the file pending (it goes up
    // once there is room): status says so and exits 1.
    let out = sharepush(&config, &["status"]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("error: library full (507 quotaLimitReached); 1 file(s) pending"),
        "{stdout}"
    );
    assert!(stdout.contains("files: 1 synced, 1 pending"), "{stdout}");

    // A file a permanent error failed (what the uploader records for a 4xx
    // that retrying cannot fix) is listed with its error.
    let mut store = sharepush::state::Store::open(&fx.state()).unwrap();
    store
        .mark_failed("docs", "big.bin", "400 invalidRequest: refused", None)
        .unwrap();
    drop(store);
    let out = sharepush(&config, &["status"]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let listed = stdout
        .split("failed files:\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no failed list:\n{stdout}"));
    assert!(
        listed.contains("big.bin: 400 invalidRequest: refused"),
        "{stdout}"
    );
    assert!(!listed.contains("small.txt"), "{stdout}");

    let (code, json) = status_json(&config).await;
    assert_eq!(code, Some(1));
    let job = &json["jobs"][0];
    assert_eq!(job["has_failures"], true);
    assert_eq!(job["files"]["failed"], 1);
    assert_eq!(job["files"]["synced"], 1);
    let failed = &job["failed_files"][0];
    assert_eq!(failed["path"], "big.bin");
    assert_eq!(failed["error"], "400 invalidRequest: refused");
    assert_eq!(failed["attempts"], 1);
    assert_eq!(job["failed_files_more"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_sign_in_makes_status_exit_77_until_the_next_login() {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let config = emu::write_config(&fx, &emu, Sign::DeviceCode, "");
    emu::preset_login(&fx, &emu);
    emu::put(&fx, "a.txt", b"first");
    let out = sharepush(&config, &["sync"]).await;
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let (code, json) = status_json(&config).await;
    assert_eq!(code, Some(0), "{json:#}");
    assert_eq!(json["auth"]["mode"], "device_code");
    let age = json["auth"]["refresh_token_age_s"].as_i64().expect("age");
    assert!((0..60).contains(&age), "{age}");

    emu.revoke();
    emu::put(&fx, "b.txt", b"second");
    let out = sharepush(&config, &["sync"]).await;
    assert_eq!(out.status.code(), Some(77), "{:?}", text(&out));

    let out = sharepush(&config, &["status"]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(77), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("login needed: run `sharepush login`"),
        "{stdout}"
    );
    assert!(stdout.contains("invalid_grant"), "{stdout}");
    let (code, json) = status_json(&config).await;
    assert_eq!(code, Some(77));
    assert_eq!(json["exit_code"], 77);
    assert_eq!(json["auth"]["login_needed"], true);
    assert!(
        json["auth"]["login_error"]
            .as_str()
            .unwrap()
            .contains("invalid_grant"),
        "{json:#}"
    );
    let files = &json["jobs"][0]["files"];
    assert_eq!(files["synced"], 1, "{files}");
    assert_eq!(
        files["pending"].as_u64().unwrap() + files["uploading"].as_u64().unwrap(),
        1,
        "{files}"
    );

    // The administrator signs in again: status is healthy before any sync.
    let reply = emu.user_tokens(emu::CLIENT_ID, "Files.ReadWrite.All offline_access");
    let file = fx.path("rt.txt");
    std::fs::write(&file, reply["refresh_token"].as_str().unwrap()).unwrap();
    let out = sharepush(
        &config,
        &["login", "--refresh-token-file", file.to_str().unwrap()],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let (code, json) = status_json(&config).await;
    assert_eq!(code, Some(0), "{json:#}");
    assert_eq!(json["auth"]["login_needed"], false);
    assert!(json["auth"]["login_error"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_made_while_the_state_is_locked_clears_login_needed_by_the_token_time() {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let config = emu::write_config(&fx, &emu, Sign::DeviceCode, "");
    emu::preset_login(&fx, &emu);
    emu.revoke();
    emu::put(&fx, "a.txt", b"first");
    let out = sharepush(&config, &["sync"]).await;
    assert_eq!(out.status.code(), Some(77), "{:?}", text(&out));
    let (code, _) = status_json(&config).await;
    assert_eq!(code, Some(77));

    // A daemon holds the lock, so login cannot clear the record; the new
    // token file is newer than the refusal (seconds resolution: step past it).
    let store = sharepush::state::Store::open(&fx.state()).unwrap();
    let refused_at = store.auth_state().unwrap().login_needed().unwrap().at;
    let token = fx.state().join("refresh-token");
    let reply = emu.user_tokens(emu::CLIENT_ID, "Files.ReadWrite.All offline_access");
    std::fs::write(&token, reply["refresh_token"].as_str().unwrap()).unwrap();
    let later = std::time::UNIX_EPOCH + std::time::Duration::from_secs(refused_at as u64 + 1);
    std::fs::File::options()
        .write(true)
        .open(&token)
        .unwrap()
        .set_modified(later)
        .unwrap();
    let (code, json) = status_json(&config).await;
    drop(store);
    assert_eq!(code, Some(0), "{json:#}");
    assert_eq!(json["auth"]["login_needed"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_and_watch_states_it_records_are_shown() {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let config = emu::write_config(&fx, &emu, Sign::Secret, "");
    emu::put(&fx, "a.txt", b"hello");
    let out = sharepush(&config, &["sync"]).await;
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));

    // What the daemon records, with this test's process standing in for it.
    use sharepush::state::{Store, WatchState};
    let mut store = Store::open(&fx.state()).unwrap();
    store
        .record_daemon_started(std::process::id(), 1_700_000_000)
        .unwrap();
    let reason = "out of inotify watches: raise fs.inotify.max_user_watches to at least 20000";
    store
        .set_watch_state(
            "docs",
            &WatchState::Fallback {
                reason: reason.into(),
            },
            1_700_000_001,
        )
        .unwrap();
    // Read while the "daemon" holds the lock.
    let out = sharepush(&config, &["status"]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("daemon: running (pid {}", std::process::id())),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("watch: fallback: full scans ({reason})")),
        "{stdout}"
    );
    let (_, json) = status_json(&config).await;
    assert_eq!(json["daemon"]["running"], true);
    assert_eq!(json["daemon"]["pid"], std::process::id());
    assert_eq!(json["jobs"][0]["watch"], "fallback");
    assert_eq!(json["jobs"][0]["watch_reason"], reason);

    store
        .set_watch_state("docs", &WatchState::Watching, 1_700_000_002)
        .unwrap();
    let (_, json) = status_json(&config).await;
    assert_eq!(json["jobs"][0]["watch"], "watching");
    assert!(json["jobs"][0]["watch_reason"].is_null());

    // A daemon that died without stopping: its pid is gone.
    let dead = dead_pid();
    store.record_daemon_started(dead, 1_700_000_000).unwrap();
    let out = sharepush(&config, &["status"]).await;
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains(&format!("daemon: not running (pid {dead} is gone")),
        "{stdout}"
    );
    assert!(
        !stdout.contains("watch: watching"),
        "stale watch state shown: {stdout}"
    );

    // A clean stop.
    store.record_daemon_stopped(1_700_000_100).unwrap();
    let (_, json) = status_json(&config).await;
    assert_eq!(json["daemon"]["running"], false);
    assert!(json["daemon"]["stopped_at"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_broken_config_status_still_reports_what_the_state_holds() {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let config = emu::write_config(&fx, &emu, Sign::Secret, "");
    emu::put(&fx, "a.txt", b"hello");
    let out = sharepush(&config, &["sync"]).await;
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));

    std::fs::write(&config, "[auth]\nbogus = 1\n").unwrap();
    let state = fx.state();
    let out = sharepush(&config, &["--state-dir", state.to_str().unwrap(), "status"]).await;
    let (stdout, stderr) = text(&out);
    // Not healthy: the next start of the daemon would fail (exit 78).
    assert_eq!(out.status.code(), Some(78), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("bogus"),
        "the config problem is named: {stderr}"
    );
    assert!(stderr.contains("showing the state only"), "{stderr}");
    assert!(stdout.contains("job docs\n"), "{stdout}");
    assert!(stdout.contains("files: 1 synced"), "{stdout}");

    // A check that reads the JSON gets the verdict the exit code gives.
    let out = sharepush(
        &config,
        &["--state-dir", state.to_str().unwrap(), "status", "--json"],
    )
    .await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(78), "{stdout}\n{stderr}");
    let json: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["exit_code"], 78, "{stdout}");
    assert_eq!(json["jobs"][0]["files"]["synced"], 1, "{stdout}");
}

/// Every object key path in `v` (`jobs.last_run.trigger`...), arrays merged.
fn key_paths(v: &Value, prefix: &str, out: &mut std::collections::BTreeSet<String>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                let path = format!("{prefix}{k}");
                out.insert(path.clone());
                key_paths(child, &format!("{path}."), out);
            }
        }
        Value::Array(items) => {
            for item in items {
                key_paths(item, prefix, out);
            }
        }
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_status_json_example_has_exactly_the_fields_status_prints() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let section = readme
        .split("### `status --json`")
        .nth(1)
        .expect("README has a status --json section");
    let example = section
        .split("```json\n")
        .nth(1)
        .and_then(|s| s.split("\n```").next())
        .expect("a json block");
    let example: Value = serde_json::from_str(example).expect("the README example is JSON");

    // A real report with every part present: a run with a failed file, a
    // daemon, a watch state.
    let emu = emu::start(Options {
        quota_bytes: MIB as u64,
        ..Options::default()
    })
    .await;
    let fx = Fixture::new();
    let config = emu::write_config(&fx, &emu, Sign::Secret, "");
    emu::put(&fx, "big.bin", &emu::content(2 * MIB, 1));
    let out = sharepush(&config, &["sync"]).await;
    assert_eq!(out.status.code(), Some(1), "{:?}", text(&out));
    let mut store = sharepush::state::Store::open(&fx.state()).unwrap();
    // The full library left big.bin pending; fail it as a permanent error
    // would, so the example's failed_files entry has a counterpart.
    store
        .mark_failed("docs", "big.bin", "400 invalidRequest: refused", None)
        .unwrap();
    store
        .record_daemon_started(std::process::id(), 1_700_000_000)
        .unwrap();
    store
        .set_watch_state(
            "docs",
            &sharepush::state::WatchState::Watching,
            1_700_000_000,
        )
        .unwrap();
    let (_, actual) = status_json(&config).await;
    drop(store);

    let (mut documented, mut printed) = Default::default();
    key_paths(&example, "", &mut documented);
    key_paths(&actual, "", &mut printed);
    assert_eq!(documented, printed, "README example vs status --json");
}

/// A job removed from the config (or renamed) is still listed with what it
/// left, but nothing retries its failed files any more and nothing can
/// clear them: they must not keep a monitoring check failing for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_of_a_job_removed_from_the_config_do_not_fail_status() {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let config = emu::write_config(&fx, &emu, Sign::Secret, "");
    emu::put(&fx, "a.txt", b"hello");
    let out = sharepush(&config, &["sync"]).await;
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let mut store = sharepush::state::Store::open(&fx.state()).unwrap();
    store
        .mark_failed("docs", "a.txt", "400 invalidRequest: refused", None)
        .unwrap();
    drop(store);
    let (code, _) = status_json(&config).await;
    assert_eq!(code, Some(1));

    let renamed = std::fs::read_to_string(&config)
        .unwrap()
        .replace("name = \"docs\"", "name = \"documents\"");
    std::fs::write(&config, renamed).unwrap();
    let (code, json) = status_json(&config).await;
    assert_eq!(code, Some(0), "{json:#}");
    assert_eq!(json["exit_code"], 0, "{json:#}");
    let old = json["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["name"] == "docs")
        .unwrap_or_else(|| panic!("the removed job is still listed: {json:#}"));
    assert_eq!(old["in_config"], false);
    assert_eq!(old["has_failures"], true, "still shown as it is");
    assert_eq!(old["failed_files"][0]["path"], "a.txt");
}

/// A run that never ended while no process holds the state: the process
/// died in it. Shown as interrupted, not "running since" until the next
/// start records it so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_process_is_gone_shows_as_interrupted() {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let config = emu::write_config(&fx, &emu, Sign::Secret, "");
    emu::put(&fx, "a.txt", b"hello");
    let out = sharepush(&config, &["sync"]).await;
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));

    use sharepush::state::{RunTrigger, Store};
    let mut store = Store::open(&fx.state()).unwrap();
    store
        .start_run("docs", RunTrigger::Schedule, 1_700_000_000)
        .unwrap();
    // This process holds the state: the run may be running.
    let (_, json) = status_json(&config).await;
    assert!(json["jobs"][0]["last_run"]["outcome"].is_null(), "{json}");
    let out = sharepush(&config, &["status"]).await;
    assert!(text(&out).0.contains("running since"), "{:?}", text(&out));

    // The holder dies (its pid stays in the lock file).
    drop(store);
    let dead = dead_pid();
    std::fs::write(
        fx.state().join(sharepush::state::LOCK_FILE),
        format!("{dead}\n"),
    )
    .unwrap();
    let (code, json) = status_json(&config).await;
    assert_eq!(code, Some(0), "{json}");
    let run = &json["jobs"][0]["last_run"];
    assert_eq!(run["outcome"], "interrupted", "{json}");
    assert!(run["ended_at"].is_null(), "{json}");
    let out = sharepush(&config, &["status"]).await;
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains("(schedule): interrupted") && !stdout.contains("running since"),
        "{stdout}"
    );
}
