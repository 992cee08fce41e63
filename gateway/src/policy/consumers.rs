//! Compiling consumers, plans, app authentication and app limits.

use std::collections::HashMap;
use std::sync::Arc;

use super::bundle::{AppLimit, Auth, Plan};
use super::model::{AppSpec, AuthMode, ConsumerSpec, LimitPer, PlanSpec, QuotaWindow};
use super::PolicyError;
use crate::contract::BundleDocuments;
use crate::identity::jwt::{JwtVerifier, SecretSource};
use crate::identity::{parse_fingerprint, Consumer, ConsumerDirectory};
use crate::limits::quota::Window;
use crate::limits::{LimitKey, LimitRule, QuotaRule, Rate};

/// Where a consumer or plan was declared.
pub struct Declared<'a, T> {
    /// File.
    pub file: &'a str,
    /// Index in the file's list.
    pub index: usize,
    /// The spec.
    pub spec: &'a T,
}

/// Compile plans (by name).
pub fn compile_plans(
    plans: &[Declared<'_, PlanSpec>],
    errors: &mut Vec<PolicyError>,
) -> HashMap<String, Plan> {
    let mut out: HashMap<String, Plan> = HashMap::new();
    for d in plans {
        let at = format!("/plans/{}", d.index);
        let p = d.spec;
        if out.contains_key(&p.name) {
            errors.push(PolicyError::new(
                d.file,
                format!("{at}/name"),
                format!("plan `{}` is declared twice", p.name),
            ));
            continue;
        }
        let mut names = std::collections::HashSet::new();
        let mut limits = Vec::new();
        for (i, l) in p.limits.iter().enumerate() {
            if !names.insert(l.name.as_str()) {
                errors.push(PolicyError::new(
                    d.file,
                    format!("{at}/limits/{i}/name"),
                    format!("limit `{}` is declared twice in the plan", l.name),
                ));
                continue;
            }
            match Rate::parse(&l.rate) {
                Ok(rate) => limits.push(LimitRule {
                    id: format!("plan:{}:{}", p.name, l.name),
                    key: LimitKey::Consumer,
                    rate,
                    burst: l.burst.unwrap_or(rate.count),
                }),
                Err(m) => errors.push(PolicyError::new(d.file, format!("{at}/limits/{i}/rate"), m)),
            }
        }
        let mut quotas = Vec::new();
        for (i, q) in p.quotas.iter().enumerate() {
            if !names.insert(q.name.as_str()) {
                errors.push(PolicyError::new(
                    d.file,
                    format!("{at}/quotas/{i}/name"),
                    format!("`{}` is declared twice in the plan", q.name),
                ));
                continue;
            }
            quotas.push(QuotaRule {
                id: format!("plan:{}:{}", p.name, q.name),
                limit: q.limit,
                window: match q.window {
                    QuotaWindow::Minute => Window::Minute,
                    QuotaWindow::Hour => Window::Hour,
                    QuotaWindow::Day => Window::Day,
                },
            });
        }
        out.insert(
            p.name.clone(),
            Plan {
                name: p.name.clone(),
                priority: p.priority,
                limits,
                quotas,
            },
        );
    }
    out
}

/// Compile consumers; `app_names` and `plans` are for reference checks.
pub fn compile_consumers(
    consumers: &[Declared<'_, ConsumerSpec>],
    app_names: &[&str],
    plans: &HashMap<String, Plan>,
    errors: &mut Vec<PolicyError>,
) -> ConsumerDirectory {
    let mut out: Vec<Consumer> = Vec::with_capacity(consumers.len());
    let mut keys: Vec<([u8; 32], usize)> = Vec::with_capacity(consumers.len());
    // By index, not by copies of names and places: a million consumers
    // should not be held twice while they compile.
    let mut key_owner: HashMap<[u8; 32], usize> = HashMap::with_capacity(consumers.len());
    let mut ids: HashMap<&str, usize> = HashMap::with_capacity(consumers.len());
    let mut subjects: Vec<(String, String)> = Vec::new();
    let mut shared_plans: HashMap<String, Arc<str>> = HashMap::new();
    let mut shared_apps: HashMap<Vec<String>, Arc<[String]>> = HashMap::new();
    for (n, d) in consumers.iter().enumerate() {
        let at = format!("/consumers/{}", d.index);
        let c = d.spec;
        if let Some(&first) = ids.get(c.id.as_str()) {
            let first = &consumers[first];
            errors.push(PolicyError::new(
                d.file,
                format!("{at}/id"),
                format!(
                    "consumer `{}` is already declared at {} /consumers/{}",
                    c.id, first.file, first.index
                ),
            ));
            continue;
        }
        ids.insert(&c.id, n);
        if let Some(plan) = &c.plan {
            if !plans.contains_key(plan) {
                errors.push(PolicyError::new(
                    d.file,
                    format!("{at}/plan"),
                    format!("unknown plan `{plan}`"),
                ));
            }
        }
        let apps: Option<Arc<[String]>> = match &c.apps {
            None => None,
            Some(list) if list.iter().any(|a| a == "*") => None,
            Some(list) => {
                for (i, a) in list.iter().enumerate() {
                    if !app_names.contains(&a.as_str()) {
                        errors.push(PolicyError::new(
                            d.file,
                            format!("{at}/apps/{i}"),
                            format!("unknown app `{a}`"),
                        ));
                    }
                }
                Some(Arc::clone(
                    shared_apps
                        .entry(list.clone())
                        .or_insert_with(|| list.clone().into()),
                ))
            }
        };
        let idx = out.len();
        for (k, key) in c.keys.iter().enumerate() {
            match parse_fingerprint(&key.hash) {
                Some(h) => {
                    if let Some(&owner) = key_owner.get(&h) {
                        let owner = &consumers[owner].spec.id;
                        errors.push(PolicyError::new(d.file, format!("{at}/keys/{k}/hash"), format!("this key is already assigned to consumer `{owner}`")));
                    } else {
                        key_owner.insert(h, n);
                        keys.push((h, idx));
                    }
                }
                None => errors.push(PolicyError::new(d.file, format!("{at}/keys/{k}/hash"),
                    "expected `sha256:` and 64 hex digits (run `gatehouse consumer new`; keys themselves never go in policy files)")),
            }
        }
        for s in &c.jwt_subjects {
            subjects.push((s.clone(), c.id.clone()));
        }
        let plan = c.plan.as_ref().map(|p| {
            Arc::clone(
                shared_plans
                    .entry(p.clone())
                    .or_insert_with(|| p.as_str().into()),
            )
        });
        out.push(Consumer::new(&c.id, &c.name, plan, apps));
    }
    drop(key_owner);
    let mut dir = ConsumerDirectory::new(out, keys);
    for (s, id) in subjects {
        if let Some(i) = dir.by_id(&id) {
            dir.add_subject(s, i);
        }
    }
    dir
}

/// Compile an app's `auth`.
pub fn compile_auth(
    file: &str,
    at: &str,
    spec: &AppSpec,
    docs: &BundleDocuments,
    errors: &mut Vec<PolicyError>,
) -> Option<Auth> {
    let a = spec.auth.as_ref()?;
    if a.mode == AuthMode::None {
        return None;
    }
    let api_key_header = match &a.api_key {
        Some(k) => match http::HeaderName::from_bytes(k.header.as_bytes()) {
            Ok(h) => Some(h),
            Err(_) => {
                errors.push(PolicyError::new(
                    file,
                    format!("{at}/auth/api_key/header"),
                    format!("`{}` is not a header name", k.header),
                ));
                None
            }
        },
        None => None,
    };
    let jwt = a.jwt.as_ref().and_then(|j| {
        let secret = match (&j.hs256_secret_env, &j.hs256_secret_file) {
            (Some(env), None) => Some(SecretSource::Env(env.clone())),
            (None, Some(f)) => Some(SecretSource::File(f.clone())),
            (None, None) => None,
            (Some(_), Some(_)) => {
                errors.push(PolicyError::new(
                    file,
                    format!("{at}/auth/jwt"),
                    "give hs256_secret_env or hs256_secret_file, not both",
                ));
                return None;
            }
        };
        let jwks = match &j.jwks {
            Some(path) => match docs.get(path) {
                Some(v) => Some(v),
                None => {
                    errors.push(PolicyError::new(
                        file,
                        format!("{at}/auth/jwt/jwks"),
                        format!("`{path}` is not a document of the bundle (keys live under keys/)"),
                    ));
                    return None;
                }
            },
            None => None,
        };
        match JwtVerifier::new(
            j.issuer.clone(),
            j.audience.clone(),
            j.consumer_claim.clone(),
            j.leeway_secs,
            secret,
            jwks,
        ) {
            Ok(v) => Some(Arc::new(v)),
            Err(m) => {
                errors.push(PolicyError::new(file, format!("{at}/auth/jwt"), m));
                None
            }
        }
    });
    if api_key_header.is_none() && jwt.is_none() && a.api_key.is_none() && a.jwt.is_none() {
        errors.push(PolicyError::new(
            file,
            format!("{at}/auth"),
            "auth needs api_key and/or jwt",
        ));
    }
    Some(Auth {
        mode: a.mode,
        api_key_header,
        api_key_query: a.api_key.as_ref().and_then(|k| k.query.clone()),
        jwt,
    })
}

/// Compile an app's `limits`.
pub fn compile_limits(
    file: &str,
    at: &str,
    spec: &AppSpec,
    route_ids: &[&str],
    errors: &mut Vec<PolicyError>,
) -> Vec<AppLimit> {
    let mut out = Vec::new();
    let mut names = std::collections::HashSet::new();
    for (i, l) in spec.limits.iter().enumerate() {
        let lat = format!("{at}/limits/{i}");
        if !names.insert(l.name.as_str()) {
            errors.push(PolicyError::new(
                file,
                format!("{lat}/name"),
                format!("limit `{}` is declared twice in the app", l.name),
            ));
            continue;
        }
        let key = match (l.per, &l.header) {
            (LimitPer::Header, Some(h)) => match http::HeaderName::from_bytes(h.as_bytes()) {
                Ok(h) => LimitKey::Header(h),
                Err(_) => {
                    errors.push(PolicyError::new(
                        file,
                        format!("{lat}/header"),
                        format!("`{h}` is not a header name"),
                    ));
                    continue;
                }
            },
            (LimitPer::Header, None) => {
                errors.push(PolicyError::new(
                    file,
                    format!("{lat}/header"),
                    "per: header needs header",
                ));
                continue;
            }
            (_, Some(_)) => {
                errors.push(PolicyError::new(
                    file,
                    format!("{lat}/header"),
                    "header is only used with per: header",
                ));
                continue;
            }
            (LimitPer::Consumer, None) => LimitKey::Consumer,
            (LimitPer::Ip, None) => LimitKey::Ip,
            (LimitPer::App, None) => LimitKey::App,
            (LimitPer::Route, None) => LimitKey::Route,
        };
        for (r, id) in l.routes.iter().enumerate() {
            if !route_ids.contains(&id.as_str()) {
                errors.push(PolicyError::new(
                    file,
                    format!("{lat}/routes/{r}"),
                    format!("unknown route `{id}`"),
                ));
            }
        }
        match Rate::parse(&l.rate) {
            Ok(rate) => out.push(AppLimit {
                rule: LimitRule {
                    id: format!("app:{}:{}", spec.name, l.name),
                    key,
                    rate,
                    burst: l.burst.unwrap_or(rate.count),
                },
                routes: l.routes.clone(),
            }),
            Err(m) => errors.push(PolicyError::new(file, format!("{lat}/rate"), m)),
        }
    }
    out
}
