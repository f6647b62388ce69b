//! The commands behind the CLI, as library functions that write to any
//! `Write` so tests call them in-process and read what a user would see.
//!
//! Each returns the [`ExitCode`] the process should end with; none calls
//! `process::exit`. Logging goes through `tracing` (stderr/journald), the
//! command's report goes to the given writer (stdout).

use std::collections::HashSet;
use std::io::{IsTerminal as _, Write};
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
    report_config(global, Config::load(&global.config), err)
}

/// [`load_config`] for `check` and `status`, which only look: a systemd
/// credential name is a warning outside the service, not an error.
fn load_config_to_inspect(global: &GlobalArgs, err: &mut dyn Write) -> Result<Config, ExitCode> {
    report_config(global, Config::load_to_inspect(&global.config), err)
}

fn report_config(
    global: &GlobalArgs,
    loaded: Result<Config, crate::config::ConfigErrors>,
    err: &mut dyn Write,
) -> Result<Config, ExitCode> {
    match loaded.and_then(|c| c.with_state_dir_override(global.state_dir.clone())) {
        Ok(config) => Ok(config),
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
    let config = match load_config_to_inspect(global, err) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let now = chrono::Utc::now();
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
                let zone = job.settings.timezone;
                let next: Vec<String> = schedule
                    .next_n_in(zone, now, 3)
                    .iter()
                    .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, false))
                    .collect();
                let _ = writeln!(
                    out,
                    "  schedule {} (time zone {zone}): next {}",
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
#[derive(Debug, Default, Serialize)]
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
                    error: Some(message),
                    ..JobScanJson::default()
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
    let t0 = std::time::Instant::now();
    let known = store.known_files(&job.name).map_err(|e| e.to_string())?;
    let t1 = std::time::Instant::now();
    let options = ScanOptions::from(job);
    let report = scan::scan(&options, known).map_err(|e| e.to_string())?;
    let t2 = std::time::Instant::now();
    store
        .record_scan(
            &job.name,
            &report.entries,
            &report.verified,
            report.racy_cutoff_ns,
        )
        .map_err(|e| e.to_string())?;
    tracing::debug!(
        job = %job.name,
        load_ms = (t1 - t0).as_millis() as u64,
        walk_hash_ms = (t2 - t1).as_millis() as u64,
        record_ms = t2.elapsed().as_millis() as u64,
        "scan phases"
    );
    for skipped in report.skipped.iter().filter(|s| s.reason.is_recorded()) {
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

/// A runtime for one command: a few workers (uploads are I/O bound; hashing
/// and SQLite run on blocking threads).
fn runtime(err: &mut dyn Write) -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| {
            let _ = writeln!(err, "error: cannot start the async runtime: {e}");
            ExitCode::TempFail
        })
}

/// `sharepush sync [JOB...] [--dry-run]`: one pass of scan -> plan ->
/// upload -> record per job, a summary line per job, failures listed at the
/// end. Exit 0, 1 (files failed), 77 (login needed), 75 (locked / network),
/// 130 / 143 (stopped by SIGINT / SIGTERM; the next run resumes).
pub fn sync(
    global: &GlobalArgs,
    args: &crate::cli::SyncArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> ExitCode {
    let config = match load_config(global, err) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let selected = match select_jobs(&config, &args.jobs, err) {
        Ok(s) => s,
        Err(code) => return code,
    };
    if args.dry_run {
        return dry_run(&config, &selected, out, err);
    }
    let rt = match runtime(err) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let progress = std::io::stderr()
        .is_terminal()
        .then(|| std::sync::Arc::new(crate::upload::Progress::default()));
    let bar = progress.clone().map(|p| {
        let _guard = rt.enter();
        crate::progress::Bar::start(p)
    });
    let cancel = tokio_util::sync::CancellationToken::new();
    let stopped_by = match stop_on_signals(&rt, cancel.clone()) {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(err, "error: cannot install the signal handlers: {e}");
            return ExitCode::TempFail;
        }
    };
    let options = crate::job::SyncOptions {
        progress,
        cancel,
        ..crate::job::SyncOptions::default()
    };
    let result = rt.block_on(crate::job::sync_jobs(&config, &selected, &options));
    if let Some((bar, ticker)) = bar {
        ticker.abort();
        bar.finish();
    }
    let signal = stopped_by.load(std::sync::atomic::Ordering::SeqCst);
    match result {
        Ok(reports) => {
            let code = report_sync(&reports, out, err);
            match signal {
                0 => code,
                s => {
                    let _ = writeln!(
                        err,
                        "stopped by {}: what was not uploaded resumes on the next run",
                        if s == 2 { "SIGINT" } else { "SIGTERM" }
                    );
                    if s == 2 {
                        ExitCode::Interrupted
                    } else {
                        ExitCode::Terminated
                    }
                }
            }
        }
        Err(crate::job::SyncError::State(e)) => {
            let _ = writeln!(err, "error: {e}");
            match e {
                crate::state::StateError::TooNew { .. } => ExitCode::Config,
                _ => ExitCode::TempFail,
            }
        }
        Err(crate::job::SyncError::Remote(e)) => {
            let _ = writeln!(err, "error: {e}");
            ExitCode::TempFail
        }
    }
}

/// SIGTERM and SIGINT cancel `cancel` (the sync stops between fragments and
/// exits 143 / 130); a second one exits at once. Returns where the number
/// of the first signal is stored (0: none yet). The handlers are installed
/// before this returns, so no signal is missed.
fn stop_on_signals(
    rt: &tokio::runtime::Runtime,
    cancel: tokio_util::sync::CancellationToken,
) -> std::io::Result<std::sync::Arc<std::sync::atomic::AtomicI32>> {
    use std::sync::atomic::Ordering::SeqCst;
    use tokio::signal::unix::{SignalKind, signal};
    let _guard = rt.enter();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let first = std::sync::Arc::new(std::sync::atomic::AtomicI32::new(0));
    let seen = std::sync::Arc::clone(&first);
    rt.spawn(async move {
        loop {
            let n = tokio::select! {
                _ = term.recv() => 15,
                _ = int.recv() => 2,
            };
            if seen.compare_exchange(0, n, SeqCst, SeqCst).is_ok() {
                tracing::warn!(
                    signal = if n == 2 { "SIGINT" } else { "SIGTERM" },
                    "stopping: no new uploads; the fragment in flight may finish (5 s at most)"
                );
                cancel.cancel();
            } else {
                // A second signal: the person means it.
                std::process::exit(128 + n);
            }
        }
    });
    Ok(first)
}

/// Human-readable size: `532 B`, `10.0 MiB`.
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Prints a sync's per-job summary lines and the failures, and decides the
/// exit code: 77 if any job needs a login, else 1 if anything failed.
pub fn report_sync(
    reports: &[crate::job::JobReport],
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> ExitCode {
    let mut code = ExitCode::Ok;
    let mut failures: Vec<String> = Vec::new();
    for r in reports {
        let _ = writeln!(
            out,
            "job {}: {} uploaded ({} in {:.1}s), {} failed, {} skipped, {} up to date{}{}",
            r.name,
            r.uploaded,
            human_bytes(r.bytes),
            r.elapsed.as_secs_f64(),
            r.failed.len() + r.held.len(),
            r.skipped.len(),
            r.up_to_date,
            if r.requeued.is_empty() {
                String::new()
            } else {
                format!(", {} changed while uploading (next run)", r.requeued.len())
            },
            match (r.deleted, r.deletes_held, r.folders_deleted) {
                (0, 0, 0) => String::new(),
                (d, 0, 0) => format!(", {d} deleted remotely"),
                (d, 0, f) => format!(", {d} file(s) and {f} folder(s) deleted remotely"),
                (_, h, _) => format!(", {h} remote delete(s) held"),
            },
        );
        if r.cancelled {
            let _ = writeln!(
                out,
                "  stopped  {} file(s) not finished; they resume on the next run",
                r.interrupted
            );
        }
        if let Some(rc) = &r.reconcile
            && rc.library_replaced
        {
            let _ = writeln!(
                out,
                "  library  was deleted and recreated in SharePoint (new drive id); \
                 every file is uploaded again into the new library"
            );
        }
        if let Some(rc) = &r.reconcile
            && rc.adopted > 0
        {
            let _ = writeln!(
                out,
                "  adopted  {} file(s) already in SharePoint (same path, size and quickXorHash; not uploaded)",
                rc.adopted
            );
        }
        if let Some(rc) = &r.reconcile {
            for (path, outcome) in &rc.resolved {
                let _ = writeln!(out, "  remote   {path}: {}", outcome.as_str());
            }
        }
        for (from, to) in &r.moved {
            let _ = writeln!(
                out,
                "  moved    {from} -> {to} (on the server, not uploaded)"
            );
        }
        for (local, remote) in &r.encoded {
            let _ = writeln!(out, "  encoded  {local} -> {remote}");
        }
        for (path, reason) in &r.skipped {
            let _ = writeln!(out, "  skipped  {path} ({reason})");
        }
        if let Some(e) = &r.error {
            failures.push(format!("job {}: {e}", r.name));
        }
        if let Some(n) = r.quota_full {
            failures.push(format!(
                "job {}: the library is full (507 quotaLimitReached); {n} file(s) stay pending \
                 until space is freed",
                r.name
            ));
        }
        for (path, e) in &r.failed {
            failures.push(format!("{}/{path}: {e}", r.name));
        }
        for (path, until) in &r.held {
            let when = chrono::DateTime::from_timestamp(*until, 0)
                .map(|t| {
                    t.with_timezone(&Local)
                        .to_rfc3339_opts(SecondsFormat::Secs, false)
                })
                .unwrap_or_default();
            failures.push(format!(
                "{}/{path}: failed earlier; next attempt after {when}",
                r.name
            ));
        }
        if r.login_needed.is_some() {
            code = ExitCode::AuthNeeded;
        }
    }
    if !failures.is_empty() {
        let _ = writeln!(out, "failed:");
        for f in &failures {
            let _ = writeln!(out, "  {f}");
        }
        if code == ExitCode::Ok {
            code = ExitCode::SomeFilesFailed;
        }
    }
    if let Some(why) = reports.iter().find_map(|r| r.login_needed.as_ref()) {
        let _ = writeln!(err, "error: {why}");
        // The error says what to do (`sharepush login`, or fix the app's
        // secret or certificate in app-only modes).
        let _ = writeln!(
            err,
            "changes are recorded and upload once signing in works again"
        );
    } else if !failures.is_empty() {
        let _ = writeln!(
            err,
            "{} problem(s); failed files are retried on a later run",
            failures.len()
        );
    }
    code
}

/// `sync --dry-run`: scan and plan without recording anything or talking
/// to SharePoint; the state is only read (and not at all when none exists).
fn dry_run(
    config: &Config,
    jobs: &[&JobSpec],
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> ExitCode {
    use crate::plan::Action;
    let store = match Store::open_read_only(&config.daemon.state_dir) {
        Ok(s) => Some(s),
        Err(crate::state::StateError::Missing { .. }) => None,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return ExitCode::TempFail;
        }
    };
    let mut code = ExitCode::Ok;
    for job in jobs {
        let (mut known, before) = match &store {
            Some(s) => match (s.known_files(&job.name), s.job_target(&job.name)) {
                (Ok(k), Ok(t)) => (k, t),
                (Err(e), _) | (_, Err(e)) => {
                    let _ = writeln!(err, "error: {e}");
                    return ExitCode::TempFail;
                }
            },
            None => Default::default(),
        };
        // Pointed at another place since the last run: the run will send
        // every file there (`Store::note_job_target`), so none counts as
        // up to date here.
        let moved =
            before.filter(|b| b.differs_from(&job.site.to_string(), &job.library, &job.folder));
        if moved.is_some() {
            known.values_mut().for_each(|k| k.synced = false);
        }
        // For case twins: a file the scan finds unchanged is synced (the
        // others come back as entries), so it has a remote item.
        let known_synced: Vec<(String, bool)> =
            known.iter().map(|(p, k)| (p.clone(), k.synced)).collect();
        let report = match scan::scan(&ScanOptions::from(*job), known) {
            Ok(r) => r,
            Err(e) => {
                let _ = writeln!(out, "job {} (dry run): error: {e}", job.name);
                code = ExitCode::SomeFilesFailed;
                continue;
            }
        };
        let recorded = match &store {
            Some(s) => match DryRunState::read(s, job, &report, &known_synced, moved.is_some()) {
                Ok(r) => r,
                Err(e) => {
                    let _ = writeln!(err, "error: {e}");
                    return ExitCode::TempFail;
                }
            },
            None => DryRunState::default(),
        };
        let plan = crate::plan::plan(
            &report,
            &recorded.input,
            job.delete,
            std::time::SystemTime::now(),
        );
        let RunView {
            renames,
            twins,
            refused,
            folders,
            summary,
            held,
        } = RunView::new(job, &report, &plan, &recorded, &known_synced);
        let moved_to: HashSet<&str> = renames.values().map(String::as_str).collect();
        // Mirror: the recorded folders whose local folder is gone, deepest
        // first, as the run would try them (deleted only if empty then).
        let prune = job.delete == crate::config::DeleteMode::Mirror
            && held.is_none()
            && !crate::job::source_looks_empty(&report);
        let mut rmdirs: Vec<&str> = if prune {
            recorded
                .folders
                .iter()
                .map(|(p, _)| p.as_str())
                .filter(|p| crate::job::local_folder_gone(&job.source.join(p), job.follow_symlinks))
                .collect()
        } else {
            Vec::new()
        };
        rmdirs.sort_by(|a, b| crate::job::deepest_first(a, b));
        let s = &summary;
        let _ = writeln!(
            out,
            "job {} (dry run): would create {} folder(s) and upload {} file(s), {} ({} new, {} changed, {} retried); {} up to date, {} held, {} forgotten, {}{}",
            job.name,
            s.create_folders,
            s.upload_new + s.upload_changed + s.upload_retry,
            human_bytes(s.upload_bytes),
            s.upload_new,
            s.upload_changed,
            s.upload_retry,
            s.up_to_date,
            s.held,
            s.forget,
            match &held {
                None => format!("{} remote delete(s)", s.delete_remote),
                Some(_) => format!("0 remote delete(s) ({} held)", s.delete_remote),
            },
            if rmdirs.is_empty() {
                String::new()
            } else {
                format!(", {} remote folder(s) to delete if empty", rmdirs.len())
            }
        );
        if let Some(why) = &held {
            let _ = writeln!(
                out,
                "  remote deletes held: {why}; nothing would be deleted remotely"
            );
        }
        if let Some(b) = &moved {
            let _ = writeln!(
                out,
                "  the job now backs up to {} / {} / {} (was {} / {} / {}): every file goes there, \
                 except files already there with the same content",
                job.site,
                job.library,
                job.folder,
                b.site,
                b.library,
                b.folder.as_deref().unwrap_or("?")
            );
        }
        for action in &plan.actions {
            let line = match action {
                Action::DeleteRemote { path, .. } | Action::Forget { path, .. }
                    if renames.contains_key(path) =>
                {
                    format!("  move     {path} -> {} (renamed locally)", renames[path])
                }
                Action::CreateFolder { path } if !folders.contains(path) => continue,
                Action::CreateFolder { path } => format!("  mkdir    {path}/"),
                Action::Upload { entry, .. } if moved_to.contains(entry.path.as_str()) => {
                    continue;
                }
                Action::Upload { entry, .. } if recorded.conflict_held.contains(&entry.path) => {
                    format!("  skipped  {} ({})", entry.path, crate::job::CONFLICT_HELD)
                }
                Action::Upload { entry, .. } if twins.contains_key(&entry.path) => format!(
                    "  skipped  {} ({})",
                    entry.path,
                    crate::job::case_twin_reason(&twins[&entry.path])
                ),
                Action::Upload { entry, .. } if refused.contains_key(&entry.path) => {
                    format!("  skipped  {} ({})", entry.path, refused[&entry.path])
                }
                Action::Upload { entry, reason } => format!(
                    "  upload   {} ({}, {})",
                    entry.path,
                    serde_json::to_value(reason)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                    human_bytes(entry.size)
                ),
                Action::Skip { path, .. } => format!("  hold     {path}"),
                Action::Forget { path, .. } => format!("  forget   {path}"),
                Action::DeleteRemote { path, .. } if held.is_some() => {
                    format!("  kept     {path} (deleted locally; its remote delete is held)")
                }
                Action::DeleteRemote { path, .. } => format!("  delete   {path}"),
            };
            let _ = writeln!(out, "{line}");
        }
        for dir in &rmdirs {
            let _ = writeln!(out, "  rmdir    {dir}/ (if nothing else is in it)");
        }
        for skipped in &report.skipped {
            let _ = writeln!(out, "  skipped  {} ({})", skipped.path, skipped.reason);
        }
    }
    code
}

/// What `sync --dry-run` reads from the state for one job (nothing when
/// no state exists yet): the plan's input, and what the run decides with
/// beyond the plan.
#[derive(Default)]
struct DryRunState {
    input: crate::plan::PlanInput,
    /// The recorded remote folders (path, item id), for `rmdir`.
    folders: Vec<(String, String)>,
    /// Listed paths whose row has a remote item (and is not skipped).
    with_item: HashSet<String>,
    /// The known files the scan did not list and did not find synced (it
    /// skipped them this time), as the run will see them: with whether
    /// they have a remote item; rows recorded as skipped are left out.
    others: Vec<(String, bool)>,
    /// The rows of the files gone locally, for rename detection.
    vanished: Vec<(String, crate::state::FileRecord)>,
    /// Paths whose upload someone else's edit holds (`on_remote_change =
    /// "skip"`); none after a move, as the run drops them with the old place.
    conflict_held: HashSet<String>,
}

impl DryRunState {
    /// `known_synced`: every known path with whether the scan could take it
    /// as synced; `moved`: the job points at another place since its last
    /// run (`Store::note_job_target`), so nothing is known of the new one.
    fn read(
        s: &Store,
        job: &JobSpec,
        report: &scan::ScanReport,
        known_synced: &[(String, bool)],
        moved: bool,
    ) -> Result<DryRunState, crate::state::StateError> {
        let listed = listed_paths(report);
        let mut paths: Vec<&str> = report.entries.iter().map(|e| e.path.as_str()).collect();
        paths.extend(report.vanished.iter().map(String::as_str));
        paths.extend(report.deselected.iter().map(String::as_str));
        let unlisted: Vec<&str> = known_synced
            .iter()
            .filter(|(p, synced)| !synced && !listed.contains(p.as_str()))
            .map(|(p, _)| p.as_str())
            .collect();
        let records = s.records_for(&job.name, &paths)?;
        let others = s
            .records_for(&job.name, &unlisted)?
            .into_iter()
            .filter(|(_, r)| r.state.kind() != crate::state::FileStateKind::Skipped)
            .map(|(p, r)| (p, r.item_id.is_some() && !moved))
            .collect();
        let mut state = DryRunState {
            others,
            ..DryRunState::default()
        };
        if moved {
            // Nothing known of the new place: every file goes up.
            state.input.files = records
                .into_keys()
                .map(|p| (p, crate::plan::PriorState::Pending))
                .collect();
            return Ok(state);
        }
        state.with_item = records
            .iter()
            .filter(|(_, r)| {
                r.item_id.is_some() && r.state.kind() != crate::state::FileStateKind::Skipped
            })
            .map(|(p, _)| p.clone())
            .collect();
        state.vanished = report
            .vanished
            .iter()
            .filter_map(|p| records.get(p).map(|r| (p.clone(), r.clone())))
            .collect();
        state.input.files = records
            .iter()
            .map(|(p, r)| (p.clone(), crate::job::prior_state(r)))
            .collect();
        crate::job::names_now_taken(job, report, &mut state.input.files);
        state.input.remote_folders = s.known_folders(&job.name)?;
        state.folders = s.folder_items(&job.name)?;
        state.conflict_held = s
            .conflicts(Some(&job.name))?
            .into_iter()
            .map(|c| c.path)
            .collect();
        Ok(state)
    }
}

/// The paths a scan reports on (entries, vanished, deselected).
fn listed_paths(report: &scan::ScanReport) -> HashSet<&str> {
    report
        .entries
        .iter()
        .map(|e| e.path.as_str())
        .chain(report.vanished.iter().map(String::as_str))
        .chain(report.deselected.iter().map(String::as_str))
        .collect()
}

/// What a run decides beyond the plan, as `sync --dry-run` shows it: local
/// renames made server moves, uploads held by someone else's edit or by a
/// case twin, the counts that leaves, and whether the guard holds the
/// remote deletes.
struct RunView {
    /// Old path -> new path.
    renames: std::collections::HashMap<String, String>,
    /// Upload path -> the twin that keeps the name.
    twins: std::collections::HashMap<String, String>,
    /// Upload path -> why the naming rules refuse it (the uploader skips it).
    refused: std::collections::HashMap<String, String>,
    /// The planned folders the run creates (`job::folders_to_create`).
    folders: HashSet<String>,
    summary: crate::plan::PlanSummary,
    /// Why the remote deletes would be held, if they would.
    held: Option<String>,
}

impl RunView {
    fn new(
        job: &JobSpec,
        report: &scan::ScanReport,
        plan: &crate::plan::Plan,
        recorded: &DryRunState,
        known_synced: &[(String, bool)],
    ) -> RunView {
        use crate::plan::Action;
        let upload_entries: Vec<crate::scan::LocalEntry> = plan
            .uploads()
            .filter(|(e, _)| !recorded.conflict_held.contains(&e.path))
            .map(|(e, _)| e.clone())
            .collect();
        // Local renames the run makes moves on the server: the old path
        // leaves before the uploads (blocking: may hash, as the run does).
        let renames: std::collections::HashMap<String, String> = if recorded.vanished.is_empty() {
            Default::default()
        } else {
            let targets = crate::job::move_targets(job, &upload_entries);
            crate::reconcile::detect_moves(&job.source, &recorded.vanished, &targets)
                .into_iter()
                .map(|m| (m.from, m.to))
                .collect()
        };
        // Case twins, as the run decides them over its rows: the scan's
        // entries, the known files it found unchanged or skipped for now
        // (never a row recorded as skipped), and the files gone locally
        // whose remote delete comes after the uploads (a file forgotten or
        // moved away frees its name first).
        let listed = listed_paths(report);
        let lasting_skips: HashSet<&str> = report
            .skipped
            .iter()
            .filter(|s| s.reason.is_recorded())
            .map(|s| s.path.as_str())
            .collect();
        let present = report
            .entries
            .iter()
            .map(|e| (e.path.as_str(), recorded.with_item.contains(&e.path)))
            .chain(
                known_synced
                    .iter()
                    .filter(|(p, synced)| *synced && !listed.contains(p.as_str()))
                    .map(|(p, _)| (p.as_str(), true)),
            )
            .chain(recorded.others.iter().map(|(p, item)| (p.as_str(), *item)))
            .filter(|(p, _)| !lasting_skips.contains(p))
            .chain(plan.actions.iter().filter_map(|a| match a {
                Action::DeleteRemote { path, .. } if !renames.contains_key(path) => {
                    Some((path.as_str(), true))
                }
                _ => None,
            }));
        let uploads: Vec<&str> = upload_entries.iter().map(|e| e.path.as_str()).collect();
        let twins = crate::plan::case_twins_among(present, &uploads);
        let refused: std::collections::HashMap<String, String> = upload_entries
            .iter()
            .filter_map(|e| {
                Some((
                    e.path.clone(),
                    crate::upload::remote_name(job, &e.path).err()?,
                ))
            })
            .collect();
        let folders: HashSet<String> = crate::job::folders_to_create(job, plan)
            .into_iter()
            .collect();
        let moved_to: HashSet<&str> = renames.values().map(String::as_str).collect();
        let mut summary = plan.summary;
        summary.create_folders = folders.len() as u64;
        for action in &plan.actions {
            match action {
                // A rename is one move on the server: neither a delete (or,
                // with `keep`, a forget) nor an upload.
                Action::DeleteRemote { path, .. } if renames.contains_key(path) => {
                    summary.delete_remote -= 1;
                }
                Action::Forget { path, .. } if renames.contains_key(path) => summary.forget -= 1,
                Action::Upload { entry, reason }
                    if twins.contains_key(&entry.path)
                        || moved_to.contains(entry.path.as_str())
                        || recorded.conflict_held.contains(&entry.path)
                        || refused.contains_key(&entry.path) =>
                {
                    summary.upload_bytes -= entry.size;
                    match reason {
                        crate::plan::UploadReason::New => summary.upload_new -= 1,
                        crate::plan::UploadReason::Changed => summary.upload_changed -= 1,
                        crate::plan::UploadReason::Retry => summary.upload_retry -= 1,
                    }
                }
                _ => {}
            }
        }
        // The run's guard: deletes it would hold, and then no folder either.
        let held = (summary.delete_remote > 0)
            .then(|| crate::job::deletes_held_because(job, report, summary.delete_remote as usize))
            .flatten();
        RunView {
            renames,
            twins,
            refused,
            folders,
            summary,
            held,
        }
    }
}

/// `sharepush status [--json]`: the state database read without the lock
/// (works while the daemon runs). A config that cannot be loaded is
/// reported on `err` and the report comes from the state alone (the state
/// directory from `--state-dir`, else the default). Exit 0 healthy, 1 a job
/// of the config has failures, 77 login needed, 75 the state cannot be
/// read, 78 the config cannot be loaded (the state is still shown); the
/// JSON's `exit_code` is the same.
pub fn status(
    global: &GlobalArgs,
    json: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> ExitCode {
    let config = match load_config_to_inspect(global, err) {
        Ok(c) => Some(c),
        Err(_) => {
            let _ = writeln!(
                err,
                "warning: showing the state only (no schedules, no sign-in mode)"
            );
            None
        }
    };
    let state_dir = match (&config, &global.state_dir) {
        (Some(c), _) => c.daemon.state_dir.clone(),
        (None, Some(dir)) => dir.clone(),
        (None, None) => std::path::PathBuf::from(crate::config::DEFAULT_STATE_DIR),
    };
    let store = match Store::open_read_only(&state_dir) {
        Ok(s) => Some(s),
        Err(crate::state::StateError::Missing { .. }) => None,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return match e {
                crate::state::StateError::TooNew { .. } => ExitCode::Config,
                _ => ExitCode::TempFail,
            };
        }
    };
    let mut report = match crate::status::build(config.as_ref(), &state_dir, store.as_ref()) {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return ExitCode::TempFail;
        }
    };
    // A config the daemon could not start with is not healthy, whatever
    // the state says (the running daemon may still use an older one); the
    // JSON says so too, for checks that read it rather than the exit code.
    let code = if config.is_none() {
        ExitCode::Config
    } else {
        report.exit_code()
    };
    report.exit_code = code.code();
    if json {
        let _ = serde_json::to_writer_pretty(&mut *out, &report);
        let _ = writeln!(out);
    } else {
        if store.is_none() {
            let _ = writeln!(
                out,
                "no state in {} yet: sharepush has not run with it",
                state_dir.display()
            );
        }
        report.write_text(out);
    }
    code
}

/// `sharepush login [--refresh-token-file F]`: device code sign-in, or the
/// import of an existing refresh token; either way the token ends up 0600
/// in the state directory. Exit 77 when the sign-in failed.
pub fn login(
    global: &GlobalArgs,
    args: &crate::cli::LoginArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> ExitCode {
    let config = match load_config(global, err) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if config.auth.mode != crate::config::AuthMode::DeviceCode {
        let _ = writeln!(
            err,
            "{}: [auth] mode is \"client_credentials\": the app signs in by itself, there is \
             nothing to log in to (login is for mode = \"device_code\")",
            config.path.display()
        );
        return ExitCode::Usage;
    }
    let rt = match runtime(err) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = rt.block_on(async {
        let http = crate::remote::graph::http_client().map_err(|e| (e.to_string(), false))?;
        let policy = crate::retry::RetryPolicy::default();
        let tokens = crate::remote::auth::TokenProvider::new(
            config.auth.clone(),
            http.clone(),
            &config.daemon.state_dir,
            policy.clone(),
        );
        let outcome = match &args.refresh_token_file {
            Some(file) => crate::remote::auth::import_refresh_token(&tokens, file).await,
            None => {
                crate::remote::auth::device_login(&config.auth, &http, tokens.store(), &policy, out)
                    .await
            }
        };
        outcome
            .map(|()| tokens.store().path().to_path_buf())
            .map_err(|e| (e.to_string(), e.needs_person()))
    });
    match result {
        Ok(path) => {
            // With no daemon holding the state, clear a recorded refusal now
            // (with one, `status` sees that the token is newer than the refusal).
            if let Ok(mut store) = Store::open(&config.daemon.state_dir) {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0);
                if let Err(e) = store.record_signed_in(now) {
                    tracing::warn!(error = %e, "cannot record the login in the state");
                }
            }
            let _ = writeln!(
                out,
                "Signed in. The refresh token is stored in {} (mode 0600); pending files \
                 upload on the next run.",
                path.display()
            );
            ExitCode::Ok
        }
        Err((text, needs_person)) => {
            let _ = writeln!(err, "error: {text}");
            if needs_person {
                ExitCode::AuthNeeded
            } else {
                ExitCode::TempFail
            }
        }
    }
}

/// `sharepush run`: the daemon. Exit 0 after SIGTERM/SIGINT, 78 for a bad
/// config or a too-new state database, 75 when the state dir is locked by
/// another sharepush or the runtime cannot start.
pub fn run_daemon(global: &GlobalArgs, err: &mut dyn Write) -> ExitCode {
    let config = match load_config(global, err) {
        Ok(c) => c,
        Err(code) => return code,
    };
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(err, "error: cannot start the async runtime: {e}");
            return ExitCode::TempFail;
        }
    };
    let notifier = crate::systemd::Notifier::from_env();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (reload_tx, reload_rx) = tokio::sync::mpsc::unbounded_channel();
    let options = crate::daemon::DaemonOptions {
        state_dir_override: global.state_dir.clone(),
        ..crate::daemon::DaemonOptions::default()
    };
    let result = rt.block_on(async {
        let signals = crate::daemon::signals(shutdown.clone(), reload_tx);
        if let Err(e) = &signals {
            tracing::error!(error = %e, "cannot install signal handlers");
        }
        let r = crate::daemon::serve(config, options, shutdown.clone(), reload_rx, notifier).await;
        shutdown.cancel();
        r
    });
    // Blocking work still in flight (a scan, a database write) is not
    // waited for beyond this: the state is consistent after every step.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::Ok,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            match e {
                crate::daemon::DaemonError::State(crate::state::StateError::TooNew { .. }) => {
                    ExitCode::Config
                }
                _ => ExitCode::TempFail,
            }
        }
    }
}
