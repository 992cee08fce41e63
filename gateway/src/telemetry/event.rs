//! The wide event: one row per request, every request (not sampled).

use std::borrow::Cow;
use std::sync::{Arc, LazyLock};

use serde::{Deserialize, Serialize};

static NO_NAME: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from(""));

/// The empty name, shared (an empty `Arc<str>` would still allocate).
pub fn no_name() -> Arc<str> {
    NO_NAME.clone()
}

/// One request, as stored in `requests`. Field order is the column order of
/// the RowBinary insert; keep it in step with [`super::schema`]. Names that
/// come from the policy or the process (`Arc<str>`) are shared, not copied:
/// an event allocates only for what is its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clickhouse::Row)]
pub struct RequestEvent {
    /// Start of the request, seconds since the epoch (`DateTime`, UTC).
    pub time: u32,
    /// Start of the request, microseconds since the epoch.
    pub time_us: u64,
    /// `X-Request-Id` (also the dedup key for analysts).
    pub request_id: String,
    /// W3C trace id (from `traceparent`, else empty).
    pub trace_id: String,
    /// Gateway instance (host name or `--instance`).
    pub instance: Arc<str>,
    /// Policy version the request was served under.
    pub policy_version: Arc<str>,
    /// App name (empty when no app matched).
    pub app: Arc<str>,
    /// Route id (`passthrough` for undeclared paths, empty when unrouted).
    pub route: Arc<str>,
    /// HTTP method.
    pub method: Cow<'static, str>,
    /// Status sent to the client (0 when the client went away).
    pub status: u16,
    /// Consumer id (empty when anonymous).
    pub consumer: String,
    /// `ok`, `upstream_error`, `unauthenticated`, `rate_limited`, …
    pub outcome: Cow<'static, str>,
    /// Limit or quota id that refused the request.
    pub rejected_by: String,
    /// Request contract verdict: `valid`, `invalid`, `unchecked`.
    pub request_verdict: Cow<'static, str>,
    /// Response contract verdict.
    pub response_verdict: Cow<'static, str>,
    /// Violations as `location:pointer:keyword`, `;`-separated, capped.
    pub violations: String,
    /// Request body bytes read from the client.
    pub bytes_in: u64,
    /// Response body bytes sent to the client.
    pub bytes_out: u64,
    /// Client address.
    pub client_ip: String,
    /// Instance URL of the last attempt.
    pub upstream: Arc<str>,
    /// Upstream attempts.
    pub attempts: u8,
    /// Whole request, µs.
    pub total_us: u32,
    /// Time the gateway itself spent (total minus waiting on the upstream), µs.
    pub gateway_us: u32,
    /// Identification, µs.
    pub auth_us: u32,
    /// Limit checks, µs.
    pub limits_us: u32,
    /// Request contract checks (incl. reading an enforced body), µs.
    pub request_validation_us: u32,
    /// Connecting to the upstream (0 when a pooled connection was reused), µs.
    pub upstream_connect_us: u32,
    /// From sending the request to the first response byte, µs.
    pub upstream_ttfb_us: u32,
    /// From choosing the upstream to its last response byte, µs.
    pub upstream_total_us: u32,
    /// Response contract checks, µs.
    pub response_validation_us: u32,
}
