//! Router tests over bundles compiled from YAML (the pure compile step).

use http::Method;
use proptest::prelude::*;

use super::*;
use crate::policy::{compile, Bundle, SourceFile};

fn bundle(yaml: &str) -> Bundle {
    compile(&[SourceFile {
        path: "t.yaml".into(),
        text: yaml.into(),
    }])
    .unwrap_or_else(|e| panic!("{e}"))
}

fn route(b: &Bundle, host: &str, method: Method, path: &str) -> RouteMatch {
    b.router.route(&b.apps, host, &method, path)
}

fn route_id(b: &Bundle, host: &str, method: Method, path: &str) -> Option<String> {
    match route(b, host, method, path) {
        RouteMatch::Route { app, route } => Some(format!(
            "{}:{}",
            b.apps[app].name, b.apps[app].routes[route].id
        )),
        RouteMatch::Passthrough { app } => Some(format!("{}:*", b.apps[app].name)),
        _ => None,
    }
}

const ESTATE: &str = r#"
version: 1
apps:
  - name: orders
    owner: o
    hosts: [orders.corp.example, "*.orders.corp.example"]
    path_prefix: /api
    upstream: { instances: ["http://127.0.0.1:1"] }
    routes:
      - { id: get, method: GET, path: "/orders/{id}" }
      - { id: export, method: GET, path: /orders/export }
      - { id: any-order, method: ANY, path: "/orders/{id}" }
      - { id: files, method: GET, path: "/files/{rest*}" }
      - { id: readme, method: GET, path: /files/readme }
  - name: catchall
    owner: c
    hosts: ["*.corp.example"]
    passthrough: true
    upstream: { instances: ["http://127.0.0.1:2"] }
  - name: admin
    owner: a
    hosts: [orders.corp.example]
    path_prefix: /api/admin
    upstream: { instances: ["http://127.0.0.1:3"] }
    routes:
      - { id: stats, method: GET, path: /stats }
"#;

#[test]
fn exact_hosts_beat_wildcards_and_long_prefixes_beat_short_ones() {
    let b = bundle(ESTATE);
    assert_eq!(
        route_id(&b, "orders.corp.example", Method::GET, "/api/orders/1").as_deref(),
        Some("orders:get")
    );
    assert_eq!(
        route_id(&b, "eu.orders.corp.example", Method::GET, "/api/orders/1").as_deref(),
        Some("orders:get")
    );
    assert_eq!(
        route_id(&b, "hr.corp.example", Method::GET, "/anything").as_deref(),
        Some("catchall:*")
    );
    assert_eq!(
        route_id(&b, "orders.corp.example", Method::GET, "/api/admin/stats").as_deref(),
        Some("admin:stats")
    );
    // `/api/administrator` is not under the `/api/admin` prefix (apps sort by name: orders is 2).
    assert_eq!(
        route(&b, "orders.corp.example", Method::GET, "/api/administrator"),
        RouteMatch::NoRoute { app: 2 }
    );
    // Outside every prefix of an exact host, wildcard hosts get their turn.
    assert_eq!(
        route_id(&b, "orders.corp.example", Method::GET, "/other").as_deref(),
        Some("catchall:*")
    );
    assert_eq!(
        route(&b, "corp.example", Method::GET, "/"),
        RouteMatch::NoApp
    );
    assert_eq!(
        route(&b, "elsewhere.example", Method::GET, "/"),
        RouteMatch::NoApp
    );
}

#[test]
fn the_most_specific_route_wins() {
    let b = bundle(ESTATE);
    let h = "orders.corp.example";
    assert_eq!(
        route_id(&b, h, Method::GET, "/api/orders/export").as_deref(),
        Some("orders:export")
    );
    assert_eq!(
        route_id(&b, h, Method::GET, "/api/orders/7").as_deref(),
        Some("orders:get")
    );
    assert_eq!(
        route_id(&b, h, Method::DELETE, "/api/orders/7").as_deref(),
        Some("orders:any-order")
    );
    assert_eq!(
        route_id(&b, h, Method::HEAD, "/api/orders/7").as_deref(),
        Some("orders:get")
    );
    assert_eq!(
        route_id(&b, h, Method::GET, "/api/files/readme").as_deref(),
        Some("orders:readme")
    );
    assert_eq!(
        route_id(&b, h, Method::GET, "/api/files/a/b/c").as_deref(),
        Some("orders:files")
    );
    assert_eq!(
        route(&b, h, Method::POST, "/api/files/a"),
        RouteMatch::MethodNotAllowed { app: 2 }
    );
}

#[test]
fn hosts_are_normalised() {
    assert_eq!(
        normalize_host("Orders.Corp.Example:8443"),
        "orders.corp.example"
    );
    assert_eq!(
        normalize_host("orders.corp.example."),
        "orders.corp.example"
    );
    assert_eq!(normalize_host("[::1]:80"), "[::1]");
    assert_eq!(normalize_host("plain"), "plain");
}

#[test]
fn paths_are_read_one_way_or_refused() {
    for (path, want) in [
        ("/", "/"),
        ("/a/b", "/a/b"),
        ("/a/b.json", "/a/b.json"),
        ("/a/..b", "/a/..b"),
        ("/%61dmin", "/admin"),
        ("/%41%7e%2D%5f", "/A~-_"),
        ("/admin/", "/admin/"),
        ("//admin", "/admin"),
        ("/a//b///c", "/a/b/c"),
        ("/x/../admin", "/admin"),
        ("/x/%2e%2E/admin", "/admin"),
        ("/x/.%2e/admin", "/admin"),
        ("/a/./b", "/a/b"),
        ("/a/b/..", "/a/"),
        ("/a/.", "/a/"),
        ("/%20x", "/%20x"),
        ("/a%2bb", "/a%2Bb"),
        ("/caf%C3%A9/café", "/caf%C3%A9/café"),
        ("/admin%20", "/admin%20"),
        ("/%25", "/%25"),
        ("/%25zz", "/%25zz"),
    ] {
        assert_eq!(canonical_path(path).as_deref(), Ok(want), "{path}");
    }
    for path in [
        "/..",
        "/a/../..",
        "/%2e%2e",
        "/a%2fb",
        "/a%2Fb",
        "/a%5Cb",
        "/a\\b",
        "/x\\..\\admin",
        "/admin;x",
        "/x/..;/admin",
        "/a%3bb",
        "/a%00",
        "/a%0d%0aX",
        "/a%7f",
        "/%252e%252e/admin",
        "/%25%34%31",
        "/a%25%32e",
        "/%2",
        "/%zz",
        "relative",
        "",
    ] {
        assert_eq!(canonical_path(path), Err(PathRefused), "{path}");
    }
}

#[test]
fn a_case_insensitive_platform_reads_case_and_trailing_dots_away() {
    for (path, key) in [
        ("/ADMIN", "/admin"),
        ("/admin.", "/admin"),
        ("/admin%20", "/admin"),
        ("/Admin. .%20/x", "/admin/x"),
        ("/a/", "/a/"),
        ("/Orders/ABC", "/orders/abc"),
    ] {
        assert_eq!(case_insensitive_key(path).as_deref(), Some(key), "{path}");
    }
    for refused in [
        "/admin/...",
        "/admin/%20",
        "/admin/.%20",
        "/x/..%20/admin",
        "/a/%20%20/b",
    ] {
        assert_eq!(case_insensitive_key(refused), None, "{refused}");
    }
}

#[test]
fn the_shortcut_finds_a_suspect_pair_at_every_place_in_a_word() {
    for len in 2..=26 {
        for at in 0..len - 1 {
            let mut path = vec![b'a'; len];
            for (pair, suspect) in [
                (b"/.", true),
                (b"//", true),
                (b"a%", true),
                (b"a;", true),
                (b"a\\", true),
                (b"./", false),
                (b"a/", false),
            ] {
                path[at..at + 2].copy_from_slice(pair);
                assert_eq!(
                    super::suspect(&path),
                    suspect,
                    "{:?}",
                    String::from_utf8_lossy(&path)
                );
                path[at..at + 2].copy_from_slice(b"aa");
            }
        }
    }
}

/// An independent reading of a path, the way a lenient app server reads
/// it: every escape decoded, then split at `/`, dots resolved.
fn app_reading(path: &str) -> Option<Vec<String>> {
    let mut bytes = Vec::new();
    let raw = path.as_bytes();
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let h = std::str::from_utf8(raw.get(i + 1..i + 3)?).ok()?;
            bytes.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            bytes.push(raw[i]);
            i += 1;
        }
    }
    let text = String::from_utf8(bytes).ok()?;
    let mut out: Vec<String> = Vec::new();
    for seg in text.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            s => out.push(s.to_string()),
        }
    }
    Some(out)
}

proptest! {
    /// What the gateway forwards is read by a lenient app exactly as the
    /// gateway read it, and reading it again changes nothing.
    #[test]
    fn the_canonical_path_is_what_a_lenient_app_reads(
        path in "/[a./%2eEfF5cC3bB4;\\\\]{0,40}"
    ) {
        if let Ok(canonical) = canonical_path(&path) {
            prop_assert_eq!(app_reading(&canonical), app_reading(&path), "{} -> {}", path, canonical);
            let again = canonical_path(&canonical);
            prop_assert_eq!(again.as_deref(), Ok(canonical.as_ref()));
            prop_assert!(!canonical.contains(';') && !canonical.contains('\\'));
            prop_assert!(!canonical.contains("//") && !canonical.contains("/./") && !canonical.contains("/../"));
        }
    }

    /// The word-at-a-time shortcut flags exactly the paths with a `%`, `;`,
    /// backslash, or a `.` or `/` right after a `/`.
    #[test]
    fn the_shortcut_flags_exactly_what_may_need_work(
        path in "[a./%;\\\\]{0,40}"
    ) {
        let naive = path.contains('%') || path.contains(';') || path.contains('\\')
            || path.contains("/.") || path.contains("//");
        prop_assert_eq!(super::suspect(path.as_bytes()), naive);
    }
}

fn template_strategy() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![Just("a"), Just("b"), Just("{p}"), Just("{q}")],
        1..4,
    )
    .prop_flat_map(|segs| {
        let mut names = 0;
        let segs: Vec<String> = segs
            .into_iter()
            .map(|s| {
                if s.starts_with('{') {
                    names += 1;
                    format!("{{p{names}}}")
                } else {
                    s.to_string()
                }
            })
            .collect();
        let base = format!("/{}", segs.join("/"));
        prop_oneof![Just(base.clone()), Just(format!("{base}/{{rest*}}"))]
    })
}

proptest! {
    /// Whatever the declaration order, the route chosen for a path matches
    /// it, and no other matching route is more specific.
    #[test]
    fn precedence_is_by_specificity_not_declaration_order(
        templates in proptest::collection::btree_set(template_strategy(), 1..8),
        path in proptest::collection::vec(prop_oneof![Just("a"), Just("b"), Just("c")], 0..5),
        reverse in any::<bool>(),
    ) {
        let mut templates: Vec<String> = templates.into_iter().collect();
        // Drop templates with the same shape (a lint error, tested elsewhere).
        let mut shapes = std::collections::HashSet::new();
        templates.retain(|t| shapes.insert(PathTemplate::parse(t).map(|t| t.shape()).unwrap_or_default()));
        if reverse {
            templates.reverse();
        }
        let routes: String = templates.iter().enumerate()
            .map(|(i, t)| format!("      - {{ id: r{i}, method: GET, path: \"{t}\" }}\n"))
            .collect();
        let yaml = format!("version: 1\napps:\n  - name: x\n    owner: o\n    hosts: [x.test]\n    upstream: {{ instances: [\"http://127.0.0.1:1\"] }}\n    routes:\n{routes}");
        let b = bundle(&yaml);
        let path = format!("/{}", path.join("/"));
        let matching: Vec<&crate::policy::Route> = b.apps[0].routes.iter().filter(|r| r.template.matches(&path)).collect();
        match route(&b, "x.test", Method::GET, &path) {
            RouteMatch::Route { route, .. } => {
                let chosen = &b.apps[0].routes[route];
                prop_assert!(chosen.template.matches(&path));
                for other in &matching {
                    prop_assert!(chosen.template.specificity() <= other.template.specificity(),
                        "{} chosen over more specific {} for {}", chosen.template, other.template, path);
                }
            }
            RouteMatch::NoRoute { .. } => prop_assert!(matching.is_empty()),
            other => prop_assert!(false, "unexpected {:?}", other),
        }
    }
}
