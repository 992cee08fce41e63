//! OpenAPI contract diff: every change between two documents, classified by
//! the direction rule (`docs/architecture.md` §7): a change that
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
    /// The field it describes, as a pointer into the operation read with
    /// its `$ref`s inlined and parameters keyed `in:name` (`path:#0` for the
    /// first path parameter); empty for a whole operation.
    pub pointer: String,
    /// Stable fingerprint.
    pub fingerprint: String,
}

impl ContractChange {
    /// Does the change narrow what a response may carry, so that a response
    /// the app sends today may fail a check it passed before? Harmless to
    /// clients, but where responses are enforced such a response becomes
    /// a 502.
    pub fn narrows_responses(&self) -> bool {
        self.pointer.starts_with("/responses")
            && matches!(
                self.id,
                "response-bound-tightened"
                    | "response-bound-set"
                    | "response-enum-value-removed"
                    | "response-became-enum"
                    | "response-type-narrowed"
                    | "response-non-success-status-removed"
                    | "response-success-status-removed"
                    | "response-pattern-changed"
                    | "response-property-became-required"
                    | "response-additional-properties-forbidden"
                    | "response-became-not-nullable"
                    | "response-allof-added"
                    | "response-branch-removed"
                    | "media-type-removed"
                    | "contract-field-changed"
            )
    }
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
    /// Fields of the current operation that a change describes.
    claimed: Vec<String>,
}

impl Differ<'_> {
    fn push(&mut self, ptr: &str, id: &'static str, level: Level, text: String) {
        let fingerprint = fingerprint(id, &self.method, &self.path, &text);
        self.claimed.push(ptr.to_string());
        self.out.push(ContractChange {
            id,
            level,
            method: self.method.clone(),
            path: self.path.clone(),
            text,
            pointer: ptr.to_string(),
            fingerprint,
        });
    }

    /// Mark a field as described by the change just pushed.
    fn claim(&mut self, ptr: String) {
        self.claimed.push(ptr);
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
        claimed: Vec::new(),
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
                        "",
                        id,
                        level,
                        format!("operation {} {op_path} removed", m.to_uppercase()),
                    );
                }
                Some((new_item, new_op)) => {
                    d.claimed.clear();
                    d.operation(old_item, old_op, new_item, new_op);
                    d.unclaimed(old_item, old_op, new_item, new_op);
                }
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
                    "",
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
        let mut path_index = 0;
        for np in &new_params {
            let (loc, k, name) = key(np);
            let at = if loc == "path" {
                path_index += 1;
                format!("/parameters/path:#{}", path_index - 1)
            } else {
                format!(
                    "/parameters/{}",
                    super::policy_tree::escape(&format!("{loc}:{k}"))
                )
            };
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
                    &at,
                    "new-required-request-parameter",
                    Level::Breaking,
                    format!("new required {loc} parameter `{name}`"),
                ),
                None => self.push(
                    &at,
                    "new-optional-request-parameter",
                    Level::Info,
                    format!("new optional {loc} parameter `{name}`"),
                ),
                Some(op) => {
                    let was_required = op.get("required").and_then(Value::as_bool).unwrap_or(false)
                        || loc == "path";
                    if required && !was_required {
                        self.push(
                            &format!("{at}/required"),
                            "request-parameter-became-required",
                            Level::Breaking,
                            format!("{loc} parameter `{name}` became required"),
                        );
                    } else if !required && was_required {
                        self.push(
                            &format!("{at}/required"),
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
                                &format!("{at}/schema/default"),
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
                            &format!("{at}/schema"),
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
                let at = format!(
                    "/parameters/{}",
                    super::policy_tree::escape(&format!("{loc}:{k}"))
                );
                self.push(&at, id, level, format!("{loc} parameter `{name}` removed"));
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
                "/requestBody",
                "request-body-added-required",
                Level::Breaking,
                "required request body added".into(),
            ),
            (None, Some(_)) => self.push(
                "/requestBody",
                "request-body-added-optional",
                Level::Info,
                "optional request body added".into(),
            ),
            (Some(_), None) => self.push(
                "/requestBody",
                "request-body-removed",
                Level::Breaking,
                "request body removed".into(),
            ),
            (Some(ob), Some(nb)) => {
                if required(Some(nb)) && !required(Some(ob)) {
                    self.push(
                        "/requestBody/required",
                        "request-body-became-required",
                        Level::Breaking,
                        "request body became required".into(),
                    );
                } else if !required(Some(nb)) && required(Some(ob)) {
                    self.push(
                        "/requestBody/required",
                        "request-body-became-optional",
                        Level::Info,
                        "request body became optional".into(),
                    );
                }
                self.content(ob, nb, Dir::Request, "request body", "/requestBody");
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
                    let at = format!("/responses/{}", super::policy_tree::escape(code));
                    self.push(&at, id, level, format!("response status {code} removed"));
                }
                Some(nresp) => {
                    let (oresp, nresp) = (old.resolve(oresp), new.resolve(nresp));
                    let at = format!("/responses/{}", super::policy_tree::escape(code));
                    self.content(
                        oresp,
                        nresp,
                        Dir::Response,
                        &format!("response {code}"),
                        &at,
                    );
                }
            }
        }
        for code in nr.keys() {
            if !or.contains_key(code) {
                self.push(
                    &format!("/responses/{}", super::policy_tree::escape(code)),
                    "response-status-added",
                    Level::Info,
                    format!("response status {code} added"),
                );
            }
        }
    }

    fn content(&mut self, old: &Value, new: &Value, dir: Dir, what: &str, ptr: &str) {
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
            let at = format!("{ptr}/content/{}", super::policy_tree::escape(mt));
            match nc.get(mt) {
                None => self.push(
                    &at,
                    "media-type-removed",
                    Level::Breaking,
                    format!("{what}: media type `{mt}` removed"),
                ),
                Some(nmedia) => {
                    if let (Some(os), Some(ns)) = (omedia.get("schema"), nmedia.get("schema")) {
                        let (os, ns) = (self.old.resolve(os), self.new.resolve(ns));
                        self.schema(
                            os,
                            ns,
                            dir,
                            &format!("{what} ({mt})"),
                            &format!("{at}/schema"),
                            0,
                        );
                    } else if omedia.get("schema").is_some() && dir == Dir::Response {
                        self.push(
                            &format!("{at}/schema"),
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
                    &format!("{ptr}/content/{}", super::policy_tree::escape(mt)),
                    "media-type-added",
                    level,
                    format!("{what}: media type `{mt}` added"),
                );
            }
        }
    }

    fn schema(&mut self, old: &Value, new: &Value, dir: Dir, at: &str, ptr: &str, depth: usize) {
        // Compare resolved schemas: the same `$ref` text may name different targets.
        let (old, new) = (self.old.resolve(old), self.new.resolve(new));
        if depth > 32 || (old == new && !has_ref(old)) {
            return;
        }
        let kw = |k: &str| format!("{ptr}/{k}");
        let (ot, on) = types(old);
        let (nt, nn) = types(new);
        // Nullability (3.0 `nullable` or 3.1 `type: [T, "null"]`).
        let nullability = match (on, nn, dir) {
            (false, true, Dir::Response) => Some((
                "response-became-nullable",
                Level::Breaking,
                format!("{at} may now be null"),
            )),
            (true, false, Dir::Request) => Some((
                "request-became-not-nullable",
                Level::Breaking,
                format!("{at} may no longer be null"),
            )),
            (false, true, Dir::Request) => Some((
                "request-became-nullable",
                Level::Info,
                format!("{at} may now be null"),
            )),
            (true, false, Dir::Response) => Some((
                "response-became-not-nullable",
                Level::Info,
                format!("{at} is no longer null"),
            )),
            _ => None,
        };
        if ot == nt && on == nn {
            // The same types, spelled either way (3.0 `nullable`, 3.1 lists).
            self.claim(kw("type"));
            self.claim(kw("nullable"));
        }
        if let Some((id, level, text)) = nullability {
            self.push(&kw("nullable"), id, level, text);
            if ot == nt {
                self.claim(kw("type"));
            }
        }
        // Types.
        if ot != nt && !(ot.is_empty() && nt.is_empty()) {
            let widened = nt.is_empty()
                || ot.is_subset(&nt)
                || (ot.contains("integer") && nt.contains("number") && ot.len() == 1);
            let narrowed = !nt.is_empty() && (ot.is_empty() || nt.is_subset(&ot))
                || (ot.contains("number") && nt.contains("integer") && nt.len() == 1);
            let (id, level) = match (dir, widened, narrowed) {
                (Dir::Request, true, _) => ("request-type-widened", Level::Info),
                (Dir::Response, _, true) => ("response-type-narrowed", Level::Info),
                (Dir::Request, _, _) => ("request-type-changed", Level::Breaking),
                (Dir::Response, _, _) => ("response-type-changed", Level::Breaking),
            };
            self.push(
                &kw("type"),
                id,
                level,
                format!("{at}: type {} → {}", fmt_types(&ot), fmt_types(&nt)),
            );
            self.claim(kw("nullable"));
        }
        // Enums.
        let oe = old.get("enum").and_then(Value::as_array);
        let ne = new.get("enum").and_then(Value::as_array);
        match (oe, ne) {
            (Some(oe), Some(ne)) => {
                for v in oe.iter().filter(|v| !ne.contains(v)) {
                    let (id, level) = if dir == Dir::Request {
                        ("request-enum-value-removed", Level::Breaking)
                    } else {
                        ("response-enum-value-removed", Level::Info)
                    };
                    self.push(
                        &kw("enum"),
                        id,
                        level,
                        format!("{at}: enum value {v} removed"),
                    );
                }
                for v in ne.iter().filter(|v| !oe.contains(v)) {
                    let (id, level) = if dir == Dir::Request {
                        ("request-enum-value-added", Level::Info)
                    } else {
                        ("response-enum-value-added", Level::Warn)
                    };
                    self.push(
                        &kw("enum"),
                        id,
                        level,
                        format!("{at}: enum value {v} added"),
                    );
                }
            }
            (None, Some(_)) => {
                let (id, level) = if dir == Dir::Request {
                    ("request-became-enum", Level::Breaking)
                } else {
                    ("response-became-enum", Level::Info)
                };
                self.push(&kw("enum"), id, level, format!("{at} became an enum"));
            }
            (Some(_), None) => {
                let (id, level) = if dir == Dir::Request {
                    ("request-enum-removed", Level::Info)
                } else {
                    ("response-enum-removed", Level::Warn)
                };
                self.push(&kw("enum"), id, level, format!("{at} is no longer an enum"));
            }
            (None, None) => {}
        }
        // Bounds: (keyword, larger-is-looser).
        for (name, upper) in [
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
            let (o, n) = (old.get(name), new.get(name));
            if o == n {
                continue;
            }
            // 3.0 spells exclusive bounds as booleans beside `maximum`:
            // compared as a change of their own.
            let looser = match (o.and_then(Value::as_f64), n.and_then(Value::as_f64)) {
                (Some(o), Some(n)) => Some(if upper { n > o } else { n < o }),
                _ if n.is_none() => Some(true),
                _ if o.is_none() => None, // newly set
                // 3.0's boolean `exclusiveMaximum`/`exclusiveMinimum`.
                _ => Some(n != Some(&Value::Bool(true))),
            };
            let (id, level, verb) = match (looser, dir) {
                (Some(false), Dir::Request) => {
                    ("request-bound-tightened", Level::Breaking, "tightened")
                }
                (Some(true), Dir::Request) => ("request-bound-loosened", Level::Info, "loosened"),
                (None, Dir::Request) => ("request-bound-set", Level::Warn, "set"),
                (Some(true), Dir::Response) => {
                    ("response-bound-loosened", Level::Breaking, "loosened")
                }
                (Some(false), Dir::Response) => {
                    ("response-bound-tightened", Level::Info, "tightened")
                }
                (None, Dir::Response) => ("response-bound-set", Level::Info, "set"),
            };
            self.push(
                &kw(name),
                id,
                level,
                format!("{at}: `{name}` {verb} ({} → {})", shown(o), shown(n)),
            );
        }
        match (old.get("pattern"), new.get("pattern"), dir) {
            (None, Some(_), Dir::Request) => self.push(
                &kw("pattern"),
                "request-pattern-added",
                Level::Breaking,
                format!("{at}: pattern added"),
            ),
            (Some(a), Some(b), Dir::Request) if a != b => self.push(
                &kw("pattern"),
                "request-pattern-changed",
                Level::Warn,
                format!("{at}: pattern changed"),
            ),
            (Some(_), None, Dir::Request) => self.push(
                &kw("pattern"),
                "request-pattern-removed",
                Level::Info,
                format!("{at}: pattern removed"),
            ),
            (a, b, Dir::Response) if a != b => self.push(
                &kw("pattern"),
                "response-pattern-changed",
                Level::Info,
                format!("{at}: pattern changed"),
            ),
            _ => {}
        }
        // additionalProperties (`false`; a schema there is compared below).
        let closed = |s: &Value| s.get("additionalProperties") == Some(&Value::Bool(false));
        match (closed(old), closed(new), dir) {
            (false, true, Dir::Request) => self.push(
                &kw("additionalProperties"),
                "request-additional-properties-forbidden",
                Level::Breaking,
                format!("{at}: additional properties are no longer allowed"),
            ),
            (false, true, Dir::Response) => self.push(
                &kw("additionalProperties"),
                "response-additional-properties-forbidden",
                Level::Info,
                format!("{at}: additional properties are no longer allowed"),
            ),
            (true, false, Dir::Request) => self.push(
                &kw("additionalProperties"),
                "request-additional-properties-allowed",
                Level::Info,
                format!("{at}: additional properties are now allowed"),
            ),
            (true, false, Dir::Response) => self.push(
                &kw("additionalProperties"),
                "response-additional-properties-allowed",
                Level::Warn,
                format!("{at}: additional properties may now be returned"),
            ),
            _ => {}
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
        let prop = |name: &str| format!("{ptr}/properties/{}", super::policy_tree::escape(name));
        for (name, ps) in np {
            let read_only = self.new.resolve(ps).get("readOnly") == Some(&Value::Bool(true));
            match op.get(name) {
                None => {
                    let required = nreq.contains(name.as_str());
                    let (id, level, text) = match (dir, required && !read_only) {
                        (Dir::Request, true) => (
                            "new-required-request-property",
                            Level::Breaking,
                            format!("{at}: new required property `{name}`"),
                        ),
                        (Dir::Request, false) => (
                            "new-optional-request-property",
                            Level::Info,
                            format!("{at}: new optional property `{name}`"),
                        ),
                        (Dir::Response, _) => (
                            "response-property-added",
                            Level::Info,
                            format!("{at}: property `{name}` added"),
                        ),
                    };
                    self.push(&prop(name), id, level, text);
                    if required {
                        self.claim(kw("required"));
                    }
                }
                Some(ops) => self.schema(
                    ops,
                    ps,
                    dir,
                    &format!("{at}/{name}"),
                    &prop(name),
                    depth + 1,
                ),
            }
        }
        for (name, _) in op {
            if !np.contains_key(name) {
                let was_required = oreq.contains(name.as_str());
                let (id, level, text) = match (dir, was_required) {
                    (Dir::Response, true) => (
                        "response-required-property-removed",
                        Level::Breaking,
                        format!("{at}: required property `{name}` removed"),
                    ),
                    (Dir::Response, false) => (
                        "response-optional-property-removed",
                        Level::Warn,
                        format!("{at}: optional property `{name}` removed"),
                    ),
                    (Dir::Request, _) => (
                        "request-property-removed",
                        Level::Warn,
                        format!("{at}: property `{name}` removed"),
                    ),
                };
                self.push(&prop(name), id, level, text);
                if was_required {
                    self.claim(kw("required"));
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
                    &kw("required"),
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
                    &kw("required"),
                    id,
                    level,
                    format!("{at}: property `{name}` became optional"),
                );
            }
        }
        // Schemas in schemas: items, a schema of additional properties.
        for (name, suffix) in [("items", "[]"), ("additionalProperties", "{*}")] {
            if let (Some(o), Some(n)) = (old.get(name), new.get(name)) {
                if o.is_object() && n.is_object() {
                    self.schema(o, n, dir, &format!("{at}{suffix}"), &kw(name), depth + 1);
                }
            }
        }
        // Compositions: branch counts; equal counts compared branch by branch.
        for name in ["oneOf", "anyOf", "allOf"] {
            let o = old.get(name).and_then(Value::as_array);
            let n = new.get(name).and_then(Value::as_array);
            let (ol, nl) = (o.map_or(0, Vec::len), n.map_or(0, Vec::len));
            if let (Some(o), Some(n), true) = (o, n, ol == nl) {
                for (i, (ob, nb)) in o.iter().zip(n).enumerate() {
                    let at = format!("{at} ({name} {})", i + 1);
                    self.schema(ob, nb, dir, &at, &format!("{}/{i}", kw(name)), depth + 1);
                }
                continue;
            }
            if ol == nl {
                continue;
            }
            let (id, level) = match (name, dir, nl < ol) {
                ("oneOf" | "anyOf", Dir::Request, true) => {
                    ("request-branch-removed", Level::Breaking)
                }
                ("oneOf" | "anyOf", Dir::Request, false) => ("request-branch-added", Level::Info),
                ("allOf", Dir::Request, false) => ("request-allof-added", Level::Breaking),
                ("oneOf", Dir::Response, false) => ("response-oneof-branch-added", Level::Breaking),
                ("anyOf", Dir::Response, false) => ("response-anyof-branch-added", Level::Info),
                ("allOf", Dir::Response, false) => ("response-allof-added", Level::Info),
                (_, Dir::Response, true) => ("response-branch-removed", Level::Info),
                _ => ("composition-changed", Level::Warn),
            };
            self.push(
                &kw(name),
                id,
                level,
                format!("{at}: {name} branches {ol} → {nl}"),
            );
        }
    }
}

/// The fields a reader sees but no check enforces: a change to them alone
/// is documentation.
const ANNOTATIONS: [&str; 11] = [
    "description",
    "summary",
    "title",
    "example",
    "examples",
    "externalDocs",
    "tags",
    "deprecated",
    "$comment",
    "xml",
    "x-",
];

fn is_annotation(ptr: &str) -> bool {
    let last = ptr.rsplit('/').next().unwrap_or("");
    ANNOTATIONS
        .iter()
        .any(|a| last == *a || (a.ends_with('-') && last.starts_with(a)))
        // A path parameter is matched by position; its name is a label.
        || (ptr.starts_with("/parameters/path:#") && last == "name" && ptr.matches('/').count() == 3)
}

impl Differ<'_> {
    /// Complete the operation's changes: every field of the operation (read
    /// with its `$ref`s inlined) that differs and that no change describes
    /// gets a line of its own — documentation, an operation id, or a field
    /// the classifier cannot judge — so nothing that differs goes unlisted.
    fn unclaimed(&mut self, old_item: &Value, old_op: &Value, new_item: &Value, new_op: &Value) {
        let o = operation_view(self.old, old_item, old_op);
        let n = operation_view(self.new, new_item, new_op);
        let mut fields = Vec::new();
        differing("", Some(&o), Some(&n), &mut fields);
        let mut docs = Vec::new();
        for (ptr, a, b) in fields {
            if self
                .claimed
                .iter()
                .any(|c| super::policy_tree::covers(c, &ptr))
            {
                continue;
            }
            if ptr == "/operationId" {
                self.push(
                    &ptr,
                    "operation-id-changed",
                    Level::Warn,
                    format!(
                        "operationId {} → {} (limits, mode overrides and telemetry name operations by id)",
                        shown(a.as_ref()),
                        shown(b.as_ref())
                    ),
                );
            } else if is_annotation(&ptr) {
                docs.push(ptr);
            } else {
                self.push(
                    &ptr,
                    "contract-field-changed",
                    Level::Warn,
                    format!(
                        "`{ptr}` changed ({} → {}); the classifier cannot tell whether this breaks clients",
                        shown(a.as_ref()),
                        shown(b.as_ref())
                    ),
                );
            }
        }
        if !docs.is_empty() {
            let listed: Vec<&str> = docs.iter().take(5).map(String::as_str).collect();
            let more = docs.len().saturating_sub(listed.len());
            let text = format!(
                "documentation changed: {}{}",
                listed.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            );
            self.push(&docs[0], "documentation-changed", Level::Info, text);
        }
    }
}

/// A value in a change's text, short.
fn shown(v: Option<&Value>) -> String {
    let s = super::policy_tree::spell(v);
    if s.chars().count() > 60 {
        format!("{}…", s.chars().take(60).collect::<String>())
    } else {
        s
    }
}

/// Fields that differ between two views: objects compared key by key,
/// anything else (arrays included) as one field; an object present on one
/// side only is one field.
fn differing(
    at: &str,
    o: Option<&Value>,
    n: Option<&Value>,
    out: &mut Vec<(String, Option<Value>, Option<Value>)>,
) {
    match (o, n) {
        (Some(Value::Object(o)), Some(Value::Object(n))) => {
            for (k, ov) in o {
                differing(
                    &format!("{at}/{}", super::policy_tree::escape(k)),
                    Some(ov),
                    n.get(k),
                    out,
                );
            }
            for (k, nv) in n {
                if !o.contains_key(k) {
                    differing(
                        &format!("{at}/{}", super::policy_tree::escape(k)),
                        None,
                        Some(nv),
                        out,
                    );
                }
            }
        }
        // Lists of schemas or parameters, item by item when only items changed.
        (Some(Value::Array(o)), Some(Value::Array(n)))
            if o.len() == n.len() && o != n && o.iter().chain(n).all(Value::is_object) =>
        {
            for (i, (ov, nv)) in o.iter().zip(n).enumerate() {
                differing(&format!("{at}/{i}"), Some(ov), Some(nv), out);
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push((at.to_string(), a.cloned(), b.cloned())),
    }
}

/// Nodes inlined into one operation view at most: a document whose
/// `$ref`s fan out beyond it is compared with the rest as references.
const VIEW_BUDGET: usize = 100_000;

/// An operation as the diff reads it: `$ref`s inlined (a cycle is left as
/// its reference), parameters of the path item and the operation merged
/// and keyed `in:name` (`path:#i` by position), order-free lists sorted.
fn operation_view(doc: &Doc<'_>, item: &Value, op: &Value) -> Value {
    let mut budget = VIEW_BUDGET;
    let mut stack = Vec::new();
    let mut out = serde_json::Map::new();
    if let Some(m) = op.as_object() {
        for (k, v) in m.iter().filter(|(k, _)| *k != "parameters") {
            out.insert(k.clone(), inline(doc, v, &mut stack, &mut budget));
        }
    }
    let mut params = serde_json::Map::new();
    let mut path_index = 0;
    for p in Differ::params(doc, item, op) {
        let loc = p.get("in").and_then(Value::as_str).unwrap_or("");
        let name = p.get("name").and_then(Value::as_str).unwrap_or("");
        let key = if loc == "path" {
            path_index += 1;
            format!("path:#{}", path_index - 1)
        } else {
            format!("{loc}:{}", name.to_ascii_lowercase())
        };
        params.insert(key, inline(doc, p, &mut stack, &mut budget));
    }
    if !params.is_empty() {
        out.insert("parameters".into(), Value::Object(params));
    }
    Value::Object(out)
}

fn inline(doc: &Doc<'_>, v: &Value, stack: &mut Vec<String>, budget: &mut usize) -> Value {
    if *budget == 0 {
        return v.clone();
    }
    *budget -= 1;
    match v {
        Value::Object(m) => {
            if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                if stack.iter().any(|s| s == r) {
                    return v.clone();
                }
                let target = doc.resolve(v);
                if std::ptr::eq(target, v) {
                    return v.clone();
                }
                stack.push(r.to_string());
                let out = inline(doc, target, stack, budget);
                stack.pop();
                return out;
            }
            let mut out = serde_json::Map::new();
            for (k, x) in m {
                let mut x = inline(doc, x, stack, budget);
                if matches!(k.as_str(), "required" | "enum" | "type") {
                    if let Value::Array(a) = &mut x {
                        a.sort_by_key(|i| i.to_string());
                    }
                }
                out.insert(k.clone(), x);
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| inline(doc, x, stack, budget)).collect()),
        other => other.clone(),
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
