//! Per-worker keep-alive pool of upstream connections.
//!
//! Idle connections are kept per server, most recently used first (a warm
//! connection is least likely to have been closed by the server), capped
//! per server, and closed once idle longer than the idle timeout: lazily
//! when met, and by the worker's periodic sweep.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

struct Idle {
    stream: TcpStream,
    since: Instant,
}

pub struct Pool {
    idle: Vec<VecDeque<Idle>>,
    cap_per_server: usize,
    idle_timeout: Duration,
    /// Servers that left their group: their connections are not kept.
    retired: Vec<bool>,
}

impl Pool {
    pub fn new(servers: usize, cap_per_server: usize, idle_timeout: Duration) -> Pool {
        Pool {
            idle: (0..servers).map(|_| VecDeque::new()).collect(),
            retired: vec![false; servers],
            cap_per_server,
            idle_timeout,
        }
    }

    /// Makes room for a server that discovery added.
    pub fn add_server(&mut self) {
        self.idle.push(VecDeque::new());
        self.retired.push(false);
    }

    /// A server left its group: closes its idle connections now, and those
    /// of requests still in flight when they come back.
    pub fn retire(&mut self, server: usize) {
        if let Some(idle) = self.idle.get_mut(server) {
            idle.clear();
            self.retired[server] = true;
        }
    }

    /// A server is back in its group: its connections are kept again.
    pub fn reinstate(&mut self, server: usize) {
        if let Some(retired) = self.retired.get_mut(server) {
            *retired = false;
        }
    }

    /// The most recently returned live connection to `server`, if any.
    pub fn take(&mut self, server: usize) -> Option<TcpStream> {
        let now = Instant::now();
        let idle = &mut self.idle[server];
        while let Some(conn) = idle.pop_back() {
            if now.duration_since(conn.since) < self.idle_timeout {
                return Some(conn.stream);
            }
            // Everything older is expired too.
            idle.clear();
        }
        None
    }

    /// Returns a connection that finished an exchange cleanly.
    pub fn put(&mut self, server: usize, stream: TcpStream) {
        if self.cap_per_server == 0 || self.retired[server] {
            return;
        }
        let idle = &mut self.idle[server];
        if idle.len() >= self.cap_per_server {
            idle.pop_front();
        }
        idle.push_back(Idle {
            stream,
            since: Instant::now(),
        });
    }

    /// Closes connections idle longer than the timeout.
    pub fn sweep(&mut self) {
        let now = Instant::now();
        for idle in &mut self.idle {
            while idle
                .front()
                .is_some_and(|c| now.duration_since(c.since) >= self.idle_timeout)
            {
                idle.pop_front();
            }
        }
    }

    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// Idle connections per server.
    pub fn idle_counts(&self) -> Vec<usize> {
        self.idle.iter().map(VecDeque::len).collect()
    }
}
