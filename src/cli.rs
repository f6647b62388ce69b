//! The command line: argument types (clap derive) and where each command goes.
//!
//! `main.rs` parses [`Cli`], sets up logging and calls [`crate::run`]; the
//! commands themselves live in [`crate::commands`], where tests can call them.
//! Every option that names a file or directory can also come from the
//! environment (`SHAREPUSH_CONFIG`, `SHAREPUSH_STATE_DIR`), which is how a
//! systemd unit or a container sets them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Back up server folders into SharePoint document libraries, unattended.
#[derive(Debug, Parser)]
#[command(name = "sharepush", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// Options every command accepts.
#[derive(Debug, Args, Clone)]
pub struct GlobalArgs {
    /// Configuration file.
    #[arg(
        long,
        global = true,
        env = "SHAREPUSH_CONFIG",
        default_value = crate::config::DEFAULT_CONFIG_PATH,
        value_name = "PATH"
    )]
    pub config: PathBuf,

    /// State directory (SQLite database, lock, tokens); overrides `[daemon] state_dir`.
    #[arg(long, global = true, env = "SHAREPUSH_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// More log output (-v: debug, -vv: trace). `RUST_LOG` overrides both.
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,

    /// Only warnings and errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,

    /// Log line format; overrides `[daemon] log_format`.
    #[arg(long, global = true, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormatArg>,
}

/// `--log-format` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormatArg {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check the configuration: list each job, its schedule with the next three
    /// run times and whether it watches; or print every error and exit 78.
    Check,
    /// Show what would be uploaded and why (new / changed / unchanged /
    /// skipped), without touching the network; records hashes in the state.
    Scan(ScanArgs),
    /// Upload what changed, once, then exit: scan, plan, upload and record
    /// each job. Exit 0 when everything is up, 1 when files failed (listed),
    /// 77 when a person must sign in again (`sharepush login`).
    Sync(SyncArgs),
    /// Run as a daemon (what the systemd unit starts): watch each job's
    /// folder, run each job's schedule, upload what changes, until SIGTERM or
    /// SIGINT; SIGHUP reloads the configuration. Exit 0 after a clean stop,
    /// 78 for a bad config, 75 when another sharepush holds the state dir.
    Run,
    /// Show each job's last run, next run, pending and failed files, bytes
    /// uploaded and watch state, the daemon and the sign-in, from the state
    /// database (read-only: works while the daemon runs). Exit 0 when
    /// healthy, 1 when any job has failures, 75 when the state cannot be
    /// read, 77 when a login is needed, 78 when the config cannot be loaded.
    Status(StatusArgs),
    /// Sign in with the device code flow (works over SSH) and store the
    /// refresh token in the state directory (0600).
    Login(LoginArgs),
    /// Try sharepush with no tenant: start the bundled Graph emulator on
    /// loopback, sign in without a person, sync the config's jobs, show what
    /// arrived where (path, size, quickXorHash, match), then keep running the
    /// daemon and print each upload as files change, until Ctrl-C (`--once`
    /// exits after the first sync). Run it with `--config config/demo.toml`
    /// from the repository root.
    #[cfg(feature = "demo")]
    Demo(DemoArgs),
}

/// `sharepush sync` options.
#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Jobs to sync (all when none given).
    #[arg(value_name = "JOB")]
    pub jobs: Vec<String>,

    /// Show what would be uploaded; touch neither SharePoint nor the state.
    #[arg(long)]
    pub dry_run: bool,
}

/// `sharepush login` options.
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Import a refresh token from this file instead of signing in
    /// interactively (e.g. one obtained by an older script). It is checked
    /// by refreshing it once.
    #[arg(long, value_name = "FILE")]
    pub refresh_token_file: Option<PathBuf>,
}

/// `sharepush demo` options.
#[cfg(feature = "demo")]
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Loopback port for the emulator instead of the one in `[auth]
    /// authority` (8070 in config/demo.toml); 0 picks a free one.
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,

    /// Sync once, show what arrived and exit, instead of going on as a
    /// watching daemon.
    #[arg(long, conflicts_with = "serve")]
    pub once: bool,

    /// After the sync keep only the emulator running (until Ctrl-C), no
    /// daemon, so rclone, curl or another `sharepush sync` can talk to it.
    #[arg(long)]
    pub serve: bool,

    /// Back up DIR instead of each job's configured source (the bundled
    /// config/demo/sample), e.g. a copy to edit freely.
    #[arg(long, value_name = "DIR")]
    pub source: Option<PathBuf>,
}

/// `sharepush scan` options.
#[derive(Debug, Args)]
pub struct ScanArgs {
    /// Jobs to scan (all when none given).
    #[arg(value_name = "JOB")]
    pub jobs: Vec<String>,

    /// Print one JSON object (`{"jobs":[{"name":..,"new":..,"changed":..,"unchanged":..,"skipped":..}]}`).
    #[arg(long)]
    pub json: bool,
}

/// `sharepush status` options.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print one JSON object (stable; documented in the README).
    #[arg(long)]
    pub json: bool,
}
