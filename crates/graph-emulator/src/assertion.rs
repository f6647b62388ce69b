//! Certificate credentials for client credentials (graph-api.md §1): the
//! `client_assertion` JWT, checked against the app's registered
//! certificates.
//!
//! Checked: compact JWT shape, header `alg` RS256 or PS256, `typ` JWT,
//! `x5t#S256` naming a registered certificate (base64url SHA-256 of its
//! DER), the signature against that certificate's key, `aud` equal to the
//! token URL the client called, `iss` = `sub` = client_id, `jti`, and the
//! `nbf`/`exp` window (5 min skew allowed on `nbf` only). Verification needs the
//! `cert-auth` feature; without it every assertion is refused. It does not
//! check certificate validity dates or chains (Entra ID does not either: the
//! app registration holds the certificate itself).

use crate::Error;
use std::path::PathBuf;

/// Why an assertion was refused: Entra's error, AADSTS code and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// 400 or 401.
    pub status: u16,
    /// OAuth `error`.
    pub error: &'static str,
    /// AADSTS code.
    pub code: u32,
    /// Description.
    pub message: String,
}

fn reject(status: u16, error: &'static str, code: u32, message: impl Into<String>) -> Rejection {
    Rejection {
        status,
        error,
        code,
        message: message.into(),
    }
}

/// The certificates registered for the app.
#[derive(Debug, Default)]
pub struct Certificates {
    /// (DER, base64url SHA-256 thumbprint).
    #[cfg(feature = "cert-auth")]
    list: Vec<(Vec<u8>, String)>,
}

impl Certificates {
    /// Load PEM certificates (each file may hold several).
    pub fn load(paths: &[PathBuf]) -> Result<Self, Error> {
        #[cfg(not(feature = "cert-auth"))]
        {
            if let Some(p) = paths.first() {
                return Err(Error::Certificate(format!(
                    "{}: this build cannot check certificate assertions (cargo feature `cert-auth`)",
                    p.display()
                )));
            }
            Ok(Self::default())
        }
        #[cfg(feature = "cert-auth")]
        {
            use base64::Engine as _;
            use rustls_pki_types::CertificateDer;
            use rustls_pki_types::pem::PemObject as _;
            let mut list = Vec::new();
            for p in paths {
                let err =
                    |e: &dyn std::fmt::Display| Error::Certificate(format!("{}: {e}", p.display()));
                for cert in CertificateDer::pem_file_iter(p).map_err(|e| err(&e))? {
                    let der = cert.map_err(|e| err(&e))?.to_vec();
                    webpki::EndEntityCert::try_from(&CertificateDer::from(der.as_slice()))
                        .map_err(|e| err(&e))?;
                    let digest = ring::digest::digest(&ring::digest::SHA256, &der);
                    let thumb =
                        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref());
                    list.push((der, thumb));
                }
            }
            Ok(Self { list })
        }
    }

    /// Check a `client_assertion` for `client_id` posted to `token_url`.
    #[cfg_attr(not(feature = "cert-auth"), allow(unused_variables))]
    pub fn verify(
        &self,
        jwt: &str,
        client_id: &str,
        token_url: &str,
        now_ms: i64,
    ) -> Result<(), Rejection> {
        #[cfg(not(feature = "cert-auth"))]
        {
            Err(reject(
                401,
                "invalid_client",
                700027,
                "Client assertion failed signature validation (this emulator was built without certificate support).",
            ))
        }
        #[cfg(feature = "cert-auth")]
        {
            self.verify_jwt(jwt, client_id, token_url, now_ms)
        }
    }

    #[cfg(feature = "cert-auth")]
    fn verify_jwt(
        &self,
        jwt: &str,
        client_id: &str,
        token_url: &str,
        now_ms: i64,
    ) -> Result<(), Rejection> {
        use base64::Engine as _;
        use serde_json::Value;
        let malformed = |why: &str| {
            reject(
                400,
                "invalid_request",
                50027,
                format!("JWT token is invalid or is malformed: {why}."),
            )
        };
        let b64 = |s: &str| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(s.trim_end_matches('='))
                .map_err(|_| malformed("bad base64url"))
        };
        let parts: Vec<&str> = jwt.split('.').collect();
        let [h, c, s] = parts.as_slice() else {
            return Err(malformed("expected three dot-separated parts"));
        };
        let header: Value =
            serde_json::from_slice(&b64(h)?).map_err(|_| malformed("header is not JSON"))?;
        let claims: Value =
            serde_json::from_slice(&b64(c)?).map_err(|_| malformed("claims are not JSON"))?;
        let signature = b64(s)?;
        if header.get("typ").and_then(Value::as_str) != Some("JWT") {
            return Err(malformed("header typ must be JWT"));
        }
        let alg = match header.get("alg").and_then(Value::as_str) {
            Some("RS256") => webpki::ring::RSA_PKCS1_2048_8192_SHA256,
            Some("PS256") => webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
            other => {
                return Err(reject(
                    401,
                    "invalid_client",
                    700027,
                    format!(
                        "Client assertion algorithm {other:?} is not supported; use RS256 or PS256."
                    ),
                ));
            }
        };
        let thumb = header
            .get("x5t#S256")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                reject(
                    401,
                    "invalid_client",
                    700027,
                    "Client assertion has no x5t#S256 header.",
                )
            })?;
        let (der, _) = self
            .list
            .iter()
            .find(|(_, t)| t == thumb)
            .ok_or_else(|| reject(401, "invalid_client", 700027, format!("Client assertion contains an invalid signature. Key was not found: x5t#S256 {thumb}.")))?;
        let der = rustls_pki_types::CertificateDer::from(der.as_slice());
        let cert = webpki::EndEntityCert::try_from(&der).map_err(|_| {
            reject(
                401,
                "invalid_client",
                700027,
                "Registered certificate cannot be parsed.",
            )
        })?;
        let signed = &jwt[..h.len() + 1 + c.len()];
        cert.verify_signature(alg, signed.as_bytes(), &signature)
            .map_err(|_| {
                reject(
                    401,
                    "invalid_client",
                    700027,
                    "Client assertion failed signature validation.",
                )
            })?;
        let str_claim = |k: &str| claims.get(k).and_then(Value::as_str);
        let aud_ok = match claims.get("aud") {
            Some(Value::String(a)) => a.eq_ignore_ascii_case(token_url),
            Some(Value::Array(list)) => list.iter().any(|a| {
                a.as_str()
                    .is_some_and(|a| a.eq_ignore_ascii_case(token_url))
            }),
            _ => false,
        };
        if !aud_ok {
            return Err(reject(
                401,
                "invalid_client",
                700023,
                format!(
                    "Client assertion audience claim does not match the token endpoint {token_url}."
                ),
            ));
        }
        if str_claim("iss") != Some(client_id) || str_claim("sub") != Some(client_id) {
            return Err(reject(
                401,
                "invalid_client",
                700021,
                "Client assertion application identifier doesn't match 'client_id' parameter.",
            ));
        }
        if str_claim("jti").is_none_or(str::is_empty) {
            return Err(malformed("jti claim is required"));
        }
        let num = |k: &str| claims.get(k).and_then(Value::as_i64);
        let (Some(nbf), Some(exp)) = (num("nbf"), num("exp")) else {
            return Err(malformed("nbf and exp claims are required"));
        };
        let now = now_ms / 1000;
        const SKEW: i64 = 300;
        // Clients' clocks may run a little ahead (nbf); expiry is strict.
        if now >= exp || now + SKEW < nbf {
            return Err(reject(
                401,
                "invalid_client",
                700024,
                "Client assertion is not within its valid time range.",
            ));
        }
        Ok(())
    }
}
