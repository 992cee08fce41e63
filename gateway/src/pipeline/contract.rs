//! The contract phases: the request's plan (from its head) and verdict
//! (with its body), the monitor-mode copies of streamed bodies, and the
//! response check. The validation itself lives in [`crate::contract`].

use super::context::{BodyTee, RequestCtx};
use super::view::RequestView;
use crate::contract::openapi::is_json;
use crate::contract::operation::{check_json_body, Expectation};
use crate::contract::params::RequestParts;
use crate::contract::{Mode, Operation, Verdict, Violation, ViolationLocation};
use crate::error::GatewayError;
use crate::policy::{App, Route};
use crate::routing::strip_app_prefix;

/// The media type of a `Content-Type` value: lowercase, parameters dropped.
pub fn media_type(headers: &http::HeaderMap) -> String {
    media_type_of(
        headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
    )
}

/// The media type of a `Content-Type` value, if any (`""` when none).
fn media_type_of(content_type: Option<&str>) -> String {
    content_type
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

/// Whether a JSON body's `Content-Type` leaves it UTF-8: no `charset`, or
/// `utf-8`. JSON is UTF-8 (RFC 8259 §8.1); a body judged as UTF-8 that an
/// app decodes by another charset (UTF-7 turns `+ACI-` into `"`) is not
/// the body that was judged.
fn utf8_charset(content_type: Option<&str>) -> bool {
    let Some(value) = content_type else {
        return true;
    };
    value.split(';').skip(1).all(|param| {
        let (name, v) = param.split_once('=').unwrap_or((param, ""));
        !name.trim().eq_ignore_ascii_case("charset")
            || v.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
    })
}

/// Whether `media` is one of `accepted`: a type, `major/*`, `*/*`, or
/// `major/*+suffix` (any type of `major` with that structured suffix).
fn media_accepted(accepted: &[String], media: &str) -> bool {
    let (major, minor) = media.split_once('/').unwrap_or((media, ""));
    accepted.is_empty()
        || accepted.iter().any(|a| {
            a == media
                || a == "*/*"
                || a.strip_suffix("/*").is_some_and(|m| m == major)
                || a.split_once("/*+").is_some_and(|(m, suffix)| {
                    m == major
                        && minor
                            .strip_suffix(suffix)
                            .is_some_and(|name| name.ends_with('+') && name.len() > 1)
                })
        })
}

/// The contract's needs for one request, decided from its head.
#[derive(Debug)]
pub struct RequestPlan {
    violations: Vec<Violation>,
    json_check: Option<std::sync::Arc<crate::contract::body_schema::BodySchema>>,
    enforce: bool,
    enforce_response: bool,
    /// The body must be read (up to `body_limit`) before the upstream sees anything.
    pub read_body: bool,
    /// The most body bytes the check reads.
    pub body_limit: u64,
}

impl RequestPlan {
    /// The response is enforced: the buffered forwarder must carry the request.
    pub fn enforces_response(&self) -> bool {
        self.enforce_response
    }
}

/// Check the request head against `op` (parameters, media type): what the
/// body check needs, or the refusal (enforce mode).
pub fn plan_request(
    req: &impl RequestView,
    has_body: bool,
    ctx: &RequestCtx,
    app: &App,
    route: &Route,
    op: &Operation,
) -> Result<RequestPlan, GatewayError> {
    let settings = &app.contract;
    let mode = route.request_mode;
    let enforce = mode == Mode::Enforce;
    let enforce_response = route.response_mode == Mode::Enforce && !op.responses.is_empty();
    let mut violations = Vec::new();
    let mut json_check = None;
    if mode != Mode::Off {
        let parts = RequestParts {
            path: strip_app_prefix(&app.path_prefix, req.path()),
            query: req.query(),
            headers: req,
        };
        op.check_params(&parts, &mut violations, settings.max_violations);
        if let Some(body) = &op.body {
            let media = media_type_of(req.header_str("content-type"));
            if !has_body {
                if body.required {
                    violations.push(Violation {
                        location: ViolationLocation::Body,
                        name: None,
                        pointer: String::new(),
                        keyword: "required".into(),
                        message: "a request body is required".into(),
                    });
                }
            } else if !media_accepted(&body.media_types, &media)
                || (is_json(&media) && !utf8_charset(req.header_str("content-type")))
            {
                if enforce {
                    let expected = body.media_types.clone();
                    return Err(GatewayError::UnsupportedMediaType { expected });
                }
                violations.push(Violation {
                    location: ViolationLocation::Header,
                    name: Some("content-type".into()),
                    pointer: String::new(),
                    keyword: "contentType".into(),
                    message: format!("`{media}` is not one of {:?}", body.media_types),
                });
            } else if is_json(&media) {
                json_check = body.json.clone();
            }
        }
    }
    let body_limit = if json_check.is_some() {
        ctx.body_cap.min(settings.max_body)
    } else {
        ctx.body_cap
    };
    Ok(RequestPlan {
        read_body: has_body && (enforce_response || (enforce && json_check.is_some())),
        violations,
        json_check,
        enforce,
        enforce_response,
        body_limit,
    })
}

/// Finish the request check with the body read for it (`None` when the
/// plan did not need it read: a monitor-mode body is then copied as it
/// streams). In enforce mode a violation is the refusal; in monitor mode it
/// is recorded.
pub fn judge_request(
    plan: RequestPlan,
    body: Option<&[u8]>,
    ctx: &mut RequestCtx,
    app: &App,
    mode: Mode,
) -> Result<(), GatewayError> {
    let settings = &app.contract;
    let RequestPlan {
        mut violations,
        json_check,
        enforce,
        ..
    } = plan;
    if let Some(validator) = json_check {
        match body {
            Some(body) => match check_json_body(
                &validator,
                body,
                ViolationLocation::Body,
                settings.max_violations.saturating_sub(violations.len()),
            ) {
                Ok(found) => violations.extend(found),
                Err(e) if enforce => {
                    let detail = format!("line {} column {}: {e}", e.line(), e.column());
                    return Err(GatewayError::MalformedJson { detail });
                }
                Err(e) => violations.push(malformed(&e)),
            },
            None => ctx.request_tee = Some(BodyTee::new(validator, settings.max_body)),
        }
    }
    if !violations.is_empty() {
        ctx.request_verdict = Verdict::Invalid;
        if enforce {
            ctx.violations.extend(violations.iter().cloned());
            return Err(GatewayError::ContractViolation { violations });
        }
        record(ctx, violations, "request");
    } else if mode != Mode::Off && ctx.request_tee.is_none() {
        ctx.request_verdict = Verdict::Valid;
    }
    Ok(())
}

fn malformed(e: &serde_json::Error) -> Violation {
    Violation {
        location: ViolationLocation::Body,
        name: None,
        pointer: String::new(),
        keyword: "json".into(),
        message: format!(
            "malformed JSON at line {} column {}: {e}",
            e.line(),
            e.column()
        ),
    }
}

/// Finish the monitor-mode copy of the request body.
pub fn finish_request_tee(ctx: &mut RequestCtx, max: usize) {
    let Some(tee) = ctx.request_tee.take() else {
        return;
    };
    let (verdict, violations) = judge_json(&tee, ViolationLocation::Body, max);
    ctx.request_verdict = verdict;
    if !violations.is_empty() {
        record(ctx, violations, "request");
    }
}

/// Judge a complete response: its status, media type and JSON body.
pub fn response_violations(
    op: &Operation,
    status: u16,
    headers: &http::HeaderMap,
    body: Option<&[u8]>,
    max: usize,
) -> (Verdict, Vec<Violation>) {
    let validator = match op.responses.expectation(status) {
        Expectation::Undocumented => {
            return (
                Verdict::Invalid,
                vec![Violation {
                    location: ViolationLocation::Response,
                    name: None,
                    pointer: String::new(),
                    keyword: "status".into(),
                    message: format!("status {status} is not documented for this operation"),
                }],
            )
        }
        Expectation::AnyBody => return (Verdict::Valid, Vec::new()),
        Expectation::Json(v) => v,
    };
    if encoded(headers) {
        return (Verdict::Unchecked, Vec::new());
    }
    let media = media_type(headers);
    if !is_json(&media) {
        return (
            Verdict::Invalid,
            vec![Violation {
                location: ViolationLocation::Response,
                name: Some("content-type".into()),
                pointer: String::new(),
                keyword: "contentType".into(),
                message: format!("expected a JSON body, got `{media}`"),
            }],
        );
    }
    match body {
        Some(body) => judge(validator, body, ViolationLocation::Response, max),
        None => (Verdict::Unchecked, Vec::new()),
    }
}

/// Parse and validate a complete JSON body: the verdict and its violations.
fn judge(
    validator: &crate::contract::body_schema::BodySchema,
    body: &[u8],
    location: ViolationLocation,
    max: usize,
) -> (Verdict, Vec<Violation>) {
    let violations = match check_json_body(validator, body, location, max) {
        Ok(found) => found,
        Err(e) => vec![Violation {
            location,
            ..malformed(&e)
        }],
    };
    let verdict = if violations.is_empty() {
        Verdict::Valid
    } else {
        Verdict::Invalid
    };
    (verdict, violations)
}

fn encoded(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| !v.eq_ignore_ascii_case("identity"))
}

/// Monitor mode, at the response head: decide whether the body must be copied.
pub fn start_response_check(
    ctx: &mut RequestCtx,
    op: &Operation,
    status: u16,
    headers: &http::HeaderMap,
    max: usize,
    cap: u64,
) {
    match op.responses.expectation(status) {
        Expectation::Json(v) if !encoded(headers) && is_json(&media_type(headers)) => {
            ctx.response_tee = Some(BodyTee::new(v.clone(), cap));
        }
        _ => {
            let (verdict, violations) = response_violations(op, status, headers, None, max);
            ctx.response_verdict = verdict;
            if !violations.is_empty() {
                record(ctx, violations, "response");
            }
        }
    }
}

/// Finish the monitor-mode copy of the response body.
pub fn finish_response_tee(ctx: &mut RequestCtx, max: usize) {
    let Some(tee) = ctx.response_tee.take() else {
        return;
    };
    let (verdict, violations) = judge_json(&tee, ViolationLocation::Response, max);
    ctx.response_verdict = verdict;
    if !violations.is_empty() {
        record(ctx, violations, "response");
    }
}

fn judge_json(tee: &BodyTee, location: ViolationLocation, max: usize) -> (Verdict, Vec<Violation>) {
    if tee.overflow {
        return (Verdict::Unchecked, Vec::new());
    }
    judge(&tee.validator, &tee.buf, location, max)
}

/// Monitor mode: the request's operation is not in the contract.
pub fn record_undocumented(ctx: &mut RequestCtx) {
    record(
        ctx,
        vec![Violation {
            location: ViolationLocation::Path,
            name: None,
            pointer: String::new(),
            keyword: "undocumented".into(),
            message: "the operation is not documented in the contract".into(),
        }],
        "request",
    );
    ctx.request_verdict = Verdict::Invalid;
}

/// Record monitor-mode violations (kept for telemetry, logged at debug).
pub fn record(ctx: &mut RequestCtx, violations: Vec<Violation>, what: &str) {
    for v in &violations {
        tracing::debug!(request_id = %ctx.request_id, what, location = ?v.location, pointer = %v.pointer,
            keyword = %v.keyword, "contract violation (monitor)");
    }
    crate::contract::count_violation(what);
    ctx.violations.extend(violations);
}

#[cfg(test)]
mod tests {
    use super::media_accepted;

    #[test]
    fn media_types_match_exactly_by_range_or_by_suffix() {
        let json = [
            "application/json".to_string(),
            "application/*+json".to_string(),
        ];
        for ok in [
            "application/json",
            "application/merge-patch+json",
            "application/vnd.api+json",
        ] {
            assert!(media_accepted(&json, ok), "{ok}");
        }
        for no in [
            "text/plain",
            "application/+json",
            "application/jsonx",
            "text/x+json",
            "application/xml",
        ] {
            assert!(!media_accepted(&json, no), "{no}");
        }
        assert!(media_accepted(&["text/*".to_string()], "text/csv"));
    }

    #[test]
    fn json_is_utf_8_or_refused() {
        use super::utf8_charset;
        for ok in [
            None,
            Some("application/json"),
            Some("application/json; charset=utf-8"),
            Some("application/json;charset=\"UTF-8\""),
            Some("application/json; version=2"),
        ] {
            assert!(utf8_charset(ok), "{ok:?}");
        }
        for no in [
            "application/json; charset=utf-7",
            "application/json; charset=UTF-16",
            "application/json; CHARSET=latin1",
            "application/json; charset=",
            "application/json; charset=utf-8; charset=utf-7",
        ] {
            assert!(!utf8_charset(Some(no)), "{no}");
        }
        assert!(media_accepted(&[], "anything/at-all"));
    }
}
