//! ringgate: a thread-per-core HTTP/1.1 API gateway on io_uring.
//!
//! The library entry is [`Gateway::start`]: it validates a [`Config`],
//! probe-binds every listener on the calling thread (so a busy or bad
//! address fails here, with a clear error), starts one pinned worker thread
//! per core and returns a [`Handle`] once every worker is listening. Tests
//! and benchmarks run the real gateway in-process this way, on port 0.
//!
//! Module map (see `docs/ARCHITECTURE.md` for a request's path through them):
//! - [`config`]: TOML -> validated domain config
//! - [`access_log`]: per-request lines, formatted per worker, written by one thread
//! - [`ai`]: LLM provider protocols (OpenAI-compatible bodies, SSE, Anthropic translation)
//! - [`cluster`]: several nodes as one through Redis: invalidations, rate limits, a shared cache tier
//! - [`worker`]: threads, pinning, event loops, listeners, shutdown
//! - [`http`]: strict HTTP/1.1 parsing and framing rules
//! - [`route`]: the route table
//! - [`proxy`]: the connection task and request relay
//! - [`upstream`]: balancers and the keep-alive pool
//! - [`tls`]: TLS termination (certificates, SNI, the rustls adapter)
//! - [`reload`]: live config reload (snapshots, generations, acknowledgements)
//! - [`upgrade`]: handing listening sockets to a new binary
//! - [`demo`]: the built-in demo origin

pub mod access_log;
pub mod admin;
pub mod ai;
pub mod bus;
pub mod cache;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod error;
pub mod http;
pub mod proxy;
pub mod reload;
pub mod route;
pub mod tls;
pub mod upgrade;
pub mod upstream;
pub mod worker;

use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

pub use config::Config;
pub use error::StartError;
pub use worker::{DriverKind, WorkerInfo};

use config::ListenerConfig;
use worker::signal::StopSignal;
use worker::WorkerSpec;

/// Starts gateways.
pub struct Gateway;

/// A running gateway: its bound addresses, its workers, and how to stop it.
/// Dropping the handle stops the gateway and waits for its workers.
pub struct Handle {
    listen_addrs: Vec<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    workers: Vec<WorkerInfo>,
    stops: Vec<Arc<StopSignal>>,
    threads: Vec<JoinHandle<()>>,
    /// Live reload (and service discovery's thread, which it restarts).
    reloader: Arc<reload::Reloader>,
    /// Every listening socket, for a binary upgrade.
    sockets: Arc<upgrade::Sockets>,
    access_log: Arc<access_log::AccessLog>,
    /// The link to the other nodes (stopped when the handle goes).
    cluster: Option<Arc<cluster::Cluster>>,
}

impl Gateway {
    /// Validates `config`, binds its listeners and starts the workers.
    /// Returns once every worker is accepting connections.
    pub fn start(config: Config) -> Result<Handle, StartError> {
        Gateway::start_with(config, upgrade::Inherited::default())
    }

    /// [`Gateway::start`] on listening sockets another process handed over
    /// (a binary upgrade): a listener whose address is among them accepts
    /// on them instead of binding its own.
    pub fn start_with(
        config: Config,
        mut inherited: upgrade::Inherited,
    ) -> Result<Handle, StartError> {
        config.check()?;
        let placements = plan_workers(&config)?;

        // Probe-bind on this thread: a busy or invalid address fails here, once,
        // with its address in the message. Port 0 is resolved to a concrete port
        // that every worker then binds with SO_REUSEPORT.
        let mut listeners = Vec::new();
        // Released once every worker has bound (the end of this function).
        let mut holds = Vec::new();
        for l in &config.listeners {
            let address = if inherited.listeners.contains_key(&l.address) {
                l.address
            } else {
                probe_bind(l.address, &mut holds)?
            };
            listeners.push(ListenerConfig {
                address,
                ..l.clone()
            });
        }
        // TLS: certificates and roots loaded once, one ticket key for all workers.
        let mut tickets = None;
        let (terminators, connectors) =
            reload::tls_parts(&config, &mut tickets).map_err(StartError::Config)?;

        let admin_addr = match &config.admin {
            Some(admin) if inherited.admin.is_some() => Some(admin.listen),
            Some(admin) => Some(probe_bind(admin.listen, &mut holds)?),
            None => None,
        };

        let cores: Vec<usize> = placements
            .iter()
            .enumerate()
            .map(|(i, core)| core.map_or(i, |c| c.id))
            .collect();
        if let Err(e) = worker::rlimit::raise(&config, &cores) {
            tracing::warn!(error = %e, "cannot read the open-file limit");
        }

        // What the file wrote, and the config as running: bound addresses.
        let written = reload::Written {
            listeners: config.listeners.iter().map(|l| l.address).collect(),
            admin: config.admin.as_ref().map(|a| a.listen),
        };
        let config = Arc::new(Config {
            listeners: listeners.clone(),
            admin: config.admin.clone().map(|a| config::AdminConfig {
                listen: admin_addr.unwrap_or(a.listen),
                ..a
            }),
            ..config
        });
        let access_log =
            access_log::AccessLog::start(&config.access_log).map_err(|e| StartError::Worker {
                index: 0,
                reason: format!("cannot start the access log's writer thread: {e}"),
            })?;
        let (bus, mut receivers) = bus::Bus::new(placements.len(), config.cache.bus_capacity);
        let reloader = Arc::new(reload::Reloader::new(
            bus.clone(),
            config.clone(),
            written,
            tickets,
            access_log.clone(),
        ));
        let claims = Arc::new(cache::claims::Claims::new(4096));
        let cluster =
            match &config.cluster {
                None => None,
                Some(c) => Some(cluster::Cluster::start(c, bus.clone()).map_err(|e| {
                    StartError::Worker {
                        index: 0,
                        reason: format!("cannot start the cluster threads: {e}"),
                    }
                })?),
            };
        let limiter: Arc<dyn route::rate_limit::Limiter> =
            Arc::new(route::rate_limit::NodeTable::default());
        let ai_keys = Arc::new(ai::keys::KeyLoad::default());
        let (ready_tx, ready_rx) = mpsc::channel();
        let mut handle = Handle {
            admin_addr,
            listen_addrs: listeners.iter().map(|l| l.address).collect(),
            workers: Vec::new(),
            stops: Vec::new(),
            threads: Vec::new(),
            reloader: reloader.clone(),
            sockets: Arc::default(),
            access_log: access_log.clone(),
            cluster: cluster.clone(),
        };
        // Handed-over sockets, spread over the workers: every one is
        // accepted on, so no queue is lost.
        let mut handed: Vec<Vec<_>> = (0..placements.len()).map(|_| Vec::new()).collect();
        for (address, fds) in inherited.listeners.drain() {
            for (i, fd) in fds.into_iter().enumerate() {
                handed[i % placements.len()].push((address, fd));
            }
        }
        for (index, core) in placements.into_iter().enumerate() {
            let mine = std::mem::take(&mut handed[index]);
            let stop = Arc::new(StopSignal::default());
            let (receiver, worker) = receivers.remove(0);
            let spec = WorkerSpec {
                index,
                core,
                config: config.clone(),
                listeners: listeners.clone(),
                terminators: terminators.clone(),
                connectors: connectors.clone(),
                stop: stop.clone(),
                mailbox: bus::Mailbox::new(bus.clone(), receiver, worker),
                claims: claims.clone(),
                limiter: limiter.clone(),
                ai_keys: ai_keys.clone(),
                admin: if index == 0 {
                    admin_addr.map(|a| (a, reloader.clone(), inherited.admin.take()))
                } else {
                    None
                },
                inherited: mine,
                sockets: handle.sockets.clone(),
                access_log: access_log.clone(),
                cluster: cluster.clone(),
            };
            let thread = worker::spawn(spec, ready_tx.clone()).map_err(|e| StartError::Worker {
                index,
                reason: format!("cannot start thread: {e}"),
            })?;
            handle.stops.push(stop);
            handle.threads.push(thread);
        }
        drop(ready_tx);

        let mut workers = Vec::new();
        for _ in 0..handle.threads.len() {
            match ready_rx.recv() {
                Ok(Ok(info)) => workers.push(info),
                Ok(Err(reason)) => {
                    let index = workers.len();
                    return Err(StartError::Worker { index, reason });
                }
                Err(_) => {
                    return Err(StartError::Worker {
                        index: workers.len(),
                        reason: "worker exited during start".to_string(),
                    })
                }
            }
        }
        // Every worker listens now: the ports are theirs.
        drop(holds);
        workers.sort_by_key(|w| w.index);
        if let Some(first) = workers.first() {
            tracing::info!(
                workers = workers.len(),
                driver = %first.driver,
                recv_buffers = %first.recv_ring,
                upstream_recv_buffers = %first.upstream_ring,
                listen = ?handle.listen_addrs,
                "ringgate started"
            );
        }
        handle.workers = workers;
        let discovery =
            upstream::discovery::start(&config, bus).map_err(|e| StartError::Worker {
                index: 0,
                reason: format!("cannot start the service discovery thread: {e}"),
            })?;
        reloader.set_discovery(discovery);
        Ok(handle)
    }
}

/// Which CPU each worker is pinned to (`None` when pinning is off).
fn plan_workers(config: &Config) -> Result<Vec<Option<core_affinity::CoreId>>, StartError> {
    let w = &config.workers;
    let allowed = core_affinity::get_core_ids().unwrap_or_default();
    let cpus: Vec<core_affinity::CoreId> = match &w.cpus {
        Some(list) => {
            let mut chosen = Vec::new();
            for &cpu in list {
                match allowed.iter().find(|c| c.id == cpu) {
                    Some(c) => chosen.push(*c),
                    None => {
                        return Err(StartError::Config(config::ConfigError {
                            file: config.source.clone(),
                            key: "workers.cpus".to_string(),
                            reason: format!(
                                "CPU {cpu} is not available to this process (available: {:?})",
                                allowed.iter().map(|c| c.id).collect::<Vec<_>>()
                            ),
                        }))
                    }
                }
            }
            chosen
        }
        None => allowed,
    };
    let count = w.count.unwrap_or(cpus.len().max(1));
    if !w.pin || cpus.is_empty() {
        return Ok(vec![None; count]);
    }
    if count > cpus.len() {
        tracing::warn!(
            workers = count,
            cpus = cpus.len(),
            "more workers than CPUs: some CPUs run two workers"
        );
    }
    Ok((0..count).map(|i| Some(cpus[i % cpus.len()])).collect())
}

/// A probed port, held: the socket stays bound (not listening) until
/// the workers have bound theirs, so that no one else is given the port in
/// between. A port-0 address is resolved by the kernel, which never hands
/// out a port some socket is bound to; were the probe closed before the
/// workers bind, a second gateway starting at that moment could be given the
/// same port and its workers would join this one's SO_REUSEPORT group,
/// sharing its connections. The workers' own binds are not refused by it:
/// both sides set SO_REUSEADDR and the probe never listens.
pub(crate) struct PortHold {
    _socket: socket2::Socket,
}

/// Binds `address` as a probe and answers the bound address (port 0
/// resolved); the probe is kept in `holds` until the caller drops them.
pub(crate) fn probe_bind(
    address: SocketAddr,
    holds: &mut Vec<PortHold>,
) -> Result<SocketAddr, StartError> {
    let bind_error = |source| StartError::Bind { address, source };
    // Without SO_REUSEPORT, so that any socket already listening there (ours
    // or another program's) makes this fail instead of silently sharing the port.
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(address),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .map_err(bind_error)?;
    socket.set_reuse_address(true).map_err(bind_error)?;
    socket.bind(&address.into()).map_err(bind_error)?;
    let bound = socket
        .local_addr()
        .map_err(bind_error)?
        .as_socket()
        .ok_or_else(|| bind_error(std::io::Error::other("not an inet address")))?;
    holds.push(PortHold { _socket: socket });
    Ok(bound)
}

impl Handle {
    /// The first listener's bound address.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen_addrs[0]
    }

    /// The admin API's bound address, when it is on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Every listener's bound address, in config order.
    pub fn listen_addrs(&self) -> &[SocketAddr] {
        &self.listen_addrs
    }

    pub fn workers(&self) -> &[WorkerInfo] {
        &self.workers
    }

    /// Starts a graceful shutdown without waiting: workers stop accepting,
    /// close idle connections and finish in-flight requests.
    pub fn begin_shutdown(&self) {
        for stop in &self.stops {
            stop.stop();
        }
        self.sockets.clear();
    }

    /// Graceful shutdown: returns when every worker has finished (at most the
    /// configured grace period after the last in-flight request started).
    pub fn shutdown(mut self) {
        self.begin_shutdown();
        self.join_workers();
    }

    /// Waits until the workers exit (after [`Handle::begin_shutdown`], or a signal
    /// handler calling it from another thread through [`Handle::stopper`]).
    pub fn wait(mut self) {
        self.join_workers();
    }

    /// Something another thread can call to start the shutdown.
    pub fn stopper(&self) -> Stopper {
        Stopper {
            stops: self.stops.clone(),
            sockets: self.sockets.clone(),
        }
    }

    /// Re-reads the config file and applies it on every worker (blocks
    /// until each applied it, or [`reload::ACK_TIMEOUT`] passed).
    pub fn reload(&self) -> Result<reload::Reloaded, reload::ReloadError> {
        self.reloader.reload_blocking()
    }

    /// The access log (to reopen its file on `SIGUSR1`).
    pub fn access_log(&self) -> Arc<access_log::AccessLog> {
        self.access_log.clone()
    }

    /// Every listening socket, for handing over to a new binary.
    pub fn sockets(&self) -> Arc<upgrade::Sockets> {
        self.sockets.clone()
    }

    /// Something another thread can reload the config with.
    pub fn reloader(&self) -> Arc<reload::Reloader> {
        self.reloader.clone()
    }

    /// The node's link to the cluster (`[cluster]`), with its counters.
    pub fn cluster(&self) -> Option<Arc<cluster::Cluster>> {
        self.cluster.clone()
    }

    fn join_workers(&mut self) {
        self.reloader.stop_discovery();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        // The workers handed their last lines over as they ended.
        self.access_log.sync(std::time::Duration::from_secs(5));
        self.access_log.close(std::time::Duration::from_secs(1));
        if let Some(cluster) = &self.cluster {
            cluster.stop();
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.begin_shutdown();
            self.join_workers();
        }
    }
}

/// Starts a graceful shutdown from any thread.
#[derive(Clone)]
pub struct Stopper {
    stops: Vec<Arc<StopSignal>>,
    sockets: Arc<upgrade::Sockets>,
}

impl Stopper {
    pub fn stop(&self) {
        for stop in &self.stops {
            stop.stop();
        }
        self.sockets.clear();
    }
}
