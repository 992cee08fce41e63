//! Change review: the semantic diff of bundles and contracts, review rules,
//! proposals and their workflow, the state directory, the hash-chained audit
//! log, the control plane that ties them together, and the fleet follower.

pub mod audit;
pub mod audit_export;
pub mod contract_diff;
pub mod control;
pub mod follower;
pub mod policy_diff;
pub mod policy_tree;
pub mod principals;
pub mod review;
pub mod sso;
pub mod store;
pub mod workflow;
