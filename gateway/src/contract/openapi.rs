//! OpenAPI 3.0 / 3.1 documents → operations with compiled validators.

use super::body_schema::BodySchema;
use super::single_pass::SinglePass;
use super::tape::Borrowed;
use std::sync::Arc;

use jsonschema::{Draft, Validator};
use serde_json::{json, Value};

use super::documents::{lock, BundleDocuments, BundleRetriever, Compiled, BASE_URI};
use super::operation::{BodyCheck, Operation, ResponseChecks};
use super::params::{ParamCheck, ParamIn, Scalar, Shape};
use crate::routing::{PathTemplate, Segment};
use crate::source::PolicyError;

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// One operation of a document, ready to become a route.
#[derive(Debug)]
pub struct DocOperation {
    /// `operationId`, or `METHOD /path`.
    pub id: String,
    /// Upper-case method.
    pub method: String,
    /// Path template as written in the document.
    pub path: String,
    /// The checks.
    pub operation: Operation,
}

/// Compiles schemas of one root document into validators.
pub struct SchemaCompiler<'d> {
    retriever: BundleRetriever,
    draft: Draft,
    compiled: &'d Compiled,
    documents: &'d BundleDocuments,
}

impl<'d> SchemaCompiler<'d> {
    /// For documents of this dialect.
    pub fn new(docs: &'d BundleDocuments, convert_30: bool) -> Self {
        Self {
            retriever: docs.retriever(convert_30),
            draft: Draft::Draft202012,
            compiled: docs.compiled(convert_30),
            documents: docs,
        }
    }

    /// The place of the schema at `doc#pointer`: itself, or the schema a
    /// schema of nothing but a `$ref` names (followed), so that every
    /// place referring to one schema shares its validators.
    fn place(&self, doc: &str, pointer: &str) -> (String, String) {
        let (mut doc, mut pointer) = (doc.to_string(), pointer.to_string());
        for _ in 0..16 {
            let Some(Value::Object(schema)) = self
                .retriever
                .documents()
                .get(&doc)
                .and_then(|d| d.pointer(&pointer))
            else {
                break;
            };
            let Some(Value::String(r)) = schema.get("$ref").filter(|_| schema.len() == 1) else {
                break;
            };
            // Only a plain relative reference between documents that set no
            // base and use no dynamic references is followed: otherwise the
            // validator's own resolution decides, at this place.
            let (file, frag) = r.split_once('#').unwrap_or((r, ""));
            let plain = |d: &str| self.documents.document(d).is_some_and(|d| !d.rebases());
            if file.starts_with('/') || file.contains("://") || !plain(&doc) {
                break;
            }
            let target = if file.is_empty() {
                doc.clone()
            } else {
                match super::documents::join(&doc, file) {
                    Ok(t) => t,
                    Err(_) => break,
                }
            };
            if frag.contains('%')
                || !self.retriever.documents().contains_key(&target)
                || !plain(&target)
            {
                break;
            }
            (doc, pointer) = (target, frag.to_string());
        }
        (doc, pointer)
    }

    /// A validator for the schema at `doc#pointer`.
    pub fn compile(&self, doc: &str, pointer: &str) -> Result<Arc<Validator>, String> {
        let place = self.place(doc, pointer);
        if let Some(v) = lock(&self.compiled.validators).get(&place) {
            return Ok(Arc::clone(v));
        }
        let v = Arc::new(self.validator(&place.0, &place.1)?);
        lock(&self.compiled.validators).insert(place, Arc::clone(&v));
        Ok(v)
    }

    /// A body schema (both validators) for the schema at `doc#pointer`.
    pub fn compile_body(&self, doc: &str, pointer: &str) -> Result<Arc<BodySchema>, String> {
        let place = self.place(doc, pointer);
        if let Some(b) = lock(&self.compiled.bodies).get(&place) {
            return Ok(Arc::clone(b));
        }
        let body = self.body(&place.0, &place.1)?;
        lock(&self.compiled.bodies).insert(place, Arc::clone(&body));
        Ok(body)
    }

    fn body(&self, doc: &str, pointer: &str) -> Result<Arc<BodySchema>, String> {
        let value = self.validator(doc, pointer)?;
        let fast = self
            .borrowed_options()
            .with_retriever(self.retriever.clone())
            .build(&Self::reference(doc, pointer))
            .map_err(|e| format!("invalid schema: {e}"))?;
        let leaf = |keywords: &Value| self.borrowed_options().build(keywords).ok();
        let single = SinglePass::compile(self.retriever.documents(), &leaf, doc, pointer);
        Ok(Arc::new(BodySchema::new(value, fast, single)))
    }

    /// Options for validators over borrowed documents.
    fn borrowed_options(
        &self,
    ) -> jsonschema::ValidationOptions<'static, std::sync::Arc<dyn jsonschema::Retrieve>, Borrowed>
    {
        jsonschema::options_for::<Borrowed>()
            .with_draft(self.draft)
            .should_validate_formats(true)
            .with_format("email", super::formats::email)
    }

    fn reference(doc: &str, pointer: &str) -> Value {
        json!({ "$ref": format!("{BASE_URI}{doc}#{}", encode_fragment(pointer)) })
    }

    fn validator(&self, doc: &str, pointer: &str) -> Result<Validator, String> {
        jsonschema::options()
            .with_draft(self.draft)
            .should_validate_formats(true)
            .with_format("email", super::formats::email)
            .with_retriever(self.retriever.clone())
            .build(&Self::reference(doc, pointer))
            .map_err(|e| format!("invalid schema: {e}"))
    }
}

/// Compile every operation of the OpenAPI document `doc_path`.
pub fn compile_document(
    docs: &BundleDocuments,
    doc_path: &str,
    errors: &mut Vec<PolicyError>,
) -> Vec<DocOperation> {
    let Some(root) = docs.get(doc_path) else {
        return Vec::new();
    };
    let version = match root.get("openapi") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    };
    let is_text = root.get("openapi").is_some_and(Value::is_string);
    let convert_30 = if is_text && version.starts_with("3.0.") {
        true
    } else if is_text && version.starts_with("3.1.") {
        false
    } else {
        let shown = if version.is_empty() {
            "missing".to_string()
        } else {
            format!("`{version}`")
        };
        errors.push(PolicyError::new(
            doc_path,
            "/openapi",
            format!("unsupported OpenAPI version {shown}: use 3.0.x or 3.1.x"),
        ));
        return Vec::new();
    };
    let compiler = SchemaCompiler::new(docs, convert_30);
    let mut ops = Vec::new();
    let Some(paths) = root.get("paths").and_then(Value::as_object) else {
        errors.push(PolicyError::new(
            doc_path,
            "/paths",
            "the document has no `paths` object",
        ));
        return ops;
    };
    for (tpl, item) in paths {
        let item_ptr = format!("/paths/{}", escape(tpl));
        let template = match PathTemplate::parse(tpl) {
            Ok(t) => t,
            Err(e) => {
                errors.push(PolicyError::new(
                    doc_path,
                    item_ptr,
                    format!("`{tpl}`: {e}"),
                ));
                continue;
            }
        };
        let (idoc, iptr, item) = match docs.resolve(doc_path, &item_ptr, item) {
            Ok(r) => r,
            Err(m) => {
                errors.push(PolicyError::new(doc_path, item_ptr, m));
                continue;
            }
        };
        for method in METHODS {
            let Some(op) = item.get(method) else { continue };
            let op_ptr = format!("{iptr}/{method}");
            let id = op
                .get("operationId")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| format!("{} {tpl}", method.to_uppercase()));
            let mut ctx = OpCompile {
                docs,
                compiler: &compiler,
                errors,
                template: &template,
            };
            let operation = ctx.operation(&idoc, &iptr, item, &op_ptr, op);
            ops.push(DocOperation {
                id,
                method: method.to_uppercase(),
                path: tpl.clone(),
                operation,
            });
        }
    }
    ops
}

struct OpCompile<'a> {
    docs: &'a BundleDocuments,
    compiler: &'a SchemaCompiler<'a>,
    errors: &'a mut Vec<PolicyError>,
    template: &'a PathTemplate,
}

impl OpCompile<'_> {
    fn err(&mut self, doc: &str, ptr: String, msg: impl Into<String>) {
        self.errors.push(PolicyError::new(doc, ptr, msg));
    }

    fn operation(
        &mut self,
        idoc: &str,
        iptr: &str,
        item: &Value,
        op_ptr: &str,
        op: &Value,
    ) -> Operation {
        let mut params: Vec<ParamCheck> = Vec::new();
        let lists = [
            (idoc, format!("{iptr}/parameters"), item.get("parameters")),
            (idoc, format!("{op_ptr}/parameters"), op.get("parameters")),
        ];
        for (doc, list_ptr, list) in lists {
            let Some(list) = list.and_then(Value::as_array) else {
                continue;
            };
            for (i, p) in list.iter().enumerate() {
                if let Some(check) = self.parameter(doc, &format!("{list_ptr}/{i}"), p) {
                    params.retain(|q| !(q.name == check.name && q.location == check.location));
                    params.push(check);
                }
            }
        }
        for seg in self.template.segments() {
            if let Segment::Param(name) = seg {
                if !params
                    .iter()
                    .any(|p| p.location == ParamIn::Path && &p.name == name)
                {
                    params.push(ParamCheck {
                        name: name.clone(),
                        location: ParamIn::Path,
                        required: true,
                        shape: Shape::Scalar(Scalar::String),
                        validator: None,
                        segment: self.segment_of(name),
                    });
                }
            }
        }
        let body = op
            .get("requestBody")
            .and_then(|b| self.request_body(idoc, &format!("{op_ptr}/requestBody"), b));
        let responses = op
            .get("responses")
            .map(|r| self.responses(idoc, &format!("{op_ptr}/responses"), r))
            .unwrap_or_default();
        Operation {
            params,
            body,
            responses,
        }
    }

    fn segment_of(&self, name: &str) -> Option<usize> {
        self.template
            .segments()
            .iter()
            .position(|s| matches!(s, Segment::Param(n) if n == name))
    }

    fn parameter(&mut self, doc: &str, ptr: &str, p: &Value) -> Option<ParamCheck> {
        let (pdoc, pptr, p) = match self.docs.resolve(doc, ptr, p) {
            Ok(r) => r,
            Err(m) => {
                self.err(doc, ptr.to_string(), m);
                return None;
            }
        };
        let name = p.get("name").and_then(Value::as_str)?.to_string();
        let location = match p.get("in").and_then(Value::as_str) {
            Some("path") => ParamIn::Path,
            Some("query") => ParamIn::Query,
            Some("header") => ParamIn::Header,
            _ => return None, // cookie parameters are not checked
        };
        let segment = if location == ParamIn::Path {
            let seg = self.segment_of(&name);
            if seg.is_none() {
                self.err(
                    &pdoc,
                    format!("{pptr}/name"),
                    format!(
                        "path parameter `{name}` is not in the path template `{}`",
                        self.template
                    ),
                );
                return None;
            }
            seg
        } else {
            None
        };
        let required = location == ParamIn::Path
            || p.get("required").and_then(Value::as_bool).unwrap_or(false);
        let (shape, validator) = match p.get("schema") {
            Some(schema) => {
                let explode = p
                    .get("explode")
                    .and_then(Value::as_bool)
                    .unwrap_or(location == ParamIn::Query);
                let shape = self.shape(&pdoc, &format!("{pptr}/schema"), schema, explode);
                match self.compiler.compile(&pdoc, &format!("{pptr}/schema")) {
                    Ok(v) => (shape, Some(v)),
                    Err(m) => {
                        self.err(&pdoc, format!("{pptr}/schema"), m);
                        return None;
                    }
                }
            }
            None => (Shape::Scalar(Scalar::String), None),
        };
        let name = if location == ParamIn::Header {
            name.to_ascii_lowercase()
        } else {
            name
        };
        Some(ParamCheck {
            name,
            location,
            required,
            shape,
            validator,
            segment,
        })
    }

    fn shape(&self, doc: &str, ptr: &str, schema: &Value, explode: bool) -> Shape {
        let scalar = |s: &Value| match s.get("type") {
            Some(Value::String(t)) => scalar_of(t),
            Some(Value::Array(ts)) => ts
                .iter()
                .filter_map(Value::as_str)
                .find(|t| *t != "null")
                .map_or(Scalar::String, scalar_of),
            _ => Scalar::String,
        };
        let Ok((d, p, s)) = self.docs.resolve(doc, ptr, schema) else {
            return Shape::Scalar(Scalar::String);
        };
        let is_array = match s.get("type") {
            Some(Value::String(t)) => t == "array",
            Some(Value::Array(ts)) => ts.iter().any(|t| t == "array"),
            _ => false,
        };
        if is_array {
            let items = s
                .get("items")
                .and_then(|i| self.docs.resolve(&d, &format!("{p}/items"), i).ok())
                .map_or(Scalar::String, |(_, _, i)| scalar(i));
            Shape::Array { items, explode }
        } else {
            Shape::Scalar(scalar(s))
        }
    }

    fn request_body(&mut self, doc: &str, ptr: &str, b: &Value) -> Option<BodyCheck> {
        let (bdoc, bptr, b) = match self.docs.resolve(doc, ptr, b) {
            Ok(r) => r,
            Err(m) => {
                self.err(doc, ptr.to_string(), m);
                return None;
            }
        };
        let required = b.get("required").and_then(Value::as_bool).unwrap_or(false);
        let mut media_types = Vec::new();
        let mut json = None;
        if let Some(content) = b.get("content").and_then(Value::as_object) {
            for (mt, media) in content {
                let lower = mt.to_ascii_lowercase();
                if is_json(&lower) && media.get("schema").is_some() && json.is_none() {
                    let sptr = format!("{bptr}/content/{}/schema", escape(mt));
                    match self.compiler.compile_body(&bdoc, &sptr) {
                        Ok(v) => json = Some(v),
                        Err(m) => self.err(&bdoc, sptr, m),
                    }
                }
                media_types.push(lower);
            }
        }
        Some(BodyCheck {
            required,
            media_types,
            json,
        })
    }

    fn responses(&mut self, doc: &str, ptr: &str, r: &Value) -> ResponseChecks {
        let mut checks = ResponseChecks::default();
        let Some(map) = r.as_object() else {
            return checks;
        };
        for (code, resp) in map {
            let rptr = format!("{ptr}/{}", escape(code));
            let (rdoc, rptr, resp) = match self.docs.resolve(doc, &rptr, resp) {
                Ok(r) => r,
                Err(m) => {
                    self.err(doc, rptr, m);
                    continue;
                }
            };
            let mut validator = None;
            if let Some(content) = resp.get("content").and_then(Value::as_object) {
                if let Some((mt, _)) = content
                    .iter()
                    .find(|(mt, m)| is_json(&mt.to_ascii_lowercase()) && m.get("schema").is_some())
                {
                    let sptr = format!("{rptr}/content/{}/schema", escape(mt));
                    match self.compiler.compile_body(&rdoc, &sptr) {
                        Ok(v) => validator = Some(v),
                        Err(m) => {
                            self.err(&rdoc, sptr, m);
                            continue;
                        }
                    }
                }
            }
            let upper = code.to_ascii_uppercase();
            if upper == "DEFAULT" {
                checks.default = Some(validator);
            } else if upper.len() == 3 && upper.ends_with("XX") {
                match upper.as_bytes()[0] {
                    d @ b'1'..=b'5' => checks.ranges[(d - b'0') as usize] = Some(validator),
                    _ => self.err(
                        &rdoc,
                        rptr,
                        format!("`{code}` is not a status code, range or `default`"),
                    ),
                }
            } else {
                match code.parse::<u16>() {
                    Ok(c) if (100..600).contains(&c) => {
                        checks.exact.insert(c, validator);
                    }
                    _ => self.err(
                        &rdoc,
                        rptr,
                        format!("`{code}` is not a status code, range or `default`"),
                    ),
                }
            }
        }
        checks
    }
}

fn scalar_of(t: &str) -> Scalar {
    match t {
        "integer" => Scalar::Integer,
        "number" => Scalar::Number,
        "boolean" => Scalar::Boolean,
        _ => Scalar::String,
    }
}

/// `application/json`, `application/problem+json`, `text/json`…
pub fn is_json(media_type: &str) -> bool {
    media_type == "application/json" || media_type.ends_with("+json") || media_type == "text/json"
}

/// Escape a JSON pointer token.
pub fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// Percent-encode a JSON pointer for use as a URI fragment.
fn encode_fragment(pointer: &str) -> String {
    let mut out = String::with_capacity(pointer.len());
    for b in pointer.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/!$&'()*+,;=:@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
