//! What Pingora's proxy loop and the buffered forwarder send upstream: the
//! peer for an attempt (the instance is the pipeline's choice), the
//! upstream request's headers, and the check of the response head.

use std::time::{Duration, Instant};

use pingora::http::RequestHeader;
use pingora::prelude::HttpPeer;
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};

use crate::error::GatewayError;
use crate::pipeline::upstream::{
    choose_instance, forwarded_element, names_param, path_without_param,
};
use crate::pipeline::RequestCtx;
use crate::policy::model::ForwardedStyle;
use crate::policy::Balancing;
use crate::routing;

/// Choose the instance for the next attempt ([`choose_instance`]) and
/// build its peer, with the app's timeouts cut to the time left.
pub fn select_peer(session: &Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>, GatewayError> {
    let hash_key = match ctx.app().map(|a| &a.upstream.balancing) {
        Some(Balancing::ConsistentHash(h)) => session.req_header().headers.get(h).cloned(),
        _ => None,
    };
    let chosen = choose_instance(ctx, hash_key.as_ref().map(|v| v.as_bytes()), Instant::now())?;
    let app = ctx.app().ok_or(GatewayError::Internal)?;
    let instance = &chosen.instance;
    let remaining = chosen.remaining;
    let mut peer = HttpPeer::new(chosen.socket, instance.addr.tls, instance.addr.host.clone());
    let t = &app.timeouts;
    peer.options.connection_timeout = Some(t.connect.min(remaining));
    peer.options.total_connection_timeout = Some(t.connect.min(remaining));
    peer.options.read_timeout = Some(t.read.min(remaining));
    peer.options.write_timeout = Some(t.read.min(remaining));
    peer.options.idle_timeout = Some(Duration::from_secs(60));
    // Pingora's proxy strips the hop-by-hop fields (those `Connection`
    // names too) before the app sees the request, and no upgrade: the same
    // rule `strip_hop_by_hop` applies where the gateway sends a request
    // itself.
    peer.options.http_upstream_request_policy =
        pingora::upstreams::peer::HttpUpstreamRequestPolicy::deny_upgrades();
    Ok(Box::new(peer))
}

/// Refuse (502) an upstream response head a client could read in more than
/// one way, or that answers what was not asked: a status outside
/// 100..=599, `101` to a request without `Upgrade`, a `Content-Length`
/// that is repeated or not a number. With `Transfer-Encoding`, the length
/// is dropped (RFC 9112 §6.3).
pub fn check_response_head(
    req: &RequestHeader,
    response: &mut pingora::http::ResponseHeader,
) -> Result<()> {
    let status = response.status.as_u16();
    let upgrade_asked = req.headers.contains_key(http::header::UPGRADE);
    let lengths = response.headers.get_all(http::header::CONTENT_LENGTH);
    let mut count = 0;
    let mut numeric = true;
    for v in lengths.iter() {
        count += 1;
        numeric &= crate::pipeline::head_rules::parse_content_length(v.as_bytes()).is_some();
    }
    let refuse = |why: &'static str| {
        Err(Error::create(
            ErrorType::InvalidHTTPHeader,
            pingora::ErrorSource::Upstream,
            Some(why.into()),
            None,
        ))
    };
    if !(100..=599).contains(&status) || (status == 101 && !upgrade_asked) {
        return refuse("an upstream status that was not asked for");
    }
    if (100..200).contains(&status) && status != 101 {
        // An interim response has no body: lengths on it mean nothing to
        // the client but a chance to read the stream two ways.
        response.remove_header(&http::header::CONTENT_LENGTH);
        response.remove_header(&http::header::TRANSFER_ENCODING);
        return Ok(());
    }
    if response
        .headers
        .contains_key(http::header::TRANSFER_ENCODING)
    {
        if count > 0 {
            response.remove_header(&http::header::CONTENT_LENGTH);
        }
    } else if count > 1 || !numeric {
        return refuse("an upstream Content-Length that is repeated or not a number");
    }
    Ok(())
}

/// The value of list header `name` with one more element written by `add`.
fn appended(upstream: &RequestHeader, name: &str, add: impl FnOnce(&mut String)) -> String {
    let mut out = String::with_capacity(64);
    if let Some(prev) = upstream
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|p| !p.is_empty())
    {
        out.push_str(prev);
        out.push_str(", ");
    }
    add(&mut out);
    out
}

/// Hop-by-hop fields (RFC 9110 §7.6.1) that are the client's connection's
/// and never the app's: the standard ones, and the ones `Connection` names
/// (which the head rules already kept from naming anything judged).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "http2-settings",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Remove the hop-by-hop fields from a request the gateway sends itself
/// (the buffered forwarder; Pingora's proxy applies the same rule through
/// the peer's request policy, `select_peer`). The gateway does not upgrade
/// connections: an `Upgrade` is dropped with the rest, so the app answers
/// the request as an ordinary one.
pub fn strip_hop_by_hop(upstream: &mut RequestHeader) {
    let mut named: Vec<String> = Vec::new();
    for value in upstream.headers.get_all(http::header::CONNECTION) {
        crate::pipeline::head_rules::each_option(value.as_bytes(), &mut |option| {
            if let Ok(name) = std::str::from_utf8(option) {
                named.push(name.to_owned());
            }
        });
    }
    for name in named
        .iter()
        .map(String::as_str)
        .chain(HOP_BY_HOP.iter().copied())
    {
        if upstream.headers.contains_key(name) {
            upstream.remove_header(name);
        }
    }
}

/// Add `X-Request-Id` and the app's forwarding headers (`X-Forwarded-*` or
/// RFC 7239 `Forwarded`), strip the app prefix if asked.
pub fn prepare_upstream_request(
    session: &Session,
    upstream: &mut RequestHeader,
    ctx: &RequestCtx,
) -> Result<()> {
    // Each insert re-parses the name and updates two maps in Pingora: insert
    // only what is new, with values built once.
    if !ctx.request_id_from_client {
        if let Some(id) = &ctx.request_id_header {
            upstream.insert_header("x-request-id", id.clone())?;
        }
    }
    let forwarded = ctx.app().map(|a| a.forwarded).unwrap_or_default();
    let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
    let client_ip = ctx.client_ip.as_str();
    let req = session.req_header();
    let host = req.headers.get(http::header::HOST).cloned().or_else(|| {
        req.uri
            .authority()
            .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok())
    });
    if let Some(host) = &host {
        // HTTP/2 clients send :authority, not Host: the app still gets one.
        if upstream.headers.get(http::header::HOST).is_none() {
            upstream.insert_header(http::header::HOST, host.clone())?;
        }
    }
    match forwarded.style {
        ForwardedStyle::XForwarded => {
            if !client_ip.is_empty() {
                let xff = appended(upstream, "x-forwarded-for", |out| out.push_str(client_ip));
                upstream.insert_header("x-forwarded-for", xff)?;
            }
            let proto = http::HeaderValue::from_static(if tls { "https" } else { "http" });
            upstream.insert_header("x-forwarded-proto", proto)?;
            if let (true, Some(host)) = (forwarded.host, host) {
                upstream.insert_header("x-forwarded-host", host)?;
            }
        }
        ForwardedStyle::Rfc7239 => {
            let host = host.as_ref().and_then(|h| h.to_str().ok());
            let element = appended(upstream, "forwarded", |out| {
                forwarded_element(out, client_ip, tls, host.filter(|_| forwarded.host));
            });
            upstream.insert_header("forwarded", element)?;
        }
        ForwardedStyle::None => {}
    }
    if let Some(auth) = ctx.app().and_then(|a| a.auth.as_ref()) {
        // Credentials for the gateway are not the app's business.
        if let Some(h) = &auth.api_key_header {
            upstream.remove_header(h);
        }
        if let Some(q) = &auth.api_key_query {
            if let Some(query) = upstream.uri.query().filter(|qs| names_param(qs, q)) {
                let pq = path_without_param(upstream.uri.path(), query, q);
                let uri = http::Uri::builder()
                    .path_and_query(pq)
                    .build()
                    .map_err(|_| Error::new_in(ErrorType::InternalError))?;
                upstream.set_uri(uri);
            }
        }
    }
    if let Some(app) = ctx.app() {
        if app.strip_prefix {
            let uri = &upstream.uri;
            let path = routing::strip_app_prefix(&app.path_prefix, uri.path());
            let pq = match uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path.to_string(),
            };
            let new_uri = http::Uri::builder()
                .path_and_query(pq)
                .build()
                .map_err(|_| Error::new_in(ErrorType::InternalError))?;
            upstream.set_uri(new_uri);
        }
    }
    Ok(())
}
