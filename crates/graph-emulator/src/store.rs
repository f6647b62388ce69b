//! The emulated tenant's content: sites, document libraries (drives), their
//! item trees, delta history, upload sessions, and where content lives on
//! disk.
//!
//! Metadata is in memory behind one mutex (held only for short, non-async
//! sections); file content is in `blobs/` and half-uploaded sessions in
//! `sessions/` under the data directory, written by the route modules while
//! streaming. This module enforces tree rules (case-insensitive names,
//! conflict behaviour, quota) but not HTTP rules, and renders no JSON.

use crate::error::GraphError;
use crate::options::Options;
use crate::qxh::QuickXor;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// `@microsoft.graph.conflictBehavior`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Conflict {
    /// 409 nameAlreadyExists when the name is taken.
    Fail,
    /// Overwrite the existing item.
    Replace,
    /// Pick a free name ("name 1.ext").
    Rename,
}

impl Conflict {
    /// Parse the query/body value (case-insensitive).
    pub fn parse(text: &str) -> Result<Self, GraphError> {
        match text.to_ascii_lowercase().as_str() {
            "fail" => Ok(Self::Fail),
            "replace" => Ok(Self::Replace),
            "rename" => Ok(Self::Rename),
            _ => Err(GraphError::bad_request(format!(
                "Invalid value for conflictBehavior: {text}"
            ))),
        }
    }
}

/// One SharePoint site.
#[derive(Debug, Clone)]
pub struct Site {
    /// Composite id `hostname,{collection},{web}`.
    pub id: String,
    /// Server-relative path, `/` for the root site.
    pub path: String,
    /// Last path segment (or the host for the root site).
    pub name: String,
    /// Indexes into `Store::drives`.
    pub drives: Vec<usize>,
}

/// A driveItem, file or folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Item {
    /// Opaque 34-character id, stable across renames and moves.
    pub id: String,
    /// Name as created (lookups are case-insensitive).
    pub name: String,
    /// Parent folder id; `None` only for the root.
    pub parent: Option<String>,
    /// Folder (true) or file.
    pub folder: bool,
    /// Content length of a file (folders compute theirs from children).
    pub size: u64,
    /// Base64 quickXorHash of a file's content.
    pub hash: Option<String>,
    /// File name of the content under `blobs/`.
    pub blob: Option<String>,
    /// Service-side creation time (Unix ms).
    pub created_ms: i64,
    /// Service-side modification time (Unix ms).
    pub modified_ms: i64,
    /// Client-side `fileSystemInfo.createdDateTime`.
    pub fs_created_ms: i64,
    /// Client-side `fileSystemInfo.lastModifiedDateTime`.
    pub fs_modified_ms: i64,
    /// GUID inside eTag and cTag.
    pub etag_guid: String,
    /// Bumped on every change (eTag).
    pub etag_n: u64,
    /// Bumped on content changes (cTag).
    pub ctag_n: u64,
    /// Drive change sequence of the last change (delta).
    pub seq: u64,
}

impl Item {
    /// `"{GUID},N"`, quotes included.
    pub fn etag(&self) -> String {
        format!("\"{{{}}},{}\"", self.etag_guid, self.etag_n)
    }

    /// `"c:{GUID},N"`, quotes included.
    pub fn ctag(&self) -> String {
        format!("\"c:{{{}}},{}\"", self.etag_guid, self.ctag_n)
    }

    /// Does an `If-Match` header value match this item's eTag or cTag?
    pub fn matches(&self, if_match: &str) -> bool {
        let value = if_match.trim();
        if value == "*" {
            return true;
        }
        let norm = |s: &str| {
            s.trim()
                .trim_start_matches("W/")
                .trim_matches('"')
                .to_ascii_lowercase()
        };
        norm(&self.etag()) == norm(value) || norm(&self.ctag()) == norm(value)
    }
}

/// A deleted item as delta reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tombstone {
    /// Id of the deleted item.
    pub id: String,
    /// Its parent when deleted.
    pub parent: String,
    /// Change sequence of the deletion.
    pub seq: u64,
    /// Depth when deleted, to order delta pages like live items.
    pub depth: usize,
    /// Whether it was a folder.
    pub folder: bool,
}

/// One document library.
#[derive(Debug)]
pub struct Drive {
    /// `b!...` id.
    pub id: String,
    /// Index of its site in `Store::sites`.
    pub site: usize,
    /// Display name ("Documents").
    pub name: String,
    /// URL segment ("Shared Documents").
    pub url_segment: String,
    /// Id of the root folder.
    pub root_id: String,
    /// Every live item, root included.
    pub items: HashMap<String, Item>,
    /// Folder id -> lowercase name -> child id; derived, rebuilt on load.
    pub children: HashMap<String, BTreeMap<String, String>>,
    /// Deleted items in deletion order.
    pub tombstones: Vec<Tombstone>,
    /// Last change sequence handed out.
    pub seq: u64,
    /// Delta tokens older than this answer 410 (after a reset).
    pub min_valid_seq: u64,
    /// Bytes held by files; derived, kept by `insert`/`remove`/`commit_file`
    /// and rebuilt on load, so the quota check costs nothing per upload.
    used_bytes: u64,
    /// Deleted by an administrator (`POST /_emulator/delete-library`): its
    /// id answers `404 itemNotFound` and the site no longer lists it.
    pub deleted: bool,
}

/// Where a path lookup ended.
#[derive(Debug)]
pub enum Resolved {
    /// The item exists.
    Found(String),
    /// All but the last segment exist: `parent` is a folder, `name` is free.
    Missing {
        /// Existing parent folder.
        parent: String,
        /// The missing last name.
        name: String,
    },
    /// An intermediate segment is missing or is a file.
    NoParent,
}

impl Drive {
    fn new(id: String, site: usize, name: String, now_ms: i64) -> Self {
        let root_id = item_id_from(&id);
        let root = Item {
            id: root_id.clone(),
            name: "root".into(),
            parent: None,
            folder: true,
            size: 0,
            hash: None,
            blob: None,
            created_ms: now_ms,
            modified_ms: now_ms,
            fs_created_ms: now_ms,
            fs_modified_ms: now_ms,
            etag_guid: guid_from(&format!("etag:{id}")).to_uppercase(),
            etag_n: 1,
            ctag_n: 1,
            seq: 1,
        };
        let url_segment = if name == "Documents" {
            "Shared Documents".to_string()
        } else {
            name.clone()
        };
        let mut d = Self {
            id,
            site,
            name,
            url_segment,
            root_id: root_id.clone(),
            items: HashMap::new(),
            children: HashMap::new(),
            tombstones: Vec::new(),
            seq: 1,
            min_valid_seq: 0,
            used_bytes: 0,
            deleted: false,
        };
        d.children.insert(root_id.clone(), BTreeMap::new());
        d.items.insert(root_id, root);
        d
    }

    /// The item with this id (case-sensitive, as ids are).
    pub fn get(&self, id: &str) -> Option<&Item> {
        self.items.get(id)
    }

    /// Child of a folder by name, case-insensitively.
    pub fn child(&self, parent: &str, name: &str) -> Option<&Item> {
        let id = self.children.get(parent)?.get(&name.to_lowercase())?;
        self.items.get(id)
    }

    /// Walk `segments` from `base`.
    pub fn resolve(&self, base: &str, segments: &[String]) -> Resolved {
        let mut cur = base.to_string();
        for (i, seg) in segments.iter().enumerate() {
            let last = i + 1 == segments.len();
            match self.child(&cur, seg) {
                Some(item) => cur = item.id.clone(),
                None if last && self.items.get(&cur).is_some_and(|p| p.folder) => {
                    return Resolved::Missing {
                        parent: cur,
                        name: seg.clone(),
                    };
                }
                None => return Resolved::NoParent,
            }
        }
        Resolved::Found(cur)
    }

    /// Path relative to the root, `a/b.txt` ("" for the root).
    pub fn rel_path(&self, id: &str) -> String {
        let mut parts = Vec::new();
        let mut cur = self.items.get(id);
        while let Some(item) = cur {
            match &item.parent {
                Some(p) => {
                    parts.push(item.name.as_str());
                    cur = self.items.get(p);
                }
                None => break,
            }
        }
        parts.reverse();
        parts.join("/")
    }

    /// Number of ancestors (root is 0).
    pub fn depth(&self, id: &str) -> usize {
        let mut n = 0;
        let mut cur = self.items.get(id).and_then(|i| i.parent.clone());
        while let Some(p) = cur {
            n += 1;
            cur = self.items.get(&p).and_then(|i| i.parent.clone());
        }
        n
    }

    /// Is `id` equal to `ancestor` or below it?
    pub fn is_within(&self, id: &str, ancestor: &str) -> bool {
        let mut cur = Some(id.to_string());
        while let Some(c) = cur {
            if c == ancestor {
                return true;
            }
            cur = self.items.get(&c).and_then(|i| i.parent.clone());
        }
        false
    }

    /// Content bytes under a folder (or of a file).
    pub fn size_of(&self, id: &str) -> u64 {
        let Some(item) = self.items.get(id) else {
            return 0;
        };
        if !item.folder {
            return item.size;
        }
        self.children
            .get(id)
            .map(|c| c.values().map(|k| self.size_of(k)).sum())
            .unwrap_or(0)
    }

    /// Longest relative path (in chars) below `id`, measured from `id`
    /// itself (0 for a file).
    pub fn deepest_suffix(&self, id: &str) -> usize {
        self.children
            .get(id)
            .map(|c| {
                c.values()
                    .map(|k| {
                        let name = self
                            .items
                            .get(k)
                            .map(|i| i.name.chars().count())
                            .unwrap_or(0);
                        1 + name + self.deepest_suffix(k)
                    })
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0)
    }

    /// Bytes of content in the library.
    pub fn used(&self) -> u64 {
        self.used_bytes
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Record a change to an item (eTag, and cTag when content changed).
    pub fn touch(&mut self, id: &str, content: bool, now_ms: i64) {
        let seq = self.next_seq();
        if let Some(item) = self.items.get_mut(id) {
            item.seq = seq;
            item.etag_n += 1;
            if content {
                item.ctag_n += 1;
            }
            item.modified_ms = now_ms;
        }
    }

    /// Insert a new item under its parent.
    pub fn insert(&mut self, mut item: Item) -> String {
        item.seq = self.next_seq();
        let id = item.id.clone();
        if let Some(parent) = &item.parent {
            self.children
                .entry(parent.clone())
                .or_default()
                .insert(item.name.to_lowercase(), id.clone());
        }
        if item.folder {
            self.children.entry(id.clone()).or_default();
        } else {
            self.used_bytes += item.size;
        }
        self.items.insert(id.clone(), item);
        id
    }

    /// Delete an item and everything below it; returns their content blobs.
    pub fn remove(&mut self, id: &str) -> Vec<String> {
        let mut blobs = Vec::new();
        let Some(item) = self.items.get(id) else {
            return blobs;
        };
        if let Some(parent) = item.parent.clone() {
            let key = item.name.to_lowercase();
            if let Some(c) = self.children.get_mut(&parent) {
                c.remove(&key);
            }
        }
        self.remove_rec(id, &mut blobs);
        blobs
    }

    fn remove_rec(&mut self, id: &str, blobs: &mut Vec<String>) {
        let kids: Vec<String> = self
            .children
            .get(id)
            .map(|c| c.values().cloned().collect())
            .unwrap_or_default();
        // Children first, so a delta page never lists a child after its
        // deleted parent is gone from the client's view.
        for k in kids {
            self.remove_rec(&k, blobs);
        }
        let depth = self.depth(id);
        let seq = self.next_seq();
        self.children.remove(id);
        if let Some(item) = self.items.remove(id) {
            if !item.folder {
                self.used_bytes = self.used_bytes.saturating_sub(item.size);
            }
            if let Some(b) = item.blob {
                blobs.push(b);
            }
            self.tombstones.push(Tombstone {
                id: item.id,
                parent: item.parent.unwrap_or_default(),
                seq,
                depth,
                folder: item.folder,
            });
        }
    }

    /// Move and/or rename an item (no checks).
    pub fn relink(&mut self, id: &str, new_parent: &str, new_name: &str, now_ms: i64) {
        let Some(item) = self.items.get(id) else {
            return;
        };
        if let Some(old_parent) = item.parent.clone() {
            let key = item.name.to_lowercase();
            if let Some(c) = self.children.get_mut(&old_parent) {
                c.remove(&key);
            }
        }
        self.children
            .entry(new_parent.to_string())
            .or_default()
            .insert(new_name.to_lowercase(), id.to_string());
        if let Some(item) = self.items.get_mut(id) {
            item.parent = Some(new_parent.to_string());
            item.name = new_name.to_string();
        }
        self.touch(id, false, now_ms);
    }

    /// A free name in `parent` derived from `name` ("a 1.txt", "a 2.txt"...).
    pub fn free_name(&self, parent: &str, name: &str) -> String {
        let (stem, ext) = match name.rfind('.') {
            Some(i) if i > 0 => (&name[..i], &name[i..]),
            _ => (name, ""),
        };
        (1..)
            .map(|n| format!("{stem} {n}{ext}"))
            .find(|cand| self.child(parent, cand).is_none())
            .unwrap_or_else(|| name.to_string())
    }

    /// Rebuilds the derived indexes (children, bytes used) after a load.
    fn rebuild_children(&mut self) {
        self.children.clear();
        self.used_bytes = self
            .items
            .values()
            .filter(|i| !i.folder)
            .map(|i| i.size)
            .sum();
        let ids: Vec<(String, Option<String>, String, bool)> = self
            .items
            .values()
            .map(|i| {
                (
                    i.id.clone(),
                    i.parent.clone(),
                    i.name.to_lowercase(),
                    i.folder,
                )
            })
            .collect();
        for (id, parent, key, folder) in ids {
            if folder {
                self.children.entry(id.clone()).or_default();
            }
            if let Some(p) = parent {
                self.children.entry(p).or_default().insert(key, id);
            }
        }
    }
}

/// An upload session (graph-api.md §3).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadSession {
    /// Id in the upload URL.
    pub id: String,
    /// The credential carried by the upload URL (`tempauth`).
    pub secret: String,
    /// Index of the drive.
    pub drive: usize,
    /// Parent folder the file goes into.
    pub parent: String,
    /// File name.
    pub name: String,
    /// Conflict behaviour, applied again at commit.
    pub conflict: Conflict,
    /// `fileSystemInfo.createdDateTime` from the request.
    pub fs_created_ms: Option<i64>,
    /// `fileSystemInfo.lastModifiedDateTime` from the request.
    pub fs_modified_ms: Option<i64>,
    /// Unix ms after which the URL answers 404.
    pub expires_ms: i64,
    /// Total declared by the first fragment.
    pub total: Option<u64>,
    /// Next expected byte.
    pub next: u64,
    /// Hash of bytes `0..next`.
    pub hasher: QuickXor,
    /// A fragment is being received right now.
    #[serde(skip)]
    pub busy: bool,
}

/// All content metadata of the emulated tenant.
#[derive(Debug)]
pub struct Store {
    /// Root of `blobs/` and `sessions/`.
    pub dir: PathBuf,
    /// Sites, root site first.
    pub sites: Vec<Site>,
    /// Libraries of all sites.
    pub drives: Vec<Drive>,
    /// Open upload sessions by id.
    pub sessions: HashMap<String, UploadSession>,
    /// Quota per library.
    pub quota: u64,
}

impl Store {
    /// The tenant as configured, empty.
    pub fn new(dir: PathBuf, opts: &Options, now_ms: i64) -> Self {
        let mut sites = Vec::new();
        let mut drives = Vec::new();
        let mut specs = vec![("/".to_string(), vec!["Documents".to_string()])];
        for s in &opts.sites {
            let path = normalize_site_path(&s.path);
            if path == "/" {
                specs[0].1 = s.libraries.clone();
            } else {
                specs.push((path, s.libraries.clone()));
            }
        }
        for (path, libs) in specs {
            let site_idx = sites.len();
            let collection = guid_from(&format!("site:{}:{path}:collection", opts.hostname));
            let web = guid_from(&format!("site:{}:{path}:web", opts.hostname));
            let mut drive_idx = Vec::new();
            for lib in libs {
                let mut raw = Vec::new();
                for part in ["collection", "web", &format!("list:{lib}")] {
                    let mut h = Sha1::new();
                    h.update(format!("{}:{path}:{part}", opts.hostname).as_bytes());
                    raw.extend_from_slice(&h.finalize()[..16]);
                }
                let id = format!(
                    "b!{}",
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
                );
                drive_idx.push(drives.len());
                drives.push(Drive::new(id, site_idx, lib, now_ms));
            }
            let name = if path == "/" {
                opts.hostname.clone()
            } else {
                path.rsplit('/').next().unwrap_or_default().to_string()
            };
            sites.push(Site {
                id: format!("{},{collection},{web}", opts.hostname),
                path,
                name,
                drives: drive_idx,
            });
        }
        Self {
            dir,
            sites,
            drives,
            sessions: HashMap::new(),
            quota: opts.quota_bytes,
        }
    }

    /// The library `GET tree` and most tests look at: the first library of
    /// the first configured site (else the root site's).
    pub fn default_drive(&self) -> usize {
        self.sites
            .get(1)
            .or(self.sites.first())
            .and_then(|s| s.drives.first().copied())
            .unwrap_or(0)
    }

    /// Drive index by id (deleted libraries are not found).
    pub fn drive_index(&self, id: &str) -> Option<usize> {
        self.drives.iter().position(|d| d.id == id && !d.deleted)
    }

    /// The live libraries of site `site`, in configured order.
    pub fn site_drives(&self, site: usize) -> impl Iterator<Item = usize> + '_ {
        self.sites[site]
            .drives
            .iter()
            .copied()
            .filter(|&d| !self.drives[d].deleted)
    }

    /// A library by site (server-relative path such as `/sites/demo`, or a
    /// site URL `https://host/sites/demo`; `None`: the default library's
    /// site) and name (case-insensitive; `None`: the default library),
    /// deleted or not.
    pub fn find_library(&self, site: Option<&str>, library: Option<&str>) -> Option<usize> {
        let site = match site {
            None => self.drives[self.default_drive()].site,
            Some(s) => {
                let path = match s.split_once("://") {
                    Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
                    None => s,
                };
                let want = normalize_site_path(path).to_lowercase();
                self.sites
                    .iter()
                    .position(|x| x.path.to_lowercase() == want)?
            }
        };
        match library {
            None if site == self.drives[self.default_drive()].site => Some(self.default_drive()),
            None => self.sites[site].drives.first().copied(),
            Some(name) => self.sites[site]
                .drives
                .iter()
                .copied()
                .find(|&d| self.drives[d].name.eq_ignore_ascii_case(name)),
        }
    }

    /// Deletes library `drive` (as an administrator would): its content and
    /// open sessions are gone, its id answers 404, its site no longer lists
    /// it. Returns its id.
    pub fn delete_library(&mut self, drive: usize) -> String {
        let d = &self.drives[drive];
        let (id, site, name) = (d.id.clone(), d.site, d.name.clone());
        self.drop_library_content(drive);
        self.drives[drive] = Drive::new(id.clone(), site, name, 0);
        self.drives[drive].deleted = true;
        id
    }

    /// Deletes library `drive` (if it is not already) and creates it again
    /// under the same name with a new drive id, empty, as SharePoint does
    /// when an administrator deletes a library and makes a new one. Returns
    /// (old id, new id).
    pub fn recreate_library(&mut self, drive: usize, now_ms: i64) -> (String, String) {
        let d = &self.drives[drive];
        let (old, site, name) = (d.id.clone(), d.site, d.name.clone());
        self.drop_library_content(drive);
        let new = new_drive_id();
        self.drives[drive] = Drive::new(new.clone(), site, name, now_ms);
        (old, new)
    }

    /// Removes a library's blobs and upload sessions.
    fn drop_library_content(&mut self, drive: usize) {
        for item in self.drives[drive].items.values() {
            if let Some(b) = &item.blob {
                let _ = std::fs::remove_file(self.blob_path(b));
            }
        }
        let gone: Vec<String> = self
            .sessions
            .values()
            .filter(|s| s.drive == drive)
            .map(|s| s.id.clone())
            .collect();
        for id in gone {
            self.sessions.remove(&id);
            let _ = std::fs::remove_file(self.session_path(&id));
        }
    }

    /// Decoded server-relative path of `name` inside folder `parent`.
    pub fn server_relative(&self, drive: usize, parent: &str, name: &str) -> String {
        let d = &self.drives[drive];
        let site = &self.sites[d.site];
        let rel = d.rel_path(parent);
        let mut s = String::new();
        if site.path != "/" {
            s.push_str(&site.path);
        }
        s.push('/');
        s.push_str(&d.url_segment);
        if !rel.is_empty() {
            s.push('/');
            s.push_str(&rel);
        }
        if !name.is_empty() {
            s.push('/');
            s.push_str(name);
        }
        s
    }

    /// Content file of a blob.
    pub fn blob_path(&self, blob: &str) -> PathBuf {
        self.dir.join("blobs").join(blob)
    }

    /// Partial content of an upload session.
    pub fn session_path(&self, id: &str) -> PathBuf {
        self.dir.join("sessions").join(format!("{id}.part"))
    }

    /// Would `extra` more bytes in a drive (replacing `replacing` bytes)
    /// exceed the quota?
    pub fn check_quota(&self, drive: usize, extra: u64, replacing: u64) -> Result<(), GraphError> {
        let used = self.drives[drive].used().saturating_sub(replacing);
        if used.saturating_add(extra) > self.quota {
            return Err(GraphError::quota());
        }
        Ok(())
    }

    /// Put finished file content at `parent/name`, honouring the conflict
    /// behaviour. Returns the item id, whether it is new (201) or replaced
    /// (200), and a content blob that is no longer referenced.
    #[allow(clippy::too_many_arguments)]
    pub fn commit_file(
        &mut self,
        drive: usize,
        parent: &str,
        name: &str,
        conflict: Conflict,
        content: FileContent,
        now_ms: i64,
    ) -> Result<(String, bool, Option<String>), GraphError> {
        let d = &self.drives[drive];
        if !d.items.get(parent).is_some_and(|p| p.folder) {
            return Err(GraphError::not_found("The parent folder does not exist"));
        }
        let existing = d
            .child(parent, name)
            .map(|i| (i.id.clone(), i.folder, i.size));
        let mut name = name.to_string();
        let replacing = match (&existing, conflict) {
            (Some(_), Conflict::Fail) => return Err(GraphError::name_exists(&name)),
            (Some((_, true, _)), Conflict::Replace) => return Err(GraphError::name_exists(&name)),
            (Some((_, _, size)), Conflict::Replace) => *size,
            (Some(_), Conflict::Rename) => {
                name = d.free_name(parent, &name);
                0
            }
            (None, _) => 0,
        };
        self.check_quota(drive, content.size, replacing)?;
        let d = &mut self.drives[drive];
        match existing {
            Some((id, false, _)) if conflict == Conflict::Replace => {
                let item = d.items.get_mut(&id).expect("child index points to an item");
                let old_blob = item.blob.replace(content.blob);
                d.used_bytes = d.used_bytes.saturating_sub(item.size) + content.size;
                item.size = content.size;
                item.hash = Some(content.hash);
                item.fs_modified_ms = content.fs_modified_ms.unwrap_or(now_ms);
                if let Some(c) = content.fs_created_ms {
                    item.fs_created_ms = c;
                }
                d.touch(&id, true, now_ms);
                Ok((id, false, old_blob))
            }
            _ => {
                let item = Item {
                    id: new_item_id(),
                    name,
                    parent: Some(parent.to_string()),
                    folder: false,
                    size: content.size,
                    hash: Some(content.hash),
                    blob: Some(content.blob),
                    created_ms: now_ms,
                    modified_ms: now_ms,
                    fs_created_ms: content.fs_created_ms.unwrap_or(now_ms),
                    fs_modified_ms: content.fs_modified_ms.unwrap_or(now_ms),
                    etag_guid: uuid::Uuid::new_v4().to_string().to_uppercase(),
                    etag_n: 1,
                    ctag_n: 1,
                    seq: 0,
                };
                Ok((d.insert(item), true, None))
            }
        }
    }

    /// Create a folder (graph-api.md §4). Returns its id; `replace` on an
    /// existing folder returns that folder.
    pub fn create_folder(
        &mut self,
        drive: usize,
        parent: &str,
        name: &str,
        conflict: Conflict,
        now_ms: i64,
    ) -> Result<String, GraphError> {
        let d = &mut self.drives[drive];
        let mut name = name.to_string();
        if let Some(existing) = d.child(parent, &name) {
            match conflict {
                Conflict::Fail => return Err(GraphError::name_exists(&name)),
                Conflict::Replace if existing.folder => return Ok(existing.id.clone()),
                Conflict::Replace => {
                    let id = existing.id.clone();
                    let blobs = d.remove(&id);
                    for b in blobs {
                        let _ = std::fs::remove_file(self.dir.join("blobs").join(b));
                    }
                }
                Conflict::Rename => name = d.free_name(parent, &name),
            }
        }
        let d = &mut self.drives[drive];
        let item = Item {
            id: new_item_id(),
            name,
            parent: Some(parent.to_string()),
            folder: true,
            size: 0,
            hash: None,
            blob: None,
            created_ms: now_ms,
            modified_ms: now_ms,
            fs_created_ms: now_ms,
            fs_modified_ms: now_ms,
            etag_guid: uuid::Uuid::new_v4().to_string().to_uppercase(),
            etag_n: 1,
            ctag_n: 1,
            seq: 0,
        };
        Ok(d.insert(item))
    }

    /// Seed a library with `files` files of `size` bytes straight into the
    /// store (no HTTP, no upload sessions): `folder/dNNNNN/fNNNNNNN.bin`,
    /// `per_folder` files per subfolder, content byte `i` = `i % 251`
    /// ([`seed_content`]). The content is written once; every file gets its
    /// own blob name hard-linked to it (falling back to a copy), so replacing
    /// or deleting one leaves the others readable. Missing folders on the
    /// way to `folder` are created. Returns the folder's item id.
    pub fn seed(
        &mut self,
        drive: usize,
        spec: &SeedSpec,
        now_ms: i64,
    ) -> Result<String, GraphError> {
        if spec.per_folder == 0 {
            return Err(GraphError::bad_request("per_folder must be at least 1"));
        }
        self.check_quota(drive, spec.size.saturating_mul(spec.files as u64), 0)?;
        let content = seed_content(spec.size as usize);
        let hash = crate::qxh::quick_xor_hash(&content);
        let first = format!("seed-{}", new_item_id());
        let first_path = self.blob_path(&first);
        std::fs::write(&first_path, &content)
            .map_err(|e| GraphError::internal(format!("cannot write seed content: {e}")))?;
        let mut parent = self.drives[drive].root_id.clone();
        for seg in spec.folder.split('/').filter(|s| !s.is_empty()) {
            parent = self.create_folder(drive, &parent, seg, Conflict::Replace, now_ms)?;
        }
        let folder_id = parent.clone();
        let mut sub = String::new();
        for i in 0..spec.files {
            if i % spec.per_folder == 0 {
                let name = format!("d{:05}", i / spec.per_folder);
                sub = self.create_folder(drive, &folder_id, &name, Conflict::Replace, now_ms)?;
            }
            let blob = if i == 0 {
                first.clone()
            } else {
                let b = format!("seed-{}", new_item_id());
                let path = self.blob_path(&b);
                if std::fs::hard_link(&first_path, &path).is_err() {
                    std::fs::copy(&first_path, &path).map_err(|e| {
                        GraphError::internal(format!("cannot write seed content: {e}"))
                    })?;
                }
                b
            };
            let content = FileContent {
                blob,
                size: spec.size,
                hash: hash.clone(),
                fs_created_ms: Some(now_ms),
                fs_modified_ms: Some(now_ms),
            };
            let name = format!("f{i:07}.bin");
            if let Some(old) = self
                .commit_file(drive, &sub, &name, Conflict::Replace, content, now_ms)?
                .2
            {
                let _ = std::fs::remove_file(self.blob_path(&old));
            }
        }
        Ok(folder_id)
    }

    /// Empty every library; delta tokens from before answer 410.
    pub fn reset(&mut self, opts: &Options, now_ms: i64) {
        let fresh = Store::new(self.dir.clone(), opts, now_ms);
        for (d, f) in self.drives.iter_mut().zip(fresh.drives) {
            let seq = d.seq + 1;
            *d = f;
            d.seq = seq;
            d.min_valid_seq = seq;
            if let Some(root) = d.items.get_mut(&d.root_id) {
                root.seq = seq;
            }
        }
        self.sessions.clear();
        for sub in ["blobs", "sessions"] {
            let dir = self.dir.join(sub);
            let _ = std::fs::remove_dir_all(&dir);
            let _ = std::fs::create_dir_all(&dir);
        }
    }

    /// Serializable form of the metadata.
    pub fn snapshot(&self) -> StoreSnapshot {
        StoreSnapshot {
            drives: self
                .drives
                .iter()
                .map(|d| DriveSnapshot {
                    id: d.id.clone(),
                    site: Some(self.sites[d.site].path.clone()),
                    name: Some(d.name.clone()),
                    deleted: d.deleted,
                    items: d.items.values().cloned().collect(),
                    tombstones: d.tombstones.clone(),
                    seq: d.seq,
                    min_valid_seq: d.min_valid_seq,
                })
                .collect(),
            sessions: self.sessions.values().cloned().collect(),
        }
    }

    /// Load metadata saved by `snapshot` (drives no longer configured are
    /// ignored). A library recreated under a new id is matched by its site
    /// and name and keeps the new id.
    pub fn restore(&mut self, snap: StoreSnapshot) {
        for ds in snap.drives {
            let idx = self.drives.iter().position(|d| d.id == ds.id).or_else(|| {
                let (site, name) = (ds.site.as_deref()?, ds.name.as_deref()?);
                let idx = self.find_library(Some(site), Some(name))?;
                let d = &self.drives[idx];
                self.drives[idx] = Drive::new(ds.id.clone(), d.site, d.name.clone(), 0);
                Some(idx)
            });
            let Some(d) = idx.map(|i| &mut self.drives[i]) else {
                continue;
            };
            d.deleted = ds.deleted;
            d.items = ds.items.into_iter().map(|i| (i.id.clone(), i)).collect();
            if !d.items.contains_key(&d.root_id) {
                continue;
            }
            d.tombstones = ds.tombstones;
            d.seq = ds.seq;
            d.min_valid_seq = ds.min_valid_seq;
            d.rebuild_children();
        }
        self.sessions = snap
            .sessions
            .into_iter()
            .filter(|s| s.drive < self.drives.len())
            .map(|s| (s.id.clone(), s))
            .collect();
    }
}

/// A finished upload about to become a file.
#[derive(Debug)]
pub struct FileContent {
    /// Blob file name under `blobs/`.
    pub blob: String,
    /// Content length.
    pub size: u64,
    /// quickXorHash.
    pub hash: String,
    /// Client's creation time, if sent.
    pub fs_created_ms: Option<i64>,
    /// Client's modification time, if sent.
    pub fs_modified_ms: Option<i64>,
}

/// Metadata of one drive as persisted.
#[derive(Debug, Serialize, Deserialize)]
pub struct DriveSnapshot {
    id: String,
    /// Site path and library name, to find a recreated library (new id).
    #[serde(default)]
    site: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    deleted: bool,
    items: Vec<Item>,
    tombstones: Vec<Tombstone>,
    seq: u64,
    min_valid_seq: u64,
}

/// Metadata of the store as persisted.
#[derive(Debug, Serialize, Deserialize, Default)]
pub struct StoreSnapshot {
    drives: Vec<DriveSnapshot>,
    sessions: Vec<UploadSession>,
}

/// `/sites/demo/` -> `/sites/demo`; `` -> `/`.
pub fn normalize_site_path(path: &str) -> String {
    let trimmed = path.trim().trim_matches('/');
    if trimmed.is_empty() {
        "/".into()
    } else {
        format!("/{trimmed}")
    }
}

/// A GUID derived from a string, so ids survive restarts without storage.
pub fn guid_from(seed: &str) -> String {
    let mut h = Sha1::new();
    h.update(seed.as_bytes());
    let b = h.finalize();
    uuid::Builder::from_random_bytes(b[..16].try_into().expect("16 bytes"))
        .into_uuid()
        .to_string()
}

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

fn base32_id(bytes: &[u8]) -> String {
    let mut out = String::from("01");
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(BASE32[((acc >> bits) & 31) as usize] as char);
        }
    }
    out.truncate(34);
    out
}

/// A fresh item id shaped like SharePoint's (`01` + 32 base32 characters).
pub fn new_item_id() -> String {
    let a = uuid::Uuid::new_v4();
    let b = uuid::Uuid::new_v4();
    let mut bytes = a.as_bytes().to_vec();
    bytes.extend_from_slice(b.as_bytes());
    base32_id(&bytes)
}

/// A fresh drive id shaped like SharePoint's (`b!` + 64 base64url
/// characters), for a recreated library.
pub fn new_drive_id() -> String {
    let mut raw = Vec::with_capacity(48);
    for _ in 0..3 {
        raw.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    }
    format!(
        "b!{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    )
}

fn item_id_from(seed: &str) -> String {
    let mut h = Sha1::new();
    h.update(format!("root:{seed}").as_bytes());
    base32_id(&h.finalize())
}

/// Create the data directory layout.
pub fn prepare_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir.join("blobs"))?;
    std::fs::create_dir_all(dir.join("sessions"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> Store {
        Store::new(PathBuf::from("/nonexistent"), &Options::default(), 0)
    }

    fn content(size: u64) -> FileContent {
        FileContent {
            blob: uuid::Uuid::new_v4().to_string(),
            size,
            hash: "h".into(),
            fs_created_ms: None,
            fs_modified_ms: None,
        }
    }

    #[test]
    fn default_tenant_layout() {
        let s = store();
        assert_eq!(s.sites.len(), 2);
        assert_eq!(s.sites[1].path, "/sites/demo");
        assert!(s.sites[1].id.starts_with("contoso.sharepoint.com,"));
        let d = &s.drives[s.default_drive()];
        assert_eq!(d.name, "Documents");
        assert!(d.id.starts_with("b!"));
        assert_eq!(d.root_id.len(), 34);
        assert_eq!(new_item_id().len(), 34);
    }

    #[test]
    fn names_are_case_insensitive_and_conflicts_apply() {
        let mut s = store();
        let d = s.default_drive();
        let root = s.drives[d].root_id.clone();
        let (id, new, _) = s
            .commit_file(d, &root, "A.txt", Conflict::Fail, content(1), 0)
            .unwrap();
        assert!(new);
        let e = s
            .commit_file(d, &root, "a.TXT", Conflict::Fail, content(1), 0)
            .unwrap_err();
        assert_eq!(e.code, "nameAlreadyExists");
        let (id2, new2, old) = s
            .commit_file(d, &root, "a.txt", Conflict::Replace, content(2), 0)
            .unwrap();
        assert_eq!((id2.as_str(), new2), (id.as_str(), false));
        assert!(old.is_some());
        let (id3, _, _) = s
            .commit_file(d, &root, "a.txt", Conflict::Rename, content(2), 0)
            .unwrap();
        assert_eq!(s.drives[d].get(&id3).unwrap().name, "a 1.txt");
        assert_eq!(
            s.server_relative(d, &root, "x"),
            "/sites/demo/Shared Documents/x"
        );
    }
}

/// What [`Store::seed`] creates.
#[derive(Debug, Clone, Deserialize)]
pub struct SeedSpec {
    /// Folder path from the library root (created if missing).
    pub folder: String,
    /// Number of files.
    pub files: usize,
    /// Files per generated subfolder.
    #[serde(default = "default_per_folder")]
    pub per_folder: usize,
    /// Size of every file in bytes.
    #[serde(default)]
    pub size: u64,
}

fn default_per_folder() -> usize {
    1000
}

/// The content of every seeded file of `size` bytes: byte `i` is `i % 251`.
pub fn seed_content(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i % 251) as u8).collect()
}
