//! OpenAPI contract diff: every change between two documents, classified by
//! the direction rule (`shared/openapi-diff-checklist.md`): a change that
//! makes a previously valid *request* invalid, or lets a *response* carry
//! something an old client did not expect, is breaking.
//!
//! Schemas are compared resolved (`$ref`s followed, 3.0 `nullable` and 3.1
//! `type: [T, "null"]` treated alike), path templates are matched with
//! parameter names erased (`/a/{id}` ≡ `/a/{key}`), and every change gets a
//! stable fingerprint (`sha256(id:method:path:text)[:12]`) that approvals
//! can refer to across revisions.

use std::collections::BTreeSet;

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::contract::BundleDocuments;

/// How a change affects clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Safe for clients.
    Info,
    /// Cannot be decided from the contract alone.
    Warn,
    /// Breaks clients.
    Breaking,
}

/// One change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContractChange {
    /// Rule id, e.g. `request-property-became-required`.
    pub id: &'static str,
    /// Level.
    pub level: Level,
    /// Method (upper case) or empty for document-wide changes.
    pub method: String,
    /// Path template as in the new (or old, when removed) document.
    pub path: String,
    /// What changed, for humans.
    pub text: String,
    /// Stable fingerprint.
    pub fingerprint: String,
}

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// A document and its bundle, for `$ref` resolution.
pub struct Doc<'a> {
    /// The bundle's documents.
    pub docs: &'a BundleDocuments,
    /// The document's path in the bundle.
    pub path: &'a str,
}

impl Doc<'_> {
    fn root(&self) -> Option<&Value> {
        self.docs.get(self.path)
    }

    /// Follow `$ref`s (inside the bundle).
    fn resolve<'v>(&'v self, v: &'v Value) -> &'v Value {
        self.docs
            .resolve(self.path, "", v)
            .map(|(_, _, t)| t)
            .unwrap_or(v)
    }
}

/// Where a schema sits: requests narrow, responses widen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Request,
    Response,
}

struct Differ<'a> {
    old: &'a Doc<'a>,
    new: &'a Doc<'a>,
    method: String,
    path: String,
    out: Vec<ContractChange>,
}

impl Differ<'_> {
    fn push(&mut self, id: &'static str, level: Level, text: String) {
        let fingerprint = fingerprint(id, &self.method, &self.path, &text);
        self.out.push(ContractChange {
            id,
            level,
            method: self.method.clone(),
            path: self.path.clone(),
            text,
            fingerprint,
        });
    }
}

/// Stable id of a change for approvals.
pub fn fingerprint(id: &str, method: &str, path: &str, text: &str) -> String {
    let digest = Sha256::digest(format!("{id}:{method}:{path}:{text}").as_bytes());
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

fn shape(path: &str) -> String {
    crate::routing::PathTemplate::parse(path)
        .map(|t| t.shape())
        .unwrap_or_else(|_| path.to_string())
}

/// Every change from `old` to `new`.
pub fn diff(old: &Doc<'_>, new: &Doc<'_>) -> Vec<ContractChange> {
    let mut d = Differ {
        old,
        new,
        method: String::new(),
        path: String::new(),
        out: Vec::new(),
    };
    let empty = serde_json::Map::new();
    let old_paths = old
        .root()
        .and_then(|r| r.get("paths"))
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let new_paths = new
        .root()
        .and_then(|r| r.get("paths"))
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    for (op_path, old_item) in old_paths {
        let old_item = old.resolve(old_item);
        let new_match = new_paths.iter().find(|(p, _)| shape(p) == shape(op_path));
        for m in METHODS {
            let Some(old_op) = old_item.get(m) else {
                continue;
            };
            d.method = m.to_uppercase();
            d.path = new_match.map_or(op_path.clone(), |(p, _)| p.clone());
            let new_op = new_match
                .and_then(|(_, item)| new.resolve(item).get(m).map(|op| (new.resolve(item), op)));
            match new_op {
                None => {
                    let deprecated = old_op
                        .get("deprecated")
                        .and_then(Value::as_bool)
                        .unwrap_or(false);
                    let (id, level) = if deprecated {
                        ("api-removed-after-deprecation", Level::Info)
                    } else {
                        ("api-removed", Level::Breaking)
                    };
                    d.push(
                        id,
                        level,
                        format!("operation {} {op_path} removed", m.to_uppercase()),
                    );
                }
                Some((new_item, new_op)) => d.operation(old_item, old_op, new_item, new_op),
            }
        }
    }
    for (op_path, new_item) in new_paths {
        let new_item = new.resolve(new_item);
        let old_match = old_paths.iter().find(|(p, _)| shape(p) == shape(op_path));
        for m in METHODS {
            if new_item.get(m).is_some()
                && old_match.and_then(|(_, i)| old.resolve(i).get(m)).is_none()
            {
                d.method = m.to_uppercase();
                d.path = op_path.clone();
                d.push(
                    "endpoint-added",
                    Level::Info,
                    format!("operation {} {op_path} added", m.to_uppercase()),
                );
            }
        }
    }
    d.out
}

impl Differ<'_> {
    fn params<'v>(doc: &'v Doc<'v>, item: &'v Value, op: &'v Value) -> Vec<&'v Value> {
        let mut out: Vec<&Value> = Vec::new();
        for list in [item.get("parameters"), op.get("parameters")] {
            for p in list.and_then(Value::as_array).into_iter().flatten() {
                let p = doc.resolve(p);
                let key = (p.get("name"), p.get("in"));
                out.retain(|q| (q.get("name"), q.get("in")) != key);
                out.push(p);
            }
        }
        out
    }

    fn operation(&mut self, old_item: &Value, old_op: &Value, new_item: &Value, new_op: &Value) {
        let (old, new) = (self.old, self.new);
        // Parameters.
        let old_params = Self::params(old, old_item, old_op);
        let new_params = Self::params(new, new_item, new_op);
        let key = |p: &Value| {
            let loc = p
                .get("in")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let name = p
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            // Path parameters are matched by position in the template, not by name.
            (
                loc.clone(),
                if loc == "path" {
                    String::new()
                } else {
                    name.to_ascii_lowercase()
                },
                name,
            )
        };
        let mut old_path_params: Vec<&Value> = old_params
            .iter()
            .copied()
            .filter(|p| p.get("in") == Some(&Value::from("path")))
            .collect();
        for np in &new_params {
            let (loc, k, name) = key(np);
            let required =
                np.get("required").and_then(Value::as_bool).unwrap_or(false) || loc == "path";
            let op = if loc == "path" {
                (!old_path_params.is_empty()).then(|| old_path_params.remove(0))
            } else {
                old_params
                    .iter()
                    .copied()
                    .find(|p| key(p).0 == loc && key(p).1 == k)
            };
            match op {
                None if required => self.push(
                    "new-required-request-parameter",
                    Level::Breaking,
                    format!("new required {loc} parameter `{name}`"),
                ),
                None => self.push(
                    "new-optional-request-parameter",
                    Level::Info,
                    format!("new optional {loc} parameter `{name}`"),
                ),
                Some(op) => {
                    let was_required = op.get("required").and_then(Value::as_bool).unwrap_or(false)
                        || loc == "path";
                    if required && !was_required {
                        self.push(
                            "request-parameter-became-required",
                            Level::Breaking,
                            format!("{loc} parameter `{name}` became required"),
                        );
                    } else if !required && was_required {
                        self.push(
                            "request-parameter-became-optional",
                            Level::Info,
                            format!("{loc} parameter `{name}` became optional"),
                        );
                    }
                    let (os, ns) = (
                        op.get("schema").map(|s| old.resolve(s)),
                        np.get("schema").map(|s| new.resolve(s)),
                    );
                    if let (Some(os), Some(ns)) = (os, ns) {
                        if os.get("default") != ns.get("default") {
                            self.push(
                                "request-parameter-default-changed",
                                Level::Breaking,
                                format!("default of {loc} parameter `{name}` changed"),
                            );
                        }
                        self.schema(
                            os,
                            ns,
                            Dir::Request,
                            &format!("{loc} parameter `{name}`"),
                            0,
                        );
                    }
                }
            }
        }
        for op in &old_params {
            let (loc, k, name) = key(op);
            if loc == "path" {
                continue;
            }
            if !new_params.iter().any(|p| key(p).0 == loc && key(p).1 == k) {
                let deprecated = op
                    .get("deprecated")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                let (id, level) = if deprecated {
                    ("request-parameter-removed-after-deprecation", Level::Info)
                } else {
                    ("request-parameter-removed", Level::Warn)
                };
                self.push(id, level, format!("{loc} parameter `{name}` removed"));
            }
        }
        // Request body.
        let ob = old_op.get("requestBody").map(|b| old.resolve(b));
        let nb = new_op.get("requestBody").map(|b| new.resolve(b));
        let required = |b: Option<&Value>| {
            b.and_then(|b| b.get("required"))
                .and_then(Value::as_bool)
                .unwrap_or(false)
        };
        match (ob, nb) {
            (None, Some(_)) if required(nb) => self.push(
                "request-body-added-required",
                Level::Breaking,
                "required request body added".into(),
            ),
            (None, Some(_)) => self.push(
                "request-body-added-optional",
                Level::Info,
                "optional request body added".into(),
            ),
            (Some(_), None) => self.push(
                "request-body-removed",
                Level::Breaking,
                "request body removed".into(),
            ),
            (Some(ob), Some(nb)) => {
                if required(Some(nb)) && !required(Some(ob)) {
                    self.push(
                        "request-body-became-required",
                        Level::Breaking,
                        "request body became required".into(),
                    );
                } else if !required(Some(nb)) && required(Some(ob)) {
                    self.push(
                        "request-body-became-optional",
                        Level::Info,
                        "request body became optional".into(),
                    );
                }
                self.content(ob, nb, Dir::Request, "request body");
            }
            (None, None) => {}
        }
        // Responses.
        let empty = serde_json::Map::new();
        let or = old_op
            .get("responses")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let nr = new_op
            .get("responses")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        for (code, oresp) in or {
            match nr.get(code) {
                None => {
                    let success = code.starts_with('2');
                    let (id, level) = if success {
                        ("response-success-status-removed", Level::Breaking)
                    } else {
                        ("response-non-success-status-removed", Level::Info)
                    };
                    self.push(id, level, format!("response status {code} removed"));
                }
                Some(nresp) => {
                    let (oresp, nresp) = (old.resolve(oresp), new.resolve(nresp));
                    self.content(oresp, nresp, Dir::Response, &format!("response {code}"));
                }
            }
        }
        for code in nr.keys() {
            if !or.contains_key(code) {
                self.push(
                    "response-status-added",
                    Level::Info,
                    format!("response status {code} added"),
                );
            }
        }
    }

    fn content(&mut self, old: &Value, new: &Value, dir: Dir, what: &str) {
        let empty = serde_json::Map::new();
        let oc = old
            .get("content")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let nc = new
            .get("content")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        for (mt, omedia) in oc {
            match nc.get(mt) {
                None => self.push(
                    "media-type-removed",
                    Level::Breaking,
                    format!("{what}: media type `{mt}` removed"),
                ),
                Some(nmedia) => {
                    if let (Some(os), Some(ns)) = (omedia.get("schema"), nmedia.get("schema")) {
                        let (os, ns) = (self.old.resolve(os), self.new.resolve(ns));
                        self.schema(os, ns, dir, &format!("{what} ({mt})"), 0);
                    } else if omedia.get("schema").is_some() && dir == Dir::Response {
                        self.push(
                            "response-media-type-schema-removed",
                            Level::Warn,
                            format!("{what}: schema of `{mt}` removed"),
                        );
                    }
                }
            }
        }
        for mt in nc.keys() {
            if !oc.contains_key(mt) {
                let level = if dir == Dir::Response && (mt.ends_with("/*") || mt == "*/*") {
                    Level::Breaking
                } else {
                    Level::Info
                };
                self.push(
                    "media-type-added",
                    level,
                    format!("{what}: media type `{mt}` added"),
                );
            }
        }
    }

    fn schema(&mut self, old: &Value, new: &Value, dir: Dir, at: &str, depth: usize) {
        // Compare resolved schemas: the same `$ref` text may name different targets.
        let (old, new) = (self.old.resolve(old), self.new.resolve(new));
        if depth > 32 || (old == new && !has_ref(old)) {
            return;
        }
        let (ot, on) = types(old);
        let (nt, nn) = types(new);
        // Nullability.
        match (on, nn, dir) {
            (false, true, Dir::Response) => self.push(
                "response-became-nullable",
                Level::Breaking,
                format!("{at} may now be null"),
            ),
            (true, false, Dir::Request) => self.push(
                "request-became-not-nullable",
                Level::Breaking,
                format!("{at} may no longer be null"),
            ),
            (false, true, Dir::Request) => self.push(
                "request-became-nullable",
                Level::Info,
                format!("{at} may now be null"),
            ),
            (true, false, Dir::Response) => self.push(
                "response-became-not-nullable",
                Level::Info,
                format!("{at} is no longer null"),
            ),
            _ => {}
        }
        // Types.
        if !ot.is_empty() && ot != nt {
            let widened = nt.is_empty()
                || ot.is_subset(&nt)
                || (ot.contains("integer") && nt.contains("number") && ot.len() == 1);
            let narrowed = !nt.is_empty() && nt.is_subset(&ot)
                || (ot.contains("number") && nt.contains("integer") && nt.len() == 1);
            let (id, level) = match (dir, widened, narrowed) {
                (Dir::Request, true, _) => ("request-type-widened", Level::Info),
                (Dir::Response, _, true) => ("response-type-narrowed", Level::Info),
                (Dir::Request, _, _) => ("request-type-changed", Level::Breaking),
                (Dir::Response, _, _) => ("response-type-changed", Level::Breaking),
            };
            self.push(
                id,
                level,
                format!("{at}: type {} → {}", fmt_types(&ot), fmt_types(&nt)),
            );
        }
        // Enums.
        let oe = old.get("enum").and_then(Value::as_array);
        let ne = new.get("enum").and_then(Value::as_array);
        match (oe, ne) {
            (Some(oe), Some(ne)) => {
                for v in oe.iter().filter(|v| !ne.contains(v) && !v.is_null()) {
                    let level = if dir == Dir::Request {
                        Level::Breaking
                    } else {
                        Level::Info
                    };
                    self.push(
                        if dir == Dir::Request {
                            "request-enum-value-removed"
                        } else {
                            "response-enum-value-removed"
                        },
                        level,
                        format!("{at}: enum value {v} removed"),
                    );
                }
                for v in ne.iter().filter(|v| !oe.contains(v) && !v.is_null()) {
                    let level = if dir == Dir::Request {
                        Level::Info
                    } else {
                        Level::Warn
                    };
                    self.push(
                        if dir == Dir::Request {
                            "request-enum-value-added"
                        } else {
                            "response-enum-value-added"
                        },
                        level,
                        format!("{at}: enum value {v} added"),
                    );
                }
            }
            (None, Some(_)) if dir == Dir::Request => self.push(
                "request-became-enum",
                Level::Breaking,
                format!("{at} became an enum"),
            ),
            _ => {}
        }
        // Bounds: (keyword, larger-is-looser).
        for (kw, upper) in [
            ("maximum", true),
            ("exclusiveMaximum", true),
            ("maxLength", true),
            ("maxItems", true),
            ("maxProperties", true),
            ("minimum", false),
            ("exclusiveMinimum", false),
            ("minLength", false),
            ("minItems", false),
            ("minProperties", false),
        ] {
            let o = bound(old, kw);
            let n = bound(new, kw);
            let looser = match (o, n) {
                (Some(o), Some(n)) if (n - o).abs() > f64::EPSILON => {
                    Some(if upper { n > o } else { n < o })
                }
                (Some(_), None) => Some(true),
                (None, Some(_)) => None, // newly set
                _ => continue,
            };
            match (looser, dir) {
                (Some(false), Dir::Request) => self.push(
                    "request-bound-tightened",
                    Level::Breaking,
                    format!("{at}: `{kw}` tightened"),
                ),
                (Some(true), Dir::Request) => self.push(
                    "request-bound-loosened",
                    Level::Info,
                    format!("{at}: `{kw}` loosened"),
                ),
                (None, Dir::Request) => self.push(
                    "request-bound-set",
                    Level::Warn,
                    format!("{at}: `{kw}` set"),
                ),
                (Some(true), Dir::Response) => self.push(
                    "response-bound-loosened",
                    Level::Breaking,
                    format!("{at}: `{kw}` loosened"),
                ),
                (None, Dir::Response) | (Some(false), Dir::Response) => {}
            }
        }
        match (old.get("pattern"), new.get("pattern"), dir) {
            (None, Some(_), Dir::Request) => self.push(
                "request-pattern-added",
                Level::Breaking,
                format!("{at}: pattern added"),
            ),
            (Some(a), Some(b), Dir::Request) if a != b => self.push(
                "request-pattern-changed",
                Level::Warn,
                format!("{at}: pattern changed"),
            ),
            (Some(_), None, Dir::Request) => self.push(
                "request-pattern-removed",
                Level::Info,
                format!("{at}: pattern removed"),
            ),
            (a, b, Dir::Response) if a != b => self.push(
                "response-pattern-changed",
                Level::Info,
                format!("{at}: pattern changed"),
            ),
            _ => {}
        }
        // additionalProperties.
        let closed = |s: &Value| s.get("additionalProperties") == Some(&Value::Bool(false));
        if dir == Dir::Request && closed(new) && !closed(old) {
            self.push(
                "request-additional-properties-forbidden",
                Level::Breaking,
                format!("{at}: additional properties are no longer allowed"),
            );
        }
        // Properties.
        let empty = serde_json::Map::new();
        let op = old
            .get("properties")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let np = new
            .get("properties")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let oreq = required_set(old);
        let nreq = required_set(new);
        for (name, ps) in np {
            let read_only = self.new.resolve(ps).get("readOnly") == Some(&Value::Bool(true));
            match op.get(name) {
                None => {
                    let required = nreq.contains(name.as_str());
                    match (dir, required && !read_only) {
                        (Dir::Request, true) => self.push(
                            "new-required-request-property",
                            Level::Breaking,
                            format!("{at}: new required property `{name}`"),
                        ),
                        (Dir::Request, false) => self.push(
                            "new-optional-request-property",
                            Level::Info,
                            format!("{at}: new optional property `{name}`"),
                        ),
                        (Dir::Response, _) => self.push(
                            "response-property-added",
                            Level::Info,
                            format!("{at}: property `{name}` added"),
                        ),
                    }
                }
                Some(ops) => self.schema(ops, ps, dir, &format!("{at}/{name}"), depth + 1),
            }
        }
        for (name, _) in op {
            if !np.contains_key(name) {
                let was_required = oreq.contains(name.as_str());
                match (dir, was_required) {
                    (Dir::Response, true) => self.push(
                        "response-required-property-removed",
                        Level::Breaking,
                        format!("{at}: required property `{name}` removed"),
                    ),
                    (Dir::Response, false) => self.push(
                        "response-optional-property-removed",
                        Level::Warn,
                        format!("{at}: optional property `{name}` removed"),
                    ),
                    (Dir::Request, _) => self.push(
                        "request-property-removed",
                        Level::Warn,
                        format!("{at}: property `{name}` removed"),
                    ),
                }
            }
        }
        for name in nreq.difference(&oreq) {
            if op.contains_key(*name) && np.contains_key(*name) {
                let (id, level) = if dir == Dir::Request {
                    ("request-property-became-required", Level::Breaking)
                } else {
                    ("response-property-became-required", Level::Info)
                };
                self.push(
                    id,
                    level,
                    format!("{at}: property `{name}` became required"),
                );
            }
        }
        for name in oreq.difference(&nreq) {
            if op.contains_key(*name) && np.contains_key(*name) {
                let (id, level) = if dir == Dir::Request {
                    ("request-property-became-optional", Level::Info)
                } else {
                    ("response-property-became-optional", Level::Breaking)
                };
                self.push(
                    id,
                    level,
                    format!("{at}: property `{name}` became optional"),
                );
            }
        }
        // Arrays.
        if let (Some(oi), Some(ni)) = (old.get("items"), new.get("items")) {
            self.schema(oi, ni, dir, &format!("{at}[]"), depth + 1);
        }
        // oneOf / anyOf branch counts.
        for kw in ["oneOf", "anyOf"] {
            let o = old.get(kw).and_then(Value::as_array).map_or(0, Vec::len);
            let n = new.get(kw).and_then(Value::as_array).map_or(0, Vec::len);
            if n < o && dir == Dir::Request {
                self.push(
                    "request-branch-removed",
                    Level::Breaking,
                    format!("{at}: {kw} branch removed"),
                );
            } else if n > o && dir == Dir::Response && kw == "oneOf" {
                self.push(
                    "response-oneof-branch-added",
                    Level::Breaking,
                    format!("{at}: oneOf branch added"),
                );
            } else if n != o {
                self.push(
                    "composition-changed",
                    Level::Info,
                    format!("{at}: {kw} branches {o} → {n}"),
                );
            }
        }
    }
}

/// Does `v` contain a `$ref` anywhere (so equal text may still differ once resolved)?
fn has_ref(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.contains_key("$ref") || m.values().any(has_ref),
        Value::Array(a) => a.iter().any(has_ref),
        _ => false,
    }
}

fn required_set(s: &Value) -> BTreeSet<&str> {
    s.get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

fn bound(s: &Value, kw: &str) -> Option<f64> {
    s.get(kw).and_then(Value::as_f64)
}

/// The schema's types (without `null`) and whether it admits null, across
/// 3.0 (`nullable`) and 3.1 (`type: [T, "null"]`) spellings.
fn types(s: &Value) -> (BTreeSet<String>, bool) {
    let mut set = BTreeSet::new();
    let mut nullable = s.get("nullable") == Some(&Value::Bool(true));
    match s.get("type") {
        Some(Value::String(t)) if t == "null" => nullable = true,
        Some(Value::String(t)) => {
            set.insert(t.clone());
        }
        Some(Value::Array(ts)) => {
            for t in ts.iter().filter_map(Value::as_str) {
                if t == "null" {
                    nullable = true;
                } else {
                    set.insert(t.to_string());
                }
            }
        }
        _ => {}
    }
    (set, nullable)
}

fn fmt_types(t: &BTreeSet<String>) -> String {
    if t.is_empty() {
        "any".into()
    } else {
        t.iter().cloned().collect::<Vec<_>>().join("|")
    }
}

#[cfg(test)]
mod tests;
