//! Change review. Today: the semantic diff of contracts (the classifier
//! proposals and approvals will be built on).

pub mod contract_diff;
pub mod policy_diff;
