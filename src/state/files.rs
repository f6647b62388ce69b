//! The `files` table: what each job's files looked like when last scanned,
//! where they live remotely, and their [`FileState`].
//!
//! Transitions, all written here and nowhere else (rows: state before;
//! columns: the call; `n` is the consecutive failure count):
//!
//! | before \ call | scan, new content | scan, same content | `mark_uploading` | `mark_synced` | `mark_failed` | `mark_pending` | `record_skipped` |
//! |---|---|---|---|---|---|---|---|
//! | (no row)  | Pending | Pending   | NotFound  | NotFound | NotFound    | NotFound | Skipped |
//! | Pending   | Pending | Pending   | Uploading | Synced   | Failed{1}   | Pending  | Skipped |
//! | Uploading | Pending | Uploading | Uploading | Synced   | Failed{n+1} | Pending  | Skipped |
//! | Synced    | Pending | Synced    | Uploading | Synced   | Failed{1}   | Pending  | Skipped |
//! | Failed{n} | Pending | Failed{n} | Uploading | Synced   | Failed{n+1} | Pending  | Skipped |
//! | Skipped   | Pending | Pending   | refused   | refused  | refused     | Pending  | Skipped |
//!
//! "Scan" is `record_scanned`; `mark_synced` lands on `Pending` instead of
//! `Synced` when the content it reports is not the recorded content (below).
//! `Synced` and new content reset `n`; `mark_uploading` keeps it, so backoff
//! grows across retries.
//!
//! "Content" is the pair of hashes. A file touched without being edited (new
//! mtime or inode, same bytes) keeps its state: SharePoint already holds
//! those bytes, and re-uploading to carry a new mtime would add a version per
//! `touch` (remote mtimes are secondary for a backup). A `mark_synced` whose
//! uploaded content no longer equals the recorded content (a scan saw a newer
//! edit meanwhile) records the remote item but leaves the file `Pending`, so
//! the newer edit is uploaded too: a change is never marked as sent when it
//! was not.
//!
//! Keep-both (`on_remote_change`, see `remote.rs`): a row with `copy_to`
//! set is uploaded to that path instead of its own ([`Store::copy_target`]),
//! and [`Store::record_conflict_copy`] takes the place of `mark_synced` (same
//! transitions) while keeping the row's remote side pointing at the other
//! person's version.

use std::collections::{HashMap, HashSet};

use rusqlite::types::{Type, ValueRef};
use rusqlite::{OptionalExtension, Row, Transaction, params};

use super::StateError;
use super::store::{Store, sql_err, u64_from_sql, u64_to_sql, unix_now};
use crate::hash::Hashes;
use crate::scan::{KnownFile, KnownHashes, LocalEntry};

/// Where a file stands between the local disk and SharePoint. One enum so a
/// file cannot be "synced and failed" at once; only `state/` writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileState {
    /// Needs uploading: new, changed, or asked to go again.
    Pending,
    /// An upload started; after a restart it may have a session to resume.
    Uploading,
    /// The remote holds the content recorded in [`FileRecord::hashes`].
    Synced {
        item_id: Option<String>,
        etag: Option<String>,
        /// quickXorHash SharePoint reported; differs from ours when it
        /// rewrote the file (Office, PDF), which must not cause a re-upload.
        remote_quick_xor: Option<String>,
        remote_size: Option<u64>,
    },
    /// Uploading failed `attempts` times in a row; retry not before
    /// `next_attempt` (Unix seconds; `None`: next run).
    Failed {
        attempts: u32,
        error: String,
        next_attempt: Option<i64>,
    },
    /// Deliberately not uploaded (invalid name, unreadable, too large...);
    /// `status` shows the reason.
    Skipped { reason: String },
}

impl FileState {
    /// The variant without its data, for filters and counts.
    pub fn kind(&self) -> FileStateKind {
        match self {
            FileState::Pending => FileStateKind::Pending,
            FileState::Uploading => FileStateKind::Uploading,
            FileState::Synced { .. } => FileStateKind::Synced,
            FileState::Failed { .. } => FileStateKind::Failed,
            FileState::Skipped { .. } => FileStateKind::Skipped,
        }
    }
}

/// [`FileState`] without data: what `files_in_state` filters on and what
/// the `state` column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FileStateKind {
    Pending,
    Uploading,
    Synced,
    Failed,
    Skipped,
}

impl FileStateKind {
    /// Every kind, in display order.
    pub const ALL: [FileStateKind; 5] = [
        FileStateKind::Pending,
        FileStateKind::Uploading,
        FileStateKind::Synced,
        FileStateKind::Failed,
        FileStateKind::Skipped,
    ];

    /// The word stored in the `state` column and shown by `status`.
    pub fn as_str(self) -> &'static str {
        match self {
            FileStateKind::Pending => "pending",
            FileStateKind::Uploading => "uploading",
            FileStateKind::Synced => "synced",
            FileStateKind::Failed => "failed",
            FileStateKind::Skipped => "skipped",
        }
    }

    fn parse(text: &str) -> Option<FileStateKind> {
        FileStateKind::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

impl std::fmt::Display for FileStateKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything the store knows about one file: what `plan` and `status` read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRecord {
    pub job: String,
    /// Relative to the job source, `/`-separated.
    pub path: String,
    /// Fingerprint at the last scan (0/0/0 for a file first seen as skipped).
    pub size: u64,
    pub mtime_ns: i64,
    pub inode: u64,
    /// `None` until the file was hashed.
    pub hashes: Option<Hashes>,
    pub state: FileState,
    /// The remote item this path maps to, kept in every state (a synced file
    /// that changed is `Pending` but still replaces the same item, and a
    /// remote edit is noticed by its eTag). In `Synced` it equals the
    /// variant's `item_id`.
    pub item_id: Option<String>,
    /// The eTag last seen for `item_id`.
    pub etag: Option<String>,
    /// The quickXorHash SharePoint reported for `item_id` when we last put
    /// or found our content there (kept in every state, like `item_id`).
    pub remote_quick_xor: Option<String>,
    /// When this row last changed (Unix seconds).
    pub updated_at: i64,
}

/// What the uploader learned when an upload finished (or what reconcile
/// found when adopting a file that was already remote).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncedInfo {
    /// The content that was sent (hashed while reading it), so the store can
    /// tell whether the file was edited again since it was scanned.
    pub content: Hashes,
    pub item_id: Option<String>,
    pub etag: Option<String>,
    pub remote_quick_xor: Option<String>,
    pub remote_size: Option<u64>,
    /// Where the item sits (its name and parent folder's id), as the
    /// service reported it: a later delta entry that places it elsewhere
    /// means someone else moved or renamed it. `None`: not judged.
    pub remote_name: Option<String>,
    pub remote_parent: Option<String>,
}

impl SyncedInfo {
    /// What the service's reply `item` says about the `content` we sent.
    pub fn from_item(content: Hashes, item: &crate::remote::RemoteItem) -> SyncedInfo {
        SyncedInfo {
            content,
            item_id: Some(item.id.clone()),
            etag: item.etag.clone(),
            remote_quick_xor: item.quick_xor.clone(),
            remote_size: Some(item.size),
            remote_name: Some(item.name.clone()).filter(|n| !n.is_empty()),
            remote_parent: item.parent_id.clone(),
        }
    }
}

/// Number of files per state in one job (for `status` and run summaries).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateCounts {
    pub pending: u64,
    pub uploading: u64,
    pub synced: u64,
    pub failed: u64,
    pub skipped: u64,
}

impl StateCounts {
    /// All files the job has rows for.
    pub fn total(&self) -> u64 {
        self.pending + self.uploading + self.synced + self.failed + self.skipped
    }

    /// The count for one kind.
    pub fn get(&self, kind: FileStateKind) -> u64 {
        match kind {
            FileStateKind::Pending => self.pending,
            FileStateKind::Uploading => self.uploading,
            FileStateKind::Synced => self.synced,
            FileStateKind::Failed => self.failed,
            FileStateKind::Skipped => self.skipped,
        }
    }
}

/// Columns read into a [`FileRecord`] by [`record_from_row`], in its order.
const RECORD_COLUMNS: &str = "job, path, size, mtime_ns, inode, sha1, quick_xor, item_id, etag, \
     remote_quick_xor, remote_size, state, attempts, next_attempt, last_error, skip_reason, updated_at";

fn record_from_row(row: &Row<'_>) -> rusqlite::Result<FileRecord> {
    let hashes = hashes_from(row.get(5)?, row.get(6)?);
    let item_id: Option<String> = row.get(7)?;
    let etag: Option<String> = row.get(8)?;
    let remote_quick_xor: Option<String> = row.get(9)?;
    let state_text: String = row.get(11)?;
    let state = match FileStateKind::parse(&state_text) {
        Some(FileStateKind::Pending) => FileState::Pending,
        Some(FileStateKind::Uploading) => FileState::Uploading,
        Some(FileStateKind::Synced) => FileState::Synced {
            item_id: item_id.clone(),
            etag: etag.clone(),
            remote_quick_xor: remote_quick_xor.clone(),
            remote_size: row.get::<_, Option<i64>>(10)?.map(u64_from_sql),
        },
        Some(FileStateKind::Failed) => FileState::Failed {
            attempts: row.get(12)?,
            error: row.get::<_, Option<String>>(14)?.unwrap_or_default(),
            next_attempt: row.get(13)?,
        },
        Some(FileStateKind::Skipped) => FileState::Skipped {
            reason: row.get::<_, Option<String>>(15)?.unwrap_or_default(),
        },
        None => {
            return Err(rusqlite::Error::FromSqlConversionFailure(
                11,
                Type::Text,
                format!("unknown file state {state_text:?}").into(),
            ));
        }
    };
    Ok(FileRecord {
        job: row.get(0)?,
        path: row.get(1)?,
        size: u64_from_sql(row.get(2)?),
        mtime_ns: row.get(3)?,
        inode: u64_from_sql(row.get(4)?),
        hashes,
        state,
        item_id,
        etag,
        remote_quick_xor,
        updated_at: row.get(16)?,
    })
}

fn hashes_from(sha1: Option<String>, quick_xor: Option<String>) -> Option<Hashes> {
    match (sha1, quick_xor) {
        (Some(sha1), Some(quick_xor)) => Some(Hashes { sha1, quick_xor }),
        _ => None,
    }
}

/// How a scanned file compares with its row; decides what `record_scanned`
/// writes. Pure, so the rules are tested without a database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScanWrite {
    /// No row yet: insert as `Pending`.
    Insert,
    /// Row already says exactly this: write nothing.
    Nothing,
    /// Same content, new fingerprint (touched, copied over itself): update
    /// the fingerprint, keep the state.
    Fingerprint,
    /// New content (or a skipped file seen again): update and queue it.
    Requeue,
}

fn scan_write(row: Option<(bool, bool, bool)>) -> ScanWrite {
    match row {
        None => ScanWrite::Insert,
        Some((same_fingerprint, same_content, skipped)) => {
            if !same_content || skipped {
                ScanWrite::Requeue
            } else if same_fingerprint {
                ScanWrite::Nothing
            } else {
                ScanWrite::Fingerprint
            }
        }
    }
}

/// The write of [`Store::record_skipped`], for it and for callers that add
/// to it in one transaction.
fn upsert_skipped(
    conn: &rusqlite::Connection,
    job: &str,
    path: &str,
    reason: &str,
) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "INSERT INTO files (job, path, size, mtime_ns, inode, state, skip_reason, updated_at)
         VALUES (?1, ?2, 0, 0, 0, 'skipped', ?3, ?4)
         ON CONFLICT (job, path) DO UPDATE SET
             state = 'skipped', skip_reason = excluded.skip_reason, attempts = 0,
             next_attempt = NULL, last_error = NULL, updated_at = excluded.updated_at
         WHERE files.state <> 'skipped' OR files.skip_reason IS NOT excluded.skip_reason",
    )?
    .execute(params![job, path, reason, unix_now()])
}

/// Paths per `DELETE` statement in [`Store::forget`].
const FORGET_BATCH: usize = 4096;

/// The columns [`known_from_row`] reads, in order.
const KNOWN_COLUMNS: &str = "path, size, mtime_ns, inode, sha1, quick_xor, state, racy";

/// One [`KNOWN_COLUMNS`] row as a path and what a scan compares it with.
fn known_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(String, KnownFile)> {
    // Parsed from the row's text in place: no string per file.
    let hashes = match (row.get_ref(4)?, row.get_ref(5)?) {
        (ValueRef::Text(sha1), ValueRef::Text(quick_xor)) => KnownHashes::from_text(
            std::str::from_utf8(sha1).unwrap_or(""),
            std::str::from_utf8(quick_xor).unwrap_or(""),
        ),
        _ => None,
    };
    let synced = hashes.is_some() && matches!(row.get_ref(6)?, ValueRef::Text(b"synced"));
    Ok((
        row.get(0)?,
        KnownFile {
            size: u64_from_sql(row.get(1)?),
            mtime_ns: row.get(2)?,
            inode: u64_from_sql(row.get(3)?),
            hashes,
            synced,
            racy: row.get(7)?,
        },
    ))
}

impl Store {
    /// The state lookup a scan compares the disk against, for one job, in one
    /// query. `synced` is true only for a `Synced` row with hashes, i.e. when
    /// the remote holds exactly the recorded content.
    pub fn known_files(&self, job: &str) -> Result<HashMap<String, KnownFile>, StateError> {
        let context = "loading known files";
        let mut stmt = self
            .conn
            .prepare_cached(&format!("SELECT {KNOWN_COLUMNS} FROM files WHERE job = ?1"))
            .map_err(self.sql(context))?;
        let mut rows = stmt.query([job]).map_err(self.sql(context))?;
        let mut known = HashMap::new();
        while let Some(row) = rows.next().map_err(self.sql(context))? {
            let (path, file) = known_from_row(row).map_err(self.sql(context))?;
            known.insert(path, file);
        }
        Ok(known)
    }

    /// [`Store::known_files`] for a scan scoped to `roots` (each a file, or a
    /// folder with everything below it; `/`-separated, relative to the job
    /// source), read through the primary key: a watch batch looks up what
    /// it touched, not the whole job. Also returns how many files the job
    /// knows in all, so the caller can count the rest as unchanged.
    pub fn known_files_under(
        &self,
        job: &str,
        roots: &[String],
    ) -> Result<(HashMap<String, KnownFile>, u64), StateError> {
        let context = "loading known files";
        let tx = self
            .conn
            .unchecked_transaction()
            .map_err(self.sql(context))?;
        // The root itself, then below it: every path from "root/" up to,
        // not including, "root0" ('0' follows '/' in byte order, the
        // column's collation). Two statements: with `OR` SQLite walks all
        // of the job's rows instead of two key ranges.
        let mut exact = self
            .conn
            .prepare_cached(&format!(
                "SELECT {KNOWN_COLUMNS} FROM files WHERE job = ?1 AND path = ?2"
            ))
            .map_err(self.sql(context))?;
        let mut below = self
            .conn
            .prepare_cached(&format!(
                "SELECT {KNOWN_COLUMNS} FROM files WHERE job = ?1 AND path >= ?2 AND path < ?3"
            ))
            .map_err(self.sql(context))?;
        let mut known = HashMap::new();
        for root in roots {
            let (first, after) = (format!("{root}/"), format!("{root}0"));
            for rows in [
                exact.query(rusqlite::params![job, root]),
                below.query(rusqlite::params![job, first, after]),
            ] {
                let mut rows = rows.map_err(self.sql(context))?;
                while let Some(row) = rows.next().map_err(self.sql(context))? {
                    let (path, file) = known_from_row(row).map_err(self.sql(context))?;
                    known.insert(path, file);
                }
            }
        }
        drop((exact, below));
        let total: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM files WHERE job = ?1", [job], |r| {
                r.get(0)
            })
            .map_err(self.sql(context))?;
        tx.commit().map_err(self.sql(context))?;
        Ok((known, u64_from_sql(total)))
    }

    /// Paths whose row a scan must look at even when nothing changed there:
    /// every file the remote does not hold as recorded (pending, uploading,
    /// failed, skipped, never hashed) and every racily clean one. A scan
    /// scoped to a watch batch adds these, so retries, re-uploads asked for
    /// by a remote change and racy re-checks do not wait for a full scan.
    pub fn paths_needing_a_look(&self, job: &str) -> Result<Vec<String>, StateError> {
        let context = "listing files not yet synced";
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT path FROM files WHERE job = ?1
                 AND (state != 'synced' OR sha1 IS NULL OR racy)",
            )
            .map_err(self.sql(context))?;
        let paths = stmt
            .query_map([job], |r| r.get(0))
            .map_err(self.sql(context))?
            .collect::<Result<Vec<String>, _>>()
            .map_err(self.sql(context))?;
        Ok(paths)
    }

    /// Records what a scan found, in one transaction: new files become
    /// `Pending`; a file whose hashes differ from the recorded ones becomes
    /// `Pending` (its failures forgotten: new content deserves new tries);
    /// a file with the same hashes but a new mtime/inode (touched, restored
    /// from backup, copied over itself) only gets the new fingerprint and
    /// keeps its state, so it is not uploaded again. A `Skipped` file seen
    /// again becomes `Pending`. Entries whose row already matches write
    /// nothing. Upload sessions are left alone: the uploader compares their
    /// fingerprint and discards a stale one itself.
    ///
    /// Racily-clean files: an entry whose mtime is at or after a cutoff (the
    /// mtime of "now" minus [`crate::scan::RACY_MARGIN_NS`]) is recorded as
    /// racy, so the next scan hashes it again; an older one as trusted. A
    /// scan should call [`Store::record_scan`] with its own start instead.
    pub fn record_scanned(&mut self, job: &str, entries: &[LocalEntry]) -> Result<(), StateError> {
        self.record_scan(job, entries, &[], crate::scan::racy_cutoff_now())
    }

    /// [`Store::record_scanned`] for a scan's report: entries with an mtime
    /// at or after `racy_cutoff_ns` ([`crate::scan::ScanReport::racy_cutoff_ns`])
    /// are recorded racy, the others trusted; the `verified` paths (racy
    /// synced files the scan hashed again and found identical, now old
    /// enough) become trusted. All in one transaction.
    pub fn record_scan(
        &mut self,
        job: &str,
        entries: &[LocalEntry],
        verified: &[String],
        racy_cutoff_ns: i64,
    ) -> Result<(), StateError> {
        let context = "recording scanned files";
        let now = unix_now();
        let err = |e| sql_err(&self.db_path, context)(e);
        let tx = self.conn.transaction().map_err(err)?;
        // A SELECT and then the one write needed, rather than one UPSERT:
        // SQLite gives an UPSERT a statement journal, a 64 KiB buffer per
        // row that glibc may hand back to the kernel (madvise) every time on
        // a non-main thread; that made 100,000 touched files 5x slower in
        // `bulk_timing`. Unchanged files (most of a rescan) cost one lookup.
        {
            let mut select = tx
                .prepare_cached(
                    "SELECT size, mtime_ns, inode, sha1, quick_xor, state, racy
                     FROM files WHERE job = ?1 AND path = ?2",
                )
                .map_err(err)?;
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO files (job, path, size, mtime_ns, inode, sha1, quick_xor,
                         state, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending', ?8)",
                )
                .map_err(err)?;
            let mut fingerprint = tx
                .prepare_cached(
                    "UPDATE files SET size = ?3, mtime_ns = ?4, inode = ?5, updated_at = ?6
                     WHERE job = ?1 AND path = ?2",
                )
                .map_err(err)?;
            let mut requeue = tx
                .prepare_cached(
                    "UPDATE files SET size = ?3, mtime_ns = ?4, inode = ?5, sha1 = ?6,
                         quick_xor = ?7, state = 'pending', attempts = 0, next_attempt = NULL,
                         last_error = NULL, skip_reason = NULL, updated_at = ?8
                     WHERE job = ?1 AND path = ?2",
                )
                .map_err(err)?;
            // In key order, so the B-tree is walked once from left to right
            // and SQLite's small page cache never thrashes (a parallel walk
            // yields paths in no particular order: 3x slower at 100,000).
            let mut sorted: Vec<&LocalEntry> = entries.iter().collect();
            sorted.sort_unstable_by(|a, b| a.path.cmp(&b.path));
            let mut set_racy = tx
                .prepare_cached("UPDATE files SET racy = ?3 WHERE job = ?1 AND path = ?2")
                .map_err(err)?;
            for path in verified {
                set_racy.execute(params![job, path, false]).map_err(err)?;
            }
            for entry in sorted {
                let (size, inode) = (u64_to_sql(entry.size), u64_to_sql(entry.inode));
                // No row reads as trusted; an insert starts trusted (the
                // column's default) and is marked just after if racy.
                let mut racy_row = false;
                let row = select
                    .query_row(params![job, entry.path], |row| {
                        let same_fingerprint = row.get::<_, i64>(0)? == size
                            && row.get::<_, i64>(1)? == entry.mtime_ns
                            && row.get::<_, i64>(2)? == inode;
                        // An entry the scan did not hash (no recorded hash
                        // to compare with) keeps its state while its
                        // fingerprint holds, and is queued when it moved.
                        let same_content = match &entry.hashes {
                            Some(h) => {
                                row.get_ref(3)?.as_str_or_null().ok().flatten()
                                    == Some(h.sha1.as_str())
                                    && row.get_ref(4)?.as_str_or_null().ok().flatten()
                                        == Some(h.quick_xor.as_str())
                            }
                            None => same_fingerprint,
                        };
                        let skipped = matches!(row.get_ref(5)?, ValueRef::Text(b"skipped"));
                        racy_row = row.get(6)?;
                        Ok((same_fingerprint, same_content, skipped))
                    })
                    .optional()
                    .map_err(err)?;
                let (sha1, quick_xor) = match &entry.hashes {
                    Some(h) => (Some(h.sha1.as_str()), Some(h.quick_xor.as_str())),
                    None => (None, None),
                };
                match scan_write(row) {
                    ScanWrite::Nothing => Ok(0),
                    ScanWrite::Insert => insert.execute(params![
                        job,
                        entry.path,
                        size,
                        entry.mtime_ns,
                        inode,
                        sha1,
                        quick_xor,
                        now
                    ]),
                    ScanWrite::Fingerprint => fingerprint.execute(params![
                        job,
                        entry.path,
                        size,
                        entry.mtime_ns,
                        inode,
                        now
                    ]),
                    ScanWrite::Requeue => requeue.execute(params![
                        job,
                        entry.path,
                        size,
                        entry.mtime_ns,
                        inode,
                        sha1,
                        quick_xor,
                        now
                    ]),
                }
                .map_err(err)?;
                // Rare (only files modified within seconds of the scan), so a
                // separate statement costs nothing on a bulk scan.
                let racy = crate::scan::is_racy(entry.mtime_ns, racy_cutoff_ns);
                if racy != racy_row {
                    set_racy
                        .execute(params![job, entry.path, racy])
                        .map_err(err)?;
                }
            }
        }
        tx.commit().map_err(sql_err(&self.db_path, context))
    }

    /// For each of `paths`, another file of `job` whose path differs only
    /// in case (Unicode lowercase, `Ä` as `ä`) and keeps the name remotely, if one does: SharePoint
    /// names are case-insensitive, so both would be one item, each upload
    /// replacing the other. The keeper is the one that already has a
    /// remote item, else the first in byte order; skipped rows, and the
    /// rows in `leaving` (gone locally: forgotten or moved away before the
    /// uploads), never keep. Returns path -> twin for the paths that have
    /// one.
    pub fn case_twins(
        &self,
        job: &str,
        paths: &[String],
        leaving: &HashSet<String>,
    ) -> Result<HashMap<String, String>, StateError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                // Named: left to itself, the planner walks the job's rows
                // by primary key (`t.path < ?2` looks like a range on it).
                "SELECT t.path FROM files t INDEXED BY files_by_folded_path
                 LEFT JOIN files me ON me.job = ?1 AND me.path = ?2
                 WHERE t.job = ?1 AND sharepush_fold(t.path) = sharepush_fold(?2)
                     AND t.path <> ?2
                     AND t.state <> 'skipped'
                     AND ((t.item_id IS NOT NULL AND me.item_id IS NULL)
                         OR ((t.item_id IS NULL) = (me.item_id IS NULL) AND t.path < ?2))
                 ORDER BY t.item_id IS NULL, t.path",
            )
            .map_err(self.sql("looking for paths that differ only in case"))?;
        let mut twins = HashMap::new();
        for path in paths {
            let found: Vec<String> = stmt
                .query_map([job, path], |r| r.get(0))
                .and_then(|rows| rows.collect())
                .map_err(self.sql("looking for paths that differ only in case"))?;
            if let Some(twin) = found.into_iter().find(|t| !leaving.contains(t)) {
                twins.insert(path.clone(), twin);
            }
        }
        Ok(twins)
    }

    /// Records that `path` is not uploaded now for a reason that depends on
    /// other files (one of [`Store::case_twins`]): skipped, with an empty
    /// fingerprint so every scan looks at it again and it goes up once the
    /// reason is gone.
    /// Both writes in one transaction: a row skipped but still holding the
    /// keeper's item must never be left behind.
    pub fn record_skipped_for_now(
        &mut self,
        job: &str,
        path: &str,
        reason: &str,
    ) -> Result<(), StateError> {
        let err = |e| sql_err(&self.db_path, "recording a skipped file")(e);
        let tx = self.conn.transaction().map_err(err)?;
        upsert_skipped(&tx, job, path, reason).map_err(err)?;
        // Not the keeper, so not the owner of any remote item: rows from
        // before twins were noticed may share the keeper's item, which a
        // mirror delete of this path must never take.
        tx.prepare_cached(
            "UPDATE files SET size = 0, mtime_ns = 0, inode = 0, item_id = NULL, etag = NULL
             WHERE job = ?1 AND path = ?2",
        )
        .and_then(|mut s| s.execute([job, path]))
        .map_err(err)?;
        tx.commit().map_err(err)
    }

    /// Records that a scan (or a naming rule) will not upload `path`, with a
    /// reason `status` shows. Creates the row if the file was never seen, with
    /// an empty fingerprint so the next scan hashes it again.
    pub fn record_skipped(
        &mut self,
        job: &str,
        path: &str,
        reason: &str,
    ) -> Result<(), StateError> {
        upsert_skipped(&self.conn, job, path, reason)
            .map_err(self.sql("recording a skipped file"))?;
        Ok(())
    }

    /// Drops the rows (and any upload session) of files that are gone
    /// locally, in one transaction; returns how many rows existed. Remote
    /// deletion, if the job mirrors, must happen before this: the row holds
    /// the item id.
    pub fn forget(&mut self, job: &str, paths: &[String]) -> Result<usize, StateError> {
        let context = "forgetting files";
        let err = |e| sql_err(&self.db_path, context)(e);
        let tx = self.conn.transaction().map_err(err)?;
        let mut removed = 0;
        {
            // Paths go in as JSON arrays, thousands per statement: with the
            // sessions foreign key, SQLite opens a statement journal per
            // DELETE statement, so per-path statements would pay it 100,000
            // times for a deleted tree.
            let mut stmt = tx
                .prepare_cached(
                    "DELETE FROM files
                     WHERE job = ?1 AND path IN (SELECT value FROM json_each(?2))",
                )
                .map_err(err)?;
            // A remote change still open or left as a conflict about a
            // forgotten file is moot: their version stays where it is, and
            // a new local file at the path must not be held by it.
            let mut moot = tx
                .prepare_cached(
                    "DELETE FROM remote_changes
                     WHERE job = ?1 AND path IN (SELECT value FROM json_each(?2))
                     AND (outcome IS NULL OR outcome = 'skipped')",
                )
                .map_err(err)?;
            let mut sorted: Vec<&String> = paths.iter().collect();
            sorted.sort_unstable();
            for chunk in sorted.chunks(FORGET_BATCH) {
                let list = serde_json::to_string(chunk).expect("a list of strings serializes");
                removed += stmt.execute(params![job, list]).map_err(err)?;
                moot.execute(params![job, list]).map_err(err)?;
            }
        }
        tx.commit().map_err(err)?;
        Ok(removed)
    }

    /// One file's record, if it has one.
    pub fn file(&self, job: &str, path: &str) -> Result<Option<FileRecord>, StateError> {
        self.conn
            .prepare_cached(&format!(
                "SELECT {RECORD_COLUMNS} FROM files WHERE job = ?1 AND path = ?2"
            ))
            .and_then(|mut stmt| stmt.query_row([job, path], record_from_row).optional())
            .map_err(self.sql("reading a file record"))
    }

    /// The files of one job in one state, sorted by path (`status` lists
    /// failed and skipped files; the uploader picks up pending ones).
    /// Synced, non-empty files whose upload reply carried no quickXorHash
    /// (SharePoint may fill it in later). Graph-api.md says never to assume
    /// such an upload is intact: the uploader stats them again on a later
    /// run and verifies the hash then. Sorted by path.
    pub fn unconfirmed_synced(&self, job: &str) -> Result<Vec<FileRecord>, StateError> {
        let context = "listing synced files without a remote hash";
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {RECORD_COLUMNS} FROM files WHERE job = ?1 AND state = 'synced'
                 AND remote_quick_xor IS NULL AND size > 0 ORDER BY path"
            ))
            .map_err(self.sql(context))?;
        stmt.query_map([job], record_from_row)
            .and_then(|rows| rows.collect())
            .map_err(self.sql(context))
    }

    pub fn files_in_state(
        &self,
        job: &str,
        kind: FileStateKind,
    ) -> Result<Vec<FileRecord>, StateError> {
        let context = "listing files by state";
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {RECORD_COLUMNS} FROM files WHERE job = ?1 AND state = ?2 ORDER BY path"
            ))
            .map_err(self.sql(context))?;
        stmt.query_map([job, kind.as_str()], record_from_row)
            .and_then(|rows| rows.collect())
            .map_err(self.sql(context))
    }

    /// At most `limit` files of one job in one state, sorted by path:
    /// `status` lists the first failed files without loading all of them.
    pub fn files_in_state_limited(
        &self,
        job: &str,
        kind: FileStateKind,
        limit: usize,
    ) -> Result<Vec<FileRecord>, StateError> {
        let context = "listing files by state";
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {RECORD_COLUMNS} FROM files WHERE job = ?1 AND state = ?2 ORDER BY path LIMIT ?3"
            ))
            .map_err(self.sql(context))?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        stmt.query_map(params![job, kind.as_str(), limit], record_from_row)
            .and_then(|rows| rows.collect())
            .map_err(self.sql(context))
    }

    /// How many files of one job are in each state.
    pub fn counts(&self, job: &str) -> Result<StateCounts, StateError> {
        let context = "counting files";
        let mut stmt = self
            .conn
            .prepare_cached("SELECT state, count(*) FROM files WHERE job = ?1 GROUP BY state")
            .map_err(self.sql(context))?;
        let rows = stmt
            .query_map([job], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(self.sql(context))?;
        let mut counts = StateCounts::default();
        for (state, n) in rows {
            let n = n as u64;
            match FileStateKind::parse(&state) {
                Some(FileStateKind::Pending) => counts.pending = n,
                Some(FileStateKind::Uploading) => counts.uploading = n,
                Some(FileStateKind::Synced) => counts.synced = n,
                Some(FileStateKind::Failed) => counts.failed = n,
                Some(FileStateKind::Skipped) => counts.skipped = n,
                None => {
                    return Err(StateError::Corrupt {
                        path: self.db_path.clone(),
                        detail: format!("unknown file state {state:?} in job {job:?}"),
                    });
                }
            }
        }
        Ok(counts)
    }

    /// Every record of one job, keyed by path, in one query: what the planner
    /// reads after a full scan (one sequential read beats 100,000 lookups).
    pub fn all_records(&self, job: &str) -> Result<HashMap<String, FileRecord>, StateError> {
        let context = "loading file records";
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {RECORD_COLUMNS} FROM files WHERE job = ?1"
            ))
            .map_err(self.sql(context))?;
        let mut rows = stmt.query([job]).map_err(self.sql(context))?;
        let mut records = HashMap::new();
        while let Some(row) = rows.next().map_err(self.sql(context))? {
            let record = record_from_row(row).map_err(self.sql(context))?;
            records.insert(record.path.clone(), record);
        }
        Ok(records)
    }

    /// The records of just these paths, keyed by path (paths without a row
    /// are absent): what the planner reads for a watch batch, where loading
    /// the whole job would cost more than the handful of lookups.
    pub fn records_for(
        &self,
        job: &str,
        paths: &[&str],
    ) -> Result<HashMap<String, FileRecord>, StateError> {
        let context = "loading file records";
        // One read transaction: the same snapshot for every path, and one
        // lock round trip instead of one per lookup.
        let tx = self
            .conn
            .unchecked_transaction()
            .map_err(self.sql(context))?;
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {RECORD_COLUMNS} FROM files WHERE job = ?1 AND path = ?2"
            ))
            .map_err(self.sql(context))?;
        let mut records = HashMap::with_capacity(paths.len());
        let mut sorted = paths.to_vec();
        sorted.sort_unstable();
        for path in sorted {
            if let Some(record) = stmt
                .query_row([job, path], record_from_row)
                .optional()
                .map_err(self.sql(context))?
            {
                records.insert(record.path.clone(), record);
            }
        }
        drop(stmt);
        tx.commit().map_err(self.sql(context))?;
        Ok(records)
    }

    /// Records the hashes the uploader computed while sending a file the scan
    /// did not hash ([`LocalEntry::hashes`] `None`), so that
    /// [`Store::mark_synced`] can compare them. Writes only when the row has
    /// no hashes yet and still has the fingerprint `fp` the upload read
    /// (size, mtime ns, inode): a row a newer scan moved on is left alone,
    /// and `mark_synced` then keeps the file pending. A file whose mtime is
    /// at or after `racy_cutoff_ns` (the upload started reading it less
    /// than [`crate::scan::RACY_MARGIN_NS`] after its last change) is
    /// recorded racy, as a scan would, so the next scan hashes it again.
    /// Returns whether it wrote.
    pub fn record_hashes(
        &mut self,
        job: &str,
        path: &str,
        fp: (u64, i64, u64),
        hashes: &Hashes,
        racy_cutoff_ns: i64,
    ) -> Result<bool, StateError> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE files SET sha1 = ?6, quick_xor = ?7, updated_at = ?8, racy = ?9
                 WHERE job = ?1 AND path = ?2 AND sha1 IS NULL
                     AND size = ?3 AND mtime_ns = ?4 AND inode = ?5",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    job,
                    path,
                    u64_to_sql(fp.0),
                    fp.1,
                    u64_to_sql(fp.2),
                    hashes.sha1,
                    hashes.quick_xor,
                    unix_now(),
                    crate::scan::is_racy(fp.1, racy_cutoff_ns)
                ])
            })
            .map_err(self.sql("recording the hashes of an uploaded file"))?;
        Ok(n == 1)
    }

    /// An upload of `path` starts. Refused for a skipped file.
    pub fn mark_uploading(&mut self, job: &str, path: &str) -> Result<(), StateError> {
        self.transition(job, path, "marking a file uploading", |tx, current| {
            current.refuse_if_skipped(job, path, "uploading")?;
            tx.prepare_cached(
                "UPDATE files SET state = 'uploading', updated_at = ?3 WHERE job = ?1 AND path = ?2",
            )?
            .execute(params![job, path, unix_now()])?;
            Ok(())
        })
    }

    /// An upload finished (or reconcile found the content already remote).
    /// Returns the state now recorded: `Synced`, or `Pending` when the
    /// recorded content changed since `info.content` was read (the remote
    /// item is still recorded, so the next upload replaces it). Resets the
    /// failure count. Refused for a skipped file.
    pub fn mark_synced(
        &mut self,
        job: &str,
        path: &str,
        info: &SyncedInfo,
    ) -> Result<FileState, StateError> {
        self.transition(job, path, "marking a file synced", |tx, current| {
            current.refuse_if_skipped(job, path, "synced")?;
            let same = current.hashes.as_ref() == Some(&info.content);
            let state = if same { "synced" } else { "pending" };
            tx.prepare_cached(
                "UPDATE files SET state = ?3, item_id = ?4, etag = ?5, remote_quick_xor = ?6,
                     remote_size = ?7, attempts = 0, next_attempt = NULL, last_error = NULL,
                     updated_at = ?8, remote_name = ?9, remote_parent = ?10,
                     changed_while_sending = 0
                 WHERE job = ?1 AND path = ?2",
            )?
            .execute(params![
                job,
                path,
                state,
                info.item_id,
                info.etag,
                info.remote_quick_xor,
                info.remote_size.map(u64_to_sql),
                unix_now(),
                info.remote_name,
                info.remote_parent,
            ])?;
            Ok(if same {
                FileState::Synced {
                    item_id: info.item_id.clone(),
                    etag: info.etag.clone(),
                    remote_quick_xor: info.remote_quick_xor.clone(),
                    remote_size: info.remote_size,
                }
            } else {
                FileState::Pending
            })
        })
    }

    /// Where the next upload of `path` goes when it is not `path` itself: the
    /// path of our copy beside someone else's edit (`on_remote_change =
    /// "keep-both"`, see [`Store::resolve_keep_both`]); `None` normally.
    pub fn copy_target(&self, job: &str, path: &str) -> Result<Option<String>, StateError> {
        self.conn
            .prepare_cached("SELECT copy_to FROM files WHERE job = ?1 AND path = ?2")
            .and_then(|mut s| {
                s.query_row([job, path], |r| r.get::<_, Option<String>>(0))
                    .optional()
            })
            .map(Option::flatten)
            .map_err(self.sql("reading a file's copy target"))
    }

    /// Our copy of `path` went up beside someone else's edit as `info`'s item
    /// (at the row's `copy_to`), in one transaction: the copy is recorded in
    /// `conflict_copies` (a one-off snapshot: not a local file, never
    /// mirrored), and the row stops pointing at it. The row keeps *their*
    /// item, eTag and hashes as its remote side, so the same remote edit is
    /// neither uploaded over nor reported again; a later local edit of the
    /// file is a normal upload to its own path. `fp` is the fingerprint
    /// (size, mtime ns, inode) the upload read, held still: while the row
    /// still has it, what was sent *is* the file's content and is recorded
    /// as such (an edit the scan could not see, same size and mtime, must
    /// not later go over theirs as if it were new). Returns `Synced`, or
    /// `Pending` when a scan recorded a newer edit meanwhile (that one goes
    /// to the path). Refused for a skipped file.
    pub fn record_conflict_copy(
        &mut self,
        job: &str,
        path: &str,
        fp: (u64, i64, u64),
        info: &SyncedInfo,
        copy_size: u64,
    ) -> Result<FileStateKind, StateError> {
        self.transition(job, path, "recording a conflict copy", |tx, current| {
            current.refuse_if_skipped(job, path, "synced")?;
            let (copy, same_fp): (Option<String>, bool) = tx
                .prepare_cached(
                    "SELECT copy_to, size = ?3 AND mtime_ns = ?4 AND inode = ?5
                     FROM files WHERE job = ?1 AND path = ?2",
                )?
                .query_row(
                    params![job, path, u64_to_sql(fp.0), fp.1, u64_to_sql(fp.2)],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
            let now = unix_now();
            if let (Some(copy), Some(item_id)) = (copy, &info.item_id) {
                tx.prepare_cached(
                    "INSERT INTO conflict_copies (job, path, source_path, item_id, etag, size,
                         created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT (job, path) DO UPDATE SET source_path = excluded.source_path,
                         item_id = excluded.item_id, etag = excluded.etag,
                         size = excluded.size, created_at = excluded.created_at",
                )?
                .execute(params![
                    job,
                    copy,
                    path,
                    item_id,
                    info.etag,
                    u64_to_sql(copy_size),
                    now
                ])?;
            }
            let same = same_fp || current.hashes.as_ref() == Some(&info.content);
            let state = if same {
                FileStateKind::Synced
            } else {
                FileStateKind::Pending
            };
            // A row a newer scan moved on keeps what that scan recorded.
            let hashes = if same_fp {
                Some(&info.content)
            } else {
                current.hashes.as_ref()
            };
            let (sha1, quick_xor) = (hashes.map(|h| &h.sha1), hashes.map(|h| &h.quick_xor));
            tx.prepare_cached(
                "UPDATE files SET state = ?3, copy_to = NULL, sha1 = ?5, quick_xor = ?6,
                     attempts = 0, next_attempt = NULL, last_error = NULL, updated_at = ?4
                 WHERE job = ?1 AND path = ?2",
            )?
            .execute(params![job, path, state.as_str(), now, sha1, quick_xor])?;
            Ok(state)
        })
    }

    /// An upload failed; counts the attempt and records why and when to try
    /// again (`next_attempt`, Unix seconds; `None`: next run). Returns the
    /// attempt count, for the log line. Refused for a skipped file.
    pub fn mark_failed(
        &mut self,
        job: &str,
        path: &str,
        error: &str,
        next_attempt: Option<i64>,
    ) -> Result<u32, StateError> {
        self.mark_failed_with(job, path, error, |_| next_attempt)
    }

    /// [`Store::mark_failed`] with the next attempt chosen from the number
    /// of failures in a row, this one included (a backoff that grows).
    pub fn mark_failed_with(
        &mut self,
        job: &str,
        path: &str,
        error: &str,
        next_attempt: impl FnOnce(u32) -> Option<i64>,
    ) -> Result<u32, StateError> {
        self.transition(job, path, "marking a file failed", |tx, current| {
            current.refuse_if_skipped(job, path, "failed")?;
            let attempts = current.attempts.saturating_add(1);
            let next_attempt = next_attempt(attempts);
            tx.prepare_cached(
                "UPDATE files SET state = 'failed', attempts = ?3, last_error = ?4,
                     next_attempt = ?5, updated_at = ?6
                 WHERE job = ?1 AND path = ?2",
            )?
            .execute(params![
                job,
                path,
                attempts,
                error,
                next_attempt,
                unix_now()
            ])?;
            Ok(attempts)
        })
    }

    /// The file changed while it was being uploaded: queued again, and
    /// counted. Returns how many uploads in a row met it changing (reset
    /// only when one goes through, not by the scan's requeue).
    pub fn note_changed_while_sending(&mut self, job: &str, path: &str) -> Result<u32, StateError> {
        self.transition(job, path, "marking a file pending", |tx, _current| {
            tx.prepare_cached(
                "UPDATE files SET state = 'pending', next_attempt = NULL,
                     changed_while_sending = changed_while_sending + 1, updated_at = ?3
                 WHERE job = ?1 AND path = ?2
                 RETURNING changed_while_sending",
            )?
            .query_row(params![job, path, unix_now()], |r| r.get(0))
            .map_err(Into::into)
        })
    }

    /// Queues `path` again from any state (the file changed during upload, a
    /// remote delete is to be restored, a skip no longer applies). Clears
    /// failures and skip reason; keeps the remote item mapping.
    pub fn mark_pending(&mut self, job: &str, path: &str) -> Result<(), StateError> {
        self.transition(job, path, "marking a file pending", |tx, _current| {
            tx.prepare_cached(
                "UPDATE files SET state = 'pending', attempts = 0, next_attempt = NULL,
                     last_error = NULL, skip_reason = NULL, updated_at = ?3
                 WHERE job = ?1 AND path = ?2",
            )?
            .execute(params![job, path, unix_now()])?;
            Ok(())
        })
    }

    /// Runs one transition in a transaction: reads the current row (or fails
    /// with `NotFound`), lets `apply` check and write, commits.
    fn transition<T>(
        &mut self,
        job: &str,
        path: &str,
        context: &'static str,
        apply: impl FnOnce(&Transaction<'_>, &Current) -> Result<T, TransitionError>,
    ) -> Result<T, StateError> {
        let err = |e| sql_err(&self.db_path, context)(e);
        let tx = self.conn.transaction().map_err(err)?;
        let current = tx
            .prepare_cached(
                "SELECT state, sha1, quick_xor, attempts FROM files WHERE job = ?1 AND path = ?2",
            )
            .and_then(|mut stmt| {
                stmt.query_row([job, path], |row| {
                    Ok(Current {
                        state: row.get(0)?,
                        hashes: hashes_from(row.get(1)?, row.get(2)?),
                        attempts: row.get(3)?,
                    })
                })
                .optional()
            })
            .map_err(err)?
            .ok_or_else(|| StateError::NotFound {
                job: job.to_string(),
                path: path.to_string(),
            })?;
        let value = match apply(&tx, &current) {
            Ok(value) => value,
            Err(TransitionError::Sql(e)) => return Err(err(e)),
            Err(TransitionError::State(e)) => return Err(e),
        };
        tx.commit().map_err(err)?;
        Ok(value)
    }
}

/// The part of a row a transition decides on.
struct Current {
    state: String,
    hashes: Option<Hashes>,
    attempts: u32,
}

impl Current {
    fn refuse_if_skipped(
        &self,
        job: &str,
        path: &str,
        to: &'static str,
    ) -> Result<(), TransitionError> {
        if self.state == "skipped" {
            return Err(TransitionError::State(StateError::InvalidTransition {
                job: job.to_string(),
                path: path.to_string(),
                from: "skipped",
                to,
            }));
        }
        Ok(())
    }
}

/// Errors inside a transition: SQL ones get the store's context afterwards.
enum TransitionError {
    Sql(rusqlite::Error),
    State(StateError),
}

impl From<rusqlite::Error> for TransitionError {
    fn from(e: rusqlite::Error) -> Self {
        TransitionError::Sql(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case::new_file(None, ScanWrite::Insert)]
    #[case::unchanged((true, true, false), ScanWrite::Nothing)]
    #[case::touched((false, true, false), ScanWrite::Fingerprint)]
    #[case::edited((false, false, false), ScanWrite::Requeue)]
    #[case::edited_same_fingerprint((true, false, false), ScanWrite::Requeue)]
    #[case::skipped_seen_again((true, true, true), ScanWrite::Requeue)]
    #[case::skipped_touched((false, true, true), ScanWrite::Requeue)]
    fn what_a_scan_writes(
        #[case] row: impl Into<Option<(bool, bool, bool)>>,
        #[case] write: ScanWrite,
    ) {
        assert_eq!(scan_write(row.into()), write);
    }
}
