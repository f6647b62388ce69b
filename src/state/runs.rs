//! The `runs` table: one row per job run, for `status`, monitoring and the
//! journal of what happened when.
//!
//! A run is started before its scan and finished with a summary; a run the
//! process died in is closed as [`RunOutcome::Interrupted`] by the next
//! writable [`Store::open`] (which holds the lock, so nothing else can be
//! running it).

use rusqlite::types::Type;
use rusqlite::{OptionalExtension, Row, params};

use super::StateError;
use super::store::{Store, u64_from_sql, u64_to_sql};

/// Identifies a started run, to finish it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunId(pub i64);

/// What started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunTrigger {
    /// The daemon started (catch up on what changed while it was down).
    Startup,
    /// The job's cron schedule.
    Schedule,
    /// Filesystem events.
    Watch,
    /// A command (`sharepush sync`, `scan`) or an explicit request.
    Manual,
    /// Periodic remote reconcile.
    Reconcile,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// Everything done.
    Ok,
    /// Finished, but some files failed (they are retried).
    SomeFilesFailed,
    /// The run stopped on an error (see `error`).
    Failed,
    /// Stopped by shutdown or reload before finishing.
    Cancelled,
    /// The process died during the run (set at the next start).
    Interrupted,
}

macro_rules! text_enum {
    ($ty:ident { $($variant:ident => $text:literal),* $(,)? }) => {
        impl $ty {
            /// The word stored in the database and shown by `status`.
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $text),* }
            }

            fn parse(text: &str) -> Option<$ty> {
                match text { $($text => Some($ty::$variant),)* _ => None }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_enum!(RunTrigger {
    Startup => "startup",
    Schedule => "schedule",
    Watch => "watch",
    Manual => "manual",
    Reconcile => "reconcile",
});

text_enum!(RunOutcome {
    Ok => "ok",
    SomeFilesFailed => "some-files-failed",
    Failed => "failed",
    Cancelled => "cancelled",
    Interrupted => "interrupted",
});

/// File counts of one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunCounts {
    pub new: u64,
    pub changed: u64,
    pub unchanged: u64,
    pub uploaded: u64,
    pub failed: u64,
    pub skipped: u64,
}

/// How a run ended, as `finish_run` records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSummary {
    /// Unix seconds.
    pub ended_at: i64,
    pub counts: RunCounts,
    /// Bytes uploaded.
    pub bytes: u64,
    pub outcome: RunOutcome,
    /// The error that stopped the run, if one did (never a secret).
    pub error: Option<String>,
}

/// A recorded run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRow {
    pub id: RunId,
    pub job: String,
    pub trigger: RunTrigger,
    pub started_at: i64,
    /// `None` while running, or when the process died during it.
    pub ended_at: Option<i64>,
    pub counts: RunCounts,
    pub bytes: u64,
    /// `None` while running.
    pub outcome: Option<RunOutcome>,
    pub error: Option<String>,
}

fn conversion_error(column: usize, what: &str, text: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        column,
        Type::Text,
        format!("unknown {what} {text:?}").into(),
    )
}

fn run_from_row(row: &Row<'_>) -> rusqlite::Result<RunRow> {
    let trigger: String = row.get(2)?;
    let outcome: Option<String> = row.get(12)?;
    let count = |i| row.get::<_, i64>(i).map(u64_from_sql);
    Ok(RunRow {
        id: RunId(row.get(0)?),
        job: row.get(1)?,
        trigger: RunTrigger::parse(&trigger)
            .ok_or_else(|| conversion_error(2, "run trigger", &trigger))?,
        started_at: row.get(3)?,
        ended_at: row.get(4)?,
        counts: RunCounts {
            new: count(5)?,
            changed: count(6)?,
            unchanged: count(7)?,
            uploaded: count(8)?,
            failed: count(9)?,
            skipped: count(10)?,
        },
        bytes: count(11)?,
        outcome: match outcome {
            None => None,
            Some(text) => Some(
                RunOutcome::parse(&text)
                    .ok_or_else(|| conversion_error(12, "run outcome", &text))?,
            ),
        },
        error: row.get(13)?,
    })
}

impl Store {
    /// Records that a run of `job` began at `started_at` (Unix seconds).
    pub fn start_run(
        &mut self,
        job: &str,
        trigger: RunTrigger,
        started_at: i64,
    ) -> Result<RunId, StateError> {
        self.conn
            .prepare_cached(
                "INSERT INTO runs (job, trigger_kind, started_at) VALUES (?1, ?2, ?3) RETURNING id",
            )
            .and_then(|mut stmt| {
                stmt.query_row(params![job, trigger.as_str(), started_at], |row| row.get(0))
            })
            .map(RunId)
            .map_err(self.sql("starting a run"))
    }

    /// Records how a run ended. Fails with `RunNotFound` for an unknown id.
    pub fn finish_run(&mut self, id: RunId, summary: &RunSummary) -> Result<(), StateError> {
        let c = &summary.counts;
        let changed = self
            .conn
            .prepare_cached(
                "UPDATE runs SET ended_at = ?2, new_files = ?3, changed_files = ?4,
                     unchanged_files = ?5, uploaded_files = ?6, failed_files = ?7,
                     skipped_files = ?8, bytes = ?9, outcome = ?10, error = ?11
                 WHERE id = ?1",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    id.0,
                    summary.ended_at,
                    u64_to_sql(c.new),
                    u64_to_sql(c.changed),
                    u64_to_sql(c.unchanged),
                    u64_to_sql(c.uploaded),
                    u64_to_sql(c.failed),
                    u64_to_sql(c.skipped),
                    u64_to_sql(summary.bytes),
                    summary.outcome.as_str(),
                    summary.error,
                ])
            })
            .map_err(self.sql("finishing a run"))?;
        if changed == 0 {
            return Err(StateError::RunNotFound { id: id.0 });
        }
        Ok(())
    }

    /// The most recent run of `job` (finished or not), for `status`.
    pub fn last_run(&self, job: &str) -> Result<Option<RunRow>, StateError> {
        self.conn
            .prepare_cached(
                "SELECT id, job, trigger_kind, started_at, ended_at, new_files, changed_files,
                     unchanged_files, uploaded_files, failed_files, skipped_files, bytes,
                     outcome, error
                 FROM runs WHERE job = ?1 ORDER BY id DESC LIMIT 1",
            )
            .and_then(|mut stmt| stmt.query_row([job], run_from_row).optional())
            .map_err(self.sql("reading the last run"))
    }

    /// Bytes uploaded by every recorded run of `job`, for `status`.
    pub fn bytes_uploaded_total(&self, job: &str) -> Result<u64, StateError> {
        self.conn
            .prepare_cached("SELECT coalesce(sum(bytes), 0) FROM runs WHERE job = ?1")
            .and_then(|mut stmt| stmt.query_row([job], |row| row.get::<_, i64>(0)))
            .map(u64_from_sql)
            .map_err(self.sql("summing uploaded bytes"))
    }

    /// Closes runs left open by a process that died, so `status` does not
    /// show them as running forever. Only a lock holder may call this.
    pub(super) fn close_interrupted_runs(&mut self) -> Result<(), StateError> {
        let closed = self
            .conn
            .execute(
                "UPDATE runs SET outcome = 'interrupted' WHERE outcome IS NULL",
                [],
            )
            .map_err(self.sql("closing interrupted runs"))?;
        if closed > 0 {
            tracing::warn!(runs = closed, "previous process stopped during a run");
        }
        Ok(())
    }
}
