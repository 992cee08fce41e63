//! Request telemetry in a real ClickHouse: exact rows, outages, spool,
//! overflow, migrations and the report library.

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gatehouse_e2e::*;
use serde_json::Value;

const DB: &str = "gh";

fn telemetry_args<'a>(ch: &'a str, spool: &'a str) -> Vec<&'a str> {
    vec![
        "--clickhouse",
        ch,
        "--clickhouse-database",
        DB,
        "--migrate",
        "--spool-dir",
        spool,
        "--telemetry-flush-ms",
        "100",
        "--instance",
        "node-1",
    ]
}

fn policy(dir: &PolicyDir, instances: &[String], extra: &str) {
    let list = instances
        .iter()
        .map(|i| format!("\"{i}\""))
        .collect::<Vec<_>>()
        .join(", ");
    dir.write(
        "schemas/new.json",
        r#"{"type":"object","required":["workflow"]}"#,
    );
    dir.write(
        "app.yaml",
        &format!(
            "version: 1\napps:\n  - name: app\n    owner: o\n    hosts: [app.test]\n    upstream: {{ instances: [{list}] }}\n{extra}    auth: {{ mode: optional, api_key: {{ header: x-api-key }} }}\n    routes:\n      - {{ id: get-approval, method: GET, path: \"/approvals/{{id}}\" }}\n      - {{ id: history, method: GET, path: \"/approvals/{{id}}/history\" }}\n      - {{ id: create, method: POST, path: /approvals, request_schema: schemas/new.json }}\nplans:\n  - {{ name: tiny, limits: [ {{ name: burst, rate: 1/m, burst: 2 }} ] }}\n"
        ),
    );
}

/// One `approvals` app behind a gateway that sends its telemetry to a
/// fresh ClickHouse, spooling in a temporary directory; `extra` adds
/// gateway arguments. Bind `_keep` too (not `..`, which would drop it at
/// once): it keeps the app, the policy directory and the spool alive.
struct Estate {
    ch: ClickHouse,
    gw: Gateway,
    _keep: (Sim, PolicyDir, tempfile::TempDir),
}

fn estate(extra: &[&str]) -> Estate {
    estate_with("", extra)
}

/// [`estate`] with `app_extra` added to the app's policy.
fn estate_with(app_extra: &str, extra: &[&str]) -> Estate {
    let ch = ClickHouse::start();
    let sim = Sim::one("approvals");
    let dir = PolicyDir::new();
    policy(&dir, &[sim.url(0)], app_extra);
    let spool = tempfile::tempdir().unwrap();
    let url = ch.url();
    let mut args = telemetry_args(&url, spool.path().to_str().unwrap());
    args.extend(extra);
    let gw = Gateway::start(dir.path(), &args);
    Estate {
        ch,
        gw,
        _keep: (sim, dir, spool),
    }
}

fn report(ch: &ClickHouse, name: &str) -> Vec<Value> {
    let out = Command::new(bin("gatehouse"))
        .args([
            "report",
            name,
            "--clickhouse",
            &ch.url(),
            "--database",
            DB,
            "--since",
            "1h",
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap()
        .as_array()
        .cloned()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_one_row_and_the_reports_find_the_bottlenecks() {
    let ch = ClickHouse::start();
    let fast = Sim::one("approvals");
    let slow = Sim::start(&[("approvals", "127.0.0.1:0")], &["--latency", "15"]);
    let dir = PolicyDir::new();
    policy(&dir, &[fast.url(0), slow.url(0)], "");
    let (heavy, heavy_key) = new_consumer(&["--id", "heavy"]);
    let (limited, limited_key) = new_consumer(&["--id", "limited", "--plan", "tiny"]);
    dir.write("heavy.yaml", &heavy);
    dir.write("limited.yaml", &limited);
    let spool = tempfile::tempdir().unwrap();
    let url = ch.url();
    let gw = Gateway::start(
        dir.path(),
        &telemetry_args(&url, spool.path().to_str().unwrap()),
    );
    let c = client();
    let base = gw.url();
    let get = |path: String| c.get(format!("{base}{path}")).header("host", "app.test");

    for i in 1..=60 {
        assert_eq!(
            get(format!("/approvals/{i}"))
                .header("x-api-key", &heavy_key)
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    for i in 1..=20 {
        assert_eq!(
            get(format!("/approvals/{i}/history"))
                .header("x-sim-delay-ms", "60")
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    for _ in 0..10 {
        assert_eq!(get("/nope".into()).send().await.unwrap().status(), 404);
    }
    for _ in 0..5 {
        let r = c
            .post(format!("{base}/approvals"))
            .header("host", "app.test")
            .header("x-api-key", &heavy_key)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
    }
    let mut statuses = Vec::new();
    for i in 1..=5 {
        statuses.push(
            get(format!("/approvals/{i}"))
                .header("x-api-key", &limited_key)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses, vec![200, 200, 429, 429, 429]);

    let total = |ch: &ClickHouse| ch.count(&format!("SELECT count() FROM {DB}.requests"));
    assert!(
        eventually(Duration::from_secs(15), || total(&ch) == 100),
        "rows: {}",
        total(&ch)
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(total(&ch), 100, "exactly one row per request");
    assert_eq!(
        ch.count(&format!("SELECT uniqExact(request_id) FROM {DB}.requests")),
        100
    );
    let version = gw.policy_version();
    let checks = [
        ("route = 'get-approval' AND status = 200 AND consumer = 'heavy' AND outcome = 'ok'", 60),
        ("route = 'history' AND upstream_total_us >= 60000 AND consumer = ''", 20),
        ("status = 404 AND outcome = 'not_found' AND app = 'app'", 10),
        ("route = 'create' AND status = 400 AND outcome = 'contract_violation' AND request_verdict = 'invalid' AND violations LIKE 'body::required%'", 5),
        ("status = 429 AND outcome = 'rate_limited' AND rejected_by = 'plan:tiny:burst' AND consumer = 'limited'", 3),
        ("upstream_total_us > total_us", 0),
        ("auth_us + limits_us + request_validation_us + upstream_total_us + response_validation_us > total_us", 0),
        ("status = 200 AND (upstream = '' OR attempts != 1 OR upstream_ttfb_us = 0 OR upstream_ttfb_us > upstream_total_us)", 0),
        ("status = 200 AND bytes_out = 0", 0),
        ("instance != 'node-1' OR method = '' OR client_ip != '127.0.0.1' OR time_us = 0", 0),
    ];
    for (cond, expected) in checks {
        assert_eq!(
            ch.count(&format!("SELECT count() FROM {DB}.requests WHERE {cond}")),
            expected,
            "{cond}"
        );
    }
    assert_eq!(
        ch.count(&format!(
            "SELECT count() FROM {DB}.requests WHERE policy_version = '{version}'"
        )),
        100
    );
    // The rollup view follows.
    assert_eq!(
        ch.count(&format!(
            "SELECT toUInt64(countMerge(requests)) FROM {DB}.requests_1m"
        )),
        100
    );

    // The report library on these rows.
    let slowest = report(&ch, "slowest_routes");
    assert_eq!(slowest[0]["route"], "history", "{slowest:?}");
    let outliers = report(&ch, "upstream_outliers");
    assert_eq!(
        outliers[0]["upstream"],
        slow.url(0).as_str(),
        "{outliers:?}"
    );
    assert!(outliers[0]["ratio"].as_f64().unwrap() > 1.0);
    let errors = report(&ch, "error_hotspots");
    assert!(
        errors
            .iter()
            .any(|r| r["outcome"] == "not_found" && r["failures"] == 10),
        "{errors:?}"
    );
    let violations = report(&ch, "contract_violations");
    assert!(
        violations
            .iter()
            .any(|r| r["route"] == "create" && r["refused"] == 5),
        "{violations:?}"
    );
    let limited_rows = report(&ch, "rate_limited_consumers");
    assert_eq!(
        (
            limited_rows[0]["caller"].as_str(),
            limited_rows[0]["refused"].as_u64()
        ),
        (Some("limited"), Some(3)),
        "{limited_rows:?}"
    );
    let heaviest = report(&ch, "heaviest_consumers");
    assert_eq!(
        (
            heaviest[0]["caller"].as_str(),
            heaviest[0]["requests"].as_u64()
        ),
        (Some("heavy"), Some(65)),
        "{heaviest:?}"
    );
    assert!(heaviest
        .iter()
        .any(|r| r["caller"] == "anonymous" && r["requests"] == 30));
    let split = report(&ch, "gateway_vs_upstream");
    assert!(split.iter().any(|r| r["route"] == "history"));

    // A policy change shows up as a second version in policy_change.
    policy(&dir, &[fast.url(0), slow.url(0)], "    retries: 1\n");
    assert!(eventually(Duration::from_secs(5), || gw.policy_version() != version));
    for i in 1..=10 {
        assert_eq!(
            get(format!("/approvals/{i}"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    assert!(eventually(Duration::from_secs(10), || total(&ch) == 110));
    let versions = report(&ch, "policy_change");
    assert_eq!(versions.len(), 2, "{versions:?}");
    assert_eq!(versions[0]["policy_version"], version.as_str());
    assert_eq!(versions[1]["requests"], 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clickhouse_outage_loses_nothing_and_costs_no_request() {
    let Estate { mut ch, gw, _keep } = estate(&[]);
    let (ok, failed, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let load = {
        let (ok, failed, stop, base) = (ok.clone(), failed.clone(), stop.clone(), gw.url());
        tokio::spawn(async move {
            let c = client();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                match c
                    .get(format!("{base}/approvals/{}", i % 500 + 1))
                    .header("host", "app.test")
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    ch.stop();
    let during_start = ok.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(30)).await;
    let during = ok.load(Ordering::Relaxed) - during_start;
    let metrics = http_get(gw.admin, "/metrics", "admin");
    assert!(
        metrics.contains("gatehouse_telemetry_events_total{result=\"spooled\"}"),
        "{metrics}"
    );
    ch.restart();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let sent = ok.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed);
    assert_eq!(failed.load(Ordering::Relaxed), 0, "the proxy kept serving");
    assert!(during > 1000, "traffic flowed during the outage: {during}");
    let rows = || ch.count(&format!("SELECT count() FROM {DB}.requests"));
    assert!(
        eventually(Duration::from_secs(30), || rows() == sent),
        "rows {} of {sent}",
        rows()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(rows(), sent);
    assert_eq!(
        ch.count(&format!("SELECT uniqExact(request_id) FROM {DB}.requests")),
        sent,
        "no duplicates"
    );
}

#[tokio::test]
async fn a_spool_left_by_a_stopped_gateway_is_replayed_by_the_next() {
    let mut ch = ClickHouse::start();
    let sim = Sim::one("approvals");
    let dir = PolicyDir::new();
    policy(&dir, &[sim.url(0)], "");
    let spool = tempfile::tempdir().unwrap();
    let spool_path = spool.path().to_str().unwrap().to_string();
    let url = ch.url();
    let mut gw = Gateway::start(dir.path(), &telemetry_args(&url, &spool_path));
    ch.stop();
    let c = client();
    for i in 1..=50 {
        assert_eq!(
            c.get(format!("{}/approvals/{i}", gw.url()))
                .header("host", "app.test")
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    gw.signal("TERM");
    assert!(gw
        .wait_exit(Duration::from_secs(20))
        .is_some_and(|s| s.success()));
    let files = std::fs::read_dir(spool.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "jsonl"))
        .count();
    assert!(files > 0, "the batches were spooled");
    // Keep a copy: replaying it again below is a crash between a successful
    // insert and the deletion of its spool file.
    let copies: Vec<(std::path::PathBuf, Vec<u8>)> = std::fs::read_dir(spool.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    ch.restart();
    let spool_empty = || {
        std::fs::read_dir(spool.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .all(|e| e.path().extension().is_none_or(|x| x != "jsonl"))
    };
    let rows = || ch.count(&format!("SELECT count() FROM {DB}.requests"));
    {
        let _gw2 = Gateway::start(dir.path(), &telemetry_args(&url, &spool_path));
        assert!(eventually(Duration::from_secs(15), || rows() == 50));
        assert!(eventually(Duration::from_secs(5), spool_empty));
    }
    for (path, bytes) in &copies {
        std::fs::write(path, bytes).unwrap();
    }
    let gw3 = Gateway::start(dir.path(), &telemetry_args(&url, &spool_path));
    assert!(
        eventually(Duration::from_secs(15), spool_empty),
        "replayed again"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(rows(), 50, "rows already stored are not inserted twice");
    assert_eq!(
        ch.count(&format!("SELECT uniqExact(request_id) FROM {DB}.requests")),
        50
    );
    assert!(
        gw3.log_text().contains("not inserting those rows again"),
        "{}",
        gw3.log_text()
    );
}

/// A spooled batch is replayed whole however long its request ids: the
/// lookup of the rows ClickHouse already holds is asked in chunks that
/// stay under ClickHouse's query size cap (one query for 2 000 ids of 200
/// bytes was refused, and the batch moved aside as dead).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_spooled_batch_of_long_request_ids_is_replayed_whole() {
    let mut ch = ClickHouse::start();
    let sim = Sim::one("approvals");
    let dir = PolicyDir::new();
    policy(&dir, &[sim.url(0)], "");
    let spool = tempfile::tempdir().unwrap();
    let spool_path = spool.path().to_str().unwrap().to_string();
    let url = ch.url();
    let mut args = telemetry_args(&url, &spool_path);
    // One batch for the whole burst.
    args.retain(|a| *a != "100");
    args.retain(|a| *a != "--telemetry-flush-ms");
    args.extend(["--telemetry-flush-ms", "4000"]);
    let gw = Gateway::start(dir.path(), &args);
    ch.kill();
    let c = client();
    let n = 2000;
    let mut sends = Vec::new();
    for i in 0..n {
        // 200 bytes, with quotes that the query must escape.
        let id = format!("long-'{i}-{}", "x".repeat(200))[..200].to_string();
        let (c, url) = (c.clone(), gw.url());
        sends.push(tokio::spawn(async move {
            c.get(format!("{url}/approvals/{}", i % 90 + 1))
                .header("host", "app.test")
                .header("x-request-id", id)
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
        if sends.len() >= 64 {
            for s in sends.drain(..) {
                assert_eq!(s.await.unwrap().unwrap(), 200);
            }
        }
    }
    for s in sends {
        assert_eq!(s.await.unwrap().unwrap(), 200);
    }
    let spooled = || {
        std::fs::read_dir(spool.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| e.path().extension().is_some_and(|x| x == "jsonl"))
    };
    assert!(eventually(Duration::from_secs(15), spooled), "spooled");
    ch.start_again();
    let rows = || {
        ch.count(&format!(
            "SELECT uniqExact(request_id) FROM {DB}.requests WHERE request_id LIKE 'long-%'"
        ))
    };
    assert!(
        eventually(Duration::from_secs(30), || rows() == n),
        "{} of {n} rows; log:\n{}",
        rows(),
        gw.log_text()
    );
    assert!(
        !spool.path().join("dead").exists(),
        "no batch was moved aside"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_events_and_counts_them() {
    // One slot: the sink takes events every 10 ms, so two requests within
    // a tick fill it whatever the machine's speed.
    let Estate { ch, gw, _keep } = estate(&["--telemetry-queue", "1", "--telemetry-batch", "1"]);
    ch.signal("STOP"); // inserts hang: the batcher stalls and the queue fills
    let c = client();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (c, base) = (c.clone(), gw.url());
        tasks.push(tokio::spawn(async move {
            c.get(format!("{base}/approvals/{}", i + 1))
                .header("host", "app.test")
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    for t in tasks {
        assert_eq!(
            t.await.unwrap().unwrap(),
            200,
            "the proxy never waits for telemetry"
        );
    }
    let metrics = http_get(gw.admin, "/metrics", "admin");
    ch.signal("CONT");
    let dropped: u64 = metrics
        .lines()
        .find(|l| l.starts_with("gatehouse_telemetry_events_total{result=\"dropped_queue_full\"}"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(dropped > 0, "{metrics}");
    assert!(gw.log_text().is_empty() || !gw.log_text().contains("panicked"));
}

#[test]
fn migrations_are_idempotent_and_a_wrong_schema_is_refused() {
    let ch = ClickHouse::start();
    let run = |args: &[&str]| Command::new(bin("gatehouse")).args(args).output().unwrap();
    let url = ch.url();
    let first = run(&["db", "migrate", "--clickhouse", &url, "--database", "m1"]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(String::from_utf8_lossy(&first.stdout).contains("applied migrations [1, 2, 3, 4]"));
    let again = run(&["db", "migrate", "--clickhouse", &url, "--database", "m1"]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("schema up to date"));
    assert_eq!(ch.count("SELECT count() FROM m1.gatehouse_migrations"), 4);

    // Retention drops whole days older than the cut-off, in both tables.
    ch.query("INSERT INTO m1.requests (time, request_id, app, route) VALUES (now() - 10 * 86400, 'old', 'a', 'r'), (now(), 'new', 'a', 'r')");
    assert_eq!(
        ch.count("SELECT toUInt64(countMerge(requests)) FROM m1.requests_1m"),
        2
    );
    let kept = run(&[
        "db",
        "retention",
        "--clickhouse",
        &url,
        "--database",
        "m1",
        "--days",
        "7",
    ]);
    assert!(
        kept.status.success(),
        "{}",
        String::from_utf8_lossy(&kept.stderr)
    );
    assert!(
        String::from_utf8_lossy(&kept.stdout).contains("dropped 2 partition(s)"),
        "{}",
        String::from_utf8_lossy(&kept.stdout)
    );
    assert_eq!(ch.query("SELECT request_id FROM m1.requests").trim(), "new");
    assert_eq!(
        ch.count("SELECT toUInt64(countMerge(requests)) FROM m1.requests_1m"),
        1
    );

    ch.query("CREATE DATABASE wrong");
    ch.query("CREATE TABLE wrong.requests (time DateTime, app String, status String) ENGINE = MergeTree ORDER BY time");
    let check = run(&["db", "check", "--clickhouse", &url, "--database", "wrong"]);
    assert!(!check.status.success());
    let err = String::from_utf8_lossy(&check.stderr);
    assert!(
        err.contains("column `status` is String (expected UInt16)")
            && err.contains("column `request_id` is missing"),
        "{err}"
    );

    let dir = PolicyDir::new();
    policy(&dir, &["http://127.0.0.1:9".to_string()], "");
    let serve = Command::new(bin("gatehouse"))
        .args(["serve", "--policies"])
        .arg(dir.path())
        .args([
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--admin-listen",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .args(["--clickhouse", &url, "--clickhouse-database", "wrong"])
        .output()
        .unwrap();
    assert!(!serve.status.success());
    assert!(
        String::from_utf8_lossy(&serve.stderr).contains("does not match this version of Gatehouse"),
        "{}",
        String::from_utf8_lossy(&serve.stderr)
    );
    let missing = run(&[
        "db",
        "check",
        "--clickhouse",
        &url,
        "--database",
        "nothing_here",
    ]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("run `gatehouse db migrate`"));
}

#[tokio::test]
async fn a_stalled_clickhouse_fills_the_spool_not_the_queue() {
    // ClickHouse stops answering (SIGSTOP: connections are accepted, inserts
    // hang) while the queue holds only 300 events: the sink keeps taking
    // events off the queue during the hung insert and spools them, so none
    // is dropped; everything arrives once ClickHouse resumes.
    let Estate { ch, gw, _keep } =
        estate(&["--telemetry-queue", "300", "--telemetry-batch", "100"]);
    ch.signal("STOP");
    let sent = 3000u64;
    let mut tasks = Vec::new();
    for worker in 0..8u64 {
        let base = gw.url();
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut ok = 0u64;
            for i in 0..sent / 8 {
                let r = c
                    .get(format!(
                        "{base}/approvals/{}",
                        (worker * 1000 + i) % 500 + 1
                    ))
                    .header("host", "app.test")
                    .send()
                    .await;
                if r.is_ok_and(|r| r.status() == 200) {
                    ok += 1;
                }
            }
            ok
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap();
    }
    assert_eq!(ok, sent, "the proxy kept serving");
    let metrics = http_get(gw.admin, "/metrics", "admin");
    let sample = |name: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "gatehouse_telemetry_events_total{{result=\"{name}\"}}"
                ))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
    };
    assert_eq!(sample("dropped_queue_full"), 0, "{metrics}");
    assert!(sample("spooled") > 0, "events went to the spool: {metrics}");
    ch.signal("CONT");
    let rows = || ch.count(&format!("SELECT count() FROM {DB}.requests"));
    assert!(
        eventually(Duration::from_secs(60), || rows() == sent),
        "rows {} of {sent}",
        rows()
    );
    assert_eq!(
        ch.count(&format!("SELECT uniqExact(request_id) FROM {DB}.requests")),
        sent,
        "no duplicates"
    );
}

/// A breaker that opens, probes and closes again is three rows of `fence_events`
/// (with why), the requests it answered for are `breaker_open` events, and
/// the `fences` and `breaker_events` reports show both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_changes_and_fenced_requests_reach_clickhouse_and_the_reports() {
    let Estate { ch, gw, _keep } = estate_with(
        "    timeouts: { connect: 1s, read: 200ms, total: 1s }\n    retries: 0\n    resilience: { breaker: { cool_down: 1s } }\n",
        &[],
    );
    let c = client();
    let get = |delay_ms: u64| {
        c.get(format!("{}/approvals/1", gw.url()))
            .header("host", "app.test")
            .header("x-sim-delay-ms", delay_ms.to_string())
            .send()
    };
    // Twenty requests time out: the route's breaker opens.
    let hung: Vec<_> = (0..20).map(|_| tokio::spawn(get(1_000))).collect();
    for r in hung {
        assert_eq!(r.await.unwrap().unwrap().status(), 504);
    }
    let refused = get(0).await.unwrap();
    assert_eq!(refused.status(), 503);
    // After the cool-down, the probes find the app well: closed again.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    for _ in 0..3 {
        assert_eq!(get(0).await.unwrap().status(), 200);
    }
    assert!(
        eventually(Duration::from_secs(10), || ch
            .count(&format!("SELECT count() FROM {DB}.fence_events"))
            == 3),
        "{}",
        ch.query(&format!("SELECT * FROM {DB}.fence_events FORMAT TSV"))
    );
    let rows = ch.query(&format!(
        "SELECT instance, app, route, from_state, to_state, reason FROM {DB}.fence_events ORDER BY time_us FORMAT TSV"
    ));
    let lines: Vec<&str> = rows.lines().collect();
    assert!(
        lines[0].starts_with("node-1\tapp\tget-approval\tclosed\topen\t20 ")
            && lines[0].contains("failed"),
        "{rows}"
    );
    assert!(
        lines[1].starts_with("node-1\tapp\tget-approval\topen\thalf_open\tthe cool-down passed"),
        "{rows}"
    );
    assert!(
        lines[2].starts_with("node-1\tapp\tget-approval\thalf_open\tclosed\tthe probes succeeded"),
        "{rows}"
    );
    assert!(eventually(Duration::from_secs(10), || ch.count(&format!(
        "SELECT count() FROM {DB}.requests WHERE outcome = 'breaker_open'"
    )) == 1));
    let fences = report(&ch, "fences");
    assert_eq!(fences.len(), 1, "{fences:?}");
    assert_eq!(fences[0]["app"], "app");
    assert_eq!(
        fences[0]["breaker_openings"].to_string().trim_matches('"'),
        "1"
    );
    assert_eq!(fences[0]["breaker_open"].to_string().trim_matches('"'), "1");
    let events = report(&ch, "breaker_events");
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(events[0]["to_state"], "closed", "newest first");
}
