//! graph-api.md §2 (finding the library, addressing), §4 (folders),
//! §5 (PATCH), item deletion and If-Match.

use crate::common::*;
use serde_json::{Value, json};

#[tokio::test]
async fn site_by_hostname_and_path_has_composite_id() {
    let emu = start().await;
    for path in [
        "/sites/contoso.sharepoint.com:/sites/demo",
        "/sites/contoso.sharepoint.com:/sites/demo:",
        "/sites/contoso.sharepoint.com:/sites/DEMO/",
    ] {
        let r = emu
            .c
            .get(emu.graph(path))
            .bearer_auth(&emu.token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let v: Value = r.json().await.unwrap();
        let id = v["id"].as_str().unwrap();
        let parts: Vec<&str> = id.split(',').collect();
        assert_eq!(parts.len(), 3, "{id}");
        assert_eq!(parts[0], "contoso.sharepoint.com");
        assert_eq!(parts[1].len(), 36);
        assert_eq!(v["webUrl"], "https://contoso.sharepoint.com/sites/demo");
    }
}

#[tokio::test]
async fn site_by_hostname_alone_is_the_root_site() {
    let emu = start().await;
    let r = emu
        .c
        .get(emu.graph("/sites/contoso.sharepoint.com"))
        .bearer_auth(&emu.token)
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert!(v.get("root").is_some());
    assert_eq!(v["webUrl"], "https://contoso.sharepoint.com");
}

#[tokio::test]
async fn site_by_composite_id_and_unknown_site_is_404() {
    let emu = start().await;
    let id = emu.h.info()["site_id"].as_str().unwrap().to_string();
    let r = emu
        .c
        .get(emu.graph(&format!("/sites/{id}")))
        .bearer_auth(&emu.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = emu
        .c
        .get(emu.graph("/sites/contoso.sharepoint.com:/sites/nope"))
        .bearer_auth(&emu.token)
        .send()
        .await
        .unwrap();
    let (status, code, _) = graph_err(r).await;
    assert_eq!((status, code.as_str()), (404, "itemNotFound"));
}

#[tokio::test]
async fn site_drives_lists_the_documents_library() {
    let emu = start().await;
    let id = emu.h.info()["site_id"].as_str().unwrap().to_string();
    let r = emu
        .c
        .get(emu.graph(&format!("/sites/{id}/drives")))
        .bearer_auth(&emu.token)
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    let drives = v["value"].as_array().unwrap();
    assert_eq!(drives.len(), 1);
    assert_eq!(drives[0]["name"], "Documents");
    assert_eq!(drives[0]["driveType"], "documentLibrary");
    assert_eq!(drives[0]["id"], emu.drive.as_str());
    assert!(emu.drive.starts_with("b!"));
    assert_eq!(
        drives[0]["webUrl"],
        "https://contoso.sharepoint.com/sites/demo/Shared%20Documents"
    );
}

#[tokio::test]
async fn drive_has_id_drive_type_and_quota() {
    let emu = start().await;
    emu.put("a.bin", &[1, 2, 3]).await;
    let v = emu.get_json("").await;
    assert_eq!(v["id"], emu.drive.as_str());
    assert_eq!(v["driveType"], "documentLibrary");
    assert_eq!(v["quota"]["used"], 3);
    for k in ["total", "remaining", "deleted", "state"] {
        assert!(!v["quota"][k].is_null(), "quota.{k}");
    }
}

#[tokio::test]
async fn root_and_item_by_id() {
    let emu = start().await;
    let root = emu.get_json("/root").await;
    assert!(root.get("root").is_some());
    assert!(root.get("folder").is_some());
    let f: Value = emu.put("x.txt", b"hi").await.json().await.unwrap();
    let id = f["id"].as_str().unwrap();
    assert_eq!(id.len(), 34);
    let v = emu.get_json(&format!("/items/{id}")).await;
    assert_eq!(v["name"], "x.txt");
    assert_eq!(v["parentReference"]["id"], root["id"]);
}

#[tokio::test]
async fn path_addressing_with_and_without_closing_colon() {
    let emu = start().await;
    emu.mkdir("", "a").await;
    emu.put("a/b.txt", b"b").await;
    for p in ["/root:/a/b.txt:", "/root:/a/b.txt", "/root:/a:/children"] {
        assert_eq!(emu.get(p).await.status(), 200, "{p}");
    }
}

#[tokio::test]
async fn path_with_percent_2f_inside_a_segment_and_leading_dot_slash() {
    let emu = start().await;
    emu.mkdir("", "dir one").await;
    emu.put("dir%20one/f%23%25.txt", b"x").await;
    let v = emu.get_json("/root:/.%2Fdir%20one%2Ff%23%25.txt:").await;
    assert_eq!(v["name"], "f#%.txt");
    let v = emu.get_json("/root:/./dir%20one/f%23%25.txt").await;
    assert_eq!(v["name"], "f#%.txt");
}

#[tokio::test]
async fn path_relative_to_an_item_id() {
    let emu = start().await;
    let d: Value = emu.mkdir("", "d").await.json().await.unwrap();
    emu.put("d/e.txt", b"e").await;
    let id = d["id"].as_str().unwrap();
    let v = emu.get_json(&format!("/items/{id}:/e.txt:")).await;
    assert_eq!(v["name"], "e.txt");
    assert_eq!(
        v["parentReference"]["path"],
        format!("/drives/{}/root:/d", emu.drive)
    );
}

#[tokio::test]
async fn names_are_case_insensitive() {
    let emu = start().await;
    let a: Value = emu.put("A.txt", b"1").await.json().await.unwrap();
    let r = emu.put("a.TXT", b"22").await;
    assert_eq!(r.status(), 200, "replaces the same item");
    let b: Value = r.json().await.unwrap();
    assert_eq!(a["id"], b["id"]);
    assert_eq!(b["name"], "A.txt");
    assert_eq!(emu.get_json("/root:/a.txt:").await["size"], 2);
}

#[tokio::test]
async fn missing_item_is_404_item_not_found() {
    let emu = start().await;
    let (status, code, _) = graph_err(emu.get("/root:/nope.txt:").await).await;
    assert_eq!((status, code.as_str()), (404, "itemNotFound"));
    let (status, code, _) = graph_err(emu.get("/items/01NOPE").await).await;
    assert_eq!((status, code.as_str()), (404, "itemNotFound"));
}

#[tokio::test]
async fn children_listing_pages_with_top_and_next_link() {
    let emu = start().await;
    for i in 0..5 {
        emu.put(&format!("f{i}.txt"), b"x").await;
    }
    let mut url = format!("{}?$top=2", emu.drive_path("/root/children"));
    let mut names = Vec::new();
    let mut pages = 0;
    loop {
        let v: Value = emu
            .c
            .get(&url)
            .bearer_auth(&emu.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        pages += 1;
        names.extend(
            v["value"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["name"].as_str().unwrap().to_string()),
        );
        match v["@odata.nextLink"].as_str() {
            Some(next) => {
                assert!(
                    next.starts_with(emu.h.url()),
                    "nextLink built from the Host used: {next}"
                );
                url = next.to_string();
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(names, ["f0.txt", "f1.txt", "f2.txt", "f3.txt", "f4.txt"]);
}

#[tokio::test]
async fn returned_urls_follow_the_host_header() {
    let emu = start().await;
    let r = emu
        .c
        .post(emu.drive_path("/root:/h.bin:/createUploadSession"))
        .header("Host", "emulator.example:8443")
        .bearer_auth(&emu.token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert!(
        v["uploadUrl"]
            .as_str()
            .unwrap()
            .starts_with("http://emulator.example:8443/"),
        "{v}"
    );
}

#[tokio::test]
async fn create_folder_is_201_with_folder_facet() {
    let emu = start().await;
    let r = emu.mkdir("", "new").await;
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["folder"]["childCount"], 0);
    assert_eq!(v["name"], "new");
}

#[tokio::test]
async fn create_existing_folder_with_fail_is_409_name_already_exists() {
    let emu = start().await;
    emu.mkdir("", "dup").await;
    let (status, code, _) = graph_err(emu.mkdir("", "DUP").await).await;
    assert_eq!((status, code.as_str()), (409, "nameAlreadyExists"));
}

#[tokio::test]
async fn create_folder_replace_returns_the_existing_folder() {
    let emu = start().await;
    let a: Value = emu.mkdir("", "keep").await.json().await.unwrap();
    emu.put("keep/inner.txt", b"x").await;
    let r = emu
        .c
        .post(emu.drive_path("/root/children"))
        .bearer_auth(&emu.token)
        .json(
            &json!({"name": "keep", "folder": {}, "@microsoft.graph.conflictBehavior": "replace"}),
        )
        .send()
        .await
        .unwrap();
    let b: Value = r.json().await.unwrap();
    assert_eq!(a["id"], b["id"]);
    assert_eq!(emu.h.tree().len(), 1, "content kept");
}

#[tokio::test]
async fn create_folder_rename_picks_a_free_name() {
    let emu = start().await;
    emu.mkdir("", "r").await;
    let r = emu
        .c
        .post(emu.drive_path("/root/children"))
        .bearer_auth(&emu.token)
        .json(&json!({"name": "r", "folder": {}, "@microsoft.graph.conflictBehavior": "rename"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.json::<Value>().await.unwrap()["name"], "r 1");
}

#[tokio::test]
async fn patch_file_system_info_is_stored_and_returned() {
    let emu = start().await;
    let f: Value = emu.put("m.txt", b"m").await.json().await.unwrap();
    let r = emu
        .c
        .patch(emu.drive_path(&format!("/items/{}", f["id"].as_str().unwrap())))
        .bearer_auth(&emu.token)
        .json(&json!({"fileSystemInfo": {"lastModifiedDateTime": "2026-01-02T03:04:05.678Z", "createdDateTime": "2025-01-01T00:00:00Z"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["fileSystemInfo"]["lastModifiedDateTime"],
        "2026-01-02T03:04:05Z"
    );
    assert_eq!(
        v["fileSystemInfo"]["createdDateTime"],
        "2025-01-01T00:00:00Z"
    );
    assert_ne!(v["eTag"], f["eTag"], "a PATCH is a change");
    assert_eq!(v["cTag"], f["cTag"], "content unchanged");
    assert_eq!(emu.h.tree()[0].last_modified, "2026-01-02T03:04:05Z");
}

/// An ItemReference's `path` is read-only in Graph: a move names its new
/// parent by `id` (the strict side; moves by path have failed on business
/// drives).
#[tokio::test]
async fn patch_refuses_a_move_by_parent_path() {
    let emu = start().await;
    emu.mkdir("", "dest").await;
    let f: Value = emu.put("old.txt", b"x").await.json().await.unwrap();
    let r = emu
        .c
        .patch(emu.drive_path(&format!("/items/{}", f["id"].as_str().unwrap())))
        .bearer_auth(&emu.token)
        .json(&json!({"parentReference": {"path": "/drive/root:/dest"}}))
        .send()
        .await
        .unwrap();
    let (status, code, _) = graph_err(r).await;
    assert_eq!((status, code.as_str()), (400, "invalidRequest"));
    assert_eq!(emu.h.tree()[0].path, "old.txt", "not moved");
}

#[tokio::test]
async fn patch_renames_and_moves() {
    let emu = start().await;
    let dest: Value = emu.mkdir("", "dest").await.json().await.unwrap();
    let f: Value = emu.put("old.txt", b"x").await.json().await.unwrap();
    let r = emu
        .c
        .patch(emu.drive_path(&format!("/items/{}", f["id"].as_str().unwrap())))
        .bearer_auth(&emu.token)
        .json(&json!({"name": "new.txt", "parentReference": {"id": dest["id"]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(emu.h.tree()[0].path, "dest/new.txt");
    // Moving onto an existing name fails by default.
    emu.put("dest/other.txt", b"y").await;
    let r = emu
        .c
        .patch(emu.drive_path("/root:/dest/other.txt:"))
        .bearer_auth(&emu.token)
        .json(&json!({"name": "NEW.txt"}))
        .send()
        .await
        .unwrap();
    let (status, code, _) = graph_err(r).await;
    assert_eq!((status, code.as_str()), (409, "nameAlreadyExists"));
}

#[tokio::test]
async fn if_match_with_stale_etag_is_412_resource_modified() {
    let emu = start().await;
    let f: Value = emu.put("e.txt", b"1").await.json().await.unwrap();
    emu.put("e.txt", b"2").await;
    let r = emu
        .c
        .patch(emu.drive_path("/root:/e.txt:"))
        .bearer_auth(&emu.token)
        .header("If-Match", f["eTag"].as_str().unwrap())
        .json(&json!({"fileSystemInfo": {"lastModifiedDateTime": "2026-01-02T03:04:05Z"}}))
        .send()
        .await
        .unwrap();
    let (status, code, _) = graph_err(r).await;
    assert_eq!((status, code.as_str()), (412, "resourceModified"));
    let r = emu
        .c
        .delete(emu.drive_path("/root:/e.txt:"))
        .bearer_auth(&emu.token)
        .header("If-Match", f["cTag"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(graph_err(r).await.0, 412);
}

#[tokio::test]
async fn if_match_accepts_the_ctag_as_well_as_the_etag() {
    let emu = start().await;
    let f: Value = emu.put("c.txt", b"1").await.json().await.unwrap();
    for tag in ["cTag", "eTag"] {
        let cur = emu.get_json("/root:/c.txt:").await;
        let r = emu
            .c
            .put(emu.drive_path("/root:/c.txt:/content"))
            .bearer_auth(&emu.token)
            .header("If-Match", cur[tag].as_str().unwrap())
            .body(tag.as_bytes().to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "If-Match {tag}");
    }
    assert!(f["eTag"].as_str().unwrap().starts_with("\"{"));
    assert!(f["cTag"].as_str().unwrap().starts_with("\"c:{"));
}

#[tokio::test]
async fn delete_item_is_204_then_404() {
    let emu = start().await;
    emu.mkdir("", "gone").await;
    emu.put("gone/x.txt", b"x").await;
    let r = emu
        .c
        .delete(emu.drive_path("/root:/gone:"))
        .bearer_auth(&emu.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(emu.get("/root:/gone/x.txt:").await.status(), 404);
    assert!(emu.h.tree().is_empty());
}

#[tokio::test]
async fn content_download_redirects_to_a_preauthenticated_url() {
    let emu = start().await;
    let data = bytes(300_000, 1);
    emu.put("d.bin", &data).await;
    let no_redirect = crate::common::client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = no_redirect
        .get(emu.drive_path("/root:/d.bin:/content"))
        .bearer_auth(&emu.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let got = no_redirect
        .get(&loc)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.as_ref(), data.as_slice());
    let part = no_redirect
        .get(&loc)
        .header("Range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.bytes().await.unwrap().as_ref(), &data[10..20]);
}

#[tokio::test]
async fn drive_item_reply_has_every_documented_field() {
    let emu = start().await;
    emu.mkdir("", "p").await;
    let v: Value = emu
        .put("p/f.txt", b"hello world")
        .await
        .json()
        .await
        .unwrap();
    for k in [
        "id",
        "name",
        "size",
        "eTag",
        "cTag",
        "createdDateTime",
        "lastModifiedDateTime",
        "webUrl",
    ] {
        assert!(!v[k].is_null(), "{k}");
    }
    let p = &v["parentReference"];
    assert_eq!(p["driveId"], emu.drive.as_str());
    assert_eq!(p["driveType"], "documentLibrary");
    assert!(p["id"].is_string());
    assert_eq!(p["path"], format!("/drives/{}/root:/p", emu.drive));
    assert_eq!(v["file"]["mimeType"], "text/plain");
    assert_eq!(
        v["file"]["hashes"]["quickXorHash"],
        "aCgDG9jwBhDc4Q1yawMZAAAAAAA="
    );
    assert!(v["file"]["hashes"].get("sha1Hash").is_none());
    assert!(v["fileSystemInfo"]["createdDateTime"].is_string());
    assert!(v["fileSystemInfo"]["lastModifiedDateTime"].is_string());
    assert_eq!(
        v["webUrl"],
        "https://contoso.sharepoint.com/sites/demo/Shared%20Documents/p/f.txt"
    );
}
