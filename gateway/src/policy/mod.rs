//! Policy bundles: the files a governance board reviews, compiled into the
//! immutable [`Bundle`] the data plane serves.
//!
//! ```text
//! DIR/*.yaml ──load──► SourceFile[] ──compile (pure)──► Bundle { version = sha256 }
//!                                      │ schema check (policy.schema.json)
//!                                      │ serde model (deny_unknown_fields)
//!                                      └ semantic checks, all errors collected
//! ```
//!
//! Which files belong to a bundle: every `*.yaml`, `*.yml` and `*.json` file in
//! the directory and its subdirectories, except hidden entries and `*.schema.json`
//! files at the top level (editor support). Files under `contracts/` (OpenAPI
//! documents) and `schemas/` (JSON Schemas) are documents that policy files
//! refer to; all others are policy files. Every file is part of the version.

mod bundle;
mod compile;
mod consumers;
pub mod model;
pub mod resilience;
pub mod review_rules;
mod routes;

pub use crate::source::{
    is_document, load_dir, may_affect_bundle, PolicyError, PolicyErrors, SourceFile,
};
pub use bundle::{
    App, AppLimit, Auth, Balancing, Bundle, ContractSettings, Ejection, HealthCheck, InstanceAddr,
    Plan, Route, Timeouts,
};
pub use compile::{compile, parse_instance_url, DEFAULT_MAX_REQUEST_BODY, POLICY_SCHEMA};

/// Load and compile a bundle directory in one step.
pub fn load_and_compile(dir: &std::path::Path) -> Result<Bundle, PolicyErrors> {
    let sources = load_dir(dir)?;
    compile(&sources)
}
