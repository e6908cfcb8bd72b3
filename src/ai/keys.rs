//! Which of a provider's keys an AI request uses: the one with the fewest
//! requests in flight on this node, among equals the next in turn (so
//! idle keys share the load, and with it each key's own quota at the
//! provider).
//!
//! The node's workers share one table of atomic counters, like the
//! rate-limit table: a key's count is found by hashing its route,
//! provider and index, so no lock is taken and nothing is allocated per
//! request. Two keys whose hashes meet share a counter; the counts are a
//! balancing hint, never a limit, so that only makes the choice less even.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU32, Ordering};

/// Counters in the table (4 bytes each).
const CELLS: usize = 4096;

/// Requests in flight per provider key, and each provider's turn.
pub struct KeyLoad {
    in_flight: Box<[AtomicU32]>,
    turns: Box<[AtomicU32]>,
    hasher: RandomState,
}

impl Default for KeyLoad {
    fn default() -> Self {
        KeyLoad {
            in_flight: (0..CELLS).map(|_| AtomicU32::new(0)).collect(),
            turns: (0..CELLS).map(|_| AtomicU32::new(0)).collect(),
            hasher: RandomState::new(),
        }
    }
}

impl std::fmt::Debug for KeyLoad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyLoad").finish_non_exhaustive()
    }
}

impl KeyLoad {
    fn cell(&self, route: &str, provider: &str, key: Option<usize>) -> usize {
        let mut h = self.hasher.build_hasher();
        route.hash(&mut h);
        provider.hash(&mut h);
        key.hash(&mut h);
        h.finish() as usize & (CELLS - 1)
    }

    /// Picks one of the `keys` keys of `provider` on `route` and counts it
    /// in flight until the returned guard is dropped; `None` without keys.
    pub fn pick(&self, route: &str, provider: &str, keys: usize) -> Option<KeyInFlight<'_>> {
        if keys == 0 {
            return None;
        }
        let turn = &self.turns[self.cell(route, provider, None)];
        let start = turn.load(Ordering::Relaxed) as usize % keys;
        let (mut chosen, mut least) = (start, u32::MAX);
        for i in 0..keys {
            let index = (start + i) % keys;
            let n = self.in_flight[self.cell(route, provider, Some(index))].load(Ordering::Relaxed);
            if n < least {
                (chosen, least) = (index, n);
            }
        }
        turn.store(((chosen + 1) % keys) as u32, Ordering::Relaxed);
        let cell = self.cell(route, provider, Some(chosen));
        self.in_flight[cell].fetch_add(1, Ordering::Relaxed);
        Some(KeyInFlight {
            load: self,
            cell,
            index: chosen,
        })
    }

    /// Requests in flight on a key (for tests and `/stats`).
    pub fn in_flight(&self, route: &str, provider: &str, key: usize) -> u32 {
        self.in_flight[self.cell(route, provider, Some(key))].load(Ordering::Relaxed)
    }
}

/// One request in flight on a provider key: counted down when dropped.
pub struct KeyInFlight<'a> {
    load: &'a KeyLoad,
    cell: usize,
    /// The key's index in the provider's `keys`.
    pub index: usize,
}

impl Drop for KeyInFlight<'_> {
    fn drop(&mut self) {
        let _ = self.load.in_flight[self.cell].fetch_update(
            Ordering::Relaxed,
            Ordering::Relaxed,
            |n| n.checked_sub(1),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_keys_take_turns_and_a_busy_one_is_passed_over() {
        let load = KeyLoad::default();
        let picks: Vec<usize> = (0..6)
            .map(|_| load.pick("r", "p", 3).unwrap().index)
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        let held = load.pick("r", "p", 3).unwrap();
        assert_eq!(held.index, 0);
        let second = load.pick("r", "p", 3).unwrap();
        assert_eq!(second.index, 1);
        assert_eq!(load.in_flight("r", "p", 0), 1);
        // 0 and 1 busy: 2, then 2 again after its turn came round.
        assert_eq!(load.pick("r", "p", 3).unwrap().index, 2);
        assert_eq!(load.pick("r", "p", 3).unwrap().index, 2);
        drop(held);
        assert_eq!(load.in_flight("r", "p", 0), 0);
        assert_eq!(load.pick("r", "p", 3).unwrap().index, 0);
        assert!(load.pick("r", "p", 0).is_none());
    }

    #[test]
    fn threads_share_the_counts() {
        let load = std::sync::Arc::new(KeyLoad::default());
        let other = load.clone();
        let held = std::thread::spawn(move || {
            let g = other.pick("r", "p", 2).unwrap();
            let i = g.index;
            std::mem::forget(g);
            i
        })
        .join()
        .unwrap();
        assert_eq!(load.in_flight("r", "p", held), 1);
        let mine = load.pick("r", "p", 2).unwrap();
        assert_ne!(
            mine.index, held,
            "the key busy on another thread is passed over"
        );
    }
}
