//! A stored response as bytes, for the cluster's shared tier in Redis: the
//! response as the origin sent it (status, reason, storable fields, body)
//! and its age when written. The node that reads it builds its own entry
//! from those, under its own route's policy, as a cache fed by another
//! cache does: the age counts as an `Age` field (RFC 9111 section 4.2.3),
//! so freshness comes out the same on every node.
//!
//! Layout (integers big-endian): `RG1`, status u16, reason (u16 length,
//! bytes), field count u16, each field (u16 name length, name, u32 value
//! length, value), age in milliseconds u64, then the body to the end.

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;

use super::entry::{ExchangeTimes, Stored};
use super::policy::CachePolicy;
use crate::http::headers::name_is;

const MAGIC: &[u8] = b"RG1";

/// Encodes `stored` as it is at `now`; `None` for what is not shared: a
/// part of a representation (206), or a field too long for the layout.
pub fn encode(stored: &Stored, now: Instant) -> Option<Vec<u8>> {
    if stored.partial.is_some() {
        return None;
    }
    let mut out = Vec::with_capacity(64 + stored.head.len() + stored.body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&stored.status.to_be_bytes());
    put_short(&mut out, stored.reason.as_bytes())?;
    out.extend_from_slice(&u16::try_from(stored.fields.len()).ok()?.to_be_bytes());
    for (name, value) in &stored.fields {
        put_short(&mut out, name.as_bytes())?;
        out.extend_from_slice(&u32::try_from(value.len()).ok()?.to_be_bytes());
        out.extend_from_slice(value);
    }
    let age = stored.age(now).as_millis() as u64;
    out.extend_from_slice(&age.to_be_bytes());
    out.extend_from_slice(&stored.body);
    Some(out)
}

fn put_short(out: &mut Vec<u8>, bytes: &[u8]) -> Option<()> {
    out.extend_from_slice(&u16::try_from(bytes.len()).ok()?.to_be_bytes());
    out.extend_from_slice(bytes);
    Some(())
}

/// A response read back.
#[derive(Debug)]
pub struct Record {
    pub status: u16,
    pub reason: String,
    pub fields: Vec<(String, Vec<u8>)>,
    /// Its age when it was written.
    pub age: Duration,
    pub body: Bytes,
}

/// Reads a record written by [`encode`]; `None` for anything else.
pub fn decode(bytes: Bytes) -> Option<Record> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Option<&[u8]> {
        let part = bytes.get(at..at.checked_add(n)?)?;
        at += n;
        Some(part)
    };
    if take(3)? != MAGIC {
        return None;
    }
    let status = u16::from_be_bytes(take(2)?.try_into().ok()?);
    let reason_len = u16::from_be_bytes(take(2)?.try_into().ok()?) as usize;
    let reason = std::str::from_utf8(take(reason_len)?).ok()?.to_string();
    let count = u16::from_be_bytes(take(2)?.try_into().ok()?);
    let mut fields = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let name_len = u16::from_be_bytes(take(2)?.try_into().ok()?) as usize;
        let name = std::str::from_utf8(take(name_len)?).ok()?.to_string();
        let value_len = u32::from_be_bytes(take(4)?.try_into().ok()?) as usize;
        fields.push((name, take(value_len)?.to_vec()));
    }
    let age = Duration::from_millis(u64::from_be_bytes(take(8)?.try_into().ok()?));
    if !(100..=999).contains(&status) {
        return None;
    }
    let body = bytes.slice(at..);
    Some(Record {
        status,
        reason,
        fields,
        age,
        body,
    })
}

impl Record {
    /// This node's entry for the response, `since` after it was written:
    /// its age is an `Age` field, as from a cache upstream.
    pub fn into_stored(
        mut self,
        since: Duration,
        policy: &CachePolicy,
        via_line: Option<&[u8]>,
    ) -> Stored {
        self.fields.retain(|(name, _)| !name_is(name, "age"));
        let age = (self.age + since).as_secs();
        self.fields
            .push(("Age".to_string(), age.to_string().into_bytes()));
        let now = SystemTime::now();
        let times = ExchangeTimes {
            request_time: now,
            response_time: now,
            received: Instant::now(),
        };
        Stored::build(
            self.status,
            &self.reason,
            self.fields,
            self.body,
            times,
            policy,
            via_line,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::entry::ExchangeTimes;

    fn stored(fields: &[(&str, &str)], body: &'static [u8]) -> Stored {
        let fields = fields
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect();
        Stored::build(
            200,
            "OK",
            fields,
            Bytes::from_static(body),
            ExchangeTimes::now(SystemTime::now()),
            &CachePolicy::default(),
            None,
        )
    }

    #[test]
    fn a_response_comes_back_with_its_fields_body_and_age() {
        let s = stored(
            &[
                ("Cache-Control", "max-age=600"),
                ("ETag", "\"v1\""),
                ("Age", "30"),
            ],
            b"hello",
        );
        let bytes = encode(&s, Instant::now()).unwrap();
        let record = decode(Bytes::from(bytes)).unwrap();
        assert_eq!(record.status, 200);
        assert_eq!(&record.body[..], b"hello");
        assert!(record.age >= Duration::from_secs(30), "{:?}", record.age);
        let back = record.into_stored(Duration::from_secs(10), &CachePolicy::default(), None);
        assert_eq!(back.etag.as_deref(), Some(&b"\"v1\""[..]));
        let age = back.age(Instant::now()).as_secs();
        assert!((40..=41).contains(&age), "{age}");
        assert_eq!(&back.body[..], b"hello");
        assert!(back.fields.iter().all(|(n, _)| !name_is(n, "age")));
    }

    #[test]
    fn anything_else_is_refused() {
        assert!(decode(Bytes::from_static(b"")).is_none());
        assert!(decode(Bytes::from_static(b"RG1\x00")).is_none());
        assert!(decode(Bytes::from_static(b"XX1\x00\xc8\x00\x00\x00\x00")).is_none());
        let s = stored(&[("Cache-Control", "max-age=60")], b"x");
        let bytes = encode(&s, Instant::now()).unwrap();
        // Every cut before the body is refused (the layout has no body length).
        let head = bytes.len() - 1;
        for cut in 0..head {
            assert!(
                decode(Bytes::copy_from_slice(&bytes[..cut])).is_none(),
                "{cut}"
            );
        }
        assert!(decode(Bytes::copy_from_slice(&bytes[..head])).is_some());
    }
}
