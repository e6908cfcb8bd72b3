//! The request side of the HTTP/1 downstream session after the head: the
//! body. Whoever forwards a request asks the session for the body, whole
//! when it already holds all of it, else piece by piece; it says how the
//! upstream's head frames the body ([`BodyOut`]) and gets the decoded bytes
//! written that way. The session alone reads the client's socket and
//! buffer: it owns the client's framing (`Content-Length` or chunked), the
//! body limit, the `client_body` deadline and `100 Continue`. What is left
//! of a request answered without the upstream is consumed here too, so no
//! byte of it is ever read as the next request.

use bytes::{Buf, BytesMut};

use super::io::Read;
use super::{Answered, Client};
use crate::error::{ErrorKind, ProxyError};
use crate::http::chunked::{ChunkedDecoder, Output};
use crate::http::headers::push_hex;
use crate::http::{BodyFraming, HttpError};
use crate::worker::context::WorkerCtx;

/// How the upstream's head frames the body: as it is (the head carries
/// its `Content-Length`), or in chunks of the gateway's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BodyOut {
    AsIs,
    Chunked,
}

impl BodyOut {
    fn output(self) -> Output {
        match self {
            BodyOut::AsIs => Output::Raw,
            BodyOut::Chunked => Output::Rechunk,
        }
    }
}

/// The body of the request being forwarded, as far as it was handed out.
pub(super) struct RequestBody {
    left: Left,
    /// Answer `Expect: 100-continue` before the first read from the client.
    expect_continue: bool,
    /// Room for the next read of a large body (0: `upstream_buffer_size`):
    /// doubled, up to [`BULK_READ_GROWTH`] times that, each time a read
    /// fills it, so a client sending fast is read in fewer, larger reads
    /// while a slow one never holds more than the first size.
    read_size: usize,
}

/// How many times `upstream_buffer_size` a read of a large request body
/// may grow to (measured: a 1 MiB upload in 32 KiB reads cost about 20%
/// more CPU than in 128 KiB ones, on either driver; docs/benchmarks.md).
const BULK_READ_GROWTH: usize = 4;

enum Left {
    /// Bytes of a `Content-Length` body still to come.
    Bytes(u64),
    Chunked(ChunkedDecoder),
    Done,
}

/// What [`Client::next_body_piece`] handed out.
pub(super) enum Piece {
    /// Bytes to send as they are (a `Content-Length` body sent as is).
    Bytes(BytesMut),
    /// Bytes appended to the caller's buffer in its framing (the last
    /// chunk included, when the body ended with them).
    Written,
}

impl RequestBody {
    /// Whether the request has body bytes still to hand out.
    pub fn has_more(&self) -> bool {
        !matches!(self.left, Left::Done)
    }
}

impl Client {
    /// Starts the body of the request whose head (`head_len` bytes) is at
    /// the front of the buffer: the head is consumed.
    pub(super) fn open_body(
        &mut self,
        head_len: usize,
        framing: BodyFraming,
        expect_continue: bool,
    ) -> RequestBody {
        self.buf.advance(head_len);
        let left = match framing {
            BodyFraming::Length(n) if n > 0 => Left::Bytes(n),
            BodyFraming::Chunked => Left::Chunked(ChunkedDecoder::new()),
            _ => Left::Done,
        };
        RequestBody {
            left,
            expect_continue,
            read_size: 0,
        }
    }

    /// The whole body, when the session holds all of it already: appended
    /// to `out` as `framing` says, so that the upstream gets head and body
    /// in one write and the request can be sent again. False (nothing
    /// taken) while some of it is still to come.
    pub(super) fn body_in_hand(
        &mut self,
        body: &mut RequestBody,
        out: &mut Vec<u8>,
        framing: BodyOut,
    ) -> bool {
        match &mut body.left {
            Left::Done => true,
            Left::Bytes(n) if self.buf.len() as u64 >= *n => {
                let n = *n as usize;
                frame(out, &self.buf[..n], framing);
                if framing == BodyOut::Chunked {
                    out.extend_from_slice(b"0\r\n\r\n");
                }
                self.buf.advance(n);
                body.left = Left::Done;
                true
            }
            Left::Bytes(_) => false,
            Left::Chunked(_) => {
                let Ok((Some(raw), _)) = crate::http::chunked::scan_body(&self.buf) else {
                    return false;
                };
                let start = out.len();
                let mut decoder = ChunkedDecoder::new();
                if decoder
                    .decode(&self.buf[..raw], out, framing.output())
                    .is_err()
                {
                    out.truncate(start);
                    return false;
                }
                self.buf.advance(raw);
                body.left = Left::Done;
                true
            }
        }
    }

    /// The next piece of the body, read from the client within
    /// `client_body` when the buffer holds none; `None` once it ended.
    /// A chunked body is decoded and checked against `max_request_body` as
    /// it arrives, and written into `out` as `framing` says.
    pub(super) async fn next_body_piece(
        &mut self,
        ctx: &WorkerCtx,
        body: &mut RequestBody,
        out: &mut Vec<u8>,
        framing: BodyOut,
    ) -> Result<Option<Piece>, ProxyError> {
        loop {
            match &mut body.left {
                Left::Done => return Ok(None),
                Left::Bytes(left) if !self.buf.is_empty() => {
                    let take = (self.buf.len() as u64).min(*left) as usize;
                    *left -= take as u64;
                    let piece = self.buf.split_to(take);
                    let last = *left == 0;
                    if last {
                        body.left = Left::Done;
                    }
                    if framing == BodyOut::AsIs {
                        return Ok(Some(Piece::Bytes(piece)));
                    }
                    frame(out, &piece, framing);
                    if last {
                        out.extend_from_slice(b"0\r\n\r\n");
                    }
                    return Ok(Some(Piece::Written));
                }
                Left::Bytes(_) => {}
                Left::Chunked(decoder) => {
                    let start = out.len();
                    let used = decoder
                        .decode(&self.buf, out, framing.output())
                        .map_err(bad_request)?;
                    self.buf.advance(used);
                    let max = ctx.config.limits.max_request_body;
                    if max.is_some_and(|max| decoder.decoded > max) {
                        return Err(bad_request(HttpError::BodyTooLarge));
                    }
                    if decoder.is_done() {
                        body.left = Left::Done;
                    }
                    if out.len() > start {
                        return Ok(Some(Piece::Written));
                    }
                    if !body.has_more() {
                        return Ok(None);
                    }
                }
            }
            self.read_body_bytes(ctx, body).await?;
        }
    }

    /// Reads more of the body into the buffer, telling a client that waits
    /// for it to go on first.
    async fn read_body_bytes(
        &mut self,
        ctx: &WorkerCtx,
        body: &mut RequestBody,
    ) -> Result<(), ProxyError> {
        if std::mem::take(&mut body.expect_continue)
            && self.buf.is_empty()
            && self.send_continue(ctx).await.is_err()
        {
            return Err(ProxyError::downstream(ErrorKind::ClientIo, None));
        }
        let first = ctx.per_core.upstream_buffer_size;
        let size = body.read_size.max(first);
        let limit = ctx.config.timeouts.client_body;
        let bulk = match &body.left {
            Left::Bytes(left) => *left > super::BULK_FROM,
            Left::Chunked(decoder) => decoder.decoded > super::BULK_FROM,
            Left::Done => false,
        };
        match self.read_request_bytes(ctx, size, limit, bulk).await {
            Read::Data(n) => {
                if bulk && n >= size {
                    body.read_size = (size * 2).min(first * BULK_READ_GROWTH);
                }
                Ok(())
            }
            Read::TimedOut => Err(ProxyError::downstream(ErrorKind::ClientTimeout, None)),
            Read::Failed(e) => Err(ProxyError::downstream(ErrorKind::ClientIo, Some(e))),
            Read::Eof => Err(ProxyError::downstream(ErrorKind::ClientIo, None)),
        }
    }

    /// Consumes a request answered without the upstream. A body that
    /// already sits in the buffer is skipped; any other would have to be
    /// read and thrown away, so the connection is closed instead. Returns
    /// whether it may stay open as far as the request goes (the session
    /// adds its own conditions when it answers).
    pub(super) fn finish_unforwarded(&mut self, request: &Answered) -> bool {
        let available = self.buf.len() - request.head_len;
        let skip = match request.body {
            BodyFraming::None => Some(0),
            BodyFraming::Length(n) if available as u64 >= n => Some(n as usize),
            _ => None,
        };
        self.buf
            .advance(request.head_len + skip.unwrap_or(available));
        request.keep_alive && skip.is_some()
    }
}

fn bad_request(e: HttpError) -> ProxyError {
    ProxyError::downstream(ErrorKind::BadRequest(e), None)
}

/// Appends body bytes framed as the upstream's head said.
fn frame(out: &mut Vec<u8>, data: &[u8], framing: BodyOut) {
    if data.is_empty() {
        return;
    }
    if framing == BodyOut::Chunked {
        push_hex(out, data.len() as u64);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(data);
    if framing == BodyOut::Chunked {
        out.extend_from_slice(b"\r\n");
    }
}
