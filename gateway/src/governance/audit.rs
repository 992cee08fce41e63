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
//!
//! Two more defences against someone who can write the state directory:
//! with a [`Signer`] (an Ed25519 key kept outside it) every entry carries a
//! signature of its hash (`sig`, not part of the hash), which no rewrite
//! can forge — `audit verify --public-key` checks it; and every append
//! logs the new head (`audit head`, target `gatehouse::audit`), so the
//! node's log, shipped elsewhere, holds the heads a truncation would need
//! to match.

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
    /// Ed25519 signature of `hash` (hex), when the log is signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
}

/// The key that signs a log's entries: an Ed25519 key pair in PKCS#8,
/// kept outside the state directory.
pub struct Signer {
    pair: ring::signature::Ed25519KeyPair,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({})", self.public_hex())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Signer {
    /// Load a key written by [`Signer::generate`].
    pub fn load(path: &Path) -> Result<Signer, AuditError> {
        let der =
            std::fs::read(path).map_err(|e| AuditError::Io(format!("{}: {e}", path.display())))?;
        ring::signature::Ed25519KeyPair::from_pkcs8(&der)
            .map(|pair| Signer { pair })
            .map_err(|e| {
                AuditError::Io(format!(
                    "{}: not an Ed25519 PKCS#8 key ({e})",
                    path.display()
                ))
            })
    }

    /// Generate a key into `path` (mode 0600) and its public half, hex,
    /// into `<path>.pub`; returns the public key.
    pub fn generate(path: &Path) -> Result<String, AuditError> {
        let rng = ring::rand::SystemRandom::new();
        let der = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|e| AuditError::Io(e.to_string()))?;
        super::store::write_atomically(path, der.as_ref(), 0o600)
            .map_err(|e| AuditError::Io(e.to_string()))?;
        let signer = Signer::load(path)?;
        let mut pub_path = path.as_os_str().to_os_string();
        pub_path.push(".pub");
        let public = signer.public_hex();
        super::store::write_atomically(
            Path::new(&pub_path),
            format!("{public}\n").as_bytes(),
            0o644,
        )
        .map_err(|e| AuditError::Io(e.to_string()))?;
        Ok(public)
    }

    /// The public key, hex.
    pub fn public_hex(&self) -> String {
        use ring::signature::KeyPair;
        hex(self.pair.public_key().as_ref())
    }

    fn sign(&self, hash: &str) -> String {
        hex(self.pair.sign(hash.as_bytes()).as_ref())
    }
}

/// Check the signature of every entry from sequence `signed_from` on
/// against `public_key` (hex): an entry edited and re-chained by someone
/// without the key fails here.
pub fn verify_signatures(
    entries: &[Entry],
    public_key: &str,
    signed_from: u64,
) -> Result<(), AuditError> {
    let key = unhex(public_key).filter(|k| k.len() == 32).ok_or_else(|| {
        AuditError::Io("the public key is 64 hex digits (as `audit keygen` prints it)".into())
    })?;
    let key = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key);
    for e in entries.iter().filter(|e| e.seq >= signed_from) {
        let line = e.seq as usize;
        let Some(sig) = e.sig.as_deref() else {
            return Err(AuditError::Broken {
                line,
                reason: "the entry is not signed".into(),
            });
        };
        let ok = unhex(sig).is_some_and(|s| key.verify(e.hash.as_bytes(), &s).is_ok());
        if !ok {
            return Err(AuditError::Broken {
                line,
                reason:
                    "the signature does not match (the entry was rewritten without the signing key)"
                        .into(),
            });
        }
    }
    Ok(())
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
    signer: Option<Signer>,
    /// Set under the tail's lock by [`AuditLog::seal`]: no entry follows.
    sealed: std::sync::atomic::AtomicBool,
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
    /// Open (creating) the log, verifying what is already there; with a
    /// `signer`, the entries it signed before must verify with it, and
    /// without one a signed log is refused (its entries would stop being
    /// signed unnoticed).
    pub fn open(path: &Path, signer: Option<Signer>) -> Result<Self, AuditError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| AuditError::Io(e.to_string()))?;
        }
        let entries = if path.exists() {
            verify(path)?
        } else {
            Vec::new()
        };
        let first_signed = entries.iter().find(|e| e.sig.is_some()).map(|e| e.seq);
        match (&signer, first_signed) {
            (Some(s), Some(from)) => {
                verify_signatures(&entries, &s.public_hex(), from).map_err(|e| {
                    AuditError::Io(format!(
                        "the log's signatures do not verify with this key: {e}"
                    ))
                })?
            }
            (None, Some(from)) => {
                return Err(AuditError::Io(format!(
                    "the log is signed from entry {from} on: start with --audit-signing-key"
                )))
            }
            _ => {}
        }
        let tail = entries
            .last()
            .map_or((0, GENESIS.to_string()), |e| (e.seq, e.hash.clone()));
        Ok(Self {
            path: path.to_path_buf(),
            tail: Mutex::new(tail),
            sealed: std::sync::atomic::AtomicBool::new(false),
            signer,
        })
    }

    /// Append no more entries (another process continues the log): waits
    /// for an append under way, and every later one fails.
    pub fn seal(&self) {
        let _tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        self.sealed.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Append a record; returns the entry written.
    pub fn append(&self, record: Record) -> Result<Entry, AuditError> {
        let mut tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        if self.sealed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(AuditError::Io(
                "the log was handed to another process; this one appends no more".into(),
            ));
        }
        let seq = tail.0 + 1;
        let time = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        let hash = entry_hash(seq, &time, &record, &tail.1);
        let sig = self.signer.as_ref().map(|s| s.sign(&hash));
        let entry = Entry {
            seq,
            time,
            record,
            prev: tail.1.clone(),
            hash,
            sig,
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
        // The head, in a second place: the node's log.
        tracing::info!(target: "gatehouse::audit", seq, hash = %entry.hash, action = %entry.record.action, "audit head");
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
            outcome: if i.is_multiple_of(2) {
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
        let log = AuditLog::open(&path, None).unwrap();
        for i in 0..n {
            log.append(rec(i)).unwrap();
        }
        (dir, path)
    }

    #[test]
    fn a_clean_log_verifies_and_reopening_continues_the_chain() {
        let (_d, path) = log_with(5);
        assert_eq!(verify(&path).unwrap().len(), 5);
        let log = AuditLog::open(&path, None).unwrap();
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
            AuditLog::open(&path, None).is_err(),
            "a broken log is not appended to"
        );
    }

    /// Someone who can write the state directory but lacks the key can
    /// re-chain an edited log so that the chain and head verify — the
    /// signatures do not.
    #[test]
    fn a_rewritten_and_rechained_log_fails_its_signatures() {
        let keys = tempfile::tempdir().unwrap();
        let key = keys.path().join("audit.key");
        let public = Signer::generate(&key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path, Some(Signer::load(&key).unwrap())).unwrap();
        for i in 0..4 {
            log.append(rec(i)).unwrap();
        }
        let entries = verify(&path).unwrap();
        verify_signatures(&entries, &public, 1).unwrap();
        // A signed log refuses to go on unsigned, or with another key.
        assert!(AuditLog::open(&path, None).is_err());
        let other = keys.path().join("other.key");
        Signer::generate(&other).unwrap();
        assert!(AuditLog::open(&path, Some(Signer::load(&other).unwrap())).is_err());
        assert!(AuditLog::open(&path, Some(Signer::load(&key).unwrap())).is_ok());
        // Rewrite entry 2 and every hash after it, keeping the old signatures.
        let mut prev = GENESIS.to_string();
        let mut forged = Vec::new();
        for mut e in entries {
            if e.seq == 2 {
                e.record.principal = "mallory".into();
            }
            e.prev = prev.clone();
            e.hash = entry_hash(e.seq, &e.time, &e.record, &e.prev);
            prev = e.hash.clone();
            forged.push(e);
        }
        let text: String = forged
            .iter()
            .map(|e| serde_json::to_string(e).unwrap() + "\n")
            .collect();
        std::fs::write(&path, text).unwrap();
        let last = forged.last().unwrap();
        std::fs::write(
            head_path(&path),
            serde_json::to_vec(&Head {
                seq: last.seq,
                hash: last.hash.clone(),
            })
            .unwrap(),
        )
        .unwrap();
        let entries = verify(&path).expect("the chain and head were forged consistently");
        let err = verify_signatures(&entries, &public, 1).unwrap_err();
        assert!(matches!(err, AuditError::Broken { line: 2, .. }), "{err}");
        assert!(AuditLog::open(&path, None).is_err());
    }
}
