//! The upstream side of one worker: its servers, the balancer of each
//! group and the keep-alive connection pool. All of it is owned by the
//! worker; nothing here is shared between cores.

pub mod balancer;
pub mod discovery;
pub mod dns;
pub mod h1;
pub mod h2;
pub mod health;
pub mod pool;
pub mod retry;
pub mod sticky;

use std::net::SocketAddr;

use std::time::Instant;

use crate::config::{BalancePolicy, Config, OutlierPolicy, PerCoreConfig};
use crate::proxy::io::Stream;
use balancer::{Balancer, RequestKey, Rng, ServerLoad};
use pool::Pool;

/// One worker's view of every upstream group.
pub struct Upstreams {
    /// Every server of every group; a server's index is its identity in the pool.
    servers: Vec<SocketAddr>,
    /// `ip:port` of each server, for the Host header of HTTP/1.0 requests that had none.
    server_hosts: Vec<String>,
    groups: Vec<Balancer>,
    /// Each group's policy (for what a `hash` group reads from the request).
    policies: Vec<BalancePolicy>,
    /// Each group's server indices and circuit-breaker caps (0: none).
    members: Vec<Vec<usize>>,
    caps: Vec<(u32, u32)>,
    outliers: Vec<Option<OutlierPolicy>>,
    /// Servers active health checks found down (per server index).
    down: Vec<std::cell::Cell<bool>>,
    /// Per group: with every server down, send anyway (`true`) or refuse.
    fail_open: Vec<bool>,
    /// Per group: sticky-cookie settings, and server id -> server index.
    sticky: Vec<
        Option<(
            crate::config::StickyCookie,
            std::collections::HashMap<u64, usize>,
        )>,
    >,
    /// The group each server belongs to, indexed like `servers`.
    owner: Vec<usize>,
    /// Whether a probe loop runs for each server (on the probing worker).
    probing: Vec<std::cell::Cell<bool>>,
    worker_index: usize,
    /// This worker's view of each server's load, indexed like `servers`.
    loads: Vec<ServerLoad>,
    rng: Rng,
    pool: Pool,
    /// Per group: the TLS client of a group whose servers speak TLS.
    tls: Vec<Option<crate::tls::Connector>>,
    /// Per group: the servers speak HTTP/2.
    http2: Vec<bool>,
    /// The HTTP/2 connection to each server of such a group, once opened:
    /// every request of this worker to the server is a stream on it.
    /// With when it was last used, for the idle timeout.
    h2_senders: std::collections::HashMap<
        usize,
        (::h2::client::SendRequest<bytes::Bytes>, std::time::Instant),
    >,
    /// Servers an HTTP/2 connection is being opened to: the requests that
    /// arrive meanwhile wait for it rather than open their own.
    h2_opening: std::collections::HashSet<usize>,
    /// Per group: the last server list service discovery sent, if any.
    discovered: Vec<Option<Vec<(SocketAddr, u32)>>>,
}

impl Upstreams {
    /// The address of server `server`.
    pub fn addr(&self, server: usize) -> SocketAddr {
        self.servers[server]
    }

    /// `ip:port` of server `server`, for a request that came without a host.
    pub fn host_of(&self, server: usize) -> &str {
        &self.server_hosts[server]
    }

    /// The TLS client for `server`'s group, when its servers speak TLS.
    pub fn tls_for(&self, server: usize) -> Option<crate::tls::Connector> {
        self.tls.get(self.owner[server]).cloned().flatten()
    }

    /// Gives the worker its own copy of each group's TLS client (built once
    /// at start, with a session cache per worker).
    pub fn set_tls(&mut self, connectors: &[Option<crate::tls::Connector>]) {
        self.tls = connectors
            .iter()
            .map(|c| c.as_ref().map(crate::tls::Connector::for_worker))
            .collect();
    }

    /// An idle pooled connection to `server` that is still quiet, if any.
    pub fn take_connection(&mut self, server: usize) -> Option<Stream> {
        self.pool.take(server)
    }

    /// Returns a connection that finished an exchange cleanly to the pool.
    pub fn give_back(&mut self, server: usize, stream: Stream) {
        self.pool.put(server, stream);
    }

    /// Closes pooled connections idle for too long.
    pub fn sweep_pool(&mut self) {
        self.pool.sweep();
        // An HTTP/2 connection unused for the pool's idle timeout is let go:
        // it closes once its last stream ends.
        let limit = self.pool.idle_timeout();
        self.h2_senders
            .retain(|_, (_, used)| used.elapsed() < limit);
    }

    /// Idle pooled connections, and how many were discarded on checkout.
    pub fn pool_counts(&self) -> (usize, u64) {
        (self.pool.idle_counts().iter().sum(), self.pool.discarded)
    }

    /// One more (`+1`) or one fewer (`-1`) request in flight to `server`.
    pub fn add_outstanding(&self, server: usize, delta: i32) {
        let load = &self.loads[server].outstanding;
        load.set(load.get().saturating_add_signed(delta as _));
    }

    /// A response head from `server` took `latency` (for `peak_ewma`).
    pub fn record_latency(
        &self,
        server: usize,
        latency: std::time::Duration,
        now: std::time::Instant,
    ) {
        self.loads[server].record_latency(latency, now);
    }

    /// Whether a probe loop runs for `server` (on the probing worker).
    pub fn probing(&self, server: usize) -> &std::cell::Cell<bool> {
        &self.probing[server]
    }

    pub fn new(config: &Config, per_core: &PerCoreConfig, worker_index: usize) -> Upstreams {
        let mut servers = Vec::new();
        let mut groups = Vec::new();
        let mut owner = Vec::new();
        for (g, group) in config.upstreams.iter().enumerate() {
            let mut members = Vec::new();
            for s in &group.servers {
                members.push((servers.len(), s.weight, s.address.to_string()));
                servers.push(s.address);
                owner.push(g);
            }
            groups.push(Balancer::new(&members, &group.balance, worker_index));
        }
        let pool = Pool::new(
            servers.len(),
            per_core.upstream_pool_size,
            per_core.upstream_idle_timeout,
        );
        let server_hosts = servers.iter().map(SocketAddr::to_string).collect();
        Upstreams {
            owner,
            probing: servers
                .iter()
                .map(|_| std::cell::Cell::new(false))
                .collect(),
            worker_index,
            loads: servers.iter().map(|_| ServerLoad::default()).collect(),
            rng: Rng::new(
                0x9E37_79B9_7F4A_7C15 ^ (worker_index as u64).wrapping_mul(0xD1B5_4A32_D192_ED03),
            ),
            policies: config.upstreams.iter().map(|g| g.balance.clone()).collect(),
            caps: config
                .upstreams
                .iter()
                .map(|g| (g.max_pending, g.max_pending_per_server))
                .collect(),
            outliers: config.upstreams.iter().map(|g| g.outlier.clone()).collect(),
            down: servers
                .iter()
                .map(|_| std::cell::Cell::new(false))
                .collect(),
            fail_open: config
                .upstreams
                .iter()
                .map(|g| g.health.as_ref().is_none_or(|h| h.fail_open))
                .collect(),
            sticky: {
                let mut next = 0;
                config
                    .upstreams
                    .iter()
                    .map(|g| {
                        let ids = g
                            .servers
                            .iter()
                            .enumerate()
                            .map(|(i, s)| (sticky::server_id(&s.address.to_string()), next + i))
                            .collect();
                        next += g.servers.len();
                        g.sticky.clone().map(|s| (s, ids))
                    })
                    .collect()
            },
            members: {
                let mut next = 0;
                config
                    .upstreams
                    .iter()
                    .map(|g| {
                        let ids = (next..next + g.servers.len()).collect();
                        next += g.servers.len();
                        ids
                    })
                    .collect()
            },
            servers,
            server_hosts,
            groups,
            pool,
            tls: Vec::new(),
            http2: config
                .upstreams
                .iter()
                .map(|g| g.protocol == crate::config::UpstreamProtocol::Http2)
                .collect(),
            h2_senders: Default::default(),
            h2_opening: Default::default(),
            discovered: config.upstreams.iter().map(|_| None).collect(),
        }
    }

    /// Carries over what `old` (the previous config generation's upstreams)
    /// learnt about the servers this one keeps -- a group of the same name,
    /// a server of the same address: discovered server lists, health
    /// verdicts, ejections, and idle connections and HTTP/2 connections
    /// when the group connects the same way (TLS settings and protocol).
    /// Servers that are gone keep nothing: their idle connections close
    /// with `old`.
    pub fn inherit(&mut self, old: &mut Upstreams, old_config: &Config, config: &Config) {
        for (g, group) in config.upstreams.iter().enumerate() {
            let Some(og) = old_config
                .upstreams
                .iter()
                .position(|o| o.name == group.name)
            else {
                continue;
            };
            let old_group = &old_config.upstreams[og];
            if group.discovery.is_some() && group.discovery == old_group.discovery {
                if let Some(list) = old.discovered.get(og).cloned().flatten() {
                    self.set_servers(g, &list);
                    self.discovered[g] = Some(list);
                }
            }
            let same_wire = group.tls == old_group.tls && group.protocol == old_group.protocol;
            for &server in &self.members[g] {
                let addr = self.servers[server];
                let Some(&os) = old.members[og].iter().find(|&&os| old.servers[os] == addr) else {
                    continue;
                };
                self.down[server].set(old.down[os].get());
                let (load, old_load) = (&self.loads[server], &old.loads[os]);
                load.ejected_until.set(old_load.ejected_until.get());
                load.ejections.set(old_load.ejections.get());
                if same_wire {
                    self.pool.adopt(server, old.pool.hand_over(os));
                    if let Some(sender) = old.h2_senders.get(&os) {
                        self.h2_senders.insert(server, sender.clone());
                    }
                }
            }
        }
    }

    /// This generation was replaced: its idle connections close now, and
    /// those its requests in flight give back are closed, not kept.
    pub fn close_pool(&mut self) {
        for server in 0..self.servers.len() {
            self.pool.retire(server);
        }
        self.h2_senders.clear();
    }

    /// Whether active health checks found `server` down.
    pub fn is_down(&self, server: usize) -> bool {
        self.down.get(server).is_some_and(std::cell::Cell::get)
    }

    /// The group named `name` and its server at `addr`, if it has one.
    pub fn find_server(&self, group: usize, addr: SocketAddr) -> Option<usize> {
        self.members
            .get(group)?
            .iter()
            .copied()
            .find(|&s| self.servers[s] == addr)
    }

    /// The server's group speaks HTTP/2.
    pub fn speaks_h2(&self, server: usize) -> bool {
        self.http2.get(self.owner[server]).copied().unwrap_or(false)
    }

    /// The live HTTP/2 connection to `server`, to open a stream on; a
    /// connection that has ended is forgotten here.
    pub fn h2_sender(&mut self, server: usize) -> Option<::h2::client::SendRequest<bytes::Bytes>> {
        let (sender, used) = self.h2_senders.get_mut(&server)?;
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if let std::task::Poll::Ready(Err(_)) = sender.poll_ready(&mut cx) {
            self.h2_senders.remove(&server);
            return None;
        }
        *used = std::time::Instant::now();
        Some(sender.clone())
    }

    /// Marks an HTTP/2 connection to `server` as being opened (false: one
    /// already is; wait for it).
    pub fn start_opening_h2(&mut self, server: usize) -> bool {
        self.h2_opening.insert(server)
    }

    pub fn opening_h2(&self, server: usize) -> bool {
        self.h2_opening.contains(&server)
    }

    pub fn done_opening_h2(&mut self, server: usize) {
        self.h2_opening.remove(&server);
    }

    /// Keeps the HTTP/2 connection just opened to `server`.
    pub fn set_h2_sender(
        &mut self,
        server: usize,
        sender: ::h2::client::SendRequest<bytes::Bytes>,
    ) {
        self.h2_senders
            .insert(server, (sender, std::time::Instant::now()));
    }

    /// Picks a server for `group`, passing over servers that active health
    /// checks found down or that passive health checking ejected. With every
    /// server unavailable: any server when the group fails open, else `None` (503).
    pub fn pick_healthy(&mut self, group: usize, key: RequestKey, now: Instant) -> Option<usize> {
        let server = self.pick(group, key);
        let unavailable = |s: usize| self.down[s].get() || self.loads[s].is_ejected(now);
        if !unavailable(server) {
            return Some(server);
        }
        let out: Vec<usize> = self.members[group]
            .iter()
            .copied()
            .filter(|&s| unavailable(s))
            .collect();
        if out.len() == self.members[group].len() {
            let all_down = self.members[group].iter().all(|&s| self.down[s].get());
            return (!all_down || self.fail_open[group]).then_some(server);
        }
        Some(self.pick_other(group, key, &out))
    }

    /// The server a valid sticky cookie pins this request to, if it is available.
    pub fn pinned_server(
        &self,
        group: usize,
        headers: &[httparse::Header<'_>],
        now: Instant,
    ) -> Option<usize> {
        let (sticky, ids) = self.sticky[group].as_ref()?;
        let value = crate::cache::key::cookie_value(headers, &sticky.cookie)?;
        let id = sticky::verify(sticky.secret.as_bytes(), value)?;
        let server = *ids.get(&id)?;
        (!self.down[server].get() && !self.loads[server].is_ejected(now)).then_some(server)
    }

    /// The `Set-Cookie` line pinning a client to `server`, for sticky groups.
    pub fn pin_cookie(&self, group: usize, server: usize) -> Option<Vec<u8>> {
        let (sticky, _) = self.sticky[group].as_ref()?;
        Some(sticky::set_cookie_line(
            sticky,
            sticky::server_id(&self.server_hosts[server]),
        ))
    }

    /// Applies an active health check's verdict (sent to every worker over the bus).
    pub fn set_health(&self, server: usize, healthy: bool) {
        if let Some(flag) = self.down.get(server) {
            flag.set(!healthy);
        }
    }

    /// Server indices of `group`.
    pub fn members(&self, group: usize) -> &[usize] {
        &self.members[group]
    }

    /// Replaces `group`'s servers with `list` (service discovery). An address
    /// the group had keeps its index, and with it its pooled connections,
    /// load and health; a new one gets a fresh index. Requests in flight to
    /// a removed server finish on the connection they have, which is then
    /// closed instead of pooled; its idle connections are closed at once. Returns the servers that joined the group.
    pub fn set_servers(&mut self, group: usize, list: &[(SocketAddr, u32)]) -> Vec<usize> {
        if list.is_empty() || group >= self.groups.len() {
            return Vec::new();
        }
        self.discovered[group] = Some(list.to_vec());
        let mut joined = Vec::new();
        let mut members = Vec::with_capacity(list.len());
        for &(address, weight) in list {
            let known = (0..self.servers.len())
                .find(|&i| self.owner[i] == group && self.servers[i] == address);
            let index = match known {
                Some(i) => i,
                None => {
                    self.servers.push(address);
                    self.server_hosts.push(address.to_string());
                    self.owner.push(group);
                    self.down.push(std::cell::Cell::new(false));
                    self.probing.push(std::cell::Cell::new(false));
                    self.loads.push(ServerLoad::default());
                    self.pool.add_server();
                    self.servers.len() - 1
                }
            };
            if !self.members[group].contains(&index) {
                self.pool.reinstate(index);
                joined.push(index);
            }
            members.push((index, weight, address.to_string()));
        }
        for &old in &self.members[group] {
            if !members.iter().any(|m| m.0 == old) {
                self.pool.retire(old);
            }
        }
        self.groups[group] = Balancer::new(&members, &self.policies[group], self.worker_index);
        if let Some((_, ids)) = &mut self.sticky[group] {
            *ids = members
                .iter()
                .map(|m| (sticky::server_id(&m.2), m.0))
                .collect();
        }
        self.members[group] = members.iter().map(|m| m.0).collect();
        joined
    }

    /// Records how a request to `server` went, for passive health checking:
    /// `failed` is a connect failure, reset, timeout or 5xx.
    pub fn record_outcome(&self, group: usize, server: usize, failed: bool, now: Instant) {
        let Some(policy) = &self.outliers[group] else {
            return;
        };
        let load = &self.loads[server];
        if !failed {
            load.consecutive_failures.set(0);
            return;
        }
        let failures = load.consecutive_failures.get() + 1;
        load.consecutive_failures.set(failures);
        if failures < policy.consecutive_failures || load.is_ejected(now) {
            return;
        }
        let members = &self.members[group];
        let ejected = members
            .iter()
            .filter(|&&s| self.loads[s].is_ejected(now))
            .count();
        // The cap keeps some servers in rotation even when many look bad.
        if (ejected + 1) * 100 > members.len() * policy.max_ejected_percent as usize {
            return;
        }
        let length = policy
            .base_ejection
            .saturating_mul(1u32 << load.ejections.get().min(16))
            .min(policy.max_ejection);
        load.ejections.set(load.ejections.get() + 1);
        load.ejected_until.set(Some(now + length));
        load.consecutive_failures.set(0);
        tracing::warn!(upstream = %self.servers[server], ejected_for = ?length, "server ejected after consecutive failures");
    }

    /// Per-server state for `/stats`.
    pub fn server_snapshot(&self, now: Instant) -> Vec<serde_json::Value> {
        let idle = self.pool.idle_counts();
        self.servers
            .iter()
            .zip(&self.loads)
            .enumerate()
            .map(|(i, (addr, load))| {
                serde_json::json!({
                    "address": addr.to_string(),
                    "outstanding": load.outstanding.get(),
                    "latency_ewma_us": load.ewma().as_micros() as u64,
                    "consecutive_failures": load.consecutive_failures.get(),
                                        "ejected": load.is_ejected(now),
                    "healthy": !self.down[i].get(),
                    "ejections": load.ejections.get(),
                    "in_rotation": self.members[self.owner[i]].contains(&i),
                    "idle_connections": idle.get(i).copied().unwrap_or(0),
                })
            })
            .collect()
    }

    /// Picks a server of `group` other than those in `avoid` (when there is one).
    pub fn pick_other(&mut self, group: usize, key: RequestKey, avoid: &[usize]) -> usize {
        let mut server = self.pick(group, key);
        for _ in 0..self.members[group].len() * 2 {
            if !avoid.contains(&server) {
                return server;
            }
            // A hash policy keeps picking the same server: step to the next member instead.
            let members = &self.members[group];
            let at = members.iter().position(|&s| s == server).unwrap_or(0);
            let next = members[(at + 1) % members.len()];
            server = if matches!(self.policies[group], BalancePolicy::Hash(_)) {
                next
            } else {
                self.pick(group, key)
            };
        }
        server
    }

    /// Picks the server for the next request to `group`.
    pub fn pick(&mut self, group: usize, key: RequestKey) -> usize {
        self.groups[group].pick(key, &self.loads, &mut self.rng)
    }

    /// Circuit breaking: true when one more request to `server` of `group`
    /// would exceed the group's or the server's cap on requests in flight.
    pub fn over_capacity(&self, group: usize, server: usize) -> bool {
        let (group_cap, server_cap) = self.caps[group];
        (server_cap > 0 && self.loads[server].outstanding.get() >= server_cap)
            || (group_cap > 0
                && self.members[group]
                    .iter()
                    .map(|&s| self.loads[s].outstanding.get())
                    .sum::<u32>()
                    >= group_cap)
    }

    /// What the group's policy reads from the request (only `hash` reads anything).
    pub fn request_key(
        &self,
        group: usize,
        client_ip: &str,
        path: &str,
        headers: &[httparse::Header<'_>],
    ) -> RequestKey {
        match &self.policies[group] {
            BalancePolicy::Hash(on) => RequestKey {
                hash: balancer::request_hash(on, client_ip, path, headers),
            },
            _ => RequestKey::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn upstreams(servers: usize, percent: u32) -> Upstreams {
        let addrs = (0..servers)
            .map(|i| format!("127.0.0.1:{}", 9000 + i).parse().unwrap())
            .collect();
        let mut config = Config::quick("127.0.0.1:8080".parse().unwrap(), addrs);
        config.upstreams[0].outlier = Some(OutlierPolicy {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(100),
            max_ejected_percent: percent,
        });
        Upstreams::new(&config, &PerCoreConfig::default(), 0)
    }

    fn fail(u: &Upstreams, server: usize, times: u32, now: Instant) {
        for _ in 0..times {
            u.record_outcome(0, server, true, now);
        }
    }

    #[test]
    fn consecutive_failures_eject_and_success_resets_the_count() {
        let u = upstreams(2, 50);
        let now = Instant::now();
        fail(&u, 0, 2, now);
        u.record_outcome(0, 0, false, now);
        fail(&u, 0, 2, now);
        assert!(
            !u.loads[0].is_ejected(now),
            "a success in between resets the count"
        );
        fail(&u, 0, 1, now);
        assert!(u.loads[0].is_ejected(now));
        assert!(!u.loads[0].is_ejected(now + Duration::from_secs(31)));
    }

    #[test]
    fn ejection_backs_off_and_is_capped() {
        let u = upstreams(2, 50);
        let mut now = Instant::now();
        let mut lengths = Vec::new();
        for _ in 0..4 {
            fail(&u, 0, 3, now);
            let until = u.loads[0].ejected_until.get().unwrap();
            lengths.push(until - now);
            now = until;
        }
        let secs: Vec<u64> = lengths.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, vec![30, 60, 100, 100]);
    }

    #[test]
    fn no_more_than_the_allowed_share_is_ejected() {
        let u = upstreams(2, 50);
        let now = Instant::now();
        fail(&u, 0, 3, now);
        fail(&u, 1, 3, now);
        assert!(u.loads[0].is_ejected(now));
        assert!(
            !u.loads[1].is_ejected(now),
            "50% of 2 servers: one may be out, not both"
        );
    }

    #[test]
    fn picks_pass_over_ejected_servers() {
        let mut u = upstreams(3, 50);
        let now = Instant::now();
        fail(&u, 1, 3, now);
        for _ in 0..30 {
            assert_ne!(u.pick_healthy(0, RequestKey::default(), now), Some(1));
        }
    }

    #[test]
    fn servers_found_down_are_passed_over_and_all_down_fails_open_or_closed() {
        let mut u = upstreams(2, 50);
        let now = Instant::now();
        u.set_health(0, false);
        assert!((0..20).all(|_| u.pick_healthy(0, RequestKey::default(), now) == Some(1)));
        u.set_health(1, false);
        assert!(
            u.pick_healthy(0, RequestKey::default(), now).is_some(),
            "fails open by default"
        );
        u.fail_open[0] = false;
        assert_eq!(u.pick_healthy(0, RequestKey::default(), now), None);
    }
}
