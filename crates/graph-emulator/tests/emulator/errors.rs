//! graph-api.md §7 (error shape, throttling, 5xx, 507) through faults and
//! limits, and the fault grammar end to end.

use crate::common::*;
use graph_emulator::Options;
use serde_json::Value;
use std::time::{Duration, Instant};

#[tokio::test]
async fn error_body_has_code_message_and_inner_error_with_date_and_request_id() {
    let emu = start().await;
    let r = emu.get("/root:/missing:").await;
    let v: Value = r.json().await.unwrap();
    let e = &v["error"];
    assert_eq!(e["code"], "itemNotFound");
    assert!(e["message"].is_string());
    assert!(e["innerError"]["date"].is_string());
    assert!(e["innerError"]["request-id"].is_string());
}

#[tokio::test]
async fn throttling_429_carries_retry_after_and_activity_limit_reached() {
    let emu = start().await;
    emu.h.add_faults("graph:429:retry-after=7:count=1").unwrap();
    let r = emu.get("/root").await;
    assert_eq!(r.headers()["retry-after"], "7");
    let (status, code, inner) = graph_err(r).await;
    assert_eq!(
        (status, code.as_str(), inner.as_deref()),
        (429, "activityLimitReached", Some("throttledRequest"))
    );
    emu.h.advance_clock(Duration::from_secs(7));
    assert_eq!(emu.get("/root").await.status(), 200, "count=1 fires once");
    assert_eq!(emu.h.throttle_violations(), 0);
}

#[tokio::test]
async fn requests_inside_a_retry_after_window_are_throttled_and_counted() {
    let emu = start().await;
    emu.h
        .add_faults("graph:429:retry-after=30:count=1")
        .unwrap();
    assert_eq!(emu.get("/root").await.status(), 429);
    // ANY further request to the tenant, not just the throttled route.
    let r = emu.create_session_raw("x.bin", serde_json::json!({})).await;
    assert_eq!(r.status(), 429);
    let r = emu.get("/root").await;
    assert_eq!(r.status(), 429);
    let left: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((29..=30).contains(&left), "{left}");
    assert_eq!(emu.h.throttle_violations(), 2);
    emu.h.advance_clock(Duration::from_secs(30));
    assert_eq!(emu.get("/root").await.status(), 200);
    let v: Value = emu
        .c
        .get(emu.url("/_emulator/throttle"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["violations"], 2);
    assert_eq!(v["throttled"], false);
}

#[tokio::test]
async fn throttling_429_without_retry_after() {
    let emu = start().await;
    emu.h.add_faults("graph:429:count=1").unwrap();
    let r = emu.get("/root").await;
    assert_eq!(r.status(), 429);
    assert!(!r.headers().contains_key("retry-after"));
}

#[tokio::test]
async fn service_unavailable_503_and_internal_error_500() {
    let emu = start().await;
    emu.h
        .add_faults("graph:503:retry-after=2:count=1,graph:500:count=1")
        .unwrap();
    let r = emu.get("/root").await;
    assert_eq!(r.headers()["retry-after"], "2");
    assert_eq!(graph_err(r).await.1, "serviceNotAvailable");
    emu.h.advance_clock(Duration::from_secs(2));
    assert_eq!(
        graph_err(emu.get("/root").await).await.1,
        "generalException"
    );
    assert_eq!(emu.get("/root").await.status(), 200);
}

#[tokio::test]
async fn quota_exhausted_is_507_quota_limit_reached() {
    let emu = start_with(Options {
        quota_bytes: 1000,
        ..opts()
    })
    .await;
    assert_eq!(emu.put("a.bin", &[0; 600]).await.status(), 201);
    let (status, code, _) = graph_err(emu.put("b.bin", &[0; 600]).await).await;
    assert_eq!((status, code.as_str()), (507, "quotaLimitReached"));
    let url = emu.session("c.bin").await;
    let (status, code, _) = graph_err(emu.fragment(&url, 0, 600, &[0; 600]).await).await;
    assert_eq!((status, code.as_str()), (507, "quotaLimitReached"));
    // Replacing within the quota is fine.
    assert_eq!(emu.put("a.bin", &[0; 900]).await.status(), 200);
    let quota = emu.get_json("").await["quota"].clone();
    assert_eq!(quota["used"], 900, "{quota}");
    // Deleting gives the space back.
    let r = emu
        .c
        .delete(emu.drive_path("/root:/a.bin"))
        .bearer_auth(&emu.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(emu.get_json("").await["quota"]["used"], 0);
    assert_eq!(emu.put("b.bin", &[0; 600]).await.status(), 201);
}

#[tokio::test]
async fn quota_fault_507_on_demand() {
    let emu = start().await;
    emu.h.add_faults("upload:507:count=1").unwrap();
    let url = emu.session("q.bin").await;
    let (status, code, _) = graph_err(emu.fragment(&url, 0, 1, b"q").await).await;
    assert_eq!((status, code.as_str()), (507, "quotaLimitReached"));
}

#[tokio::test]
async fn token_endpoint_faults_use_the_oauth_error_shape() {
    let emu = start().await;
    emu.h.add_faults("token:503:retry-after=1:count=1").unwrap();
    let r = emu
        .token_form(&[("grant_type", "client_credentials")])
        .await;
    assert_eq!(r.headers()["retry-after"], "1");
    let (status, error, body) = oauth_err(r).await;
    assert_eq!((status, error.as_str()), (503, "temporarily_unavailable"));
    assert!(body["error_codes"].is_array());
}

#[tokio::test]
async fn html_fault_answers_200_with_a_page_instead_of_a_token() {
    let emu = start().await;
    emu.h.add_faults("token:html:count=1").unwrap();
    let r = emu
        .token_form(&[("grant_type", "client_credentials")])
        .await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(r.text().await.unwrap().contains("<html>"));
    assert_eq!(emu.h.requests().last().map(|r| r.status), Some(200));
    assert!(
        emu.h.add_faults("token:htm").is_err(),
        "unknown kinds are refused"
    );
}

#[tokio::test]
async fn latency_fault_delays_matching_requests() {
    let emu = start().await;
    emu.h.add_faults("graph:latency:ms=150:count=1").unwrap();
    let t = Instant::now();
    assert_eq!(emu.get("/root").await.status(), 200);
    assert!(t.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn dropped_connection_fault_breaks_a_graph_reply() {
    let emu = start().await;
    emu.h.add_faults("graph:drop:count=1").unwrap();
    let broken = match emu
        .c
        .get(emu.drive_path("/root"))
        .bearer_auth(&emu.token)
        .send()
        .await
    {
        Err(_) => true,
        Ok(r) => r.bytes().await.is_err(),
    };
    assert!(broken);
    assert_eq!(emu.get("/root").await.status(), 200);
    assert!(emu.h.requests().iter().any(|r| r.status == 0));
}

#[tokio::test]
async fn rate_faults_replay_with_the_same_seed() {
    let mut runs = Vec::new();
    for _ in 0..2 {
        let emu = start_with(Options {
            faults: Some("seed=42,graph:503:rate=0.5".into()),
            ..opts()
        })
        .await;
        let mut statuses = Vec::new();
        for _ in 0..20 {
            statuses.push(emu.get("/root").await.status().as_u16());
        }
        runs.push(statuses);
    }
    assert_eq!(runs[0], runs[1]);
    assert!(runs[0].contains(&503) && runs[0].contains(&200));
}

#[tokio::test]
async fn fault_after_lets_requests_through_first() {
    let emu = start().await;
    emu.h.add_faults("graph:500:after=2:count=1").unwrap();
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(emu.get("/root").await.status().as_u16());
    }
    assert_eq!(got, [200, 200, 500, 200]);
}
