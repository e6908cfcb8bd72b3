//! The upstream side of one worker: its servers, the balancer of each
//! group and the keep-alive connection pool. All of it is owned by the
//! worker; nothing here is shared between cores.

pub mod balancer;
pub mod pool;
pub mod retry;

use std::net::SocketAddr;

use crate::config::{BalancePolicy, Config, PerCoreConfig};
use balancer::{Balancer, RequestKey, Rng, ServerLoad};
use pool::Pool;

/// One worker's view of every upstream group.
pub struct Upstreams {
    /// Every server of every group; a server's index is its identity in the pool.
    pub servers: Vec<SocketAddr>,
    /// `ip:port` of each server, for the Host header of HTTP/1.0 requests that had none.
    pub server_hosts: Vec<String>,
    groups: Vec<Balancer>,
    /// Each group's policy (for what a `hash` group reads from the request).
    policies: Vec<BalancePolicy>,
    /// Each group's server indices and circuit-breaker caps (0: none).
    members: Vec<Vec<usize>>,
    caps: Vec<(u32, u32)>,
    /// This worker's view of each server's load, indexed like `servers`.
    pub loads: Vec<ServerLoad>,
    rng: Rng,
    pub pool: Pool,
}

impl Upstreams {
    pub fn new(config: &Config, per_core: &PerCoreConfig, worker_index: usize) -> Upstreams {
        let mut servers = Vec::new();
        let mut groups = Vec::new();
        for group in &config.upstreams {
            let mut members = Vec::new();
            for s in &group.servers {
                members.push((servers.len(), s.weight, s.address.to_string()));
                servers.push(s.address);
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
        }
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
