//! Gateway-verified session tokens: HS256 JSON Web Tokens checked at the
//! edge, with key rotation by `kid`. A valid token's subject and selected
//! claims are forwarded as request headers; any copies of those headers the
//! client sent are removed first, so an upstream can trust them. Nothing is
//! stored: every worker of every node with the same keys decides alike.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::config::{AuthPolicy, TokenSource};
use crate::http::headers::{name_is, trim};

/// Why a token was refused (logged; the client only sees 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no token")]
    Missing,
    #[error("malformed token")]
    Malformed,
    #[error("algorithm is not HS256")]
    Algorithm,
    #[error("unknown key id")]
    UnknownKey,
    #[error("bad signature")]
    Signature,
    #[error("expired")]
    Expired,
    #[error("not valid yet")]
    NotYetValid,
}

/// Headers to forward for a verified token.
pub type Identity = Vec<(String, String)>;

/// The token of a request, from the configured header or cookie.
fn token<'a>(policy: &AuthPolicy, headers: &[httparse::Header<'a>]) -> Option<&'a [u8]> {
    match &policy.source {
        TokenSource::Bearer => headers
            .iter()
            .find(|h| name_is(h.name, "authorization"))
            .and_then(|h| {
                let v = trim(h.value);
                (v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ")).then(|| trim(&v[7..]))
            }),
        TokenSource::Cookie(name) => crate::cache::key::cookie_value(headers, name),
    }
}

/// Checks the request's token. `Ok(None)`: no token and none required.
pub fn verify_request(
    policy: &AuthPolicy,
    headers: &[httparse::Header<'_>],
    now: SystemTime,
) -> Result<Option<Identity>, TokenError> {
    match token(policy, headers) {
        None if policy.required => Err(TokenError::Missing),
        None => Ok(None),
        Some(t) => verify(policy, t, now).map(Some),
    }
}

/// Verifies an HS256 token and returns the headers to forward.
pub fn verify(policy: &AuthPolicy, token: &[u8], now: SystemTime) -> Result<Identity, TokenError> {
    let token = std::str::from_utf8(token).map_err(|_| TokenError::Malformed)?;
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let decode = |part: &str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| TokenError::Malformed)
    };
    let header: Value =
        serde_json::from_slice(&decode(header_b64)?).map_err(|_| TokenError::Malformed)?;
    if header.get("alg").and_then(Value::as_str) != Some("HS256") {
        return Err(TokenError::Algorithm);
    }
    let key = match header.get("kid").and_then(Value::as_str) {
        Some(kid) => policy.keys.iter().find(|(id, _)| id == kid).map(|(_, k)| k),
        // Without a kid, only an unambiguous single key will do.
        None if policy.keys.len() == 1 => policy.keys.first().map(|(_, k)| k),
        None => None,
    }
    .ok_or(TokenError::UnknownKey)?;
    let signature = decode(signature_b64)?;
    let mut mac =
        Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(header_b64.as_bytes());
    mac.update(b".");
    mac.update(payload_b64.as_bytes());
    mac.verify_slice(&signature)
        .map_err(|_| TokenError::Signature)?;

    let claims: Value =
        serde_json::from_slice(&decode(payload_b64)?).map_err(|_| TokenError::Malformed)?;
    let now = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64();
    let leeway = policy.leeway.as_secs_f64();
    if let Some(exp) = claims.get("exp") {
        let exp = exp.as_f64().ok_or(TokenError::Malformed)?;
        if now > exp + leeway {
            return Err(TokenError::Expired);
        }
    } else if policy.require_exp {
        return Err(TokenError::Expired);
    }
    if let Some(nbf) = claims.get("nbf") {
        let nbf = nbf.as_f64().ok_or(TokenError::Malformed)?;
        if now + leeway < nbf {
            return Err(TokenError::NotYetValid);
        }
    }
    let mut identity = Vec::new();
    let text = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    // Header values must not be able to smuggle a line break.
    let clean = |s: String| (!s.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)).then_some(s);
    if let Some(sub) = claims.get("sub").and_then(text).and_then(clean) {
        identity.push((policy.subject_header.clone(), sub));
    }
    for (claim, header) in &policy.claims {
        if let Some(value) = claims.get(claim).and_then(text).and_then(clean) {
            identity.push((header.clone(), value));
        }
    }
    Ok(identity)
}

/// Whether an `Authorization` value is `Bearer <secret>` (scheme in any
/// case), compared in constant time.
pub fn bearer_is(authorization: &[u8], secret: &[u8]) -> bool {
    let Some(given) = authorization
        .get(..7)
        .filter(|p| p.eq_ignore_ascii_case(b"bearer "))
        .map(|_| crate::http::headers::trim(&authorization[7..]))
    else {
        return false;
    };
    let mut diff = given.len() ^ secret.len();
    for i in 0..given.len().max(secret.len()) {
        diff |=
            usize::from(given.get(i).copied().unwrap_or(0) ^ secret.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> AuthPolicy {
        AuthPolicy {
            keys: vec![
                ("k1".into(), "first secret".into()),
                ("k2".into(), "second secret".into()),
            ],
            source: TokenSource::Bearer,
            required: true,
            subject_header: "X-User".into(),
            claims: vec![("role".into(), "X-Role".into())],
            leeway: Duration::from_secs(30),
            require_exp: true,
        }
    }

    pub fn sign(kid: Option<&str>, key: &str, claims: &str) -> String {
        let header = match kid {
            Some(k) => format!(r#"{{"alg":"HS256","typ":"JWT","kid":"{k}"}}"#),
            None => r#"{"alg":"HS256","typ":"JWT"}"#.to_string(),
        };
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
        mac.update(signing_input.as_bytes());
        format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        )
    }

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    #[test]
    fn a_valid_token_yields_its_subject_and_claims() {
        let t = sign(
            Some("k2"),
            "second secret",
            r#"{"sub":"alice","role":"admin","exp":1800000100}"#,
        );
        let identity = verify(&policy(), t.as_bytes(), now()).unwrap();
        assert_eq!(
            identity,
            vec![
                ("X-User".into(), "alice".into()),
                ("X-Role".into(), "admin".into())
            ]
        );
    }

    #[test]
    fn a_bad_signature_is_refused() {
        let t = sign(
            Some("k1"),
            "not the secret",
            r#"{"sub":"alice","exp":1800000100}"#,
        );
        assert_eq!(
            verify(&policy(), t.as_bytes(), now()),
            Err(TokenError::Signature)
        );
    }

    #[test]
    fn an_expired_token_is_refused_after_the_leeway() {
        let t = sign(
            Some("k1"),
            "first secret",
            r#"{"sub":"alice","exp":1799999980}"#,
        );
        assert!(
            verify(&policy(), t.as_bytes(), now()).is_ok(),
            "within the 30 s leeway"
        );
        let t = sign(
            Some("k1"),
            "first secret",
            r#"{"sub":"alice","exp":1799999000}"#,
        );
        assert_eq!(
            verify(&policy(), t.as_bytes(), now()),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn a_token_without_exp_is_refused_when_exp_is_required() {
        let t = sign(Some("k1"), "first secret", r#"{"sub":"alice"}"#);
        assert_eq!(
            verify(&policy(), t.as_bytes(), now()),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn a_token_not_valid_yet_is_refused() {
        let t = sign(
            Some("k1"),
            "first secret",
            r#"{"sub":"alice","exp":1800009999,"nbf":1800001000}"#,
        );
        assert_eq!(
            verify(&policy(), t.as_bytes(), now()),
            Err(TokenError::NotYetValid)
        );
    }

    #[test]
    fn other_algorithms_and_unknown_keys_are_refused() {
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"k1"}"#);
        let body = URL_SAFE_NO_PAD.encode(r#"{"sub":"alice","exp":1800000100}"#);
        assert_eq!(
            verify(&policy(), format!("{header}.{body}.").as_bytes(), now()),
            Err(TokenError::Algorithm)
        );
        let t = sign(
            Some("k9"),
            "first secret",
            r#"{"sub":"alice","exp":1800000100}"#,
        );
        assert_eq!(
            verify(&policy(), t.as_bytes(), now()),
            Err(TokenError::UnknownKey)
        );
        let t = sign(None, "first secret", r#"{"sub":"alice","exp":1800000100}"#);
        assert_eq!(
            verify(&policy(), t.as_bytes(), now()),
            Err(TokenError::UnknownKey),
            "two keys and no kid is ambiguous"
        );
    }

    #[test]
    fn malformed_tokens_are_refused() {
        for t in ["", "a.b", "a.b.c.d", "!!.??.##"] {
            assert!(verify(&policy(), t.as_bytes(), now()).is_err(), "{t}");
        }
    }

    #[test]
    fn claims_with_line_breaks_are_not_forwarded() {
        let t = sign(
            Some("k1"),
            "first secret",
            r#"{"sub":"alice\r\nX-Admin: 1","exp":1800000100}"#,
        );
        assert!(verify(&policy(), t.as_bytes(), now()).unwrap().is_empty());
    }
}
