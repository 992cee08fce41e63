//! Engine parity: the same requests through the lean HTTP/1.1 engine,
//! Pingora's proxy, and the buffered forwarder give the client the same
//! answer, the app the same request, and ClickHouse the same row, column by
//! column (times aside).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use gatehouse_e2e::*;
use serde_json::Value;

const DB: &str = "parity";

/// A response as the client read it off the wire.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// Header lines, names lowercase, in order (`date` left out).
    headers: Vec<(String, String)>,
    body: String,
}

/// A header value with the part that depends on when it was sent left out:
/// the tokens a rate limit has left (`r=` of `RateLimit`) refill with time.
fn refilled(name: &str, value: &str) -> String {
    if name != "ratelimit" {
        return value.to_string();
    }
    value
        .split(';')
        .map(|item| {
            if item.starts_with("r=") {
                "r=…"
            } else {
                item
            }
        })
        .collect::<Vec<_>>()
        .join(";")
}

/// Send `raw` on a new connection and read the whole answer.
fn exchange(addr: SocketAddr, raw: &str) -> Answer {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(raw.as_bytes()).expect("send");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.get(9..12))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .filter(|(n, _)| n != "date")
        .collect();
    Answer {
        status,
        headers,
        body: body.to_string(),
    }
}

/// The nodes are named with four letters: lean (the lean engine), ping
/// (Pingora's proxy), fwdr (the listing's response enforced: the buffered
/// forwarder carries it), so request ids, and the problem documents that carry them,
/// have one length.
///
/// The requests every engine gets: `(what, raw request)`, `{ID}` standing
/// for the request id and `{KEY}` for the consumer's key.
fn requests() -> Vec<(&'static str, String)> {
    let orders = "Host: orders.corp.example\r\nX-Api-Key: {KEY}\r\n";
    let valid = r#"{"customer_id":42,"currency":"EUR","lines":[{"sku":"SKU-00042","quantity":3,"unit_price":9.95}]}"#;
    let invalid = r#"{"customer_id":"forty-two","lines":[]}"#;
    let post = |body: &str| {
        format!(
            "POST /rest/orders/v1/orders HTTP/1.1\r\n{orders}Content-Type: application/json\r\nContent-Length: {}\r\nX-Request-Id: {{ID}}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let get = |target: &str, host: &str| {
        format!("GET {target} HTTP/1.1\r\n{host}X-Request-Id: {{ID}}\r\nConnection: close\r\n\r\n")
    };
    vec![
        ("a listing (response monitored)", get("/rest/orders/v1/orders?page=1", orders)),
        ("no key (401)", get("/rest/orders/v1/orders", "Host: orders.corp.example\r\n")),
        ("no route (404)", get("/rest/orders/v1/nowhere", orders)),
        ("a bad parameter (400)", get("/rest/orders/v1/orders?page=abc", orders)),
        ("an invalid body (400)", post(invalid)),
        ("a valid body (201)", post(valid)),
        ("no app (404)", get("/", "Host: nowhere.example\r\n")),
        (
            "what the app sees (passthrough, limited)",
            get(
                "/__sim/echo/a?b=1&c=%7E",
                "Host: echo.test\r\nX-Api-Key: {KEY}\r\nX-Custom: one\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n",
            ),
        ),
        (
            "HEAD",
            "HEAD /__sim/echo HTTP/1.1\r\nHost: echo.test\r\nX-Api-Key: {KEY}\r\nX-Request-Id: {ID}\r\nConnection: close\r\n\r\n".to_string(),
        ),
        ("a dead app (502 after a retry)", get("/", "Host: dead.test\r\n")),
        (
            "an enforced response (the forwarder on every engine)",
            format!("POST /rest/orders/v1/orders/7/submit HTTP/1.1\r\n{orders}Content-Length: 0\r\nX-Request-Id: {{ID}}\r\nConnection: close\r\n\r\n"),
        ),
    ]
}

/// Columns that hold times (left out of the comparison), and the ones that
/// name the gateway process or policy that wrote the row.
const NOT_COMPARED: &[&str] = &[
    "time",
    "time_us",
    "request_id",
    "instance",
    // The app's bodies differ (a new order's number); each row's is
    // checked against what its client read instead.
    "bytes_out",
    "total_us",
    "gateway_us",
    "auth_us",
    "limits_us",
    "request_validation_us",
    "upstream_connect_us",
    "upstream_ttfb_us",
    "upstream_total_us",
    "response_validation_us",
];

struct Node {
    name: &'static str,
    gw: Gateway,
    _policies: PolicyDir,
}

fn start_node(
    name: &'static str,
    engine: &str,
    sim: &Sim,
    dead: (u16, u16),
    ch: &str,
    key_entry: &(String, String),
    forward_all: bool,
) -> Node {
    let (policies, _) = example_policies(sim, |rel, text| {
        if forward_all && rel == "apps/orders.yaml" {
            // The listing's responses are judged whole before the client
            // sees them: the buffered forwarder carries it.
            text.replace(
                "submitOrder: { response: enforce }",
                "submitOrder: { response: enforce }\n        listOrders: { response: enforce }",
            )
        } else {
            text
        }
    });
    policies.write("consumers-e2e.yaml", &key_entry.0);
    policies.write(
        "apps/parity.yaml",
        &format!(
            "version: 1\napps:\n  - name: echo\n    owner: o\n    hosts: [echo.test]\n    upstream: {{ instances: [\"{}\"] }}\n    passthrough: true\n    auth: {{ mode: required, api_key: {{ header: x-api-key }} }}\n    limits:\n      - {{ name: per-consumer, per: consumer, rate: 100/s, burst: 100 }}\n  - name: dead\n    owner: o\n    hosts: [dead.test]\n    upstream: {{ instances: [\"http://127.0.0.1:{}\", \"http://127.0.0.1:{}\"] }}\n    timeouts: {{ connect: 500ms, read: 2s, total: 3s }}\n    retries: 1\n    passthrough: true\n",
            sim.url(0),
            dead.0,
            dead.1,
        ),
    );
    let gw = Gateway::start(
        policies.path(),
        &[
            "--http1-engine",
            engine,
            "--no-watch",
            "--clickhouse",
            ch,
            "--clickhouse-database",
            DB,
            "--migrate",
            "--telemetry-flush-ms",
            "100",
            "--instance",
            name,
        ],
    );
    Node {
        name,
        gw,
        _policies: policies,
    }
}

#[test]
fn every_engine_answers_forwards_and_records_a_request_alike() {
    let ch = ClickHouse::start();
    let sim = example_estate();
    let dead = (free_port(), free_port());
    // One consumer (its key hashed in the policy) for every node.
    let consumer = new_consumer(&["--id", "e2e", "--name", "End-to-end tests"]);
    let url = ch.url();
    let nodes = [
        start_node("lean", "lean", &sim, dead, &url, &consumer, false),
        start_node("ping", "pingora", &sim, dead, &url, &consumer, false),
        start_node("fwdr", "lean", &sim, dead, &url, &consumer, true),
    ];
    let requests = requests();
    let mut answers: BTreeMap<&str, Vec<Answer>> = BTreeMap::new();
    for node in &nodes {
        for (n, (_, raw)) in requests.iter().enumerate() {
            let raw = raw
                .replace("{ID}", &format!("parity-{}-{n}", node.name))
                .replace("{KEY}", &consumer.1);
            answers
                .entry(node.name)
                .or_default()
                .push(exchange(node.gw.addr, &raw));
        }
    }

    // What the client got.
    let lean = &answers["lean"];
    for other in ["ping", "fwdr"] {
        for (n, (what, _)) in requests.iter().enumerate() {
            let (a, b) = (&lean[n], &answers[other][n]);
            assert_eq!(a.status, b.status, "{what}: lean vs {other}");
            if other == "fwdr" {
                continue; // its answers are whole, not streamed: framing differs
            }
            // The app's own bodies may differ (a new order's id), the
            // gateway's problem documents may not (but for the request id).
            let problem = a
                .headers
                .iter()
                .any(|(_, v)| v == "application/problem+json");
            let id = |h: &Vec<(String, String)>| {
                h.iter()
                    .filter(|(n, _)| {
                        n != "x-request-id"
                            && n != "x-sim-instance"
                            && (problem || n != "content-length")
                    })
                    .map(|(n, v)| format!("{n}: {}", refilled(n, v)))
                    .collect::<Vec<_>>()
            };
            assert_eq!(
                id(&a.headers),
                id(&b.headers),
                "{what}: headers, lean vs {other}"
            );
            if problem {
                let body =
                    |x: &Answer, node: &str| x.body.replace(&format!("parity-{node}-"), "ID-");
                assert_eq!(
                    body(a, "lean"),
                    body(b, other),
                    "{what}: problem, lean vs {other}"
                );
            }
        }
    }
    let expected = [200, 401, 404, 400, 400, 201, 404, 200, 200, 502, 202];
    let got: Vec<u16> = lean.iter().map(|a| a.status).collect();
    assert_eq!(got, expected, "the statuses the suite expects");

    // What the app saw (the echo shows every header it got).
    let seen = |node: &str| -> Value {
        let mut v: Value = serde_json::from_str(&answers[node][7].body).expect("echo JSON");
        let headers = v["headers"].as_object_mut().expect("headers");
        let id = headers
            .remove("x-request-id")
            .expect("the request id reached the app");
        assert_eq!(id, format!("parity-{node}-7"));
        v["instance"] = Value::Null;
        v
    };
    assert_eq!(seen("lean"), seen("ping"), "the request the app saw");
    assert_eq!(seen("lean"), seen("fwdr"), "the request the app saw");
    let echo = seen("lean");
    assert!(echo["headers"].get("x-api-key").is_none(), "{echo}");
    assert_eq!(echo["headers"]["x-custom"], "one", "{echo}");
    assert_eq!(echo["query"], "b=1&c=%7E", "{echo}");

    // What ClickHouse got: one row per request per node.
    let total = (requests.len() * nodes.len()) as u64;
    let count = format!("SELECT count() FROM {DB}.requests WHERE request_id LIKE 'parity-%'");
    assert!(
        eventually(Duration::from_secs(20), || ch.count(&count) >= total),
        "{} of {total} rows arrived",
        ch.count(&count)
    );
    let rows: BTreeMap<String, Value> = ch
        .query(&format!(
            "SELECT * FROM {DB}.requests WHERE request_id LIKE 'parity-%' FORMAT JSONEachRow"
        ))
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("a JSON row"))
        .map(|r| (r["request_id"].as_str().unwrap_or_default().to_string(), r))
        .collect();
    assert_eq!(rows.len() as u64, total, "one row per request");
    let row = |node: &str, n: usize| &rows[&format!("parity-{node}-{n}")];
    for (n, (what, _)) in requests.iter().enumerate() {
        let a = row("lean", n);
        let read = lean[n].body.len().to_string();
        assert_eq!(a["bytes_out"], read.as_str(), "{what}: bytes_out of lean");
        for other in ["ping", "fwdr"] {
            let b = row(other, n);
            for (column, value) in a.as_object().expect("a row object") {
                if NOT_COMPARED.contains(&column.as_str())
                    || (other == "fwdr" && column == "policy_version")
                {
                    continue;
                }
                assert_eq!(
                    value, &b[column],
                    "{what}: column {column}, lean vs {other}\nlean: {a}\n{other}: {b}"
                );
            }
            // The body bytes recorded are the ones the client read.
            let read = answers[other][n].body.len().to_string();
            assert_eq!(
                b["bytes_out"],
                read.as_str(),
                "{what}: bytes_out of {other}"
            );
            // Time spent upstream is recorded by every path that went there.
            let upstream = |r: &Value| r["upstream_total_us"].as_u64().unwrap_or(0) > 0;
            assert_eq!(
                upstream(a),
                upstream(b),
                "{what}: upstream time, lean vs {other}"
            );
        }
    }
    // The columns mean what they say, whichever path carried the request.
    let dead_row = row("ping", 9);
    assert_eq!(dead_row["attempts"], 2, "{dead_row}");
    assert_eq!(dead_row["outcome"], "upstream_error", "{dead_row}");
    assert_eq!(dead_row["route"], "passthrough", "{dead_row}");
    let listing = row("fwdr", 0);
    assert_eq!(listing["response_verdict"], "valid", "{listing}");
    assert!(
        listing["upstream_ttfb_us"].as_u64().unwrap_or(0) > 0,
        "{listing}"
    );
    // A 5xx the gateway answered is in every engine's failure log.
    for node in &nodes {
        let id = format!("parity-{}-9", node.name);
        assert!(
            eventually(Duration::from_secs(5), || node.gw.log_text().contains(&id)),
            "{}: the failed request is not in the log",
            node.name
        );
    }
}
