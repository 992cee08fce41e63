//! The engines: Pingora's proxy ([`Gateway`], its [`ProxyHttp`] phases,
//! for HTTP/2, TLS and what the lean loop hands over), the lean HTTP/1.1
//! loop ([`http1`]) and the plain listener's front ([`front`]). Each phase
//! here moves bytes and calls the [`crate::pipeline`] for every decision.
//!
//! | Pingora phase                   | pipeline phase it calls                                  |
//! |---------------------------------|----------------------------------------------------------|
//! | `new_ctx`                       | count the request in flight                              |
//! | `request_filter`                | id; canonical target; [`pipeline::route`]; [`pipeline::admit`]; request contract (`body.rs`); hand enforced-response and large enforced-body requests to the buffered forwarder (`forward.rs`) |
//! | `upstream_peer`                 | [`upstream::choose_instance`] (`peer.rs` builds the peer)  |
//! | `connected_to_upstream`         | [`upstream::connected`]                                  |
//! | `fail_to_connect`               | [`upstream::connect_failed`]                             |
//! | `error_while_proxy`             | [`upstream::exchange_failed`] (the retry rule)           |
//! | `upstream_request_filter`       | `X-Request-Id`, forwarding headers, prefix stripping     |
//! | `request_body_filter`           | body cap and deadline on streamed bodies; [`pipeline::finish_request_check`] |
//! | `upstream_response_filter`      | the response head's framing; [`upstream::first_byte`]   |
//! | `response_filter`               | `X-Request-Id`, `RateLimit-*`; [`pipeline::start_response_check`] |
//! | `response_body_filter`          | [`pipeline::finish_response_check`]                      |
//! | `upstream_response_body_filter` | [`upstream::finished`]; the deadline                     |
//! | `fail_to_proxy`                 | write the problem; [`pipeline::refused`]                 |
//! | `logging`                       | [`pipeline::wide_event()`], `try_send` to telemetry      |

mod body;
mod forward;
pub mod front;
pub mod h2;
pub mod http1;
mod peer;
mod respond;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, ProxyWarnLogContext, Session};
use pingora::{Error, ErrorType, Result};

use crate::error::GatewayError;
use crate::pipeline::{self, upstream, RequestCtx};
use crate::routing;
use crate::runtime::Shared;
use body::RequestCheck;
use respond::{respond, write_problem};

pub use body::REPLAY_LIMIT;

/// Make the request's target the one reading that every phase judges and
/// the app gets: the canonical path ([`routing::canonical_path`]) and the
/// query, in origin form on HTTP/1.x. An absolute-form target (`http` or
/// `https` only) names the host: a `Host` header must agree with it, and
/// one is written from it when there is none (HTTP/1.0 only). Refused: an
/// HTTP/1.x head larger than the lean engine reads ([`http1::MAX_HEAD`]
/// bytes or [`http1::MAX_HEADERS`] lines, 431), a target that is not
/// UTF-8 (the URI would only render it lossily), has a fragment, or is in
/// neither origin nor absolute form.
fn canonical_target(req: &mut RequestHeader) -> std::result::Result<(), GatewayError> {
    // HTTP/2 has its own limits, and splits `Cookie` into many fields.
    if req.version != http::Version::HTTP_2 {
        let mut head_len = req.raw_path().len() + 16;
        for (name, value) in req.headers.iter() {
            head_len += name.as_str().len() + value.len() + 4;
        }
        if head_len > http1::MAX_HEAD || req.headers.len() > http1::MAX_HEADERS {
            return Err(GatewayError::HeadTooLarge);
        }
    }
    if !req.raw_path_is_utf8() || req.raw_path().contains(&b'#') {
        return Err(GatewayError::BadPath);
    }
    let h1 = req.version != http::Version::HTTP_2;
    if !h1 {
        // `:path` is origin-form (RFC 9113 §8.3.1; `*` is for OPTIONS to
        // the server itself, which no app is).
        if !req.raw_path().starts_with(b"/") {
            return Err(GatewayError::BadRequest);
        }
        join_cookie_crumbs(req)?;
    }
    if h1 && !req.raw_path().starts_with(b"/") {
        // The URI holds only the path of an absolute-form target; the
        // target's own bytes hold its scheme and authority.
        let target = std::str::from_utf8(req.raw_path())
            .ok()
            .and_then(|t| t.parse::<http::Uri>().ok());
        let authority = target.and_then(|t| match t.scheme_str() {
            Some("http" | "https") => t.authority().cloned(),
            _ => None,
        });
        let Some(authority) = authority else {
            return Err(GatewayError::BadRequest);
        };
        let host = req.headers.get(http::header::HOST).map(|h| h.as_bytes());
        match host {
            Some(h) => {
                if !pipeline::head_rules::same_host(h, authority.as_str()) {
                    return Err(GatewayError::AmbiguousRequest {
                        reason: "its Host header and its target name different hosts",
                    });
                }
            }
            // HTTP/1.1 requires Host (RFC 9112 §3.2); HTTP/1.0 may leave
            // it to the target.
            None if req.version == http::Version::HTTP_11 => {
                return Err(GatewayError::AmbiguousRequest {
                    reason: "an HTTP/1.1 request needs a Host header",
                });
            }
            None => {
                let value = http::HeaderValue::from_str(authority.as_str())
                    .map_err(|_| GatewayError::BadRequest)?;
                req.insert_header(http::header::HOST, value)
                    .map_err(|_| GatewayError::BadRequest)?;
            }
        }
    }
    let path = routing::canonical_path(req.uri.path()).map_err(|_| GatewayError::BadPath)?;
    // What goes on the wire when the target is left alone.
    let wire = req.raw_path();
    let same = matches!(path, std::borrow::Cow::Borrowed(_))
        && (!h1 || {
            let (p, q) = (req.uri.path().as_bytes(), req.uri.query());
            wire.strip_prefix(p).is_some_and(|rest| match q {
                Some(q) => rest.first() == Some(&b'?') && &rest[1..] == q.as_bytes(),
                None => rest.is_empty(),
            })
        });
    if same {
        return Ok(());
    }
    let mut target = path.into_owned();
    if let Some(q) = req.uri.query() {
        target.push('?');
        target.push_str(q);
    }
    let mut uri = http::Uri::builder();
    if !h1 {
        if let (Some(scheme), Some(authority)) = (req.uri.scheme(), req.uri.authority()) {
            uri = uri.scheme(scheme.clone()).authority(authority.clone());
        }
    }
    let uri = uri
        .path_and_query(target)
        .build()
        .map_err(|_| GatewayError::BadPath)?;
    req.set_uri(uri);
    Ok(())
}

/// HTTP/2 may split `Cookie` into one field per crumb (RFC 9113 §8.2.3);
/// an HTTP/1.1 app reads one line, so the crumbs are joined with `; `
/// before any phase reads them.
fn join_cookie_crumbs(req: &mut RequestHeader) -> std::result::Result<(), GatewayError> {
    let mut crumbs = req.headers.get_all(http::header::COOKIE).iter();
    if crumbs.nth(1).is_none() {
        return Ok(());
    }
    let mut joined = Vec::with_capacity(256);
    for crumb in req.headers.get_all(http::header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(crumb.as_bytes());
    }
    let value = http::HeaderValue::from_bytes(&joined).map_err(|_| GatewayError::BadRequest)?;
    req.insert_header(http::header::COOKIE, value)
        .map_err(|_| GatewayError::BadRequest)
}

/// The Gatehouse proxy.
pub struct Gateway {
    shared: Arc<Shared>,
    connector: Connector,
    telemetry: Option<crate::telemetry::Telemetry>,
    instance: Arc<str>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").finish_non_exhaustive()
    }
}

impl Gateway {
    /// A proxy serving the policy in `shared`.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            connector: Connector::new(None),
            telemetry: None,
            instance: crate::telemetry::event::no_name(),
        }
    }

    /// Send one wide event per request to `telemetry`, tagged with `instance`.
    pub fn with_telemetry(
        mut self,
        telemetry: crate::telemetry::Telemetry,
        instance: String,
    ) -> Self {
        self.telemetry = Some(telemetry);
        self.instance = instance.into();
        self
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(self.shared.enter())
    }

    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {
        // No downstream modules: no compression pass on the hot path.
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        front::head_read();
        pipeline::request_id::assign_request_id(session.req_header(), ctx);
        ctx.request_id_header = http::HeaderValue::from_str(&ctx.request_id).ok();
        if let Some(addr) = session.client_addr().and_then(|a| a.as_inet()) {
            use std::fmt::Write as _;
            let _ = write!(ctx.client_ip, "{}", addr.ip());
        }
        if let Err(err) = canonical_target(session.req_header_mut()) {
            return respond(session, ctx, err).await;
        }
        let declared = session
            .req_header()
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let active = self.shared.active();
        let routed = pipeline::route(&active, session.req_header(), ctx)
            .and_then(|_| pipeline::check_declared_length(ctx, declared));
        if let Err(err) = routed {
            return respond(session, ctx, err).await;
        }
        if let Err(err) = pipeline::admit(session.req_header(), ctx) {
            return respond(session, ctx, err).await;
        }
        match body::check_request(session, ctx).await? {
            RequestCheck::Continue => {}
            RequestCheck::Responded => return Ok(true),
            RequestCheck::Forward(body) => {
                return forward::forward(&self.connector, session, ctx, body).await;
            }
        }

        // A chunked body is read now when the cap is small enough to replay,
        // so a body over the cap never reaches the upstream. So is an
        // HTTP/2 body small enough to replay: one that is not as long as
        // its `content-length` ends in an error here, before the app gets
        // a request it could take as complete (RFC 9113 §8.1.1).
        let h2 = session.req_header().version == http::Version::HTTP_2;
        if h2 && declared == Some(0) {
            h2::await_end_of_stream(session).await?;
        }
        let small = match declared {
            None => ctx.body_cap <= REPLAY_LIMIT as u64,
            Some(len) => h2 && len <= REPLAY_LIMIT as u64,
        };
        if small && !session.is_body_empty() && !session.is_body_done() {
            if body::read_body(session, ctx.body_cap).await?.is_none() {
                let limit = ctx.body_cap;
                return respond(session, ctx, GatewayError::BodyTooLarge { limit }).await;
            }
            ctx.body_bytes = 0; // counted again as the buffer is replayed upstream
        }
        // An HTTP/2 stream the client has reset by now is not sent on.
        Ok(h2::client_reset(session, ctx))
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        if h2::client_reset(session, ctx) {
            return Err(
                Error::explain(ErrorType::ConnectionClosed, "the client reset the stream")
                    .into_down(),
            );
        }
        if ctx.attempts > 0 {
            // A retry: Pingora replays the buffered body through
            // `request_body_filter` from its start.
            ctx.body_bytes = 0;
            if let Some(tee) = &mut ctx.request_tee {
                tee.restart();
            }
        }
        upstream::wait_for_fence(ctx)
            .await
            .map_err(GatewayError::into_pingora)?;
        peer::select_peer(session, ctx).map_err(GatewayError::into_pingora)
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        upstream::connected(ctx, reused, Instant::now());
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        peer::check_response_head(session.req_header(), response)?;
        upstream::first_byte(ctx, response.status.as_u16(), Instant::now());
        Ok(())
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        if let Some(t) = &self.telemetry {
            let exchange = pipeline::Exchange {
                status: session
                    .response_written()
                    .map_or(ctx.status, |r| r.status.as_u16()),
                failed: e.is_some(),
                bytes_in: session.body_bytes_read() as u64,
                bytes_out: session.body_bytes_sent() as u64,
                finished: Instant::now(),
            };
            t.record(pipeline::wide_event(
                session.req_header(),
                &exchange,
                ctx,
                &self.instance,
            ));
        }
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let retry = upstream::connect_failed(ctx, GatewayError::from_pingora(&e)).is_ok();
        e.set_retry(retry);
        e
    }

    fn error_while_proxy(
        &self,
        _peer: &HttpPeer,
        session: &mut Session,
        mut e: Box<Error>,
        ctx: &mut RequestCtx,
        _client_reused: bool,
    ) -> Box<Error> {
        // Replayable: the client is still there (not a reset HTTP/2
        // stream), the body is all in the retry buffer, and nothing of the
        // response has gone out.
        // A decision of the gateway's own (a body over the cap, too slow)
        // is the answer, never a reason to try another instance.
        let decided = e.root_cause().downcast_ref::<GatewayError>().is_some();
        let replayable = !decided
            && !matches!(e.esource(), pingora::ErrorSource::Downstream)
            && !session.as_ref().retry_buffer_truncated()
            && session.response_written().is_none();
        let method = &session.req_header().method;
        // Not retried, the failure is the answer: `fail_to_proxy` reads the
        // same classification from `e`.
        let err = GatewayError::of_pingora(&e);
        let retry = upstream::exchange_failed(ctx, method, err, replayable).is_ok();
        e.set_retry(retry);
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        peer::prepare_upstream_request(session, upstream, ctx)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // The whole body by the app's deadline, however slowly it comes.
        if !end_of_stream && upstream::deadline_passed(ctx) {
            return Err(GatewayError::RequestTimeout.into_pingora());
        }
        // While the client streams the body, the app cannot answer: the
        // request is not counted as waiting for it, nor its timeout
        // against it.
        if end_of_stream == ctx.body_streaming {
            ctx.body_streaming = !end_of_stream;
            if let Some(fenced) = &mut ctx.fence {
                if end_of_stream {
                    fenced.resume_waiting(crate::routing::now_ms());
                } else {
                    fenced.pause_waiting();
                }
            }
        }
        if let Some(b) = body {
            ctx.body_bytes += b.len() as u64;
            if ctx.body_bytes > ctx.body_cap {
                let limit = ctx.body_cap;
                return Err(GatewayError::BodyTooLarge { limit }.into_pingora());
            }
            if let Some(tee) = &mut ctx.request_tee {
                tee.push(b);
            }
        }
        if end_of_stream {
            pipeline::finish_request_check(ctx);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        respond::add_gateway_headers(response, ctx)?;
        pipeline::start_response_check(ctx, response.status.as_u16(), &response.headers);
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if let (Some(tee), Some(b)) = (&mut ctx.response_tee, body.as_ref()) {
            tee.push(b);
        }
        if end_of_stream {
            pipeline::finish_response_check(ctx);
        }
        Ok(None)
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if end_of_stream {
            upstream::finished(ctx, Instant::now());
        } else if upstream::deadline_passed(ctx) {
            let mut e = GatewayError::UpstreamTimeout.into_pingora();
            e.etype = ErrorType::ReadTimedout;
            return Err(e);
        }
        Ok(None)
    }

    /// Pingora's own line per failed request is replaced by
    /// [`pipeline::failure_log`]'s, which is rate-limited and leaves the
    /// query out.
    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, _error: &Error) -> bool {
        true
    }

    /// A failed attempt that is retried is not logged: the upstream's
    /// health counts it, and the request's final failure, if any, is
    /// logged by `fail_to_proxy`.
    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        _ctx: &RequestCtx,
        _error: &Error,
        _context: ProxyWarnLogContext,
    ) -> bool {
        true
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let mut err = GatewayError::of_pingora(e);
        if let GatewayError::BodyTooLarge { limit } = &mut err {
            *limit = ctx.body_cap;
        }
        if ctx.request_id.is_empty() {
            pipeline::request_id::assign_request_id(session.req_header(), ctx);
        }
        let downstream_gone = matches!(e.esource(), pingora::ErrorSource::Downstream)
            && matches!(
                e.etype(),
                ErrorType::ReadError
                    | ErrorType::WriteError
                    | ErrorType::ConnectionClosed
                    | ErrorType::H2Error
            );
        if downstream_gone {
            // Nobody to answer: the outcome is the client's leaving.
            h2::note_reset_in_flight(session, ctx);
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        let method = session.req_header().method.as_str();
        if session.response_written().is_some() {
            let status = err.status();
            pipeline::failed_mid_response(ctx, method, err);
            return FailToProxy {
                error_code: status,
                can_reuse_downstream: false,
            };
        }
        session.set_keepalive(None);
        if let Err(write_err) = write_problem(session, ctx, &err).await {
            tracing::debug!(request_id = %ctx.request_id, error = %write_err, "could not write the error response");
        }
        // A status the gateway chose itself says nothing beyond `err`.
        let cause =
            (!matches!(e.etype(), ErrorType::HTTPStatus(_))).then_some(e as &dyn std::fmt::Display);
        let status = err.status();
        pipeline::refused(ctx, session.req_header().method.as_str(), err, cause);
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }
}
