//! State store: everything sharepush remembers between runs, in one SQLite
//! database (`<state_dir>/state.db`) owned by one [`Store`].
//!
//! What it keeps (schema in `schema.rs`, migrated by `PRAGMA user_version`):
//! - `files`: per job and relative path, the local fingerprint (size, mtime in
//!   ns, inode), the content hashes, the remote item it maps to (item id, eTag,
//!   and the quickXorHash and size SharePoint reported, which differ from ours
//!   when SharePoint rewrites Office/PDF files), and the [`FileState`] with its
//!   attempts, next attempt time and last error;
//! - `folders`: remote folders we created or found, so a run does not ask again;
//! - `sessions`: open upload sessions, saved before the first fragment so a
//!   restarted process resumes instead of re-sending;
//! - `drives`: site URL + library name -> drive id and the drive's delta link;
//!   `job_libraries`: which library and folder each job uses, so a library
//!   recreated under a new drive id requeues every job on it
//!   ([`Store::replace_drive`]) and a job pointed elsewhere sends every file
//!   to the new place ([`Store::note_job_target`]);
//! - `runs`: one row per job run (trigger, times, counts, bytes, outcome);
//! - `remote_walks`, `remote_changes`, `conflict_copies`: remote reconcile
//!   (issue 6, `remote.rs`): which job folders were enumerated, remote deletes
//!   and edits of our files with what the job's policy did about them, and
//!   the copies uploaded beside someone else's edit (`keep-both`).
//! - `daemon`, `watches`, `auth_state`: the running daemon, each job's watch
//!   state and whether a person must sign in again, for `status` (`health.rs`).
//!
//! What it does not do: it never touches the network or the job's files, and it
//! makes no decisions about *what* to upload (that is `plan`). It only records
//! facts and the file state transitions other stages report, each write in one
//! transaction, and it is the only module with SQL in it. Tokens are not stored
//! here: the auth layer keeps the refresh token in its own 0600 file in the
//! state directory (written atomically), so there is no `tokens` table.
//!
//! Reads for the pipeline: a scan takes [`Store::known_files`] (fingerprints
//! and hashes only, one query) and hands back `LocalEntry`s to
//! [`Store::record_scanned`]; the planner reads [`FileRecord`]s (state, item
//! id, eTag) with [`Store::all_records`] after a full scan (one sequential
//! query) or [`Store::records_for`] for a watch batch (one lookup per path,
//! in one read transaction). Both return maps keyed by path.
//!
//! Safety around the database: [`Store::open`] takes an exclusive lock on
//! `<state_dir>/sharepush.lock` (a second process fails fast with
//! [`StateError::Locked`], naming the holder's pid), creates the directory 0700
//! and the database 0600 (SQLite gives its `-wal`/`-shm` files the database's
//! mode), and refuses a database written by a newer sharepush
//! ([`StateError::TooNew`]) without changing it. [`Store::open_read_only`] is for
//! `sharepush status` while the daemon runs: no lock, no writes.
//!
//! Durability: WAL with `synchronous=NORMAL`. A committed write survives the
//! process being killed (SIGKILL, OOM, panic): that is what resuming an
//! upload session after a crash needs. A power loss may roll back the last
//! few commits, and each of them is safe to lose: a lost `Synced` re-uploads
//! bytes SharePoint already has, a lost session restarts that upload, a lost
//! scan is redone by the next scan. `FULL` would instead fsync on every
//! commit, once per file uploaded.
//!
//! Threading: `Store` is `Send` but not `Sync`; the daemon owns it on one
//! thread (or behind `spawn_blocking`), never on the async workers.

mod drives;
mod files;
mod health;
mod lock;
pub use lock::last_holder;
mod remote;
mod runs;
mod schema;
mod sessions;
mod store;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use drives::{DriveReplaced, DriveRow, JobTarget};
pub use files::{FileRecord, FileState, FileStateKind, StateCounts, SyncedInfo};
pub use health::{AuthStateRow, DaemonRow, Refusal, WatchRow, WatchState};
pub use remote::{
    ConflictCopy, DeltaPageStats, DriveStatus, RemoteChange, RemoteChangeKind, RemoteChangeOutcome,
    WalkAction, holds_our_content,
};
pub use runs::{RunCounts, RunId, RunOutcome, RunRow, RunSummary, RunTrigger};
pub use schema::{SCHEMA_VERSION, fold_case};
pub use sessions::{SourceFingerprint, UploadSessionRow};
pub use store::{DB_FILE, LOCK_FILE, Store};

/// Why the state store could not do what was asked. Every message names the
/// state directory or database, so an administrator knows which file to look
/// at; causes are kept as `#[source]`.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A filesystem operation on the state directory failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What we tried, as a verb phrase ("create state directory").
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// SQLite reported an error.
    #[error("state database {}: {context}: {source}", path.display())]
    Sqlite {
        path: PathBuf,
        /// What the store was doing ("recording scanned files").
        context: &'static str,
        #[source]
        source: rusqlite::Error,
    },

    /// Another process holds the state directory's lock. Fatal for this
    /// process but temporary in general (exit code 75).
    #[error(
        "state directory {} is in use by another sharepush process{}; stop it first or use --state-dir (a running daemon runs every job now on SIGUSR1: `systemctl kill -s USR1 sharepush`)",
        dir.display(),
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Locked {
        dir: PathBuf,
        /// The holder's pid as it wrote it into the lock file; `None` when the
        /// file was empty (the holder was just starting) or unreadable.
        pid: Option<u32>,
    },

    /// The database schema is newer than this binary understands. Nothing was
    /// changed: dropping or "repairing" tables would lose upload state.
    #[error(
        "state database {} has schema version {found}, written by a newer sharepush (this one supports up to {supported}); upgrade sharepush or use another --state-dir",
        path.display()
    )]
    TooNew {
        found: i64,
        supported: i64,
        path: PathBuf,
    },

    /// A read-only open found a database older than this binary; only a
    /// writable open may migrate it.
    #[error(
        "state database {} has schema version {found}, older than this sharepush's {supported}; run sharepush (scan, sync or the daemon) once to upgrade it",
        path.display()
    )]
    TooOld {
        found: i64,
        supported: i64,
        path: PathBuf,
    },

    /// A read-only open found no database.
    #[error(
        "no state database at {}: sharepush has not run with this --state-dir yet",
        path.display()
    )]
    Missing { path: PathBuf },

    /// A transition or lookup named a file the store has no row for. Usually a
    /// bug in the caller (files enter the store through a scan).
    #[error("job {job:?}: no state recorded for {path:?}")]
    NotFound { job: String, path: String },

    /// A drive operation named a site/library whose drive id was never saved.
    #[error("no drive recorded for library {library:?} of site {site}")]
    DriveNotFound { site: String, library: String },

    /// `finish_run` named a run that does not exist.
    #[error("no run with id {id}")]
    RunNotFound { id: i64 },

    /// A transition that would contradict a recorded decision, such as
    /// uploading a file that was skipped.
    #[error("job {job:?}: {path:?} is {from}; cannot mark it {to}")]
    InvalidTransition {
        job: String,
        path: String,
        from: &'static str,
        to: &'static str,
    },

    /// A stored value this binary cannot read back (hand-edited or damaged
    /// database).
    #[error("state database {}: unreadable value: {detail}", path.display())]
    Corrupt { path: PathBuf, detail: String },
}

impl StateError {
    /// True when another process holds the state directory; callers map it to
    /// the "temporary failure" exit code rather than a crash.
    pub fn is_locked(&self) -> bool {
        matches!(self, StateError::Locked { .. })
    }
}
