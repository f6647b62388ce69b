//! [`GraphRemote`]: the [`Remote`] trait over Microsoft Graph (graph-api.md),
//! the only module that knows Graph's URLs and JSON.
//!
//! Every request passes the tenant's [`Throttle`] (a `Retry-After` from any
//! reply pauses all of them), carries `User-Agent: ISV|sharepush|sharepush/<v>`,
//! and is retried here when retrying can fix it: `Retry-After` replies wait
//! exactly that long (up to [`MAX_RETRY_AFTER`]; a zero or unreadable one
//! counts as missing); 429 without it, 500/502/503/504/509 and broken
//! connections back off exponentially with jitter (capped attempts); a 401
//! on a Graph call refreshes the access token once and retries once. What is
//! left is returned as a classified [`RemoteError`] with Graph's innermost
//! error code.
//!
//! Upload URLs carry their own credential: no `Authorization` header is ever
//! sent to them, and they never appear in logs or errors (`reqwest` errors
//! are stripped of their URL).
//!
//! Paths are addressed as `/drives/{d}/root:/{path}:` with each segment
//! percent-encoded on its own (section 2). Site URL + library name resolve
//! to a drive id through `/sites/{host}:{path}` and `/sites/{id}/drives`.
//!
//! What it does not do: decide what to upload, keep state, or read files.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::header::{DATE, HeaderMap, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::TokenProvider;
use super::{
    ChildrenPage, DeltaItem, DeltaNext, DeltaPage, FragmentOutcome, Remote, RemoteError,
    RemoteItem, RemotePath, UploadSession,
};
use crate::config::SiteUrl;
use crate::retry::{MAX_RETRY_AFTER, Throttle};

/// `User-Agent` on every request (graph-api.md section 7: a descriptive
/// agent is how Microsoft tells well-behaved ISV traffic apart).
pub const USER_AGENT: &str = concat!("ISV|sharepush|sharepush/", env!("CARGO_PKG_VERSION"));

/// Characters left as they are in a path segment: RFC 3986 unreserved.
/// Everything else (space, `#`, `%`, `:`, non-ASCII...) is percent-encoded.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Ids (drive `b!...`, composite site ids `host,guid,guid`) keep the
/// sub-delimiters they are made of.
const ID: &AsciiSet = &SEGMENT.remove(b'!').remove(b',');

/// How long an ordinary request (Graph JSON, the token endpoint, a query
/// of an upload session) may take, from connecting to the reply's last
/// byte, before it counts as a broken connection and is retried.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// The slowest upload line a fragment is given time for: 16 KiB/s (128
/// kbit/s). A fragment PUT may take [`REQUEST_TIMEOUT`] plus its size at
/// this rate: a 10 MiB fragment about 13 minutes, inside the 15 minutes a
/// session waits for the next fragment (graph-api.md section 3).
const SLOWEST_LINE: u64 = 16 * 1024;

/// The time limit of one fragment PUT of `len` bytes (see [`SLOWEST_LINE`]),
/// sent at `pace` bytes per second when the job has a bandwidth limit.
fn fragment_timeout(len: u64, pace: Option<u64>) -> Duration {
    let rate = pace.map_or(SLOWEST_LINE, |p| p.clamp(1, SLOWEST_LINE));
    REQUEST_TIMEOUT + Duration::from_secs(len / rate)
}

/// A fragment's body sent at a fixed rate: a chunk of about 50 ms of the
/// rate at a time (between 1 and 64 KiB), each when the bytes before it
/// have had their time. The kernel sends what it is handed at once, so a
/// body handed over whole saturates the line for as long as it takes,
/// then leaves it idle: what a limit is set to prevent (a branch office's
/// calls and browsing share that line). Timed from its first poll, so a
/// retry is paced again from its own start.
struct PacedBody {
    content: Bytes,
    sent: usize,
    rate: u64,
    chunk: usize,
    started: Option<tokio::time::Instant>,
    wait: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl PacedBody {
    fn new(content: Bytes, rate: u64) -> PacedBody {
        let rate = rate.max(1);
        PacedBody {
            content,
            sent: 0,
            rate,
            chunk: (rate / 20).clamp(1024, 64 * 1024) as usize,
            started: None,
            wait: None,
        }
    }
}

impl http_body::Body for PacedBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        use std::future::Future as _;
        use std::task::Poll;
        let this = self.get_mut();
        if this.sent >= this.content.len() {
            return Poll::Ready(None);
        }
        let now = tokio::time::Instant::now();
        let started = *this.started.get_or_insert(now);
        let due = started + Duration::from_secs_f64(this.sent as f64 / this.rate as f64);
        if due > now {
            let wait = this
                .wait
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
            wait.as_mut().reset(due);
            if wait.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        let end = (this.sent + this.chunk).min(this.content.len());
        let frame = this.content.slice(this.sent..end);
        this.sent = end;
        Poll::Ready(Some(Ok(http_body::Frame::data(frame))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent >= self.content.len()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact((self.content.len() - self.sent) as u64)
    }
}

/// The HTTP client for Graph and the token endpoint: rustls with the ring
/// provider and the platform's trust store, connection reuse, HTTP/2 when
/// the server offers it, and timeouts that notice a dead peer without
/// cutting off a slow fragment.
///
/// Not `read_timeout`: in reqwest it runs from the start of the request
/// until the reply's headers, the request body included, so every
/// fragment a slow line needs longer than it for was cut off, and each
/// retry with it. Instead every request has a total limit
/// ([`REQUEST_TIMEOUT`], raised per fragment by its size), and a peer that
/// vanishes mid-fragment is noticed by TCP: data unacknowledged for two
/// minutes (`TCP_USER_TIMEOUT`) or a silent connection (keepalive).
pub fn http_client() -> Result<reqwest::Client, RemoteError> {
    http_client_with(REQUEST_TIMEOUT)
}

/// [`http_client`] with another limit for ordinary requests (tests).
/// Fragments keep theirs.
pub fn http_client_with(request_timeout: Duration) -> Result<reqwest::Client, RemoteError> {
    // Installing twice is harmless (the first one wins).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let builder = reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .connect_timeout(Duration::from_secs(30))
        .timeout(request_timeout)
        .tcp_keepalive(Duration::from_secs(30))
        .pool_idle_timeout(Duration::from_secs(90));
    #[cfg(target_os = "linux")]
    let builder = builder.tcp_user_timeout(Duration::from_secs(120));
    builder.build().map_err(|e| RemoteError::Protocol {
        what: "building the HTTP client",
        detail: e.without_url().to_string(),
    })
}

/// `Retry-After` as a duration: seconds, or an HTTP date; at most
/// [`MAX_RETRY_AFTER`]. A date is measured from the reply's own `Date`
/// when it has one, so our clock being off (a server without time sync)
/// does not lengthen or cancel the wait. Fractional seconds are rounded up (waiting a bit
/// long is harmless, a bit short is one more throttled request). `None`
/// when it is missing, unreadable (negative, not a number nor a date) or
/// no wait at all ("0", a date already past, as a clock ahead of the
/// service's makes every date): then the caller backs off with jitter as
/// without one, instead of retrying at once up to `max_throttled` times,
/// the hammering section 7 warns about.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let cap = MAX_RETRY_AFTER.as_secs_f64();
    let secs = match text.parse::<f64>() {
        Ok(secs) if secs.is_finite() => secs,
        Ok(_) => return None,
        Err(_) => {
            let when = DateTime::parse_from_rfc2822(text).ok()?;
            let now = headers
                .get(DATE)
                .and_then(|d| d.to_str().ok())
                .and_then(|d| DateTime::parse_from_rfc2822(d.trim()).ok())
                .map(|d| d.with_timezone(&Utc))
                .unwrap_or_else(Utc::now);
            (when.with_timezone(&Utc) - now).num_milliseconds() as f64 / 1000.0
        }
    };
    (secs > 0.0).then(|| Duration::from_secs_f64(secs.min(cap).ceil()))
}

/// Graph's innermost error code: `error.code`, then each nested
/// `innerError`/`innererror` that has one (the deepest is the most specific).
pub(crate) fn innermost_code(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let mut node = v.get("error")?;
    let mut code = node.get("code")?.as_str()?.to_string();
    while let Some(inner) = node.get("innerError").or_else(|| node.get("innererror")) {
        if let Some(c) = inner.get("code").and_then(Value::as_str) {
            code = c.to_string();
        }
        node = inner;
    }
    Some(code)
}

/// The driveItem fields we rely on (section 3 "The driveItem reply").
#[derive(Debug, Deserialize)]
struct ItemJson {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    size: Option<u64>,
    #[serde(rename = "eTag", default)]
    etag: Option<String>,
    #[serde(rename = "cTag", default)]
    ctag: Option<String>,
    #[serde(default)]
    file: Option<FileFacet>,
    #[serde(default)]
    folder: Option<Value>,
    #[serde(rename = "fileSystemInfo", default)]
    fs: Option<FsInfo>,
    #[serde(rename = "parentReference", default)]
    parent: Option<ParentJson>,
    #[serde(default)]
    root: Option<Value>,
}

/// A delta entry: a driveItem, possibly a tombstone (`deleted{}`, no name).
#[derive(Debug, Deserialize)]
struct DeltaItemJson {
    #[serde(flatten)]
    item: ItemJson,
    #[serde(default)]
    deleted: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct ParentJson {
    #[serde(default)]
    id: Option<String>,
}

/// A page of delta or children.
#[derive(Debug, Deserialize)]
struct PageJson<T> {
    #[serde(default = "Vec::new")]
    value: Vec<T>,
    #[serde(rename = "@odata.nextLink", default)]
    next_link: Option<String>,
    #[serde(rename = "@odata.deltaLink", default)]
    delta_link: Option<String>,
}

impl From<DeltaItemJson> for DeltaItem {
    fn from(j: DeltaItemJson) -> DeltaItem {
        let deleted = j.deleted.is_some();
        let item = RemoteItem::from(j.item);
        DeltaItem {
            id: item.id,
            name: item.name,
            parent_id: item.parent_id,
            deleted,
            is_folder: item.is_folder,
            size: item.size,
            etag: item.etag,
            ctag: item.ctag,
            quick_xor: item.quick_xor,
            mtime: item.mtime,
        }
    }
}

#[derive(Debug, Deserialize)]
struct FileFacet {
    #[serde(default)]
    hashes: Option<HashesJson>,
}

#[derive(Debug, Deserialize)]
struct HashesJson {
    #[serde(rename = "quickXorHash", default)]
    quick_xor: Option<String>,
}

#[derive(Debug, Deserialize)]
struct FsInfo {
    #[serde(rename = "lastModifiedDateTime", default)]
    last_modified: Option<String>,
}

impl From<ItemJson> for RemoteItem {
    fn from(j: ItemJson) -> RemoteItem {
        let parent_id = if j.root.is_some() {
            None
        } else {
            j.parent.and_then(|p| p.id)
        };
        RemoteItem {
            id: j.id,
            parent_id,
            name: j.name,
            size: j.size.unwrap_or(0),
            etag: j.etag,
            ctag: j.ctag,
            quick_xor: j
                .file
                .and_then(|f| f.hashes)
                .and_then(|h| h.quick_xor)
                .filter(|h| !h.is_empty()),
            mtime: j
                .fs
                .and_then(|f| f.last_modified)
                .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
                .map(|t| t.with_timezone(&Utc)),
            is_folder: j.folder.is_some(),
        }
    }
}

/// An upload session's status (`createUploadSession`, fragment 202, GET).
#[derive(Debug, Deserialize)]
struct SessionJson {
    #[serde(rename = "uploadUrl", default)]
    upload_url: Option<String>,
    #[serde(rename = "expirationDateTime", default)]
    expires: Option<String>,
    #[serde(rename = "nextExpectedRanges", default)]
    next_expected: Vec<String>,
}

impl SessionJson {
    fn expires(&self) -> Option<DateTime<Utc>> {
        self.expires
            .as_deref()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc))
    }

    /// The first byte the service still expects: the lowest range start.
    fn next_offset(&self) -> Option<u64> {
        self.next_expected
            .iter()
            .filter_map(|r| r.split('-').next()?.trim().parse::<u64>().ok())
            .min()
    }
}

#[derive(Debug, Deserialize)]
struct SiteJson {
    id: String,
}

#[derive(Debug, Deserialize)]
struct DrivesPage {
    #[serde(default)]
    value: Vec<DriveJson>,
    #[serde(rename = "@odata.nextLink", default)]
    next_link: Option<String>,
}

#[derive(Debug, Deserialize)]
struct DriveJson {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(rename = "driveType", default)]
    drive_type: String,
    #[serde(rename = "webUrl", default)]
    web_url: String,
}

/// A finished HTTP exchange: status and the whole (small, JSON) body.
struct Reply {
    status: StatusCode,
    body: Bytes,
}

impl Reply {
    fn json<T: serde::de::DeserializeOwned>(&self, what: &'static str) -> Result<T, RemoteError> {
        serde_json::from_slice(&self.body).map_err(|e| RemoteError::Protocol {
            what,
            detail: format!(
                "{} at line {} column {}",
                category(&e),
                e.line(),
                e.column()
            ),
        })
    }
}

fn category(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Io => "read error",
        serde_json::error::Category::Syntax => "invalid JSON",
        serde_json::error::Category::Data => "missing or mistyped field",
        serde_json::error::Category::Eof => "truncated JSON",
    }
}

/// Whether a request carries the bearer token (Graph) or not (upload URLs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Auth {
    Bearer,
    None,
}

/// Microsoft Graph as a [`Remote`]. One per tenant; cheap to share by
/// reference across jobs and uploads.
#[derive(Debug)]
pub struct GraphRemote {
    /// Shared client: one connection pool for every job.
    http: reqwest::Client,
    /// e.g. `https://graph.microsoft.com/v1.0`, without a trailing `/`.
    graph_url: String,
    /// Access tokens (refreshed ahead of expiry, once after a 401).
    tokens: Arc<TokenProvider>,
    /// The tenant's gate: Retry-After pauses, retry policy, upload slots.
    throttle: Arc<Throttle>,
}

impl GraphRemote {
    /// A remote for the Graph at `graph_url`.
    pub fn new(
        http: reqwest::Client,
        graph_url: &str,
        tokens: Arc<TokenProvider>,
        throttle: Arc<Throttle>,
    ) -> GraphRemote {
        GraphRemote {
            http,
            graph_url: graph_url.trim_end_matches('/').to_string(),
            tokens,
            throttle,
        }
    }

    /// The gate this remote's requests pass.
    pub fn throttle(&self) -> &Arc<Throttle> {
        &self.throttle
    }

    /// `/drives/{d}/root` plus `route`, or `/drives/{d}/root:/{path}:` plus
    /// `route`, each segment encoded on its own.
    fn item_url(&self, drive: &str, path: &RemotePath, route: &str) -> String {
        let mut url = format!(
            "{}/drives/{}/root",
            self.graph_url,
            utf8_percent_encode(drive, ID)
        );
        if !path.is_root() {
            url.push(':');
            for seg in path.segments() {
                url.push('/');
                url.extend(utf8_percent_encode(seg, SEGMENT));
            }
            url.push(':');
        }
        url.push_str(route);
        url
    }

    /// Sends one logical request, retrying what can be retried (see the
    /// module docs). `make` builds the request afresh for each attempt.
    async fn send(
        &self,
        what: &'static str,
        auth: Auth,
        make: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<Reply, RemoteError> {
        let policy = self.throttle.policy();
        let mut failures = 0u32;
        let mut throttled = 0u32;
        let mut refreshed = false;
        loop {
            // The access token is taken after any Retry-After pause, not
            // before: a pause (3600 s observed) outlasts a token's life, and
            // one taken before it would go out expired (a 401, and one more
            // request right after being throttled). A pause that began
            // while the token was fetched is waited out the same way.
            let token = loop {
                self.throttle.ready().await;
                let token = match auth {
                    Auth::Bearer => Some(self.tokens.access_token().await?),
                    Auth::None => None,
                };
                if !self.throttle.is_paused() {
                    break token;
                }
            };
            let mut request = make(&self.http);
            if let Some(t) = &token {
                request = request.bearer_auth(t.expose_secret());
            }
            let outcome = match request.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let wait = retry_after(resp.headers());
                    if let Some(d) = wait {
                        // Before anything else: every other request must see it.
                        self.throttle.pause_for(d);
                    }
                    match resp.bytes().await {
                        Ok(body) => Ok((status, wait, body)),
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            };
            let (status, wait, body) = match outcome {
                Ok(x) => x,
                Err(e) => {
                    failures += 1;
                    if failures >= policy.max_attempts {
                        return Err(RemoteError::Backoff {
                            what: format!("{what}: connection failed"),
                            source: Some(Box::new(e.without_url())),
                        });
                    }
                    let delay = policy.backoff(failures);
                    tracing::debug!(what, attempt = failures, error = %e.without_url(), delay_ms = delay.as_millis() as u64, "request failed; retrying");
                    tokio::time::sleep(delay).await;
                    continue;
                }
            };
            if status.is_success() {
                return Ok(Reply { status, body });
            }
            let code = innermost_code(&body).unwrap_or_default();
            match status.as_u16() {
                401 if auth == Auth::Bearer && !refreshed => {
                    refreshed = true;
                    if let Some(t) = &token {
                        self.tokens.invalidate(t).await;
                    }
                    tracing::debug!(what, code, "access token refused; refreshing once");
                    continue;
                }
                429 | 503 if wait.is_some() => {
                    throttled += 1;
                    if throttled >= policy.max_throttled {
                        return Err(RemoteError::RetryAfter(wait.unwrap_or_default()));
                    }
                    tracing::info!(
                        what,
                        status = status.as_u16(),
                        code,
                        "throttled; waiting as told"
                    );
                    // `ready()` at the top of the loop waits out the pause.
                    continue;
                }
                429 | 500 | 502 | 503 | 504 | 509 => {
                    failures += 1;
                    if failures >= policy.max_attempts {
                        return Err(RemoteError::Backoff {
                            what: format!("{what}: {} {code}", status.as_u16()),
                            source: None,
                        });
                    }
                    let delay = policy.backoff(failures);
                    tracing::debug!(
                        what,
                        status = status.as_u16(),
                        code,
                        attempt = failures,
                        delay_ms = delay.as_millis() as u64,
                        "server error; retrying"
                    );
                    tokio::time::sleep(delay).await;
                    continue;
                }
                416 => return Err(RemoteError::Range { code }),
                507 => return Err(RemoteError::Quota),
                s => {
                    return Err(RemoteError::Permanent {
                        status: s,
                        code: if code.is_empty() {
                            "(no error code)".into()
                        } else {
                            code
                        },
                    });
                }
            }
        }
    }

    async fn get_item(&self, url: String) -> Result<Option<RemoteItem>, RemoteError> {
        match self.send("stat", Auth::Bearer, |c| c.get(&url)).await {
            Ok(reply) => Ok(Some(reply.json::<ItemJson>("stat")?.into())),
            Err(RemoteError::Permanent { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The first page of `/sites/{id}/drives` and any next pages.
    async fn drives_of(&self, site_id: &str) -> Result<Vec<DriveJson>, RemoteError> {
        let mut url = format!(
            "{}/sites/{}/drives",
            self.graph_url,
            utf8_percent_encode(site_id, ID)
        );
        let mut all = Vec::new();
        loop {
            let reply = self
                .send("list libraries", Auth::Bearer, |c| c.get(&url))
                .await?;
            let page: DrivesPage = reply.json("list libraries")?;
            all.extend(page.value);
            match page.next_link {
                Some(next) => url = next,
                None => return Ok(all),
            }
        }
    }
}

/// `fileSystemInfo.lastModifiedDateTime` in Graph's form (UTC, whole seconds).
fn graph_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The last path segment of a URL, percent-decoded ("Shared Documents").
fn last_url_segment(url: &str) -> String {
    let seg = url.trim_end_matches('/').rsplit('/').next().unwrap_or("");
    percent_encoding::percent_decode_str(seg)
        .decode_utf8_lossy()
        .into_owned()
}

impl Remote for GraphRemote {
    async fn resolve_drive(&self, site: &SiteUrl, library: &str) -> Result<String, RemoteError> {
        let mut url = format!("{}/sites/{}", self.graph_url, site.host);
        if !site.path.is_empty() {
            url.push(':');
            // The config may spell the path as a browser shows it (`%20`
            // for a space): decoded first, so it is not encoded twice.
            for seg in site.path.split('/').filter(|s| !s.is_empty()) {
                let seg = percent_encoding::percent_decode_str(seg).decode_utf8_lossy();
                url.push('/');
                url.extend(utf8_percent_encode(&seg, SEGMENT));
            }
        }
        let site_json: SiteJson = match self.send("find site", Auth::Bearer, |c| c.get(&url)).await
        {
            Ok(r) => r.json("find site")?,
            Err(RemoteError::Permanent { status: 404, .. }) => {
                return Err(RemoteError::SiteNotFound {
                    site: site.to_string(),
                });
            }
            Err(e) => return Err(e),
        };
        let drives = self.drives_of(&site_json.id).await?;
        let libraries: Vec<&DriveJson> = drives
            .iter()
            .filter(|d| d.drive_type.is_empty() || d.drive_type == "documentLibrary")
            .collect();
        let found = libraries
            .iter()
            .find(|d| d.name.eq_ignore_ascii_case(library))
            .or_else(|| {
                libraries
                    .iter()
                    .find(|d| last_url_segment(&d.web_url).eq_ignore_ascii_case(library))
            });
        match found {
            Some(d) => Ok(d.id.clone()),
            None => Err(RemoteError::LibraryNotFound {
                site: site.to_string(),
                library: library.to_string(),
                available: libraries.iter().map(|d| d.name.clone()).collect(),
            }),
        }
    }

    async fn stat(
        &self,
        drive: &str,
        path: &RemotePath,
    ) -> Result<Option<RemoteItem>, RemoteError> {
        self.get_item(self.item_url(drive, path, "")).await
    }

    async fn ensure_folder(
        &self,
        drive: &str,
        path: &RemotePath,
    ) -> Result<RemoteItem, RemoteError> {
        let Some((parent, name)) = path.split_last() else {
            return self.stat(drive, path).await?.ok_or(RemoteError::Permanent {
                status: 404,
                code: "itemNotFound (library root)".into(),
            });
        };
        let url = self.item_url(drive, &parent, "/children");
        let body = json!({
            "name": name,
            "folder": {},
            "@microsoft.graph.conflictBehavior": "fail",
        });
        match self
            .send("create folder", Auth::Bearer, |c| c.post(&url).json(&body))
            .await
        {
            Ok(reply) => Ok(reply.json::<ItemJson>("create folder")?.into()),
            Err(RemoteError::Permanent { status: 409, code }) => {
                // Someone (maybe our own earlier, unanswered attempt) made it.
                match self.stat(drive, path).await? {
                    Some(item) if item.is_folder => Ok(item),
                    _ => Err(RemoteError::Permanent {
                        status: 409,
                        code: format!("{code} (a file has this folder's name)"),
                    }),
                }
            }
            Err(e) => Err(e),
        }
    }

    async fn upload_small(
        &self,
        drive: &str,
        path: &RemotePath,
        content: Bytes,
        mtime: DateTime<Utc>,
    ) -> Result<RemoteItem, RemoteError> {
        let url = self.item_url(drive, path, "/content");
        let reply = self
            .send("simple upload", Auth::Bearer, |c| {
                c.put(&url)
                    .query(&[("@microsoft.graph.conflictBehavior", "replace")])
                    .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                    .body(content.clone())
            })
            .await
            .map_err(folder_in_the_way)?;
        let item: RemoteItem = reply.json::<ItemJson>("simple upload")?.into();
        // Simple uploads cannot carry fileSystemInfo (section 5): set it after.
        let patch_url = format!(
            "{}/drives/{}/items/{}",
            self.graph_url,
            utf8_percent_encode(drive, ID),
            utf8_percent_encode(&item.id, ID)
        );
        let body = json!({"fileSystemInfo": {"lastModifiedDateTime": graph_time(mtime)}});
        let reply = self
            .send("set modification time", Auth::Bearer, |c| {
                c.request(Method::PATCH, &patch_url).json(&body)
            })
            .await?;
        Ok(reply.json::<ItemJson>("set modification time")?.into())
    }

    async fn create_session(
        &self,
        drive: &str,
        path: &RemotePath,
        mtime: DateTime<Utc>,
    ) -> Result<UploadSession, RemoteError> {
        let url = self.item_url(drive, path, "/createUploadSession");
        let body = json!({
            "item": {
                "@microsoft.graph.conflictBehavior": "replace",
                "fileSystemInfo": {"lastModifiedDateTime": graph_time(mtime)},
            }
        });
        let reply = self
            .send("create upload session", Auth::Bearer, |c| {
                c.post(&url).json(&body)
            })
            .await
            .map_err(folder_in_the_way)?;
        let s: SessionJson = reply.json("create upload session")?;
        let Some(upload_url) = s.upload_url.clone() else {
            return Err(RemoteError::Protocol {
                what: "create upload session",
                detail: "no uploadUrl".into(),
            });
        };
        Ok(UploadSession {
            url: upload_url,
            expires: s.expires(),
            next_offset: Some(s.next_offset().unwrap_or(0)),
        })
    }

    async fn put_fragment(
        &self,
        session_url: &str,
        offset: u64,
        content: Bytes,
        total: u64,
        pace: Option<u64>,
    ) -> Result<FragmentOutcome, RemoteError> {
        let len = content.len() as u64;
        if len == 0 {
            return Err(RemoteError::Protocol {
                what: "upload fragment",
                detail: "empty fragment".into(),
            });
        }
        let range = format!("bytes {offset}-{}/{total}", offset + len - 1);
        let reply = match self
            .send("upload fragment", Auth::None, |c| {
                let body = match pace {
                    None => reqwest::Body::from(content.clone()),
                    Some(rate) => reqwest::Body::wrap(PacedBody::new(content.clone(), rate)),
                };
                c.put(session_url)
                    .timeout(fragment_timeout(len, pace))
                    .header(reqwest::header::CONTENT_RANGE, &range)
                    .body(body)
            })
            .await
        {
            Ok(r) => r,
            Err(RemoteError::Permanent { status: 404, .. }) => {
                return Err(RemoteError::SessionGone);
            }
            Err(e) => return Err(e),
        };
        if reply.status == StatusCode::ACCEPTED {
            let s: SessionJson = reply.json("upload fragment")?;
            let next_offset = s.next_offset().ok_or(RemoteError::Protocol {
                what: "upload fragment",
                detail: "no nextExpectedRanges".into(),
            })?;
            Ok(FragmentOutcome::Accepted {
                next_offset,
                expires: s.expires(),
            })
        } else {
            Ok(FragmentOutcome::Done(
                reply.json::<ItemJson>("upload fragment")?.into(),
            ))
        }
    }

    async fn query_session(&self, session_url: &str) -> Result<UploadSession, RemoteError> {
        let reply = match self
            .send("query upload session", Auth::None, |c| c.get(session_url))
            .await
        {
            Ok(r) => r,
            Err(RemoteError::Permanent { status: 404, .. }) => {
                return Err(RemoteError::SessionGone);
            }
            Err(e) => return Err(e),
        };
        let s: SessionJson = reply.json("query upload session")?;
        Ok(UploadSession {
            url: session_url.to_string(),
            expires: s.expires(),
            next_offset: s.next_offset(),
        })
    }

    async fn delta_latest(&self, drive: &str) -> Result<String, RemoteError> {
        self.delta_latest_impl(drive).await
    }

    async fn delta_page(&self, link: &str) -> Result<DeltaPage, RemoteError> {
        self.delta_page_impl(link).await
    }

    async fn list_children(
        &self,
        drive: &str,
        folder_id: &str,
        next: Option<&str>,
    ) -> Result<ChildrenPage, RemoteError> {
        let url = match next {
            Some(n) => n.to_string(),
            None => self.items_url(drive, folder_id, "/children"),
        };
        let reply = self
            .send("list folder", Auth::Bearer, |c| c.get(&url))
            .await?;
        let page: PageJson<ItemJson> = reply.json("list folder")?;
        Ok(ChildrenPage {
            items: page.value.into_iter().map(RemoteItem::from).collect(),
            next: page.next_link,
        })
    }

    async fn move_item(
        &self,
        drive: &str,
        item_id: &str,
        parent: &RemotePath,
        name: &str,
    ) -> Result<RemoteItem, RemoteError> {
        let url = self.items_url(drive, item_id, "");
        // The new parent by id, the documented way: an ItemReference's
        // `path` is read-only, and moves by path have failed on business
        // drives. One lookup; a parent not there is the 404 Graph gives.
        let parent_id = match self.stat(drive, parent).await? {
            Some(folder) if folder.is_folder => folder.id,
            Some(_) | None => {
                return Err(RemoteError::Permanent {
                    status: 404,
                    code: "itemNotFound".into(),
                });
            }
        };
        let body = json!({
            "parentReference": {"id": parent_id},
            "name": name,
            "@microsoft.graph.conflictBehavior": "fail",
        });
        let reply = self
            .send("move item", Auth::Bearer, |c| {
                c.request(Method::PATCH, &url).json(&body)
            })
            .await?;
        Ok(reply.json::<ItemJson>("move item")?.into())
    }

    async fn delete_session(&self, session_url: &str) -> Result<(), RemoteError> {
        match self
            .send("cancel upload session", Auth::None, |c| {
                c.delete(session_url)
            })
            .await
        {
            Ok(_) | Err(RemoteError::Permanent { status: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn delete_item(&self, drive: &str, item_id: &str) -> Result<(), RemoteError> {
        let url = format!(
            "{}/drives/{}/items/{}",
            self.graph_url,
            utf8_percent_encode(drive, ID),
            utf8_percent_encode(item_id, ID)
        );
        match self
            .send("delete item", Auth::Bearer, |c| c.delete(&url))
            .await
        {
            Ok(_) | Err(RemoteError::Permanent { status: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl GraphRemote {
    fn items_url(&self, drive: &str, item_id: &str, route: &str) -> String {
        format!(
            "{}/drives/{}/items/{}{route}",
            self.graph_url,
            utf8_percent_encode(drive, ID),
            utf8_percent_encode(item_id, ID)
        )
    }
}

impl GraphRemote {
    pub(crate) async fn delta_latest_impl(&self, drive: &str) -> Result<String, RemoteError> {
        let url = format!(
            "{}/drives/{}/root/delta?token=latest",
            self.graph_url,
            utf8_percent_encode(drive, ID)
        );
        let page = self.delta_page_impl(&url).await?;
        match page.next {
            DeltaNext::Done(link) => Ok(link),
            DeltaNext::More(_) => Err(RemoteError::Protocol {
                what: "delta (token=latest)",
                detail: "a nextLink instead of a deltaLink".into(),
            }),
        }
    }

    pub(crate) async fn delta_page_impl(&self, link: &str) -> Result<DeltaPage, RemoteError> {
        // A stored link naming another service than `graph_url` (changed in
        // the config, or the demo on another port) is of no use there, and
        // the access token is not sent to it: started over, as after a 410.
        if !same_origin(link, &self.graph_url) {
            tracing::info!(
                "the stored delta link is for another service than graph_url; following the library's changes from scratch"
            );
            return Err(RemoteError::ResyncRequired);
        }
        let reply = match self.send("delta", Auth::Bearer, |c| c.get(link)).await {
            Ok(r) => r,
            Err(RemoteError::Permanent { status: 410, .. }) => {
                return Err(RemoteError::ResyncRequired);
            }
            Err(e) => return Err(e),
        };
        let page: PageJson<DeltaItemJson> = reply.json("delta")?;
        let next = match (page.next_link, page.delta_link) {
            (Some(n), _) => DeltaNext::More(n),
            (None, Some(d)) => DeltaNext::Done(d),
            (None, None) => {
                return Err(RemoteError::Protocol {
                    what: "delta",
                    detail: "neither @odata.nextLink nor @odata.deltaLink".into(),
                });
            }
        };
        Ok(DeltaPage {
            items: page.value.into_iter().map(DeltaItem::from).collect(),
            next,
        })
    }
}

/// Whether two URLs have the same scheme, host and port.
fn same_origin(a: &str, b: &str) -> bool {
    match (reqwest::Url::parse(a), reqwest::Url::parse(b)) {
        (Ok(a), Ok(b)) => {
            a.scheme() == b.scheme()
                && a.host_str() == b.host_str()
                && a.port_or_known_default() == b.port_or_known_default()
        }
        _ => false,
    }
}

/// A `409` on a file upload: the path is taken by a folder (a local folder
/// replaced by a file of its name, the folder still in SharePoint). Said so,
/// as the service's code alone does not.
fn folder_in_the_way(e: RemoteError) -> RemoteError {
    match e {
        RemoteError::Permanent { status: 409, code } => RemoteError::Permanent {
            status: 409,
            code: format!(
                "{code} (a folder has this file's name in SharePoint; move or delete it there)"
            ),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_judged_by_scheme_host_and_port() {
        let graph = "https://graph.microsoft.com/v1.0";
        assert!(same_origin(
            "https://graph.microsoft.com/v1.0/drives/b!x/root/delta?token=T",
            graph
        ));
        assert!(same_origin("https://GRAPH.microsoft.com:443/v1.0/x", graph));
        assert!(!same_origin("https://graph.microsoft.us/v1.0/x", graph));
        assert!(!same_origin("http://graph.microsoft.com/v1.0/x", graph));
        assert!(!same_origin(
            "http://127.0.0.1:8070/v1.0/x",
            "http://127.0.0.1:8071/v1.0"
        ));
        assert!(!same_origin("not a url", graph));
    }

    #[test]
    fn delta_entries_parse_live_and_deleted() {
        let page: PageJson<DeltaItemJson> = serde_json::from_str(
            r#"{"value":[
                {"id":"R","name":"root","root":{},"folder":{"childCount":1},"parentReference":{"driveId":"d"}},
                {"id":"A","name":"a.txt","size":3,"eTag":"\"{X},2\"","parentReference":{"id":"R"},
                 "file":{"hashes":{"quickXorHash":"Q"}}},
                {"id":"B","deleted":{"state":"deleted"},"size":0,"parentReference":{"id":"R"},"file":{}}
            ],"@odata.deltaLink":"http://x/delta?token=t"}"#,
        )
        .unwrap();
        let items: Vec<DeltaItem> = page.value.into_iter().map(DeltaItem::from).collect();
        assert_eq!(items[0].parent_id, None);
        assert!(items[0].is_folder);
        assert_eq!(items[1].parent_id.as_deref(), Some("R"));
        assert_eq!(items[1].quick_xor.as_deref(), Some("Q"));
        assert!(!items[1].deleted);
        assert!(items[2].deleted && items[2].name.is_empty());
        assert_eq!(page.delta_link.as_deref(), Some("http://x/delta?token=t"));
    }

    #[test]
    fn innermost_code_walks_nested_errors() {
        let body = br#"{"error":{"code":"invalidRequest","message":"x","innerError":{"code":"invalidPath","innerError":{"date":"d"}}}}"#;
        assert_eq!(innermost_code(body).as_deref(), Some("invalidPath"));
        let range = br#"{"error":{"code":"invalidRange","innererror":{"code":"fragmentOverlap"}}}"#;
        assert_eq!(innermost_code(range).as_deref(), Some("fragmentOverlap"));
        let flat = br#"{"error":{"code":"itemNotFound","message":"m","innerError":{"date":"d"}}}"#;
        assert_eq!(innermost_code(flat).as_deref(), Some("itemNotFound"));
        assert_eq!(innermost_code(b"not json"), None);
    }

    #[test]
    fn retry_after_is_seconds_or_a_date() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, "120".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(120)));
        let soon = (Utc::now() + chrono::Duration::seconds(90)).to_rfc2822();
        h.insert(RETRY_AFTER, soon.replace("+0000", "GMT").parse().unwrap());
        let d = retry_after(&h).expect("a date 90 s ahead");
        assert!(
            d > Duration::from_secs(80) && d <= Duration::from_secs(90),
            "{d:?}"
        );
    }

    #[test]
    fn a_retry_after_date_is_measured_from_the_replys_date_not_our_clock() {
        // The service's clock says 2001; ours is years ahead. The wait is
        // the two minutes the service meant, not zero.
        let mut h = HeaderMap::new();
        h.insert(DATE, "Mon, 01 Jan 2001 00:00:00 GMT".parse().unwrap());
        h.insert(
            RETRY_AFTER,
            "Mon, 01 Jan 2001 00:02:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), Some(Duration::from_secs(120)));
        // An unreadable Date: our clock, as without one.
        h.insert(DATE, "yesterday".parse().unwrap());
        assert_eq!(retry_after(&h), None, "2001 is past by our clock");
    }

    #[test]
    fn absurd_retry_afters_are_bounded_or_ignored() {
        let of = |text: &str| {
            let mut h = HeaderMap::new();
            h.insert(RETRY_AFTER, text.parse().unwrap());
            retry_after(&h)
        };
        // Huge: capped (u64::MAX seconds overflowed the clock when paused).
        assert_eq!(of("18446744073709551615"), Some(MAX_RETRY_AFTER));
        assert_eq!(of("99999999999999999999999"), Some(MAX_RETRY_AFTER));
        let next_year = (Utc::now() + chrono::Duration::days(365)).to_rfc2822();
        assert_eq!(of(&next_year), Some(MAX_RETRY_AFTER));
        // Fractional: rounded up, not dropped.
        assert_eq!(of("1.5"), Some(Duration::from_secs(2)));
        assert_eq!(of("0.2"), Some(Duration::from_secs(1)));
        // No wait, or nonsense: none (the caller backs off with jitter).
        assert_eq!(of("0"), None);
        assert_eq!(
            of("Sun, 06 Nov 1994 08:49:37 GMT"),
            None,
            "a date in the past"
        );
        assert_eq!(of("-5"), None);
        assert_eq!(of("NaN"), None);
        assert_eq!(of("inf"), None);
        assert_eq!(of("soon"), None);
    }

    #[test]
    fn segments_are_encoded_one_by_one() {
        let http = http_client().unwrap();
        let remote = GraphRemote {
            http: http.clone(),
            graph_url: "https://graph.microsoft.com/v1.0".into(),
            tokens: Arc::new(TokenProvider::new(
                crate::config::AuthSpec {
                    tenant: "t".into(),
                    client_id: "c".into(),
                    mode: crate::config::AuthMode::DeviceCode,
                    authority: "https://login.microsoftonline.com".into(),
                    graph_url: "https://graph.microsoft.com/v1.0".into(),
                },
                http,
                std::path::Path::new("/nonexistent"),
                Default::default(),
            )),
            throttle: Arc::new(Throttle::new(1, Default::default())),
        };
        let path = RemotePath::from_segments(vec![
            "Backups".into(),
            "a b#c%d".into(),
            "ünï：x.txt".into(),
        ]);
        assert_eq!(
            remote.item_url("b!x-Y_z", &path, "/content"),
            "https://graph.microsoft.com/v1.0/drives/b!x-Y_z/root:/Backups/a%20b%23c%25d/\
             %C3%BCn%C3%AF%EF%BC%9Ax.txt:/content"
        );
        assert_eq!(
            remote.item_url("d", &RemotePath::root(), "/children"),
            "https://graph.microsoft.com/v1.0/drives/d/root/children"
        );
    }

    #[test]
    fn items_parse_from_the_documented_reply() {
        let j: ItemJson = serde_json::from_str(
            r#"{"id":"01ABC","name":"a.txt","size":5,"eTag":"\"{X},2\"","cTag":"c",
                "file":{"mimeType":"text/plain","hashes":{"quickXorHash":"AAAA"}},
                "fileSystemInfo":{"lastModifiedDateTime":"2026-01-02T03:04:05Z"}}"#,
        )
        .unwrap();
        let item = RemoteItem::from(j);
        assert_eq!(item.quick_xor.as_deref(), Some("AAAA"));
        assert_eq!(
            item.mtime.unwrap().to_rfc3339(),
            "2026-01-02T03:04:05+00:00"
        );
        assert!(!item.is_folder);
        let s: SessionJson =
            serde_json::from_str(r#"{"nextExpectedRanges":["327680-","0-100"]}"#).unwrap();
        assert_eq!(s.next_offset(), Some(0));
    }
}
