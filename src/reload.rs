//! Live config reload, the node's side: re-read and check the config
//! file, build an immutable [`Snapshot`] of it with the next generation
//! number, send it to every worker over the bus and wait for each to
//! acknowledge it (`worker::reconfigure` is the worker's side).
//!
//! `SIGHUP`, `ringgate reload` and the admin API's `POST /config/reload`
//! all come here. A file that does not load, does not validate, or changes
//! what only a restart can change is refused with its file, key and
//! reason, and the running config stays. One reload runs at a time.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::server::ProducesTickets;

use crate::bus::{Ack, Bus, BusError, Message};
use crate::config::{Config, ConfigError, ListenerConfig, UpstreamProtocol};
use crate::tls::{Connector, Terminator};

/// How long a reload waits for every worker to apply the new generation.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// One config generation, as every worker receives it.
pub struct Snapshot {
    pub generation: u64,
    pub config: Arc<Config>,
    /// Listeners with their bound addresses (port 0 resolved).
    pub listeners: Vec<ListenerConfig>,
    /// Each listener's TLS settings (`None`: plain), in listener order.
    pub terminators: Vec<Option<Terminator>>,
    /// Each upstream group's TLS client (`None`: plain), in group order.
    pub connectors: Vec<Option<Connector>>,
}

/// Why a reload did not happen; the running config stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file does not load or validate, or changes a restart-only setting.
    #[error("{0}")]
    Config(ConfigError),
    #[error("a reload is already under way")]
    Busy,
    #[error("the gateway was started without a config file: there is nothing to re-read")]
    NoFile,
    #[error("cannot reach every worker: {0}")]
    Bus(BusError),
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    pub generation: u64,
    pub workers: usize,
    /// Workers that had not applied it within [`ACK_TIMEOUT`] (they will,
    /// when their event loop next runs).
    pub timed_out: Vec<usize>,
}

/// Each listener's TLS terminator and each group's TLS client (`None`: plain).
pub(crate) type TlsParts = (Vec<Option<Terminator>>, Vec<Option<Connector>>);

/// Builds each listener's TLS terminator and each TLS group's client.
pub(crate) fn tls_parts(
    config: &Config,
    tickets: &mut Option<Arc<dyn ProducesTickets>>,
) -> Result<TlsParts, ConfigError> {
    let error = |key: String| {
        move |reason: String| ConfigError {
            file: config.source.clone(),
            key,
            reason,
        }
    };
    let mut terminators = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        let Some(tls) = &l.tls else {
            terminators.push(None);
            continue;
        };
        let key = format!("listeners[{i}].tls");
        let shared = match tickets {
            Some(t) => t.clone(),
            None => tickets
                .insert(crate::tls::shared_ticketer().map_err(error(key.clone()))?)
                .clone(),
        };
        terminators.push(Some(
            Terminator::new(tls, l.http2, shared).map_err(error(key))?,
        ));
    }
    let mut connectors = Vec::new();
    for group in &config.upstreams {
        connectors.push(match &group.tls {
            None => None,
            Some(tls) => Some(
                Connector::new(tls, group.protocol == UpstreamProtocol::Http2)
                    .map_err(error(format!("upstreams.{}.tls", group.name)))?,
            ),
        });
    }
    Ok((terminators, connectors))
}

/// Addresses as the config file wrote them (port 0 before binding).
pub(crate) struct Written {
    pub listeners: Vec<SocketAddr>,
    pub admin: Option<SocketAddr>,
}

struct State {
    /// The config running now, listeners and admin at their bound addresses.
    config: Arc<Config>,
    written: Written,
    generation: u64,
    tickets: Option<Arc<dyn ProducesTickets>>,
    discovery: Option<crate::upstream::discovery::Discoverer>,
}

/// Reloads the running gateway's config; shared by the signal thread and
/// the admin API.
pub struct Reloader {
    bus: Arc<Bus>,
    access_log: Arc<crate::access_log::AccessLog>,
    busy: AtomicBool,
    state: Mutex<State>,
}

/// A reload sent to the workers, to wait for.
pub struct Pending<'r> {
    reloader: &'r Reloader,
    ack: Arc<Ack>,
    generation: u64,
    /// New listeners' ports (`crate::PortHold`), released with this.
    _holds: Vec<crate::PortHold>,
}

impl Reloader {
    pub(crate) fn new(
        bus: Arc<Bus>,
        config: Arc<Config>,
        written: Written,
        tickets: Option<Arc<dyn ProducesTickets>>,
        access_log: Arc<crate::access_log::AccessLog>,
    ) -> Reloader {
        Reloader {
            bus,
            access_log,
            busy: AtomicBool::new(false),
            state: Mutex::new(State {
                config,
                written,
                generation: 1,
                tickets,
                discovery: None,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The generation running now (1 at start).
    pub fn generation(&self) -> u64 {
        self.state().generation
    }

    pub(crate) fn set_discovery(&self, d: Option<crate::upstream::discovery::Discoverer>) {
        self.state().discovery = d;
    }

    /// Stops service discovery (the gateway is stopping).
    pub(crate) fn stop_discovery(&self) {
        drop(self.state().discovery.take());
    }

    /// Re-reads the config file and sends the new generation to every
    /// worker; wait on the result for them to apply it.
    pub fn begin(&self) -> Result<Pending<'_>, ReloadError> {
        if self.busy.swap(true, Ordering::AcqRel) {
            return Err(ReloadError::Busy);
        }
        let result = self.send();
        if result.is_err() {
            self.busy.store(false, Ordering::Release);
        }
        result
    }

    /// [`Reloader::begin`], then blocks the calling thread (never a
    /// worker's) until every worker applied it or [`ACK_TIMEOUT`] passed.
    pub fn reload_blocking(&self) -> Result<Reloaded, ReloadError> {
        let pending = self.begin()?;
        let all = pending.ack.wait_blocking(ACK_TIMEOUT);
        Ok(pending.finish(all))
    }

    fn send(&self) -> Result<Pending<'_>, ReloadError> {
        let mut state = self.state();
        let path = state.config.source.clone().ok_or(ReloadError::NoFile)?;
        let mut config = Config::load(&path).map_err(ReloadError::Config)?;
        config.check().map_err(|mut e| {
            e.file = Some(path.clone());
            ReloadError::Config(e)
        })?;
        restart_only(&state.config, &state.written, &config)?;
        let written = Written {
            listeners: config.listeners.iter().map(|l| l.address).collect(),
            admin: config.admin.as_ref().map(|a| a.listen),
        };
        if let Some(admin) = &mut config.admin {
            // Checked unchanged: the bound address stands for what was written.
            admin.listen = state
                .config
                .admin
                .as_ref()
                .map_or(admin.listen, |a| a.listen);
        }
        // New listeners' ports, held until the workers have applied the
        // generation (bound their own sockets) or the wait is over.
        let mut holds = Vec::new();
        for (i, l) in config.listeners.iter_mut().enumerate() {
            let kept = state
                .config
                .listeners
                .iter()
                .zip(&state.written.listeners)
                .find(|(bound, w)| **w == l.address || bound.address == l.address);
            l.address = match kept {
                Some((bound, _)) => bound.address,
                None => crate::probe_bind(l.address, &mut holds).map_err(|e| {
                    ReloadError::Config(ConfigError {
                        file: Some(path.clone()),
                        key: format!("listeners[{i}].address"),
                        reason: e.to_string(),
                    })
                })?,
            };
        }
        let (terminators, connectors) =
            tls_parts(&config, &mut state.tickets).map_err(ReloadError::Config)?;
        let generation = state.generation + 1;
        let config = Arc::new(config);
        let snapshot = Arc::new(Snapshot {
            generation,
            listeners: config.listeners.clone(),
            config: config.clone(),
            terminators,
            connectors,
        });
        let workers = self.bus.workers();
        let ack = Ack::new(workers);
        for worker in 0..workers {
            if let Err(e) =
                self.bus
                    .send(worker, Message::Reload(snapshot.clone()), Some(ack.clone()))
            {
                // Workers that took it apply it; the others are stopping or
                // flooded. Either way this generation is the one now.
                tracing::error!(worker, error = %e, "reload: a worker did not take the new config");
                state.generation = generation;
                state.config = config;
                state.written = written;
                return Err(ReloadError::Bus(e));
            }
        }
        let discovery_changed = discovery_of(&state.config) != discovery_of(&config);
        self.access_log.retarget(&config.access_log.target);
        state.generation = generation;
        state.config = config.clone();
        state.written = written;
        if discovery_changed {
            // After the new generation in every inbox: the new lists apply to it.
            drop(state.discovery.take());
            match crate::upstream::discovery::start(&config, self.bus.clone()) {
                Ok(d) => state.discovery = d,
                Err(e) => tracing::error!(error = %e, "reload: cannot restart service discovery"),
            }
        }
        tracing::info!(generation, file = %path.display(), "config reloaded: applying on every worker");
        Ok(Pending {
            reloader: self,
            ack,
            generation,
            _holds: holds,
        })
    }
}

impl Pending<'_> {
    /// Waits (on a worker's event loop) until every worker applied the
    /// generation or [`ACK_TIMEOUT`] passed.
    pub async fn wait(self) -> Reloaded {
        let all = monoio::time::timeout(ACK_TIMEOUT, self.ack.all())
            .await
            .is_ok();
        self.finish(all)
    }

    fn finish(self, all: bool) -> Reloaded {
        let timed_out = if all { Vec::new() } else { self.ack.missing() };
        if !timed_out.is_empty() {
            tracing::warn!(generation = self.generation, workers = ?timed_out,
                "reload: workers did not apply the new config in time");
        }
        Reloaded {
            generation: self.generation,
            workers: self.reloader.bus.workers(),
            timed_out,
        }
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.reloader.busy.store(false, Ordering::Release);
    }
}

fn discovery_of(config: &Config) -> Vec<(&str, &Option<crate::config::Discovery>)> {
    config
        .upstreams
        .iter()
        .map(|g| (g.name.as_str(), &g.discovery))
        .collect()
}

/// Refuses a change only a restart can make, naming it.
fn restart_only(running: &Config, written: &Written, next: &Config) -> Result<(), ReloadError> {
    let refuse = |key: &str, what: &str| {
        Err(ReloadError::Config(ConfigError {
            file: next.source.clone(),
            key: key.to_string(),
            reason: format!("{what} cannot change while running: restart (or upgrade) to apply it"),
        }))
    };
    let (a, b) = (&running.workers, &next.workers);
    if a.count != b.count {
        return refuse("workers.count", "the number of workers");
    }
    if a.cpus != b.cpus || a.pin != b.pin {
        return refuse("workers.cpus", "pinning");
    }
    if a.driver != b.driver {
        return refuse("workers.driver", "the io driver");
    }
    if a.recv_buffers != b.recv_buffers {
        return refuse("workers.recv_buffers", "the provided-buffer ring");
    }
    if a.upstream_recv_buffers != b.upstream_recv_buffers {
        return refuse(
            "workers.upstream_recv_buffers",
            "the upstream provided-buffer ring",
        );
    }
    if a.upstream_recv_buffer_size != b.upstream_recv_buffer_size {
        return refuse(
            "workers.upstream_recv_buffer_size",
            "the upstream provided-buffer ring",
        );
    }
    if a.ring_entries != b.ring_entries || a.sqpoll != b.sqpoll {
        return refuse("workers.ring_entries", "the io_uring ring");
    }
    let sizes = |w: &crate::config::WorkersConfig| {
        let mut all: Vec<(Option<usize>, u64, u64)> = w
            .overrides
            .iter()
            .map(|(k, p)| (Some(*k), p.cache_size, p.cache_max_object))
            .collect();
        all.push((None, w.per_core.cache_size, w.per_core.cache_max_object));
        all.sort();
        all
    };
    if sizes(a) != sizes(b) {
        return refuse(
            "workers.cache_size",
            "a worker's cache size or largest object",
        );
    }
    let next_admin = next.admin.as_ref().map(|x| x.listen);
    if next_admin != written.admin && next_admin != running.admin.as_ref().map(|x| x.listen) {
        return refuse("admin.listen", "the admin listener");
    }
    if running.cache.bus_capacity != next.cache.bus_capacity {
        return refuse("cache.bus_capacity", "the bus queues' size");
    }
    if running.cluster != next.cluster {
        return refuse("cluster", "the cluster settings");
    }
    if running.access_log.queue != next.access_log.queue {
        return refuse("access_log.queue", "the access log's queue length");
    }
    Ok(())
}
