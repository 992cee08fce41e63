//! Upstream instances, their live state, and the balancing algorithms.
//!
//! Live state (health verdicts, ejections, in-flight counts) belongs to an
//! instance's identity (`app` + URL), not to a bundle version: a reload that
//! keeps an instance keeps its state, so a reload never resurrects a dead
//! instance nor forgets a healthy one.
//!
//! Time is passed in as milliseconds on a monotonic clock ([`now_ms`]) so the
//! state machine is tested with plain numbers, without sleeping.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use super::upstream::{Balancing, Ejection, HealthCheck, InstanceAddr, Upstream};

/// Most instances one app may have (tried instances are tracked in a `u64`).
pub const MAX_INSTANCES: usize = 64;

/// Milliseconds since the process started, on the monotonic clock.
pub fn now_ms() -> u64 {
    ms_at(Instant::now())
}

/// [`now_ms`] for a clock reading the caller already has.
pub fn ms_at(now: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    now.saturating_duration_since(*EPOCH.get_or_init(Instant::now))
        .as_millis() as u64
}

/// One upstream instance and its live state.
#[derive(Debug)]
pub struct Instance {
    /// Where it is.
    pub addr: InstanceAddr,
    /// Resolved socket address (`None` when the name did not resolve).
    pub socket: Option<SocketAddr>,
    healthy: AtomicBool,
    probe_successes: AtomicU32,
    probe_failures: AtomicU32,
    consecutive_failures: AtomicU32,
    ejected_until_ms: AtomicU64,
    in_flight: AtomicUsize,
    next_probe_ms: AtomicU64,
    requests: AtomicU64,
}

impl Instance {
    /// A new instance, assumed healthy until proven otherwise.
    pub fn new(addr: InstanceAddr, socket: Option<SocketAddr>) -> Self {
        Self {
            addr,
            socket,
            healthy: AtomicBool::new(true),
            probe_successes: AtomicU32::new(0),
            probe_failures: AtomicU32::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            next_probe_ms: AtomicU64::new(0),
            requests: AtomicU64::new(0),
        }
    }

    /// May it receive traffic at `now`?
    pub fn available(&self, now: u64) -> bool {
        self.socket.is_some() && self.healthy() && !self.ejected(now)
    }

    /// The active health check's verdict.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Passively ejected at `now`?
    pub fn ejected(&self, now: u64) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > now
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests sent so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Consecutive connect failures.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    /// A connection attempt failed. Returns `true` when this ejected the instance.
    pub fn record_connect_failure(&self, ejection: &Ejection, now: u64) -> bool {
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if ejection.consecutive_failures > 0 && n >= ejection.consecutive_failures {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            let until = now + ejection.duration.as_millis() as u64;
            self.ejected_until_ms.store(until, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// A connection succeeded.
    pub fn record_connect_success(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// Record an active probe result. Returns the new verdict when it changed.
    pub fn record_probe(&self, hc: &HealthCheck, ok: bool) -> Option<bool> {
        if ok {
            self.probe_failures.store(0, Ordering::Relaxed);
            let n = self.probe_successes.fetch_add(1, Ordering::Relaxed) + 1;
            // A passing probe also ends a passive ejection early: the instance is back.
            self.ejected_until_ms.store(0, Ordering::Relaxed);
            if !self.healthy() && n >= hc.healthy_threshold {
                self.healthy.store(true, Ordering::Relaxed);
                return Some(true);
            }
        } else {
            self.probe_successes.store(0, Ordering::Relaxed);
            let n = self.probe_failures.fetch_add(1, Ordering::Relaxed) + 1;
            if self.healthy() && n >= hc.unhealthy_threshold {
                self.healthy.store(false, Ordering::Relaxed);
                return Some(false);
            }
        }
        None
    }

    /// Claim the probe slot if one is due at `now`.
    pub fn probe_due(&self, interval_ms: u64, now: u64) -> bool {
        let next = self.next_probe_ms.load(Ordering::Relaxed);
        next <= now
            && self
                .next_probe_ms
                .compare_exchange(
                    next,
                    now + interval_ms,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }
}

/// Holds one in-flight slot on an instance; released on drop.
#[derive(Debug)]
pub struct InstanceLease {
    instance: Arc<Instance>,
}

impl InstanceLease {
    /// Take a slot.
    pub fn new(instance: Arc<Instance>) -> Self {
        instance.in_flight.fetch_add(1, Ordering::Relaxed);
        instance.requests.fetch_add(1, Ordering::Relaxed);
        Self { instance }
    }

    /// The instance.
    pub fn instance(&self) -> &Arc<Instance> {
        &self.instance
    }
}

impl Drop for InstanceLease {
    fn drop(&mut self) {
        self.instance.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The outcome of a balancing decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// Use this instance (index into the group).
    Instance(usize),
    /// Every instance is unhealthy or ejected.
    NoneAvailable,
    /// Every available instance was already tried for this request.
    Exhausted,
}

/// The instances of one app plus its balancing state.
#[derive(Debug)]
pub struct UpstreamGroup {
    /// Instances in declaration order.
    pub instances: Vec<Arc<Instance>>,
    balancing: Balancing,
    cursor: AtomicUsize,
}

impl UpstreamGroup {
    /// A group over `instances`.
    pub fn new(instances: Vec<Arc<Instance>>, balancing: Balancing) -> Self {
        Self {
            instances,
            balancing,
            cursor: AtomicUsize::new(0),
        }
    }

    /// Choose an instance not in `tried` (bit `i` = instance `i`).
    /// `hash_key` is the value of the consistent-hash header, if any.
    pub fn pick(&self, tried: u64, hash_key: Option<&[u8]>, now: u64) -> Pick {
        let n = self.instances.len();
        let usable = |i: usize| tried & (1 << i) == 0 && self.instances[i].available(now);
        if n == 0 || !(0..n).any(|i| self.instances[i].available(now)) {
            return Pick::NoneAvailable;
        }
        let chosen = match (&self.balancing, hash_key) {
            (Balancing::ConsistentHash(_), Some(key)) => (0..n)
                .filter(|&i| usable(i))
                .max_by_key(|&i| rendezvous(key, &self.instances[i].addr.url)),
            (Balancing::LeastConnections, _) => {
                let start = self.cursor.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|k| (start + k) % n)
                    .filter(|&i| usable(i))
                    .min_by_key(|&i| self.instances[i].in_flight())
            }
            _ => {
                let start = self.cursor.fetch_add(1, Ordering::Relaxed);
                (0..n).map(|k| (start + k) % n).find(|&i| usable(i))
            }
        };
        chosen.map_or(Pick::Exhausted, Pick::Instance)
    }
}

fn rendezvous(key: &[u8], url: &str) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    key.hash(&mut h);
    url.hash(&mut h);
    h.finish()
}

/// The upstream groups of one bundle, indexed like `Bundle::apps`.
#[derive(Debug, Default)]
pub struct UpstreamSet {
    /// One group per app.
    pub groups: Vec<UpstreamGroup>,
}

impl UpstreamSet {
    /// Build the groups for `apps` (name and upstream settings, in the
    /// bundle's order), keeping the live state of the instances `previous`
    /// had under `previous_apps` (its apps' names, in its order). Resolves
    /// instance host names (blocking: call off the request path).
    pub fn build<'a>(
        apps: impl Iterator<Item = (&'a str, &'a Upstream)>,
        previous: Option<(&UpstreamSet, Vec<&str>)>,
    ) -> Self {
        let mut known: HashMap<(&str, &str), &Arc<Instance>> = HashMap::new();
        if let Some((prev, names)) = &previous {
            for (app, group) in names.iter().zip(&prev.groups) {
                for inst in &group.instances {
                    known.insert((app, &*inst.addr.url), inst);
                }
            }
        }
        let groups = apps
            .map(|(name, upstream)| {
                let instances = upstream
                    .instances
                    .iter()
                    .map(|addr| match known.get(&(name, &*addr.url)) {
                        Some(inst) => Arc::clone(inst),
                        None => Arc::new(Instance::new(addr.clone(), resolve(addr))),
                    })
                    .collect();
                UpstreamGroup::new(instances, upstream.balancing.clone())
            })
            .collect();
        Self { groups }
    }
}

fn resolve(addr: &InstanceAddr) -> Option<SocketAddr> {
    use std::net::ToSocketAddrs;
    match addr.authority().to_socket_addrs() {
        Ok(mut it) => it.next(),
        Err(e) => {
            tracing::warn!(instance = %addr.url, error = %e, "instance address does not resolve; it gets no traffic");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn inst(port: u16) -> Arc<Instance> {
        let addr = InstanceAddr {
            url: format!("http://127.0.0.1:{port}").into(),
            host: "127.0.0.1".into(),
            port,
            tls: false,
        };
        let socket = Some(SocketAddr::from(([127, 0, 0, 1], port)));
        Arc::new(Instance::new(addr, socket))
    }

    fn group(n: u16, b: Balancing) -> UpstreamGroup {
        UpstreamGroup::new((0..n).map(|i| inst(9000 + i)).collect(), b)
    }

    const EJECT: Ejection = Ejection {
        consecutive_failures: 3,
        duration: Duration::from_millis(1_000),
    };

    #[test]
    fn round_robin_visits_every_instance_in_turn() {
        let g = group(3, Balancing::RoundRobin);
        let picks: Vec<_> = (0..6).map(|_| g.pick(0, None, 0)).collect();
        let counts = (0..3).map(|i| picks.iter().filter(|p| **p == Pick::Instance(i)).count());
        assert!(counts.into_iter().all(|c| c == 2), "{picks:?}");
    }

    #[test]
    fn tried_instances_are_skipped_then_exhausted() {
        let g = group(2, Balancing::RoundRobin);
        let Pick::Instance(first) = g.pick(0, None, 0) else {
            panic!()
        };
        let Pick::Instance(second) = g.pick(1 << first, None, 0) else {
            panic!()
        };
        assert_ne!(first, second);
        assert_eq!(g.pick(0b11, None, 0), Pick::Exhausted);
    }

    #[test]
    fn least_connections_prefers_idle_instances() {
        let g = group(3, Balancing::LeastConnections);
        let _a = InstanceLease::new(Arc::clone(&g.instances[0]));
        let _b = InstanceLease::new(Arc::clone(&g.instances[1]));
        assert_eq!(g.pick(0, None, 0), Pick::Instance(2));
        drop(_a);
        assert_eq!(g.instances[0].in_flight(), 0);
    }

    #[test]
    fn consistent_hash_is_sticky_and_moves_only_from_a_lost_instance() {
        let g = group(
            4,
            Balancing::ConsistentHash(http::HeaderName::from_static("x-user")),
        );
        let keys: Vec<String> = (0..200).map(|i| format!("user-{i}")).collect();
        let before: Vec<_> = keys
            .iter()
            .map(|k| g.pick(0, Some(k.as_bytes()), 0))
            .collect();
        let again: Vec<_> = keys
            .iter()
            .map(|k| g.pick(0, Some(k.as_bytes()), 0))
            .collect();
        assert_eq!(before, again);
        // Eject instance 0: only its keys move.
        for _ in 0..3 {
            g.instances[0].record_connect_failure(&EJECT, 0);
        }
        for (k, b) in keys.iter().zip(&before) {
            let now = g.pick(0, Some(k.as_bytes()), 10);
            if *b != Pick::Instance(0) {
                assert_eq!(now, *b);
            } else {
                assert_ne!(now, Pick::Instance(0));
            }
        }
    }

    #[test]
    fn passive_ejection_and_recovery_follow_the_clock() {
        let g = group(2, Balancing::RoundRobin);
        let i0 = &g.instances[0];
        assert!(!i0.record_connect_failure(&EJECT, 100));
        i0.record_connect_success();
        assert!(!i0.record_connect_failure(&EJECT, 100));
        assert!(!i0.record_connect_failure(&EJECT, 100));
        assert!(i0.record_connect_failure(&EJECT, 100));
        assert!(!i0.available(500));
        assert!(i0.available(1_100));
        for _ in 0..10 {
            assert_eq!(g.pick(0, None, 500), Pick::Instance(1));
        }
    }

    #[test]
    fn probes_flip_health_after_thresholds() {
        let hc = HealthCheck {
            path: "/health".into(),
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(50),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        };
        let g = group(1, Balancing::RoundRobin);
        let i = &g.instances[0];
        assert_eq!(i.record_probe(&hc, false), None);
        assert_eq!(i.record_probe(&hc, false), None);
        assert_eq!(i.record_probe(&hc, false), Some(false));
        assert_eq!(g.pick(0, None, 0), Pick::NoneAvailable);
        assert_eq!(i.record_probe(&hc, true), None);
        assert_eq!(i.record_probe(&hc, true), Some(true));
        assert_eq!(g.pick(0, None, 0), Pick::Instance(0));
    }

    #[test]
    fn probe_slots_are_claimed_once_per_interval() {
        let i = inst(1);
        assert!(i.probe_due(100, 0));
        assert!(!i.probe_due(100, 50));
        assert!(i.probe_due(100, 100));
    }
}
