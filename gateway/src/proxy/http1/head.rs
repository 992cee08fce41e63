//! HTTP/1.1 message heads for the lean engine: parse a request head
//! (`httparse`), decide whether this engine carries it, and write the heads
//! that go upstream and back to the client.

use std::fmt::Write as _;
use std::mem::MaybeUninit;

use http::header::{self, HeaderName, HeaderValue};

use crate::ctx::RequestCtx;
use crate::policy::model::ForwardedStyle;
use crate::policy::App;

/// Most header lines read in one head.
pub const MAX_HEADERS: usize = 100;
/// A head still incomplete after this many bytes goes to Pingora (431).
pub const MAX_HEAD: usize = 32 * 1024;
/// Request bodies up to this size are read whole before the upstream is
/// chosen; larger ones go to Pingora, which streams them.
pub const MAX_BUFFERED_BODY: u64 = 64 * 1024;

/// A parsed request head.
#[derive(Debug)]
pub struct RequestHead {
    /// Method, URI, version and headers.
    pub parts: http::request::Parts,
    /// Bytes of the head, blank line included.
    pub len: usize,
    /// The declared body length (0: none).
    pub content_length: u64,
    /// The client asked to close the connection after this request.
    pub close: bool,
    /// What the header loop saw, so later steps need no map lookup.
    pub seen: Seen,
}

/// Headers a request head has, noted while it is parsed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Seen {
    /// A `Connection` header (it may name more headers to drop).
    pub connection: bool,
    /// An `X-Request-Id` header.
    pub request_id: bool,
}

/// What the parser made of the buffered bytes.
// Returned once per request and moved straight out: boxing the head would
// cost an allocation per request for no gain.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Parsed {
    /// A head this engine carries.
    Lean(RequestHead),
    /// Not complete yet: read more.
    Partial,
    /// Valid or not, something Pingora's full HTTP stack handles (HTTP/1.0,
    /// chunked or large bodies, upgrades, `Expect`, CONNECT, malformed heads).
    Pingora,
}

/// Parse the request head at the start of `buf`. A lean head's header map
/// is `spare` (taken, cleared), so a connection reuses one map's memory
/// from request to request.
pub fn parse_request(buf: &[u8], spare: &mut http::HeaderMap) -> Parsed {
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Parsed::Partial,
        _ => return Parsed::Pingora,
    };
    if req.version != Some(1) {
        return Parsed::Pingora;
    }
    let (Some(method), Some(path)) = (req.method, req.path) else {
        return Parsed::Pingora;
    };
    let Ok(method) = http::Method::from_bytes(method.as_bytes()) else {
        return Parsed::Pingora;
    };
    if method == http::Method::CONNECT {
        return Parsed::Pingora;
    }
    let Ok(uri) = path.parse::<http::Uri>() else {
        return Parsed::Pingora;
    };
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = http::Version::HTTP_11;
    parts.headers = std::mem::take(spare);
    parts.headers.clear();
    parts.headers.reserve(req.headers.len());
    let mut content_length = None;
    let mut close = false;
    let mut seen = Seen::default();
    for h in req.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            return Parsed::Pingora;
        };
        if name == header::CONTENT_LENGTH {
            let parsed = parse_content_length(h.value);
            match (parsed, content_length) {
                (Some(n), None) => content_length = Some(n),
                (Some(n), Some(m)) if n == m => {}
                _ => return Parsed::Pingora,
            }
        } else if name == header::TRANSFER_ENCODING
            || name == header::UPGRADE
            || name == header::EXPECT
        {
            return Parsed::Pingora;
        } else if name == crate::proxy::respond::X_REQUEST_ID {
            seen.request_id = true;
        } else if name == header::CONNECTION {
            seen.connection = true;
            for token in h.value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    return Parsed::Pingora;
                }
            }
        }
        parts.headers.append(name, value);
    }
    let content_length = content_length.unwrap_or(0);
    if content_length > MAX_BUFFERED_BODY {
        return Parsed::Pingora;
    }
    Parsed::Lean(RequestHead {
        parts,
        len,
        content_length,
        close,
        seen,
    })
}

/// A `Content-Length` value: digits only (RFC 9110 §8.6; no sign, which
/// an upstream may read differently), at most 19 of them.
fn parse_content_length(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // At most 19 digits: below 10^19, which `u64` holds.
    Some(
        digits
            .iter()
            .fold(0u64, |n, d| n * 10 + u64::from(d - b'0')),
    )
}

/// Hop-by-hop headers a proxy never forwards (RFC 9110 §7.6.1).
fn hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
        || name == header::TE
        || name == header::TRAILER
        || name == header::UPGRADE
        || name == header::PROXY_AUTHORIZATION
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

/// Headers named as connection options in the request's `Connection`.
fn connection_options(headers: &http::HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty() && t != "close" && t != "keep-alive")
        .collect()
}

fn push_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Write the request head that goes upstream into `out`: the request line
/// (app prefix stripped and API-key query parameter removed when the app
/// says so), the client's end-to-end headers minus the API-key header, then
/// `X-Request-Id` and the app's forwarding headers — what
/// `prepare_upstream_request` does for Pingora-carried requests.
pub fn write_upstream_head(out: &mut Vec<u8>, head: &RequestHead, ctx: &RequestCtx, app: &App) {
    let parts = &head.parts;
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let path = if app.strip_prefix {
        crate::routing::strip_app_prefix(&app.path_prefix, parts.uri.path())
    } else {
        parts.uri.path()
    };
    let key_param = app.auth.as_ref().and_then(|a| a.api_key_query.as_deref());
    match (parts.uri.query(), key_param) {
        (Some(q), Some(k)) if q.contains(k) => {
            out.extend_from_slice(
                super::super::upstream::path_without_param(path, q, k).as_bytes(),
            );
        }
        (Some(q), _) => {
            out.extend_from_slice(path.as_bytes());
            out.push(b'?');
            out.extend_from_slice(q.as_bytes());
        }
        (None, _) => out.extend_from_slice(path.as_bytes()),
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");

    let forwarded = app.forwarded;
    let key_header = app.auth.as_ref().and_then(|a| a.api_key_header.as_ref());
    let options = if head.seen.connection {
        connection_options(&parts.headers)
    } else {
        Vec::new()
    };
    let mut previous_xff: Option<&HeaderValue> = None;
    let mut previous_forwarded: Option<&HeaderValue> = None;
    let mut host_header: Option<&HeaderValue> = None;
    for (name, value) in &parts.headers {
        if name == header::HOST {
            host_header = host_header.or(Some(value));
        } else if hop_by_hop(name)
            || key_header.is_some_and(|k| k == name)
            || options.iter().any(|o| o == name.as_str())
        {
            continue;
        }
        match name.as_str() {
            "x-request-id" if !ctx.request_id_from_client => continue,
            "x-forwarded-for" if forwarded.style == ForwardedStyle::XForwarded => {
                previous_xff = Some(value);
                continue;
            }
            "x-forwarded-proto" if forwarded.style == ForwardedStyle::XForwarded => continue,
            "x-forwarded-host"
                if forwarded.style == ForwardedStyle::XForwarded && forwarded.host =>
            {
                continue
            }
            "forwarded" if forwarded.style == ForwardedStyle::Rfc7239 => {
                previous_forwarded = Some(value);
                continue;
            }
            _ => {}
        }
        push_header(out, name.as_str(), value.as_bytes());
    }
    let host = match host_header {
        Some(h) => h.to_str().ok(),
        None => {
            let authority = parts.uri.authority().map(|a| a.as_str());
            if let Some(h) = authority {
                push_header(out, "host", h.as_bytes());
            }
            authority
        }
    };
    if !ctx.request_id_from_client {
        push_header(out, "x-request-id", ctx.request_id.as_bytes());
    }
    let client_ip = ctx.client_ip.as_str();
    match forwarded.style {
        ForwardedStyle::XForwarded => {
            if !client_ip.is_empty() {
                out.extend_from_slice(b"x-forwarded-for: ");
                if let Some(prev) = previous_xff.filter(|p| !p.is_empty()) {
                    out.extend_from_slice(prev.as_bytes());
                    out.extend_from_slice(b", ");
                }
                out.extend_from_slice(client_ip.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            push_header(out, "x-forwarded-proto", b"http");
            if let (true, Some(h)) = (forwarded.host, host) {
                push_header(out, "x-forwarded-host", h.as_bytes());
            }
        }
        ForwardedStyle::Rfc7239 => {
            let mut element = String::with_capacity(64);
            if let Some(prev) = previous_forwarded
                .and_then(|p| p.to_str().ok())
                .filter(|p| !p.is_empty())
            {
                element.push_str(prev);
                element.push_str(", ");
            }
            super::super::upstream::forwarded_element(
                &mut element,
                client_ip,
                false,
                host.filter(|_| forwarded.host),
            );
            push_header(out, "forwarded", element.as_bytes());
        }
        ForwardedStyle::None => {}
    }
    out.extend_from_slice(b"\r\n");
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    Empty,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked`, relayed as is.
    Chunked,
    /// Until the upstream closes; the client connection closes after it.
    UntilClose,
}

/// A parsed upstream response head.
#[derive(Debug)]
pub struct ResponseHead {
    /// Status code.
    pub status: u16,
    /// Bytes of the head.
    pub len: usize,
    /// How the body is delimited.
    pub framing: Framing,
    /// The upstream connection can carry another request afterwards.
    pub reusable: bool,
    /// `Content-Type` and `Content-Encoding`, for the response contract.
    pub content: http::HeaderMap,
}

/// Why an upstream response head is unusable.
#[derive(Debug, PartialEq, Eq)]
pub enum BadResponse {
    /// Not complete yet.
    Partial,
    /// Not HTTP, or a head we do not accept (e.g. `101` to a plain request).
    Invalid,
}

/// Parse the upstream's response head at the start of `buf` (`head_request`:
/// the request was HEAD, so no body follows whatever the head says), and
/// write the start of the client's head into `client_head`: the status line
/// and the end-to-end headers, without the ones the gateway sets itself
/// (`X-Request-Id`; `RateLimit-*` when `own_rate_headers`).
/// [`finish_client_head`] completes it. `want_content`: fill
/// [`ResponseHead::content`] (the response contract needs it).
pub fn parse_response(
    buf: &[u8],
    head_request: bool,
    client_head: &mut Vec<u8>,
    own_rate_headers: bool,
    want_content: bool,
) -> Result<ResponseHead, BadResponse> {
    client_head.clear();
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut headers,
    ) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Err(BadResponse::Partial),
        _ => return Err(BadResponse::Invalid),
    };
    let status = resp.code.ok_or(BadResponse::Invalid)?;
    if status == 101 {
        return Err(BadResponse::Invalid);
    }
    // Lines copied as the upstream wrote them go out in runs: a run grows
    // while the next kept line follows after exactly CRLF, and is copied in
    // one piece when a line is dropped or rewritten, or at the end.
    let mut run = Lines::default();
    match (resp.version, resp.reason.filter(|r| !r.is_empty())) {
        // The upstream's own status line, copied as it is.
        (Some(1), Some(reason))
            if buf.len() >= offset_in(buf, reason.as_bytes()) + reason.len() =>
        {
            run.keep(
                buf,
                client_head,
                0,
                offset_in(buf, reason.as_bytes()) + reason.len(),
            );
        }
        (_, reason) => {
            let _ = write!(
                Utf8(client_head),
                "HTTP/1.1 {status} {}\r\n",
                reason.unwrap_or_else(|| {
                    http::StatusCode::from_u16(status)
                        .ok()
                        .and_then(|s| s.canonical_reason())
                        .unwrap_or("")
                })
            );
        }
    }
    let mut reusable = resp.version == Some(1);
    let mut length = None;
    let mut chunked = false;
    let mut content = http::HeaderMap::new();
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = parse_content_length(h.value).ok_or(BadResponse::Invalid)?;
            if length.is_some_and(|m| m != n) {
                return Err(BadResponse::Invalid);
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let last = h.value.rsplit(|b| *b == b',').next().unwrap_or_default();
            chunked = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
            if !chunked {
                return Err(BadResponse::Invalid);
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            if h.value
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
            {
                reusable = false;
            }
            continue;
        } else if want_content && h.name.eq_ignore_ascii_case("content-type") {
            if let Ok(v) = HeaderValue::from_bytes(h.value) {
                content.insert(header::CONTENT_TYPE, v);
            }
        } else if want_content && h.name.eq_ignore_ascii_case("content-encoding") {
            if let Ok(v) = HeaderValue::from_bytes(h.value) {
                content.insert(header::CONTENT_ENCODING, v);
            }
        } else if h.name.eq_ignore_ascii_case("keep-alive")
            || h.name.eq_ignore_ascii_case("proxy-connection")
            || h.name.eq_ignore_ascii_case("x-request-id")
            || (own_rate_headers
                && (h.name.eq_ignore_ascii_case("ratelimit")
                    || h.name.eq_ignore_ascii_case("ratelimit-policy")))
        {
            continue;
        }
        // The header line as the upstream wrote it (name through value).
        let start = offset_in(buf, h.name.as_bytes());
        let end = offset_in(buf, h.value) + h.value.len();
        if start < end && end <= buf.len() {
            run.keep(buf, client_head, start, end);
        } else {
            run.flush(buf, client_head);
            push_header(client_head, h.name, h.value);
        }
    }
    run.flush(buf, client_head);
    let framing = if head_request || (100..200).contains(&status) || status == 204 || status == 304
    {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        reusable = false;
        Framing::UntilClose
    };
    Ok(ResponseHead {
        status,
        len,
        framing,
        reusable,
        content,
    })
}

/// Consecutive lines of a head, `buf[start..end]` without the last CRLF,
/// waiting to be copied in one piece.
#[derive(Default)]
struct Lines {
    span: Option<(usize, usize)>,
}

impl Lines {
    /// Add the line at `start..end` (a range of `buf`): to the run, when it
    /// follows after exactly CRLF; else (a line was dropped between them, or
    /// the upstream ended a line otherwise) after copying the run out.
    fn keep(&mut self, buf: &[u8], out: &mut Vec<u8>, start: usize, end: usize) {
        match self.span {
            Some((from, to)) if buf.get(to..start) == Some(b"\r\n".as_slice()) => {
                self.span = Some((from, end));
            }
            _ => {
                self.flush(buf, out);
                self.span = Some((start, end));
            }
        }
    }

    /// Copy the run out, with its closing CRLF.
    fn flush(&mut self, buf: &[u8], out: &mut Vec<u8>) {
        if let Some(lines) = self.span.take().and_then(|(from, to)| buf.get(from..to)) {
            out.extend_from_slice(lines);
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// Where `part` (a slice `httparse` returned) starts inside `buf`.
fn offset_in(buf: &[u8], part: &[u8]) -> usize {
    (part.as_ptr() as usize).saturating_sub(buf.as_ptr() as usize)
}

/// Complete the client's response head begun by [`parse_response`]:
/// `X-Request-Id`, the `RateLimit-*` headers, and `Connection: close` when
/// the connection ends after it.
pub fn finish_client_head(out: &mut Vec<u8>, ctx: &RequestCtx, close: bool) {
    push_header(out, "x-request-id", ctx.request_id.as_bytes());
    if let Some((policy, state)) = &ctx.rate_headers {
        push_header(out, "ratelimit-policy", policy.as_bytes());
        push_header(out, "ratelimit", state.as_bytes());
    }
    if close {
        push_header(out, "connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
}

/// `fmt::Write` over a byte buffer.
struct Utf8<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Utf8<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Write a complete gateway-generated problem response.
pub fn write_problem(
    out: &mut Vec<u8>,
    err: &crate::error::GatewayError,
    ctx: &RequestCtx,
    path: &str,
    head_request: bool,
    close: bool,
) {
    let body = err.problem_json(&ctx.request_id, path);
    let status =
        http::StatusCode::from_u16(err.status()).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    let _ = write!(
        Utf8(out),
        "HTTP/1.1 {} {}\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\ncache-control: no-store\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    push_header(out, "x-request-id", ctx.request_id.as_bytes());
    for (name, value) in super::super::respond::problem_headers(err) {
        push_header(out, name.as_str(), value.as_bytes());
    }
    if close {
        push_header(out, "connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    if !head_request {
        out.extend_from_slice(&body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_heads_are_lean_and_everything_unusual_goes_to_pingora() {
        let lean = parse_request(
            b"POST /a?b=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
            &mut http::HeaderMap::new(),
        );
        let Parsed::Lean(head) = lean else {
            panic!("expected a lean head")
        };
        assert_eq!(head.content_length, 3);
        assert_eq!(head.len, 52);
        assert_eq!(head.parts.uri.query(), Some("b=1"));
        assert!(!head.close);
        assert!(matches!(
            parse_request(
                b"GET / HTTP/1.1\r\nHost: x\r\n",
                &mut http::HeaderMap::new()
            ),
            Parsed::Partial
        ));
        for pingora in [
            &b"GET / HTTP/1.0\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 999999\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\nx",
            b"POST / HTTP/1.1\r\nContent-Length: 0x1\r\n\r\nx",
            b"POST / HTTP/1.1\r\nContent-Length: \r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\n\r\n",
        ] {
            assert!(
                matches!(
                    parse_request(pingora, &mut http::HeaderMap::new()),
                    Parsed::Pingora
                ),
                "{}",
                String::from_utf8_lossy(pingora)
            );
        }
        let Parsed::Lean(closing) = parse_request(
            b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
            &mut http::HeaderMap::new(),
        ) else {
            panic!("expected a lean head")
        };
        assert!(closing.close);
    }

    /// A connection's map is reused: the next head holds only its own
    /// headers, and the map's memory is kept.
    #[test]
    fn a_reused_header_map_holds_only_the_new_heads_headers() {
        let mut spare = http::HeaderMap::new();
        let Parsed::Lean(first) = parse_request(
            b"GET /a HTTP/1.1\r\nHost: x\r\nX-Api-Key: k1\r\nAccept: */*\r\n\r\n",
            &mut spare,
        ) else {
            panic!("expected a lean head")
        };
        assert_eq!(first.parts.headers.len(), 3);
        spare = first.parts.headers;
        let kept = spare.capacity();
        let Parsed::Lean(second) = parse_request(b"GET /b HTTP/1.1\r\nHost: y\r\n\r\n", &mut spare)
        else {
            panic!("expected a lean head")
        };
        assert!(spare.is_empty(), "the map moved into the head");
        let headers = &second.parts.headers;
        assert_eq!(headers.len(), 1);
        assert_eq!(headers.get("host").map(|v| v.as_bytes()), Some(&b"y"[..]));
        assert!(headers.get("x-api-key").is_none());
        assert!(headers.capacity() >= kept);
    }

    /// What the header loop notes is what the map holds, in any case.
    #[test]
    fn the_header_loop_notes_connection_and_request_id() {
        let lean = |head: &[u8]| match parse_request(head, &mut http::HeaderMap::new()) {
            Parsed::Lean(h) => h.seen,
            _ => panic!("expected a lean head"),
        };
        let plain = lean(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(!plain.connection && !plain.request_id);
        let both = lean(b"GET / HTTP/1.1\r\nconnection: x-a\r\nX-REQUEST-ID: r1\r\n\r\n");
        assert!(both.connection && both.request_id);
    }

    #[test]
    fn content_lengths_are_plain_digits() {
        for (value, want) in [
            (&b"0"[..], Some(0)),
            (b" 1460 ", Some(1460)),
            (b"9999999999999999999", Some(9_999_999_999_999_999_999)),
            (b"", None),
            (b"+5", None),
            (b"-1", None),
            (b"1 2", None),
            (b"0x10", None),
            (b"10000000000000000000", None),
        ] {
            assert_eq!(
                parse_content_length(value),
                want,
                "{}",
                String::from_utf8_lossy(value)
            );
        }
    }

    /// Kept lines leave as the upstream wrote them, in runs around the
    /// dropped ones; a line ended otherwise than by CRLF is ended by CRLF.
    #[test]
    fn the_client_head_copies_kept_lines_around_dropped_ones() {
        let mut client = Vec::new();
        let parsed = parse_response(
            b"HTTP/1.1 201 Created\r\nA: 1\r\nB:  two words\r\nX-Request-Id: up\r\nKeep-Alive: 5\r\nC: 3\r\nContent-Length: 0\nD: 4   \r\nE: 5\r\n\r\n",
            false,
            &mut client,
            false,
            false,
        );
        assert!(parsed.is_ok(), "{parsed:?}");
        assert_eq!(
            String::from_utf8_lossy(&client),
            "HTTP/1.1 201 Created\r\nA: 1\r\nB:  two words\r\nC: 3\r\nContent-Length: 0\r\nD: 4\r\nE: 5\r\n"
        );
    }

    #[test]
    fn response_framing() {
        let mut client = Vec::new();
        let r =
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\nX-Request-Id: up\r\nX-App: 1\r\n\r\nhello", false, &mut client, true, true).unwrap();
        assert_eq!(
            client,
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-App: 1\r\n"
        );
        assert_eq!(
            (r.status, r.framing, r.reusable),
            (200, Framing::Length(5), true)
        );
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
            &mut client,
            false,
            true,
        )
        .unwrap();
        assert_eq!(r.framing, Framing::Chunked);
        let r =
            parse_response(b"HTTP/1.1 200 OK\r\n\r\n", false, &mut client, false, true).unwrap();
        assert_eq!((r.framing, r.reusable), (Framing::UntilClose, false));
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
            true,
            &mut client,
            false,
            true,
        )
        .unwrap();
        assert_eq!(r.framing, Framing::Empty);
        let r = parse_response(
            b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n",
            false,
            &mut client,
            false,
            true,
        )
        .unwrap();
        assert_eq!((r.framing, r.reusable), (Framing::Empty, false));
        for (head, want) in [
            (
                b"HTTP/1.1 200 OK\r\nContent-Le".as_slice(),
                BadResponse::Partial,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n".as_slice(),
                BadResponse::Invalid,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello".as_slice(),
                BadResponse::Invalid,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n".as_slice(),
                BadResponse::Invalid,
            ),
        ] {
            assert_eq!(
                parse_response(head, false, &mut client, false, true).unwrap_err(),
                want,
                "{}",
                String::from_utf8_lossy(head)
            );
        }
    }
}
