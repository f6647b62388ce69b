//! `sharepush-bench`: the benchmark harness.
//!
//! Every target is a *ratio* against a baseline measured in the same run on the
//! same machine (page cache warm for both), never an absolute time, so the
//! numbers mean the same on a laptop and on CI. Scenarios are chosen by name
//! and print one table (wall, CPU, peak RSS, ratio to baseline, target, verdict),
//! optionally as JSON.
//!
//! `upload-small` and `upload-large` run `sharepush sync` and `rclone copy`
//! against the `graph-emulator` binary (see `upload.rs`); they are not in
//! the default set (minutes, gigabytes, root for rclone's namespace).
//! `reconcile` (also not default) seeds the emulator with a 200,000-item
//! library of which the job owns 20,000 and measures `sharepush sync`'s
//! first run (adopting every file) and a run after 100 remote edits.
//!
//! External commands (sharepush itself, `find`, `sha1sum`) are measured in a
//! child `sharepush-bench __measure` process that runs the command and reads
//! `getrusage(RUSAGE_CHILDREN)`: exact CPU and peak RSS of that command alone.
//! In-process measurements (hashing) use `RUSAGE_SELF` deltas.
//!
//! `idle`, `latency` and `burst` run `sharepush run` as a child watching a
//! folder, against graph-emulator in this process (see `daemon.rs`); not in
//! the default set either (the full sizes take most of an hour).
//!
//! What it does not do: decide pass/fail for CI (benchmarks are not tests; the
//! exit status is 0 unless a scenario could not run or produced wrong results).
#![forbid(unsafe_code)]

mod daemon;
mod emulator;
mod measure;
mod scenarios;
mod upload;

use std::path::PathBuf;

use clap::Parser;

/// Benchmarks for sharepush, as ratios against baselines run in the same process.
#[derive(Debug, Parser)]
#[command(name = "sharepush-bench", version)]
pub struct Args {
    /// Scenarios to run: scan, hash, emulator, upload-small, upload-large,
    /// idle, latency, burst, change, reconcile (scan, hash and emulator when
    /// none given).
    #[arg(value_name = "SCENARIO")]
    scenarios: Vec<String>,

    /// Print the results as one JSON object instead of a table.
    #[arg(long)]
    json: bool,

    /// Where generated trees and files live (reused between runs when the shape matches).
    #[arg(long, default_value = "target/bench-data")]
    work_dir: PathBuf,

    /// scan: number of files.
    #[arg(long, default_value_t = 100_000)]
    files: usize,

    /// scan: number of folders the files are spread over.
    #[arg(long, default_value_t = 1_000)]
    dirs: usize,

    /// scan: smallest file, bytes.
    #[arg(long, default_value_t = 1024)]
    min_size: usize,

    /// scan: largest file, bytes.
    #[arg(long, default_value_t = 16 * 1024)]
    max_size: usize,

    /// hash and emulator: size of the large file in MiB.
    #[arg(long, default_value_t = 1024)]
    hash_mib: usize,

    /// upload-small: number of 8 KiB files.
    #[arg(long, default_value_t = 5_000)]
    small_files: usize,

    /// upload-small: emulator latency per request in milliseconds (a WAN).
    #[arg(long, default_value_t = 20)]
    latency_ms: u64,

    /// upload-large: size of the one file in MiB.
    #[arg(long, default_value_t = 2048)]
    large_mib: usize,

    /// upload-large: runs of the emulator's ingest and of `sharepush sync`,
    /// alternated; each side is judged by its fastest run (the same rule for
    /// both, so a noisy moment on a shared machine does not decide the ratio).
    #[arg(long, default_value_t = 3)]
    repeat: usize,

    /// upload-*: skip the rclone comparison.
    #[arg(long)]
    no_rclone: bool,

    /// upload-*: extra `[defaults]` lines for sharepush's config, e.g.
    /// 'concurrency = 16' (experiments; the reported numbers use none).
    #[arg(long, value_name = "TOML")]
    sharepush_defaults: Option<String>,

    /// upload-*: where the emulator stores content (default: the work dir);
    /// a tmpfs such as /dev/shm takes disk write-back out of the numbers.
    #[arg(long, value_name = "DIR")]
    emulator_data: Option<PathBuf>,

    /// idle: files in the watched tree (uploaded by the startup run first).
    #[arg(long, default_value_t = 100_000)]
    idle_files: usize,

    /// idle: minutes watched with no change (CPU is reported per 10 minutes).
    #[arg(long, default_value_t = 10.0)]
    idle_minutes: f64,

    /// latency: files written, one after the other.
    #[arg(long, default_value_t = 200)]
    writes: usize,

    /// latency: the job's `debounce` in milliseconds (config default 2000).
    #[arg(long, default_value_t = 2000)]
    debounce_ms: u64,

    /// latency: the job's `settle` in milliseconds (config default 5000).
    #[arg(long, default_value_t = 5000)]
    settle_ms: u64,

    /// change: files in the watched tree, one of which is edited at a time.
    #[arg(long, default_value_t = 20_000)]
    change_files: usize,

    /// burst: files created at once while the daemon watches.
    #[arg(long, default_value_t = 10_000)]
    burst_files: usize,

    /// reconcile: items in the large library (the job's included).
    #[arg(long, default_value_t = 200_000)]
    library_items: usize,

    /// reconcile: files the job owns (also the small library's size).
    #[arg(long, default_value_t = 20_000)]
    job_items: usize,

    /// The sharepush binary (default: next to this one).
    #[arg(long)]
    sharepush: Option<PathBuf>,

    /// The graph-emulator binary, built with the `tls` feature for the rclone
    /// comparison (default: next to this one).
    #[arg(long)]
    emulator: Option<PathBuf>,

    /// Internal: run a command and print its rusage as JSON.
    #[arg(long = "__measure", hide = true, num_args = 1.., allow_hyphen_values = true)]
    measure: Option<Vec<String>>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(command) = &args.measure {
        return measure::child_main(command);
    }
    let names: Vec<String> = if args.scenarios.is_empty() {
        vec!["scan".into(), "hash".into(), "emulator".into()]
    } else {
        args.scenarios.clone()
    };
    let mut rows = Vec::new();
    for name in &names {
        match name.as_str() {
            "scan" => rows.extend(scenarios::scan(&args)?),
            "hash" => rows.extend(scenarios::hash(&args)?),
            "emulator" => rows.extend(emulator::emulator(&args)?),
            "upload-small" => rows.extend(upload::upload_small(&args)?),
            "upload-large" => rows.extend(upload::upload_large(&args)?),
            "idle" => rows.extend(daemon::idle(&args)?),
            "latency" => rows.extend(daemon::latency(&args)?),
            "burst" => rows.extend(daemon::burst(&args)?),
            "change" => rows.extend(daemon::change(&args)?),
            "reconcile" => rows.extend(upload::reconcile(&args)?),
            other => anyhow::bail!(
                "unknown scenario {other:?}; known: scan, hash, emulator, upload-small, upload-large, idle, latency, burst, change, reconcile"
            ),
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        measure::print_table(&rows);
    }
    Ok(())
}
