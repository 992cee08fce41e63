//! `gatehouse db`: the telemetry database's schema.

use std::process::ExitCode;

use clap::Subcommand;

use super::{block_on, ClickHouseArgs};

/// Run a `gatehouse db` command.
pub(crate) fn run(cmd: DbCommand) -> ExitCode {
    db(cmd)
}
#[derive(Subcommand, Debug)]
pub(crate) enum DbCommand {
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

pub(crate) fn db(cmd: DbCommand) -> ExitCode {
    use gatehouse::telemetry::schema;
    let result = block_on(async {
        match cmd {
            DbCommand::Migrate(ch) => {
                let client = gatehouse::telemetry::client(&ch.clickhouse, "default");
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
                let client = gatehouse::telemetry::client(&ch.clickhouse, "default");
                schema::check(&client, &ch.clickhouse, &ch.database).await?;
                sayln!("{}: schema matches", ch.database);
                Ok(())
            }
            DbCommand::Retention { ch, days } => {
                let client = gatehouse::telemetry::client(&ch.clickhouse, "default");
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
