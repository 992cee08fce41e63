//! `lowcode-sim`: a fast fake estate of low-code apps for Gatehouse's tests,
//! demo and benchmarks.
//!
//! Each `--app KIND=ADDR` (or `apps:` entry of `--config`) starts one
//! instance of an app on its own listener. Every instance also serves:
//!
//! - `GET /health` — `{"status":"UP"}`;
//! - `ANY /__sim/echo[/...]` — what the instance received (method, path,
//!   query, headers, body size), for checking what a proxy forwarded;
//! - `GET /__sim/stats` — request counters (health checks and `/__sim`
//!   calls excluded from `requests`);
//! - `PUT /__sim/config` — replace the default behaviour at run time
//!   (`{"latency":"500","error_rate":0,"pad_bytes":0,"nonconforming":true}`).
//!
//! Per request, `x-sim-delay-ms: N` adds a delay and `x-sim-status: N`
//! forces a status. On start it prints one `listening kind=K addr=A` line per
//! listener (port 0 picks a free port), then `ready`.

mod apps;
mod config;

use std::convert::Infallible;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use bytes::Bytes;
use clap::Parser;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use config::{AppConfig, Behaviour, EstateConfig};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Largest request body the simulator reads.
const MAX_BODY: usize = 64 << 20;

/// A fake estate of low-code apps.
#[derive(Parser, Debug)]
#[command(name = "lowcode-sim", version, about)]
struct Cli {
    /// YAML estate file (apps, listeners, behaviour).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Run one instance of an app: KIND=ADDR (orders, customers, employees, approvals).
    #[arg(long = "app", value_name = "KIND=ADDR")]
    apps: Vec<String>,
    /// Default latency for --app instances: 20, 5..20 or normal:20:5 (ms).
    #[arg(long, value_parser = config::parse_latency)]
    latency: Option<config::Latency>,
    /// Default share of 500 responses for --app instances.
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Extra bytes per returned record for --app instances.
    #[arg(long, default_value_t = 0)]
    pad_bytes: usize,
    /// Return contract-breaking bodies from --app instances.
    #[arg(long)]
    nonconforming: bool,
    /// Worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// List the endpoints of every app kind and exit.
    #[arg(long)]
    list: bool,
}

struct Instance {
    label: String,
    endpoints: Vec<apps::Endpoint>,
    behaviour: ArcSwap<Behaviour>,
    overrides: std::collections::HashMap<String, Behaviour>,
    requests: AtomicU64,
    health_checks: AtomicU64,
    body_bytes: AtomicU64,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.list {
        for kind in apps::KINDS {
            for ep in apps::endpoints(kind).unwrap_or_default() {
                println!("{kind}\t{} {}", ep.method, ep.template);
            }
        }
        return Ok(());
    }
    let mut estate = match &cli.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            serde_yaml::from_str::<EstateConfig>(&text)
                .with_context(|| format!("parsing {}", path.display()))?
        }
        None => EstateConfig::default(),
    };
    let default = Behaviour {
        latency: cli.latency.clone().unwrap_or_default(),
        error_rate: cli.error_rate,
        pad_bytes: cli.pad_bytes,
        nonconforming: cli.nonconforming,
    };
    for spec in &cli.apps {
        let (kind, addr) = spec.split_once('=').context("--app takes KIND=ADDR")?;
        estate.apps.push(AppConfig {
            kind: kind.to_string(),
            listen: vec![addr.to_string()],
            behaviour: default.clone(),
            endpoints: Default::default(),
        });
    }
    anyhow::ensure!(
        !estate.apps.is_empty(),
        "nothing to run: give --app KIND=ADDR or --config FILE"
    );
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.max(1))
        .enable_all()
        .build()?
        .block_on(run(estate))
}

async fn run(estate: EstateConfig) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    for app in estate.apps {
        let endpoints_known: Vec<String> = apps::endpoints(&app.kind)
            .with_context(|| format!("unknown app kind `{}` (known: {:?})", app.kind, apps::KINDS))?
            .iter()
            .map(|e| format!("{} {}", e.method, e.template))
            .collect();
        for key in app.endpoints.keys() {
            anyhow::ensure!(
                endpoints_known.contains(key),
                "`{key}` is not an endpoint of `{}`",
                app.kind
            );
        }
        for addr in &app.listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))?;
            let local = listener.local_addr()?;
            let instance = Arc::new(Instance {
                label: format!("{}@{local}", app.kind),
                endpoints: apps::endpoints(&app.kind).unwrap_or_default(),
                behaviour: ArcSwap::from_pointee(app.behaviour.clone()),
                overrides: app.endpoints.clone(),
                requests: AtomicU64::new(0),
                health_checks: AtomicU64::new(0),
                body_bytes: AtomicU64::new(0),
            });
            writeln!(out, "listening kind={} addr={local}", app.kind)?;
            tokio::spawn(accept_loop(listener, instance));
        }
    }
    writeln!(out, "ready")?;
    out.flush()?;
    drop(out);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}

async fn accept_loop(listener: tokio::net::TcpListener, instance: Arc<Instance>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let instance = Arc::clone(&instance);
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(Arc::clone(&instance), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn json_response(status: u16, body: &Value, label: &str) -> Response<Full<Bytes>> {
    let bytes = if body.is_null() && status == 204 {
        Bytes::new()
    } else {
        Bytes::from(body.to_string())
    };
    let mut resp = Response::new(Full::new(bytes));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = resp.headers_mut();
    if status != 204 {
        h.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
    }
    if let Ok(v) = http::HeaderValue::from_str(label) {
        h.insert("x-sim-instance", v);
    }
    resp
}

async fn handle(
    inst: Arc<Instance>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    if path == "/health" {
        inst.health_checks.fetch_add(1, Ordering::Relaxed);
        return Ok(json_response(200, &json!({ "status": "UP" }), &inst.label));
    }
    if path == "/__sim/stats" {
        let stats = json!({
            "instance": inst.label,
            "requests": inst.requests.load(Ordering::Relaxed),
            "health_checks": inst.health_checks.load(Ordering::Relaxed),
            "body_bytes": inst.body_bytes.load(Ordering::Relaxed),
        });
        return Ok(json_response(200, &stats, &inst.label));
    }
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Ok(json_response(
                413,
                &json!({ "error": "body too large or aborted" }),
                &inst.label,
            ))
        }
    };
    if path == "/__sim/config" && parts.method == Method::PUT {
        return Ok(match serde_json::from_slice::<Behaviour>(&body) {
            Ok(b) => {
                inst.behaviour.store(Arc::new(b));
                json_response(200, &json!({ "ok": true }), &inst.label)
            }
            Err(e) => json_response(400, &json!({ "error": e.to_string() }), &inst.label),
        });
    }
    inst.requests.fetch_add(1, Ordering::Relaxed);
    inst.body_bytes
        .fetch_add(body.len() as u64, Ordering::Relaxed);
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let delay = header("x-sim-delay-ms").and_then(|v| v.parse::<u64>().ok());
    let forced = header("x-sim-status").and_then(|v| v.parse::<u16>().ok());

    if path.starts_with("/__sim/echo") {
        if let Some(ms) = delay {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
        let headers: serde_json::Map<String, Value> = parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    Value::String(String::from_utf8_lossy(v.as_bytes()).into()),
                )
            })
            .collect();
        let echo = json!({
            "instance": inst.label,
            "method": parts.method.as_str(),
            "path": path,
            "query": parts.uri.query(),
            "headers": headers,
            "body_bytes": body.len(),
        });
        return Ok(json_response(forced.unwrap_or(200), &echo, &inst.label));
    }

    let method = parts.method.as_str();
    let found = inst
        .endpoints
        .iter()
        .find_map(|ep| ep.matches(method, &path).map(|p| (ep, p)));
    let Some((ep, params)) = found else {
        return Ok(json_response(
            404,
            &json!({ "error": "no such endpoint" }),
            &inst.label,
        ));
    };
    let default = inst.behaviour.load();
    let behaviour = inst
        .overrides
        .get(&format!("{} {}", ep.method, ep.template))
        .unwrap_or(&default);
    let wait = delay
        .map(std::time::Duration::from_millis)
        .unwrap_or_else(|| behaviour.latency.sample());
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    if let Some(status) = forced {
        return Ok(json_response(
            status,
            &json!({ "error": "forced by x-sim-status" }),
            &inst.label,
        ));
    }
    if behaviour.error_rate > 0.0 && rand::random::<f64>() < behaviour.error_rate {
        return Ok(json_response(
            500,
            &json!({ "error": "simulated failure" }),
            &inst.label,
        ));
    }
    let parsed = if body.is_empty() {
        None
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Ok(v) => Some(v),
            Err(e) => {
                return Ok(json_response(
                    400,
                    &json!({ "error": format!("invalid JSON: {e}") }),
                    &inst.label,
                ))
            }
        }
    };
    let query: Vec<(&str, &str)> = parts
        .uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect();
    let ctx = apps::Ctx {
        pad: behaviour.pad_bytes,
        drift: behaviour.nonconforming,
    };
    let (status, value) = ep.call(
        &apps::Req {
            params,
            query,
            body: parsed,
        },
        &ctx,
    );
    Ok(json_response(status, &value, &inst.label))
}
