//! A compiled operation: what a request and its responses must look like.

use std::collections::HashMap;
use std::sync::Arc;

use super::body_schema::BodySchema;

use super::params::{ParamCheck, RequestParts};
pub use super::violation::{validate_json, Violation, ViolationLocation};

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
    let value = super::ijson::parse(body)?;
    let mut out = Vec::new();
    validate_json(&schema.value, &value, location, None, &mut out, max);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::openapi::SchemaCompiler;
    use crate::contract::single_pass::tests::{document, scalar, schema};
    use crate::contract::BundleDocuments;
    use crate::source::SourceFile;
    use proptest::prelude::*;
    use serde_json::Value;

    /// The body schema the bundle compiler builds for `schema`.
    fn body_schema(schema: &Value) -> Option<std::sync::Arc<BodySchema>> {
        let src = SourceFile {
            path: "s.json".into(),
            text: schema.to_string(),
        };
        let mut errors = Vec::new();
        let docs = BundleDocuments::parse(&[&src], &mut errors);
        SchemaCompiler::new(&docs, false)
            .compile_body("s.json", "")
            .ok()
    }

    /// The reference reading: I-JSON, then `jsonschema` over the value.
    /// `None`: malformed.
    fn reference(schema: &BodySchema, body: &[u8]) -> Option<bool> {
        crate::contract::ijson::parse(body)
            .ok()
            .map(|v| schema.value.is_valid(&v))
    }

    /// What the request path decides (every fast path it may take).
    fn judged(schema: &BodySchema, body: &[u8]) -> Option<bool> {
        check_json_body(schema, body, ViolationLocation::Body, 10)
            .ok()
            .map(|v| v.is_empty())
    }

    /// Text no JSON writer produces but parsers read differently.
    const ODD: &[&str] = &[
        "1e999",
        "-1e999",
        "1E400",
        "-0",
        "-0.0",
        "0e0",
        "1e308",
        "4.9e-324",
        "123456789012345678901234567890",
        "9007199254740993",
        "100.0000000000000001",
        "0.99999999999999999",
        "1.00000000000000001e2",
        "18446744073709551616",
        "-11111744073709551615",
        "-9223372036854775809",
        r#""\ud800""#,
        r#""\udc00a""#,
        r#""\ud83d\ude00""#,
        r#""\u0061""#,
    ];

    /// `doc` as text with one twist: the first object's first member
    /// written twice (`dup`, the first time with `first`), or the first
    /// scalar replaced by an [`ODD`] text (`odd`).
    fn twisted(doc: &Value, dup: Option<&Value>, odd: Option<&str>, out: &mut String) {
        fn write(doc: &Value, dup: &mut Option<&Value>, odd: &mut Option<&str>, out: &mut String) {
            match doc {
                Value::Object(members) => {
                    out.push('{');
                    for (i, (name, value)) in members.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        let key = Value::String(name.clone()).to_string();
                        if let Some(first) = dup.take() {
                            out.push_str(&key);
                            out.push(':');
                            out.push_str(&first.to_string());
                            out.push(',');
                        }
                        out.push_str(&key);
                        out.push(':');
                        write(value, dup, odd, out);
                    }
                    out.push('}');
                }
                Value::Array(items) => {
                    out.push('[');
                    for (i, item) in items.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        write(item, dup, odd, out);
                    }
                    out.push(']');
                }
                scalar => match odd.take() {
                    Some(text) => out.push_str(text),
                    None => out.push_str(&scalar.to_string()),
                },
            }
        }
        write(
            doc,
            &mut dup.as_ref().copied(),
            &mut odd.as_ref().copied(),
            out,
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(3000)
        ))]
        /// Over random schemas (2020-12 and draft-04) and random bodies,
        /// some with a repeated member name or a number or string parsers
        /// disagree on, the request path's verdict is the reference
        /// path's: no fast path accepts what the reference refuses, or
        /// the other way round, and no well-formed body is called
        /// malformed.
        #[test]
        fn every_path_judges_as_the_reference(
            schema in schema(),
            draft4 in any::<bool>(),
            doc in document(),
            dup in prop::option::weighted(0.3, scalar()),
            odd in prop::option::weighted(0.3, prop::sample::select(ODD)),
        ) {
            let mut schema = schema;
            if let (true, Value::Object(s)) = (draft4, &mut schema) {
                s.insert("$schema".into(), "http://json-schema.org/draft-04/schema#".into());
            }
            let Some(compiled) = body_schema(&schema) else {
                return Ok(());
            };
            let mut body = String::new();
            twisted(&doc, dup.as_ref(), odd, &mut body);
            let (judged, reference) = (
                judged(&compiled, body.as_bytes()),
                reference(&compiled, body.as_bytes()),
            );
            // A malformed body may be refused as not matching the schema
            // (the bounded single pass stops at the first mismatch); every
            // other verdict is the reference's.
            if !(reference.is_none() && judged == Some(false)) {
                prop_assert_eq!(judged, reference, "{} on {}", schema, body);
            }
        }
    }

    #[test]
    fn negative_zero_is_one_number_on_every_path() {
        for draft in [
            "http://json-schema.org/draft-04/schema#",
            "https://json-schema.org/draft/2020-12/schema",
        ] {
            for schema in [
                serde_json::json!({"$schema": draft, "type": "integer"}),
                serde_json::json!({"$schema": draft, "not": {"type": "integer"}}),
                serde_json::json!({"$schema": draft, "properties": {"a": {"type": "integer"}}}),
            ] {
                let compiled = body_schema(&schema).expect("compiles");
                for body in ["-0", "-0.0", "0", "{\"a\":-0}", "{\"a\":-0.0}"] {
                    assert_eq!(
                        judged(&compiled, body.as_bytes()),
                        reference(&compiled, body.as_bytes()),
                        "{schema} on {body}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_repeated_member_name_is_malformed_whatever_the_schema() {
        for schema in [
            serde_json::json!({"properties": {"a": {"type": "string"}}}),
            serde_json::json!({"type": "object"}),
            serde_json::json!(true),
        ] {
            let compiled = body_schema(&schema).expect("compiles");
            for body in [
                r#"{"a":1,"a":"x"}"#,
                r#"{"a":"x","a":1}"#,
                r#"{"z":{"q":1,"q":1}}"#,
            ] {
                assert_eq!(judged(&compiled, body.as_bytes()), None, "{schema} {body}");
            }
        }
    }
}
