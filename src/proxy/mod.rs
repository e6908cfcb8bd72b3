//! The request path: a downstream session feeds parsed requests to the
//! protocol-free phases, which plan each one and carry the plan out.
//!
//! ```text
//! session.rs (HTTP/1 downstream: owns the wire)
//!   TLS handshake (TLS listeners; ALPN h2 -> http2/) -> wait for bytes (keep-alive, drain, eviction)
//!   -> read + parse head (deadline, size limits)    -> 400/408/413/431/501 + close
//! http2/ (HTTP/2 downstream: a task per stream; its header block in the
//!   same head form, then the same parse and the same phases below)
//!   -> phases::plan, in order, one function each:
//!        normalise         canonical host and path           -> 400
//!        purge             PURGE where the gateway caches    -> 200/404/403
//!        redirect_to_https a listener that only redirects     -> 301/308
//!        route             first matching route              -> 404, 301/308 (add slash)
//!        check_body_size   declared body over the limit      -> 413
//!        admit             session token                     -> 401
//!        buffer_body       a small body read whole           -> (read more, plan again)
//!        cache_decide      key and variant of the request as forwarded -> hit, 504
//!        pick_server       sticky pin, balancer, breakers    -> 503 (or stale)
//!   -> phases::answer: the gateway's own answers (answer.rs) | a hit | forward:
//!        forward.rs: proxy_request  coalesce (wait for, or read, another's fetch)
//!        upstream.rs    pooled (peeked) or new connection, send, head, retries -> 502/504
//!        respond        304/stale from the cache | fill.rs | relay.rs | tunnel.rs (101)
//!   -> the upstream connection back to the pool when it ended cleanly; next request
//! ```
//!
//! The phases see a [`crate::http::request::RequestHead`] and what the
//! session knows of the connection (`phases::Downstream`), never the wire.
//! They answer through the session (`reply.rs`): a head (status line and
//! end-to-end fields), the body's length as they know it, body pieces and an
//! end; the session chooses the framing, writes `Connection`, drops the
//! body of a HEAD and decides whether the connection goes on. They take the
//! request's body from the session too (`request_body.rs`): whole when it
//! is already in hand, else piece by piece, written in the framing the
//! upstream's head announced. Only the session's files touch the client's
//! socket and buffer.

mod ai;
mod answer;
pub mod cache;
mod coalescing;
mod fill;
mod forward;
pub mod head;
mod http2;
pub mod io;
mod phases;
mod reading;
mod refresh;
mod relay;
mod reply;
mod request_body;
pub(crate) mod request_id;
mod session;
mod shared_tier;
pub mod stored;
/// One socket write per turn of an HTTP/2 connection (server and upstream sides).
pub(crate) use http2::turn;
mod tunnel;
mod upstream;

use crate::error::{ErrorKind, ProxyError, Side};
use crate::http::{BodyFraming, Method, Version};
use crate::worker::context::{Counter, WorkerCtx};
use bytes::BytesMut;
use io::Stream;
use reading::BodyWait;
pub use session::{serve, Connection};

/// Response heads from upstreams may carry at most this many fields.
const MAX_RESPONSE_HEADERS: usize = 256;

/// What a listener gives its connections before their requests: a TLS
/// handshake, or a redirect of every request to HTTPS.
pub struct Entry {
    pub tls: Option<crate::tls::Terminator>,
    pub redirect_https: Option<u16>,
    /// HTTP/2 with prior knowledge on this plain listener.
    pub h2c: bool,
}

struct Client {
    stream: Stream,
    /// Redirect every request to `https://` on this port.
    redirect_https: Option<u16>,
    /// Its key in the worker's connection table (idle tracking, caps).
    conn: usize,
    /// Bytes read from the client and not consumed yet (may hold pipelined requests).
    buf: BytesMut,
    /// The client's address as text (for `X-Forwarded-For`, balancing
    /// keys), made once per connection.
    peer_ip: std::rc::Rc<str>,
    peer: std::net::SocketAddr,
    /// Requests read on this connection.
    served: u64,
    /// The response under way (`reply.rs`: framing, keep-alive, the hit buffer).
    reply: reply::Reply,
    /// `100 Continue` was already sent for the current request.
    sent_continue: bool,
    /// The rate limit's answer while this request is planned again.
    limit_verdict: Option<crate::route::rate_limit::Outcome>,
    /// The HTTP/2 stream this request came on (`None`: HTTP/1, on `stream`).
    h2: Option<Box<http2::stream::H2Stream>>,
    /// The current request's `X-Request-Id` (empty: request ids are off);
    /// boxed, so an idle connection's future stays small.
    request_id: Box<request_id::RequestId>,
    /// The connection's TLS version and SNI, for the access log.
    tls: Option<std::rc::Rc<crate::access_log::TlsInfo>>,
    /// The current request's access-log record (kept for reuse; `None`
    /// until the log is on for a request of this connection).
    log: Option<Box<crate::access_log::Record>>,
    /// Its receive on the worker's provided-buffer ring, armed across reads.
    armed: crate::worker::recv_ring::Armed,
}

impl Client {
    /// The request of one HTTP/2 stream, its head (gateway form) in `buf`.
    fn for_h2(
        connection: &http2::Connection,
        peer_ip: std::rc::Rc<str>,
        buf: BytesMut,
        stream: http2::stream::H2Stream,
    ) -> Client {
        Client {
            stream: Stream::Detached,
            redirect_https: connection.redirect_https,
            conn: connection.conn,
            buf,
            peer_ip,
            peer: connection.peer,
            served: 0,
            reply: Default::default(),
            sent_continue: false,
            limit_verdict: None,
            h2: Some(Box::new(stream)),
            request_id: Default::default(),
            tls: connection.tls_info.clone(),
            log: None,
            armed: Default::default(),
        }
    }

    /// The request came over TLS.
    fn is_https(&self) -> bool {
        match &self.h2 {
            Some(h2) => h2.tls,
            None => self.stream.is_tls(),
        }
    }

    /// Reads more of the request into the buffer: from the socket (HTTP/1),
    /// or the stream's next DATA in the same framing (HTTP/2). `bulk`: more
    /// than [`BULK_FROM`] bytes of body are on their way, so an HTTP/1
    /// connection's receive on the worker's ring is ended first (it would
    /// take them `client_buffer_size` bytes and one completion at a time)
    /// and the socket read into the connection's buffer, `reserve` bytes at
    /// a time; waiting for the next request arms it again.
    async fn read_request_bytes(
        &mut self,
        ctx: &WorkerCtx,
        reserve: usize,
        limit: std::time::Duration,
        bulk: bool,
    ) -> io::Read {
        match self.h2.as_deref_mut() {
            // Boxed: an HTTP/1 connection's future stays as small as before.
            Some(h2) => Box::pin(h2.read(&mut self.buf, limit)).await,
            None => {
                let ring = match ctx.recv_ring.as_ref() {
                    Some(ring) if bulk => {
                        if self.armed.is_armed() {
                            let had = self.buf.len();
                            // Boxed: once a body, and an idle connection's future stays small.
                            Box::pin(ring.disarm(&mut self.armed, &mut self.buf)).await;
                            if self.buf.len() > had {
                                return io::Read::Data(self.buf.len() - had);
                            }
                        }
                        None
                    }
                    Some(ring) => Some((ring, &mut self.armed)),
                    None => None,
                };
                let empty = || ctx.stats.count(Counter::RecvBuffersEmpty);
                self.stream
                    .read_client(&mut self.buf, reserve, limit, ring, empty)
                    .await
            }
        }
    }
}

enum Next {
    KeepAlive,
    Close,
}

/// Body bytes still expected (or, for a chunked body, already come) from
/// which a request body is read from the socket directly rather than
/// through the worker's ring of small buffers.
const BULK_FROM: u64 = 16 * 1024;

/// Serves one client connection until it closes, fails, times out, the
/// worker drains or it is closed while idle to make room at a cap.
/// What to do with a parsed request.
enum Plan {
    Forward(Forward),
    /// Answer locally with this status (no route, body too large).
    /// Answer the gateway's own error (its status from `ErrorKind::status`).
    Refuse {
        error: ErrorKind,
        request: Answered,
    },
    /// Answer from the cache.
    Hit {
        request: Answered,
        hit: cache::HitPlan,
    },
    /// `PURGE` of a URL (the URL parts it may be stored under) from an
    /// allowed client (`allowed: false`: refuse).
    Purge {
        request: Answered,
        urls: Vec<Box<[u8]>>,
        allowed: bool,
    },
    /// A route's prefix without its trailing slash: redirect to add it.
    Redirect {
        request: Answered,
        status: u16,
        location: String,
    },
    /// Read more of the body before planning again (request buffering).
    ReadBody(BodyWait),
    /// Wait for the cluster's answer to the route's rate limit, then plan
    /// again with it.
    AwaitLimit(std::sync::Arc<crate::route::rate_limit::Asked>),
    /// An AI route's request, its body read whole (`ai.rs`).
    Ai(Box<ai::AiCall>),
    /// Over the route's rate limit: 429, the next request admitted after
    /// `retry_after`.
    Limited {
        request: Answered,
        retry_after: std::time::Duration,
        /// `RateLimit-Policy`'s quota and window (seconds).
        policy: (u64, u64),
    },
}

/// A request answered without the upstream: what is needed to finish it.
#[derive(Clone)]
struct Answered {
    head_len: usize,
    body: BodyFraming,
    keep_alive: bool,
    head_only: bool,
    version: Version,
}

struct Forward {
    head_len: usize,
    method: Method,
    version: Version,
    body: BodyFraming,
    keep_alive: bool,
    expect_continue: bool,
    server: usize,
    /// The route and group, and what the balancer hashed, for retries elsewhere.
    route: usize,
    group: usize,
    balance_key: crate::upstream::balancer::RequestKey,
    /// This attempt may turn a configured status into a retry.
    may_retry_status: bool,
    /// `Set-Cookie` line pinning the client to the server (sticky groups).
    pin_cookie: Option<Vec<u8>>,
    /// The route's upstream timeouts.
    timeouts: crate::config::UpstreamTimeouts,
    /// What the cache does with the response, on caching routes.
    cache: Option<Box<cache::CacheWork>>,
    /// The protocol (in the route's `upgrade` list) the request asks to switch to.
    upgrade: Option<usize>,
}

/// The status of a redirect: 308 keeps the method and body; browsers follow 301 for GET as nginx sends it.
fn redirect_status(method: Method) -> u16 {
    if matches!(method, Method::Get | Method::Head) {
        301
    } else {
        308
    }
}

/// How far an exchange got, to decide what a failure still allows.
#[derive(Default)]
struct Progress {
    /// The whole request body was read from the client.
    request_consumed: bool,
    /// Response bytes were sent to the client: no error status is possible any more.
    response_started: bool,
    /// Bytes of a streamed request body were taken from the client: the
    /// request cannot be sent again.
    body_streamed: bool,
}

/// This request's part in coalescing: while it holds these, concurrent
/// misses for its key (on this worker, and on the others) wait for it.
#[derive(Default)]
struct Coalescing {
    leader: Option<crate::cache::coalesce::LeaderGuard>,
    claim: Option<cache::ClaimGuard>,
}

impl Coalescing {
    /// Lets the waiting requests go: the response is stored, or will not be.
    fn release(&mut self) {
        self.leader = None;
        self.claim = None;
    }
}

fn log_failure(ctx: &WorkerCtx, error: &ProxyError) {
    match error.side {
        Side::Upstream => {
            ctx.stats.count(Counter::UpstreamErrors);
            tracing::warn!(worker = ctx.index, stage = error.stage.as_str(), error = %error, "upstream request failed");
        }
        _ => {
            ctx.stats.count(Counter::ClientErrors);
            tracing::debug!(worker = ctx.index, stage = error.stage.as_str(), error = %error, "request failed");
        }
    }
}

impl Plan {
    /// The request's version and whether it is a HEAD: what its answer,
    /// whichever it is, must respect.
    fn answers(&self) -> (Version, bool) {
        let request = match self {
            Plan::Forward(f) => return (f.version, f.method == Method::Head),
            Plan::Ai(call) => &call.request,
            Plan::Refuse { request, .. }
            | Plan::Limited { request, .. }
            | Plan::Hit { request, .. }
            | Plan::Purge { request, .. }
            | Plan::Redirect { request, .. } => request,
            Plan::ReadBody(_) | Plan::AwaitLimit(_) => return (Version::Http11, false),
        };
        (request.version, request.head_only)
    }
}

impl Forward {
    fn answered(&self) -> Answered {
        Answered {
            head_len: self.head_len,
            body: self.body,
            keep_alive: self.keep_alive,
            head_only: self.method == Method::Head,
            version: self.version,
        }
    }
}

#[cfg(test)]
mod tests;
