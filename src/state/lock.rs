//! The state directory lock: one sharepush process per state directory.
//!
//! `File::try_lock` is `flock(LOCK_EX | LOCK_NB)` on Unix: it belongs to the
//! open file description, so the kernel drops it when the process dies (no
//! stale locks after SIGKILL), and a second open of the same file conflicts
//! even inside one process. The holder writes its pid into the file *after*
//! locking, so a process that fails to lock reads the holder's pid, never its
//! own or a stale one being overwritten.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::StateError;

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
        let locked = file.try_lock();
        match locked {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(StateError::Locked {
                    dir: dir.to_path_buf(),
                    pid: read_pid(&mut file),
                });
            }
            Err(TryLockError::Error(e)) => return Err(io_err("lock", e)),
        }
        let pid = format!("{}\n", std::process::id());
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(pid.as_bytes()))
            .map_err(|e| io_err("write pid into", e))?;
        Ok(DirLock { _file: file })
    }
}

/// The pid a holder wrote, if the file has one.
fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// Path of the lock file in `dir`.
pub(super) fn lock_path(dir: &Path) -> PathBuf {
    dir.join(super::LOCK_FILE)
}
