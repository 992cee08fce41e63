//! API contracts: OpenAPI 3.0/3.1 documents and JSON Schemas compiled once,
//! at bundle compile time, into validators the request path runs.
//!
//! ```text
//! contracts/*.yaml ─► BundleDocuments (parsed; 3.0 dialect converted)
//!                        │ resolve $ref (same file / relative files)
//!                        ▼
//!   paths × methods ─► Operation { params, body, responses }   (jsonschema Validators)
//! ```
//!
//! A body schema is compiled three ways ([`body_schema::BodySchema`]):
//! a [`single_pass::SinglePass`] program when its keywords allow (checked
//! while the body is read once), `jsonschema` over a `simd-json` tape
//! otherwise, and `jsonschema` over a `serde_json::Value` for the
//! pointers and messages of a body that fails.
//!
//! Validators address schemas by URI, `gatehouse://bundle/<file>#<pointer>`,
//! and a [`documents::BundleRetriever`] serves those files from memory: no
//! file or network access happens while compiling or validating.

pub mod body_schema;
pub mod dialect;
pub mod documents;
pub mod formats;
pub mod ijson;
pub mod openapi;
pub mod operation;
pub mod params;
pub mod single_pass;
pub mod tape;
pub mod violation;

pub use documents::BundleDocuments;
pub use operation::{BodyCheck, Operation, ResponseChecks, Violation, ViolationLocation};

use serde::{Deserialize, Serialize};

/// How a contract check acts on traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Refuse what does not conform.
    Enforce,
    /// Forward untouched; record the verdict.
    Monitor,
    /// Do not check.
    #[default]
    Off,
}

/// What happens to requests for operations the contract does not document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Undocumented {
    /// 404/405 problem.
    #[default]
    Reject,
    /// Forward and record.
    Monitor,
    /// Forward.
    Allow,
}

/// The verdict of a contract check, kept in the request context for telemetry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verdict {
    /// Not checked (no contract, mode off, or too large to check).
    #[default]
    Unchecked,
    /// Conforms.
    Valid,
    /// Does not conform.
    Invalid,
}

/// Contract verdict counters (monitor mode included), read by the admin API
/// until the metrics catalogue lands.
pub mod counters {
    use std::sync::atomic::AtomicU64;

    /// Requests found invalid (monitor) or refused (enforce).
    pub static REQUEST_VIOLATIONS: AtomicU64 = AtomicU64::new(0);
    /// Responses found invalid.
    pub static RESPONSE_VIOLATIONS: AtomicU64 = AtomicU64::new(0);
}

/// Count one message with violations (`what` = `request` or `response`).
pub fn count_violation(what: &str) {
    use std::sync::atomic::Ordering;
    let c = if what == "response" {
        &counters::RESPONSE_VIOLATIONS
    } else {
        &counters::REQUEST_VIOLATIONS
    };
    c.fetch_add(1, Ordering::Relaxed);
}
