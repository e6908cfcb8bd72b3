//! Socket reads and writes with timeouts, on monoio's owned buffers.
//!
//! A timed-out operation is dropped, which makes monoio submit an io_uring
//! cancel for it (the `async-cancel` feature); the buffer it owned is then
//! gone, so callers close the connection after any timeout.

use std::io;
use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;
use monoio::buf::{IoBuf, SliceMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use crate::worker::recv_ring::{Armed, RecvRing};

/// A connection, to a client or to an upstream: plain TCP, or TLS over
/// it. Requests, responses and bodies are read and written through this
/// alone, so every path works the same over both.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<crate::tls::TlsStream>),
    /// A plain upstream connection receiving through the worker's upstream
    /// ring, its receive armed across exchanges and while pooled.
    Ringed(Box<Ringed>),
    /// A stream of an HTTP/2 upstream connection, written and read in the
    /// HTTP/1.1 form (`upstream::h2`).
    H2(Box<crate::upstream::h2::H2Exchange>),
    /// Handed over to a tunnel (an upgraded connection): nothing more is
    /// read or written here.
    Detached,
}

/// A plain upstream connection on the worker's upstream ring
/// (`[workers] upstream_recv_buffers`): one multishot receive, armed on its
/// first read, serves every read of it, so a response costs no submission
/// and a pooled connection holds no buffer.
pub struct Ringed {
    tcp: TcpStream,
    armed: Armed,
    ring: Rc<RecvRing>,
}

impl Stream {
    /// A new plain upstream connection: on the worker's upstream ring when
    /// it has one.
    pub fn upstream(tcp: TcpStream, ring: Option<&Rc<RecvRing>>) -> Stream {
        match ring {
            Some(ring) => Stream::Ringed(Box::new(Ringed {
                tcp,
                armed: Armed::default(),
                ring: ring.clone(),
            })),
            None => Stream::Plain(tcp),
        }
    }

    /// Ends an upstream connection's armed receive before its socket is
    /// read another way (a tunnel): what it had received is appended to
    /// `buf`, and the connection becomes a plain one.
    pub async fn disarm(&mut self, buf: &mut BytesMut) {
        if let Stream::Ringed(r) = self {
            r.ring.disarm(&mut r.armed, buf).await;
            if let Stream::Ringed(r) = std::mem::replace(self, Stream::Detached) {
                *self = Stream::Plain(r.tcp);
            }
        }
    }

    /// Nothing is waiting to be read on an idle (pooled) connection: no
    /// byte, no end of stream, no error. Through its armed receive on the
    /// upstream ring (what that received, no system call), else one
    /// non-blocking peek of the socket.
    pub fn is_quiet(&mut self) -> bool {
        match self {
            Stream::Ringed(r) => r
                .ring
                .quiet(&mut r.armed)
                .unwrap_or_else(|| crate::upstream::pool::is_quiet(&r.tcp)),
            other => other.tcp().is_some_and(crate::upstream::pool::is_quiet),
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// The TCP socket under it (none once detached).
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::Plain(s) => Some(s),
            Stream::Tls(s) => Some(s.tcp()),
            Stream::Ringed(r) => Some(&r.tcp),
            Stream::H2(_) | Stream::Detached => None,
        }
    }

    /// Appends what the client sent (decrypted) to `buf`.
    pub async fn read_some(&mut self, buf: &mut BytesMut, reserve: usize, limit: Duration) -> Read {
        match self {
            Stream::Plain(s) => read_some(s, buf, reserve, limit).await,
            Stream::Ringed(r) => {
                let read = r.ring.recv(&mut r.armed, &mut r.tcp, buf, reserve, || {});
                match monoio::time::timeout(limit, read).await {
                    Ok(read) => read,
                    Err(_) => Read::TimedOut,
                }
            }
            // Boxed: the plain path's futures stay as small as before TLS.
            Stream::Tls(s) => Box::pin(s.read_some(buf, reserve, limit)).await,
            Stream::H2(s) => Box::pin(s.read(buf, limit)).await,
            Stream::Detached => Read::Eof,
        }
    }

    /// Appends what the client sends next to `buf`, with no time limit of
    /// its own: for a connection waiting between requests, which the
    /// worker's idle sweep closes when its time is up. A plain connection
    /// waits with no buffer when the worker has a provided-buffer ring
    /// (`empty` is called if the ring had none left), its receive armed in
    /// `armed`.
    pub async fn read_idle(
        &mut self,
        buf: &mut BytesMut,
        reserve: usize,
        ring: Option<crate::worker::recv_ring::Receiver<'_>>,
        empty: impl FnOnce(),
    ) -> Read {
        match (self, ring) {
            (Stream::Plain(s), Some((ring, armed))) => {
                ring.recv(armed, s, buf, reserve, empty).await
            }
            // Boxed: the wait on the ring is what an idle connection's
            // future holds; a read into a buffer of its own (epoll, or no
            // ring) is larger.
            (Stream::Plain(s), None) => Box::pin(read_untimed(s, buf, reserve)).await,
            (stream, _) => {
                let forever = crate::config::units::MAX_DURATION;
                Box::pin(stream.read_some(buf, reserve, forever)).await
            }
        }
    }

    /// Appends what the client sent to `buf`, within `limit`: through the
    /// connection's armed receive on the worker's ring when it has one.
    pub async fn read_client(
        &mut self,
        buf: &mut BytesMut,
        reserve: usize,
        limit: Duration,
        ring: Option<crate::worker::recv_ring::Receiver<'_>>,
        empty: impl FnOnce(),
    ) -> Read {
        match (self, ring) {
            (Stream::Plain(s), Some((ring, armed))) => {
                match monoio::time::timeout(limit, ring.recv(armed, s, buf, reserve, empty)).await {
                    Ok(read) => read,
                    Err(_) => Read::TimedOut,
                }
            }
            (stream, _) => stream.read_some(buf, reserve, limit).await,
        }
    }

    /// Writes all of `buf`, giving it back for reuse.
    pub async fn write_all<B: IoBuf + 'static>(
        &mut self,
        buf: B,
        limit: Duration,
    ) -> Result<B, (WriteError, Option<B>)> {
        match self {
            Stream::Plain(s) => write_all(s, buf, limit).await,
            Stream::Ringed(r) => write_all(&mut r.tcp, buf, limit).await,
            Stream::Tls(s) => {
                // SAFETY: an `IoBuf` points at `bytes_init` initialised bytes
                // for as long as it lives, and `buf` outlives this borrow.
                let data = unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) };
                match Box::pin(s.write_all(data, limit)).await {
                    Ok(()) => Ok(buf),
                    Err(e) => Err((e, Some(buf))),
                }
            }
            Stream::H2(s) => {
                // SAFETY: as above: `buf` is initialised for `bytes_init`
                // bytes and outlives this borrow.
                let data = unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) };
                match Box::pin(s.write(data, limit)).await {
                    Ok(()) => Ok(buf),
                    Err(e) => Err((e, Some(buf))),
                }
            }
            Stream::Detached => Err((detached(), Some(buf))),
        }
    }

    /// Writes a prepared cache hit.
    pub async fn write_hit(
        &mut self,
        buf: crate::cache::hit::HitBuf,
        limit: Duration,
    ) -> Result<crate::cache::hit::HitBuf, WriteError> {
        match self {
            Stream::Plain(s) => write_hit(s, buf, limit).await,
            Stream::Ringed(r) => write_hit(&mut r.tcp, buf, limit).await,
            Stream::Tls(s) => {
                let mut buf = buf;
                Box::pin(s.write_parts(&buf.parts(), limit)).await?;
                buf.release();
                Ok(buf)
            }
            Stream::H2(_) | Stream::Detached => Err(detached()),
        }
    }
}

fn detached() -> WriteError {
    WriteError::Failed(io::ErrorKind::NotConnected.into())
}

/// `now + limit`, saturating: a deadline never overflows, whatever the limit.
/// From the loop turn's time (`monoio::time::recent`): a deadline costs no
/// clock read, and is early by at most how long the turn has run.
pub fn deadline_in(limit: Duration) -> std::time::Instant {
    let now = monoio::time::recent();
    now.checked_add(limit)
        .unwrap_or_else(|| now + crate::config::units::MAX_DURATION)
}

/// What a read produced.
#[derive(Debug)]
pub enum Read {
    /// This many bytes were appended to the buffer.
    Data(usize),
    /// The peer closed its side.
    Eof,
    TimedOut,
    Failed(io::Error),
}

/// Appends what the socket has (at least `reserve` bytes of room) to `buf`.
pub async fn read_some(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    reserve: usize,
    limit: Duration,
) -> Read {
    // On a timeout the read is dropped with the buffer it owned: `buf` is
    // left empty, and the caller closes the connection.
    match monoio::time::timeout(limit, read_untimed(stream, buf, reserve)).await {
        Ok(read) => read,
        Err(_) => Read::TimedOut,
    }
}

/// Appends what the socket has (at least `reserve` bytes of room) to
/// `buf`, however long that takes.
pub(crate) async fn read_untimed(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    reserve: usize,
) -> Read {
    make_room(buf, reserve);
    let (len, cap) = (buf.len(), buf.capacity());
    let owned = SliceMut::new(std::mem::take(buf), len, cap);
    let (result, owned) = stream.read(owned).await;
    *buf = owned.into_inner();
    match result {
        Ok(0) => Read::Eof,
        Ok(n) => Read::Data(n),
        Err(e) => Read::Failed(e),
    }
}

/// Makes room for at least `reserve` more bytes in `buf`. An empty buffer
/// whose memory cannot take them where it is gets a new one: `BytesMut`
/// grows a buffer from where its bytes were taken off, so a buffer read
/// empty and grown (a large body's reads doubling) kept the length it had
/// consumed on top of the new room, each time it grew.
pub fn make_room(buf: &mut BytesMut, reserve: usize) {
    if buf.is_empty() {
        if !buf.try_reclaim(reserve) {
            *buf = BytesMut::with_capacity(reserve);
        }
    } else {
        buf.reserve(reserve);
    }
}

/// Why a write did not complete.
#[derive(Debug)]
pub enum WriteError {
    TimedOut,
    Failed(io::Error),
}

/// Writes all of `buf`, giving it back for reuse. On failure the buffer is
/// returned when the kernel gave it back (not after a timeout).
pub async fn write_all<B: IoBuf + 'static>(
    stream: &mut TcpStream,
    buf: B,
    limit: Duration,
) -> Result<B, (WriteError, Option<B>)> {
    match monoio::time::timeout(limit, stream.write_all(buf)).await {
        Ok((Ok(_), buf)) => Ok(buf),
        Ok((Err(e), buf)) => Err((WriteError::Failed(e), Some(buf))),
        Err(_) => Err((WriteError::TimedOut, None)),
    }
}

/// Writes a prepared cache hit with vectored writes until all of it is out.
pub async fn write_hit(
    stream: &mut TcpStream,
    mut buf: crate::cache::hit::HitBuf,
    limit: Duration,
) -> Result<crate::cache::hit::HitBuf, WriteError> {
    buf.prepare();
    while buf.remaining() > 0 {
        match monoio::time::timeout(limit, stream.writev(buf)).await {
            Ok((Ok(0), _)) => return Err(WriteError::Failed(io::ErrorKind::WriteZero.into())),
            Ok((Ok(n), written)) => {
                buf = written;
                buf.consume(n);
            }
            Ok((Err(e), _)) => return Err(WriteError::Failed(e)),
            Err(_) => return Err(WriteError::TimedOut),
        }
    }
    buf.release();
    Ok(buf)
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::TimedOut => f.write_str("write timed out"),
            WriteError::Failed(e) => write!(f, "{e}"),
        }
    }
}
