//! Writing gateway-generated responses on a Pingora session.

use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

use crate::error::GatewayError;
use crate::pipeline::{self, RequestCtx};

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
    // A problem that cannot be written: the client has gone.
    write_problem(session, ctx, &err)
        .await
        .map_err(|e| e.into_down())?;
    pipeline::refused(ctx, session.req_header().method.as_str(), err, None);
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
    for (name, value) in err.problem_headers() {
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

/// Connections over the cap answered at once; more are closed unanswered.
const MAX_REFUSING: usize = 64;

/// Answer a client connection over the gateway's cap (`crate::capacity`):
/// `503 overloaded`, after up to 100 ms for its request head so that the
/// answer is not lost to a reset, then close it. A TLS connection is closed
/// without an answer (it may speak HTTP/2), and so is any connection while
/// [`MAX_REFUSING`] others are being answered (a flood at the cap must not
/// hold descriptors the cap does not count).
pub async fn refuse_connection(mut stream: pingora::protocols::Stream) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    static REFUSING: AtomicUsize = AtomicUsize::new(0);
    struct Refusing;
    impl Drop for Refusing {
        fn drop(&mut self) {
            REFUSING.fetch_sub(1, Ordering::Relaxed);
        }
    }
    if stream.get_ssl_digest().is_some() {
        return;
    }
    if REFUSING.fetch_add(1, Ordering::Relaxed) >= MAX_REFUSING {
        REFUSING.fetch_sub(1, Ordering::Relaxed);
        return;
    }
    let _refusing = Refusing;
    let mut head = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(100), stream.read(&mut head)).await;
    let id = crate::pipeline::request_id::new_request_id().to_string();
    let body = GatewayError::Overloaded.problem_json(&id, "/");
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\nretry-after: 1\r\ncache-control: no-store\r\nx-request-id: {}\r\nconnection: close\r\n\r\n",
        body.len(),
        id
    );
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body).await?;
        stream.shutdown().await
    })
    .await;
}
