//! The `gatehouse` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

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
    Serve(ServeArgs),
    /// Work with policy bundles.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Manage consumers.
    #[command(subcommand)]
    Consumer(ConsumerCommand),
}

#[derive(Subcommand, Debug)]
enum ConsumerCommand {
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

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Policy bundle directory (watched for changes; SIGHUP reloads too).
    #[arg(long, env = "GATEHOUSE_POLICIES")]
    policies: PathBuf,
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
    /// Do not watch the policy directory (SIGHUP still reloads).
    #[arg(long)]
    no_watch: bool,
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
        Command::Serve(args) => serve(args),
        Command::Policy(PolicyCommand::Lint { dir, format }) => lint(&dir, format),
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
        Command::Policy(PolicyCommand::Schema) => {
            println!("{}", gatehouse::policy::POLICY_SCHEMA);
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

fn serve(args: ServeArgs) -> ExitCode {
    let opts = gatehouse::server::ServeOptions {
        policies: args.policies,
        listen: args.listen,
        admin_listen: args.admin_listen,
        tls_listen: args.tls_listen,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        threads: args.threads,
        drain_timeout: Duration::from_secs(args.drain_timeout),
        watch: !args.no_watch,
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
                OutputFormat::Text => println!(
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
                OutputFormat::Json => println!(
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
                        println!("{e}");
                    }
                    eprintln!("{} error(s); the bundle is not valid", errors.0.len());
                }
                OutputFormat::Json => {
                    println!("{}", serde_json::json!({ "ok": false, "errors": errors.0 }))
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
            use std::os::unix::fs::OpenOptionsExt;
            let written = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(path)
                .and_then(|mut f| writeln!(f, "{key}"));
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
    print!("{yaml}");
    ExitCode::SUCCESS
}
