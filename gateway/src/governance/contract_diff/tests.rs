//! The classifier's corpus: OpenAPI change pairs with their expected classes.

use super::*;
use crate::policy::SourceFile;

const BASE: &str = r#"
openapi: 3.0.3
info: { title: t, version: "1" }
paths:
  /orders:
    get:
      operationId: listOrders
      parameters:
        - { name: status, in: query, schema: { type: string, enum: [draft, open, closed] } }
        - { name: page, in: query, schema: { type: integer, minimum: 1, default: 1 } }
        - { name: x-tenant, in: header, required: true, schema: { type: string } }
      responses:
        '200':
          description: ok
          content:
            application/json:
              schema: { $ref: '#/components/schemas/OrderPage' }
        '404': { description: none }
    post:
      operationId: createOrder
      requestBody:
        required: true
        content:
          application/json:
            schema: { $ref: '#/components/schemas/NewOrder' }
      responses:
        '201':
          description: created
          content:
            application/json:
              schema: { $ref: '#/components/schemas/Order' }
  /orders/{id}:
    get:
      operationId: getOrder
      parameters: [ { name: id, in: path, required: true, schema: { type: integer } } ]
      responses:
        '200':
          description: ok
          content:
            application/json:
              schema: { $ref: '#/components/schemas/Order' }
    delete:
      operationId: deleteOrder
      deprecated: true
      parameters: [ { name: id, in: path, required: true, schema: { type: integer } } ]
      responses: { '204': { description: gone } }
components:
  schemas:
    NewOrder:
      type: object
      required: [customer_id]
      properties:
        customer_id: { type: integer, minimum: 1 }
        note: { type: string, maxLength: 100 }
        currency: { type: string, enum: [EUR, USD] }
        count: { type: integer }
        tags: { type: array, items: { type: string }, maxItems: 10 }
    Order:
      type: object
      required: [id, status]
      properties:
        id: { type: integer }
        status: { type: string, enum: [draft, open, closed] }
        total: { type: number, maximum: 1000 }
        note: { type: string }
        code: { type: string, maxLength: 10 }
    OrderPage:
      type: object
      required: [items]
      properties:
        items: { type: array, items: { $ref: '#/components/schemas/Order' } }
"#;

fn classify(old: &str, new: &str) -> Vec<ContractChange> {
    let load = |text: &str| {
        let src = SourceFile {
            path: "contracts/api.yaml".into(),
            text: text.into(),
        };
        let mut errors = Vec::new();
        let docs = BundleDocuments::parse(&[&src], &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        docs
    };
    let (od, nd) = (load(old), load(new));
    diff(
        &Doc {
            docs: &od,
            path: "contracts/api.yaml",
        },
        &Doc {
            docs: &nd,
            path: "contracts/api.yaml",
        },
    )
}

/// (case, text to replace in BASE, replacement, expected rule id, expected level)
const CASES: &[(&str, &str, &str, &str, Level)] = &[
    ("operation removed", "    delete:\n      operationId: deleteOrder\n      deprecated: true\n", "    x-delete:\n      operationId: deleteOrder\n      deprecated: true\n", "api-removed-after-deprecation", Level::Info),
    ("undeprecated operation removed", "    post:\n      operationId: createOrder", "    x-post:\n      operationId: createOrder", "api-removed", Level::Breaking),
    ("operation added", "  /orders/{id}:\n    get:", "  /orders/{id}:\n    patch:\n      responses: { '200': { description: ok } }\n    get:", "endpoint-added", Level::Info),
    ("path param renamed is not a change", "/orders/{id}:", "/orders/{orderId}:", "", Level::Info),
    ("new required query parameter", "        - { name: page, in: query,", "        - { name: region, in: query, required: true, schema: { type: string } }\n        - { name: page, in: query,", "new-required-request-parameter", Level::Breaking),
    ("new optional query parameter", "        - { name: page, in: query,", "        - { name: region, in: query, schema: { type: string } }\n        - { name: page, in: query,", "new-optional-request-parameter", Level::Info),
    ("parameter became required", "{ name: status, in: query, schema:", "{ name: status, in: query, required: true, schema:", "request-parameter-became-required", Level::Breaking),
    ("header became optional", "{ name: x-tenant, in: header, required: true,", "{ name: x-tenant, in: header, required: false,", "request-parameter-became-optional", Level::Info),
    ("parameter removed", "        - { name: x-tenant, in: header, required: true, schema: { type: string } }\n", "", "request-parameter-removed", Level::Warn),
    ("parameter type changed", "{ name: page, in: query, schema: { type: integer,", "{ name: page, in: query, schema: { type: string,", "request-type-changed", Level::Breaking),
    ("parameter type widened", "{ name: page, in: query, schema: { type: integer,", "{ name: page, in: query, schema: { type: number,", "request-type-widened", Level::Info),
    ("parameter default changed", "minimum: 1, default: 1 }", "minimum: 1, default: 2 }", "request-parameter-default-changed", Level::Breaking),
    ("parameter enum value removed", "{ type: string, enum: [draft, open, closed] } }", "{ type: string, enum: [draft, open] } }", "request-enum-value-removed", Level::Breaking),
    ("parameter enum value added", "{ type: string, enum: [draft, open, closed] } }", "{ type: string, enum: [draft, open, closed, void] } }", "request-enum-value-added", Level::Info),
    ("parameter minimum raised", "{ type: integer, minimum: 1, default: 1 }", "{ type: integer, minimum: 5, default: 1 }", "request-bound-tightened", Level::Breaking),
    ("parameter minimum removed", "{ type: integer, minimum: 1, default: 1 }", "{ type: integer, default: 1 }", "request-bound-loosened", Level::Info),
    ("request body became optional", "      requestBody:\n        required: true", "      requestBody:\n        required: false", "request-body-became-optional", Level::Info),
    ("request body removed", "      requestBody:\n        required: true\n        content:\n          application/json:\n            schema: { $ref: '#/components/schemas/NewOrder' }\n", "", "request-body-removed", Level::Breaking),
    ("request media type removed", "          application/json:\n            schema: { $ref: '#/components/schemas/NewOrder' }", "          application/xml:\n            schema: { $ref: '#/components/schemas/NewOrder' }", "media-type-removed", Level::Breaking),
    ("new required request property", "      required: [customer_id]\n      properties:\n        customer_id: { type: integer, minimum: 1 }", "      required: [customer_id, channel]\n      properties:\n        channel: { type: string }\n        customer_id: { type: integer, minimum: 1 }", "new-required-request-property", Level::Breaking),
    ("new optional request property", "        note: { type: string, maxLength: 100 }", "        note: { type: string, maxLength: 100 }\n        channel: { type: string }", "new-optional-request-property", Level::Info),
    ("request property became required", "      required: [customer_id]\n      properties:\n        customer_id: { type: integer, minimum: 1 }", "      required: [customer_id, note]\n      properties:\n        customer_id: { type: integer, minimum: 1 }", "request-property-became-required", Level::Breaking),
    ("request property removed", "        count: { type: integer }\n", "", "request-property-removed", Level::Warn),
    ("request property type narrowed", "        count: { type: integer }", "        count: { type: boolean }", "request-type-changed", Level::Breaking),
    ("request property type widened", "        count: { type: integer }", "        count: { type: number }", "request-type-widened", Level::Info),
    ("request maxLength tightened", "note: { type: string, maxLength: 100 }", "note: { type: string, maxLength: 50 }", "request-bound-tightened", Level::Breaking),
    ("request maxLength loosened", "note: { type: string, maxLength: 100 }", "note: { type: string, maxLength: 500 }", "request-bound-loosened", Level::Info),
    ("request maxItems tightened", "maxItems: 10 }", "maxItems: 5 }", "request-bound-tightened", Level::Breaking),
    ("request enum value removed", "currency: { type: string, enum: [EUR, USD] }", "currency: { type: string, enum: [EUR] }", "request-enum-value-removed", Level::Breaking),
    ("request field became an enum", "note: { type: string, maxLength: 100 }", "note: { type: string, maxLength: 100, enum: [a, b] }", "request-became-enum", Level::Breaking),
    ("request pattern added", "note: { type: string, maxLength: 100 }", "note: { type: string, maxLength: 100, pattern: '^[a-z]+$' }", "request-pattern-added", Level::Breaking),
    ("request became nullable", "note: { type: string, maxLength: 100 }", "note: { type: string, maxLength: 100, nullable: true }", "request-became-nullable", Level::Info),
    ("request additionalProperties forbidden", "      required: [customer_id]\n      properties:\n        customer_id:", "      required: [customer_id]\n      additionalProperties: false\n      properties:\n        customer_id:", "request-additional-properties-forbidden", Level::Breaking),
    ("response 2xx removed", "        '201':\n          description: created", "        '202':\n          description: created", "response-success-status-removed", Level::Breaking),
    ("response 404 removed", "        '404': { description: none }\n", "", "response-non-success-status-removed", Level::Info),
    ("response status added", "        '404': { description: none }", "        '404': { description: none }\n        '429': { description: slow down }", "response-status-added", Level::Info),
    ("response required property removed", "      required: [id, status]\n      properties:\n        id: { type: integer }\n        status:", "      required: [status]\n      properties:\n        status:", "response-required-property-removed", Level::Breaking),
    ("response optional property removed", "        note: { type: string }\n        code:", "        code:", "response-optional-property-removed", Level::Warn),
    ("response property added", "        code: { type: string, maxLength: 10 }", "        code: { type: string, maxLength: 10 }\n        eta: { type: string }", "response-property-added", Level::Info),
    ("response property became optional", "      required: [id, status]\n      properties:\n        id: { type: integer }", "      required: [id]\n      properties:\n        id: { type: integer }", "response-property-became-optional", Level::Breaking),
    ("response property type changed", "        total: { type: number, maximum: 1000 }", "        total: { type: string }", "response-type-changed", Level::Breaking),
    ("response type narrowed", "        total: { type: number, maximum: 1000 }", "        total: { type: integer, maximum: 1000 }", "response-type-narrowed", Level::Info),
    ("response enum value added", "        status: { type: string, enum: [draft, open, closed] }", "        status: { type: string, enum: [draft, open, closed, archived] }", "response-enum-value-added", Level::Warn),
    ("response enum value removed", "        status: { type: string, enum: [draft, open, closed] }", "        status: { type: string, enum: [draft, open] }", "response-enum-value-removed", Level::Info),
    ("response maximum loosened", "        total: { type: number, maximum: 1000 }", "        total: { type: number, maximum: 5000 }", "response-bound-loosened", Level::Breaking),
    ("response maxLength removed", "        code: { type: string, maxLength: 10 }", "        code: { type: string }", "response-bound-loosened", Level::Breaking),
    ("response became nullable (3.0)", "        note: { type: string }\n        code:", "        note: { type: string, nullable: true }\n        code:", "response-became-nullable", Level::Breaking),
    ("response media type broadened", "            application/json:\n              schema: { $ref: '#/components/schemas/OrderPage' }", "            application/json:\n              schema: { $ref: '#/components/schemas/OrderPage' }\n            application/*:\n              schema: { type: object }", "media-type-added", Level::Breaking),
    ("nested array item property removed", "        items: { type: array, items: { $ref: '#/components/schemas/Order' } }", "        items: { type: array, items: { type: object, required: [status], properties: { status: { type: string, enum: [draft, open, closed] }, total: { type: number, maximum: 1000 }, note: { type: string }, code: { type: string, maxLength: 10 } } } }", "response-required-property-removed", Level::Breaking),
];

#[test]
fn the_corpus_classifies_every_change() {
    assert!(CASES.len() >= 40, "{} cases", CASES.len());
    let mut failures = Vec::new();
    for (name, from, to, id, level) in CASES {
        assert!(
            BASE.contains(from),
            "case `{name}`: BASE does not contain the text to replace"
        );
        let changed = BASE.replacen(from, to, 1);
        let changes = classify(BASE, &changed);
        if id.is_empty() {
            if !changes.is_empty() {
                failures.push(format!("{name}: expected no change, got {changes:#?}"));
            }
            continue;
        }
        if !changes.iter().any(|c| c.id == *id && c.level == *level) {
            failures.push(format!(
                "{name}: expected {id} ({level:?}), got {:?}",
                changes
                    .iter()
                    .map(|c| (c.id, c.level, c.text.as_str()))
                    .collect::<Vec<_>>()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}

#[test]
fn identical_documents_have_no_changes_and_refs_are_compared_resolved() {
    assert!(classify(BASE, BASE).is_empty());
    // Inlining a referenced schema is not a change.
    let inlined = BASE.replacen(
        "schema: { $ref: '#/components/schemas/NewOrder' }",
        "schema: { type: object, required: [customer_id], properties: { customer_id: { type: integer, minimum: 1 }, note: { type: string, maxLength: 100 }, currency: { type: string, enum: [EUR, USD] }, count: { type: integer }, tags: { type: array, items: { type: string }, maxItems: 10 } } }",
        1,
    );
    assert_eq!(classify(BASE, &inlined), vec![]);
    // 3.0 nullable and 3.1 type lists are the same thing.
    let a = BASE.replacen(
        "note: { type: string }\n        code:",
        "note: { type: string, nullable: true }\n        code:",
        1,
    );
    let b = BASE.replacen(
        "note: { type: string }\n        code:",
        "note: { type: [string, 'null'] }\n        code:",
        1,
    );
    assert_eq!(classify(&a, &b), vec![]);
}

#[test]
fn fingerprints_are_stable_and_distinct() {
    let changed = BASE.replacen("maxItems: 10 }", "maxItems: 5 }", 1);
    let a = classify(BASE, &changed);
    let b = classify(BASE, &changed);
    assert_eq!(a, b);
    assert_eq!(a[0].fingerprint.len(), 12);
    assert_ne!(
        fingerprint("x", "GET", "/a", "t"),
        fingerprint("x", "GET", "/b", "t")
    );
}

#[test]
fn changes_behind_an_unchanged_ref_are_found() {
    let changed = BASE.replacen(
        "        customer_id: { type: integer, minimum: 1 }",
        "        customer_id: { type: integer, minimum: 10 }",
        1,
    );
    let changes = classify(BASE, &changed);
    assert!(
        changes
            .iter()
            .any(|c| c.id == "request-bound-tightened" && c.text.contains("customer_id")),
        "{changes:#?}"
    );
}
