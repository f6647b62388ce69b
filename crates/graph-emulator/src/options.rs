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

/// Everything `serve` needs to know; `Options::default()` is the documented
/// default tenant.
#[derive(Debug, Clone)]
pub struct Options {
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
    pub invalidate_old_refresh_tokens: bool,
    /// Refuse an `Authorization` header on upload URLs with 401.
    pub strict: bool,
    /// Largest body a simple upload (`PUT .../content`) accepts.
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

impl Default for Options {
    fn default() -> Self {
        Self {
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
            app_roles: vec!["Sites.ReadWrite.All".into()],
            token_lifetime: Duration::from_secs(3599),
            device_code_lifetime: Duration::from_secs(900),
            device_code_interval: Duration::from_secs(5),
            invalidate_old_refresh_tokens: false,
            strict: true,
            simple_upload_max: 250_000_000,
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
