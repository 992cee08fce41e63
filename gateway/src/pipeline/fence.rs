//! Fencing off a failing app: a concurrency cap per app (bulkhead), a
//! circuit breaker per route (per app for a passthrough app), and a retry
//! budget per app. On by default, without any policy written.
//!
//! All of it is lock-free: counters are atomics, the breaker's state one
//! atomic word, its window ten one-second buckets. Time is the caller's
//! (milliseconds), so the state machines are tested with a fake clock.
//!
//! What counts as a failure is what the gateway itself observes of the app:
//! a connection refused or reset, an exchange broken off, a timeout, after
//! the request's retries. An app's own 5xx answers are answers, not
//! failures of the app to answer. A request that succeeded on a retry is a
//! success: passive ejection (`routing::balancer`) deals with one bad
//! instance; the breaker with an app (or one of its routes) that fails.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

/// Requests in flight to one app before more are shed (503).
pub const MAX_IN_FLIGHT: u32 = 512;
/// The breaker's window.
pub const WINDOW_MS: u64 = 10_000;
/// Fewest requests in the window before the breaker judges the ratio.
pub const MIN_REQUESTS: u32 = 20;
/// Share of failed requests in the window that opens the breaker.
pub const FAILURE_RATIO: f64 = 0.5;
/// How long an open breaker answers for the app before it tries again.
pub const COOL_DOWN_MS: u64 = 5_000;
/// Requests let through to try a half-open breaker's app; all must succeed
/// to close it.
pub const PROBES: u32 = 3;
/// Share of requests that may be retried (over the window).
pub const RETRY_RATIO: f64 = 0.2;
/// Retries always allowed per window, so a quiet app can still retry.
pub const MIN_RETRIES: u32 = 10;

const BUCKETS: usize = 10;
const BUCKET_MS: u64 = WINDOW_MS / BUCKETS as u64;

/// Two counts over a sliding window of one-second buckets.
#[derive(Debug, Default)]
struct Window {
    buckets: [Bucket; BUCKETS],
}

#[derive(Debug, Default)]
struct Bucket {
    /// The bucket's second (`now_ms / BUCKET_MS`); stale buckets are reset
    /// by whoever writes to them first.
    second: AtomicU64,
    a: AtomicU32,
    b: AtomicU32,
}

impl Window {
    fn add(&self, now_ms: u64, a: u32, b: u32) {
        let second = now_ms / BUCKET_MS;
        let bucket = &self.buckets[(second % BUCKETS as u64) as usize];
        let seen = bucket.second.load(Ordering::Acquire);
        if seen != second
            && bucket
                .second
                .compare_exchange(seen, second, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            bucket.a.store(0, Ordering::Relaxed);
            bucket.b.store(0, Ordering::Relaxed);
        }
        if a > 0 {
            bucket.a.fetch_add(a, Ordering::Relaxed);
        }
        if b > 0 {
            bucket.b.fetch_add(b, Ordering::Relaxed);
        }
    }

    /// The sums over the window ending at `now_ms`.
    fn sums(&self, now_ms: u64) -> (u32, u32) {
        let second = now_ms / BUCKET_MS;
        let oldest = second.saturating_sub(BUCKETS as u64 - 1);
        let (mut a, mut b) = (0u32, 0u32);
        for bucket in &self.buckets {
            let s = bucket.second.load(Ordering::Acquire);
            if (oldest..=second).contains(&s) {
                a = a.saturating_add(bucket.a.load(Ordering::Relaxed));
                b = b.saturating_add(bucket.b.load(Ordering::Relaxed));
            }
        }
        (a, b)
    }

    fn clear(&self) {
        for bucket in &self.buckets {
            bucket.a.store(0, Ordering::Relaxed);
            bucket.b.store(0, Ordering::Relaxed);
        }
    }
}

/// A breaker's state, as `/metrics` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Requests go to the app.
    Closed,
    /// The app is answered for (503) until the cool-down ends.
    Open,
    /// A few probe requests go to the app.
    HalfOpen,
}

const CLOSED: u64 = 0;
const OPEN: u64 = 1;
const HALF_OPEN: u64 = 2;

/// A circuit breaker over the requests of one route (or app).
#[derive(Debug, Default)]
pub struct Breaker {
    /// State in the low two bits, the time it was entered (ms) above them.
    state: AtomicU64,
    /// Successes (`a`) and failures (`b`) while closed.
    window: Window,
    /// Probes let through since the breaker went half-open.
    probes: AtomicU32,
    /// Probes that succeeded.
    probes_ok: AtomicU32,
    /// Times it opened.
    openings: AtomicU64,
}

/// Let a request through a breaker: `Ok` (with whether it is a probe), or
/// the seconds until the app is tried again.
pub type Admission = Result<bool, u64>;

impl Breaker {
    fn load(&self) -> (u64, u64) {
        let word = self.state.load(Ordering::Acquire);
        (word & 3, word >> 2)
    }

    /// The state at `now_ms`.
    pub fn state(&self) -> BreakerState {
        match self.load().0 {
            OPEN => BreakerState::Open,
            HALF_OPEN => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }

    /// Times the breaker opened.
    pub fn openings(&self) -> u64 {
        self.openings.load(Ordering::Relaxed)
    }

    fn enter(&self, from: u64, since: u64, to: u64, now_ms: u64) -> bool {
        self.state
            .compare_exchange(
                from | (since << 2),
                to | (now_ms << 2),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// May a request go to the app at `now_ms`?
    pub fn admit(&self, now_ms: u64) -> Admission {
        loop {
            let (state, since) = self.load();
            match state {
                CLOSED => return Ok(false),
                OPEN => {
                    let until = since + COOL_DOWN_MS;
                    if now_ms < until {
                        return Err((until - now_ms).div_ceil(1000).max(1));
                    }
                    if self.enter(OPEN, since, HALF_OPEN, now_ms) {
                        self.probes.store(0, Ordering::Relaxed);
                        self.probes_ok.store(0, Ordering::Relaxed);
                    }
                }
                _ => {
                    // Probes that never reported (their clients left) do
                    // not keep the breaker half-open: after a cool-down
                    // without a verdict, a new round of probes starts.
                    if now_ms >= since + COOL_DOWN_MS
                        && self.enter(HALF_OPEN, since, HALF_OPEN, now_ms)
                    {
                        self.probes.store(0, Ordering::Relaxed);
                        self.probes_ok.store(0, Ordering::Relaxed);
                        continue;
                    }
                    return if self.probes.fetch_add(1, Ordering::AcqRel) < PROBES {
                        Ok(true)
                    } else {
                        Err(1)
                    };
                }
            }
        }
    }

    /// The outcome of a request the breaker let through. Returns the state
    /// entered, if this outcome changed it.
    pub fn record(&self, failed: bool, now_ms: u64) -> Option<BreakerState> {
        let (state, since) = self.load();
        match state {
            CLOSED => {
                self.window
                    .add(now_ms, u32::from(!failed), u32::from(failed));
                if !failed {
                    return None;
                }
                let (ok, bad) = self.window.sums(now_ms);
                let total = ok + bad;
                let tripped =
                    total >= MIN_REQUESTS && f64::from(bad) >= FAILURE_RATIO * f64::from(total);
                if tripped && self.enter(CLOSED, since, OPEN, now_ms) {
                    self.openings.fetch_add(1, Ordering::Relaxed);
                    return Some(BreakerState::Open);
                }
                None
            }
            HALF_OPEN if failed => {
                if self.enter(HALF_OPEN, since, OPEN, now_ms) {
                    self.openings.fetch_add(1, Ordering::Relaxed);
                    return Some(BreakerState::Open);
                }
                None
            }
            HALF_OPEN => {
                let ok = self.probes_ok.fetch_add(1, Ordering::AcqRel) + 1;
                if ok >= PROBES && self.enter(HALF_OPEN, since, CLOSED, now_ms) {
                    self.window.clear();
                    return Some(BreakerState::Closed);
                }
                None
            }
            // An outcome of a request let through before the breaker
            // opened: the open breaker has its verdict.
            _ => None,
        }
    }
}

/// How much of an app's traffic may be retries.
#[derive(Debug, Default)]
pub struct RetryBudget {
    /// Requests (`a`) and retries (`b`) over the window.
    window: Window,
}

impl RetryBudget {
    /// A request began.
    pub fn request(&self, now_ms: u64) {
        self.window.add(now_ms, 1, 0);
    }

    /// May one more retry be made at `now_ms`? Counts it when so.
    pub fn retry(&self, now_ms: u64) -> bool {
        let (requests, retries) = self.window.sums(now_ms);
        let allowed = (RETRY_RATIO * f64::from(requests)) as u32;
        if retries >= allowed.max(MIN_RETRIES) {
            return false;
        }
        self.window.add(now_ms, 0, 1);
        true
    }
}

/// One app's fences.
#[derive(Debug)]
pub struct AppFence {
    /// Requests in flight to the app.
    in_flight: AtomicU32,
    /// Most requests in flight.
    pub max_in_flight: u32,
    /// The breakers judge requests (off: they stay closed).
    pub breaking: bool,
    /// The app's breaker (its passthrough paths).
    pub breaker: Breaker,
    /// One breaker per declared route, by route index.
    pub routes: Vec<Breaker>,
    /// The app's retry budget.
    pub retries: RetryBudget,
    /// Requests shed at the cap.
    shed: AtomicU64,
}

impl AppFence {
    /// Fences for an app with `routes` declared routes, with the defaults.
    pub fn new(routes: usize) -> Self {
        Self::with(routes, MAX_IN_FLIGHT, true)
    }

    /// Fences with a cap of `max_in_flight` and breakers on or off.
    pub fn with(routes: usize, max_in_flight: u32, breaking: bool) -> Self {
        Self {
            in_flight: AtomicU32::new(0),
            max_in_flight,
            breaking,
            breaker: Breaker::default(),
            routes: (0..routes).map(|_| Breaker::default()).collect(),
            retries: RetryBudget::default(),
            shed: AtomicU64::new(0),
        }
    }

    /// The breaker of `route` (the app's for passthrough).
    pub fn breaker(&self, route: Option<usize>) -> &Breaker {
        route
            .and_then(|r| self.routes.get(r))
            .unwrap_or(&self.breaker)
    }

    /// Every breaker of the app: its passthrough paths', then its routes'.
    pub fn breakers(&self) -> impl Iterator<Item = &Breaker> {
        std::iter::once(&self.breaker).chain(self.routes.iter())
    }

    /// Requests in flight to the app now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests shed at the cap since the fence was made.
    pub fn shed(&self) -> u64 {
        self.shed.load(Ordering::Relaxed)
    }
}

/// A request's place inside its app's fence: its slot under the cap, and
/// the breaker that let it through. Dropping it frees the slot.
#[derive(Debug)]
pub struct Fenced {
    fence: Arc<AppFence>,
    route: Option<usize>,
}

impl Fenced {
    /// Let a request for `route` through `fence` at `now_ms`: the breaker
    /// first (`Err(Some(seconds))`: open), then the cap (`Err(None)`: full).
    pub fn enter(
        fence: &Arc<AppFence>,
        route: Option<usize>,
        now_ms: u64,
    ) -> Result<Self, Option<u64>> {
        if fence.breaking {
            fence.breaker(route).admit(now_ms).map_err(Some)?;
        }
        let before = fence.in_flight.fetch_add(1, Ordering::AcqRel);
        if before >= fence.max_in_flight {
            fence.in_flight.fetch_sub(1, Ordering::AcqRel);
            fence.shed.fetch_add(1, Ordering::Relaxed);
            return Err(None);
        }
        fence.retries.request(now_ms);
        Ok(Self {
            fence: Arc::clone(fence),
            route,
        })
    }

    /// The app answered, or failed to (`failed`), at `now_ms`: tell the
    /// breaker and free the slot. Returns the breaker's new state, if it
    /// changed.
    pub fn finish(self, failed: bool, now_ms: u64) -> Option<BreakerState> {
        if !self.fence.breaking {
            return None;
        }
        self.fence.breaker(self.route).record(failed, now_ms)
    }

    /// May the request be tried again (the app's retry budget)?
    pub fn may_retry(&self, now_ms: u64) -> bool {
        self.fence.retries.retry(now_ms)
    }
}

impl Drop for Fenced {
    fn drop(&mut self) {
        self.fence.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fail_n(b: &Breaker, n: u32, failed: bool, at: u64) -> Option<BreakerState> {
        let mut last = None;
        for _ in 0..n {
            if let Some(s) = b.record(failed, at) {
                last = Some(s);
            }
        }
        last
    }

    #[test]
    fn a_breaker_opens_on_half_failures_of_enough_requests_and_heals_through_probes() {
        let b = Breaker::default();
        let t = 1_000_000;
        // Too few requests: no verdict.
        assert_eq!(fail_n(&b, MIN_REQUESTS - 1, true, t), None);
        assert_eq!(b.admit(t), Ok(false));
        // The twentieth, half failed: open.
        assert_eq!(fail_n(&b, 1, true, t), Some(BreakerState::Open));
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.admit(t + 100), Err(5), "seconds until it tries again");
        assert_eq!(b.admit(t + COOL_DOWN_MS - 1), Err(1));
        // After the cool-down: three probes, no more.
        let after = t + COOL_DOWN_MS;
        for _ in 0..PROBES {
            assert_eq!(b.admit(after), Ok(true));
        }
        assert_eq!(b.admit(after), Err(1));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        // All succeed: closed, with a clean window.
        assert_eq!(fail_n(&b, PROBES, false, after), Some(BreakerState::Closed));
        assert_eq!(b.admit(after), Ok(false));
        assert_eq!(fail_n(&b, MIN_REQUESTS - 1, true, after), None);
        assert_eq!(b.openings(), 1);
    }

    #[test]
    fn a_failed_probe_opens_the_breaker_again() {
        let b = Breaker::default();
        fail_n(&b, MIN_REQUESTS, true, 0);
        let after = COOL_DOWN_MS;
        assert_eq!(b.admit(after), Ok(true));
        assert_eq!(b.record(true, after + 10), Some(BreakerState::Open));
        assert!(b.admit(after + 20).is_err());
        assert_eq!(b.openings(), 2);
    }

    #[test]
    fn successes_keep_a_breaker_closed_and_old_failures_leave_the_window() {
        let b = Breaker::default();
        fail_n(&b, 15, false, 0);
        assert_eq!(fail_n(&b, 14, true, 0), None, "14 of 29 is under half");
        // Ten seconds on, the old requests are out of the window.
        let later = WINDOW_MS + BUCKET_MS;
        assert_eq!(fail_n(&b, MIN_REQUESTS - 1, true, later), None);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn probes_that_never_report_are_replaced_after_a_cool_down() {
        let b = Breaker::default();
        fail_n(&b, MIN_REQUESTS, true, 0);
        let half = COOL_DOWN_MS;
        for _ in 0..PROBES {
            assert_eq!(b.admit(half), Ok(true));
        }
        assert!(b.admit(half + COOL_DOWN_MS - 1).is_err());
        assert_eq!(b.admit(half + COOL_DOWN_MS), Ok(true), "a new probe");
    }

    #[test]
    fn the_retry_budget_is_a_share_of_requests_with_a_floor() {
        let budget = RetryBudget::default();
        let granted = (0..50).filter(|_| budget.retry(0)).count();
        assert_eq!(granted, MIN_RETRIES as usize, "a quiet app still retries");
        for _ in 0..200 {
            budget.request(1);
        }
        let more = (0..100).filter(|_| budget.retry(1)).count();
        assert_eq!(more, 40 - MIN_RETRIES as usize, "20 % of 200 in all");
    }

    #[test]
    fn the_cap_sheds_and_a_finished_request_frees_its_slot() {
        let mut fence = AppFence::new(0);
        fence.max_in_flight = 2;
        let fence = Arc::new(fence);
        let a = Fenced::enter(&fence, None, 0).expect("a slot");
        let b = Fenced::enter(&fence, None, 0).expect("a slot");
        assert_eq!(Fenced::enter(&fence, None, 0).err(), Some(None), "shed");
        assert_eq!(fence.shed(), 1);
        assert_eq!(a.finish(false, 1), None);
        assert_eq!(fence.in_flight(), 1);
        drop(b);
        assert_eq!(fence.in_flight(), 0);
    }

    #[test]
    fn one_route_failing_leaves_the_others_open() {
        let fence = Arc::new(AppFence::new(2));
        for _ in 0..MIN_REQUESTS {
            let f = Fenced::enter(&fence, Some(0), 0).expect("admitted");
            f.finish(true, 0);
        }
        assert!(Fenced::enter(&fence, Some(0), 1).is_err());
        assert!(Fenced::enter(&fence, Some(1), 1).is_ok());
        assert!(Fenced::enter(&fence, None, 1).is_ok());
    }

    proptest! {
        /// Whatever happens, once an open breaker's cool-down has passed a
        /// request is let through to probe the app.
        #[test]
        fn an_open_breaker_always_probes_after_its_cool_down(
            events in proptest::collection::vec((any::<bool>(), any::<bool>(), 0u64..3_000), 0..200)
        ) {
            let b = Breaker::default();
            let mut now = 0u64;
            for (admit, failed, step) in events {
                now += step;
                if admit {
                    let _ = b.admit(now);
                } else {
                    b.record(failed, now);
                }
            }
            // However it got here: within two cool-downs, a probe goes through.
            let later = now + 2 * COOL_DOWN_MS;
            prop_assert!(b.admit(later).is_ok());
        }
    }
}
