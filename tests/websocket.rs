//! WebSocket and other Upgrade tunnels over real sockets: a tungstenite
//! client and a WebSocket origin started per test, through the gateway in
//! plain HTTP and over TLS. The attacks: a 101 nobody asked for, an
//! upgrade a route does not allow, `h2c`, a refused upgrade that must leave
//! HTTP in place, an idle tunnel, and 10 MiB each way in flat memory.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use tungstenite::protocol::Role;
use tungstenite::{Message, WebSocket};

/// A WebSocket origin: `/ws` echoes every message, `/ws/bye` says `bye`
/// and closes first, `/refuse` answers 403 to the upgrade (and keeps
/// serving HTTP on the connection), `/sneaky` answers 101 to anything;
/// other paths answer 200 with `upgrade=<the Upgrade it saw>`.
struct WsOrigin {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

impl WsOrigin {
    fn start() -> WsOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let heads: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = heads.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let log = log.clone();
                std::thread::spawn(move || serve_ws(stream, &log));
            }
        });
        WsOrigin { addr, heads }
    }

    fn last_head(&self) -> String {
        self.heads
            .lock()
            .unwrap()
            .last()
            .cloned()
            .unwrap_or_default()
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Opens `/ws/gated`: its 101 is sent once a message comes here.
static GATE: std::sync::OnceLock<Mutex<std::sync::mpsc::Receiver<()>>> = std::sync::OnceLock::new();

fn serve_ws(stream: TcpStream, log: &Mutex<Vec<String>>) {
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        log.lock().unwrap().push(head.clone());
        let path = head.split(' ').nth(1).unwrap_or("").to_string();
        let upgrade = header(&head, "upgrade").unwrap_or("").to_string();
        let body = match path.as_str() {
            "/ws" | "/ws/bye" | "/ws/gated" if upgrade.eq_ignore_ascii_case("websocket") => {
                if path == "/ws/gated" {
                    // Answers only when the test says so.
                    let gate = GATE.get().expect("the gate").lock().unwrap();
                    gate.recv_timeout(IO_TIMEOUT)
                        .expect("the test opens the gate");
                }
                let key = header(&head, "sec-websocket-key").unwrap_or("");
                let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
                write!(
                    out,
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                )
                .unwrap();
                // Bytes the client sent early are in the reader's buffer.
                let early = reader.buffer().to_vec();
                let socket = Prefixed { early, inner: out };
                let mut ws = WebSocket::from_raw_socket(socket, Role::Server, None);
                if path == "/ws/bye" {
                    let _ = ws.send(Message::text("bye"));
                    let _ = ws.close(None);
                }
                loop {
                    match ws.read() {
                        Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                            if ws.send(m).is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                        Err(_) => return,
                    }
                }
            }
            "/refuse" => "refused".to_string(),
            "/sneaky" => {
                let _ = out.write_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
                );
                return;
            }
            _ => format!("upgrade={upgrade}"),
        };
        let status = if path == "/refuse" {
            "403 Forbidden"
        } else {
            "200 OK"
        };
        write!(
            out,
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
    }
}

/// A socket with bytes already read from it put back in front.
struct Prefixed {
    early: Vec<u8>,
    inner: TcpStream,
}

impl Read for Prefixed {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !self.early.is_empty() {
            let n = buf.len().min(self.early.len());
            buf[..n].copy_from_slice(&self.early[..n]);
            self.early.drain(..n);
            return Ok(n);
        }
        self.inner.read(buf)
    }
}

impl Write for Prefixed {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn ws_connect(addr: SocketAddr, path: &str) -> WebSocket<TcpStream> {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let (ws, response) = tungstenite::client::client(format!("ws://ws.test{path}"), tcp)
        .expect("the WebSocket handshake through the gateway");
    assert_eq!(response.status(), 101);
    ws
}

fn tunnels(gw: &ringgate::Handle) -> serde_json::Value {
    admin_stats(gw)["workers"][0]["tunnels"].clone()
}

fn gateway(origin: &WsOrigin) -> ringgate::Handle {
    start(with_admin(config_for(origin.addr)))
}

#[test]
fn text_binary_and_ping_pong_pass_and_a_client_close_ends_the_tunnel() {
    let origin = WsOrigin::start();
    let gw = gateway(&origin);
    let mut ws = ws_connect(gw.listen_addr(), "/ws");
    let head = origin.last_head();
    assert_eq!(header(&head, "upgrade"), Some("websocket"), "{head}");
    assert!(
        header(&head, "connection").is_some_and(|c| c.eq_ignore_ascii_case("upgrade")),
        "{head}"
    );
    assert!(header(&head, "sec-websocket-key").is_some(), "{head}");

    ws.send(Message::text("hello")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("hello"));
    let binary: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    ws.send(Message::binary(binary.clone())).unwrap();
    assert_eq!(ws.read().unwrap(), Message::binary(binary));
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .unwrap();
    assert_eq!(
        ws.read().unwrap(),
        Message::Pong(b"are you there".to_vec().into())
    );
    let open = tunnels(&gw);
    assert_eq!(open["open"], 1, "{open}");
    assert_eq!(open["opened"], 1, "{open}");
    assert!(open["bytes_up"].as_u64().unwrap() > 70_000, "{open}");
    assert!(open["bytes_down"].as_u64().unwrap() > 70_000, "{open}");

    ws.close(None).unwrap();
    loop {
        match ws.read() {
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("close handshake: {e}"),
        }
    }
    // The origin closed its socket after the close handshake: the gateway
    // passes that on and ends the tunnel without waiting for this client.
    wait_until(Duration::from_secs(10), "the tunnel closed", || {
        tunnels(&gw)["open"] == 0
    });
}

/// A frame the client sends while its upgrade is under way (after the
/// gateway read the request, before the 101 came back) arrives on the
/// gateway's armed receive; it must go through the tunnel, not be lost.
#[test]
fn a_frame_sent_before_the_101_goes_through_the_tunnel() {
    let origin = WsOrigin::start();
    let gw = gateway(&origin);
    let (open, gate) = std::sync::mpsc::channel();
    GATE.set(Mutex::new(gate)).expect("one test uses the gate");
    for round in 0..10 {
        let mut tcp = TcpStream::connect(gw.listen_addr()).unwrap();
        tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let seen = origin.heads.lock().unwrap().len();
        tcp.write_all(
            b"GET /ws/gated HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .unwrap();
        // The request is at the origin, which holds its 101: the gateway
        // waits for it with the client's receive armed.
        wait_until(Duration::from_secs(10), "the upgrade at the origin", || {
            origin.heads.lock().unwrap().len() > seen
        });
        let payload = format!("early {round:02}");
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        let mut frame = vec![0x81, 0x80 | payload.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(payload.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        tcp.write_all(&frame).unwrap();
        open.send(()).unwrap();
        // The 101, then the origin's echo of the frame (unmasked).
        let mut want = vec![0x81, payload.len() as u8];
        want.extend_from_slice(payload.as_bytes());
        let mut got = Vec::new();
        let mut chunk = [0u8; 1024];
        while !got.ends_with(&want) {
            let n = tcp.read(&mut chunk).expect("the echo of the early frame");
            assert!(n > 0, "closed; got {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&chunk[..n]);
        }
        assert!(
            got.starts_with(b"HTTP/1.1 101 "),
            "{:?}",
            String::from_utf8_lossy(&got)
        );
    }
}

#[test]
fn an_upstream_that_closes_first_closes_the_client() {
    let origin = WsOrigin::start();
    let gw = gateway(&origin);
    let mut ws = ws_connect(gw.listen_addr(), "/ws/bye");
    assert_eq!(ws.read().unwrap(), Message::text("bye"));
    assert!(matches!(ws.read().unwrap(), Message::Close(_)));
    // The close reply goes back; then the upstream's FIN reaches us.
    loop {
        match ws.read() {
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("after the upstream's close: {e}"),
        }
    }
    wait_until(Duration::from_secs(10), "the tunnel closed", || {
        tunnels(&gw)["open"] == 0
    });
}

#[test]
fn a_refused_upgrade_is_an_ordinary_response_and_the_connection_stays_http() {
    let origin = WsOrigin::start();
    let gw = gateway(&origin);
    let mut c = Client::connect(gw.listen_addr());
    let r = c.request(
        b"GET /refuse HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    );
    assert_eq!(r.status, 403);
    assert_eq!(r.text(), "refused");
    // Still HTTP: the next request on the same connection is a request.
    let r = c.request(b"GET /plain HTTP/1.1\r\nHost: ws.test\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "upgrade=");
    assert_eq!(tunnels(&gw)["opened"], 0);
}

#[test]
fn a_route_that_does_not_allow_upgrades_forwards_without_them() {
    let origin = WsOrigin::start();
    let mut config = with_admin(config_for(origin.addr));
    config.routes[0].upgrade.clear();
    let gw = start(config);
    let mut c = Client::connect(gw.listen_addr());
    let r = c.request(
        b"GET /ws HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "upgrade=", "the Upgrade field was not forwarded");
    let head = origin.last_head();
    assert!(header(&head, "connection").is_none(), "{head}");
    assert_eq!(
        c.request(b"GET /x HTTP/1.1\r\nHost: ws.test\r\n\r\n")
            .status,
        200
    );
    assert_eq!(tunnels(&gw)["opened"], 0);
}

#[test]
fn h2c_post_and_http10_upgrades_are_ignored() {
    let origin = WsOrigin::start();
    let gw = gateway(&origin);
    let mut c = Client::connect(gw.listen_addr());
    for request in [
        &b"GET /h2c HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"[..],
        b"POST /post HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 0\r\n\r\n",
        // `upgrade` not in Connection: the Upgrade field alone asks for nothing.
        b"GET /bare HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\n\r\n",
    ] {
        let r = c.request(request);
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "upgrade=", "{}", String::from_utf8_lossy(request));
        let head = origin.last_head();
        assert!(header(&head, "http2-settings").is_none(), "{head}");
    }
    let r = c.request(
        b"GET /old HTTP/1.0\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "upgrade=");
    assert_eq!(tunnels(&gw)["opened"], 0);
}

#[test]
fn a_101_nobody_asked_for_is_a_bad_gateway_never_a_tunnel() {
    let origin = WsOrigin::start();
    let gw = gateway(&origin);
    // A plain request; and an upgrade the route does not allow (h2c is never allowed).
    for request in [
        &b"GET /sneaky HTTP/1.1\r\nHost: ws.test\r\nConnection: close\r\n\r\n"[..],
        b"GET /sneaky HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade, close\r\nUpgrade: h2c\r\n\r\n",
    ] {
        let mut c = Client::connect(gw.listen_addr());
        let r = c.request(request);
        assert_eq!(r.status, 502);
    }
    assert_eq!(tunnels(&gw)["opened"], 0);
}

#[test]
fn a_silent_tunnel_is_closed_after_tunnel_idle() {
    let origin = WsOrigin::start();
    let mut config = with_admin(config_for(origin.addr));
    config.routes[0].timeouts.tunnel_idle = Some(Duration::from_millis(300));
    let gw = start(config);
    let mut ws = ws_connect(gw.listen_addr(), "/ws");
    ws.send(Message::text("once")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("once"));
    let started = Instant::now();
    match ws.read() {
        Err(tungstenite::Error::ConnectionClosed)
        | Err(tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
        )) => {}
        other => panic!("expected the idle tunnel to close, got {other:?}"),
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < IO_TIMEOUT,
        "closed after {waited:?}"
    );
    wait_until(Duration::from_secs(10), "the tunnel closed", || {
        tunnels(&gw)["open"] == 0
    });
}

#[test]
fn a_websocket_over_tls_tunnels_through_the_split_tls_connection() {
    use rustls::pki_types::ServerName;
    let origin = WsOrigin::start();
    let dir = temp_root().join(format!("ringgate-ws-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = ringgate::tls::certs::self_signed(&["localhost"]).unwrap();
    let files = ringgate::config::CertificateFiles {
        cert: dir.join("c.pem"),
        key: dir.join("k.pem"),
        ocsp: None,
    };
    std::fs::write(&files.cert, &cert).unwrap();
    std::fs::write(&files.key, &key).unwrap();
    let mut config = with_admin(config_for(origin.addr));
    config.listeners[0].tls = Some(ringgate::config::ListenerTls {
        certificates: vec![files],
    });
    let gw = start(config);

    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).unwrap())
        .unwrap();
    let client_config = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let tcp = TcpStream::connect(gw.listen_addr()).unwrap();
    tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let conn = rustls::ClientConnection::new(
        client_config,
        ServerName::try_from("localhost".to_string()).unwrap(),
    )
    .unwrap();
    let tls = rustls::StreamOwned::new(conn, tcp);
    let (mut ws, response) =
        tungstenite::client::client("wss://localhost/ws", tls).expect("WebSocket over TLS");
    assert_eq!(response.status(), 101);
    for i in 0..20 {
        let text = format!("message {i} {}", "x".repeat(i * 1000));
        ws.send(Message::text(text.clone())).unwrap();
        assert_eq!(ws.read().unwrap(), Message::text(text));
    }
    let big = vec![7u8; 1 << 20];
    ws.send(Message::binary(big.clone())).unwrap();
    assert_eq!(ws.read().unwrap(), Message::binary(big));
    ws.close(None).unwrap();
    loop {
        match ws.read() {
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("close over TLS: {e}"),
        }
    }
    wait_until(Duration::from_secs(10), "the tunnel closed", || {
        tunnels(&gw)["open"] == 0
    });
}

#[test]
fn ten_mib_each_way_pass_in_flat_memory() {
    const TOTAL: usize = 10 << 20;
    const MESSAGE: usize = 256 << 10;
    let origin = WsOrigin::start();
    let config = format!(
        "[[listeners]]\naddress = \"{{listen}}\"\n[workers]\ncount = 1\npin = false\n[upstreams.app]\nservers = [\"{}\"]\n[[routes]]\nupstream = \"app\"\n[admin]\nenabled = false\n",
        origin.addr
    );
    let gw = GatewayProcess::start(&config, |_| {});
    // A first tunnel: the worker's buffers and code pages are in before measuring.
    let mut warm = ws_connect(gw.addr, "/ws");
    warm.send(Message::binary(vec![1u8; MESSAGE])).unwrap();
    warm.read().unwrap();
    let (_, peak_before) = gw.memory_kib();

    let ws = ws_connect(gw.addr, "/ws");
    // Writer and reader on two threads: the client sends while the echo
    // comes back, so the gateway holds whatever it does not pass on.
    let stream = ws.get_ref().try_clone().unwrap();
    let mut writer = WebSocket::from_raw_socket(stream, Role::Client, None);
    let sending = in_thread(move || {
        for i in 0..TOTAL / MESSAGE {
            let fill = (i % 251) as u8;
            writer.send(Message::binary(vec![fill; MESSAGE])).unwrap();
        }
        writer
    });
    let mut reader = ws;
    let mut received = 0;
    for i in 0..TOTAL / MESSAGE {
        match reader.read().unwrap() {
            Message::Binary(data) => {
                assert_eq!(data.len(), MESSAGE);
                assert!(data.iter().all(|&b| b == (i % 251) as u8), "message {i}");
                received += data.len();
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let writer = sending.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(received, TOTAL);
    drop((writer, reader, warm));
    let (_, peak_after) = gw.memory_kib();
    let growth = peak_after.saturating_sub(peak_before);
    eprintln!("gateway peak RSS growth while tunnelling 10 MiB each way: {growth} KiB");
    assert!(
        growth < 4 * 1024,
        "peak RSS grew by {growth} KiB tunnelling 10 MiB each way"
    );
    assert_eq!(gw.stop().code(), Some(0));
}

/// A WebSocket echo origin over TLS: one connection at a time, a 101 to
/// any upgrade, then every message echoed.
fn tls_ws_origin(cert: &str, key: &str) -> SocketAddr {
    use rustls::pki_types::pem::PemObject;
    let chain = vec![rustls::pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()];
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { continue };
            let config = config.clone();
            std::thread::spawn(move || {
                tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                let conn = rustls::ServerConnection::new(config).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                // The head, a byte at a time: nothing after it is read here.
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if tls.read(&mut byte).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let key = header(&head, "sec-websocket-key").unwrap_or("");
                let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
                write!(
                    tls,
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                )
                .unwrap();
                let mut ws = WebSocket::from_raw_socket(tls, Role::Server, None);
                while let Ok(m) = ws.read() {
                    if (m.is_text() || m.is_binary()) && ws.send(m).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn a_websocket_to_a_tls_upstream_tunnels_over_the_upstreams_tls() {
    let (cert, key) = ringgate::tls::certs::self_signed(&["ws.internal"]).unwrap();
    let dir = temp_root().join(format!("ringgate-ws-up-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ca.pem"), &cert).unwrap();
    let origin = tls_ws_origin(&cert, &key);
    let mut config = with_admin(config_for(origin));
    config.upstreams[0].tls = Some(ringgate::config::UpstreamTls {
        sni: Some("ws.internal".into()),
        verify: true,
        ca: Some(dir.join("ca.pem")),
        client_cert: None,
    });
    let gw = start(config);
    let mut ws = ws_connect(gw.listen_addr(), "/ws");
    for size in [5, 20_000, 300_000] {
        let data = vec![b'z'; size];
        ws.send(Message::binary(data.clone())).unwrap();
        assert_eq!(ws.read().unwrap(), Message::binary(data));
    }
    ws.close(None).unwrap();
    loop {
        match ws.read() {
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("close through the TLS upstream: {e}"),
        }
    }
    drop(ws);
    wait_until(Duration::from_secs(10), "the tunnel closed", || {
        tunnels(&gw)["open"] == 0
    });
}

#[test]
fn bytes_after_a_refused_upgrade_are_the_next_request_never_tunnel_data() {
    // The smuggling attempt: an upgrade the upstream refuses, with a second
    // request riding behind it in the same packet. Until a 101 the
    // connection is HTTP, so the second request is parsed and routed like
    // any other.
    let origin = WsOrigin::start();
    let gw = gateway(&origin);
    let mut c = Client::connect(gw.listen_addr());
    c.send(b"GET /refuse HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\nGET /second HTTP/1.1\r\nHost: ws.test\r\n\r\n");
    let first = c.read_response().unwrap();
    assert_eq!(first.status, 403);
    let second = c.read_response().unwrap();
    assert_eq!(second.status, 200);
    assert_eq!(second.text(), "upgrade=");
    assert!(
        origin.last_head().starts_with("GET /second "),
        "{}",
        origin.last_head()
    );
    assert_eq!(tunnels(&gw)["opened"], 0);
}

#[test]
fn frames_sent_with_the_upgrade_request_reach_the_upstream_after_the_101() {
    let origin = WsOrigin::start();
    let gw = gateway(&origin);
    let mut tcp = TcpStream::connect(gw.listen_addr()).unwrap();
    tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    // A masked text frame "early" (RFC 6455 section 5.2), in the same write as the request.
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | 5];
    frame.extend_from_slice(&mask);
    frame.extend(b"early".iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    let mut request = b"GET /ws HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".to_vec();
    request.extend_from_slice(&frame);
    tcp.write_all(&request).unwrap();
    let mut reader = BufReader::new(tcp.try_clone().unwrap());
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
    }
    // The echo: an unmasked text frame "early".
    let mut echo = [0u8; 7];
    reader.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"\x81\x05early");
}

#[test]
fn a_tunnel_writes_one_access_log_line_when_it_closes() {
    let origin = WsOrigin::start();
    let path = fresh_path("ws-access.log");
    let mut config = with_admin(config_for(origin.addr));
    config.access_log = ringgate::config::AccessLogConfig {
        enabled: true,
        target: ringgate::config::LogTarget::File(path.clone()),
        format: ringgate::config::LogFormat::Json,
        flush: Duration::from_millis(10),
        ..Default::default()
    };
    let gw = start(config);
    let mut ws = ws_connect(gw.listen_addr(), "/ws");
    ws.send(Message::binary(vec![7u8; 5000])).unwrap();
    assert_eq!(ws.read().unwrap(), Message::binary(vec![7u8; 5000]));
    let lines = || std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(lines(), "", "no line while the tunnel is open");
    ws.close(None).unwrap();
    while ws.read().is_ok() {}
    wait_until(Duration::from_secs(10), "the tunnel's line", || {
        !lines().is_empty()
    });
    let text = lines();
    assert_eq!(text.lines().count(), 1, "{text}");
    let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(line["status"], 101, "{line}");
    assert_eq!(line["target"], "/ws");
    assert!(line["bytes_in"].as_u64().unwrap() > 5000, "{line}");
    assert!(line["bytes_out"].as_u64().unwrap() > 5000, "{line}");
    assert_eq!(line["upstream"], origin.addr.to_string());
}
