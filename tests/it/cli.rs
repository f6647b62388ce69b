//! `sharepush check` and `sharepush scan` as an administrator runs them.

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use chrono::Offset as _;

use crate::support::{Fixture, text};

fn repo_file(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn scan_json(fx: &Fixture, config: &Path) -> serde_json::Value {
    let out = fx.sharepush(config, &["scan", "--json"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn check_lists_the_example_jobs() {
    let fx = Fixture::new();
    let out = fx.sharepush(&repo_file("config/example.toml"), &["check"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(stdout.contains("job finance-reports"), "{stdout}");
    // Next run times are listed for scheduled jobs, in the job's time zone
    // with its offset: 02:30 in Berlin (+01:00 or +02:00) on the next three
    // weekdays, whatever the zone of the machine running the test.
    assert!(
        stdout.contains("schedule */15 * * * * (time zone local): next "),
        "{stdout}"
    );
    let line = stdout
        .lines()
        .find(|l| l.contains("schedule 30 2 * * 1-5 (time zone Europe/Berlin): next "))
        .unwrap_or_else(|| panic!("{stdout}"));
    let next: Vec<&str> = line.split("next ").nth(1).unwrap().split(", ").collect();
    assert_eq!(next.len(), 3, "{line}");
    for t in next {
        let t = chrono::DateTime::parse_from_rfc3339(t).unwrap();
        let berlin = t.with_timezone(&chrono_tz::Europe::Berlin);
        assert_eq!(t.offset(), &berlin.offset().fix(), "{t}");
        assert_eq!(t.format("%H:%M").to_string(), "02:30", "{t}");
        assert!(t > chrono::Utc::now(), "{t}");
    }
}

#[test]
fn check_reports_every_problem_with_its_line_and_exits_78() {
    let fx = Fixture::new();
    let config = fx.path("bad.toml");
    fs::write(
        &config,
        r#"[auth]
tenant = "contoso.onmicrosoft.com"
client_id = "00000000-0000-0000-0000-000000000000"
mode = "device_code"

[defaults]
fragment_size = "1MiB"

[[job]]
name = "reports"
source = "relative/reports"
site = "https://contoso.sharepoint.com/sites/Finance"
schedule = "61 * * * *"
colour = "blue"
"#,
    )
    .unwrap();
    let out = fx.sharepush(&config, &["check"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(78),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    for (line, needle) in [
        (7, "fragment_size"),
        (11, "source"),
        (13, "schedule"),
        (14, "colour"),
    ] {
        let hit = stderr
            .lines()
            .any(|l| l.contains(&format!("bad.toml:{line}:")) && l.contains(needle));
        assert!(hit, "no error naming {needle} at line {line}:\n{stderr}");
    }
}

#[test]
fn scan_reports_new_then_nothing_then_exactly_the_edited_file() {
    let fx = Fixture::new();
    let config = fx.write_config();
    let src = fx.source();
    // Written an hour "ago": a file modified within two seconds of a scan
    // is racily clean and hashed again by the next scan (see scan.rs).
    let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
    for d in 0..100 {
        let dir = src.join(format!("d{d:03}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..100 {
            let path = dir.join(format!("f{f:03}.txt"));
            fs::write(&path, format!("file {d} {f}\n")).unwrap();
            let file = fs::File::options().write(true).open(&path).unwrap();
            file.set_modified(an_hour_ago).unwrap();
        }
    }

    let first = scan_json(&fx, &config);
    let job = &first["jobs"][0];
    assert_eq!(job["name"], "docs");
    assert_eq!(job["new"], 10_000);
    assert_eq!(job["changed"], 0);
    assert_eq!(job["hashed_files"], 10_000);

    let second = scan_json(&fx, &config);
    let job = &second["jobs"][0];
    assert_eq!(job["new"], 0);
    assert_eq!(job["changed"], 0);
    assert_eq!(job["unchanged"], 10_000);
    assert_eq!(
        job["hashed_bytes"], 0,
        "an unchanged rescan must hash nothing"
    );

    let edited = src.join("d042/f007.txt");
    let f = fs::File::create(&edited).unwrap();
    use std::io::Write;
    (&f).write_all(b"edited\n").unwrap();
    f.set_modified(SystemTime::now() + Duration::from_secs(3))
        .unwrap();
    drop(f);

    let third = scan_json(&fx, &config);
    let job = &third["jobs"][0];
    assert_eq!(job["new"], 0);
    assert_eq!(job["changed"], 1);
    assert_eq!(job["changed_paths"], serde_json::json!(["d042/f007.txt"]));
    assert_eq!(job["hashed_files"], 1);
    assert_eq!(job["hashed_bytes"], 7);
}

#[test]
fn a_second_process_on_the_same_state_dir_fails_fast_naming_the_holder() {
    let fx = Fixture::new();
    let config = fx.write_config();
    // This test process holds the state directory, as a running daemon would.
    let _held = sharepush::state::Store::open(&fx.state()).expect("open store");
    let out = fx.sharepush(&config, &["scan"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(75),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(
        stderr.contains(&format!("pid {}", std::process::id())),
        "the lock message names the holder's pid: {stderr}"
    );
}

/// `--state-dir` (what the shipped units pass) meets the same rule as
/// `[daemon] state_dir`: never inside a job's source, where the job would
/// back up its own database. Refused before anything is created.
#[test]
fn a_state_dir_flag_inside_a_source_is_refused() {
    let fx = Fixture::new();
    let config = fx.write_config();
    let inside = fx.source().join(".sharepush-state");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sharepush"))
        .arg("--config")
        .arg(&config)
        .arg("--state-dir")
        .arg(&inside)
        .arg("scan")
        .env_remove("SHAREPUSH_STATE_DIR")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(78), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("key `--state-dir`") && stderr.contains("inside this job's source"),
        "{stderr}"
    );
    assert!(!inside.exists(), "nothing was created");
}

#[test]
fn scan_of_an_unknown_job_is_a_usage_error() {
    let fx = Fixture::new();
    let config = fx.write_config();
    let out = fx.sharepush(&config, &["scan", "nope"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no job named \"nope\""), "{stderr}");
    assert!(
        stderr.contains("docs"),
        "lists the jobs there are: {stderr}"
    );
}

/// The README's systemd setup names the client secret as a credential
/// (`client_secret_file = "client-secret"`), which only the service can
/// resolve. From a shell `check` and `status` warn and check the rest;
/// commands that would sign in still refuse the config.
#[test]
fn a_credential_name_is_a_warning_for_check_and_status_outside_the_service() {
    let fx = Fixture::new();
    let config = fx.path("config.toml");
    fs::write(
        &config,
        format!(
            "[auth]\ntenant = \"contoso.onmicrosoft.com\"\n\
             client_id = \"11111111-2222-3333-4444-555555555555\"\n\
             mode = \"client_credentials\"\nclient_secret_file = \"client-secret\"\n\n\
             [[job]]\nname = \"docs\"\nsource = \"{}\"\n\
             site = \"https://contoso.sharepoint.com/sites/demo\"\n\
             library = \"Documents\"\nschedule = \"@daily\"\n",
            fx.source().display()
        ),
    )
    .unwrap();
    let out = fx.sharepush(&config, &["check"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("warning:") && stdout.contains("names a systemd credential"),
        "{stdout}"
    );
    let out = fx.sharepush(&config, &["status"]);
    let (stdout, stderr) = text(&out);
    assert!(!stderr.contains("showing the state only"), "{stderr}");
    assert!(stdout.contains("job docs"), "{stdout}");
    let out = fx.sharepush(&config, &["sync", "--dry-run"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("CREDENTIALS_DIRECTORY is not set"),
        "{stderr}"
    );
}

/// Without `max_file_size` a job still skips what SharePoint cannot store
/// (250 GiB), as the README and config/example.toml say; the error for a
/// bad value must say the same, not promise "no limit".
#[test]
fn a_bad_max_file_size_names_sharepoints_limit_as_the_default() {
    let fx = Fixture::new();
    let config = fx.write_config();
    let text_of = fs::read_to_string(&config).unwrap();
    fs::write(
        &config,
        text_of.replace("[[job]]", "[defaults]\nmax_file_size = 0\n\n[[job]]"),
    )
    .unwrap();
    let out = fx.sharepush(&config, &["check"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(78), "{stdout}\n{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains("max_file_size"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        line.contains("leave the key out for SharePoint's own limit (250 GiB per file)"),
        "{line}"
    );
    assert!(!line.contains("no limit"), "{line}");
}

/// `status` is documented as a monitoring check: its help names every exit
/// code it returns (README "Commands").
#[test]
fn status_help_names_each_exit_code_status_returns() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sharepush"))
        .args(["status", "--help"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let help = stdout.split_whitespace().collect::<Vec<_>>().join(" ");
    for code in ["Exit 0 ", " 1 when", " 75 when", " 77 when", " 78 when"] {
        assert!(help.contains(code), "no {code:?} in: {help}");
    }
}
