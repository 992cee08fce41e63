//! The admin and control-plane routers without a socket: requests sent
//! with `tower::ServiceExt::oneshot`.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

use super::*;
use crate::governance::control::open_state;
use crate::governance::principals::{self, Role};

fn shared(dir: &std::path::Path) -> Arc<Shared> {
    std::fs::write(
        dir.join("app.yaml"),
        "version: 1\napps:\n  - name: a\n    owner: o\n    hosts: [a.test]\n    passthrough: true\n    upstream: { instances: [\"http://127.0.0.1:9\"] }\n",
    )
    .expect("write the policy");
    Arc::new(Shared::load(dir).expect("the policy compiles"))
}

async fn call(
    router: &Router,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let response = router
        .clone()
        .oneshot(req.body(Body::empty()).expect("a request"))
        .await
        .expect("the router answers");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("a body")
        .to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, body)
}

#[tokio::test]
async fn probes_metrics_and_views_answer_as_documented() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shared = shared(dir.path());
    let router = router(Arc::clone(&shared), None, ReadGuard::Open);

    assert_eq!(
        call(&router, "GET", "/healthz", None).await.0,
        StatusCode::OK
    );
    let (status, body) = call(&router, "GET", "/readyz", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["reasons"][0], "proxy listener not accepting yet");
    shared.proxy_listening.store(true, Ordering::Relaxed);
    let (status, body) = call(&router, "GET", "/readyz", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["policy_version"], shared.active().bundle.version);

    let (status, metrics) = call(&router, "GET", "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    let text = metrics.as_str().expect("Prometheus text");
    assert!(text.contains("gatehouse_in_flight_requests 0"), "{text}");

    let (status, policy) = call(&router, "GET", "/v1/policy", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(policy["apps"], 1);
    assert_eq!(
        call(&router, "GET", "/nowhere", None).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn policy_views_need_a_known_token_when_principals_are_set() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shared = shared(dir.path());
    let file = dir.path().join("principals.json");
    let token = principals::add(&file, "ana", &[Role::Viewer], false, None).expect("a principal");
    let guard = ReadGuard::Principals(Arc::new(Principals::new(file)));
    let router = router(shared, None, guard);
    assert_eq!(
        call(&router, "GET", "/v1/apps", None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(&router, "GET", "/v1/apps", Some("gh_wrong")).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(&router, "GET", "/v1/apps", Some(&token)).await.0,
        StatusCode::OK
    );
    // Probes stay open: they carry no policy.
    assert_eq!(
        call(&router, "GET", "/healthz", None).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_control_plane_checks_token_and_role_on_every_route() {
    let policies = tempfile::tempdir().expect("tempdir");
    let shared = shared(policies.path());
    let state = tempfile::tempdir().expect("tempdir");
    let (store, audit, _bundle) =
        open_state(state.path(), Some(policies.path()), None).expect("a state directory");
    let viewer = principals::add(
        &store.principals_path(),
        "vic",
        &[Role::Viewer],
        false,
        None,
    )
    .expect("a viewer");
    let control = Arc::new(Control::new(store, audit, Arc::clone(&shared)));
    let router = router(
        shared,
        Some(Arc::clone(&control)),
        ReadGuard::Control(control),
    );

    let (status, body) = call(&router, "GET", "/v1/governance/status", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = call(&router, "GET", "/v1/governance/status", Some(&viewer)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = call(&router, "GET", "/v1/proposals", Some(&viewer)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Rolling back is an operator's: a viewer is refused, and says why.
    let (status, body) = call(&router, "POST", "/v1/rollback", Some(&viewer)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // The audit log has the refusal.
    let (status, log) = call(&router, "GET", "/v1/audit", Some(&viewer)).await;
    assert_eq!(status, StatusCode::OK, "{log}");
    assert!(log.to_string().contains("vic"), "{log}");
}
