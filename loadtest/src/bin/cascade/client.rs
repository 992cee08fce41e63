//! A small HTTP/1.1 client: kept-alive connections to one address, taken
//! from an idle stack and opened as needed (an open loop needs as many as
//! it has requests waiting), and one-off requests to the admin listener
//! and the simulators.

use std::sync::Mutex;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1::{handshake, SendRequest};
use hyper_util::rt::TokioIo;

type Sender = SendRequest<Empty<Bytes>>;

/// Kept-alive connections to one address.
pub struct Pool {
    addr: String,
    idle: Mutex<Vec<Sender>>,
}

async fn connect<B>(addr: &str) -> anyhow::Result<SendRequest<B>>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

impl Pool {
    /// A pool for `addr` (host:port).
    pub fn new(addr: &str) -> Self {
        Self {
            addr: addr.to_string(),
            idle: Mutex::new(Vec::new()),
        }
    }

    fn take(&self) -> Option<Sender> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(s) = idle.pop() {
            if s.is_ready() {
                return Some(s);
            }
        }
        None
    }

    /// `GET path` with `Host: host`: the status and the body.
    pub async fn get(&self, host: &str, path: &str) -> anyhow::Result<(u16, Bytes)> {
        let mut sender = match self.take() {
            Some(s) => s,
            None => connect(&self.addr).await?,
        };
        let req = http::Request::get(path)
            .header(http::header::HOST, host)
            .body(Empty::new())?;
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        if !sender.is_closed() {
            if let Ok(mut idle) = self.idle.lock() {
                idle.push(sender);
            }
        }
        Ok((status, body))
    }
}

/// `GET path` of `addr` on a new connection: the status and the body.
pub async fn get_text(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut sender: SendRequest<Empty<Bytes>> = connect(addr).await.ok()?;
    let req = http::Request::get(path)
        .header(http::header::HOST, addr)
        .body(Empty::new())
        .ok()?;
    let resp = sender.send_request(req).await.ok()?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// `PUT path` of `addr` with a JSON body; fails unless answered 200.
pub async fn put_json(addr: &str, path: &str, json: &str) -> anyhow::Result<()> {
    let mut sender: SendRequest<Full<Bytes>> = connect(addr).await?;
    let req = http::Request::put(path)
        .header(http::header::HOST, addr)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(json.to_string())))?;
    let status = sender.send_request(req).await?.status();
    anyhow::ensure!(status == 200, "PUT {addr}{path}: {status}");
    Ok(())
}
