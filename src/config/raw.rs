//! The config file exactly as written: serde structs that mirror the TOML,
//! with `deny_unknown_fields` everywhere so a misspelt key is an error, not a
//! silently ignored line. [`super::validate`] turns these into the domain config.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::units::{ByteSize, ConfigDuration};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub listeners: Vec<RawListener>,
    #[serde(default)]
    pub workers: RawWorkers,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub proxy: RawProxy,
    #[serde(default)]
    pub paths: RawPaths,
    #[serde(default)]
    pub upstreams: BTreeMap<String, RawUpstream>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    #[serde(default)]
    pub cache: RawCacheSettings,
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub resolver: RawResolver,
    #[serde(default)]
    pub http2: RawHttp2,
    #[serde(default)]
    pub access_log: RawAccessLog,
    pub cluster: Option<RawCluster>,
}

/// `[cluster]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub redis: Option<String>,
    pub node_id: Option<String>,
    pub stream: Option<String>,
    pub stream_max: Option<u64>,
    pub timeout: Option<ConfigDuration>,
    pub prefix: Option<String>,
    pub lease: Option<ConfigDuration>,
    pub shared_cache: Option<bool>,
    pub shared_cache_max: Option<ByteSize>,
    pub shared_cache_wait: Option<ConfigDuration>,
    pub ca: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
}

/// `[access_log]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    pub enabled: Option<bool>,
    pub path: Option<String>,
    pub format: Option<String>,
    pub sample: Option<f64>,
    pub buffer: Option<ByteSize>,
    pub flush: Option<ConfigDuration>,
    pub queue: Option<usize>,
}

/// `[cache]`: settings shared by every caching route.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCacheSettings {
    pub tag_headers: Option<Vec<String>>,
    pub purge_allow: Option<Vec<String>>,
    pub share: Option<String>,
    pub bus_capacity: Option<usize>,
    pub invalidation_timeout: Option<ConfigDuration>,
}

/// `[admin]`: the admin API listener.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub enabled: Option<bool>,
    pub listen: Option<String>,
    pub token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub address: String,
    pub backlog: Option<u32>,
    pub tls: Option<RawListenerTls>,
    /// `true` (port 443) or a port number.
    pub redirect_https: Option<toml::Value>,
    pub http2: Option<bool>,
    pub h2c: Option<bool>,
}

/// `[http2]`: limits of HTTP/2 client connections.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp2 {
    pub max_concurrent_streams: Option<u32>,
    pub initial_window_size: Option<ByteSize>,
    pub max_requests: Option<u64>,
    pub max_client_resets: Option<u32>,
    pub reset_window: Option<ConfigDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListenerTls {
    pub certificates: Vec<RawCertificate>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    pub cert: String,
    pub key: String,
    pub ocsp: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWorkers {
    /// `"auto"` or a positive integer; checked in validation for a clear message.
    pub count: Option<toml::Value>,
    pub cpus: Option<Vec<usize>>,
    pub pin: Option<bool>,
    pub driver: Option<String>,
    pub ring_entries: Option<u32>,
    pub recv_buffers: Option<u32>,
    pub upstream_recv_buffers: Option<u32>,
    pub upstream_recv_buffer_size: Option<ByteSize>,
    pub sqpoll: Option<bool>,
    pub sqpoll_idle: Option<ConfigDuration>,
    pub max_connections: Option<usize>,
    pub max_connections_per_ip: Option<usize>,
    pub upstream_pool_size: Option<usize>,
    pub upstream_idle_timeout: Option<ConfigDuration>,
    pub client_buffer_size: Option<ByteSize>,
    pub upstream_buffer_size: Option<ByteSize>,
    pub cache_size: Option<ByteSize>,
    pub cache_max_object: Option<ByteSize>,
    #[serde(default, rename = "override")]
    pub overrides: Vec<RawCoreOverride>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCoreOverride {
    pub core: usize,
    pub max_connections: Option<usize>,
    pub max_connections_per_ip: Option<usize>,
    pub upstream_pool_size: Option<usize>,
    pub upstream_idle_timeout: Option<ConfigDuration>,
    pub client_buffer_size: Option<ByteSize>,
    pub upstream_buffer_size: Option<ByteSize>,
    pub cache_size: Option<ByteSize>,
    pub cache_max_object: Option<ByteSize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub client_header: Option<ConfigDuration>,
    pub client_body: Option<ConfigDuration>,
    pub client_send: Option<ConfigDuration>,
    pub keepalive: Option<ConfigDuration>,
    pub upstream_connect: Option<ConfigDuration>,
    pub upstream_response: Option<ConfigDuration>,
    pub upstream_read: Option<ConfigDuration>,
    pub upstream_send: Option<ConfigDuration>,
    pub shutdown_grace: Option<ConfigDuration>,
    pub tunnel_idle: Option<ConfigDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_request_head: Option<ByteSize>,
    pub max_headers: Option<usize>,
    pub max_request_body: Option<ByteSize>,
    pub max_response_head: Option<ByteSize>,
    pub max_keepalive_requests: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxy {
    pub request_id: Option<bool>,
    pub via: Option<bool>,
    pub via_name: Option<String>,
    pub x_forwarded_for: Option<String>,
    pub x_forwarded_proto: Option<bool>,
    pub x_forwarded_host: Option<bool>,
    pub forwarded: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPaths {
    pub merge_slashes: Option<bool>,
    pub escaped_slashes: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// Each server is `"host:port"` or `{ address = "host:port", weight = 3 }`;
    /// kept as TOML values so validation can say precisely what is wrong.
    pub servers: Vec<toml::Value>,
    pub balance: Option<String>,
    pub hash_on: Option<String>,
    pub max_pending: Option<u32>,
    pub max_pending_per_server: Option<u32>,
    pub outlier: Option<RawOutlier>,
    pub health: Option<RawHealth>,
    pub sticky: Option<RawSticky>,
    pub discovery: Option<RawDiscovery>,
    pub tls: Option<RawUpstreamTls>,
    /// `"http/1.1"` (default), `"h2c"` or `"h2"` (over `tls`).
    pub protocol: Option<String>,
}

/// `[upstreams.NAME.tls]`: the group's servers speak TLS.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    pub sni: Option<String>,
    pub verify: Option<bool>,
    pub ca: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
}

/// `[upstreams.NAME.discovery]`: servers re-resolved and read from a file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDiscovery {
    pub resolve_every: Option<ConfigDuration>,
    pub servers_file: Option<String>,
    pub watch_every: Option<ConfigDuration>,
}

/// `[resolver]`: how upstream names are resolved.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawResolver {
    pub hosts_file: Option<String>,
    #[serde(default)]
    pub nameservers: Vec<String>,
    pub timeout: Option<ConfigDuration>,
}

/// `[upstreams.NAME.sticky]`: sticky sessions with a signed cookie.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSticky {
    pub cookie: Option<String>,
    pub secret: String,
    pub ttl: Option<ConfigDuration>,
    pub path: Option<String>,
    pub http_only: Option<bool>,
    pub secure: Option<bool>,
    pub same_site: Option<String>,
}

/// `[upstreams.NAME.health]`: active health checks.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub path: Option<String>,
    pub method: Option<String>,
    pub host: Option<String>,
    pub expect_status: Option<Vec<u16>>,
    pub expect_body: Option<String>,
    pub interval: Option<ConfigDuration>,
    pub jitter: Option<ConfigDuration>,
    pub timeout: Option<ConfigDuration>,
    pub healthy_threshold: Option<u32>,
    pub unhealthy_threshold: Option<u32>,
    pub worker: Option<usize>,
    pub when_all_down: Option<String>,
}

/// `[upstreams.NAME.outlier]`: passive health checking.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutlier {
    pub consecutive_failures: Option<u32>,
    pub base_ejection: Option<ConfigDuration>,
    pub max_ejection: Option<ConfigDuration>,
    pub max_ejected_percent: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Option<String>,
    pub access_log: Option<bool>,
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    pub methods: Option<Vec<String>>,
    pub header: Option<RawHeaderMatch>,
    /// Required, except on an AI route (its providers name their groups).
    pub upstream: Option<String>,
    pub rewrite_prefix: Option<String>,
    #[serde(default)]
    pub set_request_headers: BTreeMap<String, String>,
    #[serde(default)]
    pub remove_request_headers: Vec<String>,
    pub cache: Option<RawRouteCache>,
    pub retry: Option<RawRetry>,
    pub auth: Option<RawAuth>,
    pub timeouts: Option<RawRouteTimeouts>,
    pub request_buffering: Option<ByteSize>,
    pub upgrade: Option<Vec<String>>,
    pub rate_limit: Option<RawRateLimit>,
    pub ai: Option<super::ai::RawAi>,
}

/// `[routes.rate_limit]`: requests per second and burst, per key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub requests_per_second: f64,
    pub burst: Option<u32>,
    /// `ip` (default), `route`, `subject`, `header:NAME` or `cookie:NAME`.
    pub key: Option<String>,
    /// `node` (default) or `cluster`.
    pub scope: Option<String>,
    /// `local` (default), `open` or `closed`.
    pub fail: Option<String>,
}

/// `[routes.timeouts]`: upstream timeouts for this route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouteTimeouts {
    pub upstream_connect: Option<ConfigDuration>,
    pub upstream_response: Option<ConfigDuration>,
    pub upstream_read: Option<ConfigDuration>,
    pub tunnel_idle: Option<ConfigDuration>,
}

/// `[routes.auth]`: session tokens verified at the edge.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    pub keys: BTreeMap<String, String>,
    pub token: Option<String>,
    pub required: Option<bool>,
    pub subject_header: Option<String>,
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
    pub leeway: Option<ConfigDuration>,
    pub require_exp: Option<bool>,
}

/// `[routes.retry]`: retries to other servers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub attempts: Option<u32>,
    pub on: Option<Vec<String>>,
    pub budget: Option<f64>,
    pub min_per_second: Option<u32>,
}

/// `[routes.cache]`: present means the route caches (unless `enabled = false`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouteCache {
    pub enabled: Option<bool>,
    #[serde(default)]
    pub key_headers: Vec<String>,
    #[serde(default)]
    pub key_cookies: Vec<String>,
    pub ignore_query: Option<bool>,
    #[serde(default)]
    pub ignore_query_params: Vec<String>,
    pub default_ttl: Option<ConfigDuration>,
    pub max_ttl: Option<ConfigDuration>,
    pub ttl_override: Option<ConfigDuration>,
    pub authorization: Option<String>,
    pub store_set_cookie: Option<bool>,
    pub max_object_size: Option<ByteSize>,
    pub coalesce_timeout: Option<ConfigDuration>,
    pub invalidate_on_write: Option<bool>,
    pub targeted_fields: Option<Vec<String>>,
    pub forward_targeted_fields: Option<bool>,
    pub stale_on_error: Option<ConfigDuration>,
    pub store_206: Option<bool>,
    pub shared_max_size: Option<ByteSize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderMatch {
    pub name: String,
    pub value: Option<String>,
}
