//! Change review end to end: a governed control plane (`serve --state`),
//! principals and roles, quorum approvals, rejection and staleness, the
//! audit log, and a fleet of data-plane nodes following the control plane.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse_e2e::*;
use serde_json::{json, Value};

/// A governed control plane with its principals.
struct Governed {
    state: tempfile::TempDir,
    gw: Gateway,
}

impl Governed {
    fn start(bootstrap: &Path) -> Governed {
        let state = tempfile::tempdir().expect("tempdir");
        let probe = add_principal(state.path(), "probe", "viewer");
        let mut gw = Gateway::launch(&[
            "--state",
            state.path().to_str().unwrap(),
            "--policies",
            bootstrap.to_str().unwrap(),
        ]);
        gw.admin_token = Some(probe);
        Governed { state, gw }
    }

    fn principal(&self, name: &str, roles: &str) -> String {
        add_principal(self.state.path(), name, roles)
    }

    fn audit_file(&self) -> std::path::PathBuf {
        self.state.path().join("audit.jsonl")
    }

    /// Run a `gatehouse policy …` command as `token`.
    fn policy(&self, token: &str, args: &[&str]) -> (i32, String, String) {
        let mut full = vec!["policy"];
        full.extend_from_slice(args);
        cli(
            &full,
            &[
                ("GATEHOUSE_URL", &self.gw.admin_url()),
                ("GATEHOUSE_TOKEN", token),
            ],
        )
    }
}

/// POST to the control-plane API.
async fn post(
    c: &reqwest::Client,
    url: String,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    api(c, reqwest::Method::POST, url, token, body).await
}

/// GET from the control-plane API.
async fn get(
    c: &reqwest::Client,
    url: String,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    api(c, reqwest::Method::GET, url, token, body).await
}

/// Call the control-plane API; returns status and JSON body.
async fn api(
    c: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = c.request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
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

/// The files of a bundle directory, as the API takes them.
fn files_of(dir: &Path) -> Value {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<Value>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else if !p.file_name().unwrap().to_string_lossy().starts_with('.') {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().to_string();
                if rel.ends_with(".schema.json") {
                    continue;
                }
                out.push(json!({ "path": rel, "text": std::fs::read_to_string(&p).unwrap() }));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    Value::Array(out)
}

const REQUIRE_CUSTOMER: (&str, &str) = (
    "        - name: customer_id\n          in: query\n",
    "        - name: customer_id\n          in: query\n          required: true\n",
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breaking_change_needs_two_board_approvals_that_are_not_the_authors() {
    let sim = example_estate();
    let (base, key) = example_policies(&sim, |_, t| t);
    let cp = Governed::start(base.path());
    let alice = cp.principal("alice", "author,reviewer");
    let bob = cp.principal("bob", "reviewer");
    let carol = cp.principal("carol", "reviewer");
    let dave = cp.principal("dave", "reviewer"); // platform-team, not the board
    let ops = cp.principal("ops", "operator");

    let orders = |c: &reqwest::Client| {
        c.get(format!("{}/rest/orders/v1/orders", cp.gw.url()))
            .header("host", "orders.corp.example")
            .send()
    };
    let c = keyed_client(&key);
    assert_eq!(orders(&c).await.unwrap().status(), 200);

    // The proposal: `customer_id` becomes a required query parameter.
    let next = PolicyDir::copy_of(base.path(), |rel, t| {
        if rel == "contracts/orders.openapi.yaml" {
            assert!(t.contains(REQUIRE_CUSTOMER.0));
            t.replacen(REQUIRE_CUSTOMER.0, REQUIRE_CUSTOMER.1, 1)
        } else {
            t
        }
    });
    let (code, out, err) = cp.policy(
        &alice,
        &[
            "propose",
            next.path().to_str().unwrap(),
            "--title",
            "customer_id required",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("proposal 1 [open]"), "{out}");
    assert!(
        out.contains("contract.breaking") && out.contains("customer_id"),
        "the diff names the breaking change: {out}"
    );
    assert!(
        out.contains("2 more approval(s) from governance-board"),
        "{out}"
    );

    // The author's own approval is refused; an outsider's does not count.
    let (code, _, err) = cp.policy(&alice, &["review", "1", "--approve"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("authors never approve their own proposal"),
        "{err}"
    );
    let (code, out, _) = cp.policy(
        &dave,
        &["review", "1", "--approve", "--comment", "fine by me"],
    );
    assert_eq!(code, 0);
    assert!(
        out.contains("not counted: dave: not a member of governance-board"),
        "{out}"
    );
    let (code, out, _) = cp.policy(&bob, &["review", "1", "--approve", "--comment", "ok"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("approvals from governance-board: 1 of 2 (bob)"),
        "{out}"
    );

    // One valid approval is not enough: refused with what is missing.
    let (code, _, err) = cp.policy(&ops, &["activate", "1"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("refused (409)")
            && err.contains("1 more approval(s) from governance-board (1 of 2 for contract.breaking); eligible: carol"),
        "{err}"
    );
    assert_eq!(
        orders(&c).await.unwrap().status(),
        200,
        "nothing changed yet"
    );

    let (code, out, _) = cp.policy(&carol, &["review", "1", "--approve"]);
    assert_eq!(code, 0);
    assert!(out.contains("proposal 1 [approved]"), "{out}");
    let (code, out, err) = cp.policy(&ops, &["activate", "1"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("activated"), "{out}");
    let r = orders(&c).await.unwrap();
    assert_eq!(r.status(), 400, "the new contract is enforced at once");
    assert!(r.text().await.unwrap().contains("customer_id"));

    // Status and the audit trail say what happened, and the chain holds.
    let (_, status, _) = cp.policy(&ops, &["status"]);
    assert!(
        status.contains("proposal 1") && status.contains("bootstrap"),
        "{status}"
    );
    let (code, log, _) = cp.policy(&bob, &["log"]);
    assert_eq!(code, 0);
    for needle in [
        "proposal.create",
        "proposal.approve",
        "refused",
        "proposal.activate",
    ] {
        assert!(
            log.contains(needle),
            "{needle} missing from the log:\n{log}"
        );
    }
    let (code, out, _) = cli(&["audit", "verify", cp.audit_file().to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_stale_and_unauthorised_changes_never_activate_and_are_audited() {
    let sim = example_estate();
    let (base, _) = example_policies(&sim, |_, t| t);
    let cp = Governed::start(base.path());
    let alice = cp.principal("alice", "author");
    let bob = cp.principal("bob", "reviewer");
    let dave = cp.principal("dave", "reviewer");
    let viewer = cp.principal("vic", "viewer");
    let ops = cp.principal("ops", "operator");
    let c = client();
    let url = |p: &str| format!("{}{p}", cp.gw.admin_url());
    let v0 = cp.gw.policy_version();

    // Three proposals against the same base: two limit changes, one breaking.
    let tighten = |rate: &str| {
        PolicyDir::copy_of(base.path(), |rel, t| {
            if rel == "apps/orders.yaml" {
                t.replace("rate: 500/s, burst: 1000", rate)
            } else {
                t
            }
        })
    };
    let a = tighten("rate: 400/s, burst: 800");
    let b = tighten("rate: 300/s, burst: 600");
    let mut ids = Vec::new();
    for (dir, title) in [(&a, "per-ip 400/s"), (&b, "per-ip 300/s")] {
        let (s, p) = post(
            &c,
            url("/v1/proposals"),
            Some(&alice),
            Some(json!({ "title": title, "files": files_of(dir.path()) })),
        )
        .await;
        assert_eq!(s, 201, "{p}");
        assert_eq!(p["required"][0]["group"], "platform-team", "{p}");
        assert!(p["changes"].to_string().contains("limits.tightened"), "{p}");
        ids.push(p["id"].as_u64().unwrap());
    }

    // A rejection needs a reason.
    let (s, p) = post(
        &c,
        url(&format!("/v1/proposals/{}/reviews", ids[1])),
        Some(&bob),
        Some(json!({ "verdict": "reject" })),
    )
    .await;
    assert_eq!(s, 409, "{p}");
    assert!(p.to_string().contains("a rejection needs a reason"), "{p}");
    // A rejection blocks for good, even after a later approval elsewhere.
    let (s, p) = post(
        &c,
        url(&format!("/v1/proposals/{}/reviews", ids[1])),
        Some(&bob),
        Some(json!({ "verdict": "reject", "comment": "too tight for the ERP batch" })),
    )
    .await;
    assert_eq!((s, p["state"].as_str()), (200, Some("rejected")), "{p}");
    let (s, p) = post(
        &c,
        url(&format!("/v1/proposals/{}/activate", ids[1])),
        Some(&ops),
        None,
    )
    .await;
    assert_eq!(s, 409, "{p}");
    assert!(
        p["detail"].as_str().unwrap().contains("rejected by bob"),
        "{p}"
    );
    // Proposing the rejected version again links to the rejection and its
    // reason, for the new proposal's reviewers.
    let (s, p) = post(
        &c,
        url("/v1/proposals"),
        Some(&alice),
        Some(json!({ "title": "per-ip 300/s, again", "files": files_of(b.path()) })),
    )
    .await;
    assert_eq!(s, 201, "{p}");
    assert_eq!(p["rejected_before"]["proposal"], json!(ids[1]), "{p}");
    assert_eq!(
        p["rejected_before"]["by"],
        json!(["bob: too tight for the ERP batch"]),
        "{p}"
    );
    let again = p["id"].as_u64().unwrap();
    let (code, out, _) = cp.policy(&bob, &["show", &again.to_string()]);
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!(
            "rejected before, as proposal {}: bob: too tight for the ERP batch",
            ids[1]
        )),
        "{out}"
    );

    // The other one is approved and activated; then a proposal made against
    // the old base is stale.
    let (s, _) = post(
        &c,
        url(&format!("/v1/proposals/{}/reviews", ids[0])),
        Some(&dave),
        Some(json!({ "verdict": "approve" })),
    )
    .await;
    assert_eq!(s, 200);
    let late = tighten("rate: 450/s, burst: 900");
    let (s, p) = post(
        &c,
        url("/v1/proposals"),
        Some(&alice),
        Some(json!({ "title": "per-ip 450/s", "files": files_of(late.path()) })),
    )
    .await;
    assert_eq!(s, 201, "{p}");
    let stale = p["id"].as_u64().unwrap();
    let (s, _) = approve(&c, &url, stale, &dave).await;
    assert_eq!(s, 200);
    let (s, p) = post(
        &c,
        url(&format!("/v1/proposals/{}/activate", ids[0])),
        Some(&ops),
        None,
    )
    .await;
    assert_eq!(s, 200, "{p}");
    assert_ne!(cp.gw.policy_version(), v0);
    let (s, p) = activate(&c, &url, stale, &ops).await;
    assert_eq!(
        s, 409,
        "a proposal whose base is gone is not activated: {p}"
    );
    let (_, p) = get(
        &c,
        url(&format!("/v1/proposals/{stale}")),
        Some(&viewer),
        None,
    )
    .await;
    assert_eq!(p["state"], "superseded", "{p}");

    // Invalid bundles are refused with every error.
    let (s, p) = post(&c, url("/v1/proposals"), Some(&alice),
        Some(json!({ "title": "broken", "files": [{ "path": "apps/x.yaml", "text": "version: 1\napps: [{ name: x }]\n" }] }))).await;
    assert_eq!(s, 422, "{p}");
    assert!(!p["errors"].as_array().unwrap().is_empty(), "{p}");
    let (s, _) = post(&c, url("/v1/proposals"), Some(&alice), None).await;
    assert_eq!(s, 409, "a missing body is a clear refusal");

    // 401 and 403 are audited — anonymous ones once per source address
    // per interval, however many arrive; the node's own views need a token
    // too.
    let (s, _) = get(&c, url("/v1/policy"), None, None).await;
    assert_eq!(s, 401);
    let (s, p) = get(&c, url("/v1/apps"), Some(&viewer), None).await;
    assert_eq!(s, 200, "{p}");
    let (s, _) = get(&c, url("/v1/governance/status"), None, None).await;
    assert_eq!(s, 401);
    let (s, _) = post(&c, url("/v1/rollback"), Some("ght_not-a-token"), None).await;
    assert_eq!(s, 401);
    let (s, _) = post(
        &c,
        url("/v1/proposals"),
        Some(&viewer),
        Some(json!({ "title": "sneaky", "files": files_of(a.path()) })),
    )
    .await;
    assert_eq!(s, 403);
    let (s, _) = approve(&c, &url, stale, &alice).await;
    assert_eq!(s, 403, "an author without the reviewer role cannot review");
    let (s, _) = post(&c, url("/v1/rollback"), Some(&bob), None).await;
    assert_eq!(s, 403);
    let (s, audit) = get(&c, url("/v1/audit"), Some(&viewer), None).await;
    assert_eq!(s, 200);
    let entries = audit["entries"].as_array().unwrap();
    let refused = |principal: &str, action: &str, status: u64| {
        entries.iter().any(|e| {
            e["principal"] == principal
                && e["action"] == action
                && e["outcome"] == "refused"
                && e["detail"]["status"] == status
        })
    };
    assert!(refused("anonymous", "node.read", 401), "{audit}");
    assert!(
        !refused("anonymous", "status.read", 401),
        "sampled: {audit}"
    );
    assert!(
        !refused("anonymous", "bundle.rollback", 401),
        "sampled: {audit}"
    );
    assert!(refused("vic", "proposal.create", 403), "{audit}");
    assert!(refused("alice", "proposal.review", 403), "{audit}");
    assert!(refused("bob", "bundle.rollback", 403), "{audit}");
    let text = audit.to_string();
    assert!(
        !text.contains(&alice) && !text.contains("ght_not-a-token"),
        "tokens are never audited"
    );
    let anonymous = |audit: &Value| -> Vec<Value> {
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["principal"] == "anonymous")
            .cloned()
            .collect()
    };
    let first = anonymous(&audit);
    assert_eq!(first.len(), 1, "{audit}");
    assert_eq!(first[0]["detail"]["source"], "127.0.0.1", "{audit}");
    // A flood of unauthenticated calls is not a flood of entries.
    for _ in 0..300 {
        let (s, _) = get(&c, url("/v1/governance/status"), None, None).await;
        assert_eq!(s, 401);
    }
    let (_, audit) = get(
        &c,
        url("/v1/audit?principal=anonymous"),
        Some(&viewer),
        None,
    )
    .await;
    assert_eq!(
        anonymous(&audit),
        first,
        "one entry per source per interval: {audit}"
    );
    // The log filters by principal, action (and what is under it) and time.
    let (_, audit) = get(
        &c,
        url("/v1/audit?principal=bob&action=bundle"),
        Some(&viewer),
        None,
    )
    .await;
    let entries = audit["entries"].as_array().unwrap();
    assert!(
        !entries.is_empty()
            && entries
                .iter()
                .all(|e| e["principal"] == "bob"
                    && e["action"].as_str().unwrap().starts_with("bundle.")),
        "{audit}"
    );
    let (_, audit) = get(&c, url("/v1/audit?since=1h"), Some(&viewer), None).await;
    assert!(!audit["entries"].as_array().unwrap().is_empty(), "{audit}");
    let (s, p) = get(
        &c,
        url("/v1/audit?since=yesterday-ish"),
        Some(&viewer),
        None,
    )
    .await;
    assert_eq!(s, 409, "{p}");

    // Tamper-evidence: the log verifies; any one changed byte or a removed
    // line is detected.
    let file = cp.audit_file();
    let path = file.to_str().unwrap();
    let (code, out, _) = cli(&["audit", "verify", path], &[]);
    assert_eq!(code, 0, "{out}");
    let original = std::fs::read(&file).unwrap();
    let lines = original.iter().filter(|b| **b == b'\n').count();
    assert!(lines >= 15, "{lines} entries");
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    for _ in 0..40 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let pos = (rng as usize) % original.len();
        if original[pos] == b'\n' {
            continue;
        }
        let mut bytes = original.clone();
        bytes[pos] = if bytes[pos] == b'0' { b'1' } else { b'0' };
        std::fs::write(&file, &bytes).unwrap();
        let (code, out, _) = cli(&["audit", "verify", path], &[]);
        assert_eq!(code, 1, "a change at byte {pos} went unnoticed: {out}");
        assert!(out.contains("NOT intact"), "{out}");
    }
    let text = String::from_utf8(original.clone()).unwrap();
    let all: Vec<&str> = text.lines().collect();
    for skip in [0, all.len() / 2, all.len() - 1] {
        let kept: Vec<&str> = all
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != skip)
            .map(|(_, l)| *l)
            .collect();
        std::fs::write(&file, kept.join("\n") + "\n").unwrap();
        let (code, out, _) = cli(&["audit", "verify", path], &[]);
        assert_eq!(code, 1, "removing line {} went unnoticed: {out}", skip + 1);
        assert!(out.contains("NOT intact"), "{out}");
    }
    // Even with the head file rewritten too, a head recorded earlier catches
    // a cut-off tail.
    std::fs::write(&file, &original).unwrap();
    let (_, out, _) = cli(&["audit", "verify", path], &[]);
    let recorded = out.split("head ").nth(1).unwrap().trim().to_string();
    std::fs::write(&file, all[..all.len() - 1].join("\n") + "\n").unwrap();
    let head_file = std::path::PathBuf::from(format!("{path}.head"));
    let head_text = std::fs::read_to_string(&head_file).unwrap();
    let prev: Value = serde_json::from_str(all[all.len() - 2]).unwrap();
    std::fs::write(
        &head_file,
        json!({ "seq": prev["seq"], "hash": prev["hash"] }).to_string(),
    )
    .unwrap();
    let (code, _, _) = cli(&["audit", "verify", path], &[]);
    assert_eq!(code, 0, "both files rewritten consistently");
    let (code, out, _) = cli(&["audit", "verify", path, "--head", &recorded], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("entries removed from the end"), "{out}");
    std::fs::write(&head_file, head_text).unwrap();
    std::fs::write(&file, &original).unwrap();
}

const ONE_ROUTE: &str = "      - { method: GET, path: \"/approvals/{id}\" }";
const TWO_ROUTES: &str =
    "      - { method: GET, path: \"/approvals/{id}\" }\n      - { method: GET, path: /workflows }";
const REVIEW: &str = "version: 1\nreview:\n  groups: { board: [alice, bob, carol] }\n  rules:\n    - { classes: [contract.breaking, route.removed, review_rules.changed], approvals: 2, group: board }\n  default: { approvals: 1, group: board }\n";

/// Closed-loop GETs spread over `nodes`, counting failures.
struct FleetLoad {
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
}

impl FleetLoad {
    fn start(nodes: &[String], per_node: usize) -> FleetLoad {
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for (n, url) in nodes.iter().enumerate() {
            for w in 0..per_node {
                let (ok, failed, stop, url) =
                    (ok.clone(), failed.clone(), stop.clone(), url.clone());
                workers.push(tokio::spawn(async move {
                    let c = client();
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let r = c
                            .get(format!(
                                "{url}/approvals/{}",
                                (n * 7 + w) * 100 + i % 90 + 1
                            ))
                            .header("host", "app.test")
                            .send()
                            .await;
                        match r {
                            Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                            other => {
                                eprintln!("failed request on {url}: {other:?}");
                                failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    }
                }));
            }
        }
        FleetLoad {
            ok,
            failed,
            stop,
            workers,
            started: Instant::now(),
        }
    }

    async fn finish(self) -> (u64, u64, f64) {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.workers {
            w.await.unwrap();
        }
        let ok = self.ok.load(Ordering::Relaxed);
        (
            ok,
            self.failed.load(Ordering::Relaxed),
            ok as f64 / self.started.elapsed().as_secs_f64(),
        )
    }
}

/// GET /workflows on every node answers `status`.
async fn workflows_on_all(c: &reqwest::Client, nodes: &[Gateway], status: u16, why: &str) {
    for n in nodes {
        let r = c
            .get(format!("{}/workflows", n.url()))
            .header("host", "app.test")
            .send()
            .await;
        assert_eq!(r.unwrap().status(), status, "{why} on {}", n.url());
    }
}

/// Poll every node's active version until all report `version`; the time
/// it took.
async fn converge(nodes: &[&Gateway], version: &str, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let mut all = true;
        for n in nodes {
            let v = tokio::task::block_in_place(|| n.policy_version());
            all &= v == version;
        }
        if all {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "nodes did not converge on {version} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_follows_activation_and_rollback_under_load_and_survives_the_control_plane() {
    let sim = Sim::start(
        &[("approvals", "127.0.0.1:0"), ("approvals", "127.0.0.1:0")],
        &[],
    );
    let urls = vec![sim.url(0), sim.url(1)];
    let base = PolicyDir::new();
    base.write(
        "app.yaml",
        &app_policy("app", "app.test", &urls, "", ONE_ROUTE),
    );
    base.write("review.yaml", REVIEW);
    let mut cp = Governed::start(base.path());
    let alice = cp.principal("alice", "author");
    let bob = cp.principal("bob", "reviewer");
    let ops = cp.principal("ops", "operator");
    let ops2 = cp.principal("ops2", "operator,reviewer");
    let node_token = cp.principal("edge", "viewer");
    let token_dir = tempfile::tempdir().unwrap();
    let token_file = token_dir.path().join("token");
    std::fs::write(&token_file, &node_token).unwrap();
    let caches: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let cp_url = cp.gw.admin_url();
    let node_args = |i: usize| -> Vec<String> {
        vec![
            "--control-plane".into(),
            cp_url.clone(),
            "--cache".into(),
            caches[i].path().display().to_string(),
            "--token-file".into(),
            token_file.display().to_string(),
        ]
    };
    let mut nodes: Vec<Gateway> = (0..3)
        .map(|i| {
            let args = node_args(i);
            Gateway::launch(&args.iter().map(String::as_str).collect::<Vec<_>>())
        })
        .collect();
    let v1 = cp.gw.policy_version();
    for n in &nodes {
        assert_eq!(
            n.policy_version(),
            v1,
            "a node starts on the active version"
        );
    }
    let c = client();
    workflows_on_all(&c, &nodes, 404, "no such route yet").await;

    // Propose and approve a new route; activate it under load.
    let next = PolicyDir::new();
    next.write(
        "app.yaml",
        &app_policy("app", "app.test", &urls, "", TWO_ROUTES),
    );
    next.write("review.yaml", REVIEW);
    let admin = |p: &str| format!("{}{p}", cp.gw.admin_url());
    let (s, p) = post(
        &c,
        admin("/v1/proposals"),
        Some(&alice),
        Some(json!({ "title": "workflows route", "files": files_of(next.path()) })),
    )
    .await;
    assert_eq!(s, 201, "{p}");
    let id = p["id"].as_u64().unwrap();
    let v2 = p["version"].as_str().unwrap().to_string();
    let (s, _) = approve(&c, &admin, id, &bob).await;
    assert_eq!(s, 200);

    let node_urls: Vec<String> = nodes.iter().map(Gateway::url).collect();
    let load = FleetLoad::start(&node_urls, 4);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (s, p) = activate(&c, &admin, id, &ops).await;
    assert_eq!(s, 200, "{p}");
    let refs: Vec<&Gateway> = nodes.iter().collect();
    let took = converge(&refs, &v2, Duration::from_secs(1)).await;
    eprintln!("activation converged on 3 nodes in {took:?}");
    workflows_on_all(&c, &nodes, 200, "the new route answers").await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Roll back the same way: a rollback needs a reason, is a proposal
    // that shows its diff, and needs another operator's approval.
    let (s, p) = post(&c, admin("/v1/rollback"), Some(&ops), Some(json!({}))).await;
    assert_eq!(s, 409, "{p}");
    assert!(p.to_string().contains("a rollback needs a reason"), "{p}");
    let (s, p) = post(
        &c,
        admin("/v1/rollback"),
        Some(&ops),
        Some(json!({ "reason": "the new route misbehaves" })),
    )
    .await;
    assert_eq!(s, 201, "{p}");
    let rb = p["id"].as_u64().unwrap();
    assert_eq!(p["version"], v1.as_str(), "{p}");
    let classes: Vec<&str> = p["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["class"].as_str().unwrap())
        .collect();
    assert!(
        classes.contains(&"rollback") && classes.contains(&"route.removed"),
        "the rollback shows its diff: {p}"
    );
    assert_eq!(p["required"][0]["group"], "operators (rollback)", "{p}");
    let (s, p) = activate(&c, &admin, rb, &ops).await;
    assert_eq!(s, 409, "not before another operator approves: {p}");
    let (s, p) = approve(&c, &admin, rb, &ops).await;
    assert_eq!(s, 403, "four eyes on rollbacks too: {p}");
    let (s, p) = approve(&c, &admin, rb, &ops2).await;
    assert_eq!(s, 200, "{p}");
    let (s, p) = activate(&c, &admin, rb, &ops).await;
    assert_eq!(s, 200, "{p}");
    let took = converge(&refs, &v1, Duration::from_secs(1)).await;
    eprintln!("rollback converged on 3 nodes in {took:?}");
    workflows_on_all(&c, &nodes, 404, "the previous behaviour is back").await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Activate v2 again by a break-glass rollback: at once, flagged, and
    // an incident item stays open until a reviewer signs it off.
    let (s, p) = post(
        &c,
        admin("/v1/rollback"),
        Some(&ops),
        Some(json!({ "to": &v2[..16], "reason": "fixed after all", "break_glass": true })),
    )
    .await;
    assert_eq!(s, 200, "{p}");
    let incident = p["incident"].as_u64().unwrap();
    converge(&refs, &v2, Duration::from_secs(1)).await;
    let (_, status) = get(&c, admin("/v1/governance/status"), Some(&ops), None).await;
    assert!(
        status["open_proposals"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["id"] == incident && o["state"] == "incident"),
        "{status}"
    );
    let (s, p) = post(
        &c,
        admin(&format!("/v1/proposals/{incident}/reviews")),
        Some(&bob),
        Some(json!({ "verdict": "approve", "comment": "post-incident review done" })),
    )
    .await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(p["state"], "activated", "signed off: {p}");
    let (_, audit) = get(
        &c,
        admin("/v1/audit?action=bundle.rollback"),
        Some(&ops),
        None,
    )
    .await;
    let entries = audit["entries"].as_array().unwrap();
    assert!(
        entries
            .iter()
            .any(|e| e["detail"]["break_glass"] == true && e["detail"]["incident"] == incident),
        "{audit}"
    );
    assert!(
        entries.iter().all(|e| e["action"] == "bundle.rollback"),
        "filtered: {audit}"
    );
    cp.gw.signal("KILL");
    assert!(cp.gw.wait_exit(Duration::from_secs(5)).is_some());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (ok, failed, rps) = load.finish().await;
    assert_eq!(failed, 0, "{failed} requests failed ({ok} ok)");
    assert!(
        rps >= 500.0,
        "the fleet load was at least 500 req/s: {rps:.0}"
    );
    eprintln!("fleet load: {ok} requests, {rps:.0} req/s, 0 failed");

    // With the control plane gone, nodes keep serving, and a restarted node
    // serves its cached bundle.
    workflows_on_all(&c, &nodes, 200, "served without the control plane").await;
    let old = nodes.remove(0);
    drop(old);
    let args = node_args(0);
    let restarted = Gateway::launch(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(restarted.policy_version(), v2);
    workflows_on_all(
        &c,
        std::slice::from_ref(&restarted),
        200,
        "served from the cache",
    )
    .await;
    assert!(restarted
        .log_text()
        .contains("starting from the cached bundle"));
    // A node with neither control plane nor cache refuses to start, clearly.
    let empty = tempfile::tempdir().unwrap();
    let mut orphan = Gateway::spawn(&[
        "--control-plane",
        &cp_url,
        "--cache",
        empty.path().to_str().unwrap(),
    ]);
    let status = orphan.wait_exit(Duration::from_secs(10)).expect("exits");
    assert_eq!(status.code(), Some(2));
    assert!(
        orphan.log_text().contains("no usable cached bundle"),
        "{}",
        orphan.log_text()
    );
}

#[test]
fn admin_principals_guard_a_nodes_policy_views_but_not_its_probes() {
    let sim = Sim::one("approvals");
    let dir = PolicyDir::new();
    dir.write(
        "app.yaml",
        &app_policy("app", "app.test", &[sim.url(0)], "", ONE_ROUTE),
    );
    let keys = tempfile::tempdir().unwrap();
    let token = add_principal(keys.path(), "grafana", "viewer");
    let principals = keys.path().join("principals.json");
    let mut gw = Gateway::start(
        dir.path(),
        &["--admin-principals", principals.to_str().unwrap()],
    );
    for path in ["/v1/policy", "/v1/apps"] {
        let (status, body) = try_http_get(gw.admin, path, "admin").unwrap();
        assert_eq!(status, 401, "{path}: {body}");
        assert!(body.contains("Bearer"), "{body}");
        let (status, _) = try_http_get_with(
            gw.admin,
            path,
            "admin",
            "Authorization: Bearer ght_00000000000000000000000000000000\r\n",
        )
        .unwrap();
        assert_eq!(status, 401, "an unknown token is refused");
    }
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(
            try_http_get(gw.admin, path, "admin").unwrap().0,
            200,
            "{path}"
        );
    }
    gw.admin_token = Some(token);
    assert_eq!(gw.admin_json("/v1/apps")["apps"][0]["name"], "app");
}

/// SIGHUP reloads policy files; in governed and fleet mode there are none
/// to reload, and the signal is logged and ignored, never the end of the
/// process (its default action).
#[test]
fn sighup_neither_stops_a_governed_control_plane_nor_a_fleet_node() {
    let base = unreachable_app(ONE_ROUTE);
    base.write("review.yaml", REVIEW);
    let mut cp = Governed::start(base.path());
    let node_token = cp.principal("edge", "viewer");
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &node_token).expect("token file");
    let cache = dir.path().join("cache");
    let cp_url = cp.gw.admin_url();
    let mut node = Gateway::launch(&[
        "--control-plane",
        &cp_url,
        "--cache",
        cache.to_str().expect("a path"),
        "--token-file",
        token_file.to_str().expect("a path"),
    ]);
    let version = cp.gw.policy_version();
    for gw in [&cp.gw, &node] {
        gw.signal("HUP");
    }
    for (name, gw) in [("control plane", &mut cp.gw), ("fleet node", &mut node)] {
        assert!(
            gw.wait_exit(Duration::from_secs(1)).is_none(),
            "the {name} ended on SIGHUP"
        );
        assert_eq!(gw.policy_version(), version, "the {name} still serves");
        assert!(
            eventually(Duration::from_secs(2), || gw
                .log_text()
                .contains("SIGHUP ignored")),
            "the {name} logs the signal"
        );
    }
}

/// With no review rules at all (no `review.yaml`), a proposal still needs
/// the floor: one approval by a reviewer who is not its author.
#[test]
fn without_review_rules_a_proposal_still_needs_one_reviewer() {
    let base = unreachable_app(ONE_ROUTE);
    let cp = Governed::start(base.path());
    let alice = cp.principal("alice", "author,reviewer");
    let bob = cp.principal("bob", "reviewer");
    let ops = cp.principal("ops", "operator");
    let next = unreachable_app(TWO_ROUTES);
    let (code, out, err) = cp.policy(
        &alice,
        &[
            "propose",
            next.path().to_str().unwrap(),
            "--title",
            "a route",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("proposal 1 [open]"), "{out}");
    assert!(
        out.contains("1 more approval(s) from reviewers (floor)"),
        "{out}"
    );
    let (code, _, err) = cp.policy(&ops, &["activate", "1"]);
    assert_eq!(code, 1, "activated without any review: {err}");
    let (code, _, err) = cp.policy(&alice, &["review", "1", "--approve"]);
    assert_eq!(code, 1, "the author approved their own proposal: {err}");
    let (code, out, err) = cp.policy(&bob, &["review", "1", "--approve"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = cp.policy(&ops, &["activate", "1"]);
    assert_eq!(code, 0, "{out}{err}");
}

/// The shipped example bundle, copied into a directory of its own.
fn shipped_copy() -> PolicyDir {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let dir = PolicyDir::new();
    for f in files_of(&root).as_array().unwrap() {
        dir.write(f["path"].as_str().unwrap(), f["text"].as_str().unwrap());
    }
    dir
}

/// A proposal a board reads cannot hide a material change behind an
/// innocuous one: each pair of the review-integrity report, proposed in
/// governed mode with an owner edit beside it, lists the material change
/// typed — in the proposal and in `policy diff --format json` — and asks
/// for the approvals its class needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposal_lists_every_material_change_beside_an_innocuous_one() {
    let base = shipped_copy();
    let cp = Governed::start(base.path());
    let alice = cp.principal("alice", "author");
    let c = client();
    let url = |p: &str| format!("{}{p}", cp.gw.admin_url());
    let key = "9c87711a24e85628380fe628543662cdfa91acfb8983855846da4753fec501fc";
    let cases: [(&str, &str, &str, &str, &str); 5] = [
        (
            "consumers.yaml",
            key,
            &"ab".repeat(32),
            "credentials.granted",
            "security",
        ),
        (
            "apps/orders.yaml",
            "routes: [submitOrder]",
            "routes: [deleteOrder]",
            "limits.loosened",
            "platform-team",
        ),
        (
            "consumers.yaml",
            "limit: 50000, window: day",
            "limit: 5000000, window: day",
            "limits.loosened",
            "platform-team",
        ),
        (
            "consumers.yaml",
            "jwt_subjects: [\"hr-self-service\"]",
            "jwt_subjects: [\"hr-self-service\", \"any\"]",
            "credentials.granted",
            "security",
        ),
        (
            "review.yaml",
            "approvals: 2",
            "approvals: 1",
            "review_rules.changed",
            "governance-board",
        ),
    ];
    for (i, (file, from, to, class, group)) in cases.iter().enumerate() {
        let next = shipped_copy();
        let path = next.path().join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{file} has `{from}`");
        next.write(file, &text.replacen(from, to, 1));
        let orders = std::fs::read_to_string(next.path().join("apps/orders.yaml")).unwrap();
        next.write(
            "apps/orders.yaml",
            &orders.replace("team-commerce@corp.example", "orders-team@corp.example"),
        );
        let (s, p) = post(
            &c,
            url("/v1/proposals"),
            Some(&alice),
            Some(json!({ "title": format!("orders: fix owner mailbox ({i})"), "files": files_of(next.path()) })),
        )
        .await;
        assert_eq!(s, 201, "{p}");
        let changes = p["changes"].as_array().unwrap();
        assert!(
            changes.iter().any(|c| c["class"] == *class),
            "case {i}: no {class} in {p}"
        );
        assert!(
            changes.iter().any(|c| c["class"] == "metadata.changed"),
            "case {i}: {p}"
        );
        assert!(
            p["required"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["group"] == *group),
            "case {i}: {class} needs {group}: {p}"
        );
        assert!(
            !p.to_string().contains(key),
            "a key hash is never shown: {p}"
        );
        // Only alice is a principal here: the groups' other members are
        // pointed out.
        let not = p["not_principals"].as_array().unwrap();
        assert!(
            !not.is_empty() && !not.iter().any(|n| n == "alice"),
            "review-group members who are not principals are pointed out: {p}"
        );
        let (code, out, err) = cli(
            &[
                "policy",
                "diff",
                base.path().to_str().unwrap(),
                next.path().to_str().unwrap(),
                "--format",
                "json",
            ],
            &[],
        );
        assert!(code == 0 || code == 1, "{err}");
        let diff: Value = serde_json::from_str(&out).unwrap();
        assert!(
            diff["changes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["class"] == *class),
            "case {i}: policy diff: {out}"
        );
    }
    // A reviewer group may gain only principals that exist.
    for (member, status) in [("zed", 422), ("alice", 201)] {
        let next = shipped_copy();
        let review = std::fs::read_to_string(next.path().join("review.yaml")).unwrap();
        next.write(
            "review.yaml",
            &review.replace(
                "security: [grace, heidi]",
                &format!("security: [grace, heidi, {member}]"),
            ),
        );
        let (s, p) = post(
            &c,
            url("/v1/proposals"),
            Some(&alice),
            Some(json!({ "title": format!("add {member} to security"), "files": files_of(next.path()) })),
        )
        .await;
        assert_eq!(s, status, "{p}");
        if status == 422 {
            let text = p.to_string();
            assert!(
                text.contains("`zed` is not a principal")
                    && text.contains("/review/groups/security"),
                "{text}"
            );
        }
    }
    // Deleting the review rules is spelled out and needs the strictest
    // quorum of the rules in force.
    let next = shipped_copy();
    std::fs::remove_file(next.path().join("review.yaml")).unwrap();
    let (s, p) = post(
        &c,
        url("/v1/proposals"),
        Some(&alice),
        Some(json!({ "title": "tidy up", "files": files_of(next.path()) })),
    )
    .await;
    assert_eq!(s, 201, "{p}");
    assert!(p.to_string().contains("review rules removed"), "{p}");
    assert!(
        p["required"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["group"] == "governance-board" && r["approvals"] == 2),
        "{p}"
    );
}

/// Principals are managed over the admin API (admin role), every step
/// audited; tokens can expire; a principal minted outside the API — on the
/// state directory — is named in the audit log as such, not passed off as
/// an ordinary principal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn principals_are_governed_through_the_api_and_outside_changes_are_recorded() {
    let base = unreachable_app(ONE_ROUTE);
    let cp = Governed::start(base.path());
    let root = cp.principal("root", "admin");
    let bob = cp.principal("bob", "reviewer");
    let c = client();
    let url = |p: &str| format!("{}{p}", cp.gw.admin_url());
    let (s, _) = get(&c, url("/v1/principals"), Some(&bob), None).await;
    assert_eq!(s, 403, "listing principals needs the admin role");
    let (s, p) = post(
        &c,
        url("/v1/principals"),
        Some(&root),
        Some(json!({ "name": "carol", "roles": ["reviewer"], "expires_in": "1h" })),
    )
    .await;
    assert_eq!(s, 201, "{p}");
    let carol = p["token"].as_str().unwrap().to_string();
    let (s, _) = get(&c, url("/v1/governance/status"), Some(&carol), None).await;
    assert_eq!(s, 200);
    let (s, list) = get(&c, url("/v1/principals"), Some(&root), None).await;
    assert_eq!(s, 200);
    let carol_row = list["principals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "carol")
        .cloned()
        .unwrap();
    assert_eq!(carol_row["roles"], json!(["reviewer"]));
    assert!(carol_row["expires"].is_string(), "{list}");
    assert!(
        !list.to_string().contains("sha256"),
        "no token hashes: {list}"
    );
    let (s, p) = post(
        &c,
        url("/v1/principals/carol/roles"),
        Some(&root),
        Some(json!({ "roles": ["reviewer", "operator"] })),
    )
    .await;
    assert_eq!(s, 200, "{p}");
    let (s, p) = post(&c, url("/v1/principals/carol/revoke"), Some(&root), None).await;
    assert_eq!(s, 200, "{p}");
    let (s, _) = get(&c, url("/v1/governance/status"), Some(&carol), None).await;
    assert_eq!(s, 401, "a revoked token stops working at once");
    let (s, _) = post(&c, url("/v1/principals/nobody/revoke"), Some(&root), None).await;
    assert_eq!(s, 404);
    // An expired token does not work.
    let (s, p) = post(
        &c,
        url("/v1/principals"),
        Some(&root),
        Some(json!({ "name": "temp", "roles": ["viewer"], "expires_in": "1s" })),
    )
    .await;
    assert_eq!(s, 201, "{p}");
    let temp = p["token"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (s, _) = get(&c, url("/v1/governance/status"), Some(&temp), None).await;
    assert_eq!(s, 401, "expired");
    // The same from the CLI.
    let admin_url = cp.gw.admin_url();
    let env = [
        ("GATEHOUSE_URL", admin_url.as_str()),
        ("GATEHOUSE_TOKEN", root.as_str()),
    ];
    let (code, out, err) = cli(
        &[
            "admin",
            "create-principal",
            "--name",
            "dana",
            "--role",
            "reviewer,author",
            "--expires-in",
            "30d",
        ],
        &env,
    );
    assert_eq!(code, 0, "{err}");
    let dana = out.trim().to_string();
    assert!(dana.starts_with("ght_"), "{out}");
    let (s, _) = get(&c, url("/v1/governance/status"), Some(&dana), None).await;
    assert_eq!(s, 200);
    let (code, out, err) = cli(&["admin", "principals"], &env);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("dana") && out.contains("author, reviewer") && out.contains("expires"),
        "{out}"
    );
    let (code, _, err) = cli(
        &["admin", "set-roles", "--name", "dana", "--role", "viewer"],
        &env,
    );
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = cli(&["admin", "revoke", "--name", "dana"], &env);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("revoked dana"), "{out}");
    let (code, _, err) = cli(
        &["admin", "principals"],
        &[
            ("GATEHOUSE_URL", admin_url.as_str()),
            ("GATEHOUSE_TOKEN", bob.as_str()),
        ],
    );
    assert_eq!(code, 1, "a reviewer cannot list principals: {err}");
    // Minted on the state directory: recorded as an outside change.
    let _mallory = cp.principal("mallory", "operator");
    let (s, audit) = get(&c, url("/v1/audit?action=principal"), Some(&root), None).await;
    assert_eq!(s, 200);
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for a in ["principal.create", "principal.roles", "principal.revoke"] {
        assert!(actions.contains(&a), "{a} audited: {audit}");
    }
    assert!(
        !audit.to_string().contains(&carol),
        "tokens are never audited"
    );
    let (_, audit) = get(
        &c,
        url("/v1/audit?action=principals.changed_outside_api"),
        Some(&root),
        None,
    )
    .await;
    let text = audit.to_string();
    assert!(text.contains("`mallory` added (operator)"), "{text}");
    assert!(
        !text.contains("`carol`"),
        "API changes are not outside changes: {text}"
    );
}

/// With an audit signing key kept outside the state directory, every
/// entry is signed and `audit verify --public-key` checks it; each head is
/// in the node's log too; a signed log is not continued unsigned, and a key
/// inside the state directory is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_audit_log_verifies_and_is_not_continued_unsigned() {
    let base = unreachable_app(ONE_ROUTE);
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("audit.key");
    let (code, public, err) = cli(&["audit", "keygen", "--out", key.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(public.trim().len(), 64, "{public}");
    let state = tempfile::tempdir().unwrap();
    let probe = add_principal(state.path(), "probe", "viewer");
    let alice = add_principal(state.path(), "alice", "author");
    let args = |extra: &[&str]| -> Vec<String> {
        let mut args = vec![
            "--state",
            state.path().to_str().unwrap(),
            "--policies",
            base.path().to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        args.into_iter().map(String::from).collect()
    };
    let start = |extra: &[&str]| {
        let a = args(extra);
        Gateway::spawn(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let a = args(&["--audit-signing-key", key.to_str().unwrap()]);
    let mut gw = Gateway::launch(&a.iter().map(String::as_str).collect::<Vec<_>>());
    gw.admin_token = Some(probe.clone());
    let c = client();
    let next = unreachable_app(TWO_ROUTES);
    let (s, p) = post(
        &c,
        format!("{}/v1/proposals", gw.admin_url()),
        Some(&alice),
        Some(json!({ "title": "a route", "files": files_of(next.path()) })),
    )
    .await;
    assert_eq!(s, 201, "{p}");
    let audit = state.path().join("audit.jsonl");
    let pub_file = format!("{}.pub", key.display());
    let (code, out, err) = cli(
        &[
            "audit",
            "verify",
            audit.to_str().unwrap(),
            "--public-key",
            &pub_file,
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("signatures valid"), "{out}");
    let text = std::fs::read_to_string(&audit).unwrap();
    assert!(
        text.lines().all(|l| l.contains("\"sig\":")),
        "every entry is signed: {text}"
    );
    assert!(
        gw.log_text().contains("audit head"),
        "heads go to the node's log"
    );
    drop(gw);
    // Not continued unsigned; a key inside the state directory is refused.
    let mut unsigned = start(&[]);
    let status = unsigned.wait_exit(Duration::from_secs(10)).expect("exits");
    assert_ne!(status.code(), Some(0));
    assert!(
        unsigned.log_text().contains("--audit-signing-key"),
        "{}",
        unsigned.log_text()
    );
    let inside = state.path().join("audit.key");
    std::fs::copy(&key, &inside).unwrap();
    let mut careless = start(&["--audit-signing-key", inside.to_str().unwrap()]);
    let status = careless.wait_exit(Duration::from_secs(10)).expect("exits");
    assert_ne!(status.code(), Some(0));
    assert!(
        careless.log_text().contains("inside the state directory"),
        "{}",
        careless.log_text()
    );
}

fn idp_token(claims: Value) -> String {
    let pem = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/es256.key.pem"))
        .unwrap();
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    h.kid = Some(IDP_ES256_KID.into());
    jsonwebtoken::encode(
        &h,
        &claims,
        &jsonwebtoken::EncodingKey::from_ec_pem(&pem).unwrap(),
    )
    .unwrap()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Single sign-on: the identity provider's tokens stand for principals on
/// the admin API — named by a claim (review groups list those names), roles
/// from the groups claim — beside the static tokens for automation. A
/// token that names a static principal, has expired, or is meant for
/// another audience is refused; first sign-ins are audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_identity_providers_tokens_sign_reviewers_and_operators_in() {
    let base = unreachable_app(ONE_ROUTE);
    base.write("review.yaml", REVIEW);
    let state = tempfile::tempdir().unwrap();
    let probe = add_principal(state.path(), "probe", "viewer");
    let alice = add_principal(state.path(), "alice", "author");
    let root = add_principal(state.path(), "root", "admin");
    let jwks = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/idp.jwks.json");
    let mut gw = Gateway::launch(&[
        "--state",
        state.path().to_str().unwrap(),
        "--policies",
        base.path().to_str().unwrap(),
        "--admin-oidc-issuer",
        "https://sso.corp.example",
        "--admin-oidc-audience",
        "gatehouse-admin",
        "--admin-oidc-jwks",
        jwks.to_str().unwrap(),
        "--admin-oidc-role",
        "gov-board=reviewer",
        "--admin-oidc-role",
        "platform=operator",
    ]);
    gw.admin_token = Some(probe);
    let c = client();
    let url = |p: &str| format!("{}{p}", gw.admin_url());
    let claims = |name: &str, groups: &[&str]| {
        json!({ "iss": "https://sso.corp.example", "aud": "gatehouse-admin", "preferred_username": name,
                "groups": groups, "exp": unix_now() + 300 })
    };
    let bob = idp_token(claims("bob", &["gov-board"]));
    let jane = idp_token(claims("jane", &["platform"]));
    let next = unreachable_app(TWO_ROUTES);
    next.write("review.yaml", REVIEW);
    let (s, p) = post(
        &c,
        url("/v1/proposals"),
        Some(&alice),
        Some(json!({ "title": "a route", "files": files_of(next.path()) })),
    )
    .await;
    assert_eq!(s, 201, "{p}");
    let id = p["id"].as_u64().unwrap();
    // Refused: a static principal's name, an expired token, another audience.
    let mut as_alice = claims("alice", &["gov-board"]);
    let (s, _) = post(
        &c,
        url(&format!("/v1/proposals/{id}/reviews")),
        Some(&idp_token(as_alice.clone())),
        Some(json!({ "verdict": "approve" })),
    )
    .await;
    assert_eq!(s, 401, "the IdP cannot sign in as a static principal");
    as_alice["preferred_username"] = json!("carol");
    as_alice["exp"] = json!(unix_now() - 120);
    let (s, _) = get(
        &c,
        url("/v1/governance/status"),
        Some(&idp_token(as_alice.clone())),
        None,
    )
    .await;
    assert_eq!(s, 401, "expired");
    as_alice["exp"] = json!(unix_now() + 300);
    as_alice["aud"] = json!("hr-api");
    let (s, _) = get(
        &c,
        url("/v1/governance/status"),
        Some(&idp_token(as_alice)),
        None,
    )
    .await;
    assert_eq!(s, 401, "another audience");
    // A board member signed in through the IdP approves; an operator activates.
    let (s, p) = activate(&c, &url, id, &jane).await;
    assert_eq!(s, 409, "not approved yet: {p}");
    let (s, p) = approve(&c, &url, id, &jane).await;
    assert_eq!(s, 403, "the platform group gives no reviewer role: {p}");
    let (s, p) = approve(&c, &url, id, &bob).await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(p["state"], "approved", "{p}");
    let (s, p) = activate(&c, &url, id, &jane).await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(p["activated"]["by"], "jane", "{p}");
    let (_, list) = get(&c, url("/v1/principals"), Some(&root), None).await;
    assert!(
        list["principals"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "bob"
                && p["source"] == "oidc"
                && p["roles"] == json!(["reviewer"])),
        "{list}"
    );
    let (_, audit) = get(
        &c,
        url("/v1/audit?action=principal.sso_signin"),
        Some(&root),
        None,
    )
    .await;
    let signins: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["principal"].as_str().unwrap())
        .collect();
    assert_eq!(signins.len(), 2, "one entry per first sign-in: {audit}");
    assert!(
        signins.contains(&"bob") && signins.contains(&"jane"),
        "{audit}"
    );
    assert!(
        !audit.to_string().contains(&bob),
        "tokens are never audited"
    );
}

/// The key id of `fixtures/es256.key.pem` in `fixtures/idp.jwks.json`.
const IDP_ES256_KID: &str = "es-1";

/// A bundle of one app `app` (host `app.test`) whose instance nobody
/// listens on, with `routes`: for review tests, where no request is sent.
fn unreachable_app(routes: &str) -> PolicyDir {
    let dir = PolicyDir::new();
    dir.write(
        "app.yaml",
        &app_policy(
            "app",
            "app.test",
            &["http://127.0.0.1:9".to_string()],
            "",
            routes,
        ),
    );
    dir
}

/// Approve proposal `id` as `token` (no comment); `url` makes an admin URL.
async fn approve(
    c: &reqwest::Client,
    url: &impl Fn(&str) -> String,
    id: u64,
    token: &str,
) -> (u16, Value) {
    post(
        c,
        url(&format!("/v1/proposals/{id}/reviews")),
        Some(token),
        Some(json!({ "verdict": "approve" })),
    )
    .await
}

/// Activate proposal `id` as `token`.
async fn activate(
    c: &reqwest::Client,
    url: &impl Fn(&str) -> String,
    id: u64,
    token: &str,
) -> (u16, Value) {
    post(
        c,
        url(&format!("/v1/proposals/{id}/activate")),
        Some(token),
        None,
    )
    .await
}

/// The control plane copies every audit head to ClickHouse, apart from the
/// state directory: a log cut short and given a matching head passes the
/// file-only check, and fails `audit verify --clickhouse`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_heads_in_clickhouse_expose_a_log_cut_short() {
    let ch = ClickHouse::start();
    let base = unreachable_app(ONE_ROUTE);
    let state = tempfile::tempdir().unwrap();
    let spool = tempfile::tempdir().unwrap();
    let probe = add_principal(state.path(), "probe", "viewer");
    let alice = add_principal(state.path(), "alice", "author");
    let url = ch.url();
    let mut gw = Gateway::launch(&[
        "--state",
        state.path().to_str().unwrap(),
        "--policies",
        base.path().to_str().unwrap(),
        "--clickhouse",
        &url,
        "--clickhouse-database",
        "ah",
        "--migrate",
        "--spool-dir",
        spool.path().to_str().unwrap(),
    ]);
    gw.admin_token = Some(probe);
    let c = client();
    let next = unreachable_app(TWO_ROUTES);
    let (s, p) = post(
        &c,
        format!("{}/v1/proposals", gw.admin_url()),
        Some(&alice),
        Some(json!({ "title": "a route", "files": files_of(next.path()) })),
    )
    .await;
    assert_eq!(s, 201, "{p}");
    let file = state.path().join("audit.jsonl");
    let lines = || std::fs::read_to_string(&file).unwrap().lines().count();
    let start = Instant::now();
    loop {
        let n: usize = ch
            .query("SELECT count() FROM ah.audit_heads")
            .trim()
            .parse()
            .unwrap_or(0);
        if n == lines() && n >= 3 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "heads not exported: {n} of {}",
            lines()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(gw);
    let verify = |extra: &[&str]| {
        let mut args = vec!["audit", "verify", file.to_str().unwrap()];
        args.extend_from_slice(extra);
        cli(&args, &[])
    };
    let (code, out, err) = verify(&["--clickhouse", &url, "--database", "ah"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("exported heads match"), "{out}");
    // Cut the last entry off and write a head that matches what is left.
    let text = std::fs::read_to_string(&file).unwrap();
    let kept: Vec<&str> = text.lines().collect();
    let kept = &kept[..kept.len() - 1];
    std::fs::write(&file, kept.join("\n") + "\n").unwrap();
    let last: Value = serde_json::from_str(kept[kept.len() - 1]).unwrap();
    std::fs::write(
        state.path().join("audit.jsonl.head"),
        json!({ "seq": last["seq"], "hash": last["hash"] }).to_string(),
    )
    .unwrap();
    let (code, out, _) = verify(&[]);
    assert_eq!(code, 0, "the file alone cannot tell: {out}");
    let (code, out, _) = verify(&["--clickhouse", &url, "--database", "ah"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("entries removed from the end"), "{out}");
}
