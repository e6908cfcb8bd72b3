//! A TLS connection in poll style, for the HTTP/2 codec (`h2`), which
//! reads and writes through `AsyncRead`/`AsyncWrite` rather than monoio's
//! owned buffers. It takes over a [`TlsStream`] whose handshake is done:
//! the socket (switched to monoio's poll mode), the rustls state, and any
//! ciphertext already read past the handshake or still queued to send.
//!
//! Bytes cross one copy each way, as with the owned-buffer adapter:
//! plaintext into rustls's send buffer (encrypted into records there), and
//! decrypted plaintext out of rustls's receive buffer into the codec's.
//!
//! Driven by turns (`proxy::http2::turn`), records leave on
//! [`TurnIo::poll_send_turn`], once per turn of the task that drives the
//! codec, not on the codec's flushes (one per DATA frame). rustls's buffer limit (64 KiB) bounds what a
//! turn holds; past it a write sends what is queued first.

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use monoio::io::poll_io::{AsyncRead, AsyncWrite, ReadBuf};
use monoio::io::IntoPollIo;
use monoio::net::tcp::stream_poll::TcpStreamPoll;

use super::TlsStream;
use crate::proxy::turn::TurnIo;

/// A TLS connection whose socket is in poll mode.
pub struct PollTls {
    tcp: TcpStreamPoll,
    conn: rustls::Connection,
    /// Ciphertext read before the hand-over that rustls has not taken yet.
    early_in: Vec<u8>,
    /// The socket reached end of file.
    eof: bool,
    /// Flushes keep the records for [`TurnIo::poll_send_turn`].
    held: bool,
}

impl PollTls {
    /// Takes over a connection whose handshake is complete.
    pub fn new(stream: TlsStream) -> io::Result<PollTls> {
        let TlsStream {
            tcp,
            conn,
            incoming,
            taken,
            eof,
            ..
        } = stream;
        Ok(PollTls {
            tcp: tcp.into_poll_io()?,
            conn,
            early_in: incoming[taken..].to_vec(),
            eof,
            held: false,
        })
    }

    /// Hands ciphertext to rustls: what was read before the hand-over,
    /// else one read from the socket. `Ready(Ok(false))`: end of file.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        let taken = if !self.early_in.is_empty() {
            let n = self.conn.read_tls(&mut &self.early_in[..])?;
            self.early_in.drain(..n);
            n
        } else if self.eof {
            return Poll::Ready(Ok(false));
        } else {
            let mut socket = SocketIo {
                tcp: &mut self.tcp,
                cx,
            };
            match self.conn.read_tls(&mut socket) {
                Ok(0) => {
                    self.eof = true;
                    0
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
        };
        if let Err(e) = self.conn.process_new_packets() {
            // The alert rustls queued goes out on a best-effort basis.
            let _ = self.poll_flush_tls(cx);
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
        }
        Poll::Ready(Ok(taken > 0 || !self.eof))
    }

    /// Writes queued records until rustls has none or the socket is full.
    fn poll_flush_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.conn.wants_write() {
            let mut socket = SocketIo {
                tcp: &mut self.tcp,
                cx,
            };
            match self.conn.write_tls(&mut socket) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// The poll-mode socket seen as a blocking `Read`/`Write` that answers
/// `WouldBlock` where the poll would be pending (the waker is registered).
struct SocketIo<'a, 'b> {
    tcp: &'a mut TcpStreamPoll,
    cx: &'a mut Context<'b>,
}

impl Read for SocketIo<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut read = ReadBuf::new(buf);
        match Pin::new(&mut *self.tcp).poll_read(self.cx, &mut read) {
            Poll::Ready(Ok(())) => Ok(read.filled().len()),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Write for SocketIo<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.tcp).poll_write(self.cx, buf) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match Pin::new(&mut *self.tcp).poll_write_vectored(self.cx, bufs) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsyncRead for PollTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match this.conn.reader().read(buf.initialize_unfilled()) {
                Ok(n) => {
                    // 0 with room to fill: the peer sent `close_notify`.
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // Closed without `close_notify`: end of file to the codec,
                // whose framing decides whether that cut anything short.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Poll::Ready(Ok(())),
                Err(e) => return Poll::Ready(Err(e)),
            }
            // Answers to post-handshake messages (key updates) that rustls
            // queued: now, or with the turn's records.
            if this.conn.wants_write() && !this.held {
                if let Poll::Ready(Err(e)) = this.poll_flush_tls(cx) {
                    return Poll::Ready(Err(e));
                }
            }
            match this.poll_fill(cx) {
                Poll::Ready(Ok(true)) => {}
                Poll::Ready(Ok(false)) => return Poll::Ready(Ok(())),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl AsyncWrite for PollTls {
    /// Encrypts into rustls's send buffer; the records go out on a flush
    /// (at the end of the turn once held), or now when that buffer is full.
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        loop {
            let n = this.conn.writer().write(buf)?;
            if n > 0 {
                return Poll::Ready(Ok(n));
            }
            // rustls's send buffer is full: write it out, then take more.
            match this.poll_flush_tls(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Writes the records out, or, once held, keeps them for the end of
    /// the turn.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.held {
            return Poll::Ready(Ok(()));
        }
        this.poll_flush_tls(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.conn.send_close_notify();
        match this.poll_flush_tls(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.tcp).poll_shutdown(cx),
            other => other,
        }
    }
}

impl TurnIo for PollTls {
    fn hold_flushes(&mut self) {
        self.held = true;
    }

    fn poll_send_turn(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush_tls(cx)
    }
}
