//! `sharepush demo` as a new user runs it: the bundled config and sample
//! folder, the emulator in-process. Each test has its own state dir and
//! `--port 0` (a free loopback port), so tests never meet each other or a
//! developer's running demo.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::support::{Fixture, text};

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Every file of the sample folder with the remote path it must get
/// (the name SharePoint refuses arrives with full-width look-alikes).
fn sample_files() -> Vec<(String, String)> {
    let expected = [
        ("README.txt", "Backups/demo/README.txt"),
        (
            "notes: draft?.txt",
            "Backups/demo/notes\u{ff1a} draft\u{ff1f}.txt",
        ),
        ("photos/noise.bin", "Backups/demo/photos/noise.bin"),
        ("reports/2026-q3.csv", "Backups/demo/reports/2026-q3.csv"),
        ("reports/empty.log", "Backups/demo/reports/empty.log"),
        ("reports/traffic.csv", "Backups/demo/reports/traffic.csv"),
    ];
    // The sample holds exactly these files: a new one must be added here.
    let mut found = Vec::new();
    let root = repo_file("config/demo/sample");
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let rel = path.strip_prefix(&root).unwrap();
                found.push(rel.to_str().unwrap().to_string());
            }
        }
    }
    found.sort();
    let mut names: Vec<String> = expected.iter().map(|(l, _)| l.to_string()).collect();
    names.sort();
    assert_eq!(found, names, "config/demo/sample changed");
    expected
        .iter()
        .map(|(l, r)| (l.to_string(), r.to_string()))
        .collect()
}

fn demo(fx: &Fixture, args: &[&str]) -> Output {
    let mut all = vec!["demo", "--port", "0"];
    all.extend_from_slice(args);
    fx.sharepush(&repo_file("config/demo.toml"), &all)
}

#[test]
fn demo_uploads_every_sample_file_with_its_hash_then_nothing_on_a_second_run() {
    let fx = Fixture::new();
    let out = demo(&fx, &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    let files = sample_files();
    assert!(stdout.contains("job demo: 6 uploaded"), "{stdout}");
    assert!(
        stdout.contains("encoded  notes: draft?.txt -> notes\u{ff1a} draft\u{ff1f}.txt"),
        "{stdout}"
    );
    for (local, remote) in &files {
        let (hashes, size) =
            sharepush::hash::hash_file(&repo_file("config/demo/sample").join(local)).unwrap();
        let line = stdout
            .lines()
            .find(|l| l.contains(remote.as_str()))
            .unwrap_or_else(|| panic!("{remote} not listed:\n{stdout}"));
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words[0], size.to_string(), "{line}");
        assert_eq!(words[1], hashes.quick_xor, "{line}");
        assert_eq!(words[2], "match", "{line}");
    }
    assert!(
        stdout.contains("6 of 6 file(s) match their local copy"),
        "{stdout}"
    );
    // The sign-in went through the import path into the state dir.
    assert!(fx.state().join("refresh-token").is_file());

    // Second run: the emulator's library persisted in the state dir, and
    // nothing is sent again.
    let out = demo(&fx, &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(stdout.contains("job demo: 0 uploaded (0 B in"), "{stdout}");
    assert!(stdout.contains(", 6 up to date"), "{stdout}");
    assert!(
        stdout.contains("0 with file content: nothing was (re-)uploaded"),
        "{stdout}"
    );
    assert!(
        stdout.contains("6 of 6 file(s) match their local copy"),
        "{stdout}"
    );
}

#[test]
fn demo_names_the_taken_port_and_the_option_to_change_it() {
    let fx = Fixture::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = fx.sharepush(&repo_file("config/demo.toml"), &["demo", "--port", &port]);
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(75),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(
        stderr.contains(&format!("Port {port} is taken")),
        "{stderr}"
    );
    assert!(stderr.contains("--port 0"), "{stderr}");
}

#[test]
fn demo_refuses_a_config_that_is_not_the_emulator() {
    let fx = Fixture::new();
    let out = fx.sharepush(&repo_file("config/example.toml"), &["demo", "--port", "0"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(78),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(
        stderr.contains("only talks to the emulator it starts"),
        "{stderr}"
    );
    assert!(!fx.state().exists(), "nothing may be started");
}

#[test]
fn demo_config_passes_check() {
    let fx = Fixture::new();
    let out = fx.sharepush(&repo_file("config/demo.toml"), &["check"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(stdout.contains("job demo"), "{stdout}");
}
