//! TLS termination with HTTP/2 through ALPN.

use std::process::Command;

use gatehouse_e2e::*;
use serde_json::Value;

#[tokio::test]
async fn tls_listener_speaks_http2_and_http11() {
    let sim = Sim::one("approvals");
    let dir = PolicyDir::new();
    dir.write("a.yaml", &app_policy("app", "app.test", &[sim.url(0)], "    passthrough: true", "      - { method: GET, path: \"/approvals/{id}\" }"));
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    let st = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=app.test", "-addext", "subjectAltName=DNS:app.test"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl is installed by the test setup");
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let tls_port = free_port();
    let tls_addr = format!("127.0.0.1:{tls_port}");
    let gw = Gateway::start(
        dir.path(),
        &["--tls-listen", &tls_addr, "--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()],
    );
    let _ = &gw;
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&cert).unwrap()).unwrap();
    let addr: std::net::SocketAddr = tls_addr.parse().unwrap();
    for (h2, expected) in [(true, reqwest::Version::HTTP_2), (false, reqwest::Version::HTTP_11)] {
        let mut b = reqwest::Client::builder().no_proxy().add_root_certificate(ca.clone()).resolve("app.test", addr);
        if !h2 {
            b = b.http1_only();
        }
        let c = b.build().unwrap();
        let r = c.get(format!("https://app.test:{tls_port}/__sim/echo")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.version(), expected);
        let echo: Value = r.json().await.unwrap();
        assert_eq!(echo["headers"]["x-forwarded-proto"], "https");
        assert!(echo["headers"]["x-forwarded-host"].as_str().unwrap().starts_with("app.test"));
    }
}
