//! graph-api.md §3 "Upload sessions": every rule, one test each.

use crate::common::*;
use graph_emulator::Options;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn create_upload_session_reply_has_upload_url_expiry_and_ranges() {
    let emu = start().await;
    let r = emu.create_session_raw("s.bin", json!({"item": {}})).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(v["uploadUrl"].as_str().unwrap().starts_with(emu.h.url()));
    assert!(v["expirationDateTime"].as_str().unwrap().ends_with('Z'));
    assert_eq!(v["nextExpectedRanges"], json!(["0-"]));
}

#[tokio::test]
async fn create_upload_session_default_conflict_is_fail_409() {
    let emu = start().await;
    emu.put("exists.bin", b"x").await;
    let (status, code, _) = graph_err(emu.create_session_raw("exists.bin", json!({})).await).await;
    assert_eq!((status, code.as_str()), (409, "nameAlreadyExists"));
    let r = emu
        .create_session_raw(
            "exists.bin",
            json!({"item": {"@name.conflictBehavior": "replace"}}),
        )
        .await;
    assert_eq!(
        r.status(),
        200,
        "older annotation name accepted (abraunegg)"
    );
}

#[tokio::test]
async fn create_upload_session_parent_must_exist_404() {
    let emu = start().await;
    let (status, code, _) =
        graph_err(emu.create_session_raw("missing/dir/f.bin", json!({})).await).await;
    assert_eq!((status, code.as_str()), (404, "itemNotFound"));
}

#[tokio::test]
async fn fragment_not_a_multiple_of_320_kib_is_416_fragment_length_mismatch() {
    let emu = start().await;
    let url = emu.session("f.bin").await;
    let (status, code, inner) =
        graph_err(emu.fragment(&url, 0, 2 * MIB, &vec![0; 1_000_000]).await).await;
    assert_eq!(
        (status, code.as_str(), inner.as_deref()),
        (416, "invalidRange", Some("fragmentLengthMismatch"))
    );
    // The last fragment may be any length.
    let data = bytes(K320 + 5, 1);
    assert_eq!(
        emu.fragment(&url, 0, data.len(), &data[..K320])
            .await
            .status(),
        202
    );
    assert_eq!(
        emu.fragment(&url, K320, data.len(), &data[K320..])
            .await
            .status(),
        201
    );
}

/// Send only the head of a fragment PUT declaring `len` bytes and read the
/// reply: the emulator answers before reading a body it refuses.
async fn head_only_put(url: &str, len: u64, range: &str) -> (u16, Value) {
    let u = url.strip_prefix("http://").unwrap();
    let (host, path) = u.split_at(u.find('/').unwrap());
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len}\r\nContent-Range: {range}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .unwrap()
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(i) = text.find("\r\n\r\n") {
            let cl: usize = text[..i]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= i + 4 + cl {
                let status = text[9..12].parse().unwrap();
                return (
                    status,
                    serde_json::from_slice(&buf[i + 4..i + 4 + cl]).unwrap(),
                );
            }
        }
    }
    panic!("no reply: {}", String::from_utf8_lossy(&buf));
}

#[tokio::test]
async fn fragment_of_60_mib_or_more_is_416_max_fragment_length_exceeded() {
    let emu = start().await;
    let url = emu.session("huge.bin").await;
    let len = 60 * MIB as u64;
    let (status, v) = head_only_put(&url, len, &format!("bytes 0-{}/{}", len - 1, 2 * len)).await;
    assert_eq!(status, 416);
    assert_eq!(v["error"]["code"], "invalidRange");
    assert_eq!(
        v["error"]["innererror"]["code"],
        "maxFragmentLengthExceeded"
    );
}

#[tokio::test]
async fn overlapping_fragment_is_416_fragment_overlap() {
    let emu = start().await;
    let data = bytes(3 * K320, 2);
    let url = emu.session("o.bin").await;
    assert_eq!(
        emu.fragment(&url, 0, data.len(), &data[..2 * K320])
            .await
            .status(),
        202
    );
    let (status, code, inner) = graph_err(
        emu.fragment(&url, K320, data.len(), &data[K320..2 * K320])
            .await,
    )
    .await;
    assert_eq!(
        (status, code.as_str(), inner.as_deref()),
        (416, "invalidRange", Some("fragmentOverlap"))
    );
}

#[tokio::test]
async fn out_of_order_fragment_is_416_fragment_out_of_order() {
    let emu = start().await;
    let data = bytes(3 * K320, 3);
    let url = emu.session("o.bin").await;
    let (status, code, inner) = graph_err(
        emu.fragment(&url, K320, data.len(), &data[K320..2 * K320])
            .await,
    )
    .await;
    assert_eq!(
        (status, code.as_str(), inner.as_deref()),
        (416, "invalidRange", Some("fragmentOutOfOrder"))
    );
}

#[tokio::test]
async fn content_range_not_matching_content_length_is_416_fragment_length_mismatch() {
    let emu = start().await;
    let url = emu.session("m.bin").await;
    let r = emu
        .c
        .put(&url)
        .header(
            "Content-Range",
            format!("bytes 0-{}/{}", 2 * K320 - 1, 4 * K320),
        )
        .body(vec![0u8; K320])
        .send()
        .await
        .unwrap();
    let (status, code, inner) = graph_err(r).await;
    assert_eq!(
        (status, code.as_str(), inner.as_deref()),
        (416, "invalidRange", Some("fragmentLengthMismatch"))
    );
}

#[tokio::test]
async fn total_must_be_identical_in_every_request() {
    let emu = start().await;
    let url = emu.session("t.bin").await;
    assert_eq!(
        emu.fragment(&url, 0, 3 * K320, &vec![1; K320])
            .await
            .status(),
        202
    );
    let (status, code, _) =
        graph_err(emu.fragment(&url, K320, 4 * K320, &vec![1; K320]).await).await;
    assert_eq!((status, code.as_str()), (400, "invalidRequest"));
}

#[tokio::test]
async fn intermediate_fragment_is_202_with_next_expected_ranges() {
    let emu = start().await;
    let url = emu.session("i.bin").await;
    let r = emu.fragment(&url, 0, 2 * K320, &vec![7; K320]).await;
    assert_eq!(r.status(), 202);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["nextExpectedRanges"], json!([format!("{K320}-")]));
    assert!(v["expirationDateTime"].is_string());
}

#[tokio::test]
async fn final_fragment_is_201_new_and_200_replaced_with_drive_item() {
    let emu = start().await;
    let data = bytes(K320 + 1, 4);
    let url = emu.session("n.bin").await;
    emu.fragment(&url, 0, data.len(), &data[..K320]).await;
    let r = emu.fragment(&url, K320, data.len(), &data[K320..]).await;
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["size"], data.len());
    assert_eq!(
        v["file"]["hashes"]["quickXorHash"],
        graph_emulator::quick_xor_hash(&data).as_str()
    );
    let url = emu.session("n.bin").await;
    let r = emu.fragment(&url, 0, 3, b"abc").await;
    assert_eq!(r.status(), 200);
    assert_eq!(emu.h.read_file("n.bin").unwrap(), b"abc");
}

#[tokio::test]
async fn resume_get_reports_next_expected_range() {
    let emu = start().await;
    let url = emu.session("g.bin").await;
    emu.fragment(&url, 0, 3 * K320, &vec![0; K320]).await;
    let r = emu.c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["nextExpectedRanges"], json!([format!("{K320}-")]));
}

#[tokio::test]
async fn cancel_delete_is_204_then_404() {
    let emu = start().await;
    let url = emu.session("d.bin").await;
    assert_eq!(emu.c.delete(&url).send().await.unwrap().status(), 204);
    let (status, code, _) = graph_err(emu.c.get(&url).send().await.unwrap()).await;
    assert_eq!((status, code.as_str()), (404, "itemNotFound"));
}

#[tokio::test]
async fn expired_session_is_404_item_not_found() {
    let emu = start().await;
    let url = emu.session("x.bin").await;
    emu.fragment(&url, 0, 2 * K320, &vec![0; K320]).await;
    emu.h.advance_clock(Duration::from_secs(15 * 60));
    let (status, code, _) =
        graph_err(emu.fragment(&url, K320, 2 * K320, &vec![0; K320]).await).await;
    assert_eq!((status, code.as_str()), (404, "itemNotFound"));
}

#[tokio::test]
async fn each_fragment_extends_the_expiration() {
    let emu = start().await;
    let url = emu.session("e.bin").await;
    emu.h.advance_clock(Duration::from_secs(10 * 60));
    assert_eq!(
        emu.fragment(&url, 0, 3 * K320, &vec![0; K320])
            .await
            .status(),
        202
    );
    emu.h.advance_clock(Duration::from_secs(10 * 60));
    assert_eq!(
        emu.fragment(&url, K320, 3 * K320, &vec![0; K320])
            .await
            .status(),
        202
    );
}

#[tokio::test]
async fn session_expiry_fault_makes_the_next_fragment_404() {
    let emu = start().await;
    let url = emu.session("e.bin").await;
    emu.h.add_faults("upload:expire-session:count=1").unwrap();
    let (status, code, _) = graph_err(emu.fragment(&url, 0, 3, b"abc").await).await;
    assert_eq!((status, code.as_str()), (404, "itemNotFound"));
}

#[tokio::test]
async fn authorization_header_on_upload_url_is_401_in_strict_mode() {
    let emu = start().await;
    let url = emu.session("a.bin").await;
    let r = emu
        .c
        .put(&url)
        .bearer_auth(&emu.token)
        .header("Content-Range", "bytes 0-2/3")
        .body("abc")
        .send()
        .await
        .unwrap();
    assert_eq!(graph_err(r).await.0, 401);
    let lenient = start_with(Options {
        strict: false,
        ..opts()
    })
    .await;
    let url = lenient.session("a.bin").await;
    let r = lenient
        .c
        .put(&url)
        .bearer_auth(&lenient.token)
        .header("Content-Range", "bytes 0-2/3")
        .body("abc")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}

#[tokio::test]
async fn upload_url_without_its_tempauth_is_401() {
    let emu = start().await;
    let url = emu.session("a.bin").await;
    let bare = url.split('?').next().unwrap();
    assert_eq!(emu.c.get(bare).send().await.unwrap().status(), 401);
}

#[tokio::test]
async fn zero_length_session_put_is_400() {
    let emu = start().await;
    let url = emu.session("z.bin").await;
    let r = emu
        .c
        .put(&url)
        .header("Content-Range", "bytes 0-0/0")
        .body(Vec::new())
        .send()
        .await
        .unwrap();
    let (status, code, _) = graph_err(r).await;
    assert_eq!((status, code.as_str()), (400, "invalidRequest"));
    let r = emu
        .c
        .put(&url)
        .header("Content-Range", "bytes */0")
        .body(Vec::new())
        .send()
        .await
        .unwrap();
    assert_eq!(graph_err(r).await.0, 400);
}

#[tokio::test]
async fn missing_content_range_is_400() {
    let emu = start().await;
    let url = emu.session("z.bin").await;
    let r = emu.c.put(&url).body("abc").send().await.unwrap();
    let (status, code, _) = graph_err(r).await;
    assert_eq!((status, code.as_str()), (400, "invalidRequest"));
}

#[tokio::test]
async fn session_file_system_info_is_stored_and_returned() {
    let emu = start().await;
    let r = emu
        .create_session_raw(
            "fs.bin",
            json!({"item": {"@microsoft.graph.conflictBehavior": "replace",
                "fileSystemInfo": {"lastModifiedDateTime": "2026-01-02T03:04:05Z", "createdDateTime": "2020-05-06T07:08:09Z"}}}),
        )
        .await;
    let url = r.json::<Value>().await.unwrap()["uploadUrl"]
        .as_str()
        .unwrap()
        .to_string();
    let v: Value = emu.fragment(&url, 0, 1, b"x").await.json().await.unwrap();
    assert_eq!(
        v["fileSystemInfo"]["lastModifiedDateTime"],
        "2026-01-02T03:04:05Z"
    );
    assert_eq!(
        v["fileSystemInfo"]["createdDateTime"],
        "2020-05-06T07:08:09Z"
    );
    assert_eq!(
        emu.get_json("/root:/fs.bin:").await["fileSystemInfo"]["lastModifiedDateTime"],
        "2026-01-02T03:04:05Z"
    );
}

#[tokio::test]
async fn name_conflict_at_commit_is_409() {
    let emu = start().await;
    let r = emu
        .create_session_raw(
            "late.bin",
            json!({"item": {"@microsoft.graph.conflictBehavior": "fail"}}),
        )
        .await;
    let url = r.json::<Value>().await.unwrap()["uploadUrl"]
        .as_str()
        .unwrap()
        .to_string();
    emu.put("late.bin", b"someone else").await;
    let (status, code, _) = graph_err(emu.fragment(&url, 0, 3, b"abc").await).await;
    assert_eq!((status, code.as_str()), (409, "nameAlreadyExists"));
    assert_eq!(emu.h.read_file("late.bin").unwrap(), b"someone else");
}

#[tokio::test]
async fn dropped_fragment_is_discarded_and_the_session_resumes() {
    let emu = start().await;
    let data = bytes(3 * K320, 5);
    let url = emu.session("drop.bin").await;
    assert_eq!(
        emu.fragment(&url, 0, data.len(), &data[..K320])
            .await
            .status(),
        202
    );
    emu.h.add_faults("upload:drop:count=1").unwrap();
    let r = emu
        .c
        .put(&url)
        .header(
            "Content-Range",
            format!("bytes {K320}-{}/{}", 2 * K320 - 1, data.len()),
        )
        .body(data[K320..2 * K320].to_vec())
        .send()
        .await;
    let broken = match r {
        Err(_) => true,
        Ok(resp) => resp.bytes().await.is_err(),
    };
    assert!(broken, "the connection must break");
    let v: Value = emu.c.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["nextExpectedRanges"], json!([format!("{K320}-")]));
    assert_eq!(
        emu.fragment(&url, K320, data.len(), &data[K320..2 * K320])
            .await
            .status(),
        202
    );
    assert_eq!(
        emu.fragment(&url, 2 * K320, data.len(), &data[2 * K320..])
            .await
            .status(),
        201
    );
    assert_eq!(emu.h.read_file("drop.bin").unwrap(), data);
}

#[tokio::test]
async fn transient_404_fault_on_upload_session_then_retry_succeeds() {
    let emu = start().await;
    let url = emu.session("t.bin").await;
    emu.h.add_faults("upload:404:count=1").unwrap();
    let (status, code, _) = graph_err(emu.fragment(&url, 0, 3, b"abc").await).await;
    assert_eq!((status, code.as_str()), (404, "itemNotFound"));
    assert_eq!(emu.fragment(&url, 0, 3, b"abc").await.status(), 201);
}

#[tokio::test]
async fn upload_session_by_parent_id_and_name() {
    let emu = start().await;
    let d: Value = emu.mkdir("", "p").await.json().await.unwrap();
    let r = emu
        .c
        .post(emu.drive_path(&format!(
            "/items/{}:/s.bin:/createUploadSession",
            d["id"].as_str().unwrap()
        )))
        .bearer_auth(&emu.token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let url = r.json::<Value>().await.unwrap()["uploadUrl"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(emu.fragment(&url, 0, 1, b"s").await.status(), 201);
    assert_eq!(emu.h.tree()[0].path, "p/s.bin");
}

#[tokio::test]
async fn lost_reply_to_a_fragment_then_retry_is_overlap_and_get_tells_where_to_go_on() {
    let emu = start().await;
    let data = bytes(2 * K320, 6);
    let url = emu.session("lost.bin").await;
    emu.h.add_faults("upload:drop-reply:count=1").unwrap();
    let lost = emu
        .c
        .put(&url)
        .header(
            "Content-Range",
            format!("bytes 0-{}/{}", K320 - 1, data.len()),
        )
        .body(data[..K320].to_vec())
        .send()
        .await;
    assert!(match lost {
        Err(_) => true,
        Ok(r) => r.bytes().await.is_err(),
    });
    let (status, _, inner) =
        graph_err(emu.fragment(&url, 0, data.len(), &data[..K320]).await).await;
    assert_eq!((status, inner.as_deref()), (416, Some("fragmentOverlap")));
    let v: Value = emu.c.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["nextExpectedRanges"], json!([format!("{K320}-")]));
    assert_eq!(
        emu.fragment(&url, K320, data.len(), &data[K320..])
            .await
            .status(),
        201
    );
    assert_eq!(emu.h.read_file("lost.bin").unwrap(), data);
}

#[tokio::test]
async fn refused_10_mib_fragment_still_gets_its_416_reply() {
    let emu = start().await;
    let url = emu.session("big.bin").await;
    let frag = vec![0u8; 10 * MIB];
    let (status, _, inner) = graph_err(emu.fragment(&url, 10 * MIB, 30 * MIB, &frag).await).await;
    assert_eq!(
        (status, inner.as_deref()),
        (416, Some("fragmentOutOfOrder"))
    );
    // A throttled fragment too: the client must see the 429, not a reset.
    emu.h.add_faults("upload:429:count=1").unwrap();
    assert_eq!(emu.fragment(&url, 0, 30 * MIB, &frag).await.status(), 429);
    assert_eq!(emu.fragment(&url, 0, 30 * MIB, &frag).await.status(), 202);
}

#[tokio::test]
async fn refused_simple_upload_body_still_gets_its_reply() {
    let mut emu = start().await;
    emu.token = "expired-or-bogus".into();
    let (status, code, _) = graph_err(emu.put("x.bin", &vec![0u8; 8 * MIB]).await).await;
    assert_eq!((status, code.as_str()), (401, "InvalidAuthenticationToken"));
}
