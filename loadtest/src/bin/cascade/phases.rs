//! The drill's phases: what the slow app does in each, the open-loop load
//! on both apps, and what is sampled while it runs (sockets to the slow
//! app, its requests in flight and breaker openings as `/metrics` shows
//! them, the requests it received).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::client::{get_text, put_json, Pool};
use super::Cli;

/// Where the drill sends its requests.
pub struct Target {
    /// The gateway's process id.
    pub pid: u32,
    /// The gateway's proxy listener.
    pub proxy: String,
    /// The gateway's admin listener.
    pub admin: String,
    /// The slow app's instances.
    pub slow: Vec<String>,
}

/// One phase of the slow app.
pub struct Phase {
    /// Its name in the table.
    pub name: &'static str,
    /// The slow app's behaviour (lowcode-sim's `/__sim/config`).
    behaviour: &'static str,
    /// The slow app is hanging: requests wait longer than the timeouts.
    pub hanging: bool,
    /// The phase starts when the app heals.
    pub healing: bool,
    /// The spike: the slow app gets `--spike-rate` requests per second.
    pub spike: bool,
}

/// The phases, in order. Each failure begins from a healthy app (a hang
/// that follows a 3-second slowness cannot be told from it until 3 s have
/// passed), and each is followed by healing, timed to full service.
pub const PHASES: [Phase; 7] = [
    Phase {
        name: "healthy (5 ms)",
        behaviour: r#"{"latency":"5"}"#,
        hanging: false,
        healing: false,
        spike: false,
    },
    Phase {
        name: "slow (3 s)",
        behaviour: r#"{"latency":"3000"}"#,
        hanging: false,
        healing: false,
        spike: false,
    },
    Phase {
        name: "healed after slow",
        behaviour: r#"{"latency":"5"}"#,
        hanging: false,
        healing: true,
        spike: false,
    },
    Phase {
        name: "hanging (20 s)",
        behaviour: r#"{"latency":"20000"}"#,
        hanging: true,
        healing: false,
        spike: false,
    },
    Phase {
        name: "healed after hanging",
        behaviour: r#"{"latency":"5"}"#,
        hanging: false,
        healing: true,
        spike: false,
    },
    Phase {
        name: "failing (500)",
        behaviour: r#"{"latency":"5","error_rate":1.0}"#,
        hanging: false,
        healing: false,
        spike: false,
    },
    Phase {
        name: "spike, hanging",
        behaviour: r#"{"latency":"20000"}"#,
        hanging: true,
        healing: false,
        spike: true,
    },
];

/// How a request was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// 2xx from the app.
    Ok,
    /// The app's own error answer.
    App,
    /// 503 `shed`: over the concurrency cap.
    Shed,
    /// 503 `breaker-open`.
    BreakerOpen,
    /// 503 `retry-budget`.
    RetryBudget,
    /// 504 from the gateway.
    Timeout,
    /// Another problem from the gateway (502, 503 no instance).
    Gateway,
    /// No answer (connection failed).
    NoAnswer,
}

/// One request of the drill.
#[derive(Debug, Clone, Copy)]
pub struct Rec {
    /// Sent to the slow app (else the fast one).
    pub slow: bool,
    /// When it was due, from its phase's start.
    pub sent: Duration,
    /// From when it was due to its answer.
    pub latency: Duration,
    /// How it was answered.
    pub kind: Kind,
}

/// One reading of the gateway's state, every 100 ms.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// From the phase's start.
    pub at: Duration,
    /// Open sockets from the gateway to the slow app.
    pub sockets: u32,
    /// The slow app's requests in flight (`/metrics`).
    pub in_flight: u32,
    /// Its breakers' openings so far.
    pub openings: u64,
}

/// What one phase saw.
pub struct PhaseResult {
    /// The phase.
    pub phase: &'static Phase,
    /// Requests to the slow app per second.
    pub slow_rate: u64,
    /// Its requests, both apps.
    pub recs: Vec<Rec>,
    /// Readings.
    pub samples: Vec<Sample>,
    /// Requests the slow app's instances received.
    pub received: u64,
    /// Breaker openings when the phase began.
    pub openings_before: u64,
}

struct Shared {
    phase: AtomicUsize,
    starts: Mutex<Vec<Instant>>,
    recs: Mutex<Vec<Vec<Rec>>>,
    samples: Mutex<Vec<Vec<Sample>>>,
    stop: AtomicBool,
    waiting: AtomicUsize,
}

impl Shared {
    fn now_in_phase(&self) -> (usize, Duration) {
        let phase = self.phase.load(Ordering::Acquire);
        let start = self
            .starts
            .lock()
            .map(|s| s[phase])
            .unwrap_or_else(|_| Instant::now());
        (phase, start.elapsed())
    }
}

/// The slow app's requests received so far (both instances).
async fn received(target: &Target) -> anyhow::Result<u64> {
    let mut total = 0;
    for addr in &target.slow {
        let (_, body) = get_text(addr, "/__sim/stats")
            .await
            .ok_or_else(|| anyhow::anyhow!("no stats from {addr}"))?;
        let stats: serde_json::Value = serde_json::from_str(&body)?;
        total += stats["requests"].as_u64().unwrap_or(0);
    }
    Ok(total)
}

/// The slow app's concurrency cap as the gateway set it (`/metrics`).
pub async fn slow_cap(admin: &str) -> u32 {
    let Some((_, text)) = get_text(admin, "/metrics").await else {
        return 0;
    };
    text.lines()
        .find_map(|l| l.strip_prefix("gatehouse_app_requests_in_flight_limit{app=\"slow\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// A sample of `/metrics` for the slow app: requests in flight and breaker
/// openings.
async fn metrics(admin: &str) -> (u32, u64) {
    let Some((_, text)) = get_text(admin, "/metrics").await else {
        return (0, 0);
    };
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}{{app=\"slow\"}} ")))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (
        value("gatehouse_app_requests_in_flight") as u32,
        value("gatehouse_app_breaker_openings_total") as u64,
    )
}

/// The socket inodes process `pid` holds.
fn socket_inodes(pid: u32) -> std::collections::HashSet<String> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Default::default();
    };
    fds.filter_map(|fd| {
        let link = std::fs::read_link(fd.ok()?.path()).ok()?;
        let link = link.to_str()?;
        Some(
            link.strip_prefix("socket:[")?
                .strip_suffix(']')?
                .to_string(),
        )
    })
    .collect()
}

/// Sockets the gateway (process `pid`) holds to the slow app's ports.
fn sockets_to(pid: u32, ports: &[u16]) -> u32 {
    let held = socket_inodes(pid);
    let mut n = 0;
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(remote), Some(inode)) = (cols.get(2), cols.get(9)) else {
                continue;
            };
            let port = remote
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if port.is_some_and(|p| ports.contains(&p)) && held.contains(*inode) {
                n += 1;
            }
        }
    }
    n
}

fn kind(status: u16, body: &[u8]) -> Kind {
    let text = String::from_utf8_lossy(body);
    let problem = text
        .split("\"type\":\"https://gatehouse.dev/problems/")
        .nth(1)
        .and_then(|t| t.split('"').next());
    match (status, problem) {
        (200..=399, _) => Kind::Ok,
        (_, Some("shed")) => Kind::Shed,
        (_, Some("breaker-open")) => Kind::BreakerOpen,
        (_, Some("retry-budget")) => Kind::RetryBudget,
        (504, Some(_)) => Kind::Timeout,
        (_, Some(_)) => Kind::Gateway,
        _ => Kind::App,
    }
}

/// Open-loop load on one app: requests due at `rate()` per second, each
/// timed from when it was due.
async fn load(shared: Arc<Shared>, pool: Arc<Pool>, slow: bool, rate: impl Fn(usize) -> u64) {
    let host = if slow { "slow.test" } else { "fast.test" };
    let mut next = tokio::time::Instant::now();
    let mut n = 0u64;
    while !shared.stop.load(Ordering::Acquire) {
        let (phase, _) = shared.now_in_phase();
        next += Duration::from_secs_f64(1.0 / rate(phase).max(1) as f64);
        tokio::time::sleep_until(next).await;
        // Timed from when the request was due, not from when this loop got
        // to it: a generator running late is charged to the latency.
        let due = next.into_std();
        let (phase, sent) = shared.now_in_phase();
        n += 1;
        let path = format!("/rest/orders/v1/orders/{}", n % 5000 + 1);
        let (shared, pool) = (Arc::clone(&shared), Arc::clone(&pool));
        shared.waiting.fetch_add(1, Ordering::AcqRel);
        tokio::spawn(async move {
            let answer = tokio::time::timeout(Duration::from_secs(30), pool.get(host, &path)).await;
            let kind = match answer {
                Ok(Ok((status, body))) => kind(status, &body),
                _ => Kind::NoAnswer,
            };
            let rec = Rec {
                slow,
                sent,
                latency: due.elapsed(),
                kind,
            };
            if let Ok(mut recs) = shared.recs.lock() {
                recs[phase].push(rec);
            }
            shared.waiting.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

/// Run every phase; what each saw.
pub async fn run(cli: &Cli, target: &Target) -> anyhow::Result<Vec<PhaseResult>> {
    let shared = Arc::new(Shared {
        phase: AtomicUsize::new(0),
        starts: Mutex::new(vec![Instant::now()]),
        recs: Mutex::new(PHASES.iter().map(|_| Vec::new()).collect()),
        samples: Mutex::new(PHASES.iter().map(|_| Vec::new()).collect()),
        stop: AtomicBool::new(false),
        waiting: AtomicUsize::new(0),
    });
    let pool = Arc::new(Pool::new(&target.proxy));
    let ports: Vec<u16> = target
        .slow
        .iter()
        .filter_map(|a| a.rsplit(':').next()?.parse().ok())
        .collect();
    // Phase 0 is set before the load starts.
    for addr in &target.slow {
        put_json(addr, "/__sim/config", PHASES[0].behaviour).await?;
    }
    let (rate, spike) = (cli.rate, cli.spike_rate);
    let fast = tokio::spawn(load(
        Arc::clone(&shared),
        Arc::clone(&pool),
        false,
        move |_| rate,
    ));
    let slow = tokio::spawn(load(
        Arc::clone(&shared),
        Arc::clone(&pool),
        true,
        move |p| {
            if PHASES[p].spike {
                spike
            } else {
                rate
            }
        },
    ));
    let sampler = {
        let (shared, admin, pid) = (Arc::clone(&shared), target.admin.clone(), target.pid);
        tokio::spawn(async move {
            while !shared.stop.load(Ordering::Acquire) {
                let (phase, at) = shared.now_in_phase();
                let ports = ports.clone();
                let sockets = tokio::task::spawn_blocking(move || sockets_to(pid, &ports))
                    .await
                    .unwrap_or(0);
                let (in_flight, openings) = metrics(&admin).await;
                if let Ok(mut s) = shared.samples.lock() {
                    s[phase].push(Sample {
                        at,
                        sockets,
                        in_flight,
                        openings,
                    });
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let mut counts = Vec::new();
    let mut openings = Vec::new();
    for (i, phase) in PHASES.iter().enumerate() {
        if i > 0 {
            for addr in &target.slow {
                put_json(addr, "/__sim/config", phase.behaviour).await?;
            }
            if let Ok(mut starts) = shared.starts.lock() {
                starts.push(Instant::now());
            }
            shared.phase.store(i, Ordering::Release);
        }
        let before = received(target).await?;
        openings.push(metrics(&target.admin).await.1);
        eprintln!("phase {}: {}", i + 1, phase.name);
        tokio::time::sleep(Duration::from_secs(cli.phase_secs)).await;
        counts.push(received(target).await? - before);
    }
    shared.stop.store(true, Ordering::Release);
    let _ = fast.await;
    let _ = slow.await;
    let _ = sampler.await;
    // Requests still waiting (the last phase's hanging ones) end within
    // the app's total timeout.
    let waited = Instant::now();
    while shared.waiting.load(Ordering::Acquire) > 0 && waited.elapsed() < Duration::from_secs(35) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recs = std::mem::take(
        &mut *shared
            .recs
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?,
    );
    let samples = std::mem::take(
        &mut *shared
            .samples
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?,
    );
    Ok(PHASES
        .iter()
        .zip(recs)
        .zip(samples)
        .zip(counts)
        .zip(openings)
        .map(
            |((((phase, recs), samples), received), openings_before)| PhaseResult {
                phase,
                slow_rate: if phase.spike {
                    cli.spike_rate
                } else {
                    cli.rate
                },
                recs,
                samples,
                received,
                openings_before,
            },
        )
        .collect())
}
