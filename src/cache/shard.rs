//! One worker's cache shard: a `quick_cache` (S3-FIFO eviction, weighted by
//! the bytes an entry holds) mapping full keys to stored responses.
//!
//! A URL whose response varies maps its primary key to a [`Slot::Variants`]
//! index naming the `Vary` headers; each variant lives under its own
//! secondary key. Keys are compared in full (the hash only picks the bucket).
//! An entry past its useful life is removed when a lookup meets it; entries
//! nobody asks for again are evicted by S3-FIFO or by the periodic sweep.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Instant;

use httparse::Header;
use quick_cache::{DefaultHashBuilder, Lifecycle, Weighter};

use super::entry::Stored;
use super::vary::{variant_key, VarySpec};

/// A cache slot.
#[derive(Clone)]
pub enum Slot {
    Response(Rc<Stored>),
    Variants(Rc<VariantIndex>),
}

/// The variants stored for one URL.
pub struct VariantIndex {
    pub names: Vec<String>,
    /// Secondary keys stored under this URL, so the URL can be removed whole.
    pub keys: RefCell<Vec<Box<[u8]>>>,
}

#[derive(Clone)]
struct SlotWeight;

impl Weighter<Box<[u8]>, Slot> for SlotWeight {
    fn weight(&self, key: &Box<[u8]>, slot: &Slot) -> u64 {
        key.len() as u64
            + match slot {
                Slot::Response(stored) => stored.weight(),
                Slot::Variants(index) => {
                    64 + index.names.iter().map(|n| n.len() as u64).sum::<u64>()
                }
            }
    }
}

/// Counts evictions made to fit capacity.
#[derive(Clone, Default)]
struct CountEvictions(Rc<Cell<u64>>);

impl Lifecycle<Box<[u8]>, Slot> for CountEvictions {
    type RequestState = ();
    fn on_evict(&self, _: &mut (), _: Box<[u8]>, _: Slot) {
        self.0.set(self.0.get() + 1);
    }
}

type Inner =
    quick_cache::unsync::Cache<Box<[u8]>, Slot, SlotWeight, DefaultHashBuilder, CountEvictions>;

/// What a lookup found.
pub enum Lookup {
    Found(Rc<Stored>),
    /// Nothing stored for the URL.
    UriMiss,
    /// The URL has variants, none for this request's header values.
    VaryMiss,
}

pub struct Shard {
    inner: Inner,
    evictions: Rc<Cell<u64>>,
    /// Reused buffer for secondary keys.
    scratch: Vec<u8>,
}

impl Shard {
    pub fn new(capacity_bytes: u64) -> Shard {
        let evictions = CountEvictions::default();
        let counter = evictions.0.clone();
        let estimated_items = (capacity_bytes / 4096).clamp(16, 1 << 20) as usize;
        Shard {
            inner: Inner::with(
                estimated_items,
                capacity_bytes.max(1),
                SlotWeight,
                DefaultHashBuilder::default(),
                evictions,
            ),
            evictions: counter,
            scratch: Vec::new(),
        }
    }

    /// Finds the response for `primary` that matches this request's `Vary` headers.
    pub fn lookup(&mut self, primary: &[u8], headers: &[Header<'_>], now: Instant) -> Lookup {
        let slot = match self.inner.get(primary) {
            None => return Lookup::UriMiss,
            Some(slot) => slot.clone(),
        };
        match slot {
            Slot::Response(stored) => {
                if now >= stored.discard_at {
                    self.inner.remove(primary);
                    return Lookup::UriMiss;
                }
                Lookup::Found(stored)
            }
            Slot::Variants(index) => {
                variant_key(&mut self.scratch, primary, &index.names, headers);
                match self.inner.get(self.scratch.as_slice()) {
                    Some(Slot::Response(stored)) if now < stored.discard_at => {
                        Lookup::Found(stored.clone())
                    }
                    Some(_) => {
                        let key = std::mem::take(&mut self.scratch);
                        self.inner.remove(key.as_slice());
                        self.scratch = key;
                        Lookup::VaryMiss
                    }
                    None => Lookup::VaryMiss,
                }
            }
        }
    }

    /// Stores `stored` for `primary`, under its variant key when it varies.
    pub fn insert(&mut self, primary: &[u8], headers: &[Header<'_>], stored: Rc<Stored>) {
        match stored.vary.clone() {
            VarySpec::Star => {}
            VarySpec::None => self.inner.insert(primary.into(), Slot::Response(stored)),
            VarySpec::Names(names) => {
                let index = match self.inner.get(primary) {
                    Some(Slot::Variants(index)) if index.names == names => index.clone(),
                    existing => {
                        // New or different Vary: earlier variants are unreachable now.
                        if let Some(Slot::Variants(old)) = existing {
                            let old = old.clone();
                            for key in old.keys.borrow().iter() {
                                self.inner.remove(key.as_ref());
                            }
                        }
                        let index = Rc::new(VariantIndex {
                            names: names.clone(),
                            keys: RefCell::new(Vec::new()),
                        });
                        self.inner
                            .insert(primary.into(), Slot::Variants(index.clone()));
                        index
                    }
                };
                variant_key(&mut self.scratch, primary, &names, headers);
                let key: Box<[u8]> = self.scratch.as_slice().into();
                {
                    let mut keys = index.keys.borrow_mut();
                    if !keys.contains(&key) {
                        keys.push(key.clone());
                    }
                }
                self.inner.insert(key, Slot::Response(stored));
            }
        }
    }

    /// Removes a URL and all its variants; returns how many responses went.
    pub fn remove_uri(&mut self, primary: &[u8]) -> usize {
        match self.inner.remove(primary) {
            None => 0,
            Some((_, Slot::Response(_))) => 1,
            Some((_, Slot::Variants(index))) => index
                .keys
                .borrow()
                .iter()
                .filter(|k| self.inner.remove(k.as_ref()).is_some())
                .count(),
        }
    }

    /// Drops every entry past its useful life. A full pass: run it from a
    /// background task, never on the request path.
    pub fn sweep(&mut self, now: Instant) -> usize {
        let before = self.inner.len();
        self.inner.retain(|_, slot| match slot {
            Slot::Response(stored) => now < stored.discard_at,
            Slot::Variants(_) => true,
        });
        before - self.inner.len()
    }

    pub fn evictions(&self) -> u64 {
        self.evictions.get()
    }

    /// Bytes held (as weighed).
    pub fn weight(&self) -> u64 {
        self.inner.weight()
    }

    pub fn len(&self) -> usize {
        self.inner.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::entry::ExchangeTimes;
    use crate::cache::policy::CachePolicy;
    use bytes::Bytes;
    use std::time::{Duration, SystemTime};

    fn stored(extra: &[(&str, &str)], body: &'static [u8]) -> Rc<Stored> {
        let mut fields = vec![("Cache-Control".to_string(), b"max-age=60".to_vec())];
        fields.extend(
            extra
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())),
        );
        Rc::new(Stored::build(
            200,
            "OK",
            fields,
            Bytes::from_static(body),
            ExchangeTimes::now(SystemTime::now()),
            &CachePolicy::default(),
            None,
        ))
    }

    fn body(l: Lookup) -> Option<Bytes> {
        match l {
            Lookup::Found(s) => Some(s.body.clone()),
            _ => None,
        }
    }

    #[test]
    fn full_keys_are_compared() {
        let mut shard = Shard::new(1 << 20);
        shard.insert(b"http://a/x", &[], stored(&[], b"a"));
        assert!(body(shard.lookup(b"http://a/x", &[], Instant::now())).is_some());
        assert!(matches!(
            shard.lookup(b"http://a/y", &[], Instant::now()),
            Lookup::UriMiss
        ));
    }

    #[test]
    fn variants_of_one_url_coexist() {
        let mut shard = Shard::new(1 << 20);
        let gzip = [Header {
            name: "Accept-Encoding",
            value: b"gzip",
        }];
        let br = [Header {
            name: "Accept-Encoding",
            value: b"br",
        }];
        shard.insert(
            b"http://a/x",
            &gzip,
            stored(&[("Vary", "Accept-Encoding")], b"gz"),
        );
        shard.insert(
            b"http://a/x",
            &br,
            stored(&[("Vary", "Accept-Encoding")], b"br"),
        );
        let now = Instant::now();
        assert_eq!(body(shard.lookup(b"http://a/x", &gzip, now)).unwrap(), "gz");
        assert_eq!(body(shard.lookup(b"http://a/x", &br, now)).unwrap(), "br");
        assert!(matches!(
            shard.lookup(b"http://a/x", &[], now),
            Lookup::VaryMiss
        ));
        assert_eq!(shard.remove_uri(b"http://a/x"), 2);
        assert!(matches!(
            shard.lookup(b"http://a/x", &gzip, now),
            Lookup::UriMiss
        ));
    }

    #[test]
    fn expired_entries_are_dropped_when_met() {
        let mut shard = Shard::new(1 << 20);
        shard.insert(b"k", &[], stored(&[], b"v"));
        let later = Instant::now() + Duration::from_secs(3600);
        assert!(matches!(shard.lookup(b"k", &[], later), Lookup::UriMiss));
        assert!(shard.is_empty());
    }

    #[test]
    fn sweep_drops_expired_entries() {
        let mut shard = Shard::new(1 << 20);
        shard.insert(b"k1", &[], stored(&[], b"v"));
        shard.insert(b"k2", &[], stored(&[], b"v"));
        assert_eq!(shard.sweep(Instant::now() + Duration::from_secs(3600)), 2);
    }

    #[test]
    fn capacity_is_weighted_by_bytes() {
        let mut shard = Shard::new(64 * 1024);
        static BIG: [u8; 8192] = [0; 8192];
        for i in 0..64 {
            shard.insert(format!("k{i}").as_bytes(), &[], stored(&[], &BIG));
        }
        assert!(shard.weight() <= 64 * 1024, "{}", shard.weight());
        assert!(shard.len() < 64);
        assert!(shard.evictions() > 0);
    }
}
