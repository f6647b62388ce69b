//! Remote reconcile: learn what changed in SharePoint at the cost of the
//! changes, not of the library (issue 6).
//!
//! Per drive, a delta link stored in the state (`drives`). Each job run
//! ([`prepare_job`], called by `job::run_once` before its scan) and the
//! daemon's periodic [`reconcile`] fetch the delta pages since the stored
//! link; each page is recorded in one transaction and the new link is stored
//! with the last page, so a crash repeats pages and never skips one. Items
//! are matched by remote item id against `files` and `folders`; items
//! outside our job folders cost one indexed lookup and are dropped.
//!
//! The first time (no link yet) the drive starts from `token=latest` (one
//! request, no items) and each job on it *walks* its own remote folder
//! (children paging): remote files whose path, size and quickXorHash equal
//! the local file are adopted as synced, so nothing is uploaded again after
//! migrating from another tool or losing the state database. This costs the
//! job's folder, not the library (a 20,000-file job in a 200,000-item
//! library lists 20,000 items instead of enumerating 200,000 through delta);
//! the link is taken before the walk, so a change made during the walk is
//! seen by the next delta. `410 resyncRequired` drops the link, starts from
//! `token=latest` again and makes every job on the drive walk again (files
//! that match are kept, missing ones become remote deletes): nothing is
//! re-uploaded for it.
//!
//! Remote deletes and edits of our files are recorded as `remote_changes`
//! (an edit also while the file's own local change waits to go up: pending
//! or failed, never mid-upload, whose echo may arrive before it is recorded)
//! and then resolved by the job's `on_remote_delete` (`restore`: upload
//! again; `forget`) and `on_remote_change` (`overwrite`: ours goes up again,
//! SharePoint keeps theirs in version history; `skip`: a conflict, uploads
//! of that path are held; `keep-both`: see below).
//! An item of ours that someone else renamed or moved (its name or parent
//! folder is not where we recorded it, from the service's own replies) has
//! left the path it backed up: a remote delete of that path, for a folder of
//! every file below it. The walk after a `410` reaches the same verdict, and
//! the row lets go of the item, so `mirror` never deletes it where it went.
//! Our own uploads never count as edits: an item whose eTag is the one we
//! recorded, or whose hash is the one we uploaded or SharePoint's rewrite we
//! recorded, is ours, so nothing loops.
//!
//! **Keep-both.** Their edit stays at its path untouched (same item, name,
//! links and history). `keep_both` picks a free name beside it,
//! [`conflict_name`] (`name (sharepush conflict YYYY-MM-DD host).ext`, with a
//! counter when SharePoint or the local folder already has that name), and
//! records in one transaction: their item, eTag, hash and size as the row's
//! new baseline, and the file queued with that copy path. The run's upload
//! stage then sends the local file there (sessions, resume, throttle and
//! verification as for any upload) and records the copy in
//! `conflict_copies`; the row becomes synced against *their* version. So
//! the next delta sees their eTag/hash as known (no new conflict) and the
//! scan sees the local file unchanged (no upload). A later local edit is a
//! normal upload to the path, over theirs (SharePoint keeps theirs in the
//! version history): the path keeps backing up the local file, and the copy
//! stays a one-off snapshot, neither updated nor deleted by `mirror` (it has
//! no `files` row). When the local file is gone there is nothing to copy:
//! theirs just becomes the baseline.
//!
//! A library deleted and recreated by an administrator keeps its name but
//! gets a new drive id, and every request to the old id answers `404`. A
//! 404 from the drive during reconcile (its first request of every run)
//! resolves the library again (`job::recheck_drive`): the same id means an
//! item was missing and the error stands; a new id is recorded and every
//! job on the library has its files requeued in one transaction, and the
//! job is reconciled once more against the new drive (delta from
//! `token=latest`, a walk that adopts whatever an administrator restored).
//! A library that no longer resolves at all fails the run with
//! "library X not found on site Y".
//!
//! A run that changed the library follows the delta once more before it
//! ends ([`absorb_own_changes`]), so the echo of its own uploads is taken in
//! by that run, not by the next one or the daemon's idle check.
//!
//! Local renames and moves within a job ([`detect_moves`], [`apply_moves`])
//! become one server-side PATCH instead of an upload.
//!
//! What it does not do: download anything, or decide uploads (`plan`).

use std::collections::HashMap;
use std::path::Path;

use crate::config::{InvalidNames, JobSpec, OnRemoteChange, OnRemoteDelete};
use crate::hash::Hashes;
use crate::job::DriveCheck;
use crate::remote::names;
use crate::remote::{DeltaNext, Remote, RemoteError, RemoteItem, RemotePath};
use crate::scan::{Fingerprint, LocalEntry};
use crate::state::{
    FileRecord, FileState, RemoteChange, RemoteChangeKind, RemoteChangeOutcome, StateError,
    WalkAction,
};
use crate::upload::SharedStore;

/// What reconciling did for one job (or one drive), for the run's report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Delta pages fetched.
    pub delta_pages: u64,
    /// Delta entries seen (ours or not).
    pub delta_items: u64,
    /// Remote deletes and edits of our files found (delta or walk).
    pub remote_changes: u64,
    /// The delta link had expired (410) and was started over.
    pub resynced: bool,
    /// The job's remote folder was walked.
    pub walked: bool,
    /// Files found already uploaded and recorded synced without an upload.
    pub adopted: u64,
    /// Remote changes resolved this time: (path, outcome).
    pub resolved: Vec<(String, RemoteChangeOutcome)>,
    /// The library had been deleted and recreated (a new drive id): the
    /// files of every job on it were queued to upload again.
    pub library_replaced: bool,
}

/// The result of [`reconcile`] for one job: its report, or why the remote
/// could not be reconciled (the job's uploads may still work later).
pub type JobReconcile = Result<ReconcileReport, RemoteError>;

/// The daemon's periodic reconcile (default every 15 minutes): delta for
/// every drive the jobs use, then each job's walk (if needed) and remote
/// changes under its policy. Only a broken state store is an error.
pub async fn reconcile<R: Remote>(
    remote: &R,
    store: &SharedStore,
    jobs: &[&JobSpec],
) -> Result<Vec<(String, JobReconcile)>, StateError> {
    let mut out = Vec::with_capacity(jobs.len());
    let mut done_drives: Vec<(String, String)> = Vec::new();
    for job in jobs {
        let key = (job.site.to_string(), job.library.clone());
        let fetch_delta = !done_drives.contains(&key);
        if fetch_delta {
            done_drives.push(key);
        }
        out.push((
            job.name.clone(),
            reconcile_job(remote, store, job, fetch_delta).await?,
        ));
    }
    Ok(out)
}

/// What a job run does before its scan: the drive's delta, the job's walk
/// when needed, its remote changes resolved. Remote failures are logged and
/// returned; the run goes on (changes are then noticed next time).
pub async fn prepare_job<R: Remote>(
    remote: &R,
    store: &SharedStore,
    job: &JobSpec,
) -> Result<JobReconcile, StateError> {
    reconcile_job(remote, store, job, true).await
}

async fn reconcile_job<R: Remote>(
    remote: &R,
    store: &SharedStore,
    job: &JobSpec,
    fetch_delta: bool,
) -> Result<JobReconcile, StateError> {
    let mut report = ReconcileReport::default();
    let result = match crate::job::drive_id(remote, store, job).await? {
        Err(e) => Err(ReconcileFail::Remote(e)),
        Ok(drive) => {
            match reconcile_drive(remote, store, job, &drive, fetch_delta, &mut report).await {
                // The first request of every run goes to the drive (delta), so
                // this is where a deleted or recreated library shows, once per
                // run or periodic reconcile: the library is resolved again and,
                // if it has a new drive id, reconciled once more from scratch.
                Err(ReconcileFail::Remote(e)) if e.is_not_found() => {
                    match crate::job::recheck_drive(remote, store, job, &drive).await? {
                        Ok(DriveCheck::Unchanged) => Err(ReconcileFail::Remote(e)),
                        Ok(DriveCheck::Replaced(new)) => {
                            report.library_replaced = true;
                            reconcile_drive(remote, store, job, &new, true, &mut report).await
                        }
                        Err(gone) => Err(ReconcileFail::Remote(gone)),
                    }
                }
                other => other,
            }
        }
    };
    let outcome = match result {
        Ok(()) => Ok(()),
        Err(ReconcileFail::State(e)) => return Err(e),
        Err(ReconcileFail::Remote(e)) => Err(e),
    };
    // Changes already recorded are resolved even when the remote failed.
    resolve_changes(remote, store, job, &mut report).await?;
    if let Err(e) = outcome {
        tracing::warn!(job = %job.name, error = %e, "remote changes could not be checked; trying again next run");
        return Ok(Err(e));
    }
    if report.remote_changes > 0 || report.adopted > 0 || report.resynced {
        tracing::info!(
            job = %job.name,
            delta_items = report.delta_items,
            remote_changes = report.remote_changes,
            adopted = report.adopted,
            resynced = report.resynced,
            "remote reconciled"
        );
    }
    Ok(Ok(report))
}

/// Delta (when `fetch_delta`) and, when needed, the walk of one job on `drive`.
async fn reconcile_drive<R: Remote>(
    remote: &R,
    store: &SharedStore,
    job: &JobSpec,
    drive: &str,
    fetch_delta: bool,
    report: &mut ReconcileReport,
) -> Result<(), ReconcileFail> {
    if fetch_delta {
        sync_delta(remote, store, job, drive, report).await?;
    }
    let (site, library, name) = (job.site.to_string(), job.library.clone(), job.name.clone());
    if store
        .call(move |s| s.walk_needed(&name, &site, &library))
        .await?
    {
        walk_job(remote, store, job, drive, report).await?;
    }
    Ok(())
}

/// Both failure layers of a reconcile step, so `?` works on either.
enum ReconcileFail {
    State(StateError),
    Remote(RemoteError),
}

impl From<StateError> for ReconcileFail {
    fn from(e: StateError) -> Self {
        ReconcileFail::State(e)
    }
}

impl From<RemoteError> for ReconcileFail {
    fn from(e: RemoteError) -> Self {
        ReconcileFail::Remote(e)
    }
}

/// Fetches and records the drive's delta pages since the stored link.
async fn sync_delta<R: Remote>(
    remote: &R,
    store: &SharedStore,
    job: &JobSpec,
    drive: &str,
    report: &mut ReconcileReport,
) -> Result<(), ReconcileFail> {
    let (site, library) = (job.site.to_string(), job.library.clone());
    let (s2, l2) = (site.clone(), library.clone());
    let row = store.call(move |s| s.drive(&s2, &l2)).await?;
    let Some(mut url) = row.and_then(|r| r.delta_link) else {
        start_from_latest(remote, store, &site, &library, drive).await?;
        return Ok(());
    };
    loop {
        let page = match remote.delta_page(&url).await {
            Ok(p) => p,
            Err(RemoteError::ResyncRequired) => {
                tracing::warn!(job = %job.name, site = %site, library = %library, "delta link no longer usable (expired: 410 resyncRequired, or from another service than graph_url); enumerating the job folders again, nothing that matches is uploaded again");
                let (s2, l2) = (site.clone(), library.clone());
                store.call(move |s| s.restart_delta(&s2, &l2)).await?;
                report.resynced = true;
                start_from_latest(remote, store, &site, &library, drive).await?;
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        report.delta_pages += 1;
        let (final_link, next) = match page.next {
            DeltaNext::Done(link) => (Some(link), None),
            DeltaNext::More(next) => (None, Some(next)),
        };
        let (s2, l2, items) = (site.clone(), library.clone(), page.items);
        let stats = store
            .call(move |s| s.record_delta_page(&s2, &l2, &items, final_link.as_deref()))
            .await?;
        report.delta_items += stats.items;
        report.remote_changes += stats.changes;
        match next {
            Some(n) => url = n,
            None => return Ok(()),
        }
    }
}

/// Stores a `token=latest` link for a drive that has none.
async fn start_from_latest<R: Remote>(
    remote: &R,
    store: &SharedStore,
    site: &str,
    library: &str,
    drive: &str,
) -> Result<(), ReconcileFail> {
    let link = remote.delta_latest(drive).await?;
    let (site, library) = (site.to_string(), library.to_string());
    store
        .call(move |s| s.record_delta_page(&site, &library, &[], Some(&link)))
        .await?;
    Ok(())
}

/// The local relative path of a remote name (names were encoded on upload
/// under `invalid_names = "encode"`).
fn local_name(remote: &str, policy: InvalidNames) -> String {
    match policy {
        InvalidNames::Encode => names::decode(remote),
        InvalidNames::Skip => remote.to_string(),
    }
}

/// Walks the job's remote folder page by page: records the folders that
/// stand for local ones, adopts files equal to the local ones, notes remote
/// edits of ours; at the end, synced files not seen are remote deletes.
/// Memory: one page plus the stack of folders still to list.
async fn walk_job<R: Remote>(
    remote: &R,
    store: &SharedStore,
    job: &JobSpec,
    drive: &str,
    report: &mut ReconcileReport,
) -> Result<(), ReconcileFail> {
    report.walked = true;
    let root = RemotePath::parse(&job.folder);
    let name = job.name.clone();
    let n = name.clone();
    store.call(move |s| s.begin_walk(&n)).await?;
    let root_item = remote.stat(drive, &root).await?;
    // Checked with the config; a broken pattern fails the scan anyway.
    let filter = crate::filter::Filter::new(&job.include, &job.exclude)
        .unwrap_or_else(|_| crate::filter::Filter::everything());
    match root_item {
        Some(item) if item.is_folder => {
            let (n, root) = (name.clone(), item.clone());
            store
                .call(move |s| s.record_folder_item(&n, "", &root))
                .await?;
            let mut stack = vec![(item.id, String::new())];
            while let Some((folder_id, rel)) = stack.pop() {
                let mut next: Option<String> = None;
                loop {
                    let page = remote
                        .list_children(drive, &folder_id, next.as_deref())
                        .await?;
                    let mut files = Vec::new();
                    for item in page.items {
                        let local = local_name(&item.name, job.settings.invalid_names);
                        let path = if rel.is_empty() {
                            local
                        } else {
                            format!("{rel}/{local}")
                        };
                        if item.is_folder {
                            // Recorded (so looked after: `mirror` deletes it
                            // once its local folder is gone) only when it
                            // stands for a local folder the job backs up; a
                            // folder someone else made, or one the patterns
                            // leave out, is walked, never recorded as ours.
                            let excluded = filter.matches(Path::new(&path), true)
                                == crate::filter::Verdict::Excluded;
                            let (local, follow) = (job.source.join(&path), job.follow_symlinks);
                            let stands_for_local = !excluded
                                && tokio::task::spawn_blocking(move || {
                                    !crate::job::local_folder_gone(&local, follow)
                                })
                                .await
                                .expect("folder check panicked");
                            if stands_for_local {
                                let (n, p, folder) = (name.clone(), path.clone(), item.clone());
                                store
                                    .call(move |s| s.record_folder_item(&n, &p, &folder))
                                    .await?;
                            }
                            stack.push((item.id, path));
                        } else {
                            files.push((path, item));
                        }
                    }
                    report.adopted += walk_files(store, job, files).await?;
                    match page.next {
                        Some(n) => next = Some(n),
                        None => break,
                    }
                }
            }
        }
        _ => {
            // No job folder remotely: nothing to adopt, every folder we
            // knew is gone.
            let n = name.clone();
            store.call(move |s| s.forget_folders(&n)).await?;
        }
    }
    let (site, library) = (job.site.to_string(), job.library.clone());
    let deleted = store
        .call(move |s| s.finish_walk(&name, &site, &library))
        .await?;
    report.remote_changes += deleted;
    if report.adopted > 0 {
        tracing::info!(job = %job.name, adopted = report.adopted, "files already in SharePoint recorded as synced; not uploaded again");
    }
    Ok(())
}

/// Decides and records one page of remote files found by a walk.
async fn walk_files(
    store: &SharedStore,
    job: &JobSpec,
    files: Vec<(String, RemoteItem)>,
) -> Result<u64, StateError> {
    if files.is_empty() {
        return Ok(0);
    }
    let name = job.name.clone();
    let paths: Vec<String> = files.iter().map(|(p, _)| p.clone()).collect();
    let records = store
        .call(move |s| {
            let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
            s.records_for(&name, &refs)
        })
        .await?;
    let source = job.source.clone();
    let actions = tokio::task::spawn_blocking(move || {
        files
            .into_iter()
            .map(|(path, item)| walk_decision(&source, path, item, &records))
            .collect::<Vec<_>>()
    })
    .await
    .expect("walk task panicked");
    let name = job.name.clone();
    store
        .call(move |s| s.record_walk_page(&name, &actions))
        .await
}

/// What one remote file found by a walk means (blocking: may hash the
/// local file, only when its size matches).
fn walk_decision(
    source: &Path,
    path: String,
    item: RemoteItem,
    records: &HashMap<String, FileRecord>,
) -> WalkAction {
    let record = records.get(&path);
    if let Some(r) = record
        && let FileState::Synced {
            item_id: Some(id),
            etag,
            remote_quick_xor,
            ..
        } = &r.state
        && *id == item.id
    {
        if etag.is_some() && *etag == item.etag {
            return WalkAction::Seen { item_id: item.id };
        }
        let ours = crate::state::holds_our_content(
            item.quick_xor.as_deref(),
            item.mtime,
            remote_quick_xor.as_deref(),
            r.hashes.as_ref().map(|h| h.quick_xor.as_str()),
            None,
        );
        return if ours {
            WalkAction::Etag { path, item }
        } else {
            WalkAction::Edited { path, item }
        };
    }
    if let Some((fp, hashes)) = local_match(source, &path, &item, record) {
        return WalkAction::Adopt {
            path,
            size: fp.size,
            mtime_ns: fp.mtime_ns,
            inode: fp.inode,
            hashes,
            item,
        };
    }
    // Our item while the file's own local change waits to go up (pending,
    // failed; never mid-upload): an edit by someone else meanwhile is an
    // edit, as in the delta (`record_delta_page`).
    if let Some(r) = record
        && matches!(r.state, FileState::Pending | FileState::Failed { .. })
        && r.item_id.as_deref() == Some(item.id.as_str())
        && r.etag.is_some()
        && r.etag != item.etag
    {
        let ours = crate::state::holds_our_content(
            item.quick_xor.as_deref(),
            item.mtime,
            r.remote_quick_xor.as_deref(),
            r.hashes.as_ref().map(|h| h.quick_xor.as_str()),
            Some(r.mtime_ns),
        );
        return if ours {
            WalkAction::Etag { path, item }
        } else {
            WalkAction::Edited { path, item }
        };
    }
    WalkAction::Seen { item_id: item.id }
}

/// The local file's fingerprint and hashes when its content equals the
/// remote item's (size, then quickXorHash). Uses the recorded hashes when
/// the fingerprint is unchanged, otherwise hashes the file.
fn local_match(
    source: &Path,
    path: &str,
    item: &RemoteItem,
    record: Option<&FileRecord>,
) -> Option<(Fingerprint, Hashes)> {
    let remote_hash = item.quick_xor.as_ref()?;
    let meta = std::fs::symlink_metadata(source.join(path)).ok()?;
    if !meta.is_file() || meta.len() != item.size {
        return None;
    }
    let fp = Fingerprint::of(&meta);
    let hashes = match record {
        Some(r) if r.size == fp.size && r.mtime_ns == fp.mtime_ns && r.inode == fp.inode => {
            r.hashes.clone()
        }
        _ => None,
    };
    let hashes = match hashes {
        Some(h) => h,
        None => local_hashes(source, path, &fp)?,
    };
    (hashes.quick_xor == *remote_hash).then_some((fp, hashes))
}

/// Hashes a local file for adoption and move checks (the scan may not have
/// hashed new files); `None` if it changed while being read or is unreadable.
pub fn local_hashes(source: &Path, path: &str, fp: &Fingerprint) -> Option<Hashes> {
    let full = source.join(path);
    let (hashes, _) = crate::hash::hash_file(&full).ok()?;
    let after = Fingerprint::of(&std::fs::symlink_metadata(&full).ok()?);
    (after == *fp).then_some(hashes)
}

/// Resolves the job's open remote changes under its policies.
async fn resolve_changes<R: Remote>(
    remote: &R,
    store: &SharedStore,
    job: &JobSpec,
    report: &mut ReconcileReport,
) -> Result<(), StateError> {
    let name = job.name.clone();
    let changes = store.call(move |s| s.pending_remote_changes(&name)).await?;
    for change in changes {
        let Some(outcome) = resolve_one(remote, store, job, &change).await? else {
            continue;
        };
        report.resolved.push((change.path, outcome));
    }
    Ok(())
}

/// Applies the job's policy to one change and records the outcome; `None`
/// leaves it as it is (a conflict still skipped, or a failed step).
async fn resolve_one<R: Remote>(
    remote: &R,
    store: &SharedStore,
    job: &JobSpec,
    change: &RemoteChange,
) -> Result<Option<RemoteChangeOutcome>, StateError> {
    let path = change.path.as_str();
    let outcome = match change.kind {
        RemoteChangeKind::Deleted => match job.on_remote_delete {
            OnRemoteDelete::Restore => {
                tracing::warn!(job = %job.name, path, "deleted in SharePoint; uploading it again (on_remote_delete = \"restore\")");
                RemoteChangeOutcome::Restored
            }
            OnRemoteDelete::Forget => {
                tracing::warn!(job = %job.name, path, "deleted in SharePoint; not restoring it (on_remote_delete = \"forget\"); it goes up again only if it changes locally");
                RemoteChangeOutcome::Forgotten
            }
        },
        RemoteChangeKind::Edited => match job.on_remote_change {
            OnRemoteChange::Overwrite => {
                tracing::warn!(job = %job.name, path, "edited in SharePoint by someone else; overwriting it with the local copy (on_remote_change = \"overwrite\"); SharePoint keeps the other edit in the file's version history");
                RemoteChangeOutcome::Overwritten
            }
            OnRemoteChange::Skip => {
                if change.outcome.as_deref() == Some("skipped") {
                    return Ok(None);
                }
                tracing::warn!(job = %job.name, path, "edited in SharePoint by someone else; leaving it and holding local uploads of it (on_remote_change = \"skip\"): a conflict `sharepush status` lists");
                RemoteChangeOutcome::Skipped
            }
            OnRemoteChange::KeepBoth => match keep_both(remote, store, job, change).await? {
                Ok(Some(copy)) => {
                    tracing::warn!(job = %job.name, path, copy = %copy, "edited in SharePoint by someone else; their version stays at the path and the local copy goes up beside it as {copy:?} (on_remote_change = \"keep-both\"); later local edits go to the path as usual");
                    // Recorded with the copy's path by `keep_both`.
                    return Ok(Some(RemoteChangeOutcome::KeptBoth));
                }
                Ok(None) => {
                    tracing::warn!(job = %job.name, path, "edited in SharePoint by someone else; the local file is gone, so their version stays and nothing is copied beside it (on_remote_change = \"keep-both\")");
                    RemoteChangeOutcome::KeptBoth
                }
                Err(e) => {
                    tracing::warn!(job = %job.name, path, error = %e, "could not keep both versions; trying again next run");
                    return Ok(None);
                }
            },
        },
    };
    let c = change.clone();
    store
        .call(move |s| s.resolve_remote_change(&c, outcome))
        .await?;
    Ok(Some(outcome))
}

/// After a run that changed the library (uploads, moves, deletes): follows
/// the drive's delta so the echo of our own changes is absorbed as part of
/// that run. Entries that are ours match what was recorded and cost one
/// lookup each; changes by others found on the way are recorded and
/// resolved by the next run or periodic reconcile, as always.
pub async fn absorb_own_changes<R: Remote>(
    remote: &R,
    store: &SharedStore,
    job: &JobSpec,
) -> Result<JobReconcile, StateError> {
    let mut report = ReconcileReport::default();
    let result = async {
        let drive = crate::job::drive_id(remote, store, job).await??;
        sync_delta(remote, store, job, &drive, &mut report).await?;
        Ok::<(), ReconcileFail>(())
    }
    .await;
    match result {
        Ok(()) => Ok(Ok(report)),
        Err(ReconcileFail::State(e)) => Err(e),
        Err(ReconcileFail::Remote(e)) => Ok(Err(e)),
    }
}

/// The name of our copy beside someone else's edit of `name`:
/// `name (sharepush conflict YYYY-MM-DD host).ext`, the date of the copy and
/// the short host name of the server it came from (left out when unknown),
/// with ` n` added for the n-th name tried (`n >= 2`) when one is taken.
pub fn conflict_name(name: &str, date: chrono::NaiveDate, host: Option<&str>, n: u32) -> String {
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    };
    let mut tag = format!("sharepush conflict {date}");
    if let Some(host) = host {
        tag.push(' ');
        tag.push_str(host);
    }
    if n >= 2 {
        tag.push_str(&format!(" {n}"));
    }
    format!("{stem} ({tag}){ext}")
}

/// This server's short host name for conflict names: letters, digits and
/// `-` only (valid in any SharePoint name), at most 32 characters.
fn conflict_host() -> Option<&'static str> {
    static HOST: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    HOST.get_or_init(|| {
        let text = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
        let short: String = text
            .trim()
            .split('.')
            .next()?
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .take(32)
            .collect();
        (!short.is_empty()).then_some(short)
    })
    .as_deref()
}

/// Conflict names tried before giving up (each costs one `stat`).
const CONFLICT_NAME_TRIES: u32 = 20;

/// Why keep-both could not queue our copy this time.
#[derive(Debug, thiserror::Error)]
enum KeepBothError {
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error("the conflict copy {path:?} cannot be stored in SharePoint: {why}")]
    Name { path: String, why: String },
    #[error("{tries} conflict names beside {path:?} are all taken")]
    Taken { path: String, tries: u32 },
}

/// Keep-both for one edited file: their edit stays at the path, untouched
/// (same item, same name, its version history). Picks a free name beside
/// it (not taken remotely nor by a local file) and records the change
/// resolved with our copy queued for that path
/// ([`crate::state::Store::resolve_keep_both`]); the run's upload stage sends
/// it. `Ok(None)` when the local file is gone: nothing to copy.
async fn keep_both<R: Remote>(
    remote: &R,
    store: &SharedStore,
    job: &JobSpec,
    change: &RemoteChange,
) -> Result<Result<Option<String>, KeepBothError>, StateError> {
    let local = job.source.join(&change.path);
    if !std::fs::symlink_metadata(&local).is_ok_and(|m| m.is_file()) {
        return Ok(Ok(None));
    }
    let drive = match crate::job::drive_id(remote, store, job).await? {
        Ok(d) => d,
        Err(e) => return Ok(Err(e.into())),
    };
    let root = RemotePath::parse(&job.folder);
    let (dir, file) = match change.path.rsplit_once('/') {
        Some((d, f)) => (Some(d), f),
        None => (None, change.path.as_str()),
    };
    let date = chrono::Local::now().date_naive();
    for n in 1..=CONFLICT_NAME_TRIES {
        let name = conflict_name(file, date, conflict_host(), n);
        let copy = match dir {
            Some(d) => format!("{d}/{name}"),
            None => name,
        };
        let mapped = match names::map_path(&copy, job.settings.invalid_names, root.is_root()) {
            Ok(m) => root.join(&m.remote),
            Err(p) => {
                return Ok(Err(KeepBothError::Name {
                    path: copy,
                    why: p.to_string(),
                }));
            }
        };
        let length = names::server_relative_len(&job.site.path, &job.library, &mapped);
        if length >= names::MAX_PATH_CHARS {
            return Ok(Err(KeepBothError::Name {
                path: copy,
                why: format!(
                    "{length} characters with site and library (limit {})",
                    names::MAX_PATH_CHARS - 1
                ),
            }));
        }
        if std::fs::symlink_metadata(job.source.join(&copy)).is_ok() {
            continue;
        }
        match remote.stat(&drive, &mapped).await {
            Ok(Some(_)) => continue,
            Ok(None) => {}
            Err(e) => return Ok(Err(e.into())),
        }
        let (c, to) = (change.clone(), copy.clone());
        store.call(move |s| s.resolve_keep_both(&c, &to)).await?;
        return Ok(Ok(Some(copy)));
    }
    Ok(Err(KeepBothError::Taken {
        path: change.path.clone(),
        tries: CONFLICT_NAME_TRIES,
    }))
}

/// A local rename or move that can be done on the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    /// The old path (vanished locally, synced remotely).
    pub from: String,
    /// The new path (the upload it replaces).
    pub to: String,
    /// The remote item to move.
    pub item_id: String,
}

/// Pairs vanished synced files with new files of the same inode, size and
/// content. One candidate per inode. Blocking: a new file the scan did not
/// hash (see "Not hashed yet" in the scan docs) is hashed here, and only
/// when its inode and size already match a vanished file.
pub fn detect_moves(
    source: &Path,
    vanished: &[(String, FileRecord)],
    uploads: &[LocalEntry],
) -> Vec<Move> {
    let mut by_inode: HashMap<(u64, u64), &LocalEntry> = HashMap::new();
    for e in uploads {
        by_inode.insert((e.inode, e.size), e);
    }
    let mut moves = Vec::new();
    for (path, r) in vanished {
        let FileState::Synced {
            item_id: Some(id), ..
        } = &r.state
        else {
            continue;
        };
        let Some(entry) = by_inode.remove(&(r.inode, r.size)) else {
            continue;
        };
        let hashes = match &entry.hashes {
            Some(h) => Some(h.clone()),
            None => {
                let fp = Fingerprint {
                    size: entry.size,
                    mtime_ns: entry.mtime_ns,
                    inode: entry.inode,
                };
                local_hashes(source, &entry.path, &fp)
            }
        };
        if hashes.is_some() && r.hashes == hashes {
            moves.push(Move {
                from: path.clone(),
                to: entry.path.clone(),
                item_id: id.clone(),
            });
        }
    }
    moves
}

/// Carries out `moves` on the server (PATCH parent and name, creating the
/// parent folder if needed) and records each; returns the (from, to) pairs
/// that were moved. A failed move is logged and its row forgotten, so the
/// new path is uploaded as usual.
pub async fn apply_moves<R: Remote>(
    remote: &R,
    store: &SharedStore,
    job: &JobSpec,
    drive: &str,
    moves: &[Move],
    uploads: &[LocalEntry],
) -> Result<Vec<(String, String)>, StateError> {
    let root = RemotePath::parse(&job.folder);
    let mut done = Vec::new();
    for m in moves {
        let Some(entry) = uploads.iter().find(|e| e.path == m.to) else {
            continue;
        };
        let target = names::map_path(&m.to, job.settings.invalid_names, root.is_root())
            .map(|mapped| root.join(&mapped.remote));
        let result = match &target {
            Ok(path) => match path.split_last() {
                Some((parent, name)) => {
                    let mut r = remote.move_item(drive, &m.item_id, &parent, name).await;
                    if matches!(r, Err(RemoteError::Permanent { status: 404, .. })) {
                        // The new parent folder does not exist yet.
                        let mut p = RemotePath::root();
                        let mut ok = true;
                        for seg in parent.segments() {
                            p = p.child(seg);
                            if remote.ensure_folder(drive, &p).await.is_err() {
                                ok = false;
                                break;
                            }
                        }
                        if ok {
                            r = remote.move_item(drive, &m.item_id, &parent, name).await;
                        }
                    }
                    r
                }
                None => continue,
            },
            Err(_) => continue,
        };
        let (name, from, to) = (job.name.clone(), m.from.clone(), m.to.clone());
        match result {
            Ok(item) => {
                let fp = (entry.size, entry.mtime_ns, entry.inode);
                store
                    .call(move |s| s.record_move(&name, &from, &to, fp, &item))
                    .await?;
                tracing::info!(job = %job.name, from = %m.from, to = %m.to, "renamed on the server; not uploaded again");
                done.push((m.from.clone(), m.to.clone()));
            }
            Err(e) => {
                tracing::warn!(job = %job.name, from = %m.from, to = %m.to, error = %e, "could not move on the server; uploading the new path");
                store.call(move |s| s.forget(&name, &[from])).await?;
            }
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::hash_bytes;
    use crate::scan::Change;

    #[rstest::rstest]
    #[case(
        "report.xlsx",
        Some("srv1"),
        1,
        "report (sharepush conflict 2026-11-24 srv1).xlsx"
    )]
    #[case(
        "report.xlsx",
        Some("srv1"),
        2,
        "report (sharepush conflict 2026-11-24 srv1 2).xlsx"
    )]
    #[case("a.tar.gz", None, 1, "a.tar (sharepush conflict 2026-11-24).gz")]
    #[case(
        "README",
        Some("srv1"),
        1,
        "README (sharepush conflict 2026-11-24 srv1)"
    )]
    #[case(".env", None, 3, ".env (sharepush conflict 2026-11-24 3)")]
    fn conflict_names_keep_the_extension(
        #[case] name: &str,
        #[case] host: Option<&str>,
        #[case] n: u32,
        #[case] expected: &str,
    ) {
        let d = chrono::NaiveDate::from_ymd_opt(2026, 11, 24).unwrap();
        assert_eq!(conflict_name(name, d, host, n), expected);
    }

    #[test]
    fn the_conflict_host_is_a_safe_short_name() {
        if let Some(host) = conflict_host() {
            assert!(!host.is_empty() && host.len() <= 32, "{host}");
            assert!(
                host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
                "{host}"
            );
        }
    }

    fn synced(path: &str, inode: u64, content: &[u8], item: Option<&str>) -> (String, FileRecord) {
        (
            path.to_string(),
            FileRecord {
                job: "j".into(),
                path: path.into(),
                size: content.len() as u64,
                mtime_ns: 1,
                inode,
                hashes: Some(hash_bytes(content)),
                state: FileState::Synced {
                    item_id: item.map(str::to_string),
                    etag: None,
                    remote_quick_xor: None,
                    remote_size: None,
                },
                item_id: item.map(str::to_string),
                etag: None,
                remote_quick_xor: None,
                updated_at: 0,
            },
        )
    }

    fn new(path: &str, inode: u64, content: &[u8]) -> LocalEntry {
        LocalEntry {
            path: path.into(),
            size: content.len() as u64,
            mtime_ns: 2,
            inode,
            hashes: Some(hash_bytes(content)),
            change: Change::New,
        }
    }

    #[test]
    fn moves_need_the_same_inode_size_and_content_and_a_remote_item() {
        let vanished = vec![
            synced("a.bin", 7, b"aaaa", Some("IA")),
            synced("b.bin", 8, b"bbbb", Some("IB")),
            synced("c.bin", 9, b"cccc", None),
            synced("d.bin", 10, b"dddd", Some("ID")),
        ];
        let uploads = vec![
            new("x/a.bin", 7, b"aaaa"), // moved
            new("b2.bin", 8, b"BBBB"),  // same inode, edited: upload
            new("c2.bin", 9, b"cccc"),  // never had a remote item: upload
            new("d2.bin", 99, b"dddd"), // a copy (other inode): upload
        ];
        assert_eq!(
            detect_moves(Path::new("/nonexistent"), &vanished, &uploads),
            vec![Move {
                from: "a.bin".into(),
                to: "x/a.bin".into(),
                item_id: "IA".into()
            }]
        );
    }
}
