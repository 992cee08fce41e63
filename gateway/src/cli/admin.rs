//! `gatehouse admin`: principals of a governed state directory.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use super::remote;
use super::secret_file;

/// Run a `gatehouse admin` command.
pub(crate) fn run(cmd: AdminCommand) -> ExitCode {
    match cmd {
        AdminCommand::AddPrincipal {
            state,
            name,
            roles,
            rotate,
            token_file,
        } => add_principal(&state, &name, &roles, rotate, token_file.as_deref()),
        AdminCommand::Principals { remote } => remote::principals(&remote),
        AdminCommand::CreatePrincipal {
            name,
            roles,
            expires_in,
            rotate,
            remote,
        } => remote::create_principal(&remote, &name, &roles, expires_in.as_deref(), rotate),
        AdminCommand::SetRoles {
            name,
            roles,
            remote,
        } => remote::set_roles(&remote, &name, &roles),
        AdminCommand::Revoke { name, remote } => remote::revoke(&remote, &name),
    }
}
#[derive(Subcommand, Debug)]
pub(crate) enum AdminCommand {
    /// Add a principal of the admin API (or rotate its token); the token is
    /// printed once, only its hash is stored.
    AddPrincipal {
        /// The state directory.
        #[arg(long, env = "GATEHOUSE_STATE")]
        state: PathBuf,
        /// Name (reviewer groups list principal names).
        #[arg(long)]
        name: String,
        /// Roles (repeat or comma-separate).
        #[arg(long = "role", value_enum, value_delimiter = ',', required = true)]
        roles: Vec<gatehouse::governance::principals::Role>,
        /// Replace the token (and roles) of an existing principal.
        #[arg(long)]
        rotate: bool,
        /// Write the token to this file (mode 0600) instead of stdout.
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// List the principals of a control plane (admin role).
    Principals {
        #[command(flatten)]
        remote: remote::Remote,
    },
    /// Create a principal over the admin API (or issue it a new token);
    /// the token is printed once, the step audited.
    CreatePrincipal {
        /// Name.
        #[arg(long)]
        name: String,
        /// Roles (repeat or comma-separate).
        #[arg(long = "role", value_enum, value_delimiter = ',', required = true)]
        roles: Vec<gatehouse::governance::principals::Role>,
        /// The token stops working after this long (`90d`).
        #[arg(long)]
        expires_in: Option<String>,
        /// Issue an existing principal a new token.
        #[arg(long)]
        rotate: bool,
        #[command(flatten)]
        remote: remote::Remote,
    },
    /// Change a principal's roles over the admin API (its token stays).
    SetRoles {
        /// Name.
        #[arg(long)]
        name: String,
        /// Roles (repeat or comma-separate).
        #[arg(long = "role", value_enum, value_delimiter = ',', required = true)]
        roles: Vec<gatehouse::governance::principals::Role>,
        #[command(flatten)]
        remote: remote::Remote,
    },
    /// Revoke a principal over the admin API: its token stops working.
    Revoke {
        /// Name.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        remote: remote::Remote,
    },
}

pub(crate) fn add_principal(
    state: &std::path::Path,
    name: &str,
    roles: &[gatehouse::governance::principals::Role],
    rotate: bool,
    token_file: Option<&std::path::Path>,
) -> ExitCode {
    let path = state.join("principals.json");
    let token = match gatehouse::governance::principals::add(&path, name, roles, rotate, None) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("gatehouse: {e}");
            return ExitCode::FAILURE;
        }
    };
    match token_file {
        Some(file) => {
            use std::io::Write;
            let written = secret_file(file).and_then(|mut f| writeln!(f, "{token}"));
            if let Err(e) = written {
                eprintln!("gatehouse: cannot write {}: {e}", file.display());
                return ExitCode::FAILURE;
            }
            eprintln!(
                "token for `{name}` written to {} (only its hash is stored)",
                file.display()
            );
        }
        None => {
            eprintln!("token for `{name}` (shown once; only its hash is stored):");
            sayln!("{token}");
        }
    }
    ExitCode::SUCCESS
}
