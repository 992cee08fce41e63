//! Breaker changes as rows of `fence_events`: when a route's (or app's)
//! circuit breaker opened or closed, and why. Rare (a few a minute at most),
//! so they travel apart from the wide events: a small bounded queue the
//! request path hands them to without waiting, inserted by the telemetry
//! sink every flush. Rows ClickHouse cannot take are kept in memory and
//! tried again (up to [`KEPT`]); each change is also a log line.

use std::sync::{Arc, OnceLock};

use serde::Serialize;
use tokio::sync::mpsc;

/// Changes queued before more are dropped (counted).
const QUEUE: usize = 4096;
/// Changes kept for another try while ClickHouse is away.
pub const KEPT: usize = 10_000;

/// One change of a breaker, as stored in `fence_events` (column order).
#[derive(Debug, Clone, PartialEq, Serialize, clickhouse::Row)]
pub struct FenceEvent {
    /// When, seconds since the epoch (`DateTime`, UTC).
    pub time: u32,
    /// When, microseconds since the epoch.
    pub time_us: u64,
    /// Gateway instance.
    pub instance: Arc<str>,
    /// Policy version served.
    pub policy_version: Arc<str>,
    /// App name.
    pub app: Arc<str>,
    /// Route id (`passthrough` for the app's undeclared paths).
    pub route: Arc<str>,
    /// State left: `closed`, `open`, `half_open`.
    pub from_state: &'static str,
    /// State entered.
    pub to_state: &'static str,
    /// Why, e.g. `412 requests unanswered for 2001 ms`.
    pub reason: String,
}

static QUEUE_TX: OnceLock<mpsc::Sender<FenceEvent>> = OnceLock::new();
static INSTANCE: OnceLock<Arc<str>> = OnceLock::new();

/// Name this gateway instance in its rows (`--instance`).
pub fn set_instance(name: &str) {
    let _ = INSTANCE.set(name.into());
}

/// The receiving end for the sink; `None` once taken (one sink per process).
pub fn receiver() -> Option<mpsc::Receiver<FenceEvent>> {
    let (tx, rx) = mpsc::channel(QUEUE);
    QUEUE_TX.set(tx).ok()?;
    Some(rx)
}

/// Hand a change of the breaker of `app`'s `route` to the sink without
/// waiting (nothing when telemetry is off; dropped when the queue is full,
/// which the change's log line still records).
pub fn record(
    policy_version: &Arc<str>,
    app: &Arc<str>,
    route: &Arc<str>,
    change: &crate::pipeline::fence::Transition,
) {
    let Some(tx) = QUEUE_TX.get() else {
        return;
    };
    let us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    let _ = tx.try_send(FenceEvent {
        time: (us / 1_000_000) as u32,
        time_us: us,
        instance: INSTANCE.get().cloned().unwrap_or_else(|| "".into()),
        policy_version: Arc::clone(policy_version),
        app: Arc::clone(app),
        route: Arc::clone(route),
        from_state: change.from.as_str(),
        to_state: change.to.as_str(),
        reason: change.reason.to_string(),
    });
}
