//! The worker's client connections as a whole: how many each address holds,
//! which are idle (waiting for the first byte of a request), and closing the
//! oldest idle ones when a cap is reached, as nginx reclaims its keep-alive
//! connections, so that one client parking idle connections cannot lock
//! everybody else out.
//!
//! Each connection's slot records since when it is idle (a sequence number
//! taken when it goes idle, 0 while busy) and until when it may stay so:
//! marking a connection idle or busy is a field write per request. Finding
//! the oldest idle one is a scan of the slots, done only when a cap is
//! reached; closing those idle past their time (the keep-alive timeout, or
//! the header timeout before a first request) is a scan the worker makes a
//! few times a second while some are idle ([`Conns::expire_idle`]). So an
//! idle connection's wait holds no timer of its own (a timer is most of
//! the memory a waiting read would otherwise hold). Only this worker's
//! tasks touch it.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use slab::Slab;

struct Slot {
    ip: IpAddr,
    /// When it went idle, as a sequence number; 0 while busy.
    idle_since: u64,
    /// Closed once idle past this (none: its own task keeps the time).
    idle_until: Option<Instant>,
    /// Told to close (it was idle when a cap was reached).
    evicted: bool,
    waker: Option<Waker>,
}

#[derive(Default)]
pub struct Conns {
    slots: RefCell<Slab<Slot>>,
    per_ip: RefCell<HashMap<IpAddr, usize>>,
    sequence: Cell<u64>,
    /// Connections idle now (and not told to close).
    idle_count: Cell<usize>,
}

/// An IPv4 client on a dual-stack socket counts as its IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl Conns {
    /// Records a new connection from `ip`; returns its key.
    pub fn register(&self, ip: IpAddr) -> usize {
        let ip = canonical(ip);
        *self.per_ip.borrow_mut().entry(ip).or_default() += 1;
        self.slots.borrow_mut().insert(Slot {
            ip,
            idle_since: 0,
            idle_until: None,
            evicted: false,
            waker: None,
        })
    }

    pub fn unregister(&self, key: usize) {
        let slot = self.slots.borrow_mut().remove(key);
        if slot.idle_since != 0 {
            self.idle_count.set(self.idle_count.get() - 1);
        }
        let mut per_ip = self.per_ip.borrow_mut();
        if let Some(n) = per_ip.get_mut(&slot.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&slot.ip);
            }
        }
    }

    /// Connections open from `ip`.
    pub fn count_for(&self, ip: IpAddr) -> usize {
        self.per_ip
            .borrow()
            .get(&canonical(ip))
            .copied()
            .unwrap_or(0)
    }

    /// The connection waits for the first byte of a request, and is told
    /// to close if it still waits at `until` ([`Conns::expire_idle`]).
    pub fn set_idle(&self, key: usize, until: Option<Instant>) {
        let sequence = self.sequence.get() + 1;
        self.sequence.set(sequence);
        if let Some(slot) = self.slots.borrow_mut().get_mut(key) {
            slot.idle_until = until;
            if !slot.evicted && std::mem::replace(&mut slot.idle_since, sequence) == 0 {
                self.idle_count.set(self.idle_count.get() + 1);
            }
        }
    }

    /// The connection is reading or answering a request.
    pub fn set_busy(&self, key: usize) {
        if let Some(slot) = self.slots.borrow_mut().get_mut(key) {
            if std::mem::take(&mut slot.idle_since) != 0 {
                self.idle_count.set(self.idle_count.get() - 1);
            }
        }
    }

    /// True while some connection is idle and could be closed for a newcomer.
    pub fn any_idle(&self) -> bool {
        self.idle_count.get() > 0
    }

    /// Tells the oldest idle connection (of `ip`, when given) to close.
    /// Returns false when there is none. A scan of the slots: it runs only
    /// at a connection cap.
    pub fn evict_oldest_idle(&self, ip: Option<IpAddr>) -> bool {
        if !self.any_idle() {
            return false;
        }
        let ip = ip.map(canonical);
        let mut slots = self.slots.borrow_mut();
        let oldest = slots
            .iter()
            .filter(|(_, s)| s.idle_since != 0 && ip.is_none_or(|ip| s.ip == ip))
            .min_by_key(|(_, s)| s.idle_since)
            .map(|(key, _)| key);
        let Some(key) = oldest else {
            return false;
        };
        self.evict(&mut slots[key]);
        true
    }

    fn evict(&self, slot: &mut Slot) {
        slot.evicted = true;
        slot.idle_since = 0;
        self.idle_count.set(self.idle_count.get() - 1);
        if let Some(waker) = slot.waker.take() {
            waker.wake();
        }
    }

    /// Tells every connection idle past its time to close; returns how many.
    pub fn expire_idle(&self, now: Instant) -> usize {
        if !self.any_idle() {
            return 0;
        }
        let mut expired = 0;
        for (_, slot) in self.slots.borrow_mut().iter_mut() {
            if slot.idle_since != 0 && slot.idle_until.is_some_and(|until| until <= now) {
                self.evict(slot);
                expired += 1;
            }
        }
        expired
    }

    /// Resolves once the connection `key` was told to close.
    pub fn evicted(&self, key: usize) -> Evicted<'_> {
        Evicted { conns: self, key }
    }
}

pub struct Evicted<'a> {
    conns: &'a Conns,
    key: usize,
}

impl Future for Evicted<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut slots = self.conns.slots.borrow_mut();
        match slots.get_mut(self.key) {
            Some(slot) if !slot.evicted => {
                slot.waker = Some(cx.waker().clone());
                Poll::Pending
            }
            _ => Poll::Ready(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_oldest_idle_connection_goes_first() {
        let c = Conns::default();
        let a = c.register(ip("10.0.0.1"));
        let b = c.register(ip("10.0.0.1"));
        let busy = c.register(ip("10.0.0.2"));
        c.set_idle(b, None);
        c.set_idle(a, None);
        c.set_idle(busy, None);
        c.set_busy(busy);
        assert!(c.evict_oldest_idle(None));
        assert!(c.slots.borrow()[b].evicted, "b went idle first");
        assert!(c.evict_oldest_idle(None));
        assert!(c.slots.borrow()[a].evicted);
        assert!(
            !c.evict_oldest_idle(None),
            "a busy connection is never closed"
        );
        assert!(!c.slots.borrow()[busy].evicted);
        assert!(!c.any_idle());
    }

    #[test]
    fn connections_are_counted_per_address() {
        let c = Conns::default();
        let a = c.register(ip("10.0.0.1"));
        let _b = c.register(ip("::ffff:10.0.0.1"));
        let other = c.register(ip("10.0.0.2"));
        assert_eq!(c.count_for(ip("10.0.0.1")), 2);
        c.set_idle(other, None);
        assert!(
            !c.evict_oldest_idle(Some(ip("10.0.0.1"))),
            "only that address's connections"
        );
        c.set_idle(a, None);
        assert!(c.evict_oldest_idle(Some(ip("10.0.0.1"))));
        c.unregister(a);
        assert_eq!(c.count_for(ip("10.0.0.1")), 1);
    }

    #[test]
    fn connections_idle_past_their_time_are_told_to_close() {
        let c = Conns::default();
        let now = Instant::now();
        let second = std::time::Duration::from_secs(1);
        let late = c.register(ip("10.0.0.1"));
        let early = c.register(ip("10.0.0.1"));
        let untimed = c.register(ip("10.0.0.1"));
        let busy = c.register(ip("10.0.0.1"));
        c.set_idle(late, Some(now + 2 * second));
        c.set_idle(early, Some(now + second));
        c.set_idle(untimed, None);
        c.set_idle(busy, Some(now));
        c.set_busy(busy);
        assert_eq!(c.expire_idle(now), 0, "a busy connection is never closed");
        assert_eq!(c.expire_idle(now + second), 1);
        assert!(c.slots.borrow()[early].evicted);
        assert_eq!(c.expire_idle(now + 3 * second), 1);
        assert!(c.slots.borrow()[late].evicted);
        assert!(
            !c.slots.borrow()[untimed].evicted,
            "its task keeps its time"
        );
        assert!(c.any_idle());
    }

    #[test]
    fn a_connection_idle_again_gets_a_new_place_in_line() {
        let c = Conns::default();
        let a = c.register(ip("10.0.0.1"));
        let b = c.register(ip("10.0.0.1"));
        c.set_idle(a, None);
        c.set_idle(b, None);
        c.set_busy(a);
        c.set_idle(a, None);
        assert!(c.evict_oldest_idle(None));
        assert!(c.slots.borrow()[b].evicted);
    }
}
