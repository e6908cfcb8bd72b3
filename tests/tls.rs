//! TLS termination over real sockets: a rustls client against the gateway's
//! TLS listener, certificates generated per test.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use ringgate::config::{CertificateFiles, ListenerConfig, ListenerTls};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

/// Writes a self-signed certificate for `names` into a fresh directory.
fn certificate(tag: &str, names: &[&str]) -> (CertificateFiles, Vec<u8>) {
    let dir: PathBuf = temp_root().join(format!(
        "ringgate-tls-{tag}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = ringgate::tls::certs::self_signed(names).unwrap();
    let files = CertificateFiles {
        cert: dir.join("c.pem"),
        key: dir.join("k.pem"),
        ocsp: None,
    };
    std::fs::write(&files.cert, &cert).unwrap();
    std::fs::write(&files.key, &key).unwrap();
    let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
    (files, der.to_vec())
}

use rustls::pki_types::pem::PemObject;

fn tls_listener(certificates: Vec<CertificateFiles>) -> ListenerConfig {
    ListenerConfig {
        backlog: 128,
        tls: Some(ListenerTls { certificates }),
        ..ListenerConfig::new("127.0.0.1:0".parse().unwrap())
    }
}

/// Accepts any certificate and remembers the leaf it was shown: the tests
/// check which certificate the gateway chose, not a chain to a root.
#[derive(Debug, Default)]
struct Recorder {
    seen: Mutex<Vec<Vec<u8>>>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.seen.lock().unwrap().push(end_entity.to_vec());
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn client_config(
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> (Arc<rustls::ClientConfig>, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(recorder.clone())
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    (Arc::new(config), recorder)
}

struct Exchange {
    response: String,
    /// The response's bytes as received.
    raw: Vec<u8>,
    version: Option<rustls::ProtocolVersion>,
    resumed: bool,
    alpn: Option<Vec<u8>>,
}

/// One request with `Connection: close` over a new TLS connection.
fn tls_get(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    sni: &str,
    path: &str,
) -> Exchange {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    match tls.read_to_end(&mut out) {
        Ok(_) => {}
        // The gateway may close without close_notify after `Connection: close`.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => panic!("TLS read failed: {e}"),
    }
    Exchange {
        response: String::from_utf8_lossy(&out).to_string(),
        raw: out.clone(),
        version: tls.conn.protocol_version(),
        resumed: tls.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
        alpn: tls.conn.alpn_protocol().map(<[u8]>::to_vec),
    }
}

fn gateway_with(
    origin: &Origin,
    listeners: Vec<ListenerConfig>,
    workers: usize,
) -> ringgate::Handle {
    let mut config = config_for(origin.addr);
    config.workers.count = Some(workers);
    config.listeners = listeners;
    start(config)
}

#[test]
fn a_request_over_tls_1_3_reaches_the_upstream_marked_https() {
    let origin = Origin::start();
    let (cert, _) = certificate("basic", &["localhost"]);
    let gw = gateway_with(&origin, vec![tls_listener(vec![cert])], 1);
    let (config, _) = client_config(&[&rustls::version::TLS13]);
    let x = tls_get(gw.listen_addr(), &config, "localhost", "/echo");
    assert!(x.response.starts_with("HTTP/1.1 200"), "{}", x.response);
    assert!(
        x.response.contains("X-Forwarded-Proto: https"),
        "{}",
        x.response
    );
    assert!(
        x.response
            .contains("Forwarded: for=127.0.0.1;proto=https;host=\"localhost\""),
        "{}",
        x.response
    );
    assert_eq!(x.version, Some(rustls::ProtocolVersion::TLSv1_3));
    assert_eq!(x.alpn.as_deref(), Some(&b"http/1.1"[..]));
}

#[test]
fn tls_1_2_is_accepted() {
    let origin = Origin::start();
    let (cert, _) = certificate("tls12", &["localhost"]);
    let gw = gateway_with(&origin, vec![tls_listener(vec![cert])], 1);
    let (config, _) = client_config(&[&rustls::version::TLS12]);
    let x = tls_get(gw.listen_addr(), &config, "localhost", "/echo");
    assert!(x.response.starts_with("HTTP/1.1 200"), "{}", x.response);
    assert_eq!(x.version, Some(rustls::ProtocolVersion::TLSv1_2));
}

#[test]
fn sni_picks_the_exact_then_the_wildcard_certificate_and_else_the_first() {
    let origin = Origin::start();
    let (a, a_der) = certificate("sni-a", &["a.test"]);
    let (w, w_der) = certificate("sni-w", &["*.w.test"]);
    let gw = gateway_with(&origin, vec![tls_listener(vec![a, w])], 1);
    let (config, seen) = client_config(&[&rustls::version::TLS13]);
    for (sni, want) in [
        ("a.test", &a_der),
        ("shop.w.test", &w_der),
        ("other.test", &a_der),
        ("deep.shop.w.test", &a_der),
    ] {
        let x = tls_get(gw.listen_addr(), &config, sni, "/echo");
        assert!(
            x.response.starts_with("HTTP/1.1 200"),
            "{sni}: {}",
            x.response
        );
        let last = seen.seen.lock().unwrap().last().cloned().unwrap();
        assert!(last == *want, "{sni} got the wrong certificate");
    }
}

#[test]
fn sessions_resume_across_workers() {
    let origin = Origin::start();
    let (cert, _) = certificate("resume", &["localhost"]);
    let mut config = config_for(origin.addr);
    config.workers.count = Some(2);
    config.workers.pin = false;
    config.listeners = vec![tls_listener(vec![cert])];
    config.admin = Some(ringgate::config::AdminConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        token: None,
    });
    let gw = start(config);
    let (client, _) = client_config(&[&rustls::version::TLS13]);
    let first = tls_get(gw.listen_addr(), &client, "localhost", "/echo");
    assert!(!first.resumed);
    // The kernel spreads connections over both workers' listeners by 4-tuple hash.
    for i in 0..20 {
        let x = tls_get(gw.listen_addr(), &client, "localhost", "/echo");
        assert!(x.response.starts_with("HTTP/1.1 200"), "{}", x.response);
        assert!(x.resumed, "connection {i} did not resume");
    }
    let mut c = Client::connect(gw.admin_addr().unwrap());
    let r = c.request(b"GET /stats HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    let v: serde_json::Value = serde_json::from_str(&r.text()).unwrap();
    let resumed: Vec<u64> = v["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["tls"]["resumed"].as_u64().unwrap())
        .collect();
    assert_eq!(resumed.iter().sum::<u64>(), 20, "{resumed:?}");
    assert!(
        resumed.iter().all(|&n| n > 0),
        "one worker resumed nothing: {resumed:?}"
    );
}

#[test]
fn plain_http_on_the_tls_port_is_closed_and_tls_still_works() {
    let origin = Origin::start();
    let (cert, _) = certificate("plain", &["localhost"]);
    let gw = gateway_with(&origin, vec![tls_listener(vec![cert])], 1);
    let mut plain = TcpStream::connect(gw.listen_addr()).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let start = Instant::now();
    // An alert at most, then end of file: never an HTTP response.
    let _ = plain.read_to_end(&mut got);
    assert!(start.elapsed() < Duration::from_secs(9), "not closed");
    assert!(!got.starts_with(b"HTTP/"), "{got:?}");
    let (config, _) = client_config(&[&rustls::version::TLS13]);
    let x = tls_get(gw.listen_addr(), &config, "localhost", "/echo");
    assert!(x.response.starts_with("HTTP/1.1 200"), "{}", x.response);
}

#[test]
fn a_stalled_client_hello_does_not_hold_up_other_clients() {
    let origin = Origin::start();
    let (cert, _) = certificate("stall", &["localhost"]);
    let gw = gateway_with(&origin, vec![tls_listener(vec![cert])], 1);
    // A record header promising a ClientHello that never comes, on one worker.
    let mut stalled = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(gw.listen_addr()).unwrap();
        s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).unwrap();
        stalled.push(s);
    }
    let (config, _) = client_config(&[&rustls::version::TLS13]);
    let x = tls_get(gw.listen_addr(), &config, "localhost", "/echo");
    assert!(x.response.starts_with("HTTP/1.1 200"), "{}", x.response);
    // The stalled ones are closed at the head deadline, not kept.
    let mut s = stalled.pop().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(!rest.starts_with(b"HTTP/"));
}

#[test]
fn http_and_https_are_cached_apart() {
    let origin = Origin::start();
    let (cert, _) = certificate("cache", &["localhost"]);
    let mut config = config_for(origin.addr);
    config.listeners.push(tls_listener(vec![cert]));
    config.routes[0].cache = Some(Default::default());
    let gw = start(config);
    let (plain, tls) = (gw.listen_addrs()[0], gw.listen_addrs()[1]);
    let path = "/c?cc=max-age%3D60&echo=x-forwarded-proto";
    let (client, _) = client_config(&[&rustls::version::TLS13]);
    let mut c = Client::connect(plain);
    let r = c.request(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes());
    assert_eq!(r.text(), "x-forwarded-proto=http");
    // An https request must not get the response made for http (a redirect
    // loop, or links of the wrong scheme).
    let x = tls_get(tls, &client, "localhost", path);
    assert!(
        x.response.ends_with("x-forwarded-proto=https"),
        "{}",
        x.response
    );
    let x = tls_get(tls, &client, "localhost", path);
    assert!(
        x.response.ends_with("x-forwarded-proto=https"),
        "{}",
        x.response
    );
    assert!(
        x.response.contains("hit"),
        "second https request is a hit: {}\n{}",
        x.response,
        origin.last_head()
    );
    assert_eq!(origin.hits_on(path), 2);
}

#[test]
fn a_plain_listener_can_redirect_everything_to_https() {
    let origin = Origin::start();
    let mut config = config_for(origin.addr);
    config.listeners[0].redirect_https = Some(8443);
    let gw = start(config);
    let mut c = Client::connect(gw.listen_addr());
    let r = c.request(b"GET /a/b?q=1 HTTP/1.1\r\nHost: Shop.Test:8080\r\n\r\n");
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("https://shop.test:8443/a/b?q=1"));
    let r = c.request(b"POST /form HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(r.status, 308);
    assert_eq!(origin.requests(), 0, "nothing reaches the upstream");
}

#[test]
fn a_config_with_a_bad_certificate_is_refused_naming_the_file() {
    let (good, _) = certificate("cfg", &["localhost"]);
    let (other, _) = certificate("cfg-other", &["localhost"]);
    let toml = |cert: &std::path::Path, key: &std::path::Path| {
        format!(
            "[[listeners]]\naddress = \"127.0.0.1:0\"\ntls = {{ certificates = [{{ cert = {:?}, key = {:?} }}] }}\n\
             [upstreams.u]\nservers = [\"127.0.0.1:9\"]\n\
             [[routes]]\nupstream = \"u\"\n",
            cert.display().to_string(),
            key.display().to_string()
        )
    };
    if let Err(e) = ringgate::Config::parse(&toml(&good.cert, &good.key)) {
        panic!("{e}");
    }
    let err = ringgate::Config::parse(&toml(&good.cert, &other.key)).unwrap_err();
    assert_eq!(err.key, "listeners[0].tls.certificates[0]");
    assert!(err.reason.contains("does not match"), "{}", err.reason);
    let missing = good.cert.with_file_name("missing.pem");
    let err = ringgate::Config::parse(&toml(&missing, &good.key)).unwrap_err();
    assert!(err.reason.contains("missing.pem"), "{}", err.reason);
}

#[test]
fn a_large_cached_body_served_over_tls_arrives_whole() {
    // 300 KiB is more than rustls buffers at once: the hit's vectored write
    // is taken in several steps, each flushed before the next.
    const SIZE: usize = 300 * 1024;
    let origin = Origin::start();
    let (cert, _) = certificate("large", &["localhost"]);
    let mut config = config_for(origin.addr);
    config.listeners = vec![tls_listener(vec![cert])];
    config.routes[0].cache = Some(ringgate::cache::policy::CachePolicy {
        default_ttl: Some(Duration::from_secs(60)),
        ..Default::default()
    });
    let gw = start(config);
    let (client, _) = client_config(&[&rustls::version::TLS13]);
    let path = format!("/bytes/{SIZE}");
    for round in 0..2 {
        let out = tls_get(gw.listen_addr(), &client, "localhost", &path).raw;
        let split = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&out[..split]).to_string();
        let body = &out[split..];
        assert_eq!(body.len(), SIZE, "{head}");
        for (i, &b) in body.iter().enumerate() {
            assert_eq!(b, pattern_byte(i as u64), "byte {i} in round {round}");
        }
        if round == 1 {
            assert!(head.contains("hit"), "the second is a hit: {head}");
        }
    }
    assert_eq!(origin.hits_on(&path), 1);
}

#[test]
fn a_reload_serves_renewed_certificates_to_new_handshakes() {
    let origin = Origin::start();
    let (files, first) = certificate("reload", &["localhost"]);
    let text = |listen: &str| {
        format!(
            "[[listeners]]\naddress = \"{listen}\"\n[listeners.tls]\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]\n\
             [workers]\ncount = 2\npin = false\n[admin]\nenabled = false\n\
             [upstreams.app]\nservers = [\"{}\"]\n[[routes]]\nupstream = \"app\"\n",
            files.cert.display(),
            files.key.display(),
            origin.addr
        )
    };
    let path = write_config("tls-reload.toml", &text("127.0.0.1:0"));
    let gw = start(ringgate::Config::load(&path).unwrap());
    let addr = gw.listen_addr();
    let (config, recorder) = client_config(&[&rustls::version::TLS13]);
    assert!(tls_get(addr, &config, "localhost", "/")
        .response
        .starts_with("HTTP/1.1 200"));
    assert_eq!(recorder.seen.lock().unwrap().last(), Some(&first));

    // Renewed in place, as certbot does, then reloaded.
    let (renewed, second) = certificate("reload-renewed", &["localhost"]);
    std::fs::copy(&renewed.cert, &files.cert).unwrap();
    std::fs::copy(&renewed.key, &files.key).unwrap();
    std::fs::write(&path, text(&addr.to_string())).unwrap();
    assert_eq!(gw.reload().unwrap().generation, 2);
    for _ in 0..4 {
        let (config, recorder) = client_config(&[&rustls::version::TLS13]);
        assert!(tls_get(addr, &config, "localhost", "/")
            .response
            .starts_with("HTTP/1.1 200"));
        assert_eq!(recorder.seen.lock().unwrap().last(), Some(&second));
    }
}
