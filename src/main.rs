//! The `sharepush` binary: parse arguments, set up logging, run the command,
//! map the outcome to a documented exit code. Everything else is in the
//! library so tests reach it.
#![forbid(unsafe_code)]

use clap::Parser;
use sharepush::cli::Cli;

fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help/version to stdout (exit 0) and usage errors to stderr (exit 2).
            let _ = e.print();
            return std::process::ExitCode::from(if e.use_stderr() {
                sharepush::error::ExitCode::Usage.code()
            } else {
                0
            });
        }
    };
    // The config may choose the log format; a broken config is reported by the command itself.
    let from_config = sharepush::config::Config::load(&cli.global.config)
        .ok()
        .map(|c| c.daemon.log_format);
    sharepush::logging::init(&cli.global, from_config);
    let code = sharepush::run(cli);
    std::process::ExitCode::from(code.code())
}
