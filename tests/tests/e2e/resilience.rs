//! Dead, slow and unhealthy upstreams.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse_e2e::*;
use serde_json::Value;

const ROUTE: &str = "      - { method: GET, path: \"/approvals/{id}\" }\n      - { method: POST, path: /approvals }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_an_instance_under_load_fails_no_request_and_it_rejoins() {
    let a = Sim::one("approvals");
    let mut b = Sim::one("approvals");
    let c3 = Sim::one("approvals");
    let b_addr = b.addrs[0];
    let urls = vec![a.url(0), b.url(0), c3.url(0)];
    let dir = PolicyDir::new();
    dir.write(
        "a.yaml",
        &app_policy(
            "app",
            "app.test",
            &urls,
            "      health_check: { path: /health, interval: 200ms, timeout: 100ms, healthy_threshold: 1, unhealthy_threshold: 1 }\n      ejection: { consecutive_failures: 1, duration: 5s }\n    retries: 2",
            ROUTE,
        ),
    );
    let gw = Gateway::start(dir.path(), &[]);
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..6 {
        let (ok, failed, stop, url) = (ok.clone(), failed.clone(), stop.clone(), gw.url());
        workers.push(tokio::spawn(async move {
            let c = client();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let r = c
                    .get(format!("{url}/approvals/{}", w * 1000 + i % 900 + 1))
                    .header("host", "app.test")
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    Ok(r) => {
                        eprintln!(
                            "failed: {} {}",
                            r.status(),
                            r.text().await.unwrap_or_default()
                        );
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(e) => {
                        eprintln!("failed: {e}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let before_kill = ok.load(Ordering::Relaxed);
    b.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let apps = gw.admin_json("/v1/apps");
    let killed = &apps["apps"][0]["instances"][1];
    assert_eq!(killed["available"], false, "{killed}");
    // Restart on the same port: it must rejoin.
    let b2 = Sim::start(&[("approvals", &b_addr.to_string())], &[]);
    let rejoined = eventually(Duration::from_secs(5), || b2.requests(0) > 0);
    let apps_after = gw.admin_json("/v1/apps");
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(failed, 0, "{failed} failed requests ({ok} ok)");
    assert!(
        before_kill > 50 && ok > before_kill * 2,
        "steady load: {before_kill} before the kill, {ok} in all"
    );
    assert!(
        rejoined,
        "the restarted instance got traffic again: {apps_after}"
    );
}

#[tokio::test]
async fn a_slow_upstream_gets_504_within_the_timeout() {
    let sim = Sim::one("approvals");
    let dir = PolicyDir::new();
    dir.write(
        "a.yaml",
        &app_policy(
            "app",
            "app.test",
            &[sim.url(0)],
            "    timeouts: { connect: 500ms, read: 500ms, total: 5s }",
            ROUTE,
        ),
    );
    dir.write(
        "b.yaml",
        &app_policy(
            "total",
            "total.test",
            &[sim.url(0)],
            "    timeouts: { connect: 500ms, read: 700ms, total: 700ms }",
            ROUTE,
        ),
    );
    let gw = Gateway::start(dir.path(), &[]);
    let c = client();
    for (host, timeout_ms) in [("app.test", 500u128), ("total.test", 700)] {
        let start = Instant::now();
        let r = c
            .get(format!("{}/approvals/1", gw.url()))
            .header("host", host)
            .header("x-sim-delay-ms", "3000")
            .send()
            .await
            .unwrap();
        let took = start.elapsed().as_millis();
        assert_eq!(r.status(), 504, "{host}");
        let p: Value = r.json().await.unwrap();
        assert_eq!(p["type"], "https://gatehouse.dev/problems/upstream-timeout");
        assert!(
            took >= timeout_ms && took <= timeout_ms + 100,
            "{host}: 504 after {took} ms, timeout {timeout_ms} ms"
        );
    }
    // A quick request still works on the same app.
    let r = c
        .get(format!("{}/approvals/1", gw.url()))
        .header("host", "app.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn unreachable_and_unhealthy_upstreams_give_502_and_503() {
    let closed = format!("http://127.0.0.1:{}", free_port());
    let dir = PolicyDir::new();
    dir.write(
        "a.yaml",
        &app_policy(
            "dead",
            "dead.test",
            std::slice::from_ref(&closed),
            "      ejection: { consecutive_failures: 0 }",
            ROUTE,
        ),
    );
    dir.write(
        "b.yaml",
        &app_policy(
            "sick",
            "sick.test",
            &[closed],
            "      health_check: { path: /health, interval: 100ms, timeout: 50ms, unhealthy_threshold: 1 }",
            ROUTE,
        ),
    );
    let gw = Gateway::start(dir.path(), &[]);
    let c = client();
    let r = c
        .get(format!("{}/approvals/1", gw.url()))
        .header("host", "dead.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let p: Value = r.json().await.unwrap();
    assert_eq!(
        p["type"],
        "https://gatehouse.dev/problems/upstream-unreachable"
    );
    assert!(
        !p.to_string().contains("127.0.0.1"),
        "no internal address leaks: {p}"
    );

    assert!(eventually(Duration::from_secs(3), || {
        gw.admin_json("/v1/apps")["apps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["name"] == "sick" && a["instances"][0]["healthy"] == false)
    }));
    let r = c
        .get(format!("{}/approvals/1", gw.url()))
        .header("host", "sick.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let p: Value = r.json().await.unwrap();
    assert_eq!(
        p["type"],
        "https://gatehouse.dev/problems/no-healthy-instance"
    );
}
