//! The `gatehouse` subcommands, one module per command group; `main.rs`
//! parses the command line and dispatches here.

pub(crate) mod admin;
pub(crate) mod audit;
pub(crate) mod consumer;
pub(crate) mod db;
pub(crate) mod policy;
pub(crate) mod remote;
pub(crate) mod report;
pub(crate) mod serve;

use clap::ValueEnum;

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct ClickHouseArgs {
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

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum OutputFormat {
    Text,
    Json,
}

/// Create (or truncate) a file only its owner may read: keys and tokens.
pub(crate) fn secret_file(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "gatehouse".into())
}

pub(crate) fn block_on<F: std::future::Future>(f: F) -> Option<F::Output> {
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

/// Database names are spliced into SQL (ClickHouse 18.16 has no server-side
/// parameters): accept identifiers only.
pub(crate) fn database_name(s: &str) -> Result<String, String> {
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
