//! Everything one worker owns: its route table, upstream pools, counters,
//! reusable buffers and shutdown state. Shared between that worker's tasks
//! through `Rc`; never sent to another thread.
//!
//! What a config reload replaces ([`WorkerCtx`], one per generation) is
//! kept apart from what it does not ([`WorkerShared`]).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use bytes::BytesMut;

use super::signal::Notify;
use crate::bus::Bus;
use crate::cache::claims::Claims;
use crate::cache::WorkerCache;
use crate::config::{Config, PerCoreConfig};
use crate::route::Router;
use crate::upstream::Upstreams;

pub use super::stats::{Counter, Stats};

/// A warning logged at most once per interval, with how often it was
/// suppressed meanwhile: a flood must not turn into a flood of log lines.
#[derive(Default)]
pub struct RateLimitedLog {
    last: Cell<Option<std::time::Instant>>,
    suppressed: Cell<u64>,
}

impl RateLimitedLog {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(10);

    /// Returns `Some(times suppressed since the last line)` when a line may be logged now.
    pub fn allow(&self) -> Option<u64> {
        let now = std::time::Instant::now();
        match self.last.get() {
            Some(last) if now.duration_since(last) < Self::EVERY => {
                self.suppressed.set(self.suppressed.get() + 1);
                None
            }
            _ => {
                self.last.set(Some(now));
                Some(self.suppressed.replace(0))
            }
        }
    }
}

/// Buffers kept at most this many per kind; more in flight at once are allocated.
const BUFFER_POOL_MAX: usize = 256;
/// Free buffers a quiet worker keeps per kind: beyond this the free lists
/// shrink by half at each sweep, so memory a burst needed is given back.
const BUFFER_POOL_IDLE: usize = 16;
/// A buffer that grew beyond this is dropped rather than kept for reuse.
const BUFFER_KEEP_MAX: usize = 256 * 1024;

/// What a worker keeps across config generations: its counters,
/// connections, buffers, shutdown state and links to the other workers.
/// Reached from any [`WorkerCtx`] through `Deref`.
pub struct WorkerShared {
    pub index: usize,
    /// The key of this worker's `[workers.overrides]` entry (its core, or
    /// its index when pinning is off).
    pub core_key: Cell<usize>,
    pub stats: Stats,
    /// Set once when a graceful shutdown starts.
    pub draining: Cell<bool>,
    /// Set when the shutdown grace period is over: open connections are dropped.
    pub hard_stop: Cell<bool>,
    /// Client connections open on this worker.
    pub active: Cell<usize>,
    /// Accept loops still running. A draining worker waits for them too:
    /// the connection an accept returns after its cancel is served, and
    /// would be reset if the worker ended first.
    pub accepting: Cell<usize>,
    /// Notified when draining starts (idle connections close).
    pub drain_notify: Notify,
    /// Notified when a connection ends (accept loops and the drain waiter re-check).
    pub slot_notify: Notify,
    /// Notified when an HTTP/2 upstream connection finished opening (or
    /// failed to): requests waiting to share it re-check.
    pub h2_connect_notify: Notify,
    /// Notified when a new config generation is in place (accept loops of
    /// removed listeners stop, superseded probe loops end).
    pub reconfigured: Notify,
    /// Open client connections by address, and which are idle.
    pub conns: super::conns::Conns,
    /// The connection-cap warnings.
    pub cap_log: RateLimitedLog,
    /// Reusable upstream read buffers and serialisation buffers.
    read_buffers: RefCell<Vec<BytesMut>>,
    write_buffers: RefCell<Vec<Vec<u8>>>,
    /// Cache hits' vectored-write buffers, lent for one response each (a
    /// connection keeps none while idle).
    hit_buffers: RefCell<Vec<crate::cache::hit::HitBuf>>,
    /// Reused buffer for building cache keys.
    pub key_buf: RefCell<Vec<u8>>,
    /// Reused buffers for a request's canonical host and path (when they
    /// differ from what the client sent).
    pub target_scratch: RefCell<(String, String)>,
    /// Reused buffer for the values of forwarded fields the gateway composes.
    pub forward_scratch: RefCell<Vec<u8>>,
    /// Senders to every worker.
    pub bus: Arc<Bus>,
    /// Cold keys being fetched, across workers.
    pub claims: Arc<Claims>,
    /// The node's rate-limit table, shared by the workers.
    pub limiter: Arc<dyn crate::route::rate_limit::Limiter>,
    /// Where the worker registers its listening sockets (for an upgrade).
    pub sockets: Arc<crate::upgrade::Sockets>,
    /// The access log's buffer of this worker (`None`: no writer thread).
    pub log: Option<crate::access_log::WorkerLog>,
    /// The node's link to the other nodes (`[cluster]`).
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// AI route targets benched until a time (a provider's 429 or 503
    /// `Retry-After`), by route, provider and model.
    pub ai_bench: std::cell::RefCell<std::collections::HashMap<String, std::time::Instant>>,
    /// AI routes' usage on this worker.
    pub ai_usage: std::cell::RefCell<crate::ai::Usage>,
    /// The provided-buffer ring idle connections receive from (io_uring).
    pub recv_ring: Option<super::recv_ring::RecvRing>,
    /// The worker's bus mailbox, shared with its bus task: a cold miss
    /// that won its claim applies what is queued before fetching
    /// (`inbox::apply_queued`).
    pub mailbox: Option<Rc<crate::bus::Mailbox>>,
    /// The ring plain upstream connections receive from (io_uring): each
    /// such connection holds it (`proxy::io::Stream::Ringed`).
    pub upstream_ring: Option<Rc<super::recv_ring::RecvRing>>,
    /// AI providers' keys: requests in flight on each, node-wide.
    pub ai_keys: Arc<crate::ai::keys::KeyLoad>,
    /// `X-Request-Id`s this worker made, and their random prefix (as the
    /// 16 hex digits every id it makes starts with).
    pub request_ids: Cell<u64>,
    pub request_id_prefix: [u8; 16],
    /// The worker's cache shard once a generation caches; later generations
    /// keep it (stored entries survive a reload).
    cache_store: RefCell<Option<Rc<WorkerCache>>>,
    /// The generation new requests start on.
    current: RefCell<Option<Rc<WorkerCtx>>>,
    /// Its number, readable without touching `current`.
    pub live_generation: Cell<u64>,
}

/// One config generation as this worker runs it: the config, the route
/// table and the upstream state built from it. A request keeps the
/// generation it started on until it ends (every index it holds -- route,
/// group, server -- is one of this generation's); new requests take
/// [`WorkerCtx::current`]. Everything kept across generations is in
/// [`WorkerShared`], reached through `Deref`.
pub struct WorkerCtx {
    shared: Rc<WorkerShared>,
    /// The config generation (1 at start, one more per reload).
    pub generation: u64,
    pub config: Arc<Config>,
    pub per_core: PerCoreConfig,
    pub router: Router,
    pub upstreams: RefCell<Upstreams>,
    /// `Via: 1.1 <name>\r\n`, built once.
    pub via_line: Vec<u8>,
    /// The worker's cache, when a route caches and `cache_size` is not 0.
    pub cache: Option<Rc<WorkerCache>>,
    /// Each route's retry budget on this worker.
    pub retry_budgets: Vec<RefCell<crate::upstream::retry::RetryBudget>>,
    /// What each listener (by bound address) does with a connection.
    pub entries: Vec<(std::net::SocketAddr, Rc<crate::proxy::Entry>)>,
}

impl std::ops::Deref for WorkerCtx {
    type Target = WorkerShared;

    fn deref(&self) -> &WorkerShared {
        &self.shared
    }
}

impl WorkerCtx {
    pub fn new(
        index: usize,
        config: Arc<Config>,
        per_core: PerCoreConfig,
        bus: Arc<Bus>,
        claims: Arc<Claims>,
        limiter: Arc<dyn crate::route::rate_limit::Limiter>,
    ) -> WorkerCtx {
        let shared = Rc::new(WorkerShared {
            index,
            core_key: Cell::new(index),
            stats: Stats::default(),
            draining: Cell::new(false),
            hard_stop: Cell::new(false),
            active: Cell::new(0),
            accepting: Cell::new(0),
            drain_notify: Notify::default(),
            slot_notify: Notify::default(),
            h2_connect_notify: Notify::default(),
            reconfigured: Notify::default(),
            conns: Default::default(),
            cap_log: RateLimitedLog::default(),
            read_buffers: RefCell::new(Vec::new()),
            write_buffers: RefCell::new(Vec::new()),
            hit_buffers: RefCell::new(Vec::new()),
            key_buf: RefCell::new(Vec::with_capacity(256)),
            target_scratch: RefCell::default(),
            forward_scratch: RefCell::default(),
            bus,
            claims,
            limiter,
            sockets: Arc::default(),
            log: None,
            ai_bench: Default::default(),
            ai_usage: Default::default(),
            ai_keys: Default::default(),
            recv_ring: None,
            upstream_ring: None,
            mailbox: None,
            cluster: None,
            request_ids: Cell::new(0),
            request_id_prefix: {
                use std::hash::{BuildHasher, Hasher};
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write_usize(index);
                crate::proxy::request_id::hex(h.finish())
            },
            cache_store: RefCell::new(None),
            current: RefCell::new(None),
            live_generation: Cell::new(1),
        });
        WorkerCtx::build(shared, 1, config, per_core, Vec::new())
    }

    /// A generation of `config` for this worker (its listeners' `entries`).
    fn build(
        shared: Rc<WorkerShared>,
        generation: u64,
        config: Arc<Config>,
        per_core: PerCoreConfig,
        entries: Vec<(std::net::SocketAddr, Rc<crate::proxy::Entry>)>,
    ) -> WorkerCtx {
        let router = Router::new(&config.routes);
        let upstreams = RefCell::new(Upstreams::new(&config, &per_core, shared.index));
        let via_line = format!("Via: 1.1 {}\r\n", config.proxy.via_name).into_bytes();
        let any_route_caches = config.routes.iter().any(crate::config::RouteConfig::caches);
        let cache = (any_route_caches && per_core.cache_size > 0).then(|| {
            shared
                .cache_store
                .borrow_mut()
                .get_or_insert_with(|| {
                    Rc::new(WorkerCache::new(
                        per_core.cache_size,
                        per_core.cache_max_object,
                    ))
                })
                .clone()
        });
        WorkerCtx {
            retry_budgets: config.routes.iter().map(|_| RefCell::default()).collect(),
            cache,
            router,
            upstreams,
            per_core,
            config,
            via_line,
            generation,
            entries,
            shared,
        }
    }

    /// Writes access-log lines through `log` (before the worker's tasks
    /// share this context).
    pub fn set_access_log(&mut self, log: Arc<crate::access_log::AccessLog>) {
        if let Some(shared) = Rc::get_mut(&mut self.shared) {
            shared.log = Some(crate::access_log::WorkerLog::new(log, shared.index));
        }
    }

    /// Receives idle connections' bytes through this ring (before the
    /// worker's tasks share this context).
    pub fn set_recv_ring(&mut self, ring: Option<super::recv_ring::RecvRing>) {
        if let Some(shared) = Rc::get_mut(&mut self.shared) {
            shared.recv_ring = ring;
        }
    }

    /// Shares the worker's mailbox with the request path (before the
    /// worker's tasks share this context).
    pub fn set_mailbox(&mut self, mailbox: Rc<crate::bus::Mailbox>) {
        if let Some(shared) = Rc::get_mut(&mut self.shared) {
            shared.mailbox = Some(mailbox);
        }
    }

    /// Receives plain upstream connections' bytes through this ring
    /// (before the worker's tasks share this context).
    pub fn set_upstream_ring(&mut self, ring: Option<super::recv_ring::RecvRing>) {
        if let Some(shared) = Rc::get_mut(&mut self.shared) {
            shared.upstream_ring = ring.map(Rc::new);
        }
    }

    /// Counts AI provider keys in flight in the node's table (before the
    /// worker's tasks share this context).
    pub fn set_ai_keys(&mut self, keys: Arc<crate::ai::keys::KeyLoad>) {
        if let Some(shared) = Rc::get_mut(&mut self.shared) {
            shared.ai_keys = keys;
        }
    }

    /// Publishes this node's invalidations to the cluster (before the
    /// worker's tasks share this context).
    pub fn set_cluster(&mut self, cluster: Option<Arc<crate::cluster::Cluster>>) {
        if let Some(shared) = Rc::get_mut(&mut self.shared) {
            shared.cluster = cluster;
        }
    }

    /// Applies an invalidation on every worker of this node (returning once
    /// each did, within `invalidation_timeout`) and publishes it to the
    /// other nodes of the cluster, if any.
    pub async fn invalidate(
        &self,
        what: crate::bus::Invalidation,
        removal: crate::cache::shard::Removal,
    ) -> Result<crate::bus::Broadcast, crate::bus::BusError> {
        if let Some(cluster) = &self.cluster {
            cluster.publish(&what, removal);
        }
        let message = crate::bus::Message::Invalidate { what, removal };
        self.bus
            .broadcast_and_wait(message, self.config.cache.invalidation_timeout)
            .await
    }

    /// Registers listening sockets in `sockets` from now on (before the
    /// worker's tasks share this context).
    pub fn set_sockets(&mut self, sockets: Arc<crate::upgrade::Sockets>) {
        if let Some(shared) = Rc::get_mut(&mut self.shared) {
            shared.sockets = sockets;
        }
    }

    /// The next generation: `config` built for this worker, with what the
    /// upstreams learnt (health, ejections, idle connections, discovered
    /// servers) carried over from this one.
    pub fn next_generation(
        &self,
        generation: u64,
        config: Arc<Config>,
        entries: Vec<(std::net::SocketAddr, Rc<crate::proxy::Entry>)>,
    ) -> WorkerCtx {
        let per_core = config.workers.for_core(self.core_key.get()).clone();
        let next = WorkerCtx::build(self.shared.clone(), generation, config, per_core, entries);
        next.upstreams.borrow_mut().inherit(
            &mut self.upstreams.borrow_mut(),
            &self.config,
            &next.config,
        );
        next
    }

    /// Makes `this` the generation new requests start on.
    pub fn make_current(this: &Rc<WorkerCtx>) {
        this.live_generation.set(this.generation);
        *this.current.borrow_mut() = Some(this.clone());
        this.reconfigured.notify_all();
    }

    /// The generation new requests start on.
    pub fn current(self: &Rc<Self>) -> Rc<WorkerCtx> {
        match &*self.current.borrow() {
            Some(c) if c.generation != self.generation => c.clone(),
            _ => self.clone(),
        }
    }

    /// A later generation has replaced this one.
    pub fn superseded(&self) -> bool {
        self.live_generation.get() != self.generation
    }

    /// Lets go of the current generation (the worker is exiting).
    pub fn forget_current(&self) {
        self.current.borrow_mut().take();
    }

    /// This generation has the listener bound at `address`.
    pub fn listens_on(&self, address: std::net::SocketAddr) -> bool {
        self.entries.iter().any(|(a, _)| *a == address)
    }

    /// What the listener bound at `address` does with a connection in this
    /// generation; `None` once the listener was removed.
    pub fn entry_for(&self, address: std::net::SocketAddr) -> Option<Rc<crate::proxy::Entry>> {
        self.entries
            .iter()
            .find(|(a, _)| *a == address)
            .map(|(_, e)| e.clone())
    }

    /// This worker's counters, for `/stats` and `/metrics`.
    pub fn snapshot(&self) -> serde_json::Value {
        let s = &self.stats;
        let upstreams = self.upstreams.borrow();
        let (idle, discarded) = upstreams.pool_counts();
        let mut v = serde_json::json!({
            "worker": self.index,
            "generation": self.generation,
            "connections": self.active.get(),
            "upstream_pool_idle": idle,
            "upstream_pool_discarded": discarded,
            "tls": s.tls_snapshot(),
            "tunnels": s.tunnels_snapshot(),
            "h2_resets": s.h2_resets_snapshot(),
            "servers": upstreams.server_snapshot(std::time::Instant::now()),
            "ai": self.ai_usage.borrow().iter().map(|((consumer, model, provider), c)| serde_json::json!({
                "consumer": consumer,
                "model": model,
                "provider": provider,
                "requests": c.requests,
                "errors": c.errors,
                "prompt_tokens": c.prompt_tokens,
                "completion_tokens": c.completion_tokens,
                "first_byte_us": c.first_byte_us,
                "generation_us": c.generation_us,
            })).collect::<Vec<_>>(),
        });
        for (counter, name) in Counter::ALL {
            v[name] = s.get(counter).into();
        }
        // Upstream reads that found the upstream ring empty.
        v["upstream_recv_buffers_empty"] = self
            .upstream_ring
            .as_ref()
            .map_or(0, |ring| ring.empties())
            .into();
        if let Some(log) = &self.log {
            v["access_log_lines"] = log.written.get().into();
            v["access_log_dropped"] = log.dropped.get().into();
        }
        if let Some(cache) = &self.cache {
            let shard = cache.shard.borrow();
            let mut c = serde_json::json!({
                "evictions": shard.evictions(),
                "entries": shard.len(),
                "bytes": shard.weight(),
            });
            for (name, n) in cache.counts() {
                c[name] = n.into();
            }
            v["cache"] = c;
        }
        v
    }

    /// The via line, when `Via` is configured.
    pub fn via(&self) -> Option<&[u8]> {
        self.config.proxy.via.then_some(self.via_line.as_slice())
    }

    pub fn begin_drain(&self) {
        if !self.draining.replace(true) {
            self.drain_notify.notify_all();
            self.slot_notify.notify_all();
        }
    }

    /// Ends every open connection: each connection task races its work
    /// against this, so dropping the work closes its sockets and cancels its I/O.
    pub fn force_close(&self) {
        self.hard_stop.set(true);
        self.drain_notify.notify_all();
    }

    /// Resolves when [`WorkerCtx::force_close`] was called.
    pub async fn forced_closed(&self) {
        self.drain_notify.wait_until(|| self.hard_stop.get()).await
    }

    /// Resolves when a graceful shutdown has started.
    pub async fn drain_started(&self) {
        self.drain_notify.wait_until(|| self.draining.get()).await
    }

    pub fn take_read_buffer(&self) -> BytesMut {
        self.read_buffers
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| BytesMut::with_capacity(self.per_core.upstream_buffer_size))
    }

    pub fn give_read_buffer(&self, mut buf: BytesMut) {
        buf.clear();
        // Its memory counts whole: a buffer read empty shows as room only
        // what follows the bytes taken off it, whatever it holds before.
        if buf.capacity() <= BUFFER_KEEP_MAX && !buf.try_reclaim(BUFFER_KEEP_MAX + 1) {
            let mut pool = self.read_buffers.borrow_mut();
            if pool.len() < BUFFER_POOL_MAX {
                pool.push(buf);
            }
        }
    }

    /// Halves the free buffer lists above their idle size (called periodically).
    pub fn trim_buffers(&self) {
        fn halve<T>(list: &RefCell<Vec<T>>) {
            let mut list = list.borrow_mut();
            if list.len() > BUFFER_POOL_IDLE {
                let keep = (list.len() / 2).max(BUFFER_POOL_IDLE);
                list.truncate(keep);
                list.shrink_to_fit();
            }
        }
        halve(&self.read_buffers);
        halve(&self.write_buffers);
        halve(&self.hit_buffers);
    }

    pub fn take_hit_buffer(&self) -> crate::cache::hit::HitBuf {
        self.hit_buffers.borrow_mut().pop().unwrap_or_default()
    }

    /// Takes back a hit buffer after its response was written.
    pub fn give_hit_buffer(&self, mut buf: crate::cache::hit::HitBuf) {
        buf.release();
        let mut pool = self.hit_buffers.borrow_mut();
        if pool.len() < BUFFER_POOL_MAX {
            pool.push(buf);
        }
    }

    pub fn take_write_buffer(&self) -> Vec<u8> {
        self.write_buffers
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(4096))
    }

    pub fn give_write_buffer(&self, mut buf: Vec<u8>) {
        if buf.capacity() <= BUFFER_KEEP_MAX {
            buf.clear();
            let mut pool = self.write_buffers.borrow_mut();
            if pool.len() < BUFFER_POOL_MAX {
                pool.push(buf);
            }
        }
    }
}

/// Counts a client connection, and registers it by address, for as long as it lives.
pub struct ConnectionGuard {
    ctx: Rc<WorkerCtx>,
    /// Its key in [`WorkerCtx::conns`].
    pub key: usize,
}

impl ConnectionGuard {
    /// The worker the connection is on.
    pub fn ctx(&self) -> &WorkerCtx {
        &self.ctx
    }

    pub fn new(ctx: Rc<WorkerCtx>, ip: std::net::IpAddr) -> Self {
        ctx.active.set(ctx.active.get() + 1);
        let key = ctx.conns.register(ip);
        ConnectionGuard { ctx, key }
    }
}

/// Counts one running accept loop in [`WorkerShared::accepting`].
pub struct AcceptGuard(Rc<WorkerCtx>);

impl AcceptGuard {
    pub fn new(ctx: Rc<WorkerCtx>) -> Self {
        ctx.accepting.set(ctx.accepting.get() + 1);
        AcceptGuard(ctx)
    }
}

impl Drop for AcceptGuard {
    fn drop(&mut self) {
        self.0.accepting.set(self.0.accepting.get() - 1);
        self.0.slot_notify.notify_all();
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.ctx.conns.unregister(self.key);
        self.ctx.active.set(self.ctx.active.get() - 1);
        self.ctx.slot_notify.notify_all();
    }
}
