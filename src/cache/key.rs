//! Cache keys, and the only code that knows their format.
//!
//! A primary key is the **URL part** `scheme://host[:port]/path?query`
//! (`https` for requests that came over TLS, which are forwarded with
//! `X-Forwarded-Proto: https` and may be answered differently), then
//! one `\nh:name=value` per header and `\nc:name=value` per cookie the
//! route adds. A `Vary` variant's secondary key is the primary key, `\0vary`
//! and the varied values (`super::vary`). The authority and path come in
//! canonical form (`http::target`: lower-case host, no default port, one
//! spelling per path), so every spelling of a URL shares one entry; the
//! scheme and host are always in the key (a path-only key lets one host
//! poison another's entries). The query enters as the route's policy says.
//!
//! Purges name URLs: [`url_keys`] turns one into the URL parts it may be
//! stored under, and the shard finds every primary key (whatever its extra
//! parts) and every variant under each. Bans read keys back with [`url_of`].

use httparse::Header;

use super::policy::{CachePolicy, QueryKey};
use crate::http::headers::{name_is, trim};

/// Writes the URL part of a key into `out` (cleared first): scheme, the
/// canonical authority, the canonical path and the query as `query` keeps it.
pub fn url_key(
    out: &mut Vec<u8>,
    https: bool,
    authority: &str,
    path_and_query: &str,
    query_policy: &QueryKey,
) {
    out.clear();
    // Defensive: the authority is canonical already on the request path.
    let authority = if https {
        out.extend_from_slice(b"https://");
        authority.strip_suffix(":443").unwrap_or(authority)
    } else {
        out.extend_from_slice(b"http://");
        authority.strip_suffix(":80").unwrap_or(authority)
    };
    out.extend(authority.bytes().map(|b| b.to_ascii_lowercase()));
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    out.extend_from_slice(path.as_bytes());
    match (query_policy, query) {
        (_, None) | (QueryKey::Ignore, _) => {}
        (QueryKey::Full, Some(q)) => {
            out.push(b'?');
            out.extend_from_slice(q.as_bytes());
        }
        (QueryKey::IgnoreParams(ignored), Some(q)) => {
            let mut first = true;
            for param in q.split('&') {
                let name = param.split('=').next().unwrap_or("");
                if ignored.iter().any(|i| i == name) {
                    continue;
                }
                out.push(if first { b'?' } else { b'&' });
                first = false;
                out.extend_from_slice(param.as_bytes());
            }
        }
    }
}

/// Writes the primary key for a request into `out` (cleared first): the URL
/// part, then the route's key headers and cookies from `headers` (the
/// request as forwarded).
pub fn primary_key(
    out: &mut Vec<u8>,
    https: bool,
    authority: &str,
    path_and_query: &str,
    policy: &CachePolicy,
    headers: &[Header<'_>],
) {
    url_key(out, https, authority, path_and_query, &policy.query);
    for name in &policy.key_headers {
        out.extend_from_slice(b"\nh:");
        out.extend_from_slice(name.as_bytes());
        for h in headers.iter().filter(|h| name_is(h.name, name)) {
            out.push(b'=');
            out.extend_from_slice(trim(h.value));
        }
    }
    for cookie in &policy.key_cookies {
        out.extend_from_slice(b"\nc:");
        out.extend_from_slice(cookie.as_bytes());
        if let Some(value) = cookie_value(headers, cookie) {
            out.push(b'=');
            out.extend_from_slice(value);
        }
    }
}

/// The URL parts a URL may be stored under: one per distinct query policy
/// among `policies` (the caching routes), so a purge finds the entry whether
/// the route keeps the whole query, ignores it or drops some parameters.
pub fn url_keys<'a>(
    authority: &str,
    path_and_query: &str,
    policies: impl Iterator<Item = &'a CachePolicy>,
) -> Vec<Box<[u8]>> {
    let mut keys: Vec<Box<[u8]>> = Vec::new();
    let mut out = Vec::new();
    let mut any = false;
    // A purge of a URL reaches it under both schemes.
    for policy in policies {
        any = true;
        for https in [false, true] {
            url_key(&mut out, https, authority, path_and_query, &policy.query);
            if !keys.iter().any(|k| **k == *out) {
                keys.push(out.as_slice().into());
            }
        }
    }
    if !any {
        for https in [false, true] {
            url_key(&mut out, https, authority, path_and_query, &QueryKey::Full);
            keys.push(out.as_slice().into());
        }
    }
    keys
}

/// The key under which parts of the response stored under `primary` are
/// kept (206s of a known whole): the same URL, so purges reach them, but
/// never what a request without a range looks up.
pub fn partial_key(primary: &[u8]) -> Box<[u8]> {
    let mut key = Vec::with_capacity(primary.len() + 3);
    key.extend_from_slice(primary);
    key.extend_from_slice(b"\np:");
    key.into_boxed_slice()
}

/// The URL part of a primary or secondary key.
pub fn url_part(key: &[u8]) -> &[u8] {
    let end = key
        .iter()
        .position(|&b| b == b'\n' || b == 0)
        .unwrap_or(key.len());
    &key[..end]
}

/// A key read back as `(host without port, path and query)`, for bans.
pub fn url_of(key: &[u8]) -> Option<(&str, &str)> {
    let rest = std::str::from_utf8(url_part(key))
        .ok()?
        .strip_prefix("http://")
        .or_else(|| {
            std::str::from_utf8(url_part(key))
                .ok()?
                .strip_prefix("https://")
        })?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let host = match authority.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    };
    Some((host, path))
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie_value<'a>(headers: &[Header<'a>], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .filter(|h| name_is(h.name, "cookie"))
        .flat_map(|h| h.value.split(|&b| b == b';'))
        .map(trim)
        .find_map(|pair| {
            let eq = pair.iter().position(|&b| b == b'=')?;
            (&pair[..eq] == name.as_bytes()).then(|| &pair[eq + 1..])
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(authority: &str, pq: &str, policy: &CachePolicy, headers: &[Header<'_>]) -> String {
        let mut out = Vec::new();
        primary_key(&mut out, false, authority, pq, policy, headers);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn key_holds_scheme_host_path_and_query() {
        assert_eq!(
            key("Shop.Example:80", "/a/b?x=1", &CachePolicy::default(), &[]),
            "http://shop.example/a/b?x=1"
        );
        assert_ne!(
            key("a.example", "/x", &CachePolicy::default(), &[]),
            key("b.example", "/x", &CachePolicy::default(), &[]),
            "hosts never share entries"
        );
    }

    #[test]
    fn non_default_port_stays_in_the_key() {
        assert_eq!(
            key("h:8080", "/", &CachePolicy::default(), &[]),
            "http://h:8080/"
        );
    }

    #[test]
    fn query_can_be_ignored_entirely_or_by_parameter() {
        let ignore = CachePolicy {
            query: QueryKey::Ignore,
            ..Default::default()
        };
        assert_eq!(key("h", "/p?a=1", &ignore, &[]), "http://h/p");
        let some = CachePolicy {
            query: QueryKey::IgnoreParams(vec!["utm_source".into()]),
            ..Default::default()
        };
        assert_eq!(
            key("h", "/p?utm_source=x&id=2&utm_source=y", &some, &[]),
            "http://h/p?id=2"
        );
    }

    #[test]
    fn url_parts_and_urls_are_read_back() {
        let k = b"http://shop.test:8080/api/x?y=1\nh:x-tenant=a\0vary\0accept=x";
        assert_eq!(url_part(k), b"http://shop.test:8080/api/x?y=1");
        assert_eq!(url_of(k), Some(("shop.test", "/api/x?y=1")));
        assert_eq!(url_of(b"http://h"), Some(("h", "/")));
        assert_eq!(url_of(b"ftp://h/x"), None);
    }

    #[test]
    fn a_url_maps_to_one_key_per_query_policy() {
        let full = CachePolicy::default();
        let ignore = CachePolicy {
            query: QueryKey::Ignore,
            key_headers: vec!["x-tenant".into()],
            ..Default::default()
        };
        let keys = url_keys("h", "/p?a=1", [&full, &ignore, &full].into_iter());
        assert_eq!(keys.len(), 4);
        assert_eq!(&*keys[0], b"http://h/p?a=1");
        assert_eq!(&*keys[1], b"https://h/p?a=1");
        assert_eq!(&*keys[2], b"http://h/p");
        assert_eq!(&*keys[3], b"https://h/p");
    }

    #[test]
    fn the_scheme_is_in_the_key() {
        let (mut plain, mut tls) = (Vec::new(), Vec::new());
        url_key(&mut plain, false, "h", "/p", &QueryKey::Full);
        url_key(&mut tls, true, "h:443", "/p", &QueryKey::Full);
        assert_eq!(plain, b"http://h/p");
        assert_eq!(tls, b"https://h/p");
        assert_eq!(url_of(&tls), Some(("h", "/p")));
    }

    #[test]
    fn selected_headers_and_cookies_enter_the_key() {
        let p = CachePolicy {
            key_headers: vec!["x-tenant".into()],
            key_cookies: vec!["lang".into()],
            ..Default::default()
        };
        let headers = [
            Header {
                name: "X-Tenant",
                value: b"blue",
            },
            Header {
                name: "Cookie",
                value: b"session=abc; lang=de",
            },
        ];
        assert_eq!(
            key("h", "/", &p, &headers),
            "http://h/\nh:x-tenant=blue\nc:lang=de"
        );
        assert_eq!(key("h", "/", &p, &[]), "http://h/\nh:x-tenant\nc:lang");
    }
}
