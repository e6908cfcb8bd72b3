//! HTTP/2 clients for the tests: hyperium's `h2` client on a monoio
//! runtime of its own thread (cleartext with prior knowledge, or over TLS
//! with ALPN `h2`), and a raw frame writer/reader for the attacks a real
//! client would never send.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use monoio::io::IntoPollIo;

/// A response as an HTTP/2 client saw it.
#[derive(Debug, Clone)]
pub struct H2Response {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
    pub trailers: Option<http::HeaderMap>,
}

impl H2Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }
}

/// One request to send: method, path, extra fields, body.
#[derive(Clone)]
pub struct H2Request {
    pub method: &'static str,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
}

pub fn h2_get(path: impl Into<String>) -> H2Request {
    H2Request {
        method: "GET",
        path: path.into(),
        headers: Vec::new(),
        body: None,
    }
}

/// How to reach the gateway.
#[derive(Clone)]
pub enum Via {
    /// Cleartext, prior knowledge (an `h2c` listener).
    Cleartext,
    /// TLS with ALPN `h2`, trusting any certificate.
    Tls(Arc<rustls::ClientConfig>),
}

fn runtime() -> monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>> {
    monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .expect("a monoio runtime for the test client")
}

/// Sends every request at once on one connection (each its own stream)
/// and returns the responses in the order asked.
pub fn send_all(
    addr: SocketAddr,
    via: Via,
    requests: Vec<H2Request>,
) -> Vec<Result<H2Response, String>> {
    std::thread::spawn(move || {
        runtime().block_on(async move {
            let tcp = monoio::net::TcpStream::connect(addr)
                .await
                .expect("connect");
            match via {
                Via::Cleartext => run(tcp.into_poll_io().unwrap(), requests).await,
                Via::Tls(config) => {
                    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                    let conn = rustls::ClientConnection::new(config, name).unwrap();
                    let mut tls =
                        ringgate::tls::TlsStream::new(tcp, rustls::Connection::Client(conn));
                    tls.handshake(Instant::now() + Duration::from_secs(10))
                        .await
                        .expect("TLS handshake");
                    assert_eq!(
                        tls.connection().alpn_protocol(),
                        Some(&b"h2"[..]),
                        "the gateway chose HTTP/2"
                    );
                    run(ringgate::tls::poll::PollTls::new(tls).unwrap(), requests).await
                }
            }
        })
    })
    .join()
    .unwrap()
}

async fn run<T>(io: T, requests: Vec<H2Request>) -> Vec<Result<H2Response, String>>
where
    T: monoio::io::poll_io::AsyncRead + monoio::io::poll_io::AsyncWrite + Unpin + 'static,
{
    let (client, connection) = h2::client::handshake(io).await.expect("HTTP/2 handshake");
    monoio::spawn(async move {
        let _ = connection.await;
    });
    let mut waiting = Vec::new();
    for r in requests {
        let client = client.clone();
        waiting.push(monoio::spawn(async move {
            let mut client = client.ready().await.map_err(|e| e.to_string())?;
            let mut builder = http::Request::builder()
                .method(r.method)
                .uri(format!("http://test{}", r.path));
            for (name, value) in &r.headers {
                builder = builder.header(name, value);
            }
            let request = builder.body(()).unwrap();
            let (response, mut send) = client
                .send_request(request, r.body.is_none())
                .map_err(|e| e.to_string())?;
            if let Some(body) = r.body {
                send_body(&mut send, Bytes::from(body)).await?;
            }
            read_response(response).await
        }));
    }
    let mut out = Vec::new();
    for w in waiting {
        out.push(w.await);
    }
    out
}

async fn send_body(send: &mut h2::SendStream<Bytes>, body: Bytes) -> Result<(), String> {
    send_body_only(send, body).await?;
    send.send_data(Bytes::new(), true)
        .map_err(|e| e.to_string())
}

async fn read_response(response: h2::client::ResponseFuture) -> Result<H2Response, String> {
    let response = response.await.map_err(|e| e.to_string())?;
    let (head, mut body) = response.into_parts();
    let mut bytes = Vec::new();
    while let Some(data) = body.data().await {
        let data = data.map_err(|e| e.to_string())?;
        let _ = body.flow_control().release_capacity(data.len());
        bytes.extend_from_slice(&data);
    }
    let trailers = body.trailers().await.map_err(|e| e.to_string())?;
    Ok(H2Response {
        status: head.status.as_u16(),
        headers: head.headers,
        body: bytes,
        trailers,
    })
}

// ------------------------------------------------------------ raw frames

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

pub const ENHANCE_YOUR_CALM: u32 = 0xb;
pub const CANCEL: u32 = 0x8;

/// One frame's bytes.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A header block (HPACK, literals without indexing, no Huffman) for a GET.
pub fn get_block(path: &str) -> Vec<u8> {
    let mut b = vec![0x82, 0x86]; // :method GET, :scheme http
    literal(&mut b, 4, path.as_bytes()); // :path
    literal(&mut b, 1, b"test"); // :authority
    b
}

/// A literal field without indexing, its name from the static table.
pub fn literal(block: &mut Vec<u8>, name_index: u8, value: &[u8]) {
    assert!(name_index < 15 && value.len() < 127);
    block.push(name_index);
    block.push(value.len() as u8);
    block.extend_from_slice(value);
}

/// A literal field without indexing, with a new name.
pub fn literal_named(block: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    assert!(name.len() < 127 && value.len() < 127);
    block.push(0);
    block.push(name.len() as u8);
    block.extend_from_slice(name);
    block.push(value.len() as u8);
    block.extend_from_slice(value);
}

/// A cleartext connection that has sent the preface and empty SETTINGS.
pub struct RawH2 {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawH2 {
    pub fn connect(addr: SocketAddr) -> RawH2 {
        Self::connect_with_settings(addr, &[])
    }

    /// Connects with these SETTINGS (id, value) pairs.
    pub fn connect_with_settings(addr: SocketAddr, settings: &[(u16, u32)]) -> RawH2 {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut payload = Vec::new();
        for (id, value) in settings {
            payload.extend_from_slice(&id.to_be_bytes());
            payload.extend_from_slice(&value.to_be_bytes());
        }
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &payload));
        stream.write_all(&hello).unwrap();
        RawH2 {
            stream,
            buf: Vec::new(),
        }
    }

    /// Writes bytes; false once the gateway closed the connection.
    pub fn send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).is_ok()
    }

    /// The next frame: (type, flags, stream, payload); `None` at the close.
    pub fn next_frame(&mut self) -> Option<(u8, u8, u32, Vec<u8>)> {
        loop {
            if self.buf.len() >= 9 {
                let len = ((self.buf[0] as usize) << 16)
                    | ((self.buf[1] as usize) << 8)
                    | self.buf[2] as usize;
                if self.buf.len() >= 9 + len {
                    let kind = self.buf[3];
                    let flags = self.buf[4];
                    let stream =
                        u32::from_be_bytes(self.buf[5..9].try_into().unwrap()) & 0x7fff_ffff;
                    let payload = self.buf[9..9 + len].to_vec();
                    self.buf.drain(..9 + len);
                    return Some((kind, flags, stream, payload));
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads frames until a GOAWAY (its error code) or the close (`None`).
    pub fn goaway(&mut self) -> Option<u32> {
        while let Some((kind, _, _, payload)) = self.next_frame() {
            if kind == GOAWAY {
                return Some(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
            }
        }
        None
    }
}

/// A TLS client config offering only `h2` and trusting any certificate
/// (the tests check the protocol, not a chain to a root).
pub fn tls_h2_config() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(ringgate::tls::connector::any_certificate(provider))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

// ------------------------------------------------------- an HTTP/2 origin

/// An HTTP/2 origin with prior knowledge (h2c) on port 0, on a thread of
/// its own: `/grpc...` echoes the request body as a gRPC service would
/// answer, with `grpc-status: 0` and `grpc-message: ok` as trailers; any
/// other path answers `h2 <method> <path> host=<authority> body=<bytes>`.
pub struct H2Origin {
    pub addr: SocketAddr,
    /// Connections accepted.
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
    /// Streams (requests) served.
    pub streams: Arc<std::sync::atomic::AtomicUsize>,
    /// Connections open now.
    pub open: Arc<std::sync::atomic::AtomicUsize>,
}

impl H2Origin {
    pub fn start() -> H2Origin {
        Self::start_with(None)
    }

    /// Over TLS with ALPN `h2` (the gateway's own terminator serves it),
    /// with a self-signed certificate for `localhost`.
    pub fn start_tls() -> H2Origin {
        let dir = super::temp_root().join(format!(
            "ringgate-h2-origin-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = ringgate::tls::certs::self_signed(&["localhost"]).unwrap();
        std::fs::write(dir.join("c.pem"), cert).unwrap();
        std::fs::write(dir.join("k.pem"), key).unwrap();
        let tls = ringgate::config::ListenerTls {
            certificates: vec![ringgate::config::CertificateFiles {
                cert: dir.join("c.pem"),
                key: dir.join("k.pem"),
                ocsp: None,
            }],
        };
        let tickets = ringgate::tls::shared_ticketer().unwrap();
        Self::start_with(Some(
            ringgate::tls::Terminator::new(&tls, true, tickets).unwrap(),
        ))
    }

    fn start_with(tls: Option<ringgate::tls::Terminator>) -> H2Origin {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        // The runtime waits for readiness: a blocking accept would stall it.
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let streams = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let (conns, served, now_open) = (connections.clone(), streams.clone(), open.clone());
        std::thread::spawn(move || {
            runtime().block_on(async move {
                let listener = monoio::net::TcpListener::from_std(listener).unwrap();
                while let Ok((tcp, _)) = listener.accept().await {
                    conns.fetch_add(1, Ordering::SeqCst);
                    let served = served.clone();
                    let now_open = now_open.clone();
                    match &tls {
                        None => {
                            monoio::spawn(serve_h2(tcp.into_poll_io().unwrap(), served, now_open));
                        }
                        Some(tls) => {
                            let deadline = Instant::now() + Duration::from_secs(10);
                            let Ok(stream) = tls.accept(tcp, deadline).await else {
                                continue;
                            };
                            let io = ringgate::tls::poll::PollTls::new(stream).unwrap();
                            monoio::spawn(serve_h2(io, served, now_open));
                        }
                    }
                }
            })
        });
        H2Origin {
            addr,
            connections,
            streams,
            open,
        }
    }
}

async fn serve_h2<T>(
    io: T,
    served: Arc<std::sync::atomic::AtomicUsize>,
    open: Arc<std::sync::atomic::AtomicUsize>,
) where
    T: monoio::io::poll_io::AsyncRead + monoio::io::poll_io::AsyncWrite + Unpin + 'static,
{
    use std::sync::atomic::Ordering;
    open.fetch_add(1, Ordering::SeqCst);
    if let Ok(mut connection) = h2::server::handshake(io).await {
        while let Some(Ok((request, respond))) = connection.accept().await {
            served.fetch_add(1, Ordering::SeqCst);
            monoio::spawn(answer(request, respond));
        }
    }
    open.fetch_sub(1, Ordering::SeqCst);
}

async fn answer(
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
) {
    let (head, mut body) = request.into_parts();
    let mut bytes = Vec::new();
    while let Some(Ok(data)) = body.data().await {
        let _ = body.flow_control().release_capacity(data.len());
        bytes.extend_from_slice(&data);
    }
    let grpc = head.uri.path().starts_with("/grpc");
    let reply = if grpc {
        bytes
    } else {
        format!(
            "h2 {} {} host={} body={}",
            head.method,
            head.uri.path(),
            head.uri.authority().map(|a| a.as_str()).unwrap_or(""),
            bytes.len()
        )
        .into_bytes()
    };
    let mut response = http::Response::builder().status(200);
    if grpc {
        response = response.header("content-type", "application/grpc");
    }
    let Ok(mut send) = respond.send_response(response.body(()).unwrap(), false) else {
        return;
    };
    let _ = send_body_only(&mut send, Bytes::from(reply)).await;
    if grpc {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        trailers.insert("grpc-message", "ok".parse().unwrap());
        let _ = send.send_trailers(trailers);
    } else {
        let _ = send.send_data(Bytes::new(), true);
    }
}

/// Body bytes as the peer's window allows, without ending the stream.
async fn send_body_only(send: &mut h2::SendStream<Bytes>, mut body: Bytes) -> Result<(), String> {
    while !body.is_empty() {
        send.reserve_capacity(body.len().min(64 * 1024));
        let granted = std::future::poll_fn(|cx| send.poll_capacity(cx))
            .await
            .ok_or("stream closed")?
            .map_err(|e| e.to_string())?;
        let piece = body.split_to(granted.min(body.len()));
        send.send_data(piece, false).map_err(|e| e.to_string())?;
    }
    Ok(())
}
