//! graph-api.md §3 "Simple upload", §9 (hash of stored content), rewrite.

use crate::common::*;
use graph_emulator::{Options, quick_xor_hash};
use serde_json::Value;

#[tokio::test]
async fn simple_upload_new_is_201_and_replace_is_200() {
    let emu = start().await;
    let r = emu.put("s.txt", b"one").await;
    assert_eq!(r.status(), 201);
    let r = emu.put("s.txt", b"two!").await;
    assert_eq!(r.status(), 200);
    assert_eq!(emu.h.read_file("s.txt").unwrap(), b"two!");
}

#[tokio::test]
async fn simple_upload_of_zero_bytes_is_accepted() {
    let emu = start().await;
    let r = emu.put("empty.txt", b"").await;
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["size"], 0);
    assert_eq!(
        v["file"]["hashes"]["quickXorHash"],
        "AAAAAAAAAAAAAAAAAAAAAAAAAAA="
    );
}

#[tokio::test]
async fn simple_upload_conflict_fail_is_409_name_already_exists() {
    let emu = start().await;
    emu.put("c.txt", b"1").await;
    let r = emu
        .c
        .put(emu.drive_path("/root:/c.txt:/content?@microsoft.graph.conflictBehavior=fail"))
        .bearer_auth(&emu.token)
        .body("2")
        .send()
        .await
        .unwrap();
    let (status, code, _) = graph_err(r).await;
    assert_eq!((status, code.as_str()), (409, "nameAlreadyExists"));
}

#[tokio::test]
async fn simple_upload_conflict_rename_keeps_both() {
    let emu = start().await;
    emu.put("r.txt", b"1").await;
    let r = emu
        .c
        .put(emu.drive_path("/root:/r.txt:/content"))
        .query(&[("@microsoft.graph.conflictBehavior", "rename")])
        .bearer_auth(&emu.token)
        .body("2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let paths: Vec<String> = emu.h.tree().into_iter().map(|e| e.path).collect();
    assert_eq!(paths, ["r 1.txt", "r.txt"]);
}

#[tokio::test]
async fn simple_upload_over_the_size_limit_is_413() {
    let emu = start_with(Options {
        simple_upload_max: 1000,
        ..opts()
    })
    .await;
    assert_eq!(emu.put("ok.bin", &[0; 1000]).await.status(), 201);
    let (status, _, _) = graph_err(emu.put("big.bin", &[0; 1001]).await).await;
    assert_eq!(status, 413);
    assert_eq!(emu.h.tree().len(), 1);
}

/// graph-api.md §3: 250 MB on Graph v1.0, 4 MB in older OneDrive docs; the
/// emulator enforces the strict side, so a client that sends larger simple
/// uploads fails here, not on a tenant with the older limit. 4 MiB, the size
/// at which reference clients switch to sessions, is still accepted.
#[tokio::test]
async fn simple_upload_limit_defaults_to_the_strict_4_mib() {
    let emu = start().await;
    assert_eq!(emu.put("ok.bin", &vec![0; 4 * MIB]).await.status(), 201);
    let (status, code, _) = graph_err(emu.put("big.bin", &vec![0; 4 * MIB + 1]).await).await;
    assert_eq!((status, code.as_str()), (413, "requestTooLarge"));
}

#[tokio::test]
async fn simple_upload_into_a_missing_folder_is_404() {
    let emu = start().await;
    let (status, code, _) = graph_err(emu.put("no/such/f.txt", b"x").await).await;
    assert_eq!((status, code.as_str()), (404, "itemNotFound"));
}

#[tokio::test]
async fn simple_upload_by_parent_id_and_name() {
    let emu = start().await;
    let d: Value = emu.mkdir("", "p").await.json().await.unwrap();
    let r = emu
        .c
        .put(emu.drive_path(&format!(
            "/items/{}:/n.txt:/content",
            d["id"].as_str().unwrap()
        )))
        .bearer_auth(&emu.token)
        .body("n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(emu.h.tree()[0].path, "p/n.txt");
}

#[tokio::test]
async fn stored_content_hash_is_quickxorhash_of_the_bytes() {
    let emu = start().await;
    let all: Vec<u8> = (0..=255u8).collect();
    let v: Value = emu.put("v.bin", &all).await.json().await.unwrap();
    assert_eq!(
        v["file"]["hashes"]["quickXorHash"],
        "QkGEfSisZcA7k+FCh71r2dbCayY="
    );
    let big = bytes(3 * MIB + 17, 9);
    emu.put("big.bin", &big).await;
    let e = emu
        .h
        .tree()
        .into_iter()
        .find(|e| e.path == "big.bin")
        .unwrap();
    assert_eq!(e.quick_xor_hash, quick_xor_hash(&big));
    assert_eq!(e.size, big.len() as u64);
}

#[tokio::test]
async fn office_rewrite_changes_size_and_hash_after_upload() {
    let emu = start_with(Options {
        rewrite_office: true,
        ..opts()
    })
    .await;
    let data = bytes(1000, 3);
    let v: Value = emu.put("report.docx", &data).await.json().await.unwrap();
    assert!(v["size"].as_u64().unwrap() > 1000);
    assert_ne!(
        v["file"]["hashes"]["quickXorHash"],
        quick_xor_hash(&data).as_str()
    );
    let stored = emu.h.read_file("report.docx").unwrap();
    assert_eq!(
        v["file"]["hashes"]["quickXorHash"],
        quick_xor_hash(&stored).as_str()
    );
    let v: Value = emu.put("plain.txt", &data).await.json().await.unwrap();
    assert_eq!(v["size"], 1000);
    // Sessions are rewritten too.
    let v = emu.upload("deck.pptx", &data, K320).await;
    assert!(v["size"].as_u64().unwrap() > 1000);
}
