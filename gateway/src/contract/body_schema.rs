//! A compiled body schema ([`BodySchema`]) and its three checks, fastest
//! first: the single-pass program ([`super::single_pass`]), `jsonschema`
//! over a `simd-json` tape ([`super::tape`]), and `jsonschema` over a
//! `serde_json::Value` for the pointers and messages of a body that fails.

use std::fmt;

use jsonschema::Validator;

use super::single_pass::{Check, SinglePass};
use super::tape::{with_doc, Borrowed};

/// A compiled body schema: the validator over `serde_json::Value` (used for
/// error details), the same schema over the tape (the fast yes/no), and,
/// when the schema's keywords allow, the single-pass program (faster still).
pub struct BodySchema {
    /// Over `serde_json::Value`.
    pub value: Validator,
    fast: Validator<Borrowed>,
    single: Option<SinglePass>,
}

impl fmt::Debug for BodySchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BodySchema").finish_non_exhaustive()
    }
}

impl BodySchema {
    /// The validators of one schema.
    pub fn new(value: Validator, fast: Validator<Borrowed>, single: Option<SinglePass>) -> Self {
        Self {
            value,
            fast,
            single,
        }
    }

    /// Whether the single-pass program judges this schema.
    pub fn is_single_pass(&self) -> bool {
        self.single.is_some()
    }

    /// For a schema whose applicators recurse so that `jsonschema` would
    /// read a nested value exponentially often ([`SinglePass::rereads`]):
    /// the verdict of the single-pass program alone, in time bounded by
    /// body × schema. `None` for every other schema.
    pub fn bounded_verdict(&self, body: &[u8]) -> Option<Result<Check, serde_json::Error>> {
        let single = self.single.as_ref().filter(|s| s.rereads())?;
        Some(single.check_normalised(body))
    }

    /// `Some(true)` when `body` parses and is valid; `None` when the fast
    /// path cannot say (malformed, too wide, a repeated key, or invalid —
    /// the caller then finds out which over a `serde_json::Value`).
    pub fn accepts(&self, body: &[u8]) -> Option<bool> {
        match self.single.as_ref().map(|s| s.check(body)) {
            Some(Check::Valid) => return Some(true),
            Some(Check::Invalid) => return None,
            Some(Check::Unsure) | None => {}
        }
        with_doc(body, |doc| self.fast.is_valid(doc))?.then_some(true)
    }
}
