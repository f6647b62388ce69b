//! The `/_emulator/` admin API and persistence across restarts.

use crate::common::*;
use graph_emulator::Options;
use serde_json::{Value, json};

#[tokio::test]
async fn admin_tree_lists_files_with_path_size_hash_and_mtime() {
    let emu = start().await;
    emu.mkdir("", "d").await;
    emu.put("d/x.txt", b"hello world").await;
    let v: Value = emu
        .c
        .get(emu.url("/_emulator/tree"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let a = v.as_array().unwrap();
    assert_eq!(a.len(), 1, "folders excluded");
    assert_eq!(a[0]["path"], "d/x.txt");
    assert_eq!(a[0]["size"], 11);
    assert_eq!(a[0]["quickXorHash"], "aCgDG9jwBhDc4Q1yawMZAAAAAAA=");
    assert!(a[0]["lastModifiedDateTime"].is_string());
}

#[tokio::test]
async fn admin_requests_log_in_order_without_admin_calls() {
    let emu = start().await;
    emu.get("/root").await;
    emu.get("/root:/nope:").await;
    let v: Value = emu
        .c
        .get(emu.url("/_emulator/requests"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let a = v.as_array().unwrap();
    let tail: Vec<(String, u64)> = a
        .iter()
        .skip(1)
        .map(|r| {
            (
                r["method"].as_str().unwrap().to_string(),
                r["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(tail, [("GET".to_string(), 200), ("GET".to_string(), 404)]);
    assert_eq!(a[0]["path"], format!("/{TENANT}/oauth2/v2.0/token"));
    assert!(a[2]["t_ms"].as_u64().unwrap() >= a[1]["t_ms"].as_u64().unwrap());
    assert!(
        a.iter()
            .all(|r| !r["path"].as_str().unwrap().starts_with("/_emulator"))
    );
    assert_eq!(emu.h.counters()["graph"][&404], 1);
}

#[tokio::test]
async fn admin_requests_log_arrival_time_and_fragment_ranges() {
    let emu = start_with(Options {
        latency: std::time::Duration::from_millis(30),
        ..opts()
    })
    .await;
    let url = emu.session("r.bin").await;
    let data = bytes(K320 + 5, 9);
    emu.fragment(&url, 0, data.len(), &data[..K320]).await;
    emu.fragment(&url, K320, data.len(), &data[K320..]).await;
    let v: Value = emu
        .c
        .get(emu.url("/_emulator/requests"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let a = v.as_array().unwrap();
    for r in a {
        let (start, end) = (
            r["t_start_ms"].as_u64().unwrap(),
            r["t_ms"].as_u64().unwrap(),
        );
        assert!(
            end >= start + 30,
            "latency lies between arrival and reply: {r}"
        );
    }
    let ranges: Vec<&Value> = a.iter().map(|r| &r["range"]).collect();
    let n = ranges.len();
    assert!(ranges[..n - 2].iter().all(|r| r.is_null()), "{v}");
    let total = data.len();
    assert_eq!(
        ranges[n - 2..],
        [
            &json!(format!("bytes 0-{}/{total}", K320 - 1)),
            &json!(format!("bytes {K320}-{}/{total}", total - 1))
        ]
    );
    let log = emu.h.requests();
    assert_eq!(
        log.last().unwrap().range,
        Some(format!("bytes {K320}-{}/{total}", total - 1))
    );
    assert!(log.iter().all(|r| r.t_ms >= r.t_start_ms));
}

#[tokio::test]
async fn admin_faults_post_and_delete() {
    let emu = start().await;
    let r = emu
        .c
        .post(emu.url("/_emulator/faults"))
        .json(&json!("graph:503"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(emu.get("/root").await.status(), 503);
    let r = emu
        .c
        .delete(emu.url("/_emulator/faults"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(emu.get("/root").await.status(), 200);
    let r = emu
        .c
        .post(emu.url("/_emulator/faults"))
        .json(&json!({"spec": "graph:418"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("graph:418"));
}

#[tokio::test]
async fn admin_approve_unknown_user_code_is_404() {
    let emu = start().await;
    let r = emu
        .c
        .post(emu.url("/_emulator/approve"))
        .json(&json!({"user_code": "NOPE"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn admin_reset_empties_the_library() {
    let emu = start().await;
    emu.put("x.txt", b"x").await;
    let r = emu
        .c
        .post(emu.url("/_emulator/reset"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(emu.h.tree().is_empty());
    assert_eq!(
        emu.get("/root").await.status(),
        200,
        "tokens kept by default"
    );
}

#[tokio::test]
async fn admin_clock_advances_emulator_time() {
    let emu = start_with(Options {
        token_lifetime: std::time::Duration::from_secs(60),
        ..opts()
    })
    .await;
    let r = emu
        .c
        .post(emu.url("/_emulator/clock"))
        .json(&json!({"advance_secs": 61}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(emu.get("/root").await.status(), 401);
}

#[tokio::test]
async fn metadata_and_content_survive_a_restart_with_a_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let o = || Options {
        data_dir: Some(dir.path().to_path_buf()),
        ..opts()
    };
    let emu = start_with(o()).await;
    emu.mkdir("", "keep").await;
    emu.put("keep/a.txt", b"persisted").await;
    let url = emu.session("half.bin").await;
    emu.fragment(&url, 0, 2 * K320, &vec![1; K320]).await;
    let token = emu.token.clone();
    let before = emu.h.tree();
    emu.h.shutdown().await.unwrap();

    let mut emu2 = start_with(o()).await;
    assert_eq!(emu2.h.tree(), before);
    assert_eq!(emu2.h.read_file("keep/a.txt").unwrap(), b"persisted");
    emu2.token = token;
    assert_eq!(
        emu2.get("/root:/keep/a.txt:").await.status(),
        200,
        "access token survives too"
    );
    // The half-done session resumes on the new port.
    let new_url = url.replacen(&url[..url.find("/_upload").unwrap()], emu2.h.url(), 1);
    let r = emu2
        .fragment(&new_url, K320, 2 * K320, &vec![1; K320])
        .await;
    assert_eq!(r.status(), 201);
}

#[tokio::test]
async fn cli_prints_the_listening_line_first() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_graph-emulator"))
        .args(["--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(std::time::Duration::from_secs(20), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let url = first
        .strip_prefix("graph-emulator listening on ")
        .expect(&first)
        .to_string();
    assert!(url.starts_with("http://127.0.0.1:"));
    assert_eq!(
        lines.next_line().await.unwrap().unwrap(),
        format!("authority {url}")
    );
    assert_eq!(
        lines.next_line().await.unwrap().unwrap(),
        format!("graph_url {url}/v1.0")
    );
    let r = reqwest::get(format!("{url}/_emulator/tree")).await.unwrap();
    assert_eq!(r.status(), 200);
    child.kill().await.unwrap();
}

#[tokio::test]
async fn admin_login_presets_a_users_tokens() {
    let emu = start().await;
    let r = emu
        .c
        .post(emu.url("/_emulator/login"))
        .json(&json!({"client_id": "preset"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let at = v["access_token"].as_str().unwrap();
    assert_eq!(
        emu.c
            .get(emu.drive_path("/root"))
            .bearer_auth(at)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let r = emu
        .token_form(&[
            ("grant_type", "refresh_token"),
            ("client_id", "preset"),
            ("refresh_token", v["refresh_token"].as_str().unwrap()),
        ])
        .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn admin_user_codes_lists_pending_device_codes() {
    let emu = start().await;
    let v: Value = emu
        .c
        .post(emu.url(&format!("/{TENANT}/oauth2/v2.0/devicecode")))
        .form(&[("client_id", "c"), ("scope", "Files.ReadWrite.All")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let codes: Value = emu
        .c
        .get(emu.url("/_emulator/user-codes"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(codes, json!([v["user_code"]]));
}

#[tokio::test]
async fn wait_for_requests_returns_when_the_condition_holds() {
    let emu = start().await;
    let c = emu.c.clone();
    let url = emu.drive_path("/root:/later.txt:");
    let token = emu.token.clone();
    let client =
        tokio::spawn(async move { c.get(url).bearer_auth(token).send().await.unwrap().status() });
    let seen = emu
        .h
        .wait_for_requests(std::time::Duration::from_secs(10), |log| {
            log.iter()
                .any(|r| r.path.ends_with("later.txt:") && r.status == 404)
        })
        .await;
    assert!(seen);
    assert_eq!(client.await.unwrap(), 404);
    let never = emu
        .h
        .wait_for_requests(std::time::Duration::from_millis(50), |log| log.len() > 1000)
        .await;
    assert!(!never);
}

#[tokio::test]
async fn admin_seed_creates_listable_downloadable_items_seen_by_delta() {
    let emu = start().await;
    let link = emu.get_json("/root/delta?token=latest").await["@odata.deltaLink"]
        .as_str()
        .unwrap()
        .to_string();
    let r = emu
        .c
        .post(emu.url("/_emulator/seed"))
        .json(&json!({"folder": "lib/ours", "files": 25, "per_folder": 10, "size": 300}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["files"], 25);
    // Rust handle: a second folder, other sizes.
    emu.h.seed(None, "other", 3, 1000, 0).unwrap();

    let tree = emu.h.tree();
    let ours: Vec<_> = tree
        .iter()
        .filter(|e| e.path.starts_with("lib/ours/"))
        .collect();
    assert_eq!(ours.len(), 25);
    assert_eq!(ours[0].path, "lib/ours/d00000/f0000000.bin");
    assert_eq!(ours[24].path, "lib/ours/d00002/f0000024.bin");
    let content = graph_emulator::seed_content(300);
    let hash = graph_emulator::quick_xor_hash(&content);
    assert!(
        ours.iter()
            .all(|e| e.size == 300 && e.quick_xor_hash == hash)
    );
    assert_eq!(
        emu.h.read_file("lib/ours/d00001/f0000013.bin").unwrap(),
        content
    );
    assert_eq!(
        tree.iter().filter(|e| e.path.starts_with("other/")).count(),
        3
    );
    // Children listing sees them under the generated subfolders.
    let kids = emu.get_json("/root:/lib/ours/d00002:/children").await;
    assert_eq!(kids["value"].as_array().unwrap().len(), 5);

    // Replacing one seeded file leaves the others' shared content readable.
    assert!(
        emu.put("lib/ours/d00000/f0000001.bin", b"changed")
            .await
            .status()
            .is_success()
    );
    assert_eq!(
        emu.h.read_file("lib/ours/d00000/f0000002.bin").unwrap(),
        content
    );

    // Delta since before the seed reports every new item (folders too).
    let mut next = link;
    let mut names = Vec::new();
    loop {
        let v: Value = emu
            .c
            .get(&next)
            .bearer_auth(&emu.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        names.extend(
            v["value"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|i| i["name"].as_str().map(str::to_string)),
        );
        match v["@odata.nextLink"].as_str() {
            Some(n) => next = n.to_string(),
            None => break,
        }
    }
    assert!(names.contains(&"f0000024.bin".to_string()));
    assert!(names.contains(&"d00002".to_string()));

    // Bad input names what is accepted.
    let r = emu
        .c
        .post(emu.url("/_emulator/seed"))
        .json(&json!({"files": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("folder"));
}

#[tokio::test]
async fn admin_recreate_library_gives_an_empty_library_under_a_new_drive_id() {
    let dir = tempfile::tempdir().unwrap();
    let o = || Options {
        data_dir: Some(dir.path().to_path_buf()),
        ..opts()
    };
    let emu = start_with(o()).await;
    let old = emu.drive.clone();
    emu.mkdir("", "d").await;
    emu.put("d/x.txt", b"before").await;
    let open_session = emu.session("half.bin").await;
    let old_link = emu.get_json("/root/delta?token=latest").await["@odata.deltaLink"]
        .as_str()
        .unwrap()
        .to_string();

    let r = emu
        .c
        .post(emu.url("/_emulator/recreate-library"))
        .json(&json!({"site": "https://contoso.sharepoint.com/sites/demo", "library": "documents"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let new = v["drive_id"].as_str().unwrap().to_string();
    assert_eq!(v["old_drive_id"], old.as_str());
    assert!(new.starts_with("b!") && new != old, "{new}");
    assert_eq!(emu.h.drive_id(), new);
    assert_eq!(emu.h.info()["drive_id"], new.as_str());

    // Everything addressed through the old id is gone: 404 itemNotFound,
    // the same answer as for a missing item.
    for path in ["", "/root", "/root:/d/x.txt:"] {
        let (status, code, _) = graph_err(emu.get(path).await).await;
        assert_eq!((status, code.as_str()), (404, "itemNotFound"), "{path}");
    }
    let r = emu
        .c
        .get(&old_link)
        .bearer_auth(&emu.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "delta link of the old drive");
    assert_eq!(emu.c.get(&open_session).send().await.unwrap().status(), 404);

    // The site lists the new library under the same name, empty.
    let site = emu.graph("/sites/contoso.sharepoint.com:/sites/demo");
    let v: Value = emu
        .c
        .get(format!("{site}:/drives"))
        .bearer_auth(&emu.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let libs: Vec<(&str, &str)> = v["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["name"].as_str().unwrap(), d["id"].as_str().unwrap()))
        .collect();
    assert_eq!(libs, [("Documents", new.as_str())]);
    assert!(emu.h.tree().is_empty());
    let fresh = Emu {
        drive: new.clone(),
        ..emu
    };
    assert_eq!(fresh.put("y.txt", b"after").await.status(), 201);
    assert_eq!(fresh.h.read_file("y.txt").unwrap(), b"after");

    // The new id survives a restart with the data dir.
    fresh.h.shutdown().await.unwrap();
    let emu2 = start_with(o()).await;
    assert_eq!(emu2.h.drive_id(), new);
    assert_eq!(emu2.h.read_file("y.txt").unwrap(), b"after");

    // Rust handle, and an unknown library is named in a 404.
    let third = emu2
        .h
        .recreate_library(Some("/sites/demo"), "Documents")
        .unwrap();
    assert_ne!(third, new);
    let r = emu2
        .c
        .post(emu2.url("/_emulator/recreate-library"))
        .json(&json!({"site": "/sites/demo", "library": "Nope"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("Nope"));
    let r = emu2
        .c
        .post(emu2.url("/_emulator/recreate-library"))
        .json(&json!({"library": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn admin_delete_library_makes_its_id_and_name_unknown_until_recreated() {
    let emu = start().await;
    emu.put("x.txt", b"before").await;
    let r = emu
        .c
        .post(emu.url("/_emulator/delete-library"))
        .json(&json!({"library": "Documents"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["drive_id"], emu.drive.as_str());
    let (status, code, _) = graph_err(emu.get("/root").await).await;
    assert_eq!((status, code.as_str()), (404, "itemNotFound"));
    let site = emu.graph("/sites/contoso.sharepoint.com:/sites/demo");
    let v: Value = emu
        .c
        .get(format!("{site}:/drives"))
        .bearer_auth(&emu.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["value"], json!([]), "the site no longer lists it");
    assert!(emu.h.tree().is_empty());

    let new = emu.h.recreate_library(None, "Documents").unwrap();
    assert_ne!(new, emu.drive);
    let fresh = Emu { drive: new, ..emu };
    assert_eq!(fresh.get("/root").await.status(), 200);
    assert!(fresh.h.read_file("x.txt").is_none(), "recreated empty");
}

#[tokio::test]
async fn admin_seed_answers_500_when_the_emulator_cannot_write_and_400_for_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let emu = start_with(Options {
        data_dir: Some(dir.path().to_path_buf()),
        ..opts()
    })
    .await;
    let seed = |body: Value| emu.c.post(emu.url("/_emulator/seed")).json(&body).send();
    // The caller's mistakes: 400.
    let r = seed(json!({"folder": "a", "files": 1, "drive": "b!nope"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("b!nope"));
    let r = seed(json!({"folder": "a", "files": 1, "per_folder": 0}))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // The emulator's own failure (content cannot be written: `blobs` is
    // a file, which stops root as well): 500.
    let blobs = dir.path().join("blobs");
    std::fs::remove_dir_all(&blobs).unwrap();
    std::fs::write(&blobs, b"not a directory").unwrap();
    let r = seed(json!({"folder": "a", "files": 1, "size": 10}))
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("cannot write seed content")
    );
    assert!(
        emu.h
            .seed(None, "a", 1, 1, 10)
            .unwrap_err()
            .starts_with("500 ")
    );
}
