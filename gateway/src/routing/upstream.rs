//! An app's upstream settings as compiled from its policy: instances,
//! balancing, health checks and ejection. The live state built from them
//! is in `balancer.rs`.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;

/// Compiled upstream settings.
#[derive(Debug)]
pub struct Upstream {
    /// Instances in declaration order.
    pub instances: Vec<InstanceAddr>,
    /// Algorithm.
    pub balancing: Balancing,
    /// Active health check.
    pub health_check: Option<HealthCheck>,
    /// Passive ejection.
    pub ejection: Ejection,
}

/// A parsed instance URL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InstanceAddr {
    /// The URL as written (normalised), the instance's identity (shared
    /// with every wide event that names the instance).
    pub url: Arc<str>,
    /// Host name or IP literal (without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// `https`.
    pub tls: bool,
}

impl InstanceAddr {
    /// `host:port` for socket resolution (IPv6 literals bracketed).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Balancing algorithm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Balancing {
    /// In turn.
    RoundRobin,
    /// Fewest in flight.
    LeastConnections,
    /// Rendezvous hash of a header.
    ConsistentHash(HeaderName),
}

/// Active health check.
#[derive(Debug, Clone)]
pub struct HealthCheck {
    /// Path to GET.
    pub path: String,
    /// Between checks.
    pub interval: Duration,
    /// Per check.
    pub timeout: Duration,
    /// Successes to become healthy.
    pub healthy_threshold: u32,
    /// Failures to become unhealthy.
    pub unhealthy_threshold: u32,
}

/// Passive ejection.
#[derive(Debug, Clone)]
pub struct Ejection {
    /// Consecutive connect failures (0 = off).
    pub consecutive_failures: u32,
    /// Ejection time.
    pub duration: Duration,
}
