//! Configuration: TOML in two phases.
//!
//! Phase one reads the file as typed (keys, values and their spans); phase two,
//! [`Config::from_str`] / [`Config::load`], checks and compiles it into the
//! types the rest of the program uses (absolute paths, parsed cron, parsed site
//! URL, sizes and durations as numbers). Every problem found is collected and
//! reported at once as [`ConfigErrors`], each naming the file, line:column, the
//! job and the key, and what would be accepted. `sharepush check` runs only this.
//!
//! This module reads no secret: it checks that secret files and private keys
//! exist and are not readable by group/others, and keeps their *paths* only.
//!
//! SKELETON: the public types below are the contract other modules use.

use std::path::PathBuf;
use std::time::Duration;

use crate::schedule::Schedule;

/// Default location of the configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/sharepush/config.toml";
/// Default state directory (systemd's `StateDirectory=sharepush`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/sharepush";
/// Upload session fragments must be a multiple of this (graph-api.md section 3).
pub const FRAGMENT_UNIT: u64 = 320 * 1024;
/// Upload session requests must stay below this.
pub const FRAGMENT_MAX: u64 = 60 * 1024 * 1024;

/// A checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from, for messages.
    pub path: PathBuf,
    pub auth: AuthSpec,
    pub daemon: DaemonSpec,
    /// Settings every job inherits unless it overrides them.
    pub defaults: Settings,
    pub jobs: Vec<JobSpec>,
}

/// How sharepush signs in.
#[derive(Debug, Clone)]
pub struct AuthSpec {
    pub tenant: String,
    pub client_id: String,
    pub mode: AuthMode,
    /// Token endpoint base, e.g. `https://login.microsoftonline.com` or the emulator.
    pub authority: String,
    /// Graph base, e.g. `https://graph.microsoft.com/v1.0` or the emulator's `/v1.0`.
    pub graph_url: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMode {
    /// Delegated: `sharepush login` runs the device code flow once, then refresh tokens.
    DeviceCode,
    /// App-only with a client secret read from a 0600 file at use time.
    ClientSecret { secret_file: PathBuf },
    /// App-only with a certificate (PEM) and its private key (PEM, 0600).
    Certificate { certificate: PathBuf, private_key: PathBuf },
}

#[derive(Debug, Clone)]
pub struct DaemonSpec {
    pub state_dir: PathBuf,
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Tunables with defaults, overridable per job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Files uploaded at once.
    pub concurrency: usize,
    /// Bytes per upload-session fragment: a multiple of 320 KiB, below 60 MiB.
    pub fragment_size: u64,
    /// Quiet time after a filesystem event before a watch batch is taken.
    pub debounce: Duration,
    /// A file must keep its size and mtime this long before it is uploaded.
    pub settle: Duration,
    /// Bytes per second for uploads, `None` = unlimited.
    pub bandwidth_limit: Option<u64>,
    /// Larger files are skipped with a reason, `None` = no limit (SharePoint's 250 GB applies).
    pub max_file_size: Option<u64>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            concurrency: 4,
            fragment_size: 10 * 1024 * 1024,
            debounce: Duration::from_secs(2),
            settle: Duration::from_secs(5),
            bandwidth_limit: None,
            max_file_size: None,
        }
    }
}

/// One folder -> library/folder pair.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub name: String,
    /// Absolute path of the local folder.
    pub source: PathBuf,
    /// `https://host/sites/Name` (http only for loopback hosts).
    pub site: SiteUrl,
    /// Document library name as shown in SharePoint, e.g. "Documents".
    pub library: String,
    /// Folder inside the library, `/`-separated, no leading or trailing `/`; "" = library root.
    pub folder: String,
    pub schedule: Option<Schedule>,
    pub watch: bool,
    /// gitignore-style patterns; empty = everything.
    pub include: Vec<String>,
    /// gitignore-style patterns.
    pub exclude: Vec<String>,
    pub delete: DeleteMode,
    pub follow_symlinks: bool,
    /// Defaults with this job's overrides applied.
    pub settings: Settings,
}

/// A parsed SharePoint site URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteUrl {
    /// "https" or "http" (loopback only).
    pub scheme: String,
    /// Host name, e.g. `contoso.sharepoint.com`, with `:port` when one was given.
    pub host: String,
    /// Server-relative path, e.g. `/sites/Finance` ("" for the root site).
    pub path: String,
}

impl std::fmt::Display for SiteUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.host, self.path)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeleteMode {
    /// Never delete remotely (backups).
    #[default]
    Keep,
    /// Delete remotely what was deleted locally, guarded against mass deletes.
    Mirror,
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line and column, when the problem has a place in the file.
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// The job's name (or `job[N]` when it has none), if the problem is inside a job.
    pub job: Option<String>,
    /// Dotted key, e.g. `defaults.fragment_size` or `job.schedule`.
    pub key: Option<String>,
    /// What is wrong and what would be accepted.
    pub message: String,
}

/// Every problem found in a config, reported together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);
