//! The state directory of a governed gateway (`serve --state DIR`): the
//! embedded default store, no external database.
//!
//! ```text
//! DIR/bundles/<version>.json   content-addressed bundles: {version, files}
//! DIR/proposals/<id>.json      one file per proposal (its whole history)
//! DIR/active.json              the active pointer and every past activation
//! DIR/principals.json          admin principals (token hashes, roles)
//! DIR/audit.jsonl              the hash-chained audit log
//! ```
//!
//! Every write goes to a temporary file that is fsynced and renamed over the
//! target, so a crash leaves either the old or the new file, never half of
//! one. The store is not safe for two writers at once: the control plane
//! serialises state changes behind one lock. A bundle's name is the version
//! its files compile to; readers recompile and compare before trusting one.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::workflow::Proposal;
use crate::policy::SourceFile;

/// Write `bytes` to `path` atomically (temp file, fsync, rename, fsync dir).
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// A stored bundle: its files and the version they compile to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredBundle {
    /// The version (content hash) the files compile to.
    pub version: String,
    /// The files.
    pub files: Vec<SourceFile>,
}

/// One past or present activation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Activation {
    /// Version activated.
    pub version: String,
    /// When (RFC 3339).
    pub at: String,
    /// Who.
    pub by: String,
    /// How: `bootstrap`, `proposal <id>` or `rollback`.
    pub via: String,
}

/// The active pointer with its history (oldest first; the last is active).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ActivePointer {
    /// Every activation, oldest first.
    pub history: Vec<Activation>,
}

impl ActivePointer {
    /// The active version.
    pub fn current(&self) -> Option<&Activation> {
        self.history.last()
    }
}

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// I/O.
    #[error("state directory: {0}")]
    Io(#[from] std::io::Error),
    /// A file that does not parse.
    #[error("state directory: {path}: {reason}")]
    Corrupt {
        /// The file.
        path: String,
        /// Parser message.
        reason: String,
    },
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Open (creating) a state directory.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir.join("bundles"))?;
        std::fs::create_dir_all(dir.join("proposals"))?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the audit log.
    pub fn audit_path(&self) -> PathBuf {
        self.dir.join("audit.jsonl")
    }

    /// Path of the principals file.
    pub fn principals_path(&self) -> PathBuf {
        self.dir.join("principals.json")
    }

    fn read_json<T: for<'de> Deserialize<'de>>(
        &self,
        path: &Path,
    ) -> Result<Option<T>, StoreError> {
        match std::fs::read(path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| StoreError::Corrupt {
                        path: path.display().to_string(),
                        reason: e.to_string(),
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn write_json<T: Serialize>(&self, path: &Path, value: &T) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(value).map_err(|e| StoreError::Corrupt {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        write_atomically(path, &bytes, 0o640)?;
        Ok(())
    }

    fn bundle_path(&self, version: &str) -> Option<PathBuf> {
        // Versions are hex digests; anything else never names a file.
        (version.len() == 64 && version.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| self.dir.join("bundles").join(format!("{version}.json")))
    }

    /// Store a bundle under its version (idempotent).
    pub fn put_bundle(&self, bundle: &StoredBundle) -> Result<(), StoreError> {
        let Some(path) = self.bundle_path(&bundle.version) else {
            return Err(StoreError::Corrupt {
                path: bundle.version.clone(),
                reason: "not a bundle version".into(),
            });
        };
        if path.exists() {
            return Ok(());
        }
        self.write_json(&path, bundle)
    }

    /// A stored bundle.
    pub fn bundle(&self, version: &str) -> Result<Option<StoredBundle>, StoreError> {
        match self.bundle_path(version) {
            Some(path) => self.read_json(&path),
            None => Ok(None),
        }
    }

    /// The active pointer (empty history before the first activation).
    pub fn active(&self) -> Result<ActivePointer, StoreError> {
        Ok(self
            .read_json(&self.dir.join("active.json"))?
            .unwrap_or_default())
    }

    /// Replace the active pointer.
    pub fn set_active(&self, pointer: &ActivePointer) -> Result<(), StoreError> {
        self.write_json(&self.dir.join("active.json"), pointer)
    }

    /// Append an activation to the active pointer, making `version` active.
    pub fn record_activation(
        &self,
        version: &str,
        by: &str,
        via: String,
    ) -> Result<Activation, StoreError> {
        let mut pointer = self.active()?;
        let activation = Activation {
            version: version.to_string(),
            at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            by: by.to_string(),
            via,
        };
        pointer.history.push(activation.clone());
        self.set_active(&pointer)?;
        Ok(activation)
    }

    /// A proposal.
    pub fn proposal(&self, id: u64) -> Result<Option<Proposal>, StoreError> {
        self.read_json(&self.dir.join("proposals").join(format!("{id}.json")))
    }

    /// Save a proposal.
    pub fn put_proposal(&self, p: &Proposal) -> Result<(), StoreError> {
        self.write_json(
            &self.dir.join("proposals").join(format!("{}.json", p.id)),
            p,
        )
    }

    /// Every proposal, by id.
    pub fn proposals(&self) -> Result<Vec<Proposal>, StoreError> {
        let mut ids: Vec<u64> = std::fs::read_dir(self.dir.join("proposals"))?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".json")?.parse().ok())
            .collect();
        ids.sort_unstable();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(p) = self.proposal(id)? {
                out.push(p);
            }
        }
        Ok(out)
    }

    /// The next proposal id.
    pub fn next_proposal_id(&self) -> Result<u64, StoreError> {
        Ok(self.proposals()?.iter().map(|p| p.id).max().unwrap_or(0) + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundles_are_addressed_by_version_and_nothing_else_names_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let b = StoredBundle {
            version: "ab".repeat(32),
            files: vec![SourceFile {
                path: "a.yaml".into(),
                text: "version: 1\n".into(),
            }],
        };
        store.put_bundle(&b).unwrap();
        store.put_bundle(&b).unwrap();
        assert_eq!(store.bundle(&b.version).unwrap(), Some(b.clone()));
        for bad in ["../../etc/passwd", "ab", &"zz".repeat(32), ""] {
            assert_eq!(store.bundle(bad).unwrap(), None, "{bad}");
        }
        let bad = StoredBundle {
            version: "../x".into(),
            ..b
        };
        assert!(store.put_bundle(&bad).is_err());
    }

    #[test]
    fn the_active_pointer_round_trips_and_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.active().unwrap().current(), None);
        let mut p = ActivePointer::default();
        for v in ["a", "b"] {
            p.history.push(Activation {
                version: v.repeat(64),
                at: "2026-11-28T00:00:00Z".into(),
                by: "ops".into(),
                via: "rollback".into(),
            });
        }
        store.set_active(&p).unwrap();
        assert_eq!(store.active().unwrap(), p);
        assert_eq!(
            store.active().unwrap().current().unwrap().version,
            "b".repeat(64)
        );
        assert_eq!(store.next_proposal_id().unwrap(), 1);
        std::fs::write(dir.path().join("active.json"), "{ torn").unwrap();
        assert!(matches!(store.active(), Err(StoreError::Corrupt { .. })));
    }
}
