//! Active health checks: one worker probes every server of a group over
//! HTTP and broadcasts each change of verdict to all workers over the bus,
//! so the probes run once, not once per core, and every core routes around
//! a server that is down.

use std::rc::Rc;
use std::time::Duration;

use crate::bus::Message;
use crate::config::HealthCheck;
use crate::http::Method;
use crate::worker::context::WorkerCtx;
use crate::worker::signal::{race, Either};

/// Most of a probe's response body looked into.
const MAX_PROBE_BODY: u64 = 64 * 1024;

/// Starts the probe loops of every group this worker checks.
pub fn start(ctx: &Rc<WorkerCtx>) {
    for group in 0..ctx.config.upstreams.len() {
        let members = ctx.upstreams.borrow().members(group).to_vec();
        watch(ctx, group, &members);
    }
}

/// Starts probing `servers` of `group` if this worker checks that group and
/// no probe loop runs for them yet (service discovery adds servers later).
pub fn watch(ctx: &Rc<WorkerCtx>, group: usize, servers: &[usize]) {
    let Some(check) = &ctx.config.upstreams[group].health else {
        return;
    };
    if check.worker % ctx.bus.workers().max(1) != ctx.index {
        return;
    }
    for &server in servers {
        let upstreams = ctx.upstreams.borrow();
        let running = upstreams.probing(server);
        if !running.replace(true) {
            monoio::spawn(probe_loop(ctx.clone(), check.clone(), group, server));
        }
    }
}

async fn probe_loop(ctx: Rc<WorkerCtx>, check: HealthCheck, group: usize, server: usize) {
    let addr = ctx.upstreams.borrow().addr(server);
    // A reload carries the verdict over to the next generation's probe.
    let mut healthy = !ctx.upstreams.borrow().is_down(server);
    let (mut passes, mut failures) = (0u32, 0u32);
    let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ (server as u64).wrapping_mul(0xA24B_AED4_963E_E407);
    loop {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let jitter = if check.jitter.is_zero() {
            Duration::ZERO
        } else {
            Duration::from_nanos(seed % check.jitter.as_nanos().max(1) as u64)
        };
        if let Either::Right(()) = race(
            monoio::time::sleep(check.interval + jitter),
            ctx.drain_started(),
        )
        .await
        {
            return;
        }
        // A server that discovery removed is no longer probed; a reload
        // starts the next generation's probes.
        if ctx.superseded() {
            return;
        }
        if !ctx.upstreams.borrow().members(group).contains(&server) {
            ctx.upstreams.borrow().probing(server).set(false);
            return;
        }
        let ok = matches!(
            monoio::time::timeout(check.timeout, probe(&ctx, &check, server)).await,
            Ok(true)
        );
        if ok {
            passes += 1;
            failures = 0;
        } else {
            failures += 1;
            passes = 0;
        }
        let verdict = if healthy && failures >= check.unhealthy_threshold {
            Some(false)
        } else if !healthy && passes >= check.healthy_threshold {
            Some(true)
        } else {
            None
        };
        if let Some(now_healthy) = verdict {
            healthy = now_healthy;
            if now_healthy {
                tracing::info!(upstream = %addr, "health check: server is up");
            } else {
                tracing::warn!(upstream = %addr, "health check: server is down");
            }
            let message = Message::Health {
                group: ctx.config.upstreams[group].name.as_str().into(),
                server: addr,
                healthy,
            };
            if let Err(e) = ctx.bus.broadcast(&message, None) {
                tracing::warn!(upstream = %addr, error = %e, "could not tell every worker about a health change");
            }
        }
    }
}

/// One probe, on a connection of its own, through the upstream client
/// (`super::h1`): true when the server answered with an expected status
/// (and, if asked, a body holding the expected text in its first 64 KiB).
async fn probe(ctx: &WorkerCtx, check: &HealthCheck, server: usize) -> bool {
    let addr = ctx.upstreams.borrow().addr(server);
    let host = check.host.clone().unwrap_or_else(|| addr.to_string());
    let head = format!(
        "{} {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ringgate-health-check\r\nConnection: close\r\n\r\n",
        check.method, check.path
    );
    let request = super::h1::WholeRequest {
        server,
        head: head.into_bytes(),
        method: Method::from_bytes(check.method.as_bytes()),
        limit: MAX_PROBE_BODY,
        truncate: true,
        pooled: false,
    };
    let Ok(response) = super::h1::fetch_whole(ctx, request).await else {
        return false;
    };
    let status = response.status;
    let status_ok = if check.expect_status.is_empty() {
        (200..400).contains(&status)
    } else {
        check.expect_status.contains(&status)
    };
    let body_ok = check
        .expect_body
        .as_ref()
        .is_none_or(|needle| memchr::memmem::find(&response.body, needle.as_bytes()).is_some());
    status_ok && body_ok
}
