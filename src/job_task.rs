//! One long-lived task per job in the daemon: decides *when* the job runs;
//! [`crate::job::run_once`] does the run.
//!
//! Input: the job's [`JobSpec`], the shared [`JobContext`] (one store, one
//! remote with one token provider, one throttle gate for every job), a
//! channel of manual triggers and a cancellation token. Output: runs, and a
//! [`JobStatus`] the supervisor reads for systemd's `STATUS=` line.
//!
//! The loop `select!`s over, in this order: cancellation, watch batches
//! ([`crate::watch`]), cron ticks, the periodic full scan, manual
//! triggers and its own timers (settle, retry). At most one run per job is
//! in flight: triggers that arrive during a run only mark the job pending,
//! so any number of them merge into one follow-up run. The first run after
//! start (trigger `startup`) catches up on whatever changed while the
//! daemon was down; the watch is armed *before* it, so nothing can slip
//! between that scan and the first event.
//!
//! **Settle.** A watch batch names the paths that changed. A run waits
//! until each of them has kept its size and mtime for `settle` (stat, wait,
//! stat again), so a file still being written is not uploaded half-done.
//! The window counts from the file's last change (its ctime, which every
//! write moves and nothing can set back), not from when the batch arrived,
//! so a write is uploaded about `max(debounce, settle)` after it, not
//! `debounce + settle`.
//! A path that never settles (a log appended to every second) holds the job
//! at most [`MAX_SETTLE_HOLD`] times `settle`; the uploader then still
//! notices a change during the upload and sends the file again next run.
//!
//! **Scope.** A run that only watch batches asked for scans only their
//! paths (`run_once`'s `scope`; the job adds every file that still needs a
//! look). Anything else that asked for the same run (startup, a cron tick,
//! the periodic full scan, SIGUSR1, a remote change), a batch that lost
//! events, a path that is not UTF-8, more than
//! [`crate::job::MAX_SCOPED_PATHS`] paths, or a retry after a failed run
//! makes it a full scan.
//!
//! **Schedules.** A job with a `schedule` registers it, in the job's
//! `timezone`, with the daemon's one tokio-cron-scheduler
//! ([`crate::scheduler`]) before it reports ready, and removes it when the
//! task ends (stop, or a reload that removed or changed the job). A tick
//! arrives on the task's tick channel and only marks the job pending (trigger
//! `schedule`), so ticks during a run, or several at once, make one
//! follow-up run. After each tick the task renews the registration, so the
//! next tick is computed in the zone's real DST rules (the scheduler itself
//! freezes the UTC offset after a job's first tick). The scheduler compares
//! ticks with the wall clock and computes the next one from now, so ticks
//! missed while the machine was suspended make one run at the resume, not
//! one per missed tick.
//!
//! **Failures.** A run that fails as a whole (source missing or unmounted,
//! library gone, sign-in needed) is retried after a capped exponential
//! backoff ([`RETRY_BASE`] doubling to [`RETRY_CAP`]); the other jobs are
//! not affected. The same error is logged once, not at every retry.
//!
//! **Watching.** `watch = true` jobs arm a [`Watch`]; if that fails (the
//! inotify limit, any notify error) or breaks later, the job says so *once*
//! with the reason (naming `fs.inotify.max_user_watches` and the value
//! needed when that is the cause) and falls back to full scans every
//! [`FALLBACK_SCAN`], trying to arm the watch again at each. A watch-only
//! job (no `schedule`) still does a full scan every [`WATCH_FULL_SCAN`].

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::JobSpec;
use crate::filter::Filter;
use crate::remote::Remote;
use crate::retry::Throttle;
use crate::scheduler::{Registration, Scheduler};
use crate::state::RunTrigger;
use crate::upload::SharedStore;
use crate::watch::Watch;

/// Full-scan interval of a job whose watch does not work.
pub const FALLBACK_SCAN: Duration = Duration::from_secs(5 * 60);
/// Full-scan interval of a watch-only job (no schedule).
pub const WATCH_FULL_SCAN: Duration = Duration::from_secs(24 * 60 * 60);
/// First retry delay after a failed run.
pub const RETRY_BASE: Duration = Duration::from_secs(15);
/// Longest retry delay after failed runs.
pub const RETRY_CAP: Duration = Duration::from_secs(10 * 60);
/// A path that keeps changing holds runs at most this many `settle` periods.
pub const MAX_SETTLE_HOLD: u32 = 12;

/// What every job task shares: one store, one remote (one token provider,
/// one connection pool), one throttle gate for the tenant, one cron
/// scheduler.
#[derive(Debug)]
pub struct JobContext<R: Remote> {
    pub remote: R,
    pub store: SharedStore,
    pub throttle: Arc<Throttle>,
    /// Where jobs with a `schedule` register their cron ticks.
    pub scheduler: Scheduler,
}

/// The watch state of a job, for `STATUS=` and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WatchState {
    /// `watch = false`.
    #[default]
    Off,
    /// Events arrive.
    Armed,
    /// Watching failed; full scans every [`FALLBACK_SCAN`] instead.
    Fallback,
}

/// A job task's state as the supervisor sees it.
#[derive(Debug, Clone, Default)]
pub struct JobStatus {
    /// A run is in flight.
    pub running: bool,
    /// A run is wanted (waiting for settle, a retry time or the current run).
    pub pending: bool,
    pub watch: WatchState,
    /// Runs finished since the task started.
    pub runs: u64,
    /// Files uploaded since the task started.
    pub uploaded: u64,
    /// The last run's error (whole-job failure or sign-in), cleared by a good run.
    pub last_error: Option<String>,
}

/// Shared, lock-briefly status cell.
pub type StatusCell = Arc<Mutex<JobStatus>>;

fn update(cell: &StatusCell, f: impl FnOnce(&mut JobStatus)) {
    f(&mut cell.lock().unwrap_or_else(PoisonError::into_inner));
}

/// Sets the job's watch state for `STATUS=` and records it in the state
/// database for `sharepush status` (only when the watcher is (re)armed or
/// fails, so rarely).
async fn publish_watch(store: &SharedStore, job: &str, cell: &StatusCell, state: WatchState) {
    update(cell, |s| s.watch = state);
    let recorded = match state {
        WatchState::Off => crate::state::WatchState::Off,
        WatchState::Armed => crate::state::WatchState::Watching,
        WatchState::Fallback => crate::state::WatchState::Fallback {
            reason: format!(
                "watching failed (the log says why); full scans every {} min instead",
                FALLBACK_SCAN.as_secs() / 60
            ),
        },
    };
    let (job, at) = (job.to_string(), chrono::Utc::now().timestamp());
    if let Err(e) = store
        .call(move |s| s.set_watch_state(&job, &recorded, at))
        .await
    {
        tracing::warn!("could not record the watch state: {e}");
    }
}

/// Delay before retry number `failures` (1-based): doubling from
/// [`RETRY_BASE`], capped at [`RETRY_CAP`].
pub fn retry_delay(failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    RETRY_BASE.saturating_mul(factor).min(RETRY_CAP)
}

/// The settle check: changed paths with the size and mtime last seen and
/// since when (monotonic) they have been so.
#[derive(Debug)]
struct Settle {
    root: PathBuf,
    window: Duration,
    seen: HashMap<PathBuf, (u64, i64, Instant)>,
    /// When the oldest unsettled change was first seen.
    holding_since: Option<Instant>,
}

impl Settle {
    fn new(root: PathBuf, window: Duration) -> Settle {
        Settle {
            root,
            window,
            seen: HashMap::new(),
            holding_since: None,
        }
    }

    /// Watches `rel`, changed as of `now` (monotonic) / `wall_now`.
    fn add(&mut self, rel: PathBuf, now: Instant, wall_now: std::time::SystemTime) {
        if self.window.is_zero() {
            return;
        }
        self.holding_since.get_or_insert(now);
        let path = self.root.join(&rel);
        if let Some(fp) = stat(&path) {
            // The file has been still since its last change (ctime: any
            // write, truncate or mtime reset moves it, and nothing can set
            // it back), so that time already counts towards the window: the
            // debounce delay is not added on top of `settle`.
            let still_for = last_change(&path)
                .and_then(|t| wall_now.duration_since(t).ok())
                .unwrap_or_default()
                .min(self.window);
            let since = now.checked_sub(still_for).unwrap_or(now);
            self.seen.entry(rel).or_insert((fp.0, fp.1, since));
        }
    }

    /// How much longer to wait before running, or `None` to run now.
    fn remaining(&mut self, now: Instant) -> Option<Duration> {
        if self.seen.is_empty() {
            return None;
        }
        let mut wait = Duration::ZERO;
        let root = &self.root;
        self.seen.retain(|rel, (size, mtime, since)| {
            let Some((s, m)) = stat(&root.join(rel)) else {
                return false; // deleted or a folder: nothing to settle
            };
            if (s, m) != (*size, *mtime) {
                (*size, *mtime, *since) = (s, m, now);
            }
            let left = self.window.saturating_sub(now - *since);
            wait = wait.max(left);
            true
        });
        let held_too_long = self
            .holding_since
            .is_some_and(|t| now - t >= self.window * MAX_SETTLE_HOLD);
        if wait.is_zero() || held_too_long {
            None
        } else {
            Some(wait)
        }
    }

    fn clear(&mut self) {
        self.seen.clear();
        self.holding_since = None;
    }
}

/// Size and mtime (ns) of a regular file; `None` for anything else.
fn stat(path: &std::path::Path) -> Option<(u64, i64)> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    // As the scan's fingerprint: an mtime past 2262 or before 1677 must
    // saturate, not overflow.
    meta.is_file()
        .then(|| (meta.size(), crate::scan::Fingerprint::of(&meta).mtime_ns))
}

/// When a file last changed: the later of its mtime and ctime.
fn last_change(path: &std::path::Path) -> Option<std::time::SystemTime> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    let ctime = std::time::UNIX_EPOCH
        + Duration::new(
            u64::try_from(meta.ctime()).ok()?,
            u32::try_from(meta.ctime_nsec()).ok()?,
        );
    Some(meta.modified().ok()?.max(ctime))
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

async fn watch_changed(w: &Option<Watch>) {
    match w {
        Some(w) => w.changed().await,
        None => std::future::pending().await,
    }
}

/// Arms the job's watch off the async threads: a watch on a large tree
/// walks it (one inotify watch per folder), which would hold a runtime
/// thread, and every job's uploads on it, for as long.
async fn arm(job: &Arc<JobSpec>, warned: &mut bool) -> Option<Watch> {
    let (job, was) = (Arc::clone(job), *warned);
    let (watch, now) = tokio::task::spawn_blocking(move || {
        let mut warned = was;
        (arm_now(&job, &mut warned), warned)
    })
    .await
    .expect("watch task panicked");
    *warned = now;
    watch
}

/// Arms the job's watch; on failure says why once per task (`warned`).
fn arm_now(job: &JobSpec, warned: &mut bool) -> Option<Watch> {
    let root = match job.source.canonicalize() {
        Ok(r) => r,
        // A missing source is reported by the run; arm again after it.
        Err(_) => return None,
    };
    let filter = match Filter::new(&job.include, &job.exclude) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(job = %job.name, error = %e, "cannot watch");
            return None;
        }
    };
    match Watch::start(&root, filter, job.settings.debounce, job.follow_symlinks) {
        Ok(w) => {
            if *warned {
                tracing::info!(job = %job.name, "watching again");
            }
            Some(w)
        }
        Err(e) => {
            if !*warned {
                *warned = true;
                tracing::warn!(
                    job = %job.name,
                    fallback_scan_s = FALLBACK_SCAN.as_secs(),
                    "{e}; falling back to a full scan every {} min",
                    FALLBACK_SCAN.as_secs() / 60
                );
            }
            None
        }
    }
}

/// The job task: runs until `cancel` fires. `ready` is sent once the watch
/// is armed (or known not to work), before the startup run.
pub async fn run_job<R: Remote>(
    job: Arc<JobSpec>,
    ctx: Arc<JobContext<R>>,
    mut manual: mpsc::UnboundedReceiver<()>,
    cancel: CancellationToken,
    status: StatusCell,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut warned = false;
    let mut watch = if job.watch {
        arm(&job, &mut warned).await
    } else {
        None
    };
    let watch_state = |w: &Option<Watch>| match (job.watch, w.is_some()) {
        (false, _) => WatchState::Off,
        (true, true) => WatchState::Armed,
        (true, false) => WatchState::Fallback,
    };
    publish_watch(&ctx.store, &job.name, &status, watch_state(&watch)).await;
    let (tick_tx, mut ticks) = mpsc::unbounded_channel();
    let mut cron = register(&job, &ctx.scheduler, tick_tx).await;
    let _ = ready.send(());

    let periodic = match (job.watch, watch.is_some(), job.schedule.is_some()) {
        (true, false, _) => Some(FALLBACK_SCAN),
        (true, true, false) => Some(WATCH_FULL_SCAN),
        _ => None,
    };
    let mut periodic_at = periodic.map(|d| Instant::now() + d);
    // Between runs the job asks its library for remote changes every
    // `reconcile_interval` (delta since the stored link: one request when
    // nothing changed); a change that needs an upload (a restore, an
    // overwrite, a keep-both copy) starts a run. `None`: only runs ask.
    let reconcile_every = job.settings.reconcile_interval;
    let mut reconcile_at = reconcile_every.map(|d| Instant::now() + d);
    let mut settle = Settle::new(
        job.source.canonicalize().unwrap_or(job.source.clone()),
        job.settings.settle,
    );
    let mut pending: Option<RunTrigger> = Some(RunTrigger::Startup);
    // What the pending run must scan: the paths of the watch batches since
    // the last run, unless anything else asked for it too (or a batch lost
    // events): then the whole source (`full`).
    let mut changed: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    let mut full = true;
    let mut retry_at: Option<Instant> = None;
    let mut failures: u32 = 0;
    let mut last_logged_error: Option<String> = None;
    let mut manual_open = true;

    loop {
        // Stopped before a run could start (a reload or shutdown while the
        // watch was being armed): none starts. The daemon may have started
        // this job's successor already; two runs of one job must not overlap.
        if cancel.is_cancelled() {
            break;
        }
        // Run when something is pending and neither settle nor a retry
        // delay holds it back.
        let mut wake: Option<Instant> = None;
        if let Some(trigger) = pending {
            let now = Instant::now();
            let settle_wait = settle.remaining(now);
            let retry_wait = retry_at.filter(|t| *t > now);
            wake = match (settle_wait, retry_wait) {
                (None, None) => None,
                (s, r) => Some(s.map(|d| now + d).into_iter().chain(r).max().unwrap()),
            };
            if wake.is_none() {
                pending = None;
                retry_at = None;
                settle.clear();
                let scope: Option<Vec<String>> =
                    (!full && !changed.is_empty() && changed.len() <= crate::job::MAX_SCOPED_PATHS)
                        .then(|| std::mem::take(&mut changed).into_iter().collect());
                changed.clear();
                full = false;
                if job.watch && watch.is_none() {
                    watch = arm(&job, &mut warned).await;
                    publish_watch(&ctx.store, &job.name, &status, watch_state(&watch)).await;
                    if watch.is_some() {
                        periodic_at =
                            (job.schedule.is_none()).then(|| Instant::now() + WATCH_FULL_SCAN);
                    }
                    // Arming walks the tree and cannot be interrupted: a
                    // stop that came meanwhile starts no run either. The
                    // yield lets a stop already on its way in (a task on
                    // this thread) land first: both waits above may have
                    // ended without ever giving the thread up.
                    tokio::task::yield_now().await;
                    if cancel.is_cancelled() {
                        break;
                    }
                }
                update(&status, |s| {
                    s.running = true;
                    s.pending = false;
                });
                let run = crate::job::run_once(
                    &ctx.remote,
                    &ctx.store,
                    &ctx.throttle,
                    &job,
                    trigger,
                    scope.as_deref(),
                    None,
                    &cancel,
                );
                // On shutdown the run stops itself between fragments (a
                // fragment in flight gets CANCEL_GRACE) and records what it
                // did; dropping it is the last resort, still safe because the
                // session offset is persisted after every fragment.
                let hard_stop = async {
                    cancel.cancelled().await;
                    tokio::time::sleep(crate::upload::CANCEL_GRACE + Duration::from_millis(1500))
                        .await;
                };
                let result = tokio::select! {
                    r = run => Some(r),
                    () = hard_stop => None,
                };
                if cancel.is_cancelled() {
                    tracing::info!(job = %job.name, "run stopped by shutdown; an interrupted upload resumes at the next start");
                    break;
                }
                // What the run allocated (state records, scan, plan) is
                // freed now; hand it back instead of idling on it.
                let _ = tokio::task::spawn_blocking(crate::memory::release_freed).await;
                let Some(result) = result else { break };
                let problem = match result {
                    Ok(report) => {
                        tracing::info!(
                            job = %job.name,
                            trigger = trigger.as_str(),
                            uploaded = report.uploaded,
                            failed = report.failed.len(),
                            "job run done"
                        );
                        update(&status, |s| {
                            s.runs += 1;
                            s.uploaded += report.uploaded;
                        });
                        report
                            .login_needed
                            .clone()
                            .or(report.error.clone())
                            .map(|e| (e, true))
                            .or_else(|| {
                                (!report.failed.is_empty() || !report.held.is_empty()).then(|| {
                                    (
                                        format!(
                                            "{} file(s) failed",
                                            report.failed.len() + report.held.len()
                                        ),
                                        false,
                                    )
                                })
                            })
                    }
                    Err(e) => Some((format!("state database: {e}"), true)),
                };
                match problem {
                    None => {
                        failures = 0;
                        last_logged_error = None;
                        update(&status, |s| {
                            s.running = false;
                            s.last_error = None;
                        });
                    }
                    Some((error, whole_job)) => {
                        failures += 1;
                        let delay = retry_delay(failures);
                        retry_at = Some(Instant::now() + delay);
                        pending.get_or_insert(trigger);
                        // The retry looks at everything.
                        full = true;
                        if whole_job && last_logged_error.as_deref() != Some(error.as_str()) {
                            tracing::error!(job = %job.name, error = %error, retry_in_s = delay.as_secs(), "job run failed; retrying with backoff");
                        }
                        last_logged_error = Some(error.clone());
                        update(&status, |s| {
                            s.running = false;
                            s.last_error = Some(error);
                        });
                    }
                }
                continue;
            }
        }
        update(&status, |s| s.pending = pending.is_some());

        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            _ = watch_changed(&watch) => {
                let dirty = watch.as_ref().map(Watch::take).unwrap_or_default();
                if let Some(why) = &dirty.broken {
                    if !warned {
                        warned = true;
                        tracing::warn!(job = %job.name, "watching stopped: {why}; falling back to a full scan every {} min", FALLBACK_SCAN.as_secs() / 60);
                    }
                    watch = None;
                    publish_watch(&ctx.store, &job.name, &status, watch_state(&watch)).await;
                    periodic_at = Some(Instant::now() + FALLBACK_SCAN);
                }
                if !dirty.is_empty() {
                    let (now, wall_now) = (Instant::now(), std::time::SystemTime::now());
                    // Lost events (or a broken watch): only a full scan is sure.
                    full |= dirty.rescan || dirty.broken.is_some();
                    for rel in dirty.paths {
                        match rel.to_str() {
                            Some(text) if !full => {
                                changed.insert(text.to_string());
                            }
                            Some(_) => {}
                            // The scan reports such a name; let it see all.
                            None => full = true,
                        }
                        settle.add(rel, now, wall_now);
                    }
                    pending.get_or_insert(RunTrigger::Watch);
                }
            }
            Some(()) = ticks.recv(), if cron.is_some() => {
                pending.get_or_insert(RunTrigger::Schedule);
                full = true;
                // Ticks that queued up (two day fields matching at once,
                // or ticks during a run) are this same pending run.
                while ticks.try_recv().is_ok() {}
                if let Some(reg) = cron.as_mut()
                    && let Err(e) = reg.renew().await
                {
                    tracing::error!(job = %job.name, "cron ticks stopped: {e}");
                    cron = None;
                }
            }
            _ = sleep_until_opt(periodic_at) => {
                pending.get_or_insert(RunTrigger::Schedule);
                full = true;
                let every = if watch.is_some() { WATCH_FULL_SCAN } else { FALLBACK_SCAN };
                periodic_at = Some(Instant::now() + every);
            }
            _ = sleep_until_opt(reconcile_at) => {
                reconcile_at = reconcile_every.map(|d| Instant::now() + d);
                let jobs = [&*job];
                let asked = tokio::select! {
                    r = crate::reconcile::reconcile(&ctx.remote, &ctx.store, &jobs) => Some(r),
                    _ = cancel.cancelled() => None,
                };
                match asked {
                    None => break,
                    Some(Ok(results)) => {
                        for (_, result) in results {
                            match result {
                                Ok(r) if !r.resolved.is_empty() || r.adopted > 0 || r.library_replaced => {
                                    tracing::info!(job = %job.name, remote_changes = r.remote_changes, "remote changes found; a run follows");
                                    pending.get_or_insert(RunTrigger::Reconcile);
                                    full = true;
                                }
                                Ok(_) => {}
                                Err(e) => tracing::debug!(job = %job.name, error = %e, "periodic reconcile could not ask the library; the next run does"),
                            }
                        }
                    }
                    Some(Err(e)) => tracing::warn!(job = %job.name, "periodic reconcile: {e}"),
                }
            }
            m = manual.recv(), if manual_open => match m {
                Some(()) => {
                    // "Now": an administrator who fixed what made the last
                    // run fail (a mount, a permission) does not wait out
                    // its retry delay.
                    pending = Some(RunTrigger::Manual);
                    retry_at = None;
                    full = true;
                }
                None => manual_open = false,
            },
            _ = sleep_until_opt(wake) => {}
        }
    }
    update(&status, |s| {
        s.running = false;
        s.pending = false;
    });
    if let Some(reg) = cron
        && tokio::time::timeout(Duration::from_secs(2), reg.remove())
            .await
            .is_err()
    {
        tracing::warn!(job = %job.name, "the cron scheduler did not confirm removing the schedule");
    }
    drop(watch);
}

/// Registers the job's schedule, if any, in its time zone. A scheduler that
/// refuses (only if its tasks died) is logged; the job still runs on its
/// other triggers.
async fn register(
    job: &JobSpec,
    scheduler: &Scheduler,
    tick: mpsc::UnboundedSender<()>,
) -> Option<Registration> {
    let schedule = job.schedule.as_ref()?;
    match scheduler
        .register(schedule, job.settings.timezone, tick)
        .await
    {
        Ok(reg) => Some(reg),
        Err(e) => {
            tracing::error!(job = %job.name, schedule = %schedule, "cannot schedule: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_doubles_and_is_capped() {
        assert_eq!(retry_delay(1), RETRY_BASE);
        assert_eq!(retry_delay(2), RETRY_BASE * 2);
        assert_eq!(retry_delay(3), RETRY_BASE * 4);
        assert_eq!(retry_delay(30), RETRY_CAP);
        assert_eq!(retry_delay(u32::MAX), RETRY_CAP);
    }

    #[tokio::test(start_paused = true)]
    async fn settle_waits_until_size_and_mtime_hold_still() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        std::fs::write(root.join("f"), b"a").unwrap();
        let mut settle = Settle::new(root.clone(), Duration::from_secs(5));
        let written = last_change(&root.join("f")).unwrap();
        settle.add("f".into(), Instant::now(), written);
        assert_eq!(
            settle.remaining(Instant::now()),
            Some(Duration::from_secs(5))
        );
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(
            settle.remaining(Instant::now()),
            Some(Duration::from_secs(2))
        );
        // The writer goes on: the clock restarts.
        std::fs::write(root.join("f"), b"ab").unwrap();
        assert_eq!(
            settle.remaining(Instant::now()),
            Some(Duration::from_secs(5))
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(settle.remaining(Instant::now()), None);
        // A deleted path needs no settling.
        settle.add("gone".into(), Instant::now(), written);
        std::fs::remove_file(root.join("f")).unwrap();
        assert_eq!(settle.remaining(Instant::now()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_path_that_never_settles_holds_the_run_only_so_long() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let mut settle = Settle::new(root.clone(), Duration::from_secs(1));
        std::fs::write(root.join("log"), b"a").unwrap();
        let written = last_change(&root.join("log")).unwrap();
        settle.add("log".into(), Instant::now(), written);
        let mut held = 0;
        for i in 0..(MAX_SETTLE_HOLD * 2) {
            std::fs::write(root.join("log"), vec![b'a'; i as usize + 2]).unwrap();
            if settle.remaining(Instant::now()).is_none() {
                break;
            }
            held += 1;
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert_eq!(held, MAX_SETTLE_HOLD);
    }

    #[tokio::test(start_paused = true)]
    async fn the_settle_window_counts_from_the_files_last_change() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        std::fs::write(root.join("f"), b"a").unwrap();
        let written = last_change(&root.join("f")).unwrap();
        let mut settle = Settle::new(root.clone(), Duration::from_secs(5));
        // The batch arrives 3 s after the write (the debounce): 2 s to go.
        settle.add("f".into(), Instant::now(), written + Duration::from_secs(3));
        assert_eq!(
            settle.remaining(Instant::now()),
            Some(Duration::from_secs(2))
        );
        // A file still for longer than the window runs at once.
        std::fs::write(root.join("g"), b"g").unwrap();
        let mut old = Settle::new(root.clone(), Duration::from_secs(5));
        let g_written = last_change(&root.join("g")).unwrap();
        old.add(
            "g".into(),
            Instant::now(),
            g_written + Duration::from_secs(60),
        );
        assert_eq!(old.remaining(Instant::now()), None);
        // A clock that went backwards (change "in the future") waits the
        // whole window.
        let mut back = Settle::new(root.clone(), Duration::from_secs(5));
        back.add(
            "g".into(),
            Instant::now(),
            g_written - Duration::from_secs(60),
        );
        assert_eq!(back.remaining(Instant::now()), Some(Duration::from_secs(5)));
    }
}
