//! Upload sessions (graph-api.md §3): `createUploadSession`, then fragment
//! PUTs, resume (GET), cancel (DELETE) and expiry on the upload URL.
//!
//! Every rule of the section is enforced: 320 KiB multiples except the last
//! fragment, requests under 60 MiB, in-order fragments, one total for all
//! requests, no `Authorization` header on the upload URL (strict mode), no
//! empty sessions. Fragments stream to `sessions/{id}.part`; a fragment that
//! breaks midway is discarded (the file is cut back and the hash state is
//! the one from before the fragment). Committing moves the file into
//! `blobs/` through `Store::commit_file`; routing and JSON are `graph`'s.

use crate::clock::fmt_ms;
use crate::error::GraphError;
use crate::graph::{
    Ctx, FileTarget, Query, StreamError, conflict_from, conflict_from_query, fs_info, item_json,
    maybe_rewrite, stream_to_file, upload_target,
};
use crate::server::{Shared, lock, reply};
use crate::store::{Conflict, FileContent, UploadSession};
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::Response;
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use std::sync::Arc;
use tokio::io::AsyncSeekExt as _;

/// Every fragment but the last is a multiple of this (320 KiB).
pub const FRAGMENT_MULTIPLE: u64 = 320 * 1024;
/// Each request must be under this (60 MiB).
pub const MAX_FRAGMENT: u64 = 60 * 1024 * 1024;

fn session_not_found() -> GraphError {
    GraphError::not_found("The upload session was not found")
}

fn malformed_range() -> GraphError {
    GraphError::bad_request("The Content-Range header is missing or malformed")
}

/// `POST .../createUploadSession`.
pub async fn create(
    sh: &Shared,
    ctx: &Ctx,
    drive: usize,
    base: &str,
    segments: &[String],
    query: &Query,
    req: Request,
) -> Result<Response, GraphError> {
    let headers = req.headers().clone();
    let bytes = req
        .into_body()
        .collect()
        .await
        .map_err(|_| GraphError::bad_request("Could not read the request body"))?
        .to_bytes();
    let body: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| GraphError::bad_request(format!("Invalid JSON body: {e}")))?
    };
    let item = body.get("item").cloned().unwrap_or(json!({}));
    if body.get("deferCommit").and_then(Value::as_bool) == Some(true) {
        return Err(GraphError::bad_request(
            "deferCommit is not supported by this emulator",
        ));
    }
    let by_id = segments.is_empty();
    // Default for sessions is fail (§3); addressing an existing file by id
    // means updating it.
    let conflict = match (conflict_from(&item)?, conflict_from_query(query)?) {
        (Some(c), _) | (None, Some(c)) => c,
        (None, None) if by_id => Conflict::Replace,
        (None, None) => Conflict::Fail,
    };
    let (fs_created_ms, fs_modified_ms) = fs_info(&item)?;
    let now = ctx.now_ms;
    let session = {
        let mut store = lock(&sh.store);
        let FileTarget {
            parent,
            name,
            existing,
        } = upload_target(&store, drive, base, segments, &headers)?;
        if existing.is_some() && conflict == Conflict::Fail {
            return Err(GraphError::name_exists(&name));
        }
        let s = UploadSession {
            id: uuid::Uuid::new_v4().simple().to_string(),
            secret: uuid::Uuid::new_v4().simple().to_string(),
            drive,
            parent,
            name,
            conflict,
            fs_created_ms,
            fs_modified_ms,
            expires_ms: now + sh.opts.session_lifetime.as_millis() as i64,
            total: None,
            next: 0,
            hasher: Default::default(),
            busy: false,
        };
        store.sessions.insert(s.id.clone(), s.clone());
        s
    };
    sh.changed();
    Ok(crate::server::ok_json(&json!({
        "uploadUrl": format!("{}/_upload/{}?tempauth={}", ctx.base, session.id, session.secret),
        "expirationDateTime": fmt_ms(session.expires_ms),
        "nextExpectedRanges": ["0-"],
    })))
}

/// Any request on an upload URL.
pub async fn session_request(
    State(sh): State<Arc<Shared>>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    let r = session_inner(&sh, &id, req).await;
    reply(&sh, r)
}

fn status_json(s: &UploadSession) -> Value {
    json!({
        "expirationDateTime": fmt_ms(s.expires_ms),
        "nextExpectedRanges": [format!("{}-", s.next)],
    })
}

/// Look a session up, dropping it when expired.
fn live_session(sh: &Shared, id: &str, secret: Option<&str>) -> Result<UploadSession, GraphError> {
    let now = sh.clock.now_ms();
    let mut store = lock(&sh.store);
    let Some(s) = store.sessions.get(id) else {
        return Err(session_not_found());
    };
    if now >= s.expires_ms && !s.busy {
        let path = store.session_path(id);
        store.sessions.remove(id);
        drop(store);
        let _ = std::fs::remove_file(path);
        sh.changed();
        return Err(session_not_found());
    }
    if secret != Some(s.secret.as_str()) {
        return Err(GraphError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "The upload URL's tempauth is missing or invalid",
        ));
    }
    Ok(s.clone())
}

async fn session_inner(sh: &Shared, id: &str, req: Request) -> Result<Response, GraphError> {
    if sh.opts.strict && req.headers().contains_key(header::AUTHORIZATION) {
        return Err(GraphError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "The upload URL carries its own credential; an Authorization header must not be sent",
        ));
    }
    let query = crate::graph::parse_query(req.uri().query());
    let session = live_session(sh, id, query.get("tempauth").map(String::as_str))?;
    match *req.method() {
        Method::GET => Ok(crate::server::ok_json(&status_json(&session))),
        Method::DELETE => {
            let path = {
                let mut store = lock(&sh.store);
                store.sessions.remove(id);
                store.session_path(id)
            };
            let _ = tokio::fs::remove_file(path).await;
            sh.changed();
            let mut resp = Response::new(Body::empty());
            *resp.status_mut() = StatusCode::NO_CONTENT;
            Ok(resp)
        }
        Method::PUT => fragment(sh, id, req).await,
        _ => Err(GraphError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalidRequest",
            "Use PUT, GET or DELETE on an upload URL",
        )),
    }
}

/// `bytes {start}-{end}/{total}`.
fn parse_content_range(h: &HeaderMap) -> Option<(u64, u64, u64)> {
    let v = h.get(header::CONTENT_RANGE)?.to_str().ok()?.trim();
    let rest = v.strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (a, b) = range.trim().split_once('-')?;
    let (start, end, total) = (
        a.trim().parse().ok()?,
        b.trim().parse().ok()?,
        total.trim().parse().ok()?,
    );
    (start <= end && end < total).then_some((start, end, total))
}

async fn fragment(sh: &Shared, id: &str, req: Request) -> Result<Response, GraphError> {
    let base = sh.base_url(req.headers());
    let (start, end, total) = parse_content_range(req.headers()).ok_or_else(malformed_range)?;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| GraphError::bad_request("The Content-Length header is required"))?;
    if declared == 0 {
        return Err(malformed_range());
    }
    if declared >= MAX_FRAGMENT {
        return Err(GraphError::range(
            "maxFragmentLengthExceeded",
            format!("A request must be under {MAX_FRAGMENT} bytes"),
        ));
    }
    let len = end - start + 1;
    if len != declared {
        return Err(GraphError::range(
            "fragmentLengthMismatch",
            "Content-Range length does not match Content-Length",
        ));
    }
    let now = sh.clock.now_ms();
    let (before, part) = {
        let mut store = lock(&sh.store);
        let drive_used_check = {
            let s = store.sessions.get(id).ok_or_else(session_not_found)?;
            if s.total.is_some_and(|t| t != total) {
                return Err(GraphError::bad_request(
                    "The total size in Content-Range differs from earlier fragments",
                )
                .inner("invalidRange"));
            }
            if start < s.next || (s.busy && start == s.next) {
                return Err(GraphError::range(
                    "fragmentOverlap",
                    format!(
                        "The fragment overlaps received data; next expected byte is {}",
                        s.next
                    ),
                ));
            }
            if start > s.next {
                return Err(GraphError::range(
                    "fragmentOutOfOrder",
                    format!(
                        "Fragments must arrive in order; next expected byte is {}",
                        s.next
                    ),
                ));
            }
            if end + 1 < total && len % FRAGMENT_MULTIPLE != 0 {
                return Err(GraphError::range(
                    "fragmentLengthMismatch",
                    format!(
                        "Every fragment but the last must be a multiple of {FRAGMENT_MULTIPLE} bytes"
                    ),
                ));
            }
            (s.drive, s.total.is_none())
        };
        if drive_used_check.1 {
            store.check_quota(drive_used_check.0, total, 0)?;
        }
        let part = store.session_path(id);
        let s = store.sessions.get_mut(id).expect("checked above");
        s.busy = true;
        (s.clone(), part)
    };
    let mut hasher = before.hasher.clone();
    let result = async {
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&part)
            .await
            .map_err(StreamError::Io)?;
        file.set_len(start).await.map_err(StreamError::Io)?;
        file.seek(std::io::SeekFrom::Start(start))
            .await
            .map_err(StreamError::Io)?;
        stream_to_file(req.into_body(), file, &mut hasher, len).await
    }
    .await;
    let received = match result {
        Ok(n) if n == len => n,
        other => {
            // Broken request: its bytes are discarded (§3 "Resume").
            if let Ok(f) = tokio::fs::OpenOptions::new().write(true).open(&part).await {
                let _ = f.set_len(start).await;
            }
            if let Some(s) = lock(&sh.store).sessions.get_mut(id) {
                s.busy = false;
            }
            return Err(match other {
                Err(StreamError::Io(e)) => GraphError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "generalException",
                    format!("Storage error: {e}"),
                ),
                Ok(_) | Err(StreamError::TooLarge) => GraphError::range(
                    "fragmentLengthMismatch",
                    "The body length differs from Content-Length",
                ),
                Err(StreamError::Client) => {
                    GraphError::bad_request("The request body was incomplete")
                }
            });
        }
    };
    let next = start + received;
    let session = {
        let mut store = lock(&sh.store);
        let Some(s) = store.sessions.get_mut(id) else {
            return Err(session_not_found());
        };
        s.busy = false;
        s.next = next;
        s.total = Some(total);
        s.hasher = hasher;
        s.expires_ms = now + sh.opts.session_lifetime.as_millis() as i64;
        s.clone()
    };
    sh.changed();
    if next < total {
        let mut resp = crate::server::ok_json(&status_json(&session));
        *resp.status_mut() = StatusCode::ACCEPTED;
        return Ok(resp);
    }
    commit(sh, &base, session, part).await
}

async fn commit(
    sh: &Shared,
    base: &str,
    session: UploadSession,
    part: std::path::PathBuf,
) -> Result<Response, GraphError> {
    let blob = uuid::Uuid::new_v4().simple().to_string();
    let blob_path = lock(&sh.store).blob_path(&blob);
    let io = |e: std::io::Error| {
        GraphError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "generalException",
            format!("Storage error: {e}"),
        )
    };
    tokio::fs::rename(&part, &blob_path).await.map_err(io)?;
    let mut hasher = session.hasher.clone();
    let extra = maybe_rewrite(sh, &session.name, &blob_path, &mut hasher).await?;
    let content = FileContent {
        blob,
        size: session.next + extra,
        hash: hasher.digest(),
        fs_created_ms: session.fs_created_ms,
        fs_modified_ms: session.fs_modified_ms,
    };
    let now = sh.clock.now_ms();
    let mut store = lock(&sh.store);
    store.sessions.remove(&session.id);
    let result = store.commit_file(
        session.drive,
        &session.parent,
        &session.name,
        session.conflict,
        content,
        now,
    );
    let r = match result {
        Ok((item_id, created, old_blob)) => {
            if let Some(old) = old_blob {
                let _ = std::fs::remove_file(store.blob_path(&old));
            }
            Ok((item_id, created))
        }
        Err(e) => {
            let _ = std::fs::remove_file(&blob_path);
            Err(e)
        }
    };
    drop(store);
    sh.changed();
    let (item_id, created) = r?;
    let ctx = Ctx {
        base: base.to_string(),
        now_ms: now,
        hostname: sh.opts.hostname.clone(),
    };
    let store = lock(&sh.store);
    let item = store.drives[session.drive]
        .get(&item_id)
        .ok_or_else(session_not_found)?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(crate::error::json_response(
        status,
        &item_json(sh, &store, session.drive, item, &ctx, false),
    ))
}
