//! Request bodies on Pingora's proxy: reading one whole for the contract
//! (Pingora replays it upstream), and the contract phase as
//! `request_filter` runs it. The phase's logic is the pipeline's
//! ([`crate::pipeline::contract`]).

use bytes::{Bytes, BytesMut};
use pingora::proxy::Session;
use pingora::Result;

use super::respond::respond;
use crate::error::GatewayError;
use crate::pipeline::{self, RequestCtx};

/// Pingora replays a request body it buffered only up to this size.
pub const REPLAY_LIMIT: usize = 64 * 1024;

/// What `request_filter` does after the contract check.
#[derive(Debug)]
pub enum RequestCheck {
    /// Let Pingora proxy the request (the body, if read, is replayed).
    Continue,
    /// A response was written.
    Responded,
    /// Forward with this complete body through the buffered forwarder.
    Forward(Bytes),
}

/// Read the whole request body, keeping it for Pingora's replay; `None`
/// when it is longer than `limit`.
pub async fn read_body(session: &mut Session, limit: u64) -> Result<Option<Bytes>> {
    session.enable_retry_buffering();
    let mut buf = BytesMut::new();
    while let Some(chunk) = session.read_request_body().await? {
        if (buf.len() + chunk.len()) as u64 > limit {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Some(buf.freeze()))
}

/// The request contract phase ([`pipeline::plan_request`], then
/// [`pipeline::judge_request`]) on a Pingora session. In enforce mode a
/// violating request is answered here, before any byte reaches the
/// upstream; the body is read first when the plan needs it whole.
pub async fn check_request(session: &mut Session, ctx: &mut RequestCtx) -> Result<RequestCheck> {
    let has_body = !session.is_body_empty();
    let plan = match pipeline::plan_request(session.req_header(), has_body, ctx) {
        Ok(Some(plan)) => plan,
        Ok(None) => return Ok(RequestCheck::Continue),
        Err(err) => {
            respond(session, ctx, err).await?;
            return Ok(RequestCheck::Responded);
        }
    };
    let enforce_response = plan.enforces_response();
    // Read the body now when it must be judged before the upstream sees it,
    // or when the response is enforced (the forwarder sends it itself).
    let mut body_bytes = None;
    if plan.read_body {
        match read_body(session, plan.body_limit).await? {
            Some(b) => body_bytes = Some(b),
            None => {
                let limit = plan.body_limit;
                respond(session, ctx, GatewayError::BodyTooLarge { limit }).await?;
                return Ok(RequestCheck::Responded);
            }
        }
    }
    if let Err(err) = pipeline::judge_request(plan, body_bytes.as_deref(), ctx) {
        respond(session, ctx, err).await?;
        return Ok(RequestCheck::Responded);
    }
    Ok(match body_bytes {
        Some(b) if enforce_response || b.len() > REPLAY_LIMIT => RequestCheck::Forward(b),
        None if enforce_response => RequestCheck::Forward(Bytes::new()),
        _ => RequestCheck::Continue,
    })
}
