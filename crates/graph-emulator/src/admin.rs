//! The admin and inspection API under `/_emulator/` (no auth, never faulted,
//! never logged), and the operations behind it that `Handle` also exposes.
//!
//! | route | does |
//! |---|---|
//! | `GET tree` | files of the default library: `{path, size, quickXorHash, lastModifiedDateTime, id}` |
//! | `GET requests` / `DELETE requests` | request log `{t_ms, t_start_ms, method, path, status, route, range}` / clear it |
//! | `GET counters` | `{route: {status: n}}` |
//! | `GET throttle` | `{throttled, until, violations}`: requests sent inside a Retry-After window |
//! | `GET faults` / `POST faults` / `DELETE faults` | list / add (spec as JSON string, `{"spec": ...}` or text) / clear |
//! | `POST approve` / `POST decline` | `{"user_code": ...}`: play the user of the device code flow |
//! | `GET user-codes` | device codes waiting for the user |
//! | `POST revoke` | revoke every refresh token |
//! | `POST login` | `{"client_id", "scope"}`: a signed-in user's token reply, without the device code flow |
//! | `POST expire` | `{"tokens": true, "sessions": true}`: expire now |
//! | `POST clock` | `{"advance_secs": N}`: move emulator time forward |
//! | `POST reset` | empty the libraries, drop sessions, faults and the log (`{"tokens": true}` also drops tokens) |
//! | `POST seed` | `{"drive"?, "folder", "files", "per_folder"?: 1000, "size"?: 0}`: create `folder/dNNNNN/fNNNNNNN.bin` straight in the store (benchmarks); `{"folder_id", "files"}` |
//! | `POST delete-library` | `{"site"?, "library"?}`: delete a library (its id then answers 404); `{"drive_id"}` |
//! | `POST recreate-library` | `{"site"?, "library"?}`: delete it and create it again, empty, with a new drive id; `{"old_drive_id", "drive_id"}` |
//! | `GET info` | authority, graph_url, tenant, site and drive ids |
//!
//! It does not touch Graph semantics; it only reads and resets state.

use crate::faults::FaultSpecError;
use crate::server::{Shared, lock};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// One file of the default library (`GET /_emulator/tree`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TreeEntry {
    /// Path relative to the library root, `/`-separated.
    pub path: String,
    /// Content length.
    pub size: u64,
    /// Base64 quickXorHash.
    #[serde(rename = "quickXorHash")]
    pub quick_xor_hash: String,
    /// `fileSystemInfo.lastModifiedDateTime` (the client's mtime).
    #[serde(rename = "lastModifiedDateTime")]
    pub last_modified: String,
    /// Item id.
    pub id: String,
}

impl Shared {
    /// Files of the default library, sorted by path (folders excluded).
    pub fn tree(&self) -> Vec<TreeEntry> {
        let store = lock(&self.store);
        let d = &store.drives[store.default_drive()];
        let mut out: Vec<TreeEntry> = d
            .items
            .values()
            .filter(|i| !i.folder)
            .map(|i| TreeEntry {
                path: d.rel_path(&i.id),
                size: i.size,
                quick_xor_hash: i.hash.clone().unwrap_or_default(),
                last_modified: crate::clock::fmt_ms(i.fs_modified_ms),
                id: i.id.clone(),
            })
            .collect();
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }

    /// Add fault rules.
    pub fn add_faults(&self, spec: &str) -> Result<(), FaultSpecError> {
        lock(&self.faults).add(spec)
    }

    /// Empty libraries, sessions, faults and the request log; with
    /// `tokens`, also every token.
    pub fn reset(&self, tokens: bool) {
        lock(&self.store).reset(&self.opts, self.clock.now_ms());
        lock(&self.faults).clear();
        lock(&self.log).clear();
        self.throttled_until_ms.store(0, Ordering::Release);
        self.throttle_violations.store(0, Ordering::Release);
        if tokens {
            lock(&self.auth).clear();
        }
        self.changed();
    }

    /// Sign a user in without the device code dance (token reply JSON).
    pub fn user_tokens(&self, client_id: &str, scope: &str) -> Value {
        let svc = crate::auth::TokenService {
            opts: &self.opts,
            clock: &self.clock,
            certs: &self.certs,
            token_url: String::new(),
        };
        let v = svc.user_tokens(&mut lock(&self.auth), client_id, scope);
        self.changed();
        v
    }

    /// Expire every access token and/or upload session now.
    pub fn expire(&self, tokens: bool, sessions: bool) {
        let now = self.clock.now_ms();
        if tokens {
            lock(&self.auth).expire_access_tokens(now);
        }
        if sessions {
            for s in lock(&self.store).sessions.values_mut() {
                s.expires_ms = s.expires_ms.min(now);
            }
        }
        self.changed();
    }

    /// Delete a library (see [`crate::store::Store::delete_library`]);
    /// returns its id, or why no such library exists.
    pub fn delete_library(
        &self,
        site: Option<&str>,
        library: Option<&str>,
    ) -> Result<String, String> {
        let id = {
            let mut store = lock(&self.store);
            let d = find_library(&store, site, library)?;
            store.delete_library(d)
        };
        self.changed();
        Ok(id)
    }

    /// Delete a library and create it again under a new drive id (see
    /// [`crate::store::Store::recreate_library`]); returns (old, new) ids.
    pub fn recreate_library(
        &self,
        site: Option<&str>,
        library: Option<&str>,
    ) -> Result<(String, String), String> {
        let now = self.clock.now_ms();
        let ids = {
            let mut store = lock(&self.store);
            let d = find_library(&store, site, library)?;
            store.recreate_library(d, now)
        };
        self.changed();
        Ok(ids)
    }

    /// Facts a client needs to be configured against this emulator.
    pub fn info(&self, base: &str) -> Value {
        let store = lock(&self.store);
        let d = store.default_drive();
        let drive = &store.drives[d];
        let site = &store.sites[drive.site];
        json!({
            "authority": base,
            "graph_url": format!("{base}/v1.0"),
            "tenant": self.opts.tenant,
            "tenant_id": self.opts.tenant_id,
            "hostname": self.opts.hostname,
            "site_url": format!("https://{}{}", self.opts.hostname, if site.path == "/" { "" } else { &site.path }),
            "site_id": site.id,
            "library": drive.name,
            "drive_id": drive.id,
            "root_id": drive.root_id,
        })
    }
}

/// A library by site and name, or a message naming what was not found.
fn find_library(
    store: &crate::store::Store,
    site: Option<&str>,
    library: Option<&str>,
) -> Result<usize, String> {
    store.find_library(site, library).ok_or_else(|| {
        format!(
            "no library {:?} on site {:?}",
            library.unwrap_or("(default)"),
            site.unwrap_or("(default)")
        )
    })
}

fn admin_error(status: StatusCode, msg: &str) -> Response {
    crate::error::json_response(status, &json!({"error": msg}))
}

fn no_content() -> Response {
    let mut r = Response::new(axum::body::Body::empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

fn body_json(bytes: &Bytes) -> Value {
    serde_json::from_slice(bytes).unwrap_or(json!({}))
}

/// Admin routes, merged into the main router.
pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/_emulator/tree", get(tree))
        .route("/_emulator/requests", get(requests).delete(clear_requests))
        .route("/_emulator/counters", get(counters))
        .route("/_emulator/throttle", get(throttle))
        .route(
            "/_emulator/faults",
            get(list_faults).post(add_faults).delete(clear_faults),
        )
        .route("/_emulator/approve", post(approve))
        .route("/_emulator/decline", post(decline))
        .route("/_emulator/user-codes", get(user_codes))
        .route("/_emulator/revoke", post(revoke))
        .route("/_emulator/login", post(login))
        .route("/_emulator/expire", post(expire))
        .route("/_emulator/clock", post(clock))
        .route("/_emulator/reset", post(reset))
        .route("/_emulator/info", get(info))
        .route("/_emulator/seed", post(seed))
        .route("/_emulator/delete-library", post(delete_library))
        .route("/_emulator/recreate-library", post(recreate_library))
}

async fn tree(State(sh): State<Arc<Shared>>) -> Response {
    crate::server::ok_json(&json!(sh.tree()))
}

async fn requests(State(sh): State<Arc<Shared>>) -> Response {
    crate::server::ok_json(&json!(*lock(&sh.log)))
}

async fn clear_requests(State(sh): State<Arc<Shared>>) -> Response {
    lock(&sh.log).clear();
    no_content()
}

async fn counters(State(sh): State<Arc<Shared>>) -> Response {
    crate::server::ok_json(&json!(sh.counters()))
}

async fn throttle(State(sh): State<Arc<Shared>>) -> Response {
    let until = sh.throttled_until_ms.load(Ordering::Acquire);
    crate::server::ok_json(&json!({
        "throttled": until > sh.clock.now_ms(),
        "until": if until > 0 { Some(crate::clock::fmt_ms(until)) } else { None },
        "violations": sh.throttle_violations.load(Ordering::Acquire),
    }))
}

async fn list_faults(State(sh): State<Arc<Shared>>) -> Response {
    let rules: Vec<String> = lock(&sh.faults)
        .rules()
        .iter()
        .map(|r| format!("{r:?}"))
        .collect();
    crate::server::ok_json(&json!(rules))
}

async fn add_faults(State(sh): State<Arc<Shared>>, body: Bytes) -> Response {
    let spec = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::String(s)) => s,
        Ok(v) => match v.get("spec").and_then(Value::as_str) {
            Some(s) => s.to_string(),
            None => {
                return admin_error(
                    StatusCode::BAD_REQUEST,
                    "expected a JSON string or {\"spec\": \"...\"}",
                );
            }
        },
        Err(_) => String::from_utf8_lossy(&body).into_owned(),
    };
    match sh.add_faults(&spec) {
        Ok(()) => no_content(),
        Err(e) => admin_error(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

async fn clear_faults(State(sh): State<Arc<Shared>>) -> Response {
    lock(&sh.faults).clear();
    no_content()
}

fn user_code_of(body: &Bytes) -> Option<String> {
    body_json(body)
        .get("user_code")
        .and_then(Value::as_str)
        .map(str::to_string)
}

async fn approve(State(sh): State<Arc<Shared>>, body: Bytes) -> Response {
    let Some(code) = user_code_of(&body) else {
        return admin_error(StatusCode::BAD_REQUEST, "expected {\"user_code\": \"...\"}");
    };
    if lock(&sh.auth).approve(&code) {
        no_content()
    } else {
        admin_error(
            StatusCode::NOT_FOUND,
            "no pending device code with that user_code",
        )
    }
}

async fn decline(State(sh): State<Arc<Shared>>, body: Bytes) -> Response {
    let Some(code) = user_code_of(&body) else {
        return admin_error(StatusCode::BAD_REQUEST, "expected {\"user_code\": \"...\"}");
    };
    if lock(&sh.auth).decline(&code) {
        no_content()
    } else {
        admin_error(
            StatusCode::NOT_FOUND,
            "no pending device code with that user_code",
        )
    }
}

async fn user_codes(State(sh): State<Arc<Shared>>) -> Response {
    crate::server::ok_json(&json!(lock(&sh.auth).pending_user_codes()))
}

async fn login(State(sh): State<Arc<Shared>>, body: Bytes) -> Response {
    let v = body_json(&body);
    let client_id = v
        .get("client_id")
        .and_then(Value::as_str)
        .unwrap_or("emulator-client");
    let scope = v
        .get("scope")
        .and_then(Value::as_str)
        .unwrap_or(crate::auth::DEFAULT_USER_SCOPE);
    crate::server::ok_json(&sh.user_tokens(client_id, scope))
}

async fn revoke(State(sh): State<Arc<Shared>>) -> Response {
    lock(&sh.auth).revoke_all();
    sh.changed();
    no_content()
}

async fn expire(State(sh): State<Arc<Shared>>, body: Bytes) -> Response {
    let v = body_json(&body);
    let flag = |k: &str| v.get(k).and_then(Value::as_bool).unwrap_or(false);
    sh.expire(flag("tokens"), flag("sessions"));
    no_content()
}

async fn clock(State(sh): State<Arc<Shared>>, body: Bytes) -> Response {
    match body_json(&body).get("advance_secs").and_then(Value::as_f64) {
        Some(s) if s >= 0.0 => {
            sh.clock.advance(Duration::from_secs_f64(s));
            no_content()
        }
        _ => admin_error(
            StatusCode::BAD_REQUEST,
            "expected {\"advance_secs\": N} with N >= 0",
        ),
    }
}

async fn reset(State(sh): State<Arc<Shared>>, body: Bytes) -> Response {
    let tokens = body_json(&body)
        .get("tokens")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    sh.reset(tokens);
    no_content()
}

async fn info(State(sh): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let base = sh.base_url(&headers);
    crate::server::ok_json(&sh.info(&base))
}

async fn seed(State(sh): State<Arc<Shared>>, body: Bytes) -> Response {
    let v = body_json(&body);
    let spec: crate::store::SeedSpec = match serde_json::from_value(v.clone()) {
        Ok(s) => s,
        Err(e) => {
            return admin_error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "expected {{\"folder\": PATH, \"files\": N, \"per_folder\"?: N, \"size\"?: BYTES, \"drive\"?: ID}}: {e}"
                ),
            );
        }
    };
    let drive = v.get("drive").and_then(Value::as_str).map(str::to_string);
    match sh.seed(drive.as_deref(), &spec) {
        Ok(id) => crate::server::ok_json(&json!({"folder_id": id, "files": spec.files})),
        // The caller's input (no such drive, a refused name): 400; the
        // emulator's own failure (writing content, the quota): 500.
        Err(e) if e.status.is_client_error() => admin_error(
            StatusCode::BAD_REQUEST,
            &format!("{}: {}", e.code, e.message),
        ),
        Err(e) => admin_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("{}: {}", e.code, e.message),
        ),
    }
}

/// `{"site"?, "library"?}` of the library routes, or a 400 reply.
#[allow(clippy::result_large_err)]
fn library_of(body: &Bytes) -> Result<(Option<String>, Option<String>), Response> {
    let v: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(body).map_err(|e| {
            admin_error(
                StatusCode::BAD_REQUEST,
                &format!("expected {{\"site\"?: PATH_OR_URL, \"library\"?: NAME}}: {e}"),
            )
        })?
    };
    let field = |k: &str| -> Result<Option<String>, Response> {
        match v.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(admin_error(
                StatusCode::BAD_REQUEST,
                &format!("{k:?} must be a string"),
            )),
        }
    };
    Ok((field("site")?, field("library")?))
}

async fn delete_library(State(sh): State<Arc<Shared>>, body: Bytes) -> Response {
    let (site, library) = match library_of(&body) {
        Ok(x) => x,
        Err(r) => return r,
    };
    match sh.delete_library(site.as_deref(), library.as_deref()) {
        Ok(id) => crate::server::ok_json(&json!({"drive_id": id})),
        Err(msg) => admin_error(StatusCode::NOT_FOUND, &msg),
    }
}

async fn recreate_library(State(sh): State<Arc<Shared>>, body: Bytes) -> Response {
    let (site, library) = match library_of(&body) {
        Ok(x) => x,
        Err(r) => return r,
    };
    match sh.recreate_library(site.as_deref(), library.as_deref()) {
        Ok((old, new)) => crate::server::ok_json(&json!({"old_drive_id": old, "drive_id": new})),
        Err(msg) => admin_error(StatusCode::NOT_FOUND, &msg),
    }
}
