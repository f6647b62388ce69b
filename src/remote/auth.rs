//! Signing in to Entra ID (graph-api.md section 1): the device code login,
//! the refresh-token store, and the [`TokenProvider`] every Graph request
//! gets its access token from.
//!
//! - `sharepush login` runs [`device_login`]: it prints the service's message
//!   (a URL and a code to type on any device), polls at the announced
//!   interval (`slow_down` adds 5 s, RFC 8628), and stores the refresh token.
//!   [`import_refresh_token`] takes one from a file instead.
//! - [`TokenStore`]: the refresh token in `<state_dir>/refresh-token`, mode
//!   0600, replaced atomically (temp file, fsync, rename, fsync of the
//!   directory) so a crash leaves either the old or the new token, never a
//!   torn one.
//! - [`TokenProvider`]: hands out access tokens, refreshing a few minutes
//!   before `expires_in` runs out. Refreshes are serialised by one async
//!   mutex (one refresh in flight for all jobs), and every rotated refresh
//!   token is on disk before the new access token is used, because the
//!   service may invalidate the old one at any time.
//! - App-only (`client_credentials`): the client secret is read from its file
//!   at each use and never kept longer than the request; or, with a
//!   certificate, a client assertion (RS256 JWT with `x5t#S256`) is signed
//!   with its key for each request (`assertion`). No refresh token.
//!
//! Secrets (tokens, the client secret, device codes) live in
//! [`SecretString`]s, so `Debug` prints `[REDACTED]`; they never appear in
//! logs or error messages. Errors that need a person ([`AuthError::needs_person`])
//! say what to do ("run `sharepush login`") and end a one-shot sync with
//! exit code 77.
//!
//! What it does not do: call Graph, or retry Graph requests after a 401
//! (that is `graph`: it asks [`TokenProvider::invalidate`] and retries once).

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::time::Instant;

use crate::config::{AuthMode, AuthSpec};
use crate::retry::RetryPolicy;

/// File name of the refresh token inside the state directory.
pub const TOKEN_FILE: &str = "refresh-token";

/// Delegated permissions asked for at login: write to files in libraries the
/// user can reach, and a refresh token (`offline_access`).
pub const DELEGATED_SCOPES: &str = "Files.ReadWrite.All Sites.ReadWrite.All offline_access";

/// What the shipped units' `SetCredential=client-secret:...` puts in the
/// credential when the `LoadCredential=` file is missing (so the unit starts
/// in modes that need no secret); refused as a secret with a message saying so.
pub const UNLOADED_CREDENTIAL: &str = "sharepush-credential-not-loaded";

/// Refresh this long before the access token expires (at most; short-lived
/// tokens refresh at half their life).
const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);

/// Polling interval when the device code reply names none (RFC 8628).
const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(5);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why signing in failed. No variant carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The refresh token was refused (expired, revoked, consent withdrawn):
    /// a person must sign in again.
    #[error(
        "login needed: the sign-in was refused ({code}{}); run `sharepush login`",
        aadsts_suffix(.aadsts)
    )]
    LoginNeeded {
        /// OAuth error code (`invalid_grant`, `interaction_required`, ...).
        code: String,
        /// The AADSTS number from `error_codes`, for looking it up.
        aadsts: Option<u64>,
    },
    /// No refresh token has been stored yet.
    #[error("login needed: no sign-in stored in {}; run `sharepush login`", path.display())]
    NotLoggedIn { path: PathBuf },
    /// The token endpoint refused the app itself (wrong tenant, client id,
    /// secret or certificate).
    #[error(
        "the token endpoint refused the request ({status} {code}{}); check tenant, client_id \
         and the app's secret or certificate",
        aadsts_suffix(.aadsts)
    )]
    Rejected {
        status: u16,
        code: String,
        aadsts: Option<u64>,
    },
    /// The token endpoint kept failing (5xx, `temporarily_unavailable`,
    /// connection errors, replies that do not parse) through every retry.
    #[error("the token endpoint is unavailable: {what}{}", causes(.source))]
    Unavailable {
        what: String,
        #[source]
        source: Option<BoxError>,
    },
    /// A credential file (client secret, certificate, key) could not be read.
    #[error("cannot read credential file {}: {source}", path.display())]
    Credential {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The refresh token could not be stored.
    #[error("cannot store the refresh token in {}: {source}", path.display())]
    TokenStore {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The stored refresh token could not be read (permissions, not text):
    /// a person must fix the file, waiting will not.
    #[error(
        "cannot read the stored sign-in {}: {source}; the service's user must own it \
         (run `sharepush login` as that user)",
        path.display()
    )]
    TokenUnreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The person declined the sign-in request.
    #[error("the sign-in was declined; run `sharepush login` to try again")]
    Declined,
    /// The device code expired before anyone used it.
    #[error("the sign-in code expired before it was used; run `sharepush login` again")]
    CodeExpired,
    /// Certificate sign-in could not build its assertion.
    #[error("certificate sign-in: {detail}")]
    Certificate { detail: String },
    /// The reply had an unexpected shape.
    #[error("unexpected reply from the token endpoint: {detail}")]
    Protocol { detail: String },
}

fn aadsts_suffix(code: &Option<u64>) -> String {
    code.map(|c| format!(", AADSTS{c}")).unwrap_or_default()
}

/// ": cause: its cause..." for an error chain (reqwest's own text is only
/// "error sending request"; the reason, e.g. "Connection refused", is below
/// it). reqwest errors are stripped of their URL before they get here.
fn causes(source: &Option<BoxError>) -> String {
    let mut text = String::new();
    let mut next: Option<&(dyn std::error::Error + 'static)> = source
        .as_deref()
        .map(|e| e as &(dyn std::error::Error + 'static));
    while let Some(e) = next {
        text.push_str(": ");
        text.push_str(&e.to_string());
        next = e.source();
    }
    text
}

impl AuthError {
    /// True when waiting will not help: a person must sign in or fix the
    /// credentials. A one-shot sync exits 77 on these.
    pub fn needs_person(&self) -> bool {
        !matches!(
            self,
            AuthError::Unavailable { .. }
                | AuthError::TokenStore { .. }
                | AuthError::Protocol { .. }
        )
    }

    /// The same error again, for callers answered from memory (sources
    /// become their text; nothing here holds a secret).
    fn duplicate(&self) -> AuthError {
        let io = |e: &std::io::Error| std::io::Error::new(e.kind(), e.to_string());
        match self {
            AuthError::LoginNeeded { code, aadsts } => AuthError::LoginNeeded {
                code: code.clone(),
                aadsts: *aadsts,
            },
            AuthError::NotLoggedIn { path } => AuthError::NotLoggedIn { path: path.clone() },
            AuthError::Rejected {
                status,
                code,
                aadsts,
            } => AuthError::Rejected {
                status: *status,
                code: code.clone(),
                aadsts: *aadsts,
            },
            AuthError::Unavailable { what, source } => AuthError::Unavailable {
                what: format!("{what}{}", causes(source)),
                source: None,
            },
            AuthError::Credential { path, source } => AuthError::Credential {
                path: path.clone(),
                source: io(source),
            },
            AuthError::TokenStore { path, source } => AuthError::TokenStore {
                path: path.clone(),
                source: io(source),
            },
            AuthError::TokenUnreadable { path, source } => AuthError::TokenUnreadable {
                path: path.clone(),
                source: io(source),
            },
            AuthError::Declined => AuthError::Declined,
            AuthError::CodeExpired => AuthError::CodeExpired,
            AuthError::Certificate { detail } => AuthError::Certificate {
                detail: detail.clone(),
            },
            AuthError::Protocol { detail } => AuthError::Protocol {
                detail: detail.clone(),
            },
        }
    }
}

/// The refresh token on disk: `<state_dir>/refresh-token`, 0600.
#[derive(Debug, Clone)]
pub struct TokenStore {
    path: PathBuf,
}

impl TokenStore {
    /// The token file of a state directory.
    pub fn in_dir(state_dir: &Path) -> TokenStore {
        TokenStore {
            path: state_dir.join(TOKEN_FILE),
        }
    }

    /// Where the token lives (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored refresh token, if any.
    pub fn load(&self) -> Result<Option<SecretString>, AuthError> {
        match fs::read_to_string(&self.path) {
            Ok(text) => {
                let token = text.trim();
                if token.is_empty() {
                    Ok(None)
                } else {
                    Ok(Some(SecretString::from(token.to_string())))
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(AuthError::TokenUnreadable {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// What identifies the file's current version (a new login replaces
    /// it), or `None` when it is missing.
    fn version(&self) -> Option<(std::time::SystemTime, u64, u64)> {
        use std::os::unix::fs::MetadataExt as _;
        let m = fs::metadata(&self.path).ok()?;
        Some((m.modified().ok()?, m.len(), m.ino()))
    }

    /// Replaces the stored token atomically: a new 0600 file beside it,
    /// written and fsynced, renamed over the old one, then the directory
    /// fsynced so the rename itself survives a power loss.
    pub fn save(&self, token: &SecretString) -> Result<(), AuthError> {
        let err = |source| AuthError::TokenStore {
            path: self.path.clone(),
            source,
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err)?;
        let tmp = dir.join(format!(".{TOKEN_FILE}.{}.tmp", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(token.expose_secret().as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            fs::rename(&tmp, &self.path)?;
            fs::File::open(dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            err(e)
        })
    }
}

/// The token endpoint's success reply. Secrets become [`SecretString`]s as
/// they are read.
#[derive(Deserialize)]
struct TokenReply {
    access_token: SecretString,
    #[serde(default, deserialize_with = "number_or_string")]
    expires_in: Option<u64>,
    #[serde(default)]
    refresh_token: Option<SecretString>,
}

/// The token endpoint's error reply (graph-api.md section 1 "Error shape").
/// `error_description` is deliberately not read: never branch on text.
#[derive(Debug, Deserialize)]
struct OAuthErrorReply {
    error: String,
    #[serde(default)]
    error_codes: Vec<u64>,
}

/// The device code reply.
#[derive(Deserialize)]
struct DeviceCodeReply {
    device_code: SecretString,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    user_code: Option<String>,
    #[serde(default)]
    verification_uri: Option<String>,
    #[serde(default, deserialize_with = "number_or_string")]
    expires_in: Option<u64>,
    #[serde(default, deserialize_with = "number_or_string")]
    interval: Option<u64>,
}

fn number_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum N {
        Num(u64),
        Text(String),
    }
    Ok(match Option::<N>::deserialize(d)? {
        None => None,
        Some(N::Num(n)) => Some(n),
        Some(N::Text(s)) => s.trim().parse().ok(),
    })
}

/// One reply from the token endpoint, classified.
enum TokenOutcome<T> {
    Ok(T),
    /// An OAuth error with its code (HTTP 4xx with `{"error": ...}`).
    OAuth {
        status: u16,
        error: OAuthErrorReply,
    },
    /// Worth retrying: 5xx, 429, `temporarily_unavailable`, connection errors.
    Transient {
        what: String,
        retry_after: Option<Duration>,
        source: Option<BoxError>,
    },
}

/// POSTs a form to the token endpoint once and classifies the reply.
async fn post_form<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: &str,
    form: &[(&str, &str)],
) -> TokenOutcome<T> {
    let resp = match http.post(url).form(form).send().await {
        Ok(r) => r,
        Err(e) => {
            return TokenOutcome::Transient {
                what: "connection failed".into(),
                retry_after: None,
                source: Some(Box::new(e.without_url())),
            };
        }
    };
    let status = resp.status();
    let retry_after = crate::remote::graph::retry_after(resp.headers());
    let body = match resp.bytes().await {
        Ok(b) => b,
        Err(e) => {
            return TokenOutcome::Transient {
                what: "reply cut off".into(),
                retry_after,
                source: Some(Box::new(e.without_url())),
            };
        }
    };
    if status.is_success() {
        // A 200 that does not parse is a proxy's page or a broken reply,
        // not a refusal: retried, and never reported as "login needed".
        return match serde_json::from_slice::<T>(&body) {
            Ok(v) => TokenOutcome::Ok(v),
            Err(e) => TokenOutcome::Transient {
                what: format!(
                    "HTTP {} with a reply that is not a token ({})",
                    status.as_u16(),
                    e.classify_name()
                ),
                retry_after,
                source: None,
            },
        };
    }
    let parsed = serde_json::from_slice::<OAuthErrorReply>(&body).ok();
    let transient_code = parsed
        .as_ref()
        .is_some_and(|e| e.error == "temporarily_unavailable");
    if status.is_server_error() || status.as_u16() == 429 || transient_code {
        return TokenOutcome::Transient {
            what: format!(
                "{} {}",
                status.as_u16(),
                parsed.as_ref().map(|e| e.error.as_str()).unwrap_or("")
            ),
            retry_after,
            source: None,
        };
    }
    TokenOutcome::OAuth {
        status: status.as_u16(),
        error: parsed.unwrap_or(OAuthErrorReply {
            error: format!("HTTP {}", status.as_u16()),
            error_codes: Vec::new(),
        }),
    }
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    /// serde_json's Display may quote the input (a token); only say what kind.
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "io",
            serde_json::error::Category::Syntax => "syntax",
            serde_json::error::Category::Data => "missing or wrong fields",
            serde_json::error::Category::Eof => "truncated",
        }
    }
}

/// Maps an OAuth error from a token grant to what a caller can act on.
fn grant_error(status: u16, e: OAuthErrorReply) -> AuthError {
    let aadsts = e.error_codes.first().copied();
    match e.error.as_str() {
        "invalid_grant" | "interaction_required" | "consent_required" => AuthError::LoginNeeded {
            code: e.error,
            aadsts,
        },
        _ => AuthError::Rejected {
            status,
            code: e.error,
            aadsts,
        },
    }
}

/// An access token and when to stop using it.
struct Cached {
    token: SecretString,
    refresh_at: Instant,
}

/// A failed sign-in, remembered for [`FAILURE_MEMORY`] so the callers that
/// queued behind it get its answer instead of each running a whole retry
/// cycle of their own against a service that just said no (or is down).
/// A refresh token refused for good (or none stored) is remembered until
/// the token file changes: only a new login helps, and the same refused
/// token is not sent again meanwhile (graph-api.md section 1).
struct Failure {
    error: AuthError,
    /// `None`: until the token file changes.
    until: Option<Instant>,
    /// The refresh token file's version then: a new login ends the memory.
    token_file: Option<(std::time::SystemTime, u64, u64)>,
}

/// What [`TokenProvider`] guards with its one lock.
#[derive(Default)]
struct TokenState {
    cached: Option<Cached>,
    failed: Option<Failure>,
}

/// How long a failed sign-in is answered from memory.
const FAILURE_MEMORY: Duration = Duration::from_secs(30);

/// Longest access-token life believed (real ones last 60-90 minutes); a
/// larger `expires_in` is a broken reply, not a reason to overflow a clock.
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Hands out access tokens for one tenant and app, refreshing them ahead of
/// expiry. One per process, shared by every job.
pub struct TokenProvider {
    /// Tenant, client id, mode and endpoints.
    auth: AuthSpec,
    /// Shared HTTP client (connection reuse with Graph is not needed, but
    /// one client keeps one TLS setup).
    http: reqwest::Client,
    /// Where the refresh token lives (delegated mode).
    store: TokenStore,
    /// Retry timing for the token endpoint.
    policy: RetryPolicy,
    /// The current access token and the last failure. The mutex is held
    /// across a refresh, so exactly one refresh is in flight and every
    /// caller waits for it (and, if it failed, gets its error).
    state: tokio::sync::Mutex<TokenState>,
}

impl std::fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenProvider")
            .field("tenant", &self.auth.tenant)
            .field("mode", &self.auth.mode)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl TokenProvider {
    /// A provider for `auth`, keeping the refresh token in `state_dir`.
    pub fn new(
        auth: AuthSpec,
        http: reqwest::Client,
        state_dir: &Path,
        policy: RetryPolicy,
    ) -> TokenProvider {
        TokenProvider {
            auth,
            http,
            store: TokenStore::in_dir(state_dir),
            policy,
            state: tokio::sync::Mutex::new(TokenState::default()),
        }
    }

    /// The refresh-token store (for `login`).
    pub fn store(&self) -> &TokenStore {
        &self.store
    }

    /// A valid access token: the cached one, or a fresh one if it is about
    /// to expire (refreshes are serialised).
    pub async fn access_token(&self) -> Result<SecretString, AuthError> {
        let mut state = self.state.lock().await;
        if let Some(c) = state.cached.as_ref()
            && Instant::now() < c.refresh_at
        {
            return Ok(c.token.clone());
        }
        if let Some(f) = &state.failed
            && f.until.is_none_or(|until| Instant::now() < until)
            && f.token_file == self.store.version()
        {
            return Err(f.error.duplicate());
        }
        self.fetch_into(&mut state).await
    }

    /// Runs the configured grant and records the outcome in `state`.
    async fn fetch_into(&self, state: &mut TokenState) -> Result<SecretString, AuthError> {
        match self.fetch(None).await {
            Ok(fresh) => {
                let token = fresh.token.clone();
                *state = TokenState {
                    cached: Some(fresh),
                    failed: None,
                };
                Ok(token)
            }
            Err(error) => {
                state.cached = None;
                let for_good = matches!(
                    error,
                    AuthError::LoginNeeded { .. } | AuthError::NotLoggedIn { .. }
                );
                state.failed = Some(Failure {
                    error: error.duplicate(),
                    until: (!for_good).then(|| Instant::now() + FAILURE_MEMORY),
                    token_file: self.store.version(),
                });
                Err(error)
            }
        }
    }

    /// Drops `used` if it is still the cached token (Graph answered 401 to
    /// it), so the next [`TokenProvider::access_token`] refreshes. Callers
    /// that raced on the same 401 cause one refresh, not several.
    pub async fn invalidate(&self, used: &SecretString) {
        let mut state = self.state.lock().await;
        if state
            .cached
            .as_ref()
            .is_some_and(|c| c.token.expose_secret() == used.expose_secret())
        {
            state.cached = None;
        }
    }

    fn token_url(&self) -> String {
        token_url(&self.auth)
    }

    /// Gets a new access token with the configured grant, retrying
    /// transient failures. `imported`: a refresh token to redeem instead of
    /// the stored one; it is stored only once the service accepted it.
    async fn fetch(&self, imported: Option<&SecretString>) -> Result<Cached, AuthError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            // The stored token's version as redeemed: a login that replaces
            // the file during the round trip must not be overwritten below.
            let redeemed = self.store.version();
            let outcome = match &self.auth.mode {
                AuthMode::DeviceCode => self.refresh_grant(imported).await?,
                AuthMode::ClientSecret { secret_file } => self.secret_grant(secret_file).await?,
                AuthMode::Certificate {
                    certificate,
                    private_key,
                } => self.certificate_grant(certificate, private_key).await?,
            };
            match outcome {
                TokenOutcome::Ok(reply) => {
                    if imported.is_none()
                        && matches!(self.auth.mode, AuthMode::DeviceCode)
                        && self.store.version() != redeemed
                    {
                        tracing::info!(
                            "a new login was stored while the old sign-in was refreshed; keeping the new one"
                        );
                        return self.accept(
                            TokenReply {
                                refresh_token: None,
                                ..reply
                            },
                            None,
                        );
                    }
                    return self.accept(reply, imported);
                }
                TokenOutcome::OAuth { status, error } => return Err(grant_error(status, error)),
                TokenOutcome::Transient {
                    what,
                    retry_after,
                    source,
                } => {
                    if attempt >= self.policy.max_attempts {
                        return Err(AuthError::Unavailable { what, source });
                    }
                    let wait = retry_after.unwrap_or_else(|| self.policy.backoff(attempt));
                    tracing::warn!(
                        attempt,
                        what,
                        wait_ms = wait.as_millis() as u64,
                        "token endpoint failed; retrying"
                    );
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Persists a rotated refresh token (before anything uses the new access
    /// token) and computes when to refresh next.
    /// A reply without a new refresh token keeps the one redeemed, so an
    /// `imported` one is stored then.
    fn accept(
        &self,
        reply: TokenReply,
        imported: Option<&SecretString>,
    ) -> Result<Cached, AuthError> {
        if let Some(rt) = reply.refresh_token.as_ref().or(imported) {
            self.store.save(rt)?;
        }
        let lifetime =
            Duration::from_secs(reply.expires_in.unwrap_or(3600)).min(MAX_TOKEN_LIFETIME);
        let margin = REFRESH_MARGIN.min(lifetime / 2);
        tracing::debug!(
            expires_in = lifetime.as_secs(),
            rotated = reply.refresh_token.is_some(),
            "access token obtained"
        );
        Ok(Cached {
            token: reply.access_token,
            refresh_at: Instant::now() + lifetime - margin,
        })
    }

    async fn refresh_grant(
        &self,
        imported: Option<&SecretString>,
    ) -> Result<TokenOutcome<TokenReply>, AuthError> {
        let refresh = match imported {
            Some(token) => token.clone(),
            None => self.store.load()?.ok_or_else(|| AuthError::NotLoggedIn {
                path: self.store.path().to_path_buf(),
            })?,
        };
        Ok(post_form(
            &self.http,
            &self.token_url(),
            &[
                ("grant_type", "refresh_token"),
                ("client_id", &self.auth.client_id),
                ("refresh_token", refresh.expose_secret()),
                // No `scope`: the grant keeps what was consented (section 1:
                // optional), so tokens imported from other tools with other
                // scopes keep working instead of failing `consent_required`.
            ],
        )
        .await)
    }

    async fn secret_grant(&self, file: &Path) -> Result<TokenOutcome<TokenReply>, AuthError> {
        let secret = read_secret(file)?;
        let scope = app_scope(&self.auth.graph_url);
        Ok(post_form(
            &self.http,
            &self.token_url(),
            &[
                ("grant_type", "client_credentials"),
                ("client_id", &self.auth.client_id),
                ("client_secret", secret.expose_secret()),
                ("scope", &scope),
            ],
        )
        .await)
    }

    async fn certificate_grant(
        &self,
        certificate: &Path,
        private_key: &Path,
    ) -> Result<TokenOutcome<TokenReply>, AuthError> {
        let assertion = crate::remote::auth::assertion::client_assertion(
            certificate,
            private_key,
            &self.auth.client_id,
            &self.token_url(),
        )?;
        let scope = app_scope(&self.auth.graph_url);
        Ok(post_form(
            &self.http,
            &self.token_url(),
            &[
                ("grant_type", "client_credentials"),
                ("client_id", &self.auth.client_id),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_assertion", assertion.expose_secret()),
                ("scope", &scope),
            ],
        )
        .await)
    }
}

/// `{authority}/{tenant}/oauth2/v2.0/token`.
fn token_url(auth: &AuthSpec) -> String {
    format!(
        "{}/{}/oauth2/v2.0/token",
        auth.authority.trim_end_matches('/'),
        auth.tenant
    )
}

/// `{graph resource}/.default`: the app's granted application permissions
/// on the Graph named by `graph_url` (national clouds have their own host).
fn app_scope(graph_url: &str) -> String {
    let (scheme, rest) = graph_url.split_once("://").unwrap_or(("https", graph_url));
    let host = rest.split('/').next().unwrap_or(rest);
    format!("{scheme}://{host}/.default")
}

/// Reads a client secret file at use time. The text is trimmed of the
/// newline editors add; the error names the file, never the contents.
fn read_secret(path: &Path) -> Result<SecretString, AuthError> {
    let text = fs::read_to_string(path).map_err(|source| AuthError::Credential {
        path: path.to_path_buf(),
        source,
    })?;
    let secret = text.trim();
    let problem = if secret == UNLOADED_CREDENTIAL {
        Some(
            "it holds the placeholder of the unit's SetCredential=: the file named by \
             LoadCredential= was missing when the service started",
        )
    } else if secret.is_empty() {
        Some("the file is empty")
    } else {
        None
    };
    if let Some(problem) = problem {
        return Err(AuthError::Credential {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, problem),
        });
    }
    Ok(SecretString::from(secret.to_string()))
}

/// What one poll of the device code flow tells the loop to do next.
#[derive(Debug, PartialEq, Eq)]
enum PollStep {
    /// Poll again after this interval.
    Wait(Duration),
    /// Stop with this error.
    Stop(PollStop),
}

/// Why polling stops without a token.
#[derive(Debug, PartialEq, Eq)]
enum PollStop {
    Declined,
    Expired,
    Other,
}

/// RFC 8628 section 3.5: `authorization_pending` keeps the interval,
/// `slow_down` adds 5 seconds to it from now on, the rest end the flow.
fn poll_step(error: &str, interval: Duration) -> PollStep {
    match error {
        "authorization_pending" => PollStep::Wait(interval),
        "slow_down" => PollStep::Wait(interval + Duration::from_secs(5)),
        "authorization_declined" | "access_denied" => PollStep::Stop(PollStop::Declined),
        "expired_token" => PollStep::Stop(PollStop::Expired),
        _ => PollStep::Stop(PollStop::Other),
    }
}

/// `sharepush login`: the device code flow. Writes the service's message
/// (where to go, which code to type) to `out`, waits for the person, and
/// stores the refresh token. Works over SSH: nothing is opened locally.
pub async fn device_login<W: std::io::Write + ?Sized>(
    auth: &AuthSpec,
    http: &reqwest::Client,
    store: &TokenStore,
    policy: &RetryPolicy,
    out: &mut W,
) -> Result<(), AuthError> {
    if !matches!(auth.mode, AuthMode::DeviceCode) {
        return Err(AuthError::Protocol {
            detail: "`sharepush login` is for mode = \"device_code\"; app-only modes need no login"
                .into(),
        });
    }
    let base = format!(
        "{}/{}/oauth2/v2.0",
        auth.authority.trim_end_matches('/'),
        auth.tenant
    );
    let code: DeviceCodeReply = {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match post_form(
                http,
                &format!("{base}/devicecode"),
                &[("client_id", &auth.client_id), ("scope", DELEGATED_SCOPES)],
            )
            .await
            {
                TokenOutcome::Ok(r) => break r,
                TokenOutcome::OAuth { status, error } => {
                    return Err(AuthError::Rejected {
                        status,
                        code: error.error,
                        aadsts: error.error_codes.first().copied(),
                    });
                }
                TokenOutcome::Transient {
                    what,
                    retry_after,
                    source,
                } => {
                    if attempt >= policy.max_attempts {
                        return Err(AuthError::Unavailable { what, source });
                    }
                    tokio::time::sleep(retry_after.unwrap_or_else(|| policy.backoff(attempt)))
                        .await;
                }
            }
        }
    };
    let message = code.message.clone().unwrap_or_else(|| {
        format!(
            "To sign in, open {} and enter the code {}.",
            code.verification_uri
                .as_deref()
                .unwrap_or("https://microsoft.com/devicelogin"),
            code.user_code.as_deref().unwrap_or("(none given)")
        )
    });
    let _ = writeln!(out, "{message}");
    let _ = out.flush();

    let deadline = Instant::now() + Duration::from_secs(code.expires_in.unwrap_or(900));
    let mut interval = code
        .interval
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_POLL_INTERVAL)
        .max(Duration::from_secs(1));
    let mut transient = 0;
    loop {
        tokio::time::sleep(interval).await;
        if Instant::now() >= deadline {
            return Err(AuthError::CodeExpired);
        }
        let outcome: TokenOutcome<TokenReply> = post_form(
            http,
            &format!("{base}/token"),
            &[
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("client_id", &auth.client_id),
                ("device_code", code.device_code.expose_secret()),
            ],
        )
        .await;
        match outcome {
            TokenOutcome::Ok(reply) => {
                let Some(refresh) = reply.refresh_token else {
                    return Err(AuthError::Protocol {
                        detail: "the sign-in gave no refresh token (offline_access not granted?)"
                            .into(),
                    });
                };
                store.save(&refresh)?;
                tracing::info!(path = %store.path().display(), "signed in; refresh token stored");
                return Ok(());
            }
            TokenOutcome::OAuth { status, error } => match poll_step(&error.error, interval) {
                PollStep::Wait(next) => {
                    if next > interval {
                        tracing::debug!(
                            interval_s = next.as_secs(),
                            "slow_down: polling less often"
                        );
                    }
                    interval = next;
                }
                PollStep::Stop(PollStop::Declined) => return Err(AuthError::Declined),
                PollStep::Stop(PollStop::Expired) => return Err(AuthError::CodeExpired),
                PollStep::Stop(PollStop::Other) => return Err(grant_error(status, error)),
            },
            TokenOutcome::Transient { what, source, .. } => {
                transient += 1;
                if transient >= policy.max_attempts {
                    return Err(AuthError::Unavailable { what, source });
                }
            }
        }
    }
}

/// `sharepush login --refresh-token-file F`: redeems a refresh token
/// obtained elsewhere once and stores what the service handed back (its
/// rotated successor, or the token itself). A token the service refuses is
/// never stored: the sign-in already on disk stays as it was.
pub async fn import_refresh_token(provider: &TokenProvider, file: &Path) -> Result<(), AuthError> {
    if !matches!(provider.auth.mode, AuthMode::DeviceCode) {
        return Err(AuthError::Protocol {
            detail: "--refresh-token-file is for mode = \"device_code\"; app-only modes need no \
                     refresh token"
                .into(),
        });
    }
    let token = read_secret(file)?;
    let mut state = provider.state.lock().await;
    // Not remembered as a failure: the stored sign-in was not tried.
    let fresh = provider.fetch(Some(&token)).await?;
    *state = TokenState {
        cached: Some(fresh),
        failed: None,
    };
    Ok(())
}

/// Certificate credentials: the signed client assertion (RFC 7523) that
/// replaces a client secret (graph-api.md section 1): a JWT with header
/// `alg` RS256, `typ` JWT and `x5t#S256` (base64url SHA-256 of the
/// certificate's DER), claims `aud` = the token URL, `iss` = `sub` = the
/// client id, a random `jti`, `nbf`/`iat` now and `exp` ten minutes later,
/// signed with the certificate's RSA key (PKCS#8 or PKCS#1 PEM).
pub(crate) mod assertion {
    use std::path::Path;

    use base64::Engine as _;
    use ring::rand::{SecureRandom as _, SystemRandom};
    use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use secrecy::SecretString;
    use serde_json::json;

    use super::AuthError;

    /// How long an assertion is valid (the service accepts 5-10 minutes).
    const LIFETIME_SECS: i64 = 600;

    fn b64(data: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
    }

    fn unreadable(path: &Path, e: impl std::fmt::Display) -> AuthError {
        AuthError::Certificate {
            detail: format!("cannot read {} as PEM: {e}", path.display()),
        }
    }

    /// The `x5t#S256` thumbprint of the (first) certificate in a PEM file.
    pub fn thumbprint(certificate: &Path) -> Result<String, AuthError> {
        let der =
            CertificateDer::from_pem_file(certificate).map_err(|e| unreadable(certificate, e))?;
        Ok(b64(ring::digest::digest(
            &ring::digest::SHA256,
            der.as_ref(),
        )
        .as_ref()))
    }

    fn key_pair(private_key: &Path) -> Result<RsaKeyPair, AuthError> {
        // The key file's contents never reach an error message.
        let key =
            PrivateKeyDer::from_pem_file(private_key).map_err(|_| AuthError::Certificate {
                detail: format!("cannot read {} as a PEM private key", private_key.display()),
            })?;
        let pair = match &key {
            PrivateKeyDer::Pkcs8(k) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()),
            PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der()),
            _ => {
                return Err(AuthError::Certificate {
                    detail: format!(
                        "{} is not an RSA key (Entra ID certificate credentials are RSA)",
                        private_key.display()
                    ),
                });
            }
        };
        pair.map_err(|e| AuthError::Certificate {
            detail: format!("{} is not a usable RSA key: {e}", private_key.display()),
        })
    }

    /// Builds the client assertion JWT for `client_id` at `token_url` from a
    /// PEM certificate and its PEM private key. Read at each use, so a
    /// renewed certificate is picked up without a restart.
    pub fn client_assertion(
        certificate: &Path,
        private_key: &Path,
        client_id: &str,
        token_url: &str,
    ) -> Result<SecretString, AuthError> {
        let x5t = thumbprint(certificate)?;
        let key = key_pair(private_key)?;
        let rng = SystemRandom::new();
        let mut jti = [0u8; 16];
        rng.fill(&mut jti).map_err(|_| AuthError::Certificate {
            detail: "no randomness for the assertion id".into(),
        })?;
        let now = chrono::Utc::now().timestamp();
        let header = json!({"alg": "RS256", "typ": "JWT", "x5t#S256": x5t});
        let claims = json!({
            "aud": token_url,
            "iss": client_id,
            "sub": client_id,
            "jti": jti.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "nbf": now,
            "iat": now,
            "exp": now + LIFETIME_SECS,
        });
        let signing_input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let mut signature = vec![0; key.public().modulus_len()];
        key.sign(
            &RSA_PKCS1_SHA256,
            &rng,
            signing_input.as_bytes(),
            &mut signature,
        )
        .map_err(|_| AuthError::Certificate {
            detail: "signing the assertion failed".into(),
        })?;
        Ok(SecretString::from(format!(
            "{signing_input}.{}",
            b64(&signature)
        )))
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use secrecy::ExposeSecret as _;

        fn fixture(name: &str) -> std::path::PathBuf {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("crates/graph-emulator/tests/fixtures")
                .join(name)
        }

        #[test]
        fn the_assertion_is_a_signed_rs256_jwt_naming_the_certificate() {
            let jwt = client_assertion(
                &fixture("localhost.crt"),
                &fixture("localhost.key"),
                "client",
                "https://login.example/t/oauth2/v2.0/token",
            )
            .unwrap();
            let parts: Vec<&str> = jwt.expose_secret().split('.').collect();
            assert_eq!(parts.len(), 3);
            let decode = |p: &str| -> serde_json::Value {
                serde_json::from_slice(
                    &base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .decode(p)
                        .unwrap(),
                )
                .unwrap()
            };
            let header = decode(parts[0]);
            assert_eq!(header["alg"], "RS256");
            assert_eq!(header["typ"], "JWT");
            assert_eq!(
                header["x5t#S256"],
                thumbprint(&fixture("localhost.crt")).unwrap()
            );
            let claims = decode(parts[1]);
            assert_eq!(claims["aud"], "https://login.example/t/oauth2/v2.0/token");
            assert_eq!(
                (&claims["iss"], &claims["sub"]),
                (&claims["sub"], &"client".into())
            );
            let exp = claims["exp"].as_i64().unwrap() - claims["nbf"].as_i64().unwrap();
            assert!((300..=600).contains(&exp));
        }

        #[test]
        fn a_missing_key_is_named_without_contents() {
            let e = client_assertion(
                &fixture("localhost.crt"),
                Path::new("/nonexistent/key.pem"),
                "c",
                "u",
            )
            .unwrap_err();
            assert!(e.to_string().contains("/nonexistent/key.pem"), "{e}");
            assert!(e.needs_person());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_missing_systemd_credential_or_an_empty_secret_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client-secret");
        fs::write(&path, format!("{UNLOADED_CREDENTIAL}\n")).unwrap();
        let e = read_secret(&path).unwrap_err().to_string();
        assert!(e.contains("client-secret"), "{e}");
        assert!(e.contains("LoadCredential= was missing"), "{e}");
        fs::write(&path, "\n").unwrap();
        let e = read_secret(&path).unwrap_err().to_string();
        assert!(e.contains("is empty"), "{e}");
        fs::write(&path, "s3cret\n").unwrap();
        assert_eq!(read_secret(&path).unwrap().expose_secret(), "s3cret");
    }

    #[test]
    fn polling_follows_rfc_8628() {
        let five = Duration::from_secs(5);
        assert_eq!(
            poll_step("authorization_pending", five),
            PollStep::Wait(five)
        );
        assert_eq!(
            poll_step("slow_down", five),
            PollStep::Wait(Duration::from_secs(10))
        );
        assert_eq!(
            poll_step("authorization_declined", five),
            PollStep::Stop(PollStop::Declined)
        );
        assert_eq!(
            poll_step("expired_token", five),
            PollStep::Stop(PollStop::Expired)
        );
        assert_eq!(
            poll_step("bad_verification_code", five),
            PollStep::Stop(PollStop::Other)
        );
    }

    #[test]
    fn grant_errors_that_need_a_person_say_run_login() {
        for code in ["invalid_grant", "interaction_required", "consent_required"] {
            let e = grant_error(
                400,
                OAuthErrorReply {
                    error: code.into(),
                    error_codes: vec![70008],
                },
            );
            assert!(matches!(e, AuthError::LoginNeeded { .. }), "{code}");
            let text = e.to_string();
            assert!(text.contains("run `sharepush login`"), "{text}");
            assert!(text.contains("AADSTS70008"), "{text}");
            assert!(e.needs_person());
        }
        let e = grant_error(
            401,
            OAuthErrorReply {
                error: "invalid_client".into(),
                error_codes: vec![],
            },
        );
        assert!(matches!(e, AuthError::Rejected { .. }));
        assert!(e.needs_person());
        assert!(
            !AuthError::Unavailable {
                what: "503".into(),
                source: None
            }
            .needs_person()
        );
    }

    #[test]
    fn the_token_store_is_private_and_atomic() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::in_dir(&dir.path().join("state"));
        assert!(store.load().unwrap().is_none());
        store
            .save(&SecretString::from("first".to_string()))
            .unwrap();
        store
            .save(&SecretString::from("second".to_string()))
            .unwrap();
        assert_eq!(store.load().unwrap().unwrap().expose_secret(), "second");
        let mode = fs::metadata(store.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let leftovers: Vec<_> = fs::read_dir(dir.path().join("state"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, [std::ffi::OsString::from(TOKEN_FILE)]);
    }

    #[test]
    fn an_unreadable_stored_sign_in_names_the_file_and_the_reason_and_needs_a_person() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::in_dir(dir.path());
        // Not text (tests run as root here, so no permission is refused).
        fs::write(store.path(), [0xff, 0xfe, 0x00]).unwrap();
        let e = store.load().unwrap_err();
        assert!(matches!(e, AuthError::TokenUnreadable { .. }), "{e:?}");
        let text = e.to_string();
        assert!(text.contains(&store.path().display().to_string()), "{text}");
        assert!(text.contains("UTF-8"), "the OS reason: {text}");
        assert!(text.contains("sharepush login"), "{text}");
        assert!(e.needs_person(), "waiting does not fix a file");
        // Remembered failures say the same.
        assert_eq!(e.duplicate().to_string(), text);
    }

    #[test]
    fn an_unavailable_token_endpoint_says_why() {
        let e = AuthError::Unavailable {
            what: "connection failed".into(),
            source: Some(Box::new(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "Connection refused",
            ))),
        };
        assert_eq!(
            e.to_string(),
            "the token endpoint is unavailable: connection failed: Connection refused"
        );
        assert_eq!(e.duplicate().to_string(), e.to_string());
        assert!(!e.duplicate().needs_person());
    }

    #[tokio::test]
    async fn an_absurd_token_lifetime_is_capped_instead_of_overflowing_the_clock() {
        let dir = tempfile::tempdir().unwrap();
        let auth = AuthSpec {
            tenant: "t".into(),
            client_id: "c".into(),
            mode: AuthMode::DeviceCode,
            authority: "http://127.0.0.1:9".into(),
            graph_url: "http://127.0.0.1:9/v1.0".into(),
        };
        let provider = TokenProvider::new(
            auth,
            crate::remote::graph::http_client().unwrap(),
            dir.path(),
            RetryPolicy::default(),
        );
        let reply: TokenReply =
            serde_json::from_str(r#"{"access_token":"a","expires_in":18446744073709551615}"#)
                .unwrap();
        let cached = provider.accept(reply, None).unwrap();
        assert!(cached.refresh_at <= Instant::now() + MAX_TOKEN_LIFETIME);
        assert!(cached.refresh_at > Instant::now() + Duration::from_secs(3600));
    }

    #[test]
    fn app_scope_follows_the_graph_host() {
        assert_eq!(
            app_scope("https://graph.microsoft.com/v1.0"),
            "https://graph.microsoft.com/.default"
        );
        assert_eq!(
            app_scope("https://graph.microsoft.us/v1.0"),
            "https://graph.microsoft.us/.default"
        );
        assert_eq!(
            app_scope("http://127.0.0.1:8070/v1.0"),
            "http://127.0.0.1:8070/.default"
        );
    }

    #[test]
    fn token_replies_keep_secrets_out_of_debug() {
        let reply: TokenReply = serde_json::from_str(
            r#"{"access_token":"AT-SECRET","expires_in":"3599","refresh_token":"RT-SECRET"}"#,
        )
        .unwrap();
        assert_eq!(reply.expires_in, Some(3599));
        let debug = format!("{:?} {:?}", reply.access_token, reply.refresh_token);
        assert!(!debug.contains("SECRET"), "{debug}");
    }
}
