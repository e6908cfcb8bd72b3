//! A small DNS stub client (RFC 1035 over UDP) for service discovery: it
//! asks the configured nameservers for A and AAAA records and, unlike the
//! system resolver, reports the answer's TTL so discovery can re-resolve a
//! name exactly when its answer expires. Blocking: used only on the
//! discovery thread and at start.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;

/// Addresses of a name and how long they may be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsAnswer {
    pub addresses: Vec<IpAddr>,
    pub ttl: Duration,
}

/// Resolves `name` (A and AAAA) through the first nameserver that answers.
pub fn lookup(name: &str, nameservers: &[SocketAddr], timeout: Duration) -> io::Result<DnsAnswer> {
    let mut last_error = io::Error::other("no nameserver configured");
    for &server in nameservers {
        let mut answer = DnsAnswer {
            addresses: Vec::new(),
            ttl: Duration::MAX,
        };
        let mut failed = None;
        for qtype in [TYPE_A, TYPE_AAAA] {
            match query(server, name, qtype, timeout) {
                Ok(records) => {
                    for (ip, ttl) in records {
                        answer.addresses.push(ip);
                        answer.ttl = answer.ttl.min(Duration::from_secs(u64::from(ttl)));
                    }
                }
                Err(e) => failed = Some(e),
            }
        }
        if !answer.addresses.is_empty() {
            return Ok(answer);
        }
        last_error = failed.unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{server} has no A or AAAA record for `{name}`"),
            )
        });
    }
    Err(last_error)
}

/// One question to one server: the addresses and TTLs of its answers.
fn query(
    server: SocketAddr,
    name: &str,
    qtype: u16,
    timeout: Duration,
) -> io::Result<Vec<(IpAddr, u32)>> {
    let bind: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(bind)?;
    socket.connect(server)?;
    let id = query_id();
    socket.send(&encode_query(id, name, qtype)?)?;
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 1500];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{server} did not answer for `{name}`"),
            ));
        }
        socket.set_read_timeout(Some(left))?;
        let n = match socket.recv(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(e),
        };
        // A stray datagram (a late answer to an earlier query) is skipped.
        if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id {
            return decode_answer(&buf[..n], qtype).map_err(|reason| {
                io::Error::new(io::ErrorKind::InvalidData, format!("{server}: {reason}"))
            });
        }
    }
}

/// An unpredictable query id, so an off-path sender cannot easily forge answers.
fn query_id() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish() as u16
}

fn encode_query(id: u16, name: &str, qtype: u16) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(32 + name.len());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&[0x01, 0x00]); // recursion desired
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // one question
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("`{name}` is not a valid DNS name"),
            ));
        }
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    Ok(out)
}

/// The records of type `qtype` in a response; CNAMEs are followed implicitly
/// because a recursive resolver puts the target's records in the answer.
pub fn decode_answer(msg: &[u8], qtype: u16) -> Result<Vec<(IpAddr, u32)>, String> {
    let u16_at = |i: usize| -> Result<u16, String> {
        msg.get(i..i + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "truncated response".to_string())
    };
    let flags = u16_at(2)?;
    if flags & 0x8000 == 0 {
        return Err("not a response".into());
    }
    match flags & 0x000F {
        0 => {}
        3 => return Err("no such name (NXDOMAIN)".into()),
        rcode => return Err(format!("server error (rcode {rcode})")),
    }
    let (questions, answers) = (u16_at(4)?, u16_at(6)?);
    let mut at = 12;
    for _ in 0..questions {
        at = skip_name(msg, at)? + 4;
    }
    let mut records = Vec::new();
    for _ in 0..answers {
        at = skip_name(msg, at)?;
        let rtype = u16_at(at)?;
        let class = u16_at(at + 2)?;
        let ttl = msg
            .get(at + 4..at + 8)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or("truncated record")?;
        let len = usize::from(u16_at(at + 8)?);
        let data = msg.get(at + 10..at + 10 + len).ok_or("truncated record")?;
        at += 10 + len;
        if class != CLASS_IN || rtype != qtype {
            continue;
        }
        let ip = match (rtype, data.len()) {
            (TYPE_A, 4) => IpAddr::from(<[u8; 4]>::try_from(data).map_err(|_| "bad A record")?),
            (TYPE_AAAA, 16) => {
                IpAddr::from(<[u8; 16]>::try_from(data).map_err(|_| "bad AAAA record")?)
            }
            _ => return Err(format!("record of type {rtype} has {} bytes", data.len())),
        };
        records.push((ip, ttl));
    }
    Ok(records)
}

/// The offset after a (possibly compressed) name starting at `at`.
fn skip_name(msg: &[u8], mut at: usize) -> Result<usize, String> {
    loop {
        let len = *msg.get(at).ok_or("truncated name")?;
        match len {
            0 => return Ok(at + 1),
            l if l & 0xC0 == 0xC0 => return Ok(at + 2),
            l => at += 1 + usize::from(l),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_encodes_labels_and_type() {
        let q = encode_query(0x1234, "api.internal.", TYPE_A).unwrap();
        assert_eq!(&q[..4], &[0x12, 0x34, 0x01, 0x00]);
        assert_eq!(&q[12..], b"\x03api\x08internal\x00\x00\x01\x00\x01");
        assert!(encode_query(1, "a..b", TYPE_A).is_err());
    }

    #[test]
    fn answers_with_compressed_names_give_addresses_and_ttls() {
        let mut msg = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 2, 0, 0, 0, 0];
        msg.extend_from_slice(b"\x03api\x08internal\x00\x00\x01\x00\x01");
        // A CNAME (skipped), then an A record, both named by a pointer to the question.
        msg.extend_from_slice(&[0xC0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 2, 0xC0, 12]);
        msg.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 10, 0, 0, 7]);
        assert_eq!(
            decode_answer(&msg, TYPE_A).unwrap(),
            vec![("10.0.0.7".parse().unwrap(), 30)]
        );
        msg[3] = 0x83;
        assert!(decode_answer(&msg, TYPE_A)
            .unwrap_err()
            .contains("NXDOMAIN"));
        assert!(decode_answer(&msg[..20], TYPE_A).is_err());
    }
}
