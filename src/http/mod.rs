//! HTTP/1.1 wire handling: strict request and response head parsing
//! (httparse plus our own framing rules), the canonical form of a request's
//! host and path (`target`), the chunked body decoder, header
//! classification, HTTP-date parsing, and the small serialisation helpers the proxy needs.
//!
//! Nothing here does I/O: every function works on byte slices, so each
//! framing rule has a unit test on exact bytes.

pub mod chunked;
pub mod date;
pub mod error;
pub mod headers;
pub mod request;
pub mod response;
pub mod target;

pub use error::HttpError;

/// Protocol version of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// How a message body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body at all.
    None,
    /// Exactly this many bytes (`Content-Length`).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the sender closes the connection (responses only).
    UntilClose,
}

/// Request methods the gateway treats specially; anything else is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Patch,
    Options,
    Trace,
    Connect,
    Other,
}

impl Method {
    pub fn from_bytes(m: &[u8]) -> Method {
        match m {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            b"DELETE" => Method::Delete,
            b"PATCH" => Method::Patch,
            b"OPTIONS" => Method::Options,
            b"TRACE" => Method::Trace,
            b"CONNECT" => Method::Connect,
            _ => Method::Other,
        }
    }

    /// RFC 9110 section 9.2.1: known not to change anything at the origin.
    /// A method this gateway does not know (`M-SEARCH`, `PROPPATCH`) is not.
    pub fn is_safe(self) -> bool {
        matches!(
            self,
            Method::Get | Method::Head | Method::Options | Method::Trace
        )
    }

    /// RFC 9110 section 9.2.2: safe to repeat, so a failed attempt may be retried.
    pub fn is_idempotent(self) -> bool {
        matches!(
            self,
            Method::Get
                | Method::Head
                | Method::Put
                | Method::Delete
                | Method::Options
                | Method::Trace
        )
    }
}
