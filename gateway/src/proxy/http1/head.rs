//! HTTP/1.1 response heads for the lean engine: parse the upstream's head
//! (`httparse`) and write the client's, and the gateway's own problem
//! responses; and the line-writing helpers the request head shares.

use std::fmt::Write as _;
use std::mem::MaybeUninit;

use http::header::{self, HeaderValue};

use crate::pipeline::head_rules::parse_content_length;

use crate::pipeline::RequestCtx;

/// Longest request head read (the lean engine answers 431 above it, and
/// Pingora's engine refuses the same), and longest upstream response head.
pub const MAX_HEAD: usize = 32 * 1024;
/// Most header lines read in one head.
pub const MAX_HEADERS: usize = 100;

/// Write the header line `name: value`.
pub(super) fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
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
    // 101 to a request that asked for no upgrade, or no HTTP status.
    if status == 101 || !(100..=599).contains(&status) {
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
    // Both framings (RFC 9112 §6.3): the chunked coding wins, the length
    // is dropped, and the connection is not trusted with another request.
    let has_transfer_encoding = resp
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"));
    let mut length = None;
    let mut chunked = false;
    let mut content = http::HeaderMap::new();
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            if has_transfer_encoding {
                reusable = false;
                continue;
            }
            let n = parse_content_length(h.value).ok_or(BadResponse::Invalid)?;
            // Repeated, even with one value: 502 as on Pingora's engine.
            if length.is_some() {
                return Err(BadResponse::Invalid);
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // Exactly one `chunked`, last (RFC 9112 §6.1): anything else is
            // read differently by different clients.
            let mut codings = h.value.split(|b| *b == b',').map(<[u8]>::trim_ascii);
            let last = codings.next_back().unwrap_or_default();
            if chunked
                || !last.eq_ignore_ascii_case(b"chunked")
                || codings.any(|c| c.is_empty() || c.eq_ignore_ascii_case(b"chunked"))
            {
                return Err(BadResponse::Invalid);
            }
            chunked = true;
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
            push_header(client_head, h.name.as_bytes(), h.value);
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
pub(super) struct Lines {
    span: Option<(usize, usize)>,
}

impl Lines {
    /// Add the line at `start..end` (a range of `buf`): to the run, when it
    /// follows after exactly CRLF; else (a line was dropped between them, or
    /// the upstream ended a line otherwise) after copying the run out.
    pub(super) fn keep(&mut self, buf: &[u8], out: &mut Vec<u8>, start: usize, end: usize) {
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
    pub(super) fn flush(&mut self, buf: &[u8], out: &mut Vec<u8>) {
        if let Some(lines) = self.span.take().and_then(|(from, to)| buf.get(from..to)) {
            out.extend_from_slice(lines);
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// Where `part` (a slice `httparse` returned) starts inside `buf`.
pub(super) fn offset_in(buf: &[u8], part: &[u8]) -> usize {
    (part.as_ptr() as usize).saturating_sub(buf.as_ptr() as usize)
}

/// Complete the client's response head begun by [`parse_response`]:
/// `X-Request-Id`, the `RateLimit-*` headers, and `Connection: close` when
/// the connection ends after it.
pub fn finish_client_head(out: &mut Vec<u8>, ctx: &RequestCtx, close: bool) {
    push_header(out, b"x-request-id", ctx.request_id.as_bytes());
    if let Some((policy, state)) = &ctx.rate_headers {
        push_header(out, b"ratelimit-policy", policy.as_bytes());
        push_header(out, b"ratelimit", state.as_bytes());
    }
    if close {
        push_header(out, b"connection", b"close");
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
) -> u64 {
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
    push_header(out, b"x-request-id", ctx.request_id.as_bytes());
    for (name, value) in err.problem_headers() {
        push_header(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if close {
        push_header(out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    if head_request {
        return 0;
    }
    out.extend_from_slice(&body);
    body.len() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // Both framings: the length line is dropped and the connection
        // is not reused.
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n",
            false,
            &mut client,
            false,
            true,
        )
        .unwrap();
        assert_eq!((r.framing, r.reusable), (Framing::Chunked, false));
        assert_eq!(
            client,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n"
        );
        for twice in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
                [..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: ,chunked\r\n\r\n",
        ] {
            assert_eq!(
                parse_response(twice, false, &mut client, false, true).unwrap_err(),
                BadResponse::Invalid
            );
        }
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
