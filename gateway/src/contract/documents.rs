//! The documents of a bundle that policy files refer to (`contracts/`,
//! `schemas/`), parsed once, with `$ref` resolution over them.
//!
//! A [`Document`] is immutable once parsed, so compiles share it: a bundle
//! holds its documents by `Arc`, and so do the retrievers its validators
//! are built with (one per OpenAPI dialect, made once per bundle), so the
//! cost of a contract does not depend on how many others the bundle has.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::source::{PolicyError, SourceFile};

/// URI scheme + authority under which bundle documents are addressed.
pub const BASE_URI: &str = "gatehouse://bundle/";

/// One parsed document: its value, its OpenAPI 3.0 form (made on first
/// need, for contracts), the documents its `$ref`s name, and the digest
/// of its text.
#[derive(Debug)]
pub struct Document {
    value: Arc<Value>,
    contract: bool,
    converted: OnceLock<Arc<Value>>,
    canonical: OnceLock<Box<[u8]>>,
    refs: Vec<String>,
    rebases: bool,
    digest: [u8; 32],
}

impl Document {
    /// Parse the document at `path` (YAML or JSON by extension).
    pub fn parse(path: &str, text: &str) -> Result<Self, PolicyError> {
        let value = parse_text(path, text)?;
        Ok(Self::with_digest(path, value, Sha256::digest(text).into()))
    }

    /// The document at `path` whose text has `digest` (its SHA-256).
    pub fn with_digest(path: &str, value: Value, digest: [u8; 32]) -> Self {
        let mut refs = BTreeSet::new();
        let mut rebases = false;
        named_documents(path, &value, &mut refs, &mut rebases);
        Self {
            value: Arc::new(value),
            contract: path.starts_with("contracts/"),
            converted: OnceLock::new(),
            canonical: OnceLock::new(),
            refs: refs.into_iter().collect(),
            rebases,
            digest,
        }
    }

    /// The parsed value.
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// The value as validators read it: a contract in the OpenAPI 3.0
    /// dialect converted (`convert_30`), anything else as it is.
    fn for_validators(&self, convert_30: bool) -> Arc<Value> {
        if !(convert_30 && self.contract) {
            return Arc::clone(&self.value);
        }
        Arc::clone(self.converted.get_or_init(|| {
            let mut v = (*self.value).clone();
            super::dialect::convert_30(&mut v);
            Arc::new(v)
        }))
    }

    /// Its canonical JSON ([`canonical_json`]), made once.
    pub fn canonical(&self) -> &[u8] {
        self.canonical
            .get_or_init(|| canonical_json(&self.value).into_boxed_slice())
    }

    /// The bundle paths its `$ref`s name (other documents), sorted: every
    /// reading of each (relative to the document, from the bundle's root,
    /// as a `gatehouse://bundle/` URI), so none a validator may load is
    /// missed.
    pub fn refs(&self) -> &[String] {
        &self.refs
    }

    /// Does it set a base (`$id`) or use dynamic references? Then which
    /// documents its references load is not read off its `$ref`s alone.
    pub fn rebases(&self) -> bool {
        self.rebases
    }

    /// SHA-256 of its text.
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }
}

/// Collect the documents the references in `value` (found in the
/// document at `path`) may name, and note whether it rebases (`$id`,
/// dynamic references).
fn named_documents(path: &str, value: &Value, out: &mut BTreeSet<String>, rebases: &mut bool) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("$ref", Value::String(r)) => readings(path, r, out),
                    ("$id" | "$dynamicRef" | "$dynamicAnchor" | "$recursiveRef", _) => {
                        *rebases = true;
                    }
                    _ => named_documents(path, v, out, rebases),
                }
            }
        }
        Value::Array(items) => {
            for v in items {
                named_documents(path, v, out, rebases);
            }
        }
        _ => {}
    }
}

/// Every bundle path the file part of `reference` (in the document at
/// `path`) may name: relative to the document, from the bundle's root
/// (`/…`, or `..` past it, as a URI resolves them), or a
/// `gatehouse://bundle/` URI.
fn readings(path: &str, reference: &str, out: &mut BTreeSet<String>) {
    let file = reference.split('#').next().unwrap_or("");
    if file.is_empty() {
        return;
    }
    if let Some(rest) = file.strip_prefix(BASE_URI) {
        out.insert(normalise(rest));
        return;
    }
    if file.contains("://") {
        return;
    }
    if let Some(rooted) = file.strip_prefix('/') {
        out.insert(normalise(rooted));
        return;
    }
    match join(path, file) {
        Ok(target) => {
            out.insert(target);
        }
        Err(_) => {
            // `..` past the bundle's root: a URI stays at the root.
            let base = path.rsplit_once('/').map_or("", |(dir, _)| dir);
            out.insert(normalise(&format!("{base}/{file}")));
        }
    }
}

/// A bundle path with `.` and `..` resolved, `..` stopping at the root.
fn normalise(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    parts.join("/")
}

/// Parsed documents, by bundle-relative path.
#[derive(Debug, Default, Clone)]
pub struct BundleDocuments {
    docs: BTreeMap<String, Arc<Document>>,
    /// The retrievers, for 3.1 and for 3.0 documents, made on first need.
    retrievers: Arc<[OnceLock<BundleRetriever>; 2]>,
    /// Validators compiled while the bundle compiles, per dialect.
    compiled: Arc<[Compiled; 2]>,
}

/// Validators compiled from a bundle's documents, by the place of their
/// schema (document, JSON pointer): a schema many operations or apps
/// refer to (a shared error response) is compiled once.
#[derive(Debug, Default)]
pub struct Compiled {
    /// Plain validators.
    pub validators:
        std::sync::Mutex<std::collections::HashMap<(String, String), Arc<jsonschema::Validator>>>,
    /// Body schemas.
    pub bodies: std::sync::Mutex<
        std::collections::HashMap<(String, String), Arc<super::body_schema::BodySchema>>,
    >,
}

impl BundleDocuments {
    /// Parse every document; parse errors are returned, not fatal.
    pub fn parse(files: &[&SourceFile], errors: &mut Vec<PolicyError>) -> Self {
        let mut docs = BTreeMap::new();
        for f in files {
            match Document::parse(&f.path, &f.text) {
                Ok(d) => {
                    docs.insert(f.path.clone(), Arc::new(d));
                }
                Err(e) => errors.push(e),
            }
        }
        Self::of(docs)
    }

    /// These documents, by bundle-relative path.
    pub fn of(docs: BTreeMap<String, Arc<Document>>) -> Self {
        Self {
            docs,
            retrievers: Arc::default(),
            compiled: Arc::default(),
        }
    }

    /// The validators compiled from these documents so far, for the
    /// dialect (`convert_30`).
    pub fn compiled(&self, convert_30: bool) -> &Compiled {
        &self.compiled[usize::from(convert_30)]
    }

    /// The bundle is compiled: the validators are its apps' now.
    pub fn compiled_all(&self) {
        for c in self.compiled.iter() {
            lock(&c.validators).clear();
            lock(&c.bodies).clear();
        }
    }

    /// A document by bundle-relative path.
    pub fn get(&self, path: &str) -> Option<&Value> {
        self.docs.get(path).map(|d| d.value())
    }

    /// A parsed document by bundle-relative path.
    pub fn document(&self, path: &str) -> Option<&Arc<Document>> {
        self.docs.get(path)
    }

    /// Every document, by path.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.docs.iter().map(|(k, d)| (k.as_str(), d.value()))
    }

    /// The documents `roots` name and every document they refer to,
    /// directly or not (those in the bundle), sorted by path.
    pub fn closure<'a>(&'a self, roots: impl Iterator<Item = &'a str>) -> BTreeSet<&'a str> {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<&str> = roots.collect();
        while let Some(path) = todo.pop() {
            let Some((path, doc)) = self.docs.get_key_value(path) else {
                continue;
            };
            if seen.insert(path.as_str()) {
                todo.extend(doc.refs().iter().map(String::as_str));
            }
        }
        seen
    }

    /// All documents, for the retriever; `convert_30` gives contracts in
    /// the 3.0 dialect converted. Made once per bundle and dialect.
    pub fn retriever(&self, convert_30: bool) -> BundleRetriever {
        self.retrievers[usize::from(convert_30)]
            .get_or_init(|| BundleRetriever {
                docs: Arc::new(
                    self.docs
                        .iter()
                        .map(|(k, d)| (k.clone(), d.for_validators(convert_30)))
                        .collect(),
                ),
            })
            .clone()
    }

    /// Follow `$ref` from `value` (found in `doc`) to the object it names.
    /// Returns the document and JSON pointer of the target and the target.
    pub fn resolve<'a>(
        &'a self,
        doc: &str,
        pointer: &str,
        value: &'a Value,
    ) -> Result<(String, String, &'a Value), String> {
        let (mut doc, mut pointer, mut value) = (doc.to_string(), pointer.to_string(), value);
        for _ in 0..16 {
            let Some(r) = value.get("$ref").and_then(Value::as_str) else {
                return Ok((doc, pointer, value));
            };
            let (file, frag) = r.split_once('#').unwrap_or((r, ""));
            let target_doc = if file.is_empty() {
                doc.clone()
            } else {
                join(&doc, file)?
            };
            let root = self.get(&target_doc).ok_or_else(|| {
                format!("`$ref: {r}` names `{target_doc}`, which is not in the bundle")
            })?;
            let target = root
                .pointer(frag)
                .ok_or_else(|| format!("`$ref: {r}`: `{frag}` does not exist in `{target_doc}`"))?;
            doc = target_doc;
            pointer = frag.to_string();
            value = target;
        }
        Err(format!(
            "`$ref` chain from {doc}#{pointer} is too long or circular"
        ))
    }
}

/// JSON with object keys sorted, whatever the map type in use: what a
/// policy version is the digest of.
pub fn canonical_json(v: &Value) -> Vec<u8> {
    fn write(v: &Value, out: &mut Vec<u8>) {
        match v {
            Value::Object(map) => {
                let mut keys: Vec<_> = map.keys().collect();
                keys.sort();
                out.push(b'{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    // Writing a string or a number into a Vec cannot fail.
                    let _ = serde_json::to_writer(&mut *out, k);
                    out.push(b':');
                    write(&map[k], out);
                }
                out.push(b'}');
            }
            Value::Array(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write(item, out);
                }
                out.push(b']');
            }
            other => {
                let _ = serde_json::to_writer(&mut *out, other);
            }
        }
    }
    let mut out = Vec::new();
    write(v, &mut out);
    out
}

/// A JSON syntax error in the file at `path`, with its place.
pub fn json_error(path: &str, e: &serde_json::Error) -> PolicyError {
    PolicyError::new(
        path,
        "",
        format!(
            "invalid JSON at line {} column {}: {e}",
            e.line(),
            e.column()
        ),
    )
}

/// A YAML syntax error in the file at `path`, with its place.
pub fn yaml_error(path: &str, e: &serde_yaml::Error) -> PolicyError {
    let loc = e
        .location()
        .map(|l| format!(" at line {} column {}", l.line(), l.column()))
        .unwrap_or_default();
    PolicyError::new(path, "", format!("invalid YAML{loc}: {e}"))
}

/// A lock whose data no panic can leave half-made (whole entries only).
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Resolve a relative file reference against the referring document's path.
pub fn join(from_doc: &str, rel: &str) -> Result<String, String> {
    if rel.contains("://") {
        return Err(format!(
            "`{rel}`: only references inside the bundle are allowed"
        ));
    }
    let mut parts: Vec<&str> = from_doc.split('/').collect();
    parts.pop();
    for seg in rel.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(format!("`{rel}` leaves the bundle directory"));
                }
            }
            s => parts.push(s),
        }
    }
    Ok(parts.join("/"))
}

/// Serves bundle documents to `jsonschema` for `$ref` resolution.
#[derive(Debug, Clone)]
pub struct BundleRetriever {
    docs: Arc<BTreeMap<String, Arc<Value>>>,
}

impl BundleRetriever {
    /// The documents, by bundle-relative path.
    pub fn documents(&self) -> &BTreeMap<String, Arc<Value>> {
        &self.docs
    }
}

impl jsonschema::Retrieve for BundleRetriever {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let s = uri.as_str();
        let path = s
            .strip_prefix(BASE_URI)
            .map(|p| p.split('#').next().unwrap_or(p));
        match path.and_then(|p| self.docs.get(p)) {
            Some(v) => Ok(Value::clone(v)),
            None => Err(format!("`{s}` is not a document of the bundle").into()),
        }
    }
}

/// Parse YAML or JSON by extension.
pub fn parse_text(path: &str, text: &str) -> Result<Value, PolicyError> {
    if path.ends_with(".json") {
        serde_json::from_str(text).map_err(|e| json_error(path, &e))
    } else {
        serde_yaml::from_str::<Value>(text).map_err(|e| yaml_error(path, &e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_join_inside_the_bundle() {
        assert_eq!(
            join("contracts/orders.yaml", "common.yaml").unwrap(),
            "contracts/common.yaml"
        );
        assert_eq!(
            join("contracts/v1/orders.yaml", "../common.yaml").unwrap(),
            "contracts/common.yaml"
        );
        assert_eq!(
            join("contracts/orders.yaml", "./x/y.json").unwrap(),
            "contracts/x/y.json"
        );
        assert!(join("contracts/orders.yaml", "../../etc/passwd").is_err());
        assert!(join("contracts/orders.yaml", "https://example.com/s.json").is_err());
    }
}
