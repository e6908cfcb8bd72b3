//! The response side of the HTTP/1 downstream session. The phases hand it
//! a response as a head (status line and end-to-end fields, the gateway's
//! one field-block form, as the cache stores it), the body's length as they
//! know it, and the body in pieces; the session chooses the framing
//! (`Content-Length`, chunked, or a close for an HTTP/1.0 client), writes
//! `Connection`, suppresses the body of a HEAD, and decides whether the
//! connection goes on. Nothing else writes to the client's socket. A
//! request that came on an HTTP/2 stream is answered through the same
//! calls, which then send HEADERS, DATA and the stream's end
//! (`super::http2::stream`); its framing and keep-alive are HTTP/2's.

use bytes::{Bytes, BytesMut};

use super::cache::{write_hit, HitPlan};
use super::io::Stream;
use super::{Client, Next};
use crate::cache::hit::HitBuf;
use crate::http::headers::{push_decimal, push_hex};
use crate::http::Version;
use crate::worker::context::WorkerCtx;

/// How long a response's body is, as the phases know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum BodyLength {
    /// No body follows (204, 304, 1xx, or the response to a HEAD, whose
    /// head may keep the `Content-Length` of the representation).
    None,
    Known(u64),
    /// Streamed to its end; `codings` are transfer codings the body still
    /// carries (relayed under the session's own framing).
    Unknown {
        codings: Option<Box<[u8]>>,
    },
}

/// How the body is framed on the wire, chosen by [`Client::start_reply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    NoBody,
    Length,
    Chunked,
    /// An HTTP/1.0 client and a body of unknown length: ends with the close.
    Close,
}

/// The client went away, or a write did not finish within `client_send`.
#[derive(Debug)]
pub(super) struct Gone;

/// What the session keeps of the response under way.
pub(super) struct Reply {
    /// The request's version and method (HEAD: no body is written).
    version: Version,
    head_only: bool,
    framing: Framing,
    keep: bool,
    /// The head, held back so it leaves with the first body bytes.
    pending: Vec<u8>,
    /// The HTTP/2 stream could not take the head: the client is gone.
    gone: bool,
}

impl Default for Reply {
    fn default() -> Self {
        Reply {
            version: Version::Http11,
            head_only: false,
            framing: Framing::NoBody,
            keep: false,
            pending: Vec::new(),
            gone: false,
        }
    }
}

impl Reply {
    /// A new request: what its response must respect.
    pub fn begin(&mut self, version: Version, head_only: bool) {
        self.version = version;
        self.head_only = head_only;
        self.framing = Framing::NoBody;
        self.keep = false;
        self.gone = false;
    }
}

/// The response's `X-Request-Id` line (`super::request_id`), if ids are on.
fn push_request_id(out: &mut Vec<u8>, id: &[u8]) {
    if !id.is_empty() {
        out.extend_from_slice(b"X-Request-Id: ");
        out.extend_from_slice(id);
        out.extend_from_slice(b"\r\n");
    }
}

fn connection_line(keep: bool, version: Version) -> &'static [u8] {
    match (keep, version) {
        (false, _) => b"Connection: close\r\n",
        (true, Version::Http10) => b"Connection: keep-alive\r\n",
        (true, Version::Http11) => b"",
    }
}

impl Client {
    /// Body bytes of a response whose length was not known at its head,
    /// for the access log (a known length was counted whole then).
    fn count_unframed(&mut self, n: usize) {
        if let Some(record) = self.log.as_deref_mut().filter(|r| r.active) {
            if record.unframed {
                record.body_out += n as u64;
            }
        }
    }

    /// The worker is not draining and the connection is under its request cap.
    fn may_continue(&self, ctx: &WorkerCtx) -> bool {
        !ctx.draining.get() && self.served < ctx.config.limits.max_keepalive_requests
    }

    /// Starts the response: `head` is its status line and fields, each line
    /// CRLF-terminated, without framing or `Connection` fields. `keep`: the
    /// exchange lets the connection go on (its request was read whole);
    /// the session adds its own conditions. Nothing is written until the
    /// first body bytes or the end, so small responses leave in one write.
    pub(super) fn start_reply(
        &mut self,
        ctx: &WorkerCtx,
        mut head: Vec<u8>,
        length: BodyLength,
        keep: bool,
    ) {
        push_request_id(&mut head, self.request_id.as_bytes());
        if let Some(record) = self.log.as_deref_mut().filter(|r| r.active) {
            record.status = head
                .get(9..12)
                .and_then(|s| std::str::from_utf8(s).ok())
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            record.head_out = head.len() as u64;
            record.body_out = match (&length, self.reply.head_only) {
                (BodyLength::Known(n), false) => *n,
                _ => 0,
            };
            record.unframed = matches!(length, BodyLength::Unknown { .. }) && !self.reply.head_only;
        }
        if let Some(h2) = self.h2.as_deref_mut() {
            self.reply.gone = h2.start(&head, &length, self.reply.head_only).is_err();
            ctx.give_write_buffer(head);
            return;
        }
        let reply = &self.reply;
        let framing = match &length {
            BodyLength::None => Framing::NoBody,
            BodyLength::Known(n) => {
                head.extend_from_slice(b"Content-Length: ");
                push_decimal(&mut head, *n);
                head.extend_from_slice(b"\r\n");
                Framing::Length
            }
            BodyLength::Unknown { codings } => match reply.version {
                Version::Http11 => {
                    head.extend_from_slice(b"Transfer-Encoding: ");
                    if let Some(codings) = codings {
                        head.extend_from_slice(codings);
                        head.extend_from_slice(b", ");
                    }
                    head.extend_from_slice(b"chunked\r\n");
                    Framing::Chunked
                }
                Version::Http10 => Framing::Close,
            },
        };
        let keep = keep && framing != Framing::Close && self.may_continue(ctx);
        head.extend_from_slice(connection_line(keep, self.reply.version));
        head.extend_from_slice(b"\r\n");
        let reply = &mut self.reply;
        reply.framing = if reply.head_only {
            Framing::NoBody
        } else {
            framing
        };
        reply.keep = keep;
        let old = std::mem::replace(&mut reply.pending, head);
        if old.capacity() > 0 {
            ctx.give_write_buffer(old);
        }
    }

    /// Writes a piece of the body (framed as the head said), with the head
    /// if it has not gone out yet. An empty piece sends the head alone: the
    /// rest of the body is not here yet, and the client should not wait for
    /// the head until it is.
    pub(super) async fn send_body(&mut self, ctx: &WorkerCtx, data: &[u8]) -> Result<(), Gone> {
        self.count_unframed(data.len());
        if self.h2.is_some() {
            return Box::pin(self.send_h2(ctx, Bytes::copy_from_slice(data))).await;
        }
        if !data.is_empty() {
            self.frame_into_pending(data);
        }
        self.flush(ctx).await
    }

    /// Like [`Client::send_body`], without copying `data` where the
    /// framing needs no chunk lines: written alone, or after the head held
    /// back in one vectored write (copying a body behind its head cost a
    /// 16 KiB pass-through a 16 KiB `memcpy`).
    pub(super) async fn send_body_owned(
        &mut self,
        ctx: &WorkerCtx,
        data: Bytes,
    ) -> Result<(), Gone> {
        if self.h2.is_some() {
            self.count_unframed(data.len());
            // Copied: the stream may hold its data until the client's window
            // opens, and `data` may share a larger read buffer.
            return self.send_h2(ctx, Bytes::copy_from_slice(&data)).await;
        }
        let direct =
            !data.is_empty() && matches!(self.reply.framing, Framing::Length | Framing::Close);
        if !direct {
            return self.send_body(ctx, &data).await;
        }
        self.count_unframed(data.len());
        let limit = ctx.config.timeouts.client_send;
        if self.reply.pending.is_empty() {
            return match self.stream.write_all(data, limit).await {
                Ok(_) => Ok(()),
                Err(_) => Err(Gone),
            };
        }
        // The held-back bytes lend their buffer to the write's middle part
        // and get it back after, so neither allocates.
        let mut buf = ctx.take_hit_buffer();
        buf.set(Bytes::new(), data);
        std::mem::swap(buf.suffix(), &mut self.reply.pending);
        match self.stream.write_hit(buf, limit).await {
            Ok(mut buf) => {
                std::mem::swap(buf.suffix(), &mut self.reply.pending);
                self.reply.pending.clear();
                ctx.give_hit_buffer(buf);
                Ok(())
            }
            Err(_) => Err(Gone),
        }
    }

    /// Body bytes on an HTTP/2 stream, within the client's window.
    async fn send_h2(&mut self, ctx: &WorkerCtx, data: Bytes) -> Result<(), Gone> {
        self.send_h2_body(ctx, data, false).await
    }

    /// Body bytes over HTTP/2; `last`: the whole rest of the body, whose
    /// final DATA frame ends the stream (no empty frame to end it after).
    async fn send_h2_body(&mut self, ctx: &WorkerCtx, data: Bytes, last: bool) -> Result<(), Gone> {
        let (Some(h2), false) = (self.h2.as_deref_mut(), self.reply.gone) else {
            return Err(Gone);
        };
        if data.is_empty() || self.reply.head_only {
            return Ok(());
        }
        h2.send_data(data, ctx.config.timeouts.client_send, last)
            .await
    }

    fn frame_into_pending(&mut self, data: &[u8]) {
        let reply = &mut self.reply;
        match reply.framing {
            Framing::NoBody => {}
            Framing::Length | Framing::Close => reply.pending.extend_from_slice(data),
            Framing::Chunked => {
                push_hex(&mut reply.pending, data.len() as u64);
                reply.pending.extend_from_slice(b"\r\n");
                reply.pending.extend_from_slice(data);
                reply.pending.extend_from_slice(b"\r\n");
            }
        }
    }

    /// Ends the body (the last chunk of a chunked one) and writes what is
    /// held back; says whether the connection goes on.
    pub(super) async fn end_reply(&mut self, ctx: &WorkerCtx) -> Next {
        self.end_reply_with_trailers(ctx, b"").await
    }

    /// Like [`Client::end_reply`], with trailer fields (`name: value`
    /// lines, already filtered) after the body where the framing can carry
    /// them (chunked); other framings drop them, as a recipient may.
    pub(super) async fn end_reply_with_trailers(
        &mut self,
        ctx: &WorkerCtx,
        trailers: &[u8],
    ) -> Next {
        if let Some(h2) = self.h2.as_deref_mut() {
            if !self.reply.gone {
                let _ = h2.end(trailers);
            }
            return Next::Close;
        }
        if self.reply.framing == Framing::Chunked {
            self.reply.pending.extend_from_slice(b"0\r\n");
            self.reply.pending.extend_from_slice(trailers);
            self.reply.pending.extend_from_slice(b"\r\n");
        }
        let sent = self.flush(ctx).await.is_ok();
        ctx.give_write_buffer(std::mem::take(&mut self.reply.pending));
        if sent && self.reply.keep {
            Next::KeepAlive
        } else {
            Next::Close
        }
    }

    /// A whole response whose body is in hand: head, body and end in one write.
    pub(super) async fn reply_whole(
        &mut self,
        ctx: &WorkerCtx,
        head: Vec<u8>,
        body: &[u8],
        keep: bool,
    ) -> Next {
        self.start_reply(ctx, head, BodyLength::Known(body.len() as u64), keep);
        if self.h2.is_some() {
            let _ = self.send_body(ctx, body).await;
        } else {
            self.frame_into_pending(body);
        }
        self.end_reply(ctx).await
    }

    /// A response the session ends by closing: the body was cut short (the
    /// origin failed mid-body), so only the close can tell the client.
    pub(super) fn abandon_reply(&mut self, ctx: &WorkerCtx) -> Next {
        if let Some(h2) = self.h2.as_deref_mut() {
            h2.reset(h2::Reason::INTERNAL_ERROR);
        }
        ctx.give_write_buffer(std::mem::take(&mut self.reply.pending));
        Next::Close
    }

    async fn flush(&mut self, ctx: &WorkerCtx) -> Result<(), Gone> {
        if self.reply.pending.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.reply.pending);
        match self
            .stream
            .write_all(buf, ctx.config.timeouts.client_send)
            .await
        {
            Ok(mut buf) => {
                buf.clear();
                self.reply.pending = buf;
                Ok(())
            }
            Err(_) => Err(Gone),
        }
    }

    /// An interim (1xx) response, written now: its status line and fields.
    pub(super) async fn send_interim(
        &mut self,
        ctx: &WorkerCtx,
        mut head: Vec<u8>,
    ) -> Result<Vec<u8>, Gone> {
        if let Some(h2) = self.h2.as_deref_mut() {
            h2.interim(&head)?;
            head.clear();
            return Ok(head);
        }
        head.extend_from_slice(b"\r\n");
        match self
            .stream
            .write_all(head, ctx.config.timeouts.client_send)
            .await
        {
            Ok(mut head) => {
                head.clear();
                Ok(head)
            }
            Err(_) => Err(Gone),
        }
    }

    /// The upstream switched protocols: writes the 101 (its status line and
    /// fields in `head`) and what the upstream already sent in the new
    /// protocol, then hands the connection over, with what the client sent
    /// after its request (already the new protocol's). `None`: the client
    /// went away. The session ends here: nothing more is read or written
    /// through it.
    pub(super) async fn switch_protocols(
        &mut self,
        ctx: &WorkerCtx,
        head: Vec<u8>,
        from_upstream: &mut BytesMut,
    ) -> Option<(Stream, BytesMut)> {
        if self.h2.is_some() {
            // Never asked for: an upgrade needs an HTTP/1.1 `Connection: upgrade`.
            return None;
        }
        let head = self.send_interim(ctx, head).await.ok()?;
        ctx.give_write_buffer(head);
        if !from_upstream.is_empty() {
            let send = ctx.config.timeouts.client_send;
            self.stream
                .write_all(from_upstream.split(), send)
                .await
                .ok()?;
        }
        // The socket goes to the tunnel: its armed receive ends first, and
        // what it had received goes with the rest of the buffer.
        if let Some(ring) = &ctx.recv_ring {
            ring.disarm(&mut self.armed, &mut self.buf).await;
        }
        let stream = std::mem::replace(&mut self.stream, Stream::Detached);
        Some((stream, self.buf.split()))
    }

    /// `100 Continue`, once per request, for a client waiting to send its body.
    pub(super) async fn send_continue(&mut self, ctx: &WorkerCtx) -> Result<(), Gone> {
        if self.sent_continue {
            return Ok(());
        }
        self.sent_continue = true;
        // Over HTTP/2 an interim HEADERS with `:status 100` (RFC 9113
        // section 8.1): a client that sent `expect: 100-continue` waits for it.
        if let Some(h2) = self.h2.as_deref_mut() {
            return h2.interim(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        match self
            .stream
            .write_all(
                &b"HTTP/1.1 100 Continue\r\n\r\n"[..],
                ctx.config.timeouts.client_send,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(_) => Err(Gone),
        }
    }

    /// A stored response on an HTTP/2 stream: HEADERS from the stored head
    /// and the per-response lines, then the stored body as DATA without a copy.
    async fn send_stored_h2(&mut self, ctx: &WorkerCtx, hit: &HitPlan, buf: &HitBuf) -> Next {
        let [head, suffix, _] = buf.parts();
        let body = buf.body();
        if matches!(hit.part, crate::cache::range::Part::Whole) {
            // The stored fields as HTTP/2 fields, made once per entry.
            let no_body = self.reply.head_only || body.is_empty();
            let mut lines = ctx.take_write_buffer();
            lines.extend_from_slice(suffix);
            push_request_id(&mut lines, self.request_id.as_bytes());
            let started = match self.h2.as_deref_mut() {
                Some(h2) => h2.start_stored(&hit.stored, &lines, no_body),
                None => Err(Gone),
            };
            ctx.give_write_buffer(lines);
            self.reply.gone = started.is_err();
        } else {
            let mut whole = ctx.take_write_buffer();
            whole.extend_from_slice(head);
            whole.extend_from_slice(suffix);
            let length = match self.reply.head_only {
                true => BodyLength::None,
                false => BodyLength::Known(body.len() as u64),
            };
            self.start_reply(ctx, whole, length, false);
        }
        if self.send_h2_body(ctx, body, true).await.is_err() {
            return Next::Close;
        }
        self.end_reply(ctx).await
    }

    /// A stored response (a hit, a 206 part of it, a 416), in one vectored
    /// write: the stored head (status line, fields, `Content-Length`), the
    /// per-response lines (`Age`, `Cache-Status`) and the stored body.
    pub(super) async fn send_stored(&mut self, ctx: &WorkerCtx, hit: &HitPlan, keep: bool) -> Next {
        let keep = keep && self.may_continue(ctx);
        // Lent by the worker for this response: an idle connection keeps none.
        let mut buf = ctx.take_hit_buffer();
        write_hit(&mut buf, hit, self.reply.head_only);
        if let Some(record) = self.log.as_deref_mut().filter(|r| r.active) {
            let [head, suffix, _] = buf.parts();
            record.status = hit.stored.status;
            record.head_out = (head.len() + suffix.len()) as u64;
            record.body_out = if self.reply.head_only {
                0
            } else {
                buf.body().len() as u64
            };
        }
        if self.h2.is_some() {
            // Boxed, as every HTTP/2 path: HTTP/1 futures stay as small as before.
            let next = Box::pin(self.send_stored_h2(ctx, hit, &buf)).await;
            ctx.give_hit_buffer(buf);
            return next;
        }
        let suffix = buf.suffix();
        push_request_id(suffix, self.request_id.as_bytes());
        suffix.extend_from_slice(connection_line(keep, self.reply.version));
        suffix.extend_from_slice(b"\r\n");
        match self
            .stream
            .write_hit(buf, ctx.config.timeouts.client_send)
            .await
        {
            Ok(buf) => {
                ctx.give_hit_buffer(buf);
                if keep {
                    Next::KeepAlive
                } else {
                    Next::Close
                }
            }
            Err(_) => Next::Close,
        }
    }
}
