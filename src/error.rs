//! Error policy and process exit codes.
//!
//! Each layer has its own `thiserror` enum that keeps causes as `#[source]`
//! (config: [`crate::config::ConfigErrors`], state: [`crate::state::StateError`],
//! scan: [`crate::scan::ScanError`]). Per-file problems are *not* errors of
//! a run: they are recorded and reported while the run goes on; the exit
//! status remembers them ([`ExitCode::SomeFilesFailed`]). Only a bad config and
//! a broken or locked store are fatal. `anyhow` appears only in `main.rs`.
//!
//! Secrets never appear in any error text: errors name files and keys, never
//! their contents.

/// The documented exit codes (README "Exit codes"). Values follow
/// `sysexits.h` where one fits, so systemd's `RestartPreventExitStatus=78`
/// and monitoring checks can rely on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    /// Everything done.
    Ok = 0,
    /// The run finished but some files failed; they are listed and retried next run.
    SomeFilesFailed = 1,
    /// Bad command line.
    Usage = 2,
    /// Temporary failure (state dir locked by another process, network down): retry later.
    TempFail = 75,
    /// A person must sign in again (`sharepush login`).
    AuthNeeded = 77,
    /// The configuration is invalid; restarting will not help.
    Config = 78,
    /// Stopped by SIGINT (Ctrl-C) before finishing: 128 + 2, as a shell
    /// reports a process killed by it. Nothing is lost; the next run resumes.
    Interrupted = 130,
    /// Stopped by SIGTERM before finishing: 128 + 15 (systemd: add
    /// `SuccessExitStatus=143` if a stop should not count as a failure).
    Terminated = 143,
}

impl ExitCode {
    /// The numeric process exit status.
    pub fn code(self) -> u8 {
        self as u8
    }
}
