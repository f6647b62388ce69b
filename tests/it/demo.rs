//! `sharepush demo` as a new user runs it: the bundled config and sample
//! folder, the emulator in-process. Each test has its own state dir and
//! `--port 0` (a free loopback port), so tests never meet each other or a
//! developer's running demo.

use std::fs;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    let mut all = vec!["demo", "--port", "0", "--once"];
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
    let out = fx.sharepush(
        &repo_file("config/demo.toml"),
        &["demo", "--port", &port, "--once"],
    );
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
    let out = fx.sharepush(
        &repo_file("config/example.toml"),
        &["demo", "--port", "0", "--once"],
    );
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

/// Copies a directory tree (the sample folder into a scratch dir).
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_tree(&path, &target);
        } else {
            fs::copy(&path, &target).unwrap();
        }
    }
}

/// A running `sharepush demo` whose stdout is collected as it comes.
struct Running {
    child: Child,
    stdout: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    fn start(fx: &Fixture, source: &Path) -> Running {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sharepush"))
            .arg("--config")
            .arg(repo_file("config/demo.toml"))
            .arg("--state-dir")
            .arg(fx.state())
            .args(["demo", "--port", "0", "--source"])
            .arg(source)
            .env_remove("RUST_LOG")
            .env_remove("SHAREPUSH_CONFIG")
            .env_remove("SHAREPUSH_STATE_DIR")
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("running sharepush demo");
        let stdout = Arc::new(Mutex::new(String::new()));
        let pipe = child.stdout.take().unwrap();
        let sink = Arc::clone(&stdout);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Running {
            child,
            stdout,
            reader: Some(reader),
        }
    }

    fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// Waits until stdout contains `needle`; fails with what was printed.
    fn wait_for(&mut self, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if self.stdout().contains(needle) {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "demo exited ({status}) before printing {needle:?}:\n{}",
                    self.stdout()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} within {within:?}:\n{}",
                self.stdout()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn interrupt(&self) {
        let ok = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -INT");
    }

    /// Waits for the exit; returns its code and the whole stdout.
    fn wait_exit(&mut self, within: Duration) -> (Option<i32>, String) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                if let Some(r) = self.reader.take() {
                    r.join().unwrap();
                }
                return (status.code(), self.stdout());
            }
            assert!(
                Instant::now() < deadline,
                "demo still running {within:?} after SIGINT:\n{}",
                self.stdout()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn demo_keeps_watching_prints_each_new_upload_and_stops_cleanly_on_ctrl_c() {
    let fx = Fixture::new();
    let source = fx.path("sample");
    copy_tree(&repo_file("config/demo/sample"), &source);
    let mut demo = Running::start(&fx, &source);
    demo.wait_for(
        "6 of 6 file(s) match their local copy",
        Duration::from_secs(60),
    );
    demo.wait_for("Ctrl-C stops.", Duration::from_secs(10));
    let before = demo.stdout();
    assert!(before.contains("job demo: 6 uploaded"), "{before}");
    assert!(!before.contains("uploaded hello.txt"), "{before}");

    // An edit in the watched copy goes up on its own, and says so.
    let body = b"written while the demo watches\n";
    fs::write(source.join("hello.txt"), body).unwrap();
    let (hashes, _) = sharepush::hash::hash_file(&source.join("hello.txt")).unwrap();
    demo.wait_for("uploaded hello.txt", Duration::from_secs(30));
    let now = demo.stdout();
    let line = now
        .lines()
        .find(|l| l.starts_with("uploaded hello.txt"))
        .unwrap();
    assert_eq!(
        line,
        format!(
            "uploaded hello.txt ({} B) -> Documents/Backups/demo/hello.txt, quickXorHash {}",
            body.len(),
            hashes.quick_xor
        )
    );
    // Only the new file: the six synced before are not announced again.
    assert_eq!(now.matches("\nuploaded ").count(), 1, "{now}");

    demo.interrupt();
    let (code, stdout) = demo.wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.contains("Stopping the daemon and the emulator."),
        "{stdout}"
    );
    // The repository's sample folder was never written.
    sample_files();

    // The state is consistent: a one-shot run afterwards finds all seven
    // files up to date on the (persisted) emulator and uploads nothing.
    let out = fx.sharepush(
        &repo_file("config/demo.toml"),
        &[
            "demo",
            "--port",
            "0",
            "--once",
            "--source",
            source.to_str().unwrap(),
        ],
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(stdout.contains(", 7 up to date"), "{stdout}");
    assert!(
        stdout.contains("7 of 7 file(s) match their local copy"),
        "{stdout}"
    );
}
