//! Configuration: the TOML file is read into [`raw`] structs (serde, unknown
//! keys refused), then validated into the domain [`Config`] used by the rest
//! of the program. Every error names the file, the key and the reason, so a
//! bad file is refused at start rather than misbehaving later.
//!
//! The same [`Config`] is built by the quick command-line mode
//! (`ringgate proxy`) and by tests, without any file.

pub mod raw;
pub mod units;

use std::collections::HashMap;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use raw::RawConfig;

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

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        file: None,
        key: key.into(),
        reason: reason.into(),
    }
}

/// Which io driver the workers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverChoice {
    /// io_uring when the kernel allows it, else epoll.
    Auto,
    IoUring,
    Epoll,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    pub address: SocketAddr,
    pub backlog: u32,
}

/// Settings each worker holds for itself; may differ per core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PerCoreConfig {
    /// Client connections a worker serves at once; at the cap it closes its
    /// oldest idle connection for a newcomer, or stops accepting.
    pub max_connections: usize,
    /// Client connections one address may hold on a worker (`None`: no cap).
    pub max_connections_per_ip: Option<usize>,
    /// Idle keep-alive connections kept per upstream server by each worker.
    pub upstream_pool_size: usize,
    /// An idle pooled upstream connection older than this is closed.
    pub upstream_idle_timeout: Duration,
    /// Initial read buffer of a client connection (grows up to the head limit).
    pub client_buffer_size: usize,
    /// Read buffer of an upstream connection.
    pub upstream_buffer_size: usize,
    /// Bytes of responses this worker's cache shard holds; 0 disables caching.
    pub cache_size: u64,
    /// Largest response body the shard stores (a route may set a smaller one).
    pub cache_max_object: u64,
}

impl Default for PerCoreConfig {
    fn default() -> Self {
        PerCoreConfig {
            max_connections: 10_000,
            max_connections_per_ip: None,
            upstream_pool_size: 128,
            upstream_idle_timeout: Duration::from_secs(60),
            client_buffer_size: 1024,
            upstream_buffer_size: 32 * 1024,
            cache_size: 64 << 20,
            cache_max_object: 4 << 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkersConfig {
    /// How many workers; `None` means one per core the process may run on.
    pub count: Option<usize>,
    /// CPUs to pin workers to, in order; `None` means the CPUs the process may use.
    pub cpus: Option<Vec<usize>>,
    pub pin: bool,
    pub driver: DriverChoice,
    pub ring_entries: u32,
    /// Kernel-side submission polling; its thread idles after `sqpoll_idle`.
    pub sqpoll: Option<Duration>,
    pub per_core: PerCoreConfig,
    /// Overrides keyed by core (the CPU a worker is pinned to, or the worker
    /// index when pinning is off).
    pub overrides: HashMap<usize, PerCoreConfig>,
}

impl Default for WorkersConfig {
    fn default() -> Self {
        WorkersConfig {
            count: None,
            cpus: None,
            pin: true,
            driver: DriverChoice::Auto,
            ring_entries: 1024,
            sqpoll: None,
            per_core: PerCoreConfig::default(),
            overrides: HashMap::new(),
        }
    }
}

impl WorkersConfig {
    /// The per-core settings of the worker on `core`.
    pub fn for_core(&self, core: usize) -> &PerCoreConfig {
        self.overrides.get(&core).unwrap_or(&self.per_core)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    /// Deadline for a whole request head, from its first byte.
    pub client_header: Duration,
    /// Longest wait for the next piece of a request body.
    pub client_body: Duration,
    /// Longest wait for the client to take response bytes.
    pub client_send: Duration,
    /// How long an idle keep-alive client connection is kept.
    pub keepalive: Duration,
    pub upstream_connect: Duration,
    /// From the request sent to the response head received.
    pub upstream_response: Duration,
    /// Longest wait for the next piece of a response body.
    pub upstream_read: Duration,
    pub upstream_send: Duration,
    /// How long a graceful shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
}

impl Timeouts {
    /// Every timeout with its key under `[timeouts]`.
    pub fn named(&self) -> [(&'static str, Duration); 9] {
        [
            ("client_header", self.client_header),
            ("client_body", self.client_body),
            ("client_send", self.client_send),
            ("keepalive", self.keepalive),
            ("upstream_connect", self.upstream_connect),
            ("upstream_response", self.upstream_response),
            ("upstream_read", self.upstream_read),
            ("upstream_send", self.upstream_send),
            ("shutdown_grace", self.shutdown_grace),
        ]
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            client_header: Duration::from_secs(60),
            client_body: Duration::from_secs(60),
            client_send: Duration::from_secs(60),
            keepalive: Duration::from_secs(75),
            upstream_connect: Duration::from_secs(5),
            upstream_response: Duration::from_secs(60),
            upstream_read: Duration::from_secs(60),
            upstream_send: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest request head (request line and headers); above it, 431.
    pub max_request_head: usize,
    /// Most header fields in a request; above it, 431.
    pub max_headers: usize,
    /// Largest request body; above it, 413. `None` means no limit.
    pub max_request_body: Option<u64>,
    /// Largest response head accepted from an upstream; above it, 502.
    pub max_response_head: usize,
    /// Requests served on one client connection before it is closed.
    pub max_keepalive_requests: u64,
}

/// Hard cap on `max_headers`: the parser keeps its header slots on the stack.
pub const MAX_HEADERS_CAP: usize = 512;

/// Most header fields a route adds to a request (`set_request_headers`,
/// and separately the claims of `[routes.auth]`).
pub const MAX_ROUTE_FIELDS: usize = 64;

/// Most client connections one worker may be configured for.
pub const MAX_CONNECTIONS: usize = 1_000_000;

/// Most idle connections kept per upstream server by one worker.
pub const MAX_POOL_SIZE: usize = 100_000;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_head: 32 * 1024,
            max_headers: 100,
            max_request_body: Some(1 << 20),
            max_response_head: 64 * 1024,
            max_keepalive_requests: 10_000,
        }
    }
}

/// How `X-Forwarded-For` is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardedFor {
    /// Add the client address after any value the client sent.
    Append,
    /// Replace any client-sent value with the client address.
    Replace,
    /// Leave the header as the client sent it.
    Off,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyHeaders {
    /// Add a `Via` header to requests and responses.
    pub via: bool,
    pub via_name: String,
    pub x_forwarded_for: ForwardedFor,
    pub x_forwarded_proto: bool,
    pub x_forwarded_host: bool,
}

impl Default for ProxyHeaders {
    fn default() -> Self {
        ProxyHeaders {
            via: true,
            via_name: "ringgate".to_string(),
            x_forwarded_for: ForwardedFor::Append,
            x_forwarded_proto: true,
            x_forwarded_host: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub address: SocketAddr,
    pub weight: u32,
}

/// How a group spreads requests over its servers (see `upstream::balancer`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum BalancePolicy {
    /// Round-robin; smooth weighted round-robin when weights differ.
    #[default]
    RoundRobin,
    /// Weighted random.
    Random,
    /// Power of two random choices on outstanding requests.
    LeastRequest,
    /// Power of two random choices on latency (peak EWMA) times outstanding requests.
    PeakEwma,
    /// Consistent hashing (ketama) on a key of the request.
    Hash(HashKey),
}

/// What `balance = "hash"` hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    ClientIp,
    Path,
    /// A request header (lower-case name).
    Header(String),
    /// A cookie.
    Cookie(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamGroup {
    pub name: String,
    pub servers: Vec<ServerConfig>,
    pub balance: BalancePolicy,
    /// Circuit breaker: requests a worker may have in flight to the whole group (0: no cap).
    pub max_pending: u32,
    /// Circuit breaker: requests a worker may have in flight to one server (0: no cap).
    pub max_pending_per_server: u32,
    /// Passive health checking; `None`: servers are never ejected.
    pub outlier: Option<OutlierPolicy>,
    /// Active health checks; `None`: no probes, every server counts as healthy.
    pub health: Option<HealthCheck>,
    /// Sticky sessions; `None`: the policy alone picks.
    pub sticky: Option<StickyCookie>,
    /// Servers that change at run time; `None`: `servers` is fixed at start.
    pub discovery: Option<Discovery>,
}

/// Where a group's servers come from while it runs (`upstream::discovery`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    /// The group's `servers` entries, names kept unresolved.
    pub entries: Vec<ServerEntry>,
    /// Names are resolved again this often; `None`: only at start.
    pub resolve_every: Option<Duration>,
    /// A file of `host:port [weight]` lines, watched for changes.
    pub servers_file: Option<PathBuf>,
    pub watch_every: Duration,
    pub resolver: ResolverSettings,
}

/// `[resolver]`: how upstream names become addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolverSettings {
    /// Names answered from this hosts-style file before anything else.
    pub hosts_file: Option<PathBuf>,
    /// Asked directly (so TTLs are known); empty: the system resolver.
    pub nameservers: Vec<SocketAddr>,
    /// Per query to one nameserver.
    pub timeout: Duration,
}

impl Default for ResolverSettings {
    fn default() -> Self {
        ResolverSettings {
            hosts_file: None,
            nameservers: Vec::new(),
            timeout: Duration::from_secs(2),
        }
    }
}

/// One configured server: a fixed address, or a name whose every address
/// becomes a server.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum ServerEntry {
    Fixed(SocketAddr, u32),
    Name(String, u16, u32),
}

impl ServerEntry {
    /// `text` is `ip:port`, `[ipv6]:port` or `name:port`.
    pub fn parse(text: &str, weight: u32) -> Result<ServerEntry, String> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(ServerEntry::Fixed(addr, weight));
        }
        let Some((host, port)) = text.rsplit_once(':') else {
            return Err(format!("`{text}` needs a port, e.g. \"{text}:8080\""));
        };
        let port = port
            .parse::<u16>()
            .map_err(|_| format!("`{text}`: `{port}` is not a port"))?;
        if host.is_empty() || host.contains(['[', ']', ' ', '/']) {
            return Err(format!("`{text}` is not host:port"));
        }
        Ok(ServerEntry::Name(host.to_string(), port, weight))
    }
}

/// Sticky sessions: a signed cookie names the server a client stays on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StickyCookie {
    pub cookie: String,
    /// HMAC key; the same on every gateway node that must agree.
    pub secret: String,
    /// `Max-Age`; `None`: a session cookie.
    pub ttl: Option<Duration>,
    pub path: String,
    pub http_only: bool,
    pub secure: bool,
    pub same_site: String,
}

/// Active health checks of a group's servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub method: String,
    pub path: String,
    /// Host header of the probe (default: the server's address).
    pub host: Option<String>,
    /// Statuses that count as healthy (default: any 2xx or 3xx).
    pub expect_status: Vec<u16>,
    /// Text the response body must contain.
    pub expect_body: Option<String>,
    pub interval: Duration,
    /// Up to this much is added to each interval, at random, so probes do not align.
    pub jitter: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    /// The worker that runs the probes.
    pub worker: usize,
    /// With every server down: send to all of them anyway (`true`), or answer 503.
    pub fail_open: bool,
}

/// Passive health: eject a server after consecutive failures, for a back-off
/// that doubles with each ejection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierPolicy {
    /// Consecutive connect failures, resets, timeouts or 5xx that eject a server.
    pub consecutive_failures: u32,
    /// First ejection's length; each further one doubles it.
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    /// At most this share of the group's servers is ejected at once.
    pub max_ejected_percent: u32,
}

/// How a route matches the request's host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    Any,
    /// Lower-case host, no port.
    Exact(String),
    /// `*.example.com`, stored as `.example.com`: matches any subdomain, not the apex.
    Suffix(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderMatch {
    /// Lower-case header name.
    pub name: String,
    /// Exact value to match; `None` means the header only has to be present.
    pub value: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    pub name: String,
    pub host: HostMatch,
    pub path_prefix: String,
    /// Upper-case method names; empty means any method.
    pub methods: Vec<String>,
    pub header: Option<HeaderMatch>,
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
    /// Replaces `path_prefix` at the start of the forwarded path.
    pub rewrite_prefix: Option<String>,
    /// Headers set on the forwarded request (replacing any the client sent).
    pub set_request_headers: Vec<(String, String)>,
    /// Lower-case names of headers removed from the forwarded request.
    pub remove_request_headers: Vec<String>,
    /// The route's cache policy; `None` means the route does not cache.
    pub cache: Option<crate::cache::policy::CachePolicy>,
    /// Retries to other servers; `None`: only the dead-pooled-connection retry.
    pub retry: Option<RetryPolicy>,
    /// Session tokens verified at the edge; `None`: no verification.
    pub auth: Option<AuthPolicy>,
    /// Upstream timeouts of this route; `None` fields use `[timeouts]`.
    pub timeouts: RouteTimeouts,
    /// Request bodies up to this size are read whole before a server is
    /// picked (0: never); larger ones stream.
    pub request_buffering: u64,
}

/// Default of `routes.request_buffering`, as nginx's `client_body_buffer_size` order of magnitude.
pub const DEFAULT_REQUEST_BUFFERING: u64 = 64 * 1024;
/// Largest `routes.request_buffering`: a buffered body is held in memory.
pub const MAX_REQUEST_BUFFERING: u64 = 64 << 20;

impl RouteConfig {
    /// A route matching every request, sending it to `upstream` unchanged:
    /// no cache, retries, auth, header edits or timeouts of its own. The
    /// starting point for routes built in code.
    pub fn to(name: &str, upstream: usize) -> RouteConfig {
        RouteConfig {
            name: name.to_string(),
            host: HostMatch::Any,
            path_prefix: "/".to_string(),
            methods: Vec::new(),
            header: None,
            upstream,
            rewrite_prefix: None,
            set_request_headers: Vec::new(),
            remove_request_headers: Vec::new(),
            cache: None,
            retry: None,
            auth: None,
            timeouts: RouteTimeouts::default(),
            request_buffering: DEFAULT_REQUEST_BUFFERING,
        }
    }
}

/// A route's own upstream timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RouteTimeouts {
    pub upstream_connect: Option<Duration>,
    pub upstream_response: Option<Duration>,
    pub upstream_read: Option<Duration>,
}

/// The upstream timeouts a request runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamTimeouts {
    pub connect: Duration,
    /// From the request sent to the response head.
    pub response: Duration,
    /// Between two pieces of a response body.
    pub read: Duration,
}

impl RouteTimeouts {
    pub fn resolve(&self, defaults: &Timeouts) -> UpstreamTimeouts {
        UpstreamTimeouts {
            connect: self.upstream_connect.unwrap_or(defaults.upstream_connect),
            response: self.upstream_response.unwrap_or(defaults.upstream_response),
            read: self.upstream_read.unwrap_or(defaults.upstream_read),
        }
    }
}

/// Where a route reads its session token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer <token>`.
    Bearer,
    /// A cookie.
    Cookie(String),
}

/// HS256 session tokens verified by the gateway (see `route::auth`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthPolicy {
    /// `(kid, secret)`: several keys allow rotation.
    pub keys: Vec<(String, String)>,
    pub source: TokenSource,
    /// Refuse requests without a token (401); otherwise they pass, without identity.
    pub required: bool,
    /// Header carrying the verified `sub` claim upstream.
    pub subject_header: String,
    /// `(claim, header)` pairs forwarded upstream.
    pub claims: Vec<(String, String)>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// Refuse tokens without `exp`.
    pub require_exp: bool,
}

impl AuthPolicy {
    /// True for headers the gateway sets from a verified token: never taken from the client.
    pub fn owns_header(&self, name: &str) -> bool {
        name.eq_ignore_ascii_case(&self.subject_header)
            || self
                .claims
                .iter()
                .any(|(_, h)| name.eq_ignore_ascii_case(h))
    }
}

/// When and how often a failed request is sent to another server.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub attempts: u32,
    /// Retry when the connection could not be made (nothing was sent: safe for any method).
    pub on_connect_failure: bool,
    /// Retry an idempotent request when the server closed or reset before any response byte.
    pub on_reset: bool,
    /// Retry an idempotent request answered with one of these statuses.
    pub statuses: Vec<u16>,
    /// Retries may be at most this share of the route's recent requests (per worker).
    pub budget: f64,
    /// Retries always allowed per second whatever the budget (per worker).
    pub min_per_second: u32,
}

impl Eq for RetryPolicy {}

/// An address range: `10.0.0.0/8`, `::1/128`, or a bare address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    pub network: std::net::IpAddr,
    pub prefix: u8,
}

impl IpRange {
    pub fn parse(text: &str) -> Result<IpRange, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let network: std::net::IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("`{text}` is not an address or CIDR range"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{text}` has a bad prefix length"))?,
        };
        Ok(IpRange { network, prefix })
    }

    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        // An IPv4 client on a dual-stack socket appears as ::ffff:a.b.c.d.
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map(std::net::IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.network, ip) {
            (std::net::IpAddr::V4(n), std::net::IpAddr::V4(a)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.prefix)
                };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (std::net::IpAddr::V6(n), std::net::IpAddr::V6(a)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.prefix)
                };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// Settings shared by every caching route (`[cache]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    /// Lower-case names of response headers whose values tag an entry.
    pub tag_headers: Vec<String>,
    /// Sources allowed to send `PURGE` on the proxy listener.
    pub purge_allow: Vec<IpRange>,
    /// Offer stored responses to every worker (one logical cache across cores).
    pub share: bool,
    /// Messages each worker's bus queue holds.
    pub bus_capacity: usize,
    /// How long a purge or a write's invalidation waits for every worker.
    pub invalidation_timeout: Duration,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            tag_headers: vec!["surrogate-key".into(), "cache-tag".into()],
            purge_allow: vec![
                IpRange::parse("127.0.0.0/8").expect("valid"),
                IpRange::parse("::1").expect("valid"),
            ],
            share: true,
            bus_capacity: crate::bus::DEFAULT_CAPACITY,
            invalidation_timeout: Duration::from_secs(1),
        }
    }
}

/// The admin API listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// When set, every admin request needs `Authorization: Bearer <token>`.
    pub token: Option<String>,
}

impl AdminConfig {
    /// An admin API reachable from other hosts must ask for a token: without
    /// one, anyone who reaches it can read the counters and purge the cache.
    pub fn check(&self) -> Result<(), ConfigError> {
        let loopback = match self.listen.ip() {
            std::net::IpAddr::V4(ip) => ip.is_loopback(),
            std::net::IpAddr::V6(ip) => {
                ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
            }
        };
        if !loopback && self.token.is_none() {
            return Err(invalid(
                "admin.listen",
                format!(
                    "{} is not a loopback address and the admin API has no token: anyone who can reach it could purge the cache. \
                     Set `token = \"<a long random secret>\"` under [admin] (quick mode: --admin-token or RINGGATE_ADMIN_TOKEN), \
                     or listen on 127.0.0.1",
                    self.listen
                ),
            ));
        }
        Ok(())
    }

    /// Whether an `Authorization` value carries the token (compared in
    /// constant time, so the answer's timing does not leak the token).
    pub fn authorizes(&self, authorization: Option<&str>) -> bool {
        let Some(token) = self.token.as_deref() else {
            return true;
        };
        let Some(given) = authorization.and_then(|v| {
            v.get(..7)
                .filter(|p| p.eq_ignore_ascii_case("bearer "))
                .map(|_| v[7..].trim())
        }) else {
            return false;
        };
        let (a, b) = (given.as_bytes(), token.as_bytes());
        let mut diff = a.len() ^ b.len();
        for i in 0..a.len().max(b.len()) {
            diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0));
        }
        diff == 0
    }
}

/// The admin API's default address.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";

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
            listeners: vec![ListenerConfig {
                address: listen,
                backlog: 4096,
            }],
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
    let mut listeners = Vec::new();
    for (i, l) in raw.listeners.iter().enumerate() {
        let address = parse_socket_addr(&l.address)
            .map_err(|reason| invalid(format!("listeners[{i}].address"), reason))?;
        if listeners
            .iter()
            .any(|x: &ListenerConfig| x.address == address)
        {
            return Err(invalid(
                format!("listeners[{i}].address"),
                format!("{address} is listed twice"),
            ));
        }
        let backlog = l.backlog.unwrap_or(4096);
        if backlog == 0 {
            return Err(invalid(
                format!("listeners[{i}].backlog"),
                "must be at least 1",
            ));
        }
        listeners.push(ListenerConfig { address, backlog });
    }
    if listeners.is_empty() {
        return Err(invalid(
            "listeners",
            "at least one [[listeners]] entry with an address is required",
        ));
    }

    let workers = validate_workers(&raw.workers)?;
    let timeouts = validate_timeouts(&raw.timeouts)?;
    let limits = validate_limits(&raw.limits)?;
    let proxy = validate_proxy(&raw.proxy)?;
    let paths = validate_paths(&raw.paths)?;
    // Checked even when no group uses discovery, so a typo is never silent.
    validate_resolver(&raw.resolver)?;

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
                    servers.push(validate_server(&key, value)?);
                }
                (servers, None)
            }
            Some(d) => validate_discovery(name, group, d, &raw.resolver)?,
        };
        let balance = validate_balance(name, group)?;
        upstreams.push(UpstreamGroup {
            name: name.clone(),
            servers,
            balance,
            max_pending: group.max_pending.unwrap_or(0),
            max_pending_per_server: group.max_pending_per_server.unwrap_or(0),
            outlier: match &group.outlier {
                None => None,
                Some(o) => Some(validate_outlier(name, o)?),
            },
            health: match &group.health {
                None => None,
                Some(h) => Some(validate_health(name, h)?),
            },
            sticky: match &group.sticky {
                None => None,
                Some(s) => Some(validate_sticky(name, s)?),
            },
            discovery,
        });
    }

    let mut routes = Vec::new();
    for (i, r) in raw.routes.iter().enumerate() {
        routes.push(validate_route(i, r, &upstreams, paths)?);
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
    };
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

fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
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

fn validate_workers(raw: &raw::RawWorkers) -> Result<WorkersConfig, ConfigError> {
    let defaults = WorkersConfig::default();
    let count = match &raw.count {
        None => None,
        Some(toml::Value::String(s)) if s == "auto" => None,
        Some(toml::Value::Integer(n)) if *n >= 1 && *n <= 1024 => Some(*n as usize),
        Some(toml::Value::Integer(_)) => {
            return Err(invalid(
                "workers.count",
                "must be between 1 and 1024, or \"auto\"",
            ))
        }
        Some(other) => {
            return Err(invalid(
                "workers.count",
                format!("expected \"auto\" or a number, found `{other}`"),
            ))
        }
    };
    if let Some(cpus) = &raw.cpus {
        if cpus.is_empty() {
            return Err(invalid(
                "workers.cpus",
                "an empty list pins to nothing; remove the key to use every CPU",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for cpu in cpus {
            if !seen.insert(cpu) {
                return Err(invalid(
                    "workers.cpus",
                    format!("CPU {cpu} is listed twice"),
                ));
            }
        }
        if let Some(n) = count {
            if n > cpus.len() {
                return Err(invalid(
                    "workers.count",
                    format!("{n} workers but only {} CPUs in workers.cpus", cpus.len()),
                ));
            }
        }
    }
    let driver = match raw.driver.as_deref() {
        None | Some("auto") => DriverChoice::Auto,
        Some("io_uring") => DriverChoice::IoUring,
        Some("epoll") => DriverChoice::Epoll,
        Some(other) => {
            return Err(invalid(
                "workers.driver",
                format!("`{other}` is not a driver (use \"auto\", \"io_uring\" or \"epoll\")"),
            ))
        }
    };
    let ring_entries = raw.ring_entries.unwrap_or(defaults.ring_entries);
    if !(256..=32768).contains(&ring_entries) || !ring_entries.is_power_of_two() {
        return Err(invalid(
            "workers.ring_entries",
            "must be a power of two between 256 and 32768",
        ));
    }
    let sqpoll = if raw.sqpoll.unwrap_or(false) {
        Some(
            raw.sqpoll_idle
                .map(|d| d.0)
                .unwrap_or(Duration::from_millis(1000)),
        )
    } else {
        if raw.sqpoll_idle.is_some() {
            return Err(invalid(
                "workers.sqpoll_idle",
                "only applies with `sqpoll = true`",
            ));
        }
        None
    };
    let per_core = apply_per_core(
        "workers",
        &PerCoreConfig::default(),
        PerCoreFields {
            max_connections: raw.max_connections,
            max_connections_per_ip: raw.max_connections_per_ip,
            upstream_pool_size: raw.upstream_pool_size,
            upstream_idle_timeout: raw.upstream_idle_timeout.map(|d| d.0),
            client_buffer_size: raw.client_buffer_size.map(|s| s.0),
            upstream_buffer_size: raw.upstream_buffer_size.map(|s| s.0),
            cache_size: raw.cache_size.map(|s| s.0),
            cache_max_object: raw.cache_max_object.map(|s| s.0),
        },
    )?;
    let mut overrides = HashMap::new();
    for (i, o) in raw.overrides.iter().enumerate() {
        let key = format!("workers.override[{i}]");
        if overrides.contains_key(&o.core) {
            return Err(invalid(
                format!("{key}.core"),
                format!("core {} already has an override", o.core),
            ));
        }
        let settings = apply_per_core(
            &key,
            &per_core,
            PerCoreFields {
                max_connections: o.max_connections,
                max_connections_per_ip: o.max_connections_per_ip,
                upstream_pool_size: o.upstream_pool_size,
                upstream_idle_timeout: o.upstream_idle_timeout.map(|d| d.0),
                client_buffer_size: o.client_buffer_size.map(|s| s.0),
                upstream_buffer_size: o.upstream_buffer_size.map(|s| s.0),
                cache_size: o.cache_size.map(|s| s.0),
                cache_max_object: o.cache_max_object.map(|s| s.0),
            },
        )?;
        overrides.insert(o.core, settings);
    }
    Ok(WorkersConfig {
        count,
        cpus: raw.cpus.clone(),
        pin: raw.pin.unwrap_or(true),
        driver,
        ring_entries,
        sqpoll,
        per_core,
        overrides,
    })
}

struct PerCoreFields {
    max_connections: Option<usize>,
    max_connections_per_ip: Option<usize>,
    upstream_pool_size: Option<usize>,
    upstream_idle_timeout: Option<Duration>,
    client_buffer_size: Option<u64>,
    upstream_buffer_size: Option<u64>,
    cache_size: Option<u64>,
    cache_max_object: Option<u64>,
}

fn apply_per_core(
    prefix: &str,
    base: &PerCoreConfig,
    fields: PerCoreFields,
) -> Result<PerCoreConfig, ConfigError> {
    let mut out = base.clone();
    if let Some(n) = fields.max_connections {
        if n == 0 || n > MAX_CONNECTIONS {
            return Err(invalid(
                format!("{prefix}.max_connections"),
                format!("must be between 1 and {MAX_CONNECTIONS}"),
            ));
        }
        out.max_connections = n;
    }
    if let Some(n) = fields.max_connections_per_ip {
        // 0 turns the cap off.
        if n > MAX_CONNECTIONS {
            return Err(invalid(
                format!("{prefix}.max_connections_per_ip"),
                format!("must be at most {MAX_CONNECTIONS} (0: no cap)"),
            ));
        }
        out.max_connections_per_ip = (n > 0).then_some(n);
    }
    if let Some(n) = fields.upstream_pool_size {
        if n > MAX_POOL_SIZE {
            return Err(invalid(
                format!("{prefix}.upstream_pool_size"),
                format!("must be at most {MAX_POOL_SIZE}"),
            ));
        }
        out.upstream_pool_size = n;
    }
    if let Some(d) = fields.upstream_idle_timeout {
        if d.is_zero() {
            return Err(invalid(
                format!("{prefix}.upstream_idle_timeout"),
                "must be longer than zero (set upstream_pool_size = 0 to disable pooling)",
            ));
        }
        out.upstream_idle_timeout = d;
    }
    for (name, value, slot) in [
        (
            "client_buffer_size",
            fields.client_buffer_size,
            &mut out.client_buffer_size,
        ),
        (
            "upstream_buffer_size",
            fields.upstream_buffer_size,
            &mut out.upstream_buffer_size,
        ),
    ] {
        if let Some(v) = value {
            if !(1024..=16 << 20).contains(&v) {
                return Err(invalid(
                    format!("{prefix}.{name}"),
                    "must be between 1KiB and 16MiB",
                ));
            }
            *slot = v as usize;
        }
    }
    if let Some(size) = fields.cache_size {
        out.cache_size = size;
    }
    if let Some(size) = fields.cache_max_object {
        if size == 0 {
            return Err(invalid(
                format!("{prefix}.cache_max_object"),
                "must be larger than zero",
            ));
        }
        out.cache_max_object = size;
    }
    Ok(out)
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
    if let Some(mode) = raw.x_forwarded_for.as_deref() {
        p.x_forwarded_for = match mode {
            "append" => ForwardedFor::Append,
            "replace" => ForwardedFor::Replace,
            "off" => ForwardedFor::Off,
            other => {
                return Err(invalid(
                    "proxy.x_forwarded_for",
                    format!("`{other}` is not a mode (use \"append\", \"replace\" or \"off\")"),
                ))
            }
        };
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

fn validate_balance(name: &str, group: &raw::RawUpstream) -> Result<BalancePolicy, ConfigError> {
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

fn validate_sticky(name: &str, raw: &raw::RawSticky) -> Result<StickyCookie, ConfigError> {
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

fn validate_health(name: &str, raw: &raw::RawHealth) -> Result<HealthCheck, ConfigError> {
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

fn validate_outlier(name: &str, raw: &raw::RawOutlier) -> Result<OutlierPolicy, ConfigError> {
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

fn validate_server(key: &str, value: &toml::Value) -> Result<ServerConfig, ConfigError> {
    let (address, weight) = server_text(key, value)?;
    let address = parse_socket_addr(address).map_err(|reason| invalid(key.to_string(), reason))?;
    Ok(ServerConfig { address, weight })
}

/// A group whose servers change at run time: its entries kept as written,
/// and the servers they stand for at start (names resolved now, so a name
/// that does not resolve is refused here as it is without discovery).
fn validate_discovery(
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

fn validate_resolver(raw: &raw::RawResolver) -> Result<ResolverSettings, ConfigError> {
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

fn validate_route(
    i: usize,
    r: &raw::RawRoute,
    upstreams: &[UpstreamGroup],
    paths: crate::http::target::PathRules,
) -> Result<RouteConfig, ConfigError> {
    let key = |field: &str| format!("routes[{i}].{field}");
    let upstream = upstreams
        .iter()
        .position(|g| g.name == r.upstream)
        .ok_or_else(|| {
            let known: Vec<&str> = upstreams.iter().map(|g| g.name.as_str()).collect();
            invalid(
                key("upstream"),
                format!(
                    "no upstream group named `{}` (defined: {})",
                    r.upstream,
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            )
        })?;
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
    Ok(RouteConfig {
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
    if let Some(t) = c.coalesce_timeout {
        policy.coalesce_timeout = t.0;
    }
    policy.invalidate_on_write = c.invalidate_on_write.unwrap_or(true);
    Ok(policy)
}

fn is_hop_by_hop_or_framing(name: &str) -> bool {
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

/// RFC 9110 `tchar`.
pub fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[[listeners]]
address = "127.0.0.1:8080"
[upstreams.app]
servers = ["127.0.0.1:9000"]
[[routes]]
upstream = "app"
"#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse(MINIMAL).unwrap();
        assert_eq!(c.listeners[0].address, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.workers.count, None);
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.routes[0].host, HostMatch::Any);
        assert_eq!(c.routes[0].path_prefix, "/");
    }

    #[test]
    fn shipped_config_is_valid() {
        Config::parse(SHIPPED_CONFIG).unwrap();
    }

    #[test]
    fn unknown_key_is_named() {
        let text = MINIMAL.replace("[[routes]]", "[[routes]]\npath_prefx = \"/a\"");
        let e = Config::parse(&text).unwrap_err();
        assert!(e.key.starts_with("routes"), "{e}");
        assert!(e.reason.contains("path_prefx"), "{e}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let text = MINIMAL.replace(
            "address = \"127.0.0.1:8080\"",
            "address = \"127.0.0.1:8080\"\nbacklog = \"lots\"",
        );
        let e = Config::parse(&text).unwrap_err();
        assert_eq!(e.key, "listeners[0].backlog", "{e}");
    }

    #[test]
    fn route_to_missing_upstream_is_refused() {
        let text = MINIMAL.replace("upstream = \"app\"", "upstream = \"nope\"");
        let e = Config::parse(&text).unwrap_err();
        assert_eq!(e.key, "routes[0].upstream");
        assert!(e.reason.contains("nope") && e.reason.contains("app"), "{e}");
    }

    #[test]
    fn bad_duration_names_the_key() {
        let text = format!("{MINIMAL}\n[timeouts]\nkeepalive = \"forever\"\n");
        let e = Config::parse(&text).unwrap_err();
        assert_eq!(e.key, "timeouts.keepalive", "{e}");
    }

    #[test]
    fn wildcard_host_becomes_suffix() {
        let text = MINIMAL.replace(
            "upstream = \"app\"",
            "upstream = \"app\"\nhost = \"*.Example.com\"",
        );
        let c = Config::parse(&text).unwrap();
        assert_eq!(c.routes[0].host, HostMatch::Suffix(".example.com".into()));
    }

    #[test]
    fn per_core_override_inherits_defaults() {
        let text = format!(
            "{MINIMAL}\n[workers]\nmax_connections = 500\n[[workers.override]]\ncore = 1\nupstream_pool_size = 4\n"
        );
        let c = Config::parse(&text).unwrap();
        assert_eq!(c.workers.for_core(0).max_connections, 500);
        assert_eq!(c.workers.for_core(1).max_connections, 500);
        assert_eq!(c.workers.for_core(1).upstream_pool_size, 4);
    }

    #[test]
    fn weighted_server_table() {
        let text = MINIMAL.replace(
            "servers = [\"127.0.0.1:9000\"]",
            "servers = [{ address = \"127.0.0.1:9000\", weight = 3 }, \"127.0.0.1:9001\"]",
        );
        let c = Config::parse(&text).unwrap();
        assert_eq!(c.upstreams[0].servers[0].weight, 3);
        assert_eq!(c.upstreams[0].servers[1].weight, 1);
    }

    #[test]
    fn bad_server_weight_names_the_key() {
        let text = MINIMAL.replace(
            "servers = [\"127.0.0.1:9000\"]",
            "servers = [{ address = \"127.0.0.1:9000\", weight = 0 }]",
        );
        let e = Config::parse(&text).unwrap_err();
        assert_eq!(e.key, "upstreams.app.servers[0].weight", "{e}");
    }

    #[test]
    fn worker_count_word_must_be_auto() {
        let text = format!("{MINIMAL}\n[workers]\ncount = \"many\"\n");
        let e = Config::parse(&text).unwrap_err();
        assert_eq!(e.key, "workers.count", "{e}");
    }

    #[test]
    fn route_cache_table_enables_caching() {
        let text = format!(
            "{MINIMAL}\n[routes.cache]\nkey_headers = [\"X-Tenant\"]\nignore_query_params = [\"utm_source\"]\ndefault_ttl = \"10s\"\n"
        );
        let c = Config::parse(&text).unwrap();
        let policy = c.routes[0].cache.as_ref().expect("cache on");
        assert_eq!(policy.key_headers, vec!["x-tenant"]);
        assert_eq!(policy.default_ttl, Some(Duration::from_secs(10)));
        assert!(
            Config::parse(MINIMAL).unwrap().routes[0].cache.is_none(),
            "off unless configured"
        );
    }

    #[test]
    fn route_cache_bad_value_names_the_key() {
        let text = format!("{MINIMAL}\n[routes.cache]\nauthorization = \"sometimes\"\n");
        let e = Config::parse(&text).unwrap_err();
        assert_eq!(e.key, "routes[0].cache.authorization", "{e}");
    }

    #[test]
    fn admin_listens_on_the_default_address_unless_disabled() {
        let c = Config::parse(MINIMAL).unwrap();
        assert_eq!(
            c.admin.unwrap().listen,
            DEFAULT_ADMIN_LISTEN.parse().unwrap()
        );
        let off = Config::parse(&format!("{MINIMAL}\n[admin]\nenabled = false\n")).unwrap();
        assert!(off.admin.is_none());
    }

    #[test]
    fn purge_allow_takes_cidr_ranges() {
        let c = Config::parse(&format!(
            "{MINIMAL}\n[cache]\npurge_allow = [\"10.0.0.0/8\", \"::1\"]\n"
        ))
        .unwrap();
        assert!(c.cache.purge_allow[0].contains("10.1.2.3".parse().unwrap()));
        assert!(!c.cache.purge_allow[0].contains("11.0.0.1".parse().unwrap()));
        assert!(c.cache.purge_allow[1].contains("::1".parse().unwrap()));
        let e = Config::parse(&format!(
            "{MINIMAL}\n[cache]\npurge_allow = [\"10.0.0.0/33\"]\n"
        ))
        .unwrap_err();
        assert_eq!(e.key, "cache.purge_allow");
    }

    #[test]
    fn balance_policies_parse() {
        let text = MINIMAL.replace(
            "servers = [\"127.0.0.1:9000\"]",
            "servers = [\"127.0.0.1:9000\"]\nbalance = \"hash\"\nhash_on = \"cookie:session\"",
        );
        let c = Config::parse(&text).unwrap();
        assert_eq!(
            c.upstreams[0].balance,
            BalancePolicy::Hash(HashKey::Cookie("session".into()))
        );
        let bad = MINIMAL.replace(
            "servers = [\"127.0.0.1:9000\"]",
            "servers = [\"127.0.0.1:9000\"]\nbalance = \"fastest\"",
        );
        assert_eq!(
            Config::parse(&bad).unwrap_err().key,
            "upstreams.app.balance"
        );
        let missing = MINIMAL.replace(
            "servers = [\"127.0.0.1:9000\"]",
            "servers = [\"127.0.0.1:9000\"]\nbalance = \"hash\"",
        );
        assert_eq!(
            Config::parse(&missing).unwrap_err().key,
            "upstreams.app.hash_on"
        );
    }

    #[test]
    fn syntax_error_is_reported() {
        let e = Config::parse("[[listeners]\naddress = 1").unwrap_err();
        assert!(e.reason.contains("TOML"), "{e}");
    }

    #[test]
    fn managed_headers_cannot_be_set() {
        let text = MINIMAL.replace(
            "upstream = \"app\"",
            "upstream = \"app\"\nset_request_headers = { \"Transfer-Encoding\" = \"gzip\" }",
        );
        let e = Config::parse(&text).unwrap_err();
        assert!(e.key.contains("set_request_headers"), "{e}");
    }

    #[test]
    fn unbounded_durations_and_sizes_are_refused_naming_the_key() {
        let huge = "9223372036854775807";
        for (table, line, key) in [
            (
                "[timeouts]",
                format!("client_header = {huge}"),
                "timeouts.client_header",
            ),
            (
                "[timeouts]",
                "keepalive = \"400d\"".to_string(),
                "timeouts.keepalive",
            ),
            (
                "[limits]",
                format!("max_request_body = {huge}"),
                "limits.max_request_body",
            ),
            (
                "[workers]",
                format!("cache_size = {huge}"),
                "workers.cache_size",
            ),
            (
                "[workers]",
                format!("upstream_idle_timeout = {huge}"),
                "workers.upstream_idle_timeout",
            ),
            (
                "[workers]",
                "max_connections = 2000000".to_string(),
                "workers.max_connections",
            ),
            (
                "[workers]",
                "upstream_pool_size = 2000000".to_string(),
                "workers.upstream_pool_size",
            ),
            (
                "[cache]",
                format!("invalidation_timeout = {huge}"),
                "cache.invalidation_timeout",
            ),
        ] {
            let text = format!("{MINIMAL}{table}\n{line}\n");
            let e = Config::parse(&text).unwrap_err();
            assert_eq!(e.key, key, "{line}: {e}");
            assert!(
                e.reason.contains("range")
                    || e.reason.contains("between")
                    || e.reason.contains("at most"),
                "{line}: {e}"
            );
        }
        let route = MINIMAL.replace(
            "upstream = \"app\"",
            &format!("upstream = \"app\"\n[routes.cache]\nmax_ttl = {huge}"),
        );
        assert_eq!(
            Config::parse(&route).unwrap_err().key,
            "routes[0].cache.max_ttl"
        );
    }

    #[test]
    fn a_public_admin_listener_needs_a_token() {
        let text = format!("{MINIMAL}[admin]\nlisten = \"0.0.0.0:9901\"\n");
        let e = Config::parse(&text).unwrap_err();
        assert_eq!(e.key, "admin.listen", "{e}");
        assert!(e.reason.contains("token"), "{e}");
        let with_token = format!(
            "{MINIMAL}[admin]\nlisten = \"0.0.0.0:9901\"\ntoken = \"0123456789abcdef0123\"\n"
        );
        assert!(Config::parse(&with_token).is_ok());
        let loopback = format!("{MINIMAL}[admin]\nlisten = \"[::1]:9901\"\n");
        assert!(Config::parse(&loopback).is_ok());
    }

    #[test]
    fn the_admin_token_is_a_bearer_token() {
        let admin = AdminConfig {
            listen: "127.0.0.1:1".parse().unwrap(),
            token: Some("s3cret-token".into()),
        };
        assert!(admin.authorizes(Some("Bearer s3cret-token")));
        assert!(admin.authorizes(Some("bearer s3cret-token")));
        for wrong in [
            None,
            Some("Bearer s3cret"),
            Some("Bearer s3cret-token2"),
            Some("s3cret-token"),
            Some("Bearer "),
        ] {
            assert!(!admin.authorizes(wrong), "{wrong:?}");
        }
    }

    #[test]
    fn configs_built_in_code_are_bounded_too() {
        let mut c = Config::quick(
            "127.0.0.1:0".parse().unwrap(),
            vec!["127.0.0.1:9".parse().unwrap()],
        );
        c.timeouts.client_header = Duration::from_secs(u64::MAX / 2);
        assert_eq!(c.check().unwrap_err().key, "timeouts.client_header");
    }
}
