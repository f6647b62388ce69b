//! Schema and migrations, versioned by `PRAGMA user_version`.
//!
//! `MIGRATIONS[i]` takes a database from version `i` to `i + 1`; each runs in
//! its own transaction together with the `user_version` bump, so a crash leaves
//! the database at a whole version. Migrations are only ever appended: a
//! released one is never edited, because databases in the field already ran it.
//! A database whose version is above [`SCHEMA_VERSION`] was written by a newer
//! sharepush and is refused untouched.
//!
//! Conventions: times are Unix seconds (`*_at`, `next_attempt`) except file
//! modification times (`mtime_ns`, nanoseconds, as `stat` gives them); sizes
//! and inodes are `u64` stored bit-for-bit in SQLite's signed 64-bit integer;
//! hashes are text in the forms Graph uses (SHA-1 lowercase hex, quickXorHash
//! base64).

use std::path::Path;

use rusqlite::{Connection, OptionalExtension};

use super::StateError;

/// Version 1: the foundation schema.
const V1: &str = r#"
-- One row per file a job has seen (or was told to skip).
CREATE TABLE files (
    job              TEXT NOT NULL,
    path             TEXT NOT NULL,      -- relative to the job source, '/'-separated
    size             INTEGER NOT NULL,   -- fingerprint: 0/0/0 for a row first seen as skipped
    mtime_ns         INTEGER NOT NULL,
    inode            INTEGER NOT NULL,
    sha1             TEXT,               -- NULL until hashed
    quick_xor        TEXT,
    item_id          TEXT,               -- remote item this path maps to, kept across states
    etag             TEXT,               -- eTag when we last uploaded or saw it
    remote_quick_xor TEXT,               -- what SharePoint reported (differs after a rewrite)
    remote_size      INTEGER,
    state            TEXT NOT NULL
        CHECK (state IN ('pending', 'uploading', 'synced', 'failed', 'skipped')),
    attempts         INTEGER NOT NULL DEFAULT 0,  -- consecutive failures
    next_attempt     INTEGER,            -- failed: retry not before this
    last_error       TEXT,               -- failed: why
    skip_reason      TEXT,               -- skipped: why
    updated_at       INTEGER NOT NULL,
    PRIMARY KEY (job, path),
    CHECK ((sha1 IS NULL) = (quick_xor IS NULL))
) WITHOUT ROWID;
-- No index on state: it cost every write, and counting 100,000 rows of a
-- job for `status` takes milliseconds without one.
-- Delta pages name items by id only.
CREATE INDEX files_by_item ON files (item_id) WHERE item_id IS NOT NULL;

-- Remote folders we created or found.
CREATE TABLE folders (
    job        TEXT NOT NULL,
    path       TEXT NOT NULL,            -- relative to the job's remote folder; '' is the root
    item_id    TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (job, path)
) WITHOUT ROWID;
CREATE INDEX folders_by_item ON folders (item_id);

-- Open upload sessions, one per file at most; gone with the file's row.
CREATE TABLE sessions (
    job          TEXT NOT NULL,
    path         TEXT NOT NULL,
    upload_url   TEXT NOT NULL,          -- carries its own credential: never log it
    total_size   INTEGER NOT NULL,
    fp_size      INTEGER NOT NULL,       -- the source as it was when the session started
    fp_mtime_ns  INTEGER NOT NULL,
    fp_inode     INTEGER NOT NULL,
    fp_quick_xor TEXT NOT NULL,
    expires_at   INTEGER,
    next_offset  INTEGER NOT NULL DEFAULT 0,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (job, path),
    FOREIGN KEY (job, path) REFERENCES files (job, path) ON DELETE CASCADE
) WITHOUT ROWID;

-- Site URL + library name -> drive id, and where delta left off.
CREATE TABLE drives (
    site             TEXT NOT NULL,
    library          TEXT NOT NULL,
    drive_id         TEXT NOT NULL,
    delta_link       TEXT,
    delta_updated_at INTEGER,
    PRIMARY KEY (site, library)
) WITHOUT ROWID;

-- One row per job run.
CREATE TABLE runs (
    id              INTEGER PRIMARY KEY,
    job             TEXT NOT NULL,
    trigger_kind    TEXT NOT NULL,
    started_at      INTEGER NOT NULL,
    ended_at        INTEGER,             -- NULL while running (or if the process died)
    new_files       INTEGER NOT NULL DEFAULT 0,
    changed_files   INTEGER NOT NULL DEFAULT 0,
    unchanged_files INTEGER NOT NULL DEFAULT 0,
    uploaded_files  INTEGER NOT NULL DEFAULT 0,
    failed_files    INTEGER NOT NULL DEFAULT 0,
    skipped_files   INTEGER NOT NULL DEFAULT 0,
    bytes           INTEGER NOT NULL DEFAULT 0,
    outcome         TEXT,
    error           TEXT
);
CREATE INDEX runs_by_job ON runs (job, id);
"#;

/// Version 2 (remote reconcile, issue 6): where each job's remote folder
/// was last enumerated, remote deletes and edits noticed by delta or a walk,
/// and per-drive counters for `status`.
const V2_REMOTE: &str = r#"
-- Bumped when a delta link is lost (410 resyncRequired): every job on the
-- drive walks its remote folder again before trusting delta.
ALTER TABLE drives ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
-- Remote changes to our files that delta (or a walk) reported.
ALTER TABLE drives ADD COLUMN changes_seen INTEGER NOT NULL DEFAULT 0;
-- When the last delta query of this drive finished (Unix seconds).
ALTER TABLE drives ADD COLUMN delta_checked_at INTEGER;

-- A job's remote folder was enumerated (adopting what is there) for this
-- drive and epoch; no row = never (first run, or a lost state database).
CREATE TABLE remote_walks (
    job       TEXT PRIMARY KEY,
    drive_id  TEXT NOT NULL,
    epoch     INTEGER NOT NULL,
    walked_at INTEGER NOT NULL
) WITHOUT ROWID;

-- Remote deletes and edits of files we uploaded, one row per file: open
-- (outcome NULL) until the job's policy is applied; `skipped` edits stay
-- as conflicts `status` lists.
CREATE TABLE remote_changes (
    job              TEXT NOT NULL,
    path             TEXT NOT NULL,
    kind             TEXT NOT NULL CHECK (kind IN ('deleted', 'edited')),
    item_id          TEXT,
    etag             TEXT,               -- edited: the other edit's eTag
    remote_quick_xor TEXT,
    remote_size      INTEGER,
    seen_at          INTEGER NOT NULL,
    outcome          TEXT CHECK (outcome IN
        ('restored', 'forgotten', 'overwritten', 'skipped', 'kept-both')),
    applied_at       INTEGER,
    PRIMARY KEY (job, path)
) WITHOUT ROWID;
"#;

/// What `sharepush status` shows beyond files and runs: the daemon process,
/// each job's watch state, and whether a person must sign in again.
const STATUS_FACTS: &str = r#"
-- The daemon that holds (or last held) this state directory; one row at most.
CREATE TABLE daemon (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    pid        INTEGER NOT NULL,
    started_at INTEGER NOT NULL,
    stopped_at INTEGER                   -- NULL while running (or if it died)
);

-- Per job: is the watcher armed, or did it fall back to full scans (and why).
CREATE TABLE watches (
    job        TEXT PRIMARY KEY,
    state      TEXT NOT NULL CHECK (state IN ('watching', 'fallback', 'off')),
    reason     TEXT,                     -- fallback: why (names the sysctl to raise)
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;

-- Sign-in facts; one row at most.
CREATE TABLE auth_state (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    login_needed_at  INTEGER,            -- when a run was last refused; NULL: never
    login_needed     TEXT,               -- that refusal as the user saw it (never a secret)
    login_cleared_at INTEGER,            -- when a login or an accepted run ended it; NULL: not yet
    signed_in_at     INTEGER             -- last login or run whose requests were accepted
);
"#;

/// Racily-clean files: a file whose mtime was not safely older than the scan
/// that hashed it could be rewritten in the same timestamp tick with the same
/// size, leaving its fingerprint unchanged; the next scan hashes it again.
const RACY_FILES: &str = r#"
ALTER TABLE files ADD COLUMN racy INTEGER NOT NULL DEFAULT 0;  -- 1: re-hash on next scan
"#;

/// `on_remote_change = "keep-both"` (issue 6): their edit stays at the
/// file's path; our copy goes up once beside it under a conflict name.
const CONFLICT_COPIES: &str = r#"
-- Set while our copy of a file edited remotely waits to go up beside
-- theirs: the copy's path (relative to the job source, like `path`). The
-- row's item_id/etag/remote_* are then *their* item, the new baseline.
ALTER TABLE files ADD COLUMN copy_to TEXT;

-- Copies uploaded beside someone else's edit: one-off snapshots that are
-- neither local files nor mirrored (`delete = "mirror"` never deletes them).
CREATE TABLE conflict_copies (
    job         TEXT NOT NULL,
    path        TEXT NOT NULL,           -- the copy, relative to the job folder ('/'-separated, local names)
    source_path TEXT NOT NULL,           -- the file it is a copy of
    item_id     TEXT NOT NULL,
    etag        TEXT,
    size        INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (job, path)
) WITHOUT ROWID;
CREATE INDEX conflict_copies_by_item ON conflict_copies (item_id);
"#;

/// Which library each job uploads to, as configured when it last ran: when
/// a library is deleted and recreated under the same name (a new drive id),
/// every job on it is requeued in the same transaction that records the
/// new id (`Store::replace_drive`), including jobs that are not running.
const JOB_LIBRARIES: &str = r#"
CREATE TABLE job_libraries (
    job     TEXT PRIMARY KEY,
    site    TEXT NOT NULL,               -- as in `drives`
    library TEXT NOT NULL
) WITHOUT ROWID;
"#;

/// Where each item of ours sits remotely, as SharePoint last reported it
/// when we put it there or found it there: its name and its parent
/// folder's id. A delta entry that places the item elsewhere means someone
/// else renamed or moved it, so the path it backed up is empty now (handled
/// as a remote delete of that path). NULL: not known (rows written before
/// this migration), not judged.
const REMOTE_PLACES: &str = r#"
ALTER TABLE files ADD COLUMN remote_name TEXT;
ALTER TABLE files ADD COLUMN remote_parent TEXT;
ALTER TABLE folders ADD COLUMN name TEXT;
ALTER TABLE folders ADD COLUMN parent_id TEXT;
"#;

/// Case-insensitive lookups of a job's paths: SharePoint names are
/// case-insensitive, so two local files whose paths differ only in case
/// would be one remote item (`Store::case_twins`). SQLite's `lower()` folds
/// ASCII only.
const FOLDED_PATHS: &str = r#"
CREATE INDEX files_by_folded_path ON files (job, lower(path));
"#;

/// How many uploads of the file in a row found it changed while it was
/// read (reset when one goes through): a file written to all the time is
/// never sent, and after a few tries that is reported as a failure instead
/// of being requeued quietly forever. The scan's requeue of a changed file
/// does not reset it.
const UNSTABLE_FILES: &str = r#"
ALTER TABLE files ADD COLUMN changed_while_sending INTEGER NOT NULL DEFAULT 0;
"#;

/// `folders` holds the remote folders a job looks after: the ones it
/// created for a local folder, or found standing for one. A walk used to
/// record every folder it found in the job's folder, someone else's too,
/// and `mirror` deletes a recorded folder whose local folder is gone when
/// it is empty: an empty folder someone else made would have gone. The
/// rows no file of the job is recorded below cannot be told apart from
/// those, so they are dropped (a cache: a folder still needed is looked up
/// again when a run creates it); the job's own folder (`''`) stays.
const FOREIGN_FOLDERS: &str = r#"
DELETE FROM folders WHERE path <> '' AND NOT EXISTS (
    SELECT 1 FROM files f WHERE f.job = folders.job
        AND f.path >= folders.path || '/' AND f.path < folders.path || '0'
);
"#;

/// The job's folder joins its site and library in `job_libraries`: a job
/// pointed at another folder (or library, or site) has every file queued
/// for the new place (`Store::note_job_target`). `NULL` for rows written
/// before: not known, so not judged, until the next run records it.
const JOB_TARGET_FOLDER: &str = r#"
ALTER TABLE job_libraries ADD COLUMN folder TEXT;
"#;

/// Case twins beyond ASCII: SQLite's `lower()` left `Ärger.txt` and
/// `ärger.txt` apart, though SharePoint takes them for one name. The index
/// folds with [`FOLD_FUNCTION`] (Unicode lowercase), which every
/// connection registers ([`register_functions`]) before it reads or writes.
const FOLDED_PATHS_UNICODE: &str = r#"
DROP INDEX files_by_folded_path;
CREATE INDEX files_by_folded_path ON files (job, sharepush_fold(path));
"#;

/// The folded-path index is built by Rust's Unicode tables, which grow with
/// the toolchain sharepush is built with: a letter that gains a lowercase
/// mapping in a later Unicode version would leave its index entries stale
/// (case twins missed). The version the index was last built with is kept
/// here; [`reindex_if_unicode_changed`] rebuilds the index when it differs.
/// Empty at first: the index of migration 12 was built by a binary whose
/// version is not known, so the first open rebuilds it.
const FOLD_UNICODE_VERSION: &str = r#"
CREATE TABLE index_facts (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    fold_unicode TEXT NOT NULL   -- char::UNICODE_VERSION, e.g. '16.0.0'
);
"#;

/// The Unicode version this binary's [`fold_case`] follows.
pub(crate) fn unicode_version() -> String {
    let (major, minor, update) = char::UNICODE_VERSION;
    format!("{major}.{minor}.{update}")
}

/// Rebuilds the folded-path index if it was built with another Unicode
/// version than this binary's (see [`FOLD_UNICODE_VERSION`]). Cheap when
/// nothing changed: one row read.
pub(super) fn reindex_if_unicode_changed(
    conn: &mut Connection,
    db: &Path,
) -> Result<(), StateError> {
    let sql_err = |context| {
        move |source| StateError::Sqlite {
            path: db.to_path_buf(),
            context,
            source,
        }
    };
    let context = "rebuilding the case-insensitive path index";
    let now = unicode_version();
    let built: Option<String> = conn
        .query_row(
            "SELECT fold_unicode FROM index_facts WHERE id = 1",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(sql_err(context))?;
    if built.as_deref() == Some(now.as_str()) {
        return Ok(());
    }
    let tx = conn.transaction().map_err(sql_err(context))?;
    tx.execute_batch("REINDEX files_by_folded_path")
        .map_err(sql_err(context))?;
    tx.execute(
        "INSERT INTO index_facts (id, fold_unicode) VALUES (1, ?1)
         ON CONFLICT (id) DO UPDATE SET fold_unicode = excluded.fold_unicode",
        [&now],
    )
    .map_err(sql_err(context))?;
    tx.commit().map_err(sql_err(context))?;
    tracing::info!(db = %db.display(), from = built.as_deref().unwrap_or("unknown"), to = %now,
        "case-insensitive path index rebuilt for this build's Unicode version");
    Ok(())
}

/// Names that are not UTF-8 are no longer recorded
/// (`SkipReason::is_recorded`): they were, as skipped under their lossy
/// path (`bad\u{FFFD}.txt`), a row that a real file of that name shared
/// and that then stayed skipped for good. Those rows become pending, so the next
/// run sorts them out like any other: a real file behind one is uploaded
/// (its remote item, if it had one, kept), a row with no file behind it is
/// forgotten (or, with `mirror`, its remote item deleted, its file being
/// gone). The text is what `SkipReason::NonUtf8Name` displayed.
const NON_UTF8_ROWS: &str = r#"
UPDATE files SET state = 'pending', skip_reason = NULL
    WHERE state = 'skipped' AND skip_reason = 'name is not valid UTF-8';
"#;

/// The SQL function that folds a path's case as SharePoint compares names
/// (Unicode lowercase), for [`FOLDED_PATHS_UNICODE`]'s index.
pub(crate) const FOLD_FUNCTION: &str = "sharepush_fold";

/// How a path is folded to find its case twins: what
/// [`FOLD_FUNCTION`] returns, also used outside SQL. Letter by letter,
/// never by context: `str::to_lowercase` makes a word-final `Σ` a `ς`,
/// so `aΣ` and `aσ` (one name in SharePoint) folded apart. The final
/// sigma `ς` is folded as `σ` too: both are the lowercase of `Σ`.
pub fn fold_case(path: &str) -> String {
    path.chars()
        .flat_map(char::to_lowercase)
        .map(|c| if c == 'ς' { 'σ' } else { c })
        .collect()
}

/// Registers the functions the schema's indexes use. Every connection to
/// the state must call it before anything else: SQLite refuses to write a
/// row (or read through the index) whose index needs a function it does
/// not know.
pub(crate) fn register_functions(conn: &Connection) -> rusqlite::Result<()> {
    use rusqlite::functions::FunctionFlags;
    conn.create_scalar_function(
        FOLD_FUNCTION,
        1,
        FunctionFlags::SQLITE_UTF8
            | FunctionFlags::SQLITE_DETERMINISTIC
            | FunctionFlags::SQLITE_INNOCUOUS,
        |ctx| {
            Ok(match ctx.get_raw(0) {
                rusqlite::types::ValueRef::Text(t) => Some(fold_case(&String::from_utf8_lossy(t))),
                _ => None,
            })
        },
    )
}

/// Every migration, in order; see the module doc before changing anything.
const MIGRATIONS: &[&str] = &[
    V1,
    V2_REMOTE,
    STATUS_FACTS,
    RACY_FILES,
    CONFLICT_COPIES,
    JOB_LIBRARIES,
    REMOTE_PLACES,
    FOLDED_PATHS,
    UNSTABLE_FILES,
    FOREIGN_FOLDERS,
    JOB_TARGET_FOLDER,
    FOLDED_PATHS_UNICODE,
    FOLD_UNICODE_VERSION,
    NON_UTF8_ROWS,
];

/// The schema version this binary writes and fully understands.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Reads `PRAGMA user_version`.
pub(super) fn user_version(conn: &Connection, db: &Path) -> Result<i64, StateError> {
    conn.pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(|source| StateError::Sqlite {
            path: db.to_path_buf(),
            context: "reading the schema version",
            source,
        })
}

/// Fails with [`StateError::TooNew`] for a database from a newer sharepush.
/// Called before anything writes, so such a database is left exactly as found.
pub(super) fn check_not_too_new(found: i64, db: &Path) -> Result<(), StateError> {
    if found > SCHEMA_VERSION {
        return Err(StateError::TooNew {
            found,
            supported: SCHEMA_VERSION,
            path: db.to_path_buf(),
        });
    }
    Ok(())
}

/// Brings the database up to [`SCHEMA_VERSION`]; a no-op when it is there.
pub(super) fn migrate(conn: &mut Connection, db: &Path) -> Result<(), StateError> {
    let sql_err = |context| {
        move |source| StateError::Sqlite {
            path: db.to_path_buf(),
            context,
            source,
        }
    };
    let found = user_version(conn, db)?;
    check_not_too_new(found, db)?;
    if found < 0 {
        return Err(StateError::Corrupt {
            path: db.to_path_buf(),
            detail: format!("negative schema version {found}"),
        });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let to = index as i64 + 1;
        let tx = conn
            .transaction()
            .map_err(sql_err("starting a migration"))?;
        tx.execute_batch(sql)
            .map_err(sql_err("migrating the schema"))?;
        tx.pragma_update(None, "user_version", to)
            .map_err(sql_err("recording the schema version"))?;
        tx.commit().map_err(sql_err("committing a migration"))?;
        tracing::info!(db = %db.display(), version = to, "state schema migrated");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database at `version` (the migrations up to it applied).
    fn at_version(version: usize) -> (tempfile::TempDir, Connection, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        let conn = Connection::open(&db).unwrap();
        register_functions(&conn).unwrap();
        for sql in &MIGRATIONS[..version] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", version as i64)
            .unwrap();
        (dir, conn, db)
    }

    #[test]
    fn every_older_version_migrates_to_the_current_one() {
        for version in 0..MIGRATIONS.len() {
            let (_dir, mut conn, db) = at_version(version);
            migrate(&mut conn, &db).unwrap_or_else(|e| panic!("from {version}: {e}"));
            assert_eq!(user_version(&conn, &db).unwrap(), SCHEMA_VERSION);
        }
    }

    #[test]
    fn rows_of_names_that_are_not_utf8_are_queued_to_be_sorted_out() {
        let before = MIGRATIONS.iter().position(|m| *m == NON_UTF8_ROWS).unwrap();
        let (_dir, mut conn, db) = at_version(before);
        conn.execute_batch(
            "INSERT INTO files (job, path, size, mtime_ns, inode, item_id, state, skip_reason,
                 updated_at) VALUES
                 ('j', 'bad\u{FFFD}.txt', 0, 0, 0, NULL, 'skipped', 'name is not valid UTF-8', 0),
                 ('j', 'real\u{FFFD}.txt', 5, 5, 5, 'item', 'skipped',
                     'name is not valid UTF-8', 0),
                 ('j', 'link', 0, 0, 0, NULL, 'skipped', 'symbolic link (follow_symlinks is off)',
                     0);",
        )
        .unwrap();
        migrate(&mut conn, &db).unwrap();
        let reason = crate::scan::SkipReason::NonUtf8Name.to_string();
        assert!(NON_UTF8_ROWS.contains(&format!("'{reason}'")), "{reason}");
        type Row = (String, String, Option<String>, Option<String>);
        let rows: Vec<Row> = conn
            .prepare("SELECT path, state, skip_reason, item_id FROM files ORDER BY path")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let link = "symbolic link (follow_symlinks is off)";
        assert_eq!(
            rows,
            [
                ("bad\u{FFFD}.txt".into(), "pending".into(), None, None),
                ("link".into(), "skipped".into(), Some(link.into()), None),
                (
                    "real\u{FFFD}.txt".into(),
                    "pending".into(),
                    None,
                    Some("item".into())
                ),
            ]
        );
    }

    #[test]
    fn folders_no_file_is_recorded_below_are_no_longer_looked_after() {
        let before = MIGRATIONS
            .iter()
            .position(|m| *m == FOREIGN_FOLDERS)
            .unwrap();
        let (_dir, mut conn, db) = at_version(before);
        conn.execute_batch(
            "INSERT INTO folders (job, path, item_id, updated_at) VALUES
                 ('j', '', 'root', 0), ('j', 'ours', '1', 0), ('j', 'ours/sub', '2', 0),
                 ('j', 'theirs', '3', 0), ('j', 'o', '4', 0), ('k', 'ours', '5', 0);
             INSERT INTO files (job, path, size, mtime_ns, inode, state, updated_at) VALUES
                 ('j', 'ours/sub/a.txt', 1, 1, 1, 'synced', 0), ('j', 'o0', 1, 1, 1, 'synced', 0),
                 ('j', 'theirs.txt', 1, 1, 1, 'synced', 0);",
        )
        .unwrap();
        migrate(&mut conn, &db).unwrap();
        let left: Vec<(String, String)> = conn
            .prepare("SELECT job, path FROM folders ORDER BY job, path")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let left: Vec<(&str, &str)> = left.iter().map(|(j, p)| (j.as_str(), p.as_str())).collect();
        assert_eq!(left, [("j", ""), ("j", "ours"), ("j", "ours/sub")]);
    }
}
