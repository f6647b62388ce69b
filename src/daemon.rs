//! The supervisor behind `sharepush run`: wires the shared pieces, starts
//! one task per job, reloads on SIGHUP, runs every job at once on SIGUSR1,
//! stops on SIGTERM/SIGINT, and talks to systemd.
//!
//! Input: a checked [`Config`], a shutdown [`CancellationToken`] and a
//! channel of [`Control`] requests (both fed by [`signals`]). Output: job tasks
//! ([`crate::job_task`]) until shutdown; an error only when the daemon
//! cannot start at all (the state store is locked or too new).
//!
//! Order at start: open the store (the lock proves no other sharepush uses
//! the state dir), build one HTTP client, one token provider (so every job
//! shares one refresh in flight), one remote and one throttle gate; check
//! the sign-in once (a sign-in that needs a person is logged and shown in
//! `STATUS=`, and jobs keep recording changes); start every job task and
//! wait until each has armed its watch; then `READY=1`. Each job's first
//! run (trigger `startup`) follows at once and catches up on what changed
//! while the daemon was down.
//!
//! Reload (SIGHUP): the file is checked like `sharepush check`; a broken
//! file is rejected with every problem logged and the running jobs go on
//! unchanged. Otherwise added jobs start, removed jobs stop, and jobs whose
//! settings changed stop and start again (their watch is re-armed and they
//! make a startup run; a changed job whose old task outlives the grace
//! period starts only once that task has ended). `[auth]`, `[daemon]` and the tenant-wide
//! concurrency keep their running values until a restart (logged).
//!
//! Run now (SIGUSR1, `systemctl kill -s USR1 sharepush`): every job gets a
//! manual trigger; a job that is running merges it into one follow-up run.
//!
//! Shutdown: `STOPPING=1`, every job task is cancelled (no new run starts;
//! a run in flight is dropped: upload session offsets are recorded after
//! every fragment, so the next start resumes the file where it stopped),
//! and the supervisor waits at most [`STOP_GRACE`] for the tasks, then
//! stops the cron scheduler.
//!
//! Cron: the daemon starts one [`crate::scheduler::Scheduler`] before the
//! jobs; each job task registers its own schedule and removes it when it
//! stops, so reload needs no cron bookkeeping here: stopping a removed or
//! changed job (its `timezone` included) removes its ticks, starting it
//! registers them again.
//!
//! What it does not do: decide when a job runs (`job_task`), run it
//! (`job::run_once`), or print anything but log lines.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, JobSpec};
use crate::job_task::{self, JobContext, JobStatus, StatusCell, WatchState};
use crate::remote::GraphRemote;
use crate::remote::auth::TokenProvider;
use crate::retry::{RetryPolicy, Throttle};
use crate::state::{StateError, Store};
use crate::systemd::Notifier;
use crate::upload::SharedStore;

/// How long shutdown waits for job tasks before leaving anyway; well inside
/// systemd's default `TimeoutStopSec=` of 90 s and the 10 s we promise.
pub const STOP_GRACE: Duration = Duration::from_secs(7);
/// How long the start-up sign-in check may take before READY is sent anyway.
pub const LOGIN_CHECK_TIMEOUT: Duration = Duration::from_secs(15);
/// How often the supervisor refreshes `STATUS=` when no watchdog asks more often.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(10);

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The state store is locked by another process, too new, or broken.
    #[error(transparent)]
    State(#[from] StateError),
    /// The HTTP client could not be built.
    #[error(transparent)]
    Remote(#[from] crate::remote::RemoteError),
    /// The cron scheduler could not start.
    #[error(transparent)]
    Scheduler(#[from] crate::scheduler::SchedulerError),
}

/// Knobs the tests turn; production uses the defaults.
#[derive(Debug, Clone, Default)]
pub struct DaemonOptions {
    /// Retry timing for every request.
    pub policy: RetryPolicy,
    /// `--state-dir`, re-applied to each reloaded config.
    pub state_dir_override: Option<PathBuf>,
}

/// What an administrator asks a running daemon for (by signal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// SIGHUP: read the configuration again.
    Reload,
    /// SIGUSR1: run every job now (one run each; a job in a run gets one
    /// follow-up run), as after a manual `sync`.
    RunNow,
}

/// Wires SIGTERM and SIGINT to `shutdown`, SIGHUP to [`Control::Reload`]
/// and SIGUSR1 to [`Control::RunNow`]. The returned task ends when
/// `shutdown` fires.
pub fn signals(
    shutdown: CancellationToken,
    control: mpsc::UnboundedSender<Control>,
) -> std::io::Result<JoinHandle<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = term.recv() => {
                    tracing::info!("SIGTERM: stopping");
                    shutdown.cancel();
                }
                _ = int.recv() => {
                    tracing::info!("SIGINT: stopping");
                    shutdown.cancel();
                }
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    let _ = control.send(Control::Reload);
                }
                _ = usr1.recv() => {
                    tracing::info!("SIGUSR1: running every job now");
                    let _ = control.send(Control::RunNow);
                }
            }
        }
    }))
}

/// One running job task and how to reach it.
struct Running {
    /// The job's settings when it was started, to tell a changed job on reload.
    fingerprint: String,
    cancel: CancellationToken,
    /// Manual triggers (SIGUSR1: [`Control::RunNow`]).
    manual: mpsc::UnboundedSender<()>,
    status: StatusCell,
    handle: JoinHandle<()>,
}

/// What identifies a job's settings: any change restarts the job.
fn fingerprint(job: &JobSpec) -> String {
    format!("{job:?}")
}

/// Runs `task` (a job's new task) once `predecessor` (the same job's
/// previous task, told to stop by a reload but not stopped within the
/// grace period) has ended; nothing if `cancel` fires first. Two tasks of
/// one job at once would scan, record and upload the same files side by
/// side: an upload the old one finishes could record a file synced to the
/// place the job no longer points at, after the new one had queued it for
/// the new place.
async fn after_predecessor(
    job: String,
    predecessor: Option<JoinHandle<()>>,
    cancel: CancellationToken,
    task: impl std::future::Future<Output = ()>,
) {
    if let Some(previous) = predecessor {
        tokio::select! {
            _ = previous => tracing::info!(job, "the job's previous task has stopped; the job starts"),
            () = cancel.cancelled() => return,
        }
    }
    task.await;
}

/// The supervisor's state.
struct Supervisor {
    config: Config,
    options: DaemonOptions,
    ctx: Arc<JobContext<GraphRemote>>,
    jobs: HashMap<String, Running>,
    /// Tasks of jobs a reload stopped that had not ended within the grace
    /// period, by job name: a job of that name starts again only after
    /// it ([`after_predecessor`]).
    lingering: HashMap<String, JoinHandle<()>>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    /// A sign-in problem found at start, shown in `STATUS=` until a run works.
    login_problem: Option<String>,
}

impl Supervisor {
    fn spawn(&mut self, job: &JobSpec) -> oneshot::Receiver<()> {
        let cancel = self.shutdown.child_token();
        let (manual_tx, manual_rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let status: StatusCell = Arc::default();
        let predecessor = self
            .lingering
            .remove(&job.name)
            .filter(|h| !h.is_finished());
        let handle = self.tracker.spawn(after_predecessor(
            job.name.clone(),
            predecessor,
            cancel.clone(),
            job_task::run_job(
                Arc::new(job.clone()),
                Arc::clone(&self.ctx),
                manual_rx,
                cancel.clone(),
                Arc::clone(&status),
                ready_tx,
            ),
        ));
        self.jobs.insert(
            job.name.clone(),
            Running {
                fingerprint: fingerprint(job),
                cancel,
                manual: manual_tx,
                status,
                handle,
            },
        );
        ready_rx
    }

    /// SIGHUP: apply a new config, or keep the old one if it is broken.
    async fn reload(&mut self) {
        let path = self.config.path.clone();
        let loaded = Config::load(&path)
            .and_then(|c| c.with_state_dir_override(self.options.state_dir_override.clone()));
        let new = match loaded {
            Ok(c) => c,
            Err(errors) => {
                for e in &errors.0 {
                    tracing::error!("{e}");
                }
                tracing::error!(
                    problems = errors.0.len(),
                    "reload rejected: {} problem(s) in {}; the running jobs keep the previous configuration",
                    errors.0.len(),
                    path.display()
                );
                return;
            }
        };
        if new.daemon.state_dir != self.config.daemon.state_dir
            || format!("{:?}", new.auth) != format!("{:?}", self.config.auth)
        {
            tracing::warn!(
                "changes to [auth] or [daemon] state_dir take effect at the next restart"
            );
        }
        // The shared upload slots follow the largest `concurrency` upward
        // now; a lower one takes effect at the next restart.
        let wanted_slots = crate::job::tenant_concurrency(&new);
        let slots = self.ctx.throttle.raise_upload_limit(wanted_slots);
        if slots > wanted_slots {
            tracing::warn!(
                slots,
                wanted = wanted_slots,
                "a lower concurrency takes effect at the next restart"
            );
        } else if wanted_slots > crate::job::tenant_concurrency(&self.config) {
            tracing::info!(slots, "uploads at once raised");
        }
        let wanted: HashMap<&str, &JobSpec> =
            new.jobs.iter().map(|j| (j.name.as_str(), j)).collect();
        let (mut added, mut removed, mut restarted) = (Vec::new(), Vec::new(), Vec::new());
        let current: Vec<String> = self.jobs.keys().cloned().collect();
        // Every job that goes or changes is told to stop at once, then all
        // are awaited within one grace period: one after another, busy jobs
        // held this loop (and its watchdog pings) for a grace period each.
        let mut stopping = Vec::new();
        for name in current {
            let changed = match wanted.get(name.as_str()) {
                None => false,
                Some(job) if fingerprint(job) != self.jobs[&name].fingerprint => true,
                Some(_) => continue,
            };
            if let Some(r) = self.jobs.remove(&name) {
                r.cancel.cancel();
                stopping.push((name.clone(), r.handle));
            }
            if changed {
                restarted.push(name);
            } else {
                removed.push(name);
            }
        }
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        for (name, mut handle) in stopping {
            if tokio::time::timeout_at(deadline, &mut handle)
                .await
                .is_err()
            {
                tracing::warn!(
                    job = name,
                    "job did not stop in time; if it starts again, that waits until it has"
                );
                self.lingering.insert(name, handle);
            }
        }
        self.lingering.retain(|_, h| !h.is_finished());
        for name in &restarted {
            drop(self.spawn(wanted[name.as_str()]));
        }
        for job in &new.jobs {
            if !self.jobs.contains_key(&job.name) {
                drop(self.spawn(job));
                added.push(job.name.clone());
            }
        }
        tracing::info!(
            added = ?added,
            removed = ?removed,
            restarted = ?restarted,
            "configuration reloaded from {}",
            path.display()
        );
        let daemon = self.config.daemon.clone();
        let auth = self.config.auth.clone();
        self.config = new;
        // Kept until restart (see above).
        self.config.daemon = daemon;
        self.config.auth = auth;
    }

    /// One line for `systemctl status`: jobs, pending, watch, last error.
    fn status_line(&self) -> String {
        let statuses: Vec<(String, JobStatus)> = {
            let mut v: Vec<_> = self
                .jobs
                .iter()
                .map(|(n, r)| {
                    (
                        n.clone(),
                        r.status
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .clone(),
                    )
                })
                .collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        let running = statuses.iter().filter(|(_, s)| s.running).count();
        let pending = statuses.iter().filter(|(_, s)| s.pending).count();
        let fallback = statuses
            .iter()
            .filter(|(_, s)| s.watch == WatchState::Fallback)
            .count();
        let uploaded: u64 = statuses.iter().map(|(_, s)| s.uploaded).sum();
        let mut line = format!(
            "{} job(s), {running} running, {pending} pending, {uploaded} file(s) uploaded",
            statuses.len()
        );
        if fallback > 0 {
            line.push_str(&format!(", {fallback} scanning without watch"));
        }
        let last_error = statuses
            .iter()
            .find_map(|(n, s)| s.last_error.as_ref().map(|e| format!("job {n}: {e}")))
            .or(self
                .login_problem
                .as_ref()
                .filter(|_| statuses.iter().all(|(_, s)| s.runs == 0))
                .cloned());
        if let Some(e) = last_error {
            let e: String = e.chars().take(200).collect();
            line.push_str(&format!("; last error: {e}"));
        }
        line
    }
}

/// `sharepush run`: the daemon, until `shutdown` fires.
pub async fn serve(
    config: Config,
    options: DaemonOptions,
    shutdown: CancellationToken,
    mut control: mpsc::UnboundedReceiver<Control>,
    notifier: Notifier,
) -> Result<(), DaemonError> {
    let state_dir = config.daemon.state_dir.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&state_dir))
        .await
        .expect("open task panicked")?;
    let store = SharedStore::new(store);
    // For `sharepush status`: which process holds the state, since when.
    let (pid, now) = (std::process::id(), chrono::Utc::now().timestamp());
    store
        .call(move |s| s.record_daemon_started(pid, now))
        .await?;
    let stop_store = store.clone();
    let http = crate::remote::graph::http_client()?;
    let tokens = Arc::new(TokenProvider::new(
        config.auth.clone(),
        http.clone(),
        &config.daemon.state_dir,
        options.policy.clone(),
    ));
    // As `sync`: the largest `concurrency` of any job, shared by all of them
    // (a job set higher than the default gets what it asked for).
    let throttle = Arc::new(Throttle::new(
        crate::job::tenant_concurrency(&config),
        options.policy.clone(),
    ));
    let remote = GraphRemote::new(
        http,
        &config.auth.graph_url,
        Arc::clone(&tokens),
        Arc::clone(&throttle),
    );

    let login_problem = tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        r = tokio::time::timeout(LOGIN_CHECK_TIMEOUT, tokens.access_token()) => match r {
            Ok(Ok(_)) => None,
            Ok(Err(e)) if e.needs_person() => {
                tracing::error!(error = %e, "cannot sign in; changes are recorded meanwhile and upload once signing in works again, without a restart");
                Some(e.to_string())
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot sign in yet; jobs retry");
                Some(e.to_string())
            }
            Err(_) => {
                tracing::warn!("the token service did not answer within {}s; jobs retry", LOGIN_CHECK_TIMEOUT.as_secs());
                Some("the token service did not answer".into())
            }
        },
    };

    // One cron scheduler for every job (see `scheduler`).
    let scheduler = crate::scheduler::Scheduler::start().await?;
    let mut sup = Supervisor {
        options,
        ctx: Arc::new(JobContext {
            remote,
            store: store.clone(),
            throttle,
            scheduler: scheduler.clone(),
        }),
        jobs: HashMap::new(),
        lingering: HashMap::new(),
        tracker: TaskTracker::new(),
        shutdown: shutdown.clone(),
        login_problem,
        config,
    };
    let jobs = sup.config.jobs.clone();
    let readies: Vec<_> = jobs.iter().map(|j| sup.spawn(j)).collect();
    for ready in readies {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ready => {}
        }
    }
    if !shutdown.is_cancelled() {
        let line = sup.status_line();
        tracing::info!(
            jobs = sup.jobs.len(),
            config = %sup.config.path.display(),
            state_dir = %sup.config.daemon.state_dir.display(),
            "sharepush is running: {line}"
        );
        notifier.ready(&line);
    }

    let watchdog = notifier.watchdog_interval();
    let mut tick = tokio::time::interval(watchdog.unwrap_or(STATUS_INTERVAL).min(STATUS_INTERVAL));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_status = String::new();
    let mut control_open = true;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            r = control.recv(), if control_open => match r {
                Some(Control::Reload) => sup.reload().await,
                Some(Control::RunNow) => {
                    for r in sup.jobs.values() {
                        let _ = r.manual.send(());
                    }
                }
                // No more requests can come (no signal handler); keep running.
                None => control_open = false,
            },
            _ = tick.tick() => {
                // Healthy: this loop runs and the store answers in time.
                let healthy = tokio::time::timeout(
                    Duration::from_secs(5),
                    store.call(|s| s.ping().is_ok()),
                )
                .await
                .unwrap_or(false);
                if healthy && watchdog.is_some() {
                    notifier.watchdog();
                }
                let line = sup.status_line();
                if line != last_status {
                    notifier.status(&line);
                    last_status = line;
                }
            }
        }
    }

    notifier.stopping("stopping: cancelling runs, upload sessions resume at the next start");
    tracing::info!("stopping");
    for r in sup.jobs.values() {
        r.cancel.cancel();
    }
    sup.tracker.close();
    if tokio::time::timeout(STOP_GRACE, sup.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("some jobs did not stop within {}s", STOP_GRACE.as_secs());
    }
    scheduler.shutdown().await;
    let now = chrono::Utc::now().timestamp();
    if let Err(e) = stop_store.call(move |s| s.record_daemon_stopped(now)).await {
        tracing::warn!("could not record the stop: {e}");
    }
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Lets every other task on this (single) runtime thread run as far as
    /// it can.
    async fn let_others_run() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    /// A job's new task behind a previous one that has not ended: its
    /// handle, whether its work started, and what ends the previous task.
    fn behind_a_busy_task(
        cancel: CancellationToken,
    ) -> (JoinHandle<()>, Arc<AtomicBool>, oneshot::Sender<()>) {
        let (end_previous, ended) = oneshot::channel::<()>();
        let previous = tokio::spawn(async move {
            let _ = ended.await;
        });
        let started = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&started);
        let next = tokio::spawn(after_predecessor(
            "docs".into(),
            Some(previous),
            cancel,
            async move { flag.store(true, Ordering::SeqCst) },
        ));
        (next, started, end_previous)
    }

    #[tokio::test]
    async fn a_job_starts_again_only_once_its_previous_task_has_ended() {
        let (next, started, end_previous) = behind_a_busy_task(CancellationToken::new());
        let_others_run().await;
        assert!(
            !started.load(Ordering::SeqCst),
            "started beside its predecessor"
        );
        end_previous.send(()).unwrap();
        next.await.unwrap();
        assert!(started.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_job_stopped_while_waiting_for_its_previous_task_never_starts() {
        let cancel = CancellationToken::new();
        let (next, started, _end_previous) = behind_a_busy_task(cancel.clone());
        let_others_run().await;
        cancel.cancel();
        next.await.unwrap();
        assert!(!started.load(Ordering::SeqCst));
    }
}
