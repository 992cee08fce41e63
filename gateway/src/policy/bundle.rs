//! The compiled, immutable form of a policy bundle.

use std::time::Duration;

use std::sync::Arc;

use http::{HeaderName, Method};

use std::collections::HashMap;

use super::model::AuthMode;
use crate::contract::{Mode, Operation, Undocumented};
use crate::identity::jwt::JwtVerifier;
use crate::identity::ConsumerDirectory;
use crate::limits::{LimitRule, QuotaRule};

pub use crate::routing::upstream::{Balancing, Ejection, HealthCheck, InstanceAddr, Upstream};
use crate::routing::{PathTemplate, Router};

/// A compiled policy bundle: everything the data plane needs, read-only.
#[derive(Debug)]
pub struct Bundle {
    /// Content hash (`sha256` hex of the canonical files): the policy version.
    pub version: String,
    /// The apps, in a stable order (by name); shared with the versions
    /// before and after that have the same app.
    pub apps: Vec<Arc<App>>,
    /// Host/prefix lookup into `apps`.
    pub router: Router,
    /// Paths of the files the bundle was built from.
    pub files: Vec<String>,
    /// Consumers and their key hashes.
    pub consumers: ConsumerDirectory,
    /// Plans by name.
    pub plans: HashMap<String, Plan>,
    /// The documents (contracts, schemas, keys) the bundle was built with.
    pub documents: crate::contract::BundleDocuments,
    /// Who must approve which changes to this bundle.
    pub review: super::review_rules::ReviewRules,
}

/// A compiled plan.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Name.
    pub name: String,
    /// Who is shed first when an app nears its concurrency cap.
    pub priority: super::resilience::Priority,
    /// Per-consumer rate limits.
    pub limits: Vec<LimitRule>,
    /// Per-consumer quotas.
    pub quotas: Vec<QuotaRule>,
}

/// An app's authentication.
#[derive(Debug, Clone)]
pub struct Auth {
    /// required / optional.
    pub mode: AuthMode,
    /// Header carrying API keys.
    pub api_key_header: Option<HeaderName>,
    /// Query parameter carrying API keys.
    pub api_key_query: Option<String>,
    /// JWT verifier.
    pub jwt: Option<Arc<JwtVerifier>>,
}

/// An app-level limit and the routes it covers (empty: all).
#[derive(Debug, Clone)]
pub struct AppLimit {
    /// The rule.
    pub rule: LimitRule,
    /// Route ids.
    pub routes: Vec<String>,
}

impl Bundle {
    /// The first 12 hex digits of the version, for logs and headers.
    pub fn short_version(&self) -> &str {
        &self.version[..12.min(self.version.len())]
    }

    /// Total number of routes over all apps.
    pub fn route_count(&self) -> usize {
        self.apps.iter().map(|a| a.routes.len()).sum()
    }
}

/// A compiled app.
#[derive(Debug)]
pub struct App {
    /// Unique name.
    pub name: String,
    /// Owning team.
    pub owner: String,
    /// Platform label.
    pub platform: Option<String>,
    /// Hosts as written (lowercase).
    pub hosts: Vec<String>,
    /// Path prefix without trailing slash (`""` = whole path space).
    pub path_prefix: String,
    /// Strip the prefix before forwarding.
    pub strip_prefix: bool,
    /// Forwarding headers.
    pub forwarded: super::model::ForwardedSpec,
    /// Routes, sorted so that the first match is the most specific.
    pub routes: Vec<Route>,
    /// Forward unmatched paths too.
    pub passthrough: bool,
    /// Match routes as a case-insensitive platform reads paths.
    pub case_insensitive_paths: bool,
    /// Instances and balancing.
    pub upstream: Upstream,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Extra attempts on other instances.
    pub retries: u32,
    /// How the app is fenced off (concurrency cap, breakers).
    pub resilience: super::model::ResilienceSpec,
    /// Body cap in bytes.
    pub max_request_body: u64,
    /// Contract settings (defaults when the app has no contract).
    pub contract: ContractSettings,
    /// Authentication (None: anonymous).
    pub auth: Option<Auth>,
    /// App-level rate limits.
    pub limits: Vec<AppLimit>,
}

/// App-wide contract settings.
#[derive(Debug, Clone)]
pub struct ContractSettings {
    /// The OpenAPI document the routes come from.
    pub openapi: Option<String>,
    /// Undocumented operations.
    pub undocumented: Undocumented,
    /// Most violations per 400.
    pub max_violations: usize,
    /// Validation cap for request bodies.
    pub max_body: u64,
    /// Validation cap for response bodies.
    pub max_response_body: u64,
}

/// A compiled route.
#[derive(Debug)]
pub struct Route {
    /// Stable id (unique within the app).
    pub id: String,
    /// Method; `None` = any.
    pub method: Option<Method>,
    /// Template below the app prefix.
    pub template: PathTemplate,
    /// Body cap in bytes.
    pub max_request_body: u64,
    /// The contract of this operation, if any.
    pub operation: Option<Arc<Operation>>,
    /// Request checks.
    pub request_mode: Mode,
    /// Response checks.
    pub response_mode: Mode,
}

impl crate::routing::RoutedApp for App {
    type Route = Route;
    fn hosts(&self) -> &[String] {
        &self.hosts
    }
    fn path_prefix(&self) -> &str {
        &self.path_prefix
    }
    fn case_insensitive_paths(&self) -> bool {
        self.case_insensitive_paths
    }
    fn routes(&self) -> &[Route] {
        &self.routes
    }
    fn passthrough(&self) -> bool {
        self.passthrough
    }
}

impl crate::routing::RoutedRoute for Route {
    fn template(&self) -> &PathTemplate {
        &self.template
    }
    fn accepts(&self, method: &Method) -> bool {
        Route::accepts(self, method)
    }
}

impl Route {
    /// Does this route accept `method`? `HEAD` is served by `GET` routes.
    pub fn accepts(&self, method: &Method) -> bool {
        match &self.method {
            None => true,
            Some(m) => m == method || (method == Method::HEAD && m == Method::GET),
        }
    }
}

/// Timeouts.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Connect.
    pub connect: Duration,
    /// Each read.
    pub read: Duration,
    /// Whole upstream exchange.
    pub total: Duration,
}
