//! `[cluster]`: the Redis that ties several gateway nodes together
//! (`crate::cluster`). Without it, a node is on its own.

use std::time::Duration;

use super::{invalid, raw, ConfigError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `redis://[user:password@]host:port[/db]`.
    pub redis: String,
    /// This node's name in the stream and in `/stats`.
    pub node_id: String,
    /// The Redis Stream invalidations go through.
    pub stream: String,
    /// Entries the stream keeps (`XADD ... MAXLEN ~`).
    pub stream_max: u64,
    /// Connect and command timeout; also how long a request waits for a
    /// cluster rate limit's or the shared cache's answer.
    pub timeout: Duration,
    /// What the other keys (rate limits, shared cache) start with.
    pub prefix: String,
    /// How long a node may hold requests of a cluster rate limit it took
    /// from Redis at once before using them (see `crate::cluster::limits`).
    pub lease: Duration,
    /// Stored responses are also written to Redis, and a miss asks Redis
    /// before the origin.
    pub shared_cache: bool,
    /// Largest response (head and body) written to the shared cache.
    pub shared_cache_max: u64,
    /// How long a miss waits for the shared cache before going to the origin.
    pub shared_cache_wait: Duration,
    /// With `rediss://`: the certificates Redis' is checked against (PEM;
    /// none: the system's roots), and this node's certificate and key for
    /// Redis servers that ask for one.
    pub tls: ClusterTls,
}

/// TLS to Redis (`rediss://`): PEM files, read when connecting.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterTls {
    pub ca: Option<std::path::PathBuf>,
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
}

impl ClusterConfig {
    /// The defaults, for a node named `node_id` on the Redis at `redis`.
    pub fn defaults(redis: &str, node_id: &str) -> ClusterConfig {
        ClusterConfig {
            redis: redis.to_string(),
            node_id: node_id.to_string(),
            stream: "ringgate:invalidations".to_string(),
            stream_max: 100_000,
            timeout: Duration::from_secs(1),
            prefix: "ringgate".to_string(),
            lease: Duration::from_millis(20),
            shared_cache: false,
            shared_cache_max: 1 << 20,
            shared_cache_wait: Duration::from_millis(50),
            tls: ClusterTls::default(),
        }
    }
}

pub(super) fn validate_cluster(
    raw: Option<&raw::RawCluster>,
    default_node: impl FnOnce() -> String,
) -> Result<Option<ClusterConfig>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let Some(redis) = raw.redis.clone() else {
        return Err(invalid(
            "cluster.redis",
            "required: the Redis URL (redis://host:port/db)",
        ));
    };
    let tls_url = redis.starts_with("rediss://");
    if !redis.starts_with("redis://") && !tls_url {
        return Err(invalid(
            "cluster.redis",
            format!("\"{redis}\": expected a redis:// or rediss:// URL"),
        ));
    }
    if redis.contains('#') {
        return Err(invalid(
            "cluster.redis",
            "no #fragment: certificate checks cannot be turned off",
        ));
    }
    let pem = |field: &str, path: &Option<String>, marker: &str| -> Result<_, ConfigError> {
        let Some(path) = path else { return Ok(None) };
        let key = format!("cluster.{field}");
        if !tls_url {
            return Err(invalid(key, "only with a rediss:// URL"));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| invalid(key.clone(), format!("cannot read {path}: {e}")))?;
        if !text.contains(marker) {
            return Err(invalid(key, format!("{path} holds no PEM {marker}")));
        }
        Ok(Some(std::path::PathBuf::from(path)))
    };
    let tls = ClusterTls {
        ca: pem("ca", &raw.ca, "CERTIFICATE")?,
        cert: pem("cert", &raw.cert, "CERTIFICATE")?,
        key: pem("key", &raw.key, "PRIVATE KEY")?,
    };
    if tls.cert.is_some() != tls.key.is_some() {
        return Err(invalid(
            "cluster.cert",
            "`cert` and `key` go together (this node's certificate for Redis)",
        ));
    }
    if let Err(e) = redis::Client::open(redis.as_str()) {
        return Err(invalid("cluster.redis", format!("\"{redis}\": {e}")));
    }
    let node_id = raw.node_id.clone().unwrap_or_else(default_node);
    if node_id.is_empty() || !node_id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            "cluster.node_id",
            "must be non-empty visible ASCII",
        ));
    }
    let stream = raw
        .stream
        .clone()
        .unwrap_or_else(|| "ringgate:invalidations".to_string());
    if stream.is_empty() {
        return Err(invalid("cluster.stream", "must not be empty"));
    }
    let stream_max = raw.stream_max.unwrap_or(100_000);
    if stream_max < 1000 {
        return Err(invalid("cluster.stream_max", "must be at least 1000"));
    }
    let timeout = raw.timeout.map_or(Duration::from_secs(1), |t| t.0);
    if timeout.is_zero() {
        return Err(invalid("cluster.timeout", "must be longer than 0"));
    }
    let prefix = raw.prefix.clone().unwrap_or_else(|| "ringgate".to_string());
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid("cluster.prefix", "must be non-empty visible ASCII"));
    }
    let lease = raw.lease.map_or(Duration::from_millis(20), |t| t.0);
    if lease > Duration::from_secs(10) {
        return Err(invalid("cluster.lease", "at most 10s"));
    }
    let shared_cache_max = raw.shared_cache_max.map_or(1 << 20, |b| b.0);
    if shared_cache_max > 512 << 20 {
        return Err(invalid(
            "cluster.shared_cache_max",
            "at most 512MiB (Redis's largest string)",
        ));
    }
    let shared_cache_wait = raw
        .shared_cache_wait
        .map_or(Duration::from_millis(50), |t| t.0);
    if shared_cache_wait.is_zero() {
        return Err(invalid(
            "cluster.shared_cache_wait",
            "must be longer than 0",
        ));
    }
    Ok(Some(ClusterConfig {
        redis,
        node_id,
        stream,
        stream_max,
        timeout,
        prefix,
        lease,
        shared_cache: raw.shared_cache.unwrap_or(false),
        shared_cache_max,
        shared_cache_wait,
        tls,
    }))
}
