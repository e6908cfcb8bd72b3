//! Several gateway nodes acting as one cache: every invalidation a node
//! applies is published to a Redis Stream and applied by every other node.
//!
//! Two side threads per node, never a worker (the synchronous `redis`
//! client, no async runtime): the publisher takes the node's invalidations
//! from a bounded queue and `XADD`s them (`MAXLEN ~ stream_max`); the reader
//! `XREAD`s the stream from the last id it applied (not a consumer group,
//! which would hand each entry to one node only), applies other nodes'
//! entries through the local bus, waiting for every worker, and moves on.
//! While Redis is unreachable the node serves on; its own invalidations wait
//! in the queue and go out when Redis is back. A reader that comes back to
//! find its last id trimmed off the stream cannot know what it missed: it
//! marks the whole cache stale (a soft purge: revalidation keeps the origin
//! cheap) and says so in the log and `/stats`.
//!
//! - `link`: the publisher, reader and confirmation threads
//! - `entry`: a stream entry's fields, and replies read back
//! - [`limits`]: cluster rate limits; [`shared`]: the shared cache tier

mod entry;
pub mod limits;
mod link;
pub mod shared;

pub(crate) use entry::hex;
use link::Link;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;

use crate::bus::{Bus, Invalidation};
use crate::cache::shard::Removal;
use crate::config::ClusterConfig;

/// Invalidations waiting for Redis; past this, new ones are dropped and
/// counted (the other nodes then miss them: `publish_dropped`).
const QUEUE: usize = 10_000;
/// Responses waiting to be written to the shared tier; past this, dropped.
const STORE_QUEUE: usize = 1024;

/// The node's counters, for `/stats`.
#[derive(Default)]
pub struct ClusterStats {
    pub connected: AtomicBool,
    pub published: AtomicU64,
    pub publish_dropped: AtomicU64,
    pub applied: AtomicU64,
    /// Times the node found it had missed entries and marked its cache stale.
    pub gaps: AtomicU64,
    /// Failed attempts to connect to Redis (by the stream reader).
    pub connect_failures: AtomicU64,
    /// The id of the last stream entry this node read (`0-0`: none yet).
    pub last_id: std::sync::Mutex<String>,
    /// Redis' clock (ms) up to which every other node's invalidation has
    /// been applied here (the shared tier's `mark`).
    pub applied_ms: AtomicU64,
    /// Every live node as this node last saw them (refreshed each second).
    pub nodes: std::sync::Mutex<Vec<NodeView>>,
}

/// A live node of the cluster, for `/stats`.
#[derive(Debug, Clone)]
pub struct NodeView {
    pub node: String,
    /// The last stream entry it applied.
    pub last_id: String,
    /// How far behind the stream's newest entry that is, in ms of entry ids
    /// (0: caught up).
    pub lag_ms: u64,
}

/// Redis' clock, in ms.
fn redis_now(c: &mut redis::Connection) -> redis::RedisResult<u64> {
    let (s, us): (u64, u64) = redis::cmd("TIME").query(c)?;
    Ok(s * 1000 + us / 1000)
}

/// The node's link to the cluster.
/// What goes to the publisher, in the order the node made it.
enum Outgoing {
    /// An invalidation, and who waits for every live node to apply it
    /// (`"scope": "cluster"`).
    Invalidate(Invalidation, Removal, Option<Arc<Confirmation>>),
    /// A response for the shared tier.
    Store(Box<shared::Put>),
}

/// A cluster-scope purge being confirmed: filled in by a side thread.
pub struct Confirmation {
    /// Counts down once, when the answer is in.
    pub done: Arc<crate::bus::Ack>,
    answer: std::sync::Mutex<Option<Confirmed>>,
    /// When to stop waiting for nodes.
    deadline: std::time::Instant,
}

/// How a cluster-scope purge went.
#[derive(Debug, Clone, Default)]
pub struct Confirmed {
    /// Every live node (a heartbeat within the last few seconds) and
    /// whether it applied the entry.
    pub nodes: Vec<(String, bool)>,
    /// Redis could not be reached.
    pub error: Option<String>,
}

impl Confirmation {
    fn new(limit: Duration) -> Arc<Confirmation> {
        Arc::new(Confirmation {
            done: crate::bus::Ack::new(1),
            answer: std::sync::Mutex::new(None),
            deadline: std::time::Instant::now() + limit,
        })
    }

    fn finish(&self, answer: Confirmed) {
        *self.answer.lock().unwrap_or_else(|e| e.into_inner()) = Some(answer);
        self.done.done(0, 0);
    }

    /// The answer, once `done` resolved.
    pub fn answer(&self) -> Option<Confirmed> {
        self.answer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

pub struct Cluster {
    outgoing: Sender<Outgoing>,
    /// Responses for the shared tier: a queue of their own, so a flood of
    /// them never crowds out an invalidation.
    stores: Sender<Box<shared::Put>>,
    pub stats: Arc<ClusterStats>,
    /// The `scope = "cluster"` rate limits.
    pub limits: Arc<limits::ClusterLimits>,
    /// The shared cache tier (`shared_cache = true`).
    pub shared: Option<Arc<shared::SharedCache>>,
    pub node_id: String,
    /// How long a request waits for Redis (`cluster.timeout`).
    pub timeout: Duration,
    stop: Arc<AtomicBool>,
}

impl Cluster {
    /// Starts the publisher and reader threads.
    pub fn start(config: &ClusterConfig, bus: Arc<Bus>) -> std::io::Result<Arc<Cluster>> {
        let (outgoing, queue) = crossbeam_channel::bounded(QUEUE);
        let (stores, stored) = crossbeam_channel::bounded(STORE_QUEUE);
        let stats = Arc::new(ClusterStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let shared = match config.shared_cache {
            true => Some(shared::SharedCache::start(config, stop.clone())?),
            false => None,
        };
        let link = Link {
            config: config.clone(),
            stats: stats.clone(),
            stop: stop.clone(),
            shared: shared.as_ref().map(|s| s.stats.clone()),
        };
        let publisher = Link { ..link.clone() };
        std::thread::Builder::new()
            .name("ringgate-cluster-pub".to_string())
            .spawn(move || publisher.publish(queue, stored))?;
        std::thread::Builder::new()
            .name("ringgate-cluster-read".to_string())
            .spawn(move || link.read(bus))?;
        let limits = limits::ClusterLimits::start(config, stop.clone())?;
        Ok(Arc::new(Cluster {
            outgoing,
            stores,
            stats,
            limits,
            shared,
            node_id: config.node_id.clone(),
            timeout: config.timeout,
            stop,
        }))
    }

    /// Publishes an invalidation this node applied (never waits).
    pub fn publish(&self, what: &Invalidation, removal: Removal) {
        if self
            .outgoing
            .try_send(Outgoing::Invalidate(what.clone(), removal, None))
            .is_err()
        {
            self.stats.publish_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Writes a stored response to the shared tier (never waits: dropped
    /// and counted when the queue is full).
    pub fn share(&self, put: shared::Put) {
        if self.stores.try_send(Box::new(put)).is_err() {
            if let Some(shared) = &self.shared {
                shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Where this node is in the stream, for a fetch beginning now.
    pub fn mark(&self) -> u64 {
        self.stats.applied_ms.load(Ordering::Acquire)
    }

    /// Publishes an invalidation and has a side thread watch the live
    /// nodes' heartbeats until each has applied it or `limit` passed.
    pub fn publish_confirmed(
        &self,
        what: &Invalidation,
        removal: Removal,
        limit: Duration,
    ) -> Arc<Confirmation> {
        let confirmation = Confirmation::new(limit);
        let item = Outgoing::Invalidate(what.clone(), removal, Some(confirmation.clone()));
        if self.outgoing.try_send(item).is_err() {
            self.stats.publish_dropped.fetch_add(1, Ordering::Relaxed);
            confirmation.finish(Confirmed {
                error: Some("the queue to Redis is full".into()),
                ..Default::default()
            });
        }
        confirmation
    }

    /// Ends the side threads (the gateway stopped).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// For `/stats`.
    pub fn snapshot(&self) -> serde_json::Value {
        let s = &self.stats;
        serde_json::json!({
            "node": self.node_id,
            "redis_connected": s.connected.load(Ordering::Relaxed),
            "published": s.published.load(Ordering::Relaxed),
            "publish_dropped": s.publish_dropped.load(Ordering::Relaxed),
            "applied": s.applied.load(Ordering::Relaxed),
            "gaps": s.gaps.load(Ordering::Relaxed),
            "connect_failures": s.connect_failures.load(Ordering::Relaxed),
            "last_id": s.last_id.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            "nodes": s.nodes.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|n| serde_json::json!({
                "node": n.node,
                "last_id": n.last_id,
                "lag_ms": n.lag_ms,
            })).collect::<Vec<_>>(),
            "rate_limits": self.limits.snapshot(),
            "shared_cache": self.shared.as_ref().map(|s| s.snapshot()),
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// A connection to the cluster's Redis, writes bounded by `timeout`; with
/// `rediss://`, TLS checked against `tls.ca` (or the system's roots), with
/// this node's certificate when configured.
fn connect(config: &ClusterConfig) -> redis::RedisResult<redis::Connection> {
    let tls = &config.tls;
    let client = if tls.ca.is_some() || tls.cert.is_some() {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|e| {
                redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "cannot read a TLS file",
                    format!("{}: {e}", path.display()),
                ))
            })
        };
        let client_tls = match (&tls.cert, &tls.key) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: read(cert)?,
                client_key: read(key)?,
            }),
            _ => None,
        };
        let root_cert = tls.ca.as_deref().map(read).transpose()?;
        redis::Client::build_with_tls(
            config.redis.as_str(),
            redis::TlsCertificates {
                client_tls,
                root_cert,
            },
        )?
    } else {
        redis::Client::open(config.redis.as_str())?
    };
    let conn = client.get_connection_with_timeout(config.timeout)?;
    conn.set_write_timeout(Some(config.timeout))?;
    Ok(conn)
}
