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

pub mod limits;
pub mod shared;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::bus::{Bus, Invalidation, Message};
use crate::cache::shard::Removal;
use crate::config::ClusterConfig;

/// Invalidations waiting for Redis; past this, new ones are dropped and
/// counted (the other nodes then miss them: `publish_dropped`).
const QUEUE: usize = 10_000;
/// Responses waiting to be written to the shared tier; past this, dropped.
const STORE_QUEUE: usize = 1024;
/// How long a blocking read waits before checking for shutdown.
const READ_BLOCK_MS: u64 = 500;
/// Entries read at a time.
const READ_COUNT: usize = 256;

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

/// A node's heartbeat (its last applied id) lives this long.
const HEARTBEAT_TTL_MS: u64 = 3000;

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

#[derive(Clone)]
struct Link {
    config: ClusterConfig,
    stats: Arc<ClusterStats>,
    stop: Arc<AtomicBool>,
    /// The shared tier's counters, when it is on.
    shared: Option<Arc<shared::SharedStats>>,
}

impl Link {
    fn connect(&self) -> redis::RedisResult<redis::Connection> {
        connect(&self.config)
    }

    /// Waits a little before trying Redis again (a side thread, off the request path).
    fn back_off(&self) {
        std::thread::sleep(Duration::from_millis(200));
    }

    fn publish(self, queue: Receiver<Outgoing>, stores: Receiver<Box<shared::Put>>) {
        let mut conn = None;
        let mut pending: Option<Outgoing> = None;
        while !self.stop.load(Ordering::Acquire) {
            // Invalidations first: a write to the shared tier waits.
            let item = match pending.take().or_else(|| queue.try_recv().ok()) {
                Some(item) => item,
                None => crossbeam_channel::select! {
                    recv(queue) -> item => match item {
                        Ok(item) => item,
                        Err(_) => return,
                    },
                    recv(stores) -> put => match put {
                        Ok(put) => Outgoing::Store(put),
                        Err(_) => return,
                    },
                    default(Duration::from_millis(READ_BLOCK_MS)) => continue,
                },
            };
            if conn.is_none() {
                conn = self.connect().ok();
            }
            let Some(c) = conn.as_mut() else {
                if let (Outgoing::Store(_), Some(tier)) = (&item, &self.shared) {
                    tier.dropped.fetch_add(1, Ordering::Relaxed);
                }
                pending = unconfirmed(item, "Redis is unreachable");
                self.back_off();
                continue;
            };
            let (what, removal, confirmation) = match item {
                Outgoing::Invalidate(what, removal, confirmation) => (what, removal, confirmation),
                Outgoing::Store(put) => {
                    // Not retried: the tier is an optimisation, and a
                    // late write is refused if a purge came meanwhile.
                    if let Err(e) = self.store(c, &put) {
                        tracing::warn!(error = %e, "cluster: cannot write to the shared cache");
                        if let Some(tier) = &self.shared {
                            tier.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                        conn = None;
                    }
                    continue;
                }
            };
            let (kind, host, value) = encode(&what);
            let removal_name = match removal {
                Removal::Hard => "hard",
                Removal::Soft => "soft",
            };
            let sent: redis::RedisResult<String> = if self.config.shared_cache {
                // The shared tier's copies go in the same step.
                let fields = [
                    self.config.node_id.as_str(),
                    kind,
                    &host,
                    &value,
                    removal_name,
                ];
                shared::purge_and_publish(c, &self.config, &what, fields)
            } else {
                redis::cmd("XADD")
                    .arg(&self.config.stream)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(self.config.stream_max)
                    .arg("*")
                    .arg("node")
                    .arg(&self.config.node_id)
                    .arg("kind")
                    .arg(kind)
                    .arg("host")
                    .arg(&host)
                    .arg("value")
                    .arg(&value)
                    .arg("removal")
                    .arg(removal_name)
                    .query(c)
            };
            match sent {
                Ok(id) => {
                    self.stats.published.fetch_add(1, Ordering::Relaxed);
                    if let Some(confirmation) = confirmation {
                        let link = self.clone();
                        let spawned = std::thread::Builder::new()
                            .name("ringgate-cluster-confirm".to_string())
                            .spawn(move || link.confirm(&id, &confirmation));
                        if let Err(e) = spawned {
                            tracing::warn!(error = %e, "cluster: cannot watch a purge's confirmation");
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cluster: cannot publish an invalidation; will retry");
                    conn = None;
                    pending = unconfirmed(
                        Outgoing::Invalidate(what, removal, confirmation),
                        "Redis is unreachable",
                    );
                    self.back_off();
                }
            }
        }
    }

    /// Writes one response to the shared tier; a write that waited too
    /// long (Redis was away) is dropped.
    fn store(&self, c: &mut redis::Connection, put: &shared::Put) -> redis::RedisResult<()> {
        let Some(tier) = self.shared.as_ref() else {
            return Ok(());
        };
        if put.queued.elapsed() > shared::PUT_MAX_AGE {
            tier.dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        if shared::put(c, &self.config, put)? {
            tier.stored.fetch_add(1, Ordering::Relaxed);
        } else {
            tier.refused.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn read(self, bus: Arc<Bus>) {
        let mut last: Option<String> = None;
        // When the nodes' view in `/stats` was last refreshed.
        let mut last_view: Option<std::time::Instant> = None;
        let mut conn: Option<redis::Connection> = None;
        let mut was_connected = false;
        while !self.stop.load(Ordering::Acquire) {
            if conn.is_none() {
                match self.connect() {
                    Ok(mut c) => {
                        let _ = c.set_read_timeout(Some(
                            self.config.timeout + Duration::from_millis(READ_BLOCK_MS),
                        ));
                        match &last {
                            // First connection: from the stream's end. The
                            // cache holds nothing an earlier entry could
                            // name: it is as if all were applied.
                            None => {
                                let now: Option<(u64, u64)> = redis::cmd("TIME").query(&mut c).ok();
                                last = Some(self.last_id(&mut c).unwrap_or_else(|| "0-0".into()));
                                if let Some((s, us)) = now {
                                    let ms = (s * 1000 + us / 1000).saturating_sub(1);
                                    self.stats.applied_ms.fetch_max(ms, Ordering::AcqRel);
                                }
                            }
                            // Back after a break: were entries trimmed meanwhile?
                            Some(id) => {
                                if self.missed_since(&mut c, id) {
                                    self.mark_all_stale(&bus);
                                }
                            }
                        }
                        self.stats.connected.store(true, Ordering::Relaxed);
                        if !was_connected {
                            tracing::info!(redis = %self.config.redis, "cluster: connected");
                        }
                        was_connected = true;
                        conn = Some(c);
                    }
                    Err(e) => {
                        self.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                        if was_connected || self.stats.connect_failures.load(Ordering::Relaxed) == 1
                        {
                            tracing::warn!(error = %e, "cluster: Redis unreachable; serving on, invalidations from other nodes wait");
                        }
                        was_connected = false;
                        self.stats.connected.store(false, Ordering::Relaxed);
                        self.back_off();
                        continue;
                    }
                }
            }
            let c = conn.as_mut().expect("connected above");
            let from = last.clone().unwrap_or_else(|| "0-0".into());
            from.clone_into(&mut self.stats.last_id.lock().unwrap_or_else(|e| e.into_inner()));
            // Redis' clock before the read: once every entry the read
            // returns is applied, every entry added before then is.
            let Ok(now) = redis_now(c) else {
                self.stats.connected.store(false, Ordering::Relaxed);
                conn = None;
                self.back_off();
                continue;
            };
            let before = Some(now);
            // The heartbeat: this node is live and has applied up to `from`.
            let beat: redis::RedisResult<()> = redis::pipe()
                .cmd("ZADD")
                .arg(self.nodes_key())
                .arg(now + HEARTBEAT_TTL_MS)
                .arg(&self.config.node_id)
                .ignore()
                .cmd("HSET")
                .arg(self.applied_key())
                .arg(&self.config.node_id)
                .arg(&from)
                .ignore()
                .query(c);
            if beat.is_err() {
                self.stats.connected.store(false, Ordering::Relaxed);
                conn = None;
                self.back_off();
                continue;
            }
            if last_view.is_none_or(|t: std::time::Instant| t.elapsed() >= Duration::from_secs(1)) {
                last_view = Some(std::time::Instant::now());
                self.refresh_view(c, now);
            }
            let read: redis::RedisResult<redis::Value> = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(READ_COUNT)
                .arg("BLOCK")
                .arg(READ_BLOCK_MS)
                .arg("STREAMS")
                .arg(&self.config.stream)
                .arg(&from)
                .query(c);
            match read {
                Ok(value) => {
                    let read = entries(&value);
                    let whole = read.len() < READ_COUNT;
                    for (id, fields) in read {
                        last = Some(id);
                        if fields.get("node").map(String::as_str) != Some(&self.config.node_id) {
                            if let Some((what, removal)) = decode(&fields) {
                                self.apply(&bus, what, removal);
                            }
                        }
                        let at = parse_id(last.as_deref().unwrap_or("0-0")).0;
                        self.stats
                            .applied_ms
                            .fetch_max(at.saturating_sub(1), Ordering::AcqRel);
                    }
                    if let (true, Some(before)) = (whole, before) {
                        self.stats
                            .applied_ms
                            .fetch_max(before.saturating_sub(1), Ordering::AcqRel);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cluster: lost Redis");
                    self.stats.connected.store(false, Ordering::Relaxed);
                    conn = None;
                    self.back_off();
                }
            }
        }
    }

    /// The live nodes: a sorted set, each node scored by when its
    /// heartbeat expires (Redis' clock, ms).
    fn nodes_key(&self) -> String {
        format!("{}:nodes", self.config.stream)
    }

    /// The last entry each node applied: a hash by node.
    fn applied_key(&self) -> String {
        format!("{}:applied", self.config.stream)
    }

    /// Every node whose heartbeat has not expired at `now`, with the last
    /// entry it applied.
    fn live_nodes(
        &self,
        c: &mut redis::Connection,
        now: u64,
    ) -> redis::RedisResult<Vec<(String, Option<String>)>> {
        let names: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.nodes_key())
            .arg(now)
            .arg("+inf")
            .query(c)?;
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(self.applied_key())
            .arg(&names)
            .query(c)?;
        Ok(names.into_iter().zip(ids).collect())
    }

    /// Refreshes `/stats`' view of the nodes: each live one's last applied
    /// entry and how far (in ms of entry ids) it is behind the stream's
    /// newest; drops nodes gone for a minute from the set.
    fn refresh_view(&self, c: &mut redis::Connection, now: u64) {
        let _: redis::RedisResult<()> = redis::cmd("ZREMRANGEBYSCORE")
            .arg(self.nodes_key())
            .arg("-inf")
            .arg(now.saturating_sub(60_000))
            .query(c);
        let newest = self.last_id(c).map_or(0, |id| parse_id(&id).0);
        let Ok(nodes) = self.live_nodes(c, now) else {
            return;
        };
        let view = nodes
            .into_iter()
            .map(|(node, id)| {
                let id = id.unwrap_or_else(|| "0-0".into());
                let lag = newest.saturating_sub(parse_id(&id).0);
                NodeView {
                    node,
                    last_id: id,
                    lag_ms: lag,
                }
            })
            .collect();
        *self.stats.nodes.lock().unwrap_or_else(|e| e.into_inner()) = view;
    }

    /// Watches the live nodes until each has applied entry `id` (its last
    /// applied id is at or past it) or the deadline.
    fn confirm(&self, id: &str, confirmation: &Confirmation) {
        let deadline = confirmation.deadline;
        let mut conn = match self.connect() {
            Ok(c) => c,
            Err(e) => {
                confirmation.finish(Confirmed {
                    error: Some(format!("Redis: {e}")),
                    ..Default::default()
                });
                return;
            }
        };
        loop {
            let live = redis_now(&mut conn).and_then(|now| self.live_nodes(&mut conn, now));
            let nodes: Vec<(String, bool)> = match live {
                Ok(live) => live
                    .into_iter()
                    .map(|(node, at)| {
                        let applied = at.is_some_and(|at| parse_id(&at) >= parse_id(id));
                        (node, applied)
                    })
                    .collect(),
                Err(e) => {
                    confirmation.finish(Confirmed {
                        error: Some(format!("Redis: {e}")),
                        ..Default::default()
                    });
                    return;
                }
            };
            if nodes.iter().all(|n| n.1) || std::time::Instant::now() >= deadline {
                confirmation.finish(Confirmed { nodes, error: None });
                return;
            }
            // A side thread polling Redis while an operator's purge waits.
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The id of the stream's newest entry.
    fn last_id(&self, c: &mut redis::Connection) -> Option<String> {
        let v: redis::Value = redis::cmd("XREVRANGE")
            .arg(&self.config.stream)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query(c)
            .ok()?;
        entries_of_list(&v).into_iter().next().map(|(id, _)| id)
    }

    /// Whether entries after `id` may have been lost: the stream's oldest
    /// entry is newer than `id` (trimming reached past it, or the stream was
    /// deleted and written again), or the stream is gone. Errs on the side of
    /// a soft purge: a false alarm costs revalidations, a missed one stale
    /// answers.
    fn missed_since(&self, c: &mut redis::Connection, id: &str) -> bool {
        let v: redis::RedisResult<redis::Value> = redis::cmd("XRANGE")
            .arg(&self.config.stream)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query(c);
        let Ok(v) = v else { return true };
        match entries_of_list(&v).into_iter().next() {
            None => id != "0-0",
            Some((first, _)) => parse_id(&first) > parse_id(id),
        }
    }

    fn mark_all_stale(&self, bus: &Bus) {
        self.stats.gaps.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            "cluster: invalidations were missed while away; every stored response is marked stale"
        );
        self.apply(bus, Invalidation::All, Removal::Soft);
    }

    /// Applies an entry on every worker and waits for them.
    fn apply(&self, bus: &Bus, what: Invalidation, removal: Removal) {
        let workers = bus.workers();
        let ack = crate::bus::Ack::new(workers);
        let message = Message::Invalidate { what, removal };
        for worker in 0..workers {
            if bus
                .send(worker, message.clone(), Some(ack.clone()))
                .is_err()
            {
                ack.done(worker, 0);
            }
        }
        if !ack.wait_blocking(Duration::from_secs(5)) {
            tracing::warn!(workers = ?ack.missing(), "cluster: workers slow to apply an invalidation");
        }
        self.stats.applied.fetch_add(1, Ordering::Relaxed);
    }
}

/// The entry still goes out when Redis is back; whoever waited for its
/// confirmation is told now.
fn unconfirmed(item: Outgoing, why: &str) -> Option<Outgoing> {
    match item {
        Outgoing::Invalidate(what, removal, confirmation) => {
            if let Some(confirmation) = confirmation {
                confirmation.finish(Confirmed {
                    error: Some(why.to_string()),
                    ..Default::default()
                });
            }
            Some(Outgoing::Invalidate(what, removal, None))
        }
        // A write to the shared tier is dropped with its connection.
        Outgoing::Store(_) => None,
    }
}

fn parse_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// An invalidation as stream fields: kind, host, value.
fn encode(what: &Invalidation) -> (&'static str, String, String) {
    match what {
        Invalidation::Urls(urls) => (
            "urls",
            String::new(),
            urls.iter().map(|u| hex(u)).collect::<Vec<_>>().join(","),
        ),
        Invalidation::Prefix { host, prefix } => (
            "prefix",
            host.as_deref().unwrap_or("").to_string(),
            prefix.to_string(),
        ),
        Invalidation::Regex { host, regex } => (
            "regex",
            host.as_deref().unwrap_or("").to_string(),
            regex.as_str().to_string(),
        ),
        Invalidation::Tag(tag) => ("tag", String::new(), tag.to_string()),
        Invalidation::All => ("all", String::new(), String::new()),
    }
}

fn decode(fields: &std::collections::HashMap<String, String>) -> Option<(Invalidation, Removal)> {
    let host = fields
        .get("host")
        .filter(|h| !h.is_empty())
        .map(|h| Arc::<str>::from(h.as_str()));
    let value = fields.get("value").map(String::as_str).unwrap_or("");
    let what = match fields.get("kind")?.as_str() {
        "urls" => Invalidation::Urls(Arc::new(
            value
                .split(',')
                .filter(|v| !v.is_empty())
                .map(|v| unhex(v).map(Vec::into_boxed_slice))
                .collect::<Option<Vec<_>>>()?,
        )),
        "prefix" => Invalidation::Prefix {
            host,
            prefix: value.into(),
        },
        "regex" => Invalidation::Regex {
            host,
            regex: Arc::new(regex::Regex::new(value).ok()?),
        },
        "tag" => Invalidation::Tag(value.into()),
        "all" => Invalidation::All,
        _ => return None,
    };
    let removal = match fields.get("removal").map(String::as_str) {
        Some("soft") => Removal::Soft,
        _ => Removal::Hard,
    };
    Some((what, removal))
}

/// `bytes` in lower-case hex (key names, stream fields).
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

type Entry = (String, std::collections::HashMap<String, String>);

/// The entries of an `XREAD` reply (one stream).
fn entries(v: &redis::Value) -> Vec<Entry> {
    let redis::Value::Array(streams) = v else {
        // Nil (or a map, RESP3): nothing new.
        if let redis::Value::Map(streams) = v {
            return streams
                .iter()
                .flat_map(|(_, e)| entries_of_list(e))
                .collect();
        }
        return Vec::new();
    };
    streams
        .iter()
        .flat_map(|s| match s {
            redis::Value::Array(parts) if parts.len() == 2 => entries_of_list(&parts[1]),
            _ => Vec::new(),
        })
        .collect()
}

/// `[[id, [field, value, ...]], ...]`.
fn entries_of_list(v: &redis::Value) -> Vec<Entry> {
    let redis::Value::Array(list) = v else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|e| {
            let redis::Value::Array(pair) = e else {
                return None;
            };
            let id = text(pair.first()?)?;
            let redis::Value::Array(kv) = pair.get(1)? else {
                return None;
            };
            let fields = kv
                .chunks(2)
                .filter_map(|c| Some((text(c.first()?)?, text(c.get(1)?)?)))
                .collect();
            Some((id, fields))
        })
        .collect()
}

fn text(v: &redis::Value) -> Option<String> {
    match v {
        redis::Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_invalidation_survives_the_stream_fields() {
        let all = [
            Invalidation::Urls(Arc::new(vec![
                b"http://a.test/x?y=1".to_vec().into_boxed_slice(),
                b"https://a.test/z\nh:x=1".to_vec().into_boxed_slice(),
            ])),
            Invalidation::Prefix {
                host: Some("a.test".into()),
                prefix: "/api/".into(),
            },
            Invalidation::Regex {
                host: None,
                regex: Arc::new(regex::Regex::new("^/p/[0-9]+$").unwrap()),
            },
            Invalidation::Tag("product-7".into()),
            Invalidation::All,
        ];
        for what in all {
            let (kind, host, value) = encode(&what);
            let fields = [
                ("kind", kind.to_string()),
                ("host", host),
                ("value", value),
                ("removal", "soft".to_string()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
            let (back, removal) = decode(&fields).unwrap();
            assert_eq!(format!("{back:?}"), format!("{what:?}"));
            assert_eq!(removal, Removal::Soft);
        }
    }
}
