//! `gatehouse consumer`: new consumers and their keys.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use super::secret_file;

/// Run a `gatehouse consumer` command.
pub(crate) fn run(cmd: ConsumerCommand) -> ExitCode {
    match cmd {
        ConsumerCommand::Bulk {
            count,
            prefix,
            plan,
            keys_file,
        } => bulk_consumers(count, &prefix, plan.as_deref(), &keys_file),
        ConsumerCommand::New {
            id,
            name,
            plan,
            apps,
            label,
            key_file,
        } => new_consumer(
            &id,
            name.as_deref(),
            plan.as_deref(),
            &apps,
            label.as_deref(),
            key_file.as_deref(),
        ),
    }
}
#[derive(Subcommand, Debug)]
pub(crate) enum ConsumerCommand {
    /// Generate many consumers at once (load tests): keys to --keys-file
    /// (mode 0600, one per line), the policy file (JSON) to stdout.
    Bulk {
        /// How many.
        #[arg(long)]
        count: usize,
        /// Id prefix (ids are PREFIX-0000001 …).
        #[arg(long, default_value = "bench")]
        prefix: String,
        /// Plan for all of them.
        #[arg(long)]
        plan: Option<String>,
        /// Where the keys go.
        #[arg(long)]
        keys_file: PathBuf,
    },
    /// Generate an API key for a new consumer: the key is shown once (or
    /// written to --key-file); the policy entry, holding only its hash, goes
    /// to stdout.
    New {
        /// Consumer id.
        #[arg(long)]
        id: String,
        /// Display name (default: the id).
        #[arg(long)]
        name: Option<String>,
        /// Plan.
        #[arg(long)]
        plan: Option<String>,
        /// Allowed apps, comma-separated (default: all).
        #[arg(long, value_delimiter = ',')]
        apps: Vec<String>,
        /// Key label (rotation bookkeeping).
        #[arg(long)]
        label: Option<String>,
        /// Write the key to this file (mode 0600) instead of stderr.
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
}

pub(crate) fn new_consumer(
    id: &str,
    name: Option<&str>,
    plan: Option<&str>,
    apps: &[String],
    label: Option<&str>,
    key_file: Option<&std::path::Path>,
) -> ExitCode {
    let key = gatehouse::identity::generate_key();
    match key_file {
        Some(path) => {
            use std::io::Write;
            let written = secret_file(path).and_then(|mut f| writeln!(f, "{key}"));
            if let Err(e) = written {
                eprintln!("gatehouse: cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
            eprintln!("API key written to {} (only its hash goes in the policy).", path.display());
        }
        None => eprintln!("API key for `{id}` (shown once; store it now, only its hash goes in the policy):\n{key}"),
    }
    let q = |s: &str| serde_json::Value::from(s).to_string();
    let mut yaml = format!(
        "version: 1\nconsumers:\n  - id: {}\n    name: {}\n",
        q(id),
        q(name.unwrap_or(id))
    );
    if let Some(p) = plan {
        yaml.push_str(&format!("    plan: {}\n", q(p)));
    }
    if !apps.is_empty() {
        let list: Vec<String> = apps.iter().map(|a| q(a)).collect();
        yaml.push_str(&format!("    apps: [{}]\n", list.join(", ")));
    }
    yaml.push_str(&format!(
        "    keys:\n      - hash: {}\n",
        q(&gatehouse::identity::key_fingerprint(&key))
    ));
    if let Some(l) = label {
        yaml.push_str(&format!("        label: {}\n", q(l)));
    }
    say!("{yaml}");
    ExitCode::SUCCESS
}

pub(crate) fn bulk_consumers(
    count: usize,
    prefix: &str,
    plan: Option<&str>,
    keys_file: &std::path::Path,
) -> ExitCode {
    use std::io::Write;
    let mut keys = match secret_file(keys_file) {
        Ok(f) => std::io::BufWriter::new(f),
        Err(e) => {
            eprintln!("gatehouse: cannot write {}: {e}", keys_file.display());
            return ExitCode::FAILURE;
        }
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let _ = write!(out, "{{\"version\":1,\"consumers\":[");
    for i in 0..count {
        let key = gatehouse::identity::generate_key();
        if writeln!(keys, "{key}").is_err() {
            eprintln!("gatehouse: cannot write {}", keys_file.display());
            return ExitCode::FAILURE;
        }
        let mut entry = serde_json::json!({
            "id": format!("{prefix}-{i:07}"),
            "name": format!("{prefix} {i}"),
            "keys": [ { "hash": gatehouse::identity::key_fingerprint(&key) } ],
        });
        if let Some(p) = plan {
            entry["plan"] = p.into();
        }
        let _ = write!(out, "{}{entry}", if i == 0 { "" } else { "," });
    }
    let _ = writeln!(out, "]}}");
    if keys.flush().is_err() || out.flush().is_err() {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
