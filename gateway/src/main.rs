//! The `gatehouse` command line.

use std::process::ExitCode;

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

mod cli;

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
    Serve(Box<cli::serve::ServeArgs>),
    /// Work with policy bundles.
    #[command(subcommand)]
    Policy(cli::policy::PolicyCommand),
    /// Manage consumers.
    #[command(subcommand)]
    Consumer(cli::consumer::ConsumerCommand),
    /// The telemetry database.
    #[command(subcommand)]
    Db(cli::db::DbCommand),
    /// The governance audit log.
    #[command(subcommand)]
    Audit(cli::audit::AuditCommand),
    /// Administer a governed state directory.
    #[command(subcommand)]
    Admin(cli::admin::AdminCommand),
    /// Run a bottleneck report (`gatehouse report` lists them).
    Report(cli::report::ReportArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Serve(args) => cli::serve::run(*args),
        Command::Policy(cmd) => cli::policy::run(cmd),
        Command::Consumer(cmd) => cli::consumer::run(cmd),
        Command::Db(cmd) => cli::db::run(cmd),
        Command::Audit(cmd) => cli::audit::run(cmd),
        Command::Admin(cmd) => cli::admin::run(cmd),
        Command::Report(args) => cli::report::run(args),
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

/// Default log filter. Pingora's connection pool logs a benign lost race
/// (`failed to acquire reusable stream`, it then opens a new connection) at
/// ERROR under concurrency; connect failures are reported by Gatehouse itself.
const DEFAULT_LOG_FILTER: &str = "info,pingora_core::connectors=off";
