//! Schema documents → a [`SinglePass`] program's nodes.

use std::collections::{BTreeMap, HashMap};

use jsonschema::Validator;
use serde_json::{Map, Value};

use super::{types, Node, NodeId, Num, Pattern, Property, Scalar, Words, MAX_PROPERTIES};
use crate::contract::tape::Borrowed;

/// Keywords that only annotate: no effect on a verdict.
const ANNOTATIONS: [&str; 14] = [
    "title",
    "description",
    "default",
    "example",
    "examples",
    "deprecated",
    "readOnly",
    "writeOnly",
    "xml",
    "externalDocs",
    "discriminator",
    "$comment",
    "$defs",
    "definitions",
];

pub(super) struct Compiler<'d, 'l> {
    pub(super) documents: &'d BTreeMap<String, std::sync::Arc<Value>>,
    pub(super) leaf: &'l dyn Fn(&Value) -> Option<Validator<Borrowed>>,
    pub(super) nodes: Vec<Node>,
    /// Compiled schemas by document and pointer (for `$ref` cycles).
    pub(super) ids: HashMap<(String, String), NodeId>,
}

fn is_annotation(key: &str) -> bool {
    key.starts_with("x-") || ANNOTATIONS.contains(&key)
}

/// The target of a `$ref` found in `doc`: document and pointer.
fn target(doc: &str, reference: &str) -> Option<(String, String)> {
    let (file, fragment) = reference.split_once('#').unwrap_or((reference, ""));
    if !(fragment.is_empty() || fragment.starts_with('/')) || fragment.contains('%') {
        return None;
    }
    let doc = if file.is_empty() {
        doc.to_owned()
    } else {
        crate::contract::documents::join(doc, file).ok()?
    };
    Some((doc, fragment.to_owned()))
}

impl<'d> Compiler<'d, '_> {
    fn value(&self, doc: &str, pointer: &str) -> Option<&'d Value> {
        self.documents.get(doc)?.pointer(pointer)
    }

    /// The node of the schema at `doc#pointer`, compiling it once.
    pub(super) fn schema(&mut self, doc: &str, pointer: &str) -> Option<NodeId> {
        let (mut doc, mut pointer) = (doc.to_owned(), pointer.to_owned());
        // A schema that is only a `$ref` is its target.
        for hop in 0.. {
            if hop == 16 {
                return None;
            }
            let value = self.value(&doc, &pointer)?;
            let Some(map) = value.as_object() else {
                break;
            };
            let Some(reference) = map.get("$ref") else {
                break;
            };
            if map.keys().any(|k| k != "$ref" && !is_annotation(k)) {
                break;
            }
            (doc, pointer) = target(&doc, reference.as_str()?)?;
        }
        let key = (doc, pointer);
        if let Some(&id) = self.ids.get(&key) {
            return Some(id);
        }
        let id = NodeId::try_from(self.nodes.len()).ok()?;
        self.nodes.push(Node::default());
        self.ids.insert(key.clone(), id);
        let node = self.build(&key.0, &key.1)?;
        *self.nodes.get_mut(id as usize)? = node;
        Some(id)
    }

    fn child(&mut self, doc: &str, pointer: &str, path: &[&str]) -> Option<NodeId> {
        let mut p = pointer.to_owned();
        for seg in path {
            p.push('/');
            p.push_str(&seg.replace('~', "~0").replace('/', "~1"));
        }
        self.schema(doc, &p)
    }

    fn build(&mut self, doc: &str, pointer: &str) -> Option<Node> {
        let mut node = Node::default();
        let map = match self.value(doc, pointer)? {
            Value::Bool(true) => return Some(node.settle()),
            Value::Bool(false) => {
                node.types = 0;
                return Some(node.settle());
            }
            Value::Object(map) => map,
            _ => return None,
        };
        let mut leaf = Map::new();
        let mut required: Vec<&str> = Vec::new();
        for (key, v) in map {
            let count = || v.as_u64();
            let number = || v.as_number().and_then(Num::from_json);
            match key.as_str() {
                "type" => node.types = type_bits(v)?,
                "enum" => node.enums.push(
                    v.as_array()?
                        .iter()
                        .map(Scalar::from_json)
                        .collect::<Option<_>>()?,
                ),
                "const" => node.enums.push(Box::new([Scalar::from_json(v)?])),
                "minimum" => node.minimum = Some(number()?),
                "maximum" => node.maximum = Some(number()?),
                "exclusiveMinimum" => node.exclusive_minimum = Some(number()?),
                "exclusiveMaximum" => node.exclusive_maximum = Some(number()?),
                "minLength" => node.min_length = Some(count()?),
                "maxLength" => node.max_length = Some(count()?),
                "minItems" => node.min_items = Some(count()?),
                "maxItems" => node.max_items = Some(count()?),
                "minProperties" => node.min_properties = Some(count()?),
                "maxProperties" => node.max_properties = Some(count()?),
                "pattern" => match v.as_str().and_then(Pattern::compile) {
                    Some(pattern) => node.pattern = Some(pattern),
                    None => {
                        leaf.insert(key.clone(), v.clone());
                    }
                },
                "format" | "multipleOf" => {
                    leaf.insert(key.clone(), v.clone());
                }
                "items" => node.items = Some(self.child(doc, pointer, &["items"])?),
                "additionalProperties" => {
                    node.additional = Some(self.child(doc, pointer, &["additionalProperties"])?);
                }
                "not" => node.not = Some(self.child(doc, pointer, &["not"])?),
                "properties" => {
                    for name in v.as_object()?.keys() {
                        let schema = self.child(doc, pointer, &["properties", name])?;
                        node.properties.push(Property::new(name, Some(schema)));
                    }
                }
                "required" => {
                    for name in v.as_array()? {
                        required.push(name.as_str()?);
                    }
                }
                "allOf" | "anyOf" | "oneOf" => {
                    let mut ids = Vec::new();
                    for i in 0..v.as_array()?.len() {
                        ids.push(self.child(doc, pointer, &[key, &i.to_string()])?);
                    }
                    match key.as_str() {
                        "allOf" => node.all_of.extend(ids),
                        "anyOf" => node.any_of = ids,
                        _ => node.one_of = ids,
                    }
                }
                "$ref" => {
                    let (d, p) = target(doc, v.as_str()?)?;
                    node.all_of.push(self.schema(&d, &p)?);
                }
                k if is_annotation(k) => {}
                _ => return None,
            }
        }
        for name in required {
            let at = match node.properties.iter().position(|p| *p.name == *name) {
                Some(at) => at,
                None => {
                    node.properties.push(Property::new(name, None));
                    node.properties.len() - 1
                }
            };
            node.required |= 1u64.checked_shl(u32::try_from(at).ok()?)?;
        }
        if node.properties.len() > MAX_PROPERTIES {
            return None;
        }
        if !leaf.is_empty() {
            node.leaf = Some((self.leaf)(&Value::Object(leaf))?);
        }
        Some(node.settle())
    }
}

/// `type`'s bits.
fn type_bits(v: &Value) -> Option<u8> {
    let one = |t: &Value| -> Option<u8> {
        Some(match t.as_str()? {
            "null" => types::NULL,
            "boolean" => types::BOOL,
            "integer" => types::INT,
            "number" => types::INT | types::FRAC,
            "string" => types::STR,
            "array" => types::ARR,
            "object" => types::OBJ,
            _ => return None,
        })
    };
    match v {
        Value::Array(ts) => ts.iter().try_fold(0, |bits, t| Some(bits | one(t)?)),
        t => one(t),
    }
}

impl Property {
    fn new(name: &str, schema: Option<NodeId>) -> Self {
        Self {
            name: name.into(),
            schema,
            // Written as is in JSON when the parser's plain run spans it.
            quoted: (super::scan::plain_run(name.as_bytes()) == name.len())
                .then(|| Words::new(format!("{name}\"").as_bytes())),
        }
    }
}
