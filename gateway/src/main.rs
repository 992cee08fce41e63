//! The `gatehouse` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

/// Write to standard output; when the reader has gone (`| head`), end the
/// CLI quietly instead of panicking on the broken pipe.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = write!(std::io::stdout().lock(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

/// [`say!`] with a newline.
macro_rules! sayln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

mod remote;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Gatehouse: the governance and observability gateway for low-code estates.
#[derive(Parser, Debug)]
#[command(name = "gatehouse", version, about)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "GATEHOUSE_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway (data plane and admin listener).
    Serve(Box<ServeArgs>),
    /// Work with policy bundles.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Manage consumers.
    #[command(subcommand)]
    Consumer(ConsumerCommand),
    /// The telemetry database.
    #[command(subcommand)]
    Db(DbCommand),
    /// The governance audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Administer a governed state directory.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Run a bottleneck report (`gatehouse report` lists them).
    Report {
        /// Report name.
        name: Option<String>,
        #[command(flatten)]
        ch: ClickHouseArgs,
        /// How far back, e.g. 15m, 1h, 7d.
        #[arg(long, default_value = "1h")]
        since: humantime::Duration,
        /// Only this app.
        #[arg(long)]
        app: Option<String>,
        /// Most rows.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
        format: ReportFormat,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ReportFormat {
    Table,
    Json,
    Csv,
}

#[derive(Subcommand, Debug)]
enum ConsumerCommand {
    /// Generate many consumers at once (load tests): keys to --keys-file
    /// (mode 0600, one per line), the policy file (JSON) to stdout.
    Bulk {
        /// How many.
        #[arg(long)]
        count: usize,
        /// Id prefix (ids are PREFIX-0000001 …).
        #[arg(long, default_value = "bench")]
        prefix: String,
        /// Plan for all of them.
        #[arg(long)]
        plan: Option<String>,
        /// Where the keys go.
        #[arg(long)]
        keys_file: PathBuf,
    },
    /// Generate an API key for a new consumer: the key is shown once (or
    /// written to --key-file); the policy entry, holding only its hash, goes
    /// to stdout.
    New {
        /// Consumer id.
        #[arg(long)]
        id: String,
        /// Display name (default: the id).
        #[arg(long)]
        name: Option<String>,
        /// Plan.
        #[arg(long)]
        plan: Option<String>,
        /// Allowed apps, comma-separated (default: all).
        #[arg(long, value_delimiter = ',')]
        apps: Vec<String>,
        /// Key label (rotation bookkeeping).
        #[arg(long)]
        label: Option<String>,
        /// Write the key to this file (mode 0600) instead of stderr.
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum AdminCommand {
    /// Add a principal of the admin API (or rotate its token); the token is
    /// printed once, only its hash is stored.
    AddPrincipal {
        /// The state directory.
        #[arg(long, env = "GATEHOUSE_STATE")]
        state: PathBuf,
        /// Name (reviewer groups list principal names).
        #[arg(long)]
        name: String,
        /// Roles (repeat or comma-separate).
        #[arg(long = "role", value_enum, value_delimiter = ',', required = true)]
        roles: Vec<gatehouse::governance::principals::Role>,
        /// Replace the token (and roles) of an existing principal.
        #[arg(long)]
        rotate: bool,
        /// Write the token to this file (mode 0600) instead of stdout.
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// List the principals of a control plane (admin role).
    Principals {
        #[command(flatten)]
        remote: remote::Remote,
    },
    /// Create a principal over the admin API (or issue it a new token);
    /// the token is printed once, the step audited.
    CreatePrincipal {
        /// Name.
        #[arg(long)]
        name: String,
        /// Roles (repeat or comma-separate).
        #[arg(long = "role", value_enum, value_delimiter = ',', required = true)]
        roles: Vec<gatehouse::governance::principals::Role>,
        /// The token stops working after this long (`90d`).
        #[arg(long)]
        expires_in: Option<String>,
        /// Issue an existing principal a new token.
        #[arg(long)]
        rotate: bool,
        #[command(flatten)]
        remote: remote::Remote,
    },
    /// Change a principal's roles over the admin API (its token stays).
    SetRoles {
        /// Name.
        #[arg(long)]
        name: String,
        /// Roles (repeat or comma-separate).
        #[arg(long = "role", value_enum, value_delimiter = ',', required = true)]
        roles: Vec<gatehouse::governance::principals::Role>,
        #[command(flatten)]
        remote: remote::Remote,
    },
    /// Revoke a principal over the admin API: its token stops working.
    Revoke {
        /// Name.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        remote: remote::Remote,
    },
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
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

#[derive(clap::Args, Debug, Clone)]
struct ClickHouseArgs {
    /// ClickHouse HTTP URL.
    #[arg(
        long,
        default_value = "http://127.0.0.1:18123",
        env = "GATEHOUSE_CLICKHOUSE"
    )]
    clickhouse: String,
    /// Database.
    #[arg(
        long,
        default_value = "gatehouse",
        env = "GATEHOUSE_CLICKHOUSE_DATABASE",
        value_parser = database_name
    )]
    database: String,
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// Check the hash chain of an audit log: exit 0 when intact, 1 with the
    /// first broken line otherwise.
    Verify {
        /// The audit log (JSON lines).
        file: PathBuf,
        /// A head recorded earlier (`SEQ:HASH`, as printed by verify): the
        /// log must still contain it.
        #[arg(long)]
        head: Option<String>,
        /// The signing key's public half (64 hex digits, or a file holding
        /// them): every entry from --signed-from on must carry a valid
        /// signature.
        #[arg(long)]
        public_key: Option<String>,
        /// The first signed entry (entries before signing was turned on
        /// are unsigned).
        #[arg(long, default_value_t = 1, requires = "public_key")]
        signed_from: u64,
        /// Check against the heads the control plane copied to this
        /// ClickHouse (`audit_heads`): every exported entry must still be
        /// in the file, unchanged.
        #[arg(long)]
        clickhouse: Option<String>,
        /// ClickHouse database.
        #[arg(long, default_value = "gatehouse", value_parser = database_name)]
        database: String,
        /// The log's id in ClickHouse (the hash of its first entry, as
        /// verify prints it), when that entry itself may have been rewritten.
        #[arg(long, requires = "clickhouse")]
        log_id: Option<String>,
    },
    /// Generate an Ed25519 key for `serve --audit-signing-key`: the key
    /// (PKCS#8, mode 0600) to FILE, its public half to FILE.pub; prints the
    /// public key.
    Keygen {
        /// Where to write the key (outside the state directory).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum DbCommand {
    /// Create or upgrade the telemetry schema (idempotent).
    Migrate(ClickHouseArgs),
    /// Drop daily partitions older than --days.
    Retention {
        #[command(flatten)]
        ch: ClickHouseArgs,
        /// Days to keep.
        #[arg(long)]
        days: u32,
    },
    /// Check that the schema matches this version.
    Check(ClickHouseArgs),
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[derive(Subcommand, Debug)]
enum PolicyCommand {
    /// Check a bundle: schema, then semantics. Prints every error (exit 1) or a summary.
    Lint {
        /// Bundle directory.
        dir: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
    /// Print the JSON Schema of policy files.
    Schema,
    /// Propose a bundle directory as the next version (governed mode).
    Propose {
        /// Bundle directory.
        dir: PathBuf,
        /// What the change is for.
        #[arg(long)]
        title: String,
        #[command(flatten)]
        remote: remote::Remote,
    },
    /// Approve or reject a proposal.
    Review {
        /// Proposal id.
        id: u64,
        /// Approve.
        #[arg(long, conflicts_with = "reject", required_unless_present = "reject")]
        approve: bool,
        /// Reject (blocks the proposal for good).
        #[arg(long)]
        reject: bool,
        /// Comment.
        #[arg(long, default_value = "")]
        comment: String,
        #[command(flatten)]
        remote: remote::Remote,
    },
    /// Activate an approved proposal on every node.
    Activate {
        /// Proposal id.
        id: u64,
        #[command(flatten)]
        remote: remote::Remote,
    },
    /// Withdraw your proposal.
    Withdraw {
        /// Proposal id.
        id: u64,
        #[command(flatten)]
        remote: remote::Remote,
    },
    /// Propose a rollback to an earlier version (default: the previous
    /// one); it is reviewed and activated like any proposal.
    Rollback {
        /// Version (at least 8 hex digits).
        #[arg(long)]
        to: Option<String>,
        /// Why (required; recorded in the audit log).
        #[arg(long)]
        reason: String,
        /// Switch at once (incidents): flagged in the audit log, and an
        /// incident item stays open until a reviewer signs it off.
        #[arg(long)]
        break_glass: bool,
        #[command(flatten)]
        remote: remote::Remote,
    },
    /// Show a proposal: its changes, approvals and what is missing.
    Show {
        /// Proposal id.
        id: u64,
        #[command(flatten)]
        remote: remote::Remote,
    },
    /// The active version, its history and open proposals.
    Status {
        #[command(flatten)]
        remote: remote::Remote,
    },
    /// The audit trail.
    Log {
        /// Only entries after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Only entries of this principal (`anonymous`: unauthenticated calls).
        #[arg(long)]
        principal: Option<String>,
        /// Only entries of this action or those under it (`proposal`,
        /// `proposal.approve`, `bundle.rollback`).
        #[arg(long)]
        action: Option<String>,
        /// Only entries since this time: RFC 3339, or a duration ago (`2h`).
        #[arg(long)]
        since: Option<String>,
        #[command(flatten)]
        remote: remote::Remote,
    },
    /// List every change from OLD to NEW with its impact class; exit 1 when
    /// a change breaks clients (for CI), 0 otherwise, 2 when a bundle is invalid.
    Diff {
        /// The bundle in service.
        old: PathBuf,
        /// The proposed bundle.
        new: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum OutputFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Policy(PolicyCommand::Lint { dir, format }) => lint(&dir, format),
        Command::Consumer(ConsumerCommand::Bulk {
            count,
            prefix,
            plan,
            keys_file,
        }) => bulk_consumers(count, &prefix, plan.as_deref(), &keys_file),
        Command::Consumer(ConsumerCommand::New {
            id,
            name,
            plan,
            apps,
            label,
            key_file,
        }) => new_consumer(
            &id,
            name.as_deref(),
            plan.as_deref(),
            &apps,
            label.as_deref(),
            key_file.as_deref(),
        ),
        Command::Db(cmd) => db(cmd),
        Command::Audit(AuditCommand::Verify {
            file,
            head,
            public_key,
            signed_from,
            clickhouse,
            database,
            log_id,
        }) => audit_verify(
            &file,
            head.as_deref(),
            public_key.as_deref(),
            signed_from,
            clickhouse
                .as_deref()
                .map(|url| (url, database.as_str(), log_id.as_deref())),
        ),
        Command::Audit(AuditCommand::Keygen { out }) => {
            match gatehouse::governance::audit::Signer::generate(&out) {
                Ok(public) => {
                    sayln!("{public}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("gatehouse: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Report {
            name,
            ch,
            since,
            app,
            limit,
            format,
        } => report(
            name.as_deref(),
            &ch,
            since.into(),
            app.as_deref(),
            limit,
            format,
        ),
        Command::Policy(PolicyCommand::Diff { old, new, format }) => {
            policy_diff(&old, &new, format)
        }
        Command::Policy(PolicyCommand::Propose { dir, title, remote }) => {
            remote::propose(&remote, &dir, &title)
        }
        Command::Policy(PolicyCommand::Review {
            id,
            approve,
            comment,
            remote,
            ..
        }) => remote::review(&remote, id, approve, &comment),
        Command::Policy(PolicyCommand::Activate { id, remote }) => remote::activate(&remote, id),
        Command::Policy(PolicyCommand::Withdraw { id, remote }) => remote::withdraw(&remote, id),
        Command::Policy(PolicyCommand::Rollback {
            to,
            reason,
            break_glass,
            remote,
        }) => remote::rollback(&remote, to.as_deref(), &reason, break_glass),
        Command::Policy(PolicyCommand::Show { id, remote }) => remote::show(&remote, id),
        Command::Policy(PolicyCommand::Status { remote }) => remote::status(&remote),
        Command::Policy(PolicyCommand::Log {
            after,
            principal,
            action,
            since,
            remote,
        }) => remote::log(
            &remote,
            after,
            &[
                ("principal", principal),
                ("action", action),
                ("since", since),
            ],
        ),
        Command::Admin(AdminCommand::AddPrincipal {
            state,
            name,
            roles,
            rotate,
            token_file,
        }) => add_principal(&state, &name, &roles, rotate, token_file.as_deref()),
        Command::Admin(AdminCommand::Principals { remote }) => remote::principals(&remote),
        Command::Admin(AdminCommand::CreatePrincipal {
            name,
            roles,
            expires_in,
            rotate,
            remote,
        }) => remote::create_principal(&remote, &name, &roles, expires_in.as_deref(), rotate),
        Command::Admin(AdminCommand::SetRoles {
            name,
            roles,
            remote,
        }) => remote::set_roles(&remote, &name, &roles),
        Command::Admin(AdminCommand::Revoke { name, remote }) => remote::revoke(&remote, &name),
        Command::Policy(PolicyCommand::Schema) => {
            sayln!("{}", gatehouse::policy::POLICY_SCHEMA);
            ExitCode::SUCCESS
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Create (or truncate) a file only its owner may read: keys and tokens.
fn secret_file(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

fn audit_verify(
    file: &std::path::Path,
    head: Option<&str>,
    public_key: Option<&str>,
    signed_from: u64,
    exported: Option<(&str, &str, Option<&str>)>,
) -> ExitCode {
    use gatehouse::governance::audit;
    let expected = match head {
        None => None,
        Some(h) => match h
            .split_once(':')
            .and_then(|(seq, hash)| Some((seq.parse().ok()?, hash)))
        {
            Some((seq, hash)) => Some(audit::Head {
                seq,
                hash: hash.to_string(),
            }),
            None => {
                eprintln!("gatehouse: --head is SEQ:HASH, as `audit verify` prints it");
                return ExitCode::from(2);
            }
        },
    };
    // A key given as a file holds the hex.
    let public_key = public_key.map(|k| {
        std::fs::read_to_string(k)
            .map(|t| t.trim().to_string())
            .unwrap_or_else(|_| k.to_string())
    });
    let checked = audit::verify(file).and_then(|entries| {
        if let Some(h) = &expected {
            audit::check_head(&entries, h)?;
        }
        if let Some(k) = &public_key {
            audit::verify_signatures(&entries, k, signed_from)?;
        }
        Ok(entries)
    });
    let exported = match (&checked, exported) {
        (Ok(_), Some((url, db, log))) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let result = match rt {
                Ok(rt) => rt.block_on(gatehouse::governance::audit_export::verify_against(
                    url, db, file, log,
                )),
                Err(e) => Err(e.to_string()),
            };
            match result {
                Ok(n) => format!(", {n} exported heads match"),
                Err(e) => {
                    sayln!("audit log {} is NOT intact: {e}", file.display());
                    return ExitCode::FAILURE;
                }
            }
        }
        _ => String::new(),
    };
    match checked {
        Ok(entries) => {
            sayln!(
                "ok: {} entries, chain intact{}{exported}{}",
                entries.len(),
                if public_key.is_some() {
                    ", signatures valid"
                } else {
                    ""
                },
                entries
                    .last()
                    .map(|e| format!(", head {}:{}", e.seq, e.hash))
                    .unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            sayln!("audit log {} is NOT intact: {e}", file.display());
            ExitCode::FAILURE
        }
    }
}

fn add_principal(
    state: &std::path::Path,
    name: &str,
    roles: &[gatehouse::governance::principals::Role],
    rotate: bool,
    token_file: Option<&std::path::Path>,
) -> ExitCode {
    let path = state.join("principals.json");
    let token = match gatehouse::governance::principals::add(&path, name, roles, rotate, None) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("gatehouse: {e}");
            return ExitCode::FAILURE;
        }
    };
    match token_file {
        Some(file) => {
            use std::io::Write;
            let written = secret_file(file).and_then(|mut f| writeln!(f, "{token}"));
            if let Err(e) = written {
                eprintln!("gatehouse: cannot write {}: {e}", file.display());
                return ExitCode::FAILURE;
            }
            eprintln!(
                "token for `{name}` written to {} (only its hash is stored)",
                file.display()
            );
        }
        None => {
            eprintln!("token for `{name}` (shown once; only its hash is stored):");
            sayln!("{token}");
        }
    }
    ExitCode::SUCCESS
}

fn policy_source(args: &ServeArgs) -> Result<gatehouse::server::PolicySource, String> {
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

fn serve(args: ServeArgs) -> ExitCode {
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

fn lint(dir: &std::path::Path, format: OutputFormat) -> ExitCode {
    match gatehouse::policy::load_and_compile(dir) {
        Ok(bundle) => {
            match format {
                OutputFormat::Text => sayln!(
                    "ok: {} files, {} apps, {} routes, {} instances; version {}",
                    bundle.files.len(),
                    bundle.apps.len(),
                    bundle.route_count(),
                    bundle
                        .apps
                        .iter()
                        .map(|a| a.upstream.instances.len())
                        .sum::<usize>(),
                    bundle.version
                ),
                OutputFormat::Json => sayln!(
                    "{}",
                    serde_json::json!({
                        "ok": true, "version": bundle.version, "files": bundle.files,
                        "apps": bundle.apps.len(), "routes": bundle.route_count(),
                    })
                ),
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            match format {
                OutputFormat::Text => {
                    for e in &errors.0 {
                        sayln!("{e}");
                    }
                    eprintln!("{} error(s); the bundle is not valid", errors.0.len());
                }
                OutputFormat::Json => {
                    sayln!("{}", serde_json::json!({ "ok": false, "errors": errors.0 }))
                }
            }
            ExitCode::FAILURE
        }
    }
}

/// Default log filter. Pingora's connection pool logs a benign lost race
/// (`failed to acquire reusable stream`, it then opens a new connection) at
/// ERROR under concurrency; connect failures are reported by Gatehouse itself.
const DEFAULT_LOG_FILTER: &str = "info,pingora_core::connectors=off";

fn new_consumer(
    id: &str,
    name: Option<&str>,
    plan: Option<&str>,
    apps: &[String],
    label: Option<&str>,
    key_file: Option<&std::path::Path>,
) -> ExitCode {
    let key = gatehouse::identity::generate_key();
    match key_file {
        Some(path) => {
            use std::io::Write;
            let written = secret_file(path).and_then(|mut f| writeln!(f, "{key}"));
            if let Err(e) = written {
                eprintln!("gatehouse: cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
            eprintln!("API key written to {} (only its hash goes in the policy).", path.display());
        }
        None => eprintln!("API key for `{id}` (shown once; store it now, only its hash goes in the policy):\n{key}"),
    }
    let q = |s: &str| serde_json::Value::from(s).to_string();
    let mut yaml = format!(
        "version: 1\nconsumers:\n  - id: {}\n    name: {}\n",
        q(id),
        q(name.unwrap_or(id))
    );
    if let Some(p) = plan {
        yaml.push_str(&format!("    plan: {}\n", q(p)));
    }
    if !apps.is_empty() {
        let list: Vec<String> = apps.iter().map(|a| q(a)).collect();
        yaml.push_str(&format!("    apps: [{}]\n", list.join(", ")));
    }
    yaml.push_str(&format!(
        "    keys:\n      - hash: {}\n",
        q(&gatehouse::identity::key_fingerprint(&key))
    ));
    if let Some(l) = label {
        yaml.push_str(&format!("        label: {}\n", q(l)));
    }
    say!("{yaml}");
    ExitCode::SUCCESS
}

fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "gatehouse".into())
}

fn block_on<F: std::future::Future>(f: F) -> Option<F::Output> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt.block_on(f)),
        Err(e) => {
            eprintln!("gatehouse: {e}");
            None
        }
    }
}

fn db(cmd: DbCommand) -> ExitCode {
    use gatehouse::telemetry::{schema, sink};
    let result = block_on(async {
        match cmd {
            DbCommand::Migrate(ch) => {
                let client = sink::client(&ch.clickhouse, "default");
                let applied = schema::migrate(&client, &ch.clickhouse, &ch.database).await?;
                schema::check(&client, &ch.clickhouse, &ch.database).await?;
                if applied.is_empty() {
                    sayln!("{}: schema up to date", ch.database);
                } else {
                    sayln!("{}: applied migrations {applied:?}", ch.database);
                }
                Ok(())
            }
            DbCommand::Check(ch) => {
                let client = sink::client(&ch.clickhouse, "default");
                schema::check(&client, &ch.clickhouse, &ch.database).await?;
                sayln!("{}: schema matches", ch.database);
                Ok(())
            }
            DbCommand::Retention { ch, days } => {
                let client = sink::client(&ch.clickhouse, "default");
                let dropped =
                    schema::retention(&client, &ch.clickhouse, &ch.database, days).await?;
                sayln!(
                    "{}: dropped {} partition(s) older than {days} days {dropped:?}",
                    ch.database,
                    dropped.len()
                );
                Ok(())
            }
        }
    });
    match result {
        Some(Ok(())) => ExitCode::SUCCESS,
        Some(Err(e)) => {
            let e: gatehouse::telemetry::schema::SchemaError = e;
            eprintln!("gatehouse: {e}");
            ExitCode::FAILURE
        }
        None => ExitCode::FAILURE,
    }
}

fn report(
    name: Option<&str>,
    ch: &ClickHouseArgs,
    since: Duration,
    app: Option<&str>,
    limit: u32,
    format: ReportFormat,
) -> ExitCode {
    use gatehouse::telemetry::report::{self, Format, Report, REPORTS};
    let Some(name) = name else {
        sayln!("Reports (gatehouse report NAME --since 1h [--app APP] [--format table|json|csv]):");
        for r in REPORTS {
            sayln!("  {:<24} {}", r.name, r.summary());
        }
        return ExitCode::SUCCESS;
    };
    let Some(r) = Report::named(name) else {
        eprintln!("gatehouse: no report named `{name}`; `gatehouse report` lists them");
        return ExitCode::from(2);
    };
    let sql = r.render(&ch.database, since, app, limit);
    let client = gatehouse::telemetry::sink::client(&ch.clickhouse, "default");
    match block_on(report::run(&client, &sql)) {
        Some(Ok((header, rows))) => {
            let f = match format {
                ReportFormat::Table => Format::Table,
                ReportFormat::Json => Format::Json,
                ReportFormat::Csv => Format::Csv,
            };
            say!("{}", report::format(&header, &rows, f));
            ExitCode::SUCCESS
        }
        Some(Err(e)) => {
            eprintln!(
                "gatehouse: report `{name}` failed against {}: {e}",
                ch.clickhouse
            );
            ExitCode::FAILURE
        }
        None => ExitCode::FAILURE,
    }
}

fn bulk_consumers(
    count: usize,
    prefix: &str,
    plan: Option<&str>,
    keys_file: &std::path::Path,
) -> ExitCode {
    use std::io::Write;
    let mut keys = match secret_file(keys_file) {
        Ok(f) => std::io::BufWriter::new(f),
        Err(e) => {
            eprintln!("gatehouse: cannot write {}: {e}", keys_file.display());
            return ExitCode::FAILURE;
        }
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let _ = write!(out, "{{\"version\":1,\"consumers\":[");
    for i in 0..count {
        let key = gatehouse::identity::generate_key();
        if writeln!(keys, "{key}").is_err() {
            eprintln!("gatehouse: cannot write {}", keys_file.display());
            return ExitCode::FAILURE;
        }
        let mut entry = serde_json::json!({
            "id": format!("{prefix}-{i:07}"),
            "name": format!("{prefix} {i}"),
            "keys": [ { "hash": gatehouse::identity::key_fingerprint(&key) } ],
        });
        if let Some(p) = plan {
            entry["plan"] = p.into();
        }
        let _ = write!(out, "{}{entry}", if i == 0 { "" } else { "," });
    }
    let _ = writeln!(out, "]}}");
    if keys.flush().is_err() || out.flush().is_err() {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn policy_diff(old: &std::path::Path, new: &std::path::Path, format: OutputFormat) -> ExitCode {
    let load = |dir: &std::path::Path| {
        gatehouse::policy::load_dir(dir)
            .and_then(|files| gatehouse::policy::compile(&files).map(|b| (b, files)))
            .map_err(|errors| {
                eprintln!("gatehouse: {} is not a valid bundle:", dir.display());
                for e in &errors.0 {
                    eprintln!("  {e}");
                }
            })
    };
    let (Ok((a, af)), Ok((b, bf))) = (load(old), load(new)) else {
        return ExitCode::from(2);
    };
    use gatehouse::governance::policy_diff::{diff, Side};
    let changes = diff(
        Side {
            bundle: &a,
            files: &af,
        },
        Side {
            bundle: &b,
            files: &bf,
        },
    );
    let breaking = changes.iter().filter(|c| c.class.is_breaking()).count();
    // The rules of the bundle in service judge the change.
    let needed = a.review.required(&changes);
    match format {
        OutputFormat::Json => sayln!(
            "{}",
            serde_json::json!({ "from": a.version, "to": b.version, "breaking": breaking, "changes": changes, "approvals_needed": needed })
        ),
        OutputFormat::Text => {
            sayln!(
                "{} → {}: {} change(s), {breaking} breaking",
                a.short_version(),
                b.short_version(),
                changes.len()
            );
            for c in &changes {
                let class = serde_json::to_value(c.class)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                let fp = c
                    .contract
                    .as_ref()
                    .map(|x| format!(" [{}]", x.fingerprint))
                    .unwrap_or_default();
                let app = if c.app.is_empty() {
                    String::new()
                } else {
                    format!("{}: ", c.app)
                };
                sayln!(
                    "{}{class:<22} {app}{}{fp}",
                    if c.class.is_breaking() { "! " } else { "  " },
                    c.text
                );
            }
        }
    }
    if breaking > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Database names are spliced into SQL (ClickHouse 18.16 has no server-side
/// parameters): accept identifiers only.
fn database_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !s.as_bytes()[0].is_ascii_digit();
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "`{s}` is not a database name (letters, digits and _; not starting with a digit)"
        ))
    }
}
