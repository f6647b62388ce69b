//! graph-api.md §1 client credentials with a certificate assertion
//! (feature `cert-auth`): RS256/PS256 JWTs checked against the registered
//! certificate (tests/fixtures/localhost.crt, key localhost.key).

use crate::common::*;
use base64::Engine as _;
use graph_emulator::Options;
use ring::signature::{RSA_PKCS1_SHA256, RSA_PSS_SHA256, RsaKeyPair};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use std::path::PathBuf;

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

fn thumbprint() -> String {
    let der = CertificateDer::from_pem_file(fixture("localhost.crt")).unwrap();
    b64(ring::digest::digest(&ring::digest::SHA256, &der).as_ref())
}

fn sign(header: &Value, claims: &Value) -> String {
    let key_der = PrivatePkcs8KeyDer::from_pem_file(fixture("localhost.key")).unwrap();
    let key = RsaKeyPair::from_pkcs8(key_der.secret_pkcs8_der()).unwrap();
    let msg = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let mut sig = vec![0; key.public().modulus_len()];
    let alg: &'static dyn ring::signature::RsaEncoding = if header["alg"] == "PS256" {
        &RSA_PSS_SHA256
    } else {
        &RSA_PKCS1_SHA256
    };
    key.sign(
        alg,
        &ring::rand::SystemRandom::new(),
        msg.as_bytes(),
        &mut sig,
    )
    .unwrap();
    format!("{msg}.{}", b64(&sig))
}

async fn emu() -> Emu {
    start_with(Options {
        client_certificates: vec![fixture("localhost.crt")],
        ..opts()
    })
    .await
}

fn header(alg: &str) -> Value {
    json!({"alg": alg, "typ": "JWT", "x5t#S256": thumbprint()})
}

fn claims(emu: &Emu) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({
        "aud": emu.h.token_url(TENANT),
        "iss": "cert-app",
        "sub": "cert-app",
        "jti": "5f0e8a52-9a35-4f7b-9d4c-7f1c2a3b4c5d",
        "nbf": now,
        "iat": now,
        "exp": now + 600,
    })
}

async fn redeem(emu: &Emu, assertion: &str) -> reqwest::Response {
    emu.token_form(&[
        ("grant_type", "client_credentials"),
        ("client_id", "cert-app"),
        ("scope", "https://graph.microsoft.com/.default"),
        ("client_assertion_type", JWT_BEARER),
        ("client_assertion", assertion),
    ])
    .await
}

#[tokio::test]
async fn certificate_assertion_rs256_and_ps256_give_an_app_token() {
    let emu = emu().await;
    for alg in ["RS256", "PS256"] {
        let r = redeem(&emu, &sign(&header(alg), &claims(&emu))).await;
        assert_eq!(r.status(), 200, "{alg}");
        let v: Value = r.json().await.unwrap();
        assert!(v.get("refresh_token").is_none());
        let at = v["access_token"].as_str().unwrap();
        let g = emu
            .c
            .get(emu.drive_path("/root"))
            .bearer_auth(at)
            .send()
            .await
            .unwrap();
        assert_eq!(g.status(), 200);
    }
}

#[tokio::test]
async fn certificate_assertion_with_a_bad_signature_is_invalid_client() {
    let emu = emu().await;
    let good = sign(&header("RS256"), &claims(&emu));
    let (head, sig) = good.rsplit_once('.').unwrap();
    let mut raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(sig)
        .unwrap();
    raw[10] ^= 1;
    let (status, error, body) =
        oauth_err(redeem(&emu, &format!("{head}.{}", b64(&raw))).await).await;
    assert_eq!((status, error.as_str()), (401, "invalid_client"));
    assert_eq!(body["error_codes"], json!([700027]));
}

#[tokio::test]
async fn certificate_assertion_with_an_unregistered_thumbprint_is_invalid_client() {
    let emu = emu().await;
    let mut h = header("RS256");
    h["x5t#S256"] = json!(b64(&[7; 32]));
    let (status, error, _) = oauth_err(redeem(&emu, &sign(&h, &claims(&emu))).await).await;
    assert_eq!((status, error.as_str()), (401, "invalid_client"));
}

#[tokio::test]
async fn certificate_assertion_audience_must_be_the_token_url() {
    let emu = emu().await;
    let mut c = claims(&emu);
    c["aud"] = json!("https://login.microsoftonline.com/other/oauth2/v2.0/token");
    let (status, error, body) = oauth_err(redeem(&emu, &sign(&header("RS256"), &c)).await).await;
    assert_eq!(
        (status, error.as_str(), body["error_codes"][0].as_u64()),
        (401, "invalid_client", Some(700023))
    );
}

#[tokio::test]
async fn certificate_assertion_issuer_and_subject_must_be_the_client_id() {
    let emu = emu().await;
    let mut c = claims(&emu);
    c["iss"] = json!("someone-else");
    let (status, _, body) = oauth_err(redeem(&emu, &sign(&header("RS256"), &c)).await).await;
    assert_eq!(
        (status, body["error_codes"][0].as_u64()),
        (401, Some(700021))
    );
}

#[tokio::test]
async fn expired_certificate_assertion_is_refused() {
    let emu = emu().await;
    let mut c = claims(&emu);
    let now = chrono::Utc::now().timestamp();
    c["nbf"] = json!(now - 900);
    c["exp"] = json!(now - 300);
    let (status, _, body) = oauth_err(redeem(&emu, &sign(&header("RS256"), &c)).await).await;
    assert_eq!(
        (status, body["error_codes"][0].as_u64()),
        (401, Some(700024))
    );
}

#[tokio::test]
async fn certificate_assertion_needs_rs256_or_ps256_and_typ_jwt() {
    let emu = emu().await;
    let mut h = header("RS256");
    h["alg"] = json!("HS256");
    let (status, error, _) = oauth_err(redeem(&emu, &sign(&h, &claims(&emu))).await).await;
    assert_eq!((status, error.as_str()), (401, "invalid_client"));
    let mut h = header("RS256");
    h["typ"] = json!("JOSE");
    let (status, error, _) = oauth_err(redeem(&emu, &sign(&h, &claims(&emu))).await).await;
    assert_eq!((status, error.as_str()), (400, "invalid_request"));
}
