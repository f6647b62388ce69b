//! What an emulator instance looks like: tenant, sites, libraries, limits and
//! the switches that make it stricter or more hostile.
//!
//! Plain data with defaults that match the "Interface other tools rely on"
//! section of the emulator issue. It does not validate fault specs (see
//! `faults`) nor touch the filesystem.

use std::path::PathBuf;
use std::time::Duration;

/// One SharePoint site and the document libraries it holds.
#[derive(Debug, Clone)]
pub struct SiteOptions {
    /// Server-relative path, e.g. `/sites/demo`; `/` is the tenant root site.
    pub path: String,
    /// Display names of its document libraries; "Documents" gets the URL
    /// segment "Shared Documents" as on a real tenant.
    pub libraries: Vec<String>,
}

/// PEM files for serving HTTPS (needs the `tls` feature).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Everything `serve` needs to know; `Options::default()` is the documented
/// default tenant. `Debug` leaves the client secret out.
#[derive(Clone)]
pub struct Options {
    /// Serve HTTPS with these files instead of HTTP.
    pub tls: Option<TlsFiles>,
    /// Where content, sessions and the metadata snapshot live; `None` uses a
    /// temporary directory removed when the emulator stops.
    pub data_dir: Option<PathBuf>,
    /// Tenant domain accepted in token URLs (besides `common`,
    /// `organizations` and `tenant_id`).
    pub tenant: String,
    /// Tenant GUID accepted in token URLs.
    pub tenant_id: String,
    /// SharePoint host name used in site addressing, site ids and webUrls.
    pub hostname: String,
    /// Sites besides the tenant root site (which always exists with a
    /// "Documents" library).
    pub sites: Vec<SiteOptions>,
    /// When set, only this client_id may get tokens.
    pub client_id: Option<String>,
    /// Secret accepted for client credentials.
    pub client_secret: String,
    /// PEM certificates registered for client-credential assertions
    /// (needs the `cert-auth` feature).
    pub client_certificates: Vec<PathBuf>,
    /// Application permissions an app-only token carries.
    pub app_roles: Vec<String>,
    /// `expires_in` of access tokens; after it they answer 401.
    pub token_lifetime: Duration,
    /// Lifetime of a device code (`expires_in`, 900 s on Entra ID).
    pub device_code_lifetime: Duration,
    /// Polling interval announced for the device code flow; polling faster
    /// answers `slow_down`.
    pub device_code_interval: Duration,
    /// A refresh token is refused as soon as it has been used once (the
    /// service tolerates reuse for a while; clients must never rely on it).
    /// On by default: the strict side of graph-api.md section 1.
    pub invalidate_old_refresh_tokens: bool,
    /// Refuse an `Authorization` header on upload URLs with 401.
    pub strict: bool,
    /// After a reply with `Retry-After`, answer every Graph, upload and
    /// download request with 429 until the window ends, and count them
    /// (graph-api.md §7: wait before ANY further request to the tenant).
    pub enforce_retry_after: bool,
    /// Largest body a simple upload (`PUT .../content`) accepts. The
    /// default is the strict side of graph-api.md §3 (250 MB on Graph v1.0,
    /// 4 MB in older OneDrive docs): 4 MiB, where reference clients switch
    /// to upload sessions.
    pub simple_upload_max: u64,
    /// How far each fragment pushes an upload session's expiry.
    pub session_lifetime: Duration,
    /// Bytes of content a library may hold before answering 507.
    pub quota_bytes: u64,
    /// Append bytes to .docx/.xlsx/.pptx/.pdf/.html files after upload, as
    /// SharePoint does, so size and hash differ from what was sent.
    pub rewrite_office: bool,
    /// Fault spec applied from the start (grammar in the README).
    pub faults: Option<String>,
    /// Latency added to every request except the admin API.
    pub latency: Duration,
    /// Default page size of children listings and delta.
    pub page_size: usize,
    /// How often the metadata snapshot is written when something changed.
    pub persist_interval: Duration,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("tls", &self.tls)
            .field("data_dir", &self.data_dir)
            .field("tenant", &self.tenant)
            .field("hostname", &self.hostname)
            .field("sites", &self.sites)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("token_lifetime", &self.token_lifetime)
            .field("strict", &self.strict)
            .field("faults", &self.faults)
            .finish_non_exhaustive()
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            tls: None,
            data_dir: None,
            tenant: "contoso.onmicrosoft.com".into(),
            tenant_id: "9188040d-6c67-4c5b-b112-36a304b66dad".into(),
            hostname: "contoso.sharepoint.com".into(),
            sites: vec![SiteOptions {
                path: "/sites/demo".into(),
                libraries: vec!["Documents".into()],
            }],
            client_id: None,
            client_secret: "emulator-secret".into(),
            client_certificates: Vec::new(),
            app_roles: vec!["Sites.ReadWrite.All".into()],
            token_lifetime: Duration::from_secs(3599),
            device_code_lifetime: Duration::from_secs(900),
            device_code_interval: Duration::from_secs(5),
            invalidate_old_refresh_tokens: true,
            strict: true,
            enforce_retry_after: true,
            simple_upload_max: 4 * 1024 * 1024,
            session_lifetime: Duration::from_secs(15 * 60),
            quota_bytes: 1 << 40,
            rewrite_office: false,
            faults: None,
            latency: Duration::ZERO,
            page_size: 200,
            persist_interval: Duration::from_millis(200),
        }
    }
}
