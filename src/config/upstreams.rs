//! Validation of `[upstreams.NAME]` groups (servers, balancing, sticky
//! sessions, health checks, passive ejection, discovery) and `[resolver]`.

use std::time::Duration;

use super::*;

pub(super) fn validate_balance(
    name: &str,
    group: &raw::RawUpstream,
) -> Result<BalancePolicy, ConfigError> {
    let key = |field: &str| format!("upstreams.{name}.{field}");
    let policy = match group.balance.as_deref() {
        None | Some("round_robin") => BalancePolicy::RoundRobin,
        Some("random") => BalancePolicy::Random,
        Some("least_request") => BalancePolicy::LeastRequest,
        Some("peak_ewma") => BalancePolicy::PeakEwma,
        Some("hash") => {
            let on = group.hash_on.as_deref().ok_or_else(|| {
                invalid(key("hash_on"), "balance = \"hash\" needs hash_on: \"client_ip\", \"path\", \"header:NAME\" or \"cookie:NAME\"")
            })?;
            let hash_key = match on.split_once(':') {
                None if on == "client_ip" => HashKey::ClientIp,
                None if on == "path" => HashKey::Path,
                Some(("header", h)) if !h.is_empty() && h.bytes().all(is_token_byte) => {
                    HashKey::Header(h.to_ascii_lowercase())
                }
                Some(("cookie", c)) if !c.is_empty() && c.bytes().all(is_token_byte) => {
                    HashKey::Cookie(c.to_string())
                }
                _ => {
                    return Err(invalid(
                        key("hash_on"),
                        format!(
                        "`{on}` is not \"client_ip\", \"path\", \"header:NAME\" or \"cookie:NAME\""
                    ),
                    ))
                }
            };
            return Ok(BalancePolicy::Hash(hash_key));
        }
        Some(other) => {
            return Err(invalid(
                key("balance"),
                format!(
                "`{other}` is not a policy (round_robin, random, least_request, peak_ewma, hash)"
            ),
            ))
        }
    };
    if group.hash_on.is_some() {
        return Err(invalid(
            key("hash_on"),
            "only applies with balance = \"hash\"",
        ));
    }
    Ok(policy)
}

pub(super) fn validate_sticky(
    name: &str,
    raw: &raw::RawSticky,
) -> Result<StickyCookie, ConfigError> {
    let key = |field: &str| format!("upstreams.{name}.sticky.{field}");
    let sticky = StickyCookie {
        cookie: raw.cookie.clone().unwrap_or_else(|| "rg_sticky".into()),
        secret: raw.secret.clone(),
        ttl: raw.ttl.map(|d| d.0).filter(|d| !d.is_zero()),
        path: raw.path.clone().unwrap_or_else(|| "/".into()),
        http_only: raw.http_only.unwrap_or(true),
        secure: raw.secure.unwrap_or(false),
        same_site: raw.same_site.clone().unwrap_or_else(|| "Lax".into()),
    };
    if sticky.cookie.is_empty() || !sticky.cookie.bytes().all(is_token_byte) {
        return Err(invalid(key("cookie"), "not a cookie name"));
    }
    if sticky.secret.len() < 16 {
        return Err(invalid(key("secret"), "use at least 16 characters"));
    }
    if !sticky.path.starts_with('/')
        || sticky
            .path
            .bytes()
            .any(|b| b == b';' || b.is_ascii_control() || b == b' ')
    {
        return Err(invalid(
            key("path"),
            "must start with `/`, without spaces or `;`",
        ));
    }
    if !["Strict", "Lax", "None"].contains(&sticky.same_site.as_str()) {
        return Err(invalid(key("same_site"), "Strict, Lax or None"));
    }
    if sticky.same_site == "None" && !sticky.secure {
        return Err(invalid(
            key("same_site"),
            "SameSite=None needs secure = true (browsers refuse it otherwise)",
        ));
    }
    Ok(sticky)
}

pub(super) fn validate_health(
    name: &str,
    raw: &raw::RawHealth,
) -> Result<HealthCheck, ConfigError> {
    let key = |field: &str| format!("upstreams.{name}.health.{field}");
    let check = HealthCheck {
        method: raw.method.clone().unwrap_or_else(|| "GET".into()),
        path: raw.path.clone().unwrap_or_else(|| "/".into()),
        host: raw.host.clone(),
        expect_status: raw.expect_status.clone().unwrap_or_default(),
        expect_body: raw.expect_body.clone(),
        interval: raw.interval.map_or(Duration::from_secs(5), |d| d.0),
        jitter: raw.jitter.map_or(Duration::from_millis(500), |d| d.0),
        timeout: raw.timeout.map_or(Duration::from_secs(2), |d| d.0),
        healthy_threshold: raw.healthy_threshold.unwrap_or(2),
        unhealthy_threshold: raw.unhealthy_threshold.unwrap_or(3),
        worker: raw.worker.unwrap_or(0),
        fail_open: match raw.when_all_down.as_deref() {
            None | Some("fail_open") => true,
            Some("503") => false,
            Some(other) => {
                return Err(invalid(
                    key("when_all_down"),
                    format!("`{other}` is not \"fail_open\" or \"503\""),
                ))
            }
        },
    };
    if check.method.is_empty() || !check.method.bytes().all(is_token_byte) {
        return Err(invalid(key("method"), "not a method name"));
    }
    if !check.path.starts_with('/') || !check.path.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            key("path"),
            "must start with `/`, visible ASCII only",
        ));
    }
    if check.interval.is_zero() || check.timeout.is_zero() {
        return Err(invalid(
            key("interval"),
            "interval and timeout must be longer than zero",
        ));
    }
    if check.healthy_threshold == 0 || check.unhealthy_threshold == 0 {
        return Err(invalid(
            key("healthy_threshold"),
            "thresholds must be at least 1",
        ));
    }
    if check.expect_status.iter().any(|s| !(100..=599).contains(s)) {
        return Err(invalid(key("expect_status"), "statuses are 100 to 599"));
    }
    if let Some(host) = &check.host {
        if host.bytes().any(|b| b == b'\r' || b == b'\n' || b == b' ') {
            return Err(invalid(key("host"), "not a host"));
        }
    }
    Ok(check)
}

pub(super) fn validate_outlier(
    name: &str,
    raw: &raw::RawOutlier,
) -> Result<OutlierPolicy, ConfigError> {
    let key = |field: &str| format!("upstreams.{name}.outlier.{field}");
    let policy = OutlierPolicy {
        consecutive_failures: raw.consecutive_failures.unwrap_or(5),
        base_ejection: raw.base_ejection.map_or(Duration::from_secs(30), |d| d.0),
        max_ejection: raw.max_ejection.map_or(Duration::from_secs(300), |d| d.0),
        max_ejected_percent: raw.max_ejected_percent.unwrap_or(50),
    };
    if policy.consecutive_failures == 0 {
        return Err(invalid(
            key("consecutive_failures"),
            "must be at least 1 (remove the table to turn ejection off)",
        ));
    }
    if policy.base_ejection.is_zero() || policy.max_ejection < policy.base_ejection {
        return Err(invalid(
            key("max_ejection"),
            "must be at least base_ejection, which must be longer than zero",
        ));
    }
    if policy.max_ejected_percent > 100 {
        return Err(invalid(
            key("max_ejected_percent"),
            "a percentage, 0 to 100",
        ));
    }
    Ok(policy)
}

pub(super) fn validate_server(key: &str, value: &toml::Value) -> Result<ServerConfig, ConfigError> {
    let (address, weight) = server_text(key, value)?;
    let address = parse_socket_addr(address).map_err(|reason| invalid(key.to_string(), reason))?;
    Ok(ServerConfig { address, weight })
}

/// A group whose servers change at run time: its entries kept as written,
/// and the servers they stand for at start (names resolved now, so a name
/// that does not resolve is refused here as it is without discovery).
pub(super) fn validate_discovery(
    name: &str,
    group: &raw::RawUpstream,
    raw: &raw::RawDiscovery,
    resolver: &raw::RawResolver,
) -> Result<(Vec<ServerConfig>, Option<Discovery>), ConfigError> {
    let key = |field: &str| format!("upstreams.{name}.discovery.{field}");
    let positive = |field: &str, d: Option<units::ConfigDuration>| match d {
        Some(d) if d.0.is_zero() => Err(invalid(key(field), "must be longer than zero")),
        other => Ok(other.map(|d| d.0)),
    };
    let resolve_every = positive("resolve_every", raw.resolve_every)?;
    let watch_every = positive("watch_every", raw.watch_every)?.unwrap_or(Duration::from_secs(2));
    let resolver = validate_resolver(resolver)?;
    let hosts = match &resolver.hosts_file {
        None => Default::default(),
        Some(path) => crate::upstream::discovery::read_hosts(path).map_err(|e| {
            invalid(
                "resolver.hosts_file",
                format!("cannot read {}: {e}", path.display()),
            )
        })?,
    };
    let mut entries = Vec::new();
    for (j, value) in group.servers.iter().enumerate() {
        let key = format!("upstreams.{name}.servers[{j}]");
        let (text, weight) = server_text(&key, value)?;
        entries.push(ServerEntry::parse(text, weight).map_err(|reason| invalid(key, reason))?);
    }
    let servers_file = raw.servers_file.as_ref().map(PathBuf::from);
    let mut from_file = Vec::new();
    if let Some(path) = &servers_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            invalid(
                key("servers_file"),
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        from_file = crate::upstream::discovery::parse_servers_file(&text).map_err(|reason| {
            invalid(key("servers_file"), format!("{}: {reason}", path.display()))
        })?;
    }
    let mut servers: Vec<ServerConfig> = Vec::new();
    for entry in entries.iter().chain(from_file.iter()) {
        match entry {
            ServerEntry::Fixed(address, weight) => servers.push(ServerConfig {
                address: *address,
                weight: *weight,
            }),
            ServerEntry::Name(host, port, weight) => {
                let resolved = crate::upstream::discovery::resolve(host, *port, &hosts, &resolver)
                    .map_err(|e| {
                        invalid(
                            format!("upstreams.{name}.servers"),
                            format!("`{host}:{port}` does not resolve: {e}"),
                        )
                    })?;
                servers.extend(resolved.addrs.into_iter().map(|address| ServerConfig {
                    address,
                    weight: *weight,
                }));
            }
        }
    }
    servers.sort_by_key(|s| s.address);
    servers.dedup_by_key(|s| s.address);
    if servers.is_empty() {
        return Err(invalid(
            format!("upstreams.{name}.servers"),
            "no servers: neither `servers` nor the servers file names one",
        ));
    }
    let discovery = Discovery {
        entries,
        resolve_every,
        servers_file,
        watch_every,
        resolver,
    };
    Ok((servers, Some(discovery)))
}

pub(super) fn validate_resolver(raw: &raw::RawResolver) -> Result<ResolverSettings, ConfigError> {
    let mut settings = ResolverSettings {
        hosts_file: raw.hosts_file.as_ref().map(PathBuf::from),
        ..ResolverSettings::default()
    };
    for (i, text) in raw.nameservers.iter().enumerate() {
        let addr = match text.parse::<SocketAddr>() {
            Ok(addr) => addr,
            Err(_) => match text.parse::<std::net::IpAddr>() {
                Ok(ip) => SocketAddr::new(ip, 53),
                Err(_) => {
                    return Err(invalid(
                        format!("resolver.nameservers[{i}]"),
                        format!("`{text}` is not an IP address (optionally with :port)"),
                    ))
                }
            },
        };
        settings.nameservers.push(addr);
    }
    if let Some(t) = raw.timeout {
        if t.0.is_zero() {
            return Err(invalid("resolver.timeout", "must be longer than zero"));
        }
        settings.timeout = t.0;
    }
    Ok(settings)
}

/// The address text and weight of one `servers` entry.
fn server_text<'a>(key: &str, value: &'a toml::Value) -> Result<(&'a str, u32), ConfigError> {
    Ok(match value {
        toml::Value::String(s) => (s.as_str(), 1),
        toml::Value::Table(table) => {
            for k in table.keys() {
                if k != "address" && k != "weight" {
                    return Err(invalid(
                        format!("{key}.{k}"),
                        "unknown field, expected `address` or `weight`",
                    ));
                }
            }
            let address = match table.get("address") {
                Some(toml::Value::String(s)) => s.as_str(),
                Some(_) => {
                    return Err(invalid(
                        format!("{key}.address"),
                        "must be a string \"host:port\"",
                    ))
                }
                None => return Err(invalid(key, "missing field `address`")),
            };
            let weight = match table.get("weight") {
                None => 1,
                Some(toml::Value::Integer(w)) if (1..=10_000).contains(w) => *w as u32,
                Some(_) => {
                    return Err(invalid(
                        format!("{key}.weight"),
                        "must be an integer between 1 and 10000",
                    ))
                }
            };
            (address, weight)
        }
        _ => {
            return Err(invalid(
                key,
                "a server is \"host:port\" or { address = \"host:port\", weight = N }",
            ))
        }
    })
}

/// `[upstreams.NAME.tls]`: the files are read and checked now, so a
/// missing CA or a client key of another certificate is refused at start.
pub(super) fn validate_tls(
    name: &str,
    raw: &raw::RawUpstreamTls,
) -> Result<UpstreamTls, ConfigError> {
    let key = |field: &str| format!("upstreams.{name}.tls.{field}");
    let sni = match &raw.sni {
        None => None,
        Some(s) => {
            let lower = s.trim_end_matches('.').to_ascii_lowercase();
            if rustls::pki_types::ServerName::try_from(lower.as_str()).is_err() || lower.is_empty()
            {
                return Err(invalid(
                    key("sni"),
                    format!("`{s}` is not a DNS name or IP address"),
                ));
            }
            Some(lower)
        }
    };
    let verify = raw.verify.unwrap_or(true);
    let ca = raw.ca.as_ref().map(PathBuf::from);
    if let Some(path) = &ca {
        crate::tls::connector::read_roots(path).map_err(|reason| invalid(key("ca"), reason))?;
    }
    let client_cert = match (&raw.cert, &raw.key) {
        (None, None) => None,
        (Some(cert), Some(k)) => {
            let files = CertificateFiles {
                cert: PathBuf::from(cert),
                key: PathBuf::from(k),
                ocsp: None,
            };
            crate::tls::certs::load(&files, std::time::SystemTime::now())
                .map_err(|reason| invalid(key("cert"), reason))?;
            Some(files)
        }
        (Some(_), None) => return Err(invalid(key("key"), "a client `cert` needs its `key`")),
        (None, Some(_)) => return Err(invalid(key("cert"), "a client `key` needs its `cert`")),
    };
    Ok(UpstreamTls {
        sni,
        verify,
        ca,
        client_cert,
    })
}

/// `protocol`: `"http/1.1"`, `"h2c"` (HTTP/2 without TLS) or `"h2"` (HTTP/2
/// by ALPN over the group's `[tls]`).
pub(super) fn validate_protocol(
    name: &str,
    group: &raw::RawUpstream,
) -> Result<UpstreamProtocol, ConfigError> {
    let key = format!("upstreams.{name}.protocol");
    match (group.protocol.as_deref(), group.tls.is_some()) {
        (None | Some("http/1.1"), _) => Ok(UpstreamProtocol::Http1),
        (Some("h2c"), false) | (Some("h2"), true) => Ok(UpstreamProtocol::Http2),
        (Some("h2c"), true) => Err(invalid(
            key,
            "h2c is HTTP/2 without TLS; with [tls] use \"h2\"",
        )),
        (Some("h2"), false) => Err(invalid(
            key,
            "h2 is HTTP/2 over TLS: add [upstreams.NAME.tls], or use \"h2c\"",
        )),
        (Some(other), _) => Err(invalid(
            key,
            format!("`{other}` is not one of \"http/1.1\", \"h2c\", \"h2\""),
        )),
    }
}
