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
