//! The diff's cases: typed changes, their texts, and completeness.

use super::*;
use crate::governance::policy_tree::{self, PolicyTree};
use crate::policy::{compile, SourceFile};

const APP: &str = "version: 1\napps:\n  - name: hr\n    owner: hr@corp.example\n    description: People data.\n    hosts: [hr.corp.example, hr.eu.corp.example]\n    path_prefix: /api/hr\n    max_request_body: 64KiB\n    upstream: { instances: [\"http://127.0.0.1:9301\"] }\n    routes:\n      - { id: dept, method: GET, path: /departments }\n";

fn files(text: &str) -> Vec<SourceFile> {
    vec![SourceFile {
        path: "apps/hr.yaml".into(),
        text: text.into(),
    }]
}

/// The diff of two sets of files.
fn diff_files(old: &[SourceFile], new: &[SourceFile]) -> Vec<Change> {
    let (a, b) = (
        compile(old).expect("old compiles"),
        compile(new).expect("new compiles"),
    );
    diff(
        Side {
            bundle: &a,
            files: old,
        },
        Side {
            bundle: &b,
            files: new,
        },
    )
}

fn classes(old: &str, new: &str) -> Vec<(Class, String)> {
    diff_files(&files(old), &files(new))
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
        c.iter()
            .any(|(k, t)| *k == Class::LimitsTightened
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
        vec![
            SourceFile {
                path: "apps/hr.yaml".into(),
                text: APP.into(),
            },
            SourceFile {
                path: "consumers.yaml".into(),
                text: consumers(n),
            },
        ]
    };
    let changes = diff_files(&with(1), &with(500));
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
    assert_eq!(diff_files(&with(1), &with(3)).len(), 2);
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
    assert!(all.contains("platform: mendix → outsystems"), "{all}");
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
    // The description is metadata.
    let c = classes(APP, &APP.replace("People data.", "All people data."));
    assert_eq!(
        c,
        vec![(
            Class::MetadataChanged,
            "description: People data. → All people data.".into()
        )]
    );
    // Renaming a path parameter changes no route: nothing typed says so,
    // yet the file differs, so it is listed with its file and field.
    let with_param = APP.replace("path: /departments }", "path: \"/departments/{id}\" }");
    let c = classes(&with_param, &with_param.replace("{id}", "{dept}"));
    assert_eq!(c.len(), 1, "{c:?}");
    assert_eq!(c[0].0, Class::Unclassified);
    assert!(
        c[0].1
            .starts_with("apps/hr.yaml /apps/0: `/apps/hr/routes/dept/path`"),
        "{}",
        c[0].1
    );
    assert!(
        classes(APP, APP).is_empty(),
        "identical bundles have no changes"
    );
}

/// The shipped example bundle.
fn shipped() -> Vec<SourceFile> {
    crate::policy::load_dir(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../policies"
    )))
    .expect("policies/ loads")
}

/// `files` with `path`'s text edited.
fn edited(files: &[SourceFile], path: &str, edit: impl Fn(&str) -> String) -> Vec<SourceFile> {
    files
        .iter()
        .map(|f| SourceFile {
            path: f.path.clone(),
            text: if f.path == path {
                let t = edit(&f.text);
                assert_ne!(t, f.text, "the edit of {path} changed nothing");
                t
            } else {
                f.text.clone()
            },
        })
        .collect()
}

/// The pairs a board was shown only the innocuous half of: each change
/// must be listed, typed, whatever else the proposal changes.
#[test]
fn a_material_change_is_listed_beside_an_innocuous_one() {
    let base = shipped();
    let owner = |t: &str| t.replace("team-commerce@corp.example", "orders-team@corp.example");
    let key = "9c87711a24e85628380fe628543662cdfa91acfb8983855846da4753fec501fc";
    let cases: Vec<(&str, Vec<SourceFile>, Class, &str)> = vec![
        (
            "key swapped",
            edited(&base, "consumers.yaml", |t| t.replace(key, &"ab".repeat(32))),
            Class::CredentialsGranted,
            "consumer `acme-erp`: key `initial` (sha256:abababab…) granted, replacing key `initial` (sha256:9c87711a…)",
        ),
        (
            "limit moved to other routes",
            edited(&base, "apps/orders.yaml", |t| {
                t.replace("routes: [submitOrder]", "routes: [deleteOrder]")
            }),
            Class::LimitsLoosened,
            "app `orders`: limit `app:orders:submit` applies to submitOrder → deleteOrder",
        ),
        (
            "limit keyed by a header nobody sends",
            edited(&base, "apps/orders.yaml", |t| {
                t.replace("per: consumer, rate: 10/s", "per: header, header: x-never-sent, rate: 10/s")
            }),
            Class::LimitsLoosened,
            "counted per consumer → per header `x-never-sent`",
        ),
        (
            "quota raised a hundredfold beside a small rate change",
            edited(&base, "consumers.yaml", |t| {
                t.replace("limit: 50000, window: day", "limit: 5000000, window: day")
                    .replace("rate: 20/s, burst: 40", "rate: 21/s, burst: 40")
            }),
            Class::LimitsLoosened,
            "plan `bronze` (3 consumers on it): quota `daily` 50000/day → 5000000/day",
        ),
        (
            "JWT subjects widened",
            edited(&base, "consumers.yaml", |t| {
                t.replace("jwt_subjects: [\"hr-self-service\"]", "jwt_subjects: [\"hr-self-service\", \"any-client\"]")
            }),
            Class::CredentialsGranted,
            "consumer `corp-sso-users`: JWT subjects any-client added",
        ),
        (
            "a response bound on an enforced operation",
            edited(&base, "contracts/orders.openapi.yaml", |t| {
                t.replacen("total: { type: number", "total: { type: number, maximum: 100", 1)
            }),
            Class::EnforcementImpact,
            "submitOrder",
        ),
        (
            "review quorum lowered",
            edited(&base, "review.yaml", |t| t.replacen("approvals: 2", "approvals: 1", 1)),
            Class::ReviewRulesChanged,
            "need 2 approval(s) from `governance-board` → contract.breaking, route.removed, review_rules.changed need 1 approval(s)",
        ),
        (
            "a reviewer removed from the board",
            edited(&base, "review.yaml", |t| t.replace("[alice, bob, carol]", "[alice, bob]")),
            Class::ReviewRulesChanged,
            "group `governance-board`: carol removed (3 → 2 members)",
        ),
    ];
    for (what, files, class, text) in cases {
        for with_owner in [false, true] {
            let files = if with_owner {
                edited(&files, "apps/orders.yaml", owner)
            } else {
                files.clone()
            };
            let changes = diff_files(&base, &files);
            let shown: Vec<String> = changes
                .iter()
                .map(|c| format!("{:?} {}", c.class, c.text))
                .collect();
            assert!(
                changes
                    .iter()
                    .any(|c| c.class == class && c.text.contains(text)),
                "{what} (with owner edit: {with_owner}) is not listed as {class:?} `{text}`:\n{}",
                shown.join("\n")
            );
            assert!(
                !changes.iter().any(|c| c.class == Class::Unclassified),
                "{what}: {}",
                shown.join("\n")
            );
        }
    }
}

#[test]
fn deleting_the_review_rules_is_spelled_out() {
    let base = shipped();
    let files: Vec<SourceFile> = base
        .iter()
        .filter(|f| f.path != "review.yaml")
        .cloned()
        .collect();
    let c = diff_files(&base, &files);
    assert_eq!(c.len(), 1, "{c:?}");
    assert_eq!(c[0].class, Class::ReviewRulesChanged);
    assert!(c[0].text.contains("the floor"), "{}", c[0].text);
}

/// Candidate new values for a leaf: most will not compile, which is fine;
/// those that do must show in the diff.
fn candidates(v: &serde_json::Value) -> Vec<serde_json::Value> {
    use serde_json::{json, Value};
    const WORDS: [&[&str]; 8] = [
        &["enforce", "monitor", "off"],
        &["required", "optional", "none"],
        &["consumer", "ip", "app", "route", "header"],
        &["round_robin", "least_connections", "consistent_hash"],
        &["reject", "monitor", "allow"],
        &["minute", "hour", "day"],
        &["x-forwarded", "rfc7239", "none"],
        &["10/s", "600/m", "20/s"],
    ];
    match v {
        Value::Bool(b) => vec![json!(!b)],
        Value::Number(n) => {
            let x = n.as_u64().unwrap_or(1);
            vec![json!(x + 1), json!(x / 2)]
        }
        Value::String(s) => {
            let mut out = vec![json!(format!("{s}x"))];
            for set in WORDS {
                if set.contains(&s.as_str()) {
                    out.extend(set.iter().filter(|w| **w != s).map(|w| json!(w)));
                }
            }
            if let Some(d) = s.strip_suffix('s').and_then(|n| n.parse::<u64>().ok()) {
                out.push(json!(format!("{}s", d + 1)));
            }
            out
        }
        Value::Null => vec![json!(7), json!("x-new"), json!("probe")],
        Value::Array(a) if a.is_empty() => vec![json!(["x-new"])],
        Value::Array(a) => {
            let mut longer = a.clone();
            if let Some(Value::String(s)) = a.first() {
                longer.push(json!(format!("{s}2")));
            }
            vec![json!(a[..a.len() - 1]), json!(longer)]
        }
        Value::Object(_) => Vec::new(),
    }
}

/// Unset settings are absent from a file, not `null`.
fn strip_nulls(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(strip_nulls);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

fn leaves(v: &serde_json::Value, at: String, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) if !m.is_empty() => {
            for (k, x) in m {
                leaves(x, format!("{at}/{}", policy_tree::escape(k)), out);
            }
        }
        serde_json::Value::Array(a)
            if a.iter().all(serde_json::Value::is_object) && !a.is_empty() =>
        {
            for (i, x) in a.iter().enumerate() {
                leaves(x, format!("{at}/{i}"), out);
            }
        }
        _ => out.push(at),
    }
}

/// The oracle of completeness: change any one setting of any policy file
/// of the shipped bundle (with its defaults written out, so absent
/// settings are reached too) to any value that compiles. The diff is never
/// empty, every field that differs is covered by a change, none of them is
/// left unclassified, and an innocuous edit made beside it hides nothing.
#[test]
fn every_setting_of_every_policy_file_shows_in_the_diff() {
    use crate::policy::model::PolicyFile;
    let base = shipped();
    let base_tree = PolicyTree::build(&base);
    let old = compile(&base).expect("shipped compiles");
    let mut compiled = 0;
    let mut failures = Vec::new();
    for file in base.iter().filter(|f| !crate::policy::is_document(&f.path)) {
        let raw = crate::contract::documents::parse_text(&file.path, &file.text).expect("parses");
        let full: PolicyFile = serde_json::from_value(raw).expect("a policy file");
        let full = serde_json::to_value(&full).expect("serialises");
        let mut ptrs = Vec::new();
        leaves(&full, String::new(), &mut ptrs);
        for ptr in ptrs {
            if ptr == "/version" {
                continue;
            }
            let current = full.pointer(&ptr).cloned().unwrap_or_default();
            for value in candidates(&current).into_iter().filter(|v| *v != current) {
                let mut mutated = full.clone();
                if let Some(slot) = mutated.pointer_mut(&ptr) {
                    *slot = value.clone();
                }
                strip_nulls(&mut mutated);
                let files = edited(&base, &file.path, |_| mutated.to_string());
                let Ok(bundle) = crate::policy::compile(&files) else {
                    continue;
                };
                compiled += 1;
                let changes = diff(
                    Side {
                        bundle: &old,
                        files: &base,
                    },
                    Side {
                        bundle: &bundle,
                        files: &files,
                    },
                );
                let fields = policy_tree::changed(&base_tree, &PolicyTree::build(&files));
                let what = format!("{} {ptr} = {value}", file.path);
                if bundle.version != old.version && changes.is_empty() {
                    failures.push(format!("{what}: empty diff"));
                }
                for f in &fields {
                    if !changes
                        .iter()
                        .any(|c| c.fields.iter().any(|p| policy_tree::covers(p, &f.pointer)))
                    {
                        failures.push(format!("{what}: {} not covered", f.pointer));
                    }
                }
                for c in changes.iter().filter(|c| c.class == Class::Unclassified) {
                    failures.push(format!("{what}: unclassified: {}", c.text));
                }
                // The same change beside an owner edit of another app (for
                // every third mutation: each costs a compile).
                if compiled % 3 != 0 {
                    continue;
                }
                let other = if file.path == "apps/employees.yaml" {
                    "apps/orders.yaml"
                } else {
                    "apps/employees.yaml"
                };
                let beside = edited(&files, other, |t| t.replacen("owner: ", "owner: x", 1));
                let Ok(beside_bundle) = crate::policy::compile(&beside) else {
                    continue;
                };
                let together = diff(
                    Side {
                        bundle: &old,
                        files: &base,
                    },
                    Side {
                        bundle: &beside_bundle,
                        files: &beside,
                    },
                );
                for c in &changes {
                    if !together
                        .iter()
                        .any(|t| t.class == c.class && t.text == c.text)
                    {
                        failures.push(format!("{what}: `{}` hidden by an owner edit", c.text));
                    }
                }
            }
        }
    }
    assert!(
        compiled > 150,
        "only {compiled} mutations compiled: the oracle would prove little"
    );
    assert!(
        failures.is_empty(),
        "{} of {compiled} mutations:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The same oracle for contracts: a change to a sample of the settings of
/// the shipped OpenAPI documents (every other field, one new value each)
/// that still compiles is listed — typed where the classifier knows the
/// keyword, else as an undecided contract change naming the field — and
/// never as `policy.unclassified`.
#[test]
fn a_change_anywhere_in_a_contract_shows_in_the_diff() {
    let base = shipped();
    let old = compile(&base).expect("shipped compiles");
    let (mut compiled, mut failures) = (0, Vec::new());
    for path in ["contracts/orders.openapi.yaml", "contracts/common.yaml"] {
        let file = base.iter().find(|f| f.path == path).expect("shipped");
        let doc = crate::contract::documents::parse_text(path, &file.text).expect("parses");
        let mut ptrs = Vec::new();
        leaves(&doc, String::new(), &mut ptrs);
        for ptr in ptrs.iter().step_by(2) {
            let current = doc.pointer(ptr).cloned().unwrap_or_default();
            let Some(value) = candidates(&current).into_iter().find(|v| *v != current) else {
                continue;
            };
            let mut mutated = doc.clone();
            if let Some(slot) = mutated.pointer_mut(ptr) {
                *slot = value.clone();
            }
            let files = edited(&base, path, |_| mutated.to_string());
            let Ok(new) = compile(&files) else { continue };
            compiled += 1;
            let changes = diff(
                Side {
                    bundle: &old,
                    files: &base,
                },
                Side {
                    bundle: &new,
                    files: &files,
                },
            );
            let what = format!("{path} {ptr} = {value}");
            if changes.is_empty() {
                failures.push(format!("{what}: empty diff"));
            }
            for c in changes.iter().filter(|c| c.class == Class::Unclassified) {
                failures.push(format!("{what}: unclassified: {}", c.text));
            }
        }
    }
    assert!(compiled > 40, "only {compiled} mutations compiled");
    assert!(
        failures.is_empty(),
        "{} of {compiled}:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
