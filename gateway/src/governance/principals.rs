//! Principals of the admin API: named holders of a bearer token, with roles.
//!
//! Tokens (`ght_` + 128 random bits, hex) are shown once by
//! `gatehouse admin add-principal` and stored only as SHA-256 hashes in
//! `STATE/principals.json`. The file is re-read when it changes, so adding a
//! principal needs no restart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// Prefix of admin tokens (tells them apart from consumer API keys).
pub const TOKEN_PREFIX: &str = "ght_";

/// What a principal may do. Every principal may read (viewer); `admin` may
/// do everything.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read status, proposals, bundles, the audit log (fleet nodes use it).
    Viewer,
    /// Propose changes, withdraw own proposals.
    Author,
    /// Approve or reject proposals.
    Reviewer,
    /// Activate approved proposals, roll back.
    Operator,
    /// Everything.
    Admin,
}

impl Role {
    /// The name used in files and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Author => "author",
            Role::Reviewer => "reviewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

/// A principal as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Principal {
    /// Name (reviewer group members are principal names).
    pub name: String,
    /// Roles.
    pub roles: Vec<Role>,
    /// `sha256:<hex>` of the token.
    pub token_sha256: String,
    /// When it was created (RFC 3339).
    pub created: String,
    /// When its token stops working (RFC 3339); never when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
}

impl Principal {
    /// Has its token expired at `now`?
    pub fn expired(&self, now: SystemTime) -> bool {
        self.expires
            .as_deref()
            .is_some_and(|e| humantime::parse_rfc3339_weak(e).map_or(true, |t| now >= t))
    }

    /// May this principal act as `role`?
    pub fn has(&self, role: Role) -> bool {
        role == Role::Viewer || self.roles.contains(&role) || self.roles.contains(&Role::Admin)
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrincipalsFile {
    principals: Vec<Principal>,
}

/// Errors managing principals.
#[derive(Debug, thiserror::Error)]
pub enum PrincipalError {
    /// I/O or a corrupt file.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The name is taken (use `--rotate` to issue a new token).
    #[error("principal `{0}` exists (use --rotate to issue it a new token)")]
    Exists(String),
    /// Invalid name.
    #[error("principal names are 1-64 characters of a-z, 0-9, `-`, `_`, `.`: `{0}`")]
    BadName(String),
    /// No such principal.
    #[error("no principal `{0}`")]
    Unknown(String),
}

/// `sha256:<hex>` of a token, as stored (the same form as consumer keys).
fn token_hash(token: &str) -> String {
    crate::identity::key_fingerprint(token)
}

fn read_file(path: &Path) -> Result<PrincipalsFile, PrincipalError> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| PrincipalError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PrincipalsFile::default()),
        Err(e) => Err(PrincipalError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        }),
    }
}

/// Add a principal (or, with `rotate`, replace its token and roles) in the
/// principals file at `path`; returns the new token, which is not stored.
pub fn add(
    path: &Path,
    name: &str,
    roles: &[Role],
    rotate: bool,
    expires: Option<SystemTime>,
) -> Result<String, PrincipalError> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
    if !valid {
        return Err(PrincipalError::BadName(name.to_string()));
    }
    let mut file = read_file(path)?;
    let exists = file.principals.iter().any(|p| p.name == name);
    if exists && !rotate {
        return Err(PrincipalError::Exists(name.to_string()));
    }
    let token = crate::identity::random_secret::<16>(TOKEN_PREFIX);
    let mut roles = roles.to_vec();
    roles.sort();
    roles.dedup();
    file.principals.retain(|p| p.name != name);
    file.principals.push(Principal {
        name: name.to_string(),
        roles,
        token_sha256: token_hash(&token),
        created: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        expires: expires.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
    });
    write_file(path, &mut file)?;
    Ok(token)
}

/// Change a principal's roles (its token stays).
pub fn set_roles(path: &Path, name: &str, roles: &[Role]) -> Result<(), PrincipalError> {
    let mut file = read_file(path)?;
    let p = file
        .principals
        .iter_mut()
        .find(|p| p.name == name)
        .ok_or_else(|| PrincipalError::Unknown(name.to_string()))?;
    let mut roles = roles.to_vec();
    roles.sort();
    roles.dedup();
    p.roles = roles;
    write_file(path, &mut file)
}

/// Remove a principal: its token stops working at once.
pub fn revoke(path: &Path, name: &str) -> Result<(), PrincipalError> {
    let mut file = read_file(path)?;
    let before = file.principals.len();
    file.principals.retain(|p| p.name != name);
    if file.principals.len() == before {
        return Err(PrincipalError::Unknown(name.to_string()));
    }
    write_file(path, &mut file)
}

fn write_file(path: &Path, file: &mut PrincipalsFile) -> Result<(), PrincipalError> {
    file.principals.sort_by(|a, b| a.name.cmp(&b.name));
    let text = serde_json::to_vec_pretty(&*file).map_err(|e| PrincipalError::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    super::store::write_atomically(path, &text, 0o600).map_err(|e| PrincipalError::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// How the principals differ from the set last accounted for (in the
/// audit log): what someone changed in the file outside the admin API.
pub fn outside_changes(known: &[Principal], now: &[Principal]) -> Vec<String> {
    let mut out = Vec::new();
    for p in now {
        match known.iter().find(|k| k.name == p.name) {
            None => out.push(format!(
                "`{}` added ({})",
                p.name,
                p.roles
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            Some(k) => {
                if k.roles != p.roles {
                    out.push(format!(
                        "`{}` roles {} → {}",
                        p.name,
                        k.roles
                            .iter()
                            .map(|r| r.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                        p.roles
                            .iter()
                            .map(|r| r.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
                if k.token_sha256 != p.token_sha256 {
                    out.push(format!("`{}` given a new token", p.name));
                }
                if k.expires != p.expires {
                    out.push(format!(
                        "`{}` expiry {} → {}",
                        p.name,
                        k.expires.as_deref().unwrap_or("never"),
                        p.expires.as_deref().unwrap_or("never")
                    ));
                }
            }
        }
    }
    for k in known {
        if !now.iter().any(|p| p.name == k.name) {
            out.push(format!("`{}` removed", k.name));
        }
    }
    out
}

/// Read the principals file (for listing and accounting).
pub fn list(path: &Path) -> Result<Vec<Principal>, PrincipalError> {
    Ok(read_file(path)?.principals)
}

/// The principals of a state directory, re-read when the file changes.
#[derive(Debug)]
pub struct Principals {
    path: PathBuf,
    cache: Mutex<(Option<SystemTime>, HashMap<String, Principal>)>,
}

impl Principals {
    /// Principals stored at `path` (the file may not exist yet).
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            cache: Mutex::new((None, HashMap::new())),
        }
    }

    /// The principal holding `token`, if any and not expired.
    pub fn authenticate(&self, token: &str) -> Option<Principal> {
        self.current()
            .1
            .get(&token_hash(token))
            .filter(|p| !p.expired(SystemTime::now()))
            .cloned()
    }

    /// Is `name` a static principal (in the file, expired or not)?
    pub fn is_static(&self, name: &str) -> bool {
        self.current().1.values().any(|p| p.name == name)
    }

    /// The names of the principals holding `role` (admins hold every
    /// role), sorted.
    pub fn with_role(&self, role: Role) -> Vec<String> {
        let mut names: Vec<String> = self
            .current()
            .1
            .values()
            .filter(|p| p.roles.contains(&role) || p.roles.contains(&Role::Admin))
            .filter(|p| !p.expired(SystemTime::now()))
            .map(|p| p.name.clone())
            .collect();
        names.sort();
        names
    }

    /// The principals as the file holds them now (re-read when it changed).
    fn current(
        &self,
    ) -> std::sync::MutexGuard<'_, (Option<SystemTime>, HashMap<String, Principal>)> {
        let mtime = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.0 != mtime || mtime.is_none() {
            match read_file(&self.path) {
                Ok(file) => {
                    cache.1 = file
                        .principals
                        .into_iter()
                        .map(|p| (p.token_sha256.clone(), p))
                        .collect();
                    cache.0 = mtime;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot read principals; keeping the last good set");
                }
            }
        }
        cache
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_stored_hashed_and_authenticate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("principals.json");
        let t = add(&path, "alice", &[Role::Reviewer, Role::Author], false, None).unwrap();
        assert!(t.starts_with(TOKEN_PREFIX) && t.len() == 36);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&t), "the token itself is never stored");
        let p = Principals::new(path.clone());
        let alice = p.authenticate(&t).unwrap();
        assert_eq!(alice.name, "alice");
        assert!(alice.has(Role::Reviewer) && alice.has(Role::Viewer) && !alice.has(Role::Operator));
        assert!(p.authenticate("ght_wrong").is_none());
        assert!(matches!(
            add(&path, "alice", &[Role::Viewer], false, None),
            Err(PrincipalError::Exists(_))
        ));
        let t2 = add(&path, "alice", &[Role::Admin], true, None).unwrap();
        // Same-second rewrites may keep the mtime: a fresh reader sees the rotation.
        let p = Principals::new(path.clone());
        assert!(p.authenticate(&t).is_none(), "the old token stops working");
        assert!(p.authenticate(&t2).unwrap().has(Role::Operator));
        assert!(matches!(
            add(&path, "Bad Name", &[], false, None),
            Err(PrincipalError::BadName(_))
        ));
    }

    #[test]
    fn expired_tokens_stop_working_and_outside_changes_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("principals.json");
        let past = SystemTime::now() - std::time::Duration::from_secs(5);
        let t = add(&path, "temp", &[Role::Operator], false, Some(past)).unwrap();
        let p = Principals::new(path.clone());
        assert!(p.authenticate(&t).is_none(), "expired");
        assert!(p.with_role(Role::Operator).is_empty());
        let before = list(&path).unwrap();
        add(&path, "carol", &[Role::Reviewer], false, None).unwrap();
        set_roles(&path, "carol", &[Role::Reviewer, Role::Operator]).unwrap();
        revoke(&path, "temp").unwrap();
        assert!(matches!(
            revoke(&path, "temp"),
            Err(PrincipalError::Unknown(_))
        ));
        let changes = outside_changes(&before, &list(&path).unwrap());
        assert_eq!(
            changes,
            ["`carol` added (reviewer, operator)", "`temp` removed"],
            "{changes:?}"
        );
    }
}
