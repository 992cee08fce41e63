//! Single sign-on for the admin API: the enterprise identity provider's
//! OIDC tokens (JWTs signed with a key of its JWKS, checked for issuer,
//! audience and expiry) stand for principals. A name claim names the
//! principal (reviewer groups in `review.yaml` list these names); the
//! groups claim gives its roles through a mapping (`board=reviewer`).
//!
//! The static tokens of `principals.json` stay for automation (fleet
//! nodes, CI). A token that verifies but names a static principal is
//! refused: the IdP cannot speak for a name the state directory holds.
//! Every signed-in principal is remembered with its roles (so review
//! groups and the floor can count it before it ever signs in again), and
//! its first sign-in and each change of roles are audited by the caller.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::principals::{Principal, Role};
use crate::identity::jwt::JwtVerifier;

/// The settings of `serve --admin-oidc-*`.
#[derive(Debug, Clone)]
pub struct SsoConfig {
    /// Required `iss`.
    pub issuer: String,
    /// Required `aud`.
    pub audience: String,
    /// The IdP's JWKS document (a file; re-read when the IdP rotates keys
    /// and the file is replaced, at the next start).
    pub jwks: PathBuf,
    /// Claim naming the principal (`preferred_username`, `email`, `sub`).
    pub name_claim: String,
    /// Claim listing the caller's groups.
    pub groups_claim: String,
    /// IdP group → role, as `GROUP=ROLE`.
    pub roles: Vec<String>,
}

/// A principal that signed in through the IdP, as remembered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedIn {
    /// Roles at the last sign-in.
    pub roles: Vec<Role>,
    /// When it last signed in (RFC 3339).
    pub last_seen: String,
}

/// What a sign-in changed about the remembered principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignIn {
    /// First sign-in.
    New,
    /// Roles differ from the last sign-in (old roles).
    RolesChanged(Vec<Role>),
    /// Nothing new.
    Known,
}

/// The verifier and the remembered principals.
#[derive(Debug)]
pub struct Sso {
    verifier: JwtVerifier,
    config: SsoConfig,
    roles: Vec<(String, Role)>,
    path: PathBuf,
    seen: Mutex<BTreeMap<String, SignedIn>>,
}

/// Why a token is refused (logged; the caller gets a plain 401).
#[derive(Debug, thiserror::Error)]
pub enum SsoError {
    /// Signature, issuer, audience, expiry.
    #[error("{0}")]
    Token(#[from] crate::identity::jwt::JwtError),
    /// No usable name claim.
    #[error("the token has no `{0}` claim naming the principal")]
    NoName(String),
    /// The name belongs to a static principal.
    #[error("`{0}` is a static principal; the identity provider cannot sign in as it")]
    Taken(String),
}

impl Sso {
    /// Build from settings; `state` is the state directory (the remembered
    /// principals live there).
    pub fn new(config: SsoConfig, state: &Path) -> Result<Sso, String> {
        let jwks: serde_json::Value = std::fs::read(&config.jwks)
            .map_err(|e| format!("{}: {e}", config.jwks.display()))
            .and_then(|b| {
                serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", config.jwks.display()))
            })?;
        let verifier = JwtVerifier::new(
            Some(config.issuer.clone()),
            Some(config.audience.clone()),
            config.name_claim.clone(),
            30,
            None,
            Some(&jwks),
        )
        .map_err(|e| format!("{}: {e}", config.jwks.display()))?;
        let mut roles = Vec::new();
        for m in &config.roles {
            let (group, role) = m
                .split_once('=')
                .ok_or_else(|| format!("--admin-oidc-role takes GROUP=ROLE, not `{m}`"))?;
            let role: Role = serde_json::from_value(serde_json::Value::String(role.trim().into()))
                .map_err(|_| {
                    format!("`{role}` is not a role (viewer, author, reviewer, operator, admin)")
                })?;
            roles.push((group.trim().to_string(), role));
        }
        let path = state.join("sso-principals.json");
        let seen = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Ok(Sso {
            verifier,
            config,
            roles,
            path,
            seen: Mutex::new(seen),
        })
    }

    /// Does `token` look like a JWT (three dot-separated parts)?
    pub fn looks_like_jwt(token: &str) -> bool {
        token.split('.').count() == 3
    }

    /// Verify `token` and name its principal and roles; `is_static` tells
    /// whether a name belongs to a static principal.
    pub fn authenticate(
        &self,
        token: &str,
        is_static: impl Fn(&str) -> bool,
    ) -> Result<(Principal, SignIn), SsoError> {
        let claims = self.verifier.verify_claims(token)?;
        let name = claims
            .get(&self.config.name_claim)
            .and_then(|v| v.as_str())
            .filter(|n| !n.is_empty() && n.len() <= 128)
            .ok_or_else(|| SsoError::NoName(self.config.name_claim.clone()))?
            .to_string();
        if is_static(&name) {
            return Err(SsoError::Taken(name));
        }
        let groups: Vec<&str> = match claims.get(&self.config.groups_claim) {
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|g| g.as_str()).collect(),
            Some(serde_json::Value::String(s)) => s.split_whitespace().collect(),
            _ => Vec::new(),
        };
        let mut roles: Vec<Role> = self
            .roles
            .iter()
            .filter(|(g, _)| groups.contains(&g.as_str()))
            .map(|(_, r)| *r)
            .collect();
        roles.sort();
        roles.dedup();
        let expires = claims
            .get("exp")
            .and_then(serde_json::Value::as_u64)
            .map(|s| {
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_secs(s),
                )
                .to_string()
            });
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let change = {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            let change = match seen.get(&name) {
                None => SignIn::New,
                Some(s) if s.roles != roles => SignIn::RolesChanged(s.roles.clone()),
                Some(_) => SignIn::Known,
            };
            seen.insert(
                name.clone(),
                SignedIn {
                    roles: roles.clone(),
                    last_seen: now.clone(),
                },
            );
            if change != SignIn::Known {
                if let Ok(bytes) = serde_json::to_vec_pretty(&*seen) {
                    if let Err(e) = super::store::write_atomically(&self.path, &bytes, 0o600) {
                        tracing::error!(error = %e, "cannot remember signed-in principals");
                    }
                }
            }
            change
        };
        Ok((
            Principal {
                name,
                roles,
                token_sha256: "oidc".into(),
                created: now,
                expires,
            },
            change,
        ))
    }

    /// Remembered principals holding `role` (admins hold every role).
    pub fn with_role(&self, role: Role) -> Vec<String> {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, s)| s.roles.contains(&role) || s.roles.contains(&Role::Admin))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Every remembered principal.
    pub fn remembered(&self) -> BTreeMap<String, SignedIn> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
