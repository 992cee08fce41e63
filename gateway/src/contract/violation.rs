//! How a message breaks a contract: [`Violation`]s, located and named,
//! and the validation that finds them in a JSON value.

use jsonschema::Validator;
use serde::Serialize;
use serde_json::Value;

/// Where a violation was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ViolationLocation {
    /// A path parameter.
    Path,
    /// A query parameter.
    Query,
    /// A request header.
    Header,
    /// The request body.
    Body,
    /// The response (status or body).
    Response,
}

/// One way a message breaks the contract. Members are in alphabetical
/// order: problem bodies serialize them directly and keep the order a
/// `serde_json::Value` map writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// The failing JSON Schema keyword (`type`, `required`, …).
    pub keyword: String,
    /// Where.
    pub location: ViolationLocation,
    /// Human message.
    pub message: String,
    /// Parameter name, for parameters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// JSON pointer into the value (`""` = the whole value).
    pub pointer: String,
}

/// Validate `value` with `validator`, pushing at most `max` violations in all.
pub fn validate_json(
    validator: &Validator,
    value: &Value,
    location: ViolationLocation,
    name: Option<&str>,
    out: &mut Vec<Violation>,
    max: usize,
) {
    // The common case costs one allocation-free pass; errors (with their
    // pointers and messages) are collected only for a value that fails.
    if validator.is_valid(value) {
        return;
    }
    for err in validator.iter_errors(value) {
        if out.len() >= max {
            break;
        }
        out.push(Violation {
            location,
            name: name.map(str::to_string),
            pointer: err.instance_path().to_string(),
            keyword: err.kind().keyword().to_string(),
            message: err.to_string(),
        });
    }
}
