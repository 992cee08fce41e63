//! The policy file format: what a governance board writes and reviews.
//!
//! Every policy file is a YAML (or JSON) document with a `version` and one or
//! more sections. Types here mirror `policies/policy.schema.json` one to one;
//! the schema is checked first (so a board sees every schema error at once),
//! then these types are deserialised and compiled by [`super::compile`].

use serde::{Deserialize, Serialize};

pub use super::resilience::ResilienceSpec;
pub use crate::contract::{Mode, Undocumented};

/// One policy file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Format version of the file; only `1` exists today.
    pub version: u32,
    /// Apps declared by this file.
    #[serde(default)]
    pub apps: Vec<AppSpec>,
    /// Consumers declared by this file.
    #[serde(default)]
    pub consumers: Vec<ConsumerSpec>,
    /// Plans (per-consumer limits and quotas) declared by this file.
    #[serde(default)]
    pub plans: Vec<PlanSpec>,
    /// Who must approve which kinds of change (one file of the bundle at most).
    #[serde(default)]
    pub review: Option<ReviewSpec>,
}

/// Review rules: reviewer groups and the approvals each class of change needs.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReviewSpec {
    /// Group name → member principal names.
    pub groups: std::collections::BTreeMap<String, Vec<String>>,
    /// Rules, first match per change class wins.
    #[serde(default)]
    pub rules: Vec<ReviewRuleSpec>,
    /// What any change not covered by a rule needs.
    #[serde(default)]
    pub default: Option<RequirementSpec>,
}

/// One review rule.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReviewRuleSpec {
    /// Change classes (`contract.breaking`, `auth.removed`, …).
    pub classes: Vec<String>,
    /// Approvals needed.
    pub approvals: u32,
    /// From members of this group.
    pub group: String,
}

/// Approvals from a group.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RequirementSpec {
    /// Approvals needed.
    pub approvals: u32,
    /// From members of this group.
    pub group: String,
}

/// A consumer of the estate's APIs.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerSpec {
    /// Stable id (telemetry, limits); unique.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Plan giving the consumer its own limits and quotas.
    #[serde(default)]
    pub plan: Option<String>,
    /// Apps the consumer may call (`["*"]` or absent: all).
    #[serde(default)]
    pub apps: Option<Vec<String>>,
    /// API keys, as `sha256:<hex>` hashes (never the keys themselves).
    #[serde(default)]
    pub keys: Vec<KeySpec>,
    /// JWT subject (claim) values that identify this consumer (besides its id).
    #[serde(default)]
    pub jwt_subjects: Vec<String>,
}

/// One API key of a consumer.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    /// `sha256:<64 hex digits>` of the key.
    pub hash: String,
    /// What the key is for (rotation bookkeeping).
    #[serde(default)]
    pub label: Option<String>,
}

/// A plan: limits and quotas applied per consumer.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PlanSpec {
    /// Unique name.
    pub name: String,
    /// Who is shed first when an app nears its concurrency cap.
    #[serde(default)]
    pub priority: super::resilience::Priority,
    /// Rate limits, keyed by consumer.
    #[serde(default)]
    pub limits: Vec<PlanLimitSpec>,
    /// Quotas, keyed by consumer.
    #[serde(default)]
    pub quotas: Vec<PlanQuotaSpec>,
}

/// A per-consumer rate limit of a plan.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PlanLimitSpec {
    /// Name (unique in the plan), shown in `RateLimit-Policy`.
    pub name: String,
    /// Sustained rate: `100/s`, `6000/m`, `100000/h`.
    pub rate: String,
    /// Requests admitted at once (default: the rate's count).
    #[serde(default)]
    pub burst: Option<u32>,
}

/// A per-consumer quota of a plan.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PlanQuotaSpec {
    /// Name (unique in the plan).
    pub name: String,
    /// Requests per window.
    pub limit: u64,
    /// Window: minute, hour or day (UTC-aligned).
    pub window: QuotaWindow,
}

/// Quota windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QuotaWindow {
    /// Calendar minute.
    Minute,
    /// Calendar hour.
    Hour,
    /// Calendar day (UTC).
    Day,
}

/// How an app identifies consumers.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSpec {
    /// required (401 without valid credentials), optional, or none.
    #[serde(default)]
    pub mode: AuthMode,
    /// Where the API key is read.
    #[serde(default)]
    pub api_key: Option<ApiKeySpec>,
    /// Bearer JWTs.
    #[serde(default)]
    pub jwt: Option<JwtSpec>,
}

/// Authentication modes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Valid credentials are required.
    #[default]
    Required,
    /// Credentials are used when present (and must then be valid).
    Optional,
    /// No identification.
    None,
}

/// Where API keys are read.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySpec {
    /// Header carrying the key (default `x-api-key`).
    #[serde(default = "default_key_header")]
    pub header: String,
    /// Query parameter carrying the key (off unless set).
    #[serde(default)]
    pub query: Option<String>,
}

fn default_key_header() -> String {
    "x-api-key".into()
}

/// JWT verification.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSpec {
    /// Required `iss`.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Required `aud` (one of).
    #[serde(default)]
    pub audience: Option<String>,
    /// Environment variable holding the HS256 secret.
    #[serde(default)]
    pub hs256_secret_env: Option<String>,
    /// File holding the HS256 secret.
    #[serde(default)]
    pub hs256_secret_file: Option<String>,
    /// JWKS document with RS256/ES256 public keys (bundle-relative, under `keys/`).
    #[serde(default)]
    pub jwks: Option<String>,
    /// Claim naming the consumer (default `sub`).
    #[serde(default = "default_claim")]
    pub consumer_claim: String,
    /// Clock skew allowed for `exp`/`nbf`, seconds.
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
}

fn default_claim() -> String {
    "sub".into()
}
fn default_leeway() -> u64 {
    30
}

/// An app-level rate limit.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSpec {
    /// Name (unique in the app), shown in `RateLimit-Policy`.
    pub name: String,
    /// What the limit is keyed by.
    pub per: LimitPer,
    /// Header whose value is the key (`per: header`).
    #[serde(default)]
    pub header: Option<String>,
    /// Sustained rate: `100/s`, `6000/m`, `100000/h`.
    pub rate: String,
    /// Requests admitted at once (default: the rate's count).
    #[serde(default)]
    pub burst: Option<u32>,
    /// Route ids the limit applies to (default: all).
    #[serde(default)]
    pub routes: Vec<String>,
}

/// Limit keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitPer {
    /// Each consumer (anonymous callers: each client IP).
    Consumer,
    /// Each client IP.
    Ip,
    /// The whole app.
    App,
    /// Each route.
    Route,
    /// Each value of a header.
    Header,
}

/// A low-code application fronted by the gateway.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AppSpec {
    /// Unique name of the app (lowercase, `a-z0-9-`); used in telemetry.
    pub name: String,
    /// Who owns the app (team or mailbox); shown to reviewers.
    pub owner: String,
    /// Free text for humans.
    #[serde(default)]
    pub description: Option<String>,
    /// Platform the app is built on (mendix, outsystems, powerapps, …).
    #[serde(default)]
    pub platform: Option<String>,
    /// Host names served by this app: exact (`orders.corp.example`) or
    /// wildcard (`*.corp.example`, one or more labels).
    pub hosts: Vec<String>,
    /// Only requests whose path starts with this prefix (on a segment
    /// boundary) belong to the app; routes are declared below it.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Remove `path_prefix` from the path before forwarding.
    #[serde(default)]
    pub strip_prefix: bool,
    /// Which forwarding headers the app receives.
    #[serde(default)]
    pub forwarded: ForwardedSpec,
    /// Where traffic goes.
    pub upstream: UpstreamSpec,
    /// Connect/read/total timeouts.
    #[serde(default)]
    pub timeouts: TimeoutSpec,
    /// How many other instances a failed attempt may be retried on.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// How the app is fenced off when it fails or is overloaded.
    #[serde(default)]
    pub resilience: ResilienceSpec,
    /// Largest request body accepted, e.g. `1MiB` (413 above it).
    #[serde(default)]
    pub max_request_body: Option<ByteSize>,
    /// Forward every method and path of the app (after `routes`, which
    /// still win and are reported by id).
    #[serde(default)]
    pub passthrough: bool,
    /// The app's platform matches paths without regard to case and ignores
    /// a trailing dot or space on a segment (IIS / .NET: OutSystems, Power
    /// Apps portals), so routes are matched the same way: `/ADMIN` and
    /// `/admin.` are the `/admin` route.
    #[serde(default)]
    pub case_insensitive_paths: bool,
    /// The app's operations (for apps without an OpenAPI contract, whose
    /// operations come from the document).
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
    /// The app's API contract and how it is enforced.
    #[serde(default)]
    pub contract: Option<ContractSpec>,
    /// How consumers are identified (absent: no identification).
    #[serde(default)]
    pub auth: Option<AuthSpec>,
    /// Rate limits of the app (all must admit, with the consumer's plan limits).
    #[serde(default)]
    pub limits: Vec<LimitSpec>,
}

/// An app's API contract.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ContractSpec {
    /// OpenAPI 3.0/3.1 document (bundle-relative path, under `contracts/`).
    /// Its paths and methods become the app's routes.
    #[serde(default)]
    pub openapi: Option<String>,
    /// Request checks: enforce, monitor or off.
    #[serde(default = "enforce")]
    pub request: Mode,
    /// Response checks: enforce, monitor or off.
    #[serde(default = "monitor")]
    pub response: Mode,
    /// Requests for operations the contract does not document.
    #[serde(default)]
    pub undocumented: Undocumented,
    /// Most violations listed in one 400 response.
    #[serde(default = "default_max_violations")]
    pub max_violations: usize,
    /// Largest request body that is validated (413 above it when enforcing).
    #[serde(default)]
    pub max_body: Option<ByteSize>,
    /// Largest response body that is buffered and validated (larger ones pass unchecked).
    #[serde(default)]
    pub max_response_body: Option<ByteSize>,
    /// Per-operation mode overrides, by operation id.
    #[serde(default)]
    pub operations: std::collections::BTreeMap<String, ModeOverride>,
}

/// Per-route mode overrides.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModeOverride {
    /// Request checks for this operation.
    #[serde(default)]
    pub request: Option<Mode>,
    /// Response checks for this operation.
    #[serde(default)]
    pub response: Option<Mode>,
}

fn enforce() -> Mode {
    Mode::Enforce
}
fn monitor() -> Mode {
    Mode::Monitor
}
fn default_max_violations() -> usize {
    20
}

fn default_retries() -> u32 {
    2
}

/// One operation of an app.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Stable id of the route (unique in the app); defaults to `METHOD template`.
    #[serde(default)]
    pub id: Option<String>,
    /// HTTP method, or `ANY`.
    pub method: String,
    /// Path template below the app prefix: literals, `{param}` for one
    /// segment, `{name*}` as the last segment for the rest of the path.
    pub path: String,
    /// Largest request body for this route (overrides the app's).
    #[serde(default)]
    pub max_request_body: Option<ByteSize>,
    /// JSON Schema of the request body (bundle-relative path, under `schemas/`).
    #[serde(default)]
    pub request_schema: Option<String>,
    /// JSON Schema of 2xx response bodies (bundle-relative path, under `schemas/`).
    #[serde(default)]
    pub response_schema: Option<String>,
    /// Request checks for this route (default: the contract's, else enforce).
    #[serde(default)]
    pub request: Option<Mode>,
    /// Response checks for this route (default: the contract's, else monitor).
    #[serde(default)]
    pub response: Option<Mode>,
}

/// The instances of an app and how traffic is spread over them.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSpec {
    /// Instance base URLs, e.g. `http://10.0.0.5:8080`.
    pub instances: Vec<String>,
    /// Balancing algorithm.
    #[serde(default)]
    pub balancing: BalancingSpec,
    /// Request header hashed by `consistent_hash`.
    #[serde(default)]
    pub hash_header: Option<String>,
    /// Active HTTP health check.
    #[serde(default)]
    pub health_check: Option<HealthCheckSpec>,
    /// Passive ejection after consecutive connect failures.
    #[serde(default)]
    pub ejection: EjectionSpec,
}

/// Balancing algorithms.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BalancingSpec {
    /// Each instance in turn.
    #[default]
    RoundRobin,
    /// The instance with the fewest requests in flight.
    LeastConnections,
    /// Rendezvous hash of `hash_header` (round robin when it is absent).
    ConsistentHash,
}

/// Active health check settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSpec {
    /// Path requested with GET, e.g. `/health`.
    pub path: String,
    /// Time between checks of one instance.
    #[serde(default = "default_hc_interval")]
    pub interval: Duration,
    /// Time a check may take.
    #[serde(default = "default_hc_timeout")]
    pub timeout: Duration,
    /// Consecutive successes that make an unhealthy instance healthy.
    #[serde(default = "default_two")]
    pub healthy_threshold: u32,
    /// Consecutive failures that make a healthy instance unhealthy.
    #[serde(default = "default_two")]
    pub unhealthy_threshold: u32,
}

fn default_hc_interval() -> Duration {
    Duration::from_millis(5_000)
}
fn default_hc_timeout() -> Duration {
    Duration::from_millis(1_000)
}
fn default_two() -> u32 {
    2
}

/// Passive ejection settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EjectionSpec {
    /// Consecutive connect failures that eject an instance (0 disables).
    #[serde(default = "default_three")]
    pub consecutive_failures: u32,
    /// How long an ejected instance gets no traffic (unless an active
    /// check sees it healthy again first).
    #[serde(default = "default_ejection")]
    pub duration: Duration,
}

impl Default for EjectionSpec {
    fn default() -> Self {
        Self {
            consecutive_failures: default_three(),
            duration: default_ejection(),
        }
    }
}

fn default_three() -> u32 {
    3
}
fn default_ejection() -> Duration {
    Duration::from_millis(10_000)
}

/// Timeouts of one app.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutSpec {
    /// Time to establish a connection to an instance.
    #[serde(default = "default_connect")]
    pub connect: Duration,
    /// Longest wait for any read from the instance (e.g. the response head).
    #[serde(default = "default_read")]
    pub read: Duration,
    /// Longest time for the whole upstream exchange, retries included.
    #[serde(default = "default_total")]
    pub total: Duration,
}

impl Default for TimeoutSpec {
    fn default() -> Self {
        Self {
            connect: default_connect(),
            read: default_read(),
            total: default_total(),
        }
    }
}

fn default_connect() -> Duration {
    Duration::from_millis(2_000)
}
fn default_read() -> Duration {
    Duration::from_millis(30_000)
}
fn default_total() -> Duration {
    Duration::from_millis(60_000)
}

/// A duration written as `250ms`, `2s` or `1m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Duration(std::time::Duration);

impl Duration {
    /// From milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }
    /// The standard library value.
    pub fn get(self) -> std::time::Duration {
        self.0
    }
}

impl TryFrom<String> for Duration {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let (num, unit) = split_number(&s);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a duration like 250ms, 2s or 1m"))?;
        let ms = match unit {
            "ms" => n,
            "s" => n.saturating_mul(1_000),
            "m" => n.saturating_mul(60_000),
            _ => return Err(format!("`{s}` is not a duration like 250ms, 2s or 1m")),
        };
        Ok(Self(std::time::Duration::from_millis(ms)))
    }
}

impl From<Duration> for String {
    fn from(d: Duration) -> String {
        format!("{}ms", d.0.as_millis())
    }
}

impl std::fmt::Display for Duration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

/// A size written as `512B`, `64KiB`, `1MiB` or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "serde_json::Value", into = "u64")]
pub struct ByteSize(pub u64);

impl TryFrom<serde_json::Value> for ByteSize {
    type Error = String;
    fn try_from(v: serde_json::Value) -> Result<Self, String> {
        match v {
            serde_json::Value::Number(n) => n
                .as_u64()
                .map(ByteSize)
                .ok_or_else(|| format!("`{n}` is not a byte count")),
            serde_json::Value::String(s) => {
                let (num, unit) = split_number(&s);
                let n: u64 = num
                    .parse()
                    .map_err(|_| format!("`{s}` is not a size like 64KiB or 1MiB"))?;
                let mult = match unit {
                    "" | "B" => 1,
                    "KiB" => 1 << 10,
                    "MiB" => 1 << 20,
                    "GiB" => 1 << 30,
                    _ => return Err(format!("`{s}` is not a size like 64KiB or 1MiB")),
                };
                Ok(ByteSize(n.saturating_mul(mult)))
            }
            other => Err(format!("`{other}` is not a size like 64KiB or 1MiB")),
        }
    }
}

impl From<ByteSize> for u64 {
    fn from(b: ByteSize) -> u64 {
        b.0
    }
}

fn split_number(s: &str) -> (&str, &str) {
    let s = s.trim();
    let idx = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    (&s[..idx], s[idx..].trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(
            Duration::try_from("250ms".to_string())
                .unwrap()
                .get()
                .as_millis(),
            250
        );
        assert_eq!(
            Duration::try_from("2s".to_string())
                .unwrap()
                .get()
                .as_millis(),
            2000
        );
        assert_eq!(
            Duration::try_from("1m".to_string())
                .unwrap()
                .get()
                .as_secs(),
            60
        );
        assert!(Duration::try_from("2h".to_string()).is_err());
        assert!(Duration::try_from("fast".to_string()).is_err());
    }

    #[test]
    fn sizes_parse_with_units() {
        let s = |v: serde_json::Value| ByteSize::try_from(v).map(|b| b.0);
        assert_eq!(s(serde_json::json!(1024)), Ok(1024));
        assert_eq!(s(serde_json::json!("64KiB")), Ok(65536));
        assert_eq!(s(serde_json::json!("1MiB")), Ok(1 << 20));
        assert!(s(serde_json::json!("1MB")).is_err());
        assert!(s(serde_json::json!(-1)).is_err());
    }
}

/// How the client's address, scheme and host are passed to the app. The
/// request's own `Host` header always reaches the app unchanged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardedSpec {
    /// Header style.
    #[serde(default)]
    pub style: ForwardedStyle,
    /// Also send the client's `Host` (`X-Forwarded-Host` / `host=`); off by
    /// default because the app already receives the same `Host`.
    #[serde(default)]
    pub host: bool,
}

/// Forwarding header style.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedStyle {
    /// `X-Forwarded-For` (appended to) and `X-Forwarded-Proto`.
    #[default]
    XForwarded,
    /// One RFC 7239 `Forwarded: for=…;proto=…` element (appended to).
    Rfc7239,
    /// Nothing.
    None,
}
