//! The data plane: Gatehouse's [`ProxyHttp`] implementation.
//!
//! Phase chart (each phase does one thing and delegates the logic):
//!
//! | phase                      | what Gatehouse does                                          |
//! |----------------------------|--------------------------------------------------------------|
//! | `new_ctx`                  | count the request in flight                                   |
//! | `request_filter`           | request id; take the bundle once; path safety; route (404/405); body cap (413); identity (401/403) and limits (429) ([`access`]); request contract ([`contract`]); hand enforced-response and large enforced-body requests to the [`forward`]er |
//! | `upstream_peer`            | pick an instance (balancing, health, ejection; 503 when none) |
//! | `connected_to_upstream`    | reset the instance's connect-failure streak                   |
//! | `fail_to_connect`          | count the failure (passive ejection); retry on another instance |
//! | `error_while_proxy`        | retry idempotent requests that got no response yet            |
//! | `upstream_request_filter`  | `X-Request-Id`, `X-Forwarded-*`, prefix stripping             |
//! | `request_body_filter`      | body cap on streamed bodies; monitor-mode request contract    |
//! | `response_filter`          | `X-Request-Id`; monitor-mode response contract (head)         |
//! | `response_body_filter`     | monitor-mode response contract (body)                         |
//! | `upstream_response_body_filter` | the app's total timeout                                 |
//! | `fail_to_proxy`            | render the error as `application/problem+json` ([`GatewayError`]); log 5xx at a bounded rate ([`failure_log`]) |
//! | `logging`                  | build the wide event and `try_send` it to telemetry ([`log`]) |

mod access;
mod contract;
pub mod failure_log;
mod forward;
pub mod front;
pub mod h2;
pub(crate) mod head_rules;
pub mod http1;
mod log;
mod respond;
mod upstream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, ProxyWarnLogContext, Session};
use pingora::{Error, ErrorType, Result};

use crate::contract::Mode;
use crate::ctx::RequestCtx;
use crate::error::GatewayError;
use crate::request::RequestView;
use crate::routing::{self, RouteMatch};
use crate::runtime::Shared;
use contract::RequestCheck;
use respond::{allowed_methods, request_id, respond, write_problem};

pub use contract::REPLAY_LIMIT;

/// The head rules ([`head_rules`]) and the route match for a request head
/// whose path the engine has made canonical ([`routing::canonical_path`]):
/// the app and route (`None`: a passthrough app), or the refusal with the
/// app it concerns. Shared by every engine.
fn route_request(
    active: &crate::runtime::Active,
    req: &impl RequestView,
) -> std::result::Result<(usize, Option<usize>), (Option<usize>, GatewayError)> {
    let facts = head_rules::check_head(req).map_err(|e| (None, e))?;
    let path = req.path();
    // Every engine forwards the path routing sees, made canonical first
    // (the conformance suite holds both engines to it).
    debug_assert!(matches!(
        routing::canonical_path(path),
        Ok(std::borrow::Cow::Borrowed(_))
    ));
    let apps = &active.bundle.apps;
    let judged = |app: usize, route: Option<usize>| {
        let a = &apps[app];
        head_rules::check_judged_once(req, a, facts).map_err(|e| (Some(app), e))?;
        if facts.connection {
            head_rules::check_connection_for(req, a, route.map(|r| &a.routes[r]))
                .map_err(|e| (Some(app), e))?;
        }
        Ok((app, route))
    };
    match active
        .bundle
        .router
        .route(apps, req.host(), req.method(), path)
    {
        RouteMatch::Route { app, route } => judged(app, Some(route)),
        RouteMatch::Passthrough { app } => judged(app, None),
        RouteMatch::MethodNotAllowed { app } => {
            let allow = allowed_methods(&active.bundle.apps[app], path);
            Err((Some(app), GatewayError::MethodNotAllowed { allow }))
        }
        RouteMatch::NoRoute { app } => Err((Some(app), GatewayError::NoRoute)),
        RouteMatch::BadPath { app } => Err((Some(app), GatewayError::BadPath)),
        RouteMatch::NoApp => Err((None, GatewayError::NoApp)),
    }
}

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
                if !head_rules::same_host(h, authority.as_str()) {
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
        respond::assign_request_id(session.req_header(), ctx);
        ctx.request_id_header = http::HeaderValue::from_str(&ctx.request_id).ok();
        if let Some(addr) = session.client_addr().and_then(|a| a.as_inet()) {
            use std::fmt::Write as _;
            let _ = write!(ctx.client_ip, "{}", addr.ip());
        }
        if let Err(err) = canonical_target(session.req_header_mut()) {
            return respond(session, ctx, err).await;
        }
        let active = self.shared.active();
        let (app_idx, route_idx) = match route_request(&active, session.req_header()) {
            Ok(found) => found,
            Err((app, err)) => {
                if app.is_some() {
                    ctx.app = app;
                    ctx.active = Some(active);
                }
                return respond(session, ctx, err).await;
            }
        };
        let app = &active.bundle.apps[app_idx];
        ctx.body_cap = route_idx.map_or(app.max_request_body, |r| app.routes[r].max_request_body);
        ctx.deadline = Some(Instant::now() + app.timeouts.total);
        ctx.app = Some(app_idx);
        ctx.route = route_idx;
        ctx.active = Some(Arc::clone(&active));

        let declared = session
            .req_header()
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > ctx.body_cap) {
            let limit = ctx.body_cap;
            return respond(session, ctx, GatewayError::BodyTooLarge { limit }).await;
        }

        if access::check(
            session,
            ctx,
            &active,
            app,
            route_idx.map(|r| &app.routes[r]),
        )
        .await?
        {
            return Ok(true);
        }

        if let Some(route) = route_idx.map(|r| &app.routes[r]) {
            if let Some(op) = &route.operation {
                let started = Instant::now();
                let checked = contract::check_request(session, ctx, app, route, op).await;
                ctx.timings.request_validation_us = crate::ctx::micros_since(started);
                match checked? {
                    RequestCheck::Continue => {}
                    RequestCheck::Responded => return Ok(true),
                    RequestCheck::Forward(body) => {
                        return forward::forward(&self.connector, session, ctx, body).await;
                    }
                }
            }
        } else if app.contract.undocumented == crate::contract::Undocumented::Monitor
            && app.contract.openapi.is_some()
        {
            contract::record_undocumented(ctx);
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
            if contract::read_body(session, ctx.body_cap).await?.is_none() {
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
        upstream::select_peer(session, ctx)
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
        if let Some(lease) = &ctx.lease {
            lease.instance().record_connect_success();
        }
        ctx.timings.upstream_connect_us = match (reused, ctx.timings.attempt_start) {
            (false, Some(t)) => crate::ctx::micros_since(t),
            _ => 0,
        };
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Err(e) = upstream::check_response_head(session.req_header(), response) {
            ctx.error = Some(GatewayError::UpstreamFailed);
            return Err(e);
        }
        if let Some(t) = ctx.timings.attempt_start {
            ctx.timings.upstream_ttfb_us =
                crate::ctx::micros_since(t).saturating_sub(ctx.timings.upstream_connect_us);
        }
        Ok(())
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        if let Some(t) = &self.telemetry {
            t.record(log::event(session, e, ctx, &self.instance));
        }
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let retry = upstream::on_connect_failure(ctx, GatewayError::from_pingora(&e));
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
        let retries = ctx.app().map_or(0, |a| a.retries);
        let timed_out = matches!(
            e.etype(),
            ErrorType::ReadTimedout | ErrorType::WriteTimedout
        );
        // Never again for a client that has gone (a reset HTTP/2 stream).
        let retry = session.req_header().method.is_idempotent()
            && !matches!(e.esource(), pingora::ErrorSource::Downstream)
            && !session.as_ref().retry_buffer_truncated()
            && session.response_written().is_none()
            && !timed_out
            && ctx.attempts <= retries
            && !upstream::deadline_passed(ctx);
        ctx.error = Some(GatewayError::from_pingora(&e));
        e.set_retry(retry);
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        upstream::prepare_upstream_request(session, upstream, ctx)
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
            ctx.error = Some(GatewayError::RequestTimeout);
            return Error::e_explain(ErrorType::HTTPStatus(408), "request body too slow");
        }
        if let Some(b) = body {
            ctx.body_bytes += b.len() as u64;
            if ctx.body_bytes > ctx.body_cap {
                ctx.error = Some(GatewayError::BodyTooLarge {
                    limit: ctx.body_cap,
                });
                return Error::e_explain(ErrorType::HTTPStatus(413), "request body over the cap");
            }
            if let Some(tee) = &mut ctx.request_tee {
                tee.push(b);
            }
        }
        if end_of_stream && ctx.request_tee.is_some() {
            let max = ctx.app().map_or(20, |a| a.contract.max_violations);
            contract::finish_request_tee(ctx, max);
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
        if let (Some(active), Some(app), Some(route)) = (ctx.active.clone(), ctx.app, ctx.route) {
            let app = &active.bundle.apps[app];
            let route = &app.routes[route];
            if let (Some(op), Mode::Monitor) = (&route.operation, route.response_mode) {
                let started = Instant::now();
                contract::start_response_check(
                    ctx,
                    op,
                    response.status.as_u16(),
                    &response.headers,
                    app.contract.max_violations,
                    app.contract.max_response_body,
                );
                ctx.timings.response_validation_us += crate::ctx::micros_since(started);
            }
        }
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
        if end_of_stream && ctx.response_tee.is_some() {
            let started = Instant::now();
            let max = ctx.app().map_or(20, |a| a.contract.max_violations);
            contract::finish_response_tee(ctx, max);
            ctx.timings.response_validation_us += crate::ctx::micros_since(started);
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
            ctx.timings.upstream_end = Some(Instant::now());
            // The instance is done with this request: least-connections
            // sees it free now, not after the response reaches the client.
            ctx.lease = None;
        } else if upstream::deadline_passed(ctx) {
            ctx.error = Some(GatewayError::UpstreamTimeout);
            return Error::e_explain(ErrorType::ReadTimedout, "total upstream timeout");
        }
        Ok(None)
    }

    /// Pingora's own line per failed request is replaced by
    /// [`failure_log`]'s, which is rate-limited and leaves the query out.
    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, _error: &Error) -> bool {
        true
    }

    /// A failed attempt that is retried is not logged: the upstream's
    /// health ([`upstream`]) counts it, and the request's final failure, if
    /// any, is logged by `fail_to_proxy`.
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
        let mut err = ctx
            .error
            .take()
            .unwrap_or_else(|| GatewayError::from_pingora(e));
        if let GatewayError::BodyTooLarge { limit } = &mut err {
            *limit = ctx.body_cap;
        }
        if ctx.request_id.is_empty() {
            ctx.request_id = request_id(session.req_header());
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
            h2::note_reset_in_flight(session, ctx);
        }
        if downstream_gone || session.response_written().is_some() {
            if !downstream_gone {
                let method = session.req_header().method.as_str();
                failure_log::request_failed(ctx, method, &err, Some(&failure_log::MID_RESPONSE));
            }
            return FailToProxy {
                error_code: if downstream_gone { 0 } else { err.status() },
                can_reuse_downstream: false,
            };
        }
        // A status the gateway chose itself says nothing beyond `err`.
        let cause =
            (!matches!(e.etype(), ErrorType::HTTPStatus(_))).then_some(e as &dyn std::fmt::Display);
        failure_log::request_failed(ctx, session.req_header().method.as_str(), &err, cause);
        session.set_keepalive(None);
        if let Err(write_err) = write_problem(session, ctx, &err).await {
            tracing::debug!(request_id = %ctx.request_id, error = %write_err, "could not write the error response");
        }
        ctx.status = err.status();
        FailToProxy {
            error_code: err.status(),
            can_reuse_downstream: false,
        }
    }
}
