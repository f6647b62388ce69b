//! Logging setup: `tracing` to journald when the process runs as a systemd
//! service, else to stderr as text or JSON lines.
//!
//! journald is chosen when `JOURNAL_STREAM` is set *and* names stderr's
//! device and inode (systemd connected stderr to the journal; a child whose
//! stderr was redirected elsewhere inherits the variable but fails the
//! check), unless a format was asked for: `--log-format` or `[daemon]
//! log_format = "json"` keep writing lines to stderr, which journald then
//! stores as plain messages. In the journal every event's fields are journal
//! fields without a prefix (`journalctl -u sharepush JOB=docs`), and every
//! event inside a job run also carries the run span's `JOB` and `TRIGGER`.
//!
//! The level comes from `-v`/`-q` unless `RUST_LOG` is set (the cron
//! scheduler library logs warnings and errors only). Nothing secret is
//! ever logged: modules log paths, job names and counts, never file contents,
//! tokens or secret values. A run logs one summary line (in its span), not a
//! line per unchanged file.

use std::io::IsTerminal as _;
use std::os::fd::AsFd as _;
use std::os::unix::fs::MetadataExt as _;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::cli::{GlobalArgs, LogFormatArg};
use crate::config::LogFormat;

/// Where log records go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    /// Native journald records (structured fields).
    Journald,
    /// Human-readable lines on stderr.
    StderrText,
    /// One JSON object per line on stderr.
    StderrJson,
}

/// Decides where logs go from the format flags and whether stderr is the
/// journal (`journal_stream`: `$JOURNAL_STREAM`; `stderr_id`: stderr's
/// device and inode). Pure, so the rules are tested without systemd.
pub fn choose_target(
    flag: Option<LogFormatArg>,
    from_config: Option<LogFormat>,
    journal_stream: Option<&str>,
    stderr_id: Option<(u64, u64)>,
) -> LogTarget {
    match flag {
        Some(LogFormatArg::Json) => return LogTarget::StderrJson,
        Some(LogFormatArg::Text) => return LogTarget::StderrText,
        None => {}
    }
    if from_config == Some(LogFormat::Json) {
        return LogTarget::StderrJson;
    }
    let on_journal = match (journal_stream.and_then(parse_journal_stream), stderr_id) {
        (Some(expected), Some(actual)) => expected == actual,
        _ => false,
    };
    if on_journal {
        LogTarget::Journald
    } else {
        LogTarget::StderrText
    }
}

/// `JOURNAL_STREAM` is `DEVICE:INODE`, both decimal.
fn parse_journal_stream(text: &str) -> Option<(u64, u64)> {
    let (dev, ino) = text.trim().split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

/// stderr's device and inode (fstat on a duplicate of fd 2).
fn stderr_id() -> Option<(u64, u64)> {
    let fd = std::io::stderr().as_fd().try_clone_to_owned().ok()?;
    let meta = std::fs::File::from(fd).metadata().ok()?;
    Some((meta.dev(), meta.ino()))
}

/// Installs the global subscriber once; later calls are ignored (tests).
/// `--log-format` wins over the config's `[daemon] log_format`.
pub fn init(global: &GlobalArgs, from_config: Option<LogFormat>) {
    let default = match (global.quiet, global.verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    // tokio-cron-scheduler logs "Job creator created" at info on every
    // registration, and the daemon renews one after every cron tick
    // (`scheduler`): only its warnings and errors are worth a line.
    let default = format!("{default},tokio_cron_scheduler=warn");
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&default));
    let journal_stream = std::env::var("JOURNAL_STREAM").ok();
    let target = choose_target(
        global.log_format,
        from_config,
        journal_stream.as_deref(),
        stderr_id(),
    );
    // Without the journal's socket (a container without journald) the
    // layer cannot be built and the lines go to stderr, which still reaches
    // systemd.
    if target == LogTarget::Journald
        && let Ok(layer) = tracing_journald::layer()
    {
        let layer = layer
            .with_field_prefix(None)
            .with_syslog_identifier("sharepush".into());
        let _ = tracing_subscriber::registry()
            .with(filter())
            .with(layer)
            .try_init();
        return;
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(crate::progress::StderrWriter)
        // Colour codes only for a person at a terminal, never into files,
        // pipes or the journal.
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let _ = if target == LogTarget::StderrJson {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journald_only_when_stderr_is_the_journal_and_no_format_was_asked_for() {
        let stream = Some("64769:123456");
        let same = Some((64769, 123456));
        let other = Some((64769, 999));
        assert_eq!(choose_target(None, None, stream, same), LogTarget::Journald);
        assert_eq!(
            choose_target(None, Some(LogFormat::Text), stream, same),
            LogTarget::Journald
        );
        // Inherited by a child whose stderr goes elsewhere.
        assert_eq!(
            choose_target(None, None, stream, other),
            LogTarget::StderrText
        );
        assert_eq!(choose_target(None, None, None, same), LogTarget::StderrText);
        assert_eq!(
            choose_target(None, None, Some("garbage"), same),
            LogTarget::StderrText
        );
        // An explicit format wins.
        assert_eq!(
            choose_target(Some(LogFormatArg::Json), None, stream, same),
            LogTarget::StderrJson
        );
        assert_eq!(
            choose_target(
                Some(LogFormatArg::Text),
                Some(LogFormat::Json),
                stream,
                same
            ),
            LogTarget::StderrText
        );
        assert_eq!(
            choose_target(None, Some(LogFormat::Json), stream, same),
            LogTarget::StderrJson
        );
    }
}
