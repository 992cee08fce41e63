//! Rate limits: GCRA (the `governor` crate) keyed by consumer, client IP,
//! app, route or a header; several limits per request, all must admit.
//!
//! What a refused request consumes: nothing from the limit that refused it
//! (GCRA only advances on admission), but limits checked before it in the
//! request's list have admitted — and so counted — it. Per-consumer (plan)
//! limits are checked first, then the app's, in declaration order.
//!
//! Keys are 64-bit hashes of (limit id, key value), so a million consumers
//! cost a million small map entries; idle entries are dropped by
//! [`Limits::evict_idle`], called from a background task. The store sits
//! behind [`LimitStore`] so a cluster-wide backend can replace it; all of it
//! is generic over a [`governor::clock::Clock`] and tested with a fake one.

pub mod quota;

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

/// A rate written `100/s`, `6000/m` or `100000/h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests per period.
    pub count: u32,
    /// The period.
    pub period: Duration,
}

impl Rate {
    /// Parse `N/s`, `N/m` or `N/h`.
    pub fn parse(s: &str) -> Result<Rate, String> {
        let bad = || format!("`{s}` is not a rate like 100/s, 6000/m or 100000/h");
        let (n, unit) = s.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        if count == 0 {
            return Err(format!("`{s}`: a rate must admit at least one request"));
        }
        let period = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        Ok(Rate { count, period })
    }

    /// Seconds in the period (for `RateLimit-Policy`'s `w`).
    pub fn window_secs(&self) -> u64 {
        self.period.as_secs().max(1)
    }
}

/// What a limit is keyed by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    /// The identified consumer (anonymous requests share the client IP's key).
    Consumer,
    /// The client IP.
    Ip,
    /// The app, all callers together.
    App,
    /// The route, all callers together.
    Route,
    /// The value of a request header.
    Header(http::HeaderName),
}

/// A compiled limit.
#[derive(Debug, Clone)]
pub struct LimitRule {
    /// Stable id (`app:name` or `plan:name`), the policy name in headers.
    pub id: String,
    /// Key.
    pub key: LimitKey,
    /// Sustained rate.
    pub rate: Rate,
    /// Burst (defaults to the rate's count).
    pub burst: u32,
}

/// A compiled quota (per consumer).
#[derive(Debug, Clone)]
pub struct QuotaRule {
    /// Stable id (`plan:name:quota`).
    pub id: String,
    /// Requests per window.
    pub limit: u64,
    /// Window.
    pub window: quota::Window,
}

/// The outcome of one limit check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Admitted?
    pub allowed: bool,
    /// Requests the limit still admits right now.
    pub remaining: u32,
    /// When refused: how long until a request would be admitted.
    pub retry_after: Duration,
}

/// A keyed limit store (in-process today; a cluster-wide one can replace it).
pub trait LimitStore: Send + Sync + std::fmt::Debug {
    /// Check and (when admitted) consume one request for `key`.
    fn check(&self, key: u64) -> Decision;
    /// Drop keys whose state has fully recovered; returns how many remain.
    fn evict_idle(&self) -> usize;
}

/// Keys are already 64-bit hashes ([`key_hash`]): hashing them again is waste.
#[derive(Debug, Default, Clone, Copy)]
pub struct PrehashedKey(u64);

impl Hasher for PrehashedKey {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

type KeyStore = DashMapStateStore<u64, BuildHasherDefault<PrehashedKey>>;

/// GCRA store over `governor`, generic over its clock.
pub struct GovernorStore<C: Clock = DefaultClock> {
    limiter: RateLimiter<u64, KeyStore, C, StateInformationMiddleware>,
    clock: C,
}

impl<C: Clock> std::fmt::Debug for GovernorStore<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GovernorStore")
            .field("keys", &self.limiter.len())
            .finish()
    }
}

impl<C: Clock + Clone + Send + Sync> GovernorStore<C>
where
    C::Instant: Send + Sync,
{
    /// A store for `rule` on `clock`.
    pub fn new(rule: &LimitRule, clock: C) -> Self {
        let quota = quota(rule);
        let limiter = RateLimiter::dashmap_with_clock_and_hasher(
            quota,
            clock.clone(),
            BuildHasherDefault::<PrehashedKey>::default(),
        )
        .with_middleware::<StateInformationMiddleware>();
        Self { limiter, clock }
    }
}

fn quota(rule: &LimitRule) -> Quota {
    let per_cell = rule.rate.period / rule.rate.count.max(1);
    let burst = NonZeroU32::new(rule.burst.max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(per_cell.max(Duration::from_nanos(1)))
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst)
}

impl<C> LimitStore for GovernorStore<C>
where
    C: Clock + Clone + Send + Sync,
    C::Instant: Send + Sync,
{
    fn check(&self, key: u64) -> Decision {
        match self.limiter.check_key(&key) {
            Ok(snapshot) => Decision {
                allowed: true,
                remaining: snapshot.remaining_burst_capacity(),
                retry_after: Duration::ZERO,
            },
            Err(not_until) => Decision {
                allowed: false,
                remaining: 0,
                retry_after: not_until.wait_time_from(self.clock.now()),
            },
        }
    }

    fn evict_idle(&self) -> usize {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
        self.limiter.len()
    }
}

/// The stores of every limit and quota in the active bundle, kept across
/// reloads for those whose definition did not change. Only activation and
/// the eviction task lock it; requests use the stores handed out.
#[derive(Debug, Default)]
pub struct Limits {
    stores: Mutex<HashMap<String, StoreEntry>>,
    quotas: Mutex<HashMap<String, QuotaEntry>>,
}

type LimitSignature = (u32, Duration, u32);
type StoreEntry = (LimitSignature, Arc<dyn LimitStore>);
type QuotaEntry = (u64, u64, Arc<quota::QuotaStore>);

impl Limits {
    /// The store for `rule` (created, or reused when unchanged).
    pub fn store(&self, rule: &LimitRule) -> Arc<dyn LimitStore> {
        let sig = (rule.rate.count, rule.rate.period, rule.burst);
        let mut stores = self.stores.lock().unwrap_or_else(|p| p.into_inner());
        match stores.get(&rule.id) {
            Some((s, store)) if *s == sig => Arc::clone(store),
            _ => {
                let store: Arc<dyn LimitStore> =
                    Arc::new(GovernorStore::new(rule, DefaultClock::default()));
                stores.insert(rule.id.clone(), (sig, Arc::clone(&store)));
                store
            }
        }
    }

    /// The counters for `rule` (created, or reused when unchanged).
    pub fn quota(&self, rule: &QuotaRule) -> Arc<quota::QuotaStore> {
        let sig = (rule.limit, rule.window.secs());
        let mut quotas = self.quotas.lock().unwrap_or_else(|p| p.into_inner());
        match quotas.get(&rule.id) {
            Some((l, w, store)) if (*l, *w) == sig => Arc::clone(store),
            _ => {
                let store = Arc::new(quota::QuotaStore::new(rule.limit, rule.window));
                quotas.insert(rule.id.clone(), (sig.0, sig.1, Arc::clone(&store)));
                store
            }
        }
    }

    /// Forget limits and quotas whose ids are not in `ids`.
    pub fn retain(&self, ids: &std::collections::HashSet<String>) {
        self.stores
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id, _| ids.contains(id));
        self.quotas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id, _| ids.contains(id));
    }

    /// Evict idle keys everywhere; returns the keys kept.
    pub fn evict_idle(&self) -> usize {
        let stores: Vec<_> = self
            .stores
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|(_, s)| Arc::clone(s))
            .collect();
        let quotas: Vec<_> = self
            .quotas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|(_, _, q)| Arc::clone(q))
            .collect();
        stores.iter().map(|s| s.evict_idle()).sum::<usize>()
            + quotas.iter().map(|q| q.evict_idle()).sum::<usize>()
    }
}

/// One structured-field item of a `RateLimit-*` header: `"id";a=1;b=2`
/// (numbers written with `itoa`: this runs on every limited request).
pub fn push_header_item(out: &mut String, id: &str, a: (&str, u64), b: (&str, u64)) {
    let mut digits = itoa::Buffer::new();
    out.push('"');
    out.push_str(id);
    out.push('"');
    for (name, value) in [a, b] {
        out.push(';');
        out.push_str(name);
        out.push('=');
        out.push_str(digits.format(value));
    }
}

/// Hash a key value under a limit id: FNV-1a over both, finished with the
/// SplitMix64 mixer so every bit of the result depends on every input byte
/// (the store uses the value as its hash directly).
pub fn key_hash(limit_id: &str, value: &[u8]) -> u64 {
    // One plain loop per part: a chain of iterators costs a branch per byte.
    let fnv = |h: u64, bytes: &[u8]| {
        bytes.iter().fold(h, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    let mut h = fnv(
        fnv(fnv(0xcbf2_9ce4_8422_2325, limit_id.as_bytes()), &[0xff]),
        value,
    );
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn rule(rate: &str, burst: u32) -> LimitRule {
        LimitRule {
            id: "t".into(),
            key: LimitKey::Consumer,
            rate: Rate::parse(rate).unwrap(),
            burst,
        }
    }

    #[test]
    fn rates_parse() {
        assert_eq!(
            Rate::parse("100/s").unwrap(),
            Rate {
                count: 100,
                period: Duration::from_secs(1)
            }
        );
        assert_eq!(Rate::parse("6000/m").unwrap().window_secs(), 60);
        assert!(Rate::parse("0/s").is_err());
        assert!(Rate::parse("5/day").is_err());
        assert!(Rate::parse("fast").is_err());
    }

    #[test]
    fn burst_then_steady_rate_on_a_fake_clock() {
        let clock = FakeRelativeClock::default();
        let store = GovernorStore::new(&rule("10/s", 5), clock.clone());
        let key = key_hash("t", b"alice");
        for expected_remaining in (0..5).rev() {
            let d = store.check(key);
            assert!(d.allowed);
            assert_eq!(d.remaining, expected_remaining);
        }
        let refused = store.check(key);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, Duration::from_millis(100));
        // Another key is unaffected.
        assert!(store.check(key_hash("t", b"bob")).allowed);
        clock.advance(Duration::from_millis(100));
        assert!(store.check(key).allowed);
        assert!(
            !store.check(key).allowed,
            "a refused request consumed nothing, one new cell per 100 ms"
        );
    }

    #[test]
    fn idle_keys_are_evicted() {
        let clock = FakeRelativeClock::default();
        let store = GovernorStore::new(&rule("10/s", 10), clock.clone());
        for i in 0..1000u64 {
            store.check(i);
        }
        assert_eq!(store.evict_idle(), 1000);
        clock.advance(Duration::from_secs(2));
        assert_eq!(store.evict_idle(), 0);
    }
}
