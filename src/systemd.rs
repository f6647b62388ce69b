//! systemd's notify protocol for `Type=notify` units: `READY=1` once the
//! daemon is really up, `STATUS=` with a one-line summary, `WATCHDOG=1`
//! while the supervisor loop is healthy, and `STOPPING=1` on shutdown.
//!
//! Input: the `NOTIFY_SOCKET` and `WATCHDOG_USEC` environment variables
//! systemd sets. Without `NOTIFY_SOCKET` (a terminal, a test, another
//! supervisor) every call is a no-op, so the daemon never has to ask
//! whether it runs under systemd. Send errors are logged at debug level and
//! otherwise ignored: a missing notification must not stop the backups.
//!
//! What it does not do: decide when the daemon is ready or healthy (the
//! supervisor in `daemon.rs` does), or log to journald.

use std::time::Duration;

use sd_notify::NotifyState;

/// A handle on the notify socket (or on nothing, outside systemd).
#[derive(Debug, Clone, Copy)]
pub struct Notifier {
    /// False when `NOTIFY_SOCKET` was not set at start: every call returns at once.
    enabled: bool,
}

impl Notifier {
    /// Reads the environment once at start.
    pub fn from_env() -> Notifier {
        Notifier {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty()),
        }
    }

    /// How often the supervisor must send `WATCHDOG=1`: half of
    /// `WatchdogSec=` (systemd's advice), or `None` when no watchdog is set.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        if !self.enabled {
            return None;
        }
        sd_notify::watchdog_enabled().map(|d| d / 2)
    }

    /// `READY=1` with a first status line.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// `STATUS=...`: one line, shown by `systemctl status`.
    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// `WATCHDOG=1`: the supervisor loop is alive and healthy.
    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    /// `STOPPING=1`: shutdown has begun.
    pub fn stopping(&self, status: &str) {
        self.send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }

    /// `RELOADING=1` is not used: a reload is applied while jobs keep
    /// running, and the unit has no `ExecReload=` that waits for it.
    fn send(&self, state: &[NotifyState]) {
        if !self.enabled {
            return;
        }
        if let Err(e) = sd_notify::notify(state) {
            tracing::debug!(error = %e, "systemd notification not sent");
        }
    }
}
