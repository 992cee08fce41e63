//! A `simd-json` tape as a `jsonschema` document: the yes/no body check
//! with no tree built.
//!
//! Parsing a request body into a `serde_json::Value` allocates a `String`
//! per key and per string and a map node per member; it was the largest
//! cost of a validated request. Here the body is parsed into a `simd-json`
//! tape (strings unescaped in place, one flat `Vec` reused per thread) and
//! `jsonschema` walks the tape itself through its custom-representation
//! traits: a node is a position in the tape, and a container's `count`
//! skips over its subtree. A body that fails is judged again over a
//! `serde_json::Value`, which gives the error pointers and messages, so the
//! fast path only ever says "valid".
//!
//! Before the walk, one pass over the tape checks what the walk relies on:
//! depth, object width, subtree counts, finite numbers, and no repeated
//! keys. A document that fails that pass (a repeated key, say, where
//! `serde_json` keeps the last value) goes to the `serde_json` path.

use std::borrow::Cow;

use jsonschema::json::{Array, Json, JsonNumber, Node, NodeIdentity, Object};
use jsonschema::JsonType;
use serde_json::{Number, Value};
use simd_json::{Node as TapeNode, StaticNode};

/// Objects wider than this go to the `serde_json::Value` path (repeated
/// keys are found by a linear scan here).
const MAX_MEMBERS: usize = 64;

/// Deepest nesting the fast path walks (as `serde_json`'s limit).
const MAX_DEPTH: usize = 128;

/// Check what walking the tape relies on, in one pass with no recursion:
/// nesting at most [`MAX_DEPTH`], objects at most [`MAX_MEMBERS`] wide with
/// string keys and no key twice, and finite numbers (as `serde_json`
/// reads them). Subtree counts are `simd-json`'s own invariant.
fn check(nodes: &[TapeNode<'_>]) -> Option<()> {
    // Where each open container ends: its length is the current depth.
    let mut ends: Vec<usize> = Vec::with_capacity(16);
    let mut keys: Vec<&str> = Vec::with_capacity(16);
    for (i, node) in nodes.iter().enumerate() {
        while ends.last().is_some_and(|&end| end <= i) {
            ends.pop();
        }
        if ends.len() > MAX_DEPTH {
            return None;
        }
        match *node {
            TapeNode::Static(StaticNode::F64(f)) if !f.is_finite() => return None,
            TapeNode::Array { count, .. } => ends.push(i + 1 + count),
            TapeNode::Object { len, count } => {
                if len > MAX_MEMBERS {
                    return None;
                }
                keys.clear();
                let mut at = i + 1;
                for _ in 0..len {
                    let TapeNode::String(key) = *nodes.get(at)? else {
                        return None;
                    };
                    if keys.contains(&key) {
                        return None;
                    }
                    keys.push(key);
                    at += 1 + span(nodes, at + 1);
                }
                ends.push(i + 1 + count);
            }
            _ => {}
        }
    }
    Some(())
}

/// Parse `body` with `simd-json` and hand its checked root to `f`; `None`
/// when the body is not JSON or is left to `serde_json`.
pub(crate) fn with_doc<T>(body: &[u8], f: impl FnOnce(Doc<'_>) -> T) -> Option<T> {
    // `simd-json` does not hold escaped surrogates to their pairing, reads
    // `-0` as the integer 0 where `serde_json` keeps a float, keeps no
    // number's text to tell whether its double says all of it, and reads
    // past control bytes that make the text no JSON at all.
    if super::ijson::has_control_byte(body)
        || super::ijson::has_surrogate_escape(body)
        || super::ijson::numbers_may_read_otherwise(body)
    {
        return None;
    }
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.try_borrow_mut().ok()?;
        let (input, buffers) = &mut *scratch;
        input.clear();
        input.extend_from_slice(body);
        let tape = simd_json::to_tape_with_buffers(input, buffers).ok()?;
        let nodes = tape.0.as_slice();
        check(nodes)?;
        (span(nodes, 0) == nodes.len()).then(|| f(Doc::At(nodes, 0)))
    })
}

thread_local! {
    /// The fast parser's input copy (it unescapes strings in place) and buffers.
    static SCRATCH: std::cell::RefCell<(Vec<u8>, simd_json::Buffers)> =
        std::cell::RefCell::new((Vec::new(), simd_json::Buffers::default()));
}

/// The `jsonschema` representation of a checked `simd-json` tape.
#[derive(Debug)]
pub struct Borrowed;

impl Json for Borrowed {
    type Node<'a> = Doc<'a>;
    type PreparedKey = String;
    type StringBuffer = ();
    /// A lookup here is a scan of the members, so one members pass always
    /// beats the lookups it replaces.
    const KEYS_PER_LOOKUP: usize = MAX_MEMBERS;
    /// A tape parsed from text is a tree.
    const ACYCLIC: bool = true;

    fn prepare_key(key: &str) -> String {
        key.to_owned()
    }

    fn with_string_node<T>(_: &mut (), string: &str, f: impl FnOnce(Doc<'_>) -> T) -> T {
        f(Doc::Str(string))
    }
}

/// A node: a value in a checked tape, or a lone string (a member name that
/// `propertyNames` validates).
#[derive(Debug, Clone, Copy)]
pub enum Doc<'a> {
    /// The value at this position of the tape.
    At(&'a [TapeNode<'a>], usize),
    /// A string outside the tape.
    Str(&'a str),
}

/// Positions the value at `at` takes up in the tape.
fn span(nodes: &[TapeNode<'_>], at: usize) -> usize {
    match nodes.get(at) {
        Some(TapeNode::Array { count, .. } | TapeNode::Object { count, .. }) => 1 + count,
        _ => 1,
    }
}

impl<'a> Doc<'a> {
    /// For an object (`object`) or an array: the tape, the position of its
    /// first member or element, and how many it has.
    fn children(&self, object: bool) -> Option<(&'a [TapeNode<'a>], usize, usize)> {
        let Doc::At(nodes, at) = *self else {
            return None;
        };
        match (nodes.get(at)?, object) {
            (TapeNode::Object { len, .. }, true) | (TapeNode::Array { len, .. }, false) => {
                Some((nodes, at + 1, *len))
            }
            _ => None,
        }
    }

    fn tape_node(&self) -> Option<TapeNode<'a>> {
        match *self {
            Doc::At(nodes, at) => nodes.get(at).copied(),
            Doc::Str(s) => Some(TapeNode::String(s)),
        }
    }
}

/// A number node.
#[derive(Debug)]
pub struct Num(Number);

impl JsonNumber for Num {
    fn as_u64(&self) -> Option<u64> {
        self.0.as_u64()
    }
    fn as_i64(&self) -> Option<i64> {
        self.0.as_i64()
    }
    fn as_f64(&self) -> Option<f64> {
        self.0.as_f64()
    }
    fn as_str(&self) -> Cow<'_, str> {
        Cow::Owned(self.0.to_string())
    }
    fn to_number(&self) -> Cow<'_, Number> {
        Cow::Borrowed(&self.0)
    }
}

/// The number a tape node holds, as `serde_json` would read it.
fn number(node: TapeNode<'_>) -> Option<Number> {
    match node {
        TapeNode::Static(StaticNode::I64(n)) => Some(n.into()),
        TapeNode::Static(StaticNode::U64(n)) => Some(n.into()),
        TapeNode::Static(StaticNode::F64(f)) => Number::from_f64(f),
        _ => None,
    }
}

impl<'a> Node<'a, Borrowed> for Doc<'a> {
    type Object = Members<'a>;
    type Array = Elements<'a>;
    type Number = Num;

    fn as_object(&self) -> Option<Members<'a>> {
        let (nodes, next, left) = self.children(true)?;
        Some(Members { nodes, next, left })
    }
    fn as_array(&self) -> Option<Elements<'a>> {
        let (nodes, next, left) = self.children(false)?;
        Some(Elements { nodes, next, left })
    }
    fn as_string(&self) -> Option<Cow<'a, str>> {
        match self.tape_node()? {
            TapeNode::String(s) => Some(Cow::Borrowed(s)),
            _ => None,
        }
    }
    fn as_number(&self) -> Option<Num> {
        number(self.tape_node()?).map(Num)
    }
    fn is_number(&self) -> bool {
        matches!(
            self.tape_node(),
            Some(TapeNode::Static(
                StaticNode::I64(_) | StaticNode::U64(_) | StaticNode::F64(_)
            ))
        )
    }
    fn as_boolean(&self) -> Option<bool> {
        match self.tape_node()? {
            TapeNode::Static(StaticNode::Bool(b)) => Some(b),
            _ => None,
        }
    }
    fn is_null(&self) -> bool {
        matches!(self.tape_node(), Some(TapeNode::Static(StaticNode::Null)))
    }
    fn json_type(&self) -> JsonType {
        match self.tape_node() {
            Some(TapeNode::Static(StaticNode::Null)) | None => JsonType::Null,
            Some(TapeNode::Static(StaticNode::Bool(_))) => JsonType::Boolean,
            Some(TapeNode::Static(_)) => JsonType::Number,
            Some(TapeNode::String(_)) => JsonType::String,
            Some(TapeNode::Array { .. }) => JsonType::Array,
            Some(TapeNode::Object { .. }) => JsonType::Object,
        }
    }
    fn to_value(&self) -> Cow<'a, Value> {
        Cow::Owned(to_value(*self))
    }
    fn identity(&self) -> Option<NodeIdentity> {
        Some(NodeIdentity::new(match *self {
            Doc::At(nodes, at) => std::ptr::from_ref(nodes.get(at)?) as usize,
            Doc::Str(s) => s.as_ptr() as usize,
        }))
    }
}

fn to_value(doc: Doc<'_>) -> Value {
    if let Some(members) = doc.as_object() {
        return Value::Object(
            members
                .members()
                .map(|(k, v)| (k.to_owned(), to_value(v)))
                .collect(),
        );
    }
    if let Some(items) = doc.as_array() {
        return Value::Array(items.elements().map(to_value).collect());
    }
    match doc.tape_node() {
        Some(TapeNode::String(s)) => Value::String(s.to_owned()),
        Some(TapeNode::Static(StaticNode::Bool(b))) => Value::Bool(b),
        Some(node) => number(node).map_or(Value::Null, Value::Number),
        None => Value::Null,
    }
}

/// An object node: its members, and the iterator over them.
#[derive(Debug, Clone)]
pub struct Members<'a> {
    nodes: &'a [TapeNode<'a>],
    /// Position of the next member's key.
    next: usize,
    /// Members not yet visited.
    left: usize,
}

impl<'a> Iterator for Members<'a> {
    type Item = (&'a str, Doc<'a>);
    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        let TapeNode::String(key) = *self.nodes.get(self.next)? else {
            return None;
        };
        let value = self.next + 1;
        self.next = value + span(self.nodes, value);
        self.left -= 1;
        Some((key, Doc::At(self.nodes, value)))
    }
}

impl<'a> Object<'a, Borrowed> for Members<'a> {
    type Node = Doc<'a>;
    type MemberName = &'a str;
    type MembersIter = Members<'a>;

    fn len(&self) -> usize {
        self.left
    }
    fn get(&self, key: &String) -> Option<Doc<'a>> {
        self.clone().find(|(k, _)| k == key).map(|(_, v)| v)
    }
    fn members(&self) -> Members<'a> {
        self.clone()
    }
}

/// An array node: its elements, and the iterator over them.
#[derive(Debug, Clone)]
pub struct Elements<'a> {
    nodes: &'a [TapeNode<'a>],
    /// Position of the next element.
    next: usize,
    /// Elements not yet visited.
    left: usize,
}

impl<'a> Iterator for Elements<'a> {
    type Item = Doc<'a>;
    fn next(&mut self) -> Option<Doc<'a>> {
        if self.left == 0 {
            return None;
        }
        let at = self.next;
        self.next = at + span(self.nodes, at);
        self.left -= 1;
        Some(Doc::At(self.nodes, at))
    }
}

impl<'a> Array<'a, Borrowed> for Elements<'a> {
    type Node = Doc<'a>;
    type ElementsIter = Elements<'a>;

    fn len(&self) -> usize {
        self.left
    }
    fn elements(&self) -> Elements<'a> {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::body_schema::BodySchema;
    use serde_json::json;

    fn both(schema: &Value) -> BodySchema {
        BodySchema::new(
            jsonschema::options()
                .should_validate_formats(true)
                .build(schema)
                .unwrap(),
            jsonschema::options_for::<Borrowed>()
                .should_validate_formats(true)
                .build(schema)
                .unwrap(),
            // These tests are of the tape walk alone.
            None,
        )
    }

    #[test]
    fn docs_read_as_serde_values() {
        let text = r#"{"a":[1,-2,3.5,true,null,"x\"y"],"b":{"c":"d"},"a2":"é","e":{},"f":[]}"#;
        let value: Value = serde_json::from_str(text).unwrap();
        let keys = with_doc(text.as_bytes(), |doc| {
            assert_eq!(to_value(doc), value);
            let members = doc.as_object().expect("an object");
            assert_eq!(members.len(), 5);
            assert_eq!(to_value(members.get(&"b".to_owned()).unwrap()), value["b"]);
            assert!(members.get(&"zz".to_owned()).is_none());
            members
                .members()
                .map(|(k, _)| k.to_owned())
                .collect::<Vec<_>>()
        });
        assert_eq!(keys.unwrap(), ["a", "b", "a2", "e", "f"]);
    }

    #[test]
    fn what_the_walk_cannot_read_goes_to_serde_json() {
        assert!(with_doc(b"{\"a\":1,}", |_| ()).is_none(), "malformed");
        assert!(with_doc(b"[1] x", |_| ()).is_none(), "trailing bytes");
        assert!(
            with_doc(br#"{"dup":1,"x":{"dup":2},"dup":"last"}"#, |_| ()).is_none(),
            "a repeated key (serde_json keeps the last value)"
        );
        assert!(
            with_doc(br#"{"a":{"k":1},"b":{"k":2}}"#, |_| ()).is_some(),
            "the same key in two objects is not a repeat"
        );
        let wide = format!(
            "{{{}}}",
            (0..65)
                .map(|i| format!("\"k{i}\":{i}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert!(with_doc(wide.as_bytes(), |_| ()).is_none(), "too wide");
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(with_doc(deep.as_bytes(), |_| ()).is_none(), "too deep");
    }

    #[test]
    fn the_tape_reads_the_same_values_as_serde_json() {
        let docs = [
            r#"{"a":[1,-2,3.5,true,null,"x\"y"],"b":{"c":"d"},"a2":"é"}"#,
            r#"[0.1,12.95,-0.0,123456789012345,-92233720368547,123456789.1234]"#,
            r#"{"nested":{"deeper":{"deepest":[[],{},[{"k":"\u00e9\n"}]]}},"after":[{"x":[1,[2,{"y":3}]]},4]}"#,
            r#""just a string""#,
            "42",
            "null",
            "[]",
        ];
        for doc in docs {
            let value: Value = serde_json::from_str(doc).unwrap();
            assert_eq!(with_doc(doc.as_bytes(), to_value), Some(value), "{doc}");
        }
        // Numbers whose text may say more than their double, `-0` and
        // escaped surrogates are left to the reference reading.
        for doc in [
            "[1e-7]",
            "[1.7976931348623157e308]",
            "[18446744073709551615]",
            "[123456789.123456789]",
            "[-0]",
            r#"["\ud83d\ude00"]"#,
        ] {
            assert!(with_doc(doc.as_bytes(), to_value).is_none(), "{doc}");
        }
    }

    #[test]
    fn the_fast_verdict_agrees_with_the_value_validator() {
        let schema = json!({
            "type": "object",
            "required": ["id", "email", "lines"],
            "additionalProperties": false,
            "properties": {
                "id": {"type": "integer", "minimum": 1},
                "email": {"type": "string", "format": "email"},
                "when": {"type": "string", "format": "date"},
                "ref": {"type": "string", "format": "uuid"},
                "tag": {"enum": ["a", "b"]},
                "price": {"type": "number", "exclusiveMinimum": 0, "multipleOf": 0.01},
                "lines": {
                    "type": "array", "minItems": 1, "uniqueItems": true,
                    "items": {
                        "type": "object", "required": ["sku"],
                        "properties": {"sku": {"type": "string", "pattern": "^SKU-[0-9]{5}$"}, "qty": {"type": "integer", "maximum": 100}}
                    }
                },
                "meta": {"type": "object", "propertyNames": {"maxLength": 3}, "maxProperties": 2}
            }
        });
        let s = both(&schema);
        let docs = [
            r#"{"id":1,"email":"a@b.example","lines":[{"sku":"SKU-00001"}]}"#,
            r#"{"id":0,"email":"a@b.example","lines":[{"sku":"SKU-00001"}]}"#,
            r#"{"id":1,"email":"not an email","lines":[{"sku":"SKU-00001"}]}"#,
            r#"{"id":1,"email":"a@b.example","lines":[]}"#,
            r#"{"id":1,"email":"a@b.example","lines":[{"sku":"SKU-1"}]}"#,
            r#"{"id":1,"email":"a@b.example","lines":[{"sku":"SKU-00001"},{"sku":"SKU-00001"}]}"#,
            r#"{"id":1,"email":"a@b.example","lines":[{"sku":"SKU-00001","qty":101}]}"#,
            r#"{"id":1,"email":"a@b.example","lines":[{"sku":"SKU-00001"}],"extra":1}"#,
            r#"{"id":1,"email":"a@b.example","lines":[{"sku":"SKU-00001"}],"when":"2026-02-30"}"#,
            r#"{"id":1,"email":"a@b.example","lines":[{"sku":"SKU-00001"}],"when":"2026-02-28"}"#,
            r#"{"id":1,"email":"a@b.example","lines":[{"sku":"SKU-00001"}],"ref":"nope"}"#,
            r#"{"id":1,"email":"a@b.example","lines":[{"sku":"SKU-00001"}],"tag":"c"}"#,
            r#"{"id":1,"email":"a@b.example","lines":[{"sku":"SKU-00001"}],"tag":"a"}"#,
            r#"{"id":1,"email":"a@b.example","lines":[{"sku":"SKU-00001"}],"price":0.015}"#,
            r#"{"id":1,"email":"a@b.example","lines":[{"sku":"SKU-00001"}],"price":10.95}"#,
            r#"{"id":1,"email":"a@b.example","lines":[{"sku":"SKU-00001"}],"meta":{"abcd":1}}"#,
            r#"{"id":1,"email":"a@b.example","lines":[{"sku":"SKU-00001"}],"meta":{"a":1,"b":2,"c":3}}"#,
            r#"{"id":1,"email":"a@b.example","lines":[{"sku":"SKU-00001"}],"id":"dup"}"#,
            r#"{"id":"1","email":"a@b.example","lines":[{"sku":"SKU-00001"}]}"#,
            r#"{"id":1.0,"email":"a@b.example","lines":[{"sku":"SKU-00001"}]}"#,
            r#"{"id":1,"email":"a\u0040b.example","lines":[{"sku":"SKU-0000\u0031"}]}"#,
            r#"[]"#,
            r#"null"#,
        ];
        for doc in docs {
            let value: Value = serde_json::from_str(doc).unwrap();
            let slow = s.value.is_valid(&value);
            assert_eq!(s.accepts(doc.as_bytes()) == Some(true), slow, "{doc}");
        }
        assert_eq!(s.accepts(b"{not json"), None);
    }

    fn json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            (-1e6f64..1e6).prop_map(Value::from),
            prop_oneof![
                Just("a@b.example".to_owned()),
                Just("SKU-00001".to_owned()),
                "[a-z@. \\\\\"é-]{0,8}"
            ]
            .prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("id".to_owned()),
                        Just("email".to_owned()),
                        Just("lines".to_owned()),
                        Just("sku".to_owned()),
                        Just("meta".to_owned()),
                        "[a-z]{1,4}"
                    ],
                    inner,
                    0..6
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    use proptest::strategy::Strategy as _;

    proptest::proptest! {
        /// The tape walk reads any document as `serde_json` does, and its
        /// verdict never differs from the `Value` validator's.
        #[test]
        fn the_fast_path_agrees_on_any_document(
            any_doc in json(),
            id in proptest::prop_oneof![proptest::prelude::any::<i64>().prop_map(Value::from), json()],
            rest in proptest::collection::vec((proptest::sample::select(vec!["email", "lines", "meta", "sku", "x"]), json()), 0..4),
            shaped in proptest::prelude::any::<bool>(),
        ) {
            // Half the documents are shaped like the schema, so both verdicts occur.
            let doc = if shaped {
                let mut object = serde_json::Map::new();
                object.insert("id".to_owned(), id);
                for (k, v) in rest {
                    object.insert(k.to_owned(), v);
                }
                Value::Object(object)
            } else {
                any_doc
            };
            let s = both(&json!({
                "type": "object",
                "required": ["id"],
                "additionalProperties": false,
                "properties": {
                    "id": {"type": "integer"},
                    "email": {"type": "string", "format": "email"},
                    "lines": {"type": "array", "uniqueItems": true, "items": {"type": "object", "properties": {"sku": {"pattern": "^SKU-"}}}},
                    "meta": {"propertyNames": {"maxLength": 2}, "not": {"required": ["sku"]}},
                    "sku": {"enum": ["SKU-00001", 1, null]}
                }
            }));
            let text = serde_json::to_vec(&doc).unwrap();
            // What the tape reads (it leaves some numbers to the reference)
            // is what `serde_json` reads, and its verdict is the validator's.
            let read = with_doc(&text, to_value);
            if let Some(v) = &read {
                proptest::prop_assert_eq!(v, &doc);
            }
            let fast = s.accepts(&text) == Some(true);
            if read.is_some() || fast {
                proptest::prop_assert_eq!(fast, s.value.is_valid(&doc));
            }
        }
    }
}

#[cfg(test)]
mod fuzz_findings {
    use super::*;

    /// Found by the `json_body` fuzz target: `simd-json` read a number
    /// followed by NUL bytes and a control byte as if they were not there.
    #[test]
    fn control_bytes_outside_strings_are_left_to_the_reference() {
        let body = b"{\"item\":\"a\",\"qty\":100.00\0\0\0\0\0\0\0\x1c00000004000001}";
        assert!(serde_json::from_slice::<Value>(body).is_err());
        assert!(with_doc(body, to_value_probe).is_none(), "the tape read it");
    }

    fn to_value_probe(_: Doc<'_>) {}
}
