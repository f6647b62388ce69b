//! Signing in, token rotation and crash recovery, against the emulator;
//! the binary where a process boundary is the point (exit codes, SIGKILL,
//! what reaches the log).

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use graph_emulator::{Handle, Options};
use secrecy::ExposeSecret;
use sharepush::remote::auth::{self, AuthError, TokenProvider, TokenStore};
use sharepush::retry::RetryPolicy;

use crate::emu::{self, FOLDER, MIB, Sign};
use crate::support::{Fixture, text};

/// Runs the binary with `args` (blocking; call from `spawn_blocking`).
fn run(config: PathBuf, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sharepush"));
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("SHAREPUSH_CONFIG")
        .env_remove("SHAREPUSH_STATE_DIR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("running sharepush")
}

async fn run_async(config: PathBuf, args: &[&str], env: &[(&str, &str)]) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        run(config, &args, &env)
    })
    .await
    .unwrap()
}

/// Plays the person at the browser: approves the first device code that
/// shows up.
async fn approve_when_asked(emu: &Handle) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(code) = emu.pending_user_codes().first() {
            assert!(emu.approve(code));
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no device code appeared"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A token provider over the fixture's state dir, as a process would have.
fn provider(
    config: &sharepush::config::Config,
    fx: &Fixture,
    policy: RetryPolicy,
) -> TokenProvider {
    TokenProvider::new(
        config.auth.clone(),
        sharepush::remote::graph::http_client().unwrap(),
        &fx.state(),
        policy,
    )
}

fn quick_login_options() -> Options {
    Options {
        device_code_interval: Duration::from_secs(1),
        ..Options::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_code_login_prints_the_message_and_stores_a_private_token() {
    let emu = emu::start(quick_login_options()).await;
    let fx = Fixture::new();
    let config = emu::load(&emu::write_config(&fx, &emu, Sign::DeviceCode, ""));
    let http = sharepush::remote::graph::http_client().unwrap();
    let store = TokenStore::in_dir(&fx.state());
    let policy = RetryPolicy::default();
    let mut out = Vec::new();
    let (result, ()) = tokio::join!(
        auth::device_login(&config.auth, &http, &store, &policy, &mut out),
        approve_when_asked(&emu)
    );
    result.unwrap();
    let printed = String::from_utf8(out).unwrap();
    assert!(printed.contains("devicelogin"), "{printed}");
    let token = store.load().unwrap().expect("stored");
    assert!(!token.expose_secret().is_empty());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(store.path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // Declined: a clear error, nothing stored over the good token.
    let decline = async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(code) = emu.pending_user_codes().first() {
                assert!(emu.decline(code));
                return;
            }
            assert!(tokio::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let mut out = Vec::new();
    let (result, ()) = tokio::join!(
        auth::device_login(&config.auth, &http, &store, &policy, &mut out),
        decline
    );
    assert!(matches!(result, Err(AuthError::Declined)), "{result:?}");
    assert_eq!(
        store.load().unwrap().unwrap().expose_secret(),
        token.expose_secret()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiring_access_tokens_are_refreshed_and_every_rotation_is_on_disk_first() {
    // Old refresh tokens die at once: only the newest on disk keeps working.
    let emu = emu::start(Options {
        invalidate_old_refresh_tokens: true,
        ..Options::default()
    })
    .await;
    let fx = Fixture::new();
    let config = emu::load(&emu::write_config(&fx, &emu, Sign::DeviceCode, ""));
    let first = emu::preset_login(&fx, &emu);
    let files = emu::acceptance_tree(&fx, false);
    // Mid-upload, every access token expires (twice).
    emu.add_faults("graph:expire-token:after=4:count=1,graph:expire-token:after=9:count=1")
        .unwrap();
    let reports = emu::sync(&config, &emu::fast_policy()).await;
    emu::assert_clean(&reports);
    emu::assert_arrived(&emu, &files);
    let refreshes = emu
        .requests()
        .iter()
        .filter(|r| r.route == "token" && r.status == 200)
        .count();
    assert_eq!(
        refreshes, 3,
        "one at start, one per expiry, however many saw the 401"
    );
    let graph_401 = emu
        .requests()
        .iter()
        .filter(|r| r.route == "graph" && r.status == 401)
        .count();
    assert!(
        (2..=8).contains(&graph_401),
        "each expiry refused at most the requests in flight: {graph_401}"
    );

    // A new process (as after a crash) starts from the file: it must hold
    // the newest token, since every older one is already refused.
    let on_disk = TokenStore::in_dir(&fx.state()).load().unwrap().unwrap();
    assert_ne!(on_disk.expose_secret(), first);
    let fresh = provider(&config, &fx, RetryPolicy::default());
    fresh.access_token().await.expect("the stored token works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshes_are_serialised_across_concurrent_callers() {
    let emu = emu::start(Options {
        invalidate_old_refresh_tokens: true,
        ..Options::default()
    })
    .await;
    let fx = Fixture::new();
    let config = emu::load(&emu::write_config(&fx, &emu, Sign::DeviceCode, ""));
    emu::preset_login(&fx, &emu);
    let provider = Arc::new(provider(&config, &fx, RetryPolicy::default()));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let p = Arc::clone(&provider);
        tasks.push(tokio::spawn(
            async move { p.access_token().await.map(|_| ()) },
        ));
    }
    for t in tasks {
        t.await.unwrap().expect("every caller gets a token");
    }
    let token_requests = emu.requests().iter().filter(|r| r.route == "token").count();
    assert_eq!(token_requests, 1, "one refresh for everyone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_sign_in_exits_77_and_after_login_the_pending_files_go_up() {
    let emu = emu::start(quick_login_options()).await;
    let fx = Fixture::new();
    let config = emu::write_config(&fx, &emu, Sign::DeviceCode, "");
    emu::preset_login(&fx, &emu);
    emu::put(&fx, "a.txt", b"first");
    emu::put(&fx, "sub/b.txt", b"second");
    emu.revoke();

    let out = run_async(config.clone(), &["sync"], &[]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(77), "{stdout}\n{stderr}");
    assert!(stderr.contains("run `sharepush login`"), "{stderr}");
    assert!(emu.tree().is_empty());

    // The administrator signs in again (the test plays the browser).
    let child = Command::new(env!("CARGO_BIN_EXE_sharepush"))
        .arg("--config")
        .arg(&config)
        .arg("login")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    approve_when_asked(&emu).await;
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("enter the code"), "{stdout}");

    let out = run_async(config, &["sync"], &[]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("job docs: 2 uploaded"), "{stdout}");
    let paths: Vec<String> = emu.tree().into_iter().map(|e| e.path).collect();
    assert_eq!(
        paths,
        [format!("{FOLDER}/a.txt"), format!("{FOLDER}/sub/b.txt")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn importing_a_refresh_token_checks_and_rotates_it() {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let config = emu::write_config(&fx, &emu, Sign::DeviceCode, "");
    let reply = emu.user_tokens(emu::CLIENT_ID, "Files.ReadWrite.All offline_access");
    let file = fx.path("rt.txt");
    std::fs::write(&file, reply["refresh_token"].as_str().unwrap()).unwrap();
    let out = run_async(
        config.clone(),
        &["login", "--refresh-token-file", file.to_str().unwrap()],
        &[],
    )
    .await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let stored = std::fs::read_to_string(fx.state().join("refresh-token")).unwrap();
    assert_ne!(
        stored.trim(),
        reply["refresh_token"].as_str().unwrap(),
        "rotated"
    );

    // A token the service refuses is not stored: the working sign-in stays.
    std::fs::write(&file, "not-a-token").unwrap();
    let out = run_async(
        config.clone(),
        &["login", "--refresh-token-file", file.to_str().unwrap()],
        &[],
    )
    .await;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(77), "{stderr}");
    assert!(stderr.contains("sharepush login"), "{stderr}");
    let after = std::fs::read_to_string(fx.state().join("refresh-token")).unwrap();
    assert_eq!(
        after, stored,
        "the refused import left the stored sign-in alone"
    );
    emu::put(&fx, "a.txt", b"still signed in");
    let out = run_async(config, &["sync"], &[]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("job docs: 1 uploaded"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_sign_in_is_asked_once_for_everyone_waiting_and_a_new_login_ends_it() {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let config = emu::load(&emu::write_config(&fx, &emu, Sign::DeviceCode, ""));
    emu::preset_login(&fx, &emu);
    emu.revoke();
    let provider = Arc::new(provider(&config, &fx, RetryPolicy::default()));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let p = Arc::clone(&provider);
        tasks.push(tokio::spawn(
            async move { p.access_token().await.map(|_| ()) },
        ));
    }
    for t in tasks {
        let e = t.await.unwrap().expect_err("the sign-in is revoked");
        assert!(matches!(e, AuthError::LoginNeeded { .. }), "{e}");
    }
    let token_requests = || emu.requests().iter().filter(|r| r.route == "token").count();
    assert_eq!(
        token_requests(),
        1,
        "the queued callers got the first answer"
    );

    // A new login replaces the file: the next caller signs in at once.
    emu::preset_login(&fx, &emu);
    provider.access_token().await.expect("the new login works");
    assert_eq!(token_requests(), 2);
}

/// A refresh token refused for good is not sent again, however long ago
/// that was: only a new login (a new token file) makes the next try. It
/// was sent again 30 s later, by every job run of a daemon waiting for a
/// login.
#[tokio::test]
async fn a_refused_refresh_token_is_not_sent_again_until_a_new_login() {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let config = emu::load(&emu::write_config(&fx, &emu, Sign::DeviceCode, ""));
    emu::preset_login(&fx, &emu);
    emu.revoke();
    let provider = provider(&config, &fx, RetryPolicy::default());
    let token_requests = || emu.requests().iter().filter(|r| r.route == "token").count();
    let e = provider.access_token().await.expect_err("revoked");
    assert!(matches!(e, AuthError::LoginNeeded { .. }), "{e}");
    assert_eq!(token_requests(), 1);
    // An hour later, with the same token file.
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(3600)).await;
    tokio::time::resume();
    let e = provider.access_token().await.expect_err("still revoked");
    assert!(matches!(e, AuthError::LoginNeeded { .. }), "{e}");
    assert_eq!(token_requests(), 1, "the refused token was not sent again");

    emu::preset_login(&fx, &emu);
    provider.access_token().await.expect("the new login works");
    assert_eq!(token_requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_sign_in_exits_77_even_with_nothing_to_upload() {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let config = emu::write_config(&fx, &emu, Sign::DeviceCode, "");
    emu::preset_login(&fx, &emu);
    emu::put(&fx, "a.txt", b"first");
    let out = run_async(config.clone(), &["sync"], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));

    emu.revoke();
    let out = run_async(config.clone(), &["sync"], &[]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(77), "{stdout}\n{stderr}");
    assert!(stderr.contains("run `sharepush login`"), "{stderr}");
    let out = run_async(config, &["status"], &[]).await;
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(77), "{stdout}");
    assert!(
        stdout.contains("login needed: run `sharepush login`"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_upload_resumes_its_session_without_resending() {
    // Slow requests down so the process can be killed mid-upload.
    let emu = emu::start(Options {
        latency: Duration::from_millis(15),
        ..Options::default()
    })
    .await;
    let fx = Fixture::new();
    let config = emu::write_config(&fx, &emu, Sign::Secret, "concurrency = 1");
    let bytes = emu::content(40 * MIB, 3);
    emu::put(&fx, "forty.bin", &bytes);
    let fragment = 960 * 1024;
    let fragments = (40 * MIB).div_ceil(fragment);

    let mut child = Command::new(env!("CARGO_BIN_EXE_sharepush"))
        .arg("--config")
        .arg(&config)
        .arg("sync")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let accepted = |log: &[graph_emulator::RequestRecord]| {
        log.iter()
            .filter(|r| r.route == "upload" && r.status == 202)
            .count()
    };
    assert!(
        emu.wait_for_requests(Duration::from_secs(60), |log| accepted(log) >= 10)
            .await,
        "fragments did not start"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let sent_before = accepted(&emu.requests());
    assert!(sent_before < fragments, "killed before the end");

    // The session was saved before the first fragment, with its offset.
    let saved = {
        let store = sharepush::state::Store::open_read_only(&fx.state()).unwrap();
        store
            .session("docs", "forty.bin")
            .unwrap()
            .expect("session row")
    };
    assert!(saved.next_offset > 0, "offset recorded");
    assert!(saved.next_offset <= (sent_before * fragment) as u64);

    // The first question about the saved session meets a transient 404 (a
    // busy tenant): asked again, not given up.
    emu.add_faults("session:404:count=1").unwrap();
    let out = run_async(config, &["sync"], &[]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    emu::assert_arrived(&emu, &[("forty.bin".to_string(), bytes)]);

    let log = emu.requests();
    let created = log
        .iter()
        .filter(|r| r.path.ends_with("forty.bin:/createUploadSession"))
        .count();
    assert_eq!(created, 1, "the same session was resumed");
    assert!(
        !log.iter().any(|r| r.status == 416),
        "no fragment before the service's offset was sent again"
    );
    let stored = log
        .iter()
        .filter(|r| r.route == "upload" && matches!(r.status, 200..=202))
        .count();
    assert_eq!(stored, fragments, "every fragment stored exactly once");
    let resumes = log
        .iter()
        .filter(|r| r.route == "session" && r.method == "GET")
        .count();
    assert_eq!(
        resumes, 2,
        "asked where it stood, and once more after the 404"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_sync_promptly_and_the_next_sync_resumes_the_session() {
    let emu = emu::start(Options {
        latency: Duration::from_millis(15),
        ..Options::default()
    })
    .await;
    let fx = Fixture::new();
    let config = emu::write_config(&fx, &emu, Sign::Secret, "concurrency = 1");
    let bytes = emu::content(40 * MIB, 4);
    emu::put(&fx, "forty.bin", &bytes);
    // Each fragment takes a while, so one is in flight when the signal lands.
    emu.add_faults("upload:latency:ms=200").unwrap();
    let fragment = 960 * 1024;
    let fragments = (40 * MIB).div_ceil(fragment);

    let child = Command::new(env!("CARGO_BIN_EXE_sharepush"))
        .arg("--config")
        .arg(&config)
        .arg("sync")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let accepted = |log: &[graph_emulator::RequestRecord]| {
        log.iter()
            .filter(|r| r.route == "upload" && r.status == 202)
            .count()
    };
    assert!(
        emu.wait_for_requests(Duration::from_secs(60), |log| accepted(log) >= 3)
            .await,
        "fragments did not start"
    );
    let signalled = std::time::Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let took = signalled.elapsed();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(143), "{stdout}\n{stderr}");
    assert!(took < Duration::from_secs(6), "exited after {took:?}");
    assert!(stderr.contains("stopped by SIGTERM"), "{stderr}");
    assert!(stdout.contains("resume on the next run"), "{stdout}");
    let sent_before = accepted(&emu.requests());
    assert!(sent_before < fragments, "stopped before the end");
    let saved = {
        let store = sharepush::state::Store::open_read_only(&fx.state()).unwrap();
        store
            .session("docs", "forty.bin")
            .unwrap()
            .expect("session row")
    };
    assert_eq!(
        saved.next_offset,
        (sent_before * fragment) as u64,
        "every accepted fragment recorded (the one in flight finished)"
    );

    emu.clear_faults();
    let out = run_async(config, &["sync"], &[]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    emu::assert_arrived(&emu, &[("forty.bin".to_string(), bytes)]);
    let log = emu.requests();
    let created = log
        .iter()
        .filter(|r| r.path.ends_with("forty.bin:/createUploadSession"))
        .count();
    assert_eq!(created, 1, "the same session was resumed");
    let stored = log
        .iter()
        .filter(|r| r.route == "upload" && matches!(r.status, 200..=202))
        .count();
    assert_eq!(stored, fragments, "every fragment stored exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_log_even_at_trace_level() {
    let emu = emu::start(Options::default()).await;

    // Delegated: refresh tokens (old and rotated), access tokens, upload URLs.
    let fx = Fixture::new();
    let config = emu::write_config(&fx, &emu, Sign::DeviceCode, "");
    let first = emu::preset_login(&fx, &emu);
    emu::put(&fx, "big.bin", &emu::content(2 * MIB, 1));
    emu::put(&fx, "small.txt", b"x");
    emu.add_faults("graph:expire-token:after=2:count=1")
        .unwrap();
    let out = run_async(config, &["-vv", "sync"], &[("RUST_LOG", "trace")]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stderr.contains("TRACE"), "trace logging was on");
    let rotated = std::fs::read_to_string(fx.state().join("refresh-token")).unwrap();
    for secret in [
        first.as_str(),
        rotated.trim(),
        "eyJ0eXAi",
        "tempauth",
        "Bearer ",
    ] {
        assert!(!stderr.contains(secret), "{secret:?} leaked into the log");
        assert!(
            !stdout.contains(secret),
            "{secret:?} leaked into the output"
        );
    }

    // App-only: the client secret.
    let fx = Fixture::new();
    let config = emu::write_config(&fx, &emu, Sign::Secret, "");
    emu::put(&fx, "c.txt", b"y");
    let out = run_async(config, &["-vv", "sync"], &[("RUST_LOG", "trace")]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    for secret in [emu::SECRET, "eyJ0eXAi", "tempauth"] {
        assert!(!stderr.contains(secret), "{secret:?} leaked into the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_only_sign_in_with_a_certificate_uploads() {
    let emu = emu::start(Options {
        client_certificates: vec![emu::certificate()],
        ..Options::default()
    })
    .await;
    let fx = Fixture::new();
    let config = emu::load(&emu::write_config(&fx, &emu, Sign::Certificate, ""));
    emu::put(&fx, "a.txt", b"signed by a certificate");
    let reports = emu::sync(&config, &emu::fast_policy()).await;
    emu::assert_clean(&reports);
    assert_eq!(reports[0].uploaded, 1);
    assert!(
        !fx.state().join("refresh-token").exists(),
        "app-only keeps no token"
    );

    // A certificate the app does not know: refused, a clear error, exit 77.
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let config = emu::write_config(&fx, &emu, Sign::Certificate, "");
    emu::put(&fx, "a.txt", b"x");
    let out = run_async(config, &["sync"], &[]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(77), "{stdout}\n{stderr}");
    assert!(stderr.contains("invalid_client"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captive_portal_page_is_a_network_problem_not_a_login_problem() {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let config = emu::load(&emu::write_config(&fx, &emu, Sign::DeviceCode, ""));
    emu::preset_login(&fx, &emu);
    // Two pages, then the real service: retried through.
    emu.add_faults("token:html:count=2").unwrap();
    provider(&config, &fx, emu::fast_policy().policy)
        .access_token()
        .await
        .expect("retried past the pages");

    // Nothing but pages: unavailable (retried later), never "login needed".
    emu.add_faults("token:html").unwrap();
    let e = provider(&config, &fx, emu::fast_policy().policy)
        .access_token()
        .await
        .expect_err("no token behind the portal");
    assert!(matches!(e, AuthError::Unavailable { .. }), "{e}");
    assert!(!e.needs_person(), "{e}");
    assert!(e.to_string().contains("not a token"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_stored_during_a_refresh_is_not_overwritten_by_the_old_sign_ins_successor() {
    use notify_debouncer_full::notify::{self, Watcher as _};
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let config = emu::load(&emu::write_config(&fx, &emu, Sign::DeviceCode, ""));
    emu::preset_login(&fx, &emu);
    let token_file = fx.state().join("refresh-token");
    // The refresh opens the file, then its reply takes a second: the new
    // login lands in between (renamed over it, as `login` does, so the open
    // file keeps the old token).
    emu.add_faults("token:latency:ms=1000:count=1").unwrap();
    let (read_tx, mut read_rx) = tokio::sync::mpsc::unbounded_channel();
    let watched = token_file.clone();
    let mut watcher = notify::recommended_watcher(move |e: notify::Result<notify::Event>| {
        if let Ok(e) = e
            && matches!(
                e.kind,
                notify::EventKind::Access(notify::event::AccessKind::Open(_))
            )
            && e.paths.contains(&watched)
        {
            let _ = read_tx.send(());
        }
    })
    .unwrap();
    watcher
        .watch(&fx.state(), notify::RecursiveMode::NonRecursive)
        .unwrap();
    let provider = Arc::new(provider(&config, &fx, RetryPolicy::default()));
    let p = Arc::clone(&provider);
    let refresh = tokio::spawn(async move { p.access_token().await.map(|_| ()) });
    tokio::time::timeout(Duration::from_secs(10), read_rx.recv())
        .await
        .expect("the refresh reads the stored token");
    let new_login =
        emu.user_tokens(emu::CLIENT_ID, "Files.ReadWrite.All offline_access")["refresh_token"]
            .as_str()
            .unwrap()
            .to_string();
    let tmp = fx.state().join("new-login.tmp");
    std::fs::write(&tmp, &new_login).unwrap();
    std::fs::rename(&tmp, &token_file).unwrap();
    refresh
        .await
        .unwrap()
        .expect("the old sign-in still refreshed");
    assert_eq!(
        std::fs::read_to_string(&token_file).unwrap(),
        new_login,
        "the new login survived the old sign-in's rotation"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_stopped_by_a_revoked_sign_in_wait_as_pending_not_uploading() {
    use sharepush::state::FileStateKind;
    let emu = emu::start(Options {
        latency: Duration::from_millis(20),
        ..Options::default()
    })
    .await;
    let fx = Fixture::new();
    let config = emu::load(&emu::write_config(
        &fx,
        &emu,
        Sign::DeviceCode,
        "concurrency = 1",
    ));
    emu::preset_login(&fx, &emu);
    for name in ["a.bin", "b.bin", "c.bin", "d.bin"] {
        emu::put(&fx, name, &emu::content(2 * MIB, 7));
    }
    let run = {
        let config = config.clone();
        tokio::spawn(async move { emu::sync(&config, &emu::fast_policy()).await })
    };
    // Once the first upload is under way, the sign-in is revoked and every
    // access token expires: the next Graph call cannot get a new one.
    assert!(
        emu.wait_for_requests(Duration::from_secs(30), |log| log
            .iter()
            .any(|r| r.path.ends_with("/createUploadSession")))
            .await
    );
    emu.revoke();
    emu.expire_access_tokens();
    let reports = run.await.unwrap();
    assert!(reports[0].login_needed.is_some(), "{:?}", reports[0]);
    assert!(reports[0].uploaded < 4, "{:?}", reports[0]);
    let store = sharepush::state::Store::open_read_only(&fx.state()).unwrap();
    let uploading = store
        .files_in_state("docs", FileStateKind::Uploading)
        .unwrap();
    assert!(uploading.is_empty(), "{uploading:?}");
    let pending = store
        .files_in_state("docs", FileStateKind::Pending)
        .unwrap();
    assert_eq!(
        pending.len() as u64 + reports[0].uploaded,
        4,
        "the rest wait for the login: {pending:?}"
    );
}
