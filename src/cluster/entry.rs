//! A stream entry's fields: an invalidation as `kind`, `host`, `value`
//! and `removal`, and `XREAD`/`XREVRANGE` replies read back. The one owner
//! of that format.

use std::sync::Arc;

use crate::bus::Invalidation;
use crate::cache::shard::Removal;

/// A stream entry id as (milliseconds, sequence).
pub(super) fn parse_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// An invalidation as stream fields: kind, host, value.
pub(super) fn encode(what: &Invalidation) -> (&'static str, String, String) {
    match what {
        Invalidation::Urls(urls) => (
            "urls",
            String::new(),
            urls.iter().map(|u| hex(u)).collect::<Vec<_>>().join(","),
        ),
        Invalidation::Prefix { host, prefix } => (
            "prefix",
            host.as_deref().unwrap_or("").to_string(),
            prefix.to_string(),
        ),
        Invalidation::Regex { host, regex } => (
            "regex",
            host.as_deref().unwrap_or("").to_string(),
            regex.as_str().to_string(),
        ),
        Invalidation::Tag(tag) => ("tag", String::new(), tag.to_string()),
        Invalidation::All => ("all", String::new(), String::new()),
    }
}

pub(super) fn decode(
    fields: &std::collections::HashMap<String, String>,
) -> Option<(Invalidation, Removal)> {
    let host = fields
        .get("host")
        .filter(|h| !h.is_empty())
        .map(|h| Arc::<str>::from(h.as_str()));
    let value = fields.get("value").map(String::as_str).unwrap_or("");
    let what = match fields.get("kind")?.as_str() {
        "urls" => Invalidation::Urls(Arc::new(
            value
                .split(',')
                .filter(|v| !v.is_empty())
                .map(|v| unhex(v).map(Vec::into_boxed_slice))
                .collect::<Option<Vec<_>>>()?,
        )),
        "prefix" => Invalidation::Prefix {
            host,
            prefix: value.into(),
        },
        "regex" => Invalidation::Regex {
            host,
            regex: Arc::new(regex::Regex::new(value).ok()?),
        },
        "tag" => Invalidation::Tag(value.into()),
        "all" => Invalidation::All,
        _ => return None,
    };
    let removal = match fields.get("removal").map(String::as_str) {
        Some("soft") => Removal::Soft,
        _ => Removal::Hard,
    };
    Some((what, removal))
}

/// `bytes` in lower-case hex (key names, stream fields).
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

pub(super) fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

type Entry = (String, std::collections::HashMap<String, String>);

/// The entries of an `XREAD` reply (one stream).
pub(super) fn entries(v: &redis::Value) -> Vec<Entry> {
    let redis::Value::Array(streams) = v else {
        // Nil (or a map, RESP3): nothing new.
        if let redis::Value::Map(streams) = v {
            return streams
                .iter()
                .flat_map(|(_, e)| entries_of_list(e))
                .collect();
        }
        return Vec::new();
    };
    streams
        .iter()
        .flat_map(|s| match s {
            redis::Value::Array(parts) if parts.len() == 2 => entries_of_list(&parts[1]),
            _ => Vec::new(),
        })
        .collect()
}

/// `[[id, [field, value, ...]], ...]`.
pub(super) fn entries_of_list(v: &redis::Value) -> Vec<Entry> {
    let redis::Value::Array(list) = v else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|e| {
            let redis::Value::Array(pair) = e else {
                return None;
            };
            let id = text(pair.first()?)?;
            let redis::Value::Array(kv) = pair.get(1)? else {
                return None;
            };
            let fields = kv
                .chunks(2)
                .filter_map(|c| Some((text(c.first()?)?, text(c.get(1)?)?)))
                .collect();
            Some((id, fields))
        })
        .collect()
}

fn text(v: &redis::Value) -> Option<String> {
    match v {
        redis::Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_invalidation_survives_the_stream_fields() {
        let all = [
            Invalidation::Urls(Arc::new(vec![
                b"http://a.test/x?y=1".to_vec().into_boxed_slice(),
                b"https://a.test/z\nh:x=1".to_vec().into_boxed_slice(),
            ])),
            Invalidation::Prefix {
                host: Some("a.test".into()),
                prefix: "/api/".into(),
            },
            Invalidation::Regex {
                host: None,
                regex: Arc::new(regex::Regex::new("^/p/[0-9]+$").unwrap()),
            },
            Invalidation::Tag("product-7".into()),
            Invalidation::All,
        ];
        for what in all {
            let (kind, host, value) = encode(&what);
            let fields = [
                ("kind", kind.to_string()),
                ("host", host),
                ("value", value),
                ("removal", "soft".to_string()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
            let (back, removal) = decode(&fields).unwrap();
            assert_eq!(format!("{back:?}"), format!("{what:?}"));
            assert_eq!(removal, Removal::Soft);
        }
    }
}
