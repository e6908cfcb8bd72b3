//! A cache entry being filled: read-while-fill.
//!
//! When a storable response's body does not arrive with its head, one task
//! reads it from the origin at the origin's speed into a `Fill`, and every
//! client that wants it (the one that caused the fetch, and those that
//! missed on the same key meanwhile) reads the same bytes from the `Fill` at
//! its own speed. A slow client never slows the origin fetch, and the bytes
//! are held once for all of them, as `Bytes` pieces that readers share.
//! When the body is complete it becomes the stored entry and readers go on
//! from that; the pieces are released.
//!
//! If the body outgrows what may be stored (a response of unknown length
//! over the limit), the fill stops storing: no new reader may join, pieces
//! every reader has passed are dropped, and the fetch waits for the slowest
//! reader once it is `WINDOW` bytes ahead, so memory stays bounded.
//!
//! Only this worker's tasks touch a `Fill` (it is `Rc`, never sent).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use slab::Slab;

use super::entry::{Stored, StoredHead};
use crate::worker::signal::Notify;

/// How far a fill that no longer stores may run ahead of its slowest reader.
pub const WINDOW: u64 = 256 * 1024;

/// Largest piece a reader is handed at once (a write's timeout covers one piece).
const MAX_PIECE: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Filling,
    /// The whole body arrived.
    Complete,
    /// The origin failed before the body was complete.
    Failed,
}

pub struct Fill {
    /// The response being stored, without its body.
    pub head: StoredHead,
    /// Its length, when the origin announced one.
    pub length: Option<u64>,
    /// The variant key the response is stored under, when it varies.
    pub variant: Option<Box<[u8]>>,
    /// Received pieces not yet dropped, with the offset of the first.
    pieces: RefCell<VecDeque<Bytes>>,
    first_offset: Cell<u64>,
    received: Cell<u64>,
    state: Cell<State>,
    storing: Cell<bool>,
    /// Once stored, readers go on from the entry.
    stored: RefCell<Option<Arc<Stored>>>,
    /// Each reader's position.
    readers: RefCell<Slab<u64>>,
    notify: Notify,
}

/// What a reader gets next.
pub enum Piece {
    Data(Bytes),
    /// The body ended at the reader's position.
    End,
    /// The origin failed: the response cannot be completed.
    Failed,
    /// Nothing new yet.
    Wait,
}

impl Fill {
    pub fn new(head: StoredHead, length: Option<u64>, variant: Option<Box<[u8]>>) -> Fill {
        Fill {
            head,
            length,
            variant,
            pieces: RefCell::default(),
            first_offset: Cell::new(0),
            received: Cell::new(0),
            state: Cell::new(State::Filling),
            storing: Cell::new(true),
            stored: RefCell::new(None),
            readers: RefCell::default(),
            notify: Notify::default(),
        }
    }

    /// Body bytes received so far.
    pub fn received(&self) -> u64 {
        self.received.get()
    }

    /// New readers may still start from the first byte.
    pub fn joinable(&self) -> bool {
        self.storing.get() && self.state.get() != State::Failed
    }

    pub fn storing(&self) -> bool {
        self.storing.get()
    }

    /// Appends a piece of body received from the origin.
    pub fn push(&self, piece: Bytes) {
        if piece.is_empty() {
            return;
        }
        self.received.set(self.received.get() + piece.len() as u64);
        self.pieces.borrow_mut().push_back(piece);
        self.trim();
        self.notify.notify_all();
    }

    /// The body will not be stored (it outgrew the limit): no new readers,
    /// and pieces are dropped once every reader passed them.
    pub fn stop_storing(&self) {
        self.storing.set(false);
        self.trim();
    }

    /// The whole body is in the pieces. Returns it in one piece, for the entry.
    pub fn complete(&self) -> Bytes {
        self.state.set(State::Complete);
        self.notify.notify_all();
        let pieces = self.pieces.borrow();
        match pieces.len() {
            0 => Bytes::new(),
            1 => pieces[0].clone(),
            _ => {
                let mut body = Vec::with_capacity(self.received.get() as usize);
                for p in pieces.iter() {
                    body.extend_from_slice(p);
                }
                Bytes::from(body)
            }
        }
    }

    /// The body is stored as `entry`: readers go on from it, the pieces go.
    pub fn stored_as(&self, entry: Arc<Stored>) {
        *self.stored.borrow_mut() = Some(entry);
        self.pieces.borrow_mut().clear();
        self.first_offset.set(self.received.get());
        self.notify.notify_all();
    }

    /// The origin failed mid-body: nothing is stored, and each reader
    /// still gets what came before the failure, then `Failed` (the pieces
    /// go once every reader passed them). A reader behind must not lose
    /// bytes the origin did send.
    pub fn fail(&self) {
        self.state.set(State::Failed);
        self.storing.set(false);
        self.trim();
        self.notify.notify_all();
    }

    /// Registers a reader at the first byte; `None` once that byte is gone.
    pub fn reader(self: &std::rc::Rc<Self>) -> Option<Reader> {
        if self.first_offset.get() > 0 && self.stored.borrow().is_none() {
            return None;
        }
        let key = self.readers.borrow_mut().insert(0);
        Some(Reader {
            fill: self.clone(),
            key,
            position: 0,
        })
    }

    /// Readers still attached.
    pub fn reader_count(&self) -> usize {
        self.readers.borrow().len()
    }

    /// Bytes received beyond the slowest reader.
    fn lag(&self) -> u64 {
        let slowest = self.readers.borrow().iter().map(|(_, &p)| p).min();
        slowest.map_or(0, |p| self.received.get().saturating_sub(p))
    }

    /// Resolves when the fetch may read more: always while storing, else
    /// once the slowest reader is within [`WINDOW`] (or none is left).
    pub async fn room(&self) {
        self.notify
            .wait_until(|| self.storing.get() || self.reader_count() == 0 || self.lag() <= WINDOW)
            .await
    }

    /// Drops the pieces every reader has passed, when not storing.
    fn trim(&self) {
        if self.storing.get() {
            return;
        }
        let slowest = self
            .readers
            .borrow()
            .iter()
            .map(|(_, &p)| p)
            .min()
            .unwrap_or(self.received.get());
        let mut pieces = self.pieces.borrow_mut();
        while let Some(first) = pieces.front() {
            let end = self.first_offset.get() + first.len() as u64;
            if end > slowest {
                break;
            }
            self.first_offset.set(end);
            pieces.pop_front();
        }
    }

    fn piece_at(&self, position: u64) -> Piece {
        if let Some(entry) = self.stored.borrow().as_ref() {
            let start = position as usize;
            return if start >= entry.body.len() {
                Piece::End
            } else {
                Piece::Data(
                    entry
                        .body
                        .slice(start..(start + MAX_PIECE).min(entry.body.len())),
                )
            };
        }
        if position < self.received.get() {
            let pieces = self.pieces.borrow();
            let mut offset = self.first_offset.get();
            for p in pieces.iter() {
                let end = offset + p.len() as u64;
                if position < end {
                    let from = (position - offset) as usize;
                    return Piece::Data(p.slice(from..(from + MAX_PIECE).min(p.len())));
                }
                offset = end;
            }
        }
        match self.state.get() {
            State::Failed => Piece::Failed,
            State::Complete if position >= self.received.get() => Piece::End,
            _ => Piece::Wait,
        }
    }
}

/// One client reading a fill. Dropping it detaches the client.
pub struct Reader {
    fill: std::rc::Rc<Fill>,
    key: usize,
    position: u64,
}

impl Reader {
    /// The next piece from the reader's position, waiting for the origin.
    pub async fn next(&mut self) -> Piece {
        let fill = &self.fill;
        let position = self.position;
        fill.notify
            .wait_until(|| !matches!(fill.piece_at(position), Piece::Wait))
            .await;
        let piece = fill.piece_at(position);
        if let Piece::Data(data) = &piece {
            self.position += data.len() as u64;
            fill.readers.borrow_mut()[self.key] = self.position;
            if !fill.storing.get() {
                fill.trim();
                // The fetch may be waiting for the slowest reader.
                fill.notify.notify_all();
            }
        }
        piece
    }

    pub fn fill(&self) -> &Fill {
        &self.fill
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.fill.readers.borrow_mut().remove(self.key);
        self.fill.trim();
        self.fill.notify.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::entry::ExchangeTimes;
    use crate::cache::policy::CachePolicy;
    use std::rc::Rc;
    use std::time::SystemTime;

    fn fill() -> Rc<Fill> {
        let head = StoredHead::build(
            200,
            "OK",
            vec![("Cache-Control".into(), b"max-age=60".to_vec())],
            ExchangeTimes::now(SystemTime::now()),
            &CachePolicy::default(),
            None,
        );
        Rc::new(Fill::new(head, None, None))
    }

    fn now<T>(f: impl std::future::Future<Output = T>) -> T {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()
            .unwrap();
        rt.block_on(f)
    }

    fn data(p: Piece) -> Vec<u8> {
        match p {
            Piece::Data(d) => d.to_vec(),
            _ => panic!("expected data"),
        }
    }

    #[test]
    fn a_reader_behind_a_failure_gets_what_came_before_it_then_the_failure() {
        let f = fill();
        let mut behind = f.reader().unwrap();
        f.push(Bytes::from_static(b"first "));
        f.push(Bytes::from_static(b"second"));
        f.fail();
        assert!(!f.joinable());
        now(async {
            assert_eq!(data(behind.next().await), b"first ");
            assert_eq!(data(behind.next().await), b"second");
            assert!(matches!(behind.next().await, Piece::Failed));
        });
        drop(behind);
        assert!(
            f.pieces.borrow().is_empty(),
            "the pieces go with the last reader"
        );
    }

    #[test]
    fn readers_get_every_piece_then_the_end() {
        let f = fill();
        let mut a = f.reader().unwrap();
        f.push(Bytes::from_static(b"hello "));
        let mut b = f.reader().unwrap();
        f.push(Bytes::from_static(b"world"));
        let body = f.complete();
        assert_eq!(&body[..], b"hello world");
        now(async {
            assert_eq!(data(a.next().await), b"hello ");
            assert_eq!(data(b.next().await), b"hello ");
            assert_eq!(data(a.next().await), b"world");
            assert!(matches!(a.next().await, Piece::End));
        });
    }

    #[test]
    fn after_storing_readers_continue_from_the_entry() {
        let f = fill();
        let mut a = f.reader().unwrap();
        f.push(Bytes::from_static(b"abc"));
        f.push(Bytes::from_static(b"def"));
        let body = f.complete();
        now(async { assert_eq!(data(a.next().await), b"abc") });
        let entry = Arc::new(Stored::from_head(f.head.clone(), body));
        f.stored_as(entry);
        assert!(f.pieces.borrow().is_empty(), "pieces are released");
        now(async {
            assert_eq!(data(a.next().await), b"def");
            assert!(matches!(a.next().await, Piece::End));
        });
        // A late reader still starts from the first byte.
        let mut late = f.reader().unwrap();
        now(async { assert_eq!(data(late.next().await), b"abcdef") });
    }

    #[test]
    fn a_fill_that_stops_storing_keeps_only_what_readers_need() {
        let f = fill();
        let mut a = f.reader().unwrap();
        f.push(Bytes::from(vec![1u8; 1000]));
        f.push(Bytes::from(vec![2u8; 1000]));
        f.stop_storing();
        assert!(!f.joinable());
        now(async {
            assert_eq!(data(a.next().await).len(), 1000);
        });
        assert_eq!(f.pieces.borrow().len(), 1, "the passed piece was dropped");
        assert!(
            f.reader().is_none(),
            "no reader can start once bytes are gone"
        );
        drop(a);
        assert!(f.pieces.borrow().is_empty());
    }

    #[test]
    fn a_failed_fill_tells_its_readers() {
        let f = fill();
        let mut a = f.reader().unwrap();
        f.push(Bytes::from_static(b"partial"));
        f.fail();
        now(async {
            // What came before the failure, then the failure.
            assert_eq!(data(a.next().await), b"partial");
            assert!(matches!(a.next().await, Piece::Failed));
        });
    }
}
