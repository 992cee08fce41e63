//! Hot reload, rejected edits, SIGHUP and graceful shutdown.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse_e2e::*;

const ONE_ROUTE: &str = "      - { method: GET, path: \"/approvals/{id}\" }";
const TWO_ROUTES: &str =
    "      - { method: GET, path: \"/approvals/{id}\" }\n      - { method: GET, path: /workflows }";

struct Load {
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
}

fn steady_load(url: String, host: &'static str, workers: usize) -> Load {
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let workers = (0..workers)
        .map(|w| {
            let (ok, failed, stop, url) = (ok.clone(), failed.clone(), stop.clone(), url.clone());
            tokio::spawn(async move {
                let c = client();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let r = c
                        .get(format!("{url}/approvals/{}", w * 100 + i % 90 + 1))
                        .header("host", host)
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        other => {
                            eprintln!("failed request: {other:?}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    Load {
        ok,
        failed,
        stop,
        workers,
        started: Instant::now(),
    }
}

impl Load {
    async fn finish(self) -> (u64, u64, f64) {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.workers {
            w.await.unwrap();
        }
        let secs = self.started.elapsed().as_secs_f64();
        let ok = self.ok.load(Ordering::Relaxed);
        (ok, self.failed.load(Ordering::Relaxed), ok as f64 / secs)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_under_load_drops_nothing_and_serves_the_new_route() {
    let sim = Sim::start(
        &[("approvals", "127.0.0.1:0"), ("approvals", "127.0.0.1:0")],
        &[],
    );
    let urls = vec![sim.url(0), sim.url(1)];
    let dir = PolicyDir::new();
    dir.write(
        "a.yaml",
        &app_policy("app", "app.test", &urls, "", ONE_ROUTE),
    );
    let gw = Gateway::start(dir.path(), &[]);
    let v1 = gw.policy_version();
    let c = client();
    let workflows = || {
        c.get(format!("{}/workflows", gw.url()))
            .header("host", "app.test")
            .send()
    };
    assert_eq!(workflows().await.unwrap().status(), 404);

    let load = steady_load(gw.url(), "app.test", 6);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    dir.write(
        "a.yaml",
        &app_policy("app", "app.test", &urls, "", TWO_ROUTES),
    );
    let mut new_route_ok = false;
    for _ in 0..100 {
        if workflows().await.unwrap().status() == 200 {
            new_route_ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Keep the load on across a second reload (back and forth).
    dir.write(
        "a.yaml",
        &app_policy("app", "app.test", &urls, "    retries: 1", TWO_ROUTES),
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (ok, failed, rps) = load.finish().await;
    assert!(new_route_ok, "the new route answers after the reload");
    assert_eq!(
        failed, 0,
        "{failed} requests failed across reloads ({ok} ok)"
    );
    assert!(rps >= 200.0, "the load was at least 200 req/s: {rps:.0}");
    let policy = gw.admin_json("/v1/policy");
    assert_ne!(policy["version"], v1.as_str());
    assert_eq!(policy["reloads"]["activated"], 3, "{policy}");
}

#[tokio::test]
async fn an_invalid_edit_keeps_the_old_version_serving() {
    let sim = Sim::one("approvals");
    let dir = PolicyDir::new();
    dir.write(
        "a.yaml",
        &app_policy("app", "app.test", &[sim.url(0)], "", ONE_ROUTE),
    );
    let gw = Gateway::start(dir.path(), &[]);
    let v1 = gw.policy_version();
    let c = client();

    dir.write("a.yaml", "version: 1\napps:\n  - name: app\n    owner: x\n    hosts: [app.test]\n    upstream: { instances: [\"ftp://nowhere\"] }\n    routes: [ { method: GET, path: \"/approvals/{id\" } ]\n");
    assert!(eventually(Duration::from_secs(15), || gw
        .admin_json("/v1/policy")["reloads"]["rejected"]
        == 1));
    let policy = gw.admin_json("/v1/policy");
    assert_eq!(policy["version"], v1.as_str());
    let errors = policy["reloads"]["last_rejection_errors"].to_string();
    assert!(
        errors.contains("a.yaml: /apps/0/upstream/instances/0"),
        "{errors}"
    );
    // An editor's swap and backup files are not policy files: writing
    // them does not judge the (still broken) bundle again. Five times the
    // watcher's debounce is long enough for a reload to have counted.
    std::fs::write(dir.path().join(".a.yaml.swp"), "swap").unwrap();
    std::fs::write(dir.path().join("a.yaml~"), "backup").unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(gw.admin_json("/v1/policy")["reloads"]["rejected"], 1);
    let r = c
        .get(format!("{}/approvals/3", gw.url()))
        .header("host", "app.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the old version keeps serving");
    let log = gw.log_text();
    assert!(log.contains("policy reload rejected"), "{log}");
    assert!(
        log.contains("/apps/0/routes/0/path"),
        "every error is logged: {log}"
    );
}

#[tokio::test]
async fn sighup_reloads_when_watching_is_off() {
    let sim = Sim::one("approvals");
    let dir = PolicyDir::new();
    dir.write(
        "a.yaml",
        &app_policy("app", "app.test", &[sim.url(0)], "", ONE_ROUTE),
    );
    let gw = Gateway::start(dir.path(), &["--no-watch"]);
    let v1 = gw.policy_version();
    dir.write(
        "a.yaml",
        &app_policy("app", "app.test", &[sim.url(0)], "", TWO_ROUTES),
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        gw.policy_version(),
        v1,
        "no watcher: nothing changes by itself"
    );
    gw.signal("HUP");
    assert!(eventually(Duration::from_secs(5), || gw.policy_version() != v1));
    let r = client()
        .get(format!("{}/workflows", gw.url()))
        .header("host", "app.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits() {
    let sim = Sim::one("approvals");
    let dir = PolicyDir::new();
    dir.write(
        "a.yaml",
        &app_policy("app", "app.test", &[sim.url(0)], "", ONE_ROUTE),
    );
    let mut gw = Gateway::start(dir.path(), &["--drain-timeout", "10"]);
    let url = gw.url();
    let slow: Vec<_> = (0..5)
        .map(|i| {
            let url = url.clone();
            tokio::spawn(async move {
                let r = client()
                    .get(format!("{url}/approvals/{}", i + 1))
                    .header("host", "app.test")
                    .header("x-sim-delay-ms", "1500")
                    .send()
                    .await?;
                Ok::<u16, reqwest::Error>(r.status().as_u16())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let signalled = Instant::now();
    gw.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Draining: not ready, and no new connections.
    let ready = try_http_get(gw.admin, "/readyz", "admin");
    assert_eq!(ready.map(|r| r.0), Some(503), "readyz reports the drain");
    assert!(
        std::net::TcpStream::connect(gw.addr).is_err(),
        "the proxy listener is closed"
    );
    for s in slow {
        assert_eq!(s.await.unwrap().expect("in-flight request completes"), 200);
    }
    let status = gw
        .wait_exit(Duration::from_secs(5))
        .expect("exits once drained");
    assert!(status.success(), "{status:?}");
    assert!(
        signalled.elapsed() < Duration::from_secs(4),
        "did not wait for the full drain timeout: {:?}",
        signalled.elapsed()
    );
}

#[tokio::test]
async fn an_upgrade_that_cannot_serve_leaves_the_running_gateway_in_place() {
    let sim = Sim::one("approvals");
    let dir = PolicyDir::new();
    dir.write(
        "a.yaml",
        &app_policy("app", "app.test", &[sim.url(0)], "", ONE_ROUTE),
    );
    let gw = Gateway::start(dir.path(), &[]);
    let v1 = gw.policy_version();
    assert!(eventually(Duration::from_secs(5), || gw
        .run_dir
        .join("gatehouse.pid")
        .exists()));
    // A successor whose policy does not compile never asks for the listeners.
    let broken = PolicyDir::new();
    broken.write("a.yaml", "version: 1\napps: [ { name: x } ]\n");
    let (code, _, err) = cli(
        &[
            "serve",
            "--policies",
            broken.path().to_str().unwrap(),
            "--listen",
            &gw.addr.to_string(),
            "--admin-listen",
            &gw.admin.to_string(),
            "--run-dir",
            gw.run_dir.to_str().unwrap(),
            "--upgrade",
        ],
        &[],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("does not compile"), "{err}");
    assert_eq!(gw.policy_version(), v1, "the running gateway still serves");
    let r = client()
        .get(format!("{}/approvals/1", gw.url()))
        .header("host", "app.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A second plain start on the same run dir is refused, pointing at
    // --upgrade (it would otherwise fail to bind, and record its pid).
    let (code, _, err) = cli(
        &[
            "serve",
            "--policies",
            dir.path().to_str().unwrap(),
            "--listen",
            &gw.addr.to_string(),
            "--run-dir",
            gw.run_dir.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("replace it with --upgrade"), "{err}");
    // Nothing to take over from: said plainly.
    let lonely = format!("127.0.0.1:{}", free_port());
    let empty = tempfile::tempdir().unwrap();
    let (code, _, err) = cli(
        &[
            "serve",
            "--policies",
            dir.path().to_str().unwrap(),
            "--listen",
            &lonely,
            "--run-dir",
            empty.path().to_str().unwrap(),
            "--upgrade",
        ],
        &[],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no running gatehouse recorded"), "{err}");
}
