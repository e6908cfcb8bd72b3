//! TLS to upstreams over real sockets: a rustls origin started per test
//! with certificates generated at test time. Verification on (a known CA,
//! an unknown one, the wrong name), verification off, mutual TLS, and the
//! pooled TLS connection reused.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::*;
use ringgate::config::{CertificateFiles, Config, UpstreamTls};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

fn temp_dir(tag: &str) -> PathBuf {
    let dir = temp_root().join(format!(
        "ringgate-up-tls-{tag}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A self-signed certificate for `names`, written as `<tag>.pem` and `<tag>-key.pem`.
fn certificate(dir: &std::path::Path, tag: &str, names: &[&str]) -> CertificateFiles {
    let (cert, key) = ringgate::tls::certs::self_signed(names).unwrap();
    let files = CertificateFiles {
        cert: dir.join(format!("{tag}.pem")),
        key: dir.join(format!("{tag}-key.pem")),
        ocsp: None,
    };
    std::fs::write(&files.cert, cert).unwrap();
    std::fs::write(&files.key, key).unwrap();
    files
}

/// An HTTPS origin: answers every request `200` with `sni=<name> client=<yes|no>`.
struct TlsOrigin {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    handshakes: Arc<Mutex<Vec<Option<String>>>>,
}

impl TlsOrigin {
    fn start(server: &CertificateFiles, client_ca: Option<&CertificateFiles>) -> TlsOrigin {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&server.cert)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_file(&server.key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots
                    .add(CertificateDer::from_pem_file(&ca.cert).unwrap())
                    .unwrap();
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    roots.into(),
                    provider,
                )
                .build()
                .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = Arc::new(builder.with_single_cert(chain, key).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let handshakes: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
        let (count, seen) = (connections.clone(), handshakes.clone());
        std::thread::spawn(move || {
            for tcp in listener.incoming() {
                let Ok(tcp) = tcp else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                let (config, seen) = (config.clone(), seen.clone());
                std::thread::spawn(move || {
                    tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                    let conn = rustls::ServerConnection::new(config).unwrap();
                    let mut tls = rustls::StreamOwned::new(conn, tcp);
                    loop {
                        let mut head = String::new();
                        {
                            let mut reader = BufReader::new(&mut tls);
                            loop {
                                let mut line = String::new();
                                match reader.read_line(&mut line) {
                                    Ok(0) | Err(_) => return,
                                    Ok(_) => {}
                                }
                                head.push_str(&line);
                                if line == "\r\n" {
                                    break;
                                }
                            }
                            // One request at a time: nothing is pipelined here.
                            assert!(reader.buffer().is_empty());
                        }
                        let sni = tls.conn.server_name().map(str::to_string);
                        seen.lock().unwrap().push(sni.clone());
                        let client = tls.conn.peer_certificates().is_some();
                        let body = format!(
                            "sni={} client={}",
                            sni.unwrap_or_default(),
                            if client { "yes" } else { "no" }
                        );
                        let _ = write!(
                            tls,
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = tls.flush();
                    }
                });
            }
        });
        TlsOrigin {
            addr,
            connections,
            handshakes,
        }
    }
}

fn gateway_to(origin: &TlsOrigin, tls: UpstreamTls) -> ringgate::Handle {
    gateway_to_addr(origin.addr, tls)
}

/// TLS with verification off and nothing else set.
fn unverified() -> UpstreamTls {
    UpstreamTls {
        sni: None,
        verify: false,
        ca: None,
        client_cert: None,
    }
}

fn tls_settings(sni: &str, ca: &CertificateFiles) -> UpstreamTls {
    UpstreamTls {
        sni: Some(sni.to_string()),
        verify: true,
        ca: Some(ca.cert.clone()),
        client_cert: None,
    }
}

#[test]
fn a_verified_upstream_is_reached_over_tls_and_its_connection_reused() {
    let dir = temp_dir("verified");
    let server = certificate(&dir, "server", &["backend.test"]);
    let origin = TlsOrigin::start(&server, None);
    let gw = gateway_to(&origin, tls_settings("backend.test", &server));
    let mut c = Client::connect(gw.listen_addr());
    for _ in 0..3 {
        let r = c.request(b"GET /a HTTP/1.1\r\nHost: shop.test\r\n\r\n");
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "sni=backend.test client=no");
    }
    assert_eq!(
        origin.connections.load(Ordering::SeqCst),
        1,
        "the pooled TLS connection is reused"
    );
}

#[test]
fn an_unknown_ca_or_the_wrong_name_is_a_bad_gateway() {
    let dir = temp_dir("unknown");
    let server = certificate(&dir, "server", &["backend.test"]);
    let stranger = certificate(&dir, "stranger", &["backend.test"]);
    let origin = TlsOrigin::start(&server, None);
    let gw = gateway_to(&origin, tls_settings("backend.test", &stranger));
    assert_eq!(get(gw.listen_addr(), "/a").status, 502);
    drop(gw);
    let gw = gateway_to(&origin, tls_settings("other.test", &server));
    assert_eq!(get(gw.listen_addr(), "/a").status, 502);
    assert!(
        origin.handshakes.lock().unwrap().is_empty(),
        "no request got through"
    );
}

#[test]
fn verification_off_accepts_any_certificate() {
    let dir = temp_dir("noverify");
    let server = certificate(&dir, "server", &["backend.test"]);
    let origin = TlsOrigin::start(&server, None);
    let gw = gateway_to(&origin, unverified());
    let r = get(gw.listen_addr(), "/a");
    assert_eq!(r.status, 200);
    // No `sni`: the server's address is used, and an IP is never sent as SNI.
    assert_eq!(r.text(), "sni= client=no");
}

#[test]
fn a_client_certificate_is_presented_when_the_upstream_requires_one() {
    let dir = temp_dir("mtls");
    let server = certificate(&dir, "server", &["backend.test"]);
    let client = certificate(&dir, "client", &["gateway.test"]);
    let origin = TlsOrigin::start(&server, Some(&client));
    let with_cert = UpstreamTls {
        client_cert: Some(client.clone()),
        ..tls_settings("backend.test", &server)
    };
    let gw = gateway_to(&origin, with_cert);
    let r = get(gw.listen_addr(), "/a");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "sni=backend.test client=yes");
    drop(gw);
    let gw = gateway_to(&origin, tls_settings("backend.test", &server));
    assert_eq!(
        get(gw.listen_addr(), "/a").status,
        502,
        "no client certificate"
    );
}

#[test]
fn bad_upstream_tls_settings_are_refused_naming_the_key() {
    let dir = temp_dir("config");
    let server = certificate(&dir, "server", &["backend.test"]);
    let base = "[[listeners]]\naddress = \"127.0.0.1:8080\"\n[upstreams.app]\nservers = [\"127.0.0.1:9443\"]\n[[routes]]\nupstream = \"app\"\n";
    let cases = [
        (
            format!(
                "{base}[upstreams.app.tls]\nca = \"{}\"\n",
                dir.join("missing.pem").display()
            ),
            "upstreams.app.tls.ca",
            "missing.pem",
        ),
        (
            format!(
                "{base}[upstreams.app.tls]\ncert = \"{}\"\n",
                server.cert.display()
            ),
            "upstreams.app.tls.key",
            "needs its `key`",
        ),
        (
            format!("{base}[upstreams.app.tls]\nsni = \"not a name\"\n"),
            "upstreams.app.tls.sni",
            "not a name",
        ),
        (
            format!(
                "{base}[upstreams.app.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
                server.cert.display(),
                certificate(&dir, "other", &["x.test"]).key.display()
            ),
            "upstreams.app.tls.cert",
            "does not match",
        ),
    ];
    for (text, key, reason) in cases {
        let e = Config::parse(&text).unwrap_err();
        assert_eq!(e.key, key, "{e}");
        assert!(e.reason.contains(reason), "{e}");
    }
    let ok = format!(
        "{base}[upstreams.app.tls]\nsni = \"backend.test\"\nca = \"{}\"\n",
        server.cert.display()
    );
    let config = Config::parse(&ok).unwrap();
    let tls = config.upstreams[0].tls.as_ref().unwrap();
    assert!(tls.verify);
    assert_eq!(tls.sni.as_deref(), Some("backend.test"));
}

#[test]
fn a_plain_upstream_in_a_tls_group_is_a_bad_gateway() {
    // A plain HTTP server answers the ClientHello with an HTTP error, as nginx does.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut tcp in listener.incoming().flatten() {
            let mut first = [0u8; 512];
            let _ = std::io::Read::read(&mut tcp, &mut first);
            let _ = tcp.write_all(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    let gw = gateway_to_addr(addr, unverified());
    let r = get(gw.listen_addr(), "/a");
    assert_eq!(r.status, 502);
}

#[test]
fn an_upstream_that_never_answers_the_client_hello_times_out_within_the_connect_timeout() {
    // Accepts the TCP connection and reads, but never says a TLS word.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            keep.lock().unwrap().push(tcp);
        }
    });
    let mut config: Config = config_for(addr);
    config.timeouts.upstream_connect = std::time::Duration::from_millis(300);
    config.upstreams[0].tls = Some(UpstreamTls {
        sni: Some("backend.test".into()),
        verify: true,
        ca: None,
        client_cert: None,
    });
    let gw = start(config);
    let started = std::time::Instant::now();
    let r = get(gw.listen_addr(), "/a");
    assert_eq!(r.status, 504);
    assert!(
        started.elapsed() < IO_TIMEOUT,
        "answered after {:?}",
        started.elapsed()
    );
    assert_eq!(held.lock().unwrap().len(), 1, "the TCP connection was made");
}

fn gateway_to_addr(addr: SocketAddr, tls: UpstreamTls) -> ringgate::Handle {
    let mut config: Config = config_for(addr);
    config.upstreams[0].tls = Some(tls);
    start(config)
}
