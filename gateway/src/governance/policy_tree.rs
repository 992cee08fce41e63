//! The normalised settings tree of a bundle's policy files, and the fields
//! that differ between two of them: the ground truth the semantic diff is
//! checked against, so that no changed setting goes unlisted.
//!
//! Every setting a policy file can hold sits at one JSON pointer, keyed by
//! what names it rather than where it was written:
//!
//! ```text
//! /apps/<name>/…            hosts sorted; routes by id, limits by name
//! /consumers/<id>/…         keys by hash, JWT subjects and apps sorted
//! /plans/<name>/…           limits and quotas by name
//! /review/…                 groups (members sorted), rules, default
//! ```
//!
//! Defaults are filled in (a setting written out with its default value is
//! no change), sizes and durations are in their canonical form. Documents
//! (contracts, schemas, keys) are not in the tree: the diff compares them
//! itself, contracts operation by operation.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::policy::model::{ContractSpec, PolicyFile};
use crate::policy::SourceFile;

/// The normalised settings of a bundle and where each entity was written.
#[derive(Debug, Default)]
pub struct PolicyTree {
    root: Map<String, Value>,
    /// Entity pointer (`/apps/orders`) → (file, pointer in that file).
    origins: HashMap<String, (String, String)>,
}

/// One differing field: absent on one side when added or removed.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldChange {
    /// Pointer into the tree (`/apps/orders/limits/submit/per`).
    pub pointer: String,
    /// The old value.
    pub old: Option<Value>,
    /// The new value.
    pub new: Option<Value>,
}

/// Escape one pointer segment (RFC 6901).
pub fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// Undo [`escape`].
pub fn unescape(segment: &str) -> String {
    segment.replace("~1", "/").replace("~0", "~")
}

/// A pointer from segments.
pub fn pointer(segments: &[&str]) -> String {
    segments.iter().map(|s| format!("/{}", escape(s))).collect()
}

/// The segments of a pointer.
pub fn segments(pointer: &str) -> Vec<String> {
    pointer.split('/').skip(1).map(unescape).collect()
}

/// Is `pointer` the field `cover` or inside it?
pub fn covers(cover: &str, pointer: &str) -> bool {
    pointer == cover
        || (pointer.starts_with(cover) && pointer.as_bytes().get(cover.len()) == Some(&b'/'))
}

fn to_value(v: &impl Serialize) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// A list of named objects as an object keyed by `key(item)`.
fn keyed(list: Option<Value>, key: impl Fn(&Map<String, Value>) -> Option<String>) -> Value {
    let mut out = Map::new();
    if let Some(Value::Array(items)) = list {
        for item in items {
            if let Value::Object(mut m) = item {
                let Some(k) = key(&m) else { continue };
                m.remove("name");
                m.remove("id");
                out.insert(k, Value::Object(m));
            }
        }
    }
    Value::Object(out)
}

fn field(m: &Map<String, Value>, name: &str) -> Option<String> {
    m.get(name).and_then(Value::as_str).map(str::to_string)
}

fn sorted(v: Option<Value>, lowercase: bool) -> Value {
    match v {
        Some(Value::Array(items)) => {
            let mut items: Vec<Value> = items
                .into_iter()
                .map(|i| match i {
                    Value::String(s) if lowercase => Value::String(s.to_ascii_lowercase()),
                    other => other,
                })
                .collect();
            items.sort_by_key(|i| i.to_string());
            Value::Array(items)
        }
        Some(other) => other,
        None => Value::Null,
    }
}

fn insert(root: &mut Map<String, Value>, section: &str, key: String, value: Value) {
    if let Value::Object(m) = root
        .entry(section.to_string())
        .or_insert_with(|| Value::Object(Map::new()))
    {
        m.insert(key, value);
    }
}

impl PolicyTree {
    /// The tree of the policy files among `sources` (documents are skipped;
    /// a file that does not parse contributes nothing — the bundle compiled,
    /// so that cannot happen for a bundle's own files).
    pub fn build(sources: &[SourceFile]) -> PolicyTree {
        let mut tree = PolicyTree::default();
        for name in ["apps", "consumers", "plans"] {
            tree.root.insert(name.into(), Value::Object(Map::new()));
        }
        tree.root.insert("review".into(), Value::Null);
        for src in sources {
            if crate::policy::is_document(&src.path) {
                continue;
            }
            let Ok(value) = crate::contract::documents::parse_text(&src.path, &src.text) else {
                continue;
            };
            let Ok(file) = serde_json::from_value::<PolicyFile>(value) else {
                continue;
            };
            tree.add_file(&src.path, file);
        }
        tree
    }

    fn add_file(&mut self, path: &str, file: PolicyFile) {
        for (i, app) in file.apps.into_iter().enumerate() {
            let name = app.name.clone();
            // No contract section reads as the defaults it stands for.
            let contract = match &app.contract {
                Some(c) => to_value(c),
                None => serde_json::from_value::<ContractSpec>(Value::Object(Map::new()))
                    .map_or(Value::Null, |c| to_value(&c)),
            };
            let mut v = match to_value(&app) {
                Value::Object(m) => m,
                _ => continue,
            };
            v.remove("name");
            v.insert("contract".into(), contract);
            let hosts = sorted(v.remove("hosts"), true);
            v.insert("hosts".into(), hosts);
            let routes = keyed(v.remove("routes"), |r| {
                field(r, "id")
                    .or_else(|| Some(format!("{} {}", field(r, "method")?, field(r, "path")?)))
            });
            v.insert("routes".into(), routes);
            let limits = keyed(v.remove("limits"), |l| field(l, "name"));
            v.insert("limits".into(), limits);
            if let Some(Value::Object(limits)) = v.get_mut("limits") {
                for l in limits.values_mut() {
                    if let Value::Object(l) = l {
                        let routes = sorted(l.remove("routes"), false);
                        l.insert("routes".into(), routes);
                    }
                }
            }
            self.origins.insert(
                pointer(&["apps", &name]),
                (path.to_string(), format!("/apps/{i}")),
            );
            insert(&mut self.root, "apps", name, Value::Object(v));
        }
        for (i, c) in file.consumers.into_iter().enumerate() {
            let id = c.id.clone();
            let mut v = match to_value(&c) {
                Value::Object(m) => m,
                _ => continue,
            };
            v.remove("id");
            let mut keys = keyed(v.remove("keys"), |k| field(k, "hash"));
            if let Value::Object(keys) = &mut keys {
                for k in keys.values_mut() {
                    if let Value::Object(k) = k {
                        k.remove("hash");
                    }
                }
            }
            v.insert("keys".into(), keys);
            let subjects = sorted(v.remove("jwt_subjects"), false);
            v.insert("jwt_subjects".into(), subjects);
            let apps = sorted(v.remove("apps"), false);
            v.insert("apps".into(), apps);
            self.origins.insert(
                pointer(&["consumers", &id]),
                (path.to_string(), format!("/consumers/{i}")),
            );
            insert(&mut self.root, "consumers", id, Value::Object(v));
        }
        for (i, p) in file.plans.into_iter().enumerate() {
            let name = p.name.clone();
            let mut v = match to_value(&p) {
                Value::Object(m) => m,
                _ => continue,
            };
            v.remove("name");
            let limits = keyed(v.remove("limits"), |l| field(l, "name"));
            v.insert("limits".into(), limits);
            let quotas = keyed(v.remove("quotas"), |q| field(q, "name"));
            v.insert("quotas".into(), quotas);
            self.origins.insert(
                pointer(&["plans", &name]),
                (path.to_string(), format!("/plans/{i}")),
            );
            insert(&mut self.root, "plans", name, Value::Object(v));
        }
        if let Some(review) = file.review {
            let mut v = match to_value(&review) {
                Value::Object(m) => m,
                _ => return,
            };
            if let Some(Value::Object(groups)) = v.get_mut("groups") {
                for members in groups.values_mut() {
                    *members = sorted(Some(members.take()), false);
                }
            }
            self.origins
                .insert("/review".into(), (path.to_string(), "/review".into()));
            self.root.insert("review".into(), Value::Object(v));
        }
    }

    /// The value at `pointer`, if any.
    pub fn get(&self, pointer: &str) -> Option<&Value> {
        let mut segs = segments(pointer).into_iter();
        let first = segs.next()?;
        let mut at = self.root.get(&first)?;
        for s in segs {
            at = match at {
                Value::Object(m) => m.get(&s)?,
                Value::Array(a) => a.get(s.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(at)
    }

    /// Names of the entities in a section (`apps`, `consumers`, `plans`).
    pub fn names(&self, section: &str) -> Vec<&str> {
        match self.root.get(section) {
            Some(Value::Object(m)) => m.keys().map(String::as_str).collect(),
            _ => Vec::new(),
        }
    }

    /// The file an entity or field was written in, and the entity's
    /// pointer there (`apps/orders.yaml`, `/apps/0`), for a reader who
    /// opens the file.
    pub fn origin(&self, pointer: &str) -> Option<(&str, &str)> {
        let segs = segments(pointer);
        let entity = if segs.first().map(String::as_str) == Some("review") {
            "/review".to_string()
        } else {
            let s: Vec<&str> = segs.iter().take(2).map(String::as_str).collect();
            self::pointer(&s)
        };
        self.origins
            .get(&entity)
            .map(|(f, p)| (f.as_str(), p.as_str()))
    }
}

/// Every field that differs between `old` and `new`. Entities (an app, a
/// consumer, a plan) added or removed whole are one field; inside an
/// entity, an object present on one side only is listed leaf by leaf, so a
/// new `auth` section shows each setting it brings.
pub fn changed(old: &PolicyTree, new: &PolicyTree) -> Vec<FieldChange> {
    let mut out = Vec::new();
    for section in ["apps", "consumers", "plans"] {
        let empty = Map::new();
        let o = old.root.get(section).and_then(Value::as_object);
        let n = new.root.get(section).and_then(Value::as_object);
        let (o, n) = (o.unwrap_or(&empty), n.unwrap_or(&empty));
        for (name, ov) in o {
            let at = pointer(&[section, name]);
            match n.get(name) {
                None => out.push(FieldChange {
                    pointer: at,
                    old: Some(ov.clone()),
                    new: None,
                }),
                Some(nv) => walk(&at, Some(ov), Some(nv), &mut out),
            }
        }
        for (name, nv) in n {
            if !o.contains_key(name) {
                out.push(FieldChange {
                    pointer: pointer(&[section, name]),
                    old: None,
                    new: Some(nv.clone()),
                });
            }
        }
    }
    walk(
        "/review",
        old.root.get("review").filter(|v| !v.is_null()),
        new.root.get("review").filter(|v| !v.is_null()),
        &mut out,
    );
    out
}

fn walk(at: &str, old: Option<&Value>, new: Option<&Value>, out: &mut Vec<FieldChange>) {
    let old = old.filter(|v| !v.is_null());
    let new = new.filter(|v| !v.is_null());
    match (old, new) {
        (Some(Value::Object(o)), Some(Value::Object(n))) => {
            for (k, ov) in o {
                walk(&format!("{at}/{}", escape(k)), Some(ov), n.get(k), out);
            }
            for (k, nv) in n {
                if !o.contains_key(k) {
                    walk(&format!("{at}/{}", escape(k)), None, Some(nv), out);
                }
            }
        }
        (Some(Value::Object(o)), None) if !o.is_empty() => {
            let before = out.len();
            for (k, ov) in o {
                walk(&format!("{at}/{}", escape(k)), Some(ov), None, out);
            }
            if out.len() == before {
                // Nothing but unset fields inside: the object itself went.
                out.push(FieldChange {
                    pointer: at.to_string(),
                    old: old.cloned(),
                    new: None,
                });
            }
        }
        (None, Some(Value::Object(n))) if !n.is_empty() => {
            let before = out.len();
            for (k, nv) in n {
                walk(&format!("{at}/{}", escape(k)), None, Some(nv), out);
            }
            if out.len() == before {
                out.push(FieldChange {
                    pointer: at.to_string(),
                    old: None,
                    new: new.cloned(),
                });
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(FieldChange {
            pointer: at.to_string(),
            old: a.cloned(),
            new: b.cloned(),
        }),
    }
}

/// A value as the policy files spell it: strings bare, lists joined,
/// objects as `key: value` pairs, absent as `none`.
pub fn spell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "none".into(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) if a.is_empty() => "none".into(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|i| spell(Some(i)))
            .collect::<Vec<_>>()
            .join(", "),
        Some(Value::Object(m)) => {
            let parts: Vec<String> = m
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("{k}: {}", spell(Some(v))))
                .collect();
            format!("{{{}}}", parts.join(", "))
        }
        Some(other) => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(text: &str) -> PolicyTree {
        PolicyTree::build(&[SourceFile {
            path: "apps/a.yaml".into(),
            text: text.into(),
        }])
    }

    const APP: &str = "version: 1\napps:\n  - name: hr\n    owner: hr@corp.example\n    hosts: [B.example, a.example]\n    upstream: { instances: [\"http://127.0.0.1:9\"] }\n    routes:\n      - { id: dept, method: GET, path: /departments }\n    limits:\n      - { name: l, per: consumer, rate: 10/s, routes: [dept] }\nconsumers:\n  - { id: c1, name: C1, keys: [ { hash: \"sha256:aa\", label: primary } ] }\n";

    #[test]
    fn lists_of_named_things_are_keyed_and_defaults_filled_in() {
        let t = tree(APP);
        assert_eq!(
            t.get("/apps/hr/hosts"),
            Some(&serde_json::json!(["a.example", "b.example"]))
        );
        assert_eq!(
            t.get("/apps/hr/limits/l/per"),
            Some(&Value::from("consumer"))
        );
        assert_eq!(
            t.get("/apps/hr/routes/dept/path"),
            Some(&"/departments".into())
        );
        assert_eq!(t.get("/apps/hr/retries"), Some(&Value::from(2)));
        assert_eq!(
            t.get("/consumers/c1/keys/sha256:aa/label"),
            Some(&"primary".into())
        );
        assert_eq!(
            t.origin("/apps/hr/limits/l/per"),
            Some(("apps/a.yaml", "/apps/0"))
        );
        // Writing a default out, or reordering hosts, is no change.
        let same = APP
            .replace("[B.example, a.example]", "[a.example, b.example]")
            .replace("    routes:", "    retries: 2\n    routes:");
        assert!(changed(&t, &tree(&same)).is_empty());
    }

    #[test]
    fn each_differing_leaf_is_one_field() {
        let t = tree(APP);
        let n = tree(
            &APP.replace("per: consumer", "per: ip")
                .replace("sha256:aa", "sha256:bb")
                .replace("    limits:", "    auth: { mode: optional }\n    limits:"),
        );
        let ptrs: Vec<String> = changed(&t, &n).into_iter().map(|f| f.pointer).collect();
        assert!(
            ptrs.contains(&"/apps/hr/limits/l/per".to_string()),
            "{ptrs:?}"
        );
        assert!(
            ptrs.contains(&"/consumers/c1/keys/sha256:aa/label".to_string()),
            "{ptrs:?}"
        );
        assert!(
            ptrs.contains(&"/consumers/c1/keys/sha256:bb/label".to_string()),
            "{ptrs:?}"
        );
        assert!(ptrs.contains(&"/apps/hr/auth/mode".to_string()), "{ptrs:?}");
        // A key without a label is still a field of its own.
        let bare = tree(&APP.replace(", label: primary", ""));
        let other = tree(
            &APP.replace(", label: primary", "")
                .replace("sha256:aa", "sha256:cc"),
        );
        let ptrs: Vec<String> = changed(&bare, &other)
            .into_iter()
            .map(|f| f.pointer)
            .collect();
        assert_eq!(
            ptrs,
            [
                "/consumers/c1/keys/sha256:aa",
                "/consumers/c1/keys/sha256:cc"
            ]
        );
        assert!(covers("/apps/hr/auth", "/apps/hr/auth/mode"));
        assert!(!covers("/apps/hr/auth", "/apps/hr/authx"));
    }
}
