//! End-to-end tests: real gateway, real upstreams, loopback only.

mod e2e {
    mod balancing;
    mod conformance;
    mod contracts;
    mod drills;
    mod governance;
    mod h2;
    mod http1;
    mod identity;
    mod lifecycle;
    mod limits_and_errors;
    mod lint;
    mod parity;
    mod resilience;
    mod routing;
    mod telemetry;
    mod tls;
}
