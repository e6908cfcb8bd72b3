//! The node's two stream threads: the publisher (the node's invalidations
//! and shared-tier writes, in order, to Redis) and the reader (other nodes'
//! entries applied through the bus, heartbeats, gaps, the nodes' view), and
//! the side thread confirming a cluster-scope purge.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;

use super::entry::{decode, encode, entries, entries_of_list, parse_id};
use super::{
    connect, redis_now, shared, ClusterStats, Confirmation, Confirmed, NodeView, Outgoing,
};
use crate::bus::{Bus, Invalidation, Message};
use crate::cache::shard::Removal;
use crate::config::ClusterConfig;

/// How long a blocking read waits before checking for shutdown.
const READ_BLOCK_MS: u64 = 500;
/// Entries read at a time.
const READ_COUNT: usize = 256;
/// A node's heartbeat (its last applied id) lives this long.
const HEARTBEAT_TTL_MS: u64 = 3000;

#[derive(Clone)]
pub(super) struct Link {
    pub(super) config: ClusterConfig,
    pub(super) stats: Arc<ClusterStats>,
    pub(super) stop: Arc<AtomicBool>,
    /// The shared tier's counters, when it is on.
    pub(super) shared: Option<Arc<shared::SharedStats>>,
}

impl Link {
    fn connect(&self) -> redis::RedisResult<redis::Connection> {
        connect(&self.config)
    }

    /// Waits a little before trying Redis again (a side thread, off the request path).
    fn back_off(&self) {
        std::thread::sleep(Duration::from_millis(200));
    }

    pub(super) fn publish(self, queue: Receiver<Outgoing>, stores: Receiver<Box<shared::Put>>) {
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

    pub(super) fn read(self, bus: Arc<Bus>) {
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
    pub(super) fn confirm(&self, id: &str, confirmation: &Confirmation) {
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
