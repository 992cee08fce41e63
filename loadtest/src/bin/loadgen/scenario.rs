//! Scenario files: what requests to send, in what mix.
//!
//! ```yaml
//! id_max: 50000                 # {id} in paths → 1..=id_max
//! keys_file: .state/bench/keys.txt   # optional: {key} → one of these, spread evenly
//! requests:
//!   - weight: 8
//!     method: GET
//!     host: orders.corp.example
//!     path: /rest/orders/v1/orders/{id}
//!     headers: { x-api-key: "{key}" }
//!   - weight: 2
//!     method: POST
//!     host: orders.corp.example
//!     path: /rest/orders/v1/orders
//!     headers: { content-type: application/json, x-api-key: "{key}" }
//!     body: '{"customer_id": 1, "lines": [...]}'
//!     invalid_body: '{"customer_id": "x"}'
//!     invalid_share: 0.1        # this share of the POSTs sends invalid_body
//! ```

use std::path::{Path, PathBuf};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use serde::Deserialize;

/// A scenario file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Largest `{id}`.
    #[serde(default = "default_id_max")]
    pub id_max: u64,
    /// One API key per line.
    #[serde(default)]
    pub keys_file: Option<PathBuf>,
    /// The mix.
    pub requests: Vec<RequestSpec>,
}

fn default_id_max() -> u64 {
    1000
}

/// One kind of request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    /// Relative weight in the mix.
    #[serde(default = "one")]
    pub weight: u32,
    /// Method.
    pub method: String,
    /// Host header.
    pub host: String,
    /// Path with optional `{id}`.
    pub path: String,
    /// Headers (values may hold `{key}`).
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// Body.
    #[serde(default)]
    pub body: Option<String>,
    /// Body for the invalid share.
    #[serde(default)]
    pub invalid_body: Option<String>,
    /// Share of requests sending `invalid_body`.
    #[serde(default)]
    pub invalid_share: f64,
}

fn one() -> u32 {
    1
}

/// A request template ready to be instantiated quickly.
pub struct Template {
    method: http::Method,
    host: http::HeaderValue,
    path: String,
    headers: Vec<(http::HeaderName, String)>,
    body: Bytes,
}

/// The scenario expanded into a cycle of templates plus the keys.
pub struct Prepared {
    cycle: Vec<Template>,
    keys: Vec<http::HeaderValue>,
    id_max: u64,
}

impl Scenario {
    /// Read a scenario file.
    pub fn load(path: &Path) -> anyhow::Result<Scenario> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let s: Scenario =
            serde_yaml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        anyhow::ensure!(!s.requests.is_empty(), "the scenario has no requests");
        Ok(s)
    }

    /// Expand weights into a cycle of 1000 templates (invalid bodies placed evenly).
    pub fn prepare(self) -> anyhow::Result<Prepared> {
        let keys = match &self.keys_file {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("reading keys {}", path.display()))?
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| http::HeaderValue::from_str(l.trim()))
                .collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
        };
        let total: u32 = self.requests.iter().map(|r| r.weight).sum();
        anyhow::ensure!(total > 0, "weights sum to zero");
        let mut cycle = Vec::new();
        for r in &self.requests {
            let n = ((r.weight as f64 / total as f64) * 1000.0).round().max(1.0) as usize;
            let invalid_every = if r.invalid_share > 0.0 {
                (1.0 / r.invalid_share).round().max(1.0) as usize
            } else {
                0
            };
            for i in 0..n {
                let invalid = invalid_every > 0 && i % invalid_every == 0;
                let body = if invalid {
                    r.invalid_body.clone()
                } else {
                    r.body.clone()
                };
                cycle.push(Template {
                    method: r
                        .method
                        .parse()
                        .with_context(|| format!("method {}", r.method))?,
                    host: http::HeaderValue::from_str(&r.host)?,
                    path: r.path.clone(),
                    headers: r
                        .headers
                        .iter()
                        .map(|(k, v)| Ok((http::HeaderName::from_bytes(k.as_bytes())?, v.clone())))
                        .collect::<anyhow::Result<Vec<_>>>()?,
                    body: Bytes::from(body.unwrap_or_default()),
                });
            }
        }
        // Interleave kinds so the mix holds over any window.
        let len = cycle.len();
        let mut mixed: Vec<Template> = Vec::with_capacity(len);
        let mut taken = vec![false; len];
        let stride = 7919 % len.max(1);
        let mut idx = 0;
        for _ in 0..len {
            while taken[idx] {
                idx = (idx + 1) % len;
            }
            taken[idx] = true;
            mixed.push(std::mem::replace(&mut cycle[idx], Template::placeholder()));
            idx = (idx + stride.max(1)) % len;
        }
        Ok(Prepared {
            cycle: mixed,
            keys,
            id_max: self.id_max.max(1),
        })
    }
}

impl Template {
    fn placeholder() -> Self {
        Template {
            method: http::Method::GET,
            host: http::HeaderValue::from_static("x"),
            path: String::new(),
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }
}

impl Prepared {
    /// The `n`-th request of the run.
    pub fn request(&self, n: usize, h2: bool) -> http::Request<Full<Bytes>> {
        let t = &self.cycle[n % self.cycle.len()];
        let id = (n as u64).wrapping_mul(2_654_435_761) % self.id_max + 1;
        let path = t.path.replace("{id}", &id.to_string());
        let mut b = http::Request::builder().method(t.method.clone());
        b = if h2 {
            b.uri(format!(
                "http://{}{path}",
                t.host.to_str().unwrap_or("localhost")
            ))
            .version(http::Version::HTTP_2)
        } else {
            b.uri(path).header(http::header::HOST, t.host.clone())
        };
        for (k, v) in &t.headers {
            if v == "{key}" {
                if let Some(key) = self.keys.get(n % self.keys.len().max(1)) {
                    b = b.header(k, key.clone());
                }
            } else {
                b = b.header(k, v.as_str());
            }
        }
        if !t.body.is_empty() {
            b = b.header(http::header::CONTENT_LENGTH, t.body.len());
        }
        b.body(Full::new(t.body.clone()))
            .unwrap_or_else(|_| http::Request::new(Full::new(Bytes::new())))
    }
}
