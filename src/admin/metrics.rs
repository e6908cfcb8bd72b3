//! `GET /metrics`: the workers' `/stats` snapshots in Prometheus text
//! format. One table names each series, its help, its type and where its
//! value sits in a worker's snapshot; series are labelled by worker (and
//! by server for the per-server ones).

use serde_json::Value;

/// Metric name, help, type and where it is in a worker's snapshot.
const METRICS: &[(&str, &str, &str, &[&str])] = &[
    (
        "ringgate_connections_open",
        "Client connections open.",
        "gauge",
        &["connections"],
    ),
    (
        "ringgate_connections_accepted_total",
        "Client connections accepted.",
        "counter",
        &["accepted"],
    ),
    (
        "ringgate_requests_total",
        "Requests read from clients.",
        "counter",
        &["requests"],
    ),
    (
        "ringgate_client_errors_total",
        "Requests refused or failed on the client side.",
        "counter",
        &["client_errors"],
    ),
    (
        "ringgate_upstream_connects_total",
        "New upstream connections.",
        "counter",
        &["upstream_connects"],
    ),
    (
        "ringgate_upstream_reuses_total",
        "Requests sent on pooled upstream connections.",
        "counter",
        &["upstream_reuses"],
    ),
    (
        "ringgate_upstream_retries_total",
        "Requests retried after a dead pooled connection.",
        "counter",
        &["upstream_retries"],
    ),
    (
        "ringgate_upstream_errors_total",
        "Upstream failures (502/504).",
        "counter",
        &["upstream_errors"],
    ),
    (
        "ringgate_upstream_pool_idle",
        "Idle pooled upstream connections.",
        "gauge",
        &["upstream_pool_idle"],
    ),
    (
        "ringgate_upstream_pool_discarded_total",
        "Idle upstream connections discarded, when taken or by the periodic sweep: closed by the server or holding unasked bytes.",
        "counter",
        &["upstream_pool_discarded"],
    ),
    (
        "ringgate_recv_buffers_empty_total",
        "Client reads that found the worker's buffer ring empty (and read into a buffer of their own).",
        "counter",
        &["recv_buffers_empty"],
    ),
    (
        "ringgate_upstream_recv_buffers_empty_total",
        "Upstream reads that found the worker's upstream buffer ring empty (and read into a buffer of their own).",
        "counter",
        &["upstream_recv_buffers_empty"],
    ),
    (
        "ringgate_panics_total",
        "Connection tasks that panicked (contained).",
        "counter",
        &["panics"],
    ),
    (
        "ringgate_breaker_trips_total",
        "Requests refused with 503 by a circuit breaker.",
        "counter",
        &["breaker_trips"],
    ),
    (
        "ringgate_connection_cap_reached_total",
        "Times max_connections was reached with no idle connection to close.",
        "counter",
        &["connection_cap_reached"],
    ),
    (
        "ringgate_idle_connections_closed_for_room_total",
        "Idle client connections closed to make room at a connection cap.",
        "counter",
        &["idle_closed_for_room"],
    ),
    (
        "ringgate_connections_refused_per_ip_total",
        "Connections refused with 503 at max_connections_per_ip.",
        "counter",
        &["per_ip_refused"],
    ),
    (
        "ringgate_h2_connections_total",
        "HTTP/2 client connections.",
        "counter",
        &["h2_connections"],
    ),
    (
        "ringgate_h2_streams_total",
        "HTTP/2 streams (requests) accepted.",
        "counter",
        &["h2_streams"],
    ),
    (
        "ringgate_h2_client_resets_total",
        "HTTP/2 streams reset by the client while being served.",
        "counter",
        &["h2_client_resets"],
    ),
    (
        "ringgate_h2_goaways_total",
        "Graceful HTTP/2 GOAWAYs sent (idle, drain, max_requests).",
        "counter",
        &["h2_goaways"],
    ),
    (
        "ringgate_h2_enhance_your_calm_total",
        "HTTP/2 connections ended with ENHANCE_YOUR_CALM (floods).",
        "counter",
        &["h2_enhance_your_calm"],
    ),
    (
        "ringgate_rate_limited_total",
        "Requests refused with 429 by a route's rate limit.",
        "counter",
        &["rate_limited"],
    ),
    (
        "ringgate_rate_limit_table_full_total",
        "Requests admitted uncounted because the rate-limit table had no cell for their key.",
        "counter",
        &["rate_limit_table_full"],
    ),
    (
        "ringgate_rate_limit_unavailable_total",
        "Requests of a cluster rate limit decided by its fail mode (Redis down or slow).",
        "counter",
        &["rate_limit_unavailable"],
    ),
    (
        "ringgate_tls_handshakes_total",
        "TLS handshakes completed.",
        "counter",
        &["tls", "handshakes"],
    ),
    (
        "ringgate_tls_resumed_total",
        "TLS handshakes that resumed a session (ticket or session ID).",
        "counter",
        &["tls", "resumed"],
    ),
    (
        "ringgate_tls_handshake_failures_total",
        "TLS handshakes that failed (by reason in /stats).",
        "counter",
        &["tls", "failed"],
    ),
    (
        "ringgate_tunnels_open",
        "Upgraded connections (WebSocket tunnels) open now.",
        "gauge",
        &["tunnels", "open"],
    ),
    (
        "ringgate_tunnels_opened_total",
        "Upgraded connections opened (upstream answered 101).",
        "counter",
        &["tunnels", "opened"],
    ),
    (
        "ringgate_tunnel_upstream_bytes_total",
        "Bytes tunnelled from clients to upstreams.",
        "counter",
        &["tunnels", "bytes_up"],
    ),
    (
        "ringgate_tunnel_downstream_bytes_total",
        "Bytes tunnelled from upstreams to clients.",
        "counter",
        &["tunnels", "bytes_down"],
    ),
    (
        "ringgate_cache_hits_total",
        "Requests answered from the cache.",
        "counter",
        &["cache", "hits"],
    ),
    (
        "ringgate_cache_misses_total",
        "Cacheable requests forwarded to the origin.",
        "counter",
        &["cache", "misses"],
    ),
    (
        "ringgate_cache_stale_total",
        "Stale responses served.",
        "counter",
        &["cache", "stale"],
    ),
    (
        "ringgate_cache_revalidations_total",
        "Stored responses revalidated with a 304.",
        "counter",
        &["cache", "revalidations"],
    ),
    (
        "ringgate_cache_coalesced_total",
        "Misses that waited for a concurrent fetch on the same worker.",
        "counter",
        &["cache", "coalesced"],
    ),
    (
        "ringgate_cache_remote_waits_total",
        "Misses that waited for another worker's fetch.",
        "counter",
        &["cache", "remote_waits"],
    ),
    (
        "ringgate_cache_stores_total",
        "Responses stored.",
        "counter",
        &["cache", "stores"],
    ),
    (
        "ringgate_cache_offers_taken_total",
        "Responses taken from other workers.",
        "counter",
        &["cache", "offers_taken"],
    ),
    (
        "ringgate_cache_evictions_total",
        "Entries evicted to fit the capacity.",
        "counter",
        &["cache", "evictions"],
    ),
    (
        "ringgate_cache_entries",
        "Entries in the shard.",
        "gauge",
        &["cache", "entries"],
    ),
    (
        "ringgate_cache_bytes",
        "Bytes the shard counts.",
        "gauge",
        &["cache", "bytes"],
    ),
    (
        "ringgate_cache_purges_total",
        "Invalidation messages applied.",
        "counter",
        &["cache", "purges"],
    ),
    (
        "ringgate_cache_invalidated_total",
        "Responses removed or made stale by invalidations.",
        "counter",
        &["cache", "invalidated"],
    ),
];

/// Name, help, type, path to the object, labels.
type Labelled = (
    &'static str,
    &'static str,
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
);

/// Series whose labels are the keys of nested objects in a worker's
/// snapshot: name, help, type, where the object is, and the label each
/// level of keys fills.
const LABELLED_METRICS: &[Labelled] = &[(
    "ringgate_h2_resets_total",
    "HTTP/2 streams reset, by who reset them (client or gateway) and the reason.",
    "counter",
    &["h2_resets"],
    &["by", "reason"],
)];

/// Per-server series: name, help, type, field of a `servers` entry.
const SERVER_METRICS: &[(&str, &str, &str, &str)] = &[
    (
        "ringgate_upstream_server_outstanding",
        "Requests in flight to the server from this worker.",
        "gauge",
        "outstanding",
    ),
    (
        "ringgate_upstream_server_latency_ewma_microseconds",
        "Peak-EWMA of the server's response-head latency.",
        "gauge",
        "latency_ewma_us",
    ),
    (
        "ringgate_upstream_server_ejected",
        "1 while passive health checking has ejected the server.",
        "gauge",
        "ejected",
    ),
    (
        "ringgate_upstream_server_ejections_total",
        "Ejections of the server by passive health checking.",
        "counter",
        "ejections",
    ),
    (
        "ringgate_upstream_server_healthy",
        "0 while active health checks find the server down.",
        "gauge",
        "healthy",
    ),
    (
        "ringgate_upstream_server_in_rotation",
        "0 once service discovery removed the server from its group.",
        "gauge",
        "in_rotation",
    ),
    (
        "ringgate_upstream_server_idle_connections",
        "Keep-alive connections to the server idle in this worker's pool.",
        "gauge",
        "idle_connections",
    ),
];

/// The workers' snapshots in Prometheus text format, labelled by worker
/// (and by server for the per-server series).
/// The node's cluster series (`[cluster]`): name, help, type, field of
/// `Cluster::snapshot`.
const CLUSTER_METRICS: &[(&str, &str, &str, &str)] = &[
    (
        "ringgate_cluster_redis_connected",
        "1 while the cluster's Redis is reachable",
        "gauge",
        "redis_connected",
    ),
    (
        "ringgate_cluster_published_total",
        "invalidations this node published",
        "counter",
        "published",
    ),
    (
        "ringgate_cluster_publish_dropped_total",
        "invalidations dropped with the queue to Redis full",
        "counter",
        "publish_dropped",
    ),
    (
        "ringgate_cluster_applied_total",
        "other nodes' invalidations applied here",
        "counter",
        "applied",
    ),
    (
        "ringgate_cluster_gaps_total",
        "times this node may have missed invalidations and marked its cache stale",
        "counter",
        "gaps",
    ),
];

/// The cluster series of the node (`cluster`: `Cluster::snapshot`).
/// A label value as the exposition format writes it.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// AI routes' usage by consumer, model and provider, summed over workers.
pub(super) fn ai_series(workers: &[Value]) -> String {
    let mut sums: std::collections::BTreeMap<(String, String, String), [u64; 6]> =
        std::collections::BTreeMap::new();
    const FIELDS: [&str; 6] = [
        "requests",
        "errors",
        "prompt_tokens",
        "completion_tokens",
        "first_byte_us",
        "generation_us",
    ];
    for w in workers {
        for row in w["ai"].as_array().into_iter().flatten() {
            let name = |f: &str| row[f].as_str().unwrap_or("").to_string();
            let sum = sums
                .entry((name("consumer"), name("model"), name("provider")))
                .or_default();
            for (i, f) in FIELDS.iter().enumerate() {
                sum[i] += row[*f].as_u64().unwrap_or(0);
            }
        }
    }
    if sums.is_empty() {
        return String::new();
    }
    let series: [(&str, &str, &str, usize, f64); 6] = [
        ("ringgate_ai_requests_total", "AI route requests.", "counter", 0, 1.0),
        ("ringgate_ai_errors_total", "AI route requests no target answered, or whose stream broke.", "counter", 1, 1.0),
        ("ringgate_ai_prompt_tokens_total", "Prompt tokens, as the providers reported them.", "counter", 2, 1.0),
        ("ringgate_ai_completion_tokens_total", "Completion tokens, as the providers reported them.", "counter", 3, 1.0),
        ("ringgate_ai_first_byte_seconds_total", "Summed time to the first byte (token) of answers; divide by requests for the mean.", "counter", 4, 1e-6),
        ("ringgate_ai_generation_seconds_total", "Summed time from the first byte to the end of answers; completion tokens over it are tokens per second.", "counter", 5, 1e-6),
    ];
    let mut out = String::new();
    for (name, help, kind, i, scale) in series {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for ((consumer, model, provider), sum) in &sums {
            let value = sum[i] as f64 * scale;
            let (consumer, model, provider) = (label(consumer), label(model), label(provider));
            out.push_str(&format!(
                "{name}{{consumer=\"{consumer}\",model=\"{model}\",provider=\"{provider}\"}} {value}\n"
            ));
        }
    }
    out
}

pub(super) fn cluster_series(cluster: &Value) -> String {
    let mut out = String::new();
    let node = cluster["node"].as_str().unwrap_or("");
    for (name, help, kind, field) in CLUSTER_METRICS {
        let value = match &cluster[*field] {
            Value::Bool(b) => u64::from(*b),
            v => v.as_u64().unwrap_or(0),
        };
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{node=\"{node}\"}} {value}\n"
        ));
    }
    let name = "ringgate_cluster_peer_lag_ms";
    out.push_str(&format!(
        "# HELP {name} How far behind the stream's newest entry each live node has applied, as this node last saw it (ms of entry ids).\n# TYPE {name} gauge\n"
    ));
    for peer in cluster["nodes"].as_array().into_iter().flatten() {
        let (peer_name, lag) = (
            peer["node"].as_str().unwrap_or(""),
            peer["lag_ms"].as_u64().unwrap_or(0),
        );
        out.push_str(&format!(
            "{name}{{node=\"{node}\",peer=\"{peer_name}\"}} {lag}\n"
        ));
    }
    out
}

pub(super) fn prometheus(workers: &[Value]) -> String {
    let mut out = String::new();
    for (name, help, kind, field) in SERVER_METRICS {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for w in workers {
            let worker = w["worker"].as_u64().unwrap_or(0);
            for server in w["servers"].as_array().into_iter().flatten() {
                let value = match &server[*field] {
                    Value::Bool(b) => u64::from(*b),
                    v => v.as_u64().unwrap_or(0),
                };
                let address = server["address"].as_str().unwrap_or("");
                out.push_str(&format!(
                    "{name}{{worker=\"{worker}\",server=\"{address}\"}} {value}\n"
                ));
            }
        }
    }
    for (name, help, kind, path) in METRICS {
        let values: Vec<(u64, u64)> = workers
            .iter()
            .filter_map(|w| {
                let mut v = w;
                for p in *path {
                    v = v.get(p)?;
                }
                Some((w["worker"].as_u64()?, v.as_u64()?))
            })
            .collect();
        if values.is_empty() {
            continue;
        }
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (worker, value) in values {
            out.push_str(&format!("{name}{{worker=\"{worker}\"}} {value}\n"));
        }
    }
    for (name, help, kind, path, labels) in LABELLED_METRICS {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for w in workers {
            let worker = w["worker"].as_u64().unwrap_or(0);
            let mut v = w;
            for p in *path {
                v = &v[p];
            }
            let prefix = format!("worker=\"{worker}\"");
            labelled(&mut out, name, &prefix, labels, v);
        }
    }
    out
}

/// One line per leaf of `v`, its keys as the `labels` in order.
fn labelled(out: &mut String, name: &str, prefix: &str, labels: &[&str], v: &Value) {
    match (labels.split_first(), v) {
        (None, v) => {
            if let Some(value) = v.as_u64() {
                out.push_str(&format!("{name}{{{prefix}}} {value}\n"));
            }
        }
        (Some((label, rest)), Value::Object(map)) => {
            for (key, inner) in map {
                let prefix = format!("{prefix},{label}=\"{key}\"");
                labelled(out, name, &prefix, rest, inner);
            }
        }
        _ => {}
    }
}
