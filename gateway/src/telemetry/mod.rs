//! Telemetry: one wide [`RequestEvent`] per request, streamed to ClickHouse
//! off the request path (bounded queue, batches, on-disk spool), the schema
//! and its migrations, and the analysts' report library.

pub mod event;
pub mod report;
pub mod schema;
pub mod sink;
pub mod spool;

pub use event::RequestEvent;
pub use sink::{SinkConfig, SinkStats, Telemetry};
