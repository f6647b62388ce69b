//! Upload: carry out a plan's folder and file actions against a [`Remote`],
//! recording every file state transition in the store before the next step
//! depends on it.
//!
//! Input: one job's [`Uploader`] (remote, store, drive, job folder, limits)
//! and the plan's `CreateFolder` and `Upload` actions. Output: one
//! [`FileOutcome`] per file, already recorded in `state`.
//!
//! How a file goes up:
//! - its path is mapped to names SharePoint accepts (`remote::names`, per the
//!   job's `invalid_names`); refused or too long paths are recorded skipped;
//! - zero-byte files by one simple PUT (sessions refuse empty content), with
//!   the modification time set after;
//! - everything else by an upload session created with `fileSystemInfo`
//!   (mtime, one version) and conflict behaviour `replace`. The session URL
//!   and the source fingerprint are saved *before* the first fragment, and
//!   the acknowledged offset after each, so a restart resumes: it asks the
//!   service where it stands (`nextExpectedRanges`) and goes on from there.
//!   The file is read one fragment at a time and hashed as it is read; the
//!   next fragment is read and hashed on a blocking thread while the
//!   current one is in flight (memory is about two fragments per upload,
//!   never the file). A file the scan did not hash (new, `hashes: None`) is
//!   hashed only here, and those hashes are recorded with the upload;
//! - the file's fingerprint (size, mtime, inode) is checked before the first
//!   fragment and after reading each one; a change abandons the session and
//!   queues the file again, so the remote never gets half-old, half-new
//!   content;
//! - a 416 or a broken connection resumes from the service's offset; a
//!   session that vanished (404) is asked about once more after a short wait,
//!   then the upload starts over (unless the file turns out to be complete);
//! - the returned quickXorHash is compared with the hash of what was sent.
//!   Files SharePoint rewrites (Office, PDF, HTML) that differ are recorded
//!   synced with the remote hash and size, so the next run does not upload
//!   them again; other mismatches are uploaded once more, then failed. A
//!   missing hash is asked for again and, if still missing, checked on a
//!   later run ([`Uploader::verify_unconfirmed`]).
//!
//! Errors: one file failing never stops the others. Permanent errors record
//! the file failed with Graph's innermost code; `507` stops uploads to the
//! drive by every job sharing the throttle (the files stay pending, the
//! job's report says the library is full); an authentication failure that needs a person stops
//! the job's uploads and leaves the files pending for after `sharepush login`.
//! Only a broken state store ends the run.
//!
//! What it does not do: decide what to upload (`plan`), scan, or retry
//! single requests (the remote does that).

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use tokio::sync::SemaphorePermit;
use tokio_util::sync::CancellationToken;

use crate::config::{FRAGMENT_UNIT, JobSpec};
use crate::hash::{ContentHasher, Hashes};
use crate::remote::names::{self, MAX_PATH_CHARS};
use crate::remote::{
    AuthError, ErrorClass, FragmentOutcome, Remote, RemoteError, RemoteItem, RemotePath,
};
use crate::retry::{Bandwidth, RetryPolicy, Throttle};
use crate::scan::{Fingerprint, LocalEntry};
use crate::state::{
    FileStateKind, SourceFingerprint, StateError, Store, SyncedInfo, UploadSessionRow,
};

/// The state store shared by async tasks: one owner (a mutex around the one
/// connection), used only from blocking threads.
#[derive(Clone)]
pub struct SharedStore(Arc<Mutex<Store>>);

impl std::fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedStore").finish_non_exhaustive()
    }
}

impl SharedStore {
    /// Wraps an open store.
    pub fn new(store: Store) -> SharedStore {
        SharedStore(Arc::new(Mutex::new(store)))
    }

    /// Runs `f` with the store on a blocking thread (SQLite must stay off
    /// the async workers).
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> T + Send + 'static,
    ) -> T {
        let inner = Arc::clone(&self.0);
        tokio::task::spawn_blocking(move || {
            let mut store = inner.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut store)
        })
        .await
        .expect("state store task panicked")
    }
}

/// Live counters of a sync for a terminal progress line: written by the
/// uploads, read by whoever displays them. Cheap atomics, no locking on the
/// upload path (the job name changes once per job).
#[derive(Debug, Default)]
pub struct Progress {
    /// The job being uploaded, and when its uploads started (for the rate).
    job: Mutex<(String, Option<std::time::Instant>)>,
    /// Files the current job's plan uploads, and how many are finished.
    pub files_total: AtomicU64,
    pub files_done: AtomicU64,
    /// Bytes the current job's plan uploads, and how many were sent.
    pub bytes_total: AtomicU64,
    pub bytes_sent: AtomicU64,
}

impl Progress {
    /// A job starts uploading `files` files of `bytes` bytes in all.
    pub fn start_job(&self, job: &str, files: u64, bytes: u64) {
        *self.job.lock().unwrap_or_else(|e| e.into_inner()) =
            (job.to_string(), Some(std::time::Instant::now()));
        self.files_total.store(files, Ordering::Relaxed);
        self.files_done.store(0, Ordering::Relaxed);
        self.bytes_total.store(bytes, Ordering::Relaxed);
        self.bytes_sent.store(0, Ordering::Relaxed);
    }

    /// The job being uploaded now, and how long its uploads have run.
    pub fn job(&self) -> (String, std::time::Duration) {
        let guard = self.job.lock().unwrap_or_else(|e| e.into_inner());
        (
            guard.0.clone(),
            guard.1.map(|t| t.elapsed()).unwrap_or_default(),
        )
    }
}

/// How one file's upload ended (already recorded in the store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileOutcome {
    /// Uploaded and verified (or recorded as rewritten by SharePoint).
    Uploaded {
        bytes: u64,
        /// The remote name when it had to be encoded.
        encoded_as: Option<String>,
    },
    /// Not uploaded, on purpose (invalid name, path too long).
    Skipped { reason: String },
    /// Failed; recorded with the error and retried on a later run.
    Failed { error: String },
    /// Changed while being uploaded; queued again (the next scan re-reads it).
    Requeued,
    /// Not attempted or interrupted because signing in needs a person; the
    /// file stays pending.
    LoginNeeded,
    /// Not started, or stopped between fragments, because the run was
    /// cancelled (SIGTERM/SIGINT, daemon shutdown). The file stays pending
    /// and its saved upload session resumes next run.
    Cancelled,
    /// Not attempted or stopped because the library is full (507, met by
    /// this job or another on the same drive). The file stays pending.
    QuotaFull,
}

/// Why an upload stopped before it could be recorded as done.
#[derive(Debug, thiserror::Error)]
enum TransferError {
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// The local file could not be read.
    #[error("cannot read the file: {0}")]
    Local(#[source] std::io::Error),
    /// The file changed since it was scanned or while it was read.
    #[error("the file changed while it was being uploaded")]
    Changed,
    /// The run was cancelled; the session (if any) stays saved.
    #[error("cancelled")]
    Cancelled,
    #[error(transparent)]
    State(#[from] StateError),
}

/// Where the file `rel` (relative to the job's source) goes under the job's
/// naming rules, relative to the job's folder, or why it is not uploaded: a
/// name SharePoint refuses (per `invalid_names`) or a path too long for it
/// (graph-api.md section 8). The uploader's first check; `job` asks it too
/// for files these rules skipped before, which stay skipped while they are
/// unchanged unless the rules now take them (`invalid_names`, the job's
/// folder or site changed).
pub fn remote_name(job: &JobSpec, rel: &str) -> Result<names::MappedPath, String> {
    let root = RemotePath::parse(&job.folder);
    let mapped = names::map_path(rel, job.settings.invalid_names, root.is_root())
        .map_err(|problem| problem.to_string())?;
    let length =
        names::server_relative_len(&job.site.path, &job.library, &root.join(&mapped.remote));
    if length >= MAX_PATH_CHARS {
        return Err(format!(
            "path too long for SharePoint: {length} characters with site and library \
             (limit {})",
            MAX_PATH_CHARS - 1
        ));
    }
    Ok(mapped)
}

/// One job's uploads against one drive.
#[derive(Debug)]
pub struct Uploader<'a, R: Remote> {
    remote: &'a R,
    store: &'a SharedStore,
    throttle: &'a Throttle,
    job: &'a JobSpec,
    /// The drive (document library) id.
    drive: String,
    /// The job's folder inside the library.
    root: RemotePath,
    /// Optional bytes-per-second limit of this job.
    bandwidth: Option<Bandwidth>,
    /// Set once this job reported the drive full (507, from any job sharing
    /// the drive through the throttle): reported once per job.
    quota_reported: AtomicBool,
    /// Set once signing in needs a person: later uploads are not attempted.
    login_needed: Mutex<Option<String>>,
    /// Folders (local relative paths) that could not be created, and why.
    failed_folders: Mutex<HashMap<String, String>>,
    /// Bytes of file content sent, for the run summary.
    pub sent_bytes: AtomicU64,
    /// Where a terminal progress line reads from, if one is shown.
    progress: Option<Arc<Progress>>,
    /// Cancelled on shutdown: no new file, no new fragment; the fragment in
    /// flight gets [`CANCEL_GRACE`] to finish.
    cancel: CancellationToken,
}

/// How long a fragment already in flight may still take once the run is
/// cancelled; after that it is abandoned (the saved offset is behind it,
/// so the next run resends it).
pub const CANCEL_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Extensions of files SharePoint rewrites after upload (graph-api.md 3).
const REWRITTEN_EXTENSIONS: &[&str] = &[
    "docx", "docm", "dotx", "xlsx", "xlsm", "xltx", "pptx", "pptm", "potx", "ppsx", "vsdx", "pdf",
    "html", "htm",
];

/// Whether SharePoint may change this file's bytes after upload.
pub fn is_rewritten_type(name: &str) -> bool {
    name.rsplit_once('.').is_some_and(|(_, ext)| {
        REWRITTEN_EXTENSIONS
            .iter()
            .any(|e| e.eq_ignore_ascii_case(ext))
    })
}

/// How a finished upload's remote hash compares with what was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Same hash and size.
    Match,
    /// Differs, but SharePoint rewrites files of this type.
    Rewritten,
    /// Differs on a file SharePoint leaves alone.
    Mismatch,
    /// The service has not computed the hash yet.
    Missing,
}

fn verdict(name: &str, item: &RemoteItem, sent: &Hashes, size: u64) -> Verdict {
    match &item.quick_xor {
        None => Verdict::Missing,
        Some(h) if *h == sent.quick_xor && item.size == size => Verdict::Match,
        Some(_) if is_rewritten_type(name) => Verdict::Rewritten,
        Some(_) => Verdict::Mismatch,
    }
}

/// 416s in a row (each answered by asking the service where it stands)
/// before the session is started over.
const MAX_RANGE_RESYNCS: u32 = 5;

/// The local modification time as Graph takes it (UTC, whole seconds).
fn mtime_of(mtime_ns: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(mtime_ns.div_euclid(1_000_000_000), 0).unwrap_or_default()
}

fn unix_now() -> i64 {
    Utc::now().timestamp()
}

/// The longest a failed file waits for its next attempt.
const MAX_FILE_RETRY_SECS: i64 = 6 * 3600;

/// When a failed file is due again, after `failures` failures in a row
/// (this one included): soon for temporary trouble, 5 minutes doubling with
/// every failure in a row up to 6 hours (a file that fails every time, an
/// unreadable one say, is not retried and logged every 5 minutes forever),
/// and 6 hours at once for errors that need someone to change something.
fn next_attempt(class: ErrorClass, failures: u32) -> i64 {
    let wait = match class {
        ErrorClass::Permanent => MAX_FILE_RETRY_SECS,
        ErrorClass::Quota => 3600,
        ErrorClass::RetryAfter(d) => d.as_secs().max(60) as i64,
        ErrorClass::Reauth => 300,
        ErrorClass::Backoff | ErrorClass::SessionGone => {
            (300_i64 << failures.saturating_sub(1).min(10)).min(MAX_FILE_RETRY_SECS)
        }
    };
    unix_now() + wait
}

/// A fragment being read (or already read) ahead of its PUT, on a blocking
/// thread that runs whether or not anyone awaits it. Dropped unused, the
/// thread finishes and its buffer is freed.
struct Prefetch {
    offset: u64,
    len: usize,
    task: tokio::task::JoinHandle<ReadResult>,
}

type ReadResult = Result<(Bytes, ContentHasher, Fingerprint), std::io::Error>;

/// Whether a saved session was started from this very source: same size,
/// mtime and inode, and the same content hash when both sides have one (a
/// session of a file the scan did not hash saved an empty hash).
fn same_source(saved: &SourceFingerprint, now: &SourceFingerprint) -> bool {
    saved.size == now.size
        && saved.mtime_ns == now.mtime_ns
        && saved.inode == now.inode
        && (saved.quick_xor.is_empty()
            || now.quick_xor.is_empty()
            || saved.quick_xor == now.quick_xor)
}

/// Reads bytes `offset..offset + len` into `buf` (a fragment buffer sent
/// before, or empty), feeds them to `hasher`, and `fstat`s the file after
/// (to notice a change while it was read).
fn spawn_read(
    file: Arc<File>,
    offset: u64,
    len: usize,
    mut hasher: ContentHasher,
    spare: BytesMut,
) -> tokio::task::JoinHandle<ReadResult> {
    tokio::task::spawn_blocking(move || {
        // A reused buffer of the same size is overwritten as it is: no
        // fresh zeroed 10 MiB (and its page faults) per fragment.
        let mut buf = fragment_buffer(spare, len);
        // Read and hash in slices that fit in L2 cache: each slice is hashed
        // right after the kernel copied it in, instead of being fetched from
        // memory again once the whole fragment is read (measured: the read
        // copy had cost as much CPU as SHA-1 on a 2 GiB upload).
        let mut done = 0;
        for slice in buf.chunks_mut(crate::hash::READ_BUFFER_SIZE) {
            file.read_exact_at(slice, offset + done)?;
            hasher.update(slice);
            done += slice.len() as u64;
        }
        let after = Fingerprint::of(&file.metadata()?);
        Ok((buf.freeze(), hasher, after))
    })
}

/// A buffer of `len` bytes for a fragment, starting on a
/// [`crate::hash::READ_ALIGN`] boundary (reads into it are four times
/// faster): `spare` (the buffer of a fragment already sent) when it is
/// aligned and large enough, else a new one. Turning it into [`Bytes`] and
/// back after the PUT moves no byte, so the alignment stays.
fn fragment_buffer(mut spare: BytesMut, len: usize) -> BytesMut {
    if spare.capacity() < len || crate::hash::align_pad(spare.as_ptr()) != 0 {
        return crate::hash::aligned_buffer(len);
    }
    spare.resize(len, 0);
    spare
}

async fn read_fragment(
    file: Arc<File>,
    offset: u64,
    len: usize,
    hasher: ContentHasher,
) -> ReadResult {
    spawn_read(file, offset, len, hasher, BytesMut::new())
        .await
        .expect("read task panicked")
}

/// Hashes bytes `0..len` of the file again (after a resume, so the hash of
/// what was sent covers the fragments a previous process sent).
async fn hash_prefix(file: Arc<File>, len: u64) -> Result<ContentHasher, std::io::Error> {
    tokio::task::spawn_blocking(move || {
        let mut hasher = ContentHasher::new();
        let mut buf = crate::hash::aligned_buffer(crate::hash::READ_BUFFER_SIZE);
        let mut done = 0u64;
        while done < len {
            let n = buf.len().min((len - done) as usize);
            file.read_exact_at(&mut buf[..n], done)?;
            hasher.update(&buf[..n]);
            done += n as u64;
        }
        Ok(hasher)
    })
    .await
    .expect("hash task panicked")
}

async fn fstat(file: Arc<File>) -> Result<Fingerprint, std::io::Error> {
    tokio::task::spawn_blocking(move || Ok(Fingerprint::of(&file.metadata()?)))
        .await
        .expect("stat task panicked")
}

impl<'a, R: Remote> Uploader<'a, R> {
    /// An uploader for `job` into `drive`.
    pub fn new(
        remote: &'a R,
        store: &'a SharedStore,
        throttle: &'a Throttle,
        job: &'a JobSpec,
        drive: String,
    ) -> Uploader<'a, R> {
        Uploader {
            remote,
            store,
            throttle,
            job,
            drive,
            root: RemotePath::parse(&job.folder),
            bandwidth: job.settings.bandwidth_limit.map(Bandwidth::new),
            quota_reported: AtomicBool::new(false),
            login_needed: Mutex::new(None),
            failed_folders: Mutex::new(HashMap::new()),
            sent_bytes: AtomicU64::new(0),
            progress: None,
            cancel: CancellationToken::new(),
        }
    }

    /// Stops starting files and fragments once `cancel` is cancelled (see
    /// [`FileOutcome::Cancelled`]). Without it the uploader is never
    /// cancelled.
    pub fn with_cancel(mut self, cancel: CancellationToken) -> Self {
        self.cancel = cancel;
        self
    }

    /// Reports bytes and finished files to `progress` as well.
    pub fn with_progress(mut self, progress: Option<Arc<Progress>>) -> Self {
        self.progress = progress;
        self
    }

    fn count_sent(&self, n: u64) {
        self.sent_bytes.fetch_add(n, Ordering::Relaxed);
        if let Some(p) = &self.progress {
            p.bytes_sent.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// One more file is finished, whatever its outcome (for the progress line).
    pub fn count_file_done(&self) {
        if let Some(p) = &self.progress {
            p.files_done.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn policy(&self) -> &RetryPolicy {
        self.throttle.policy()
    }

    /// The sign-in problem that stopped this job's uploads, if one did.
    pub fn login_needed(&self) -> Option<String> {
        self.login_needed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn note_auth(&self, e: &AuthError) {
        let mut guard = self.login_needed.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            tracing::error!(job = %self.job.name, error = %e, "uploads paused: signing in needs a person");
            *guard = Some(e.to_string());
        }
    }

    /// True once this job met the drive's 507 (its own or another job's).
    pub fn quota_full(&self) -> bool {
        self.quota_reported.load(Ordering::Acquire)
    }

    /// Logs, once per job, that the library is full.
    fn note_quota(&self, first_for_drive: bool) {
        if !self.quota_reported.swap(true, Ordering::AcqRel) {
            tracing::error!(
                job = %self.job.name,
                library = %self.job.library,
                seen_by = if first_for_drive { "this job" } else { "another job on the same library" },
                "the library is full (507 quotaLimitReached): no more uploads to it by any job; files stay pending"
            );
        }
    }

    /// Makes sure the job's own folder exists (once; remembered in state).
    pub async fn ensure_root(&self) -> Result<(), RemoteError> {
        let job = self.job.name.clone();
        let known = self
            .store
            .call(move |s| s.folder_item(&job, ""))
            .await
            .ok()
            .flatten();
        if known.is_some() {
            return Ok(());
        }
        let mut path = RemotePath::root();
        let mut item = None;
        for seg in self.root.segments() {
            path = path.child(seg);
            item = Some(self.remote.ensure_folder(&self.drive, &path).await?);
        }
        let root = match item {
            Some(i) => i,
            None => match self.remote.stat(&self.drive, &RemotePath::root()).await? {
                Some(i) => i,
                None => return Ok(()),
            },
        };
        let job = self.job.name.clone();
        let _ = self
            .store
            .call(move |s| s.record_folder_item(&job, "", &root))
            .await;
        Ok(())
    }

    /// Creates the remote folder for local folder `rel` (its parent first,
    /// as the plan orders them) and records it.
    pub async fn create_folder(&self, rel: &str) -> Result<(), StateError> {
        // Mapped as the parent of a file in it, so every segment is judged
        // as a folder name (a root folder `forms` is reserved, a file not).
        let mapped = match names::map_path(
            &format!("{rel}/x"),
            self.job.settings.invalid_names,
            self.root.is_root(),
        ) {
            Ok(m) => m.remote.split_last().map(|(p, _)| p).unwrap_or_default(),
            Err(problem) => {
                self.fail_folder(rel, problem.to_string());
                return Ok(());
            }
        };
        let path = self.root.join(&mapped);
        match self.remote.ensure_folder(&self.drive, &path).await {
            Ok(item) => {
                let (job, rel) = (self.job.name.clone(), rel.to_string());
                self.store
                    .call(move |s| s.record_folder_item(&job, &rel, &item))
                    .await
            }
            Err(RemoteError::Auth(e)) if e.needs_person() => {
                self.note_auth(&e);
                Ok(())
            }
            // A full library refuses folders too; not the folder's fault.
            // As for a file's 507: no job sends more to the library, and
            // the files under it stay pending (not failed for six hours).
            Err(RemoteError::Quota) => {
                let first = self.throttle.stop_drive(&self.drive);
                self.note_quota(first);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(job = %self.job.name, folder = rel, error = %e, "cannot create folder");
                self.fail_folder(rel, format!("folder {rel:?} could not be created: {e}"));
                Ok(())
            }
        }
    }

    fn fail_folder(&self, rel: &str, why: String) {
        self.failed_folders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(rel.to_string(), why);
    }

    /// Why a folder above `path` could not be created, if one could not.
    fn folder_problem(&self, path: &str) -> Option<String> {
        let failed = self
            .failed_folders
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        path.match_indices('/')
            .find_map(|(i, _)| failed.get(&path[..i]).cloned())
    }

    /// Uploads one file and records the outcome. Only a broken state store
    /// is an error; everything else is an outcome.
    pub async fn upload(&self, entry: &LocalEntry) -> Result<FileOutcome, StateError> {
        // Given back while the upload waits for the job's bandwidth turn
        // (see `session_upload`), so `Option`.
        let mut slot = tokio::select! {
            slot = self.throttle.upload_slot() => Some(slot),
            () = self.cancel.cancelled() => return Ok(FileOutcome::Cancelled),
        };
        let job = self.job.name.clone();
        let path = entry.path.clone();
        if self.cancel.is_cancelled() {
            return Ok(FileOutcome::Cancelled);
        }
        if self.login_needed().is_some() {
            return Ok(FileOutcome::LoginNeeded);
        }
        let mapped = match remote_name(self.job, &entry.path) {
            Ok(m) => m,
            Err(reason) => return self.skip(entry, reason).await,
        };
        let mut remote_path = self.root.join(&mapped.remote);
        if let Some(why) = self.folder_problem(&entry.path) {
            return self.fail(entry, why, ErrorClass::Permanent).await;
        }
        if self.throttle.drive_full(&self.drive) {
            self.note_quota(false);
            return Ok(FileOutcome::QuotaFull);
        }
        if mapped.encoded {
            tracing::info!(job = %job, path = %entry.path, remote = %mapped.remote, "name encoded for SharePoint");
        }
        // Ours goes beside someone else's edit instead of over it
        // (`on_remote_change = "keep-both"`, chosen and checked by reconcile).
        let copy = match self
            .store
            .call(move |s| {
                s.mark_uploading(&job, &path)?;
                s.copy_target(&job, &path)
            })
            .await
        {
            Ok(copy) => copy,
            // Recorded as skipped meanwhile: that decision stands.
            Err(StateError::InvalidTransition { from, .. }) => {
                return Ok(FileOutcome::Skipped {
                    reason: format!("recorded as {from}"),
                });
            }
            Err(e) => return Err(e),
        };
        if let Some(copy) = &copy {
            match names::map_path(copy, self.job.settings.invalid_names, self.root.is_root()) {
                Ok(m) => remote_path = self.root.join(&m.remote),
                Err(problem) => {
                    let why = format!("the conflict copy {copy:?} cannot be stored: {problem}");
                    return self.fail(entry, why, ErrorClass::Permanent).await;
                }
            }
        }

        let mut verify_retry = false;
        loop {
            // Content read from now on is as of now: a file changed less
            // than the racy margin before is recorded racy (see the scan).
            let racy_cutoff_ns = crate::scan::racy_cutoff_now();
            match self.transfer(entry, &remote_path, &mut slot).await {
                Ok((item, sent)) => {
                    match self
                        .finish(
                            entry,
                            &remote_path,
                            item,
                            &sent,
                            Attempt {
                                second_try: verify_retry,
                                racy_cutoff_ns,
                                copy: copy.is_some(),
                            },
                        )
                        .await?
                    {
                        Some(mut outcome) => {
                            if let FileOutcome::Uploaded { encoded_as, .. } = &mut outcome
                                && mapped.encoded
                            {
                                *encoded_as = Some(mapped.remote.to_string());
                            }
                            return Ok(outcome);
                        }
                        None => {
                            verify_retry = true;
                            tracing::warn!(job = %self.job.name, path = %entry.path, "remote hash differs from what was sent; uploading once more");
                        }
                    }
                }
                Err(TransferError::Changed) => {
                    let (job, path) = (self.job.name.clone(), entry.path.clone());
                    let times = self
                        .store
                        .call(move |s| s.note_changed_while_sending(&job, &path))
                        .await?;
                    if times >= UNSTABLE_AFTER {
                        // Written to all the time: no consistent copy can be
                        // read, and a quiet requeue would hide that forever.
                        let error = format!(
                            "changed while being uploaded, {times} uploads in a row: it is \
                             written to all the time, so no consistent copy could be sent; \
                             back it up from a snapshot or a copy the application makes, \
                             or exclude it"
                        );
                        return self.fail(entry, error, ErrorClass::Backoff).await;
                    }
                    tracing::info!(job = %self.job.name, path = %entry.path, "changed while uploading; queued again");
                    return Ok(FileOutcome::Requeued);
                }
                Err(TransferError::Cancelled) => {
                    let (job, path) = (self.job.name.clone(), entry.path.clone());
                    self.store
                        .call(move |s| s.mark_pending(&job, &path))
                        .await?;
                    tracing::info!(job = %self.job.name, path = %entry.path, "upload interrupted; it resumes next run");
                    return Ok(FileOutcome::Cancelled);
                }
                Err(TransferError::State(e)) => return Err(e),
                Err(TransferError::Local(e)) => {
                    return self
                        .fail(
                            entry,
                            format!("cannot read the file: {e}"),
                            ErrorClass::Backoff,
                        )
                        .await;
                }
                Err(TransferError::Remote(e)) => {
                    let class = e.class();
                    match (&e, class) {
                        (RemoteError::Auth(a), ErrorClass::Reauth) => {
                            self.note_auth(a);
                            // Waits for the sign-in as pending (not shown as
                            // uploading while nothing is sent).
                            let (job, path) = (self.job.name.clone(), entry.path.clone());
                            self.store
                                .call(move |s| s.mark_pending(&job, &path))
                                .await?;
                            return Ok(FileOutcome::LoginNeeded);
                        }
                        (_, ErrorClass::Quota) => {
                            // Not the file's fault: it stays pending, and no
                            // job sharing the drive sends more to it.
                            let first = self.throttle.stop_drive(&self.drive);
                            self.note_quota(first);
                            let (job, path) = (self.job.name.clone(), entry.path.clone());
                            self.store
                                .call(move |s| s.mark_pending(&job, &path))
                                .await?;
                            return Ok(FileOutcome::QuotaFull);
                        }
                        _ => {}
                    }
                    return self.fail(entry, e.to_string(), class).await;
                }
            }
        }
    }

    async fn skip(&self, entry: &LocalEntry, reason: String) -> Result<FileOutcome, StateError> {
        tracing::warn!(job = %self.job.name, path = %entry.path, reason, "not uploaded");
        let (job, path, r) = (self.job.name.clone(), entry.path.clone(), reason.clone());
        self.store
            .call(move |s| s.record_skipped(&job, &path, &r))
            .await?;
        Ok(FileOutcome::Skipped { reason })
    }

    async fn fail(
        &self,
        entry: &LocalEntry,
        error: String,
        class: ErrorClass,
    ) -> Result<FileOutcome, StateError> {
        let (job, path, e) = (self.job.name.clone(), entry.path.clone(), error.clone());
        let attempts = self
            .store
            .call(move |s| {
                s.mark_failed_with(&job, &path, &e, |failures| {
                    Some(next_attempt(class, failures))
                })
            })
            .await?;
        tracing::warn!(job = %self.job.name, path = %entry.path, attempt = attempts, error, "upload failed");
        Ok(FileOutcome::Failed { error })
    }

    /// Records a finished upload after checking its hash. `None` asks the
    /// caller to upload once more (a mismatch on a file nobody rewrites).
    async fn finish(
        &self,
        entry: &LocalEntry,
        remote_path: &RemotePath,
        mut item: RemoteItem,
        sent: &Hashes,
        attempt: Attempt,
    ) -> Result<Option<FileOutcome>, StateError> {
        let Attempt {
            second_try,
            racy_cutoff_ns,
            copy,
        } = attempt;
        let name = remote_path
            .split_last()
            .map(|(_, n)| n.to_string())
            .unwrap_or_default();
        let mut v = verdict(&name, &item, sent, entry.size);
        if v == Verdict::Missing {
            // Right after an upload the hash may not be computed yet.
            if let Ok(Some(again)) = self.remote.stat(&self.drive, remote_path).await {
                item = again;
                v = verdict(&name, &item, sent, entry.size);
            }
        }
        match v {
            Verdict::Mismatch if !second_try => return Ok(None),
            Verdict::Mismatch => {
                let error = format!(
                    "quickXorHash mismatch after upload (sent {}, SharePoint has {})",
                    sent.quick_xor,
                    item.quick_xor.as_deref().unwrap_or("none")
                );
                return self.fail(entry, error, ErrorClass::Backoff).await.map(Some);
            }
            Verdict::Rewritten => {
                tracing::info!(job = %self.job.name, path = %entry.path, "SharePoint rewrote the file; recording its hash and size");
            }
            Verdict::Missing => {
                tracing::info!(job = %self.job.name, path = %entry.path, "remote hash not available yet; it is checked on a later run");
            }
            Verdict::Match => {}
        }
        if entry.hashes.is_none() {
            // The scan did not hash it: what was read for the upload (and
            // held still while read) is its content.
            let (job, path, h) = (self.job.name.clone(), entry.path.clone(), sent.clone());
            let fp = (entry.size, entry.mtime_ns, entry.inode);
            self.store
                .call(move |s| s.record_hashes(&job, &path, fp, &h, racy_cutoff_ns))
                .await?;
        }
        let info = SyncedInfo::from_item(sent.clone(), &item);
        let (job, path) = (self.job.name.clone(), entry.path.clone());
        let state = if copy {
            let (size, fp) = (item.size, (entry.size, entry.mtime_ns, entry.inode));
            let state = self
                .store
                .call(move |s| s.record_conflict_copy(&job, &path, fp, &info, size))
                .await?;
            tracing::info!(job = %self.job.name, path = %entry.path, copy = %remote_path, "local copy uploaded beside the version edited in SharePoint");
            state
        } else {
            self.store
                .call(move |s| s.mark_synced(&job, &path, &info))
                .await?
                .kind()
        };
        if state == FileStateKind::Pending {
            tracing::info!(job = %self.job.name, path = %entry.path, "changed since it was scanned; it goes up again next run");
        }
        Ok(Some(FileOutcome::Uploaded {
            bytes: entry.size,
            encoded_as: None,
        }))
    }

    /// Sends the file's content; returns the committed item and the hashes
    /// of what was sent.
    async fn transfer(
        &self,
        entry: &LocalEntry,
        remote_path: &RemotePath,
        slot: &mut Option<SemaphorePermit<'a>>,
    ) -> Result<(RemoteItem, Hashes), TransferError> {
        let local: PathBuf = self.job.source.join(&entry.path);
        let expected = Fingerprint {
            size: entry.size,
            mtime_ns: entry.mtime_ns,
            inode: entry.inode,
        };
        let file = match open(&local).await {
            Ok(f) => Arc::new(f),
            // No longer a regular file (a FIFO would block the run forever):
            // it changed since the scan, which looks again next run.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
                return Err(TransferError::Changed);
            }
            Err(e) => return Err(TransferError::Local(e)),
        };
        if fstat(Arc::clone(&file))
            .await
            .map_err(TransferError::Local)?
            != expected
        {
            return Err(TransferError::Changed);
        }
        let mtime = mtime_of(entry.mtime_ns);
        if entry.size == 0 {
            let item = self
                .with_parents(remote_path, || {
                    self.remote
                        .upload_small(&self.drive, remote_path, Bytes::new(), mtime)
                })
                .await?;
            return Ok((item, crate::hash::hash_bytes(b"")));
        }
        self.session_upload(entry, remote_path, file, &expected, mtime, slot)
            .await
    }

    /// Runs `op`; on a 404 (a parent folder vanished since we recorded it)
    /// creates the parents again and runs it once more.
    async fn with_parents<T, F, Fut>(
        &self,
        remote_path: &RemotePath,
        op: F,
    ) -> Result<T, RemoteError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, RemoteError>>,
    {
        match op().await {
            Err(RemoteError::Permanent { status: 404, .. }) => {
                let (parent, _) = remote_path.split_last().unwrap_or_default();
                let mut path = RemotePath::root();
                for seg in parent.segments() {
                    path = path.child(seg);
                    self.remote.ensure_folder(&self.drive, &path).await?;
                }
                op().await
            }
            other => other,
        }
    }

    async fn session_upload(
        &self,
        entry: &LocalEntry,
        remote_path: &RemotePath,
        file: Arc<File>,
        expected: &Fingerprint,
        mtime: DateTime<Utc>,
        slot: &mut Option<SemaphorePermit<'a>>,
    ) -> Result<(RemoteItem, Hashes), TransferError> {
        let job = self.job.name.clone();
        // Empty `quick_xor` when the scan did not hash the file: the
        // fingerprint alone then decides whether a saved session is ours.
        let fingerprint = SourceFingerprint {
            size: entry.size,
            mtime_ns: entry.mtime_ns,
            inode: entry.inode,
            quick_xor: entry
                .hashes
                .as_ref()
                .map(|h| h.quick_xor.clone())
                .unwrap_or_default(),
        };
        let total = entry.size;
        let fragment = self.job.settings.fragment_size.max(FRAGMENT_UNIT);

        // Resume a saved session of this very content, or drop a stale one.
        let (j, p) = (job.clone(), entry.path.clone());
        let saved = self.store.call(move |s| s.session(&j, &p)).await?;
        let mut session: Option<(String, u64)> = None;
        if let Some(row) = saved {
            if same_source(&row.fingerprint, &fingerprint) && row.total_size == total {
                let mut asked = self.remote.query_session(&row.upload_url).await;
                if matches!(asked, Err(RemoteError::SessionGone)) {
                    // Busy tenants answer a transient 404: ask once more
                    // before giving up what was sent.
                    tokio::time::sleep(self.policy().session_gone_delay).await;
                    asked = self.remote.query_session(&row.upload_url).await;
                }
                match asked {
                    Ok(s) => {
                        let at = s.next_offset.unwrap_or(total).min(total);
                        tracing::info!(job = %job, path = %entry.path, offset = at, "resuming upload session");
                        session = Some((row.upload_url.clone(), at));
                    }
                    Err(RemoteError::SessionGone) => {
                        // Stopped after the service committed the file but
                        // before that was recorded: it is there, done.
                        if let Some(done) = self
                            .already_there(remote_path, entry, &file, expected)
                            .await?
                        {
                            return Ok(done);
                        }
                    }
                    // The upload URL itself is refused (a 4xx no retry
                    // fixes): start over instead of failing every retry.
                    Err(RemoteError::Permanent { status, code }) => {
                        tracing::info!(job = %job, path = %entry.path, status, code = %code, "saved upload session refused; starting over");
                    }
                    Err(e) => return Err(e.into()),
                }
            } else {
                // Another version's bytes: never commit them.
                let _ = self.remote.delete_session(&row.upload_url).await;
            }
            if session.is_none() {
                let (j, p) = (job.clone(), entry.path.clone());
                self.store.call(move |s| s.delete_session(&j, &p)).await?;
            }
        }
        let (mut url, mut offset) = match session {
            Some(s) => s,
            None => {
                self.new_session(entry, remote_path, mtime, &fingerprint)
                    .await?
            }
        };

        let mut hasher = if offset > 0 {
            hash_prefix(Arc::clone(&file), offset)
                .await
                .map_err(TransferError::Local)?
        } else {
            ContentHasher::new()
        };
        // The next fragment, read and hashed while the previous one is in
        // flight. At most one: memory is about two fragments per upload.
        // When it is dropped unused (the service answered an unexpected
        // offset), `hasher` is rebuilt from the file, as on every resume.
        let mut prefetched: Option<Prefetch> = None;
        // The buffer of the last fragment sent, for the next read.
        let mut spare = BytesMut::new();
        let mut gone_once = false;
        let mut restarts = 0;
        // 416s answered by asking the service where it stands, without a
        // fragment accepted in between: bounded, so a service that keeps
        // disagreeing is not asked forever.
        let mut range_resyncs = 0;
        'fragments: loop {
            if offset >= total {
                prefetched = None;
                // The service has every byte but we never saw the commit:
                // the file is either there, or the session must start over.
                if let Some(done) = self
                    .already_there(remote_path, entry, &file, expected)
                    .await?
                {
                    return Ok(done);
                }
                let _ = self.remote.delete_session(&url).await;
                (url, offset) = self
                    .new_session(entry, remote_path, mtime, &fingerprint)
                    .await?;
                hasher = ContentHasher::new();
                restarts += 1;
                if restarts > 2 {
                    return Err(RemoteError::SessionGone.into());
                }
                continue;
            }
            if self.cancel.is_cancelled() {
                // The acknowledged offset is saved; the next run resumes.
                return Err(TransferError::Cancelled);
            }
            let len = fragment.min(total - offset) as usize;
            let waited = std::time::Instant::now();
            let read = match prefetched.take() {
                Some(p) if p.offset == offset && p.len == len => {
                    p.task.await.expect("read task panicked")
                }
                _ => {
                    let h = std::mem::take(&mut hasher);
                    read_fragment(Arc::clone(&file), offset, len, h).await
                }
            };
            let (bytes, h, after) = match read {
                Ok(r) => r,
                // Truncated or replaced under us: a change, not a failure.
                Err(e) => match fstat(Arc::clone(&file)).await {
                    Ok(now) if now != *expected => {
                        self.abandon(entry, &url).await?;
                        return Err(TransferError::Changed);
                    }
                    _ => return Err(TransferError::Local(e)),
                },
            };
            if after != *expected {
                self.abandon(entry, &url).await?;
                return Err(TransferError::Changed);
            }
            if let Some(b) = &self.bandwidth {
                self.wait_for_bandwidth(b, len as u64, slot).await?;
            }
            // Read and hash the fragment after this one while this one is
            // sent; the fingerprint check after that read runs before *its*
            // PUT, so a changed file is still never committed.
            let next_offset_expected = offset + len as u64;
            if next_offset_expected < total {
                let next_len = fragment.min(total - next_offset_expected) as usize;
                prefetched = Some(Prefetch {
                    offset: next_offset_expected,
                    len: next_len,
                    task: spawn_read(
                        Arc::clone(&file),
                        next_offset_expected,
                        next_len,
                        h,
                        std::mem::take(&mut spare),
                    ),
                });
            } else {
                hasher = h;
            }
            let read_wait = waited.elapsed();
            let put_started = std::time::Instant::now();
            // Our handle on the fragment's buffer: once the PUT is done and
            // the HTTP stack has let go of it, it holds the fragment after next.
            let sent_buf = bytes.clone();
            let result = {
                // Sent at the limit: its turn on the job's timeline lasts
                // as long as the body takes (see `wait_for_bandwidth`).
                let pace = self.bandwidth.as_ref().map(Bandwidth::bytes_per_sec);
                let put = self.remote.put_fragment(&url, offset, bytes, total, pace);
                tokio::pin!(put);
                tokio::select! {
                    r = &mut put => r,
                    () = self.cancel.cancelled() => {
                        match tokio::time::timeout(CANCEL_GRACE, &mut put).await {
                            Ok(r) => r,
                            Err(_) => {
                                tracing::info!(job = %job, path = %entry.path, offset, "fragment still in flight after the grace period; abandoned");
                                return Err(TransferError::Cancelled);
                            }
                        }
                    }
                }
            };
            // Unique again unless the HTTP stack still holds it (then a
            // fresh buffer is allocated next time, as before).
            if let Ok(b) = sent_buf.try_into_mut() {
                spare = b;
            }
            // A 416 whose query finds the session gone is handled as a
            // session gone (below), so the match may run twice.
            let mut result = result;
            loop {
                match result {
                    Ok(FragmentOutcome::Accepted {
                        next_offset,
                        expires,
                    }) => {
                        range_resyncs = 0;
                        self.count_sent(len as u64);
                        // Where a large upload's time goes (-vv): waiting for the
                        // fragment's read and hash, or for the service.
                        tracing::debug!(
                            job = %job,
                            path = %entry.path,
                            offset,
                            len,
                            read_wait_us = read_wait.as_micros() as u64,
                            put_us = put_started.elapsed().as_micros() as u64,
                            "fragment accepted"
                        );
                        gone_once = false;
                        if next_offset != next_offset_expected {
                            prefetched = None;
                            hasher = hash_prefix(Arc::clone(&file), next_offset)
                                .await
                                .map_err(TransferError::Local)?;
                        }
                        offset = next_offset;
                        let (j, p) = (job.clone(), entry.path.clone());
                        let exp = expires.map(|t| t.timestamp());
                        self.store
                            .call(move |s| s.update_session_offset(&j, &p, offset, exp))
                            .await?;
                    }
                    Ok(FragmentOutcome::Done(item)) => {
                        self.count_sent(len as u64);
                        if let Some(p) = prefetched.take() {
                            // Committed before the last byte we know of: the
                            // file grew or the service disagrees; hash it all.
                            drop(p);
                            hasher = hash_prefix(Arc::clone(&file), total)
                                .await
                                .map_err(TransferError::Local)?;
                        }
                        let (j, p) = (job.clone(), entry.path.clone());
                        self.store.call(move |s| s.delete_session(&j, &p)).await?;
                        return Ok((item, hasher.finish()));
                    }
                    Err(RemoteError::Range { code }) => {
                        prefetched = None;
                        range_resyncs += 1;
                        if range_resyncs > MAX_RANGE_RESYNCS {
                            tracing::info!(job = %job, path = %entry.path, code, "the service keeps refusing the fragment's range; starting the session over");
                            result = Err(RemoteError::SessionGone);
                            gone_once = true;
                            let _ = self.remote.delete_session(&url).await;
                            continue;
                        }
                        // The service holds more or less than we thought
                        // (a reply lost with a dropped connection): ask it.
                        let s = match self.remote.query_session(&url).await {
                            Ok(s) => s,
                            Err(RemoteError::SessionGone) => {
                                result = Err(RemoteError::SessionGone);
                                continue;
                            }
                            Err(e) => return Err(e.into()),
                        };
                        // No range left: it has every byte (the loop's top
                        // then checks whether the file was committed).
                        let at = s.next_offset.unwrap_or(total).min(total);
                        tracing::debug!(job = %job, path = %entry.path, code, from = offset, to = at, "resuming at the service's offset");
                        offset = at;
                        hasher = hash_prefix(Arc::clone(&file), offset)
                            .await
                            .map_err(TransferError::Local)?;
                    }
                    Err(RemoteError::SessionGone) => {
                        prefetched = None;
                        if !gone_once {
                            // Busy tenants answer a transient 404: ask again once.
                            gone_once = true;
                            tokio::time::sleep(self.policy().session_gone_delay).await;
                            if let Ok(s) = self.remote.query_session(&url).await {
                                offset = s.next_offset.unwrap_or(total).min(total);
                                hasher = hash_prefix(Arc::clone(&file), offset)
                                    .await
                                    .map_err(TransferError::Local)?;
                                continue 'fragments;
                            }
                        }
                        // The last fragment may have been committed with its
                        // reply lost: then the file is complete.
                        if let Some(done) = self
                            .already_there(remote_path, entry, &file, expected)
                            .await?
                        {
                            return Ok(done);
                        }
                        restarts += 1;
                        if restarts > 2 {
                            return Err(RemoteError::SessionGone.into());
                        }
                        tracing::info!(job = %job, path = %entry.path, "upload session expired; starting over");
                        let (j, p) = (job.clone(), entry.path.clone());
                        self.store.call(move |s| s.delete_session(&j, &p)).await?;
                        (url, offset) = self
                            .new_session(entry, remote_path, mtime, &fingerprint)
                            .await?;
                        hasher = ContentHasher::new();
                        gone_once = false;
                        range_resyncs = 0;
                    }
                    Err(e) => return Err(e.into()),
                }
                break;
            }
        }
    }

    /// Waits for the job's turn to send `bytes` under its `bandwidth_limit`;
    /// the fragment's body then goes out paced at the limit, so its turn
    /// lasts as long as sending it (one of the job's uploads sends at a
    /// time, holding one slot).
    /// The upload slot is given back meanwhile and taken again after: the
    /// slots are shared by every job of the tenant, and a slow job waiting
    /// with them held would stop every other job's uploads until it had
    /// sent everything (days, for a first backup over a limited line).
    async fn wait_for_bandwidth(
        &self,
        bandwidth: &Bandwidth,
        bytes: u64,
        slot: &mut Option<SemaphorePermit<'a>>,
    ) -> Result<(), TransferError> {
        let turn = bandwidth.reserve(bytes);
        if turn <= tokio::time::Instant::now() && slot.is_some() {
            return Ok(());
        }
        *slot = None;
        tokio::select! {
            () = tokio::time::sleep_until(turn) => {}
            () = self.cancel.cancelled() => return Err(TransferError::Cancelled),
        }
        tokio::select! {
            s = self.throttle.upload_slot() => *slot = Some(s),
            () = self.cancel.cancelled() => return Err(TransferError::Cancelled),
        }
        Ok(())
    }

    /// Opens a session and saves it before any fragment is sent.
    async fn new_session(
        &self,
        entry: &LocalEntry,
        remote_path: &RemotePath,
        mtime: DateTime<Utc>,
        fingerprint: &SourceFingerprint,
    ) -> Result<(String, u64), TransferError> {
        let s = self
            .with_parents(remote_path, || {
                self.remote.create_session(&self.drive, remote_path, mtime)
            })
            .await?;
        let row = UploadSessionRow {
            job: self.job.name.clone(),
            path: entry.path.clone(),
            upload_url: s.url.clone(),
            total_size: entry.size,
            fingerprint: fingerprint.clone(),
            expires_at: s.expires.map(|t| t.timestamp()),
            next_offset: s.next_offset.unwrap_or(0),
        };
        let at = row.next_offset;
        self.store.call(move |st| st.save_session(&row)).await?;
        Ok((s.url, at))
    }

    /// Cancels a session whose source changed, and forgets it.
    async fn abandon(&self, entry: &LocalEntry, url: &str) -> Result<(), StateError> {
        if let Err(e) = self.remote.delete_session(url).await {
            tracing::debug!(job = %self.job.name, path = %entry.path, error = %e, "could not cancel the upload session (it expires by itself)");
        }
        let (j, p) = (self.job.name.clone(), entry.path.clone());
        self.store.call(move |s| s.delete_session(&j, &p)).await?;
        Ok(())
    }

    /// The remote item, if it already holds exactly this file's content
    /// (hashed here when the scan did not, checking it held still). Also
    /// taken as ours, for the verdict to judge as after any upload: an item
    /// with our mtime (sent in `fileSystemInfo`) whose hash is not computed
    /// yet (same size), or of a type SharePoint rewrites (its size and hash
    /// are the rewrite's). Asked when a commit's reply may have been lost;
    /// when the file is there, its saved session row is forgotten.
    async fn already_there(
        &self,
        remote_path: &RemotePath,
        entry: &LocalEntry,
        file: &Arc<File>,
        expected: &Fingerprint,
    ) -> Result<Option<(RemoteItem, Hashes)>, TransferError> {
        let Some(item) = self.remote.stat(&self.drive, remote_path).await? else {
            return Ok(None);
        };
        let our_mtime = item.mtime == Some(mtime_of(entry.mtime_ns));
        let rewritten = our_mtime && is_rewritten_type(&entry.path);
        let hash_pending = our_mtime && item.quick_xor.is_none() && item.size == entry.size;
        if !rewritten && !hash_pending && (item.size != entry.size || item.quick_xor.is_none()) {
            return Ok(None);
        }
        let local = match &entry.hashes {
            Some(h) => h.clone(),
            None => {
                let h = hash_prefix(Arc::clone(file), entry.size)
                    .await
                    .map_err(TransferError::Local)?
                    .finish();
                if fstat(Arc::clone(file))
                    .await
                    .map_err(TransferError::Local)?
                    != *expected
                {
                    return Err(TransferError::Changed);
                }
                h
            }
        };
        if rewritten || hash_pending || item.quick_xor.as_deref() == Some(local.quick_xor.as_str())
        {
            let (j, p) = (self.job.name.clone(), entry.path.clone());
            self.store.call(move |s| s.delete_session(&j, &p)).await?;
            Ok(Some((item, local)))
        } else {
            Ok(None)
        }
    }

    /// Checks synced files whose remote hash was not available when they
    /// were uploaded: records it when it matches, queues the file again when
    /// it does not (and SharePoint does not rewrite such files).
    pub async fn verify_unconfirmed(&self) -> Result<(), StateError> {
        let job = self.job.name.clone();
        let unconfirmed = self.store.call(move |s| s.unconfirmed_synced(&job)).await?;
        for record in unconfirmed {
            let Some(hashes) = record.hashes.clone() else {
                continue;
            };
            let Ok(mapped) = names::map_path(
                &record.path,
                self.job.settings.invalid_names,
                self.root.is_root(),
            ) else {
                continue;
            };
            let path = self.root.join(&mapped.remote);
            let item = match self.remote.stat(&self.drive, &path).await {
                Ok(Some(item)) => item,
                Ok(None) | Err(_) => continue,
            };
            let name = path
                .split_last()
                .map(|(_, n)| n.to_string())
                .unwrap_or_default();
            let (job, rel) = (self.job.name.clone(), record.path.clone());
            match verdict(&name, &item, &hashes, record.size) {
                Verdict::Missing => {}
                Verdict::Mismatch => {
                    tracing::warn!(job = %job, path = %rel, "remote hash differs from the uploaded content; uploading again");
                    self.store.call(move |s| s.mark_pending(&job, &rel)).await?;
                }
                Verdict::Match | Verdict::Rewritten => {
                    let info = SyncedInfo::from_item(hashes, &item);
                    self.store
                        .call(move |s| s.mark_synced(&job, &rel, &info))
                        .await?;
                }
            }
        }
        Ok(())
    }
}

async fn open(path: &Path) -> std::io::Result<File> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || crate::hash::open_regular(&path))
        .await
        .expect("open task panicked")
}

/// Uploads in a row that found the file changing while it was read before
/// that is reported as a failure (a file written to all the time).
const UNSTABLE_AFTER: u32 = 3;

/// Facts about one upload attempt that [`Uploader`]'s `finish` needs.
#[derive(Debug, Clone, Copy)]
struct Attempt {
    /// The upload was already sent again once after a hash mismatch.
    second_try: bool,
    /// Files whose mtime is at or after this were changed less than the
    /// racy margin before the upload read them (recorded racy).
    racy_cutoff_ns: i64,
    /// It went up beside someone else's edit, not to its own path.
    copy: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(hash: Option<&str>, size: u64) -> RemoteItem {
        RemoteItem {
            id: "i".into(),
            name: "n".into(),
            parent_id: None,
            size,
            etag: None,
            ctag: None,
            quick_xor: hash.map(str::to_string),
            mtime: None,
            is_folder: false,
        }
    }

    /// Fragment buffers start on a 64-byte boundary and survive the trip
    /// through `Bytes` (the PUT) and back without a copy, so every fragment
    /// of an upload after the first reads into the same aligned memory.
    #[test]
    fn fragment_buffers_are_aligned_and_reused_in_place() {
        let len = 10 * 1024 * 1024;
        let first = fragment_buffer(BytesMut::new(), len);
        assert_eq!(first.len(), len);
        assert_eq!(first.as_ptr() as usize % crate::hash::READ_ALIGN, 0);
        let at = first.as_ptr();
        let sent = first.freeze();
        let in_flight = sent.clone();
        drop(sent);
        let back = in_flight.try_into_mut().expect("unique after the PUT");
        let again = fragment_buffer(back, len);
        assert_eq!(again.as_ptr(), at, "the same memory, not a copy");
        // The last, shorter fragment of a file uses it too.
        let last = fragment_buffer(again.freeze().try_into_mut().unwrap(), 4096);
        assert_eq!((last.as_ptr(), last.len()), (at, 4096));
        // A buffer too small for the fragment is replaced by an aligned one.
        let grown = fragment_buffer(last, len + 1);
        assert_eq!(grown.len(), len + 1);
        assert_eq!(grown.as_ptr() as usize % crate::hash::READ_ALIGN, 0);
    }

    #[test]
    fn verification_table() {
        let sent = Hashes {
            sha1: "s".into(),
            quick_xor: "Q".into(),
        };
        for (name, remote, size, want) in [
            ("a.txt", Some("Q"), 5, Verdict::Match),
            ("a.txt", Some("Q"), 6, Verdict::Mismatch),
            ("a.txt", Some("X"), 5, Verdict::Mismatch),
            ("a.docx", Some("X"), 9, Verdict::Rewritten),
            ("A.PDF", Some("X"), 5, Verdict::Rewritten),
            ("a.html", Some("X"), 5, Verdict::Rewritten),
            ("a.docx", Some("Q"), 5, Verdict::Match),
            ("a.txt", None, 5, Verdict::Missing),
        ] {
            assert_eq!(
                verdict(name, &item(remote, size), &sent, 5),
                want,
                "{name} {remote:?}"
            );
        }
    }

    #[test]
    fn mtimes_are_whole_utc_seconds() {
        let t = mtime_of(1_700_000_000_999_999_999);
        assert_eq!(t.timestamp(), 1_700_000_000);
        assert_eq!(mtime_of(-1).timestamp(), -1, "before 1970 rounds down");
    }

    #[test]
    fn failed_files_wait_longer_for_permanent_errors_and_each_failure_in_a_row() {
        let wait = |class, failures| {
            let now = unix_now();
            // Rounded to the minute: a second may pass between the clocks.
            (next_attempt(class, failures) - now + 30) / 60 * 60
        };
        assert_eq!(wait(ErrorClass::Backoff, 1), 300);
        assert_eq!(wait(ErrorClass::Backoff, 2), 600);
        assert_eq!(wait(ErrorClass::SessionGone, 4), 2400);
        assert_eq!(wait(ErrorClass::Backoff, 8), 6 * 3600, "capped");
        assert_eq!(wait(ErrorClass::Backoff, u32::MAX), 6 * 3600);
        assert_eq!(wait(ErrorClass::Backoff, 0), 300);
        assert_eq!(
            wait(ErrorClass::Reauth, 9),
            300,
            "a sign-in is not the file's fault"
        );
        assert_eq!(wait(ErrorClass::Permanent, 1), 6 * 3600);
    }
}
