//! One socket write per turn of an HTTP/2 connection's task.
//!
//! The `h2` codec flushes its writer after every DATA frame whose payload
//! it chains instead of copying (1 KiB and up), and once more at the end
//! of each turn; on a socket each flush is a write system call, so a
//! connection answering 60 streams in one turn made 60 writes. Here the
//! codec's flushes keep the bytes back (in rustls's record buffer over
//! TLS, in a buffer of this module on a plain socket) and the task that
//! drives the codec sends them once per turn, when the turn waits
//! ([`drive`]). A buffer past [`HELD_MAX`] bytes goes out at once, so
//! memory stays bounded and a socket that takes nothing stops the codec
//! (back-pressure reaches the streams as before).

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use monoio::io::poll_io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes a connection may hold back before they leave without waiting for
/// the end of the turn.
pub(crate) const HELD_MAX: usize = 64 * 1024;

/// The most a plain connection's empty write buffer keeps allocated.
const KEPT_CAPACITY: usize = 16 * 1024;

/// A connection whose `poll_flush` may keep bytes back: what it kept
/// leaves on [`TurnIo::poll_send_turn`].
pub(crate) trait TurnIo: AsyncRead + AsyncWrite + Unpin {
    /// From now on `poll_flush` keeps the bytes back (the connection is
    /// driven by turns).
    fn hold_flushes(&mut self) {}

    /// Writes what the turn's writes left held back.
    fn poll_send_turn(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl<T: TurnIo + ?Sized> TurnIo for Box<T> {
    fn hold_flushes(&mut self) {
        (**self).hold_flushes()
    }

    fn poll_send_turn(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        (**self).poll_send_turn(cx)
    }
}

/// The connection as the codec owns it, shared with the task that ends
/// each turn. Single-threaded, and no borrow outlives one poll call.
pub(crate) struct SharedIo<T>(Rc<RefCell<T>>);

impl<T> Clone for SharedIo<T> {
    fn clone(&self) -> Self {
        SharedIo(self.0.clone())
    }
}

impl<T: TurnIo> SharedIo<T> {
    pub fn new(mut io: T) -> Self {
        io.hold_flushes();
        SharedIo(Rc::new(RefCell::new(io)))
    }

    /// Polls `turn` (the codec's work); when it waits, the bytes its
    /// writes held back go out in one write. `Err`: that write failed, the
    /// connection is broken.
    fn poll_turn<F: Future + ?Sized>(
        &self,
        turn: Pin<&mut F>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<F::Output>> {
        if let Poll::Ready(out) = turn.poll(cx) {
            return Poll::Ready(Ok(out));
        }
        match self.0.borrow_mut().poll_send_turn(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            // Sent, or waiting for room: the socket's readiness wakes this task.
            _ => Poll::Pending,
        }
    }
}

/// Runs `turn` to its end with [`SharedIo::poll_turn`].
pub(crate) async fn drive<T: TurnIo, F: Future>(
    io: &SharedIo<T>,
    turn: F,
) -> io::Result<F::Output> {
    let mut turn = std::pin::pin!(turn);
    std::future::poll_fn(|cx| io.poll_turn(turn.as_mut(), cx)).await
}

impl<T: TurnIo> AsyncRead for SharedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_read(cx, buf)
    }
}

impl<T: TurnIo> AsyncWrite for SharedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.borrow().is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_shutdown(cx)
    }
}

/// A plain socket with a write buffer: the codec's writes are copied into
/// it (one copy, where a write system call per frame was before) and leave
/// at the end of the turn, or once it holds [`HELD_MAX`] bytes.
pub(crate) struct Buffered<T> {
    io: T,
    out: BytesMut,
}

impl<T> Buffered<T> {
    pub fn new(io: T) -> Self {
        Buffered {
            io,
            out: BytesMut::new(),
        }
    }
}

impl<T: AsyncWrite + Unpin> Buffered<T> {
    /// Writes the buffer out until it is empty or the socket is full.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            match Pin::new(&mut self.io).poll_write(cx, &self.out) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.out.advance(n),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        // An idle connection keeps no large buffer.
        if self.out.capacity() > KEPT_CAPACITY {
            self.out = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }

    /// Room for more: a full buffer goes out first.
    fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.out.len() >= HELD_MAX {
            return self.poll_write_out(cx);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> TurnIo for Buffered<T> {
    fn poll_send_turn(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_write_out(cx)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Buffered<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Buffered<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_room(cx))?;
        let mut n = 0;
        for buf in bufs {
            this.out.extend_from_slice(buf);
            n += buf.len();
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// Keeps the bytes for the end of the turn.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.poll_write_out(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.io).poll_shutdown(cx),
            other => other,
        }
    }
}
