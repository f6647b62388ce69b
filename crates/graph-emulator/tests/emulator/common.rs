//! Fixtures: start an emulator, get a token, small request helpers.

#![allow(dead_code)]

use graph_emulator::{Handle, Options};
use reqwest::{Client, Response};
use serde_json::{Value, json};
use std::time::Duration;

pub const TENANT: &str = "contoso.onmicrosoft.com";
pub const MIB: usize = 1024 * 1024;
pub const K320: usize = 320 * 1024;

/// A running emulator, a client and an app-only token.
pub struct Emu {
    pub h: Handle,
    pub c: Client,
    pub token: String,
    pub drive: String,
    pub client_id: String,
}

pub fn opts() -> Options {
    Options::default()
}

pub async fn start() -> Emu {
    start_with(opts()).await
}

/// A reqwest client builder that works whether or not the workspace build
/// turned on reqwest's rustls (without a provider): installs ring first.
pub fn client_builder() -> reqwest::ClientBuilder {
    // Err only means a provider is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::builder()
}

pub async fn start_with(opts: Options) -> Emu {
    let opts_client = opts.client_id.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let h = graph_emulator::serve(listener, opts, std::future::pending())
        .await
        .unwrap();
    let c = client_builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let client_id = opts_client.unwrap_or_else(|| "app".into());
    let drive = h.drive_id();
    let mut emu = Emu {
        h,
        c,
        token: String::new(),
        drive,
        client_id,
    };
    emu.token = emu.app_token().await;
    emu
}

impl Emu {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.h.url())
    }

    pub fn graph(&self, path: &str) -> String {
        format!("{}/v1.0{path}", self.h.url())
    }

    pub fn drive_path(&self, rest: &str) -> String {
        self.graph(&format!("/drives/{}{rest}", self.drive))
    }

    pub async fn app_token(&self) -> String {
        let r = self
            .c
            .post(self.h.token_url(TENANT))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", self.client_id.as_str()),
                ("client_secret", "emulator-secret"),
                ("scope", "https://graph.microsoft.com/.default"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        v["access_token"].as_str().unwrap().to_string()
    }

    pub async fn token_form(&self, form: &[(&str, &str)]) -> Response {
        self.c
            .post(self.h.token_url(TENANT))
            .form(form)
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str) -> Response {
        self.c
            .get(self.drive_path(path))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let r = self.get(path).await;
        assert_eq!(r.status(), 200, "GET {path}");
        r.json().await.unwrap()
    }

    /// Simple upload to `root:/{path}:/content`.
    pub async fn put(&self, path: &str, bytes: &[u8]) -> Response {
        self.c
            .put(self.drive_path(&format!("/root:/{path}:/content")))
            .bearer_auth(&self.token)
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap()
    }

    pub async fn mkdir(&self, parent_path: &str, name: &str) -> Response {
        let url = if parent_path.is_empty() {
            self.drive_path("/root/children")
        } else {
            self.drive_path(&format!("/root:/{parent_path}:/children"))
        };
        self.c
            .post(url)
            .bearer_auth(&self.token)
            .json(&json!({"name": name, "folder": {}, "@microsoft.graph.conflictBehavior": "fail"}))
            .send()
            .await
            .unwrap()
    }

    pub async fn create_session_raw(&self, path: &str, body: Value) -> Response {
        self.c
            .post(self.drive_path(&format!("/root:/{path}:/createUploadSession")))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Create an upload session; returns the upload URL.
    pub async fn session(&self, path: &str) -> String {
        let r = self
            .create_session_raw(
                path,
                json!({"item": {"@microsoft.graph.conflictBehavior": "replace"}}),
            )
            .await;
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        v["uploadUrl"].as_str().unwrap().to_string()
    }

    /// PUT one fragment (no Authorization header).
    pub async fn fragment(&self, url: &str, start: usize, total: usize, bytes: &[u8]) -> Response {
        self.c
            .put(url)
            .header(
                "Content-Range",
                format!("bytes {start}-{}/{total}", start + bytes.len() - 1),
            )
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap()
    }

    /// Upload `data` through a session with fragments of `frag` bytes.
    pub async fn upload(&self, path: &str, data: &[u8], frag: usize) -> Value {
        let url = self.session(path).await;
        let mut start = 0;
        loop {
            let end = (start + frag).min(data.len());
            let r = self
                .fragment(&url, start, data.len(), &data[start..end])
                .await;
            if end == data.len() {
                assert!(
                    r.status() == 201 || r.status() == 200,
                    "final {}",
                    r.status()
                );
                return r.json().await.unwrap();
            }
            assert_eq!(r.status(), 202);
            start = end;
        }
    }
}

/// Status, top-level code and innermost code of a Graph error.
pub async fn graph_err(r: Response) -> (u16, String, Option<String>) {
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    let e = &v["error"];
    assert!(e["message"].is_string(), "error has a message: {v}");
    let inner = e
        .get("innerError")
        .or_else(|| e.get("innererror"))
        .expect("inner error present");
    assert!(
        inner["date"].is_string() && inner["request-id"].is_string(),
        "{v}"
    );
    (
        status,
        e["code"].as_str().unwrap().to_string(),
        inner
            .get("code")
            .and_then(Value::as_str)
            .map(str::to_string),
    )
}

/// Status and `error` of an OAuth error.
pub async fn oauth_err(r: Response) -> (u16, String, Value) {
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    (
        status,
        v["error"].as_str().unwrap_or_default().to_string(),
        v,
    )
}

/// Deterministic test content.
pub fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_right(13) as u8 ^ seed)
        .collect()
}
