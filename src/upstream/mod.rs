//! The upstream side of one worker: its servers, the balancer of each
//! group and the keep-alive connection pool. All of it is owned by the
//! worker; nothing here is shared between cores.

pub mod balancer;
pub mod pool;

use std::net::SocketAddr;

use crate::config::{Config, PerCoreConfig};
use balancer::Balancer;
use pool::Pool;

/// One worker's view of every upstream group.
pub struct Upstreams {
    /// Every server of every group; a server's index is its identity in the pool.
    pub servers: Vec<SocketAddr>,
    /// `ip:port` of each server, for the Host header of HTTP/1.0 requests that had none.
    pub server_hosts: Vec<String>,
    groups: Vec<Balancer>,
    pub pool: Pool,
}

impl Upstreams {
    pub fn new(config: &Config, per_core: &PerCoreConfig, worker_index: usize) -> Upstreams {
        let mut servers = Vec::new();
        let mut groups = Vec::new();
        for group in &config.upstreams {
            let mut members = Vec::new();
            for s in &group.servers {
                members.push((servers.len(), s.weight));
                servers.push(s.address);
            }
            groups.push(Balancer::new(&members, worker_index));
        }
        let pool = Pool::new(
            servers.len(),
            per_core.upstream_pool_size,
            per_core.upstream_idle_timeout,
        );
        let server_hosts = servers.iter().map(SocketAddr::to_string).collect();
        Upstreams {
            servers,
            server_hosts,
            groups,
            pool,
        }
    }

    /// Picks the server for the next request to `group`.
    pub fn pick(&mut self, group: usize) -> usize {
        self.groups[group].pick()
    }
}
