//! Load spreads over instances as the balancing algorithm says.

use std::collections::HashMap;

use gatehouse_e2e::*;

fn three(kind: &str) -> Sim {
    Sim::start(
        &[
            (kind, "127.0.0.1:0"),
            (kind, "127.0.0.1:0"),
            (kind, "127.0.0.1:0"),
        ],
        &[],
    )
}

async fn instance_of(
    c: &reqwest::Client,
    gw: &Gateway,
    path: &str,
    headers: &[(&str, &str)],
) -> String {
    let mut req = c
        .get(format!("{}{path}", gw.url()))
        .header("host", "app.test");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.headers()["x-sim-instance"].to_str().unwrap().to_string()
}

#[tokio::test]
async fn round_robin_spreads_evenly() {
    let sim = three("approvals");
    let dir = PolicyDir::new();
    let urls: Vec<String> = (0..3).map(|i| sim.url(i)).collect();
    dir.write(
        "a.yaml",
        &app_policy(
            "app",
            "app.test",
            &urls,
            "      balancing: round_robin",
            "      - { method: GET, path: \"/approvals/{id}\" }",
        ),
    );
    let gw = Gateway::start(dir.path(), &[]);
    let c = client();
    let mut counts: HashMap<String, u32> = HashMap::new();
    for i in 0..300 {
        *counts
            .entry(instance_of(&c, &gw, &format!("/approvals/{}", i + 1), &[]).await)
            .or_default() += 1;
    }
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(
        counts.values().all(|&n| n == 100),
        "sequential round robin is exact: {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_avoids_busy_instances() {
    let sim = three("approvals");
    let dir = PolicyDir::new();
    let urls: Vec<String> = (0..3).map(|i| sim.url(i)).collect();
    dir.write(
        "a.yaml",
        &app_policy(
            "app",
            "app.test",
            &urls,
            "      balancing: least_connections",
            "      - { method: GET, path: \"/approvals/{id}\" }",
        ),
    );
    let gw = Gateway::start(dir.path(), &[]);
    let c = client();
    // Two slow requests occupy two instances; quick ones must all go to the third.
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let c = c.clone();
            let url = format!("{}/approvals/1", gw.url());
            tokio::spawn(async move {
                let r = c
                    .get(url)
                    .header("host", "app.test")
                    .header("x-sim-delay-ms", "1500")
                    .send()
                    .await
                    .unwrap();
                r.headers()["x-sim-instance"].to_str().unwrap().to_string()
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut quick = Vec::new();
    for i in 0..10 {
        quick.push(instance_of(&c, &gw, &format!("/approvals/{}", i + 2), &[]).await);
    }
    let mut busy = Vec::new();
    for s in slow {
        busy.push(s.await.unwrap());
    }
    assert_ne!(
        busy[0], busy[1],
        "the second slow request went to an idle instance"
    );
    assert!(
        quick.iter().all(|q| !busy.contains(q)),
        "quick {quick:?} vs busy {busy:?}"
    );
}

#[tokio::test]
async fn consistent_hash_keeps_a_key_on_one_instance() {
    let sim = three("approvals");
    let dir = PolicyDir::new();
    let urls: Vec<String> = (0..3).map(|i| sim.url(i)).collect();
    dir.write(
        "a.yaml",
        &app_policy(
            "app",
            "app.test",
            &urls,
            "      balancing: consistent_hash\n      hash_header: x-tenant",
            "      - { method: GET, path: \"/approvals/{id}\" }",
        ),
    );
    let gw = Gateway::start(dir.path(), &[]);
    let c = client();
    let mut owners = HashMap::new();
    for tenant in 0..30 {
        let t = format!("tenant-{tenant}");
        let first = instance_of(&c, &gw, "/approvals/1", &[("x-tenant", &t)]).await;
        for _ in 0..5 {
            assert_eq!(
                instance_of(&c, &gw, "/approvals/2", &[("x-tenant", &t)]).await,
                first
            );
        }
        owners.insert(t, first);
    }
    let distinct: std::collections::HashSet<_> = owners.values().collect();
    assert_eq!(
        distinct.len(),
        3,
        "30 tenants spread over all instances: {owners:?}"
    );
}
