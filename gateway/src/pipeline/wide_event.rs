//! The wide event: one row per request, built from what the phases
//! recorded in the [`RequestCtx`] and what the engine saw of the exchange.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::context::RequestCtx;
use super::view::RequestView;
use crate::contract::Verdict;
use crate::telemetry::event::no_name;
use crate::telemetry::RequestEvent;

/// Most violation summaries kept per event.
const MAX_VIOLATIONS: usize = 10;

fn verdict(v: Verdict) -> &'static str {
    match v {
        Verdict::Unchecked => "unchecked",
        Verdict::Valid => "valid",
        Verdict::Invalid => "invalid",
    }
}

/// The outcome column: the gateway's answer's ([`crate::error::GatewayError::outcome`]),
/// else `client_closed` when the client got no (whole) answer, else `ok`.
pub fn outcome(ctx: &RequestCtx, status: u16, failed: bool) -> &'static str {
    match &ctx.refusal {
        Some(err) => err.outcome(),
        None if status == 0 || failed => "client_closed",
        None => "ok",
    }
}

/// What the engine that carried a request saw of it.
#[derive(Debug, Clone, Copy)]
pub struct Exchange {
    /// The status sent to the client (0: none).
    pub status: u16,
    /// The exchange ended with an error (e.g. the client went away).
    pub failed: bool,
    /// Request body bytes read from the client.
    pub bytes_in: u64,
    /// Response body bytes sent to the client.
    pub bytes_out: u64,
    /// When the exchange finished (the engine's last clock reading).
    pub finished: Instant,
}

/// Build the wide event for a finished request. The request's id, client
/// address and refusing phase move out of `ctx` into the event.
pub fn wide_event(
    req: &impl RequestView,
    exchange: &Exchange,
    ctx: &mut RequestCtx,
    instance: &Arc<str>,
) -> RequestEvent {
    let status = exchange.status;
    // No clock reading of its own when the engine has them: the time taken
    // ends at the exchange's finish, and the wall start is the one a new
    // request id read (else now minus the time taken).
    let took = exchange.finished.saturating_duration_since(ctx.started);
    let started_wall = ctx
        .started_wall
        .or_else(|| SystemTime::now().checked_sub(took))
        .unwrap_or_else(SystemTime::now)
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let total_us = u32::try_from(took.as_micros()).unwrap_or(u32::MAX);
    let t = &ctx.timings;
    let upstream_total_us = match (t.upstream_start, t.upstream_end) {
        (Some(s), Some(end)) => {
            u32::try_from(end.saturating_duration_since(s).as_micros()).unwrap_or(u32::MAX)
        }
        (Some(s), None) => crate::pipeline::micros_since(s),
        _ => 0,
    };
    let trace_id = req
        .header_str("traceparent")
        .and_then(|v| v.split('-').nth(1))
        .filter(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or("")
        .to_string();
    let (app, route, policy_version) = match &ctx.active {
        Some(active) => {
            let names = &active.names;
            let (app, route) = match ctx.app.and_then(|a| names.apps.get(a)) {
                Some((app, routes)) => {
                    let route = match ctx.route {
                        Some(r) => routes.get(r).cloned().unwrap_or_else(no_name),
                        None if ctx.passthrough => names.passthrough.clone(),
                        None => no_name(),
                    };
                    (app.clone(), route)
                }
                None => (no_name(), no_name()),
            };
            (app, route, names.version.clone())
        }
        None => (no_name(), no_name(), no_name()),
    };
    let violations = ctx
        .violations
        .iter()
        .take(MAX_VIOLATIONS)
        .map(|v| {
            format!(
                "{}:{}:{}",
                serde_json::to_value(v.location)
                    .ok()
                    .and_then(|l| l.as_str().map(str::to_string))
                    .unwrap_or_default(),
                if v.pointer.is_empty() {
                    v.name.as_deref().unwrap_or("")
                } else {
                    v.pointer.as_str()
                },
                v.keyword
            )
        })
        .collect::<Vec<_>>()
        .join(";");
    RequestEvent {
        time: started_wall.as_secs() as u32,
        time_us: started_wall.as_micros() as u64,
        request_id: std::mem::take(&mut ctx.request_id),
        trace_id,
        instance: instance.clone(),
        policy_version,
        app,
        route,
        method: method_name(req.method()),
        status,
        consumer: ctx.consumer_id().unwrap_or("").to_string(),
        outcome: outcome(ctx, status, exchange.failed).into(),
        rejected_by: ctx.rejected_by.take().unwrap_or_default(),
        request_verdict: verdict(ctx.request_verdict).into(),
        response_verdict: verdict(ctx.response_verdict).into(),
        violations,
        bytes_in: exchange.bytes_in,
        bytes_out: exchange.bytes_out,
        client_ip: std::mem::take(&mut ctx.client_ip),
        upstream: ctx
            .last_instance
            .as_ref()
            .map_or_else(no_name, |i| i.addr.url.clone()),
        attempts: u8::try_from(ctx.attempts).unwrap_or(u8::MAX),
        total_us,
        gateway_us: total_us.saturating_sub(upstream_total_us),
        auth_us: t.auth_us,
        limits_us: t.limits_us,
        request_validation_us: t.request_validation_us,
        upstream_connect_us: t.upstream_connect_us,
        upstream_ttfb_us: t.upstream_ttfb_us,
        upstream_total_us,
        response_validation_us: t.response_validation_us,
    }
}

/// The method's name, without an allocation for the standard methods.
fn method_name(method: &http::Method) -> Cow<'static, str> {
    const STANDARD: [&str; 9] = [
        "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE",
    ];
    let name = method.as_str();
    match STANDARD.iter().find(|s| **s == name) {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(name.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_methods_are_borrowed_and_others_kept_as_sent() {
        for m in ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"] {
            let method = http::Method::from_bytes(m.as_bytes()).unwrap();
            assert!(matches!(method_name(&method), Cow::Borrowed(s) if s == m));
        }
        let purge = http::Method::from_bytes(b"PURGE").unwrap();
        assert!(matches!(method_name(&purge), Cow::Owned(s) if s == "PURGE"));
    }
}
