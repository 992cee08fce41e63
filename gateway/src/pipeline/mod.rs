//! The request pipeline: every phase a request goes through, in order, and
//! every decision in it, whichever engine carries the request (Pingora's
//! proxy in [`crate::proxy`], the lean HTTP/1.1 loop in
//! [`crate::proxy::http1`], HTTP/2 and TLS through Pingora). The engines
//! move bytes — read heads and bodies, connect, pool, write — and call the
//! entry points below; a new capability is added here once.
//!
//! A request, top to bottom:
//!
//! | # | phase | entry point | decides |
//! |---|-------|-------------|---------|
//! | 1 | id | [`request_id::assign_request_id`] | `X-Request-Id`: the client's, if sane, else a UUIDv7 |
//! | 2 | route | [`route`] | the policy snapshot (taken once); head rules (400); app and route (404/405); body cap (413); the deadline |
//! | 3 | admit | [`admit`] | consumer (401/403), limits and quotas (429), `RateLimit-*` |
//! | 4 | request contract | [`plan_request`], then [`judge_request`] or [`check_buffered_request`] | parameters, media type, JSON body (400/415 in enforce mode, recorded in monitor mode) |
//! | 5 | upstream | [`upstream::choose_instance`], [`upstream::connected`], [`upstream::first_byte`], [`upstream::finished`]; on failure [`upstream::connect_failed`] / [`upstream::exchange_failed`] (the retry rule) | instance (balancing, health, ejection; 503), timings, retries, the deadline (504) |
//! | 6 | response contract | [`start_response_check`] + [`finish_response_check`] (streamed, monitor), [`judge_whole_response`] (buffered, enforce) | the response's status, media type and body |
//! | 7 | refusal | [`refused`], [`failed_mid_response`] | the answer the gateway gave: counted, logged at a bounded rate ([`failure_log`]), the outcome |
//! | 8 | the wide event | [`wide_event()`] | one row per request for ClickHouse |
//!
//! Every phase returns `Result<_, GatewayError>`; the engine writes the
//! refusal its own way and records it with [`refused`]. What a phase
//! learned for later ones (consumer, verdicts, timings) is in the
//! [`RequestCtx`].

pub mod admission;
pub mod context;
pub mod contract;
pub mod failure_log;
pub mod fence;
pub mod head_rules;
pub mod request_id;
pub mod routes;
pub mod upstream;
pub mod view;
pub mod wide_event;

use std::sync::Arc;
use std::time::Instant;

pub use context::{micros_between, micros_since, BodyTee, RequestCtx, Timings};
pub use contract::RequestPlan;
pub use view::RequestView;
pub use wide_event::{wide_event, Exchange};

use crate::contract::{Mode, Undocumented, Verdict};
use crate::error::GatewayError;
use crate::runtime::Active;

/// Where the route phase put a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routed {
    /// Index of the app in the bundle.
    pub app: usize,
    /// Index of the route in the app (`None`: a passthrough app).
    pub route: Option<usize>,
}

/// Phase 2: take the policy snapshot the request is served under, apply
/// the head rules and route it; set its body cap and its deadline (the
/// app's total timeout from when the request was first seen). A refusal
/// keeps the app and route it concerns, for the wide event. `req`'s path
/// must be canonical ([`crate::routing::canonical_path`]).
pub fn route(
    active: &Arc<Active>,
    req: &impl RequestView,
    ctx: &mut RequestCtx,
) -> Result<Routed, GatewayError> {
    ctx.active = Some(Arc::clone(active));
    let (found, refusal) = match routes::route_request(active, req) {
        Ok(found) => (found, None),
        Err(refused) => (refused.found, Some(refused.error)),
    };
    ctx.app = found.app;
    ctx.route = found.route;
    ctx.passthrough = found.passthrough;
    if let Some(err) = refusal {
        return Err(err);
    }
    let Some(app_idx) = found.app else {
        return Err(GatewayError::Internal);
    };
    let app = &active.bundle.apps[app_idx];
    ctx.body_cap = found
        .route
        .map_or(app.max_request_body, |r| app.routes[r].max_request_body);
    ctx.deadline = Some(ctx.started + app.timeouts.total);
    Ok(Routed {
        app: app_idx,
        route: found.route,
    })
}

/// Phase 2, for a request that declares its body's length: over the
/// route's cap is refused (413) before any byte of the body is read.
pub fn check_declared_length(ctx: &RequestCtx, declared: Option<u64>) -> Result<(), GatewayError> {
    match declared {
        Some(len) if len > ctx.body_cap => Err(GatewayError::BodyTooLarge {
            limit: ctx.body_cap,
        }),
        _ => Ok(()),
    }
}

/// The policy snapshot a routed request is served under and its app's
/// index, held apart from `ctx` so that a phase can read the policy while
/// it records what it decided (`Internal` for a request not routed yet).
fn served(ctx: &RequestCtx) -> Result<(Arc<Active>, usize), GatewayError> {
    match (&ctx.active, ctx.app) {
        (Some(active), Some(app)) if app < active.bundle.apps.len() => {
            Ok((Arc::clone(active), app))
        }
        _ => Err(GatewayError::Internal),
    }
}

/// Phase 3: identify the consumer and check limits and quotas
/// ([`admission`]).
pub fn admit(req: &impl RequestView, ctx: &mut RequestCtx) -> Result<(), GatewayError> {
    let (active, app) = served(ctx)?;
    let app = &active.bundle.apps[app];
    let route = ctx.route.and_then(|r| app.routes.get(r));
    match admission::admit(req, ctx, &active, app, route) {
        Some(err) => Err(err),
        None => Ok(()),
    }
}

/// Phase 4, from the head: what the request contract needs of the body
/// (`None`: the route has no operation to check). A passthrough request to
/// an app whose contract monitors undocumented operations is recorded.
/// Refused: a parameter or media type the enforced contract rejects.
pub fn plan_request(
    req: &impl RequestView,
    has_body: bool,
    ctx: &mut RequestCtx,
) -> Result<Option<RequestPlan>, GatewayError> {
    // Admission's last clock reading starts the check.
    let started = ctx.clock_mark.take().unwrap_or_else(Instant::now);
    let planned = plan(req, has_body, ctx);
    if !matches!(planned, Ok(None)) {
        ctx.timings.request_validation_us = micros_since(started);
    }
    planned
}

fn plan(
    req: &impl RequestView,
    has_body: bool,
    ctx: &mut RequestCtx,
) -> Result<Option<RequestPlan>, GatewayError> {
    let (active, app) = served(ctx)?;
    let app = &active.bundle.apps[app];
    let Some(route) = ctx.route.and_then(|r| app.routes.get(r)) else {
        if app.contract.undocumented == Undocumented::Monitor && app.contract.openapi.is_some() {
            contract::record_undocumented(ctx);
        }
        return Ok(None);
    };
    match &route.operation {
        Some(op) => contract::plan_request(req, has_body, ctx, app, route, op).map(Some),
        None => Ok(None),
    }
}

/// Phase 4, with the body: the verdict of `plan` on `body` (`None`: the
/// plan did not need it read; a monitor-mode body is then copied as it
/// streams and judged at its end, [`finish_request_check`]).
pub fn judge_request(
    plan: RequestPlan,
    body: Option<&[u8]>,
    ctx: &mut RequestCtx,
) -> Result<(), GatewayError> {
    let started = Instant::now();
    let judged = judge(plan, body, ctx);
    ctx.timings.request_validation_us += micros_since(started);
    judged
}

fn judge(plan: RequestPlan, body: Option<&[u8]>, ctx: &mut RequestCtx) -> Result<(), GatewayError> {
    let (active, app) = served(ctx)?;
    let app = &active.bundle.apps[app];
    let route = ctx
        .route
        .and_then(|r| app.routes.get(r))
        .ok_or(GatewayError::Internal)?;
    contract::judge_request(plan, body, ctx, app, route.request_mode)
}

/// Phase 4 for a request whose whole body is at hand: plan and verdict in
/// one, timed once. A body over the contract's cap is refused when the
/// plan must read it (enforce mode), else left unjudged.
pub fn check_buffered_request(
    req: &impl RequestView,
    body: &[u8],
    ctx: &mut RequestCtx,
) -> Result<(), GatewayError> {
    let started = ctx.clock_mark.take();
    let planned = plan(req, !body.is_empty(), ctx);
    let plan = match planned {
        Ok(Some(plan)) => plan,
        Ok(None) => return Ok(()),
        Err(err) => {
            ctx.timings.request_validation_us = started.map_or(0, micros_since);
            return Err(err);
        }
    };
    let started = started.unwrap_or_else(Instant::now);
    let over = body.len() as u64 > plan.body_limit;
    let checked = if over && plan.read_body {
        Err(GatewayError::BodyTooLarge {
            limit: plan.body_limit,
        })
    } else {
        // Over the contract's body cap in monitor mode: the body is not judged.
        let judged = (!body.is_empty() && !over).then_some(body);
        judge(plan, judged, ctx)
    };
    ctx.request_tee = None;
    ctx.timings.request_validation_us = micros_since(started);
    checked
}

/// Phase 4, monitor mode: judge the copy of a streamed request body at its
/// end.
pub fn finish_request_check(ctx: &mut RequestCtx) {
    if ctx.request_tee.is_some() {
        let max = ctx.app().map_or(20, |a| a.contract.max_violations);
        contract::finish_request_tee(ctx, max);
    }
}

/// Phase 6, at a streamed response's head (monitor mode): judge its status
/// and media type, and copy its body when that is to be judged too.
pub fn start_response_check(ctx: &mut RequestCtx, status: u16, headers: &http::HeaderMap) {
    let Ok((active, app)) = served(ctx) else {
        return;
    };
    let app = &active.bundle.apps[app];
    let Some(route) = ctx.route.and_then(|r| app.routes.get(r)) else {
        return;
    };
    let (Some(op), Mode::Monitor) = (&route.operation, route.response_mode) else {
        return;
    };
    let started = Instant::now();
    contract::start_response_check(
        ctx,
        op,
        status,
        headers,
        app.contract.max_violations,
        app.contract.max_response_body,
    );
    ctx.timings.response_validation_us += micros_since(started);
}

/// Phase 6, at a streamed response's end: judge the copied body.
pub fn finish_response_check(ctx: &mut RequestCtx) {
    if ctx.response_tee.is_some() {
        let started = Instant::now();
        let max = ctx.app().map_or(20, |a| a.contract.max_violations);
        contract::finish_response_tee(ctx, max);
        ctx.timings.response_validation_us += micros_since(started);
    }
}

/// Phase 6 for a whole response (the buffered forwarder): in enforce mode a
/// violating response is refused (502, withheld from the client); in
/// monitor mode its violations are recorded.
pub fn judge_whole_response(
    ctx: &mut RequestCtx,
    status: u16,
    headers: &http::HeaderMap,
    body: &[u8],
) -> Result<(), GatewayError> {
    let Ok((active, app)) = served(ctx) else {
        return Ok(());
    };
    let app = &active.bundle.apps[app];
    let Some(route) = ctx.route.and_then(|r| app.routes.get(r)) else {
        return Ok(());
    };
    let (Some(op), Mode::Enforce | Mode::Monitor) = (&route.operation, route.response_mode) else {
        return Ok(());
    };
    let started = Instant::now();
    let (verdict, violations) =
        contract::response_violations(op, status, headers, Some(body), app.contract.max_violations);
    ctx.response_verdict = verdict;
    let judged = if verdict == Verdict::Invalid {
        for v in &violations {
            failure_log::response_violation(ctx, &v.pointer, &v.keyword);
        }
        if route.response_mode == Mode::Enforce {
            crate::contract::count_violation("response");
            Err(GatewayError::UpstreamContractViolation {
                count: violations.len(),
            })
        } else {
            contract::record(ctx, violations, "response");
            Ok(())
        }
    } else {
        Ok(())
    };
    ctx.timings.response_validation_us += micros_since(started);
    judged
}

/// Phase 7: the gateway answered `err` itself (the engine has written it,
/// or could not). Counted on `/metrics` when it is a contract violation, a
/// 5xx logged at a bounded rate (`cause`: the lower-level error), and kept
/// as the request's outcome and status.
pub fn refused(
    ctx: &mut RequestCtx,
    method: &str,
    err: GatewayError,
    cause: Option<&dyn std::fmt::Display>,
) {
    if let Some(direction) = err.violation_counted() {
        crate::contract::count_violation(direction);
    }
    upstream::ended(ctx, &err);
    failure_log::request_failed(ctx, method, &err, cause);
    ctx.status = err.status();
    ctx.refusal = Some(err);
}

/// Phase 7, after the app's response head went out: the exchange failed
/// mid-response (logged, the outcome); the status stays the app's.
pub fn failed_mid_response(ctx: &mut RequestCtx, method: &str, err: GatewayError) {
    upstream::ended(ctx, &err);
    failure_log::request_failed(ctx, method, &err, Some(&failure_log::MID_RESPONSE));
    ctx.refusal = Some(err);
}

#[cfg(test)]
mod tests;
