//! A route's cache policy, from its `[routes.cache]` table.

use std::time::Duration;

/// Responses to requests carrying `Authorization`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthorizationPolicy {
    /// RFC 9111 section 3.5: stored only when the response says `public`,
    /// `s-maxage` or `must-revalidate`.
    #[default]
    Rfc,
    /// Never stored.
    Never,
}

/// How the query string enters the cache key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum QueryKey {
    /// The whole query, as received.
    #[default]
    Full,
    /// No query at all.
    Ignore,
    /// The query without these parameters (e.g. tracking parameters).
    IgnoreParams(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachePolicy {
    /// Lower-case request header names added to the key.
    pub key_headers: Vec<String>,
    /// Cookie names whose values are added to the key.
    pub key_cookies: Vec<String>,
    pub query: QueryKey,
    /// Freshness for responses that carry none (off by default: such responses are not stored).
    pub default_ttl: Option<Duration>,
    /// Upper bound on any freshness lifetime.
    pub max_ttl: Option<Duration>,
    /// Freshness that replaces whatever the origin said.
    pub ttl_override: Option<Duration>,
    pub authorization: AuthorizationPolicy,
    /// Store responses that set cookies (off by default).
    pub store_set_cookie: bool,
    /// Largest body stored for this route; `None` means the worker's `cache_max_object`.
    pub max_object_size: Option<u64>,
    /// How long concurrent misses wait for the first one's origin fetch.
    pub coalesce_timeout: Duration,
    /// Invalidate stored responses on successful unsafe requests (RFC 9111 section 4.4).
    pub invalidate_on_write: bool,
    /// Targeted cache-control fields (RFC 9213), lower-case, first wins:
    /// the first present and valid one replaces `Cache-Control` and `Expires`.
    pub targeted_fields: Vec<String>,
    /// Pass targeted fields on to clients (off: they are for this cache only).
    pub forward_targeted_fields: bool,
    /// How long past its freshness a stored response stands in for an origin
    /// that cannot be reached (Varnish's grace), where the response allows it.
    pub stale_on_error: Duration,
    /// Store 206 responses of a known complete length: one covering the
    /// whole representation as the 200 it equals, a part as a partial entry
    /// that answers the ranges inside it.
    pub store_206: bool,
    /// Largest response (head and body) this route writes to the cluster's
    /// shared tier; `None` means `[cluster] shared_cache_max`, 0 never.
    pub shared_max_size: Option<u64>,
}

/// The targeted field a route reads when its config names none.
pub const DEFAULT_TARGETED_FIELD: &str = "cdn-cache-control";

impl Default for CachePolicy {
    fn default() -> Self {
        CachePolicy {
            key_headers: Vec::new(),
            key_cookies: Vec::new(),
            query: QueryKey::Full,
            default_ttl: None,
            max_ttl: None,
            ttl_override: None,
            authorization: AuthorizationPolicy::Rfc,
            store_set_cookie: false,
            max_object_size: None,
            coalesce_timeout: Duration::from_secs(5),
            invalidate_on_write: true,
            targeted_fields: vec![DEFAULT_TARGETED_FIELD.to_string()],
            forward_targeted_fields: true,
            stale_on_error: Duration::from_secs(10),
            store_206: true,
            shared_max_size: None,
        }
    }
}
