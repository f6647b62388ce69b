//! `sharepush status`: what the state database says about each job, the
//! daemon and the sign-in, as text for people or stable JSON for monitoring.
//!
//! Input: the checked [`Config`] (for schedules, the watch setting and the
//! sign-in mode; `None` when it cannot be loaded, then the report comes from
//! the state alone) and a read-only [`Store`] (no lock: it works while the
//! daemon runs). Output: a [`StatusReport`] whose [`StatusReport::exit_code`]
//! makes `status` a monitoring check: 0 healthy, 1 when any job of the
//! config has failures, 77 when a person must sign in again.
//!
//! What it does not do: write anything, talk to the network, or decide
//! whether a daemon is *healthy* beyond "its process exists" (systemd's
//! watchdog does that).

use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Local, SecondsFormat};
use serde::Serialize;

use crate::config::{AuthMode, Config};
use crate::error::ExitCode;
use crate::remote::auth::TokenStore;
use crate::state::{FileState, FileStateKind, RunOutcome, StateError, Store, WatchState};

/// How many failed files the JSON lists per job (the text lists fewer);
/// `failed_files_more` counts the rest.
pub const FAILED_LIST_MAX: usize = 100;
/// How many failed files the text lists per job.
const FAILED_TEXT_MAX: usize = 20;

/// Everything `status` reports. Serialized as-is for `--json`; the field
/// names and meanings are documented in the README and stable.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// The state directory read.
    pub state_dir: String,
    /// 0 healthy, 1 a job of the config has failures, 77 login needed, 78
    /// the config cannot be loaded: the process exit code.
    pub exit_code: u8,
    /// The daemon recorded in the state; `null` when none ever ran here.
    pub daemon: Option<DaemonStatus>,
    pub auth: AuthStatus,
    /// Every document library the state knows, with its delta link.
    pub drives: Vec<DriveInfo>,
    /// Every job in the config, then jobs only the state remembers.
    pub jobs: Vec<JobStatus>,
}

/// One document library (drive) and what remote reconcile knows of it.
#[derive(Debug, Clone, Serialize)]
pub struct DriveInfo {
    pub site: String,
    pub library: String,
    pub drive_id: String,
    /// Whether a delta link is stored (false: the next run starts over).
    pub delta_link: bool,
    /// Age of the stored delta link in seconds (`null` without one).
    pub delta_link_age_s: Option<i64>,
    /// When delta was last asked, even if nothing changed.
    pub delta_checked_at: Option<String>,
    /// Remote deletes and edits of our files noticed on this drive, ever.
    pub remote_changes_seen: u64,
}

/// A file edited in SharePoint by someone else and left in place
/// (`on_remote_change = "skip"`).
#[derive(Debug, Clone, Serialize)]
pub struct Conflict {
    pub path: String,
    pub seen_at: String,
}

/// Our version of a file, uploaded beside someone else's edit of it
/// (`on_remote_change = "keep-both"`).
#[derive(Debug, Clone, Serialize)]
pub struct ConflictCopy {
    /// The copy in the library, relative to the job folder.
    pub path: String,
    /// The file it is our version of.
    pub copy_of: String,
    pub uploaded_at: String,
}

/// The daemon process as recorded.
#[derive(Debug, Clone, Serialize)]
pub struct DaemonStatus {
    /// True when the recorded daemon did not stop cleanly and its pid exists.
    pub running: bool,
    pub pid: u32,
    pub started_at: String,
    /// When it stopped cleanly; `null` while running or when it died.
    pub stopped_at: Option<String>,
}

/// The sign-in as far as the state and the token store know it.
#[derive(Debug, Clone, Serialize)]
pub struct AuthStatus {
    /// `device_code`, `client_secret`, `certificate`; `null` without a config.
    pub mode: Option<String>,
    /// Device code mode: when the refresh token was last written (login or
    /// rotation) and how many seconds ago; `null` when there is none.
    pub refresh_token_updated_at: Option<String>,
    pub refresh_token_age_s: Option<i64>,
    /// True when the last run that reached SharePoint was refused for a
    /// reason only a person can fix (and no login happened since).
    pub login_needed: bool,
    /// That refusal, as shown to the user; `null` when none.
    pub login_error: Option<String>,
    pub login_needed_since: Option<String>,
    /// The last time a run's requests were accepted.
    pub signed_in_at: Option<String>,
}

/// One job.
#[derive(Debug, Clone, Serialize)]
pub struct JobStatus {
    pub name: String,
    /// False for a job only the state remembers (removed from the config);
    /// true for every job when the config could not be loaded.
    pub in_config: bool,
    /// The most recent run (finished or still running); `null` if none.
    pub last_run: Option<RunStatus>,
    /// The next scheduled run, in the schedule's time zone with its
    /// offset; `null` without a schedule.
    pub next_run: Option<String>,
    pub schedule: Option<String>,
    /// The time zone the schedule is read in: an IANA name or `local`;
    /// `null` without a schedule.
    pub timezone: Option<String>,
    /// `watching`, `fallback`, `off`, or `null` when no daemon recorded one
    /// (a job with `watch = false` is `off`).
    pub watch: Option<String>,
    /// Why the watcher fell back to full scans.
    pub watch_reason: Option<String>,
    /// Number of files per state.
    pub files: FileCounts,
    /// The first failed files (by path) with their last error.
    pub failed_files: Vec<FailedFile>,
    /// How many failed files are not in `failed_files`.
    pub failed_files_more: u64,
    /// Remote edits left in place (`on_remote_change = "skip"`).
    pub conflicts: Vec<Conflict>,
    /// Our versions uploaded beside someone else's edits
    /// (`on_remote_change = "keep-both"`), by path.
    pub conflict_copies: Vec<ConflictCopy>,
    /// Bytes uploaded by the last run and by all recorded runs.
    pub bytes_last_run: u64,
    pub bytes_total: u64,
    /// True when the job has failed files or its last run failed.
    pub has_failures: bool,
}

/// Files per state.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct FileCounts {
    pub pending: u64,
    pub uploading: u64,
    pub synced: u64,
    pub failed: u64,
    pub skipped: u64,
}

/// One recorded run.
#[derive(Debug, Clone, Serialize)]
pub struct RunStatus {
    /// `startup`, `schedule`, `watch`, `manual`, `reconcile`.
    pub trigger: String,
    pub started_at: String,
    /// `null` while running.
    pub ended_at: Option<String>,
    pub duration_s: Option<i64>,
    /// `ok`, `some-files-failed`, `failed`, `cancelled`, `interrupted`
    /// (also for a run without an end while no process holds the state:
    /// the process died in it); `null` while running.
    pub outcome: Option<String>,
    /// Why the run failed as a whole (missing source, login needed...).
    pub error: Option<String>,
    pub new: u64,
    pub changed: u64,
    pub unchanged: u64,
    pub uploaded: u64,
    pub failed: u64,
    pub skipped: u64,
    pub bytes: u64,
}

/// A failed file.
#[derive(Debug, Clone, Serialize)]
pub struct FailedFile {
    pub path: String,
    pub error: String,
    /// Consecutive failed attempts.
    pub attempts: u32,
    /// Not retried before this; `null`: next run.
    pub next_attempt: Option<String>,
}

/// RFC 3339 in local time, seconds precision.
fn local_time(unix: i64) -> String {
    DateTime::from_timestamp(unix, 0)
        .map(|t| {
            t.with_timezone(&Local)
                .to_rfc3339_opts(SecondsFormat::Secs, false)
        })
        .unwrap_or_else(|| unix.to_string())
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Whether a process with this pid exists (Linux `/proc`).
fn pid_exists(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// The refresh token file's modification time (Unix seconds), if any.
fn token_written_at(state_dir: &Path) -> Option<i64> {
    let meta = std::fs::metadata(TokenStore::in_dir(state_dir).path()).ok()?;
    let modified = meta.modified().ok()?;
    modified
        .duration_since(UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs() as i64)
}

/// Builds the report from the config (if it loaded) and the state (`None`
/// when sharepush never ran with this state directory).
pub fn build(
    config: Option<&Config>,
    state_dir: &Path,
    store: Option<&Store>,
) -> Result<StatusReport, StateError> {
    let now = unix_now();
    let recorded = match store {
        Some(s) => Recorded::read(s)?,
        None => Recorded::default(),
    };

    let daemon = recorded.daemon.as_ref().map(|d| DaemonStatus {
        running: d.stopped_at.is_none() && pid_exists(d.pid),
        pid: d.pid,
        started_at: local_time(d.started_at),
        stopped_at: d.stopped_at.map(local_time),
    });

    let mode = config.map(|c| match c.auth.mode {
        AuthMode::DeviceCode => "device_code".to_string(),
        AuthMode::ClientSecret { .. } => "client_secret".to_string(),
        AuthMode::Certificate { .. } => "certificate".to_string(),
    });
    let token_at = match config.map(|c| &c.auth.mode) {
        Some(AuthMode::ClientSecret { .. } | AuthMode::Certificate { .. }) => None,
        _ => token_written_at(state_dir),
    };
    // A refresh token written after the refusal is a new login made while
    // the daemon held the state (it could not clear the record itself).
    let refusal = recorded
        .auth
        .login_needed()
        .filter(|r| token_at.is_none_or(|t| t <= r.at))
        .map(|r| (r.at, r.error.clone()));
    let auth = AuthStatus {
        mode,
        refresh_token_updated_at: token_at.map(local_time),
        refresh_token_age_s: token_at.map(|t| (now - t).max(0)),
        login_needed: refusal.is_some(),
        login_error: refusal.as_ref().map(|(_, why)| why.clone()),
        login_needed_since: refusal.as_ref().map(|(at, _)| local_time(*at)),
        signed_in_at: recorded.auth.signed_in_at.map(local_time),
    };

    let mut names: Vec<(String, bool)> = config
        .map(|c| c.jobs.iter().map(|j| (j.name.clone(), true)).collect())
        .unwrap_or_default();
    for job in &recorded.jobs {
        if !names.iter().any(|(n, _)| n == job) {
            names.push((job.clone(), false));
        }
    }
    // Whether a process holds the state now (a daemon or a `sync`): the
    // lock file keeps the last holder's pid.
    let holder_alive = crate::state::last_holder(state_dir).is_some_and(pid_exists);
    let mut jobs = Vec::with_capacity(names.len());
    for (name, in_config) in names {
        let spec = config.and_then(|c| c.jobs.iter().find(|j| j.name == name));
        let mut job = match store {
            Some(s) => job_from_store(s, &name, recorded.auth.refusal.as_ref(), holder_alive)?,
            None => empty_job(&name),
        };
        // Without a loaded config nothing is known to be removed.
        job.in_config = in_config || config.is_none();
        if let Some(spec) = spec {
            job.schedule = spec.schedule.as_ref().map(|s| s.expr.clone());
            let zone = spec.settings.timezone;
            job.timezone = spec.schedule.as_ref().map(|_| zone.to_string());
            job.next_run = spec.schedule.as_ref().and_then(|s| {
                s.next_in(zone, chrono::Utc::now())
                    .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, false))
            });
        }
        let running = daemon.as_ref().is_some_and(|d| d.running);
        match recorded.watches.iter().find(|w| w.job == name) {
            Some(w) if running => {
                job.watch = Some(w.state.as_str().to_string());
                if let WatchState::Fallback { reason } = &w.state {
                    job.watch_reason = Some(reason.clone());
                }
            }
            _ => {
                if spec.is_some_and(|s| !s.watch) {
                    job.watch = Some("off".into());
                }
            }
        }
        jobs.push(job);
    }

    let drives = recorded
        .drives
        .iter()
        .map(|d| DriveInfo {
            site: d.site.clone(),
            library: d.library.clone(),
            drive_id: d.drive_id.clone(),
            delta_link: d.has_delta_link,
            delta_link_age_s: d
                .delta_updated_at
                .filter(|_| d.has_delta_link)
                .map(|t| (now - t).max(0)),
            delta_checked_at: d.delta_checked_at.map(local_time),
            remote_changes_seen: d.changes_seen,
        })
        .collect();
    let mut report = StatusReport {
        state_dir: state_dir.display().to_string(),
        exit_code: 0,
        daemon,
        auth,
        drives,
        jobs,
    };
    report.exit_code = report.exit_code().code();
    Ok(report)
}

/// What the state holds beyond per-job rows.
#[derive(Default)]
struct Recorded {
    daemon: Option<crate::state::DaemonRow>,
    watches: Vec<crate::state::WatchRow>,
    auth: crate::state::AuthStateRow,
    drives: Vec<crate::state::DriveStatus>,
    jobs: Vec<String>,
}

impl Recorded {
    fn read(store: &Store) -> Result<Recorded, StateError> {
        Ok(Recorded {
            daemon: store.daemon()?,
            watches: store.watch_states()?,
            auth: store.auth_state()?,
            drives: store.drive_statuses()?,
            jobs: store.jobs()?,
        })
    }
}

fn empty_job(name: &str) -> JobStatus {
    JobStatus {
        name: name.to_string(),
        in_config: true,
        last_run: None,
        next_run: None,
        schedule: None,
        timezone: None,
        watch: None,
        watch_reason: None,
        files: FileCounts::default(),
        failed_files: Vec::new(),
        failed_files_more: 0,
        conflicts: Vec::new(),
        conflict_copies: Vec::new(),
        bytes_last_run: 0,
        bytes_total: 0,
        has_failures: false,
    }
}

/// `refusal`: the last recorded sign-in refusal; a last run that failed for
/// it is the sign-in's problem (exit 77 while it lasts), not the job's.
/// `holder_alive`: a process holds the state, so a run without an end may
/// really be running.
fn job_from_store(
    store: &Store,
    name: &str,
    refusal: Option<&crate::state::Refusal>,
    holder_alive: bool,
) -> Result<JobStatus, StateError> {
    let mut job = empty_job(name);
    job.conflicts = store
        .conflicts(Some(name))?
        .into_iter()
        .map(|c| Conflict {
            path: c.path,
            seen_at: local_time(c.seen_at),
        })
        .collect();
    job.conflict_copies = store
        .conflict_copies(name)?
        .into_iter()
        .map(|c| ConflictCopy {
            path: c.path,
            copy_of: c.source_path,
            uploaded_at: local_time(c.created_at),
        })
        .collect();
    let counts = store.counts(name)?;
    job.files = FileCounts {
        pending: counts.pending,
        uploading: counts.uploading,
        synced: counts.synced,
        failed: counts.failed,
        skipped: counts.skipped,
    };
    job.failed_files = store
        .files_in_state_limited(name, FileStateKind::Failed, FAILED_LIST_MAX)?
        .into_iter()
        .map(|r| match r.state {
            FileState::Failed {
                attempts,
                error,
                next_attempt,
            } => FailedFile {
                path: r.path,
                error,
                attempts,
                next_attempt: next_attempt.map(local_time),
            },
            _ => FailedFile {
                path: r.path,
                error: String::new(),
                attempts: 0,
                next_attempt: None,
            },
        })
        .collect();
    job.failed_files_more = counts.failed.saturating_sub(job.failed_files.len() as u64);
    job.bytes_total = store.bytes_uploaded_total(name)?;
    let mut last = store.last_run(name)?;
    // A run with no end while no process holds the state: the process died
    // in it (the next start records it so). Not "running since" forever.
    if let Some(r) = last.as_mut()
        && r.outcome.is_none()
        && !holder_alive
    {
        r.outcome = Some(RunOutcome::Interrupted);
    }
    let run_failed = last.as_ref().is_some_and(|r| {
        let for_sign_in = refusal.is_some_and(|f| r.error.as_deref() == Some(f.error.as_str()));
        r.outcome == Some(RunOutcome::Failed) && !for_sign_in
    });
    job.has_failures = counts.failed > 0 || run_failed;
    if let Some(r) = last {
        job.bytes_last_run = r.bytes;
        job.last_run = Some(RunStatus {
            trigger: r.trigger.as_str().to_string(),
            started_at: local_time(r.started_at),
            ended_at: r.ended_at.map(local_time),
            duration_s: r.ended_at.map(|e| (e - r.started_at).max(0)),
            outcome: r.outcome.map(|o| o.as_str().to_string()),
            error: r.error,
            new: r.counts.new,
            changed: r.counts.changed,
            unchanged: r.counts.unchanged,
            uploaded: r.counts.uploaded,
            failed: r.counts.failed,
            skipped: r.counts.skipped,
            bytes: r.bytes,
        });
    }
    Ok(job)
}

impl StatusReport {
    /// 77 when a person must sign in, else 1 when any job of the config has
    /// failures, else 0. A job only the state remembers (removed from the
    /// config, or renamed) is listed but not counted: nothing retries its
    /// files any more, and nothing could clear its failures.
    pub fn exit_code(&self) -> ExitCode {
        if self.auth.login_needed {
            ExitCode::AuthNeeded
        } else if self.jobs.iter().any(|j| j.in_config && j.has_failures) {
            ExitCode::SomeFilesFailed
        } else {
            ExitCode::Ok
        }
    }

    /// The report for people.
    pub fn write_text(&self, out: &mut dyn Write) {
        let _ = match &self.daemon {
            None => writeln!(out, "daemon: not running (never started here)"),
            Some(d) if d.running => writeln!(
                out,
                "daemon: running (pid {}, since {})",
                d.pid, d.started_at
            ),
            Some(d) => match &d.stopped_at {
                Some(at) => writeln!(out, "daemon: not running (stopped {at})"),
                None => writeln!(
                    out,
                    "daemon: not running (pid {} is gone; it started {} and did not stop cleanly)",
                    d.pid, d.started_at
                ),
            },
        };
        let a = &self.auth;
        let mut line = format!("sign-in: {}", a.mode.as_deref().unwrap_or("unknown"));
        if let (Some(at), Some(age)) = (&a.refresh_token_updated_at, a.refresh_token_age_s) {
            line.push_str(&format!(
                ", refresh token written {at} ({} ago)",
                human_age(age)
            ));
        } else if a.mode.as_deref() == Some("device_code") {
            line.push_str(", no refresh token stored");
        }
        let _ = writeln!(out, "{line}");
        if a.login_needed {
            let remedy = if a.mode.as_deref().is_none_or(|m| m == "device_code") {
                "login needed: run `sharepush login`"
            } else {
                "sign-in refused: fix the app's secret or certificate named in [auth]"
            };
            let _ = writeln!(out, "  {remedy}");
            if let Some(why) = &a.login_error {
                let _ = writeln!(
                    out,
                    "  (since {}: {why})",
                    a.login_needed_since.as_deref().unwrap_or("?")
                );
            }
        }
        for d in &self.drives {
            let link = match d.delta_link_age_s {
                Some(age) if d.delta_link => format!("delta link {} old", human_age(age)),
                _ => "no delta link yet (the next run lists the job folders)".to_string(),
            };
            let checked = d
                .delta_checked_at
                .as_deref()
                .map(|t| format!(", checked {t}"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "library {} \"{}\": {link}{checked}, {} remote change(s) to our files seen",
                d.site, d.library, d.remote_changes_seen
            );
        }
        for job in &self.jobs {
            write_job_text(out, job);
        }
    }
}

fn write_job_text(out: &mut dyn Write, job: &JobStatus) {
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "job {}{}",
        job.name,
        if job.in_config {
            ""
        } else {
            " (not in the config any more)"
        }
    );
    match &job.last_run {
        None => {
            let _ = writeln!(out, "  last run: never");
        }
        Some(r) => {
            let when = match (&r.outcome, r.duration_s) {
                (None, _) => format!("running since {}", r.started_at),
                (Some(o), Some(d)) => format!("{} ({}, took {d}s): {o}", r.started_at, r.trigger),
                (Some(o), None) => format!("{} ({}): {o}", r.started_at, r.trigger),
            };
            let _ = writeln!(
                out,
                "  last run: {when}; {} uploaded ({}), {} failed, {} skipped; scan: {} new, {} changed, {} unchanged",
                r.uploaded,
                human_bytes(r.bytes),
                r.failed,
                r.skipped,
                r.new,
                r.changed,
                r.unchanged
            );
            if let Some(e) = &r.error {
                let _ = writeln!(out, "  error: {e}");
            }
        }
    }
    match (&job.next_run, &job.schedule) {
        (Some(next), Some(expr)) => {
            let zone = job.timezone.as_deref().unwrap_or("local");
            let _ = writeln!(
                out,
                "  next run: {next} (schedule {expr}, time zone {zone})"
            );
        }
        _ => {
            let _ = writeln!(out, "  next run: no schedule");
        }
    }
    match (job.watch.as_deref(), &job.watch_reason) {
        (Some("fallback"), Some(why)) => {
            let _ = writeln!(out, "  watch: fallback: full scans ({why})");
        }
        (Some(w), _) => {
            let _ = writeln!(out, "  watch: {w}");
        }
        (None, _) => {}
    }
    let f = &job.files;
    let _ = writeln!(
        out,
        "  files: {} synced, {} pending, {} uploading, {} failed, {} skipped",
        f.synced, f.pending, f.uploading, f.failed, f.skipped
    );
    let _ = writeln!(
        out,
        "  uploaded: {} last run, {} in all",
        human_bytes(job.bytes_last_run),
        human_bytes(job.bytes_total)
    );
    if !job.failed_files.is_empty() {
        let _ = writeln!(out, "  failed files:");
        for file in job.failed_files.iter().take(FAILED_TEXT_MAX) {
            let retry = file
                .next_attempt
                .as_deref()
                .map(|t| format!("; next attempt after {t}"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "    {}: {} (attempt {}{retry})",
                file.path, file.error, file.attempts
            );
        }
        let more =
            job.failed_files.len().saturating_sub(FAILED_TEXT_MAX) as u64 + job.failed_files_more;
        if more > 0 {
            let _ = writeln!(
                out,
                "    ... and {more} more (--json lists up to {FAILED_LIST_MAX})"
            );
        }
    }
    if !job.conflicts.is_empty() {
        let _ = writeln!(
            out,
            "  conflicts (edited in SharePoint by someone else, left in place; on_remote_change = \"skip\"):"
        );
        for c in &job.conflicts {
            let _ = writeln!(out, "    {} (seen {})", c.path, c.seen_at);
        }
    }
    if !job.conflict_copies.is_empty() {
        let _ = writeln!(
            out,
            "  conflict copies (ours, uploaded beside someone else's edit; on_remote_change = \"keep-both\"):"
        );
        for c in job.conflict_copies.iter().take(FAILED_TEXT_MAX) {
            let _ = writeln!(
                out,
                "    {} (ours of {}, {})",
                c.path, c.copy_of, c.uploaded_at
            );
        }
        if job.conflict_copies.len() > FAILED_TEXT_MAX {
            let _ = writeln!(
                out,
                "    ... and {} more (--json lists them all)",
                job.conflict_copies.len() - FAILED_TEXT_MAX
            );
        }
    }
}

/// `90s`, `5m`, `3h`, `12d`.
fn human_age(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// `532 B`, `10.0 MiB`.
fn human_bytes(n: u64) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_a_person_would_say_them() {
        assert_eq!(human_age(5), "5s");
        assert_eq!(human_age(600), "10m");
        assert_eq!(human_age(5 * 3600), "5h");
        assert_eq!(human_age(90 * 86400), "90d");
    }
}
