//! A TLS connection split into a reading half and a writing half that run
//! at once (an upgraded connection's two directions). The halves share the
//! rustls connection through a `RefCell` that is never borrowed across an
//! await; each owns its half of the socket. Only the writing half writes to
//! the socket: records rustls queues while reading (a key update's answer)
//! go out with the next write, before any application data, as TLS 1.3
//! requires.

use std::cell::RefCell;
use std::io::{self, BufRead, Write};
use std::rc::Rc;

use bytes::BytesMut;
use monoio::buf::SliceMut;
use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Splitable,
};
use monoio::net::TcpStream;

use super::stream::{TlsStream, RECORD_ROOM};
use crate::proxy::io::Read;

pub struct TlsReadHalf {
    tcp: OwnedReadHalf<TcpStream>,
    conn: Rc<RefCell<rustls::Connection>>,
    incoming: Vec<u8>,
    taken: usize,
    eof: bool,
}

pub struct TlsWriteHalf {
    tcp: OwnedWriteHalf<TcpStream>,
    conn: Rc<RefCell<rustls::Connection>>,
    outgoing: Vec<u8>,
}

impl TlsStream {
    /// Splits the connection; ciphertext already read stays with the reader.
    pub fn into_split(self) -> (TlsReadHalf, TlsWriteHalf) {
        let (read, write) = self.tcp.into_split();
        let conn = Rc::new(RefCell::new(self.conn));
        (
            TlsReadHalf {
                tcp: read,
                conn: conn.clone(),
                incoming: self.incoming,
                taken: self.taken,
                eof: self.eof,
            },
            TlsWriteHalf {
                tcp: write,
                conn,
                outgoing: self.outgoing,
            },
        )
    }
}

impl TlsReadHalf {
    /// Appends decrypted bytes to `buf`; waits as long as the peer does
    /// (the tunnel's idle watchdog bounds it).
    pub async fn read_some(&mut self, buf: &mut BytesMut, reserve: usize) -> Read {
        loop {
            {
                let mut conn = self.conn.borrow_mut();
                match conn.reader().fill_buf() {
                    Ok([]) => return Read::Eof,
                    Ok(chunk) => {
                        let n = chunk.len();
                        buf.reserve(reserve.max(n));
                        buf.extend_from_slice(chunk);
                        conn.reader().consume(n);
                        return Read::Data(n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Read::Eof,
                    Err(e) => return Read::Failed(e),
                }
            }
            if self.taken == self.incoming.len() {
                self.incoming.clear();
                self.taken = 0;
                if self.eof {
                    return Read::Eof;
                }
                let mut owned = std::mem::take(&mut self.incoming);
                owned.reserve(RECORD_ROOM);
                let cap = owned.capacity();
                let (result, owned) = self.tcp.read(SliceMut::new(owned, 0, cap)).await;
                self.incoming = owned.into_inner();
                match result {
                    Ok(0) => self.eof = true,
                    Ok(_) => {}
                    Err(e) => return Read::Failed(e),
                }
            }
            let mut conn = self.conn.borrow_mut();
            let mut unread = &self.incoming[self.taken..];
            match conn.read_tls(&mut unread) {
                Ok(n) => self.taken += n,
                Err(e) => return Read::Failed(e),
            }
            if let Err(e) = conn.process_new_packets() {
                return Read::Failed(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        }
    }
}

impl TlsWriteHalf {
    /// Encrypts all of `data` and writes it out.
    pub async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        let mut rest = data;
        while !rest.is_empty() {
            let n = self.conn.borrow_mut().writer().write(rest)?;
            rest = &rest[n..];
            self.flush().await?;
        }
        self.flush().await
    }

    /// Sends `close_notify` and closes the sending side of the socket.
    pub async fn shutdown(&mut self) {
        self.conn.borrow_mut().send_close_notify();
        let _ = self.flush().await;
        let _ = self.tcp.shutdown().await;
    }

    async fn flush(&mut self) -> io::Result<()> {
        loop {
            self.outgoing.clear();
            {
                let mut conn = self.conn.borrow_mut();
                if !conn.wants_write() {
                    return Ok(());
                }
                conn.write_tls(&mut self.outgoing)?;
            }
            let out = std::mem::take(&mut self.outgoing);
            let (result, out) = self.tcp.write_all(out).await;
            self.outgoing = out;
            result?;
        }
    }
}
