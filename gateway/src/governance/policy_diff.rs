//! Semantic diff of two policy bundles: typed changes with impact classes
//! (DESIGN.md §5), the contract diff of every app's OpenAPI document
//! included. `gatehouse policy diff OLD NEW` prints it.

use serde::Serialize;

use super::contract_diff::{self, ContractChange, Level};
use crate::contract::{Mode, Undocumented};
use crate::policy::model::AuthMode;
use crate::policy::{App, Bundle};

/// Impact classes that review rules refer to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
pub enum Class {
    /// The review rules themselves changed (needs the strictest quorum).
    #[serde(rename = "review_rules.changed")]
    ReviewRulesChanged,
    /// A contract change that breaks clients.
    #[serde(rename = "contract.breaking")]
    ContractBreaking,
    /// A contract change that the contract alone cannot decide.
    #[serde(rename = "contract.undecided")]
    ContractUndecided,
    /// A safe contract change.
    #[serde(rename = "contract.additive")]
    ContractAdditive,
    /// Less is enforced (enforce → monitor/off, undocumented allowed).
    #[serde(rename = "enforcement.loosened")]
    EnforcementLoosened,
    /// More is enforced.
    #[serde(rename = "enforcement.tightened")]
    EnforcementTightened,
    /// Authentication removed or made optional.
    #[serde(rename = "auth.removed")]
    AuthRemoved,
    /// Authentication added or made required.
    #[serde(rename = "auth.added")]
    AuthAdded,
    /// A limit admits more.
    #[serde(rename = "limits.loosened")]
    LimitsLoosened,
    /// A limit admits less.
    #[serde(rename = "limits.tightened")]
    LimitsTightened,
    /// An app or route was added.
    #[serde(rename = "route.added")]
    RouteAdded,
    /// An app or route was removed.
    #[serde(rename = "route.removed")]
    RouteRemoved,
    /// Instances, balancing or timeouts changed.
    #[serde(rename = "upstream.changed")]
    UpstreamChanged,
    /// A consumer was added.
    #[serde(rename = "consumer.added")]
    ConsumerAdded,
    /// A plan was added (it limits only the consumers that move to it,
    /// each of which is a change of its own).
    #[serde(rename = "plan.added")]
    PlanAdded,
    /// A consumer was removed.
    #[serde(rename = "consumer.removed")]
    ConsumerRemoved,
    /// A consumer's keys, plan or apps changed.
    #[serde(rename = "consumer.changed")]
    ConsumerChanged,
    /// How credentials are presented or checked changed (key header or
    /// parameter, JWT settings, signing keys).
    #[serde(rename = "auth.changed")]
    AuthChanged,
    /// Owner, platform or description changed.
    #[serde(rename = "metadata.changed")]
    MetadataChanged,
    /// The bundles differ in a way no typed change describes (reviewed
    /// under the default rule, never silently).
    #[serde(rename = "policy.unclassified")]
    Unclassified,
}

impl Class {
    /// Does this class break existing clients?
    pub fn is_breaking(self) -> bool {
        matches!(
            self,
            Class::ContractBreaking
                | Class::RouteRemoved
                | Class::LimitsTightened
                | Class::AuthAdded
                | Class::AuthChanged
                | Class::ConsumerRemoved
        )
    }
}

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
}

/// Every change from `old` to `new`, sorted by class.
pub fn diff(old: &Bundle, new: &Bundle) -> Vec<Change> {
    let mut out = Vec::new();
    let mut push = |class, app: &str, text: String, contract| {
        out.push(Change {
            class,
            app: app.to_string(),
            text,
            contract,
        })
    };
    for o in &old.apps {
        match new.apps.iter().find(|n| n.name == o.name) {
            None => push(
                Class::RouteRemoved,
                &o.name,
                format!("app `{}` removed", o.name),
                None,
            ),
            Some(n) => app_diff(old, o, new, n, &mut push),
        }
    }
    for n in &new.apps {
        if !old.apps.iter().any(|o| o.name == n.name) {
            push(
                Class::RouteAdded,
                &n.name,
                format!("app `{}` added ({} routes)", n.name, n.routes.len()),
                None,
            );
        }
    }
    let (oc, nc) = (&old.consumers.consumers, &new.consumers.consumers);
    for c in oc {
        match new.consumers.by_id(&c.id).map(|i| &nc[i]) {
            None => push(
                Class::ConsumerRemoved,
                "",
                format!("consumer `{}` removed", c.id),
                None,
            ),
            Some(n) if n.plan != c.plan || n.apps != c.apps => push(
                Class::ConsumerChanged,
                "",
                format!(
                    "consumer `{}`: plan {} → {}, apps {} → {}",
                    c.id,
                    c.plan.as_deref().unwrap_or("none"),
                    n.plan.as_deref().unwrap_or("none"),
                    c.apps.as_deref().map_or("all".into(), list),
                    n.apps.as_deref().map_or("all".into(), list)
                ),
                None,
            ),
            Some(_) => {}
        }
    }
    for n in nc {
        if old.consumers.by_id(&n.id).is_none() {
            push(
                Class::ConsumerAdded,
                "",
                format!("consumer `{}` added", n.id),
                None,
            );
        }
    }
    if old.review.spec != new.review.spec {
        push(
            Class::ReviewRulesChanged,
            "",
            "review rules changed".into(),
            None,
        );
    }
    if old.consumers.key_count() != new.consumers.key_count() {
        push(
            Class::ConsumerChanged,
            "",
            format!(
                "API keys: {} → {}",
                old.consumers.key_count(),
                new.consumers.key_count()
            ),
            None,
        );
    }
    // Documents no contract diff looks at: per-route JSON Schemas and keys.
    let contracts: Vec<&String> = old
        .apps
        .iter()
        .chain(&new.apps)
        .filter_map(|a| a.contract.openapi.as_ref())
        .collect();
    let mut paths: Vec<&str> = old
        .documents
        .iter()
        .chain(new.documents.iter())
        .map(|(p, _)| p)
        .collect();
    paths.sort_unstable();
    paths.dedup();
    for path in paths {
        if path.starts_with("contracts/") && !contracts.is_empty() {
            // Contract documents (and what they `$ref`) are compared resolved,
            // per operation, by the contract diff.
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
        push(class, "", format!("document `{path}` {what}"), None);
    }
    let mut plans: Vec<&String> = old.plans.keys().chain(new.plans.keys()).collect();
    plans.sort();
    plans.dedup();
    for name in plans {
        let (o, n) = (old.plans.get(name), new.plans.get(name));
        if let (None, Some(plan)) = (o, n) {
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
            );
            continue;
        }
        let ol = o.map(|p| p.limits.as_slice()).unwrap_or_default();
        let nl = n.map(|p| p.limits.as_slice()).unwrap_or_default();
        limit_diff(&format!("plan `{name}`"), ol, nl, "", &mut push);
    }
    summarise_consumers(&mut out);
    if out.is_empty() && old.version != new.version {
        out.push(Change {
            class: Class::Unclassified,
            app: String::new(),
            text: format!(
                "the bundles differ ({} → {}) in a way no typed change describes; review the files",
                old.short_version(),
                new.short_version()
            ),
            contract: None,
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

type Push<'a> = dyn FnMut(Class, &str, String, Option<ContractChange>) + 'a;

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

fn app_diff(old_b: &Bundle, o: &App, new_b: &Bundle, n: &App, push: &mut Push<'_>) {
    let app = o.name.as_str();
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
            );
        }
    }
    for h in &n.hosts {
        if !o.hosts.contains(h) {
            push(Class::RouteAdded, app, format!("host `{h}` added"), None);
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
        );
    }
    // Body caps.
    let caps = std::iter::once(("app".to_string(), o.max_request_body, n.max_request_body))
        .chain(n.routes.iter().filter_map(|r| {
            let or = o.routes.iter().find(|x| x.id == r.id)?;
            Some((
                format!("route `{}`", r.id),
                or.max_request_body,
                r.max_request_body,
            ))
        }))
        .chain([
            (
                "contract max_body".to_string(),
                o.contract.max_body,
                n.contract.max_body,
            ),
            (
                "contract max_response_body".to_string(),
                o.contract.max_response_body,
                n.contract.max_response_body,
            ),
        ]);
    for (what, a, b) in caps {
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
            );
        }
    }
    // Settings compared as a whole.
    let settings = [
        (
            Class::UpstreamChanged,
            "forwarding headers",
            format!("{:?}", o.forwarded),
            format!("{:?}", n.forwarded),
        ),
        (
            Class::UpstreamChanged,
            "prefix stripping",
            o.strip_prefix.to_string(),
            n.strip_prefix.to_string(),
        ),
        (
            Class::UpstreamChanged,
            "health checks / ejection",
            format!("{:?} {:?}", o.upstream.health_check, o.upstream.ejection),
            format!("{:?} {:?}", n.upstream.health_check, n.upstream.ejection),
        ),
        (
            Class::EnforcementTightened,
            "violations reported",
            o.contract.max_violations.to_string(),
            n.contract.max_violations.to_string(),
        ),
        (
            Class::AuthChanged,
            "credential settings",
            auth_settings(o),
            auth_settings(n),
        ),
        (
            Class::MetadataChanged,
            "owner / platform",
            format!(
                "{} ({})",
                o.owner,
                o.platform.as_deref().unwrap_or("no platform")
            ),
            format!(
                "{} ({})",
                n.owner,
                n.platform.as_deref().unwrap_or("no platform")
            ),
        ),
    ];
    for (class, what, a, b) in settings {
        if a != b {
            push(class, app, format!("{what}: {a} → {b}"), None);
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
        );
    }
    // Auth.
    let mode = |a: &App| a.auth.as_ref().map_or(AuthMode::None, |x| x.mode);
    match (mode(o), mode(n)) {
        (a, b) if a == b => {}
        (AuthMode::Required, _) | (AuthMode::Optional, AuthMode::None) => push(
            Class::AuthRemoved,
            app,
            format!("authentication {} → {}", word(&mode(o)), word(&mode(n))),
            None,
        ),
        _ => push(
            Class::AuthAdded,
            app,
            format!("authentication {} → {}", word(&mode(o)), word(&mode(n))),
            None,
        ),
    }
    // Enforcement.
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
                if rank(b) < rank(a) {
                    push(
                        Class::EnforcementLoosened,
                        app,
                        format!("`{}` {what} checks {} → {}", r.id, word(&a), word(&b)),
                        None,
                    );
                } else if rank(b) > rank(a) {
                    push(
                        Class::EnforcementTightened,
                        app,
                        format!("`{}` {what} checks {} → {}", r.id, word(&a), word(&b)),
                        None,
                    );
                }
            }
        }
    }
    let und = |u: Undocumented| match u {
        Undocumented::Reject => 2,
        Undocumented::Monitor => 1,
        Undocumented::Allow => 0,
    };
    if und(n.contract.undocumented) < und(o.contract.undocumented) {
        push(
            Class::EnforcementLoosened,
            app,
            format!(
                "undocumented operations {} → {}",
                word(&o.contract.undocumented),
                word(&n.contract.undocumented)
            ),
            None,
        );
    }
    // Limits.
    let ol: Vec<_> = o.limits.iter().map(|l| l.rule.clone()).collect();
    let nl: Vec<_> = n.limits.iter().map(|l| l.rule.clone()).collect();
    limit_diff(&format!("app `{app}`"), &ol, &nl, app, push);
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
            for c in contract_diff::diff(&old_doc, &new_doc) {
                let class = match c.level {
                    Level::Breaking => Class::ContractBreaking,
                    Level::Warn => Class::ContractUndecided,
                    Level::Info => Class::ContractAdditive,
                };
                push(
                    class,
                    app,
                    format!("{} {}: {}", c.method, c.path, c.text),
                    Some(c),
                );
            }
        }
        (Some(_), None) => push(
            Class::EnforcementLoosened,
            app,
            "contract removed".into(),
            None,
        ),
        (None, Some(_)) => push(
            Class::EnforcementTightened,
            app,
            "contract added".into(),
            None,
        ),
        (None, None) => {}
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
        });
    }
}

/// How an app takes credentials (mode aside, which has its own classes).
fn auth_settings(a: &App) -> String {
    match &a.auth {
        None => "none".into(),
        Some(x) => format!(
            "key header {:?}, key query {:?}, jwt {:?}",
            x.api_key_header.as_ref().map(|h| h.as_str()),
            x.api_key_query,
            x.jwt
        ),
    }
}

fn limit_diff(
    owner: &str,
    old: &[crate::limits::LimitRule],
    new: &[crate::limits::LimitRule],
    app: &str,
    push: &mut Push<'_>,
) {
    let per_sec = |r: &crate::limits::LimitRule| r.rate.count as f64 / r.rate.period.as_secs_f64();
    for o in old {
        match new.iter().find(|n| n.id == o.id) {
            None => push(
                Class::LimitsLoosened,
                app,
                format!("{owner}: limit `{}` removed", o.id),
                None,
            ),
            Some(n) => {
                let (a, b) = (per_sec(o), per_sec(n));
                if (b - a).abs() > f64::EPSILON || o.burst != n.burst {
                    let pct = if a > 0.0 { (b - a) / a * 100.0 } else { 0.0 };
                    let class = if b < a || n.burst < o.burst {
                        Class::LimitsTightened
                    } else {
                        Class::LimitsLoosened
                    };
                    push(class, app, format!("{owner}: limit `{}` {a:.3}/s (burst {}) → {b:.3}/s (burst {}), {pct:+.0}%", o.id, o.burst, n.burst), None);
                }
            }
        }
    }
    for n in new {
        if !old.iter().any(|o| o.id == n.id) {
            push(
                Class::LimitsTightened,
                app,
                format!("{owner}: limit `{}` added", n.id),
                None,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{compile, SourceFile};

    const APP: &str = "version: 1\napps:\n  - name: hr\n    owner: hr@corp.example\n    description: People data.\n    hosts: [hr.corp.example, hr.eu.corp.example]\n    path_prefix: /api/hr\n    max_request_body: 64KiB\n    upstream: { instances: [\"http://127.0.0.1:9301\"] }\n    routes:\n      - { id: dept, method: GET, path: /departments }\n";

    fn bundle(text: &str) -> Bundle {
        compile(&[SourceFile {
            path: "apps/hr.yaml".into(),
            text: text.into(),
        }])
        .expect("compiles")
    }

    fn classes(old: &str, new: &str) -> Vec<(Class, String)> {
        diff(&bundle(old), &bundle(new))
            .into_iter()
            .map(|c| (c.class, c.text))
            .collect()
    }

    #[test]
    fn hosts_prefixes_caps_and_forwarding_are_typed() {
        let c = classes(APP, &APP.replace(", hr.eu.corp.example", ""));
        assert_eq!(
            c,
            vec![(
                Class::RouteRemoved,
                "host `hr.eu.corp.example` removed".into()
            )]
        );
        let c = classes(APP, &APP.replace("/api/hr", "/api/people"));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].0, Class::RouteRemoved, "{c:?}");
        let c = classes(APP, &APP.replace("64KiB", "16KiB"));
        assert!(
            c.iter().any(|(k, t)| *k == Class::LimitsTightened
                && t.starts_with("app: body cap 65536 → 16384")),
            "{c:?}"
        );
        let c = classes(
            APP,
            &APP.replace(
                "    upstream:",
                "    forwarded: { style: rfc7239 }\n    upstream:",
            ),
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].0, Class::UpstreamChanged, "{c:?}");
        let c = classes(APP, &APP.replace("hr@corp", "people@corp"));
        assert_eq!(c[0].0, Class::MetadataChanged, "{c:?}");
    }

    /// Which requests a route-scoped policy covers changes with the path
    /// reading: a typed change a reviewer sees.
    #[test]
    fn case_insensitive_paths_is_a_typed_change() {
        let c = classes(
            APP,
            &APP.replace(
                "    upstream:",
                "    case_insensitive_paths: true\n    upstream:",
            ),
        );
        assert_eq!(
            c,
            vec![(
                Class::EnforcementLoosened,
                "case_insensitive_paths false → true".into()
            )]
        );
    }

    #[test]
    fn many_consumer_changes_are_summarised() {
        let consumers = |n: usize| {
            let list: Vec<String> = (0..n)
                .map(|i| format!("  - {{ id: c{i}, name: C{i} }}"))
                .collect();
            format!("version: 1\nconsumers:\n{}\n", list.join("\n"))
        };
        let with = |n: usize| {
            compile(&[
                SourceFile {
                    path: "apps/hr.yaml".into(),
                    text: APP.into(),
                },
                SourceFile {
                    path: "consumers.yaml".into(),
                    text: consumers(n),
                },
            ])
            .expect("compiles")
        };
        let changes = diff(&with(1), &with(500));
        let added: Vec<&Change> = changes
            .iter()
            .filter(|c| c.class == Class::ConsumerAdded)
            .collect();
        assert_eq!(added.len(), CONSUMER_CHANGES_LISTED + 1);
        assert!(
            added
                .last()
                .unwrap()
                .text
                .contains("and 449 more (499 consumer.added in all)"),
            "{:?}",
            added.last()
        );
        assert_eq!(diff(&with(1), &with(3)).len(), 2);
    }

    #[test]
    fn changes_read_as_the_policy_files_spell_them() {
        let old = APP.replace(
            "    upstream:",
            "    platform: mendix\n    timeouts: { connect: 1s, read: 5s, total: 10s }\n    upstream:",
        );
        let new = old
            .replace("mendix", "outsystems")
            .replace("read: 5s", "read: 2s");
        let texts: Vec<String> = classes(&old, &new).into_iter().map(|(_, t)| t).collect();
        let all = texts.join("\n");
        assert!(
            all.contains("hr@corp.example (mendix) → hr@corp.example (outsystems)"),
            "{all}"
        );
        assert!(
            all.contains("timeouts connect 1s, read 5s, total 10s, 2 retries → connect 1s, read 2s, total 10s, 2 retries"),
            "{all}"
        );
        for debug in ["Some(", "Timeouts {", "RoundRobin", "Required"] {
            assert!(!all.contains(debug), "{debug} in {all}");
        }
    }

    #[test]
    fn a_new_plan_is_additive_and_moving_onto_it_is_a_consumer_change() {
        let plan = "plans:\n  - { name: tiny, limits: [ { name: burst, rate: 1/m, burst: 2 } ] }\n";
        let consumer = |plan: &str| format!("consumers:\n  - {{ id: c1, name: C1{plan} }}\n");
        let old = format!("{APP}{}", consumer(""));
        let added = format!("{APP}{plan}{}", consumer(""));
        let moved = format!("{APP}{plan}{}", consumer(", plan: tiny"));
        let c = classes(&old, &added);
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!(c[0].0, Class::PlanAdded);
        assert!(!c[0].0.is_breaking(), "onboarding a plan breaks nobody");
        let c = classes(&added, &moved);
        assert!(
            c.iter().any(|(class, _)| *class == Class::ConsumerChanged),
            "{c:?}"
        );
        // Tightening a plan someone may be on is still a tightening.
        let tighter = moved.replace("rate: 1/m, burst: 2", "rate: 1/m, burst: 1");
        let c = classes(&moved, &tighter);
        assert!(
            c.iter().any(|(class, _)| *class == Class::LimitsTightened),
            "{c:?}"
        );
    }

    #[test]
    fn a_difference_no_typed_change_describes_is_still_listed() {
        // The description is not part of the compiled app: nothing typed
        // covers it, yet the version differs, so it must be reviewed.
        let c = classes(APP, &APP.replace("People data.", "All people data."));
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!(c[0].0, Class::Unclassified);
        assert!(
            classes(APP, APP).is_empty(),
            "identical bundles have no changes"
        );
    }
}
