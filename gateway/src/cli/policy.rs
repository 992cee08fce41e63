//! `gatehouse policy`: lint and diff offline; propose, review, activate
//! and roll back through the control plane ([`super::remote`]).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use super::remote;
use super::OutputFormat;

/// Run a `gatehouse policy` command.
pub(crate) fn run(cmd: PolicyCommand) -> ExitCode {
    match cmd {
        PolicyCommand::Lint { dir, format } => lint(&dir, format),
        PolicyCommand::Diff { old, new, format } => policy_diff(&old, &new, format),
        PolicyCommand::Propose { dir, title, remote } => remote::propose(&remote, &dir, &title),
        PolicyCommand::Review {
            id,
            approve,
            comment,
            remote,
            ..
        } => remote::review(&remote, id, approve, &comment),
        PolicyCommand::Activate { id, remote } => remote::activate(&remote, id),
        PolicyCommand::Withdraw { id, remote } => remote::withdraw(&remote, id),
        PolicyCommand::Rollback {
            to,
            reason,
            break_glass,
            remote,
        } => remote::rollback(&remote, to.as_deref(), &reason, break_glass),
        PolicyCommand::Show { id, remote } => remote::show(&remote, id),
        PolicyCommand::Status { remote } => remote::status(&remote),
        PolicyCommand::Log {
            after,
            principal,
            action,
            since,
            remote,
        } => remote::log(
            &remote,
            after,
            &[
                ("principal", principal),
                ("action", action),
                ("since", since),
            ],
        ),
        PolicyCommand::Schema => {
            sayln!("{}", gatehouse::policy::POLICY_SCHEMA);
            ExitCode::SUCCESS
        }
    }
}
#[derive(Subcommand, Debug)]
pub(crate) enum PolicyCommand {
    /// Check a bundle: schema, then semantics. Prints every error (exit 1) or a summary.
    Lint {
        /// Bundle directory.
        dir: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
    /// Print the JSON Schema of policy files.
    Schema,
    /// Propose a bundle directory as the next version (governed mode).
    Propose {
        /// Bundle directory.
        dir: PathBuf,
        /// What the change is for.
        #[arg(long)]
        title: String,
        #[command(flatten)]
        remote: remote::Remote,
    },
    /// Approve or reject a proposal.
    Review {
        /// Proposal id.
        id: u64,
        /// Approve.
        #[arg(long, conflicts_with = "reject", required_unless_present = "reject")]
        approve: bool,
        /// Reject (blocks the proposal for good).
        #[arg(long)]
        reject: bool,
        /// Comment.
        #[arg(long, default_value = "")]
        comment: String,
        #[command(flatten)]
        remote: remote::Remote,
    },
    /// Activate an approved proposal on every node.
    Activate {
        /// Proposal id.
        id: u64,
        #[command(flatten)]
        remote: remote::Remote,
    },
    /// Withdraw your proposal.
    Withdraw {
        /// Proposal id.
        id: u64,
        #[command(flatten)]
        remote: remote::Remote,
    },
    /// Propose a rollback to an earlier version (default: the previous
    /// one); it is reviewed and activated like any proposal.
    Rollback {
        /// Version (at least 8 hex digits).
        #[arg(long)]
        to: Option<String>,
        /// Why (required; recorded in the audit log).
        #[arg(long)]
        reason: String,
        /// Switch at once (incidents): flagged in the audit log, and an
        /// incident item stays open until a reviewer signs it off.
        #[arg(long)]
        break_glass: bool,
        #[command(flatten)]
        remote: remote::Remote,
    },
    /// Show a proposal: its changes, approvals and what is missing.
    Show {
        /// Proposal id.
        id: u64,
        #[command(flatten)]
        remote: remote::Remote,
    },
    /// The active version, its history and open proposals.
    Status {
        #[command(flatten)]
        remote: remote::Remote,
    },
    /// The audit trail.
    Log {
        /// Only entries after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Only entries of this principal (`anonymous`: unauthenticated calls).
        #[arg(long)]
        principal: Option<String>,
        /// Only entries of this action or those under it (`proposal`,
        /// `proposal.approve`, `bundle.rollback`).
        #[arg(long)]
        action: Option<String>,
        /// Only entries since this time: RFC 3339, or a duration ago (`2h`).
        #[arg(long)]
        since: Option<String>,
        #[command(flatten)]
        remote: remote::Remote,
    },
    /// List every change from OLD to NEW with its impact class; exit 1 when
    /// a change breaks clients (for CI), 0 otherwise, 2 when a bundle is invalid.
    Diff {
        /// The bundle in service.
        old: PathBuf,
        /// The proposed bundle.
        new: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
}

pub(crate) fn lint(dir: &std::path::Path, format: OutputFormat) -> ExitCode {
    match gatehouse::policy::load_and_compile(dir) {
        Ok(bundle) => {
            match format {
                OutputFormat::Text => sayln!(
                    "ok: {} files, {} apps, {} routes, {} instances; version {}",
                    bundle.files.len(),
                    bundle.apps.len(),
                    bundle.route_count(),
                    bundle
                        .apps
                        .iter()
                        .map(|a| a.upstream.instances.len())
                        .sum::<usize>(),
                    bundle.version
                ),
                OutputFormat::Json => sayln!(
                    "{}",
                    serde_json::json!({
                        "ok": true, "version": bundle.version, "files": bundle.files,
                        "apps": bundle.apps.len(), "routes": bundle.route_count(),
                    })
                ),
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            match format {
                OutputFormat::Text => {
                    for e in &errors.0 {
                        sayln!("{e}");
                    }
                    eprintln!("{} error(s); the bundle is not valid", errors.0.len());
                }
                OutputFormat::Json => {
                    sayln!("{}", serde_json::json!({ "ok": false, "errors": errors.0 }))
                }
            }
            ExitCode::FAILURE
        }
    }
}

pub(crate) fn policy_diff(
    old: &std::path::Path,
    new: &std::path::Path,
    format: OutputFormat,
) -> ExitCode {
    let load = |dir: &std::path::Path| {
        gatehouse::policy::load_dir(dir)
            .and_then(|files| gatehouse::policy::compile(&files).map(|b| (b, files)))
            .map_err(|errors| {
                eprintln!("gatehouse: {} is not a valid bundle:", dir.display());
                for e in &errors.0 {
                    eprintln!("  {e}");
                }
            })
    };
    let (Ok((a, af)), Ok((b, bf))) = (load(old), load(new)) else {
        return ExitCode::from(2);
    };
    use gatehouse::governance::policy_diff::{diff, Side};
    let changes = diff(
        Side {
            bundle: &a,
            files: &af,
        },
        Side {
            bundle: &b,
            files: &bf,
        },
    );
    let breaking = changes.iter().filter(|c| c.class.is_breaking()).count();
    // The rules of the bundle in service judge the change.
    let needed = gatehouse::governance::review::required(&a.review, &changes);
    match format {
        OutputFormat::Json => sayln!(
            "{}",
            serde_json::json!({ "from": a.version, "to": b.version, "breaking": breaking, "changes": changes, "approvals_needed": needed })
        ),
        OutputFormat::Text => {
            sayln!(
                "{} → {}: {} change(s), {breaking} breaking",
                a.short_version(),
                b.short_version(),
                changes.len()
            );
            for c in &changes {
                let class = serde_json::to_value(c.class)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                let fp = c
                    .contract
                    .as_ref()
                    .map(|x| format!(" [{}]", x.fingerprint))
                    .unwrap_or_default();
                let app = if c.app.is_empty() {
                    String::new()
                } else {
                    format!("{}: ", c.app)
                };
                sayln!(
                    "{}{class:<22} {app}{}{fp}",
                    if c.class.is_breaking() { "! " } else { "  " },
                    c.text
                );
            }
        }
    }
    if breaking > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
