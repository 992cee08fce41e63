//! Active HTTP health probes.
//!
//! A probe is one `GET <path>` over a fresh connection with `Connection:
//! close`; a `2xx` or `3xx` status within the timeout passes. Plain HTTP only:
//! for `https` instances the probe checks that a TCP connection opens.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Probe `socket` once. `host` is sent as the Host header.
pub async fn probe(
    socket: SocketAddr,
    host: &str,
    path: &str,
    tls: bool,
    timeout: Duration,
) -> bool {
    tokio::time::timeout(timeout, probe_inner(socket, host, path, tls))
        .await
        .unwrap_or(false)
}

async fn probe_inner(socket: SocketAddr, host: &str, path: &str, tls: bool) -> bool {
    let Ok(mut stream) = TcpStream::connect(socket).await else {
        return false;
    };
    if tls {
        return true;
    }
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: gatehouse-health\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    let mut len = 0;
    // Read until the status code is in hand ("HTTP/1.1 200").
    while len < 12 {
        match stream.read(&mut buf[len..]).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => len += n,
        }
    }
    status_passes(&buf[..len])
}

fn status_passes(head: &[u8]) -> bool {
    if !head.starts_with(b"HTTP/1.") || head.len() < 12 {
        return false;
    }
    matches!(head[9], b'2' | b'3') && head[10].is_ascii_digit() && head[11].is_ascii_digit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_2xx_and_3xx_pass() {
        assert!(status_passes(b"HTTP/1.1 200 OK\r\n"));
        assert!(status_passes(b"HTTP/1.1 302 Found"));
        assert!(!status_passes(b"HTTP/1.1 503 Unavailable"));
        assert!(!status_passes(b"HTTP/1.1 404 Not Found"));
        assert!(!status_passes(b"SSH-2.0-OpenSSH"));
    }

    #[tokio::test]
    async fn probe_fails_fast_on_a_closed_port() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        assert!(!probe(addr, "x", "/health", false, Duration::from_millis(500)).await);
    }

    #[tokio::test]
    async fn probe_passes_against_a_real_server() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf).await;
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
        });
        assert!(probe(addr, "x", "/health", false, Duration::from_secs(2)).await);
    }
}
