//! Review rules: which approvals a set of changes needs.
//!
//! The rules of the bundle *in service* decide (a proposal cannot weaken the
//! rules that judge it). A change class takes the first rule naming it, else
//! the default; requirements on the same group merge to the largest count.
//! A change to the review rules themselves needs the strictest quorum any
//! rule asks for. Where no rule applies, the control plane adds a floor
//! no policy file can remove (`control::FLOOR_GROUP`).

use std::collections::BTreeMap;

use serde::Serialize;

use super::policy_diff::{Change, Class};

/// Approvals needed from one group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Requirement {
    /// Group.
    pub group: String,
    /// Approvals (distinct members, never the author).
    pub approvals: u32,
    /// The change classes that ask for it.
    pub classes: Vec<Class>,
}

pub use crate::policy::review_rules::ReviewRules;

/// The approvals `changes` need under `rules` (the rules of the bundle in
/// service).
pub fn required(rules: &ReviewRules, changes: &[Change]) -> Vec<Requirement> {
    let mut by_group: BTreeMap<String, Requirement> = BTreeMap::new();
    let mut add = |group: &str, approvals: u32, class: Class| {
        let r = by_group
            .entry(group.to_string())
            .or_insert_with(|| Requirement {
                group: group.to_string(),
                approvals: 0,
                classes: Vec::new(),
            });
        r.approvals = r.approvals.max(approvals);
        if !r.classes.contains(&class) {
            r.classes.push(class);
        }
    };
    for c in changes {
        if c.class == Class::ReviewRulesChanged {
            let all: Vec<(u32, &String)> = rules
                .rules
                .iter()
                .map(|(_, n, g)| (*n, g))
                .chain(rules.default.iter().map(|(n, g)| (*n, g)))
                .collect();
            let strictest = all.iter().map(|(n, _)| *n).max();
            for (n, g) in all {
                if Some(n) == strictest {
                    add(g, n, c.class);
                }
            }
            continue;
        }
        match rules
            .rules
            .iter()
            .find(|(classes, _, _)| classes.contains(&c.class))
        {
            Some((_, n, g)) => add(g, *n, c.class),
            None => {
                if let Some((n, g)) = &rules.default {
                    add(g, *n, c.class);
                }
            }
        }
    }
    by_group.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::ReviewSpec;

    fn spec() -> ReviewSpec {
        serde_yaml::from_str(
            "groups: { governance-board: [alice, bob, carol], platform: [dave, erin] }\n\
             rules:\n  - { classes: [contract.breaking, auth.removed], approvals: 2, group: governance-board }\n  - { classes: [limits.loosened, limits.tightened], approvals: 1, group: platform }\n\
             default: { approvals: 1, group: platform }\n",
        )
        .unwrap()
    }

    fn change(class: Class) -> Change {
        Change {
            class,
            app: "orders".into(),
            text: String::new(),
            contract: None,
            fields: Vec::new(),
        }
    }

    #[test]
    fn classes_map_to_merged_group_requirements() {
        let mut errors = Vec::new();
        let rules = ReviewRules::compile("review.yaml", &spec(), &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let req = required(
            &rules,
            &[
                change(Class::ContractBreaking),
                change(Class::AuthRemoved),
                change(Class::LimitsLoosened),
                change(Class::RouteAdded),
            ],
        );
        assert_eq!(req.len(), 2);
        assert_eq!(
            (req[0].group.as_str(), req[0].approvals),
            ("governance-board", 2)
        );
        assert_eq!(
            req[0].classes,
            vec![Class::ContractBreaking, Class::AuthRemoved]
        );
        assert_eq!((req[1].group.as_str(), req[1].approvals), ("platform", 1));
        assert!(required(&rules, &[]).is_empty());
    }

    #[test]
    fn changing_the_rules_needs_the_strictest_quorum() {
        let mut errors = Vec::new();
        let rules = ReviewRules::compile("review.yaml", &spec(), &mut errors);
        let req = required(&rules, &[change(Class::ReviewRulesChanged)]);
        assert_eq!(
            req,
            vec![Requirement {
                group: "governance-board".into(),
                approvals: 2,
                classes: vec![Class::ReviewRulesChanged]
            }]
        );
    }

    #[test]
    fn impossible_and_unknown_references_are_errors() {
        let mut bad = spec();
        bad.rules[0].approvals = 4;
        bad.rules[1].group = "nobody".into();
        bad.rules[1].classes.push("limits.relaxed".into());
        let mut errors = Vec::new();
        ReviewRules::compile("review.yaml", &bad, &mut errors);
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(
            text.iter().any(|e| e.contains(
                "/review/rules/0/group: 4 approvals from `governance-board` can never be met"
            )),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|e| e.contains("/review/rules/1/group: unknown reviewer group `nobody`")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|e| e
                    .contains("/review/rules/1/classes/2: unknown change class `limits.relaxed`")),
            "{text:?}"
        );
    }
}
