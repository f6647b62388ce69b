//! Scan: walk a job's source and find what is new or changed.
//!
//! SKELETON: the data types are the contract between scan, plan and state.

use crate::hash::Hashes;

/// What the state database knows of one file, loaded before a scan so the
/// walk can decide without hashing whether a file changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownFile {
    pub size: u64,
    /// Modification time in nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    pub inode: u64,
    /// `None` when never hashed.
    pub hashes: Option<Hashes>,
    /// True when the remote holds exactly this content (state `Synced`).
    pub synced: bool,
}

/// How a scanned file compares with what the state recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Not in the state database.
    New,
    /// Size, mtime or inode differ from the record (and it was re-hashed).
    Changed,
    /// Same fingerprint as recorded (not re-hashed).
    Unchanged,
}

/// One regular file found by a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalEntry {
    /// Path relative to the job's source, `/`-separated, valid UTF-8.
    pub path: String,
    pub size: u64,
    pub mtime_ns: i64,
    pub inode: u64,
    pub hashes: Hashes,
    pub change: Change,
}
