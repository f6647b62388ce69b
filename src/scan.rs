//! Scan: walk a job's source and find what is new or changed.
//!
//! Input: [`ScanOptions`] (source folder, patterns, symlink policy, size limit)
//! and what the state database knows of every file (`known`). Output: a
//! [`ScanReport`] with the files that need a decision (new, changed, or
//! unchanged but not yet synced), the count of unchanged synced files, the
//! files that vanished, and every file that could not be looked at, with why.
//!
//! How: `ignore`'s parallel walker (no `.gitignore` or hidden-file rules, only
//! the job's [`Filter`]; excluded directories are not entered). Each worker
//! thread `lstat`s its entries, takes the matching record out of `known`, and
//! hashes the file itself (SHA-1 and QuickXorHash in one read) only when size,
//! mtime or inode differ or no hash is recorded, so a rescan of an unchanged
//! tree reads no file content. A file is `fstat`ed again after hashing; if it
//! moved on meanwhile it is skipped and picked up by the next scan.
//!
//! Not hashed yet: with [`ScanOptions::hash_new`] off (what `sync` does), a
//! file that has no recorded hash to compare with (no record at all, or a
//! record that was never hashed) is *not* read: its [`LocalEntry::hashes`]
//! is `None`. Nothing in the plan needs its content (it is new either way),
//! and the uploader computes both hashes while it reads the fragments it
//! sends, so a new file is read once instead of twice. Whoever needs the
//! content hash of such an entry before uploading (rename detection,
//! adopting a remote file that is already there) hashes it itself, e.g. with
//! [`crate::hash::FileHasher`], and must check the fingerprint after.
//!
//! Scoped: [`scan_scoped`] walks only given paths (a watch batch's), each a
//! file or a folder with everything below it, against the records of just
//! those paths; the daemon's watch-triggered runs use it.
//!
//! Memory: unchanged files that are already synced produce nothing but a
//! counter, and their records leave the `known` map as they are met, so a
//! rescan holds the state lookup and little else.
//!
//! One bad file never stops a scan: unreadable, vanished, non-UTF-8 named,
//! symlinked (when not following), special, too large and changed-while-hashed
//! files are listed in [`ScanReport::skipped`]. Files below a directory that
//! could not be read are *not* reported vanished. Only a missing or unreadable
//! source is an error ([`ScanError`]), never "everything was deleted".
//!
//! What it does not do: talk to the state database (the caller loads `known`
//! and records the report), decide what to upload (that is `plan`), or check
//! names against SharePoint's rules (that is the uploader's).

use std::collections::HashMap;
use std::fs::{self, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use ignore::{DirEntry, ParallelVisitor, ParallelVisitorBuilder, WalkBuilder, WalkState};

use crate::config::JobSpec;
use crate::filter::{Filter, FilterError};
use crate::hash::{FileHasher, Hashes};

/// What the state database knows of one file, loaded before a scan so the
/// walk can decide without hashing whether a file changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownFile {
    pub size: u64,
    /// Modification time in nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    pub inode: u64,
    /// `None` when never hashed (or recorded in a form that does not parse:
    /// then it is simply hashed again).
    pub hashes: Option<KnownHashes>,
    /// True when the remote holds exactly this content (state `Synced`).
    pub synced: bool,
    /// True when the file's mtime was not safely older than the scan that
    /// hashed it ("racily clean"): a rewrite of the same size in the same
    /// timestamp tick would leave the fingerprint unchanged, so the next scan
    /// hashes it again even if the fingerprint matches.
    pub racy: bool,
}

/// [`Hashes`] in 40 bytes rather than two heap strings: a rescan holds one
/// per known file, which dominates its memory at 100,000 files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownHashes {
    pub sha1: [u8; 20],
    pub quick_xor: [u8; 20],
}

impl KnownHashes {
    /// Parses the text forms (SHA-1 hex, quickXorHash base64); `None` when
    /// either is not what a hasher produces.
    pub fn from_hashes(h: &Hashes) -> Option<KnownHashes> {
        KnownHashes::from_text(&h.sha1, &h.quick_xor)
    }

    /// [`KnownHashes::from_hashes`] from the two texts as stored.
    pub fn from_text(sha1_hex: &str, quick_xor_base64: &str) -> Option<KnownHashes> {
        use base64::Engine as _;
        let hex = sha1_hex.as_bytes();
        if hex.len() != 40 {
            return None;
        }
        let mut sha1 = [0u8; 20];
        for (i, byte) in sha1.iter_mut().enumerate() {
            let digit = |c: u8| (c as char).to_digit(16);
            *byte = (digit(hex[2 * i])? * 16 + digit(hex[2 * i + 1])?) as u8;
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(quick_xor_base64)
            .ok()?;
        Some(KnownHashes {
            sha1,
            quick_xor: decoded.try_into().ok()?,
        })
    }

    /// The text forms [`Hashes`] carries.
    pub fn to_hashes(&self) -> Hashes {
        use base64::Engine as _;
        use std::fmt::Write as _;
        let mut sha1 = String::with_capacity(40);
        for b in self.sha1 {
            let _ = write!(sha1, "{b:02x}");
        }
        Hashes {
            sha1,
            quick_xor: base64::engine::general_purpose::STANDARD.encode(self.quick_xor),
        }
    }
}

impl KnownFile {
    /// The recorded fingerprint, to compare with what the walk finds.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint {
            size: self.size,
            mtime_ns: self.mtime_ns,
            inode: self.inode,
        }
    }
}

/// How a scanned file compares with what the state recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Not in the state database.
    New,
    /// Size, mtime or inode differ from the record (and it was re-hashed).
    Changed,
    /// Same fingerprint as recorded (not re-hashed, unless no hash was
    /// recorded yet).
    Unchanged,
}

/// How much older than the scan's start a file's mtime must be for its
/// fingerprint to be trusted (2 s: FAT's timestamp granularity, and far more
/// than the kernel's timestamp tick on ext4, XFS or btrfs). Newer files are
/// recorded as racy and hashed again by the next scan (see [`KnownFile::racy`]).
pub const RACY_MARGIN_NS: i64 = 2_000_000_000;

/// How far ahead of our clock an mtime may be and still be "just now" on
/// the clock of the file system that set it (a file server ahead of this
/// host). Beyond that the mtime is simply in the future (`touch -d`, an
/// archive with bad dates): a write now would set an earlier mtime, so the
/// fingerprint cannot hold still through an edit and the file is not racy.
pub const FUTURE_MTIME_SLACK_NS: i64 = 86_400 * 1_000_000_000;

/// The mtime from which a file hashed by a scan starting now is racy.
pub fn racy_cutoff_now() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    now.saturating_sub(RACY_MARGIN_NS)
}

/// Whether a file with `mtime_ns`, hashed by a scan whose cutoff is
/// `cutoff_ns` ([`racy_cutoff_now`]), is racy: modified too close to the
/// scan for its fingerprint to be trusted, and not far in the future.
pub fn is_racy(mtime_ns: i64, cutoff_ns: i64) -> bool {
    mtime_ns >= cutoff_ns
        && mtime_ns.saturating_sub(cutoff_ns) < RACY_MARGIN_NS + FUTURE_MTIME_SLACK_NS
}

/// One regular file found by a scan.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LocalEntry {
    /// Path relative to the job's source, `/`-separated, valid UTF-8.
    pub path: String,
    pub size: u64,
    pub mtime_ns: i64,
    pub inode: u64,
    /// SHA-1 and QuickXorHash of the content; `None` when the scan did not
    /// read the file (see "Not hashed yet" in the module docs): the uploader
    /// hashes it while sending and records the hashes with the upload.
    pub hashes: Option<Hashes>,
    pub change: Change,
}

/// The (size, mtime, inode) triple that decides whether a file must be
/// re-hashed. Cheap to get from one `stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Fingerprint {
    pub size: u64,
    /// Nanoseconds since the Unix epoch (negative before 1970).
    pub mtime_ns: i64,
    pub inode: u64,
}

impl Fingerprint {
    /// The fingerprint of a `stat` / `fstat` result.
    pub fn of(meta: &Metadata) -> Fingerprint {
        Fingerprint {
            size: meta.size(),
            mtime_ns: meta
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.mtime_nsec()),
            inode: meta.ino(),
        }
    }
}

/// True when a file must not be recorded with the hashes just computed: its
/// `stat` before hashing, its `fstat` after, and the bytes actually read do
/// not all agree. Such a file was written to (or replaced) while we read it;
/// the next scan picks it up once it is quiet.
pub fn changed_while_hashing(before: &Fingerprint, after: &Fingerprint, bytes_read: u64) -> bool {
    before != after || bytes_read != after.size
}

/// Everything a scan needs to know about a job; a subset of [`JobSpec`] so
/// tests and `sharepush scan` need no full configuration.
#[derive(Debug, Clone)]
pub struct ScanOptions {
    /// The folder to back up (absolute; symlinks in it are resolved first).
    pub source: PathBuf,
    /// gitignore-style include patterns; empty = every file.
    pub include: Vec<String>,
    /// gitignore-style exclude patterns.
    pub exclude: Vec<String>,
    /// Follow symlinks to files and directories (loops are detected and skipped).
    pub follow_symlinks: bool,
    /// Larger files are skipped with [`SkipReason::TooLarge`].
    pub max_file_size: Option<u64>,
    /// Walker/hasher threads; 0 = one per CPU (at most 8). Hashing is CPU
    /// bound, so more threads than cores only add contention.
    pub threads: usize,
    /// Hash files that have no recorded hash to compare with (new files).
    /// On for `sharepush scan` (it records hashes); `sync` turns it off and
    /// lets the uploader hash while it reads (module docs, "Not hashed yet").
    pub hash_new: bool,
}

impl ScanOptions {
    /// Options for `source` with no patterns, no symlink following, no limit.
    pub fn new(source: impl Into<PathBuf>) -> ScanOptions {
        ScanOptions {
            source: source.into(),
            include: Vec::new(),
            exclude: Vec::new(),
            follow_symlinks: false,
            max_file_size: None,
            threads: 0,
            hash_new: true,
        }
    }
}

impl From<&JobSpec> for ScanOptions {
    fn from(job: &JobSpec) -> Self {
        ScanOptions {
            source: job.source.clone(),
            include: job.include.clone(),
            exclude: job.exclude.clone(),
            follow_symlinks: job.follow_symlinks,
            max_file_size: job.settings.max_file_size,
            threads: 0,
            hash_new: true,
        }
    }
}

/// The largest file SharePoint stores (250 GB, read as GiB); larger files
/// are skipped with a reason unless the job's `max_file_size` says
/// otherwise, instead of being read and sent until the service refuses.
pub const SHAREPOINT_MAX_FILE_SIZE: u64 = 250 << 30;

/// Why a file or directory was left out of this scan. It stays in the state
/// database as it was (never reported vanished); the next scan tries again.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SkipReason {
    /// Could not be opened, read or `stat`ed (e.g. permission denied).
    Unreadable { error: String },
    /// A directory that could not be listed; nothing below it was scanned.
    UnreadableDir { error: String },
    /// Listed, but gone before it could be looked at.
    Vanished,
    /// The name is not valid UTF-8, which SharePoint cannot store; `path` in
    /// [`Skipped`] shows each byte that is not as `\xHH`
    /// ([`escape_non_utf8`]). Never recorded in the state
    /// ([`SkipReason::is_recorded`]).
    NonUtf8Name,
    /// A symbolic link, and the job does not follow links.
    Symlink,
    /// A symbolic link whose target does not exist (following links).
    BrokenSymlink { error: String },
    /// A symbolic link to one of its own ancestor directories.
    SymlinkLoop,
    /// A FIFO, socket or device: not content that can be backed up.
    Special { kind: SpecialKind },
    /// Larger than the job's `max_file_size`.
    TooLarge { size: u64, limit: u64 },
    /// Size, mtime or inode changed between the stat before and after hashing.
    ChangedWhileHashing,
    /// The stat did not change, but reading gave a different number of bytes
    /// than it reports: a pseudo-file (procfs, some FUSE file systems) or a
    /// rewrite too quick for the file system's timestamps.
    SizeMismatch { size: u64, read: u64 },
}

impl SkipReason {
    /// Whether the state records the path as skipped. Passing states are
    /// not ([`SkipReason::is_transient`]), nor names that are not UTF-8:
    /// the state keys files by their UTF-8 path, and any text standing for
    /// such a name is also the valid name of some other file (the lossy
    /// `bad\u{FFFD}.txt` for `bad\xFF.txt` is one). Recorded there, a real
    /// file of that name shared the row and was held as skipped for good.
    /// The scan reports them on every run instead.
    pub fn is_recorded(&self) -> bool {
        !self.is_transient() && *self != SkipReason::NonUtf8Name
    }

    /// A passing state of the file (gone for a moment, unreadable for a
    /// moment, written to while read): the next scan looks again, and the
    /// file's record stays as it was. The others describe the file itself
    /// (its name, its type, its size) and are recorded as skipped.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            SkipReason::Unreadable { .. }
                | SkipReason::UnreadableDir { .. }
                | SkipReason::Vanished
                | SkipReason::ChangedWhileHashing
                | SkipReason::SizeMismatch { .. }
        )
    }
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SkipReason::Unreadable { error } => write!(f, "unreadable: {error}"),
            SkipReason::UnreadableDir { error } => write!(f, "directory unreadable: {error}"),
            SkipReason::Vanished => f.write_str("vanished while scanning"),
            SkipReason::NonUtf8Name => f.write_str("name is not valid UTF-8"),
            SkipReason::Symlink => f.write_str("symbolic link (follow_symlinks is off)"),
            SkipReason::BrokenSymlink { error } => write!(f, "broken symbolic link: {error}"),
            SkipReason::SymlinkLoop => f.write_str("symbolic link loop"),
            SkipReason::Special { kind } => write!(f, "special file ({kind:?})"),
            SkipReason::TooLarge { size, limit } if *limit == SHAREPOINT_MAX_FILE_SIZE => write!(
                f,
                "{size} bytes, above SharePoint's limit of 250 GiB per file \
                 (an explicit max_file_size overrides it)"
            ),
            SkipReason::TooLarge { size, limit } => {
                write!(f, "{size} bytes, above max_file_size {limit}")
            }
            SkipReason::ChangedWhileHashing => f.write_str("changed while being read"),
            SkipReason::SizeMismatch { size, read } => {
                write!(f, "stat says {size} bytes but {read} were read")
            }
        }
    }
}

/// The kinds of non-regular, non-directory files a walk meets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SpecialKind {
    Fifo,
    Socket,
    BlockDevice,
    CharDevice,
    Other,
}

/// One path the scan could not take into account, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Skipped {
    /// Relative to the source, `/`-separated; bytes that are not UTF-8 as
    /// `\xHH` ([`escape_non_utf8`]).
    pub path: String,
    pub reason: SkipReason,
}

/// The outcome of one scan of one job.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ScanReport {
    /// Files that need a decision: new, changed, or unchanged but not known
    /// to be synced. Sorted by path.
    pub entries: Vec<LocalEntry>,
    /// Every file whose fingerprint matched its record, emitted or not.
    pub unchanged: u64,
    /// Paths left out of this scan, with why. Sorted by path.
    pub skipped: Vec<Skipped>,
    /// Known files that are gone from the source (not below an unreadable
    /// directory, and still selected by the filter). Sorted.
    pub vanished: Vec<String>,
    /// Known files that still may exist but the job's patterns no longer
    /// select (e.g. a new exclude). Like rclone without `--delete-excluded`,
    /// these are forgotten, never deleted remotely. Sorted.
    pub deselected: Vec<String>,
    /// Directories seen (relative, not the source itself), for folder
    /// creation. Sorted, so parents come before children.
    pub dirs: Vec<String>,
    /// Files whose content was read this scan.
    pub hashed_files: u64,
    /// Bytes read to hash them (0 on a rescan of an unchanged tree).
    pub hashed_bytes: u64,
    /// Files whose mtime is at or after this (ns since the epoch: the scan's
    /// start minus [`RACY_MARGIN_NS`]) are recorded as racy ([`is_racy`]).
    #[serde(skip)]
    pub racy_cutoff_ns: i64,
    /// Synced files recorded as racy that this scan hashed again, found
    /// identical and now old enough: their record can be trusted again.
    /// Sorted.
    #[serde(skip)]
    pub verified: Vec<String>,
}

/// The numbers `sharepush scan` prints per job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ScanCounts {
    pub new: u64,
    pub changed: u64,
    pub unchanged: u64,
    pub skipped: u64,
    pub vanished: u64,
}

impl ScanReport {
    /// Counts by kind, for the CLI and the `runs` table.
    pub fn counts(&self) -> ScanCounts {
        let mut c = ScanCounts {
            unchanged: self.unchanged,
            skipped: self.skipped.len() as u64,
            vanished: self.vanished.len() as u64,
            ..ScanCounts::default()
        };
        for e in &self.entries {
            match e.change {
                Change::New => c.new += 1,
                Change::Changed => c.changed += 1,
                Change::Unchanged => {}
            }
        }
        c
    }
}

/// Why a whole job's scan failed. Per-file problems are never errors.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The source folder is missing or is not a directory (an unmounted disk,
    /// a typo). Fatal for this job's run; never read as "everything was
    /// deleted".
    #[error("source folder {} does not exist or is not a directory", path.display())]
    SourceMissing { path: PathBuf },
    /// The source exists but cannot be listed.
    #[error("cannot read source folder {}", path.display())]
    SourceUnreadable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The job's patterns do not compile (normally caught by `sharepush check`).
    #[error(transparent)]
    Filter(#[from] FilterError),
}

/// Walks `opts.source` and compares every file with `known` (the state's
/// records for this job, keyed by relative path), hashing only files that are
/// new or changed. `known` is consumed: what is left of it at the end, minus
/// files below unreadable directories, is the vanished set.
pub fn scan(
    opts: &ScanOptions,
    known: HashMap<String, KnownFile>,
) -> Result<ScanReport, ScanError> {
    scan_in(opts, known, None)
}

/// [`scan`] limited to `roots` (`/`-separated paths relative to the source:
/// a file, or a folder with everything below it), for a watch batch: only
/// these are `lstat`ed, so a change costs its own paths instead of a walk of
/// the whole tree. `known` must hold the records of exactly those paths
/// ([`crate::state::Store::known_files_under`]): what is left of it is
/// vanished or deselected as in a full scan. A root that does not exist
/// simply finds nothing (its records vanish); a root below an excluded
/// folder is not looked at (its records are deselected). The report's
/// `unchanged` counts only files under the roots.
pub fn scan_scoped(
    opts: &ScanOptions,
    known: HashMap<String, KnownFile>,
    roots: &[String],
) -> Result<ScanReport, ScanError> {
    scan_in(opts, known, Some(roots))
}

/// The outermost of `roots`: a root below another one is walked with it.
fn outermost(roots: &[String]) -> Vec<String> {
    let mut sorted: Vec<&str> = roots
        .iter()
        .map(|r| r.trim_matches('/'))
        .filter(|r| !r.is_empty())
        .collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut kept: Vec<String> = Vec::new();
    for root in sorted {
        // Sorted, so an ancestor ("a") comes before its descendants
        // ("a/b"), though not always right before ("a-1" sorts between).
        let below_kept = kept.iter().any(|k| {
            root.len() > k.len() && root.starts_with(k.as_str()) && root.as_bytes()[k.len()] == b'/'
        });
        if !below_kept {
            kept.push(root.to_string());
        }
    }
    kept
}

fn scan_in(
    opts: &ScanOptions,
    known: HashMap<String, KnownFile>,
    roots: Option<&[String]>,
) -> Result<ScanReport, ScanError> {
    let filter = Filter::new(&opts.include, &opts.exclude)?;
    let source = check_source(&opts.source)?;
    let racy_cutoff_ns = racy_cutoff_now();

    let threads = match opts.threads {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get().min(8)),
        n => n,
    };
    // Where the walk starts: the source, or each scoped root that exists
    // and that the patterns let in. A root that cannot be looked at, or a
    // symlink not followed, is reported and protected as a full walk
    // would, never taken for gone.
    let mut starts: Vec<PathBuf> = Vec::new();
    let mut roots_seen = Partial::default();
    match roots {
        None => starts.push(source.clone()),
        Some(roots) => {
            let mut behind_links = Vec::new();
            for rel in outermost(roots) {
                // Below a symlink the walk does not follow, a path is the
                // link's business: the root becomes the link itself (a
                // full walk never goes past it, so neither does this).
                let rel = match unfollowed_link_above(&source, &rel, opts.follow_symlinks) {
                    Some(link) => {
                        behind_links.push(link);
                        continue;
                    }
                    None => rel,
                };
                let path = source.join(&rel);
                let meta = match fs::symlink_metadata(&path) {
                    Ok(meta) => meta,
                    Err(e) if is_gone(&e) => continue,
                    Err(e) => {
                        let error = e.to_string();
                        roots_seen.skip(rel, SkipReason::Unreadable { error });
                        continue;
                    }
                };
                // A followed link is whatever it points to, as in the walk.
                let is_dir = if meta.file_type().is_symlink() && opts.follow_symlinks {
                    fs::metadata(&path).is_ok_and(|m| m.is_dir())
                } else {
                    meta.is_dir()
                };
                if !filter.matches(Path::new(&rel), is_dir).is_included() {
                    continue;
                }
                if meta.file_type().is_symlink() && !opts.follow_symlinks {
                    roots_seen.skip(rel, SkipReason::Symlink);
                    continue;
                }
                starts.push(path);
            }
            for link in behind_links {
                let path = source.join(&link);
                if starts.contains(&path) {
                    continue;
                }
                // Judged as a file, as the walk judges a link it does not
                // follow; reported and protected when the patterns let it in.
                if filter.matches(Path::new(&link), false).is_included() {
                    roots_seen.skip(link, SkipReason::Symlink);
                }
            }
        }
    }
    let filter = Arc::new(filter);
    let Some((first, rest)) = starts.split_first() else {
        // Nothing to walk: every record handed in vanished or is deselected.
        return Ok(finish(&filter, racy_cutoff_ns, known, vec![roots_seen]));
    };
    let mut walk = WalkBuilder::new(first);
    for start in rest {
        walk.add(start);
    }
    walk.standard_filters(false)
        .follow_links(opts.follow_symlinks)
        .threads(threads);
    {
        let filter = Arc::clone(&filter);
        let root = source.clone();
        walk.filter_entry(move |dent| {
            let Ok(rel) = dent.path().strip_prefix(&root) else {
                return true;
            };
            if rel.as_os_str().is_empty() {
                return true;
            }
            // Symlinks that are not followed are judged as files.
            let is_dir = dent.file_type().is_some_and(|t| t.is_dir());
            filter.matches_here(rel, is_dir).is_included()
        });
    }

    let shared = Shared {
        source,
        opts,
        racy_cutoff_ns,
        known: Mutex::new(known),
        results: Mutex::new(Vec::new()),
    };
    walk.build_parallel()
        .visit(&mut WorkerBuilder { shared: &shared });

    let Shared { known, results, .. } = shared;
    let known = known.into_inner().unwrap_or_else(PoisonError::into_inner);
    let mut results = results.into_inner().unwrap_or_else(PoisonError::into_inner);
    results.push(roots_seen);
    Ok(finish(&filter, racy_cutoff_ns, known, results))
}

/// The outermost proper ancestor of `rel` (relative to `source`) that is a
/// symlink the walk would not follow, if any.
fn unfollowed_link_above(source: &Path, rel: &str, follow_symlinks: bool) -> Option<String> {
    if follow_symlinks {
        return None;
    }
    let mut at = source.to_path_buf();
    let mut prefix = String::new();
    let mut parts = rel.split('/').peekable();
    while let Some(part) = parts.next() {
        // The root itself is not "above" (it is checked as the root).
        parts.peek()?;
        at.push(part);
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(part);
        if fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink()) {
            return Some(prefix);
        }
    }
    None
}

/// Merges the workers' findings; what is left of `known` vanished (or is
/// deselected by the patterns), except below unreadable directories.
fn finish(
    filter: &Filter,
    racy_cutoff_ns: i64,
    known: HashMap<String, KnownFile>,
    results: Vec<Partial>,
) -> ScanReport {
    let mut report = ScanReport {
        racy_cutoff_ns,
        ..ScanReport::default()
    };
    let mut protected: std::collections::HashSet<String> = std::collections::HashSet::new();
    for part in results {
        report.entries.extend(part.entries);
        report.unchanged += part.unchanged;
        report.skipped.extend(part.skipped);
        report.dirs.extend(part.dirs);
        report.hashed_files += part.hashed_files;
        report.hashed_bytes += part.hashed_bytes;
        report.verified.extend(part.verified);
        protected.extend(part.protected);
    }
    for path in known.into_keys() {
        if is_protected(&path, &protected) {
            continue;
        }
        if filter.matches(Path::new(&path), false).is_included() {
            report.vanished.push(path);
        } else {
            report.deselected.push(path);
        }
    }
    report.entries.sort_unstable_by(|a, b| a.path.cmp(&b.path));
    report.skipped.sort_unstable_by(|a, b| a.path.cmp(&b.path));
    report.vanished.sort_unstable();
    report.deselected.sort_unstable();
    report.dirs.sort_unstable();
    report.verified.sort_unstable();
    report
}

/// Whether a lookup failed because the path is not there (it, or a folder
/// on the way, does not exist or is a file), rather than unreadable.
fn is_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

/// Resolves the source to a canonical directory (so a source that is itself a
/// symlink is walked, not reported as one) and checks it can be listed.
fn check_source(source: &Path) -> Result<PathBuf, ScanError> {
    let missing = || ScanError::SourceMissing {
        path: source.to_path_buf(),
    };
    let canonical = match fs::canonicalize(source) {
        Ok(p) => p,
        Err(e) if is_gone(&e) => return Err(missing()),
        Err(e) => {
            return Err(ScanError::SourceUnreadable {
                path: source.to_path_buf(),
                source: e,
            });
        }
    };
    match fs::metadata(&canonical) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(missing()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(missing()),
        Err(e) => {
            return Err(ScanError::SourceUnreadable {
                path: source.to_path_buf(),
                source: e,
            });
        }
    }
    fs::read_dir(&canonical).map_err(|e| ScanError::SourceUnreadable {
        path: source.to_path_buf(),
        source: e,
    })?;
    Ok(canonical)
}

/// True when `path` or one of its parent directories is in `protected`
/// (paths the walk could not look at: their records must survive).
fn is_protected(path: &str, protected: &std::collections::HashSet<String>) -> bool {
    if protected.is_empty() {
        return false;
    }
    if protected.contains("") || protected.contains(path) {
        return true;
    }
    path.match_indices('/')
        .any(|(i, _)| protected.contains(&path[..i]))
}

/// State shared by the walker threads.
struct Shared<'a> {
    /// Canonical source; every entry's path starts with it.
    source: PathBuf,
    opts: &'a ScanOptions,
    /// See [`ScanReport::racy_cutoff_ns`].
    racy_cutoff_ns: i64,
    /// The state's records; each is removed when its file is met.
    known: Mutex<HashMap<String, KnownFile>>,
    /// Each worker's findings, pushed when the worker is dropped.
    results: Mutex<Vec<Partial>>,
}

/// What one worker thread found; merged after the walk.
#[derive(Default)]
struct Partial {
    entries: Vec<LocalEntry>,
    unchanged: u64,
    skipped: Vec<Skipped>,
    dirs: Vec<String>,
    hashed_files: u64,
    hashed_bytes: u64,
    verified: Vec<String>,
    /// Paths (files or directories) that could not be examined: known records
    /// at or below them are not vanished.
    protected: Vec<String>,
}

impl Partial {
    /// A path that could not be examined: reported, and its records (and
    /// those below it) kept.
    fn skip(&mut self, path: String, reason: SkipReason) {
        self.protected.push(path.clone());
        self.skipped.push(Skipped { path, reason });
    }
}

struct WorkerBuilder<'a> {
    shared: &'a Shared<'a>,
}

impl<'s> ParallelVisitorBuilder<'s> for WorkerBuilder<'s> {
    fn build(&mut self) -> Box<dyn ParallelVisitor + 's> {
        Box::new(Worker {
            shared: self.shared,
            hasher: None,
            found: Partial::default(),
        })
    }
}

/// One walker thread: examines entries and hashes files itself, so hashing
/// runs on as many cores as the walk.
struct Worker<'a> {
    shared: &'a Shared<'a>,
    /// Created on first use: the walker builds one visitor more than it runs.
    hasher: Option<FileHasher>,
    found: Partial,
}

impl Drop for Worker<'_> {
    fn drop(&mut self) {
        let found = std::mem::take(&mut self.found);
        self.shared
            .results
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(found);
    }
}

impl ParallelVisitor for Worker<'_> {
    fn visit(&mut self, entry: Result<DirEntry, ignore::Error>) -> WalkState {
        match entry {
            Ok(dent) => self.visit_entry(&dent),
            Err(err) => {
                self.walk_error(err);
                WalkState::Continue
            }
        }
    }
}

impl Worker<'_> {
    fn visit_entry(&mut self, dent: &DirEntry) -> WalkState {
        // The source itself (a scoped scan's roots are entries like others).
        if dent.depth() == 0 && dent.path() == self.shared.source {
            return WalkState::Continue;
        }
        let path = dent.path();
        let rel = path.strip_prefix(&self.shared.source).unwrap_or(path);
        let is_dir = dent.file_type().is_some_and(|t| t.is_dir());
        let Some(rel) = rel.to_str() else {
            // Reported only: no record can be at or below such a path, and
            // whatever text stands for it is some real file's name too.
            self.found.skipped.push(Skipped {
                path: escape_non_utf8(rel.as_os_str()),
                reason: SkipReason::NonUtf8Name,
            });
            return if is_dir {
                WalkState::Skip
            } else {
                WalkState::Continue
            };
        };
        let Some(file_type) = dent.file_type() else {
            return WalkState::Continue;
        };
        if file_type.is_symlink() {
            // Only reached when not following links.
            self.skip_known(rel, SkipReason::Symlink);
        } else if is_dir {
            self.found.dirs.push(rel.to_owned());
        } else if file_type.is_file() {
            self.visit_file(dent, rel);
        } else {
            let kind = if file_type.is_fifo() {
                SpecialKind::Fifo
            } else if file_type.is_socket() {
                SpecialKind::Socket
            } else if file_type.is_block_device() {
                SpecialKind::BlockDevice
            } else if file_type.is_char_device() {
                SpecialKind::CharDevice
            } else {
                SpecialKind::Other
            };
            self.skip_known(rel, SkipReason::Special { kind });
        }
        WalkState::Continue
    }

    fn visit_file(&mut self, dent: &DirEntry, rel: &str) {
        let meta = match dent.metadata() {
            Ok(m) => m,
            Err(err) => {
                let reason = match err.io_error() {
                    Some(e) if e.kind() == io::ErrorKind::NotFound => SkipReason::Vanished,
                    Some(e) => SkipReason::Unreadable {
                        error: e.to_string(),
                    },
                    None => SkipReason::Unreadable {
                        error: err.to_string(),
                    },
                };
                self.skip_known(rel, reason);
                return;
            }
        };
        if !meta.is_file() {
            // Replaced by something else since the directory was listed.
            self.skip_known(rel, SkipReason::ChangedWhileHashing);
            return;
        }
        let before = Fingerprint::of(&meta);
        let known = self
            .shared
            .known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(rel);
        let limit = self
            .shared
            .opts
            .max_file_size
            .unwrap_or(SHAREPOINT_MAX_FILE_SIZE);
        if before.size > limit {
            self.skip(
                rel.to_owned(),
                SkipReason::TooLarge {
                    size: before.size,
                    limit,
                },
            );
            return;
        }
        // Empty files are always "hashed" (nothing to read, unless the file
        // is a pseudo-file that stats as empty: that must be found here).
        let hash_new = self.shared.opts.hash_new || before.size == 0;
        let change = match known {
            Some(k) if k.racy && k.fingerprint() == before => {
                self.visit_racy(dent, rel, before, k);
                return;
            }
            Some(k) if k.fingerprint() == before => {
                self.found.unchanged += 1;
                match k.hashes {
                    Some(_) if k.synced => return,
                    Some(hashes) => {
                        self.emit(rel, before, Some(hashes.to_hashes()), Change::Unchanged);
                        return;
                    }
                    // Recorded but never hashed: hash it now, or leave it
                    // to the uploader.
                    None if !hash_new => {
                        self.emit(rel, before, None, Change::Unchanged);
                        return;
                    }
                    None => Change::Unchanged,
                }
            }
            // Nothing recorded to compare the content with.
            Some(k) if k.hashes.is_none() && !hash_new => {
                self.emit(rel, before, None, Change::Changed);
                return;
            }
            Some(_) => Change::Changed,
            None if !hash_new => {
                self.emit(rel, before, None, Change::New);
                return;
            }
            None => Change::New,
        };
        match self.hash(dent.path(), &before) {
            Ok(hashes) => self.emit(rel, before, Some(hashes), change),
            Err(reason) => {
                if change == Change::Unchanged {
                    self.found.unchanged -= 1;
                }
                self.skip(rel.to_owned(), reason);
            }
        }
    }

    /// A file whose fingerprint matches a record marked racy: its content may
    /// have changed without changing the fingerprint, so it is hashed again.
    /// Same content: unchanged (listed unless synced; a synced one whose
    /// mtime is now old enough goes to `verified`). Other content: changed.
    fn visit_racy(&mut self, dent: &DirEntry, rel: &str, before: Fingerprint, known: KnownFile) {
        let hashes = match self.hash(dent.path(), &before) {
            Ok(hashes) => hashes,
            Err(reason) => return self.skip(rel.to_owned(), reason),
        };
        if known.hashes != KnownHashes::from_hashes(&hashes) {
            return self.emit(rel, before, Some(hashes), Change::Changed);
        }
        self.found.unchanged += 1;
        if !known.synced {
            self.emit(rel, before, Some(hashes), Change::Unchanged);
        } else if !is_racy(before.mtime_ns, self.shared.racy_cutoff_ns) {
            self.found.verified.push(rel.to_owned());
        }
    }

    /// Reads the file once for both hashes and checks that it held still.
    fn hash(&mut self, path: &Path, before: &Fingerprint) -> Result<Hashes, SkipReason> {
        let unreadable = |e: io::Error| {
            if e.kind() == io::ErrorKind::NotFound {
                SkipReason::Vanished
            } else {
                SkipReason::Unreadable {
                    error: e.to_string(),
                }
            }
        };
        let mut file = match crate::hash::open_regular(path) {
            // Replaced since its stat (by a FIFO, a device, a folder): the
            // next scan sees what it is now.
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                return Err(SkipReason::ChangedWhileHashing);
            }
            other => other.map_err(unreadable)?,
        };
        let hasher = self.hasher.get_or_insert_with(FileHasher::new);
        // Reading stops after `size` bytes without the extra `read` that
        // would confirm end of file: the `fstat` below proves the file still
        // has exactly that size, or the file is skipped. Files that stat as
        // empty are read to the end: pseudo-files (procfs, some FUSE) report
        // size 0 whatever they hold, and must not be recorded as empty.
        let limit = if before.size == 0 {
            u64::MAX
        } else {
            before.size
        };
        let (hashes, bytes) = hasher
            .hash_reader(&mut Read::take(&mut file, limit), before.size)
            .map_err(unreadable)?;
        self.found.hashed_files += 1;
        self.found.hashed_bytes += bytes;
        let after = Fingerprint::of(&file.metadata().map_err(unreadable)?);
        if changed_while_hashing(before, &after, bytes) {
            return Err(if *before == after {
                SkipReason::SizeMismatch {
                    size: after.size,
                    read: bytes,
                }
            } else {
                SkipReason::ChangedWhileHashing
            });
        }
        Ok(hashes)
    }

    fn emit(&mut self, rel: &str, fp: Fingerprint, hashes: Option<Hashes>, change: Change) {
        self.found.entries.push(LocalEntry {
            path: rel.to_owned(),
            size: fp.size,
            mtime_ns: fp.mtime_ns,
            inode: fp.inode,
            hashes,
            change,
        });
    }

    /// Records a skip of a path whose state record must survive this scan.
    fn skip(&mut self, path: String, reason: SkipReason) {
        self.found.skip(path, reason);
    }

    /// Like [`Worker::skip`], for a path that was not taken out of `known`.
    fn skip_known(&mut self, rel: &str, reason: SkipReason) {
        self.shared
            .known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(rel);
        self.skip(rel.to_owned(), reason);
    }

    /// A walk error: an unreadable directory, a broken link being followed, a
    /// symlink loop. Recorded, and its path protected from "vanished".
    fn walk_error(&mut self, err: ignore::Error) {
        let (path, reason) = classify_walk_error(&err);
        let rel = match &path {
            Some(p) => {
                let rel = p.strip_prefix(&self.shared.source).unwrap_or(p);
                rel.to_string_lossy().into_owned()
            }
            None => String::new(),
        };
        self.skip(rel, reason);
    }
}

/// `name` for people: UTF-8 as it is, every other byte as `\xHH`, so the
/// file can be found (`ls` shows such a byte as `$'\377'`). Only shown,
/// never a key: a valid name can be spelled the same.
pub fn escape_non_utf8(name: &std::ffi::OsStr) -> String {
    use std::fmt::Write as _;
    use std::os::unix::ffi::OsStrExt;
    let mut out = String::with_capacity(name.len());
    for chunk in name.as_bytes().utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02X}");
        }
    }
    out
}

/// Turns an `ignore` walk error into the path it concerns and a skip reason.
fn classify_walk_error(err: &ignore::Error) -> (Option<PathBuf>, SkipReason) {
    match err {
        ignore::Error::WithPath { path, err: inner } => {
            let (inner_path, reason) = classify_walk_error(inner);
            let reason = match reason {
                SkipReason::Unreadable { error } => {
                    // Only on the error path: look again to say what it was.
                    let link = fs::symlink_metadata(path).ok();
                    let target = fs::metadata(path).ok();
                    if target.as_ref().is_some_and(|m| m.is_dir()) {
                        SkipReason::UnreadableDir { error }
                    } else if link.as_ref().is_some_and(|m| m.file_type().is_symlink())
                        && target.is_none()
                    {
                        SkipReason::BrokenSymlink { error }
                    } else if link.is_none()
                        && err.io_error().map(io::Error::kind) == Some(io::ErrorKind::NotFound)
                    {
                        SkipReason::Vanished
                    } else {
                        SkipReason::Unreadable { error }
                    }
                }
                other => other,
            };
            (inner_path.or_else(|| Some(path.clone())), reason)
        }
        ignore::Error::WithDepth { err, .. } | ignore::Error::WithLineNumber { err, .. } => {
            classify_walk_error(err)
        }
        ignore::Error::Loop { child, .. } => (Some(child.clone()), SkipReason::SymlinkLoop),
        ignore::Error::Io(e) => (
            None,
            SkipReason::Unreadable {
                error: e.to_string(),
            },
        ),
        other => (
            None,
            SkipReason::Unreadable {
                error: other.to_string(),
            },
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::hash_bytes;
    use std::ffi::OsStr;
    use std::fs::File;
    use std::io::Write;
    use std::os::unix::ffi::OsStrExt;
    use std::time::{Duration, SystemTime};

    fn opts(dir: &Path) -> ScanOptions {
        ScanOptions {
            threads: 2,
            ..ScanOptions::new(dir)
        }
    }

    fn write(root: &Path, rel: &str, content: &[u8]) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    /// What a store would hold after recording `report` and uploading all of it.
    fn known_from(report: &ScanReport, synced: bool) -> HashMap<String, KnownFile> {
        report
            .entries
            .iter()
            .map(|e| {
                (
                    e.path.clone(),
                    KnownFile {
                        size: e.size,
                        mtime_ns: e.mtime_ns,
                        inode: e.inode,
                        hashes: e.hashes.as_ref().and_then(KnownHashes::from_hashes),
                        synced,
                        racy: false,
                    },
                )
            })
            .collect()
    }

    fn paths(report: &ScanReport) -> Vec<&str> {
        report.entries.iter().map(|e| e.path.as_str()).collect()
    }

    fn skip_of<'a>(report: &'a ScanReport, path: &str) -> Option<&'a SkipReason> {
        report
            .skipped
            .iter()
            .find(|s| s.path == path)
            .map(|s| &s.reason)
    }

    fn set_mtime(path: &Path, secs: u64) {
        let f = File::options().write(true).open(path).unwrap();
        f.set_modified(SystemTime::UNIX_EPOCH + Duration::new(secs, 123_456_789))
            .unwrap();
    }

    /// Scans `src` against what `store` knows and records the report, as
    /// `sharepush scan` and a job run do.
    fn scan_and_record(store: &mut crate::state::Store, src: &Path) -> ScanReport {
        let report = scan(&opts(src), store.known_files("j").unwrap()).unwrap();
        store
            .record_scan(
                "j",
                &report.entries,
                &report.verified,
                report.racy_cutoff_ns,
            )
            .unwrap();
        report
    }

    fn mtime_of(path: &Path) -> SystemTime {
        fs::metadata(path).unwrap().modified().unwrap()
    }

    #[test]
    fn known_hashes_round_trip_and_refuse_malformed_text() {
        for content in [&b""[..], b"a", &[7u8; 100_000]] {
            let h = hash_bytes(content);
            assert_eq!(KnownHashes::from_hashes(&h).unwrap().to_hashes(), h);
        }
        let good = hash_bytes(b"x");
        let bad_hex = Hashes {
            sha1: "zz".repeat(20),
            ..good.clone()
        };
        let short = Hashes {
            quick_xor: "AAAA".into(),
            ..good.clone()
        };
        assert_eq!(KnownHashes::from_hashes(&bad_hex), None);
        assert_eq!(KnownHashes::from_hashes(&short), None);
    }

    #[test]
    fn racily_clean_rewrite_with_same_size_and_mtime_is_detected() {
        let state = tempfile::tempdir().unwrap();
        let mut store = crate::state::Store::open(state.path()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "report.txt", b"version 1");
        let file = dir.path().join("report.txt");
        let first = scan_and_record(&mut store, dir.path());
        assert_eq!(first.counts().new, 1);
        assert!(store.known_files("j").unwrap()["report.txt"].racy);

        // Rewritten in place right after it was hashed: same size, same inode,
        // and (as within one timestamp tick) the same mtime.
        let mtime = mtime_of(&file);
        let f = File::options().write(true).open(&file).unwrap();
        (&f).write_all(b"version 2").unwrap();
        f.set_modified(mtime).unwrap();
        drop(f);
        let before = &first.entries[0];
        let now = Fingerprint::of(&fs::metadata(&file).unwrap());
        assert_eq!(
            (now.size, now.mtime_ns, now.inode),
            (before.size, before.mtime_ns, before.inode),
            "the rewrite must leave the fingerprint as it was"
        );

        let second = scan_and_record(&mut store, dir.path());
        assert_eq!(second.hashed_files, 1);
        assert_eq!(second.counts().changed, 1);
        assert_eq!(second.entries[0].hashes, Some(hash_bytes(b"version 2")));
        let record = store.file("j", "report.txt").unwrap().unwrap();
        assert_eq!(record.hashes, Some(hash_bytes(b"version 2")));
    }

    #[test]
    fn a_file_older_than_the_scan_is_trusted_and_not_hashed_again() {
        let state = tempfile::tempdir().unwrap();
        let mut store = crate::state::Store::open(state.path()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "old.txt", b"old content");
        set_mtime(&dir.path().join("old.txt"), 1_600_000_000);
        let first = scan_and_record(&mut store, dir.path());
        assert_eq!(first.hashed_files, 1);
        assert!(!store.known_files("j").unwrap()["old.txt"].racy);
        let second = scan_and_record(&mut store, dir.path());
        assert_eq!((second.hashed_files, second.unchanged), (0, 1));
        // Listed because not uploaded yet, with the recorded hashes.
        assert_eq!(second.entries[0].change, Change::Unchanged);
        assert_eq!(second.entries[0].hashes, Some(hash_bytes(b"old content")));
    }

    /// A file dated far in the future (`touch -d`, an archive with bad
    /// dates) is not racy: a write now would give it an earlier mtime. It
    /// was hashed again by every scan until real time caught up.
    #[test]
    fn a_file_dated_far_in_the_future_is_hashed_once() {
        let state = tempfile::tempdir().unwrap();
        let mut store = crate::state::Store::open(state.path()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "future.txt", b"from the future");
        let in_ten_years = (racy_cutoff_now() / 1_000_000_000 + 10 * 365 * 86_400) as u64;
        set_mtime(&dir.path().join("future.txt"), in_ten_years);
        write(dir.path(), "now.txt", b"just written");
        let first = scan_and_record(&mut store, dir.path());
        assert_eq!(first.hashed_files, 2);
        let known = store.known_files("j").unwrap();
        assert!(!known["future.txt"].racy);
        assert!(known["now.txt"].racy, "written just now: racy");
        let second = scan_and_record(&mut store, dir.path());
        assert_eq!(second.hashed_files, 1, "only the one written just now");

        // Within a day ahead is "now" on a file server whose clock runs
        // ahead of ours: still racy.
        let cutoff = racy_cutoff_now();
        assert!(is_racy(cutoff + 3_600 * 1_000_000_000, cutoff));
        assert!(!is_racy(cutoff + 2 * 86_400 * 1_000_000_000, cutoff));
        assert!(!is_racy(cutoff - 1, cutoff));
        assert!(!is_racy(i64::MAX, i64::MIN), "no overflow");
    }

    #[test]
    fn a_racy_synced_file_found_identical_and_old_enough_is_trusted_again() {
        let state = tempfile::tempdir().unwrap();
        let mut store = crate::state::Store::open(state.path()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.txt", b"same");
        set_mtime(&dir.path().join("a.txt"), 1_600_000_000);
        // Recorded by a scan whose cutoff made it racy (as if it had been
        // hashed within two seconds of its mtime), then uploaded.
        let first = scan(&opts(dir.path()), HashMap::new()).unwrap();
        store
            .record_scan("j", &first.entries, &[], 1_600_000_000 * 1_000_000_000 - 1)
            .unwrap();
        let info = crate::state::SyncedInfo {
            content: hash_bytes(b"same"),
            item_id: Some("I".into()),
            etag: None,
            remote_quick_xor: None,
            remote_size: None,
            remote_name: None,
            remote_parent: None,
        };
        store.mark_synced("j", "a.txt", &info).unwrap();
        let known = store.known_files("j").unwrap();
        assert!(known["a.txt"].racy && known["a.txt"].synced);

        let second = scan_and_record(&mut store, dir.path());
        assert_eq!(second.hashed_files, 1, "a racy record is hashed again");
        assert!(
            second.entries.is_empty(),
            "synced and identical: nothing to do"
        );
        assert_eq!(second.unchanged, 1);
        assert_eq!(second.verified, ["a.txt"]);
        assert!(!store.known_files("j").unwrap()["a.txt"].racy);

        let third = scan_and_record(&mut store, dir.path());
        assert_eq!(third.hashed_files, 0);
        assert!(third.verified.is_empty());
    }

    #[test]
    fn ten_thousand_files_new_then_unchanged_then_one_changed() {
        let dir = tempfile::tempdir().unwrap();
        for d in 0..100 {
            for f in 0..100 {
                write(
                    dir.path(),
                    &format!("d{d:02}/f{f:02}.txt"),
                    format!("{d} {f}").as_bytes(),
                );
            }
        }

        let first = scan(&opts(dir.path()), HashMap::new()).unwrap();
        let c = first.counts();
        assert_eq!(
            (c.new, c.changed, c.unchanged, c.skipped),
            (10_000, 0, 0, 0)
        );
        assert_eq!(first.hashed_files, 10_000);
        assert_eq!(first.entries[0].path, "d00/f00.txt");
        assert_eq!(first.entries[0].hashes, Some(hash_bytes(b"0 0")));
        assert_eq!(first.dirs.len(), 100);
        assert!(first.vanished.is_empty());

        let second = scan(&opts(dir.path()), known_from(&first, true)).unwrap();
        let c = second.counts();
        assert_eq!(
            (c.new, c.changed, c.unchanged, c.skipped),
            (0, 0, 10_000, 0)
        );
        assert!(
            second.entries.is_empty(),
            "synced unchanged files are only counted"
        );
        assert_eq!((second.hashed_files, second.hashed_bytes), (0, 0));
        assert!(second.vanished.is_empty());

        let edited = dir.path().join("d42/f07.txt");
        fs::write(&edited, b"new content").unwrap();
        set_mtime(&edited, 1_000_000_000);
        let third = scan(&opts(dir.path()), known_from(&first, true)).unwrap();
        let c = third.counts();
        assert_eq!((c.new, c.changed, c.unchanged), (0, 1, 9_999));
        assert_eq!(paths(&third), ["d42/f07.txt"]);
        assert_eq!(third.entries[0].hashes, Some(hash_bytes(b"new content")));
        assert_eq!(third.entries[0].mtime_ns, 1_000_000_000_123_456_789);
        assert_eq!((third.hashed_files, third.hashed_bytes), (1, 11));
    }

    #[test]
    fn same_size_edit_is_caught_by_mtime() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a", b"aaaa");
        set_mtime(&dir.path().join("a"), 1_600_000_000);
        let first = scan(&opts(dir.path()), HashMap::new()).unwrap();
        fs::write(dir.path().join("a"), b"bbbb").unwrap();
        set_mtime(&dir.path().join("a"), 1_600_000_001);
        let second = scan(&opts(dir.path()), known_from(&first, true)).unwrap();
        assert_eq!(second.entries.len(), 1);
        assert_eq!(second.entries[0].change, Change::Changed);
        assert_eq!(second.entries[0].hashes, Some(hash_bytes(b"bbbb")));
    }

    #[test]
    fn inode_change_alone_means_changed() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a", b"same");
        let first = scan(&opts(dir.path()), HashMap::new()).unwrap();
        let mut known = known_from(&first, true);
        known.get_mut("a").unwrap().inode ^= 1;
        let second = scan(&opts(dir.path()), known).unwrap();
        assert_eq!(second.entries[0].change, Change::Changed);
        assert_eq!(second.hashed_files, 1);
    }

    #[test]
    fn unchanged_but_not_synced_is_listed_with_recorded_hashes_without_reading() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.txt", b"a");
        write(dir.path(), "b.txt", b"b");
        let first = scan(&opts(dir.path()), HashMap::new()).unwrap();
        let mut known = known_from(&first, false);
        // A recorded hash is trusted while the fingerprint matches.
        known.get_mut("a.txt").unwrap().hashes = KnownHashes::from_hashes(&hash_bytes(b"recorded"));
        known.get_mut("b.txt").unwrap().synced = true;
        let second = scan(&opts(dir.path()), known).unwrap();
        assert_eq!(paths(&second), ["a.txt"]);
        assert_eq!(second.entries[0].change, Change::Unchanged);
        assert_eq!(second.entries[0].hashes, Some(hash_bytes(b"recorded")));
        assert_eq!(second.unchanged, 2);
        assert_eq!(second.hashed_bytes, 0);
    }

    #[test]
    fn recorded_without_hashes_is_hashed_and_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.txt", b"abc");
        let first = scan(&opts(dir.path()), HashMap::new()).unwrap();
        let mut known = known_from(&first, false);
        known.get_mut("a.txt").unwrap().hashes = None;
        let second = scan(&opts(dir.path()), known).unwrap();
        assert_eq!(second.entries[0].change, Change::Unchanged);
        assert_eq!(second.entries[0].hashes, Some(hash_bytes(b"abc")));
        assert_eq!((second.hashed_files, second.unchanged), (1, 1));
    }

    #[test]
    fn without_hash_new_only_files_with_a_recorded_hash_are_read() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "new.txt", b"new");
        write(dir.path(), "never-hashed.txt", b"nh");
        write(dir.path(), "never-hashed-changed.txt", b"nhc");
        write(dir.path(), "synced-touched.txt", b"st");
        write(dir.path(), "empty.txt", b"");
        let first = scan(&opts(dir.path()), HashMap::new()).unwrap();
        let mut known = known_from(&first, true);
        known.remove("new.txt");
        known.remove("empty.txt");
        known.get_mut("never-hashed.txt").unwrap().hashes = None;
        let nhc = known.get_mut("never-hashed-changed.txt").unwrap();
        nhc.hashes = None;
        nhc.size += 1;
        // A touch of a synced file: its content must be compared (the plan
        // does not upload it again when the hashes match).
        known.get_mut("synced-touched.txt").unwrap().mtime_ns += 1;
        let lazy = ScanOptions {
            hash_new: false,
            ..opts(dir.path())
        };
        let second = scan(&lazy, known).unwrap();
        let got: Vec<(&str, Change, Option<Hashes>)> = second
            .entries
            .iter()
            .map(|e| (e.path.as_str(), e.change, e.hashes.clone()))
            .collect();
        assert_eq!(
            got,
            [
                ("empty.txt", Change::New, Some(hash_bytes(b""))),
                ("never-hashed-changed.txt", Change::Changed, None),
                ("never-hashed.txt", Change::Unchanged, None),
                ("new.txt", Change::New, None),
                (
                    "synced-touched.txt",
                    Change::Changed,
                    Some(hash_bytes(b"st"))
                ),
            ]
        );
        assert_eq!((second.hashed_files, second.hashed_bytes), (2, 2));
    }

    #[test]
    fn vanished_files_and_folders() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "keep.txt", b"k");
        write(dir.path(), "gone.txt", b"g");
        write(dir.path(), "sub/x/one.txt", b"1");
        write(dir.path(), "sub/two.txt", b"2");
        let first = scan(&opts(dir.path()), HashMap::new()).unwrap();
        fs::remove_file(dir.path().join("gone.txt")).unwrap();
        fs::remove_dir_all(dir.path().join("sub")).unwrap();
        let second = scan(&opts(dir.path()), known_from(&first, true)).unwrap();
        assert_eq!(
            second.vanished,
            ["gone.txt", "sub/two.txt", "sub/x/one.txt"]
        );
        assert_eq!(second.counts().vanished, 3);
        assert_eq!(second.unchanged, 1);
    }

    #[test]
    fn exclude_patterns_prune_and_deselect() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.txt", b"a");
        write(dir.path(), "a.tmp", b"t");
        write(dir.path(), "cache/deep/b.txt", b"b");
        write(dir.path(), "src/cache.txt", b"c");
        write(dir.path(), "reports/~$lock.xlsx", b"l");
        let first = scan(&opts(dir.path()), HashMap::new()).unwrap();
        assert_eq!(first.entries.len(), 5);

        let mut o = opts(dir.path());
        o.exclude = vec!["*.tmp".into(), "cache/".into(), "~$*".into()];
        let second = scan(&o, known_from(&first, true)).unwrap();
        assert_eq!(second.unchanged, 2);
        assert!(second.entries.is_empty());
        // Known files that the new patterns drop are not "deleted locally".
        assert!(second.vanished.is_empty());
        assert_eq!(
            second.deselected,
            ["a.tmp", "cache/deep/b.txt", "reports/~$lock.xlsx"]
        );
        // The excluded directory was not entered.
        assert_eq!(second.dirs, ["reports", "src"]);

        let fresh = scan(&o, HashMap::new()).unwrap();
        assert_eq!(paths(&fresh), ["a.txt", "src/cache.txt"]);
    }

    /// The records of `known` a scan scoped to `roots` is handed, as
    /// `Store::known_files_under` selects them.
    fn under(known: &HashMap<String, KnownFile>, roots: &[&str]) -> HashMap<String, KnownFile> {
        known
            .iter()
            .filter(|(p, _)| {
                roots
                    .iter()
                    .any(|r| p.as_str() == *r || p.starts_with(&format!("{r}/")))
            })
            .map(|(p, f)| (p.clone(), f.clone()))
            .collect()
    }

    #[test]
    fn a_scoped_scan_looks_only_below_its_roots() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path();
        for rel in ["a/x", "a/y", "a-1/z", "b/z", "top"] {
            write(src, rel, rel.as_bytes());
            set_mtime(&src.join(rel), 1_000_000);
        }
        let known = known_from(&scan(&opts(src), HashMap::new()).unwrap(), true);
        write(src, "a/new", b"new");
        fs::remove_file(src.join("a/x")).unwrap();
        write(src, "a-1/z", b"changed, outside the scope");
        fs::remove_file(src.join("top")).unwrap();

        let r = scan_scoped(&opts(src), under(&known, &["a"]), &["a".into()]).unwrap();
        assert_eq!(paths(&r), ["a/new"]);
        assert_eq!(r.vanished, ["a/x"]);
        assert_eq!(r.unchanged, 1, "a/y only: {r:?}");
        assert_eq!(r.dirs, ["a"]);
        assert!(r.deselected.is_empty() && r.skipped.is_empty(), "{r:?}");

        // A file root, a root that is gone, a root below another one.
        let roots = ["a-1/z".into(), "top".into(), "a-1".into()];
        let r = scan_scoped(&opts(src), under(&known, &["a-1", "top"]), &roots).unwrap();
        assert_eq!(paths(&r), ["a-1/z"]);
        assert_eq!(r.vanished, ["top"]);
        assert_eq!(r.unchanged, 0);

        // Nothing to walk at all.
        let r = scan_scoped(&opts(src), under(&known, &["top"]), &["top".into()]).unwrap();
        assert!(r.entries.is_empty() && r.unchanged == 0, "{r:?}");
        assert_eq!(r.vanished, ["top"]);
    }

    #[test]
    fn a_scoped_root_the_patterns_leave_out_is_not_looked_at() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path();
        write(src, "b/z", b"z");
        set_mtime(&src.join("b/z"), 1_000_000);
        let known = known_from(&scan(&opts(src), HashMap::new()).unwrap(), true);
        write(src, "b/z", b"changed");
        let o = ScanOptions {
            exclude: vec!["b/".into()],
            ..opts(src)
        };
        let r = scan_scoped(&o, under(&known, &["b/z"]), &["b/z".into()]).unwrap();
        assert!(r.entries.is_empty(), "{r:?}");
        assert_eq!(r.deselected, ["b/z"]);
        assert!(r.vanished.is_empty());
    }

    /// A synced record whose fingerprint no file on disk has.
    fn synced_record() -> KnownFile {
        KnownFile {
            size: 1,
            mtime_ns: 1,
            inode: 1,
            hashes: None,
            synced: true,
            racy: false,
        }
    }

    #[test]
    fn a_scoped_root_that_cannot_be_looked_at_is_never_taken_for_gone() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path();
        write(src, "real/f", b"f");
        std::os::unix::fs::symlink(src.join("real"), src.join("link")).unwrap();
        let synced = synced_record();
        let known: HashMap<String, KnownFile> = [("link/f".to_string(), synced.clone())].into();
        // A symlink not followed: skipped as a full walk skips it.
        let r = scan_scoped(&opts(src), known.clone(), &["link".into()]).unwrap();
        assert_eq!(skip_of(&r, "link"), Some(&SkipReason::Symlink));
        assert!(r.vanished.is_empty() && r.entries.is_empty(), "{r:?}");
        // Followed, it is walked.
        let o = ScanOptions {
            follow_symlinks: true,
            ..opts(src)
        };
        let r = scan_scoped(&o, known, &["link".into()]).unwrap();
        assert_eq!(paths(&r), ["link/f"]);

        // A root whose lookup fails for another reason than "not there"
        // (here a name too long): reported, its records kept.
        let long = format!("{}/a", "n".repeat(300));
        let known: HashMap<String, KnownFile> = [(long.clone(), synced)].into();
        let r = scan_scoped(&opts(src), known, std::slice::from_ref(&long)).unwrap();
        assert!(r.vanished.is_empty(), "{r:?}");
        assert!(
            matches!(skip_of(&r, &long), Some(SkipReason::Unreadable { .. })),
            "{r:?}"
        );
    }

    #[test]
    fn a_scoped_root_behind_a_link_not_followed_is_the_links_business() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let outside = dir.path().join("outside");
        write(&outside, "new.txt", b"not ours");
        write(&src, "keep.txt", b"k");
        std::os::unix::fs::symlink(&outside, src.join("link")).unwrap();
        let recorded = synced_record();
        let known: HashMap<String, KnownFile> =
            [("link/old.txt".to_string(), recorded.clone())].into();
        let roots = ["link/new.txt".to_string(), "link/old.txt".to_string()];
        // As a full walk: the link is skipped (and protects what is below).
        let r = scan_scoped(&opts(&src), known.clone(), &roots).unwrap();
        assert!(r.entries.is_empty(), "nothing behind the link: {r:?}");
        assert_eq!(skip_of(&r, "link"), Some(&SkipReason::Symlink));
        assert!(r.vanished.is_empty(), "{r:?}");
        // With include patterns the link (judged as a file) is left out, as
        // the full walk leaves it out: nothing is uploaded from behind it.
        let o = ScanOptions {
            include: vec!["*.txt".into()],
            ..opts(&src)
        };
        let full = scan(&o, HashMap::new()).unwrap();
        assert_eq!(paths(&full), ["keep.txt"]);
        let r = scan_scoped(&o, HashMap::new(), &roots).unwrap();
        assert!(r.entries.is_empty() && r.skipped.is_empty(), "{r:?}");
    }

    #[test]
    fn a_followed_link_named_as_a_root_is_judged_as_the_folder_it_points_to() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let outside = dir.path().join("notes");
        for rel in ["a.txt", "b.txt"] {
            write(&outside, rel, rel.as_bytes());
            set_mtime(&outside.join(rel), 1_000_000);
        }
        write(&src, "keep.txt", b"k");
        std::os::unix::fs::symlink(&outside, src.join("notes")).unwrap();
        let o = ScanOptions {
            include: vec!["*.txt".into()],
            follow_symlinks: true,
            ..opts(&src)
        };
        let known = known_from(&scan(&o, HashMap::new()).unwrap(), true);
        assert!(known.contains_key("notes/a.txt"), "{known:?}");
        // An event named the link itself (chmod of its target, say).
        let r = scan_scoped(&o, under(&known, &["notes"]), &["notes".into()]).unwrap();
        assert!(r.vanished.is_empty(), "the link's files are there: {r:?}");
        assert_eq!(r.unchanged, 2, "{r:?}");
    }

    #[test]
    fn only_the_outermost_roots_are_walked() {
        let roots: Vec<String> = ["a/b", "a", "a-1/c", "a-1", "ab", "", "/x/", "a"]
            .map(String::from)
            .to_vec();
        assert_eq!(outermost(&roots), ["a", "a-1", "ab", "x"]);
    }

    #[test]
    fn include_patterns_select_files_at_any_depth() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.pdf", b"1");
        write(dir.path(), "a.txt", b"2");
        write(dir.path(), "x/y/b.pdf", b"3");
        write(dir.path(), "docs/c.txt", b"4");
        write(dir.path(), "docs/old/d.pdf", b"5");
        let mut o = opts(dir.path());
        o.include = vec!["*.pdf".into(), "/docs/".into()];
        o.exclude = vec!["old/".into()];
        let report = scan(&o, HashMap::new()).unwrap();
        assert_eq!(paths(&report), ["a.pdf", "docs/c.txt", "x/y/b.pdf"]);
    }

    /// True when this process can read files whatever their mode (root,
    /// CAP_DAC_OVERRIDE): then chmod 000 makes nothing unreadable.
    fn reads_everything(probe: &Path) -> bool {
        File::open(probe).is_ok()
    }

    #[test]
    fn unreadable_file_is_skipped_with_the_error_and_not_vanished() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "ok.txt", b"ok");
        write(dir.path(), "secret.txt", b"s");
        let secret = dir.path().join("secret.txt");
        let first = scan(&opts(dir.path()), HashMap::new()).unwrap();
        let mut known = known_from(&first, true);
        known.get_mut("secret.txt").unwrap().size = 99; // changed: must be read
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o000)).unwrap();
        let report = scan(&opts(dir.path()), known).unwrap();
        if reads_everything(&secret) {
            // Running as root: permissions do not stop us, the file is read.
            assert_eq!(paths(&report), ["secret.txt"]);
            assert!(report.skipped.is_empty());
        } else {
            assert!(report.entries.is_empty());
            match skip_of(&report, "secret.txt") {
                Some(SkipReason::Unreadable { error }) => {
                    assert!(error.contains("ermission denied"), "{error}")
                }
                other => panic!("{other:?}"),
            }
            assert!(report.vanished.is_empty());
        }
    }

    #[test]
    fn read_error_is_skipped_as_unreadable_even_as_root() {
        // /proc/self/mem stats as a regular file but reading offset 0 fails
        // with EIO for every user: a real read error through the real path.
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "ok.txt", b"ok");
        std::os::unix::fs::symlink("/proc/self/mem", dir.path().join("mem")).unwrap();
        let mut o = opts(dir.path());
        o.follow_symlinks = true;
        let report = scan(&o, HashMap::new()).unwrap();
        assert_eq!(paths(&report), ["ok.txt"]);
        match skip_of(&report, "mem") {
            Some(SkipReason::Unreadable { error }) => assert!(!error.is_empty()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pseudo_file_that_stats_empty_is_not_recorded_empty() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/proc/self/status", dir.path().join("status")).unwrap();
        let mut o = opts(dir.path());
        o.follow_symlinks = true;
        let report = scan(&o, HashMap::new()).unwrap();
        assert!(report.entries.is_empty());
        match skip_of(&report, "status") {
            Some(SkipReason::SizeMismatch { size: 0, read }) => assert!(*read > 0),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unreadable_directory_keeps_its_known_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "locked/a.txt", b"a");
        write(dir.path(), "locked/sub/b.txt", b"b");
        write(dir.path(), "lockedness.txt", b"c");
        let first = scan(&opts(dir.path()), HashMap::new()).unwrap();
        let locked = dir.path().join("locked");
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o000)).unwrap();
        let can_list = fs::read_dir(&locked).is_ok();
        let report = scan(&opts(dir.path()), known_from(&first, true)).unwrap();
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(report.vanished.is_empty());
        if can_list {
            assert_eq!(report.unchanged, 3); // root
        } else {
            assert_eq!(report.unchanged, 1);
            assert!(matches!(
                skip_of(&report, "locked"),
                Some(SkipReason::UnreadableDir { .. })
            ));
        }
    }

    #[test]
    fn directory_unlistable_even_by_root_keeps_its_known_files() {
        // In containers without CAP_SYS_ADMIN, init's map_files cannot be
        // listed even by root: reach it through a followed symlink.
        let unlistable = Path::new("/proc/1/map_files");
        if fs::read_dir(unlistable).is_ok() {
            eprintln!("skipped: {} is listable here", unlistable.display());
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "ok.txt", b"ok");
        std::os::unix::fs::symlink(unlistable, dir.path().join("maps")).unwrap();
        let mut known = HashMap::new();
        for path in ["maps/a", "maps/b/c", "mapsx"] {
            known.insert(
                path.to_string(),
                KnownFile {
                    size: 1,
                    mtime_ns: 1,
                    inode: 1,
                    hashes: None,
                    synced: true,
                    racy: false,
                },
            );
        }
        let mut o = opts(dir.path());
        o.follow_symlinks = true;
        let report = scan(&o, known).unwrap();
        assert!(matches!(
            skip_of(&report, "maps"),
            Some(SkipReason::UnreadableDir { error }) if error.contains("ermission denied")
        ));
        assert_eq!(report.vanished, ["mapsx"]);
        assert_eq!(paths(&report), ["ok.txt"]);
    }

    #[test]
    fn protection_covers_the_path_and_below_only() {
        let protected: std::collections::HashSet<String> =
            ["locked".to_string(), "a/b".to_string()].into();
        assert!(is_protected("locked", &protected));
        assert!(is_protected("locked/x", &protected));
        assert!(is_protected("a/b/c/d", &protected));
        assert!(!is_protected("lockedness.txt", &protected));
        assert!(!is_protected("a/bc", &protected));
        assert!(!is_protected("a", &protected));
        assert!(is_protected("anything", &[String::new()].into()));
        assert!(!is_protected("x", &Default::default()));
    }

    #[test]
    fn symlinks_skipped_unless_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        write(outside.path(), "target.txt", b"target");
        write(outside.path(), "tdir/inner.txt", b"inner");
        write(dir.path(), "real.txt", b"real");
        std::os::unix::fs::symlink(
            outside.path().join("target.txt"),
            dir.path().join("link.txt"),
        )
        .unwrap();
        std::os::unix::fs::symlink(outside.path().join("tdir"), dir.path().join("linkdir"))
            .unwrap();
        std::os::unix::fs::symlink("/nonexistent/x", dir.path().join("broken")).unwrap();

        let report = scan(&opts(dir.path()), HashMap::new()).unwrap();
        assert_eq!(paths(&report), ["real.txt"]);
        assert_eq!(skip_of(&report, "link.txt"), Some(&SkipReason::Symlink));
        assert_eq!(skip_of(&report, "linkdir"), Some(&SkipReason::Symlink));
        assert_eq!(skip_of(&report, "broken"), Some(&SkipReason::Symlink));

        let mut o = opts(dir.path());
        o.follow_symlinks = true;
        let report = scan(&o, HashMap::new()).unwrap();
        assert_eq!(
            paths(&report),
            ["link.txt", "linkdir/inner.txt", "real.txt"]
        );
        assert_eq!(report.entries[0].hashes, Some(hash_bytes(b"target")));
        assert_eq!(report.dirs, ["linkdir"]);
        assert!(matches!(
            skip_of(&report, "broken"),
            Some(SkipReason::BrokenSymlink { .. })
        ));
    }

    #[test]
    fn symlink_loop_is_skipped_when_following() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a/file.txt", b"f");
        std::os::unix::fs::symlink("..", dir.path().join("a/up")).unwrap();
        let mut o = opts(dir.path());
        o.follow_symlinks = true;
        let report = scan(&o, HashMap::new()).unwrap();
        assert_eq!(paths(&report), ["a/file.txt"]);
        assert_eq!(skip_of(&report, "a/up"), Some(&SkipReason::SymlinkLoop));
    }

    #[test]
    fn source_that_is_a_symlink_is_walked() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "real/a.txt", b"a");
        std::os::unix::fs::symlink(dir.path().join("real"), dir.path().join("alias")).unwrap();
        let report = scan(&opts(&dir.path().join("alias")), HashMap::new()).unwrap();
        assert_eq!(paths(&report), ["a.txt"]);
    }

    #[test]
    fn non_utf8_names_are_skipped_and_shown_with_their_bytes_escaped() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "ok.txt", b"ok");
        fs::write(dir.path().join(OsStr::from_bytes(b"bad\xff.txt")), b"x").unwrap();
        let bad_dir = dir.path().join(OsStr::from_bytes(b"dir\xfe"));
        fs::create_dir(&bad_dir).unwrap();
        fs::write(bad_dir.join("inside.txt"), b"y").unwrap();
        let report = scan(&opts(dir.path()), HashMap::new()).unwrap();
        assert_eq!(paths(&report), ["ok.txt"]);
        assert_eq!(
            skip_of(&report, "bad\\xFF.txt"),
            Some(&SkipReason::NonUtf8Name)
        );
        assert_eq!(skip_of(&report, "dir\\xFE"), Some(&SkipReason::NonUtf8Name));
        assert_eq!(report.skipped.len(), 2, "the directory is not entered");
    }

    /// A non-UTF-8 folder protects nothing: no record can be below it. Its
    /// lossy name used to protect a real folder named so (`dir\u{fffd}`),
    /// whose deleted files were then never reported vanished.
    #[test]
    fn a_non_utf8_folder_does_not_hide_a_real_folder_gone_under_its_lossy_name() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "dir\u{fffd}/x.txt", b"x");
        write(dir.path(), "bad\u{fffd}.txt", b"b");
        let first = scan(&opts(dir.path()), HashMap::new()).unwrap();
        fs::remove_dir_all(dir.path().join("dir\u{fffd}")).unwrap();
        fs::remove_file(dir.path().join("bad\u{fffd}.txt")).unwrap();
        let bad_dir = dir.path().join(OsStr::from_bytes(b"dir\xfe"));
        fs::create_dir(&bad_dir).unwrap();
        fs::write(bad_dir.join("x.txt"), b"y").unwrap();
        fs::write(dir.path().join(OsStr::from_bytes(b"bad\xff.txt")), b"z").unwrap();
        let second = scan(&opts(dir.path()), known_from(&first, true)).unwrap();
        assert_eq!(second.vanished, ["bad\u{fffd}.txt", "dir\u{fffd}/x.txt"]);
        assert_eq!(second.skipped.len(), 2, "{:?}", second.skipped);
    }

    #[test]
    fn escaped_names_show_each_byte_that_is_not_utf8() {
        assert_eq!(
            escape_non_utf8(OsStr::from_bytes(b"a\xffb/\xc3")),
            "a\\xFFb/\\xC3"
        );
        assert_eq!(escape_non_utf8(OsStr::from_bytes("ünï".as_bytes())), "ünï");
    }

    #[test]
    fn fifo_is_skipped_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "ok.txt", b"ok");
        let status = std::process::Command::new("mkfifo")
            .arg(dir.path().join("pipe"))
            .status()
            .unwrap();
        assert!(status.success());
        let report = scan(&opts(dir.path()), HashMap::new()).unwrap();
        assert_eq!(paths(&report), ["ok.txt"]);
        assert_eq!(
            skip_of(&report, "pipe"),
            Some(&SkipReason::Special {
                kind: SpecialKind::Fifo
            })
        );
    }

    #[test]
    fn socket_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let _listener = std::os::unix::net::UnixListener::bind(dir.path().join("sock")).unwrap();
        let report = scan(&opts(dir.path()), HashMap::new()).unwrap();
        assert_eq!(
            skip_of(&report, "sock"),
            Some(&SkipReason::Special {
                kind: SpecialKind::Socket
            })
        );
    }

    #[test]
    fn too_large_is_skipped_and_not_vanished() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "small", &[0; 10]);
        write(dir.path(), "big", &[0; 11]);
        let first = scan(&opts(dir.path()), HashMap::new()).unwrap();
        let mut o = opts(dir.path());
        o.max_file_size = Some(10);
        let report = scan(&o, known_from(&first, true)).unwrap();
        assert_eq!(
            skip_of(&report, "big"),
            Some(&SkipReason::TooLarge {
                size: 11,
                limit: 10
            })
        );
        assert!(report.vanished.is_empty());
        assert_eq!(report.unchanged, 1);
    }

    /// Without `max_file_size`, a file SharePoint cannot store is skipped
    /// with a reason that says so, not read and sent until refused; an
    /// explicit limit above it is the administrator's call.
    #[test]
    fn files_above_sharepoints_limit_are_skipped_unless_a_limit_says_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let huge = File::create(dir.path().join("huge.img")).unwrap();
        // Sparse: nothing is written.
        huge.set_len(SHAREPOINT_MAX_FILE_SIZE + 1).unwrap();
        write(dir.path(), "small", b"x");
        let mut o = opts(dir.path());
        o.hash_new = false;
        let report = scan(&o, HashMap::new()).unwrap();
        let why = skip_of(&report, "huge.img").expect("skipped");
        assert_eq!(
            why,
            &SkipReason::TooLarge {
                size: SHAREPOINT_MAX_FILE_SIZE + 1,
                limit: SHAREPOINT_MAX_FILE_SIZE
            }
        );
        assert!(
            why.to_string().contains("SharePoint's limit of 250 GiB"),
            "{why}"
        );
        assert_eq!(report.entries.len(), 1);
        o.max_file_size = Some(SHAREPOINT_MAX_FILE_SIZE * 2);
        let report = scan(&o, HashMap::new()).unwrap();
        assert_eq!(skip_of(&report, "huge.img"), None);
        assert_eq!(report.entries.len(), 2);
    }

    #[test]
    fn changed_while_hashing_compares_both_stats_and_length() {
        let before = Fingerprint {
            size: 10,
            mtime_ns: 5,
            inode: 7,
        };
        assert!(!changed_while_hashing(&before, &before, 10));
        let grown = Fingerprint { size: 11, ..before };
        assert!(changed_while_hashing(&before, &grown, 11));
        let touched = Fingerprint {
            mtime_ns: 6,
            ..before
        };
        assert!(changed_while_hashing(&before, &touched, 10));
        let replaced = Fingerprint { inode: 8, ..before };
        assert!(changed_while_hashing(&before, &replaced, 10));
        // Same stats, but we read fewer bytes than the size says (truncated
        // and restored, or a short read we did not notice).
        assert!(changed_while_hashing(&before, &before, 9));
    }

    #[test]
    fn source_missing_or_not_a_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let mut known = HashMap::new();
        known.insert(
            "a".to_string(),
            KnownFile {
                size: 1,
                mtime_ns: 1,
                inode: 1,
                hashes: None,
                synced: true,
                racy: false,
            },
        );
        match scan(&opts(&missing), known.clone()) {
            Err(ScanError::SourceMissing { path }) => assert_eq!(path, missing),
            other => panic!("{other:?}"),
        }
        write(dir.path(), "file", b"x");
        assert!(matches!(
            scan(&opts(&dir.path().join("file")), known),
            Err(ScanError::SourceMissing { .. })
        ));
        let err = scan(&opts(&missing), HashMap::new()).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }

    #[test]
    fn bad_pattern_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = opts(dir.path());
        o.exclude = vec!["a{".into()];
        assert!(matches!(
            scan(&o, HashMap::new()),
            Err(ScanError::Filter(_))
        ));
    }

    #[test]
    fn empty_files_and_nested_dirs() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a/b/c/empty", b"");
        write(dir.path(), ".hidden/.dotfile", b"no hidden-file rules");
        fs::create_dir_all(dir.path().join("a/emptydir")).unwrap();
        let report = scan(&opts(dir.path()), HashMap::new()).unwrap();
        assert_eq!(paths(&report), [".hidden/.dotfile", "a/b/c/empty"]);
        assert_eq!(report.entries[1].size, 0);
        assert_eq!(report.entries[1].hashes, Some(hash_bytes(b"")));
        assert_eq!(report.dirs, [".hidden", "a", "a/b", "a/b/c", "a/emptydir"]);
    }

    #[test]
    fn single_threaded_gives_the_same_report() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..50 {
            write(dir.path(), &format!("d{}/f{i}", i % 7), &[i as u8; 100]);
        }
        let mut one = opts(dir.path());
        one.threads = 1;
        let mut single = scan(&one, HashMap::new()).unwrap();
        let parallel = scan(&opts(dir.path()), HashMap::new()).unwrap();
        single.racy_cutoff_ns = parallel.racy_cutoff_ns; // the scans' start times
        assert_eq!(single, parallel);
    }

    #[test]
    fn report_serializes_for_scan_json() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.txt", b"a");
        std::os::unix::fs::symlink("a.txt", dir.path().join("l")).unwrap();
        let report = scan(&opts(dir.path()), HashMap::new()).unwrap();
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["entries"][0]["path"], "a.txt");
        assert_eq!(json["entries"][0]["change"], "new");
        assert_eq!(
            json["entries"][0]["hashes"]["quick_xor"],
            hash_bytes(b"a").quick_xor
        );
        assert_eq!(json["skipped"][0]["reason"]["type"], "symlink");
        let counts = serde_json::to_value(report.counts()).unwrap();
        assert_eq!(counts["new"], 1);
        assert_eq!(counts["skipped"], 1);
    }

    #[test]
    fn options_from_job_spec() {
        let job = crate::config::JobSpec {
            name: "j".into(),
            source: "/srv/x".into(),
            site: crate::config::SiteUrl {
                scheme: "https".into(),
                host: "h".into(),
                path: String::new(),
            },
            library: "Documents".into(),
            folder: String::new(),
            schedule: None,
            watch: false,
            include: vec!["*.pdf".into()],
            exclude: vec!["*.tmp".into()],
            delete: crate::config::DeleteMode::Keep,
            on_remote_delete: Default::default(),
            on_remote_change: Default::default(),
            follow_symlinks: true,
            max_delete: crate::config::MaxDelete::Default,
            settings: crate::config::Settings {
                max_file_size: Some(5),
                ..Default::default()
            },
        };
        let o = ScanOptions::from(&job);
        assert_eq!(o.source, Path::new("/srv/x"));
        assert_eq!((o.include.len(), o.exclude.len()), (1, 1));
        assert!(o.follow_symlinks);
        assert_eq!(o.max_file_size, Some(5));
    }
}
