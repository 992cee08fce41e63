//! The upstream phase, engine-neutral: which instance an attempt goes to,
//! what its connect and first byte cost, whether a failed attempt is tried
//! again (the one retry rule), and the request's deadline. The engines do
//! the connecting and the bytes; every one of them calls these.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::context::{micros_between, RequestCtx};
use super::fence::{AppFence, BreakerState, Caller, Fenced, Kept, Transition};
use crate::error::GatewayError;
use crate::routing::{ms_at, now_ms, Instance, InstanceLease, Pick};
use std::fmt::Write as _;

/// The instance an attempt goes to.
#[derive(Debug)]
pub struct Chosen {
    /// The instance (its lease is already in the context).
    pub instance: Arc<Instance>,
    /// Its socket address.
    pub socket: std::net::SocketAddr,
    /// Time left before the request's deadline, when the attempt began.
    pub remaining: Duration,
}

/// Pick the instance for the next attempt (balancing, health, ejection,
/// instances already tried) and take its in-flight lease. Records the
/// attempt, started at `now`. Refused: the deadline has passed (504), no
/// instance is healthy (503), every instance was tried or the breaker
/// opened meanwhile (the last attempt's failure), or a retry is over the
/// app's retry budget (503 `retry-budget`).
pub fn choose_instance(
    ctx: &mut RequestCtx,
    hash_key: Option<&[u8]>,
    now: Instant,
) -> Result<Chosen, GatewayError> {
    let (Some(active), Some(app_idx)) = (ctx.active.clone(), ctx.app) else {
        return Err(GatewayError::Internal);
    };
    let app = &active.bundle.apps[app_idx];
    let remaining = ctx
        .deadline
        .map_or(app.timeouts.total, |d| d.saturating_duration_since(now));
    if remaining.is_zero() {
        return Err(GatewayError::UpstreamTimeout);
    }
    if ctx.attempts == 0 && ctx.fence.is_none() {
        // The first attempt enters the app's fence (unless it waited in
        // the app's queue for it: `wait_for_fence`).
        enter_fence(ctx, &active.fences[app_idx], now, true).map_err(kept_error)?;
    }
    let group = &active.upstreams.groups[app_idx];
    let idx = match group.pick(ctx.tried, hash_key, ms_at(now)) {
        Pick::Instance(i) => i,
        Pick::NoneAvailable if ctx.attempts == 0 => return Err(GatewayError::NoHealthyInstance),
        Pick::NoneAvailable | Pick::Exhausted => {
            return Err(ctx
                .attempt_error
                .take()
                .unwrap_or(GatewayError::UpstreamUnreachable));
        }
    };
    if ctx.attempts > 0 {
        // A retry: not once the breaker has opened meanwhile, and only
        // within the app's retry budget (which counts it).
        match ctx
            .fence
            .as_ref()
            .map_or(Ok(()), |f| f.may_retry(ms_at(now)))
        {
            Ok(()) => {}
            Err(true) => return Err(GatewayError::RetryBudgetSpent),
            Err(false) => {
                return Err(ctx
                    .attempt_error
                    .take()
                    .unwrap_or(GatewayError::UpstreamUnreachable))
            }
        }
    }
    ctx.attempt_error = None;
    ctx.tried |= 1 << idx;
    ctx.attempts += 1;
    let instance = Arc::clone(&group.instances[idx]);
    ctx.timings.upstream_start.get_or_insert(now);
    ctx.timings.attempt_start = Some(now);
    ctx.last_instance = Some(Arc::clone(&instance));
    ctx.lease = Some(InstanceLease::new(Arc::clone(&instance)));
    match instance.socket {
        Some(socket) => Ok(Chosen {
            instance,
            socket,
            remaining,
        }),
        None => Err(GatewayError::UpstreamUnreachable),
    }
}

/// Enter `fence` (the request's app's) at `now`: its breaker, then its
/// caps; a refusal at a cap counts as shed when `count`. A change of the
/// breaker's state is logged and recorded.
fn enter_fence(
    ctx: &mut RequestCtx,
    fence: &Arc<AppFence>,
    now: Instant,
    count: bool,
) -> Result<(), Kept> {
    let caller = Caller {
        priority: ctx.priority,
        consumer: ctx.consumer,
    };
    let entered = if count {
        Fenced::enter(fence, ctx.route, caller, ms_at(now))
    } else {
        Fenced::enter_queued(fence, ctx.route, caller, ms_at(now))
    };
    match entered {
        Ok(mut fenced) => {
            let change = fenced.take_change();
            ctx.fence = Some(fenced);
            note_breaker(ctx, change);
            Ok(())
        }
        Err(Kept::Open(refusal)) => {
            note_breaker(ctx, refusal.changed);
            Err(Kept::Open(refusal))
        }
        Err(kept) => Err(kept),
    }
}

/// The answer to a request its app's fence kept out.
fn kept_error(kept: Kept) -> GatewayError {
    match kept {
        Kept::Open(refusal) => GatewayError::BreakerOpen {
            retry_after: refusal.retry_after,
        },
        Kept::Full => GatewayError::Shed,
        Kept::Overloaded => GatewayError::Overloaded,
    }
}

/// Before the first attempt, where the app has a wait queue: enter its
/// fence, waiting for a slot when it is at its cap — in the queue while it
/// has room, each time a slot is freed, for at most the queue's longest
/// wait and never past the request's deadline; then shed (`503`). Without
/// a queue this does nothing ([`choose_instance`] enters the fence).
/// Engines call it before their first [`choose_instance`].
pub async fn wait_for_fence(ctx: &mut RequestCtx) -> Result<(), GatewayError> {
    if ctx.attempts > 0 || ctx.fence.is_some() {
        return Ok(());
    }
    // Most apps have no queue: nothing to take (not even the fence's
    // `Arc`) for them.
    let Some((fence, wait_ms)) = ctx
        .active
        .as_ref()
        .zip(ctx.app)
        .and_then(|(active, app)| active.fences.get(app))
        .and_then(|f| f.queue().map(|(_, wait_ms)| (Arc::clone(f), wait_ms)))
    else {
        return Ok(());
    };
    let start = Instant::now();
    let mut until = start + Duration::from_millis(wait_ms);
    if let Some(deadline) = ctx.deadline {
        until = until.min(deadline);
    }
    let mut place = None;
    loop {
        // Listen before trying, so a slot freed between the try and the
        // wait is not missed.
        let freed = fence.slot_freed();
        tokio::pin!(freed);
        freed.as_mut().enable();
        match enter_fence(ctx, &fence, Instant::now(), false) {
            Ok(()) => return Ok(()),
            Err(Kept::Full) => {}
            Err(kept) => return Err(kept_error(kept)),
        }
        let waited = if place.is_none() {
            // In the queue, try once more before waiting: a slot freed
            // before the queue counted this request woke nobody.
            place = fence.join_queue(ctx.priority);
            place.is_some()
        } else {
            tokio::time::timeout_at(until.into(), freed).await.is_ok()
        };
        if !waited {
            fence.note_shed();
            return Err(GatewayError::Shed);
        }
    }
}

/// The attempt has its connection at `at`: a new one ends the instance's
/// connect-failure streak and its time is the attempt's connect time; a
/// reused one cost none.
pub fn connected(ctx: &mut RequestCtx, reused: bool, at: Instant) {
    if reused {
        ctx.timings.upstream_connect_us = 0;
        return;
    }
    if let Some(lease) = &ctx.lease {
        lease.instance().record_connect_success();
    }
    ctx.timings.upstream_connect_us = ctx
        .timings
        .attempt_start
        .map_or(0, |t| micros_between(t, at));
}

/// The response head (`status`) arrived at `at`: time to first byte is
/// from the attempt's start, its connect time left out. The app has
/// answered: its breaker counts a success (a failure for a 5xx where the
/// policy says so).
pub fn first_byte(ctx: &mut RequestCtx, status: u16, at: Instant) {
    if status < 200 && status != 101 {
        // `100 Continue` and other interim heads: the answer is to come.
        return;
    }
    if let Some(t) = ctx.timings.attempt_start {
        ctx.timings.upstream_ttfb_us =
            micros_between(t, at).saturating_sub(ctx.timings.upstream_connect_us);
    }
    let change = ctx
        .fence
        .as_mut()
        .and_then(|f| f.judge(Some(status), ms_at(at)));
    note_breaker(ctx, change);
}

/// The upstream sent the last byte of its response at `at`: the instance
/// is free (least-connections sees it so now, not once the client has it),
/// and so are the request's slots under its app's caps.
pub fn finished(ctx: &mut RequestCtx, at: Instant) {
    ctx.timings.upstream_end = Some(at);
    ctx.lease = None;
    ctx.fence = None;
}

/// The request ended with `err` after entering its app's fence: a failure
/// of the app to answer (unreachable, broken off, timed out) counts
/// against its breaker, unless it had answered or the client was still
/// sending the body; the slots are freed either way.
pub fn ended(ctx: &mut RequestCtx, err: &GatewayError) {
    let Some(mut fenced) = ctx.fence.take() else {
        return;
    };
    let failed = matches!(
        err,
        GatewayError::UpstreamUnreachable
            | GatewayError::UpstreamFailed
            | GatewayError::UpstreamTimeout
            | GatewayError::RetryBudgetSpent
    );
    if failed && !ctx.body_streaming {
        let change = fenced.judge(None, now_ms());
        note_breaker(ctx, change);
    } else {
        fenced.abandon();
    }
}

/// Log a breaker's change of state, and record it for `fence_events`.
fn note_breaker(ctx: &RequestCtx, change: Option<Transition>) {
    let Some(change) = change else { return };
    if let (Some(active), Some(app)) = (&ctx.active, ctx.app) {
        let names = &active.names;
        if let Some((app_name, routes)) = names.apps.get(app) {
            let route = ctx
                .route
                .and_then(|r| routes.get(r))
                .unwrap_or(&names.passthrough);
            crate::telemetry::fence_events::record(&names.version, app_name, route, &change);
        }
    }
    let app = ctx.app().map_or("", |a| a.name.as_str());
    let route = ctx
        .app()
        .and_then(|a| a.routes.get(ctx.route?))
        .map_or("", |r| r.id.as_str());
    let reason = change.reason.to_string();
    match change.to {
        BreakerState::Open => tracing::warn!(
            app,
            route,
            from = change.from.as_str(),
            reason,
            "circuit breaker opened: the app is answered for with 503 until it is tried again"
        ),
        BreakerState::Closed => {
            tracing::info!(
                app,
                route,
                reason,
                "circuit breaker closed: the app answers again"
            )
        }
        BreakerState::HalfOpen => {}
    }
}

/// A connection attempt failed: count it against the instance (passive
/// ejection). `Ok`: try another instance (nothing reached the upstream, so
/// any method may); `Err`: the request's answer.
pub fn connect_failed(ctx: &mut RequestCtx, err: GatewayError) -> Result<(), GatewayError> {
    let Some(app) = ctx.app() else {
        return Err(err);
    };
    let (ejection, name) = (app.upstream.ejection.clone(), app.name.clone());
    if let Some(lease) = ctx.lease.take() {
        let inst = lease.instance();
        if inst.record_connect_failure(&ejection, now_ms()) {
            tracing::warn!(app = %name, instance = %inst.addr.url, for_ms = ejection.duration.as_millis() as u64,
                "instance ejected after consecutive connect failures");
        }
    }
    attempt_again(ctx, err)
}

/// An exchange failed after its connection was made. The retry rule: an
/// idempotent request is sent again to another instance when the engine
/// can replay it with nothing yet sent to the client (`replayable`), the
/// failure was not a timeout (the app may still be working on it), and
/// attempts and time are left. `Ok`: try again; `Err`: the answer.
pub fn exchange_failed(
    ctx: &mut RequestCtx,
    method: &http::Method,
    err: GatewayError,
    replayable: bool,
) -> Result<(), GatewayError> {
    ctx.lease = None;
    if replayable && method.is_idempotent() && err != GatewayError::UpstreamTimeout {
        attempt_again(ctx, err)
    } else {
        Err(err)
    }
}

/// A reused (pooled) connection failed before any response byte came back:
/// the app may have closed it while it sat idle. The request is sent once
/// more on a new connection to the same instance (the same attempt) when
/// nothing can have reached the app (the write itself failed) or, for an
/// idempotent method, when the connection ended before any response byte;
/// never after a timeout (the app may still be working on it).
pub fn resend_on_new_connection(
    method: &http::Method,
    err: &GatewayError,
    written: bool,
    nothing_received: bool,
) -> bool {
    nothing_received
        && *err != GatewayError::UpstreamTimeout
        && (!written || method.is_idempotent())
}

/// Try once more after `err` when the app allows another attempt and the
/// deadline has not passed ([`choose_instance`] then asks the breaker and
/// the retry budget, once it has an instance to try).
fn attempt_again(ctx: &mut RequestCtx, err: GatewayError) -> Result<(), GatewayError> {
    if ctx.attempts > ctx.app().map_or(0, |a| a.retries) || deadline_passed(ctx) {
        return Err(err);
    }
    ctx.attempt_error = Some(err);
    Ok(())
}

/// Has the request's deadline (its app's total timeout, from when the
/// request was first seen) passed?
pub fn deadline_passed(ctx: &RequestCtx) -> bool {
    ctx.deadline.is_some_and(|d| Instant::now() >= d)
}

/// The most an upstream connect or read may wait: `limit`, or less when the
/// deadline is nearer.
pub fn within_deadline(ctx: &RequestCtx, limit: Duration) -> Duration {
    ctx.deadline.map_or(limit, |d| {
        d.saturating_duration_since(Instant::now()).min(limit)
    })
}

/// Append one RFC 7239 `Forwarded` element for this hop to `out`.
pub fn forwarded_element(out: &mut String, client_ip: &str, tls: bool, host: Option<&str>) {
    match client_ip {
        "" => out.push_str("for=unknown"),
        ip if ip.contains(':') => {
            let _ = write!(out, "for=\"[{ip}]\"");
        }
        ip => {
            let _ = write!(out, "for={ip}");
        }
    }
    out.push_str(if tls { ";proto=https" } else { ";proto=http" });
    if let Some(h) = host {
        let _ = write!(out, ";host=\"{h}\"");
    }
}

/// Whether `query` holds a parameter named `name` as identity reads it
/// (names percent-decoded, `api%5Fkey` is `api_key`), so that
/// [`path_without_param`] rebuilds the query only when it removes one.
pub fn names_param(query: &str, name: &str) -> bool {
    let spelled = query.contains(name) || query.contains('%') || query.contains('+');
    spelled
        && query.split('&').any(|p| {
            let key = p.split('=').next().unwrap_or("");
            crate::contract::params::percent_decode(key, true) == name
        })
}

/// Whether a parameter of `query` other than `name` itself reads as `name`
/// on servers that fold parameter names (PHP takes `.`, ` ` and `[` for
/// `_`): the gateway would judge one and forward the other.
pub fn aliases_param(query: &str, name: &str) -> bool {
    let folded = |c: char| if matches!(c, '.' | ' ' | '[') { '_' } else { c };
    let target: String = name.chars().map(folded).collect();
    query.split('&').any(|p| {
        let key = crate::contract::params::percent_decode(p.split('=').next().unwrap_or(""), true);
        key != name && key.chars().map(folded).eq(target.chars())
    })
}

/// `path?query` without the query parameter `name` (the API key), every
/// occurrence, its name read percent-decoded as identity reads it.
pub fn path_without_param(path: &str, query: &str, name: &str) -> String {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| {
            p.split('=')
                .next()
                .map(|k| crate::contract::params::percent_decode(k, true))
                != Some(name.into())
        })
        .collect();
    if kept.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", kept.join("&"))
    }
}
