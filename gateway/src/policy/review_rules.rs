//! A bundle's review rules, compiled: reviewer groups, and which
//! approvals each impact class of a change needs. The impact classes are
//! the vocabulary the semantic diff ([`crate::governance::policy_diff`])
//! sorts changes into; the rules are evaluated against a diff by
//! [`crate::governance::review`].

use std::collections::BTreeMap;

use serde::Serialize;

use super::model::ReviewSpec;
use super::PolicyError;

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
    /// A narrower response contract on an operation whose responses are
    /// enforced: responses the app sends today may become 502s.
    #[serde(rename = "enforcement.impact")]
    EnforcementImpact,
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
    /// An app is fenced less: higher caps, breakers or stall detection
    /// off, a larger retry budget, its 5xx no longer counted.
    #[serde(rename = "resilience.loosened")]
    ResilienceLoosened,
    /// An app is fenced more: callers may be shed or answered for sooner.
    #[serde(rename = "resilience.tightened")]
    ResilienceTightened,
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
    /// A consumer's plan or apps changed.
    #[serde(rename = "consumer.changed")]
    ConsumerChanged,
    /// Someone new can act as a consumer: a key added (or replacing
    /// another), JWT subjects added.
    #[serde(rename = "credentials.granted")]
    CredentialsGranted,
    /// A key or JWT subject of a consumer no longer works.
    #[serde(rename = "credentials.revoked")]
    CredentialsRevoked,
    /// How credentials are presented or checked changed (key header or
    /// parameter, JWT settings, signing keys).
    #[serde(rename = "auth.changed")]
    AuthChanged,
    /// Owner, platform or description changed.
    #[serde(rename = "metadata.changed")]
    MetadataChanged,
    /// A return to an earlier version (its diff is listed beside it).
    #[serde(rename = "rollback")]
    Rollback,
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
                | Class::ResilienceTightened
                | Class::AuthAdded
                | Class::AuthChanged
                | Class::ConsumerRemoved
                | Class::CredentialsRevoked
                | Class::EnforcementImpact
        )
    }
}

/// Compiled review rules.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReviewRules {
    /// Group → members.
    pub groups: BTreeMap<String, Vec<String>>,
    /// Rules in order: the classes each names, approvals, group.
    pub(crate) rules: Vec<(Vec<Class>, u32, String)>,
    /// The rule for classes no rule names: approvals, group.
    pub(crate) default: Option<(u32, String)>,
    /// The source, for change detection.
    pub spec: Option<ReviewSpec>,
}

impl ReviewRules {
    /// Compile a `review` section, collecting errors at `file` `/review/...`.
    pub fn compile(file: &str, spec: &ReviewSpec, errors: &mut Vec<PolicyError>) -> ReviewRules {
        let mut out = ReviewRules {
            groups: spec.groups.clone(),
            spec: Some(spec.clone()),
            ..Default::default()
        };
        let check_group = |ptr: String,
                           group: &str,
                           approvals: u32,
                           errors: &mut Vec<PolicyError>| {
            match spec.groups.get(group) {
                None => errors.push(PolicyError::new(file, ptr, format!("unknown reviewer group `{group}`"))),
                Some(members) if approvals == 0 || approvals as usize > members.len() => errors.push(PolicyError::new(
                    file,
                    ptr,
                    format!("{approvals} approvals from `{group}` can never be met: it has {} member(s)", members.len()),
                )),
                Some(_) => {}
            }
        };
        for (i, r) in spec.rules.iter().enumerate() {
            check_group(
                format!("/review/rules/{i}/group"),
                &r.group,
                r.approvals,
                errors,
            );
            let mut classes = Vec::new();
            for (k, c) in r.classes.iter().enumerate() {
                match serde_json::from_value::<Class>(serde_json::Value::String(c.clone())) {
                    Ok(class) => classes.push(class),
                    Err(_) => errors.push(PolicyError::new(
                        file,
                        format!("/review/rules/{i}/classes/{k}"),
                        format!("unknown change class `{c}`"),
                    )),
                }
            }
            out.rules.push((classes, r.approvals, r.group.clone()));
        }
        if let Some(d) = &spec.default {
            check_group(
                "/review/default/group".into(),
                &d.group,
                d.approvals,
                errors,
            );
            out.default = Some((d.approvals, d.group.clone()));
        }
        out
    }

    /// The rule that names `class`, if one does (approvals, group).
    pub fn rule_for(&self, class: Class) -> Option<(u32, &str)> {
        self.rules
            .iter()
            .find(|(classes, _, _)| classes.contains(&class))
            .map(|(_, n, g)| (*n, g.as_str()))
    }
}
