//! `sharepush sync` against the Graph emulator over real HTTP: the
//! uploader's acceptance tests (issue 4).

use std::time::Duration;

use graph_emulator::Options;
use sharepush::state::FileState;

use crate::emu::{self, FOLDER, MIB, Sign};
use crate::support::{Fixture, text};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_arrives_intact_with_mtimes_and_a_second_sync_sends_nothing() {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let config = emu::load(&emu::write_config(&fx, &emu, Sign::Secret, ""));
    let files = emu::acceptance_tree(&fx, true);

    let reports = emu::sync(&config, &emu::fast_policy()).await;
    emu::assert_clean(&reports);
    assert_eq!(reports[0].uploaded, files.len() as u64, "{:?}", reports[0]);
    assert_eq!(
        reports[0].bytes,
        files.iter().map(|(_, b)| b.len() as u64).sum::<u64>()
    );
    emu::assert_arrived(&emu, &files);

    // Every non-empty file went through one session; the empty one by PUT.
    let log = emu.requests();
    let sessions = log
        .iter()
        .filter(|r| r.path.ends_with("/createUploadSession"))
        .count();
    assert_eq!(sessions, files.len() - 1);
    assert!(
        log.iter()
            .any(|r| r.method == "PUT" && r.path.ends_with("empty.bin:/content")),
        "zero-byte file by simple upload"
    );
    assert_eq!(emu.throttle_violations(), 0);

    let before = emu.requests().len();
    let reports = emu::sync(&config, &emu::fast_policy()).await;
    emu::assert_clean(&reports);
    assert_eq!(reports[0].uploaded, 0);
    assert_eq!(reports[0].up_to_date, files.len() as u64);
    // Only the drive's delta (remote changes since the last run) is asked.
    let extra = emu::requests_besides_delta(&emu, before);
    assert!(extra.is_empty(), "the second sync sent requests: {extra:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_errors_and_dropped_connections_do_not_harm_the_tree() {
    let faults = [
        "seed=42",
        // 10% 429 (half with Retry-After), 5% 503, on every route but tokens.
        "graph:429:rate=0.05:retry-after=1",
        "upload:429:rate=0.05:retry-after=1",
        "graph:429:rate=0.05",
        "upload:429:rate=0.05",
        "graph:503:rate=0.05",
        "upload:503:rate=0.05",
        // A few dropped connections, before and after the service acted.
        "upload:drop:after=3:count=2",
        "upload:drop-reply:after=6:count=2",
        "graph:drop:after=2:count=1",
        "graph:drop-reply:after=5:count=1",
        "session:404:after=9:count=1",
        "upload:503:after=2:count=1",
        "graph:503:after=3:count=1",
    ]
    .join(",");
    let emu = emu::start(Options {
        faults: Some(faults),
        ..Options::default()
    })
    .await;
    let fx = Fixture::new();
    // One request at a time, so every request after a Retry-After reply is
    // one the client chose to send (with several in flight, those already
    // on the wire arrive inside the window; the next test covers that).
    let config = emu::load(&emu::write_config(
        &fx,
        &emu,
        Sign::Secret,
        "concurrency = 1",
    ));
    let files = emu::acceptance_tree(&fx, false);
    let reports = emu::sync(&config, &emu::fast_policy()).await;
    emu::assert_clean(&reports);
    emu::assert_arrived(&emu, &files);

    let log = emu.requests();
    let count = |status: u16| log.iter().filter(|r| r.status == status).count();
    assert!(
        count(429) > 0 && count(503) > 0 && count(0) > 0,
        "faults fired: {:?}",
        emu.counters()
    );
    // No request arrived inside a Retry-After window (the emulator counts them).
    assert_eq!(emu.throttle_violations(), 0, "{:?}", emu.counters());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_pause_holds_every_request_to_the_tenant() {
    // One 429 with Retry-After: 1 while four uploads are running: after it,
    // no request at all may reach the tenant for a second.
    let emu = emu::start(Options {
        faults: Some("upload:429:after=4:count=1:retry-after=1".into()),
        ..Options::default()
    })
    .await;
    let fx = Fixture::new();
    let config = emu::load(&emu::write_config(&fx, &emu, Sign::Secret, ""));
    let mut files = Vec::new();
    for i in 0..4u8 {
        let bytes = emu::content(3 * MIB, i);
        emu::put(&fx, &format!("f{i}.bin"), &bytes);
        files.push((format!("f{i}.bin"), bytes));
    }
    let reports = emu::sync(&config, &emu::fast_policy()).await;
    emu::assert_clean(&reports);
    emu::assert_arrived(&emu, &files);
    let log = emu.requests();
    let throttled = log.iter().position(|r| r.status == 429).expect("a 429");
    let t = log[throttled].t_ms;
    // Requests already on the wire when the 429 was sent arrive just after
    // it (the emulator counts those as violations too: it cannot tell).
    // After a grace for those, nothing may arrive until the second is over.
    // Judged by arrival, not by reply: a fragment that arrived in time may
    // take a while to be received whole on a busy machine.
    let grace = 100;
    let early: Vec<_> = log[throttled + 1..]
        .iter()
        .filter(|r| r.t_start_ms > t + grace && r.t_start_ms < t + 1000)
        .collect();
    assert!(early.is_empty(), "requests during the pause: {early:?}");
    let in_flight = log[throttled + 1..]
        .iter()
        .filter(|r| r.t_start_ms <= t + grace)
        .count();
    // Each of the other three uploads: the request on the wire, and at most
    // one more released before the client had read the 429.
    assert!(in_flight <= 6, "{:#?}", &log[throttled..]);
    assert!(emu.throttle_violations() <= 6);
    let resumed = log[throttled + 1..]
        .iter()
        .find(|r| r.t_start_ms > t + grace)
        .expect("uploads went on");
    assert!(resumed.t_start_ms >= t + 1000, "{resumed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_token_that_expires_during_a_retry_after_pause_is_not_sent() {
    // graph-api.md 1 and 7: refresh ahead of expiry; a throttled request
    // waits out Retry-After (3600 s observed, longer than a token lives).
    // Here the token lives 2 s and the pause is 3 s: the retry must carry a
    // fresh token, not the one taken before the pause (a 401, one more
    // request against the budget right after being throttled).
    let emu = emu::start(Options {
        token_lifetime: Duration::from_secs(2),
        faults: Some("graph:429:count=1:retry-after=3".into()),
        ..Options::default()
    })
    .await;
    let fx = Fixture::new();
    let config = emu::load(&emu::write_config(&fx, &emu, Sign::Secret, ""));
    let files = vec![("a.txt".to_string(), b"hello".to_vec())];
    emu::put(&fx, "a.txt", b"hello");
    let reports = emu::sync(&config, &emu::fast_policy()).await;
    emu::assert_clean(&reports);
    emu::assert_arrived(&emu, &files);
    let log = emu.requests();
    assert!(log.iter().any(|r| r.status == 429), "the fault fired");
    let refused: Vec<_> = log.iter().filter(|r| r.status == 401).collect();
    assert!(refused.is_empty(), "expired token sent: {refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_vanished_sessions_start_over_cleanly() {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let config = emu::load(&emu::write_config(&fx, &emu, Sign::Secret, ""));
    let bytes = emu::content(5 * MIB, 9);
    emu::put(&fx, "big.bin", &bytes);
    // The session expires after the third fragment: the upload starts over.
    emu.add_faults("upload:expire-session:after=2:count=1")
        .unwrap();
    let reports = emu::sync(&config, &emu::fast_policy()).await;
    emu::assert_clean(&reports);
    emu::assert_arrived(&emu, &[("big.bin".into(), bytes)]);
    let sessions = emu
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/createUploadSession"))
        .count();
    assert_eq!(sessions, 2, "one expired session, one fresh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharepoint_rewrites_of_office_files_do_not_cause_reuploads() {
    let emu = emu::start(Options {
        rewrite_office: true,
        ..Options::default()
    })
    .await;
    let fx = Fixture::new();
    let config = emu::load(&emu::write_config(&fx, &emu, Sign::Secret, ""));
    emu::put(&fx, "report.docx", &emu::content(50_000, 4));
    emu::put(&fx, "scan.pdf", &emu::content(700_000, 5));
    emu::put(&fx, "page.html", b"<html></html>");
    emu::put(&fx, "plain.txt", b"plain");
    let reports = emu::sync(&config, &emu::fast_policy()).await;
    emu::assert_clean(&reports);
    assert_eq!(reports[0].uploaded, 4);
    let tree = emu.tree();
    let docx = tree
        .iter()
        .find(|e| e.path == format!("{FOLDER}/report.docx"))
        .unwrap();
    assert!(docx.size > 50_000, "the emulator rewrote it");

    let before = emu.requests().len();
    let reports = emu::sync(&config, &emu::fast_policy()).await;
    emu::assert_clean(&reports);
    assert_eq!(reports[0].uploaded, 0);
    let extra = emu::requests_besides_delta(&emu, before);
    assert!(extra.is_empty(), "nothing sent the second time: {extra:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_names_are_encoded_by_default() {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let config = emu::load(&emu::write_config(&fx, &emu, Sign::Secret, ""));
    emu::put(&fx, "notes: draft?.txt", b"a");
    emu::put(&fx, "odd dir. /end.", b"b");
    emu::put(&fx, "CON.txt", b"c");
    emu::put(&fx, "fine.txt", b"d");
    let reports = emu::sync(&config, &emu::fast_policy()).await;
    let r = &reports[0];
    assert!(r.failed.is_empty(), "{:?}", r.failed);
    assert_eq!(r.uploaded, 3, "{r:?}");
    assert_eq!(
        r.encoded,
        [
            (
                "notes: draft?.txt".to_string(),
                "notes： draft？.txt".to_string()
            ),
            ("odd dir. /end.".to_string(), "odd dir.␠/end．".to_string()),
        ]
    );
    assert_eq!(r.skipped.len(), 1, "{:?}", r.skipped);
    assert_eq!(r.skipped[0].0, "CON.txt");
    let paths: Vec<String> = emu.tree().into_iter().map(|e| e.path).collect();
    assert!(
        paths.contains(&format!("{FOLDER}/notes： draft？.txt")),
        "{paths:?}"
    );
    assert!(
        paths.contains(&format!("{FOLDER}/odd dir.␠/end．")),
        "{paths:?}"
    );
    assert!(!paths.iter().any(|p| p.contains("CON")), "{paths:?}");

    // Nothing changes: nothing is sent again, the skip is reported again.
    let before = emu.requests().len();
    let reports = emu::sync(&config, &emu::fast_policy()).await;
    assert_eq!(reports[0].uploaded, 0);
    let extra = emu::requests_besides_delta(&emu, before);
    assert!(extra.is_empty(), "{extra:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_names_are_reported_and_left_out_with_skip() {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let config = emu::load(&emu::write_config(
        &fx,
        &emu,
        Sign::Secret,
        "invalid_names = \"skip\"",
    ));
    emu::put(&fx, "notes: draft?.txt", b"a");
    emu::put(&fx, "bad|dir/inner.txt", b"b");
    emu::put(&fx, "fine.txt", b"c");
    let reports = emu::sync(&config, &emu::fast_policy()).await;
    let r = &reports[0];
    assert_eq!(r.uploaded, 1);
    let skipped: Vec<&str> = r.skipped.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(skipped, ["bad|dir/inner.txt", "notes: draft?.txt"]);
    assert!(r.skipped[0].1.contains("invalid name"), "{:?}", r.skipped);
    let paths: Vec<String> = emu.tree().into_iter().map(|e| e.path).collect();
    assert_eq!(paths, [format!("{FOLDER}/fine.txt")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_too_long_for_sharepoint_are_reported_not_attempted() {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let config = emu::load(&emu::write_config(&fx, &emu, Sign::Secret, ""));
    let long = format!(
        "{}/{}/{}.txt",
        "a".repeat(150),
        "b".repeat(150),
        "c".repeat(90)
    );
    emu::put(&fx, &long, b"x");
    let reports = emu::sync(&config, &emu::fast_policy()).await;
    let r = &reports[0];
    assert_eq!(r.uploaded, 0);
    assert_eq!(r.skipped.len(), 1);
    assert!(r.skipped[0].1.contains("path too long"), "{:?}", r.skipped);
    assert!(
        !emu.requests().iter().any(|r| r.path.contains("ccccc")),
        "never sent"
    );
}

/// Section 8's limit is on the decoded server-relative path in characters
/// (not bytes), site and library included, and on the name as sent: an
/// encoded name that grew (a quoted look-alike) counts as it is stored.
/// Here "/sites/demo/Shared Documents/backup/" is 36 characters, so a
/// relative path of 363 characters is the longest SharePoint takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_400_character_limit_counts_characters_of_the_encoded_path() {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let config = emu::load(&emu::write_config(&fx, &emu, Sign::Secret, ""));
    // Two bytes each: 100 of them per folder stay under NAME_MAX.
    let dirs = ["ü".repeat(100), "ü".repeat(100), "ü".repeat(100)].join("/");
    let at_limit = format!("{dirs}/{}", "ü".repeat(60));
    let over = format!("{dirs}/{}", "ü".repeat(61));
    // 60 characters locally either way; the literal look-alike is sent
    // quoted (61), the ASCII colon as its look-alike (60).
    let colon = format!("{dirs}/{}:", "c".repeat(59));
    let wide = format!("{dirs}/{}：", "w".repeat(59));
    for (rel, bytes) in [
        (&at_limit, b"a"),
        (&over, b"o"),
        (&colon, b"c"),
        (&wide, b"w"),
    ] {
        emu::put(&fx, rel, bytes);
    }
    let r = emu::sync(&config, &emu::fast_policy()).await.remove(0);
    assert!(r.failed.is_empty(), "{:?}", r.failed);
    assert_eq!(r.uploaded, 2, "{r:?}");
    let skipped: Vec<&str> = r.skipped.iter().map(|(p, _)| p.as_str()).collect();
    let mut want = [over.as_str(), wide.as_str()];
    want.sort();
    assert_eq!(skipped, want, "{r:?}");
    assert!(
        r.skipped
            .iter()
            .all(|(_, why)| why.contains("path too long for SharePoint: 400 characters")),
        "{:?}",
        r.skipped
    );
    let paths: Vec<String> = emu.tree().into_iter().map(|e| e.path).collect();
    assert!(paths.contains(&format!("{FOLDER}/{at_limit}")), "{paths:?}");
    assert!(
        paths.contains(&format!("{FOLDER}/{dirs}/{}：", "c".repeat(59))),
        "{paths:?}"
    );
}

/// What the naming rules skipped is judged again when the rules change:
/// an administrator who tried `invalid_names = "skip"` and then chose
/// `"encode"` gets the files up without touching them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_skipped_for_their_name_go_up_once_the_setting_allows_them() {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let path = emu::write_config(&fx, &emu, Sign::Secret, "invalid_names = \"skip\"");
    emu::put(&fx, "notes: draft?.txt", b"a");
    emu::put(&fx, "fine.txt", b"b");
    let r = emu::sync(&emu::load(&path), &emu::fast_policy())
        .await
        .remove(0);
    assert_eq!(r.uploaded, 1, "{r:?}");
    assert_eq!(r.skipped.len(), 1, "{r:?}");

    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("invalid_names = \"skip\"", "")).unwrap();
    let stdout = dry_run(&fx, &path);
    assert!(
        stdout.contains("  upload   notes: draft?.txt ("),
        "{stdout}"
    );
    let r = emu::sync(&emu::load(&path), &emu::fast_policy())
        .await
        .remove(0);
    assert!(r.skipped.is_empty(), "{r:?}");
    assert_eq!(r.uploaded, 1, "{r:?}");
    assert_eq!(
        emu.read_file(&format!("{FOLDER}/notes： draft？.txt"))
            .as_deref(),
        Some(&b"a"[..])
    );
}

/// A folder SharePoint refuses under any encoding (`CON`, `_vti_`): every
/// file below it is reported, once each, on every run; nothing goes up and
/// nothing is lost silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_below_a_refused_folder_are_each_reported_once() {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let config = emu::load(&emu::write_config(&fx, &emu, Sign::Secret, ""));
    emu::put(&fx, "CON/a.txt", b"a");
    emu::put(&fx, "CON/deeper/b.txt", b"b");
    emu::put(&fx, "ok/my_vti_dir/c.txt", b"c");
    emu::put(&fx, "ok/d.txt", b"d");
    for run in 0..2 {
        let r = emu::sync(&config, &emu::fast_policy()).await.remove(0);
        assert!(r.failed.is_empty(), "run {run}: {:?}", r.failed);
        assert_eq!(r.uploaded, 1 - run as u64, "run {run}: {r:?}");
        let skipped: Vec<&str> = r.skipped.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            skipped,
            ["CON/a.txt", "CON/deeper/b.txt", "ok/my_vti_dir/c.txt"],
            "run {run}: {r:?}"
        );
        assert!(r.skipped[0].1.contains("\"CON\""), "{:?}", r.skipped);
        assert!(r.skipped[2].1.contains("_vti_"), "{:?}", r.skipped);
    }
    let paths: Vec<String> = emu.tree().into_iter().map(|e| e.path).collect();
    assert_eq!(paths, [format!("{FOLDER}/ok/d.txt")], "{paths:?}");
    // The tree lists files; the refused folders are not there either.
    assert_eq!(emu::remote_status(&emu, "CON").await, 404);
    assert_eq!(emu::remote_status(&emu, "ok/my_vti_dir").await, 404);
}

/// A file the naming rules refuse is reported by the dry run as the run
/// reports it (it showed `upload`), and gets no remote folders: the run
/// used to create its parent folders, left empty in SharePoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_file_is_shown_skipped_by_the_dry_run_and_gets_no_folders() {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let path = emu::write_config(&fx, &emu, Sign::Secret, "");
    let config = emu::load(&path);
    emu::put(&fx, "docs/only/CON.txt", b"c");
    emu::put(&fx, "docs/fine.txt", b"f");
    let stdout = dry_run(&fx, &path);
    assert!(
        stdout.contains("would create 1 folder(s) and upload 1 file(s)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  skipped  docs/only/CON.txt (invalid name \"CON.txt\""),
        "{stdout}"
    );
    assert!(!stdout.contains("mkdir    docs/only/"), "{stdout}");
    let r = emu::sync(&config, &emu::fast_policy()).await.remove(0);
    assert_eq!(r.uploaded, 1, "{r:?}");
    assert_eq!(r.skipped.len(), 1, "{r:?}");
    assert_eq!(emu::remote_status(&emu, "docs").await, 200);
    assert_eq!(emu::remote_status(&emu, "docs/only").await, 404);
}

/// A name that is not UTF-8 cannot go to SharePoint and is reported each
/// run; a real file whose (valid) name has U+FFFD where the other has its
/// bad byte is a file like any other. Both used to share one state row
/// under the lossy name, recorded skipped every run: the real file was
/// never uploaded, and its changes never either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_named_like_the_lossy_form_of_a_non_utf8_name_is_backed_up() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let config = emu::load(&emu::write_config(&fx, &emu, Sign::Secret, ""));
    let real = "bad\u{fffd}.txt";
    emu::put(&fx, real, b"real one");
    std::fs::write(fx.source().join(OsStr::from_bytes(b"bad\xff.txt")), b"x").unwrap();
    for (run, content) in [(0, &b"real one"[..]), (1, &b"edited, longer"[..])] {
        emu::put(&fx, real, content);
        let r = emu::sync(&config, &emu::fast_policy()).await.remove(0);
        assert!(r.failed.is_empty(), "run {run}: {:?}", r.failed);
        assert_eq!(r.uploaded, 1, "run {run}: {r:?}");
        assert_eq!(r.skipped.len(), 1, "run {run}: {r:?}");
        assert!(
            r.skipped[0].1.contains("not valid UTF-8"),
            "{:?}",
            r.skipped
        );
        assert_eq!(
            emu.read_file(&format!("{FOLDER}/{real}")).as_deref(),
            Some(content),
            "run {run}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_library_stops_uploads_and_reports() {
    let emu = emu::start(Options {
        quota_bytes: 2 * MIB as u64,
        ..Options::default()
    })
    .await;
    let fx = Fixture::new();
    let config = emu::load(&emu::write_config(&fx, &emu, Sign::Secret, ""));
    for i in 0..3u8 {
        emu::put(&fx, &format!("f{i}.bin"), &emu::content(3 * MIB, i));
    }
    let reports = emu::sync(&config, &emu::fast_policy()).await;
    let r = &reports[0];
    assert_eq!(r.uploaded, 0);
    assert!(r.failed.is_empty(), "not the files' fault: {:?}", r.failed);
    assert_eq!(r.quota_full, Some(3));
    let full = emu.requests().iter().filter(|r| r.status == 507).count();
    assert!(full <= 3, "stopped asking after the first 507s ({full})");
    let store = sharepush::state::Store::open_read_only(&fx.state()).unwrap();
    for i in 0..3 {
        let record = store.file("docs", &format!("f{i}.bin")).unwrap().unwrap();
        assert_eq!(record.state, FileState::Pending, "f{i}: {record:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_library_stops_every_job_that_shares_it() {
    let emu = emu::start(Options {
        quota_bytes: 2 * MIB as u64,
        ..Options::default()
    })
    .await;
    let fx = Fixture::new();
    let path = emu::write_config(&fx, &emu, Sign::Secret, "concurrency = 1");
    // A second job on the same library, another folder and source.
    let second = fx.path("second");
    std::fs::create_dir_all(&second).unwrap();
    std::fs::write(second.join("small.txt"), b"would fit").unwrap();
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(&format!(
        "\n[[job]]\nname = \"other\"\nsource = \"{}\"\n\
         site = \"https://contoso.sharepoint.com/sites/demo\"\nlibrary = \"Documents\"\n\
         folder = \"other\"\nschedule = \"@hourly\"\n",
        second.display()
    ));
    std::fs::write(&path, text).unwrap();
    let config = emu::load(&path);
    emu::put(&fx, "big.bin", &emu::content(3 * MIB, 1));

    let reports = emu::sync(&config, &emu::fast_policy()).await;
    assert_eq!(reports.len(), 2);
    assert_eq!((reports[0].uploaded, reports[0].quota_full), (0, Some(1)));
    // The second job never sent its file, although it would have fitted.
    assert_eq!((reports[1].uploaded, reports[1].quota_full), (0, Some(1)));
    assert!(reports.iter().all(|r| r.failed.is_empty()));
    let log = emu.requests();
    assert_eq!(log.iter().filter(|r| r.status == 507).count(), 1);
    assert!(
        !log.iter().any(|r| r.path.contains("small.txt")),
        "nothing sent for the other job's file"
    );
    let store = sharepush::state::Store::open_read_only(&fx.state()).unwrap();
    for (job, file) in [("docs", "big.bin"), ("other", "small.txt")] {
        let record = store.file(job, file).unwrap().unwrap();
        assert_eq!(
            record.state,
            FileState::Pending,
            "{job}/{file} stays pending"
        );
    }
}

#[test]
fn dry_run_touches_neither_the_remote_nor_the_state() {
    let fx = Fixture::new();
    let config = fx.write_config();
    std::fs::write(fx.source().join("a.txt"), b"a").unwrap();
    let stdout = dry_run(&fx, &config);
    assert!(
        stdout.contains("would create 0 folder(s) and upload 1 file(s)"),
        "{stdout}"
    );
    assert!(stdout.contains("upload   a.txt (new, 1 B)"), "{stdout}");
    assert!(!fx.state().exists(), "no state written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_changed_during_upload_is_queued_again_not_half_sent() {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let config = emu::load(&emu::write_config(&fx, &emu, Sign::Secret, ""));
    let bytes = emu::content(4 * MIB, 7);
    emu::put(&fx, "moving.bin", &bytes);
    // Slow fragments down so the file can be changed between them.
    emu.add_faults("upload:latency:ms=400").unwrap();
    let path = fx.source().join("moving.bin");
    let sync = {
        let config = config.clone();
        tokio::spawn(async move { emu::sync(&config, &emu::fast_policy()).await })
    };
    assert!(
        emu.wait_for_requests(Duration::from_secs(20), |log| {
            log.iter()
                .filter(|r| r.route == "upload" && r.status == 202)
                .count()
                >= 1
        })
        .await
    );
    std::fs::write(&path, emu::content(4 * MIB, 8)).unwrap();
    let reports = sync.await.unwrap();
    assert_eq!(reports[0].requeued, ["moving.bin"], "{:?}", reports[0]);
    assert!(
        emu.tree().iter().all(|e| !e.path.ends_with("moving.bin")),
        "nothing half-new committed"
    );
    // The next run uploads the new content.
    emu.clear_faults();
    let reports = emu::sync(&config, &emu::fast_policy()).await;
    emu::assert_clean(&reports);
    let stored = emu.read_file(&format!("{FOLDER}/moving.bin")).unwrap();
    assert!(stored == emu::content(4 * MIB, 8));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_without_a_remote_hash_is_verified_on_a_later_run() {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let config = emu::load(&emu::write_config(&fx, &emu, Sign::Secret, ""));
    emu::put(&fx, "a.txt", b"checked later");
    emu::sync(&config, &emu::fast_policy()).await;

    // As if SharePoint had not computed the hash when the upload finished.
    let hashes = sharepush::hash::hash_bytes(b"checked later");
    {
        let mut store = sharepush::state::Store::open(&fx.state()).unwrap();
        let info = sharepush::state::SyncedInfo {
            content: hashes.clone(),
            item_id: None,
            etag: None,
            remote_quick_xor: None,
            remote_size: None,
            remote_name: None,
            remote_parent: None,
        };
        store.mark_synced("docs", "a.txt", &info).unwrap();
        assert_eq!(store.unconfirmed_synced("docs").unwrap().len(), 1);
    }
    let reports = emu::sync(&config, &emu::fast_policy()).await;
    emu::assert_clean(&reports);
    assert_eq!(reports[0].uploaded, 0, "checked, not sent again");
    let store = sharepush::state::Store::open_read_only(&fx.state()).unwrap();
    assert!(store.unconfirmed_synced("docs").unwrap().is_empty());
    match store.file("docs", "a.txt").unwrap().unwrap().state {
        sharepush::state::FileState::Synced {
            remote_quick_xor, ..
        } => assert_eq!(remote_quick_xor, Some(hashes.quick_xor)),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_files_are_listed_at_the_end_and_exit_1() {
    let emu = emu::start(Options {
        quota_bytes: MIB as u64,
        ..Options::default()
    })
    .await;
    let fx = Fixture::new();
    let config = emu::write_config(&fx, &emu, Sign::Secret, "");
    emu::put(&fx, "small.txt", b"fits");
    emu::put(&fx, "big.bin", &emu::content(2 * MIB, 1));
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_sharepush"))
            .arg("--config")
            .arg(&config)
            .arg("sync")
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("job docs: 1 uploaded"), "{stdout}");
    let tail = stdout.split("failed:\n").nth(1).expect("a failure list");
    assert!(
        tail.contains(
            "job docs: the library is full (507 quotaLimitReached); 1 file(s) stay pending"
        ),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn touching_a_synced_file_without_editing_it_uploads_nothing() {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let config = emu::load(&emu::write_config(&fx, &emu, Sign::Secret, ""));
    let files = emu::acceptance_tree(&fx, false);
    let reports = emu::sync(&config, &emu::fast_policy()).await;
    emu::assert_clean(&reports);

    // A new mtime, same bytes (what `touch` or a restore from backup does):
    // SharePoint already holds this content, a new version would only cost quota.
    let touched = fx.source().join("nested/ten.bin");
    let f = std::fs::File::options().write(true).open(&touched).unwrap();
    f.set_modified(std::time::SystemTime::now() + Duration::from_secs(60))
        .unwrap();
    drop(f);

    let before = emu.requests().len();
    let reports = emu::sync(&config, &emu::fast_policy()).await;
    emu::assert_clean(&reports);
    assert_eq!(reports[0].changed, 1, "the scan sees the new mtime");
    assert_eq!(reports[0].uploaded, 0, "{:?}", reports[0]);
    let extra = emu::requests_besides_delta(&emu, before);
    assert!(extra.is_empty(), "requests sent: {extra:?}");

    // The new fingerprint was recorded: the next scan hashes nothing.
    let reports = emu::sync(&config, &emu::fast_policy()).await;
    assert_eq!(reports[0].changed, 0);
    assert_eq!(reports[0].up_to_date, files.len() as u64);
}

fn sessions_created(emu: &graph_emulator::Handle) -> usize {
    emu.requests()
        .iter()
        .filter(|r| r.path.ends_with("/createUploadSession"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_commit_reply_is_not_a_second_upload_even_for_rewritten_types() {
    for (name, rewrite) in [("report.docx", true), ("plain.bin", false)] {
        // The commit is applied, its reply never arrives.
        let emu = emu::start(Options {
            rewrite_office: rewrite,
            faults: Some("upload:drop-reply:count=1".into()),
            ..Options::default()
        })
        .await;
        let fx = Fixture::new();
        let config = emu::load(&emu::write_config(&fx, &emu, Sign::Secret, ""));
        let content = emu::content(50_000, 4);
        emu::put(&fx, name, &content);
        let reports = emu::sync(&config, &emu::fast_policy()).await;
        emu::assert_clean(&reports);
        assert_eq!(reports[0].uploaded, 1, "{name}: {:?}", reports[0]);
        assert_eq!(sessions_created(&emu), 1, "{name}: one version, not two");
        if !rewrite {
            assert_eq!(emu.read_file(&format!("{FOLDER}/{name}")).unwrap(), content);
        }
        // And it is settled: the next sync sends nothing.
        let reports = emu::sync(&config, &emu::fast_policy()).await;
        assert_eq!(reports[0].uploaded, 0, "{name}: {:?}", reports[0]);
        assert_eq!(sessions_created(&emu), 1, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_416_whose_query_meets_a_transient_404_resumes_instead_of_failing() {
    // Fragment 1's reply is lost; its retry gets 416 (overlap); the query
    // for where the session stands gets one transient 404.
    let emu = emu::start(Options {
        faults: Some("session:404:after=2:count=1,upload:drop-reply:count=1".into()),
        ..Options::default()
    })
    .await;
    let fx = Fixture::new();
    let config = emu::load(&emu::write_config(&fx, &emu, Sign::Secret, ""));
    let content = emu::content(15 * MIB, 4);
    emu::put(&fx, "big.bin", &content);
    let reports = emu::sync(&config, &emu::fast_policy()).await;
    emu::assert_clean(&reports);
    assert_eq!(reports[0].uploaded, 1);
    assert_eq!(
        emu.read_file(&format!("{FOLDER}/big.bin")).unwrap(),
        content
    );
    assert_eq!(sessions_created(&emu), 1, "the same session, resumed");
}

/// Case twins beyond ASCII (`Ä` and `ä`: SQLite's `lower()` left them
/// apart), and `sync --dry-run` shows the skip the run makes; it used to
/// list both as uploads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_twins_beyond_ascii_are_found_and_the_dry_run_shows_them() {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let config = emu::load(&emu::write_config(&fx, &emu, Sign::Secret, ""));
    emu::put(&fx, "Ärger.txt", b"upper");
    emu::put(&fx, "ärger.txt", b"lower, longer");
    emu::put(&fx, "ok.txt", b"fine");
    let skip_line = "  skipped  ärger.txt (\"Ärger.txt\" differs from it only in case";
    let stdout = dry_run(&fx, &config.path);
    assert!(stdout.contains("upload 2 file(s), 9 B (2 new"), "{stdout}");
    assert!(stdout.contains(skip_line), "{stdout}");
    assert!(!stdout.contains("upload   ärger.txt"), "{stdout}");

    let r = &emu::sync(&config, &emu::fast_policy()).await[0];
    assert_eq!(r.uploaded, 2, "{r:?}");
    let skipped: Vec<&str> = r.skipped.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(skipped, ["ärger.txt"], "{r:?}");
    assert_eq!(
        emu.read_file(&format!("{FOLDER}/Ärger.txt")).as_deref(),
        Some(&b"upper"[..])
    );
    // Still so on the next look, and nothing else to send.
    let stdout = dry_run(&fx, &config.path);
    assert!(stdout.contains("upload 0 file(s)"), "{stdout}");
    assert!(stdout.contains(skip_line), "{stdout}");
}

/// The dry run decides case twins over the rows the run does: a file
/// recorded as skipped (a symlink) never keeps the name, and in `mirror` a
/// file deleted locally keeps it until its remote delete, after the
/// uploads, unless it was renamed (moved on the server first). It used to
/// show the first kind as keeping and the second as gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_case_twins_follow_the_rows_the_run_keeps() {
    let (emu, fx, config) = mirror_job().await;
    emu::put(&fx, "target.txt", b"t");
    std::os::unix::fs::symlink("target.txt", fx.source().join("A.txt")).unwrap();
    emu::put(&fx, "B.txt", b"bee");
    emu::put(&fx, "C.txt", b"renamed in case only");
    let r = emu::sync(&config, &emu::fast_policy()).await.remove(0);
    assert_eq!(r.uploaded, 8, "{r:?}");

    // a.txt beside the skipped symlink A.txt; B.txt deleted and b.txt new;
    // C.txt renamed c.txt.
    emu::put(&fx, "a.txt", b"a regular file");
    std::fs::remove_file(fx.source().join("B.txt")).unwrap();
    emu::put(&fx, "b.txt", b"another bee");
    std::fs::rename(fx.source().join("C.txt"), fx.source().join("c.txt")).unwrap();
    let stdout = dry_run(&fx, &config.path);
    assert!(stdout.contains("  upload   a.txt ("), "{stdout}");
    assert!(
        stdout.contains("  skipped  b.txt (\"B.txt\" differs from it only in case"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  move     C.txt -> c.txt (renamed locally)"),
        "{stdout}"
    );

    let r = emu::sync(&config, &emu::fast_policy()).await.remove(0);
    let skipped: Vec<&str> = r.skipped.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(skipped, ["A.txt", "b.txt"], "{r:?}");
    assert_eq!(
        emu.read_file(&format!("{FOLDER}/a.txt")).as_deref(),
        Some(&b"a regular file"[..])
    );
    assert_eq!(
        emu.read_file(&format!("{FOLDER}/c.txt")).as_deref(),
        Some(&b"renamed in case only"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_whose_paths_differ_only_in_case_are_reported_not_sent_over_each_other() {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let config = emu::load(&emu::write_config(&fx, &emu, Sign::Secret, ""));
    emu::put(&fx, "Report.txt", b"upper");
    emu::put(&fx, "report.txt", b"lower, longer");
    emu::put(&fx, "Docs/a.txt", b"one");
    emu::put(&fx, "docs/a.txt", b"two");
    emu::put(&fx, "docs/b.txt", b"bee");
    let first = &emu::sync(&config, &emu::fast_policy()).await[0];
    assert_eq!(first.uploaded, 3, "{first:?}");
    let skipped: Vec<&str> = first.skipped.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(skipped, ["docs/a.txt", "report.txt"]);
    assert!(
        first.skipped[1]
            .1
            .contains("\"Report.txt\" differs from it only in case"),
        "{:?}",
        first.skipped
    );
    let arrived = |rel: &str| emu.read_file(&format!("{FOLDER}/{rel}"));
    assert_eq!(arrived("Report.txt").as_deref(), Some(&b"upper"[..]));
    assert_eq!(arrived("Docs/a.txt").as_deref(), Some(&b"one"[..]));
    assert_eq!(arrived("docs/b.txt").as_deref(), Some(&b"bee"[..]));

    // Nothing alternates: the next run sends nothing and says the same.
    let before = emu.requests().len();
    let second = &emu::sync(&config, &emu::fast_policy()).await[0];
    assert_eq!(second.uploaded, 0, "{second:?}");
    assert_eq!(second.skipped.len(), 2, "{second:?}");
    assert!(
        !emu.requests()[before..]
            .iter()
            .any(|r| r.method == "PUT" || r.path.ends_with("/createUploadSession")),
        "no upload requests"
    );
    let store = sharepush::state::Store::open_read_only(&fx.state()).unwrap();
    let row = store.file("docs", "report.txt").unwrap().unwrap();
    assert!(
        matches!(row.state, FileState::Skipped { .. }),
        "{:?}",
        row.state
    );
    drop(store);

    // Once its twin is gone (renamed), it goes up by itself.
    std::fs::rename(
        fx.source().join("Report.txt"),
        fx.source().join("Report (old).txt"),
    )
    .unwrap();
    let third = &emu::sync(&config, &emu::fast_policy()).await[0];
    assert_eq!(third.skipped.len(), 1, "{third:?}");
    assert_eq!(
        arrived("report.txt").as_deref(),
        Some(&b"lower, longer"[..])
    );
    assert_eq!(arrived("Report (old).txt").as_deref(), Some(&b"upper"[..]));
}

/// A file replaced by a FIFO after the scan: opening a FIFO to read it
/// blocks until a writer comes, which used to hang the run forever. It is
/// requeued as changed, and the next scan leaves it out as what it is now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_replaced_by_a_fifo_before_its_upload_does_not_hang_the_run() {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let config = emu::load(&emu::write_config(
        &fx,
        &emu,
        Sign::Secret,
        "concurrency = 1",
    ));
    emu::put(&fx, "a.bin", &emu::content(MIB, 1));
    emu::put(&fx, "b.txt", b"a regular file when scanned");
    // a.bin's fragment is held long enough to swap b.txt for a FIFO.
    emu.add_faults("upload:latency:ms=500:count=1").unwrap();
    let cfg = config.clone();
    let run = tokio::spawn(async move { emu::sync(&cfg, &emu::fast_policy()).await });
    let started = tokio::time::timeout(Duration::from_secs(30), async {
        while !emu
            .requests()
            .iter()
            .any(|r| r.path.contains("a.bin") && r.path.ends_with("createUploadSession"))
        {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(started.is_ok(), "a.bin's upload never started");
    let b = fx.source().join("b.txt");
    std::fs::remove_file(&b).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&b)
        .status()
        .unwrap();
    assert!(made.success());

    let reports = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the run hung on the FIFO")
        .unwrap();
    assert_eq!(reports[0].uploaded, 1, "{:?}", reports[0]);
    assert_eq!(reports[0].requeued, ["b.txt"], "{:?}", reports[0]);
    let again = &emu::sync(&config, &emu::fast_policy()).await[0];
    assert_eq!(again.uploaded, 0, "{again:?}");
    assert!(
        again
            .skipped
            .iter()
            .any(|(p, why)| p == "b.txt" && why.contains("special file")),
        "{again:?}"
    );
}

/// Right after an upload SharePoint may not have computed the file's
/// quickXorHash yet (graph-api.md section 3: filled in later). The file is
/// recorded as synced with no confirmed hash, is not sent again, and a
/// later run records the hash once SharePoint gives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_hash_not_there_yet_is_confirmed_by_a_later_run() {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let config = emu::load(&emu::write_config(&fx, &emu, Sign::Secret, ""));
    let content = emu::content(MIB + 1, 9);
    emu::put(&fx, "a.bin", &content);
    let remote_hash = || {
        let store = sharepush::state::Store::open_read_only(&fx.state()).unwrap();
        match store.file("docs", "a.bin").unwrap().unwrap().state {
            FileState::Synced {
                remote_quick_xor, ..
            } => remote_quick_xor,
            other => panic!("not synced: {other:?}"),
        }
    };
    emu.hide_hashes(true);
    let r = &emu::sync(&config, &emu::fast_policy()).await[0];
    emu::assert_clean(std::slice::from_ref(r));
    assert_eq!(r.uploaded, 1, "{r:?}");
    assert_eq!(remote_hash(), None, "nothing to confirm it with yet");

    // Still not there: asked again, nothing sent again.
    let before = emu.requests().len();
    let r = &emu::sync(&config, &emu::fast_policy()).await[0];
    assert_eq!(r.uploaded, 0, "{r:?}");
    assert!(
        !emu.requests()[before..]
            .iter()
            .any(|q| q.method == "PUT" || q.path.ends_with("/createUploadSession")),
        "no upload requests"
    );
    assert_eq!(remote_hash(), None);

    emu.hide_hashes(false);
    let r = &emu::sync(&config, &emu::fast_policy()).await[0];
    assert_eq!(r.uploaded, 0, "{r:?}");
    let local = sharepush::hash::hash_bytes(&content).quick_xor;
    assert_eq!(remote_hash().as_deref(), Some(local.as_str()));
}

/// `sharepush sync --dry-run` with `config`: its output, after checking
/// it exited 0.
fn dry_run(fx: &Fixture, config: &std::path::Path) -> String {
    let out = fx.sharepush(config, &["sync", "--dry-run"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    stdout
}

/// A `delete = "mirror"` job with five files that stay, so the deletes a
/// test makes stay well below `max_delete` and the source is never empty.
async fn mirror_job() -> (graph_emulator::Handle, Fixture, sharepush::config::Config) {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let config = emu::config_with_job_lines(&fx, &emu, "delete = \"mirror\"");
    for i in 0..5 {
        emu::put(&fx, &format!("keep{i}.txt"), b"k");
    }
    (emu, fx, config)
}

/// [`mirror_job`]'s config with `max_delete = 1` added, written and loaded.
fn with_max_delete_1(config: &sharepush::config::Config) -> sharepush::config::Config {
    let text = std::fs::read_to_string(&config.path).unwrap();
    std::fs::write(
        &config.path,
        text.replace("delete = \"mirror\"", "delete = \"mirror\"\nmax_delete = 1"),
    )
    .unwrap();
    emu::load(&config.path)
}

/// Mirror: a file whose new version could not go up yet, then deleted
/// locally, used to be only forgotten, leaving its earlier version in
/// SharePoint for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_deletes_the_earlier_version_of_a_file_whose_change_never_went_up() {
    let (emu, fx, config) = mirror_job().await;
    emu::put(&fx, "f.txt", b"version 1");
    emu::assert_clean(&emu::sync(&config, &emu::fast_policy()).await);
    // The edit cannot go up (the library is full for a moment)...
    emu::put(&fx, "f.txt", b"version 2, longer");
    emu.add_faults("upload:507:count=1").unwrap();
    let r = &emu::sync(&config, &emu::fast_policy()).await[0];
    assert!(r.quota_full.is_some(), "{r:?}");
    // ... and then the file is deleted.
    std::fs::remove_file(fx.source().join("f.txt")).unwrap();
    let r = &emu::sync(&config, &emu::fast_policy()).await[0];
    assert_eq!(r.deleted, 1, "{r:?}");
    assert!(emu.read_file(&format!("{FOLDER}/f.txt")).is_none());
    assert!(emu.read_file(&format!("{FOLDER}/keep0.txt")).is_some());
}

/// A file written to all the time is never sent whole; after three uploads
/// in a row met it changing, that is a failure the run reports (exit 1,
/// `status`), not a quiet requeue forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_keeps_changing_while_uploaded_is_reported_after_three_tries() {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let config = emu::load(&emu::write_config(&fx, &emu, Sign::Secret, ""));
    let path = fx.source().join("app.log");
    std::fs::write(&path, emu::content(4 * MIB, 0)).unwrap();
    // Slow enough that the rewrite lands before the upload has read the
    // whole file, even on a busy machine.
    emu.add_faults("upload:latency:ms=400").unwrap();
    let mut accepted = 0;
    for run in 1..=3u8 {
        let sync = {
            let config = config.clone();
            tokio::spawn(async move { emu::sync(&config, &emu::fast_policy()).await })
        };
        let seen = accepted;
        assert!(
            emu.wait_for_requests(Duration::from_secs(20), |log| {
                log.iter()
                    .filter(|r| r.route == "upload" && r.status == 202)
                    .count()
                    > seen
            })
            .await
        );
        std::fs::write(&path, emu::content(4 * MIB, run)).unwrap();
        let r = sync.await.unwrap().remove(0);
        accepted = emu
            .requests()
            .iter()
            .filter(|r| r.route == "upload" && r.status == 202)
            .count();
        if run < 3 {
            assert_eq!(r.requeued, ["app.log"], "run {run}: {r:?}");
            assert!(r.failed.is_empty(), "run {run}: {r:?}");
        } else {
            assert_eq!(r.failed.len(), 1, "{r:?}");
            assert_eq!(r.failed[0].0, "app.log");
            assert!(
                r.failed[0].1.contains("3 uploads in a row"),
                "{:?}",
                r.failed
            );
        }
    }
    // Once it holds still, it goes up.
    emu.clear_faults();
    let r = emu::sync(&config, &emu::fast_policy()).await.remove(0);
    assert_eq!(r.uploaded, 1, "{r:?}");
    assert!(emu.read_file(&format!("{FOLDER}/app.log")).unwrap() == emu::content(4 * MIB, 3));
}

/// A synced file that a scan could not read properly for a moment (here: a
/// pseudo-file swapped in, whose stat and content disagree) stays synced:
/// recorded as skipped, it was sent again as a new version once it was
/// back, although nothing had changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_unreadable_for_one_scan_stays_synced() {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let config = emu::config_with_job_lines(&fx, &emu, "follow_symlinks = true");
    emu::put(&fx, "x.txt", b"steady content");
    emu::assert_clean(&emu::sync(&config, &emu::fast_policy()).await);
    let x = fx.source().join("x.txt");
    let kept = fx.path("x.keep");
    std::fs::rename(&x, &kept).unwrap();
    std::os::unix::fs::symlink("/proc/self/status", &x).unwrap();
    let r = emu::sync(&config, &emu::fast_policy()).await.remove(0);
    assert_eq!(r.uploaded, 0, "{r:?}");
    assert!(
        r.skipped.iter().any(|(p, _)| p == "x.txt"),
        "skipped this run: {r:?}"
    );
    std::fs::remove_file(&x).unwrap();
    std::fs::rename(&kept, &x).unwrap();
    let r = emu::sync(&config, &emu::fast_policy()).await.remove(0);
    assert_eq!((r.uploaded, r.up_to_date), (0, 1), "{r:?}");
    let store = sharepush::state::Store::open_read_only(&fx.state()).unwrap();
    let row = store.file("docs", "x.txt").unwrap().unwrap();
    assert!(
        matches!(row.state, FileState::Synced { .. }),
        "{:?}",
        row.state
    );
}

/// Mirror: a file replaced by a folder of the same name. The file is
/// deleted remotely before the folder is created (deletes otherwise come
/// last), so what is in the folder goes up in the same run instead of
/// failing and waiting hours for a retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_makes_way_for_a_folder_that_replaced_a_file() {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let config = emu::config_with_job_lines(&fx, &emu, "delete = \"mirror\"");
    emu::put(&fx, "keep1.txt", b"k1");
    emu::put(&fx, "keep2.txt", b"k2");
    emu::put(&fx, "a", b"i was a file");
    emu::assert_clean(&emu::sync(&config, &emu::fast_policy()).await);
    std::fs::remove_file(fx.source().join("a")).unwrap();
    emu::put(&fx, "a/x.txt", b"inside the new folder");
    let r = emu::sync(&config, &emu::fast_policy()).await.remove(0);
    assert!(r.failed.is_empty(), "{r:?}");
    assert_eq!((r.uploaded, r.deleted), (1, 1), "{r:?}");
    assert_eq!(
        emu.read_file(&format!("{FOLDER}/a/x.txt")).as_deref(),
        Some(&b"inside the new folder"[..])
    );
}

/// A local folder replaced by a file of its name: in SharePoint the folder
/// is still there and the file cannot take its place. The failure says so
/// (the service's code alone, `nameAlreadyExists`, does not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_blocked_by_a_remote_folder_of_its_name_says_so() {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let config = emu::load(&emu::write_config(&fx, &emu, Sign::Secret, ""));
    emu::put(&fx, "d/x.txt", b"in a folder");
    emu::assert_clean(&emu::sync(&config, &emu::fast_policy()).await);
    std::fs::remove_dir_all(fx.source().join("d")).unwrap();
    emu::put(&fx, "d", b"now a file");
    let r = emu::sync(&config, &emu::fast_policy()).await.remove(0);
    assert_eq!(r.failed.len(), 1, "{r:?}");
    assert_eq!(r.failed[0].0, "d");
    assert!(
        r.failed[0].1.contains("a folder has this file's name"),
        "{:?}",
        r.failed
    );
}

/// Mirror: a local folder deleted with everything in it goes from
/// SharePoint too, subfolders first. A folder that still holds something
/// someone else put there stays (only our files in it go), and is no longer
/// looked at by later runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_deletes_a_folder_deleted_locally_unless_it_holds_someone_elses_files() {
    let (emu, fx, config) = mirror_job().await;
    emu::put(&fx, "d/a.txt", b"alpha");
    emu::put(&fx, "d/sub/b.txt", b"bravo");
    emu::put(&fx, "shared/ours.txt", b"ours");
    emu::put(&fx, "stays/c.txt", b"charlie");
    emu::assert_clean(&emu::sync(&config, &emu::fast_policy()).await);
    emu::remote_put(&emu, "shared/theirs.txt", b"theirs").await;

    std::fs::remove_dir_all(fx.source().join("d")).unwrap();
    std::fs::remove_dir_all(fx.source().join("shared")).unwrap();
    // The dry run shows the folders the run will try, deepest first.
    let stdout = dry_run(&fx, &config.path);
    assert!(
        stdout.contains("3 remote delete(s), 3 remote folder(s) to delete if empty"),
        "{stdout}"
    );
    let rmdirs: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("  rmdir    "))
        .collect();
    assert_eq!(
        rmdirs,
        [
            "d/sub/ (if nothing else is in it)",
            "shared/ (if nothing else is in it)",
            "d/ (if nothing else is in it)"
        ]
    );
    let r = emu::sync(&config, &emu::fast_policy()).await.remove(0);
    assert!(r.failed.is_empty(), "{r:?}");
    assert_eq!((r.deleted, r.folders_deleted), (3, 2), "{r:?}");
    for gone in ["d/sub", "d", "shared/ours.txt"] {
        assert_eq!(emu::remote_status(&emu, gone).await, 404, "{gone}");
    }
    for kept in ["shared", "shared/theirs.txt", "stays", "stays/c.txt"] {
        assert_eq!(emu::remote_status(&emu, kept).await, 200, "{kept}");
    }
    let store = sharepush::state::Store::open_read_only(&fx.state()).unwrap();
    let folders: Vec<String> = store
        .folder_items("docs")
        .unwrap()
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert_eq!(folders, ["stays"], "the kept folder is theirs now");
    drop(store);

    // Nothing left to decide: the next run asks nothing about folders.
    let before = emu.requests().len();
    emu::put(&fx, "keep0.txt", b"edited");
    let r = emu::sync(&config, &emu::fast_policy()).await.remove(0);
    assert_eq!((r.uploaded, r.folders_deleted), (1, 0), "{r:?}");
    let listings = emu.requests()[before..]
        .iter()
        .filter(|q| q.path.ends_with("/children"))
        .count();
    assert_eq!(listings, 0);
}

/// The dry run applies the run's guard on remote deletes: with the source
/// emptied (an unmounted disk), or more deletes than `max_delete` allows,
/// it shows them held and no folder to delete, as the run then does. It
/// used to list them all as deletes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_shows_the_remote_deletes_the_run_would_hold() {
    let (emu, fx, config) = mirror_job().await;
    emu::put(&fx, "d/a.txt", b"alpha");
    emu::assert_clean(&emu::sync(&config, &emu::fast_policy()).await);
    let verbs = |stdout: &str| -> Vec<String> {
        stdout
            .lines()
            .filter_map(|l| l.strip_prefix("  "))
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect()
    };

    // More than max_delete: 2 of 6 files, against at most 1.
    let text = std::fs::read_to_string(&config.path).unwrap();
    let strict = with_max_delete_1(&config);
    std::fs::remove_file(fx.source().join("keep4.txt")).unwrap();
    std::fs::remove_dir_all(fx.source().join("d")).unwrap();
    let stdout = dry_run(&fx, &config.path);
    assert!(stdout.contains("0 remote delete(s) (2 held)"), "{stdout}");
    assert!(
        stdout.contains(
            "remote deletes held: 2 of 6 file(s) would be deleted, more than max_delete (1 files)"
        ),
        "{stdout}"
    );
    assert_eq!(verbs(&stdout), ["remote", "kept", "kept"], "{stdout}");
    assert!(
        stdout.contains("  kept     d/a.txt (deleted locally; its remote delete is held)"),
        "{stdout}"
    );
    let r = emu::sync(&strict, &emu::fast_policy()).await.remove(0);
    assert_eq!(
        (r.deleted, r.deletes_held, r.folders_deleted),
        (0, 2, 0),
        "{r:?}"
    );

    // Everything gone: the source looks unmounted, under the default guard.
    std::fs::write(&config.path, text).unwrap();
    for e in std::fs::read_dir(fx.source()).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    let stdout = dry_run(&fx, &config.path);
    assert!(stdout.contains("0 remote delete(s) (6 held)"), "{stdout}");
    assert!(stdout.contains("is empty (an unmounted disk?)"), "{stdout}");
    assert!(!stdout.contains("rmdir"), "{stdout}");
    let r = emu::sync(&config, &emu::fast_policy()).await.remove(0);
    assert_eq!(
        (r.deleted, r.deletes_held, r.folders_deleted),
        (0, 6, 0),
        "{r:?}"
    );
    assert_eq!(emu::remote_status(&emu, "d/a.txt").await, 200);
}

/// The dry run shows a local rename as the one server move the run makes,
/// not as an upload and a delete, and leaves it out of the `max_delete`
/// guard as the run does (it showed two renames as deletes held).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_shows_a_local_rename_as_a_move() {
    let (_emu, fx, config) = mirror_job().await;
    emu::put(&fx, "a.txt", b"alpha");
    emu::put(&fx, "b.txt", b"bravo");
    emu::assert_clean(&emu::sync(&config, &emu::fast_policy()).await);
    let config = with_max_delete_1(&config);
    for (from, to) in [("a.txt", "c.txt"), ("b.txt", "d.txt")] {
        std::fs::rename(fx.source().join(from), fx.source().join(to)).unwrap();
    }
    let stdout = dry_run(&fx, &config.path);
    assert!(
        stdout.contains("upload 0 file(s)") && stdout.contains(", 0 remote delete(s)"),
        "{stdout}"
    );
    assert!(!stdout.contains("held:"), "{stdout}");
    let lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with("  ")).collect();
    assert_eq!(
        lines,
        [
            "  move     a.txt -> c.txt (renamed locally)",
            "  move     b.txt -> d.txt (renamed locally)"
        ],
        "{stdout}"
    );
    let r = emu::sync(&config, &emu::fast_policy()).await.remove(0);
    emu::assert_clean(std::slice::from_ref(&r));
    assert_eq!(
        (r.uploaded, r.moved.len(), r.deletes_held),
        (0, 2, 0),
        "{r:?}"
    );
}

/// Mirror: a file renamed locally to a path SharePoint cannot hold (too
/// long) is not moved there: the new path is reported, and the old copy
/// is deleted like any file gone locally. The move used to be tried, fail
/// (400 pathIsTooLong) and forget the old row, leaving the old copy in
/// SharePoint for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_deletes_a_file_renamed_to_a_path_sharepoint_refuses() {
    let (emu, fx, config) = mirror_job().await;
    emu::put(&fx, "a.txt", b"alpha");
    emu::assert_clean(&emu::sync(&config, &emu::fast_policy()).await);
    let long = format!(
        "{}/{}/{}.txt",
        "x".repeat(150),
        "y".repeat(150),
        "z".repeat(90)
    );
    std::fs::create_dir_all(fx.source().join(&long).parent().unwrap()).unwrap();
    std::fs::rename(fx.source().join("a.txt"), fx.source().join(&long)).unwrap();
    let stdout = dry_run(&fx, &config.path);
    assert!(!stdout.contains("  move "), "{stdout}");
    for run in 0..2 {
        let r = emu::sync(&config, &emu::fast_policy()).await.remove(0);
        assert!(r.failed.is_empty(), "run {run}: {r:?}");
        assert!(r.moved.is_empty(), "run {run}: {r:?}");
        let skipped: Vec<&str> = r.skipped.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(skipped, [long.as_str()], "run {run}: {r:?}");
    }
    assert_eq!(emu::remote_status(&emu, "a.txt").await, 404);
    assert!(
        !emu.requests().iter().any(|r| r.status == 400),
        "a move SharePoint refuses is not tried: {:?}",
        emu.requests()
            .iter()
            .filter(|r| r.status == 400)
            .collect::<Vec<_>>()
    );
}

/// Mirror: a local folder replaced by a file of its name. Our files in the
/// folder are deleted and then the folder, before the file goes up: the
/// file takes its name in the same run instead of failing with 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_makes_way_for_a_file_that_replaced_a_folder() {
    let (emu, fx, config) = mirror_job().await;
    emu::put(&fx, "d/x.txt", b"in a folder");
    emu::put(&fx, "d/deeper/y.txt", b"further in");
    emu::assert_clean(&emu::sync(&config, &emu::fast_policy()).await);
    std::fs::remove_dir_all(fx.source().join("d")).unwrap();
    emu::put(&fx, "d", b"now a file");
    let r = emu::sync(&config, &emu::fast_policy()).await.remove(0);
    assert!(r.failed.is_empty(), "{r:?}");
    assert_eq!(
        (r.uploaded, r.deleted, r.folders_deleted),
        (1, 2, 2),
        "{r:?}"
    );
    assert_eq!(
        emu.read_file(&format!("{FOLDER}/d")).as_deref(),
        Some(&b"now a file"[..])
    );
    emu::assert_clean(&emu::sync(&config, &emu::fast_policy()).await);
}

/// `delete = "keep"` never deletes a folder, and neither does a mirror run
/// whose deletes the guard holds (here: the source looks unmounted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folders_stay_under_keep_and_when_mirror_deletes_are_held() {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let keep = emu::config_with_job_lines(&fx, &emu, "");
    emu::put(&fx, "d/a.txt", b"alpha");
    emu::put(&fx, "e/b.txt", b"bravo");
    emu::assert_clean(&emu::sync(&keep, &emu::fast_policy()).await);
    std::fs::remove_dir_all(fx.source().join("d")).unwrap();
    let r = emu::sync(&keep, &emu::fast_policy()).await.remove(0);
    assert_eq!((r.deleted, r.folders_deleted), (0, 0), "{r:?}");
    assert_eq!(emu::remote_status(&emu, "d/a.txt").await, 200);

    let mirror = emu::config_with_job_lines(&fx, &emu, "delete = \"mirror\"");
    std::fs::remove_dir_all(fx.source().join("e")).unwrap();
    let r = emu::sync(&mirror, &emu::fast_policy()).await.remove(0);
    assert_eq!(
        (r.deleted, r.deletes_held, r.folders_deleted),
        (0, 1, 0),
        "{r:?}"
    );
    assert_eq!(emu::remote_status(&emu, "e/b.txt").await, 200);
    assert_eq!(emu::remote_status(&emu, "d").await, 200);
}

/// Mirror: a folder renamed locally only in case is the same folder in
/// SharePoint (names are case-insensitive); it is never deleted as gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_keeps_a_folder_renamed_only_in_case() {
    let (emu, fx, config) = mirror_job().await;
    emu::put(&fx, "Docs/a.txt", b"alpha");
    emu::put(&fx, "Docs/b.txt", b"bravo");
    emu::assert_clean(&emu::sync(&config, &emu::fast_policy()).await);
    std::fs::rename(fx.source().join("Docs"), fx.source().join("docs")).unwrap();
    // Edited too, so the files are new ones, not moves: the old ones are
    // deleted, leaving the folder empty for a moment.
    emu::put(&fx, "docs/a.txt", b"alpha 2");
    emu::put(&fx, "docs/b.txt", b"bravo 2");
    for run in 0..3 {
        let r = emu::sync(&config, &emu::fast_policy()).await.remove(0);
        assert!(r.failed.is_empty(), "run {run}: {r:?}");
        assert_eq!(r.folders_deleted, 0, "run {run}: {r:?}");
    }
    for (f, content) in [("a.txt", "alpha 2"), ("b.txt", "bravo 2")] {
        assert_eq!(
            emu.read_file(&format!("{FOLDER}/docs/{f}")).as_deref(),
            Some(content.as_bytes()),
            "{f}"
        );
    }
}

/// Mirror: folders someone else made in the job's folder before the job's
/// first run (found when that run lists the folder) are not sharepush's:
/// not deleted, even empty and with no local folder of their name. A
/// folder that matched a local one when it was found stands for it, and
/// goes when the local folder does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_leaves_alone_the_empty_folders_someone_else_made() {
    let (emu, fx, config) = mirror_job().await;
    emu::put(&fx, "d/a.txt", b"alpha");
    for folder in ["", "theirs", "theirs/inner", "d"] {
        emu::remote_mkdir(&emu, folder).await;
    }
    for run in 0..2 {
        let r = emu::sync(&config, &emu::fast_policy()).await.remove(0);
        emu::assert_clean(std::slice::from_ref(&r));
        assert_eq!(r.folders_deleted, 0, "run {run}: {r:?}");
    }
    for kept in ["theirs", "theirs/inner", "d/a.txt"] {
        assert_eq!(emu::remote_status(&emu, kept).await, 200, "{kept}");
    }

    std::fs::remove_dir_all(fx.source().join("d")).unwrap();
    let r = emu::sync(&config, &emu::fast_policy()).await.remove(0);
    emu::assert_clean(std::slice::from_ref(&r));
    assert_eq!((r.deleted, r.folders_deleted), (1, 1), "{r:?}");
    assert_eq!(emu::remote_status(&emu, "d").await, 404);
    for kept in ["theirs", "theirs/inner"] {
        assert_eq!(emu::remote_status(&emu, kept).await, 200, "{kept}");
    }
}

/// Mirror: a remote folder the job's patterns leave out is not the job's,
/// even when a local folder of its name is there as the first run finds
/// it: it stays when the local folder goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_leaves_alone_a_remote_folder_the_patterns_leave_out() {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let config = emu::config_with_job_lines(&fx, &emu, "delete = \"mirror\"\nexclude = [\"tmp/\"]");
    for i in 0..5 {
        emu::put(&fx, &format!("keep{i}.txt"), b"k");
    }
    emu::put(&fx, "tmp/scratch.txt", b"scratch");
    for folder in ["", "tmp"] {
        emu::remote_mkdir(&emu, folder).await;
    }
    let r = emu::sync(&config, &emu::fast_policy()).await.remove(0);
    emu::assert_clean(std::slice::from_ref(&r));
    assert_eq!(r.uploaded, 5, "{r:?}");

    std::fs::remove_dir_all(fx.source().join("tmp")).unwrap();
    let r = emu::sync(&config, &emu::fast_policy()).await.remove(0);
    emu::assert_clean(std::slice::from_ref(&r));
    assert_eq!(r.folders_deleted, 0, "{r:?}");
    assert_eq!(emu::remote_status(&emu, "tmp").await, 200);
}

/// A job pointed at another folder (or library) sends every file there,
/// not only the ones that change from now on; the copies in the old folder
/// stay. Pointed at a folder that already holds the same files (the
/// administrator moved the folder in SharePoint and then the config), it
/// takes them as they are and sends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_pointed_at_another_folder_backs_up_everything_there() {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let path = emu::write_config(&fx, &emu, Sign::Secret, "");
    emu::put(&fx, "a.txt", b"alpha");
    emu::put(&fx, "d/b.txt", b"bravo");
    emu::assert_clean(&emu::sync(&emu::load(&path), &emu::fast_policy()).await);
    let point_at = |folder: &str| {
        let text = std::fs::read_to_string(&path).unwrap();
        let at = text.find("\nfolder = ").unwrap() + 1;
        let end = at + text[at..].find('\n').unwrap();
        std::fs::write(
            &path,
            format!("{}folder = \"{folder}\"{}", &text[..at], &text[end..]),
        )
        .unwrap();
        emu::load(&path)
    };

    let config = point_at("elsewhere");
    // The dry run says so too, instead of "up to date".
    let stdout = dry_run(&fx, &path);
    assert!(
        stdout.contains("would create 1 folder(s) and upload 2 file(s)")
            && stdout.contains("the job now backs up to")
            && stdout.contains("/ elsewhere (was "),
        "{stdout}"
    );
    let r = emu::sync(&config, &emu::fast_policy()).await.remove(0);
    assert!(r.failed.is_empty(), "{r:?}");
    assert_eq!(r.uploaded, 2, "{r:?}");
    for (rel, content) in [("a.txt", &b"alpha"[..]), ("d/b.txt", b"bravo")] {
        assert_eq!(
            emu.read_file(&format!("elsewhere/{rel}")).as_deref(),
            Some(content)
        );
        assert_eq!(
            emu.read_file(&format!("{FOLDER}/{rel}")).as_deref(),
            Some(content)
        );
    }
    emu::assert_clean(&emu::sync(&config, &emu::fast_policy()).await);

    // Moved in SharePoint, then in the config: nothing to send.
    let r = emu::http()
        .patch(format!(
            "{}/drives/{}/root:/elsewhere:",
            emu.graph_url(),
            emu.drive_id()
        ))
        .bearer_auth(emu::other_token(&emu))
        .json(&serde_json::json!({"name": "archive"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let config = point_at("archive");
    let before = emu.requests().len();
    let r = emu::sync(&config, &emu::fast_policy()).await.remove(0);
    assert!(r.failed.is_empty(), "{r:?}");
    assert_eq!(r.uploaded, 0, "{r:?}");
    assert_eq!(r.reconcile.as_ref().map(|c| c.adopted), Some(2), "{r:?}");
    let sent = emu.requests()[before..]
        .iter()
        .filter(|q| q.route == "upload" || q.path.ends_with("/createUploadSession"))
        .count();
    assert_eq!(sent, 0);
    emu::assert_clean(&emu::sync(&config, &emu::fast_policy()).await);
}

/// A stored delta link names the service it came from. With `graph_url`
/// pointing elsewhere (here: another emulator), it is not followed (nor
/// given the access token): the library's changes are followed from
/// scratch there, and what that library lacks goes up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_link_from_another_service_is_not_followed() {
    let first = emu::start(Options::default()).await;
    let fx = Fixture::new();
    emu::put(&fx, "a.txt", b"alpha");
    emu::put(&fx, "d/b.txt", b"bravo");
    let config = emu::load(&emu::write_config(&fx, &first, Sign::Secret, ""));
    emu::assert_clean(&emu::sync(&config, &emu::fast_policy()).await);
    first.shutdown().await.unwrap();

    let second = emu::start(Options::default()).await;
    let config = emu::load(&emu::write_config(&fx, &second, Sign::Secret, ""));
    let r = emu::sync(&config, &emu::fast_policy()).await.remove(0);
    assert!(r.failed.is_empty() && r.error.is_none(), "{r:?}");
    assert!(r.reconcile.as_ref().is_some_and(|c| c.resynced), "{r:?}");
    assert_eq!(r.uploaded, 2, "{r:?}");
    assert_eq!(
        second.read_file(&format!("{FOLDER}/d/b.txt")).as_deref(),
        Some(&b"bravo"[..])
    );
    emu::assert_clean(&emu::sync(&config, &emu::fast_policy()).await);
}

/// The tenant's upload slots are shared by every job, and a job with a
/// `bandwidth_limit` spends most of its time waiting for its next turn to
/// send. It used to wait holding its slots: another job sharing the tenant
/// (the daemon runs them together) got none until the slow job had sent
/// everything, days for a large first backup over a limited line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_waiting_for_its_bandwidth_leaves_the_upload_slot_to_other_jobs() {
    use sharepush::state::RunTrigger;
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    // Two slots for the tenant. "docs" sends 1 KiB/s: one file's first
    // fragment (960 KiB) trickles out for 16 minutes, holding a slot as
    // any upload in flight does; the other file's turn comes after that.
    let path = emu::write_config(&fx, &emu, Sign::Secret, "concurrency = 2");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("bandwidth_limit = 1024\n");
    let logs = fx.path("logs");
    std::fs::create_dir_all(&logs).unwrap();
    text.push_str(&format!(
        "\n[[job]]\nname = \"logs\"\nsource = \"{}\"\n\
         site = \"https://contoso.sharepoint.com/sites/demo\"\n\
         library = \"Documents\"\nfolder = \"logs\"\nschedule = \"@hourly\"\n",
        logs.display()
    ));
    std::fs::write(&path, text).unwrap();
    let config = emu::load(&path);
    assert_eq!(sharepush::job::tenant_concurrency(&config), 2);
    emu::put(&fx, "big.bin", &emu::content(2 * 960 * 1024, 1));
    emu::put(&fx, "big2.bin", &emu::content(2 * 960 * 1024, 2));
    std::fs::write(logs.join("today.log"), b"one line\n").unwrap();

    let (remote, throttle) = emu::graph_remote(
        &config,
        sharepush::remote::graph::http_client().unwrap(),
        emu::fast_policy().policy,
        2,
    );
    let store = sharepush::upload::SharedStore::new(
        sharepush::state::Store::open(&config.daemon.state_dir).unwrap(),
    );
    let cancel = tokio_util::sync::CancellationToken::new();
    let run = |job| {
        sharepush::job::run_once(
            &remote,
            &store,
            &throttle,
            job,
            RunTrigger::Manual,
            None,
            None,
            &cancel,
        )
    };
    let docs = run(&config.jobs[0]);
    let logs = async {
        assert!(
            emu.wait_for_requests(Duration::from_secs(30), |log| {
                log.iter()
                    .filter(|r| r.path.ends_with("/createUploadSession"))
                    .count()
                    >= 2
            })
            .await,
            "both of docs' uploads under way"
        );
        tokio::time::timeout(Duration::from_secs(20), run(&config.jobs[1])).await
    };
    tokio::select! {
        _ = docs => panic!("docs cannot be done: its second fragment waits for its turn"),
        report = logs => {
            let report = report
                .expect("logs' upload waited for docs' bandwidth")
                .unwrap();
            assert_eq!(report.uploaded, 1, "{report:?}");
        }
    }
}

/// `bandwidth_limit` paces the bytes on the wire: each fragment goes out a
/// little at a time over its share of the limit. It went out whole at line
/// speed after waiting for its turn: the office line the limit protects
/// was saturated for as long as a fragment took, then idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bandwidth_limit_paces_each_fragment_on_the_wire() {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    // 1280 KiB/s: the 960 KiB fragment takes 0.75 s, the 320 KiB one 0.25 s.
    let limit = 1280 * 1024;
    let config = emu::load(&emu::write_config(
        &fx,
        &emu,
        Sign::Secret,
        &format!("bandwidth_limit = {limit}"),
    ));
    let files = vec![("paced.bin".to_string(), emu::content(1280 * 1024, 3))];
    emu::put(&fx, &files[0].0, &files[0].1);
    emu::assert_clean(&emu::sync(&config, &emu::fast_policy()).await);
    emu::assert_arrived(&emu, &files);
    let puts: Vec<_> = emu
        .requests()
        .into_iter()
        .filter(|r| r.route == "upload" && r.method == "PUT")
        .collect();
    assert_eq!(puts.len(), 2, "{puts:?}");
    for (put, len) in puts.iter().zip([960 * 1024u64, 320 * 1024]) {
        let took_ms = put.t_ms - put.t_start_ms;
        let share_ms = len * 1000 / limit;
        assert!(
            took_ms * 10 >= share_ms * 8,
            "a {len}-byte fragment arrived in {took_ms} ms, its share of the limit is {share_ms} ms"
        );
    }
}

/// A full library refuses new folders too (507): that is not the folder's
/// fault. The files under it used to be recorded failed (retried in six
/// hours, reported as failures) while other jobs went on sending to the
/// full library; now, as for a 507 on a file, uploads to the library stop
/// for every job and the files stay pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_library_refusing_a_folder_stops_uploads_and_keeps_files_pending() {
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let config = emu::load(&emu::write_config(&fx, &emu, Sign::Secret, ""));
    emu::put(&fx, "a.txt", b"first");
    emu::assert_clean(&emu::sync(&config, &emu::fast_policy()).await);
    emu::put(&fx, "sub/b.txt", b"second");
    // The run's first Graph request is its delta; the second creates `sub`.
    emu.add_faults("graph:507:after=1:count=1").unwrap();
    let reports = emu::sync(&config, &emu::fast_policy()).await;
    let r = &reports[0];
    assert!(r.failed.is_empty(), "not the files' fault: {:?}", r.failed);
    assert_eq!((r.uploaded, r.quota_full), (0, Some(1)), "{r:?}");
    let log = emu.requests();
    assert_eq!(log.iter().filter(|r| r.status == 507).count(), 1);
    assert!(
        !log.iter().any(|r| r.path.contains("b.txt")),
        "nothing sent to the full library"
    );
    let store = sharepush::state::Store::open_read_only(&fx.state()).unwrap();
    let record = store.file("docs", "sub/b.txt").unwrap().unwrap();
    assert_eq!(record.state, FileState::Pending, "{record:?}");
}

/// A fragment is 10 MiB by default; over a slow line (a branch office's
/// uplink) sending it takes minutes. The client's 120 s `read_timeout`
/// used to run from the start of the request, body included (reqwest
/// 0.13), so every fragment slower than that was cut off and retried,
/// each retry the same, and the file never went up. Here the limit for
/// ordinary requests is 1 s and the fragment takes 2.5 s to be taken in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fragment_slower_than_the_request_timeout_is_not_cut_off() {
    use sharepush::remote::{FragmentOutcome, Remote, RemotePath};
    let emu = emu::start(Options::default()).await;
    let fx = Fixture::new();
    let config = emu::load(&emu::write_config(&fx, &emu, Sign::Secret, ""));
    let mut policy = emu::fast_policy().policy;
    // One try: a fragment cut off fails the test instead of being retried.
    policy.max_attempts = 1;
    let http = sharepush::remote::graph::http_client_with(Duration::from_secs(1)).unwrap();
    let (remote, _throttle) = emu::graph_remote(&config, http, policy, 1);
    let job = &config.jobs[0];
    let drive = remote.resolve_drive(&job.site, &job.library).await.unwrap();
    let path = RemotePath::parse("slow.bin");
    let session = remote
        .create_session(&drive, &path, chrono::Utc::now())
        .await
        .unwrap();
    emu.add_faults("upload:latency:ms=2500:count=1").unwrap();
    let content = emu::content(emu::K320, 5);
    let outcome = remote
        .put_fragment(
            &session.url,
            0,
            bytes::Bytes::from(content.clone()),
            content.len() as u64,
            None,
        )
        .await
        .expect("the slow fragment went through");
    assert!(matches!(outcome, FragmentOutcome::Done(_)), "{outcome:?}");
    // Ordinary requests still give up on a peer that does not answer.
    emu.add_faults("graph:latency:ms=2500:count=1").unwrap();
    assert!(
        remote.stat(&drive, &path).await.is_err(),
        "a stat is cut off"
    );
}
