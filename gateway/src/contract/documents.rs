//! The documents of a bundle that policy files refer to (`contracts/`,
//! `schemas/`), parsed once, with `$ref` resolution over them.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use crate::source::{PolicyError, SourceFile};

/// URI scheme + authority under which bundle documents are addressed.
pub const BASE_URI: &str = "gatehouse://bundle/";

/// Parsed documents, by bundle-relative path.
#[derive(Debug, Default, Clone)]
pub struct BundleDocuments {
    raw: BTreeMap<String, Value>,
}

impl BundleDocuments {
    /// Parse every document; parse errors are returned, not fatal.
    pub fn parse(files: &[&SourceFile], errors: &mut Vec<PolicyError>) -> Self {
        let mut raw = BTreeMap::new();
        for f in files {
            match parse_text(&f.path, &f.text) {
                Ok(v) => {
                    raw.insert(f.path.clone(), v);
                }
                Err(e) => errors.push(e),
            }
        }
        Self { raw }
    }

    /// A document by bundle-relative path.
    pub fn get(&self, path: &str) -> Option<&Value> {
        self.raw.get(path)
    }

    /// Every document, by path.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.raw.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// All documents, for the retriever; `convert_30` applies the 3.0 dialect conversion.
    pub fn retriever(&self, convert_30: bool) -> BundleRetriever {
        let docs = self
            .raw
            .iter()
            .map(|(k, v)| {
                let mut v = v.clone();
                if convert_30 && k.starts_with("contracts/") {
                    super::dialect::convert_30(&mut v);
                }
                (k.clone(), v)
            })
            .collect();
        BundleRetriever {
            docs: Arc::new(docs),
        }
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
            let root = self.raw.get(&target_doc).ok_or_else(|| {
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
    docs: Arc<BTreeMap<String, Value>>,
}

impl BundleRetriever {
    /// The documents, by bundle-relative path.
    pub fn documents(&self) -> &BTreeMap<String, Value> {
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
            Some(v) => Ok(v.clone()),
            None => Err(format!("`{s}` is not a document of the bundle").into()),
        }
    }
}

/// Parse YAML or JSON by extension.
pub fn parse_text(path: &str, text: &str) -> Result<Value, PolicyError> {
    if path.ends_with(".json") {
        serde_json::from_str(text).map_err(|e| {
            PolicyError::new(
                path,
                "",
                format!(
                    "invalid JSON at line {} column {}: {e}",
                    e.line(),
                    e.column()
                ),
            )
        })
    } else {
        serde_yaml::from_str::<Value>(text).map_err(|e| {
            let loc = e
                .location()
                .map(|l| format!(" at line {} column {}", l.line(), l.column()))
                .unwrap_or_default();
            PolicyError::new(path, "", format!("invalid YAML{loc}: {e}"))
        })
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
