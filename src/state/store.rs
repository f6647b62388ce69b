//! [`Store`]: opening the database (lock, modes, pragmas, migrations) and the
//! helpers every table's methods share.

use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags};

use super::StateError;
use super::lock::{DirLock, lock_path};
use super::schema;

/// Name of the database file inside the state directory.
pub const DB_FILE: &str = "state.db";
/// Name of the lock file inside the state directory.
pub const LOCK_FILE: &str = "sharepush.lock";

/// How long a statement waits for a lock held by another connection (a
/// `status` reader during a checkpoint) before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The one owner of the state database. Every read and write of sharepush's
/// memory goes through it, so file state transitions happen in one place and
/// each write is one transaction.
#[derive(Debug)]
pub struct Store {
    // Field order is drop order: the connection closes before the lock is
    // released, so a successor never sees a half-closed database.
    /// The SQLite connection; one per process.
    pub(super) conn: Connection,
    /// `<state_dir>/state.db`, for error messages.
    pub(super) db_path: PathBuf,
    /// The state directory, for status output and messages.
    dir: PathBuf,
    /// Held by writable stores for their whole life; `None` when read-only.
    _lock: Option<DirLock>,
}

impl Store {
    /// Opens (creating if needed) the state in `state_dir` for writing: the
    /// directory 0700, the lock, the database 0600 in WAL mode, migrations.
    /// Fails fast with [`StateError::Locked`] if another process holds it and
    /// with [`StateError::TooNew`] if a newer sharepush wrote it.
    pub fn open(state_dir: &Path) -> Result<Store, StateError> {
        create_private_dir(state_dir)?;
        let lock = DirLock::acquire(state_dir, &lock_path(state_dir))?;
        let db_path = state_dir.join(DB_FILE);
        create_private_file(&db_path)?;

        let err = |context| sql_err(&db_path, context);
        let mut conn = Connection::open(&db_path).map_err(err("opening"))?;
        schema::register_functions(&conn).map_err(err("registering SQL functions"))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(err("setting the busy timeout"))?;
        // Before anything writes: a newer schema must stay exactly as found.
        let found = schema::user_version(&conn, &db_path)?;
        schema::check_not_too_new(found, &db_path)?;

        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(err("enabling WAL"))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(db = %db_path.display(), mode, "SQLite refused WAL mode");
        }
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err("setting synchronous=NORMAL"))?;
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(err("enabling foreign keys"))?;
        schema::migrate(&mut conn, &db_path)?;
        schema::reindex_if_unicode_changed(&mut conn, &db_path)?;

        // SQLite creates -wal/-shm with the database's mode; make sure of it
        // in case they survive from a run with a looser database mode.
        for suffix in ["-wal", "-shm"] {
            let mut side = db_path.clone().into_os_string();
            side.push(suffix);
            restrict_existing(Path::new(&side))?;
        }
        let mut store = Store {
            conn,
            db_path,
            dir: state_dir.to_path_buf(),
            _lock: Some(lock),
        };
        store.close_interrupted_runs()?;
        Ok(store)
    }

    /// Opens the state read-only, without the lock, for `sharepush status`
    /// while the daemon runs. Fails if the database does not exist or has a
    /// schema other than this binary's (it cannot migrate). Writes through the
    /// returned store fail with a SQLite "readonly" error.
    pub fn open_read_only(state_dir: &Path) -> Result<Store, StateError> {
        let db_path = state_dir.join(DB_FILE);
        match std::fs::metadata(&db_path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StateError::Missing { path: db_path });
            }
            Err(source) => {
                return Err(StateError::Io {
                    action: "read",
                    path: db_path,
                    source,
                });
            }
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&db_path, flags)
            .map_err(sql_err(&db_path, "opening read-only"))?;
        schema::register_functions(&conn)
            .map_err(sql_err(&db_path, "registering SQL functions"))?;
        let store = Store {
            conn,
            db_path,
            dir: state_dir.to_path_buf(),
            _lock: None,
        };
        store
            .conn
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(store.sql("setting the busy timeout"))?;
        let found = schema::user_version(&store.conn, &store.db_path)?;
        schema::check_not_too_new(found, &store.db_path)?;
        if found < schema::SCHEMA_VERSION {
            return Err(StateError::TooOld {
                found,
                supported: schema::SCHEMA_VERSION,
                path: store.db_path.clone(),
            });
        }
        Ok(store)
    }

    /// The state directory this store lives in (for status output).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The database file (for status output and messages).
    pub fn db_path(&self) -> &Path {
        &self.db_path
    }

    /// Every job with anything recorded, sorted: `status` lists these, which
    /// includes jobs since removed from the config.
    pub fn jobs(&self) -> Result<Vec<String>, StateError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT DISTINCT job FROM files
                 UNION SELECT job FROM folders
                 UNION SELECT job FROM runs
                 ORDER BY 1",
            )
            .map_err(self.sql("listing jobs"))?;
        let jobs = stmt
            .query_map([], |row| row.get(0))
            .and_then(|rows| rows.collect::<Result<Vec<String>, _>>())
            .map_err(self.sql("listing jobs"))?;
        Ok(jobs)
    }

    /// Whether the database answers: reads the schema version from its
    /// header page. The daemon's health check (watchdog) runs it every few
    /// seconds, so it must not cost anything that grows with the files.
    pub fn ping(&self) -> Result<(), StateError> {
        self.conn
            .pragma_query_value(None, "user_version", |row| row.get::<_, i64>(0))
            .map(|_| ())
            .map_err(self.sql("checking the database answers"))
    }

    /// Maps a SQLite error to [`StateError::Sqlite`] naming this database and
    /// what the store was doing.
    pub(super) fn sql(
        &self,
        context: &'static str,
    ) -> impl FnOnce(rusqlite::Error) -> StateError + use<> {
        sql_err(&self.db_path, context)
    }
}

/// [`Store::sql`] before there is a store, or while a transaction borrows it.
pub(super) fn sql_err(
    db: &Path,
    context: &'static str,
) -> impl FnOnce(rusqlite::Error) -> StateError + use<> {
    let path = db.to_path_buf();
    move |source| StateError::Sqlite {
        path,
        context,
        source,
    }
}

/// Creates the state directory (and missing parents) with mode 0700. An
/// existing directory is left as the administrator made it.
fn create_private_dir(dir: &Path) -> Result<(), StateError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| StateError::Io {
            action: "create state directory",
            path: dir.to_path_buf(),
            source,
        })
}

/// Creates `path` with mode 0600 if missing (before SQLite opens it, so the
/// database is never world-readable, not even for an instant), and tightens
/// an existing file that is readable by group or others.
fn create_private_file(path: &Path) -> Result<(), StateError> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|source| StateError::Io {
            action: "create state database",
            path: path.to_path_buf(),
            source,
        })?;
    restrict_existing(path)
}

/// Sets an existing file's mode to 0600 if group or others have any access.
fn restrict_existing(path: &Path) -> Result<(), StateError> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(StateError::Io {
                action: "read the mode of",
                path: path.to_path_buf(),
                source,
            });
        }
    };
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(path = %path.display(), "state file was readable by others; setting mode 0600");
        std::fs::set_permissions(path, Permissions::from_mode(0o600)).map_err(|source| {
            StateError::Io {
                action: "set mode 0600 on",
                path: path.to_path_buf(),
                source,
            }
        })?;
    }
    Ok(())
}

/// Now as Unix seconds: the default clock for `updated_at` columns. Callers
/// that need controlled time pass it in.
pub(super) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `u64` sizes and inodes are stored bit-for-bit in SQLite's `i64`, so
/// inode numbers above `i64::MAX` (some network filesystems) round-trip.
pub(super) fn u64_to_sql(value: u64) -> i64 {
    value as i64
}

/// The inverse of [`u64_to_sql`].
pub(super) fn u64_from_sql(value: i64) -> u64 {
    value as u64
}
