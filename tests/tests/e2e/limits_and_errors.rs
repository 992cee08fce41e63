//! Request body caps: 413 before the upstream sees a byte.

use gatehouse_e2e::*;
use serde_json::Value;

#[tokio::test]
async fn oversized_bodies_get_413_and_the_upstream_sees_nothing() {
    let sim = Sim::one("approvals");
    let dir = PolicyDir::new();
    dir.write(
        "a.yaml",
        &app_policy(
            "app",
            "app.test",
            &[sim.url(0)],
            "    max_request_body: 1KiB",
            "      - { method: POST, path: /approvals }\n      - { method: POST, path: \"/approvals/{id}/approve\", max_request_body: 100 }",
        ),
    );
    let gw = Gateway::start(dir.path(), &[]);
    let c = client();
    let big = format!("{{\"note\":\"{}\"}}", "x".repeat(4000));

    // Declared length over the cap.
    let r = c
        .post(format!("{}/approvals", gw.url()))
        .header("host", "app.test")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["type"], "https://gatehouse.dev/problems/body-too-large");
    assert!(p["detail"].as_str().unwrap().contains("1024"), "{p}");

    // Chunked, no declared length.
    let chunk = "x".repeat(600);
    let req = format!(
        "POST /approvals HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{len:x}\r\n{chunk}\r\n{len:x}\r\n{chunk}\r\n0\r\n\r\n",
        len = chunk.len()
    );
    let resp = raw_http(gw.addr, req.as_bytes());
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");

    // A per-route cap overrides the app's.
    let r = c
        .post(format!("{}/approvals/1/approve", gw.url()))
        .header("host", "app.test")
        .body("y".repeat(200))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);

    assert_eq!(
        sim.requests(0),
        0,
        "the upstream saw none of the refused requests"
    );

    // Under the cap: forwarded byte for byte (chunked too).
    let small = "{\"workflow\":\"travel\",\"amount\":120}";
    let r = c
        .post(format!("{}/approvals", gw.url()))
        .header("host", "app.test")
        .body(small)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    assert_eq!(created["workflow"], "travel");
    let req = format!(
        "POST /approvals HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{small}\r\n0\r\n\r\n",
        small.len()
    );
    let resp = raw_http(gw.addr, req.as_bytes());
    assert!(resp.starts_with("HTTP/1.1 201"), "{resp}");
    assert_eq!(sim.requests(0), 2);
}
