//! graph-emulator: a local Microsoft Graph (SharePoint document libraries)
//! and Entra ID token service that follows `shared/graph-api.md` on the
//! strict side, with fault injection and an inspection API.
//!
//! Tests bind a listener first and call [`serve`], so they never sleep:
//!
//! ```no_run
//! # async fn demo() -> Result<(), graph_emulator::Error> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! let emu = graph_emulator::serve(listener, Default::default(), std::future::pending()).await?;
//! println!("authority {} graph_url {}", emu.authority(), emu.graph_url());
//! emu.shutdown().await.unwrap();
//! # Ok(()) }
//! ```
//!
//! Modules: `server` (wiring, faults at the front door, request log),
//! `auth` (token service), `assertion` (certificate credentials, feature
//! `cert-auth`), `graph` (drive API), `upload` (upload sessions),
//! `store` (tree, sessions, disk layout, snapshot data), `names` (refused
//! names), `faults` (grammar and decisions), `qxh` (QuickXorHash), `admin`
//! (`/_emulator/` API), `clock` (virtual time), `tls` (HTTPS listener, cargo
//! feature `tls`).

#![forbid(unsafe_code)]

mod admin;
mod assertion;
mod auth;
mod clock;
mod error;
mod faults;
mod graph;
mod names;
mod options;
mod qxh;
mod server;
mod store;
#[cfg(feature = "tls")]
mod tls;
mod upload;

pub use admin::TreeEntry;
pub use error::Error;
pub use faults::FaultSpecError;
pub use options::{Options, SiteOptions, TlsFiles};
pub use qxh::{QuickXor, quick_xor_hash};
pub use server::RequestRecord;
pub use store::seed_content;
pub use upload::{FRAGMENT_MULTIPLE, MAX_FRAGMENT};

use server::{Shared, lock};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Start the emulator on an already bound listener. It runs until
/// `shutdown` completes or [`Handle::shutdown`] is called.
pub async fn serve(
    listener: tokio::net::TcpListener,
    opts: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Handle, Error> {
    let local_addr = listener.local_addr().map_err(Error::Listener)?;
    #[cfg(not(feature = "tls"))]
    if opts.tls.is_some() {
        return Err(Error::Tls(
            "this build has no TLS support (cargo feature `tls`)".into(),
        ));
    }
    #[cfg(feature = "tls")]
    let listener = match &opts.tls {
        Some(files) => Served::Tls(tls::TlsListener::new(listener, &files.cert, &files.key)?),
        None => Served::Plain(listener),
    };
    let (data_dir, temp, persist) = match &opts.data_dir {
        Some(d) => (d.clone(), None, true),
        None => {
            let t = tempfile::Builder::new()
                .prefix("graph-emulator-")
                .tempdir()
                .map_err(|e| Error::DataDir {
                    path: std::env::temp_dir(),
                    source: e,
                })?;
            (t.path().to_path_buf(), Some(t), false)
        }
    };
    store::prepare_dir(&data_dir).map_err(|e| Error::DataDir {
        path: data_dir.clone(),
        source: e,
    })?;
    let mut faults = faults::Faults::default();
    if let Some(spec) = &opts.faults {
        faults.add(spec)?;
    }
    let certs = assertion::Certificates::load(&opts.client_certificates)?;
    let clock = clock::Clock::default();
    let store = store::Store::new(data_dir.clone(), &opts, clock.now_ms());
    let (log_seq, _) = watch::channel(0u64);
    let shared = Arc::new(Shared {
        store: std::sync::Mutex::new(store),
        auth: Default::default(),
        faults: std::sync::Mutex::new(faults),
        log: Default::default(),
        log_seq,
        persist_wake: Default::default(),
        dirty: AtomicBool::new(false),
        persist,
        data_dir,
        _temp: temp,
        local_addr,
        scheme: if opts.tls.is_some() { "https" } else { "http" },
        download_secret: uuid::Uuid::new_v4().simple().to_string(),
        throttled_until_ms: Default::default(),
        throttle_violations: Default::default(),
        hide_hashes: Default::default(),
        certs,
        clock,
        started: std::time::Instant::now(),
        opts,
    });
    shared.load_snapshot()?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut server_stop = stop_rx.clone();
    let app = server::router(shared.clone());
    let server = tokio::spawn(async move {
        let signal = async move {
            tokio::select! {
                _ = shutdown => {}
                _ = server_stop.wait_for(|s| *s) => {}
            }
        };
        #[cfg(feature = "tls")]
        let listener = match listener {
            Served::Plain(l) => l,
            Served::Tls(t) => {
                return axum::serve(t, app).with_graceful_shutdown(signal).await;
            }
        };
        axum::serve(listener, app)
            .with_graceful_shutdown(signal)
            .await
    });
    let persist = tokio::spawn(server::persist_task(shared.clone(), stop_rx));
    Ok(Handle {
        url: format!("{}://{local_addr}", shared.scheme),
        shared,
        stop: stop_tx,
        server: Some(server),
        persist: Some(persist),
    })
}

/// What `serve` listens with.
#[cfg(feature = "tls")]
enum Served {
    Plain(tokio::net::TcpListener),
    Tls(tls::TlsListener),
}

/// A running emulator: its URLs, inspection, fault control and shutdown.
pub struct Handle {
    /// `http://127.0.0.1:PORT`.
    url: String,
    /// State shared with the handlers.
    shared: Arc<Shared>,
    /// Flipped to stop the server and the snapshot task.
    stop: watch::Sender<bool>,
    /// The HTTP server task.
    server: Option<JoinHandle<std::io::Result<()>>>,
    /// The snapshot task (writes a final snapshot on stop).
    persist: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Handle {
    /// Base URL, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// What clients use as `authority` (the base URL).
    pub fn authority(&self) -> String {
        self.url.clone()
    }

    /// What clients use as `graph_url` (`<URL>/v1.0`).
    pub fn graph_url(&self) -> String {
        format!("{}/v1.0", self.url)
    }

    /// Token endpoint for a tenant (`<URL>/{tenant}/oauth2/v2.0/token`).
    pub fn token_url(&self, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/v2.0/token", self.url)
    }

    /// The options it runs with.
    pub fn options(&self) -> &Options {
        &self.shared.opts
    }

    /// Site, drive and tenant facts (same as `GET /_emulator/info`).
    pub fn info(&self) -> serde_json::Value {
        self.shared.info(&self.url)
    }

    /// Id of the default library (`/sites/demo`, "Documents").
    pub fn drive_id(&self) -> String {
        let store = lock(&self.shared.store);
        store.drives[store.default_drive()].id.clone()
    }

    /// Seed a library with `files` files of `size` bytes under `folder`
    /// (`folder/dNNNNN/fNNNNNNN.bin`, `per_folder` per subfolder, content
    /// [`seed_content`]) straight into the store; `drive` by id, else the
    /// default library. Returns the folder's item id. Same as
    /// `POST /_emulator/seed`.
    pub fn seed(
        &self,
        drive: Option<&str>,
        folder: &str,
        files: usize,
        per_folder: usize,
        size: u64,
    ) -> Result<String, String> {
        let spec = store::SeedSpec {
            folder: folder.to_string(),
            files,
            per_folder,
            size,
        };
        self.shared
            .seed(drive, &spec)
            .map_err(|e| format!("{} {}: {}", e.status.as_u16(), e.code, e.message))
    }

    /// Delete a library as an administrator would: its content is gone,
    /// its drive id answers `404 itemNotFound`, its site no longer lists it.
    /// `site`: a server-relative path (`/sites/demo`) or site URL, `None`
    /// for the default library's site; `library` by name. Returns its id.
    /// Same as `POST /_emulator/delete-library`.
    pub fn delete_library(&self, site: Option<&str>, library: &str) -> Result<String, String> {
        self.shared.delete_library(site, Some(library))
    }

    /// Delete a library and create it again, empty, under the same name
    /// with a new drive id (what SharePoint does when an administrator
    /// deletes a library and makes a new one). Returns the new drive id.
    /// Same as `POST /_emulator/recreate-library`.
    pub fn recreate_library(&self, site: Option<&str>, library: &str) -> Result<String, String> {
        self.shared
            .recreate_library(site, Some(library))
            .map(|(_, new)| new)
    }

    /// Files of the default library.
    pub fn tree(&self) -> Vec<TreeEntry> {
        self.shared.tree()
    }

    /// Raw bytes of a file of the default library by relative path.
    pub fn read_file(&self, path: &str) -> Option<Vec<u8>> {
        let blob = {
            let store = lock(&self.shared.store);
            let d = &store.drives[store.default_drive()];
            let segs: Vec<String> = path
                .split('/')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            match d.resolve(&d.root_id, &segs) {
                store::Resolved::Found(id) => store.blob_path(d.get(&id)?.blob.as_deref()?),
                _ => return None,
            }
        };
        std::fs::read(blob).ok()
    }

    /// The request log so far (admin requests excluded).
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.shared.log).clone()
    }

    /// Requests by route class and status.
    pub fn counters(&self) -> BTreeMap<String, BTreeMap<u16, u64>> {
        self.shared.counters()
    }

    /// Wait until the request log satisfies `pred`, or time out.
    pub async fn wait_for_requests(
        &self,
        timeout: Duration,
        pred: impl Fn(&[RequestRecord]) -> bool,
    ) -> bool {
        let mut rx = self.shared.log_seq.subscribe();
        let check = async {
            loop {
                if pred(&lock(&self.shared.log)) {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(timeout, check).await.is_ok() && pred(&lock(&self.shared.log))
    }

    /// Requests that arrived inside a `Retry-After` window.
    pub fn throttle_violations(&self) -> u64 {
        self.shared
            .throttle_violations
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Add fault rules (grammar in the README).
    pub fn add_faults(&self, spec: &str) -> Result<(), FaultSpecError> {
        self.shared.add_faults(spec)
    }

    /// Leave `quickXorHash` out of every driveItem reply (`true`) or give it
    /// again (`false`): the service may not have computed it yet right
    /// after an upload and fills it in later (graph-api.md section 3).
    pub fn hide_hashes(&self, hide: bool) {
        self.shared
            .hide_hashes
            .store(hide, std::sync::atomic::Ordering::Release);
    }

    /// Remove every fault rule.
    pub fn clear_faults(&self) {
        lock(&self.shared.faults).clear();
    }

    /// Approve a device code (play the user); false if no such pending code.
    pub fn approve(&self, user_code: &str) -> bool {
        lock(&self.shared.auth).approve(user_code)
    }

    /// Decline a device code; false if no such pending code.
    pub fn decline(&self, user_code: &str) -> bool {
        lock(&self.shared.auth).decline(user_code)
    }

    /// User codes waiting for approval.
    pub fn pending_user_codes(&self) -> Vec<String> {
        lock(&self.shared.auth).pending_user_codes()
    }

    /// Tokens for a signed-in user (the token endpoint's reply JSON, with
    /// `refresh_token` when `scope` has `offline_access`), skipping the
    /// device code flow: for tests and demos that preset a token.
    pub fn user_tokens(&self, client_id: &str, scope: &str) -> serde_json::Value {
        self.shared.user_tokens(client_id, scope)
    }

    /// Revoke every refresh token (next use: `invalid_grant`, AADSTS70008).
    pub fn revoke(&self) {
        lock(&self.shared.auth).revoke_all();
        self.shared.changed();
    }

    /// Expire every access token now (next Graph call: 401).
    pub fn expire_access_tokens(&self) {
        self.shared.expire(true, false);
    }

    /// Expire every upload session now (next use: 404).
    pub fn expire_upload_sessions(&self) {
        self.shared.expire(false, true);
    }

    /// Move emulator time forward (token, device code and session expiry).
    pub fn advance_clock(&self, by: Duration) {
        self.shared.clock.advance(by);
    }

    /// Empty the libraries and drop sessions, faults and the log; with
    /// `tokens`, drop every token too.
    pub fn reset(&self, tokens: bool) {
        self.shared.reset(tokens);
    }

    /// Stop now: no new connections, in-flight requests finish, the
    /// metadata snapshot is written (when a data dir is set).
    pub async fn shutdown(self) -> std::io::Result<()> {
        let _ = self.stop.send(true);
        self.join().await
    }

    /// Wait until the emulator stops (the `shutdown` future passed to
    /// `serve` completed, or `shutdown` was called).
    pub async fn join(mut self) -> std::io::Result<()> {
        let result = match self.server.take() {
            Some(s) => s.await.unwrap_or_else(|e| Err(std::io::Error::other(e))),
            None => Ok(()),
        };
        let _ = self.stop.send(true);
        if let Some(p) = self.persist.take() {
            let _ = p.await;
        }
        result
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // A dropped handle stops the emulator rather than leaking it.
        let _ = self.stop.send(true);
    }
}
