//! Remote reconcile against the Graph emulator over real HTTP (issue 6):
//! adoption after a lost state database, remote deletes and edits under
//! each policy, 410 from delta, a delta that breaks between pages, and a
//! local rename done as one server-side move.

use graph_emulator::{Handle, Options};
use sharepush::config::Config;
use sharepush::job::JobReport;
use sharepush::state::{FileState, RemoteChangeKind, Store};

use crate::emu::{self, FOLDER, MIB, http, item_url, other_token};
use crate::support::Fixture;

/// Deletes `rel` (under the job folder) through Graph as another user.
async fn remote_delete(emu: &Handle, rel: &str) {
    let r = http()
        .delete(item_url(emu, rel, ""))
        .bearer_auth(other_token(emu))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204, "delete {rel}");
}

fn uploads_since(emu: &Handle, from: usize) -> Vec<String> {
    emu.requests()[from..]
        .iter()
        .filter(|r| {
            r.path.ends_with("/createUploadSession")
                || (r.method == "PUT" && r.path.ends_with("/content"))
        })
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

fn remote_content(emu: &Handle, rel: &str) -> Option<Vec<u8>> {
    emu.read_file(&format!("{FOLDER}/{rel}"))
}

async fn setup(opts: Options, job_lines: &str) -> (Handle, Fixture, Config) {
    let emu = emu::start(opts).await;
    let fx = Fixture::new();
    let config = emu::config_with_job_lines(&fx, &emu, job_lines);
    (emu, fx, config)
}

async fn sync(config: &Config) -> JobReport {
    let mut reports = emu::sync(config, &emu::fast_policy()).await;
    emu::assert_clean(&reports);
    reports.remove(0)
}

fn store(fx: &Fixture) -> Store {
    Store::open(&fx.state()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_state_database_over_an_uploaded_tree_uploads_nothing() {
    let (emu, fx, config) = setup(Options::default(), "").await;
    let files = emu::acceptance_tree(&fx, false);
    let first = sync(&config).await;
    assert_eq!(first.uploaded, files.len() as u64);

    std::fs::remove_dir_all(fx.state()).unwrap();
    std::fs::create_dir_all(fx.state()).unwrap();
    let before = emu.requests().len();
    let second = sync(&config).await;
    assert_eq!(second.uploaded, 0, "{second:?}");
    assert_eq!(
        uploads_since(&emu, before),
        Vec::<String>::new(),
        "no upload requests"
    );
    let r = second.reconcile.expect("reconciled");
    assert!(r.walked);
    assert_eq!(r.adopted, files.len() as u64);
    let s = store(&fx);
    let tree = emu.tree();
    for (rel, _) in &files {
        let rec = s.file("docs", rel).unwrap().expect("row");
        let remote = tree
            .iter()
            .find(|e| e.path == format!("{FOLDER}/{rel}"))
            .unwrap();
        assert!(
            matches!(&rec.state, FileState::Synced { item_id: Some(id), .. } if *id == remote.id),
            "{rel}: {:?}",
            rec.state
        );
    }
    drop(s);
    // And the run after that is quiet too.
    let third = sync(&config).await;
    assert_eq!((third.uploaded, third.up_to_date), (0, files.len() as u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_delete_is_restored_by_default() {
    let (emu, fx, config) = setup(Options::default(), "").await;
    let files = emu::acceptance_tree(&fx, false);
    sync(&config).await;
    remote_delete(&emu, "one.bin").await;
    remote_delete(&emu, "nested/deeper").await;
    assert!(remote_content(&emu, "one.bin").is_none());

    let report = sync(&config).await;
    assert_eq!(report.uploaded, 3, "{report:?}");
    emu::assert_arrived(&emu, &files);
    let changes = store(&fx).remote_changes("docs").unwrap();
    assert_eq!(changes.len(), 3, "{changes:?}");
    assert!(
        changes.iter().all(
            |c| c.kind == RemoteChangeKind::Deleted && c.outcome.as_deref() == Some("restored")
        ),
        "{changes:?}"
    );
    let again = sync(&config).await;
    assert_eq!(again.uploaded, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_delete_is_forgotten_with_forget() {
    let (emu, fx, config) = setup(Options::default(), "on_remote_delete = \"forget\"").await;
    emu::acceptance_tree(&fx, false);
    sync(&config).await;
    remote_delete(&emu, "one.bin").await;
    let report = sync(&config).await;
    assert_eq!(report.uploaded, 0, "{report:?}");
    assert!(remote_content(&emu, "one.bin").is_none());
    let report = sync(&config).await;
    assert_eq!(report.uploaded, 0);
    assert!(remote_content(&emu, "one.bin").is_none());
    // A local edit goes up again.
    emu::put(&fx, "one.bin", b"new");
    let report = sync(&config).await;
    assert_eq!(report.uploaded, 1);
    assert_eq!(remote_content(&emu, "one.bin").unwrap(), b"new");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_edit_is_overwritten_by_default_once() {
    let (emu, fx, config) = setup(Options::default(), "").await;
    let files = emu::acceptance_tree(&fx, false);
    sync(&config).await;
    emu::remote_put(&emu, "nested/deeper/deepest/note.txt", b"their edit").await;
    let report = sync(&config).await;
    assert_eq!(report.uploaded, 1, "{report:?}");
    emu::assert_arrived(&emu, &files);
    let changes = store(&fx).remote_changes("docs").unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].outcome.as_deref(), Some("overwritten"));
    // Our own upload is not a remote edit: no loop.
    for _ in 0..2 {
        let again = sync(&config).await;
        assert_eq!(again.uploaded, 0, "{again:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_overwrite_of_a_remote_edit_is_logged() {
    let (emu, fx, config) = setup(Options::default(), "").await;
    emu::put(&fx, "report.txt", b"ours");
    sync(&config).await;
    emu::remote_put(&emu, "report.txt", b"their edit").await;
    // The real binary, for the log line an administrator sees.
    let out = fx.sharepush(&config.path, &["sync"]);
    let (_, err) = crate::support::text(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("edited in SharePoint by someone else; overwriting it with the local copy")
            && err.contains("report.txt")
            && err.contains("version history"),
        "{err}"
    );
    assert_eq!(
        remote_content(&emu, "report.txt").as_deref(),
        Some(&b"ours"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_edit_is_left_as_a_conflict_with_skip() {
    let (emu, fx, config) = setup(Options::default(), "on_remote_change = \"skip\"").await;
    emu::acceptance_tree(&fx, false);
    sync(&config).await;
    emu::remote_put(&emu, "one.bin", b"theirs").await;
    let report = sync(&config).await;
    assert_eq!(report.uploaded, 0);
    assert_eq!(remote_content(&emu, "one.bin").unwrap(), b"theirs");
    // Even a local edit does not overwrite theirs while the conflict stands,
    // and the dry run says so (it listed the upload).
    emu::put(&fx, "one.bin", b"ours, edited");
    let out = fx.sharepush(&config.path, &["sync", "--dry-run"]);
    let (stdout, stderr) = crate::support::text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("upload 0 file(s)")
            && stdout.contains("  skipped  one.bin (edited in SharePoint by someone else; held"),
        "{stdout}"
    );
    let report = sync(&config).await;
    assert_eq!(report.uploaded, 0, "{report:?}");
    assert!(report.skipped.iter().any(|(p, _)| p == "one.bin"));
    assert_eq!(remote_content(&emu, "one.bin").unwrap(), b"theirs");
    let conflicts = store(&fx).conflicts(None).unwrap();
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0].path, "one.bin");

    // `status` lists the conflict and the library's delta link.
    let st = store(&fx);
    let report = sharepush::status::build(Some(&config), &fx.state(), Some(&st)).unwrap();
    drop(st);
    let paths: Vec<_> = report.jobs[0].conflicts.iter().map(|c| &c.path).collect();
    assert_eq!(paths, ["one.bin"]);
    assert_eq!(report.drives.len(), 1);
    assert!(report.drives[0].delta_link, "{:?}", report.drives);
    assert!(
        report.drives[0].remote_changes_seen >= 1,
        "{:?}",
        report.drives
    );
    let mut text = Vec::new();
    report.write_text(&mut text);
    let text = String::from_utf8(text).unwrap();
    assert!(text.contains("conflicts (edited in SharePoint"), "{text}");
    assert!(text.contains("    one.bin (seen "), "{text}");
    assert!(
        text.contains("remote change(s) to our files seen"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_edit_stays_and_ours_goes_beside_it_with_keep_both() {
    // Mirroring too: the copy is not a local file, and must survive it.
    let (emu, fx, config) = setup(
        Options::default(),
        "on_remote_change = \"keep-both\"\ndelete = \"mirror\"",
    )
    .await;
    emu::acceptance_tree(&fx, false);
    sync(&config).await;
    let item = |path: &str| emu.tree().into_iter().find(|e| e.path == path);
    let original = format!("{FOLDER}/nested/ten.bin");
    let their_id = item(&original).unwrap().id;
    let ours = std::fs::read(fx.source().join("nested/ten.bin")).unwrap();
    emu::remote_put(&emu, "nested/ten.bin", b"their edit").await;

    let before = emu.requests().len();
    let report = sync(&config).await;
    assert_eq!(report.uploaded, 1, "{report:?}");
    assert_eq!(uploads_since(&emu, before).len(), 1, "exactly one upload");
    // Theirs is untouched: same item, same path, their bytes.
    let theirs = item(&original).expect("their version stays at its path");
    assert_eq!(theirs.id, their_id);
    assert_eq!(emu.read_file(&original).unwrap(), b"their edit");
    // Ours is beside it under a conflict name, in the same folder.
    let copies: Vec<_> = emu
        .tree()
        .into_iter()
        .filter(|e| e.path.contains("(sharepush conflict "))
        .collect();
    assert_eq!(copies.len(), 1, "{copies:?}");
    let copy = &copies[0];
    assert!(
        copy.path
            .starts_with(&format!("{FOLDER}/nested/ten (sharepush conflict "))
            && copy.path.ends_with(").bin"),
        "{}",
        copy.path
    );
    assert_eq!(emu.read_file(&copy.path).unwrap(), ours);
    let s = store(&fx);
    let recorded = s.conflict_copies("docs").unwrap();
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(format!("{FOLDER}/{}", recorded[0].path), copy.path);
    assert_eq!(recorded[0].source_path, "nested/ten.bin");
    assert_eq!(recorded[0].item_id, copy.id);
    // The path's row now refers to their item as its baseline.
    let row = s.file("docs", "nested/ten.bin").unwrap().unwrap();
    assert!(
        matches!(&row.state, FileState::Synced { item_id: Some(id), .. } if *id == their_id),
        "{:?}",
        row.state
    );
    let changes = s.remote_changes("docs").unwrap();
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0].outcome.as_deref(), Some("kept-both"));
    drop(s);
    // `status` names the copy, as JSON and as text.
    let config_path = fx.path("config.toml");
    let out = fx.sharepush(&config_path, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed = &status["jobs"][0]["conflict_copies"];
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{status}");
    assert_eq!(
        format!("{FOLDER}/{}", listed[0]["path"].as_str().unwrap()),
        copy.path
    );
    assert_eq!(listed[0]["copy_of"], "nested/ten.bin");
    let out = fx.sharepush(&config_path, &["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("conflict copies") && text.contains("(ours of nested/ten.bin, "),
        "{text}"
    );

    // Nothing loops: no upload, no new conflict, the copy is not mirrored away.
    for _ in 0..2 {
        let before = emu.requests().len();
        let again = sync(&config).await;
        assert_eq!(again.uploaded, 0, "{again:?}");
        assert_eq!(again.deleted, 0, "{again:?}");
        assert_eq!(uploads_since(&emu, before), Vec::<String>::new());
        assert_eq!(again.reconcile.expect("reconciled").remote_changes, 0);
        assert_eq!(store(&fx).remote_changes("docs").unwrap().len(), 1);
        assert_eq!(emu.read_file(&copy.path).unwrap(), ours);
        assert_eq!(emu.read_file(&original).unwrap(), b"their edit");
    }

    // A later local edit goes to the path as a normal upload (a new version
    // of their item; SharePoint keeps theirs in its history), no new copy.
    emu::put(&fx, "nested/ten.bin", b"ours, edited later");
    let before = emu.requests().len();
    let report = sync(&config).await;
    assert_eq!(report.uploaded, 1, "{report:?}");
    assert_eq!(uploads_since(&emu, before).len(), 1);
    assert_eq!(
        emu.read_file(&original).unwrap(),
        b"ours, edited later".to_vec()
    );
    assert_eq!(item(&original).unwrap().id, their_id);
    assert_eq!(
        emu.tree()
            .iter()
            .filter(|e| e.path.contains("(sharepush conflict "))
            .count(),
        1
    );
    let again = sync(&config).await;
    assert_eq!(again.uploaded, 0, "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_both_picks_a_free_name_when_the_conflict_name_is_taken() {
    let (emu, fx, config) = setup(Options::default(), "on_remote_change = \"keep-both\"").await;
    emu::acceptance_tree(&fx, false);
    sync(&config).await;
    // Two remote edits of the same file on the same day: two copies.
    for (round, theirs) in [b"theirs 1".as_slice(), b"theirs 2"]
        .into_iter()
        .enumerate()
    {
        emu::put(&fx, "one.bin", format!("ours {round}").as_bytes());
        emu::remote_put(&emu, "one.bin", theirs).await;
        let report = sync(&config).await;
        assert_eq!(report.uploaded, 1, "{report:?}");
        assert_eq!(remote_content(&emu, "one.bin").unwrap(), theirs);
    }
    let copies: Vec<_> = emu
        .tree()
        .into_iter()
        .filter(|e| {
            e.path
                .starts_with(&format!("{FOLDER}/one (sharepush conflict "))
        })
        .map(|e| e.path)
        .collect();
    assert_eq!(copies.len(), 2, "{copies:?}");
    let (second, first): (Vec<_>, Vec<_>) = copies.iter().partition(|p| p.ends_with(" 2).bin"));
    assert_eq!((first.len(), second.len()), (1, 1), "{copies:?}");
    assert_eq!(emu.read_file(first[0]).unwrap(), b"ours 0");
    assert_eq!(emu.read_file(second[0]).unwrap(), b"ours 1");
    assert_eq!(store(&fx).conflict_copies("docs").unwrap().len(), 2);
    let row = store(&fx).file("docs", "one.bin").unwrap();
    let before = emu.requests().len();
    let again = sync(&config).await;
    assert_eq!(
        again.uploaded,
        0,
        "{again:?} {row:?} {:?}",
        &emu.requests()[before..]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_410_recovers_without_uploading_again() {
    let (emu, fx, config) = setup(Options::default(), "").await;
    let files = emu::acceptance_tree(&fx, false);
    sync(&config).await;
    remote_delete(&emu, "one.bin").await;
    emu.add_faults("delta:410:count=1").unwrap();
    let before = emu.requests().len();
    let report = sync(&config).await;
    let r = report.reconcile.clone().expect("reconciled");
    assert!(r.resynced && r.walked, "{r:?}");
    // Only the file deleted remotely went up again.
    assert_eq!(report.uploaded, 1, "{report:?}");
    assert_eq!(uploads_since(&emu, before).len(), 1);
    emu::assert_arrived(&emu, &files);
    let again = sync(&config).await;
    assert_eq!(again.uploaded, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_broken_between_pages_is_repeated_from_the_stored_link() {
    let (emu, fx, config) = setup(
        Options {
            page_size: 2,
            ..Options::default()
        },
        "",
    )
    .await;
    let files = emu::acceptance_tree(&fx, false);
    sync(&config).await;
    let link_before = store(&fx)
        .drive_statuses()
        .unwrap()
        .remove(0)
        .delta_updated_at;
    assert!(link_before.is_some());
    // Five changes: three delta pages of two.
    remote_delete(&emu, "one.bin").await;
    remote_delete(&emu, "empty.bin").await;
    emu::remote_put(&emu, "nested/ten.bin", b"x").await;
    remote_delete(&emu, "nested/deeper/k320.bin").await;
    emu::remote_put(&emu, "nested/deeper/deepest/note.txt", b"y").await;
    // The second page's connection drops every time (more than retries).
    emu.add_faults("delta:drop:after=1:count=1000").unwrap();
    let reports = emu::sync(&config, &emu::fast_policy()).await;
    assert!(reports[0].reconcile.is_none(), "delta failed mid-way");
    // The link was not advanced past the pages not seen.
    let s = store(&fx);
    let d = s.drive_statuses().unwrap().remove(0);
    assert!(d.has_delta_link);
    drop(s);
    emu.clear_faults();
    let report = sync(&config).await;
    assert!(report.reconcile.is_some());
    emu::assert_arrived(&emu, &files);
    let again = sync(&config).await;
    assert_eq!(again.uploaded, 0, "{again:?}");
    let changes = store(&fx).remote_changes("docs").unwrap();
    assert_eq!(changes.len(), 5, "{changes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_takes_in_the_echo_of_its_own_uploads_so_the_next_delta_is_one_request() {
    let (emu, fx, config) = setup(
        Options {
            page_size: 2,
            ..Options::default()
        },
        "",
    )
    .await;
    let files = emu::acceptance_tree(&fx, false);
    let first = sync(&config).await;
    assert_eq!(first.uploaded, files.len() as u64);
    // The next run (or the daemon's idle reconcile) finds nothing to page
    // through: the uploads' own delta entries were taken in by the first.
    let before = emu.requests().len();
    let second = sync(&config).await;
    let deltas = emu.requests()[before..]
        .iter()
        .filter(|r| r.path.contains("delta"))
        .count();
    let r = second.reconcile.expect("reconciled");
    assert_eq!((deltas, r.delta_items), (1, 0), "{r:?}");
    assert_eq!(r.remote_changes, 0);
    assert!(store(&fx).remote_changes("docs").unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renaming_a_large_file_is_one_move_and_no_upload() {
    let (emu, fx, config) = setup(Options::default(), "").await;
    let bytes = emu::content(50 * MIB, 7);
    emu::put(&fx, "big.bin", &bytes);
    sync(&config).await;
    std::fs::create_dir_all(fx.source().join("moved")).unwrap();
    std::fs::rename(
        fx.source().join("big.bin"),
        fx.source().join("moved/renamed.bin"),
    )
    .unwrap();
    let before = emu.requests().len();
    let report = sync(&config).await;
    assert_eq!(report.uploaded, 0, "{report:?}");
    assert_eq!(
        report.moved,
        vec![("big.bin".to_string(), "moved/renamed.bin".to_string())]
    );
    assert_eq!(uploads_since(&emu, before), Vec::<String>::new());
    let patches: Vec<_> = emu.requests()[before..]
        .iter()
        .filter(|r| r.method == "PATCH")
        .cloned()
        .collect();
    assert_eq!(patches.len(), 1, "{patches:?}");
    assert!(remote_content(&emu, "big.bin").is_none());
    assert!(remote_content(&emu, "moved/renamed.bin").unwrap() == bytes);
    let again = sync(&config).await;
    assert_eq!((again.uploaded, again.up_to_date), (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirroring_a_local_delete_never_deletes_an_edit_the_policy_kept() {
    for policy in ["skip", "keep-both"] {
        let (emu, fx, config) = setup(
            Options::default(),
            &format!("on_remote_change = \"{policy}\"\ndelete = \"mirror\""),
        )
        .await;
        emu::acceptance_tree(&fx, false);
        sync(&config).await;
        // They edit it in SharePoint; we delete it locally, both before the
        // next run (keep-both), or the conflict already stands (skip).
        emu::remote_put(&emu, "one.bin", b"their edit").await;
        if policy == "skip" {
            sync(&config).await;
            assert_eq!(store(&fx).conflicts(None).unwrap().len(), 1);
        }
        std::fs::remove_file(fx.source().join("one.bin")).unwrap();
        sync(&config).await;
        assert_eq!(
            remote_content(&emu, "one.bin").as_deref(),
            Some(&b"their edit"[..]),
            "{policy}: their edit stays"
        );
        let st = store(&fx);
        assert!(
            st.file("docs", "one.bin").unwrap().is_none(),
            "{policy}: forgotten"
        );
        assert!(
            st.conflicts(None).unwrap().is_empty(),
            "{policy}: no conflict left"
        );
        drop(st);
        // A new local file at the path is ours again, not held by the old conflict.
        emu::put(&fx, "one.bin", b"ours, new");
        if policy == "skip" {
            let report = sync(&config).await;
            assert!(report.skipped.is_empty(), "{policy}: {report:?}");
        }
    }
}

/// Renames or moves `rel` (under the job folder) through Graph as another
/// user: `body` is the PATCH (`name`, `parentReference`).
async fn remote_patch(emu: &Handle, rel: &str, body: serde_json::Value) {
    let r = http()
        .patch(item_url(emu, rel, ""))
        .bearer_auth(other_token(emu))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "patch {rel}: {}", r.status());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_or_move_by_someone_else_empties_the_path_it_backed_up() {
    let (emu, fx, config) = setup(Options::default(), "delete = \"mirror\"").await;
    emu::put(&fx, "a.txt", b"alpha");
    emu::put(&fx, "sub/b.txt", b"bravo");
    emu::put(&fx, "sub/c.txt", b"charlie");
    emu::put(&fx, "d.txt", b"delta");
    assert_eq!(sync(&config).await.uploaded, 4);

    // Someone renames a file in place, moves another into a folder of
    // theirs, and renames one of our folders.
    remote_patch(&emu, "a.txt", serde_json::json!({"name": "a (theirs).txt"})).await;
    let theirs = http()
        .post(format!(
            "{}/drives/{}/root/children",
            emu.graph_url(),
            emu.drive_id()
        ))
        .bearer_auth(other_token(&emu))
        .json(&serde_json::json!({"name": "theirs", "folder": {}}))
        .send()
        .await
        .unwrap();
    assert!(theirs.status().is_success());
    let theirs: serde_json::Value = theirs.json().await.unwrap();
    remote_patch(
        &emu,
        "d.txt",
        serde_json::json!({"parentReference": {"id": theirs["id"]}}),
    )
    .await;
    remote_patch(&emu, "sub", serde_json::json!({"name": "sub-old"})).await;

    // For this backup each path is empty now: restored (the default), and
    // what they moved stays where they put it.
    let report = sync(&config).await;
    assert_eq!(report.uploaded, 4, "{report:?}");
    for (rel, bytes) in [
        ("a.txt", &b"alpha"[..]),
        ("sub/b.txt", b"bravo"),
        ("sub/c.txt", b"charlie"),
        ("d.txt", b"delta"),
        ("a (theirs).txt", b"alpha"),
        ("sub-old/b.txt", b"bravo"),
    ] {
        assert_eq!(remote_content(&emu, rel).as_deref(), Some(bytes), "{rel}");
    }
    assert_eq!(
        emu.read_file("theirs/d.txt").as_deref(),
        Some(&b"delta"[..])
    );
    let changes = store(&fx).remote_changes("docs").unwrap();
    assert_eq!(changes.len(), 4, "{changes:?}");
    assert!(
        changes.iter().all(
            |c| c.kind == RemoteChangeKind::Deleted && c.outcome.as_deref() == Some("restored")
        ),
        "{changes:?}"
    );
    let again = sync(&config).await;
    assert_eq!((again.uploaded, again.up_to_date), (0, 4), "{again:?}");

    // Mirror deletes what is at our paths, never what they moved away.
    for rel in ["a.txt", "d.txt", "sub/b.txt"] {
        std::fs::remove_file(fx.source().join(rel)).unwrap();
    }
    sync(&config).await;
    for rel in ["a.txt", "d.txt", "sub/b.txt"] {
        assert!(remote_content(&emu, rel).is_none(), "{rel} mirrored");
    }
    assert_eq!(
        remote_content(&emu, "a (theirs).txt").as_deref(),
        Some(&b"alpha"[..])
    );
    assert_eq!(
        emu.read_file("theirs/d.txt").as_deref(),
        Some(&b"delta"[..])
    );
    assert_eq!(
        remote_content(&emu, "sub-old/b.txt").as_deref(),
        Some(&b"bravo"[..])
    );
}

/// Our local edit cannot go up (the library is full for a moment), and
/// meanwhile someone edits the file in SharePoint; the next run learns it
/// from the delta, or with `walk` from a walk of the folder (after a 410).
async fn edited_while_waiting(policy: &str, walk: bool) -> (Handle, Fixture, Config, JobReport) {
    let (emu, fx, config) = setup(
        Options::default(),
        &format!("on_remote_change = \"{policy}\""),
    )
    .await;
    emu::put(&fx, "a.txt", b"ours v1");
    assert_eq!(sync(&config).await.uploaded, 1);
    emu::put(&fx, "a.txt", b"ours, edited locally");
    emu.add_faults("upload:507:count=1").unwrap();
    let reports = emu::sync(&config, &emu::fast_policy()).await;
    assert!(reports[0].quota_full.is_some(), "{:?}", reports[0]);
    assert_eq!(
        remote_content(&emu, "a.txt").as_deref(),
        Some(&b"ours v1"[..])
    );
    emu::remote_put(&emu, "a.txt", b"their edit").await;
    if walk {
        emu.add_faults("delta:410:count=1").unwrap();
    }
    let report = sync(&config).await;
    assert_eq!(
        report.reconcile.as_ref().unwrap().walked,
        walk,
        "{report:?}"
    );
    let changes = store(&fx).remote_changes("docs").unwrap();
    assert_eq!(changes.len(), 1, "{policy}: {changes:?}");
    assert_eq!(
        (changes[0].path.as_str(), changes[0].kind),
        ("a.txt", RemoteChangeKind::Edited),
        "{policy}"
    );
    (emu, fx, config, report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_made_while_our_change_waits_to_go_up_meets_the_policy() {
    // `skip`: their edit stays, ours is held as a conflict.
    let (emu, fx, config, report) = edited_while_waiting("skip", false).await;
    assert_eq!(report.uploaded, 0, "{report:?}");
    assert_eq!(store(&fx).conflicts(None).unwrap().len(), 1);
    let again = sync(&config).await;
    assert_eq!(again.uploaded, 0);
    assert_eq!(
        remote_content(&emu, "a.txt").as_deref(),
        Some(&b"their edit"[..])
    );

    // `keep-both`: theirs stays at the path, ours goes up beside it.
    let (emu, fx, config, report) = edited_while_waiting("keep-both", false).await;
    assert_eq!(report.uploaded, 1, "{report:?}");
    assert_eq!(
        remote_content(&emu, "a.txt").as_deref(),
        Some(&b"their edit"[..])
    );
    let copies = store(&fx).conflict_copies("docs").unwrap();
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert_eq!(
        remote_content(&emu, &copies[0].path).as_deref(),
        Some(&b"ours, edited locally"[..])
    );
    assert_eq!(sync(&config).await.uploaded, 0);

    // `overwrite` (the default): ours goes up, as the log says; theirs is
    // in the file's version history.
    let (emu, _fx, _config, report) = edited_while_waiting("overwrite", false).await;
    assert_eq!(report.uploaded, 1, "{report:?}");
    assert_eq!(
        remote_content(&emu, "a.txt").as_deref(),
        Some(&b"ours, edited locally"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_walk_after_410_also_sees_an_edit_made_while_our_change_waits() {
    let (emu, fx, config, report) = edited_while_waiting("skip", true).await;
    assert_eq!(report.uploaded, 0, "{report:?}");
    assert_eq!(store(&fx).conflicts(None).unwrap().len(), 1);
    assert_eq!(sync(&config).await.uploaded, 0);
    assert_eq!(
        remote_content(&emu, "a.txt").as_deref(),
        Some(&b"their edit"[..])
    );
}
