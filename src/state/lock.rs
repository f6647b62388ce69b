//! The state directory lock: one sharepush process per state directory.
//!
//! `File::try_lock` is `flock(LOCK_EX | LOCK_NB)` on Unix: it belongs to the
//! open file description, so the kernel drops it when the process dies (no
//! stale locks after SIGKILL), and a second open of the same file conflicts
//! even inside one process. The holder writes its pid into the file *after*
//! locking, so a process that fails to lock reads the holder's pid, never its
//! own or a stale one being overwritten.
//!
//! One exception to failing fast: a lock held under our own pid is waited
//! for, briefly. A child forked by any thread shares every open descriptor
//! until it execs, so a lock this process just let go of can stay held for
//! that moment (test binaries spawn processes while others reopen a state
//! directory).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::StateError;

/// How long a lock held under this process's own pid is waited for (see
/// [`DirLock::acquire`]); a fork-to-exec window is far shorter.
const SELF_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Held for the life of a writable [`super::Store`]; unlocking is closing.
#[derive(Debug)]
pub(super) struct DirLock {
    /// Kept open only to keep the lock.
    _file: File,
}

impl DirLock {
    /// Locks `lock_path` (created 0600 if missing) or reports who holds it.
    /// `dir` is the state directory, for the message.
    pub(super) fn acquire(dir: &Path, lock_path: &Path) -> Result<DirLock, StateError> {
        let io_err = |action, source| StateError::Io {
            action,
            path: lock_path.to_path_buf(),
            source,
        };
        // No truncate here: the file may hold the current holder's pid.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(lock_path)
            .map_err(|e| io_err("open lock file", e))?;
        let mut waited_for_self = None;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) => {
                    let pid = read_pid(&mut file);
                    // Held under our own pid: a lock this process let go of
                    // a moment ago that a child forked meanwhile (by any
                    // thread) still shares until it execs and its copies of
                    // our descriptors close. Worth a short wait; anyone else
                    // is refused at once.
                    let started = *waited_for_self.get_or_insert_with(std::time::Instant::now);
                    if !worth_waiting(pid, started.elapsed()) {
                        return Err(StateError::Locked {
                            dir: dir.to_path_buf(),
                            pid,
                        });
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(TryLockError::Error(e)) => return Err(io_err("lock", e)),
            }
        }
        let pid = format!("{}\n", std::process::id());
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(pid.as_bytes()))
            .map_err(|e| io_err("write pid into", e))?;
        Ok(DirLock { _file: file })
    }
}

/// Whether a lock held by `holder` (the pid in the lock file) is worth
/// waiting for, `waited` into the wait: only our own, and not for long.
fn worth_waiting(holder: Option<u32>, waited: std::time::Duration) -> bool {
    holder == Some(std::process::id()) && waited < SELF_LOCK_WAIT
}

/// The pid of the process that holds `dir`'s lock, or held it last (the
/// file keeps it after a release), read without locking; `None` when no
/// lock file or no pid in it.
pub fn last_holder(dir: &Path) -> Option<u32> {
    read_pid(&mut File::open(lock_path(dir)).ok()?)
}

/// The pid a holder wrote, if the file has one.
fn read_pid(file: &mut File) -> Option<u32> {
    file.seek(SeekFrom::Start(0)).ok()?;
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// Path of the lock file in `dir`.
pub(super) fn lock_path(dir: &Path) -> PathBuf {
    dir.join(super::LOCK_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn only_a_lock_under_our_own_pid_is_waited_for_and_not_long() {
        let me = std::process::id();
        assert!(worth_waiting(Some(me), Duration::ZERO));
        assert!(worth_waiting(Some(me), Duration::from_millis(1999)));
        assert!(!worth_waiting(Some(me), SELF_LOCK_WAIT));
        assert!(!worth_waiting(Some(me.wrapping_add(1)), Duration::ZERO));
        assert!(!worth_waiting(None, Duration::ZERO));
    }

    /// A lock this process lets go of while another of its threads opens
    /// the directory (what a child forked meanwhile looks like: the lock
    /// outlives the drop by a moment) is taken once free, not refused.
    #[test]
    fn a_lock_released_by_this_process_meanwhile_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let path = lock_path(dir.path());
        let held = DirLock::acquire(dir.path(), &path).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let opener = {
            let (dir, path) = (dir.path().to_path_buf(), path.clone());
            std::thread::spawn(move || {
                tx.send(()).unwrap();
                DirLock::acquire(&dir, &path)
            })
        };
        rx.recv().unwrap();
        drop(held);
        opener.join().unwrap().expect("taken once released");
    }
}
