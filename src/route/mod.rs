//! The route table: the first route, in config order, whose host, path
//! prefix, method and header conditions all hold picks the upstream group
//! (Envoy's and Traefik's rule; put specific routes before general ones).
//!
//! Matching works on the canonical host and path (`http::target`), on the
//! borrowed request head, and allocates nothing.
//!
//! A request for a route's prefix without its trailing slash (`/admin` for
//! `/admin/`) is answered with a redirect that adds it, as nginx does for
//! such locations: otherwise it would fall through to a later, usually less
//! protected, route while the origin may serve it as the same directory.

pub mod auth;
pub mod rate_limit;

use httparse::Header;

use crate::config::{HostMatch, RouteConfig};
use crate::http::headers::{name_is, trim};

/// Routes compiled for matching. Built once per worker from the config.
#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<RouteConfig>,
}

impl Router {
    pub fn new(routes: &[RouteConfig]) -> Router {
        Router {
            routes: routes.to_vec(),
        }
    }

    pub fn route(&self, index: usize) -> &RouteConfig {
        &self.routes[index]
    }

    /// The first route, in order, that matches. `host` is the canonical
    /// request host (lower case, no port, no trailing dot).
    pub fn find(
        &self,
        host: &str,
        path: &str,
        method: &str,
        headers: &[Header<'_>],
    ) -> Option<Found> {
        self.routes.iter().enumerate().find_map(|(i, r)| {
            let applies = host_matches(&r.host, host)
                && (r.methods.is_empty() || r.methods.iter().any(|m| m == method))
                && r.header.as_ref().is_none_or(|hm| {
                    headers.iter().any(|h| {
                        name_is(h.name, &hm.name)
                            && hm
                                .value
                                .as_ref()
                                .is_none_or(|v| trim(h.value) == v.as_bytes())
                    })
                });
            if !applies {
                return None;
            }
            let prefix = r.path_prefix.as_str();
            if path.starts_with(prefix) {
                Some(Found::Route(i))
            } else if prefix.len() > 1 && prefix.strip_suffix('/') == Some(path) {
                Some(Found::AddSlash(i))
            } else {
                None
            }
        })
    }
}

impl Router {
    /// Some caching route could answer `host` and `path`, whatever the
    /// method and header fields (what a reload keeps stored entries by).
    pub fn may_cache(&self, host: &str, path: &str) -> bool {
        self.routes.iter().any(|r| {
            r.cache.is_some()
                && host_matches(&r.host, host)
                && path.starts_with(r.path_prefix.as_str())
        })
    }
}

/// What matched a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    Route(usize),
    /// The path is this route's prefix without its trailing slash: answer
    /// with a redirect to the path with the slash added.
    AddSlash(usize),
}

fn host_matches(rule: &HostMatch, host: &str) -> bool {
    match rule {
        HostMatch::Any => true,
        HostMatch::Exact(name) => host.eq_ignore_ascii_case(name),
        HostMatch::Suffix(suffix) => {
            host.len() > suffix.len()
                && host.as_bytes()[host.len() - suffix.len()..]
                    .eq_ignore_ascii_case(suffix.as_bytes())
        }
    }
}

/// Writes `path_and_query` with `prefix` replaced by `replacement`, joining
/// the two without doubling a `/` (`/api` -> `/` turns `/api/users` into `/users`).
pub fn rewrite_path(out: &mut Vec<u8>, path_and_query: &str, prefix: &str, replacement: &str) {
    let rest = &path_and_query[prefix.len().min(path_and_query.len())..];
    out.extend_from_slice(replacement.as_bytes());
    let rest = match rest.strip_prefix('/') {
        Some(tail) if replacement.ends_with('/') => tail,
        _ => rest,
    };
    out.extend_from_slice(rest.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HeaderMatch;

    fn route(
        host: HostMatch,
        prefix: &str,
        methods: &[&str],
        header: Option<(&str, Option<&str>)>,
        upstream: usize,
    ) -> RouteConfig {
        RouteConfig {
            host,
            path_prefix: prefix.to_string(),
            methods: methods.iter().map(|m| m.to_string()).collect(),
            header: header.map(|(n, v)| HeaderMatch {
                name: n.to_string(),
                value: v.map(str::to_string),
            }),
            ..RouteConfig::to(&format!("r{upstream}"), upstream)
        }
    }

    fn hdr<'a>(name: &'a str, value: &'a [u8]) -> Header<'a> {
        Header { name, value }
    }

    #[test]
    fn first_match_wins_in_order() {
        let r = Router::new(&[
            route(HostMatch::Any, "/api", &[], None, 0),
            route(HostMatch::Any, "/", &[], None, 1),
        ]);
        assert_eq!(r.find("a", "/api/x", "GET", &[]), Some(Found::Route(0)));
        assert_eq!(r.find("a", "/web", "GET", &[]), Some(Found::Route(1)));
    }

    #[test]
    fn exact_host_is_case_insensitive() {
        let r = Router::new(&[route(
            HostMatch::Exact("api.example.com".into()),
            "/",
            &[],
            None,
            0,
        )]);
        assert_eq!(
            r.find("API.Example.com", "/", "GET", &[]),
            Some(Found::Route(0))
        );
        assert_eq!(r.find("www.example.com", "/", "GET", &[]), None);
    }

    #[test]
    fn wildcard_host_matches_subdomains_only() {
        let r = Router::new(&[route(
            HostMatch::Suffix(".example.com".into()),
            "/",
            &[],
            None,
            0,
        )]);
        assert_eq!(
            r.find("a.example.com", "/", "GET", &[]),
            Some(Found::Route(0))
        );
        assert_eq!(
            r.find("a.b.Example.COM", "/", "GET", &[]),
            Some(Found::Route(0))
        );
        assert_eq!(r.find("example.com", "/", "GET", &[]), None);
        assert_eq!(r.find("badexample.com", "/", "GET", &[]), None);
    }

    #[test]
    fn method_condition() {
        let r = Router::new(&[route(HostMatch::Any, "/", &["POST", "PUT"], None, 0)]);
        assert_eq!(r.find("a", "/", "PUT", &[]), Some(Found::Route(0)));
        assert_eq!(r.find("a", "/", "GET", &[]), None);
    }

    #[test]
    fn header_condition_with_and_without_value() {
        let r = Router::new(&[
            route(HostMatch::Any, "/", &[], Some(("x-canary", Some("1"))), 0),
            route(HostMatch::Any, "/", &[], Some(("x-debug", None)), 1),
        ]);
        assert_eq!(
            r.find("a", "/", "GET", &[hdr("X-Canary", b"1")]),
            Some(Found::Route(0))
        );
        assert_eq!(r.find("a", "/", "GET", &[hdr("X-Canary", b"2")]), None);
        assert_eq!(
            r.find("a", "/", "GET", &[hdr("x-debug", b"")]),
            Some(Found::Route(1))
        );
    }

    #[test]
    fn a_prefix_without_its_slash_redirects_before_later_routes_match() {
        let r = Router::new(&[
            route(HostMatch::Any, "/admin/", &[], None, 0),
            route(HostMatch::Any, "/", &[], None, 1),
        ]);
        assert_eq!(r.find("a", "/admin", "GET", &[]), Some(Found::AddSlash(0)));
        assert_eq!(r.find("a", "/admin/x", "GET", &[]), Some(Found::Route(0)));
        assert_eq!(r.find("a", "/adminx", "GET", &[]), Some(Found::Route(1)));
    }

    #[test]
    fn rewrite_joins_without_double_slash() {
        let mut out = Vec::new();
        rewrite_path(&mut out, "/api/users?x=1", "/api", "/");
        assert_eq!(out, b"/users?x=1");
        out.clear();
        rewrite_path(&mut out, "/api/users", "/api/", "/v2/");
        assert_eq!(out, b"/v2/users");
        out.clear();
        rewrite_path(&mut out, "/api", "/api", "/");
        assert_eq!(out, b"/");
        out.clear();
        rewrite_path(&mut out, "/api?q", "/api", "/internal");
        assert_eq!(out, b"/internal?q");
    }
}
