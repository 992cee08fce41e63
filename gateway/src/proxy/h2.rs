//! HTTP/2 connections: Gatehouse's own accept loop around Pingora's h2
//! sessions, so that what a client does with streams is budgeted per
//! connection, and a stream the client has already reset never becomes an
//! upstream request.
//!
//! The `h2` crate counts a client's resets only for streams not yet handed
//! to the server, and a stream reset just after it was accepted frees its
//! slot under `SETTINGS_MAX_CONCURRENT_STREAMS` while its request may
//! still be running. The loop here closes both gaps (the pattern known as
//! Rapid Reset, CVE-2023-44487):
//!
//! - a stream found reset when it is accepted is dropped, and counted;
//! - a client that resets more than [`RESET_BUDGET`] streams, and more than
//!   half of those it opened, gets `GOAWAY(ENHANCE_YOUR_CALM)`;
//! - requests still being handled are capped per connection
//!   ([`MAX_IN_PROGRESS`]); a request whose stream was reset while it was
//!   with the app counts until the app's deadline for it, since the app
//!   may still be working on it; a stream past the cap is refused
//!   (`REFUSED_STREAM`, which a client may retry) and counted as a reset;
//! - a connection serves at most [`MAX_STREAMS_PER_CONNECTION`] streams,
//!   then a graceful `GOAWAY` asks the client to open another;
//! - streams refused while being accepted (malformed) are budgeted over
//!   the connection's life ([`MALFORMED_BUDGET`]);
//! - a connection with no stream for [`IDLE`] is closed.
//!
//! The proxy phases check once more before the upstream is chosen
//! ([`client_reset`]), for a reset that arrives after the stream was
//! accepted.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pingora::apps::HttpServerApp;
use pingora::protocols::http::v2::server::{
    default_h2_options, handshake, H2Accept, H2Options, HttpSession as H2Session,
};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Digest, Stream};
use pingora::proxy::{HttpProxy, Session};
use pingora::server::ShutdownWatch;

use super::Gateway;
use crate::pipeline::RequestCtx;

/// `SETTINGS_MAX_CONCURRENT_STREAMS`: streams a client may have open at once.
pub const MAX_CONCURRENT_STREAMS: u32 = 100;
/// Requests the gateway is still handling on one connection. A stream the
/// client reset no longer counts toward [`MAX_CONCURRENT_STREAMS`], but its
/// request may still be running; the slack over it covers requests whose
/// response is sent and whose event is still being written.
pub const MAX_IN_PROGRESS: usize = 128;
/// Streams one connection serves before a graceful `GOAWAY`.
pub const MAX_STREAMS_PER_CONNECTION: u64 = 10_000;
/// Reset streams a connection may have before `GOAWAY(ENHANCE_YOUR_CALM)`,
/// when they are also more than half of its streams.
pub const RESET_BUDGET: u64 = 100;
/// Streams refused while being accepted (malformed) before the connection
/// is closed.
pub const MALFORMED_BUDGET: u64 = 32;
/// A connection with no open stream for this long is closed.
pub const IDLE: Duration = Duration::from_secs(60);
/// `SETTINGS_MAX_HEADER_LIST_SIZE`: decoded header bytes per request.
pub const MAX_HEADER_LIST_SIZE: u32 = 64 * 1024;
/// Client streams reset but not yet handed to the gateway, before the
/// `h2` crate itself answers `GOAWAY(ENHANCE_YOUR_CALM)`.
pub const MAX_PENDING_RESETS: usize = 10;

/// The HTTP/2 settings every listener offers. Flow-control windows stay
/// at the protocol's 65 535 bytes: a body larger than that is read as the
/// gateway forwards it, so a client cannot make the gateway buffer more
/// than a window per stream.
pub fn options() -> H2Options {
    let mut options = default_h2_options();
    options
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST_SIZE)
        .max_pending_accept_reset_streams(MAX_PENDING_RESETS);
    options
}

/// What one connection's streams have done, shared with its requests.
#[derive(Debug, Default)]
pub struct ConnectionStreams {
    /// Streams the client reset before the gateway was done with them.
    resets: AtomicU64,
    /// Requests being handled now.
    in_progress: AtomicUsize,
}

impl ConnectionStreams {
    fn reset(&self) -> u64 {
        counters::CLIENT_RESETS.fetch_add(1, Ordering::Relaxed);
        self.resets.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// Process-wide counts for `/metrics`.
pub mod counters {
    use std::sync::atomic::AtomicU64;

    /// Streams the client reset before the gateway was done with them.
    pub static CLIENT_RESETS: AtomicU64 = AtomicU64::new(0);
    /// Streams refused past [`super::MAX_IN_PROGRESS`].
    pub static REFUSED: AtomicU64 = AtomicU64::new(0);
    /// Connections closed with `GOAWAY(ENHANCE_YOUR_CALM)`.
    pub static CALM_GOAWAYS: AtomicU64 = AtomicU64::new(0);
}

/// Counts a request as in progress until it is dropped.
struct InProgress(Arc<ConnectionStreams>);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.in_progress.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The client connection preface of HTTP/2 (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serve an HTTP/2 connection (TLS with ALPN `h2`, or cleartext after the
/// preface) with `proxy`, under the budgets of this module.
pub async fn serve_h2(proxy: &Arc<HttpProxy<Gateway>>, stream: Stream, shutdown: &ShutdownWatch) {
    let digest = Arc::new(Digest {
        ssl_digest: stream.get_ssl_digest(),
        timing_digest: stream.get_timing_digest(),
        proxy_digest: stream.get_proxy_digest(),
        socket_digest: stream.get_socket_digest(),
    });
    let Ok(mut conn) = handshake(stream, Some(options())).await else {
        return;
    };
    let streams = Arc::new(ConnectionStreams::default());
    let mut shutdown = shutdown.clone();
    let (mut opened, mut malformed, mut closing) = (0u64, 0u64, false);
    let idle = tokio::time::sleep(IDLE);
    tokio::pin!(idle);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.changed(), if !closing => {
                conn.graceful_shutdown();
                closing = true;
                continue;
            }
            () = &mut idle, if !closing => {
                if streams.in_progress.load(Ordering::Relaxed) == 0 {
                    conn.graceful_shutdown();
                    closing = true;
                } else {
                    idle.as_mut().reset(tokio::time::Instant::now() + IDLE);
                }
                continue;
            }
            accepted = H2Session::from_h2_conn(&mut conn, Arc::clone(&digest)) => accepted,
        };
        let mut session = match accepted {
            Ok(Some(H2Accept::Session(session))) => session,
            Ok(Some(H2Accept::Rejected)) => {
                malformed += 1;
                if malformed > MALFORMED_BUDGET && !closing {
                    conn.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
                    closing = true;
                }
                continue;
            }
            // Closed, or a connection error (the client often just goes).
            Ok(None) | Err(_) => return,
        };
        opened += 1;
        idle.as_mut().reset(tokio::time::Instant::now() + IDLE);
        let refused = if stream_reset(&mut session) {
            streams.reset();
            true
        } else if streams.in_progress.load(Ordering::Relaxed) >= MAX_IN_PROGRESS {
            counters::REFUSED.fetch_add(1, Ordering::Relaxed);
            session.shutdown_with_reason(h2::Reason::REFUSED_STREAM);
            streams.reset();
            true
        } else {
            false
        };
        // Resets the phases found after a stream was accepted count too.
        let resets = streams.resets.load(Ordering::Relaxed);
        if resets > RESET_BUDGET && resets * 2 > opened && !closing {
            tracing::warn!(
                streams = opened,
                resets,
                "an HTTP/2 client reset too many streams; closing its connection"
            );
            counters::CALM_GOAWAYS.fetch_add(1, Ordering::Relaxed);
            conn.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
            closing = true;
            continue;
        }
        if refused {
            continue;
        }
        if opened >= MAX_STREAMS_PER_CONNECTION && !closing {
            conn.graceful_shutdown();
            closing = true;
        }
        streams.in_progress.fetch_add(1, Ordering::Relaxed);
        let guard = InProgress(Arc::clone(&streams));
        session
            .req_header_mut()
            .extensions_mut()
            .insert(Arc::clone(&streams));
        let (proxy, shutdown) = (Arc::clone(proxy), shutdown.clone());
        tokio::spawn(async move {
            let _guard = guard;
            proxy
                .process_new_http(ServerSession::new_http2(session), &shutdown)
                .await;
        });
    }
}

/// Has the client reset this stream? Looks without waiting.
fn stream_reset(session: &mut H2Session) -> bool {
    use std::future::Future;
    let mut idle = session.idle();
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    // Ready means reset (`Ok`) or the connection failed (`Err`): gone either way.
    std::pin::Pin::new(&mut idle).poll(&mut cx).is_ready()
}

/// Has the client already reset the HTTP/2 stream of this request? Then
/// the request must not reach the app (again); the reset counts, once,
/// toward the connection's budget. Always `false` on HTTP/1.
pub fn client_reset(session: &mut Session, ctx: &mut RequestCtx) -> bool {
    let ServerSession::H2(h2) = session.as_downstream_mut() else {
        return false;
    };
    if !stream_reset(h2) {
        return false;
    }
    let went_upstream = ctx.attempts > 0;
    count_reset(h2, ctx, went_upstream);
    true
}

/// Count a reset (or a client gone) the proxy found while the request was
/// already with the app.
pub fn note_reset_in_flight(session: &Session, ctx: &mut RequestCtx) {
    if let ServerSession::H2(h2) = session.as_downstream() {
        count_reset(h2, ctx, true);
    }
}

/// Count the request's reset once toward its connection's budget. When the
/// request `went_upstream`, Pingora has closed the upstream connection but
/// the app may go on working on it until the app's deadline for it: its
/// slot among the connection's requests in progress stays taken until
/// then, so a client cannot keep the app busy with more than
/// [`MAX_IN_PROGRESS`] requests per connection by resetting each as soon as
/// it went upstream.
fn count_reset(h2: &H2Session, ctx: &mut RequestCtx, went_upstream: bool) {
    if ctx.client_reset {
        return;
    }
    ctx.client_reset = true;
    let Some(streams) = h2.req_header().extensions.get::<Arc<ConnectionStreams>>() else {
        return;
    };
    streams.reset();
    let deadline = ctx.deadline.filter(|d| *d > std::time::Instant::now());
    let (true, Some(deadline)) = (went_upstream, deadline) else {
        return;
    };
    streams.in_progress.fetch_add(1, Ordering::Relaxed);
    let held = InProgress(Arc::clone(streams));
    tokio::spawn(async move {
        tokio::time::sleep_until(deadline.into()).await;
        drop(held);
    });
}

/// An HTTP/2 request that declared `content-length: 0`: wait for the end
/// of its stream before it goes on. Pingora takes such a body as empty at
/// once; a client that then sends DATA would have the app get a complete
/// request while the client gets a reset. Any byte of DATA is a stream
/// error here instead (the `h2` crate holds the stream to its declared
/// length). Without END_STREAM at all, the body read times out as any
/// slow body does.
pub async fn await_end_of_stream(session: &mut Session) -> pingora::Result<()> {
    let ServerSession::H2(h2) = session.as_downstream_mut() else {
        return Ok(());
    };
    match h2.read_body_bytes().await? {
        None => Ok(()),
        Some(data) if data.is_empty() => Ok(()),
        Some(_) => pingora::Error::e_explain(
            pingora::ErrorType::InvalidHTTPHeader,
            "DATA on a stream that declared content-length: 0",
        ),
    }
}
