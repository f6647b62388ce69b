//! graph-api.md §6: delta.

use crate::common::*;
use serde_json::Value;

async fn delta_all(emu: &Emu, start_url: &str) -> (Vec<Value>, String, usize) {
    let mut url = start_url.to_string();
    let mut items = Vec::new();
    let mut pages = 0;
    loop {
        let r = emu
            .c
            .get(&url)
            .bearer_auth(&emu.token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{url}");
        let v: Value = r.json().await.unwrap();
        pages += 1;
        items.extend(v["value"].as_array().unwrap().iter().cloned());
        if let Some(next) = v["@odata.nextLink"].as_str() {
            assert!(v.get("@odata.deltaLink").is_none());
            url = next.to_string();
            continue;
        }
        let link = v["@odata.deltaLink"]
            .as_str()
            .expect("last page carries a deltaLink");
        assert!(link.starts_with(emu.h.url()));
        return (items, link.to_string(), pages);
    }
}

async fn latest(emu: &Emu) -> String {
    let v = emu.get_json("/root/delta?token=latest").await;
    assert_eq!(v["value"].as_array().unwrap().len(), 0);
    v["@odata.deltaLink"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn delta_token_latest_returns_no_items_and_a_delta_link() {
    let emu = start().await;
    emu.put("before.txt", b"x").await;
    let link = latest(&emu).await;
    assert!(link.contains("token="));
    let (items, _, _) = delta_all(&emu, &link).await;
    assert!(items.is_empty());
}

#[tokio::test]
async fn delta_full_enumeration_pages_with_next_link_then_delta_link() {
    let emu = start().await;
    emu.mkdir("", "d").await;
    for i in 0..5 {
        emu.put(&format!("d/f{i}.txt"), b"x").await;
    }
    let (items, _, pages) =
        delta_all(&emu, &format!("{}?$top=2", emu.drive_path("/root/delta"))).await;
    assert_eq!(pages, 4);
    assert_eq!(items.len(), 7, "root, folder, five files");
    assert!(items[0].get("root").is_some(), "parents come first");
    assert_eq!(items[1]["name"], "d");
}

#[tokio::test]
async fn delta_items_have_no_path_in_parent_reference() {
    let emu = start().await;
    let link = latest(&emu).await;
    emu.mkdir("", "p").await;
    emu.put("p/x.txt", b"x").await;
    let (items, _, _) = delta_all(&emu, &link).await;
    assert_eq!(items.len(), 2);
    for i in &items {
        assert!(i["parentReference"]["id"].is_string());
        assert!(i["parentReference"].get("path").is_none(), "{i}");
    }
}

#[tokio::test]
async fn delta_reports_deleted_items_with_deleted_facet_and_no_name() {
    let emu = start().await;
    let f: Value = emu.put("bye.txt", b"x").await.json().await.unwrap();
    let link = latest(&emu).await;
    emu.c
        .delete(emu.drive_path("/root:/bye.txt:"))
        .bearer_auth(&emu.token)
        .send()
        .await
        .unwrap();
    let (items, next_link, _) = delta_all(&emu, &link).await;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["id"], f["id"]);
    assert!(items[0]["deleted"].is_object());
    assert!(items[0].get("name").is_none());
    let (items, _, _) = delta_all(&emu, &next_link).await;
    assert!(items.is_empty(), "nothing changed since");
}

#[tokio::test]
async fn delta_shows_latest_state_once_per_change_window() {
    let emu = start().await;
    let link = latest(&emu).await;
    emu.put("v.txt", b"1").await;
    emu.put("v.txt", b"22").await;
    let (items, _, _) = delta_all(&emu, &link).await;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["size"], 2);
}

#[tokio::test]
async fn delta_on_a_non_root_folder_is_400() {
    let emu = start().await;
    emu.mkdir("", "sub").await;
    let (status, code, _) = graph_err(emu.get("/root:/sub:/delta").await).await;
    assert_eq!((status, code.as_str()), (400, "invalidRequest"));
}

#[tokio::test]
async fn delta_resync_on_demand_is_410_resync_required_with_location() {
    let emu = start().await;
    let link = latest(&emu).await;
    emu.h.add_faults("delta:410:count=1").unwrap();
    let r = emu
        .c
        .get(&link)
        .bearer_auth(&emu.token)
        .send()
        .await
        .unwrap();
    assert!(r.headers().contains_key("location"));
    let (status, code, inner) = graph_err(r).await;
    assert_eq!(
        (status, code.as_str(), inner.as_deref()),
        (410, "resyncRequired", Some("resyncChangesApplyDifferences"))
    );
    assert_eq!(
        emu.c
            .get(&link)
            .bearer_auth(&emu.token)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn delta_with_an_invalid_token_is_410_resync_required() {
    let emu = start().await;
    let (status, code, _) = graph_err(emu.get("/root/delta?token=bogus").await).await;
    assert_eq!((status, code.as_str()), (410, "resyncRequired"));
}

#[tokio::test]
async fn delta_token_from_before_a_reset_is_410() {
    let emu = start().await;
    let link = latest(&emu).await;
    emu.h.reset(false);
    let r = emu
        .c
        .get(&link)
        .bearer_auth(&emu.token)
        .send()
        .await
        .unwrap();
    assert_eq!(graph_err(r).await.0, 410);
}

#[tokio::test]
async fn delta_reports_moves_by_id() {
    let emu = start().await;
    let dir: Value = emu.mkdir("", "to").await.json().await.unwrap();
    let f: Value = emu.put("m.txt", b"x").await.json().await.unwrap();
    let link = latest(&emu).await;
    emu.c
        .patch(emu.drive_path(&format!("/items/{}", f["id"].as_str().unwrap())))
        .bearer_auth(&emu.token)
        .json(&serde_json::json!({"parentReference": {"id": dir["id"]}}))
        .send()
        .await
        .unwrap();
    let (items, _, _) = delta_all(&emu, &link).await;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["parentReference"]["id"], dir["id"]);
}
