//! The `drives` and `folders` tables: what the store remembers about the
//! remote side beyond single files, so runs do not ask Graph again.
//!
//! A drive is resolved from (site URL, library name) once; its delta link
//! records where remote change tracking left off. Folders map a job's
//! relative folder path to the remote item id we created or found.

use std::collections::HashSet;

use rusqlite::{OptionalExtension, params};

use super::StateError;
use super::store::{Store, sql_err, unix_now};
use crate::remote::RemoteItem;

/// What [`Store::replace_drive`] changed when a library turned out to have
/// been deleted and recreated (same site and name, new drive id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveReplaced {
    /// The jobs recorded on that site and library (sorted).
    pub jobs: Vec<String>,
    /// Files of those jobs queued to upload again (synced, uploading or
    /// failed before; their remote copies were in the old library).
    pub requeued: u64,
}

/// Where a job backed up to before its config pointed it elsewhere
/// ([`Store::note_job_target`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobTarget {
    pub site: String,
    pub library: String,
    /// `None` when recorded before folders were (schema 11).
    pub folder: Option<String>,
}

impl JobTarget {
    /// Whether a job at this target now pointing at `site`/`library`/
    /// `folder` points at another place: any of the three differs, case
    /// aside (SharePoint URLs and names ignore it). An unknown folder
    /// (recorded before folders were) is not judged.
    pub fn differs_from(&self, site: &str, library: &str, folder: &str) -> bool {
        let same = |a: &str, b: &str| a.to_lowercase() == b.to_lowercase();
        !same(&self.site, site)
            || !same(&self.library, library)
            || self.folder.as_deref().is_some_and(|f| !same(f, folder))
    }
}

/// The row of `job` in `job_libraries`, if any.
fn read_job_target(conn: &rusqlite::Connection, job: &str) -> rusqlite::Result<Option<JobTarget>> {
    conn.prepare_cached("SELECT site, library, folder FROM job_libraries WHERE job = ?1")?
        .query_row([job], |r| {
            Ok(JobTarget {
                site: r.get(0)?,
                library: r.get(1)?,
                folder: r.get(2)?,
            })
        })
        .optional()
}

/// Forgets everything `job` knew of its remote items (folder ids, open
/// upload sessions, open remote changes) and queues its synced, uploading
/// and failed files as pending with no remote item: the items are gone
/// (a recreated library) or elsewhere (the job now points at another
/// place). Returns how many files were queued.
fn requeue_job(tx: &rusqlite::Transaction<'_>, job: &str, now: i64) -> rusqlite::Result<u64> {
    for sql in [
        "DELETE FROM folders WHERE job = ?1",
        "DELETE FROM sessions WHERE job = ?1",
        // Paths relative to the job's folder: in the new place they would
        // name files that are not there (`status` listed them).
        "DELETE FROM conflict_copies WHERE job = ?1",
        "DELETE FROM remote_changes WHERE job = ?1
             AND (outcome IS NULL OR outcome = 'skipped')",
    ] {
        tx.prepare_cached(sql)?.execute([job])?;
    }
    let requeued = tx
        .prepare_cached(
            "UPDATE files SET state = 'pending', item_id = NULL, etag = NULL,
                 remote_quick_xor = NULL, remote_size = NULL, copy_to = NULL, attempts = 0,
                 next_attempt = NULL, last_error = NULL, updated_at = ?2
             WHERE job = ?1 AND state IN ('synced', 'uploading', 'failed')",
        )?
        .execute(params![job, now])? as u64;
    // Already pending (changed locally, or a keep-both copy queued) or
    // skipped now (grown too big, unreadable): their item ids name items of
    // the old place too, which a mirror delete of the path would otherwise
    // take; and a keep-both copy has no one's edit to sit beside in the new
    // place: the file goes to its own path.
    tx.prepare_cached(
        "UPDATE files SET item_id = NULL, etag = NULL, remote_quick_xor = NULL,
             remote_size = NULL, copy_to = NULL
         WHERE job = ?1 AND state IN ('pending', 'skipped')
             AND (item_id IS NOT NULL OR copy_to IS NOT NULL)",
    )?
    .execute([job])?;
    Ok(requeued)
}

/// A resolved document library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveRow {
    /// Site URL as written in the config.
    pub site: String,
    /// Library name as written in the config.
    pub library: String,
    pub drive_id: String,
    /// Where the next delta request starts; `None` means enumerate from scratch.
    pub delta_link: Option<String>,
    /// When `delta_link` was stored (Unix seconds); `status` shows its age.
    pub delta_updated_at: Option<i64>,
}

impl Store {
    /// The drive recorded for a site/library, if resolved before.
    pub fn drive(&self, site: &str, library: &str) -> Result<Option<DriveRow>, StateError> {
        self.conn
            .prepare_cached(
                "SELECT drive_id, delta_link, delta_updated_at FROM drives
                 WHERE site = ?1 AND library = ?2",
            )
            .and_then(|mut stmt| {
                stmt.query_row([site, library], |row| {
                    Ok(DriveRow {
                        site: site.to_string(),
                        library: library.to_string(),
                        drive_id: row.get(0)?,
                        delta_link: row.get(1)?,
                        delta_updated_at: row.get(2)?,
                    })
                })
                .optional()
            })
            .map_err(self.sql("reading a drive"))
    }

    /// Records the drive id a site/library resolved to. If it differs from
    /// the recorded one (library deleted and recreated), the old delta link
    /// is dropped: it describes another drive.
    pub fn save_drive_id(
        &mut self,
        site: &str,
        library: &str,
        drive_id: &str,
    ) -> Result<(), StateError> {
        self.conn
            .prepare_cached(
                "INSERT INTO drives (site, library, drive_id) VALUES (?1, ?2, ?3)
                 ON CONFLICT (site, library) DO UPDATE SET
                     drive_id = excluded.drive_id, delta_link = NULL, delta_updated_at = NULL
                 WHERE drives.drive_id <> excluded.drive_id",
            )
            .and_then(|mut stmt| stmt.execute([site, library, drive_id]))
            .map_err(self.sql("saving a drive id"))?;
        Ok(())
    }

    /// Where `job` was last recorded to upload to, if anywhere.
    pub fn job_target(&self, job: &str) -> Result<Option<JobTarget>, StateError> {
        read_job_target(&self.conn, job).map_err(self.sql("reading a job's library"))
    }

    /// Records where `job` uploads to (`site`, `library`, `folder`, as
    /// configured now), so [`Store::replace_drive`] finds every job of a
    /// recreated library. When the job pointed elsewhere before (another
    /// site, library or folder; case aside, as SharePoint names ignore it),
    /// everything known of the old place is dropped and every file of the
    /// job is queued to go up to the new one, in one transaction, and the
    /// job's folder is walked again (so files already there are adopted,
    /// not sent twice): returns where it pointed before. The copies in the
    /// old place stay there.
    pub fn note_job_target(
        &mut self,
        job: &str,
        site: &str,
        library: &str,
        folder: &str,
    ) -> Result<Option<JobTarget>, StateError> {
        let context = "recording a job's library";
        let err = |e| sql_err(&self.db_path, context)(e);
        let tx = self.conn.transaction().map_err(err)?;
        let before = read_job_target(&tx, job).map_err(err)?;
        let moved = before
            .as_ref()
            .filter(|b| b.differs_from(site, library, folder));
        let unchanged = before.as_ref().is_some_and(|b| {
            b.site == site && b.library == library && b.folder.as_deref() == Some(folder)
        });
        if unchanged {
            return Ok(None);
        }
        tx.prepare_cached(
            "INSERT INTO job_libraries (job, site, library, folder) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (job) DO UPDATE SET site = excluded.site, library = excluded.library,
                 folder = excluded.folder",
        )
        .and_then(|mut stmt| stmt.execute([job, site, library, folder]))
        .map_err(err)?;
        let moved = moved.cloned();
        if moved.is_some() {
            requeue_job(&tx, job, unix_now()).map_err(err)?;
            tx.prepare_cached("DELETE FROM remote_walks WHERE job = ?1")
                .and_then(|mut s| s.execute([job]))
                .map_err(err)?;
        }
        tx.commit().map_err(err)?;
        Ok(moved)
    }

    /// The library `site`/`library` answered with a new drive id: it was
    /// deleted and recreated, and everything we knew about the old drive
    /// describes items that no longer exist. In one transaction, only if
    /// the recorded id is still `old` (another job may have done it first;
    /// then `None`): records `new`, drops the delta link (and bumps the
    /// epoch, so every job walks again), and for every job recorded on that
    /// library ([`Store::note_job_target`]) forgets its remote folder ids,
    /// open upload sessions and open remote changes, and queues its synced,
    /// uploading and failed files as pending with no remote item, so the
    /// next run uploads them into the new library.
    pub fn replace_drive(
        &mut self,
        site: &str,
        library: &str,
        old: &str,
        new: &str,
    ) -> Result<Option<DriveReplaced>, StateError> {
        let context = "replacing a recreated library's drive id";
        let err = |e| sql_err(&self.db_path, context)(e);
        let tx = self.conn.transaction().map_err(err)?;
        let changed = tx
            .prepare_cached(
                "UPDATE drives SET drive_id = ?4, delta_link = NULL, delta_updated_at = NULL,
                     delta_checked_at = NULL, epoch = epoch + 1
                 WHERE site = ?1 AND library = ?2 AND drive_id = ?3",
            )
            .and_then(|mut s| s.execute([site, library, old, new]))
            .map_err(err)?;
        if changed == 0 {
            return Ok(None);
        }
        let jobs: Vec<String> = tx
            .prepare_cached(
                "SELECT job FROM job_libraries WHERE site = ?1 AND library = ?2 ORDER BY job",
            )
            .and_then(|mut s| {
                s.query_map([site, library], |r| r.get(0))
                    .and_then(|rows| rows.collect())
            })
            .map_err(err)?;
        let now = unix_now();
        let mut requeued = 0u64;
        for job in &jobs {
            requeued += requeue_job(&tx, job, now).map_err(err)?;
        }
        tx.commit().map_err(err)?;
        Ok(Some(DriveReplaced { jobs, requeued }))
    }

    /// Stores the delta link to continue from. Store it only after every page
    /// before it is recorded: a crash then repeats pages, never skips them.
    pub fn set_delta_link(
        &mut self,
        site: &str,
        library: &str,
        link: &str,
    ) -> Result<(), StateError> {
        self.update_delta(site, library, Some(link), "saving a delta link")
    }

    /// Forgets the delta link (after `410 resyncRequired`): the next reconcile
    /// enumerates the drive again.
    pub fn clear_delta_link(&mut self, site: &str, library: &str) -> Result<(), StateError> {
        self.update_delta(site, library, None, "clearing a delta link")
    }

    fn update_delta(
        &mut self,
        site: &str,
        library: &str,
        link: Option<&str>,
        context: &'static str,
    ) -> Result<(), StateError> {
        let at = link.map(|_| unix_now());
        let changed = self
            .conn
            .prepare_cached(
                "UPDATE drives SET delta_link = ?3, delta_updated_at = ?4
                 WHERE site = ?1 AND library = ?2",
            )
            .and_then(|mut stmt| stmt.execute(params![site, library, link, at]))
            .map_err(self.sql(context))?;
        if changed == 0 {
            return Err(StateError::DriveNotFound {
                site: site.to_string(),
                library: library.to_string(),
            });
        }
        Ok(())
    }

    /// The remote item id of a job's folder (relative path, `""` for the
    /// job's root folder), if we created or found it before.
    pub fn folder_item(&self, job: &str, path: &str) -> Result<Option<String>, StateError> {
        self.conn
            .prepare_cached("SELECT item_id FROM folders WHERE job = ?1 AND path = ?2")
            .and_then(|mut stmt| stmt.query_row([job, path], |row| row.get(0)).optional())
            .map_err(self.sql("reading a folder"))
    }

    /// Records a folder that exists remotely, so later runs skip creating it.
    /// Where it sits (name, parent) stays unknown: prefer
    /// [`Store::record_folder_item`], which lets a later move by someone
    /// else be noticed.
    pub fn record_folder(
        &mut self,
        job: &str,
        path: &str,
        item_id: &str,
    ) -> Result<(), StateError> {
        self.record_folder_at(job, path, item_id, None, None)
    }

    /// Records a folder that exists remotely as SharePoint reported it: its
    /// id, name and parent. A delta entry that later shows it with another
    /// name or parent means someone else moved or renamed it.
    pub fn record_folder_item(
        &mut self,
        job: &str,
        path: &str,
        item: &RemoteItem,
    ) -> Result<(), StateError> {
        self.record_folder_at(
            job,
            path,
            &item.id,
            Some(&item.name)
                .filter(|n| !n.is_empty())
                .map(String::as_str),
            item.parent_id.as_deref(),
        )
    }

    fn record_folder_at(
        &mut self,
        job: &str,
        path: &str,
        item_id: &str,
        name: Option<&str>,
        parent_id: Option<&str>,
    ) -> Result<(), StateError> {
        self.conn
            .prepare_cached(
                "INSERT INTO folders (job, path, item_id, updated_at, name, parent_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (job, path) DO UPDATE SET
                     item_id = excluded.item_id, updated_at = excluded.updated_at,
                     name = excluded.name, parent_id = excluded.parent_id
                 WHERE folders.item_id <> excluded.item_id
                     OR folders.name IS NOT excluded.name
                     OR folders.parent_id IS NOT excluded.parent_id",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![job, path, item_id, unix_now(), name, parent_id])
            })
            .map_err(self.sql("recording a folder"))?;
        Ok(())
    }

    /// Every folder of a job recorded as existing remotely, below its root
    /// (`""` left out): (relative path, item id), sorted by path.
    pub fn folder_items(&self, job: &str) -> Result<Vec<(String, String)>, StateError> {
        let context = "listing folders";
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT path, item_id FROM folders WHERE job = ?1 AND path <> '' ORDER BY path",
            )
            .map_err(self.sql(context))?;
        stmt.query_map([job], |row| Ok((row.get(0)?, row.get(1)?)))
            .and_then(|rows| rows.collect())
            .map_err(self.sql(context))
    }

    /// Forgets the folder at `path` and every folder recorded below it (the
    /// remote folder is gone, or no longer this job's to look after).
    pub fn forget_folder_tree(&mut self, job: &str, path: &str) -> Result<usize, StateError> {
        self.conn
            .prepare_cached(
                "DELETE FROM folders WHERE job = ?1
                 AND (path = ?2 OR substr(path, 1, length(?2) + 1) = ?2 || '/')",
            )
            .and_then(|mut s| s.execute([job, path]))
            .map_err(self.sql("forgetting folders"))
    }

    /// Whether any file of `job` is recorded below folder `path`.
    pub fn has_files_under(&self, job: &str, path: &str) -> Result<bool, StateError> {
        // A range on the primary key, not a scan of the job's rows: every
        // path below "a" sorts from "a/" up to (not including) "a0".
        self.conn
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM files WHERE job = ?1
                 AND path >= ?2 || '/' AND path < ?2 || '0')",
            )
            .and_then(|mut s| s.query_row([job, path], |r| r.get(0)))
            .map_err(self.sql("looking for files in a folder"))
    }

    /// Every folder path of a job known to exist remotely: the planner emits
    /// "create folder" only for the others.
    pub fn known_folders(&self, job: &str) -> Result<HashSet<String>, StateError> {
        let context = "listing folders";
        let mut stmt = self
            .conn
            .prepare_cached("SELECT path FROM folders WHERE job = ?1")
            .map_err(self.sql(context))?;
        stmt.query_map([job], |row| row.get(0))
            .and_then(|rows| rows.collect())
            .map_err(self.sql(context))
    }
}
