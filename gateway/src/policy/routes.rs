//! An app's routes: declared in the policy file, or taken from its OpenAPI
//! contract (paths × methods, no double declaration), with their contract
//! checks and modes.

use std::collections::HashMap;
use std::sync::Arc;

use http::Method;

use super::bundle::{ContractSettings, Route};
use super::model::AppSpec;
use super::PolicyError;
use crate::contract::openapi::{compile_document, escape, SchemaCompiler};
use crate::contract::{BodyCheck, BundleDocuments, Mode, Operation, ResponseChecks};
use crate::routing::PathTemplate;

/// A route plus where it was declared, for error messages.
struct Declared {
    file: String,
    pointer: String,
    route: Route,
}

/// Compile the routes of `spec`, sorted most specific first.
pub fn compile_routes(
    file: &str,
    at: &str,
    spec: &AppSpec,
    settings: &ContractSettings,
    docs: &BundleDocuments,
    body_cap: u64,
    errors: &mut Vec<PolicyError>,
) -> Vec<Route> {
    let contract = spec.contract.as_ref();
    let default_request = contract.map_or(Mode::Enforce, |c| c.request);
    let default_response = contract.map_or(Mode::Monitor, |c| c.response);
    let mut declared = Vec::new();

    if let Some(doc) = settings.openapi.as_deref() {
        if !spec.routes.is_empty() {
            errors.push(PolicyError::new(file, format!("{at}/routes"), format!(
                "routes come from the OpenAPI document `{doc}`; override their modes under contract.operations"
            )));
        }
        if spec.passthrough {
            errors.push(PolicyError::new(file, format!("{at}/passthrough"),
                "with an OpenAPI contract, set contract.undocumented (reject, monitor or allow) instead"));
        }
        if docs.get(doc).is_none() {
            errors.push(PolicyError::new(
                file,
                format!("{at}/contract/openapi"),
                format!(
                    "`{doc}` is not a document of the bundle (contracts live under contracts/)"
                ),
            ));
            return Vec::new();
        }
        let overrides = contract.map(|c| &c.operations);
        let before = errors.len();
        let ops = compile_document(docs, doc, errors);
        let doc_failed = ops.is_empty() && errors.len() > before;
        if let (Some(overrides), false) = (overrides, doc_failed) {
            for id in overrides.keys() {
                if !ops.iter().any(|o| &o.id == id) {
                    errors.push(PolicyError::new(
                        file,
                        format!("{at}/contract/operations/{}", escape(id)),
                        format!("`{id}` is not an operation of `{doc}`"),
                    ));
                }
            }
        }
        for op in ops {
            let Ok(method) = Method::from_bytes(op.method.as_bytes()) else {
                continue;
            };
            let Ok(template) = PathTemplate::parse(&op.path) else {
                continue;
            };
            let o = overrides.and_then(|m| m.get(&op.id));
            declared.push(Declared {
                file: doc.to_string(),
                pointer: format!(
                    "/paths/{}/{}",
                    escape(&op.path),
                    op.method.to_ascii_lowercase()
                ),
                route: Route {
                    id: op.id,
                    method: Some(method),
                    template,
                    max_request_body: body_cap,
                    operation: Some(Arc::new(op.operation)),
                    request_mode: o.and_then(|o| o.request).unwrap_or(default_request),
                    response_mode: o.and_then(|o| o.response).unwrap_or(default_response),
                },
            });
        }
    } else {
        let compiler = SchemaCompiler::new(docs, false);
        for (r, rs) in spec.routes.iter().enumerate() {
            let rat = format!("{at}/routes/{r}");
            let method = if rs.method == "ANY" {
                None
            } else {
                match Method::from_bytes(rs.method.as_bytes()) {
                    Ok(m) if rs.method.bytes().all(|b| b.is_ascii_uppercase()) => Some(m),
                    _ => {
                        errors.push(PolicyError::new(
                            file,
                            format!("{rat}/method"),
                            format!(
                                "`{}` is not an HTTP method (use upper case, or ANY)",
                                rs.method
                            ),
                        ));
                        continue;
                    }
                }
            };
            let template = match PathTemplate::parse(&rs.path) {
                Ok(t) => t,
                Err(e) => {
                    errors.push(PolicyError::new(
                        file,
                        format!("{rat}/path"),
                        format!("`{}`: {e}", rs.path),
                    ));
                    continue;
                }
            };
            let mut schema = |key: &str, path: &Option<String>| {
                let path = path.as_deref()?;
                if docs.get(path).is_none() {
                    errors.push(PolicyError::new(
                        file,
                        format!("{rat}/{key}"),
                        format!(
                        "`{path}` is not a document of the bundle (schemas live under schemas/)"
                    ),
                    ));
                    return None;
                }
                match compiler.compile_body(path, "") {
                    Ok(v) => Some(v),
                    Err(m) => {
                        errors.push(PolicyError::new(path, "", m));
                        None
                    }
                }
            };
            let request_schema = schema("request_schema", &rs.request_schema);
            let response_schema = schema("response_schema", &rs.response_schema);
            let operation = (request_schema.is_some() || response_schema.is_some()).then(|| {
                let mut responses = ResponseChecks::default();
                if let Some(v) = response_schema {
                    // Only 2xx bodies are described; other statuses pass unchecked.
                    for (digit, slot) in responses.ranges.iter_mut().enumerate().skip(1) {
                        *slot = Some(if digit == 2 { Some(v.clone()) } else { None });
                    }
                }
                Arc::new(Operation {
                    params: Vec::new(),
                    body: request_schema.map(|v| BodyCheck {
                        required: true,
                        // JSON under any name (`application/merge-patch+json`,
                        // `application/vnd.api+json`, …): judged as JSON.
                        media_types: vec!["application/json".into(), "application/*+json".into()],
                        json: Some(v),
                    }),
                    responses,
                })
            });
            declared.push(Declared {
                file: file.to_string(),
                pointer: rat,
                route: Route {
                    id: rs
                        .id
                        .clone()
                        .unwrap_or_else(|| format!("{} {}", rs.method, rs.path)),
                    method,
                    template,
                    max_request_body: rs.max_request_body.map_or(body_cap, |b| b.0),
                    operation,
                    request_mode: rs.request.unwrap_or(default_request),
                    response_mode: rs.response.unwrap_or(default_response),
                },
            });
        }
        if declared.is_empty() && !spec.passthrough && spec.routes.is_empty() {
            errors.push(PolicyError::new(
                file,
                format!("{at}/routes"),
                "the app declares no routes and is not passthrough: it would serve nothing",
            ));
        }
    }

    let mut ids: HashMap<&str, &str> = HashMap::new();
    let mut shapes: HashMap<(Option<&Method>, String), &str> = HashMap::new();
    for d in &declared {
        let r = &d.route;
        if let Some(first) = ids.get(r.id.as_str()) {
            errors.push(PolicyError::new(
                &d.file,
                format!("{}/id", d.pointer),
                format!("route id `{}` is already used by {first}", r.id),
            ));
        } else {
            ids.insert(&r.id, &d.pointer);
        }
        let method = r.method.as_ref().map_or("ANY", |m| m.as_str());
        if spec.case_insensitive_paths
            && r.template.segments().iter().any(|s| {
                matches!(s, crate::routing::Segment::Literal(l) if l.bytes().any(|b| b.is_ascii_uppercase()))
            })
        {
            errors.push(PolicyError::new(
                &d.file,
                format!("{}/path", d.pointer),
                format!(
                    "`{method} {}`: the app has case_insensitive_paths, so its routes are matched in lower case; write the path in lower case",
                    r.template
                ),
            ));
        }
        if let Some(first) = shapes.get(&(r.method.as_ref(), r.template.shape())) {
            errors.push(PolicyError::new(
                &d.file,
                format!("{}/path", d.pointer),
                format!(
                    "`{method} {}` conflicts with {first}: both match exactly the same requests",
                    r.template
                ),
            ));
        } else {
            shapes.insert((r.method.as_ref(), r.template.shape()), &d.pointer);
        }
    }
    let mut routes: Vec<Route> = declared.into_iter().map(|d| d.route).collect();
    routes.sort_by(|a, b| {
        a.template
            .specificity()
            .cmp(&b.template.specificity())
            .then(a.method.is_none().cmp(&b.method.is_none()))
    });
    routes
}
