//! What the store remembers about the remote side's own changes (issue 6):
//! delta pages applied to the `files` and `folders` tables, walks of a job's
//! remote folder (adopting files that are already there), the open
//! `remote_changes` (deletes and edits by someone else) and their outcome
//! under the job's policy, and per-drive facts for `status`.
//!
//! Every delta page is recorded in one transaction, and the new delta link
//! is stored in the same transaction as the last page: a crash repeats
//! pages, never skips them, and applying a page twice changes nothing.
//!
//! What it does not do: talk to the network, read local files, or choose a
//! policy (the caller passes the outcome); `reconcile` does those.

use rusqlite::{OptionalExtension, Transaction, params};

use super::StateError;
use super::store::{Store, sql_err, u64_from_sql, u64_to_sql, unix_now};
use crate::hash::Hashes;
use crate::remote::{DeltaItem, RemoteItem};

/// A remote delete or edit of one of our files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteChangeKind {
    /// The item is gone from SharePoint (or its folder is).
    Deleted,
    /// Someone else changed its content.
    Edited,
}

impl RemoteChangeKind {
    fn as_str(self) -> &'static str {
        match self {
            RemoteChangeKind::Deleted => "deleted",
            RemoteChangeKind::Edited => "edited",
        }
    }
}

/// What was done about a remote change (the `outcome` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteChangeOutcome {
    /// Deleted remotely; queued to upload again.
    Restored,
    /// Deleted remotely; accepted (uploaded again only after a local change).
    Forgotten,
    /// Edited remotely; ours is queued to replace it (version history keeps theirs).
    Overwritten,
    /// Edited remotely; left alone, an open conflict.
    Skipped,
    /// Edited remotely; theirs stays at the path (the new baseline), ours
    /// goes up once beside it under a conflict name.
    KeptBoth,
}

impl RemoteChangeOutcome {
    /// The word stored in `outcome` and shown by `status`.
    pub fn as_str(self) -> &'static str {
        match self {
            RemoteChangeOutcome::Restored => "restored",
            RemoteChangeOutcome::Forgotten => "forgotten",
            RemoteChangeOutcome::Overwritten => "overwritten",
            RemoteChangeOutcome::Skipped => "skipped",
            RemoteChangeOutcome::KeptBoth => "kept-both",
        }
    }
}

/// One row of `remote_changes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteChange {
    pub job: String,
    pub path: String,
    pub kind: RemoteChangeKind,
    /// The remote item (the deleted one, or the edited one).
    pub item_id: Option<String>,
    /// Edited: the other edit's eTag, hash and size.
    pub etag: Option<String>,
    pub remote_quick_xor: Option<String>,
    pub remote_size: Option<u64>,
    /// When it was noticed (Unix seconds).
    pub seen_at: i64,
    /// `None` while open; `Some("skipped")` for a conflict left in place.
    pub outcome: Option<String>,
}

/// Our copy of a file, uploaded beside someone else's edit of it
/// (`on_remote_change = "keep-both"`); a row of `conflict_copies`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConflictCopy {
    pub job: String,
    /// The copy, relative to the job folder (local names, `/`-separated).
    pub path: String,
    /// The file it is a copy of.
    pub source_path: String,
    pub item_id: String,
    pub etag: Option<String>,
    pub size: u64,
    /// When it was uploaded (Unix seconds).
    pub created_at: i64,
}

/// Per-drive facts for `sharepush status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveStatus {
    pub site: String,
    pub library: String,
    pub drive_id: String,
    /// Whether a delta link is stored (false: the next reconcile starts over).
    pub has_delta_link: bool,
    /// When the delta link was stored (its age is what `status` shows).
    pub delta_updated_at: Option<i64>,
    /// When delta was last asked (even if nothing changed).
    pub delta_checked_at: Option<i64>,
    /// Remote deletes and edits of our files noticed on this drive, ever.
    pub changes_seen: u64,
}

/// What recording one delta page did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeltaPageStats {
    /// Entries on the page.
    pub items: u64,
    /// Remote deletes and edits of our files it revealed.
    pub changes: u64,
}

/// What a walk decided for one remote file, recorded by
/// [`Store::record_walk_page`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalkAction {
    /// Nothing to record beyond "seen".
    Seen { item_id: String },
    /// Our file, same content, new eTag (metadata change): record the eTag.
    Etag { path: String, item: RemoteItem },
    /// Our file, someone else's content: a remote edit.
    Edited { path: String, item: RemoteItem },
    /// The remote file equals the local one: record it synced, no upload.
    Adopt {
        path: String,
        size: u64,
        mtime_ns: i64,
        inode: u64,
        hashes: Hashes,
        item: RemoteItem,
    },
}

const CHANGE_COLUMNS: &str =
    "job, path, kind, item_id, etag, remote_quick_xor, remote_size, seen_at, outcome";

fn change_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RemoteChange> {
    let kind: String = row.get(2)?;
    Ok(RemoteChange {
        job: row.get(0)?,
        path: row.get(1)?,
        kind: if kind == "deleted" {
            RemoteChangeKind::Deleted
        } else {
            RemoteChangeKind::Edited
        },
        item_id: row.get(3)?,
        etag: row.get(4)?,
        remote_quick_xor: row.get(5)?,
        remote_size: row.get::<_, Option<i64>>(6)?.map(u64_from_sql),
        seen_at: row.get(7)?,
        outcome: row.get(8)?,
    })
}

/// Records (or re-opens) a remote change of `job`/`path`; returns false
/// when exactly this change is already recorded (a repeated delta page).
fn upsert_change(
    tx: &Transaction<'_>,
    job: &str,
    path: &str,
    kind: RemoteChangeKind,
    item_id: &str,
    edit: Option<(&Option<String>, &Option<String>, u64)>,
) -> rusqlite::Result<bool> {
    let (etag, qx, size) = match edit {
        Some((e, q, s)) => (e.clone(), q.clone(), Some(u64_to_sql(s))),
        None => (None, None, None),
    };
    let same: Option<bool> = tx
        .prepare_cached(
            "SELECT kind = ?3 AND item_id IS ?4 AND etag IS ?5 FROM remote_changes
             WHERE job = ?1 AND path = ?2",
        )?
        .query_row(params![job, path, kind.as_str(), item_id, etag], |r| {
            r.get(0)
        })
        .optional()?;
    if same == Some(true) {
        return Ok(false);
    }
    tx.prepare_cached(
        "INSERT INTO remote_changes (job, path, kind, item_id, etag, remote_quick_xor,
             remote_size, seen_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (job, path) DO UPDATE SET kind = excluded.kind,
             item_id = excluded.item_id, etag = excluded.etag,
             remote_quick_xor = excluded.remote_quick_xor, remote_size = excluded.remote_size,
             seen_at = excluded.seen_at, outcome = NULL, applied_at = NULL",
    )?
    .execute(params![
        job,
        path,
        kind.as_str(),
        item_id,
        etag,
        qx,
        size,
        unix_now()
    ])?;
    Ok(true)
}

/// The name to remember for where `item` sits (`None` when the service
/// left it out: not judged later).
fn place_name(item: &RemoteItem) -> Option<&str> {
    Some(item.name.as_str()).filter(|n| !n.is_empty())
}

/// Whether a delta entry places an item somewhere else than we recorded:
/// another name (SharePoint names are case-insensitive, so a change of case
/// alone is not a move) or another parent folder. Unknown on either side
/// is not judged, and neither is the library's root (no parent).
fn placed_elsewhere(
    item: &DeltaItem,
    recorded_name: Option<&str>,
    recorded_parent: Option<&str>,
) -> bool {
    if item.parent_id.is_none() {
        return false;
    }
    let renamed = match recorded_name {
        Some(name) if !item.name.is_empty() => {
            name != item.name && name.to_lowercase() != item.name.to_lowercase()
        }
        _ => false,
    };
    let moved = matches!(
        (recorded_parent, item.parent_id.as_deref()),
        (Some(before), Some(now)) if before != now
    );
    renamed || moved
}

/// A folder of ours is gone from its place (deleted, or moved or renamed
/// by someone else): its rows and those below it go, and every synced file
/// below it becomes a remote delete of its path.
fn folder_gone(tx: &Transaction<'_>, job: &str, folder: &str) -> rusqlite::Result<u64> {
    let mut changes = 0;
    let prefix = if folder.is_empty() {
        String::new()
    } else {
        format!("{folder}/")
    };
    let under = "(?2 = '' OR substr(path, 1, length(?2)) = ?2)";
    tx.prepare_cached(&format!(
        "DELETE FROM folders WHERE job = ?1 AND (path = ?3 OR {under})"
    ))?
    .execute(params![job, prefix, folder])?;
    let files: Vec<(String, String)> = tx
        .prepare_cached(&format!(
            "SELECT path, item_id FROM files WHERE job = ?1 AND state = 'synced'
             AND item_id IS NOT NULL AND {under}"
        ))?
        .query_map(params![job, prefix], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (path, id) in files {
        changes += upsert_change(tx, job, &path, RemoteChangeKind::Deleted, &id, None)? as u64;
    }
    Ok(changes)
}

/// Whether a remote item of ours still holds our content, so a new eTag is
/// no one else's edit: no hash reported yet (not judged), the hash we
/// uploaded or SharePoint's rewrite we recorded (`remote_quick_xor`), or the
/// local content (`local_quick_xor`). For a row whose change waits to go up
/// (`waiting_mtime_ns`: its local mtime), also an item carrying the mtime we
/// send, our own commit whose reply was lost. Shared by the delta and the
/// walk, so both reach the same verdict.
pub fn holds_our_content(
    item_quick_xor: Option<&str>,
    item_mtime: Option<chrono::DateTime<chrono::Utc>>,
    remote_quick_xor: Option<&str>,
    local_quick_xor: Option<&str>,
    waiting_mtime_ns: Option<i64>,
) -> bool {
    let our_upload = waiting_mtime_ns.is_some_and(|ns| {
        item_mtime.is_some_and(|t| t.timestamp() == ns.div_euclid(1_000_000_000))
    });
    our_upload
        || item_quick_xor.is_none()
        || item_quick_xor == remote_quick_xor
        || item_quick_xor == local_quick_xor
}

/// A row matched by a delta entry.
struct MatchedRow {
    job: String,
    path: String,
    /// Not yet uploaded as it is locally (`pending` or `failed`).
    waiting: bool,
    mtime_ns: i64,
    etag: Option<String>,
    remote_quick_xor: Option<String>,
    quick_xor: Option<String>,
    remote_name: Option<String>,
    remote_parent: Option<String>,
}

/// One delta entry against the tables; returns the changes it revealed.
///
/// An item of ours that someone else moved or renamed has left the path it
/// backed up: for that path it is a remote delete (`on_remote_delete`
/// decides), the same verdict a walk of the folder reaches after a `410`.
/// Its row no longer points at it, so a later local delete (`mirror`)
/// cannot delete it wherever it went.
fn apply_delta_item(tx: &Transaction<'_>, item: &DeltaItem) -> rusqlite::Result<u64> {
    let mut changes = 0;
    if item.deleted {
        // A file of ours.
        let rows: Vec<(String, String)> = tx
            .prepare_cached("SELECT job, path FROM files WHERE item_id = ?1 AND state = 'synced'")?
            .query_map([&item.id], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        for (job, path) in rows {
            changes +=
                upsert_change(tx, &job, &path, RemoteChangeKind::Deleted, &item.id, None)? as u64;
        }
        // A folder of ours: everything below it is gone too (business
        // drives may report only the folder).
        let folders: Vec<(String, String)> = tx
            .prepare_cached("SELECT job, path FROM folders WHERE item_id = ?1")?
            .query_map([&item.id], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        for (job, folder) in folders {
            changes += folder_gone(tx, &job, &folder)?;
        }
        return Ok(changes);
    }
    if item.is_folder {
        // Moved or renamed by someone else: the files below it left their
        // paths with it (drives report the folder, not each file below).
        let folders: Vec<(String, String, Option<String>, Option<String>)> = tx
            .prepare_cached("SELECT job, path, name, parent_id FROM folders WHERE item_id = ?1")?
            .query_map([&item.id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?
            .collect::<Result<_, _>>()?;
        for (job, folder, name, parent) in folders {
            if placed_elsewhere(item, name.as_deref(), parent.as_deref()) {
                tracing::warn!(job = %job, folder = %folder, now = %item.name, "folder moved or renamed in SharePoint by someone else; for this backup its files are gone from their paths (on_remote_delete decides)");
                changes += folder_gone(tx, &job, &folder)?;
            }
        }
        return Ok(changes);
    }
    // Synced rows, and rows whose local change waits to go up (pending,
    // failed): an edit made meanwhile must not be overwritten unseen by
    // that upload. Rows being uploaded are left out: the echo of our own
    // commit may arrive before it is recorded.
    let rows: Vec<MatchedRow> = tx
        .prepare_cached(
            "SELECT job, path, state <> 'synced', mtime_ns, etag, remote_quick_xor, quick_xor,
                 remote_name, remote_parent
             FROM files WHERE item_id = ?1 AND state IN ('synced', 'pending', 'failed')",
        )?
        .query_map([&item.id], |r| {
            Ok(MatchedRow {
                job: r.get(0)?,
                path: r.get(1)?,
                waiting: r.get(2)?,
                mtime_ns: r.get(3)?,
                etag: r.get(4)?,
                remote_quick_xor: r.get(5)?,
                quick_xor: r.get(6)?,
                remote_name: r.get(7)?,
                remote_parent: r.get(8)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    for row in rows {
        let (job, path) = (&row.job, &row.path);
        if row.etag.is_some() && row.etag == item.etag {
            continue;
        }
        if placed_elsewhere(
            item,
            row.remote_name.as_deref(),
            row.remote_parent.as_deref(),
        ) {
            tracing::warn!(job = %job, path = %path, now = %item.name, "moved or renamed in SharePoint by someone else; for this backup the path is empty now (on_remote_delete decides)");
            changes +=
                upsert_change(tx, job, path, RemoteChangeKind::Deleted, &item.id, None)? as u64;
            continue;
        }
        let ours = holds_our_content(
            item.quick_xor.as_deref(),
            item.mtime,
            row.remote_quick_xor.as_deref(),
            row.quick_xor.as_deref(),
            row.waiting.then_some(row.mtime_ns),
        );
        if ours {
            // Our content (our own mtime PATCH, a late hash, a change of
            // case, our own commit): remember the eTag so it is not looked
            // at again.
            tx.prepare_cached("UPDATE files SET etag = ?3 WHERE job = ?1 AND path = ?2")?
                .execute(params![job, path, item.etag])?;
            continue;
        }
        changes += upsert_change(
            tx,
            job,
            path,
            RemoteChangeKind::Edited,
            &item.id,
            Some((&item.etag, &item.quick_xor, item.size)),
        )? as u64;
    }
    Ok(changes)
}

impl Store {
    /// Records one delta page of drive `site`/`library` in one transaction;
    /// with `final_link` (the page carried `@odata.deltaLink`) the link is
    /// stored in the same transaction. Deletes and edits of our synced
    /// files become open [`RemoteChange`]s; items we do not know cost one
    /// indexed lookup each.
    pub fn record_delta_page(
        &mut self,
        site: &str,
        library: &str,
        items: &[DeltaItem],
        final_link: Option<&str>,
    ) -> Result<DeltaPageStats, StateError> {
        let context = "recording a delta page";
        let err = |e| sql_err(&self.db_path, context)(e);
        let tx = self.conn.transaction().map_err(err)?;
        let mut stats = DeltaPageStats {
            items: items.len() as u64,
            changes: 0,
        };
        for item in items {
            stats.changes += apply_delta_item(&tx, item).map_err(err)?;
        }
        let now = unix_now();
        tx.prepare_cached(
            "UPDATE drives SET changes_seen = changes_seen + ?3,
                 delta_link = coalesce(?4, delta_link),
                 delta_updated_at = CASE WHEN ?4 IS NULL THEN delta_updated_at ELSE ?5 END,
                 delta_checked_at = CASE WHEN ?4 IS NULL THEN delta_checked_at ELSE ?5 END
             WHERE site = ?1 AND library = ?2",
        )
        .and_then(|mut s| {
            s.execute(params![
                site,
                library,
                stats.changes as i64,
                final_link,
                now
            ])
        })
        .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(stats)
    }

    /// After `410 resyncRequired`: forgets the delta link and bumps the
    /// drive's epoch, so every job on it walks its folder again.
    pub fn restart_delta(&mut self, site: &str, library: &str) -> Result<(), StateError> {
        self.conn
            .prepare_cached(
                "UPDATE drives SET delta_link = NULL, delta_updated_at = NULL, epoch = epoch + 1
                 WHERE site = ?1 AND library = ?2",
            )
            .and_then(|mut s| s.execute([site, library]))
            .map_err(self.sql("restarting delta"))?;
        Ok(())
    }

    /// Whether `job` must walk its remote folder: never walked (first run,
    /// lost database), walked on another drive, or the drive lost its delta
    /// link since.
    pub fn walk_needed(&self, job: &str, site: &str, library: &str) -> Result<bool, StateError> {
        let done: Option<bool> = self
            .conn
            .prepare_cached(
                "SELECT w.drive_id = d.drive_id AND w.epoch >= d.epoch
                 FROM remote_walks w, drives d
                 WHERE w.job = ?1 AND d.site = ?2 AND d.library = ?3",
            )
            .and_then(|mut s| s.query_row([job, site, library], |r| r.get(0)).optional())
            .map_err(self.sql("reading a walk"))?;
        Ok(!done.unwrap_or(false))
    }

    /// Starts a walk of `job`'s remote folder: empties its set of seen
    /// items. Each job has its own set: jobs walk at the same time (one
    /// task each, one connection), and one job's start must not erase what
    /// another has seen so far (its finish would call those deletes).
    pub fn begin_walk(&mut self, job: &str) -> Result<(), StateError> {
        let context = "starting a walk";
        self.conn
            .execute_batch(
                "CREATE TEMP TABLE IF NOT EXISTS walk_seen_by_job
                     (job TEXT NOT NULL, item_id TEXT NOT NULL, PRIMARY KEY (job, item_id))
                     WITHOUT ROWID;",
            )
            .map_err(self.sql(context))?;
        self.conn
            .prepare_cached("DELETE FROM temp.walk_seen_by_job WHERE job = ?1")
            .and_then(|mut s| s.execute([job]))
            .map_err(self.sql(context))?;
        Ok(())
    }

    /// Records one page of a walk in one transaction; returns how many
    /// files were adopted.
    pub fn record_walk_page(
        &mut self,
        job: &str,
        actions: &[WalkAction],
    ) -> Result<u64, StateError> {
        let context = "recording a walk page";
        let err = |e| sql_err(&self.db_path, context)(e);
        let tx = self.conn.transaction().map_err(err)?;
        let mut adopted = 0;
        let now = unix_now();
        for action in actions {
            let id = match action {
                WalkAction::Seen { item_id } => item_id,
                WalkAction::Etag { path, item } => {
                    // Found at its path: where it sits now is ours.
                    tx.prepare_cached(
                        "UPDATE files SET etag = ?3, remote_name = ?4, remote_parent = ?5
                         WHERE job = ?1 AND path = ?2",
                    )
                    .and_then(|mut s| {
                        s.execute(params![
                            job,
                            path,
                            item.etag,
                            place_name(item),
                            item.parent_id
                        ])
                    })
                    .map_err(err)?;
                    &item.id
                }
                WalkAction::Edited { path, item } => {
                    upsert_change(
                        &tx,
                        job,
                        path,
                        RemoteChangeKind::Edited,
                        &item.id,
                        Some((&item.etag, &item.quick_xor, item.size)),
                    )
                    .map_err(err)?;
                    &item.id
                }
                WalkAction::Adopt {
                    path,
                    size,
                    mtime_ns,
                    inode,
                    hashes,
                    item,
                } => {
                    tx.prepare_cached(
                        "INSERT INTO files (job, path, size, mtime_ns, inode, sha1, quick_xor,
                             item_id, etag, remote_quick_xor, remote_size, state, updated_at,
                             remote_name, remote_parent)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 'synced', ?12,
                             ?13, ?14)
                         ON CONFLICT (job, path) DO UPDATE SET size = excluded.size,
                             mtime_ns = excluded.mtime_ns, inode = excluded.inode,
                             sha1 = excluded.sha1, quick_xor = excluded.quick_xor,
                             item_id = excluded.item_id, etag = excluded.etag,
                             remote_quick_xor = excluded.remote_quick_xor,
                             remote_size = excluded.remote_size, state = 'synced',
                             copy_to = NULL, attempts = 0, next_attempt = NULL, last_error = NULL,
                             skip_reason = NULL, updated_at = excluded.updated_at,
                             remote_name = excluded.remote_name,
                             remote_parent = excluded.remote_parent",
                    )
                    .and_then(|mut s| {
                        s.execute(params![
                            job,
                            path,
                            u64_to_sql(*size),
                            mtime_ns,
                            u64_to_sql(*inode),
                            hashes.sha1,
                            hashes.quick_xor,
                            item.id,
                            item.etag,
                            item.quick_xor,
                            u64_to_sql(item.size),
                            now,
                            place_name(item),
                            item.parent_id
                        ])
                    })
                    .map_err(err)?;
                    tx.prepare_cached("DELETE FROM sessions WHERE job = ?1 AND path = ?2")
                        .and_then(|mut s| s.execute(params![job, path]))
                        .map_err(err)?;
                    adopted += 1;
                    &item.id
                }
            };
            tx.prepare_cached(
                "INSERT OR IGNORE INTO temp.walk_seen_by_job (job, item_id) VALUES (?1, ?2)",
            )
            .and_then(|mut s| s.execute([job, id]))
            .map_err(err)?;
        }
        tx.commit().map_err(err)?;
        Ok(adopted)
    }

    /// Ends a complete walk: synced files of `job` whose item the walk did
    /// not see were deleted remotely (open changes), and the walk is
    /// recorded for the drive's current epoch. Returns the deletes found.
    pub fn finish_walk(&mut self, job: &str, site: &str, library: &str) -> Result<u64, StateError> {
        let context = "finishing a walk";
        let err = |e| sql_err(&self.db_path, context)(e);
        let tx = self.conn.transaction().map_err(err)?;
        let gone: Vec<(String, String)> = tx
            .prepare_cached(
                "SELECT path, item_id FROM files WHERE job = ?1 AND state = 'synced'
                 AND item_id IS NOT NULL
                 AND item_id NOT IN (SELECT item_id FROM temp.walk_seen_by_job WHERE job = ?1)",
            )
            .and_then(|mut s| {
                s.query_map([job], |r| Ok((r.get(0)?, r.get(1)?)))
                    .and_then(|rows| rows.collect())
            })
            .map_err(err)?;
        let mut found = 0u64;
        for (path, id) in &gone {
            found += upsert_change(&tx, job, path, RemoteChangeKind::Deleted, id, None)
                .map_err(err)? as u64;
        }
        tx.prepare_cached(
            "INSERT INTO remote_walks (job, drive_id, epoch, walked_at)
             SELECT ?1, drive_id, epoch, ?4 FROM drives WHERE site = ?2 AND library = ?3
             ON CONFLICT (job) DO UPDATE SET drive_id = excluded.drive_id,
                 epoch = excluded.epoch, walked_at = excluded.walked_at",
        )
        .and_then(|mut s| s.execute(params![job, site, library, unix_now()]))
        .map_err(err)?;
        tx.prepare_cached(
            "UPDATE drives SET changes_seen = changes_seen + ?3 WHERE site = ?1 AND library = ?2",
        )
        .and_then(|mut s| s.execute(params![site, library, found as i64]))
        .map_err(err)?;
        tx.execute("DELETE FROM temp.walk_seen_by_job WHERE job = ?1", [job])
            .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(found)
    }

    /// Forgets every remote folder recorded for `job` (its remote folder is
    /// gone: they are created again as needed).
    pub fn forget_folders(&mut self, job: &str) -> Result<(), StateError> {
        self.conn
            .prepare_cached("DELETE FROM folders WHERE job = ?1")
            .and_then(|mut s| s.execute([job]))
            .map_err(self.sql("forgetting folders"))?;
        Ok(())
    }

    /// Remote changes of `job` still to act on: open ones, and conflicts
    /// left in place (`skipped`), which a changed policy may now resolve.
    pub fn pending_remote_changes(&self, job: &str) -> Result<Vec<RemoteChange>, StateError> {
        let context = "listing remote changes";
        self.conn
            .prepare_cached(&format!(
                "SELECT {CHANGE_COLUMNS} FROM remote_changes
                 WHERE job = ?1 AND (outcome IS NULL OR outcome = 'skipped') ORDER BY path"
            ))
            .and_then(|mut s| {
                s.query_map([job], change_from_row)
                    .and_then(|rows| rows.collect())
            })
            .map_err(self.sql(context))
    }

    /// Applies the outcome chosen for a remote change to the file's row and
    /// closes it (a `Skipped` one stays listed as a conflict), in one
    /// transaction:
    /// - `Restored`: the file is pending with no remote item (uploaded anew);
    /// - `Forgotten`: the row keeps its state but no longer maps to an item;
    /// - `Overwritten`: pending, same item (replaced by path next upload);
    /// - `Skipped`: the row takes the other edit's eTag and hash, so the
    ///   same edit is not reported again;
    /// - `KeptBoth`: their edit becomes the row's remote side (item, eTag,
    ///   hash, size), the state is kept: theirs is accepted with nothing
    ///   copied (the local file is gone). [`Store::resolve_keep_both`] also
    ///   queues our copy beside it.
    pub fn resolve_remote_change(
        &mut self,
        change: &RemoteChange,
        outcome: RemoteChangeOutcome,
    ) -> Result<(), StateError> {
        let context = "resolving a remote change";
        let err = |e| sql_err(&self.db_path, context)(e);
        let tx = self.conn.transaction().map_err(err)?;
        let (job, path) = (&change.job, &change.path);
        let now = unix_now();
        let sql = match outcome {
            RemoteChangeOutcome::Restored => {
                "UPDATE files SET state = 'pending', item_id = NULL, etag = NULL,
                     remote_quick_xor = NULL, remote_size = NULL, copy_to = NULL, attempts = 0,
                     next_attempt = NULL, last_error = NULL, updated_at = ?3
                 WHERE job = ?1 AND path = ?2"
            }
            RemoteChangeOutcome::Forgotten => {
                "UPDATE files SET item_id = NULL, etag = NULL, updated_at = ?3
                 WHERE job = ?1 AND path = ?2"
            }
            RemoteChangeOutcome::Overwritten => {
                "UPDATE files SET state = 'pending', copy_to = NULL, attempts = 0,
                     next_attempt = NULL, last_error = NULL, updated_at = ?3
                 WHERE job = ?1 AND path = ?2 AND state <> 'skipped'"
            }
            RemoteChangeOutcome::Skipped => {
                "UPDATE files SET etag = ?4, remote_quick_xor = ?5, remote_size = ?6,
                     updated_at = ?3
                 WHERE job = ?1 AND path = ?2"
            }
            RemoteChangeOutcome::KeptBoth => {
                "UPDATE files SET item_id = coalesce(?7, item_id), etag = ?4,
                     remote_quick_xor = ?5, remote_size = ?6, updated_at = ?3
                 WHERE job = ?1 AND path = ?2"
            }
        };
        tx.prepare_cached(sql)
            .and_then(|mut s| {
                if outcome == RemoteChangeOutcome::Skipped {
                    s.execute(params![
                        job,
                        path,
                        now,
                        change.etag,
                        change.remote_quick_xor,
                        change.remote_size.map(u64_to_sql)
                    ])
                } else if outcome == RemoteChangeOutcome::KeptBoth {
                    s.execute(params![
                        job,
                        path,
                        now,
                        change.etag,
                        change.remote_quick_xor,
                        change.remote_size.map(u64_to_sql),
                        change.item_id
                    ])
                } else {
                    s.execute(params![job, path, now])
                }
            })
            .map_err(err)?;
        tx.prepare_cached(
            "UPDATE remote_changes SET outcome = ?3, applied_at = ?4 WHERE job = ?1 AND path = ?2",
        )
        .and_then(|mut s| s.execute(params![job, path, outcome.as_str(), now]))
        .map_err(err)?;
        tx.commit().map_err(err)
    }

    /// `on_remote_change = "keep-both"` for an edited file, in one
    /// transaction: their edit becomes the row's remote side (item, eTag,
    /// hash, size: the baseline the next delta compares against, so the
    /// same edit is never reported again), and the file is queued with
    /// `copy_to`, so its next upload goes to that path beside theirs
    /// instead of over it ([`Store::copy_target`],
    /// [`Store::record_conflict_copy`]). A saved upload session of the path
    /// is dropped: it targets the path itself and must never commit over
    /// theirs. The change is closed as `kept-both`.
    pub fn resolve_keep_both(
        &mut self,
        change: &RemoteChange,
        copy_to: &str,
    ) -> Result<(), StateError> {
        let context = "keeping both versions";
        let err = |e| sql_err(&self.db_path, context)(e);
        let tx = self.conn.transaction().map_err(err)?;
        let (job, path) = (&change.job, &change.path);
        let now = unix_now();
        tx.prepare_cached(
            "UPDATE files SET state = 'pending', copy_to = ?4, item_id = coalesce(?5, item_id),
                 etag = ?6, remote_quick_xor = ?7, remote_size = ?8, attempts = 0,
                 next_attempt = NULL, last_error = NULL, updated_at = ?3
             WHERE job = ?1 AND path = ?2 AND state <> 'skipped'",
        )
        .and_then(|mut s| {
            s.execute(params![
                job,
                path,
                now,
                copy_to,
                change.item_id,
                change.etag,
                change.remote_quick_xor,
                change.remote_size.map(u64_to_sql)
            ])
        })
        .map_err(err)?;
        tx.prepare_cached("DELETE FROM sessions WHERE job = ?1 AND path = ?2")
            .and_then(|mut s| s.execute(params![job, path]))
            .map_err(err)?;
        tx.prepare_cached(
            "UPDATE remote_changes SET outcome = ?3, applied_at = ?4 WHERE job = ?1 AND path = ?2",
        )
        .and_then(|mut s| {
            s.execute(params![
                job,
                path,
                RemoteChangeOutcome::KeptBoth.as_str(),
                now
            ])
        })
        .map_err(err)?;
        tx.commit().map_err(err)
    }

    /// The copies `job` uploaded beside someone else's edits, by path.
    pub fn conflict_copies(&self, job: &str) -> Result<Vec<ConflictCopy>, StateError> {
        let context = "listing conflict copies";
        self.conn
            .prepare_cached(
                "SELECT job, path, source_path, item_id, etag, size, created_at
                 FROM conflict_copies WHERE job = ?1 ORDER BY path",
            )
            .and_then(|mut s| {
                s.query_map([job], |r| {
                    Ok(ConflictCopy {
                        job: r.get(0)?,
                        path: r.get(1)?,
                        source_path: r.get(2)?,
                        item_id: r.get(3)?,
                        etag: r.get(4)?,
                        size: u64_from_sql(r.get(5)?),
                        created_at: r.get(6)?,
                    })
                })
                .and_then(|rows| rows.collect())
            })
            .map_err(self.sql(context))
    }

    /// Conflicts left in place (`on_remote_change = "skip"`), sorted by job
    /// and path; `job = None` lists every job's. For `status`, and for the
    /// run, which holds uploads of these paths.
    pub fn conflicts(&self, job: Option<&str>) -> Result<Vec<RemoteChange>, StateError> {
        let context = "listing conflicts";
        self.conn
            .prepare_cached(&format!(
                "SELECT {CHANGE_COLUMNS} FROM remote_changes
                 WHERE outcome = 'skipped' AND (?1 IS NULL OR job = ?1) ORDER BY job, path"
            ))
            .and_then(|mut s| {
                s.query_map([job], change_from_row)
                    .and_then(|rows| rows.collect())
            })
            .map_err(self.sql(context))
    }

    /// Every remote change recorded for `job` (open, applied, conflicts),
    /// newest first: what `status --verbose` or a test looks at.
    pub fn remote_changes(&self, job: &str) -> Result<Vec<RemoteChange>, StateError> {
        let context = "listing remote changes";
        self.conn
            .prepare_cached(&format!(
                "SELECT {CHANGE_COLUMNS} FROM remote_changes WHERE job = ?1
                 ORDER BY seen_at DESC, path"
            ))
            .and_then(|mut s| {
                s.query_map([job], change_from_row)
                    .and_then(|rows| rows.collect())
            })
            .map_err(self.sql(context))
    }

    /// Every resolved drive with its delta facts, for `status`.
    pub fn drive_statuses(&self) -> Result<Vec<DriveStatus>, StateError> {
        let context = "listing drives";
        self.conn
            .prepare_cached(
                "SELECT site, library, drive_id, delta_link IS NOT NULL, delta_updated_at,
                     delta_checked_at, changes_seen
                 FROM drives ORDER BY site, library",
            )
            .and_then(|mut s| {
                s.query_map([], |r| {
                    Ok(DriveStatus {
                        site: r.get(0)?,
                        library: r.get(1)?,
                        drive_id: r.get(2)?,
                        has_delta_link: r.get(3)?,
                        delta_updated_at: r.get(4)?,
                        delta_checked_at: r.get(5)?,
                        changes_seen: u64_from_sql(r.get(6)?),
                    })
                })
                .and_then(|rows| rows.collect())
            })
            .map_err(self.sql(context))
    }

    /// A local rename done on the server: the row of `from` moves to `to`
    /// (fingerprint of the file now at `to`) and stays synced with `item`.
    pub fn record_move(
        &mut self,
        job: &str,
        from: &str,
        to: &str,
        fingerprint: (u64, i64, u64),
        item: &RemoteItem,
    ) -> Result<(), StateError> {
        let context = "recording a move";
        let err = |e| sql_err(&self.db_path, context)(e);
        let tx = self.conn.transaction().map_err(err)?;
        tx.prepare_cached("DELETE FROM files WHERE job = ?1 AND path = ?2")
            .and_then(|mut s| s.execute(params![job, to]))
            .map_err(err)?;
        tx.prepare_cached(
            "UPDATE files SET path = ?3, size = ?4, mtime_ns = ?5, inode = ?6, item_id = ?7,
                 etag = ?8, state = 'synced', updated_at = ?9, remote_name = ?10,
                 remote_parent = ?11
             WHERE job = ?1 AND path = ?2",
        )
        .and_then(|mut s| {
            s.execute(params![
                job,
                from,
                to,
                u64_to_sql(fingerprint.0),
                fingerprint.1,
                u64_to_sql(fingerprint.2),
                item.id,
                item.etag,
                unix_now(),
                place_name(item),
                item.parent_id
            ])
        })
        .map_err(err)?;
        // A delta read by another job between our PATCH and this record
        // may have taken the move for someone else's: it was ours.
        tx.prepare_cached(
            "DELETE FROM remote_changes WHERE job = ?1 AND path = ?2 AND outcome IS NULL
                 AND kind = 'deleted' AND item_id = ?3",
        )
        .and_then(|mut s| s.execute(params![job, from, item.id]))
        .map_err(err)?;
        tx.commit().map_err(err)
    }
}
