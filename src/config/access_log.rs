//! `[access_log]`: one line per request (and per tunnel), written off the
//! request path (`crate::access_log`), and `[proxy] request_id`.

use std::path::PathBuf;
use std::time::Duration;

use super::{invalid, raw, ConfigError};

/// Where the lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    Stdout,
    File(PathBuf),
}

/// A line's layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// nginx's `combined`: `addr - - [time] "request" status bytes "referer" "agent"`.
    Combined,
    /// One JSON object per line, every field the gateway knows.
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    pub enabled: bool,
    pub target: LogTarget,
    pub format: LogFormat,
    /// The share of requests logged, in millionths (1,000,000: all).
    pub sample_ppm: u32,
    /// Bytes a worker gathers before handing them to the writer thread.
    pub buffer: usize,
    /// A worker hands over what it has at least this often.
    pub flush: Duration,
    /// Full buffers waiting for the writer; past this, lines are dropped
    /// (and counted), never waited for.
    pub queue: usize,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig {
            enabled: false,
            target: LogTarget::Stdout,
            format: LogFormat::Combined,
            sample_ppm: 1_000_000,
            buffer: 64 * 1024,
            flush: Duration::from_secs(1),
            queue: 256,
        }
    }
}

pub(super) fn validate_access_log(raw: &raw::RawAccessLog) -> Result<AccessLogConfig, ConfigError> {
    let d = AccessLogConfig::default();
    let target = match raw.path.as_deref() {
        None | Some("-") | Some("stdout") => LogTarget::Stdout,
        Some("") => return Err(invalid("access_log.path", "must not be empty")),
        Some(p) => LogTarget::File(PathBuf::from(p)),
    };
    let format = match raw.format.as_deref() {
        None | Some("combined") => LogFormat::Combined,
        Some("json") => LogFormat::Json,
        Some(other) => {
            return Err(invalid(
                "access_log.format",
                format!("\"{other}\": expected \"combined\" or \"json\""),
            ))
        }
    };
    let sample = raw.sample.unwrap_or(1.0);
    if !(sample > 0.0 && sample <= 1.0) {
        return Err(invalid(
            "access_log.sample",
            "must be above 0 and at most 1 (the share of requests logged)",
        ));
    }
    let buffer = raw.buffer.map_or(d.buffer as u64, |b| b.0);
    if !(4096..=16 << 20).contains(&buffer) {
        return Err(invalid(
            "access_log.buffer",
            "must be between 4KiB and 16MiB",
        ));
    }
    let flush = raw.flush.map_or(d.flush, |f| f.0);
    if flush < Duration::from_millis(10) || flush > Duration::from_secs(60) {
        return Err(invalid("access_log.flush", "must be between 10ms and 60s"));
    }
    let queue = raw.queue.unwrap_or(d.queue);
    if queue == 0 {
        return Err(invalid("access_log.queue", "must be at least 1"));
    }
    Ok(AccessLogConfig {
        enabled: raw.enabled.unwrap_or(raw.path.is_some()),
        target,
        format,
        sample_ppm: ((sample * 1e6).round() as u32).max(1),
        buffer: buffer as usize,
        flush,
        queue,
    })
}
