//! The HTTP/2 conformance suite: the cases of `tests/conformance/h2.json`
//! (padded and repeated fields, the auth scheme, cookie crumbs, targets,
//! hop-by-hop fields, bodies that are not what their length said) sent by
//! an `h2` client over h2c to both HTTP/1 engines' listeners and over TLS
//! (ALPN `h2`), each in front of the raw recording upstream of the HTTP/1
//! suite; and the Rapid Reset drill.
//!
//! Checked for every case: the status (or a stream reset) the corpus
//! expects, how many requests reached the app, and the fields the app got
//! where the case names them.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gatehouse_e2e::*;
use serde_json::Value;
use tokio::net::TcpStream;

use super::conformance::{corpus_dir, latin1, start_estate, tls_client, Seen, TlsListener};

/// One case of `h2.json`.
#[derive(Debug, Clone)]
struct H2Case {
    name: String,
    family: String,
    authority: String,
    method: String,
    path: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Option<Vec<u8>>,
    /// Wait this long between HEADERS and DATA.
    body_delay: Duration,
    /// A status, `4xx`, or `reset` (the stream is reset, no response).
    expect: String,
    upstream: usize,
    /// Fields the app must get, with their values in order (`[]`: absent);
    /// `:target` is the request target.
    app_headers: Vec<(String, Vec<String>)>,
}

fn h2_cases() -> Vec<H2Case> {
    let text = std::fs::read_to_string(corpus_dir().join("h2.json")).expect("h2.json");
    let cases: Vec<Value> = serde_json::from_str(&text).expect("h2.json is JSON");
    cases
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().expect(k).to_string();
            H2Case {
                name: s("name"),
                family: s("family"),
                authority: s("authority"),
                method: s("method"),
                path: s("path"),
                headers: c["headers"]
                    .as_array()
                    .expect("headers")
                    .iter()
                    .map(|h| {
                        let name = h[0].as_str().expect("a name").to_string();
                        (name, latin1(h[1].as_str().expect("a value")))
                    })
                    .collect(),
                body: c.get("body").and_then(Value::as_str).map(latin1),
                body_delay: Duration::from_millis(
                    c.get("body_delay_ms").and_then(Value::as_u64).unwrap_or(0),
                ),
                expect: s("expect"),
                upstream: c["upstream"].as_u64().expect("upstream") as usize,
                app_headers: c
                    .get("app_headers")
                    .and_then(Value::as_object)
                    .map(|o| {
                        o.iter()
                            .map(|(k, v)| {
                                let values = v
                                    .as_array()
                                    .expect("values")
                                    .iter()
                                    .map(|x| x.as_str().expect("a value").to_string())
                                    .collect();
                                (k.clone(), values)
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            }
        })
        .collect()
}

/// How to reach a listener with HTTP/2.
#[derive(Clone)]
enum H2Dial {
    /// Cleartext, prior knowledge.
    Plain(SocketAddr),
    /// TLS with ALPN `h2`.
    Tls(SocketAddr, Arc<rustls::ClientConfig>),
}

/// An HTTP/2 client connection: the handle to send on, the task driving it.
type H2Conn = (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
);

impl H2Dial {
    async fn connect(&self) -> H2Conn {
        match self {
            H2Dial::Plain(addr) => {
                let tcp = TcpStream::connect(addr).await.expect("connect");
                let (send, conn) = h2::client::handshake(tcp).await.expect("h2c handshake");
                (send, tokio::spawn(conn))
            }
            H2Dial::Tls(addr, config) => {
                let mut config = (**config).clone();
                config.alpn_protocols = vec![b"h2".to_vec()];
                let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
                let tcp = TcpStream::connect(addr).await.expect("connect");
                let name = rustls::pki_types::ServerName::try_from("app.test").expect("a name");
                let tls = connector.connect(name, tcp).await.expect("TLS handshake");
                let (send, conn) = h2::client::handshake(tls).await.expect("h2 handshake");
                (send, tokio::spawn(conn))
            }
        }
    }
}

/// What became of one request: a status, or the stream's reset reason.
async fn send_case(dial: &H2Dial, case: &H2Case) -> String {
    let (send, conn) = dial.connect().await;
    let mut send = send.ready().await.expect("ready");
    let uri = http::Uri::builder()
        .scheme("http")
        .authority(case.authority.as_str())
        .path_and_query(case.path.as_str())
        .build()
        .expect("a URI");
    let mut req = http::Request::builder()
        .method(case.method.as_str())
        .uri(uri);
    for (name, value) in &case.headers {
        req = req.header(
            name.as_str(),
            http::HeaderValue::from_bytes(value).expect("a value h2 can carry"),
        );
    }
    let req = req.body(()).expect("a request");
    let outcome = async {
        let (response, mut stream) = send
            .send_request(req, case.body.is_none())
            .map_err(|e| e.to_string())?;
        if let Some(body) = &case.body {
            tokio::time::sleep(case.body_delay).await;
            // The gateway may have answered (and closed the stream) by now.
            let _ = stream.send_data(Bytes::copy_from_slice(body), true);
        }
        let response = response.await.map_err(|e| {
            e.reason()
                .map_or_else(|| e.to_string(), |r| format!("reset {r:?}"))
        })?;
        Ok::<_, String>(response.status().as_u16().to_string())
    };
    let outcome = tokio::time::timeout(Duration::from_secs(5), outcome)
        .await
        .unwrap_or_else(|_| Err("timeout".to_string()));
    drop(send);
    conn.abort();
    outcome.unwrap_or_else(|e| {
        if e.starts_with("reset") {
            "reset".to_string()
        } else {
            e
        }
    })
}

fn matches(want: &str, got: &str) -> bool {
    match want {
        "reset" => got == "reset",
        w if w.ends_with("xx") => got.len() == 3 && got.as_bytes()[0] == w.as_bytes()[0],
        w => w == got,
    }
}

/// The fields of `seen` named `name` (`:target`: the request target).
fn fields(seen: &Seen, name: &str) -> Vec<String> {
    if name == ":target" {
        return vec![seen.target.clone()];
    }
    seen.headers
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .collect()
}

/// Run the corpus on one listener; the failures.
async fn run_listener(listener: &str, cases: &[H2Case]) -> Vec<String> {
    let tls = TlsListener::new();
    let (engine, extra): (&str, Vec<&str>) = match listener {
        "h2-tls" => ("pingora", tls.args()),
        "h2c-lean" => ("lean", vec!["--h2c"]),
        _ => ("pingora", vec!["--h2c"]),
    };
    let (recorder, _policies, gw) = start_estate(engine, &[], &extra);
    let dial = match listener {
        "h2-tls" => H2Dial::Tls(tls.addr, tls_client(&tls.ca)),
        _ => H2Dial::Plain(gw.addr),
    };
    let mut failures = Vec::new();
    for case in cases {
        let before = recorder.count();
        let got = send_case(&dial, case).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let forwarded = recorder.count() - before;
        let fail = |why: String| format!("{listener} {} [{}]: {why}", case.name, case.family);
        if !matches(&case.expect, &got) {
            failures.push(fail(format!("expected {}, got {got}", case.expect)));
        }
        if forwarded != case.upstream {
            failures.push(fail(format!(
                "the app got {forwarded} request(s), not {}",
                case.upstream
            )));
        }
        if forwarded == 1 {
            let seen = recorder.seen.lock().expect("seen").last().cloned();
            if let Some(seen) = seen {
                for (name, want) in &case.app_headers {
                    let got = fields(&seen, name);
                    if &got != want {
                        failures.push(fail(format!("the app got {name}: {got:?}, not {want:?}")));
                    }
                }
            }
        }
    }
    failures.extend(recorder.violation_lines(listener));
    failures
}

/// The whole h2 corpus on every listener that speaks HTTP/2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_http2_listener_passes_the_h2_corpus() {
    let cases = h2_cases();
    assert!(cases.len() >= 38, "the corpus has {} cases", cases.len());
    let mut failures = Vec::new();
    for listener in ["h2c-lean", "h2c-pingora", "h2-tls"] {
        failures.extend(run_listener(listener, &cases).await);
    }
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// An upstream that answers every request after `delay` (even when the
/// gateway has closed the connection meanwhile, as a busy app would),
/// counting the requests it got and the most it worked on at once.
struct SlowApp {
    addr: SocketAddr,
    got: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

impl SlowApp {
    fn start(delay: Duration) -> SlowApp {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let got = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let now = Arc::new(AtomicUsize::new(0));
        let counts = [Arc::clone(&got), Arc::clone(&peak), now];
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let counts = counts.clone();
                std::thread::spawn(move || serve_slowly(conn, delay, &counts));
            }
        });
        SlowApp { addr, got, peak }
    }
}

/// `counts`: requests got, the most at once, how many now.
fn serve_slowly(mut conn: std::net::TcpStream, delay: Duration, counts: &[Arc<AtomicUsize>; 3]) {
    let [got, peak, now] = counts;
    use std::io::{Read, Write};
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        // Heads only: the drill sends no bodies.
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4;
        buf.drain(..end);
        got.fetch_add(1, Ordering::SeqCst);
        peak.fetch_max(now.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
        std::thread::sleep(delay);
        now.fetch_sub(1, Ordering::SeqCst);
        if conn
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .is_err()
        {
            return;
        }
    }
}

/// The estate of the drill: one passthrough app in front of `app`.
fn drill_estate(app: SocketAddr) -> (PolicyDir, Gateway) {
    let dir = PolicyDir::new();
    dir.write(
        "slow.yaml",
        &app_policy(
            "slow",
            "slow.test",
            &[format!("http://{app}")],
            "    passthrough: true",
            "      - { method: GET, path: \"/x\" }",
        ),
    );
    let gw = Gateway::start(dir.path(), &["--h2c", "--no-watch"]);
    (dir, gw)
}

fn get(path: &str) -> http::Request<()> {
    http::Request::get(format!("http://slow.test{path}"))
        .body(())
        .expect("a request")
}

/// Rapid Reset, paced: HEADERS then RST_STREAM(CANCEL), five streams every
/// 20 ms, against an app that takes a second. The gateway drops the reset
/// streams, closes the connection with GOAWAY(ENHANCE_YOUR_CALM) past its
/// budget, and an honest client on another connection sees no error.
/// (One thread: the client writes each HEADERS and its RST_STREAM in one
/// flush, as an attacker would.)
#[tokio::test(flavor = "current_thread")]
async fn paced_rapid_reset_never_reaches_the_app() {
    let app = SlowApp::start(Duration::from_secs(1));
    let (_dir, gw) = drill_estate(app.addr);
    let dial = H2Dial::Plain(gw.addr);

    let honest = {
        let dial = dial.clone();
        tokio::spawn(async move {
            let (send, _conn) = dial.connect().await;
            let mut statuses = Vec::new();
            for _ in 0..4 {
                let mut send = send.clone().ready().await.expect("ready");
                let (resp, _) = send.send_request(get("/honest"), true).expect("send");
                statuses.push(resp.await.map(|r| r.status().as_u16()).unwrap_or(0));
            }
            statuses
        })
    };

    let (send, conn) = dial.connect().await;
    let started = Instant::now();
    let mut sent = 0usize;
    'attack: while sent < 1_000 && started.elapsed() < Duration::from_secs(15) {
        for _ in 0..5 {
            let Ok(mut ready) = send.clone().ready().await else {
                break 'attack;
            };
            let Ok((_resp, mut stream)) = ready.send_request(get("/x"), true) else {
                break 'attack;
            };
            stream.send_reset(h2::Reason::CANCEL);
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let closed = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(
        matches!(&closed, Ok(Ok(Err(_)))),
        "the attacker's connection ends in an error after {sent} streams: {closed:?}"
    );
    assert!(
        sent <= 300,
        "the connection was closed after {sent} reset streams"
    );
    let honest = honest.await.expect("the honest client");
    assert_eq!(honest, vec![200; 4], "the honest client's answers");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let reached = app.got.load(Ordering::SeqCst) - 4;
    assert!(
        reached * 100 <= sent,
        "{reached} of {sent} reset streams reached the app (at most 1 %)"
    );
    assert_eq!(calm_goaways(&gw), 1, "GOAWAY(ENHANCE_YOUR_CALM), counted");
    eprintln!("paced rapid reset: {sent} reset streams sent, {reached} reached the app, GOAWAY after {:?}", started.elapsed());
}

/// Connections the gateway closed with GOAWAY(ENHANCE_YOUR_CALM), from
/// `/metrics`.
fn calm_goaways(gw: &Gateway) -> u64 {
    let metrics = raw_http(
        gw.admin,
        b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
    );
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("gatehouse_h2_stream_abuse_total{kind=\"goaway\"} "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no GOAWAY count in /metrics:\n{metrics}"))
}

/// Streams reset only after their request went upstream count toward
/// the same budget: the connection is closed with
/// GOAWAY(ENHANCE_YOUR_CALM) after a bounded number of them, instead of
/// feeding the app a new batch every time the client's slots come free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_reset_after_going_upstream_are_budgeted_too() {
    let app = SlowApp::start(Duration::from_secs(2));
    let (_dir, gw) = drill_estate(app.addr);
    let (send, conn) = H2Dial::Plain(gw.addr).connect().await;
    let mut opened = 0usize;
    'attack: for _ in 0..20 {
        let mut streams = Vec::new();
        for _ in 0..50 {
            let Ok(mut ready) = send.clone().ready().await else {
                break 'attack;
            };
            let Ok(sent) = ready.send_request(get("/x"), true) else {
                break 'attack;
            };
            streams.push(sent);
            opened += 1;
        }
        // Long enough for the requests to reach the app.
        tokio::time::sleep(Duration::from_millis(150)).await;
        for (_resp, mut stream) in streams {
            stream.send_reset(h2::Reason::CANCEL);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The client may see the GOAWAY, or a broken pipe if it was writing
    // when the connection closed; the gateway counts why it closed it.
    let closed = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(
        matches!(&closed, Ok(Ok(Err(_)))),
        "the connection ends in an error after {opened} streams: {closed:?}"
    );
    assert_eq!(calm_goaways(&gw), 1, "GOAWAY(ENHANCE_YOUR_CALM), counted");
    let reached = app.got.load(Ordering::SeqCst);
    assert!(
        reached <= 250 && opened <= 300,
        "{reached} of {opened} streams reached the app before the GOAWAY"
    );
    assert!(reached > 0, "the first streams were served");
    eprintln!("resets after going upstream: {opened} streams opened, {reached} reached the app before the GOAWAY");
}

/// Resets after the request went upstream, hidden among as many requests
/// the gateway answers itself (so resets never exceed half the streams):
/// the app still never works on more of one connection's requests at once
/// than the cap of requests in progress, since a request reset while with
/// the app keeps its slot until the app's deadline; past the cap, streams
/// are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_hidden_among_cheap_requests_cannot_overload_the_app() {
    let app = SlowApp::start(Duration::from_secs(3));
    let (_dir, gw) = drill_estate(app.addr);
    let (send, conn) = H2Dial::Plain(gw.addr).connect().await;
    let cheap = || {
        http::Request::get("http://nothing.test/x")
            .body(())
            .expect("a request")
    };
    let (mut opened, mut refused) = (0usize, 0usize);
    'attack: for _ in 0..25 {
        let mut slow = Vec::new();
        let mut answered = Vec::new();
        for _ in 0..40 {
            // The connection ends (GOAWAY) once refusals tip the budget.
            let (Ok(mut a), Ok(mut b)) = (send.clone().ready().await, send.clone().ready().await)
            else {
                break 'attack;
            };
            let (Ok(s), Ok((c, _))) = (
                a.send_request(get("/x"), true),
                b.send_request(cheap(), true),
            ) else {
                break 'attack;
            };
            slow.push(s);
            answered.push(c);
            opened += 2;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        for (resp, mut stream) in slow {
            stream.send_reset(h2::Reason::CANCEL);
            drop(resp);
        }
        for c in answered {
            if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(2), c).await {
                if e.reason() == Some(h2::Reason::REFUSED_STREAM) {
                    refused += 1;
                }
            }
        }
    }
    drop(send);
    conn.abort();
    let peak = app.peak.load(Ordering::SeqCst);
    eprintln!("resets among cheap requests: {opened} streams, {refused} refused, the app held at most {peak} at once");
    assert!(
        peak <= 128,
        "the app worked on {peak} of one connection's requests at once ({opened} streams, {refused} refused)"
    );
}
