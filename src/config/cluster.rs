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
    /// Connect and command timeout.
    pub timeout: Duration,
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
    if !redis.starts_with("redis://") {
        return Err(invalid(
            "cluster.redis",
            format!("\"{redis}\": expected a redis:// URL"),
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
    Ok(Some(ClusterConfig {
        redis,
        node_id,
        stream,
        stream_max,
        timeout,
    }))
}
