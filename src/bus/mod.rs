//! The bus: how workers, which share nothing, tell each other things.
//!
//! Every worker has one bounded, lock-free inbound queue (crossbeam) and a
//! waker. Anyone holding the [`Bus`] (every worker, the admin API) can send
//! to one worker or broadcast to all. A sender pushes, then wakes the
//! worker's bus task through monoio's cross-thread waker (an eventfd under
//! the hood): an idle worker wakes at once, without spinning or a timer, and
//! a busy one drains its queue between requests.
//!
//! A message may carry an [`Ack`]: each worker applies the message, adds
//! what it removed and counts down; the sender awaits the count reaching
//! zero. A worker applies its queue in order, so an ack means "applied
//! before any request this worker reads after the ack".
//!
//! Queues are bounded. A full queue refuses the message and the sender gets
//! [`BusError::Full`] naming the worker: visible, never a silent drop.

use std::future::poll_fn;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use atomic_waker::AtomicWaker;
use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::cache::entry::Stored;
use crate::cache::shard::Removal;

/// Default capacity of each worker's queue.
pub const DEFAULT_CAPACITY: usize = 4096;

/// What the cache should invalidate.
#[derive(Clone, Debug)]
pub enum Invalidation {
    /// Everything stored for these URLs (URL parts of keys, see
    /// `cache::key`): all variants, whatever key headers or cookies.
    Urls(Arc<Vec<Box<[u8]>>>),
    /// Keys of `http://host` (any host when `None`) whose path starts with `prefix`.
    Prefix {
        host: Option<Arc<str>>,
        prefix: Arc<str>,
    },
    /// Keys whose path (and query) matches the expression, on `host` if given.
    Regex {
        host: Option<Arc<str>>,
        regex: Arc<regex::Regex>,
    },
    /// Responses carrying this tag.
    Tag(Arc<str>),
    All,
}

/// A message between workers.
#[derive(Clone)]
pub enum Message {
    Invalidate {
        what: Invalidation,
        removal: Removal,
    },
    /// A response stored by `from`, for the other shards: the same `Arc`, the body never copied.
    Offer {
        from: usize,
        primary: Arc<[u8]>,
        variant: Option<Arc<[u8]>>,
        stored: Arc<Stored>,
    },
    /// `from` finished (or gave up) fetching `key`; workers waiting for it re-check their shard.
    FetchDone { from: usize, key: Arc<[u8]> },
    /// Report counters into the collector.
    Stats(Arc<StatsRequest>),
    /// An AI route's target answered 429 or 5xx with `Retry-After`: it is
    /// passed over until `until` (key: route, provider and model).
    AiBench {
        target: Arc<str>,
        until: std::time::Instant,
    },
    /// Active health checking found `server` of `group` up or down (named,
    /// not indexed: indices differ between config generations).
    Health {
        group: Arc<str>,
        server: std::net::SocketAddr,
        healthy: bool,
    },
    /// Service discovery found a new server list for `group`.
    Servers {
        group: Arc<str>,
        servers: crate::upstream::discovery::ServerList,
    },
    /// A new config generation to run (`reload`).
    Reload(Arc<crate::reload::Snapshot>),
}

/// A request for every worker's counters, filled in by each worker.
pub struct StatsRequest {
    pub replies: std::sync::Mutex<Vec<serde_json::Value>>,
}

/// Counts workers that still have to apply a message.
pub struct Ack {
    pending: AtomicUsize,
    acked: AtomicUsize,
    removed: AtomicU64,
    waker: AtomicWaker,
    /// Which workers acknowledged.
    by: Vec<std::sync::atomic::AtomicBool>,
}

impl Ack {
    pub(crate) fn new(workers: usize) -> Arc<Ack> {
        Arc::new(Ack {
            pending: AtomicUsize::new(workers),
            acked: AtomicUsize::new(0),
            removed: AtomicU64::new(0),
            waker: AtomicWaker::new(),
            by: (0..workers)
                .map(|_| std::sync::atomic::AtomicBool::new(false))
                .collect(),
        })
    }

    /// Called by worker `worker` once it applied the message.
    pub fn done(&self, worker: usize, removed: u64) {
        if let Some(flag) = self.by.get(worker) {
            flag.store(true, Ordering::Release);
        }
        self.removed.fetch_add(removed, Ordering::AcqRel);
        self.acked.fetch_add(1, Ordering::AcqRel);
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.waker.wake();
        }
    }

    fn cancel_one(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.waker.wake();
        }
    }

    /// Resolves once every worker acknowledged.
    pub async fn all(&self) {
        poll_fn(|cx| {
            self.waker.register(cx.waker());
            if self.pending.load(Ordering::Acquire) == 0 {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }

    pub fn acked(&self) -> usize {
        self.acked.load(Ordering::Acquire)
    }

    /// The workers that have not acknowledged (yet).
    pub fn missing(&self) -> Vec<usize> {
        (0..self.by.len())
            .filter(|&w| !self.by[w].load(Ordering::Acquire))
            .collect()
    }

    /// Blocks the calling thread (not a worker's) until every worker
    /// acknowledged or `timeout` passed; true when all did.
    pub fn wait_blocking(&self, timeout: Duration) -> bool {
        struct Unpark(std::thread::Thread);
        impl std::task::Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let deadline = std::time::Instant::now() + timeout;
        let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
        loop {
            self.waker.register(&waker);
            if self.pending.load(Ordering::Acquire) == 0 {
                return true;
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return false;
            }
            std::thread::park_timeout(deadline - now);
        }
    }

    pub fn removed(&self) -> u64 {
        self.removed.load(Ordering::Acquire)
    }
}

/// The outcome of a broadcast that was waited for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broadcast {
    pub workers: usize,
    pub acked: usize,
    pub removed: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    #[error("worker {worker}'s bus queue is full")]
    Full { worker: usize },
    #[error("{acked} of {workers} workers acknowledged within {timeout:?}")]
    Timeout {
        workers: usize,
        acked: usize,
        timeout: Duration,
    },
    #[error("worker {worker} has stopped")]
    Stopped { worker: usize },
}

/// An envelope in a worker's queue.
pub struct Envelope {
    pub message: Message,
    pub ack: Option<Arc<Ack>>,
}

struct Inbox {
    sender: Sender<Envelope>,
    waker: AtomicWaker,
}

/// Senders to every worker. Cheap to share (`Arc`), usable from any thread.
pub struct Bus {
    inboxes: Vec<Inbox>,
}

/// A worker's end of the bus.
pub struct Mailbox {
    pub worker: usize,
    receiver: Receiver<Envelope>,
    bus: Arc<Bus>,
}

impl Bus {
    /// A bus for `workers` workers, each queue holding up to `capacity` messages.
    pub fn new(workers: usize, capacity: usize) -> (Arc<Bus>, Vec<(Receiver<Envelope>, usize)>) {
        let mut inboxes = Vec::with_capacity(workers);
        let mut receivers = Vec::with_capacity(workers);
        for worker in 0..workers {
            let (sender, receiver) = crossbeam_channel::bounded(capacity);
            inboxes.push(Inbox {
                sender,
                waker: AtomicWaker::new(),
            });
            receivers.push((receiver, worker));
        }
        (Arc::new(Bus { inboxes }), receivers)
    }

    pub fn workers(&self) -> usize {
        self.inboxes.len()
    }

    /// Sends to one worker.
    pub fn send(
        &self,
        worker: usize,
        message: Message,
        ack: Option<Arc<Ack>>,
    ) -> Result<(), BusError> {
        let inbox = &self.inboxes[worker];
        match inbox.sender.try_send(Envelope { message, ack }) {
            Ok(()) => {
                inbox.waker.wake();
                Ok(())
            }
            Err(TrySendError::Full(_)) => Err(BusError::Full { worker }),
            Err(TrySendError::Disconnected(_)) => Err(BusError::Stopped { worker }),
        }
    }

    /// Sends to every worker (but `except`), without waiting. Returns the
    /// first worker whose queue refused it, if any; the others still get it.
    pub fn broadcast(&self, message: &Message, except: Option<usize>) -> Result<(), BusError> {
        let mut first_error = None;
        for worker in 0..self.inboxes.len() {
            if Some(worker) == except {
                continue;
            }
            if let Err(e) = self.send(worker, message.clone(), None) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Sends to every worker and waits until each applied it (at most `timeout`).
    pub async fn broadcast_and_wait(
        &self,
        message: Message,
        timeout: Duration,
    ) -> Result<Broadcast, BusError> {
        let workers = self.inboxes.len();
        let ack = Ack::new(workers);
        let mut refused = None;
        for worker in 0..workers {
            if let Err(e) = self.send(worker, message.clone(), Some(ack.clone())) {
                ack.cancel_one();
                refused.get_or_insert(e);
            }
        }
        if let Some(e) = refused {
            return Err(e);
        }
        if monoio::time::timeout(timeout, ack.all()).await.is_err() {
            return Err(BusError::Timeout {
                workers,
                acked: ack.acked(),
                timeout,
            });
        }
        Ok(Broadcast {
            workers,
            acked: ack.acked(),
            removed: ack.removed(),
        })
    }
}

impl Mailbox {
    pub fn new(bus: Arc<Bus>, receiver: Receiver<Envelope>, worker: usize) -> Mailbox {
        Mailbox {
            worker,
            receiver,
            bus,
        }
    }

    /// The next message; waits (without spinning) while the queue is empty.
    pub async fn next(&self) -> Envelope {
        let waker = &self.bus.inboxes[self.worker].waker;
        poll_fn(|cx| {
            if let Ok(envelope) = self.receiver.try_recv() {
                return Poll::Ready(envelope);
            }
            waker.register(cx.waker());
            // A message may have arrived between the first check and registering.
            match self.receiver.try_recv() {
                Ok(envelope) => Poll::Ready(envelope),
                Err(_) => Poll::Pending,
            }
        })
        .await
    }

    /// A message already queued, if any.
    pub fn try_next(&self) -> Option<Envelope> {
        self.receiver.try_recv().ok()
    }

    pub fn bus(&self) -> &Arc<Bus> {
        &self.bus
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_is_an_error_naming_the_worker() {
        let (bus, _receivers) = Bus::new(2, 1);
        let msg = Message::Invalidate {
            what: Invalidation::All,
            removal: Removal::Hard,
        };
        bus.send(1, msg.clone(), None).unwrap();
        assert_eq!(bus.send(1, msg, None), Err(BusError::Full { worker: 1 }));
    }

    #[test]
    fn ack_counts_down_and_sums_removals() {
        let ack = Ack::new(2);
        ack.done(1, 3);
        assert_eq!(ack.pending.load(Ordering::Acquire), 1);
        assert_eq!(ack.missing(), vec![0]);
        assert!(!ack.wait_blocking(Duration::from_millis(1)));
        ack.done(0, 4);
        assert_eq!((ack.acked(), ack.removed()), (2, 7));
        assert!(ack.missing().is_empty());
        assert!(ack.wait_blocking(Duration::ZERO));
    }
}
