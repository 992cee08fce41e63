//! The CLI's client of the control-plane API (`gatehouse policy propose|
//! review|activate|rollback|status|log|show|withdraw`). Exit status: 0 done,
//! 1 refused (the problem's detail is printed), 2 unreachable or broken.

use std::process::ExitCode;
use std::time::Duration;

use serde_json::{json, Value};

/// Where the control plane is and who we are.
#[derive(clap::Args, Debug, Clone)]
pub struct Remote {
    /// Control-plane admin URL.
    #[arg(long, env = "GATEHOUSE_URL", default_value = "http://127.0.0.1:9901")]
    pub server: String,
    /// Bearer token (printed once by `gatehouse admin add-principal`).
    #[arg(long, env = "GATEHOUSE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print the API's JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// What a call ended with.
enum Outcome {
    Ok(Value),
    Refused(u16, Value),
}

fn call(
    remote: &Remote,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Result<Outcome, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| e.to_string())?;
        let url = format!("{}{path}", remote.server.trim_end_matches('/'));
        let mut req = client.request(method, &url);
        if let Some(t) = &remote.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| format!("{url}: {e}"))?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| format!("{url}: {e}"))?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if (200..300).contains(&status) {
            Ok(Outcome::Ok(value))
        } else {
            Ok(Outcome::Refused(status, value))
        }
    })
}

fn finish(
    remote: &Remote,
    result: Result<Outcome, String>,
    text: impl Fn(&Value) -> String,
) -> ExitCode {
    match result {
        Ok(Outcome::Ok(v)) => {
            if remote.json {
                sayln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                sayln!("{}", text(&v));
            }
            ExitCode::SUCCESS
        }
        Ok(Outcome::Refused(status, v)) => {
            if remote.json {
                sayln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            }
            let detail = v["detail"]
                .as_str()
                .map_or_else(|| v.to_string(), str::to_string);
            eprintln!("refused ({status}): {detail}");
            if let Some(errors) = v["errors"].as_array() {
                for e in errors {
                    eprintln!(
                        "  {}: {}: {}",
                        e["file"].as_str().unwrap_or(""),
                        e["pointer"].as_str().unwrap_or(""),
                        e["message"].as_str().unwrap_or("")
                    );
                }
            }
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("gatehouse: cannot reach the control plane: {e}");
            ExitCode::from(2)
        }
    }
}

fn short(v: &Value) -> &str {
    let s = v.as_str().unwrap_or("");
    &s[..12.min(s.len())]
}

/// A proposal in words.
fn describe(p: &Value) -> String {
    let mut out = format!(
        "proposal {} [{}] \"{}\" by {}\n  {} → {}\n",
        p["id"],
        p["state"].as_str().unwrap_or(""),
        p["title"].as_str().unwrap_or(""),
        p["author"].as_str().unwrap_or(""),
        short(&p["base"]),
        short(&p["version"]),
    );
    if let Some(names) = p.get("not_principals").and_then(Value::as_array) {
        let names: Vec<&str> = names.iter().filter_map(Value::as_str).collect();
        out.push_str(&format!(
            "  note: {} named in the review groups but not principals: no approval of theirs can arrive\n",
            names.join(", ")
        ));
    }
    if let Some(prior) = p.get("rejected_before").filter(|v| !v.is_null()) {
        out.push_str(&format!(
            "  rejected before, as proposal {}: {}\n",
            prior["proposal"],
            prior["by"]
                .as_array()
                .map(|a| a
                    .iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join("; "))
                .unwrap_or_default()
        ));
    }
    let changes = p["changes"].as_array().cloned().unwrap_or_default();
    out.push_str(&format!("  {} change(s):\n", changes.len()));
    for c in &changes {
        out.push_str(&format!(
            "    {:<22} {:<10} {}\n",
            c["class"].as_str().unwrap_or(""),
            c["app"].as_str().unwrap_or(""),
            c["text"].as_str().unwrap_or("")
        ));
    }
    for g in p["tally"]["groups"].as_array().cloned().unwrap_or_default() {
        out.push_str(&format!(
            "  approvals from {}: {} of {} ({})\n",
            g["group"].as_str().unwrap_or(""),
            g["counted"].as_array().map_or(0, Vec::len),
            g["needed"],
            g["counted"]
                .as_array()
                .map(|a| a
                    .iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default()
        ));
        for n in g["not_counted"].as_array().cloned().unwrap_or_default() {
            out.push_str(&format!("    not counted: {}\n", n.as_str().unwrap_or("")));
        }
    }
    for m in p["tally"]["missing"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        out.push_str(&format!("  missing: {}\n", m.as_str().unwrap_or("")));
    }
    for r in p["reviews"].as_array().cloned().unwrap_or_default() {
        out.push_str(&format!(
            "  review: {} {} {}\n",
            r["reviewer"].as_str().unwrap_or(""),
            r["verdict"].as_str().unwrap_or(""),
            r["comment"].as_str().unwrap_or("")
        ));
    }
    out.trim_end().to_string()
}

/// `policy propose DIR --title T`.
pub fn propose(remote: &Remote, dir: &std::path::Path, title: &str) -> ExitCode {
    let files = match gatehouse::policy::load_dir(dir) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let body = json!({ "title": title, "files": files });
    finish(
        remote,
        call(remote, reqwest::Method::POST, "/v1/proposals", Some(body)),
        describe,
    )
}

/// `policy review ID --approve|--reject`.
pub fn review(remote: &Remote, id: u64, approve: bool, comment: &str) -> ExitCode {
    let body = json!({ "verdict": if approve { "approve" } else { "reject" }, "comment": comment });
    finish(
        remote,
        call(
            remote,
            reqwest::Method::POST,
            &format!("/v1/proposals/{id}/reviews"),
            Some(body),
        ),
        describe,
    )
}

fn activation(v: &Value) -> String {
    let a = &v["activated"];
    format!(
        "activated {} ({}) by {} at {}",
        a["version"].as_str().unwrap_or(""),
        a["via"].as_str().unwrap_or(""),
        a["by"].as_str().unwrap_or(""),
        a["at"].as_str().unwrap_or("")
    )
}

/// `policy activate ID`.
pub fn activate(remote: &Remote, id: u64) -> ExitCode {
    finish(
        remote,
        call(
            remote,
            reqwest::Method::POST,
            &format!("/v1/proposals/{id}/activate"),
            None,
        ),
        activation,
    )
}

/// `policy withdraw ID`.
pub fn withdraw(remote: &Remote, id: u64) -> ExitCode {
    finish(
        remote,
        call(
            remote,
            reqwest::Method::POST,
            &format!("/v1/proposals/{id}/withdraw"),
            None,
        ),
        describe,
    )
}

/// `policy rollback [--to VERSION] --reason R`.
pub fn rollback(remote: &Remote, to: Option<&str>, reason: &str, break_glass: bool) -> ExitCode {
    finish(
        remote,
        call(
            remote,
            reqwest::Method::POST,
            "/v1/rollback",
            Some(json!({ "to": to, "reason": reason, "break_glass": break_glass })),
        ),
        |v| {
            match v.get("incident") {
            Some(id) => format!(
                "{}\nbreak-glass: incident {id} stays open until a reviewer signs it off (`gatehouse policy review {id} --approve`)",
                activation(v)
            ),
            None => format!(
                "{}\nthe rollback is proposal {}: once approved, `gatehouse policy activate {}`",
                describe(v),
                v["id"],
                v["id"]
            ),
        }
        },
    )
}

/// Percent-encode a query value (everything but RFC 3986's unreserved).
fn query_escape(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `policy show ID`.
pub fn show(remote: &Remote, id: u64) -> ExitCode {
    finish(
        remote,
        call(
            remote,
            reqwest::Method::GET,
            &format!("/v1/proposals/{id}"),
            None,
        ),
        describe,
    )
}

/// `policy status`.
pub fn status(remote: &Remote) -> ExitCode {
    finish(
        remote,
        call(remote, reqwest::Method::GET, "/v1/governance/status", None),
        |v| {
            let mut out = format!(
                "active: {} (since {}, by {}, {})\n",
                v["active"]["version"].as_str().unwrap_or("none"),
                v["active"]["at"].as_str().unwrap_or(""),
                v["active"]["by"].as_str().unwrap_or(""),
                v["active"]["via"].as_str().unwrap_or("")
            );
            out.push_str("history (newest first):\n");
            for a in v["history"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .rev()
            {
                out.push_str(&format!(
                    "  {}  {}  {:<10} {}\n",
                    short(&a["version"]),
                    a["at"].as_str().unwrap_or(""),
                    a["by"].as_str().unwrap_or(""),
                    a["via"].as_str().unwrap_or("")
                ));
            }
            let open = v["open_proposals"].as_array().cloned().unwrap_or_default();
            out.push_str(&format!("open proposals: {}\n", open.len()));
            for p in open {
                out.push_str(&format!(
                    "  {} [{}] {} by {}\n",
                    p["id"],
                    p["state"].as_str().unwrap_or(""),
                    p["title"].as_str().unwrap_or(""),
                    p["author"].as_str().unwrap_or("")
                ));
            }
            out.trim_end().to_string()
        },
    )
}

/// `policy log [--after N]`: the audit trail.
pub fn log(remote: &Remote, after: u64, filters: &[(&str, Option<String>)]) -> ExitCode {
    let mut path = format!("/v1/audit?after={after}");
    for (name, value) in filters {
        if let Some(v) = value {
            path.push_str(&format!("&{name}={}", query_escape(v)));
        }
    }
    finish(
        remote,
        call(remote, reqwest::Method::GET, &path, None),
        |v| {
            v["entries"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|e| {
                    format!(
                        "{:>5} {} {:<10} {:<18} {:<14} {:<8} {}",
                        e["seq"],
                        e["time"].as_str().unwrap_or(""),
                        e["principal"].as_str().unwrap_or(""),
                        e["action"].as_str().unwrap_or(""),
                        e["subject"]
                            .as_str()
                            .map(|s| &s[..s.len().min(14)])
                            .unwrap_or(""),
                        e["outcome"].as_str().unwrap_or(""),
                        if e["detail"].is_null() {
                            String::new()
                        } else {
                            e["detail"].to_string()
                        }
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        },
    )
}

/// `admin principals`.
pub fn principals(remote: &Remote) -> ExitCode {
    finish(
        remote,
        call(remote, reqwest::Method::GET, "/v1/principals", None),
        |v| {
            v["principals"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|p| {
                    format!(
                        "{:<16} {:<32} created {}{}",
                        p["name"].as_str().unwrap_or(""),
                        gatehouse::governance::policy_tree::spell(Some(&p["roles"])),
                        p["created"].as_str().unwrap_or(""),
                        match (p["expires"].as_str(), p["expired"].as_bool()) {
                            (Some(e), Some(true)) => format!(", expired {e}"),
                            (Some(e), _) => format!(", expires {e}"),
                            _ => String::new(),
                        }
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        },
    )
}

/// `admin create-principal`: prints the token once.
pub fn create_principal(
    remote: &Remote,
    name: &str,
    roles: &[gatehouse::governance::principals::Role],
    expires_in: Option<&str>,
    rotate: bool,
) -> ExitCode {
    finish(
        remote,
        call(
            remote,
            reqwest::Method::POST,
            "/v1/principals",
            Some(
                json!({ "name": name, "roles": roles, "expires_in": expires_in, "rotate": rotate }),
            ),
        ),
        |v| v["token"].as_str().unwrap_or("").to_string(),
    )
}

/// `admin set-roles`.
pub fn set_roles(
    remote: &Remote,
    name: &str,
    roles: &[gatehouse::governance::principals::Role],
) -> ExitCode {
    finish(
        remote,
        call(
            remote,
            reqwest::Method::POST,
            &format!("/v1/principals/{}/roles", query_escape(name)),
            Some(json!({ "roles": roles })),
        ),
        |v| {
            format!(
                "{}: {}",
                v["name"].as_str().unwrap_or(""),
                gatehouse::governance::policy_tree::spell(Some(&v["roles"]))
            )
        },
    )
}

/// `admin revoke`.
pub fn revoke(remote: &Remote, name: &str) -> ExitCode {
    finish(
        remote,
        call(
            remote,
            reqwest::Method::POST,
            &format!("/v1/principals/{}/revoke", query_escape(name)),
            None,
        ),
        |v| format!("revoked {}", v["revoked"].as_str().unwrap_or("")),
    )
}
