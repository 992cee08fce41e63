//! Change review. Today: the semantic diff of bundles and contracts (the
//! classifier proposals and approvals will be built on) and the
//! hash-chained audit log.

pub mod audit;
pub mod contract_diff;
pub mod policy_diff;
pub mod review;
