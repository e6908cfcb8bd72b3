//! Session tokens verified at the edge: valid tokens forward their subject
//! and claims as headers (client-supplied copies removed), forged, expired
//! or missing ones get 401, and keys rotate by `kid`.

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use hmac::{Hmac, Mac};
use ringgate::config::{AuthPolicy, TokenSource};
use sha2::Sha256;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn sign(kid: &str, key: &str, claims: &str) -> String {
    let header = format!(r#"{{"alg":"HS256","typ":"JWT","kid":"{kid}"}}"#);
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(input.as_bytes());
    format!(
        "{input}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn gateway(origin: &Origin, source: TokenSource, required: bool) -> ringgate::Handle {
    let mut config = config_for(origin.addr);
    config.routes[0].cache = None;
    config.routes[0].auth = Some(AuthPolicy {
        keys: vec![
            ("2025".into(), "old key, still valid".into()),
            ("2026".into(), "new key, signs today".into()),
        ],
        source,
        required,
        subject_header: "X-User".into(),
        claims: vec![("role".into(), "X-Role".into())],
        leeway: Duration::from_secs(5),
        require_exp: true,
    });
    start(config)
}

fn request(gw: &ringgate::Handle, headers: &str) -> Response {
    Client::connect(gw.listen_addr()).request(
        format!("GET /echo HTTP/1.1\r\nHost: t\r\n{headers}Connection: close\r\n\r\n").as_bytes(),
    )
}

#[test]
fn a_valid_token_forwards_its_identity_and_strips_client_copies() {
    let origin = Origin::start();
    let gw = gateway(&origin, TokenSource::Bearer, true);
    let token = sign(
        "2026",
        "new key, signs today",
        &format!(r#"{{"sub":"alice","role":"admin","exp":{}}}"#, now() + 300),
    );
    let r = request(
        &gw,
        &format!("Authorization: Bearer {token}\r\nX-User: mallory\r\nX-Role: root\r\n"),
    );
    assert_eq!(r.status, 200);
    let seen = r.text();
    assert!(
        seen.contains("X-User: alice") && seen.contains("X-Role: admin"),
        "{seen}"
    );
    assert!(
        !seen.contains("mallory") && !seen.contains("root"),
        "client-supplied identity headers are removed:\n{seen}"
    );
}

#[test]
fn keys_rotate_by_kid() {
    let origin = Origin::start();
    let gw = gateway(&origin, TokenSource::Bearer, true);
    let token = sign(
        "2025",
        "old key, still valid",
        &format!(r#"{{"sub":"bob","exp":{}}}"#, now() + 300),
    );
    assert_eq!(
        request(&gw, &format!("Authorization: Bearer {token}\r\n")).status,
        200
    );
}

#[test]
fn forged_expired_and_missing_tokens_get_401() {
    let origin = Origin::start();
    let gw = gateway(&origin, TokenSource::Bearer, true);
    let forged = sign(
        "2026",
        "a key the gateway never had",
        &format!(r#"{{"sub":"eve","exp":{}}}"#, now() + 300),
    );
    let expired = sign(
        "2026",
        "new key, signs today",
        &format!(r#"{{"sub":"alice","exp":{}}}"#, now() - 60),
    );
    for headers in [
        format!("Authorization: Bearer {forged}\r\n"),
        format!("Authorization: Bearer {expired}\r\n"),
        String::new(),
    ] {
        let r = request(&gw, &headers);
        assert_eq!(r.status, 401, "{headers}");
        assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
    }
    assert_eq!(
        origin.requests(),
        0,
        "refused requests never reach the upstream"
    );
}

#[test]
fn tokens_can_come_from_a_cookie_and_be_optional() {
    let origin = Origin::start();
    let gw = gateway(&origin, TokenSource::Cookie("session".into()), false);
    let token = sign(
        "2026",
        "new key, signs today",
        &format!(r#"{{"sub":"carol","exp":{}}}"#, now() + 300),
    );
    let r = request(&gw, &format!("Cookie: theme=dark; session={token}\r\n"));
    assert!(r.text().contains("X-User: carol"), "{}", r.text());
    // No token, not required: passes, and the client cannot claim an identity.
    let r = request(&gw, "X-User: mallory\r\n");
    assert_eq!(r.status, 200);
    assert!(!r.text().contains("X-User"), "{}", r.text());
}
