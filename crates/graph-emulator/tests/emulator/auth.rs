//! graph-api.md §1: the token service.

use crate::common::*;
use graph_emulator::Options;
use serde_json::Value;
use std::time::Duration;

const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
const SCOPE: &str = "Files.ReadWrite.All Sites.ReadWrite.All offline_access";

async fn device_code(emu: &Emu, scope: &str) -> (String, String, Value) {
    let r = emu
        .c
        .post(emu.url(&format!("/{TENANT}/oauth2/v2.0/devicecode")))
        .form(&[("client_id", "cli"), ("scope", scope)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    (
        v["device_code"].as_str().unwrap().to_string(),
        v["user_code"].as_str().unwrap().to_string(),
        v,
    )
}

async fn poll(emu: &Emu, device_code: &str) -> reqwest::Response {
    emu.token_form(&[
        ("grant_type", DEVICE_GRANT),
        ("client_id", "cli"),
        ("device_code", device_code),
    ])
    .await
}

/// Approve, wait the interval, redeem: the tokens.
async fn login(emu: &Emu, scope: &str) -> Value {
    let (dc, uc, _) = device_code(emu, scope).await;
    assert!(emu.h.approve(&uc));
    emu.h.advance_clock(Duration::from_secs(5));
    let r = poll(emu, &dc).await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn refresh(emu: &Emu, rt: &str) -> reqwest::Response {
    emu.token_form(&[
        ("grant_type", "refresh_token"),
        ("client_id", "cli"),
        ("refresh_token", rt),
    ])
    .await
}

#[tokio::test]
async fn device_code_reply_has_documented_fields() {
    let emu = start().await;
    let (_, uc, v) = device_code(&emu, SCOPE).await;
    assert_eq!(v["verification_uri"], "https://microsoft.com/devicelogin");
    assert_eq!(v["expires_in"], 900);
    assert_eq!(v["interval"], 5);
    assert!(v["message"].as_str().unwrap().contains(&uc));
    assert!(v.get("verification_uri_complete").is_none());
}

#[tokio::test]
async fn device_code_poll_before_approval_is_authorization_pending() {
    let emu = start().await;
    let (dc, _, _) = device_code(&emu, SCOPE).await;
    emu.h.advance_clock(Duration::from_secs(5));
    let (status, error, v) = oauth_err(poll(&emu, &dc).await).await;
    assert_eq!((status, error.as_str()), (400, "authorization_pending"));
    for key in [
        "error_description",
        "timestamp",
        "trace_id",
        "correlation_id",
    ] {
        assert!(v[key].is_string(), "{key} in {v}");
    }
    assert!(v["error_codes"][0].is_u64());
}

#[tokio::test]
async fn device_code_polled_faster_than_interval_is_slow_down_and_adds_5s() {
    let emu = start().await;
    let (dc, uc, _) = device_code(&emu, SCOPE).await;
    emu.h.approve(&uc);
    let (status, error, _) = oauth_err(poll(&emu, &dc).await).await;
    assert_eq!((status, error.as_str()), (400, "slow_down"));
    // The interval is now 10 s: 5 s later is still too fast.
    emu.h.advance_clock(Duration::from_secs(5));
    assert_eq!(oauth_err(poll(&emu, &dc).await).await.1, "slow_down");
    emu.h.advance_clock(Duration::from_secs(15));
    assert_eq!(poll(&emu, &dc).await.status(), 200);
}

#[tokio::test]
async fn device_code_after_expiry_is_expired_token() {
    let emu = start().await;
    let (dc, uc, _) = device_code(&emu, SCOPE).await;
    emu.h.approve(&uc);
    emu.h.advance_clock(Duration::from_secs(900));
    let (status, error, _) = oauth_err(poll(&emu, &dc).await).await;
    assert_eq!((status, error.as_str()), (400, "expired_token"));
}

#[tokio::test]
async fn device_code_declined_is_authorization_declined() {
    let emu = start().await;
    let (dc, uc, _) = device_code(&emu, SCOPE).await;
    let r = emu
        .c
        .post(emu.url("/_emulator/decline"))
        .json(&serde_json::json!({"user_code": uc}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    emu.h.advance_clock(Duration::from_secs(5));
    let (status, error, _) = oauth_err(poll(&emu, &dc).await).await;
    assert_eq!((status, error.as_str()), (400, "authorization_declined"));
}

#[tokio::test]
async fn unknown_device_code_is_bad_verification_code() {
    let emu = start().await;
    let (status, error, _) = oauth_err(poll(&emu, "not-a-code").await).await;
    assert_eq!((status, error.as_str()), (400, "bad_verification_code"));
}

#[tokio::test]
async fn device_code_approved_returns_bearer_and_refresh_token() {
    let emu = start().await;
    let v = login(&emu, SCOPE).await;
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["expires_in"], 3599);
    assert!(v["ext_expires_in"].is_u64());
    assert!(v["scope"].as_str().unwrap().contains("Files.ReadWrite.All"));
    assert!(v["refresh_token"].is_string());
    let at = v["access_token"].as_str().unwrap();
    let r = emu
        .c
        .get(emu.drive_path("/root"))
        .bearer_auth(at)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn device_code_without_offline_access_has_no_refresh_token() {
    let emu = start().await;
    let v = login(&emu, "Files.ReadWrite.All").await;
    assert!(v.get("refresh_token").is_none());
}

#[tokio::test]
async fn refresh_token_rotates_on_every_use() {
    let emu = start().await;
    let v = login(&emu, SCOPE).await;
    let rt1 = v["refresh_token"].as_str().unwrap().to_string();
    let r = refresh(&emu, &rt1).await;
    assert_eq!(r.status(), 200);
    let v2: Value = r.json().await.unwrap();
    let rt2 = v2["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(rt1, rt2);
    assert!(v2["access_token"].is_string());
    // The new one works in turn.
    assert_eq!(refresh(&emu, &rt2).await.status(), 200);
}

/// The strict side by default: a client must never depend on the service
/// tolerating an old refresh token for a while.
#[tokio::test]
async fn old_refresh_token_is_invalid_grant_by_default() {
    let emu = start().await;
    let v = login(&emu, SCOPE).await;
    let rt1 = v["refresh_token"].as_str().unwrap().to_string();
    assert_eq!(refresh(&emu, &rt1).await.status(), 200);
    let (status, error, _) = oauth_err(refresh(&emu, &rt1).await).await;
    assert_eq!((status, error.as_str()), (400, "invalid_grant"));
}

/// `--allow-refresh-token-reuse`: the service's tolerance, for trying
/// clients that still rely on it.
#[tokio::test]
async fn old_refresh_token_still_works_when_reuse_is_allowed() {
    let emu = start_with(Options {
        invalidate_old_refresh_tokens: false,
        ..opts()
    })
    .await;
    let v = login(&emu, SCOPE).await;
    let rt1 = v["refresh_token"].as_str().unwrap().to_string();
    assert_eq!(refresh(&emu, &rt1).await.status(), 200);
    assert_eq!(refresh(&emu, &rt1).await.status(), 200);
}

#[tokio::test]
async fn revoked_refresh_token_is_invalid_grant_aadsts70008() {
    let emu = start().await;
    let v = login(&emu, SCOPE).await;
    let rt = v["refresh_token"].as_str().unwrap();
    let r = emu
        .c
        .post(emu.url("/_emulator/revoke"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (status, error, body) = oauth_err(refresh(&emu, rt).await).await;
    assert_eq!((status, error.as_str()), (400, "invalid_grant"));
    assert_eq!(body["error_codes"], serde_json::json!([70008]));
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .starts_with("AADSTS70008:")
    );
    for key in ["timestamp", "trace_id", "correlation_id"] {
        assert!(body[key].is_string(), "{key}");
    }
}

#[tokio::test]
async fn refresh_with_wider_scope_is_invalid_grant_consent_required() {
    let emu = start().await;
    let v = login(&emu, "Files.Read.All offline_access").await;
    let rt = v["refresh_token"].as_str().unwrap();
    let r = emu
        .token_form(&[
            ("grant_type", "refresh_token"),
            ("client_id", "cli"),
            ("refresh_token", rt),
            ("scope", "Files.ReadWrite.All"),
        ])
        .await;
    let (status, error, body) = oauth_err(r).await;
    assert_eq!((status, error.as_str()), (400, "invalid_grant"));
    assert_eq!(body["suberror"], "consent_required");
}

#[tokio::test]
async fn refresh_token_expires_after_90_days_of_inactivity() {
    let emu = start().await;
    let v = login(&emu, SCOPE).await;
    let rt = v["refresh_token"].as_str().unwrap();
    emu.h.advance_clock(Duration::from_secs(91 * 24 * 3600));
    let (status, error, body) = oauth_err(refresh(&emu, rt).await).await;
    assert_eq!((status, error.as_str()), (400, "invalid_grant"));
    assert_eq!(body["error_codes"], serde_json::json!([700082]));
}

#[tokio::test]
async fn client_credentials_with_secret_has_no_refresh_token() {
    let emu = start().await;
    let r = emu
        .token_form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "app"),
            ("client_secret", "emulator-secret"),
            ("scope", "https://graph.microsoft.com/.default"),
        ])
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["token_type"], "Bearer");
    assert!(v["expires_in"].is_u64());
    assert!(v.get("refresh_token").is_none());
}

#[tokio::test]
async fn client_credentials_secret_via_http_basic() {
    let emu = start().await;
    let r = emu
        .c
        .post(emu.h.token_url(TENANT))
        .basic_auth("app", Some("emulator-secret"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "https://graph.microsoft.com/.default"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn client_credentials_wrong_secret_is_401_invalid_client() {
    let emu = start().await;
    let r = emu
        .token_form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "app"),
            ("client_secret", "wrong"),
            ("scope", "https://graph.microsoft.com/.default"),
        ])
        .await;
    let (status, error, body) = oauth_err(r).await;
    assert_eq!((status, error.as_str()), (401, "invalid_client"));
    assert_eq!(body["error_codes"], serde_json::json!([7000215]));
}

#[tokio::test]
async fn client_credentials_needs_a_tenant_not_common() {
    let emu = start().await;
    let r = emu
        .c
        .post(emu.h.token_url("common"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "app"),
            ("client_secret", "emulator-secret"),
            ("scope", "https://graph.microsoft.com/.default"),
        ])
        .send()
        .await
        .unwrap();
    let (status, error, _) = oauth_err(r).await;
    assert_eq!((status, error.as_str()), (400, "invalid_request"));
}

#[tokio::test]
async fn client_credentials_scope_must_be_dot_default() {
    let emu = start().await;
    let r = emu
        .token_form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "app"),
            ("client_secret", "emulator-secret"),
            ("scope", "https://graph.microsoft.com/Files.ReadWrite.All"),
        ])
        .await;
    let (status, error, _) = oauth_err(r).await;
    assert_eq!((status, error.as_str()), (400, "invalid_scope"));
}

#[tokio::test]
async fn client_id_restriction_refuses_other_apps() {
    let emu = start_with(Options {
        client_id: Some("only-me".into()),
        ..opts()
    })
    .await;
    let r = emu
        .c
        .post(emu.h.token_url(TENANT))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "someone-else"),
            ("client_secret", "emulator-secret"),
            ("scope", "https://graph.microsoft.com/.default"),
        ])
        .send()
        .await
        .unwrap();
    let (status, error, _) = oauth_err(r).await;
    assert_eq!((status, error.as_str()), (400, "unauthorized_client"));
}

#[tokio::test]
async fn unknown_tenant_is_refused() {
    let emu = start().await;
    let r = emu
        .c
        .post(emu.h.token_url("fabrikam.onmicrosoft.com"))
        .form(&[("grant_type", "client_credentials"), ("client_id", "app")])
        .send()
        .await
        .unwrap();
    let (status, error, _) = oauth_err(r).await;
    assert_eq!((status, error.as_str()), (400, "invalid_request"));
}

#[tokio::test]
async fn unsupported_grant_type_is_refused() {
    let emu = start().await;
    let r = emu
        .token_form(&[("grant_type", "password"), ("client_id", "app")])
        .await;
    let (status, error, _) = oauth_err(r).await;
    assert_eq!((status, error.as_str()), (400, "unsupported_grant_type"));
}

#[tokio::test]
async fn access_token_expired_is_401_invalid_authentication_token() {
    let emu = start_with(Options {
        token_lifetime: Duration::from_secs(1),
        ..opts()
    })
    .await;
    assert_eq!(emu.get("/root").await.status(), 200);
    emu.h.advance_clock(Duration::from_secs(2));
    let r = emu.get("/root").await;
    assert!(r.headers().contains_key("www-authenticate"));
    let (status, code, _) = graph_err(r).await;
    assert_eq!((status, code.as_str()), (401, "InvalidAuthenticationToken"));
}

#[tokio::test]
async fn missing_bearer_is_401_invalid_authentication_token() {
    let emu = start().await;
    let r = emu.c.get(emu.drive_path("/root")).send().await.unwrap();
    let (status, code, _) = graph_err(r).await;
    assert_eq!((status, code.as_str()), (401, "InvalidAuthenticationToken"));
}

#[tokio::test]
async fn invalid_bearer_is_401_invalid_authentication_token() {
    let emu = start().await;
    let r = emu
        .c
        .get(emu.drive_path("/root"))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    let (status, code, _) = graph_err(r).await;
    assert_eq!((status, code.as_str()), (401, "InvalidAuthenticationToken"));
}

#[tokio::test]
async fn read_only_token_cannot_write_403_access_denied() {
    let mut emu = start().await;
    let v = login(&emu, "Files.Read.All").await;
    emu.token = v["access_token"].as_str().unwrap().to_string();
    assert_eq!(emu.get("/root").await.status(), 200);
    let (status, code, _) = graph_err(emu.put("a.txt", b"x").await).await;
    assert_eq!((status, code.as_str()), (403, "accessDenied"));
}

#[tokio::test]
async fn expire_token_fault_gives_401_then_a_new_token_works() {
    let mut emu = start().await;
    emu.h.add_faults("graph:expire-token:count=1").unwrap();
    let (status, code, _) = graph_err(emu.get("/root").await).await;
    assert_eq!((status, code.as_str()), (401, "InvalidAuthenticationToken"));
    emu.token = emu.app_token().await;
    assert_eq!(emu.get("/root").await.status(), 200);
}
