//! The gateway's own capacity, set from its file-descriptor limit, so that
//! a failing app (or a flood of clients) makes it shed with a 503 instead
//! of running out of descriptors, when `accept` and every app would fail.
//!
//! At start the soft descriptor limit is raised to the hard one (as nginx's
//! `worker_rlimit_nofile` and Go's runtime do). Of that limit a reserve is
//! kept for the admin listener, telemetry, the spool, policy files and
//! logs (128 + 5 %); the rest is shared out:
//!
//! - half for client connections: a connection over it is answered
//!   `503 overloaded` and closed;
//! - a quarter for requests in flight to apps (each holds an upstream
//!   socket): a request over it is answered `503 overloaded`, and one app
//!   may hold at most half of it (its concurrency cap is lowered to that);
//! - a quarter for idle upstream connections kept for reuse.
//!
//! The counters are process-wide atomics; the limits are set once, before
//! the first request.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

/// Descriptors kept back from the shares, plus [`RESERVE_SHARE`] of the limit.
const RESERVE: u64 = 128;
/// Share of the limit kept back besides [`RESERVE`].
const RESERVE_SHARE: f64 = 0.05;

static CLIENT_CONNECTIONS: AtomicUsize = AtomicUsize::new(usize::MAX);
static IN_FLIGHT_LIMIT: AtomicU32 = AtomicU32::new(u32::MAX);
static IN_FLIGHT: AtomicU32 = AtomicU32::new(0);
static IDLE_UPSTREAM: AtomicUsize = AtomicUsize::new(usize::MAX);
static IDLE: AtomicUsize = AtomicUsize::new(0);

/// How the descriptor limit is shared out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// The process's descriptor limit.
    pub descriptors: u64,
    /// Most client connections open at once.
    pub client_connections: usize,
    /// Most requests in flight to apps at once (all apps).
    pub in_flight: u32,
    /// Most idle upstream connections kept.
    pub idle_upstream: usize,
}

impl Capacity {
    /// The shares of a limit of `descriptors`.
    pub fn of(descriptors: u64) -> Self {
        let reserve = RESERVE + (descriptors as f64 * RESERVE_SHARE) as u64;
        let usable = descriptors.saturating_sub(reserve).max(8);
        Self {
            descriptors,
            client_connections: (usable / 2) as usize,
            in_flight: u32::try_from(usable / 4).unwrap_or(u32::MAX),
            idle_upstream: (usable / 4) as usize,
        }
    }

    /// Raise the soft descriptor limit to the hard one and share it out;
    /// `None` when the limit cannot be read (no limits are set then).
    pub fn of_process() -> Option<Self> {
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
        let limit = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
            hard
        } else {
            soft
        };
        // An unlimited hard limit is not what the kernel allows a process
        // (`nr_open`); a million is.
        Some(Self::of(limit.min(1 << 20)))
    }

    /// Make these the process's limits.
    pub fn apply(self) {
        CLIENT_CONNECTIONS.store(self.client_connections, Ordering::Relaxed);
        IN_FLIGHT_LIMIT.store(self.in_flight, Ordering::Relaxed);
        IDLE_UPSTREAM.store(self.idle_upstream, Ordering::Relaxed);
    }
}

/// Most client connections open at once.
pub fn client_connections() -> usize {
    CLIENT_CONNECTIONS.load(Ordering::Relaxed)
}

/// The most one app may have in flight: half the gateway's share.
pub fn per_app_in_flight() -> u32 {
    IN_FLIGHT_LIMIT.load(Ordering::Relaxed) / 2
}

/// Requests in flight to apps now, and the most allowed.
pub fn in_flight() -> (u32, u32) {
    (
        IN_FLIGHT.load(Ordering::Relaxed),
        IN_FLIGHT_LIMIT.load(Ordering::Relaxed),
    )
}

/// A request's place in the gateway's share of requests in flight; freed
/// when dropped.
#[derive(Debug)]
pub struct InFlightSlot(());

impl InFlightSlot {
    /// A slot, or `None` when the gateway has as many in flight as it may.
    pub fn take() -> Option<Self> {
        let before = IN_FLIGHT.fetch_add(1, Ordering::AcqRel);
        if before >= IN_FLIGHT_LIMIT.load(Ordering::Relaxed) {
            IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Self(()))
    }
}

impl Drop for InFlightSlot {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Count one more idle upstream connection kept, if the share allows it.
pub fn keep_idle() -> bool {
    let before = IDLE.fetch_add(1, Ordering::AcqRel);
    if before >= IDLE_UPSTREAM.load(Ordering::Relaxed) {
        IDLE.fetch_sub(1, Ordering::AcqRel);
        return false;
    }
    true
}

/// `n` idle upstream connections were taken or closed.
pub fn idle_gone(n: usize) {
    if n > 0 {
        IDLE.fetch_sub(n, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_low_limit_is_shared_out_with_a_reserve() {
        let c = Capacity::of(2048);
        // 2048 - (128 + 102) = 1818 usable.
        assert_eq!(c.client_connections, 909);
        assert_eq!(c.in_flight, 454);
        assert_eq!(c.idle_upstream, 454);
        let sum = c.client_connections as u64 + u64::from(c.in_flight) + c.idle_upstream as u64;
        assert!(sum + 128 <= 2048);
        let big = Capacity::of(1 << 20);
        assert!(big.in_flight > 200_000 && big.client_connections > 400_000);
        assert!(Capacity::of(0).client_connections > 0, "never zero");
    }
}
