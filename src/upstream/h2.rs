//! HTTP/2 to upstreams (groups with `protocol = "h2c"`, or `"h2"` over
//! TLS), for gRPC services and other HTTP/2-only servers. Each worker keeps
//! one connection per server and multiplexes its requests on it as
//! streams. To the rest of the upstream client a stream looks like an
//! HTTP/1.1 connection ([`H2Exchange`], a `proxy::io::Stream`): the request
//! is written to it in the gateway's HTTP/1.1 form (head, then the body in
//! the framing the head announced), and the response is read from it in
//! that form too (the status line and fields, then the body chunked, with
//! the stream's trailers as the chunked trailer section), so the exchange,
//! the cache, the relay, refreshes and health probes work unchanged, and
//! `grpc-status` trailers reach the client as trailers.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use h2::client::{ResponseFuture, SendRequest};
use h2::{RecvStream, SendStream};
use http::header::{HeaderName, HeaderValue};
use http::{Method, Request, Uri};

use monoio::net::TcpStream;

use crate::error::{ErrorKind, ProxyError, Stage};
use crate::http::chunked::{ChunkedDecoder, Output};
use crate::http::headers::{name_is, parse_content_length};
use crate::proxy::io::{Read, Stream, WriteError};
use crate::proxy::turn::{drive, Buffered, SharedIo, TurnIo};
use crate::worker::context::WorkerCtx;

/// One request on the shared connection, seen as an HTTP/1.1 connection.
pub struct H2Exchange {
    sender: SendRequest<Bytes>,
    /// `http` or `https`, for the request's `:scheme`.
    scheme: &'static str,
    state: State,
    /// Bytes of the request written but not taken yet (a head in pieces).
    pending: Vec<u8>,
}

enum State {
    /// Waiting for a whole request head.
    Head,
    /// The request was sent; its body goes out as it is written.
    Body {
        send: Option<SendStream<Bytes>>,
        body: RequestBody,
        response: Option<ResponseFuture>,
    },
    /// The response's body is read from here.
    Response { recv: RecvStream },
    /// The response ended: nothing more to read.
    Done,
}

enum RequestBody {
    Length(u64),
    Chunked(ChunkedDecoder),
    None,
}

impl H2Exchange {
    pub fn new(sender: SendRequest<Bytes>, tls: bool) -> H2Exchange {
        H2Exchange {
            sender,
            scheme: if tls { "https" } else { "http" },
            state: State::Head,
            pending: Vec::new(),
        }
    }

    /// Takes request bytes (HTTP/1.1 form): the head starts the stream, the
    /// body goes out as DATA within the server's window.
    pub async fn write(&mut self, data: &[u8], limit: Duration) -> Result<(), WriteError> {
        let mut data = data;
        if matches!(self.state, State::Head) {
            self.pending.extend_from_slice(data);
            let Some(head_len) = find_head_end(&self.pending) else {
                return Ok(());
            };
            let head = self.pending[..head_len].to_vec();
            self.pending.drain(..head_len);
            self.start(&head).await.map_err(WriteError::Failed)?;
            let rest = std::mem::take(&mut self.pending);
            return self.send_body(&rest, limit).await;
        }
        if !self.pending.is_empty() {
            let mut joined = std::mem::take(&mut self.pending);
            joined.extend_from_slice(data);
            return self.send_body(&joined, limit).await;
        }
        self.send_body(std::mem::take(&mut data), limit).await
    }

    /// Sends the request's HEADERS.
    async fn start(&mut self, head: &[u8]) -> io::Result<()> {
        let mut slots = [httparse::EMPTY_HEADER; 256];
        let mut parsed = httparse::Request::new(&mut slots);
        if !matches!(parsed.parse(head), Ok(httparse::Status::Complete(_))) {
            return Err(invalid("the request head does not parse"));
        }
        let method = Method::from_bytes(parsed.method.unwrap_or("GET").as_bytes())
            .map_err(|_| invalid("method"))?;
        let path = parsed.path.unwrap_or("/");
        let mut authority = "";
        let mut body = RequestBody::None;
        let mut builder = Request::builder().method(method);
        for h in parsed.headers.iter() {
            if name_is(h.name, "host") {
                authority = std::str::from_utf8(h.value).unwrap_or("");
                continue;
            }
            if name_is(h.name, "transfer-encoding") {
                body = RequestBody::Chunked(ChunkedDecoder::new());
                continue;
            }
            if name_is(h.name, "content-length") {
                let n = parse_content_length(h.value).ok_or_else(|| invalid("content-length"))?;
                if n > 0 {
                    body = RequestBody::Length(n);
                }
            }
            if ["connection", "keep-alive", "proxy-connection", "upgrade"]
                .iter()
                .any(|hop| name_is(h.name, hop))
            {
                continue;
            }
            let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| invalid("field"))?;
            let value = HeaderValue::from_bytes(h.value).map_err(|_| invalid("field"))?;
            builder = builder.header(name, value);
        }
        let uri: Uri = format!("{}://{}{}", self.scheme, authority, path)
            .parse()
            .map_err(|_| invalid("target"))?;
        let request = builder.uri(uri).body(()).map_err(|_| invalid("request"))?;
        poll_fn(|cx| self.sender.poll_ready(cx))
            .await
            .map_err(io::Error::other)?;
        let end = matches!(body, RequestBody::None);
        let (response, send) = self
            .sender
            .send_request(request, end)
            .map_err(io::Error::other)?;
        self.state = State::Body {
            send: (!end).then_some(send),
            body,
            response: Some(response),
        };
        Ok(())
    }

    /// Request body bytes (HTTP/1.1 framing) out as DATA.
    async fn send_body(&mut self, data: &[u8], limit: Duration) -> Result<(), WriteError> {
        let State::Body { send, body, .. } = &mut self.state else {
            return Ok(());
        };
        let Some(stream) = send.as_mut() else {
            return Ok(());
        };
        let (plain, ended) = match body {
            RequestBody::None => return Ok(()),
            RequestBody::Length(left) => {
                let take = (data.len() as u64).min(*left) as usize;
                *left -= take as u64;
                (data[..take].to_vec(), *left == 0)
            }
            RequestBody::Chunked(decoder) => {
                let mut out = Vec::new();
                let used = decoder
                    .decode(data, &mut out, Output::Raw)
                    .map_err(|_| WriteError::Failed(invalid("chunked body")))?;
                if used < data.len() {
                    // A chunk line split across writes: kept for the next one.
                    self.pending.extend_from_slice(&data[used..]);
                }
                (out, decoder.is_done())
            }
        };
        let mut plain = Bytes::from(plain);
        while !plain.is_empty() {
            stream.reserve_capacity(plain.len());
            let granted = poll_fn(|cx| {
                let held = stream.capacity();
                if held > 0 {
                    return std::task::Poll::Ready(Some(Ok(held)));
                }
                stream.poll_capacity(cx)
            });
            let granted = match monoio::time::timeout(limit, granted).await {
                Ok(Some(Ok(n))) => n,
                Ok(_) => return Err(WriteError::Failed(io::ErrorKind::BrokenPipe.into())),
                Err(_) => return Err(WriteError::TimedOut),
            };
            let piece = plain.split_to(granted.min(plain.len()));
            stream
                .send_data(piece, false)
                .map_err(|e| WriteError::Failed(io::Error::other(e)))?;
        }
        if ended {
            stream
                .send_data(Bytes::new(), true)
                .map_err(|e| WriteError::Failed(io::Error::other(e)))?;
            *send = None;
        }
        Ok(())
    }

    /// Appends the response, HTTP/1.1 form, to `buf`: the head once the
    /// server answered, then the body chunked, then its trailers.
    pub async fn read(&mut self, buf: &mut BytesMut, limit: Duration) -> Read {
        let step = async {
            loop {
                match &mut self.state {
                    State::Head => return Read::Failed(invalid("read before the request")),
                    State::Body { response, .. } => {
                        let Some(waiting) = response.take() else {
                            return Read::Eof;
                        };
                        let response = match waiting.await {
                            Ok(r) => r,
                            Err(e) => return Read::Failed(io::Error::other(e)),
                        };
                        let (head, recv) = response.into_parts();
                        let start = buf.len();
                        buf.extend_from_slice(b"HTTP/1.1 ");
                        buf.extend_from_slice(head.status.as_str().as_bytes());
                        buf.extend_from_slice(b" ");
                        let reason = head.status.canonical_reason().unwrap_or("");
                        buf.extend_from_slice(reason.as_bytes());
                        buf.extend_from_slice(b"\r\n");
                        let bodyless = recv.is_end_stream();
                        for (name, value) in &head.headers {
                            // A body is relayed chunked: its length field is
                            // left out (both framings in one head is refused).
                            if !bodyless && name == http::header::CONTENT_LENGTH {
                                continue;
                            }
                            buf.extend_from_slice(name.as_str().as_bytes());
                            buf.extend_from_slice(b": ");
                            buf.extend_from_slice(value.as_bytes());
                            buf.extend_from_slice(b"\r\n");
                        }
                        if bodyless {
                            if !head.headers.contains_key(http::header::CONTENT_LENGTH) {
                                buf.extend_from_slice(b"content-length: 0\r\n");
                            }
                            self.state = State::Done;
                        } else {
                            buf.extend_from_slice(b"transfer-encoding: chunked\r\n");
                            self.state = State::Response { recv };
                        }
                        buf.extend_from_slice(b"\r\n");
                        return Read::Data(buf.len() - start);
                    }
                    State::Response { recv } => match recv.data().await {
                        Some(Ok(data)) => {
                            let _ = recv.flow_control().release_capacity(data.len());
                            if data.is_empty() {
                                continue;
                            }
                            let start = buf.len();
                            crate::http::headers::push_hex(buf, data.len() as u64);
                            buf.extend_from_slice(b"\r\n");
                            buf.extend_from_slice(&data);
                            buf.extend_from_slice(b"\r\n");
                            return Read::Data(buf.len() - start);
                        }
                        Some(Err(e)) => return Read::Failed(io::Error::other(e)),
                        None => {
                            let trailers = match recv.trailers().await {
                                Ok(t) => t,
                                Err(e) => return Read::Failed(io::Error::other(e)),
                            };
                            let start = buf.len();
                            buf.extend_from_slice(b"0\r\n");
                            for (name, value) in trailers.iter().flatten() {
                                buf.extend_from_slice(name.as_str().as_bytes());
                                buf.extend_from_slice(b": ");
                                buf.extend_from_slice(value.as_bytes());
                                buf.extend_from_slice(b"\r\n");
                            }
                            buf.extend_from_slice(b"\r\n");
                            self.state = State::Done;
                            return Read::Data(buf.len() - start);
                        }
                    },
                    State::Done => return Read::Eof,
                }
            }
        };
        match monoio::time::timeout(limit, step).await {
            Ok(read) => read,
            Err(_) => Read::TimedOut,
        }
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    memchr::memmem::find(buf, b"\r\n\r\n").map(|i| i + 4)
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// Opens the shared connection to a server: the HTTP/2 handshake over `io`
/// (plain, or TLS with ALPN `h2`), its driver spawned on this worker. The
/// returned sender makes streams; it fails once the connection is gone.
pub(crate) async fn handshake<T>(io: T, addr: SocketAddr) -> io::Result<SendRequest<Bytes>>
where
    T: TurnIo + 'static,
{
    // The codec's writes leave once per turn of the task driving it.
    let io = SharedIo::new(io);
    let (sender, connection) = drive(
        &io,
        h2::client::Builder::new().handshake::<_, Bytes>(io.clone()),
    )
    .await?
    .map_err(io::Error::other)?;
    monoio::spawn(async move {
        let error = match drive(&io, connection).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => io::Error::other(e),
            Err(e) => e,
        };
        tracing::debug!(upstream = %addr, error = %error, "HTTP/2 upstream connection ended");
    });
    Ok(sender)
}

/// This request's turn to open the HTTP/2 connection to a server; others
/// wait for it until it is done (dropped: opened or failed).
pub(crate) struct OpeningH2<'a> {
    ctx: &'a WorkerCtx,
    server: usize,
}

impl Drop for OpeningH2<'_> {
    fn drop(&mut self) {
        self.ctx.upstreams.borrow_mut().done_opening_h2(self.server);
        self.ctx.h2_connect_notify.notify_all();
    }
}

/// A stream on the live HTTP/2 connection to `server` (`Ok(Ok)`), or the
/// turn to open one (`Ok(Err)`), waiting before `deadline` while another
/// request opens it.
pub(crate) async fn stream_or_turn<'a>(
    ctx: &'a WorkerCtx,
    server: usize,
    deadline: std::time::Instant,
) -> Result<Result<Stream, OpeningH2<'a>>, ProxyError> {
    loop {
        {
            let mut upstreams = ctx.upstreams.borrow_mut();
            if let Some(sender) = upstreams.h2_sender(server) {
                let tls = upstreams.tls_for(server).is_some();
                return Ok(Ok(Stream::H2(Box::new(H2Exchange::new(sender, tls)))));
            }
            if upstreams.start_opening_h2(server) {
                return Ok(Err(OpeningH2 { ctx, server }));
            }
        }
        let opened = ctx
            .h2_connect_notify
            .wait_until(|| !ctx.upstreams.borrow().opening_h2(server));
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if monoio::time::timeout(left, opened).await.is_err() {
            let addr = ctx.upstreams.borrow().addr(server);
            return Err(ProxyError::upstream(
                ErrorKind::ConnectTimeout,
                addr,
                Stage::Connect,
                None,
            ));
        }
    }
}

/// The HTTP/2 handshake on a connection just opened to a server of an
/// HTTP/2 group (`tls`: over the group's TLS, agreed by ALPN `h2`),
/// within what is left of the connect timeout; the connection is kept for
/// every later request of this worker to the server.
pub(crate) async fn open<C: IntoH2Io>(
    ctx: &WorkerCtx,
    server: usize,
    addr: SocketAddr,
    conn: C,
    tls: bool,
    limit: std::time::Duration,
) -> Result<Stream, ProxyError> {
    let failed = |kind, e: Option<std::io::Error>| {
        tracing::warn!(worker = ctx.index, upstream = %addr, error = ?e, "HTTP/2 upstream handshake failed");
        ProxyError::upstream(kind, addr, Stage::Connect, e)
    };
    let handshake = async {
        match conn.into_h2_io() {
            Ok(H2Io::Plain(io)) => handshake(io, addr).await,
            Ok(H2Io::Tls(io)) => handshake(io, addr).await,
            Err(e) => Err(e),
        }
    };
    let sender = match monoio::time::timeout(limit, handshake).await {
        Ok(Ok(sender)) => sender,
        Ok(Err(e)) => return Err(failed(ErrorKind::UpstreamClosedEarly, Some(e))),
        Err(_) => return Err(failed(ErrorKind::ConnectTimeout, None)),
    };
    ctx.upstreams
        .borrow_mut()
        .set_h2_sender(server, sender.clone());
    Ok(Stream::H2(Box::new(H2Exchange::new(sender, tls))))
}

/// A connection in poll mode, for the HTTP/2 codec.
pub(crate) enum H2Io {
    Plain(Buffered<monoio::net::tcp::stream_poll::TcpStreamPoll>),
    Tls(Box<crate::tls::poll::PollTls>),
}

pub(crate) trait IntoH2Io {
    fn into_h2_io(self) -> std::io::Result<H2Io>;
}

impl IntoH2Io for TcpStream {
    fn into_h2_io(self) -> std::io::Result<H2Io> {
        use monoio::io::IntoPollIo;
        Ok(H2Io::Plain(Buffered::new(self.into_poll_io()?)))
    }
}

impl IntoH2Io for crate::tls::TlsStream {
    fn into_h2_io(self) -> std::io::Result<H2Io> {
        if self.connection().alpn_protocol() != Some(b"h2") {
            return Err(std::io::Error::other(
                "the server did not agree on HTTP/2 (ALPN h2)",
            ));
        }
        Ok(H2Io::Tls(Box::new(crate::tls::poll::PollTls::new(self)?)))
    }
}
