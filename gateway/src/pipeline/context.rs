//! Per-request state carried through the pipeline's phases.

use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;

use crate::contract::{Verdict, Violation};
use crate::error::GatewayError;
use crate::routing::InstanceLease;
use crate::runtime::{Active, InFlight};

/// What the gateway knows and decided about one request.
#[derive(Debug)]
pub struct RequestCtx {
    /// When the request was first seen.
    pub started: Instant,
    /// The policy the request is served under (taken once, by [`super::route`]).
    pub active: Option<Arc<Active>>,
    /// `X-Request-Id`, kept from the client or generated.
    pub request_id: String,
    /// The same id as a header value, built once for the upstream request and the response.
    pub request_id_header: Option<http::HeaderValue>,
    /// The client sent the id: the upstream request already carries it.
    pub request_id_from_client: bool,
    /// The client's IP address as text (empty when unknown), formatted once
    /// for limits, forwarding headers and the event.
    pub client_ip: String,
    /// Index of the app in `active.bundle.apps`.
    pub app: Option<usize>,
    /// Index of the matched route (`None`: not routed, or passthrough).
    pub route: Option<usize>,
    /// Routed to a passthrough app (no route of its own).
    pub passthrough: bool,
    /// Body cap for this request.
    pub body_cap: u64,
    /// Body bytes seen so far.
    pub body_bytes: u64,
    /// Instances tried (bit per instance).
    pub tried: u64,
    /// Upstream attempts made.
    pub attempts: u32,
    /// The in-flight slot on the current instance.
    pub lease: Option<InstanceLease>,
    /// The request's place inside its app's fence (cap slot and breaker),
    /// from its first attempt until the app answered or failed to.
    pub fence: Option<super::fence::Fenced>,
    /// When the upstream exchange must be over (the app's total timeout).
    pub deadline: Option<Instant>,
    /// The answer the gateway gave instead of the app's (recorded once, by
    /// [`super::refused`]); the wide event's outcome.
    pub refusal: Option<GatewayError>,
    /// Why the last upstream attempt failed: the answer when no instance
    /// is left to try ([`super::upstream`]).
    pub attempt_error: Option<GatewayError>,
    /// Status sent by the gateway itself (0 = the upstream's).
    pub status: u16,
    /// Request contract verdict.
    pub request_verdict: Verdict,
    /// Response contract verdict.
    pub response_verdict: Verdict,
    /// Violations recorded in monitor mode (request and response).
    pub violations: Vec<Violation>,
    /// Monitor mode: a copy of the streamed request body, validated at its end.
    pub request_tee: Option<BodyTee>,
    /// Monitor mode: a copy of the streamed response body, validated at its end.
    pub response_tee: Option<BodyTee>,
    /// The client is still sending a streamed request body (the app
    /// cannot be blamed for not answering yet).
    pub body_streaming: bool,
    /// The identified consumer (index into the bundle's consumers).
    pub consumer: Option<usize>,
    /// Who is shed first near an app's cap: the consumer's plan's
    /// priority, `Low` for anonymous callers.
    pub priority: crate::policy::resilience::Priority,
    /// Id of the limit or quota that refused the request.
    pub rejected_by: Option<String>,
    /// `RateLimit-Policy` and `RateLimit` for the response.
    pub rate_headers: Option<(String, String)>,
    /// Phase timings for the wide event.
    pub timings: Timings,
    /// The instance of the last upstream attempt.
    pub last_instance: Option<std::sync::Arc<crate::routing::Instance>>,
    /// The wall clock when the request started, if a phase read it (a new
    /// request id does), so the wide event need not read it again.
    pub started_wall: Option<std::time::SystemTime>,
    /// The clock reading that ended the last timed phase, for the next one
    /// to start from: one reading per boundary instead of two.
    pub clock_mark: Option<Instant>,
    /// The client reset the request's HTTP/2 stream (counted once toward
    /// its connection's budget, `proxy::h2`).
    pub client_reset: bool,
    _in_flight: InFlight,
}

impl RequestCtx {
    /// A fresh context counted as in flight.
    pub fn new(in_flight: InFlight) -> Self {
        Self {
            started: Instant::now(),
            active: None,
            // A UUID's text: allocated once, not grown.
            request_id: String::with_capacity(36),
            request_id_header: None,
            request_id_from_client: false,
            client_ip: String::new(),
            app: None,
            route: None,
            passthrough: false,
            body_cap: u64::MAX,
            body_bytes: 0,
            tried: 0,
            attempts: 0,
            lease: None,
            fence: None,
            deadline: None,
            refusal: None,
            attempt_error: None,
            status: 0,
            request_verdict: Verdict::Unchecked,
            response_verdict: Verdict::Unchecked,
            violations: Vec::new(),
            request_tee: None,
            response_tee: None,
            body_streaming: false,
            consumer: None,
            priority: crate::policy::resilience::Priority::Low,
            rejected_by: None,
            rate_headers: None,
            timings: Timings::default(),
            last_instance: None,
            started_wall: None,
            clock_mark: None,
            client_reset: false,
            _in_flight: in_flight,
        }
    }

    /// The identified consumer's id.
    pub fn consumer_id(&self) -> Option<&str> {
        let active = self.active.as_ref()?;
        active
            .bundle
            .consumers
            .consumers
            .get(self.consumer?)
            .map(|c| &*c.id)
    }

    /// The app this request was routed to.
    pub fn app(&self) -> Option<&crate::policy::App> {
        let active = self.active.as_ref()?;
        active.bundle.apps.get(self.app?).map(|a| &**a)
    }
}

/// A bounded copy of a streamed body, validated when the stream ends.
#[derive(Debug)]
pub struct BodyTee {
    /// What the body must satisfy.
    pub validator: std::sync::Arc<crate::contract::body_schema::BodySchema>,
    /// The copy so far.
    pub buf: BytesMut,
    /// Most bytes kept; beyond it the body goes unchecked.
    pub cap: u64,
    /// The body outgrew `cap`.
    pub overflow: bool,
}

impl BodyTee {
    /// An empty copy.
    pub fn new(
        validator: std::sync::Arc<crate::contract::body_schema::BodySchema>,
        cap: u64,
    ) -> Self {
        Self {
            validator,
            buf: BytesMut::new(),
            cap,
            overflow: false,
        }
    }

    /// Start the copy again (the body is sent again from its start).
    pub fn restart(&mut self) {
        self.buf.clear();
        self.overflow = false;
    }

    /// Append a chunk (or give up past the cap).
    pub fn push(&mut self, chunk: &[u8]) {
        if self.overflow {
            return;
        }
        if (self.buf.len() + chunk.len()) as u64 > self.cap {
            self.overflow = true;
            self.buf = BytesMut::new();
        } else {
            self.buf.extend_from_slice(chunk);
        }
    }
}

/// Where a request's time went, for telemetry (microseconds unless noted).
#[derive(Debug, Default, Clone)]
pub struct Timings {
    /// Identification.
    pub auth_us: u32,
    /// Limit checks.
    pub limits_us: u32,
    /// Request contract checks.
    pub request_validation_us: u32,
    /// Response contract checks.
    pub response_validation_us: u32,
    /// Connecting (0 for a reused connection).
    pub upstream_connect_us: u32,
    /// Request sent → first response byte.
    pub upstream_ttfb_us: u32,
    /// First instance choice.
    pub upstream_start: Option<Instant>,
    /// Start of the current attempt.
    pub attempt_start: Option<Instant>,
    /// Last response byte from the upstream.
    pub upstream_end: Option<Instant>,
}

/// Microseconds since `t`, saturating.
pub fn micros_since(t: Instant) -> u32 {
    micros_between(t, Instant::now())
}

/// Microseconds from `start` to `end`, saturating (0 if `end` is earlier).
pub fn micros_between(start: Instant, end: Instant) -> u32 {
    u32::try_from(end.saturating_duration_since(start).as_micros()).unwrap_or(u32::MAX)
}
