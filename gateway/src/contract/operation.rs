//! A compiled operation: what a request and its responses must look like.

use std::collections::HashMap;
use std::sync::Arc;

use jsonschema::Validator;

use super::borrowed::BodySchema;
use serde::Serialize;
use serde_json::Value;

use super::params::{ParamCheck, RequestParts};

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

/// Request body expectations.
#[derive(Debug)]
pub struct BodyCheck {
    /// Must a body be present?
    pub required: bool,
    /// Accepted media types (lowercase, no parameters); empty = any.
    pub media_types: Vec<String>,
    /// Validator for JSON bodies.
    pub json: Option<Arc<BodySchema>>,
}

/// Response expectations by status.
#[derive(Debug, Default)]
pub struct ResponseChecks {
    /// Exact status codes → JSON validator (None: documented, body not checked).
    pub exact: HashMap<u16, Option<Arc<BodySchema>>>,
    /// `1XX` … `5XX` ranges (index = first digit).
    pub ranges: [Option<Option<Arc<BodySchema>>>; 6],
    /// `default`.
    pub default: Option<Option<Arc<BodySchema>>>,
}

impl ResponseChecks {
    /// Is anything documented at all?
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.ranges.iter().all(Option::is_none) && self.default.is_none()
    }

    /// What is expected of a response with `status`.
    pub fn expectation(&self, status: u16) -> Expectation<'_> {
        let found = self
            .exact
            .get(&status)
            .or_else(|| {
                self.ranges
                    .get((status / 100) as usize)
                    .and_then(Option::as_ref)
            })
            .or(self.default.as_ref());
        match found {
            None => Expectation::Undocumented,
            Some(None) => Expectation::AnyBody,
            Some(Some(v)) => Expectation::Json(v),
        }
    }
}

/// What the contract says about a response status.
#[derive(Debug, Clone, Copy)]
pub enum Expectation<'a> {
    /// The status is not documented.
    Undocumented,
    /// Documented, body not described.
    AnyBody,
    /// Documented with a JSON body schema.
    Json(&'a Arc<BodySchema>),
}

/// One documented operation.
#[derive(Debug, Default)]
pub struct Operation {
    /// Path, query and header parameters.
    pub params: Vec<ParamCheck>,
    /// Request body, when the operation documents one.
    pub body: Option<BodyCheck>,
    /// Responses.
    pub responses: ResponseChecks,
}

impl Operation {
    /// Check parameters; push at most `max` violations.
    pub fn check_params(&self, req: &RequestParts<'_>, out: &mut Vec<Violation>, max: usize) {
        for p in &self.params {
            if out.len() >= max {
                return;
            }
            p.check(req, out, max);
        }
    }
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

/// Parse a JSON body and validate it: what the request path does for an
/// enforced body. `Err` when the body is not JSON.
pub fn check_json_body(
    schema: &BodySchema,
    body: &[u8],
    location: ViolationLocation,
    max: usize,
) -> Result<Vec<Violation>, serde_json::Error> {
    // Recursive applicators: judged by the single pass alone, as
    // `jsonschema` could take exponential time; one violation at the root
    // stands for the details it would have listed.
    if let Some(verdict) = schema.bounded_verdict(body) {
        let message = match verdict? {
            super::single_pass::Check::Valid => return Ok(Vec::new()),
            super::single_pass::Check::Invalid => "the body does not match the schema",
            super::single_pass::Check::Unsure => "the body could not be judged against the schema",
        };
        return Ok(vec![Violation {
            location,
            name: None,
            pointer: String::new(),
            keyword: "schema".into(),
            message: message.into(),
        }]);
    }
    // The common case: a valid body, judged over a borrowed tree.
    if schema.accepts(body) == Some(true) {
        return Ok(Vec::new());
    }
    let value: Value = serde_json::from_slice(body)?;
    let mut out = Vec::new();
    validate_json(&schema.value, &value, location, None, &mut out, max);
    Ok(out)
}
