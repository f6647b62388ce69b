//! The `sessions` table: upload sessions that may outlive the process.
//!
//! The uploader saves a session before sending its first fragment and moves
//! `next_offset` forward as fragments are accepted, so after a crash or
//! SIGTERM it resumes the same session instead of re-sending. A session row
//! belongs to a file row and disappears with it (`forget`).

use std::fmt;

use rusqlite::{OptionalExtension, params};

use super::StateError;
use super::store::{Store, sql_err, u64_from_sql, u64_to_sql, unix_now};

/// The source file as it was when a session started; a resume is only valid
/// while the file still matches it, otherwise the bytes already sent are of
/// another version and the session must be discarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFingerprint {
    pub size: u64,
    pub mtime_ns: i64,
    pub inode: u64,
    pub quick_xor: String,
}

/// One open upload session. `Debug` hides `upload_url`: it carries its own
/// credential (anyone holding it can write to the file).
#[derive(Clone, PartialEq, Eq)]
pub struct UploadSessionRow {
    pub job: String,
    pub path: String,
    pub upload_url: String,
    pub total_size: u64,
    pub fingerprint: SourceFingerprint,
    /// When the service will drop the session (Unix seconds), if it said.
    pub expires_at: Option<i64>,
    /// First byte the service has not acknowledged yet.
    pub next_offset: u64,
}

impl fmt::Debug for UploadSessionRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UploadSessionRow")
            .field("job", &self.job)
            .field("path", &self.path)
            .field("upload_url", &"<redacted>")
            .field("total_size", &self.total_size)
            .field("fingerprint", &self.fingerprint)
            .field("expires_at", &self.expires_at)
            .field("next_offset", &self.next_offset)
            .finish()
    }
}

impl Store {
    /// Saves (or replaces) the session of `row.job`/`row.path`. Once this
    /// returns the row survives the process being killed, so call it before
    /// sending the first fragment. Fails with `NotFound` when the file has no
    /// row (sessions belong to files).
    pub fn save_session(&mut self, row: &UploadSessionRow) -> Result<(), StateError> {
        let context = "saving an upload session";
        let err = |e| sql_err(&self.db_path, context)(e);
        let tx = self.conn.transaction().map_err(err)?;
        let exists = tx
            .prepare_cached("SELECT 1 FROM files WHERE job = ?1 AND path = ?2")
            .and_then(|mut stmt| stmt.exists([&row.job, &row.path]))
            .map_err(err)?;
        if !exists {
            return Err(StateError::NotFound {
                job: row.job.clone(),
                path: row.path.clone(),
            });
        }
        tx.prepare_cached(
            "INSERT INTO sessions (job, path, upload_url, total_size, fp_size, fp_mtime_ns,
                 fp_inode, fp_quick_xor, expires_at, next_offset, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
             ON CONFLICT (job, path) DO UPDATE SET
                 upload_url = excluded.upload_url, total_size = excluded.total_size,
                 fp_size = excluded.fp_size, fp_mtime_ns = excluded.fp_mtime_ns,
                 fp_inode = excluded.fp_inode, fp_quick_xor = excluded.fp_quick_xor,
                 expires_at = excluded.expires_at, next_offset = excluded.next_offset,
                 created_at = excluded.created_at",
        )
        .and_then(|mut stmt| {
            stmt.execute(params![
                row.job,
                row.path,
                row.upload_url,
                u64_to_sql(row.total_size),
                u64_to_sql(row.fingerprint.size),
                row.fingerprint.mtime_ns,
                u64_to_sql(row.fingerprint.inode),
                row.fingerprint.quick_xor,
                row.expires_at,
                u64_to_sql(row.next_offset),
                unix_now(),
            ])
        })
        .map_err(err)?;
        tx.commit().map_err(err)
    }

    /// The saved session of a file, if any.
    pub fn session(&self, job: &str, path: &str) -> Result<Option<UploadSessionRow>, StateError> {
        self.conn
            .prepare_cached(
                "SELECT upload_url, total_size, fp_size, fp_mtime_ns, fp_inode, fp_quick_xor,
                     expires_at, next_offset
                 FROM sessions WHERE job = ?1 AND path = ?2",
            )
            .and_then(|mut stmt| {
                stmt.query_row([job, path], |row| {
                    Ok(UploadSessionRow {
                        job: job.to_string(),
                        path: path.to_string(),
                        upload_url: row.get(0)?,
                        total_size: u64_from_sql(row.get(1)?),
                        fingerprint: SourceFingerprint {
                            size: u64_from_sql(row.get(2)?),
                            mtime_ns: row.get(3)?,
                            inode: u64_from_sql(row.get(4)?),
                            quick_xor: row.get(5)?,
                        },
                        expires_at: row.get(6)?,
                        next_offset: u64_from_sql(row.get(7)?),
                    })
                })
                .optional()
            })
            .map_err(self.sql("reading an upload session"))
    }

    /// Records that the service acknowledged everything before `next_offset`
    /// (and its new expiry, which Graph extends with each fragment). Fails
    /// with `NotFound` when there is no session.
    pub fn update_session_offset(
        &mut self,
        job: &str,
        path: &str,
        next_offset: u64,
        expires_at: Option<i64>,
    ) -> Result<(), StateError> {
        let changed = self
            .conn
            .prepare_cached(
                "UPDATE sessions SET next_offset = ?3, expires_at = coalesce(?4, expires_at)
                 WHERE job = ?1 AND path = ?2",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![job, path, u64_to_sql(next_offset), expires_at])
            })
            .map_err(self.sql("updating an upload session"))?;
        if changed == 0 {
            return Err(StateError::NotFound {
                job: job.to_string(),
                path: path.to_string(),
            });
        }
        Ok(())
    }

    /// Drops a file's session (finished, expired, or its source changed);
    /// returns whether there was one.
    pub fn delete_session(&mut self, job: &str, path: &str) -> Result<bool, StateError> {
        let removed = self
            .conn
            .prepare_cached("DELETE FROM sessions WHERE job = ?1 AND path = ?2")
            .and_then(|mut stmt| stmt.execute([job, path]))
            .map_err(self.sql("deleting an upload session"))?;
        Ok(removed > 0)
    }
}
