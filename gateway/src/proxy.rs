//! The data plane: Gatehouse's [`ProxyHttp`] implementation.
//!
//! Phase chart (each phase does one thing and delegates the logic):
//!
//! | phase                      | what Gatehouse does                                          |
//! |----------------------------|--------------------------------------------------------------|
//! | `new_ctx`                  | count the request in flight                                   |
//! | `request_filter`           | request id; take the bundle once; path safety; route (404/405); body cap (413) |
//! | `upstream_peer`            | pick an instance (balancing, health, ejection; 503 when none) |
//! | `connected_to_upstream`    | reset the instance's connect-failure streak                   |
//! | `fail_to_connect`          | count the failure (passive ejection); retry on another instance |
//! | `error_while_proxy`        | retry idempotent requests that got no response yet            |
//! | `upstream_request_filter`  | `X-Request-Id`, `X-Forwarded-*`, prefix stripping             |
//! | `request_body_filter`      | enforce the body cap on streamed bodies                       |
//! | `response_filter`          | `X-Request-Id` on the response                                |
//! | `upstream_response_body_filter` | the app's total timeout                                 |
//! | `fail_to_proxy`            | render the error as `application/problem+json` ([`GatewayError`]) |
//! | `logging`                  | (telemetry hooks in later)                                    |

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorType, Result};

use crate::ctx::RequestCtx;
use crate::error::GatewayError;
use crate::routing::{self, now_ms, InstanceLease, Pick, RouteMatch};
use crate::runtime::Shared;

/// Request bodies up to this size are read before the upstream is chosen, so a
/// chunked body over the cap is refused before the upstream sees a byte
/// (Pingora replays buffered bodies up to 64 KiB).
const PREREAD_LIMIT: u64 = 64 * 1024;

/// The Gatehouse proxy.
#[derive(Debug)]
pub struct Gateway {
    shared: Arc<Shared>,
}

impl Gateway {
    /// A proxy serving the policy in `shared`.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
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
        ctx.request_id = request_id(session.req_header());
        let active = self.shared.active();
        let req = session.req_header();
        let path = req.uri.path();
        if !routing::path_is_safe(path) {
            return respond(session, ctx, GatewayError::BadPath).await;
        }
        let host = req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri.host())
            .unwrap_or("");
        let matched = active
            .bundle
            .router
            .route(&active.bundle.apps, host, &req.method, path);
        let (app_idx, route_idx) = match matched {
            RouteMatch::Route { app, route } => (app, Some(route)),
            RouteMatch::Passthrough { app } => (app, None),
            RouteMatch::MethodNotAllowed { app } => {
                let allow = allowed_methods(&active.bundle.apps[app], path);
                ctx.app = Some(app);
                ctx.active = Some(active);
                return respond(session, ctx, GatewayError::MethodNotAllowed { allow }).await;
            }
            RouteMatch::NoRoute { app } => {
                ctx.app = Some(app);
                ctx.active = Some(active);
                return respond(session, ctx, GatewayError::NoRoute).await;
            }
            RouteMatch::NoApp => return respond(session, ctx, GatewayError::NoApp).await,
        };
        let app = &active.bundle.apps[app_idx];
        ctx.body_cap = route_idx.map_or(app.max_request_body, |r| app.routes[r].max_request_body);
        ctx.deadline = Some(Instant::now() + app.timeouts.total);
        ctx.app = Some(app_idx);
        ctx.route = route_idx;
        ctx.active = Some(active);

        // Body cap: declared length first, then (small caps) read a chunked body now.
        let declared = session
            .req_header()
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(len) = declared {
            if len > ctx.body_cap {
                let limit = ctx.body_cap;
                return respond(session, ctx, GatewayError::BodyTooLarge { limit }).await;
            }
        } else if ctx.body_cap <= PREREAD_LIMIT && !session.is_body_empty() {
            session.enable_retry_buffering();
            while let Some(chunk) = session.read_request_body().await? {
                ctx.body_bytes += chunk.len() as u64;
                if ctx.body_bytes > ctx.body_cap {
                    let limit = ctx.body_cap;
                    return respond(session, ctx, GatewayError::BodyTooLarge { limit }).await;
                }
            }
            ctx.body_bytes = 0; // counted again as the buffer is replayed upstream
        }
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let (Some(active), Some(app_idx)) = (ctx.active.clone(), ctx.app) else {
            return fail(ctx, GatewayError::Internal);
        };
        let app = &active.bundle.apps[app_idx];
        let now = Instant::now();
        let remaining = ctx
            .deadline
            .map_or(app.timeouts.total, |d| d.saturating_duration_since(now));
        if remaining.is_zero() {
            return fail(ctx, GatewayError::UpstreamTimeout);
        }
        let group = &active.upstreams.groups[app_idx];
        let hash_key = match &app.upstream.balancing {
            crate::policy::Balancing::ConsistentHash(h) => {
                session.req_header().headers.get(h).map(|v| v.as_bytes())
            }
            _ => None,
        };
        let idx = match group.pick(ctx.tried, hash_key, now_ms()) {
            Pick::Instance(i) => i,
            Pick::NoneAvailable if ctx.attempts == 0 => {
                return fail(ctx, GatewayError::NoHealthyInstance)
            }
            Pick::NoneAvailable | Pick::Exhausted => {
                let last = ctx
                    .error
                    .take()
                    .unwrap_or(GatewayError::UpstreamUnreachable);
                return fail(ctx, last);
            }
        };
        ctx.error = None;
        ctx.tried |= 1 << idx;
        ctx.attempts += 1;
        let instance = Arc::clone(&group.instances[idx]);
        let Some(socket) = instance.socket else {
            return fail(ctx, GatewayError::UpstreamUnreachable);
        };
        let mut peer = HttpPeer::new(socket, instance.addr.tls, instance.addr.host.clone());
        let t = &app.timeouts;
        peer.options.connection_timeout = Some(t.connect.min(remaining));
        peer.options.total_connection_timeout = Some(t.connect.min(remaining));
        peer.options.read_timeout = Some(t.read.min(remaining));
        peer.options.write_timeout = Some(t.read.min(remaining));
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        ctx.lease = Some(InstanceLease::new(instance));
        Ok(Box::new(peer))
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(lease) = &ctx.lease {
            lease.instance().record_connect_success();
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let Some(app) = ctx.app() else {
            e.set_retry(false);
            return e;
        };
        let (ejection, retries) = (app.upstream.ejection.clone(), app.retries);
        let app_name = app.name.clone();
        if let Some(lease) = ctx.lease.take() {
            let inst = lease.instance();
            if inst.record_connect_failure(&ejection, now_ms()) {
                tracing::warn!(app = %app_name, instance = %inst.addr.url, for_ms = ejection.duration.as_millis() as u64,
                    "instance ejected after consecutive connect failures");
            }
        }
        // Nothing reached the upstream: any method may try another instance.
        ctx.error = Some(GatewayError::from_pingora(&e));
        e.set_retry(ctx.attempts <= retries && !self.deadline_passed(ctx));
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
        let retry = session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated()
            && session.response_written().is_none()
            && !timed_out
            && ctx.attempts <= retries
            && !self.deadline_passed(ctx);
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
        upstream.insert_header("x-request-id", ctx.request_id.as_str())?;
        if let Some(addr) = session.client_addr().and_then(|a| a.as_inet()) {
            let ip = addr.ip().to_string();
            let xff = match upstream
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
            {
                Some(prev) if !prev.is_empty() => format!("{prev}, {ip}"),
                _ => ip,
            };
            upstream.insert_header("x-forwarded-for", xff)?;
        }
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        upstream.insert_header("x-forwarded-proto", if tls { "https" } else { "http" })?;
        let host = session
            .req_header()
            .headers
            .get(http::header::HOST)
            .cloned()
            .or_else(|| {
                session
                    .req_header()
                    .uri
                    .authority()
                    .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok())
            });
        if let Some(host) = host {
            if upstream.headers.get(http::header::HOST).is_none() {
                upstream.insert_header(http::header::HOST, host.clone())?;
            }
            upstream.insert_header("x-forwarded-host", host)?;
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

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(b) = body {
            ctx.body_bytes += b.len() as u64;
            if ctx.body_bytes > ctx.body_cap {
                ctx.error = Some(GatewayError::BodyTooLarge {
                    limit: ctx.body_cap,
                });
                return Error::e_explain(ErrorType::HTTPStatus(413), "request body over the cap");
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        response.insert_header("x-request-id", ctx.request_id.as_str())?;
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if !end_of_stream && self.deadline_passed(ctx) {
            ctx.error = Some(GatewayError::UpstreamTimeout);
            return Error::e_explain(ErrorType::ReadTimedout, "total upstream timeout");
        }
        Ok(None)
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
                ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed
            );
        if downstream_gone || session.response_written().is_some() {
            return FailToProxy {
                error_code: if downstream_gone { 0 } else { err.status() },
                can_reuse_downstream: false,
            };
        }
        tracing::debug!(request_id = %ctx.request_id, kind = err.slug(), cause = %e, "request failed");
        session.set_keepalive(None);
        if let Err(write_err) = write_problem(session, ctx, &err).await {
            tracing::debug!(request_id = %ctx.request_id, error = %write_err, "could not write the error response");
        }
        FailToProxy {
            error_code: err.status(),
            can_reuse_downstream: false,
        }
    }
}

impl Gateway {
    fn deadline_passed(&self, ctx: &RequestCtx) -> bool {
        ctx.deadline.is_some_and(|d| Instant::now() >= d)
    }
}

/// Keep a sane client-supplied `X-Request-Id`, else make a UUIDv7.
fn request_id(req: &RequestHeader) -> String {
    if let Some(v) = req.headers.get("x-request-id") {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= 200 && b.iter().all(|c| (0x21..0x7f).contains(c)) {
            if let Ok(s) = v.to_str() {
                return s.to_string();
            }
        }
    }
    uuid::Uuid::now_v7().to_string()
}

fn fail<T>(ctx: &mut RequestCtx, err: GatewayError) -> Result<T> {
    let status = err.status();
    ctx.error = Some(err);
    let mut e = Error::explain(ErrorType::HTTPStatus(status), "gateway decision");
    e.set_retry(false);
    Err(e)
}

/// Write an early problem response from `request_filter`.
async fn respond(session: &mut Session, ctx: &mut RequestCtx, err: GatewayError) -> Result<bool> {
    if !session.is_body_empty() {
        // The request body is not read: the connection cannot be reused.
        session.set_keepalive(None);
    }
    write_problem(session, ctx, &err).await?;
    Ok(true)
}

async fn write_problem(session: &mut Session, ctx: &RequestCtx, err: &GatewayError) -> Result<()> {
    let body = err.problem_json(&ctx.request_id, session.req_header().uri.path());
    let mut resp = ResponseHeader::build(err.status(), Some(6))?;
    resp.insert_header(http::header::CONTENT_TYPE, "application/problem+json")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    resp.insert_header("x-request-id", ctx.request_id.as_str())?;
    if let GatewayError::MethodNotAllowed { allow } = err {
        resp.insert_header(http::header::ALLOW, allow.as_str())?;
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

fn allowed_methods(app: &crate::policy::App, path: &str) -> String {
    let sub = routing::strip_app_prefix(&app.path_prefix, path);
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
