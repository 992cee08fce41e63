//! `gatehouse report`: the bottleneck reports.

use std::process::ExitCode;
use std::time::Duration;

use clap::ValueEnum;

use super::{block_on, ClickHouseArgs};

/// `gatehouse report [NAME]`.
#[derive(clap::Args, Debug)]
pub(crate) struct ReportArgs {
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
}

/// Run `gatehouse report`.
pub(crate) fn run(args: ReportArgs) -> ExitCode {
    report(
        args.name.as_deref(),
        &args.ch,
        args.since.into(),
        args.app.as_deref(),
        args.limit,
        args.format,
    )
}
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum ReportFormat {
    Table,
    Json,
    Csv,
}

pub(crate) fn report(
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
    let client = gatehouse::telemetry::client(&ch.clickhouse, "default");
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
