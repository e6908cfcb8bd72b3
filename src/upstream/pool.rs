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
}

impl Pool {
    pub fn new(servers: usize, cap_per_server: usize, idle_timeout: Duration) -> Pool {
        Pool {
            idle: (0..servers).map(|_| VecDeque::new()).collect(),
            cap_per_server,
            idle_timeout,
        }
    }

    /// Makes room for a server that discovery added.
    pub fn add_server(&mut self) {
        self.idle.push(VecDeque::new());
    }

    /// Closes the idle connections to a server that left its group.
    pub fn close_idle(&mut self, server: usize) {
        if let Some(idle) = self.idle.get_mut(server) {
            idle.clear();
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
        if self.cap_per_server == 0 {
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
