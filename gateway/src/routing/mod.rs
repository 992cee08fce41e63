//! Request routing: host → app (exact, then wildcard; longest path prefix),
//! then method + path template → route (most specific first).
//!
//! Everything here is built once per bundle and read without locks or
//! allocation on the request path.

mod balancer;
pub mod health;
mod template;
pub mod upstream;

pub use balancer::{
    ms_at, now_ms, Instance, InstanceLease, Pick, UpstreamGroup, UpstreamSet, MAX_INSTANCES,
};
pub use template::{PathTemplate, Segment, TemplateError};

use std::collections::HashMap;

use rustc_hash::FxHashMap;

use http::Method;

/// What the router reads of an app: its hosts, path prefix and routes
/// (the policy's compiled app implements it).
pub trait RoutedApp {
    /// A route of the app.
    type Route: RoutedRoute;
    /// Hosts, exact or `*.suffix`, lowercase.
    fn hosts(&self) -> &[String];
    /// The path prefix (`""` for none).
    fn path_prefix(&self) -> &str;
    /// Paths are matched regardless of case.
    fn case_insensitive_paths(&self) -> bool;
    /// Routes, most specific first.
    fn routes(&self) -> &[Self::Route];
    /// Paths no route matches are forwarded.
    fn passthrough(&self) -> bool;
}

impl<A: RoutedApp> RoutedApp for std::sync::Arc<A> {
    type Route = A::Route;
    fn hosts(&self) -> &[String] {
        (**self).hosts()
    }
    fn path_prefix(&self) -> &str {
        (**self).path_prefix()
    }
    fn case_insensitive_paths(&self) -> bool {
        (**self).case_insensitive_paths()
    }
    fn routes(&self) -> &[Self::Route] {
        (**self).routes()
    }
    fn passthrough(&self) -> bool {
        (**self).passthrough()
    }
}

/// What the router reads of a route.
pub trait RoutedRoute {
    /// Its path template.
    fn template(&self) -> &PathTemplate;
    /// Does it accept `method`?
    fn accepts(&self, method: &Method) -> bool;
}

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
    /// The path has no one reading on the app's platform.
    BadPath {
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
    pub fn build<A: RoutedApp>(apps: &[A]) -> Self {
        let mut exact: FxHashMap<String, Vec<PrefixEntry>> = FxHashMap::default();
        let mut wildcard: HashMap<String, Vec<PrefixEntry>> = HashMap::new();
        for (i, app) in apps.iter().enumerate() {
            for host in app.hosts() {
                let entry = PrefixEntry {
                    prefix: app.path_prefix().to_string(),
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
    pub fn route<A: RoutedApp>(
        &self,
        apps: &[A],
        host: &str,
        method: &Method,
        path: &str,
    ) -> RouteMatch {
        let host = normalize_host(host);
        let Some(app_idx) = self.find_app(&host, path) else {
            return RouteMatch::NoApp;
        };
        let app = &apps[app_idx];
        let sub = strip_app_prefix(app.path_prefix(), path);
        let folded;
        let sub = if app.case_insensitive_paths() {
            match case_insensitive_key(sub) {
                Some(key) => {
                    folded = key;
                    folded.as_str()
                }
                None => return RouteMatch::BadPath { app: app_idx },
            }
        } else {
            sub
        };
        let mut path_known = false;
        for (i, r) in app.routes().iter().enumerate() {
            if r.template().matches(sub) {
                if r.accepts(method) {
                    return RouteMatch::Route {
                        app: app_idx,
                        route: i,
                    };
                }
                path_known = true;
            }
        }
        if app.passthrough() {
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

/// Why a request path is refused (400): a form that apps read in more than
/// one way, so no single reading could be judged and forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathRefused;

/// The one reading of a request path that routing, every policy and the
/// app share; the engines forward this path, not the client's bytes.
///
/// - percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are
///   decoded (`/%61dmin` is `/admin`); other escapes stay, hex in upper case;
/// - repeated slashes are merged, `.` and `..` segments resolved (RFC 3986
///   §5.2.4), also when encoded; a trailing slash is kept;
/// - refused: `;` (path parameters, which Java servers strip and others do
///   not) and `%3B`, a backslash or `%5C` (a separator on Windows servers),
///   `%2F`, encoded control bytes, double encoding (`%25` then two hex
///   digits), a malformed escape, and `..` above the root.
///
/// Borrowed when the path is already canonical (the common case, found
/// eight bytes at a time).
pub fn canonical_path(path: &str) -> Result<std::borrow::Cow<'_, str>, PathRefused> {
    if !path.starts_with('/') {
        return Err(PathRefused);
    }
    if !suspect(path.as_bytes()) {
        return Ok(std::borrow::Cow::Borrowed(path));
    }
    let bytes = path.as_bytes();
    // Decode first, so that an encoded dot segment is resolved as one.
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b';' | b'\\' => return Err(PathRefused),
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    bytes.get(i + 1).and_then(|&h| hex(h)),
                    bytes.get(i + 2).and_then(|&l| hex(l)),
                ) else {
                    return Err(PathRefused);
                };
                let v = hi << 4 | lo;
                if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') {
                    decoded.push(char::from(v));
                } else if v < 0x20
                    || v == 0x7f
                    || matches!(v, b'/' | b'\\' | b';')
                    || (v == b'%'
                        && bytes.get(i + 3).is_some_and(|&h| hex(h).is_some())
                        && bytes.get(i + 4).is_some_and(|&l| hex(l).is_some()))
                {
                    return Err(PathRefused);
                } else {
                    const HEX: &[u8; 16] = b"0123456789ABCDEF";
                    decoded.push('%');
                    decoded.push(char::from(HEX[usize::from(hi)]));
                    decoded.push(char::from(HEX[usize::from(lo)]));
                }
                i += 3;
            }
            _ => {
                // Copy the run up to the next byte of interest whole (it may
                // hold multi-byte characters).
                let run = bytes[i..]
                    .iter()
                    .position(|&c| matches!(c, b'%' | b';' | b'\\'))
                    .map_or(bytes.len(), |n| i + n);
                decoded.push_str(path.get(i..run).ok_or(PathRefused)?);
                i = run;
            }
        }
    }
    // Then the segments: empty ones (repeated slashes) dropped, dots resolved.
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for seg in decoded.split('/').skip(1) {
        match seg {
            "" => {}
            "." => trailing_slash = true,
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathRefused);
                }
                trailing_slash = true;
            }
            s => {
                segments.push(s);
                trailing_slash = false;
            }
        }
    }
    if decoded.ends_with('/') {
        trailing_slash = true;
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    // Decoding may have made a double encoding (`%25%34%31` is `%2541`).
    let b = out.as_bytes();
    if (0..b.len().saturating_sub(4))
        .any(|i| &b[i..i + 3] == b"%25" && hex(b[i + 3]).is_some() && hex(b[i + 4]).is_some())
    {
        return Err(PathRefused);
    }
    if out == path {
        return Ok(std::borrow::Cow::Borrowed(path));
    }
    Ok(std::borrow::Cow::Owned(out))
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// How a case-insensitive platform (IIS / .NET) reads a path for matching:
/// ASCII letters in lower case, and each segment without trailing dots and
/// spaces (also `%20`), as Windows names are read. The segments stay where
/// they are, so path parameters are taken from the same positions. `None`
/// for a segment of dots and spaces only (`...`, `%20`, `..%20`): Windows
/// would read it as nothing or as a dot segment, which the gateway does not
/// guess at.
pub fn case_insensitive_key(path: &str) -> Option<String> {
    let mut out = String::with_capacity(path.len());
    for (i, seg) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        let mut s = seg;
        loop {
            let trimmed = s.trim_end_matches(['.', ' ']);
            let trimmed = trimmed.strip_suffix("%20").unwrap_or(trimmed);
            if trimmed.len() == s.len() {
                break;
            }
            s = trimmed;
        }
        if s.is_empty() && !seg.is_empty() {
            return None;
        }
        out.extend(s.chars().map(|c| c.to_ascii_lowercase()));
    }
    Some(out)
}

/// Whether `path` may not be canonical: it has a `%`, `;` or backslash, or a `.`
/// or `/` right after a `/`. Eight bytes at a time, with each byte's match
/// found exactly (no borrow between bytes).
fn suspect(path: &[u8]) -> bool {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const LOW7: u64 = u64::from_le_bytes([0x7F; 8]);
    // 0x80 in each byte of `x` that is zero, and nothing else.
    let zeros = |x: u64| !(((x & LOW7) + LOW7) | x | LOW7);
    let is = |x: u64, b: u8| zeros(x ^ (ONES * u64::from(b)));
    // 0x80 in the lowest byte when the byte before the chunk is a `/`.
    let mut slash_before = 0u64;
    let mut chunks = path.chunks_exact(8);
    for chunk in chunks.by_ref() {
        let Ok(chunk) = <[u8; 8]>::try_from(chunk) else {
            break;
        };
        let x = u64::from_le_bytes(chunk);
        let slashes = is(x, b'/');
        let after_slash = (slashes << 8) | slash_before;
        if is(x, b'%') | is(x, b';') | is(x, b'\\') | ((is(x, b'.') | slashes) & after_slash) != 0 {
            return true;
        }
        slash_before = slashes >> 56;
    }
    let mut previous = if slash_before != 0 { b'/' } else { 0 };
    chunks.remainder().iter().any(|&b| {
        let suspect =
            matches!(b, b'%' | b';' | b'\\') || (matches!(b, b'.' | b'/') && previous == b'/');
        previous = b;
        suspect
    })
}

#[cfg(test)]
mod tests;
