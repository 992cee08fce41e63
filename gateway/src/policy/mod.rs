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

mod access;
mod bundle;
mod compile;
pub mod model;
mod routes;
mod source;

pub use bundle::{
    App, AppLimit, Auth, Balancing, Bundle, ContractSettings, Ejection, HealthCheck, InstanceAddr,
    Plan, Route, Timeouts,
};
pub use compile::{compile, parse_instance_url, DEFAULT_MAX_REQUEST_BODY, POLICY_SCHEMA};
pub use source::{is_document, load_dir, may_affect_bundle, SourceFile};

use std::fmt;

/// One problem in a policy bundle, located as `file: /json/pointer`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PolicyError {
    /// File path relative to the bundle directory.
    pub file: String,
    /// JSON pointer into the file (`""` for the whole file).
    pub pointer: String,
    /// What is wrong, for a human.
    pub message: String,
}

impl PolicyError {
    /// Build an error.
    pub fn new(file: &str, pointer: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            file: file.to_string(),
            pointer: pointer.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pointer = if self.pointer.is_empty() {
            "/"
        } else {
            &self.pointer
        };
        write!(f, "{}: {}: {}", self.file, pointer, self.message)
    }
}

/// All problems found in a bundle (never empty when returned as an error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

/// Load and compile a bundle directory in one step.
pub fn load_and_compile(dir: &std::path::Path) -> Result<Bundle, PolicyErrors> {
    let sources = load_dir(dir)?;
    compile(&sources)
}
