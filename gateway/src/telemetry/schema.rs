//! The ClickHouse schema: versioned, idempotent migrations and the start-up
//! check against `system.columns`.
//!
//! Compatibility (`docs/architecture.md` §6): only types and statements ClickHouse 18.16
//! understands — `DateTime` plus a `UInt64` microsecond column, no
//! `DateTime64`/`LowCardinality`/`Map`/TTL/codecs, no settings sent. The
//! `requests` table is a plain `MergeTree` partitioned by day, so Replicated
//! and Distributed variants stay possible.

use serde::Deserialize;

/// A migration: a version, what it does, and its statements (`{db}` is the database).
pub struct Migration {
    /// Monotonic version.
    pub version: u32,
    /// What it does.
    pub description: &'static str,
    /// Statements, run in order.
    pub statements: &'static [&'static str],
}

/// Every migration, oldest first.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "requests: one wide event per request",
        statements: &[r"CREATE TABLE IF NOT EXISTS {db}.requests (
    time DateTime,
    time_us UInt64,
    request_id String,
    trace_id String,
    instance String,
    policy_version String,
    app String,
    route String,
    method String,
    status UInt16,
    consumer String,
    outcome String,
    rejected_by String,
    request_verdict String,
    response_verdict String,
    violations String,
    bytes_in UInt64,
    bytes_out UInt64,
    client_ip String,
    upstream String,
    attempts UInt8,
    total_us UInt32,
    gateway_us UInt32,
    auth_us UInt32,
    limits_us UInt32,
    request_validation_us UInt32,
    upstream_connect_us UInt32,
    upstream_ttfb_us UInt32,
    upstream_total_us UInt32,
    response_validation_us UInt32
) ENGINE = MergeTree
PARTITION BY toYYYYMMDD(time)
ORDER BY (app, route, time)"],
    },
    Migration {
        version: 2,
        description: "requests_1m: per-minute rollups by app, route and status class",
        statements: &[
            r"CREATE TABLE IF NOT EXISTS {db}.requests_1m (
    minute DateTime,
    app String,
    route String,
    status_class UInt8,
    requests AggregateFunction(count),
    errors AggregateFunction(sum, UInt64),
    total_us AggregateFunction(quantiles(0.5, 0.9, 0.99), UInt32),
    upstream_us AggregateFunction(quantiles(0.5, 0.9, 0.99), UInt32),
    bytes_out AggregateFunction(sum, UInt64)
) ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMMDD(minute)
ORDER BY (app, route, minute, status_class)",
            r"CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.requests_1m_mv TO {db}.requests_1m AS
SELECT
    toStartOfMinute(time) AS minute,
    app,
    route,
    toUInt8(intDiv(status, 100)) AS status_class,
    countState() AS requests,
    sumState(toUInt64(status >= 500 OR outcome != 'ok')) AS errors,
    quantilesState(0.5, 0.9, 0.99)(total_us) AS total_us,
    quantilesState(0.5, 0.9, 0.99)(upstream_total_us) AS upstream_us,
    sumState(bytes_out) AS bytes_out
FROM {db}.requests
GROUP BY minute, app, route, status_class",
        ],
    },
    Migration {
        version: 3,
        description: "audit_heads: every audit entry's hash, kept apart from the state directory",
        statements: &[r"CREATE TABLE IF NOT EXISTS {db}.audit_heads (
    time DateTime,
    log String,
    seq UInt64,
    hash String,
    sig String,
    principal String,
    action String
) ENGINE = MergeTree
ORDER BY (log, seq)"],
    },
    Migration {
        version: 4,
        description: "fence_events: when a circuit breaker opened or closed, and why",
        statements: &[r"CREATE TABLE IF NOT EXISTS {db}.fence_events (
    time DateTime,
    time_us UInt64,
    instance String,
    policy_version String,
    app String,
    route String,
    from_state String,
    to_state String,
    reason String
) ENGINE = MergeTree
PARTITION BY toYYYYMMDD(time)
ORDER BY (app, time)"],
    },
];

/// Columns `requests` must have, `(name, type)`, in order.
pub const REQUEST_COLUMNS: &[(&str, &str)] = &[
    ("time", "DateTime"),
    ("time_us", "UInt64"),
    ("request_id", "String"),
    ("trace_id", "String"),
    ("instance", "String"),
    ("policy_version", "String"),
    ("app", "String"),
    ("route", "String"),
    ("method", "String"),
    ("status", "UInt16"),
    ("consumer", "String"),
    ("outcome", "String"),
    ("rejected_by", "String"),
    ("request_verdict", "String"),
    ("response_verdict", "String"),
    ("violations", "String"),
    ("bytes_in", "UInt64"),
    ("bytes_out", "UInt64"),
    ("client_ip", "String"),
    ("upstream", "String"),
    ("attempts", "UInt8"),
    ("total_us", "UInt32"),
    ("gateway_us", "UInt32"),
    ("auth_us", "UInt32"),
    ("limits_us", "UInt32"),
    ("request_validation_us", "UInt32"),
    ("upstream_connect_us", "UInt32"),
    ("upstream_ttfb_us", "UInt32"),
    ("upstream_total_us", "UInt32"),
    ("response_validation_us", "UInt32"),
];

/// Problems with the database schema.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// ClickHouse could not be asked.
    #[error("ClickHouse at {url}: {source}")]
    Unreachable {
        /// Server URL.
        url: String,
        /// Cause.
        source: clickhouse::error::Error,
    },
    /// The table is missing.
    #[error(
        "table {db}.requests does not exist; run `gatehouse db migrate` (or serve with --migrate)"
    )]
    Missing {
        /// Database.
        db: String,
    },
    /// The table differs from what this version writes.
    #[error("table {db}.requests does not match this version of Gatehouse: {diff}; run `gatehouse db migrate` or point --clickhouse-database at another database")]
    Different {
        /// Database.
        db: String,
        /// What differs.
        diff: String,
    },
    /// A migration statement failed.
    #[error("migration {version} failed: {source}")]
    Migration {
        /// Version.
        version: u32,
        /// Cause.
        source: clickhouse::error::Error,
    },
}

impl SchemaError {
    /// ClickHouse did not answer (connection refused, reset, timed out): an
    /// outage to wait out, unlike a schema that does not fit.
    pub fn is_unreachable(&self) -> bool {
        use clickhouse::error::Error;
        match self {
            Self::Unreachable { source, .. } | Self::Migration { source, .. } => {
                matches!(source, Error::Network(_) | Error::TimedOut)
            }
            _ => false,
        }
    }
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct Column {
    name: String,
    #[serde(rename = "type")]
    ty: String,
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct Version {
    version: u32,
}

/// Apply every migration not yet recorded; returns the versions applied.
pub async fn migrate(
    client: &clickhouse::Client,
    url: &str,
    db: &str,
) -> Result<Vec<u32>, SchemaError> {
    let unreachable = |source| SchemaError::Unreachable {
        url: url.to_string(),
        source,
    };
    client
        .query(&format!("CREATE DATABASE IF NOT EXISTS {db}"))
        .execute()
        .await
        .map_err(unreachable)?;
    client
        .query(&format!(
            "CREATE TABLE IF NOT EXISTS {db}.gatehouse_migrations (version UInt32, description String, applied_at DateTime) ENGINE = TinyLog"
        ))
        .execute()
        .await
        .map_err(unreachable)?;
    let done: Vec<u32> = client
        .query(&format!("SELECT version FROM {db}.gatehouse_migrations"))
        .fetch_all::<Version>()
        .await
        .map_err(unreachable)?
        .into_iter()
        .map(|v| v.version)
        .collect();
    let mut applied = Vec::new();
    for m in MIGRATIONS {
        if done.contains(&m.version) {
            continue;
        }
        for stmt in m.statements {
            client
                .query(&stmt.replace("{db}", db))
                .execute()
                .await
                .map_err(|source| SchemaError::Migration {
                    version: m.version,
                    source,
                })?;
        }
        client
            .query(&format!(
                "INSERT INTO {db}.gatehouse_migrations (version, description, applied_at) VALUES ({}, '{}', now())",
                m.version,
                m.description.replace('\'', "")
            ))
            .execute()
            .await
            .map_err(|source| SchemaError::Migration { version: m.version, source })?;
        applied.push(m.version);
    }
    Ok(applied)
}

/// Make the schema ready for inserts: migrate when `migrate` asks for it
/// (logging what was applied), then check it; all within `within`, or
/// ClickHouse counts as unreachable. The one preparation of both the
/// start-up and a degraded sink.
pub async fn prepare(
    url: &str,
    db: &str,
    migrate: bool,
    within: std::time::Duration,
) -> Result<(), SchemaError> {
    let client = super::client(url, "default");
    let prepared = tokio::time::timeout(within, async {
        if migrate {
            let applied = self::migrate(&client, url, db).await?;
            if !applied.is_empty() {
                tracing::info!(?applied, database = %db, "ClickHouse migrations applied");
            }
        }
        check(&client, url, db).await
    })
    .await;
    prepared.unwrap_or_else(|_| {
        Err(SchemaError::Unreachable {
            url: url.to_string(),
            source: clickhouse::error::Error::TimedOut,
        })
    })
}

/// Check `requests` against what this version writes.
pub async fn check(client: &clickhouse::Client, url: &str, db: &str) -> Result<(), SchemaError> {
    let columns: Vec<Column> = client
        .query(&format!(
            "SELECT name, type FROM system.columns WHERE database = '{}' AND table = 'requests'",
            db.replace('\'', "")
        ))
        .fetch_all()
        .await
        .map_err(|source| SchemaError::Unreachable {
            url: url.to_string(),
            source,
        })?;
    if columns.is_empty() {
        return Err(SchemaError::Missing { db: db.to_string() });
    }
    let mut diff = Vec::new();
    for (name, ty) in REQUEST_COLUMNS {
        match columns.iter().find(|c| c.name == *name) {
            None => diff.push(format!("column `{name}` is missing")),
            Some(c) if c.ty != *ty => {
                diff.push(format!("column `{name}` is {} (expected {ty})", c.ty))
            }
            Some(_) => {}
        }
    }
    if !diff.is_empty() {
        return Err(SchemaError::Different {
            db: db.to_string(),
            diff: diff.join(", "),
        });
    }
    Ok(())
}

/// Drop daily partitions of `requests`, `requests_1m` and `fence_events`
/// older than `days`;
/// returns the partitions dropped.
pub async fn retention(
    client: &clickhouse::Client,
    url: &str,
    db: &str,
    days: u32,
) -> Result<Vec<String>, SchemaError> {
    #[derive(Debug, Deserialize, clickhouse::Row)]
    struct Part {
        table: String,
        partition: String,
    }
    let unreachable = |source| SchemaError::Unreachable {
        url: url.to_string(),
        source,
    };
    let parts: Vec<Part> = client
        .query(&format!(
            "SELECT DISTINCT table, partition FROM system.parts WHERE database = '{}' AND table IN ('requests', 'requests_1m', 'fence_events') AND active \
             AND toUInt32(partition) < toUInt32(toYYYYMMDD(today() - {days}))",
            db.replace('\'', "")
        ))
        .fetch_all()
        .await
        .map_err(unreachable)?;
    let mut dropped = Vec::new();
    for p in parts {
        client
            .query(&format!(
                "ALTER TABLE {db}.{} DROP PARTITION {}",
                p.table, p.partition
            ))
            .execute()
            .await
            .map_err(unreachable)?;
        dropped.push(format!("{}:{}", p.table, p.partition));
    }
    Ok(dropped)
}
