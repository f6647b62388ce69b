//! Watching: inotify events on a job's source, debounced and filtered, as
//! hints that something changed.
//!
//! Input: the job's source folder, its [`Filter`] and its `debounce`.
//! Output: a [`Watch`] whose [`Watch::changed`] wakes the job task and whose
//! [`Watch::take`] hands over the [`Dirty`] set gathered since the last
//! take: the relative paths that changed (for the settle check), whether a
//! full rescan is needed (the kernel queue overflowed), and whether the
//! watch broke (a notify error, the source itself deleted or unmounted).
//!
//! How: `notify` (inotify) through `notify-debouncer-full`, which merges the
//! events of one path within `debounce` and reports renames as such. Access
//! events (opens, reads: the scan and the uploader cause them) are dropped;
//! paths the job's filter leaves out are dropped with the same rules the scan
//! uses ([`Filter::matches`]), so an excluded `*.tmp` never wakes the job.
//! Events are merged into one set behind a mutex, so a burst of 10,000 files
//! costs a set of 10,000 paths, not a queue of events; past [`MAX_DIRTY`]
//! paths the set is dropped and a rescan asked for instead.
//!
//! What it does not do: decide what to upload. The watcher is a hint and the
//! scan is the truth: every batch leads to a scan of the tree (an unchanged
//! rescan costs one `stat` per file), so a lost event delays a change until
//! the next scan but never loses it. Running out of inotify watches is
//! reported as [`WatchError::TooManyWatches`] with the sysctl to raise.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use notify_debouncer_full::notify::event::{AccessKind, ModifyKind};
use notify_debouncer_full::notify::{self, EventKind, RecommendedWatcher, RecursiveMode};
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer_opt};

use crate::filter::Filter;

/// More changed paths than this between two runs are not kept one by one:
/// the job rescans the tree instead (the scan finds them all anyway).
pub const MAX_DIRTY: usize = 100_000;

/// Why a folder cannot be watched.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// inotify ran out of watches (one per folder): the sysctl must be raised.
    #[error(
        "cannot watch {} ({folders} folder(s)): the inotify watch limit is reached; raise \
         fs.inotify.max_user_watches (now {current}) to at least {needed}, e.g. \
         `sysctl -w fs.inotify.max_user_watches={needed}` (and in /etc/sysctl.d/ to keep it)",
        root.display()
    )]
    TooManyWatches {
        root: PathBuf,
        /// Folders below the source (each takes one watch).
        folders: u64,
        /// The current limit, from /proc/sys/fs/inotify/max_user_watches.
        current: u64,
        /// A limit that leaves room for this tree.
        needed: u64,
    },
    /// Any other notify failure (the source vanished, no inotify instance left...).
    #[error("cannot watch {}: {source}", root.display())]
    Notify {
        root: PathBuf,
        #[source]
        source: notify::Error,
    },
}

impl WatchError {
    /// True for the inotify limit, which only an administrator can lift.
    pub fn is_limit(&self) -> bool {
        matches!(self, WatchError::TooManyWatches { .. })
    }
}

/// What the watcher saw since the last [`Watch::take`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Dirty {
    /// Changed paths relative to the source (files and folders), filtered.
    pub paths: HashSet<PathBuf>,
    /// Events were lost (kernel queue overflow, too many paths): rescan all.
    pub rescan: bool,
    /// The watch stopped working (an error, or the source itself went away);
    /// the job falls back to scheduled scans and re-arms later.
    pub broken: Option<String>,
}

impl Dirty {
    /// True when nothing at all was reported.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty() && !self.rescan && self.broken.is_none()
    }
}

/// State shared between notify's debouncer thread and the job task.
#[derive(Debug, Default)]
struct Shared {
    dirty: Mutex<Dirty>,
    wake: tokio::sync::Notify,
}

/// A running watch of one job's source. Dropping it stops the watch.
pub struct Watch {
    /// Kept alive for the watch's lifetime; dropping it stops notify.
    _debouncer: Debouncer<notify::RecommendedWatcher, RecommendedCache>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").finish_non_exhaustive()
    }
}

impl Watch {
    /// Starts watching `root` (recursively) with `debounce` as quiet time.
    /// `root` must be the resolved source folder, so event paths strip to
    /// the relative paths the filter and the scan use. `follow_symlinks` as
    /// the job's: folders behind a link the scan does not follow are not
    /// watched either (notify's default would follow them).
    pub fn start(
        root: &Path,
        filter: Filter,
        debounce: Duration,
        follow_symlinks: bool,
    ) -> Result<Watch, WatchError> {
        if let Some(fake) = injected_failure() {
            return Err(fake.into_error(root));
        }
        let shared = Arc::new(Shared::default());
        let handler_shared = Arc::clone(&shared);
        let handler_root = root.to_path_buf();
        // The debouncer needs a tick; 0 would spin. 50 ms is the floor.
        let debounce = debounce.max(Duration::from_millis(50));
        let mut debouncer = new_debouncer_opt::<_, RecommendedWatcher, RecommendedCache>(
            debounce,
            None,
            move |result: DebounceEventResult| {
                absorb(&handler_shared, &handler_root, &filter, result)
            },
            RecommendedCache::new(),
            notify::Config::default().with_follow_symlinks(follow_symlinks),
        )
        .map_err(|source| WatchError::Notify {
            root: root.to_path_buf(),
            source,
        })?;
        debouncer
            .watch(root, RecursiveMode::Recursive)
            .map_err(|source| classify(root, source))?;
        // A recursive add that hits the limit part-way reports it through
        // the event handler (at the debouncer's next tick), not from
        // `watch`: `absorb` then marks the watch broken with the full
        // limit message, and the job task falls back as for any failure.
        Ok(Watch {
            _debouncer: debouncer,
            shared,
        })
    }

    /// Waits until the watcher has something to report.
    pub async fn changed(&self) {
        self.shared.wake.notified().await;
    }

    /// Takes what was gathered since the last take.
    pub fn take(&self) -> Dirty {
        std::mem::take(
            &mut *self
                .shared
                .dirty
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }
}

/// Runs on notify's debouncer thread: filter and merge one batch.
fn absorb(shared: &Shared, root: &Path, filter: &Filter, result: DebounceEventResult) {
    let mut dirty = shared.dirty.lock().unwrap_or_else(PoisonError::into_inner);
    let before = dirty.clone();
    match result {
        Ok(events) => {
            for event in events {
                if event.need_rescan() {
                    dirty.rescan = true;
                    continue;
                }
                match event.kind {
                    // Opens and reads (our own scan and uploads among them).
                    EventKind::Access(AccessKind::Close(notify::event::AccessMode::Write)) => {}
                    EventKind::Access(_) => continue,
                    _ => {}
                }
                for path in &event.paths {
                    let Ok(rel) = path.strip_prefix(root) else {
                        continue;
                    };
                    if rel.as_os_str().is_empty() {
                        // The source itself: deleted, moved away or unmounted.
                        if matches!(event.kind, EventKind::Remove(_) | EventKind::Modify(_))
                            && !root.is_dir()
                        {
                            dirty.broken = Some(format!(
                                "the source folder {} went away (deleted, moved or unmounted)",
                                root.display()
                            ));
                        }
                        continue;
                    }
                    // A path that is gone may have been a folder (moved out,
                    // deleted): keep it unless the patterns leave it out
                    // either way, or the run would not see its files go.
                    // One that exists and was created or renamed here may
                    // replace the other type (a folder replaced by a file
                    // the patterns leave out): kept if either is let in.
                    let included = if path.exists() {
                        let is_dir = path.is_dir();
                        filter.matches(rel, is_dir).is_included()
                            || (matches!(
                                event.kind,
                                EventKind::Create(_)
                                    | EventKind::Remove(_)
                                    | EventKind::Modify(ModifyKind::Name(_))
                            ) && filter.matches(rel, !is_dir).is_included())
                    } else {
                        filter.matches(rel, false).is_included()
                            || filter.matches(rel, true).is_included()
                    };
                    if !included {
                        continue;
                    }
                    if dirty.paths.len() >= MAX_DIRTY {
                        dirty.paths.clear();
                        dirty.rescan = true;
                    }
                    if !dirty.rescan {
                        dirty.paths.insert(rel.to_path_buf());
                    }
                }
            }
        }
        Err(errors) => {
            let text = errors
                .iter()
                .map(|e| match e.kind {
                    notify::ErrorKind::MaxFilesWatch => limit_error(root).to_string(),
                    _ => e.to_string(),
                })
                .collect::<Vec<_>>()
                .join("; ");
            dirty.broken = Some(text);
            dirty.rescan = true;
        }
    }
    if *dirty != before {
        drop(dirty);
        shared.wake.notify_one();
    }
}

fn classify(root: &Path, source: notify::Error) -> WatchError {
    match source.kind {
        notify::ErrorKind::MaxFilesWatch => limit_error(root),
        _ => WatchError::Notify {
            root: root.to_path_buf(),
            source,
        },
    }
}

/// The limit error with the numbers an administrator needs.
fn limit_error(root: &Path) -> WatchError {
    let folders = count_folders(root);
    let current = current_limit().unwrap_or(0);
    // This tree, plus what is already in use elsewhere (at most the whole
    // current limit), rounded up to a power of two as sysctl values usually are.
    let needed = (current + folders + 1).next_power_of_two();
    WatchError::TooManyWatches {
        root: root.to_path_buf(),
        folders,
        current,
        needed,
    }
}

/// The current `fs.inotify.max_user_watches`.
pub fn current_limit() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/fs/inotify/max_user_watches")
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// Folders below and including `root` (one inotify watch each).
fn count_folders(root: &Path) -> u64 {
    ignore::WalkBuilder::new(root)
        .standard_filters(false)
        .build()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_some_and(|t| t.is_dir()))
        .count() as u64
}

/// A watch failure injected for tests and for trying the fallback on
/// purpose: `SHAREPUSH_WATCH_FAIL=limit` acts as if inotify ran out of
/// watches, `=error` as any other notify error.
#[derive(Debug, Clone, Copy)]
enum Injected {
    Limit,
    Error,
}

impl Injected {
    fn into_error(self, root: &Path) -> WatchError {
        match self {
            Injected::Limit => limit_error(root),
            Injected::Error => WatchError::Notify {
                root: root.to_path_buf(),
                source: notify::Error::generic("injected by SHAREPUSH_WATCH_FAIL"),
            },
        }
    }
}

fn injected_failure() -> Option<Injected> {
    match std::env::var("SHAREPUSH_WATCH_FAIL").ok()?.as_str() {
        "limit" => Some(Injected::Limit),
        "error" => Some(Injected::Error),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    async fn wait_for(watch: &Watch, pred: impl Fn(&Dirty) -> bool) -> Dirty {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = Dirty::default();
        while Instant::now() < deadline {
            let _ = tokio::time::timeout(Duration::from_millis(200), watch.changed()).await;
            let d = watch.take();
            seen.paths.extend(d.paths);
            seen.rescan |= d.rescan;
            if d.broken.is_some() {
                seen.broken = d.broken;
            }
            if pred(&seen) {
                return seen;
            }
        }
        panic!("watch never reported what was expected; saw {seen:?}");
    }

    #[tokio::test]
    async fn events_are_filtered_like_the_scan_and_merged() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::create_dir(root.join("cache")).unwrap();
        let filter = Filter::new(&[], &["*.tmp".into(), "cache/".into()]).unwrap();
        let watch = Watch::start(&root, filter, Duration::from_millis(50), false).unwrap();
        std::fs::write(root.join("skip.tmp"), b"x").unwrap();
        std::fs::write(root.join("cache/inner.txt"), b"x").unwrap();
        std::fs::write(root.join("keep.txt"), b"x").unwrap();
        std::fs::write(root.join("keep.txt"), b"xy").unwrap();
        let seen = wait_for(&watch, |d| d.paths.contains(Path::new("keep.txt"))).await;
        assert!(!seen.paths.contains(Path::new("skip.tmp")), "{seen:?}");
        assert!(
            !seen.paths.contains(Path::new("cache/inner.txt")),
            "{seen:?}"
        );
        assert!(!seen.rescan && seen.broken.is_none(), "{seen:?}");
    }

    #[tokio::test]
    async fn a_folder_moved_out_is_reported_even_with_include_patterns() {
        // Moving a folder out of the tree is one event for the folder, and
        // by then nothing says it was a folder: judged as a file, `*.txt`
        // would have dropped it and its files would never vanish.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("src");
        std::fs::create_dir_all(root.join("docs")).unwrap();
        std::fs::write(root.join("docs/a.txt"), b"x").unwrap();
        let root = root.canonicalize().unwrap();
        let filter = Filter::new(&["*.txt".into()], &[]).unwrap();
        let watch = Watch::start(&root, filter, Duration::from_millis(50), false).unwrap();
        std::fs::rename(root.join("docs"), dir.path().join("elsewhere")).unwrap();
        let seen = wait_for(&watch, |d| d.paths.contains(Path::new("docs"))).await;
        assert!(!seen.rescan && seen.broken.is_none(), "{seen:?}");
    }

    #[tokio::test]
    async fn reading_files_wakes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::write(root.join("a.txt"), b"x").unwrap();
        let watch = Watch::start(
            &root,
            Filter::everything(),
            Duration::from_millis(50),
            false,
        )
        .unwrap();
        let _ = std::fs::read(root.join("a.txt")).unwrap();
        // A marker write after the read: once it shows up, the read's events
        // (older) have been delivered too.
        std::fs::write(root.join("marker"), b"m").unwrap();
        let seen = wait_for(&watch, |d| d.paths.contains(Path::new("marker"))).await;
        assert!(!seen.paths.contains(Path::new("a.txt")), "{seen:?}");
    }

    #[tokio::test]
    async fn a_vanished_source_breaks_the_watch() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("src");
        std::fs::create_dir(&root).unwrap();
        let root = root.canonicalize().unwrap();
        let watch = Watch::start(
            &root,
            Filter::everything(),
            Duration::from_millis(50),
            false,
        )
        .unwrap();
        std::fs::remove_dir(&root).unwrap();
        let seen = wait_for(&watch, |d| d.broken.is_some()).await;
        assert!(seen.broken.unwrap().contains("went away"));
    }

    #[test]
    fn the_limit_error_names_the_sysctl_and_a_value() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        let e = limit_error(dir.path());
        let WatchError::TooManyWatches {
            folders,
            needed,
            current,
            ..
        } = &e
        else {
            panic!("{e:?}")
        };
        assert_eq!(*folders, 3);
        assert!(*needed > *current + 3, "{e}");
        let text = e.to_string();
        assert!(text.contains("fs.inotify.max_user_watches"), "{text}");
        assert!(text.contains(&needed.to_string()), "{text}");
    }
}
