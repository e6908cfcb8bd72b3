//! TLS termination: the one owner of TLS settings. At start a listener's
//! certificates are loaded and checked ([`certs`]) into a rustls server
//! config; each worker then takes its own copy ([`Terminator::for_worker`])
//! with its own session cache, so a handshake touches no other core's
//! memory. The session-ticket key is the one thing shared: every worker
//! seals and opens tickets with it, so a client resumes on whichever core
//! its next connection lands (the key rotates every 6 hours; a ticket is
//! accepted for 12).
//!
//! Protocols: TLS 1.3 and 1.2, AEAD cipher suites with forward secrecy only
//! (AES-GCM, ChaCha20-Poly1305 over ECDHE), ALPN `http/1.1`.

pub mod certs;
pub mod connector;
pub mod poll;
mod split;
mod stream;

use std::sync::Arc;
use std::time::Instant;

use monoio::net::TcpStream;
use rustls::server::{ProducesTickets, ServerSessionMemoryCache};
use rustls::ServerConfig;

use crate::config::ListenerTls;
pub use connector::Connector;
pub use split::{TlsReadHalf, TlsWriteHalf};
pub use stream::{HandshakeError, TlsStream};

/// Session IDs (TLS 1.2 stateful resumption) each worker remembers.
const SESSIONS_PER_WORKER: usize = 4096;

/// The reasons a handshake fails, in the order `/stats` counts them.
pub const FAILURE_REASONS: [&str; 8] = [
    "closed",
    "timeout",
    "io",
    "bad_message",
    "no_certificate",
    "bad_certificate",
    "incompatible",
    "tls",
];

/// A TLS listener's settings, built once and copied into each worker.
#[derive(Clone)]
pub struct Terminator {
    config: Arc<ServerConfig>,
}

impl std::fmt::Debug for Terminator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Terminator")
    }
}

/// The ticket key every worker shares.
pub fn shared_ticketer() -> Result<Arc<dyn ProducesTickets>, String> {
    rustls::crypto::ring::Ticketer::new().map_err(|e| format!("session tickets: {e}"))
}

impl Terminator {
    /// Loads and checks the listener's certificates. The error names the
    /// file and the reason.
    pub fn new(
        tls: &ListenerTls,
        http2: bool,
        tickets: Arc<dyn ProducesTickets>,
    ) -> Result<Terminator, String> {
        let now = std::time::SystemTime::now();
        let loaded = tls
            .certificates
            .iter()
            .map(|files| certs::load(files, now))
            .collect::<Result<Vec<_>, _>>()?;
        let resolver =
            certs::SniResolver::new(loaded).ok_or("at least one certificate is required")?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(resolver));
        // The client's preference order is ignored: rustls picks the first
        // of ours it offers, so HTTP/2 is preferred where both are offered.
        config.alpn_protocols = match http2 {
            true => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            false => vec![b"http/1.1".to_vec()],
        };
        config.ticketer = tickets;
        Ok(Terminator {
            config: Arc::new(config),
        })
    }

    /// This worker's copy: the same certificates and ticket key, its own
    /// session cache.
    pub fn for_worker(&self) -> Terminator {
        let mut config = (*self.config).clone();
        config.session_storage = ServerSessionMemoryCache::new(SESSIONS_PER_WORKER);
        Terminator {
            config: Arc::new(config),
        }
    }

    /// Runs the server handshake on an accepted connection by `deadline`.
    pub async fn accept(
        &self,
        tcp: TcpStream,
        deadline: Instant,
    ) -> Result<TlsStream, HandshakeError> {
        let conn =
            rustls::ServerConnection::new(self.config.clone()).map_err(HandshakeError::Tls)?;
        let mut stream = TlsStream::new(tcp, rustls::Connection::Server(conn));
        stream.handshake(deadline).await?;
        Ok(stream)
    }
}

/// What a finished handshake negotiated, for logs and metrics.
pub struct Negotiated {
    pub tls13: bool,
    pub resumed: bool,
    pub cipher: &'static str,
    pub sni: Option<String>,
}

impl Negotiated {
    /// The client and the gateway agreed on HTTP/2 (ALPN `h2`).
    pub fn alpn_h2(stream: &TlsStream) -> bool {
        stream.connection().alpn_protocol() == Some(b"h2")
    }

    /// The version and SNI, as the access log writes them.
    pub fn info(self) -> crate::access_log::TlsInfo {
        crate::access_log::TlsInfo {
            version: if self.tls13 { "TLSv1.3" } else { "TLSv1.2" },
            sni: self.sni.map(String::into_boxed_str),
        }
    }

    pub fn of(stream: &TlsStream) -> Negotiated {
        let conn = stream.connection();
        let sni = match conn {
            rustls::Connection::Server(s) => s.server_name().map(str::to_string),
            rustls::Connection::Client(_) => None,
        };
        Negotiated {
            tls13: conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3),
            resumed: conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
            cipher: conn
                .negotiated_cipher_suite()
                .and_then(|s| s.suite().as_str())
                .unwrap_or("unknown"),
            sni,
        }
    }
}
