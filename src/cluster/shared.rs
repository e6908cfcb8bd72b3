//! The shared cache tier (`[cluster] shared_cache = true`): responses a node
//! stores are also written to Redis, and a node's cold miss asks Redis
//! before the origin, so a new or restarted node fills from its peers.
//!
//! Layout in Redis (names are SHA-256 prefixes, in hex, of cache keys, so
//! no URL, cookie or header value appears in a key name):
//! - `<prefix>:c:<gen>:<url>` a hash per URL (`cache::key::url_part`), with
//!   `e:<key>` the entry stored under that primary or variant key (Redis'
//!   clock in ms when written, `:`, the `cache::wire` record) and
//!   `v:<primary>` the `Vary` names of a primary key whose responses vary.
//!   It expires when its longest-lived entry is of no use any more.
//! - `<prefix>:ct:<gen>:<tag>` the URL hashes holding entries with a tag.
//! - `<prefix>:cgen` the generation: a purge by prefix, expression or of
//!   everything moves it on, which leaves every entry behind at once.
//! - `<prefix>:cdead:<url>`, `<prefix>:cdeadtag:<tag>` (ten minutes) and
//!   `<prefix>:cpurged` (the last generation change): when a purge happened,
//!   in Redis' clock.
//!
//! A purge deletes from the tier and is added to the invalidation stream in
//! one script, so a node that learns of it can no longer read the old copy.
//! A write names how far its node had applied the stream when its origin
//! fetch began (`mark`, Redis ms); Redis refuses it when a purge of its URL
//! or tags, or a generation change, came at or after that: a response
//! fetched before a purge never comes back after it. Reads go through one
//! side thread (pipelined, a batch at a time); writes and purges go through
//! the publisher thread, in the order the node made them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use sha2::Digest;

use crate::bus::Invalidation;
use crate::config::ClusterConfig;

/// Reads waiting for the side thread; past it a miss goes to the origin.
const QUEUE: usize = 4096;
/// A write older than this when Redis can take it is dropped (a purge's
/// marks are kept ten minutes).
pub const PUT_MAX_AGE: Duration = Duration::from_secs(60);

const GET_SCRIPT: &str = r#"
local p = ARGV[1]
local gen = redis.call('GET', p .. ':cgen') or '0'
local k = p .. ':c:' .. gen .. ':' .. ARGV[2]
local t = redis.call('TIME')
local out = {string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))}
for i = 3, #ARGV do
  out[#out + 1] = redis.call('HGET', k, ARGV[i]) or ''
end
return out
"#;

const PUT_SCRIPT: &str = r#"
local p = ARGV[1]
local mark = tonumber(ARGV[7])
if mark <= tonumber(redis.call('GET', p .. ':cpurged') or '0') then return 0 end
if mark <= tonumber(redis.call('GET', p .. ':cdead:' .. ARGV[2]) or '0') then return 0 end
for i = 8, #ARGV do
  if mark <= tonumber(redis.call('GET', p .. ':cdeadtag:' .. ARGV[i]) or '0') then return 0 end
end
local gen = redis.call('GET', p .. ':cgen') or '0'
local k = p .. ':c:' .. gen .. ':' .. ARGV[2]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', k, ARGV[3], string.format('%.0f', now) .. ':' .. ARGV[4])
if ARGV[5] ~= '' then
  local sep = string.find(ARGV[5], '=', 1, true)
  redis.call('HSET', k, string.sub(ARGV[5], 1, sep - 1), string.sub(ARGV[5], sep + 1))
end
local ttl = tonumber(ARGV[6])
if redis.call('PTTL', k) < ttl then redis.call('PEXPIRE', k, ttl) end
for i = 8, #ARGV do
  local tk = p .. ':ct:' .. gen .. ':' .. ARGV[i]
  redis.call('SADD', tk, k)
  if redis.call('PTTL', tk) < ttl then redis.call('PEXPIRE', tk, ttl) end
end
return 1
"#;

/// Deletes what an invalidation names from the tier, marks when, and adds
/// it to the stream; answers the stream entry's id.
const PURGE_SCRIPT: &str = r#"
local p = ARGV[1]
local mode = ARGV[9]
local gen = redis.call('GET', p .. ':cgen') or '0'
local t = redis.call('TIME')
local now = string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
if mode == 'urls' then
  for i = 10, #ARGV do
    redis.call('DEL', p .. ':c:' .. gen .. ':' .. ARGV[i])
    redis.call('SET', p .. ':cdead:' .. ARGV[i], now, 'PX', 600000)
  end
elseif mode == 'tag' then
  local set = p .. ':ct:' .. gen .. ':' .. ARGV[10]
  for _, k in ipairs(redis.call('SMEMBERS', set)) do redis.call('DEL', k) end
  redis.call('DEL', set)
  redis.call('SET', p .. ':cdeadtag:' .. ARGV[10], now, 'PX', 600000)
else
  redis.call('INCR', p .. ':cgen')
  redis.call('SET', p .. ':cpurged', now)
end
return redis.call('XADD', ARGV[2], 'MAXLEN', '~', ARGV[3], '*', 'node', ARGV[4],
  'kind', ARGV[5], 'host', ARGV[6], 'value', ARGV[7], 'removal', ARGV[8])
"#;

/// A cache key's name in Redis: the same on every node.
pub fn name(key: &[u8]) -> String {
    super::hex(&sha2::Sha256::digest(key)[..16])
}

/// Counters for `/stats`.
#[derive(Default)]
pub struct SharedStats {
    /// Misses that asked Redis.
    pub lookups: AtomicU64,
    /// ... and found a response there.
    pub found: AtomicU64,
    /// Responses written to Redis.
    pub stored: AtomicU64,
    /// Writes Redis refused: a purge came after their fetch began.
    pub refused: AtomicU64,
    /// Writes and reads dropped: a queue was full, or a write waited too long.
    pub dropped: AtomicU64,
    /// Reads Redis did not answer (down, or slower than the wait).
    pub errors: AtomicU64,
}

/// The node's side of the shared tier.
pub struct SharedCache {
    gets: Sender<Get>,
    /// How long a miss waits for Redis before going to the origin.
    pub wait: Duration,
    /// Largest response written, unless a route says otherwise.
    pub max: u64,
    pub stats: Arc<SharedStats>,
}

/// What Redis holds for a URL's fields.
pub struct Found {
    /// Redis' clock, in ms, when it answered.
    pub now_ms: u64,
    /// Each field asked for (`None`: absent).
    pub values: Vec<Option<Bytes>>,
}

/// A read's answer, given once by the side thread.
#[derive(Default)]
pub struct Fetched {
    answer: OnceLock<Option<Found>>,
    waker: atomic_waker::AtomicWaker,
}

impl Fetched {
    fn give(&self, found: Option<Found>) {
        let _ = self.answer.set(found);
        self.waker.wake();
    }

    /// Resolves with what Redis had (`None`: it could not be asked).
    pub async fn wait(&self) -> Option<&Found> {
        std::future::poll_fn(|cx| {
            self.waker.register(cx.waker());
            match self.answer.get() {
                Some(found) => std::task::Poll::Ready(found.as_ref()),
                None => std::task::Poll::Pending,
            }
        })
        .await
    }
}

struct Get {
    url: String,
    fields: Vec<String>,
    answer: Arc<Fetched>,
}

/// One response for the tier, from the worker that stored it.
pub struct Put {
    /// Names, by [`name`]: the URL part and the key it is stored under.
    pub url: String,
    pub field: String,
    /// `v:<primary>=<names>` when its responses vary, else empty.
    pub vary: String,
    pub record: Vec<u8>,
    pub ttl_ms: u64,
    /// How far the node had applied the stream when the fetch began.
    pub mark: u64,
    pub tags: Vec<String>,
    pub queued: Instant,
}

impl SharedCache {
    /// The read side thread.
    pub fn start(config: &ClusterConfig, stop: Arc<AtomicBool>) -> std::io::Result<Arc<Self>> {
        let (gets, queue) = crossbeam_channel::bounded(QUEUE);
        let stats = Arc::new(SharedStats::default());
        let reader = Reader {
            config: config.clone(),
            stats: stats.clone(),
            stop,
        };
        std::thread::Builder::new()
            .name("ringgate-cluster-cache".to_string())
            .spawn(move || reader.run(queue))?;
        Ok(Arc::new(SharedCache {
            gets,
            wait: config.shared_cache_wait,
            max: config.shared_cache_max,
            stats,
        }))
    }

    /// Asks for `fields` of the URL named `url` (never waits; `None` when
    /// the queue is full).
    pub fn get(&self, url: String, fields: Vec<String>) -> Option<Arc<Fetched>> {
        let answer = Arc::new(Fetched::default());
        let get = Get {
            url,
            fields,
            answer: answer.clone(),
        };
        match self.gets.try_send(get) {
            Ok(()) => Some(answer),
            Err(_) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// For `/stats`.
    pub fn snapshot(&self) -> serde_json::Value {
        let s = &self.stats;
        serde_json::json!({
            "lookups": s.lookups.load(Ordering::Relaxed),
            "found": s.found.load(Ordering::Relaxed),
            "stored": s.stored.load(Ordering::Relaxed),
            "refused": s.refused.load(Ordering::Relaxed),
            "dropped": s.dropped.load(Ordering::Relaxed),
            "errors": s.errors.load(Ordering::Relaxed),
        })
    }
}

/// Splits a stored field into Redis' time when written and the record.
pub fn split_entry(value: &Bytes) -> Option<(u64, Bytes)> {
    let colon = value.iter().position(|&b| b == b':')?;
    let written = std::str::from_utf8(&value[..colon]).ok()?.parse().ok()?;
    Some((written, value.slice(colon + 1..)))
}

struct Reader {
    config: ClusterConfig,
    stats: Arc<SharedStats>,
    stop: Arc<AtomicBool>,
}

impl Reader {
    fn connect(&self) -> redis::RedisResult<(redis::Connection, String)> {
        let mut c = super::connect(&self.config)?;
        c.set_read_timeout(Some(self.config.timeout))?;
        let hash: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(GET_SCRIPT)
            .query(&mut c)?;
        Ok((c, hash))
    }

    fn run(self, queue: Receiver<Get>) {
        let mut conn: Option<(redis::Connection, String)> = None;
        let mut down_since: Option<Instant> = None;
        while !self.stop.load(Ordering::Acquire) {
            let first = match queue.recv_timeout(Duration::from_millis(500)) {
                Ok(get) => get,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => continue,
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
            };
            let mut batch = vec![first];
            batch.extend(queue.try_iter().take(1023));
            // While Redis is down, misses go to the origin at once; it is
            // tried again a second after it failed.
            let retry = down_since.is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
            if conn.is_none() && retry {
                conn = self.connect().ok();
                down_since = conn.is_none().then(Instant::now);
            }
            let answers = match conn.as_mut() {
                Some((c, script)) => {
                    let mut pipe = redis::pipe();
                    for get in &batch {
                        let cmd = pipe
                            .cmd("EVALSHA")
                            .arg(&*script)
                            .arg(0)
                            .arg(&self.config.prefix)
                            .arg(&get.url);
                        for field in &get.fields {
                            cmd.arg(field);
                        }
                    }
                    pipe.query::<Vec<Vec<Vec<u8>>>>(c).ok()
                }
                None => None,
            };
            match answers {
                Some(answers) if answers.len() == batch.len() => {
                    for (get, values) in batch.iter().zip(answers) {
                        get.answer.give(found(values));
                    }
                }
                _ => {
                    if conn.take().is_some() {
                        down_since = Some(Instant::now());
                        tracing::warn!(
                            "cluster shared cache: Redis did not answer; misses go to the origin"
                        );
                    }
                    self.stats
                        .errors
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    for get in &batch {
                        get.answer.give(None);
                    }
                }
            }
        }
    }
}

fn found(values: Vec<Vec<u8>>) -> Option<Found> {
    let mut values = values.into_iter();
    let now_ms = std::str::from_utf8(&values.next()?).ok()?.parse().ok()?;
    Some(Found {
        now_ms,
        values: values
            .map(|v| (!v.is_empty()).then(|| Bytes::from(v)))
            .collect(),
    })
}

/// Writes one response (on the publisher thread); false when Redis refused
/// it because a purge came after its fetch began.
pub(super) fn put(
    conn: &mut redis::Connection,
    config: &ClusterConfig,
    put: &Put,
) -> redis::RedisResult<bool> {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(PUT_SCRIPT)
        .arg(0)
        .arg(&config.prefix)
        .arg(&put.url)
        .arg(&put.field)
        .arg(&put.record)
        .arg(&put.vary)
        .arg(put.ttl_ms)
        .arg(put.mark);
    for tag in &put.tags {
        cmd.arg(name(tag.as_bytes()));
    }
    let written: i64 = cmd.query(conn)?;
    Ok(written == 1)
}

/// Deletes what `what` names from the tier and adds the stream entry
/// `fields` (node, kind, host, value, removal) in one script; the entry's id.
pub(super) fn purge_and_publish(
    conn: &mut redis::Connection,
    config: &ClusterConfig,
    what: &Invalidation,
    fields: [&str; 5],
) -> redis::RedisResult<String> {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(PURGE_SCRIPT)
        .arg(0)
        .arg(&config.prefix)
        .arg(&config.stream)
        .arg(config.stream_max);
    for f in fields {
        cmd.arg(f);
    }
    match what {
        Invalidation::Urls(urls) => {
            cmd.arg("urls");
            for url in urls.iter() {
                cmd.arg(name(url));
            }
        }
        Invalidation::Tag(tag) => {
            cmd.arg("tag").arg(name(tag.as_bytes()));
        }
        _ => {
            cmd.arg("all");
        }
    }
    cmd.query(conn)
}
