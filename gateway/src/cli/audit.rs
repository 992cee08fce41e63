//! `gatehouse audit`: verify the audit log, make a signing key.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use super::database_name;

/// Run a `gatehouse audit` command.
pub(crate) fn run(cmd: AuditCommand) -> ExitCode {
    match cmd {
        AuditCommand::Verify {
            file,
            head,
            public_key,
            signed_from,
            clickhouse,
            database,
            log_id,
        } => audit_verify(
            &file,
            head.as_deref(),
            public_key.as_deref(),
            signed_from,
            clickhouse
                .as_deref()
                .map(|url| (url, database.as_str(), log_id.as_deref())),
        ),
        AuditCommand::Keygen { out } => {
            match gatehouse::governance::audit::Signer::generate(&out) {
                Ok(public) => {
                    sayln!("{public}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("gatehouse: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}
#[derive(Subcommand, Debug)]
pub(crate) enum AuditCommand {
    /// Check the hash chain of an audit log: exit 0 when intact, 1 with the
    /// first broken line otherwise.
    Verify {
        /// The audit log (JSON lines).
        file: PathBuf,
        /// A head recorded earlier (`SEQ:HASH`, as printed by verify): the
        /// log must still contain it.
        #[arg(long)]
        head: Option<String>,
        /// The signing key's public half (64 hex digits, or a file holding
        /// them): every entry from --signed-from on must carry a valid
        /// signature.
        #[arg(long)]
        public_key: Option<String>,
        /// The first signed entry (entries before signing was turned on
        /// are unsigned).
        #[arg(long, default_value_t = 1, requires = "public_key")]
        signed_from: u64,
        /// Check against the heads the control plane copied to this
        /// ClickHouse (`audit_heads`): every exported entry must still be
        /// in the file, unchanged.
        #[arg(long)]
        clickhouse: Option<String>,
        /// ClickHouse database.
        #[arg(long, default_value = "gatehouse", value_parser = database_name)]
        database: String,
        /// The log's id in ClickHouse (the hash of its first entry, as
        /// verify prints it), when that entry itself may have been rewritten.
        #[arg(long, requires = "clickhouse")]
        log_id: Option<String>,
    },
    /// Generate an Ed25519 key for `serve --audit-signing-key`: the key
    /// (PKCS#8, mode 0600) to FILE, its public half to FILE.pub; prints the
    /// public key.
    Keygen {
        /// Where to write the key (outside the state directory).
        #[arg(long)]
        out: PathBuf,
    },
}

pub(crate) fn audit_verify(
    file: &std::path::Path,
    head: Option<&str>,
    public_key: Option<&str>,
    signed_from: u64,
    exported: Option<(&str, &str, Option<&str>)>,
) -> ExitCode {
    use gatehouse::governance::audit;
    let expected = match head {
        None => None,
        Some(h) => match h
            .split_once(':')
            .and_then(|(seq, hash)| Some((seq.parse().ok()?, hash)))
        {
            Some((seq, hash)) => Some(audit::Head {
                seq,
                hash: hash.to_string(),
            }),
            None => {
                eprintln!("gatehouse: --head is SEQ:HASH, as `audit verify` prints it");
                return ExitCode::from(2);
            }
        },
    };
    // A key given as a file holds the hex.
    let public_key = public_key.map(|k| {
        std::fs::read_to_string(k)
            .map(|t| t.trim().to_string())
            .unwrap_or_else(|_| k.to_string())
    });
    let checked = audit::verify(file).and_then(|entries| {
        if let Some(h) = &expected {
            audit::check_head(&entries, h)?;
        }
        if let Some(k) = &public_key {
            audit::verify_signatures(&entries, k, signed_from)?;
        }
        Ok(entries)
    });
    let exported = match (&checked, exported) {
        (Ok(_), Some((url, db, log))) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let result = match rt {
                Ok(rt) => rt.block_on(gatehouse::governance::audit_export::verify_against(
                    url, db, file, log,
                )),
                Err(e) => Err(e.to_string()),
            };
            match result {
                Ok(n) => format!(", {n} exported heads match"),
                Err(e) => {
                    sayln!("audit log {} is NOT intact: {e}", file.display());
                    return ExitCode::FAILURE;
                }
            }
        }
        _ => String::new(),
    };
    match checked {
        Ok(entries) => {
            sayln!(
                "ok: {} entries, chain intact{}{exported}{}",
                entries.len(),
                if public_key.is_some() {
                    ", signatures valid"
                } else {
                    ""
                },
                entries
                    .last()
                    .map(|e| format!(", head {}:{}", e.seq, e.hash))
                    .unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            sayln!("audit log {} is NOT intact: {e}", file.display());
            ExitCode::FAILURE
        }
    }
}
