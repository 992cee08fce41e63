//! Consumer identity (API keys, JWTs), app access and rate limits.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gatehouse_e2e::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join(name),
    )
    .expect("fixture")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(alg: Algorithm, kid: &str, claims: Value) -> String {
    let key = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(&fixture("es256.key.pem")).unwrap(),
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&fixture("rs256.key.pem")).unwrap(),
        _ => EncodingKey::from_secret(b"not-the-secret"),
    };
    let mut h = Header::new(alg);
    h.kid = Some(kid.into());
    encode(&h, &claims, &key).unwrap()
}

fn sso_claims() -> Value {
    json!({ "iss": "https://sso.corp.example", "aud": "hr-api", "azp": "hr-self-service", "sub": "u123", "exp": now() + 300 })
}

#[tokio::test]
async fn api_keys_jwts_and_app_access() {
    let sim = example_estate();
    let (dir, key) = example_policies(&sim, |rel, t| {
        if rel == "apps/approvals.yaml" {
            t.replace("undocumented: reject", "undocumented: allow")
                .replace(
                    "api_key: { header: x-api-key }",
                    "api_key: { header: x-api-key, query: api_key }",
                )
        } else {
            t
        }
    });
    let (alice, alice_key) = new_consumer(&["--id", "alice", "--apps", "orders"]);
    dir.write("consumers-alice.yaml", &alice);
    let gw = Gateway::start(dir.path(), &[]);
    let c = client();
    let orders = format!("{}/rest/orders/v1/orders/7", gw.url());

    let r = c
        .get(&orders)
        .header("host", "orders.corp.example")
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    for (what, header) in [
        ("missing", None),
        (
            "invalid",
            Some("gh_0000000000000000000000000000000000000000"),
        ),
        ("garbage", Some("let me in")),
    ] {
        let mut req = c.get(&orders).header("host", "orders.corp.example");
        if let Some(h) = header {
            req = req.header("x-api-key", h);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401, "{what}");
        assert!(
            r.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("ApiKey realm=\"gatehouse\""),
            "{what}"
        );
        let p: Value = r.json().await.unwrap();
        assert_eq!(
            p["type"], "https://gatehouse.dev/problems/unauthenticated",
            "{what}"
        );
    }
    assert_eq!(sim.requests(0), 1, "refused requests never reach the app");

    // The key is the gateway's business: the app never sees it (header or query).
    let echo: Value = c
        .get(format!("{}/__sim/echo", gw.url()))
        .header("host", "approvals.corp.example")
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(echo["headers"].get("x-api-key").is_none(), "{echo}");
    let echo: Value = c
        .get(format!("{}/__sim/echo?api_key={key}&page=2", gw.url()))
        .header("host", "approvals.corp.example")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echo["query"], "page=2", "{echo}");

    // A valid consumer on an app it is not allowed to call: 403.
    let r = c
        .get(format!("{}/CRM/rest/v1/customers/5", gw.url()))
        .header("host", "crm.corp.example")
        .header("x-api-key", &alice_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["type"], "https://gatehouse.dev/problems/forbidden");
    let r = c
        .get(&orders)
        .header("host", "orders.corp.example")
        .header("x-api-key", &alice_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // JWTs (ES256 and RS256 from the bundle's JWKS), mapped to a consumer by `azp`.
    let hr = format!("{}/api/hr/departments", gw.url());
    let bearer = |t: String| format!("Bearer {t}");
    for (alg, kid) in [(Algorithm::ES256, "es-1"), (Algorithm::RS256, "rs-1")] {
        let r = c
            .get(&hr)
            .header("host", "hr.corp.example")
            .header("authorization", bearer(token(alg, kid, sso_claims())))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{alg:?}");
    }
    let mut expired = sso_claims();
    expired["exp"] = json!(now() - 600);
    let mut wrong_aud = sso_claims();
    wrong_aud["aud"] = json!("orders-api");
    let mut unknown = sso_claims();
    unknown["azp"] = json!("some-other-client");
    let mut tampered = token(Algorithm::ES256, "es-1", sso_claims());
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let cases = [
        (token(Algorithm::ES256, "es-1", expired), "expired"),
        (
            token(Algorithm::ES256, "es-1", wrong_aud),
            "not meant for this API",
        ),
        (token(Algorithm::ES256, "es-1", unknown), "known consumer"),
        (tampered, "invalid"),
        (token(Algorithm::HS256, "x", sso_claims()), "invalid"),
    ];
    for (t, expected) in cases {
        let r = c
            .get(&hr)
            .header("host", "hr.corp.example")
            .header("authorization", bearer(t))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{expected}");
        assert!(r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("Bearer realm=\"gatehouse\", error=\"invalid_token\""));
        let p: Value = r.json().await.unwrap();
        assert!(
            p["detail"].as_str().unwrap().contains(expected),
            "{expected}: {p}"
        );
    }
    assert!(!gw.log_text().contains(&key), "keys are never logged");
}

fn limited_policy(sim: &Sim, plan: &str) -> (PolicyDir, String, String) {
    let dir = PolicyDir::new();
    dir.write(
        "app.yaml",
        &format!(
            "version: 1\napps:\n  - name: app\n    owner: o\n    hosts: [app.test]\n    upstream: {{ instances: [\"{}\"] }}\n    auth: {{ mode: required, api_key: {{ header: x-api-key }} }}\n    routes: [ {{ method: GET, path: \"/approvals/{{id}}\" }} ]\nplans:\n{plan}",
            sim.url(0)
        ),
    );
    let (noisy, noisy_key) = new_consumer(&["--id", "noisy", "--plan", "p"]);
    let (quiet, quiet_key) = new_consumer(&["--id", "quiet", "--plan", "p"]);
    dir.write("noisy.yaml", &noisy);
    dir.write("quiet.yaml", &quiet);
    (dir, noisy_key, quiet_key)
}

#[tokio::test]
async fn a_noisy_consumer_is_limited_alone_with_standard_headers() {
    let sim = Sim::one("approvals");
    let (dir, noisy, quiet) = limited_policy(
        &sim,
        "  - name: p\n    limits: [ { name: burst, rate: 5/s, burst: 5 } ]\n",
    );
    let gw = Gateway::start(dir.path(), &[]);
    let c = client();
    let get = |key: &str| {
        c.get(format!("{}/approvals/1", gw.url()))
            .header("host", "app.test")
            .header("x-api-key", key.to_string())
            .send()
    };
    let mut remaining = Vec::new();
    for _ in 0..5 {
        let r = get(&noisy).await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["ratelimit-policy"], "\"plan:p:burst\";q=5;w=1");
        let state = r.headers()["ratelimit"].to_str().unwrap().to_string();
        remaining.push(
            state
                .split(";r=")
                .nth(1)
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .parse::<u32>()
                .unwrap(),
        );
    }
    assert_eq!(remaining, vec![4, 3, 2, 1, 0], "RateLimit r= decreases");
    let r = get(&noisy).await.unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    assert!(r.headers()["ratelimit"]
        .to_str()
        .unwrap()
        .starts_with("\"plan:p:burst\";r=0"));
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["type"], "https://gatehouse.dev/problems/rate-limited");
    // The quiet consumer on the same app is unaffected.
    for _ in 0..5 {
        assert_eq!(get(&quiet).await.unwrap().status(), 200);
    }
    // Honouring Retry-After gets the noisy consumer in again.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    assert_eq!(get(&noisy).await.unwrap().status(), 200);
}

#[tokio::test]
async fn quotas_count_per_window() {
    let sim = Sim::one("approvals");
    let (dir, noisy, quiet) = limited_policy(
        &sim,
        "  - name: p\n    quotas: [ { name: per-minute, limit: 3, window: minute } ]\n",
    );
    let gw = Gateway::start(dir.path(), &[]);
    let c = client();
    let get = |key: &str| {
        c.get(format!("{}/approvals/1", gw.url()))
            .header("host", "app.test")
            .header("x-api-key", key.to_string())
            .send()
    };
    for _ in 0..3 {
        assert_eq!(get(&noisy).await.unwrap().status(), 200);
    }
    let r = get(&noisy).await.unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry));
    assert_eq!(get(&quiet).await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_admits_the_configured_rate_within_two_percent() {
    let sim = Sim::one("approvals");
    let (dir, noisy, _) = limited_policy(
        &sim,
        "  - name: p\n    limits: [ { name: steady, rate: 50/s, burst: 10 } ]\n",
    );
    let gw = Gateway::start(dir.path(), &[]);
    let url = format!("{}/approvals/1", gw.url());
    let started = Instant::now();
    let run_for = Duration::from_secs(10);
    let mut workers = Vec::new();
    // Eight callers keep the offered load well above 50/s; the burst of 10
    // absorbs scheduling gaps of up to 200 ms on a busy test machine, which
    // would otherwise lose admissions the limit allows.
    for _ in 0..8 {
        let (url, key) = (url.clone(), noisy.clone());
        workers.push(tokio::spawn(async move {
            let c = client();
            let (mut ok, mut limited) = (0u64, 0u64);
            while started.elapsed() < run_for {
                match c
                    .get(&url)
                    .header("host", "app.test")
                    .header("x-api-key", &key)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                {
                    Ok(200) => ok += 1,
                    Ok(429) => limited += 1,
                    other => panic!("unexpected {other:?}"),
                }
            }
            (ok, limited)
        }));
    }
    let (mut ok, mut limited) = (0, 0);
    for w in workers {
        let (o, l) = w.await.unwrap();
        ok += o;
        limited += l;
    }
    let expected = 50.0 * run_for.as_secs_f64() + 10.0;
    let error = (ok as f64 - expected).abs() / expected;
    assert!(
        limited > ok,
        "the load was above the limit: {ok} admitted, {limited} refused"
    );
    assert!(
        error <= 0.02,
        "admitted {ok}, expected {expected} ± 2% (off by {:.2}%)",
        error * 100.0
    );
}
