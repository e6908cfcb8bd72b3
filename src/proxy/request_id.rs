//! `X-Request-Id`: the id that ties a request's access-log line to the
//! upstream's logs. A client's well-formed id is kept; otherwise the
//! worker makes one (a random 64-bit prefix per worker, then a counter: 32
//! hex digits, unique within the node). It is forwarded in place of any the
//! client sent and returned with the response; an upstream's own
//! `X-Request-Id` is never passed on, nor stored with a cached response.

use crate::http::headers::name_is;
use crate::worker::context::WorkerCtx;

/// Longest id taken from a client.
pub const MAX: usize = 64;

/// The current request's id, kept inline (no allocation per request).
#[derive(Clone, Copy)]
pub struct RequestId {
    bytes: [u8; MAX],
    len: u8,
}

impl Default for RequestId {
    fn default() -> Self {
        RequestId {
            bytes: [0; MAX],
            len: 0,
        }
    }
}

impl RequestId {
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// The client's id when it sent exactly one well-formed one, else a new one.
    pub fn choose(&mut self, headers: &[httparse::Header<'_>], ctx: &WorkerCtx) {
        let mut sent = headers
            .iter()
            .filter(|h| name_is(h.name, "x-request-id"))
            .map(|h| crate::http::headers::trim(h.value));
        match (sent.next(), sent.next()) {
            (Some(id), None) if well_formed(id) => {
                self.bytes[..id.len()].copy_from_slice(id);
                self.len = id.len() as u8;
            }
            _ => self.generate(ctx),
        }
    }

    fn generate(&mut self, ctx: &WorkerCtx) {
        let n = ctx.request_ids.get();
        ctx.request_ids.set(n.wrapping_add(1));
        self.bytes[..16].copy_from_slice(&ctx.request_id_prefix);
        self.bytes[16..32].copy_from_slice(&hex(n));
        self.len = 32;
    }
}

/// `word` as 16 lower-case hex digits.
pub(crate) fn hex(word: u64) -> [u8; 16] {
    let digits = b"0123456789abcdef";
    let mut out = [0u8; 16];
    for (j, d) in out.iter_mut().enumerate() {
        *d = digits[(word >> (60 - 4 * j) & 0xf) as usize];
    }
    out
}

/// Up to [`MAX`] characters of letters, digits and `-_.:+/=`: what UUIDs,
/// ULIDs and base64 ids use, and nothing a log line or a header could be
/// split or forged with.
fn well_formed(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:+/=".contains(b))
}

#[cfg(test)]
mod tests {
    use super::{hex, well_formed};

    #[test]
    fn ids_are_sixteen_hex_digits_a_word() {
        assert_eq!(&hex(0), b"0000000000000000");
        assert_eq!(&hex(0x0123_4567_89ab_cdef), b"0123456789abcdef");
        assert_eq!(&hex(u64::MAX), b"ffffffffffffffff");
    }

    #[test]
    fn only_plain_ids_are_taken_from_clients() {
        assert!(well_formed(b"5f0c7e2a-1b7d-4c39-9e57-3c1a7d3c2b10"));
        assert!(well_formed(b"01HZX3V8K9Q2W7E5R4T6Y8U0I1"));
        assert!(!well_formed(b""));
        assert!(!well_formed(b"a b"));
        assert!(!well_formed(b"a\"b"));
        assert!(!well_formed(&[b'a'; 65]));
        assert!(!well_formed(b"id\xff"));
    }
}
