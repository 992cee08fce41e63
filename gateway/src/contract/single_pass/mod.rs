//! The yes/no body check in one pass over the bytes, with no tape and no tree.
//!
//! The tape walk of [`super::tape`] parses a body into a `simd-json`
//! tape and lets `jsonschema` walk it: three passes (stage 1, tape,
//! walk) and about half of a validated request's instructions. Most
//! contract schemas use a small set of keywords, so a schema made only of
//! those is compiled here into a [`SinglePass`] program: a table of nodes
//! (one per schema object, `$ref`s resolved, cycles allowed), checked while
//! a recursive-descent parser reads the body once.
//!
//! The program judges exactly as `jsonschema` does, or says it cannot:
//!
//! - **Supported keywords**: `type`, `enum`, `const` (scalars), `minimum`,
//!   `maximum`, `exclusiveMinimum`, `exclusiveMaximum`, `minLength`,
//!   `maxLength`, `minItems`, `maxItems`, `items`, `properties`,
//!   `required`, `additionalProperties`, `minProperties`,
//!   `maxProperties`, `allOf`, `anyOf`, `oneOf`, `not`, `$ref` (to a JSON
//!   pointer in a bundle document), and annotations. A `pattern` of the
//!   identifier kind (`^SKU-[0-9]{5}$`) is matched here, without a regex engine; other
//!   patterns, `format` and `multipleOf` are judged by `jsonschema` itself:
//!   a scalar goes to a validator of just those keywords, with no
//!   allocation. A schema with
//!   any other keyword is not compiled, and the tape walk judges it.
//! - **[`Check::Unsure`]** for what the parser does not read the way
//!   `serde_json` would, or does not read at all: malformed JSON, a repeated
//!   key under a schema (`serde_json` keeps the last value), an escaped
//!   member name, an escaped UTF-16 surrogate, nesting deeper than
//!   `MAX_DEPTH`, an integer beyond 2^53 compared with a fractional bound.
//!   The caller then falls back to the tape walk and `serde_json`.
//! - **[`Check::Invalid`]** is exact too (so `not` and `oneOf` can use it),
//!   but the caller still asks the `serde_json::Value` validator, which
//!   gives the pointers and messages of the problem response.
//!
//! A property test holds the verdicts to `jsonschema`'s over random
//! schemas and documents.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::AtomicU8;

use jsonschema::Validator;
use serde_json::Value;
use simd_json::{Node as TapeNode, StaticNode};

use super::tape::{Borrowed, Doc};

mod compile;
mod pattern;
mod scan;
mod words;

use compile::Compiler;
use pattern::Pattern;
use scan::Scan;
use words::Words;

/// Deepest nesting the parser reads (as `serde_json`'s limit); `allOf`,
/// `anyOf`, `oneOf` and `not` count as a level too.
const MAX_DEPTH: u32 = 128;

/// Most members an object may name that its schema's `properties` do not
/// (they are checked for repeats by a linear scan).
const MAX_OTHER_MEMBERS: usize = 64;

/// Most `properties` + `required` names of one schema (a bit each).
const MAX_PROPERTIES: usize = 64;

/// What a [`SinglePass`] says of a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Well-formed and valid.
    Valid,
    /// Well-formed up to where it broke the schema; invalid.
    Invalid,
    /// Not judged here.
    Unsure,
}

/// Why a parse stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Invalid,
    Unsure,
}

type Step = Result<(), Stop>;

/// JSON types as bits; `INT` is an integer-valued number, `FRAC` any other.
mod types {
    pub const NULL: u8 = 1;
    pub const BOOL: u8 = 2;
    pub const INT: u8 = 4;
    pub const FRAC: u8 = 8;
    pub const STR: u8 = 16;
    pub const ARR: u8 = 32;
    pub const OBJ: u8 = 64;
    pub const ALL: u8 = 127;
}

/// A number as `serde_json` reads it.
#[derive(Debug, Clone, Copy)]
enum Num {
    U(u64),
    I(i64),
    F(f64),
}

/// Integers beyond this lose precision as `f64`.
const EXACT_F64: u64 = 1 << 53;

impl Num {
    fn from_json(n: &serde_json::Number) -> Option<Num> {
        n.as_u64()
            .map(Num::U)
            .or_else(|| n.as_i64().map(Num::I))
            .or_else(|| n.as_f64().map(Num::F))
    }

    fn is_integer(self) -> bool {
        match self {
            // Every `f64` from 2^52 up is an integer; below, a round trip
            // through `i64` is exact for integers only (and, unlike
            // `fract`, is no call to libm's `trunc`). NaN fails both.
            Num::F(f) if f.abs() < 4_503_599_627_370_496.0 => f == (f as i64) as f64,
            Num::F(f) => f.is_finite(),
            _ => true,
        }
    }

    fn as_i128(self) -> Option<i128> {
        match self {
            Num::U(u) => Some(u.into()),
            Num::I(i) => Some(i.into()),
            Num::F(_) => None,
        }
    }

    /// As `f64`, when that is exact.
    fn as_f64(self) -> Option<f64> {
        match self {
            Num::U(u) => (u <= EXACT_F64).then_some(u as f64),
            Num::I(i) => (i.unsigned_abs() <= EXACT_F64).then_some(i as f64),
            Num::F(f) => Some(f),
        }
    }

    /// Compare; `None` when the comparison would not be exact.
    #[inline]
    fn compare(self, other: Num) -> Option<Ordering> {
        // The pairs a body and its schema's bounds usually make, first.
        match (self, other) {
            (Num::U(a), Num::U(b)) => return Some(a.cmp(&b)),
            (Num::F(a), Num::F(b)) => return a.partial_cmp(&b),
            (Num::F(a), Num::U(b)) if b <= EXACT_F64 => return a.partial_cmp(&(b as f64)),
            _ => {}
        }
        match (self.as_i128(), other.as_i128()) {
            (Some(a), Some(b)) => Some(a.cmp(&b)),
            _ => self.as_f64()?.partial_cmp(&other.as_f64()?),
        }
    }

    /// The number as a one-node tape, for a `jsonschema` leaf check.
    fn tape_node(self) -> TapeNode<'static> {
        TapeNode::Static(match self {
            Num::U(u) => StaticNode::U64(u),
            Num::I(i) => StaticNode::I64(i),
            Num::F(f) => StaticNode::F64(f),
        })
    }
}

/// An `enum` / `const` value.
#[derive(Debug, Clone)]
enum Scalar {
    Null,
    Bool(bool),
    Num(Num),
    Str(Box<str>),
}

/// A value the parser read, for `enum` checks.
#[derive(Debug, Clone, Copy)]
enum Read<'t> {
    Null,
    Bool(bool),
    Num(Num),
    Str(&'t str),
    /// An array or an object: equal to no scalar.
    Container,
}

impl Scalar {
    fn from_json(v: &Value) -> Option<Scalar> {
        Some(match v {
            Value::Null => Scalar::Null,
            Value::Bool(b) => Scalar::Bool(*b),
            Value::Number(n) => Scalar::Num(Num::from_json(n)?),
            Value::String(s) => Scalar::Str(s.as_str().into()),
            Value::Array(_) | Value::Object(_) => return None,
        })
    }

    /// Equal as `jsonschema` compares (`1` equals `1.0`); `None` when
    /// that cannot be said exactly.
    fn equals(&self, read: Read<'_>) -> Option<bool> {
        Some(match (self, read) {
            (Scalar::Null, Read::Null) => true,
            (Scalar::Bool(a), Read::Bool(b)) => *a == b,
            (Scalar::Num(a), Read::Num(b)) => a.compare(b)? == Ordering::Equal,
            (Scalar::Str(a), Read::Str(b)) => **a == *b,
            _ => false,
        })
    }
}

/// Index of a node in the program.
type NodeId = u32;

/// One member name a schema knows: from `properties`, `required`, or both.
#[derive(Debug)]
struct Property {
    name: Box<str>,
    /// Its `properties` schema; `None` when only `required` names it.
    schema: Option<NodeId>,
    /// The name and its closing quote as JSON writes them, for comparing
    /// with the raw bytes; `None` when JSON must escape the name (a `"`,
    /// `\\` or control character), as no unescaped member name can then
    /// equal it.
    quoted: Option<Words>,
}

/// One compiled schema object.
struct Node {
    types: u8,
    /// `enum` and `const` lists; the value must be in each.
    enums: Vec<Box<[Scalar]>>,
    minimum: Option<Num>,
    maximum: Option<Num>,
    exclusive_minimum: Option<Num>,
    exclusive_maximum: Option<Num>,
    min_length: Option<u64>,
    max_length: Option<u64>,
    /// A `pattern` simple enough to match here.
    pattern: Option<Pattern>,
    /// `format`, `multipleOf` and other patterns, judged by `jsonschema`.
    leaf: Option<Validator<Borrowed>>,
    min_items: Option<u64>,
    max_items: Option<u64>,
    items: Option<NodeId>,
    min_properties: Option<u64>,
    max_properties: Option<u64>,
    properties: Vec<Property>,
    /// Which property the next member usually names, learnt from the
    /// bodies read: at `i`, after the member that named property `i`; at
    /// `properties.len()`, the first member. Only where the name search
    /// starts: a wrong guess costs a few comparisons, never a verdict.
    follows: Box<[AtomicU8]>,
    /// Bits of `properties` that are required.
    required: u64,
    /// `additionalProperties`; `None` allows any.
    additional: Option<NodeId>,
    all_of: Vec<NodeId>,
    any_of: Vec<NodeId>,
    one_of: Vec<NodeId>,
    not: Option<NodeId>,
    /// Has `allOf`, `anyOf`, `oneOf` or `not` (set by [`Node::settle`]).
    applicators: bool,
    /// A number's value is needed (set by [`Node::settle`]).
    number_checks: bool,
    /// The four bounds as `f64`, when each is exact as one (set by
    /// [`Node::settle`]): a number that is exact as `f64` too is then
    /// judged by four float comparisons, with no case analysis.
    float_bounds: Option<FloatBounds>,
    /// A string's text is needed (set by [`Node::settle`]).
    text_checks: bool,
}

impl Default for Node {
    fn default() -> Self {
        Self {
            types: types::ALL,
            enums: Vec::new(),
            minimum: None,
            maximum: None,
            exclusive_minimum: None,
            exclusive_maximum: None,
            min_length: None,
            max_length: None,
            pattern: None,
            leaf: None,
            min_items: None,
            max_items: None,
            items: None,
            min_properties: None,
            max_properties: None,
            properties: Vec::new(),
            follows: Box::default(),
            required: 0,
            additional: None,
            all_of: Vec::new(),
            any_of: Vec::new(),
            one_of: Vec::new(),
            not: None,
            applicators: false,
            number_checks: false,
            float_bounds: None,
            text_checks: false,
        }
    }
}

impl Node {
    /// Work out what reading a value for this node needs.
    fn settle(mut self) -> Self {
        // Until bodies say otherwise, members come in the properties' order.
        let count = self.properties.len();
        let after = |i: usize| if i + 1 < count { i + 1 } else { 0 };
        self.follows = (0..=count)
            .map(|i| AtomicU8::new(u8::try_from(after(i)).unwrap_or(0)))
            .collect();
        self.applicators = !(self.all_of.is_empty()
            && self.any_of.is_empty()
            && self.one_of.is_empty()
            && self.not.is_none());
        self.number_checks = self.types & (types::INT | types::FRAC) != (types::INT | types::FRAC)
            || !self.enums.is_empty()
            || self.minimum.is_some()
            || self.maximum.is_some()
            || self.exclusive_minimum.is_some()
            || self.exclusive_maximum.is_some()
            || self.leaf.is_some();
        self.float_bounds = FloatBounds::of(&self);
        self.text_checks = !self.enums.is_empty()
            || self.min_length.is_some()
            || self.max_length.is_some()
            || self.pattern.is_some()
            || self.leaf.is_some();
        self
    }

    #[inline]
    fn in_enums(&self, read: Read<'_>) -> Step {
        if self.enums.is_empty() {
            return Ok(());
        }
        self.in_lists(read)
    }

    fn in_lists(&self, read: Read<'_>) -> Step {
        for list in &self.enums {
            let mut found = false;
            for s in list.iter() {
                if s.equals(read).ok_or(Stop::Unsure)? {
                    found = true;
                    break;
                }
            }
            if !found {
                return Err(Stop::Invalid);
            }
        }
        Ok(())
    }

    fn check_number(&self, n: Num) -> Step {
        let t = if n.is_integer() {
            types::INT
        } else {
            types::FRAC
        };
        if self.types & t == 0 {
            return Err(Stop::Invalid);
        }
        match (self.float_bounds, n.as_f64()) {
            (Some(b), Some(x)) => {
                if x < b.minimum || x > b.maximum || x <= b.above || x >= b.below {
                    return Err(Stop::Invalid);
                }
            }
            _ => {
                let fails = |bound: Option<Num>, bad: fn(Ordering) -> bool| -> Step {
                    match bound {
                        Some(b) if bad(n.compare(b).ok_or(Stop::Unsure)?) => Err(Stop::Invalid),
                        _ => Ok(()),
                    }
                };
                fails(self.minimum, |o| o == Ordering::Less)?;
                fails(self.maximum, |o| o == Ordering::Greater)?;
                fails(self.exclusive_minimum, |o| o != Ordering::Greater)?;
                fails(self.exclusive_maximum, |o| o != Ordering::Less)?;
            }
        }
        self.in_enums(Read::Num(n))?;
        if let Some(leaf) = &self.leaf {
            let tape = [n.tape_node()];
            if !leaf.is_valid(Doc::At(&tape, 0)) {
                return Err(Stop::Invalid);
            }
        }
        Ok(())
    }

    fn check_text(&self, text: &str) -> Step {
        if self.min_length.is_some() || self.max_length.is_some() {
            let len = text.chars().count() as u64;
            if self.min_length.is_some_and(|m| len < m) || self.max_length.is_some_and(|m| len > m)
            {
                return Err(Stop::Invalid);
            }
        }
        self.in_enums(Read::Str(text))?;
        if self.pattern.as_ref().is_some_and(|p| !p.matches(text)) {
            return Err(Stop::Invalid);
        }
        match &self.leaf {
            Some(leaf) if !leaf.is_valid(Doc::Str(text)) => Err(Stop::Invalid),
            _ => Ok(()),
        }
    }
}

/// A node's number bounds as `f64`s; an absent bound is an infinity that
/// no finite number breaks.
#[derive(Debug, Clone, Copy)]
struct FloatBounds {
    /// `minimum`: a number below it is invalid.
    minimum: f64,
    /// `maximum`: a number above it is invalid.
    maximum: f64,
    /// `exclusiveMinimum`: a number at or below it is invalid.
    above: f64,
    /// `exclusiveMaximum`: a number at or above it is invalid.
    below: f64,
}

impl FloatBounds {
    /// The node's bounds, when each one present is exact as `f64` (so that
    /// comparing floats is comparing the numbers); `None` otherwise.
    fn of(node: &Node) -> Option<FloatBounds> {
        let exact = |bound: Option<Num>, absent: f64| match bound {
            None => Some(absent),
            Some(b) => b.as_f64().filter(|f| f.is_finite()),
        };
        Some(FloatBounds {
            minimum: exact(node.minimum, f64::NEG_INFINITY)?,
            maximum: exact(node.maximum, f64::INFINITY)?,
            above: exact(node.exclusive_minimum, f64::NEG_INFINITY)?,
            below: exact(node.exclusive_maximum, f64::INFINITY)?,
        })
    }
}

/// A compiled body schema, checked in one pass over the body.
pub struct SinglePass {
    nodes: Vec<Node>,
    root: NodeId,
    /// See [`SinglePass::rereads`].
    rereads: bool,
}

impl fmt::Debug for SinglePass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SinglePass")
            .field("nodes", &self.nodes.len())
            .finish_non_exhaustive()
    }
}

impl SinglePass {
    /// Compile the schema at `doc#pointer`. `documents` are the bundle's
    /// (3.0 contracts already converted), `leaf` builds a
    /// `jsonschema` validator of `pattern`/`format`/`multipleOf` keywords
    /// with the bundle's options. `None` when the schema uses a keyword
    /// this program does not judge.
    pub fn compile(
        documents: &BTreeMap<String, std::sync::Arc<Value>>,
        leaf: &dyn Fn(&Value) -> Option<Validator<Borrowed>>,
        doc: &str,
        pointer: &str,
    ) -> Option<SinglePass> {
        // Draft 4 tells integers by their text (`1.0` and `-0` are not
        // integers to `jsonschema` there); the program tells them by
        // value, as later drafts do, so a draft-04 document is left to
        // `jsonschema`.
        if documents
            .get(doc)
            .and_then(|d| d.get("$schema"))
            .and_then(Value::as_str)
            .is_some_and(|s| s.contains("draft-04"))
        {
            return None;
        }
        let mut c = Compiler {
            documents,
            leaf,
            nodes: Vec::new(),
            ids: HashMap::new(),
        };
        let root = c.schema(doc, pointer)?;
        let rereads = rereads(&c.nodes);
        Some(SinglePass {
            nodes: c.nodes,
            root,
            rereads,
        })
    }

    /// Whether a node with applicators has two or more ways back to itself
    /// (its applicators' subschemas, and its own `items`/`properties` as
    /// one more): a value nested `n` deep is then read by `jsonschema` up
    /// to 2^n times (this program reads it once per node). Bodies under
    /// such a schema are judged here only.
    pub fn rereads(&self) -> bool {
        self.rereads
    }

    /// Judge `body`; what this program does not read itself (escaped
    /// member names, repeated names, …) is read by `serde_json` and judged
    /// again as `serde_json` writes it back. Bounded by body × schema.
    pub fn check_normalised(&self, body: &[u8]) -> Result<Check, serde_json::Error> {
        match self.check(body) {
            Check::Unsure => {
                let value = crate::contract::ijson::parse(body)?;
                Ok(self.check(&serde_json::to_vec(&value)?))
            }
            judged => Ok(judged),
        }
    }

    /// Judge `body`.
    pub fn check(&self, body: &[u8]) -> Check {
        let Ok(text) = std::str::from_utf8(body) else {
            return Check::Unsure;
        };
        let mut scan = Scan::new(text, &self.nodes);
        let verdict = scan.value(Some(self.root)).and_then(|()| {
            scan.skip_space();
            if scan.at_end() {
                Ok(())
            } else {
                Err(Stop::Unsure)
            }
        });
        match verdict {
            Ok(()) => Check::Valid,
            Err(Stop::Invalid) => Check::Invalid,
            Err(Stop::Unsure) => Check::Unsure,
        }
    }
}

/// See [`SinglePass::rereads`]: whether some node with applicators is
/// reached again through two of its subschemas (any keyword on the way).
fn rereads(nodes: &[Node]) -> bool {
    let children = |n: &Node| -> Vec<NodeId> {
        let mut out: Vec<NodeId> = n
            .all_of
            .iter()
            .chain(&n.any_of)
            .chain(&n.one_of)
            .copied()
            .collect();
        out.extend(n.not);
        out.extend(n.items);
        out.extend(n.additional);
        out.extend(n.properties.iter().filter_map(|p| p.schema));
        out
    };
    let reaches = |from: NodeId, target: NodeId| -> bool {
        let mut seen = vec![false; nodes.len()];
        let mut stack = vec![from];
        while let Some(id) = stack.pop() {
            if id == target {
                return true;
            }
            match (seen.get_mut(id as usize), nodes.get(id as usize)) {
                (Some(s), Some(n)) if !*s => {
                    *s = true;
                    stack.extend(children(n));
                }
                _ => {}
            }
        }
        false
    };
    nodes.iter().enumerate().any(|(i, n)| {
        let id = i as NodeId;
        if !n.applicators {
            return false;
        }
        let branches = n
            .all_of
            .iter()
            .chain(&n.any_of)
            .chain(&n.one_of)
            .chain(n.not.as_ref());
        let again = branches.filter(|&&b| reaches(b, id)).count();
        // The node's own keywords (items, properties) are one more path.
        let own = n
            .items
            .iter()
            .chain(&n.additional)
            .chain(n.properties.iter().filter_map(|p| p.schema.as_ref()))
            .any(|&c| reaches(c, id));
        again + usize::from(own) >= 2
    })
}

#[cfg(test)]
pub(crate) mod tests;
