//! The admin API, on its own listener, served by worker 0.
//!
//! - `GET /` (or `/status`): the status page, one self-contained HTML file
//!   (`status.html`) that polls `/stats` from the browser; served without
//!   the token (it holds no data), which its script sends with each poll
//! - `GET /health`: 200 when every worker answers over the bus, else 503
//! - `GET /stats`: JSON counters per worker and totals
//! - `GET /metrics`: the same, in Prometheus text format, labelled by worker
//! - `POST /cache/purge`: invalidate by `url`, `prefix` (+`host`), `regex`
//!   (+`host`), `tag` or `all`, optionally `"soft": true`; answers once
//!   every worker applied it
//! - `POST /config/reload`: re-read the config file and apply it on every
//!   worker (`crate::reload`); answers once every worker runs it
//!
//! With `[admin] token` set, every request needs `Authorization: Bearer <token>`.
//! Bad requests get 400 with a JSON body naming the problem.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use monoio::net::{TcpListener, TcpStream};
use serde_json::{json, Map, Value};

mod metrics;

use metrics::prometheus;

use crate::bus::{BusError, Invalidation, Message, StatsRequest};
use crate::cache::key;
use crate::cache::shard::Removal;
use crate::config::Config;
use crate::http::request::{header_slots, parse_request};
use crate::http::target;
use crate::http::BodyFraming;
use crate::proxy::io::{read_some, write_all, Read};
use crate::worker::context::WorkerCtx;
use crate::worker::signal::{race, CatchUnwind, Either};

/// Largest admin request body.
const MAX_BODY: u64 = 64 * 1024;
/// How long `/health`, `/stats` and `/metrics` wait for the workers.
const STATS_TIMEOUT: Duration = Duration::from_secs(2);

/// Accepts admin connections until the worker drains.
pub async fn serve(
    ctx: Rc<WorkerCtx>,
    listener: TcpListener,
    reloader: Arc<crate::reload::Reloader>,
) {
    loop {
        let accepted = match race(listener.accept(), ctx.drain_started()).await {
            Either::Left(accepted) => accepted,
            Either::Right(()) => return,
        };
        if let Ok((stream, _)) = accepted {
            let ctx = ctx.clone();
            let reloader = reloader.clone();
            monoio::spawn(async move {
                if CatchUnwind::new(connection(ctx, stream, reloader))
                    .await
                    .is_err()
                {
                    tracing::error!("admin connection panicked");
                }
            });
        }
    }
}

struct Request {
    method: String,
    path: String,
    authorization: Option<String>,
    body: Vec<u8>,
    close: bool,
}

struct Reply {
    status: u16,
    content_type: &'static str,
    body: String,
}

fn json_reply(status: u16, value: Value) -> Reply {
    Reply {
        status,
        content_type: "application/json",
        body: value.to_string() + "\n",
    }
}

fn error(status: u16, message: impl Into<String>) -> Reply {
    json_reply(status, json!({ "error": message.into() }))
}

async fn connection(
    ctx: Rc<WorkerCtx>,
    mut stream: TcpStream,
    reloader: Arc<crate::reload::Reloader>,
) {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        let request = match read_request(&ctx, &mut stream, &mut buf).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(reply) => {
                let _ = send(&ctx, &mut stream, reply, true).await;
                return;
            }
        };
        let close = request.close;
        let reply = handle(&ctx.current(), request, &reloader).await;
        if !send(&ctx, &mut stream, reply, close).await || close {
            return;
        }
    }
}

async fn read_request(
    ctx: &WorkerCtx,
    stream: &mut TcpStream,
    buf: &mut BytesMut,
) -> Result<Option<Request>, Reply> {
    let timeouts = &ctx.config.timeouts;
    loop {
        let parsed = {
            let mut slots = header_slots::<64>();
            match parse_request(buf, &mut slots, 16 * 1024) {
                Ok(Some(head)) => {
                    let length = match head.body {
                        BodyFraming::None => 0,
                        BodyFraming::Length(n) if n <= MAX_BODY => n as usize,
                        BodyFraming::Length(_) => return Err(error(413, "body over 64 KiB")),
                        _ => return Err(error(411, "send the body with Content-Length")),
                    };
                    Some((
                        head.head_len,
                        length,
                        head.method_name.to_string(),
                        head.path.to_string(),
                        head.header("authorization")
                            .map(|v| String::from_utf8_lossy(v).trim().to_string()),
                        !head.keep_alive,
                    ))
                }
                Ok(None) => None,
                Err(e) => return Err(error(e.status(), format!("bad request: {e}"))),
            }
        };
        if let Some((head_len, length, method, path, authorization, close)) = parsed {
            while buf.len() < head_len + length {
                match read_some(stream, buf, 4096, timeouts.client_body).await {
                    Read::Data(_) => {}
                    _ => return Ok(None),
                }
            }
            let body = buf[head_len..head_len + length].to_vec();
            buf.advance(head_len + length);
            return Ok(Some(Request {
                method,
                path,
                authorization,
                body,
                close,
            }));
        }
        let limit = if buf.is_empty() {
            timeouts.keepalive
        } else {
            timeouts.client_header
        };
        match read_some(stream, buf, 4096, limit).await {
            Read::Data(_) => {}
            _ => return Ok(None),
        }
    }
}

async fn send(ctx: &WorkerCtx, stream: &mut TcpStream, reply: Reply, close: bool) -> bool {
    let reason = crate::proxy::head::reason(reply.status);
    let reason = if reason == "Error" {
        match reply.status {
            200 => "OK",
            401 => "Unauthorized",
            405 => "Method Not Allowed",
            411 => "Length Required",
            _ => reason,
        }
    } else {
        reason
    };
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n",
        reply.status,
        reply.content_type,
        reply.body.len()
    );
    if reply.status == 401 {
        out.push_str("WWW-Authenticate: Bearer\r\n");
    }
    if close {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    out.push_str(&reply.body);
    write_all(stream, out.into_bytes(), ctx.config.timeouts.client_send)
        .await
        .is_ok()
}

/// The status page.
const STATUS_PAGE: &str = include_str!("status.html");

async fn handle(ctx: &WorkerCtx, request: Request, reloader: &crate::reload::Reloader) -> Reply {
    if matches!(request.path.as_str(), "/" | "/status") {
        return match request.method.as_str() {
            "GET" => Reply {
                status: 200,
                content_type: "text/html; charset=utf-8",
                body: STATUS_PAGE.to_string(),
            },
            _ => error(405, "use GET"),
        };
    }
    if let Some(admin) = &ctx.config.admin {
        if !admin.authorizes(request.authorization.as_deref()) {
            return error(401, "missing or wrong bearer token");
        }
    }
    match (request.method.as_str(), request.path.as_str()) {
        ("GET", "/health") => health(ctx).await,
        ("GET", "/stats") => match collect(ctx).await {
            Ok(workers) => json_reply(
                200,
                json!({
                    "workers": workers,
                    "totals": totals(&workers),
                    "process": {
                        "pid": std::process::id(),
                        "version": env!("CARGO_PKG_VERSION"),
                        "generation": reloader.generation(),
                    },
                    "cluster": ctx.cluster.as_ref().map(|c| c.snapshot()),
                }),
            ),
            Err(e) => error(503, e.to_string()),
        },
        ("GET", "/metrics") => match collect(ctx).await {
            Ok(workers) => Reply {
                status: 200,
                content_type: "text/plain; version=0.0.4",
                body: prometheus(&workers)
                    + &metrics::ai_series(&workers)
                    + &ctx
                        .cluster
                        .as_ref()
                        .map_or(String::new(), |c| metrics::cluster_series(&c.snapshot())),
            },
            Err(e) => error(503, e.to_string()),
        },
        ("POST", "/cache/purge") => purge(ctx, &request.body).await,
        ("POST", "/config/reload") => reload(reloader).await,
        (_, "/health" | "/stats" | "/metrics") => error(405, "use GET"),
        (_, "/cache/purge" | "/config/reload") => error(405, "use POST"),
        (_, path) => error(
            404,
            format!(
                "no admin endpoint {path}; try /, /health, /stats, /metrics, POST /cache/purge, POST /config/reload"
            ),
        ),
    }
}

/// `POST /config/reload`: 200 once every worker runs the new generation;
/// 504 naming the workers that did not in time; 422 for a file refused
/// (its file, key and reason); 409 while another reload runs.
async fn reload(reloader: &crate::reload::Reloader) -> Reply {
    use crate::reload::ReloadError;
    match reloader.begin() {
        Ok(pending) => {
            let done = pending.wait().await;
            let status = if done.timed_out.is_empty() { 200 } else { 504 };
            json_reply(
                status,
                json!({
                    "generation": done.generation,
                    "workers": done.workers,
                    "timed_out": done.timed_out,
                }),
            )
        }
        Err(ReloadError::Config(e)) => json_reply(
            422,
            json!({
                "error": e.to_string(),
                "file": e.file.as_ref().map(|f| f.display().to_string()),
                "key": e.key,
                "reason": e.reason,
            }),
        ),
        Err(e @ ReloadError::Busy) => error(409, e.to_string()),
        Err(e @ ReloadError::NoFile) => error(409, e.to_string()),
        Err(e @ ReloadError::Bus(_)) => error(503, e.to_string()),
    }
}

async fn health(ctx: &WorkerCtx) -> Reply {
    let workers = ctx.bus.workers();
    match collect(ctx).await {
        Ok(replies) if replies.len() == workers => {
            json_reply(200, json!({ "status": "ready", "workers": workers }))
        }
        Ok(replies) => json_reply(
            503,
            json!({ "status": "not ready", "workers": workers, "responding": replies.len() }),
        ),
        Err(e) => json_reply(
            503,
            json!({ "status": "not ready", "workers": workers, "error": e.to_string() }),
        ),
    }
}

/// Every worker's counters, sorted by worker.
async fn collect(ctx: &WorkerCtx) -> Result<Vec<Value>, BusError> {
    let request = Arc::new(StatsRequest {
        replies: std::sync::Mutex::new(Vec::new()),
    });
    ctx.bus
        .broadcast_and_wait(Message::Stats(request.clone()), STATS_TIMEOUT)
        .await?;
    let mut replies =
        std::mem::take(&mut *request.replies.lock().unwrap_or_else(|e| e.into_inner()));
    replies.sort_by_key(|v| v["worker"].as_u64());
    Ok(replies)
}

/// Sums every numeric field across workers (gauges included: totals of gauges are totals too).
fn totals(workers: &[Value]) -> Value {
    fn add(into: &mut Map<String, Value>, from: &Map<String, Value>) {
        for (k, v) in from {
            if k == "worker" || k == "generation" {
                continue;
            }
            match v {
                Value::Number(n) => {
                    let sum =
                        into.get(k).and_then(Value::as_u64).unwrap_or(0) + n.as_u64().unwrap_or(0);
                    into.insert(k.clone(), json!(sum));
                }
                Value::Object(inner) => {
                    let entry = into.entry(k.clone()).or_insert_with(|| json!({}));
                    if let Value::Object(target) = entry {
                        add(target, inner);
                    }
                }
                _ => {}
            }
        }
    }
    let mut out = Map::new();
    for w in workers {
        if let Value::Object(map) = w {
            add(&mut out, map);
        }
    }
    Value::Object(out)
}

/// Turns a purge request body into an invalidation; URLs are read in the
/// canonical form `config` gives requests.
pub fn parse_purge(config: &Config, body: &[u8]) -> Result<(Invalidation, Removal), String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    let Value::Object(map) = value else {
        return Err("body must be a JSON object".into());
    };
    for key in map.keys() {
        if ![
            "url", "prefix", "host", "regex", "tag", "all", "soft", "scope",
        ]
        .contains(&key.as_str())
        {
            return Err(format!(
                "unknown field `{key}` (expected url, prefix, host, regex, tag, all, soft, scope)"
            ));
        }
    }
    let text = |k: &str| -> Result<Option<String>, String> {
        match map.get(k) {
            None => Ok(None),
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
            Some(_) => Err(format!("`{k}` must be a non-empty string")),
        }
    };
    let removal = match map.get("soft") {
        None | Some(Value::Bool(false)) => Removal::Hard,
        Some(Value::Bool(true)) => Removal::Soft,
        Some(_) => return Err("`soft` must be true or false".into()),
    };
    let host = text("host")?;
    let kinds: Vec<&str> = ["url", "prefix", "regex", "tag", "all"]
        .into_iter()
        .filter(|k| map.contains_key(*k))
        .collect();
    if kinds.len() != 1 {
        return Err("name exactly one of url, prefix, regex, tag or all".into());
    }
    let what = match kinds[0] {
        "url" => {
            if host.is_some() {
                return Err("`host` goes with prefix or regex; a url names its own host".into());
            }
            Invalidation::Urls(Arc::new(url_keys(
                config,
                &text("url")?.unwrap_or_default(),
            )?))
        }
        "prefix" => {
            let prefix = text("prefix")?.unwrap_or_default();
            if !prefix.starts_with('/') {
                return Err("`prefix` is a path and must start with `/`".into());
            }
            Invalidation::Prefix {
                host: host.map(Into::into),
                prefix: prefix.into(),
            }
        }
        "regex" => {
            let regex = regex::Regex::new(&text("regex")?.unwrap_or_default())
                .map_err(|e| format!("bad regex: {e}"))?;
            Invalidation::Regex {
                host: host.map(Into::into),
                regex: Arc::new(regex),
            }
        }
        "tag" => Invalidation::Tag(text("tag")?.unwrap_or_default().into()),
        _ => match map.get("all") {
            Some(Value::Bool(true)) => Invalidation::All,
            _ => return Err("`all` must be true".into()),
        },
    };
    Ok((what, removal))
}

/// The URL parts an absolute URL (`http://host[:port]/path?query`) may be
/// stored under: its host and path in canonical form, its query as each
/// caching route keys it.
pub fn url_keys(config: &Config, url: &str) -> Result<Vec<Box<[u8]>>, String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("`{url}` is not an absolute http(s) URL"))?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], &rest[i..]),
        Some(_) => return Err(format!("`{url}` has a query but no path")),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(format!("`{url}` has no host"));
    }
    let (mut host_scratch, mut path_scratch) = (String::new(), String::new());
    let (authority, _) = target::normalize_authority(authority, &mut host_scratch)
        .map_err(|_| format!("`{url}` has an invalid host"))?;
    let (_, path_and_query) = target::normalize_target(path, config.paths, &mut path_scratch)
        .map_err(|e| format!("`{url}`: {e}"))?;
    Ok(key::url_keys(
        authority,
        path_and_query,
        config.routes.iter().filter_map(|r| r.cache.as_ref()),
    ))
}

/// How far a purge must reach before it is answered: `"node"` (this
/// node's workers, the default) or `"cluster"` (every live node).
fn parse_scope(body: &[u8]) -> Result<bool, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    match value.get("scope") {
        None => Ok(false),
        Some(Value::String(s)) if s == "node" => Ok(false),
        Some(Value::String(s)) if s == "cluster" => Ok(true),
        Some(_) => Err("`scope` is \"node\" or \"cluster\"".into()),
    }
}

async fn purge(ctx: &WorkerCtx, body: &[u8]) -> Reply {
    let (what, removal) = match parse_purge(&ctx.config, body) {
        Ok(p) => p,
        Err(e) => return error(400, e),
    };
    match parse_scope(body) {
        Err(e) => return error(400, e),
        Ok(true) => return purge_cluster(ctx, what, removal).await,
        Ok(false) => {}
    }
    match ctx.invalidate(what, removal).await {
        Ok(b) => json_reply(
            200,
            json!({ "workers": b.workers, "acked": b.acked, "removed": b.removed }),
        ),
        Err(BusError::Timeout { workers, acked, .. }) => json_reply(
            504,
            json!({ "error": "not every worker acknowledged in time", "workers": workers, "acked": acked }),
        ),
        Err(e) => error(503, e.to_string()),
    }
}

/// A purge every live node of the cluster must apply before the answer:
/// 200 listing them, 504 naming those that had not in time, 503 when
/// Redis cannot be reached (applied on this node all the same).
async fn purge_cluster(ctx: &WorkerCtx, what: Invalidation, removal: Removal) -> Reply {
    let Some(cluster) = &ctx.cluster else {
        return error(400, "`scope: cluster` needs a [cluster] section");
    };
    let limit = ctx
        .config
        .cluster
        .as_ref()
        .map_or(Duration::from_secs(1), |c| c.timeout)
        * 5;
    let confirmation = cluster.publish_confirmed(&what, removal, limit);
    let local = ctx
        .bus
        .broadcast_and_wait(
            Message::Invalidate { what, removal },
            ctx.config.cache.invalidation_timeout,
        )
        .await;
    let answered = monoio::time::timeout(limit + Duration::from_secs(1), confirmation.done.all())
        .await
        .is_ok();
    let confirmed = confirmation
        .answer()
        .filter(|_| answered)
        .unwrap_or_default();
    let removed = local.as_ref().map_or(0, |b| b.removed);
    if let Some(e) = confirmed.error {
        return json_reply(
            503,
            json!({ "error": format!("applied on this node only: {e}"), "removed": removed }),
        );
    }
    let nodes: Vec<Value> = confirmed
        .nodes
        .iter()
        .map(|(node, applied)| json!({ "node": node, "applied": applied }))
        .collect();
    let missing: Vec<&str> = confirmed
        .nodes
        .iter()
        .filter(|n| !n.1)
        .map(|n| n.0.as_str())
        .collect();
    let status = if answered && missing.is_empty() {
        200
    } else {
        504
    };
    json_reply(
        status,
        json!({ "nodes": nodes, "not_applied": missing, "removed_here": removed }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::quick(
            "127.0.0.1:0".parse().unwrap(),
            vec!["127.0.0.1:9".parse().unwrap()],
        )
    }

    fn parse_purge(body: &[u8]) -> Result<(Invalidation, Removal), String> {
        super::parse_purge(&config(), body)
    }

    #[test]
    fn purge_bodies_name_one_kind() {
        assert!(matches!(
            parse_purge(br#"{"url":"http://shop.test/a?b=1"}"#),
            Ok((Invalidation::Urls(_), Removal::Hard))
        ));
        assert!(matches!(
            parse_purge(br#"{"prefix":"/api/","host":"shop.test","soft":true}"#),
            Ok((Invalidation::Prefix { .. }, Removal::Soft))
        ));
        assert!(matches!(
            parse_purge(br#"{"regex":"^/p/[0-9]+$"}"#),
            Ok((Invalidation::Regex { .. }, _))
        ));
        assert!(matches!(
            parse_purge(br#"{"tag":"product-1"}"#),
            Ok((Invalidation::Tag(_), _))
        ));
        assert!(matches!(
            parse_purge(br#"{"all":true}"#),
            Ok((Invalidation::All, _))
        ));
    }

    #[test]
    fn bad_purge_bodies_say_why() {
        assert!(parse_purge(b"not json").unwrap_err().contains("JSON"));
        assert!(parse_purge(br#"{"url":"http://a/","tag":"x"}"#)
            .unwrap_err()
            .contains("exactly one"));
        assert!(parse_purge(br#"{"colour":"red"}"#)
            .unwrap_err()
            .contains("unknown field `colour`"));
        assert!(parse_purge(br#"{"regex":"("}"#)
            .unwrap_err()
            .contains("bad regex"));
        assert!(parse_purge(br#"{"prefix":"api"}"#)
            .unwrap_err()
            .contains("start with"));
        assert!(parse_purge(br#"{"url":"/relative"}"#)
            .unwrap_err()
            .contains("absolute"));
    }

    #[test]
    fn url_keys_match_request_keys() {
        let mut from_request = Vec::new();
        key::primary_key(
            &mut from_request,
            false,
            "shop.test",
            "/a?b=1",
            &Default::default(),
            &[],
        );
        assert_eq!(
            url_keys(&config(), "http://Shop.Test:80/%61?b=1").unwrap()[0].as_ref(),
            from_request.as_slice()
        );
        assert!(url_keys(&config(), "http://h/a%2fb").is_err());
    }

    #[test]
    fn metrics_are_labelled_by_worker() {
        let text = prometheus(&[
            json!({"worker": 0, "requests": 3, "cache": {"hits": 2}}),
            json!({"worker": 1, "requests": 4}),
        ]);
        assert!(text.contains("# TYPE ringgate_requests_total counter\n"));
        assert!(text.contains("ringgate_requests_total{worker=\"0\"} 3\n"));
        assert!(text.contains("ringgate_requests_total{worker=\"1\"} 4\n"));
        assert!(text.contains("ringgate_cache_hits_total{worker=\"0\"} 2\n"));
    }
}
