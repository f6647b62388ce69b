//! Schedules: the crontab syntax administrators write, compiled once.
//!
//! Accepts 5-field crontab lines (`*/15 * * * *`) and `@hourly`, `@daily`,
//! `@weekly`, `@monthly` (also `@midnight`, `@yearly`, `@annually`), converts
//! them to the 6-field form tokio-cron-scheduler expects, and answers "when is
//! the next run after t" for `check`, `status` and the daemon. Time is always
//! passed in, never read here, so tests need no clock.
//!
//! SKELETON.

/// A validated schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// What the user wrote, for display.
    pub expr: String,
    /// Six-field form (seconds first) for tokio-cron-scheduler.
    pub six_field: String,
}
