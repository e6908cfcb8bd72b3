//! Validation of `[[listeners]]`: addresses, backlog, TLS certificates
//! (loaded and checked now, so a bad file is refused at start and by
//! `check`) and the redirect of a plain listener to HTTPS.

use super::*;

pub(super) fn validate_listeners(
    raw: &[raw::RawListener],
) -> Result<Vec<ListenerConfig>, ConfigError> {
    let mut listeners = Vec::new();
    for (i, l) in raw.iter().enumerate() {
        let address = parse_socket_addr(&l.address)
            .map_err(|reason| invalid(format!("listeners[{i}].address"), reason))?;
        if listeners
            .iter()
            .any(|x: &ListenerConfig| x.address == address)
        {
            return Err(invalid(
                format!("listeners[{i}].address"),
                format!("{address} is listed twice"),
            ));
        }
        let backlog = l.backlog.unwrap_or(4096);
        if backlog == 0 {
            return Err(invalid(
                format!("listeners[{i}].backlog"),
                "must be at least 1",
            ));
        }
        if l.h2c == Some(true) && l.tls.is_some() {
            return Err(invalid(
                format!("listeners[{i}].h2c"),
                "h2c is HTTP/2 without TLS; on a TLS listener HTTP/2 is offered by ALPN (http2)",
            ));
        }
        let tls = match &l.tls {
            None => None,
            Some(t) => Some(listener_tls(i, t)?),
        };
        let redirect_https = match &l.redirect_https {
            None | Some(toml::Value::Boolean(false)) => None,
            Some(toml::Value::Boolean(true)) => Some(443),
            Some(toml::Value::Integer(p)) if (1..=65535).contains(p) => Some(*p as u16),
            Some(_) => {
                return Err(invalid(
                    format!("listeners[{i}].redirect_https"),
                    "must be true (port 443) or a port number",
                ))
            }
        };
        if tls.is_some() && redirect_https.is_some() {
            return Err(invalid(
                format!("listeners[{i}].redirect_https"),
                "a TLS listener cannot redirect to HTTPS; set it on the plain listener",
            ));
        }
        listeners.push(ListenerConfig {
            address,
            backlog,
            tls,
            redirect_https,
            http2: l.http2.unwrap_or(true),
            h2c: l.h2c.unwrap_or(false),
        });
    }
    if listeners.is_empty() {
        return Err(invalid(
            "listeners",
            "at least one [[listeners]] entry with an address is required",
        ));
    }
    Ok(listeners)
}

/// A listener's `tls` table: every certificate is loaded and checked here,
/// so `check` and start refuse a file that would fail clients.
fn listener_tls(i: usize, raw: &raw::RawListenerTls) -> Result<ListenerTls, ConfigError> {
    if raw.certificates.is_empty() {
        return Err(invalid(
            format!("listeners[{i}].tls.certificates"),
            "at least one certificate is required",
        ));
    }
    let now = std::time::SystemTime::now();
    let mut certificates = Vec::new();
    for (j, c) in raw.certificates.iter().enumerate() {
        let files = CertificateFiles {
            cert: PathBuf::from(&c.cert),
            key: PathBuf::from(&c.key),
            ocsp: c.ocsp.as_ref().map(PathBuf::from),
        };
        crate::tls::certs::load(&files, now)
            .map_err(|reason| invalid(format!("listeners[{i}].tls.certificates[{j}]"), reason))?;
        certificates.push(files);
    }
    Ok(ListenerTls { certificates })
}
