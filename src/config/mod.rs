//! Configuration: the TOML file is read into [`raw`] structs (serde, unknown
//! keys refused), then validated into the domain [`Config`] used by the rest
//! of the program. Every error names the file, the key and the reason, so a
//! bad file is refused at start rather than misbehaving later.
//!
//! The same [`Config`] is built by the quick command-line mode
//! (`ringgate proxy`) and by tests, without any file.

mod access_log;
pub mod ai;
mod cluster;
mod http2;
mod listeners;
mod model;
pub mod raw;
mod routes;
pub mod units;
mod upstreams;
mod workers;

use std::collections::HashMap;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use model::*;
use raw::RawConfig;

pub use access_log::{AccessLogConfig, LogFormat, LogTarget};
pub use cluster::{ClusterConfig, ClusterTls};
pub use http2::Http2Config;

/// A config that cannot be used, with where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the config came from, when there was one.
    pub file: Option<PathBuf>,
    /// The dotted key path, e.g. `routes[2].upstream`.
    pub key: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(file) => write!(f, "{}: ", file.display())?,
            None => f.write_str("config: ")?,
        }
        if self.key.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "key `{}`: {}", self.key, self.reason)
        }
    }
}

impl std::error::Error for ConfigError {}

pub(crate) fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        file: None,
        key: key.into(),
        reason: reason.into(),
    }
}

/// The validated configuration the gateway runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub source: Option<PathBuf>,
    pub listeners: Vec<ListenerConfig>,
    pub workers: WorkersConfig,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub proxy: ProxyHeaders,
    /// How request paths are brought to their canonical form (`[paths]`).
    pub paths: crate::http::target::PathRules,
    pub upstreams: Vec<UpstreamGroup>,
    pub routes: Vec<RouteConfig>,
    pub cache: CacheSettings,
    /// `None`: no admin API.
    pub admin: Option<AdminConfig>,
    /// Limits of HTTP/2 client connections (`[http2]`).
    pub http2: Http2Config,
    /// `[access_log]`.
    pub access_log: AccessLogConfig,
    /// `[cluster]`: `None`, a node on its own.
    pub cluster: Option<ClusterConfig>,
}

/// The config `ringgate run` uses when no `--config` is given.
pub const DEFAULT_CONFIG_PATH: &str = "config/ringgate.toml";

/// The shipped default config, built into the binary for `ringgate demo`.
pub const SHIPPED_CONFIG: &str = include_str!("../../config/ringgate.toml");

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: Some(path.to_path_buf()),
            key: String::new(),
            reason: format!("cannot read the file: {e}"),
        })?;
        Config::parse(&text)
            .map_err(|mut e| {
                e.file = Some(path.to_path_buf());
                e
            })
            .map(|mut c| {
                c.source = Some(path.to_path_buf());
                c
            })
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let deserializer = toml::Deserializer::parse(text).map_err(|e| {
            invalid(
                String::new(),
                format!("not valid TOML{}: {}", at_line(text, e.span()), e.message()),
            )
        })?;
        let raw: RawConfig = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { String::new() } else { key };
            let inner = e.into_inner();
            invalid(
                key,
                format!("{}{}", inner.message(), at_line(text, inner.span())),
            )
        })?;
        validate(raw)
    }

    /// A config for one listener proxying everything to `servers` (quick mode).
    pub fn quick(listen: SocketAddr, servers: Vec<SocketAddr>) -> Config {
        Config {
            source: None,
            listeners: vec![ListenerConfig::new(listen)],
            workers: WorkersConfig::default(),
            timeouts: Timeouts::default(),
            limits: Limits::default(),
            proxy: ProxyHeaders::default(),
            paths: Default::default(),
            upstreams: vec![UpstreamGroup {
                balance: BalancePolicy::RoundRobin,
                max_pending: 0,
                max_pending_per_server: 0,
                outlier: None,
                health: None,
                sticky: None,
                discovery: None,
                tls: None,
                protocol: UpstreamProtocol::Http1,
                name: "default".to_string(),
                servers: servers
                    .into_iter()
                    .map(|address| ServerConfig { address, weight: 1 })
                    .collect(),
            }],
            routes: vec![RouteConfig {
                cache: Some(crate::cache::policy::CachePolicy::default()),
                ..RouteConfig::to("default", 0)
            }],
            cache: CacheSettings::default(),
            admin: None,
            http2: Http2Config::default(),
            access_log: AccessLogConfig::default(),
            cluster: None,
        }
    }

    /// Re-checks a config built in code (quick mode, tests) by the same rules as a file.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.listeners.is_empty() {
            return Err(invalid("listeners", "at least one listener is required"));
        }
        if self.workers.count == Some(0) {
            return Err(invalid("workers.count", "must be at least 1"));
        }
        // Configs built in code skip the file's unit parsing: bound them here too,
        // so no deadline on the request path can overflow.
        for (name, d) in self.timeouts.named() {
            if d > units::MAX_DURATION {
                return Err(invalid(
                    format!("timeouts.{name}"),
                    "is out of range (at most 365 days)",
                ));
            }
        }
        for (i, route) in self.routes.iter().enumerate() {
            let t = &route.timeouts;
            for (name, d) in [
                ("upstream_connect", t.upstream_connect),
                ("upstream_response", t.upstream_response),
                ("upstream_read", t.upstream_read),
            ] {
                if d.is_some_and(|d| d > units::MAX_DURATION) {
                    return Err(invalid(
                        format!("routes[{i}].timeouts.{name}"),
                        "is out of range (at most 365 days)",
                    ));
                }
            }
        }
        let per_core =
            std::iter::once(&self.workers.per_core).chain(self.workers.overrides.values());
        for p in per_core {
            if p.upstream_idle_timeout > units::MAX_DURATION {
                return Err(invalid(
                    "workers.upstream_idle_timeout",
                    "is out of range (at most 365 days)",
                ));
            }
            if p.max_connections == 0 || p.max_connections > MAX_CONNECTIONS {
                return Err(invalid(
                    "workers.max_connections",
                    format!("must be between 1 and {MAX_CONNECTIONS}"),
                ));
            }
        }
        if self.limits.max_headers == 0 || self.limits.max_headers > MAX_HEADERS_CAP {
            return Err(invalid(
                "limits.max_headers",
                format!("must be between 1 and {MAX_HEADERS_CAP}"),
            ));
        }
        if let Some(admin) = &self.admin {
            admin.check()?;
        }
        for (i, group) in self.upstreams.iter().enumerate() {
            if group.servers.is_empty() {
                return Err(invalid(
                    format!("upstreams.{}.servers", group.name),
                    format!("upstream group #{i} has no servers"),
                ));
            }
        }
        for (i, route) in self.routes.iter().enumerate() {
            // The forwarded head must stay parseable for the cache: the
            // client's fields plus these stay under twice the field cap.
            if route.set_request_headers.len() > MAX_ROUTE_FIELDS {
                return Err(invalid(
                    format!("routes[{i}].set_request_headers"),
                    format!("at most {MAX_ROUTE_FIELDS} headers"),
                ));
            }
            if route
                .auth
                .as_ref()
                .is_some_and(|a| a.claims.len() > MAX_ROUTE_FIELDS)
            {
                return Err(invalid(
                    format!("routes[{i}].auth.claims"),
                    format!("at most {MAX_ROUTE_FIELDS} claims"),
                ));
            }
            if route.upstream >= self.upstreams.len() {
                return Err(invalid(
                    format!("routes[{i}].upstream"),
                    "names no upstream group",
                ));
            }
        }
        Ok(())
    }
}

fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    let listeners = listeners::validate_listeners(&raw.listeners)?;

    let workers = workers::validate_workers(&raw.workers)?;
    let timeouts = validate_timeouts(&raw.timeouts)?;
    let limits = validate_limits(&raw.limits)?;
    let proxy = validate_proxy(&raw.proxy)?;
    let paths = validate_paths(&raw.paths)?;
    // Checked even when no group uses discovery, so a typo is never silent.
    upstreams::validate_resolver(&raw.resolver)?;

    let mut upstreams = Vec::new();
    for (name, group) in &raw.upstreams {
        let key = format!("upstreams.{name}.servers");
        let has_file = group
            .discovery
            .as_ref()
            .is_some_and(|d| d.servers_file.is_some());
        if group.servers.is_empty() && !has_file {
            return Err(invalid(key, "an upstream group needs at least one server"));
        }
        let (servers, discovery) = match &group.discovery {
            None => {
                let mut servers = Vec::new();
                for (j, value) in group.servers.iter().enumerate() {
                    let key = format!("{key}[{j}]");
                    servers.push(upstreams::validate_server(&key, value)?);
                }
                (servers, None)
            }
            Some(d) => upstreams::validate_discovery(name, group, d, &raw.resolver)?,
        };
        let balance = upstreams::validate_balance(name, group)?;
        let protocol = upstreams::validate_protocol(name, group)?;
        upstreams.push(UpstreamGroup {
            protocol,
            name: name.clone(),
            servers,
            balance,
            max_pending: group.max_pending.unwrap_or(0),
            max_pending_per_server: group.max_pending_per_server.unwrap_or(0),
            outlier: match &group.outlier {
                None => None,
                Some(o) => Some(upstreams::validate_outlier(name, o)?),
            },
            health: match &group.health {
                None => None,
                Some(h) => Some(upstreams::validate_health(name, h)?),
            },
            sticky: match &group.sticky {
                None => None,
                Some(s) => Some(upstreams::validate_sticky(name, s)?),
            },
            discovery,
            tls: match &group.tls {
                None => None,
                Some(t) => Some(upstreams::validate_tls(name, t)?),
            },
        });
    }

    let mut routes = Vec::new();
    for (i, r) in raw.routes.iter().enumerate() {
        routes.push(routes::validate_route(i, r, &upstreams, paths)?);
    }
    if routes.is_empty() {
        return Err(invalid(
            "routes",
            "at least one [[routes]] entry is required (a route with only `upstream` matches everything)",
        ));
    }

    let cache = validate_cache_settings(&raw.cache)?;
    let admin = validate_admin(raw.admin.as_ref())?;
    if let Some(admin) = &admin {
        // Port 0 asks the kernel for a free port, so two of them never collide.
        let taken = admin.listen.port() != 0;
        if taken && listeners.iter().any(|l| l.address == admin.listen) {
            return Err(invalid(
                "admin.listen",
                format!("{} is also a proxy listener", admin.listen),
            ));
        }
    }
    let first_port = listeners.first().map(|l| l.address.port());
    let config = Config {
        source: None,
        listeners,
        workers,
        timeouts,
        limits,
        proxy,
        paths,
        upstreams,
        routes,
        cache,
        admin,
        http2: http2::validate_http2(&raw.http2)?,
        access_log: access_log::validate_access_log(&raw.access_log)?,
        cluster: cluster::validate_cluster(raw.cluster.as_ref(), || {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "node".to_string());
            match first_port {
                Some(port) => format!("{host}:{port}"),
                None => host,
            }
        })?,
    };
    if config.cluster.is_none() {
        let cluster_limit = config.routes.iter().position(|r| {
            r.rate_limit
                .as_ref()
                .is_some_and(|l| l.scope == crate::route::rate_limit::Scope::Cluster)
        });
        if let Some(i) = cluster_limit {
            return Err(invalid(
                format!("routes[{i}].rate_limit.scope"),
                "`cluster` needs a [cluster] section (the Redis the nodes share)",
            ));
        }
        let cluster_budget = config.routes.iter().position(|r| {
            r.ai.as_ref()
                .is_some_and(|ai| ai.limit_scope == crate::route::rate_limit::Scope::Cluster)
        });
        if let Some(i) = cluster_budget {
            return Err(invalid(
                format!("routes[{i}].ai.limit_scope"),
                "`cluster` needs a [cluster] section (the Redis the nodes share)",
            ));
        }
    }
    config.check()?;
    Ok(config)
}

fn at_line(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(span) => {
            let line = text.as_bytes()[..span.start.min(text.len())]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1;
            format!(" (line {line})")
        }
        None => String::new(),
    }
}

pub(crate) fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if !text.contains(':') {
        return Err(format!("`{text}` needs a port, e.g. \"{text}:8080\""));
    }
    // Names are resolved once, here at start; periodic re-resolution is for upstream discovery.
    match text.to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("`{text}` resolved to no address")),
        Err(e) => Err(format!("`{text}` is not an address (host:port): {e}")),
    }
}

fn validate_timeouts(raw: &raw::RawTimeouts) -> Result<Timeouts, ConfigError> {
    let mut t = Timeouts::default();
    for (name, value, slot) in [
        ("client_header", raw.client_header, &mut t.client_header),
        ("client_body", raw.client_body, &mut t.client_body),
        ("client_send", raw.client_send, &mut t.client_send),
        ("keepalive", raw.keepalive, &mut t.keepalive),
        (
            "upstream_connect",
            raw.upstream_connect,
            &mut t.upstream_connect,
        ),
        (
            "upstream_response",
            raw.upstream_response,
            &mut t.upstream_response,
        ),
        ("upstream_read", raw.upstream_read, &mut t.upstream_read),
        ("upstream_send", raw.upstream_send, &mut t.upstream_send),
        ("shutdown_grace", raw.shutdown_grace, &mut t.shutdown_grace),
        ("tunnel_idle", raw.tunnel_idle, &mut t.tunnel_idle),
    ] {
        if let Some(d) = value {
            if d.0.is_zero() && name != "shutdown_grace" {
                return Err(invalid(
                    format!("timeouts.{name}"),
                    "must be longer than zero",
                ));
            }
            *slot = d.0;
        }
    }
    Ok(t)
}

fn validate_limits(raw: &raw::RawLimits) -> Result<Limits, ConfigError> {
    let mut l = Limits::default();
    if let Some(size) = raw.max_request_head {
        if !(1024..=1 << 20).contains(&size.0) {
            return Err(invalid(
                "limits.max_request_head",
                "must be between 1KiB and 1MiB",
            ));
        }
        l.max_request_head = size.0 as usize;
    }
    if let Some(size) = raw.max_response_head {
        if !(1024..=1 << 20).contains(&size.0) {
            return Err(invalid(
                "limits.max_response_head",
                "must be between 1KiB and 1MiB",
            ));
        }
        l.max_response_head = size.0 as usize;
    }
    if let Some(n) = raw.max_headers {
        if n == 0 || n > MAX_HEADERS_CAP {
            return Err(invalid(
                "limits.max_headers",
                format!("must be between 1 and {MAX_HEADERS_CAP}"),
            ));
        }
        l.max_headers = n;
    }
    if let Some(size) = raw.max_request_body {
        // 0 means unlimited, as in nginx's client_max_body_size.
        l.max_request_body = if size.0 == 0 { None } else { Some(size.0) };
    }
    if let Some(n) = raw.max_keepalive_requests {
        if n == 0 {
            return Err(invalid(
                "limits.max_keepalive_requests",
                "must be at least 1",
            ));
        }
        l.max_keepalive_requests = n;
    }
    Ok(l)
}

fn validate_proxy(raw: &raw::RawProxy) -> Result<ProxyHeaders, ConfigError> {
    let mut p = ProxyHeaders::default();
    if let Some(v) = raw.request_id {
        p.request_id = v;
    }
    if let Some(v) = raw.via {
        p.via = v;
    }
    if let Some(name) = &raw.via_name {
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(invalid(
                "proxy.via_name",
                "must be a non-empty token (letters, digits, !#$%&'*+-.^_`|~)",
            ));
        }
        p.via_name = name.clone();
    }
    let mode = |key: &str, value: &str| match value {
        "append" => Ok(ForwardedFor::Append),
        "replace" => Ok(ForwardedFor::Replace),
        "off" => Ok(ForwardedFor::Off),
        other => Err(invalid(
            format!("proxy.{key}"),
            format!("`{other}` is not a mode (use \"append\", \"replace\" or \"off\")"),
        )),
    };
    if let Some(value) = raw.x_forwarded_for.as_deref() {
        p.x_forwarded_for = mode("x_forwarded_for", value)?;
    }
    if let Some(value) = raw.forwarded.as_deref() {
        p.forwarded = mode("forwarded", value)?;
    }
    if let Some(v) = raw.x_forwarded_proto {
        p.x_forwarded_proto = v;
    }
    if let Some(v) = raw.x_forwarded_host {
        p.x_forwarded_host = v;
    }
    Ok(p)
}

fn validate_paths(raw: &raw::RawPaths) -> Result<crate::http::target::PathRules, ConfigError> {
    use crate::http::target::{EscapedSlashes, PathRules};
    let mut rules = PathRules::default();
    if let Some(merge) = raw.merge_slashes {
        rules.merge_slashes = merge;
    }
    if let Some(mode) = raw.escaped_slashes.as_deref() {
        rules.escaped_slashes = match mode {
            "reject" => EscapedSlashes::Reject,
            "keep" => EscapedSlashes::Keep,
            other => {
                return Err(invalid(
                    "paths.escaped_slashes",
                    format!("`{other}` is not a mode (use \"reject\" or \"keep\")"),
                ))
            }
        };
    }
    Ok(rules)
}

fn validate_cache_settings(raw: &raw::RawCacheSettings) -> Result<CacheSettings, ConfigError> {
    let mut c = CacheSettings::default();
    if let Some(headers) = &raw.tag_headers {
        c.tag_headers.clear();
        for h in headers {
            if h.is_empty() || !h.bytes().all(is_token_byte) {
                return Err(invalid(
                    "cache.tag_headers",
                    format!("`{h}` is not a header name"),
                ));
            }
            c.tag_headers.push(h.to_ascii_lowercase());
        }
    }
    if let Some(list) = &raw.purge_allow {
        c.purge_allow = list
            .iter()
            .map(|r| IpRange::parse(r))
            .collect::<Result<_, _>>()
            .map_err(|reason| invalid("cache.purge_allow", reason))?;
    }
    c.share = match raw.share.as_deref() {
        None | Some("all") => true,
        Some("isolated") => false,
        Some(other) => {
            return Err(invalid(
                "cache.share",
                format!("`{other}` is not a policy (use \"all\" or \"isolated\")"),
            ))
        }
    };
    if let Some(n) = raw.bus_capacity {
        if !(16..=1 << 20).contains(&n) {
            return Err(invalid(
                "cache.bus_capacity",
                "must be between 16 and 1048576",
            ));
        }
        c.bus_capacity = n;
    }
    if let Some(t) = raw.invalidation_timeout {
        if t.0.is_zero() {
            return Err(invalid(
                "cache.invalidation_timeout",
                "must be longer than zero",
            ));
        }
        c.invalidation_timeout = t.0;
    }
    Ok(c)
}

fn validate_admin(raw: Option<&raw::RawAdmin>) -> Result<Option<AdminConfig>, ConfigError> {
    let enabled = raw.and_then(|a| a.enabled).unwrap_or(true);
    if !enabled {
        return Ok(None);
    }
    let listen = raw
        .and_then(|a| a.listen.as_deref())
        .unwrap_or(DEFAULT_ADMIN_LISTEN);
    let listen = parse_socket_addr(listen).map_err(|reason| invalid("admin.listen", reason))?;
    let token = match raw.and_then(|a| a.token.clone()) {
        Some(t) if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()) => {
            return Err(invalid(
                "admin.token",
                "must be non-empty visible ASCII without spaces",
            ))
        }
        other => other,
    };
    Ok(Some(AdminConfig { listen, token }))
}

pub(crate) fn is_hop_by_hop_or_framing(name: &str) -> bool {
    const MANAGED: [&str; 9] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "host",
    ];
    MANAGED.iter().any(|m| m.eq_ignore_ascii_case(name))
}

pub use crate::http::headers::is_tchar as is_token_byte;

#[cfg(test)]
mod tests;
