//! One test per compile error kind, plus the version (content hash) rules.

use super::*;

fn src(path: &str, text: &str) -> SourceFile {
    SourceFile {
        path: path.into(),
        text: text.into(),
    }
}

fn errors(files: &[SourceFile]) -> Vec<String> {
    match compile(files) {
        Ok(b) => panic!("expected errors, got version {}", b.version),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

fn app(body: &str) -> String {
    format!("version: 1\napps:\n  - name: a\n    owner: o\n    hosts: [a.test]\n    upstream: {{ instances: [\"http://127.0.0.1:1\"] }}\n{body}")
}

fn one_error(body: &str, expected: &str) {
    let errs = errors(&[src("f.yaml", &app(body))]);
    assert!(
        errs.iter().any(|e| e.contains(expected)),
        "`{expected}` not in {errs:#?}"
    );
}

#[test]
fn the_embedded_schema_is_valid() {
    let _ = schema_validator();
}

#[test]
fn a_valid_bundle_compiles() {
    let b = compile(&[src(
        "f.yaml",
        &app("    routes: [ { method: GET, path: /x } ]"),
    )])
    .unwrap();
    assert_eq!(b.apps.len(), 1);
    assert_eq!(b.version.len(), 64);
    assert_eq!(b.apps[0].max_request_body, DEFAULT_MAX_REQUEST_BODY);
}

#[test]
fn syntax_errors_give_line_and_column() {
    let errs = errors(&[
        src("f.yaml", "version: 1\napps: [\n  - x: y\n"),
        src("g.json", "{\"version\": 1,,}"),
    ]);
    assert!(
        errs[0].starts_with("f.yaml: /: invalid YAML at line"),
        "{errs:?}"
    );
    assert!(
        errs[1].starts_with("g.json: /: invalid JSON at line 1 column"),
        "{errs:?}"
    );
}

#[test]
fn schema_errors_carry_json_pointers() {
    let errs = errors(&[src("f.yaml", "version: 2\napps:\n  - name: A\n    owner: o\n    hosts: []\n    upstream: { instances: [] }\n    extra: 1\n")]);
    for expected in [
        "f.yaml: /version:",
        "f.yaml: /apps/0/name:",
        "f.yaml: /apps/0/hosts:",
        "f.yaml: /apps/0/upstream/instances:",
        "f.yaml: /apps/0: Additional properties",
    ] {
        assert!(
            errs.iter().any(|e| e.starts_with(expected)),
            "`{expected}` not in {errs:#?}"
        );
    }
}

#[test]
fn every_semantic_error_kind_is_reported() {
    one_error(
        "    routes: [ { method: GET, path: \"/a/{b\" } ]",
        "/apps/0/routes/0/path: `/a/{b`: segment",
    );
    one_error(
        "    routes: [ { method: GET, path: \"/a\" }, { method: GET, path: \"/a\" } ]",
        "/apps/0/routes/1/path: `GET /a` conflicts with /apps/0/routes/0",
    );
    one_error(
        "    routes: [ { id: x, method: GET, path: /a }, { id: x, method: POST, path: /a } ]",
        "/apps/0/routes/1/id: route id `x` is already used",
    );
    one_error(
        "    path_prefix: api",
        "/apps/0/path_prefix: path prefix `api` must start with `/`",
    );
    one_error(
        "    strip_prefix: true\n    passthrough: true",
        "/apps/0/strip_prefix: strip_prefix needs a path_prefix",
    );
    one_error(
        "",
        "/apps/0/routes: the app declares no routes and is not passthrough",
    );
    one_error(
        "    passthrough: true\n    timeouts: { connect: 2s, read: 5s, total: 1s }",
        "/apps/0/timeouts/connect: connect timeout is longer",
    );
    one_error(
        "    passthrough: true\n    timeouts: { read: 5s, total: 1s, connect: 100ms }",
        "/apps/0/timeouts/read: read timeout is longer",
    );
    for (url, why) in [
        ("ftp://x", "the scheme must be http or https"),
        ("http://x/base", "without a path"),
        ("http://u:p@x", "credentials"),
        ("http://x:0", "bad port"),
        ("http://[::1", "unclosed"),
        ("http://bad_host", "bad host"),
    ] {
        let body = format!("version: 1\napps:\n  - name: a\n    owner: o\n    hosts: [a.test]\n    passthrough: true\n    upstream: {{ instances: [\"{url}\"] }}\n");
        let errs = errors(&[src("f.yaml", &body)]);
        assert!(
            errs.iter()
                .any(|e| e.contains("/apps/0/upstream/instances/0") && e.contains(why)),
            "{url}: {errs:#?}"
        );
    }
    let body = "version: 1\napps:\n  - name: a\n    owner: o\n    hosts: [a.test, A.test, \"x y\", \"*.\"]\n    passthrough: true\n    upstream:\n      instances: [\"http://h:1\", \"http://H:1/\"]\n      balancing: consistent_hash\n      health_check: { path: health, interval: 1s, timeout: 2s }\n";
    let errs = errors(&[src("f.yaml", body)]);
    for expected in [
        "/apps/0/hosts/1: host `a.test` is listed twice",
        "/apps/0/hosts/2: `x y` is not a host name",
        "/apps/0/hosts/3: `*.` is not a host name",
        "/apps/0/upstream/instances/1: instance `http://h:1` is listed twice",
        "/apps/0/upstream/hash_header: consistent_hash balancing needs hash_header",
        "/apps/0/upstream/health_check/path: `health` must start with `/`",
        "/apps/0/upstream/health_check/timeout: timeout must be shorter than interval",
    ] {
        assert!(
            errs.iter().any(|e| e.contains(expected)),
            "`{expected}` not in {errs:#?}"
        );
    }
}

#[test]
fn cross_file_conflicts_name_both_places() {
    let a = src("a.yaml", &app("    passthrough: true"));
    let b = src(
        "b.yaml",
        &app("    passthrough: true").replace("hosts: [a.test]", "hosts: [A.test]"),
    );
    let errs = errors(&[a, b]);
    assert!(
        errs.iter()
            .any(|e| e == "b.yaml: /apps/0/name: app name `a` is already used at a.yaml /apps/0"),
        "{errs:#?}"
    );
    assert!(
        errs.iter().any(|e| e == "b.yaml: /apps/0/hosts/0: host `a.test` with path prefix `/` is already served by app `a` (a.yaml /apps/0)"),
        "{errs:#?}"
    );
}

#[test]
fn an_empty_bundle_is_an_error() {
    let errs = errors(&[src("f.yaml", "version: 1\n")]);
    assert_eq!(
        errs,
        vec!["f.yaml: /: the bundle declares no apps".to_string()]
    );
}

#[test]
fn the_version_ignores_formatting_but_not_content() {
    let a = compile(&[src("f.yaml", &app("    passthrough: true\n    retries: 1"))]).unwrap();
    let reordered = "version: 1\napps:\n  - owner: o\n    retries: 1\n    name: a   # comment\n    passthrough: true\n    upstream: { instances: [\"http://127.0.0.1:1\"] }\n    hosts: [a.test]\n";
    let b = compile(&[src("f.yaml", reordered)]).unwrap();
    assert_eq!(a.version, b.version);
    let c = compile(&[src("f.yaml", &app("    passthrough: true\n    retries: 2"))]).unwrap();
    assert_ne!(a.version, c.version);
    let d = compile(&[src("g.yaml", &app("    passthrough: true\n    retries: 1"))]).unwrap();
    assert_ne!(
        a.version, d.version,
        "the file layout is part of the bundle"
    );
}

#[test]
fn instance_urls_normalise() {
    let a = parse_instance_url("HTTP://Example.ORG".to_lowercase().as_str()).unwrap();
    assert_eq!(&*a.url, "http://example.org:80");
    let b = parse_instance_url("https://[::1]:8443/").unwrap();
    assert_eq!(
        (&*b.url, b.host.as_str(), b.port, b.tls),
        ("https://[::1]:8443", "::1", 8443, true)
    );
}

#[test]
fn route_level_json_schemas_compile_into_body_and_response_checks() {
    use crate::contract::operation::{check_json_body, Expectation};
    use crate::contract::{Mode, ViolationLocation};
    let policy = app("    routes:\n      - { id: create, method: POST, path: /things, request_schema: schemas/thing.json, response_schema: schemas/thing.json, response: enforce }\n");
    let schema = r#"{"$schema":"https://json-schema.org/draft/2020-12/schema","type":"object","required":["name"],"properties":{"name":{"type":"string","minLength":2}}}"#;
    let b = compile(&[src("f.yaml", &policy), src("schemas/thing.json", schema)]).unwrap();
    let route = &b.apps[0].routes[0];
    assert_eq!(
        (route.request_mode, route.response_mode),
        (Mode::Enforce, Mode::Enforce)
    );
    let op = route.operation.as_ref().unwrap();
    let body = op.body.as_ref().unwrap();
    let v = body.json.as_ref().unwrap();
    assert!(
        check_json_body(v, br#"{"name":"ok"}"#, ViolationLocation::Body, 10)
            .unwrap()
            .is_empty()
    );
    let found = check_json_body(v, br#"{"name":"x"}"#, ViolationLocation::Body, 10).unwrap();
    assert_eq!(
        (found[0].pointer.as_str(), found[0].keyword.as_str()),
        ("/name", "minLength")
    );
    assert!(matches!(
        op.responses.expectation(201),
        Expectation::Json(_)
    ));
    assert!(matches!(
        op.responses.expectation(404),
        Expectation::AnyBody
    ));

    let missing = app(
        "    routes:\n      - { method: POST, path: /things, request_schema: schemas/nope.json }\n",
    );
    let errs = errors(&[src("f.yaml", &missing)]);
    assert!(
        errs.iter().any(|e| e
            .contains("/apps/0/routes/0/request_schema: `schemas/nope.json` is not a document")),
        "{errs:#?}"
    );
    let bad = errors(&[
        src("f.yaml", &policy),
        src("schemas/thing.json", r#"{"type":"strnig"}"#),
    ]);
    assert!(
        bad.iter()
            .any(|e| e.starts_with("schemas/thing.json: /: invalid schema")),
        "{bad:#?}"
    );
}

#[test]
fn openapi_apps_take_their_routes_from_the_document() {
    let doc = "openapi: 3.0.3\ninfo: { title: t, version: '1' }\npaths:\n  /items/{id}:\n    get:\n      operationId: getItem\n      parameters: [ { name: id, in: path, required: true, schema: { type: integer } } ]\n      responses: { '200': { description: ok } }\n    delete:\n      responses: { '204': { description: gone } }\n";
    let policy = app("    contract:\n      openapi: contracts/t.yaml\n      operations: { getItem: { request: monitor } }\n");
    let b = compile(&[src("f.yaml", &policy), src("contracts/t.yaml", doc)]).unwrap();
    let ids: Vec<&str> = b.apps[0].routes.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, vec!["getItem", "DELETE /items/{id}"]);
    assert_eq!(
        b.apps[0].routes[0].request_mode,
        crate::contract::Mode::Monitor
    );
    let both = app("    contract: { openapi: contracts/t.yaml, operations: { nope: { request: off } } }\n    routes: [ { method: GET, path: /x } ]\n");
    let errs = errors(&[src("f.yaml", &both), src("contracts/t.yaml", doc)]);
    assert!(
        errs.iter()
            .any(|e| e.contains("/apps/0/routes: routes come from the OpenAPI document")),
        "{errs:#?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.contains("/apps/0/contract/operations/nope: `nope` is not an operation")),
        "{errs:#?}"
    );
    let bad_param = doc.replace("name: id, in: path", "name: key, in: path");
    let errs = errors(&[src("f.yaml", &policy), src("contracts/t.yaml", &bad_param)]);
    assert!(
        errs.iter()
            .any(|e| e.contains("path parameter `key` is not in the path template")),
        "{errs:#?}"
    );
}

/// Applicators that re-read a value at every level (a recursive `oneOf`
/// whose branches both recurse, and the same over objects) are judged in
/// time bounded by the body's size times the schema's: each subschema
/// reads each value once. Exponential re-reading would take hours here.
#[test]
fn recursive_applicators_are_judged_in_bounded_time() {
    use crate::contract::operation::check_json_body;
    use crate::contract::ViolationLocation;
    let policy = app("    routes:\n      - { id: a, method: POST, path: /a, request_schema: schemas/arrays.json }\n      - { id: o, method: POST, path: /o, request_schema: schemas/objects.json }\n      - { id: s, method: POST, path: /s, request_schema: schemas/own.json }\n");
    let arrays = r##"{"oneOf":[{"type":"array","items":{"$ref":"#"}},{"type":"array","items":{"$ref":"#"},"maxItems":0},{"type":"integer"}]}"##;
    let objects = r##"{"oneOf":[{"type":"object","properties":{"a":{"$ref":"#"}}},{"type":"object","properties":{"a":{"$ref":"#"}},"maxProperties":0},{"type":"integer"}]}"##;
    // One applicator branch and the node's own `items` lead back.
    let own = r##"{"type":"array","items":{"$ref":"#"},"allOf":[{"items":{"$ref":"#"}}]}"##;
    let b = compile(&[
        src("f.yaml", &policy),
        src("schemas/arrays.json", arrays),
        src("schemas/objects.json", objects),
        src("schemas/own.json", own),
    ])
    .unwrap();
    let schema = |route: usize| {
        let op = b.apps[0].routes[route].operation.as_ref().unwrap();
        std::sync::Arc::clone(op.body.as_ref().unwrap().json.as_ref().unwrap())
    };
    let (arrays, objects, own) = (schema(0), schema(1), schema(2));
    let depth = 60;
    let nested = |open: &str, inner: &str, close: &str| {
        format!("{}{inner}{}", open.repeat(depth), close.repeat(depth))
    };
    let started = std::time::Instant::now();
    for (schema, body, valid) in [
        (&arrays, nested("[", "1", "]"), true),
        (&arrays, nested("[", "\"x\"", "]"), false),
        (&objects, nested("{\"a\":", "1", "}"), true),
        (&objects, nested("{\"a\":", "\"x\"", "}"), false),
        // An escaped member name: not read by the single pass.
        (&objects, nested("{\"\\u0061\":", "1", "}"), true),
        (&objects, nested("{\"\\u0061\":", "\"x\"", "}"), false),
        (&own, nested("[", "[]", "]"), true),
        (&own, nested("[", "1", "]"), false),
    ] {
        let found = check_json_body(schema, body.as_bytes(), ViolationLocation::Body, 10)
            .expect("well-formed");
        assert_eq!(found.is_empty(), valid, "{body}");
    }
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

/// On a case-insensitive platform routes match in lower case, so a route
/// written otherwise would never match: a compile error, not a surprise.
#[test]
fn case_insensitive_apps_write_their_routes_in_lower_case() {
    one_error(
        "    case_insensitive_paths: true\n    routes:\n      - { method: GET, path: \"/Admin/{id}\" }\n",
        "write the path in lower case",
    );
    let ok = app("    case_insensitive_paths: true\n    routes:\n      - { method: GET, path: \"/admin/{Id}\" }\n");
    assert!(compile(&[src("f.yaml", &ok)]).is_ok());
}

/// A compiled app is reused by a later compile when nothing it is compiled
/// from changed (its settings, its contract, the documents the contract
/// refers to), and compiled again when any of them did — a change to a
/// shared document included.
#[test]
fn an_app_is_compiled_again_only_when_what_it_is_compiled_from_changed() {
    let contract = "openapi: 3.0.3\ninfo: { title: t, version: '1' }\npaths:\n  /items:\n    post:\n      operationId: addItem\n      requestBody:\n        content:\n          application/json:\n            schema: { $ref: 'reuse-shared.yaml#/components/schemas/Item' }\n      responses:\n        '200': { description: ok }\n";
    let shared = |max: u32| {
        format!("openapi: 3.0.3\ninfo: {{ title: s, version: '1' }}\npaths: {{}}\ncomponents:\n  schemas:\n    Item:\n      type: object\n      properties:\n        n: {{ type: integer, maximum: {max} }}\n")
    };
    let app = |name: &str, extra: &str| {
        format!("version: 1\napps:\n  - name: {name}\n    owner: o\n    hosts: [{name}.test]\n    upstream: {{ instances: [\"http://127.0.0.1:1\"] }}\n{extra}")
    };
    let with_contract = app(
        "reuse-a",
        "    contract: { openapi: contracts/reuse-a.yaml }\n",
    );
    let bundle = |b_extra: &str, max: u32| {
        compile(&[
            src("a.yaml", &with_contract),
            src(
                "b.yaml",
                &app("reuse-b", &format!("    passthrough: true\n{b_extra}")),
            ),
            src("contracts/reuse-a.yaml", contract),
            src("contracts/reuse-shared.yaml", &shared(max)),
        ])
        .expect("compiles")
    };
    let v1 = bundle("", 10);
    assert_eq!(v1.apps[0].name, "reuse-a");
    assert!(body_valid(&v1, "{\"n\": 5}"));
    assert!(!body_valid(&v1, "{\"n\": 15}"));
    // Another app's edit: this one is the same compiled app.
    let v2 = bundle("    retries: 0\n", 10);
    assert!(Arc::ptr_eq(&v1.apps[0], &v2.apps[0]), "reused");
    assert!(
        !Arc::ptr_eq(&v1.apps[1], &v2.apps[1]),
        "the edited app is new"
    );
    // The document its contract refers to changed: compiled again.
    let v3 = bundle("    retries: 0\n", 20);
    assert!(!Arc::ptr_eq(&v2.apps[0], &v3.apps[0]));
    assert!(body_valid(&v3, "{\"n\": 15}"));
    assert!(
        Arc::ptr_eq(&v2.apps[1], &v3.apps[1]),
        "the other app is reused"
    );
    // Back to the first files: the same version as the first compile.
    assert_eq!(bundle("", 10).version, v1.version);
}

/// A reference the validator resolves as a URI (from the bundle's root)
/// makes the document it names an input of the app too: editing that
/// document compiles the app again.
#[test]
fn a_document_named_from_the_bundles_root_is_an_input_of_the_app() {
    let contract = "openapi: 3.1.0\ninfo: { title: t, version: '1' }\npaths:\n  /items:\n    post:\n      operationId: addItem\n      requestBody:\n        content:\n          application/json:\n            schema: { $ref: '/schemas/rooted-item.json' }\n      responses:\n        '200': { description: ok }\n";
    let app = "version: 1\napps:\n  - name: rooted\n    owner: o\n    hosts: [rooted.test]\n    upstream: { instances: [\"http://127.0.0.1:1\"] }\n    contract: { openapi: contracts/rooted.yaml }\n";
    let bundle = |max: u32| {
        compile(&[
            src("a.yaml", app),
            src("contracts/rooted.yaml", contract),
            src(
                "schemas/rooted-item.json",
                &format!("{{\"type\": \"object\", \"properties\": {{\"n\": {{\"type\": \"integer\", \"maximum\": {max}}}}}}}"),
            ),
        ])
        .expect("compiles")
    };
    let v1 = bundle(10);
    assert!(body_valid(&v1, "{\"n\": 5}") && !body_valid(&v1, "{\"n\": 15}"));
    let v2 = bundle(20);
    assert!(!Arc::ptr_eq(&v1.apps[0], &v2.apps[0]), "compiled again");
    assert!(body_valid(&v2, "{\"n\": 15}"));
}

/// Does the first route of `b`'s first app take `body` as valid?
/// (`accepts` says `Some(true)` for valid; `None` when not, or when the
/// fast path cannot say.)
fn body_valid(b: &Bundle, body: &str) -> bool {
    let op = b.apps[0].routes[0]
        .operation
        .as_ref()
        .expect("an operation");
    let json = op
        .body
        .as_ref()
        .and_then(|c| c.json.as_ref())
        .expect("a body schema");
    json.accepts(body.as_bytes()) == Some(true)
}
