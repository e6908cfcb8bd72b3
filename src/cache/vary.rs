//! `Vary` (RFC 9111 section 4.1): a response that varies is stored under a
//! secondary key made of the primary key plus the request's normalised
//! values of the named headers, so several variants of one URL coexist.
//! `Vary: *` is never stored.

use httparse::Header;

use crate::http::headers::{list_items, name_is};

/// What a response's `Vary` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VarySpec {
    None,
    Star,
    /// Sorted, de-duplicated, lower-case header names.
    Names(Vec<String>),
}

pub fn parse_vary<'a>(values: impl Iterator<Item = &'a [u8]>) -> VarySpec {
    let mut names = Vec::new();
    for value in values {
        for item in list_items(value) {
            if item == b"*" {
                return VarySpec::Star;
            }
            names.push(String::from_utf8_lossy(item).to_ascii_lowercase());
        }
    }
    if names.is_empty() {
        return VarySpec::None;
    }
    names.sort();
    names.dedup();
    VarySpec::Names(names)
}

/// Writes the secondary key: `primary`, then each named header's values
/// with list whitespace normalised (`gzip,deflate` = `gzip, deflate`).
pub fn variant_key(out: &mut Vec<u8>, primary: &[u8], names: &[String], headers: &[Header<'_>]) {
    out.clear();
    out.extend_from_slice(primary);
    out.extend_from_slice(b"\0vary");
    for name in names {
        out.push(0);
        out.extend_from_slice(name.as_bytes());
        let mut first = true;
        for h in headers.iter().filter(|h| name_is(h.name, name)) {
            for item in list_items(h.value) {
                out.push(if first { b'=' } else { b',' });
                first = false;
                out.extend_from_slice(item);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vary_names_are_normalised() {
        assert_eq!(
            parse_vary([&b"Accept-Encoding, accept-language"[..], b"Accept-Encoding"].into_iter()),
            VarySpec::Names(vec!["accept-encoding".into(), "accept-language".into()])
        );
    }

    #[test]
    fn vary_star_is_recognised() {
        assert_eq!(
            parse_vary(std::iter::once(&b"Accept, *"[..])),
            VarySpec::Star
        );
    }

    #[test]
    fn empty_vary_is_none() {
        assert_eq!(parse_vary(std::iter::once(&b" "[..])), VarySpec::None);
    }

    fn key(headers: &[Header<'_>]) -> Vec<u8> {
        let mut out = Vec::new();
        variant_key(
            &mut out,
            b"http://h/",
            &["accept-encoding".to_string()],
            headers,
        );
        out
    }

    #[test]
    fn list_whitespace_does_not_split_variants() {
        let a = [Header {
            name: "Accept-Encoding",
            value: b"gzip, deflate",
        }];
        let b = [Header {
            name: "accept-encoding",
            value: b"gzip,deflate",
        }];
        assert_eq!(key(&a), key(&b));
    }

    #[test]
    fn different_values_are_different_variants() {
        let a = [Header {
            name: "Accept-Encoding",
            value: b"gzip",
        }];
        let b = [Header {
            name: "Accept-Encoding",
            value: b"br",
        }];
        assert_ne!(key(&a), key(&b));
        assert_ne!(key(&a), key(&[]), "absent differs from present");
    }
}
