//! Service discovery: the servers of a group re-resolved from DNS names (at
//! their TTL when ringgate asks the nameservers itself, see `dns`) and
//! read from a watched file, off the workers' loops.
//!
//! One plain thread does the blocking work (name resolution, file reads) so
//! that no worker ever waits on a resolver. When a group's server list
//! changes, the thread broadcasts the new list on the bus and every worker
//! swaps its own table; connections in flight keep the server they have.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::bus::{Bus, Message};
use crate::config::{Config, Discovery, ResolverSettings, ServerEntry};

/// How often the thread looks at its timers; the finest interval it honours.
const TICK: Duration = Duration::from_millis(100);

/// One group's server list as workers apply it: addresses and weights.
pub type ServerList = Arc<[(SocketAddr, u32)]>;

/// Reads a servers file: one `host:port [weight]` per line; blank lines and
/// `#` comments are ignored. Errors name the line.
pub fn parse_servers_file(text: &str) -> Result<Vec<ServerEntry>, String> {
    let mut entries = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        let address = words.next().unwrap_or_default();
        let weight = match words.next() {
            None => 1,
            Some(w) => match w.parse::<u32>() {
                Ok(w) if (1..=10_000).contains(&w) => w,
                _ => {
                    return Err(format!(
                        "line {}: weight `{w}` must be an integer between 1 and 10000",
                        n + 1
                    ))
                }
            },
        };
        if words.next().is_some() {
            return Err(format!(
                "line {}: expected `host:port [weight]`, found `{line}`",
                n + 1
            ));
        }
        let entry = ServerEntry::parse(address, weight)
            .map_err(|reason| format!("line {}: {reason}", n + 1))?;
        entries.push(entry);
    }
    Ok(entries)
}

/// Names that resolve from a hosts-style file (`IP name...` per line) before
/// the system resolver: a gateway-local `/etc/hosts`.
pub fn read_hosts(path: &Path) -> std::io::Result<HashMap<String, Vec<IpAddr>>> {
    let text = std::fs::read_to_string(path)?;
    let mut hosts: HashMap<String, Vec<IpAddr>> = HashMap::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut words = line.split_whitespace();
        let Some(Ok(ip)) = words.next().map(str::parse::<IpAddr>) else {
            continue;
        };
        for name in words {
            hosts.entry(name.to_ascii_lowercase()).or_default().push(ip);
        }
    }
    Ok(hosts)
}

/// Addresses a name resolved to, and for how long the answer holds when
/// the source said (DNS answers through `[resolver] nameservers`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub addrs: Vec<SocketAddr>,
    pub ttl: Option<Duration>,
}

/// Every address of `host:port`, sorted so that two answers compare equal
/// when they hold the same addresses: from the hosts override, else the
/// configured nameservers, else the system resolver. Blocking: never call
/// it on a worker.
pub fn resolve(
    host: &str,
    port: u16,
    hosts: &HashMap<String, Vec<IpAddr>>,
    resolver: &ResolverSettings,
) -> std::io::Result<Resolved> {
    let (mut addrs, ttl): (Vec<SocketAddr>, _) = match hosts.get(&host.to_ascii_lowercase()) {
        Some(ips) => (
            ips.iter().map(|&ip| SocketAddr::new(ip, port)).collect(),
            None,
        ),
        None if !resolver.nameservers.is_empty() => {
            let answer = super::dns::lookup(host, &resolver.nameservers, resolver.timeout)?;
            let addrs = answer
                .addresses
                .iter()
                .map(|&ip| SocketAddr::new(ip, port))
                .collect();
            (addrs, Some(answer.ttl))
        }
        None => ((host, port).to_socket_addrs()?.collect(), None),
    };
    addrs.sort();
    addrs.dedup();
    if addrs.is_empty() {
        return Err(std::io::Error::other(format!(
            "`{host}` resolved to no address"
        )));
    }
    Ok(Resolved { addrs, ttl })
}

/// When a name's answer is next refreshed: at its TTL (never sooner than
/// [`MIN_TTL`]) or after `resolve_every`, whichever comes first; never when
/// re-resolution is off.
fn next_due(now: Instant, every: Option<Duration>, ttl: Option<Duration>) -> Option<Instant> {
    let every = every?;
    let wait = match ttl {
        Some(ttl) => ttl.max(MIN_TTL).min(every),
        None => every,
    };
    Some(now + wait)
}

/// A TTL of 0 would mean resolving on every tick.
const MIN_TTL: Duration = Duration::from_secs(1);

/// A failed resolution is tried again this soon (or at `resolve_every`, if sooner).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// The discovery thread; dropping it stops the thread and waits for it.
pub struct Discoverer {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Discoverer {
    fn drop(&mut self) {
        // Closing the channel wakes the thread out of its wait at once.
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts the discovery thread when some group asks for it.
pub fn start(config: &Config, bus: Arc<Bus>) -> std::io::Result<Option<Discoverer>> {
    let groups: Vec<GroupState> = config
        .upstreams
        .iter()
        .filter_map(|g| {
            g.discovery.as_ref().map(|d| GroupState {
                name: g.name.clone(),
                discovery: d.clone(),
                applied: g.servers.iter().map(|s| (s.address, s.weight)).collect(),
                file_entries: Vec::new(),
                file_stamp: None,
                answers: HashMap::new(),
                next_watch: Instant::now(),
            })
        })
        .collect();
    if groups.is_empty() {
        return Ok(None);
    }
    let (stop, stopped) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("ringgate-discovery".to_string())
        .spawn(move || run(groups, bus, stopped))?;
    Ok(Some(Discoverer {
        stop: Some(stop),
        thread: Some(thread),
    }))
}

struct GroupState {
    name: String,
    discovery: Discovery,
    /// The list every worker has now.
    applied: Vec<(SocketAddr, u32)>,
    /// The servers file's entries as last read successfully.
    file_entries: Vec<ServerEntry>,
    file_stamp: Option<(SystemTime, u64)>,
    /// Last good answer for each `host:port` name, and when to refresh it
    /// (`None`: never).
    answers: HashMap<(String, u16), (Vec<SocketAddr>, Option<Instant>)>,
    next_watch: Instant,
}

fn run(mut groups: Vec<GroupState>, bus: Arc<Bus>, stopped: Receiver<()>) {
    loop {
        match stopped.recv_timeout(TICK) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        let now = Instant::now();
        for group in &mut groups {
            let mut changed = false;
            if let Some(path) = group.discovery.servers_file.clone() {
                if now >= group.next_watch {
                    group.next_watch = now + group.discovery.watch_every;
                    changed |= group.reread_file(&path);
                }
            }
            if !changed && !group.names_due(now) {
                continue;
            }
            let list = group.compute(now);
            if list.is_empty() {
                tracing::warn!(upstream = %group.name, kept = group.applied.len(),
                    "discovery found no servers; keeping the previous list");
                continue;
            }
            if list != group.applied {
                tracing::info!(upstream = %group.name, servers = ?list, "upstream servers changed");
                let message = Message::Servers {
                    group: group.name.as_str().into(),
                    servers: list.clone().into(),
                };
                if let Err(e) = bus.broadcast(&message, None) {
                    // A full inbox: the next change (or the next resolve) tries again.
                    tracing::warn!(upstream = %group.name, error = %e, "could not publish new servers");
                    continue;
                }
                group.applied = list;
            }
        }
    }
}

impl GroupState {
    /// Reads the servers file if it changed; `true` when its entries did.
    fn reread_file(&mut self, path: &PathBuf) -> bool {
        let stamp = std::fs::metadata(path)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())));
        if stamp.is_some() && stamp == self.file_stamp {
            return false;
        }
        let parsed = std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|text| parse_servers_file(&text));
        match parsed {
            Ok(entries) => {
                self.file_stamp = stamp;
                let changed = entries != self.file_entries;
                self.file_entries = entries;
                changed
            }
            Err(reason) => {
                // Keep the last good list: a file caught mid-write or a typo
                // must not empty the group.
                tracing::warn!(upstream = %self.name, file = %path.display(), %reason,
                    "servers file not applied; keeping the previous list");
                self.file_stamp = stamp;
                false
            }
        }
    }

    /// The configured entries and the servers file's, in that order.
    fn entries(&self) -> impl Iterator<Item = &ServerEntry> {
        self.discovery
            .entries
            .iter()
            .chain(self.file_entries.iter())
    }

    /// Whether `name` was never resolved or its answer is due a refresh.
    fn is_due(&self, name: &(String, u16), now: Instant) -> bool {
        match self.answers.get(name) {
            None => true,
            Some((_, due)) => due.is_some_and(|due| now >= due),
        }
    }

    /// Whether some name of the group needs resolving now.
    fn names_due(&self, now: Instant) -> bool {
        self.entries().any(|e| match e {
            ServerEntry::Name(host, port, _) => self.is_due(&(host.clone(), *port), now),
            ServerEntry::Fixed(..) => false,
        })
    }

    /// The group's servers now: fixed addresses as they are, names from
    /// their last good answer, resolved again where due.
    fn compute(&mut self, now: Instant) -> Vec<(SocketAddr, u32)> {
        let resolver = self.discovery.resolver.clone();
        let hosts = match &resolver.hosts_file {
            None => HashMap::new(),
            Some(path) => read_hosts(path).unwrap_or_else(|e| {
                tracing::warn!(file = %path.display(), error = %e, "hosts file unreadable");
                HashMap::new()
            }),
        };
        let every = self.discovery.resolve_every;
        let mut list = Vec::new();
        let entries: Vec<ServerEntry> = self.entries().cloned().collect();
        // Answers of names no longer listed are dropped with them.
        self.answers.retain(|(host, port), _| {
            entries
                .iter()
                .any(|e| matches!(e, ServerEntry::Name(h, p, _) if h == host && p == port))
        });
        for entry in entries {
            match entry {
                ServerEntry::Fixed(addr, weight) => list.push((addr, weight)),
                ServerEntry::Name(host, port, weight) => {
                    let key = (host.clone(), port);
                    if self.is_due(&key, now) {
                        match resolve(&host, port, &hosts, &resolver) {
                            Ok(answer) => {
                                let refresh = next_due(now, every, answer.ttl);
                                self.answers.insert(key.clone(), (answer.addrs, refresh));
                            }
                            Err(e) => {
                                tracing::warn!(upstream = %self.name, name = %host, error = %e,
                                    "re-resolution failed; keeping the last answer");
                                let answer = self.answers.entry(key.clone()).or_default();
                                answer.1 = every.map(|e| now + e.min(RETRY_AFTER_FAILURE));
                            }
                        }
                    }
                    for &addr in self.answers.get(&key).map(|(a, _)| a).into_iter().flatten() {
                        list.push((addr, weight));
                    }
                }
            }
        }
        list.sort();
        list.dedup_by_key(|(addr, _)| *addr);
        list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_file_lines_with_weights_and_comments() {
        let entries =
            parse_servers_file("# api\n127.0.0.1:80\n\n 10.0.0.2:81 3 # big\napi.internal:90\n")
                .unwrap();
        assert_eq!(
            entries,
            vec![
                ServerEntry::Fixed("127.0.0.1:80".parse().unwrap(), 1),
                ServerEntry::Fixed("10.0.0.2:81".parse().unwrap(), 3),
                ServerEntry::Name("api.internal".to_string(), 90, 1),
            ]
        );
    }

    #[test]
    fn servers_file_errors_name_the_line() {
        let e = parse_servers_file("127.0.0.1:80\n127.0.0.1:81 0\n").unwrap_err();
        assert!(e.starts_with("line 2:"), "{e}");
        let e = parse_servers_file("127.0.0.1\n").unwrap_err();
        assert!(e.starts_with("line 1:"), "{e}");
    }

    #[test]
    fn refresh_follows_the_ttl_within_the_interval() {
        let now = Instant::now();
        let minute = Some(Duration::from_secs(60));
        let due = |ttl| next_due(now, minute, ttl).map(|t| t - now);
        assert_eq!(due(None), minute);
        assert_eq!(
            due(Some(Duration::from_secs(5))),
            Some(Duration::from_secs(5))
        );
        assert_eq!(due(Some(Duration::from_secs(3600))), minute);
        assert_eq!(due(Some(Duration::ZERO)), Some(MIN_TTL));
        assert_eq!(next_due(now, None, Some(Duration::from_secs(5))), None);
    }

    #[test]
    fn hosts_override_answers_before_the_system() {
        let hosts = HashMap::from([(
            "svc.test".to_string(),
            vec!["127.0.0.3".parse().unwrap(), "127.0.0.2".parse().unwrap()],
        )]);
        let resolved = resolve("SVC.test", 8080, &hosts, &ResolverSettings::default()).unwrap();
        assert_eq!(resolved.ttl, None);
        assert_eq!(
            resolved.addrs,
            vec![
                "127.0.0.2:8080".parse().unwrap(),
                "127.0.0.3:8080".parse().unwrap()
            ]
        );
    }
}
