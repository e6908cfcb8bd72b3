//! Errors of one request exchange. Each says which side it came from
//! (downstream client, upstream server, or the gateway itself), whether
//! repeating the request elsewhere is safe, and which status, if any, the
//! client should get.

use std::fmt;
use std::io;
use std::net::SocketAddr;

use crate::http::HttpError;

/// Where an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client: bad request, timeout, disconnect.
    Downstream,
    /// The upstream server: refused, reset, timed out, bad response.
    Upstream,
    /// The gateway itself.
    Internal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request broke a framing rule or limit.
    BadRequest(HttpError),
    /// The client did not send its head or body in time.
    ClientTimeout,
    /// The client went away or its socket failed.
    ClientIo,
    /// No route matches the request.
    NoRoute,
    /// The route's session token is missing or does not verify.
    Unauthorized,
    /// `only-if-cached` and nothing usable is stored.
    NotCached,
    /// Every server of the group is down and it does not fail open.
    NoHealthyServer,
    /// A circuit breaker's cap is reached.
    OverCapacity,
    /// A cluster rate limit with `fail = "closed"` could not ask Redis.
    LimiterUnavailable,
    ConnectRefused,
    ConnectTimeout,
    /// The TLS handshake with an upstream of a TLS group failed (its
    /// certificate did not verify, or it does not speak TLS).
    UpstreamTls,
    /// The upstream closed or reset before sending any response byte.
    UpstreamClosedEarly,
    /// The upstream did not answer within the response timeout.
    ResponseTimeout,
    /// The upstream's response broke a framing rule.
    BadResponse(HttpError),
    /// The upstream failed while a response was already being relayed.
    UpstreamBroken,
    /// The upstream answered with a status the route retries on (the
    /// response was not relayed).
    RetryStatus(u16),
}

/// How far an exchange with an upstream got when it failed: with the
/// error's kind, it decides whether the request may be sent again
/// ([`ProxyError::retry_safe`]) and it is named in the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The client side failed (no upstream exchange is involved).
    Downstream,
    /// Connecting (and the TLS handshake): nothing was sent.
    Connect,
    /// Writing the request head, and the body when it went with the head.
    Request,
    /// Streaming the rest of a request body: the server has part of it.
    RequestBody,
    /// The request is out; no byte of the response came yet.
    AwaitingResponse,
    /// Reading the response head, after its first byte.
    ResponseHead,
    /// Reading or relaying the response body.
    ResponseBody,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Downstream => "client",
            Stage::Connect => "connect",
            Stage::Request => "request",
            Stage::RequestBody => "request body",
            Stage::AwaitingResponse => "awaiting response",
            Stage::ResponseHead => "response head",
            Stage::ResponseBody => "response body",
        }
    }
}

/// A failed exchange.
#[derive(Debug)]
pub struct ProxyError {
    pub side: Side,
    pub kind: ErrorKind,
    /// Where in the exchange it failed.
    pub stage: Stage,
    pub upstream: Option<SocketAddr>,
    pub source: Option<io::Error>,
}

impl ProxyError {
    pub fn downstream(kind: ErrorKind, source: Option<io::Error>) -> ProxyError {
        ProxyError {
            side: Side::Downstream,
            kind,
            stage: Stage::Downstream,
            upstream: None,
            source,
        }
    }

    pub fn upstream(
        kind: ErrorKind,
        upstream: SocketAddr,
        stage: Stage,
        source: Option<io::Error>,
    ) -> ProxyError {
        ProxyError {
            side: Side::Upstream,
            kind,
            stage,
            upstream: Some(upstream),
            source,
        }
    }

    /// Sending the request again, on a fresh connection or another server,
    /// cannot make a server act on it twice: nothing was sent (connect), the
    /// connection was found closed as the request went out or before any
    /// response byte (a pooled connection the server had closed), or the
    /// server answered with a status the route retries on. A timeout or a
    /// failure once the response began is never retried: the server may be
    /// acting on the request.
    pub fn retry_safe(&self) -> bool {
        matches!(
            (self.kind, self.stage),
            (ErrorKind::RetryStatus(_), _)
                | (_, Stage::Connect)
                | (
                    ErrorKind::UpstreamClosedEarly,
                    Stage::Request | Stage::AwaitingResponse
                )
        )
    }

    /// The status to answer with, or `None` when no response can be sent
    /// (the client is gone, or a response was already under way).
    pub fn status(&self) -> Option<u16> {
        self.kind.status()
    }
}

impl ErrorKind {
    /// The one table from what went wrong to the status the client gets
    /// (`None`: no response can be sent).
    pub fn status(self) -> Option<u16> {
        match self {
            ErrorKind::BadRequest(e) => Some(e.status()),
            ErrorKind::ClientTimeout => Some(408),
            ErrorKind::ClientIo | ErrorKind::UpstreamBroken => None,
            ErrorKind::NoRoute => Some(404),
            ErrorKind::Unauthorized => Some(401),
            ErrorKind::NotCached => Some(504),
            ErrorKind::NoHealthyServer
            | ErrorKind::OverCapacity
            | ErrorKind::LimiterUnavailable => Some(503),
            ErrorKind::ConnectRefused
            | ErrorKind::UpstreamTls
            | ErrorKind::UpstreamClosedEarly
            | ErrorKind::BadResponse(_) => Some(502),
            ErrorKind::RetryStatus(status) => Some(status),
            ErrorKind::ConnectTimeout | ErrorKind::ResponseTimeout => Some(504),
        }
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            ErrorKind::BadRequest(e) => return write!(f, "bad request from the client: {e}"),
            ErrorKind::BadResponse(e) => {
                write!(f, "bad upstream response: {e}")?;
                if let Some(addr) = self.upstream {
                    write!(f, " ({addr})")?;
                }
                return Ok(());
            }
            ErrorKind::ClientTimeout => "client timed out",
            ErrorKind::ClientIo => "client connection failed",
            ErrorKind::NoRoute => "no route matches",
            ErrorKind::Unauthorized => "session token refused",
            ErrorKind::NotCached => "only-if-cached and nothing usable stored",
            ErrorKind::NoHealthyServer => "no healthy server in the group",
            ErrorKind::OverCapacity => "circuit breaker open",
            ErrorKind::LimiterUnavailable => "the cluster rate limit cannot reach Redis",
            ErrorKind::ConnectRefused => "upstream connect failed",
            ErrorKind::ConnectTimeout => "upstream connect timed out",
            ErrorKind::UpstreamTls => "upstream TLS handshake failed",
            ErrorKind::UpstreamClosedEarly => "upstream closed before responding",
            ErrorKind::ResponseTimeout => "upstream response timed out",
            ErrorKind::UpstreamBroken => "upstream failed mid-response",
            ErrorKind::RetryStatus(status) => {
                return write!(f, "upstream answered {status}, retrying")
            }
        };
        f.write_str(what)?;
        if let Some(addr) = self.upstream {
            write!(f, " ({addr})")?;
        }
        if let Some(e) = &self.source {
            write!(f, ": {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ProxyError {
    /// The I/O error underneath, or the framing rule a message broke.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        if let Some(e) = &self.source {
            return Some(e);
        }
        match &self.kind {
            ErrorKind::BadRequest(e) | ErrorKind::BadResponse(e) => Some(e),
            _ => None,
        }
    }
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: io::Error,
    },
    #[error("worker {index}: {reason}")]
    Worker { index: usize, reason: String },
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error;

    #[test]
    fn retry_safety_comes_from_the_kind_and_the_stage() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let e = |kind, stage| ProxyError::upstream(kind, addr, stage, None);
        assert!(e(ErrorKind::ConnectRefused, Stage::Connect).retry_safe());
        assert!(e(ErrorKind::UpstreamTls, Stage::Connect).retry_safe());
        assert!(e(ErrorKind::UpstreamClosedEarly, Stage::Request).retry_safe());
        assert!(e(ErrorKind::UpstreamClosedEarly, Stage::AwaitingResponse).retry_safe());
        assert!(e(ErrorKind::RetryStatus(503), Stage::ResponseHead).retry_safe());
        // The server may be acting on it: never sent twice.
        assert!(!e(ErrorKind::ResponseTimeout, Stage::AwaitingResponse).retry_safe());
        assert!(!e(ErrorKind::UpstreamClosedEarly, Stage::RequestBody).retry_safe());
        assert!(!e(ErrorKind::UpstreamClosedEarly, Stage::ResponseHead).retry_safe());
        assert!(!e(ErrorKind::UpstreamBroken, Stage::ResponseBody).retry_safe());
        assert!(!ProxyError::downstream(ErrorKind::ClientIo, None).retry_safe());
    }

    #[test]
    fn the_source_is_the_io_error_or_the_broken_rule() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let refused = ProxyError::upstream(
            ErrorKind::ConnectRefused,
            addr,
            Stage::Connect,
            Some(io::Error::from(io::ErrorKind::ConnectionRefused)),
        );
        assert!(refused.source().is_some_and(|e| e.is::<io::Error>()));
        let bad = ProxyError::upstream(
            ErrorKind::BadResponse(HttpError::Malformed),
            addr,
            Stage::ResponseHead,
            None,
        );
        assert!(bad.source().is_some_and(|e| e.is::<HttpError>()));
        assert!(ProxyError::downstream(ErrorKind::ClientTimeout, None)
            .source()
            .is_none());
    }
}
