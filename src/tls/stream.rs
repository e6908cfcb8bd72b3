//! A TLS connection over a monoio TCP stream: rustls does the protocol,
//! this adapter moves its records to and from the socket with monoio's
//! owned-buffer I/O. Used for clients on TLS listeners (server side) and
//! for upstreams of TLS groups (client side): `rustls::Connection` is
//! either.
//!
//! Every operation takes a time limit and, like the plain socket helpers in
//! `proxy::io`, a timed-out connection is closed by its caller: a cancelled
//! read or write may have lost the buffer it owned.

use std::io::{self, BufRead, Write};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use monoio::buf::SliceMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use crate::proxy::io::{Read, WriteError};

/// Ciphertext is read from the socket this much at a time: one full TLS
/// record and its header.
pub(super) const RECORD_ROOM: usize = 16 * 1024 + 512;

/// Why a handshake failed.
#[derive(Debug)]
pub enum HandshakeError {
    /// The peer closed before the handshake finished (a probe, or plain
    /// HTTP on a TLS port once the alert was sent).
    Closed,
    TimedOut,
    Io(io::Error),
    /// rustls refused what the peer sent (the alert was sent).
    Tls(rustls::Error),
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::Closed => f.write_str("peer closed during the handshake"),
            HandshakeError::TimedOut => f.write_str("handshake timed out"),
            HandshakeError::Io(e) => write!(f, "{e}"),
            HandshakeError::Tls(e) => write!(f, "{e}"),
        }
    }
}

impl HandshakeError {
    /// A short, fixed label for metrics (`handshake failures by reason`).
    pub fn reason(&self) -> &'static str {
        match self {
            HandshakeError::Closed => "closed",
            HandshakeError::TimedOut => "timeout",
            HandshakeError::Io(_) => "io",
            HandshakeError::Tls(rustls::Error::InvalidMessage(_)) => "bad_message",
            HandshakeError::Tls(rustls::Error::NoCertificatesPresented) => "no_certificate",
            HandshakeError::Tls(rustls::Error::InvalidCertificate(_)) => "bad_certificate",
            HandshakeError::Tls(rustls::Error::PeerIncompatible(_)) => "incompatible",
            HandshakeError::Tls(_) => "tls",
        }
    }
}

/// One TLS connection.
pub struct TlsStream {
    pub(super) tcp: TcpStream,
    pub(super) conn: rustls::Connection,
    /// Ciphertext read from the socket that rustls has not taken yet.
    pub(super) incoming: Vec<u8>,
    /// How much of `incoming` rustls took.
    pub(super) taken: usize,
    /// Ciphertext rustls produced, written out by `flush`.
    pub(super) outgoing: Vec<u8>,
    /// The socket reached end of file.
    pub(super) eof: bool,
}

/// What one read of ciphertext produced.
enum Fill {
    Progress,
    Eof,
    TimedOut,
    Failed(io::Error),
    Tls(rustls::Error),
}

impl TlsStream {
    pub fn new(tcp: TcpStream, conn: rustls::Connection) -> TlsStream {
        TlsStream {
            tcp,
            conn,
            incoming: Vec::with_capacity(RECORD_ROOM),
            taken: 0,
            outgoing: Vec::new(),
            eof: false,
        }
    }

    /// The rustls connection: negotiated version, cipher suite, SNI name, ALPN.
    pub fn connection(&self) -> &rustls::Connection {
        &self.conn
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Runs the handshake to completion by `deadline`. On a protocol error
    /// the alert rustls prepared is sent before returning.
    pub async fn handshake(&mut self, deadline: Instant) -> Result<(), HandshakeError> {
        while self.conn.is_handshaking() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(HandshakeError::TimedOut);
            }
            if self.conn.wants_write() {
                match self.flush(left).await {
                    Ok(()) => continue,
                    Err(WriteError::TimedOut) => return Err(HandshakeError::TimedOut),
                    Err(WriteError::Failed(e)) => return Err(HandshakeError::Io(e)),
                }
            }
            match self.fill(left).await {
                Fill::Progress => {}
                Fill::Eof => return Err(HandshakeError::Closed),
                Fill::TimedOut => return Err(HandshakeError::TimedOut),
                Fill::Failed(e) => return Err(HandshakeError::Io(e)),
                Fill::Tls(e) => return Err(HandshakeError::Tls(e)),
            }
        }
        // The server's last flight (or the client's Finished) may still be queued.
        if self.conn.wants_write() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.flush(left).await {
                Ok(()) => {}
                Err(WriteError::TimedOut) => return Err(HandshakeError::TimedOut),
                Err(WriteError::Failed(e)) => return Err(HandshakeError::Io(e)),
            }
        }
        Ok(())
    }

    /// Appends decrypted bytes (at least `reserve` of room asked for) to
    /// `buf`, like `proxy::io::read_some` on a plain socket. A peer that
    /// closes without `close_notify` reads as end of file: the HTTP framing
    /// above decides whether that truncated anything.
    pub async fn read_some(&mut self, buf: &mut BytesMut, reserve: usize, limit: Duration) -> Read {
        let deadline = crate::proxy::io::deadline_in(limit);
        loop {
            match self.conn.reader().fill_buf() {
                Ok([]) => return Read::Eof,
                Ok(chunk) => {
                    // Whatever rustls has decrypted is taken whole.
                    let n = chunk.len();
                    buf.reserve(reserve.max(n));
                    buf.extend_from_slice(chunk);
                    self.conn.reader().consume(n);
                    return Read::Data(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Read::Eof,
                Err(e) => return Read::Failed(e),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Read::TimedOut;
            }
            // Post-handshake messages (tickets, key updates) may need answers.
            if self.conn.wants_write() {
                if let Err(e) = self.flush(left).await {
                    return write_to_read(e);
                }
            }
            match self.fill(left).await {
                Fill::Progress => {}
                Fill::Eof => return Read::Eof,
                Fill::TimedOut => return Read::TimedOut,
                Fill::Failed(e) => return Read::Failed(e),
                Fill::Tls(e) => return Read::Failed(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
        }
    }

    /// Encrypts all of `data` and writes it out.
    pub async fn write_all(&mut self, data: &[u8], limit: Duration) -> Result<(), WriteError> {
        self.write_parts(&[data], limit).await
    }

    /// Encrypts every part in order and writes them out together (the
    /// vectored write of a cache hit): the parts go into as few records as
    /// rustls allows, and the records leave in one socket write unless
    /// rustls's send buffer fills first.
    pub async fn write_parts(
        &mut self,
        parts: &[&[u8]],
        limit: Duration,
    ) -> Result<(), WriteError> {
        let deadline = crate::proxy::io::deadline_in(limit);
        let (mut part, mut offset) = (0, 0);
        while part < parts.len() {
            let mut slices = [io::IoSlice::new(&[]); 8];
            let mut count = 0;
            for (i, p) in parts[part..].iter().take(slices.len()).enumerate() {
                let from = if i == 0 { offset } else { 0 };
                slices[i] = io::IoSlice::new(&p[from..]);
                count += 1;
            }
            let mut n = self
                .conn
                .writer()
                .write_vectored(&slices[..count])
                .map_err(WriteError::Failed)?;
            let wrote_any = n > 0;
            // Advance past what rustls took.
            while part < parts.len() && n >= parts[part].len() - offset {
                n -= parts[part].len() - offset;
                part += 1;
                offset = 0;
            }
            offset += n;
            // Skip parts that are empty.
            while part < parts.len() && parts[part].len() == offset {
                part += 1;
                offset = 0;
            }
            if part < parts.len() && (!wrote_any || self.conn.wants_write()) {
                // rustls's send buffer is full: write it out before the rest.
                let left = deadline.saturating_duration_since(Instant::now());
                self.flush(left).await?;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        self.flush(left).await
    }

    /// Sends `close_notify` (best effort, within `limit`).
    pub async fn close(&mut self, limit: Duration) {
        self.conn.send_close_notify();
        let _ = self.flush(limit).await;
    }

    /// Writes every record rustls has queued.
    async fn flush(&mut self, limit: Duration) -> Result<(), WriteError> {
        while self.conn.wants_write() {
            self.outgoing.clear();
            if let Err(e) = self.conn.write_tls(&mut self.outgoing) {
                return Err(WriteError::Failed(e));
            }
            let out = std::mem::take(&mut self.outgoing);
            match monoio::time::timeout(limit, self.tcp.write_all(out)).await {
                Ok((Ok(_), out)) => self.outgoing = out,
                Ok((Err(e), out)) => {
                    self.outgoing = out;
                    return Err(WriteError::Failed(e));
                }
                Err(_) => return Err(WriteError::TimedOut),
            }
        }
        Ok(())
    }

    /// Reads ciphertext once and hands it to rustls. A protocol error
    /// queues an alert, which is sent here before the error is returned.
    async fn fill(&mut self, limit: Duration) -> Fill {
        if self.taken == self.incoming.len() {
            self.incoming.clear();
            self.taken = 0;
            if self.eof {
                return Fill::Eof;
            }
            let mut buf = std::mem::take(&mut self.incoming);
            buf.reserve(RECORD_ROOM);
            let cap = buf.capacity();
            let owned = SliceMut::new(buf, 0, cap);
            match monoio::time::timeout(limit, self.tcp.read(owned)).await {
                Ok((result, owned)) => {
                    self.incoming = owned.into_inner();
                    match result {
                        Ok(0) => self.eof = true,
                        Ok(_) => {}
                        Err(e) => return Fill::Failed(e),
                    }
                }
                Err(_) => return Fill::TimedOut,
            }
        }
        // An empty slice tells rustls the peer closed.
        let mut unread = &self.incoming[self.taken..];
        match self.conn.read_tls(&mut unread) {
            Ok(n) => self.taken += n,
            Err(e) => return Fill::Failed(e),
        }
        match self.conn.process_new_packets() {
            Ok(_) => {
                if self.eof && self.taken == self.incoming.len() && self.conn.is_handshaking() {
                    return Fill::Eof;
                }
                Fill::Progress
            }
            Err(e) => {
                let _ = self.flush(limit).await;
                Fill::Tls(e)
            }
        }
    }
}

fn write_to_read(e: WriteError) -> Read {
    match e {
        WriteError::TimedOut => Read::TimedOut,
        WriteError::Failed(e) => Read::Failed(e),
    }
}
