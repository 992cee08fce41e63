//! Request routing: host → app (exact, then wildcard; longest path prefix),
//! then method + path template → route (most specific first).
//!
//! Everything here is built once per bundle and read without locks or
//! allocation on the request path.

mod balancer;
pub mod health;
mod template;

pub use balancer::{
    ms_at, now_ms, Instance, InstanceLease, Pick, UpstreamGroup, UpstreamSet, MAX_INSTANCES,
};
pub use template::{PathTemplate, Segment, TemplateError};

use std::collections::HashMap;

use rustc_hash::FxHashMap;

use http::Method;

use crate::policy::App;

/// Host/prefix index over a bundle's apps.
#[derive(Debug, Default)]
pub struct Router {
    /// Exact hosts. FxHash: the map is built once per bundle and only
    /// looked up per request (no inserts from traffic, so no flooding).
    exact: FxHashMap<String, Vec<PrefixEntry>>,
    /// `(".corp.example", entries)`, longest suffix first.
    wildcard: Vec<(String, Vec<PrefixEntry>)>,
}

#[derive(Debug, Clone)]
struct PrefixEntry {
    prefix: String,
    app: usize,
}

/// The outcome of routing one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteMatch {
    /// A declared route of an app.
    Route {
        /// Index into `Bundle::apps`.
        app: usize,
        /// Index into `App::routes`.
        route: usize,
    },
    /// No route matched but the app forwards its whole path space.
    Passthrough {
        /// Index into `Bundle::apps`.
        app: usize,
    },
    /// The path exists on the app but not for this method.
    MethodNotAllowed {
        /// Index into `Bundle::apps`.
        app: usize,
    },
    /// The app exists but has no such path.
    NoRoute {
        /// Index into `Bundle::apps`.
        app: usize,
    },
    /// No app serves this host and path.
    NoApp,
}

impl Router {
    /// Index `apps` (already validated: no duplicate host + prefix).
    pub fn build(apps: &[App]) -> Self {
        let mut exact: FxHashMap<String, Vec<PrefixEntry>> = FxHashMap::default();
        let mut wildcard: HashMap<String, Vec<PrefixEntry>> = HashMap::new();
        for (i, app) in apps.iter().enumerate() {
            for host in &app.hosts {
                let entry = PrefixEntry {
                    prefix: app.path_prefix.clone(),
                    app: i,
                };
                match host.strip_prefix('*') {
                    Some(suffix) => wildcard.entry(suffix.to_string()).or_default().push(entry),
                    None => exact.entry(host.clone()).or_default().push(entry),
                }
            }
        }
        let by_prefix_len = |v: &mut Vec<PrefixEntry>| {
            v.sort_by(|a, b| {
                b.prefix
                    .len()
                    .cmp(&a.prefix.len())
                    .then(a.prefix.cmp(&b.prefix))
            })
        };
        exact.values_mut().for_each(by_prefix_len);
        let mut wildcard: Vec<_> = wildcard.into_iter().collect();
        for (_, v) in wildcard.iter_mut() {
            by_prefix_len(v);
        }
        wildcard.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        Self { exact, wildcard }
    }

    /// Find the app for `host` (lowercase, no port) and `path`.
    pub fn find_app(&self, host: &str, path: &str) -> Option<usize> {
        if let Some(entries) = self.exact.get(host) {
            if let Some(app) = match_prefix(entries, path) {
                return Some(app);
            }
        }
        for (suffix, entries) in &self.wildcard {
            // `*.corp.example` needs at least one non-empty label before the suffix.
            if host.len() > suffix.len() && host.ends_with(suffix.as_str()) {
                if let Some(app) = match_prefix(entries, path) {
                    return Some(app);
                }
            }
        }
        None
    }

    /// Route a request: `host` as sent (any case, optional port), `path`
    /// without the query string.
    pub fn route(&self, apps: &[App], host: &str, method: &Method, path: &str) -> RouteMatch {
        let host = normalize_host(host);
        let Some(app_idx) = self.find_app(&host, path) else {
            return RouteMatch::NoApp;
        };
        let app = &apps[app_idx];
        let sub = strip_app_prefix(&app.path_prefix, path);
        let mut path_known = false;
        for (i, r) in app.routes.iter().enumerate() {
            if r.template.matches(sub) {
                if r.accepts(method) {
                    return RouteMatch::Route {
                        app: app_idx,
                        route: i,
                    };
                }
                path_known = true;
            }
        }
        if app.passthrough {
            RouteMatch::Passthrough { app: app_idx }
        } else if path_known {
            RouteMatch::MethodNotAllowed { app: app_idx }
        } else {
            RouteMatch::NoRoute { app: app_idx }
        }
    }
}

/// The part of `path` below `prefix` (`/` when equal). The caller has checked
/// that `path` is under `prefix`.
pub fn strip_app_prefix<'a>(prefix: &str, path: &'a str) -> &'a str {
    let sub = &path[prefix.len().min(path.len())..];
    if sub.is_empty() {
        "/"
    } else {
        sub
    }
}

fn match_prefix(entries: &[PrefixEntry], path: &str) -> Option<usize> {
    entries
        .iter()
        .find(|e| under_prefix(&e.prefix, path))
        .map(|e| e.app)
}

/// Is `path` equal to `prefix` or below it on a segment boundary?
pub fn under_prefix(prefix: &str, path: &str) -> bool {
    prefix.is_empty()
        || (path.starts_with(prefix)
            && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/')))
}

/// Lowercase a Host header value and drop its port (IPv6 literals keep brackets).
pub fn normalize_host(host: &str) -> std::borrow::Cow<'_, str> {
    let without_port = if host.starts_with('[') {
        match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        }
    } else {
        // A byte loop: `rfind` sets up a searcher that costs more than
        // scanning a host name.
        match host.bytes().rposition(|b| b == b':') {
            Some(i) => host.get(..i).unwrap_or(host),
            None => host,
        }
    };
    let trimmed = without_port.trim_end_matches('.');
    if trimmed.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(trimmed.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(trimmed)
    }
}

/// Is this request path safe to route? Rejects dot segments (also
/// percent-encoded) and encoded slashes, which upstreams may normalise
/// differently from the gateway and so bypass route policy.
pub fn path_is_safe(path: &str) -> bool {
    if !path.starts_with('/') {
        return false;
    }
    // The common case, in one pass: nothing encoded and no dot segment.
    if !suspect(path.as_bytes()) {
        return true;
    }
    for seg in path.split('/') {
        if seg == "." || seg == ".." {
            return false;
        }
        if seg.contains('%') {
            let lower = seg.to_ascii_lowercase();
            if lower.contains("%2f") || lower.contains("%5c") {
                return false;
            }
            let decoded = lower.replace("%2e", ".");
            if decoded == "." || decoded == ".." {
                return false;
            }
        }
    }
    true
}

/// Whether `path` has a `%`, or a `.` right after a `/`: eight bytes at a
/// time, with each byte's match found exactly (no borrow between bytes).
fn suspect(path: &[u8]) -> bool {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const LOW7: u64 = u64::from_le_bytes([0x7F; 8]);
    // 0x80 in each byte of `x` that is zero, and nothing else.
    let zeros = |x: u64| !(((x & LOW7) + LOW7) | x | LOW7);
    // 0x80 in the lowest byte when the byte before the chunk is a `/`.
    let mut slash_before = 0u64;
    let mut chunks = path.chunks_exact(8);
    for chunk in chunks.by_ref() {
        let Ok(chunk) = <[u8; 8]>::try_from(chunk) else {
            break;
        };
        let x = u64::from_le_bytes(chunk);
        let slashes = zeros(x ^ (ONES * u64::from(b'/')));
        let after_slash = (slashes << 8) | slash_before;
        if zeros(x ^ (ONES * u64::from(b'%'))) | (zeros(x ^ (ONES * u64::from(b'.'))) & after_slash)
            != 0
        {
            return true;
        }
        slash_before = slashes >> 56;
    }
    let mut previous = if slash_before != 0 { b'/' } else { 0 };
    chunks.remainder().iter().any(|&b| {
        let suspect = b == b'%' || (b == b'.' && previous == b'/');
        previous = b;
        suspect
    })
}

#[cfg(test)]
mod tests;
