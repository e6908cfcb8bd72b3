//! Cache keys: `http://host[:port]/path?query`, plus any request headers
//! and cookies the route adds. The host is lower-cased and the default port
//! dropped, so `Example.com:80` and `example.com` share entries; the scheme
//! and host are always part of the key (a path-only key lets one host
//! poison another's entries). Keys are compared in full by the shard.

use httparse::Header;

use super::policy::{CachePolicy, QueryKey};
use crate::http::headers::{name_is, trim};

/// Writes the primary key for a request into `out` (cleared first).
pub fn primary_key(
    out: &mut Vec<u8>,
    authority: &str,
    path_and_query: &str,
    policy: &CachePolicy,
    headers: &[Header<'_>],
) {
    out.clear();
    out.extend_from_slice(b"http://");
    let authority = authority.strip_suffix(":80").unwrap_or(authority);
    out.extend(authority.bytes().map(|b| b.to_ascii_lowercase()));
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    out.extend_from_slice(path.as_bytes());
    match (&policy.query, query) {
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
        primary_key(&mut out, authority, pq, policy, headers);
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
