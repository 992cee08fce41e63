//! The audit log's heads, kept in a second place: every entry's sequence,
//! hash and signature are copied to ClickHouse (`audit_heads`), so that
//! `gatehouse audit verify FILE --clickhouse URL` detects a log rewritten
//! or cut short on the state directory, however consistently.
//!
//! The copy runs beside the control plane and never holds up an append:
//! it asks ClickHouse which entries of this log it already has and inserts
//! the rest from the verified file, every few seconds. With ClickHouse
//! away it waits and catches up; the node's own log holds each head too
//! (see [`super::audit`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::audit::{self, Entry};

/// One exported head, as stored in `audit_heads` (column order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clickhouse::Row)]
pub struct HeadRow {
    /// When the entry was written, seconds since the epoch.
    pub time: u32,
    /// The log: the hash of its first entry.
    pub log: String,
    /// Sequence.
    pub seq: u64,
    /// Entry hash.
    pub hash: String,
    /// Entry signature (hex), empty when unsigned.
    pub sig: String,
    /// Who.
    pub principal: String,
    /// What.
    pub action: String,
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct MaxSeq {
    seq: u64,
}

/// How often new entries are copied.
pub const EXPORT_INTERVAL: Duration = Duration::from_secs(2);

/// The log's id: the hash of its first entry (hex, so safe in SQL).
pub fn log_id(entries: &[Entry]) -> Option<&str> {
    entries
        .first()
        .map(|e| e.hash.as_str())
        .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn row(log: &str, e: &Entry) -> HeadRow {
    let time = humantime::parse_rfc3339_weak(&e.time)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs() as u32);
    HeadRow {
        time,
        log: log.to_string(),
        seq: e.seq,
        hash: e.hash.clone(),
        sig: e.sig.clone().unwrap_or_default(),
        principal: e.record.principal.clone(),
        action: e.record.action.clone(),
    }
}

/// Copies the heads of the log at `path` to `database.audit_heads`.
pub struct HeadExport {
    client: clickhouse::Client,
    path: PathBuf,
    database: String,
}

impl HeadExport {
    /// An exporter of the log at `path` (the database must pass the schema
    /// check: `db migrate` creates `audit_heads`).
    pub fn new(url: &str, database: &str, path: &Path) -> Self {
        Self {
            client: crate::telemetry::client(url, database),
            path: path.to_path_buf(),
            database: database.to_string(),
        }
    }

    /// Copy what ClickHouse lacks; returns how many heads were inserted.
    pub async fn once(&self) -> Result<usize, String> {
        let entries = tokio::task::spawn_blocking({
            let path = self.path.clone();
            move || audit::verify(&path)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("the audit log does not verify: {e}"))?;
        let Some(log) = log_id(&entries) else {
            return Ok(0);
        };
        let have = self
            .client
            .query(&format!(
                "SELECT toUInt64(max(seq)) AS seq FROM {}.audit_heads WHERE log = '{log}'",
                self.database
            ))
            .fetch_one::<MaxSeq>()
            .await
            .map_err(|e| e.to_string())?
            .seq;
        let fresh: Vec<&Entry> = entries.iter().filter(|e| e.seq > have).collect();
        if fresh.is_empty() {
            return Ok(0);
        }
        let mut insert = self
            .client
            .insert::<HeadRow>("audit_heads")
            .await
            .map_err(|e| e.to_string())?;
        for e in &fresh {
            insert
                .write(&row(log, e))
                .await
                .map_err(|e| e.to_string())?;
        }
        insert.end().await.map_err(|e| e.to_string())?;
        Ok(fresh.len())
    }

    /// Copy every [`EXPORT_INTERVAL`] until `stop` changes; the log is
    /// read again only when it grew or changed since the last copy.
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut failing = false;
        let mut copied: Option<(u64, std::time::SystemTime)> = None;
        loop {
            let now = std::fs::metadata(&self.path)
                .ok()
                .and_then(|m| Some((m.len(), m.modified().ok()?)));
            let result = if now.is_some() && now == copied {
                Ok(0)
            } else {
                self.once().await
            };
            match result {
                Ok(n) => {
                    if failing || n > 0 {
                        tracing::debug!(exported = n, "audit heads copied to ClickHouse");
                    }
                    failing = false;
                    copied = now;
                }
                Err(e) if !failing => {
                    tracing::warn!(error = %e, "cannot copy audit heads to ClickHouse; retrying");
                    failing = true;
                }
                Err(_) => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(EXPORT_INTERVAL) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

/// Check the log at `path` against the heads exported to ClickHouse: every
/// exported entry must still be in the file, unchanged, and the file must
/// reach the newest one. `log` names the log when its first entry may have
/// been rewritten (default: the file's own first hash).
pub async fn verify_against(
    url: &str,
    database: &str,
    path: &Path,
    log: Option<&str>,
) -> Result<usize, String> {
    let entries = audit::verify(path).map_err(|e| e.to_string())?;
    let log = match log {
        Some(l) if l.bytes().all(|b| b.is_ascii_hexdigit()) => l.to_string(),
        Some(l) => return Err(format!("`{l}` is not a log id (hex)")),
        None => log_id(&entries).ok_or("the log is empty")?.to_string(),
    };
    let client = crate::telemetry::client(url, database);
    let rows = client
        .query(&format!(
            "SELECT time, log, seq, hash, sig, principal, action FROM {database}.audit_heads WHERE log = '{log}' ORDER BY seq"
        ))
        .fetch_all::<HeadRow>()
        .await
        .map_err(|e| e.to_string())?;
    if rows.is_empty() {
        return Err(format!(
            "ClickHouse holds no heads of log {} — if this log was exported, its first entry was rewritten (name the log with --log-id)",
            &log[..12.min(log.len())]
        ));
    }
    for r in &rows {
        match entries.get((r.seq as usize).wrapping_sub(1)) {
            Some(e) if e.hash == r.hash => {}
            Some(_) => {
                return Err(format!(
                    "entry {} differs from the head exported when it was written",
                    r.seq
                ))
            }
            None => {
                return Err(format!(
                "the log ends at entry {} but entry {} was exported (entries removed from the end)",
                entries.len(),
                r.seq
            ))
            }
        }
    }
    Ok(rows.len())
}
