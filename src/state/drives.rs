//! The `drives` and `folders` tables: what the store remembers about the
//! remote side beyond single files, so runs do not ask Graph again.
//!
//! A drive is resolved from (site URL, library name) once; its delta link
//! records where remote change tracking left off. Folders map a job's
//! relative folder path to the remote item id we created or found.

use std::collections::HashSet;

use rusqlite::{OptionalExtension, params};

use super::StateError;
use super::store::{Store, unix_now};

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
    pub fn record_folder(
        &mut self,
        job: &str,
        path: &str,
        item_id: &str,
    ) -> Result<(), StateError> {
        self.conn
            .prepare_cached(
                "INSERT INTO folders (job, path, item_id, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (job, path) DO UPDATE SET
                     item_id = excluded.item_id, updated_at = excluded.updated_at
                 WHERE folders.item_id <> excluded.item_id",
            )
            .and_then(|mut stmt| stmt.execute(params![job, path, item_id, unix_now()]))
            .map_err(self.sql("recording a folder"))?;
        Ok(())
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
