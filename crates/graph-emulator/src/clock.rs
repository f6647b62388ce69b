//! The emulator's notion of "now": wall-clock time plus an offset that tests
//! advance through the handle or admin API, so expiry (tokens, device codes,
//! upload sessions) is tested without sleeping.
//!
//! It only ever moves forward; it does not drive timers.

use chrono::{DateTime, TimeZone, Utc};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// Virtual wall clock in Unix milliseconds.
#[derive(Debug, Default)]
pub struct Clock {
    /// Milliseconds added to the system clock by `advance`.
    offset_ms: AtomicI64,
}

impl Clock {
    /// Now, in Unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        Utc::now().timestamp_millis() + self.offset_ms.load(Ordering::Relaxed)
    }

    /// Move time forward.
    pub fn advance(&self, by: Duration) {
        self.offset_ms
            .fetch_add(by.as_millis() as i64, Ordering::Relaxed);
    }
}

/// Unix milliseconds to a UTC date.
pub fn to_utc(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// RFC 3339 with whole seconds and `Z`, as Graph prints dates.
pub fn fmt_ms(ms: i64) -> String {
    to_utc(ms).format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Parse a client-supplied RFC 3339 date to Unix ms, truncated to seconds
/// (graph-api.md §5: precision is 1 s).
pub fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    let t = DateTime::parse_from_rfc3339(text).ok()?;
    Some(t.timestamp() * 1000)
}
