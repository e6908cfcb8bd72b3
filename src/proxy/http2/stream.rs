//! One HTTP/2 stream, as the session's calls see it: the request body read
//! into the session buffer in the gateway's one request form (HTTP/1.1
//! framing: as it is under a `content-length`, else chunked), and the
//! response sent as HEADERS, DATA within the client's flow-control window,
//! and an end (trailers or an empty final DATA).
//!
//! The h2 handles sit in one `RefCell` shared with the stream's reset
//! watch (`super::watch_reset`), which runs in the same task: both wait on
//! the stream's one send-side waker, so they never take it from each other.
//! No borrow is held across an await.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};

use super::convert;
use crate::cache::entry::Stored;
use crate::http::headers::push_hex;
use crate::proxy::io::Read;
use crate::proxy::reply::{BodyLength, Gone};

/// Empty DATA frames in a row a request body may carry before the stream
/// is refused (an empty-frame flood costs the gateway work and moves no byte).
const MAX_EMPTY_FRAMES: u32 = 64;

pub(crate) struct Parts {
    pub respond: SendResponse<Bytes>,
    pub send: Option<SendStream<Bytes>>,
    pub recv: RecvStream,
    /// HEADERS went out: the stream is watched through `send` from then on.
    pub answered: bool,
    /// The gateway reset the stream itself (with this reason): not a
    /// reset by the client.
    pub reset_here: Option<Reason>,
}

/// The h2 side of a request's `Client`.
pub(crate) struct H2Stream {
    pub parts: Rc<RefCell<Parts>>,
    /// The connection came over TLS.
    pub tls: bool,
    /// The client sent no `content-length`: its body is framed as chunked.
    chunked: bool,
    /// The body ended (its end is in the session buffer), or there was none.
    body_done: bool,
}

impl H2Stream {
    pub fn new(parts: Rc<RefCell<Parts>>, tls: bool, chunked: bool, body_done: bool) -> Self {
        H2Stream {
            parts,
            tls,
            chunked,
            body_done,
        }
    }

    /// Appends the next DATA of the request body to `buf` in the session's
    /// framing; returns its WINDOW_UPDATE credit to the client only now, so
    /// a client sends no faster than the gateway forwards.
    pub async fn read(&mut self, buf: &mut BytesMut, limit: Duration) -> Read {
        if self.body_done {
            return Read::Eof;
        }
        let mut empty = 0;
        loop {
            let next = poll_fn(|cx| self.parts.borrow_mut().recv.poll_data(cx));
            let next = match monoio::time::timeout(limit, next).await {
                Ok(next) => next,
                Err(_) => return Read::TimedOut,
            };
            let data = match next {
                None => {
                    self.body_done = true;
                    if self.chunked {
                        buf.extend_from_slice(b"0\r\n\r\n");
                        return Read::Data(5);
                    }
                    return Read::Eof;
                }
                Some(Err(e)) => return Read::Failed(io::Error::other(e)),
                Some(Ok(data)) => data,
            };
            let n = data.len();
            let mut parts = self.parts.borrow_mut();
            let _ = parts.recv.flow_control().release_capacity(n);
            if n == 0 {
                empty += 1;
                if empty > MAX_EMPTY_FRAMES {
                    return Read::Failed(io::Error::other("empty DATA frame flood"));
                }
                continue;
            }
            if self.chunked {
                push_hex(buf, n as u64);
                buf.extend_from_slice(b"\r\n");
                buf.extend_from_slice(&data);
                buf.extend_from_slice(b"\r\n");
            } else {
                buf.extend_from_slice(&data);
            }
            if parts.recv.is_end_stream() {
                self.body_done = true;
                if self.chunked {
                    buf.extend_from_slice(b"0\r\n\r\n");
                }
            }
            return Read::Data(n);
        }
    }

    /// Sends the response's HEADERS (`head`: status line and fields in the
    /// gateway's head form); with the end of the stream when no body follows.
    pub fn start(&mut self, head: &[u8], length: &BodyLength, no_body: bool) -> Result<(), Gone> {
        let content_length = match length {
            BodyLength::Known(n) => Some(*n),
            // A body still carrying a transfer coding (`gzip, chunked` from
            // an HTTP/1.1 upstream) has no HTTP/2 form: it would reach the
            // client as if it were the content. A 502 instead, and no body.
            BodyLength::Unknown { codings: Some(_) } => {
                let mut refused = http::Response::new(());
                *refused.status_mut() = http::StatusCode::BAD_GATEWAY;
                let _ = self.send_head(refused, true);
                return Err(Gone);
            }
            _ => None,
        };
        let response = convert::response(head, content_length).ok_or(Gone)?;
        self.send_head(response, no_body || *length == BodyLength::None)
    }

    /// A stored response's HEADERS: its fields kept as HTTP/2 fields with
    /// the entry (made on its first HTTP/2 hit), and this answer's own lines.
    pub fn start_stored(&mut self, stored: &Stored, own: &[u8], no_body: bool) -> Result<(), Gone> {
        let fields = stored
            .http2_fields
            .get_or_init(|| convert::head_fields(&stored.head));
        let response = convert::stored_response(stored.status, fields, own).ok_or(Gone)?;
        self.send_head(response, no_body)
    }

    fn send_head(&mut self, response: http::Response<()>, end: bool) -> Result<(), Gone> {
        let mut parts = self.parts.borrow_mut();
        parts.answered = true;
        let send = parts
            .respond
            .send_response(response, end)
            .map_err(|_| Gone)?;
        if !end {
            parts.send = Some(send);
        }
        Ok(())
    }

    /// An interim (1xx) response.
    pub fn interim(&mut self, head: &[u8]) -> Result<(), Gone> {
        let response = convert::response(head, None).ok_or(Gone)?;
        self.parts
            .borrow_mut()
            .respond
            .send_informational(response)
            .map_err(|_| Gone)
    }

    /// Sends body bytes as the client's window allows; a window that stays
    /// shut for `limit` ends the stream (a zero-window stall). `last`: the
    /// rest of the body, whose final frame ends the stream.
    pub async fn send_data(
        &mut self,
        mut data: Bytes,
        limit: Duration,
        last: bool,
    ) -> Result<(), Gone> {
        while !data.is_empty() {
            let mut granted = std::pin::pin!(poll_fn(|cx| {
                let mut parts = self.parts.borrow_mut();
                let Some(send) = parts.send.as_mut() else {
                    // No body goes out (a HEAD, or the stream ended).
                    return Poll::Ready(Ok(None));
                };
                // Capacity already assigned is used first: `poll_capacity`
                // only reports an increase.
                let held = send.capacity();
                if held > 0 {
                    return Poll::Ready(Ok(Some(held)));
                }
                send.reserve_capacity(data.len());
                match send.poll_capacity(cx) {
                    Poll::Ready(Some(Ok(n))) => Poll::Ready(Ok(Some(n))),
                    Poll::Ready(Some(Err(_)) | None) => Poll::Ready(Err(Gone)),
                    Poll::Pending => Poll::Pending,
                }
            }));
            // Room at once (the common case) needs no timer.
            let now = poll_fn(|cx| Poll::Ready(granted.as_mut().poll(cx))).await;
            let granted = match now {
                Poll::Ready(now) => Ok(now),
                Poll::Pending => monoio::time::timeout(limit, granted).await,
            };
            let granted = match granted {
                Ok(Ok(Some(n))) => n,
                Ok(Ok(None)) => return Ok(()),
                Ok(Err(gone)) => return Err(gone),
                Err(_) => {
                    self.reset(Reason::CANCEL);
                    return Err(Gone);
                }
            };
            let piece = data.split_to(granted.min(data.len()));
            let mut parts = self.parts.borrow_mut();
            let end = last && data.is_empty();
            let Some(send) = parts.send.as_mut() else {
                return Ok(());
            };
            send.send_data(piece, end).map_err(|_| Gone)?;
            if end {
                parts.send = None;
            }
        }
        Ok(())
    }

    /// Ends the response: trailer fields (`name: value` lines, filtered)
    /// when there are any, else an empty final DATA frame.
    pub fn end(&mut self, trailers: &[u8]) -> Result<(), Gone> {
        let Some(mut send) = self.parts.borrow_mut().send.take() else {
            return Ok(());
        };
        match convert::trailers(trailers) {
            Some(fields) => send.send_trailers(fields),
            None => send.send_data(Bytes::new(), true),
        }
        .map_err(|_| Gone)
    }

    /// Ends the stream with `RST_STREAM` (a response cut short, or refused).
    pub fn reset(&mut self, reason: Reason) {
        let mut parts = self.parts.borrow_mut();
        match parts.send.take() {
            Some(mut send) => send.send_reset(reason),
            // Answered whole already (its end went with the HEADERS).
            None if parts.answered => return,
            None => parts.respond.send_reset(reason),
        }
        parts.reset_here = Some(reason);
    }
}

/// Resolves when the client resets the stream (its reason); never when
/// the stream ends cleanly or the gateway reset it. Runs in the stream's
/// own task, beside its work, so both wait on the same waker.
pub(crate) async fn reset_by_client(parts: &RefCell<Parts>) -> Reason {
    poll_fn(|cx| {
        let mut parts = parts.borrow_mut();
        if parts.reset_here.is_some() {
            return Poll::Pending;
        }
        let polled = match (parts.answered, parts.send.as_mut()) {
            (false, _) => parts.respond.poll_reset(cx),
            (true, Some(send)) => send.poll_reset(cx),
            // Answered whole: nothing left that a reset could stop.
            (true, None) => return Poll::Pending,
        };
        match polled {
            Poll::Ready(Ok(reason)) => Poll::Ready(reason),
            Poll::Ready(Err(_)) | Poll::Pending => Poll::Pending,
        }
    })
    .await
}
