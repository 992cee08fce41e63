//! The lean HTTP/1.1 engine: Gatehouse's own request loop on `pingora-core`
//! for the plain listener's common case, with Pingora's full proxy as the
//! fallback for everything else on the same connection.
//!
//! Per request it reads the head (`httparse`) and a declared body of up to
//! 64 KiB, calls the request pipeline's phases ([`crate::pipeline`]: id,
//! route, admit, request contract, instance and retries, response contract,
//! refusal, the wide event) as every engine does, writes the upstream
//! request (its forwarding headers included) in one buffer over a pooled
//! connection and relays the response. What it does not carry — HTTP/1.0,
//! chunked or larger request bodies, upgrades, `Expect`, h2c, apps with TLS
//! upstreams or enforced response contracts — is handed to Pingora's
//! `HttpProxy` with the bytes already read put back, before any side effect
//! (no limit token is taken twice, no event is written twice).
//!
//! Why: Pingora's per-request work (header maps with case preservation,
//! its connection pool's idle-watch task, per-request channels) cost more
//! CPU than our whole policy; see `loadtest/RESULTS.md`.

mod chunked;
mod guard;
mod head;
#[cfg(any(test, feature = "fuzzing"))]
pub mod oracle;
pub use head::{MAX_HEAD, MAX_HEADERS};
mod pool;
mod request;

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::Stream;
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::Gateway;
use crate::contract::Mode;
use crate::error::GatewayError;
use crate::pipeline::{self, upstream, wide_event, Exchange, RequestCtx, RequestView};
use crate::policy::Balancing;
use crate::runtime::Shared;
use chunked::ChunkedScanner;
use guard::Guard;
use head::{Framing, ResponseHead};
use request::{Parsed, Request, RequestHead, SpareHeaders};

/// How long an idle keep-alive connection waits for its next request.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// How long a client may take to accept response bytes.
const CLIENT_WRITE: Duration = Duration::from_secs(30);
/// How long an idle kept-alive connection stays open once shutdown has
/// begun (see `Engine::serve`).
pub const DRAIN_IDLE: Duration = Duration::from_millis(500);
/// The HTTP/2 connection preface's first bytes (h2c prior knowledge).
const H2_PREFACE_START: &[u8] = b"PRI * HTTP/2.0";

/// Requests on the plain listener by what carried them, for `/metrics`.
pub mod counters {
    use std::sync::atomic::AtomicU64;

    /// Carried by the lean engine.
    pub static LEAN: AtomicU64 = AtomicU64::new(0);
    /// Handed to Pingora's proxy.
    pub static PINGORA: AtomicU64 = AtomicU64::new(0);
}

/// The engine behind the plain listener.
pub struct Engine {
    shared: Arc<Shared>,
    telemetry: Option<crate::telemetry::Telemetry>,
    instance: Arc<str>,
    pingora: Arc<HttpProxy<Gateway>>,
    /// How long a client may take to send a whole head, from its first
    /// byte, and then its whole body (slow senders get 408, whatever their
    /// pace).
    client_read: Duration,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine serving `shared`'s policy, handing what it does not carry
    /// to `pingora` (built around the same policy and telemetry).
    pub fn new(
        shared: Arc<Shared>,
        telemetry: Option<(crate::telemetry::Telemetry, String)>,
        pingora: HttpProxy<Gateway>,
        client_read: Duration,
    ) -> Self {
        let (telemetry, instance) = match telemetry {
            Some((t, i)) => (Some(t), Arc::from(i)),
            None => (None, crate::telemetry::event::no_name()),
        };
        Self {
            shared,
            telemetry,
            instance,
            pingora: Arc::new(pingora),
            client_read,
        }
    }
}

#[async_trait]
impl ServerApp for Engine {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let Some(_open) = self.shared.connection() else {
            super::respond::refuse_connection(stream).await;
            return None;
        };
        self.serve(stream, shutdown).await;
        None
    }

    async fn cleanup(&self) {
        // Pingora closes its idle kept-alive connections at once here: let
        // a client about to reuse one be answered (`Connection: close`).
        tokio::time::sleep(DRAIN_IDLE).await;
        self.pingora.http_cleanup().await;
    }
}

/// Make room for a new connection to the request's app, within its cap:
/// when the app's requests in flight and idle connections are over it,
/// close an idle one of this thread in its place. One idle on another
/// thread is closed by that thread's next sweep (every 20 ms while it has
/// idle connections), which the request waits for, two sweeps at most.
/// `false` (counted as shed): there is still no room, so the sockets to an
/// app never exceed its cap.
async fn make_room_for_connection(ctx: &RequestCtx) -> bool {
    let Some(fenced) = &ctx.fence else {
        return true;
    };
    let fence = fenced.fence();
    for _ in 0..8 {
        if !fence.sockets_over() || pool::evict_one(fence) {
            return true;
        }
        tokio::time::sleep(pool::SWEEP_EVERY / 4).await;
    }
    fenced.shed_for_sockets();
    false
}

/// What the connection does after an exchange.
enum Next {
    /// Read the next request.
    KeepAlive,
    /// Close the connection.
    Close,
    /// Hand the buffered request to Pingora.
    Pingora,
}

/// A connection's working buffers and I/O timers, reused by each of its
/// requests.
#[derive(Default)]
struct Buffers {
    /// The upstream request (or a problem response).
    out: Vec<u8>,
    /// Bytes read from the upstream.
    upstream: Vec<u8>,
    /// The client's response head and body bytes.
    response: Vec<u8>,
    /// Limits reads of a request's rest and writes to the client.
    client_io: Guard,
    /// Limits writes to and reads from the upstream.
    upstream_io: Guard,
    /// The last request's header list, for the next head to clear and fill.
    headers: SpareHeaders,
}

/// What reading the response head needs to know about the request.
#[derive(Debug, Clone, Copy)]
struct ResponseNeeds {
    /// The request was HEAD (no body follows).
    head_request: bool,
    /// The gateway sets `RateLimit-*` itself.
    own_rate_headers: bool,
    /// The response contract needs `Content-Type`/`Content-Encoding`.
    want_content: bool,
}

/// How one attempt at an instance failed.
enum Attempt {
    /// No connection: count it against the instance, try another.
    Connect(GatewayError),
    /// The exchange failed (`true`: nothing came back).
    Exchange(GatewayError, bool),
}

/// Why talking to the upstream failed.
struct UpstreamFailure {
    error: GatewayError,
    /// Nothing came back: the request may be sent again.
    nothing_received: bool,
    /// The whole request was written (it may have reached the app).
    written: bool,
}

impl Engine {
    async fn serve(self: &Arc<Self>, mut client: Stream, shutdown: &ShutdownWatch) {
        let client_ip = client
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()))
            .map(|ip| ip.to_string())
            .unwrap_or_default();
        let h2c = self.pingora.server_options().is_some_and(|o| o.h2c);
        let mut buf: Vec<u8> = Vec::with_capacity(8 * 1024);
        let mut bufs = Buffers::default();
        let mut first = true;
        let mut last_active = Instant::now();
        let mut idle = Box::pin(tokio::time::sleep(KEEPALIVE_IDLE));
        // Once shutdown begins, an idle connection closes after
        // `DRAIN_IDLE` without a request: a client using it is answered
        // `Connection: close` (and so closes it itself, with no request
        // lost to the race of a close against a send); one not using it
        // is closed.
        // (One waiter per connection, pinned across its requests.)
        let mut watch = shutdown.clone();
        let mut draining = *watch.borrow();
        let mut drain_begins = Box::pin(async move {
            let _ = watch.changed().await;
        });
        // When the head being read must be complete.
        let mut head_by: Option<Instant> = None;
        loop {
            let head = loop {
                if first && h2c && buf.len() >= H2_PREFACE_START.len() {
                    if buf.starts_with(H2_PREFACE_START) {
                        if let Some(client) = put_back(client, &buf) {
                            super::h2::serve_h2(&self.pingora, client, shutdown).await;
                        }
                        return;
                    }
                    first = false;
                }
                match request::parse_request(&buf, &mut bufs.headers) {
                    Parsed::Lean(head) => break Ok(Some(head)),
                    Parsed::Pingora => break Ok(None),
                    Parsed::TooLarge => break Err(GatewayError::HeadTooLarge),
                    Parsed::Refused(err) => break Err(err),
                    Parsed::Partial => {}
                }
                if buf.is_empty() {
                    // Between requests: one timer per connection, moved on
                    // only when it fires, instead of one per request.
                    let limit = if draining { DRAIN_IDLE } else { KEEPALIVE_IDLE };
                    tokio::select! {
                        biased;
                        read = read_more(&mut client, &mut buf) => match read {
                            Ok(n) if n > 0 => {}
                            _ => return,
                        },
                        () = &mut idle => {
                            let since = last_active.elapsed();
                            if since >= limit {
                                return;
                            }
                            idle.as_mut().reset((Instant::now() + (limit - since)).into());
                        }
                        () = &mut drain_begins, if !draining => {
                            draining = true;
                            let since = last_active.elapsed();
                            if since >= DRAIN_IDLE {
                                return;
                            }
                            idle.as_mut().reset((Instant::now() + (DRAIN_IDLE - since)).into());
                        }
                    }
                } else {
                    // The whole head by one deadline, not one per read,
                    // counted from when it was first found incomplete
                    // (right after its first bytes): a complete head costs
                    // no clock reading.
                    let by = *head_by.get_or_insert_with(|| Instant::now() + self.client_read);
                    match bufs
                        .client_io
                        .until(by, read_more(&mut client, &mut buf))
                        .await
                    {
                        Ok(Ok(n)) if n > 0 => {}
                        Ok(_) => return,
                        Err(_) => break Err(GatewayError::RequestTimeout),
                    }
                }
            };
            first = false;
            head_by = None;
            let head = match head {
                Ok(head) => head,
                Err(err) => {
                    // Nothing of the head is trusted: answer and close.
                    self.refuse_head(&mut client, &mut bufs, err).await;
                    return;
                }
            };
            let (next, finished) = match head {
                Some(head) => {
                    let closing = *shutdown.borrow();
                    self.exchange(&mut client, &mut buf, &mut bufs, head, &client_ip, closing)
                        .await
                }
                None => (Next::Pingora, Instant::now()),
            };
            last_active = finished;
            match next {
                // Also while draining: a response that went out without
                // `Connection: close` (the drain began during its exchange)
                // leaves the client free to reuse the connection, so it
                // gets the drain's idle grace, not a close under its feet.
                Next::KeepAlive => {}
                Next::Close => return,
                Next::Pingora => {
                    counters::PINGORA.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(rewound) = put_back(client, &buf) else {
                        return;
                    };
                    buf.clear();
                    let session = ServerSession::new_http1(rewound);
                    match self.pingora.process_new_http(session, shutdown).await {
                        Some(reused) => client = reused.consume().0,
                        None => return,
                    }
                }
            }
        }
    }

    /// One request on the lean path. `buf` starts with its head; the bytes
    /// of the exchange are removed from it unless it goes to Pingora.
    async fn exchange(
        &self,
        client: &mut Stream,
        buf: &mut Vec<u8>,
        bufs: &mut Buffers,
        head: RequestHead,
        client_ip: &str,
        closing: bool,
    ) -> (Next, Instant) {
        let message_len = head.len + head.content_length as usize;
        // The whole body by one deadline, not one per read (read from the
        // clock only when the body is not all here yet).
        let mut body_by = None;
        while buf.len() < message_len {
            let by = *body_by.get_or_insert_with(|| Instant::now() + self.client_read);
            match bufs.client_io.until(by, read_more(client, buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => return (Next::Close, Instant::now()),
                Err(_) => {
                    self.refuse_head(client, bufs, GatewayError::RequestTimeout)
                        .await;
                    return (Next::Close, Instant::now());
                }
            }
        }
        let mut ctx = RequestCtx::new(self.shared.enter());
        ctx.client_ip.push_str(client_ip);
        // The one reading of the path that every phase judges and the
        // upstream gets; a path with no such reading is refused.
        let canonical = crate::routing::canonical_path(head.path());
        let req = head.view(buf, canonical.as_deref().unwrap_or(head.path()));
        if head.has_request_id {
            pipeline::request_id::assign_request_id(&req, &mut ctx);
        } else {
            pipeline::request_id::new_request_id_into(&mut ctx);
        }
        let close = head.close || closing;
        let outcome = match canonical {
            Ok(_) => {
                self.admit_and_forward(client, &req, &mut ctx, close, bufs)
                    .await
            }
            Err(_) => Err(GatewayError::BadPath),
        };
        let (status, failed, bytes_out, next) = match outcome {
            Ok(Some(done)) => done,
            Ok(None) => return (Next::Pingora, Instant::now()),
            Err(err) => {
                let (next, bytes_out) = self.refuse(client, &mut ctx, &req, err, close, bufs).await;
                let failed = matches!(next, Next::Close) && !close;
                (ctx.status, failed, bytes_out, next)
            }
        };
        counters::LEAN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // A forwarded request's last reading is the relay's end.
        let finished = ctx.timings.upstream_end.unwrap_or_else(Instant::now);
        if let Some(t) = &self.telemetry {
            let exchange = Exchange {
                status,
                failed,
                bytes_in: head.content_length,
                bytes_out,
                finished,
            };
            t.record(wide_event(&req, &exchange, &mut ctx, &self.instance));
        }
        buf.drain(..message_len);
        // Its memory serves the next request's head.
        head.recycle(&mut bufs.headers);
        (next, finished)
    }

    /// Answer a request refused before any phase ran (a head too large,
    /// malformed or framed two ways, a head or body too slow) and leave the
    /// connection to be closed. No phase saw it, so no wide event records
    /// it; the refusal counters do.
    async fn refuse_head(&self, client: &mut Stream, bufs: &mut Buffers, err: GatewayError) {
        if let Some(direction) = err.violation_counted() {
            crate::contract::count_violation(direction);
        }
        let mut ctx = RequestCtx::new(self.shared.enter());
        pipeline::request_id::new_request_id_into(&mut ctx);
        let out = &mut bufs.out;
        out.clear();
        let _ = head::write_problem(out, &err, &ctx, "", false, true);
        let _ = write_client(client, &mut bufs.client_io, out).await;
    }

    /// Write a gateway-generated problem response: what the connection
    /// does next, and the body bytes sent.
    async fn refuse(
        &self,
        client: &mut Stream,
        ctx: &mut RequestCtx,
        req: &Request<'_>,
        err: GatewayError,
        close: bool,
        bufs: &mut Buffers,
    ) -> (Next, u64) {
        let out = &mut bufs.out;
        out.clear();
        let head_request = *req.method() == http::Method::HEAD;
        let body = head::write_problem(out, &err, ctx, req.path(), head_request, close);
        pipeline::refused(ctx, req.method().as_str(), err, None);
        match write_client(client, &mut bufs.client_io, out).await {
            Ok(()) if !close => (Next::KeepAlive, body),
            Ok(()) => (Next::Close, body),
            Err(_) => (Next::Close, 0),
        }
    }

    /// Route, admit, check and forward. `Ok(None)`: Pingora carries it.
    /// `Err`: refuse with that error (nothing was sent to the client yet).
    async fn admit_and_forward(
        &self,
        client: &mut Stream,
        req: &Request<'_>,
        ctx: &mut RequestCtx,
        close: bool,
        bufs: &mut Buffers,
    ) -> Result<Option<(u16, bool, u64, Next)>, GatewayError> {
        let Buffers {
            out,
            upstream: ubuf,
            response: client_out,
            client_io,
            upstream_io,
            ..
        } = bufs;
        let head = req.head();
        let active = self.shared.active();
        let routed = pipeline::route(&active, req, ctx)?;
        let app = &active.bundle.apps[routed.app];
        let route = routed.route.map(|r| &app.routes[r]);
        // Enforced responses and TLS upstreams are the buffered
        // forwarder's and Pingora's: nothing was decided yet but the route.
        let enforced_response = route.is_some_and(|r| {
            r.response_mode == Mode::Enforce
                && r.operation
                    .as_ref()
                    .is_some_and(|op| !op.responses.is_empty())
        });
        if enforced_response
            || active.upstreams.groups[routed.app]
                .instances
                .iter()
                .any(|i| i.addr.tls)
        {
            return Ok(None);
        }
        pipeline::check_declared_length(ctx, Some(head.content_length))?;
        pipeline::admit(req, ctx)?;
        let body = req.body();
        pipeline::check_buffered_request(req, body, ctx)?;

        out.clear();
        request::write_upstream_head(out, req, ctx, app);
        out.extend_from_slice(body);
        let hash_key = match &app.upstream.balancing {
            Balancing::ConsistentHash(h) => req.header(h.as_str()),
            _ => None,
        };
        let head_request = *req.method() == http::Method::HEAD;
        let idempotent = req.method().is_idempotent();
        let monitor_response =
            route.is_some_and(|r| r.response_mode == Mode::Monitor && r.operation.is_some());
        upstream::wait_for_fence(ctx).await?;
        let (mut upstream, response) = loop {
            // One reading for the attempt's start, balancing and the pool.
            let now = Instant::now();
            let upstream::Chosen {
                socket, remaining, ..
            } = upstream::choose_instance(ctx, hash_key, now)?;
            let t = &app.timeouts;
            let mut fresh_retry = true;
            let attempt = loop {
                let (mut conn, reused) = match pool::take(socket, now, idempotent) {
                    Some(conn) => (conn, true),
                    None => {
                        if !make_room_for_connection(ctx).await {
                            return Err(GatewayError::Shed);
                        }
                        let limit = upstream::within_deadline(ctx, t.connect.min(remaining));
                        match connect(socket, upstream_io, limit).await {
                            Ok(conn) => (conn, false),
                            Err(err) => break Err(Attempt::Connect(err)),
                        }
                    }
                };
                // The head must arrive within the read limit (or by the
                // request's deadline, if sooner) of sending the request.
                let sent_at = if reused { now } else { Instant::now() };
                upstream::connected(ctx, reused, sent_at);
                let read_by = (sent_at + t.read).min(now + remaining);
                let own_rate_headers = ctx.rate_headers.is_some();
                match send(
                    &mut conn,
                    upstream_io,
                    out,
                    ubuf,
                    client_out,
                    read_by,
                    ResponseNeeds {
                        head_request,
                        own_rate_headers,
                        want_content: monitor_response,
                    },
                )
                .await
                {
                    Ok(response) => break Ok((conn, response)),
                    // A pooled connection the upstream had closed: once
                    // more on a new one, the same instance, not a new attempt.
                    Err(f)
                        if reused
                            && fresh_retry
                            && upstream::resend_on_new_connection(
                                req.method(),
                                &f.error,
                                f.written,
                                f.nothing_received,
                            ) =>
                    {
                        fresh_retry = false;
                    }
                    Err(f) => break Err(Attempt::Exchange(f.error, f.nothing_received)),
                }
            };
            match attempt {
                Ok(done) => break done,
                Err(Attempt::Connect(err)) => upstream::connect_failed(ctx, err)?,
                // Nothing came back: the request may be sent again.
                Err(Attempt::Exchange(err, nothing_received)) => {
                    upstream::exchange_failed(ctx, req.method(), err, nothing_received)?
                }
            }
        };
        upstream::first_byte(ctx, response.status, Instant::now());
        if monitor_response {
            pipeline::start_response_check(ctx, response.status, &response.content);
        }
        let close_client = close || response.framing == Framing::UntilClose;
        head::finish_client_head(client_out, ctx, close_client);
        let read = app.timeouts.read;
        let relayed = relay(
            (client, client_io),
            (&mut upstream, upstream_io),
            client_out,
            ubuf,
            &response,
            read,
            ctx,
        )
        .await;
        let end = Instant::now();
        upstream::finished(ctx, end);
        pipeline::finish_response_check(ctx);
        ctx.status = response.status;
        Ok(Some(match relayed {
            Ok((bytes_out, reusable)) => {
                if reusable {
                    let socket = ctx.last_instance.as_ref().and_then(|i| i.socket);
                    let fence = ctx
                        .active
                        .as_ref()
                        .zip(ctx.app)
                        .and_then(|(a, i)| a.fences.get(i));
                    if let (Some(socket), Some(fence)) = (socket, fence) {
                        pool::give(socket, upstream, end, fence);
                    }
                }
                let next = if close_client {
                    Next::Close
                } else {
                    Next::KeepAlive
                };
                (response.status, false, bytes_out, next)
            }
            Err(Relay::Upstream(err, bytes_out)) => {
                pipeline::failed_mid_response(ctx, req.method().as_str(), err);
                (response.status, true, bytes_out, Next::Close)
            }
            Err(Relay::Client(bytes_out)) => (response.status, true, bytes_out, Next::Close),
        }))
    }
}

/// Put bytes already read back in front of the connection's next read, for
/// Pingora to parse. Only plain TCP connections reach this engine.
fn put_back(client: Stream, bytes: &[u8]) -> Option<Stream> {
    if bytes.is_empty() {
        return Some(client);
    }
    match client.into_any().downcast::<L4Stream>() {
        Ok(mut l4) => {
            l4.rewind(bytes);
            Some(l4)
        }
        Err(_) => {
            tracing::error!("the lean HTTP/1.1 engine got a connection that is not plain TCP");
            None
        }
    }
}

/// Read more bytes into `buf` (growing it when nearly full).
async fn read_more<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> io::Result<usize> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(8 * 1024);
    }
    stream.read_buf(buf).await
}

async fn write_client(client: &mut Stream, guard: &mut Guard, bytes: &[u8]) -> io::Result<()> {
    let write = async {
        client.write_all(bytes).await?;
        client.flush().await
    };
    match guard.limit(CLIENT_WRITE, write).await {
        Ok(result) => result,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

async fn connect(
    socket: std::net::SocketAddr,
    guard: &mut Guard,
    within: Duration,
) -> Result<TcpStream, GatewayError> {
    match guard.limit(within, TcpStream::connect(socket)).await {
        Ok(Ok(conn)) => {
            let _ = conn.set_nodelay(true);
            Ok(conn)
        }
        Ok(Err(_)) => Err(GatewayError::UpstreamUnreachable),
        Err(_) => Err(GatewayError::UpstreamTimeout),
    }
}

/// Send the request and read the response head into `ubuf`, all by
/// `read_by`. The client's response head is begun in `client_head`.
async fn send(
    conn: &mut TcpStream,
    guard: &mut Guard,
    request: &[u8],
    ubuf: &mut Vec<u8>,
    client_head: &mut Vec<u8>,
    read_by: Instant,
    needs: ResponseNeeds,
) -> Result<ResponseHead, UpstreamFailure> {
    let ResponseNeeds {
        head_request,
        own_rate_headers,
        want_content,
    } = needs;
    let failed = |error, nothing_received, written| UpstreamFailure {
        error,
        nothing_received,
        written,
    };
    match guard.until(read_by, conn.write_all(request)).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return Err(failed(GatewayError::UpstreamFailed, true, false)),
        Err(_) => return Err(failed(GatewayError::UpstreamTimeout, true, false)),
    }
    ubuf.clear();
    loop {
        match guard.until(read_by, read_more(conn, ubuf)).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return Err(failed(GatewayError::UpstreamFailed, ubuf.is_empty(), true)),
            Err(_) => return Err(failed(GatewayError::UpstreamTimeout, ubuf.is_empty(), true)),
        }
        // Interim responses (100, 103), however many, are not relayed:
        // each is dropped and the next head read.
        loop {
            match head::parse_response(
                ubuf,
                head_request,
                client_head,
                own_rate_headers,
                want_content,
            ) {
                Ok(r) if (100..200).contains(&r.status) => {
                    ubuf.drain(..r.len);
                }
                Ok(r) => return Ok(r),
                Err(head::BadResponse::Partial) => break,
                Err(head::BadResponse::Invalid) => {
                    return Err(failed(GatewayError::UpstreamFailed, false, true))
                }
            }
        }
    }
}

/// Why relaying a response body stopped early.
enum Relay {
    /// The upstream failed or timed out (body bytes sent so far).
    Upstream(GatewayError, u64),
    /// The client went away (body bytes sent so far).
    Client(u64),
}

/// Send the response (`out` holds its head, `ubuf` the upstream's head and
/// the first body bytes) and relay the rest of the body. Returns the body
/// bytes sent and whether the upstream connection can be reused.
async fn relay(
    (client, client_io): (&mut Stream, &mut Guard),
    (upstream, upstream_io): (&mut TcpStream, &mut Guard),
    out: &mut Vec<u8>,
    ubuf: &mut Vec<u8>,
    response: &ResponseHead,
    read: Duration,
    ctx: &mut RequestCtx,
) -> Result<(u64, bool), Relay> {
    let mut sent = 0u64;
    let mut chunked = ChunkedScanner::default();
    let mut start = response.len;
    loop {
        let available = &ubuf[start..];
        // How much of `available` belongs to this body, and whether it ends there.
        let (take, done) = match response.framing {
            Framing::Empty => (0, true),
            Framing::Length(n) => {
                let left = n - sent;
                let take = (available.len() as u64).min(left) as usize;
                (take, take as u64 == left)
            }
            Framing::Chunked => {
                let tee = &mut ctx.response_tee;
                let scanned = chunked.feed(available, |data| {
                    if let Some(t) = tee.as_mut() {
                        t.push(data);
                    }
                });
                match scanned {
                    Ok(Some(end)) => (end, true),
                    Ok(None) => (available.len(), false),
                    Err(_) => return Err(Relay::Upstream(GatewayError::UpstreamFailed, sent)),
                }
            }
            Framing::UntilClose => (available.len(), false),
        };
        let piece = &available[..take];
        if let (Some(t), false) = (&mut ctx.response_tee, response.framing == Framing::Chunked) {
            t.push(piece);
        }
        out.extend_from_slice(piece);
        sent += take as u64;
        // Bytes past the end of the body: the upstream is out of step.
        let surplus = available.len() > take;
        if done || !out.is_empty() {
            if write_client(client, client_io, out).await.is_err() {
                return Err(Relay::Client(sent));
            }
            out.clear();
        }
        if done {
            return Ok((sent, response.reusable && !surplus));
        }
        ubuf.clear();
        start = 0;
        let left = upstream::within_deadline(ctx, read);
        match upstream_io.limit(left, read_more(upstream, ubuf)).await {
            Ok(Ok(0)) if response.framing == Framing::UntilClose => return Ok((sent, false)),
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return Err(Relay::Upstream(GatewayError::UpstreamFailed, sent)),
            Err(_) => return Err(Relay::Upstream(GatewayError::UpstreamTimeout, sent)),
        }
    }
}
