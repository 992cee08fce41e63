//! The HTTP/1 conformance suite: raw request and response byte sequences
//! from `tests/conformance/` (the smuggling families: CL.TE, TE.CL, TE.TE,
//! conflicting lengths, `Connection` abuse, obs-fold, bare CR/LF, control
//! bytes, Host games, absolute-form, pipelining, HTTP/1.0, `Expect`,
//! oversized heads, path variants, API keys in the query), run against
//! both HTTP/1 engines on the plain listener and against the TLS listener
//! (HTTP/1.1 over TLS), each in front of a raw recording upstream.
//!
//! Checked for every case, besides the statuses the corpus expects:
//! - the upstream never gets more requests than the gateway answered
//!   from it, and the lean engine forwards no more than Pingora's;
//! - every forwarded request has one unambiguous framing and one `Host`,
//!   and an `X-Request-Id` (no `Connection` option took it away);
//! - what the app reads is what was judged: at most one request, over the
//!   whole run, reaches a path a lenient app server reads as `/admin`
//!   (the route limited to one request an hour), and no API key reaches it;
//! - a response the gateway relays has one framing, and the next request
//!   on the connection gets its own response.
//!
//! `scripts/conformance-nginx.py` runs the same corpus against nginx for
//! the table in `docs/security.md`.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gatehouse_e2e::*;
use serde_json::Value;

/// The valid API key of the conformance estate; the app must never see it.
const KEY: &str = "conformance-key-1";

pub(super) fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("conformance")
}

/// A JSON string whose characters are bytes (U+0000..U+00FF).
pub(super) fn latin1(text: &str) -> Vec<u8> {
    text.chars()
        .map(|c| u8::try_from(u32::from(c)).expect("a corpus character above U+00FF"))
        .collect()
}

/// One request case of `requests.json`.
#[derive(Debug, Clone)]
pub struct RequestCase {
    pub name: String,
    pub family: String,
    pub bytes: Vec<u8>,
    pub expect: Vec<String>,
    /// What Pingora's engine answers where it differs, with the reason in
    /// the corpus (`pingora_why`): it serves one request per connection
    /// read, so pipelined requests after a handed-over one go unanswered.
    pub pingora: Option<Vec<String>>,
    pub upstream: Option<usize>,
    pub timeout_ok: bool,
    /// Fields the app must not get (lowercase).
    pub app_lacks: Vec<String>,
}

/// Read `requests.json`.
pub fn request_cases() -> Vec<RequestCase> {
    let text = std::fs::read_to_string(corpus_dir().join("requests.json")).expect("requests.json");
    let cases: Vec<Value> = serde_json::from_str(&text).expect("requests.json is JSON");
    cases
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            let mut bytes = latin1(c["request"].as_str().expect("request"));
            if let Some(r) = c.get("repeat") {
                let marker = latin1(r["marker"].as_str().expect("marker"));
                let byte = latin1(r["byte"].as_str().expect("byte"))[0];
                let count = r["count"].as_u64().expect("count") as usize;
                if let Some(at) = bytes.windows(marker.len()).position(|w| w == marker) {
                    bytes.splice(at..at + marker.len(), std::iter::repeat_n(byte, count));
                }
            }
            RequestCase {
                name: s("name"),
                family: s("family"),
                bytes,
                expect: c["expect"]
                    .as_array()
                    .expect("expect")
                    .iter()
                    .map(|e| e.as_str().expect("status").to_string())
                    .collect(),
                pingora: c.get("pingora").and_then(Value::as_array).map(|a| {
                    a.iter()
                        .map(|e| e.as_str().expect("status").to_string())
                        .collect()
                }),
                upstream: c
                    .get("upstream")
                    .and_then(Value::as_u64)
                    .map(|n| n as usize),
                timeout_ok: c
                    .get("timeout_ok")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
                app_lacks: c
                    .get("app_lacks")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            }
        })
        .collect()
}

/// One response case of `responses.json`.
#[derive(Debug, Clone)]
pub struct ResponseCase {
    pub name: String,
    pub bytes: Vec<u8>,
    pub close_after: bool,
    pub expect: String,
    /// What Pingora's engine answers where it differs (`pingora_why`).
    pub pingora: Option<String>,
    pub body: Option<Vec<u8>>,
}

/// Read `responses.json`.
pub fn response_cases() -> Vec<ResponseCase> {
    let text =
        std::fs::read_to_string(corpus_dir().join("responses.json")).expect("responses.json");
    let cases: Vec<Value> = serde_json::from_str(&text).expect("responses.json is JSON");
    cases
        .iter()
        .map(|c| ResponseCase {
            name: c["name"].as_str().expect("name").to_string(),
            bytes: latin1(c["response"].as_str().expect("response")),
            close_after: c
                .get("close_after")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            expect: c["expect"].as_str().unwrap_or("any").to_string(),
            pingora: c.get("pingora").and_then(Value::as_str).map(str::to_string),
            body: c.get("body").and_then(Value::as_str).map(latin1),
        })
        .collect()
}

/// Does `status` (or `None`: no response) meet `want` (`200`, `4xx`, `any`)?
fn status_matches(want: &str, status: u16) -> bool {
    match want {
        "any" => true,
        w if w.ends_with("xx") => w.as_bytes()[0] == b'0' + (status / 100) as u8,
        w => w.parse::<u16>().ok() == Some(status),
    }
}

/// A request the app received, as an independent parser (`httparse`) read
/// it from the bytes on the wire.
#[derive(Debug, Clone)]
pub(super) struct Seen {
    pub(super) host: String,
    pub(super) target: String,
    pub(super) headers: Vec<(String, Vec<u8>)>,
}

/// The recording upstream: answers every request with 200, `{}` and
/// `X-Recorder: 1`, keeps what it got, and notes any request whose
/// framing or `Host` could be read two ways.
#[derive(Clone, Default)]
pub(super) struct Recorder {
    pub(super) seen: Arc<Mutex<Vec<Seen>>>,
    pub(super) violations: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    fn start() -> (Recorder, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let rec = Recorder::default();
        let r = rec.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let r = r.clone();
                std::thread::spawn(move || r.serve(conn));
            }
        });
        (rec, addr)
    }

    pub(super) fn count(&self) -> usize {
        self.seen.lock().map(|s| s.len()).unwrap_or(0)
    }

    fn violation(&self, v: String) {
        if let Ok(mut all) = self.violations.lock() {
            all.push(v);
        }
    }

    fn serve(&self, mut conn: TcpStream) {
        let mut buf = Vec::new();
        loop {
            let (head_len, seen, framing) = loop {
                let mut headers = [httparse::EMPTY_HEADER; 128];
                let mut req = httparse::Request::new(&mut headers);
                match req.parse(&buf) {
                    Ok(httparse::Status::Complete(n)) => {
                        let hs: Vec<(String, Vec<u8>)> = req
                            .headers
                            .iter()
                            .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
                            .collect();
                        let values = |n: &str| {
                            hs.iter()
                                .filter(|(k, _)| k == n)
                                .map(|(_, v)| String::from_utf8_lossy(v).to_string())
                                .collect::<Vec<_>>()
                        };
                        let (cl, te, hosts) = (
                            values("content-length"),
                            values("transfer-encoding"),
                            values("host"),
                        );
                        let target = req.path.unwrap_or_default().to_string();
                        if hosts.len() != 1 {
                            self.violation(format!("{target}: {} Host headers", hosts.len()));
                        }
                        if !hs.iter().any(|(k, _)| k == "x-request-id") {
                            self.violation(format!("{target}: no X-Request-Id"));
                        }
                        let framing = match (cl.as_slice(), te.as_slice()) {
                            ([], []) => Some(0),
                            ([one], []) => one.trim().parse::<usize>().ok(),
                            ([], [t]) if t.trim().eq_ignore_ascii_case("chunked") => None,
                            _ => {
                                self.violation(format!(
                                    "{target}: ambiguous framing CL={cl:?} TE={te:?}"
                                ));
                                return;
                            }
                        };
                        let seen = Seen {
                            host: hosts.first().cloned().unwrap_or_default(),
                            target,
                            headers: hs,
                        };
                        break (n, seen, framing);
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(e) => {
                        self.violation(format!("unparseable request on the wire: {e}"));
                        return;
                    }
                }
                if !read_some(&mut conn, &mut buf) {
                    return;
                }
            };
            buf.drain(..head_len);
            match framing {
                Some(len) => {
                    while buf.len() < len {
                        if !read_some(&mut conn, &mut buf) {
                            return;
                        }
                    }
                    buf.drain(..len);
                }
                None => loop {
                    match dechunk(&buf) {
                        Some(Ok((end, _))) => {
                            buf.drain(..end);
                            break;
                        }
                        Some(Err(())) => {
                            self.violation(format!("{}: bad chunked body", seen.target));
                            return;
                        }
                        None => {
                            if !read_some(&mut conn, &mut buf) {
                                return;
                            }
                        }
                    }
                },
            }
            if let Ok(mut all) = self.seen.lock() {
                all.push(seen);
            }
            if conn
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nX-Recorder: 1\r\n\r\n{}")
                .is_err()
            {
                return;
            }
        }
    }
}

fn read_some(conn: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    match conn.read(&mut chunk) {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// A chunked body at the start of `buf`: where it ends and its data
/// (`None`: incomplete; `Err`: not chunked coding).
fn dechunk(buf: &[u8]) -> Option<Result<(usize, Vec<u8>), ()>> {
    let mut at = 0;
    let mut data = Vec::new();
    loop {
        let line_end = buf[at..].windows(2).position(|w| w == b"\r\n")? + at;
        let size_text = std::str::from_utf8(&buf[at..line_end]).map_err(|_| ());
        let Ok(size_text) = size_text else {
            return Some(Err(()));
        };
        let Ok(size) = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
        else {
            return Some(Err(()));
        };
        at = line_end + 2;
        if size == 0 {
            // Trailers up to the blank line.
            loop {
                let end = buf[at..].windows(2).position(|w| w == b"\r\n")? + at;
                let blank = end == at;
                at = end + 2;
                if blank {
                    return Some(Ok((at, data)));
                }
            }
        }
        if buf.len() < at + size + 2 {
            return None;
        }
        if &buf[at + size..at + size + 2] != b"\r\n" {
            return Some(Err(()));
        }
        data.extend_from_slice(&buf[at..at + size]);
        at += size + 2;
    }
}

/// The scripted upstream: `GET /case/NAME` gets that case's bytes.
fn scripted_upstream(cases: Vec<ResponseCase>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let by_name: Arc<HashMap<String, ResponseCase>> =
        Arc::new(cases.into_iter().map(|c| (c.name.clone(), c)).collect());
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let by_name = Arc::clone(&by_name);
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut buf = Vec::new();
                loop {
                    let (n, name) = loop {
                        let mut headers = [httparse::EMPTY_HEADER; 64];
                        let mut req = httparse::Request::new(&mut headers);
                        if let Ok(httparse::Status::Complete(n)) = req.parse(&buf) {
                            let path = req.path.unwrap_or_default();
                            let name = path.strip_prefix("/case/").unwrap_or("plain");
                            break (n, name.to_string());
                        }
                        if !read_some(&mut conn, &mut buf) {
                            return;
                        }
                    };
                    buf.drain(..n);
                    let Some(case) = by_name.get(&name) else {
                        return;
                    };
                    if conn.write_all(&case.bytes).is_err() || case.close_after {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A response the client got: status, lowercase headers, body.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Parse the complete responses at the start of `buf` (1xx skipped);
/// the bytes used, and whether the last one runs until the close.
fn parse_responses(buf: &[u8], closed: bool, out: &mut Vec<Response>) -> Result<usize, String> {
    let mut at = 0;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut resp = httparse::Response::new(&mut headers);
        let n = match resp.parse(&buf[at..]) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(at),
            Err(e) => return Err(format!("the client got an unparseable response: {e}")),
        };
        let status = resp.code.unwrap_or(0);
        let hs: Vec<(String, String)> = resp
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).trim().to_string(),
                )
            })
            .collect();
        let get = |k: &str| hs.iter().filter(|(n, _)| n == k).count();
        if get("content-length") > 0 && get("transfer-encoding") > 0 {
            return Err(
                "the client got a response with both Content-Length and Transfer-Encoding".into(),
            );
        }
        let body_at = at + n;
        if (100..200).contains(&status) {
            at = body_at;
            continue;
        }
        let value = |k: &str| hs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let (body, end) = if status == 204 || status == 304 {
            (Vec::new(), body_at)
        } else if value("transfer-encoding").is_some() {
            match dechunk(&buf[body_at..]) {
                None => return Ok(at),
                Some(Err(())) => return Err("the client got a bad chunked body".into()),
                Some(Ok((len, body))) => (body, body_at + len),
            }
        } else if let Some(len) = value("content-length") {
            let len: usize = len.parse().map_err(|_| format!("bad length {len}"))?;
            if buf.len() < body_at + len {
                return Ok(at);
            }
            (buf[body_at..body_at + len].to_vec(), body_at + len)
        } else if closed {
            (buf[body_at..].to_vec(), buf.len())
        } else {
            return Ok(at);
        };
        out.push(Response {
            status,
            headers: hs,
            body,
        });
        at = end;
    }
}

/// What a connection gave back: the responses, and how it ended.
#[derive(Debug)]
struct Exchange {
    responses: Vec<Response>,
    /// The gateway closed the connection.
    closed: bool,
    /// Nothing more came within the wait, the connection still open.
    timed_out: bool,
    error: Option<String>,
}

/// A connection to the gateway: plain TCP, or TLS to its TLS listener.
trait Conn: Read + Write {
    fn set_read_timeout(&self, d: Option<Duration>) -> std::io::Result<()>;
}

impl Conn for TcpStream {
    fn set_read_timeout(&self, d: Option<Duration>) -> std::io::Result<()> {
        TcpStream::set_read_timeout(self, d)
    }
}

impl Conn for rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    fn set_read_timeout(&self, d: Option<Duration>) -> std::io::Result<()> {
        self.sock.set_read_timeout(d)
    }
}

/// How the suite reaches a gateway.
#[derive(Clone)]
enum Dial {
    Plain(SocketAddr),
    /// The TLS listener (Pingora's proxy), trusting the test CA.
    Tls(SocketAddr, Arc<rustls::ClientConfig>),
}

impl Dial {
    fn connect(&self) -> Box<dyn Conn> {
        match self {
            Dial::Plain(addr) => Box::new(TcpStream::connect(addr).expect("connect")),
            Dial::Tls(addr, config) => {
                let tcp = TcpStream::connect(addr).expect("connect");
                let name = rustls::pki_types::ServerName::try_from("app.test").expect("a name");
                let tls = rustls::ClientConnection::new(Arc::clone(config), name).expect("TLS");
                Box::new(rustls::StreamOwned::new(tls, tcp))
            }
        }
    }
}

/// A client configuration that trusts the CA in `ca` (PEM).
pub(super) fn tls_client(ca: &str) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).expect("the CA file") {
        roots.add(cert.expect("a certificate")).expect("a CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// Send `bytes` on `conn` and read until `want` responses came and a
/// short while passed with nothing more, the gateway closed, or `within`
/// (`want` = `usize::MAX`: until a quiet spell of 300 ms).
fn exchange(conn: &mut dyn Conn, bytes: &[u8], want: usize, within: Duration) -> Exchange {
    let _ = conn.write_all(bytes);
    let mut buf = Vec::new();
    let mut responses = Vec::new();
    let mut used = 0;
    let started = Instant::now();
    let mut quiet_since: Option<Instant> = None;
    let _ = conn.set_read_timeout(Some(Duration::from_millis(50)));
    let mut chunk = [0u8; 64 * 1024];
    let (mut closed, mut error) = (false, None);
    loop {
        match conn.read(&mut chunk) {
            Ok(0) => closed = true,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                quiet_since = None;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => closed = true,
        }
        match parse_responses(&buf[used..], closed, &mut responses) {
            Ok(n) => used += n,
            Err(e) => {
                error = Some(e);
                break;
            }
        }
        if closed {
            break;
        }
        if responses.len() >= want {
            // A little longer, for a surplus response.
            let since = *quiet_since.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_millis(100) {
                break;
            }
        } else if want == usize::MAX {
            // As many as come: until a quiet spell.
            let since = *quiet_since.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_millis(300) {
                break;
            }
        }
        if started.elapsed() > within {
            break;
        }
    }
    let timed_out = !closed && responses.len() < want;
    Exchange {
        responses,
        closed,
        timed_out,
        error,
    }
}

/// How a lenient app server reads a path: escapes decoded, `\` as `/`,
/// `;` parameters dropped, dots resolved, empty segments dropped; on a
/// case-insensitive platform, lower case and no trailing dots or spaces.
fn app_reads(target: &str, case_insensitive: bool) -> String {
    let path = target.split('?').next().unwrap_or("");
    let mut decoded = Vec::new();
    let b = path.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let Some(v) = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                decoded.push(v);
                i += 3;
                continue;
            }
        }
        decoded.push(b[i]);
        i += 1;
    }
    let text = String::from_utf8_lossy(&decoded).replace('\\', "/");
    let mut out: Vec<String> = Vec::new();
    for seg in text.split('/') {
        let mut seg = seg.split(';').next().unwrap_or("").to_string();
        if case_insensitive {
            seg = seg.trim_end_matches(['.', ' ']).to_ascii_lowercase();
        }
        match seg.as_str() {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s.to_string()),
        }
    }
    format!("/{}", out.join("/"))
}

/// One engine's run over the whole corpus.
struct EngineRun {
    /// Per request case: (statuses as text, requests the app got,
    /// responses the client got).
    outcomes: HashMap<String, (String, usize, usize)>,
    failures: Vec<String>,
}

/// The conformance estate in front of a new recording upstream and a
/// scripted one serving `responses`, on `engine`, with `extra` arguments.
pub(super) fn start_estate(
    engine: &str,
    responses: &[ResponseCase],
    extra: &[&str],
) -> (Recorder, PolicyDir, Gateway) {
    let (recorder, upstream) = Recorder::start();
    let scripted = scripted_upstream(responses.to_vec());
    let template =
        std::fs::read_to_string(corpus_dir().join("policy/conformance.yaml")).expect("policy");
    let policies = PolicyDir::new();
    policies.write(
        "conformance.yaml",
        &template
            .replace("{{UPSTREAM}}", &upstream.to_string())
            .replace("{{SCRIPTED}}", &scripted.to_string()),
    );
    for schema in std::fs::read_dir(corpus_dir().join("policy/schemas")).expect("schemas") {
        let path = schema.expect("a schema").path();
        let name = path.file_name().and_then(|n| n.to_str()).expect("a name");
        policies.write(
            &format!("schemas/{name}"),
            &std::fs::read_to_string(&path).expect("schema"),
        );
    }
    policies.write(
        "keys/idp.jwks.json",
        &std::fs::read_to_string(corpus_dir().join("../../policies/keys/corp-idp.jwks.json"))
            .expect("the example JWKS"),
    );
    let mut args = vec!["--http1-engine", engine, "--no-watch"];
    args.extend_from_slice(extra);
    let gw = Gateway::start(policies.path(), &args);
    (recorder, policies, gw)
}

/// A TLS listener for the conformance estate: where it listens, the CA
/// that signed its certificate, and the `serve` arguments that open it.
pub(super) struct TlsListener {
    pub(super) addr: SocketAddr,
    pub(super) ca: String,
    args: [String; 6],
    _certs: tempfile::TempDir,
}

impl TlsListener {
    pub(super) fn new() -> TlsListener {
        let certs = tempfile::tempdir().expect("tempdir");
        let (ca, cert, key) = make_certs(certs.path());
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let args = [
            "--tls-listen".to_string(),
            addr.to_string(),
            "--tls-cert".to_string(),
            cert,
            "--tls-key".to_string(),
            key,
        ];
        TlsListener {
            addr,
            ca,
            args,
            _certs: certs,
        }
    }

    /// The `serve` arguments that open the listener.
    pub(super) fn args(&self) -> Vec<&str> {
        self.args.iter().map(String::as_str).collect()
    }
}

impl Recorder {
    /// What the recording upstream found ambiguous, each line prefixed.
    pub(super) fn violation_lines(&self, prefix: &str) -> Vec<String> {
        self.violations
            .lock()
            .map(|v| {
                v.iter()
                    .map(|v| format!("{prefix}: upstream: {v}"))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// One engine's run: `lean` or `pingora` on the plain listener, or `tls`
/// (Pingora's proxy behind the TLS listener, HTTP/1.1).
fn run_engine(engine: &str, requests: &[RequestCase], responses: &[ResponseCase]) -> EngineRun {
    let tls = TlsListener::new();
    let (http1_engine, extra): (&str, Vec<&str>) = match engine {
        "tls" => ("pingora", tls.args()),
        other => (other, Vec::new()),
    };
    let (recorder, _policies, gw) = start_estate(http1_engine, responses, &extra);
    let dial = match engine {
        "tls" => Dial::Tls(tls.addr, tls_client(&tls.ca)),
        _ => Dial::Plain(gw.addr),
    };
    let mut failures = Vec::new();
    let mut outcomes = HashMap::new();
    // Each app's one /admin request of the hour, spent before the corpus.
    for host in ["conf.test", "iis.test"] {
        let got = try_http_get(gw.addr, "/admin", host).map(|r| r.0);
        assert_eq!(got, Some(200), "{engine}: the first GET /admin on {host}");
    }
    for case in requests {
        let before = recorder.count();
        let mut conn = dial.connect();
        let within = if case.timeout_ok {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(5)
        };
        let expect = match (&case.pingora, engine) {
            (Some(p), "pingora" | "tls") => p,
            _ => &case.expect,
        };
        let got = exchange(conn.as_mut(), &case.bytes, expect.len(), within);
        drop(conn);
        // The upstream has the forwarded requests before the client has
        // their responses; a smuggled one would be read at the same time.
        std::thread::sleep(Duration::from_millis(20));
        let forwarded = recorder.count() - before;
        let statuses: Vec<u16> = got.responses.iter().map(|r| r.status).collect();
        let text = if statuses.is_empty() {
            if got.timed_out {
                "timeout".to_string()
            } else {
                "close".to_string()
            }
        } else {
            statuses
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        };
        let fail = |why: String| format!("{engine} {} [{}]: {why}", case.name, case.family);
        if let Some(e) = &got.error {
            failures.push(fail(e.clone()));
        }
        let matches = statuses.len() == expect.len()
            && expect
                .iter()
                .zip(&statuses)
                .all(|(w, &s)| status_matches(w, s));
        let timeout_accepted = case.timeout_ok && got.timed_out && statuses.is_empty();
        if !matches && !timeout_accepted {
            failures.push(fail(format!("expected {expect:?}, got {text}")));
        }
        let from_app = got
            .responses
            .iter()
            .filter(|r| r.headers.iter().any(|(k, _)| k == "x-recorder"))
            .count();
        if forwarded > from_app {
            failures.push(fail(format!(
                "the app got {forwarded} request(s), the client {from_app} answer(s) from it"
            )));
        }
        if let Some(n) = case.upstream {
            if forwarded != n && !timeout_accepted {
                failures.push(fail(format!("the app got {forwarded} request(s), not {n}")));
            }
        }
        if forwarded > 0 && !case.app_lacks.is_empty() {
            let seen = recorder.seen.lock().map(|s| s.clone()).unwrap_or_default();
            for s in &seen[seen.len() - forwarded..] {
                for name in &case.app_lacks {
                    if s.headers.iter().any(|(k, _)| k == name) {
                        failures.push(fail(format!("the app got {name}")));
                    }
                }
            }
        }
        outcomes.insert(case.name.clone(), (text, forwarded, statuses.len()));
    }
    // Responses: each case, then a plain request on the same connection.
    for case in responses.iter().filter(|c| c.name != "plain") {
        let mut conn = dial.connect();
        let request = format!(
            "GET /case/{} HTTP/1.1\r\nHost: resp.test\r\n\r\n",
            case.name
        );
        let got = exchange(conn.as_mut(), request.as_bytes(), 1, Duration::from_secs(6));
        let fail = |why: String| format!("{engine} response {}: {why}", case.name);
        let expect = match (&case.pingora, engine) {
            (Some(p), "pingora" | "tls") => p,
            _ => &case.expect,
        };
        if let Some(e) = &got.error {
            failures.push(fail(e.clone()));
        }
        match got.responses.first() {
            Some(r) => {
                if !status_matches(expect, r.status) {
                    failures.push(fail(format!("expected {expect}, got {}", r.status)));
                }
                if let (Some(body), true) = (&case.body, r.status < 300) {
                    if &r.body != body {
                        failures.push(fail(format!(
                            "body {:?}, expected {:?}",
                            String::from_utf8_lossy(&r.body),
                            String::from_utf8_lossy(body)
                        )));
                    }
                }
                if got.responses.len() > 1 {
                    failures.push(fail("the client got a surplus response".into()));
                }
            }
            None if expect == "any" => {}
            None => failures.push(fail(format!("no response (closed: {})", got.closed))),
        }
        if !got.closed {
            let next = exchange(
                conn.as_mut(),
                b"GET /case/plain HTTP/1.1\r\nHost: resp.test\r\n\r\n",
                1,
                Duration::from_secs(6),
            );
            match next.responses.first() {
                Some(r) if r.status == 200 && r.body == b"plain" => {}
                None if next.closed => {}
                other => failures.push(fail(format!(
                    "the next request on the connection got {:?}",
                    other.map(|r| (r.status, String::from_utf8_lossy(&r.body).to_string()))
                ))),
            }
        }
    }
    // What the app read over the whole run.
    let seen = recorder.seen.lock().map(|s| s.clone()).unwrap_or_default();
    for (host, insensitive) in [("conf.test", false), ("iis.test", true)] {
        let admin: Vec<&str> = seen
            .iter()
            .filter(|s| normalize_host(&s.host) == host)
            .filter(|s| app_reads(&s.target, insensitive) == "/admin")
            .map(|s| s.target.as_str())
            .collect();
        if admin.len() > 1 {
            failures.push(format!(
                "{engine}: the app on {host} read /admin {} times (limit: once): {admin:?}",
                admin.len()
            ));
        }
    }
    for s in seen
        .iter()
        .filter(|s| normalize_host(&s.host) == "keys.test")
    {
        // A parameter identity reads as the key (`&`-separated, names
        // percent-decoded), or the key header.
        let query = s.target.split_once('?').map_or("", |(_, q)| q);
        let key_param = query.split('&').any(|p| {
            let name = p.split('=').next().unwrap_or("");
            app_reads(&format!("/{name}"), false) == "/api_key" && p.contains(KEY)
        });
        let key_seen = key_param || s.headers.iter().any(|(k, _)| k == "x-api-key");
        if key_seen {
            failures.push(format!(
                "{engine}: the API key reached the app: {}",
                s.target
            ));
        }
    }
    failures.extend(recorder.violation_lines(engine));
    EngineRun { outcomes, failures }
}

/// A `Host` value lowercase, without its port.
fn normalize_host(host: &str) -> String {
    host.rsplit_once(':')
        .map_or(host, |(h, _)| h)
        .to_ascii_lowercase()
}

/// The whole corpus on both engines, with every invariant.
#[test]
fn both_engines_pass_the_conformance_corpus() {
    let requests = request_cases();
    let responses = response_cases();
    assert!(
        requests.len() >= 150,
        "{} request cases (the suite promises 150)",
        requests.len()
    );
    assert!(
        responses.len() >= 30,
        "{} response cases (the suite promises 30)",
        responses.len()
    );
    let runs: Vec<(String, EngineRun)> = std::thread::scope(|scope| {
        let handles: Vec<_> = ["lean", "pingora", "tls"]
            .into_iter()
            .map(|engine| {
                let (requests, responses) = (&requests, &responses);
                scope.spawn(move || (engine.to_string(), run_engine(engine, requests, responses)))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("an engine run panicked"))
            .collect()
    });
    let mut failures: Vec<String> = runs.iter().flat_map(|(_, r)| r.failures.clone()).collect();
    // The lean engine forwards no more than Pingora's, case by case (where
    // both answered as many requests: Pingora's leaves pipelined ones).
    let (lean, pingora) = (&runs[0].1, &runs[1].1);
    for case in &requests {
        if let (Some(l), Some(p)) = (
            lean.outcomes.get(&case.name),
            pingora.outcomes.get(&case.name),
        ) {
            if l.1 > p.1 && l.2 == p.2 {
                failures.push(format!(
                    "{}: the lean engine forwarded {} request(s), Pingora's {} (lean {}, pingora {})",
                    case.name, l.1, p.1, l.0, p.0
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn the_app_reading_resolves_what_lenient_servers_resolve() {
    for (target, insensitive, want) in [
        ("/admin", false, "/admin"),
        ("/%61dmin", false, "/admin"),
        ("//admin/", false, "/admin"),
        ("/x/..;/admin", false, "/admin"),
        ("/x\\..\\admin", false, "/admin"),
        ("/admin;jsessionid=1?q", false, "/admin"),
        ("/ADMIN", false, "/ADMIN"),
        ("/ADMIN", true, "/admin"),
        ("/admin.", true, "/admin"),
        ("/admin%20", true, "/admin"),
    ] {
        assert_eq!(app_reads(target, insensitive), want, "{target}");
    }
}

/// The reported smuggling: `Connection: content-length` once made the lean
/// engine drop the length and forward the body as a second request, whose
/// answer went to the next client of the pooled upstream connection.
/// Now refused on both engines; the next client, on another connection,
/// gets its own answer and the app sees only that client's request.
#[test]
fn a_smuggled_request_reaches_neither_the_app_nor_another_client() {
    for engine in ["lean", "pingora"] {
        let (recorder, _policies, gw) = start_estate(engine, &[], &[]);
        for smuggled in [
            "GET /__sim/echo/smuggled HTTP/1.1\r\nHost: conf.test\r\nX-Sim-Delay-Ms: 300\r\n\r\n",
            "POST /smuggled HTTP/1.1\r\nHost: conf.test\r\nContent-Length: 60\r\n\r\n",
        ] {
            let before = recorder.count();
            let attack = format!(
                "GET /workflows HTTP/1.1\r\nHost: conf.test\r\nConnection: content-length\r\nContent-Length: {}\r\n\r\n{smuggled}",
                smuggled.len()
            );
            let mut attacker = TcpStream::connect(gw.addr).expect("connect");
            let got = exchange(
                &mut attacker as &mut dyn Conn,
                attack.as_bytes(),
                1,
                Duration::from_secs(5),
            );
            let statuses: Vec<u16> = got.responses.iter().map(|r| r.status).collect();
            assert_eq!(statuses, vec![400], "{engine}: {smuggled:?}");
            let mut victim = TcpStream::connect(gw.addr).expect("connect");
            let got = exchange(
                &mut victim as &mut dyn Conn,
                b"GET /victim HTTP/1.1\r\nHost: conf.test\r\nCookie: session=victim\r\n\r\n",
                1,
                Duration::from_secs(5),
            );
            let answer = got.responses.first().expect("the victim's answer");
            assert_eq!(
                (answer.status, answer.body.as_slice()),
                (200, &b"{}"[..]),
                "{engine}"
            );
            std::thread::sleep(Duration::from_millis(50));
            let seen = recorder.seen.lock().expect("seen").clone();
            let targets: Vec<&str> = seen[before..].iter().map(|s| s.target.as_str()).collect();
            assert_eq!(targets, vec!["/victim"], "{engine}: what the app got");
        }
        let violations = recorder.violations.lock().expect("violations").clone();
        assert!(violations.is_empty(), "{engine}: {violations:?}");
    }
}

/// A head or a body sent a byte at a time is cut off at the client
/// deadline as a whole (408), not allowed a fresh timeout per read. The
/// lean engine reads every head on the plain listener, also those it
/// hands to Pingora's.
#[test]
fn a_slow_head_or_body_gets_408_at_the_whole_message_deadline() {
    for engine in ["lean", "pingora", "tls"] {
        let tls = TlsListener::new();
        let mut extra = vec!["--client-timeout", "2"];
        if engine == "tls" {
            extra.extend(tls.args());
        }
        let http1_engine = if engine == "lean" { "lean" } else { "pingora" };
        let (recorder, _policies, gw) = start_estate(http1_engine, &[], &extra);
        let dial = match engine {
            "tls" => Dial::Tls(tls.addr, tls_client(&tls.ca)),
            _ => Dial::Plain(gw.addr),
        };
        let mut trickles = vec![("GET / HTTP/1.1\r\nHost: conf.test\r\nX-Slow: ", "a")];
        // A slow body: the lean engine's deadline is the client timeout;
        // on Pingora's proxy it is the app's total timeout (10 s here).
        if engine == "lean" {
            trickles.push((
                "POST / HTTP/1.1\r\nHost: conf.test\r\nContent-Length: 100\r\n\r\n",
                "b",
            ));
        }
        for (first, trickle) in trickles {
            let mut conn = dial.connect();
            conn.write_all(first.as_bytes()).expect("write");
            let started = Instant::now();
            let mut reply = Vec::new();
            conn.set_read_timeout(Some(Duration::from_millis(300)))
                .expect("timeout");
            // One byte every 300 ms: each read is quick, the whole is not.
            let mut closed = false;
            while started.elapsed() < Duration::from_secs(8) {
                if conn.write_all(trickle.as_bytes()).is_err() {
                    closed = true;
                    break;
                }
                let mut chunk = [0u8; 4096];
                match conn.read(&mut chunk) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(n) => reply.extend_from_slice(&chunk[..n]),
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            }
            let took = started.elapsed();
            let text = String::from_utf8_lossy(&reply).to_string();
            // The lean engine answers 408; Pingora's proxy, whose session is
            // still reading the head, has its connection closed.
            if engine == "lean" {
                assert!(
                    text.starts_with("HTTP/1.1 408"),
                    "{engine} {first:?}: {text:?}"
                );
            } else {
                assert!(closed && text.is_empty(), "{engine} {first:?}: {text:?}");
            }
            assert!(
                took < Duration::from_secs(5),
                "{engine} {first:?}: cut off after {took:?}"
            );
        }
        assert_eq!(
            recorder.count(),
            0,
            "{engine}: nothing incomplete reached the app"
        );
        // A head that comes in time is served, on a fresh connection.
        let mut conn = dial.connect();
        let got = exchange(
            conn.as_mut(),
            b"GET /on-time HTTP/1.1\r\nHost: conf.test\r\n\r\n",
            1,
            Duration::from_secs(5),
        );
        assert_eq!(
            got.responses.first().map(|r| r.status),
            Some(200),
            "{engine}: a timely request"
        );
    }
}

/// Bytes an attacker reaches for.
const SPICE: &[u8] = b"\r\n\0 \t:,;%/.\\#?0123456789abcdefABCDEF\x0b\x7f\xff";

/// Apply `(position, byte, kind)` edits to a corpus request: replace,
/// insert, delete, or repeat the line around the position.
fn mutate(mut bytes: Vec<u8>, edits: &[(usize, usize, u8)]) -> Vec<u8> {
    for &(at, pick, kind) in edits {
        if bytes.is_empty() {
            break;
        }
        let at = at % bytes.len();
        let b = SPICE[pick % SPICE.len()];
        match kind % 4 {
            0 => bytes[at] = b,
            1 => bytes.insert(at, b),
            2 => {
                bytes.remove(at);
            }
            _ => {
                let start = bytes[..at]
                    .iter()
                    .rposition(|&c| c == b'\n')
                    .map_or(0, |i| i + 1);
                let end = bytes[at..]
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(bytes.len(), |i| at + i + 1);
                let line = bytes[start..end].to_vec();
                bytes.splice(end..end, line);
            }
        }
    }
    bytes
}

/// Mutants of the corpus against both engines (a smoke run: the number
/// of cases is `CONFORMANCE_FUZZ_CASES`, default 300 per engine;
/// `scripts/fuzz.sh` runs it long). Whatever the gateway makes of them,
/// the app gets only unambiguous requests, no more than the client was
/// answered from it, at most one /admin, and never an API key; the
/// client only well-formed responses.
#[test]
fn mutated_requests_keep_every_invariant() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    let cases: u32 = std::env::var("CONFORMANCE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let corpus: Vec<Vec<u8>> = request_cases().into_iter().map(|c| c.bytes).collect();
    std::thread::scope(|scope| {
        for engine in ["lean", "pingora"] {
            let corpus = &corpus;
            scope.spawn(move || {
                let (recorder, _policies, gw) = start_estate(engine, &[], &[]);
                for host in ["conf.test", "iis.test"] {
                    let got = try_http_get(gw.addr, "/admin", host).map(|r| r.0);
                    assert_eq!(got, Some(200), "{engine}: the first GET /admin on {host}");
                }
                let mut runner = TestRunner::new(Config::with_cases(cases));
                let strategy = (
                    any::<usize>(),
                    proptest::collection::vec((any::<usize>(), any::<usize>(), any::<u8>()), 1..5),
                );
                let result = runner.run(&strategy, |(seed, edits)| {
                    let bytes = mutate(corpus[seed % corpus.len()].clone(), &edits);
                    let before = recorder.count();
                    let mut conn = TcpStream::connect(gw.addr).expect("connect");
                    // Until the gateway closes, or a short quiet spell.
                    let got = exchange(&mut conn, &bytes, usize::MAX, Duration::from_secs(3));
                    drop(conn);
                    std::thread::sleep(Duration::from_millis(20));
                    let forwarded = recorder.count() - before;
                    let from_app = got
                        .responses
                        .iter()
                        .filter(|r| r.headers.iter().any(|(k, _)| k == "x-recorder"))
                        .count();
                    let shown = String::from_utf8_lossy(&bytes).to_string();
                    prop_assert!(got.error.is_none(), "{engine}: {:?} for {shown:?}", got.error);
                    prop_assert!(
                        forwarded <= from_app,
                        "{engine}: the app got {forwarded}, the client {from_app} answers from it, for {shown:?}"
                    );
                    let violations = recorder.violations.lock().map(|v| v.clone()).unwrap_or_default();
                    prop_assert!(violations.is_empty(), "{engine}: {violations:?} after {shown:?}");
                    Ok(())
                });
                if let Err(e) = result {
                    panic!("{engine}: {e}");
                }
                let seen = recorder.seen.lock().map(|s| s.clone()).unwrap_or_default();
                for (host, insensitive) in [("conf.test", false), ("iis.test", true)] {
                    let admin = seen
                        .iter()
                        .filter(|s| normalize_host(&s.host) == host)
                        .filter(|s| app_reads(&s.target, insensitive) == "/admin")
                        .count();
                    assert!(admin <= 1, "{engine}: /admin read {admin} times on {host}");
                }
                for s in seen.iter().filter(|s| normalize_host(&s.host) == "keys.test") {
                    assert!(
                        !s.headers.iter().any(|(k, _)| k == "x-api-key"),
                        "{engine}: a key header reached the app"
                    );
                }
            });
        }
    });
}
