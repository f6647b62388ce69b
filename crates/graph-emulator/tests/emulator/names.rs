//! graph-api.md §8: names and paths SharePoint refuses.

use crate::common::*;
use serde_json::json;

async fn refused(emu: &Emu, encoded_path: &str) -> (u16, String, Option<String>) {
    graph_err(emu.put(encoded_path, b"x").await).await
}

#[tokio::test]
async fn forbidden_characters_are_400_invalid_path() {
    let emu = start().await;
    for enc in [
        "a%22b", "a*b", "a%3Ab", "a%3Cb", "a%3Eb", "a%3Fb", "a%5Cb", "a%7Cb",
    ] {
        let (status, code, inner) = refused(&emu, enc).await;
        assert_eq!(
            (status, code.as_str(), inner.as_deref()),
            (400, "invalidRequest", Some("invalidPath")),
            "{enc}"
        );
    }
    // rclone's full-width look-alikes are fine.
    assert_eq!(emu.put("%EF%BC%9Fq", b"x").await.status(), 201);
}

#[tokio::test]
async fn leading_or_trailing_space_and_trailing_dot_are_400_invalid_path() {
    let emu = start().await;
    for enc in ["%20lead", "trail%20", "dot."] {
        let (status, _, inner) = refused(&emu, enc).await;
        assert_eq!(
            (status, inner.as_deref()),
            (400, Some("invalidPath")),
            "{enc}"
        );
    }
}

#[tokio::test]
async fn reserved_names_are_400_invalid_path() {
    let emu = start().await;
    for name in [
        ".lock",
        "CON",
        "prn.txt",
        "AUX",
        "NUL.log",
        "COM0",
        "com9",
        "LPT0",
        "lpt9.txt",
        "desktop.ini",
        "~$doc.docx",
        "x_vti_y",
    ] {
        let (status, _, inner) = refused(&emu, name).await;
        assert_eq!(
            (status, inner.as_deref()),
            (400, Some("invalidPath")),
            "{name}"
        );
    }
    assert!(emu.h.tree().is_empty());
}

#[tokio::test]
async fn folder_named_forms_at_library_root_is_400_invalid_path() {
    let emu = start().await;
    let (status, _, inner) = graph_err(emu.mkdir("", "Forms").await).await;
    assert_eq!((status, inner.as_deref()), (400, Some("invalidPath")));
    emu.mkdir("", "sub").await;
    assert_eq!(emu.mkdir("sub", "forms").await.status(), 201);
}

#[tokio::test]
async fn refused_names_apply_to_sessions_and_renames() {
    let emu = start().await;
    let (status, _, inner) = graph_err(emu.create_session_raw("CON.bin", json!({})).await).await;
    assert_eq!((status, inner.as_deref()), (400, Some("invalidPath")));
    emu.put("ok.txt", b"x").await;
    let r = emu
        .c
        .patch(emu.drive_path("/root:/ok.txt:"))
        .bearer_auth(&emu.token)
        .json(&json!({"name": "bad|name"}))
        .send()
        .await
        .unwrap();
    let (status, _, inner) = graph_err(r).await;
    assert_eq!((status, inner.as_deref()), (400, Some("invalidPath")));
}

#[tokio::test]
async fn path_of_400_characters_is_400_path_is_too_long() {
    let emu = start().await;
    // "/sites/demo/Shared Documents/" is 29 characters.
    let prefix = "/sites/demo/Shared Documents/".len();
    let ok = "a".repeat(399 - prefix);
    assert_eq!(emu.put(&ok, b"x").await.status(), 201);
    let long = "b".repeat(400 - prefix);
    let (status, code, inner) = refused(&emu, &long).await;
    assert_eq!(
        (status, code.as_str(), inner.as_deref()),
        (400, "invalidRequest", Some("pathIsTooLong"))
    );
}
