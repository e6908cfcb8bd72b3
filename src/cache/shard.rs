//! One worker's cache shard: a `quick_cache` (S3-FIFO eviction, weighted by
//! the bytes an entry holds) mapping full keys to stored responses.
//!
//! A URL whose response varies maps its primary key to a [`Slot::Variants`]
//! index naming the `Vary` headers; each variant lives under its own
//! secondary key. Keys are compared in full (the hash only picks the bucket).
//! An entry past its useful life is removed when a lookup meets it; entries
//! nobody asks for again are evicted by S3-FIFO or by the periodic sweep.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use httparse::Header;
use quick_cache::{DefaultHashBuilder, Lifecycle, Weighter};

use super::entry::Stored;
use super::key::url_part;
use super::vary::{variant_key, VarySpec};

/// A cache slot.
#[derive(Clone)]
pub enum Slot {
    /// `owned`: this worker fetched it and its bytes count against this
    /// shard; an entry offered by another worker shares that worker's body
    /// and counts here only for its bookkeeping.
    Response {
        stored: Arc<Stored>,
        owned: bool,
    },
    Variants(Rc<VariantIndex>),
}

/// Bookkeeping weight of an entry whose bytes another shard counts.
const SHARED_ENTRY_WEIGHT: u64 = 256;

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
                Slot::Response {
                    stored,
                    owned: true,
                } => stored.weight(),
                Slot::Response { owned: false, .. } => SHARED_ENTRY_WEIGHT,
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
    Found(Arc<Stored>),
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
    /// Tag -> keys stored with it (may name keys already gone).
    tags: HashMap<String, Vec<Box<[u8]>>>,
    /// URL part -> primary keys with extra parts (key headers or cookies)
    /// stored for that URL (may name keys already gone), so a URL purge
    /// finds them all.
    by_url: HashMap<Box<[u8]>, HashSet<Box<[u8]>>>,
}

/// What an invalidation does to what it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// Remove the entries.
    Hard,
    /// Keep them, stale: still usable under stale-while-revalidate,
    /// stale-if-error, or as a base for revalidation.
    Soft,
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
            tags: HashMap::new(),
            by_url: HashMap::new(),
        }
    }

    /// Finds the response for `primary` that matches this request's `Vary` headers.
    pub fn lookup(&mut self, primary: &[u8], headers: &[Header<'_>], now: Instant) -> Lookup {
        let slot = match self.inner.get(primary) {
            None => return Lookup::UriMiss,
            Some(slot) => slot.clone(),
        };
        match slot {
            Slot::Response { stored, .. } => {
                if now >= stored.discard_at {
                    self.inner.remove(primary);
                    return Lookup::UriMiss;
                }
                Lookup::Found(stored)
            }
            Slot::Variants(index) => {
                variant_key(&mut self.scratch, primary, &index.names, headers);
                match self.inner.get(self.scratch.as_slice()) {
                    Some(Slot::Response { stored, .. }) if now < stored.discard_at => {
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
    pub fn insert(
        &mut self,
        primary: &[u8],
        headers: &[Header<'_>],
        stored: Arc<Stored>,
    ) -> Option<Box<[u8]>> {
        let variant = match &stored.vary {
            VarySpec::Star => return None,
            VarySpec::None => None,
            VarySpec::Names(names) => {
                variant_key(&mut self.scratch, primary, names, headers);
                Some(self.scratch.as_slice().into())
            }
        };
        self.insert_keyed(primary, variant.as_deref(), stored, true);
        variant
    }

    /// Stores `stored` under `primary` (and `variant`, its secondary key,
    /// when it varies). `owned` says whether this shard counts its bytes.
    pub fn insert_keyed(
        &mut self,
        primary: &[u8],
        variant: Option<&[u8]>,
        stored: Arc<Stored>,
        owned: bool,
    ) {
        let key: Box<[u8]> = match (&stored.vary, variant) {
            (VarySpec::Star, _) => return,
            (VarySpec::Names(names), Some(variant)) => {
                let names = names.clone();
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
                            names,
                            keys: RefCell::new(Vec::new()),
                        });
                        self.inner
                            .insert(primary.into(), Slot::Variants(index.clone()));
                        index
                    }
                };
                let key: Box<[u8]> = variant.into();
                let mut keys = index.keys.borrow_mut();
                if !keys.contains(&key) {
                    keys.push(key.clone());
                }
                key
            }
            _ => primary.into(),
        };
        for tag in &stored.tags {
            self.tags.entry(tag.clone()).or_default().push(key.clone());
        }
        let url = url_part(primary);
        if url.len() != primary.len() {
            match self.by_url.get_mut(url) {
                Some(primaries) => {
                    if !primaries.contains(primary) {
                        primaries.insert(primary.into());
                    }
                }
                None => {
                    self.by_url
                        .insert(url.into(), HashSet::from([Box::<[u8]>::from(primary)]));
                }
            }
        }
        self.inner.insert(key, Slot::Response { stored, owned });
    }

    /// Purges every response stored for a URL (its URL part, see
    /// `cache::key`): the entry of that exact key with all its variants, and
    /// every entry whose key adds header or cookie parts to that URL.
    pub fn purge_url(&mut self, url: &[u8], removal: Removal) -> usize {
        let mut count = self.purge_uri(url, removal);
        let primaries: Vec<Box<[u8]>> = match removal {
            Removal::Hard => self.by_url.remove(url).into_iter().flatten().collect(),
            Removal::Soft => self
                .by_url
                .get(url)
                .map(|p| p.iter().cloned().collect())
                .unwrap_or_default(),
        };
        for primary in primaries {
            count += self.purge_uri(&primary, removal);
        }
        count
    }

    /// Removes a URL and all its variants; returns how many responses went.
    pub fn remove_uri(&mut self, primary: &[u8]) -> usize {
        match self.inner.remove(primary) {
            None => 0,
            Some((_, Slot::Response { .. })) => 1,
            Some((_, Slot::Variants(index))) => index
                .keys
                .borrow()
                .iter()
                .filter(|k| self.inner.remove(k.as_ref()).is_some())
                .count(),
        }
    }

    /// Purges a URL (all its variants): removed, or made stale.
    pub fn purge_uri(&mut self, primary: &[u8], removal: Removal) -> usize {
        match removal {
            Removal::Hard => self.remove_uri(primary),
            Removal::Soft => {
                let keys: Vec<Box<[u8]>> = match self.inner.get(primary) {
                    None => Vec::new(),
                    Some(Slot::Response { .. }) => vec![primary.into()],
                    Some(Slot::Variants(index)) => index.keys.borrow().clone(),
                };
                keys.iter().filter(|k| self.make_stale(k)).count()
            }
        }
    }

    fn make_stale(&mut self, key: &[u8]) -> bool {
        let (stored, owned) = match self.inner.get(key) {
            Some(Slot::Response { stored, owned }) => (stored.clone(), *owned),
            _ => return false,
        };
        self.inner.insert(
            key.into(),
            Slot::Response {
                stored: Arc::new(stored.made_stale()),
                owned,
            },
        );
        true
    }

    /// Invalidates every response whose key satisfies `matches`. A full pass
    /// over the shard: it runs in the worker's bus task, between requests.
    pub fn ban(&mut self, matches: impl Fn(&[u8]) -> bool, removal: Removal) -> usize {
        let keys: Vec<Box<[u8]>> = self
            .inner
            .iter()
            .filter(|(key, slot)| matches!(slot, Slot::Response { .. }) && matches(key))
            .map(|(key, _)| key.clone())
            .collect();
        match removal {
            Removal::Hard => keys
                .iter()
                .filter(|k| self.inner.remove(k.as_ref()).is_some())
                .count(),
            Removal::Soft => keys.iter().filter(|k| self.make_stale(k)).count(),
        }
    }

    /// Invalidates every response stored with `tag`.
    pub fn purge_tag(&mut self, tag: &str, removal: Removal) -> usize {
        let Some(keys) = self.tags.remove(tag) else {
            return 0;
        };
        let live: Vec<&Box<[u8]>> = keys
            .iter()
            .filter(|k| matches!(self.inner.peek(k.as_ref()), Some(Slot::Response { stored, .. }) if stored.tags.iter().any(|t| t == tag)))
            .collect();
        let count = match removal {
            Removal::Hard => live
                .iter()
                .filter(|k| self.inner.remove(k.as_ref()).is_some())
                .count(),
            Removal::Soft => {
                let live: Vec<Box<[u8]>> = live.into_iter().cloned().collect();
                live.iter().filter(|k| self.make_stale(k)).count()
            }
        };
        count
    }

    /// Invalidates everything.
    pub fn purge_all(&mut self, removal: Removal) -> usize {
        match removal {
            Removal::Hard => {
                let n = self
                    .inner
                    .iter()
                    .filter(|(_, s)| matches!(s, Slot::Response { .. }))
                    .count();
                self.inner.clear();
                self.tags.clear();
                self.by_url.clear();
                n
            }
            Removal::Soft => self.ban(|_| true, Removal::Soft),
        }
    }

    /// Drops every entry past its useful life. A full pass: run it from a
    /// background task, never on the request path.
    pub fn sweep(&mut self, now: Instant) -> usize {
        let before = self.inner.len();
        self.inner.retain(|_, slot| match slot {
            Slot::Response { stored, .. } => now < stored.discard_at,
            Slot::Variants(_) => true,
        });
        let inner = &self.inner;
        self.tags.retain(|_, keys| {
            keys.retain(|k| inner.peek(k.as_ref()).is_some());
            !keys.is_empty()
        });
        self.by_url.retain(|_, primaries| {
            primaries.retain(|k| inner.peek(k.as_ref()).is_some());
            !primaries.is_empty()
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

    fn stored(extra: &[(&str, &str)], body: &'static [u8]) -> Arc<Stored> {
        let mut fields = vec![("Cache-Control".to_string(), b"max-age=60".to_vec())];
        fields.extend(
            extra
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())),
        );
        Arc::new(Stored::build(
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
    fn a_url_purge_reaches_entries_with_extra_key_parts_and_variants() {
        let mut shard = Shard::new(1 << 20);
        let gzip = [Header {
            name: "Accept-Encoding",
            value: b"gzip",
        }];
        shard.insert(b"http://a/x\nh:x-tenant=blue", &[], stored(&[], b"b"));
        shard.insert(
            b"http://a/x\nh:x-tenant=red",
            &gzip,
            stored(&[("Vary", "Accept-Encoding")], b"r"),
        );
        shard.insert(b"http://a/x", &[], stored(&[], b"plain"));
        shard.insert(b"http://a/y\nh:x-tenant=blue", &[], stored(&[], b"other"));
        assert_eq!(shard.purge_url(b"http://a/x", Removal::Hard), 3);
        let now = Instant::now();
        assert!(matches!(
            shard.lookup(b"http://a/x\nh:x-tenant=red", &gzip, now),
            Lookup::UriMiss
        ));
        assert!(matches!(
            shard.lookup(b"http://a/y\nh:x-tenant=blue", &[], now),
            Lookup::Found(_)
        ));
        assert_eq!(shard.purge_url(b"http://a/x", Removal::Hard), 0);
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
    fn soft_purge_keeps_a_stale_copy() {
        let mut shard = Shard::new(1 << 20);
        shard.insert(b"k", &[], stored(&[], b"v"));
        assert_eq!(shard.purge_uri(b"k", Removal::Soft), 1);
        match shard.lookup(b"k", &[], Instant::now()) {
            Lookup::Found(s) => assert_eq!(s.freshness.lifetime, Duration::ZERO),
            _ => panic!("soft purge keeps the entry"),
        }
    }

    #[test]
    fn ban_matches_keys() {
        let mut shard = Shard::new(1 << 20);
        shard.insert(b"http://a/x/1", &[], stored(&[], b"v"));
        shard.insert(b"http://a/x/2", &[], stored(&[], b"v"));
        shard.insert(b"http://a/y/1", &[], stored(&[], b"v"));
        assert_eq!(
            shard.ban(|k| k.starts_with(b"http://a/x/"), Removal::Hard),
            2
        );
        assert!(matches!(
            shard.lookup(b"http://a/y/1", &[], Instant::now()),
            Lookup::Found(_)
        ));
    }

    #[test]
    fn purge_by_tag() {
        let mut shard = Shard::new(1 << 20);
        let tagged = |body| {
            Arc::new(
                Arc::try_unwrap(stored(&[("Surrogate-Key", "product-1 list")], body))
                    .unwrap()
                    .with_tags(&["surrogate-key".into()]),
            )
        };
        shard.insert(b"k1", &[], tagged(b"a"));
        shard.insert(b"k2", &[], tagged(b"b"));
        shard.insert(b"k3", &[], stored(&[], b"c"));
        assert_eq!(shard.purge_tag("list", Removal::Hard), 2);
        assert_eq!(shard.purge_tag("list", Removal::Hard), 0);
        assert_eq!(shard.len(), 1);
    }

    #[test]
    fn offered_entries_count_only_their_bookkeeping() {
        let mut shard = Shard::new(1 << 20);
        static BIG: [u8; 100_000] = [0; 100_000];
        shard.insert_keyed(b"k", None, stored(&[], &BIG), false);
        assert!(shard.weight() < 1000, "{}", shard.weight());
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
