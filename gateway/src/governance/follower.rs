//! A fleet data-plane node (`serve --control-plane URL --cache DIR`): it
//! follows the control plane's active version and keeps the last good
//! bundle on disk.
//!
//! Protocol: `GET URL/v1/fleet/bundle?wait=SECONDS` with
//! `If-None-Match: "<version>"`. The control plane answers at once with the
//! active bundle (`200`, `{version, files}`, `ETag`) when it differs, else
//! holds the request until the version changes (`200`) or the wait ends
//! (`304`). A change therefore reaches every node one round trip after it
//! is activated. The node recompiles the files and checks that they are the
//! version announced (content addressing) before swapping them in; then it
//! writes them to `DIR/bundle.json`. When the control plane is away the node
//! keeps serving and retries every second at most; started while it is
//! away, it serves the cached bundle.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::control::compile_stored;
use super::store::{write_atomically, StoredBundle};
use crate::policy::{Bundle, PolicyErrors};
use crate::runtime::{ReloadOutcome, Shared};

/// How long the control plane may hold a poll.
pub const POLL_WAIT: Duration = Duration::from_secs(20);

/// Where a node follows from.
#[derive(Debug, Clone)]
pub struct FollowerConfig {
    /// Control-plane admin URL (`http://host:port`).
    pub url: String,
    /// Bearer token of a principal (viewer role suffices).
    pub token: Option<String>,
    /// Cache directory.
    pub cache_dir: PathBuf,
}

impl FollowerConfig {
    fn cache_file(&self) -> PathBuf {
        self.cache_dir.join("bundle.json")
    }

    fn client(&self, timeout: Duration) -> reqwest::Result<reqwest::Client> {
        reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(1))
            .timeout(timeout)
            .build()
    }
}

/// Why a poll brought no bundle.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The control plane refused the node's token (401/403): retrying soon
    /// will not help.
    #[error("{0} (check the node's token: --token-file or GATEHOUSE_TOKEN)")]
    Refused(String),
    /// It could not be reached or answered something unusable.
    #[error("{0}")]
    Unreachable(String),
}

/// An error with its causes (`reqwest` hides them in `source()`).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}

/// Ask the control plane for the active bundle; `Ok(None)` when it is still
/// `etag` after `wait`.
pub async fn fetch(
    client: &reqwest::Client,
    cfg: &FollowerConfig,
    etag: Option<&str>,
    wait: Duration,
) -> Result<Option<StoredBundle>, FetchError> {
    let url = format!(
        "{}/v1/fleet/bundle?wait={}",
        cfg.url.trim_end_matches('/'),
        wait.as_secs()
    );
    let mut req = client.get(&url);
    if let Some(t) = &cfg.token {
        req = req.bearer_auth(t);
    }
    if let Some(v) = etag {
        req = req.header("if-none-match", format!("\"{v}\""));
    }
    let resp = req
        .send()
        .await
        .map_err(|e| FetchError::Unreachable(format!("{url}: {}", chain(&e))))?;
    match resp.status().as_u16() {
        304 => Ok(None),
        200 => resp
            .json::<StoredBundle>()
            .await
            .map(Some)
            .map_err(|e| FetchError::Unreachable(format!("{url}: bad bundle: {e}"))),
        s => {
            let text = format!("{url}: HTTP {s}: {}", resp.text().await.unwrap_or_default());
            Err(if s == 401 || s == 403 {
                FetchError::Refused(text)
            } else {
                FetchError::Unreachable(text)
            })
        }
    }
}

fn write_cache(cfg: &FollowerConfig, stored: &StoredBundle) {
    let bytes = match serde_json::to_vec(stored) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "cannot encode the bundle cache");
            return;
        }
    };
    if let Err(e) = write_atomically(&cfg.cache_file(), &bytes, 0o640) {
        tracing::error!(error = %e, path = %cfg.cache_file().display(), "cannot write the bundle cache");
    }
}

fn read_cache(path: &Path) -> Result<StoredBundle, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// The bundle a node starts with: the control plane's active one (cached on
/// the way), or the cached one when the control plane cannot be reached.
/// Blocking.
pub fn initial_bundle(cfg: &FollowerConfig) -> anyhow::Result<(Bundle, String)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let fetched = rt.block_on(async {
        let client = cfg
            .client(Duration::from_secs(5))
            .map_err(|e| FetchError::Unreachable(e.to_string()))?;
        fetch(&client, cfg, None, Duration::ZERO).await
    });
    match fetched {
        Ok(Some(stored)) => {
            let bundle = compile_stored(&stored).map_err(|e| anyhow::anyhow!(e))?;
            write_cache(cfg, &stored);
            Ok((bundle, format!("control-plane:{}", cfg.url)))
        }
        Ok(None) => anyhow::bail!("the control plane answered 304 to an unconditional request"),
        Err(reason) => {
            let cache = cfg.cache_file();
            if matches!(reason, FetchError::Refused(_)) {
                tracing::error!(%reason, cache = %cache.display(), "the control plane refuses this node's token; starting from the cached bundle");
            } else {
                tracing::warn!(%reason, cache = %cache.display(), "control plane unreachable; starting from the cached bundle");
            }
            let stored = read_cache(&cache).map_err(|e| {
                anyhow::anyhow!("the control plane is unreachable ({reason}) and there is no usable cached bundle ({e})")
            })?;
            let bundle = compile_stored(&stored).map_err(|e| anyhow::anyhow!(e))?;
            Ok((bundle, format!("cache:{}", cache.display())))
        }
    }
}

/// Follow the control plane until `stop` resolves.
pub async fn follow(
    shared: Arc<Shared>,
    cfg: FollowerConfig,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let client = match cfg.client(POLL_WAIT + Duration::from_secs(10)) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the control-plane client; not following");
            return;
        }
    };
    let mut etag = shared.active().bundle.version.clone();
    let mut backoff = Duration::from_millis(100);
    let mut was_down = false;
    loop {
        let polled = tokio::select! {
            r = fetch(&client, &cfg, Some(&etag), POLL_WAIT) => r,
            _ = &mut stop => return,
        };
        if polled.is_ok() && was_down {
            tracing::info!(url = %cfg.url, "control plane reachable again");
            was_down = false;
        }
        match polled {
            Ok(None) => {}
            Ok(Some(stored)) => {
                backoff = Duration::from_millis(100);
                etag = stored.version.clone();
                let sh = Arc::clone(&shared);
                let cfg2 = cfg.clone();
                let outcome = crate::runtime::in_background(move || {
                    let bundle = compile_stored(&stored)?;
                    let source = format!("control-plane:{}", cfg2.url);
                    let outcome = sh.activate(bundle, source);
                    write_cache(&cfg2, &stored);
                    Ok::<_, String>(outcome)
                })
                .await
                .unwrap_or_else(|| Err("the compile did not finish".to_string()));
                match outcome {
                    Ok(ReloadOutcome::Activated { from, to }) => {
                        tracing::info!(
                            from = &from[..12],
                            to = &to[..12],
                            "policy version from the control plane activated"
                        )
                    }
                    Ok(ReloadOutcome::Unchanged) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "bundle from the control plane refused; the active version keeps serving");
                        shared.record_rejection(&PolicyErrors(vec![
                            crate::policy::PolicyError::new("control-plane", "", e),
                        ]));
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
            Err(e) => {
                // A refused token will not heal by itself: retry slowly
                // (each refusal is an audit entry on the control plane).
                let refused = matches!(e, FetchError::Refused(_));
                if refused {
                    tracing::error!(error = %e, "the control plane refuses this node; serving the active version");
                } else if !was_down {
                    tracing::warn!(error = %e, "control plane unreachable; serving the active version and retrying");
                }
                was_down = true;
                let pause = if refused {
                    Duration::from_secs(30)
                } else {
                    backoff
                };
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = &mut stop => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}
