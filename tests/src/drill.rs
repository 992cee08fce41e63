//! Fault drills: an open-loop load (a fixed rate, whatever the answers)
//! with a unique `X-Request-Id` per request, tallied by outcome, and the
//! check that every answered request is one row in ClickHouse.
//!
//! The load behaves like a well-behaved HTTP client: a GET on a kept-alive
//! connection that the server closed before any response byte is sent once
//! more (RFC 9112 §9.3.1) and counted as `retried`; a refused connection, a
//! timeout or a second failure is a failed request.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::ClickHouse;

/// Seconds each drill runs (`GATEHOUSE_DRILL_SECS`, default 8).
pub fn seconds() -> u64 {
    std::env::var("GATEHOUSE_DRILL_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8)
}

/// Requests per second (`GATEHOUSE_DRILL_RATE`, default 200).
pub fn rate() -> u32 {
    std::env::var("GATEHOUSE_DRILL_RATE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200)
}

/// What a drill's load saw.
#[derive(Debug, Default)]
pub struct Tally {
    /// Requests sent.
    pub sent: u64,
    /// Answered 2xx.
    pub ok: u64,
    /// Answered with another status, by status.
    pub failed_status: BTreeMap<u16, u64>,
    /// Not answered, by error kind.
    pub failed_error: BTreeMap<String, u64>,
    /// Sent again after a kept-alive connection closed under them.
    pub retried: u64,
    /// Request ids that got an answer (any status): each must be a row.
    pub answered: Vec<String>,
    /// Seconds from the start of the load of the first and last failure.
    pub failures_between: Option<(f64, f64)>,
    /// How long the load ran.
    pub elapsed: Duration,
}

impl Tally {
    /// Requests that failed, by status or by error.
    pub fn failed(&self) -> u64 {
        self.failed_status.values().sum::<u64>() + self.failed_error.values().sum::<u64>()
    }

    /// Seconds from the first failure to the last (0 without failures).
    pub fn recovery_s(&self) -> f64 {
        self.failures_between.map_or(0.0, |(a, b)| b - a)
    }
}

/// An open-loop load running in the background.
pub struct OpenLoad {
    stop: Arc<AtomicBool>,
    handle: tokio::task::JoinHandle<Tally>,
}

/// Send `GET {url}{path(i)}` with `Host: host` at `rate` per second, the
/// request ids `{tag}-{i}`, until [`OpenLoad::finish`].
pub fn open_load(
    url: String,
    host: &'static str,
    path: fn(u64) -> String,
    rate: u32,
    tag: &str,
) -> OpenLoad {
    let stop = Arc::new(AtomicBool::new(false));
    let tag = tag.to_string();
    let stopped = Arc::clone(&stop);
    let handle = tokio::spawn(async move {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        let tally = Arc::new(Mutex::new(Tally::default()));
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut tasks = Vec::new();
        let mut i = 0u64;
        while !stopped.load(Ordering::Relaxed) {
            tick.tick().await;
            i += 1;
            let (client, tally, url) = (client.clone(), Arc::clone(&tally), url.clone());
            let id = format!("{tag}-{i}");
            let target = format!("{url}{}", path(i));
            tasks.push(tokio::spawn(async move {
                let send = || {
                    client
                        .get(&target)
                        .header("host", host)
                        .header("x-request-id", &id)
                        .send()
                };
                let mut result = send().await;
                let mut retried = false;
                if let Err(e) = &result {
                    if !e.is_connect() && !e.is_timeout() {
                        retried = true;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        result = send().await;
                    }
                }
                let at = started.elapsed().as_secs_f64();
                let mut t = tally.lock().expect("tally");
                t.sent += 1;
                t.retried += u64::from(retried);
                let failed = match result {
                    Ok(r) => {
                        t.answered.push(id);
                        let status = r.status().as_u16();
                        if r.status().is_success() {
                            t.ok += 1;
                            false
                        } else {
                            *t.failed_status.entry(status).or_default() += 1;
                            true
                        }
                    }
                    Err(e) => {
                        let kind = if e.is_connect() {
                            "connect"
                        } else if e.is_timeout() {
                            "timeout"
                        } else {
                            "closed"
                        };
                        eprintln!("drill request {id} failed: {e:?}");
                        *t.failed_error.entry(kind.to_string()).or_default() += 1;
                        true
                    }
                };
                if failed {
                    let (first, _) = t.failures_between.unwrap_or((at, at));
                    t.failures_between = Some((first, at));
                }
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
        let mut t = std::mem::take(&mut *tally.lock().expect("tally"));
        t.elapsed = started.elapsed();
        t
    });
    OpenLoad { stop, handle }
}

impl OpenLoad {
    /// Stop sending, wait for the answers, and return the tally.
    pub async fn finish(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.await.expect("load task")
    }
}

/// The answered request ids that are not (yet) rows of `db.requests`,
/// waiting up to `within` for them to arrive.
pub fn missing_rows(
    ch: &ClickHouse,
    db: &str,
    tally: &Tally,
    tag: &str,
    within: Duration,
) -> Vec<String> {
    let start = Instant::now();
    loop {
        let stored: HashSet<String> = ch
            .query(&format!(
                "SELECT DISTINCT request_id FROM {db}.requests WHERE request_id LIKE '{tag}-%'"
            ))
            .lines()
            .map(str::to_string)
            .collect();
        let missing: Vec<String> = tally
            .answered
            .iter()
            .filter(|id| !stored.contains(*id))
            .cloned()
            .collect();
        if missing.is_empty() || start.elapsed() >= within {
            return missing;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Rows of `db.requests` with this tag (a request stored twice counts twice).
pub fn rows(ch: &ClickHouse, db: &str, tag: &str) -> u64 {
    ch.count(&format!(
        "SELECT count() FROM {db}.requests WHERE request_id LIKE '{tag}-%'"
    ))
}

/// Print the drill's line of the results table (on a line of its own,
/// also after the test harness's `test NAME ...`).
pub fn report(drill: &str, t: &Tally, rows: Option<(usize, u64)>) {
    let missing = rows.map_or("-".to_string(), |(m, _)| m.to_string());
    let stored = rows.map_or("-".to_string(), |(_, r)| r.to_string());
    println!(
        "\n| {drill} | {:.0} s | {} | {} | {} (status {:?}, error {:?}) | {} | {} | {} | {missing} | {:.2} s |",
        t.elapsed.as_secs_f64(),
        t.sent,
        t.answered.len(),
        t.failed(),
        t.failed_status,
        t.failed_error,
        t.retried,
        t.answered.len(),
        stored,
        t.recovery_s(),
    );
}
