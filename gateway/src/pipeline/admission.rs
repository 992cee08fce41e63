//! Identity and limits on the request path: who is calling (API key or
//! JWT), may they call this app (403), and do the consumer's plan and the
//! app's limits admit the request (429). Everything here reads the request's
//! bundle snapshot; no locks.

use crate::policy::resilience::Priority;
use std::borrow::Cow;
use std::time::Duration;

use super::context::RequestCtx;
use super::view::RequestView;
use crate::contract::params::query_values;
use crate::error::GatewayError;
use crate::limits::{key_hash, push_header_item, LimitKey};
use crate::policy::model::AuthMode;
use crate::policy::{App, Auth, Route};
use crate::runtime::Active;

/// Identify the consumer (401/403) and check limits (429) for a request
/// head; the refusal, if any. Records the consumer, timings and the
/// `RateLimit-*` header values in `ctx`. Called through [`super::admit`].
pub fn admit(
    req: &impl RequestView,
    ctx: &mut RequestCtx,
    active: &Active,
    app: &App,
    route: Option<&Route>,
) -> Option<GatewayError> {
    // Clock readings are shared: the end of identification starts limits.
    let mut identified_at = None;
    if let Some(auth) = &app.auth {
        let started = std::time::Instant::now();
        let identified = identify(req, active, auth);
        let done = std::time::Instant::now();
        ctx.timings.auth_us = crate::pipeline::micros_between(started, done);
        identified_at = Some(done);
        match identified {
            Ok(Some(idx)) => {
                ctx.consumer = Some(idx);
                if !active.bundle.consumers.consumers[idx].allowed(&app.name) {
                    return Some(GatewayError::Forbidden);
                }
            }
            Ok(None) => {}
            Err(err) => return Some(err),
        }
    } else {
        // An app without authentication: every caller is anonymous, and
        // every one may fill its whole cap.
        ctx.priority = Priority::High;
    }
    // No consumer means no plan: with no app limits either, nothing to time.
    if ctx.consumer.is_none() && app.limits.is_empty() {
        ctx.clock_mark = identified_at;
        return None;
    }
    let started = identified_at.unwrap_or_else(std::time::Instant::now);
    let refused = limit(req, ctx, active, app, route);
    let done = std::time::Instant::now();
    ctx.timings.limits_us = crate::pipeline::micros_between(started, done);
    ctx.clock_mark = Some(done);
    refused
}

fn challenge(auth: &Auth, error: Option<&str>) -> String {
    let mut parts = Vec::new();
    if let Some(h) = &auth.api_key_header {
        parts.push(format!("ApiKey realm=\"gatehouse\", header=\"{h}\""));
    }
    if auth.jwt.is_some() {
        match error {
            Some(e) => parts.push(format!(
                "Bearer realm=\"gatehouse\", error=\"invalid_token\", error_description=\"{e}\""
            )),
            None => parts.push("Bearer realm=\"gatehouse\"".to_string()),
        }
    }
    if parts.is_empty() {
        parts.push("ApiKey realm=\"gatehouse\"".into());
    }
    parts.join(", ")
}

fn identify(
    req: &impl RequestView,
    active: &Active,
    auth: &Auth,
) -> Result<Option<usize>, GatewayError> {
    let dir = &active.bundle.consumers;
    // A second API key header is refused before identity runs
    // (`head_rules::check_judged_once`).
    let mut query_keys = auth
        .api_key_query
        .as_deref()
        .filter(|q| {
            req.query()
                .is_some_and(|qs| super::upstream::names_param(qs, q))
        })
        .map(|q| query_values(req.query(), q))
        .unwrap_or_default();
    if query_keys.len() > 1 {
        return Err(GatewayError::AmbiguousRequest {
            reason: "it carries more than one API key parameter",
        });
    }
    if let (Some(q), Some(qs)) = (auth.api_key_query.as_deref(), req.query()) {
        if super::upstream::aliases_param(qs, q) {
            return Err(GatewayError::AmbiguousRequest {
                reason: "a query parameter stands for the API key parameter on some servers",
            });
        }
    }
    // A token in the query (RFC 6750 §2.3) is a credential the gateway
    // does not verify: refused, never forwarded as if it had been.
    if auth.jwt.is_some()
        && req
            .query()
            .is_some_and(|qs| super::upstream::names_param(qs, "access_token"))
    {
        return Err(GatewayError::Unauthenticated {
            reason: "Send the token in the Authorization header, not the query".into(),
            challenge: challenge(auth, Some("token in the query")),
        });
    }
    // Borrowed from the head where it can be: no copy of the key per request.
    let key: Option<Cow<'_, str>> = auth
        .api_key_header
        .as_ref()
        .and_then(|h| req.header(h.as_str()))
        // A key that is not text matches no consumer: 401, not anonymous.
        .map(|v| Cow::Borrowed(crate::pipeline::view::ascii_text(v).unwrap_or("")))
        .or_else(|| query_keys.pop());
    // With JWT, `Authorization` is the gateway's to judge: a value it
    // cannot verify is refused, never forwarded as if it had been checked.
    let authorization = auth
        .jwt
        .as_ref()
        .and_then(|jwt| Some((jwt, req.header("authorization")?)));
    if let Some(key) = key {
        if authorization.is_some() {
            return Err(GatewayError::AmbiguousRequest {
                reason: "it carries both an API key and an Authorization header",
            });
        }
        return match dir.by_key(&key) {
            Some(i) => Ok(Some(i)),
            None => Err(GatewayError::Unauthenticated {
                reason: "The API key is not valid".into(),
                challenge: challenge(auth, None),
            }),
        };
    }
    if let Some((jwt, value)) = authorization {
        let Some(token) = bearer_token(value) else {
            return Err(GatewayError::Unauthenticated {
                reason: "The Authorization header is not a Bearer token".into(),
                challenge: challenge(auth, Some("not a bearer token")),
            });
        };
        return match jwt.verify(token) {
            Ok(subject) => match dir.by_subject(&subject) {
                Some(i) => Ok(Some(i)),
                None => Err(GatewayError::Unauthenticated {
                    reason: "The token does not name a known consumer".into(),
                    challenge: challenge(auth, Some("unknown consumer")),
                }),
            },
            Err(e) => Err(GatewayError::Unauthenticated {
                reason: {
                    let mut r = e.to_string();
                    if let Some(first) = r.get_mut(0..1) {
                        first.make_ascii_uppercase();
                    }
                    r
                },
                challenge: challenge(auth, Some(&e.to_string())),
            }),
        };
    }
    if auth.mode == AuthMode::Required {
        return Err(GatewayError::Unauthenticated {
            reason: "This API needs credentials".into(),
            challenge: challenge(auth, None),
        });
    }
    Ok(None)
}

/// The token of an `Authorization: Bearer <token>` value (RFC 6750 §2.1):
/// the scheme in any case (RFC 9110 §11.1), one or more spaces, then a
/// `token68`. `None` for any other scheme or shape.
fn bearer_token(value: &[u8]) -> Option<&str> {
    let (scheme, rest) = value.split_at(value.iter().position(|&b| b == b' ')?);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.trim_ascii_start();
    let body_len = token.iter().rposition(|&b| b != b'=').map_or(0, |i| i + 1);
    let (body, padding) = token.split_at(body_len);
    let token68 = !body.is_empty()
        && body
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(b))
        && padding.iter().all(|&b| b == b'=');
    if token68 {
        std::str::from_utf8(token).ok()
    } else {
        None
    }
}

/// The limit with the fewest requests left, for `RateLimit`.
struct Tightest<'a> {
    id: &'a str,
    remaining: u64,
    reset: u64,
}

/// The `RateLimit-Policy` items of the limits that admitted the request so
/// far, and the tightest of them.
#[derive(Default)]
struct Admitted<'a> {
    policy: String,
    tightest: Option<Tightest<'a>>,
}

impl<'a> Admitted<'a> {
    fn add(&mut self, policy_item: &str, this: Tightest<'a>) {
        if self.policy.is_empty() {
            // Room for a few items (`"app.per-consumer";q=1000000;w=1`
            // is 34 bytes): one allocation, not one and a regrowth.
            self.policy.reserve(160);
        } else {
            self.policy.push_str(", ");
        }
        self.policy.push_str(policy_item);
        // The first of equals stays the tightest.
        if self
            .tightest
            .as_ref()
            .is_none_or(|t| this.remaining < t.remaining)
        {
            self.tightest = Some(this);
        }
    }

    /// The `RateLimit-Policy` and `RateLimit` values, when any limit applied.
    fn headers(self) -> Option<(String, String)> {
        let t = self.tightest?;
        let mut state = String::with_capacity(40);
        push_header_item(&mut state, t.id, ("r", t.remaining), ("t", t.reset));
        Some((self.policy, state))
    }
}

fn limit(
    req: &impl RequestView,
    ctx: &mut RequestCtx,
    active: &Active,
    app: &App,
    route: Option<&Route>,
) -> Option<GatewayError> {
    let consumer = ctx.consumer.map(|i| &active.bundle.consumers.consumers[i]);
    let plan = consumer
        .and_then(|c| c.plan.as_ref())
        .and_then(|p| active.bundle.plans.get(&**p));
    if consumer.is_some() {
        ctx.priority = plan.map_or(Priority::Normal, |p| p.priority);
    }
    if plan.is_none() && app.limits.is_empty() {
        return None;
    }
    let ip_text = ctx.client_ip.as_str();
    let mut admitted = Admitted::default();

    let plan_rules = plan.into_iter().flat_map(|p| p.limits.iter());
    let app_rules = app
        .limits
        .iter()
        .filter(|l| l.routes.is_empty() || route.is_some_and(|r| l.routes.contains(&r.id)))
        .map(|l| &l.rule);
    for rule in plan_rules.chain(app_rules) {
        let value: &[u8] = match &rule.key {
            LimitKey::Consumer => consumer.map_or(ip_text.as_bytes(), |c| c.id.as_bytes()),
            LimitKey::Ip => ip_text.as_bytes(),
            LimitKey::App => app.name.as_bytes(),
            LimitKey::Route => route.map_or(b"-".as_slice(), |r| r.id.as_bytes()),
            LimitKey::Header(h) => match req.header(h.as_str()) {
                Some(v) => v,
                None => continue,
            },
        };
        let Some(metered) = active.limit_stores.get(&rule.id) else {
            continue;
        };
        let d = metered.store.check(key_hash(&rule.id, value));
        if !d.allowed {
            ctx.rejected_by = Some(rule.id.clone());
            return Some(refusal(&rule.id, &metered.policy_item, d.retry_after));
        }
        let emission = rule.rate.period.as_secs_f64() / rule.rate.count as f64;
        let used = rule.burst.saturating_sub(d.remaining);
        let this = Tightest {
            id: &rule.id,
            remaining: u64::from(d.remaining),
            reset: (f64::from(used) * emission).ceil() as u64,
        };
        admitted.add(&metered.policy_item, this);
    }
    if let (Some(plan), Some(c)) = (plan, consumer) {
        for q in &plan.quotas {
            let Some(metered) = active.quota_stores.get(&q.id) else {
                continue;
            };
            let d = metered.store.check(key_hash(&q.id, c.id.as_bytes()));
            if !d.allowed {
                ctx.rejected_by = Some(q.id.clone());
                return Some(refusal(&q.id, &metered.policy_item, d.reset));
            }
            let this = Tightest {
                id: &q.id,
                remaining: d.remaining,
                reset: d.reset.as_secs(),
            };
            admitted.add(&metered.policy_item, this);
        }
    }
    ctx.rate_headers = admitted.headers();
    None
}

/// The 429 for limit `id`, whose `RateLimit-Policy` item was rendered when
/// the bundle was activated.
fn refusal(id: &str, policy_item: &str, wait: Duration) -> GatewayError {
    let retry_after = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
    let mut state = String::new();
    push_header_item(&mut state, id, ("r", 0), ("t", retry_after));
    GatewayError::RateLimited {
        retry_after,
        policy: policy_item.to_owned(),
        state,
    }
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn bearer_tokens_are_read_with_the_scheme_in_any_case() {
        for (value, token) in [
            (&b"Bearer abc.def-ghi"[..], "abc.def-ghi"),
            (b"bearer abc", "abc"),
            (b"BEARER abc", "abc"),
            (b"BeArEr  abc==", "abc=="),
            (b"Bearer a+/b_~", "a+/b_~"),
        ] {
            assert_eq!(bearer_token(value), Some(token), "{value:?}");
        }
        for value in [
            &b"Bearer"[..],
            b"Bearer ",
            b"Bearer\tabc",
            b"Basic abc",
            b"Bearerabc",
            b"Bearer a b",
            b"Bearer a=b",
            b"Bearer ===",
            b"Bearer caf\xc3\xa9",
            b"Bearer a,b",
        ] {
            assert_eq!(bearer_token(value), None, "{value:?}");
        }
    }
}
