//! OpenAPI 3.0 Schema Objects → JSON Schema 2020-12.
//!
//! 3.0 schemas are a dialect of JSON Schema draft 4/5: `nullable: true`
//! instead of a `null` type, boolean `exclusiveMinimum`/`exclusiveMaximum`
//! modifying `minimum`/`maximum`. The conversion walks every object of the
//! document: these keywords (with those value types) only occur in Schema
//! Objects, and a property *named* `nullable` is a schema, not `true`, so it
//! is left alone. `example`, `xml`, `externalDocs` and `discriminator` are
//! annotations in 2020-12 and stay as they are. 3.1 documents are 2020-12
//! already and are not touched.

use serde_json::{json, Map, Value};

/// Convert a 3.0 document (or a file it references) in place.
pub fn convert_30(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for child in map.values_mut() {
                convert_30(child);
            }
            convert_schema_object(map);
        }
        Value::Array(items) => items.iter_mut().for_each(convert_30),
        _ => {}
    }
}

fn convert_schema_object(map: &mut Map<String, Value>) {
    for (bound, exclusive) in [
        ("minimum", "exclusiveMinimum"),
        ("maximum", "exclusiveMaximum"),
    ] {
        if let Some(Value::Bool(flag)) = map.get(exclusive).cloned() {
            map.remove(exclusive);
            if flag {
                if let Some(b) = map.remove(bound) {
                    map.insert(exclusive.into(), b);
                }
            }
        }
    }
    if map.get("nullable") == Some(&Value::Bool(true)) {
        map.remove("nullable");
        if let Some(Value::Array(values)) = map.get_mut("enum") {
            if !values.contains(&Value::Null) {
                values.push(Value::Null);
            }
        }
        match map.get_mut("type") {
            Some(Value::String(t)) => {
                let t = std::mem::take(t);
                map.insert("type".into(), json!([t, "null"]));
            }
            Some(Value::Array(ts)) => {
                if !ts.contains(&json!("null")) {
                    ts.push(json!("null"));
                }
            }
            _ => {
                // `$ref`/`allOf` with `nullable`: the value may also be null.
                let rest = std::mem::take(map);
                map.insert(
                    "anyOf".into(),
                    json!([Value::Object(rest), { "type": "null" }]),
                );
            }
        }
    } else if map.get("nullable") == Some(&Value::Bool(false)) {
        map.remove("nullable");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nullable_becomes_a_null_type() {
        let mut v = json!({ "type": "string", "nullable": true, "enum": ["a"] });
        convert_30(&mut v);
        assert_eq!(
            v,
            json!({ "type": ["string", "null"], "enum": ["a", null] })
        );
        let mut v = json!({ "$ref": "#/x", "nullable": true });
        convert_30(&mut v);
        assert_eq!(
            v,
            json!({ "anyOf": [{ "$ref": "#/x" }, { "type": "null" }] })
        );
    }

    #[test]
    fn boolean_exclusive_bounds_become_numbers() {
        let mut v = json!({ "minimum": 0, "exclusiveMinimum": true, "maximum": 9, "exclusiveMaximum": false });
        convert_30(&mut v);
        assert_eq!(v, json!({ "exclusiveMinimum": 0, "maximum": 9 }));
    }

    #[test]
    fn nested_schemas_and_property_names_are_handled() {
        let mut v =
            json!({ "properties": { "nullable": { "type": "integer", "nullable": true } } });
        convert_30(&mut v);
        assert_eq!(
            v,
            json!({ "properties": { "nullable": { "type": ["integer", "null"] } } })
        );
    }
}
