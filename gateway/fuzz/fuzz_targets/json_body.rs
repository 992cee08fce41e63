//! Any bytes as a JSON body under the conformance order schema and a
//! recursive one: the request path's verdict (`check_json_body`, whichever
//! fast path it takes) agrees with the reference reading (I-JSON, then
//! `jsonschema` over the value): it never accepts what the reference
//! refuses or refuses what it accepts, and never calls a well-formed body
//! malformed.
#![no_main]

use std::sync::{Arc, OnceLock};

use gatehouse::contract::body_schema::BodySchema;
use gatehouse::contract::openapi::SchemaCompiler;
use gatehouse::contract::operation::check_json_body;
use gatehouse::contract::{BundleDocuments, ViolationLocation};
use gatehouse::policy::SourceFile;
use libfuzzer_sys::fuzz_target;

fn schemas() -> &'static [Arc<BodySchema>] {
    static SCHEMAS: OnceLock<Vec<Arc<BodySchema>>> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        let order = include_str!("../../../tests/conformance/policy/schemas/order.json");
        let recursive = r##"{"oneOf": [{"type": "integer"}, {"type": "array", "items": {"$ref": "#"}},
            {"type": "object", "properties": {"a": {"$ref": "#"}, "b": {"type": "string", "maxLength": 3}},
             "additionalProperties": false}]}"##;
        [order, recursive]
            .iter()
            .map(|text| {
                let src = SourceFile {
                    path: "s.json".into(),
                    text: (*text).into(),
                };
                let mut errors = Vec::new();
                let docs = BundleDocuments::parse(&[&src], &mut errors);
                SchemaCompiler::new(&docs, false)
                    .compile_body("s.json", "")
                    .expect("the schema compiles")
            })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    for schema in schemas() {
        let judged = check_json_body(schema, data, ViolationLocation::Body, 10)
            .ok()
            .map(|v| v.is_empty());
        let reference = gatehouse::contract::ijson::parse(data)
            .ok()
            .map(|v| schema.value.is_valid(&v));
        if reference.is_none() && judged == Some(false) {
            continue; // refused either way; the bounded pass stops early
        }
        assert_eq!(judged, reference, "{:?}", String::from_utf8_lossy(data));
    }
});
