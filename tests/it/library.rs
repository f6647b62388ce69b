//! A document library deleted, or deleted and recreated under the same name
//! (a new drive id), between runs: the real `sharepush sync` binary against
//! the emulator's `recreate-library` / `delete-library` admin routes.

use std::path::{Path, PathBuf};
use std::process::Output;

use graph_emulator::{Handle, Options};

use crate::emu::{self, FOLDER, Sign};
use crate::support::{Fixture, text};

const SITE: &str = "https://contoso.sharepoint.com/sites/demo";

/// A config with job `docs` (folder `backup`) and job `other` (folder
/// `other`) on the same library, and a small tree for each.
fn two_jobs(fx: &Fixture, emu: &Handle) -> (PathBuf, Vec<(String, Vec<u8>)>) {
    let path = emu::write_config(fx, emu, Sign::Secret, "");
    let second = fx.path("second");
    std::fs::create_dir_all(&second).unwrap();
    std::fs::write(second.join("o.txt"), b"other job").unwrap();
    let mut config = std::fs::read_to_string(&path).unwrap();
    config.push_str(&format!(
        "\n[[job]]\nname = \"other\"\nsource = \"{}\"\nsite = \"{SITE}\"\n\
         library = \"Documents\"\nfolder = \"other\"\nschedule = \"@hourly\"\n",
        second.display()
    ));
    std::fs::write(&path, config).unwrap();
    let files = vec![
        ("a.txt".to_string(), b"alpha".to_vec()),
        ("empty.bin".to_string(), Vec::new()),
        ("sub/deeper/b.bin".to_string(), emu::content(700 * 1024, 7)),
    ];
    for (rel, bytes) in &files {
        emu::put(fx, rel, bytes);
    }
    (path, files)
}

async fn sync(config: &Path) -> Output {
    let config = config.to_path_buf();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_sharepush"))
            .arg("--config")
            .arg(&config)
            .arg("sync")
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn tree_paths(emu: &Handle) -> Vec<String> {
    emu.tree().into_iter().map(|e| e.path).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_library_gets_every_file_again_and_the_next_sync_sends_nothing() {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let (config, files) = two_jobs(&fx, &emu);
    let out = sync(&config).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    emu::assert_arrived(&emu, &files);
    let old = emu.drive_id();

    // An administrator deletes the library and makes a new one, same name.
    let new = emu
        .recreate_library(Some("/sites/demo"), "Documents")
        .unwrap();
    assert!(emu.tree().is_empty());

    let before = emu.requests().len();
    let out = sync(&config).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    // Every file of both jobs is in the new library, intact, with its mtime.
    emu::assert_arrived(&emu, &files);
    assert_eq!(
        tree_paths(&emu),
        [
            format!("{FOLDER}/a.txt"),
            format!("{FOLDER}/empty.bin"),
            format!("{FOLDER}/sub/deeper/b.bin"),
            "other/o.txt".to_string(),
        ]
    );
    assert_eq!(emu.read_file("other/o.txt").unwrap(), b"other job");
    assert!(stdout.contains("job docs: 3 uploaded"), "{stdout}");
    assert!(stdout.contains("job other: 1 uploaded"), "{stdout}");
    assert!(stdout.contains("was deleted and recreated"), "{stdout}");
    // One warning, naming the job, site, library and both drive ids.
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("was deleted and recreated"))
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    let w = warnings[0];
    for part in [
        "WARN",
        "docs",
        SITE,
        "Documents",
        old.as_str(),
        new.as_str(),
    ] {
        assert!(w.contains(part), "{part:?} missing from: {w}");
    }
    // One request went to the old drive: the stored delta link, which
    // found it gone; nothing after that.
    let to_old: Vec<_> = emu.requests()[before..]
        .iter()
        .filter(|r| r.path.contains(&old))
        .map(|r| (r.path.ends_with("/root/delta"), r.status))
        .collect();
    assert_eq!(to_old, [(true, 404)]);
    let store = sharepush::state::Store::open_read_only(&fx.state()).unwrap();
    assert_eq!(
        store.drive(SITE, "Documents").unwrap().unwrap().drive_id,
        new
    );
    drop(store);

    // The third sync uploads nothing.
    let before = emu.requests().len();
    let out = sync(&config).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("job docs: 0 uploaded"), "{stdout}");
    assert!(stdout.contains("job other: 0 uploaded"), "{stdout}");
    assert!(!stderr.contains("recreated"), "{stderr}");
    let extra = emu::requests_besides_delta(&emu, before);
    assert!(extra.is_empty(), "the third sync sent requests: {extra:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_library_fails_the_job_naming_it_until_it_exists_again() {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let (config, files) = two_jobs(&fx, &emu);
    let out = sync(&config).await;
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));

    emu.delete_library(None, "Documents").unwrap();
    emu::put(&fx, "later.txt", b"written while the library was gone");
    let out = sync(&config).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let why = format!("library \"Documents\" not found on site {SITE}");
    let tail = stdout.split("failed:\n").nth(1).expect("a failure list");
    assert!(tail.contains(&format!("job docs: {why}")), "{stdout}");
    assert!(tail.contains(&format!("job other: {why}")), "{stdout}");
    assert!(stderr.contains(&why), "{stderr}");
    // The change made meanwhile is recorded, waiting.
    let store = sharepush::state::Store::open_read_only(&fx.state()).unwrap();
    assert_eq!(
        store.file("docs", "later.txt").unwrap().unwrap().state,
        sharepush::state::FileState::Pending
    );
    drop(store);

    // Back (as a new library): everything goes up, the new file too.
    emu.recreate_library(None, "Documents").unwrap();
    let out = sync(&config).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    emu::assert_arrived(&emu, &files);
    assert_eq!(
        emu.read_file(&format!("{FOLDER}/later.txt")).unwrap(),
        b"written while the library was gone"
    );
    assert_eq!(emu.read_file("other/o.txt").unwrap(), b"other job");
}

/// A site URL copied from a browser spells a space as `%20`: the site is
/// found (its path was encoded a second time, `%2520`, so it never was).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_url_with_percent_escapes_is_found() {
    let emu = emu::start(Options {
        sites: vec![graph_emulator::SiteOptions {
            path: "/sites/Team Site".into(),
            libraries: vec!["Documents".into()],
        }],
        ..Options::default()
    })
    .await;
    let fx = Fixture::new();
    let config = emu::write_config(&fx, &emu, Sign::Secret, "");
    let text_before = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text_before.replace(SITE, "https://contoso.sharepoint.com/sites/Team%20Site"),
    )
    .unwrap();
    emu::put(&fx, "a.txt", b"alpha");
    let out = sync(&config).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_eq!(emu.read_file(&format!("{FOLDER}/a.txt")).unwrap(), b"alpha");
}
