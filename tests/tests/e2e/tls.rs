//! TLS termination with HTTP/2 through ALPN.

use gatehouse_e2e::*;
use serde_json::Value;

#[tokio::test]
async fn tls_listener_speaks_http2_and_http11() {
    let sim = Sim::one("approvals");
    let dir = PolicyDir::new();
    dir.write(
        "a.yaml",
        &app_policy(
            "app",
            "app.test",
            &[sim.url(0)],
            "    passthrough: true",
            "      - { method: GET, path: \"/approvals/{id}\" }",
        ),
    );
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_certs(certs.path());
    let tls_port = free_port();
    let tls_addr = format!("127.0.0.1:{tls_port}");
    let gw = Gateway::start(
        dir.path(),
        &[
            "--tls-listen",
            &tls_addr,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ],
    );
    let _ = &gw;
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap();
    let addr: std::net::SocketAddr = tls_addr.parse().unwrap();
    for (h2, expected) in [
        (true, reqwest::Version::HTTP_2),
        (false, reqwest::Version::HTTP_11),
    ] {
        let mut b = reqwest::Client::builder()
            .no_proxy()
            .add_root_certificate(ca.clone())
            .resolve("app.test", addr);
        if !h2 {
            b = b.http1_only();
        }
        let c = b.build().unwrap();
        let r = c
            .get(format!("https://app.test:{tls_port}/__sim/echo"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.version(), expected);
        let echo: Value = r.json().await.unwrap();
        assert_eq!(echo["headers"]["x-forwarded-proto"], "https");
        assert!(
            echo["headers"]["host"]
                .as_str()
                .unwrap()
                .starts_with("app.test"),
            "HTTP/2's :authority reaches the app as Host: {echo}"
        );
    }
}

#[tokio::test]
async fn h2c_serves_cleartext_http2_next_to_http11() {
    let sim = Sim::one("approvals");
    let dir = PolicyDir::new();
    dir.write(
        "a.yaml",
        &app_policy(
            "app",
            "app.test",
            &[sim.url(0)],
            "    passthrough: true",
            "      - { method: GET, path: \"/approvals/{id}\" }",
        ),
    );
    let gw = Gateway::start(dir.path(), &["--h2c"]);
    let h2 = h2c_client("app.test", gw.addr);
    let r = h2
        .get(format!("http://app.test:{}/approvals/3", gw.addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    let r = client()
        .get(format!("{}/approvals/3", gw.url()))
        .header("host", "app.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    assert_eq!(r.status(), 200);
}
