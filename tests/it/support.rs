//! Helpers shared by the integration tests: temporary trees, configs and a
//! way to run the built binary and read what a user would see.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A scratch area with a source tree, a state dir and a config file.
pub struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new() -> Fixture {
        Fixture {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn source(&self) -> PathBuf {
        self.path("src")
    }

    pub fn state(&self) -> PathBuf {
        self.path("state")
    }

    /// Writes a config with one job `docs` over `source()`.
    pub fn write_config(&self) -> PathBuf {
        std::fs::create_dir_all(self.source()).unwrap();
        let config = self.path("config.toml");
        std::fs::write(
            &config,
            format!(
                r#"[auth]
tenant = "contoso.onmicrosoft.com"
client_id = "00000000-0000-0000-0000-000000000000"
mode = "device_code"

[[job]]
name = "docs"
source = "{}"
site = "https://contoso.sharepoint.com/sites/demo"
library = "Documents"
folder = "backup"
schedule = "@hourly"
"#,
                self.source().display()
            ),
        )
        .unwrap();
        config
    }

    /// Runs `sharepush --config <config> --state-dir <state> ARGS`.
    pub fn sharepush(&self, config: &Path, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_sharepush"))
            .arg("--config")
            .arg(config)
            .arg("--state-dir")
            .arg(self.state())
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("SHAREPUSH_CONFIG")
            .env_remove("SHAREPUSH_STATE_DIR")
            .output()
            .expect("running sharepush")
    }
}

/// stdout and stderr as text, for assertions and failure messages.
pub fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
