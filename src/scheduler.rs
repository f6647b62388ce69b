//! Cron ticks for the daemon, through tokio-cron-scheduler.
//!
//! Input: a job's [`Schedule`] and [`Zone`], and the sender of that job's
//! tick channel. Output: one `()` on the channel at each tick. The job task
//! ([`crate::job_task`]) turns a tick into a pending run, so ticks that
//! arrive during a run merge into one follow-up run; this module never runs
//! anything itself.
//!
//! The daemon has **one** [`Scheduler`] (one ticker task polling one
//! in-memory job table), however many jobs it has: a scheduler per job
//! would be one more polling task per job for no gain, since a tick only
//! sends on a channel. Each job task owns its [`Registration`]: it
//! registers when it starts and removes the registration when it stops, so
//! a job removed or changed by a reload (SIGHUP), whose task is stopped,
//! leaves nothing scheduled behind.
//!
//! What tokio-cron-scheduler 0.15.1 does, read from its source
//! (`src/scheduler.rs`, `src/job/mod.rs`), and how we use it:
//!
//! - **Suspend.** Its ticker wakes every 500 ms (tokio's monotonic clock)
//!   and compares each job's next tick with the *wall* clock (`Utc::now()`);
//!   a due job fires once and its next tick is computed from *now*. After a
//!   suspend that spanned several ticks, the job therefore fires once, at
//!   most 500 ms after the resume, not once per missed tick and not never.
//!   (`a_tick_missed_while_suspended_fires_once` checks exactly that.)
//! - **Time zones.** It computes a job's *first* tick with croner in the
//!   real zone, but every later one in a fixed UTC offset frozen when the
//!   job was created, so a job created in winter would run an hour off
//!   after the spring change until a restart. Guard: the job task calls
//!   [`Registration::renew`] after every tick, which replaces the scheduler
//!   job by a fresh one, so every tick the scheduler fires is a *first*
//!   tick, computed in the zone with its DST rules.
//! - **Day of month and day of week.** It parses every pattern with
//!   croner's `dom_and_dow(true)`: both fields must match. Crontab (Vixie)
//!   runs a job when *either* matches if both are restricted (`0 0 13 * 5`
//!   is the 13th *and* every Friday). Guard: such a schedule is registered
//!   as two scheduler jobs, one per day field with the other `*`; their
//!   ticks land in the same channel. On a day both match, both fire in one
//!   ticker pass; the job task may already have taken the first tick and
//!   renewed, so the jobs of one registration send one tick per
//!   [`SAME_TICK`]. The times agree with [`Schedule::next_in`], which
//!   `check` and `status` show.
//! - **The repeated hour of a fall-back.** croner 3.0.1, which it uses for
//!   the first tick, answers a time in the past when asked from the second
//!   pass of that hour (02:15 CEST at 02:00 CET); the job would fire at
//!   once and again after every renewal until the hour is over. Guard: a
//!   fresh registration whose tick is not in the future is moved to our own
//!   next run ([`corrected_tick`], [`Schedule::next_after`]).
//! - **Precision.** Ticks are checked every 500 ms with 1 s resolution, so
//!   a run starts up to a second after its minute: fine for backups. The
//!   500 ms wake-up costs far less than the idle target (1 CPU-second per
//!   10 minutes).
//!
//! What it does not do: parse or validate schedules ([`crate::schedule`]),
//! decide whether a tick starts a run ([`crate::job_task`]).

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::mpsc;
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};
use uuid::Uuid;

use crate::schedule::{Schedule, Zone};

/// The scheduler could not start or take a job (its internal channels
/// closed: only at shutdown, or a bug).
#[derive(Debug, thiserror::Error)]
#[error("cron scheduler: {0}")]
pub struct SchedulerError(#[from] JobSchedulerError);

/// The daemon's one cron scheduler; clones share it.
#[derive(Clone)]
pub struct Scheduler {
    inner: JobScheduler,
}

impl fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scheduler").finish_non_exhaustive()
    }
}

impl Scheduler {
    /// Starts the ticker task.
    pub async fn start() -> Result<Scheduler, SchedulerError> {
        let inner = JobScheduler::new().await?;
        inner.start().await?;
        Ok(Scheduler { inner })
    }

    /// Registers `schedule`, read in `zone`, sending `()` on `tick` at
    /// each tick until the registration is removed.
    pub async fn register(
        &self,
        schedule: &Schedule,
        zone: Zone,
        tick: mpsc::UnboundedSender<()>,
    ) -> Result<Registration, SchedulerError> {
        let patterns = scheduler_patterns(&schedule.six_field);
        self.register_patterns(schedule.clone(), patterns, zone, tick)
            .await
    }

    async fn register_patterns(
        &self,
        schedule: Schedule,
        patterns: Vec<String>,
        zone: Zone,
        tick: mpsc::UnboundedSender<()>,
    ) -> Result<Registration, SchedulerError> {
        let mut reg = Registration {
            scheduler: self.clone(),
            schedule,
            patterns,
            zone,
            tick,
            last_sent: Arc::default(),
            ids: Vec::new(),
        };
        reg.add_all().await?;
        Ok(reg)
    }

    /// Stops the ticker (daemon shutdown); registrations fire no more.
    pub async fn shutdown(&self) {
        let mut inner = self.inner.clone();
        if let Err(e) = inner.shutdown().await {
            tracing::debug!("cron scheduler shutdown: {e}");
        }
    }

    /// When the scheduler will next fire `id`.
    async fn next_tick(&self, id: Uuid) -> Option<chrono::DateTime<chrono::Utc>> {
        self.inner
            .clone()
            .next_tick_for_job(id)
            .await
            .ok()
            .flatten()
    }
}

/// One job's schedule in the [`Scheduler`]: one or two scheduler jobs (see
/// the module docs on day fields).
pub struct Registration {
    scheduler: Scheduler,
    /// Ours, for the guard against a tick the scheduler puts in the past.
    schedule: Schedule,
    /// Six-field patterns as tokio-cron-scheduler reads them.
    patterns: Vec<String>,
    zone: Zone,
    tick: mpsc::UnboundedSender<()>,
    /// When this registration last sent a tick (wall clock), shared by its
    /// scheduler jobs and kept across renewals: see [`SAME_TICK`].
    last_sent: Arc<Mutex<Option<chrono::DateTime<chrono::Utc>>>>,
    /// The scheduler's ids of the jobs currently registered.
    ids: Vec<Uuid>,
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("patterns", &self.patterns)
            .field("zone", &self.zone)
            .field("ids", &self.ids)
            .finish()
    }
}

impl Registration {
    async fn add_all(&mut self) -> Result<(), SchedulerError> {
        for pattern in &self.patterns {
            let job = scheduler_job(
                pattern,
                self.zone,
                self.tick.clone(),
                Arc::clone(&self.last_sent),
            )?;
            let id = self.scheduler.inner.add(job).await?;
            self.ids.push(id);
            let now = chrono::Utc::now();
            let held = self.scheduler.next_tick(id).await;
            if let Some(fixed) = corrected_tick(held, now, self.schedule.next_in(self.zone, now)) {
                tracing::debug!(%fixed, "cron scheduler: moving a tick it put in the past");
                let storage = self.scheduler.inner.context().metadata_storage.clone();
                let mut storage = storage.write().await;
                storage
                    .set_next_and_last_tick(id, Some(fixed), None)
                    .await?;
            }
        }
        Ok(())
    }

    async fn remove_all(&mut self) {
        // One at a time, each kept until removed: a removal cut short (the
        // job task's timeout) leaves the rest to `Drop`.
        while let Some(&id) = self.ids.last() {
            if let Err(e) = self.scheduler.inner.remove(&id).await {
                tracing::debug!("cron scheduler: removing {id}: {e}");
            }
            self.ids.pop();
        }
    }

    /// After a tick: registers afresh, so the next tick is computed in the
    /// zone's real rules (see the module docs on time zones).
    pub async fn renew(&mut self) -> Result<(), SchedulerError> {
        self.remove_all().await;
        self.add_all().await
    }

    /// Stops the ticks (the job stopped or changed).
    pub async fn remove(mut self) {
        self.remove_all().await;
    }

    /// The earliest next tick the scheduler holds for this job.
    pub async fn next_tick(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        let mut earliest = None;
        for id in &self.ids {
            if let Some(t) = self.scheduler.next_tick(*id).await {
                earliest = Some(earliest.map_or(t, |e: chrono::DateTime<chrono::Utc>| e.min(t)));
            }
        }
        earliest
    }
}

/// A registration dropped without [`Registration::remove`] (a job task
/// that panicked, or one whose renewal failed partway and gave the
/// registration up) would leave its scheduler jobs firing, every tick for
/// the daemon's lifetime, into a channel nobody reads. They are removed in
/// the background instead.
impl Drop for Registration {
    fn drop(&mut self) {
        if self.ids.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (scheduler, ids) = (self.scheduler.clone(), std::mem::take(&mut self.ids));
        runtime.spawn(async move {
            for id in ids {
                if let Err(e) = scheduler.inner.remove(&id).await {
                    tracing::debug!("cron scheduler: removing {id}: {e}");
                }
            }
        });
    }
}

/// The scheduler jobs for one of our six-field patterns: itself, or, when
/// both day fields are restricted (crontab's OR), one pattern per day field
/// with the other one `*`. A `+` in front of the day of week (our marker
/// for crontab's AND) is left as it is: the scheduler ANDs anyway.
pub fn scheduler_patterns(six_field: &str) -> Vec<String> {
    let fields: Vec<&str> = six_field.split_whitespace().collect();
    match fields.as_slice() {
        [s, m, h, dom, mon, dow] if *dom != "*" && *dow != "*" && !dow.starts_with('+') => vec![
            format!("{s} {m} {h} {dom} {mon} *"),
            format!("{s} {m} {h} * {mon} {dow}"),
        ],
        _ => vec![six_field.to_string()],
    }
}

/// The guard for croner's answer in the repeated hour of a fall-back (see
/// [`Schedule::next_after`]): a fresh scheduler job whose first tick is
/// not after `now` would fire at once, and again after every renewal, until
/// the hour is over. Such a tick is moved to our next run; others are kept.
pub fn corrected_tick(
    held: Option<chrono::DateTime<chrono::Utc>>,
    now: chrono::DateTime<chrono::Utc>,
    ours: Option<chrono::DateTime<chrono::FixedOffset>>,
) -> Option<chrono::DateTime<chrono::Utc>> {
    match (held, ours) {
        (Some(held), Some(ours)) if held <= now => Some(ours.with_timezone(&chrono::Utc)),
        _ => None,
    }
}

/// Ticks of one registration closer than this are one tick. Both jobs of
/// a day-field OR (`0 0 13 * 5` on a Friday the 13th) fire in the same
/// ticker pass, but the job task may take (and renew after) the first
/// before the second is sent: without this it would make a second run.
/// Real ticks of a minute-resolution schedule are at least a minute apart.
pub const SAME_TICK: chrono::TimeDelta = chrono::TimeDelta::seconds(30);

/// Whether a tick at `now` is a new one (and records it), or the same tick
/// another job of the registration already sent.
fn first_of_tick(
    last_sent: &Mutex<Option<chrono::DateTime<chrono::Utc>>>,
    now: chrono::DateTime<chrono::Utc>,
) -> bool {
    let mut last = last_sent.lock().unwrap_or_else(PoisonError::into_inner);
    // Wall clock, as the scheduler's: a monotonic clock stops during a
    // suspend and would swallow the tick made on resume.
    if last.is_some_and(|t| (now - t).abs() < SAME_TICK) {
        return false;
    }
    *last = Some(now);
    true
}

/// One scheduler job that sends on `tick`.
fn scheduler_job(
    pattern: &str,
    zone: Zone,
    tick: mpsc::UnboundedSender<()>,
    last_sent: Arc<Mutex<Option<chrono::DateTime<chrono::Utc>>>>,
) -> Result<Job, SchedulerError> {
    let run = move |_id, _scheduler| {
        // A closed channel means the job task is gone; its registration
        // is removed as it stops.
        if first_of_tick(&last_sent, chrono::Utc::now()) {
            let _ = tick.send(());
        }
        Box::pin(async {}) as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
    };
    let job = match zone {
        Zone::Local => Job::new_async_tz(pattern, chrono::Local, run)?,
        Zone::Named(tz) => Job::new_async_tz(pattern, tz, run)?,
    };
    Ok(job)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use chrono::Utc;

    /// Waits for a tick, failing the test after `within`.
    async fn tick_within(rx: &mut mpsc::UnboundedReceiver<()>, within: Duration) {
        tokio::time::timeout(within, rx.recv())
            .await
            .expect("no tick in time")
            .expect("tick channel closed");
    }

    #[test]
    fn only_a_tick_in_the_past_is_moved() {
        let t = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap();
        let now = t("2026-10-25T01:05:00Z").with_timezone(&Utc);
        // In Berlin's repeated hour croner answers 02:15 CEST (00:15Z).
        let croner = Some(t("2026-10-25T00:15:00Z").with_timezone(&Utc));
        let ours = Some(t("2026-10-25T03:00:00+01:00"));
        assert_eq!(
            corrected_tick(croner, now, ours),
            Some(t("2026-10-25T02:00:00Z").with_timezone(&Utc))
        );
        let ahead = Some(t("2026-10-25T02:00:00Z").with_timezone(&Utc));
        assert_eq!(corrected_tick(ahead, now, ours), None);
        assert_eq!(corrected_tick(croner, now, None), None);
    }

    #[test]
    fn ticks_closer_than_a_minute_are_one() {
        let t = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap().to_utc();
        let last = Mutex::new(None);
        assert!(first_of_tick(&last, t("2026-11-13T00:00:00.2Z")));
        // The other day field's job, same ticker pass.
        assert!(!first_of_tick(&last, t("2026-11-13T00:00:00.3Z")));
        assert!(first_of_tick(&last, t("2026-11-13T00:01:00Z")));
        // Resumed after a suspend: a new tick.
        assert!(first_of_tick(&last, t("2026-11-13T03:00:00Z")));
    }

    /// `0 0 13 * 5` on a Friday the 13th: both scheduler jobs fire in one
    /// ticker pass. The job task takes the first tick and renews at once;
    /// a second tick sent after that made a second, needless full run.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn both_day_fields_matching_send_one_tick() {
        let scheduler = Scheduler::start().await.unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let reg = scheduler
            .register_patterns(
                Schedule::parse("0 0 13 * 5").unwrap(),
                vec!["* * * * * *".into(), "* * * * * *".into()],
                Zone::Named(chrono_tz::UTC),
                tx,
            )
            .await
            .unwrap();
        tick_within(&mut rx, Duration::from_secs(5)).await;
        let again = tokio::time::timeout(Duration::from_millis(1500), rx.recv()).await;
        assert!(again.is_err(), "a second tick for the same instant");
        reg.remove().await;
        scheduler.shutdown().await;
    }

    #[test]
    fn both_day_fields_restricted_become_two_patterns() {
        assert_eq!(
            scheduler_patterns("0 0 0 13 * 5"),
            ["0 0 0 13 * *", "0 0 0 * * 5"]
        );
        assert_eq!(scheduler_patterns("0 30 2 * * *"), ["0 30 2 * * *"]);
        assert_eq!(scheduler_patterns("0 0 0 13 * *"), ["0 0 0 13 * *"]);
        // Our AND marker (`*/2` day of month with a weekday) stays one job.
        assert_eq!(scheduler_patterns("0 0 0 */2 * +1"), ["0 0 0 */2 * +1"]);
    }

    /// The scheduler's first tick agrees with what `check` and `status`
    /// show, in a named zone, and for crontab's day-field OR.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn registered_ticks_match_the_schedule() {
        let scheduler = Scheduler::start().await.unwrap();
        for (expr, zone) in [
            ("30 2 * * *", Zone::Named(chrono_tz::Europe::Berlin)),
            ("0 9 * * 1-5", Zone::Named(chrono_tz::America::New_York)),
            ("0 0 13 * 5", Zone::Named(chrono_tz::UTC)),
            ("*/15 * * * *", Zone::Local),
        ] {
            let schedule = Schedule::parse(expr).unwrap();
            let (tx, _rx) = mpsc::unbounded_channel();
            let now = Utc::now();
            let reg = scheduler.register(&schedule, zone, tx).await.unwrap();
            let held = reg.next_tick().await.expect("a next tick");
            let shown = schedule.next_in(zone, now).unwrap();
            assert_eq!(held, shown, "{expr} in {zone}");
            reg.remove().await;
        }
        scheduler.shutdown().await;
    }

    /// A machine suspended over several ticks: the scheduler's next tick is
    /// far in the past when it wakes. It fires once and moves the next tick
    /// to the future (computed from now), so the missed ticks make one run.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tick_missed_while_suspended_fires_once() {
        let scheduler = Scheduler::start().await.unwrap();
        let schedule = Schedule::parse("*/15 * * * *").unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let reg = scheduler
            .register(&schedule, Zone::Named(chrono_tz::UTC), tx)
            .await
            .unwrap();
        assert!(rx.try_recv().is_err(), "no tick before its time");
        // Three hours asleep: twelve ticks missed.
        let slept_from = Utc::now() - chrono::Duration::hours(3);
        let id = reg.ids[0];
        scheduler
            .inner
            .context()
            .metadata_storage
            .write()
            .await
            .set_next_and_last_tick(id, Some(slept_from), None)
            .await
            .unwrap();
        tick_within(&mut rx, Duration::from_secs(5)).await;
        // The next tick is computed from now, not from the missed one.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let next = reg.next_tick().await.unwrap();
            if next > Utc::now() {
                assert!(next - Utc::now() <= chrono::Duration::minutes(15), "{next}");
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "next tick stayed at {next}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        reg.remove().await;
        scheduler.shutdown().await;
    }

    /// A job task that panics drops its registration without removing it:
    /// its scheduler jobs go anyway, instead of firing into a closed channel
    /// for the rest of the daemon's life.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_registration_leaves_nothing_scheduled() {
        let scheduler = Scheduler::start().await.unwrap();
        let (tx, _rx) = mpsc::unbounded_channel();
        let reg = scheduler
            .register(
                &Schedule::parse("0 0 13 * 5").unwrap(),
                Zone::Named(chrono_tz::UTC),
                tx,
            )
            .await
            .unwrap();
        let ids = reg.ids.clone();
        assert_eq!(ids.len(), 2);
        for id in &ids {
            assert!(scheduler.next_tick(*id).await.is_some());
        }
        drop(reg);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        for id in ids {
            while scheduler.next_tick(id).await.is_some() {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{id} still scheduled"
                );
                tokio::task::yield_now().await;
            }
        }
        scheduler.shutdown().await;
    }

    /// A tick arrives, a renewal keeps ticking, and a removed registration
    /// holds nothing in the scheduler.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ticks_arrive_renew_and_stop_on_remove() {
        let scheduler = Scheduler::start().await.unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut reg = scheduler
            .register_patterns(
                Schedule::parse("* * * * *").unwrap(),
                vec!["* * * * * *".into()],
                Zone::Named(chrono_tz::UTC),
                tx,
            )
            .await
            .unwrap();
        tick_within(&mut rx, Duration::from_secs(5)).await;
        let old = reg.ids.clone();
        reg.renew().await.unwrap();
        assert_ne!(reg.ids, old);
        assert!(
            scheduler.next_tick(old[0]).await.is_none(),
            "the old job is gone"
        );
        while rx.try_recv().is_ok() {}
        // A tick every second is below SAME_TICK: forget the last one.
        *reg.last_sent.lock().unwrap() = None;
        tick_within(&mut rx, Duration::from_secs(5)).await;
        let ids = reg.ids.clone();
        reg.remove().await;
        assert!(scheduler.next_tick(ids[0]).await.is_none());
        scheduler.shutdown().await;
    }
}
