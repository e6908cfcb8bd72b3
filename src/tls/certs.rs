//! Certificates for TLS listeners: loading the PEM files a listener names,
//! refusing what would fail clients (unreadable or empty files, a key that
//! does not match its certificate, an expired or not yet valid
//! certificate), and choosing one per handshake by SNI name.
//!
//! A certificate answers for the DNS names in its subjectAltName extension
//! (its subject CN when it has none), exactly or as `*.example.com`
//! wildcards (one label, as browsers match them). A ClientHello without SNI,
//! or with a name no certificate covers, gets the listener's first
//! certificate, like nginx's default server.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::CertificateFiles;

/// One loaded certificate and the names it answers for.
pub struct Loaded {
    pub key: Arc<CertifiedKey>,
    pub names: Vec<String>,
}

/// Loads and checks one certificate, its key and its optional OCSP response.
/// The error names the file and the reason.
pub fn load(files: &CertificateFiles, now: std::time::SystemTime) -> Result<Loaded, String> {
    let chain = read_chain(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        format!(
            "{}: no private key could be read ({})",
            files.key.display(),
            pem_reason(e)
        )
    })?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("{}: unusable private key: {e}", files.key.display()))?;
    let mut certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(format!(
                "{}: the private key does not match the certificate in {}",
                files.key.display(),
                files.cert.display()
            ))
        }
        Err(e) => return Err(format!("{}: {e}", files.cert.display())),
    }
    let names = check_leaf(&certified.cert[0], &files.cert, now)?;
    if let Some(ocsp) = &files.ocsp {
        let der = std::fs::read(ocsp)
            .map_err(|e| format!("{}: cannot read the OCSP response: {e}", ocsp.display()))?;
        if der.is_empty() {
            return Err(format!("{}: the OCSP response is empty", ocsp.display()));
        }
        certified.ocsp = Some(der);
    }
    Ok(Loaded {
        key: Arc::new(certified),
        names,
    })
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {}", path.display(), pem_reason(e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {}", path.display(), pem_reason(e)))?;
    if chain.is_empty() {
        return Err(format!("{}: no CERTIFICATE block found", path.display()));
    }
    Ok(chain)
}

fn pem_reason(e: rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(e) => format!("cannot read the file: {e}"),
        rustls::pki_types::pem::Error::NoItemsFound => "no PEM block of the right kind".into(),
        other => format!("not valid PEM: {other:?}"),
    }
}

/// Checks the leaf's validity period and returns the names it covers.
fn check_leaf(
    der: &CertificateDer<'_>,
    path: &Path,
    now: std::time::SystemTime,
) -> Result<Vec<String>, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| format!("{}: not a valid X.509 certificate: {e}", path.display()))?;
    let now = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let validity = cert.validity();
    if validity.not_after.timestamp() < now {
        return Err(format!(
            "{}: the certificate expired on {}",
            path.display(),
            validity.not_after
        ));
    }
    if validity.not_before.timestamp() > now {
        return Err(format!(
            "{}: the certificate is not valid before {}",
            path.display(),
            validity.not_before
        ));
    }
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(n) = name {
                names.push(n.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        if let Some(cn) = cert.subject().iter_common_name().next() {
            if let Ok(cn) = cn.as_str() {
                names.push(cn.to_ascii_lowercase());
            }
        }
    }
    Ok(names)
}

/// Picks a certificate by SNI: an exact name, then a one-label wildcard,
/// then the default.
#[derive(Debug)]
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the part after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    /// The first certificate is the default; a name listed by two
    /// certificates goes to the first.
    pub fn new(loaded: Vec<Loaded>) -> Option<SniResolver> {
        let default = loaded.first()?.key.clone();
        let (mut exact, mut wildcard) = (HashMap::new(), HashMap::new());
        for l in loaded {
            for name in l.names {
                match name.strip_prefix("*.") {
                    Some(base) => wildcard.entry(base.to_string()),
                    None => exact.entry(name),
                }
                .or_insert_with(|| l.key.clone());
            }
        }
        Some(SniResolver {
            exact,
            wildcard,
            default,
        })
    }

    /// The certificate for `name` (the SNI the client sent, if any).
    pub fn pick(&self, name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = name else {
            return self.default.clone();
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(k) = self.exact.get(&name) {
            return k.clone();
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(k) = self.wildcard.get(parent) {
                return k.clone();
            }
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(client_hello.server_name()))
    }
}

/// A self-signed certificate for `names` (ECDSA P-256), as PEM (cert, key):
/// for `ringgate demo` and tests, so HTTPS can be tried with nothing else.
pub fn self_signed(names: &[&str]) -> Result<(String, String), String> {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(names).map_err(|e| e.to_string())?;
    Ok((cert.pem(), signing_key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path, tag: &str, cert: &str, key: &str) -> CertificateFiles {
        let (c, k) = (
            dir.join(format!("{tag}.crt")),
            dir.join(format!("{tag}.key")),
        );
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        CertificateFiles {
            cert: c,
            key: k,
            ocsp: None,
        }
    }

    fn temp_dir(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("ringgate-certs-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_default() {
        let dir = temp_dir("sni");
        let (a_cert, a_key) = self_signed(&["a.test"]).unwrap();
        let (w_cert, w_key) = self_signed(&["*.w.test"]).unwrap();
        let now = std::time::SystemTime::now();
        let a = load(&files(&dir, "a", &a_cert, &a_key), now).unwrap();
        let w = load(&files(&dir, "w", &w_cert, &w_key), now).unwrap();
        assert_eq!(w.names, ["*.w.test"]);
        let (a_key, w_key) = (a.key.clone(), w.key.clone());
        let r = SniResolver::new(vec![a, w]).unwrap();
        assert!(Arc::ptr_eq(&r.pick(Some("A.Test.")), &a_key));
        assert!(Arc::ptr_eq(&r.pick(Some("x.w.test")), &w_key));
        // One label only: a wildcard does not cover deeper names or its base.
        assert!(Arc::ptr_eq(&r.pick(Some("y.x.w.test")), &a_key));
        assert!(Arc::ptr_eq(&r.pick(Some("w.test")), &a_key));
        assert!(Arc::ptr_eq(&r.pick(None), &a_key));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_naming_both_files() {
        let dir = temp_dir("mismatch");
        let (cert, _) = self_signed(&["a.test"]).unwrap();
        let (_, other_key) = self_signed(&["a.test"]).unwrap();
        let f = files(&dir, "m", &cert, &other_key);
        let err = load(&f, std::time::SystemTime::now()).err().unwrap();
        assert!(err.contains("does not match"), "{err}");
        assert!(err.contains("m.key") && err.contains("m.crt"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn expired_empty_and_missing_files_are_refused() {
        let dir = temp_dir("bad");
        let (cert, key) = self_signed(&["a.test"]).unwrap();
        let f = files(&dir, "ok", &cert, &key);
        let later =
            std::time::SystemTime::now() + std::time::Duration::from_secs(10_000 * 86_400 * 365);
        let err = load(&f, later).err().unwrap();
        assert!(err.contains("expired"), "{err}");
        let empty = files(&dir, "empty", "", &key);
        let err = load(&empty, std::time::SystemTime::now()).err().unwrap();
        assert!(err.contains("empty.crt"), "{err}");
        let missing = CertificateFiles {
            cert: dir.join("nope.crt"),
            key: dir.join("nope.key"),
            ocsp: None,
        };
        let err = load(&missing, std::time::SystemTime::now()).err().unwrap();
        assert!(
            err.contains("nope.crt") && err.contains("cannot read"),
            "{err}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
