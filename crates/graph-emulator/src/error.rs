//! Error policy and the two error shapes the emulator speaks.
//!
//! - [`Error`]: why `serve` could not start (bad data dir, unreadable
//!   snapshot, bad fault spec). Callers get it; it is never sent over HTTP.
//! - [`GraphError`]: a Graph failure, rendered exactly in the shape of
//!   graph-api.md §7 (`{"error":{"code","message","innerError":{...}}}`).
//!   Upload-range errors use the key `innererror`, as documented in §3.
//! - [`oauth_error`]: an Entra ID token-endpoint failure in the shape of §1
//!   (`error`, `error_description` with an AADSTS code, `error_codes`, ...).
//!
//! This module renders errors; deciding which error applies is the job of
//! the route modules.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};

/// Why the emulator could not start or persist.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The data directory could not be created or used.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory in question.
        path: std::path::PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The metadata snapshot exists but cannot be read back.
    #[error("metadata snapshot {path}: {reason}")]
    Snapshot {
        /// The snapshot file.
        path: std::path::PathBuf,
        /// What was wrong with it.
        reason: String,
    },
    /// The fault spec does not parse.
    #[error(transparent)]
    Faults(#[from] crate::faults::FaultSpecError),
    /// The TLS certificate or key cannot be used (or TLS support was not
    /// compiled in: feature `tls`).
    #[error("TLS: {0}")]
    Tls(String),
    /// A registered client certificate cannot be used (or certificate
    /// support was not compiled in: feature `cert-auth`).
    #[error("client certificate: {0}")]
    Certificate(String),
    /// The listener's local address is unavailable.
    #[error("listener: {0}")]
    Listener(#[source] std::io::Error),
}

/// A JSON response with the given status.
pub fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut resp = Response::new(Body::from(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A Graph error reply (graph-api.md §7).
#[derive(Debug, Clone)]
pub struct GraphError {
    /// HTTP status.
    pub status: StatusCode,
    /// Top-level `error.code`.
    pub code: &'static str,
    /// Human text; clients must never branch on it.
    pub message: String,
    /// The more specific nested code, if any.
    pub inner: Option<&'static str>,
    /// `innerError` (Graph) or `innererror` (upload-session ranges, §3).
    pub lowercase_inner_key: bool,
    /// `Retry-After` seconds for 429/503.
    pub retry_after: Option<u64>,
    /// `Location` header (410 resyncRequired).
    pub location: Option<String>,
}

impl GraphError {
    /// An error without a nested code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            inner: None,
            lowercase_inner_key: false,
            retry_after: None,
            location: None,
        }
    }

    /// Add the nested, most specific code.
    pub fn inner(mut self, code: &'static str) -> Self {
        self.inner = Some(code);
        self
    }

    /// 404 itemNotFound.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "itemNotFound", message)
    }

    /// 500 generalException: the emulator itself failed (disk, I/O).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "generalException",
            message,
        )
    }

    /// 400 invalidRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalidRequest", message)
    }

    /// 409 nameAlreadyExists.
    pub fn name_exists(name: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "nameAlreadyExists",
            format!("The specified item name already exists. Name: {name}"),
        )
    }

    /// 416 invalidRange with the documented `innererror` code.
    pub fn range(inner: &'static str, message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::RANGE_NOT_SATISFIABLE, "invalidRange", message);
        e.inner = Some(inner);
        e.lowercase_inner_key = true;
        e
    }

    /// 412 resourceModified.
    pub fn precondition() -> Self {
        Self::new(
            StatusCode::PRECONDITION_FAILED,
            "resourceModified",
            "ETag does not match current item's value",
        )
    }

    /// 507 quotaLimitReached.
    pub fn quota() -> Self {
        Self::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "quotaLimitReached",
            "Insufficient Space Available",
        )
    }

    /// 401 InvalidAuthenticationToken.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            message,
        )
    }

    /// Render with the current time in `innerError.date`.
    pub fn to_response(&self, now_ms: i64) -> Response {
        let mut inner = serde_json::Map::new();
        if let Some(code) = self.inner {
            inner.insert("code".into(), json!(code));
        }
        inner.insert("date".into(), json!(crate::clock::fmt_ms(now_ms)));
        inner.insert("request-id".into(), json!(uuid::Uuid::new_v4().to_string()));
        inner.insert(
            "client-request-id".into(),
            json!(uuid::Uuid::new_v4().to_string()),
        );
        let key = if self.lowercase_inner_key {
            "innererror"
        } else {
            "innerError"
        };
        let body = json!({"error": {"code": self.code, "message": self.message, key: inner}});
        let mut resp = json_response(self.status, &body);
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(loc) = &self.location
            && let Ok(v) = HeaderValue::from_str(loc)
        {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(
                    "Bearer realm=\"\", authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\"",
                ),
            );
        }
        resp
    }
}

/// An Entra ID token-endpoint error (graph-api.md §1 "Error shape").
///
/// `aadsts` is the numeric code that goes into `error_codes` and prefixes
/// `error_description`; `suberror` is added when given (e.g.
/// `consent_required`).
pub fn oauth_error(
    status: StatusCode,
    error: &str,
    aadsts: u32,
    description: &str,
    suberror: Option<&str>,
    now_ms: i64,
) -> Response {
    let trace = uuid::Uuid::new_v4().to_string();
    let correlation = uuid::Uuid::new_v4().to_string();
    let ts = crate::clock::to_utc(now_ms)
        .format("%Y-%m-%d %H:%M:%SZ")
        .to_string();
    let mut body = json!({
        "error": error,
        "error_description": format!(
            "AADSTS{aadsts}: {description} Trace ID: {trace} Correlation ID: {correlation} Timestamp: {ts}"
        ),
        "error_codes": [aadsts],
        "timestamp": ts,
        "trace_id": trace,
        "correlation_id": correlation,
        "error_uri": format!("https://login.microsoftonline.com/error?code={aadsts}"),
    });
    if let Some(sub) = suberror {
        body["suberror"] = json!(sub);
    }
    json_response(status, &body)
}
