//! Logging setup: `tracing` to stderr, as text or JSON lines.
//!
//! The level comes from `-v`/`-q` unless `RUST_LOG` is set. Nothing secret is
//! ever logged: modules log paths, job names and counts, never file contents,
//! tokens or secret values. (journald output arrives with the daemon.)

use tracing_subscriber::EnvFilter;

use crate::cli::{GlobalArgs, LogFormatArg};
use crate::config::LogFormat;

/// Installs the global subscriber once; later calls are ignored (tests).
/// `--log-format` wins over the config's `[daemon] log_format`.
pub fn init(global: &GlobalArgs, from_config: Option<LogFormat>) {
    let default = match (global.quiet, global.verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let json = match global.log_format {
        Some(LogFormatArg::Json) => true,
        Some(LogFormatArg::Text) => false,
        None => from_config == Some(LogFormat::Json),
    };
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
