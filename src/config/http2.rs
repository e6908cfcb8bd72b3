//! `[http2]`: the limits every HTTP/2 client connection runs under, with
//! nginx-like defaults. What HTTP/1 limits also bound (the head size, the
//! body size, the idle and send timeouts) is taken from `[limits]` and
//! `[timeouts]`, not repeated here.

use std::time::Duration;

use super::{invalid, raw, ConfigError};

/// Limits of HTTP/2 client connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Http2Config {
    /// Streams a client may have open at once (`SETTINGS_MAX_CONCURRENT_STREAMS`).
    pub max_concurrent_streams: u32,
    /// Each stream's receive window: how much of a request body the client
    /// may send before the gateway has read it.
    pub initial_window_size: u32,
    /// Requests served on one connection, then a graceful `GOAWAY`.
    pub max_requests: u64,
    /// Streams a client may reset within `reset_window` (Rapid Reset);
    /// one more closes the connection with `ENHANCE_YOUR_CALM`.
    pub max_client_resets: u32,
    pub reset_window: Duration,
}

impl Default for Http2Config {
    fn default() -> Self {
        Http2Config {
            max_concurrent_streams: 128,
            initial_window_size: 65_535,
            max_requests: 1000,
            max_client_resets: 100,
            reset_window: Duration::from_secs(10),
        }
    }
}

/// Largest window HTTP/2 allows (RFC 9113 section 6.9.1).
const MAX_WINDOW: u64 = (1 << 31) - 1;

pub(super) fn validate_http2(raw: &raw::RawHttp2) -> Result<Http2Config, ConfigError> {
    let d = Http2Config::default();
    let max_concurrent_streams = raw
        .max_concurrent_streams
        .unwrap_or(d.max_concurrent_streams);
    if max_concurrent_streams == 0 {
        return Err(invalid(
            "http2.max_concurrent_streams",
            "must be at least 1",
        ));
    }
    let window = raw
        .initial_window_size
        .map_or(d.initial_window_size as u64, |s| s.0);
    if !(1024..=MAX_WINDOW).contains(&window) {
        return Err(invalid(
            "http2.initial_window_size",
            format!("must be between 1KiB and {MAX_WINDOW} bytes"),
        ));
    }
    let max_requests = raw.max_requests.unwrap_or(d.max_requests);
    if max_requests == 0 {
        return Err(invalid("http2.max_requests", "must be at least 1"));
    }
    let reset_window = raw.reset_window.map_or(d.reset_window, |w| w.0);
    if reset_window.is_zero() {
        return Err(invalid("http2.reset_window", "must be longer than 0"));
    }
    Ok(Http2Config {
        max_concurrent_streams,
        initial_window_size: window as u32,
        max_requests,
        max_client_resets: raw.max_client_resets.unwrap_or(d.max_client_resets),
        reset_window,
    })
}
