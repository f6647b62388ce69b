//! What `sync` logs, read from the real binary's stderr: one `run` span per
//! job run with a summary line, JSON lines that keep the span's fields, no
//! line per unchanged file, and stderr when the journal cannot be reached.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use graph_emulator::Options;
use serde_json::Value;

use crate::emu::{self, Sign};
use crate::support::Fixture;

/// Runs `sharepush --config C ARGS` with stderr into a file; returns the
/// exit code and what was logged.
async fn run_logged(config: &Path, args: &[&str], log: PathBuf, journal: bool) -> (i32, String) {
    let config = config.to_path_buf();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let file = std::fs::File::create(&log).unwrap();
        let meta = file.metadata().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sharepush"));
        cmd.arg("--config")
            .arg(&config)
            .args(&args)
            .env_remove("RUST_LOG")
            .env_remove("JOURNAL_STREAM")
            .stdout(Stdio::null())
            .stderr(file);
        if journal {
            // What systemd sets when stderr is the journal's stream.
            cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
        }
        let status = cmd.status().unwrap();
        (
            status.code().unwrap(),
            std::fs::read_to_string(&log).unwrap(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_one_span_with_one_summary_and_no_line_per_unchanged_file() {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let config = emu::write_config(&fx, &emu, Sign::Secret, "");
    for i in 0..5 {
        emu::put(
            &fx,
            &format!("dir/unchanged-{i}.txt"),
            format!("file {i}").as_bytes(),
        );
    }
    let (code, log) = run_logged(
        &config,
        &["--log-format", "json", "sync"],
        fx.path("1.log"),
        false,
    )
    .await;
    assert_eq!(code, 0, "{log}");
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let summaries: Vec<&Value> = lines
        .iter()
        .filter(|l| l["fields"]["message"] == "run finished")
        .collect();
    assert_eq!(summaries.len(), 1, "{log}");
    let s = summaries[0];
    assert_eq!(s["fields"]["uploaded"], 5, "{s}");
    assert_eq!(s["fields"]["new"], 5, "{s}");
    assert!(s["fields"]["bytes"].as_u64().unwrap() > 0, "{s}");
    assert!(s["fields"]["elapsed_ms"].is_u64(), "{s}");
    assert_eq!(s["span"]["name"], "run", "{s}");
    assert_eq!(s["span"]["job"], "docs", "{s}");
    assert_eq!(s["span"]["trigger"], "manual", "{s}");

    // Nothing changed: at debug level still no line names a file.
    let (code, log) = run_logged(&config, &["-v", "sync"], fx.path("2.log"), false).await;
    assert_eq!(code, 0, "{log}");
    assert!(
        !log.contains("unchanged-"),
        "a line per unchanged file:\n{log}"
    );
    let summary = log
        .lines()
        .find(|l| l.contains("run finished"))
        .unwrap_or_else(|| panic!("no summary:\n{log}"));
    assert!(
        summary.contains("run{job=docs trigger=manual}"),
        "{summary}"
    );
    assert!(summary.contains("uploaded=0"), "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_stderr_on_the_journal_but_no_journal_socket_lines_still_reach_stderr() {
    if Path::new("/run/systemd/journal/socket").exists() {
        eprintln!("skipped: journald is running here, records would go to the real journal");
        return;
    }
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let config = emu::write_config(&fx, &emu, Sign::Secret, "");
    emu::put(&fx, "a.txt", b"hello");
    let (code, log) = run_logged(&config, &["sync"], fx.path("j.log"), true).await;
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("run finished"), "{log}");
}
