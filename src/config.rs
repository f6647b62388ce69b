//! Configuration: TOML in two phases.
//!
//! Phase one (`read_raw`) reads the file as typed: it walks the spanned TOML
//! document, refuses unknown keys and values of the wrong TOML type, and keeps
//! every value with its byte span. Phase two (`compile`) checks and compiles
//! it into the types the rest of the program uses (absolute paths, parsed cron,
//! parsed site URL, sizes and durations as numbers, cross-job rules). Every
//! problem found is collected and reported at once as [`ConfigErrors`], each
//! naming the file, line:column, the job and the key, and what would be
//! accepted. `sharepush check` runs only this.
//!
//! The keys each section accepts are the `*_KEYS` tables below; the parser is
//! driven by them and a test checks that `config/example.toml` documents each.
//!
//! Paths: `source`, `state_dir`, `client_secret_file`, `certificate` and
//! `private_key` must be absolute, except that a leading `${CONFIG_DIR}/`
//! expands to the directory holding the config file (for the bundled demo),
//! and that the three auth paths may be bare systemd credential names
//! (`LoadCredential=`), resolved against `$CREDENTIALS_DIRECTORY`. `..` is
//! resolved lexically. No other variable or `~` is expanded.
//!
//! This module reads no secret: it checks that secret files and private keys
//! exist and are not readable by group/others, and keeps their *paths* only.
//! It does not check that a job's source exists (a missing source is a run-time
//! job error; it is reported as a warning), nor that the site or library exist.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::Range;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::schedule::{Schedule, Zone};

/// Default location of the configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/sharepush/config.toml";
/// Default state directory (systemd's `StateDirectory=sharepush`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/sharepush";
/// Default token endpoint base (Microsoft Entra ID, global cloud).
pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";
/// Default Microsoft Graph base (global cloud).
pub const DEFAULT_GRAPH_URL: &str = "https://graph.microsoft.com/v1.0";
/// Default document library: the one every team site has.
pub const DEFAULT_LIBRARY: &str = "Documents";
/// Upload session fragments must be a multiple of this (graph-api.md section 3).
pub const FRAGMENT_UNIT: u64 = 320 * 1024;
/// Upload session requests must stay below this.
pub const FRAGMENT_MAX: u64 = 60 * 1024 * 1024;
/// The only variable expanded in paths: the directory of the config file, so a
/// config can sit next to the data it describes (the bundled demo).
pub const CONFIG_DIR_VAR: &str = "${CONFIG_DIR}";
/// `concurrency` limits.
pub const CONCURRENCY_MAX: usize = 64;
/// Upper bound of `debounce`: longer would make watching pointless.
pub const DEBOUNCE_MAX: Duration = Duration::from_secs(10 * 60);
/// Upper bound of `settle`.
pub const SETTLE_MAX: Duration = Duration::from_secs(60 * 60);
/// Shortest `reconcile_interval` (other than off): each one is at least
/// one delta request per library.
pub const RECONCILE_INTERVAL_MIN: Duration = Duration::from_secs(1);
/// Default `reconcile_interval`.
pub const RECONCILE_INTERVAL_DEFAULT: Duration = Duration::from_secs(15 * 60);
/// Smallest non-zero `bandwidth_limit`; anything lower is surely a missing unit.
pub const BANDWIDTH_MIN: u64 = 1024;

/// A checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from, for messages.
    pub path: PathBuf,
    /// Sign-in settings shared by every job (one tenant per daemon).
    pub auth: AuthSpec,
    /// Where the daemon keeps its state and how it logs.
    pub daemon: DaemonSpec,
    /// Settings every job inherits unless it overrides them.
    pub defaults: Settings,
    /// The jobs, in file order.
    pub jobs: Vec<JobSpec>,
    /// Things worth saying that do not stop the config from loading (e.g. a
    /// source that does not exist yet); `check` prints them.
    pub warnings: Vec<ConfigError>,
}

/// How sharepush signs in.
#[derive(Debug, Clone)]
pub struct AuthSpec {
    /// Tenant domain (`contoso.onmicrosoft.com`) or directory id.
    pub tenant: String,
    /// The app registration's application (client) id.
    pub client_id: String,
    /// Delegated or app-only, with the credential paths app-only needs.
    pub mode: AuthMode,
    /// Token endpoint base, e.g. `https://login.microsoftonline.com` or the emulator.
    pub authority: String,
    /// Graph base, e.g. `https://graph.microsoft.com/v1.0` or the emulator's `/v1.0`.
    pub graph_url: String,
}

/// Which OAuth flow the daemon uses, and where its credential lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMode {
    /// Delegated: `sharepush login` runs the device code flow once, then refresh tokens.
    DeviceCode,
    /// App-only with a client secret read from a 0600 file at use time.
    ClientSecret { secret_file: PathBuf },
    /// App-only with a certificate (PEM) and its private key (PEM, 0600).
    Certificate {
        certificate: PathBuf,
        private_key: PathBuf,
    },
}

/// Daemon-wide settings.
#[derive(Debug, Clone)]
pub struct DaemonSpec {
    /// SQLite database, token store and lock live here.
    pub state_dir: PathBuf,
    /// How log lines are written (journald reads either).
    pub log_format: LogFormat,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
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
    /// Larger files are skipped with a reason; `None`: SharePoint's limit
    /// of 250 GiB ([`crate::scan::SHAREPOINT_MAX_FILE_SIZE`]).
    pub max_file_size: Option<u64>,
    /// What to do with names SharePoint refuses (`: ? |`, trailing dots...).
    pub invalid_names: InvalidNames,
    /// How often the running daemon asks the job's library for remote
    /// changes between runs; `None` = never (runs still ask first).
    pub reconcile_interval: Option<Duration>,
    /// The time zone `schedule` is read in (default: the server's).
    pub timezone: Zone,
}

/// What the uploader does with a file or folder name SharePoint refuses
/// (graph-api.md section 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InvalidNames {
    /// Map refused characters to full-width look-alikes, reversibly, as
    /// rclone does (`a:b.txt` -> `a：b.txt`); reserved names are skipped.
    #[default]
    Encode,
    /// Leave such files out and report them.
    Skip,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            // Two requests per small file (session, fragment): at 20 ms a
            // request, 4 at once was 1.8x rclone, 8 is 3.4x (README).
            concurrency: 8,
            fragment_size: 10 * 1024 * 1024,
            debounce: Duration::from_secs(2),
            settle: Duration::from_secs(5),
            bandwidth_limit: None,
            max_file_size: None,
            invalid_names: InvalidNames::Encode,
            reconcile_interval: Some(RECONCILE_INTERVAL_DEFAULT),
            timezone: Zone::Local,
        }
    }
}

/// One folder -> library/folder pair.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// Unique, `[A-Za-z0-9._-]`: it appears in logs, state rows and unit names.
    pub name: String,
    /// Absolute path of the local folder.
    pub source: PathBuf,
    /// `https://host/sites/Name` (http only for loopback hosts).
    pub site: SiteUrl,
    /// Document library name as shown in SharePoint, e.g. "Documents".
    pub library: String,
    /// Folder inside the library, `/`-separated, no leading or trailing `/`; "" = library root.
    pub folder: String,
    /// Cron trigger, if any.
    pub schedule: Option<Schedule>,
    /// Filesystem-event trigger (defaults to on when there is no schedule).
    pub watch: bool,
    /// gitignore-style patterns; empty = everything.
    pub include: Vec<String>,
    /// gitignore-style patterns.
    pub exclude: Vec<String>,
    /// What a local delete does remotely.
    pub delete: DeleteMode,
    /// What a remote delete of a file we uploaded does.
    pub on_remote_delete: OnRemoteDelete,
    /// What a remote edit of a file we uploaded does.
    pub on_remote_change: OnRemoteChange,
    /// Follow symbolic links inside the source (off: they are skipped with a reason).
    pub follow_symlinks: bool,
    /// With `delete = "mirror"`: the most remote deletes one run may make.
    pub max_delete: MaxDelete,
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

impl SiteUrl {
    /// Parses a site URL as the config accepts it: https with a host, plain
    /// http only for loopback hosts (the emulator), no query or fragment, and
    /// no trailing `/` kept, so equal sites compare equal.
    pub fn parse(text: &str) -> Result<SiteUrl, String> {
        let (scheme, host, path) = parse_http_url(text)?;
        let lower = path.to_ascii_lowercase();
        if lower.contains("/_layouts") || lower.contains("/forms/") || lower.ends_with(".aspx") {
            return Err(format!(
                "{text:?} looks like a page or library URL, not a site; give the site \
                 (e.g. https://contoso.sharepoint.com/sites/Finance) and put the library \
                 in `library` and the path in `folder`"
            ));
        }
        Ok(SiteUrl { scheme, host, path })
    }
}

/// What a local delete does remotely.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeleteMode {
    /// Never delete remotely (backups).
    #[default]
    Keep,
    /// Delete remotely what was deleted locally, guarded against mass deletes.
    Mirror,
}

/// What happens when someone deletes, in SharePoint, a file we uploaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnRemoteDelete {
    /// Upload it again on the next run (a backup must not lose files).
    #[default]
    Restore,
    /// Accept the delete: the file goes up again only when it changes locally.
    Forget,
}

/// What happens when someone else edits, in SharePoint, a file we uploaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnRemoteChange {
    /// Upload ours over it; SharePoint keeps the other edit in version history.
    #[default]
    Overwrite,
    /// Leave the remote edit alone and record a conflict (`status` lists it).
    Skip,
    /// Upload ours beside it as `name (sharepush conflict YYYY-MM-DD).ext`.
    KeepBoth,
}

/// The mass-delete guard of `delete = "mirror"`: a run that would delete
/// more than this remotely deletes nothing and says why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MaxDelete {
    /// 100 files, or 10% of the job's files when that is more.
    #[default]
    Default,
    /// At most this many files (`max_delete = 500`).
    Files(u64),
    /// At most this share of the job's files (`max_delete = "5%"`).
    Percent(u8),
}

impl MaxDelete {
    /// True when `deletes` remote deletes in a job of `files` files stay
    /// within the limit.
    pub fn allows(self, deletes: u64, files: u64) -> bool {
        match self {
            MaxDelete::Default => deletes <= 100 || deletes * 10 <= files,
            MaxDelete::Files(n) => deletes <= n,
            MaxDelete::Percent(p) => deletes * 100 <= u64::from(p) * files,
        }
    }
}

impl std::fmt::Display for MaxDelete {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MaxDelete::Default => write!(f, "100 files or 10%, whichever is more"),
            MaxDelete::Files(n) => write!(f, "{n} files"),
            MaxDelete::Percent(p) => write!(f, "{p}% of the files"),
        }
    }
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The config file, as the user named it.
    pub file: PathBuf,
    /// 1-based line and column, when the problem has a place in the file.
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// The job's name (or `job[N]`, 1-based, when it has none), if the problem is inside a job.
    pub job: Option<String>,
    /// Dotted key, e.g. `defaults.fragment_size` or `job.schedule`.
    pub key: Option<String>,
    /// What is wrong and what would be accepted.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        f.write_str(": ")?;
        if let Some(job) = &self.job {
            if job.starts_with("job[") && job.ends_with(']') {
                write!(f, "{job}: ")?;
            } else {
                write!(f, "job {job:?}: ")?;
            }
        }
        if let Some(key) = &self.key {
            // Inside a job the job is already named: `schedule`, not `job.schedule`.
            let key = match (&self.job, key.strip_prefix("job.")) {
                (Some(_), Some(short)) => short,
                _ => key,
            };
            write!(f, "key `{key}`: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in a config, reported together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

/// What the process environment contributes to a config. Passed in rather
/// than read inside the checks so tests never touch process-global state.
#[derive(Debug, Clone, Default)]
pub struct ConfigEnv {
    /// systemd's `$CREDENTIALS_DIRECTORY` (set when the unit has `LoadCredential=`):
    /// relative auth paths are credential names resolved against it.
    pub credentials_directory: Option<PathBuf>,
    /// Only looking (`check`, `status` from a shell): a credential name
    /// cannot be resolved outside the service, so it is a warning, not an
    /// error, and the file is not checked.
    pub inspect_only: bool,
}

impl ConfigEnv {
    /// The environment of this process.
    pub fn from_process() -> ConfigEnv {
        ConfigEnv {
            credentials_directory: std::env::var_os("CREDENTIALS_DIRECTORY")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            inspect_only: false,
        }
    }
}

impl Config {
    /// Reads and checks the config file at `path`, with the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        Config::load_with_env(path, &ConfigEnv::from_process())
    }

    /// [`Config::load`] for commands that only look (`check`, `status`): run
    /// from a shell, outside the systemd unit, a credential name (`LoadCredential=`)
    /// cannot be resolved, which is then a warning instead of an error.
    pub fn load_to_inspect(path: &Path) -> Result<Config, ConfigErrors> {
        let env = ConfigEnv {
            inspect_only: true,
            ..ConfigEnv::from_process()
        };
        Config::load_with_env(path, &env)
    }

    fn load_with_env(path: &Path, env: &ConfigEnv) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            let message = match e.kind() {
                std::io::ErrorKind::NotFound => format!(
                    "config file not found; pass --config or set SHAREPUSH_CONFIG \
                     (default {DEFAULT_CONFIG_PATH})"
                ),
                std::io::ErrorKind::InvalidData => {
                    "the config file is not valid UTF-8 text".to_string()
                }
                _ => format!("cannot read the config file: {e}"),
            };
            ConfigErrors::from(ConfigError {
                file: path.to_path_buf(),
                line: None,
                column: None,
                job: None,
                key: None,
                message,
            })
        })?;
        Config::from_str_with_env(&text, path, env)
    }

    /// Checks config text that came from `path` (used for messages and for
    /// `${CONFIG_DIR}`), with the process environment.
    pub fn from_str(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
        Config::from_str_with_env(text, path, &ConfigEnv::from_process())
    }

    /// [`Config::from_str`] with an explicit environment, for tests and for
    /// callers that already captured it.
    pub fn from_str_with_env(
        text: &str,
        path: &Path,
        env: &ConfigEnv,
    ) -> Result<Config, ConfigErrors> {
        let mut ctx = Ctx {
            file: path,
            text,
            errors: Vec::new(),
            warnings: Vec::new(),
        };
        let (doc, syntax) = DeTable::parse_recoverable(text);
        if !syntax.is_empty() {
            // The document is only partly understood: checking it further would
            // report problems that are really the syntax error's echo.
            for e in &syntax {
                ctx.error(
                    e.span(),
                    None,
                    None,
                    format!("TOML syntax: {}", e.message()),
                );
            }
            return Err(ctx.finish());
        }
        let raw = read_raw(&mut ctx, doc.get_ref());
        let config_dir = config_dir_of(path);
        let config = compile(&mut ctx, &raw, env, &config_dir, path);
        if ctx.errors.is_empty() {
            let mut config = config;
            config.warnings = ctx.sorted_warnings();
            Ok(config)
        } else {
            Err(ctx.finish())
        }
    }

    /// Applies `--state-dir` / `SHAREPUSH_STATE_DIR`, which win over
    /// `[daemon] state_dir`. A relative override is taken from the current
    /// directory (it came from a shell, not from the file). Refused, as
    /// `[daemon] state_dir` is, when it lies inside a job's source.
    pub fn with_state_dir_override(mut self, dir: Option<PathBuf>) -> Result<Config, ConfigErrors> {
        let Some(dir) = dir else {
            return Ok(self);
        };
        let abs = std::path::absolute(&dir).unwrap_or(dir);
        self.daemon.state_dir = normalize_lexically(&abs);
        let inside: Vec<ConfigError> = self
            .jobs
            .iter()
            .filter(|job| self.daemon.state_dir.starts_with(&job.source))
            .map(|job| ConfigError {
                file: self.path.clone(),
                line: None,
                column: None,
                job: Some(job.name.clone()),
                key: Some("--state-dir".into()),
                message: format!(
                    "the state directory {} (from --state-dir or SHAREPUSH_STATE_DIR) is \
                     inside this job's source {}: the job would back up its own database; \
                     choose a state directory outside every source",
                    self.daemon.state_dir.display(),
                    job.source.display()
                ),
            })
            .collect();
        if inside.is_empty() {
            Ok(self)
        } else {
            Err(ConfigErrors(inside))
        }
    }

    /// The job called `name`, for CLI job selection.
    pub fn job(&self, name: &str) -> Option<&JobSpec> {
        self.jobs.iter().find(|j| j.name == name)
    }
}

// ---------------------------------------------------------------------------
// Key tables: what each section accepts. The parser is driven by these.

/// The TOML type a key takes in phase one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Str,
    Bool,
    Int,
    /// A size string ("10MiB") or an integer number of bytes.
    Size,
    /// An array of strings.
    StrList,
}

/// One accepted key: its name, TOML type and what values are accepted.
#[derive(Debug)]
struct KeySpec {
    key: &'static str,
    kind: Kind,
    accepted: &'static str,
}

const fn spec(key: &'static str, kind: Kind, accepted: &'static str) -> KeySpec {
    KeySpec {
        key,
        kind,
        accepted,
    }
}

/// Top-level sections.
const SECTIONS: &[&str] = &["auth", "defaults", "daemon", "job"];

const URL_ACCEPTED: &str =
    "an https URL (plain http only for loopback hosts: 127.0.0.0/8, ::1, localhost)";
const ABSOLUTE_ACCEPTED: &str = "an absolute path, e.g. \"/srv/reports\" (or \
     \"${CONFIG_DIR}/...\" for a path beside the config file)";
const AUTH_PATH_ACCEPTED: &str = "an absolute path (or ${CONFIG_DIR}/...), or a systemd \
     credential name when run with LoadCredential=";

const AUTH_KEYS: &[KeySpec] = &[
    spec(
        "tenant",
        Kind::Str,
        "the tenant's domain (contoso.onmicrosoft.com) or directory id",
    ),
    spec(
        "client_id",
        Kind::Str,
        "the app registration's application (client) id, a GUID",
    ),
    spec(
        "mode",
        Kind::Str,
        "\"device_code\" (default) or \"client_credentials\"",
    ),
    spec("client_secret_file", Kind::Str, AUTH_PATH_ACCEPTED),
    spec("certificate", Kind::Str, AUTH_PATH_ACCEPTED),
    spec("private_key", Kind::Str, AUTH_PATH_ACCEPTED),
    spec("authority", Kind::Str, URL_ACCEPTED),
    spec("graph_url", Kind::Str, URL_ACCEPTED),
];

const SETTINGS_KEYS: &[KeySpec] = &[
    spec("concurrency", Kind::Int, "an integer from 1 to 64"),
    spec(
        "fragment_size",
        Kind::Size,
        "a size that is a multiple of 320KiB and below 60MiB, e.g. \"10MiB\"",
    ),
    spec(
        "debounce",
        Kind::Str,
        "a duration from 0s to 10m, e.g. \"2s\", \"500ms\", \"1m30s\"",
    ),
    spec(
        "settle",
        Kind::Str,
        "a duration from 0s to 1h, e.g. \"5s\", \"1m\"",
    ),
    spec(
        "bandwidth_limit",
        Kind::Size,
        "bytes per second as a size of at least 1KiB, e.g. \"20MiB\" or \"20MiB/s\"; \
         0 = unlimited",
    ),
    spec(
        "max_file_size",
        Kind::Size,
        "a size above 0, e.g. \"50GiB\"; leave the key out for SharePoint's own limit \
         (250 GiB per file)",
    ),
    spec(
        "invalid_names",
        Kind::Str,
        "\"encode\" (default: map characters SharePoint refuses to full-width look-alikes) \
         or \"skip\" (leave such files out and report them)",
    ),
    spec(
        "reconcile_interval",
        Kind::Str,
        "a duration of at least 1s, e.g. \"15m\" (default), \"1h\", \"30s\"; \
         \"0\" or \"off\" turns the daemon's periodic remote check off",
    ),
    spec("timezone", Kind::Str, crate::schedule::ZONE_ACCEPTED),
];

const DAEMON_KEYS: &[KeySpec] = &[
    spec("state_dir", Kind::Str, ABSOLUTE_ACCEPTED),
    spec("log_format", Kind::Str, "\"text\" (default) or \"json\""),
];

const JOB_KEYS: &[KeySpec] = &[
    spec(
        "name",
        Kind::Str,
        "1-64 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit, \
         unique among jobs",
    ),
    spec("source", Kind::Str, ABSOLUTE_ACCEPTED),
    spec(
        "site",
        Kind::Str,
        "the site URL, e.g. https://contoso.sharepoint.com/sites/Finance \
         (plain http only for loopback hosts)",
    ),
    spec(
        "library",
        Kind::Str,
        "a document library name as shown in SharePoint (default \"Documents\")",
    ),
    spec(
        "folder",
        Kind::Str,
        "a folder path inside the library like \"Backups/reports\" (default \"\" = the \
         library root)",
    ),
    spec("schedule", Kind::Str, crate::schedule::ACCEPTED),
    spec("watch", Kind::Bool, "true or false"),
    spec(
        "include",
        Kind::StrList,
        "an array of gitignore-style patterns, e.g. [\"*.pdf\"]",
    ),
    spec(
        "exclude",
        Kind::StrList,
        "an array of gitignore-style patterns, e.g. [\"*.tmp\", \"~$*\"]",
    ),
    spec("delete", Kind::Str, "\"keep\" (default) or \"mirror\""),
    spec(
        "on_remote_delete",
        Kind::Str,
        "\"restore\" (default) or \"forget\"",
    ),
    spec(
        "on_remote_change",
        Kind::Str,
        "\"overwrite\" (default), \"skip\" or \"keep-both\"",
    ),
    spec(
        "max_delete",
        Kind::Size,
        "a number of files (e.g. 500) or a percentage of the job's files (e.g. \"5%\"); \
         default: 100 files or 10%, whichever is more",
    ),
    spec(
        "follow_symlinks",
        Kind::Bool,
        "true or false (default false)",
    ),
];

fn find_spec(tables: &[&'static [KeySpec]], key: &str) -> Option<&'static KeySpec> {
    tables.iter().flat_map(|t| t.iter()).find(|s| s.key == key)
}

fn accepted_of(key: &str) -> &'static str {
    find_spec(&[AUTH_KEYS, SETTINGS_KEYS, DAEMON_KEYS, JOB_KEYS], key)
        .map(|s| s.accepted)
        .unwrap_or("")
}

// ---------------------------------------------------------------------------
// Error collection.

type Span = Range<usize>;

/// Collects errors and warnings with their places while both phases run.
struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigError>,
}

impl Ctx<'_> {
    fn make(
        &self,
        span: Option<Span>,
        job: Option<&str>,
        key: Option<&str>,
        message: String,
    ) -> ConfigError {
        let (line, column) = match span {
            Some(span) => {
                let (l, c) = line_col(self.text, span.start);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            job: job.map(str::to_string),
            key: key.map(str::to_string),
            message,
        }
    }

    fn error(&mut self, span: Option<Span>, job: Option<&str>, key: Option<&str>, msg: String) {
        let e = self.make(span, job, key, msg);
        self.errors.push(e);
    }

    /// A bad value: the message plus what the key accepts.
    fn bad(&mut self, span: Option<Span>, job: Option<&str>, key: &str, msg: String) {
        let short = key.rsplit('.').next().unwrap_or(key);
        let accepted = accepted_of(short);
        let msg = if accepted.is_empty() {
            msg
        } else {
            format!("{msg}; accepted: {accepted}")
        };
        self.error(span, job, Some(key), msg);
    }

    fn warn(&mut self, span: Option<Span>, job: Option<&str>, key: Option<&str>, msg: String) {
        let w = self.make(span, job, key, msg);
        self.warnings.push(w);
    }

    fn finish(self) -> ConfigErrors {
        ConfigErrors(sort_by_place(self.errors))
    }

    fn sorted_warnings(&mut self) -> Vec<ConfigError> {
        sort_by_place(std::mem::take(&mut self.warnings))
    }
}

/// File order; problems without a place go last. Stable, so problems on one
/// line keep the order in which they were found.
fn sort_by_place(mut v: Vec<ConfigError>) -> Vec<ConfigError> {
    v.sort_by_key(|e| (e.line.unwrap_or(usize::MAX), e.column.unwrap_or(0)));
    v
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    (line, text[line_start..offset].chars().count() + 1)
}

// ---------------------------------------------------------------------------
// Phase one: the file as typed.

/// A value whose TOML type matched its key's [`Kind`].
#[derive(Debug, Clone)]
enum RawValue {
    Str(String),
    Int(i64),
    Bool(bool),
    List(Vec<Spanned<String>>),
}

/// One table's accepted keys with their values and spans.
#[derive(Debug, Default)]
struct RawTable {
    /// Span of the `[header]` (or inline table), for "missing key" errors.
    header: Option<Span>,
    /// For a job: its name, or `job[N]`.
    label: Option<String>,
    values: BTreeMap<&'static str, Spanned<RawValue>>,
}

impl RawTable {
    fn span(&self, key: &str) -> Option<Span> {
        self.values.get(key).map(|v| v.span())
    }

    fn str(&self, key: &str) -> Option<(&str, Span)> {
        match self.values.get(key).map(|v| (v.get_ref(), v.span())) {
            Some((RawValue::Str(s), span)) => Some((s.as_str(), span)),
            _ => None,
        }
    }

    fn bool(&self, key: &str) -> Option<(bool, Span)> {
        match self.values.get(key).map(|v| (v.get_ref(), v.span())) {
            Some((RawValue::Bool(b), span)) => Some((*b, span)),
            _ => None,
        }
    }

    fn list(&self, key: &str) -> Option<&[Spanned<String>]> {
        match self.values.get(key).map(|v| v.get_ref()) {
            Some(RawValue::List(l)) => Some(l),
            _ => None,
        }
    }
}

/// The whole file as typed.
#[derive(Debug, Default)]
struct RawConfig {
    auth: Option<RawTable>,
    defaults: RawTable,
    daemon: RawTable,
    jobs: Vec<RawTable>,
}

/// Phase one: walk the document, keep known keys with the right TOML type,
/// and report every unknown key and wrong type.
fn read_raw(ctx: &mut Ctx<'_>, doc: &DeTable<'_>) -> RawConfig {
    let mut raw = RawConfig::default();
    for (key, value) in doc.iter() {
        match key.get_ref().as_ref() {
            "auth" => raw.auth = read_table(ctx, value, "auth", None, &[AUTH_KEYS]),
            "defaults" => {
                if let Some(t) = read_table(ctx, value, "defaults", None, &[SETTINGS_KEYS]) {
                    raw.defaults = t;
                }
            }
            "daemon" => {
                if let Some(t) = read_table(ctx, value, "daemon", None, &[DAEMON_KEYS]) {
                    raw.daemon = t;
                }
            }
            "job" => match value.get_ref() {
                DeValue::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        let label = match item.get_ref() {
                            DeValue::Table(t) => match t.get("name").map(|v| v.get_ref()) {
                                Some(DeValue::String(s)) if !s.is_empty() => s.to_string(),
                                _ => format!("job[{}]", i + 1),
                            },
                            _ => format!("job[{}]", i + 1),
                        };
                        if let Some(mut t) =
                            read_table(ctx, item, "job", Some(&label), &[JOB_KEYS, SETTINGS_KEYS])
                        {
                            t.label = Some(label);
                            raw.jobs.push(t);
                        }
                    }
                }
                DeValue::Table(_) => ctx.error(
                    Some(value.span()),
                    None,
                    Some("job"),
                    "jobs are an array of tables: write [[job]] (double brackets) for each job"
                        .into(),
                ),
                other => ctx.error(
                    Some(value.span()),
                    None,
                    Some("job"),
                    format!(
                        "expected [[job]] tables, found {}; write one [[job]] table per job",
                        other.type_str()
                    ),
                ),
            },
            other => {
                let hint = suggest(other, SECTIONS.iter().copied())
                    .map(|s| format!("did you mean `{s}`? "))
                    .unwrap_or_default();
                ctx.error(
                    Some(key.span()),
                    None,
                    Some(other),
                    format!(
                        "unknown section or key; {hint}accepted at the top level: \
                         [auth], [defaults], [daemon], [[job]]"
                    ),
                );
            }
        }
    }
    raw
}

/// Reads one table against its key specs.
fn read_table(
    ctx: &mut Ctx<'_>,
    value: &Spanned<DeValue<'_>>,
    section: &str,
    job: Option<&str>,
    specs: &[&'static [KeySpec]],
) -> Option<RawTable> {
    let DeValue::Table(table) = value.get_ref() else {
        let shape = if section == "job" {
            "a table ([[job]])".to_string()
        } else {
            format!("a table ([{section}])")
        };
        ctx.error(
            Some(value.span()),
            job,
            Some(section),
            format!("expected {shape}, found {}", value.get_ref().type_str()),
        );
        return None;
    };
    let mut raw = RawTable {
        header: Some(value.span()),
        ..RawTable::default()
    };
    for (key, v) in table.iter() {
        let name = key.get_ref().as_ref();
        let dotted = format!("{section}.{name}");
        let Some(spec) = find_spec(specs, name) else {
            let msg = unknown_key_message(section, name, specs);
            ctx.error(Some(key.span()), job, Some(&dotted), msg);
            continue;
        };
        let found = v.get_ref().type_str();
        let value = match (spec.kind, v.get_ref()) {
            (Kind::Str, DeValue::String(s)) | (Kind::Size, DeValue::String(s)) => {
                Some(RawValue::Str(s.to_string()))
            }
            (Kind::Bool, DeValue::Boolean(b)) => Some(RawValue::Bool(*b)),
            (Kind::Int, DeValue::Integer(i)) | (Kind::Size, DeValue::Integer(i)) => {
                match i64::from_str_radix(i.as_str(), i.radix()) {
                    Ok(n) => Some(RawValue::Int(n)),
                    Err(_) => {
                        ctx.bad(Some(v.span()), job, &dotted, "integer out of range".into());
                        continue;
                    }
                }
            }
            (Kind::StrList, DeValue::Array(items)) => {
                let mut out = Vec::new();
                for item in items.iter() {
                    match item.get_ref() {
                        DeValue::String(s) => out.push(Spanned::new(item.span(), s.to_string())),
                        other => ctx.bad(
                            Some(item.span()),
                            job,
                            &dotted,
                            format!("expected a string in the array, found {}", other.type_str()),
                        ),
                    }
                }
                Some(RawValue::List(out))
            }
            _ => None,
        };
        match value {
            Some(value) => {
                raw.values.insert(spec.key, Spanned::new(v.span(), value));
            }
            None => {
                let expected = match spec.kind {
                    Kind::Str => "a string",
                    Kind::Bool => "a boolean",
                    Kind::Int => "an integer",
                    Kind::Size => "a size string or an integer number of bytes",
                    Kind::StrList => "an array of strings",
                };
                ctx.bad(
                    Some(v.span()),
                    job,
                    &dotted,
                    format!("expected {expected}, found {found}"),
                );
            }
        }
    }
    Some(raw)
}

fn unknown_key_message(section: &str, name: &str, specs: &[&'static [KeySpec]]) -> String {
    let where_ = if section == "job" {
        "[[job]]".to_string()
    } else {
        format!("[{section}]")
    };
    if section == "auth" && name == "client_secret" {
        return "a client secret is never written in the config (it may be world-readable): \
                put it in a file readable only by sharepush (chmod 600) and set \
                `client_secret_file`, or pass it with systemd LoadCredential="
            .into();
    }
    let keys: Vec<&str> = specs.iter().flat_map(|t| t.iter()).map(|s| s.key).collect();
    if let Some(s) = suggest(name, keys.iter().copied()) {
        return format!(
            "unknown key in {where_}; did you mean `{s}`? accepted: {}",
            keys.join(", ")
        );
    }
    let elsewhere = [
        ("[auth]", AUTH_KEYS),
        ("[defaults] or a [[job]]", SETTINGS_KEYS),
        ("[daemon]", DAEMON_KEYS),
        ("[[job]]", JOB_KEYS),
    ]
    .into_iter()
    .find(|(_, t)| t.iter().any(|s| s.key == name))
    .map(|(w, _)| format!("`{name}` belongs in {w}; "))
    .unwrap_or_default();
    format!(
        "unknown key in {where_}; {elsewhere}accepted: {}",
        keys.join(", ")
    )
}

/// The known name closest to a misspelt one, if it is close.
fn suggest<'k>(name: &str, known: impl Iterator<Item = &'k str>) -> Option<&'k str> {
    known
        .map(|k| (edit_distance(name, k), k))
        .filter(|(d, k)| *d <= 2 && *d < k.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

// ---------------------------------------------------------------------------
// Phase two: check and compile.

/// Phase two: every value checked and converted, plus the cross-job rules.
/// Returns a config even when errors were recorded; the caller discards it then.
fn compile(
    ctx: &mut Ctx<'_>,
    raw: &RawConfig,
    env: &ConfigEnv,
    config_dir: &Path,
    path: &Path,
) -> Config {
    let auth = compile_auth(ctx, raw.auth.as_ref(), env, config_dir);
    let daemon = compile_daemon(ctx, &raw.daemon, config_dir);
    let defaults = compile_settings(ctx, &raw.defaults, &Settings::default(), "defaults", None);
    let mut jobs: Vec<(JobSpec, &RawTable)> = Vec::new();
    for t in &raw.jobs {
        if let Some(job) = compile_job(ctx, t, &defaults, config_dir) {
            jobs.push((job, t));
        }
    }
    if raw.jobs.is_empty() {
        ctx.error(
            None,
            None,
            None,
            "no [[job]] defined; add at least one [[job]] table (see config/example.toml)".into(),
        );
    }
    check_unique_names(ctx, &jobs);
    check_targets(ctx, &jobs);
    for (job, t) in &jobs {
        if daemon.state_dir.starts_with(&job.source) {
            ctx.error(
                t.span("source").or(t.header.clone()),
                Some(&job.name),
                Some("job.source"),
                format!(
                    "state_dir {} is inside this source: the job would back up its own \
                     database; move state_dir elsewhere",
                    daemon.state_dir.display()
                ),
            );
        }
    }
    Config {
        path: path.to_path_buf(),
        auth,
        daemon,
        defaults,
        jobs: jobs.into_iter().map(|(j, _)| j).collect(),
        warnings: Vec::new(),
    }
}

fn compile_auth(
    ctx: &mut Ctx<'_>,
    raw: Option<&RawTable>,
    env: &ConfigEnv,
    config_dir: &Path,
) -> AuthSpec {
    let mut auth = AuthSpec {
        tenant: String::new(),
        client_id: String::new(),
        mode: AuthMode::DeviceCode,
        authority: DEFAULT_AUTHORITY.to_string(),
        graph_url: DEFAULT_GRAPH_URL.to_string(),
    };
    let Some(t) = raw else {
        ctx.error(
            None,
            None,
            Some("auth"),
            "missing [auth] section; it needs at least `tenant` and `client_id`".into(),
        );
        return auth;
    };
    let header = t.header.clone();

    match t.str("tenant") {
        None => ctx.bad(
            header.clone(),
            None,
            "auth.tenant",
            "required key is missing".into(),
        ),
        Some((s, span)) => {
            let ok = !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
            if ok {
                auth.tenant = s.to_string();
            } else {
                ctx.bad(
                    Some(span),
                    None,
                    "auth.tenant",
                    format!("invalid tenant {s:?}"),
                );
            }
        }
    }
    match t.str("client_id") {
        None => ctx.bad(
            header.clone(),
            None,
            "auth.client_id",
            "required key is missing".into(),
        ),
        Some((s, _)) if is_guid(s) => auth.client_id = s.to_ascii_lowercase(),
        Some((s, span)) => ctx.bad(
            Some(span),
            None,
            "auth.client_id",
            format!("{s:?} is not a GUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)"),
        ),
    }
    for (key, target) in [
        ("authority", &mut auth.authority),
        ("graph_url", &mut auth.graph_url),
    ] {
        if let Some((s, span)) = t.str(key) {
            match parse_http_url(s) {
                Ok((scheme, host, path)) => *target = format!("{scheme}://{host}{path}"),
                Err(e) => ctx.bad(Some(span), None, &format!("auth.{key}"), e),
            }
        }
    }

    let path_of = |ctx: &mut Ctx<'_>, key: &str, secret: bool| -> Option<PathBuf> {
        let (s, span) = t.str(key)?;
        let dotted = format!("auth.{key}");
        if env.inspect_only && env.credentials_directory.is_none() && !s.contains('/') {
            ctx.warn(
                Some(span),
                None,
                Some(&dotted),
                format!(
                    "{s:?} names a systemd credential (LoadCredential=): not checked here, \
                     where CREDENTIALS_DIRECTORY is not set; the service checks it when it \
                     starts"
                ),
            );
            return Some(PathBuf::from(s));
        }
        let path = match resolve_auth_path(s, config_dir, env) {
            Ok(p) => p,
            Err(e) => {
                ctx.bad(Some(span), None, &dotted, e);
                return None;
            }
        };
        if let Err(e) = check_credential_file(&path, secret) {
            ctx.error(Some(span), None, Some(&dotted), e);
            return None;
        }
        Some(path)
    };
    let secret_file = path_of(ctx, "client_secret_file", true);
    let certificate = path_of(ctx, "certificate", false);
    let private_key = path_of(ctx, "private_key", true);
    let app_only_keys = ["client_secret_file", "certificate", "private_key"];

    let mode = t.str("mode");
    match mode.as_ref().map(|(s, _)| *s).unwrap_or("device_code") {
        "device_code" => {
            for key in app_only_keys {
                if let Some(span) = t.span(key) {
                    ctx.error(
                        Some(span),
                        None,
                        Some(&format!("auth.{key}")),
                        "only used with mode = \"client_credentials\"; remove it or set the mode"
                            .into(),
                    );
                }
            }
        }
        "client_credentials" => {
            let mode_span = mode.clone().map(|(_, s)| s).or(header.clone());
            if matches!(
                auth.tenant.to_ascii_lowercase().as_str(),
                "common" | "organizations" | "consumers"
            ) {
                ctx.error(
                    t.span("tenant"),
                    None,
                    Some("auth.tenant"),
                    format!(
                        "app-only sign-in needs the tenant itself, not {:?}; give the \
                         tenant's domain or directory id",
                        auth.tenant
                    ),
                );
            }
            let has = |k: &str| t.span(k).is_some();
            match (
                has("client_secret_file"),
                has("certificate"),
                has("private_key"),
            ) {
                (true, false, false) => {
                    if let Some(p) = secret_file {
                        auth.mode = AuthMode::ClientSecret { secret_file: p };
                    }
                }
                (false, true, true) => {
                    if let (Some(c), Some(k)) = (certificate, private_key) {
                        auth.mode = AuthMode::Certificate {
                            certificate: c,
                            private_key: k,
                        };
                    }
                }
                (false, false, false) => ctx.error(
                    mode_span,
                    None,
                    Some("auth.mode"),
                    "mode = \"client_credentials\" needs `client_secret_file`, or \
                     `certificate` and `private_key`"
                        .into(),
                ),
                (true, _, _) => ctx.error(
                    t.span("client_secret_file"),
                    None,
                    Some("auth.client_secret_file"),
                    "give either `client_secret_file` or `certificate` + `private_key`, \
                     not both"
                        .into(),
                ),
                (false, true, false) => ctx.error(
                    t.span("certificate"),
                    None,
                    Some("auth.private_key"),
                    "`certificate` needs `private_key` (the PEM key of that certificate)".into(),
                ),
                (false, false, true) => ctx.error(
                    t.span("private_key"),
                    None,
                    Some("auth.certificate"),
                    "`private_key` needs `certificate` (the PEM certificate it belongs to)".into(),
                ),
            }
        }
        other => {
            let span = mode.clone().map(|(_, s)| s);
            ctx.bad(span, None, "auth.mode", format!("unknown mode {other:?}"));
        }
    }
    auth
}

fn compile_daemon(ctx: &mut Ctx<'_>, t: &RawTable, config_dir: &Path) -> DaemonSpec {
    let mut daemon = DaemonSpec {
        state_dir: PathBuf::from(DEFAULT_STATE_DIR),
        log_format: LogFormat::Text,
    };
    if let Some((s, span)) = t.str("state_dir") {
        match expand_path(s, config_dir).and_then(require_absolute) {
            Ok(p) => daemon.state_dir = p,
            Err(e) => ctx.bad(Some(span), None, "daemon.state_dir", e),
        }
    }
    if let Some((s, span)) = t.str("log_format") {
        match s {
            "text" => daemon.log_format = LogFormat::Text,
            "json" => daemon.log_format = LogFormat::Json,
            _ => ctx.bad(
                Some(span),
                None,
                "daemon.log_format",
                format!("unknown log format {s:?}"),
            ),
        }
    }
    daemon
}

/// `base` with the table's settings keys applied; bad values keep the base.
fn compile_settings(
    ctx: &mut Ctx<'_>,
    t: &RawTable,
    base: &Settings,
    section: &str,
    job: Option<&str>,
) -> Settings {
    let mut s = base.clone();
    let key = |k: &str| format!("{section}.{k}");
    let size_of = |ctx: &mut Ctx<'_>, k: &str| -> Option<(u64, Span)> {
        let v = t.values.get(k)?;
        let r = match v.get_ref() {
            RawValue::Int(n) if *n >= 0 => Ok(*n as u64),
            RawValue::Int(n) => Err(format!("{n} is negative")),
            RawValue::Str(text) => {
                let text = if k == "bandwidth_limit" {
                    text.trim().strip_suffix("/s").unwrap_or(text)
                } else {
                    text
                };
                parse_size(text).map_err(|e| format!("invalid size {text:?}: {e}"))
            }
            _ => return None,
        };
        match r {
            Ok(n) => Some((n, v.span())),
            Err(e) => {
                ctx.bad(Some(v.span()), job, &key(k), e);
                None
            }
        }
    };

    if let Some(v) = t.values.get("concurrency")
        && let RawValue::Int(n) = v.get_ref()
    {
        if (1..=CONCURRENCY_MAX as i64).contains(n) {
            s.concurrency = *n as usize;
        } else {
            ctx.bad(
                Some(v.span()),
                job,
                &key("concurrency"),
                format!("{n} is out of range"),
            );
        }
    }
    if let Some((n, span)) = size_of(ctx, "fragment_size") {
        match check_fragment_size(n) {
            Ok(()) => s.fragment_size = n,
            Err(e) => ctx.bad(Some(span), job, &key("fragment_size"), e),
        }
    }
    for (k, max) in [("debounce", DEBOUNCE_MAX), ("settle", SETTLE_MAX)] {
        if let Some((text, span)) = t.str(k) {
            match parse_duration(text) {
                Ok(d) if d <= max => {
                    if k == "debounce" {
                        s.debounce = d;
                    } else {
                        s.settle = d;
                    }
                }
                Ok(_) => ctx.bad(
                    Some(span),
                    job,
                    &key(k),
                    format!("{text:?} is longer than {}", format_duration(max)),
                ),
                Err(e) => ctx.bad(
                    Some(span),
                    job,
                    &key(k),
                    format!("invalid duration {text:?}: {e}"),
                ),
            }
        }
    }
    if let Some((n, span)) = size_of(ctx, "bandwidth_limit") {
        if n == 0 {
            s.bandwidth_limit = None;
        } else if n < BANDWIDTH_MIN {
            ctx.bad(
                Some(span),
                job,
                &key("bandwidth_limit"),
                format!("{n} bytes per second is too low (a missing unit?)"),
            );
        } else {
            s.bandwidth_limit = Some(n);
        }
    }
    if let Some((text, span)) = t.str("invalid_names") {
        match text {
            "encode" => s.invalid_names = InvalidNames::Encode,
            "skip" => s.invalid_names = InvalidNames::Skip,
            _ => ctx.bad(
                Some(span),
                job,
                &key("invalid_names"),
                format!("unknown value {text:?}"),
            ),
        }
    }
    if let Some((text, span)) = t.str("reconcile_interval") {
        match text.trim() {
            "off" | "0" => s.reconcile_interval = None,
            _ => match parse_duration(text) {
                Ok(d) if d >= RECONCILE_INTERVAL_MIN => s.reconcile_interval = Some(d),
                Ok(_) => ctx.bad(
                    Some(span),
                    job,
                    &key("reconcile_interval"),
                    format!(
                        "{text:?} is shorter than {}",
                        format_duration(RECONCILE_INTERVAL_MIN)
                    ),
                ),
                Err(e) => ctx.bad(
                    Some(span),
                    job,
                    &key("reconcile_interval"),
                    format!("invalid duration {text:?}: {e}"),
                ),
            },
        }
    }
    if let Some((text, span)) = t.str("timezone") {
        match Zone::parse(text) {
            Ok(zone) => s.timezone = zone,
            Err(e) => ctx.bad(Some(span), job, &key("timezone"), e),
        }
    }
    if let Some((n, span)) = size_of(ctx, "max_file_size") {
        if n == 0 {
            ctx.bad(
                Some(span),
                job,
                &key("max_file_size"),
                "0 would skip every file".into(),
            );
        } else {
            s.max_file_size = Some(n);
        }
    }
    s
}

fn compile_job(
    ctx: &mut Ctx<'_>,
    t: &RawTable,
    defaults: &Settings,
    config_dir: &Path,
) -> Option<JobSpec> {
    let label = t.label.clone().unwrap_or_else(|| "job".into());
    let job = Some(label.as_str());
    let header = t.header.clone();
    let errors_before = ctx.errors.len();
    let missing = |ctx: &mut Ctx<'_>, k: &str| {
        ctx.bad(
            header.clone(),
            job,
            &format!("job.{k}"),
            "required key is missing".into(),
        );
    };

    let name = match t.str("name") {
        None => {
            missing(ctx, "name");
            String::new()
        }
        Some((s, span)) => {
            if let Err(e) = check_job_name(s) {
                ctx.bad(Some(span), job, "job.name", e);
            }
            s.to_string()
        }
    };
    let source = match t.str("source") {
        None => {
            missing(ctx, "source");
            PathBuf::new()
        }
        Some((s, span)) => match expand_path(s, config_dir).and_then(require_absolute) {
            Ok(p) => {
                match std::fs::metadata(&p) {
                    Err(_) => ctx.warn(
                        Some(span),
                        job,
                        Some("job.source"),
                        format!(
                            "{} does not exist (yet); the job reports an error each run \
                             until it does",
                            p.display()
                        ),
                    ),
                    Ok(m) if !m.is_dir() => ctx.warn(
                        Some(span),
                        job,
                        Some("job.source"),
                        format!("{} is not a directory", p.display()),
                    ),
                    Ok(_) => {}
                }
                p
            }
            Err(e) => {
                ctx.bad(Some(span), job, "job.source", e);
                PathBuf::new()
            }
        },
    };
    let site = match t.str("site") {
        None => {
            missing(ctx, "site");
            None
        }
        Some((s, span)) => match SiteUrl::parse(s) {
            Ok(u) => Some(u),
            Err(e) => {
                ctx.bad(Some(span), job, "job.site", e);
                None
            }
        },
    };
    let library = match t.str("library") {
        None => DEFAULT_LIBRARY.to_string(),
        Some((s, span)) => {
            if s.trim().is_empty() || s.trim() != s || s.contains('/') || s.contains('\\') {
                ctx.bad(
                    Some(span),
                    job,
                    "job.library",
                    format!(
                        "invalid library {s:?}: it must be a non-empty name without `/` or \
                         surrounding spaces (subfolders go in `folder`)"
                    ),
                );
            }
            s.to_string()
        }
    };
    let folder = match t.str("folder") {
        None => String::new(),
        Some((s, span)) => normalize_folder(s).unwrap_or_else(|e| {
            ctx.bad(Some(span), job, "job.folder", e);
            String::new()
        }),
    };
    let schedule = match t.str("schedule") {
        None => None,
        Some((s, span)) => match Schedule::parse(s) {
            Ok(s) => Some(s),
            Err(e) => {
                // The schedule error already says what is accepted.
                ctx.error(Some(span), job, Some("job.schedule"), e.to_string());
                None
            }
        },
    };
    let watch = match t.bool("watch") {
        Some((w, span)) => {
            if !w && t.span("schedule").is_none() {
                ctx.error(
                    Some(span),
                    job,
                    Some("job.watch"),
                    "this job has no trigger: set a `schedule`, or `watch = true`".into(),
                );
            }
            w
        }
        // Documented default: watch when there is no schedule to run the job.
        None => t.span("schedule").is_none(),
    };
    let mut patterns = |list: &'static str| -> Vec<String> {
        let mut out = Vec::new();
        for p in t.list(list).unwrap_or_default() {
            let dotted = format!("job.{list}");
            let one = [p.get_ref().clone()];
            let checked = match list {
                "include" => crate::filter::Filter::new(&one, &[]),
                _ => crate::filter::Filter::new(&[], &one),
            };
            if p.get_ref().trim().is_empty() {
                ctx.bad(Some(p.span()), job, &dotted, "empty pattern".into());
            } else if let Err(e) = checked {
                ctx.bad(Some(p.span()), job, &dotted, e.to_string());
            } else {
                out.push(p.get_ref().clone());
            }
        }
        out
    };
    let include = patterns("include");
    let exclude = patterns("exclude");
    let delete = match t.str("delete") {
        None | Some(("keep", _)) => DeleteMode::Keep,
        Some(("mirror", _)) => DeleteMode::Mirror,
        Some((s, span)) => {
            ctx.bad(
                Some(span),
                job,
                "job.delete",
                format!("unknown delete mode {s:?}"),
            );
            DeleteMode::Keep
        }
    };
    let on_remote_delete = match t.str("on_remote_delete") {
        None | Some(("restore", _)) => OnRemoteDelete::Restore,
        Some(("forget", _)) => OnRemoteDelete::Forget,
        Some((s, span)) => {
            ctx.bad(
                Some(span),
                job,
                "job.on_remote_delete",
                format!("unknown on_remote_delete {s:?}"),
            );
            OnRemoteDelete::Restore
        }
    };
    let on_remote_change = match t.str("on_remote_change") {
        None | Some(("overwrite", _)) => OnRemoteChange::Overwrite,
        Some(("skip", _)) => OnRemoteChange::Skip,
        Some(("keep-both", _)) => OnRemoteChange::KeepBoth,
        Some((s, span)) => {
            ctx.bad(
                Some(span),
                job,
                "job.on_remote_change",
                format!("unknown on_remote_change {s:?}"),
            );
            OnRemoteChange::Overwrite
        }
    };
    let follow_symlinks = t.bool("follow_symlinks").map(|(b, _)| b).unwrap_or(false);
    let max_delete = match t.values.get("max_delete").map(|v| (v.get_ref(), v.span())) {
        None => MaxDelete::Default,
        Some((RawValue::Int(n), _)) if *n >= 0 => MaxDelete::Files(*n as u64),
        Some((RawValue::Str(s), span)) => {
            let parsed = match s.trim().strip_suffix('%') {
                Some(p) => p
                    .trim()
                    .parse::<u8>()
                    .ok()
                    .filter(|p| *p <= 100)
                    .map(MaxDelete::Percent),
                None => s.trim().parse::<u64>().ok().map(MaxDelete::Files),
            };
            parsed.unwrap_or_else(|| {
                ctx.bad(
                    Some(span),
                    job,
                    "job.max_delete",
                    format!("{s:?} is not a number of files or a percentage from 0% to 100%"),
                );
                MaxDelete::Default
            })
        }
        Some((other, span)) => {
            let shown = match other {
                RawValue::Int(n) => n.to_string(),
                RawValue::Bool(b) => b.to_string(),
                RawValue::Str(s) => format!("{s:?}"),
                RawValue::List(_) => "a list".to_string(),
            };
            ctx.bad(
                Some(span),
                job,
                "job.max_delete",
                format!("{shown} is not a number of files or a percentage"),
            );
            MaxDelete::Default
        }
    };
    let settings = compile_settings(ctx, t, defaults, "job", job);

    if ctx.errors.len() > errors_before {
        return None;
    }
    Some(JobSpec {
        name,
        source,
        site: site?,
        library,
        folder,
        schedule,
        watch,
        include,
        exclude,
        delete,
        on_remote_delete,
        on_remote_change,
        follow_symlinks,
        max_delete,
        settings,
    })
}

fn check_job_name(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("the name is empty".into());
    }
    if s.chars().count() > 64 {
        return Err(format!("{s:?} is longer than 64 characters"));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{s:?} contains {c:?}; names appear in logs, state and unit names"
        ));
    }
    if !s.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(format!("{s:?} must start with a letter or digit"));
    }
    Ok(())
}

fn check_unique_names(ctx: &mut Ctx<'_>, jobs: &[(JobSpec, &RawTable)]) {
    for (i, (job, t)) in jobs.iter().enumerate() {
        if let Some((first, ft)) = jobs[..i]
            .iter()
            .find(|(j, _)| j.name.eq_ignore_ascii_case(&job.name))
        {
            let line = ft
                .span("name")
                .map(|s| format!(" (line {})", line_col(ctx.text, s.start).0))
                .unwrap_or_default();
            ctx.bad(
                t.span("name"),
                Some(&job.name),
                "job.name",
                format!(
                    "the name {:?} is already used by another job{line} (names are compared \
                     ignoring case)",
                    first.name
                ),
            );
        }
    }
}

/// Two jobs must not push to the same library folder, nor one into the other's.
fn check_targets(ctx: &mut Ctx<'_>, jobs: &[(JobSpec, &RawTable)]) {
    let target = |j: &JobSpec| {
        let folder = j.folder.to_lowercase();
        let segs: Vec<String> = folder
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        (
            j.site.to_string().to_lowercase(),
            j.library.to_lowercase(),
            segs,
        )
    };
    for (i, (job, t)) in jobs.iter().enumerate() {
        let (site, lib, segs) = target(job);
        for (other, ot) in &jobs[..i] {
            let (osite, olib, osegs) = target(other);
            if site != osite || lib != olib {
                continue;
            }
            let line = ot
                .header
                .clone()
                .map(|s| format!(" (line {})", line_col(ctx.text, s.start).0))
                .unwrap_or_default();
            let shown = |f: &str| {
                if f.is_empty() {
                    "the library root".to_string()
                } else {
                    format!("folder {f:?}")
                }
            };
            let msg = if segs == osegs {
                format!(
                    "pushes to the same place as job {:?}{line}: {} / {} / {}; give each \
                     job its own folder",
                    other.name,
                    job.site,
                    job.library,
                    shown(&job.folder)
                )
            } else if segs.starts_with(&osegs) {
                format!(
                    "{} is inside job {:?}'s {}{line} in the same library; their files \
                     would mix",
                    shown(&job.folder),
                    other.name,
                    shown(&other.folder)
                )
            } else if osegs.starts_with(&segs) {
                format!(
                    "{} contains job {:?}'s {}{line} in the same library; their files \
                     would mix",
                    shown(&job.folder),
                    other.name,
                    shown(&other.folder)
                )
            } else {
                continue;
            };
            let span = t
                .span("folder")
                .or_else(|| t.span("site"))
                .or(t.header.clone());
            ctx.error(span, Some(&job.name), Some("job.folder"), msg);
        }
    }
}

// ---------------------------------------------------------------------------
// Values: sizes, durations, paths, URLs.

/// Parses a human-readable size: a whole number of bytes (`"1048576"`), or a
/// number with a unit: `B`, `KiB`, `MiB`, `GiB`, `TiB` (1024-based) or `KB`,
/// `MB`, `GB`, `TB` (1000-based); decimals are allowed when they come to whole
/// bytes (`"1.5GiB"`). Units are case-insensitive. The error is a short reason.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = (&t[..split], t[split..].trim());
    if num.is_empty() {
        return Err("expected a number, optionally followed by a unit".into());
    }
    let mult: u128 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} (units: B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
            ));
        }
    };
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() || (num.contains('.') && frac.is_empty()) || frac.contains('.') {
        return Err("malformed number".into());
    }
    if frac.len() > 12 {
        return Err("too many decimals".into());
    }
    let too_big = || "too large".to_string();
    let int: u128 = int.parse().map_err(|_| too_big())?;
    let mut total = int.checked_mul(mult).ok_or_else(too_big)?;
    if !frac.is_empty() {
        let den = 10u128.pow(frac.len() as u32);
        let scaled = frac.parse::<u128>().map_err(|_| too_big())? * mult;
        if !scaled.is_multiple_of(den) {
            return Err("that is not a whole number of bytes".into());
        }
        total += scaled / den;
    }
    u64::try_from(total).map_err(|_| too_big())
}

/// Formats bytes with the largest binary unit that divides them exactly
/// (`10MiB`, `1280KiB`, `1000B`), the form the config accepts back.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    if bytes > 0 {
        for (name, size) in UNITS {
            if bytes.is_multiple_of(size) {
                return format!("{}{name}", bytes / size);
            }
        }
    }
    format!("{bytes}B")
}

/// Parses a duration: one or more `<integer><unit>` parts with units `ms`,
/// `s`, `m`, `h` (`"2s"`, `"500ms"`, `"1m30s"`), or `"0"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    if t.is_empty() {
        return Err("empty".into());
    }
    let mut rest = t;
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("expected a number at {rest:?}"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| "number too large".to_string())?;
        rest = &rest[digits..];
        let letters = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let part = match &rest[..letters] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "" if rest.starts_with(['.', ',']) => {
                return Err(format!(
                    "{t:?} has a fraction, and durations take whole numbers only: use a \
                     smaller unit (\"1500ms\" for 1.5s, \"90s\" for 1.5m)"
                ));
            }
            "" => return Err(format!("{n} has no unit (units: ms, s, m, h)")),
            u => return Err(format!("unknown unit {u:?} (units: ms, s, m, h)")),
        };
        total = total.saturating_add(part);
        rest = &rest[letters..];
    }
    Ok(total)
}

/// Formats a duration in the form [`parse_duration`] accepts (`1m30s`, `500ms`).
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let mut secs = d.as_secs();
    let mut out = String::new();
    for (unit, size) in [("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

/// `Ok` when `n` is a valid upload fragment size, else a message naming the
/// nearest valid values.
fn check_fragment_size(n: u64) -> Result<(), String> {
    let largest = (FRAGMENT_MAX - 1) / FRAGMENT_UNIT * FRAGMENT_UNIT;
    if n >= FRAGMENT_MAX {
        return Err(format!(
            "{} is not below 60MiB; largest valid: {}",
            format_size(n),
            format_size(largest)
        ));
    }
    if n.is_multiple_of(FRAGMENT_UNIT) && n > 0 {
        return Ok(());
    }
    let lower = n / FRAGMENT_UNIT * FRAGMENT_UNIT;
    let upper = lower + FRAGMENT_UNIT;
    let nearest = if lower == 0 {
        format_size(upper)
    } else if upper > largest {
        format_size(lower)
    } else {
        format!("{} or {}", format_size(lower), format_size(upper))
    };
    Err(format!(
        "{} is not a multiple of 320KiB; nearest: {nearest}",
        format_size(n)
    ))
}

/// Normalises a library folder: no leading/trailing `/`, no empty, `.` or `..`
/// segments, no name SharePoint refuses (graph-api.md section 8): the job's
/// folder is created as written (never encoded), so such a name would fail
/// every run instead of being reported once by `check`.
fn normalize_folder(s: &str) -> Result<String, String> {
    let trimmed = s.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    if s.contains('\\') {
        return Err(format!(
            "invalid folder {s:?}: separate folders with `/`, not `\\`"
        ));
    }
    for (i, seg) in trimmed.split('/').enumerate() {
        if seg.is_empty() {
            return Err(format!("invalid folder {s:?}: empty segment (`//`)"));
        }
        if seg == "." || seg == ".." {
            return Err(format!(
                "invalid folder {s:?}: `{seg}` segments are not allowed"
            ));
        }
        if seg.trim() != seg {
            return Err(format!(
                "invalid folder {s:?}: segment {seg:?} starts or ends with a space"
            ));
        }
        if let Some(c) = seg
            .chars()
            .find(|c| c.is_control() || matches!(c, '"' | '*' | ':' | '<' | '>' | '?' | '|'))
        {
            return Err(format!(
                "invalid folder {s:?}: SharePoint does not allow {c:?} in names"
            ));
        }
        if let Err(problem) = crate::remote::names::check(seg, i == 0, true) {
            return Err(format!("invalid folder {s:?}: {seg:?}: {problem}"));
        }
    }
    Ok(trimmed.to_string())
}

/// The directory `${CONFIG_DIR}` stands for: the config file's directory, absolute.
fn config_dir_of(path: &Path) -> PathBuf {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    normalize_lexically(&std::path::absolute(&parent).unwrap_or(parent))
}

/// Expands a leading `${CONFIG_DIR}` and resolves `.`/`..` lexically.
fn expand_path(text: &str, config_dir: &Path) -> Result<PathBuf, String> {
    if text.is_empty() {
        return Err("the path is empty".into());
    }
    let path = if let Some(rest) = text.strip_prefix(CONFIG_DIR_VAR) {
        if rest.is_empty() {
            config_dir.to_path_buf()
        } else if let Some(rest) = rest.strip_prefix('/') {
            config_dir.join(rest)
        } else {
            return Err(format!("{CONFIG_DIR_VAR} must be followed by `/`"));
        }
    } else if text.contains("${") {
        return Err(format!(
            "{text:?}: only a leading {CONFIG_DIR_VAR}/ is expanded, no other variables"
        ));
    } else if text.starts_with('~') {
        return Err(format!(
            "{text:?}: `~` is not expanded; write the absolute path"
        ));
    } else {
        PathBuf::from(text)
    };
    Ok(normalize_lexically(&path))
}

fn require_absolute(p: PathBuf) -> Result<PathBuf, String> {
    if p.is_absolute() {
        Ok(p)
    } else {
        Err(format!("{:?} is relative", p.display().to_string()))
    }
}

/// An auth path: absolute, `${CONFIG_DIR}/...`, or a systemd credential name.
fn resolve_auth_path(text: &str, config_dir: &Path, env: &ConfigEnv) -> Result<PathBuf, String> {
    let p = expand_path(text, config_dir)?;
    if p.is_absolute() {
        return Ok(p);
    }
    match &env.credentials_directory {
        Some(dir) if !text.contains('/') => Ok(dir.join(text)),
        Some(_) => Err(format!(
            "{text:?} is relative; a systemd credential name has no `/`, other paths must \
             be absolute"
        )),
        None => Err(format!(
            "{text:?} is relative: it would name a systemd credential (LoadCredential=), \
             but CREDENTIALS_DIRECTORY is not set; use an absolute path, or run under the \
             service's environment"
        )),
    }
}

/// A credential file must exist; a secret one (client secret, private key)
/// must not be readable by group or others.
fn check_credential_file(path: &Path, secret: bool) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("{} does not exist", path.display()),
        _ => format!("cannot inspect {}: {e}", path.display()),
    })?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if secret && mode & 0o077 != 0 {
        return Err(format!(
            "{} is readable by group or others (mode {mode:04o}); it holds a secret: \
             run `chmod 600 {}`",
            path.display(),
            path.display()
        ));
    }
    Ok(())
}

/// Splits an http(s) URL into (scheme, host[:port], path without trailing `/`).
fn parse_http_url(text: &str) -> Result<(String, String, String), String> {
    let t = text.trim();
    if t.chars().any(char::is_whitespace) {
        return Err(format!("{text:?} contains spaces (write them as %20)"));
    }
    let Some((scheme, rest)) = t.split_once("://") else {
        return Err(format!("{text:?} is not a URL (expected https://host/...)"));
    };
    let scheme = scheme.to_ascii_lowercase();
    if rest.contains('?') || rest.contains('#') {
        return Err(format!(
            "{text:?} must not have a query (?) or fragment (#)"
        ));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.contains('@') {
        return Err(format!("{text:?} must not contain a user name"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let Some((inner, after)) = v6.split_once(']') else {
            return Err(format!("{text:?}: unclosed `[` in the host"));
        };
        if inner.parse::<Ipv6Addr>().is_err() {
            return Err(format!("{text:?}: invalid IPv6 address"));
        }
        (format!("[{}]", inner.to_ascii_lowercase()), after)
    } else {
        match authority.rfind(':') {
            Some(i) => (authority[..i].to_ascii_lowercase(), &authority[i..]),
            None => (authority.to_ascii_lowercase(), ""),
        }
    };
    if host.is_empty() {
        return Err(format!("{text:?} has no host"));
    }
    if !host.starts_with('[')
        && !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return Err(format!("{text:?}: invalid host {host:?}"));
    }
    let port = match port {
        "" => String::new(),
        p => {
            let digits = &p[1..];
            match digits.parse::<u16>() {
                Ok(n) if n > 0 => format!(":{n}"),
                _ => return Err(format!("{text:?}: invalid port {digits:?}")),
            }
        }
    };
    match scheme.as_str() {
        "https" => {}
        "http" if is_loopback(&host) => {}
        "http" => {
            return Err(format!(
                "{text:?} uses plain http; that is only allowed for loopback hosts \
                 (127.0.0.0/8, ::1, localhost), e.g. the emulator: use https"
            ));
        }
        _ => return Err(format!("{text:?}: unsupported scheme {scheme:?}")),
    }
    let path = path.trim_end_matches('/').to_string();
    Ok((scheme, format!("{host}{port}"), path))
}

fn is_loopback(host: &str) -> bool {
    if host == "localhost" {
        return true;
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<Ipv6Addr>().is_ok_and(|a| a.is_loopback());
    }
    host.parse::<Ipv4Addr>().is_ok_and(|a| a.is_loopback())
}

fn is_guid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Removes `.` and resolves `..` without touching the file system.
fn normalize_lexically(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => match out.components().next_back() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                // `/..` is `/`.
                Some(Component::RootDir) | Some(Component::Prefix(_)) => {}
                _ => out.push(".."),
            },
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const AUTH: &str = "[auth]\n\
        tenant = \"contoso.onmicrosoft.com\"\n\
        client_id = \"00000000-0000-0000-0000-000000000000\"\n";

    fn job(name: &str, folder: &str) -> String {
        format!(
            "\n[[job]]\nname = \"{name}\"\nsource = \"/srv/{name}\"\n\
             site = \"https://contoso.sharepoint.com/sites/A\"\nfolder = \"{folder}\"\n"
        )
    }

    fn parse_env(text: &str, env: &ConfigEnv) -> Result<Config, ConfigErrors> {
        Config::from_str_with_env(text, Path::new("config.toml"), env)
    }

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        parse_env(text, &ConfigEnv::default())
    }

    #[track_caller]
    fn ok(text: &str) -> Config {
        parse(text).unwrap_or_else(|e| panic!("expected OK, got:\n{e}"))
    }

    #[track_caller]
    fn errors(text: &str) -> Vec<ConfigError> {
        match parse(text) {
            Ok(_) => panic!("expected errors for:\n{text}"),
            Err(e) => e.0,
        }
    }

    #[track_caller]
    fn one_error(text: &str) -> ConfigError {
        let e = errors(text);
        assert_eq!(
            e.len(),
            1,
            "expected one error, got:\n{}",
            ConfigErrors(e.clone())
        );
        e.into_iter().next().unwrap()
    }

    /// 1-based line of the first line containing `needle`.
    fn line_of(text: &str, needle: &str) -> usize {
        text.lines().position(|l| l.contains(needle)).unwrap() + 1
    }

    /// 1-based line of the last line containing `needle`.
    fn last_line_of(text: &str, needle: &str) -> usize {
        let lines: Vec<&str> = text.lines().collect();
        lines.iter().rposition(|l| l.contains(needle)).unwrap() + 1
    }

    /// A minimal config with one job and extra lines inside that job.
    fn with_job_lines(extra: &str) -> String {
        format!("{AUTH}{}{extra}\n", job("a", "A"))
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = ok(&with_job_lines(""));
        assert_eq!(c.auth.mode, AuthMode::DeviceCode);
        assert_eq!(c.auth.authority, DEFAULT_AUTHORITY);
        assert_eq!(c.auth.graph_url, DEFAULT_GRAPH_URL);
        assert_eq!(c.daemon.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(c.daemon.log_format, LogFormat::Text);
        assert_eq!(c.defaults, Settings::default());
        let j = &c.jobs[0];
        assert_eq!(j.name, "a");
        assert_eq!(j.library, "Documents");
        assert_eq!(j.folder, "A");
        assert_eq!(j.schedule, None);
        assert!(j.watch, "no schedule: watch defaults to on");
        assert_eq!(j.delete, DeleteMode::Keep);
        assert!(!j.follow_symlinks);
        assert!(j.include.is_empty() && j.exclude.is_empty());
        assert_eq!(j.settings, Settings::default());
    }

    #[test]
    fn display_names_file_line_column_job_key_and_what_is_accepted() {
        let text = "[auth]\n\
            tenant = \"contoso.onmicrosoft.com\"\n\
            client_id = \"00000000-0000-0000-0000-000000000000\"\n\
            \n\
            [[job]]\n\
            name = \"finance\"\n\
            source = \"/srv/finance\"\n\
            site = \"https://contoso.sharepoint.com/sites/Finance\"\n\
            library = \"Documents\"\n\
            folder = \"reports\"\n\
            watch = true\n\
            schedule = \"61 * * * *\"\n";
        let e = one_error(text);
        assert_eq!(
            e.to_string(),
            "config.toml:12:12: job \"finance\": key `schedule`: invalid cron expression \
             \"61 * * * *\": minute must be 0-59; accepted: 5-field crontab (min hour dom \
             month dow) or @hourly, @daily, @weekly, @monthly"
        );
        assert_eq!(e.key.as_deref(), Some("job.schedule"));
        assert_eq!(e.job.as_deref(), Some("finance"));
        // Outside a job the dotted key is shown; several errors print one per line.
        let two = ConfigErrors(vec![
            ConfigError {
                file: "c.toml".into(),
                line: Some(3),
                column: Some(1),
                job: None,
                key: Some("defaults.concurrency".into()),
                message: "m1".into(),
            },
            ConfigError {
                file: "c.toml".into(),
                line: None,
                column: None,
                job: Some("job[2]".into()),
                key: None,
                message: "m2".into(),
            },
        ]);
        assert_eq!(
            two.to_string(),
            "c.toml:3:1: key `defaults.concurrency`: m1\nc.toml: job[2]: m2"
        );
        let _: &dyn std::error::Error = &two;
        let _: &dyn std::error::Error = &two.0[0];
    }

    #[test]
    fn unknown_keys_are_all_reported_with_place_and_accepted_keys() {
        let text = format!(
            "[auth]\ntenant = \"t.onmicrosoft.com\"\nclient_id = \"00000000-0000-0000-0000-000000000000\"\n\
             tennant = \"x\"\n\
             [defaults]\nconcurency = 2\n\
             [daemon]\nfragment_size = \"10MiB\"\n\
             [jobs]\n\
             {}schedul = \"@daily\"\nwhatever = 1\n",
            job("a", "A")
        );
        let e = errors(&text);
        let shown = ConfigErrors(e.clone()).to_string();
        assert_eq!(e.len(), 6, "{shown}");
        let find = |key: &str| {
            e.iter()
                .find(|x| x.key.as_deref() == Some(key))
                .unwrap_or_else(|| panic!("no error for {key}:\n{shown}"))
        };
        let t = find("auth.tennant");
        assert_eq!(t.line, Some(line_of(&text, "tennant")));
        assert_eq!(t.column, Some(1));
        assert!(
            t.message.contains("did you mean `tenant`?"),
            "{}",
            t.message
        );
        assert!(
            t.message.contains("accepted: tenant, client_id, mode"),
            "{}",
            t.message
        );
        let c = find("defaults.concurency");
        assert!(
            c.message.contains("did you mean `concurrency`?"),
            "{}",
            c.message
        );
        let f = find("daemon.fragment_size");
        assert!(
            f.message.contains("belongs in [defaults] or a [[job]]"),
            "{}",
            f.message
        );
        assert!(
            f.message.contains("accepted: state_dir, log_format"),
            "{}",
            f.message
        );
        let j = find("jobs");
        assert!(j.message.contains("did you mean `job`?"), "{}", j.message);
        let s = find("job.schedul");
        assert_eq!(s.job.as_deref(), Some("a"));
        assert_eq!(s.line, Some(line_of(&text, "schedul ")));
        assert!(
            s.message.contains("did you mean `schedule`?"),
            "{}",
            s.message
        );
        let w = find("job.whatever");
        assert!(
            w.message.contains("accepted: name, source, site"),
            "{}",
            w.message
        );
        assert!(
            w.message.contains("fragment_size"),
            "job accepts overrides: {}",
            w.message
        );
    }

    #[test]
    fn wrong_types_say_what_was_expected() {
        let text = with_job_lines(
            "concurrency = \"4\"\nwatch = \"yes\"\nexclude = \"*.tmp\"\ninclude = [\"*.pdf\", 1]\n\
             fragment_size = 1.5\nschedule = 5\n",
        );
        let e = errors(&text);
        let shown = ConfigErrors(e.clone()).to_string();
        assert_eq!(e.len(), 6, "{shown}");
        for (key, expected, found) in [
            ("concurrency", "an integer", "string"),
            ("watch", "a boolean", "string"),
            ("exclude", "an array of strings", "string"),
            (
                "fragment_size",
                "a size string or an integer number of bytes",
                "float",
            ),
            ("schedule", "a string", "integer"),
        ] {
            let x = e
                .iter()
                .find(|x| x.key.as_deref() == Some(&format!("job.{key}")))
                .unwrap();
            assert_eq!(x.line, Some(line_of(&text, &format!("{key} ="))), "{key}");
            assert!(
                x.message
                    .starts_with(&format!("expected {expected}, found {found}; accepted: ")),
                "{key}: {}",
                x.message
            );
        }
        let inc = e
            .iter()
            .find(|x| x.key.as_deref() == Some("job.include"))
            .unwrap();
        assert!(
            inc.message
                .contains("expected a string in the array, found integer")
        );
        // The good element is still read: one error, not two.
        assert_eq!(
            e.iter()
                .filter(|x| x.key.as_deref() == Some("job.include"))
                .count(),
            1
        );
    }

    #[test]
    fn toml_syntax_errors_report_line_and_column() {
        let text = "[auth]\ntenant = \"unterminated\nclient_id = 1\nclient_id = 2\n";
        let e = errors(text);
        assert!(e.len() >= 2, "{}", ConfigErrors(e.clone()));
        assert!(
            e[0].message.starts_with("TOML syntax: "),
            "{}",
            e[0].message
        );
        assert_eq!(e[0].line, Some(2));
        assert!(e[0].column.is_some());
        let dup = e
            .iter()
            .find(|x| x.message.contains("duplicate key"))
            .unwrap();
        assert_eq!(dup.line, Some(4));
        assert_eq!(dup.column, Some(1));
    }

    #[test]
    fn job_must_be_an_array_of_tables() {
        let text = format!("{AUTH}[job]\nname = \"a\"\n");
        let e = errors(&text);
        assert!(
            e.iter().any(|x| x.message.contains("write [[job]] (double brackets)")
                && x.line == Some(4)),
            "{}",
            ConfigErrors(e.clone())
        );
    }

    #[test]
    fn missing_sections_and_keys_are_named() {
        let e = errors("");
        let shown = ConfigErrors(e.clone()).to_string();
        assert!(shown.contains("missing [auth] section"), "{shown}");
        assert!(shown.contains("no [[job]] defined"), "{shown}");

        let text = "[auth]\nmode = \"device_code\"\n\n[[job]]\nwatch = true\n";
        let e = errors(text);
        let shown = ConfigErrors(e.clone()).to_string();
        for needle in [
            "config.toml:1:1: key `auth.tenant`: required key is missing",
            "config.toml:1:1: key `auth.client_id`: required key is missing",
            "config.toml:4:1: job[1]: key `name`: required key is missing",
            "config.toml:4:1: job[1]: key `source`: required key is missing",
            "config.toml:4:1: job[1]: key `site`: required key is missing",
        ] {
            assert!(shown.contains(needle), "missing {needle:?} in\n{shown}");
        }
    }

    #[test]
    fn schedules_are_crontab_or_shorthands() {
        let c = ok(&with_job_lines("schedule = \"@daily\""));
        let j = &c.jobs[0];
        assert_eq!(j.schedule.as_ref().unwrap().six_field, "0 0 0 * * *");
        assert!(!j.watch, "with a schedule, watch defaults to off");

        let text = with_job_lines("schedule = \"0 */5 * * * *\"");
        let e = one_error(&text);
        assert_eq!(e.line, Some(line_of(&text, "schedule")));
        assert!(e.message.contains("use 5 fields"), "{}", e.message);

        let e = one_error(&with_job_lines("schedule = \"@sometimes\""));
        assert!(e.message.contains("@hourly, @daily, @weekly, @monthly"));
    }

    #[test]
    fn a_job_needs_a_trigger() {
        let text = with_job_lines("watch = false");
        let e = one_error(&text);
        assert_eq!(e.key.as_deref(), Some("job.watch"));
        assert!(e.message.contains("no trigger"), "{}", e.message);
        let c = ok(&with_job_lines("watch = true\nschedule = \"@hourly\""));
        assert!(c.jobs[0].watch && c.jobs[0].schedule.is_some());
        let c = ok(&with_job_lines("watch = false\nschedule = \"@hourly\""));
        assert!(!c.jobs[0].watch);
    }

    #[test]
    fn job_names_are_unique_and_restricted() {
        let text = format!("{AUTH}{}{}", job("Reports", "A"), job("reports", "B"));
        let e = one_error(&text);
        assert_eq!(e.job.as_deref(), Some("reports"));
        assert_eq!(e.line, Some(last_line_of(&text, "name =")));
        assert!(
            e.message.contains("already used by another job (line 6)"),
            "{}",
            e.message
        );

        for (name, why) in [
            ("my job", "contains ' '"),
            ("-x", "must start with a letter or digit"),
            ("", "the name is empty"),
            ("ünï", "contains 'ü'"),
        ] {
            let e = one_error(&format!("{AUTH}{}", job(name, "A")));
            assert_eq!(e.key.as_deref(), Some("job.name"));
            assert!(e.message.contains(why), "{name:?}: {}", e.message);
            assert!(e.message.contains("A-Z a-z 0-9 . _ -"), "{}", e.message);
        }
        let long = "x".repeat(65);
        let e = one_error(&format!("{AUTH}{}", job(&long, "A")));
        assert!(e.message.contains("longer than 64"));
    }

    #[test]
    fn sources_must_be_absolute_but_need_not_exist() {
        let text = format!(
            "{AUTH}\n[[job]]\nname = \"a\"\nsource = \"data/reports\"\n\
             site = \"https://contoso.sharepoint.com/sites/A\"\n"
        );
        let e = one_error(&text);
        assert_eq!(e.key.as_deref(), Some("job.source"));
        assert_eq!(e.line, Some(line_of(&text, "source")));
        assert!(
            e.message.contains("\"data/reports\" is relative"),
            "{}",
            e.message
        );

        for (src, why) in [
            ("~/reports", "`~` is not expanded"),
            ("$HOME/reports", "is relative"),
            (
                "${HOME}/reports",
                "only a leading ${CONFIG_DIR}/ is expanded",
            ),
            ("${CONFIG_DIR}x", "must be followed by `/`"),
            ("", "the path is empty"),
        ] {
            let t = format!(
                "{AUTH}[[job]]\nname = \"a\"\nsource = \"{src}\"\n\
                 site = \"https://contoso.sharepoint.com/sites/A\"\n"
            );
            let e = one_error(&t);
            assert!(e.message.contains(why), "{src:?}: {}", e.message);
        }

        // A missing source is only a warning: the job reports it when it runs.
        let c = ok(&format!("{AUTH}{}", job("does-not-exist-anywhere", "A")));
        assert_eq!(c.warnings.len(), 1);
        assert!(c.warnings[0].message.contains("does not exist"));
        assert_eq!(c.warnings[0].key.as_deref(), Some("job.source"));
    }

    #[test]
    fn config_dir_expands_to_the_config_files_directory() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("conf/data")).unwrap();
        let text = format!(
            "{AUTH}[daemon]\nstate_dir = \"${{CONFIG_DIR}}/../state\"\n\
             [[job]]\nname = \"a\"\nsource = \"${{CONFIG_DIR}}/data/\"\n\
             site = \"https://contoso.sharepoint.com/sites/A\"\n"
        );
        let path = dir.path().join("conf/config.toml");
        let c = Config::from_str_with_env(&text, &path, &ConfigEnv::default()).unwrap();
        assert_eq!(c.jobs[0].source, dir.path().join("conf/data"));
        assert_eq!(c.daemon.state_dir, dir.path().join("state"));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);

        // A relative config path is made absolute from the current directory.
        let c = Config::from_str_with_env(&text, Path::new("x/config.toml"), &ConfigEnv::default())
            .unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(c.jobs[0].source, cwd.join("x/data"));
        assert_eq!(c.daemon.state_dir, cwd.join("state"));
    }

    #[test]
    fn state_dir_must_be_absolute_and_can_be_overridden() {
        let text = format!("{AUTH}[daemon]\nstate_dir = \"state\"\n{}", job("a", "A"));
        let e = one_error(&text);
        assert_eq!(e.key.as_deref(), Some("daemon.state_dir"));
        assert_eq!(e.line, Some(line_of(&text, "state_dir")));

        let text = format!(
            "{AUTH}[daemon]\nstate_dir = \"/var/lib/x\"\n{}",
            job("a", "A")
        );
        let c = ok(&text);
        assert_eq!(c.daemon.state_dir, PathBuf::from("/var/lib/x"));
        let c = c
            .with_state_dir_override(Some("/tmp/override/".into()))
            .unwrap();
        assert_eq!(c.daemon.state_dir, PathBuf::from("/tmp/override"));
        let c = c.with_state_dir_override(None).unwrap();
        assert_eq!(c.daemon.state_dir, PathBuf::from("/tmp/override"));
        let c = c.with_state_dir_override(Some("rel".into())).unwrap();
        assert_eq!(
            c.daemon.state_dir,
            std::env::current_dir().unwrap().join("rel")
        );
    }

    #[test]
    fn a_state_dir_override_inside_a_source_is_refused_naming_the_flag_and_the_job() {
        let c = ok(&format!("{AUTH}{}{}", job("a", "A"), job("b", "B")));
        let errors = c
            .with_state_dir_override(Some("/srv/b/../a/sub/./state".into()))
            .unwrap_err();
        assert_eq!(errors.0.len(), 1, "{errors}");
        let text = errors.to_string();
        assert!(
            text.contains("job \"a\": key `--state-dir`: the state directory /srv/a/sub/state"),
            "{text}"
        );
        assert!(text.contains("outside every source"), "{text}");
    }

    #[test]
    fn state_dir_inside_a_source_is_refused() {
        let text = format!(
            "{AUTH}[daemon]\nstate_dir = \"/srv/a/.state\"\n{}",
            job("a", "A")
        );
        let e = one_error(&text);
        assert_eq!(e.key.as_deref(), Some("job.source"));
        assert!(
            e.message.contains("back up its own database"),
            "{}",
            e.message
        );
    }

    #[test]
    fn two_jobs_must_not_share_or_nest_a_library_folder() {
        // Same place, spelled differently (case, slashes).
        let text = format!(
            "{AUTH}{}{}",
            job("a", "Backups/Reports"),
            job("b", "/backups/reports/")
        );
        let e = one_error(&text);
        assert_eq!(e.job.as_deref(), Some("b"));
        assert_eq!(e.line, Some(last_line_of(&text, "folder")));
        assert!(
            e.message.contains("same place as job \"a\" (line 5)"),
            "{}",
            e.message
        );

        // One inside the other, either order.
        let e = one_error(&format!(
            "{AUTH}{}{}",
            job("a", "Backups"),
            job("b", "Backups/x")
        ));
        assert!(
            e.message
                .contains("is inside job \"a\"'s folder \"Backups\""),
            "{}",
            e.message
        );
        let e = one_error(&format!("{AUTH}{}{}", job("a", "Backups/x"), job("b", "")));
        assert!(
            e.message
                .contains("the library root contains job \"a\"'s folder \"Backups/x\""),
            "{}",
            e.message
        );

        // Siblings with a common prefix, other libraries and other sites are fine.
        ok(&format!(
            "{AUTH}{}{}",
            job("a", "Backups/a"),
            job("b", "Backups/ab")
        ));
        ok(&format!(
            "{AUTH}{}{}library = \"Other\"\n",
            job("a", "X"),
            job("b", "X")
        ));
        let other_site = job("b", "X").replace("/sites/A", "/sites/B");
        ok(&format!("{AUTH}{}{other_site}", job("a", "X")));
        // Site URLs compare case-insensitively too.
        let upper_site = job("b", "X").replace("/sites/A", "/SITES/a/");
        assert_eq!(
            errors(&format!("{AUTH}{}{upper_site}", job("a", "X"))).len(),
            1
        );
    }

    #[test]
    fn fragment_size_is_a_multiple_of_320kib_below_60mib() {
        for (value, expect) in [
            (
                "\"1MiB\"",
                Err("1MiB is not a multiple of 320KiB; nearest: 960KiB or 1280KiB"),
            ),
            (
                "\"100KiB\"",
                Err("100KiB is not a multiple of 320KiB; nearest: 320KiB"),
            ),
            ("0", Err("0B is not a multiple of 320KiB; nearest: 320KiB")),
            (
                "\"60MiB\"",
                Err("60MiB is not below 60MiB; largest valid: 61120KiB"),
            ),
            (
                "\"61300KiB\"",
                Err("61300KiB is not a multiple of 320KiB; nearest: 61120KiB"),
            ),
            ("\"61120KiB\"", Ok(61120 << 10)),
            ("\"320KiB\"", Ok(327_680)),
            ("327680", Ok(327_680)),
            ("\"59840KiB\"", Ok(61_276_160)),
            ("\"10MiB\"", Ok(10 * 1024 * 1024)),
        ] {
            let text = format!(
                "{AUTH}[defaults]\nfragment_size = {value}\n{}",
                job("a", "A")
            );
            match expect {
                Ok(n) => {
                    let c = ok(&text);
                    assert_eq!(c.defaults.fragment_size, n, "{value}");
                    assert_eq!(c.jobs[0].settings.fragment_size, n, "jobs inherit {value}");
                }
                Err(msg) => {
                    let e = one_error(&text);
                    assert_eq!(e.key.as_deref(), Some("defaults.fragment_size"));
                    assert_eq!(e.line, Some(line_of(&text, "fragment_size")));
                    assert!(e.message.starts_with(msg), "{value}: {}", e.message);
                    assert!(e.message.contains("accepted: "), "{}", e.message);
                }
            }
        }
    }

    #[test]
    fn sizes_are_human_readable() {
        for (text, want) in [
            ("0", Some(0)),
            ("1048576", Some(1_048_576)),
            ("10MiB", Some(10 << 20)),
            ("10 MiB", Some(10 << 20)),
            ("10mib", Some(10 << 20)),
            ("320KiB", Some(320 << 10)),
            ("1.5GiB", Some(3 << 29)),
            ("2TiB", Some(2 << 40)),
            ("5B", Some(5)),
            ("10KB", Some(10_000)),
            ("10MB", Some(10_000_000)),
            ("1.5GB", Some(1_500_000_000)),
            ("1TB", Some(1_000_000_000_000)),
            ("", None),
            ("MiB", None),
            ("10M", None),
            ("10 furlongs", None),
            ("1.5B", None),
            ("1.", None),
            ("-1", None),
            ("99999999999TiB", None),
        ] {
            assert_eq!(parse_size(text).ok(), want, "{text:?}");
        }
        assert_eq!(format_size(10 << 20), "10MiB");
        assert_eq!(format_size(1280 << 10), "1280KiB");
        assert_eq!(format_size(1000), "1000B");
        assert_eq!(format_size(3 << 29), "1536MiB");
    }

    #[test]
    fn durations_are_human_readable() {
        for (text, want) in [
            ("0", Some(Duration::ZERO)),
            ("2s", Some(Duration::from_secs(2))),
            ("500ms", Some(Duration::from_millis(500))),
            ("5m", Some(Duration::from_secs(300))),
            ("1h", Some(Duration::from_secs(3600))),
            ("1m30s", Some(Duration::from_secs(90))),
            ("1h2m3s4ms", Some(Duration::from_millis(3_723_004))),
            ("2", None),
            ("", None),
            ("2 s", None),
            ("1.5s", None),
            ("5d", None),
            ("s", None),
        ] {
            assert_eq!(parse_duration(text).ok(), want, "{text:?}");
        }
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn settings_ranges() {
        for (line, key, why) in [
            ("concurrency = 0", "concurrency", "0 is out of range"),
            ("concurrency = 65", "concurrency", "65 is out of range"),
            ("debounce = \"11m\"", "debounce", "longer than 10m"),
            ("debounce = \"2\"", "debounce", "has no unit"),
            ("debounce = \"1.5s\"", "debounce", "whole numbers only"),
            ("settle = \"2h\"", "settle", "longer than 1h"),
            ("bandwidth_limit = 100", "bandwidth_limit", "too low"),
            (
                "bandwidth_limit = \"fast\"",
                "bandwidth_limit",
                "invalid size \"fast\"",
            ),
            (
                "max_file_size = 0",
                "max_file_size",
                "would skip every file",
            ),
            ("max_file_size = -5", "max_file_size", "-5 is negative"),
            (
                "reconcile_interval = \"500ms\"",
                "reconcile_interval",
                "\"500ms\" is shorter than 1s",
            ),
            (
                "reconcile_interval = \"never\"",
                "reconcile_interval",
                "invalid duration \"never\"",
            ),
            (
                "reconcile_interval = \"15\"",
                "reconcile_interval",
                "has no unit",
            ),
        ] {
            let text = format!("{AUTH}[defaults]\n{line}\n{}", job("a", "A"));
            let e = one_error(&text);
            assert_eq!(
                e.key.as_deref(),
                Some(&*format!("defaults.{key}")),
                "{line}"
            );
            assert!(e.message.contains(why), "{line}: {}", e.message);
            assert!(e.message.contains("accepted: "), "{line}: {}", e.message);
        }
        let text = format!(
            "{AUTH}[defaults]\nconcurrency = 64\ndebounce = \"0\"\nsettle = \"1h\"\n\
             bandwidth_limit = \"20MiB/s\"\nmax_file_size = \"2GiB\"\n{}",
            job("a", "A")
        );
        let s = ok(&text).defaults;
        assert_eq!(s.concurrency, 64);
        assert_eq!(s.debounce, Duration::ZERO);
        assert_eq!(s.settle, Duration::from_secs(3600));
        assert_eq!(s.bandwidth_limit, Some(20 << 20));
        assert_eq!(s.max_file_size, Some(2 << 30));
        let s = ok(&format!(
            "{AUTH}[defaults]\nbandwidth_limit = \"0\"\n{}",
            job("a", "A")
        ))
        .defaults;
        assert_eq!(s.bandwidth_limit, None);
        assert_eq!(s.reconcile_interval, Some(RECONCILE_INTERVAL_DEFAULT));
        for (text, want) in [
            ("\"off\"", None),
            ("\"0\"", None),
            ("\"1s\"", Some(Duration::from_secs(1))),
            ("\"1h30m\"", Some(Duration::from_secs(5400))),
        ] {
            let c = ok(&format!(
                "{AUTH}[defaults]\nreconcile_interval = {text}\n{}{}reconcile_interval = \"2m\"\n",
                job("a", "A"),
                job("b", "B")
            ));
            assert_eq!(c.jobs[0].settings.reconcile_interval, want, "{text}");
            assert_eq!(
                c.jobs[1].settings.reconcile_interval,
                Some(Duration::from_secs(120)),
                "a job's own value wins"
            );
        }
    }

    #[test]
    fn timezone_defaults_to_local_and_jobs_override_it() {
        let c = ok(&with_job_lines("schedule = \"30 2 * * *\""));
        assert_eq!(c.defaults.timezone, Zone::Local);
        assert_eq!(c.jobs[0].settings.timezone, Zone::Local);

        let c = ok(&format!(
            "{AUTH}[defaults]\ntimezone = \"Europe/Berlin\"\n{}\n{}timezone = \"UTC\"\n{}timezone = \"local\"\n",
            job("a", "A"),
            job("b", "B"),
            job("c", "C"),
        ));
        assert_eq!(c.defaults.timezone, Zone::Named(chrono_tz::Europe::Berlin));
        let zones: Vec<&str> = c.jobs.iter().map(|j| j.settings.timezone.name()).collect();
        assert_eq!(zones, ["Europe/Berlin", "UTC", "local"]);
    }

    #[test]
    fn a_bad_timezone_names_the_file_key_and_what_is_accepted() {
        let text = format!(
            "{AUTH}[defaults]\ntimezone = \"Mars/Olympus\"\n{}",
            job("a", "A")
        );
        let e = one_error(&text);
        assert_eq!(e.key.as_deref(), Some("defaults.timezone"));
        assert_eq!(e.line, Some(line_of(&text, "timezone")));
        assert_eq!(
            e.to_string(),
            format!(
                "config.toml:{}:12: key `defaults.timezone`: unknown time zone \"Mars/Olympus\"; \
                 accepted: an IANA time zone name like \"Europe/Berlin\" or \"UTC\", or \"local\" \
                 (the default: the server's time zone, from TZ or /etc/localtime)",
                line_of(&text, "timezone")
            )
        );
        // Wrong case gets a suggestion; inside a job the job is named.
        let e = one_error(&with_job_lines("timezone = \"europe/berlin\""));
        assert_eq!(e.key.as_deref(), Some("job.timezone"));
        assert!(
            e.message
                .contains("unknown time zone \"europe/berlin\" (did you mean \"Europe/Berlin\"?)"),
            "{}",
            e.message
        );
        assert!(e.to_string().contains("job \"a\""), "{e}");
        let e = one_error(&with_job_lines("timezone = 1"));
        assert_eq!(e.key.as_deref(), Some("job.timezone"));
    }

    #[test]
    fn jobs_override_defaults_key_by_key() {
        let text = format!(
            "{AUTH}[defaults]\nconcurrency = 8\nsettle = \"30s\"\n{}{}concurrency = 1\n\
             fragment_size = \"640KiB\"\nbandwidth_limit = \"1MiB\"\n",
            job("a", "A"),
            job("b", "B")
        );
        let c = ok(&text);
        let a = &c.jobs[0].settings;
        assert_eq!((a.concurrency, a.settle), (8, Duration::from_secs(30)));
        let b = &c.jobs[1].settings;
        assert_eq!(b.concurrency, 1);
        assert_eq!(
            b.settle,
            Duration::from_secs(30),
            "not overridden: inherited"
        );
        assert_eq!(b.fragment_size, 640 << 10);
        assert_eq!(b.bandwidth_limit, Some(1 << 20));
        assert_eq!(c.defaults.fragment_size, Settings::default().fragment_size);

        let text = with_job_lines("fragment_size = \"1MiB\"");
        let e = one_error(&text);
        assert_eq!(e.key.as_deref(), Some("job.fragment_size"));
        assert_eq!(e.job.as_deref(), Some("a"));
    }

    #[test]
    fn site_urls() {
        for (text, want) in [
            (
                "https://contoso.sharepoint.com/sites/Finance",
                Ok("https://contoso.sharepoint.com/sites/Finance"),
            ),
            (
                "https://Contoso.SharePoint.com/sites/Finance/",
                Ok("https://contoso.sharepoint.com/sites/Finance"),
            ),
            (
                "https://contoso.sharepoint.com",
                Ok("https://contoso.sharepoint.com"),
            ),
            (
                "https://contoso.sharepoint.com/",
                Ok("https://contoso.sharepoint.com"),
            ),
            (
                "http://127.0.0.1:8070/sites/demo",
                Ok("http://127.0.0.1:8070/sites/demo"),
            ),
            (
                "http://127.1.2.3/sites/demo",
                Ok("http://127.1.2.3/sites/demo"),
            ),
            (
                "http://localhost:9/sites/x",
                Ok("http://localhost:9/sites/x"),
            ),
            ("http://[::1]:8070/sites/x", Ok("http://[::1]:8070/sites/x")),
            (
                "http://contoso.sharepoint.com/sites/A",
                Err("only allowed for loopback hosts"),
            ),
            (
                "http://10.0.0.1/sites/A",
                Err("only allowed for loopback hosts"),
            ),
            (
                "http://[::2]/sites/A",
                Err("only allowed for loopback hosts"),
            ),
            (
                "ftp://contoso.sharepoint.com/sites/A",
                Err("unsupported scheme"),
            ),
            ("contoso.sharepoint.com/sites/A", Err("is not a URL")),
            ("https:///sites/A", Err("has no host")),
            ("https://contoso.sharepoint.com/sites/A?x=1", Err("query")),
            (
                "https://user@contoso.sharepoint.com/sites/A",
                Err("user name"),
            ),
            (
                "https://contoso.sharepoint.com:0/sites/A",
                Err("invalid port"),
            ),
            (
                "https://contoso.sharepoint.com/sites/My Site",
                Err("contains spaces"),
            ),
            (
                "https://contoso.sharepoint.com/sites/A/Shared%20Documents/Forms/AllItems.aspx",
                Err("not a site"),
            ),
        ] {
            match (SiteUrl::parse(text), want) {
                (Ok(u), Ok(w)) => assert_eq!(u.to_string(), w, "{text}"),
                (Err(e), Err(w)) => assert!(e.contains(w), "{text}: {e}"),
                (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
            }
        }
        let u = SiteUrl::parse("https://contoso.sharepoint.com/sites/Finance/").unwrap();
        assert_eq!(
            u,
            SiteUrl {
                scheme: "https".into(),
                host: "contoso.sharepoint.com".into(),
                path: "/sites/Finance".into()
            }
        );
        // In a config, the error is placed on the key and says what is accepted.
        let text = format!(
            "{AUTH}[[job]]\nname = \"a\"\nsource = \"/srv/a\"\nsite = \"http://example.com/sites/a\"\n"
        );
        let e = one_error(&text);
        assert_eq!((e.key.as_deref(), e.line), (Some("job.site"), Some(7)));
        assert!(
            e.message.contains("accepted: the site URL"),
            "{}",
            e.message
        );
    }

    #[test]
    fn authority_and_graph_url_follow_the_same_https_rule() {
        let text = format!(
            "[auth]\ntenant = \"t.onmicrosoft.com\"\n\
             client_id = \"00000000-0000-0000-0000-000000000000\"\n\
             authority = \"http://login.example.com\"\ngraph_url = \"https://graph.example.us/v1.0/\"\n{}",
            job("a", "A")
        );
        let e = one_error(&text);
        assert_eq!(e.key.as_deref(), Some("auth.authority"));
        let ok_text = text.replace("http://login.example.com", "http://127.0.0.1:8070/");
        let c = ok(&ok_text);
        assert_eq!(c.auth.authority, "http://127.0.0.1:8070");
        assert_eq!(c.auth.graph_url, "https://graph.example.us/v1.0");
    }

    #[test]
    fn folders_are_normalised() {
        for (input, want) in [
            ("", Ok("")),
            ("/", Ok("")),
            ("Backups/reports", Ok("Backups/reports")),
            ("/Backups/reports/", Ok("Backups/reports")),
            ("Q1 2024/Reports", Ok("Q1 2024/Reports")),
            ("a//b", Err("empty segment")),
            ("a/../b", Err("`..` segments")),
            ("./a", Err("`.` segments")),
            ("a\\b", Err("not `\\`")),
            ("a/b:c", Err("does not allow ':'")),
            ("a/ b", Err("starts or ends with a space")),
            // The rest of graph-api.md section 8: SharePoint refuses these
            // folders, so every run would fail creating the job's folder.
            ("Backups.", Err("trailing period")),
            ("Forms", Err("forms at the library root")),
            ("forms/x", Err("forms at the library root")),
            ("x/Forms", Ok("x/Forms")),
            ("a/CON", Err("reserves")),
            ("lpt1.d/b", Err("reserves")),
            ("desktop.ini", Err("reserves")),
            ("_vti_bin", Err("_vti_")),
            ("~$tmp", Err("~$")),
        ] {
            match (normalize_folder(input), want) {
                (Ok(got), Ok(w)) => assert_eq!(got, w, "{input:?}"),
                (Err(e), Err(w)) => assert!(e.contains(w), "{input:?}: {e}"),
                (got, want) => panic!("{input:?}: got {got:?}, want {want:?}"),
            }
        }
        let e = one_error(&format!("{AUTH}{}", job("a", "x/../y")));
        assert_eq!(e.key.as_deref(), Some("job.folder"));
    }

    #[test]
    fn max_delete_takes_files_or_a_percentage() {
        assert_eq!(
            ok(&with_job_lines("")).jobs[0].max_delete,
            MaxDelete::Default
        );
        assert_eq!(
            ok(&with_job_lines("max_delete = 500")).jobs[0].max_delete,
            MaxDelete::Files(500)
        );
        assert_eq!(
            ok(&with_job_lines("max_delete = \"5%\"")).jobs[0].max_delete,
            MaxDelete::Percent(5)
        );
        let e = one_error(&with_job_lines("max_delete = \"lots\""));
        assert_eq!(e.key.as_deref(), Some("job.max_delete"));
        assert!(e.message.contains("percentage"), "{}", e.message);
        assert!(
            one_error(&with_job_lines("max_delete = \"150%\""))
                .message
                .contains("150%")
        );
        // The value as written, never Rust's Debug form of it.
        let e = one_error(&with_job_lines("max_delete = -1"));
        assert!(
            e.message.starts_with("-1 is not a number of files"),
            "{}",
            e.message
        );

        // Default: 100 files, or 10% when that is more.
        assert!(MaxDelete::Default.allows(100, 100));
        assert!(!MaxDelete::Default.allows(101, 1000));
        assert!(MaxDelete::Default.allows(500, 5000));
        assert!(!MaxDelete::Default.allows(501, 5000));
        assert!(MaxDelete::Files(3).allows(3, 3));
        assert!(!MaxDelete::Files(3).allows(4, 1_000_000));
        assert!(MaxDelete::Percent(5).allows(5, 100));
        assert!(!MaxDelete::Percent(5).allows(6, 100));
    }

    #[test]
    fn enumerations_name_their_accepted_values() {
        let e = one_error(&with_job_lines("delete = \"sync\""));
        assert!(
            e.message
                .contains("unknown delete mode \"sync\"; accepted: \"keep\"")
        );
        let c = ok(&with_job_lines(
            "delete = \"mirror\"\nfollow_symlinks = true",
        ));
        assert_eq!(c.jobs[0].delete, DeleteMode::Mirror);
        assert!(c.jobs[0].follow_symlinks);
        assert_eq!(c.jobs[0].on_remote_delete, OnRemoteDelete::Restore);
        assert_eq!(c.jobs[0].on_remote_change, OnRemoteChange::Overwrite);
        let c = ok(&with_job_lines(
            "on_remote_delete = \"forget\"\non_remote_change = \"keep-both\"",
        ));
        assert_eq!(c.jobs[0].on_remote_delete, OnRemoteDelete::Forget);
        assert_eq!(c.jobs[0].on_remote_change, OnRemoteChange::KeepBoth);
        let e = one_error(&with_job_lines("on_remote_change = \"merge\""));
        assert_eq!(e.key.as_deref(), Some("job.on_remote_change"));
        assert!(
            e.message
                .contains("unknown on_remote_change \"merge\"; accepted: \"overwrite\""),
            "{}",
            e.message
        );
        let e = one_error(&with_job_lines("on_remote_delete = \"keep\""));
        assert!(e.message.contains("accepted: \"restore\""), "{}", e.message);

        let e = one_error(&format!(
            "{AUTH}[daemon]\nlog_format = \"xml\"\n{}",
            job("a", "A")
        ));
        assert!(
            e.message
                .contains("accepted: \"text\" (default) or \"json\""),
            "{}",
            e.message
        );
        let c = ok(&format!(
            "{AUTH}[daemon]\nlog_format = \"json\"\n{}",
            job("a", "A")
        ));
        assert_eq!(c.daemon.log_format, LogFormat::Json);

        let e = one_error(&format!("{AUTH}mode = \"password\"\n{}", job("a", "A")));
        assert!(
            e.message
                .contains("unknown mode \"password\"; accepted: \"device_code\"")
        );

        let e = one_error(&format!(
            "[auth]\ntenant = \"t\"\nclient_id = \"not-a-guid\"\n{}",
            job("a", "A")
        ));
        assert!(e.message.contains("is not a GUID"), "{}", e.message);

        let e = one_error(&with_job_lines("invalid_names = \"drop\""));
        assert!(
            e.message
                .contains("unknown value \"drop\"; accepted: \"encode\" (default"),
            "{}",
            e.message
        );
        let c = ok(&format!(
            "{AUTH}[defaults]\ninvalid_names = \"skip\"\n{}",
            job("a", "A")
        ));
        assert_eq!(c.defaults.invalid_names, InvalidNames::Skip);
        assert_eq!(c.jobs[0].settings.invalid_names, InvalidNames::Skip);
        let c = ok(&with_job_lines("invalid_names = \"skip\""));
        assert_eq!(c.defaults.invalid_names, InvalidNames::Encode);
        assert_eq!(c.jobs[0].settings.invalid_names, InvalidNames::Skip);
    }

    #[test]
    fn patterns_are_checked() {
        let text = with_job_lines("exclude = [\"*.tmp\", \"{a,b\", \"\"]\ninclude = [\"[z-a]\"]");
        let e = errors(&text);
        assert_eq!(e.len(), 3, "{}", ConfigErrors(e.clone()));
        assert!(e.iter().all(|x| x.line.is_some()));
        let c = ok(&with_job_lines(
            "exclude = [\"*.tmp\", \"~$*\"]\ninclude = [\"*.pdf\"]",
        ));
        assert_eq!(c.jobs[0].exclude, ["*.tmp", "~$*"]);
        assert_eq!(c.jobs[0].include, ["*.pdf"]);
    }

    #[test]
    fn an_inline_client_secret_is_refused_without_echoing_it() {
        let text = format!(
            "{AUTH}client_secret = \"hunter2-SECRET\"\n{}",
            job("a", "A")
        );
        let err = parse(&text).unwrap_err();
        assert_eq!(err.0.len(), 1, "{err}");
        let e = &err.0[0];
        assert_eq!(e.key.as_deref(), Some("auth.client_secret"));
        assert_eq!(e.line, Some(4));
        assert!(e.message.contains("client_secret_file"), "{}", e.message);
        assert!(e.message.contains("LoadCredential"), "{}", e.message);
        assert!(!err.to_string().contains("hunter2"));
        assert!(!format!("{err:?}").contains("hunter2"));
        // Even a syntax error on that line does not echo it.
        let text = format!("{AUTH}client_secret = \"hunter2-SECRET\n");
        let err = parse(&text).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(!format!("{err:?}").contains("hunter2"));
    }

    fn app_only(extra: &str) -> String {
        format!(
            "[auth]\ntenant = \"contoso.onmicrosoft.com\"\n\
             client_id = \"00000000-0000-0000-0000-000000000000\"\n\
             mode = \"client_credentials\"\n{extra}\n{}",
            job("a", "A")
        )
    }

    fn write_mode(path: &Path, mode: u32) {
        fs::write(path, "not a real secret").unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn secret_files_must_exist_and_be_private() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        write_mode(&secret, 0o644);
        let text = app_only(&format!("client_secret_file = \"{}\"", secret.display()));
        let e = one_error(&text);
        assert_eq!(e.key.as_deref(), Some("auth.client_secret_file"));
        assert_eq!(e.line, Some(5));
        assert!(e.message.contains("mode 0644"), "{}", e.message);
        assert!(
            e.message
                .contains(&format!("`chmod 600 {}`", secret.display())),
            "{}",
            e.message
        );
        assert!(!e.message.contains("not a real secret"));

        fs::set_permissions(&secret, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(one_error(&text).message.contains("chmod 600"));

        fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
        let c = ok(&text);
        assert_eq!(
            c.auth.mode,
            AuthMode::ClientSecret {
                secret_file: secret.clone()
            }
        );

        let missing = dir.path().join("nope");
        let e = one_error(&app_only(&format!(
            "client_secret_file = \"{}\"",
            missing.display()
        )));
        assert!(
            e.message
                .contains(&format!("{} does not exist", missing.display())),
            "{}",
            e.message
        );
    }

    #[test]
    fn certificate_may_be_public_but_its_key_may_not() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("app.pem"), dir.path().join("app.key"));
        write_mode(&cert, 0o644);
        write_mode(&key, 0o600);
        let text = app_only(&format!(
            "certificate = \"{}\"\nprivate_key = \"{}\"",
            cert.display(),
            key.display()
        ));
        let c = ok(&text);
        assert_eq!(
            c.auth.mode,
            AuthMode::Certificate {
                certificate: cert.clone(),
                private_key: key.clone()
            }
        );
        fs::set_permissions(&key, fs::Permissions::from_mode(0o604)).unwrap();
        let e = one_error(&text);
        assert_eq!(e.key.as_deref(), Some("auth.private_key"));
        assert!(e.message.contains(&format!("chmod 600 {}", key.display())));
    }

    #[test]
    fn client_credentials_needs_exactly_one_credential() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, cert, key) = (
            dir.path().join("s"),
            dir.path().join("c.pem"),
            dir.path().join("k.pem"),
        );
        for p in [&secret, &cert, &key] {
            write_mode(p, 0o600);
        }
        let s = format!("client_secret_file = \"{}\"", secret.display());
        let c = format!("certificate = \"{}\"", cert.display());
        let k = format!("private_key = \"{}\"", key.display());
        for (lines, key, why) in [
            (
                String::new(),
                "auth.mode",
                "needs `client_secret_file`, or `certificate`",
            ),
            (
                format!("{s}\n{c}\n{k}"),
                "auth.client_secret_file",
                "not both",
            ),
            (
                c.clone(),
                "auth.private_key",
                "`certificate` needs `private_key`",
            ),
            (
                k.clone(),
                "auth.certificate",
                "`private_key` needs `certificate`",
            ),
        ] {
            let e = one_error(&app_only(&lines));
            assert_eq!(e.key.as_deref(), Some(key), "{lines}");
            assert!(e.message.contains(why), "{lines}: {}", e.message);
        }
        // App-only needs a real tenant.
        let text = app_only(&s).replace("contoso.onmicrosoft.com", "common");
        assert!(one_error(&text).message.contains("needs the tenant itself"));
        // Device code with app-only keys is a mistake, said so.
        let text = format!("{AUTH}{s}\n{}", job("a", "A"));
        let e = one_error(&text);
        assert!(
            e.message
                .contains("only used with mode = \"client_credentials\"")
        );
    }

    #[test]
    fn credential_names_resolve_against_credentials_directory() {
        let dir = tempfile::tempdir().unwrap();
        write_mode(&dir.path().join("client-secret"), 0o400);
        let text = app_only("client_secret_file = \"client-secret\"");
        let env = ConfigEnv {
            credentials_directory: Some(dir.path().to_path_buf()),
            inspect_only: false,
        };
        let c = parse_env(&text, &env).unwrap();
        assert_eq!(
            c.auth.mode,
            AuthMode::ClientSecret {
                secret_file: dir.path().join("client-secret")
            }
        );
        let e = one_error(&text);
        assert!(
            e.message.contains("CREDENTIALS_DIRECTORY is not set"),
            "{}",
            e.message
        );
        let text = app_only("client_secret_file = \"sub/secret\"");
        let e = parse_env(&text, &env).unwrap_err().0;
        assert!(
            e[0].message.contains("must be absolute"),
            "{}",
            e[0].message
        );
    }

    #[test]
    fn load_reads_the_file_and_names_it_when_missing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let e = Config::load(&path).unwrap_err();
        assert_eq!(e.0.len(), 1);
        assert_eq!(e.0[0].file, path);
        assert!(e.0[0].message.contains("not found"), "{e}");
        fs::write(&path, with_job_lines("")).unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.path, path);
        assert_eq!(c.jobs.len(), 1);
        assert!(c.job("a").is_some() && c.job("b").is_none());
    }

    /// The acceptance point: an unknown key, a bad cron line, a relative source
    /// and a 1 MiB fragment size are all reported at once, each with its line.
    #[test]
    fn acceptance_four_problems_four_errors_with_lines() {
        let text = "\
[auth]
tenant = \"contoso.onmicrosoft.com\"
client_id = \"00000000-0000-0000-0000-000000000000\"
colour = \"blue\"

[defaults]
fragment_size = \"1MiB\"

[[job]]
name = \"finance\"
source = \"srv/reports\"
site = \"https://contoso.sharepoint.com/sites/Finance\"
schedule = \"61 * * * *\"
";
        let err = parse(text).unwrap_err();
        let shown = err.to_string();
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(lines.len(), 4, "{shown}");
        assert!(
            lines[0].starts_with("config.toml:4:1: key `auth.colour`: unknown key"),
            "{shown}"
        );
        assert!(
            lines[1].starts_with(
                "config.toml:7:17: key `defaults.fragment_size`: 1MiB is not a multiple \
                 of 320KiB; nearest: 960KiB or 1280KiB"
            ),
            "{shown}"
        );
        assert!(
            lines[2].starts_with(
                "config.toml:11:10: job \"finance\": key `source`: \"srv/reports\" is relative"
            ),
            "{shown}"
        );
        assert!(
            lines[3].starts_with(
                "config.toml:13:12: job \"finance\": key `schedule`: invalid cron expression \
                 \"61 * * * *\": minute must be 0-59"
            ),
            "{shown}"
        );
    }

    /// Every key the parser accepts, with the section it lives in.
    fn known_keys() -> Vec<(&'static str, &'static str)> {
        let mut v = Vec::new();
        for (section, table) in [
            ("auth", AUTH_KEYS),
            ("defaults", SETTINGS_KEYS),
            ("daemon", DAEMON_KEYS),
            ("job", JOB_KEYS),
        ] {
            for k in table {
                v.push((section, k.key));
            }
        }
        v
    }

    const EXAMPLE: &str = include_str!("../config/example.toml");

    #[test]
    fn example_documents_every_key() {
        let assigned: Vec<String> = EXAMPLE
            .lines()
            .map(|l| l.trim().trim_start_matches('#').trim().to_string())
            .collect();
        for (section, key) in known_keys() {
            let found = assigned.iter().any(|l| l.starts_with(&format!("{key} =")));
            assert!(
                found,
                "config/example.toml does not document [{section}] {key}"
            );
        }
        for section in SECTIONS {
            assert!(
                EXAMPLE.contains(&format!("[{section}]")),
                "config/example.toml lacks [{section}]"
            );
        }
        // Commented-out alternatives must parse too: uncommenting them gives
        // known keys, not typos.
        for l in &assigned {
            if let Some((k, _)) = l.split_once(" = ")
                && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            {
                assert!(
                    known_keys().iter().any(|(_, kk)| kk == &k),
                    "config/example.toml mentions unknown key {k}"
                );
            }
        }
    }

    /// The README's configuration reference lists every key the parser
    /// takes (rows start with the key, after the section on a section's
    /// first row), and nothing it does not take.
    #[test]
    fn readme_reference_documents_every_key() {
        let readme = include_str!("../README.md");
        let table: Vec<&str> = readme
            .lines()
            .skip_while(|l| !l.starts_with("| key | default | accepted |"))
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .collect();
        assert!(!table.is_empty(), "README has no configuration reference");
        let first_cell_keys = |row: &str| -> Vec<String> {
            let cell = row
                .trim_start_matches('|')
                .split(" | ")
                .next()
                .unwrap_or("");
            // "**`[auth]`** `tenant`" or "`certificate`, `private_key`".
            let cell = cell.rsplit("** ").next().unwrap_or(cell);
            cell.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_string)
                .collect()
        };
        let documented: Vec<String> = table.iter().flat_map(|r| first_cell_keys(r)).collect();
        for (section, key) in known_keys() {
            assert!(
                documented.iter().any(|k| k == key),
                "README's configuration reference does not list [{section}] {key}"
            );
        }
        for k in &documented {
            assert!(
                known_keys().iter().any(|(_, kk)| kk == k),
                "README's configuration reference lists unknown key {k}"
            );
        }
    }

    #[test]
    fn example_parses_with_the_documented_values() {
        let c = Config::from_str_with_env(
            EXAMPLE,
            Path::new("config/example.toml"),
            &ConfigEnv::default(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.auth.tenant, "contoso.onmicrosoft.com");
        assert_eq!(c.auth.mode, AuthMode::DeviceCode);
        assert_eq!(c.auth.authority, DEFAULT_AUTHORITY);
        assert_eq!(c.auth.graph_url, DEFAULT_GRAPH_URL);
        assert_eq!(
            c.defaults,
            Settings::default(),
            "the example shows the defaults"
        );
        assert_eq!(c.daemon.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(c.jobs.len(), 2);

        let f = &c.jobs[0];
        assert_eq!(f.name, "finance-reports");
        assert_eq!(f.source, PathBuf::from("/srv/reports"));
        assert_eq!(
            f.site.to_string(),
            "https://contoso.sharepoint.com/sites/Finance"
        );
        assert_eq!(
            (f.library.as_str(), f.folder.as_str()),
            ("Documents", "Backups/reports")
        );
        assert_eq!(f.schedule.as_ref().unwrap().expr, "*/15 * * * *");
        assert!(f.watch);
        assert_eq!(f.exclude, ["*.tmp", "~$*", ".~lock.*#"]);
        assert_eq!(f.delete, DeleteMode::Keep);
        assert_eq!(f.settings.concurrency, 2);
        assert_eq!(f.settings.debounce, Duration::from_secs(10));
        assert_eq!(f.settings.fragment_size, 10 << 20);

        let s = &c.jobs[1];
        assert_eq!(s.name, "scans-archive");
        assert_eq!(s.schedule.as_ref().unwrap().six_field, "0 30 2 * * 1-5");
        assert_eq!(s.settings.timezone, Zone::Named(chrono_tz::Europe::Berlin));
        assert!(!s.watch, "cron-only");
        assert_eq!(s.delete, DeleteMode::Mirror);
        assert_eq!((s.library.as_str(), s.folder.as_str()), ("Scans", ""));
        assert_eq!(s.include, ["*.pdf", "*.tif"]);
        assert_eq!(s.settings.fragment_size, 20 << 20);
        assert_eq!(s.settings.settle, Duration::from_secs(60));
        assert_eq!(s.settings.bandwidth_limit, Some(5 << 20));
        assert_eq!(s.settings.max_file_size, Some(2 << 30));
        assert_eq!(s.settings.concurrency, 8, "inherited from [defaults]");
    }

    #[test]
    fn demo_config_points_at_the_bundled_sample_and_emulator() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let path = dir.join("config/demo.toml");
        let text = fs::read_to_string(&path).unwrap();
        let c = Config::from_str_with_env(&text, &path, &ConfigEnv::default())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.auth.authority, "http://127.0.0.1:8070");
        assert_eq!(c.auth.graph_url, "http://127.0.0.1:8070/v1.0");
        assert_eq!(c.daemon.state_dir, dir.join("target/demo-state"));
        assert_eq!(c.jobs.len(), 1);
        let j = &c.jobs[0];
        assert_eq!(j.name, "demo");
        assert_eq!(j.source, dir.join("config/demo/sample"));
        // The SharePoint site URL, not the emulator's address (requests go to graph_url).
        assert_eq!(
            j.site.to_string(),
            "https://contoso.sharepoint.com/sites/demo"
        );
        assert!(j.watch);
        assert_eq!(j.schedule.as_ref().unwrap().expr, "@hourly");
    }

    #[test]
    fn debug_output_holds_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        fs::write(&secret, "s3cr3t-value").unwrap();
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
        let c = ok(&app_only(&format!(
            "client_secret_file = \"{}\"",
            secret.display()
        )));
        let debug = format!("{c:?}");
        assert!(!debug.contains("s3cr3t-value"));
        assert!(
            debug.contains(&secret.display().to_string()),
            "keeps the path only"
        );
    }
}
