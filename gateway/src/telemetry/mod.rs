//! Telemetry: one wide [`RequestEvent`] per request, streamed to ClickHouse
//! off the request path (bounded queue, batches, on-disk spool), the schema
//! and its migrations, and the analysts' report library.

pub mod event;
pub mod fence_events;
pub mod report;
pub mod schema;
pub mod sink;
pub mod spool;

pub use event::RequestEvent;
pub use sink::{SinkConfig, SinkStats, Telemetry};

/// A ClickHouse client with the settings that work on 18.16 and current
/// releases (no row validation: the schema is checked against
/// `system.columns` instead).
pub fn client(url: &str, database: &str) -> clickhouse::Client {
    clickhouse::Client::default()
        .with_url(url)
        .with_database(database)
        .with_validation(false)
}
