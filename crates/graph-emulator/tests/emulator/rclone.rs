//! Interop with a real client (feature `tls`): Debian's rclone (onedrive
//! backend, `drive_type = business`, a preset token) copies a tree of small
//! files and a 25 MiB file to the emulator and reads them back with
//! `rclone check --download`. rclone talks to the real host names over
//! HTTPS on port 443; a private mount namespace gives it its own
//! /etc/hosts (pointing them at a loopback address) and `SSL_CERT_FILE`
//! the test certificate, so nothing global changes. Skipped, with the
//! reason printed, when rclone or `unshare` is unavailable or port 443
//! cannot be bound.

use crate::common::{MIB, bytes};
use graph_emulator::{Options, TlsFiles, quick_xor_hash};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn on_path(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(cmd))
        .find(|p| p.is_file())
}

/// Run rclone in a private mount namespace with our /etc/hosts.
async fn rclone(dir: &Path, args: &[&str]) -> (bool, String) {
    let mut cmd = tokio::process::Command::new("unshare");
    cmd.args([
        "-m",
        "sh",
        "-c",
        "mount --bind \"$0\" /etc/hosts && exec rclone \"$@\"",
    ])
    .arg(dir.join("hosts"))
    .args(args)
    .args([
        "--config",
        dir.join("rclone.conf").to_str().unwrap(),
        "-v",
        "--retries",
        "1",
    ])
    .env("SSL_CERT_FILE", fixture("localhost.crt"))
    .env("HOME", dir)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(180), cmd.output())
        .await
        .expect("rclone finished in time")
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rclone_copies_and_checks_a_tree_against_the_emulator() {
    if on_path("rclone").is_none() {
        eprintln!("skipped: rclone is not installed (apt-get install rclone)");
        return;
    }
    let ns_ok = std::process::Command::new("unshare")
        .args(["-m", "true"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ns_ok {
        eprintln!("skipped: cannot create a mount namespace (unshare -m needs root)");
        return;
    }
    let pid = std::process::id();
    let ip = format!(
        "127.{}.{}.{}",
        100 + (pid >> 16) % 100,
        (pid >> 8) % 250 + 1,
        pid % 250 + 1
    );
    let listener = match tokio::net::TcpListener::bind((ip.as_str(), 443)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("skipped: cannot listen on {ip}:443: {e}");
            return;
        }
    };
    // rclone 1.60 sends its Authorization header to the upload URL too (the
    // service tolerates it), so this test runs with strict mode off.
    let opts = Options {
        tls: Some(TlsFiles {
            cert: fixture("localhost.crt"),
            key: fixture("localhost.key"),
        }),
        strict: false,
        ..Options::default()
    };
    let emu = graph_emulator::serve(listener, opts, std::future::pending())
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("hosts"),
        format!("127.0.0.1 localhost\n{ip} graph.microsoft.com login.microsoftonline.com contoso.sharepoint.com\n"),
    )
    .unwrap();
    let tok = emu.user_tokens(
        "rclone-test",
        "Files.ReadWrite.All Sites.ReadWrite.All offline_access",
    );
    let token = json!({
        "access_token": tok["access_token"],
        "token_type": "Bearer",
        "refresh_token": tok["refresh_token"],
        "expiry": "2099-01-01T00:00:00Z",
    });
    std::fs::write(
        d.join("rclone.conf"),
        format!(
            "[emu]\ntype = onedrive\nclient_id = rclone-test\nclient_secret = emulator-secret\ntoken = {token}\ndrive_id = {}\ndrive_type = business\n",
            emu.drive_id()
        ),
    )
    .unwrap();
    let src = d.join("src");
    let mut files = vec![
        ("empty.txt".to_string(), Vec::new()),
        ("big.bin".to_string(), bytes(25 * MIB, 1)),
    ];
    for i in 0..12 {
        files.push((
            format!("dir{}/sub/f{i}.txt", i % 3),
            format!("small file {i}\n").into_bytes(),
        ));
    }
    for (path, data) in &files {
        let p = src.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    let src_s = src.to_str().unwrap();

    let (ok, log) = rclone(d, &["copy", src_s, "emu:backup"]).await;
    assert!(ok, "rclone copy failed:\n{log}");
    let (ok, log) = rclone(d, &["check", "--download", src_s, "emu:backup"]).await;
    assert!(ok, "rclone check failed:\n{log}");
    assert!(log.contains("0 differences found"), "{log}");

    // A second copy finds everything up to date (mtime and hash match).
    let sessions = |e: &graph_emulator::Handle| {
        e.requests()
            .iter()
            .filter(|r| r.path.ends_with("/createUploadSession"))
            .count()
    };
    let before = sessions(&emu);
    let (ok, log) = rclone(d, &["copy", src_s, "emu:backup"]).await;
    assert!(ok, "{log}");
    assert_eq!(sessions(&emu), before, "nothing re-uploaded:\n{log}");

    let tree = emu.tree();
    assert_eq!(tree.len(), files.len());
    for (path, data) in &files {
        let e = tree
            .iter()
            .find(|e| e.path == format!("backup/{path}"))
            .unwrap_or_else(|| panic!("{path} missing"));
        assert_eq!(
            (e.size, e.quick_xor_hash.as_str()),
            (data.len() as u64, quick_xor_hash(data).as_str()),
            "{path}"
        );
    }
    emu.shutdown().await.unwrap();
}
