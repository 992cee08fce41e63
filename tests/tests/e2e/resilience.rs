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
    let dir = dead_app(&closed);
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

/// Failures a dead upstream causes, on HTTP/2 (Pingora's proxy) and HTTP/1.1
/// (the lean engine): every one is answered, at most `LINES_PER_SECOND` (20)
/// log lines a second describe them, every failure is either a line or
/// counted as left out, and no line holds the query string.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_upstreams_failures_are_logged_at_a_bounded_rate() {
    // Its breaker off: every request goes to the dead app and fails.
    let dir = PolicyDir::new();
    dir.write(
        "a.yaml",
        &app_policy(
            "dead",
            "dead.test",
            &[format!("http://127.0.0.1:{}", free_port())],
            "      ejection: { consecutive_failures: 0 }\n    resilience: { breaker: false }",
            ROUTE,
        ),
    );
    let gw = Gateway::start(dir.path(), &["--h2c"]);
    let h2 = h2c_client("dead.test", gw.addr);
    let h1 = client();
    let per_protocol = 400;
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let (h1, h2, url, port) = (h1.clone(), h2.clone(), gw.url(), gw.addr.port());
        tasks.push(tokio::spawn(async move {
            let mut failed = 0u64;
            for i in 0..per_protocol / 8 {
                let id = worker * 1000 + i;
                let r = h2
                    .get(format!(
                        "http://dead.test:{port}/approvals/{id}?token=SECRET{id}"
                    ))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.version(), reqwest::Version::HTTP_2);
                assert_eq!(r.status(), 502);
                failed += 1;
                let r = h1
                    .get(format!("{url}/approvals/{id}?token=SECRET{id}"))
                    .header("host", "dead.test")
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 502);
                failed += 1;
            }
            failed
        }));
    }
    let mut failures = 0;
    for t in tasks {
        failures += t.await.unwrap();
    }
    assert_eq!(failures, 2 * per_protocol);
    // In a new second, one more failure: its line reports what was left out.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = h1
        .get(format!("{}/approvals/1", gw.url()))
        .header("host", "dead.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    failures += 1;

    let (status, metrics) = try_http_get(gw.admin, "/metrics", "admin").unwrap();
    assert_eq!(status, 200);
    let suppressed: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("gatehouse_failure_log_lines_suppressed_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no suppressed-lines counter in:\n{metrics}"));
    let log = gw.log_text();
    let plain = strip_ansi(&log);
    let lines: Vec<&str> = plain
        .lines()
        .filter(|l| l.contains("request failed"))
        .collect();
    assert!(!lines.is_empty(), "no failure was logged:\n{plain}");
    assert_eq!(
        lines.len() as u64 + suppressed,
        failures,
        "every failure is a line or counted as left out"
    );
    assert!(suppressed > 0, "800 failures fit in the budget: {plain}");
    let mut per_second = std::collections::BTreeMap::<&str, usize>::new();
    for l in &lines {
        assert!(l.contains("app=\"dead\""), "{l}");
        assert!(l.contains("status=502"), "{l}");
        // `2026-11-30T01:39:22.334285Z …`: the second is the first 19 bytes.
        *per_second.entry(&l[..19]).or_default() += 1;
    }
    assert!(
        per_second.values().all(|&n| n <= 20),
        "more than 20 lines in a second: {per_second:?}"
    );
    // The lines' `suppressed=N` fields account for every line left out.
    let reported: u64 = lines
        .iter()
        .filter_map(|l| l.split("suppressed=").nth(1))
        .filter_map(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(reported, suppressed, "the lines report what was left out");
    assert!(!plain.contains("SECRET"), "the query string was logged");
    assert!(
        !plain.contains("Fail to proxy"),
        "Pingora's own line is replaced"
    );
}

/// A policy directory with app `dead` (host `dead.test`) on one closed
/// port, never ejected, so every request tries it.
fn dead_app(closed: &str) -> PolicyDir {
    let dir = PolicyDir::new();
    dir.write(
        "a.yaml",
        &app_policy(
            "dead",
            "dead.test",
            &[closed.to_string()],
            "      ejection: { consecutive_failures: 0 }",
            ROUTE,
        ),
    );
    dir
}

/// The log without terminal colour codes.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// An upstream that sends a response head promising 1 000 bytes, then ten,
/// then closes: the client gets the cut-off response (the head was already
/// sent, so no problem document can replace it), over HTTP/1.1 and HTTP/2,
/// and the log says which request it was and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_failing_mid_response_cuts_the_response_and_is_logged() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let _ = conn.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"partial\"",
            );
            // Dropped: the connection closes 990 bytes short.
        }
    });
    let dir = PolicyDir::new();
    dir.write(
        "a.yaml",
        &app_policy("cut", "cut.test", &[upstream], "", ROUTE),
    );
    let gw = Gateway::start(dir.path(), &["--h2c"]);
    let h1 = client();
    let r = h1
        .get(format!("{}/approvals/1", gw.url()))
        .header("host", "cut.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.is_err(), "HTTP/1.1: the body is cut off");
    let h2 = h2c_client("cut.test", gw.addr);
    let r = h2
        .get(format!("http://cut.test:{}/approvals/2", gw.addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.is_err(), "HTTP/2: the stream is reset");
    let logged = || {
        strip_ansi(&gw.log_text())
            .lines()
            .filter(|l| {
                l.contains("request failed")
                    && l.contains("app=\"cut\"")
                    && l.contains("after the response had begun")
            })
            .count()
    };
    assert!(
        eventually(Duration::from_secs(3), || logged() == 2),
        "one line per cut-off response:\n{}",
        gw.log_text()
    );
}

/// An app that answers each GET (keeping the connection open) and, for a
/// POST, reads it, counts it and closes the connection without a word, as
/// an app that crashed after acting on it would.
fn app_that_dies_on_post() -> (std::net::SocketAddr, Arc<AtomicU64>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let posts = Arc::new(AtomicU64::new(0));
    let seen = Arc::clone(&posts);
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let seen = Arc::clone(&seen);
            std::thread::spawn(move || {
                let mut out = conn.try_clone().expect("clone");
                let mut reader = BufReader::new(conn);
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let post = line.starts_with("POST");
                    let mut length = 0usize;
                    loop {
                        let mut header = String::new();
                        if reader.read_line(&mut header).unwrap_or(0) == 0 {
                            return;
                        }
                        if header == "\r\n" {
                            break;
                        }
                        if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:")
                        {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    if post {
                        seen.fetch_add(1, Ordering::SeqCst);
                        return; // closed, unanswered
                    }
                    let _ = out.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
                }
            });
        }
    });
    (addr, posts)
}

#[test]
fn a_post_the_app_may_have_acted_on_is_never_sent_twice() {
    let (app, posts) = app_that_dies_on_post();
    let dir = PolicyDir::new();
    dir.write(
        "a.yaml",
        &format!(
            "version: 1\napps:\n  - name: flaky\n    owner: o\n    hosts: [flaky.test]\n    upstream: {{ instances: [\"http://{app}\"], ejection: {{ consecutive_failures: 0 }} }}\n    retries: 2\n    passthrough: true\n"
        ),
    );
    // One proxy thread: the POST goes over the connection the GET left in
    // the pool (the case where a stale connection is written to again).
    let gw = Gateway::start(dir.path(), &["--threads", "1"]);
    let get = raw_http(
        gw.addr,
        b"GET /x HTTP/1.1\r\nHost: flaky.test\r\nConnection: close\r\n\r\n",
    );
    assert!(get.starts_with("HTTP/1.1 200"), "{get}");
    let post = raw_http(
        gw.addr,
        b"POST /orders HTTP/1.1\r\nHost: flaky.test\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    );
    assert!(post.starts_with("HTTP/1.1 502"), "{post}");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(posts.load(Ordering::SeqCst), 1, "the app got the POST once");
}

/// A route whose app stops answering in time: after 20 requests, half of
/// them failed, its breaker opens and the route is answered 503 at once
/// (with `Retry-After`) instead of holding a connection to the app; the
/// app's other routes are served; once the app answers again the breaker's
/// probes close it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_route_is_fenced_off_at_once_and_let_back_in_when_it_heals() {
    let (sim, dir, gw) = wf_gateway(
        ", ejection: { consecutive_failures: 0 }",
        "    timeouts: { connect: 1s, read: 300ms, total: 1s }\n    retries: 0\n",
    );
    let c = client();
    let get = |path: &'static str, delay_ms: u64| wf_get(c.clone(), gw.url(), path, delay_ms);
    // The app hangs on one route's requests.
    let mut timed_out = 0;
    for _ in 0..20 {
        let (status, _, body, _) = get("/approvals/7", 2000).await;
        if status == Some(504) {
            timed_out += 1;
        } else {
            panic!("expected 504 while the app hangs: {body}");
        }
    }
    assert_eq!(timed_out, 20);
    // Open: answered at once, with the time to wait.
    let (status, retry_after, body, took) = get("/approvals/7", 0).await;
    assert_eq!(status, Some(503), "{body}");
    assert_eq!(body["type"], "https://gatehouse.dev/problems/breaker-open");
    assert!(retry_after.is_some_and(|s| s.parse::<u64>().unwrap() >= 1));
    assert!(took < Duration::from_millis(100), "{took:?}");
    // The app's other route still goes to it.
    let (status, _, body, _) = get("/approvals", 0).await;
    assert_eq!(status, None, "the list is the app's own answer: {body}");
    let metrics = try_http_get(gw.admin, "/metrics", "admin").unwrap().1;
    assert!(
        metrics.contains("gatehouse_app_breakers_open{app=\"wf\"} 1"),
        "{metrics}"
    );
    let view = gw.admin_json("/v1/apps");
    let wf = &view["apps"][0];
    let breaker = |id: &str| {
        wf["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .map(|r| r["breaker"]["state"].clone())
    };
    assert_eq!(breaker("get"), Some(Value::from("open")), "{wf}");
    assert_eq!(breaker("list"), Some(Value::from("closed")), "{wf}");
    assert_eq!(wf["fence"]["max_in_flight"], 512, "{wf}");
    // An edit of the app's settings does not close the open breaker.
    let v1 = gw.policy_version();
    wf_policy(
        &dir,
        &sim.url(0),
        ", ejection: { consecutive_failures: 0 }",
        "    timeouts: { connect: 1s, read: 300ms, total: 1s }\n    retries: 0\n    resilience: { max_in_flight: 100 }\n",
    );
    assert!(eventually(Duration::from_secs(10), || gw.policy_version() != v1));
    let view = gw.admin_json("/v1/apps");
    assert_eq!(view["apps"][0]["fence"]["max_in_flight"], 100, "{view}");
    let (status, _, body, _) = get("/approvals/7", 0).await;
    assert_eq!(status, Some(503), "still open after the edit: {body}");
    // The app heals; after the cool-down the probes find it and close it.
    tokio::time::sleep(Duration::from_millis(5_100)).await;
    for _ in 0..3 {
        let (status, _, body, _) = get("/approvals/7", 0).await;
        assert_eq!(status, None, "a probe reaches the healed app: {body}");
    }
    let (status, _, body, _) = get("/approvals/7", 0).await;
    assert_eq!(status, None, "closed again: {body}");
    let log = strip_ansi(&gw.log_text());
    assert!(log.contains("circuit breaker opened"), "{log}");
    assert!(log.contains("circuit breaker closed"), "{log}");
}

/// A hanging app fails no request until the requests time out. Its breaker
/// opens on the stall instead: enough requests waiting, and no answer for
/// two seconds. A route's own cap keeps it from taking the whole app's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_route_is_fenced_off_on_its_stall_long_before_its_timeouts() {
    let (_sim, _dir, gw) = wf_gateway("", "    timeouts: { connect: 1s, read: 20s, total: 30s }\n    resilience: { routes: { get: { max_in_flight: 24 } } }\n");
    let c = client();
    let get = |path: &'static str, delay_ms: u64| {
        let answer = wf_get(c.clone(), gw.url(), path, delay_ms);
        async move { answer.await.2 }
    };
    // Thirty requests to a route that hangs: its cap lets 24 in, and
    // sheds the rest at once.
    let started = std::time::Instant::now();
    let hanging: Vec<_> = (0..30)
        .map(|_| tokio::spawn(get("/approvals/7", 15_000)))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let view = gw.admin_json("/v1/apps");
    let route = &view["apps"][0]["routes"];
    let get_route = route
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "get")
        .unwrap();
    assert_eq!(get_route["cap"]["in_flight"], 24, "{route}");
    assert_eq!(get_route["cap"]["shed"], 6, "{route}");
    // Two seconds without an answer: the next request opens the breaker.
    tokio::time::sleep(Duration::from_millis(1_700)).await;
    let body = get("/approvals/7", 0).await;
    assert_eq!(
        body["type"], "https://gatehouse.dev/problems/breaker-open",
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "opened long before the 20 s read timeout"
    );
    // The app's other route is not fenced.
    let body = get("/approvals", 0).await;
    assert!(body.get("type").is_none(), "{body}");
    let log = strip_ansi(&gw.log_text());
    assert!(
        log.contains("circuit breaker opened") && log.contains("requests unanswered for"),
        "{log}"
    );
    for h in hanging {
        h.abort();
    }
}

/// GET `path` of the `wf.test` app, which takes `delay_ms` over it
/// (`x-sim-delay-ms`): the problem's status (`None`: the app's own
/// answer), `Retry-After`, the body, and the time it took.
async fn wf_get(
    c: reqwest::Client,
    url: String,
    path: &'static str,
    delay_ms: u64,
) -> (Option<u64>, Option<String>, Value, Duration) {
    let started = std::time::Instant::now();
    let r = c
        .get(format!("{url}{path}"))
        .header("host", "wf.test")
        .header("x-sim-delay-ms", delay_ms.to_string())
        .send()
        .await
        .unwrap();
    let retry_after = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let body: Value = r.json().await.unwrap_or(Value::Null);
    (
        body["status"].as_u64(),
        retry_after,
        body,
        started.elapsed(),
    )
}

/// Under a low descriptor limit the gateway sheds what it cannot hold with
/// a 503 instead of running out of descriptors: a client connection over
/// its share is answered `overloaded` and closed, an app may hold half its
/// share of requests in flight, and it goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_low_descriptor_limit_the_gateway_sheds_instead_of_running_out() {
    let sim = Sim::one("approvals");
    let dir = PolicyDir::new();
    wf_policy(&dir, &sim.url(0), "", "");
    // 300 descriptors: 128 + 15 kept back, 157 shared out: 78 client
    // connections, 39 requests in flight to apps, 19 to one app.
    let gw = Gateway::start_limited(dir.path(), 300, &[]);
    let metrics = || try_http_get(gw.admin, "/metrics", "admin").unwrap().1;
    let m = metrics();
    assert!(m.contains("gatehouse_client_connections_limit 78"), "{m}");
    assert!(
        m.contains("gatehouse_upstream_requests_in_flight_limit 39"),
        "{m}"
    );
    assert!(
        m.contains("gatehouse_app_requests_in_flight_limit{app=\"wf\"} 19"),
        "{m}"
    );
    // Its share of client connections, held open.
    let held: Vec<std::net::TcpStream> = (0..78)
        .map(|_| std::net::TcpStream::connect(gw.addr).unwrap())
        .collect();
    assert!(
        eventually(Duration::from_secs(5), || metrics()
            .contains("gatehouse_client_connections 78")),
        "{}",
        metrics()
    );
    let answer = raw_http(gw.addr, b"GET /approvals HTTP/1.1\r\nHost: wf.test\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.contains("problems/overloaded") && answer.contains("connection: close"),
        "{answer}"
    );
    assert!(metrics().contains("gatehouse_client_connections_refused_total 1"));
    drop(held);
    assert!(eventually(Duration::from_secs(5), || metrics()
        .contains("gatehouse_client_connections 0")));
    // Thirty slow requests at once: the app (without authentication, so
    // every caller may fill its cap) takes its share, 19; the rest are shed
    // at once.
    let c = client();
    let slow: Vec<_> = (0..30)
        .map(|_| tokio::spawn(wf_get(c.clone(), gw.url(), "/approvals/1", 1_000)))
        .collect();
    let mut shed = 0;
    let mut served = 0;
    for s in slow {
        match s.await.unwrap() {
            (None, ..) => served += 1,
            (Some(503), _, body, took) => {
                assert_eq!(
                    body["type"], "https://gatehouse.dev/problems/shed",
                    "{body}"
                );
                assert!(took < Duration::from_millis(500), "{took:?}");
                shed += 1;
            }
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!((served, shed), (19, 11));
}

/// An app with a wait queue: requests over its cap wait for a slot (in
/// turn, as slots are freed) while the queue has room, and are shed once
/// it is full or when they have waited the longest wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_its_cap_a_request_waits_in_the_apps_queue_for_a_bounded_time() {
    let (_sim, _dir, gw) = wf_gateway(
        "",
        "    resilience: { max_in_flight: 2, queue: { size: 4, max_wait: 1s } }\n",
    );
    let c = client();
    let burst = |n: usize, delay_ms: u64| {
        let all: Vec<_> = (0..n)
            .map(|_| tokio::spawn(wf_get(c.clone(), gw.url(), "/approvals/1", delay_ms)))
            .collect();
        async move {
            let mut answers = Vec::new();
            for a in all {
                answers.push(a.await.unwrap());
            }
            answers
        }
    };
    let is_shed = |body: &Value| body["type"] == "https://gatehouse.dev/problems/shed";
    // Eight at once to an app answering in 300 ms: two go, four wait and
    // are served as slots are freed, two find the queue full.
    let answers = burst(8, 300).await;
    let served: Vec<Duration> = answers
        .iter()
        .filter(|a| a.0.is_none())
        .map(|a| a.3)
        .collect();
    let shed: Vec<Duration> = answers
        .iter()
        .filter(|a| a.0 == Some(503) && is_shed(&a.2))
        .map(|a| a.3)
        .collect();
    assert_eq!((served.len(), shed.len()), (6, 2), "{answers:?}");
    assert!(
        served
            .iter()
            .filter(|t| **t >= Duration::from_millis(550))
            .count()
            >= 2,
        "the last served waited for two turns: {served:?}"
    );
    assert!(
        shed.iter().all(|t| *t < Duration::from_millis(250)),
        "{shed:?}"
    );
    // Four at once to an app answering in 3 s: two go, two wait the
    // longest wait (1 s), then are shed.
    let answers = burst(4, 3_000).await;
    let waited: Vec<Duration> = answers
        .iter()
        .filter(|a| a.0 == Some(503) && is_shed(&a.2))
        .map(|a| a.3)
        .collect();
    assert_eq!(waited.len(), 2, "{answers:?}");
    assert!(
        waited
            .iter()
            .all(|t| *t >= Duration::from_millis(950) && *t < Duration::from_millis(2_500)),
        "{waited:?}"
    );
    let view = gw.admin_json("/v1/apps");
    let fence = &view["apps"][0]["fence"];
    assert_eq!(fence["queue"]["size"], 4, "{fence}");
    assert_eq!(fence["queued"], 0, "{fence}");
    assert_eq!(fence["shed"], 4, "each shed request counted once: {fence}");
    let metrics = try_http_get(gw.admin, "/metrics", "admin").unwrap().1;
    assert!(
        metrics.contains("gatehouse_app_requests_queued{app=\"wf\"} 0"),
        "{metrics}"
    );
}

/// A gateway in front of one approvals simulator serving the `wf` app
/// ([`wf_policy`], with `upstream_extra` and `app_lines`).
fn wf_gateway(upstream_extra: &str, app_lines: &str) -> (Sim, PolicyDir, Gateway) {
    let sim = Sim::one("approvals");
    let dir = PolicyDir::new();
    wf_policy(&dir, &sim.url(0), upstream_extra, app_lines);
    let gw = Gateway::start(dir.path(), &[]);
    (sim, dir, gw)
}

/// The `wf` app (host `wf.test`) on `instance`, with routes `get`
/// (`GET /approvals/{id}`) and `list` (`GET /approvals`); `upstream_extra`
/// goes inside its `upstream` map, `app_lines` (indented, each ending in a
/// newline) among its settings.
fn wf_policy(dir: &PolicyDir, instance: &str, upstream_extra: &str, app_lines: &str) {
    dir.write(
        "a.yaml",
        &format!(
            "version: 1\napps:\n  - name: wf\n    owner: o\n    hosts: [wf.test]\n    upstream: {{ instances: [\"{instance}\"]{upstream_extra} }}\n{app_lines}    routes:\n      - {{ id: get, method: GET, path: \"/approvals/{{id}}\" }}\n      - {{ id: list, method: GET, path: /approvals }}\n"
        ),
    );
}
