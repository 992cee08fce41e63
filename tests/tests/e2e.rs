//! End-to-end tests: real gateway, real upstreams, loopback only.

mod e2e {
    mod balancing;
    mod lifecycle;
    mod lint;
    mod limits_and_errors;
    mod resilience;
    mod routing;
    mod tls;
}
