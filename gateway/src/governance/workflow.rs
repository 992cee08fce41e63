//! Proposals and their reviews: the pure rules of change review.
//!
//! ```text
//!            review(reject) ─────────────► rejected
//! propose ─► open ──(approvals met)──► approved ──activate──► activated
//!             │  └──────── withdraw ──────┴──► withdrawn
//!             └── another version activated (base gone) ──► superseded
//!
//! break-glass rollback ─► incident ──(a reviewer signs off)──► activated
//! ```
//!
//! A rollback is proposed like any change (its diff listed under a
//! `rollback` change); only a break-glass rollback switches at once, and it
//! leaves an `incident` item that stays open until a reviewer signs it.
//!
//! A proposal is judged by the review rules of the bundle that was active
//! when it was made (its *base*); activation requires that base to still be
//! active, so those are the rules in service. The groups' members are copied
//! into the proposal, so its tally never changes behind a reviewer's back.
//! An approval counts for a group when its reviewer is a member and is not
//! the author; each reviewer's latest verdict is the one that counts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::review::Requirement;

/// Where a proposal stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProposalState {
    /// Waiting for approvals.
    Open,
    /// Every required approval is there.
    Approved,
    /// A reviewer rejected it (final).
    Rejected,
    /// It became the active version (final).
    Activated,
    /// Its base is no longer active (final: re-propose).
    Superseded,
    /// Its author withdrew it (final).
    Withdrawn,
    /// Activated by a break-glass rollback; open until a reviewer other
    /// than the operator signs it off (then `activated`).
    Incident,
}

impl ProposalState {
    /// No further transitions.
    pub fn is_final(self) -> bool {
        !matches!(self, ProposalState::Open | ProposalState::Approved)
    }

    /// The name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            ProposalState::Open => "open",
            ProposalState::Approved => "approved",
            ProposalState::Rejected => "rejected",
            ProposalState::Activated => "activated",
            ProposalState::Superseded => "superseded",
            ProposalState::Withdrawn => "withdrawn",
            ProposalState::Incident => "incident",
        }
    }
}

/// A reviewer's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Approve.
    Approve,
    /// Reject (blocks the proposal).
    Reject,
}

/// One review.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Review {
    /// Reviewer (principal name).
    pub reviewer: String,
    /// Verdict.
    pub verdict: Verdict,
    /// Comment.
    pub comment: String,
    /// When (RFC 3339).
    pub at: String,
}

/// A proposed bundle version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    /// Sequential id.
    pub id: u64,
    /// Title.
    pub title: String,
    /// Author (principal name).
    pub author: String,
    /// When it was made (RFC 3339).
    pub created: String,
    /// The version active when it was made.
    pub base: String,
    /// The proposed version (a stored bundle).
    pub version: String,
    /// State.
    pub state: ProposalState,
    /// The typed changes from base to version (`policy diff --format json`).
    pub changes: serde_json::Value,
    /// Approvals required by the base's review rules.
    pub required: Vec<Requirement>,
    /// Members of the required groups, as the base's rules define them.
    pub groups: BTreeMap<String, Vec<String>>,
    /// Reviews, in order.
    pub reviews: Vec<Review>,
    /// When it was activated, superseded, rejected or withdrawn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed: Option<String>,
    /// An earlier proposal of the same version that was rejected, shown
    /// to reviewers so a rejection is not forgotten by proposing again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_before: Option<PriorRejection>,
    /// Members of the required groups who are not principals when it was
    /// made: named by the rules, yet no approval of theirs can arrive.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
}

/// A rejection of the same version in an earlier proposal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PriorRejection {
    /// The earlier proposal.
    pub proposal: u64,
    /// Who rejected it, with their reasons (`name: reason`).
    pub by: Vec<String>,
}

/// How one group's requirement stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupTally {
    /// Group.
    pub group: String,
    /// Approvals needed.
    pub needed: u32,
    /// Reviewers whose approval counts.
    pub counted: Vec<String>,
    /// Approvals that do not count here, with the reason.
    pub not_counted: Vec<String>,
}

/// The approvals a proposal has against what it needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// Every requirement is met.
    pub met: bool,
    /// Per group.
    pub groups: Vec<GroupTally>,
    /// What is missing, in words (empty when met).
    pub missing: Vec<String>,
}

impl Proposal {
    /// Each reviewer's latest verdict, in order of first review.
    fn latest(&self) -> Vec<&Review> {
        let mut out: Vec<&Review> = Vec::new();
        for r in &self.reviews {
            match out.iter_mut().find(|x| x.reviewer == r.reviewer) {
                Some(slot) => *slot = r,
                None => out.push(r),
            }
        }
        out
    }

    /// Count the approvals against the requirements.
    pub fn tally(&self) -> Tally {
        let latest = self.latest();
        let mut groups = Vec::new();
        let mut missing = Vec::new();
        for req in &self.required {
            let members = self.groups.get(&req.group).cloned().unwrap_or_default();
            let mut g = GroupTally {
                group: req.group.clone(),
                needed: req.approvals,
                counted: Vec::new(),
                not_counted: Vec::new(),
            };
            for r in latest.iter().filter(|r| r.verdict == Verdict::Approve) {
                if r.reviewer == self.author {
                    g.not_counted.push(format!(
                        "{}: the author cannot approve their own proposal",
                        r.reviewer
                    ));
                } else if !members.contains(&r.reviewer) {
                    g.not_counted
                        .push(format!("{}: not a member of {}", r.reviewer, req.group));
                } else {
                    g.counted.push(r.reviewer.clone());
                }
            }
            let have = g.counted.len() as u32;
            if have < req.approvals {
                let classes: Vec<String> = req
                    .classes
                    .iter()
                    .filter_map(|c| serde_json::to_value(c).ok())
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect();
                let eligible: Vec<&String> = members
                    .iter()
                    .filter(|m| **m != self.author && !g.counted.contains(m))
                    .collect();
                missing.push(format!(
                    "{} more approval(s) from {} ({} of {} for {}); eligible: {}",
                    req.approvals - have,
                    req.group,
                    have,
                    req.approvals,
                    classes.join(", "),
                    eligible
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            groups.push(g);
        }
        Tally {
            met: missing.is_empty(),
            groups,
            missing,
        }
    }

    /// Who rejected it, if anyone (latest verdicts).
    pub fn rejected_by(&self) -> Vec<String> {
        self.latest()
            .iter()
            .filter(|r| r.verdict == Verdict::Reject)
            .map(|r| r.reviewer.clone())
            .collect()
    }

    /// Record a review and move the state on (open ⇄ approved, → rejected;
    /// an incident is signed off by an approval that counts).
    pub fn add_review(&mut self, review: Review) {
        self.reviews.push(review);
        if self.state == ProposalState::Incident {
            if self.tally().met {
                self.state = ProposalState::Activated;
                self.closed = self.reviews.last().map(|r| r.at.clone());
            }
            return;
        }
        if self.state.is_final() {
            return;
        }
        if !self.rejected_by().is_empty() {
            self.state = ProposalState::Rejected;
            self.closed = self.reviews.last().map(|r| r.at.clone());
        } else if self.tally().met {
            self.state = ProposalState::Approved;
        } else {
            self.state = ProposalState::Open;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::governance::policy_diff::Class;

    fn proposal() -> Proposal {
        Proposal {
            id: 1,
            title: "drop legacy field".into(),
            author: "alice".into(),
            created: "2026-11-28T00:00:00Z".into(),
            base: "a".repeat(64),
            version: "b".repeat(64),
            state: ProposalState::Open,
            changes: serde_json::json!([]),
            required: vec![Requirement {
                group: "governance-board".into(),
                approvals: 2,
                classes: vec![Class::ContractBreaking],
            }],
            groups: BTreeMap::from([(
                "governance-board".to_string(),
                vec!["alice".into(), "bob".into(), "carol".into()],
            )]),
            reviews: Vec::new(),
            closed: None,
            rejected_before: None,
            not_principals: Vec::new(),
        }
    }

    fn review(who: &str, verdict: Verdict) -> Review {
        Review {
            reviewer: who.into(),
            verdict,
            comment: String::new(),
            at: "2026-11-28T00:00:01Z".into(),
        }
    }

    #[test]
    fn author_and_outsiders_do_not_count_and_two_members_approve() {
        let mut p = proposal();
        p.add_review(review("alice", Verdict::Approve));
        p.add_review(review("dave", Verdict::Approve));
        p.add_review(review("bob", Verdict::Approve));
        let t = p.tally();
        assert!(!t.met);
        assert_eq!(p.state, ProposalState::Open);
        assert_eq!(t.groups[0].counted, vec!["bob".to_string()]);
        assert_eq!(t.groups[0].not_counted.len(), 2, "{t:?}");
        assert_eq!(
            t.missing,
            vec!["1 more approval(s) from governance-board (1 of 2 for contract.breaking); eligible: carol".to_string()]
        );
        p.add_review(review("carol", Verdict::Approve));
        assert!(p.tally().met);
        assert_eq!(p.state, ProposalState::Approved);
    }

    #[test]
    fn a_rejection_is_final_and_repeated_approvals_count_once() {
        let mut p = proposal();
        p.add_review(review("bob", Verdict::Approve));
        p.add_review(review("bob", Verdict::Approve));
        assert_eq!(p.tally().groups[0].counted.len(), 1);
        p.add_review(review("carol", Verdict::Reject));
        assert_eq!(p.state, ProposalState::Rejected);
        p.add_review(review("carol", Verdict::Approve));
        assert_eq!(p.state, ProposalState::Rejected, "rejected stays rejected");
    }

    #[test]
    fn nothing_required_is_met_at_once() {
        let mut p = proposal();
        p.required.clear();
        assert!(p.tally().met);
    }
}
