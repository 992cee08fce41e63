//! Requests reach the right app; headers; gateway-generated problems.

use gatehouse_e2e::*;
use serde_json::Value;

fn estate() -> (Sim, PolicyDir) {
    let sim = Sim::start(
        &[
            ("orders", "127.0.0.1:0"),
            ("customers", "127.0.0.1:0"),
            ("approvals", "127.0.0.1:0"),
        ],
        &[],
    );
    let dir = PolicyDir::new();
    dir.write(
        "orders.yaml",
        &format!(
            "version: 1\napps:\n  - name: orders\n    owner: o@x\n    hosts: [orders.test]\n    path_prefix: /rest/orders/v1\n    upstream: {{ instances: [\"{}\"] }}\n    routes:\n      - {{ id: get-order, method: GET, path: \"/orders/{{id}}\" }}\n      - {{ id: export, method: GET, path: /orders/export }}\n      - {{ id: create-order, method: POST, path: /orders }}\n",
            sim.url(0)
        ),
    );
    dir.write(
        "crm.yaml",
        &format!(
            "version: 1\napps:\n  - name: crm\n    owner: c@x\n    hosts: [crm.test]\n    path_prefix: /CRM/rest/v1\n    upstream: {{ instances: [\"{}\"] }}\n    routes:\n      - {{ method: GET, path: \"/customers/{{id}}\" }}\n",
            sim.url(1)
        ),
    );
    dir.write(
        "tools.yaml",
        &format!(
            "version: 1\napps:\n  - name: tools\n    owner: t@x\n    hosts: [\"*.tools.test\"]\n    passthrough: true\n    upstream: {{ instances: [\"{0}\"] }}\n  - name: legacy\n    owner: t@x\n    hosts: [orders.test]\n    path_prefix: /legacy\n    strip_prefix: true\n    passthrough: true\n    upstream: {{ instances: [\"{0}\"] }}\n  - name: fwd-host\n    owner: t@x\n    hosts: [host.fwd.test]\n    passthrough: true\n    forwarded: {{ host: true }}\n    upstream: {{ instances: [\"{0}\"] }}\n  - name: fwd-rfc\n    owner: t@x\n    hosts: [rfc.fwd.test]\n    passthrough: true\n    forwarded: {{ style: rfc7239, host: true }}\n    upstream: {{ instances: [\"{0}\"] }}\n  - name: fwd-none\n    owner: t@x\n    hosts: [none.fwd.test]\n    passthrough: true\n    forwarded: {{ style: none }}\n    upstream: {{ instances: [\"{0}\"] }}\n",
            sim.url(2)
        ),
    );
    (sim, dir)
}

#[tokio::test]
async fn requests_reach_the_right_app_and_problems_are_precise() {
    let (sim, dir) = estate();
    let gw = Gateway::start(dir.path(), &[]);
    let c = client();
    let get = |host: &'static str, path: &str| {
        c.get(format!("{}{path}", gw.url()))
            .header("host", host)
            .send()
    };

    let r = get("orders.test", "/rest/orders/v1/orders/7")
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let inst = r.headers()["x-sim-instance"].to_str().unwrap().to_string();
    assert_eq!(inst, format!("orders@{}", sim.addrs[0]));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["id"], 7);

    // Host matching ignores case and port.
    let r = get("CRM.test:8080", "/CRM/rest/v1/customers/5")
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["x-sim-instance"]
        .to_str()
        .unwrap()
        .starts_with("customers@"));

    // Wildcard host, passthrough app.
    let r = get("eu.tools.test", "/workflows/travel").await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["x-sim-instance"]
        .to_str()
        .unwrap()
        .starts_with("approvals@"));
    // A wildcard needs at least one label.
    let r = get("tools.test", "/workflows").await.unwrap();
    assert_eq!(r.status(), 404);

    // Problems: no app, no route, wrong method.
    let r = get("nobody.test", "/x").await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["type"], "https://gatehouse.dev/problems/no-app");
    assert_eq!(p["status"], 404);
    assert_eq!(p["request_id"], rid.as_str());

    let p: Value = get("orders.test", "/rest/orders/v1/invoices")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(p["type"], "https://gatehouse.dev/problems/no-route");

    let r = c
        .delete(format!("{}/rest/orders/v1/orders/7", gw.url()))
        .header("host", "orders.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET, HEAD");

    // None of the refused requests reached the upstream.
    assert_eq!(sim.requests(0), 1);

    // Dot segments, plain or encoded, are resolved before routing: the
    // path they name is the one judged (here: no such route).
    for path in [
        "/rest/orders/v1/orders/../../admin",
        "/rest/orders/v1/%2e%2e/x",
    ] {
        let resp = raw_http(
            gw.addr,
            format!("GET {path} HTTP/1.1\r\nHost: orders.test\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        );
        assert!(resp.starts_with("HTTP/1.1 404"), "{path}: {resp}");
    }
    // Forms apps read in more than one way are refused.
    for path in [
        "/rest/orders/v1/orders/a%2Fb",
        "/rest/orders/v1/orders/a%5Cb",
        "/rest/orders/v1/orders;x",
        "/rest/../..",
    ] {
        let resp = raw_http(
            gw.addr,
            format!("GET {path} HTTP/1.1\r\nHost: orders.test\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        );
        assert!(resp.starts_with("HTTP/1.1 400"), "{path}: {resp}");
        assert!(
            resp.contains("https://gatehouse.dev/problems/bad-path"),
            "{resp}"
        );
    }
    assert_eq!(sim.requests(0), 1);
}

#[tokio::test]
async fn forwarded_headers_request_ids_and_prefix_stripping() {
    let (_sim, dir) = estate();
    let gw = Gateway::start(dir.path(), &[]);
    let c = client();

    let r = c
        .get(format!("{}/__sim/echo/a?x=1", gw.url()))
        .header("host", "eu.tools.test")
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(rid.len(), 36, "a generated UUID");
    let echo: Value = r.json().await.unwrap();
    let h = &echo["headers"];
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert!(
        h.get("x-forwarded-host").is_none(),
        "the app gets the same Host already: {h}"
    );
    assert_eq!(h["host"], "eu.tools.test");
    assert_eq!(h["x-request-id"], rid.as_str());
    assert_eq!(echo["path"], "/__sim/echo/a");
    assert_eq!(echo["query"], "x=1");

    // Per app: X-Forwarded-Host on request, RFC 7239 `Forwarded`, or nothing.
    let echo_headers = |host: &'static str| {
        let c = c.clone();
        let url = format!("{}/__sim/echo", gw.url());
        async move {
            let r = c
                .get(url)
                .header("host", host)
                .header("forwarded", "for=198.51.100.7;proto=https")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()["headers"].clone()
        }
    };
    let h = echo_headers("host.fwd.test").await;
    assert_eq!(h["x-forwarded-host"], "host.fwd.test");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    let h = echo_headers("rfc.fwd.test").await;
    assert_eq!(
        h["forwarded"],
        "for=198.51.100.7;proto=https, for=127.0.0.1;proto=http;host=\"rfc.fwd.test\""
    );
    assert!(h.get("x-forwarded-for").is_none(), "{h}");
    let h = echo_headers("none.fwd.test").await;
    assert!(
        h.get("x-forwarded-for").is_none() && h.get("x-forwarded-proto").is_none(),
        "{h}"
    );
    assert_eq!(
        h["forwarded"], "for=198.51.100.7;proto=https",
        "a client's own header passes untouched"
    );

    // A client's request id is kept end to end.
    let r = c
        .get(format!("{}/__sim/echo", gw.url()))
        .header("host", "eu.tools.test")
        .header("x-request-id", "client-abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "client-abc-123");
    let echo: Value = r.json().await.unwrap();
    assert_eq!(echo["headers"]["x-request-id"], "client-abc-123");

    // strip_prefix: /legacy/__sim/echo reaches the upstream as /__sim/echo.
    let echo: Value = c
        .get(format!("{}/legacy/__sim/echo?q=2", gw.url()))
        .header("host", "orders.test")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echo["path"], "/__sim/echo");
    assert_eq!(echo["query"], "q=2");
}
