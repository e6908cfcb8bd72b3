//! What must be in the connection's buffer before a request is planned
//! further: a head is parsed again only once it may be complete, and a
//! small body is read whole (`routes.request_buffering`), scanned only in
//! the bytes that arrived since the last look.

use crate::http::chunked::{ChunkedDecoder, Output};
use crate::http::{BodyFraming, HttpError};

/// More of the request body to read before planning goes on.
#[derive(Debug)]
pub(super) struct BodyWait {
    /// Answer `Expect: 100-continue` first (no body byte has come yet).
    pub send_continue: bool,
    pub until: BodyEnd,
}

/// When the buffer holds enough of the body to plan again.
#[derive(Debug)]
pub(super) enum BodyEnd {
    /// This many bytes of the buffer (head and whole body).
    Bytes(usize),
    /// The chunked body's end, scanned as it arrives from `scanned` on, or
    /// `limit` bytes of buffer (the body then streams).
    Chunked {
        decoder: crate::http::chunked::ChunkedDecoder,
        scanned: usize,
        limit: usize,
        max_body: Option<u64>,
    },
}

impl BodyEnd {
    /// Whether `buf` now holds enough; scans only bytes not scanned before,
    /// so a body trickling in costs one pass over it, not one per read.
    pub fn reached(&mut self, buf: &[u8]) -> Result<bool, HttpError> {
        match self {
            BodyEnd::Bytes(n) => Ok(buf.len() >= *n),
            BodyEnd::Chunked {
                decoder,
                scanned,
                limit,
                max_body,
            } => {
                *scanned += decoder.decode(&buf[*scanned..], &mut Vec::new(), Output::Discard)?;
                if max_body.is_some_and(|max| decoder.decoded > max) {
                    return Err(HttpError::BodyTooLarge);
                }
                Ok(decoder.is_done() || buf.len() >= *limit)
            }
        }
    }

    /// A large body is on its way: more than `from` bytes still to come
    /// (`buf` holds `have`), or, chunked, more than `from` decoded so far.
    pub fn bulk(&self, have: usize, from: u64) -> bool {
        match self {
            BodyEnd::Bytes(n) => n.saturating_sub(have) as u64 > from,
            BodyEnd::Chunked { decoder, .. } => decoder.decoded > from,
        }
    }
}

/// Whether the body must be read further before a server is picked: it is
/// no larger than the route's `request_buffering` and not all here yet.
/// A chunked body too large to buffer, or one whose end is not in sight
/// once the buffer holds that much, streams instead.
pub(super) fn body_to_buffer(
    route: &crate::config::RouteConfig,
    max_body: Option<u64>,
    req: &crate::http::request::RequestHead<'_>,
    buf: &[u8],
) -> Result<Option<BodyWait>, HttpError> {
    let limit = route.request_buffering;
    let have = &buf[req.head_len..];
    let until = match req.body {
        BodyFraming::None | BodyFraming::UntilClose => None,
        BodyFraming::Length(n) if n > limit || have.len() as u64 >= n => None,
        BodyFraming::Length(n) => Some(BodyEnd::Bytes(req.head_len + n as usize)),
        BodyFraming::Chunked if limit == 0 || have.len() as u64 >= limit => None,
        BodyFraming::Chunked => {
            let mut until = BodyEnd::Chunked {
                decoder: ChunkedDecoder::new(),
                scanned: req.head_len,
                limit: req.head_len + limit as usize,
                max_body,
            };
            if until.reached(buf)? {
                None
            } else {
                Some(until)
            }
        }
    };
    Ok(until.map(|until| BodyWait {
        send_continue: req.expect_continue && have.is_empty(),
        until,
    }))
}

/// A request body read whole before the request is answered.
pub(super) enum Whole {
    Body(bytes::Bytes),
    /// Not all here yet.
    Wait(BodyWait),
}

/// The whole body of the request whose head is in `buf` (de-chunked), or
/// what to wait for; larger than `max` (decoded, or twice that on the wire:
/// chunk framing cannot make a client's small body cost unbounded reads)
/// is `BodyTooLarge`.
pub(super) fn whole_body(
    req: &crate::http::request::RequestHead<'_>,
    buf: &[u8],
    max: u64,
) -> Result<Whole, HttpError> {
    let have = &buf[req.head_len..];
    let wait = |until| {
        Ok(Whole::Wait(BodyWait {
            send_continue: req.expect_continue && have.is_empty(),
            until,
        }))
    };
    match req.body {
        BodyFraming::None | BodyFraming::UntilClose => Ok(Whole::Body(bytes::Bytes::new())),
        BodyFraming::Length(n) if n > max => Err(HttpError::BodyTooLarge),
        BodyFraming::Length(n) if (have.len() as u64) < n => {
            wait(BodyEnd::Bytes(req.head_len + n as usize))
        }
        BodyFraming::Length(n) => Ok(Whole::Body(bytes::Bytes::copy_from_slice(
            &have[..n as usize],
        ))),
        BodyFraming::Chunked => {
            let wire_limit = 2 * max + 64;
            let mut decoder = ChunkedDecoder::new();
            let mut body = Vec::new();
            decoder.decode(have, &mut body, Output::Raw)?;
            if body.len() as u64 > max || (!decoder.is_done() && have.len() as u64 >= wire_limit) {
                return Err(HttpError::BodyTooLarge);
            }
            if decoder.is_done() {
                return Ok(Whole::Body(body.into()));
            }
            wait(BodyEnd::Chunked {
                decoder: ChunkedDecoder::new(),
                scanned: req.head_len,
                limit: req.head_len + wire_limit as usize,
                max_body: Some(max),
            })
        }
    }
}

/// Whether `buf` may hold a complete head: a blank line (CRLF CRLF, or a
/// bare LF one, which the parser then refuses) in its bytes from `from` on.
pub(super) fn may_hold_head_end(buf: &[u8], from: usize) -> bool {
    let tail = &buf[from.saturating_sub(3)..];
    memchr::memmem::find(tail, b"\n\r\n").is_some() || memchr::memmem::find(tail, b"\n\n").is_some()
}
