//! The program's verdicts against `jsonschema`'s.

use super::*;
use proptest::prelude::*;
use serde_json::json;

/// The program and `jsonschema`'s `Value` validator of one schema
/// (`None` when the program does not compile).
fn both(schema: &Value) -> (Option<SinglePass>, Validator) {
    let value = jsonschema::options()
        .should_validate_formats(true)
        .with_format("email", crate::contract::formats::email)
        .build(schema)
        .expect("a valid schema");
    let documents = BTreeMap::from([("s.json".to_owned(), std::sync::Arc::new(schema.clone()))]);
    let leaf = |keywords: &Value| {
        jsonschema::options_for::<Borrowed>()
            .should_validate_formats(true)
            .with_format("email", crate::contract::formats::email)
            .build(keywords)
            .ok()
    };
    (SinglePass::compile(&documents, &leaf, "s.json", ""), value)
}

fn verdict(validator: &Validator, doc: &str) -> Check {
    match serde_json::from_str::<Value>(doc) {
        Ok(v) if validator.is_valid(&v) => Check::Valid,
        Ok(_) => Check::Invalid,
        Err(_) => Check::Unsure,
    }
}

fn order_schema() -> Value {
    json!({
        "$defs": {
            "line": {
                "type": "object", "additionalProperties": false, "required": ["sku", "quantity"],
                "properties": {
                    "sku": {"type": "string", "pattern": "^SKU-[0-9]{5}$"},
                    "quantity": {"type": "integer", "minimum": 1, "maximum": 1000},
                    "unit_price": {"type": "number", "exclusiveMinimum": 0, "multipleOf": 0.01}
                }
            }
        },
        "type": "object", "additionalProperties": false, "required": ["customer_id", "lines"],
        "properties": {
            "customer_id": {"type": "integer", "minimum": 1, "example": 42},
            "currency": {"type": "string", "enum": ["EUR", "USD", "GBP"], "default": "EUR"},
            "requested_delivery": {"type": "string", "format": "date"},
            "contact_email": {"type": "string", "format": "email"},
            "reference": {"type": "string", "format": "uuid"},
            "notes": {"type": ["string", "null"], "maxLength": 5},
            "lines": {"type": "array", "minItems": 1, "maxItems": 3, "items": {"$ref": "#/$defs/line"}},
            "meta": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/line"}]},
            "kind": {"oneOf": [{"type": "integer"}, {"type": "number", "minimum": 2}]},
            "tag": {"not": {"const": "x"}, "minProperties": 1, "maxProperties": 2}
        }
    })
}

#[test]
fn an_order_is_judged_as_jsonschema_judges_it() {
    let (program, validator) = both(&order_schema());
    let program = program.expect("the order schema compiles");
    let line = r#"{"sku":"SKU-00001","quantity":2,"unit_price":10.95}"#;
    let cases = [
        (
            format!(
                r#"{{"customer_id":4711,"currency":"EUR","requested_delivery":"2026-12-24","contact_email":"a@b.example","reference":"6f1c2b1e-9d1a-4c1e-8f7a-2b3c4d5e6f70","notes":"ab\u00e9\n","lines":[{line},{line}]}}"#
            ),
            Check::Valid,
        ),
        (
            format!(r#" {{ "customer_id" : 1 , "lines" : [ {line} ] , "notes" : null }} "#),
            Check::Valid,
        ),
        (
            format!(
                r#"{{"customer_id":1.0,"lines":[{line}],"meta":null,"kind":1,"tag":{{"a":1}}}}"#
            ),
            Check::Valid,
        ),
        (
            format!(r#"{{"customer_id":1,"lines":[{line}],"meta":{line},"kind":2.5,"tag":"y"}}"#),
            Check::Valid,
        ),
        (
            format!(r#"{{"customer_id":1,"lines":[{line}],"kind":3}}"#),
            Check::Invalid,
        ),
        (
            format!(r#"{{"customer_id":1,"lines":[{line}],"tag":"x"}}"#),
            Check::Invalid,
        ),
        (
            format!(r#"{{"customer_id":1,"lines":[{line}],"tag":{{}}}}"#),
            Check::Invalid,
        ),
        (
            format!(r#"{{"customer_id":1,"lines":[{line}],"meta":{{"sku":"SKU-1"}}}}"#),
            Check::Invalid,
        ),
        (
            format!(r#"{{"customer_id":0,"lines":[{line}]}}"#),
            Check::Invalid,
        ),
        (
            format!(r#"{{"customer_id":1.5,"lines":[{line}]}}"#),
            Check::Invalid,
        ),
        (
            format!(r#"{{"customer_id":1,"lines":[{line}],"currency":"CHF"}}"#),
            Check::Invalid,
        ),
        (
            format!(r#"{{"customer_id":1,"lines":[{line}],"notes":"abcdef"}}"#),
            Check::Invalid,
        ),
        (
            format!(r#"{{"customer_id":1,"lines":[{line}],"notes":"\u0061bcd\u00e9"}}"#),
            Check::Valid,
        ),
        (
            format!(r#"{{"customer_id":1,"lines":[{line}],"reference":"nope"}}"#),
            Check::Invalid,
        ),
        (
            format!(r#"{{"customer_id":1,"lines":[{line}],"contact_email":"nope"}}"#),
            Check::Invalid,
        ),
        (
            format!(r#"{{"customer_id":1,"lines":[{line}],"extra":1}}"#),
            Check::Invalid,
        ),
        (
            format!(r#"{{"customer_id":1,"lines":[{line},{line},{line},{line}]}}"#),
            Check::Invalid,
        ),
        (r#"{"customer_id":1,"lines":[]}"#.to_owned(), Check::Invalid),
        (
            r#"{"customer_id":1,"lines":[{"sku":"SKU-00001","quantity":1,"unit_price":0}]}"#
                .to_owned(),
            Check::Invalid,
        ),
        (
            r#"{"customer_id":1,"lines":[{"sku":"SKU-00001","quantity":1,"unit_price":1.001}]}"#
                .to_owned(),
            Check::Invalid,
        ),
        (
            r#"{"customer_id":1,"lines":[{"sku":"SKU-0001","quantity":1}]}"#.to_owned(),
            Check::Invalid,
        ),
        (
            r#"{"lines":[{"sku":"SKU-00001","quantity":1}]}"#.to_owned(),
            Check::Invalid,
        ),
        (r#"[]"#.to_owned(), Check::Invalid),
    ];
    for (doc, expected) in &cases {
        assert_eq!(verdict(&validator, doc), *expected, "jsonschema on {doc}");
        assert_eq!(program.check(doc.as_bytes()), *expected, "{doc}");
    }
}

#[test]
fn what_it_does_not_read_as_serde_json_would_is_unsure() {
    let (program, _) = both(&order_schema());
    let program = program.expect("compiles");
    let line = r#"{"sku":"SKU-00001","quantity":2}"#;
    for doc in [
        format!(r#"{{"customer_id":1,"lines":[{line}],"customer_id":1}}"#),
        format!(r#"{{"customer_id":1,"lines":[{line}]"#),
        format!(r#"{{"customer_id":1,"lines":[{line}]}} x"#),
        format!(r#"{{"customer_id":01,"lines":[{line}]}}"#),
        format!(r#"{{"customer_id":1,"lines":[{line},]}}"#),
        format!(r#"{{"customer_id":1,"lines":[{line}],"notes":"\ud83d\ude00"}}"#),
        format!(r#"{{"customer_id":1,"lines":[{line}],"notes":"a\qb"}}"#),
        format!(r#"{{"customer_id":1,"lines":[{line}],"n\u006ftes":"a"}}"#),
        format!("{{\"customer_id\":1,\"lines\":[{line}],\"notes\":\"a\u{1}\"}}"),
        format!(r#"{{"customer_id":1e999,"lines":[{line}]}}"#),
        format!(r#"{{"customer_id":1,"lines":[{line}],"tag":{{"a":1,"a":2}}}}"#),
        format!(
            r#"{{"customer_id":1,"lines":[{line}],"meta":{}}}"#,
            "[".repeat(200)
        ),
    ] {
        assert_eq!(program.check(doc.as_bytes()), Check::Unsure, "{doc}");
    }
    assert_eq!(program.check(b"\xff"), Check::Unsure);
}

#[test]
fn recursive_schemas_and_unknown_keywords() {
    let tree = json!({
        "type": "object", "required": ["name"],
        "properties": {"name": {"type": "string"}, "children": {"type": "array", "items": {"$ref": "#"}}}
    });
    let (program, _) = both(&tree);
    let program = program.expect("a recursive schema compiles");
    assert_eq!(
        program.check(br#"{"name":"a","children":[{"name":"b","children":[{"name":"c"}]}]}"#),
        Check::Valid
    );
    assert_eq!(
        program.check(br#"{"name":"a","children":[{"name":"b","children":[{}]}]}"#),
        Check::Invalid
    );
    for unsupported in [
        json!({"uniqueItems": true}),
        json!({"patternProperties": {"^a": {}}}),
        json!({"if": {}, "then": {}}),
        json!({"properties": {"a": {"propertyNames": {"maxLength": 2}}}}),
        json!({"enum": [[1]]}),
        json!({"contentMediaType": "application/json"}),
    ] {
        assert!(both(&unsupported).0.is_none(), "{unsupported}");
    }
}

#[test]
fn the_example_contracts_are_judged_in_one_pass() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for dir in ["policies", "loadtest/bench/full"] {
        let bundle = crate::policy::load_and_compile(&root.join(dir)).expect("compiles");
        let mut bodies = 0;
        for app in &bundle.apps {
            for route in &app.routes {
                let body = route.operation.as_ref().and_then(|o| o.body.as_ref());
                if let Some(schema) = body.and_then(|b| b.json.as_ref()) {
                    assert!(schema.is_single_pass(), "{dir}: {} {}", app.name, route.id);
                    bodies += 1;
                }
            }
        }
        assert!(bodies > 0, "{dir} has request body schemas");
    }
}

pub(crate) fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-3i64..12).prop_map(Value::from),
        prop::sample::select(vec![0.5, 2.0, -1.25, 10.95, 1e2]).prop_map(Value::from),
        prop::sample::select(vec![
            "",
            "a",
            "ab",
            "abc",
            "é",
            "SKU-00001",
            "2026-12-24",
            "a@b.example",
            "6f1c2b1e-9d1a-4c1e-8f7a-2b3c4d5e6f70",
            "q\"\\\n",
            "x",
        ])
        .prop_map(Value::from),
    ]
}

pub(crate) fn document() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(4, 40, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec!["a", "b", "c", "d"]),
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
        ]
    })
}

/// `doc` as JSON text with each object's members rotated by a share of
/// `order`, so that the same members come in different orders.
fn write_in_order(doc: &Value, order: u64, out: &mut String) {
    match doc {
        Value::Object(members) if !members.is_empty() => {
            let members: Vec<_> = members.iter().collect();
            let turn = (order % members.len() as u64) as usize;
            out.push('{');
            for (i, (name, value)) in members
                .iter()
                .cycle()
                .skip(turn)
                .take(members.len())
                .enumerate()
            {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(name.to_string()).to_string());
                out.push(':');
                write_in_order(value, order.rotate_right(7) ^ i as u64, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_in_order(item, order.rotate_right(3) ^ i as u64, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// One keyword of a random schema.
fn keyword(inner: BoxedStrategy<Value>) -> impl Strategy<Value = (String, Value)> {
    let names = || prop::sample::select(vec!["a", "b", "c", "d"]);
    let types = prop::sample::select(vec![
        "null", "boolean", "integer", "number", "string", "array", "object",
    ]);
    let small = || (0u64..4).prop_map(Value::from);
    let bound = || {
        prop_oneof![
            (-2i64..6).prop_map(Value::from),
            Just(json!(0.5)),
            Just(json!(2.0))
        ]
    };
    prop_oneof![
        types.clone().prop_map(|t| ("type".to_owned(), json!(t))),
        prop::collection::btree_set(types, 1..3).prop_map(|t| ("type".to_owned(), json!(t))),
        prop::collection::vec(scalar(), 1..4).prop_map(|v| ("enum".to_owned(), Value::Array(v))),
        scalar().prop_map(|v| ("const".to_owned(), v)),
        (
            prop::sample::select(vec![
                "minimum",
                "maximum",
                "exclusiveMinimum",
                "exclusiveMaximum"
            ]),
            bound()
        )
            .prop_map(|(k, v)| (k.to_owned(), v)),
        (
            prop::sample::select(vec![
                "minLength",
                "maxLength",
                "minItems",
                "maxItems",
                "minProperties",
                "maxProperties"
            ]),
            small()
        )
            .prop_map(|(k, v)| (k.to_owned(), v)),
        prop::sample::select(vec![
            ("pattern", json!("^SKU-[0-9]{5}$")),
            ("pattern", json!("b")),
            ("format", json!("date")),
            ("format", json!("email")),
            ("format", json!("uuid")),
            ("multipleOf", json!(0.5)),
        ])
        .prop_map(|(k, v)| (k.to_owned(), v)),
        inner.clone().prop_map(|s| ("items".to_owned(), s)),
        inner
            .clone()
            .prop_map(|s| ("additionalProperties".to_owned(), s)),
        inner.clone().prop_map(|s| ("not".to_owned(), s)),
        prop::collection::btree_map(names(), inner.clone(), 1..4)
            .prop_map(|m| ("properties".to_owned(), json!(m))),
        prop::collection::btree_set(names(), 1..3).prop_map(|r| ("required".to_owned(), json!(r))),
        (
            prop::sample::select(vec!["allOf", "anyOf", "oneOf"]),
            prop::collection::vec(inner, 1..3)
        )
            .prop_map(|(k, v)| (k.to_owned(), Value::Array(v))),
        // Recursion, through a member so that it ends.
        Just(("properties".to_owned(), json!({"a": {"$ref": "#"}}))),
    ]
}

pub(crate) fn schema() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(json!(true)),
        Just(json!(false)),
        Just(json!({"type": "string", "maxLength": 2})),
        Just(json!({"type": "integer", "minimum": 1})),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop::collection::vec(keyword(inner.boxed()), 1..4)
            .prop_map(|kws| Value::Object(kws.into_iter().collect()))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    /// Over random schemas of the keywords it compiles and random
    /// documents, the program's verdict is `jsonschema`'s, and it is
    /// never unsure of a document `serde_json` wrote.
    #[test]
    fn verdicts_agree_with_jsonschema(schema in schema(), doc in document()) {
        agrees(&schema, &doc)?;
    }

    /// One program judging many documents (members in varying orders, so
    /// the learnt member order is sometimes wrong) still agrees with
    /// `jsonschema` on each.
    #[test]
    fn verdicts_agree_over_many_documents(
        schema in schema(),
        docs in prop::collection::vec((document(), any::<u64>()), 2..8),
    ) {
        let (program, validator) = both(&schema);
        let Some(program) = program else {
            return Err(TestCaseError::fail(format!("{schema} does not compile")));
        };
        for (doc, order) in docs {
            let mut text = String::new();
            write_in_order(&doc, order, &mut text);
            let expected = if validator.is_valid(&doc) { Check::Valid } else { Check::Invalid };
            prop_assert_eq!(program.check(text.as_bytes()), expected, "{} on {}", schema, text);
        }
    }

    /// Text shaped like a number, well-formed or not, alone and followed
    /// by more of an array, under bounds and types of each kind: where
    /// `serde_json` reads it, the verdict is `jsonschema`'s (or unsure);
    /// where it does not, unsure.
    #[test]
    fn numbers_are_read_as_serde_json_reads_them(
        text in "-?[0-9]{0,4}(\\.[0-9]{0,4})?([eE][+-]?[0-9]{0,3})?",
        bound in prop::sample::select(vec![
            json!({"minimum": 1}),
            json!({"exclusiveMaximum": 2.5}),
            json!({"type": "integer"}),
            json!({"enum": [0, 10, 1.5, -0.25]}),
            json!({"maximum": 1e3, "exclusiveMinimum": -1}),
        ]),
    ) {
        let in_array = json!({"type": "array", "items": bound});
        for (schema, doc) in [(&bound, text.clone()), (&in_array, format!("[{text},1]"))] {
            let (program, validator) = both(schema);
            let program = program.expect("compiles");
            let expected = verdict(&validator, &doc);
            let got = program.check(doc.as_bytes());
            prop_assert!(got == expected || got == Check::Unsure, "{} on {}: {:?}, not {:?}", schema, doc, got, expected);
            if expected == Check::Unsure {
                prop_assert_eq!(got, Check::Unsure, "{} on {}", schema, doc);
            }
        }
    }

    /// The eight-bytes-at-a-time scan stops where a byte-by-byte one does.
    #[test]
    fn plain_runs_end_at_the_first_special_byte(
        bytes in prop::collection::vec(prop_oneof![Just(b'"'), Just(b'\\'), 0x00_u8..0x20, Just(0x20_u8), Just(0x22_u8 ^ 0x80), 0x21_u8..0x7f, 0x80_u8..=0xff], 0..40)
    ) {
        let naive = bytes.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20).unwrap_or(bytes.len());
        prop_assert_eq!(scan::plain_run(&bytes), naive);
    }

    /// Whether a number is an integer, as `fract` says it.
    #[test]
    fn integers_are_told_as_fract_tells_them(
        f in prop_oneof![any::<f64>(), -1e20_f64..1e20, (-1_000_000_i64..1_000_000).prop_map(|i| i as f64 / 4.0)],
    ) {
        prop_assert_eq!(Num::F(f).is_integer(), f.fract() == 0.0, "{}", f);
    }

    /// A short decimal is the `f64` a correct parser reads.
    #[test]
    fn short_decimals_are_read_exactly(
        whole in prop_oneof![Just(0u64), 0u64..10, 0u64..100_000_000, 0u64..999_999_999_999_999],
        fraction in "[0-9]{1,15}",
    ) {
        let text = format!("{whole}.{fraction}");
        let whole_digits = whole.to_string().len();
        let digits: u64 = fraction.parse().expect("at most 15 digits");
        let read = scan::short_decimal(Some(whole), digits, fraction.len(), whole_digits);
        if whole_digits + fraction.len() <= 15 {
            let expected: f64 = text.parse().expect("a decimal");
            prop_assert_eq!(read.map(f64::to_bits), Some(expected.to_bits()), "{}", text);
        } else {
            prop_assert_eq!(read, None, "{}", text);
        }
    }
}

/// A member whose name JSON must escape is still matched to its property
/// (through `serde_json`'s reading, or as unsure), never by raw bytes.
#[test]
fn names_json_must_escape_are_not_compared_raw() {
    let schema = json!({
        "type": "object",
        "properties": { "say \"hi\"": { "type": "integer" }, "plain": { "type": "integer" } },
        "additionalProperties": false
    });
    let (program, validator) = both(&schema);
    let program = program.expect("compiles");
    for doc in [
        r#"{"say \"hi\"": 1}"#,
        r#"{"say \"hi\"": "x"}"#,
        r#"{"plain": 1, "say": 2}"#,
        r#"{"plain": 1}"#,
        r#"{"plainer": 1}"#,
    ] {
        let got = program.check(doc.as_bytes());
        assert!(
            got == Check::Unsure || got == verdict(&validator, doc),
            "{doc}: {got:?}"
        );
    }
    assert_eq!(program.check(br#"{"plain": 1}"#), Check::Valid);
    assert_eq!(program.check(br#"{"plainer": 1}"#), Check::Invalid);
}

/// Every byte value, at every place in a word and after every other byte
/// value: the word-at-a-time scan stops where a byte-by-byte one does.
#[test]
fn plain_runs_stop_at_each_special_byte_wherever_it_is() {
    let special = |c: u8| c == b'"' || c == b'\\' || c < 0x20;
    for before in 0..=255u8 {
        for byte in 0..=255u8 {
            for at in 0..8 {
                let mut bytes = [b'a'; 16];
                if at > 0 {
                    bytes[at - 1] = before;
                }
                bytes[at] = byte;
                let naive = bytes.iter().position(|&c| special(c)).unwrap_or(16);
                assert_eq!(
                    scan::plain_run(&bytes),
                    naive,
                    "{before:#x} then {byte:#x} at {at}"
                );
            }
        }
    }
}

/// Bounds and numbers beyond 2^53, where `f64` is not exact, are compared
/// as integers (or the verdict is unsure), never as rounded floats.
#[test]
fn integers_beyond_two_to_the_53_are_compared_exactly() {
    let cases = [
        (
            json!({"minimum": 9_007_199_254_740_993_u64}),
            "9007199254740992",
            Check::Invalid,
        ),
        (
            json!({"minimum": 9_007_199_254_740_993_u64}),
            "9007199254740993",
            Check::Valid,
        ),
        (
            json!({"maximum": 9_007_199_254_740_992_u64}),
            "9007199254740993",
            Check::Invalid,
        ),
        (
            json!({"maximum": 1}),
            "18446744073709551615",
            Check::Invalid,
        ),
        (
            json!({"exclusiveMinimum": -9_007_199_254_740_993_i64}),
            "-9007199254740993",
            Check::Invalid,
        ),
        (
            json!({"exclusiveMinimum": -9_007_199_254_740_993_i64}),
            "-9007199254740992",
            Check::Valid,
        ),
    ];
    for (schema, doc, expected) in cases {
        let (program, validator) = both(&schema);
        assert_eq!(
            verdict(&validator, doc),
            expected,
            "jsonschema: {schema} on {doc}"
        );
        let program = program.expect("compiles");
        assert_eq!(program.check(doc.as_bytes()), expected, "{schema} on {doc}");
    }
}

/// A schema whose applicator's branches recurse to the root (`$ref: #`):
/// the shape that made re-reading exponential.
/// Compile `schema` and hold the program's verdict on `doc` to
/// `jsonschema`'s; the program, for more checks.
fn agrees(schema: &Value, doc: &Value) -> Result<SinglePass, TestCaseError> {
    let (program, validator) = both(schema);
    let Some(program) = program else {
        return Err(TestCaseError::fail(format!("{schema} does not compile")));
    };
    let text = serde_json::to_string(doc).expect("json");
    let expected = if validator.is_valid(doc) {
        Check::Valid
    } else {
        Check::Invalid
    };
    prop_assert_eq!(
        program.check(text.as_bytes()),
        expected,
        "{} on {}",
        schema,
        text
    );
    Ok(program)
}

fn recursive_schema() -> impl Strategy<Value = Value> {
    let branch = prop_oneof![
        Just(json!({"type": "array", "items": {"$ref": "#"}})),
        (0u64..3).prop_map(|n| json!({"type": "array", "items": {"$ref": "#"}, "maxItems": n})),
        Just(json!({"type": "object", "properties": {"a": {"$ref": "#"}}})),
        Just(json!({"type": "object", "properties": {"a": {"$ref": "#"}}, "maxProperties": 0})),
        Just(json!({"type": "integer"})),
        Just(json!({"type": "string", "maxLength": 2})),
        Just(json!({"not": {"type": "null"}})),
    ];
    (
        prop::sample::select(vec!["anyOf", "oneOf", "allOf"]),
        prop::collection::vec(branch, 1..4),
        any::<bool>(),
    )
        .prop_map(|(applicator, branches, own)| {
            let mut schema = json!({ applicator: branches });
            if own {
                // The node's own keyword leads back too.
                schema["items"] = json!({"$ref": "#"});
            }
            schema
        })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000),
        ..ProptestConfig::default()
    })]
    /// Over recursive applicators, the program (which judges each value
    /// against each node once) agrees with `jsonschema` (which re-reads),
    /// and says when `jsonschema` would re-read exponentially.
    #[test]
    fn recursive_applicators_agree_with_jsonschema(schema in recursive_schema(), doc in document()) {
        let program = agrees(&schema, &doc)?;
        let branches = ["anyOf", "oneOf", "allOf"].iter().find_map(|a| schema.get(*a)).and_then(Value::as_array).cloned().unwrap_or_default();
        let recursing = branches.iter().filter(|b| b.to_string().contains("$ref")).count()
            + usize::from(schema.get("items").is_some());
        prop_assert_eq!(program.rereads(), recursing >= 2, "{}", schema);
    }
}
