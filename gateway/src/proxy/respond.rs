//! Writing gateway-generated responses and request ids.

use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};

use crate::ctx::RequestCtx;
use crate::error::GatewayError;
use crate::request::RequestView;

/// Count a refusal that is a contract violation (for `/metrics`).
pub fn count_refusal(err: &GatewayError) {
    if matches!(
        err,
        GatewayError::ContractViolation { .. }
            | GatewayError::MalformedJson { .. }
            | GatewayError::UnsupportedMediaType { .. }
    ) {
        crate::contract::count_violation("request");
    }
}

/// Set the request's id: a sane client-supplied `X-Request-Id`, else a new
/// UUIDv7. (The Pingora path also builds the header value once, from it.)
pub fn assign_request_id(req: &impl RequestView, ctx: &mut RequestCtx) {
    match client_request_id(req) {
        Some(id) => {
            ctx.request_id_from_client = true;
            ctx.request_id.push_str(id);
        }
        None => new_request_id_into(ctx),
    }
}

/// Set a new UUIDv7 as the request's id (the request has no `X-Request-Id`).
pub fn new_request_id_into(ctx: &mut RequestCtx) {
    let now = std::time::SystemTime::now();
    ctx.started_wall = Some(now);
    let mut text = uuid::Uuid::encode_buffer();
    ctx.request_id
        .push_str(new_request_id_at(now).hyphenated().encode_lower(&mut text));
}

/// A new UUIDv7 (RFC 9562 §5.7): Unix milliseconds, then 74 random bits.
///
/// `Uuid::now_v7` takes a process-wide lock to count within a millisecond;
/// ids made here are unique by their random bits and sort by millisecond,
/// which is what a request id needs, without the lock.
fn new_request_id() -> uuid::Uuid {
    new_request_id_at(std::time::SystemTime::now())
}

/// A new UUIDv7 stamped with `now`.
fn new_request_id_at(now: std::time::SystemTime) -> uuid::Uuid {
    let millis = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let random: [u8; 10] = rand::random();
    uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid()
}

/// A sane client-supplied `X-Request-Id` (printable ASCII, 1–200 bytes).
fn client_request_id(req: &impl RequestView) -> Option<&str> {
    let b = req.header("x-request-id")?;
    if !b.is_empty() && b.len() <= 200 && b.iter().all(|c| (0x21..0x7f).contains(c)) {
        std::str::from_utf8(b).ok()
    } else {
        None
    }
}

/// Keep a sane client-supplied `X-Request-Id`, else make a UUIDv7.
pub fn request_id(req: &impl RequestView) -> String {
    match client_request_id(req) {
        Some(id) => id.to_string(),
        None => new_request_id().to_string(),
    }
}

/// Record `err` as the request's outcome and fail the phase (rendered by `fail_to_proxy`).
pub fn fail<T>(ctx: &mut RequestCtx, err: GatewayError) -> Result<T> {
    let status = err.status();
    ctx.error = Some(err);
    let mut e = Error::explain(ErrorType::HTTPStatus(status), "gateway decision");
    e.set_retry(false);
    Err(e)
}

/// Headers the gateway adds to every upstream response it relays:
/// `X-Request-Id`, and `RateLimit-Policy` / `RateLimit` on limited routes.
/// One place for both paths (the Pingora proxy loop and the buffered forwarder).
pub fn add_gateway_headers(head: &mut ResponseHeader, ctx: &RequestCtx) -> Result<()> {
    match &ctx.request_id_header {
        Some(id) => head.insert_header("x-request-id", id.clone())?,
        None => head.insert_header("x-request-id", ctx.request_id.as_str())?,
    }
    if let Some((policy, state)) = &ctx.rate_headers {
        head.insert_header("ratelimit-policy", policy.as_str())?;
        head.insert_header("ratelimit", state.as_str())?;
    }
    Ok(())
}

/// Write an early problem response from `request_filter`; returns `Ok(true)`.
pub async fn respond(
    session: &mut Session,
    ctx: &mut RequestCtx,
    err: GatewayError,
) -> Result<bool> {
    if !session.is_body_done() {
        // The request body is not (fully) read: the connection cannot be reused.
        session.set_keepalive(None);
    }
    write_problem(session, ctx, &err).await?;
    count_refusal(&err);
    ctx.status = err.status();
    ctx.error = Some(err);
    Ok(true)
}

/// Write `err` as `application/problem+json`.
pub async fn write_problem(
    session: &mut Session,
    ctx: &RequestCtx,
    err: &GatewayError,
) -> Result<()> {
    let body = err.problem_json(&ctx.request_id, session.req_header().uri.path());
    let mut resp = ResponseHeader::build(err.status(), Some(6))?;
    resp.insert_header(http::header::CONTENT_TYPE, "application/problem+json")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    resp.insert_header("x-request-id", ctx.request_id.as_str())?;
    for (name, value) in problem_headers(err) {
        resp.insert_header(name, value)?;
    }
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// The headers a problem response carries for `err` besides its content
/// headers and the request id (`Allow`, `Accept`, `WWW-Authenticate`,
/// `Retry-After` and `RateLimit-*`).
pub fn problem_headers(err: &GatewayError) -> Vec<(http::HeaderName, String)> {
    use http::header;
    match err {
        GatewayError::MethodNotAllowed { allow } => vec![(header::ALLOW, allow.clone())],
        GatewayError::UnsupportedMediaType { expected } => {
            vec![(header::ACCEPT, expected.join(", "))]
        }
        GatewayError::Unauthenticated { challenge, .. } => {
            vec![(header::WWW_AUTHENTICATE, challenge.clone())]
        }
        GatewayError::RateLimited {
            retry_after,
            policy,
            state,
        } => vec![
            (header::RETRY_AFTER, retry_after.to_string()),
            (
                http::HeaderName::from_static("ratelimit-policy"),
                policy.clone(),
            ),
            (http::HeaderName::from_static("ratelimit"), state.clone()),
        ],
        _ => Vec::new(),
    }
}

/// The methods routes of `app` accept at `path`, for `Allow`.
pub fn allowed_methods(app: &crate::policy::App, path: &str) -> String {
    let sub = crate::routing::strip_app_prefix(&app.path_prefix, path);
    let folded;
    let sub = match app.case_insensitive_paths {
        true => {
            folded = crate::routing::case_insensitive_key(sub).unwrap_or_default();
            folded.as_str()
        }
        false => sub,
    };
    let mut methods: Vec<&str> = app
        .routes
        .iter()
        .filter(|r| r.template.matches(sub))
        .filter_map(|r| r.method.as_ref().map(|m| m.as_str()))
        .collect();
    if methods.contains(&"GET") {
        methods.push("HEAD");
    }
    methods.sort_unstable();
    methods.dedup();
    methods.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_uuid_v7_stamped_now_and_distinct() {
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        let ids: Vec<uuid::Uuid> = (0..1000).map(|_| new_request_id()).collect();
        let after = before + 60_000;
        let mut seen = std::collections::HashSet::new();
        for id in &ids {
            assert_eq!(id.get_version_num(), 7);
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
            let (secs, nanos) = id.get_timestamp().map(|t| t.to_unix()).unwrap_or_default();
            let millis = secs * 1000 + u64::from(nanos) / 1_000_000;
            assert!(
                (before..after).contains(&millis),
                "{millis} not in {before}..{after}"
            );
            assert!(seen.insert(*id), "{id} repeated");
        }
    }
}
