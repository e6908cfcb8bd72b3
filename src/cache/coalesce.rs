//! Request coalescing on one worker: while one request fetches a key from
//! the origin, other misses for the same key wait for it (up to a timeout)
//! and are then answered from what it stored, or from the fill while it is
//! being stored (`super::fill`), instead of each going to the origin.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use super::fill::Fill;
use crate::worker::signal::Notify;

/// One origin fetch others may wait for.
#[derive(Default)]
pub struct Flight {
    done: Cell<bool>,
    /// The response being stored, once its head arrived (read-while-fill).
    fill: RefCell<Option<Rc<Fill>>>,
    notify: Notify,
}

impl Flight {
    /// Resolves when the leading fetch finished (stored or not).
    pub async fn finished(&self) {
        self.notify.wait_until(|| self.done.get()).await
    }

    /// Resolves when the leading fetch finished, or started a fill that
    /// waiters may read while it arrives (returned then).
    pub async fn fill_or_finished(&self) -> Option<Rc<Fill>> {
        self.notify
            .wait_until(|| self.done.get() || self.fill.borrow().is_some())
            .await;
        if self.done.get() {
            return None;
        }
        self.fill.borrow().clone()
    }
}

type Flights = Rc<RefCell<HashMap<Box<[u8]>, Rc<Flight>>>>;

#[derive(Default)]
pub struct Coalescer {
    flights: Flights,
    /// Keys another worker is fetching, with this worker's requests waiting for it.
    remote: RefCell<HashMap<Box<[u8]>, Rc<Flight>>>,
}

/// How a miss joins the fetches under way.
pub enum Join {
    /// First for this key: fetch; waiters are released when the guard drops.
    Leader(LeaderGuard),
    /// Someone is fetching this key: wait for it.
    Follower(Rc<Flight>),
}

pub struct LeaderGuard {
    flights: Flights,
    key: Box<[u8]>,
    flight: Rc<Flight>,
}

impl LeaderGuard {
    /// Offers the response being stored to the requests waiting on the key.
    pub fn attach(&self, fill: Rc<Fill>) {
        *self.flight.fill.borrow_mut() = Some(fill);
        self.flight.notify.notify_all();
    }
}

impl Drop for LeaderGuard {
    fn drop(&mut self) {
        self.flights.borrow_mut().remove(&self.key);
        self.flight.fill.borrow_mut().take();
        self.flight.done.set(true);
        self.flight.notify.notify_all();
    }
}

impl Coalescer {
    pub fn join(&self, key: &[u8]) -> Join {
        let mut flights = self.flights.borrow_mut();
        if let Some(flight) = flights.get(key) {
            return Join::Follower(flight.clone());
        }
        let flight = Rc::new(Flight::default());
        flights.insert(key.into(), flight.clone());
        Join::Leader(LeaderGuard {
            flights: self.flights.clone(),
            key: key.into(),
            flight,
        })
    }

    /// Fetches under way.
    pub fn in_flight(&self) -> usize {
        self.flights.borrow().len()
    }

    /// Waits for another worker's fetch of `key` (released by [`Coalescer::release_remote`]).
    pub fn wait_remote(&self, key: &[u8]) -> Rc<Flight> {
        self.remote
            .borrow_mut()
            .entry(key.into())
            .or_default()
            .clone()
    }

    /// Another worker finished fetching `key`: wake this worker's requests waiting for it.
    pub fn release_remote(&self, key: &[u8]) {
        if let Some(flight) = self.remote.borrow_mut().remove(key) {
            flight.done.set(true);
            flight.notify.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_join_follows_until_the_leader_is_done() {
        let c = Coalescer::default();
        let leader = match c.join(b"k") {
            Join::Leader(g) => g,
            Join::Follower(_) => panic!("first join leads"),
        };
        let flight = match c.join(b"k") {
            Join::Follower(f) => f,
            Join::Leader(_) => panic!("second join follows"),
        };
        assert!(!flight.done.get());
        drop(leader);
        assert!(flight.done.get());
        assert_eq!(c.in_flight(), 0);
        assert!(matches!(c.join(b"k"), Join::Leader(_)));
    }

    #[test]
    fn remote_waits_are_released_by_key() {
        let c = Coalescer::default();
        let flight = c.wait_remote(b"k");
        assert!(Rc::ptr_eq(&flight, &c.wait_remote(b"k")));
        c.release_remote(b"other");
        assert!(!flight.done.get());
        c.release_remote(b"k");
        assert!(flight.done.get());
    }

    #[test]
    fn different_keys_do_not_wait_for_each_other() {
        let c = Coalescer::default();
        let _a = c.join(b"a");
        assert!(matches!(c.join(b"b"), Join::Leader(_)));
    }
}
