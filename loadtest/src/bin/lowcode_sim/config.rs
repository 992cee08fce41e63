//! What the simulated estate looks like: apps, listeners and behaviour.

use std::collections::HashMap;
use std::time::Duration;

use rand::Rng;
use serde::Deserialize;

/// The whole estate (YAML file or built from flags).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct EstateConfig {
    /// Apps to run.
    pub apps: Vec<AppConfig>,
}

/// One simulated low-code app.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// App kind: orders, customers, employees or approvals.
    pub kind: String,
    /// Addresses to listen on (one instance each); port 0 picks a free port.
    pub listen: Vec<String>,
    /// Default behaviour of every endpoint.
    #[serde(default)]
    pub behaviour: Behaviour,
    /// Per-endpoint behaviour, keyed `"METHOD /template"` as listed by `--list`.
    #[serde(default)]
    pub endpoints: HashMap<String, Behaviour>,
}

/// How an endpoint behaves.
#[derive(Debug, Clone, Deserialize, Default, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Behaviour {
    /// Added latency.
    #[serde(default)]
    pub latency: Latency,
    /// Share of requests answered with a 500 (0.0–1.0).
    #[serde(default)]
    pub error_rate: f64,
    /// Extra bytes of text in each returned record (response size).
    #[serde(default)]
    pub pad_bytes: usize,
    /// Return bodies that break the app's published contract.
    #[serde(default)]
    pub nonconforming: bool,
}

/// Latency model, written `20` (fixed ms), `5..20` (uniform) or
/// `normal:20:5` (mean and standard deviation, ms).
#[derive(Debug, Clone, Deserialize, Default, serde::Serialize)]
#[serde(try_from = "String", into = "String")]
pub enum Latency {
    /// None.
    #[default]
    None,
    /// Always this many milliseconds.
    Fixed(u64),
    /// Uniform between two bounds (ms).
    Uniform(u64, u64),
    /// Normal distribution (mean, standard deviation; ms, clamped at 0).
    Normal(f64, f64),
}

impl Latency {
    /// Draw one delay.
    pub fn sample(&self) -> Duration {
        match *self {
            Latency::None => Duration::ZERO,
            Latency::Fixed(ms) => Duration::from_millis(ms),
            Latency::Uniform(lo, hi) => {
                let (lo, hi) = (lo.min(hi), lo.max(hi));
                Duration::from_millis(rand::rng().random_range(lo..=hi))
            }
            Latency::Normal(mean, sd) => {
                // Box–Muller.
                let mut r = rand::rng();
                let u1: f64 = r.random_range(f64::EPSILON..1.0);
                let u2: f64 = r.random();
                let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                Duration::from_micros(((mean + sd * z).max(0.0) * 1000.0) as u64)
            }
        }
    }
}

/// Parse `--latency` values: `20`, `5..20`, `normal:20:5`.
pub fn parse_latency(s: &str) -> Result<Latency, String> {
    if let Some(rest) = s.strip_prefix("normal:") {
        let (m, sd) = rest.split_once(':').ok_or("normal:MEAN:SD")?;
        return Ok(Latency::Normal(
            m.parse().map_err(|_| "bad mean")?,
            sd.parse().map_err(|_| "bad sd")?,
        ));
    }
    if let Some((a, b)) = s.split_once("..") {
        return Ok(Latency::Uniform(
            a.parse().map_err(|_| "bad lower bound")?,
            b.parse().map_err(|_| "bad upper bound")?,
        ));
    }
    s.parse()
        .map(Latency::Fixed)
        .map_err(|_| format!("`{s}` is not 20, 5..20 or normal:20:5"))
}

impl TryFrom<String> for Latency {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.is_empty() || s == "0" {
            return Ok(Latency::None);
        }
        parse_latency(&s)
    }
}

impl From<Latency> for String {
    fn from(l: Latency) -> String {
        match l {
            Latency::None => "0".into(),
            Latency::Fixed(ms) => ms.to_string(),
            Latency::Uniform(a, b) => format!("{a}..{b}"),
            Latency::Normal(m, sd) => format!("normal:{m}:{sd}"),
        }
    }
}
