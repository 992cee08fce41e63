//! Failed requests in the log, at a bounded rate.
//!
//! Every request, failed ones included, is a wide event in ClickHouse; the
//! log is for the operator watching the process. During an outage (a dead
//! upstream, an app answering off-contract) one line per failure would write
//! megabytes a second and spend the proxy's CPU on it: Pingora's own error
//! line, which this module replaces, wrote 20 MB in 3 seconds of HTTP/2
//! traffic to a dead upstream. So at most [`LINES_PER_SECOND`] lines a second
//! are written; the rest are counted, the next line written says how many
//! were left out before it, and `/metrics` has the running total.
//!
//! Lines name the request id, app, route and method, never the raw path or
//! query (which may carry credentials) or any header.

use std::fmt::Display;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::context::RequestCtx;
use crate::error::GatewayError;

/// Most failure lines written in one second (per process).
pub const LINES_PER_SECOND: u32 = 20;

/// How many lines a second may be written, and what was left out.
///
/// The clock is the caller's (whole seconds), so tests drive it.
#[derive(Debug)]
pub struct LogBudget {
    per_second: u32,
    /// The second `written` counts lines for.
    second: AtomicU64,
    /// Lines written (or attempted) in `second`.
    written: AtomicU32,
    /// Lines left out since the last one written.
    pending: AtomicU64,
    /// Lines left out since the process started.
    total: AtomicU64,
}

impl LogBudget {
    /// A budget of `per_second` lines a second.
    pub const fn new(per_second: u32) -> Self {
        Self {
            per_second,
            second: AtomicU64::new(0),
            written: AtomicU32::new(0),
            pending: AtomicU64::new(0),
            total: AtomicU64::new(0),
        }
    }

    /// May a line be written in second `now`? `Some(n)`: yes, and `n` lines
    /// were left out since the last one written; `None`: no (it is counted).
    ///
    /// Lock-free; two threads crossing into a new second together may let a
    /// line or two more than the budget through, never fewer.
    pub fn admit(&self, now: u64) -> Option<u64> {
        let second = self.second.load(Ordering::Relaxed);
        if now > second
            && self
                .second
                .compare_exchange(second, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.written.store(0, Ordering::Relaxed);
        }
        if self.written.fetch_add(1, Ordering::Relaxed) < self.per_second {
            Some(self.pending.swap(0, Ordering::Relaxed))
        } else {
            self.pending.fetch_add(1, Ordering::Relaxed);
            self.total.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    /// Lines left out since the process started.
    pub fn suppressed(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

/// The cause given when the upstream failed after the client had the
/// response's head (the client got a cut-off response, not a problem).
pub const MID_RESPONSE: &str = "the upstream failed after the response had begun";

static BUDGET: LogBudget = LogBudget::new(LINES_PER_SECOND);

/// Failure lines left out since the process started (for `/metrics`).
pub fn suppressed_total() -> u64 {
    BUDGET.suppressed()
}

fn now_second() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The app's and route's names for a line (empty when not routed).
fn names(ctx: &RequestCtx) -> (&str, &str) {
    let Some(app) = ctx.app() else {
        return ("", "");
    };
    let route = ctx
        .route
        .and_then(|r| app.routes.get(r))
        .map_or("", |r| r.id.as_str());
    (app.name.as_str(), route)
}

/// Log a request the gateway could not serve (its 5xx answers: upstream
/// unreachable, failed or timed out, no healthy instance, internal error).
/// Client errors (4xx) are the client's, not failures: they are only in
/// telemetry. `cause` is the lower-level error, when there is one.
pub fn request_failed(
    ctx: &RequestCtx,
    method: &str,
    err: &GatewayError,
    cause: Option<&dyn Display>,
) {
    // 4xx are the client's; a shed or an open breaker is the gateway
    // protecting the app (its breaker's changes are logged instead).
    if err.status() < 500 || matches!(err, GatewayError::Shed | GatewayError::BreakerOpen { .. }) {
        return;
    }
    let Some(suppressed) = BUDGET.admit(now_second()) else {
        return;
    };
    let (app, route) = names(ctx);
    let status = err.status();
    let kind = err.slug();
    let id = ctx.request_id.as_str();
    let cause = cause.map(tracing::field::display);
    macro_rules! failed {
        ($level:ident) => {
            tracing::$level!(
                request_id = id,
                app,
                route,
                method,
                status,
                kind,
                cause,
                suppressed,
                "request failed"
            )
        };
    }
    if matches!(err, GatewayError::Internal) {
        failed!(error);
    } else {
        failed!(warn);
    }
}

/// Log an upstream response found breaking its contract (one line per
/// violation, each within the budget).
pub fn response_violation(ctx: &RequestCtx, pointer: &str, keyword: &str) {
    let Some(suppressed) = BUDGET.admit(now_second()) else {
        return;
    };
    let (app, route) = names(ctx);
    tracing::warn!(request_id = %ctx.request_id, app, route, pointer, keyword, suppressed,
        "upstream response violates the contract");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_admits_its_budget_then_counts_what_it_leaves_out() {
        let budget = LogBudget::new(3);
        let admitted: Vec<_> = (0..5).map(|_| budget.admit(100)).collect();
        assert_eq!(admitted, [Some(0), Some(0), Some(0), None, None]);
        assert_eq!(budget.suppressed(), 2);
        // The next second's first line reports the two left out, once.
        assert_eq!(budget.admit(101), Some(2));
        assert_eq!(budget.admit(101), Some(0));
        assert_eq!(budget.suppressed(), 2);
    }

    #[test]
    fn a_quiet_gap_leaves_the_count_for_the_next_line() {
        let budget = LogBudget::new(1);
        assert_eq!(budget.admit(10), Some(0));
        assert_eq!(budget.admit(10), None);
        assert_eq!(budget.admit(10), None);
        // Minutes later: the first line says what the storm's tail lost.
        assert_eq!(budget.admit(300), Some(2));
        assert_eq!(budget.admit(300), None);
        assert_eq!(budget.suppressed(), 3);
    }

    #[test]
    fn a_clock_that_steps_back_keeps_the_current_second() {
        let budget = LogBudget::new(1);
        assert_eq!(budget.admit(50), Some(0));
        // A wall clock stepped back does not reopen the budget.
        assert_eq!(budget.admit(49), None);
        assert_eq!(budget.admit(51), Some(1));
    }

    #[test]
    fn threads_within_one_second_share_its_budget_exactly() {
        let budget = std::sync::Arc::new(LogBudget::new(10));
        // The second is entered here, so no thread races to reset it.
        assert_eq!(budget.admit(7), Some(0));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let b = std::sync::Arc::clone(&budget);
                std::thread::spawn(move || (0..1000).filter(|_| b.admit(7).is_some()).count())
            })
            .collect();
        let written: usize = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
        assert_eq!(written, 9);
        assert_eq!(budget.suppressed(), 3991);
    }
}
