//! The TLS client for upstream groups whose servers speak TLS
//! (`[upstreams.NAME.tls]`). Built once at start from the group's settings
//! (roots, client certificate), then copied into each worker with a
//! session cache of its own, so reconnecting to a server resumes without
//! touching another core's memory. Verification is on by default, against
//! the system's roots or the group's `ca` file.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use monoio::net::TcpStream;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, Resumption};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::{HandshakeError, TlsStream};
use crate::config::UpstreamTls;

/// Sessions each worker remembers per group, to resume with.
const SESSIONS_PER_WORKER: usize = 256;

/// A group's TLS client settings.
#[derive(Clone)]
pub struct Connector {
    config: Arc<ClientConfig>,
    /// The name sent as SNI and verified; `None`: the server's IP address.
    sni: Option<ServerName<'static>>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connector")
    }
}

impl Connector {
    /// Reads the group's roots and client certificate. The error names the
    /// file and the reason.
    /// `http2`: offer only ALPN `h2` (a group with `protocol = "h2"`).
    pub fn new(tls: &UpstreamTls, http2: bool) -> Result<Connector, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?;
        let builder = if tls.verify {
            let roots = match &tls.ca {
                Some(path) => read_roots(path)?,
                None => system_roots()?,
            };
            builder.with_root_certificates(roots)
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
        };
        let mut config = match &tls.client_cert {
            None => builder.with_no_client_auth(),
            Some(files) => {
                let loaded = super::certs::load(files, std::time::SystemTime::now())?;
                builder.with_client_cert_resolver(Arc::new(ClientCertificate(loaded.key)))
            }
        };
        config.alpn_protocols = match http2 {
            true => vec![b"h2".to_vec()],
            false => vec![b"http/1.1".to_vec()],
        };
        let sni = match &tls.sni {
            None => None,
            Some(name) => Some(
                ServerName::try_from(name.clone())
                    .map_err(|_| format!("`{name}` is not a DNS name or IP address"))?,
            ),
        };
        // A name given as an IP address is checked as one, and sends no SNI.
        config.enable_sni = matches!(sni, Some(ServerName::DnsName(_)));
        Ok(Connector {
            config: Arc::new(config),
            sni,
        })
    }

    /// This worker's copy: the same settings, its own session cache.
    pub fn for_worker(&self) -> Connector {
        let mut config = (*self.config).clone();
        config.resumption = Resumption::in_memory_sessions(SESSIONS_PER_WORKER);
        Connector {
            config: Arc::new(config),
            sni: self.sni.clone(),
        }
    }

    /// Runs the client handshake with the server at `addr` by `deadline`.
    pub async fn connect(
        &self,
        tcp: TcpStream,
        addr: std::net::SocketAddr,
        deadline: Instant,
    ) -> Result<TlsStream, HandshakeError> {
        let name = self
            .sni
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        let conn = rustls::ClientConnection::new(self.config.clone(), name)
            .map_err(HandshakeError::Tls)?;
        let mut stream = TlsStream::new(tcp, rustls::Connection::Client(conn));
        stream.handshake(deadline).await?;
        Ok(stream)
    }
}

/// The roots in a PEM file; at least one.
pub fn read_roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: cannot read CA certificates: {e:?}", path.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("{}: not valid PEM: {e:?}", path.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: unusable CA certificate: {e}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{}: no CERTIFICATE block found", path.display()));
    }
    Ok(roots)
}

/// The operating system's trusted roots.
fn system_roots() -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(
            "no system CA certificates were found (install ca-certificates, or set `ca`)".into(),
        );
    }
    Ok(roots)
}

/// Presents one client certificate whatever the server asks.
#[derive(Debug)]
struct ClientCertificate(Arc<CertifiedKey>);

impl ResolvesClientCert for ClientCertificate {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// `verify = false`: any certificate is accepted (the handshake's
/// signatures are still checked, so the peer holds the key it shows).
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

/// The verifier of `verify = false`, for clients built outside this module
/// (the tests' HTTP/2 client).
pub fn any_certificate(
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Arc<dyn ServerCertVerifier> {
    Arc::new(NoVerification(provider))
}

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
