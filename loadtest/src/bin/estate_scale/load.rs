//! A steady open-loop load on the gateway while it reloads, and the few
//! blocking HTTP calls the benchmark makes to its admin listener.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::handshake;
use hyper_util::rt::TokioIo;

/// `GET path` on `addr`: the status and body, or `None` when the server
/// does not answer.
pub fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.get(9..12)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Some((status, body.to_string()))
}

/// The active policy version, as the admin API shows it.
pub fn version(admin: &str) -> Option<String> {
    let (_, body) = get(admin, "/v1/policy")?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["version"].as_str().map(str::to_string)
}

/// One request's latency, measured from when it was due (so a stalled
/// gateway is charged for the requests it kept waiting), by when it was
/// due (from the load's start).
pub struct Sample {
    /// When the request was due.
    pub due: Duration,
    /// Latency, microseconds.
    pub micros: u64,
}

/// `rate` requests a second, over `connections` kept-alive connections,
/// to `host` on `target` for `length`. Requests the gateway answers itself
/// (no key: 401), so the figures are the gateway's own.
pub fn steady(
    target: &str,
    host: &str,
    rate: u64,
    connections: usize,
    length: Duration,
) -> Vec<Sample> {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(_) => return Vec::new(),
    };
    runtime.block_on(async {
        let start = tokio::time::Instant::now();
        let every = Duration::from_secs_f64(connections as f64 / rate as f64);
        let tasks: Vec<_> = (0..connections)
            .map(|c| {
                let (target, host) = (target.to_string(), host.to_string());
                tokio::spawn(async move {
                    let mut samples = Vec::new();
                    let Ok(stream) = tokio::net::TcpStream::connect(&target).await else {
                        return samples;
                    };
                    let _ = stream.set_nodelay(true);
                    let Ok((mut sender, conn)) =
                        handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await
                    else {
                        return samples;
                    };
                    tokio::spawn(conn);
                    let mut due = start + every.mul_f64(c as f64 / connections as f64);
                    while due.duration_since(start) < length {
                        tokio::time::sleep_until(due).await;
                        let req = hyper::Request::get("/rest/orders/v1/orders")
                            .header("host", &host)
                            .body(Empty::new());
                        let Ok(req) = req else { break };
                        let Ok(resp) = sender.send_request(req).await else {
                            break;
                        };
                        let _ = resp.into_body().collect().await;
                        samples.push(Sample {
                            due: due.duration_since(start),
                            micros: Instant::now()
                                .saturating_duration_since(due.into_std())
                                .as_micros() as u64,
                        });
                        due += every;
                    }
                    samples
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            if let Ok(s) = t.await {
                all.extend(s);
            }
        }
        all
    })
}

/// The 99th percentile (ms) of the samples due within `from..to`, and how
/// many there were.
pub fn p99(samples: &[Sample], from: Duration, to: Duration) -> (f64, usize) {
    let mut window: Vec<u64> = samples
        .iter()
        .filter(|s| s.due >= from && s.due < to)
        .map(|s| s.micros)
        .collect();
    if window.is_empty() {
        return (0.0, 0);
    }
    window.sort_unstable();
    let at = ((window.len() as f64) * 0.99).ceil() as usize;
    (
        window[at.clamp(1, window.len()) - 1] as f64 / 1000.0,
        window.len(),
    )
}
