//! The scripted session of the emulator issue's acceptance: a client's
//! whole day against the emulator over real HTTP, checked byte for byte
//! through the inspection API.

use crate::common::*;
use graph_emulator::quick_xor_hash;
use serde_json::{Value, json};
use std::collections::BTreeSet;

const FRAG: usize = 10 * MIB;

async fn admin(emu: &Emu, path: &str, body: Value) {
    let r = emu
        .c
        .post(emu.url(&format!("/_emulator/{path}")))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "{path}");
}

async fn session_upload(
    emu: &Emu,
    token: &str,
    drive: &str,
    path: &str,
    data: &[u8],
    mtime: &str,
) -> Value {
    let r = emu
        .c
        .post(emu.graph(&format!("/drives/{drive}/root:/{path}:/createUploadSession")))
        .bearer_auth(token)
        .json(&json!({"item": {"@microsoft.graph.conflictBehavior": "replace", "fileSystemInfo": {"lastModifiedDateTime": mtime}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let url = r.json::<Value>().await.unwrap()["uploadUrl"]
        .as_str()
        .unwrap()
        .to_string();
    let mut start = 0;
    loop {
        let end = (start + FRAG).min(data.len());
        let r = emu
            .fragment(&url, start, data.len(), &data[start..end])
            .await;
        if end == data.len() {
            assert_eq!(r.status(), 201);
            return r.json().await.unwrap();
        }
        assert_eq!(r.status(), 202);
        start = end;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_session_login_resolve_upload_resume_delta() {
    let emu = start().await;
    let c = &emu.c;

    // Device code login, approved through the admin API.
    let v: Value = c
        .post(emu.url(&format!("/{TENANT}/oauth2/v2.0/devicecode")))
        .form(&[
            ("client_id", "sharepush"),
            (
                "scope",
                "Files.ReadWrite.All Sites.ReadWrite.All offline_access",
            ),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let device_code = v["device_code"].as_str().unwrap().to_string();
    let interval = v["interval"].as_u64().unwrap();
    let poll = || async {
        c.post(emu.h.token_url(TENANT))
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("client_id", "sharepush"),
                ("device_code", device_code.as_str()),
            ])
            .send()
            .await
            .unwrap()
    };
    admin(&emu, "clock", json!({"advance_secs": interval})).await;
    assert_eq!(oauth_err(poll().await).await.1, "authorization_pending");
    admin(&emu, "approve", json!({"user_code": v["user_code"]})).await;
    admin(&emu, "clock", json!({"advance_secs": interval})).await;
    let tokens: Value = poll().await.json().await.unwrap();
    let refresh_token = tokens["refresh_token"].as_str().unwrap();

    // Refresh: a new refresh token every time.
    let r = c
        .post(emu.h.token_url(TENANT))
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", "sharepush"),
            ("refresh_token", refresh_token),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let tokens: Value = r.json().await.unwrap();
    assert_ne!(tokens["refresh_token"].as_str().unwrap(), refresh_token);
    let at = tokens["access_token"].as_str().unwrap().to_string();

    // Site and library resolution.
    let site: Value = c
        .get(emu.graph("/sites/contoso.sharepoint.com:/sites/demo"))
        .bearer_auth(&at)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let drives: Value = c
        .get(emu.graph(&format!("/sites/{}/drives", site["id"].as_str().unwrap())))
        .bearer_auth(&at)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let drive = drives["value"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "Documents" && d["driveType"] == "documentLibrary")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Start delta from "latest".
    let latest: Value = c
        .get(emu.graph(&format!("/drives/{drive}/root/delta?token=latest")))
        .bearer_auth(&at)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let delta_link = latest["@odata.deltaLink"].as_str().unwrap().to_string();

    // A folder.
    let r = c
        .post(emu.graph(&format!("/drives/{drive}/root/children")))
        .bearer_auth(&at)
        .json(
            &json!({"name": "Backups", "folder": {}, "@microsoft.graph.conflictBehavior": "fail"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let folder: Value = r.json().await.unwrap();

    // A 0-byte file by simple PUT, then its mtime by PATCH.
    let r = c
        .put(emu.graph(&format!("/drives/{drive}/root:/Backups/empty.txt:/content")))
        .bearer_auth(&at)
        .body(Vec::new())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let empty: Value = r.json().await.unwrap();
    let r = c
        .patch(emu.graph(&format!(
            "/drives/{drive}/items/{}",
            empty["id"].as_str().unwrap()
        )))
        .bearer_auth(&at)
        .json(&json!({"fileSystemInfo": {"lastModifiedDateTime": "2026-01-01T00:00:00Z"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // A 1-byte and a 25 MiB file by upload session with 10 MiB fragments.
    let one = vec![0x4a];
    let one_item = session_upload(
        &emu,
        &at,
        &drive,
        "Backups/one.bin",
        &one,
        "2026-01-02T03:04:05Z",
    )
    .await;
    assert_eq!(
        one_item["file"]["hashes"]["quickXorHash"],
        "SgAAAAAAAAAAAAAAAQAAAAAAAAA="
    );
    let big = bytes(25 * MIB, 7);
    let big_item = session_upload(
        &emu,
        &at,
        &drive,
        "Backups/big.bin",
        &big,
        "2026-01-03T00:00:00Z",
    )
    .await;

    // A resumed session after a dropped fragment.
    let resumed = bytes(2 * FRAG + 12345, 11);
    let r = c
        .post(emu.graph(&format!(
            "/drives/{drive}/root:/Backups/resumed.bin:/createUploadSession"
        )))
        .bearer_auth(&at)
        .json(
            &json!({"item": {"fileSystemInfo": {"lastModifiedDateTime": "2026-01-04T00:00:00Z"}}}),
        )
        .send()
        .await
        .unwrap();
    let url = r.json::<Value>().await.unwrap()["uploadUrl"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        emu.fragment(&url, 0, resumed.len(), &resumed[..FRAG])
            .await
            .status(),
        202
    );
    admin(&emu, "faults", json!("upload:drop:count=1")).await;
    let dropped = c
        .put(&url)
        .header(
            "Content-Range",
            format!("bytes {FRAG}-{}/{}", 2 * FRAG - 1, resumed.len()),
        )
        .body(resumed[FRAG..2 * FRAG].to_vec())
        .send()
        .await;
    assert!(match dropped {
        Err(_) => true,
        Ok(r) => r.bytes().await.is_err(),
    });
    let status: Value = c.get(&url).send().await.unwrap().json().await.unwrap();
    let next: usize = status["nextExpectedRanges"][0]
        .as_str()
        .unwrap()
        .trim_end_matches('-')
        .parse()
        .unwrap();
    assert_eq!(next, FRAG, "the broken fragment was discarded");
    let mut start = next;
    let resumed_item = loop {
        let end = (start + FRAG).min(resumed.len());
        let r = emu
            .fragment(&url, start, resumed.len(), &resumed[start..end])
            .await;
        if end == resumed.len() {
            assert_eq!(r.status(), 201);
            break r.json::<Value>().await.unwrap();
        }
        assert_eq!(r.status(), 202);
        start = end;
    };

    // Delta from "latest" shows exactly those items.
    let mut url = delta_link;
    let mut ids = BTreeSet::new();
    loop {
        let v: Value = c
            .get(&url)
            .bearer_auth(&at)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for i in v["value"].as_array().unwrap() {
            assert!(i.get("deleted").is_none());
            ids.insert(i["id"].as_str().unwrap().to_string());
        }
        match v["@odata.nextLink"].as_str() {
            Some(n) => url = n.to_string(),
            None => break,
        }
    }
    let want: BTreeSet<String> = [&folder, &empty, &one_item, &big_item, &resumed_item]
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, want);

    // Byte for byte through the inspection API.
    let tree: Value = c
        .get(emu.url("/_emulator/tree"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let expect = json!([
        {"path": "Backups/big.bin", "size": big.len(), "quickXorHash": quick_xor_hash(&big), "lastModifiedDateTime": "2026-01-03T00:00:00Z"},
        {"path": "Backups/empty.txt", "size": 0, "quickXorHash": quick_xor_hash(b""), "lastModifiedDateTime": "2026-01-01T00:00:00Z"},
        {"path": "Backups/one.bin", "size": 1, "quickXorHash": quick_xor_hash(&one), "lastModifiedDateTime": "2026-01-02T03:04:05Z"},
        {"path": "Backups/resumed.bin", "size": resumed.len(), "quickXorHash": quick_xor_hash(&resumed), "lastModifiedDateTime": "2026-01-04T00:00:00Z"},
    ]);
    let got: Vec<Value> = tree
        .as_array()
        .unwrap()
        .iter()
        .map(|e| json!({"path": e["path"], "size": e["size"], "quickXorHash": e["quickXorHash"], "lastModifiedDateTime": e["lastModifiedDateTime"]}))
        .collect();
    assert_eq!(Value::Array(got), expect);
    assert_eq!(emu.h.read_file("Backups/big.bin").unwrap(), big);
    assert_eq!(emu.h.read_file("Backups/resumed.bin").unwrap(), resumed);
    assert_eq!(emu.h.read_file("Backups/one.bin").unwrap(), one);

    // The request log saw the drop (status 0) and no Graph failure.
    let log = emu.h.requests();
    assert_eq!(log.iter().filter(|r| r.status == 0).count(), 1);
    assert!(
        log.iter()
            .filter(|r| r.route == "graph")
            .all(|r| r.status < 400)
    );
}
