//! The control-plane API of a governed gateway (`serve --state DIR`).
//!
//! Every route takes `Authorization: Bearer <token>`; roles: viewer (reads),
//! author (propose, withdraw own), reviewer (approve/reject), operator
//! (activate, roll back), admin (all). Errors are RFC 9457 problems. Every
//! state change and every refused call is in the audit log.
//!
//! | method & path | role | does |
//! |---|---|---|
//! | `GET /v1/governance/status` | viewer | active version, history, open proposals |
//! | `GET /v1/proposals` | viewer | all proposals, newest first |
//! | `POST /v1/proposals` | author | `{title, files:[{path,text}]}` → 201 proposal with diff and required approvals; 422 with every error |
//! | `GET /v1/proposals/{id}` | viewer | one proposal with its tally |
//! | `POST /v1/proposals/{id}/reviews` | reviewer | `{verdict: approve|reject, comment}` |
//! | `POST /v1/proposals/{id}/activate` | operator | 409 with what is missing, when stale or rejected |
//! | `POST /v1/proposals/{id}/withdraw` | author | |
//! | `POST /v1/rollback` | operator | `{to?: version, reason}` (default: the previous version; the reason is required and audited) |
//! | `GET /v1/audit?after=N` | viewer | verified audit entries after sequence N |
//! | `GET /v1/bundles/{version}` | viewer | a stored bundle's files |
//! | `GET /v1/fleet/bundle?wait=S` | viewer | long-poll for fleet nodes (`If-None-Match`) |

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::governance::control::{AuditFilter, Control, ControlError, Rollback};
use crate::governance::principals::{Principal, Role};
use crate::governance::workflow::Verdict;
use crate::policy::SourceFile;

/// Largest proposal body (a bundle with many consumers is large).
const MAX_PROPOSAL_BYTES: usize = 256 << 20;

/// The control-plane routes.
pub fn router(control: Arc<Control>) -> Router {
    Router::new()
        .route("/v1/governance/status", get(status))
        .route("/v1/proposals", get(list).post(propose))
        .route("/v1/proposals/{id}", get(show))
        .route("/v1/proposals/{id}/reviews", post(review))
        .route("/v1/proposals/{id}/activate", post(activate))
        .route("/v1/proposals/{id}/withdraw", post(withdraw))
        .route("/v1/rollback", post(rollback))
        .route("/v1/audit", get(audit))
        .route("/v1/principals", get(principals).post(create_principal))
        .route("/v1/principals/{name}/roles", post(principal_roles))
        .route("/v1/principals/{name}/revoke", post(revoke_principal))
        .route("/v1/bundles/{version}", get(bundle))
        .route("/v1/fleet/bundle", get(fleet_bundle))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_PROPOSAL_BYTES))
        .with_state(control)
}

fn problem(status: StatusCode, kind: &str, detail: String, extra: Value) -> Response {
    let mut body = json!({
        "type": format!("https://gatehouse.dev/problems/{kind}"),
        "title": status.canonical_reason().unwrap_or("error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    if let (Value::Object(b), Value::Object(x)) = (&mut body, extra) {
        b.extend(x);
    }
    let mut resp = (status, Json(body)).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/problem+json"),
    );
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"gatehouse-admin\""),
        );
    }
    resp
}

/// A control-plane error as an RFC 9457 problem.
pub fn error_response(e: ControlError) -> Response {
    let text = e.to_string();
    match e {
        ControlError::Unauthenticated => problem(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            text,
            Value::Null,
        ),
        ControlError::Forbidden(_) => {
            problem(StatusCode::FORBIDDEN, "forbidden", text, Value::Null)
        }
        ControlError::NotFound(_) => problem(StatusCode::NOT_FOUND, "not-found", text, Value::Null),
        ControlError::Invalid(errors) => problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-bundle",
            text,
            json!({ "errors": errors }),
        ),
        ControlError::Conflict { detail, .. } => problem(
            StatusCode::CONFLICT,
            "conflict",
            text,
            json!({ "explanation": detail }),
        ),
        ControlError::HandedOver => {
            let mut resp = problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "handed-over",
                text,
                Value::Null,
            );
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
            resp
        }
        ControlError::Internal(_) => {
            tracing::error!(error = %text, "control plane failure");
            problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the control plane could not complete the call; see its log".into(),
                Value::Null,
            )
        }
    }
}

/// The token of an `Authorization: Bearer …` header.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

/// Who calls: the bearer token and the connection's source address.
pub(crate) struct Caller {
    token: Option<String>,
    source: Option<IpAddr>,
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Caller {
            token: bearer(&parts.headers),
            source: parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        })
    }
}

/// Run a blocking control-plane call as `role`, auditing refusals.
async fn call<T, F>(
    control: Arc<Control>,
    caller: Caller,
    role: Role,
    action: &'static str,
    subject: String,
    f: F,
) -> Result<T, Response>
where
    T: Send + 'static,
    F: FnOnce(&Control, &Principal) -> Result<T, ControlError> + Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        control.call(
            caller.token.as_deref(),
            caller.source,
            role,
            action,
            &subject,
            f,
        )
    })
    .await
    .unwrap_or_else(|e| Err(ControlError::Internal(e.to_string())))
    .map_err(error_response)
}

/// A call's value as JSON, or its problem response.
fn json<T: serde::Serialize>(result: Result<T, Response>) -> Response {
    match result {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ControlError> {
    serde_json::from_slice(body).map_err(|e| ControlError::Conflict {
        message: format!("malformed request body: {e}"),
        detail: Value::Null,
    })
}

async fn status(State(c): State<Arc<Control>>, caller: Caller) -> Response {
    json(
        call(
            c,
            caller,
            Role::Viewer,
            "status.read",
            "-".into(),
            |c, _| c.status(),
        )
        .await,
    )
}

async fn list(State(c): State<Arc<Control>>, caller: Caller) -> Response {
    json(
        call(
            c,
            caller,
            Role::Viewer,
            "proposal.list",
            "-".into(),
            |c, _| {
                Ok(c.proposals()?
                    .iter()
                    .map(|p| c.describe(p))
                    .collect::<Vec<_>>())
            },
        )
        .await
        .map(|v| json!({ "proposals": v })),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProposeBody {
    title: String,
    files: Vec<SourceFile>,
}

async fn propose(State(c): State<Arc<Control>>, caller: Caller, body: Bytes) -> Response {
    match call(
        c,
        caller,
        Role::Author,
        "proposal.create",
        "-".into(),
        move |c, who| {
            let body: ProposeBody = parse(&body)?;
            let p = c.propose(who, &body.title, body.files)?;
            Ok(c.describe(&p))
        },
    )
    .await
    {
        Ok(v) => (StatusCode::CREATED, Json(v)).into_response(),
        Err(r) => r,
    }
}

async fn show(State(c): State<Arc<Control>>, caller: Caller, Path(id): Path<u64>) -> Response {
    json(
        call(
            c,
            caller,
            Role::Viewer,
            "proposal.read",
            id.to_string(),
            move |c, _| {
                let p = c.proposal(id)?;
                Ok(c.describe(&p))
            },
        )
        .await,
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReviewBody {
    verdict: Verdict,
    #[serde(default)]
    comment: String,
}

async fn review(
    State(c): State<Arc<Control>>,
    caller: Caller,
    Path(id): Path<u64>,
    body: Bytes,
) -> Response {
    json(
        call(
            c,
            caller,
            Role::Reviewer,
            "proposal.review",
            id.to_string(),
            move |c, who| {
                let body: ReviewBody = parse(&body)?;
                let p = c.review(who, id, body.verdict, &body.comment)?;
                Ok(c.describe(&p))
            },
        )
        .await,
    )
}

async fn activate(State(c): State<Arc<Control>>, caller: Caller, Path(id): Path<u64>) -> Response {
    json(
        call(
            c,
            caller,
            Role::Operator,
            "proposal.activate",
            id.to_string(),
            move |c, who| c.activate(who, id),
        )
        .await
        .map(|a| json!({ "activated": a })),
    )
}

async fn withdraw(State(c): State<Arc<Control>>, caller: Caller, Path(id): Path<u64>) -> Response {
    json(
        call(
            c,
            caller,
            Role::Author,
            "proposal.withdraw",
            id.to_string(),
            move |c, who| {
                let p = c.withdraw(who, id)?;
                Ok(c.describe(&p))
            },
        )
        .await,
    )
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    #[serde(default)]
    to: Option<String>,
    /// Why (required: it goes into the audit log).
    #[serde(default)]
    reason: String,
    /// Switch at once (incidents), leaving an item to sign off.
    #[serde(default)]
    break_glass: bool,
}

/// A rollback: 201 with the proposal to approve and activate, or — break-
/// glass — 200 with the activation and the incident item's id.
async fn rollback(State(c): State<Arc<Control>>, caller: Caller, body: Bytes) -> Response {
    let result = call(
        c,
        caller,
        Role::Operator,
        "bundle.rollback",
        "-".into(),
        move |c, who| {
            let body: RollbackBody = if body.is_empty() {
                RollbackBody::default()
            } else {
                parse(&body)?
            };
            Ok(
                match c.rollback(who, body.to.as_deref(), &body.reason, body.break_glass)? {
                    Rollback::Proposed(p) => (StatusCode::CREATED, c.describe(&p)),
                    Rollback::BrokeGlass {
                        activation,
                        incident,
                    } => (
                        StatusCode::OK,
                        json!({ "activated": activation, "incident": incident.id }),
                    ),
                },
            )
        },
    )
    .await;
    match result {
        Ok((status, v)) => (status, Json(v)).into_response(),
        Err(r) => r,
    }
}

async fn principals(State(c): State<Arc<Control>>, caller: Caller) -> Response {
    json(
        call(
            c,
            caller,
            Role::Admin,
            "principals.read",
            "-".into(),
            |c, _| c.principals(),
        )
        .await,
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PrincipalBody {
    name: String,
    roles: Vec<Role>,
    /// How long the token works (`90d`); forever when absent.
    #[serde(default)]
    expires_in: Option<String>,
    /// Issue an existing principal a new token (the old one stops working).
    #[serde(default)]
    rotate: bool,
}

/// 201 with the new token, shown this once.
async fn create_principal(State(c): State<Arc<Control>>, caller: Caller, body: Bytes) -> Response {
    let result = call(
        c,
        caller,
        Role::Admin,
        "principal.create",
        "-".into(),
        move |c, who| {
            let body: PrincipalBody = parse(&body)?;
            let expires_in = match body.expires_in.as_deref() {
                None => None,
                Some(s) => {
                    Some(
                        humantime::parse_duration(s).map_err(|_| ControlError::Conflict {
                            message: format!(
                                "`expires_in` must be a duration such as 90d, not `{s}`"
                            ),
                            detail: Value::Null,
                        })?,
                    )
                }
            };
            let token =
                c.create_principal(who, &body.name, &body.roles, expires_in, body.rotate)?;
            Ok(json!({ "name": body.name, "roles": body.roles, "token": token }))
        },
    )
    .await;
    match result {
        Ok(v) => (StatusCode::CREATED, Json(v)).into_response(),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RolesBody {
    roles: Vec<Role>,
}

async fn principal_roles(
    State(c): State<Arc<Control>>,
    caller: Caller,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    json(
        call(
            c,
            caller,
            Role::Admin,
            "principal.roles",
            name.clone(),
            move |c, who| {
                let body: RolesBody = parse(&body)?;
                c.change_principal(who, &name, Some(&body.roles))?;
                Ok(json!({ "name": name, "roles": body.roles }))
            },
        )
        .await,
    )
}

async fn revoke_principal(
    State(c): State<Arc<Control>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Response {
    json(
        call(
            c,
            caller,
            Role::Admin,
            "principal.revoke",
            name.clone(),
            move |c, who| {
                c.change_principal(who, &name, None)?;
                Ok(json!({ "revoked": name }))
            },
        )
        .await,
    )
}

async fn audit(
    State(c): State<Arc<Control>>,
    caller: Caller,
    Query(q): Query<AuditFilter>,
) -> Response {
    json(
        call(
            c,
            caller,
            Role::Viewer,
            "audit.read",
            "-".into(),
            move |c, _| c.audit_entries(&q),
        )
        .await
        .map(|v| json!({ "entries": v })),
    )
}

async fn bundle(
    State(c): State<Arc<Control>>,
    caller: Caller,
    Path(version): Path<String>,
) -> Response {
    let subject = version.clone();
    json(
        call(
            c,
            caller,
            Role::Viewer,
            "bundle.read",
            subject,
            move |c, _| c.bundle(&version),
        )
        .await,
    )
}

#[derive(Deserialize)]
struct WaitQuery {
    #[serde(default)]
    wait: u64,
}

async fn fleet_bundle(
    State(c): State<Arc<Control>>,
    caller: Caller,
    headers: HeaderMap,
    Query(q): Query<WaitQuery>,
) -> Response {
    let control = Arc::clone(&c);
    if let Err(r) = call(c, caller, Role::Viewer, "fleet.poll", "-".into(), |_, _| {
        Ok(())
    })
    .await
    {
        return r;
    }
    let known = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().trim_matches('"').to_string());
    let mut rx = control.watch_active();
    let wait = Duration::from_secs(q.wait.min(60));
    let current = rx.borrow_and_update().clone();
    let version = if known.as_deref() == Some(current.as_str()) {
        let changed = tokio::time::timeout(wait, rx.changed()).await;
        match changed {
            Ok(Ok(())) => rx.borrow().clone(),
            _ => return StatusCode::NOT_MODIFIED.into_response(),
        }
    } else {
        current
    };
    let stored = tokio::task::spawn_blocking(move || control.bundle(&version)).await;
    match stored {
        Ok(Ok(b)) => {
            let etag = format!("\"{}\"", b.version);
            let mut resp = Json(b).into_response();
            if let Ok(v) = header::HeaderValue::from_str(&etag) {
                resp.headers_mut().insert(header::ETAG, v);
            }
            resp
        }
        Ok(Err(e)) => error_response(e),
        Err(e) => error_response(ControlError::Internal(e.to_string())),
    }
}
