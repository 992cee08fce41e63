//! The rules every request head passes before any policy reads it, on
//! every engine: one `Host`, and no `Connection` option that would take a
//! header the gateway judged or relies on away from the app.
//!
//! A head that breaks them is ambiguous — the gateway and the app could
//! read it differently — and gets 400 rather than a guess.

use http::Version;

use super::view::RequestView;
use crate::error::GatewayError;
use crate::policy::{App, Balancing, Route};

/// Headers that no `Connection` option may name: the framing and routing
/// headers, the ones identity and the contract read, and the ones the
/// gateway writes for the app. Lowercase.
const PROTECTED: &[&str] = &[
    "authorization",
    "content-encoding",
    "content-length",
    "content-type",
    "cookie",
    "forwarded",
    "host",
    "traceparent",
    "tracestate",
    "transfer-encoding",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-api-key",
    "x-forwarded-proto",
    "x-real-ip",
    "x-request-id",
];

fn ambiguous(reason: &'static str) -> GatewayError {
    GatewayError::AmbiguousRequest { reason }
}

/// What the head rules saw that later rules need.
#[derive(Debug, Clone, Copy, Default)]
pub struct HeadFacts {
    /// The head's `Connection` names options besides `close` and
    /// `keep-alive`, which may name headers the app's policy reads
    /// ([`check_connection_for`]).
    pub connection: bool,
    /// A header name holds `_`, which servers that map names to variables
    /// (CGI, WSGI, PHP, Rails) read as `-` ([`check_judged_once`]).
    pub underscore: bool,
}

/// Fields the gateway reads or writes whatever the app: no header name
/// may stand for one of them by spelling `-` as `_`.
const READ_BY_THE_GATEWAY: &[&str] = &[
    "authorization",
    "content-length",
    "content-type",
    "forwarded",
    "host",
    "traceparent",
    "transfer-encoding",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
    "x-request-id",
];

/// Whether header name `name` (any case) reads as `field` (lowercase) once
/// `_` is taken for `-`, as CGI-style servers take it.
fn stands_for(name: &[u8], field: &str) -> bool {
    name.len() == field.len()
        && name
            .iter()
            .zip(field.bytes())
            .all(|(&a, b)| a.to_ascii_lowercase() == b || (a == b'_' && b == b'-'))
}

/// The rules that do not depend on the app, in one pass over the header
/// lines: a method in upper case (methods are case-sensitive: `get` is
/// not `GET` to routing but may be to an app); one framing (no
/// `Content-Length` beside `Transfer-Encoding`, which must be exactly
/// `chunked`, once, on HTTP/1.1; at most one `Content-Length`, of digits);
/// exactly one valid `Host` on HTTP/1.1 (or, without it, a target with an
/// authority, as HTTP/2 sends it), agreeing with the target's authority
/// when both are sent; no `Connection` option naming a `PROTECTED`
/// header.
pub fn check_head(req: &impl RequestView) -> Result<HeadFacts, GatewayError> {
    if req
        .method()
        .as_str()
        .bytes()
        .any(|b| b.is_ascii_lowercase())
    {
        return Err(ambiguous("its method is not in upper case"));
    }
    let (mut hosts, mut host_ok, mut lengths, mut length_ok) = (0u32, true, 0u32, true);
    let (mut codings, mut chunked, mut connection, mut protected) = (0u32, true, false, false);
    let (mut padded, mut underscore, mut alias) = (false, false, false);
    // Fields read once by the gateway whatever the app: a second line
    // would be read by the app, or by a policy, instead of the first.
    let (mut authorizations, mut content_types, mut request_ids, mut traceparents) =
        (0u32, 0u32, 0u32, 0u32);
    req.each_header_line(&mut |name, value| {
        // HTTP/1 parsers drop the white space around a value (RFC 9112
        // §5); on HTTP/2 a value with it is malformed (RFC 9113 §8.2.1),
        // and an app would read the value trimmed while a policy keyed on
        // the padding.
        padded |= matches!(value.first(), Some(b' ' | b'\t'))
            || matches!(value.last(), Some(b' ' | b'\t'));
        if name.contains(&b'_') {
            underscore = true;
            alias |= READ_BY_THE_GATEWAY.iter().any(|f| stands_for(name, f));
        }
        match name.len() {
            4 if name.eq_ignore_ascii_case(b"host") => {
                hosts += 1;
                host_ok &= valid_host(value);
            }
            10 if name.eq_ignore_ascii_case(b"connection") => {
                each_option(value, &mut |option| {
                    connection = true;
                    protected |= PROTECTED.iter().any(|p| p.as_bytes() == option);
                });
            }
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                lengths += 1;
                length_ok &= parse_content_length(value).is_some();
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                codings += 1;
                chunked &= value.trim_ascii().eq_ignore_ascii_case(b"chunked");
            }
            13 if name.eq_ignore_ascii_case(b"authorization") => authorizations += 1,
            12 if name.eq_ignore_ascii_case(b"content-type") => content_types += 1,
            12 if name.eq_ignore_ascii_case(b"x-request-id") => request_ids += 1,
            11 if name.eq_ignore_ascii_case(b"traceparent") => traceparents += 1,
            _ => {}
        }
    });
    if padded {
        return Err(ambiguous("a header value begins or ends with white space"));
    }
    if alias {
        return Err(ambiguous(
            "a header name with `_` stands for one the gateway reads or sets",
        ));
    }
    for (count, reason) in [
        (authorizations, "it repeats the Authorization header"),
        (content_types, "it repeats the Content-Type header"),
        (request_ids, "it repeats the X-Request-Id header"),
        (traceparents, "it repeats the traceparent header"),
    ] {
        if count > 1 {
            return Err(ambiguous(reason));
        }
    }
    if lengths > 1 || !length_ok {
        return Err(ambiguous("its Content-Length is repeated or not a number"));
    }
    if codings > 0 {
        if lengths > 0 {
            return Err(ambiguous(
                "it has both Content-Length and Transfer-Encoding",
            ));
        }
        if codings > 1 || !chunked || req.version() != Version::HTTP_11 {
            return Err(ambiguous(
                "its Transfer-Encoding is not a single `chunked` on HTTP/1.1",
            ));
        }
    }
    if hosts > 1 {
        return Err(ambiguous("it has more than one Host header"));
    }
    if !host_ok {
        return Err(ambiguous("its Host header is not a valid host[:port]"));
    }
    match (hosts, req.target_host()) {
        (0, None) if req.version() == Version::HTTP_11 => {
            return Err(ambiguous("an HTTP/1.1 request needs a Host header"));
        }
        (1, Some(authority)) if !same_host(req.header("host").unwrap_or_default(), authority) => {
            return Err(ambiguous(
                "its Host header and its target name different hosts",
            ));
        }
        _ => {}
    }
    if protected {
        return Err(ambiguous(
            "its Connection header names a header the gateway reads or sets",
        ));
    }
    Ok(HeadFacts {
        connection,
        underscore,
    })
}

/// Whether a `Host` value and a target's authority name the same host
/// (any case, ports and a trailing dot left out).
pub fn same_host(host: &[u8], authority: &str) -> bool {
    let host = crate::routing::normalize_host(std::str::from_utf8(host).unwrap_or(""));
    host.eq_ignore_ascii_case(&crate::routing::normalize_host(authority))
}

/// The rule that depends on the app and route: no `Connection` option
/// naming a header the app's policy reads (the API key header, the
/// balancing key, a limit's key, the operation's header parameters).
pub fn check_connection_for(
    req: &impl RequestView,
    app: &App,
    route: Option<&Route>,
) -> Result<(), GatewayError> {
    let mut refused = false;
    req.each_header("connection", &mut |value| {
        each_option(value, &mut |option| {
            refused |= judged_by(app, route, option);
        });
    });
    if refused {
        Err(ambiguous(
            "its Connection header names a header the app's policy reads",
        ))
    } else {
        Ok(())
    }
}

/// Whether the app's policy reads header `name` (lowercase).
fn judged_by(app: &App, route: Option<&Route>, name: &[u8]) -> bool {
    let mut judged = false;
    each_judged_header(app, &mut |h| judged |= h.as_str().as_bytes() == name);
    judged
        || route.and_then(|r| r.operation.as_ref()).is_some_and(|op| {
            op.params.iter().any(|p| {
                p.location == crate::contract::params::ParamIn::Header && p.name.as_bytes() == name
            })
        })
}

/// Call `f` with each header the app's policy reads on every route: the
/// API key header, the balancing key, the limits' keys.
fn each_judged_header(app: &App, f: &mut dyn FnMut(&http::HeaderName)) {
    if let Some(h) = app.auth.as_ref().and_then(|a| a.api_key_header.as_ref()) {
        f(h);
    }
    if let Balancing::ConsistentHash(h) = &app.upstream.balancing {
        f(h);
    }
    for l in &app.limits {
        if let crate::limits::LimitKey::Header(h) = &l.rule.key {
            f(h);
        }
    }
}

/// The rule that depends on the app: each header its policy reads on
/// every route (`each_judged_header`) comes at most once, so the value
/// judged is the only one the app can read, and no other name stands for
/// it with `_` for `-` (when `facts` saw a name with `_`). (Header
/// parameters of an operation are the contract's: a second value of a
/// scalar one is a violation.)
pub fn check_judged_once(
    req: &impl RequestView,
    app: &App,
    facts: HeadFacts,
) -> Result<(), GatewayError> {
    let (mut repeated, mut alias) = (false, false);
    each_judged_header(app, &mut |h| {
        let mut seen = 0u32;
        req.each_header(h.as_str(), &mut |_| seen += 1);
        repeated |= seen > 1;
        if facts.underscore {
            req.each_header_line(&mut |name, _| {
                alias |= name.contains(&b'_') && stands_for(name, h.as_str());
            });
        }
    });
    if repeated {
        Err(ambiguous("it repeats a header the app's policy reads"))
    } else if alias {
        Err(ambiguous(
            "a header name with `_` stands for one the app's policy reads",
        ))
    } else {
        Ok(())
    }
}

/// Call `f` with each option of a `Connection` value, in lowercase,
/// leaving out `close` and `keep-alive`.
pub fn each_option(value: &[u8], f: &mut dyn FnMut(&[u8])) {
    for token in value.split(|b| *b == b',') {
        let token = token.trim_ascii();
        if token.is_empty()
            || token.eq_ignore_ascii_case(b"close")
            || token.eq_ignore_ascii_case(b"keep-alive")
        {
            continue;
        }
        let mut lower = [0u8; 64];
        match lower.get_mut(..token.len()) {
            Some(out) => {
                out.copy_from_slice(token);
                out.make_ascii_lowercase();
                f(out);
            }
            // Rare: a token longer than the buffer.
            None => f(&token.to_ascii_lowercase()),
        }
    }
}

/// Which bytes a host name (no port, no IPv6 literal) holds.
const HOST_NAME: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
        i += 1;
    }
    t
};

/// `uri-host [":" port]` (RFC 9110 §7.2) with a registered name of letters,
/// digits, `-`, `.`, `_` and `~`, an IPv4 address, or an IPv6 literal in
/// brackets; the port, when there is a colon, one to five digits. Nothing
/// else (no user info, no path, no white space, no percent-encoding).
pub fn valid_host(value: &[u8]) -> bool {
    // The common case, a plain name, in one pass over a table.
    if !value.is_empty() && value.iter().all(|&b| HOST_NAME[usize::from(b)]) {
        return true;
    }
    let (host, port) = if value.first() == Some(&b'[') {
        let Some(end) = value.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = &value[1..end];
        if literal.is_empty()
            || !literal
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return false;
        }
        match &value[end + 1..] {
            [] => return true,
            [b':', port @ ..] => (&value[..=end], Some(port)),
            _ => return false,
        }
    } else {
        match value.iter().position(|&b| b == b':') {
            Some(colon) => (&value[..colon], Some(&value[colon + 1..])),
            None => (value, None),
        }
    };
    let name_ok = !host.is_empty()
        && (host.first() == Some(&b'[') || host.iter().all(|&b| HOST_NAME[usize::from(b)]));
    let port_ok =
        port.is_none_or(|p| (1..=5).contains(&p.len()) && p.iter().all(u8::is_ascii_digit));
    name_ok && port_ok
}

/// A `Content-Length` value: digits only (RFC 9110 §8.6; no sign, which
/// an upstream may read differently), at most 19 of them.
pub fn parse_content_length(value: &[u8]) -> Option<u64> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(head: &[(&str, &str)], target: &str) -> http::request::Parts {
        let mut b = http::Request::get(target);
        for (k, v) in head {
            b = b.header(*k, *v);
        }
        b.body(()).expect("a request").into_parts().0
    }

    #[test]
    fn hosts_are_plain_names_with_an_optional_port() {
        for good in [
            "conf.test",
            "conf.test:8080",
            "127.0.0.1",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:443",
            "a_b.internal",
            "x",
        ] {
            assert!(valid_host(good.as_bytes()), "{good}");
        }
        for bad in [
            "",
            "evil.test@x.conf.test",
            "conf.test/x",
            "conf.test:abc",
            "conf.test:",
            "conf.test:123456",
            "a b",
            "a,b",
            "conf%2etest",
            "[::1",
            "[::1]x",
            "[zz]",
            ":80",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn one_framing() {
        let ok = |h: &[(&str, &str)]| {
            let mut all = vec![("host", "a.test")];
            all.extend_from_slice(h);
            check_head(&parts(&all, "/")).is_ok()
        };
        assert!(ok(&[("content-length", "5")]));
        assert!(ok(&[("transfer-encoding", "chunked")]));
        assert!(ok(&[("transfer-encoding", "Chunked")]));
        assert!(!ok(&[
            ("content-length", "5"),
            ("transfer-encoding", "chunked")
        ]));
        assert!(!ok(&[("content-length", "5"), ("content-length", "5")]));
        assert!(!ok(&[("content-length", "5, 5")]));
        assert!(!ok(&[("content-length", "+5")]));
        assert!(!ok(&[("transfer-encoding", "gzip, chunked")]));
        assert!(!ok(&[
            ("transfer-encoding", "chunked"),
            ("transfer-encoding", "chunked")
        ]));
        assert!(!ok(&[("transfer-encoding", "xchunked")]));
        let mut lower = parts(&[("host", "a.test")], "/");
        lower.method = http::Method::from_bytes(b"get").expect("a token");
        assert!(check_head(&lower).is_err());
    }

    #[test]
    fn padded_values_and_repeated_judged_fields_are_refused() {
        let check = |h: &[(&str, &[u8])]| {
            let mut b = http::Request::get("/").header("host", "a.test");
            for (k, v) in h {
                b = b.header(*k, http::HeaderValue::from_bytes(v).expect("a value"));
            }
            check_head(&b.body(()).expect("a request").into_parts().0)
        };
        assert!(check(&[("x-tenant", b"acme")]).is_ok());
        assert!(check(&[("x-tenant", b"ac me")]).is_ok());
        assert!(check(&[("x-tenant", b"")]).is_ok());
        for padded in [&b" acme"[..], b"acme ", b"\tacme", b"  acme  ", b"acme\t"] {
            assert!(check(&[("x-tenant", padded)]).is_err(), "{padded:?}");
        }
        for field in [
            "authorization",
            "content-type",
            "x-request-id",
            "traceparent",
        ] {
            assert!(check(&[(field, b"a")]).is_ok(), "{field}");
            assert!(check(&[(field, b"a"), (field, b"a")]).is_err(), "{field}");
        }
        // Lists may repeat.
        assert!(check(&[("accept", b"a"), ("accept", b"b")]).is_ok());
    }

    #[test]
    fn one_host_or_an_authority() {
        assert!(check_head(&parts(&[("host", "a.test")], "/")).is_ok());
        assert!(check_head(&parts(&[("host", "a.test"), ("host", "b.test")], "/")).is_err());
        assert!(check_head(&parts(&[("host", "a.test"), ("host", "a.test")], "/")).is_err());
        assert!(check_head(&parts(&[], "/")).is_err());
        // HTTP/2 style: the authority alone.
        assert!(check_head(&parts(&[], "http://a.test/")).is_ok());
        assert!(check_head(&parts(&[("host", "A.test:80")], "http://a.test/")).is_ok());
        assert!(check_head(&parts(&[("host", "b.test")], "http://a.test/")).is_err());
        let mut old = parts(&[], "/");
        old.version = Version::HTTP_10;
        assert!(check_head(&old).is_ok());
    }

    #[test]
    fn connection_options_may_not_name_what_the_gateway_judged() {
        for refused in [
            "x-api-key",
            "content-length",
            "Content-Length",
            "close, Transfer-Encoding",
            "host",
            "x-request-id",
            "content-type",
            "authorization",
            "keep-alive, cookie",
        ] {
            let req = parts(&[("host", "a.test"), ("connection", refused)], "/");
            assert!(check_head(&req).is_err(), "{refused}");
        }
        for fine in [
            "close",
            "keep-alive",
            "te",
            "upgrade",
            "x-hop",
            "keep-alive, X-Hop",
        ] {
            let req = parts(&[("host", "a.test"), ("connection", fine)], "/");
            assert!(check_head(&req).is_ok(), "{fine}");
        }
    }
}
