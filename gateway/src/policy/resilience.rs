//! How an app is fenced off when it fails or is overloaded: the policy's
//! `resilience` section. Every setting has a default, so an app with none
//! of it written is fenced (concurrency cap, circuit breakers, retry
//! budget); `docs/architecture.md` gives the reasoning behind each default.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use super::model::Duration;

/// Requests in flight to one app before more are shed (503).
pub const MAX_IN_FLIGHT: u32 = 512;

/// The `resilience` section of an app.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ResilienceSpec {
    /// Most requests in flight to the app; more are answered 503 at once.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
    /// Circuit breakers (one per route, one for passthrough paths): `true`,
    /// `false`, or their settings.
    #[serde(default)]
    pub breaker: BreakerSpec,
    /// How many of the app's requests may be retried.
    #[serde(default)]
    pub retry_budget: RetryBudgetSpec,
    /// Requests that may wait for a slot when the app is at its cap
    /// (default: none wait; over the cap is shed at once).
    #[serde(default)]
    pub queue: QueueSpec,
    /// Settings of single routes, by route id.
    #[serde(default)]
    pub routes: BTreeMap<String, RouteResilienceSpec>,
}

impl Default for ResilienceSpec {
    fn default() -> Self {
        Self {
            max_in_flight: MAX_IN_FLIGHT,
            breaker: BreakerSpec::default(),
            retry_budget: RetryBudgetSpec::default(),
            queue: QueueSpec::default(),
            routes: BTreeMap::new(),
        }
    }
}

fn default_max_in_flight() -> u32 {
    MAX_IN_FLIGHT
}

/// A caller's priority when an app nears its concurrency cap: lower ones
/// are shed first. Anonymous callers of an app with authentication are
/// `Low` (of one without, `High`: all its callers are alike); identified
/// consumers have their plan's (`Normal` without a plan).
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Shed once the app has 75 % of its cap in flight.
    Low,
    /// Shed once the app has 90 % of its cap in flight.
    #[default]
    Normal,
    /// Shed only at the cap.
    High,
}

impl Priority {
    /// The share of an app's cap a caller of this priority may fill.
    pub fn of_cap(self, cap: u32) -> u32 {
        let share = |num: u64, den: u64| (u64::from(cap) * num / den).max(1) as u32;
        match self {
            Self::Low => share(3, 4),
            Self::Normal => share(9, 10),
            Self::High => cap,
        }
    }

    /// Its name in the policy.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Normal => "normal",
            Self::High => "high",
        }
    }
}

/// A bounded wait for a slot under an app's cap.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QueueSpec {
    /// Most requests waiting at once (`0`: no queue).
    #[serde(default)]
    pub size: u32,
    /// Longest a request waits (within its own deadline) before it is shed.
    #[serde(default = "default_max_wait")]
    pub max_wait: Duration,
}

impl Default for QueueSpec {
    fn default() -> Self {
        Self {
            size: 0,
            max_wait: default_max_wait(),
        }
    }
}

fn default_max_wait() -> Duration {
    Duration::from_millis(250)
}

/// The most requests a queue may hold: each slot freed wakes every waiter.
const MAX_QUEUE: u32 = 1_000;

/// The longest wait a queue may have: past it, queued clients hold the
/// gateway's connections as a hanging app would.
const MAX_QUEUE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The fences of one route.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteResilienceSpec {
    /// Most requests in flight to this route (within the app's cap).
    pub max_in_flight: u32,
}

/// A circuit breaker's settings.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BreakerSpec {
    /// Breakers judge requests (off: they stay closed).
    pub enabled: bool,
    /// Share of failed requests in the window that opens the breaker.
    pub failure_ratio: f64,
    /// Fewest requests in the window before the share is judged; also the
    /// fewest unanswered requests that make a stall.
    pub min_requests: u32,
    /// The sliding window failures are counted over (ten buckets).
    pub window: Duration,
    /// How long an open breaker answers for the app before probing it.
    pub cool_down: Duration,
    /// Requests let through to probe the app; all must succeed to close.
    pub probes: u32,
    /// The app stalls when it has answered nothing for this long (or ten
    /// times its usual time to answer, when longer) while requests wait:
    /// the breaker opens without waiting for their timeouts. `0s`: off.
    pub stall: Duration,
    /// Count the app's own 5xx answers as failures (default: an answer is
    /// an answer; only failures to answer count).
    pub count_5xx: bool,
}

impl Default for BreakerSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            failure_ratio: 0.5,
            min_requests: 20,
            window: Duration::from_millis(10_000),
            cool_down: Duration::from_millis(5_000),
            probes: 3,
            stall: Duration::from_millis(2_000),
            count_5xx: false,
        }
    }
}

/// The written form of `breaker`: a switch or settings.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BreakerSettings {
    #[serde(default = "yes")]
    enabled: bool,
    failure_ratio: Option<f64>,
    min_requests: Option<u32>,
    window: Option<Duration>,
    cool_down: Option<Duration>,
    probes: Option<u32>,
    stall: Option<Duration>,
    #[serde(default)]
    count_5xx: bool,
}

fn yes() -> bool {
    true
}

impl<'de> Deserialize<'de> for BreakerSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = BreakerSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("true, false, or the breaker's settings")
            }
            fn visit_bool<E: serde::de::Error>(self, on: bool) -> Result<BreakerSpec, E> {
                Ok(BreakerSpec {
                    enabled: on,
                    ..BreakerSpec::default()
                })
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                m: M,
            ) -> Result<BreakerSpec, M::Error> {
                let s =
                    BreakerSettings::deserialize(serde::de::value::MapAccessDeserializer::new(m))?;
                let d = BreakerSpec::default();
                Ok(BreakerSpec {
                    enabled: s.enabled,
                    failure_ratio: s.failure_ratio.unwrap_or(d.failure_ratio),
                    min_requests: s.min_requests.unwrap_or(d.min_requests),
                    window: s.window.unwrap_or(d.window),
                    cool_down: s.cool_down.unwrap_or(d.cool_down),
                    probes: s.probes.unwrap_or(d.probes),
                    stall: s.stall.unwrap_or(d.stall),
                    count_5xx: s.count_5xx,
                })
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// How much of an app's traffic may be retries.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetryBudgetSpec {
    /// Share of the app's requests (over ten seconds) that may be retried.
    #[serde(default = "default_retry_ratio")]
    pub ratio: f64,
    /// Retries always allowed per ten seconds, so a quiet app can retry.
    #[serde(default = "default_min_retries")]
    pub min_retries: u32,
}

impl Default for RetryBudgetSpec {
    fn default() -> Self {
        Self {
            ratio: default_retry_ratio(),
            min_retries: default_min_retries(),
        }
    }
}

fn default_retry_ratio() -> f64 {
    0.2
}

fn default_min_retries() -> u32 {
    10
}

impl ResilienceSpec {
    /// Each setting that differs in `new`, as `what old → new`, with
    /// whether it protects the app (and so may refuse callers) more
    /// (`true`: tightened) or less (`false`: loosened). A change whose
    /// direction is not clear-cut (the window) counts as tightened.
    pub fn changes_to(&self, new: &Self) -> Vec<(bool, String)> {
        let mut out = Vec::new();
        let mut note = |tighter: bool, what: &str, a: String, b: String| {
            if a != b {
                out.push((tighter, format!("{what} {a} → {b}")));
            }
        };
        note(
            new.max_in_flight < self.max_in_flight,
            "concurrency cap",
            self.max_in_flight.to_string(),
            new.max_in_flight.to_string(),
        );
        let on = |b: bool| if b { "on" } else { "off" }.to_string();
        let (a, b) = (&self.breaker, &new.breaker);
        note(b.enabled, "circuit breakers", on(a.enabled), on(b.enabled));
        note(
            b.failure_ratio < a.failure_ratio,
            "breaker failure ratio",
            format!("{}%", a.failure_ratio * 100.0),
            format!("{}%", b.failure_ratio * 100.0),
        );
        note(
            b.min_requests < a.min_requests,
            "breaker minimum requests",
            a.min_requests.to_string(),
            b.min_requests.to_string(),
        );
        note(
            true,
            "breaker window",
            a.window.to_string(),
            b.window.to_string(),
        );
        note(
            b.cool_down.get() > a.cool_down.get(),
            "breaker cool-down",
            a.cool_down.to_string(),
            b.cool_down.to_string(),
        );
        note(
            b.probes > a.probes,
            "breaker probes",
            a.probes.to_string(),
            b.probes.to_string(),
        );
        let stall = |d: Duration| {
            if d.get().is_zero() {
                "off".to_string()
            } else {
                d.to_string()
            }
        };
        note(
            !b.stall.get().is_zero() && (a.stall.get().is_zero() || b.stall.get() < a.stall.get()),
            "breaker stall",
            stall(a.stall),
            stall(b.stall),
        );
        note(
            b.count_5xx,
            "app 5xx counted as failures",
            on(a.count_5xx),
            on(b.count_5xx),
        );
        let (ra, rb) = (&self.retry_budget, &new.retry_budget);
        let budget =
            |r: &RetryBudgetSpec| format!("{}% (at least {})", r.ratio * 100.0, r.min_retries);
        note(
            rb.ratio < ra.ratio || rb.min_retries < ra.min_retries,
            "retry budget",
            budget(ra),
            budget(rb),
        );
        let (qa, qb) = (&self.queue, &new.queue);
        let queue = |q: &QueueSpec| {
            if q.size == 0 {
                "none".to_string()
            } else {
                format!("{} waiting for up to {}", q.size, q.max_wait)
            }
        };
        note(
            qb.size < qa.size || (qb.size > 0 && qb.max_wait.get() < qa.max_wait.get()),
            "wait queue",
            queue(qa),
            queue(qb),
        );
        let ids: std::collections::BTreeSet<&String> =
            self.routes.keys().chain(new.routes.keys()).collect();
        for id in ids {
            let (x, y) = (self.routes.get(id), new.routes.get(id));
            let cap = |r: Option<&RouteResilienceSpec>| {
                r.map_or("none".into(), |r| r.max_in_flight.to_string())
            };
            let tighter = match (x, y) {
                (None, Some(_)) => true,
                (Some(x), Some(y)) => y.max_in_flight < x.max_in_flight,
                _ => false,
            };
            note(tighter, &format!("route {id} cap"), cap(x), cap(y));
        }
        out
    }

    /// What is wrong with these settings for an app whose routes have
    /// `route_ids` (one message each).
    pub fn problems<'a>(&self, route_ids: impl Iterator<Item = &'a str> + Clone) -> Vec<String> {
        let mut out = Vec::new();
        for id in self.routes.keys() {
            if !route_ids.clone().any(|r| r == id) {
                out.push(format!(
                    "resilience.routes names `{id}`, which is not a route of the app"
                ));
            }
        }
        let b = &self.breaker;
        if b.window.get() < std::time::Duration::from_secs(1) {
            out.push("resilience.breaker.window must be at least 1s".into());
        }
        if b.cool_down.get() < std::time::Duration::from_millis(100) {
            out.push("resilience.breaker.cool_down must be at least 100ms".into());
        }
        if !(b.failure_ratio > 0.0 && b.failure_ratio <= 1.0) {
            out.push("resilience.breaker.failure_ratio must be above 0 and at most 1".into());
        }
        if b.probes == 0 || b.min_requests == 0 {
            out.push("resilience.breaker.probes and min_requests must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.retry_budget.ratio) {
            out.push("resilience.retry_budget.ratio must be between 0 and 1".into());
        }
        let q = &self.queue;
        if q.size > 0 && (q.max_wait.get().is_zero() || q.max_wait.get() > MAX_QUEUE_WAIT) {
            out.push("resilience.queue.max_wait must be above 0s and at most 10s".into());
        }
        if q.size > MAX_QUEUE {
            out.push(format!("resilience.queue.size must be at most {MAX_QUEUE}"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_breaker_is_a_switch_or_settings_with_defaults_for_the_rest() {
        let off: ResilienceSpec = serde_yaml::from_str("breaker: false").expect("parses");
        assert!(!off.breaker.enabled);
        assert_eq!(off.breaker.min_requests, 20);
        let tuned: ResilienceSpec =
            serde_yaml::from_str("breaker: { stall: 0s, count_5xx: true, probes: 5 }")
                .expect("parses");
        assert!(tuned.breaker.enabled && tuned.breaker.count_5xx);
        assert_eq!(tuned.breaker.probes, 5);
        assert!(tuned.breaker.stall.get().is_zero());
        assert_eq!(tuned.breaker.cool_down.get().as_millis(), 5_000);
        let err = serde_yaml::from_str::<ResilienceSpec>("breaker: { probs: 5 }")
            .expect_err("unknown field");
        assert!(err.to_string().contains("probs"), "{err}");
    }

    #[test]
    fn each_change_says_whether_the_app_is_fenced_more_or_less() {
        let spec = |y: &str| serde_yaml::from_str::<ResilienceSpec>(y).expect("parses");
        let base = spec("{}");
        let changes = base.changes_to(&spec(
            "max_in_flight: 100\nbreaker: { enabled: false, stall: 0s }\nretry_budget: { ratio: 0.5 }\nqueue: { size: 50 }\nroutes: { export: { max_in_flight: 5 } }",
        ));
        let tight: Vec<&str> = changes
            .iter()
            .filter(|c| c.0)
            .map(|c| c.1.as_str())
            .collect();
        let loose: Vec<&str> = changes
            .iter()
            .filter(|c| !c.0)
            .map(|c| c.1.as_str())
            .collect();
        assert_eq!(
            tight,
            ["concurrency cap 512 → 100", "route export cap none → 5"]
        );
        assert_eq!(
            loose,
            [
                "circuit breakers on → off",
                "breaker stall 2s → off",
                "retry budget 20% (at least 10) → 50% (at least 10)",
                "wait queue none → 50 waiting for up to 250ms"
            ]
        );
        assert!(base.changes_to(&base).is_empty());
    }

    #[test]
    fn settings_that_cannot_work_are_named() {
        let spec: ResilienceSpec = serde_yaml::from_str(
            "breaker: { window: 500ms, failure_ratio: 0 }\nqueue: { size: 10, max_wait: 30s }\nroutes: { nope: { max_in_flight: 5 } }",
        )
        .expect("parses");
        let problems = spec.problems(["listOrders"].into_iter());
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[3].contains("queue.max_wait"), "{problems:?}");
        assert!(problems[0].contains("`nope`"));
    }
}
