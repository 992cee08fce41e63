//! The one mapping from gateway decisions and failures to HTTP problem
//! responses (RFC 9457 `application/problem+json`).
//!
//! Every response the gateway writes itself goes through [`GatewayError`]:
//! a stable `type` URI per kind, a fixed `title`, a `detail` written for the
//! caller, and the request id. Internal causes (peer addresses, OS errors)
//! are logged, never sent.

use bytes::Bytes;
use pingora::{Error, ErrorType};

use crate::contract::Violation;

/// Base of the stable problem `type` URIs.
pub const PROBLEM_BASE: &str = "https://gatehouse.dev/problems/";

/// A response the gateway decides on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayError {
    /// No app serves this host and path.
    NoApp,
    /// The app has no such route.
    NoRoute,
    /// The route exists but not for this method; `allow` lists the methods.
    MethodNotAllowed {
        /// Comma-separated allowed methods.
        allow: String,
    },
    /// The path is in a form apps read differently from the gateway (see
    /// [`crate::routing::canonical_path`]).
    BadPath,
    /// The head can be read more than one way (duplicate `Host`, a
    /// `Connection` option naming a header the gateway judged or sets, …).
    AmbiguousRequest {
        /// What was ambiguous, for the caller.
        reason: &'static str,
    },
    /// The request head is larger than the gateway reads.
    HeadTooLarge,
    /// The client did not send the whole head or body in time.
    RequestTimeout,
    /// The body is larger than the route allows.
    BodyTooLarge {
        /// The cap in bytes.
        limit: u64,
    },
    /// No instance could be connected to.
    UpstreamUnreachable,
    /// Every instance is unhealthy or ejected.
    NoHealthyInstance,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// The upstream broke the exchange (reset, bad HTTP).
    UpstreamFailed,
    /// The client sent something unparseable.
    BadRequest,
    /// A bug or resource failure inside the gateway.
    Internal,
    /// The request breaks the app's contract.
    ContractViolation {
        /// What is wrong (at most the configured number).
        violations: Vec<Violation>,
    },
    /// The JSON body does not parse.
    MalformedJson {
        /// Where and why, e.g. `line 3 column 7: expected value`.
        detail: String,
    },
    /// The body's media type is not one the operation accepts.
    UnsupportedMediaType {
        /// Accepted media types.
        expected: Vec<String>,
    },
    /// Missing or invalid credentials.
    Unauthenticated {
        /// Why, in terms safe to show.
        reason: String,
        /// `WWW-Authenticate` challenge.
        challenge: String,
    },
    /// The consumer may not call this app.
    Forbidden,
    /// A rate limit or quota refused the request.
    RateLimited {
        /// Seconds until a request would be admitted.
        retry_after: u64,
        /// `RateLimit-Policy` value of the refusing limit.
        policy: String,
        /// `RateLimit` value of the refusing limit.
        state: String,
    },
    /// The upstream's response breaks the app's contract (enforce mode).
    UpstreamContractViolation {
        /// How many violations were found (details are logged, not sent).
        count: usize,
    },
    /// The app has as many requests in flight as it may: shed.
    Shed,
    /// An attempt failed and the app's retry budget allows no retry.
    RetryBudgetSpent,
    /// The gateway has as many requests in flight (or client connections)
    /// as its descriptors allow.
    Overloaded,
    /// The app (or route) failed too often: its breaker is open.
    BreakerOpen {
        /// Seconds until the app is tried again.
        retry_after: u64,
    },
}

impl GatewayError {
    /// HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            Self::NoApp | Self::NoRoute => 404,
            Self::MethodNotAllowed { .. } => 405,
            Self::BadPath
            | Self::AmbiguousRequest { .. }
            | Self::BadRequest
            | Self::ContractViolation { .. }
            | Self::MalformedJson { .. } => 400,
            Self::UnsupportedMediaType { .. } => 415,
            Self::Unauthenticated { .. } => 401,
            Self::Forbidden => 403,
            Self::RateLimited { .. } => 429,
            Self::UpstreamContractViolation { .. } => 502,
            Self::BodyTooLarge { .. } => 413,
            Self::UpstreamUnreachable | Self::UpstreamFailed => 502,
            Self::NoHealthyInstance
            | Self::Shed
            | Self::BreakerOpen { .. }
            | Self::RetryBudgetSpent
            | Self::Overloaded => 503,
            Self::UpstreamTimeout => 504,
            Self::Internal => 500,
            Self::HeadTooLarge => 431,
            Self::RequestTimeout => 408,
        }
    }

    /// Stable slug, the last part of the `type` URI; also the telemetry outcome.
    pub fn slug(&self) -> &'static str {
        match self {
            Self::NoApp => "no-app",
            Self::NoRoute => "no-route",
            Self::MethodNotAllowed { .. } => "method-not-allowed",
            Self::BadPath => "bad-path",
            Self::AmbiguousRequest { .. } => "ambiguous-request",
            Self::HeadTooLarge => "head-too-large",
            Self::RequestTimeout => "request-timeout",
            Self::BodyTooLarge { .. } => "body-too-large",
            Self::UpstreamUnreachable => "upstream-unreachable",
            Self::NoHealthyInstance => "no-healthy-instance",
            Self::UpstreamTimeout => "upstream-timeout",
            Self::UpstreamFailed => "upstream-failed",
            Self::BadRequest => "bad-request",
            Self::Internal => "internal",
            Self::ContractViolation { .. } => "contract-violation",
            Self::MalformedJson { .. } => "malformed-json",
            Self::UnsupportedMediaType { .. } => "unsupported-media-type",
            Self::UpstreamContractViolation { .. } => "upstream-contract-violation",
            Self::Unauthenticated { .. } => "unauthenticated",
            Self::Forbidden => "forbidden",
            Self::RateLimited { .. } => "rate-limited",
            Self::Shed => "shed",
            Self::RetryBudgetSpent => "retry-budget",
            Self::Overloaded => "overloaded",
            Self::BreakerOpen { .. } => "breaker-open",
        }
    }

    fn title(&self) -> &'static str {
        match self {
            Self::NoApp => "No app serves this address",
            Self::NoRoute => "No such route",
            Self::MethodNotAllowed { .. } => "Method not allowed",
            Self::BadPath => "Path not allowed",
            Self::AmbiguousRequest { .. } => "Ambiguous request",
            Self::HeadTooLarge => "Request head too large",
            Self::RequestTimeout => "Request timeout",
            Self::BodyTooLarge { .. } => "Request body too large",
            Self::UpstreamUnreachable => "Upstream unreachable",
            Self::NoHealthyInstance => "No healthy upstream instance",
            Self::UpstreamTimeout => "Upstream timeout",
            Self::UpstreamFailed => "Upstream failed",
            Self::BadRequest => "Bad request",
            Self::Internal => "Internal gateway error",
            Self::ContractViolation { .. } => "Request violates the API contract",
            Self::MalformedJson { .. } => "Malformed JSON body",
            Self::UnsupportedMediaType { .. } => "Unsupported media type",
            Self::UpstreamContractViolation { .. } => "Upstream response violates the API contract",
            Self::Unauthenticated { .. } => "Authentication required",
            Self::Forbidden => "Not allowed",
            Self::RateLimited { .. } => "Too many requests",
            Self::Shed => "App at capacity",
            Self::RetryBudgetSpent => "App failing, not retried",
            Self::Overloaded => "Gateway at capacity",
            Self::BreakerOpen { .. } => "App failing",
        }
    }

    fn detail(&self) -> String {
        match self {
            Self::NoApp => "No app is configured for this host and path.".into(),
            Self::NoRoute => "The app has no route for this path.".into(),
            Self::MethodNotAllowed { allow } => format!("This route accepts only: {allow}."),
            Self::BadPath => "The path is not accepted: `;` parameters, backslashes, encoded slashes, encoded control characters, double encoding or `..` above the root.".into(),
            Self::AmbiguousRequest { reason } => format!("The request was refused because {reason}."),
            Self::HeadTooLarge => "The request line and headers are too large.".into(),
            Self::RequestTimeout => "The request was not received in time.".into(),
            Self::BodyTooLarge { limit } => {
                format!("The request body exceeds the limit of {limit} bytes for this route.")
            }
            Self::UpstreamUnreachable => "The app could not be reached. Try again later.".into(),
            Self::NoHealthyInstance => {
                "No instance of the app is healthy at the moment. Try again later.".into()
            }
            Self::UpstreamTimeout => "The app did not answer in time.".into(),
            Self::UpstreamFailed => "The app ended the exchange abnormally.".into(),
            Self::BadRequest => "The request could not be understood.".into(),
            Self::Internal => "The gateway failed to handle the request.".into(),
            Self::ContractViolation { violations } => {
                format!("The request breaks the API contract in {} place(s); see `violations`.", violations.len())
            }
            Self::MalformedJson { detail } => format!("The body is not valid JSON: {detail}."),
            Self::UnsupportedMediaType { expected } => {
                format!("This operation accepts only: {}.", expected.join(", "))
            }
            Self::Unauthenticated { reason, .. } => format!("{reason}."),
            Self::Forbidden => "Your credentials are valid but do not give access to this app.".into(),
            Self::RateLimited { retry_after, .. } => {
                format!("A rate limit or quota was reached; retry after {retry_after} second(s).")
            }
            Self::UpstreamContractViolation { count } => format!(
                "The app answered with a response that breaks its API contract ({count} violation(s)); it was withheld."
            ),
            Self::Shed => "The app has as many requests in progress as it may take; retry shortly.".into(),
            Self::RetryBudgetSpent => "The app failed to answer, and so many of its requests are being retried that this one was not; retry shortly.".into(),
            Self::Overloaded => "The gateway is serving as much as it can take; retry shortly.".into(),
            Self::BreakerOpen { retry_after } => format!(
                "The app is failing and is given time to recover; retry after {retry_after} second(s)."
            ),
        }
    }

    /// The telemetry `outcome` column: a small fixed vocabulary analysts
    /// group by.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::NoApp | Self::NoRoute | Self::MethodNotAllowed { .. } => "not_found",
            Self::BadPath
            | Self::BadRequest
            | Self::AmbiguousRequest { .. }
            | Self::RequestTimeout => "bad_request",
            Self::BodyTooLarge { .. } | Self::HeadTooLarge => "too_large",
            Self::UpstreamUnreachable | Self::UpstreamFailed => "upstream_error",
            Self::NoHealthyInstance => "no_healthy_instance",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::Internal => "internal_error",
            Self::ContractViolation { .. }
            | Self::MalformedJson { .. }
            | Self::UnsupportedMediaType { .. } => "contract_violation",
            Self::UpstreamContractViolation { .. } => "upstream_contract_violation",
            Self::Unauthenticated { .. } => "unauthenticated",
            Self::Forbidden => "forbidden",
            Self::RateLimited { .. } => "rate_limited",
            Self::Shed => "shed",
            Self::RetryBudgetSpent => "retry_budget",
            Self::Overloaded => "overloaded",
            Self::BreakerOpen { .. } => "breaker_open",
        }
    }

    /// The direction of contract violation a refusal counts as on
    /// `/metrics` (`gatehouse_contract_violations_total`), if it is one.
    /// (A withheld response is counted where it is judged.)
    pub fn violation_counted(&self) -> Option<&'static str> {
        match self {
            Self::ContractViolation { .. }
            | Self::MalformedJson { .. }
            | Self::UnsupportedMediaType { .. } => Some("request"),
            Self::NoApp
            | Self::NoRoute
            | Self::MethodNotAllowed { .. }
            | Self::BadPath
            | Self::AmbiguousRequest { .. }
            | Self::HeadTooLarge
            | Self::RequestTimeout
            | Self::BodyTooLarge { .. }
            | Self::UpstreamUnreachable
            | Self::NoHealthyInstance
            | Self::UpstreamTimeout
            | Self::UpstreamFailed
            | Self::BadRequest
            | Self::Internal
            | Self::UpstreamContractViolation { .. }
            | Self::Unauthenticated { .. }
            | Self::Forbidden
            | Self::RateLimited { .. }
            | Self::Shed
            | Self::RetryBudgetSpent
            | Self::Overloaded
            | Self::BreakerOpen { .. } => None,
        }
    }

    /// The headers a problem response carries besides its content headers
    /// and the request id (`Allow`, `Accept`, `WWW-Authenticate`,
    /// `Retry-After` and `RateLimit-*`).
    pub fn problem_headers(&self) -> Vec<(http::HeaderName, String)> {
        use http::header;
        match self {
            Self::MethodNotAllowed { allow } => vec![(header::ALLOW, allow.clone())],
            Self::UnsupportedMediaType { expected } => vec![(header::ACCEPT, expected.join(", "))],
            Self::Unauthenticated { challenge, .. } => {
                vec![(header::WWW_AUTHENTICATE, challenge.clone())]
            }
            Self::RateLimited {
                retry_after,
                policy,
                state,
            } => vec![
                (header::RETRY_AFTER, retry_after.to_string()),
                (
                    http::HeaderName::from_static("ratelimit-policy"),
                    policy.clone(),
                ),
                (http::HeaderName::from_static("ratelimit"), state.clone()),
            ],
            Self::Shed | Self::RetryBudgetSpent | Self::Overloaded => {
                vec![(header::RETRY_AFTER, "1".into())]
            }
            Self::BreakerOpen { retry_after } => {
                vec![(header::RETRY_AFTER, retry_after.to_string())]
            }
            Self::NoApp
            | Self::NoRoute
            | Self::BadPath
            | Self::AmbiguousRequest { .. }
            | Self::HeadTooLarge
            | Self::RequestTimeout
            | Self::BodyTooLarge { .. }
            | Self::UpstreamUnreachable
            | Self::NoHealthyInstance
            | Self::UpstreamTimeout
            | Self::UpstreamFailed
            | Self::BadRequest
            | Self::Internal
            | Self::ContractViolation { .. }
            | Self::MalformedJson { .. }
            | Self::UpstreamContractViolation { .. }
            | Self::Forbidden => Vec::new(),
        }
    }

    /// A Pingora error that carries this decision to `fail_to_proxy` (see
    /// [`GatewayError::of_pingora`]); never retried (`error_while_proxy`
    /// keeps it so).
    pub fn into_pingora(self) -> Box<Error> {
        let status = self.status();
        let mut e = Error::because(ErrorType::HTTPStatus(status), "gateway decision", self);
        e.set_retry(false);
        e
    }

    /// The decision a Pingora error carries ([`GatewayError::into_pingora`]),
    /// else its classification ([`GatewayError::from_pingora`]).
    pub fn of_pingora(e: &Error) -> Self {
        match e.root_cause().downcast_ref::<Self>() {
            Some(decided) => decided.clone(),
            None => Self::from_pingora(e),
        }
    }

    /// The problem document.
    pub fn problem_json(&self, request_id: &str, instance: &str) -> Bytes {
        let problem = Problem {
            detail: self.detail(),
            instance,
            request_id,
            status: self.status(),
            title: self.title(),
            kind: ProblemType(self.slug()),
            violations: match self {
                Self::ContractViolation { violations } => Some(violations),
                _ => None,
            },
        };
        // Sized for the common problem (a few violations): written once,
        // not regrown while serializing.
        let mut out = Vec::with_capacity(512);
        match serde_json::to_writer(&mut out, &problem) {
            Ok(()) => Bytes::from(out),
            Err(_) => Bytes::new(),
        }
    }

    /// Classify a Pingora error that ended a request.
    pub fn from_pingora(e: &Error) -> Self {
        match e.etype() {
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                if matches!(e.esource(), pingora::ErrorSource::Downstream) {
                    Self::BadRequest
                } else {
                    Self::UpstreamTimeout
                }
            }
            ErrorType::ConnectRefused
            | ErrorType::ConnectNoRoute
            | ErrorType::ConnectError
            | ErrorType::TLSHandshakeFailure
            | ErrorType::TLSHandshakeTimedout
            | ErrorType::InvalidCert
            | ErrorType::HandshakeError
            | ErrorType::SocketError
            | ErrorType::BindError => Self::UpstreamUnreachable,
            ErrorType::HTTPStatus(413) => Self::BodyTooLarge { limit: 0 },
            ErrorType::HTTPStatus(504) => Self::UpstreamTimeout,
            ErrorType::HTTPStatus(code) if (400..500).contains(code) => Self::BadRequest,
            // A malformed request body or head read before the upstream
            // was involved: the client's fault.
            ErrorType::InvalidHTTPHeader
                if !matches!(e.esource(), pingora::ErrorSource::Upstream) =>
            {
                Self::BadRequest
            }
            ErrorType::Custom("InvalidChunk")
                if !matches!(e.esource(), pingora::ErrorSource::Upstream) =>
            {
                Self::BadRequest
            }
            _ => match e.esource() {
                pingora::ErrorSource::Upstream => Self::UpstreamFailed,
                pingora::ErrorSource::Downstream => Self::BadRequest,
                _ => Self::Internal,
            },
        }
    }
}

impl std::fmt::Display for GatewayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.title(), self.status())
    }
}

impl std::error::Error for GatewayError {}

/// The RFC 9457 body, serialized straight from borrowed parts. Members are
/// declared in alphabetical order, the order a `serde_json::Value` map
/// writes them in, so the bytes are what clients always got.
#[derive(serde::Serialize)]
struct Problem<'a> {
    detail: String,
    instance: &'a str,
    request_id: &'a str,
    status: u16,
    title: &'static str,
    #[serde(rename = "type")]
    kind: ProblemType,
    #[serde(skip_serializing_if = "Option::is_none")]
    violations: Option<&'a [Violation]>,
}

/// `type`: the problem base URI and the slug, written without a `String`.
struct ProblemType(&'static str);

impl serde::Serialize for ProblemType {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!("{PROBLEM_BASE}{}", self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_bodies_are_the_bytes_a_value_map_writes() {
        let violations = vec![
            Violation {
                keyword: "type".into(),
                location: crate::contract::ViolationLocation::Body,
                message: "\"4711\" is not of type \"integer\"".into(),
                name: None,
                pointer: "/customer_id".into(),
            },
            Violation {
                keyword: "required".into(),
                location: crate::contract::ViolationLocation::Query,
                message: "missing".into(),
                name: Some("page".into()),
                pointer: String::new(),
            },
        ];
        for err in [
            GatewayError::ContractViolation { violations },
            GatewayError::NoRoute,
            GatewayError::BodyTooLarge { limit: 1024 },
        ] {
            let mut expected = serde_json::json!({
                "type": format!("{PROBLEM_BASE}{}", err.slug()),
                "title": err.title(),
                "status": err.status(),
                "detail": err.detail(),
                "instance": "/rest/orders/v1/orders",
                "request_id": "0190-abc",
            });
            if let GatewayError::ContractViolation { violations } = &err {
                expected["violations"] = serde_json::to_value(violations).unwrap();
            }
            let body = err.problem_json("0190-abc", "/rest/orders/v1/orders");
            assert_eq!(std::str::from_utf8(&body).unwrap(), expected.to_string());
        }
    }

    #[test]
    fn problem_documents_carry_type_status_and_request_id() {
        let e = GatewayError::BodyTooLarge { limit: 1024 };
        let v: serde_json::Value =
            serde_json::from_slice(&e.problem_json("rid-1", "/orders")).unwrap();
        assert_eq!(v["type"], "https://gatehouse.dev/problems/body-too-large");
        assert_eq!(v["status"], 413);
        assert_eq!(v["request_id"], "rid-1");
        assert!(v["detail"].as_str().unwrap().contains("1024"));
    }

    #[test]
    fn a_decision_survives_the_trip_through_pingora() {
        let decided = GatewayError::BodyTooLarge { limit: 77 };
        let e = decided.clone().into_pingora();
        assert!(!e.retry());
        assert_eq!(GatewayError::of_pingora(&e), decided);
        let classified = Error::new_up(ErrorType::ConnectRefused);
        assert_eq!(
            GatewayError::of_pingora(&classified),
            GatewayError::UpstreamUnreachable
        );
    }

    #[test]
    fn pingora_errors_map_to_gateway_statuses() {
        let up = |t| GatewayError::from_pingora(&Error::new_up(t)).status();
        assert_eq!(up(ErrorType::ConnectRefused), 502);
        assert_eq!(up(ErrorType::ConnectTimedout), 504);
        assert_eq!(up(ErrorType::ReadTimedout), 504);
        assert_eq!(up(ErrorType::ConnectionClosed), 502);
        let down = GatewayError::from_pingora(&Error::new_down(ErrorType::InvalidHTTPHeader));
        assert_eq!(down.status(), 400);
        assert_eq!(
            GatewayError::from_pingora(&Error::new_in(ErrorType::InternalError)).status(),
            500
        );
    }
}
