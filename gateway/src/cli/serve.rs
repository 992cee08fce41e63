//! `gatehouse serve`: the gateway process.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use super::{database_name, host_name};

/// Run `gatehouse serve`.
pub(crate) fn run(args: ServeArgs) -> ExitCode {
    serve(args)
}
#[derive(clap::Args, Debug)]
pub(crate) struct ServeArgs {
    /// Policy bundle directory: served and watched (file mode), or imported
    /// as the first version of an empty --state.
    #[arg(long, env = "GATEHOUSE_POLICIES")]
    policies: Option<PathBuf>,
    /// Governed mode: serve the active version of this state directory;
    /// changes arrive only as reviewed proposals over the admin API.
    #[arg(long, env = "GATEHOUSE_STATE", conflicts_with = "control_plane")]
    state: Option<PathBuf>,
    /// Governed mode: sign every audit entry with this Ed25519 key (from
    /// `gatehouse audit keygen`), kept outside the state directory.
    #[arg(long, env = "GATEHOUSE_AUDIT_SIGNING_KEY", requires = "state")]
    audit_signing_key: Option<PathBuf>,
    /// Governed mode, single sign-on: accept the identity provider's OIDC
    /// tokens from this issuer on the admin API (static tokens still work).
    #[arg(long, requires_all = ["state", "admin_oidc_audience", "admin_oidc_jwks"])]
    admin_oidc_issuer: Option<String>,
    /// The audience the IdP's tokens must name (the gateway's client id).
    #[arg(long, requires = "admin_oidc_issuer")]
    admin_oidc_audience: Option<String>,
    /// The IdP's JWKS document (a file, RS256/ES256 keys).
    #[arg(long, requires = "admin_oidc_issuer")]
    admin_oidc_jwks: Option<PathBuf>,
    /// The claim naming the principal (review groups list these names).
    #[arg(long, default_value = "preferred_username")]
    admin_oidc_name_claim: String,
    /// The claim listing the caller's groups.
    #[arg(long, default_value = "groups")]
    admin_oidc_groups_claim: String,
    /// An IdP group's role, `GROUP=ROLE` (repeat): `gov-board=reviewer`.
    #[arg(long = "admin-oidc-role", requires = "admin_oidc_issuer")]
    admin_oidc_roles: Vec<String>,
    /// Fleet mode: follow this control plane's active version.
    #[arg(
        long,
        env = "GATEHOUSE_CONTROL_PLANE",
        requires = "cache",
        conflicts_with = "policies"
    )]
    control_plane: Option<String>,
    /// Fleet mode: where the last good bundle is kept.
    #[arg(long, env = "GATEHOUSE_CACHE")]
    cache: Option<PathBuf>,
    /// Principals file (as written by `admin add-principal`) whose tokens
    /// may read /v1/policy and /v1/apps; governed mode uses its state's.
    #[arg(long, env = "GATEHOUSE_ADMIN_PRINCIPALS")]
    admin_principals: Option<PathBuf>,
    /// Fleet mode: a file holding the bearer token for the control plane
    /// (else GATEHOUSE_TOKEN).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Proxy listener (plain HTTP/1.1).
    #[arg(long, default_value = "127.0.0.1:8080", env = "GATEHOUSE_LISTEN")]
    listen: String,
    /// Admin listener.
    #[arg(long, default_value = "127.0.0.1:9901", env = "GATEHOUSE_ADMIN_LISTEN")]
    admin_listen: String,
    /// TLS listener (HTTP/1.1 and HTTP/2 via ALPN); needs --tls-cert and --tls-key.
    #[arg(long, env = "GATEHOUSE_TLS_LISTEN")]
    tls_listen: Option<String>,
    /// PEM certificate chain.
    #[arg(long, env = "GATEHOUSE_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key.
    #[arg(long, env = "GATEHOUSE_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Proxy worker threads (one per core is best).
    #[arg(long, default_value_t = default_threads(), env = "GATEHOUSE_THREADS")]
    threads: usize,
    /// Seconds in-flight requests get to finish after SIGTERM.
    #[arg(long, default_value_t = 30, env = "GATEHOUSE_DRAIN_TIMEOUT")]
    drain_timeout: u64,
    /// Seconds a client may take to send a whole request head (from its
    /// first byte), and then its whole body; slower ones get 408 (the
    /// plain listener's lean engine).
    #[arg(long, default_value_t = 30, env = "GATEHOUSE_CLIENT_TIMEOUT")]
    client_timeout: u64,
    /// Do not watch the policy directory (SIGHUP still reloads).
    #[arg(long)]
    no_watch: bool,
    /// Also accept cleartext HTTP/2 (prior knowledge) on --listen.
    #[arg(long)]
    h2c: bool,
    /// What carries HTTP/1.1 on --listen: `lean` (Gatehouse's own request
    /// loop, handing what it does not carry to Pingora) or `pingora` (all
    /// requests through Pingora's proxy).
    #[arg(
        long,
        value_enum,
        default_value = "lean",
        env = "GATEHOUSE_HTTP1_ENGINE"
    )]
    http1_engine: gatehouse::server::Http1Engine,
    /// ClickHouse HTTP URL for request telemetry (off when absent).
    #[arg(long, env = "GATEHOUSE_CLICKHOUSE")]
    clickhouse: Option<String>,
    /// ClickHouse database.
    #[arg(
        long,
        default_value = "gatehouse",
        env = "GATEHOUSE_CLICKHOUSE_DATABASE",
        value_parser = database_name
    )]
    clickhouse_database: String,
    /// Create or upgrade the schema at start instead of refusing to start.
    #[arg(long)]
    migrate: bool,
    /// Where batches wait while ClickHouse is away.
    #[arg(long, default_value = ".state/spool", env = "GATEHOUSE_SPOOL_DIR")]
    spool_dir: PathBuf,
    /// Spool cap in MiB (beyond it events are dropped and counted).
    #[arg(long, default_value_t = 1024, env = "GATEHOUSE_SPOOL_MAX_MIB")]
    spool_max_mib: u64,
    /// Most rows per ClickHouse insert. Batches are cut by time first (one
    /// insert per `--telemetry-flush-ms`, as ClickHouse asks: every insert
    /// writes a part of two files per column, merged later); this cap
    /// bounds a batch's memory at high rates.
    #[arg(long, default_value_t = 50_000)]
    telemetry_batch: usize,
    /// Longest time (ms) a row waits for its batch.
    #[arg(long, default_value_t = 1000)]
    telemetry_flush_ms: u64,
    /// Telemetry queue capacity (rows); beyond it events are dropped and counted.
    #[arg(long, default_value_t = 100_000)]
    telemetry_queue: usize,
    /// This node's name in telemetry (default: the host name).
    #[arg(long, env = "GATEHOUSE_INSTANCE")]
    instance: Option<String>,
    /// Drop telemetry partitions older than this many days (hourly job).
    #[arg(long, env = "GATEHOUSE_RETENTION_DAYS")]
    retention_days: Option<u32>,
    /// Replace the gatehouse running with the same --run-dir without
    /// downtime: take over its listening sockets (and, governed, its state
    /// directory) once this process is ready; it then drains and exits.
    #[arg(long)]
    upgrade: bool,
    /// Where the running process records its pid and a successor started
    /// with --upgrade meets it; this user's alone (mode 0700) [default:
    /// `gatehouse-<listen>` in $XDG_RUNTIME_DIR, else in the temporary
    /// directory].
    #[arg(long, env = "GATEHOUSE_RUN_DIR")]
    run_dir: Option<PathBuf>,
}

pub(crate) fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub(crate) fn policy_source(args: &ServeArgs) -> Result<gatehouse::server::PolicySource, String> {
    use gatehouse::server::PolicySource;
    if let Some(url) = &args.control_plane {
        let token = match &args.token_file {
            Some(f) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| format!("cannot read {}: {e}", f.display()))?
                    .trim()
                    .to_string(),
            ),
            None => std::env::var("GATEHOUSE_TOKEN").ok(),
        };
        return Ok(PolicySource::Follower(
            gatehouse::governance::follower::FollowerConfig {
                url: url.clone(),
                token,
                cache_dir: args
                    .cache
                    .clone()
                    .ok_or("--control-plane needs --cache DIR")?,
            },
        ));
    }
    if let Some(state) = &args.state {
        return Ok(PolicySource::Governed {
            state: state.clone(),
            bootstrap: args.policies.clone(),
            signing_key: args.audit_signing_key.clone(),
            sso: args.admin_oidc_issuer.as_ref().map(|issuer| {
                gatehouse::governance::sso::SsoConfig {
                    issuer: issuer.clone(),
                    audience: args.admin_oidc_audience.clone().unwrap_or_default(),
                    jwks: args.admin_oidc_jwks.clone().unwrap_or_default(),
                    name_claim: args.admin_oidc_name_claim.clone(),
                    groups_claim: args.admin_oidc_groups_claim.clone(),
                    roles: args.admin_oidc_roles.clone(),
                }
            }),
        });
    }
    match &args.policies {
        Some(dir) => Ok(PolicySource::Files {
            dir: dir.clone(),
            watch: !args.no_watch,
        }),
        None => Err("give --policies DIR, --state DIR or --control-plane URL --cache DIR".into()),
    }
}

pub(crate) fn serve(args: ServeArgs) -> ExitCode {
    let source = match policy_source(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("gatehouse: {e}");
            return ExitCode::from(2);
        }
    };
    let run_dir = args.run_dir.clone().unwrap_or_else(|| {
        let name: String = args
            .listen
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|d| d.is_dir())
            .unwrap_or_else(std::env::temp_dir)
            .join(format!("gatehouse-{name}"))
    });
    let opts = gatehouse::server::ServeOptions {
        source,
        listen: args.listen,
        admin_listen: args.admin_listen,
        tls_listen: args.tls_listen,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        threads: args.threads,
        drain_timeout: Duration::from_secs(args.drain_timeout),
        client_timeout: Duration::from_secs(args.client_timeout.max(1)),
        h2c: args.h2c,
        http1_engine: args.http1_engine,
        admin_principals: args.admin_principals,
        upgrade: args.upgrade,
        run_dir,
        telemetry: args
            .clickhouse
            .map(|url| gatehouse::server::TelemetryOptions {
                url,
                database: args.clickhouse_database,
                migrate: args.migrate,
                spool_dir: args.spool_dir,
                spool_max_bytes: args.spool_max_mib.saturating_mul(1 << 20),
                batch_size: args.telemetry_batch,
                flush_interval: Duration::from_millis(args.telemetry_flush_ms.max(10)),
                queue_capacity: args.telemetry_queue,
                instance: args.instance.unwrap_or_else(host_name),
                retention_days: args.retention_days,
            }),
    };
    match gatehouse::server::run(opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gatehouse: {e:#}");
            ExitCode::from(2)
        }
    }
}
