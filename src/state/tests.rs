//! Tests of the state store against real databases in temporary directories.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use rstest::rstest;
use rusqlite::Connection;

use super::*;
use crate::hash::{Hashes, hash_bytes};
use crate::scan::{Change, LocalEntry};

const JOB: &str = "reports";

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn entry(path: &str, content: &[u8], mtime_ns: i64, change: Change) -> LocalEntry {
    LocalEntry {
        path: path.to_string(),
        size: content.len() as u64,
        mtime_ns,
        inode: 1000 + path.len() as u64,
        hashes: Some(hash_bytes(content)),
        change,
    }
}

fn synced_info(content: &[u8]) -> SyncedInfo {
    SyncedInfo {
        content: hash_bytes(content),
        item_id: Some("ITEM1".into()),
        etag: Some("\"{E1},1\"".into()),
        remote_quick_xor: Some(hash_bytes(content).quick_xor),
        remote_size: Some(content.len() as u64),
        remote_name: None,
        remote_parent: None,
    }
}

fn open_temp() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    (dir, store)
}

fn state_of(store: &Store, path: &str) -> FileState {
    store.file(JOB, path).unwrap().unwrap().state
}

// ---------------------------------------------------------------- opening

#[test]
fn open_creates_private_dir_and_database() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("var/lib/sharepush");
    let mut store = Store::open(&dir).unwrap();
    store
        .record_scanned(JOB, &[entry("a", b"x", 1, Change::New)])
        .unwrap();

    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join(DB_FILE)), 0o600);
    // SQLite gives its side files the database's mode.
    for side in ["state.db-wal", "state.db-shm"] {
        assert!(dir.join(side).exists(), "{side} exists in WAL mode");
        assert_eq!(mode(&dir.join(side)), 0o600, "{side}");
    }
    let lock = std::fs::read_to_string(dir.join(LOCK_FILE)).unwrap();
    assert_eq!(lock.trim(), std::process::id().to_string());
    let journal: String = store
        .conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(journal, "wal");
    let fk: i64 = store
        .conn
        .pragma_query_value(None, "foreign_keys", |r| r.get(0))
        .unwrap();
    assert_eq!(fk, 1);
    assert_eq!(store.dir(), dir);
}

#[test]
fn store_can_move_to_a_blocking_thread() {
    fn assert_send<T: Send>() {}
    assert_send::<Store>();
}

#[test]
fn existing_world_readable_database_is_tightened() {
    let tmp = tempfile::tempdir().unwrap();
    drop(Store::open(tmp.path()).unwrap());
    let db = tmp.path().join(DB_FILE);
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    drop(Store::open(tmp.path()).unwrap());
    assert_eq!(mode(&db), 0o600);
}

// `File::try_lock` is flock(2): a second open file description conflicts even
// within one process, so this needs no child process.
#[test]
fn second_open_fails_fast_naming_the_holder_pid() {
    let tmp = tempfile::tempdir().unwrap();
    let first = Store::open(tmp.path()).unwrap();
    let err = Store::open(tmp.path()).unwrap_err();
    assert!(err.is_locked(), "{err:?}");
    match &err {
        StateError::Locked { dir, pid } => {
            assert_eq!(dir, tmp.path());
            assert_eq!(*pid, Some(std::process::id()));
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains(&format!(
            "state directory {} is in use by another sharepush process (pid {})",
            tmp.path().display(),
            std::process::id()
        )),
        "{message}"
    );
    assert!(message.contains("--state-dir"), "{message}");

    // A read-only store needs no lock and works beside the writer.
    let reader = Store::open_read_only(tmp.path()).unwrap();
    assert_eq!(reader.counts(JOB).unwrap(), StateCounts::default());

    drop(first);
    let _again = Store::open(tmp.path()).expect("lock released on drop");
}

#[test]
fn locked_without_pid_says_so_plainly() {
    let err = StateError::Locked {
        dir: "/var/lib/sharepush".into(),
        pid: None,
    };
    assert_eq!(
        err.to_string(),
        "state directory /var/lib/sharepush is in use by another sharepush process; stop it first or use --state-dir \
         (a running daemon runs every job now on SIGUSR1: `systemctl kill -s USR1 sharepush`)"
    );
}

#[test]
fn reopening_keeps_data_and_migrations_are_idempotent() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let mut store = Store::open(tmp.path()).unwrap();
        store
            .record_scanned(JOB, &[entry("a.txt", b"hello", 7, Change::New)])
            .unwrap();
    }
    let mut store = Store::open(tmp.path()).unwrap();
    assert_eq!(store.known_files(JOB).unwrap().len(), 1);
    let version = schema::user_version(&store.conn, store.db_path()).unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    // Running the migrations again changes nothing.
    let db = store.db_path().to_path_buf();
    schema::migrate(&mut store.conn, &db).unwrap();
    assert_eq!(
        schema::user_version(&store.conn, &db).unwrap(),
        SCHEMA_VERSION
    );
    assert_eq!(store.known_files(JOB).unwrap().len(), 1);
}

#[test]
fn database_from_a_newer_sharepush_is_refused_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join(DB_FILE);
    {
        let conn = Connection::open(&db).unwrap();
        conn.execute_batch(
            "CREATE TABLE files (job TEXT, path TEXT, future_column TEXT);
             INSERT INTO files VALUES ('j', 'p', 'keep me');
             PRAGMA user_version = 999;",
        )
        .unwrap();
    }
    let err = Store::open(tmp.path()).unwrap_err();
    match &err {
        StateError::TooNew {
            found,
            supported,
            path,
        } => {
            assert_eq!((*found, *supported), (999, SCHEMA_VERSION));
            assert_eq!(path, &db);
        }
        other => panic!("expected TooNew, got {other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains("newer sharepush"), "{message}");
    assert!(message.contains("upgrade sharepush or use another --state-dir"));
    assert!(message.contains(&db.display().to_string()));
    let err = Store::open_read_only(tmp.path()).unwrap_err();
    assert!(
        matches!(err, StateError::TooNew { found: 999, .. }),
        "{err:?}"
    );

    let conn = Connection::open(&db).unwrap();
    let kept: String = conn
        .query_row("SELECT future_column FROM files", [], |r| r.get(0))
        .unwrap();
    assert_eq!(kept, "keep me");
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, 999);
    let journal: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(journal, "delete", "not even the journal mode changed");
}

#[test]
fn read_only_open_reads_and_refuses_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let err = Store::open_read_only(tmp.path()).unwrap_err();
    assert!(matches!(err, StateError::Missing { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("has not run with this --state-dir")
    );

    {
        let mut store = Store::open(tmp.path()).unwrap();
        store
            .record_scanned(JOB, &[entry("a", b"1", 1, Change::New)])
            .unwrap();
    }
    // Writer closed (WAL checkpointed and removed): reading still works.
    let mut reader = Store::open_read_only(tmp.path()).unwrap();
    assert_eq!(reader.counts(JOB).unwrap().pending, 1);
    assert_eq!(reader.jobs().unwrap(), vec![JOB.to_string()]);
    let err = reader
        .record_scanned(JOB, &[entry("b", b"2", 1, Change::New)])
        .unwrap_err();
    assert!(matches!(err, StateError::Sqlite { .. }), "{err:?}");
}

#[test]
fn read_only_open_of_an_older_schema_asks_for_an_upgrade() {
    let tmp = tempfile::tempdir().unwrap();
    Connection::open(tmp.path().join(DB_FILE)).unwrap();
    let err = Store::open_read_only(tmp.path()).unwrap_err();
    assert!(
        matches!(err, StateError::TooOld { found: 0, .. }),
        "{err:?}"
    );
}

// ---------------------------------------------------------------- files

#[test]
fn record_scanned_and_known_files_round_trip() {
    let (_tmp, mut store) = open_temp();
    let big_inode = u64::MAX - 5; // above i64::MAX: stored bit-for-bit
    let mut a = entry(
        "dir/a.txt",
        b"alpha",
        1_700_000_000_123_456_789,
        Change::New,
    );
    a.inode = big_inode;
    let b = entry("b.bin", b"", -5, Change::New);
    store.record_scanned(JOB, &[a.clone(), b.clone()]).unwrap();
    store
        .record_scanned("other", &[entry("x", b"x", 1, Change::New)])
        .unwrap();

    let known = store.known_files(JOB).unwrap();
    assert_eq!(known.len(), 2);
    let ka = &known["dir/a.txt"];
    assert_eq!(
        (ka.size, ka.mtime_ns, ka.inode),
        (5, 1_700_000_000_123_456_789, big_inode)
    );
    assert_eq!(ka.hashes.map(|h| h.to_hashes()), a.hashes.clone());
    assert!(!ka.synced, "pending is not synced");
    assert_eq!(known["b.bin"].mtime_ns, -5);

    store
        .mark_synced(JOB, "dir/a.txt", &synced_info(b"alpha"))
        .unwrap();
    assert!(store.known_files(JOB).unwrap()["dir/a.txt"].synced);
    assert_eq!(
        store.jobs().unwrap(),
        vec!["other".to_string(), JOB.to_string()]
    );
}

#[test]
fn touch_without_edit_keeps_synced_and_updates_fingerprint() {
    let (_tmp, mut store) = open_temp();
    store
        .record_scanned(JOB, &[entry("a", b"same", 1, Change::New)])
        .unwrap();
    store.mark_synced(JOB, "a", &synced_info(b"same")).unwrap();
    let mut touched = entry("a", b"same", 99, Change::Changed);
    touched.inode = 4242;
    store.record_scanned(JOB, &[touched]).unwrap();

    let record = store.file(JOB, "a").unwrap().unwrap();
    assert_eq!((record.mtime_ns, record.inode), (99, 4242));
    assert!(
        matches!(record.state, FileState::Synced { .. }),
        "{record:?}"
    );
    assert!(store.known_files(JOB).unwrap()["a"].synced);
    assert!(
        !store.known_files(JOB).unwrap()["a"].racy,
        "changed long before the upload read it: trusted"
    );
}

#[test]
fn an_unhashed_new_file_gets_the_uploaders_hashes_only_while_its_fingerprint_holds() {
    let (_tmp, mut store) = open_temp();
    let mut a = entry("a", b"content", 1, Change::New);
    a.hashes = None;
    let mut b = entry("b", b"other", 1, Change::New);
    b.hashes = None;
    store.record_scanned(JOB, &[a.clone(), b.clone()]).unwrap();
    assert_eq!(store.file(JOB, "a").unwrap().unwrap().hashes, None);
    // An unchanged rescan that did not hash either writes nothing.
    store.record_scanned(JOB, &[a.clone()]).unwrap();
    assert_eq!(state_of(&store, "a"), FileState::Pending);

    let fp = (a.size, a.mtime_ns, a.inode);
    assert!(
        store
            .record_hashes(JOB, "a", fp, &hash_bytes(b"content"), i64::MAX)
            .unwrap()
    );
    assert!(
        !store
            .record_hashes(JOB, "a", fp, &hash_bytes(b"x"), i64::MAX)
            .unwrap(),
        "recorded hashes are never overwritten"
    );
    assert!(matches!(
        store
            .mark_synced(JOB, "a", &synced_info(b"content"))
            .unwrap(),
        FileState::Synced { .. }
    ));
    assert!(store.known_files(JOB).unwrap()["a"].synced);

    // b moved on (a newer scan recorded another fingerprint) while its
    // upload read the old one: the hashes are not taken, b stays pending.
    let mut b2 = b.clone();
    b2.mtime_ns = 2;
    store.record_scanned(JOB, &[b2]).unwrap();
    let old = (b.size, b.mtime_ns, b.inode);
    assert!(
        !store
            .record_hashes(JOB, "b", old, &hash_bytes(b"other"), i64::MAX)
            .unwrap()
    );
    assert_eq!(
        store.mark_synced(JOB, "b", &synced_info(b"other")).unwrap(),
        FileState::Pending
    );
}

#[test]
fn a_file_the_uploader_read_right_after_its_last_change_is_recorded_racy() {
    let (_tmp, mut store) = open_temp();
    let mut c = entry("c", b"fresh", 1_000, Change::New);
    c.hashes = None;
    store.record_scanned(JOB, &[c.clone()]).unwrap();
    let fp = (c.size, c.mtime_ns, c.inode);
    // The upload started reading within the racy margin of the mtime: the
    // same size and mtime later cannot prove the content is unchanged.
    assert!(
        store
            .record_hashes(JOB, "c", fp, &hash_bytes(b"fresh"), 500)
            .unwrap()
    );
    store.mark_synced(JOB, "c", &synced_info(b"fresh")).unwrap();
    let known = store.known_files(JOB).unwrap();
    assert!(known["c"].synced);
    assert!(known["c"].racy, "the next scan must hash it again");
}

#[test]
fn edit_makes_a_synced_file_pending_and_keeps_its_remote_item() {
    let (_tmp, mut store) = open_temp();
    store
        .record_scanned(JOB, &[entry("a", b"v1", 1, Change::New)])
        .unwrap();
    store.mark_synced(JOB, "a", &synced_info(b"v1")).unwrap();
    store
        .record_scanned(JOB, &[entry("a", b"v2", 2, Change::Changed)])
        .unwrap();
    let record = store.file(JOB, "a").unwrap().unwrap();
    assert_eq!(record.state, FileState::Pending);
    assert_eq!(record.hashes, Some(hash_bytes(b"v2")));
    assert_eq!(record.item_id.as_deref(), Some("ITEM1"));
    assert!(!store.known_files(JOB).unwrap()["a"].synced);
}

#[test]
fn sync_of_content_that_was_edited_since_leaves_the_file_pending() {
    let (_tmp, mut store) = open_temp();
    store
        .record_scanned(JOB, &[entry("a", b"v1", 1, Change::New)])
        .unwrap();
    store.mark_uploading(JOB, "a").unwrap();
    // A scan sees a newer edit while v1 is being uploaded.
    store
        .record_scanned(JOB, &[entry("a", b"v2", 2, Change::Changed)])
        .unwrap();
    let now = store.mark_synced(JOB, "a", &synced_info(b"v1")).unwrap();
    assert_eq!(now, FileState::Pending);
    let record = store.file(JOB, "a").unwrap().unwrap();
    assert_eq!(record.state, FileState::Pending);
    assert_eq!(
        record.item_id.as_deref(),
        Some("ITEM1"),
        "remote item recorded"
    );
}

#[test]
fn rewritten_office_file_records_the_remote_hash_and_stays_synced() {
    let (_tmp, mut store) = open_temp();
    store
        .record_scanned(JOB, &[entry("r.docx", b"ours", 1, Change::New)])
        .unwrap();
    let info = SyncedInfo {
        remote_quick_xor: Some(hash_bytes(b"rewritten").quick_xor),
        remote_size: Some(9),
        ..synced_info(b"ours")
    };
    store.mark_synced(JOB, "r.docx", &info).unwrap();
    store
        .record_scanned(JOB, &[entry("r.docx", b"ours", 1, Change::Unchanged)])
        .unwrap();
    assert_eq!(
        state_of(&store, "r.docx"),
        FileState::Synced {
            item_id: Some("ITEM1".into()),
            etag: Some("\"{E1},1\"".into()),
            remote_quick_xor: Some(hash_bytes(b"rewritten").quick_xor),
            remote_size: Some(9),
        }
    );
}

/// Brings file "f" (content b"v1") into a starting state.
#[derive(Debug, Clone, Copy)]
enum Start {
    Absent,
    Pending,
    Uploading,
    Synced,
    Failed2,
    Skipped,
}

/// One operation on file "f".
#[derive(Debug, Clone, Copy)]
enum Op {
    ScanSame,
    ScanTouched,
    ScanEdited,
    Uploading,
    SyncedV1,
    Failed,
    Pending,
    Skip,
}

/// The expected outcome: a state kind (and attempts for Failed), or an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Kind(FileStateKind),
    FailedAttempts(u32),
    NotFound,
    Refused,
}

fn setup(store: &mut Store, start: Start) {
    let scan = |store: &mut Store| {
        store
            .record_scanned(JOB, &[entry("f", b"v1", 1, Change::New)])
            .unwrap()
    };
    match start {
        Start::Absent => {}
        Start::Pending => scan(store),
        Start::Uploading => {
            scan(store);
            store.mark_uploading(JOB, "f").unwrap();
        }
        Start::Synced => {
            scan(store);
            store.mark_synced(JOB, "f", &synced_info(b"v1")).unwrap();
        }
        Start::Failed2 => {
            scan(store);
            store.mark_failed(JOB, "f", "boom", Some(10)).unwrap();
            store.mark_uploading(JOB, "f").unwrap();
            store.mark_failed(JOB, "f", "boom", Some(20)).unwrap();
        }
        Start::Skipped => {
            scan(store);
            store.record_skipped(JOB, "f", "unreadable").unwrap();
        }
    }
}

fn apply(store: &mut Store, op: Op) -> Result<(), StateError> {
    match op {
        Op::ScanSame => store.record_scanned(JOB, &[entry("f", b"v1", 1, Change::Unchanged)]),
        Op::ScanTouched => store.record_scanned(JOB, &[entry("f", b"v1", 9, Change::Changed)]),
        Op::ScanEdited => store.record_scanned(JOB, &[entry("f", b"v2", 9, Change::Changed)]),
        Op::Uploading => store.mark_uploading(JOB, "f"),
        Op::SyncedV1 => store.mark_synced(JOB, "f", &synced_info(b"v1")).map(drop),
        Op::Failed => store.mark_failed(JOB, "f", "503", None).map(drop),
        Op::Pending => store.mark_pending(JOB, "f"),
        Op::Skip => store.record_skipped(JOB, "f", "name not allowed"),
    }
}

#[rstest]
// Scans.
#[case(Start::Absent, Op::ScanSame, Expect::Kind(FileStateKind::Pending))]
#[case(Start::Pending, Op::ScanSame, Expect::Kind(FileStateKind::Pending))]
#[case(Start::Uploading, Op::ScanSame, Expect::Kind(FileStateKind::Uploading))]
#[case(Start::Synced, Op::ScanSame, Expect::Kind(FileStateKind::Synced))]
#[case(Start::Synced, Op::ScanTouched, Expect::Kind(FileStateKind::Synced))]
#[case(Start::Synced, Op::ScanEdited, Expect::Kind(FileStateKind::Pending))]
#[case(Start::Uploading, Op::ScanEdited, Expect::Kind(FileStateKind::Pending))]
#[case(Start::Failed2, Op::ScanSame, Expect::FailedAttempts(2))]
#[case(Start::Failed2, Op::ScanTouched, Expect::FailedAttempts(2))]
#[case(Start::Failed2, Op::ScanEdited, Expect::Kind(FileStateKind::Pending))]
#[case(Start::Skipped, Op::ScanSame, Expect::Kind(FileStateKind::Pending))]
#[case(Start::Skipped, Op::ScanEdited, Expect::Kind(FileStateKind::Pending))]
// Upload transitions.
#[case(Start::Absent, Op::Uploading, Expect::NotFound)]
#[case(Start::Pending, Op::Uploading, Expect::Kind(FileStateKind::Uploading))]
#[case(Start::Failed2, Op::Uploading, Expect::Kind(FileStateKind::Uploading))]
#[case(Start::Synced, Op::Uploading, Expect::Kind(FileStateKind::Uploading))]
#[case(Start::Skipped, Op::Uploading, Expect::Refused)]
#[case(Start::Absent, Op::SyncedV1, Expect::NotFound)]
#[case(Start::Pending, Op::SyncedV1, Expect::Kind(FileStateKind::Synced))]
#[case(Start::Uploading, Op::SyncedV1, Expect::Kind(FileStateKind::Synced))]
#[case(Start::Failed2, Op::SyncedV1, Expect::Kind(FileStateKind::Synced))]
#[case(Start::Skipped, Op::SyncedV1, Expect::Refused)]
#[case(Start::Absent, Op::Failed, Expect::NotFound)]
#[case(Start::Pending, Op::Failed, Expect::FailedAttempts(1))]
#[case(Start::Uploading, Op::Failed, Expect::FailedAttempts(1))]
#[case(Start::Failed2, Op::Failed, Expect::FailedAttempts(3))]
#[case(Start::Skipped, Op::Failed, Expect::Refused)]
#[case(Start::Absent, Op::Pending, Expect::NotFound)]
#[case(Start::Synced, Op::Pending, Expect::Kind(FileStateKind::Pending))]
#[case(Start::Failed2, Op::Pending, Expect::Kind(FileStateKind::Pending))]
#[case(Start::Skipped, Op::Pending, Expect::Kind(FileStateKind::Pending))]
// Skips.
#[case(Start::Absent, Op::Skip, Expect::Kind(FileStateKind::Skipped))]
#[case(Start::Synced, Op::Skip, Expect::Kind(FileStateKind::Skipped))]
#[case(Start::Failed2, Op::Skip, Expect::Kind(FileStateKind::Skipped))]
fn file_state_transitions(#[case] start: Start, #[case] op: Op, #[case] expect: Expect) {
    let (_tmp, mut store) = open_temp();
    setup(&mut store, start);
    let before = store.file(JOB, "f").unwrap();
    let result = apply(&mut store, op);
    let after = store.file(JOB, "f").unwrap();
    match expect {
        Expect::NotFound => {
            assert!(
                matches!(result, Err(StateError::NotFound { .. })),
                "{result:?}"
            );
            assert_eq!(after, None);
        }
        Expect::Refused => {
            assert!(
                matches!(result, Err(StateError::InvalidTransition { .. })),
                "{result:?}"
            );
            assert_eq!(after, before, "a refused transition writes nothing");
        }
        Expect::Kind(kind) => {
            result.unwrap();
            assert_eq!(after.unwrap().state.kind(), kind);
        }
        Expect::FailedAttempts(n) => {
            result.unwrap();
            match after.unwrap().state {
                FileState::Failed { attempts, .. } => assert_eq!(attempts, n),
                other => panic!("expected Failed, got {other:?}"),
            }
        }
    }
}

#[test]
fn failure_details_and_reset_on_success() {
    let (_tmp, mut store) = open_temp();
    store
        .record_scanned(JOB, &[entry("f", b"v1", 1, Change::New)])
        .unwrap();
    assert_eq!(
        store
            .mark_failed(JOB, "f", "429 throttled", Some(100))
            .unwrap(),
        1
    );
    assert_eq!(store.mark_failed(JOB, "f", "503", Some(200)).unwrap(), 2);
    assert_eq!(
        state_of(&store, "f"),
        FileState::Failed {
            attempts: 2,
            error: "503".into(),
            next_attempt: Some(200)
        }
    );
    store.mark_uploading(JOB, "f").unwrap();
    assert_eq!(
        store.mark_failed(JOB, "f", "503", None).unwrap(),
        3,
        "attempts survive a retry"
    );
    store.mark_synced(JOB, "f", &synced_info(b"v1")).unwrap();
    store.mark_failed(JOB, "f", "again", None).unwrap();
    assert!(matches!(
        state_of(&store, "f"),
        FileState::Failed { attempts: 1, .. }
    ));
}

#[test]
fn skipped_files_round_trip_and_unknown_rows_are_rehashed() {
    let (_tmp, mut store) = open_temp();
    store
        .record_skipped(JOB, "bad:name", "invalid name")
        .unwrap();
    assert_eq!(
        state_of(&store, "bad:name"),
        FileState::Skipped {
            reason: "invalid name".into()
        }
    );
    let known = store.known_files(JOB).unwrap();
    let k = &known["bad:name"];
    assert_eq!(
        (k.size, k.mtime_ns, k.inode, &k.hashes, k.synced),
        (0, 0, 0, &None, false)
    );
    assert_eq!(store.counts(JOB).unwrap().skipped, 1);
}

#[test]
fn known_files_under_roots_and_the_paths_that_need_a_look() {
    let (_tmp, mut store) = open_temp();
    // "a-1", "a0" and "ab" sort between or right after "a/..." but are not
    // below "a".
    let paths = ["a", "a/b", "a/c/d", "a-1/e", "a0", "ab", "z"];
    let entries: Vec<_> = paths
        .iter()
        .map(|p| entry(p, p.as_bytes(), 1, Change::New))
        .collect();
    store.record_scanned(JOB, &entries).unwrap();
    for p in paths {
        store
            .mark_synced(JOB, p, &synced_info(p.as_bytes()))
            .unwrap();
    }
    store.record_scanned("other", &entries[..2]).unwrap();

    let (known, total) = store.known_files_under(JOB, &["a".into()]).unwrap();
    let mut found: Vec<_> = known.keys().map(String::as_str).collect();
    found.sort_unstable();
    assert_eq!(found, ["a", "a/b", "a/c/d"]);
    assert_eq!(total, 7, "every file of the job, not of other jobs");
    let (known, _) = store
        .known_files_under(JOB, &["a/c".into(), "z".into(), "missing".into()])
        .unwrap();
    let mut found: Vec<_> = known.keys().map(String::as_str).collect();
    found.sort_unstable();
    assert_eq!(found, ["a/c/d", "z"]);
    assert!(known["z"].synced);

    assert!(store.paths_needing_a_look(JOB).unwrap().is_empty());
    store.mark_failed(JOB, "a0", "e", None).unwrap();
    store.record_skipped(JOB, "new-skip", "too large").unwrap();
    let mut look = store.paths_needing_a_look(JOB).unwrap();
    look.sort_unstable();
    assert_eq!(look, ["a0", "new-skip"]);
}

#[test]
fn queries_for_status_and_planning() {
    let (_tmp, mut store) = open_temp();
    let entries: Vec<_> = ["c", "a", "b", "d"]
        .iter()
        .map(|p| entry(p, p.as_bytes(), 1, Change::New))
        .collect();
    store.record_scanned(JOB, &entries).unwrap();
    store.mark_synced(JOB, "a", &synced_info(b"a")).unwrap();
    store.mark_failed(JOB, "b", "e", None).unwrap();
    store.mark_failed(JOB, "d", "e", None).unwrap();
    store.record_skipped(JOB, "z", "too large").unwrap();

    assert_eq!(
        store.counts(JOB).unwrap(),
        StateCounts {
            pending: 1,
            uploading: 0,
            synced: 1,
            failed: 2,
            skipped: 1
        }
    );
    assert_eq!(store.counts(JOB).unwrap().total(), 5);
    let failed: Vec<_> = store
        .files_in_state(JOB, FileStateKind::Failed)
        .unwrap()
        .into_iter()
        .map(|r| r.path)
        .collect();
    assert_eq!(failed, ["b", "d"]);

    let all = store.all_records(JOB).unwrap();
    assert_eq!(all.len(), 5);
    assert_eq!(all["a"].item_id.as_deref(), Some("ITEM1"));
    let some = store.records_for(JOB, &["a", "c", "missing"]).unwrap();
    assert_eq!(some.len(), 2);
    assert_eq!(some["c"], all["c"]);
    assert_eq!(some["c"].state, FileState::Pending);

    assert_eq!(store.forget(JOB, &["a".into(), "nope".into()]).unwrap(), 1);
    assert_eq!(store.file(JOB, "a").unwrap(), None);
    assert_eq!(store.counts(JOB).unwrap().total(), 4);
}

#[test]
fn bulk_record_of_100k_files_in_one_transaction() {
    let (_tmp, mut store) = open_temp();
    let hashes = Hashes {
        sha1: "0".repeat(40),
        quick_xor: "A".repeat(28),
    };
    let entries: Vec<LocalEntry> = (0..100_000u64)
        .map(|i| LocalEntry {
            path: format!("d{:03}/f{i:06}.dat", i % 1000),
            size: i,
            mtime_ns: i as i64 * 1_000,
            inode: i,
            hashes: Some(hashes.clone()),
            change: Change::New,
        })
        .collect();
    store.record_scanned(JOB, &entries).unwrap();
    // An unchanged rescan writes nothing and changes nothing.
    store.record_scanned(JOB, &entries).unwrap();
    let known = store.known_files(JOB).unwrap();
    assert_eq!(known.len(), 100_000);
    assert_eq!(known["d123/f054123.dat"].size, 54_123);
    assert_eq!(store.counts(JOB).unwrap().pending, 100_000);
    let paths: Vec<String> = entries.iter().map(|e| e.path.clone()).collect();
    assert_eq!(store.forget(JOB, &paths).unwrap(), 100_000);
    assert!(store.known_files(JOB).unwrap().is_empty());
}

// ---------------------------------------------------------------- sessions

fn session_row(path: &str) -> UploadSessionRow {
    UploadSessionRow {
        job: JOB.into(),
        path: path.into(),
        upload_url: "https://tenant.sharepoint.com/upload?tempauth=SECRET".into(),
        total_size: 41_943_040,
        fingerprint: SourceFingerprint {
            size: 41_943_040,
            mtime_ns: 5,
            inode: u64::MAX,
            quick_xor: hash_bytes(b"big").quick_xor,
        },
        expires_at: Some(1_800_000_000),
        next_offset: 0,
    }
}

#[test]
fn sessions_round_trip_and_go_with_their_file() {
    let (_tmp, mut store) = open_temp();
    let err = store.save_session(&session_row("big.iso")).unwrap_err();
    assert!(matches!(err, StateError::NotFound { .. }), "{err:?}");

    store
        .record_scanned(JOB, &[entry("big.iso", b"big", 5, Change::New)])
        .unwrap();
    let row = session_row("big.iso");
    store.save_session(&row).unwrap();
    assert_eq!(store.session(JOB, "big.iso").unwrap(), Some(row.clone()));
    assert!(
        !format!("{row:?}").contains("SECRET"),
        "Debug hides the upload URL"
    );

    store
        .update_session_offset(JOB, "big.iso", 10 * 327_680, Some(1_800_000_900))
        .unwrap();
    store
        .update_session_offset(JOB, "big.iso", 20 * 327_680, None)
        .unwrap();
    let saved = store.session(JOB, "big.iso").unwrap().unwrap();
    assert_eq!(
        (saved.next_offset, saved.expires_at),
        (20 * 327_680, Some(1_800_000_900))
    );
    assert!(matches!(
        store.update_session_offset(JOB, "other", 1, None),
        Err(StateError::NotFound { .. })
    ));

    // Saving again replaces (a restarted session).
    let fresh = UploadSessionRow {
        upload_url: "https://x/new".into(),
        ..row.clone()
    };
    store.save_session(&fresh).unwrap();
    assert_eq!(store.session(JOB, "big.iso").unwrap(), Some(fresh));

    assert!(store.delete_session(JOB, "big.iso").unwrap());
    assert!(!store.delete_session(JOB, "big.iso").unwrap());
    store.save_session(&row).unwrap();
    store.forget(JOB, &["big.iso".into()]).unwrap();
    assert_eq!(store.session(JOB, "big.iso").unwrap(), None, "cascaded");
}

#[test]
fn sessions_survive_reopening() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let mut store = Store::open(tmp.path()).unwrap();
        store
            .record_scanned(JOB, &[entry("big.iso", b"big", 5, Change::New)])
            .unwrap();
        store.mark_uploading(JOB, "big.iso").unwrap();
        store.save_session(&session_row("big.iso")).unwrap();
        store
            .update_session_offset(JOB, "big.iso", 327_680, None)
            .unwrap();
    }
    let store = Store::open(tmp.path()).unwrap();
    assert_eq!(state_of(&store, "big.iso"), FileState::Uploading);
    assert_eq!(
        store.session(JOB, "big.iso").unwrap().unwrap().next_offset,
        327_680
    );
}

// ---------------------------------------------------------------- drives, folders

#[test]
fn drives_and_delta_links() {
    let (_tmp, mut store) = open_temp();
    let site = "https://contoso.sharepoint.com/sites/Finance";
    assert_eq!(store.drive(site, "Documents").unwrap(), None);
    assert!(matches!(
        store.set_delta_link(site, "Documents", "x"),
        Err(StateError::DriveNotFound { .. })
    ));

    store.save_drive_id(site, "Documents", "b!abc").unwrap();
    store
        .set_delta_link(site, "Documents", "https://g/delta?token=1")
        .unwrap();
    let drive = store.drive(site, "Documents").unwrap().unwrap();
    assert_eq!(drive.drive_id, "b!abc");
    assert_eq!(drive.delta_link.as_deref(), Some("https://g/delta?token=1"));
    assert!(drive.delta_updated_at.is_some());

    // Same id again: the link stays.
    store.save_drive_id(site, "Documents", "b!abc").unwrap();
    assert!(
        store
            .drive(site, "Documents")
            .unwrap()
            .unwrap()
            .delta_link
            .is_some()
    );
    store.clear_delta_link(site, "Documents").unwrap();
    let drive = store.drive(site, "Documents").unwrap().unwrap();
    assert_eq!((drive.delta_link, drive.delta_updated_at), (None, None));

    // A different drive id invalidates the link.
    store.set_delta_link(site, "Documents", "L").unwrap();
    store.save_drive_id(site, "Documents", "b!new").unwrap();
    let drive = store.drive(site, "Documents").unwrap().unwrap();
    assert_eq!((drive.drive_id.as_str(), drive.delta_link), ("b!new", None));
}

#[test]
fn a_recreated_library_requeues_every_job_on_it_in_one_step() {
    let (_tmp, mut store) = open_temp();
    let site = "https://contoso.sharepoint.com/sites/Finance";
    store.save_drive_id(site, "Documents", "b!old").unwrap();
    store.save_drive_id(site, "Archive", "b!arch").unwrap();
    store.set_delta_link(site, "Documents", "L").unwrap();
    // Two jobs on the library, one on another library of the same site.
    store.note_job_target(JOB, site, "Documents", "").unwrap();
    store
        .note_job_target("second", site, "Documents", "")
        .unwrap();
    store
        .note_job_target("elsewhere", site, "Archive", "")
        .unwrap();
    for job in [JOB, "second", "elsewhere"] {
        store
            .record_scanned(
                job,
                &[
                    entry("a.txt", b"a", 1, Change::New),
                    entry("big.iso", b"big", 5, Change::New),
                    entry("bad.txt", b"bad", 7, Change::New),
                    entry("new.txt", b"new", 9, Change::New),
                ],
            )
            .unwrap();
        store.mark_synced(job, "a.txt", &synced_info(b"a")).unwrap();
        store
            .mark_failed(job, "bad.txt", "400 invalidRequest", Some(i64::MAX))
            .unwrap();
        store.record_folder(job, "", "ROOT").unwrap();
        store.record_folder(job, "sub", "SUB").unwrap();
    }
    store.mark_uploading(JOB, "big.iso").unwrap();
    store.save_session(&session_row("big.iso")).unwrap();

    // Only while the recorded id is still the old one.
    assert_eq!(
        store
            .replace_drive(site, "Documents", "b!other", "b!new")
            .unwrap(),
        None
    );
    let replaced = store
        .replace_drive(site, "Documents", "b!old", "b!new")
        .unwrap()
        .unwrap();
    assert_eq!(replaced.jobs, ["reports", "second"]);
    // a.txt and bad.txt of both jobs, and the upload in flight.
    assert_eq!(replaced.requeued, 5);
    let drive = store.drive(site, "Documents").unwrap().unwrap();
    assert_eq!((drive.drive_id.as_str(), drive.delta_link), ("b!new", None));
    assert!(store.walk_needed(JOB, site, "Documents").unwrap());
    for job in [JOB, "second"] {
        for path in ["a.txt", "big.iso", "bad.txt", "new.txt"] {
            let r = store.file(job, path).unwrap().unwrap();
            assert_eq!(r.state, FileState::Pending, "{job}/{path}");
            assert_eq!(r.item_id, None, "{job}/{path}: an item of the old drive");
        }
        assert!(store.known_folders(job).unwrap().is_empty(), "{job}");
    }
    assert_eq!(store.session(JOB, "big.iso").unwrap(), None);
    // The other library's job is untouched.
    assert!(matches!(
        store.file("elsewhere", "a.txt").unwrap().unwrap().state,
        FileState::Synced { .. }
    ));
    assert_eq!(store.known_folders("elsewhere").unwrap().len(), 2);
    assert_eq!(
        store.drive(site, "Archive").unwrap().unwrap().drive_id,
        "b!arch"
    );
    // Done once: a second job finding the same new id changes nothing.
    assert_eq!(
        store
            .replace_drive(site, "Documents", "b!old", "b!new")
            .unwrap(),
        None
    );
}

#[test]
fn a_job_moved_to_another_library_is_recorded_there() {
    let (_tmp, mut store) = open_temp();
    let site = "https://contoso.sharepoint.com/sites/Finance";
    store.save_drive_id(site, "Documents", "b!old").unwrap();
    store
        .note_job_target(JOB, site, "Documents", "backup")
        .unwrap();
    store
        .note_job_target(JOB, site, "Archive", "backup")
        .unwrap();
    store
        .record_scanned(JOB, &[entry("a.txt", b"a", 1, Change::New)])
        .unwrap();
    store.mark_synced(JOB, "a.txt", &synced_info(b"a")).unwrap();
    let replaced = store
        .replace_drive(site, "Documents", "b!old", "b!new")
        .unwrap()
        .unwrap();
    assert!(replaced.jobs.is_empty());
    assert!(matches!(
        state_of(&store, "a.txt"),
        FileState::Synced { .. }
    ));
}

#[test]
fn a_job_pointed_at_another_place_has_every_file_queued_for_it() {
    let (_tmp, mut store) = open_temp();
    let site = "https://contoso.sharepoint.com/sites/Finance";
    assert_eq!(
        store
            .note_job_target(JOB, site, "Documents", "backup")
            .unwrap(),
        None,
        "a first record is no move"
    );
    store
        .record_scanned(
            JOB,
            &[
                entry("a.txt", b"a", 1, Change::New),
                entry("d/b.txt", b"b", 1, Change::New),
            ],
        )
        .unwrap();
    store.mark_synced(JOB, "a.txt", &synced_info(b"a")).unwrap();
    store.record_folder(JOB, "d", "F1").unwrap();
    // Case aside, the same place: nothing changes.
    for (library, folder) in [("Documents", "backup"), ("documents", "Backup")] {
        assert_eq!(
            store.note_job_target(JOB, site, library, folder).unwrap(),
            None
        );
        assert!(matches!(
            state_of(&store, "a.txt"),
            FileState::Synced { .. }
        ));
    }
    let before = store
        .note_job_target(JOB, site, "Documents", "backup/2026")
        .unwrap()
        .expect("moved");
    assert_eq!(before.library, "documents");
    assert_eq!(before.folder.as_deref(), Some("Backup"));
    assert_eq!(state_of(&store, "a.txt"), FileState::Pending);
    assert_eq!(store.file(JOB, "a.txt").unwrap().unwrap().item_id, None);
    assert_eq!(state_of(&store, "d/b.txt"), FileState::Pending);
    assert!(store.folder_items(JOB).unwrap().is_empty());
    // Recorded: the next run sees no move.
    assert_eq!(
        store
            .note_job_target(JOB, site, "Documents", "backup/2026")
            .unwrap(),
        None
    );
}

/// A file skipped now (grown past `max_file_size`, unreadable) keeps the
/// item it was synced to; after the job points elsewhere that item is a copy
/// in the old place, which must stay: a later mirror delete of the path (or
/// an upload over it) must not reach it.
#[test]
fn a_job_pointed_elsewhere_forgets_the_old_items_of_skipped_files_too() {
    let (_tmp, mut store) = open_temp();
    let site = "https://contoso.sharepoint.com/sites/Finance";
    store
        .note_job_target(JOB, site, "Documents", "backup")
        .unwrap();
    store
        .record_scanned(JOB, &[entry("a.txt", b"a", 1, Change::New)])
        .unwrap();
    store.mark_synced(JOB, "a.txt", &synced_info(b"a")).unwrap();
    store.record_skipped(JOB, "a.txt", "too big").unwrap();
    assert!(store.file(JOB, "a.txt").unwrap().unwrap().item_id.is_some());
    store
        .note_job_target(JOB, site, "Documents", "backup/2026")
        .unwrap()
        .expect("moved");
    let record = store.file(JOB, "a.txt").unwrap().unwrap();
    assert_eq!(record.state.kind(), FileStateKind::Skipped);
    assert_eq!(record.item_id, None, "an item of the old place: {record:?}");
}

/// A job on folder `backup` whose `a.txt` (synced) someone else edited
/// in SharePoint, resolved keep-both: our copy is queued to go beside it.
fn keep_both_copy_queued_in_backup() -> (tempfile::TempDir, Store, &'static str, &'static str) {
    let (dir, mut store) = open_temp();
    let (site, lib) = ("https://h/sites/s", "Documents");
    store.note_job_target(JOB, site, lib, "backup").unwrap();
    store.save_drive_id(site, lib, "D").unwrap();
    store
        .record_scanned(JOB, &[entry("a.txt", b"ours", 1, Change::New)])
        .unwrap();
    let mut info = synced_info(b"ours");
    info.item_id = Some("ITEM-a.txt".into());
    store.mark_synced(JOB, "a.txt", &info).unwrap();
    store
        .record_delta_page(
            site,
            lib,
            &[delta_item("ITEM-a.txt", false, "\"{A},5\"", b"theirs")],
            Some("L1"),
        )
        .unwrap();
    let changes = store.pending_remote_changes(JOB).unwrap();
    assert_eq!(changes.len(), 1);
    store
        .resolve_keep_both(&changes[0], "a (sharepush conflict).txt")
        .unwrap();
    (dir, store, site, lib)
}

/// A keep-both copy queued in the old place (someone edited the file
/// there) has nothing to sit beside in the new one: after the job points
/// elsewhere the file goes up to its own path, not as a conflict copy (which
/// would leave the path itself never sent there).
#[test]
fn a_job_pointed_elsewhere_sends_a_queued_keep_both_copy_to_its_own_path() {
    let (_dir, mut store, site, lib) = keep_both_copy_queued_in_backup();
    assert!(store.copy_target(JOB, "a.txt").unwrap().is_some());
    store
        .note_job_target(JOB, site, lib, "backup/2026")
        .unwrap()
        .expect("moved");
    assert_eq!(state_of(&store, "a.txt"), FileState::Pending);
    assert_eq!(store.copy_target(JOB, "a.txt").unwrap(), None);
}

/// The conflict copies a job made are in the old place: `status` listed
/// them as if in the new one.
#[test]
fn a_job_pointed_elsewhere_no_longer_lists_the_conflict_copies_of_the_old_place() {
    let (_dir, mut store, site, lib) = keep_both_copy_queued_in_backup();
    let fp = (4, 1, 1000 + "a.txt".len() as u64);
    store
        .record_conflict_copy(JOB, "a.txt", fp, &synced_info(b"ours"), 4)
        .unwrap();
    assert_eq!(store.conflict_copies(JOB).unwrap().len(), 1);
    store
        .note_job_target(JOB, site, lib, "backup/2026")
        .unwrap()
        .expect("moved");
    assert_eq!(store.conflict_copies(JOB).unwrap(), []);
}

#[test]
fn folders_round_trip() {
    let (_tmp, mut store) = open_temp();
    assert_eq!(store.folder_item(JOB, "a/b").unwrap(), None);
    store.record_folder(JOB, "", "ROOT").unwrap();
    store.record_folder(JOB, "a", "A1").unwrap();
    store.record_folder(JOB, "a/b", "B1").unwrap();
    store.record_folder(JOB, "a", "A2").unwrap();
    store.record_folder("other", "z", "Z").unwrap();
    assert_eq!(store.folder_item(JOB, "a").unwrap().as_deref(), Some("A2"));
    let known = store.known_folders(JOB).unwrap();
    assert_eq!(known.len(), 3);
    assert!(known.contains("") && known.contains("a/b"));
}

// ---------------------------------------------------------------- runs

#[test]
fn runs_round_trip_and_interrupted_runs_are_closed() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let mut store = Store::open(tmp.path()).unwrap();
        assert_eq!(store.last_run(JOB).unwrap(), None);
        let id = store.start_run(JOB, RunTrigger::Schedule, 1_000).unwrap();
        let summary = RunSummary {
            ended_at: 1_060,
            counts: RunCounts {
                new: 3,
                changed: 1,
                unchanged: 100,
                uploaded: 4,
                failed: 1,
                skipped: 2,
            },
            bytes: 1 << 40,
            outcome: RunOutcome::SomeFilesFailed,
            error: None,
        };
        store.finish_run(id, &summary).unwrap();
        let last = store.last_run(JOB).unwrap().unwrap();
        assert_eq!(
            last,
            RunRow {
                id,
                job: JOB.into(),
                trigger: RunTrigger::Schedule,
                started_at: 1_000,
                ended_at: Some(1_060),
                counts: summary.counts,
                bytes: 1 << 40,
                outcome: Some(RunOutcome::SomeFilesFailed),
                error: None,
            }
        );
        assert!(matches!(
            store.finish_run(RunId(9999), &summary),
            Err(StateError::RunNotFound { id: 9999 })
        ));
        // A run the process dies in.
        let open = store.start_run(JOB, RunTrigger::Watch, 2_000).unwrap();
        let running = store.last_run(JOB).unwrap().unwrap();
        assert_eq!(
            (running.id, running.outcome, running.ended_at),
            (open, None, None)
        );
    }
    let store = Store::open(tmp.path()).unwrap();
    let last = store.last_run(JOB).unwrap().unwrap();
    assert_eq!(last.trigger, RunTrigger::Watch);
    assert_eq!(last.outcome, Some(RunOutcome::Interrupted));
    assert_eq!(store.jobs().unwrap(), vec![JOB.to_string()]);
    store.ping().unwrap();
}

/// `cargo test --release -p sharepush --lib state::tests::bulk_timing -- --ignored --nocapture`
/// Times the bulk paths a 100,000-file scan uses. Measured on the 2-core
/// build machine while it was busy: about 0.5 s CPU to record 100,000 new
/// files, 0.1-0.2 s for an unchanged rescan, 0.15 s for `known_files`.
#[test]
#[ignore = "benchmark: run in release"]
fn bulk_timing() {
    use std::time::Instant;
    let (_tmp, mut store) = open_temp();
    let entries: Vec<LocalEntry> = (0..100_000u64)
        .map(|i| LocalEntry {
            // Interleaved folders: the order a parallel walk may report.
            path: format!("folder{:03}/file{i:06}.dat", i % 1000),
            size: i,
            mtime_ns: i as i64 * 1_000,
            inode: i,
            hashes: Some(hash_bytes(&i.to_le_bytes())),
            change: Change::New,
        })
        .collect();
    // CPU time of this process (utime + stime, clock ticks of 10 ms): the
    // machine may be busy, so wall time alone says little.
    let cpu_ms = || {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        (fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()) * 10
    };
    let time = |label: &str, f: &mut dyn FnMut()| {
        let (t, c) = (Instant::now(), cpu_ms());
        f();
        println!(
            "{label:<40} {:>8.1} ms wall {:>6} ms cpu",
            t.elapsed().as_secs_f64() * 1e3,
            cpu_ms() - c
        );
    };
    time("record_scanned 100k new", &mut || {
        store.record_scanned(JOB, &entries).unwrap()
    });
    time("record_scanned 100k unchanged", &mut || {
        store.record_scanned(JOB, &entries).unwrap()
    });
    let touched: Vec<LocalEntry> = entries
        .iter()
        .map(|e| LocalEntry {
            mtime_ns: e.mtime_ns + 1,
            ..e.clone()
        })
        .collect();
    time("record_scanned 100k touched", &mut || {
        store.record_scanned(JOB, &touched).unwrap()
    });
    time("known_files 100k", &mut || {
        assert_eq!(store.known_files(JOB).unwrap().len(), 100_000)
    });
    time("all_records 100k", &mut || {
        assert_eq!(store.all_records(JOB).unwrap().len(), 100_000)
    });
    let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    time("records_for 100k", &mut || {
        assert_eq!(store.records_for(JOB, &paths).unwrap().len(), 100_000)
    });
    time("counts", &mut || {
        assert_eq!(store.counts(JOB).unwrap().pending, 100_000)
    });
    time("mark_uploading+mark_synced x1000", &mut || {
        for e in &entries[..1000] {
            store.mark_uploading(JOB, &e.path).unwrap();
            let info = SyncedInfo {
                content: e.hashes.clone().unwrap(),
                item_id: None,
                etag: None,
                remote_quick_xor: None,
                remote_size: None,
                remote_name: None,
                remote_parent: None,
            };
            store.mark_synced(JOB, &e.path, &info).unwrap();
        }
    });
    // What a watch-triggered run asks for besides its own paths.
    time("paths_needing_a_look (1000 of 100k)", &mut || {
        assert_eq!(store.paths_needing_a_look(JOB).unwrap().len(), 99_000)
    });
    time("known_files_under 1 file (+ count)", &mut || {
        let (k, total) = store.known_files_under(JOB, &[paths[7].into()]).unwrap();
        assert_eq!((k.len(), total), (1, 100_000));
    });
    time("unconfirmed_synced", &mut || {
        store.unconfirmed_synced(JOB).unwrap();
    });
    let owned: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
    time("forget 100k", &mut || {
        assert_eq!(store.forget(JOB, &owned).unwrap(), 100_000)
    });
}

// ------------------------------------------------------ unverified uploads

#[test]
fn synced_files_without_a_remote_hash_are_listed_for_verification() {
    let (_dir, mut store) = open_temp();
    store
        .record_scanned(
            JOB,
            &[
                entry("verified.txt", b"v", 1, Change::New),
                entry("unverified.txt", b"u", 1, Change::New),
                entry("empty.txt", b"", 1, Change::New),
                entry("pending.txt", b"p", 1, Change::New),
            ],
        )
        .unwrap();
    store
        .mark_synced(JOB, "verified.txt", &synced_info(b"v"))
        .unwrap();
    for (path, content) in [("unverified.txt", &b"u"[..]), ("empty.txt", &b""[..])] {
        let info = SyncedInfo {
            remote_quick_xor: None,
            ..synced_info(content)
        };
        store.mark_synced(JOB, path, &info).unwrap();
    }
    let listed: Vec<String> = store
        .unconfirmed_synced(JOB)
        .unwrap()
        .into_iter()
        .map(|r| r.path)
        .collect();
    assert_eq!(
        listed,
        ["unverified.txt"],
        "non-empty, synced, hash unknown"
    );
    assert!(store.unconfirmed_synced("other-job").unwrap().is_empty());
}

// ---------------------------------------------------------------- remote

fn delta_item(id: &str, deleted: bool, etag: &str, content: &[u8]) -> crate::remote::DeltaItem {
    crate::remote::DeltaItem {
        id: id.into(),
        name: if deleted {
            String::new()
        } else {
            "a.txt".into()
        },
        parent_id: Some("ROOT".into()),
        deleted,
        is_folder: false,
        size: content.len() as u64,
        etag: Some(etag.into()),
        ctag: None,
        quick_xor: (!deleted).then(|| hash_bytes(content).quick_xor),
        mtime: None,
    }
}

#[test]
fn delta_pages_record_changes_once_and_store_the_link_with_the_last_page() {
    use crate::state::{RemoteChangeKind, RemoteChangeOutcome};
    let (_dir, mut store) = open_temp();
    store
        .save_drive_id("https://h/sites/s", "Documents", "D")
        .unwrap();
    store
        .record_scanned(
            JOB,
            &[
                entry("a.txt", b"ours", 1, Change::New),
                entry("b.txt", b"bee", 1, Change::New),
            ],
        )
        .unwrap();
    store
        .mark_synced(JOB, "a.txt", &synced_info(b"ours"))
        .unwrap();
    let mut b = synced_info(b"bee");
    b.item_id = Some("ITEM2".into());
    store.mark_synced(JOB, "b.txt", &b).unwrap();
    let (site, lib) = ("https://h/sites/s", "Documents");

    // Our own upload echoed back, an unknown item, and a metadata-only change.
    let page1 = [
        delta_item("ITEM1", false, "\"{E1},1\"", b"ours"),
        delta_item("OTHER", false, "\"{X},9\"", b"not ours"),
        delta_item("ITEM1", false, "\"{E1},2\"", b"ours"),
    ];
    let stats = store.record_delta_page(site, lib, &page1, None).unwrap();
    assert_eq!((stats.items, stats.changes), (3, 0));
    assert!(
        store
            .drive(site, lib)
            .unwrap()
            .unwrap()
            .delta_link
            .is_none()
    );
    assert_eq!(
        store.file(JOB, "a.txt").unwrap().unwrap().etag.as_deref(),
        Some("\"{E1},2\"")
    );

    // An edit by someone else and a delete; replaying the page changes nothing more.
    let page2 = [
        delta_item("ITEM1", false, "\"{E1},3\"", b"theirs"),
        delta_item("ITEM2", true, "", b""),
    ];
    for _ in 0..2 {
        store
            .record_delta_page(site, lib, &page2, Some("LINK"))
            .unwrap();
    }
    assert_eq!(
        store
            .drive(site, lib)
            .unwrap()
            .unwrap()
            .delta_link
            .as_deref(),
        Some("LINK")
    );
    let changes = store.pending_remote_changes(JOB).unwrap();
    assert_eq!(changes.len(), 2);
    assert_eq!(
        (changes[0].path.as_str(), changes[0].kind),
        ("a.txt", RemoteChangeKind::Edited)
    );
    assert_eq!(
        (changes[1].path.as_str(), changes[1].kind),
        ("b.txt", RemoteChangeKind::Deleted)
    );

    store
        .resolve_remote_change(&changes[0], RemoteChangeOutcome::Skipped)
        .unwrap();
    store
        .resolve_remote_change(&changes[1], RemoteChangeOutcome::Restored)
        .unwrap();
    assert!(matches!(
        state_of(&store, "a.txt"),
        FileState::Synced { .. }
    ));
    assert_eq!(state_of(&store, "b.txt"), FileState::Pending);
    assert_eq!(store.file(JOB, "b.txt").unwrap().unwrap().item_id, None);
    assert_eq!(store.conflicts(None).unwrap().len(), 1);
    // The skipped edit is not reported again by the same delta entry.
    store
        .record_delta_page(site, lib, &page2[..1], Some("LINK2"))
        .unwrap();
    assert_eq!(
        store.conflicts(Some(JOB)).unwrap()[0].outcome.as_deref(),
        Some("skipped")
    );
    let drives = store.drive_statuses().unwrap();
    assert_eq!(drives[0].changes_seen, 2);
    assert!(drives[0].has_delta_link);

    // 410: the link goes and every job must walk again.
    assert!(store.walk_needed(JOB, site, lib).unwrap());
    store.begin_walk(JOB).unwrap();
    store.finish_walk(JOB, site, lib).unwrap();
    assert!(!store.walk_needed(JOB, site, lib).unwrap());
    store.restart_delta(site, lib).unwrap();
    assert!(store.walk_needed(JOB, site, lib).unwrap());
    assert!(
        store
            .drive(site, lib)
            .unwrap()
            .unwrap()
            .delta_link
            .is_none()
    );
}

#[test]
fn keep_both_makes_their_edit_the_baseline_and_records_our_copy_once() {
    let (_dir, mut store) = open_temp();
    let (site, lib) = ("https://h/sites/s", "Documents");
    store.save_drive_id(site, lib, "D").unwrap();
    for p in ["a.txt", "b.txt"] {
        store
            .record_scanned(JOB, &[entry(p, b"ours", 1, Change::New)])
            .unwrap();
        let mut info = synced_info(b"ours");
        info.item_id = Some(format!("ITEM-{p}"));
        store.mark_synced(JOB, p, &info).unwrap();
    }
    let mut theirs = [
        delta_item("ITEM-a.txt", false, "\"{A},5\"", b"theirs"),
        delta_item("ITEM-b.txt", false, "\"{B},5\"", b"theirs"),
    ];
    theirs[1].name = "b.txt".into();
    store
        .record_delta_page(site, lib, &theirs, Some("L1"))
        .unwrap();
    let changes = store.pending_remote_changes(JOB).unwrap();
    assert_eq!(changes.len(), 2);
    for c in &changes {
        let copy = c.path.replace(".txt", " (sharepush conflict).txt");
        store.resolve_keep_both(c, &copy).unwrap();
    }
    assert!(store.pending_remote_changes(JOB).unwrap().is_empty());
    assert_eq!(
        store.copy_target(JOB, "a.txt").unwrap().as_deref(),
        Some("a (sharepush conflict).txt")
    );
    let a = store.file(JOB, "a.txt").unwrap().unwrap();
    assert_eq!(a.state, FileState::Pending);
    assert_eq!(a.etag.as_deref(), Some("\"{A},5\""));

    // a.txt: the copy read the recorded fingerprint; what it sent (an edit
    // the scan could not see) becomes the content, synced against theirs.
    let sent = SyncedInfo {
        item_id: Some("COPY-A".into()),
        ..synced_info(b"edit")
    };
    let fp = (4, 1, 1000 + "a.txt".len() as u64);
    let kind = store
        .record_conflict_copy(JOB, "a.txt", fp, &sent, 4)
        .unwrap();
    assert_eq!(kind, FileStateKind::Synced);
    let a = store.file(JOB, "a.txt").unwrap().unwrap();
    assert_eq!(a.hashes, Some(hash_bytes(b"edit")));
    assert!(
        matches!(&a.state, FileState::Synced { item_id: Some(id), etag: Some(e), remote_quick_xor: Some(q), .. }
            if id == "ITEM-a.txt" && e == "\"{A},5\"" && *q == hash_bytes(b"theirs").quick_xor),
        "{:?}",
        a.state
    );
    assert_eq!(store.copy_target(JOB, "a.txt").unwrap(), None);

    // b.txt: a scan recorded a newer edit meanwhile; that one goes to the path.
    store
        .record_scanned(JOB, &[entry("b.txt", b"newer!", 2, Change::Changed)])
        .unwrap();
    let fp = (4, 1, 1000 + "b.txt".len() as u64);
    let kind = store
        .record_conflict_copy(JOB, "b.txt", fp, &synced_info(b"ours"), 4)
        .unwrap();
    assert_eq!(kind, FileStateKind::Pending);
    let b = store.file(JOB, "b.txt").unwrap().unwrap();
    assert_eq!(b.hashes, Some(hash_bytes(b"newer!")));
    assert_eq!(store.copy_target(JOB, "b.txt").unwrap(), None);

    let copies = store.conflict_copies(JOB).unwrap();
    let paths: Vec<_> = copies
        .iter()
        .map(|c| (c.path.as_str(), c.source_path.as_str()))
        .collect();
    assert_eq!(
        paths,
        [
            ("a (sharepush conflict).txt", "a.txt"),
            ("b (sharepush conflict).txt", "b.txt")
        ]
    );
    // The same remote edit seen again is ours now: no new conflict.
    let stats = store
        .record_delta_page(site, lib, &theirs[..1], Some("L2"))
        .unwrap();
    assert_eq!(stats.changes, 0);
}

fn remote_item(id: &str, content: &[u8]) -> crate::remote::RemoteItem {
    crate::remote::RemoteItem {
        id: id.into(),
        name: "x".into(),
        parent_id: None,
        size: content.len() as u64,
        etag: Some(format!("\"{{{id}}},1\"")),
        ctag: None,
        quick_xor: Some(hash_bytes(content).quick_xor),
        mtime: None,
        is_folder: false,
    }
}

#[test]
fn walks_of_two_jobs_at_once_keep_their_own_seen_items() {
    let (_dir, mut store) = open_temp();
    let (site, lib) = ("https://h/sites/s", "Documents");
    store.save_drive_id(site, lib, "D").unwrap();
    let adopt = |path: &str, id: &str| WalkAction::Adopt {
        path: path.into(),
        size: 3,
        mtime_ns: 1,
        inode: 1,
        hashes: hash_bytes(b"aaa"),
        item: remote_item(id, b"aaa"),
    };
    // Job a's walk adopts a file; job b's walk starts before a's ends (two
    // tasks on one connection), records its own, and ends first.
    store.begin_walk("a").unwrap();
    store
        .record_walk_page("a", &[adopt("a.txt", "IA")])
        .unwrap();
    store.begin_walk("b").unwrap();
    store
        .record_walk_page("b", &[adopt("b.txt", "IB")])
        .unwrap();
    assert_eq!(store.finish_walk("b", site, lib).unwrap(), 0);
    assert_eq!(
        store.finish_walk("a", site, lib).unwrap(),
        0,
        "a's adopted file was seen by a's walk"
    );
    assert!(store.pending_remote_changes("a").unwrap().is_empty());
    // A file the walk did not see is still a remote delete.
    store.begin_walk("a").unwrap();
    assert_eq!(store.finish_walk("a", site, lib).unwrap(), 1);
}

/// The job's open remote changes as (path, kind).
fn open_changes(store: &Store) -> Vec<(String, crate::state::RemoteChangeKind)> {
    store
        .pending_remote_changes(JOB)
        .unwrap()
        .into_iter()
        .map(|c| (c.path, c.kind))
        .collect()
}

/// Someone else's rename or move of one of our files, or of a folder of
/// ours, empties the path it backed up: a remote delete of that path. Our
/// own echo, a change of case, and rows from before places were recorded
/// are not judged so.
#[test]
fn delta_entries_that_place_our_items_elsewhere_are_deletes_of_their_paths() {
    use crate::remote::{DeltaItem, RemoteItem};
    use crate::state::RemoteChangeKind;
    let (_dir, mut store) = open_temp();
    let (site, lib) = ("https://h/sites/s", "Documents");
    store.save_drive_id(site, lib, "D").unwrap();
    let names = [
        "a.txt",
        "b.txt",
        "c.txt",
        "old.txt",
        "sub/d.txt",
        "sub/e.txt",
    ];
    let entries: Vec<_> = names
        .iter()
        .map(|p| entry(p, p.as_bytes(), 1, Change::New))
        .collect();
    store.record_scanned(JOB, &entries).unwrap();
    let folder = |id: &str, name: &str, parent: Option<&str>| RemoteItem {
        id: id.into(),
        name: name.into(),
        parent_id: parent.map(str::to_string),
        size: 0,
        etag: None,
        ctag: None,
        quick_xor: None,
        mtime: None,
        is_folder: true,
    };
    store
        .record_folder_item(JOB, "", &folder("ROOT", "backup", Some("LIBROOT")))
        .unwrap();
    store
        .record_folder_item(JOB, "sub", &folder("SUB", "sub", Some("ROOT")))
        .unwrap();
    for (i, path) in names.iter().enumerate() {
        let (parent, name) = match path.split_once('/') {
            Some((_, n)) => ("SUB", n),
            None => ("ROOT", *path),
        };
        let mut item = remote_item(&format!("I{i}"), path.as_bytes());
        item.name = name.to_string();
        item.parent_id = Some(parent.to_string());
        let mut info = SyncedInfo::from_item(hash_bytes(path.as_bytes()), &item);
        if *path == "old.txt" {
            // Recorded before this schema knew places.
            info.remote_name = None;
            info.remote_parent = None;
        }
        store.mark_synced(JOB, path, &info).unwrap();
    }
    let moved = |id: &str, name: &str, parent: &str, content: &[u8]| DeltaItem {
        id: id.into(),
        name: name.into(),
        parent_id: Some(parent.into()),
        deleted: false,
        is_folder: false,
        size: content.len() as u64,
        etag: Some(format!("\"{{{id}}},2\"")),
        ctag: None,
        quick_xor: Some(hash_bytes(content).quick_xor),
        mtime: None,
    };
    let page = [
        // Renamed in place.
        moved("I0", "a (old).txt", "ROOT", b"a.txt"),
        // Moved out of the job's folder, name kept.
        moved("I1", "b.txt", "ELSEWHERE", b"b.txt"),
        // Only the case of its name changed: still at its path.
        moved("I2", "C.TXT", "ROOT", b"c.txt"),
        // No recorded place: not judged.
        moved("I3", "renamed.txt", "ELSEWHERE", b"old.txt"),
        // The job's own echo: where we put it.
        moved("I4", "d.txt", "SUB", b"sub/d.txt"),
    ];
    let stats = store.record_delta_page(site, lib, &page, None).unwrap();
    assert_eq!(stats.changes, 2);
    let changes = open_changes(&store);
    assert_eq!(
        changes,
        [
            ("a.txt".to_string(), RemoteChangeKind::Deleted),
            ("b.txt".to_string(), RemoteChangeKind::Deleted),
        ]
    );

    // The folder `sub` renamed by someone else: both files below it are
    // gone from their paths, and the folder must be created again.
    let sub = DeltaItem {
        id: "SUB".into(),
        name: "sub-renamed".into(),
        parent_id: Some("ROOT".into()),
        deleted: false,
        is_folder: true,
        size: 0,
        etag: Some("\"{SUB},3\"".into()),
        ctag: None,
        quick_xor: None,
        mtime: None,
    };
    let root_echo = DeltaItem {
        id: "ROOT".into(),
        name: "backup".into(),
        parent_id: Some("LIBROOT".into()),
        ..sub.clone()
    };
    let stats = store
        .record_delta_page(site, lib, &[root_echo, sub], Some("L"))
        .unwrap();
    assert_eq!(stats.changes, 2);
    let paths: Vec<String> = store
        .pending_remote_changes(JOB)
        .unwrap()
        .into_iter()
        .map(|c| c.path)
        .collect();
    assert_eq!(paths, ["a.txt", "b.txt", "sub/d.txt", "sub/e.txt"]);
    let folders = store.known_folders(JOB).unwrap();
    assert!(
        folders.contains("") && !folders.contains("sub"),
        "{folders:?}"
    );
}

/// An edit by someone else while our own change of the file waits to go up
/// (pending or failed) is a remote edit like any other, so the policy sees
/// it before that upload could replace it. The item our lost-reply upload
/// committed (it carries the local mtime) and a row being uploaded are not.
#[test]
fn edits_meanwhile_of_files_waiting_to_go_up_are_remote_edits() {
    use crate::state::RemoteChangeKind;
    let (_dir, mut store) = open_temp();
    let (site, lib) = ("https://h/sites/s", "Documents");
    store.save_drive_id(site, lib, "D").unwrap();
    let paths = [
        "pending.txt",
        "failed.txt",
        "uploading.txt",
        "committed.txt",
    ];
    let mtime_ns = 1_700_000_000_250_000_000;
    let first: Vec<_> = paths
        .iter()
        .map(|p| entry(p, b"v1", mtime_ns - 60_000_000_000, Change::New))
        .collect();
    store.record_scanned(JOB, &first).unwrap();
    for (i, p) in paths.iter().enumerate() {
        let mut info = synced_info(b"v1");
        info.item_id = Some(format!("I{i}"));
        info.etag = Some(format!("\"{{I{i}}},1\""));
        store.mark_synced(JOB, p, &info).unwrap();
    }
    // Each edited locally (v2) and not uploaded yet.
    let second: Vec<_> = paths
        .iter()
        .map(|p| entry(p, b"v2", mtime_ns, Change::Changed))
        .collect();
    store.record_scanned(JOB, &second).unwrap();
    store
        .mark_failed(JOB, "failed.txt", "423 locked", Some(i64::MAX))
        .unwrap();
    store.mark_uploading(JOB, "uploading.txt").unwrap();
    store
        .mark_failed(JOB, "committed.txt", "reply lost", None)
        .unwrap();

    let edit = |i: usize, content: &[u8], mtime_s: i64| crate::remote::DeltaItem {
        mtime: chrono::DateTime::from_timestamp(mtime_s, 0),
        ..delta_item(&format!("I{i}"), false, &format!("\"{{I{i}}},2\""), content)
    };
    let page = [
        edit(0, b"theirs", 1_800_000_000),
        edit(1, b"theirs", 1_800_000_000),
        edit(2, b"theirs", 1_800_000_000),
        // Ours, rewritten by SharePoint (another hash), with our mtime.
        edit(3, b"rewritten v2", mtime_ns / 1_000_000_000),
    ];
    let stats = store.record_delta_page(site, lib, &page, None).unwrap();
    assert_eq!(stats.changes, 2);
    let changes = open_changes(&store);
    assert_eq!(
        changes,
        [
            ("failed.txt".to_string(), RemoteChangeKind::Edited),
            ("pending.txt".to_string(), RemoteChangeKind::Edited),
        ]
    );
    assert_eq!(
        store
            .file(JOB, "committed.txt")
            .unwrap()
            .unwrap()
            .etag
            .as_deref(),
        Some("\"{I3},2\""),
        "our own commit: its eTag is taken in"
    );
}

/// [`Store::case_twins`] of `paths` (none leaving), as sorted pairs.
fn sorted_twins(store: &Store, paths: &[String]) -> Vec<(String, String)> {
    let mut got: Vec<(String, String)> = store
        .case_twins(JOB, paths, &std::collections::HashSet::new())
        .unwrap()
        .into_iter()
        .collect();
    got.sort();
    got
}

/// An index built by a binary with other Unicode tables (here: one that
/// folded nothing) is rebuilt when a binary with its own version opens the
/// state, so case twins are found through it again.
#[test]
fn folded_index_from_another_unicode_version_is_rebuilt() {
    let (dir, mut store) = open_temp();
    store
        .record_scanned(JOB, &[entry("Ärger.txt", b"a", 1, Change::New)])
        .unwrap();
    let twin = || vec![("ärger.txt".to_string(), "Ärger.txt".to_string())];
    assert_eq!(sorted_twins(&store, &["ärger.txt".into()]), twin());
    drop(store);

    // The older binary: its fold left `Ä` alone.
    let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    conn.create_scalar_function(
        crate::state::schema::FOLD_FUNCTION,
        1,
        rusqlite::functions::FunctionFlags::SQLITE_UTF8
            | rusqlite::functions::FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| ctx.get::<String>(0),
    )
    .unwrap();
    conn.execute_batch(
        "REINDEX files_by_folded_path;
         UPDATE index_facts SET fold_unicode = '1.1.0';",
    )
    .unwrap();
    drop(conn);

    let store = Store::open(dir.path()).unwrap();
    assert_eq!(sorted_twins(&store, &["ärger.txt".into()]), twin());
    let built: String = store
        .conn
        .query_row("SELECT fold_unicode FROM index_facts", [], |r| r.get(0))
        .unwrap();
    assert_eq!(built, crate::state::schema::unicode_version());
}

/// `Σ` is one letter in any position: a whole-string lowercase turned a
/// final `Σ` into `ς` (Greek final sigma), so `aΣ.txt` and `aσ.txt`, which
/// differ only in case and are one name in SharePoint, were not twins.
#[test]
fn case_twins_fold_each_letter_alone() {
    let (_dir, mut store) = open_temp();
    let names = ["ΟΔΟΣ.txt", "οδοσ.txt", "aΣ/x", "aσ/x", "bς", "bσ"];
    let entries: Vec<_> = names
        .iter()
        .map(|p| entry(p, p.as_bytes(), 1, Change::New))
        .collect();
    store.record_scanned(JOB, &entries).unwrap();
    let all: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let got = sorted_twins(&store, &all);
    let got: Vec<(&str, &str)> = got.iter().map(|(p, t)| (p.as_str(), t.as_str())).collect();
    assert_eq!(
        got,
        [("aσ/x", "aΣ/x"), ("bσ", "bς"), ("οδοσ.txt", "ΟΔΟΣ.txt")]
    );
    // The dry run folds the same way.
    let present = names.iter().map(|p| (*p, false));
    let uploads: Vec<&str> = names.to_vec();
    let mut among: Vec<(String, String)> = crate::plan::case_twins_among(present, &uploads)
        .into_iter()
        .collect();
    among.sort();
    let want: Vec<(String, String)> = got
        .iter()
        .map(|(p, t)| (p.to_string(), t.to_string()))
        .collect();
    assert_eq!(among, want);
}

/// Which of two paths that differ only in case keeps the name: the one
/// with a remote item, else the first in byte order; skipped rows and rows
/// leaving this run never do.
#[test]
fn case_twins_keep_the_name_for_the_uploaded_one_else_the_first() {
    use std::collections::HashSet;
    let (_dir, mut store) = open_temp();
    let names = [
        "A.txt",
        "a.txt",
        "b.TXT",
        "B.txt",
        "c.txt",
        "C.txt",
        "d.txt",
        // Beyond ASCII too: SharePoint takes these for one name.
        "Ärger/Über.txt",
        "ärger/über.txt",
        "Σ.txt",
        "σ.txt",
    ];
    let entries: Vec<_> = names
        .iter()
        .map(|p| entry(p, p.as_bytes(), 1, Change::New))
        .collect();
    store.record_scanned(JOB, &entries).unwrap();
    // b.TXT was uploaded before: it keeps the name over B.txt.
    let mut info = synced_info(b"b.TXT");
    info.item_id = Some("B".into());
    store.mark_synced(JOB, "b.TXT", &info).unwrap();
    store.record_skipped(JOB, "C.txt", "invalid name").unwrap();
    let all: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let got = sorted_twins(&store, &all);
    let got: Vec<(&str, &str)> = got.iter().map(|(p, t)| (p.as_str(), t.as_str())).collect();
    assert_eq!(
        got,
        [
            ("B.txt", "b.TXT"),
            ("a.txt", "A.txt"),
            ("ärger/über.txt", "Ärger/Über.txt"),
            ("σ.txt", "Σ.txt")
        ]
    );
    // A.txt leaves this run (moved away or forgotten): a.txt keeps.
    let leaving: HashSet<String> = ["A.txt".to_string()].into();
    let twins = store.case_twins(JOB, &all, &leaving).unwrap();
    assert_eq!(twins.get("a.txt"), None);
    assert_eq!(twins.get("B.txt").map(String::as_str), Some("b.TXT"));
}

#[test]
fn folder_trees_are_forgotten_and_searched_by_prefix_not_by_name_start() {
    let (_dir, mut store) = open_temp();
    for (path, id) in [
        ("", "root"),
        ("a", "1"),
        ("a/b", "2"),
        ("ab", "3"),
        ("a0", "4"),
    ] {
        store.record_folder("j", path, id).unwrap();
    }
    let all = store.folder_items("j").unwrap();
    assert_eq!(all.len(), 4, "the job's own folder is left out: {all:?}");
    let rows = [
        entry("ab/x", b"x", 1, Change::New),
        entry("a0", b"x", 1, Change::New),
    ];
    store.record_scanned("j", &rows).unwrap();
    assert!(
        !store.has_files_under("j", "a").unwrap(),
        "ab/x and a0 are not below a"
    );
    assert!(store.has_files_under("j", "ab").unwrap());
    store
        .record_scanned("j", &[entry("a/b/c", b"x", 1, Change::New)])
        .unwrap();
    assert!(store.has_files_under("j", "a").unwrap());
    assert!(!store.has_files_under("other", "a").unwrap());

    assert_eq!(store.forget_folder_tree("j", "a").unwrap(), 2);
    let left: Vec<String> = store
        .folder_items("j")
        .unwrap()
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert_eq!(left, ["a0", "ab"]);
    assert_eq!(store.folder_item("j", "").unwrap().as_deref(), Some("root"));
}

#[test]
fn a_growing_backoff_sees_every_failure_in_a_row_until_one_upload_succeeds() {
    let (_dir, mut store) = open_temp();
    store
        .record_scanned(JOB, &[entry("f", b"v1", 1, Change::New)])
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        store.mark_uploading(JOB, "f").unwrap();
        store
            .mark_failed_with(JOB, "f", "boom", |n| {
                seen.push(n);
                Some(100 * i64::from(n))
            })
            .unwrap();
    }
    assert_eq!(seen, [1, 2, 3]);
    assert!(matches!(
        state_of(&store, "f"),
        FileState::Failed {
            attempts: 3,
            next_attempt: Some(300),
            ..
        }
    ));
    store.mark_uploading(JOB, "f").unwrap();
    store.mark_synced(JOB, "f", &synced_info(b"v1")).unwrap();
    store.mark_uploading(JOB, "f").unwrap();
    store
        .mark_failed_with(JOB, "f", "boom", |n| {
            assert_eq!(n, 1, "a success ends the run of failures");
            None
        })
        .unwrap();
}

#[test]
fn a_case_twin_skipped_for_now_is_recorded_whole_or_not_at_all() {
    let (_dir, mut store) = open_temp();
    store
        .record_scanned(JOB, &[entry("A.txt", b"1", 1, Change::New)])
        .unwrap();
    store.mark_synced(JOB, "A.txt", &synced_info(b"1")).unwrap();
    // The second of its writes fails (a full disk, or a crash there).
    store
        .conn
        .execute_batch(
            "CREATE TEMP TRIGGER unmapping_fails BEFORE UPDATE OF item_id ON main.files
             BEGIN SELECT RAISE(ABORT, 'disk full'); END;",
        )
        .unwrap();
    store
        .record_skipped_for_now(JOB, "A.txt", "differs only in case")
        .unwrap_err();
    // Not skipped while still holding the item the keeper shares: a mirror
    // delete of this path would take the keeper's file with it.
    let record = store.file(JOB, "A.txt").unwrap().unwrap();
    assert_eq!(record.state.kind(), FileStateKind::Synced, "{record:?}");
    assert_eq!(record.item_id.as_deref(), Some("ITEM1"));
}
