//! Per-worker keep-alive pool of upstream connections.
//!
//! Idle connections are kept per server, most recently used first (a warm
//! connection is least likely to have been closed by the server), capped
//! per server, and closed once idle longer than the idle timeout: lazily
//! when met, and by the worker's periodic sweep (at least once a second),
//! which also closes those the server closed or wrote on meanwhile, so a
//! server's shorter keep-alive leaves no half-closed socket (nor, on the
//! upstream ring, the buffer its close or bytes took) waiting for our idle
//! timeout.
//!
//! A connection is checked before it is handed out
//! ([`Stream::is_quiet`]: what its armed receive on the worker's upstream
//! ring took while it was idle, or else a non-blocking peek, [`is_quiet`]):
//! one the server closed, or on which it sent bytes nobody asked for (a
//! late or duplicated response), is discarded. Such bytes would otherwise
//! be read as the answer to the next request sent on that connection:
//! another client's response, and perhaps cached.

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use crate::proxy::io::Stream;

/// True when nothing is waiting to be read on an idle connection: no
/// byte, no end of stream, no error. One non-blocking `recv(MSG_PEEK)`.
pub fn is_quiet(stream: &TcpStream) -> bool {
    let mut byte = 0u8;
    // SAFETY: recv writes at most one byte into `byte`, which outlives the
    // call; the descriptor belongs to `stream`, borrowed for the call (a
    // peek takes nothing from the socket, whatever else is armed on it).
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && {
        let e = std::io::Error::last_os_error().raw_os_error();
        e == Some(libc::EAGAIN) || e == Some(libc::EWOULDBLOCK)
    }
}

pub struct Idle {
    stream: Stream,
    since: Instant,
}

pub struct Pool {
    idle: Vec<VecDeque<Idle>>,
    cap_per_server: usize,
    idle_timeout: Duration,
    /// Servers that left their group: their connections are not kept.
    retired: Vec<bool>,
    /// Idle connections discarded (when taken or swept): closed by the
    /// server, or holding bytes it sent unasked.
    pub discarded: u64,
}

impl Pool {
    pub fn new(servers: usize, cap_per_server: usize, idle_timeout: Duration) -> Pool {
        Pool {
            idle: (0..servers).map(|_| VecDeque::new()).collect(),
            retired: vec![false; servers],
            cap_per_server,
            idle_timeout,
            discarded: 0,
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

    /// The most recently returned connection to `server` that is still
    /// open and quiet, if any; the others met on the way are closed.
    pub fn take(&mut self, server: usize) -> Option<Stream> {
        let now = monoio::time::recent();
        let idle = &mut self.idle[server];
        while let Some(mut conn) = idle.pop_back() {
            if now.duration_since(conn.since) >= self.idle_timeout {
                // Everything older is expired too.
                idle.clear();
                return None;
            }
            if conn.stream.is_quiet() {
                return Some(conn.stream);
            }
            self.discarded += 1;
        }
        None
    }

    /// Returns a connection that finished an exchange cleanly.
    pub fn put(&mut self, server: usize, stream: Stream) {
        // An HTTP/2 stream is done once answered: the connection it ran on
        // is shared by every request to the server (`upstream::h2`).
        if self.cap_per_server == 0 || self.retired[server] || matches!(stream, Stream::H2(_)) {
            return;
        }
        let idle = &mut self.idle[server];
        if idle.len() >= self.cap_per_server {
            idle.pop_front();
        }
        idle.push_back(Idle {
            stream,
            since: monoio::time::recent(),
        });
    }

    /// Hands `server`'s idle connections over (to the next config generation's pool).
    pub fn hand_over(&mut self, server: usize) -> VecDeque<Idle> {
        self.idle
            .get_mut(server)
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Takes idle connections another pool handed over, within this pool's cap.
    pub fn adopt(&mut self, server: usize, mut conns: VecDeque<Idle>) {
        if self.cap_per_server == 0 || self.retired[server] {
            return;
        }
        while conns.len() > self.cap_per_server {
            conns.pop_front();
        }
        self.idle[server] = conns;
    }

    /// Closes connections idle longer than the timeout, and those that are
    /// no longer quiet (the server closed them or wrote on them): through
    /// an armed receive on the upstream ring that costs no system call,
    /// else one peek each.
    pub fn sweep(&mut self) {
        let now = monoio::time::recent();
        for idle in &mut self.idle {
            while idle
                .front()
                .is_some_and(|c| now.duration_since(c.since) >= self.idle_timeout)
            {
                idle.pop_front();
            }
            let before = idle.len();
            idle.retain_mut(|c| c.stream.is_quiet());
            self.discarded += (before - idle.len()) as u64;
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
