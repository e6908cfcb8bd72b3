//! Validation of `[[routes]]`: matching, rewrites, header edits, request
//! buffering, and their `auth`, `retry`, `timeouts` and `cache` tables.

use std::time::Duration;

use super::*;

pub(super) fn validate_route(
    i: usize,
    r: &raw::RawRoute,
    upstreams: &[UpstreamGroup],
    paths: crate::http::target::PathRules,
) -> Result<RouteConfig, ConfigError> {
    let key = |field: &str| format!("routes[{i}].{field}");
    let ai = match &r.ai {
        None => None,
        Some(raw) => Some(super::ai::validate_ai(i, raw, upstreams, r.auth.is_some())?),
    };
    let upstream = match (&r.upstream, &ai) {
        (Some(name), _) => upstreams
            .iter()
            .position(|g| g.name == *name)
            .ok_or_else(|| {
                let known: Vec<&str> = upstreams.iter().map(|g| g.name.as_str()).collect();
                invalid(
                    key("upstream"),
                    format!(
                        "no upstream group named `{}` (defined: {})",
                        name,
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                )
            })?,
        // An AI route's groups are its providers': the first model's first.
        (None, Some(ai)) => ai.providers[ai.models[0].targets[0].provider].upstream,
        (None, None) => {
            return Err(invalid(
                key("upstream"),
                "required: the upstream group this route sends requests to",
            ))
        }
    };
    let host = match r.host.as_deref() {
        None | Some("*") => HostMatch::Any,
        Some(h) => {
            let lower = h.to_ascii_lowercase();
            let (suffix, name) = match lower.strip_prefix("*.") {
                Some(rest) => (true, rest.to_string()),
                None => (false, lower.clone()),
            };
            if name.is_empty()
                || name.contains('*')
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            {
                return Err(invalid(
                    key("host"),
                    format!("`{h}` is not a host name or `*.suffix` wildcard (no port)"),
                ));
            }
            if suffix {
                HostMatch::Suffix(format!(".{name}"))
            } else {
                HostMatch::Exact(name)
            }
        }
    };
    let path_prefix = r.path_prefix.clone().unwrap_or_else(|| "/".to_string());
    if !path_prefix.starts_with('/') {
        return Err(invalid(key("path_prefix"), "must start with `/`"));
    }
    // Requests are matched in canonical form, so the prefix must be in it too.
    let path_prefix = crate::http::target::normalize_path(&path_prefix, paths).map_err(|_| {
        invalid(
            key("path_prefix"),
            format!(
                "`{path_prefix}` has no canonical form (a dot segment, `%00`, a bad `%` escape, \
                 or an encoded slash while paths.escaped_slashes = \"reject\"), so no request could match it"
            ),
        )
    })?;
    let mut methods = Vec::new();
    for m in r.methods.iter().flatten() {
        if m.is_empty() || !m.bytes().all(is_token_byte) {
            return Err(invalid(
                key("methods"),
                format!("`{m}` is not a method name"),
            ));
        }
        methods.push(m.to_ascii_uppercase());
    }
    let header = match &r.header {
        None => None,
        Some(h) => {
            if h.name.is_empty() || !h.name.bytes().all(is_token_byte) {
                return Err(invalid(
                    key("header.name"),
                    format!("`{}` is not a header name", h.name),
                ));
            }
            Some(HeaderMatch {
                name: h.name.to_ascii_lowercase(),
                value: h.value.clone(),
            })
        }
    };
    if let Some(rewrite) = &r.rewrite_prefix {
        if !rewrite.starts_with('/') {
            return Err(invalid(key("rewrite_prefix"), "must start with `/`"));
        }
        if !rewrite.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid(
                key("rewrite_prefix"),
                "must be visible ASCII without spaces",
            ));
        }
    }
    let mut set_request_headers = Vec::new();
    for (name, value) in &r.set_request_headers {
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(invalid(
                format!("routes[{i}].set_request_headers.{name}"),
                "not a valid header name",
            ));
        }
        if is_hop_by_hop_or_framing(name) {
            return Err(invalid(
                format!("routes[{i}].set_request_headers.{name}"),
                "framing and hop-by-hop headers are managed by the gateway",
            ));
        }
        if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(invalid(
                format!("routes[{i}].set_request_headers.{name}"),
                "a header value cannot contain CR, LF or NUL",
            ));
        }
        set_request_headers.push((name.clone(), value.clone()));
    }
    let mut remove_request_headers = Vec::new();
    for name in &r.remove_request_headers {
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(invalid(
                key("remove_request_headers"),
                format!("`{name}` is not a header name"),
            ));
        }
        remove_request_headers.push(name.to_ascii_lowercase());
    }
    let cache = match &r.cache {
        Some(c) if c.enabled.unwrap_or(true) => Some(validate_route_cache(i, c)?),
        _ => None,
    };
    let retry = match &r.retry {
        None => None,
        Some(raw) => Some(validate_retry(i, raw)?),
    };
    let auth = match &r.auth {
        None => None,
        Some(raw) => Some(validate_auth(i, raw)?),
    };
    let mut timeouts = RouteTimeouts::default();
    if let Some(t) = &r.timeouts {
        for (name, value, slot) in [
            (
                "upstream_connect",
                t.upstream_connect,
                &mut timeouts.upstream_connect,
            ),
            (
                "upstream_response",
                t.upstream_response,
                &mut timeouts.upstream_response,
            ),
            (
                "upstream_read",
                t.upstream_read,
                &mut timeouts.upstream_read,
            ),
            ("tunnel_idle", t.tunnel_idle, &mut timeouts.tunnel_idle),
        ] {
            if let Some(d) = value {
                if d.0.is_zero() {
                    return Err(invalid(
                        format!("routes[{i}].timeouts.{name}"),
                        "must be longer than zero",
                    ));
                }
                *slot = Some(d.0);
            }
        }
    }
    let request_buffering = match r.request_buffering {
        None => DEFAULT_REQUEST_BUFFERING,
        Some(size) if size.0 > MAX_REQUEST_BUFFERING => return Err(invalid(
            key("request_buffering"),
            "must be at most 64MiB (each buffered body is held in memory); larger bodies stream",
        )),
        Some(size) => size.0,
    };
    let upgrade = validate_upgrade(i, r.upgrade.as_deref())?;
    let rate_limit = match &r.rate_limit {
        None => None,
        Some(raw) => Some(validate_rate_limit(i, raw, auth.is_some())?),
    };
    Ok(RouteConfig {
        ai,
        access_log: r.access_log.unwrap_or(true),
        rate_limit,
        upgrade,
        request_buffering,
        timeouts,
        auth,
        retry,
        cache,
        name: r.name.clone().unwrap_or_else(|| format!("route{i}")),
        host,
        path_prefix,
        methods,
        header,
        upstream,
        rewrite_prefix: r.rewrite_prefix.clone(),
        set_request_headers,
        remove_request_headers,
    })
}

fn validate_rate_limit(
    i: usize,
    raw: &raw::RawRateLimit,
    has_auth: bool,
) -> Result<crate::route::rate_limit::RateLimit, ConfigError> {
    use crate::route::rate_limit::{LimitKey, RateLimit};
    let key = |field: &str| format!("routes[{i}].rate_limit.{field}");
    let by = raw.key.as_deref().unwrap_or("ip");
    let named = |prefix: &str| {
        by.strip_prefix(prefix)
            .filter(|n| !n.is_empty() && n.bytes().all(is_token_byte))
            .map(str::to_ascii_lowercase)
    };
    let limit_key = match by {
        "ip" => LimitKey::ClientIp,
        "route" => LimitKey::Route,
        "subject" if has_auth => LimitKey::Subject,
        "subject" => {
            return Err(invalid(
                key("key"),
                "`subject` is the verified session token's: the route needs [routes.auth]",
            ))
        }
        _ => match (named("header:"), named("cookie:")) {
            (Some(h), _) => LimitKey::Header(h),
            (_, Some(_)) => LimitKey::Cookie(by["cookie:".len()..].to_string()),
            _ => {
                return Err(invalid(
                    key("key"),
                    format!("`{by}` is not one of ip, route, subject, header:NAME, cookie:NAME"),
                ))
            }
        },
    };
    let (scope, fail) = scope_and_fail(
        (key("scope"), raw.scope.as_deref()),
        (key("fail"), raw.fail.as_deref()),
    )?;
    let mut limit = RateLimit::new(raw.requests_per_second, raw.burst.unwrap_or(0), limit_key)
        .map_err(|reason| invalid(key("requests_per_second"), reason))?;
    limit.scope = scope;
    limit.fail = fail;
    Ok(limit)
}

fn validate_auth(i: usize, raw: &raw::RawAuth) -> Result<AuthPolicy, ConfigError> {
    let key = |field: &str| format!("routes[{i}].auth.{field}");
    if raw.keys.is_empty() {
        return Err(invalid(
            key("keys"),
            "name at least one key: keys = { kid = \"secret\" }",
        ));
    }
    for (kid, secret) in &raw.keys {
        if secret.len() < 16 {
            return Err(invalid(
                format!("routes[{i}].auth.keys.{kid}"),
                "use a secret of at least 16 characters",
            ));
        }
    }
    let header_name = |field: &str, name: &str| {
        if name.is_empty() || !name.bytes().all(is_token_byte) || is_hop_by_hop_or_framing(name) {
            Err(invalid(
                key(field),
                format!("`{name}` is not a header the gateway may set"),
            ))
        } else {
            Ok(name.to_string())
        }
    };
    let source = match raw.token.as_deref() {
        None | Some("bearer") => TokenSource::Bearer,
        Some(t) => match t.strip_prefix("cookie:") {
            Some(name) if !name.is_empty() && name.bytes().all(is_token_byte) => {
                TokenSource::Cookie(name.to_string())
            }
            _ => {
                return Err(invalid(
                    key("token"),
                    format!("`{t}` is not \"bearer\" or \"cookie:NAME\""),
                ))
            }
        },
    };
    let mut claims = Vec::new();
    for (claim, header) in &raw.claims {
        claims.push((claim.clone(), header_name("claims", header)?));
    }
    Ok(AuthPolicy {
        keys: raw
            .keys
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        source,
        required: raw.required.unwrap_or(true),
        subject_header: header_name(
            "subject_header",
            raw.subject_header.as_deref().unwrap_or("X-Auth-Subject"),
        )?,
        claims,
        leeway: raw.leeway.map_or(Duration::from_secs(30), |d| d.0),
        require_exp: raw.require_exp.unwrap_or(true),
    })
}

fn validate_retry(i: usize, raw: &raw::RawRetry) -> Result<RetryPolicy, ConfigError> {
    let key = |field: &str| format!("routes[{i}].retry.{field}");
    let mut policy = RetryPolicy {
        attempts: raw.attempts.unwrap_or(1),
        on_connect_failure: false,
        on_reset: false,
        statuses: Vec::new(),
        budget: raw.budget.unwrap_or(0.2),
        min_per_second: raw.min_per_second.unwrap_or(3),
    };
    if policy.attempts > 10 {
        return Err(invalid(key("attempts"), "at most 10"));
    }
    if !(0.0..=1.0).contains(&policy.budget) {
        return Err(invalid(
            key("budget"),
            "a share of requests between 0.0 and 1.0",
        ));
    }
    let on = raw
        .on
        .clone()
        .unwrap_or_else(|| vec!["connect-failure".into(), "reset".into()]);
    for condition in &on {
        match condition.as_str() {
            "connect-failure" => policy.on_connect_failure = true,
            "reset" => policy.on_reset = true,
            status => match status.parse::<u16>() {
                Ok(code) if (500..=599).contains(&code) => policy.statuses.push(code),
                _ => {
                    return Err(invalid(
                        key("on"),
                        format!(
                            "`{condition}` is not \"connect-failure\", \"reset\" or a 5xx status"
                        ),
                    ))
                }
            },
        }
    }
    Ok(policy)
}

fn validate_route_cache(
    i: usize,
    c: &raw::RawRouteCache,
) -> Result<crate::cache::policy::CachePolicy, ConfigError> {
    use crate::cache::policy::{AuthorizationPolicy, CachePolicy, QueryKey};
    let key = |field: &str| format!("routes[{i}].cache.{field}");
    let mut policy = CachePolicy::default();
    for name in &c.key_headers {
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(invalid(
                key("key_headers"),
                format!("`{name}` is not a header name"),
            ));
        }
        policy.key_headers.push(name.to_ascii_lowercase());
    }
    for name in &c.key_cookies {
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(invalid(
                key("key_cookies"),
                format!("`{name}` is not a cookie name"),
            ));
        }
        policy.key_cookies.push(name.clone());
    }
    policy.query = match (
        c.ignore_query.unwrap_or(false),
        c.ignore_query_params.is_empty(),
    ) {
        (true, true) => QueryKey::Ignore,
        (true, false) => {
            return Err(invalid(
                key("ignore_query_params"),
                "has no effect with `ignore_query = true`; use one or the other",
            ))
        }
        (false, true) => QueryKey::Full,
        (false, false) => QueryKey::IgnoreParams(c.ignore_query_params.clone()),
    };
    policy.default_ttl = c.default_ttl.map(|d| d.0).filter(|d| !d.is_zero());
    policy.max_ttl = c.max_ttl.map(|d| d.0);
    policy.ttl_override = c.ttl_override.map(|d| d.0);
    policy.authorization = match c.authorization.as_deref() {
        None | Some("rfc") => AuthorizationPolicy::Rfc,
        Some("never") => AuthorizationPolicy::Never,
        Some(other) => {
            return Err(invalid(
                key("authorization"),
                format!("`{other}` is not a policy (use \"rfc\" or \"never\")"),
            ))
        }
    };
    policy.store_set_cookie = c.store_set_cookie.unwrap_or(false);
    if let Some(size) = c.max_object_size {
        if size.0 == 0 {
            return Err(invalid(key("max_object_size"), "must be larger than zero"));
        }
        policy.max_object_size = Some(size.0);
    }
    policy.shared_max_size = c.shared_max_size.map(|s| s.0);
    if let Some(t) = c.coalesce_timeout {
        policy.coalesce_timeout = t.0;
    }
    policy.invalidate_on_write = c.invalidate_on_write.unwrap_or(true);
    if let Some(fields) = &c.targeted_fields {
        policy.targeted_fields.clear();
        for name in fields {
            if name.is_empty() || !name.bytes().all(is_token_byte) {
                return Err(invalid(
                    key("targeted_fields"),
                    format!("`{name}` is not a header name"),
                ));
            }
            if name.eq_ignore_ascii_case("cache-control") {
                return Err(invalid(
                    key("targeted_fields"),
                    "`Cache-Control` is what targeted fields take precedence over; list only targeted ones",
                ));
            }
            policy.targeted_fields.push(name.to_ascii_lowercase());
        }
    }
    policy.forward_targeted_fields = c.forward_targeted_fields.unwrap_or(true);
    policy.store_206 = c.store_206.unwrap_or(true);
    if let Some(grace) = c.stale_on_error {
        policy.stale_on_error = grace.0;
    }
    Ok(policy)
}

/// `routes.upgrade`: the protocols a request may switch the connection to.
fn validate_upgrade(i: usize, raw: Option<&[String]>) -> Result<Vec<String>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(vec!["websocket".to_string()]);
    };
    let mut protocols = Vec::new();
    for p in raw {
        let lower = p.to_ascii_lowercase();
        if lower.is_empty() || !lower.bytes().all(|b| is_token_byte(b) || b == b'/') {
            return Err(invalid(
                format!("routes[{i}].upgrade"),
                format!("`{p}` is not a protocol name (a token, optionally `/version`)"),
            ));
        }
        if lower == "h2c" || lower.starts_with("h2c/") {
            return Err(invalid(
                format!("routes[{i}].upgrade"),
                "`h2c` cannot be tunnelled: an HTTP/2 upgrade must be understood by the gateway, \
                 which ignores it (RFC 9110 section 7.8)",
            ));
        }
        if !protocols.contains(&lower) {
            protocols.push(lower);
        }
    }
    Ok(protocols)
}

/// A limit's `scope` (`node`, the default, or `cluster`) and, for a
/// cluster one only, its `fail` mode (`local`, the default, `open`,
/// `closed`), each with its key for errors.
pub(super) fn scope_and_fail(
    scope: (String, Option<&str>),
    fail: (String, Option<&str>),
) -> Result<
    (
        crate::route::rate_limit::Scope,
        crate::route::rate_limit::Fail,
    ),
    ConfigError,
> {
    use crate::route::rate_limit::{Fail, Scope};
    let parsed_scope = match scope.1.unwrap_or("node") {
        "node" => Scope::Node,
        "cluster" => Scope::Cluster,
        other => {
            return Err(invalid(
                scope.0,
                format!("`{other}` is not one of node, cluster"),
            ))
        }
    };
    let parsed_fail = match fail.1 {
        None | Some("local") => Fail::Local,
        Some("open") => Fail::Open,
        Some("closed") => Fail::Closed,
        Some(other) => {
            return Err(invalid(
                fail.0,
                format!("`{other}` is not one of local, open, closed"),
            ))
        }
    };
    if fail.1.is_some() && parsed_scope == Scope::Node {
        return Err(invalid(
            fail.0,
            "only a `scope = \"cluster\"` limit depends on Redis",
        ));
    }
    Ok((parsed_scope, parsed_fail))
}
