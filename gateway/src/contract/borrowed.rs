//! A borrowed JSON tree for the yes/no body check.
//!
//! Parsing a request body into a `serde_json::Value` allocates a `String`
//! per key and per string and a `BTreeMap` node per member; it was the
//! largest cost of a validated request. [`Tree`] is built from a
//! `simd-json` tape of the body (strings borrowed, members in a `Vec`), and
//! `jsonschema` validates it through its custom-representation traits. A
//! body that fails is judged again over a `serde_json::Value`, which gives
//! the error pointers and messages, so the fast path only ever says "valid".

use std::borrow::Cow;
use std::fmt;

use jsonschema::json::{Array, Json, JsonNumber, Node, NodeIdentity, Object};
use jsonschema::{JsonType, Validator};
use serde_json::{Number, Value};

/// Objects wider than this go to the `serde_json::Value` path (duplicate
/// keys are found by a linear scan here).
const MAX_MEMBERS: usize = 64;

/// A JSON value borrowing its strings from the document.
#[derive(Debug, Default, Clone, PartialEq)]
pub enum Tree<'a> {
    /// `null`.
    #[default]
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// A number.
    Number(Number),
    /// A string.
    String(Cow<'a, str>),
    /// An array.
    Array(Vec<Tree<'a>>),
    /// An object; a repeated key keeps its last value, as `serde_json` does.
    Object(Vec<(Cow<'a, str>, Tree<'a>)>),
}

/// Deepest nesting the fast path builds (as `serde_json`'s limit).
const MAX_DEPTH: usize = 128;

/// Build a [`Tree`] from a `simd-json` tape (strings borrowed from the
/// tape's buffer); `None` for what this path leaves to `serde_json`: too
/// deep, too wide, or numbers `serde_json` would read differently.
fn from_tape<'a>(nodes: &[simd_json::Node<'a>], at: &mut usize, depth: usize) -> Option<Tree<'a>> {
    use simd_json::{Node as TapeNode, StaticNode};
    if depth > MAX_DEPTH {
        return None;
    }
    let node = *nodes.get(*at)?;
    *at += 1;
    Some(match node {
        TapeNode::String(s) => Tree::String(Cow::Borrowed(s)),
        TapeNode::Static(StaticNode::Null) => Tree::Null,
        TapeNode::Static(StaticNode::Bool(b)) => Tree::Bool(b),
        TapeNode::Static(StaticNode::I64(n)) => Tree::Number(n.into()),
        TapeNode::Static(StaticNode::U64(n)) => Tree::Number(n.into()),
        TapeNode::Static(StaticNode::F64(f)) => Tree::Number(Number::from_f64(f)?),
        TapeNode::Array { len, .. } => {
            let mut items = Vec::with_capacity(len);
            for _ in 0..len {
                items.push(from_tape(nodes, at, depth + 1)?);
            }
            Tree::Array(items)
        }
        TapeNode::Object { len, .. } => {
            if len > MAX_MEMBERS {
                return None;
            }
            let mut members: Vec<(Cow<'a, str>, Tree<'a>)> = Vec::with_capacity(len);
            for _ in 0..len {
                let TapeNode::String(key) = *nodes.get(*at)? else {
                    return None;
                };
                *at += 1;
                let value = from_tape(nodes, at, depth + 1)?;
                match members.iter_mut().find(|(k, _)| k == key) {
                    Some(slot) => slot.1 = value,
                    None => members.push((Cow::Borrowed(key), value)),
                }
            }
            Tree::Object(members)
        }
    })
}

/// Parse `body` with `simd-json` into a [`Tree`] and hand it to `f`;
/// `None` when the body is not JSON or is left to `serde_json`.
fn with_tree<T>(body: &[u8], f: impl FnOnce(&Tree<'_>) -> T) -> Option<T> {
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.try_borrow_mut().ok()?;
        let (input, buffers) = &mut *scratch;
        input.clear();
        input.extend_from_slice(body);
        let tape = simd_json::to_tape_with_buffers(input, buffers).ok()?;
        let mut at = 0;
        let tree = from_tape(&tape.0, &mut at, 0)?;
        (at == tape.0.len()).then(|| f(&tree))
    })
}

thread_local! {
    /// The fast parser's input copy (it unescapes strings in place) and buffers.
    static SCRATCH: std::cell::RefCell<(Vec<u8>, simd_json::Buffers)> =
        std::cell::RefCell::new((Vec::new(), simd_json::Buffers::default()));
}

/// The `jsonschema` representation of [`Tree`].
#[derive(Debug)]
pub struct Borrowed;

/// A compiled body schema: the validator over `serde_json::Value` (used for
/// error details) and the same schema over [`Tree`] (the fast yes/no).
pub struct BodySchema {
    /// Over `serde_json::Value`.
    pub value: Validator,
    fast: Validator<Borrowed>,
}

impl fmt::Debug for BodySchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BodySchema").finish_non_exhaustive()
    }
}

impl BodySchema {
    /// Both validators of one schema.
    pub fn new(value: Validator, fast: Validator<Borrowed>) -> Self {
        Self { value, fast }
    }

    /// `Some(true)` when `body` parses and is valid; `None` when the fast
    /// path cannot say (malformed, too wide, or invalid — the caller then
    /// finds out which over a `serde_json::Value`).
    pub fn accepts(&self, body: &[u8]) -> Option<bool> {
        with_tree(body, |tree| self.fast.is_valid(tree))?.then_some(true)
    }
}

impl Json for Borrowed {
    type Node<'a> = &'a Tree<'a>;
    type PreparedKey = String;
    type StringBuffer = Tree<'static>;

    fn prepare_key(key: &str) -> String {
        key.to_owned()
    }

    fn with_string_node<T>(
        buffer: &mut Tree<'static>,
        string: &str,
        f: impl FnOnce(Self::Node<'_>) -> T,
    ) -> T {
        *buffer = Tree::String(Cow::Owned(string.to_owned()));
        f(buffer)
    }
}

/// A number node.
#[derive(Debug)]
pub struct Num<'a>(&'a Number);

impl JsonNumber for Num<'_> {
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
        Cow::Borrowed(self.0)
    }
}

impl<'a> Node<'a, Borrowed> for &'a Tree<'a> {
    type Object = &'a [(Cow<'a, str>, Tree<'a>)];
    type Array = &'a [Tree<'a>];
    type Number = Num<'a>;

    fn as_object(&self) -> Option<Self::Object> {
        match self {
            Tree::Object(members) => Some(members),
            _ => None,
        }
    }
    fn as_array(&self) -> Option<Self::Array> {
        match self {
            Tree::Array(items) => Some(items),
            _ => None,
        }
    }
    fn as_string(&self) -> Option<Cow<'a, str>> {
        match self {
            Tree::String(s) => Some(Cow::Borrowed(s.as_ref())),
            _ => None,
        }
    }
    fn as_number(&self) -> Option<Num<'a>> {
        match self {
            Tree::Number(n) => Some(Num(n)),
            _ => None,
        }
    }
    fn as_boolean(&self) -> Option<bool> {
        match self {
            Tree::Bool(b) => Some(*b),
            _ => None,
        }
    }
    fn is_null(&self) -> bool {
        matches!(self, Tree::Null)
    }
    fn json_type(&self) -> JsonType {
        match self {
            Tree::Null => JsonType::Null,
            Tree::Bool(_) => JsonType::Boolean,
            Tree::Number(_) => JsonType::Number,
            Tree::String(_) => JsonType::String,
            Tree::Array(_) => JsonType::Array,
            Tree::Object(_) => JsonType::Object,
        }
    }
    fn to_value(&self) -> Cow<'a, Value> {
        Cow::Owned(to_value(self))
    }
    fn identity(&self) -> Option<NodeIdentity> {
        Some(NodeIdentity::new(
            std::ptr::from_ref::<Tree<'a>>(*self) as usize
        ))
    }
}

fn to_value(tree: &Tree<'_>) -> Value {
    match tree {
        Tree::Null => Value::Null,
        Tree::Bool(b) => Value::Bool(*b),
        Tree::Number(n) => Value::Number(n.clone()),
        Tree::String(s) => Value::String(s.to_string()),
        Tree::Array(items) => Value::Array(items.iter().map(to_value).collect()),
        Tree::Object(members) => Value::Object(
            members
                .iter()
                .map(|(k, v)| (k.to_string(), to_value(v)))
                .collect(),
        ),
    }
}

impl<'a> Object<'a, Borrowed> for &'a [(Cow<'a, str>, Tree<'a>)] {
    type Node = &'a Tree<'a>;
    type MemberName = &'a str;
    type MembersIter = Members<'a>;

    fn len(&self) -> usize {
        <[(Cow<'a, str>, Tree<'a>)]>::len(self)
    }
    fn get(&self, key: &String) -> Option<&'a Tree<'a>> {
        self.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
    fn members(&self) -> Members<'a> {
        Members(self.iter())
    }
}

/// The members of an object node.
#[derive(Debug)]
pub struct Members<'a>(std::slice::Iter<'a, (Cow<'a, str>, Tree<'a>)>);

impl<'a> Iterator for Members<'a> {
    type Item = (&'a str, &'a Tree<'a>);
    fn next(&mut self) -> Option<Self::Item> {
        self.0.next().map(|(k, v)| (k.as_ref(), v))
    }
}

impl<'a> Array<'a, Borrowed> for &'a [Tree<'a>] {
    type Node = &'a Tree<'a>;
    type ElementsIter = std::slice::Iter<'a, Tree<'a>>;

    fn len(&self) -> usize {
        <[Tree<'a>]>::len(self)
    }
    fn elements(&self) -> std::slice::Iter<'a, Tree<'a>> {
        self.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        )
    }

    #[test]
    fn trees_match_serde_values() {
        let text =
            r#"{"a":[1,-2,3.5,true,null,"x\"y"],"b":{"c":"d"},"a2":"é","dup":1,"dup":"last"}"#;
        let value: Value = serde_json::from_str(text).unwrap();
        let borrowed_key = with_tree(text.as_bytes(), |tree| {
            assert_eq!(to_value(tree), value);
            let Tree::Object(members) = tree else {
                panic!("an object")
            };
            matches!(&members[0].0, Cow::Borrowed("a"))
        });
        assert_eq!(
            borrowed_key,
            Some(true),
            "keys without escapes are borrowed"
        );
        assert!(with_tree(b"{\"a\":1,}", |_| ()).is_none());
        assert!(with_tree(b"[1] x", |_| ()).is_none());
        let wide = format!(
            "{{{}}}",
            (0..65)
                .map(|i| format!("\"k{i}\":{i}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert!(with_tree(wide.as_bytes(), |_| ()).is_none());
    }

    #[test]
    fn the_simd_tape_builds_the_same_values_as_serde_json() {
        let docs = [
            r#"{"a":[1,-2,3.5,true,null,"x\"y"],"b":{"c":"d"},"a2":"é","dup":1,"dup":"last"}"#,
            r#"[0.1,1e-7,12.95,1.7976931348623157e308,-0.0,5e-324,18446744073709551615,-9223372036854775808,123456789.123456789]"#,
            r#"{"nested":{"deeper":{"deepest":[[],{},[{"k":"\u00e9\n"}]]}}}"#,
            r#""just a string""#,
            "42",
        ];
        let mut buffers = simd_json::Buffers::default();
        for doc in docs {
            let mut input = doc.as_bytes().to_vec();
            let tape = simd_json::to_tape_with_buffers(&mut input, &mut buffers).unwrap();
            let mut at = 0;
            let tree = from_tape(&tape.0, &mut at, 0).unwrap();
            assert_eq!(at, tape.0.len(), "{doc}");
            let value: Value = serde_json::from_str(doc).unwrap();
            assert_eq!(to_value(&tree), value, "{doc}");
        }
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let mut input = deep.into_bytes();
        let tape = simd_json::to_tape_with_buffers(&mut input, &mut buffers).unwrap();
        assert!(
            from_tape(&tape.0, &mut 0, 0).is_none(),
            "too deep for the fast path"
        );
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
}
