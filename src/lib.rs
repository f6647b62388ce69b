//! sharepush: back up server folders into SharePoint document libraries.
//!
//! The pipeline, one stage per module, each with a narrow input/output type:
//!
//! ```text
//! triggers (startup, cron, fs events, manual)
//!   -> scan   (walk or dirty set; hash only what changed)      scan.rs, hash.rs, filter.rs
//!   -> plan   (pure: local entries + state -> actions)          plan.rs
//!   -> upload (the only stage that talks to the remote)         upload.rs, remote/, retry.rs
//!   -> record (every file state transition, in a transaction)   state/
//! ```
//!
//! `job` runs the four stages once for one job; `daemon` (`sharepush run`)
//! supervises one `job_task` per job, which decides when to run from `watch`
//! (inotify) batches, cron ticks (`scheduler`: one tokio-cron-scheduler for
//! the daemon) and retries, and tells systemd
//! (`systemd`) how it goes; `remote` is the [`remote::Remote`]
//! trait with its Graph implementation, sign-in and SharePoint's naming rules.
//! `reconcile` learns remote changes (delta per drive, adopting files already
//! uploaded, remote deletes and edits, server-side renames) before each scan.
//!
//! `config` turns the TOML file into checked [`config::Config`] values (phase
//! two of the two-phase config), `schedule` owns cron parsing, time zones and
//! next-run times, `cli` is the command line, `status` the report behind `sharepush status`,
//! and `error` the error policy; `memory` gives back what a run freed. `main.rs`
//! stays thin: it parses arguments, sets up tracing and maps outcomes to exit
//! codes. `demo` (cargo feature `demo`, on by default) runs all of it
//! against the Graph emulator in-process.
// `deny`, not `forbid`: `memory` holds the one audited call into libc.
#![deny(unsafe_code)]

pub mod cli;
pub mod commands;
pub mod config;
pub mod daemon;
#[cfg(feature = "demo")]
pub mod demo;
pub mod error;
pub mod filter;
pub mod hash;
pub mod job;
pub mod job_task;
pub mod logging;
pub mod memory;
pub mod plan;
pub mod progress;
pub mod reconcile;
pub mod remote;
pub mod retry;
pub mod scan;
pub mod schedule;
pub mod scheduler;
pub mod state;
pub mod status;
pub mod systemd;
pub mod upload;
pub mod watch;

/// Runs one parsed command line and returns the exit code to end with.
/// Reports go to stdout, problems to stderr; nothing here exits the process.
pub fn run(cli: cli::Cli) -> error::ExitCode {
    // Unlocked handles (each write locks briefly): holding the stderr lock
    // for the whole command would block `tracing`'s writes from the
    // runtime's threads forever.
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    match &cli.command {
        cli::Command::Check => commands::check(&cli.global, &mut out, &mut err),
        cli::Command::Scan(args) => {
            commands::scan(&cli.global, &args.jobs, args.json, &mut out, &mut err)
        }
        cli::Command::Sync(args) => commands::sync(&cli.global, args, &mut out, &mut err),
        cli::Command::Run => commands::run_daemon(&cli.global, &mut err),
        cli::Command::Status(args) => commands::status(&cli.global, args.json, &mut out, &mut err),
        cli::Command::Login(args) => commands::login(&cli.global, args, &mut out, &mut err),
        #[cfg(feature = "demo")]
        cli::Command::Demo(args) => demo::run(&cli.global, args, &mut out, &mut err),
    }
}
