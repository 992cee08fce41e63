//! The running gateway's shared state: the active bundle (behind
//! `arc-swap`), how it got there, and process-wide flags read by the admin
//! listener. Activation = compile, build upstream groups, swap; a request
//! holds its own `Arc<Active>` from start to end, so a swap never changes
//! the policy a request is already being served under.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use std::collections::HashSet;

use rustc_hash::FxHashMap;

use crate::limits::quota::QuotaStore;
use crate::limits::{push_header_item, LimitStore, Limits};
use crate::policy::{self, Bundle, PolicyErrors};
use crate::routing::UpstreamSet;

/// A bundle in service, with its upstream groups.
#[derive(Debug)]
pub struct Active {
    /// The compiled policy.
    pub bundle: Arc<Bundle>,
    /// Upstream groups, indexed like `bundle.apps`.
    pub upstreams: UpstreamSet,
    /// Each app's fence (concurrency cap, breakers, retry budget), indexed
    /// like `bundle.apps`; an app whose routes did not change keeps its
    /// fence, and so its breakers' state, across activations.
    pub fences: Vec<Arc<crate::pipeline::fence::AppFence>>,
    /// When it was activated.
    pub activated_at: SystemTime,
    /// Where it came from (directory path).
    pub source: String,
    /// Rate-limit stores by limit id.
    pub limit_stores: FxHashMap<String, Metered<dyn LimitStore>>,
    /// Quota counters by quota id.
    pub quota_stores: FxHashMap<String, Metered<QuotaStore>>,
    /// The names wide events carry, shared instead of copied per request.
    pub names: EventNames,
}

/// The policy's names as wide events carry them: one allocation per
/// activation, a reference count per request.
#[derive(Debug)]
pub struct EventNames {
    /// The policy version.
    pub version: Arc<str>,
    /// Per app (indexed like `bundle.apps`): its name and its routes' ids.
    pub apps: Vec<(Arc<str>, Vec<Arc<str>>)>,
    /// The route of requests to undeclared paths.
    pub passthrough: Arc<str>,
}

impl EventNames {
    fn new(bundle: &Bundle) -> Self {
        Self {
            version: bundle.version.as_str().into(),
            apps: bundle
                .apps
                .iter()
                .map(|a| {
                    let routes = a.routes.iter().map(|r| r.id.as_str().into()).collect();
                    (a.name.as_str().into(), routes)
                })
                .collect(),
            passthrough: "passthrough".into(),
        }
    }
}

/// A limit's or quota's store, with its `RateLimit-Policy` item rendered
/// once per activation (`"id";q=…;w=…`): it never changes between requests.
#[derive(Debug)]
pub struct Metered<S: ?Sized> {
    /// The counters.
    pub store: Arc<S>,
    /// The item this limit adds to `RateLimit-Policy`.
    pub policy_item: Box<str>,
}

impl<S: ?Sized> Metered<S> {
    fn new(store: Arc<S>, id: &str, quota: u64, window: u64) -> Self {
        let mut item = String::new();
        push_header_item(&mut item, id, ("q", quota), ("w", window));
        Self {
            store,
            policy_item: item.into_boxed_str(),
        }
    }
}

impl Active {
    /// Put `bundle` in service: upstream groups (keeping the live state of
    /// instances `previous` had) and limit stores (kept when unchanged).
    fn build(
        bundle: Arc<Bundle>,
        previous: Option<&Active>,
        limits: &Limits,
        source: String,
    ) -> Active {
        let upstreams = UpstreamSet::build(
            bundle.apps.iter().map(|a| (a.name.as_str(), &a.upstream)),
            previous.map(|p| {
                let names = p.bundle.apps.iter().map(|a| a.name.as_str()).collect();
                (&p.upstreams, names)
            }),
        );
        let mut limit_stores = FxHashMap::default();
        let mut quota_stores = FxHashMap::default();
        let rules = bundle
            .apps
            .iter()
            .flat_map(|a| a.limits.iter().map(|l| &l.rule))
            .chain(bundle.plans.values().flat_map(|p| p.limits.iter()));
        for rule in rules {
            let metered = Metered::new(
                limits.store(rule),
                &rule.id,
                u64::from(rule.burst),
                rule.rate.window_secs(),
            );
            limit_stores.insert(rule.id.clone(), metered);
        }
        for q in bundle.plans.values().flat_map(|p| p.quotas.iter()) {
            let metered = Metered::new(limits.quota(q), &q.id, q.limit, q.window.secs());
            quota_stores.insert(q.id.clone(), metered);
        }
        let ids: HashSet<String> = limit_stores
            .keys()
            .chain(quota_stores.keys())
            .cloned()
            .collect();
        limits.retain(&ids);
        // An app kept with the same routes and settings keeps its fences;
        // one whose routes or settings changed gets new ones that take over
        // from the old (what is in flight, the breakers' states).
        let now_ms = crate::routing::now_ms();
        let fences = bundle
            .apps
            .iter()
            .map(|app| {
                let before = previous.and_then(|p| {
                    let at = p.bundle.apps.iter().position(|a| a.name == app.name)?;
                    Some((&p.bundle.apps[at], &p.fences[at]))
                });
                if let Some((old, fence)) = before {
                    let same = old.routes.len() == app.routes.len()
                        && old
                            .routes
                            .iter()
                            .zip(&app.routes)
                            .all(|(a, b)| a.id == b.id)
                        && old.resilience == app.resilience;
                    if same {
                        return Arc::clone(fence);
                    }
                }
                let fresh = crate::pipeline::fence::AppFence::with(
                    app.routes.iter().map(|r| r.id.as_str()),
                    &app.resilience,
                );
                Arc::new(match before {
                    Some((_, fence)) => fresh.succeeding(fence, now_ms),
                    None => fresh,
                })
            })
            .collect();
        Active {
            names: EventNames::new(&bundle),
            bundle,
            upstreams,
            fences,
            activated_at: SystemTime::now(),
            source,
            limit_stores,
            quota_stores,
        }
    }
}

/// Outcome of a reload attempt.
#[derive(Debug)]
pub enum ReloadOutcome {
    /// A new version is active.
    Activated {
        /// Previous version.
        from: String,
        /// New version.
        to: String,
    },
    /// The files compile to the version already active.
    Unchanged,
}

/// State shared by the proxy, the admin listener and background services.
#[derive(Debug)]
pub struct Shared {
    active: ArcSwap<Active>,
    policies_dir: Option<PathBuf>,
    reload_lock: Mutex<()>,
    /// Successful activations since start (the first load included).
    pub reloads_ok: AtomicU64,
    /// Failed reload attempts since start.
    pub reloads_failed: AtomicU64,
    /// Errors of the last failed reload, cleared by a successful one.
    pub last_reload_errors: Mutex<Vec<String>>,
    /// Requests being served now.
    pub in_flight: AtomicUsize,
    /// Client connections open now (every listener and engine).
    pub connections: AtomicUsize,
    /// Client connections refused (answered 503) at the gateway's cap.
    pub connections_refused: AtomicU64,
    /// Told by the drain monitor when the last connection has closed: the
    /// telemetry sink then flushes once and reports `flushed`.
    pub telemetry_finish: tokio::sync::Notify,
    /// The proxy listener accepts connections.
    pub proxy_listening: AtomicBool,
    /// Graceful shutdown has begun.
    pub shutting_down: AtomicBool,
    /// Limit and quota stores, shared by successive bundles.
    pub limits: Limits,
    /// Telemetry counters, when telemetry is on.
    pub telemetry: std::sync::OnceLock<Arc<crate::telemetry::SinkStats>>,
}

impl Shared {
    /// Load and activate the bundle in `dir`; fails when it does not compile.
    pub fn load(dir: &Path) -> Result<Self, PolicyErrors> {
        let bundle = policy::load_and_compile(dir)?;
        Ok(Self::new(
            bundle,
            dir.display().to_string(),
            Some(dir.to_path_buf()),
        ))
    }

    /// Serve `bundle` (from `source`); `policies_dir` is the directory that
    /// [`Shared::reload`] recompiles (none when a control plane or the
    /// governed state decides what is active).
    pub fn new(bundle: Bundle, source: String, policies_dir: Option<PathBuf>) -> Self {
        let limits = Limits::default();
        let active = Active::build(Arc::new(bundle), None, &limits, source);
        Self {
            limits,
            telemetry: std::sync::OnceLock::new(),
            active: ArcSwap::from_pointee(active),
            policies_dir,
            reload_lock: Mutex::new(()),
            reloads_ok: AtomicU64::new(1),
            reloads_failed: AtomicU64::new(0),
            last_reload_errors: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            connections_refused: AtomicU64::new(0),
            telemetry_finish: tokio::sync::Notify::new(),
            proxy_listening: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
        }
    }

    /// The active bundle (one atomic load; hold it for the whole request).
    pub fn active(&self) -> Arc<Active> {
        self.active.load_full()
    }

    /// The directory the bundle is loaded from (file mode only).
    pub fn policies_dir(&self) -> Option<&Path> {
        self.policies_dir.as_deref()
    }

    /// Record a bundle that failed to compile (kept for `/v1/policy`).
    pub fn record_rejection(&self, errors: &PolicyErrors) {
        self.reloads_failed.fetch_add(1, Ordering::Relaxed);
        *self
            .last_reload_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner()) =
            errors.0.iter().map(ToString::to_string).collect();
    }

    /// Recompile the policy directory and activate it if it compiles and
    /// differs. Blocking (file I/O, DNS): call from a blocking context.
    /// On failure the active bundle stays and every error is returned.
    pub fn reload(&self) -> Result<ReloadOutcome, PolicyErrors> {
        let Some(dir) = &self.policies_dir else {
            return Ok(ReloadOutcome::Unchanged);
        };
        let _serial = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        match policy::load_and_compile(dir) {
            Ok(b) => Ok(self.swap(b, dir.display().to_string())),
            Err(errors) => {
                self.record_rejection(&errors);
                Err(errors)
            }
        }
    }

    /// Put a compiled bundle in service (atomic swap), unless it is the
    /// version already active.
    pub fn activate(&self, bundle: Bundle, source: String) -> ReloadOutcome {
        let _serial = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.swap(bundle, source)
    }

    fn swap(&self, bundle: Bundle, source: String) -> ReloadOutcome {
        let current = self.active();
        self.last_reload_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        if current.bundle.version == bundle.version {
            return ReloadOutcome::Unchanged;
        }
        let to = bundle.version.clone();
        let next = Active::build(Arc::new(bundle), Some(&current), &self.limits, source);
        self.active.store(Arc::new(next));
        self.reloads_ok.fetch_add(1, Ordering::Relaxed);
        ReloadOutcome::Activated {
            from: current.bundle.version.clone(),
            to,
        }
    }

    /// Count a request in flight until the guard drops.
    pub fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }
}

impl Shared {
    /// Count a client connection open until the guard drops; `None` when
    /// as many are open as the gateway's descriptors allow
    /// (`crate::capacity`), counted as refused.
    pub fn connection(self: &Arc<Self>) -> Option<OpenConnection> {
        let before = self.connections.fetch_add(1, Ordering::Relaxed);
        if before >= crate::capacity::client_connections() {
            self.connections.fetch_sub(1, Ordering::Relaxed);
            self.connections_refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(OpenConnection(Arc::clone(self)))
    }
}

/// Counts one open client connection; decrements on drop.
#[derive(Debug)]
pub struct OpenConnection(Arc<Shared>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts one request in flight; decrements on drop.
#[derive(Debug)]
pub struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Run `work` (a compile) on a thread of its own at a lower CPU priority
/// (nice 10), so that the request threads keep their cores while a large
/// bundle compiles; its result once done (`None`: no thread could be
/// started, or `work` panicked).
pub async fn in_background<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let started = std::thread::Builder::new()
        .name("gatehouse-compile".into())
        .spawn(move || {
            let me = rustix::thread::gettid();
            if let Err(e) = rustix::process::setpriority_process(Some(me), COMPILE_NICE) {
                tracing::debug!(error = %e, "cannot lower the compile thread's priority");
            }
            let _ = tx.send(work());
        });
    if let Err(e) = started {
        tracing::error!(error = %e, "cannot start a thread to compile the policy");
        return None;
    }
    rx.await.ok()
}

/// The compile thread's nice value: below the request threads, which keep
/// the default 0.
const COMPILE_NICE: i32 = 10;

/// Reload and log the outcome (every error on failure).
pub fn reload_and_log(shared: &Shared, trigger: &str) {
    let started = std::time::Instant::now();
    match shared.reload() {
        Ok(ReloadOutcome::Activated { from, to }) => {
            tracing::info!(
                trigger,
                from = &from[..12],
                to = &to[..12],
                ms = started.elapsed().as_millis() as u64,
                "policy bundle activated"
            );
        }
        Ok(ReloadOutcome::Unchanged) => {
            tracing::info!(
                trigger,
                "policy files changed but compile to the active version; nothing to do"
            );
        }
        Err(errors) => {
            tracing::error!(
                trigger,
                errors = errors.0.len(),
                "policy reload rejected; the active version keeps serving"
            );
            for e in &errors.0 {
                tracing::error!(file = %e.file, pointer = %e.pointer, "{}", e.message);
            }
        }
    }
}
