//! Fencing off a failing app: a concurrency cap per app and per route
//! (bulkhead), a circuit breaker per route (per app for its passthrough
//! paths), and a retry budget per app. On by default, without any policy
//! written; the settings are the policy's `resilience` section.
//!
//! All of it is lock-free: counters are atomics, the breaker's state one
//! atomic word, its window ten buckets. Time is the caller's (milliseconds),
//! so the state machines are tested with a fake clock.
//!
//! What counts as a failure is what the gateway itself observes of the app:
//! a connection refused or reset, an exchange broken off, a timeout, after
//! the request's retries (and the app's 5xx answers where the policy says
//! so). A request that succeeded on a retry is a success: passive ejection
//! (`routing::balancer`) deals with one bad instance; the breaker with an
//! app (or one of its routes) that fails.
//!
//! A breaker opens on a share of failures over its window, or on as many
//! failures in a row as the window needs requests (an app that breaks after
//! a good spell is fenced at once, not once its successes age out of the
//! window). A hanging app fails no request until the requests time out,
//! which may be tens of seconds. So the breaker also opens on a **stall**: at least
//! `min_requests` requests are waiting and the app has answered nothing for
//! the stall time (or ten times its usual time to answer, when longer).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use crate::policy::resilience::{BreakerSpec, Priority, ResilienceSpec, RetryBudgetSpec};

const BUCKETS: usize = 10;
/// The retry budget's window.
const RETRY_WINDOW_MS: u64 = 10_000;
/// A stall is this many times the app's usual time to answer, at least.
const STALL_FACTOR: u64 = 10;

/// Two counts over a sliding window of ten buckets.
#[derive(Debug, Default)]
struct Window {
    buckets: [Bucket; BUCKETS],
}

#[derive(Debug, Default)]
struct Bucket {
    /// The bucket's slot (`now_ms / bucket_ms`); stale buckets are reset
    /// by whoever writes to them first.
    slot: AtomicU64,
    a: AtomicU32,
    b: AtomicU32,
}

impl Window {
    fn add(&self, bucket_ms: u64, now_ms: u64, a: u32, b: u32) {
        let slot = now_ms / bucket_ms;
        let bucket = &self.buckets[(slot % BUCKETS as u64) as usize];
        let seen = bucket.slot.load(Ordering::Acquire);
        if seen != slot
            && bucket
                .slot
                .compare_exchange(seen, slot, Ordering::AcqRel, Ordering::Acquire)
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
    fn sums(&self, bucket_ms: u64, now_ms: u64) -> (u32, u32) {
        let slot = now_ms / bucket_ms;
        let oldest = slot.saturating_sub(BUCKETS as u64 - 1);
        let (mut a, mut b) = (0u32, 0u32);
        for bucket in &self.buckets {
            let s = bucket.slot.load(Ordering::Acquire);
            if (oldest..=slot).contains(&s) {
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

impl BreakerState {
    /// The state's name in events and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

/// Why a breaker changed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// `failed` of the window's `of` requests failed.
    Failures {
        /// Failed requests in the window.
        failed: u32,
        /// Requests in the window.
        of: u32,
    },
    /// `failed` requests failed in a row.
    InARow {
        /// Failures since the last success.
        failed: u32,
    },
    /// `waiting` requests had no answer for `for_ms`.
    Stalled {
        /// Requests waiting.
        waiting: u32,
        /// Milliseconds since the app last answered (or the first waited).
        for_ms: u64,
    },
    /// The cool-down passed: probes go to the app.
    CooledDown,
    /// A probe failed.
    ProbeFailed,
    /// Every probe succeeded.
    Probed,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Failures { failed, of } => write!(f, "{failed} of {of} requests failed"),
            Self::InARow { failed } => write!(f, "{failed} requests failed in a row"),
            Self::Stalled { waiting, for_ms } => {
                write!(f, "{waiting} requests unanswered for {for_ms} ms")
            }
            Self::CooledDown => f.write_str("the cool-down passed; probing the app"),
            Self::ProbeFailed => f.write_str("a probe failed"),
            Self::Probed => f.write_str("the probes succeeded"),
        }
    }
}

/// A breaker's change of state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The state left.
    pub from: BreakerState,
    /// The state entered.
    pub to: BreakerState,
    /// Why.
    pub reason: Reason,
}

/// A breaker's settings, in milliseconds.
#[derive(Debug, Clone, Copy)]
struct Tuning {
    failure_ratio: f64,
    min_requests: u32,
    bucket_ms: u64,
    cool_down_ms: u64,
    probes: u32,
    stall_ms: u64,
}

impl From<&BreakerSpec> for Tuning {
    fn from(s: &BreakerSpec) -> Self {
        Self {
            failure_ratio: s.failure_ratio,
            min_requests: s.min_requests.max(1),
            bucket_ms: (s.window.get().as_millis() as u64 / BUCKETS as u64).max(1),
            cool_down_ms: s.cool_down.get().as_millis() as u64,
            probes: s.probes.max(1),
            stall_ms: s.stall.get().as_millis() as u64,
        }
    }
}

const CLOSED: u64 = 0;
const OPEN: u64 = 1;
const HALF_OPEN: u64 = 2;
/// Bits of the waiting word that hold the count.
const COUNT_BITS: u32 = 24;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

/// A circuit breaker over the requests of one route (or app).
#[derive(Debug)]
pub struct Breaker {
    tuning: Tuning,
    /// Its state and counts: shared with the breaker of the same route
    /// under the policy version before, when it kept the window's length,
    /// so that requests let through under either judge the one breaker.
    core: Arc<Core>,
}

/// A breaker's state and counts.
#[derive(Debug)]
struct Core {
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
    /// Requests let through since the app last answered: the time the
    /// first of them was let through (ms) above [`COUNT_BITS`], their
    /// number below.
    waiting: AtomicU64,
    /// The app's usual time to answer (moving average, ms).
    usual_ms: AtomicU64,
    /// Failures since the last success, while closed.
    in_a_row: AtomicU32,
}

impl Default for Core {
    fn default() -> Self {
        Self {
            state: AtomicU64::new(CLOSED),
            window: Window::default(),
            probes: AtomicU32::new(0),
            probes_ok: AtomicU32::new(0),
            openings: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
            usual_ms: AtomicU64::new(0),
            in_a_row: AtomicU32::new(0),
        }
    }
}

#[cfg(test)]
impl Default for Breaker {
    fn default() -> Self {
        Self::new(&BreakerSpec::default())
    }
}

/// Why a request was not let through an open breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// Seconds until the app is tried again.
    pub retry_after: u64,
    /// The breaker changed state on this request (it opened on a stall).
    pub changed: Option<Transition>,
}

/// A request a breaker let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    /// It probes a half-open breaker.
    pub probe: bool,
    /// The breaker's state word when it was let through: its outcome
    /// counts only while the breaker is still in that state (a request let
    /// through before the breaker opened, or in an earlier round of
    /// probes, has no say in the present one).
    pub epoch: u64,
    /// The breaker changed state on this request (it went half-open).
    pub changed: Option<Transition>,
}

/// Let a request through a breaker, or why not.
pub type Admission = Result<Pass, Refusal>;

impl Breaker {
    /// A closed breaker with these settings.
    pub fn new(spec: &BreakerSpec) -> Self {
        Self {
            tuning: Tuning::from(spec),
            core: Arc::default(),
        }
    }

    fn load(&self) -> (u64, u64) {
        let word = self.core.state.load(Ordering::Acquire);
        (word & 3, word >> 2)
    }

    /// The state now.
    pub fn state(&self) -> BreakerState {
        match self.load().0 {
            OPEN => BreakerState::Open,
            HALF_OPEN => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }

    /// Times the breaker opened.
    pub fn openings(&self) -> u64 {
        self.core.openings.load(Ordering::Relaxed)
    }

    fn enter(&self, from: u64, since: u64, to: u64, now_ms: u64) -> bool {
        self.core
            .state
            .compare_exchange(
                from | (since << 2),
                to | (now_ms << 2),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// How long the app may leave requests unanswered before it stalls
    /// (`None`: stalls are not judged).
    fn stall_after(&self) -> Option<u64> {
        let floor = self.tuning.stall_ms;
        (floor > 0).then(|| floor.max(STALL_FACTOR * self.core.usual_ms.load(Ordering::Relaxed)))
    }

    fn open(&self, from: u64, since: u64, now_ms: u64, reason: Reason) -> Option<Transition> {
        if !self.enter(from, since, OPEN, now_ms) {
            return None;
        }
        self.core.openings.fetch_add(1, Ordering::Relaxed);
        self.core.waiting.store(0, Ordering::Relaxed);
        self.core.in_a_row.store(0, Ordering::Relaxed);
        Some(Transition {
            from: if from == HALF_OPEN {
                BreakerState::HalfOpen
            } else {
                BreakerState::Closed
            },
            to: BreakerState::Open,
            reason,
        })
    }

    fn refusal(&self, until: u64, now_ms: u64, changed: Option<Transition>) -> Refusal {
        Refusal {
            retry_after: until.saturating_sub(now_ms).div_ceil(1000).max(1),
            changed,
        }
    }

    /// May a request go to the app at `now_ms`?
    pub fn admit(&self, now_ms: u64) -> Admission {
        let mut changed = None;
        loop {
            let (state, since) = self.load();
            match state {
                CLOSED => {
                    let before = self.note_waiting(now_ms);
                    let (count, first) = (before & COUNT_MASK, before >> COUNT_BITS);
                    let waited = now_ms.saturating_sub(first);
                    let stalled = count >= u64::from(self.tuning.min_requests)
                        && self.stall_after().is_some_and(|after| waited >= after);
                    if !stalled {
                        return Ok(Pass {
                            probe: false,
                            epoch: CLOSED | (since << 2),
                            changed: None,
                        });
                    }
                    let reason = Reason::Stalled {
                        waiting: count as u32,
                        for_ms: waited,
                    };
                    let opened = self.open(CLOSED, since, now_ms, reason);
                    return Err(self.refusal(now_ms + self.tuning.cool_down_ms, now_ms, opened));
                }
                OPEN => {
                    let until = since.saturating_add(self.tuning.cool_down_ms);
                    if now_ms < until {
                        return Err(self.refusal(until, now_ms, None));
                    }
                    if self.enter(OPEN, since, HALF_OPEN, now_ms) {
                        self.core.probes.store(0, Ordering::Relaxed);
                        self.core.probes_ok.store(0, Ordering::Relaxed);
                        changed = Some(Transition {
                            from: BreakerState::Open,
                            to: BreakerState::HalfOpen,
                            reason: Reason::CooledDown,
                        });
                    }
                }
                _ => {
                    // Probes that bring no verdict within a stall (at most a
                    // cool-down) do not keep
                    // the breaker half-open: a new round of probes starts.
                    // A hanging probe fails on its timeout and opens the
                    // breaker again; meanwhile an app that healed is found
                    // by the next round.
                    let cool_down = self.tuning.cool_down_ms;
                    let patience = self.stall_after().map_or(cool_down, |s| s.min(cool_down));
                    if now_ms >= since.saturating_add(patience)
                        && self.enter(HALF_OPEN, since, HALF_OPEN, now_ms)
                    {
                        self.core.probes.store(0, Ordering::Relaxed);
                        self.core.probes_ok.store(0, Ordering::Relaxed);
                        continue;
                    }
                    // A probe, while the round has one left (counted only
                    // when taken, so a probe given back is free again).
                    let limit = self.tuning.probes;
                    let took = self
                        .core
                        .probes
                        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                            (n < limit).then_some(n + 1)
                        })
                        .is_ok();
                    return if took {
                        Ok(Pass {
                            probe: true,
                            epoch: HALF_OPEN | (since << 2),
                            changed,
                        })
                    } else {
                        Err(self.refusal(now_ms + 1, now_ms, changed))
                    };
                }
            }
        }
    }

    /// One more request waits for the app from `now_ms`; the waiting word
    /// before.
    fn note_waiting(&self, now_ms: u64) -> u64 {
        self.core
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                Some(if w & COUNT_MASK == 0 {
                    (now_ms << COUNT_BITS) | 1
                } else {
                    w + u64::from(w & COUNT_MASK < COUNT_MASK)
                })
            })
            .unwrap_or(0)
    }

    /// A request [`Breaker::admit`] let through (as a probe: `probe`) was
    /// not sent after all (a cap refused it): it is not waiting for the
    /// app, and the probe is free for another request.
    pub fn release(&self, probe: bool) {
        if probe {
            let _ = self
                .core
                .probes
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        } else {
            let _ = self
                .core
                .waiting
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                    (w & COUNT_MASK > 0).then(|| w - 1)
                });
        }
    }

    /// Take over from `before` (the same route's breaker under the policy
    /// version this one replaces) at `now_ms`. With a window of the same
    /// length the two share their state and counts: requests let through
    /// under either are judged by the one breaker. Otherwise what it knows
    /// is copied: an open breaker stays open for the rest of its
    /// cool-down, a half-open one probes again at once (its probes answer
    /// to the breaker they were let through), a closed one keeps its
    /// failures in a row and the app's usual time.
    fn carry(&mut self, before: &Breaker, now_ms: u64) {
        if self.tuning.bucket_ms == before.tuning.bucket_ms {
            self.core = Arc::clone(&before.core);
            return;
        }
        let (state, since) = before.load();
        let word = match state {
            OPEN => OPEN | (since << 2),
            HALF_OPEN => OPEN | (now_ms.saturating_sub(self.tuning.cool_down_ms) << 2),
            _ => CLOSED,
        };
        let (old, new) = (&before.core, &self.core);
        new.state.store(word, Ordering::Release);
        new.openings.store(before.openings(), Ordering::Relaxed);
        new.usual_ms
            .store(old.usual_ms.load(Ordering::Relaxed), Ordering::Relaxed);
        if state == CLOSED {
            new.in_a_row
                .store(old.in_a_row.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }

    /// The state word now (what [`Pass::epoch`] is compared with).
    #[cfg(test)]
    pub fn epoch(&self) -> u64 {
        self.core.state.load(Ordering::Acquire)
    }

    /// The outcome of a request let through at `since_ms` (`pass`):
    /// answered, or not (`failed`), at `now_ms`. Any answer shows the app
    /// answers (the stall count starts again) and teaches its usual time;
    /// the verdict counts only in the state the request was let through in.
    /// Returns the breaker's change of state, if this outcome made one.
    pub fn record(
        &self,
        failed: bool,
        since_ms: u64,
        now_ms: u64,
        pass: Pass,
    ) -> Option<Transition> {
        self.core.waiting.store(0, Ordering::Relaxed);
        if !failed {
            // The usual time to answer: a moving average over about eight
            // answers, of every answer (a probe's too, so that an app that
            // became slow but answers is learnt, not judged stalled again).
            let took = now_ms.saturating_sub(since_ms);
            let usual = self.core.usual_ms.load(Ordering::Relaxed);
            let next = if usual == 0 {
                took
            } else {
                (usual * 7 + took) / 8
            };
            self.core.usual_ms.store(next, Ordering::Relaxed);
        }
        let (state, since) = self.load();
        if state | (since << 2) != pass.epoch {
            return None;
        }
        let t = &self.tuning;
        match state {
            CLOSED => {
                self.core
                    .window
                    .add(t.bucket_ms, now_ms, u32::from(!failed), u32::from(failed));
                if !failed {
                    if self.core.in_a_row.load(Ordering::Relaxed) != 0 {
                        self.core.in_a_row.store(0, Ordering::Relaxed);
                    }
                    return None;
                }
                let in_a_row = self.core.in_a_row.fetch_add(1, Ordering::AcqRel) + 1;
                let (ok, bad) = self.core.window.sums(t.bucket_ms, now_ms);
                let total = ok + bad;
                let tripped =
                    total >= t.min_requests && f64::from(bad) >= t.failure_ratio * f64::from(total);
                if tripped {
                    return self.open(
                        CLOSED,
                        since,
                        now_ms,
                        Reason::Failures {
                            failed: bad,
                            of: total,
                        },
                    );
                }
                // As many failures in a row as the window needs requests:
                // the app broke just now, however well it did before.
                if in_a_row >= t.min_requests {
                    return self.open(CLOSED, since, now_ms, Reason::InARow { failed: in_a_row });
                }
                None
            }
            HALF_OPEN if failed => self.open(HALF_OPEN, since, now_ms, Reason::ProbeFailed),
            HALF_OPEN => {
                let ok = self.core.probes_ok.fetch_add(1, Ordering::AcqRel) + 1;
                if ok >= t.probes && self.enter(HALF_OPEN, since, CLOSED, now_ms) {
                    self.core.window.clear();
                    return Some(Transition {
                        from: BreakerState::HalfOpen,
                        to: BreakerState::Closed,
                        reason: Reason::Probed,
                    });
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
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    min_retries: u32,
    /// Requests (`a`) and retries (`b`) over the window.
    window: Window,
    /// Retries refused.
    refused: AtomicU64,
}

#[cfg(test)]
impl Default for RetryBudget {
    fn default() -> Self {
        Self::new(&RetryBudgetSpec::default())
    }
}

impl RetryBudget {
    /// A budget with these settings.
    pub fn new(spec: &RetryBudgetSpec) -> Self {
        Self {
            ratio: spec.ratio,
            min_retries: spec.min_retries,
            window: Window::default(),
            refused: AtomicU64::new(0),
        }
    }

    /// A request began.
    pub fn request(&self, now_ms: u64) {
        self.window
            .add(RETRY_WINDOW_MS / BUCKETS as u64, now_ms, 1, 0);
    }

    /// May one more retry be made at `now_ms`? Counts it when so.
    pub fn retry(&self, now_ms: u64) -> bool {
        let bucket_ms = RETRY_WINDOW_MS / BUCKETS as u64;
        let (requests, retries) = self.window.sums(bucket_ms, now_ms);
        let allowed = (self.ratio * f64::from(requests)) as u32;
        if retries >= allowed.max(self.min_retries) {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        self.window.add(bucket_ms, now_ms, 0, 1);
        true
    }

    /// Retries refused since the budget was made.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// What is in flight under a cap, and what it shed: shared by the caps of
/// successive policy versions that keep the app (or route), so a request
/// let in under one version and one under the next count against the same
/// cap.
#[derive(Debug, Default)]
struct Load {
    in_flight: AtomicU32,
    shed: AtomicU64,
}

/// A concurrency cap: requests in flight and the most allowed.
#[derive(Debug)]
pub struct Cap {
    load: Arc<Load>,
    /// Most requests allowed in flight.
    pub limit: u32,
}

impl Cap {
    fn new(limit: u32) -> Self {
        Self {
            load: Arc::default(),
            limit,
        }
    }

    /// A cap of `limit` over what `before` has in flight.
    fn sharing(before: &Cap, limit: u32) -> Self {
        Self {
            load: Arc::clone(&before.load),
            limit,
        }
    }

    /// A slot, while fewer than `limit` (at most the cap) are in flight;
    /// a refusal counts as shed when `count`.
    fn take(&self, limit: u32, count: bool) -> bool {
        let before = self.load.in_flight.fetch_add(1, Ordering::SeqCst);
        if before >= limit {
            self.load.in_flight.fetch_sub(1, Ordering::SeqCst);
            if count {
                self.note_shed();
            }
            return false;
        }
        true
    }

    fn give_back(&self) {
        // Sequentially consistent with a waiter joining the queue (see
        // `AppFence::join_queue`).
        self.load.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    fn note_shed(&self) {
        self.load.shed.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> u32 {
        self.load.in_flight.load(Ordering::Relaxed)
    }

    /// Requests shed at the cap since the app (or route) got it.
    pub fn shed(&self) -> u64 {
        self.load.shed.load(Ordering::Relaxed)
    }
}

/// One route's fences: its breaker and, where the policy sets one, its cap.
#[derive(Debug)]
pub struct RouteFence {
    /// The route's id.
    id: String,
    /// The route's breaker.
    pub breaker: Breaker,
    /// The route's own cap (within the app's).
    pub cap: Option<Cap>,
}

/// One app's fences.
#[derive(Debug)]
pub struct AppFence {
    /// The app's cap.
    pub cap: Cap,
    /// The breakers judge requests (off: they stay closed).
    pub breaking: bool,
    /// The app's 5xx answers count as failures.
    pub count_5xx: bool,
    /// The app's breaker (its passthrough paths).
    pub breaker: Breaker,
    /// One fence per declared route, by route index.
    pub routes: Vec<RouteFence>,
    /// The app's retry budget.
    pub retries: RetryBudget,
    /// Most requests waiting for a slot (0: none wait).
    queue_size: u32,
    /// Longest a request waits for a slot, in milliseconds.
    queue_wait_ms: u64,
    /// What the app holds beyond its cap's count, shared like it.
    held: Arc<Held>,
}

/// What an app holds beyond its requests in flight: idle connections, its
/// consumers' shares, its queue. Shared by the fences of successive policy
/// versions that keep the app.
#[derive(Debug)]
struct Held {
    /// The app's cap under the policy version in service (what its idle
    /// connections, whichever version kept them, are swept against).
    limit: AtomicU32,
    /// Idle connections to the app kept for reuse.
    idle: AtomicU32,
    /// Requests in flight per consumer slot.
    consumers: [AtomicU32; CONSUMER_SLOTS],
    /// Requests waiting for a slot.
    queued: AtomicU32,
    /// Woken when a slot is freed while requests wait.
    freed: tokio::sync::Notify,
}

impl Default for Held {
    fn default() -> Self {
        Self {
            limit: AtomicU32::new(u32::MAX),
            idle: AtomicU32::new(0),
            consumers: std::array::from_fn(|_| AtomicU32::new(0)),
            queued: AtomicU32::new(0),
            freed: tokio::sync::Notify::new(),
        }
    }
}

/// An idle connection to an app, kept for reuse: counted against the app's
/// cap and the gateway's share of idle connections while it lives.
#[derive(Debug)]
pub struct IdleSlot(Arc<AppFence>);

impl IdleSlot {
    /// The app's requests in flight and idle connections are over its cap:
    /// this connection should go.
    pub fn over(&self) -> bool {
        self.0.sockets_over()
    }

    /// Is this the connection of `fence`'s app?
    pub fn of(&self, fence: &Arc<AppFence>) -> bool {
        Arc::ptr_eq(&self.0.held, &fence.held)
    }
}

impl Drop for IdleSlot {
    fn drop(&mut self) {
        self.0.held.idle.fetch_sub(1, Ordering::AcqRel);
        crate::capacity::idle_gone(1);
    }
}

impl AppFence {
    /// Fences for an app whose routes have `route_ids`, with the defaults.
    #[cfg(test)]
    pub fn new<'a>(route_ids: impl Iterator<Item = &'a str>) -> Self {
        Self::with(route_ids, &ResilienceSpec::default())
    }

    /// Fences for an app whose routes have `route_ids`, set by `spec`.
    pub fn with<'a>(route_ids: impl Iterator<Item = &'a str>, spec: &ResilienceSpec) -> Self {
        Self {
            // One app holds at most half the gateway's share of requests
            // in flight (`crate::capacity`).
            cap: Cap::new(spec.max_in_flight.min(crate::capacity::per_app_in_flight())),
            breaking: spec.breaker.enabled,
            count_5xx: spec.breaker.count_5xx,
            breaker: Breaker::new(&spec.breaker),
            routes: route_ids
                .map(|id| RouteFence {
                    id: id.to_string(),
                    breaker: Breaker::new(&spec.breaker),
                    cap: spec.routes.get(id).map(|r| Cap::new(r.max_in_flight)),
                })
                .collect(),
            retries: RetryBudget::new(&spec.retry_budget),
            queue_size: spec.queue.size,
            queue_wait_ms: spec.queue.max_wait.get().as_millis() as u64,
            held: Arc::default(),
        }
        .limited()
    }

    /// Record the cap in the shared part, for idle connections.
    fn limited(self) -> Self {
        self.held.limit.store(self.cap.limit, Ordering::Relaxed);
        self
    }

    /// These fences, taking over from `before` (the same app's under the
    /// policy version they replace) at `now_ms`: the requests it has in
    /// flight, its idle connections and queue count against these caps,
    /// and each breaker of a route kept (by id) goes on from where it was,
    /// so editing an app's settings never closes an open breaker.
    pub fn succeeding(mut self, before: &AppFence, now_ms: u64) -> Self {
        self.cap = Cap::sharing(&before.cap, self.cap.limit);
        self.held = Arc::clone(&before.held);
        self.breaker.carry(&before.breaker, now_ms);
        for route in &mut self.routes {
            let Some(old) = before.routes.iter().find(|r| r.id == route.id) else {
                continue;
            };
            route.breaker.carry(&old.breaker, now_ms);
            if let (Some(cap), Some(old_cap)) = (&route.cap, &old.cap) {
                route.cap = Some(Cap::sharing(old_cap, cap.limit));
            }
        }
        self.retries
            .refused
            .store(before.retries.refused(), Ordering::Relaxed);
        self.limited()
    }

    /// Are the app's requests in flight (each holding a socket, or about
    /// to) and its idle connections over its cap? A request of the app
    /// that needs a new connection then opens one only in place of an idle
    /// one it closes.
    pub fn sockets_over(&self) -> bool {
        // The cap in service, whichever policy version's fence this is.
        self.cap.in_flight() + self.held.idle.load(Ordering::Acquire)
            > self.held.limit.load(Ordering::Relaxed)
    }

    /// May one more idle connection to the app be kept? Only while its
    /// requests in flight and idle connections together stay under its cap
    /// (so the sockets to an app stay within it) and the gateway's share
    /// of idle connections has room.
    pub fn keep_idle(self: &Arc<Self>) -> Option<IdleSlot> {
        let idle = self.held.idle.fetch_add(1, Ordering::AcqRel);
        if self.cap.in_flight() + idle >= self.cap.limit || !crate::capacity::keep_idle() {
            self.held.idle.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(IdleSlot(Arc::clone(self)))
    }

    /// The breaker of `route` (the app's for passthrough).
    pub fn breaker(&self, route: Option<usize>) -> &Breaker {
        route
            .and_then(|r| self.routes.get(r))
            .map_or(&self.breaker, |r| &r.breaker)
    }

    fn route_cap(&self, route: Option<usize>) -> Option<&Cap> {
        self.routes.get(route?)?.cap.as_ref()
    }

    /// Every breaker of the app: its passthrough paths', then its routes'.
    pub fn breakers(&self) -> impl Iterator<Item = &Breaker> {
        std::iter::once(&self.breaker).chain(self.routes.iter().map(|r| &r.breaker))
    }

    /// Requests in flight to the app now.
    pub fn in_flight(&self) -> u32 {
        self.cap.in_flight()
    }

    /// A request gave up waiting for a slot: counted as shed at the app's
    /// cap.
    pub fn note_shed(&self) {
        self.cap.note_shed();
    }

    /// Requests waiting for a slot now.
    pub fn queued(&self) -> u32 {
        self.held.queued.load(Ordering::Relaxed)
    }

    /// The app's queue: its size and longest wait (ms); `None`: no queue.
    pub fn queue(&self) -> Option<(u32, u64)> {
        (self.queue_size > 0).then_some((self.queue_size, self.queue_wait_ms))
    }

    /// A place in the app's queue for a caller of `priority`, while it has
    /// room in the share of the queue that priority allows (as of the cap:
    /// low callers cannot fill it for the others).
    pub fn join_queue(&self, priority: Priority) -> Option<Queued> {
        let room = if self.queue_size == 0 {
            0
        } else {
            priority.of_cap(self.queue_size)
        };
        // Sequentially consistent with the release in `Fenced::drop`: a
        // slot freed after this is seen by the waiter's next try, or its
        // release sees the waiter and wakes it.
        self.held
            .queued
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < room).then_some(n + 1)
            })
            .ok()?;
        Some(Queued(Arc::clone(&self.held)))
    }

    /// A future that completes when a slot of the app is freed after it
    /// was made (enable it, then try for a slot, then await it).
    pub fn slot_freed(&self) -> tokio::sync::futures::Notified<'_> {
        self.held.freed.notified()
    }

    /// Requests shed at the app's cap and its routes' since the fence was
    /// made.
    pub fn shed(&self) -> u64 {
        self.cap.shed()
            + self
                .routes
                .iter()
                .filter_map(|r| r.cap.as_ref())
                .map(Cap::shed)
                .sum::<u64>()
    }
}

/// Who a request is from, as the fence sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// The consumer's plan's priority (`Low` when anonymous).
    pub priority: Priority,
    /// The consumer (its index in the bundle), when identified.
    pub consumer: Option<usize>,
}

#[cfg(test)]
impl Caller {
    /// An anonymous caller.
    pub const ANONYMOUS: Caller = Caller {
        priority: Priority::Low,
        consumer: None,
    };
}

/// Fair-share counters per app: a consumer's requests in flight are
/// counted in one of these slots, by a hash of its index (two consumers
/// sharing a slot share its half of the cap).
const CONSUMER_SLOTS: usize = 64;

/// The fair-share slot of consumer `index` (Fibonacci hashing: neighbours
/// in the bundle land far apart).
fn consumer_slot(index: usize) -> usize {
    ((index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize
}

/// Why a request was not let into its app's fence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    /// The breaker is open.
    Open(Refusal),
    /// The app (or the route) has as many requests in flight as it may.
    Full,
    /// The gateway has as many requests in flight as it may.
    Overloaded,
}

/// A request's place inside its app's fence: its slots under the caps
/// (held while it has a socket to the app, until its response is read),
/// and the breaker that let it through (told once, when the app answers or
/// fails to). Dropping it frees the slots.
#[derive(Debug)]
pub struct Fenced {
    fence: Arc<AppFence>,
    route: Option<usize>,
    since_ms: u64,
    /// How the breaker let it through (`None`: breakers off).
    pass: Option<Pass>,
    judged: bool,
    /// Not counted as waiting while the client streams the body.
    paused: bool,
    /// The consumer's slot of the app's fair-share counters.
    consumer: Option<usize>,
    _gateway: crate::capacity::InFlightSlot,
}

impl Fenced {
    /// Let a request of `caller` for `route` through `fence` at `now_ms`:
    /// the breaker first, then the route's cap, the app's (the share the
    /// caller's priority allows, and at most half of it for one consumer),
    /// and the gateway's. A refusal at a cap counts as shed.
    pub fn enter(
        fence: &Arc<AppFence>,
        route: Option<usize>,
        caller: Caller,
        now_ms: u64,
    ) -> Result<Self, Kept> {
        Self::try_enter(fence, route, caller, now_ms, true)
    }

    /// [`Fenced::enter`] for a request in the app's queue: a refusal at a
    /// cap is not counted (the request tries again when a slot is freed;
    /// it is counted once, if it gives up: [`AppFence::note_shed`]).
    pub fn enter_queued(
        fence: &Arc<AppFence>,
        route: Option<usize>,
        caller: Caller,
        now_ms: u64,
    ) -> Result<Self, Kept> {
        Self::try_enter(fence, route, caller, now_ms, false)
    }

    fn try_enter(
        fence: &Arc<AppFence>,
        route: Option<usize>,
        caller: Caller,
        now_ms: u64,
        count: bool,
    ) -> Result<Self, Kept> {
        let pass = if fence.breaking {
            Some(fence.breaker(route).admit(now_ms).map_err(Kept::Open)?)
        } else {
            None
        };
        // Each step taken is undone when a later one refuses.
        let route_cap = fence.route_cap(route);
        let consumer = caller.consumer.map(consumer_slot);
        let mut taken = 0;
        let kept = 'steps: {
            if route_cap.is_some_and(|c| !c.take(c.limit, count)) {
                break 'steps Some(Kept::Full);
            }
            taken = 1;
            // One consumer holds at most half the app's cap, once the app
            // is half full (before, a consumer sharing a slot with a busy
            // one is not held back).
            if let Some(slot) = consumer {
                let before = fence.held.consumers[slot].fetch_add(1, Ordering::AcqRel);
                taken = 2;
                let half = (fence.cap.limit / 2).max(1);
                if before >= half && fence.cap.in_flight() >= half {
                    if count {
                        fence.cap.note_shed();
                    }
                    break 'steps Some(Kept::Full);
                }
            }
            // A caller fills at most the share its priority allows.
            if !fence
                .cap
                .take(caller.priority.of_cap(fence.cap.limit), count)
            {
                break 'steps Some(Kept::Full);
            }
            taken = 3;
            match crate::capacity::InFlightSlot::take() {
                Some(slot) => {
                    fence.retries.request(now_ms);
                    return Ok(Self {
                        fence: Arc::clone(fence),
                        route,
                        since_ms: now_ms,
                        pass,
                        judged: false,
                        paused: false,
                        consumer,
                        _gateway: slot,
                    });
                }
                None => Some(Kept::Overloaded),
            }
        };
        if taken >= 3 {
            fence.cap.give_back();
        }
        if taken >= 2 {
            if let Some(slot) = consumer {
                fence.held.consumers[slot].fetch_sub(1, Ordering::AcqRel);
            }
        }
        if taken >= 1 {
            if let Some(c) = route_cap {
                c.give_back();
            }
        }
        // The breaker let through a request that never went: it does not
        // count as waiting, nor use up a probe.
        if let Some(pass) = pass {
            fence.breaker(route).release(pass.probe);
        }
        Err(kept.unwrap_or(Kept::Full))
    }

    /// The app answered with `status`, or failed to answer (`None`), at
    /// `now_ms`: tell the breaker, the first time only. Returns the
    /// breaker's change of state, if any.
    pub fn judge(&mut self, status: Option<u16>, now_ms: u64) -> Option<Transition> {
        if !self.fence.breaking || std::mem::replace(&mut self.judged, true) {
            return None;
        }
        let failed = match status {
            None => true,
            Some(s) => self.fence.count_5xx && s >= 500,
        };
        self.fence
            .breaker(self.route)
            .record(failed, self.since_ms, now_ms, self.pass?)
    }

    /// The client is still sending the request's body: until it has, the
    /// app cannot answer, so the request does not count as waiting for it
    /// (a client sending slowly cannot make a route look stalled).
    pub fn pause_waiting(&mut self) {
        if let (Some(Pass { probe: false, .. }), false) = (self.pass, self.paused) {
            self.paused = true;
            self.fence.breaker(self.route).release(false);
        }
    }

    /// The request's body has all been sent at `now_ms`: it waits for the
    /// app from now.
    pub fn resume_waiting(&mut self, now_ms: u64) {
        if std::mem::replace(&mut self.paused, false) {
            self.fence.breaker(self.route).note_waiting(now_ms);
        }
    }

    /// The request ends without the app having answered or failed (it was
    /// refused before reaching it, say no instance was healthy): it no
    /// longer waits for the app, and a probe is free again.
    pub fn abandon(mut self) {
        if let (Some(pass), false) = (self.pass, self.judged) {
            self.judged = true;
            self.fence.breaker(self.route).release(pass.probe);
        }
    }

    /// The breaker's change of state on letting the request through (it
    /// went half-open), once.
    pub fn take_change(&mut self) -> Option<Transition> {
        self.pass.as_mut().and_then(|p| p.changed.take())
    }

    /// The request needed a new connection and none could be made within
    /// the app's cap: counted as shed.
    pub fn shed_for_sockets(&self) {
        self.fence.cap.note_shed();
    }

    /// Its app's fence.
    pub fn fence(&self) -> &Arc<AppFence> {
        &self.fence
    }

    /// May the request be tried again: its breaker is not open, and the
    /// app's retry budget has room (a retry is counted against it when so)?
    /// `Err(true)`: the budget is spent.
    pub fn may_retry(&self, now_ms: u64) -> Result<(), bool> {
        if self.fence.breaking && self.fence.breaker(self.route).state() == BreakerState::Open {
            return Err(false);
        }
        if self.fence.retries.retry(now_ms) {
            Ok(())
        } else {
            Err(true)
        }
    }
}

impl Drop for Fenced {
    fn drop(&mut self) {
        self.fence.cap.give_back();
        let held = &self.fence.held;
        if let Some(slot) = self.consumer {
            held.consumers[slot].fetch_sub(1, Ordering::AcqRel);
        }
        if let Some(c) = self.fence.route_cap(self.route) {
            c.give_back();
        }
        if held.queued.load(Ordering::SeqCst) > 0 {
            // Every waiter tries again (a queue is small): the slot may fit
            // one the first woken cannot use (its priority's share, its
            // consumer's).
            held.freed.notify_waiters();
        }
    }
}

/// A request's place in its app's queue; leaving it (dropping) makes room.
#[derive(Debug)]
pub struct Queued(Arc<Held>);

impl Drop for Queued {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIN_REQUESTS: u32 = 20;
    const COOL_DOWN_MS: u64 = 5_000;
    const PROBES: u32 = 3;
    const BUCKET_MS: u64 = 1_000;
    const WINDOW_MS: u64 = 10_000;

    /// The pass of a request let through in the breaker's present state.
    fn current(b: &Breaker) -> Pass {
        Pass {
            probe: false,
            epoch: b.epoch(),
            changed: None,
        }
    }

    /// Let through, as a probe or not.
    fn passes(a: Admission, probe: bool) -> bool {
        a.is_ok_and(|p| p.probe == probe)
    }

    fn fail_n(b: &Breaker, n: u32, failed: bool, at: u64) -> Option<Transition> {
        let mut last = None;
        for _ in 0..n {
            if let Some(s) = b.record(failed, at, at, current(b)) {
                last = Some(s);
            }
        }
        last
    }

    fn opened(t: Option<Transition>) -> bool {
        t.is_some_and(|t| t.to == BreakerState::Open)
    }

    fn retry_after(a: Admission) -> Option<u64> {
        a.err().map(|r| r.retry_after)
    }

    #[test]
    fn a_breaker_opens_on_half_failures_of_enough_requests_and_heals_through_probes() {
        let b = Breaker::default();
        let t = 1_000_000;
        // Too few requests: no verdict.
        assert_eq!(fail_n(&b, MIN_REQUESTS - 1, true, t), None);
        assert!(passes(b.admit(t), false));
        // The twentieth, half failed: open.
        let change = fail_n(&b, 1, true, t).expect("a change");
        assert_eq!(change.to, BreakerState::Open);
        assert_eq!(change.reason, Reason::Failures { failed: 20, of: 20 });
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(
            retry_after(b.admit(t + 100)),
            Some(5),
            "seconds until it tries again"
        );
        assert_eq!(retry_after(b.admit(t + COOL_DOWN_MS - 1)), Some(1));
        // After the cool-down: three probes, no more.
        let after = t + COOL_DOWN_MS;
        for _ in 0..PROBES {
            assert!(passes(b.admit(after), true));
        }
        assert!(b.admit(after).is_err());
        assert_eq!(b.state(), BreakerState::HalfOpen);
        // All succeed: closed, with a clean window.
        let closed = fail_n(&b, PROBES, false, after).expect("closed");
        assert_eq!(
            (closed.to, closed.reason),
            (BreakerState::Closed, Reason::Probed)
        );
        assert!(passes(b.admit(after), false));
        assert_eq!(fail_n(&b, MIN_REQUESTS - 1, true, after), None);
        assert_eq!(b.openings(), 1);
    }

    #[test]
    fn failures_in_a_row_open_the_breaker_however_well_the_app_did_before() {
        let b = Breaker::default();
        fail_n(&b, 1_000, false, 0);
        assert_eq!(fail_n(&b, MIN_REQUESTS - 1, true, 1), None);
        fail_n(&b, 1, false, 1);
        assert_eq!(
            fail_n(&b, MIN_REQUESTS - 1, true, 1),
            None,
            "a success breaks the row"
        );
        let change = fail_n(&b, 1, true, 1).expect("opened");
        assert_eq!(
            change.reason,
            Reason::InARow {
                failed: MIN_REQUESTS
            }
        );
    }

    #[test]
    fn outcomes_of_requests_let_through_in_an_earlier_state_have_no_say() {
        let b = Breaker::default();
        let before: Vec<Pass> = (0..6).map(|_| b.admit(0).expect("closed")).collect();
        fail_n(&b, MIN_REQUESTS, true, 0);
        let half = COOL_DOWN_MS;
        let probes: Vec<Pass> = (0..PROBES)
            .map(|_| b.admit(half).expect("a probe"))
            .collect();
        // Requests from before the opening fail or succeed now: no verdict.
        for p in &before[..3] {
            assert_eq!(b.record(true, 0, half + 1, *p), None);
        }
        for p in &before[3..] {
            assert_eq!(b.record(false, 0, half + 1, *p), None);
        }
        assert_eq!(b.state(), BreakerState::HalfOpen);
        // The probes' answers close it.
        let mut closed = None;
        for p in probes {
            closed = closed.or(b.record(false, half, half + 2, p));
        }
        assert_eq!(closed.map(|c| c.to), Some(BreakerState::Closed));
        // A late failure of a request from the old closed period does not
        // count in the new one.
        for _ in 0..MIN_REQUESTS {
            assert_eq!(b.record(true, 0, half + 3, before[0]), None);
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn a_failed_probe_opens_the_breaker_again() {
        let b = Breaker::default();
        fail_n(&b, MIN_REQUESTS, true, 0);
        let after = COOL_DOWN_MS;
        assert!(passes(b.admit(after), true));
        let change = b
            .record(true, after, after + 10, current(&b))
            .expect("opened");
        assert_eq!(
            (change.from, change.reason),
            (BreakerState::HalfOpen, Reason::ProbeFailed)
        );
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
        fail_n(&b, 1, false, later);
        assert_eq!(fail_n(&b, MIN_REQUESTS - 2, true, later), None);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn probes_that_bring_no_verdict_are_replaced_after_a_stall() {
        let b = Breaker::default();
        fail_n(&b, MIN_REQUESTS, true, 0);
        let half = COOL_DOWN_MS;
        for _ in 0..PROBES {
            assert!(passes(b.admit(half), true));
        }
        assert!(b.admit(half + 1_999).is_err());
        assert!(passes(b.admit(half + 2_000), true), "a new probe");
    }

    #[test]
    fn a_hanging_app_opens_the_breaker_on_a_stall_before_any_timeout() {
        let b = Breaker::default();
        // The app answers in 5 ms for a while.
        for i in 0..50 {
            assert!(passes(b.admit(i * 10), false));
            assert_eq!(b.record(false, i * 10, i * 10 + 5, current(&b)), None);
        }
        // It hangs at 1 000: requests keep coming, none is answered.
        let mut t = 1_000;
        while t < 2_999 {
            assert!(passes(b.admit(t), false), "not yet stalled at {t}");
            t += 5;
        }
        let refused = b.admit(3_000).expect_err("stalled");
        let change = refused.changed.expect("opened on this request");
        assert_eq!(change.to, BreakerState::Open);
        assert!(
            matches!(change.reason, Reason::Stalled { waiting, for_ms: 2_000 } if waiting >= 300),
            "{change:?}"
        );
        assert_eq!(refused.retry_after, 5);
    }

    #[test]
    fn a_quiet_app_that_answers_slowly_is_not_stalled() {
        let b = Breaker::default();
        // Nineteen requests waiting for minutes are too few to judge.
        for _ in 0..MIN_REQUESTS - 1 {
            assert!(passes(b.admit(0), false));
        }
        assert!(passes(b.admit(300_000), false));
        // An answer starts the count again.
        b.record(false, 0, 300_001, current(&b));
        for i in 0..MIN_REQUESTS * 2 {
            assert!(passes(b.admit(300_002 + u64::from(i)), false));
        }
    }

    #[test]
    fn an_app_that_became_slow_but_answers_is_learnt_through_its_probes() {
        let b = Breaker::default();
        for i in 0..50 {
            assert!(passes(b.admit(i), false));
            b.record(false, i, i + 5, current(&b));
        }
        // Now every answer takes 3 s: the first stall opens the breaker.
        for i in 0..100 {
            let _ = b.admit(1_000 + i);
        }
        assert!(opened(b.admit(3_100).err().and_then(|r| r.changed)));
        // Its probes take 3 s too; a new round starts at the stall, and
        // the first round's answers close it.
        let half = 3_100 + COOL_DOWN_MS;
        for _ in 0..PROBES {
            assert!(passes(b.admit(half), true));
        }
        assert!(passes(b.admit(half + 2_000), true), "a second round");
        let mut closed = None;
        for _ in 0..PROBES {
            closed = closed.or(b.record(false, half, half + 3_000, current(&b)));
        }
        assert_eq!(closed.map(|c| c.to), Some(BreakerState::Closed));
        // It has learnt that answers take seconds: 3 s of waiting is no stall.
        for i in 0..200 {
            assert!(passes(b.admit(half + 3_000 + i * 20), false));
        }
    }

    #[test]
    fn stalls_are_not_judged_when_switched_off() {
        let spec = BreakerSpec {
            stall: crate::policy::model::Duration::from_millis(0),
            ..BreakerSpec::default()
        };
        let b = Breaker::new(&spec);
        for t in 0..1_000 {
            assert!(passes(b.admit(t * 100), false));
        }
    }

    #[test]
    fn the_retry_budget_is_a_share_of_requests_with_a_floor() {
        let budget = RetryBudget::default();
        let granted = (0..50).filter(|_| budget.retry(0)).count();
        assert_eq!(granted, 10, "a quiet app still retries");
        assert_eq!(budget.refused(), 40);
        for _ in 0..200 {
            budget.request(1);
        }
        let more = (0..100).filter(|_| budget.retry(1)).count();
        assert_eq!(more, 40 - 10, "20 % of 200 in all");
    }

    /// A caller that may fill the whole cap.
    const HIGH: Caller = Caller {
        priority: Priority::High,
        consumer: None,
    };

    fn spec(yaml: &str) -> ResilienceSpec {
        serde_yaml::from_str(yaml).expect("a resilience section")
    }

    #[test]
    fn the_cap_sheds_and_a_request_holds_its_slot_until_it_is_done() {
        let fence = Arc::new(AppFence::with(
            std::iter::empty(),
            &spec("max_in_flight: 2"),
        ));
        let mut a = Fenced::enter(&fence, None, HIGH, 0).expect("a slot");
        let b = Fenced::enter(&fence, None, HIGH, 0).expect("a slot");
        assert_eq!(
            Fenced::enter(&fence, None, HIGH, 0).err(),
            Some(Kept::Full),
            "shed"
        );
        assert_eq!(fence.shed(), 1);
        // Answered: judged once, the slot held until the response is read.
        assert_eq!(a.judge(Some(200), 1), None);
        assert_eq!(a.judge(None, 2), None, "judged once");
        assert_eq!(fence.in_flight(), 2);
        drop(a);
        assert_eq!(fence.in_flight(), 1);
        drop(b);
        assert_eq!(fence.in_flight(), 0);
    }

    #[test]
    fn idle_connections_and_requests_in_flight_share_the_apps_cap() {
        let fence = Arc::new(AppFence::with(
            std::iter::empty(),
            &spec("max_in_flight: 3"),
        ));
        let busy = Fenced::enter(&fence, None, HIGH, 0).expect("a slot");
        let a = fence.keep_idle().expect("1 in flight + 0 idle < 3");
        let _b = fence.keep_idle().expect("1 + 1 < 3");
        assert!(
            fence.keep_idle().is_none(),
            "1 + 2 is the cap: closed instead"
        );
        assert!(!fence.sockets_over(), "1 + 2 is not over 3");
        let extra = Fenced::enter(&fence, None, HIGH, 0).expect("a slot: 2 < 3 in flight");
        assert!(
            fence.sockets_over(),
            "2 in flight + 2 idle: a new connection must replace an idle one"
        );
        drop(extra);
        drop(busy);
        let _c = fence.keep_idle().expect("0 + 2 < 3");
        drop(a);
        assert!(
            fence.keep_idle().is_some(),
            "a slot freed when an idle one goes"
        );
    }

    #[test]
    fn a_route_cap_fences_one_route_within_the_app() {
        let fence = Arc::new(AppFence::with(
            ["export", "list"].into_iter(),
            &spec("max_in_flight: 3\nroutes: { export: { max_in_flight: 1 } }"),
        ));
        let export = Fenced::enter(&fence, Some(0), HIGH, 0).expect("a slot");
        assert_eq!(
            Fenced::enter(&fence, Some(0), HIGH, 0).err(),
            Some(Kept::Full)
        );
        let l1 = Fenced::enter(&fence, Some(1), HIGH, 0).expect("other routes go on");
        let _l2 = Fenced::enter(&fence, Some(1), HIGH, 0).expect("other routes go on");
        assert_eq!(
            Fenced::enter(&fence, Some(1), HIGH, 0).err(),
            Some(Kept::Full),
            "the app's cap"
        );
        drop(export);
        drop(l1);
        assert_eq!(fence.in_flight(), 1);
        let _again = Fenced::enter(&fence, Some(0), HIGH, 0).expect("the route's slot is free");
        assert_eq!(fence.shed(), 2);
    }

    #[test]
    fn lower_priorities_are_shed_first_and_one_consumer_holds_at_most_half() {
        let fence = Arc::new(AppFence::with(
            std::iter::empty(),
            &spec("max_in_flight: 20"),
        ));
        let caller = |priority, consumer| Caller { priority, consumer };
        let mut held = Vec::new();
        // Anonymous callers fill 15 of 20.
        while let Ok(f) = Fenced::enter(&fence, None, Caller::ANONYMOUS, 0) {
            held.push(f);
        }
        assert_eq!(held.len(), 15);
        // A consumer on a normal plan gets 3 more (90 %), on a high one the rest.
        let normal: Vec<_> = (0..5)
            .filter_map(|_| Fenced::enter(&fence, None, caller(Priority::Normal, Some(1)), 0).ok())
            .collect();
        assert_eq!(normal.len(), 3);
        let high = (0..5)
            .filter_map(|_| Fenced::enter(&fence, None, caller(Priority::High, Some(2)), 0).ok())
            .collect::<Vec<_>>();
        assert_eq!(high.len(), 2);
        drop((held, normal, high));
        // One consumer alone holds at most half the cap.
        let mine: Vec<_> = (0..20)
            .filter_map(|_| Fenced::enter(&fence, None, caller(Priority::High, Some(7)), 0).ok())
            .collect();
        assert_eq!(mine.len(), 10);
        assert!(
            Fenced::enter(&fence, None, caller(Priority::High, Some(8)), 0).is_ok(),
            "another consumer still gets in"
        );
        assert!(fence.shed() >= 10 + 2 + 3);
    }

    #[test]
    fn a_probe_a_cap_refused_is_free_for_the_next_request() {
        let fence = Arc::new(AppFence::with(
            std::iter::empty(),
            &spec("max_in_flight: 4"),
        ));
        fail_n(&fence.breaker, MIN_REQUESTS, true, 0);
        let half = COOL_DOWN_MS;
        // The cap is full (requests let through before the breaker opened).
        for _ in 0..4 {
            assert!(fence.cap.take(4, true));
        }
        for _ in 0..10 {
            assert_eq!(
                Fenced::enter(&fence, None, HIGH, half).err(),
                Some(Kept::Full)
            );
        }
        for _ in 0..4 {
            fence.cap.give_back();
        }
        // The probes were given back: the next requests probe at once.
        for _ in 0..PROBES {
            assert!(Fenced::enter(&fence, None, HIGH, half + 1).is_ok());
        }
    }

    #[test]
    fn one_route_failing_leaves_the_others_open() {
        let fence = Arc::new(AppFence::new(["a", "b"].into_iter()));
        for _ in 0..MIN_REQUESTS {
            let mut f = Fenced::enter(&fence, Some(0), Caller::ANONYMOUS, 0).expect("admitted");
            f.judge(None, 0);
        }
        assert!(Fenced::enter(&fence, Some(0), Caller::ANONYMOUS, 1).is_err());
        assert!(Fenced::enter(&fence, Some(1), Caller::ANONYMOUS, 1).is_ok());
        assert!(Fenced::enter(&fence, None, Caller::ANONYMOUS, 1).is_ok());
    }

    #[test]
    fn app_5xx_answers_count_only_where_the_policy_says_so() {
        for (yaml, opens) in [("{}", false), ("breaker: { count_5xx: true }", true)] {
            let fence = Arc::new(AppFence::with(std::iter::empty(), &spec(yaml)));
            for _ in 0..MIN_REQUESTS {
                let mut f = Fenced::enter(&fence, None, Caller::ANONYMOUS, 0).expect("admitted");
                f.judge(Some(503), 1);
            }
            assert_eq!(
                Fenced::enter(&fence, None, Caller::ANONYMOUS, 2).is_err(),
                opens,
                "{yaml}"
            );
        }
    }

    #[test]
    fn no_retry_once_the_breaker_is_open_or_the_budget_is_spent() {
        let fence = Arc::new(AppFence::with(
            std::iter::empty(),
            &spec("retry_budget: { ratio: 0, min_retries: 1 }"),
        ));
        let f = Fenced::enter(&fence, None, Caller::ANONYMOUS, 0).expect("admitted");
        assert_eq!(f.may_retry(0), Ok(()));
        assert_eq!(f.may_retry(0), Err(true), "the budget is spent");
        fail_n(&fence.breaker, MIN_REQUESTS, true, 0);
        assert_eq!(f.may_retry(0), Err(false), "the breaker is open");
    }

    #[test]
    fn going_half_open_is_a_change_reported_once() {
        let b = Breaker::default();
        assert!(opened(fail_n(&b, MIN_REQUESTS, true, 0)));
        let first = b.admit(COOL_DOWN_MS).expect("a probe");
        assert_eq!(
            first.changed,
            Some(Transition {
                from: BreakerState::Open,
                to: BreakerState::HalfOpen,
                reason: Reason::CooledDown,
            })
        );
        assert_eq!(b.admit(COOL_DOWN_MS).expect("a probe").changed, None);
    }

    #[test]
    fn new_settings_take_over_the_breakers_and_what_is_in_flight() {
        let before = Arc::new(AppFence::with(
            ["list", "gone"].into_iter(),
            &spec("routes: { list: { max_in_flight: 4 } }"),
        ));
        let held = Fenced::enter(&before, Some(0), HIGH, 0).expect("a slot");
        let idle = before.keep_idle().expect("room to keep one idle");
        assert!(opened(fail_n(
            before.breaker(Some(0)),
            MIN_REQUESTS,
            true,
            10
        )));
        Fenced::enter(&before, None, HIGH, 10).expect("a slot");
        let after = Arc::new(
            AppFence::with(
                ["new", "list"].into_iter(),
                &spec("max_in_flight: 3\nroutes: { list: { max_in_flight: 1 } }\nbreaker: { cool_down: 9s }"),
            )
            .succeeding(&before, 20),
        );
        // The open breaker stays open (the route kept, by id), the new
        // route's is closed.
        assert_eq!(after.breaker(Some(1)).state(), BreakerState::Open);
        assert_eq!(after.breaker(Some(0)).state(), BreakerState::Closed);
        assert_eq!(after.breaker(Some(1)).openings(), 1);
        assert!(after.breaker(Some(1)).admit(100).is_err());
        assert!(passes(after.breaker(Some(1)).admit(10 + 9_000), true));
        // The request in flight under the old settings counts against the
        // new caps, app and route, and so does the idle connection.
        assert_eq!(after.in_flight(), 1);
        assert_eq!(
            Fenced::enter(&after, Some(1), HIGH, 20_000).err(),
            Some(Kept::Full),
            "the route's new cap of 1 is taken"
        );
        let other = Fenced::enter(&after, None, HIGH, 20_000).expect("app cap 3: the second");
        assert!(
            !after.sockets_over(),
            "2 in flight + 1 idle (kept before): at 3"
        );
        let third = Fenced::enter(&after, None, HIGH, 20_000).expect("the third");
        assert!(after.sockets_over(), "3 in flight + the idle one");
        assert!(
            Fenced::enter(&after, None, HIGH, 20_000).is_err(),
            "3 taken"
        );
        drop((held, idle, other, third));
        assert_eq!(after.in_flight(), 0);
        assert_eq!(before.in_flight(), 0);
        assert_eq!(after.shed(), 2, "the shed counts go on too");
    }

    #[tokio::test]
    async fn the_queue_is_bounded_and_a_freed_slot_wakes_its_waiters() {
        let fence = Arc::new(AppFence::with(
            std::iter::empty(),
            &spec("max_in_flight: 1\nqueue: { size: 2, max_wait: 1s }"),
        ));
        assert_eq!(fence.queue(), Some((2, 1_000)));
        let busy = Fenced::enter(&fence, None, HIGH, 0).expect("a slot");
        let freed = fence.slot_freed();
        tokio::pin!(freed);
        freed.as_mut().enable();
        assert_eq!(
            Fenced::enter_queued(&fence, None, HIGH, 0).err(),
            Some(Kept::Full)
        );
        assert_eq!(fence.shed(), 0, "a queued try is not counted");
        let a = fence.join_queue(Priority::High).expect("room");
        assert!(
            fence.join_queue(Priority::Low).is_none(),
            "a low caller may fill 75 % of two: one place"
        );
        let b = fence.join_queue(Priority::High).expect("room");
        assert!(
            fence.join_queue(Priority::High).is_none(),
            "two wait at most"
        );
        assert_eq!(fence.queued(), 2);
        drop(busy);
        tokio::time::timeout(std::time::Duration::from_secs(5), freed)
            .await
            .expect("woken by the freed slot");
        Fenced::enter_queued(&fence, None, HIGH, 1).expect("the freed slot");
        drop((a, b));
        assert_eq!(fence.queued(), 0);
        let none = AppFence::with(std::iter::empty(), &spec("{}"));
        assert_eq!(none.queue(), None);
        assert!(
            none.join_queue(Priority::High).is_none(),
            "no queue by default"
        );
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
                    b.record(failed, now.saturating_sub(step), now, current(&b));
                }
            }
            // However it got here: within two cool-downs a request goes
            // through, or a stall opens the breaker on it, and one more
            // cool-down on a probe does.
            let later = now + 2 * COOL_DOWN_MS;
            match b.admit(later) {
                Ok(_) => {}
                Err(refused) => {
                    prop_assert!(refused.changed.is_some(), "refused without opening: {refused:?}");
                    prop_assert!(passes(b.admit(later + COOL_DOWN_MS), true));
                }
            }
        }
    }
}
