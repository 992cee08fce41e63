//! The control plane of a governed gateway: proposals, reviews, activation
//! and rollback over the state directory, every step audited.
//!
//! All state changes are serialised behind one lock and are blocking (file
//! I/O, compiling bundles): call them from a blocking context. An activation
//! compiles the stored bundle, writes the active pointer, swaps the bundle
//! into this node's data plane and wakes the fleet's long-polls, in that
//! order; a crash between the pointer and the swap is repaired at start-up,
//! which serves what the pointer says.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde_json::{json, Value};

use super::audit::{AuditLog, Entry, Record};
use super::policy_diff::{Change, Class, Side};
use super::principals::{Principal, Principals, Role};
use super::review::Requirement;
use super::sso::{SignIn, Sso};
use super::store::{Activation, Store, StoreError, StoredBundle};
use super::workflow::{PriorRejection, Proposal, ProposalState, Review, Verdict};
use crate::policy::{self, Bundle, PolicyError, PolicyErrors, SourceFile};
use crate::runtime::Shared;

/// The group of the review floor: every principal with the reviewer role
/// when the proposal was made.
pub const FLOOR_GROUP: &str = "reviewers (floor)";

/// The group a rollback needs one approval from when no review rule names
/// the `rollback` class: every principal with the operator role.
pub const OPERATORS_GROUP: &str = "operators (rollback)";

/// Which audit entries to list.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditFilter {
    /// Entries after this sequence number.
    #[serde(default)]
    pub after: u64,
    /// Entries of this principal (`anonymous` for unauthenticated calls).
    #[serde(default)]
    pub principal: Option<String>,
    /// Entries of this action, or of every action under it (`proposal`
    /// matches `proposal.approve`).
    #[serde(default)]
    pub action: Option<String>,
    /// Entries at or after this time: RFC 3339, or a duration ago (`2h`).
    #[serde(default)]
    pub since: Option<String>,
}

/// What a rollback did.
#[derive(Debug)]
pub enum Rollback {
    /// It is a proposal now, to be approved and activated.
    Proposed(Proposal),
    /// Break-glass: switched at once; the incident item awaits sign-off.
    BrokeGlass {
        /// The activation.
        activation: Activation,
        /// The post-incident review item.
        incident: Proposal,
    },
}

/// Why a control-plane call failed (mapped to HTTP by the admin API).
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No or unknown bearer token (401).
    #[error("authentication required: send `Authorization: Bearer <token>`")]
    Unauthenticated,
    /// The principal lacks a role or the rules forbid it (403).
    #[error("{0}")]
    Forbidden(String),
    /// No such proposal or version (404).
    #[error("{0}")]
    NotFound(String),
    /// The proposed bundle does not compile (422).
    #[error("the proposed bundle is not valid ({} errors)", .0.len())]
    Invalid(Vec<PolicyError>),
    /// The request is well-formed but the state forbids it (409).
    #[error("{message}")]
    Conflict {
        /// What is wrong.
        message: String,
        /// Details (missing approvals, versions).
        detail: Value,
    },
    /// The state directory failed (500).
    #[error("{0}")]
    Internal(String),
    /// This process handed the state directory to a new one in a graceful
    /// upgrade (503: the caller retries and reaches the new process).
    #[error("this control plane is handing over to a new process; retry")]
    HandedOver,
}

impl From<StoreError> for ControlError {
    fn from(e: StoreError) -> Self {
        ControlError::Internal(e.to_string())
    }
}

impl ControlError {
    fn conflict(message: impl Into<String>, detail: Value) -> Self {
        ControlError::Conflict {
            message: message.into(),
            detail,
        }
    }

    /// A stable short name for audit records.
    fn kind(&self) -> &'static str {
        match self {
            ControlError::Unauthenticated => "unauthenticated",
            ControlError::Forbidden(_) => "forbidden",
            ControlError::NotFound(_) => "not_found",
            ControlError::Invalid(_) => "invalid",
            ControlError::Conflict { .. } => "conflict",
            ControlError::Internal(_) => "internal",
            ControlError::HandedOver => "handed_over",
        }
    }
}

/// The control plane.
#[derive(Debug)]
pub struct Control {
    store: Store,
    audit: AuditLog,
    principals: Principals,
    shared: Arc<Shared>,
    lock: Mutex<()>,
    active_tx: tokio::sync::watch::Sender<String>,
    refusals: RefusalSampler,
    /// Single sign-on through the enterprise identity provider, if set.
    sso: Option<Sso>,
    /// The principals file as last accounted for in the audit log (its
    /// mtime and content).
    accounted: Mutex<(Option<SystemTime>, Vec<Principal>)>,
    /// The state directory's lock, held while this process may change it.
    state_lock: Mutex<Option<StateLock>>,
    /// Handed over in a graceful upgrade: nothing is written any more.
    handed_over: std::sync::atomic::AtomicBool,
}

/// One process at a time changes a state directory: it holds an advisory
/// lock on `.lock` in it (dropped with the process, or at a hand-over).
#[derive(Debug)]
pub struct StateLock(#[allow(dead_code)] std::fs::File);

impl StateLock {
    /// Take the lock of `dir`, waiting up to `wait` for another process to
    /// let it go (a graceful upgrade's old process hands it over).
    pub fn acquire(dir: &Path, wait: std::time::Duration) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        let start = std::time::Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(Self(file)),
                Err(std::fs::TryLockError::WouldBlock) if start.elapsed() < wait => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
                    "the state directory {} is in use by another gatehouse process (to replace it without downtime, start the new one with --upgrade)",
                    dir.display()
                ),
                Err(std::fs::TryLockError::Error(e)) => {
                    anyhow::bail!("cannot lock {}: {e}", path.display())
                }
            }
        }
    }
}

/// Where the accounted principals are kept (beside the principals file).
fn accounted_path(store: &Store) -> std::path::PathBuf {
    store.dir().join("principals.accounted.json")
}

/// Anonymous refusals from one source address are written to the audit
/// log at most once per interval (a flood of unauthenticated calls must
/// not become a flood of fsynced entries).
pub const REFUSAL_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// Source addresses remembered at most; beyond, expired ones are dropped
/// (and if none has expired, all: every source then writes once more).
const REFUSAL_SOURCES: usize = 10_000;

/// When each source's last refusal entry was written, and how many of its
/// refusals have not been written since.
#[derive(Debug, Default)]
struct RefusalSampler {
    seen: Mutex<std::collections::HashMap<Option<std::net::IpAddr>, (std::time::Instant, u64)>>,
}

impl RefusalSampler {
    /// `Some(unwritten)` when this refusal is to be written.
    fn note(&self, source: Option<std::net::IpAddr>, now: std::time::Instant) -> Option<u64> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= REFUSAL_SOURCES && !seen.contains_key(&source) {
            seen.retain(|_, (at, _)| now.duration_since(*at) < REFUSAL_INTERVAL);
            if seen.len() >= REFUSAL_SOURCES {
                seen.clear();
            }
        }
        match seen.get_mut(&source) {
            Some((at, n)) if now.duration_since(*at) < REFUSAL_INTERVAL => {
                *n += 1;
                None
            }
            Some((at, n)) => {
                let unwritten = *n;
                (*at, *n) = (now, 0);
                Some(unwritten)
            }
            None => {
                seen.insert(source, (now, 0));
                Some(0)
            }
        }
    }
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Compile stored files and check they are the version they claim to be.
pub fn compile_stored(b: &StoredBundle) -> Result<Bundle, String> {
    let bundle = policy::compile(&b.files).map_err(|e| {
        format!(
            "stored bundle {} does not compile: {e}",
            &b.version[..12.min(b.version.len())]
        )
    })?;
    if bundle.version != b.version {
        return Err(format!(
            "stored bundle {} compiles to {} (tampered or corrupt)",
            b.version, bundle.version
        ));
    }
    Ok(bundle)
}

/// Open the state directory and compile the bundle to serve: the active
/// version, or — on first start — the bundle in `bootstrap` (activated and
/// audited as `bootstrap`).
pub fn open_state(
    dir: &Path,
    bootstrap: Option<&Path>,
    signing_key: Option<&Path>,
) -> anyhow::Result<(Store, AuditLog, Bundle)> {
    let store = Store::open(dir)?;
    let signer = match signing_key {
        None => None,
        Some(key) => {
            let (k, d) = (key.canonicalize()?, store.dir().canonicalize()?);
            if k.starts_with(&d) {
                anyhow::bail!(
                    "the audit signing key {} is inside the state directory: keep it where whoever can write {} cannot read it",
                    key.display(),
                    dir.display()
                );
            }
            Some(super::audit::Signer::load(key)?)
        }
    };
    if let Some(s) = &signer {
        tracing::info!(public_key = %s.public_hex(), "audit entries are signed");
    }
    let audit = AuditLog::open(&store.audit_path(), signer)
        .map_err(|e| anyhow::anyhow!("audit log {}: {e}", store.audit_path().display()))?;
    if let Some(current) = store.active()?.current() {
        let stored = store.bundle(&current.version)?.ok_or_else(|| {
            anyhow::anyhow!(
                "the active bundle {} is missing from {}",
                current.version,
                dir.display()
            )
        })?;
        let bundle = compile_stored(&stored).map_err(|e| anyhow::anyhow!(e))?;
        return Ok((store, audit, bundle));
    }
    let Some(src) = bootstrap else {
        anyhow::bail!(
            "{} has no active version yet: start once with --policies DIR to import the first bundle",
            dir.display()
        );
    };
    let files = policy::load_dir(src).map_err(|e| anyhow::anyhow!("{e}"))?;
    let bundle = policy::compile(&files).map_err(|e| anyhow::anyhow!("{e}"))?;
    store.put_bundle(&StoredBundle {
        version: bundle.version.clone(),
        files,
    })?;
    store.record_activation(&bundle.version, "system", "bootstrap".into())?;
    audit
        .append(Record {
            principal: "system".into(),
            action: "bundle.bootstrap".into(),
            subject: bundle.version.clone(),
            outcome: "ok".into(),
            detail: json!({ "source": src.display().to_string() }),
        })
        .map_err(|e| anyhow::anyhow!("audit log: {e}"))?;
    Ok((store, audit, bundle))
}

impl Control {
    /// A control plane over an opened state (see [`open_state`]) whose
    /// activations go to `shared`.
    pub fn new(store: Store, audit: AuditLog, shared: Arc<Shared>) -> Self {
        let version = shared.active().bundle.version.clone();
        let (active_tx, _) = tokio::sync::watch::channel(version);
        let known = std::fs::read(accounted_path(&store))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let control = Self {
            principals: Principals::new(store.principals_path()),
            store,
            audit,
            shared,
            lock: Mutex::new(()),
            active_tx,
            refusals: RefusalSampler::default(),
            sso: None,
            accounted: Mutex::new((None, known)),
            state_lock: Mutex::new(None),
            handed_over: std::sync::atomic::AtomicBool::new(false),
        };
        control.account_principals();
        control
    }

    /// Hold the state directory's lock for as long as this process serves.
    pub fn holding(self, lock: StateLock) -> Self {
        *self.state_lock.lock().unwrap_or_else(|p| p.into_inner()) = Some(lock);
        self
    }

    /// Hand the state directory to the process taking over in a graceful
    /// upgrade: wait for the change being made (if any), stop writing (every
    /// later call gets [`ControlError::HandedOver`]) and let the lock go.
    pub fn hand_over(&self) {
        self.quiesce();
        self.state_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        tracing::info!("control plane handed the state directory over to the new process");
    }

    /// Stop changing the state directory: wait for the change under way
    /// (if any) and the audit entry being written, then refuse every later
    /// change ([`ControlError::HandedOver`]) and append nothing more. Done
    /// at a hand-over and before the process exits, so that no change is
    /// cut in half.
    pub fn quiesce(&self) {
        let _serial = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.handed_over
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.audit.seal();
    }

    fn is_handed_over(&self) -> bool {
        self.handed_over.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Accept the identity provider's tokens beside the static ones.
    pub fn with_sso(mut self, sso: Sso) -> Self {
        self.sso = Some(sso);
        self
    }

    /// Record in the audit log any change to the principals file made
    /// outside the admin API (an offline `admin add-principal`, an edit):
    /// who was added, removed, given roles or a new token. Checked at start
    /// and before each call; only the first start's principals (the
    /// bootstrap) are expected to arrive this way.
    fn account_principals(&self) {
        let path = self.store.principals_path();
        let mtime = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        let mut accounted = self.accounted.lock().unwrap_or_else(|p| p.into_inner());
        if accounted.0.is_some() && accounted.0 == mtime {
            return;
        }
        let Ok(now) = super::principals::list(&path) else {
            return;
        };
        let changes = super::principals::outside_changes(&accounted.1, &now);
        if !changes.is_empty() {
            tracing::warn!(changes = ?changes, "principals changed outside the admin API");
            self.audit(
                "state-directory",
                "principals.changed_outside_api",
                "-",
                "detected",
                json!({ "changes": changes }),
            );
        }
        self.remember_principals(&mut accounted, now, mtime);
    }

    fn remember_principals(
        &self,
        accounted: &mut (Option<SystemTime>, Vec<Principal>),
        now: Vec<Principal>,
        mtime: Option<SystemTime>,
    ) {
        if let Ok(bytes) = serde_json::to_vec(&now) {
            if let Err(e) =
                super::store::write_atomically(&accounted_path(&self.store), &bytes, 0o600)
            {
                tracing::error!(error = %e, "cannot record the accounted principals");
            }
        }
        *accounted = (mtime, now);
    }

    /// The principals (admin): names, roles, creation and expiry; never
    /// token hashes.
    pub fn principals(&self) -> Result<Value, ControlError> {
        let list = super::principals::list(&self.store.principals_path())
            .map_err(|e| ControlError::Internal(e.to_string()))?;
        let now = SystemTime::now();
        let mut out: Vec<Value> = list
            .iter()
            .map(|p| {
                json!({
                    "name": p.name,
                    "roles": p.roles,
                    "created": p.created,
                    "expires": p.expires,
                    "expired": p.expired(now),
                    "source": "token",
                })
            })
            .collect();
        if let Some(sso) = &self.sso {
            out.extend(sso.remembered().into_iter().map(|(name, s)| {
                json!({ "name": name, "roles": s.roles, "last_seen": s.last_seen, "source": "oidc" })
            }));
        }
        Ok(json!({ "principals": out }))
    }

    /// Create a principal (or, with `rotate`, issue it a new token); the
    /// token is returned once and never stored or audited.
    pub fn create_principal(
        &self,
        who: &Principal,
        name: &str,
        roles: &[Role],
        expires_in: Option<std::time::Duration>,
        rotate: bool,
    ) -> Result<String, ControlError> {
        let _g = self.guard()?;
        self.account_principals();
        let expires = expires_in.map(|d| SystemTime::now() + d);
        let path = self.store.principals_path();
        let token =
            super::principals::add(&path, name, roles, rotate, expires).map_err(|e| match e {
                super::principals::PrincipalError::Exists(_)
                | super::principals::PrincipalError::BadName(_) => {
                    ControlError::conflict(e.to_string(), Value::Null)
                }
                other => ControlError::Internal(other.to_string()),
            })?;
        self.accounted_after_api_write();
        let action = if rotate {
            "principal.rotate"
        } else {
            "principal.create"
        };
        self.audit(
            &who.name,
            action,
            name,
            "ok",
            json!({ "roles": roles, "expires": expires.map(|t| humantime::format_rfc3339_seconds(t).to_string()) }),
        );
        Ok(token)
    }

    /// Change a principal's roles, or revoke it (`roles: None`).
    pub fn change_principal(
        &self,
        who: &Principal,
        name: &str,
        roles: Option<&[Role]>,
    ) -> Result<(), ControlError> {
        let _g = self.guard()?;
        self.account_principals();
        let path = self.store.principals_path();
        let result = match roles {
            Some(r) => super::principals::set_roles(&path, name, r),
            None => super::principals::revoke(&path, name),
        };
        result.map_err(|e| match e {
            super::principals::PrincipalError::Unknown(_) => ControlError::NotFound(e.to_string()),
            other => ControlError::Internal(other.to_string()),
        })?;
        self.accounted_after_api_write();
        match roles {
            Some(r) => self.audit(
                &who.name,
                "principal.roles",
                name,
                "ok",
                json!({ "roles": r }),
            ),
            None => self.audit(&who.name, "principal.revoke", name, "ok", Value::Null),
        }
        Ok(())
    }

    /// The file as the API just wrote it is the accounted set.
    fn accounted_after_api_write(&self) {
        let path = self.store.principals_path();
        let mtime = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        if let Ok(now) = super::principals::list(&path) {
            let mut accounted = self.accounted.lock().unwrap_or_else(|p| p.into_inner());
            self.remember_principals(&mut accounted, now, mtime);
        }
    }

    /// Follow the active version (fleet long-polls).
    pub fn watch_active(&self) -> tokio::sync::watch::Receiver<String> {
        self.active_tx.subscribe()
    }

    /// The state directory.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Append to the audit log; a failure is logged loudly (the call it
    /// records has already happened or been refused).
    pub fn audit(
        &self,
        principal: &str,
        action: &str,
        subject: &str,
        outcome: &str,
        detail: Value,
    ) {
        if self.is_handed_over() {
            tracing::warn!(
                action,
                subject,
                outcome,
                "not audited here: the state directory was handed over"
            );
            return;
        }
        if let Err(e) = self.audit.append(Record {
            principal: principal.to_string(),
            action: action.to_string(),
            subject: subject.to_string(),
            outcome: outcome.to_string(),
            detail,
        }) {
            tracing::error!(error = %e, action, subject, "cannot append to the audit log");
        }
    }

    /// Authenticate a bearer token — a static token, or with single
    /// sign-on an IdP token — and check a role; refusals are audited as
    /// `action` on `subject`. Anonymous refusals are sampled: the first from a source address in
    /// each [`REFUSAL_INTERVAL`] is written, with how many went unwritten
    /// since the source's previous entry.
    pub fn authorize(
        &self,
        token: Option<&str>,
        source: Option<std::net::IpAddr>,
        role: Role,
        action: &str,
        subject: &str,
    ) -> Result<Principal, ControlError> {
        if self.is_handed_over() {
            return Err(ControlError::HandedOver);
        }
        self.account_principals();
        let mut reason = if token.is_some() {
            "unknown token"
        } else {
            "no token"
        };
        let principal = match (token, &self.sso) {
            (Some(t), Some(sso)) if Sso::looks_like_jwt(t) => {
                match sso.authenticate(t, |n| self.principals.is_static(n)) {
                    Ok((p, sign_in)) => {
                        self.audit_sign_in(&p, sign_in);
                        Some(p)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "admin sign-in refused");
                        reason = "identity provider token refused";
                        None
                    }
                }
            }
            (Some(t), _) => self.principals.authenticate(t),
            (None, _) => None,
        };
        let Some(principal) = principal else {
            if let Some(unwritten) = self.refusals.note(source, std::time::Instant::now()) {
                self.audit(
                    "anonymous",
                    action,
                    subject,
                    "refused",
                    json!({
                        "status": 401,
                        "reason": reason,
                        "source": source.map_or("unknown".to_string(), |s| s.to_string()),
                        "unwritten_since_last": unwritten,
                    }),
                );
            }
            return Err(ControlError::Unauthenticated);
        };
        if !principal.has(role) {
            let reason = format!(
                "`{}` lacks the {} role for {action}",
                principal.name,
                role.as_str()
            );
            self.audit(
                &principal.name,
                action,
                subject,
                "refused",
                json!({ "status": 403, "reason": reason }),
            );
            return Err(ControlError::Forbidden(reason));
        }
        Ok(principal)
    }

    /// Run one admin call: authenticate `token`, check `role`, run `f`;
    /// a refusal at any step is audited as `action` on `subject`.
    pub fn call<T>(
        &self,
        token: Option<&str>,
        source: Option<std::net::IpAddr>,
        role: Role,
        action: &str,
        subject: &str,
        f: impl FnOnce(&Control, &Principal) -> Result<T, ControlError>,
    ) -> Result<T, ControlError> {
        let who = self.authorize(token, source, role, action, subject)?;
        let result = f(self, &who);
        if let Err(e) = &result {
            let mut detail = json!({ "error": e.kind(), "reason": e.to_string() });
            if let ControlError::Conflict { detail: d, .. } = e {
                detail["detail"] = d.clone();
            }
            if let ControlError::Invalid(errors) = e {
                detail["errors"] =
                    json!(errors.iter().map(ToString::to_string).collect::<Vec<_>>());
            }
            self.audit(&who.name, action, subject, "refused", detail);
        }
        result
    }

    /// Serialise a change to the state, unless it was handed over.
    fn guard(&self) -> Result<std::sync::MutexGuard<'_, ()>, ControlError> {
        let guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.is_handed_over() {
            return Err(ControlError::HandedOver);
        }
        Ok(guard)
    }

    /// The active version, its history and the open proposals.
    pub fn status(&self) -> Result<Value, ControlError> {
        let pointer = self.store.active()?;
        let proposals = self.store.proposals()?;
        let open: Vec<Value> = proposals
            .iter()
            .filter(|p| !p.state.is_final() || p.state == ProposalState::Incident)
            .map(|p| json!({ "id": p.id, "title": p.title, "author": p.author, "state": p.state }))
            .collect();
        Ok(json!({
            "active": pointer.current(),
            "history": pointer.history,
            "open_proposals": open,
        }))
    }

    /// A proposal with its current tally.
    pub fn describe(&self, p: &Proposal) -> Value {
        let mut v = serde_json::to_value(p).unwrap_or(Value::Null);
        v["tally"] = serde_json::to_value(p.tally()).unwrap_or(Value::Null);
        v
    }

    /// Every proposal (newest first).
    pub fn proposals(&self) -> Result<Vec<Proposal>, ControlError> {
        let mut all = self.store.proposals()?;
        all.reverse();
        Ok(all)
    }

    /// One proposal.
    pub fn proposal(&self, id: u64) -> Result<Proposal, ControlError> {
        self.store
            .proposal(id)?
            .ok_or_else(|| ControlError::NotFound(format!("no proposal {id}")))
    }

    /// A stored bundle.
    pub fn bundle(&self, version: &str) -> Result<StoredBundle, ControlError> {
        self.store
            .bundle(version)?
            .ok_or_else(|| ControlError::NotFound(format!("no bundle {version}")))
    }

    /// Audit entries that pass `filter` (the whole log is verified first).
    pub fn audit_entries(&self, filter: &AuditFilter) -> Result<Vec<Entry>, ControlError> {
        let since = match filter.since.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(s) => Some(
                humantime::parse_rfc3339_weak(s)
                    .or_else(|_| humantime::parse_duration(s).map(|d| SystemTime::now() - d))
                    .map_err(|_| {
                        ControlError::conflict(
                            format!("`since` must be an RFC 3339 time or a duration such as 2h, not `{s}`"),
                            Value::Null,
                        )
                    })?,
            ),
        };
        let all = super::audit::verify(&self.store.audit_path())
            .map_err(|e| ControlError::Internal(format!("the audit log does not verify: {e}")))?;
        Ok(all
            .into_iter()
            .filter(|e| e.seq > filter.after)
            .filter(|e| {
                filter
                    .principal
                    .as_ref()
                    .is_none_or(|p| e.record.principal == *p)
            })
            .filter(|e| {
                filter.action.as_ref().is_none_or(|a| {
                    e.record.action == *a || e.record.action.starts_with(&format!("{a}."))
                })
            })
            .filter(|e| {
                since.is_none_or(|since| {
                    humantime::parse_rfc3339_weak(&e.time).is_ok_and(|t| t >= since)
                })
            })
            .collect())
    }

    /// Propose `files` as the next version.
    pub fn propose(
        &self,
        who: &Principal,
        title: &str,
        files: Vec<SourceFile>,
    ) -> Result<Proposal, ControlError> {
        let _g = self.guard()?;
        let action = "proposal.create";
        if title.trim().is_empty() {
            return Err(ControlError::conflict(
                "a proposal needs a title",
                Value::Null,
            ));
        }
        let bundle = match policy::compile(&files) {
            Ok(b) => b,
            Err(PolicyErrors(errors)) => return Err(ControlError::Invalid(errors)),
        };
        let active = self.shared.active();
        let base = &active.bundle;
        if bundle.version == base.version {
            return Err(ControlError::conflict(
                "the proposal is identical to the active version",
                json!({ "version": base.version }),
            ));
        }
        self.check_new_reviewers(&base.review, &bundle.review, &files)?;
        let base_files = self
            .store
            .bundle(&base.version)?
            .ok_or_else(|| {
                ControlError::Internal(format!(
                    "the active version {} is not in the bundle store",
                    base.short_version()
                ))
            })?
            .files;
        let changes = super::policy_diff::diff(
            Side {
                bundle: base,
                files: &base_files,
            },
            Side {
                bundle: &bundle,
                files: &files,
            },
        );
        let mut required = super::review::required(&base.review, &changes);
        let mut groups: std::collections::BTreeMap<String, Vec<String>> = required
            .iter()
            .map(|r| {
                (
                    r.group.clone(),
                    base.review
                        .groups
                        .get(&r.group)
                        .cloned()
                        .unwrap_or_default(),
                )
            })
            .collect();
        if required.iter().all(|r| r.approvals == 0) {
            // The floor no policy file can lower: one approval by a
            // reviewer who is not the author, also with no review rules.
            let mut classes: Vec<Class> = changes.iter().map(|c| c.class).collect();
            classes.sort();
            classes.dedup();
            (required, groups) = self.floor(&classes);
        }
        // A version rejected before stays marked: its reviewers see why.
        let rejected_before = self
            .store
            .proposals()?
            .into_iter()
            .filter(|q| q.version == bundle.version && q.state == ProposalState::Rejected)
            .max_by_key(|q| q.id)
            .map(|q| PriorRejection {
                proposal: q.id,
                by: q
                    .reviews
                    .iter()
                    .filter(|r| r.verdict == Verdict::Reject)
                    .map(|r| format!("{}: {}", r.reviewer, r.comment))
                    .collect(),
            });
        self.store.put_bundle(&StoredBundle {
            version: bundle.version.clone(),
            files,
        })?;
        let mut p = Proposal {
            id: self.store.next_proposal_id()?,
            title: title.trim().to_string(),
            author: who.name.clone(),
            created: now(),
            base: base.version.clone(),
            version: bundle.version.clone(),
            state: ProposalState::Open,
            changes: serde_json::to_value(&changes).unwrap_or(Value::Null),
            required,
            groups,
            reviews: Vec::new(),
            closed: None,
            rejected_before,
            not_principals: Vec::new(),
        };
        p.not_principals = self.not_principals(&p.groups)?;
        if p.tally().met {
            p.state = ProposalState::Approved;
        }
        self.store.put_proposal(&p)?;
        self.audit(
            &who.name,
            action,
            &p.id.to_string(),
            "ok",
            json!({ "title": p.title, "base": p.base, "version": p.version, "changes": changes.len(), "required": p.required }),
        );
        Ok(p)
    }

    /// Approve or reject a proposal.
    pub fn review(
        &self,
        who: &Principal,
        id: u64,
        verdict: Verdict,
        comment: &str,
    ) -> Result<Proposal, ControlError> {
        let _g = self.guard()?;
        let action = match verdict {
            Verdict::Approve => "proposal.approve",
            Verdict::Reject => "proposal.reject",
        };
        let subject = id.to_string();
        let mut p = self.proposal(id)?;
        if p.state.is_final() && p.state != ProposalState::Incident {
            return Err(ControlError::conflict(
                format!(
                    "proposal {id} is {}; it takes no more reviews",
                    p.state.as_str()
                ),
                Value::Null,
            ));
        }
        if verdict == Verdict::Reject && comment.trim().is_empty() {
            return Err(ControlError::conflict(
                "a rejection needs a reason (--comment)",
                Value::Null,
            ));
        }
        if p.author == who.name && verdict == Verdict::Approve {
            return Err(ControlError::Forbidden(
                "authors never approve their own proposal (four-eyes rule)".into(),
            ));
        }
        p.add_review(Review {
            reviewer: who.name.clone(),
            verdict,
            comment: comment.to_string(),
            at: now(),
        });
        self.store.put_proposal(&p)?;
        let tally = p.tally();
        self.audit(
            &who.name,
            action,
            &subject,
            "ok",
            json!({ "comment": comment, "state": p.state, "missing": tally.missing }),
        );
        Ok(p)
    }

    /// Withdraw a proposal (its author or an admin).
    pub fn withdraw(&self, who: &Principal, id: u64) -> Result<Proposal, ControlError> {
        let _g = self.guard()?;
        let (action, subject) = ("proposal.withdraw", id.to_string());
        let mut p = self.proposal(id)?;
        if p.author != who.name && !who.has(Role::Admin) {
            return Err(ControlError::Forbidden(
                "only the author or an admin withdraws a proposal".into(),
            ));
        }
        if p.state.is_final() {
            return Err(ControlError::conflict(
                format!("proposal {id} is {}", p.state.as_str()),
                Value::Null,
            ));
        }
        p.state = ProposalState::Withdrawn;
        p.closed = Some(now());
        self.store.put_proposal(&p)?;
        self.audit(&who.name, action, &subject, "ok", Value::Null);
        Ok(p)
    }

    /// Activate an approved proposal whose base is still active.
    pub fn activate(&self, who: &Principal, id: u64) -> Result<Activation, ControlError> {
        let _g = self.guard()?;
        let (action, subject) = ("proposal.activate", id.to_string());
        let mut p = self.proposal(id)?;
        match p.state {
            ProposalState::Open | ProposalState::Approved => {}
            ProposalState::Rejected => {
                return Err(ControlError::conflict(
                    format!(
                        "proposal {id} was rejected by {}; a rejected proposal is never activated",
                        p.rejected_by().join(", ")
                    ),
                    json!({ "state": p.state }),
                ))
            }
            s => {
                return Err(ControlError::conflict(
                    format!("proposal {id} is {}", s.as_str()),
                    json!({ "state": s }),
                ))
            }
        }
        let active = self.store.active()?;
        let current = active
            .current()
            .map(|a| a.version.clone())
            .unwrap_or_default();
        if current != p.base {
            p.state = ProposalState::Superseded;
            p.closed = Some(now());
            self.store.put_proposal(&p)?;
            return Err(ControlError::conflict(
                format!("proposal {id} is stale: it was made against {} but {} is active now; propose it again", &p.base[..12], &current[..12.min(current.len())]),
                json!({ "base": p.base, "active": current }),
            ));
        }
        let tally = p.tally();
        if !tally.met {
            return Err(ControlError::conflict(
                format!(
                    "proposal {id} lacks approvals: {}",
                    tally.missing.join("; ")
                ),
                serde_json::to_value(&tally).unwrap_or(Value::Null),
            ));
        }
        let activation = self.switch_to(&who.name, &p.version, format!("proposal {id}"))?;
        p.state = ProposalState::Activated;
        p.closed = Some(activation.at.clone());
        self.store.put_proposal(&p)?;
        let superseded = self.supersede_stale(&p.version)?;
        self.audit(&who.name, action, &subject, "ok", json!({ "from": current, "to": p.version, "approvals": tally.groups, "superseded": superseded }));
        Ok(activation)
    }

    /// Roll back to `to` (default: the version active before the current
    /// one); only versions that were active before qualify, and a reason is
    /// required. A rollback is proposed like any change: its diff is listed
    /// beside a `rollback` change, and it needs what `review.yaml` asks of
    /// the `rollback` class (when no rule names it: one approval from
    /// another operator) before `activate`. With `break_glass` it switches
    /// at once, flagged in the audit log, and leaves an `incident` item that
    /// stays open until a reviewer other than the operator signs it off.
    pub fn rollback(
        &self,
        who: &Principal,
        to: Option<&str>,
        reason: &str,
        break_glass: bool,
    ) -> Result<Rollback, ControlError> {
        let _g = self.guard()?;
        let action = if break_glass {
            "bundle.rollback"
        } else {
            "rollback.propose"
        };
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(ControlError::conflict(
                "a rollback needs a reason (--reason)",
                Value::Null,
            ));
        }
        let pointer = self.store.active()?;
        let current = pointer
            .current()
            .map(|a| a.version.clone())
            .unwrap_or_default();
        let target = match to {
            Some(v) => {
                let matches: Vec<&Activation> = pointer
                    .history
                    .iter()
                    .filter(|a| a.version.starts_with(v) && v.len() >= 8)
                    .collect();
                match matches.first() {
                    Some(a) => a.version.clone(),
                    None => return Err(ControlError::NotFound(format!(
                        "{v} was never active here (give at least 8 hex digits of a version from `policy status`)"
                    ))),
                }
            }
            None => match pointer.history.iter().rev().find(|a| a.version != current) {
                Some(a) => a.version.clone(),
                None => {
                    return Err(ControlError::conflict(
                        "there is no earlier version to roll back to",
                        Value::Null,
                    ))
                }
            },
        };
        if target == current {
            return Err(ControlError::conflict(
                "that version is already active",
                Value::Null,
            ));
        }
        // The diff a reviewer sees: from what is active to the target.
        let active = self.shared.active();
        let (now_stored, then_stored) = (self.bundle(&current)?, self.bundle(&target)?);
        let then = compile_stored(&then_stored).map_err(ControlError::Internal)?;
        let mut changes = super::policy_diff::diff(
            Side {
                bundle: &active.bundle,
                files: &now_stored.files,
            },
            Side {
                bundle: &then,
                files: &then_stored.files,
            },
        );
        changes.insert(
            0,
            Change {
                class: Class::Rollback,
                app: String::new(),
                text: format!(
                    "roll back {} → {}{}: {reason}",
                    &current[..12.min(current.len())],
                    &target[..12],
                    if break_glass { " (break-glass)" } else { "" }
                ),
                contract: None,
                fields: Vec::new(),
            },
        );
        let title = format!("Rollback to {}: {reason}", &target[..12]);
        let (required, groups) = if break_glass {
            // Signed off after the fact by any reviewer but the operator.
            self.floor(&[Class::Rollback])
        } else {
            match active.bundle.review.rule_for(Class::Rollback) {
                Some((n, group)) => (
                    vec![Requirement {
                        group: group.to_string(),
                        approvals: n,
                        classes: vec![Class::Rollback],
                    }],
                    [(
                        group.to_string(),
                        active
                            .bundle
                            .review
                            .groups
                            .get(group)
                            .cloned()
                            .unwrap_or_default(),
                    )]
                    .into(),
                ),
                None => (
                    vec![Requirement {
                        group: OPERATORS_GROUP.to_string(),
                        approvals: 1,
                        classes: vec![Class::Rollback],
                    }],
                    [(
                        OPERATORS_GROUP.to_string(),
                        self.names_with_role(Role::Operator),
                    )]
                    .into(),
                ),
            }
        };
        let mut p = Proposal {
            id: self.store.next_proposal_id()?,
            title,
            author: who.name.clone(),
            created: now(),
            base: current.clone(),
            version: target.clone(),
            state: ProposalState::Open,
            changes: serde_json::to_value(&changes).unwrap_or(Value::Null),
            required,
            groups,
            reviews: Vec::new(),
            closed: None,
            rejected_before: None,
            not_principals: Vec::new(),
        };
        p.not_principals = self.not_principals(&p.groups)?;
        if !break_glass {
            self.store.put_proposal(&p)?;
            self.audit(
                &who.name,
                action,
                &p.id.to_string(),
                "ok",
                json!({ "from": current, "to": target, "reason": reason, "changes": changes.len(), "required": p.required }),
            );
            return Ok(Rollback::Proposed(p));
        }
        let activation = self.switch_to(&who.name, &target, "rollback (break-glass)".into())?;
        p.state = ProposalState::Incident;
        self.store.put_proposal(&p)?;
        let superseded = self.supersede_stale(&target)?;
        self.audit(
            &who.name,
            action,
            &target,
            "ok",
            json!({ "from": current, "to": target, "reason": reason, "break_glass": true, "incident": p.id, "superseded": superseded }),
        );
        tracing::warn!(
            by = %who.name,
            to = &target[..12],
            incident = p.id,
            "break-glass rollback: a reviewer must sign off incident {}",
            p.id
        );
        Ok(Rollback::BrokeGlass {
            activation,
            incident: p,
        })
    }

    /// A proposal that adds someone to a reviewer group who is not a
    /// principal here is refused (422, at the group in the file): their
    /// name would count as eligible, yet no one can approve as them — or
    /// whoever is later given that name would approve at once.
    fn check_new_reviewers(
        &self,
        base: &super::review::ReviewRules,
        new: &super::review::ReviewRules,
        files: &[SourceFile],
    ) -> Result<(), ControlError> {
        let known = self.known_names()?;
        let file = super::policy_tree::PolicyTree::build(files)
            .origin("/review")
            .map_or_else(|| "review.yaml".to_string(), |(f, _)| f.to_string());
        let mut errors = Vec::new();
        for (group, members) in &new.groups {
            let before = base.groups.get(group);
            for m in members {
                let added = before.is_none_or(|b| !b.contains(m));
                if added && !known.contains(m) {
                    errors.push(PolicyError::new(
                        &file,
                        format!("/review/groups/{}", super::policy_tree::escape(group)),
                        format!("`{m}` is not a principal of this control plane: create it (POST /v1/principals) before adding it to `{group}`"),
                    ));
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ControlError::Invalid(errors))
        }
    }

    /// Members of `groups` who are neither static principals nor people
    /// who signed in through the identity provider, sorted.
    fn not_principals(
        &self,
        groups: &std::collections::BTreeMap<String, Vec<String>>,
    ) -> Result<Vec<String>, ControlError> {
        let known = self.known_names()?;
        let mut out: Vec<String> = groups
            .values()
            .flatten()
            .filter(|m| !known.contains(*m))
            .cloned()
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Every principal name: static ones and those remembered from the
    /// identity provider.
    fn known_names(&self) -> Result<Vec<String>, ControlError> {
        let mut known: Vec<String> = super::principals::list(&self.store.principals_path())
            .map_err(|e| ControlError::Internal(e.to_string()))?
            .into_iter()
            .map(|p| p.name)
            .collect();
        if let Some(sso) = &self.sso {
            known.extend(sso.remembered().into_keys());
        }
        Ok(known)
    }

    /// Principals holding `role`: static ones and those signed in through
    /// the identity provider, sorted.
    fn names_with_role(&self, role: Role) -> Vec<String> {
        let mut names = self.principals.with_role(role);
        if let Some(sso) = &self.sso {
            names.extend(sso.with_role(role));
        }
        names.sort();
        names.dedup();
        names
    }

    /// Audit a principal's first sign-in through the identity provider and
    /// each change of the roles its groups give it.
    fn audit_sign_in(&self, p: &Principal, sign_in: SignIn) {
        let detail = match sign_in {
            SignIn::Known => return,
            SignIn::New => json!({ "roles": p.roles, "first": true }),
            SignIn::RolesChanged(before) => json!({ "roles": p.roles, "before": before }),
        };
        self.audit(&p.name, "principal.sso_signin", &p.name, "ok", detail);
    }

    /// The review floor: one approval from any reviewer but the author.
    fn floor(
        &self,
        classes: &[Class],
    ) -> (
        Vec<Requirement>,
        std::collections::BTreeMap<String, Vec<String>>,
    ) {
        (
            vec![Requirement {
                group: FLOOR_GROUP.to_string(),
                approvals: 1,
                classes: classes.to_vec(),
            }],
            [(
                FLOOR_GROUP.to_string(),
                self.names_with_role(Role::Reviewer),
            )]
            .into(),
        )
    }

    /// Compile `version`, move the pointer, swap the data plane, wake the fleet.
    fn switch_to(&self, who: &str, version: &str, via: String) -> Result<Activation, ControlError> {
        let stored = self.bundle(version)?;
        let bundle = compile_stored(&stored).map_err(ControlError::Internal)?;
        let activation = self.store.record_activation(version, who, via)?;
        self.shared
            .activate(bundle, format!("state:{}", self.store.dir().display()));
        self.active_tx.send_replace(version.to_string());
        tracing::info!(version = &version[..12], by = who, via = %activation.via, "policy version activated");
        Ok(activation)
    }

    /// Open proposals whose base is no longer active become superseded.
    fn supersede_stale(&self, active: &str) -> Result<Vec<u64>, ControlError> {
        let mut out = Vec::new();
        for mut p in self.store.proposals()? {
            if !p.state.is_final() && p.base != active {
                p.state = ProposalState::Superseded;
                p.closed = Some(now());
                self.store.put_proposal(&p)?;
                out.push(p.id);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn anonymous_refusals_are_written_once_per_source_per_interval() {
        let s = RefusalSampler::default();
        let t0 = Instant::now();
        let (a, b) = (
            Some("10.0.0.1".parse().unwrap()),
            Some("10.0.0.2".parse().unwrap()),
        );
        assert_eq!(s.note(a, t0), Some(0), "the first refusal is written");
        for i in 1..=500 {
            assert_eq!(s.note(a, t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(s.note(b, t0), Some(0), "another source is written too");
        assert_eq!(
            s.note(a, t0 + REFUSAL_INTERVAL),
            Some(500),
            "the next interval's entry counts what was not written"
        );
        assert_eq!(
            s.note(a, t0 + REFUSAL_INTERVAL + Duration::from_secs(1)),
            None
        );
    }
}
