//! The admin listener (axum): health, readiness and read-only views of the
//! active policy. State-changing endpoints (with authentication and roles)
//! arrive with change review.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::policy::Balancing;
use crate::routing::now_ms;
use crate::runtime::Shared;

/// The admin API.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/policy", get(policy))
        .route("/v1/apps", get(apps))
        .with_state(shared)
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
        .map(|(app, group)| {
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
                "routes": app.routes.iter().map(|r| json!({
                    "id": r.id,
                    "method": r.method.as_ref().map_or("ANY", |m| m.as_str()),
                    "path": r.template.as_str(),
                })).collect::<Vec<_>>(),
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
