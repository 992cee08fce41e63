//! The audit log: append-only JSON lines, each entry holding the hash of the
//! previous one (a hash chain), so any edit, deletion, insertion or
//! reordering is detected by [`verify`].
//!
//! Entry hash = SHA-256 (hex) of the entry's JSON without its `hash` field,
//! fields in declaration order. The first entry's `prev` is 64 zeros. Appends
//! are fsynced; a torn last line (crash mid-write) fails verification, which
//! is what an auditor wants to see.
//!
//! A chain alone cannot tell a log whose last lines were cut off from a
//! shorter one, so every append also rewrites the *head* (`<log>.head`:
//! sequence and hash of the newest entry, atomically) and [`verify`] checks
//! the log still reaches it. The head lags the log by at most one entry
//! after a crash, never leads it. Against someone who can rewrite both
//! files, keep heads elsewhere (`audit verify` prints the head as
//! `SEQ:HASH`) and pass a recorded one to `audit verify --head SEQ:HASH`.

use std::fs::OpenOptions;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `prev` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What an entry records, before it is chained.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// Who (principal name, or `anonymous`).
    pub principal: String,
    /// What was attempted (`proposal.create`, `proposal.activate`, …).
    pub action: String,
    /// On what (proposal id, version, …).
    pub subject: String,
    /// `ok` or `refused`.
    pub outcome: String,
    /// Details (reasons, versions); never secrets.
    pub detail: serde_json::Value,
}

/// A chained entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    /// 1, 2, 3, …
    pub seq: u64,
    /// RFC 3339 time.
    pub time: String,
    /// The record.
    #[serde(flatten)]
    pub record: Record,
    /// Hash of the previous entry.
    pub prev: String,
    /// This entry's hash.
    pub hash: String,
}

#[derive(Serialize)]
struct Unhashed<'a> {
    seq: u64,
    time: &'a str,
    #[serde(flatten)]
    record: &'a Record,
    prev: &'a str,
}

fn entry_hash(seq: u64, time: &str, record: &Record, prev: &str) -> String {
    let body = serde_json::to_vec(&Unhashed {
        seq,
        time,
        record,
        prev,
    })
    .unwrap_or_default();
    Sha256::digest(&body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The newest entry's sequence and hash, kept beside the log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Head {
    /// Sequence number.
    pub seq: u64,
    /// Hash.
    pub hash: String,
}

/// Where the head of the log at `path` is kept.
pub fn head_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".head");
    path.with_file_name(name)
}

/// An open audit log.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    tail: Mutex<(u64, String)>,
}

/// Why a log does not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuditError {
    /// I/O.
    #[error("cannot read the audit log: {0}")]
    Io(String),
    /// A line is not an entry.
    #[error("line {line}: not an audit entry ({reason})")]
    Malformed {
        /// 1-based line.
        line: usize,
        /// Parser message.
        reason: String,
    },
    /// The chain is broken.
    #[error("line {line}: {reason}")]
    Broken {
        /// 1-based line.
        line: usize,
        /// What does not match.
        reason: String,
    },
}

impl AuditLog {
    /// Open (creating) the log, verifying what is already there.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| AuditError::Io(e.to_string()))?;
        }
        let tail = if path.exists() {
            let entries = verify(path)?;
            entries
                .last()
                .map_or((0, GENESIS.to_string()), |e| (e.seq, e.hash.clone()))
        } else {
            (0, GENESIS.to_string())
        };
        Ok(Self {
            path: path.to_path_buf(),
            tail: Mutex::new(tail),
        })
    }

    /// Append a record; returns the entry written.
    pub fn append(&self, record: Record) -> Result<Entry, AuditError> {
        let mut tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        let seq = tail.0 + 1;
        let time = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        let hash = entry_hash(seq, &time, &record, &tail.1);
        let entry = Entry {
            seq,
            time,
            record,
            prev: tail.1.clone(),
            hash,
        };
        let mut line = serde_json::to_vec(&entry).map_err(|e| AuditError::Io(e.to_string()))?;
        line.push(b'\n');
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| AuditError::Io(e.to_string()))?;
        f.write_all(&line)
            .and_then(|_| f.sync_data())
            .map_err(|e| AuditError::Io(e.to_string()))?;
        *tail = (seq, entry.hash.clone());
        let head = serde_json::to_vec(&Head {
            seq,
            hash: entry.hash.clone(),
        })
        .map_err(|e| AuditError::Io(e.to_string()))?;
        super::store::write_atomically(&head_path(&self.path), &head, 0o640)
            .map_err(|e| AuditError::Io(e.to_string()))?;
        Ok(entry)
    }
}

/// Check every entry of the log at `path` and that it reaches its head;
/// returns the entries when the chain holds.
pub fn verify(path: &Path) -> Result<Vec<Entry>, AuditError> {
    let entries = verify_chain(path)?;
    let head = match std::fs::read(head_path(path)) {
        Ok(bytes) => Some(
            serde_json::from_slice::<Head>(&bytes)
                .map_err(|e| AuditError::Io(format!("{}: {e}", head_path(path).display())))?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(AuditError::Io(e.to_string())),
    };
    if let Some(head) = head {
        check_head(&entries, &head)?;
    }
    Ok(entries)
}

/// Check that `entries` contain `head` (the newest entry an auditor saw).
pub fn check_head(entries: &[Entry], head: &Head) -> Result<(), AuditError> {
    let n = entries.len();
    match entries.get((head.seq as usize).wrapping_sub(1)) {
        Some(e) if e.hash == head.hash => Ok(()),
        Some(_) => Err(AuditError::Broken {
            line: head.seq as usize,
            reason: format!(
                "entry {} is not the recorded head {}",
                head.seq,
                &head.hash[..12.min(head.hash.len())]
            ),
        }),
        None => Err(AuditError::Broken {
            line: n,
            reason: format!(
                "the log ends at entry {n} but its head is entry {} (entries removed from the end)",
                head.seq
            ),
        }),
    }
}

fn verify_chain(path: &Path) -> Result<Vec<Entry>, AuditError> {
    let file = std::fs::File::open(path).map_err(|e| AuditError::Io(e.to_string()))?;
    let mut prev = GENESIS.to_string();
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let n = i + 1;
        let line = line.map_err(|e| AuditError::Io(e.to_string()))?;
        let e: Entry = serde_json::from_str(&line).map_err(|err| AuditError::Malformed {
            line: n,
            reason: err.to_string(),
        })?;
        if e.seq != n as u64 {
            return Err(AuditError::Broken {
                line: n,
                reason: format!(
                    "sequence {} where {n} was expected (entries removed or reordered)",
                    e.seq
                ),
            });
        }
        if e.prev != prev {
            return Err(AuditError::Broken { line: n, reason: "previous-entry hash does not match (an earlier entry was changed, removed or reordered)".into() });
        }
        if entry_hash(e.seq, &e.time, &e.record, &e.prev) != e.hash {
            return Err(AuditError::Broken {
                line: n,
                reason: "entry hash does not match its content (the entry was edited)".into(),
            });
        }
        prev = e.hash.clone();
        out.push(e);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u32) -> Record {
        Record {
            principal: "alice".into(),
            action: "proposal.review".into(),
            subject: format!("p-{i}"),
            outcome: if i % 2 == 0 {
                "ok".into()
            } else {
                "refused".into()
            },
            detail: serde_json::json!({ "comment": "looks good", "n": i }),
        }
    }

    fn log_with(n: u32) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path).unwrap();
        for i in 0..n {
            log.append(rec(i)).unwrap();
        }
        (dir, path)
    }

    #[test]
    fn a_clean_log_verifies_and_reopening_continues_the_chain() {
        let (_d, path) = log_with(5);
        assert_eq!(verify(&path).unwrap().len(), 5);
        let log = AuditLog::open(&path).unwrap();
        let e = log.append(rec(9)).unwrap();
        assert_eq!(e.seq, 6);
        assert_eq!(verify(&path).unwrap().len(), 6);
    }

    #[test]
    fn any_single_byte_change_is_detected() {
        let (_d, path) = log_with(4);
        let original = std::fs::read(&path).unwrap();
        for pos in 0..original.len() {
            if original[pos] == b'\n' {
                continue;
            }
            let mut bytes = original.clone();
            bytes[pos] = if bytes[pos] == b'x' { b'y' } else { b'x' };
            std::fs::write(&path, &bytes).unwrap();
            assert!(
                verify(&path).is_err(),
                "a change at byte {pos} went unnoticed"
            );
        }
    }

    #[test]
    fn removed_and_reordered_lines_are_detected() {
        let (_d, path) = log_with(4);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let without = [lines[0], lines[2], lines[3]].join("\n") + "\n";
        std::fs::write(&path, without).unwrap();
        assert!(matches!(
            verify(&path),
            Err(AuditError::Broken { line: 2, .. })
        ));
        let swapped = [lines[0], lines[2], lines[1], lines[3]].join("\n") + "\n";
        std::fs::write(&path, swapped).unwrap();
        assert!(verify(&path).is_err());
        let last_removed = lines[..3].join("\n") + "\n";
        std::fs::write(&path, last_removed).unwrap();
        assert!(
            matches!(verify(&path), Err(AuditError::Broken { .. })),
            "a cut-off tail is detected by the head"
        );
        let first_removed = lines[1..].join("\n") + "\n";
        std::fs::write(&path, first_removed).unwrap();
        assert!(verify(&path).is_err());
        assert!(
            AuditLog::open(&path).is_err(),
            "a broken log is not appended to"
        );
    }
}
