//! The pipeline without a socket: requests as `http::request::Parts`, a
//! bundle compiled in memory, the phases called in order.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::identity::key_fingerprint;
use crate::policy::compile;
use crate::runtime::Shared;
use crate::source::SourceFile;

const KEY: &str = "gh_test_key_0123456789";

fn shared() -> Arc<Shared> {
    let app = format!(
        r#"version: 1
apps:
  - name: orders
    owner: o
    hosts: [orders.test]
    upstream: {{ instances: ["http://127.0.0.1:9", "http://127.0.0.1:10"] }}
    timeouts: {{ connect: 1s, read: 2s, total: 5s }}
    retries: 1
    max_request_body: 1KiB
    auth: {{ mode: required, api_key: {{ header: x-api-key }} }}
    limits:
      - {{ name: per-consumer, per: consumer, rate: 2/m, burst: 2 }}
    routes:
      - {{ id: list, method: GET, path: /orders }}
      - {{ id: create, method: POST, path: /orders, request_schema: schemas/new.json }}
    contract: {{ request: enforce }}
consumers:
  - id: erp
    name: ERP
    keys: [ {{ hash: "{}" }} ]
"#,
        key_fingerprint(KEY)
    );
    let bundle = compile(&[
        SourceFile {
            path: "app.yaml".into(),
            text: app,
        },
        SourceFile {
            path: "schemas/new.json".into(),
            text: r#"{"type":"object","required":["customer"],"properties":{"customer":{"type":"integer"}}}"#.into(),
        },
    ])
    .expect("the bundle compiles");
    Arc::new(Shared::new(bundle, "test".into(), None))
}

fn request(method: &str, target: &str, headers: &[(&str, &str)]) -> http::request::Parts {
    let mut builder = http::Request::builder()
        .method(method)
        .uri(target)
        .header("host", "orders.test");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(()).expect("a request").into_parts().0
}

/// A fresh context routed and admitted for `req`.
fn admitted(shared: &Arc<Shared>, req: &http::request::Parts) -> RequestCtx {
    let mut ctx = RequestCtx::new(shared.enter());
    route(&shared.active(), req, &mut ctx).expect("routed");
    admit(req, &mut ctx).expect("admitted");
    ctx
}

#[test]
fn a_request_goes_through_every_phase_and_becomes_one_row() {
    let shared = shared();
    let req = request(
        "POST",
        "/orders",
        &[("x-api-key", KEY), ("content-type", "application/json")],
    );
    let mut ctx = RequestCtx::new(shared.enter());
    request_id::assign_request_id(&req, &mut ctx);
    let routed = route(&shared.active(), &req, &mut ctx).expect("routed");
    check_declared_length(&ctx, Some(16)).expect("under the cap");
    assert_eq!(
        routed,
        Routed {
            app: 0,
            route: Some(1)
        }
    );
    assert_eq!(
        ctx.deadline,
        Some(ctx.started + Duration::from_secs(5)),
        "from when it was first seen"
    );
    admit(&req, &mut ctx).expect("admitted");
    assert_eq!(ctx.consumer_id(), Some("erp"));
    assert!(ctx.rate_headers.is_some(), "RateLimit-* for the response");
    check_buffered_request(&req, br#"{"customer":7}"#, &mut ctx).expect("a valid body");
    assert_eq!(ctx.request_verdict, Verdict::Valid);

    let start = Instant::now();
    let chosen = upstream::choose_instance(&mut ctx, None, start).expect("an instance");
    assert!(ctx.lease.is_some(), "the instance is leased");
    assert_eq!(
        chosen.remaining,
        Duration::from_secs(5).saturating_sub(start - ctx.started)
    );
    upstream::connected(&mut ctx, false, start + Duration::from_micros(300));
    upstream::first_byte(&mut ctx, 200, start + Duration::from_micros(1_000));
    upstream::finished(&mut ctx, start + Duration::from_micros(1_500));
    assert!(
        ctx.lease.is_none(),
        "the instance is free once the response is read"
    );
    assert_eq!(ctx.timings.upstream_connect_us, 300);
    assert_eq!(ctx.timings.upstream_ttfb_us, 700, "connect time left out");

    let exchange = Exchange {
        status: 201,
        failed: false,
        bytes_in: 16,
        bytes_out: 40,
        finished: start + Duration::from_micros(2_000),
    };
    let event = wide_event(&req, &exchange, &mut ctx, &Arc::from("node"));
    assert_eq!((&*event.app, &*event.route), ("orders", "create"));
    assert_eq!(
        (event.outcome.as_ref(), event.consumer.as_str()),
        ("ok", "erp")
    );
    assert_eq!((event.attempts, event.upstream_total_us), (1, 1_500));
    assert_eq!(event.request_verdict.as_ref(), "valid");
}

#[test]
fn each_phase_refuses_with_its_own_answer() {
    let shared = shared();
    let active = shared.active();
    let refusal = |req: &http::request::Parts, declared: Option<u64>| {
        let mut ctx = RequestCtx::new(shared.enter());
        route(&active, req, &mut ctx)
            .and_then(|_| check_declared_length(&ctx, declared))
            .and_then(|()| admit(req, &mut ctx))
            .and_then(|()| check_buffered_request(req, br#"{"customer":"x"}"#, &mut ctx))
            .err()
            .map(|e| e.status())
    };
    let keyed = [("x-api-key", KEY), ("content-type", "application/json")];
    assert_eq!(
        refusal(&request("GET", "/nowhere", &keyed), None),
        Some(404)
    );
    assert_eq!(
        refusal(&request("DELETE", "/orders", &keyed), None),
        Some(405)
    );
    assert_eq!(
        refusal(&request("POST", "/orders", &keyed), Some(4096)),
        Some(413)
    );
    assert_eq!(refusal(&request("GET", "/orders", &[]), None), Some(401));
    assert_eq!(
        refusal(
            &request("GET", "/orders", &[("x-api-key", KEY), ("x-api-key", KEY)]),
            None
        ),
        Some(400),
        "a second key is ambiguous"
    );
    assert_eq!(
        refusal(&request("POST", "/orders", &keyed), None),
        Some(400),
        "the contract"
    );

    // The limit: two a minute (the contract's refusal took one), then 429
    // with its own headers.
    let get = request("GET", "/orders", &keyed);
    drop(admitted(&shared, &get));
    let mut ctx = RequestCtx::new(shared.enter());
    route(&active, &get, &mut ctx).expect("routed");
    let err = admit(&get, &mut ctx).expect_err("the limit");
    assert_eq!(err.status(), 429);
    assert!(err
        .problem_headers()
        .iter()
        .any(|(n, _)| n == "retry-after"));

    // The refusal is recorded once, as the outcome.
    refused(&mut ctx, "GET", err, None);
    assert_eq!(ctx.status, 429);
    let exchange = Exchange {
        status: 429,
        failed: false,
        bytes_in: 0,
        bytes_out: 0,
        finished: Instant::now(),
    };
    let event = wide_event(&get, &exchange, &mut ctx, &Arc::from("node"));
    assert_eq!(event.outcome.as_ref(), "rate_limited");
}

#[test]
fn the_retry_rule_is_idempotent_replayable_untimed_and_bounded() {
    let shared = shared();
    let get = request("GET", "/orders", &[("x-api-key", "unknown")]);
    let mut ctx = RequestCtx::new(shared.enter());
    route(&shared.active(), &get, &mut ctx).expect("routed");
    let now = Instant::now();
    let first = upstream::choose_instance(&mut ctx, None, now).expect("a first instance");

    let failed = GatewayError::UpstreamFailed;
    fn probe(ctx: &mut RequestCtx, method: &str, err: GatewayError, replayable: bool) -> bool {
        let method = http::Method::from_bytes(method.as_bytes()).expect("a method");
        upstream::exchange_failed(ctx, &method, err, replayable).is_ok()
    }
    assert!(
        !probe(&mut ctx, "POST", failed.clone(), true),
        "not idempotent"
    );
    assert!(
        !probe(&mut ctx, "GET", GatewayError::UpstreamTimeout, true),
        "the app may still be at it"
    );
    assert!(
        !probe(&mut ctx, "GET", failed.clone(), false),
        "the client saw some of it"
    );
    assert!(
        probe(&mut ctx, "GET", failed.clone(), true),
        "once more, elsewhere"
    );

    let second = upstream::choose_instance(&mut ctx, None, now).expect("the other instance");
    assert_ne!(
        first.socket, second.socket,
        "a retry goes to another instance"
    );
    assert!(
        !probe(&mut ctx, "GET", failed.clone(), true),
        "retries: 1 is spent"
    );
    // Every instance tried: the last failure is the answer.
    assert_eq!(
        upstream::choose_instance(&mut ctx, None, now).map(|c| c.socket),
        Err(GatewayError::UpstreamUnreachable)
    );

    // A connection that never opened may be tried elsewhere, whatever the method.
    let post = request("POST", "/orders", &[]);
    let mut ctx = RequestCtx::new(shared.enter());
    route(&shared.active(), &post, &mut ctx).expect("routed");
    upstream::choose_instance(&mut ctx, None, now).expect("an instance");
    assert_eq!(
        upstream::connect_failed(&mut ctx, GatewayError::UpstreamUnreachable),
        Ok(())
    );
    assert!(ctx.lease.is_none(), "the failed instance is released");
    upstream::choose_instance(&mut ctx, None, now).expect("the other instance");
    assert_eq!(
        upstream::connect_failed(&mut ctx, GatewayError::UpstreamTimeout),
        Err(GatewayError::UpstreamTimeout)
    );

    // No time left: no attempt.
    let mut ctx = admitted_past_deadline(&shared, &get);
    assert_eq!(
        upstream::choose_instance(&mut ctx, None, Instant::now()).map(|c| c.socket),
        Err(GatewayError::UpstreamTimeout)
    );
}

fn admitted_past_deadline(shared: &Arc<Shared>, req: &http::request::Parts) -> RequestCtx {
    let mut ctx = RequestCtx::new(shared.enter());
    route(&shared.active(), req, &mut ctx).expect("routed");
    ctx.deadline = Some(Instant::now() - Duration::from_millis(1));
    ctx
}

#[test]
fn a_monitored_response_is_judged_from_its_head_and_body() {
    let shared = shared();
    let req = request("GET", "/orders", &[("x-api-key", KEY)]);
    let mut ctx = admitted(&shared, &req);
    // The route has no operation: nothing is judged, nothing is copied.
    start_response_check(&mut ctx, 200, &http::HeaderMap::new());
    assert!(ctx.response_tee.is_none());
    finish_response_check(&mut ctx);
    assert_eq!(ctx.response_verdict, Verdict::Unchecked);
    assert!(judge_whole_response(&mut ctx, 200, &http::HeaderMap::new(), b"{}").is_ok());
}

#[test]
fn a_pooled_connection_is_written_again_only_when_nothing_can_have_reached_the_app() {
    let (get, post) = (http::Method::GET, http::Method::POST);
    let failed = GatewayError::UpstreamFailed;
    let resend = upstream::resend_on_new_connection;
    assert!(
        resend(&post, &failed, false, true),
        "the write itself failed"
    );
    assert!(
        !resend(&post, &failed, true, true),
        "a POST the app may have acted on"
    );
    assert!(
        resend(&get, &failed, true, true),
        "closed before any byte came back"
    );
    assert!(
        !resend(&get, &GatewayError::UpstreamTimeout, true, true),
        "the app may be at it"
    );
    assert!(
        !resend(&get, &failed, true, false),
        "part of a response came back"
    );
}

#[test]
fn a_refusal_at_routing_is_recorded_under_the_route_it_concerns() {
    let shared = shared();
    let twice = request("GET", "/orders", &[("x-api-key", KEY), ("x-api-key", KEY)]);
    let mut ctx = RequestCtx::new(shared.enter());
    let err = route(&shared.active(), &twice, &mut ctx).expect_err("a second key");
    assert_eq!(err.status(), 400);
    assert_eq!((ctx.app, ctx.route), (Some(0), Some(0)));
    refused(&mut ctx, "GET", err, None);
    let exchange = Exchange {
        status: 400,
        failed: false,
        bytes_in: 0,
        bytes_out: 0,
        finished: Instant::now(),
    };
    let event = wide_event(&twice, &exchange, &mut ctx, &Arc::from("node"));
    assert_eq!((&*event.app, &*event.route), ("orders", "list"));
    assert_eq!(event.outcome.as_ref(), "bad_request");
}
