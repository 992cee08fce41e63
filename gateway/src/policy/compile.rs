//! The pure compile step: source files → [`Bundle`], or every error found.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, OnceLock};

use http::HeaderName;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::bundle::{
    App, Balancing, Bundle, ContractSettings, Ejection, HealthCheck, InstanceAddr, Timeouts,
    Upstream,
};
use super::model::{AppSpec, BalancingSpec, PolicyFile};
use super::{consumers, PolicyError, PolicyErrors, SourceFile};
use crate::contract::{BundleDocuments, Undocumented};
use crate::routing::{Router, MAX_INSTANCES};

/// The JSON Schema of policy files (`policies/policy.schema.json`).
pub const POLICY_SCHEMA: &str = include_str!("../../../policies/policy.schema.json");

/// Default validation cap for request and response bodies.
pub const DEFAULT_MAX_VALIDATED_BODY: u64 = 1 << 20;

/// Default request body cap when neither app nor route sets one.
pub const DEFAULT_MAX_REQUEST_BODY: u64 = 10 << 20;

fn schema_validator() -> &'static jsonschema::Validator {
    static V: OnceLock<jsonschema::Validator> = OnceLock::new();
    V.get_or_init(|| {
        let schema: Value = serde_json::from_str(POLICY_SCHEMA)
            .expect("policy.schema.json is valid JSON (checked by tests)");
        jsonschema::validator_for(&schema)
            .expect("policy.schema.json is a valid JSON Schema (checked by tests)")
    })
}

/// Compile source files into a bundle. Pure: no I/O, same input → same
/// bundle and version. Collects every error before giving up.
pub fn compile(sources: &[SourceFile]) -> Result<Bundle, PolicyErrors> {
    let mut errors = Vec::new();
    let mut parsed: Vec<(&SourceFile, Arc<cache::PolicySource>)> = Vec::new();
    let mut hasher = Sha256::new();
    let cache = cache::Session::begin();

    let (doc_files, policy_files): (Vec<&SourceFile>, Vec<&SourceFile>) =
        sources.iter().partition(|s| super::is_document(&s.path));
    let mut parsed_docs = BTreeMap::new();
    for f in &doc_files {
        match cache.document(&f.path, &f.text) {
            Ok(d) => {
                parsed_docs.insert(f.path.clone(), d);
            }
            Err(e) => errors.push(e),
        }
    }
    let docs = BundleDocuments::of(parsed_docs);
    for f in &doc_files {
        if let Some(d) = docs.document(&f.path) {
            hasher.update(f.path.as_bytes());
            hasher.update([0]);
            hasher.update(d.canonical());
            hasher.update([0]);
        }
    }
    for src in policy_files {
        if src.text.len() > cache::MAX_CACHED_TEXT {
            // A large file (consumers) is read one consumer at a time.
            match bulk::read(src, &mut hasher) {
                bulk::Read::File(file) => {
                    // Its digest is written: no canonical form to keep.
                    let source = cache::PolicySource {
                        apps: file.apps.iter().map(app_settings).collect(),
                        file,
                        canonical: Vec::new(),
                    };
                    parsed.push((src, Arc::new(source)));
                    continue;
                }
                bulk::Read::Errors(e) => {
                    errors.extend(e);
                    continue;
                }
                bulk::Read::Whole => {}
            }
        }
        match cache.policy_file(&src.path, &src.text, || read_policy_file(src)) {
            Ok(source) => {
                hasher.update(src.path.as_bytes());
                hasher.update([0]);
                hasher.update(&source.canonical);
                hasher.update([0]);
                parsed.push((src, source));
            }
            Err(e) => errors.extend(e),
        }
    }

    let mut apps: Vec<(String, Arc<App>)> = Vec::new();
    let mut names: HashMap<String, String> = HashMap::new();
    let mut host_prefixes: HashMap<(String, String), String> = HashMap::new();
    for (src, source) in &parsed {
        for (i, spec) in source.file.apps.iter().enumerate() {
            let at = format!("/apps/{i}");
            let place = format!("{} {at}", src.path);
            if let Some(first) = names.get(&spec.name) {
                errors.push(PolicyError::new(
                    &src.path,
                    format!("{at}/name"),
                    format!("app name `{}` is already used at {first}", spec.name),
                ));
            } else {
                names.insert(spec.name.clone(), place.clone());
            }
            let prefix = normalized_prefix(spec.path_prefix.as_deref()).unwrap_or_default();
            let mut own = HashSet::new();
            for (h, host) in spec.hosts.iter().enumerate() {
                let Ok(host) = check_host(host) else { continue };
                let key = (host, prefix.clone());
                if !own.insert(key.clone()) {
                    continue; // listed twice in one app: reported by compile_app
                }
                if let Some(first) = host_prefixes.get(&key) {
                    let shown = if key.1.is_empty() {
                        "/"
                    } else {
                        key.1.as_str()
                    };
                    errors.push(PolicyError::new(
                        &src.path,
                        format!("{at}/hosts/{h}"),
                        format!(
                            "host `{}` with path prefix `{shown}` is already served by {first}",
                            key.0
                        ),
                    ));
                } else {
                    host_prefixes.insert(key, format!("app `{}` ({place})", spec.name));
                }
            }
            // An app compiled from the same settings and documents before
            // is reused as it is.
            let digest = source
                .apps
                .get(i)
                .and_then(Option::as_ref)
                .and_then(|a| app_digest(a, &docs));
            if let Some(app) = digest.as_ref().and_then(|d| cache.app(d)) {
                apps.push((src.path.clone(), app));
            } else if let Some(app) = compile_app(&src.path, &at, spec, &docs, &mut errors) {
                let app = Arc::new(app);
                if let Some(d) = digest {
                    cache.keep_app(d, &app);
                }
                apps.push((src.path.clone(), app));
            }
        }
    }

    let mut plan_decls = Vec::new();
    let mut consumer_decls = Vec::new();
    for (src, source) in &parsed {
        let file = &source.file;
        for (index, spec) in file.plans.iter().enumerate() {
            plan_decls.push(consumers::Declared {
                file: &src.path,
                index,
                spec,
            });
        }
        for (index, spec) in file.consumers.iter().enumerate() {
            consumer_decls.push(consumers::Declared {
                file: &src.path,
                index,
                spec,
            });
        }
    }
    let plans = consumers::compile_plans(&plan_decls, &mut errors);
    let mut review = super::review_rules::ReviewRules::default();
    let mut review_file: Option<&str> = None;
    for (src, source) in &parsed {
        if let Some(spec) = &source.file.review {
            match review_file {
                Some(first) => errors.push(PolicyError::new(
                    &src.path,
                    "/review",
                    format!("review rules are already declared in {first}"),
                )),
                None => {
                    review_file = Some(&src.path);
                    review =
                        super::review_rules::ReviewRules::compile(&src.path, spec, &mut errors);
                }
            }
        }
    }
    let app_names: Vec<&str> = apps.iter().map(|(_, a)| a.name.as_str()).collect();
    let consumers = consumers::compile_consumers(&consumer_decls, &app_names, &plans, &mut errors);

    if !errors.is_empty() {
        return Err(PolicyErrors(errors));
    }
    if apps.is_empty() {
        let file = sources.first().map_or("<bundle>", |s| s.path.as_str());
        return Err(PolicyErrors(vec![PolicyError::new(
            file,
            "",
            "the bundle declares no apps",
        )]));
    }
    docs.compiled_all();
    let mut apps: Vec<Arc<App>> = apps.into_iter().map(|(_, a)| a).collect();
    apps.sort_by(|a, b| a.name.cmp(&b.name));
    let router = Router::build(&apps);
    let version = hex(&hasher.finalize());
    Ok(Bundle {
        version,
        apps,
        router,
        files: sources.iter().map(|s| s.path.clone()).collect(),
        consumers,
        plans,
        documents: docs,
        review,
    })
}

/// Read a policy file: parse it, check it against the policy schema, and
/// take what the version and the apps' digests need. Every error found.
fn read_policy_file(src: &SourceFile) -> Result<cache::PolicySource, Vec<PolicyError>> {
    let value = parse_document(src).map_err(|e| vec![e])?;
    let canonical = crate::contract::documents::canonical_json(&value);
    let errors: Vec<PolicyError> = schema_validator()
        .iter_errors(&value)
        .map(|err| PolicyError::new(&src.path, err.instance_path().to_string(), err.to_string()))
        .collect();
    if !errors.is_empty() {
        return Err(errors);
    }
    // The parsed tree is consumed: a bundle of a million consumers should
    // not be held twice.
    let file = serde_json::from_value::<PolicyFile>(value)
        .map_err(|e| vec![PolicyError::new(&src.path, "", e.to_string())])?;
    let apps = file.apps.iter().map(app_settings).collect();
    Ok(cache::PolicySource {
        file,
        canonical,
        apps,
    })
}

/// The digest of an app's settings, and the strings in them (among them
/// the documents they name). `None` if they cannot be written out, or if
/// the app reads something outside the bundle when it runs (an HS256
/// secret from the environment or a file): such an app is compiled anew
/// by every compile, so a rotated secret takes effect on the next reload.
fn app_settings(spec: &AppSpec) -> Option<(cache::Digest32, Vec<String>)> {
    let jwt = spec.auth.as_ref().and_then(|a| a.jwt.as_ref());
    if jwt.is_some_and(|j| j.hs256_secret_env.is_some() || j.hs256_secret_file.is_some()) {
        return None;
    }
    let settings = serde_json::to_value(spec).ok()?;
    let mut strings = Vec::new();
    strings_in(&settings, &mut strings);
    let strings = strings
        .into_iter()
        .map(|s| s.split('#').next().unwrap_or(s).to_string())
        .collect();
    let digest = Sha256::digest(serde_json::to_vec(&settings).ok()?).into();
    Some((digest, strings))
}

/// The digest of everything an app is compiled from: its settings
/// (`settings`: their digest and strings), and each document they name (a
/// contract, a schema, a key set) with every document those refer to.
fn app_digest(
    settings: &(cache::Digest32, Vec<String>),
    docs: &BundleDocuments,
) -> Option<cache::Digest32> {
    let mut h = Sha256::new();
    h.update(b"app\0");
    h.update(settings.0);
    let closure = docs.closure(settings.1.iter().map(String::as_str));
    // A document that sets `$id` or uses dynamic references may make a
    // validator load documents no plain reading of its `$ref`s names:
    // then every document of the bundle is an input.
    let every = closure
        .iter()
        .any(|p| docs.document(p).is_some_and(|d| d.rebases()));
    let inputs: Vec<&str> = if every {
        docs.iter().map(|(p, _)| p).collect()
    } else {
        closure.into_iter().collect()
    };
    for path in inputs {
        let doc = docs.document(path)?;
        h.update([0]);
        h.update(path.as_bytes());
        h.update([0]);
        h.update(doc.digest());
    }
    Some(h.finalize().into())
}

/// Every string in `v`.
fn strings_in<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::String(s) => out.push(s),
        Value::Array(items) => items.iter().for_each(|i| strings_in(i, out)),
        Value::Object(map) => map.values().for_each(|i| strings_in(i, out)),
        _ => {}
    }
}

fn parse_document(src: &SourceFile) -> Result<Value, PolicyError> {
    crate::contract::documents::parse_text(&src.path, &src.text)
}

fn compile_app(
    file: &str,
    at: &str,
    spec: &AppSpec,
    docs: &BundleDocuments,
    errors: &mut Vec<PolicyError>,
) -> Option<App> {
    let start = errors.len();
    macro_rules! err {
        ($ptr:expr, $msg:expr $(,)?) => {
            errors.push(PolicyError::new(file, $ptr, String::from($msg)))
        };
    }

    let mut hosts = Vec::new();
    for (h, host) in spec.hosts.iter().enumerate() {
        match check_host(host) {
            Ok(host) if hosts.contains(&host) => err!(
                format!("{at}/hosts/{h}"),
                format!("host `{host}` is listed twice"),
            ),
            Ok(host) => hosts.push(host),
            Err(m) => err!(format!("{at}/hosts/{h}"), m),
        }
    }

    let path_prefix = match normalized_prefix(spec.path_prefix.as_deref()) {
        Ok(p) => p,
        Err(m) => {
            err!(format!("{at}/path_prefix"), m);
            String::new()
        }
    };
    if spec.strip_prefix && path_prefix.is_empty() {
        err!(
            format!("{at}/strip_prefix"),
            "strip_prefix needs a path_prefix",
        );
    }

    let app_body_cap = spec
        .max_request_body
        .map_or(DEFAULT_MAX_REQUEST_BODY, |b| b.0);
    let contract = contract_settings(spec);
    let auth = consumers::compile_auth(file, at, spec, docs, errors);
    let routes =
        super::routes::compile_routes(file, at, spec, &contract, docs, app_body_cap, errors);
    let route_ids: Vec<&str> = routes.iter().map(|r| r.id.as_str()).collect();
    let limits = consumers::compile_limits(file, at, spec, &route_ids, errors);

    let up = &spec.upstream;
    let mut instances = Vec::new();
    let mut seen = HashSet::new();
    for (k, url) in up.instances.iter().enumerate() {
        match parse_instance_url(url) {
            Ok(addr) if !seen.insert(addr.url.clone()) => err!(
                format!("{at}/upstream/instances/{k}"),
                format!("instance `{}` is listed twice", addr.url),
            ),
            Ok(addr) => instances.push(addr),
            Err(m) => err!(format!("{at}/upstream/instances/{k}"), m),
        }
    }
    if up.instances.len() > MAX_INSTANCES {
        err!(
            format!("{at}/upstream/instances"),
            format!("at most {MAX_INSTANCES} instances per app"),
        );
    }
    let balancing = match (up.balancing, &up.hash_header) {
        (BalancingSpec::ConsistentHash, Some(h)) => match HeaderName::from_bytes(h.as_bytes()) {
            Ok(name) => Balancing::ConsistentHash(name),
            Err(_) => {
                err!(
                    format!("{at}/upstream/hash_header"),
                    format!("`{h}` is not a valid header name"),
                );
                Balancing::RoundRobin
            }
        },
        (BalancingSpec::ConsistentHash, None) => {
            err!(
                format!("{at}/upstream/hash_header"),
                "consistent_hash balancing needs hash_header",
            );
            Balancing::RoundRobin
        }
        (_, Some(_)) => {
            err!(
                format!("{at}/upstream/hash_header"),
                "hash_header is only used by consistent_hash balancing",
            );
            Balancing::RoundRobin
        }
        (BalancingSpec::RoundRobin, None) => Balancing::RoundRobin,
        (BalancingSpec::LeastConnections, None) => Balancing::LeastConnections,
    };
    let health_check = up.health_check.as_ref().map(|hc| {
        if !hc.path.starts_with('/') {
            err!(
                format!("{at}/upstream/health_check/path"),
                format!("`{}` must start with `/`", hc.path),
            );
        }
        if hc.timeout.get() >= hc.interval.get() {
            err!(
                format!("{at}/upstream/health_check/timeout"),
                "timeout must be shorter than interval",
            );
        }
        HealthCheck {
            path: hc.path.clone(),
            interval: hc.interval.get(),
            timeout: hc.timeout.get(),
            healthy_threshold: hc.healthy_threshold,
            unhealthy_threshold: hc.unhealthy_threshold,
        }
    });
    let t = &spec.timeouts;
    if t.connect.get() > t.total.get() {
        err!(
            format!("{at}/timeouts/connect"),
            "connect timeout is longer than the total timeout",
        );
    }
    if t.read.get() > t.total.get() {
        err!(
            format!("{at}/timeouts/read"),
            "read timeout is longer than the total timeout",
        );
    }
    for problem in spec
        .resilience
        .problems(routes.iter().map(|r| r.id.as_str()))
    {
        err!(format!("{at}/resilience"), problem);
    }

    if errors.len() > start {
        return None;
    }
    Some(App {
        name: spec.name.clone(),
        owner: spec.owner.clone(),
        platform: spec.platform.clone(),
        hosts,
        path_prefix,
        strip_prefix: spec.strip_prefix,
        forwarded: spec.forwarded,
        routes,
        passthrough: spec.passthrough
            || (spec.contract.is_some() && contract_undocumented_passes(spec)),
        case_insensitive_paths: spec.case_insensitive_paths,
        upstream: Upstream {
            instances,
            balancing,
            health_check,
            ejection: Ejection {
                consecutive_failures: up.ejection.consecutive_failures,
                duration: up.ejection.duration.get(),
            },
        },
        timeouts: Timeouts {
            connect: t.connect.get(),
            read: t.read.get(),
            total: t.total.get(),
        },
        retries: spec.retries,
        resilience: spec.resilience.clone(),
        max_request_body: app_body_cap,
        contract,
        auth,
        limits,
    })
}

fn contract_settings(spec: &AppSpec) -> ContractSettings {
    let c = spec.contract.as_ref();
    ContractSettings {
        openapi: c.and_then(|c| c.openapi.clone()),
        undocumented: c.map_or(Undocumented::Reject, |c| c.undocumented),
        max_violations: c.map_or(20, |c| c.max_violations.max(1)),
        max_body: c
            .and_then(|c| c.max_body)
            .map_or(DEFAULT_MAX_VALIDATED_BODY, |b| b.0),
        max_response_body: c
            .and_then(|c| c.max_response_body)
            .map_or(DEFAULT_MAX_VALIDATED_BODY, |b| b.0),
    }
}

fn contract_undocumented_passes(spec: &AppSpec) -> bool {
    spec.contract
        .as_ref()
        .is_some_and(|c| c.undocumented != Undocumented::Reject)
}

/// `""` for no prefix or `/`; the prefix itself when valid.
fn normalized_prefix(prefix: Option<&str>) -> Result<String, String> {
    match prefix {
        None | Some("/") => Ok(String::new()),
        Some(p) if !p.starts_with('/') || p.ends_with('/') || p.contains(['{', '}', '?', '#']) => {
            Err(format!(
            "path prefix `{p}` must start with `/`, not end with `/`, and hold no template or query"
        ))
        }
        Some(p) => Ok(p.to_string()),
    }
}

/// Validate a host pattern: a DNS name, or `*.` followed by one.
fn check_host(host: &str) -> Result<String, String> {
    let lower = host.to_ascii_lowercase();
    let name = lower.strip_prefix("*.").unwrap_or(&lower);
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(lower)
    } else {
        Err(format!(
            "`{host}` is not a host name or a `*.domain` wildcard"
        ))
    }
}

/// Parse `http(s)://host[:port][/]`.
pub fn parse_instance_url(url: &str) -> Result<InstanceAddr, String> {
    let bad = |why: &str| format!("`{url}` is not a valid instance URL: {why}");
    let (tls, rest) = if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else {
        return Err(bad("the scheme must be http or https"));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if !(path.is_empty() || path == "/") {
        return Err(bad(
            "instance URLs name a host and port only, without a path",
        ));
    }
    if authority.contains('@') {
        return Err(bad("credentials do not belong in instance URLs"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let end = v6.find(']').ok_or_else(|| bad("unclosed `[`"))?;
        let host = &v6[..end];
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad("bad IPv6 address"));
        }
        (host, v6[end + 1..].strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        None => {
            if tls {
                443
            } else {
                80
            }
        }
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(bad("bad port")),
        },
    };
    if !host.contains(':') && check_host(host).is_err() {
        return Err(bad("bad host"));
    }
    let addr = InstanceAddr {
        url: "".into(),
        host: host.to_ascii_lowercase(),
        port,
        tls,
    };
    Ok(InstanceAddr {
        url: format!(
            "{}://{}",
            if tls { "https" } else { "http" },
            addr.authority()
        )
        .into(),
        ..addr
    })
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

mod bulk;
mod cache;
#[cfg(test)]
mod tests;
