//! The Graph drive API under `/v1.0` (graph-api.md §2-6, §8): sites,
//! drives, items by id and by path, children with paging, folders, simple
//! upload, PATCH, DELETE, downloads and delta.
//!
//! Paths are parsed from the raw URI, never from a router's decoded view,
//! because `%2F` inside one segment is a separator only after decoding that
//! segment (§2). Upload sessions live in `upload`; this module only routes
//! `createUploadSession` there. Every URL handed out (nextLink, deltaLink,
//! download URLs) is built from the `Host` the client used.

use crate::auth::AccessToken;
use crate::clock::{fmt_ms, parse_rfc3339_ms};
use crate::error::GraphError;
use crate::names::{check_name, check_path_len};
use crate::qxh::QuickXor;
use crate::server::{Shared, lock, ok_json, reply};
use crate::store::{Conflict, Drive, FileContent, Item, Resolved, Store};
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::Response;
use base64::Engine as _;
use http_body_util::BodyExt as _;
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use serde_json::{Value, json};
use sha1::{Digest, Sha1};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Characters escaped in webUrl and link path segments.
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'/');

/// Per-request facts handlers need.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// `scheme://host` the client used.
    pub base: String,
    /// Emulator time.
    pub now_ms: i64,
    /// SharePoint host name for webUrls.
    pub hostname: String,
}

/// Parsed query string (last value wins).
pub type Query = HashMap<String, String>;

/// Parse a raw query string.
pub fn parse_query(q: Option<&str>) -> Query {
    form_urlencoded::parse(q.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

/// Decode a raw path like `/a%2Fb/./c%20d` into segments `a`, `b`, `c d`.
pub fn decode_segments(raw: &str) -> Result<Vec<String>, GraphError> {
    let mut out = Vec::new();
    for seg in raw.split('/') {
        let decoded = percent_decode_str(seg)
            .decode_utf8()
            .map_err(|_| GraphError::bad_request("Path is not valid UTF-8").inner("invalidPath"))?;
        for part in decoded.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    return Err(GraphError::bad_request("'..' is not allowed in paths")
                        .inner("invalidPath"));
                }
                p => out.push(p.to_string()),
            }
        }
    }
    Ok(out)
}

fn encode_segment(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

fn mime_type(name: &str) -> &'static str {
    let ext = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "txt" | "log" | "md" => "text/plain",
        "csv" => "text/csv",
        "html" | "htm" => "text/html",
        "json" => "application/json",
        "xml" => "application/xml",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "gz" | "tgz" => "application/gzip",
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "xlsx" => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "pptx" => "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        _ => "application/octet-stream",
    }
}

/// webUrl of a drive-relative path.
fn web_url(store: &Store, ctx: &Ctx, drive: usize, rel: &str) -> String {
    let full = store.server_relative(drive, &store.drives[drive].root_id, "");
    let mut url = format!("https://{}", ctx.hostname);
    for seg in full
        .split('/')
        .chain(rel.split('/'))
        .filter(|s| !s.is_empty())
    {
        url.push('/');
        url.push_str(&encode_segment(seg));
    }
    url
}

fn download_tempauth(secret: &str, drive: &str, item: &str) -> String {
    let mut h = Sha1::new();
    h.update(format!("{secret}:{drive}:{item}").as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(h.finalize())
}

/// The driveItem JSON (graph-api.md §3 "The driveItem reply"). In delta,
/// `parentReference` carries no `path` (§6).
pub fn item_json(
    sh: &Shared,
    store: &Store,
    drive: usize,
    item: &Item,
    ctx: &Ctx,
    in_delta: bool,
) -> Value {
    let d = &store.drives[drive];
    let site = &store.sites[d.site];
    let rel = d.rel_path(&item.id);
    let user =
        json!({"user": {"displayName": "Emulator User", "email": "user@contoso.onmicrosoft.com"}});
    let mut v = json!({
        "id": item.id,
        "name": item.name,
        "size": if item.folder { d.size_of(&item.id) } else { item.size },
        "eTag": item.etag(),
        "cTag": item.ctag(),
        "createdDateTime": fmt_ms(item.created_ms),
        "lastModifiedDateTime": fmt_ms(item.modified_ms),
        "webUrl": web_url(store, ctx, drive, &rel),
        "createdBy": user,
        "lastModifiedBy": user,
        "fileSystemInfo": {
            "createdDateTime": fmt_ms(item.fs_created_ms),
            "lastModifiedDateTime": fmt_ms(item.fs_modified_ms),
        },
    });
    let mut parent = json!({"driveId": d.id, "driveType": "documentLibrary", "siteId": site.id});
    match &item.parent {
        None => {
            v["root"] = json!({});
        }
        Some(p) => {
            parent["id"] = json!(p);
            if !in_delta {
                let prel = d.rel_path(p);
                let mut path = format!("/drives/{}/root:", d.id);
                if !prel.is_empty() {
                    path.push('/');
                    path.push_str(&prel);
                }
                parent["path"] = json!(path);
                if let Some(pi) = d.get(p) {
                    parent["name"] = json!(if pi.parent.is_none() {
                        d.url_segment.as_str()
                    } else {
                        pi.name.as_str()
                    });
                }
            }
        }
    }
    v["parentReference"] = parent;
    if item.folder {
        let n = d.children.get(&item.id).map(|c| c.len()).unwrap_or(0);
        v["folder"] = json!({"childCount": n});
    } else {
        let hashes = if sh.hide_hashes.load(std::sync::atomic::Ordering::Acquire) {
            json!({})
        } else {
            json!({"quickXorHash": item.hash})
        };
        v["file"] = json!({
            "mimeType": mime_type(&item.name),
            "hashes": hashes,
        });
        v["@microsoft.graph.downloadUrl"] = json!(format!(
            "{}/_download/{}/{}?tempauth={}",
            ctx.base,
            d.id,
            item.id,
            download_tempauth(&sh.download_secret, &d.id, &item.id)
        ));
    }
    v
}

fn tombstone_json(d: &Drive, t: &crate::store::Tombstone) -> Value {
    let mut v = json!({
        "id": t.id,
        "deleted": {"state": "deleted"},
        "size": 0,
        "parentReference": {"driveId": d.id, "driveType": "documentLibrary", "id": t.parent},
    });
    if t.folder {
        v["folder"] = json!({"childCount": 0});
    } else {
        v["file"] = json!({});
    }
    v
}

fn site_json(store: &Store, ctx: &Ctx, site: usize) -> Value {
    let s = &store.sites[site];
    let web = if s.path == "/" {
        format!("https://{}", ctx.hostname)
    } else {
        format!("https://{}{}", ctx.hostname, s.path)
    };
    let mut v = json!({
        "id": s.id,
        "name": s.name,
        "displayName": if s.path == "/" { "Communication site".to_string() } else { s.name.clone() },
        "webUrl": web,
        "createdDateTime": "2024-01-01T00:00:00Z",
        "lastModifiedDateTime": "2024-01-01T00:00:00Z",
        "siteCollection": {"hostname": ctx.hostname},
    });
    if s.path == "/" {
        v["root"] = json!({});
    }
    v
}

fn drive_json(store: &Store, ctx: &Ctx, drive: usize) -> Value {
    let d = &store.drives[drive];
    let used = d.used();
    let total = store.quota;
    let remaining = total.saturating_sub(used);
    let state = if remaining == 0 {
        "exceeded"
    } else if remaining < total / 100 {
        "critical"
    } else if remaining < total / 10 {
        "nearing"
    } else {
        "normal"
    };
    json!({
        "id": d.id,
        "name": d.name,
        "description": "",
        "driveType": "documentLibrary",
        "webUrl": web_url(store, ctx, drive, ""),
        "createdDateTime": "2024-01-01T00:00:00Z",
        "lastModifiedDateTime": fmt_ms(d.items.get(&d.root_id).map(|r| r.modified_ms).unwrap_or(0)),
        "createdBy": {"user": {"displayName": "System Account"}},
        "owner": {"group": {"displayName": format!("{} Owners", store.sites[d.site].name)}},
        "quota": {"deleted": 0, "remaining": remaining, "state": state, "total": total, "used": used},
    })
}

fn need_read(t: &AccessToken) -> Result<(), GraphError> {
    if t.can_read() {
        Ok(())
    } else {
        Err(GraphError::new(
            StatusCode::FORBIDDEN,
            "accessDenied",
            "Access denied: the token has no read permission",
        ))
    }
}

fn need_write(t: &AccessToken) -> Result<(), GraphError> {
    if t.can_write() {
        Ok(())
    } else {
        Err(GraphError::new(
            StatusCode::FORBIDDEN,
            "accessDenied",
            "Access denied: the token has no write permission",
        ))
    }
}

/// Entry point for `/v1.0/*`.
pub async fn dispatch(State(sh): State<Arc<Shared>>, req: Request) -> Response {
    let r = handle(&sh, req).await;
    reply(&sh, r)
}

async fn handle(sh: &Arc<Shared>, req: Request) -> Result<Response, GraphError> {
    let now = sh.clock.now_ms();
    let token = lock(&sh.auth).authenticate(req.headers(), now)?;
    let ctx = Ctx {
        base: sh.base_url(req.headers()),
        now_ms: now,
        hostname: sh.opts.hostname.clone(),
    };
    let raw = req
        .uri()
        .path()
        .strip_prefix("/v1.0")
        .unwrap_or("")
        .to_string();
    let query = parse_query(req.uri().query());
    if let Some(rest) = raw.strip_prefix("/sites/") {
        need_read(&token)?;
        let (drive, tail) = {
            let store = lock(&sh.store);
            match site_route(&store, &ctx, rest)? {
                SiteRoute::Reply(v) => return Ok(ok_json(&v)),
                SiteRoute::Drive(d, tail) => (d, tail),
            }
        };
        return drive_route(sh, &ctx, &token, req, drive, &tail, &query).await;
    }
    if let Some(rest) = raw.strip_prefix("/drives/") {
        let (id, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let id = percent_decode_str(id).decode_utf8_lossy().into_owned();
        let drive = lock(&sh.store)
            .drive_index(&id)
            .ok_or_else(|| GraphError::not_found("The drive could not be found"))?;
        let tail = tail.to_string();
        return drive_route(sh, &ctx, &token, req, drive, &tail, &query).await;
    }
    Err(GraphError::bad_request(format!(
        "Resource not found for the segment '{}'",
        raw.trim_start_matches('/')
    )))
}

enum SiteRoute {
    Reply(Value),
    Drive(usize, String),
}

fn site_route(store: &Store, ctx: &Ctx, rest: &str) -> Result<SiteRoute, GraphError> {
    let not_found = || GraphError::not_found("Requested site could not be found");
    let (site, tail) = if let Some((host, after)) = rest.split_once(':') {
        // hostname:/server/relative/path[:[/tail]]
        if !host.eq_ignore_ascii_case(&ctx.hostname) {
            return Err(not_found());
        }
        let (path, tail) = match after.split_once(':') {
            Some((p, t)) => (p, t.to_string()),
            None => (after, String::new()),
        };
        let segs = decode_segments(path)?;
        let want = format!("/{}", segs.join("/")).to_lowercase();
        let site = store
            .sites
            .iter()
            .position(|s| s.path.to_lowercase() == want)
            .ok_or_else(not_found)?;
        (site, tail)
    } else {
        let (first, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let first = percent_decode_str(first).decode_utf8_lossy().to_lowercase();
        let site = if first == "root" || first == ctx.hostname.to_lowercase() {
            0
        } else {
            store
                .sites
                .iter()
                .position(|s| s.id.to_lowercase() == first)
                .ok_or_else(not_found)?
        };
        (site, tail.to_string())
    };
    match tail.as_str() {
        "" => Ok(SiteRoute::Reply(site_json(store, ctx, site))),
        "/drives" => {
            let value: Vec<Value> = store
                .site_drives(site)
                .map(|d| drive_json(store, ctx, d))
                .collect();
            Ok(SiteRoute::Reply(json!({"value": value})))
        }
        t => {
            let first_drive = store.site_drives(site).next();
            if let Some(after) = t.strip_prefix("/drive")
                && (after.is_empty() || after.starts_with('/'))
            {
                let d =
                    first_drive.ok_or_else(|| GraphError::not_found("The site has no library"))?;
                return Ok(SiteRoute::Drive(d, after.to_string()));
            }
            if let Some(after) = t.strip_prefix("/drives/") {
                let (id, tail) = after.split_at(after.find('/').unwrap_or(after.len()));
                let id = percent_decode_str(id).decode_utf8_lossy();
                let d = store
                    .site_drives(site)
                    .find(|&d| store.drives[d].id == id)
                    .ok_or_else(|| GraphError::not_found("The drive could not be found"))?;
                return Ok(SiteRoute::Drive(d, tail.to_string()));
            }
            Err(GraphError::bad_request(format!(
                "Resource not found for the segment '{t}'"
            )))
        }
    }
}

/// An address inside a drive: a base item and path segments below it.
#[derive(Debug)]
struct Address {
    /// Item id the path starts from.
    base: String,
    /// Decoded segments (empty when addressing `base` itself).
    segments: Vec<String>,
    /// Whether `base` was given as `root`.
    base_is_root: bool,
    /// What follows the item: "", "/children", "/content", ...
    route: String,
}

fn parse_address(d: &Drive, tail: &str) -> Result<Address, GraphError> {
    let (base, after, base_is_root) = if let Some(after) = tail.strip_prefix("/root") {
        (d.root_id.clone(), after, true)
    } else if let Some(after) = tail.strip_prefix("/items/") {
        let end = after.find(['/', ':']).unwrap_or(after.len());
        let id = percent_decode_str(&after[..end])
            .decode_utf8_lossy()
            .into_owned();
        let is_root = id == d.root_id || id.eq_ignore_ascii_case("root");
        let id = if id.eq_ignore_ascii_case("root") {
            d.root_id.clone()
        } else {
            id
        };
        (id, &after[end..], is_root)
    } else {
        return Err(GraphError::bad_request(format!(
            "Resource not found for the segment '{}'",
            tail.trim_start_matches('/')
        )));
    };
    if let Some(path_and_route) = after.strip_prefix(':') {
        let (path, route) = match path_and_route.split_once(':') {
            Some((p, r)) => (p, r),
            None => (path_and_route, ""),
        };
        let segments = decode_segments(path)?;
        return Ok(Address {
            base,
            segments,
            base_is_root,
            route: route.to_string(),
        });
    }
    Ok(Address {
        base,
        segments: Vec::new(),
        base_is_root,
        route: after.to_string(),
    })
}

async fn drive_route(
    sh: &Arc<Shared>,
    ctx: &Ctx,
    token: &AccessToken,
    req: Request,
    drive: usize,
    tail: &str,
    query: &Query,
) -> Result<Response, GraphError> {
    let method = req.method().clone();
    if tail.is_empty() {
        need_read(token)?;
        if method != Method::GET {
            return Err(method_not_allowed());
        }
        let store = lock(&sh.store);
        return Ok(ok_json(&drive_json(&store, ctx, drive)));
    }
    let addr = {
        let store = lock(&sh.store);
        parse_address(&store.drives[drive], tail)?
    };
    let route = addr.route.trim_end_matches('/').to_string();
    match (method.clone(), route.as_str()) {
        (Method::GET, "") => {
            need_read(token)?;
            let store = lock(&sh.store);
            let id = found(&store, drive, &addr)?;
            let item = store.drives[drive].get(&id).expect("resolved");
            Ok(ok_json(&item_json(sh, &store, drive, item, ctx, false)))
        }
        (Method::GET, "/children") => {
            need_read(token)?;
            children(sh, ctx, drive, &addr, query, req.uri().path())
        }
        (Method::POST, "/children") => {
            need_write(token)?;
            create_folder(sh, ctx, drive, &addr, req).await
        }
        (Method::GET, "/content") => {
            need_read(token)?;
            let store = lock(&sh.store);
            let id = found(&store, drive, &addr)?;
            let item = store.drives[drive].get(&id).expect("resolved");
            if item.folder {
                return Err(GraphError::bad_request("Cannot download a folder"));
            }
            let url =
                item_json(sh, &store, drive, item, ctx, false)["@microsoft.graph.downloadUrl"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
            let mut resp = Response::new(Body::empty());
            *resp.status_mut() = StatusCode::FOUND;
            if let Ok(v) = url.parse() {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            Ok(resp)
        }
        (Method::PUT, "/content") => {
            need_write(token)?;
            simple_upload(sh, ctx, drive, &addr, query, req).await
        }
        (Method::POST, "/createUploadSession") => {
            need_write(token)?;
            crate::upload::create(sh, ctx, drive, &addr.base, &addr.segments, query, req).await
        }
        (Method::GET, "/delta") | (Method::GET, "/delta()") => {
            need_read(token)?;
            if !addr.base_is_root || !addr.segments.is_empty() {
                return Err(GraphError::bad_request(
                    "Delta is only supported on the root of a document library",
                ));
            }
            delta(sh, ctx, drive, query, req.uri().path())
        }
        (Method::PATCH, "") => {
            need_write(token)?;
            patch(sh, ctx, drive, &addr, req).await
        }
        (Method::DELETE, "") => {
            need_write(token)?;
            delete(sh, drive, &addr, req.headers())
        }
        (_, "" | "/children" | "/content" | "/createUploadSession" | "/delta") => {
            Err(method_not_allowed())
        }
        (_, r) => Err(GraphError::bad_request(format!(
            "Resource not found for the segment '{}'",
            r.trim_start_matches('/')
        ))),
    }
}

fn method_not_allowed() -> GraphError {
    GraphError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalidRequest",
        "The HTTP method is not allowed on this resource",
    )
}

/// Resolve an address that must exist.
fn found(store: &Store, drive: usize, addr: &Address) -> Result<String, GraphError> {
    let d = &store.drives[drive];
    if d.get(&addr.base).is_none() {
        return Err(GraphError::not_found("The resource could not be found."));
    }
    match d.resolve(&addr.base, &addr.segments) {
        Resolved::Found(id) => Ok(id),
        _ => Err(GraphError::not_found("The resource could not be found.")),
    }
}

fn if_match(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn children(
    sh: &Shared,
    ctx: &Ctx,
    drive: usize,
    addr: &Address,
    query: &Query,
    raw_path: &str,
) -> Result<Response, GraphError> {
    let store = lock(&sh.store);
    let id = found(&store, drive, addr)?;
    let d = &store.drives[drive];
    if !d.get(&id).is_some_and(|i| i.folder) {
        return Err(GraphError::bad_request("The item is not a folder"));
    }
    let top = match query.get("$top") {
        Some(t) => t
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| GraphError::bad_request("Invalid $top"))?
            .min(1000),
        None => sh.opts.page_size,
    };
    let skip = match query.get("$skiptoken") {
        Some(t) => t
            .parse::<usize>()
            .map_err(|_| GraphError::bad_request("Invalid $skiptoken"))?,
        None => 0,
    };
    let ids: Vec<&String> = d
        .children
        .get(&id)
        .map(|c| c.values().collect())
        .unwrap_or_default();
    let page: Vec<Value> = ids
        .iter()
        .skip(skip)
        .take(top)
        .filter_map(|k| d.get(k))
        .map(|i| item_json(sh, &store, drive, i, ctx, false))
        .collect();
    let mut body = json!({"value": page});
    if skip + top < ids.len() {
        let mut q: Vec<(String, String)> = query
            .iter()
            .filter(|(k, _)| k.as_str() != "$skiptoken" && k.as_str() != "$top")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        q.push(("$top".into(), top.to_string()));
        q.push(("$skiptoken".into(), (skip + top).to_string()));
        let qs = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(q)
            .finish();
        body["@odata.nextLink"] = json!(format!("{}{raw_path}?{qs}", ctx.base));
    }
    Ok(ok_json(&body))
}

async fn read_json(req: Request) -> Result<Value, GraphError> {
    let bytes = req
        .into_body()
        .collect()
        .await
        .map_err(|_| GraphError::bad_request("Could not read the request body"))?
        .to_bytes();
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(json!({}));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| GraphError::bad_request(format!("Invalid JSON body: {e}")))
}

/// `@microsoft.graph.conflictBehavior` from a JSON object (or the older
/// `@name.conflictBehavior`).
pub fn conflict_from(v: &Value) -> Result<Option<Conflict>, GraphError> {
    for key in [
        "@microsoft.graph.conflictBehavior",
        "@name.conflictBehavior",
    ] {
        if let Some(c) = v.get(key) {
            let s = c
                .as_str()
                .ok_or_else(|| GraphError::bad_request("conflictBehavior must be a string"))?;
            return Conflict::parse(s).map(Some);
        }
    }
    Ok(None)
}

/// Conflict behaviour from the query string.
pub fn conflict_from_query(q: &Query) -> Result<Option<Conflict>, GraphError> {
    match q
        .get("@microsoft.graph.conflictBehavior")
        .or_else(|| q.get("@name.conflictBehavior"))
    {
        Some(s) => Conflict::parse(s).map(Some),
        None => Ok(None),
    }
}

/// Check a name about to be created in `parent` and its full path length.
pub fn check_new(
    store: &Store,
    drive: usize,
    parent: &str,
    name: &str,
    folder: bool,
) -> Result<(), GraphError> {
    let d = &store.drives[drive];
    check_name(name, parent == d.root_id, folder)?;
    check_path_len(&store.server_relative(drive, parent, name))
}

async fn create_folder(
    sh: &Shared,
    ctx: &Ctx,
    drive: usize,
    addr: &Address,
    req: Request,
) -> Result<Response, GraphError> {
    let body = read_json(req).await?;
    let name = body
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| GraphError::bad_request("The request body must contain 'name'"))?
        .to_string();
    if body.get("folder").is_none() {
        return Err(GraphError::bad_request(
            "Only folders can be created here: the body needs a 'folder' facet",
        ));
    }
    let conflict = conflict_from(&body)?.unwrap_or(Conflict::Fail);
    let mut store = lock(&sh.store);
    let parent = found(&store, drive, addr)?;
    if !store.drives[drive].get(&parent).is_some_and(|p| p.folder) {
        return Err(GraphError::bad_request("The parent is not a folder"));
    }
    check_new(&store, drive, &parent, &name, true)?;
    let id = store.create_folder(drive, &parent, &name, conflict, ctx.now_ms)?;
    let item = store.drives[drive].get(&id).expect("just created");
    let v = item_json(sh, &store, drive, item, ctx, false);
    drop(store);
    sh.changed();
    Ok(crate::error::json_response(StatusCode::CREATED, &v))
}

/// Where a file write goes.
#[derive(Debug)]
pub struct FileTarget {
    /// Parent folder id.
    pub parent: String,
    /// File name.
    pub name: String,
    /// Existing file at that name, if any.
    pub existing: Option<String>,
}

/// Resolve the target of an upload (simple or session) and check names,
/// path length and `If-Match`; `by_id` addresses an existing file directly.
pub fn upload_target(
    store: &Store,
    drive: usize,
    base: &str,
    segments: &[String],
    headers: &HeaderMap,
) -> Result<FileTarget, GraphError> {
    let d = &store.drives[drive];
    if d.get(base).is_none() {
        return Err(GraphError::not_found("The resource could not be found."));
    }
    let im = if_match(headers);
    let target = match d.resolve(base, segments) {
        Resolved::Found(id) => {
            let item = d.get(&id).expect("resolved");
            if item.folder {
                if segments.is_empty() {
                    return Err(GraphError::bad_request("Cannot upload content to a folder"));
                }
                return Err(GraphError::name_exists(&item.name));
            }
            if let Some(m) = &im
                && !item.matches(m)
            {
                return Err(GraphError::precondition());
            }
            FileTarget {
                parent: item.parent.clone().unwrap_or_default(),
                name: item.name.clone(),
                existing: Some(id),
            }
        }
        Resolved::Missing { parent, name } => {
            if im.is_some() {
                return Err(GraphError::precondition());
            }
            check_new(store, drive, &parent, &name, false)?;
            FileTarget {
                parent,
                name,
                existing: None,
            }
        }
        Resolved::NoParent => {
            return Err(GraphError::not_found("The parent folder does not exist"));
        }
    };
    Ok(target)
}

/// Bytes SharePoint appends to Office/PDF/HTML files (when enabled).
pub const REWRITE_TRAILER: &[u8] =
    b"\n<!-- graph-emulator: SharePoint metadata added after upload -->\n";

/// Does SharePoint rewrite files with this name?
pub fn rewritten(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    [".docx", ".xlsx", ".pptx", ".pdf", ".html", ".htm"]
        .iter()
        .any(|e| lower.ends_with(e))
}

/// Why streaming a body to disk stopped.
#[derive(Debug)]
pub enum StreamError {
    /// More bytes than allowed.
    TooLarge,
    /// The client went away or sent a broken body.
    Client,
    /// Disk trouble.
    Io(std::io::Error),
}

/// Stream a request body into `file`, hashing as it goes. Never holds more
/// than one frame plus the write buffer in memory.
pub async fn stream_to_file(
    body: Body,
    file: tokio::fs::File,
    hasher: &mut QuickXor,
    limit: u64,
) -> Result<u64, StreamError> {
    let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
    let mut body = body;
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| StreamError::Client)?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        n += data.len() as u64;
        if n > limit {
            return Err(StreamError::TooLarge);
        }
        hasher.update(&data);
        out.write_all(&data).await.map_err(StreamError::Io)?;
    }
    out.flush().await.map_err(StreamError::Io)?;
    Ok(n)
}

fn internal(e: std::io::Error) -> GraphError {
    GraphError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "generalException",
        format!("Storage error: {e}"),
    )
}

/// Append SharePoint's rewrite trailer to a finished file if it applies.
pub async fn maybe_rewrite(
    sh: &Shared,
    name: &str,
    path: &std::path::Path,
    hasher: &mut QuickXor,
) -> Result<u64, GraphError> {
    if !sh.opts.rewrite_office || !rewritten(name) {
        return Ok(0);
    }
    let mut f = tokio::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .await
        .map_err(internal)?;
    f.write_all(REWRITE_TRAILER).await.map_err(internal)?;
    f.flush().await.map_err(internal)?;
    hasher.update(REWRITE_TRAILER);
    Ok(REWRITE_TRAILER.len() as u64)
}

async fn simple_upload(
    sh: &Shared,
    ctx: &Ctx,
    drive: usize,
    addr: &Address,
    query: &Query,
    req: Request,
) -> Result<Response, GraphError> {
    let conflict = conflict_from_query(query)?.unwrap_or(Conflict::Replace);
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = || {
        GraphError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "requestTooLarge",
            format!(
                "Simple upload is limited to {} bytes; use an upload session",
                sh.opts.simple_upload_max
            ),
        )
    };
    if declared.is_some_and(|n| n > sh.opts.simple_upload_max) {
        return Err(too_large());
    }
    let target = {
        let store = lock(&sh.store);
        let t = upload_target(&store, drive, &addr.base, &addr.segments, req.headers())?;
        if t.existing.is_some() && conflict == Conflict::Fail {
            return Err(GraphError::name_exists(&t.name));
        }
        let replacing = t
            .existing
            .as_ref()
            .and_then(|id| store.drives[drive].get(id))
            .map(|i| i.size)
            .unwrap_or(0);
        store.check_quota(
            drive,
            declared.unwrap_or(0),
            if conflict == Conflict::Replace {
                replacing
            } else {
                0
            },
        )?;
        t
    };
    let blob = uuid::Uuid::new_v4().simple().to_string();
    let path = lock(&sh.store).blob_path(&blob);
    let file = tokio::fs::File::create(&path).await.map_err(internal)?;
    let mut hasher = QuickXor::new();
    let size = match stream_to_file(
        req.into_body(),
        file,
        &mut hasher,
        sh.opts.simple_upload_max,
    )
    .await
    {
        Ok(n) => n,
        Err(e) => {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(match e {
                StreamError::TooLarge => too_large(),
                StreamError::Client => GraphError::bad_request("The request body was incomplete"),
                StreamError::Io(e) => internal(e),
            });
        }
    };
    let size = size + maybe_rewrite(sh, &target.name, &path, &mut hasher).await?;
    let content = FileContent {
        blob,
        size,
        hash: hasher.digest(),
        fs_created_ms: None,
        fs_modified_ms: None,
    };
    let committed = {
        let mut store = lock(&sh.store);
        store
            .commit_file(
                drive,
                &target.parent,
                &target.name,
                conflict,
                content,
                ctx.now_ms,
            )
            .map(|(id, created, old_blob)| {
                if let Some(old) = old_blob {
                    let _ = std::fs::remove_file(store.blob_path(&old));
                }
                let item = store.drives[drive].get(&id).expect("committed");
                (item_json(sh, &store, drive, item, ctx, false), created)
            })
    };
    match committed {
        Ok((v, created)) => {
            sh.changed();
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(crate::error::json_response(status, &v))
        }
        Err(e) => {
            let _ = tokio::fs::remove_file(&path).await;
            Err(e)
        }
    }
}

fn parse_fs_info(v: &Value) -> Result<(Option<i64>, Option<i64>), GraphError> {
    let Some(fs) = v.get("fileSystemInfo") else {
        return Ok((None, None));
    };
    let get = |k: &str| -> Result<Option<i64>, GraphError> {
        match fs.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => parse_rfc3339_ms(s).map(Some).ok_or_else(|| {
                GraphError::bad_request(format!("Invalid date in fileSystemInfo.{k}: {s}"))
            }),
            Some(_) => Err(GraphError::bad_request(format!(
                "fileSystemInfo.{k} must be a string"
            ))),
        }
    };
    Ok((get("createdDateTime")?, get("lastModifiedDateTime")?))
}

/// `fileSystemInfo` dates from a createUploadSession `item`.
pub fn fs_info(v: &Value) -> Result<(Option<i64>, Option<i64>), GraphError> {
    parse_fs_info(v)
}

async fn patch(
    sh: &Shared,
    ctx: &Ctx,
    drive: usize,
    addr: &Address,
    req: Request,
) -> Result<Response, GraphError> {
    let headers = req.headers().clone();
    let body = read_json(req).await?;
    let (fs_created, fs_modified) = parse_fs_info(&body)?;
    let conflict = conflict_from(&body)?.unwrap_or(Conflict::Fail);
    let mut store = lock(&sh.store);
    let id = found(&store, drive, addr)?;
    let d = &store.drives[drive];
    let item = d.get(&id).expect("resolved").clone();
    if let Some(m) = if_match(&headers)
        && !item.matches(&m)
    {
        return Err(GraphError::precondition());
    }
    let new_name = match body.get("name") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(GraphError::bad_request("name must be a string")),
    };
    let new_parent = match body.get("parentReference") {
        None | Some(Value::Null) => None,
        Some(p) => {
            if let Some(pid) = p.get("id").and_then(Value::as_str) {
                Some(pid.to_string())
            } else if p.get("path").is_some() {
                // An ItemReference's `path` is read-only (Graph's docs move
                // by `id`; moves by path have failed on business drives):
                // the strict side refuses it.
                return Err(GraphError::bad_request(
                    "parentReference.path is read-only: move to a parent by its id",
                ));
            } else {
                None
            }
        }
    };
    if (new_name.is_some() || new_parent.is_some()) && item.parent.is_none() {
        return Err(GraphError::bad_request(
            "The root cannot be renamed or moved",
        ));
    }
    let moved = new_name.as_ref().is_some_and(|n| *n != item.name)
        || new_parent
            .as_ref()
            .is_some_and(|p| Some(p) != item.parent.as_ref());
    if moved {
        let parent = new_parent
            .clone()
            .or(item.parent.clone())
            .unwrap_or_default();
        let mut name = new_name.clone().unwrap_or(item.name.clone());
        if !d.get(&parent).is_some_and(|p| p.folder) {
            return Err(GraphError::not_found("The new parent could not be found"));
        }
        if item.folder && d.is_within(&parent, &id) {
            return Err(GraphError::bad_request(
                "A folder cannot be moved into itself",
            ));
        }
        check_name(&name, parent == d.root_id, item.folder)?;
        if let Some(other) = d.child(&parent, &name).filter(|o| o.id != id) {
            match conflict {
                Conflict::Fail => return Err(GraphError::name_exists(&name)),
                Conflict::Rename => name = d.free_name(&parent, &name),
                Conflict::Replace => {
                    let other = other.id.clone();
                    let blobs = store.drives[drive].remove(&other);
                    for b in blobs {
                        let _ = std::fs::remove_file(store.blob_path(&b));
                    }
                }
            }
        }
        let path_len = store.server_relative(drive, &parent, &name).chars().count()
            + store.drives[drive].deepest_suffix(&id);
        if path_len >= crate::names::MAX_PATH_CHARS {
            return Err(GraphError::bad_request(format!(
                "The path would be {path_len} characters long"
            ))
            .inner("pathIsTooLong"));
        }
        store.drives[drive].relink(&id, &parent, &name, ctx.now_ms);
    }
    let d = &mut store.drives[drive];
    if fs_created.is_some() || fs_modified.is_some() {
        if let Some(it) = d.items.get_mut(&id) {
            if let Some(c) = fs_created {
                it.fs_created_ms = c;
            }
            if let Some(m) = fs_modified {
                it.fs_modified_ms = m;
            }
        }
        d.touch(&id, false, ctx.now_ms);
    }
    let item = store.drives[drive].get(&id).expect("still there");
    let v = item_json(sh, &store, drive, item, ctx, false);
    drop(store);
    sh.changed();
    Ok(ok_json(&v))
}

fn delete(
    sh: &Shared,
    drive: usize,
    addr: &Address,
    headers: &HeaderMap,
) -> Result<Response, GraphError> {
    let mut store = lock(&sh.store);
    let id = found(&store, drive, addr)?;
    let item = store.drives[drive].get(&id).expect("resolved");
    if item.parent.is_none() {
        return Err(GraphError::new(
            StatusCode::FORBIDDEN,
            "accessDenied",
            "The root of a library cannot be deleted",
        ));
    }
    if let Some(m) = if_match(headers)
        && !item.matches(&m)
    {
        return Err(GraphError::precondition());
    }
    let blobs = store.drives[drive].remove(&id);
    let paths: Vec<_> = blobs.iter().map(|b| store.blob_path(b)).collect();
    drop(store);
    for p in paths {
        let _ = std::fs::remove_file(p);
    }
    sh.changed();
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    Ok(resp)
}

/// Delta token: changes after `from`, up to `upto` (0: up to "now" at the
/// first page), after cursor `(depth, seq)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DeltaToken {
    from: u64,
    upto: u64,
    depth: usize,
    seq: u64,
}

impl DeltaToken {
    fn encode(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
            "v1.{}.{}.{}.{}",
            self.from, self.upto, self.depth, self.seq
        ))
    }

    fn decode(s: &str) -> Option<Self> {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .ok()?;
        let text = String::from_utf8(raw).ok()?;
        let mut p = text.strip_prefix("v1.")?.split('.');
        let t = DeltaToken {
            from: p.next()?.parse().ok()?,
            upto: p.next()?.parse().ok()?,
            depth: p.next()?.parse().ok()?,
            seq: p.next()?.parse().ok()?,
        };
        p.next().is_none().then_some(t)
    }
}

fn resync(ctx: &Ctx, raw_path: &str) -> GraphError {
    let mut e = GraphError::new(
        StatusCode::GONE,
        "resyncRequired",
        "Resync required: the delta token is no longer valid",
    )
    .inner("resyncChangesApplyDifferences");
    e.location = Some(format!("{}{raw_path}", ctx.base));
    e
}

fn delta(
    sh: &Shared,
    ctx: &Ctx,
    drive: usize,
    query: &Query,
    raw_path: &str,
) -> Result<Response, GraphError> {
    let store = lock(&sh.store);
    let d = &store.drives[drive];
    let link = |t: DeltaToken| format!("{}{raw_path}?token={}", ctx.base, t.encode());
    let start = match query.get("token").map(String::as_str) {
        Some("latest") => {
            let t = DeltaToken {
                from: d.seq,
                upto: 0,
                depth: 0,
                seq: 0,
            };
            return Ok(ok_json(&json!({"value": [], "@odata.deltaLink": link(t)})));
        }
        Some(tok) => {
            let t = DeltaToken::decode(tok).ok_or_else(|| resync(ctx, raw_path))?;
            if t.from < d.min_valid_seq || t.from > d.seq || (t.upto != 0 && t.upto > d.seq) {
                return Err(resync(ctx, raw_path));
            }
            t
        }
        None => DeltaToken {
            from: 0,
            upto: 0,
            depth: 0,
            seq: 0,
        },
    };
    let upto = if start.upto == 0 { d.seq } else { start.upto };
    let full = start.from == 0;
    let top = match query.get("$top") {
        Some(t) => t
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| GraphError::bad_request("Invalid $top"))?,
        None => sh.opts.page_size,
    };
    enum Entry<'a> {
        Live(&'a Item),
        Gone(&'a crate::store::Tombstone),
    }
    let in_window = |seq: u64| seq > start.from && seq <= upto;
    let mut entries: Vec<(usize, u64, Entry)> = d
        .items
        .values()
        .filter(|i| in_window(i.seq))
        .map(|i| (d.depth(&i.id), i.seq, Entry::Live(i)))
        .collect();
    if !full {
        entries.extend(
            d.tombstones
                .iter()
                .filter(|t| in_window(t.seq))
                .map(|t| (t.depth, t.seq, Entry::Gone(t))),
        );
    }
    entries.retain(|(depth, seq, _)| (*depth, *seq) > (start.depth, start.seq));
    entries.sort_by_key(|(depth, seq, _)| (*depth, *seq));
    let more = entries.len() > top;
    entries.truncate(top);
    let value: Vec<Value> = entries
        .iter()
        .map(|(_, _, e)| match e {
            Entry::Live(i) => item_json(sh, &store, drive, i, ctx, true),
            Entry::Gone(t) => tombstone_json(d, t),
        })
        .collect();
    let mut body = json!({"value": value});
    if more {
        let (depth, seq, _) = entries.last().expect("more than top entries");
        let t = DeltaToken {
            from: start.from,
            upto,
            depth: *depth,
            seq: *seq,
        };
        let mut next = link(t);
        if query.contains_key("$top") {
            next.push_str(&format!("&$top={top}"));
        }
        body["@odata.nextLink"] = json!(next);
    } else {
        let t = DeltaToken {
            from: upto,
            upto: 0,
            depth: 0,
            seq: 0,
        };
        body["@odata.deltaLink"] = json!(link(t));
    }
    Ok(ok_json(&body))
}

/// `GET /_download/{drive}/{item}?tempauth=...`: the pre-authenticated
/// download URL; streams the content from disk. Supports one `Range`.
pub async fn download(
    State(sh): State<Arc<Shared>>,
    Path((drive_id, item_id)): Path<(String, String)>,
    req: Request,
) -> Response {
    let query = parse_query(req.uri().query());
    let range = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let r = download_inner(&sh, &drive_id, &item_id, &query, range.as_deref()).await;
    reply(&sh, r)
}

async fn download_inner(
    sh: &Shared,
    drive_id: &str,
    item_id: &str,
    query: &Query,
    range: Option<&str>,
) -> Result<Response, GraphError> {
    if query.get("tempauth").map(String::as_str)
        != Some(download_tempauth(&sh.download_secret, drive_id, item_id).as_str())
    {
        return Err(GraphError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "Invalid tempauth",
        ));
    }
    let (path, size) = {
        let store = lock(&sh.store);
        let drive = store
            .drive_index(drive_id)
            .ok_or_else(|| GraphError::not_found("The resource could not be found."))?;
        let item = store.drives[drive]
            .get(item_id)
            .filter(|i| !i.folder)
            .ok_or_else(|| GraphError::not_found("The resource could not be found."))?;
        (
            store.blob_path(item.blob.as_deref().unwrap_or_default()),
            item.size,
        )
    };
    let (start, end, status) = match range.and_then(|r| parse_range(r, size)) {
        Some((s, e)) => (s, e, StatusCode::PARTIAL_CONTENT),
        None => (0, size, StatusCode::OK),
    };
    let mut file = tokio::fs::File::open(&path).await.map_err(internal)?;
    if start > 0 {
        use tokio::io::AsyncSeekExt as _;
        file.seek(std::io::SeekFrom::Start(start))
            .await
            .map_err(internal)?;
    }
    let remaining = end - start;
    let stream = futures_util::stream::unfold((file, remaining), |(mut file, left)| async move {
        if left == 0 {
            return None;
        }
        let mut buf = vec![0u8; (256 * 1024).min(left as usize)];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((
                    Ok::<Bytes, std::io::Error>(Bytes::from(buf)),
                    (file, left - n as u64),
                ))
            }
            Err(e) => Some((Err(e), (file, 0))),
        }
    });
    let mut resp = Response::new(Body::from_stream(stream));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, remaining.into());
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(
        header::ACCEPT_RANGES,
        header::HeaderValue::from_static("bytes"),
    );
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = format!("bytes {start}-{}/{size}", end - 1).parse()
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    Ok(resp)
}

/// `bytes=a-b` / `bytes=a-` / `bytes=-n` to a half-open range.
fn parse_range(r: &str, size: u64) -> Option<(u64, u64)> {
    let spec = r.strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let (start, end) = if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        (size.saturating_sub(n), size)
    } else {
        let s: u64 = a.parse().ok()?;
        let e = if b.is_empty() {
            size
        } else {
            b.parse::<u64>().ok()?.saturating_add(1).min(size)
        };
        (s, e)
    };
    (start < end).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_decode_per_segment() {
        assert_eq!(
            decode_segments("/a%2Fb/./c%20d").unwrap(),
            ["a", "b", "c d"]
        );
        assert_eq!(decode_segments("/.%2Fx%23y").unwrap(), ["x#y"]);
        assert!(decode_segments("/a/../b").is_err());
        assert!(decode_segments("/%FF").is_err());
    }

    #[test]
    fn delta_tokens_roundtrip_and_reject_garbage() {
        let t = DeltaToken {
            from: 3,
            upto: 9,
            depth: 2,
            seq: 7,
        };
        assert_eq!(DeltaToken::decode(&t.encode()), Some(t));
        assert_eq!(DeltaToken::decode("garbage"), None);
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some((0, 10)));
        assert_eq!(parse_range("bytes=90-", 100), Some((90, 100)));
        assert_eq!(parse_range("bytes=-10", 100), Some((90, 100)));
        assert_eq!(parse_range("bytes=100-", 100), None);
    }
}
