//! A worker's counters, for `/stats` and `/metrics`. Plain cells: only
//! the worker that owns them counts or reads them. Other modules count
//! through the methods here and never touch a cell.

use std::cell::Cell;

/// The plain event counters, by their key in `/stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    Accepted,
    Requests,
    UpstreamConnects,
    UpstreamReuses,
    UpstreamRetries,
    UpstreamErrors,
    ClientErrors,
    /// Connection tasks (or fills) that panicked, contained.
    Panics,
    /// Requests refused with 503 because a circuit breaker's cap was reached.
    BreakerTrips,
    /// Times the worker reached `max_connections` with no idle connection to close.
    ConnectionCapReached,
    /// Idle connections closed to make room at a connection cap.
    IdleClosedForRoom,
    /// Connections refused (503) at `max_connections_per_ip`.
    PerIpRefused,
    /// HTTP/2 client connections (after the connection preface).
    H2Connections,
    /// HTTP/2 streams (requests) accepted.
    H2Streams,
    /// HTTP/2 streams the client reset while the gateway worked on them.
    H2ClientResets,
    /// Graceful `GOAWAY`s sent (idle, drain, `max_requests`).
    H2Goaways,
    /// Connections ended with `ENHANCE_YOUR_CALM` (reset or other floods).
    H2Calm,
    /// Requests refused with 429 by a route's rate limit.
    RateLimited,
    /// Requests admitted uncounted: every rate-limit cell near their key
    /// was held by other live keys.
    RateLimitTableFull,
    /// Requests of a cluster rate limit decided by its `fail` mode: Redis
    /// did not answer in time, or is down.
    RateLimitUnavailable,
    /// Receives that found the provided-buffer ring empty and read into a
    /// buffer of their own instead.
    RecvBuffersEmpty,
}

impl Counter {
    /// Every counter with its key in `/stats`, in index order.
    pub const ALL: [(Counter, &'static str); 21] = [
        (Counter::Accepted, "accepted"),
        (Counter::Requests, "requests"),
        (Counter::UpstreamConnects, "upstream_connects"),
        (Counter::UpstreamReuses, "upstream_reuses"),
        (Counter::UpstreamRetries, "upstream_retries"),
        (Counter::UpstreamErrors, "upstream_errors"),
        (Counter::ClientErrors, "client_errors"),
        (Counter::Panics, "panics"),
        (Counter::BreakerTrips, "breaker_trips"),
        (Counter::ConnectionCapReached, "connection_cap_reached"),
        (Counter::IdleClosedForRoom, "idle_closed_for_room"),
        (Counter::PerIpRefused, "per_ip_refused"),
        (Counter::H2Connections, "h2_connections"),
        (Counter::H2Streams, "h2_streams"),
        (Counter::H2ClientResets, "h2_client_resets"),
        (Counter::H2Goaways, "h2_goaways"),
        (Counter::H2Calm, "h2_enhance_your_calm"),
        (Counter::RateLimited, "rate_limited"),
        (Counter::RateLimitTableFull, "rate_limit_table_full"),
        (Counter::RateLimitUnavailable, "rate_limit_unavailable"),
        (Counter::RecvBuffersEmpty, "recv_buffers_empty"),
    ];
}

/// Per-worker counters.
#[derive(Default, Debug)]
pub struct Stats {
    counts: [Cell<u64>; Counter::ALL.len()],
    tls: TlsStats,
    tunnels: TunnelStats,
    h2_resets: H2Resets,
}

/// The names HTTP/2 stream resets are counted under: RFC 9113 section 7's
/// error codes, indexed by code, then `other` for codes it does not define.
pub const H2_RESET_REASONS: [&str; 15] = [
    "no_error",
    "protocol_error",
    "internal_error",
    "flow_control_error",
    "settings_timeout",
    "stream_closed",
    "frame_size_error",
    "refused_stream",
    "cancel",
    "compression_error",
    "connect_error",
    "enhance_your_calm",
    "inadequate_security",
    "http_1_1_required",
    "other",
];

/// HTTP/2 streams reset on this worker, by who reset them and why.
#[derive(Default, Debug)]
struct H2Resets {
    /// `RST_STREAM` from clients, on streams the gateway was serving.
    client: [Cell<u64>; H2_RESET_REASONS.len()],
    /// `RST_STREAM` the gateway sent (a stalled window, a response cut short).
    gateway: [Cell<u64>; H2_RESET_REASONS.len()],
}

/// TLS handshakes on this worker's listeners.
#[derive(Default, Debug)]
struct TlsStats {
    handshakes: Cell<u64>,
    resumed: Cell<u64>,
    tls13: Cell<u64>,
    tls12: Cell<u64>,
    /// Failed handshakes, by `tls::FAILURE_REASONS`.
    failures: [Cell<u64>; crate::tls::FAILURE_REASONS.len()],
}

/// Upgraded connections (WebSocket tunnels) on this worker.
#[derive(Default, Debug)]
struct TunnelStats {
    /// Tunnels open now.
    open: Cell<u64>,
    /// Tunnels opened since start.
    opened: Cell<u64>,
    /// Bytes passed from clients to upstreams, and back.
    bytes_up: Cell<u64>,
    bytes_down: Cell<u64>,
}

fn add(cell: &Cell<u64>, n: u64) {
    cell.set(cell.get() + n);
}

impl Stats {
    /// One more of `counter`.
    pub fn count(&self, counter: Counter) {
        add(&self.counts[counter as usize], 1);
    }

    pub fn get(&self, counter: Counter) -> u64 {
        self.counts[counter as usize].get()
    }

    /// A finished handshake: its version and whether it resumed.
    pub fn tls_handshake(&self, facts: &crate::tls::Negotiated) {
        let t = &self.tls;
        add(&t.handshakes, 1);
        add(if facts.tls13 { &t.tls13 } else { &t.tls12 }, 1);
        if facts.resumed {
            add(&t.resumed, 1);
        }
    }

    /// A failed handshake, by its reason (`tls::FAILURE_REASONS`).
    pub fn tls_failed(&self, reason: &str) {
        let reasons = crate::tls::FAILURE_REASONS;
        let i = reasons
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(reasons.len() - 1);
        add(&self.tls.failures[i], 1);
    }

    /// An HTTP/2 stream reset, by the client (`by_client`) or the gateway,
    /// with its error code (counted under [`H2_RESET_REASONS`]).
    pub fn h2_reset(&self, by_client: bool, code: u32) {
        let other = H2_RESET_REASONS.len() - 1;
        let i = (code as usize).min(other);
        let side = match by_client {
            true => &self.h2_resets.client,
            false => &self.h2_resets.gateway,
        };
        add(&side[i], 1);
    }

    pub fn h2_resets_snapshot(&self) -> serde_json::Value {
        let side = |cells: &[Cell<u64>]| -> serde_json::Map<String, serde_json::Value> {
            H2_RESET_REASONS
                .iter()
                .zip(cells)
                .map(|(r, c)| (r.to_string(), c.get().into()))
                .collect()
        };
        serde_json::json!({
            "client": side(&self.h2_resets.client),
            "gateway": side(&self.h2_resets.gateway),
        })
    }

    /// A tunnel opens: counted as open until the guard drops (a forced
    /// close drops it mid-flight too).
    pub fn tunnel_opened(&self) -> OpenTunnel<'_> {
        add(&self.tunnels.opened, 1);
        add(&self.tunnels.open, 1);
        OpenTunnel(&self.tunnels.open)
    }

    /// Bytes tunnelled from the client to the upstream (`up`) or back.
    pub fn tunnel_bytes(&self, up: bool, n: usize) {
        let t = &self.tunnels;
        add(if up { &t.bytes_up } else { &t.bytes_down }, n as u64);
    }

    pub fn tls_snapshot(&self) -> serde_json::Value {
        let t = &self.tls;
        let failures: serde_json::Map<String, serde_json::Value> = crate::tls::FAILURE_REASONS
            .iter()
            .zip(&t.failures)
            .map(|(r, c)| (r.to_string(), c.get().into()))
            .collect();
        serde_json::json!({
            "handshakes": t.handshakes.get(),
            "resumed": t.resumed.get(),
            "tls13": t.tls13.get(),
            "tls12": t.tls12.get(),
            "failed": t.failures.iter().map(Cell::get).sum::<u64>(),
            "failures": failures,
        })
    }

    pub fn tunnels_snapshot(&self) -> serde_json::Value {
        let t = &self.tunnels;
        serde_json::json!({
            "open": t.open.get(),
            "opened": t.opened.get(),
            "bytes_up": t.bytes_up.get(),
            "bytes_down": t.bytes_down.get(),
        })
    }
}

/// A tunnel counted as open while this lives.
pub struct OpenTunnel<'a>(&'a Cell<u64>);

impl Drop for OpenTunnel<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_indexed_in_order() {
        for (i, (counter, _)) in Counter::ALL.iter().enumerate() {
            assert_eq!(*counter as usize, i);
        }
        let s = Stats::default();
        s.count(Counter::Requests);
        s.count(Counter::Requests);
        assert_eq!(s.get(Counter::Requests), 2);
        assert_eq!(s.get(Counter::Accepted), 0);
        {
            let _open = s.tunnel_opened();
            assert_eq!(s.tunnels_snapshot()["open"], 1);
        }
        assert_eq!(s.tunnels_snapshot()["open"], 0);
        assert_eq!(s.tunnels_snapshot()["opened"], 1);
        s.h2_reset(true, 0x8);
        s.h2_reset(false, 0x77);
        let resets = s.h2_resets_snapshot();
        assert_eq!(resets["client"]["cancel"], 1);
        assert_eq!(resets["gateway"]["other"], 1);
        assert_eq!(resets["gateway"]["cancel"], 0);
    }
}
