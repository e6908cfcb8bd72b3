//! The background revalidation of stale-while-revalidate: a stale hit is
//! answered at once and [`plan`]s one refresh per entry, which [`run`]
//! sends as a GET with the stored validators, carrying what the triggering
//! request sent upstream (its identity, its header edits), and stores the
//! answer (or freshens the entry on a 304).

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use httparse::Header;

use super::cache::{field, insert, parse_forwarded, policy, store_limit, values, Validators};
use super::head;
use crate::cache::control::RequestDirectives;
use crate::cache::entry::{response_facts, storable_fields, ExchangeTimes, Stored};
use crate::cache::freshness::{may_store, RequestFacts};
use crate::config::RouteConfig;
use crate::http::headers::name_is;
use crate::http::request::{header_slots, RequestHead};
use crate::http::Method;
use crate::worker::context::WorkerCtx;

/// A background refresh for stale-while-revalidate.
pub struct Refresh {
    pub route: usize,
    pub key: Box<[u8]>,
    pub request_head: Bytes,
    pub upstream_head: Vec<u8>,
    pub server: usize,
    pub stored: Arc<Stored>,
}

/// A background refresh sends what the triggering request sent upstream
/// (its identity, its header edits), as a GET carrying the stored validators.
#[allow(clippy::too_many_arguments)]
pub(super) fn plan(
    ctx: &WorkerCtx,
    route_index: usize,
    route: &RouteConfig,
    req: &RequestHead<'_>,
    upstream: &head::UpstreamRequest<'_>,
    key: &[u8],
    fields: &[Header<'_>],
    stored: &Arc<Stored>,
) -> Refresh {
    stored.refreshing.store(true, Ordering::Release);
    let mut upstreams = ctx.upstreams.borrow_mut();
    // A background refresh goes where the policy would send this request.
    let balance_key =
        upstreams.request_key(route.upstream, upstream.client_ip, req.path, req.headers);
    let server = upstreams.pick(route.upstream, balance_key);
    let mut upstream_head = Vec::with_capacity(512);
    let validators = Validators {
        etag: stored.etag.clone(),
        last_modified: field(stored, "last-modified").map(<[u8]>::to_vec),
    };
    let refresh = head::UpstreamRequest {
        validators: Some(&validators),
        method_override: Some("GET"),
        upgrade: None,
        // Its own exchange, not the client's.
        request_id: None,
        ..*upstream
    };
    // The refresh is for the whole response, whatever part the client asked for.
    let whole: Vec<Header<'_>> = fields
        .iter()
        .filter(|h| !name_is(h.name, "range") && !name_is(h.name, "if-range"))
        .copied()
        .collect();
    head::write_request_head(&mut upstream_head, req, &refresh, &whole);
    let mut request_head = Vec::with_capacity(upstream_head.len());
    head::write_request_head(&mut request_head, req, upstream, fields);
    Refresh {
        route: route_index,
        key: key.into(),
        request_head: Bytes::from(request_head),
        upstream_head,
        server,
        stored: stored.clone(),
    }
}

/// Background revalidation for stale-while-revalidate: one at a time per
/// entry, result stored (or the entry freshened) when it arrives.
pub async fn run(ctx: Rc<WorkerCtx>, job: Refresh) {
    let Some(cache) = ctx.cache.as_ref() else {
        return;
    };
    // Coalesce with any foreground fetch of the same key.
    let _leader = match cache.coalescer.join(&job.key) {
        crate::cache::coalesce::Join::Leader(guard) => guard,
        crate::cache::coalesce::Join::Follower(_) => {
            job.stored.refreshing.store(false, Ordering::Release);
            return;
        }
    };
    let request_time = SystemTime::now();
    let policy = policy(&ctx, job.route).clone();
    let limit = store_limit(&ctx, &policy);
    let fetched = crate::upstream::h1::fetch_whole(
        &ctx,
        crate::upstream::h1::WholeRequest {
            server: job.server,
            head: job.upstream_head,
            method: Method::Get,
            limit,
            truncate: false,
            pooled: true,
        },
    )
    .await;
    job.stored.refreshing.store(false, Ordering::Release);
    let fetched = match fetched {
        Ok(f) => f,
        Err(e) => {
            tracing::debug!(worker = ctx.index, error = %e, "background refresh failed");
            return;
        }
    };
    let mut slots = header_slots::<256>();
    let Ok(Some(resp)) = crate::http::response::parse_response(
        &fetched.head,
        &mut slots,
        fetched.head.len(),
        Method::Get,
    ) else {
        return;
    };
    let times = ExchangeTimes::now(request_time);
    let stored = if resp.status == 304 {
        cache.count(crate::cache::CacheEvent::Revalidation);
        job.stored.freshen(resp.headers, times, &policy, ctx.via())
    } else {
        let facts = response_facts(
            resp.status,
            resp.headers.iter().map(|h| (h.name, h.value)),
            &policy.targeted_fields,
        );
        let Some(req_facts) = parse_forwarded(&job.request_head, |headers| RequestFacts {
            authorization: headers.iter().any(|h| name_is(h.name, "authorization")),
            cc: RequestDirectives::parse(
                values(headers, "cache-control"),
                values(headers, "pragma"),
            ),
        }) else {
            return;
        };
        // Asked without a range, a 206 is not the whole: never stored as it.
        if resp.status == 206 || may_store(&req_facts, &facts, &policy).is_err() {
            cache.shard.borrow_mut().remove_uri(&job.key);
            return;
        }
        Stored::build(
            resp.status,
            resp.reason,
            storable_fields(resp.headers, &facts.cc),
            fetched.body,
            times,
            &policy,
            ctx.via(),
        )
    };
    // Not written to the shared tier: a refresh began on no request's mark.
    insert(&ctx, &job.key, &job.request_head, stored, None);
}
