//! The lean HTTP/1.1 engine: what it hands to Pingora shares a connection
//! with what it carries itself; upstream response framing it relays as is;
//! pooled upstream connections the app closed while they idled.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gatehouse_e2e::*;
use serde_json::Value;

/// One response read from a keep-alive connection: status, lowercase
/// headers, de-chunked body. Interim (1xx) responses are skipped.
fn read_response(r: &mut BufReader<TcpStream>) -> (u16, Vec<(String, String)>, Vec<u8>) {
    loop {
        let mut line = String::new();
        r.read_line(&mut line).expect("status line");
        let status: u16 = line
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {line:?}"));
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            r.read_line(&mut h).expect("header line");
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (name, value) = h.split_once(':').expect("header");
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
        if (100..200).contains(&status) {
            continue;
        }
        let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let mut body = Vec::new();
        if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            loop {
                let mut size = String::new();
                r.read_line(&mut size).expect("chunk size");
                let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                    .expect("hex size");
                if n == 0 {
                    // Trailers up to the blank line.
                    loop {
                        let mut t = String::new();
                        r.read_line(&mut t).expect("trailer");
                        if t.trim_end().is_empty() {
                            break;
                        }
                    }
                    break;
                }
                let mut chunk = vec![0; n + 2];
                r.read_exact(&mut chunk).expect("chunk");
                body.extend_from_slice(&chunk[..n]);
            }
        } else if let Some(len) = get("content-length") {
            body = vec![0; len.parse().expect("length")];
            r.read_exact(&mut body).expect("body");
        } else {
            r.read_to_end(&mut body).expect("body until close");
        }
        return (status, headers, body);
    }
}

fn connect(gw: &Gateway) -> (TcpStream, BufReader<TcpStream>) {
    let addr: SocketAddr = gw.url().trim_start_matches("http://").parse().unwrap();
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let r = BufReader::new(s.try_clone().unwrap());
    (s, r)
}

fn engine_counts(gw: &Gateway) -> (u64, u64) {
    let admin: SocketAddr = gw
        .admin_url()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let text = raw_http(
        admin,
        b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
    );
    let sample = |label: &str| {
        text.lines()
            .find(|l| {
                l.starts_with(&format!(
                    "gatehouse_http1_requests_total{{carried_by=\"{label}\"}}"
                ))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {label} sample in\n{text}"))
    };
    (sample("lean"), sample("pingora"))
}

fn echo(body: &[u8]) -> Value {
    serde_json::from_slice(body).expect("echo JSON")
}

#[test]
fn one_connection_carries_lean_and_pingora_requests_in_turn() {
    let sim = Sim::one("approvals");
    let dir = PolicyDir::new();
    dir.write(
        "a.yaml",
        &format!(
            "version: 1\napps:\n  - name: tools\n    owner: t@x\n    hosts: [app.test]\n    passthrough: true\n    upstream: {{ instances: [\"{}\"] }}\n",
            sim.url(0)
        ),
    );
    let gw = Gateway::start(dir.path(), &[]);
    let (mut s, mut r) = connect(&gw);

    // 1. Lean: a plain GET.
    s.write_all(
        b"GET /__sim/echo/a HTTP/1.1\r\nHost: app.test\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n",
    )
    .unwrap();
    let (status, headers, body) = read_response(&mut r);
    assert_eq!(status, 200);
    let e = echo(&body);
    assert_eq!(e["path"], "/__sim/echo/a");
    assert_eq!(e["headers"]["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(e["headers"]["x-forwarded-proto"], "http");
    let id = headers
        .iter()
        .find(|(k, _)| k == "x-request-id")
        .expect("request id")
        .1
        .clone();
    assert_eq!(
        e["headers"]["x-request-id"],
        id.as_str(),
        "the upstream sees the same id"
    );

    // 1b. Lean: the client's request id is kept, and a header its
    // `Connection` names is dropped with `Connection` itself.
    s.write_all(b"GET /__sim/echo/a2 HTTP/1.1\r\nHost: app.test\r\nConnection: x-secret\r\nX-Secret: s\r\nX-Request-Id: client-1\r\n\r\n")
        .unwrap();
    let (status, headers, body) = read_response(&mut r);
    assert_eq!(status, 200);
    let e = echo(&body);
    assert_eq!(e["headers"]["host"], "app.test");
    assert_eq!(e["headers"]["x-request-id"], "client-1");
    assert!(e["headers"].get("x-secret").is_none(), "{e}");
    assert!(e["headers"].get("connection").is_none(), "{e}");
    assert!(headers
        .iter()
        .any(|(k, v)| k == "x-request-id" && v == "client-1"));

    // 2. Pingora: a chunked request body.
    s.write_all(b"POST /__sim/echo/b HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n")
        .unwrap();
    let (status, _, body) = read_response(&mut r);
    assert_eq!(status, 200);
    assert_eq!(echo(&body)["body_bytes"], 5);

    // 3. Lean: a body with a length, on the connection Pingora handed back.
    s.write_all(b"POST /__sim/echo/c HTTP/1.1\r\nHost: app.test\r\nContent-Length: 3\r\n\r\nabc")
        .unwrap();
    let (status, _, body) = read_response(&mut r);
    assert_eq!(status, 200);
    assert_eq!(echo(&body)["body_bytes"], 3);
    assert_eq!(echo(&body)["method"], "POST");

    // 4. Pingora: `Expect: 100-continue`.
    s.write_all(b"POST /__sim/echo/d HTTP/1.1\r\nHost: app.test\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\nabcd")
        .unwrap();
    let (status, _, body) = read_response(&mut r);
    assert_eq!(status, 200);
    assert_eq!(echo(&body)["body_bytes"], 4);

    // 5–6. Lean: two pipelined GETs in one write, answered in order.
    s.write_all(b"GET /__sim/echo/e HTTP/1.1\r\nHost: app.test\r\n\r\nGET /__sim/echo/f?x=1 HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .unwrap();
    let (_, _, first) = read_response(&mut r);
    let (_, _, second) = read_response(&mut r);
    assert_eq!(echo(&first)["path"], "/__sim/echo/e");
    assert_eq!(echo(&second)["path"], "/__sim/echo/f");
    assert_eq!(echo(&second)["query"], "x=1");

    // 7. A route that does not exist: the lean engine answers it itself.
    s.write_all(b"GET /x HTTP/1.1\r\nHost: nowhere.test\r\n\r\n")
        .unwrap();
    let (status, headers, body) = read_response(&mut r);
    assert_eq!(status, 404);
    assert!(headers
        .iter()
        .any(|(k, v)| k == "content-type" && v == "application/problem+json"));
    assert!(
        String::from_utf8_lossy(&body).contains("no-app"),
        "{}",
        String::from_utf8_lossy(&body)
    );

    // 8. Pingora: HTTP/1.0, after which the connection closes.
    s.write_all(b"GET /__sim/echo/g HTTP/1.0\r\nHost: app.test\r\n\r\n")
        .unwrap();
    let (status, _, body) = read_response(&mut r);
    assert_eq!(status, 200);
    assert_eq!(echo(&body)["path"], "/__sim/echo/g");

    assert_eq!(engine_counts(&gw), (6, 3), "(lean, pingora) requests");
    assert_eq!(sim.requests(0), 8);
}

/// A hand-written upstream: each connection serves requests until the
/// response says otherwise. Paths choose the framing.
fn framing_upstream() -> (String, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicU64::new(0));
    let seen = Arc::clone(&count);
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let seen = Arc::clone(&seen);
            std::thread::spawn(move || serve_framing(conn, &seen));
        }
    });
    (url, count)
}

fn serve_framing(conn: TcpStream, seen: &AtomicU64) {
    let mut w = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split(' ').nth(1).unwrap_or("").to_string();
        let mut length = 0;
        loop {
            let mut h = String::new();
            r.read_line(&mut h).unwrap();
            if h.trim_end().is_empty() {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        r.read_exact(&mut body).unwrap();
        seen.fetch_add(1, Ordering::SeqCst);
        match path.as_str() {
            "/chunked" => {
                w.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n5\r\nhello\r\n")
                    .unwrap();
                std::thread::sleep(Duration::from_millis(30));
                w.write_all(b"6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
                    .unwrap();
            }
            "/until-close" => {
                w.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nbye")
                    .unwrap();
                return;
            }
            "/once" => {
                // Answers, then closes without saying so: the gateway pools
                // a connection that is already dead.
                w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .unwrap();
                return;
            }
            "/big" => {
                let big = vec![b'x'; 1 << 20];
                w.write_all(
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", big.len()).as_bytes(),
                )
                .unwrap();
                for part in big.chunks(64 * 1024) {
                    w.write_all(part).unwrap();
                }
            }
            _ => {
                w.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                    .unwrap();
            }
        }
    }
}

#[test]
fn upstream_framing_is_relayed_and_dead_pooled_connections_are_replaced() {
    let (url, upstream_requests) = framing_upstream();
    let dir = PolicyDir::new();
    dir.write(
        "a.yaml",
        &format!(
            "version: 1\napps:\n  - name: raw\n    owner: t@x\n    hosts: [raw.test]\n    passthrough: true\n    upstream: {{ instances: [\"{url}\"] }}\n"
        ),
    );
    let gw = Gateway::start(dir.path(), &[]);
    let (mut s, mut r) = connect(&gw);

    s.write_all(b"GET /chunked HTTP/1.1\r\nHost: raw.test\r\n\r\n")
        .unwrap();
    let (status, headers, body) = read_response(&mut r);
    assert_eq!(status, 200);
    assert!(headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v == "chunked"));
    assert_eq!(body, b"hello world");

    s.write_all(b"GET /big HTTP/1.1\r\nHost: raw.test\r\n\r\n")
        .unwrap();
    let (status, _, body) = read_response(&mut r);
    assert_eq!(status, 200);
    assert_eq!(body.len(), 1 << 20);
    assert!(body.iter().all(|b| *b == b'x'));

    // Non-idempotent requests after the upstream closed the pooled
    // connection: the closed connection is found before anything is
    // written to it, and each POST goes once, on a new connection.
    let before = upstream_requests.load(Ordering::SeqCst);
    for i in 0..4 {
        s.write_all(b"POST /once HTTP/1.1\r\nHost: raw.test\r\nContent-Length: 1\r\n\r\nx")
            .unwrap();
        let (status, _, body) = read_response(&mut r);
        assert_eq!((status, body.as_slice()), (200, &b"ok"[..]), "POST {i}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(upstream_requests.load(Ordering::SeqCst) - before, 4);

    // A body delimited by the upstream closing: relayed, then the client's
    // connection closes too (nothing else could delimit it).
    s.write_all(b"GET /until-close HTTP/1.1\r\nHost: raw.test\r\n\r\n")
        .unwrap();
    let (status, headers, body) = read_response(&mut r);
    assert_eq!(status, 200);
    assert_eq!(body, b"bye");
    assert!(headers
        .iter()
        .any(|(k, v)| k == "connection" && v == "close"));
}
