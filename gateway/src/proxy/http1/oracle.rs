//! The oracle of the lean engine's request path, shared by the mutation
//! property test (`cargo test`) and the coverage-guided fuzzer
//! (`gateway/fuzz`, `scripts/fuzz.sh`): whatever the engine admits and
//! writes upstream must be one request, read by an independent parser
//! (`httparse`) exactly as it was judged.
//!
//! Built for tests and with the `fuzzing` feature only.

use std::sync::{Arc, OnceLock};

use super::request::{parse_request, write_upstream_head, Parsed, SpareHeaders};
use crate::pipeline::RequestCtx;
use crate::pipeline::RequestView;
use crate::policy::{compile, SourceFile};
use crate::runtime::Shared;

/// The conformance corpus's requests (`tests/conformance/requests.json`),
/// as bytes: the seeds of mutation.
pub fn corpus() -> &'static [Vec<u8>] {
    static CORPUS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let text = include_str!("../../../../tests/conformance/requests.json");
        let cases: Vec<serde_json::Value> = serde_json::from_str(text).unwrap_or_default();
        cases
            .iter()
            .filter_map(|c| c["request"].as_str())
            .map(|r| r.chars().map(|c| c as u32 as u8).collect())
            .collect()
    })
}

/// A passthrough app with API keys in a header and the query.
fn shared() -> &'static Arc<Shared> {
    static SHARED: OnceLock<Arc<Shared>> = OnceLock::new();
    SHARED.get_or_init(|| {
        let policy = "version: 1\napps:\n  - name: keys\n    owner: o\n    hosts: [conf.test]\n    passthrough: true\n    upstream: { instances: [\"http://127.0.0.1:1\"] }\n    auth: { mode: optional, api_key: { header: x-api-key, query: api_key } }\n";
        let bundle = compile(&[SourceFile {
            path: "t.yaml".into(),
            text: policy.into(),
        }])
        .unwrap_or_else(|e| panic!("{e}"));
        Arc::new(Shared::new(bundle, "test".into(), None))
    })
}

/// Whatever the lean engine admits and writes upstream for `bytes` is one
/// request, read by an independent parser exactly as judged: the method,
/// the canonical path and the query, one `Host` (the one judged), one
/// length equal to the body it carries and no `Transfer-Encoding`, no API
/// key, and no bytes after it. `Err` says what broke.
pub fn forwarded_as_judged(bytes: &[u8]) -> Result<(), String> {
    let Parsed::Lean(head) = parse_request(bytes, &mut SpareHeaders::default()) else {
        return Ok(());
    };
    // The engine waits for the rest of the body: nothing to write yet.
    if bytes.len() < head.len + head.content_length as usize {
        return Ok(());
    }
    let Ok(path) = crate::routing::canonical_path(head.path()) else {
        return Ok(());
    };
    let req = head.view(bytes, &path);
    if crate::pipeline::head_rules::check_head(&req).is_err() {
        return Ok(());
    }
    let active = shared().active();
    let app = &active.bundle.apps[0];
    let mut ctx = RequestCtx::new(shared().enter());
    ctx.request_id.push_str("rid");
    let mut out = Vec::new();
    write_upstream_head(&mut out, &req, &ctx, app);
    out.extend_from_slice(req.body());

    let fail = |why: String| Err(format!("{why}: {:?}", String::from_utf8_lossy(&out)));
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut up = httparse::Request::new(&mut headers);
    let n = match up.parse(&out) {
        Ok(httparse::Status::Complete(n)) => n,
        other => return fail(format!("unreadable upstream head {other:?}")),
    };
    if up.method != Some(req.method().as_str()) {
        return fail(format!("method {:?}", up.method));
    }
    let target = up.path.unwrap_or_default();
    let (up_path, up_query) = target
        .split_once('?')
        .map_or((target, None), |(p, q)| (p, Some(q)));
    if up_path != path.as_ref() {
        return fail(format!("path {up_path:?}, judged {path:?}"));
    }
    if !crate::routing::canonical_path(up_path).is_ok_and(|p| p == up_path) {
        return fail(format!("path {up_path:?} is not canonical"));
    }
    let named = |name: &str| {
        up.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .collect::<Vec<_>>()
    };
    let hosts = named("host");
    if hosts.len() > 1 {
        return fail(format!("{} Host lines", hosts.len()));
    }
    if let Some(h) = hosts.first() {
        if h.value != req.host().as_bytes() {
            return fail("a Host other than the one judged".into());
        }
    }
    if !named("transfer-encoding").is_empty() {
        return fail("Transfer-Encoding upstream".into());
    }
    if !named("x-api-key").is_empty()
        || up_query
            .is_some_and(|q| !crate::contract::params::query_values(Some(q), "api_key").is_empty())
    {
        return fail("an API key upstream".into());
    }
    let lengths = named("content-length");
    if lengths.len() > 1 {
        return fail("two Content-Length lines".into());
    }
    let declared = lengths.first().map_or(0, |h| {
        std::str::from_utf8(h.value)
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(usize::MAX)
    });
    if declared != out.len() - n || declared != req.body().len() {
        return fail(format!(
            "length {declared}, body carried {}, body judged {}",
            out.len() - n,
            req.body().len()
        ));
    }
    Ok(())
}

/// Bytes an attacker reaches for.
const SPICE: &[u8] = b"\r\n\0 \t:,;%/.\\#?0123456789abcdefABCDEF\x0b\x7f\xff";

/// Apply `(position, byte, kind)` edits: replace, insert, delete, or
/// repeat the line around the position.
pub fn mutate(mut bytes: Vec<u8>, edits: &[(usize, usize, u8)]) -> Vec<u8> {
    for &(at, pick, kind) in edits {
        if bytes.is_empty() {
            break;
        }
        let at = at % bytes.len();
        let b = SPICE[pick % SPICE.len()];
        match kind % 4 {
            0 => bytes[at] = b,
            1 => bytes.insert(at, b),
            2 => {
                bytes.remove(at);
            }
            _ => {
                let start = bytes[..at]
                    .iter()
                    .rposition(|&c| c == b'\n')
                    .map_or(0, |i| i + 1);
                let end = bytes[at..]
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(bytes.len(), |i| at + i + 1);
                let line = bytes[start..end].to_vec();
                bytes.splice(end..end, line);
            }
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        // A few thousand mutants in each test run (a second); set
        // PROPTEST_CASES for a long run.
        #![proptest_config(ProptestConfig {
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(4096),
            ..ProptestConfig::default()
        })]

        /// Byte-level mutants of the conformance corpus keep
        /// [`forwarded_as_judged`].
        #[test]
        fn what_the_lean_engine_forwards_is_what_it_judged(
            seed in any::<usize>(),
            edits in proptest::collection::vec((any::<usize>(), any::<usize>(), any::<u8>()), 0..6),
        ) {
            let all = corpus();
            prop_assume!(!all.is_empty());
            let bytes = mutate(all[seed % all.len()].clone(), &edits);
            forwarded_as_judged(&bytes).map_err(TestCaseError::fail)?;
        }
    }

    #[test]
    fn the_corpus_is_read_and_a_plain_request_passes() {
        let all = corpus();
        assert!(all.len() > 300, "the corpus is read");
        assert!(forwarded_as_judged(b"GET / HTTP/1.1\r\nHost: conf.test\r\n\r\n").is_ok());
    }
}
