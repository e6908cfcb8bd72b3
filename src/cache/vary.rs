//! `Vary` (RFC 9111 section 4.1): a response that varies is stored under a
//! secondary key made of the primary key plus the request's normalised
//! values of the named headers, so several variants of one URL coexist.
//! `Vary: *` is never stored.

use std::io::Write;

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
/// `Accept-Encoding` and `Accept-Language` are normalised further (see
/// [`preference_list`]), so that requests asking for the same choice share
/// a variant.
pub fn variant_key(out: &mut Vec<u8>, primary: &[u8], names: &[String], headers: &[Header<'_>]) {
    out.clear();
    out.extend_from_slice(primary);
    out.extend_from_slice(b"\0vary");
    for name in names {
        out.push(0);
        out.extend_from_slice(name.as_bytes());
        let values = headers
            .iter()
            .filter(|h| name_is(h.name, name))
            .map(|h| h.value);
        let order = match name.as_str() {
            "accept-encoding" => Some(Order::Irrelevant),
            "accept-language" => Some(Order::Significant),
            _ => None,
        };
        if let Some(order) = order {
            if values.clone().next().is_some() {
                out.push(b'=');
                preference_list(out, values, order);
            }
            continue;
        }
        let mut first = true;
        for value in values {
            for item in list_items(value) {
                out.push(if first { b'=' } else { b',' });
                first = false;
                out.extend_from_slice(item);
            }
        }
    }
}

/// Whether the order of equally weighted members says anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    /// Content codings: the server chooses among equals (RFC 9110 section 12.5.3).
    Irrelevant,
    /// Language ranges: earlier is preferred among equals (RFC 4647 section 2.3).
    Significant,
}

/// Writes a weighted list (`Accept-Encoding`, `Accept-Language`) in a
/// canonical form: members lower-cased, `q` written in thousandths and left
/// out when 1, sorted by weight (highest first), and among equal weights by
/// name where order does not matter. `x-gzip` is `gzip` (RFC 9110 section
/// 8.4.1.3). A member whose `q` does not parse is kept as written, so it
/// can only ever match itself.
fn preference_list<'a>(out: &mut Vec<u8>, values: impl Iterator<Item = &'a [u8]>, order: Order) {
    let mut members: Vec<(u16, Vec<u8>)> = Vec::new();
    for value in values {
        for item in list_items(value) {
            let mut parts = item.split(|&b| b == b';');
            let mut name =
                crate::http::headers::trim(parts.next().unwrap_or_default()).to_ascii_lowercase();
            if order == Order::Irrelevant && name == b"x-gzip" {
                name = b"gzip".to_vec();
            }
            let mut weight = Some(1000);
            let mut other = Vec::new();
            for param in parts {
                let param = crate::http::headers::trim(param);
                match param.split_first() {
                    Some((q, rest))
                        if q.eq_ignore_ascii_case(&b'q') && rest.first() == Some(&b'=') =>
                    {
                        weight = qvalue(&rest[1..]);
                    }
                    _ => {
                        other.push(b';');
                        other.extend(param.iter().map(u8::to_ascii_lowercase));
                    }
                }
            }
            match weight {
                Some(w) => {
                    name.extend_from_slice(&other);
                    members.push((w, name));
                }
                None => members.push((0, item.to_ascii_lowercase())),
            }
        }
    }
    match order {
        Order::Irrelevant => members.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1))),
        Order::Significant => members.sort_by_key(|m| std::cmp::Reverse(m.0)),
    }
    members.dedup();
    for (i, (weight, name)) in members.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(name);
        if *weight != 1000 {
            let _ = write!(out, ";q={weight}");
        }
    }
}

/// A `qvalue` (RFC 9110 section 12.4.2) in thousandths: `0`, `0.5`, `1.000`.
fn qvalue(v: &[u8]) -> Option<u16> {
    let (int, frac) = match v.iter().position(|&b| b == b'.') {
        Some(dot) => (&v[..dot], &v[dot + 1..]),
        None => (v, &b""[..]),
    };
    if frac.len() > 3 || !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut thousandths = 0u16;
    for i in 0..3 {
        thousandths = thousandths * 10 + frac.get(i).map_or(0, |d| u16::from(d - b'0'));
    }
    match int {
        b"0" => Some(thousandths),
        b"1" if thousandths == 0 => Some(1000),
        _ => None,
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

    fn keyed(name: &str, value: &str) -> Vec<u8> {
        let mut out = Vec::new();
        let h = [Header {
            name,
            value: value.as_bytes(),
        }];
        variant_key(&mut out, b"http://h/", &[name.to_ascii_lowercase()], &h);
        out
    }

    #[test]
    fn accept_encoding_order_case_and_q_values_do_not_split_variants() {
        let ae = |v| keyed("Accept-Encoding", v);
        assert_eq!(ae("gzip, deflate, br"), ae("br, GZIP,deflate"));
        assert_eq!(ae("gzip;q=1.0, br;q=0.5"), ae("br;Q=0.500, gzip"));
        assert_eq!(ae("x-gzip"), ae("gzip"));
        assert_eq!(ae("gzip, gzip"), ae("gzip"));
        assert_ne!(
            ae("gzip"),
            ae("gzip;q=0"),
            "refusing gzip is another choice"
        );
        assert_ne!(ae("gzip"), ae("br"));
        assert_ne!(ae("gzip;q=0.5, br"), ae("gzip, br;q=0.5"));
        assert_ne!(
            ae("gzip;q=2"),
            ae("gzip"),
            "an invalid q matches only itself"
        );
    }

    #[test]
    fn accept_language_case_and_q_values_do_not_split_variants_but_order_does() {
        let al = |v| keyed("Accept-Language", v);
        assert_eq!(al("en-US, fr;q=0.5"), al("fr;q=0.50, EN-us"));
        assert_eq!(al("de;q=1"), al("DE"));
        // Equal weights keep their order: the first is preferred.
        assert_ne!(al("en, fr"), al("fr, en"));
        assert_ne!(al("en"), al("fr"));
    }

    #[test]
    fn qvalues_parse() {
        assert_eq!(qvalue(b"0"), Some(0));
        assert_eq!(qvalue(b"0.5"), Some(500));
        assert_eq!(qvalue(b"0.125"), Some(125));
        assert_eq!(qvalue(b"1.000"), Some(1000));
        for bad in [&b"1.5"[..], b"2", b"0.1234", b"", b"x", b"0.x"] {
            assert_eq!(qvalue(bad), None, "{bad:?}");
        }
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
