//! Quotas: requests per calendar minute, hour or day (UTC-aligned fixed
//! windows), counted per key. A refused request is not counted.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;

/// Quota window lengths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// 60 s.
    Minute,
    /// 3600 s.
    Hour,
    /// 86400 s.
    Day,
}

impl Window {
    /// Length in seconds.
    pub fn secs(self) -> u64 {
        match self {
            Window::Minute => 60,
            Window::Hour => 3600,
            Window::Day => 86_400,
        }
    }
}

/// Outcome of a quota check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaDecision {
    /// Admitted?
    pub allowed: bool,
    /// Requests left in this window.
    pub remaining: u64,
    /// Time until the window resets.
    pub reset: Duration,
}

/// Counters of one quota.
#[derive(Debug)]
pub struct QuotaStore {
    limit: u64,
    window: Window,
    counts: DashMap<u64, (u64, u64)>,
}

impl QuotaStore {
    /// A quota of `limit` requests per `window`.
    pub fn new(limit: u64, window: Window) -> Self {
        Self {
            limit,
            window,
            counts: DashMap::new(),
        }
    }

    /// Check and count one request for `key` at wall-clock `now`.
    pub fn check_at(&self, key: u64, now: SystemTime) -> QuotaDecision {
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let w = self.window.secs();
        let index = secs / w;
        let reset = Duration::from_secs((index + 1) * w - secs);
        let mut entry = self.counts.entry(key).or_insert((index, 0));
        if entry.0 != index {
            *entry = (index, 0);
        }
        if entry.1 >= self.limit {
            return QuotaDecision {
                allowed: false,
                remaining: 0,
                reset,
            };
        }
        entry.1 += 1;
        QuotaDecision {
            allowed: true,
            remaining: self.limit - entry.1,
            reset,
        }
    }

    /// Check and count one request now.
    pub fn check(&self, key: u64) -> QuotaDecision {
        self.check_at(key, SystemTime::now())
    }

    /// Drop counters of past windows; returns how many remain.
    pub fn evict_idle(&self) -> usize {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let index = secs / self.window.secs();
        self.counts.retain(|_, (i, _)| *i == index);
        self.counts.shrink_to_fit();
        self.counts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_window_and_resets_at_the_boundary() {
        let q = QuotaStore::new(3, Window::Minute);
        let t0 = UNIX_EPOCH + Duration::from_secs(600 * 60 + 10);
        for left in [2, 1, 0] {
            let d = q.check_at(7, t0);
            assert!(d.allowed);
            assert_eq!(d.remaining, left);
            assert_eq!(d.reset, Duration::from_secs(50));
        }
        assert!(!q.check_at(7, t0).allowed);
        assert!(
            !q.check_at(7, t0 + Duration::from_secs(49)).allowed,
            "refusals are not counted but the window is spent"
        );
        assert!(q.check_at(8, t0).allowed, "another key has its own quota");
        let next = q.check_at(7, t0 + Duration::from_secs(50));
        assert!(next.allowed);
        assert_eq!(next.remaining, 2);
    }
}
