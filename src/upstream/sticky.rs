//! Sticky sessions without state on the gateway: a cookie names the server
//! a client was sent to, as `<server id>.<HMAC-SHA256 tag>`. The id is a
//! stable hash of the server's address, so any worker of any gateway node
//! that has the same secret and the same servers reads the cookie the same
//! way; the tag makes it unforgeable. A cookie naming a server that is gone
//! or down is ignored and the client is re-pinned with a new cookie.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::balancer::stable_hash;
use crate::config::StickyCookie;

type HmacSha256 = Hmac<Sha256>;

/// Bytes of the HMAC tag kept in the cookie (128 bits).
const TAG_BYTES: usize = 16;

fn tag(secret: &[u8], id: u64) -> [u8; TAG_BYTES] {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(&id.to_be_bytes());
    let full = mac.finalize().into_bytes();
    let mut out = [0u8; TAG_BYTES];
    out.copy_from_slice(&full[..TAG_BYTES]);
    out
}

/// The stable id of a server, from its address.
pub fn server_id(address: &str) -> u64 {
    stable_hash(address.as_bytes())
}

/// The cookie value pinning a client to the server with this id.
pub fn cookie_value(secret: &[u8], id: u64) -> String {
    let mut value = format!("{id:016x}.");
    for b in tag(secret, id) {
        value.push_str(&format!("{b:02x}"));
    }
    value
}

/// The server id a cookie value names, if its tag is genuine.
pub fn verify(secret: &[u8], value: &[u8]) -> Option<u64> {
    let value = std::str::from_utf8(value).ok()?;
    let (id_hex, tag_hex) = value.split_once('.')?;
    if id_hex.len() != 16 || tag_hex.len() != TAG_BYTES * 2 {
        return None;
    }
    let id = u64::from_str_radix(id_hex, 16).ok()?;
    let mut given = [0u8; TAG_BYTES];
    for (i, byte) in given.iter_mut().enumerate() {
        *byte = u8::from_str_radix(tag_hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(&id.to_be_bytes());
    // Constant-time comparison of the truncated tag.
    mac.verify_truncated_left(&given).ok()?;
    Some(id)
}

/// The `Set-Cookie` line (with CRLF) pinning a client to server `id`.
pub fn set_cookie_line(sticky: &StickyCookie, id: u64) -> Vec<u8> {
    let mut line = format!(
        "Set-Cookie: {}={}; Path={}",
        sticky.cookie,
        cookie_value(sticky.secret.as_bytes(), id),
        sticky.path
    );
    if let Some(ttl) = sticky.ttl {
        line.push_str(&format!("; Max-Age={}", ttl.as_secs()));
    }
    if sticky.http_only {
        line.push_str("; HttpOnly");
    }
    if sticky.secure {
        line.push_str("; Secure");
    }
    line.push_str(&format!("; SameSite={}\r\n", sticky.same_site));
    line.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cookie_round_trips() {
        let id = server_id("10.0.0.7:8000");
        let value = cookie_value(b"secret", id);
        assert_eq!(verify(b"secret", value.as_bytes()), Some(id));
    }

    #[test]
    fn a_forged_or_foreign_cookie_is_refused() {
        let id = server_id("10.0.0.7:8000");
        let value = cookie_value(b"secret", id);
        assert_eq!(verify(b"other secret", value.as_bytes()), None);
        let other = server_id("10.0.0.8:8000");
        let forged = format!("{other:016x}{}", &value[16..]);
        assert_eq!(verify(b"secret", forged.as_bytes()), None);
        assert_eq!(verify(b"secret", b"garbage"), None);
        assert_eq!(verify(b"secret", b""), None);
    }
}
