//! Wiring: the shared state, the router, and the front door every request
//! passes (fault injection, latency, request log and counters).
//!
//! Route modules (`auth`, `graph`, `upload`, `admin`) decide replies; this
//! module decides which module gets a request, whether a fault replaces the
//! reply, and how URLs handed to clients are built (from the scheme the
//! emulator serves and the `Host` the client used). It also persists the
//! metadata snapshot in a tracked background task.

use crate::auth::{AuthSnapshot, AuthState, TokenService};
use crate::clock::Clock;
use crate::error::{GraphError, json_response, oauth_error};
use crate::faults::{Action, Faults, RouteClass};
use crate::options::Options;
use crate::store::{Store, StoreSnapshot};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{any, get, post};
use http_body_util::BodyExt as _;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{Notify, watch};

/// One line of the request log (`GET /_emulator/requests`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RequestRecord {
    /// Milliseconds since the emulator started, when the reply was ready
    /// (headers sent; a streamed body may still be flowing) or the
    /// connection was dropped.
    pub t_ms: u64,
    /// Milliseconds since the emulator started, when the request arrived
    /// (before any injected latency).
    #[serde(default)]
    pub t_start_ms: u64,
    /// HTTP method.
    pub method: String,
    /// Raw path, without the query.
    pub path: String,
    /// Status sent; 0 when the connection was dropped by a fault.
    pub status: u16,
    /// Route class (token, graph, delta, upload, session, download, other).
    pub route: String,
    /// The `Content-Range` header of a PUT on an upload URL (a fragment),
    /// as sent; `None` for every other request.
    #[serde(default)]
    pub range: Option<String>,
}

/// What the request log keeps of a request from its arrival.
struct Arrival {
    t_start_ms: u64,
    method: Method,
    path: String,
    route: &'static str,
    range: Option<String>,
}

/// Everything the handlers share. Locks are never held across an await.
pub struct Shared {
    /// Configuration.
    pub opts: Options,
    /// Emulator time.
    pub clock: Clock,
    /// For `t_ms` in the request log.
    pub started: std::time::Instant,
    /// Content metadata.
    pub store: Mutex<Store>,
    /// Token service state.
    pub auth: Mutex<AuthState>,
    /// Active fault rules.
    pub faults: Mutex<Faults>,
    /// Request log, in arrival order of completion.
    pub log: Mutex<Vec<RequestRecord>>,
    /// Bumped after every logged request, so waiters need no sleeps.
    pub log_seq: watch::Sender<u64>,
    /// Wakes the persistence task after a change.
    pub persist_wake: Notify,
    /// A change happened since the last snapshot.
    pub dirty: AtomicBool,
    /// Whether to write snapshots (a data dir was given).
    pub persist: bool,
    /// Root of the data directory.
    pub data_dir: PathBuf,
    /// Keeps a temporary data directory alive as long as the emulator.
    pub _temp: Option<tempfile::TempDir>,
    /// Where the listener is bound (fallback when a request has no Host).
    pub local_addr: SocketAddr,
    /// `http` (or `https` once TLS is served).
    pub scheme: &'static str,
    /// Secret that signs download URLs.
    pub download_secret: String,
    /// Emulator time (Unix ms) until which the tenant is throttled after a
    /// reply with `Retry-After`.
    pub throttled_until_ms: AtomicI64,
    /// Requests that arrived inside a Retry-After window.
    pub throttle_violations: AtomicU64,
    /// driveItem replies leave out `quickXorHash`, as the service may right
    /// after an upload (graph-api.md section 3: "filled in later").
    pub hide_hashes: AtomicBool,
    /// Certificates registered for client-credential assertions.
    pub certs: crate::assertion::Certificates,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("local_addr", &self.local_addr)
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

/// Lock a mutex, ignoring poisoning (a panicked handler must not take the
/// emulator down with it).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Serialize, Deserialize, Default)]
struct Snapshot {
    version: u32,
    store: StoreSnapshot,
    auth: AuthSnapshot,
}

impl Shared {
    /// Seed a library (`drive` id, else the default one); see
    /// [`crate::store::Store::seed`]. A 4xx error is the caller's input (no
    /// such drive, a bad folder name, `per_folder` 0); a 5xx one is the
    /// emulator's own failure (writing content, the quota).
    pub fn seed(
        &self,
        drive: Option<&str>,
        spec: &crate::store::SeedSpec,
    ) -> Result<String, crate::error::GraphError> {
        let now = self.clock.now_ms();
        let id = {
            let mut store = lock(&self.store);
            let d = match drive {
                Some(id) => store.drive_index(id).ok_or_else(|| {
                    crate::error::GraphError::bad_request(format!("no drive with id {id:?}"))
                })?,
                None => store.default_drive(),
            };
            store.seed(d, spec, now)?
        };
        self.changed();
        Ok(id)
    }

    /// Note that metadata changed (the snapshot task will save it).
    pub fn changed(&self) {
        if self.persist {
            self.dirty.store(true, Ordering::Release);
            self.persist_wake.notify_one();
        }
    }

    /// `scheme://host` the client used.
    pub fn base_url(&self, headers: &HeaderMap) -> String {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| !h.is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| self.local_addr.to_string());
        format!("{}://{host}", self.scheme)
    }

    fn snapshot_path(&self) -> PathBuf {
        self.data_dir.join("state.json")
    }

    /// Load the snapshot written by an earlier run, if any.
    pub fn load_snapshot(&self) -> Result<(), crate::Error> {
        let path = self.snapshot_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(crate::Error::Snapshot {
                    path,
                    reason: e.to_string(),
                });
            }
        };
        let snap: Snapshot = serde_json::from_str(&text).map_err(|e| crate::Error::Snapshot {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        lock(&self.store).restore(snap.store);
        lock(&self.auth).restore(snap.auth);
        Ok(())
    }

    /// Write the snapshot now (atomically: temp file + rename).
    pub fn save_snapshot(&self) -> std::io::Result<()> {
        self.dirty.store(false, Ordering::Release);
        let store = lock(&self.store).snapshot();
        let auth = {
            let mut a = lock(&self.auth);
            a.prune(self.clock.now_ms());
            a.snapshot()
        };
        let snap = Snapshot {
            version: 1,
            store,
            auth,
        };
        let text = serde_json::to_vec(&snap).map_err(std::io::Error::other)?;
        let tmp = self.data_dir.join("state.json.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, self.snapshot_path())
    }

    /// Milliseconds since the emulator started.
    fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Log a finished request.
    fn record(&self, arrival: &Arrival, status: u16) {
        let rec = RequestRecord {
            t_ms: self.elapsed_ms(),
            t_start_ms: arrival.t_start_ms,
            method: arrival.method.to_string(),
            path: arrival.path.clone(),
            status,
            route: arrival.route.to_string(),
            range: arrival.range.clone(),
        };
        lock(&self.log).push(rec);
        self.log_seq.send_modify(|n| *n += 1);
    }

    /// Requests by route class and status.
    pub fn counters(&self) -> BTreeMap<String, BTreeMap<u16, u64>> {
        let mut out: BTreeMap<String, BTreeMap<u16, u64>> = BTreeMap::new();
        for r in lock(&self.log).iter() {
            *out.entry(r.route.clone())
                .or_default()
                .entry(r.status)
                .or_default() += 1;
        }
        out
    }
}

/// Persist the snapshot after changes (debounced) until `stop` flips.
pub async fn persist_task(sh: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    if !sh.persist {
        return;
    }
    loop {
        tokio::select! {
            _ = sh.persist_wake.notified() => {}
            _ = stop.changed() => break,
        }
        tokio::select! {
            _ = tokio::time::sleep(sh.opts.persist_interval) => {}
            _ = stop.changed() => {}
        }
        if sh.dirty.load(Ordering::Acquire) {
            let s = sh.clone();
            match tokio::task::spawn_blocking(move || s.save_snapshot()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "could not write metadata snapshot"),
                Err(e) => tracing::warn!(error = %e, "snapshot task failed"),
            }
        }
        if *stop.borrow() {
            break;
        }
    }
    let s = sh.clone();
    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || s.save_snapshot()).await {
        tracing::warn!(error = %e, "could not write final metadata snapshot");
    }
}

/// The application.
pub fn router(sh: Arc<Shared>) -> Router {
    Router::new()
        .merge(crate::admin::routes())
        .route("/{tenant}/oauth2/v2.0/devicecode", post(devicecode))
        .route("/{tenant}/oauth2/v2.0/token", post(token))
        .route("/v1.0", any(crate::graph::dispatch))
        .route("/v1.0/{*rest}", any(crate::graph::dispatch))
        .route("/_upload/{id}", any(crate::upload::session_request))
        .route("/_download/{drive}/{item}", get(crate::graph::download))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(sh.clone(), front_door))
        .with_state(sh)
}

async fn not_found(State(sh): State<Arc<Shared>>, req: Request) -> Response {
    GraphError::new(
        StatusCode::BAD_REQUEST,
        "invalidRequest",
        format!("Invalid request: no route for {}", req.uri().path()),
    )
    .to_response(sh.clock.now_ms())
}

/// Read a form body (token endpoints).
async fn read_form(body: Body) -> HashMap<String, String> {
    let bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    form_urlencoded::parse(&bytes).into_owned().collect()
}

async fn devicecode(
    State(sh): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    req: Request,
) -> Response {
    let form = read_form(req.into_body()).await;
    let svc = TokenService {
        opts: &sh.opts,
        clock: &sh.clock,
        certs: &sh.certs,
        token_url: String::new(),
    };
    let resp = svc.devicecode(&mut lock(&sh.auth), &tenant, &form);
    sh.changed();
    resp
}

async fn token(
    State(sh): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let form = read_form(body).await;
    let svc = TokenService {
        opts: &sh.opts,
        clock: &sh.clock,
        certs: &sh.certs,
        token_url: format!("{}/{tenant}/oauth2/v2.0/token", sh.base_url(&parts.headers)),
    };
    let resp = svc.token(&mut lock(&sh.auth), &tenant, &parts.headers, &form);
    sh.changed();
    resp
}

/// Route classes of a request, most specific first; empty for the admin API.
fn classify(method: &Method, path: &str) -> Vec<RouteClass> {
    if path.starts_with("/_emulator") {
        return Vec::new();
    }
    if path.contains("/oauth2/") {
        return vec![RouteClass::Token];
    }
    if path.starts_with("/_upload/") {
        return if method == Method::PUT {
            vec![RouteClass::Upload, RouteClass::Session]
        } else {
            vec![RouteClass::Session]
        };
    }
    if path.starts_with("/_download/") {
        return vec![RouteClass::Download];
    }
    if path.starts_with("/v1.0") {
        return if path.ends_with("/delta") || path.ends_with("/delta()") {
            vec![RouteClass::Delta, RouteClass::Graph]
        } else {
            vec![RouteClass::Graph]
        };
    }
    vec![RouteClass::Any]
}

/// A body that fails right away: hyper then aborts the connection, which
/// the client sees as a connection dropped mid-body.
fn dropped_body() -> Body {
    Body::from_stream(futures_util::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "graph-emulator fault: connection dropped",
        ))
    }))
}

fn fault_response(
    sh: &Shared,
    class: RouteClass,
    status: u16,
    retry_after: Option<u64>,
    req_headers: &HeaderMap,
    path: &str,
) -> Response {
    let now = sh.clock.now_ms();
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    if class == RouteClass::Token {
        let (error, aadsts) = match status {
            429 => ("temporarily_unavailable", 50196),
            s if s >= 500 => ("temporarily_unavailable", 50012),
            _ => ("invalid_request", 90002),
        };
        let mut resp = oauth_error(
            code,
            error,
            aadsts,
            "The service is temporarily unavailable (emulated fault).",
            None,
            now,
        );
        if let Some(s) = retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, s.into());
        }
        return resp;
    }
    let mut e = match status {
        429 => GraphError::new(
            code,
            "activityLimitReached",
            "The request has been throttled",
        )
        .inner("throttledRequest"),
        503 => GraphError::new(code, "serviceNotAvailable", "Service unavailable"),
        500 => GraphError::new(
            code,
            "generalException",
            "An internal server error occurred",
        ),
        502 => GraphError::new(code, "badGateway", "Bad gateway"),
        504 => GraphError::new(code, "gatewayTimeout", "Gateway timeout"),
        507 => GraphError::quota(),
        410 => {
            let mut e = GraphError::new(
                code,
                "resyncRequired",
                "Resync required: the delta token is no longer valid",
            )
            .inner("resyncChangesApplyDifferences");
            let base = sh.base_url(req_headers);
            e.location = Some(format!("{base}{path}"));
            e
        }
        _ if matches!(class, RouteClass::Upload | RouteClass::Session) => {
            GraphError::not_found("The upload session was not found")
        }
        _ => GraphError::not_found("The resource could not be found."),
    };
    e.retry_after = retry_after;
    e.to_response(now)
}

async fn front_door(State(sh): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let t_start_ms = sh.elapsed_ms();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let classes = classify(&method, &path);
    let Some(&primary) = classes.first() else {
        return next.run(req).await;
    };
    let route = match primary {
        RouteClass::Any => "other",
        c => c.name(),
    };
    // Fragment PUTs on an upload URL: keep the Content-Range as sent.
    let range = if classes.contains(&RouteClass::Upload) {
        req.headers()
            .get(header::CONTENT_RANGE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    } else {
        None
    };
    let arrival = Arrival {
        t_start_ms,
        method,
        path,
        route,
        range,
    };
    let path = arrival.path.as_str();
    if sh.opts.enforce_retry_after && primary != RouteClass::Token {
        let now = sh.clock.now_ms();
        let until = sh.throttled_until_ms.load(Ordering::Acquire);
        if now < until {
            // A request inside a Retry-After window (graph-api.md §7: wait
            // before ANY further request to that tenant). Checked before
            // faults so a throttled request does not use up a fault's count.
            sh.throttle_violations.fetch_add(1, Ordering::AcqRel);
            let secs = ((until - now) + 999) / 1000;
            let mut e = GraphError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "activityLimitReached",
                "The request has been throttled: Retry-After was not honoured",
            )
            .inner("throttledRequest");
            e.retry_after = Some(secs as u64);
            sh.record(&arrival, 429);
            return e.to_response(now);
        }
    }
    let mut decision = lock(&sh.faults).decide(&classes);
    if sh.opts.latency > std::time::Duration::ZERO {
        decision.latency += sh.opts.latency;
    }
    if !decision.latency.is_zero() {
        tokio::time::sleep(decision.latency).await;
    }
    let now = sh.clock.now_ms();
    if decision.expire_tokens {
        lock(&sh.auth).expire_access_tokens(now);
    }
    if decision.expire_sessions {
        for s in lock(&sh.store).sessions.values_mut() {
            s.expires_ms = s.expires_ms.min(now);
        }
    }
    let resp = match decision.action {
        Some(Action::Status {
            status,
            retry_after,
        }) => fault_response(&sh, primary, status, retry_after, req.headers(), path),
        Some(Action::Drop) => {
            // Take part of the body first so the break is mid-request.
            let half = req
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
                / 2;
            let mut body = req.into_body();
            let mut read = 0u64;
            while read < half {
                match body.frame().await {
                    Some(Ok(f)) => read += f.data_ref().map(|d| d.len() as u64).unwrap_or(0),
                    _ => break,
                }
            }
            let mut resp = Response::new(dropped_body());
            resp.headers_mut()
                .insert(header::CONTENT_LENGTH, 4096.into());
            sh.record(&arrival, 0);
            return resp;
        }
        Some(Action::DropReply) => {
            let resp = next.run(req).await;
            // Let the handler finish its work (its body may stream), then
            // break the connection instead of delivering the reply.
            let _ = resp.into_body().collect().await;
            let mut resp = Response::new(dropped_body());
            resp.headers_mut()
                .insert(header::CONTENT_LENGTH, 4096.into());
            sh.record(&arrival, 0);
            return resp;
        }
        Some(Action::Html) => {
            let mut resp = Response::new(Body::from(
                "<!DOCTYPE html><html><body><h1>Sign in to continue</h1>\
                 <p>This network requires you to accept its terms (emulated fault).</p>\
                 </body></html>",
            ));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/html; charset=utf-8"),
            );
            resp
        }
        None => next.run(req).await,
    };
    if let Some(secs) = resp
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok())
        .filter(|_| primary != RouteClass::Token)
    {
        // The tenant is throttled for everyone until the window ends.
        let until = now + secs * 1000;
        sh.throttled_until_ms.fetch_max(until, Ordering::AcqRel);
    }
    sh.record(&arrival, resp.status().as_u16());
    resp
}

/// Turn a Graph result into a response.
pub fn reply(sh: &Shared, r: Result<Response, GraphError>) -> Response {
    r.unwrap_or_else(|e| e.to_response(sh.clock.now_ms()))
}

/// JSON 200.
pub fn ok_json(v: &serde_json::Value) -> Response {
    json_response(StatusCode::OK, v)
}
