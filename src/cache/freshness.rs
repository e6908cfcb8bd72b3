//! RFC 9111 rules as pure functions: may a response be stored (section 3),
//! how long is it fresh (4.2.1, 4.2.2), how old is it (4.2.3), and may a
//! stored response answer a given request (4, 4.2.4, 5.2.1).

use std::time::{Duration, SystemTime};

use super::control::{Delta, FieldScope, RequestDirectives, ResponseDirectives};
use super::policy::{AuthorizationPolicy, CachePolicy};

/// Heuristic freshness is 10% of the time since Last-Modified, at most this
/// (RFC 9111 section 4.2.2 suggests a cap; a day is what Squid and ATS use).
pub const HEURISTIC_CAP: Duration = Duration::from_secs(86_400);

/// What the storage and freshness rules need to know about a response.
#[derive(Debug, Clone, Default)]
pub struct ResponseFacts {
    pub status: u16,
    pub cc: ResponseDirectives,
    /// `Date`, when present and valid.
    pub date: Option<SystemTime>,
    /// `Expires`: `Some(None)` when present but invalid (such as `0`), which means "already expired".
    pub expires: Option<Option<SystemTime>>,
    pub last_modified: Option<SystemTime>,
    /// `Age` in seconds, when present and valid.
    pub age: Option<u64>,
    pub etag: Option<String>,
    pub set_cookie: bool,
    pub vary_star: bool,
}

/// What they need to know about the request.
#[derive(Debug, Clone, Default)]
pub struct RequestFacts {
    pub authorization: bool,
    pub cc: RequestDirectives,
}

/// Why a response was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    Status,
    NoStore,
    Private,
    Authorization,
    SetCookie,
    VaryStar,
    NoFreshnessInformation,
}

/// Status codes that may get heuristic freshness (RFC 9110 section 15.1).
pub fn heuristically_cacheable(status: u16) -> bool {
    matches!(
        status,
        200 | 203 | 204 | 206 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Section 3: may this response to a GET be stored by a shared cache?
pub fn may_store(
    req: &RequestFacts,
    resp: &ResponseFacts,
    policy: &CachePolicy,
) -> Result<(), NotStored> {
    // Final and not a not-modified response (a 206 is stored only as a
    // checked part of a known whole, which the caller decides).
    if resp.status < 200 || resp.status == 304 || resp.status > 599 {
        return Err(NotStored::Status);
    }
    if req.cc.no_store || resp.cc.no_store {
        return Err(NotStored::NoStore);
    }
    if resp.cc.private == FieldScope::All {
        return Err(NotStored::Private);
    }
    if req.authorization {
        // Section 3.5: only when the response explicitly allows shared caching.
        let allowed_by_response =
            resp.cc.public || resp.cc.s_maxage.is_some() || resp.cc.must_revalidate;
        let allowed = match policy.authorization {
            AuthorizationPolicy::Rfc => allowed_by_response,
            AuthorizationPolicy::Never => false,
        };
        if !allowed {
            return Err(NotStored::Authorization);
        }
    }
    if resp.set_cookie && !policy.store_set_cookie {
        return Err(NotStored::SetCookie);
    }
    if resp.vary_star {
        return Err(NotStored::VaryStar);
    }
    let explicit =
        resp.cc.max_age.is_some() || resp.cc.s_maxage.is_some() || resp.expires.is_some();
    let heuristic =
        resp.last_modified.is_some() && (heuristically_cacheable(resp.status) || resp.cc.public);
    // A no-cache response with a validator is worth keeping: it is revalidated on every use.
    let revalidatable = resp.cc.no_cache == FieldScope::All
        && (resp.etag.is_some() || resp.last_modified.is_some());
    if !(explicit
        || heuristic
        || revalidatable
        || policy.default_ttl.is_some()
        || policy.ttl_override.is_some())
    {
        return Err(NotStored::NoFreshnessInformation);
    }
    Ok(())
}

/// Section 4.2.1 (and 4.2.2 for heuristics): the freshness lifetime.
pub fn freshness_lifetime(
    resp: &ResponseFacts,
    response_time: SystemTime,
    policy: &CachePolicy,
) -> Duration {
    if let Some(forced) = policy.ttl_override {
        return forced;
    }
    let explicit = if let Some(s) = resp.cc.s_maxage {
        Some(Duration::from_secs(s.or_zero()))
    } else if let Some(m) = resp.cc.max_age {
        Some(Duration::from_secs(m.or_zero()))
    } else {
        resp.expires.map(|expires| match expires {
            None => Duration::ZERO,
            Some(at) => at
                .duration_since(resp.date.unwrap_or(response_time))
                .unwrap_or(Duration::ZERO),
        })
    };
    let lifetime = match explicit {
        Some(d) => d,
        None => match resp.last_modified {
            Some(lm) if heuristically_cacheable(resp.status) || resp.cc.public => {
                let since = resp
                    .date
                    .unwrap_or(response_time)
                    .duration_since(lm)
                    .unwrap_or(Duration::ZERO);
                (since / 10).min(HEURISTIC_CAP)
            }
            _ => policy.default_ttl.unwrap_or(Duration::ZERO),
        },
    };
    match policy.max_ttl {
        Some(cap) => lifetime.min(cap),
        None => lifetime,
    }
}

/// Section 4.2.3: the age the response already had when it arrived.
pub fn corrected_initial_age(
    resp: &ResponseFacts,
    request_time: SystemTime,
    response_time: SystemTime,
) -> Duration {
    let apparent_age = resp
        .date
        .and_then(|date| response_time.duration_since(date).ok())
        .unwrap_or(Duration::ZERO);
    let response_delay = response_time
        .duration_since(request_time)
        .unwrap_or(Duration::ZERO);
    let corrected_age_value = Duration::from_secs(resp.age.unwrap_or(0)) + response_delay;
    apparent_age.max(corrected_age_value)
}

/// The parts of a stored response that decide whether it can be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredFreshness {
    pub lifetime: Duration,
    /// Must be revalidated before every use (`no-cache`).
    pub no_cache: bool,
    /// Must never be served stale (`must-revalidate`, `proxy-revalidate`, `s-maxage`).
    pub must_revalidate: bool,
    pub stale_while_revalidate: Option<Duration>,
    pub stale_if_error: Option<Duration>,
    /// `immutable` (RFC 8246): while fresh, a reload's `max-age=0` does not revalidate it.
    pub immutable: bool,
}

impl StoredFreshness {
    pub fn from_directives(cc: &ResponseDirectives, lifetime: Duration) -> StoredFreshness {
        let window = |d: Option<Delta>| match d {
            Some(Delta::Seconds(n)) => Some(Duration::from_secs(n)),
            _ => None,
        };
        StoredFreshness {
            lifetime,
            no_cache: cc.no_cache == FieldScope::All,
            // Section 5.2.2.10: s-maxage also implies proxy-revalidate for shared caches.
            must_revalidate: cc.must_revalidate || cc.proxy_revalidate || cc.s_maxage.is_some(),
            stale_while_revalidate: window(cc.stale_while_revalidate),
            stale_if_error: window(cc.stale_if_error),
            immutable: cc.immutable,
        }
    }

    /// How long after storing the entry can still be of any use: fresh, or
    /// stale but servable under stale-while-revalidate / stale-if-error, or
    /// kept for revalidation (validators make a stale entry useful).
    /// `grace` is the route's `stale_on_error`.
    pub fn keep_for(&self, has_validator: bool, grace: Duration) -> Duration {
        let stale_window = if self.must_revalidate {
            Duration::ZERO
        } else {
            let grace = if self.no_cache { Duration::ZERO } else { grace };
            self.stale_while_revalidate
                .unwrap_or_default()
                .max(self.stale_if_error.unwrap_or_default())
                .max(grace)
        };
        let revalidation_window = if has_validator {
            self.lifetime.max(Duration::from_secs(60))
        } else {
            Duration::ZERO
        };
        self.lifetime + stale_window.max(revalidation_window)
    }
}

/// What a request may do with a stored response of a given age.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// Serve it.
    Fresh,
    /// Serve it although stale: the client allowed it (`max-stale`).
    StaleAllowed,
    /// Serve it stale and refresh it in the background (`stale-while-revalidate`).
    StaleWhileRevalidate,
    /// Ask the origin first (conditionally, when there are validators).
    Revalidate,
}

/// Sections 4.2, 4.2.4 and 5.2.1: may a stored response of `age` answer this request?
pub fn usability(stored: &StoredFreshness, age: Duration, req: &RequestDirectives) -> Use {
    if stored.no_cache || req.no_cache {
        return Use::Revalidate;
    }
    let fresh = age < stored.lifetime;
    if let Some(max_age) = req.max_age.filter(|_| !(stored.immutable && fresh)) {
        if age > Duration::from_secs(max_age.or_zero()) {
            return Use::Revalidate;
        }
    }
    let min_fresh = req
        .min_fresh
        .map(|d| Duration::from_secs(d.or_zero()))
        .unwrap_or_default();
    if age + min_fresh < stored.lifetime {
        return Use::Fresh;
    }
    if stored.must_revalidate {
        return Use::Revalidate;
    }
    let staleness = age.saturating_sub(stored.lifetime);
    if let Some(max_stale) = req.max_stale {
        if max_stale.is_none_or(|n| staleness <= Duration::from_secs(n)) {
            return Use::StaleAllowed;
        }
    }
    if stored
        .stale_while_revalidate
        .is_some_and(|w| staleness <= w)
        && req.min_fresh.is_none()
    {
        return Use::StaleWhileRevalidate;
    }
    Use::Revalidate
}

/// Why a stale response may stand in for an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaleReason {
    /// `stale-if-error` (RFC 5861), from the response or the request.
    StaleIfError,
    /// The route's grace for an origin that cannot be reached (`stale_on_error`).
    Grace,
}

/// Section 4.2.4 and RFC 5861: may a stale response stand in for an error?
/// `grace` is the route's window for an origin that cannot be reached
/// (zero for an origin that answered with an error). `must-revalidate`,
/// `proxy-revalidate`, `s-maxage` and `no-cache` forbid both.
pub fn may_serve_stale_on_error(
    stored: &StoredFreshness,
    age: Duration,
    req: &RequestDirectives,
    grace: Duration,
) -> Option<StaleReason> {
    if stored.must_revalidate || stored.no_cache {
        return None;
    }
    let staleness = age.saturating_sub(stored.lifetime);
    let window = match req.stale_if_error {
        Some(Delta::Seconds(n)) => Some(Duration::from_secs(n)),
        _ => stored.stale_if_error,
    };
    if window.is_some_and(|w| staleness <= w) {
        Some(StaleReason::StaleIfError)
    } else if staleness <= grace && !grace.is_zero() {
        Some(StaleReason::Grace)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::control::RequestDirectives;

    fn cc(v: &str) -> ResponseDirectives {
        ResponseDirectives::parse(std::iter::once(v.as_bytes()))
    }

    fn rcc(v: &str) -> RequestDirectives {
        RequestDirectives::parse(std::iter::once(v.as_bytes()), std::iter::empty())
    }

    fn facts(status: u16, cache_control: &str) -> ResponseFacts {
        ResponseFacts {
            status,
            cc: cc(cache_control),
            ..Default::default()
        }
    }

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn policy() -> CachePolicy {
        CachePolicy::default()
    }

    fn store(resp: &ResponseFacts) -> Result<(), NotStored> {
        may_store(&RequestFacts::default(), resp, &policy())
    }

    #[test]
    fn max_age_response_is_storable() {
        assert_eq!(store(&facts(200, "max-age=60")), Ok(()));
    }

    #[test]
    fn no_store_response_is_not_stored() {
        assert_eq!(
            store(&facts(200, "max-age=60, no-store")),
            Err(NotStored::NoStore)
        );
    }

    #[test]
    fn no_store_request_prevents_storing() {
        let req = RequestFacts {
            cc: rcc("no-store"),
            ..Default::default()
        };
        assert_eq!(
            may_store(&req, &facts(200, "max-age=60"), &policy()),
            Err(NotStored::NoStore)
        );
    }

    #[test]
    fn private_response_is_not_stored_by_a_shared_cache() {
        assert_eq!(
            store(&facts(200, "private, max-age=60")),
            Err(NotStored::Private)
        );
    }

    #[test]
    fn qualified_private_response_is_stored() {
        assert_eq!(store(&facts(200, "private=\"x-user\", max-age=60")), Ok(()));
    }

    #[test]
    fn not_modified_and_interim_responses_are_not_stored() {
        assert_eq!(store(&facts(304, "max-age=60")), Err(NotStored::Status));
        assert_eq!(store(&facts(101, "max-age=60")), Err(NotStored::Status));
    }

    #[test]
    fn response_without_freshness_information_is_not_stored() {
        assert_eq!(
            store(&facts(200, "")),
            Err(NotStored::NoFreshnessInformation)
        );
    }

    #[test]
    fn default_ttl_makes_a_response_without_freshness_storable() {
        let p = CachePolicy {
            default_ttl: Some(Duration::from_secs(5)),
            ..policy()
        };
        assert_eq!(
            may_store(&RequestFacts::default(), &facts(200, ""), &p),
            Ok(())
        );
        assert_eq!(
            freshness_lifetime(&facts(200, ""), t(0), &p),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn expires_makes_a_response_storable() {
        let mut r = facts(200, "");
        r.expires = Some(Some(t(100)));
        r.date = Some(t(0));
        assert_eq!(store(&r), Ok(()));
        assert_eq!(
            freshness_lifetime(&r, t(0), &policy()),
            Duration::from_secs(100)
        );
    }

    #[test]
    fn invalid_expires_means_already_expired() {
        let mut r = facts(200, "");
        r.expires = Some(None);
        assert_eq!(freshness_lifetime(&r, t(0), &policy()), Duration::ZERO);
    }

    #[test]
    fn expires_without_date_uses_the_response_time() {
        let mut r = facts(200, "");
        r.expires = Some(Some(t(30)));
        assert_eq!(
            freshness_lifetime(&r, t(10), &policy()),
            Duration::from_secs(20)
        );
    }

    #[test]
    fn max_age_overrides_expires() {
        let mut r = facts(200, "max-age=10");
        r.expires = Some(Some(t(1000)));
        r.date = Some(t(0));
        assert_eq!(
            freshness_lifetime(&r, t(0), &policy()),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn s_maxage_overrides_max_age_in_a_shared_cache() {
        assert_eq!(
            freshness_lifetime(&facts(200, "max-age=10, s-maxage=50"), t(0), &policy()),
            Duration::from_secs(50)
        );
    }

    #[test]
    fn invalid_max_age_makes_the_response_stale() {
        assert_eq!(
            freshness_lifetime(&facts(200, "max-age=soon"), t(0), &policy()),
            Duration::ZERO
        );
    }

    #[test]
    fn heuristic_freshness_is_ten_percent_of_last_modified_age() {
        let mut r = facts(200, "");
        r.date = Some(t(1000));
        r.last_modified = Some(t(0));
        assert_eq!(store(&r), Ok(()));
        assert_eq!(
            freshness_lifetime(&r, t(1000), &policy()),
            Duration::from_secs(100)
        );
    }

    #[test]
    fn heuristic_freshness_is_capped() {
        let mut r = facts(200, "");
        r.date = Some(t(100 * 86_400));
        r.last_modified = Some(t(0));
        assert_eq!(
            freshness_lifetime(&r, t(100 * 86_400), &policy()),
            HEURISTIC_CAP
        );
    }

    #[test]
    fn heuristic_needs_a_heuristically_cacheable_status() {
        let mut r = facts(302, "");
        r.last_modified = Some(t(0));
        assert_eq!(store(&r), Err(NotStored::NoFreshnessInformation));
        r.cc.public = true;
        assert_eq!(store(&r), Ok(()), "public allows heuristics for any status");
    }

    #[test]
    fn max_ttl_caps_the_lifetime() {
        let p = CachePolicy {
            max_ttl: Some(Duration::from_secs(30)),
            ..policy()
        };
        assert_eq!(
            freshness_lifetime(&facts(200, "max-age=3600"), t(0), &p),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn ttl_override_replaces_the_origin_lifetime() {
        let p = CachePolicy {
            ttl_override: Some(Duration::from_secs(7)),
            ..policy()
        };
        assert_eq!(
            freshness_lifetime(&facts(200, "max-age=3600"), t(0), &p),
            Duration::from_secs(7)
        );
    }

    #[test]
    fn authorization_needs_public_s_maxage_or_must_revalidate() {
        let req = RequestFacts {
            authorization: true,
            ..Default::default()
        };
        assert_eq!(
            may_store(&req, &facts(200, "max-age=60"), &policy()),
            Err(NotStored::Authorization)
        );
        assert_eq!(
            may_store(&req, &facts(200, "public, max-age=60"), &policy()),
            Ok(())
        );
        assert_eq!(
            may_store(&req, &facts(200, "s-maxage=60"), &policy()),
            Ok(())
        );
        assert_eq!(
            may_store(&req, &facts(200, "must-revalidate, max-age=60"), &policy()),
            Ok(())
        );
        let never = CachePolicy {
            authorization: AuthorizationPolicy::Never,
            ..policy()
        };
        assert_eq!(
            may_store(&req, &facts(200, "public, max-age=60"), &never),
            Err(NotStored::Authorization)
        );
    }

    #[test]
    fn set_cookie_is_not_stored_unless_allowed() {
        let mut r = facts(200, "max-age=60");
        r.set_cookie = true;
        assert_eq!(store(&r), Err(NotStored::SetCookie));
        let p = CachePolicy {
            store_set_cookie: true,
            ..policy()
        };
        assert_eq!(may_store(&RequestFacts::default(), &r, &p), Ok(()));
    }

    #[test]
    fn vary_star_is_not_stored() {
        let mut r = facts(200, "max-age=60");
        r.vary_star = true;
        assert_eq!(store(&r), Err(NotStored::VaryStar));
    }

    #[test]
    fn no_cache_with_validator_is_stored_for_revalidation() {
        let mut r = facts(200, "no-cache");
        r.etag = Some("\"v1\"".into());
        assert_eq!(store(&r), Ok(()));
    }

    #[test]
    fn age_uses_the_larger_of_apparent_and_corrected_age() {
        let mut r = facts(200, "max-age=60");
        r.date = Some(t(0));
        r.age = Some(5);
        // Received at t=20 for a request sent at t=18: apparent 20, corrected 5+2.
        assert_eq!(
            corrected_initial_age(&r, t(18), t(20)),
            Duration::from_secs(20)
        );
        r.date = Some(t(19));
        r.age = Some(30);
        assert_eq!(
            corrected_initial_age(&r, t(18), t(20)),
            Duration::from_secs(32)
        );
    }

    #[test]
    fn date_in_the_future_gives_no_negative_age() {
        let mut r = facts(200, "max-age=60");
        r.date = Some(t(100));
        assert_eq!(corrected_initial_age(&r, t(0), t(0)), Duration::ZERO);
    }

    fn stored(cache_control: &str, lifetime: u64) -> StoredFreshness {
        StoredFreshness::from_directives(&cc(cache_control), Duration::from_secs(lifetime))
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn fresh_response_is_used() {
        assert_eq!(
            usability(&stored("max-age=60", 60), secs(10), &rcc("")),
            Use::Fresh
        );
    }

    #[test]
    fn stale_response_is_revalidated() {
        assert_eq!(
            usability(&stored("max-age=60", 60), secs(61), &rcc("")),
            Use::Revalidate
        );
    }

    #[test]
    fn no_cache_response_is_always_revalidated() {
        assert_eq!(
            usability(&stored("no-cache, max-age=60", 60), secs(0), &rcc("")),
            Use::Revalidate
        );
    }

    #[test]
    fn request_no_cache_forces_revalidation() {
        assert_eq!(
            usability(&stored("max-age=60", 60), secs(0), &rcc("no-cache")),
            Use::Revalidate
        );
    }

    #[test]
    fn request_max_age_limits_the_acceptable_age() {
        assert_eq!(
            usability(&stored("max-age=60", 60), secs(10), &rcc("max-age=5")),
            Use::Revalidate
        );
        assert_eq!(
            usability(&stored("max-age=60", 60), secs(10), &rcc("max-age=20")),
            Use::Fresh
        );
    }

    #[test]
    fn request_min_fresh_needs_remaining_freshness() {
        assert_eq!(
            usability(&stored("max-age=60", 60), secs(50), &rcc("min-fresh=20")),
            Use::Revalidate
        );
        assert_eq!(
            usability(&stored("max-age=60", 60), secs(30), &rcc("min-fresh=20")),
            Use::Fresh
        );
    }

    #[test]
    fn request_max_stale_accepts_stale() {
        assert_eq!(
            usability(&stored("max-age=60", 60), secs(70), &rcc("max-stale=20")),
            Use::StaleAllowed
        );
        assert_eq!(
            usability(&stored("max-age=60", 60), secs(90), &rcc("max-stale=20")),
            Use::Revalidate
        );
        assert_eq!(
            usability(&stored("max-age=60", 60), secs(9000), &rcc("max-stale")),
            Use::StaleAllowed
        );
    }

    #[test]
    fn must_revalidate_forbids_max_stale() {
        assert_eq!(
            usability(
                &stored("max-age=60, must-revalidate", 60),
                secs(70),
                &rcc("max-stale")
            ),
            Use::Revalidate
        );
    }

    #[test]
    fn proxy_revalidate_and_s_maxage_forbid_stale_in_a_shared_cache() {
        assert_eq!(
            usability(
                &stored("max-age=60, proxy-revalidate", 60),
                secs(70),
                &rcc("max-stale")
            ),
            Use::Revalidate
        );
        assert_eq!(
            usability(&stored("s-maxage=60", 60), secs(70), &rcc("max-stale")),
            Use::Revalidate
        );
    }

    #[test]
    fn stale_while_revalidate_window() {
        let s = stored("max-age=60, stale-while-revalidate=30", 60);
        assert_eq!(usability(&s, secs(80), &rcc("")), Use::StaleWhileRevalidate);
        assert_eq!(usability(&s, secs(100), &rcc("")), Use::Revalidate);
    }

    #[test]
    fn must_revalidate_forbids_stale_while_revalidate() {
        let s = stored("max-age=60, stale-while-revalidate=30, must-revalidate", 60);
        assert_eq!(usability(&s, secs(70), &rcc("")), Use::Revalidate);
    }

    #[test]
    fn immutable_keeps_a_fresh_entry_from_a_reload_revalidation() {
        let s = stored("max-age=600, immutable", 600);
        assert_eq!(usability(&s, secs(10), &rcc("max-age=0")), Use::Fresh);
        // A force reload (no-cache) still goes to the origin, and once
        // stale an immutable entry is like any other.
        assert_eq!(usability(&s, secs(10), &rcc("no-cache")), Use::Revalidate);
        assert_eq!(usability(&s, secs(700), &rcc("max-age=0")), Use::Revalidate);
        let mutable = stored("max-age=600", 600);
        assert_eq!(
            usability(&mutable, secs(10), &rcc("max-age=0")),
            Use::Revalidate
        );
    }

    #[test]
    fn stale_if_error_window() {
        let s = stored("max-age=60, stale-if-error=30", 60);
        assert!(may_serve_stale_on_error(&s, secs(80), &rcc(""), secs(0)).is_some());
        assert!(may_serve_stale_on_error(&s, secs(100), &rcc(""), secs(0)).is_none());
    }

    #[test]
    fn request_stale_if_error_overrides_the_response_window() {
        let s = stored("max-age=60", 60);
        assert!(
            may_serve_stale_on_error(&s, secs(100), &rcc("stale-if-error=60"), secs(0)).is_some()
        );
    }

    #[test]
    fn must_revalidate_forbids_stale_if_error() {
        let s = stored("max-age=60, stale-if-error=30, must-revalidate", 60);
        assert!(may_serve_stale_on_error(&s, secs(70), &rcc(""), secs(0)).is_none());
    }

    #[test]
    fn grace_serves_stale_for_an_unreachable_origin_unless_forbidden() {
        let s = stored("max-age=60", 60);
        assert_eq!(
            may_serve_stale_on_error(&s, secs(65), &rcc(""), secs(10)),
            Some(StaleReason::Grace)
        );
        assert_eq!(
            may_serve_stale_on_error(&s, secs(75), &rcc(""), secs(10)),
            None
        );
        for forbids in [
            "max-age=60, must-revalidate",
            "max-age=60, proxy-revalidate",
            "s-maxage=60",
            "max-age=60, no-cache",
        ] {
            let s = stored(forbids, 60);
            assert_eq!(
                may_serve_stale_on_error(&s, secs(65), &rcc(""), secs(10)),
                None,
                "{forbids}"
            );
        }
        let s = stored("max-age=60", 60);
        assert_eq!(
            s.keep_for(false, secs(10)),
            secs(70),
            "kept for the grace window"
        );
    }
}
