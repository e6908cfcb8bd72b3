//! Which worker is fetching a cold key, across cores.
//!
//! A fixed table of atomic slots indexed by the key's hash. The first worker
//! to miss on a key claims its slot (one compare-and-swap, on the miss path
//! only); a worker that finds the slot claimed for the same key waits for
//! the claimant's offer over the bus instead of asking the origin. A slot
//! held by a different key (a collision) just means no cross-core
//! coalescing for that miss. No lock is taken, and hits never touch it.

use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::atomic::{AtomicU64, Ordering};

pub struct Claims {
    slots: Box<[AtomicU64]>,
}

/// The outcome of trying to claim a key.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// This worker fetches; release the token when done.
    Won(ClaimToken),
    /// Another worker is fetching this key.
    Taken,
    /// The slot is held for another key: fetch without cross-core coalescing.
    Busy,
}

#[derive(Debug, PartialEq, Eq)]
pub struct ClaimToken {
    index: usize,
    tag: u64,
}

/// A hash every worker computes the same way for the same key.
pub fn key_hash(key: &[u8]) -> u64 {
    BuildHasherDefault::<DefaultHasher>::default().hash_one(key)
}

impl Claims {
    pub fn new(slots: usize) -> Claims {
        Claims {
            slots: (0..slots.max(1)).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub fn try_claim(&self, key: &[u8]) -> Claim {
        let hash = key_hash(key);
        // Never zero: zero marks a free slot.
        let tag = hash | 1;
        let index = (hash >> 1) as usize % self.slots.len();
        match self.slots[index].compare_exchange(0, tag, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => Claim::Won(ClaimToken { index, tag }),
            Err(current) if current == tag => Claim::Taken,
            Err(_) => Claim::Busy,
        }
    }

    pub fn release(&self, token: ClaimToken) {
        let _ = self.slots[token.index].compare_exchange(
            token.tag,
            0,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_claimant_per_key() {
        let claims = Claims::new(64);
        let token = match claims.try_claim(b"k") {
            Claim::Won(t) => t,
            other => panic!("{other:?}"),
        };
        assert_eq!(claims.try_claim(b"k"), Claim::Taken);
        claims.release(token);
        assert!(matches!(claims.try_claim(b"k"), Claim::Won(_)));
    }

    #[test]
    fn a_colliding_key_is_told_busy() {
        let claims = Claims::new(1);
        let _t = claims.try_claim(b"a");
        assert_eq!(claims.try_claim(b"b"), Claim::Busy);
    }
}
