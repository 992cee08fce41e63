//! The front of Pingora's proxy on the TLS listener and on the plain one
//! with `--http1-engine pingora`: HTTP/2 goes through Gatehouse's own
//! stream loop ([`super::h2`]); HTTP/1.x through Pingora's sessions, one
//! exchange at a time, with a deadline for each whole request head.
//!
//! Pingora bounds each read of a head (60 s), so a client sending a byte
//! at a time could hold a connection and its task for as long as it
//! likes. Here each head must be complete within the client timeout
//! (`--client-timeout`, as on the lean engine), counted from the end of
//! the previous exchange (or the connection's start): past it the
//! connection is closed. The phases mark the head read ([`head_read`]),
//! which they do first thing, so the deadline never cuts a request whose
//! head arrived.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;

use super::h2::{serve_h2, H2_PREFACE};
use super::Gateway;

tokio::task_local! {
    /// Set once the phases have the head of the exchange in progress.
    static HEAD_SEEN: Arc<AtomicBool>;
}

/// Mark the head of the request in progress as read (called by the first
/// phase). Outside [`Front`] (the lean engine's hand-over) it does nothing.
pub fn head_read() {
    let _ = HEAD_SEEN.try_with(|seen| seen.store(true, Ordering::Relaxed));
}

/// How long a kept-alive HTTP/1.x connection waits for its next request
/// at most (Pingora's default), besides the whole-head deadline.
const KEEPALIVE_SECS: u64 = 60;

/// A listening app: HTTP/2 through [`serve_h2`], HTTP/1.x through Pingora's
/// proxy with a whole-head deadline.
pub struct Front {
    proxy: Arc<HttpProxy<Gateway>>,
    client_timeout: Duration,
    shared: Arc<crate::runtime::Shared>,
}

impl Front {
    /// A front for `proxy` (its HTTP/2 settings are [`super::h2::options`])
    /// giving each HTTP/1.x head `client_timeout`.
    /// Its connections count in `shared`'s open connections.
    pub fn new(
        mut proxy: HttpProxy<Gateway>,
        client_timeout: Duration,
        shared: Arc<crate::runtime::Shared>,
    ) -> Self {
        proxy.h2_options = Some(super::h2::options());
        Self {
            proxy: Arc::new(proxy),
            client_timeout,
            shared,
        }
    }

    /// Serve HTTP/1.x exchanges on `stream` until it closes, is not kept
    /// alive, or a head misses its deadline.
    async fn serve_h1(&self, stream: Stream, shutdown: &ShutdownWatch) {
        let mut session = ServerSession::new_http1(stream);
        session.set_keepalive(Some(KEEPALIVE_SECS));
        session.set_keepalive_reuses_remaining(
            self.proxy
                .server_options()
                .and_then(|o| o.keepalive_request_limit),
        );
        loop {
            if *shutdown.borrow() {
                // Shutting down: this exchange is the connection's last.
                session.set_keepalive(None);
            }
            let seen = Arc::new(AtomicBool::new(false));
            let exchange = HEAD_SEEN.scope(
                Arc::clone(&seen),
                self.proxy.process_new_http(session, shutdown),
            );
            tokio::pin!(exchange);
            let deadline = tokio::time::sleep(self.client_timeout);
            tokio::pin!(deadline);
            let reused = tokio::select! {
                reused = &mut exchange => reused,
                () = &mut deadline => {
                    if !seen.load(Ordering::Relaxed) {
                        tracing::debug!("an HTTP/1 head missed its deadline; closing the connection");
                        return;
                    }
                    exchange.await
                }
            };
            let Some(reused) = reused else {
                return;
            };
            let (stream, settings) = reused.consume();
            session = ServerSession::new_http1(stream);
            if let Some(settings) = settings {
                settings.apply_to_session(&mut session);
            }
        }
    }
}

#[async_trait]
impl ServerApp for Front {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let Some(_open) = self.shared.connection() else {
            super::respond::refuse_connection(stream).await;
            return None;
        };
        let h2 = if stream.get_ssl_digest().is_some() {
            matches!(stream.selected_alpn_proto(), Some(ALPN::H2))
        } else if self.proxy.server_options().is_some_and(|o| o.h2c) {
            let mut preface = [0u8; H2_PREFACE.len()];
            stream.try_peek(&mut preface).await.ok()? && preface == *H2_PREFACE
        } else {
            false
        };
        if h2 {
            serve_h2(&self.proxy, stream, shutdown).await;
        } else {
            self.serve_h1(stream, shutdown).await;
        }
        None
    }

    async fn cleanup(&self) {
        // As the lean engine: a grace before Pingora closes its idle
        // kept-alive connections.
        tokio::time::sleep(super::http1::DRAIN_IDLE).await;
        self.proxy.http_cleanup().await;
    }
}
