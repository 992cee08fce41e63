//! The admin listener (axum): health, readiness, metrics and read-only views
//! of the policy this node serves; in governed mode (`serve --state`) also
//! the control-plane API ([`governance`]), where every route needs a bearer
//! token and a role.

pub mod governance;
pub mod listener;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::governance::control::{Control, ControlError};
use crate::governance::principals::{Principals, Role};
use crate::policy::Balancing;
use crate::routing::now_ms;
use crate::runtime::Shared;

/// Who may read a node's `/v1/policy` and `/v1/apps` (probes and
/// `/metrics` stay open: they carry no policy detail).
#[derive(Debug, Clone)]
pub enum ReadGuard {
    /// Anyone (no principals configured; logged as a warning at start).
    Open,
    /// A principal of this file (any role).
    Principals(Arc<Principals>),
    /// A principal of the control plane; refusals are audited.
    Control(Arc<Control>),
}

async fn require_viewer(
    State(guard): State<ReadGuard>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let token = governance::bearer(req.headers());
    let source = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    let path = req.uri().path().to_string();
    let allowed = match &guard {
        ReadGuard::Open => Ok(()),
        ReadGuard::Principals(p) => {
            let p = Arc::clone(p);
            let token2 = token.clone();
            match tokio::task::spawn_blocking(move || token2.and_then(|t| p.authenticate(&t))).await
            {
                Ok(Some(_)) => Ok(()),
                _ => {
                    tracing::warn!(%path, "admin read refused: no or unknown bearer token");
                    Err(ControlError::Unauthenticated)
                }
            }
        }
        ReadGuard::Control(c) => {
            let c = Arc::clone(c);
            let p2 = path.clone();
            tokio::task::spawn_blocking(move || {
                c.authorize(token.as_deref(), source, Role::Viewer, "node.read", &p2)
                    .map(|_| ())
            })
            .await
            .unwrap_or_else(|e| Err(ControlError::Internal(e.to_string())))
        }
    };
    match allowed {
        Ok(()) => next.run(req).await,
        Err(e) => governance::error_response(e),
    }
}

/// The admin API: probes, metrics and the node's policy views (behind
/// `guard`), plus the control-plane routes when `control` is given.
pub fn router(shared: Arc<Shared>, control: Option<Arc<Control>>, guard: ReadGuard) -> Router {
    let views = Router::new()
        .route("/v1/policy", get(policy))
        .route("/v1/apps", get(apps))
        .route_layer(axum::middleware::from_fn_with_state(guard, require_viewer))
        .with_state(Arc::clone(&shared));
    let node = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(shared)
        .merge(views);
    match control {
        Some(c) => node.merge(governance::router(c)),
        None => node,
    }
}

async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let mut reasons = Vec::new();
    if !shared.proxy_listening.load(Ordering::Relaxed) {
        reasons.push("proxy listener not accepting yet");
    }
    if shared.shutting_down.load(Ordering::Relaxed) {
        reasons.push("shutting down");
    }
    let status = if reasons.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let version = shared.active().bundle.version.clone();
    (
        status,
        Json(json!({ "ready": reasons.is_empty(), "reasons": reasons, "policy_version": version })),
    )
}

async fn policy(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let active = shared.active();
    let b = &active.bundle;
    let errors = shared
        .last_reload_errors
        .lock()
        .map(|e| e.clone())
        .unwrap_or_default();
    Json(json!({
        "version": b.version,
        "short_version": b.short_version(),
        "activated_at": humantime::format_rfc3339_millis(active.activated_at).to_string(),
        "source": active.source,
        "files": b.files,
        "apps": b.apps.len(),
        "routes": b.route_count(),
        "reloads": {
            "activated": shared.reloads_ok.load(Ordering::Relaxed),
            "rejected": shared.reloads_failed.load(Ordering::Relaxed),
            "last_rejection_errors": errors,
        },
        "in_flight": shared.in_flight.load(Ordering::Relaxed),
        "contract": {
            "request_violations": crate::contract::counters::REQUEST_VIOLATIONS.load(Ordering::Relaxed),
            "response_violations": crate::contract::counters::RESPONSE_VIOLATIONS.load(Ordering::Relaxed),
        },
    }))
}

async fn apps(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let active = shared.active();
    let now = now_ms();
    let apps: Vec<Value> = active
        .bundle
        .apps
        .iter()
        .zip(&active.upstreams.groups)
        .zip(&active.fences)
        .map(|((app, group), fence)| {
            let balancing = match &app.upstream.balancing {
                Balancing::RoundRobin => json!("round_robin"),
                Balancing::LeastConnections => json!("least_connections"),
                Balancing::ConsistentHash(h) => json!({ "consistent_hash": h.as_str() }),
            };
            json!({
                "name": app.name,
                "owner": app.owner,
                "platform": app.platform,
                "hosts": app.hosts,
                "path_prefix": if app.path_prefix.is_empty() { "/" } else { app.path_prefix.as_str() },
                "passthrough": app.passthrough,
                "balancing": balancing,
                "routes": app.routes.iter().zip(&fence.routes).map(|(r, f)| json!({
                    "id": r.id,
                    "method": r.method.as_ref().map_or("ANY", |m| m.as_str()),
                    "path": r.template.as_str(),
                    "breaker": breaker_view(&f.breaker),
                    "cap": f.cap.as_ref().map(|c| json!({
                        "in_flight": c.in_flight(),
                        "max_in_flight": c.limit,
                        "shed": c.shed(),
                    })),
                })).collect::<Vec<_>>(),
                "fence": {
                    "in_flight": fence.in_flight(),
                    "max_in_flight": fence.cap.limit,
                    "shed": fence.shed(),
                    "queued": fence.queued(),
                    "queue": fence.queue().map(|(size, wait_ms)| json!({
                        "size": size,
                        "max_wait_ms": wait_ms,
                    })),
                    "retries_refused": fence.retries.refused(),
                    "breakers": fence.breaking,
                    "passthrough_breaker": breaker_view(&fence.breaker),
                },
                "instances": group.instances.iter().map(|i| json!({
                    "url": i.addr.url,
                    "resolved": i.socket.map(|s| s.to_string()),
                    "healthy": i.healthy(),
                    "ejected": i.ejected(now),
                    "available": i.available(now),
                    "in_flight": i.in_flight(),
                    "requests": i.requests(),
                    "consecutive_connect_failures": i.consecutive_failures(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    Json(json!({ "policy_version": active.bundle.version, "apps": apps }))
}

/// A breaker as the app view shows it.
fn breaker_view(b: &crate::pipeline::fence::Breaker) -> Value {
    json!({ "state": b.state().as_str(), "openings": b.openings() })
}

/// Prometheus text exposition: bounded labels only (no paths, no consumers).
async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    use std::fmt::Write;
    let mut out = String::new();
    let mut counter = |name: &str, help: &str, kind: &str, samples: &[(&str, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            if labels.is_empty() {
                let _ = writeln!(out, "{name} {v}");
            } else {
                let _ = writeln!(out, "{name}{{{labels}}} {v}");
            }
        }
    };
    counter(
        "gatehouse_in_flight_requests",
        "Requests being served.",
        "gauge",
        &[("", shared.in_flight.load(Ordering::Relaxed) as u64)],
    );
    counter(
        "gatehouse_client_connections",
        "Client connections open on the proxy listeners.",
        "gauge",
        &[("", shared.connections.load(Ordering::Relaxed) as u64)],
    );
    counter(
        "gatehouse_client_connections_limit",
        "Most client connections open at once (from the descriptor limit); more are answered 503.",
        "gauge",
        &[("", crate::capacity::client_connections() as u64)],
    );
    counter(
        "gatehouse_client_connections_refused_total",
        "Client connections answered 503 and closed because as many were open as the gateway may hold.",
        "counter",
        &[("", shared.connections_refused.load(Ordering::Relaxed))],
    );
    let (upstream_in_flight, upstream_limit) = crate::capacity::in_flight();
    counter(
        "gatehouse_upstream_requests_in_flight",
        "Requests in flight to apps, all apps (their limit is gatehouse_upstream_requests_in_flight_limit).",
        "gauge",
        &[("", u64::from(upstream_in_flight))],
    );
    counter(
        "gatehouse_upstream_requests_in_flight_limit",
        "Most requests in flight to apps at once (from the descriptor limit); more are answered 503.",
        "gauge",
        &[("", u64::from(upstream_limit))],
    );
    counter(
        "gatehouse_policy_reloads_total",
        "Policy reloads by result.",
        "counter",
        &[
            (
                "result=\"activated\"",
                shared.reloads_ok.load(Ordering::Relaxed),
            ),
            (
                "result=\"rejected\"",
                shared.reloads_failed.load(Ordering::Relaxed),
            ),
        ],
    );
    counter(
        "gatehouse_http1_requests_total",
        "HTTP/1.1 requests on the plain listener by what carried them (lean engine, or Pingora's proxy for what the lean engine hands over).",
        "counter",
        &[
            (
                "carried_by=\"lean\"",
                crate::proxy::http1::counters::LEAN.load(Ordering::Relaxed),
            ),
            (
                "carried_by=\"pingora\"",
                crate::proxy::http1::counters::PINGORA.load(Ordering::Relaxed),
            ),
        ],
    );
    counter(
        "gatehouse_h2_stream_abuse_total",
        "HTTP/2: streams the client reset before the gateway was done with them, streams refused past the per-connection cap of requests in progress, and connections closed with GOAWAY(ENHANCE_YOUR_CALM) for too many resets.",
        "counter",
        &[
            (
                "kind=\"client_reset\"",
                crate::proxy::h2::counters::CLIENT_RESETS.load(Ordering::Relaxed),
            ),
            (
                "kind=\"refused\"",
                crate::proxy::h2::counters::REFUSED.load(Ordering::Relaxed),
            ),
            (
                "kind=\"goaway\"",
                crate::proxy::h2::counters::CALM_GOAWAYS.load(Ordering::Relaxed),
            ),
        ],
    );
    counter(
        "gatehouse_contract_violations_total",
        "Requests and responses found breaking their contract.",
        "counter",
        &[
            (
                "what=\"request\"",
                crate::contract::counters::REQUEST_VIOLATIONS.load(Ordering::Relaxed),
            ),
            (
                "what=\"response\"",
                crate::contract::counters::RESPONSE_VIOLATIONS.load(Ordering::Relaxed),
            ),
        ],
    );
    counter(
        "gatehouse_failure_log_lines_suppressed_total",
        "Lines about failed requests left out of the log to keep it within its rate (every request is still a telemetry event).",
        "counter",
        &[("", crate::pipeline::failure_log::suppressed_total())],
    );
    // Each app's fence: one sample per app (names are bounded by the
    // bundle), breakers summed over the app's routes.
    let active = shared.active();
    let fenced: Vec<(String, &crate::pipeline::fence::AppFence)> = active
        .bundle
        .apps
        .iter()
        .zip(&active.fences)
        .map(|(app, fence)| (format!("app=\"{}\"", app.name), &**fence))
        .collect();
    let per_app = |f: &dyn Fn(&crate::pipeline::fence::AppFence) -> u64| {
        fenced
            .iter()
            .map(|(labels, fence)| (labels.as_str(), f(fence)))
            .collect::<Vec<_>>()
    };
    counter(
        "gatehouse_app_requests_in_flight",
        "Requests in flight to each app (its concurrency cap is gatehouse_app_requests_in_flight_limit).",
        "gauge",
        &per_app(&|f| u64::from(f.in_flight())),
    );
    counter(
        "gatehouse_app_requests_in_flight_limit",
        "Most requests in flight to each app before more are shed.",
        "gauge",
        &per_app(&|f| u64::from(f.cap.limit)),
    );
    counter(
        "gatehouse_app_requests_queued",
        "Requests waiting for a slot under their app's cap (in apps with a wait queue).",
        "gauge",
        &per_app(&|f| u64::from(f.queued())),
    );
    counter(
        "gatehouse_app_requests_shed_total",
        "Requests answered 503 because their app (or route) was at its concurrency cap.",
        "counter",
        &per_app(&|f| f.shed()),
    );
    counter(
        "gatehouse_app_retries_refused_total",
        "Retries not made because the app's retry budget was spent.",
        "counter",
        &per_app(&|f| f.retries.refused()),
    );
    counter(
        "gatehouse_app_breakers_open",
        "Circuit breakers of each app (one per route, one for its passthrough paths) not closed now.",
        "gauge",
        &per_app(&|f| {
            f.breakers()
                .filter(|b| b.state() != crate::pipeline::fence::BreakerState::Closed)
                .count() as u64
        }),
    );
    counter(
        "gatehouse_app_breaker_openings_total",
        "Times a circuit breaker of each app opened (a reopening after a failed probe included).",
        "counter",
        &per_app(&|f| f.breakers().map(|b| b.openings()).sum()),
    );
    if let Some(t) = shared.telemetry.get() {
        counter(
            "gatehouse_telemetry_events_total",
            "Request events by fate: queued, dropped (queue full), inserted, spooled, lost (spool full).",
            "counter",
            &[
                ("result=\"queued\"", t.queued.load(Ordering::Relaxed)),
                ("result=\"dropped_queue_full\"", t.dropped_queue_full.load(Ordering::Relaxed)),
                ("result=\"inserted\"", t.inserted.load(Ordering::Relaxed)),
                ("result=\"spooled\"", t.spooled.load(Ordering::Relaxed)),
                ("result=\"spool_lost\"", t.spool_lost.load(Ordering::Relaxed)),
            ],
        );
        counter(
            "gatehouse_telemetry_insert_failures_total",
            "Failed ClickHouse insert attempts.",
            "counter",
            &[("", t.insert_failures.load(Ordering::Relaxed))],
        );
        counter(
            "gatehouse_telemetry_spool_bytes",
            "Bytes waiting in the telemetry spool.",
            "gauge",
            &[("", t.spool_bytes.load(Ordering::Relaxed))],
        );
        counter(
            "gatehouse_telemetry_degraded",
            "1 while ClickHouse does not answer (or its schema does not fit) and events go to the spool.",
            "gauge",
            &[("", u64::from(!t.connected.load(Ordering::Relaxed)))],
        );
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        out,
    )
}

#[cfg(test)]
mod tests;
