//! `loadgen`: an HTTP load generator for Gatehouse benchmarks.
//!
//! - closed loop (`--mode closed`): N connections, each sending its next
//!   request when the previous one completes — maximum throughput;
//! - open loop (`--mode open --rate R`): requests are *scheduled* at a
//!   constant rate (spread over the connections) and latency is measured
//!   from the intended send time, so a stalled server is charged for the
//!   requests it delayed (coordinated omission corrected, as in wrk2).
//!   Sends are released at their time by a pacer thread on the kernel's
//!   high-resolution timer (≈ 60 µs late at the median), not on tokio's
//!   millisecond ticks, which would send them in bursts once per ms.
//!
//! HTTP/1.1 keep-alive or HTTP/2 (`--h2`, streams multiplexed over a few
//! connections). A scenario file mixes apps, routes, methods and bodies (a
//! share of them invalid) and spreads requests over any number of API keys.
//! Runs on one thread (plus the pacer's, asleep between sends), so it uses
//! at most one core. Percentiles come from an
//! HDR histogram (µs resolution); `--json FILE` writes a summary.

mod pacer;
mod scenario;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

use scenario::{Prepared, Scenario};

/// HTTP load generator (closed or open loop, HTTP/1.1 or HTTP/2).
#[derive(Parser, Debug)]
#[command(name = "loadgen", version, about)]
struct Cli {
    /// Target address (host:port).
    #[arg(long)]
    target: String,
    /// Scenario file (YAML).
    #[arg(long)]
    scenario: PathBuf,
    /// closed: as fast as possible; open: constant arrival rate.
    #[arg(long, value_enum, default_value_t = Mode::Closed)]
    mode: Mode,
    /// Requests per second (open loop).
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Concurrent connections (HTTP/1.1) or streams (HTTP/2).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Measured duration, e.g. 10s.
    #[arg(long, default_value = "10s")]
    duration: humantime_duration::Arg,
    /// Unmeasured warm-up, e.g. 2s.
    #[arg(long, default_value = "2s")]
    warmup: humantime_duration::Arg,
    /// Use HTTP/2 (prior knowledge, h2c) over --h2-connections connections.
    #[arg(long)]
    h2: bool,
    /// TCP connections for HTTP/2.
    #[arg(long, default_value_t = 4)]
    h2_connections: usize,
    /// Write a JSON summary here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Label of this run in the summary.
    #[arg(long, default_value = "run")]
    label: String,
}

mod humantime_duration {
    /// A duration argument like `10s`, `500ms`, `1m`.
    #[derive(Debug, Clone, Copy)]
    pub struct Arg(pub std::time::Duration);

    impl std::str::FromStr for Arg {
        type Err = String;
        fn from_str(s: &str) -> Result<Self, String> {
            let s = s.trim();
            let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
            let n: u64 = num
                .parse()
                .map_err(|_| format!("`{s}` is not a duration like 10s"))?;
            let d = match unit {
                "ms" => std::time::Duration::from_millis(n),
                "s" | "" => std::time::Duration::from_secs(n),
                "m" => std::time::Duration::from_secs(n * 60),
                _ => return Err(format!("`{s}` is not a duration like 10s")),
            };
            Ok(Arg(d))
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Closed,
    Open,
}

/// What one worker measured.
struct Tally {
    hist: Histogram<u64>,
    statuses: BTreeMap<u16, u64>,
    errors: u64,
}

impl Tally {
    fn new() -> Self {
        Self {
            // 1 µs .. 60 s at 3 significant digits: valid constant bounds.
            hist: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds"),
            statuses: BTreeMap::new(),
            errors: 0,
        }
    }
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    async fn send(&mut self, req: http::Request<Full<Bytes>>) -> Result<(u16, usize), String> {
        let resp = match self {
            Sender::H1(s) => {
                s.ready().await.map_err(|e| e.to_string())?;
                s.send_request(req).await
            }
            Sender::H2(s) => {
                s.ready().await.map_err(|e| e.to_string())?;
                s.send_request(req).await
            }
        }
        .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body.len()))
    }
}

async fn connect_h1(target: &str) -> anyhow::Result<Sender> {
    let stream = tokio::net::TcpStream::connect(target)
        .await
        .with_context(|| format!("connecting to {target}"))?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::task::spawn_local(async move {
        let _ = conn.await;
    });
    Ok(Sender::H1(sender))
}

async fn connect_h2(
    target: &str,
) -> anyhow::Result<hyper::client::conn::http2::SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(target)
        .await
        .with_context(|| format!("connecting to {target}"))?;
    stream.set_nodelay(true)?;
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    tokio::task::spawn_local(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let scenario = Scenario::load(&cli.scenario)?;
    let prepared = Arc::new(scenario.prepare()?);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let summary = local.block_on(&rt, run(&cli, prepared))?;
    println!("{}", summary.human());
    if let Some(path) = &cli.json {
        std::fs::write(path, serde_json::to_string_pretty(&summary.json(&cli))?)?;
    }
    Ok(())
}

async fn run(cli: &Cli, prepared: Arc<Prepared>) -> anyhow::Result<Summary> {
    // HTTP/2 connections, shared by the workers; one a server closed (a
    // GOAWAY after its per-connection request cap) is opened again.
    let h2_pool = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    if cli.h2 {
        for _ in 0..cli.h2_connections.max(1) {
            let conn = connect_h2(&cli.target).await?;
            h2_pool.borrow_mut().push((0u64, conn));
        }
    }
    let start = Instant::now() + Duration::from_millis(50);
    let measure_from = start + cli.warmup.0;
    let end = measure_from + cli.duration.0;
    let conns = cli.connections.max(1);
    let interval = match cli.mode {
        Mode::Open => Some(Duration::from_secs_f64(
            conns as f64 / cli.rate.max(1) as f64,
        )),
        Mode::Closed => None,
    };
    // Open loop: sends released at their time by the pacer's thread, not on
    // tokio's millisecond ticks.
    let pacer = match interval {
        Some(_) => Some(Arc::new(pacer::Pacer::start()?)),
        None => None,
    };
    let mut handles = Vec::new();
    for w in 0..conns {
        let slot = w % h2_pool.borrow().len().max(1);
        let pool = std::rc::Rc::clone(&h2_pool);
        let mut generation = 0u64;
        let mut sender = if cli.h2 {
            Sender::H2(pool.borrow()[slot].1.clone())
        } else {
            connect_h1(&cli.target).await?
        };
        let prepared = Arc::clone(&prepared);
        let target = cli.target.clone();
        let h2 = cli.h2;
        let pacer = pacer.clone();
        handles.push(tokio::task::spawn_local(async move {
            let mut tally = Tally::new();
            let mut k: u64 = 0;
            let offset = interval
                .map(|i| i.mul_f64(w as f64 / conns as f64))
                .unwrap_or_default();
            let mut i = w;
            loop {
                let intended = match interval {
                    Some(iv) => start + offset + iv.mul_f64(k as f64),
                    None => Instant::now().max(start),
                };
                if intended >= end {
                    break;
                }
                match &pacer {
                    Some(p) => p.until(intended).await,
                    None if intended > Instant::now() => {
                        tokio::time::sleep_until(intended.into()).await;
                    }
                    None => {}
                }
                let req = prepared.request(i, h2);
                let mut result = sender.send(req).await;
                if result.is_err() && h2 {
                    // The server may be closing the connection (a GOAWAY
                    // after its per-connection request cap): open a new one
                    // for the slot (once per connection), and send the
                    // request again, once.
                    let current = pool.borrow()[slot].clone();
                    let usable = current.0 != generation || {
                        let mut probe = current.1.clone();
                        probe.ready().await.is_ok() && !probe.is_closed()
                    };
                    if !usable {
                        if let Ok(fresh) = connect_h2(&target).await {
                            if pool.borrow()[slot].0 == generation {
                                pool.borrow_mut()[slot] = (generation + 1, fresh);
                            }
                        }
                    }
                    let (g, s) = pool.borrow()[slot].clone();
                    generation = g;
                    sender = Sender::H2(s);
                    result = sender.send(prepared.request(i, h2)).await;
                }
                i = i.wrapping_add(conns);
                k += 1;
                let done = Instant::now();
                let measured = intended >= measure_from;
                match result {
                    Ok((status, _)) => {
                        if measured {
                            let us = done.saturating_duration_since(intended).as_micros() as u64;
                            let _ = tally.hist.record(us.max(1));
                            *tally.statuses.entry(status).or_default() += 1;
                        }
                    }
                    Err(_) => {
                        if measured {
                            tally.errors += 1;
                        }
                        // Reconnect (HTTP/1.1) after a broken connection.
                        if !h2 {
                            match connect_h1(&target).await {
                                Ok(s) => sender = s,
                                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                            }
                        }
                    }
                }
            }
            tally
        }));
    }
    let mut total = Tally::new();
    for h in handles {
        let t = h.await?;
        total
            .hist
            .add(&t.hist)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        for (s, n) in t.statuses {
            *total.statuses.entry(s).or_default() += n;
        }
        total.errors += t.errors;
    }
    Ok(Summary {
        tally: total,
        seconds: cli.duration.0.as_secs_f64(),
    })
}

struct Summary {
    tally: Tally,
    seconds: f64,
}

impl Summary {
    fn ms(&self, q: f64) -> f64 {
        self.tally.hist.value_at_quantile(q) as f64 / 1000.0
    }

    fn requests(&self) -> u64 {
        self.tally.statuses.values().sum()
    }

    fn human(&self) -> String {
        let mut s = format!(
            "requests {}  rps {:.0}  errors {}\nlatency ms  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}\nstatuses",
            self.requests(),
            self.requests() as f64 / self.seconds,
            self.tally.errors,
            self.ms(0.5),
            self.ms(0.9),
            self.ms(0.99),
            self.ms(0.999),
            self.tally.hist.max() as f64 / 1000.0,
        );
        for (st, n) in &self.tally.statuses {
            s.push_str(&format!("  {st}: {n}"));
        }
        s
    }

    fn json(&self, cli: &Cli) -> serde_json::Value {
        serde_json::json!({
            "label": cli.label,
            "mode": format!("{:?}", cli.mode).to_lowercase(),
            "http": if cli.h2 { "h2" } else { "http/1.1" },
            "connections": cli.connections,
            "target_rate": if cli.mode == Mode::Open { Some(cli.rate) } else { None },
            "seconds": self.seconds,
            "requests": self.requests(),
            "rps": self.requests() as f64 / self.seconds,
            "errors": self.tally.errors,
            "latency_ms": {
                "p50": self.ms(0.5), "p90": self.ms(0.9), "p99": self.ms(0.99), "p999": self.ms(0.999),
                "max": self.tally.hist.max() as f64 / 1000.0,
            },
            "statuses": self.tally.statuses.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>(),
        })
    }
}
