//! `gatehouse policy lint` reports every error of a broken bundle.

use std::process::Command;

use gatehouse_e2e::*;

#[test]
fn lint_prints_every_error_with_file_and_pointer() {
    let dir = PolicyDir::new();
    dir.write("broken-yaml.yaml", "version: 1\napps: [ {name: x\n");
    dir.write(
        "schema.yaml",
        "version: 1\napps:\n  - name: Bad_Name\n    owner: a\n    hosts: [a.test]\n    colour: blue\n    upstream: { instances: [\"http://127.0.0.1:1\"] }\n    timeouts: { connect: 5 }\n",
    );
    dir.write(
        "semantic.yaml",
        r#"version: 1
apps:
  - name: one
    owner: a
    hosts: [shared.test]
    upstream: { instances: ["http://127.0.0.1:1", "http://127.0.0.1:1/"] }
    routes:
      - { method: GET, path: "/orders/{id}" }
      - { method: GET, path: "/orders/{orderId}" }
      - { method: GET, path: "/files/{rest*}/x" }
  - name: two
    owner: b
    hosts: [shared.test, "bad host"]
    upstream:
      instances: ["http://user@10.0.0.1:80", "https://ok.test:99999"]
      balancing: consistent_hash
    timeouts: { connect: 5s, total: 1s }
  - name: one
    owner: c
    hosts: [other.test]
    upstream: { instances: ["http://127.0.0.1:2"], hash_header: x-user }
"#,
    );
    let out = Command::new(bin("gatehouse"))
        .args(["policy", "lint"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    let expected = [
        "broken-yaml.yaml: /: invalid YAML at line",
        "schema.yaml: /apps/0/name:",
        "schema.yaml: /apps/0:",
        "colour",
        "schema.yaml: /apps/0/timeouts/connect:",
        "semantic.yaml: /apps/0/upstream/instances/1: instance `http://127.0.0.1:1` is listed twice",
        "semantic.yaml: /apps/0/routes/1/path: `GET /orders/{orderId}` conflicts with /apps/0/routes/0",
        "semantic.yaml: /apps/0/routes/2/path:",
        "must be the last segment",
        "semantic.yaml: /apps/1/hosts/0: host `shared.test` with path prefix `/` is already served by app `one`",
        "semantic.yaml: /apps/1/hosts/1: `bad host` is not a host name",
        "semantic.yaml: /apps/1/upstream/instances/0:",
        "credentials do not belong",
        "semantic.yaml: /apps/1/upstream/instances/1:",
        "bad port",
        "semantic.yaml: /apps/1/upstream/hash_header: consistent_hash balancing needs hash_header",
        "semantic.yaml: /apps/1/timeouts/connect: connect timeout is longer than the total timeout",
        "semantic.yaml: /apps/2/name: app name `one` is already used",
        "semantic.yaml: /apps/2/upstream/hash_header: hash_header is only used by consistent_hash",
    ];
    for e in expected {
        assert!(text.contains(e), "missing `{e}` in:\n{text}");
    }
    let json = Command::new(bin("gatehouse"))
        .args(["policy", "lint", "--format", "json"])
        .arg(dir.path())
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert!(v["errors"].as_array().unwrap().len() >= 14);
}

#[test]
fn lint_accepts_the_example_policies() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let out = Command::new(bin("gatehouse"))
        .args(["policy", "lint"])
        .arg(&root)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("ok: "), "{text}");
    let apps: usize = text
        .split(", ")
        .find_map(|p| p.strip_suffix(" apps"))
        .unwrap()
        .parse()
        .unwrap();
    let routes: usize = text
        .split(", ")
        .find_map(|p| p.strip_suffix(" routes"))
        .unwrap()
        .parse()
        .unwrap();
    assert!(apps >= 4 && routes >= 25, "{text}");
}

#[test]
fn policy_diff_classifies_changes_and_fails_on_breaking_ones() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let copy = |edit: &dyn Fn(&str, String) -> String| {
        let dir = PolicyDir::new();
        for sub in ["apps", "contracts", "keys", ""] {
            for entry in std::fs::read_dir(root.join(sub)).unwrap().flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                if entry.path().is_dir() || name.starts_with("local-") {
                    continue;
                }
                let rel = if sub.is_empty() {
                    name
                } else {
                    format!("{sub}/{name}")
                };
                dir.write(
                    &rel,
                    &edit(&rel, std::fs::read_to_string(entry.path()).unwrap()),
                );
            }
        }
        dir
    };
    let old = copy(&|_, t| t);
    let additive = copy(&|rel, t| {
        if rel == "contracts/orders.openapi.yaml" {
            t.replace("        notes: { type: string, maxLength: 500, nullable: true }\n        lines:", "        notes: { type: string, maxLength: 500, nullable: true }\n        channel: { type: string }\n        lines:")
        } else {
            t
        }
    });
    let breaking = copy(&|rel, t| {
        if rel == "contracts/orders.openapi.yaml" {
            t.replace(
                "quantity: { type: integer, minimum: 1, maximum: 1000 }",
                "quantity: { type: integer, minimum: 1, maximum: 100 }",
            )
        } else if rel == "apps/customers.yaml" {
            t.replace("mode: required", "mode: optional")
        } else {
            t
        }
    });
    let run = |a: &PolicyDir, b: &PolicyDir| {
        Command::new(bin("gatehouse"))
            .args(["policy", "diff", "--format", "json"])
            .arg(a.path())
            .arg(b.path())
            .output()
            .unwrap()
    };
    let same = run(&old, &old);
    assert_eq!(same.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&same.stdout).unwrap();
    assert_eq!(v["changes"].as_array().unwrap().len(), 0);

    let add = run(&old, &additive);
    assert_eq!(
        add.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&add.stdout)
    );
    let v: serde_json::Value = serde_json::from_slice(&add.stdout).unwrap();
    assert_eq!(v["changes"][0]["class"], "contract.additive");
    assert_eq!(
        v["changes"][0]["contract"]["id"],
        "new-optional-request-property"
    );

    let brk = run(&old, &breaking);
    assert_eq!(brk.status.code(), Some(1), "breaking changes fail CI");
    let v: serde_json::Value = serde_json::from_slice(&brk.stdout).unwrap();
    let classes: Vec<&str> = v["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["class"].as_str().unwrap())
        .collect();
    assert!(
        classes.contains(&"contract.breaking") && classes.contains(&"auth.removed"),
        "{classes:?}"
    );
    assert_eq!(v["breaking"], 1);
    let text = Command::new(bin("gatehouse"))
        .args(["policy", "diff"])
        .arg(old.path())
        .arg(breaking.path())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&text.stdout);
    assert!(
        out.contains("! contract.breaking") && out.contains("`maximum` tightened"),
        "{out}"
    );

    let broken = PolicyDir::new();
    broken.write("a.yaml", "version: 1\napps: [ {} ]\n");
    assert_eq!(run(&old, &broken).status.code(), Some(2));
}

/// A reader that has gone (`gatehouse … | head -1`) ends the CLI quietly:
/// no panic on the broken pipe.
#[test]
fn a_closed_stdout_ends_the_cli_quietly() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let mut child = Command::new(bin("gatehouse"))
        .args(["policy", "lint"])
        .arg(&root)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("gatehouse");
    // Close the reading end before the CLI writes a byte.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}
