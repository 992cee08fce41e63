//! Fault drills under an open-loop load, each counting failed requests
//! and the answered requests missing from ClickHouse (by request id):
//! an instance killed, reloads every second, a graceful upgrade (file and
//! governed mode), a ClickHouse outage with the gateway replaced inside it,
//! the control plane away while a fleet node serves, and `kill -9`.
//!
//! `GATEHOUSE_DRILL_SECS` and `GATEHOUSE_DRILL_RATE` set the length and
//! rate (`loadtest/drills.sh` runs them at full length); each prints its
//! line of the results table.

use std::time::{Duration, Instant};

use gatehouse_e2e::drill::{self, open_load, Tally};
use gatehouse_e2e::*;
use serde_json::{json, Value};

const DB: &str = "drills";
const ROUTE: &str = "      - { method: GET, path: \"/approvals/{id}\" }";
const TWO_ROUTES: &str =
    "      - { method: GET, path: \"/approvals/{id}\" }\n      - { method: GET, path: /workflows }";
/// Health checks, ejection and retries, as an estate would run them.
const RESILIENT: &str = "      health_check: { path: /health, interval: 200ms, timeout: 100ms, healthy_threshold: 1, unhealthy_threshold: 1 }\n      ejection: { consecutive_failures: 1, duration: 5s }\n    retries: 2";

fn path(i: u64) -> String {
    format!("/approvals/{}", i % 900 + 1)
}

/// Telemetry arguments: the drill database, migrated, a short flush.
fn telemetry(ch: &ClickHouse, spool: &tempfile::TempDir) -> Vec<String> {
    [
        "--clickhouse",
        &ch.url(),
        "--clickhouse-database",
        DB,
        "--migrate",
        "--spool-dir",
        spool.path().to_str().unwrap(),
        "--telemetry-flush-ms",
        "200",
        "--drain-timeout",
        "20",
    ]
    .map(str::to_string)
    .to_vec()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// `part` of the drill's length.
fn at(part: f64) -> Duration {
    Duration::from_secs_f64(drill::seconds() as f64 * part)
}

/// Assert no request failed and every answered one is a row, and print
/// the drill's line.
fn judge(name: &str, ch: &ClickHouse, tag: &str, t: &Tally) {
    let missing = drill::missing_rows(ch, DB, t, tag, Duration::from_secs(30));
    let rows = drill::rows(ch, DB, tag);
    drill::report(name, t, Some((missing.len(), rows)));
    assert!(
        t.sent as f64 >= t.elapsed.as_secs_f64() * f64::from(drill::rate()) * 0.8,
        "the load ran: {t:?}"
    );
    assert_eq!(
        t.retried, 0,
        "{name}: requests had to be sent again on a connection closed under them"
    );
    assert_eq!(
        t.failed(),
        0,
        "{name}: failed requests: {:?} {:?}",
        t.failed_status,
        t.failed_error
    );
    assert!(
        missing.is_empty(),
        "{name}: {} answered requests have no row, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert_eq!(
        rows,
        t.answered.len() as u64,
        "{name}: each request is one row"
    );
}

/// One app behind a gateway sending telemetry to a fresh ClickHouse: the
/// usual drill estate.
struct Estate {
    ch: ClickHouse,
    gw: Gateway,
    args: Vec<String>,
    dir: PolicyDir,
    _keep: (Sim, tempfile::TempDir),
}

fn estate() -> Estate {
    let ch = ClickHouse::start();
    let spool = tempfile::tempdir().unwrap();
    let sim = Sim::one("approvals");
    let dir = PolicyDir::new();
    app(&dir, &[sim.url(0)], ROUTE);
    let args = telemetry(&ch, &spool);
    let gw = Gateway::start(dir.path(), &strs(&args));
    Estate {
        ch,
        gw,
        args,
        dir,
        _keep: (sim, spool),
    }
}

impl Estate {
    /// A gateway with the same policy and telemetry, named `instance`,
    /// taking over with `--upgrade`.
    fn successor(&self, instance: &str) -> Gateway {
        let mut all = vec![
            "--policies".to_string(),
            self.dir.path().display().to_string(),
            "--instance".to_string(),
            instance.to_string(),
        ];
        all.extend(self.args.iter().cloned());
        self.gw.successor(&strs(&all))
    }
}

/// One app on `instances`, resilient.
fn app(dir: &PolicyDir, instances: &[String], routes: &str) {
    dir.write(
        "a.yaml",
        &app_policy("app", "app.test", instances, RESILIENT, routes),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_an_instance_killed_and_restarted() {
    let ch = ClickHouse::start();
    let spool = tempfile::tempdir().unwrap();
    let a = Sim::one("approvals");
    let c3 = Sim::one("approvals");
    let port = free_port();
    let b_addr = format!("127.0.0.1:{port}");
    let mut b = Sim::start(&[("approvals", &b_addr)], &[]);
    let dir = PolicyDir::new();
    app(&dir, &[a.url(0), b.url(0), c3.url(0)], ROUTE);
    let gw = Gateway::start(dir.path(), &strs(&telemetry(&ch, &spool)));
    let load = open_load(gw.url(), "app.test", path, drill::rate(), "kill");
    tokio::time::sleep(at(0.3)).await;
    b.kill();
    tokio::time::sleep(at(0.3)).await;
    b = Sim::start(&[("approvals", &b_addr)], &[]);
    let back = b.requests(0);
    tokio::time::sleep(at(0.4)).await;
    let t = load.finish().await;
    judge("instance killed and restarted", &ch, "kill", &t);
    assert!(b.requests(0) > back, "the restarted instance serves again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_a_reload_every_second() {
    let ch = ClickHouse::start();
    let spool = tempfile::tempdir().unwrap();
    let sim = Sim::start(
        &[("approvals", "127.0.0.1:0"), ("approvals", "127.0.0.1:0")],
        &[],
    );
    let urls = vec![sim.url(0), sim.url(1)];
    let dir = PolicyDir::new();
    app(&dir, &urls, ROUTE);
    let gw = Gateway::start(dir.path(), &strs(&telemetry(&ch, &spool)));
    let load = open_load(gw.url(), "app.test", path, drill::rate(), "reload");
    let start = Instant::now();
    let mut edits = 0;
    while start.elapsed() < at(1.0) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        edits += 1;
        app(&dir, &urls, if edits % 2 == 1 { TWO_ROUTES } else { ROUTE });
    }
    let t = load.finish().await;
    judge("reload every second", &ch, "reload", &t);
    let reloads = gw.admin_json("/v1/policy")["reloads"]["activated"]
        .as_u64()
        .unwrap();
    assert!(
        reloads + 1 >= edits,
        "{reloads} activations for {edits} edits"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_a_graceful_upgrade() {
    let mut e = estate();
    let load = open_load(e.gw.url(), "app.test", path, drill::rate(), "upgrade");
    tokio::time::sleep(at(0.3)).await;
    let _new = e.successor("successor");
    let (ch, old) = (&e.ch, &mut e.gw);
    let exited = old
        .wait_exit(Duration::from_secs(25))
        .expect("the old process exits once drained");
    assert!(exited.success(), "{exited:?}");
    assert!(
        old.log_text().contains("telemetry flushed"),
        "{}",
        old.log_text()
    );
    tokio::time::sleep(at(0.4)).await;
    let t = load.finish().await;
    judge("graceful upgrade", ch, "upgrade", &t);
    let served = |which: &str| {
        ch.count(&format!(
            "SELECT count() FROM {DB}.requests WHERE request_id LIKE 'upgrade-%' AND instance {which} 'successor'"
        ))
    };
    assert!(
        served("!=") > 0,
        "the old process served before the upgrade"
    );
    assert!(served("=") > 0, "the successor served after it");
}

/// The ClickHouse outage drill: ClickHouse freezes (it accepts connections
/// and never answers: the harder outage), the gateway is replaced during
/// the outage (the new process starts without ClickHouse, and the old one's
/// last flush must not wait on it), and ClickHouse returns: no request
/// fails and every event arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_clickhouse_away_while_the_gateway_is_replaced() {
    let mut e = estate();
    let load = open_load(e.gw.url(), "app.test", path, drill::rate(), "outage");
    tokio::time::sleep(at(0.2)).await;
    e.ch.signal("STOP");
    tokio::time::sleep(at(0.2)).await;
    let new = e.successor("successor");
    let (ch, old) = (&mut e.ch, &mut e.gw);
    assert!(
        new.log_text().contains("telemetry degraded"),
        "{}",
        new.log_text()
    );
    let exited = old
        .wait_exit(Duration::from_secs(25))
        .expect("the old process exits");
    assert!(exited.success());
    let metrics = http_get(new.admin, "/metrics", "admin");
    assert!(
        metrics.contains("gatehouse_telemetry_degraded 1"),
        "{metrics}"
    );
    tokio::time::sleep(at(0.2)).await;
    ch.signal("CONT");
    tokio::time::sleep(at(0.4)).await;
    let t = load.finish().await;
    judge(
        "ClickHouse frozen, gateway replaced inside the outage",
        ch,
        "outage",
        &t,
    );
    let metrics = http_get(new.admin, "/metrics", "admin");
    assert!(
        metrics.contains("gatehouse_telemetry_degraded 0"),
        "{metrics}"
    );
}

/// A gateway starts while ClickHouse is down and has never been migrated:
/// it serves, and once ClickHouse answers it migrates and sends everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_starts_without_clickhouse_and_migrates_when_it_answers() {
    let mut ch = ClickHouse::start();
    ch.kill();
    let spool = tempfile::tempdir().unwrap();
    let sim = Sim::one("approvals");
    let dir = PolicyDir::new();
    app(&dir, &[sim.url(0)], ROUTE);
    let gw = Gateway::start(dir.path(), &strs(&telemetry(&ch, &spool)));
    let ready = try_http_get(gw.admin, "/readyz", "admin").map(|r| r.0);
    assert_eq!(ready, Some(200), "ready without ClickHouse");
    let load = open_load(gw.url(), "app.test", path, drill::rate(), "cold");
    tokio::time::sleep(at(0.4)).await;
    ch.start_again();
    tokio::time::sleep(at(0.6)).await;
    let t = load.finish().await;
    judge("gateway started while ClickHouse was down", &ch, "cold", &t);
    assert!(
        gw.log_text().contains("ClickHouse migrations applied"),
        "{}",
        gw.log_text()
    );
}

/// POST to the control-plane API as `token`.
async fn post(c: &reqwest::Client, url: String, token: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = c.post(url).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("control plane reachable");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Propose `dir` as `author`, approve as `reviewer`, activate as `operator`;
/// returns the new version.
async fn govern(
    c: &reqwest::Client,
    admin: &str,
    dir: &PolicyDir,
    tokens: (&str, &str, &str),
) -> String {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir.path()).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        files.push(json!({ "path": name, "text": std::fs::read_to_string(e.path()).unwrap() }));
    }
    let (s, p) = post(
        c,
        format!("{admin}/v1/proposals"),
        tokens.0,
        Some(json!({ "title": "drill", "files": files })),
    )
    .await;
    assert_eq!(s, 201, "{p}");
    let id = p["id"].as_u64().unwrap();
    let version = p["version"].as_str().unwrap().to_string();
    let (s, p) = post(
        c,
        format!("{admin}/v1/proposals/{id}/reviews"),
        tokens.1,
        Some(json!({ "verdict": "approve" })),
    )
    .await;
    assert_eq!(s, 200, "{p}");
    let (s, p) = post(
        c,
        format!("{admin}/v1/proposals/{id}/activate"),
        tokens.2,
        None,
    )
    .await;
    assert_eq!(s, 200, "{p}");
    version
}

/// One app's bundle, and a state directory with an author, a reviewer and
/// an operator (their tokens).
fn governed_state() -> (Sim, PolicyDir, tempfile::TempDir, [String; 3]) {
    let sim = Sim::one("approvals");
    let base = PolicyDir::new();
    app(&base, &[sim.url(0)], ROUTE);
    let state = tempfile::tempdir().unwrap();
    let tokens = [
        add_principal(state.path(), "alice", "author"),
        add_principal(state.path(), "bob", "reviewer"),
        add_principal(state.path(), "ops", "operator"),
    ];
    (sim, base, state, tokens)
}

/// A governed control plane is upgraded: the state directory passes to
/// the new process with the listeners, which then takes proposals, and the
/// audit log stays one chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_governed_control_plane_is_upgraded_without_forking_its_state() {
    let (sim, base, state, [alice, bob, ops]) = governed_state();
    let st = state.path().display().to_string();
    let mut old = Gateway::launch(&["--state", &st, "--policies", base.path().to_str().unwrap()]);
    // A second process on the same state is refused while the first runs.
    let mut rival = Gateway::spawn(&["--state", &st]);
    let status = rival
        .wait_exit(Duration::from_secs(10))
        .expect("a rival exits");
    assert_eq!(status.code(), Some(2));
    assert!(
        rival.log_text().contains("in use by another gatehouse"),
        "{}",
        rival.log_text()
    );

    let load = open_load(old.url(), "app.test", path, drill::rate(), "governed");
    tokio::time::sleep(at(0.3)).await;
    let new = old.successor(&["--state", &st]);
    // While both processes accept on the admin socket (the old one for
    // five seconds), proposals go to either: the old one refuses them
    // (503, it handed the state over), the new one takes them; none forks
    // the audit log.
    // A new connection per call, so that either process may accept it.
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut files = Vec::new();
    let next = PolicyDir::new();
    app(&next, &[sim.url(0)], TWO_ROUTES);
    for e in std::fs::read_dir(next.path()).unwrap().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap();
        files.push(json!({ "path": e.file_name().to_string_lossy(), "text": text }));
    }
    let mut answers = std::collections::BTreeMap::new();
    let window = Instant::now();
    while window.elapsed() < Duration::from_secs(10) && !answers.contains_key(&201) {
        let (s, p) = post(
            &fresh,
            format!("{}/v1/proposals", new.admin_url()),
            &alice,
            Some(json!({ "title": "during the hand-over", "files": files })),
        )
        .await;
        assert!(s == 201 || s == 503, "{s} {p}");
        *answers.entry(s).or_insert(0) += 1;
    }
    eprintln!("proposals during the hand-over: {answers:?}");
    assert!(answers.contains_key(&201), "{answers:?}");
    let c = client();
    let exited = old
        .wait_exit(Duration::from_secs(25))
        .expect("the old process exits");
    assert!(exited.success());
    assert!(
        old.log_text().contains("handed the state directory over"),
        "{}",
        old.log_text()
    );
    let v2 = govern(&c, &new.admin_url(), &next, (&alice, &bob, &ops)).await;
    tokio::time::sleep(at(0.3)).await;
    let t = load.finish().await;
    drill::report("governed control plane upgraded", &t, None);
    assert_eq!(t.failed(), 0, "{t:?}");
    assert_eq!(t.retried, 0, "no connection closed under a request");
    let r = c
        .get(format!("{}/workflows", new.url()))
        .header("host", "app.test")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "the version activated after the upgrade serves"
    );
    assert!(v2.len() > 12);
    let audit = state.path().join("audit.jsonl");
    let (code, out, err) = cli(&["audit", "verify", audit.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "one unbroken chain: {out}{err}");
    let log = std::fs::read_to_string(&audit).unwrap();
    assert!(log.contains(&v2), "the new process audited the activation");
}

/// The control plane is away while a fleet node serves; a version
/// activated after it returns reaches the node; then the node is upgraded
/// in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_the_control_plane_away_while_a_fleet_node_serves() {
    let ch = ClickHouse::start();
    let spool = tempfile::tempdir().unwrap();
    let (sim, base, state, [alice, bob, ops]) = governed_state();
    let edge = add_principal(state.path(), "edge", "viewer");
    let st = state.path().display().to_string();
    let mut cp = Gateway::launch(&["--state", &st, "--policies", base.path().to_str().unwrap()]);
    let (cp_addr, cp_admin) = (cp.addr, cp.admin);
    let cache = tempfile::tempdir().unwrap();
    let token = cache.path().join("token");
    std::fs::write(&token, &edge).unwrap();
    let mut node_args = vec![
        "--control-plane".to_string(),
        cp.admin_url(),
        "--cache".into(),
        cache.path().join("bundle").display().to_string(),
        "--token-file".into(),
        token.display().to_string(),
    ];
    node_args.extend(telemetry(&ch, &spool));
    let node = Gateway::launch(&strs(&node_args));
    let load = open_load(node.url(), "app.test", path, drill::rate(), "fleet");
    tokio::time::sleep(at(0.2)).await;
    cp.signal("KILL");
    cp.wait_exit(Duration::from_secs(5)).expect("killed");
    tokio::time::sleep(at(0.4)).await;
    let cp = Gateway::launch_on(cp_addr, cp_admin, &["--state", &st]);
    let next = PolicyDir::new();
    app(&next, &[sim.url(0)], TWO_ROUTES);
    let v2 = govern(&client(), &cp.admin_url(), &next, (&alice, &bob, &ops)).await;
    let picked_up = eventually(Duration::from_secs(15), || node.policy_version() == v2);
    // The node itself is upgraded in place, under the same load.
    let mut node = node;
    let successor = node.successor(&strs(&node_args));
    let exited = node
        .wait_exit(Duration::from_secs(25))
        .expect("the old node exits");
    assert!(exited.success());
    assert_eq!(successor.policy_version(), v2, "the successor follows too");
    tokio::time::sleep(at(0.2)).await;
    let t = load.finish().await;
    judge(
        "control plane away while a fleet node serves, then the node upgraded",
        &ch,
        "fleet",
        &t,
    );
    assert!(
        picked_up,
        "the node follows the version activated after the control plane returned"
    );
}

/// `kill -9` loses at most the events of the last flush interval (the
/// in-memory queue and batch), and the next start replays the spool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_kill_9_loses_at_most_the_unflushed_interval() {
    let mut e = estate();
    let (ch, gw, dir, args) = (&mut e.ch, &mut e.gw, &e.dir, &e.args);
    // Answered requests before the kill; ClickHouse is away for the second
    // half, so the spool holds those events.
    let load = open_load(gw.url(), "app.test", path, drill::rate(), "kill9");
    tokio::time::sleep(at(0.4)).await;
    ch.kill();
    tokio::time::sleep(at(0.4)).await;
    let t_kill = Instant::now();
    gw.signal("KILL");
    gw.wait_exit(Duration::from_secs(5)).expect("killed");
    let t = load.finish().await;
    // Only requests answered before the kill count.
    ch.start_again();
    let next = Gateway::start(dir.path(), &strs(args));
    let missing = drill::missing_rows(ch, DB, &t, "kill9", Duration::from_secs(30));
    let rows = drill::rows(ch, DB, "kill9");
    drill::report("kill -9 (ClickHouse away)", &t, Some((missing.len(), rows)));
    // The bound: one flush interval (200 ms) and a drain tick of events at
    // the drill's rate, with room for the requests answered as the kill landed.
    let bound = (f64::from(drill::rate()) * 0.25) as usize + 20;
    assert!(
        missing.len() <= bound,
        "{} events lost, bound {bound}",
        missing.len()
    );
    assert!(
        rows as usize + missing.len() >= t.answered.len(),
        "the spool was replayed by the next start"
    );
    assert!(
        next.log_text()
            .contains("replayed a spooled telemetry batch"),
        "{}",
        next.log_text()
    );
    assert!(t_kill.elapsed() < Duration::from_secs(60));
}

/// SIGTERM under load: requests stop being accepted, but every request the
/// gateway answered — those finishing during the drain included — is a
/// row: inserted by the final flush after the last connection closed, or,
/// when ClickHouse could not take them in time (a busy machine, an insert
/// under way when the flush began), spooled and replayed by the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_sigterm_records_every_answered_request() {
    let mut e = estate();
    let load = open_load(e.gw.url(), "app.test", path, drill::rate(), "term");
    tokio::time::sleep(at(0.5)).await;
    e.gw.signal("TERM");
    let exited =
        e.gw.wait_exit(Duration::from_secs(25))
            .expect("exits once drained");
    assert!(exited.success(), "{exited:?}");
    let t = load.finish().await;
    let mut missing = drill::missing_rows(&e.ch, DB, &t, "term", Duration::from_secs(10));
    if !missing.is_empty() {
        eprintln!(
            "{} rows not inserted before the exit: starting a gateway to replay the spool",
            missing.len()
        );
        let mut args = vec!["--instance".to_string(), "replay".to_string()];
        args.extend(e.args.iter().cloned());
        let _next = Gateway::start(e.dir.path(), &strs(&args));
        missing = drill::missing_rows(&e.ch, DB, &t, "term", Duration::from_secs(20));
    }
    let rows = drill::rows(&e.ch, DB, "term");
    drill::report(
        "SIGTERM (no successor: later requests are refused)",
        &t,
        Some((missing.len(), rows)),
    );
    assert!(
        missing.is_empty(),
        "{} answered requests have no row",
        missing.len()
    );
}
