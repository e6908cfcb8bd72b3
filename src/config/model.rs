//! The validated configuration's types: what the rest of the gateway reads
//! (re-exported from `config`), with their defaults and the few rules that
//! belong to a value itself (an address range's match, an admin token's check).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{invalid, ConfigError};

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
    /// Terminate TLS on this listener.
    pub tls: Option<ListenerTls>,
    /// Answer every request on this (plain) listener with a redirect to
    /// `https://` on this port.
    pub redirect_https: Option<u16>,
    /// Offer HTTP/2 by ALPN (`h2`, preferred over `http/1.1`) on a TLS listener.
    pub http2: bool,
    /// Serve HTTP/2 with prior knowledge (`h2c`) on a plain listener, beside HTTP/1.1.
    pub h2c: bool,
}

impl ListenerConfig {
    /// A plain listener on `address` with every default.
    pub fn new(address: SocketAddr) -> ListenerConfig {
        ListenerConfig {
            address,
            backlog: 4096,
            tls: None,
            redirect_https: None,
            http2: true,
            h2c: false,
        }
    }
}

/// `tls = { certificates = [...] }` on a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    /// Chosen by SNI; the first is the default.
    pub certificates: Vec<CertificateFiles>,
}

/// One certificate: its PEM chain (leaf first), its PEM private key and an
/// optional DER OCSP response to staple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ocsp: Option<PathBuf>,
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
    /// Buffers in each worker's provided-buffer ring (io_uring; 0: none):
    /// a connection waiting for a request takes one only when bytes come.
    pub recv_buffers: u16,
    /// Buffers (of `upstream_recv_buffer_size`) in each worker's ring for
    /// plain upstream connections (io_uring; 0: none): a pooled
    /// connection's receive stays armed, holding no buffer until the server
    /// sends.
    pub upstream_recv_buffers: u16,
    /// Bytes of each buffer of that ring: the most one receive of a
    /// response takes, so a large body is relayed in pieces of this size.
    pub upstream_recv_buffer_size: usize,
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
            recv_buffers: 256,
            upstream_recv_buffers: 64,
            upstream_recv_buffer_size: 64 * 1024,
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
    /// How long an upgraded connection (a WebSocket tunnel) may pass no
    /// byte either way before both sides are closed.
    pub tunnel_idle: Duration,
}

impl Timeouts {
    /// Every timeout with its key under `[timeouts]`.
    pub fn named(&self) -> [(&'static str, Duration); 10] {
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
            ("tunnel_idle", self.tunnel_idle),
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
            tunnel_idle: Duration::from_secs(3600),
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
    /// `X-Request-Id`: the client's (if well-formed) or a new one,
    /// forwarded to the upstream and returned with the response.
    pub request_id: bool,
    /// Add a `Via` header to requests and responses.
    pub via: bool,
    pub via_name: String,
    pub x_forwarded_for: ForwardedFor,
    pub x_forwarded_proto: bool,
    pub x_forwarded_host: bool,
    /// `Forwarded` (RFC 7239): `for`, `proto` and `host` of this hop.
    pub forwarded: ForwardedFor,
}

impl Default for ProxyHeaders {
    fn default() -> Self {
        ProxyHeaders {
            request_id: true,
            via: true,
            via_name: "ringgate".to_string(),
            x_forwarded_for: ForwardedFor::Append,
            x_forwarded_proto: true,
            x_forwarded_host: true,
            forwarded: ForwardedFor::Append,
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
    /// The servers speak TLS; `None`: plain HTTP.
    pub tls: Option<UpstreamTls>,
    /// HTTP/1.1 (pooled connections) or HTTP/2 (one multiplexed connection
    /// per server and worker).
    pub protocol: UpstreamProtocol,
}

/// `[upstreams.NAME] protocol`: what the group's servers speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    /// HTTP/2: with prior knowledge on a plain connection (`h2c`), or by
    /// ALPN `h2` over the group's TLS (`h2`).
    Http2,
}

/// `[upstreams.NAME.tls]`: how the gateway connects to a TLS group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// Sent as SNI and checked against the certificate; `None`: the
    /// server's IP address is checked (no SNI is sent).
    pub sni: Option<String>,
    /// Check the server's certificate chain and name (default: on).
    pub verify: bool,
    /// PEM roots to trust; `None`: the system's roots.
    pub ca: Option<PathBuf>,
    /// A client certificate and key to present (mutual TLS).
    pub client_cert: Option<CertificateFiles>,
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
    /// Requests of this route are written to the access log (when it is on).
    pub access_log: bool,
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
    /// Lower-case protocols a request may upgrade to (`Upgrade`, RFC 9110
    /// section 7.8): the connection becomes a tunnel once the upstream
    /// answers `101`. Default: `websocket`.
    pub upgrade: Vec<String>,
    /// Requests per key over time (429 past it); `None`: no limit.
    pub rate_limit: Option<crate::route::rate_limit::RateLimit>,
    /// An AI gateway route (`[routes.ai]`): OpenAI-compatible requests to
    /// LLM providers, not forwarded to `upstream` as they are.
    pub ai: Option<std::sync::Arc<super::ai::AiRoute>>,
}

/// Default of `routes.request_buffering`, as nginx's `client_body_buffer_size` order of magnitude.
pub const DEFAULT_REQUEST_BUFFERING: u64 = 64 * 1024;
/// Largest `routes.request_buffering`: a buffered body is held in memory.
pub const MAX_REQUEST_BUFFERING: u64 = 64 << 20;

impl RouteConfig {
    /// The route stores responses: HTTP ones (`[routes.cache]`) or AI
    /// completions (a model's `cache_ttl`).
    pub fn caches(&self) -> bool {
        self.cache.is_some()
            || self
                .ai
                .as_ref()
                .is_some_and(|ai| ai.models.iter().any(|m| m.cache.is_some()))
    }

    /// A route matching every request, sending it to `upstream` unchanged:
    /// no cache, retries, auth, header edits or timeouts of its own. The
    /// starting point for routes built in code.
    pub fn to(name: &str, upstream: usize) -> RouteConfig {
        RouteConfig {
            access_log: true,
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
            upgrade: vec!["websocket".to_string()],
            rate_limit: None,
            ai: None,
        }
    }
}

/// A route's own upstream timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RouteTimeouts {
    pub upstream_connect: Option<Duration>,
    pub upstream_response: Option<Duration>,
    pub upstream_read: Option<Duration>,
    pub tunnel_idle: Option<Duration>,
}

/// The upstream timeouts a request runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamTimeouts {
    pub connect: Duration,
    /// From the request sent to the response head.
    pub response: Duration,
    /// Between two pieces of a response body.
    pub read: Duration,
    /// An upgraded connection with no byte either way for this long is closed.
    pub tunnel_idle: Duration,
}

impl RouteTimeouts {
    pub fn resolve(&self, defaults: &Timeouts) -> UpstreamTimeouts {
        UpstreamTimeouts {
            connect: self.upstream_connect.unwrap_or(defaults.upstream_connect),
            response: self.upstream_response.unwrap_or(defaults.upstream_response),
            read: self.upstream_read.unwrap_or(defaults.upstream_read),
            tunnel_idle: self.tunnel_idle.unwrap_or(defaults.tunnel_idle),
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
        authorization.is_some_and(|v| crate::route::auth::bearer_is(v.as_bytes(), token.as_bytes()))
    }
}

/// The admin API's default address.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";
