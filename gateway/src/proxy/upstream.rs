//! Choosing an instance and preparing what is sent to it; shared by the
//! Pingora proxy loop and the buffered forwarder.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pingora::http::RequestHeader;
use pingora::prelude::HttpPeer;
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};

use super::respond::fail;
use crate::ctx::RequestCtx;
use crate::error::GatewayError;
use crate::policy::model::ForwardedStyle;
use crate::policy::Balancing;
use crate::routing::{self, ms_at, now_ms, InstanceLease, Pick};
use std::fmt::Write as _;

/// Pick an instance for the next attempt and build its peer. On failure the
/// reason is in `ctx.error`.
pub fn select_peer(session: &Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
    let hash_key = match ctx.app().map(|a| &a.upstream.balancing) {
        Some(Balancing::ConsistentHash(h)) => session.req_header().headers.get(h).cloned(),
        _ => None,
    };
    let (instance, socket, remaining) =
        match choose_instance(ctx, hash_key.as_ref().map(|v| v.as_bytes()), Instant::now()) {
            Ok(chosen) => chosen,
            Err(err) => return fail(ctx, err),
        };
    let Some(app) = ctx.app() else {
        return fail(ctx, GatewayError::Internal);
    };
    let mut peer = HttpPeer::new(socket, instance.addr.tls, instance.addr.host.clone());
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
    ctx.lease = Some(InstanceLease::new(instance));
    Ok(Box::new(peer))
}

/// Append one RFC 7239 `Forwarded` element for this hop to `out`.
pub fn forwarded_element(out: &mut String, client_ip: &str, tls: bool, host: Option<&str>) {
    match client_ip {
        "" => out.push_str("for=unknown"),
        ip if ip.contains(':') => {
            let _ = write!(out, "for=\"[{ip}]\"");
        }
        ip => {
            let _ = write!(out, "for={ip}");
        }
    }
    out.push_str(if tls { ";proto=https" } else { ";proto=http" });
    if let Some(h) = host {
        let _ = write!(out, ";host=\"{h}\"");
    }
}

/// Whether `query` holds a parameter named `name` as identity reads it
/// (names percent-decoded, `api%5Fkey` is `api_key`), so that
/// [`path_without_param`] rebuilds the query only when it removes one.
pub fn names_param(query: &str, name: &str) -> bool {
    let spelled = query.contains(name) || query.contains('%') || query.contains('+');
    spelled
        && query.split('&').any(|p| {
            let key = p.split('=').next().unwrap_or("");
            crate::contract::params::percent_decode(key, true) == name
        })
}

/// Whether a parameter of `query` other than `name` itself reads as `name`
/// on servers that fold parameter names (PHP takes `.`, ` ` and `[` for
/// `_`): the gateway would judge one and forward the other.
pub fn aliases_param(query: &str, name: &str) -> bool {
    let folded = |c: char| if matches!(c, '.' | ' ' | '[') { '_' } else { c };
    let target: String = name.chars().map(folded).collect();
    query.split('&').any(|p| {
        let key = crate::contract::params::percent_decode(p.split('=').next().unwrap_or(""), true);
        key != name && key.chars().map(folded).eq(target.chars())
    })
}

/// `path?query` without the query parameter `name` (the API key), every
/// occurrence, its name read percent-decoded as identity reads it.
pub fn path_without_param(path: &str, query: &str, name: &str) -> String {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| {
            p.split('=')
                .next()
                .map(|k| crate::contract::params::percent_decode(k, true))
                != Some(name.into())
        })
        .collect();
    if kept.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", kept.join("&"))
    }
}

/// Pick the instance for the next attempt (balancing, health, ejection,
/// instances already tried): the instance, its socket address and the time
/// left before the app's total deadline. Records the attempt, started at
/// `now`, in `ctx`; the caller takes the lease.
pub fn choose_instance(
    ctx: &mut RequestCtx,
    hash_key: Option<&[u8]>,
    now: Instant,
) -> Result<
    (
        Arc<crate::routing::Instance>,
        std::net::SocketAddr,
        Duration,
    ),
    GatewayError,
> {
    let (Some(active), Some(app_idx)) = (ctx.active.clone(), ctx.app) else {
        return Err(GatewayError::Internal);
    };
    let app = &active.bundle.apps[app_idx];
    let remaining = ctx
        .deadline
        .map_or(app.timeouts.total, |d| d.saturating_duration_since(now));
    if remaining.is_zero() {
        return Err(GatewayError::UpstreamTimeout);
    }
    let group = &active.upstreams.groups[app_idx];
    let idx = match group.pick(ctx.tried, hash_key, ms_at(now)) {
        Pick::Instance(i) => i,
        Pick::NoneAvailable if ctx.attempts == 0 => return Err(GatewayError::NoHealthyInstance),
        Pick::NoneAvailable | Pick::Exhausted => {
            return Err(ctx
                .error
                .take()
                .unwrap_or(GatewayError::UpstreamUnreachable));
        }
    };
    ctx.error = None;
    ctx.tried |= 1 << idx;
    ctx.attempts += 1;
    let instance = Arc::clone(&group.instances[idx]);
    ctx.timings.upstream_start.get_or_insert(now);
    ctx.timings.attempt_start = Some(now);
    ctx.last_instance = Some(Arc::clone(&instance));
    match instance.socket {
        Some(socket) => Ok((instance, socket, remaining)),
        None => Err(GatewayError::UpstreamUnreachable),
    }
}

/// A connection attempt failed: count it (passive ejection) and say whether
/// to try another instance. Nothing reached the upstream, so any method may.
pub fn on_connect_failure(ctx: &mut RequestCtx, err: GatewayError) -> bool {
    let Some(app) = ctx.app() else { return false };
    let (ejection, retries, name) = (app.upstream.ejection.clone(), app.retries, app.name.clone());
    if let Some(lease) = ctx.lease.take() {
        let inst = lease.instance();
        if inst.record_connect_failure(&ejection, now_ms()) {
            tracing::warn!(app = %name, instance = %inst.addr.url, for_ms = ejection.duration.as_millis() as u64,
                "instance ejected after consecutive connect failures");
        }
    }
    ctx.error = Some(err);
    ctx.attempts <= retries && !deadline_passed(ctx)
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
        numeric &= super::http1::parse_content_length(v.as_bytes()).is_some();
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

/// Has the app's total timeout run out?
pub fn deadline_passed(ctx: &RequestCtx) -> bool {
    ctx.deadline.is_some_and(|d| Instant::now() >= d)
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
        super::head_rules::each_option(value.as_bytes(), &mut |option| {
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
