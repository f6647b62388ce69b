//! The shipped unit files (`systemd/`): `systemd-analyze verify` accepts
//! them and `systemd-analyze security --offline=true` rates their exposure at
//! most 2.0 ("OK"). Skipped, saying why, where systemd-analyze is missing.
//!
//! verify insists that `ExecStart=`'s binary exists, so each unit is checked
//! as a copy whose ExecStart names the binary cargo just built; every other
//! line is the shipped one.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The highest exposure the units may have (systemd calls up to 2.0 "OK").
const MAX_EXPOSURE: f64 = 2.0;

fn systemd_analyze() -> Option<PathBuf> {
    let found = Command::new("systemd-analyze").arg("--version").output();
    match found {
        Ok(out) if out.status.success() => Some(PathBuf::from("systemd-analyze")),
        _ => {
            eprintln!("skipped: systemd-analyze is not installed (or does not run) here");
            None
        }
    }
}

/// Copies `systemd/<name>` into a temporary directory with ExecStart
/// pointing at the built binary; returns the copy's path.
fn checkable_copy(dir: &Path, name: &str) -> PathBuf {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("systemd")
        .join(name);
    let text = std::fs::read_to_string(&shipped).unwrap();
    assert!(
        text.contains("ExecStart=/usr/local/bin/sharepush "),
        "{name}: ExecStart is not the documented /usr/local/bin/sharepush"
    );
    let text = text.replace(
        "ExecStart=/usr/local/bin/sharepush ",
        &format!("ExecStart={} ", env!("CARGO_BIN_EXE_sharepush")),
    );
    let copy = dir.join(name);
    std::fs::write(&copy, text).unwrap();
    copy
}

/// The number in "Overall exposure level for X: 1.3 OK".
fn exposure(report: &str) -> Option<f64> {
    let line = report
        .lines()
        .find(|l| l.contains("Overall exposure level"))?;
    let after = line.rsplit_once(": ")?.1;
    after.split_whitespace().next()?.parse().ok()
}

fn check_unit(name: &str) {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let unit = checkable_copy(dir.path(), name);

    let out = Command::new(&analyze)
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "verify {name}: {stdout}\n{stderr}");
    // verify reports bad lines as warnings and still exits 0.
    assert!(
        stdout.trim().is_empty() && stderr.trim().is_empty(),
        "verify {name} complained:\n{stdout}\n{stderr}"
    );

    let out = Command::new(&analyze)
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("ignoring") && !stderr.contains("Invalid"),
        "security {name} ignored lines:\n{stderr}"
    );
    let score =
        exposure(&stdout).unwrap_or_else(|| panic!("no exposure level in:\n{stdout}\n{stderr}"));
    assert!(
        score <= MAX_EXPOSURE,
        "{name}: exposure {score} > {MAX_EXPOSURE}:\n{stdout}"
    );
    eprintln!("{name}: exposure {score}");
}

#[test]
fn the_service_unit_verifies_and_is_rated_ok() {
    check_unit("sharepush.service");
}

#[test]
fn the_instance_template_verifies_and_is_rated_ok() {
    check_unit("sharepush@.service");
}

#[test]
fn the_exposure_parser_reads_systemds_summary_line() {
    let report = "  NAME  DESCRIPTION  EXPOSURE\n✗ PrivateNetwork=  ...  0.5\n\n\
                  → Overall exposure level for sharepush.service: 1.3 OK 🙂\n";
    assert_eq!(exposure(report), Some(1.3));
    assert_eq!(exposure("no summary"), None);
}
