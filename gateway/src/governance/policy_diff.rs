//! Semantic diff of two policy bundles: typed changes with impact classes
//! (`docs/architecture.md` §7), the contract diff of every app's OpenAPI document
//! included. `gatehouse policy diff OLD NEW` prints it.

use serde::Serialize;

use super::contract_diff::{self, ContractChange, Level};
use super::policy_tree::{self, PolicyTree};
use crate::contract::{Mode, Undocumented};
use crate::policy::model::AuthMode;
use crate::policy::{App, Bundle, SourceFile};

pub use crate::policy::review_rules::Class;

/// One typed change.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    /// Impact class.
    pub class: Class,
    /// App (empty for bundle-wide changes).
    pub app: String,
    /// What changed.
    pub text: String,
    /// The contract change behind it, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contract: Option<ContractChange>,
    /// The settings it describes: pointers into the normalised policy
    /// (`/apps/orders/limits/submit`; key hashes shortened when shown).
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        serialize_with = "shortened_pointers"
    )]
    pub fields: Vec<String>,
}

fn shortened_pointers<S: serde::Serializer>(fields: &[String], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(fields.iter().map(|f| {
        f.split('/')
            .map(|seg| match seg.strip_prefix("sha256:") {
                Some(hex) if hex.len() > 8 => format!("sha256:{}…", &hex[..8]),
                _ => seg.to_string(),
            })
            .collect::<Vec<_>>()
            .join("/")
    }))
}

/// One side of a diff: a compiled bundle and the files it was compiled from.
#[derive(Clone, Copy)]
pub struct Side<'a> {
    /// The compiled bundle.
    pub bundle: &'a Bundle,
    /// Its source files.
    pub files: &'a [SourceFile],
}

type Push<'a> = dyn FnMut(Class, &str, String, Option<ContractChange>, Vec<String>) + 'a;

fn at(segments: &[&str]) -> String {
    policy_tree::pointer(segments)
}

/// Every change from `old` to `new`, sorted by class. Complete by
/// construction: every setting that differs between the two normalised
/// policies ([`policy_tree`]) is described by a typed change or listed on a
/// line of its own — `policy.unclassified`, naming the file and field —
/// whatever else changed.
pub fn diff(old: Side<'_>, new: Side<'_>) -> Vec<Change> {
    let (ot, nt) = (PolicyTree::build(old.files), PolicyTree::build(new.files));
    let (ob, nb) = (old.bundle, new.bundle);
    let mut out = Vec::new();
    let mut push = |class, app: &str, text: String, contract, fields: Vec<String>| {
        out.push(Change {
            class,
            app: app.to_string(),
            text,
            contract,
            fields,
        })
    };
    for o in &ob.apps {
        match nb.apps.iter().find(|n| n.name == o.name) {
            None => push(
                Class::RouteRemoved,
                &o.name,
                format!("app `{}` removed", o.name),
                None,
                vec![at(&["apps", &o.name])],
            ),
            Some(n) => app_diff((ob, &ot), o, (nb, &nt), n, &mut push),
        }
    }
    for n in &nb.apps {
        if !ob.apps.iter().any(|o| o.name == n.name) {
            push(
                Class::RouteAdded,
                &n.name,
                format!("app `{}` added ({} routes)", n.name, n.routes.len()),
                None,
                vec![at(&["apps", &n.name])],
            );
        }
    }
    consumer_diff(&ot, &nt, &mut push);
    review_diff(&ot, &nt, &mut push);
    document_diff(ob, nb, &mut push);
    plan_diff(ob, &ot, nb, &nt, &mut push);
    unread_contract_parts(ob, nb, &mut out);
    complete(&ot, &nt, &mut out);
    summarise_consumers(&mut out);
    if out.is_empty() && ob.version != nb.version {
        out.push(Change {
            class: Class::Unclassified,
            app: String::new(),
            text: format!(
                "the bundles differ ({} → {}) in a way no typed change describes; review the files",
                ob.short_version(),
                nb.short_version()
            ),
            contract: None,
            fields: Vec::new(),
        });
    }
    out.sort_by(|a, b| {
        a.class
            .cmp(&b.class)
            .then(a.app.cmp(&b.app))
            .then(a.text.cmp(&b.text))
    });
    out
}

/// The class of a changed setting no semantic check describes, by where
/// it sits (`*` matches one segment; a pattern covers what is below it).
const FIELD_CLASSES: &[(&str, Class)] = &[
    ("apps/*/owner", Class::MetadataChanged),
    ("apps/*/platform", Class::MetadataChanged),
    ("apps/*/description", Class::MetadataChanged),
    ("apps/*/contract/max_violations", Class::MetadataChanged),
    ("apps/*/forwarded", Class::UpstreamChanged),
    ("apps/*/strip_prefix", Class::UpstreamChanged),
    ("apps/*/upstream/health_check", Class::UpstreamChanged),
    ("apps/*/upstream/ejection", Class::UpstreamChanged),
    ("apps/*/auth/api_key", Class::AuthChanged),
    ("apps/*/auth/jwt", Class::AuthChanged),
    ("apps/*/routes/*/request_schema", Class::ContractUndecided),
    ("apps/*/routes/*/response_schema", Class::ContractUndecided),
    ("consumers/*/name", Class::MetadataChanged),
    ("consumers/*/keys/*/label", Class::MetadataChanged),
];

fn field_class(segments: &[String]) -> Option<Class> {
    FIELD_CLASSES.iter().find_map(|(pattern, class)| {
        let pat: Vec<&str> = pattern.split('/').collect();
        (segments.len() >= pat.len()
            && pat
                .iter()
                .zip(segments)
                .all(|(p, s)| *p == "*" || *p == s.as_str()))
        .then_some(*class)
    })
}

/// List every differing setting no change describes yet: by the table
/// above, else as `policy.unclassified` naming the file and field.
fn complete(ot: &PolicyTree, nt: &PolicyTree, out: &mut Vec<Change>) {
    // A field is covered by itself or by a field above it: look each up
    // with its ancestors (linear in the changes, also for a million).
    let covered: std::collections::HashSet<String> =
        out.iter().flat_map(|c| c.fields.iter().cloned()).collect();
    for f in policy_tree::changed(ot, nt) {
        let mut at = f.pointer.as_str();
        let is_covered = loop {
            if covered.contains(at) {
                break true;
            }
            match at.rfind('/') {
                Some(i) if i > 0 => at = &at[..i],
                _ => break false,
            }
        };
        if is_covered {
            continue;
        }
        let segs = policy_tree::segments(&f.pointer);
        let (section, name) = (
            segs.first().map_or("", String::as_str),
            segs.get(1).map_or("", String::as_str),
        );
        let field = segs.get(2..).map(|s| s.join(".")).unwrap_or_default();
        let (app, owner) = match section {
            "apps" => (name.to_string(), String::new()),
            "consumers" => (String::new(), format!("consumer `{name}`: ")),
            "plans" => (String::new(), format!("plan `{name}`: ")),
            _ => (String::new(), String::new()),
        };
        let values = format!(
            "{} → {}",
            policy_tree::spell(f.old.as_ref()),
            policy_tree::spell(f.new.as_ref())
        );
        let (class, text) = match field_class(&segs) {
            Some(class) => (class, format!("{owner}{field}: {values}")),
            None => {
                let place = nt
                    .origin(&f.pointer)
                    .or_else(|| ot.origin(&f.pointer))
                    .map(|(file, p)| format!("{file} {p}"))
                    .unwrap_or_else(|| "the policy files".into());
                (
                    Class::Unclassified,
                    format!(
                        "{place}: `{}` {values}; no typed change describes this, review the file",
                        f.pointer
                    ),
                )
            }
        };
        out.push(Change {
            class,
            app,
            text,
            contract: None,
            fields: vec![f.pointer],
        });
    }
}

/// Consumers added, removed, moved to another plan or set of apps, and
/// their credentials: keys (by label or hash prefix, never the hash) and
/// JWT subjects.
fn consumer_diff(ot: &PolicyTree, nt: &PolicyTree, push: &mut Push<'_>) {
    let old_ids = ot.names("consumers");
    let new_ids: std::collections::HashSet<&str> = nt.names("consumers").into_iter().collect();
    for id in &old_ids {
        if !new_ids.contains(id) {
            push(
                Class::ConsumerRemoved,
                "",
                format!("consumer `{id}` removed"),
                None,
                vec![at(&["consumers", id])],
            );
        }
    }
    let old_set: std::collections::HashSet<&str> = old_ids.iter().copied().collect();
    for id in nt.names("consumers") {
        if !old_set.contains(id) {
            push(
                Class::ConsumerAdded,
                "",
                format!("consumer `{id}` added"),
                None,
                vec![at(&["consumers", id])],
            );
            continue;
        }
        let get = |t: &PolicyTree, field: &str| t.get(&at(&["consumers", id, field])).cloned();
        for (field, what) in [("plan", "plan"), ("apps", "apps")] {
            let (o, n) = (get(ot, field), get(nt, field));
            if o != n {
                let all = |v: Option<&serde_json::Value>| match v {
                    None | Some(serde_json::Value::Null) if field == "apps" => "all".to_string(),
                    v => policy_tree::spell(v),
                };
                push(
                    Class::ConsumerChanged,
                    "",
                    format!(
                        "consumer `{id}`: {what} {} → {}",
                        all(o.as_ref()),
                        all(n.as_ref())
                    ),
                    None,
                    vec![at(&["consumers", id, field])],
                );
            }
        }
        credentials(id, ot, nt, push);
    }
}

fn credentials(id: &str, ot: &PolicyTree, nt: &PolicyTree, push: &mut Push<'_>) {
    let keys = |t: &PolicyTree| -> Vec<(String, Option<String>)> {
        t.get(&at(&["consumers", id, "keys"]))
            .and_then(serde_json::Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(h, v)| {
                        let label = v.get("label").and_then(|l| l.as_str()).map(str::to_string);
                        (h.clone(), label)
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let name = |(hash, label): &(String, Option<String>)| {
        let prefix: String = hash.trim_start_matches("sha256:").chars().take(8).collect();
        match label {
            Some(l) => format!("key `{l}` (sha256:{prefix}…)"),
            None => format!("key sha256:{prefix}…"),
        }
    };
    let (ok, nk) = (keys(ot), keys(nt));
    let revoked: Vec<&(String, Option<String>)> = ok
        .iter()
        .filter(|k| !nk.iter().any(|n| n.0 == k.0))
        .collect();
    let granted: Vec<&(String, Option<String>)> = nk
        .iter()
        .filter(|k| !ok.iter().any(|o| o.0 == k.0))
        .collect();
    for k in &revoked {
        push(
            Class::CredentialsRevoked,
            "",
            format!("consumer `{id}`: {} revoked", name(k)),
            None,
            vec![at(&["consumers", id, "keys", &k.0])],
        );
    }
    for k in &granted {
        let replaces = if revoked.is_empty() {
            String::new()
        } else {
            format!(
                ", replacing {}",
                revoked
                    .iter()
                    .map(|r| name(r))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        push(
            Class::CredentialsGranted,
            "",
            format!(
                "consumer `{id}`: {} granted{replaces} — whoever holds it acts as `{id}`",
                name(k)
            ),
            None,
            vec![at(&["consumers", id, "keys", &k.0])],
        );
    }
    let subjects = |t: &PolicyTree| -> Vec<String> {
        t.get(&at(&["consumers", id, "jwt_subjects"]))
            .and_then(serde_json::Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (os, ns) = (subjects(ot), subjects(nt));
    let added: Vec<&String> = ns.iter().filter(|s| !os.contains(s)).collect();
    let removed: Vec<&String> = os.iter().filter(|s| !ns.contains(s)).collect();
    let field = vec![at(&["consumers", id, "jwt_subjects"])];
    if !added.is_empty() {
        push(
            Class::CredentialsGranted,
            "",
            format!(
                "consumer `{id}`: JWT subjects {} added — tokens for them act as `{id}`",
                list(&added)
            ),
            None,
            field.clone(),
        );
    }
    if !removed.is_empty() {
        push(
            Class::CredentialsRevoked,
            "",
            format!("consumer `{id}`: JWT subjects {} removed", list(&removed)),
            None,
            field,
        );
    }
}

/// Review rules spelled out: who is in which group, what each rule asks.
fn review_diff(ot: &PolicyTree, nt: &PolicyTree, push: &mut Push<'_>) {
    use serde_json::Value;
    let present = |t: &PolicyTree| t.get("/review").filter(|v| !v.is_null()).cloned();
    let (o, n) = (present(ot), present(nt));
    let mut say = |text: String, field: &str| {
        push(
            Class::ReviewRulesChanged,
            "",
            text,
            None,
            vec![field.to_string()],
        )
    };
    let (o, n) = match (o, n) {
        (None, None) => return,
        (Some(_), None) => {
            say("review rules removed: every change now needs only the floor, one approval by a reviewer who is not the author".into(), "/review");
            return;
        }
        (None, Some(n)) => {
            let rules = n.get("rules").and_then(Value::as_array).map_or(0, Vec::len);
            say(format!("review rules added ({rules} rules)"), "/review");
            return;
        }
        (Some(o), Some(n)) => (o, n),
    };
    let empty = serde_json::Map::new();
    let groups = |v: &Value| {
        v.get("groups")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_else(|| empty.clone())
    };
    let (og, ng) = (groups(&o), groups(&n));
    let members = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|m| m.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut names: Vec<&String> = og.keys().chain(ng.keys()).collect();
    names.sort();
    names.dedup();
    for g in names {
        let (om, nm) = (members(og.get(g)), members(ng.get(g)));
        let field = at(&["review", "groups", g]);
        match (og.contains_key(g), ng.contains_key(g)) {
            (true, false) => say(format!("group `{g}` removed (was {})", list(&om)), &field),
            (false, true) => say(format!("group `{g}` added: {}", list(&nm)), &field),
            _ if om != nm => {
                let added: Vec<&String> = nm.iter().filter(|m| !om.contains(m)).collect();
                let gone: Vec<&String> = om.iter().filter(|m| !nm.contains(m)).collect();
                let mut parts = Vec::new();
                if !added.is_empty() {
                    parts.push(format!("{} added", list(&added)));
                }
                if !gone.is_empty() {
                    parts.push(format!("{} removed", list(&gone)));
                }
                say(
                    format!(
                        "group `{g}`: {} ({} → {} members)",
                        parts.join(", "),
                        om.len(),
                        nm.len()
                    ),
                    &field,
                );
            }
            _ => {}
        }
    }
    let rule = |r: Option<&Value>| match r {
        None => "no rule".to_string(),
        Some(r) => format!(
            "{} need {} approval(s) from `{}`",
            policy_tree::spell(r.get("classes")),
            policy_tree::spell(r.get("approvals")),
            policy_tree::spell(r.get("group"))
        ),
    };
    let rules = |v: &Value| {
        v.get("rules")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let (or, nr) = (rules(&o), rules(&n));
    for i in 0..or.len().max(nr.len()) {
        let (a, b) = (or.get(i), nr.get(i));
        if a != b {
            say(
                format!("rule {}: {} → {}", i + 1, rule(a), rule(b)),
                "/review/rules",
            );
        }
    }
    let default = |v: &Value| -> String {
        match v.get("default").filter(|d| !d.is_null()) {
            None => "none (the floor applies)".into(),
            Some(d) => format!(
                "{} approval(s) from `{}`",
                policy_tree::spell(d.get("approvals")),
                policy_tree::spell(d.get("group"))
            ),
        }
    };
    if o.get("default") != n.get("default") {
        say(
            format!("default rule: {} → {}", default(&o), default(&n)),
            "/review/default",
        );
    }
}

/// The paths of the documents of either bundle, sorted, once each.
fn document_paths<'a>(old: &'a Bundle, new: &'a Bundle) -> Vec<&'a str> {
    let mut paths: Vec<&str> = old
        .documents
        .iter()
        .chain(new.documents.iter())
        .map(|(p, _)| p)
        .collect();
    paths.sort_unstable();
    paths.dedup();
    paths
}

/// Does an app of either bundle have an OpenAPI contract?
fn uses_contracts(old: &Bundle, new: &Bundle) -> bool {
    old.apps
        .iter()
        .chain(&new.apps)
        .any(|a| a.contract.openapi.is_some())
}

/// Documents no contract diff looks at: per-route JSON Schemas and keys.
fn document_diff(old: &Bundle, new: &Bundle, push: &mut Push<'_>) {
    let contracts = uses_contracts(old, new);
    for path in document_paths(old, new) {
        if path.starts_with("contracts/") && contracts {
            // Contract documents (and what they `$ref`) are compared resolved,
            // operation by operation, by the contract diff.
            continue;
        }
        let (o, n) = (old.documents.get(path), new.documents.get(path));
        if o == n {
            continue;
        }
        let what = match (o, n) {
            (None, _) => "added",
            (_, None) => "removed",
            _ => "changed",
        };
        let class = if path.starts_with("keys/") {
            Class::AuthChanged
        } else {
            Class::ContractUndecided
        };
        push(
            class,
            "",
            format!("document `{path}` {what}"),
            None,
            Vec::new(),
        );
    }
}

/// Contract documents that differ where no operation reads (an unused
/// component, `info`, `servers`): listed, though they change no check.
fn unread_contract_parts(old: &Bundle, new: &Bundle, out: &mut Vec<Change>) {
    if out.iter().any(|c| c.contract.is_some()) {
        return;
    }
    if !uses_contracts(old, new) {
        return;
    }
    for path in document_paths(old, new) {
        if path.starts_with("contracts/") && old.documents.get(path) != new.documents.get(path) {
            out.push(Change {
                class: Class::ContractAdditive,
                app: String::new(),
                text: format!(
                    "document `{path}` changed where no operation reads it (no check changes)"
                ),
                contract: None,
                fields: Vec::new(),
            });
        }
    }
}

/// Plans: added, removed, their limits and quotas, with who is on them.
fn plan_diff(old: &Bundle, ot: &PolicyTree, new: &Bundle, nt: &PolicyTree, push: &mut Push<'_>) {
    let mut plans: Vec<&String> = old.plans.keys().chain(new.plans.keys()).collect();
    plans.sort();
    plans.dedup();
    for name in plans {
        let on_it = new
            .consumers
            .consumers
            .iter()
            .filter(|c| c.plan.as_deref() == Some(name.as_str()))
            .count();
        let owner = format!("plan `{name}` ({on_it} consumers on it)");
        let field = at(&["plans", name]);
        match (old.plans.get(name), new.plans.get(name)) {
            (None, Some(plan)) => {
                // Nobody is on a new plan yet: no existing caller is limited
                // more (consumers moving onto it are `consumer.changed`).
                push(
                    Class::PlanAdded,
                    "",
                    format!(
                        "plan `{name}` added ({} limits, {} quotas)",
                        plan.limits.len(),
                        plan.quotas.len()
                    ),
                    None,
                    vec![field],
                );
            }
            (Some(_), None) => push(
                Class::LimitsLoosened,
                "",
                format!("plan `{name}` removed: its limits and quotas no longer apply"),
                None,
                vec![field],
            ),
            (Some(o), Some(n)) => {
                if o.priority != n.priority {
                    // A higher priority is shed later: more room for the
                    // plan's consumers, less for everyone else's.
                    push(
                        if n.priority > o.priority {
                            Class::LimitsLoosened
                        } else {
                            Class::LimitsTightened
                        },
                        "",
                        format!(
                            "{owner}: shedding priority {} → {}",
                            o.priority.as_str(),
                            n.priority.as_str()
                        ),
                        None,
                        vec![at(&["plans", name, "priority"])],
                    );
                }
                let scope = Scope {
                    owner: &owner,
                    app: "",
                    base: at(&["plans", name, "limits"]),
                    old: ot,
                    new: nt,
                };
                limit_diff(&scope, &o.limits, &n.limits, push);
                quota_diff(&owner, name, ot, nt, push);
            }
            (None, None) => {}
        }
    }
}

fn quota_diff(owner: &str, plan: &str, ot: &PolicyTree, nt: &PolicyTree, push: &mut Push<'_>) {
    let quotas = |t: &PolicyTree| {
        t.get(&at(&["plans", plan, "quotas"]))
            .and_then(serde_json::Value::as_object)
            .cloned()
            .unwrap_or_default()
    };
    let (oq, nq) = (quotas(ot), quotas(nt));
    // Requests a quota admits per day, to compare across windows.
    let per_day = |q: &serde_json::Value| {
        let limit = q
            .get("limit")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0) as f64;
        match q.get("window").and_then(serde_json::Value::as_str) {
            Some("minute") => limit * 1440.0,
            Some("hour") => limit * 24.0,
            _ => limit,
        }
    };
    let spelled = |q: &serde_json::Value| {
        format!(
            "{}/{}",
            policy_tree::spell(q.get("limit")),
            policy_tree::spell(q.get("window"))
        )
    };
    let mut names: Vec<&String> = oq.keys().chain(nq.keys()).collect();
    names.sort();
    names.dedup();
    for q in names {
        let field = vec![at(&["plans", plan, "quotas", q])];
        match (oq.get(q), nq.get(q)) {
            (Some(o), None) => push(
                Class::LimitsLoosened,
                "",
                format!("{owner}: quota `{q}` ({}) removed", spelled(o)),
                None,
                field,
            ),
            (None, Some(n)) => push(
                Class::LimitsTightened,
                "",
                format!("{owner}: quota `{q}` ({}) added", spelled(n)),
                None,
                field,
            ),
            (Some(o), Some(n)) if o != n => {
                let class = if per_day(n) < per_day(o) {
                    Class::LimitsTightened
                } else {
                    Class::LimitsLoosened
                };
                push(
                    class,
                    "",
                    format!("{owner}: quota `{q}` {} → {}", spelled(o), spelled(n)),
                    None,
                    field,
                );
            }
            _ => {}
        }
    }
}

/// A setting's name as the policy files spell it (`enforce`, `required`).
fn word(v: &impl Serialize) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "?".into(),
    }
}

/// A list for a reader: `a, b`, or `none`.
fn list(items: &[impl AsRef<str>]) -> String {
    if items.is_empty() {
        return "none".into();
    }
    items
        .iter()
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Timeouts as the policy files spell them.
fn timeouts(t: &crate::policy::Timeouts) -> String {
    format!(
        "connect {}, read {}, total {}",
        humantime::format_duration(t.connect),
        humantime::format_duration(t.read),
        humantime::format_duration(t.total)
    )
}

/// A balancing algorithm as the policy files spell it.
fn balancing(b: &crate::policy::Balancing) -> String {
    match b {
        crate::policy::Balancing::RoundRobin => "round_robin".into(),
        crate::policy::Balancing::LeastConnections => "least_connections".into(),
        crate::policy::Balancing::ConsistentHash(h) => format!("consistent_hash on {h}"),
    }
}

fn app_diff(
    old: (&Bundle, &PolicyTree),
    o: &App,
    new: (&Bundle, &PolicyTree),
    n: &App,
    push: &mut Push<'_>,
) {
    let ((old_b, ot), (new_b, nt)) = (old, new);
    let app = o.name.as_str();
    let f = |rest: &[&str]| {
        let mut segs = vec!["apps", app];
        segs.extend_from_slice(rest);
        at(&segs)
    };
    // Routes (by method + shape of the template).
    let key = |r: &crate::policy::Route| {
        (
            r.method
                .as_ref()
                .map_or("ANY".to_string(), |m| m.to_string()),
            r.template.shape(),
        )
    };
    for r in &o.routes {
        if !n.routes.iter().any(|x| key(x) == key(r)) && o.contract.openapi.is_none() {
            push(
                Class::RouteRemoved,
                app,
                format!("route {} {} removed", key(r).0, r.template),
                None,
                vec![f(&["routes", &r.id])],
            );
        }
    }
    for r in &n.routes {
        if !o.routes.iter().any(|x| key(x) == key(r)) && n.contract.openapi.is_none() {
            push(
                Class::RouteAdded,
                app,
                format!("route {} {} added", key(r).0, r.template),
                None,
                vec![f(&["routes", &r.id])],
            );
        }
    }
    if o.case_insensitive_paths != n.case_insensitive_paths {
        // Either way, which requests a route-scoped policy covers changes.
        push(
            Class::EnforcementLoosened,
            app,
            format!(
                "case_insensitive_paths {} → {}",
                o.case_insensitive_paths, n.case_insensitive_paths
            ),
            None,
            vec![f(&["case_insensitive_paths"])],
        );
    }
    if o.passthrough != n.passthrough {
        let class = if n.passthrough {
            Class::EnforcementLoosened
        } else {
            Class::RouteRemoved
        };
        push(
            class,
            app,
            format!("passthrough {} → {}", o.passthrough, n.passthrough),
            None,
            vec![f(&["passthrough"])],
        );
    }
    // Hosts and prefixes: who reaches the app.
    for h in &o.hosts {
        if !n.hosts.contains(h) {
            push(
                Class::RouteRemoved,
                app,
                format!("host `{h}` removed"),
                None,
                vec![f(&["hosts"])],
            );
        }
    }
    for h in &n.hosts {
        if !o.hosts.contains(h) {
            push(
                Class::RouteAdded,
                app,
                format!("host `{h}` added"),
                None,
                vec![f(&["hosts"])],
            );
        }
    }
    if o.path_prefix != n.path_prefix {
        push(
            Class::RouteRemoved,
            app,
            format!(
                "path prefix `{}` → `{}` (paths under the old prefix stop answering)",
                o.path_prefix, n.path_prefix
            ),
            None,
            vec![f(&["path_prefix"])],
        );
    }
    // Body caps.
    let caps = std::iter::once((
        "app".to_string(),
        o.max_request_body,
        n.max_request_body,
        f(&["max_request_body"]),
    ))
    .chain(n.routes.iter().filter_map(|r| {
        let or = o.routes.iter().find(|x| x.id == r.id)?;
        Some((
            format!("route `{}`", r.id),
            or.max_request_body,
            r.max_request_body,
            f(&["routes", &r.id, "max_request_body"]),
        ))
    }))
    .chain([
        (
            "contract max_body".to_string(),
            o.contract.max_body,
            n.contract.max_body,
            f(&["contract", "max_body"]),
        ),
        (
            "contract max_response_body".to_string(),
            o.contract.max_response_body,
            n.contract.max_response_body,
            f(&["contract", "max_response_body"]),
        ),
    ]);
    for (what, a, b, field) in caps {
        if a != b {
            let class = if b < a {
                Class::LimitsTightened
            } else {
                Class::LimitsLoosened
            };
            push(
                class,
                app,
                format!("{what}: body cap {a} → {b} bytes"),
                None,
                vec![field],
            );
        }
    }
    // Upstream.
    let urls = |a: &App| {
        a.upstream
            .instances
            .iter()
            .map(|i| i.url.clone())
            .collect::<Vec<_>>()
    };
    if urls(o) != urls(n) || o.upstream.balancing != n.upstream.balancing {
        push(
            Class::UpstreamChanged,
            app,
            format!(
                "instances {} → {}, balancing {} → {}",
                urls(o).join(", "),
                urls(n).join(", "),
                balancing(&o.upstream.balancing),
                balancing(&n.upstream.balancing)
            ),
            None,
            vec![
                f(&["upstream", "instances"]),
                f(&["upstream", "balancing"]),
                f(&["upstream", "hash_header"]),
            ],
        );
    }
    if o.timeouts.connect != n.timeouts.connect
        || o.timeouts.read != n.timeouts.read
        || o.timeouts.total != n.timeouts.total
        || o.retries != n.retries
    {
        push(
            Class::UpstreamChanged,
            app,
            format!(
                "timeouts {}, {} retries → {}, {} retries",
                timeouts(&o.timeouts),
                o.retries,
                timeouts(&n.timeouts),
                n.retries
            ),
            None,
            vec![f(&["timeouts"]), f(&["retries"])],
        );
    }
    // Fences: what protects the app less, and what may refuse callers
    // sooner, each one change.
    let resilience = o.resilience.changes_to(&n.resilience);
    for (tighter, class) in [
        (false, Class::ResilienceLoosened),
        (true, Class::ResilienceTightened),
    ] {
        let texts: Vec<&str> = resilience
            .iter()
            .filter(|(t, _)| *t == tighter)
            .map(|(_, text)| text.as_str())
            .collect();
        if !texts.is_empty() {
            push(class, app, texts.join("; "), None, vec![f(&["resilience"])]);
        }
    }
    // Auth.
    let mode = |a: &App| a.auth.as_ref().map_or(AuthMode::None, |x| x.mode);
    let auth_field = vec![f(&["auth", "mode"])];
    match (mode(o), mode(n)) {
        (a, b) if a == b => {}
        (AuthMode::Required, _) | (AuthMode::Optional, AuthMode::None) => push(
            Class::AuthRemoved,
            app,
            format!("authentication {} → {}", word(&mode(o)), word(&mode(n))),
            None,
            auth_field,
        ),
        _ => push(
            Class::AuthAdded,
            app,
            format!("authentication {} → {}", word(&mode(o)), word(&mode(n))),
            None,
            auth_field,
        ),
    }
    // Enforcement: the mode each route ends up with, whichever setting
    // (app contract, operation override, route) decided it.
    let rank = |m: Mode| match m {
        Mode::Enforce => 2,
        Mode::Monitor => 1,
        Mode::Off => 0,
    };
    for r in &n.routes {
        if let Some(or) = o.routes.iter().find(|x| x.id == r.id) {
            for (what, a, b) in [
                ("request", or.request_mode, r.request_mode),
                ("response", or.response_mode, r.response_mode),
            ] {
                if a == b {
                    continue;
                }
                let class = if rank(b) < rank(a) {
                    Class::EnforcementLoosened
                } else {
                    Class::EnforcementTightened
                };
                push(
                    class,
                    app,
                    format!("`{}` {what} checks {} → {}", r.id, word(&a), word(&b)),
                    None,
                    vec![
                        f(&["contract", what]),
                        f(&["contract", "operations", &r.id, what]),
                        f(&["routes", &r.id, what]),
                    ],
                );
            }
        }
    }
    let und = |u: Undocumented| match u {
        Undocumented::Reject => 2,
        Undocumented::Monitor => 1,
        Undocumented::Allow => 0,
    };
    if n.contract.undocumented != o.contract.undocumented {
        let class = if und(n.contract.undocumented) < und(o.contract.undocumented) {
            Class::EnforcementLoosened
        } else {
            Class::EnforcementTightened
        };
        push(
            class,
            app,
            format!(
                "undocumented operations {} → {}",
                word(&o.contract.undocumented),
                word(&n.contract.undocumented)
            ),
            None,
            vec![f(&["contract", "undocumented"])],
        );
    }
    // Limits.
    let ol: Vec<_> = o.limits.iter().map(|l| l.rule.clone()).collect();
    let nl: Vec<_> = n.limits.iter().map(|l| l.rule.clone()).collect();
    let owner = format!("app `{app}`");
    let scope = Scope {
        owner: &owner,
        app,
        base: f(&["limits"]),
        old: ot,
        new: nt,
    };
    limit_diff(&scope, &ol, &nl, push);
    // Contract documents.
    match (&o.contract.openapi, &n.contract.openapi) {
        (Some(od), Some(nd)) => {
            let (old_doc, new_doc) = (
                contract_diff::Doc {
                    docs: &old_b.documents,
                    path: od,
                },
                contract_diff::Doc {
                    docs: &new_b.documents,
                    path: nd,
                },
            );
            let mut fields = vec![f(&["contract", "openapi"])];
            if od != nd {
                push(
                    Class::MetadataChanged,
                    app,
                    format!("contract document `{od}` → `{nd}`"),
                    None,
                    std::mem::take(&mut fields),
                );
            }
            for c in contract_diff::diff(&old_doc, &new_doc) {
                let mut class = match c.level {
                    Level::Breaking => Class::ContractBreaking,
                    Level::Warn => Class::ContractUndecided,
                    Level::Info => Class::ContractAdditive,
                };
                let mut text = format!("{} {}: {}", c.method, c.path, c.text);
                if let Some(id) = response_enforced(n, &c).filter(|_| c.narrows_responses()) {
                    class = Class::EnforcementImpact;
                    text.push_str(&format!(
                        " — `{id}` enforces its responses: one that no longer matches becomes a 502"
                    ));
                }
                push(class, app, text, Some(c), Vec::new());
            }
        }
        (Some(_), None) => push(
            Class::EnforcementLoosened,
            app,
            "contract removed".into(),
            None,
            vec![f(&["contract", "openapi"])],
        ),
        (None, Some(_)) => push(
            Class::EnforcementTightened,
            app,
            "contract added".into(),
            None,
            vec![f(&["contract", "openapi"])],
        ),
        (None, None) => {}
    }
}

/// The route of `app` that enforces the responses of the operation a
/// contract change names, if its responses are enforced.
fn response_enforced<'a>(app: &'a App, c: &ContractChange) -> Option<&'a str> {
    let shape = crate::routing::PathTemplate::parse(&c.path).map(|t| t.shape());
    app.routes
        .iter()
        .filter(|r| {
            r.method.as_ref().map(|m| m.as_str()) == Some(c.method.as_str())
                && shape.as_ref().is_ok_and(|s| *s == r.template.shape())
        })
        .find(|r| r.response_mode == Mode::Enforce)
        .map(|r| r.id.as_str())
}

/// Whose limits are compared, and where they sit in the policy trees.
struct Scope<'a> {
    owner: &'a str,
    app: &'a str,
    /// Pointer of the limits (`/apps/orders/limits`).
    base: String,
    old: &'a PolicyTree,
    new: &'a PolicyTree,
}

fn limit_diff(
    scope: &Scope<'_>,
    old: &[crate::limits::LimitRule],
    new: &[crate::limits::LimitRule],
    push: &mut Push<'_>,
) {
    let (owner, app) = (scope.owner, scope.app);
    let field = |id: &str, rest: &str| {
        let name = id.rsplit(':').next().unwrap_or(id);
        format!("{}/{}{rest}", scope.base, policy_tree::escape(name))
    };
    let per_sec = |r: &crate::limits::LimitRule| r.rate.count as f64 / r.rate.period.as_secs_f64();
    for o in old {
        let Some(n) = new.iter().find(|n| n.id == o.id) else {
            push(
                Class::LimitsLoosened,
                app,
                format!("{owner}: limit `{}` removed", o.id),
                None,
                vec![field(&o.id, "")],
            );
            continue;
        };
        let (a, b) = (per_sec(o), per_sec(n));
        if (b - a).abs() > f64::EPSILON || o.burst != n.burst {
            let pct = if a > 0.0 { (b - a) / a * 100.0 } else { 0.0 };
            let class = if b < a || n.burst < o.burst {
                Class::LimitsTightened
            } else {
                Class::LimitsLoosened
            };
            push(
                class,
                app,
                format!(
                    "{owner}: limit `{}` {a:.3}/s (burst {}) → {b:.3}/s (burst {}), {pct:+.0}%",
                    o.id, o.burst, n.burst
                ),
                None,
                vec![field(&o.id, "/rate"), field(&o.id, "/burst")],
            );
        }
        // What the limit counts by, and which routes it covers.
        let get = |t: &PolicyTree, rest: &str| t.get(&field(&o.id, rest)).cloned();
        let (or, nr) = (get(scope.old, "/rate"), get(scope.new, "/rate"));
        if or != nr && (b - a).abs() <= f64::EPSILON && o.burst == n.burst {
            push(
                Class::MetadataChanged,
                app,
                format!(
                    "{owner}: limit `{}` rate written {} → {} (the same rate and burst)",
                    o.id,
                    policy_tree::spell(or.as_ref()),
                    policy_tree::spell(nr.as_ref())
                ),
                None,
                vec![field(&o.id, "/rate")],
            );
        }
        let keying = |t: &PolicyTree| {
            let per = policy_tree::spell(get(t, "/per").as_ref());
            match get(t, "/header") {
                Some(serde_json::Value::String(h)) if per == "header" => {
                    format!("per header `{h}`")
                }
                _ => format!("per {per}"),
            }
        };
        let (ok, nk) = (keying(scope.old), keying(scope.new));
        if ok != nk {
            push(
                Class::LimitsLoosened,
                app,
                format!(
                    "{owner}: limit `{}` counted {ok} → {nk} (callers who shared one budget may each get their own)",
                    o.id
                ),
                None,
                vec![field(&o.id, "/per"), field(&o.id, "/header")],
            );
        }
        let routes = |t: &PolicyTree| -> Vec<String> {
            get(t, "/routes")
                .and_then(|v| v.as_array().cloned())
                .map(|a| {
                    a.iter()
                        .filter_map(|r| r.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let (or, nr) = (routes(scope.old), routes(scope.new));
        if or != nr {
            // Empty means every route.
            let dropped = !or.is_empty() && (nr.is_empty() || !or.iter().all(|r| nr.contains(r)))
                || or.is_empty();
            let class = if dropped {
                Class::LimitsLoosened
            } else {
                Class::LimitsTightened
            };
            let shown = |r: &[String]| {
                if r.is_empty() {
                    "every route".to_string()
                } else {
                    list(r)
                }
            };
            push(
                class,
                app,
                format!(
                    "{owner}: limit `{}` applies to {} → {}",
                    o.id,
                    shown(&or),
                    shown(&nr)
                ),
                None,
                vec![field(&o.id, "/routes")],
            );
        }
    }
    for n in new {
        if !old.iter().any(|o| o.id == n.id) {
            push(
                Class::LimitsTightened,
                app,
                format!("{owner}: limit `{}` added", n.id),
                None,
                vec![field(&n.id, "")],
            );
        }
    }
}

/// Consumer changes listed one by one at most this many times per class; a
/// bundle that onboards a million consumers is one line, not a million.
pub const CONSUMER_CHANGES_LISTED: usize = 50;

fn summarise_consumers(out: &mut Vec<Change>) {
    for class in [
        Class::ConsumerAdded,
        Class::ConsumerRemoved,
        Class::ConsumerChanged,
        Class::CredentialsGranted,
        Class::CredentialsRevoked,
    ] {
        let total = out.iter().filter(|c| c.class == class).count();
        if total <= CONSUMER_CHANGES_LISTED {
            continue;
        }
        let mut seen = 0;
        out.retain(|c| {
            if c.class != class {
                return true;
            }
            seen += 1;
            seen <= CONSUMER_CHANGES_LISTED
        });
        let what = serde_json::to_value(class)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        out.push(Change {
            class,
            app: String::new(),
            text: format!(
                "… and {} more ({total} {what} in all)",
                total - CONSUMER_CHANGES_LISTED
            ),
            contract: None,
            fields: Vec::new(),
        });
    }
}

#[cfg(test)]
mod tests;
