//! The commands behind the CLI, as library functions that write to any
//! `Write` so tests call them in-process and read what a user would see.
//!
//! Each returns the [`ExitCode`] the process should end with; none calls
//! `process::exit`. Logging goes through `tracing` (stderr/journald), the
//! command's report goes to the given writer (stdout).

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;

use chrono::{Local, SecondsFormat};
use serde::Serialize;

use crate::cli::GlobalArgs;
use crate::config::{Config, JobSpec};
use crate::error::ExitCode;
use crate::scan::{self, Change, ScanOptions};
use crate::state::Store;

/// Loads the config named by the global options and applies `--state-dir`.
/// On failure prints every problem to `err` and returns exit code 78.
pub fn load_config(global: &GlobalArgs, err: &mut dyn Write) -> Result<Config, ExitCode> {
    match Config::load(&global.config) {
        Ok(config) => Ok(config.with_state_dir_override(global.state_dir.clone())),
        Err(errors) => {
            let _ = writeln!(err, "{errors}");
            let _ = writeln!(
                err,
                "{} problem(s) in {}; nothing was started.",
                errors.0.len(),
                global.config.display()
            );
            Err(ExitCode::Config)
        }
    }
}

/// `sharepush check`: every job with its target, schedule and next three
/// runs, or every config error (exit 78).
pub fn check(global: &GlobalArgs, out: &mut dyn Write, err: &mut dyn Write) -> ExitCode {
    let config = match load_config(global, err) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let now = Local::now();
    for warning in &config.warnings {
        let _ = writeln!(out, "warning: {warning}");
    }
    let _ = writeln!(
        out,
        "{}: OK, {} job(s); state in {}",
        config.path.display(),
        config.jobs.len(),
        config.daemon.state_dir.display()
    );
    for job in &config.jobs {
        let folder = if job.folder.is_empty() {
            "/".to_string()
        } else {
            format!("/{}", job.folder)
        };
        let _ = writeln!(out);
        let _ = writeln!(out, "job {}", job.name);
        let _ = writeln!(
            out,
            "  {} -> {} / {} / {}",
            job.source.display(),
            job.site,
            job.library,
            folder
        );
        match &job.schedule {
            Some(schedule) => {
                let next: Vec<String> = schedule
                    .next_n(now, 3)
                    .iter()
                    .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, false))
                    .collect();
                let _ = writeln!(
                    out,
                    "  schedule {}: next {}",
                    schedule.expr,
                    next.join(", ")
                );
            }
            None => {
                let _ = writeln!(out, "  schedule: none");
            }
        }
        let _ = writeln!(out, "  watch: {}", if job.watch { "on" } else { "off" });
        let delete = match job.delete {
            crate::config::DeleteMode::Keep => "keep (never delete remotely)",
            crate::config::DeleteMode::Mirror => "mirror (delete remotely what is deleted here)",
        };
        let _ = writeln!(out, "  delete: {delete}");
    }
    ExitCode::Ok
}

/// One job's line in `scan --json`. The integer counts are the stable part
/// (documented in the README); the path lists may be long.
#[derive(Debug, Serialize)]
struct JobScanJson {
    name: String,
    new: u64,
    changed: u64,
    unchanged: u64,
    skipped: u64,
    /// Unchanged locally but not yet uploaded (pending or failed earlier).
    pending: u64,
    vanished: u64,
    hashed_files: u64,
    hashed_bytes: u64,
    new_paths: Vec<String>,
    changed_paths: Vec<String>,
    skipped_paths: Vec<SkippedJson>,
    vanished_paths: Vec<String>,
    /// Set when the job could not be scanned at all (e.g. its source is missing).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct SkippedJson {
    path: String,
    reason: String,
}

#[derive(Debug, Serialize)]
struct ScanJson {
    jobs: Vec<JobScanJson>,
}

/// Picks the named jobs (all when `names` is empty); unknown names are a usage error.
fn select_jobs<'a>(
    config: &'a Config,
    names: &[String],
    err: &mut dyn Write,
) -> Result<Vec<&'a JobSpec>, ExitCode> {
    if names.is_empty() {
        return Ok(config.jobs.iter().collect());
    }
    let known: HashSet<&str> = config.jobs.iter().map(|j| j.name.as_str()).collect();
    let unknown: Vec<&String> = names
        .iter()
        .filter(|n| !known.contains(n.as_str()))
        .collect();
    if !unknown.is_empty() {
        let list: Vec<&str> = config.jobs.iter().map(|j| j.name.as_str()).collect();
        for name in unknown {
            let _ = writeln!(
                err,
                "no job named {name:?} in {}; jobs: {}",
                config.path.display(),
                list.join(", ")
            );
        }
        return Err(ExitCode::Usage);
    }
    Ok(config
        .jobs
        .iter()
        .filter(|j| names.iter().any(|n| n == &j.name))
        .collect())
}

/// Opens the store in the config's state dir, mapping a held lock to exit 75.
fn open_store(dir: &Path, err: &mut dyn Write) -> Result<Store, ExitCode> {
    Store::open(dir).map_err(|e| {
        let _ = writeln!(err, "error: {e}");
        match e {
            // A newer binary's database: restarting will not help, like a bad config.
            crate::state::StateError::TooNew { .. } => ExitCode::Config,
            // Locked by another process, or an I/O problem that may pass.
            _ => ExitCode::TempFail,
        }
    })
}

/// `sharepush scan`: scan each selected job, record hashes, report.
pub fn scan(
    global: &GlobalArgs,
    jobs: &[String],
    json: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> ExitCode {
    let config = match load_config(global, err) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let selected = match select_jobs(&config, jobs, err) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut store = match open_store(&config.daemon.state_dir, err) {
        Ok(s) => s,
        Err(code) => return code,
    };

    let mut code = ExitCode::Ok;
    let mut report_json = ScanJson { jobs: Vec::new() };
    for job in selected {
        let result = scan_one(&mut store, job);
        let line = match result {
            Ok(line) => line,
            Err(message) => {
                tracing::error!(job = %job.name, "{message}");
                code = ExitCode::SomeFilesFailed;
                JobScanJson {
                    name: job.name.clone(),
                    new: 0,
                    changed: 0,
                    unchanged: 0,
                    skipped: 0,
                    pending: 0,
                    vanished: 0,
                    hashed_files: 0,
                    hashed_bytes: 0,
                    new_paths: Vec::new(),
                    changed_paths: Vec::new(),
                    skipped_paths: Vec::new(),
                    vanished_paths: Vec::new(),
                    error: Some(message),
                }
            }
        };
        if line
            .skipped_paths
            .iter()
            .any(|s| s.reason.starts_with("error"))
        {
            code = ExitCode::SomeFilesFailed;
        }
        if !json {
            print_job_text(out, &line, global.verbose > 0);
        }
        report_json.jobs.push(line);
    }
    if json {
        let _ = serde_json::to_writer_pretty(&mut *out, &report_json);
        let _ = writeln!(out);
    }
    code
}

fn scan_one(store: &mut Store, job: &JobSpec) -> Result<JobScanJson, String> {
    let known = store.known_files(&job.name).map_err(|e| e.to_string())?;
    let options = ScanOptions::from(job);
    let report = scan::scan(&options, known).map_err(|e| e.to_string())?;
    store
        .record_scanned(&job.name, &report.entries)
        .map_err(|e| e.to_string())?;
    for skipped in &report.skipped {
        store
            .record_skipped(&job.name, &skipped.path, &skipped.reason.to_string())
            .map_err(|e| e.to_string())?;
    }
    let mut line = JobScanJson {
        name: job.name.clone(),
        new: 0,
        changed: 0,
        unchanged: report.unchanged,
        skipped: report.skipped.len() as u64,
        pending: 0,
        vanished: report.vanished.len() as u64,
        hashed_files: report.hashed_files,
        hashed_bytes: report.hashed_bytes,
        new_paths: Vec::new(),
        changed_paths: Vec::new(),
        skipped_paths: report
            .skipped
            .iter()
            .map(|s| SkippedJson {
                path: s.path.clone(),
                reason: s.reason.to_string(),
            })
            .collect(),
        vanished_paths: report.vanished.clone(),
        error: None,
    };
    for entry in &report.entries {
        match entry.change {
            Change::New => {
                line.new += 1;
                line.new_paths.push(entry.path.clone());
            }
            Change::Changed => {
                line.changed += 1;
                line.changed_paths.push(entry.path.clone());
            }
            Change::Unchanged => line.pending += 1,
        }
    }
    tracing::info!(
        job = %job.name,
        new = line.new,
        changed = line.changed,
        unchanged = line.unchanged,
        skipped = line.skipped,
        hashed_bytes = line.hashed_bytes,
        "scan finished"
    );
    Ok(line)
}

/// How many paths of each kind the text report lists before summarising.
const TEXT_LIST_LIMIT: usize = 20;

fn print_job_text(out: &mut dyn Write, line: &JobScanJson, all: bool) {
    let _ = writeln!(out, "job {}", line.name);
    if let Some(error) = &line.error {
        let _ = writeln!(out, "  error: {error}");
        return;
    }
    let _ = writeln!(
        out,
        "  {} new, {} changed, {} unchanged ({} not yet uploaded), {} skipped, {} vanished; hashed {} file(s), {} byte(s)",
        line.new,
        line.changed,
        line.unchanged,
        line.pending,
        line.skipped,
        line.vanished,
        line.hashed_files,
        line.hashed_bytes
    );
    let limit = if all { usize::MAX } else { TEXT_LIST_LIMIT };
    let lists: [(&str, Vec<String>); 4] = [
        ("new", line.new_paths.clone()),
        ("changed", line.changed_paths.clone()),
        (
            "skipped",
            line.skipped_paths
                .iter()
                .map(|s| format!("{} ({})", s.path, s.reason))
                .collect(),
        ),
        ("vanished", line.vanished_paths.clone()),
    ];
    for (label, paths) in lists {
        for path in paths.iter().take(limit) {
            let _ = writeln!(out, "  {label:>8}  {path}");
        }
        if paths.len() > limit {
            let _ = writeln!(
                out,
                "  {label:>8}  ... and {} more (-v lists all, --json for machines)",
                paths.len() - limit
            );
        }
    }
}
