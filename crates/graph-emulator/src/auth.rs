//! The Entra ID token service (graph-api.md §1) and bearer checks for Graph.
//!
//! Device code flow (approved or declined through the admin API), refresh
//! tokens that rotate on every use (optionally refusing the old one at
//! once), revocation, client credentials with a secret, and access tokens
//! that expire on the emulator's clock. Tokens are opaque random strings.
//! Certificate assertions (`client_assertion`) are checked by `assertion`.

use crate::assertion::Certificates;
use crate::clock::Clock;
use crate::error::{GraphError, oauth_error};
use crate::options::Options;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::HashMap;

const GRAPH: &str = "https://graph.microsoft.com/";
/// Scope of `POST /_emulator/login` when none is given.
pub const DEFAULT_USER_SCOPE: &str = "Files.ReadWrite.All Sites.ReadWrite.All offline_access";
const OIDC_SCOPES: &[&str] = &["offline_access", "openid", "profile", "email"];
const INACTIVITY_MS: i64 = 90 * 24 * 3600 * 1000;

/// Who an access token speaks for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Principal {
    /// A signed-in user with these (normalized) scopes.
    Delegated(Vec<String>),
    /// The application itself with these roles.
    App(Vec<String>),
}

/// An issued access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessToken {
    /// The app it was issued to.
    pub client_id: String,
    /// User or app permissions.
    pub principal: Principal,
    /// Unix ms after which it answers 401.
    pub expires_ms: i64,
}

impl AccessToken {
    fn grants(&self, wanted: &[&str]) -> bool {
        let has = |list: &[String]| {
            list.iter().any(|s| {
                let short = s.strip_prefix(GRAPH).unwrap_or(s);
                short == ".default" || wanted.iter().any(|w| w.eq_ignore_ascii_case(short))
            })
        };
        match &self.principal {
            Principal::Delegated(s) | Principal::App(s) => has(s),
        }
    }

    /// May this token change content?
    pub fn can_write(&self) -> bool {
        self.grants(&[
            "Files.ReadWrite",
            "Files.ReadWrite.All",
            "Sites.ReadWrite.All",
            "Sites.Manage.All",
            "Sites.FullControl.All",
        ])
    }

    /// May this token read content?
    pub fn can_read(&self) -> bool {
        self.can_write() || self.grants(&["Files.Read", "Files.Read.All", "Sites.Read.All"])
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum RefreshStatus {
    Valid,
    Rotated,
    Revoked,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RefreshToken {
    client_id: String,
    scopes: Vec<String>,
    status: RefreshStatus,
    last_used_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeviceStatus {
    Pending,
    Approved,
    Declined,
    Redeemed,
}

#[derive(Debug, Clone)]
struct DeviceCode {
    user_code: String,
    client_id: String,
    scopes: Vec<String>,
    offline: bool,
    expires_ms: i64,
    interval_ms: i64,
    last_poll_ms: i64,
    status: DeviceStatus,
}

/// Every token the service knows.
#[derive(Debug, Default)]
pub struct AuthState {
    device_codes: HashMap<String, DeviceCode>,
    refresh: HashMap<String, RefreshToken>,
    access: HashMap<String, AccessToken>,
}

/// Persisted part of the token service.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct AuthSnapshot {
    refresh: HashMap<String, RefreshToken>,
    access: HashMap<String, AccessToken>,
}

fn random_token(prefix: &str, n: usize) -> String {
    let mut s = String::from(prefix);
    while s.len() < n {
        s.push_str(&uuid::Uuid::new_v4().simple().to_string());
    }
    s.truncate(n);
    s
}

fn user_code() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    uuid::Uuid::new_v4().as_bytes()[..9]
        .iter()
        .map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char)
        .collect()
}

/// Split a scope string into normalized Graph scopes (short names get the
/// Graph resource prefix) and whether `offline_access` was asked for.
fn normalize_scopes(scope: &str) -> (Vec<String>, bool) {
    let mut out = Vec::new();
    let mut offline = false;
    for s in scope.split_whitespace() {
        if s.eq_ignore_ascii_case("offline_access") {
            offline = true;
        } else if OIDC_SCOPES.iter().any(|o| o.eq_ignore_ascii_case(s)) {
        } else if s.starts_with("https://") || s.starts_with("http://") || s.starts_with("api://") {
            out.push(s.to_string());
        } else {
            out.push(format!("{GRAPH}{s}"));
        }
    }
    (out, offline)
}

/// Client id and secret from the form or an HTTP Basic header (rclone).
fn client_credentials(
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> (Option<String>, Option<String>) {
    let mut id = form.get("client_id").cloned();
    let mut secret = form.get("client_secret").cloned();
    if let Some(basic) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Basic ")
                .or_else(|| v.strip_prefix("basic "))
        })
        && let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(basic.trim())
        && let Ok(text) = String::from_utf8(raw)
        && let Some((u, p)) = text.split_once(':')
    {
        let dec = |s: &str| {
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        id.get_or_insert(dec(u));
        secret.get_or_insert(dec(p));
    }
    (
        id.filter(|s| !s.is_empty()),
        secret.filter(|s| !s.is_empty()),
    )
}

/// Answers of the token endpoints; one per request.
#[derive(Debug)]
pub struct TokenService<'a> {
    /// Configuration (tenant, client restrictions, lifetimes).
    pub opts: &'a Options,
    /// Emulator time.
    pub clock: &'a Clock,
    /// Certificates registered for certificate assertions.
    pub certs: &'a Certificates,
    /// The token URL as the client called it (`aud` of assertions).
    pub token_url: String,
}

impl TokenService<'_> {
    fn err(&self, status: StatusCode, error: &str, code: u32, desc: &str) -> Response {
        oauth_error(status, error, code, desc, None, self.clock.now_ms())
    }

    fn missing(&self, param: &str) -> Response {
        self.err(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
            &format!("The request body must contain the following parameter: '{param}'."),
        )
    }

    /// Is the `{tenant}` segment one this tenant answers to? Returns
    /// whether it names a specific tenant (needed for client credentials).
    fn check_tenant(&self, tenant: &str) -> Result<bool, Box<Response>> {
        let t = tenant.to_ascii_lowercase();
        if t == "common" || t == "organizations" {
            return Ok(false);
        }
        if t == self.opts.tenant.to_ascii_lowercase()
            || t == self.opts.tenant_id.to_ascii_lowercase()
        {
            return Ok(true);
        }
        Err(Box::new(self.err(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90002,
            &format!("Tenant '{tenant}' not found."),
        )))
    }

    fn check_client(&self, client_id: &str) -> Result<(), Box<Response>> {
        match &self.opts.client_id {
            Some(allowed) if allowed != client_id => Err(Box::new(self.err(
                StatusCode::BAD_REQUEST,
                "unauthorized_client",
                700016,
                &format!(
                    "Application with identifier '{client_id}' was not found in the directory."
                ),
            ))),
            _ => Ok(()),
        }
    }

    /// `POST /{tenant}/oauth2/v2.0/devicecode`.
    pub fn devicecode(
        &self,
        state: &mut AuthState,
        tenant: &str,
        form: &HashMap<String, String>,
    ) -> Response {
        if let Err(r) = self.check_tenant(tenant) {
            return *r;
        }
        let Some(client_id) = form.get("client_id").filter(|s| !s.is_empty()) else {
            return self.missing("client_id");
        };
        if let Err(r) = self.check_client(client_id) {
            return *r;
        }
        let Some(scope) = form.get("scope").filter(|s| !s.trim().is_empty()) else {
            return self.missing("scope");
        };
        let (scopes, offline) = normalize_scopes(scope);
        let now = self.clock.now_ms();
        let device_code = random_token("DAQABAAEAAA", 160);
        let code = user_code();
        let lifetime = self.opts.device_code_lifetime.as_secs();
        let interval = self.opts.device_code_interval.as_secs();
        state.device_codes.insert(
            device_code.clone(),
            DeviceCode {
                user_code: code.clone(),
                client_id: client_id.clone(),
                scopes,
                offline,
                expires_ms: now + lifetime as i64 * 1000,
                interval_ms: interval as i64 * 1000,
                last_poll_ms: now,
                status: DeviceStatus::Pending,
            },
        );
        crate::error::json_response(
            StatusCode::OK,
            &json!({
                "user_code": code,
                "device_code": device_code,
                "verification_uri": "https://microsoft.com/devicelogin",
                "expires_in": lifetime,
                "interval": interval,
                "message": format!("To sign in, use a web browser to open the page https://microsoft.com/devicelogin and enter the code {code} to authenticate."),
            }),
        )
    }

    /// `POST /{tenant}/oauth2/v2.0/token`.
    pub fn token(
        &self,
        state: &mut AuthState,
        tenant: &str,
        headers: &HeaderMap,
        form: &HashMap<String, String>,
    ) -> Response {
        let specific_tenant = match self.check_tenant(tenant) {
            Ok(s) => s,
            Err(r) => return *r,
        };
        let Some(grant) = form.get("grant_type") else {
            return self.missing("grant_type");
        };
        let (client_id, secret) = client_credentials(headers, form);
        let Some(client_id) = client_id else {
            return self.missing("client_id");
        };
        if let Err(r) = self.check_client(&client_id) {
            return *r;
        }
        if let Some(s) = &secret
            && *s != self.opts.client_secret
        {
            return self.invalid_secret();
        }
        match grant.as_str() {
            "urn:ietf:params:oauth:grant-type:device_code" => {
                self.device_grant(state, &client_id, form)
            }
            "refresh_token" => self.refresh_grant(state, &client_id, form),
            "client_credentials" => {
                self.app_grant(state, specific_tenant, &client_id, secret.is_some(), form)
            }
            other => self.err(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                70003,
                &format!("The app requested an unsupported grant type '{other}'."),
            ),
        }
    }

    fn invalid_secret(&self) -> Response {
        self.err(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000215,
            "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.",
        )
    }

    fn device_grant(
        &self,
        state: &mut AuthState,
        client_id: &str,
        form: &HashMap<String, String>,
    ) -> Response {
        let Some(code) = form.get("device_code") else {
            return self.missing("device_code");
        };
        let now = self.clock.now_ms();
        let Some(dc) = state.device_codes.get_mut(code) else {
            return self.err(
                StatusCode::BAD_REQUEST,
                "bad_verification_code",
                70000,
                "The device code is not valid.",
            );
        };
        if dc.client_id != client_id {
            return self.err(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                70000,
                "The device code was issued to another client.",
            );
        }
        if now >= dc.expires_ms {
            return self.err(
                StatusCode::BAD_REQUEST,
                "expired_token",
                70019,
                "Verification code expired.",
            );
        }
        if dc.status == DeviceStatus::Redeemed {
            return self.err(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                54005,
                "OAuth2 Authorization code was already redeemed.",
            );
        }
        if now - dc.last_poll_ms < dc.interval_ms {
            dc.interval_ms += 5000;
            dc.last_poll_ms = now;
            return self.err(
                StatusCode::BAD_REQUEST,
                "slow_down",
                70016,
                "Polling too fast; add 5 seconds to the interval.",
            );
        }
        dc.last_poll_ms = now;
        match dc.status {
            DeviceStatus::Pending => self.err(
                StatusCode::BAD_REQUEST,
                "authorization_pending",
                70016,
                "OAuth 2.0 device flow error. Authorization is pending. Continue polling.",
            ),
            DeviceStatus::Declined => self.err(
                StatusCode::BAD_REQUEST,
                "authorization_declined",
                70000,
                "The user declined the authorization request.",
            ),
            DeviceStatus::Redeemed => unreachable!("checked above"),
            DeviceStatus::Approved => {
                dc.status = DeviceStatus::Redeemed;
                let (scopes, offline) = (dc.scopes.clone(), dc.offline);
                self.issue_delegated(state, client_id, scopes, offline)
            }
        }
    }

    fn issue_delegated(
        &self,
        state: &mut AuthState,
        client_id: &str,
        scopes: Vec<String>,
        offline: bool,
    ) -> Response {
        let body = self.delegated_tokens(state, client_id, scopes, offline);
        crate::error::json_response(StatusCode::OK, &body)
    }

    /// Tokens for a user who signed in with `scope`, as the token endpoint
    /// would return them (for tests and demos that preset a token).
    pub fn user_tokens(
        &self,
        state: &mut AuthState,
        client_id: &str,
        scope: &str,
    ) -> serde_json::Value {
        let (scopes, offline) = normalize_scopes(scope);
        self.delegated_tokens(state, client_id, scopes, offline)
    }

    fn delegated_tokens(
        &self,
        state: &mut AuthState,
        client_id: &str,
        scopes: Vec<String>,
        offline: bool,
    ) -> serde_json::Value {
        let now = self.clock.now_ms();
        let lifetime = self.opts.token_lifetime.as_secs();
        let access = random_token("eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.emu", 1200);
        state.access.insert(
            access.clone(),
            AccessToken {
                client_id: client_id.to_string(),
                principal: Principal::Delegated(scopes.clone()),
                expires_ms: now + lifetime as i64 * 1000,
            },
        );
        let mut body = json!({
            "token_type": "Bearer",
            "scope": scopes.join(" "),
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": access,
        });
        if offline {
            let refresh = random_token("0.AAAA", 800);
            state.refresh.insert(
                refresh.clone(),
                RefreshToken {
                    client_id: client_id.to_string(),
                    scopes,
                    status: RefreshStatus::Valid,
                    last_used_ms: now,
                },
            );
            body["refresh_token"] = json!(refresh);
        }
        body
    }

    fn refresh_grant(
        &self,
        state: &mut AuthState,
        client_id: &str,
        form: &HashMap<String, String>,
    ) -> Response {
        let Some(token) = form.get("refresh_token") else {
            return self.missing("refresh_token");
        };
        let now = self.clock.now_ms();
        let Some(rt) = state.refresh.get_mut(token) else {
            return self.err(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                9002313,
                "Invalid request. Request is malformed or invalid.",
            );
        };
        if rt.client_id != client_id {
            return self.err(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                70000,
                "The refresh token was issued to another client.",
            );
        }
        match rt.status {
            RefreshStatus::Revoked => {
                return self.err(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    70008,
                    "The provided authorization code or refresh token has expired due to inactivity or was revoked. Send a new interactive authorization request for this user and resource.",
                );
            }
            RefreshStatus::Rotated if self.opts.invalidate_old_refresh_tokens => {
                return self.err(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    70000,
                    "The refresh token has already been used to obtain a new one.",
                );
            }
            _ => {}
        }
        if now - rt.last_used_ms > INACTIVITY_MS {
            return self.err(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                700082,
                "The refresh token has expired due to inactivity.",
            );
        }
        let granted = rt.scopes.clone();
        let scopes = match form.get("scope").filter(|s| !s.trim().is_empty()) {
            None => granted,
            Some(scope) => {
                let (asked, _) = normalize_scopes(scope);
                let ok = asked.iter().all(|s| {
                    s.ends_with("/.default") || granted.iter().any(|g| g.eq_ignore_ascii_case(s))
                });
                if !ok {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        65001,
                        "The user or administrator has not consented to use the application for the requested scopes.",
                        Some("consent_required"),
                        now,
                    );
                }
                if asked.iter().any(|s| s.ends_with("/.default")) {
                    granted
                } else {
                    asked
                }
            }
        };
        rt.status = RefreshStatus::Rotated;
        rt.last_used_ms = now;
        self.issue_delegated(state, client_id, scopes, true)
    }

    fn app_grant(
        &self,
        state: &mut AuthState,
        specific_tenant: bool,
        client_id: &str,
        has_secret: bool,
        form: &HashMap<String, String>,
    ) -> Response {
        if !specific_tenant {
            return self.err(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                50059,
                "No tenant-identifying information found in either the request or implied by any provided credentials.",
            );
        }
        let Some(scope) = form.get("scope") else {
            return self.missing("scope");
        };
        if !scope.split_whitespace().all(|s| s.ends_with("/.default")) || scope.trim().is_empty() {
            return self.err(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                1002012,
                &format!("The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."),
            );
        }
        if let Some(assertion) = form.get("client_assertion") {
            if form.get("client_assertion_type").map(String::as_str)
                != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
            {
                return self.err(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    50027,
                    "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer.",
                );
            }
            if has_secret {
                return self.err(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    90014,
                    "Send either client_secret or client_assertion, not both.",
                );
            }
            let now = self.clock.now_ms();
            if let Err(r) = self
                .certs
                .verify(assertion, client_id, &self.token_url, now)
            {
                return oauth_error(
                    StatusCode::from_u16(r.status).unwrap_or(StatusCode::UNAUTHORIZED),
                    r.error,
                    r.code,
                    &r.message,
                    None,
                    now,
                );
            }
            return self.app_token(state, client_id);
        }
        if !has_secret {
            return self.err(
                StatusCode::BAD_REQUEST,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            );
        }
        self.app_token(state, client_id)
    }

    fn app_token(&self, state: &mut AuthState, client_id: &str) -> Response {
        let now = self.clock.now_ms();
        let lifetime = self.opts.token_lifetime.as_secs();
        let access = random_token("eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.app", 1200);
        state.access.insert(
            access.clone(),
            AccessToken {
                client_id: client_id.to_string(),
                principal: Principal::App(self.opts.app_roles.clone()),
                expires_ms: now + lifetime as i64 * 1000,
            },
        );
        crate::error::json_response(
            StatusCode::OK,
            &json!({
                "token_type": "Bearer",
                "expires_in": lifetime,
                "ext_expires_in": lifetime,
                "access_token": access,
            }),
        )
    }
}

impl AuthState {
    /// Check the bearer token of a Graph request.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        now_ms: i64,
    ) -> Result<AccessToken, GraphError> {
        let value = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let token = value
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
            .unwrap_or("");
        if token.is_empty() {
            return Err(GraphError::unauthenticated("Access token is empty."));
        }
        let Some(at) = self.access.get(token) else {
            return Err(GraphError::unauthenticated(
                "IDX14100: JWT is not well formed, there are no dots (.).",
            ));
        };
        if now_ms >= at.expires_ms {
            return Err(GraphError::unauthenticated(
                "Access token has expired or is not yet valid.",
            ));
        }
        Ok(at.clone())
    }

    fn find_user_code(&mut self, user_code: &str) -> Option<&mut DeviceCode> {
        let want: String = user_code.chars().filter(|c| *c != '-').collect();
        self.device_codes
            .values_mut()
            .find(|d| d.user_code.eq_ignore_ascii_case(&want))
    }

    /// Play the user: approve a pending device code.
    pub fn approve(&mut self, user_code: &str) -> bool {
        match self.find_user_code(user_code) {
            Some(d) if d.status == DeviceStatus::Pending => {
                d.status = DeviceStatus::Approved;
                true
            }
            _ => false,
        }
    }

    /// Play the user: decline a pending device code.
    pub fn decline(&mut self, user_code: &str) -> bool {
        match self.find_user_code(user_code) {
            Some(d) if d.status == DeviceStatus::Pending => {
                d.status = DeviceStatus::Declined;
                true
            }
            _ => false,
        }
    }

    /// User codes still waiting for the user.
    pub fn pending_user_codes(&self) -> Vec<String> {
        self.device_codes
            .values()
            .filter(|d| d.status == DeviceStatus::Pending)
            .map(|d| d.user_code.clone())
            .collect()
    }

    /// Revoke every refresh token (admin action / password reset).
    pub fn revoke_all(&mut self) {
        for rt in self.refresh.values_mut() {
            rt.status = RefreshStatus::Revoked;
        }
    }

    /// Make every access token expired now.
    pub fn expire_access_tokens(&mut self, now_ms: i64) {
        for at in self.access.values_mut() {
            at.expires_ms = at.expires_ms.min(now_ms);
        }
    }

    /// Forget every token and device code.
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// Drop tokens long expired so the map does not grow forever.
    pub fn prune(&mut self, now_ms: i64) {
        self.access.retain(|_, a| a.expires_ms > now_ms - 3_600_000);
        self.device_codes
            .retain(|_, d| d.expires_ms > now_ms - 3_600_000);
    }

    /// Persisted form.
    pub fn snapshot(&self) -> AuthSnapshot {
        AuthSnapshot {
            refresh: self.refresh.clone(),
            access: self.access.clone(),
        }
    }

    /// Load a persisted form.
    pub fn restore(&mut self, snap: AuthSnapshot) {
        self.refresh = snap.refresh;
        self.access = snap.access;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_normalized_to_graph_resource() {
        let (s, offline) = normalize_scopes(
            "Files.ReadWrite.All offline_access openid https://graph.microsoft.com/Sites.ReadWrite.All",
        );
        assert!(offline);
        assert_eq!(
            s,
            [
                "https://graph.microsoft.com/Files.ReadWrite.All",
                "https://graph.microsoft.com/Sites.ReadWrite.All"
            ]
        );
    }

    #[test]
    fn permissions() {
        let tok = |p| AccessToken {
            client_id: "c".into(),
            principal: p,
            expires_ms: 0,
        };
        let read = tok(Principal::Delegated(vec![format!("{GRAPH}Files.Read.All")]));
        assert!(read.can_read() && !read.can_write());
        let app = tok(Principal::App(vec!["Sites.ReadWrite.All".into()]));
        assert!(app.can_write());
        let none = tok(Principal::Delegated(vec![format!("{GRAPH}User.Read")]));
        assert!(!none.can_read());
    }
}
