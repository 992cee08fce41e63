//! `ceiling-proxy`: the least an HTTP/1.1 reverse proxy can do per request on
//! tokio and `httparse` — a measuring stick for Gatehouse's engine, not a
//! product.
//!
//! Each client connection gets its own upstream connection. A request head
//! is parsed, its `Content-Length` body awaited, and the message is written
//! upstream byte for byte; the response comes back the same way. Nothing
//! is routed, rewritten (no `X-Forwarded-*`, no hop-by-hop removal), timed
//! out, counted or logged. Anything but `Content-Length` framing (chunked,
//! upgrades, responses delimited by close, interim responses) closes the
//! connection.
//!
//! `loadtest/ceiling.sh` serves it beside nginx and Gatehouse on the same
//! core: the gap between it and Gatehouse's passthrough is the user-space
//! work Gatehouse's engine could still shed; the kernel's share is the same
//! for all three.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Most header lines in a head.
const MAX_HEADERS: usize = 64;
/// A head longer than this closes the connection.
const MAX_HEAD: usize = 32 * 1024;
/// A body longer than this closes the connection.
const MAX_BODY: usize = 1 << 20;

#[derive(Parser, Debug)]
#[command(about = "A bare reverse proxy: the per-request floor of tokio + httparse")]
struct Args {
    /// Address to listen on.
    #[arg(long)]
    listen: SocketAddr,
    /// The one upstream every request goes to.
    #[arg(long)]
    upstream: SocketAddr,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .context("tokio runtime")?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("bind {}", args.listen))?;
        println!("listening addr={}", listener.local_addr()?);
        serve(listener, args.upstream).await
    })
}

/// Accept connections on `listener` and proxy each to `upstream`.
async fn serve(listener: TcpListener, upstream: SocketAddr) -> anyhow::Result<()> {
    loop {
        let (client, _) = listener.accept().await.context("accept")?;
        tokio::spawn(async move {
            // A connection ends on the first thing it cannot carry.
            let _ = proxy(client, upstream).await;
        });
    }
}

/// What a parsed head says about the message.
struct Head {
    /// Bytes of the head, blank line included.
    len: usize,
    /// Body bytes that follow it.
    body: usize,
}

/// Why a connection ends.
#[derive(Debug)]
enum End {
    /// The peer closed, or a read or write failed.
    Io,
    /// A message this proxy does not carry.
    Unsupported,
}

impl From<std::io::Error> for End {
    fn from(_: std::io::Error) -> Self {
        End::Io
    }
}

async fn proxy(mut client: TcpStream, upstream: SocketAddr) -> Result<(), End> {
    client.set_nodelay(true)?;
    let mut up = TcpStream::connect(upstream).await?;
    up.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut ubuf = Vec::with_capacity(16 * 1024);
    loop {
        let (request, head_request) = read_message(&mut client, &mut buf, Side::Request).await?;
        up.write_all(&buf[..request]).await?;
        buf.drain(..request);
        let side = Side::Response { head_request };
        let (response, _) = read_message(&mut up, &mut ubuf, side).await?;
        client.write_all(&ubuf[..response]).await?;
        ubuf.drain(..response);
    }
}

/// Which message a head starts.
#[derive(Clone, Copy)]
enum Side {
    Request,
    Response { head_request: bool },
}

/// Read until `buf` holds one whole message; its length, and whether it
/// was a HEAD request.
async fn read_message(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    side: Side,
) -> Result<(usize, bool), End> {
    loop {
        if let Some((head, is_head)) = parse(buf, side)? {
            let total = head.len + head.body;
            while buf.len() < total {
                read_some(stream, buf).await?;
            }
            return Ok((total, is_head));
        }
        if buf.len() > MAX_HEAD {
            return Err(End::Unsupported);
        }
        read_some(stream, buf).await?;
    }
}

async fn read_some(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), End> {
    buf.reserve(8 * 1024);
    match stream.read_buf(buf).await? {
        0 => Err(End::Io),
        _ => Ok(()),
    }
}

/// Parse the head at the start of `buf`: `None` while incomplete.
fn parse(buf: &[u8], side: Side) -> Result<Option<(Head, bool)>, End> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let (status, lines, is_head, no_body) = match side {
        Side::Request => {
            let mut req = httparse::Request::new(&mut headers);
            let status = req.parse(buf).map_err(|_| End::Unsupported)?;
            let is_head = req.method == Some("HEAD");
            (status, req.headers.len(), is_head, false)
        }
        Side::Response { head_request } => {
            let mut resp = httparse::Response::new(&mut headers);
            let status = resp.parse(buf).map_err(|_| End::Unsupported)?;
            if resp.code.is_some_and(|c| c < 200) {
                return Err(End::Unsupported);
            }
            let no_body = head_request || matches!(resp.code, Some(204 | 304));
            (status, resp.headers.len(), false, no_body)
        }
    };
    let httparse::Status::Complete(len) = status else {
        return Ok(None);
    };
    let body = body_length(&headers[..lines], side)?;
    let body = if no_body { 0 } else { body };
    if body > MAX_BODY {
        return Err(End::Unsupported);
    }
    Ok(Some((Head { len, body }, is_head)))
}

/// The body length a head declares: `Content-Length` (digits only, one
/// value), none for a request without it; anything else is unsupported.
fn body_length(headers: &[httparse::Header<'_>], side: Side) -> Result<usize, End> {
    let mut length = None;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding")
            || h.name.eq_ignore_ascii_case("upgrade")
        {
            return Err(End::Unsupported);
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            let digits = h.value.trim_ascii();
            if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
                return Err(End::Unsupported);
            }
            let n = digits
                .iter()
                .fold(0usize, |n, d| n * 10 + usize::from(d - b'0'));
            if length.is_some_and(|m| m != n) {
                return Err(End::Unsupported);
            }
            length = Some(n);
        }
    }
    match (length, side) {
        (Some(n), _) => Ok(n),
        (None, Side::Request) => Ok(0),
        (None, Side::Response { .. }) => Err(End::Unsupported),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream that answers each request on a connection with a
    /// numbered body, and reports the bytes it received.
    async fn upstream() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut buf = Vec::new();
            let mut n = 0;
            loop {
                let (len, _) = match read_message(&mut s, &mut buf, Side::Request).await {
                    Ok(m) => m,
                    Err(_) => return,
                };
                let _ = tx.send(buf.drain(..len).collect());
                n += 1;
                let body = format!("reply {n}");
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                s.write_all(reply.as_bytes()).await.expect("write");
            }
        });
        (addr, rx)
    }

    /// A client connection through a proxy to `up`.
    async fn through_proxy(up: SocketAddr) -> TcpStream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(serve(listener, up));
        TcpStream::connect(addr).await.expect("connect")
    }

    async fn exchange(c: &mut TcpStream, request: &[u8], expect_body: &str) {
        c.write_all(request).await.expect("write");
        let mut buf = Vec::new();
        let (len, _) = read_message(
            c,
            &mut buf,
            Side::Response {
                head_request: false,
            },
        )
        .await
        .expect("response");
        let text = String::from_utf8(buf[..len].to_vec()).expect("utf8");
        assert!(text.ends_with(expect_body), "{text}");
    }

    #[tokio::test]
    async fn requests_pass_byte_for_byte_on_one_upstream_connection() {
        let (up, mut seen) = upstream().await;
        let mut c = through_proxy(up).await;
        let get = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n".as_slice();
        let post = b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello".as_slice();
        exchange(&mut c, get, "reply 1").await;
        // The body comes in a later write than the head.
        c.write_all(&post[..post.len() - 3]).await.expect("write");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        exchange(&mut c, &post[post.len() - 3..], "reply 2").await;
        assert_eq!(seen.recv().await.as_deref(), Some(get));
        assert_eq!(seen.recv().await.as_deref(), Some(post));
    }

    #[tokio::test]
    async fn chunked_requests_close_the_connection() {
        let (up, mut seen) = upstream().await;
        let mut c = through_proxy(up).await;
        c.write_all(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
            .await
            .expect("write");
        let mut rest = Vec::new();
        let n = c.read_to_end(&mut rest).await.expect("read");
        assert_eq!(n, 0, "closed without a reply");
        assert!(seen.try_recv().is_err(), "nothing went upstream");
    }
}
