//! The `daemon`, `watches` and `auth_state` tables: facts `sharepush status`
//! reports that are not about one file or one run.
//!
//! - The daemon records itself when it starts ([`Store::record_daemon_started`],
//!   which also forgets the previous daemon's watch states) and when it stops
//!   cleanly ([`Store::record_daemon_stopped`]). A row with no stop time whose
//!   pid is gone is a daemon that died; `status` says so.
//! - Each job task records whether its watcher is armed or why it fell back
//!   to full scans ([`Store::set_watch_state`]).
//! - A run refused for a sign-in reason records it
//!   ([`Store::record_login_needed`]); a login, or a later run whose requests
//!   were accepted, clears it ([`Store::record_signed_in`]); the refusal's
//!   text stays, marked cleared. A new login made while the daemon holds the
//!   lock cannot write here; `status` then compares the refresh token file's
//!   time with the refusal's.
//!
//! Only lock holders write (the daemon, `sync`); `status` only reads.

use rusqlite::{OptionalExtension, params};

use super::StateError;
use super::store::Store;

/// The daemon process recorded in the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonRow {
    pub pid: u32,
    /// Unix seconds.
    pub started_at: i64,
    /// Unix seconds; `None` while running, or when the process died.
    pub stopped_at: Option<i64>,
}

/// Whether a job's filesystem watcher is working.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchState {
    /// Events arrive; changes are picked up within debounce + settle.
    Watching,
    /// The watcher failed (out of inotify watches, queue overflow, notify
    /// error): the job relies on scheduled full scans. `reason` says why and
    /// what to raise.
    Fallback { reason: String },
    /// The job does not watch (`watch = false`).
    Off,
}

impl WatchState {
    /// The word stored in the `state` column and shown by `status --json`.
    pub fn as_str(&self) -> &'static str {
        match self {
            WatchState::Watching => "watching",
            WatchState::Fallback { .. } => "fallback",
            WatchState::Off => "off",
        }
    }
}

/// A job's recorded watch state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchRow {
    pub job: String,
    pub state: WatchState,
    /// Unix seconds.
    pub updated_at: i64,
}

/// The last time a run was refused for a reason only a person can fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Unix seconds.
    pub at: i64,
    /// The refusal as shown to the user (never a secret).
    pub error: String,
    /// When a login or an accepted run ended it; `None`: a person must
    /// still sign in.
    pub cleared_at: Option<i64>,
}

/// Recorded sign-in facts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthStateRow {
    /// The last refusal, kept after it was cleared (so `status` can tell a
    /// run that failed for it from one that failed for another reason).
    pub refusal: Option<Refusal>,
    /// The last login or run whose requests were accepted (Unix seconds).
    pub signed_in_at: Option<i64>,
}

impl AuthStateRow {
    /// The refusal, while no login or accepted run has ended it.
    pub fn login_needed(&self) -> Option<&Refusal> {
        self.refusal.as_ref().filter(|r| r.cleared_at.is_none())
    }
}

impl Store {
    /// The daemon records itself at start; the previous daemon's watch
    /// states are forgotten (the new one records its own).
    pub fn record_daemon_started(&mut self, pid: u32, started_at: i64) -> Result<(), StateError> {
        let tx = self
            .conn
            .transaction()
            .map_err(super::store::sql_err(&self.db_path, "recording the daemon"))?;
        tx.execute(
            "INSERT OR REPLACE INTO daemon (id, pid, started_at, stopped_at) VALUES (1, ?1, ?2, NULL)",
            params![pid, started_at],
        )
        .and_then(|_| tx.execute("DELETE FROM watches", []))
        .and_then(|_| tx.commit())
        .map_err(super::store::sql_err(&self.db_path, "recording the daemon"))?;
        Ok(())
    }

    /// The daemon records a clean stop.
    pub fn record_daemon_stopped(&mut self, stopped_at: i64) -> Result<(), StateError> {
        self.conn
            .execute(
                "UPDATE daemon SET stopped_at = ?1 WHERE id = 1",
                [stopped_at],
            )
            .map_err(self.sql("recording the daemon's stop"))?;
        Ok(())
    }

    /// The daemon recorded in the state, if one ever ran.
    pub fn daemon(&self) -> Result<Option<DaemonRow>, StateError> {
        self.conn
            .prepare_cached("SELECT pid, started_at, stopped_at FROM daemon WHERE id = 1")
            .and_then(|mut stmt| {
                stmt.query_row([], |row| {
                    Ok(DaemonRow {
                        pid: row.get(0)?,
                        started_at: row.get(1)?,
                        stopped_at: row.get(2)?,
                    })
                })
                .optional()
            })
            .map_err(self.sql("reading the daemon"))
    }

    /// Records a job's watch state (replacing the previous one).
    pub fn set_watch_state(
        &mut self,
        job: &str,
        state: &WatchState,
        at: i64,
    ) -> Result<(), StateError> {
        let reason = match state {
            WatchState::Fallback { reason } => Some(reason.as_str()),
            WatchState::Watching | WatchState::Off => None,
        };
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO watches (job, state, reason, updated_at) VALUES (?1, ?2, ?3, ?4)",
            )
            .and_then(|mut stmt| stmt.execute(params![job, state.as_str(), reason, at]))
            .map_err(self.sql("recording a watch state"))?;
        Ok(())
    }

    /// Every recorded watch state, sorted by job.
    pub fn watch_states(&self) -> Result<Vec<WatchRow>, StateError> {
        let context = "reading watch states";
        let mut stmt = self
            .conn
            .prepare_cached("SELECT job, state, reason, updated_at FROM watches ORDER BY job")
            .map_err(self.sql(context))?;
        let rows = stmt
            .query_map([], |row| {
                let state: String = row.get(1)?;
                let reason: Option<String> = row.get(2)?;
                Ok((row.get::<_, String>(0)?, state, reason, row.get(3)?))
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(self.sql(context))?;
        rows.into_iter()
            .map(|(job, state, reason, updated_at)| {
                let state = match state.as_str() {
                    "watching" => WatchState::Watching,
                    "off" => WatchState::Off,
                    "fallback" => WatchState::Fallback {
                        reason: reason.unwrap_or_default(),
                    },
                    other => {
                        return Err(StateError::Corrupt {
                            path: self.db_path.clone(),
                            detail: format!("unknown watch state {other:?} of job {job:?}"),
                        });
                    }
                };
                Ok(WatchRow {
                    job,
                    state,
                    updated_at,
                })
            })
            .collect()
    }

    /// A run was refused for a reason only a person can fix (`why` is the
    /// error as shown to the user; it never holds a secret).
    pub fn record_login_needed(&mut self, why: &str, at: i64) -> Result<(), StateError> {
        self.conn
            .prepare_cached(
                "INSERT INTO auth_state (id, login_needed_at, login_needed) VALUES (1, ?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET login_needed_at = ?1, login_needed = ?2,
                     login_cleared_at = NULL",
            )
            .and_then(|mut stmt| stmt.execute(params![at, why]))
            .map_err(self.sql("recording that a login is needed"))?;
        Ok(())
    }

    /// A login succeeded or a run's requests were accepted: a recorded
    /// refusal is over (it stays recorded as cleared).
    pub fn record_signed_in(&mut self, at: i64) -> Result<(), StateError> {
        self.conn
            .prepare_cached(
                "INSERT INTO auth_state (id, signed_in_at) VALUES (1, ?1)
                 ON CONFLICT (id) DO UPDATE SET signed_in_at = ?1,
                     login_cleared_at = CASE
                         WHEN login_needed_at IS NOT NULL AND login_cleared_at IS NULL THEN ?1
                         ELSE login_cleared_at END",
            )
            .and_then(|mut stmt| stmt.execute([at]))
            .map_err(self.sql("recording a successful sign-in"))?;
        Ok(())
    }

    /// The recorded sign-in facts (empty when nothing was recorded).
    pub fn auth_state(&self) -> Result<AuthStateRow, StateError> {
        let row = self
            .conn
            .prepare_cached(
                "SELECT login_needed_at, login_needed, login_cleared_at, signed_in_at
                 FROM auth_state WHERE id = 1",
            )
            .and_then(|mut stmt| {
                stmt.query_row([], |row| {
                    let at: Option<i64> = row.get(0)?;
                    let error: Option<String> = row.get(1)?;
                    let cleared_at: Option<i64> = row.get(2)?;
                    Ok(AuthStateRow {
                        refusal: at.map(|at| Refusal {
                            at,
                            error: error.unwrap_or_default(),
                            cleared_at,
                        }),
                        signed_in_at: row.get(3)?,
                    })
                })
                .optional()
            })
            .map_err(self.sql("reading the sign-in state"))?;
        Ok(row.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_lasts_until_a_sign_in_and_stays_on_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        assert_eq!(store.auth_state().unwrap(), AuthStateRow::default());
        store.record_signed_in(10).unwrap();
        assert_eq!(store.auth_state().unwrap().refusal, None);

        store
            .record_login_needed("login needed: refused", 20)
            .unwrap();
        let state = store.auth_state().unwrap();
        assert_eq!(state.login_needed().map(|r| r.at), Some(20));
        assert_eq!(state.signed_in_at, Some(10));

        store.record_signed_in(30).unwrap();
        let state = store.auth_state().unwrap();
        assert_eq!(state.login_needed(), None);
        let refusal = state.refusal.unwrap();
        assert_eq!((refusal.at, refusal.cleared_at), (20, Some(30)));
        assert_eq!(refusal.error, "login needed: refused");

        // Later accepted runs do not move the clearing time; a new refusal
        // is current again.
        store.record_signed_in(40).unwrap();
        assert_eq!(
            store.auth_state().unwrap().refusal.unwrap().cleared_at,
            Some(30)
        );
        store.record_login_needed("again", 50).unwrap();
        assert_eq!(
            store
                .auth_state()
                .unwrap()
                .login_needed()
                .map(|r| r.error.clone()),
            Some("again".into())
        );
    }

    #[test]
    fn a_new_daemon_forgets_the_old_ones_watch_states() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        assert_eq!(store.daemon().unwrap(), None);
        store.record_daemon_started(100, 1).unwrap();
        let fallback = WatchState::Fallback {
            reason: "raise fs.inotify.max_user_watches".into(),
        };
        store.set_watch_state("b", &fallback, 2).unwrap();
        store
            .set_watch_state("a", &WatchState::Watching, 2)
            .unwrap();
        let states = store.watch_states().unwrap();
        assert_eq!(
            states
                .iter()
                .map(|w| (w.job.as_str(), &w.state))
                .collect::<Vec<_>>(),
            [("a", &WatchState::Watching), ("b", &fallback)]
        );
        store.record_daemon_stopped(5).unwrap();
        assert_eq!(
            store.daemon().unwrap(),
            Some(DaemonRow {
                pid: 100,
                started_at: 1,
                stopped_at: Some(5)
            })
        );
        store.record_daemon_started(200, 6).unwrap();
        assert_eq!(store.daemon().unwrap().unwrap().stopped_at, None);
        assert!(store.watch_states().unwrap().is_empty());
    }
}
