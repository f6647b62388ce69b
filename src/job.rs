//! One run of one job: scan -> plan -> upload -> record, and
//! [`sync_jobs`], the one-shot pass `sharepush sync` makes over the jobs.
//!
//! Input: a [`JobSpec`], the shared [`Remote`], store and throttle. Output:
//! a [`JobReport`] (counts, per-file failures and skips) after the run is
//! recorded in the `runs` table. The scan's findings are recorded before any
//! upload starts, so changes are remembered even when the remote cannot be
//! reached or signing in needs a person.
//!
//! What it does not do: schedule runs or watch folders (the daemon's job
//! tasks call [`run_once`]) or print anything (`commands`).
//!
//! Mirror deletes (`delete = "mirror"`) are guarded: a run deletes nothing
//! remotely when its source looks empty (an unmounted disk shows an empty
//! mount point) or when it would delete more than the job's `max_delete`;
//! the deletes are then held (counted, logged once per run) and decided
//! again next run. A missing source never gets this far: the scan fails.
//! After the file deletes, a mirror run deletes the remote folders the job
//! recorded whose local folder is gone, when they hold nothing else
//! (`prune_folders`); a folder replaced locally by a file of its name is
//! emptied and pruned before the uploads, so the file can take the name.
//!
//! Two files whose paths differ only in case would be one item remotely
//! (SharePoint names are case-insensitive): before the uploads, the one
//! that keeps the name is chosen (`Store::case_twins`) and the other is
//! skipped for now, looked at again by every run until it can go up.
//!
//! The library's drive id is resolved once and cached (`drive_id`); a
//! `404` from the drive makes reconcile ask again (`recheck_drive`): a
//! recreated library (new id) requeues every job on it, a library that no
//! longer resolves fails the run with "library X not found on site Y"
//! (the daemon retries it with backoff; other jobs go on).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::config::{Config, DeleteMode, JobSpec};
use crate::plan::{self, Action, HoldReason, PlanInput, PriorState};
use crate::remote::auth::TokenProvider;
use crate::remote::{GraphRemote, Remote, RemoteError};
use crate::retry::{RetryPolicy, Throttle};
use crate::scan::{self, ScanOptions};
use crate::state::{
    FileRecord, FileState, RemoteChangeOutcome, RunCounts, RunOutcome, RunSummary, RunTrigger,
    StateError, Store,
};
use crate::upload::{CANCEL_GRACE, FileOutcome, Progress, SharedStore, Uploader};

/// What one run of one job did, for the command's summary and exit code.
#[derive(Debug, Clone, Default)]
pub struct JobReport {
    pub name: String,
    /// Files found new / changed by the scan.
    pub new: u64,
    pub changed: u64,
    /// Files already synced and unchanged.
    pub up_to_date: u64,
    /// Files uploaded (and verified) this run.
    pub uploaded: u64,
    /// Bytes of file content sent this run.
    pub bytes: u64,
    /// Files that failed: (path, error with Graph's code).
    pub failed: Vec<(String, String)>,
    /// Files left out: (path, reason) from the scan or the naming rules.
    pub skipped: Vec<(String, String)>,
    /// Files stored under an encoded name: (local path, remote path).
    pub encoded: Vec<(String, String)>,
    /// Files that failed before and are not due yet: (path, when, Unix s).
    pub held: Vec<(String, i64)>,
    /// Files that changed while uploading and go up again next run.
    pub requeued: Vec<String>,
    /// Remote deletes the plan asked for but the mass-delete guard held back.
    pub deletes_held: u64,
    /// What remote reconcile found before the scan (delta, adoption,
    /// remote deletes and edits); `None` when the remote could not be asked.
    pub reconcile: Option<crate::reconcile::ReconcileReport>,
    /// Local renames and moves done on the server instead of an upload:
    /// (old path, new path).
    pub moved: Vec<(String, String)>,
    /// Files deleted remotely this run (`delete = "mirror"`).
    pub deleted: u64,
    /// Remote folders deleted this run (`delete = "mirror"`): folders this
    /// job created whose local folder is gone and that held nothing else.
    pub folders_deleted: u64,
    /// Why uploads stopped for a sign-in problem (says to run `sharepush login`).
    pub login_needed: Option<String>,
    /// Why the job could not run at all (missing source, unknown library...).
    pub error: Option<String>,
    /// The run was cancelled (SIGTERM/SIGINT, shutdown) before it finished;
    /// what was not uploaded stays pending and resumes next run.
    pub cancelled: bool,
    /// Files whose upload was not started or was stopped by the cancel.
    pub interrupted: u64,
    /// The library answered `507 quotaLimitReached` (to this job or another
    /// on the same drive): uploads to it stopped; this many files stay
    /// pending.
    pub quota_full: Option<u64>,
    pub elapsed: Duration,
}

impl JobReport {
    /// How the run ended, as the `runs` table records it.
    pub fn outcome(&self) -> RunOutcome {
        if self.error.is_some() || self.login_needed.is_some() || self.quota_full.is_some() {
            RunOutcome::Failed
        } else if self.cancelled {
            RunOutcome::Cancelled
        } else if !self.failed.is_empty() || !self.held.is_empty() {
            RunOutcome::SomeFilesFailed
        } else {
            RunOutcome::Ok
        }
    }
}

/// The unchanged files recorded as skipped that the job's naming rules
/// take now, each turned pending in `files` (the plan's prior states);
/// the caller records them so. Only the uploader's naming checks
/// ([`crate::upload::remote_name`]) leave a file skipped that the scan
/// still finds unchanged (what a scan skips it skips again, and a case
/// twin's row has no fingerprint), and the plan holds such a file for
/// good: changing `invalid_names` to `"encode"`, or the job's folder or
/// site to a shorter one, left the files it skipped so until edited.
pub fn names_now_taken(
    job: &JobSpec,
    report: &scan::ScanReport,
    files: &mut HashMap<String, PriorState>,
) -> Vec<String> {
    let mut taken = Vec::new();
    for entry in &report.entries {
        if entry.change != scan::Change::Unchanged {
            continue;
        }
        let Some(prior @ PriorState::Skipped { .. }) = files.get_mut(&entry.path) else {
            continue;
        };
        if crate::upload::remote_name(job, &entry.path).is_ok() {
            *prior = PriorState::Pending;
            taken.push(entry.path.clone());
        }
    }
    taken
}

/// The uploads a local rename may be moved on the server to: those whose
/// path the job's naming rules take ([`crate::upload::remote_name`]). A
/// move to a path SharePoint refuses fails, and a failed move forgets the
/// old row, so the old copy stayed in SharePoint for good under `mirror`;
/// left out, the old path is gone like any other (deleted or forgotten)
/// and the uploader reports the new one.
pub fn move_targets(job: &JobSpec, uploads: &[scan::LocalEntry]) -> Vec<scan::LocalEntry> {
    uploads
        .iter()
        .filter(|e| crate::upload::remote_name(job, &e.path).is_ok())
        .cloned()
        .collect()
}

/// The plan's folders to create that some planned upload the naming rules
/// take ([`crate::upload::remote_name`]) is below. The uploader reports a
/// file SharePoint refuses and sends nothing; the folders planned for it
/// alone were created all the same and stayed empty in SharePoint. (A
/// folder of a case twin or a held upload is still created: it may be
/// the recorded twin of a folder `mirror` would otherwise take as gone.)
pub fn folders_to_create(job: &JobSpec, plan: &plan::Plan) -> Vec<String> {
    // Every folder above a sent upload: a first run plans a folder per
    // local folder and an upload per file, so matching each folder against
    // each upload would cost their product.
    let mut above_sent: HashSet<&str> = HashSet::new();
    for (entry, _) in plan.uploads() {
        if crate::upload::remote_name(job, &entry.path).is_err() {
            continue;
        }
        let mut path = entry.path.as_str();
        while let Some((parent, _)) = path.rsplit_once('/') {
            if !above_sent.insert(parent) {
                break;
            }
            path = parent;
        }
    }
    plan.actions
        .iter()
        .filter_map(|a| match a {
            Action::CreateFolder { path } if above_sent.contains(path.as_str()) => {
                Some(path.clone())
            }
            _ => None,
        })
        .collect()
}

/// The store's record of a file, reduced to what the planner needs.
pub fn prior_state(record: &FileRecord) -> PriorState {
    match &record.state {
        FileState::Pending => PriorState::Pending,
        FileState::Uploading => PriorState::Uploading,
        FileState::Synced { item_id, .. } => PriorState::Synced {
            item_id: item_id
                .clone()
                .or(record.item_id.clone())
                .unwrap_or_default(),
            content: record.hashes.clone(),
        },
        FileState::Failed { next_attempt, .. } => PriorState::Failed {
            next_attempt: next_attempt.map(|t| UNIX_EPOCH + Duration::from_secs(t.max(0) as u64)),
        },
        FileState::Skipped { reason } => PriorState::Skipped {
            reason: reason.clone(),
        },
    }
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The drive id of the job's library: from the state, or resolved once and
/// recorded. Also records where the job backs up to, so a recreated
/// library requeues every job on it ([`recheck_drive`]), and a job pointed
/// at another site, library or folder sends every file to the new place
/// (`Store::note_job_target`).
pub(crate) async fn drive_id<R: Remote>(
    remote: &R,
    store: &SharedStore,
    job: &JobSpec,
) -> Result<Result<String, RemoteError>, StateError> {
    let (name, site, library, folder) = (
        job.name.clone(),
        job.site.to_string(),
        job.library.clone(),
        job.folder.clone(),
    );
    let (moved, cached) = store
        .call(move |s| {
            let moved = s.note_job_target(&name, &site, &library, &folder)?;
            Ok::<_, StateError>((moved, s.drive(&site, &library)?))
        })
        .await?;
    if let Some(before) = moved {
        tracing::warn!(
            job = %job.name,
            site = %job.site,
            library = %job.library,
            folder = %job.folder,
            was = %format!(
                "{} / {} / {}",
                before.site,
                before.library,
                before.folder.as_deref().unwrap_or("?")
            ),
            "the job now backs up to another place: every file goes there (files already there are taken as they are); the copies in the old place stay"
        );
    }
    if let Some(row) = cached {
        return Ok(Ok(row.drive_id));
    }
    let id = match remote.resolve_drive(&job.site, &job.library).await {
        Ok(id) => id,
        Err(e) => return Ok(Err(e)),
    };
    let (site, library, d) = (job.site.to_string(), job.library.clone(), id.clone());
    store
        .call(move |s| s.save_drive_id(&site, &library, &d))
        .await?;
    tracing::info!(job = %job.name, site = %job.site, library = %job.library, "library resolved");
    Ok(Ok(id))
}

/// What [`recheck_drive`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DriveCheck {
    /// The library still has the drive id we used: the 404 was about an
    /// item, parent or session inside it, and normal handling applies.
    Unchanged,
    /// The library was deleted and recreated: it now has this drive id,
    /// recorded, and every job on it has its files queued to upload again.
    Replaced(String),
}

/// After a `404` from drive `stale` (the job's cached drive id): resolves
/// the job's site and library once more and compares. Graph answers
/// `itemNotFound` alike for a missing item and for a drive whose library
/// was deleted, so only the library's current id tells the two apart.
///
/// A new id means an administrator deleted and recreated the library (or
/// replaced it under the same name): [`Store::replace_drive`] records it
/// and, in the same transaction, requeues every synced file of every job
/// on that library, whose remote copies went with the old drive; one
/// warning names the job, site, library and both ids. A library that no
/// longer resolves is `RemoteError::LibraryNotFound` (or `SiteNotFound`):
/// the cached id is kept, so the files are requeued once it is back.
pub(crate) async fn recheck_drive<R: Remote>(
    remote: &R,
    store: &SharedStore,
    job: &JobSpec,
    stale: &str,
) -> Result<Result<DriveCheck, RemoteError>, StateError> {
    let fresh = match remote.resolve_drive(&job.site, &job.library).await {
        Ok(id) => id,
        Err(e) => return Ok(Err(e)),
    };
    if fresh == stale {
        return Ok(Ok(DriveCheck::Unchanged));
    }
    let (site, library, old, new) = (
        job.site.to_string(),
        job.library.clone(),
        stale.to_string(),
        fresh.clone(),
    );
    let replaced = store
        .call(move |s| s.replace_drive(&site, &library, &old, &new))
        .await?;
    // `None`: another job on the same library recorded the new id first
    // (and requeued this job's files with its own).
    if let Some(r) = replaced {
        tracing::warn!(
            job = %job.name,
            site = %job.site,
            library = %job.library,
            old_drive = stale,
            new_drive = %fresh,
            jobs = %r.jobs.join(","),
            requeued = r.requeued,
            "library {:?} on {} was deleted and recreated (drive id {stale} is now {fresh}); \
             its files are gone, so every file of the jobs on it is uploaded again",
            job.library,
            job.site,
        );
    }
    Ok(Ok(DriveCheck::Replaced(fresh)))
}

/// A run scoped to a watch batch looks at most this many paths (the batch's
/// plus those that need a look anyway); beyond, it walks the whole source,
/// which then costs about the same.
pub const MAX_SCOPED_PATHS: usize = 10_000;

/// Scans, plans, uploads and records one job once. Per-file problems are in
/// the report; only a broken state store is an error. Everything the run
/// logs is inside one `run` span (job, trigger), closed by one summary line
/// with the counts, bytes and duration.
///
/// `cancel` (SIGTERM/SIGINT, daemon shutdown): once cancelled, no file and
/// no fragment is started; a fragment in flight gets [`CANCEL_GRACE`] to
/// finish; the run is recorded `cancelled` and the report says so. The scan
/// itself is not interrupted (its findings are recorded, so nothing it
/// found is lost).
///
/// `scope`: `None` scans the whole source. `Some(paths)` (a watch batch's
/// changed paths, `/`-separated, relative to the source) scans only those
/// paths, and below them, plus every file the state says still needs a
/// look ([`crate::state::Store::paths_needing_a_look`]: not synced yet,
/// failed, racily clean), so a retry never waits for a full scan. The other
/// known files count as unchanged, for the report and the `max_delete`
/// guard alike.
#[allow(clippy::too_many_arguments)]
pub async fn run_once<R: Remote>(
    remote: &R,
    store: &SharedStore,
    throttle: &Throttle,
    job: &JobSpec,
    trigger: RunTrigger,
    scope: Option<&[String]>,
    progress: Option<Arc<Progress>>,
    cancel: &CancellationToken,
) -> Result<JobReport, StateError> {
    let span = tracing::info_span!("run", job = %job.name, trigger = %trigger);
    run_stages(
        remote, store, throttle, job, trigger, scope, progress, cancel,
    )
    .instrument(span)
    .await
}

#[allow(clippy::too_many_arguments)]
async fn run_stages<R: Remote>(
    remote: &R,
    store: &SharedStore,
    throttle: &Throttle,
    job: &JobSpec,
    trigger: RunTrigger,
    scope: Option<&[String]>,
    progress: Option<Arc<Progress>>,
    cancel: &CancellationToken,
) -> Result<JobReport, StateError> {
    let started = Instant::now();
    let started_at = unix(SystemTime::now());
    let mut report = JobReport {
        name: job.name.clone(),
        ..JobReport::default()
    };

    // Remote changes first: a remote delete or edit turns a synced file
    // pending before the scan looks at it, and adopted files are synced
    // before the scan, so neither needs a second pass.
    // A library that no longer resolves fails the run (after the scan is
    // recorded, so changes are remembered); any other remote failure here
    // is left to the upload stage to meet or not, except a sign-in that
    // needs a person: that is reported even when nothing is to be sent (a
    // cron `sync` exits 77 and `status` says so, not "all up to date").
    let mut library_gone = None;
    match crate::reconcile::prepare_job(remote, store, job).await? {
        Ok(r) => report.reconcile = Some(r),
        Err(e) if e.is_library_gone() => library_gone = Some(e),
        Err(RemoteError::Auth(a)) if a.needs_person() => {
            report.login_needed = Some(a.to_string());
        }
        Err(_) => {}
    }

    let name = job.name.clone();
    let scope: Option<Vec<String>> = scope.map(<[String]>::to_vec);
    // Scoped: the records below the scope, and how many the job has beyond
    // them (counted unchanged after the scan).
    let (known, roots, outside) = store
        .call(move |s| -> Result<_, StateError> {
            match scope {
                None => Ok((s.known_files(&name)?, None, 0)),
                Some(mut roots) => {
                    roots.extend(s.paths_needing_a_look(&name)?);
                    if roots.len() > MAX_SCOPED_PATHS {
                        return Ok((s.known_files(&name)?, None, 0));
                    }
                    let (known, total) = s.known_files_under(&name, &roots)?;
                    let outside = total.saturating_sub(known.len() as u64);
                    Ok((known, Some(roots), outside))
                }
            }
        })
        .await?;
    if let Some(roots) = &roots {
        tracing::debug!(job = %job.name, paths = roots.len(), known = known.len(), "scan scoped to changed paths");
    }
    let mut options = ScanOptions::from(job);
    // New files are hashed by the uploader while it reads them (scan docs,
    // "Not hashed yet"): one read instead of two.
    options.hash_new = false;
    let scoped = roots.is_some();
    let full_options = options.clone();
    let mut scanned = tokio::task::spawn_blocking(move || match roots {
        None => scan::scan(&options, known),
        Some(roots) => scan::scan_scoped(&options, known, &roots),
    })
    .await
    .expect("scan task panicked");
    // Remote deletes are judged against the whole tree: `max_delete`, an
    // emptied source and deletes held by an earlier run count files a scope
    // does not see. A scoped scan that finds files gone in a mirror job is
    // redone over everything before anything is recorded.
    if scoped
        && job.delete == DeleteMode::Mirror
        && scanned.as_ref().is_ok_and(|r| !r.vanished.is_empty())
    {
        tracing::debug!(job = %job.name, "files gone in a mirror job: scanning the whole tree to judge remote deletes");
        let name = job.name.clone();
        let known = store.call(move |s| s.known_files(&name)).await?;
        scanned = tokio::task::spawn_blocking(move || scan::scan(&full_options, known))
            .await
            .expect("scan task panicked");
    } else {
        scanned = scanned.map(|mut r| {
            r.unchanged += outside;
            r
        });
    }
    let scanned = match scanned {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(job = %job.name, error = %e, "scan failed");
            report.error = Some(e.to_string());
            let (name, error) = (job.name.clone(), e.to_string());
            store
                .call(move |s| {
                    let id = s.start_run(&name, trigger, started_at)?;
                    s.finish_run(
                        id,
                        &RunSummary {
                            ended_at: started_at,
                            counts: RunCounts::default(),
                            bytes: 0,
                            outcome: RunOutcome::Failed,
                            error: Some(error),
                        },
                    )
                })
                .await?;
            report.elapsed = started.elapsed();
            return Ok(report);
        }
    };
    let counts = scanned.counts();
    report.new = counts.new;
    report.changed = counts.changed;
    report.skipped = scanned
        .skipped
        .iter()
        .map(|s| (s.path.clone(), s.reason.to_string()))
        .collect();

    // Prior state is read before the scan is recorded (recording moves
    // changed files to pending), then the scan is recorded and the run opened.
    let mut paths: Vec<String> = scanned.entries.iter().map(|e| e.path.clone()).collect();
    paths.extend(scanned.vanished.iter().cloned());
    paths.extend(scanned.deselected.iter().cloned());
    // Only what describes the file itself is recorded as skipped: a synced
    // file unreadable or written to for a moment stays synced (recorded as
    // skipped, it was held, then sent again as a new version). Names that
    // are not UTF-8 have no row (`SkipReason::is_recorded`): the log names
    // them on every run instead.
    for s in &scanned.skipped {
        if s.reason == scan::SkipReason::NonUtf8Name {
            tracing::warn!(job = %job.name, path = %s.path, reason = %s.reason, "not uploaded");
        }
    }
    let lasting: Vec<(String, String)> = scanned
        .skipped
        .iter()
        .filter(|s| s.reason.is_recorded())
        .map(|s| (s.path.clone(), s.reason.to_string()))
        .collect();
    let (name, entries, skipped) = (job.name.clone(), scanned.entries.clone(), lasting);
    let (verified, racy_cutoff_ns) = (scanned.verified.clone(), scanned.racy_cutoff_ns);
    let (records, folders, run) = store
        .call(move |s| -> Result<_, StateError> {
            let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
            let records = s.records_for(&name, &refs)?;
            let folders = s.known_folders(&name)?;
            s.record_scan(&name, &entries, &verified, racy_cutoff_ns)?;
            for (path, reason) in &skipped {
                s.record_skipped(&name, path, reason)?;
            }
            let run = s.start_run(&name, trigger, started_at)?;
            Ok((records, folders, run))
        })
        .await?;
    let mut files: HashMap<String, PriorState> = records
        .iter()
        .map(|(path, r)| (path.clone(), prior_state(r)))
        .collect();
    let retaken = names_now_taken(job, &scanned, &mut files);
    if !retaken.is_empty() {
        tracing::info!(job = %job.name, files = retaken.len(), "files skipped for their name are taken by the naming rules now; queued");
        let name = job.name.clone();
        store
            .call(move |s| retaken.iter().try_for_each(|p| s.mark_pending(&name, p)))
            .await?;
    }
    let input = PlanInput {
        files,
        remote_folders: folders,
        remote_items: records
            .iter()
            .filter(|(_, r)| !matches!(r.state, FileState::Synced { .. }))
            .filter_map(|(path, r)| Some((path.clone(), r.item_id.clone()?)))
            .collect(),
    };
    let plan = plan::plan(&scanned, &input, job.delete, SystemTime::now());
    report.up_to_date = plan.summary.up_to_date;

    let mut forget = Vec::new();
    let mut deletes: Vec<(String, String)> = Vec::new();
    for action in &plan.actions {
        match action {
            Action::Skip { path, reason } => match reason {
                HoldReason::Backoff { until } => report.held.push((path.clone(), unix(*until))),
                HoldReason::PreviouslySkipped { reason } => {
                    report.skipped.push((path.clone(), reason.clone()))
                }
            },
            Action::Forget { path, .. } => forget.push(path.clone()),
            Action::DeleteRemote { path, item_id } => {
                deletes.push((path.clone(), item_id.clone()));
            }
            Action::CreateFolder { .. } | Action::Upload { .. } => {}
        }
    }
    let mut uploads: Vec<_> = plan.uploads().map(|(e, _)| e.clone()).collect();
    // Local renames and moves: the vanished synced file's item is moved on
    // the server instead of uploading the new path (its row is kept until then).
    let vanished: Vec<_> = scanned
        .vanished
        .iter()
        .filter_map(|p| records.get(p).map(|r| (p.clone(), r.clone())))
        .collect();
    let moves = if vanished.is_empty() {
        Vec::new()
    } else {
        // Blocking: may hash a renamed file the scan left unhashed.
        let (source, candidates) = (job.source.clone(), move_targets(job, &uploads));
        tokio::task::spawn_blocking(move || {
            crate::reconcile::detect_moves(&source, &vanished, &candidates)
        })
        .await
        .expect("move detection panicked")
    };
    forget.retain(|p| !moves.iter().any(|m| m.from == *p));
    // Paths with a remote conflict left in place (`on_remote_change = "skip"`).
    let name = job.name.clone();
    let conflicts = store.call(move |s| s.conflicts(Some(&name))).await?;
    if !conflicts.is_empty() {
        uploads.retain(|e| {
            let held = conflicts.iter().any(|c| c.path == e.path);
            if held {
                report.skipped.push((e.path.clone(), CONFLICT_HELD.into()));
            }
            !held
        });
    }
    // Two files whose paths differ only in case would be one item in
    // SharePoint (names are case-insensitive), each upload replacing the
    // other: the one that keeps the name goes up, the other is reported.
    if !uploads.is_empty() {
        let (name, paths): (String, Vec<String>) = (
            job.name.clone(),
            uploads.iter().map(|e| e.path.clone()).collect(),
        );
        // Rows forgotten or moved away before the uploads free their name;
        // a mirror delete comes after them, so its row still keeps it.
        let leaving: HashSet<String> = forget
            .iter()
            .cloned()
            .chain(moves.iter().map(|m| m.from.clone()))
            .collect();
        let twins = store
            .call(move |s| s.case_twins(&name, &paths, &leaving))
            .await?;
        if !twins.is_empty() {
            let mut skipped = Vec::new();
            uploads.retain(|e| {
                let Some(twin) = twins.get(&e.path) else {
                    return true;
                };
                let reason = case_twin_reason(twin);
                tracing::warn!(job = %job.name, path = %e.path, reason, "not uploaded");
                skipped.push((e.path.clone(), reason));
                false
            });
            let (name, rows) = (job.name.clone(), skipped.clone());
            store
                .call(move |s| {
                    rows.iter()
                        .try_for_each(|(p, r)| s.record_skipped_for_now(&name, p, r))
                })
                .await?;
            report.skipped.extend(skipped);
        }
    }
    // A vanished file that was moved on the server is not deleted.
    deletes.retain(|(p, _)| !moves.iter().any(|m| m.from == *p));
    // Someone else's edit that the policy kept at the path (a `skip`
    // conflict, or `keep-both`) is theirs: deleting the local file forgets
    // the row, it never deletes their version.
    let theirs: HashSet<&str> = conflicts
        .iter()
        .map(|c| c.path.as_str())
        .chain(report.reconcile.iter().flat_map(|r| {
            r.resolved.iter().filter_map(|(p, o)| {
                matches!(
                    o,
                    RemoteChangeOutcome::Skipped | RemoteChangeOutcome::KeptBoth
                )
                .then_some(p.as_str())
            })
        }))
        .collect();
    if !theirs.is_empty() {
        deletes.retain(|(p, _)| {
            if !theirs.contains(p.as_str()) {
                return true;
            }
            tracing::info!(job = %job.name, path = %p, "deleted locally; the version in SharePoint is someone else's edit, so it stays there and the file is forgotten");
            forget.push(p.clone());
            false
        });
    }
    if !deletes.is_empty()
        && let Some(why) = deletes_held_because(job, &scanned, deletes.len())
    {
        report.deletes_held = deletes.len() as u64;
        tracing::warn!(
            job = %job.name,
            held = deletes.len(),
            "remote deletes held: {why}; nothing is deleted remotely"
        );
        deletes.clear();
    }
    if !forget.is_empty() {
        let name = job.name.clone();
        store.call(move |s| s.forget(&name, &forget)).await?;
    }
    // Mirror also deletes the remote folders whose local folder is gone,
    // unless the guard held this run's deletes (or would have: an empty
    // source is an unmounted disk until shown otherwise).
    let prune = job.delete == DeleteMode::Mirror
        && report.deletes_held == 0
        && !source_looks_empty(&scanned);
    // Files to upload where a recorded folder is: that folder was replaced
    // locally by a file of its name.
    let replaced: Vec<String> = if prune {
        uploads
            .iter()
            .filter(|e| input.remote_folders.contains(&e.path))
            .map(|e| e.path.clone())
            .collect()
    } else {
        Vec::new()
    };

    let folders = folders_to_create(job, &plan);
    // Uploads whose remote hash was not available yet are checked whenever
    // the library is reachable, even on a run with nothing new.
    let name = job.name.clone();
    let unconfirmed = store
        .call(move |s| s.unconfirmed_synced(&name).map(|v| !v.is_empty()))
        .await?;
    // Whether this run talked to the library (and so learned whether the
    // sign-in still works).
    let contacted = report.reconcile.is_some()
        || !uploads.is_empty()
        || !folders.is_empty()
        || !deletes.is_empty()
        || unconfirmed
        || !moves.is_empty();
    if let Some(e) = library_gone {
        tracing::error!(job = %job.name, site = %job.site, library = %job.library, error = %e, "the job's library is gone; changes are recorded and sent once it exists again");
        report.error = Some(e.to_string());
    } else if cancel.is_cancelled() {
        report.cancelled = true;
        report.interrupted = uploads.len() as u64;
    } else if contacted {
        if let Some(p) = &progress {
            p.start_job(&job.name, uploads.len() as u64, plan.summary.upload_bytes);
        }
        execute(
            remote,
            store,
            throttle,
            job,
            &folders,
            &moves,
            uploads,
            &deletes,
            Mirror {
                prune,
                replaced: &replaced,
            },
            &mut report,
            progress,
            cancel,
        )
        .await?;
        // Our own uploads come back as delta entries, one per file: take
        // them in now, as part of this run, not at the next run or in the
        // daemon's periodic reconcile while idle (100,000 uploads are 500
        // delta pages).
        let changed_remote = report.uploaded > 0
            || !moves.is_empty()
            || !deletes.is_empty()
            || report.folders_deleted > 0;
        if changed_remote
            && !cancel.is_cancelled()
            && let Err(e) = crate::reconcile::absorb_own_changes(remote, store, job).await?
        {
            tracing::debug!(job = %job.name, error = %e, "could not follow the library's changes after uploading; the next run does");
        }
    }

    report.elapsed = started.elapsed();
    let summary = RunSummary {
        ended_at: unix(SystemTime::now()),
        counts: RunCounts {
            new: report.new,
            changed: report.changed,
            unchanged: scanned.unchanged,
            uploaded: report.uploaded,
            failed: report.failed.len() as u64,
            skipped: report.skipped.len() as u64,
        },
        bytes: report.bytes,
        outcome: report.outcome(),
        error: report
            .error
            .clone()
            .or(report.login_needed.clone())
            .or(report
                .quota_full
                .map(|n| format!("library full (507 quotaLimitReached); {n} file(s) pending"))),
    };
    // The sign-in outcome outlives the run: `status` shows "login needed"
    // until a later run is accepted again.
    let (login_needed, signed_in) = (
        report.login_needed.clone(),
        contacted && report.error.is_none() && report.login_needed.is_none(),
    );
    store
        .call(move |s| {
            s.finish_run(run, &summary)?;
            match login_needed {
                Some(why) => s.record_login_needed(&why, summary.ended_at),
                None if signed_in => s.record_signed_in(summary.ended_at),
                None => Ok(()),
            }
        })
        .await?;
    tracing::info!(
        job = %job.name,
        trigger = %trigger,
        new = report.new,
        changed = report.changed,
        uploaded = report.uploaded,
        bytes = report.bytes,
        failed = report.failed.len(),
        skipped = report.skipped.len(),
        up_to_date = report.up_to_date,
        deleted = report.deleted,
        folders_deleted = report.folders_deleted,
        elapsed_ms = report.elapsed.as_millis() as u64,
        "run finished"
    );
    Ok(report)
}

/// Mirror deletes: each item deleted remotely, then its row forgotten.
async fn delete_remote<R: Remote>(
    remote: &R,
    store: &SharedStore,
    job: &JobSpec,
    drive: &str,
    deletes: &[(String, String)],
    report: &mut JobReport,
) -> Result<(), StateError> {
    for (path, item_id) in deletes {
        match remote.delete_item(drive, item_id).await {
            Ok(()) => {
                let (name, p) = (job.name.clone(), vec![path.clone()]);
                store.call(move |s| s.forget(&name, &p)).await?;
                report.deleted += 1;
                tracing::info!(job = %job.name, path, "deleted remotely (mirror)");
            }
            Err(e) => report
                .failed
                .push((path.clone(), format!("remote delete: {e}"))),
        }
    }
    Ok(())
}

/// Mirror: the remote folders this job recorded whose local folder is gone
/// (deleted, or replaced by a file), at `within` and below it or all of
/// them, deepest first. One that holds nothing is deleted. One that still
/// holds something is left alone: an item someone else put there, or a
/// file of ours whose delete failed or was kept; when no file of this job
/// is recorded below it any more, the folder is forgotten (it is theirs
/// now) so later runs do not ask again.
async fn prune_folders<R: Remote>(
    remote: &R,
    store: &SharedStore,
    job: &JobSpec,
    drive: &str,
    within: Option<&str>,
    report: &mut JobReport,
) -> Result<(), StateError> {
    let name = job.name.clone();
    let folders = store.call(move |s| s.folder_items(&name)).await?;
    if folders.is_empty() {
        return Ok(());
    }
    let (source, follow) = (job.source.clone(), job.follow_symlinks);
    let (gone, present): (Vec<_>, Vec<_>) = tokio::task::spawn_blocking(move || {
        folders
            .into_iter()
            .partition(|(p, _)| local_folder_gone(&source.join(p), follow))
    })
    .await
    .expect("folder check panicked");
    // A folder renamed locally only in case ("Docs" -> "docs") is still
    // the same remote folder (names are case-insensitive): never delete
    // one that a present local folder also stands for.
    let live: HashSet<&str> = present.iter().map(|(_, id)| id.as_str()).collect();
    let mut gone: Vec<(String, String)> = gone
        .iter()
        .filter(|(p, _)| {
            within.is_none_or(|top| {
                p == top || p.strip_prefix(top).is_some_and(|r| r.starts_with('/'))
            })
        })
        .cloned()
        .collect();
    // A parent is looked at once its subfolders are gone.
    gone.sort_by(|a, b| deepest_first(&a.0, &b.0));
    for (path, item_id) in gone {
        let forget = |path: String| {
            let name = job.name.clone();
            store.call(move |s| s.forget_folder_tree(&name, &path))
        };
        if live.contains(item_id.as_str()) {
            forget(path).await?;
            continue;
        }
        let first = match remote.list_children(drive, &item_id, None).await {
            Ok(page) => page,
            // Deleted or moved away by someone else: nothing left to do.
            Err(e) if e.is_not_found() => {
                forget(path).await?;
                continue;
            }
            Err(e) => {
                report
                    .failed
                    .push((format!("{path}/"), format!("remote folder delete: {e}")));
                continue;
            }
        };
        if !first.items.is_empty() {
            let (name, p) = (job.name.clone(), path.clone());
            if !store.call(move |s| s.has_files_under(&name, &p)).await? {
                tracing::info!(job = %job.name, folder = %path, "gone locally, kept in SharePoint: it holds items this job did not upload; no longer looked after");
                forget(path).await?;
            }
            continue;
        }
        match remote.delete_item(drive, &item_id).await {
            Ok(()) => {
                tracing::info!(job = %job.name, folder = %path, "folder deleted remotely (mirror)");
                forget(path).await?;
                report.folders_deleted += 1;
            }
            Err(e) => report
                .failed
                .push((format!("{path}/"), format!("remote folder delete: {e}"))),
        }
    }
    Ok(())
}

/// Why a file is not uploaded while someone else's edit of it is left in
/// place (`on_remote_change = "skip"`).
pub(crate) const CONFLICT_HELD: &str =
    "edited in SharePoint by someone else; held (on_remote_change = \"skip\")";

/// Why a file is not uploaded while `twin` is there (see `Store::case_twins`).
pub(crate) fn case_twin_reason(twin: &str) -> String {
    format!(
        "{twin:?} differs from it only in case, and SharePoint names are \
         case-insensitive: both would be one file there, each upload replacing \
         the other; rename one of them (this one goes up once {twin:?} is gone)"
    )
}

/// The guard on remote deletes: why a run that would delete `deletes`
/// files remotely holds them all instead, if it does. The source looks
/// empty (an unmounted disk, until shown otherwise), or `deletes` is more
/// than the job's `max_delete` allows of the files it knows. `sync
/// --dry-run` asks the same question.
pub(crate) fn deletes_held_because(
    job: &JobSpec,
    scanned: &scan::ScanReport,
    deletes: usize,
) -> Option<String> {
    let files = scanned.unchanged + scanned.entries.len() as u64 + scanned.vanished.len() as u64;
    if source_looks_empty(scanned) {
        Some(format!(
            "the source folder {} is empty (an unmounted disk?)",
            job.source.display()
        ))
    } else if !job.max_delete.allows(deletes as u64, files) {
        Some(format!(
            "{deletes} of {files} file(s) would be deleted, more than max_delete ({})",
            job.max_delete
        ))
    } else {
        None
    }
}

/// No file in the source at all: an unmounted disk until shown otherwise,
/// so nothing is deleted remotely (files or folders).
pub(crate) fn source_looks_empty(scanned: &scan::ScanReport) -> bool {
    scanned.entries.is_empty() && scanned.unchanged == 0
}

/// Orders folder paths deepest first (then reverse byte order), the order
/// in which [`prune_folders`] tries them.
pub(crate) fn deepest_first(a: &str, b: &str) -> std::cmp::Ordering {
    let depth = |p: &str| p.matches('/').count();
    depth(b).cmp(&depth(a)).then_with(|| b.cmp(a))
}

/// Whether the local folder at `path` is gone as a scan sees it: missing,
/// now something other than a folder, or a link the job does not follow.
/// An error other than "not there" (an unreadable parent) is not "gone".
pub(crate) fn local_folder_gone(path: &std::path::Path, follow_symlinks: bool) -> bool {
    use std::io::ErrorKind::{NotADirectory, NotFound};
    let meta = if follow_symlinks {
        std::fs::metadata(path)
    } else {
        std::fs::symlink_metadata(path)
    };
    match meta {
        Ok(m) => !m.is_dir(),
        Err(e) => matches!(e.kind(), NotFound | NotADirectory),
    }
}

/// What a mirror run deletes beyond files (see [`prune_folders`]).
#[derive(Clone, Copy)]
struct Mirror<'a> {
    /// Delete the remote folders whose local folder is gone.
    prune: bool,
    /// Recorded folders whose path is now a file to upload: pruned before
    /// the uploads.
    replaced: &'a [String],
}

/// The remote part of a run: drive, job folder, folders, files.
#[allow(clippy::too_many_arguments)]
async fn execute<R: Remote>(
    remote: &R,
    store: &SharedStore,
    throttle: &Throttle,
    job: &JobSpec,
    folders: &[String],
    moves: &[crate::reconcile::Move],
    mut uploads: Vec<crate::scan::LocalEntry>,
    deletes: &[(String, String)],
    mirror: Mirror<'_>,
    report: &mut JobReport,
    progress: Option<Arc<Progress>>,
    cancel: &CancellationToken,
) -> Result<(), StateError> {
    let stop = |report: &mut JobReport, e: RemoteError| {
        if let RemoteError::Auth(a) = &e
            && a.needs_person()
        {
            report.login_needed = Some(a.to_string());
        } else {
            report.error = Some(format!("{} / {}: {e}", job.site, job.library));
        }
        tracing::error!(job = %job.name, error = %e, "cannot reach the library; changes are recorded and sent next run");
    };
    let drive = match drive_id(remote, store, job).await? {
        Ok(d) => d,
        Err(e) => {
            stop(report, e);
            return Ok(());
        }
    };
    let uploader_drive = drive.clone();
    let uploader = Uploader::new(remote, store, throttle, job, drive)
        .with_progress(progress)
        .with_cancel(cancel.clone());
    if let Err(e) = uploader.ensure_root().await {
        stop(report, e);
        return Ok(());
    }
    uploader.verify_unconfirmed().await?;
    // Deletes come last (a file moved without being noticed as a move is
    // up at its new path before the old one goes), except where they make
    // way: a file whose path is now a folder (that folder cannot be
    // created, nor anything below it uploaded, while the file is there),
    // and the files of a folder whose path is now a file (the folder goes
    // too, if nothing else is in it, so the file can take its name).
    let (blocking, deletes): (Vec<_>, Vec<_>) = deletes.iter().cloned().partition(|(path, _)| {
        folders.contains(path)
            || mirror.replaced.iter().any(|f| {
                path.strip_prefix(f.as_str())
                    .is_some_and(|rest| rest.starts_with('/'))
            })
    });
    if !cancel.is_cancelled() {
        delete_remote(remote, store, job, &uploader_drive, &blocking, report).await?;
        for folder in mirror.replaced {
            prune_folders(remote, store, job, &uploader_drive, Some(folder), report).await?;
        }
    }
    for folder in folders {
        uploader.create_folder(folder).await?;
    }
    let moved =
        crate::reconcile::apply_moves(remote, store, job, &uploader_drive, moves, &uploads).await?;
    uploads.retain(|e| !moved.iter().any(|(_, to)| *to == e.path));
    report.moved = moved;
    let concurrency = job.settings.concurrency.max(1);
    let outcomes: Vec<(String, u64, Result<FileOutcome, StateError>)> =
        // Indices, not references, so the future stays `Send` (a closure
        // taking `&LocalEntry` would have to be higher-ranked).
        futures_util::stream::iter(0..uploads.len())
            .map(|i| {
                let uploader = &uploader;
                let entry = &uploads[i];
                async move {
                    // The uploader stops between fragments and bounds the
                    // one in flight; this bounds everything else (a long
                    // Retry-After, a backoff) so a cancelled run ends soon.
                    // Dropping the upload there is like a crash: every step
                    // before it is recorded.
                    let hard_stop = async {
                        cancel.cancelled().await;
                        tokio::time::sleep(CANCEL_GRACE + Duration::from_secs(1)).await;
                    };
                    let outcome = tokio::select! {
                        o = uploader.upload(entry) => o,
                        () = hard_stop => Ok(FileOutcome::Cancelled),
                    };
                    uploader.count_file_done();
                    (entry.path.clone(), entry.size, outcome)
                }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
    for (path, size, outcome) in outcomes {
        let outcome = outcome?;
        match &outcome {
            FileOutcome::Uploaded { encoded_as, .. } => {
                report.uploaded += 1;
                tracing::debug!(job = %job.name, path, size, "uploaded");
                if let Some(remote_name) = encoded_as {
                    report.encoded.push((path.clone(), remote_name.clone()));
                }
            }
            FileOutcome::Skipped { reason } => report.skipped.push((path.clone(), reason.clone())),
            FileOutcome::Failed { error } => report.failed.push((path.clone(), error.clone())),
            FileOutcome::Requeued => report.requeued.push(path.clone()),
            FileOutcome::LoginNeeded => {}
            FileOutcome::Cancelled => report.interrupted += 1,
            FileOutcome::QuotaFull => *report.quota_full.get_or_insert(0) += 1,
        }
    }
    if cancel.is_cancelled() {
        report.cancelled = true;
    } else {
        delete_remote(remote, store, job, &uploader_drive, &deletes, report).await?;
        if mirror.prune {
            prune_folders(remote, store, job, &uploader_drive, None, report).await?;
        }
    }
    report.bytes = uploader
        .sent_bytes
        .load(std::sync::atomic::Ordering::Relaxed);
    if let Some(why) = uploader.login_needed() {
        report.login_needed = Some(why);
    }
    report.failed.sort();
    report.skipped.sort();
    report.encoded.sort();
    Ok(())
}

/// Files uploading at once across every job of the tenant: the largest
/// `concurrency` configured (defaults or any job), so a job that asks for
/// more than the default gets it, and several jobs running together share
/// that many slots instead of multiplying them.
pub fn tenant_concurrency(config: &Config) -> usize {
    config
        .jobs
        .iter()
        .map(|j| j.settings.concurrency)
        .chain([config.defaults.concurrency])
        .max()
        .unwrap_or(1)
        .max(1)
}

/// Knobs of a one-shot sync that tests turn (production uses the defaults).
#[derive(Debug, Clone, Default)]
pub struct SyncOptions {
    /// Retry timing for every request.
    pub policy: RetryPolicy,
    /// Counters for a progress line (set when one is shown).
    pub progress: Option<Arc<Progress>>,
    /// Cancelled by SIGTERM/SIGINT: the job running stops between
    /// fragments ([`run_once`]) and no further job starts.
    pub cancel: CancellationToken,
}

/// Why a sync could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Remote(#[from] RemoteError),
}

/// `sharepush sync`: one run of each of `jobs`, in order, sharing one
/// store, one token provider, one throttle gate and one connection pool.
pub async fn sync_jobs(
    config: &Config,
    jobs: &[&JobSpec],
    options: &SyncOptions,
) -> Result<Vec<JobReport>, SyncError> {
    let state_dir = config.daemon.state_dir.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&state_dir))
        .await
        .expect("open task panicked")?;
    let store = SharedStore::new(store);
    let http = crate::remote::graph::http_client()?;
    let tokens = Arc::new(TokenProvider::new(
        config.auth.clone(),
        http.clone(),
        &config.daemon.state_dir,
        options.policy.clone(),
    ));
    let throttle = Arc::new(Throttle::new(
        tenant_concurrency(config),
        options.policy.clone(),
    ));
    let remote = GraphRemote::new(http, &config.auth.graph_url, tokens, Arc::clone(&throttle));
    let mut reports = Vec::with_capacity(jobs.len());
    for job in jobs {
        if options.cancel.is_cancelled() {
            tracing::info!(job = %job.name, "not started: the sync was cancelled");
            reports.push(JobReport {
                name: job.name.clone(),
                cancelled: true,
                ..JobReport::default()
            });
            continue;
        }
        reports.push(
            run_once(
                &remote,
                &store,
                &throttle,
                job,
                RunTrigger::Manual,
                None,
                options.progress.clone(),
                &options.cancel,
            )
            .await?,
        );
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tenant_gets_the_largest_concurrency_any_job_asks_for() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s").unwrap();
        std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let source = dir.path().join("src");
        std::fs::create_dir(&source).unwrap();
        let path = dir.path().join("config.toml");
        let job = |name: &str, extra: &str| {
            format!(
                "[[job]]\nname = \"{name}\"\nsource = \"{}\"\nsite = \"https://contoso.sharepoint.com/sites/a\"\n\
                 library = \"Documents\"\nfolder = \"{name}\"\nschedule = \"@daily\"\n{extra}\n",
                source.display()
            )
        };
        let text = |jobs: &str| {
            format!(
                "[auth]\ntenant = \"contoso.onmicrosoft.com\"\nclient_id = \"11111111-2222-3333-4444-555555555555\"\n\
                 mode = \"client_credentials\"\nclient_secret_file = \"{}\"\n\n[daemon]\nstate_dir = \"{}\"\n\n\
                 [defaults]\nconcurrency = 4\n\n{jobs}",
                secret.display(),
                dir.path().join("state").display()
            )
        };
        std::fs::write(&path, text(&(job("a", "") + &job("b", "concurrency = 12")))).unwrap();
        let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(tenant_concurrency(&config), 12);
        std::fs::write(&path, text(&job("a", "concurrency = 2"))).unwrap();
        let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(tenant_concurrency(&config), 4, "never below the default");
    }
}
