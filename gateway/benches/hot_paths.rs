//! Criterion benches of the request path's hot functions:
//! `cargo bench -p gatehouse --bench hot_paths`.
//!
//! - request body validation (parse + JSON Schema) for a ~1 KB order and a
//!   ~100 KB body, with the example bundle's compiled validators;
//! - route matching (host + method + template) on the example bundle;
//! - API key lookup and a GCRA limit check (hot key and 10 000 rotating keys).

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gatehouse::contract::operation::check_json_body;
use gatehouse::contract::ViolationLocation;
use gatehouse::policy::{compile, load_and_compile, SourceFile};
use http::Method;
use serde_json::json;

fn example_bundle() -> gatehouse::policy::Bundle {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    load_and_compile(&dir).expect("the example bundle compiles")
}

/// The order of `loadtest/scenarios/order-1kb.yaml`, members in the order
/// a client writes them (not sorted, as `json!` would).
fn order_body_1kb() -> Vec<u8> {
    let lines: Vec<String> = (1..=12)
        .map(|i| {
            format!(
                r#"{{"sku":"SKU-{:05}","quantity":{i},"unit_price":{}.95}}"#,
                i * 37,
                9 + i
            )
        })
        .collect();
    format!(
        r#"{{"customer_id":4711,"currency":"EUR","requested_delivery":"2026-12-24","contact_email":"purchasing@customer.example","reference":"6f1c2b1e-9d1a-4c1e-8f7a-2b3c4d5e6f70","notes":"Deliver to the loading dock at the back of building C, between 8 and 12.","lines":[{}]}}"#,
        lines.join(",")
    )
    .into_bytes()
}

fn bench_validation(c: &mut Criterion) {
    let bundle = example_bundle();
    let orders = bundle
        .apps
        .iter()
        .find(|a| a.name == "orders")
        .expect("orders app");
    let create = orders
        .routes
        .iter()
        .find(|r| r.id == "createOrder")
        .expect("createOrder");
    let validator = create
        .operation
        .as_ref()
        .and_then(|o| o.body.as_ref())
        .and_then(|b| b.json.clone())
        .expect("body validator");
    let small = order_body_1kb();
    assert!(
        check_json_body(&validator, &small, ViolationLocation::Body, 20)
            .expect("json")
            .is_empty()
    );

    // ~100 KB: a bulk document against a schema of the same style.
    let bulk_schema = r##"{"openapi":"3.0.3","info":{"title":"b","version":"1"},"paths":{"/bulk":{"post":{"operationId":"bulk",
        "requestBody":{"required":true,"content":{"application/json":{"schema":{"$ref":"#/components/schemas/Bulk"}}}},"responses":{"200":{"description":"ok"}}}}},
        "components":{"schemas":{"Bulk":{"type":"object","required":["items"],"properties":{"items":{"type":"array","items":{"$ref":"#/components/schemas/Line"}}}},
        "Line":{"type":"object","additionalProperties":false,"required":["sku","quantity"],"properties":{"sku":{"type":"string","pattern":"^SKU-[0-9]{5}$"},
        "quantity":{"type":"integer","minimum":1},"unit_price":{"type":"number","minimum":0,"exclusiveMinimum":true},"note":{"type":"string","maxLength":200,"nullable":true}}}}}}"##;
    let policy = "version: 1\napps:\n  - name: bulk\n    owner: o\n    hosts: [b.test]\n    upstream: { instances: [\"http://127.0.0.1:1\"] }\n    contract: { openapi: contracts/bulk.json }\n";
    let b = compile(&[
        SourceFile {
            path: "a.yaml".into(),
            text: policy.into(),
        },
        SourceFile {
            path: "contracts/bulk.json".into(),
            text: bulk_schema.into(),
        },
    ])
    .expect("bulk bundle");
    let bulk_validator = b.apps[0].routes[0]
        .operation
        .as_ref()
        .and_then(|o| o.body.as_ref())
        .and_then(|b| b.json.clone())
        .expect("validator");
    let lines: Vec<_> = (0..1500).map(|i| json!({ "sku": format!("SKU-{:05}", i), "quantity": i % 40 + 1, "unit_price": 1.5, "note": null })).collect();
    let large = serde_json::to_vec(&json!({ "items": lines })).expect("json");
    assert!(
        check_json_body(&bulk_validator, &large, ViolationLocation::Body, 20)
            .expect("json")
            .is_empty()
    );

    let mut g = c.benchmark_group("request_validation");
    g.throughput(Throughput::Bytes(small.len() as u64));
    g.bench_function(format!("order_{}B", small.len()), |bench| {
        bench.iter(|| check_json_body(&validator, black_box(&small), ViolationLocation::Body, 20))
    });
    g.throughput(Throughput::Bytes(large.len() as u64));
    g.bench_function(format!("bulk_{}B", large.len()), |bench| {
        bench.iter(|| {
            check_json_body(
                &bulk_validator,
                black_box(&large),
                ViolationLocation::Body,
                20,
            )
        })
    });
    g.finish();
}

fn bench_routing(c: &mut Criterion) {
    let bundle = example_bundle();
    let mut g = c.benchmark_group("route_match");
    for (name, host, method, path) in [
        (
            "orders_get_by_id",
            "orders.corp.example",
            Method::GET,
            "/rest/orders/v1/orders/4711",
        ),
        (
            "approvals_wildcard",
            "eu.approvals.corp.example",
            Method::POST,
            "/approvals/17/approve",
        ),
        (
            "no_route",
            "orders.corp.example",
            Method::GET,
            "/rest/orders/v1/nope/1",
        ),
    ] {
        g.bench_function(name, |bench| {
            bench.iter(|| {
                bundle
                    .router
                    .route(&bundle.apps, black_box(host), &method, black_box(path))
            })
        });
    }
    g.finish();
}

fn bench_identity_and_limits(c: &mut Criterion) {
    use gatehouse::identity::{generate_key, hash_key, Consumer, ConsumerDirectory};
    use gatehouse::limits::{key_hash, GovernorStore, LimitKey, LimitRule, LimitStore, Rate};
    let keys: Vec<String> = (0..10_000).map(|_| generate_key()).collect();
    let consumers = (0..keys.len())
        .map(|i| {
            Consumer::new(
                &format!("c{i}"),
                &format!("c{i}"),
                Some("gold".into()),
                None,
            )
        })
        .collect();
    let dir = ConsumerDirectory::new(
        consumers,
        keys.iter()
            .enumerate()
            .map(|(i, k)| (hash_key(k), i))
            .collect(),
    );
    let rule = LimitRule {
        id: "plan:gold:per-second".into(),
        key: LimitKey::Consumer,
        rate: Rate::parse("1000000/s").expect("rate"),
        burst: 1_000_000,
    };
    let store = GovernorStore::new(&rule, governor::clock::DefaultClock::default());
    let mut g = c.benchmark_group("identity_and_limits");
    g.bench_function("key_lookup_10k_consumers", |b| {
        b.iter(|| dir.by_key(black_box(&keys[4242])))
    });
    g.bench_function("limit_check_hot_key", |b| {
        b.iter(|| store.check(key_hash(&rule.id, black_box(b"c4242"))))
    });
    let mut i = 0usize;
    g.bench_function("key_lookup_and_limit_check_10k_rotating", |b| {
        b.iter(|| {
            i = (i + 7) % keys.len();
            let idx = dir.by_key(&keys[i]).unwrap_or(0);
            store.check(key_hash(&rule.id, dir.consumers[idx].id.as_bytes()))
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_validation,
    bench_routing,
    bench_identity_and_limits
);
criterion_main!(benches);
