//! The route phase: the head rules, then the route match, for a request
//! whose path the engine has made canonical.

use super::head_rules;
use super::view::RequestView;
use crate::error::GatewayError;
use crate::routing::{self, RouteMatch};
use crate::runtime::Active;

/// Where routing got to: the app, the route (`None` with `passthrough`: a
/// passthrough app), as far as they were found.
#[derive(Debug, Clone, Copy, Default)]
pub struct Found {
    /// The app.
    pub app: Option<usize>,
    /// The route.
    pub route: Option<usize>,
    /// The app forwards paths no route matches, and this is one.
    pub passthrough: bool,
}

/// A request routing refused, and where it got to.
#[derive(Debug)]
pub struct Refused {
    /// What was found before the refusal.
    pub found: Found,
    /// The refusal.
    pub error: GatewayError,
}

/// The head rules ([`head_rules`]) and the route match.
pub fn route_request(active: &Active, req: &impl RequestView) -> Result<Found, Refused> {
    let refuse = |found: Found, error: GatewayError| Refused { found, error };
    let facts = head_rules::check_head(req).map_err(|e| refuse(Found::default(), e))?;
    let path = req.path();
    // Every engine forwards the path routing sees, made canonical first
    // (the conformance suite holds both engines to it).
    debug_assert!(matches!(
        routing::canonical_path(path),
        Ok(std::borrow::Cow::Borrowed(_))
    ));
    let apps = &active.bundle.apps;
    let judged = |app: usize, route: Option<usize>| {
        let found = Found {
            app: Some(app),
            route,
            passthrough: route.is_none(),
        };
        let a = &apps[app];
        head_rules::check_judged_once(req, a, facts).map_err(|e| refuse(found, e))?;
        if facts.connection {
            head_rules::check_connection_for(req, a, route.map(|r| &a.routes[r]))
                .map_err(|e| refuse(found, e))?;
        }
        Ok(found)
    };
    let at = |app: usize| Found {
        app: Some(app),
        ..Found::default()
    };
    match active
        .bundle
        .router
        .route(apps, req.host(), req.method(), path)
    {
        RouteMatch::Route { app, route } => judged(app, Some(route)),
        RouteMatch::Passthrough { app } => judged(app, None),
        RouteMatch::MethodNotAllowed { app } => {
            let allow = allowed_methods(&active.bundle.apps[app], path);
            Err(refuse(at(app), GatewayError::MethodNotAllowed { allow }))
        }
        RouteMatch::NoRoute { app } => Err(refuse(at(app), GatewayError::NoRoute)),
        RouteMatch::BadPath { app } => Err(refuse(at(app), GatewayError::BadPath)),
        RouteMatch::NoApp => Err(refuse(Found::default(), GatewayError::NoApp)),
    }
}

/// The methods routes of `app` accept at `path`, for `Allow`.
pub fn allowed_methods(app: &crate::policy::App, path: &str) -> String {
    let sub = crate::routing::strip_app_prefix(&app.path_prefix, path);
    let folded;
    let sub = match app.case_insensitive_paths {
        true => {
            folded = crate::routing::case_insensitive_key(sub).unwrap_or_default();
            folded.as_str()
        }
        false => sub,
    };
    let mut methods: Vec<&str> = app
        .routes
        .iter()
        .filter(|r| r.template.matches(sub))
        .filter_map(|r| r.method.as_ref().map(|m| m.as_str()))
        .collect();
    if methods.contains(&"GET") {
        methods.push("HEAD");
    }
    methods.sort_unstable();
    methods.dedup();
    methods.join(", ")
}
