//! Why a message was refused, and the status code each reason maps to.
//! The same reasons serve requests and upstream responses, so their wording
//! names neither side: the error that carries one says which side it was.

use thiserror::Error;

/// A request (or upstream response) the gateway will not accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum HttpError {
    #[error("malformed start line or header field")]
    Malformed,
    #[error("bare LF or CR in the head")]
    BareLineEnding,
    #[error("unsupported HTTP version")]
    Version,
    #[error("head too large")]
    HeadTooLarge,
    #[error("too many header fields")]
    TooManyHeaders,
    #[error("invalid request target or path")]
    BadTarget,
    #[error("missing Host header")]
    MissingHost,
    #[error("more than one Host header")]
    DuplicateHost,
    #[error("invalid Host header")]
    BadHost,
    #[error("invalid Content-Length")]
    BadContentLength,
    #[error("more than one Content-Length")]
    DuplicateContentLength,
    #[error("both Content-Length and Transfer-Encoding")]
    LengthAndChunked,
    #[error("unsupported transfer coding")]
    UnknownTransferCoding,
    #[error("invalid Transfer-Encoding")]
    BadTransferEncoding,
    #[error("Transfer-Encoding on an HTTP/1.0 message")]
    TransferEncodingOnHttp10,
    #[error("malformed chunked body")]
    BadChunk,
    #[error("body too large")]
    BodyTooLarge,
    #[error("unsupported Expect")]
    BadExpect,
    #[error("method not supported")]
    MethodNotSupported,
}

impl HttpError {
    /// The status code sent to the client for this error.
    pub fn status(self) -> u16 {
        match self {
            HttpError::HeadTooLarge | HttpError::TooManyHeaders => 431,
            HttpError::UnknownTransferCoding | HttpError::MethodNotSupported => 501,
            HttpError::Version => 505,
            HttpError::BodyTooLarge => 413,
            HttpError::BadExpect => 417,
            _ => 400,
        }
    }
}
