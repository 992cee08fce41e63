//! The buffered forwarder: sends a request whose body the gateway already
//! holds, and reads the whole response before the client sees any of it.
//!
//! Pingora's proxy loop can replay a buffered request body only up to 64 KiB
//! and streams responses through; two cases need more, and come here:
//! enforced request contracts with larger bodies (validated before the
//! upstream sees a byte), and enforced response contracts (a violating
//! response is replaced by a 502 problem). Instance choice, retries on
//! connect failure, timeouts and headers are the proxy loop's own
//! ([`super::upstream`]), so both paths behave alike.

use bytes::{Bytes, BytesMut};
use pingora::connectors::http::Connector;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

use super::contract::{record, response_violations};
use super::respond::write_problem;
use super::upstream::{deadline_passed, on_connect_failure, prepare_upstream_request, select_peer};
use crate::contract::{Mode, Verdict};
use crate::ctx::RequestCtx;
use crate::error::GatewayError;

/// Forward the request with `body`; always answers the client (`Ok(true)`).
pub async fn forward(
    connector: &Connector,
    session: &mut Session,
    ctx: &mut RequestCtx,
    body: Bytes,
) -> Result<bool> {
    let outcome = exchange(connector, session, ctx, &body).await;
    match outcome {
        Ok(()) => Ok(true),
        Err(err) => {
            if session.response_written().is_none() {
                session.set_keepalive(None);
                write_problem(session, ctx, &err).await?;
            }
            ctx.status = err.status();
            ctx.error = Some(err);
            Ok(true)
        }
    }
}

async fn exchange(
    connector: &Connector,
    session: &mut Session,
    ctx: &mut RequestCtx,
    body: &Bytes,
) -> Result<(), GatewayError> {
    let (Some(active), Some(app_idx)) = (ctx.active.clone(), ctx.app) else {
        return Err(GatewayError::Internal);
    };
    let app = &active.bundle.apps[app_idx];
    let route = ctx.route.and_then(|r| app.routes.get(r));
    let idempotent = session.req_header().method.is_idempotent();
    loop {
        if super::h2::client_reset(session, ctx) {
            // Nobody to answer: the app is not asked either.
            return Ok(());
        }
        let peer = match select_peer(session, ctx) {
            Ok(p) => p,
            Err(_) => {
                return Err(ctx
                    .error
                    .take()
                    .unwrap_or(GatewayError::UpstreamUnreachable))
            }
        };
        let mut up = match connector.get_http_session(&*peer).await {
            Ok((s, _reused)) => s,
            Err(e) => {
                if on_connect_failure(ctx, GatewayError::from_pingora(&e)) {
                    continue;
                }
                return Err(ctx
                    .error
                    .take()
                    .unwrap_or(GatewayError::UpstreamUnreachable));
            }
        };
        if let Some(lease) = &ctx.lease {
            lease.instance().record_connect_success();
        }
        up.set_read_timeout(peer.options.read_timeout);
        up.set_write_timeout(peer.options.write_timeout);
        let mut req = session.req_header().clone();
        req.set_version(http::Version::HTTP_11);
        req.remove_header(&http::header::TRANSFER_ENCODING);
        if !body.is_empty() || req.headers.contains_key(http::header::CONTENT_LENGTH) {
            req.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())
                .map_err(|_| GatewayError::Internal)?;
        }
        super::upstream::strip_hop_by_hop(&mut req);
        prepare_upstream_request(session, &mut req, ctx).map_err(|_| GatewayError::Internal)?;
        let sent = async {
            up.write_request_header(Box::new(req)).await?;
            if !body.is_empty() {
                up.write_request_body(body.clone(), true).await?;
            }
            up.finish_request_body().await?;
            up.read_response_header().await
        }
        .await;
        if let Err(e) = sent {
            let err = GatewayError::from_pingora(&e);
            let retries = app.retries;
            let timed_out = err == GatewayError::UpstreamTimeout;
            if idempotent && !timed_out && ctx.attempts <= retries && !deadline_passed(ctx) {
                ctx.error = Some(err);
                continue;
            }
            return Err(err);
        }
        if let Some(t) = ctx.timings.attempt_start {
            ctx.timings.upstream_ttfb_us = crate::ctx::micros_since(t);
        }
        let Some(head) = up.response_header().cloned() else {
            return Err(GatewayError::UpstreamFailed);
        };
        let cap = app.contract.max_response_body;
        let mut buf = BytesMut::new();
        let mut overflow = false;
        while !overflow {
            match up.read_response_body().await {
                Ok(Some(chunk)) => {
                    if (buf.len() + chunk.len()) as u64 > cap {
                        overflow = true;
                    }
                    buf.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return Err(GatewayError::from_pingora(&e)),
            }
            if deadline_passed(ctx) {
                return Err(GatewayError::UpstreamTimeout);
            }
        }
        ctx.timings.upstream_end = Some(std::time::Instant::now());
        let mut head = head;
        if let (Some(route), false) = (route, overflow) {
            if let (Some(op), Mode::Enforce | Mode::Monitor) =
                (&route.operation, route.response_mode)
            {
                let (verdict, violations) = response_violations(
                    op,
                    head.status.as_u16(),
                    &head.headers,
                    Some(&buf),
                    app.contract.max_violations,
                );
                ctx.response_verdict = verdict;
                if verdict == Verdict::Invalid {
                    let count = violations.len();
                    for v in &violations {
                        super::failure_log::response_violation(ctx, &v.pointer, &v.keyword);
                    }
                    if route.response_mode == Mode::Enforce {
                        crate::contract::count_violation("response");
                        connector
                            .release_http_session(up, &*peer, peer.options.idle_timeout)
                            .await;
                        return Err(GatewayError::UpstreamContractViolation { count });
                    }
                    record(ctx, violations, "response");
                }
            }
        }
        if !overflow {
            // The whole response is read: the instance is free.
            ctx.lease = None;
        }
        write_response(
            session,
            ctx,
            &mut head,
            buf.freeze(),
            overflow.then_some(&mut up),
        )
        .await?;
        if !overflow {
            connector
                .release_http_session(up, &*peer, peer.options.idle_timeout)
                .await;
        }
        return Ok(());
    }
}

/// Send the response head and body to the client; with `rest`, stream the
/// remainder of an over-cap body after the buffered part.
async fn write_response(
    session: &mut Session,
    ctx: &mut RequestCtx,
    head: &mut ResponseHeader,
    buffered: Bytes,
    rest: Option<&mut pingora::protocols::http::client::HttpSession>,
) -> Result<(), GatewayError> {
    let io = |_| GatewayError::UpstreamFailed;
    super::respond::add_gateway_headers(head, ctx).map_err(|_| GatewayError::Internal)?;
    if rest.is_none() {
        head.remove_header(&http::header::TRANSFER_ENCODING);
        head.insert_header(http::header::CONTENT_LENGTH, buffered.len().to_string())
            .map_err(|_| GatewayError::Internal)?;
    }
    ctx.status = head.status.as_u16();
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(head.clone()), false)
        .await
        .map_err(io)?;
    if head_only {
        session.write_response_body(None, true).await.map_err(io)?;
        return Ok(());
    }
    match rest {
        None => session
            .write_response_body(Some(buffered), true)
            .await
            .map_err(io)?,
        Some(up) => {
            session
                .write_response_body(Some(buffered), false)
                .await
                .map_err(io)?;
            while let Some(chunk) = up
                .read_response_body()
                .await
                .map_err(|e| GatewayError::from_pingora(&e))?
            {
                session
                    .write_response_body(Some(chunk), false)
                    .await
                    .map_err(io)?;
            }
            session.write_response_body(None, true).await.map_err(io)?;
        }
    }
    Ok(())
}
