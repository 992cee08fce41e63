//! Criterion benches of event encoding: `cargo bench -p gatehouse --bench telemetry`.
//!
//! - `rowbinary_insert`: one wide event written to a `clickhouse` crate
//!   `Insert` (RowBinary serialisation, buffering, and the amortised cost of
//!   streaming the buffer to a server), against a local HTTP server that
//!   drains the body and answers 200 — the sink's real encoding path without
//!   ClickHouse's own work;
//! - `spool_json`: the same event encoded as a spool line (JSON), the path
//!   taken only while ClickHouse is away.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gatehouse::telemetry::RequestEvent;

fn event() -> RequestEvent {
    RequestEvent {
        time: 1_800_000_000,
        time_us: 1_800_000_000_123_456,
        request_id: "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".into(),
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
        instance: "gw-eu-1".into(),
        policy_version: "b94f5aeec2cb66e2d2b04dffd65bec28dbc1ee2f3a711a60df601c8ba6bc1901".into(),
        app: "orders".into(),
        route: "createOrder".into(),
        method: "POST".into(),
        status: 201,
        consumer: "erp-batch".into(),
        outcome: "ok".into(),
        rejected_by: String::new(),
        request_verdict: "valid".into(),
        response_verdict: "valid".into(),
        violations: String::new(),
        bytes_in: 1024,
        bytes_out: 311,
        client_ip: "10.20.30.40".into(),
        upstream: "http://10.0.4.17:8080".into(),
        attempts: 1,
        total_us: 1840,
        gateway_us: 96,
        auth_us: 2,
        limits_us: 1,
        request_validation_us: 13,
        upstream_connect_us: 0,
        upstream_ttfb_us: 1650,
        upstream_total_us: 1720,
        response_validation_us: 9,
    }
}

/// An HTTP server that drains every request body and answers 200.
fn black_hole(rt: &tokio::runtime::Runtime) -> String {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().fallback(|body: axum::body::Bytes| async move {
        black_box(body.len());
        ""
    });
    rt.spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn bench_encoding(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let url = black_hole(&rt);
    let client = gatehouse::telemetry::client(&url, "gatehouse");
    let ev = event();

    let mut g = c.benchmark_group("event_encoding");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("rowbinary_insert", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                // One INSERT per 4 000 rows (≈ 1 MB), like the sink's
                // batches; only the writes are timed.
                let mut took = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let n = left.min(4_000);
                    left -= n;
                    let mut insert = client
                        .insert::<RequestEvent>("requests")
                        .await
                        .expect("insert");
                    let start = Instant::now();
                    for _ in 0..n {
                        insert.write(black_box(&ev)).await.expect("write");
                    }
                    took += start.elapsed();
                    insert.end().await.expect("end");
                }
                took
            })
        })
    });
    g.bench_function("spool_json", |b| {
        let mut buf = Vec::with_capacity(1 << 20);
        b.iter(|| {
            if buf.len() > (1 << 20) - 1024 {
                buf.clear();
            }
            serde_json::to_writer(&mut buf, black_box(&ev)).expect("json");
            buf.push(b'\n');
        })
    });
    g.finish();
}

criterion_group!(benches, bench_encoding);
criterion_main!(benches);
