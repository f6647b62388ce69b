//! Retry timing and the per-tenant throttle gate.
//!
//! [`Throttle`]: one per tenant, shared by every job and every request. A
//! `Retry-After` from any reply pauses *every* request to that tenant until
//! it has passed (graph-api.md section 7: throttled requests still count
//! against the budget, so hammering makes it worse). It also holds the global
//! limit on files uploading at once, and which drives answered `507
//! quotaLimitReached`: uploads to such a drive stop for every job sharing it
//! ([`Throttle::stop_drive`], [`QUOTA_HOLD`]).
//!
//! [`RetryPolicy`]: exponential backoff with full jitter for failures without
//! a `Retry-After` (429 without it, 5xx, broken connections), with a capped
//! number of attempts. Hand-rolled (a dozen lines) because the gate above is
//! ours anyway and the policy must be tunable per test.
//!
//! [`Bandwidth`]: an optional bytes-per-second limit for upload content.
//!
//! What it does not do: decide *whether* an error is worth retrying (the
//! remote implementation classifies replies) or send anything itself.
//! Time is `tokio::time`, so tests run it with `start_paused`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

/// How hard to retry one request before giving up on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// First backoff delay; each further attempt doubles it (before jitter).
    pub base: Duration,
    /// No single backoff delay is longer than this.
    pub cap: Duration,
    /// Attempts of one request for failures without `Retry-After`
    /// (the first try included).
    pub max_attempts: u32,
    /// Attempts of one request that the service keeps answering with
    /// `Retry-After`; each waits exactly as long as it says.
    pub max_throttled: u32,
    /// How long to wait before asking again about an upload session that
    /// answered 404 (busy tenants return a transient 404).
    pub session_gone_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(60),
            max_attempts: 8,
            max_throttled: 20,
            session_gone_delay: Duration::from_secs(3),
        }
    }
}

impl RetryPolicy {
    /// The delay before attempt `attempt + 1` (so `attempt` starts at 1 after
    /// the first failure): uniformly random in `[0, min(cap, base * 2^(attempt-1))]`
    /// ("full jitter"), so many clients that failed together do not retry together.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        let nanos = ceiling.as_nanos().min(u64::MAX as u128) as u64;
        Duration::from_nanos(fastrand::u64(0..=nanos))
    }

    /// The upper bound of [`RetryPolicy::backoff`] for `attempt`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let shift = attempt.saturating_sub(1).min(30);
        self.base.saturating_mul(1u32 << shift).min(self.cap)
    }
}

/// The gate every request to one tenant passes. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct Throttle {
    /// No request may start before this instant (set from `Retry-After`).
    paused_until: Mutex<Option<Instant>>,
    /// Files uploading at once, across all jobs (the largest `concurrency`).
    /// An upload waiting for its job's bandwidth turn gives its slot back
    /// meanwhile (`upload::Uploader`).
    uploads: Semaphore,
    /// How many slots `uploads` holds in all (it can only grow: see
    /// [`Throttle::raise_upload_limit`]).
    upload_limit: std::sync::atomic::AtomicUsize,
    /// Retry timing for requests through this gate.
    policy: RetryPolicy,
    /// Drive ids that answered 507, and until when no upload goes to them.
    full_drives: Mutex<HashMap<String, Instant>>,
}

/// The longest `Retry-After` obeyed. The service was seen to ask for up to
/// 3600 s (graph-api.md section 7), and those are waited out exactly; a
/// larger value (a proxy's, a date from a clock years off, a garbage
/// number) would otherwise stop every job of the tenant for that long, or
/// overflow the clock and panic. Coming back after an hour costs one
/// request, which the service answers with a fresh `Retry-After`.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// How long uploads to a drive that answered `507 quotaLimitReached` stay
/// stopped (for every job sharing it). A one-shot sync never outlives it;
/// the daemon tries again after it, in case space was freed.
pub const QUOTA_HOLD: Duration = Duration::from_secs(3600);

impl Throttle {
    /// A gate allowing `concurrency` uploads at once.
    pub fn new(concurrency: usize, policy: RetryPolicy) -> Throttle {
        Throttle {
            paused_until: Mutex::new(None),
            uploads: Semaphore::new(concurrency.max(1)),
            upload_limit: std::sync::atomic::AtomicUsize::new(concurrency.max(1)),
            policy,
            full_drives: Mutex::new(HashMap::new()),
        }
    }

    /// Stops uploads to `drive` for [`QUOTA_HOLD`] (it answered 507).
    /// Returns true if it was not stopped already.
    pub fn stop_drive(&self, drive: &str) -> bool {
        let now = Instant::now();
        let mut full = self.full_drives.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = full.get(drive).is_none_or(|t| *t <= now);
        if fresh {
            full.insert(drive.to_string(), now + QUOTA_HOLD);
        }
        fresh
    }

    /// True while uploads to `drive` are stopped for its quota.
    pub fn drive_full(&self, drive: &str) -> bool {
        let full = self.full_drives.lock().unwrap_or_else(|e| e.into_inner());
        full.get(drive).is_some_and(|t| *t > Instant::now())
    }

    /// The retry policy requests through this gate follow.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// Waits until no `Retry-After` pause is in force. Call right before
    /// sending each request.
    pub async fn ready(&self) {
        loop {
            let until = *self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
            match until {
                Some(t) if t > Instant::now() => tokio::time::sleep_until(t).await,
                _ => return,
            }
        }
    }

    /// Pauses every request for `d` from now (a reply said `Retry-After`),
    /// at most [`MAX_RETRY_AFTER`]. A longer pause already in force is kept.
    pub fn pause_for(&self, d: Duration) {
        let d = d.min(MAX_RETRY_AFTER);
        let until = Instant::now() + d;
        let mut guard = self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none_or(|t| t < until) {
            *guard = Some(until);
        }
        tracing::warn!(
            seconds = d.as_secs_f64(),
            "throttled by the service: pausing every request to the tenant"
        );
    }

    /// True while a `Retry-After` pause is in force.
    pub fn is_paused(&self) -> bool {
        let until = *self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
        until.is_some_and(|t| t > Instant::now())
    }

    /// Waits for a free upload slot; the slot is released when the permit
    /// is dropped.
    pub async fn upload_slot(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.uploads
            .acquire()
            .await
            .expect("the upload semaphore is never closed")
    }

    /// Raises the number of uploads at once to `limit` (a reloaded config
    /// asked for more); returns the limit now in force. Lowering waits for
    /// a restart: slots in use cannot be taken back.
    pub fn raise_upload_limit(&self, limit: usize) -> usize {
        use std::sync::atomic::Ordering;
        let before = self.upload_limit.fetch_max(limit, Ordering::AcqRel);
        if limit > before {
            self.uploads.add_permits(limit - before);
        }
        before.max(limit)
    }
}

/// A bytes-per-second limit for upload content, shared by one job's uploads.
/// Each send reserves its bytes on a virtual timeline and waits until its
/// turn, so the long-run rate never exceeds the limit.
#[derive(Debug)]
pub struct Bandwidth {
    bytes_per_sec: u64,
    /// When the bytes reserved so far will have been "sent" at the limit.
    next_free: Mutex<Option<Instant>>,
}

impl Bandwidth {
    /// A limit of `bytes_per_sec` (at least 1).
    pub fn new(bytes_per_sec: u64) -> Bandwidth {
        Bandwidth {
            bytes_per_sec: bytes_per_sec.max(1),
            next_free: Mutex::new(None),
        }
    }

    /// The limit, bytes per second.
    pub fn bytes_per_sec(&self) -> u64 {
        self.bytes_per_sec
    }

    /// Waits until `bytes` more may be sent.
    pub async fn consume(&self, bytes: u64) {
        tokio::time::sleep_until(self.reserve(bytes)).await;
    }

    /// Reserves `bytes` on the timeline and returns when they may be sent:
    /// for a caller that has something to give back while it waits (an
    /// upload slot other jobs need).
    pub fn reserve(&self, bytes: u64) -> Instant {
        let cost = Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
        let mut guard = self.next_free.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let start = guard.filter(|t| *t > now).unwrap_or(now);
        *guard = Some(start + cost);
        start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_below_the_ceiling() {
        let p = RetryPolicy {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
            ..RetryPolicy::default()
        };
        assert_eq!(p.ceiling(1), Duration::from_millis(100));
        assert_eq!(p.ceiling(2), Duration::from_millis(200));
        assert_eq!(p.ceiling(4), Duration::from_millis(800));
        assert_eq!(p.ceiling(5), Duration::from_secs(1));
        assert_eq!(p.ceiling(60), Duration::from_secs(1));
        for attempt in 1..10 {
            assert!(p.backoff(attempt) <= p.ceiling(attempt));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_every_caller_until_it_ends() {
        let t = Throttle::new(2, RetryPolicy::default());
        let start = Instant::now();
        t.ready().await;
        assert_eq!(Instant::now(), start, "no pause: no wait");
        t.pause_for(Duration::from_secs(30));
        t.pause_for(Duration::from_secs(5)); // a shorter one does not shorten it
        assert!(t.is_paused());
        let (a, b) = tokio::join!(t.ready(), t.ready());
        let _ = (a, b);
        assert!(Instant::now() >= start + Duration::from_secs(30));
        assert!(!t.is_paused());
    }

    #[tokio::test(start_paused = true)]
    async fn an_absurd_pause_is_capped_instead_of_overflowing_the_clock() {
        let t = Throttle::new(1, RetryPolicy::default());
        let start = Instant::now();
        t.pause_for(Duration::MAX);
        t.ready().await;
        assert_eq!(Instant::now() - start, MAX_RETRY_AFTER);
    }

    #[tokio::test(start_paused = true)]
    async fn bandwidth_spreads_bytes_over_time() {
        let b = Bandwidth::new(1000);
        let start = Instant::now();
        b.consume(1000).await; // the first reservation starts now
        b.consume(1000).await;
        b.consume(1000).await;
        let elapsed = Instant::now() - start;
        assert!(elapsed >= Duration::from_secs(2), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_drive_stays_stopped_for_the_hold_then_is_tried_again() {
        let t = Throttle::new(2, RetryPolicy::default());
        assert!(!t.drive_full("d1"));
        assert!(t.stop_drive("d1"));
        assert!(!t.stop_drive("d1"), "reported once");
        assert!(t.drive_full("d1"));
        assert!(!t.drive_full("d2"), "other drives go on");
        tokio::time::advance(QUOTA_HOLD + Duration::from_secs(1)).await;
        assert!(!t.drive_full("d1"));
        assert!(t.stop_drive("d1"));
    }

    #[tokio::test(start_paused = true)]
    async fn upload_slots_are_limited() {
        let t = Throttle::new(2, RetryPolicy::default());
        let a = t.upload_slot().await;
        let _b = t.upload_slot().await;
        assert!(t.uploads.try_acquire().is_err());
        drop(a);
        assert!(t.uploads.try_acquire().is_ok());
    }

    #[tokio::test]
    async fn the_upload_limit_can_be_raised_while_slots_are_in_use() {
        let t = Throttle::new(1, RetryPolicy::default());
        let _held = t.upload_slot().await;
        assert!(t.uploads.try_acquire().is_err());
        assert_eq!(t.raise_upload_limit(3), 3);
        let _b = t.uploads.try_acquire().unwrap();
        let _c = t.uploads.try_acquire().unwrap();
        assert!(t.uploads.try_acquire().is_err(), "three in all");
        // Lower is kept for a restart.
        assert_eq!(t.raise_upload_limit(2), 3);
        assert!(t.uploads.try_acquire().is_err());
    }
}
