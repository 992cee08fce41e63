//! The request head on the lean path: parsed once with `httparse`, copied
//! once into a text buffer the connection reuses and checked as UTF-8 as a
//! whole, kept as offsets into that text (no `http` types are built), read
//! by the phases through [`RequestView`], and written upstream with its
//! kept lines copied as the client wrote them.

use std::mem::MaybeUninit;

use http::Method;

use super::head::{offset_in, push_header, Lines, MAX_HEAD, MAX_HEADERS};
use crate::pipeline::head_rules::parse_content_length;
use crate::pipeline::RequestCtx;
use crate::pipeline::RequestView;
use crate::policy::model::ForwardedStyle;
use crate::policy::App;

/// Request bodies up to this size are read whole before the upstream is
/// chosen; larger ones go to Pingora, which streams them.
pub const MAX_BUFFERED_BODY: u64 = 64 * 1024;

/// A range of the read buffer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Span {
    start: u32,
    len: u32,
}

impl Span {
    fn new(start: usize, len: usize) -> Self {
        // Heads are at most `MAX_HEAD` bytes, far below `u32::MAX`.
        Self {
            start: u32::try_from(start).unwrap_or(u32::MAX),
            len: u32::try_from(len).unwrap_or(0),
        }
    }

    fn of(self, buf: &[u8]) -> &[u8] {
        let start = self.start as usize;
        buf.get(start..start + self.len as usize)
            .unwrap_or_default()
    }

    fn text(self, text: &str) -> &str {
        let start = self.start as usize;
        text.get(start..start + self.len as usize)
            .unwrap_or_default()
    }

    fn end(self) -> usize {
        self.start as usize + self.len as usize
    }
}

/// Headers the engine acts on, told apart once while the head is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Host,
    /// Hop-by-hop (RFC 9110 §7.6.1): never forwarded.
    HopByHop,
    Connection,
    ContentLength,
    RequestId,
    XForwardedFor,
    XForwardedProto,
    XForwardedHost,
    Forwarded,
    /// Carried by Pingora (`Transfer-Encoding`, `Upgrade`, `Expect`).
    Unsupported,
    Other,
}

/// What `name` (any case) is to the engine.
fn kind(name: &[u8]) -> Kind {
    let is = |lower: &str| name.eq_ignore_ascii_case(lower.as_bytes());
    match name.len() {
        2 if is("te") => Kind::HopByHop,
        4 if is("host") => Kind::Host,
        6 if is("expect") => Kind::Unsupported,
        7 if is("upgrade") => Kind::Unsupported,
        7 if is("trailer") => Kind::HopByHop,
        9 if is("forwarded") => Kind::Forwarded,
        10 if is("connection") => Kind::Connection,
        10 if is("keep-alive") => Kind::HopByHop,
        12 if is("x-request-id") => Kind::RequestId,
        14 if is("content-length") => Kind::ContentLength,
        14 if is("http2-settings") => Kind::HopByHop,
        15 if is("x-forwarded-for") => Kind::XForwardedFor,
        16 if is("x-forwarded-host") => Kind::XForwardedHost,
        16 if is("proxy-connection") => Kind::HopByHop,
        17 if is("x-forwarded-proto") => Kind::XForwardedProto,
        17 if is("transfer-encoding") => Kind::Unsupported,
        18 if is("proxy-authenticate") => Kind::HopByHop,
        19 if is("proxy-authorization") => Kind::HopByHop,
        _ => Kind::Other,
    }
}

/// One header line of the head.
#[derive(Debug, Clone, Copy)]
struct Header {
    name: Span,
    value: Span,
    kind: Kind,
    /// The line `name.start..value.end` is the line as written (a value
    /// `httparse` found elsewhere, such as an empty one, is not).
    whole_line: bool,
}

/// A parsed request head: its text, and where its parts lie in it.
#[derive(Debug)]
pub struct RequestHead {
    /// The method.
    pub method: Method,
    /// The head's bytes as text, checked as UTF-8 once: every part the
    /// phases read as text is a slice of it, with no check of its own.
    text: String,
    /// Where the request target (origin-form) starts in `text`.
    target_at: usize,
    /// The path's length; a query follows after `?`.
    path_len: usize,
    /// The query's length, if the target has one.
    query_len: Option<usize>,
    /// Header lines, in order.
    headers: Vec<Header>,
    /// The first `Host` line's value.
    host: Option<Span>,
    /// Bytes of the head, blank line included.
    pub len: usize,
    /// The declared body length (0: none).
    pub content_length: u64,
    /// The head has a `Content-Length` (the upstream head gets one too).
    has_content_length: bool,
    /// The client asked to close the connection after this request.
    pub close: bool,
    /// The head has an `X-Request-Id`.
    pub has_request_id: bool,
    /// The head has a `Connection` header (it may name more to drop).
    has_connection: bool,
}

/// The header list and text of a connection's last head, kept for the
/// next one so that their memory is reused.
#[derive(Debug, Default)]
pub struct SpareHeaders {
    headers: Vec<Header>,
    text: String,
}

impl RequestHead {
    /// Give the head's memory back for the connection's next head.
    pub fn recycle(self, spare: &mut SpareHeaders) {
        spare.headers = self.headers;
        spare.text = self.text;
    }

    /// The path as the client sent it.
    pub fn path(&self) -> &str {
        Span::new(self.target_at, self.path_len).text(&self.text)
    }

    /// The head as the phases read it, with `path` (the canonical reading
    /// of [`RequestHead::path`]) as its path; `buf` is the buffer it was
    /// parsed from (more bytes may have been appended since).
    pub fn view<'a>(&'a self, buf: &'a [u8], path: &'a str) -> Request<'a> {
        let text = self.text.as_str();
        let query = self
            .query_len
            .map(|q| Span::new(self.target_at + self.path_len + 1, q).text(text));
        let host = self
            .host
            .map(|h| h.text(text))
            .filter(|h| h.is_ascii())
            .unwrap_or("");
        let body_end = self.len + usize::try_from(self.content_length).unwrap_or(usize::MAX);
        Request {
            head: self,
            text,
            body: buf.get(self.len..body_end).unwrap_or_default(),
            path,
            query,
            host,
        }
    }
}

/// A request as the phases read it: the head's text and the body, which
/// stays in the connection's read buffer.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    head: &'a RequestHead,
    /// The head.
    text: &'a str,
    body: &'a [u8],
    path: &'a str,
    query: Option<&'a str>,
    /// The first `Host` value ("" when absent or not ASCII).
    host: &'a str,
}

impl<'a> Request<'a> {
    /// The parsed head.
    pub fn head(&self) -> &'a RequestHead {
        self.head
    }

    /// The body (the buffer holds all of it before the view is made).
    pub fn body(&self) -> &'a [u8] {
        self.body
    }

    fn lines<'n>(&self, name: &'n str) -> impl Iterator<Item = &'a Header> + 'n
    where
        'a: 'n,
    {
        let buf = self.text.as_bytes();
        self.head.headers.iter().filter(move |h| {
            h.name.len as usize == name.len()
                && h.name.of(buf).eq_ignore_ascii_case(name.as_bytes())
        })
    }
}

impl RequestView for Request<'_> {
    fn method(&self) -> &Method {
        &self.head.method
    }

    fn path(&self) -> &str {
        self.path
    }

    fn query(&self) -> Option<&str> {
        self.query
    }

    fn header(&self, name: &str) -> Option<&[u8]> {
        self.lines(name)
            .next()
            .map(|h| h.value.of(self.text.as_bytes()))
    }

    fn each_header(&self, name: &str, f: &mut dyn FnMut(&[u8])) {
        self.lines(name)
            .for_each(|h| f(h.value.of(self.text.as_bytes())));
    }

    fn header_str(&self, name: &str) -> Option<&str> {
        let value = self.lines(name).next()?.value.text(self.text);
        value.is_ascii().then_some(value)
    }

    fn target_host(&self) -> Option<&str> {
        // Only origin-form targets are carried by this engine.
        None
    }

    fn version(&self) -> http::Version {
        // HTTP/1.0 is carried by Pingora.
        http::Version::HTTP_11
    }

    fn each_header_line(&self, f: &mut dyn FnMut(&[u8], &[u8])) {
        let buf = self.text.as_bytes();
        for h in &self.head.headers {
            f(h.name.of(buf), h.value.of(buf));
        }
    }

    fn host(&self) -> &str {
        self.host
    }
}

/// What the parser made of the buffered bytes.
#[derive(Debug)]
pub enum Parsed {
    /// A head this engine carries.
    Lean(RequestHead),
    /// Not complete yet: read more.
    Partial,
    /// Longer than [`MAX_HEAD`] or more than [`MAX_HEADERS`] lines (431).
    TooLarge,
    /// Refused before any phase: malformed, or framed more than one way.
    /// Nothing after it on the connection can be trusted.
    Refused(crate::error::GatewayError),
    /// Something Pingora's full HTTP stack handles (HTTP/1.0, chunked or
    /// large bodies, upgrades, `Expect`, CONNECT, targets other than a
    /// plain path or with bytes it percent-encodes, header values that are
    /// not UTF-8).
    Pingora,
}

/// Which bytes a request target's path and query may hold: those the
/// `http` crate's URI parser accepts (WHATWG path and query states, plus
/// `"`, `{`, `}` in paths and any byte of a UTF-8 sequence), so that the
/// lean engine takes exactly the targets Pingora's path would.
const PATH_BYTE: u8 = 1;
const QUERY_BYTE: u8 = 2;
const TARGET_BYTES: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        let path = matches!(b, 0x21 | 0x24..=0x3B | 0x3D | 0x40..=0x5F | 0x61..=0x7A | 0x7C | 0x7E | b'"' | b'{' | b'}' | 0x80..=0xFF);
        let query = matches!(b, 0x21 | 0x24..=0x3B | 0x3D | 0x3F..=0x7E | 0x80..=0xFF);
        t[i] = (path as u8 * PATH_BYTE) | (query as u8 * QUERY_BYTE);
        i += 1;
    }
    t
};

/// Split an origin-form target into path and query lengths; `None` for
/// anything else (absolute or asterisk form, a fragment, a byte a URI may
/// not hold) — Pingora judges those.
fn split_target(target: &[u8]) -> Option<(usize, Option<usize>)> {
    if target.first() != Some(&b'/') {
        return None;
    }
    let path_len = target
        .iter()
        .position(|&b| TARGET_BYTES[b as usize] & PATH_BYTE == 0)
        .unwrap_or(target.len());
    let rest = &target[path_len..];
    match rest.split_first() {
        None => Some((path_len, None)),
        Some((b'?', query))
            if query
                .iter()
                .all(|&b| TARGET_BYTES[b as usize] & QUERY_BYTE != 0) =>
        {
            Some((path_len, Some(query.len())))
        }
        Some(_) => None,
    }
}

/// Parse the request head at the start of `buf`. A lean head's header list
/// is `spare`'s (taken, cleared), so a connection reuses its memory.
pub fn parse_request(buf: &[u8], spare: &mut SpareHeaders) -> Parsed {
    let mut lines = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut lines) {
        Ok(httparse::Status::Complete(n)) if n <= MAX_HEAD => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Parsed::Partial,
        Ok(_) | Err(httparse::Error::TooManyHeaders) => return Parsed::TooLarge,
        // The start of an h2c preface, split by the network: the engine
        // looks for it once it has its first bytes.
        Err(_) if b"PRI * HTTP/2.0".starts_with(buf) => return Parsed::Partial,
        // A request line with bytes a target may not hold (clients do send
        // `?q={"a":1}` unencoded): Pingora's parser percent-encodes them,
        // and the encoded target is what is judged and forwarded.
        Err(httparse::Error::Token | httparse::Error::Version) => return Parsed::Pingora,
        Err(_) => return Parsed::Refused(crate::error::GatewayError::BadRequest),
    };
    if let Some(refused) = framing_refusal(req.headers) {
        return Parsed::Refused(refused);
    }
    if req.version != Some(1) {
        return Parsed::Pingora;
    }
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Parsed::Pingora;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::Pingora;
    };
    if method == Method::CONNECT {
        return Parsed::Pingora;
    }
    let Some((path_len, query_len)) = split_target(target.as_bytes()) else {
        // A fragment is no part of a request target (Pingora's parser
        // would drop it silently).
        if target.contains('#') {
            return Parsed::Refused(crate::error::GatewayError::BadPath);
        }
        return Parsed::Pingora;
    };
    let target_at = offset_in(buf, target.as_bytes());
    // Filled in place, so a head handed to Pingora leaves the memory where
    // the next head finds it.
    let headers = &mut spare.headers;
    headers.clear();
    let mut host = None;
    let mut content_length = None;
    let mut close = false;
    let (mut has_request_id, mut has_connection) = (false, false);
    for h in req.headers.iter() {
        let name_at = offset_in(buf, h.name.as_bytes());
        let name = Span::new(name_at, h.name.len());
        if name.end() > len {
            return Parsed::Pingora;
        }
        let value_at = offset_in(buf, h.value);
        let in_line =
            !h.value.is_empty() && value_at >= name.end() && value_at + h.value.len() <= len;
        let value = if in_line {
            Span::new(value_at, h.value.len())
        } else {
            Span::default()
        };
        if !in_line && !h.value.is_empty() {
            return Parsed::Pingora;
        }
        let kind = kind(h.name.as_bytes());
        match kind {
            // One plain length (checked by `framing_refusal`).
            Kind::ContentLength => content_length = parse_content_length(h.value),
            Kind::Unsupported => return Parsed::Pingora,
            Kind::RequestId => has_request_id = true,
            Kind::Host => host = host.or(Some(value)),
            Kind::Connection => {
                has_connection = true;
                for token in h.value.split(|b| *b == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case(b"upgrade") {
                        return Parsed::Pingora;
                    }
                }
            }
            _ => {}
        }
        headers.push(Header {
            name,
            value,
            kind,
            whole_line: in_line,
        });
    }
    let has_content_length = content_length.is_some();
    let content_length = content_length.unwrap_or(0);
    if content_length > MAX_BUFFERED_BODY {
        return Parsed::Pingora;
    }
    // One UTF-8 check of the whole head (fast over ASCII runs) instead of
    // one per part read as text. Header values with other bytes than
    // UTF-8 (obsolete text) are rare enough to leave to Pingora.
    let mut bytes = std::mem::take(&mut spare.text).into_bytes();
    bytes.clear();
    bytes.extend_from_slice(buf.get(..len).unwrap_or_default());
    let Ok(text) = String::from_utf8(bytes) else {
        return Parsed::Pingora;
    };
    let headers = std::mem::take(headers);
    Parsed::Lean(RequestHead {
        method,
        text,
        target_at,
        path_len,
        query_len,
        headers,
        host,
        len,
        content_length,
        has_content_length,
        close,
        has_request_id,
        has_connection,
    })
}

/// Whether the head's framing can be read more than one way (RFC 9112
/// §6.3), for every engine behind this one, since Pingora would settle
/// it silently: `Content-Length` beside `Transfer-Encoding`; a
/// `Transfer-Encoding` other than one `chunked`; a `Content-Length` that is
/// repeated (even with one value) or not plain digits.
fn framing_refusal(headers: &[httparse::Header<'_>]) -> Option<crate::error::GatewayError> {
    let (mut lengths, mut codings, mut plain) = (0u32, 0u32, true);
    for h in headers {
        match h.name.len() {
            14 if h.name.eq_ignore_ascii_case("content-length") => {
                lengths += 1;
                plain &= parse_content_length(h.value).is_some();
            }
            17 if h.name.eq_ignore_ascii_case("transfer-encoding") => {
                codings += 1;
                plain &= h.value.trim_ascii().eq_ignore_ascii_case(b"chunked");
            }
            _ => {}
        }
    }
    let reason = match (lengths, codings) {
        _ if lengths > 0 && codings > 0 => "it has both Content-Length and Transfer-Encoding",
        _ if lengths > 1 => "it has more than one Content-Length",
        _ if codings > 1 => "it has more than one Transfer-Encoding",
        _ if !plain => "its Content-Length or Transfer-Encoding is malformed",
        _ => return None,
    };
    Some(crate::error::GatewayError::AmbiguousRequest { reason })
}

/// Headers named as connection options in the request's `Connection`
/// (lowercase; `close` and `keep-alive` left out).
fn connection_options(req: &Request<'_>) -> Vec<String> {
    let mut options = Vec::new();
    for h in req
        .head
        .headers
        .iter()
        .filter(|h| h.kind == Kind::Connection)
    {
        crate::pipeline::head_rules::each_option(h.value.of(req.text.as_bytes()), &mut |o| {
            options.push(String::from_utf8_lossy(o).into_owned());
        });
    }
    options
}

/// Write the request head that goes upstream into `out`: the request line
/// (app prefix stripped and API-key query parameter removed when the app
/// says so), the client's end-to-end header lines as written minus the
/// API-key header, then `X-Request-Id` and the app's forwarding headers —
/// what `prepare_upstream_request` does for Pingora-carried requests.
pub fn write_upstream_head(out: &mut Vec<u8>, req: &Request<'_>, ctx: &RequestCtx, app: &App) {
    let head = req.head;
    let buf = req.text.as_bytes();
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    let path = if app.strip_prefix {
        crate::routing::strip_app_prefix(&app.path_prefix, req.path)
    } else {
        req.path
    };
    let key_param = app.auth.as_ref().and_then(|a| a.api_key_query.as_deref());
    match (req.query, key_param) {
        (Some(q), Some(k)) if crate::pipeline::upstream::names_param(q, k) => {
            out.extend_from_slice(
                crate::pipeline::upstream::path_without_param(path, q, k).as_bytes(),
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
    let x_forwarded = forwarded.style == ForwardedStyle::XForwarded;
    let key_header = app
        .auth
        .as_ref()
        .and_then(|a| a.api_key_header.as_ref())
        .map(|k| k.as_str().as_bytes());
    let options = if head.has_connection {
        connection_options(req)
    } else {
        Vec::new()
    };
    let mut previous_xff: Option<&[u8]> = None;
    let mut previous_forwarded: Option<&[u8]> = None;
    let mut run = Lines::default();
    for h in &head.headers {
        let name = h.name.of(buf);
        let value = h.value.of(buf);
        let keep = match h.kind {
            Kind::Host => true,
            // Framing is the gateway's own, written below from the parsed
            // length, never copied by name.
            Kind::HopByHop | Kind::Connection | Kind::Unsupported | Kind::ContentLength => false,
            _ if key_header.is_some_and(|k| name.eq_ignore_ascii_case(k))
                || options
                    .iter()
                    .any(|o| name.eq_ignore_ascii_case(o.as_bytes())) =>
            {
                false
            }
            Kind::RequestId => ctx.request_id_from_client,
            Kind::XForwardedFor if x_forwarded => {
                previous_xff = Some(value);
                false
            }
            Kind::XForwardedProto if x_forwarded => false,
            Kind::XForwardedHost if x_forwarded && forwarded.host => false,
            Kind::Forwarded if forwarded.style == ForwardedStyle::Rfc7239 => {
                previous_forwarded = Some(value);
                false
            }
            _ => true,
        };
        if !keep {
            continue;
        }
        if h.whole_line {
            run.keep(buf, out, h.name.start as usize, h.value.end());
        } else {
            run.flush(buf, out);
            push_header(out, name, value);
        }
    }
    run.flush(buf, out);
    if head.has_content_length || !req.body.is_empty() {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(req.body.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let host = || head.host.map(|_| req.host);
    if !ctx.request_id_from_client {
        push_header(out, b"x-request-id", ctx.request_id.as_bytes());
    }
    let client_ip = ctx.client_ip.as_str();
    match forwarded.style {
        ForwardedStyle::XForwarded => {
            if !client_ip.is_empty() {
                out.extend_from_slice(b"x-forwarded-for: ");
                if let Some(prev) = previous_xff.filter(|p| !p.is_empty()) {
                    out.extend_from_slice(prev);
                    out.extend_from_slice(b", ");
                }
                out.extend_from_slice(client_ip.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            push_header(out, b"x-forwarded-proto", b"http");
            if let Some(h) = host().filter(|_| forwarded.host) {
                push_header(out, b"x-forwarded-host", h.as_bytes());
            }
        }
        ForwardedStyle::Rfc7239 => {
            let mut element = String::with_capacity(64);
            if let Some(prev) = previous_forwarded
                .and_then(|p| std::str::from_utf8(p).ok())
                .filter(|p| !p.is_empty())
            {
                element.push_str(prev);
                element.push_str(", ");
            }
            crate::pipeline::upstream::forwarded_element(
                &mut element,
                client_ip,
                false,
                host().filter(|_| forwarded.host),
            );
            push_header(out, b"forwarded", element.as_bytes());
        }
        ForwardedStyle::None => {}
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::policy::{compile, SourceFile};
    use crate::runtime::Shared;

    fn lean(head: &[u8]) -> RequestHead {
        match parse_request(head, &mut SpareHeaders::default()) {
            Parsed::Lean(h) => h,
            other => panic!("expected a lean head, got {other:?}"),
        }
    }

    #[test]
    fn plain_heads_are_lean_and_everything_unusual_goes_to_pingora() {
        let buf = b"POST /a?b=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc";
        let head = lean(buf);
        assert_eq!(head.content_length, 3);
        assert_eq!(head.len, 52);
        let req = head.view(buf, head.path());
        assert_eq!((req.path(), req.query()), ("/a", Some("b=1")));
        assert!(!head.close);
        assert!(matches!(
            parse_request(
                b"GET / HTTP/1.1\r\nHost: x\r\n",
                &mut SpareHeaders::default()
            ),
            Parsed::Partial
        ));
        for pingora in [
            &b"GET / HTTP/1.0\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 999999\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\n\r\n",
            // Targets other than a plain path.
            b"GET http://x/a HTTP/1.1\r\nHost: x\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /a<b HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /a?b=\"c\" HTTP/1.1\r\nHost: x\r\n\r\n",
            // A header value that is not UTF-8 (obsolete text).
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Bin: \xff\xfe\r\n\r\n",
        ] {
            assert!(
                matches!(
                    parse_request(pingora, &mut SpareHeaders::default()),
                    Parsed::Pingora
                ),
                "{}",
                String::from_utf8_lossy(pingora)
            );
        }
        assert!(lean(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").close);
        // Framed two ways, malformed, or a fragment: refused here, before
        // Pingora's parser could settle it silently.
        for refused in [
            &b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
            b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\nx",
            b"POST / HTTP/1.1\r\nContent-Length: 0x1\r\n\r\nx",
            b"POST / HTTP/1.1\r\nContent-Length: \r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
            b"GET /a#f HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            assert!(
                matches!(
                    parse_request(refused, &mut SpareHeaders::default()),
                    Parsed::Refused(_)
                ),
                "{}",
                String::from_utf8_lossy(refused)
            );
        }
        assert!(matches!(
            parse_request(
                &[
                    b"GET / HTTP/1.1\r\nX: ".as_slice(),
                    &[b'a'; MAX_HEAD],
                    b"\r\n\r\n"
                ]
                .concat(),
                &mut SpareHeaders::default()
            ),
            Parsed::TooLarge
        ));
    }

    /// A connection's header list is reused: the next head holds only its
    /// own headers, and the list's memory is kept.
    #[test]
    fn a_reused_header_list_holds_only_the_new_heads_headers() {
        let mut spare = SpareHeaders::default();
        let first_buf = b"GET /a HTTP/1.1\r\nHost: x\r\nX-Api-Key: k1\r\nAccept: */*\r\n\r\n";
        let Parsed::Lean(first) = parse_request(first_buf, &mut spare) else {
            panic!("expected a lean head")
        };
        assert_eq!(first.headers.len(), 3);
        first.recycle(&mut spare);
        let kept = spare.headers.capacity();
        let second_buf = b"GET /b HTTP/1.1\r\nHost: y\r\n\r\n";
        let Parsed::Lean(second) = parse_request(second_buf, &mut spare) else {
            panic!("expected a lean head")
        };
        assert!(spare.headers.is_empty(), "the list moved into the head");
        let req = second.view(second_buf, second.path());
        assert_eq!(second.headers.len(), 1);
        assert_eq!(req.header("host"), Some(&b"y"[..]));
        assert_eq!(req.header("x-api-key"), None);
        assert!(second.headers.capacity() >= kept);
    }

    /// Headers are found by name in any case, all values in order; what
    /// the header loop notes agrees with what the head holds.
    #[test]
    fn the_view_finds_headers_in_any_case() {
        let buf = "GET /p/q?x=1&x=2 HTTP/1.1\r\nHOST: h.example\r\nX-Tag: a\r\nconnection: x-a\r\nx-tag: b\r\nX-REQUEST-ID: r1\r\nX-Empty:\r\nX-Utf: café\r\n\r\n".as_bytes();
        let head = lean(buf);
        assert!(head.has_connection && head.has_request_id);
        let req = head.view(buf, head.path());
        assert_eq!(req.method(), Method::GET);
        assert_eq!((req.path(), req.query()), ("/p/q", Some("x=1&x=2")));
        assert_eq!(req.host(), "h.example");
        assert_eq!(req.header_str("x-request-id"), Some("r1"));
        let mut tags = Vec::new();
        req.each_header("x-tag", &mut |v| tags.push(v.to_vec()));
        assert_eq!(tags, vec![b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(req.header("x-empty"), Some(&b""[..]));
        // UTF-8 but not ASCII: bytes, but no text (as `HeaderValue::to_str`).
        assert_eq!(req.header("x-utf"), Some("café".as_bytes()));
        assert_eq!(req.header_str("x-utf"), None);
        assert_eq!(req.header("x-tags"), None);
        let plain = lean(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(!plain.has_connection && !plain.has_request_id);
    }

    proptest! {
        /// The lean engine takes exactly the origin-form targets the `http`
        /// crate's URI parser takes without a fragment, split the same way.
        #[test]
        fn targets_split_as_the_http_crate_splits_them(rest in "[ -~é€]{0,24}") {
            let target = format!("/{rest}");
            let ours = split_target(target.as_bytes());
            match target.parse::<http::Uri>() {
                Ok(uri) if !target.contains('#') => {
                    let (path_len, query_len) = ours.expect("the http crate takes it");
                    prop_assert_eq!(&target[..path_len], uri.path());
                    prop_assert_eq!(
                        query_len.map(|q| &target[path_len + 1..path_len + 1 + q]),
                        uri.query()
                    );
                }
                _ => prop_assert_eq!(ours, None),
            }
        }
    }

    const APP: &str = r#"
version: 1
apps:
  - name: orders
    owner: o
    hosts: [orders.example]
    path_prefix: /api
    strip_prefix: true
    upstream: { instances: ["http://127.0.0.1:1"] }
    auth:
      mode: required
      api_key: { header: x-api-key }
    routes:
      - { id: get, method: GET, path: "/orders/{id}" }
"#;

    /// Kept lines go upstream as the client wrote them (case, spacing),
    /// around the dropped ones; the gateway's own headers follow.
    #[test]
    fn the_upstream_head_keeps_lines_as_written_around_dropped_ones() {
        let bundle = compile(&[SourceFile {
            path: "t.yaml".into(),
            text: APP.into(),
        }])
        .unwrap_or_else(|e| panic!("{e}"));
        let shared = Arc::new(Shared::new(bundle, "test".into(), None));
        let active = shared.active();
        let app = &active.bundle.apps[0];
        let mut ctx = RequestCtx::new(shared.enter());
        ctx.client_ip.push_str("10.0.0.7");
        ctx.request_id.push_str("rid-1");
        let buf = b"GET /api/orders/7?a=1 HTTP/1.1\r\nHost: orders.example\r\nX-Api-Key: secret\r\nAccept:  text/plain\r\nConnection: keep-alive, X-Hop\r\nx-hop: 1\r\nX-Forwarded-For: 1.2.3.4\r\nUser-Agent: t\r\nX-Empty:\r\n\r\n";
        let head = lean(buf);
        let mut out = Vec::new();
        write_upstream_head(&mut out, &head.view(buf, head.path()), &ctx, app);
        let text = String::from_utf8_lossy(&out);
        assert_eq!(
            text,
            "GET /orders/7?a=1 HTTP/1.1\r\nHost: orders.example\r\nAccept:  text/plain\r\nUser-Agent: t\r\nX-Empty: \r\nx-request-id: rid-1\r\nx-forwarded-for: 1.2.3.4, 10.0.0.7\r\nx-forwarded-proto: http\r\n\r\n"
        );
    }
}
