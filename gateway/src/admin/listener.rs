//! The admin listener as a Pingora listening service: the admin router
//! (axum) served by hyper on each connection Pingora accepts. Being one of
//! Pingora's listeners, its socket is handed to the new process in a
//! graceful upgrade together with the proxy's, so the admin API and the
//! probes never refuse a connection across an upgrade either.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use axum::extract::ConnectInfo;
use axum::Router;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;

/// Serves the admin router on the connections of its listener.
pub struct AdminApp {
    router: Router,
}

impl AdminApp {
    /// An app serving `router`.
    pub fn new(router: Router) -> Self {
        Self { router }
    }
}

#[async_trait]
impl ServerApp for AdminApp {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied())
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        // Handlers read the caller's address as axum's `ConnectInfo`.
        let router = self
            .router
            .clone()
            .layer(axum::Extension(ConnectInfo(peer)));
        let service = hyper_util::service::TowerToHyperService::new(router);
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
        tokio::pin!(conn);
        let mut watch = shutdown.clone();
        let closing = *watch.borrow();
        if closing {
            conn.as_mut().graceful_shutdown();
        }
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "admin connection ended with an error");
                }
                return None;
            }
            _ = watch.changed(), if !closing => {}
        }
        // Shutting down: finish the request being served, then close.
        conn.as_mut().graceful_shutdown();
        let _ = conn.await;
        None
    }
}
