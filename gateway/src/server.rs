//! Assembling the process: the Pingora server with the proxy listener(s),
//! the admin listener, the policy watcher, the health checker and the drain
//! monitor, all as Pingora services sharing one [`Shared`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use pingora::server::configuration::ServerConf;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};

use crate::proxy::Gateway;
use crate::routing::{health, now_ms};
use crate::runtime::{reload_and_log, Shared};

/// Where the policy a node serves comes from.
#[derive(Debug, Clone)]
pub enum PolicySource {
    /// A bundle directory, reloaded on change (and SIGHUP).
    Files {
        /// The directory.
        dir: PathBuf,
        /// Watch it for changes.
        watch: bool,
    },
    /// A governed state directory: changes only through reviewed proposals;
    /// this node is the control plane.
    Governed {
        /// The state directory.
        state: PathBuf,
        /// Bundle imported as the first version when the state is empty.
        bootstrap: Option<PathBuf>,
        /// Ed25519 key (PKCS#8) that signs every audit entry; kept outside
        /// the state directory.
        signing_key: Option<PathBuf>,
        /// Single sign-on for the admin API.
        sso: Option<crate::governance::sso::SsoConfig>,
    },
    /// A fleet node following a control plane.
    Follower(crate::governance::follower::FollowerConfig),
}

/// Options of `gatehouse serve`.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Where the policy comes from.
    pub source: PolicySource,
    /// Plain HTTP listener.
    pub listen: String,
    /// Admin listener.
    pub admin_listen: String,
    /// TLS listener (HTTP/1.1 and HTTP/2 via ALPN).
    pub tls_listen: Option<String>,
    /// PEM certificate chain for the TLS listener.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for the TLS listener.
    pub tls_key: Option<PathBuf>,
    /// Worker threads of the proxy.
    pub threads: usize,
    /// Longest time in-flight requests get to finish after SIGTERM.
    pub drain_timeout: Duration,
    /// Longest time a client may take to send a whole request head, from
    /// its first byte, and then a whole buffered body (408 after it), on
    /// the plain listener's lean engine; Pingora's proxy (TLS, or
    /// `--http1-engine pingora`) bounds each read instead, and a streamed
    /// body by the app's total timeout.
    pub client_timeout: Duration,
    /// Telemetry to ClickHouse (off when `None`).
    pub telemetry: Option<TelemetryOptions>,
    /// Accept cleartext HTTP/2 (prior knowledge) on the plain listener too.
    pub h2c: bool,
    /// What carries HTTP/1.1 on the plain listener.
    pub http1_engine: Http1Engine,
    /// Principals allowed to read `/v1/policy` and `/v1/apps` (governed
    /// mode uses the state directory's own).
    pub admin_principals: Option<PathBuf>,
    /// Take the listeners (and, governed, the state directory) over from
    /// the gatehouse recorded in `run_dir`, which then drains and exits.
    pub upgrade: bool,
    /// Where this process records its pid and a successor's upgrade
    /// socket lives.
    pub run_dir: PathBuf,
}

/// What carries HTTP/1.1 on the plain listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Http1Engine {
    /// Gatehouse's own request loop ([`crate::proxy::http1`]); requests it
    /// does not carry go to Pingora on the same connection.
    Lean,
    /// Pingora's proxy for every request.
    Pingora,
}

/// Telemetry settings of `serve`.
#[derive(Debug, Clone)]
pub struct TelemetryOptions {
    /// ClickHouse HTTP URL.
    pub url: String,
    /// Database.
    pub database: String,
    /// Run migrations at start instead of refusing a missing schema.
    pub migrate: bool,
    /// Spool directory.
    pub spool_dir: PathBuf,
    /// Spool cap.
    pub spool_max_bytes: u64,
    /// Rows per insert.
    pub batch_size: usize,
    /// Longest wait of a row for its batch.
    pub flush_interval: Duration,
    /// Queue capacity (rows).
    pub queue_capacity: usize,
    /// This node's name in events.
    pub instance: String,
    /// Drop daily partitions older than this many days (hourly job).
    pub retention_days: Option<u32>,
}

/// The policy a node serves, and the control plane in governed mode.
type Policy = (
    Arc<Shared>,
    Option<Arc<crate::governance::control::Control>>,
);

/// Load (compile) the policy to serve. In governed mode the state
/// directory's lock is taken, waiting up to `lock_wait` for a predecessor
/// to hand it over.
fn load_policy(source: &PolicySource, lock_wait: Duration) -> anyhow::Result<Policy> {
    Ok(match source {
        PolicySource::Files { dir, .. } => match Shared::load(dir) {
            Ok(s) => (Arc::new(s), None),
            Err(errors) => {
                for e in &errors.0 {
                    tracing::error!("{e}");
                }
                anyhow::bail!(
                    "the policy bundle in {} does not compile ({} errors)",
                    dir.display(),
                    errors.0.len()
                );
            }
        },
        PolicySource::Governed {
            state,
            bootstrap,
            signing_key,
            sso,
        } => {
            let lock = crate::governance::control::StateLock::acquire(state, lock_wait)?;
            let (store, audit, bundle) = crate::governance::control::open_state(
                state,
                bootstrap.as_deref(),
                signing_key.as_deref(),
            )?;
            let shared = Arc::new(Shared::new(
                bundle,
                format!("state:{}", state.display()),
                None,
            ));
            let mut c = crate::governance::control::Control::new(store, audit, Arc::clone(&shared))
                .holding(lock);
            if let Some(config) = sso {
                let issuer = config.issuer.clone();
                let sso = crate::governance::sso::Sso::new(config.clone(), state)
                    .map_err(|e| anyhow::anyhow!("--admin-oidc-*: {e}"))?;
                tracing::info!(%issuer, "admin API accepts the identity provider's tokens");
                c = c.with_sso(sso);
            }
            (shared, Some(Arc::new(c)))
        }
        PolicySource::Follower(cfg) => {
            let (bundle, source) = crate::governance::follower::initial_bundle(cfg)?;
            (Arc::new(Shared::new(bundle, source, None)), None)
        }
    })
}

/// Create `dir` (mode 0700), or check that it is this user's directory and
/// make it 0700: a successor signals the pid recorded there and takes
/// listening sockets from the socket there, so nobody else may use it.
fn private_run_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create --run-dir {}", dir.display()))?;
    let meta = std::fs::symlink_metadata(dir)
        .with_context(|| format!("cannot read --run-dir {}", dir.display()))?;
    let ours = meta.is_dir() && meta.uid() == nix::unistd::geteuid().as_raw();
    if ours && meta.mode() & 0o077 != 0 {
        // Ours, but open to others (made by hand, or by an older release):
        // only we can have written in it, so close it.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make --run-dir {} private", dir.display()))?;
    } else if !ours {
        anyhow::bail!(
            "--run-dir {} must be a directory owned by this user that no one else can use (mode 0700; a successor signals the pid recorded there and takes the listeners from a socket there)",
            dir.display()
        );
    }
    Ok(())
}

/// The process id in `pid_file`, if the gatehouse that wrote it still
/// runs (it holds the file's lock for its life).
fn running_gatehouse(pid_file: &Path) -> anyhow::Result<nix::unistd::Pid> {
    let file = std::fs::File::open(pid_file).with_context(|| {
        format!(
            "--upgrade: no running gatehouse recorded in {} (is --run-dir the one it was started with?)",
            pid_file.display()
        )
    })?;
    if file.try_lock_shared().is_ok() {
        anyhow::bail!(
            "--upgrade: the gatehouse recorded in {} is not running any more",
            pid_file.display()
        );
    }
    let text = std::fs::read_to_string(pid_file).with_context(|| {
        format!(
            "--upgrade: no running gatehouse recorded in {} (is --run-dir the one it was started with?)",
            pid_file.display()
        )
    })?;
    let pid: i32 = text
        .trim()
        .parse()
        .with_context(|| format!("--upgrade: {} holds no process id", pid_file.display()))?;
    let pid = nix::unistd::Pid::from_raw(pid);
    nix::sys::signal::kill(pid, None).with_context(|| {
        format!(
            "--upgrade: the gatehouse recorded in {} (pid {pid}) is not running",
            pid_file.display()
        )
    })?;
    Ok(pid)
}

/// Once this process waits on `socket` for the listening sockets, ask the
/// running gatehouse `pid` (SIGQUIT) to send them and drain.
fn ask_to_hand_over(pid: nix::unistd::Pid, socket: PathBuf) {
    let _ = std::fs::remove_file(&socket);
    std::thread::spawn(move || {
        for _ in 0..3000 {
            if socket.exists() {
                match nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGQUIT) {
                    Ok(()) => {
                        tracing::info!(%pid, "asked the running gatehouse to hand over its listeners")
                    }
                    Err(e) => {
                        tracing::error!(%pid, error = %e, "cannot signal the running gatehouse")
                    }
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        tracing::error!(socket = %socket.display(), "the upgrade socket never appeared");
    });
}

/// Until Pingora watches for SIGQUIT (the hand-over request), its default
/// action would end the process: handle it (doing nothing) from the start.
/// A SIGQUIT before Pingora runs is thus ignored (the pid file that a
/// successor reads is written only once Pingora runs), never fatal.
fn ignore_sigquit_until_pingora_runs() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    if let Ok(rt) = rt {
        // The handler stays installed for the process's life; the stream
        // is not needed.
        let installed = rt.block_on(async {
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::quit()).map(drop)
        });
        if let Err(e) = installed {
            tracing::warn!(error = %e, "cannot handle SIGQUIT before start-up completes");
        }
    }
}

/// Records this process in the pid file, once Pingora runs (and handles
/// SIGQUIT): the one a later `--upgrade` takes over from. The file stays
/// locked while the process lives, so a successor never signals a stale pid.
struct PidFile {
    phases:
        std::sync::Mutex<Option<tokio::sync::broadcast::Receiver<pingora::server::ExecutionPhase>>>,
    path: PathBuf,
    held: std::sync::Mutex<Option<std::fs::File>>,
}

impl PidFile {
    fn write(&self) -> std::io::Result<()> {
        let tmp = self.path.with_extension("pid.tmp");
        let mut file = std::fs::File::create(&tmp)?;
        file.lock()?;
        std::io::Write::write_all(&mut file, format!("{}\n", std::process::id()).as_bytes())?;
        std::fs::rename(&tmp, &self.path)?;
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) = Some(file);
        Ok(())
    }
}

#[async_trait]
impl BackgroundService for PidFile {
    async fn start(&self, _shutdown: ShutdownWatch) {
        if !reaches(&self.phases, |p| {
            matches!(p, pingora::server::ExecutionPhase::Running)
        })
        .await
        {
            return;
        }
        // Pingora installs its signal handlers right after announcing
        // `Running`, on its own thread.
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Err(e) = self.write() {
            tracing::error!(path = %self.path.display(), error = %e, "cannot write the pid file; --upgrade cannot take over from this process");
        }
        // Keep the task (and the lock) until the runtime stops.
        std::future::pending::<()>().await;
    }
}

/// Run the gateway until SIGTERM/SIGINT (or, after SIGQUIT, until a
/// successor started with `--upgrade` has taken the listeners over).
pub fn run(opts: ServeOptions) -> anyhow::Result<()> {
    // The gateway's own capacity, from its descriptor limit, before the
    // first bundle sizes its apps' fences.
    match crate::capacity::Capacity::of_process() {
        Some(c) => {
            c.apply();
            tracing::info!(
                descriptors = c.descriptors,
                client_connections = c.client_connections,
                in_flight = c.in_flight,
                idle_upstream = c.idle_upstream,
                "capacity set from the descriptor limit"
            );
        }
        None => tracing::warn!("the descriptor limit cannot be read: no capacity limits are set"),
    }
    // Without --upgrade the run directory only serves a later upgrade: a
    // start never fails for it (a read-only file system, say).
    let run_dir_usable = match private_run_dir(&opts.run_dir) {
        Ok(()) => true,
        Err(e) if !opts.upgrade => {
            tracing::warn!(error = %format!("{e:#}"), "no pid file: a later --upgrade cannot take over from this process");
            false
        }
        Err(e) => return Err(e),
    };
    let pid_file = opts.run_dir.join("gatehouse.pid");
    let upgrade_sock = opts.run_dir.join("upgrade.sock");
    let predecessor = match opts.upgrade {
        true => Some(running_gatehouse(&pid_file)?),
        false => None,
    };
    if !opts.upgrade && run_dir_usable {
        if let Ok(pid) = running_gatehouse(&pid_file) {
            anyhow::bail!(
                "a gatehouse (pid {pid}) runs with --run-dir {}: replace it with --upgrade, or give this one its own --listen/--run-dir",
                opts.run_dir.display()
            );
        }
    }
    // A governed successor takes the state directory only once its
    // predecessor has handed it over (after the listeners); it checks
    // beforehand that the state opens and its active version compiles, so
    // a successor that cannot serve never takes the listeners.
    let state_after_handover =
        predecessor.is_some() && matches!(opts.source, PolicySource::Governed { .. });
    let policy = if state_after_handover {
        if let PolicySource::Governed {
            state,
            signing_key,
            sso,
            ..
        } = &opts.source
        {
            crate::governance::control::open_state(state, None, signing_key.as_deref())?;
            if let Some(config) = sso {
                crate::governance::sso::Sso::new(config.clone(), state)
                    .map_err(|e| anyhow::anyhow!("--admin-oidc-*: {e}"))?;
            }
        }
        None
    } else {
        Some(load_policy(&opts.source, Duration::ZERO)?)
    };
    let admin_addr: SocketAddr = opts
        .admin_listen
        .parse()
        .context("--admin-listen must be IP:PORT")?;
    let listen_addr: SocketAddr = opts.listen.parse().context("--listen must be IP:PORT")?;
    // Before taking any listener: a schema that does not fit stops here.
    let clickhouse_answers = match &opts.telemetry {
        Some(t) => prepare_clickhouse(t)?,
        None => false,
    };

    let conf = ServerConf {
        threads: opts.threads.max(1),
        work_stealing: false,
        // A backstop: the drain monitor exits by itself within
        // --drain-timeout, its final flush included.
        grace_period_seconds: Some(opts.drain_timeout.as_secs() + 4),
        graceful_shutdown_timeout_seconds: Some(1),
        max_retries: 11,
        // How long a successor waits for the sockets (about a second each).
        upgrade_sock_connect_accept_max_retries: Some(30),
        pid_file: pid_file.display().to_string(),
        upgrade_sock: upgrade_sock.display().to_string(),
        ..ServerConf::default()
    };
    let pingora_opt = pingora::server::configuration::Opt {
        upgrade: predecessor.is_some(),
        ..Default::default()
    };
    // Everything that can fail is done before the listeners are taken:
    // after that, the predecessor drains whatever happens here.
    let mut telemetry = None;
    let mut sink_parts = None;
    if let Some(t) = &opts.telemetry {
        let (producer, sink) = crate::telemetry::sink::channel(crate::telemetry::SinkConfig {
            url: t.url.clone(),
            database: t.database.clone(),
            batch_size: t.batch_size.max(1),
            flush_interval: t.flush_interval,
            queue_capacity: t.queue_capacity,
            spool_dir: t.spool_dir.clone(),
            spool_cap_bytes: t.spool_max_bytes,
            migrate: t.migrate,
        })
        .with_context(|| format!("cannot open the telemetry spool {}", t.spool_dir.display()))?;
        producer
            .stats
            .connected
            .store(clickhouse_answers, Ordering::Relaxed);
        crate::telemetry::fence_events::set_instance(&t.instance);
        telemetry = Some((producer, t.instance.clone()));
        sink_parts = Some((sink, t.clone()));
    }
    let tls_settings = match &opts.tls_listen {
        Some(_) => {
            let (Some(cert), Some(key)) = (&opts.tls_cert, &opts.tls_key) else {
                anyhow::bail!("--tls-listen needs --tls-cert and --tls-key");
            };
            let mut tls = pingora::listeners::tls::TlsSettings::intermediate(
                &cert.display().to_string(),
                &key.display().to_string(),
            )
            .map_err(|e| anyhow::anyhow!("cannot load TLS certificate/key: {e}"))?;
            tls.enable_h2();
            Some(tls)
        }
        None => None,
    };
    let mut server = Server::new_with_opt_and_conf(Some(pingora_opt), conf);
    let phases = server.watch_execution_phase();
    ignore_sigquit_until_pingora_runs();
    if let Some(pid) = predecessor {
        ask_to_hand_over(pid, upgrade_sock.clone());
    }
    server.bootstrap();
    if predecessor.is_some() {
        tracing::info!("listeners taken over from the running gatehouse");
    }
    let (shared, control) = match policy {
        Some(p) => p,
        None => load_policy(&opts.source, Duration::from_secs(30))?,
    };
    let mut telemetry_service = None;
    if let Some((producer, _)) = &telemetry {
        let _ = shared.telemetry.set(Arc::clone(&producer.stats));
    }
    if let Some((sink, options)) = sink_parts {
        telemetry_service = Some(TelemetryService {
            sink: std::sync::Mutex::new(Some(sink)),
            shared: Arc::clone(&shared),
            options,
        });
    }
    {
        let active = shared.active();
        tracing::info!(
            version = active.bundle.short_version(),
            apps = active.bundle.apps.len(),
            routes = active.bundle.route_count(),
            "policy bundle active"
        );
    }

    let gateway = || {
        let g = Gateway::new(Arc::clone(&shared));
        match &telemetry {
            Some((producer, instance)) => g.with_telemetry(producer.clone(), instance.clone()),
            None => g,
        }
    };
    let server_options = opts.h2c.then(|| {
        let mut options = pingora::apps::HttpServerOptions::default();
        options.h2c = true;
        options
    });
    // Pingora's proxy behind Gatehouse's HTTP/2 front (`proxy::h2`): the
    // TLS listener, and the plain one with `--http1-engine pingora`.
    let mut pingora_proxy = pingora::proxy::http_proxy(&server.configuration, gateway());
    pingora_proxy.server_options = server_options.clone();
    let mut proxy = pingora::services::listening::Service::new(
        "gatehouse-proxy".to_string(),
        crate::proxy::front::Front::new(pingora_proxy, opts.client_timeout, Arc::clone(&shared)),
    );
    match opts.http1_engine {
        Http1Engine::Pingora => proxy.add_tcp(&opts.listen),
        Http1Engine::Lean => {
            let mut fallback = pingora::proxy::http_proxy(&server.configuration, gateway());
            fallback.server_options = server_options;
            let engine = crate::proxy::http1::Engine::new(
                Arc::clone(&shared),
                telemetry.clone(),
                fallback,
                opts.client_timeout,
            );
            let mut lean =
                pingora::services::listening::Service::new("gatehouse-http1".to_string(), engine);
            // The engine reads into and writes from its own buffers, so
            // Pingora's layer buffers (a 64 KiB read buffer, a 1 460-byte
            // write buffer) would only copy every byte once more.
            lean.add_listener(
                pingora::listeners::ListenerConfig::tcp(opts.listen.as_str())
                    .l4_buffer(pingora::protocols::l4::stream::L4BufferSettings::unbuffered()),
            );
            server.add_service(lean);
        }
    }
    if let (Some(tls_addr), Some(tls)) = (&opts.tls_listen, tls_settings) {
        proxy.add_tls_with_settings(tls_addr, None, tls);
    }
    if opts.http1_engine == Http1Engine::Pingora || opts.tls_listen.is_some() {
        server.add_service(proxy);
    }
    let guard = match (&control, &opts.admin_principals) {
        (Some(c), _) => crate::admin::ReadGuard::Control(Arc::clone(c)),
        (None, Some(path)) => crate::admin::ReadGuard::Principals(Arc::new(
            crate::governance::principals::Principals::new(path.clone()),
        )),
        (None, None) => {
            tracing::warn!(
                "no --admin-principals: /v1/policy and /v1/apps are readable without a token"
            );
            crate::admin::ReadGuard::Open
        }
    };
    let admin_router = crate::admin::router(Arc::clone(&shared), control.clone(), guard);
    let mut admin = pingora::services::listening::Service::new(
        "gatehouse-admin".to_string(),
        crate::admin::listener::AdminApp::new(admin_router.clone()),
    );
    admin.add_tcp(&admin_addr.to_string());
    admin.threads = Some(1);
    server.add_service(admin);
    server.add_service(background_service(
        "readiness",
        Readiness {
            shared: Arc::clone(&shared),
            proxy: listen_addr,
        },
    ));
    server.add_service(background_service(
        "health-checker",
        HealthChecker {
            shared: Arc::clone(&shared),
        },
    ));
    match &opts.source {
        PolicySource::Files { watch, .. } => {
            server.add_service(background_service(
                "policy-watcher",
                PolicyWatcher {
                    shared: Arc::clone(&shared),
                    watch_files: *watch,
                },
            ));
        }
        PolicySource::Follower(cfg) => {
            server.add_service(background_service(
                "policy-follower",
                Follower {
                    shared: Arc::clone(&shared),
                    config: cfg.clone(),
                },
            ));
            server.add_service(background_service(
                "sighup",
                IgnoreHangup {
                    why: "a fleet node follows the control plane",
                },
            ));
        }
        PolicySource::Governed { .. } => {
            server.add_service(background_service(
                "sighup",
                IgnoreHangup {
                    why: "a governed control plane changes policy through proposals",
                },
            ));
        }
    }
    if let Some(t) = telemetry_service {
        server.add_service(background_service("telemetry", t));
    }
    if let (Some(c), Some(t)) = (&control, &opts.telemetry) {
        server.add_service(background_service(
            "audit-heads",
            AuditHeadExport {
                export: std::sync::Mutex::new(Some(
                    crate::governance::audit_export::HeadExport::new(
                        &t.url,
                        &t.database,
                        &c.store().audit_path(),
                    ),
                )),
            },
        ));
    }
    server.add_service(background_service(
        "limit-evictor",
        LimitEvictor {
            shared: Arc::clone(&shared),
        },
    ));
    server.add_service(background_service(
        "drain-monitor",
        DrainMonitor {
            shared: Arc::clone(&shared),
            deadline: opts.drain_timeout,
            admin: (admin_addr, admin_router),
            control: control.clone(),
        },
    ));
    if run_dir_usable {
        server.add_service(background_service(
            "pid-file",
            PidFile {
                phases: std::sync::Mutex::new(Some(server.watch_execution_phase())),
                path: pid_file,
                held: std::sync::Mutex::new(None),
            },
        ));
    }
    if let Some(c) = &control {
        server.add_service(background_service(
            "handover",
            Handover {
                phases: std::sync::Mutex::new(Some(phases)),
                control: Arc::clone(c),
            },
        ));
    }
    tracing::info!(listen = %opts.listen, admin = %opts.admin_listen, tls = ?opts.tls_listen, "gatehouse starting");
    server.run_forever()
}

/// Pingora's execution phases, as a service receives them (taken once).
type Phases =
    std::sync::Mutex<Option<tokio::sync::broadcast::Receiver<pingora::server::ExecutionPhase>>>;

/// Wait until Pingora announces a phase that `wanted` accepts; `false`
/// when it never will (the announcements ended, or were taken already).
async fn reaches(
    phases: &Phases,
    wanted: impl Fn(&pingora::server::ExecutionPhase) -> bool,
) -> bool {
    let Some(mut phases) = phases.lock().ok().and_then(|mut p| p.take()) else {
        return false;
    };
    loop {
        match phases.recv().await {
            Ok(phase) if wanted(&phase) => return true,
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return false,
        }
    }
}

/// In governed mode: when a successor asks for the listeners (SIGQUIT),
/// hands it the state directory too (see [`Control::hand_over`]).
///
/// [`Control::hand_over`]: crate::governance::control::Control::hand_over
struct Handover {
    phases:
        std::sync::Mutex<Option<tokio::sync::broadcast::Receiver<pingora::server::ExecutionPhase>>>,
    control: Arc<crate::governance::control::Control>,
}

#[async_trait]
impl BackgroundService for Handover {
    async fn start(&self, _shutdown: ShutdownWatch) {
        if reaches(&self.phases, |p| {
            matches!(
                p,
                pingora::server::ExecutionPhase::GracefulUpgradeTransferringFds
            )
        })
        .await
        {
            let control = Arc::clone(&self.control);
            let _ = tokio::task::spawn_blocking(move || control.hand_over()).await;
        }
    }
}

/// Marks the node ready once the proxy listener accepts connections.
struct Readiness {
    shared: Arc<Shared>,
    proxy: SocketAddr,
}

#[async_trait]
impl BackgroundService for Readiness {
    async fn start(&self, _shutdown: ShutdownWatch) {
        for _ in 0..600 {
            if tokio::net::TcpStream::connect(self.proxy).await.is_ok() {
                self.shared.proxy_listening.store(true, Ordering::Relaxed);
                tracing::info!(proxy = %self.proxy, "proxy listener accepting");
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::error!(proxy = %self.proxy, "proxy listener never accepted a connection");
    }
}

struct HealthChecker {
    shared: Arc<Shared>,
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let active = self.shared.active();
            let now = now_ms();
            for (app, group) in active.bundle.apps.iter().zip(&active.upstreams.groups) {
                let Some(hc) = &app.upstream.health_check else {
                    continue;
                };
                for inst in &group.instances {
                    let Some(socket) = inst.socket else { continue };
                    if !inst.probe_due(hc.interval.as_millis() as u64, now) {
                        continue;
                    }
                    let (inst, hc, app_name) = (Arc::clone(inst), hc.clone(), app.name.clone());
                    tokio::spawn(async move {
                        let ok = health::probe(
                            socket,
                            &inst.addr.host,
                            &hc.path,
                            inst.addr.tls,
                            hc.timeout,
                        )
                        .await;
                        if let Some(healthy) = inst.record_probe(&hc, ok) {
                            if healthy {
                                tracing::info!(app = %app_name, instance = %inst.addr.url, "instance healthy again");
                            } else {
                                tracing::warn!(app = %app_name, instance = %inst.addr.url, "instance unhealthy: health checks failing");
                            }
                        }
                    });
                }
            }
        }
    }
}

/// A change to the policy files is reloaded once no other has come for
/// this long.
const RELOAD_QUIET: Duration = Duration::from_millis(25);
/// … or once changes have kept coming for this long.
const RELOAD_WAIT_MAX: Duration = Duration::from_millis(500);

/// Reloads the bundle on SIGHUP and (unless disabled) on file changes.
struct PolicyWatcher {
    shared: Arc<Shared>,
    watch_files: bool,
}

#[async_trait]
impl BackgroundService for PolicyWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use notify::Watcher;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<&'static str>(64);
        let fs_tx = tx.clone();
        let root = self.shared.policies_dir().map(Path::to_path_buf);
        let mut watcher = if !self.watch_files {
            None
        } else {
            match notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                let Ok(ev) = res else { return };
                // A tool's temporary file, before its rename, changes
                // nothing: reloading then would judge the old files again.
                let relevant = ev.paths.is_empty()
                    || ev.paths.iter().any(|p| {
                        root.as_deref()
                            .is_none_or(|r| crate::policy::may_affect_bundle(r, p))
                    });
                if !ev.kind.is_access() && relevant {
                    let _ = fs_tx.try_send("file change");
                }
            }) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::error!(error = %e, "cannot watch the policy directory; reload with SIGHUP");
                    None
                }
            }
        };
        if let (Some(w), Some(dir)) = (watcher.as_mut(), self.shared.policies_dir()) {
            if let Err(e) = w.watch(dir, notify::RecursiveMode::Recursive) {
                tracing::error!(error = %e, "cannot watch the policy directory; reload with SIGHUP");
            }
        }
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP");
                None
            }
        };
        loop {
            let trigger = tokio::select! {
                Some(t) = rx.recv() => t,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => "SIGHUP",
                _ = shutdown.changed() => return,
            };
            // Debounce: an editor's save, a `git checkout` or a copy is
            // several events; reload once they have been quiet for
            // `RELOAD_QUIET` (waiting at most `RELOAD_WAIT_MAX` in all).
            let first = tokio::time::Instant::now();
            loop {
                let quiet = tokio::time::sleep(RELOAD_QUIET);
                tokio::select! {
                    _ = quiet => break,
                    Some(_) = rx.recv() => {
                        if first.elapsed() >= RELOAD_WAIT_MAX {
                            break;
                        }
                    }
                }
            }
            while rx.try_recv().is_ok() {}
            let shared = Arc::clone(&self.shared);
            crate::runtime::in_background(move || reload_and_log(&shared, trigger)).await;
        }
    }
}

/// Copies the audit log's heads to ClickHouse (governed mode with
/// telemetry), apart from the state directory.
struct AuditHeadExport {
    export: std::sync::Mutex<Option<crate::governance::audit_export::HeadExport>>,
}

#[async_trait]
impl BackgroundService for AuditHeadExport {
    async fn start(&self, shutdown: ShutdownWatch) {
        let export = self.export.lock().ok().and_then(|mut e| e.take());
        if let Some(export) = export {
            export.run(shutdown).await;
        }
    }
}

/// Where SIGHUP has nothing to reload (governed and fleet mode): logs it
/// and goes on, instead of the default action (the process would end).
struct IgnoreHangup {
    why: &'static str,
}

#[async_trait]
impl BackgroundService for IgnoreHangup {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP");
                return;
            }
        };
        loop {
            tokio::select! {
                Some(()) = hup.recv() => {
                    tracing::info!(reason = self.why, "SIGHUP ignored: nothing to reload from files");
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Follows the control plane (fleet nodes).
struct Follower {
    shared: Arc<Shared>,
    config: crate::governance::follower::FollowerConfig,
}

#[async_trait]
impl BackgroundService for Follower {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let stop = async move {
            let _ = shutdown.changed().await;
        };
        crate::governance::follower::follow(Arc::clone(&self.shared), self.config.clone(), stop)
            .await;
    }
}

/// Drops idle rate-limit keys and past quota windows, so memory follows the
/// number of active consumers, not the number ever seen.
struct LimitEvictor {
    shared: Arc<Shared>,
}

#[async_trait]
impl BackgroundService for LimitEvictor {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let shared = Arc::clone(&self.shared);
            if let Ok(kept) = tokio::task::spawn_blocking(move || shared.limits.evict_idle()).await
            {
                tracing::debug!(kept, "evicted idle rate-limit keys");
            }
        }
    }
}

/// Check (or migrate) the ClickHouse schema before serving. `Ok(false)`:
/// ClickHouse does not answer, and the gateway starts with telemetry
/// degraded (spooled; the sink checks or migrates once it answers). A
/// ClickHouse that answers with a schema that does not fit stops the start:
/// that is a configuration error, not an outage.
fn prepare_clickhouse(t: &TelemetryOptions) -> anyhow::Result<bool> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let prepared = rt.block_on(crate::telemetry::schema::prepare(
        &t.url,
        &t.database,
        t.migrate,
        Duration::from_secs(5),
    ));
    match prepared {
        Ok(()) => Ok(true),
        Err(e) if !e.is_unreachable() => Err(anyhow::anyhow!("{e}")),
        Err(e) => {
            tracing::warn!(
                error = %e,
                spool = %t.spool_dir.display(),
                "telemetry degraded: serving without ClickHouse; events go to the spool and are sent when it answers{}",
                if t.migrate { " (migrations run then)" } else { "" }
            );
            Ok(false)
        }
    }
}

/// Runs the telemetry sink (batches, inserts, spool replay) and the
/// retention job; after shutdown it flushes once the drain monitor says the
/// last connection has closed.
struct TelemetryService {
    sink: std::sync::Mutex<Option<crate::telemetry::sink::Sink>>,
    shared: Arc<Shared>,
    options: TelemetryOptions,
}

#[async_trait]
impl BackgroundService for TelemetryService {
    async fn start(&self, shutdown: ShutdownWatch) {
        let Some(sink) = self.sink.lock().ok().and_then(|mut s| s.take()) else {
            return;
        };
        if let Some(days) = self.options.retention_days {
            let (url, db) = (self.options.url.clone(), self.options.database.clone());
            let mut stop = shutdown.clone();
            tokio::spawn(async move {
                let client = crate::telemetry::client(&url, "default");
                let mut tick = tokio::time::interval(Duration::from_secs(3600));
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stop.changed() => return,
                    }
                    match crate::telemetry::schema::retention(&client, &url, &db, days).await {
                        Ok(dropped) if !dropped.is_empty() => {
                            tracing::info!(?dropped, "retention: old partitions dropped")
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "retention job failed"),
                    }
                }
            });
        }
        let shared = Arc::clone(&self.shared);
        let finish = Box::pin(async move { shared.telemetry_finish.notified().await });
        sink.run(finish).await;
    }
}

/// After the shutdown signal: waits until no request is in flight and no
/// client connection is open (idle kept-alive ones close themselves, see
/// the HTTP/1 engine), or until shortly before the drain deadline; then has
/// the telemetry sink flush the last events (insert or spool) and exits.
struct DrainMonitor {
    shared: Arc<Shared>,
    deadline: Duration,
    /// The admin address and router, answered again while draining.
    admin: (SocketAddr, axum::Router),
    /// The control plane, stopped before the exit so that no change to
    /// the state directory is cut in half.
    control: Option<Arc<crate::governance::control::Control>>,
}

/// Pingora closes the admin listener with the others at shutdown. After a
/// SIGTERM its address is free again: bind it and answer the admin API
/// (`/readyz` says "shutting down") until the process exits, so load
/// balancers see the drain. After a graceful upgrade the new process holds
/// the address, the bind fails, and the new process answers.
async fn answer_while_draining(addr: SocketAddr, router: axum::Router) {
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if let Ok(listener) = tokio::net::TcpListener::bind(addr).await {
            tracing::info!(%addr, "admin listener answers while draining");
            let app = router.into_make_service_with_connect_info::<SocketAddr>();
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(error = %e, "admin listener failed while draining");
            }
            return;
        }
    }
}

/// Time kept at the end of the drain deadline for the final telemetry flush.
const FLUSH_RESERVE: Duration = Duration::from_millis(2500);

#[async_trait]
impl BackgroundService for DrainMonitor {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let _ = shutdown.changed().await;
        self.shared.shutting_down.store(true, Ordering::Relaxed);
        tracing::info!(
            deadline_s = self.deadline.as_secs(),
            "graceful shutdown: listeners closed, draining in-flight requests"
        );
        tokio::spawn(answer_while_draining(self.admin.0, self.admin.1.clone()));
        let start = tokio::time::Instant::now();
        let give_up = self
            .deadline
            .saturating_sub(FLUSH_RESERVE)
            .max(self.deadline / 2);
        let mut idle_since: Option<tokio::time::Instant> = None;
        loop {
            tokio::time::sleep(Duration::from_millis(25)).await;
            let requests = self.shared.in_flight.load(Ordering::Relaxed);
            let connections = self.shared.connections.load(Ordering::Relaxed);
            if requests == 0 && connections == 0 {
                let since = *idle_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= Duration::from_millis(100) {
                    break;
                }
            } else {
                idle_since = None;
            }
            if start.elapsed() >= give_up {
                tracing::warn!(
                    requests,
                    connections,
                    "drain deadline near: flushing telemetry and exiting with requests unfinished"
                );
                break;
            }
        }
        if let Some(stats) = self.shared.telemetry.get() {
            self.shared.telemetry_finish.notify_one();
            let flush_started = tokio::time::Instant::now();
            while !stats.flushed.load(Ordering::Relaxed) && flush_started.elapsed() < FLUSH_RESERVE
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        if let Some(control) = self.control.clone() {
            let _ = tokio::task::spawn_blocking(move || control.quiesce()).await;
        }
        // Two of the sink's ticks: events of requests answered during the
        // flush reach the spool.
        tokio::time::sleep(Duration::from_millis(25)).await;
        tracing::info!(
            drained_in_ms = start.elapsed().as_millis() as u64,
            "drained; exiting"
        );
        std::process::exit(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_run_dir_is_private_or_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let fresh = tmp.path().join("a/run");
        private_run_dir(&fresh).unwrap();
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        private_run_dir(&fresh).unwrap();

        let shared = tmp.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_run_dir(&shared).unwrap();
        let mode = std::fs::metadata(&shared).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "our own directory is made private");

        let file = tmp.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(private_run_dir(&file).is_err(), "a file is refused");

        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&fresh, &link).unwrap();
        assert!(
            private_run_dir(&link).is_err(),
            "a planted symlink is refused"
        );
    }
}
