//! The buffered forwarder: sends a request whose body the gateway already
//! holds, and reads the whole response before the client sees any of it.
//!
//! Pingora's proxy loop can replay a buffered request body only up to 64 KiB
//! and streams responses through; two cases need more, and come here:
//! enforced request contracts with larger bodies (validated before the
//! upstream sees a byte), and enforced response contracts (a violating
//! response is replaced by a 502 problem). Instance choice, retries on
//! connect failure, timeouts and headers are the proxy loop's own
//! ([`crate::pipeline::upstream`]), so every path behaves alike.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use pingora::connectors::http::Connector;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

use super::peer::{prepare_upstream_request, select_peer, strip_hop_by_hop};
use super::respond::write_problem;
use crate::error::GatewayError;
use crate::pipeline::{self, upstream, RequestCtx};

/// How a forwarded exchange ended early.
enum Ended {
    /// The gateway's answer (or, once the response has begun, why it broke off).
    Refused(GatewayError),
    /// The client went away while its response was written.
    ClientGone(Box<pingora::Error>),
}

impl From<GatewayError> for Ended {
    fn from(err: GatewayError) -> Self {
        Self::Refused(err)
    }
}

/// Forward the request with `body`; answers the client (`Ok(true)`), or
/// says it went away (a downstream error, its exchange failed).
pub async fn forward(
    connector: &Connector,
    session: &mut Session,
    ctx: &mut RequestCtx,
    body: Bytes,
) -> Result<bool> {
    match exchange(connector, session, ctx, &body).await {
        Ok(()) => Ok(true),
        Err(Ended::ClientGone(e)) => Err(e.into_down()),
        Err(Ended::Refused(err)) => {
            let method = session.req_header().method.as_str().to_owned();
            if session.response_written().is_none() {
                session.set_keepalive(None);
                write_problem(session, ctx, &err)
                    .await
                    .map_err(|e| e.into_down())?;
                pipeline::refused(ctx, &method, err, None);
            } else {
                pipeline::failed_mid_response(ctx, &method, err);
            }
            Ok(true)
        }
    }
}

async fn exchange(
    connector: &Connector,
    session: &mut Session,
    ctx: &mut RequestCtx,
    body: &Bytes,
) -> Result<(), Ended> {
    let Some(cap) = ctx.app().map(|a| a.contract.max_response_body) else {
        return Err(GatewayError::Internal.into());
    };
    loop {
        if super::h2::client_reset(session, ctx) {
            // Nobody to answer: the app is not asked either.
            return Ok(());
        }
        upstream::wait_for_fence(ctx).await?;
        let peer = select_peer(session, ctx)?;
        let mut up = match connector.get_http_session(&*peer).await {
            Ok((s, reused)) => {
                upstream::connected(ctx, reused, Instant::now());
                s
            }
            Err(e) => {
                upstream::connect_failed(ctx, GatewayError::from_pingora(&e))?;
                continue;
            }
        };
        up.set_read_timeout(peer.options.read_timeout);
        up.set_write_timeout(peer.options.write_timeout);
        let mut req = session.req_header().clone();
        req.set_version(http::Version::HTTP_11);
        req.remove_header(&http::header::TRANSFER_ENCODING);
        if !body.is_empty() || req.headers.contains_key(http::header::CONTENT_LENGTH) {
            req.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())
                .map_err(|_| GatewayError::Internal)?;
        }
        strip_hop_by_hop(&mut req);
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
            // Nothing has gone to the client, and the whole body is here.
            let method = &session.req_header().method;
            upstream::exchange_failed(ctx, method, GatewayError::from_pingora(&e), true)?;
            continue;
        }
        let Some(mut head) = up.response_header().cloned() else {
            return Err(GatewayError::UpstreamFailed.into());
        };
        upstream::first_byte(ctx, head.status.as_u16(), Instant::now());
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
                Err(e) => return Err(GatewayError::from_pingora(&e).into()),
            }
            if upstream::deadline_passed(ctx) {
                return Err(GatewayError::UpstreamTimeout.into());
            }
        }
        if !overflow {
            // The whole response is read: the instance is free.
            upstream::finished(ctx, Instant::now());
            let judged =
                pipeline::judge_whole_response(ctx, head.status.as_u16(), &head.headers, &buf);
            if let Err(err) = judged {
                connector
                    .release_http_session(up, &*peer, peer.options.idle_timeout)
                    .await;
                return Err(err.into());
            }
        }
        write_response(
            session,
            ctx,
            &mut head,
            buf.freeze(),
            overflow.then_some(&mut up),
        )
        .await?;
        if overflow {
            upstream::finished(ctx, Instant::now());
        } else {
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
) -> Result<(), Ended> {
    let io = Ended::ClientGone;
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
                .map_err(|e| Ended::Refused(GatewayError::from_pingora(&e)))?
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
