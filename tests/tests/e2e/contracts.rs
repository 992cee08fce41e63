//! API contracts enforced by the real gateway on the example estate.

use std::time::Duration;

use gatehouse_e2e::*;
use serde_json::{json, Value};

/// One request of the corpus and what the gateway must answer.
struct Case {
    host: &'static str,
    method: &'static str,
    path: String,
    content_type: Option<&'static str>,
    body: Option<String>,
    status: u16,
    /// `location:pointer:keyword` (or `location:name:keyword` for parameters) that must be reported.
    expect: Vec<&'static str>,
}

const ORDERS: &str = "orders.corp.example";
const CRM: &str = "crm.corp.example";
const HR: &str = "hr.corp.example";
const APPROVALS: &str = "approvals.corp.example";

fn case(
    host: &'static str,
    method: &'static str,
    path: impl Into<String>,
    body: Option<Value>,
    status: u16,
    expect: &[&'static str],
) -> Case {
    Case {
        host,
        method,
        path: path.into(),
        content_type: body.as_ref().map(|_| "application/json"),
        body: body.map(|b| b.to_string()),
        status,
        expect: expect.to_vec(),
    }
}

fn raw(
    host: &'static str,
    method: &'static str,
    path: &str,
    ct: &'static str,
    body: &str,
    status: u16,
    expect: &[&'static str],
) -> Case {
    Case {
        host,
        method,
        path: path.into(),
        content_type: Some(ct),
        body: Some(body.into()),
        status,
        expect: expect.to_vec(),
    }
}

fn order_body() -> Value {
    json!({ "customer_id": 42, "currency": "EUR", "lines": [ { "sku": "SKU-00042", "quantity": 3, "unit_price": 9.95 } ] })
}

fn with(mut v: Value, pointer: &str, new: Value) -> Value {
    *v.pointer_mut(pointer).expect("pointer exists") = new;
    v
}

fn without(mut v: Value, key: &str) -> Value {
    v.as_object_mut().expect("object").remove(key);
    v
}

fn corpus() -> Vec<Case> {
    let o = "/rest/orders/v1";
    let c = "/CRM/rest/v1";
    let h = "/api/hr";
    let mut cases = vec![
        // ---- orders: valid
        case(ORDERS, "GET", format!("{o}/orders"), None, 200, &[]),
        case(
            ORDERS,
            "GET",
            format!("{o}/orders?status=approved&page=2&page_size=5"),
            None,
            200,
            &[],
        ),
        case(
            ORDERS,
            "GET",
            format!("{o}/orders?customer_id=7"),
            None,
            200,
            &[],
        ),
        case(ORDERS, "GET", format!("{o}/orders/7"), None, 200, &[]),
        case(ORDERS, "GET", format!("{o}/orders/7/lines"), None, 200, &[]),
        case(ORDERS, "DELETE", format!("{o}/orders/7"), None, 204, &[]),
        case(
            ORDERS,
            "POST",
            format!("{o}/orders/7/submit"),
            None,
            202,
            &[],
        ),
        case(
            ORDERS,
            "GET",
            format!("{o}/products?page_size=3"),
            None,
            200,
            &[],
        ),
        case(
            ORDERS,
            "GET",
            format!("{o}/products/SKU-00012"),
            None,
            200,
            &[],
        ),
        case(
            ORDERS,
            "POST",
            format!("{o}/orders"),
            Some(order_body()),
            201,
            &[],
        ),
        case(
            ORDERS,
            "POST",
            format!("{o}/orders"),
            Some(without(order_body(), "currency")),
            201,
            &[],
        ),
        case(
            ORDERS,
            "POST",
            format!("{o}/orders"),
            Some(with(order_body(), "/currency", json!("GBP"))),
            201,
            &[],
        ),
        case(
            ORDERS,
            "POST",
            format!("{o}/orders"),
            Some(
                json!({ "customer_id": 1, "lines": [ { "sku": "SKU-00001", "quantity": 1 } ], "notes": null }),
            ),
            201,
            &[],
        ),
        case(
            ORDERS,
            "POST",
            format!("{o}/orders"),
            Some(
                json!({ "customer_id": 1, "lines": [ { "sku": "SKU-00001", "quantity": 1000 } ], "requested_delivery": "2026-12-24", "contact_email": "buyer@example.com", "reference": "6f1c2b1e-9d1a-4c1e-8f7a-2b3c4d5e6f70" }),
            ),
            201,
            &[],
        ),
        case(
            ORDERS,
            "PUT",
            format!("{o}/orders/7"),
            Some(json!({ "status": "shipped" })),
            200,
            &[],
        ),
        case(
            ORDERS,
            "PUT",
            format!("{o}/orders/7"),
            Some(json!({ "notes": "leave at the door", "requested_delivery": "2027-01-02" })),
            200,
            &[],
        ),
        // ---- orders: parameters
        case(
            ORDERS,
            "GET",
            format!("{o}/orders/abc"),
            None,
            400,
            &["path:id:type"],
        ),
        case(
            ORDERS,
            "GET",
            format!("{o}/orders/0"),
            None,
            400,
            &["path:id:minimum"],
        ),
        case(
            ORDERS,
            "GET",
            format!("{o}/orders/-5/lines"),
            None,
            400,
            &["path:id:minimum"],
        ),
        case(
            ORDERS,
            "GET",
            format!("{o}/orders/1.5"),
            None,
            400,
            &["path:id:type"],
        ),
        case(
            ORDERS,
            "GET",
            format!("{o}/orders?status=lost"),
            None,
            400,
            &["query:status:enum"],
        ),
        case(
            ORDERS,
            "GET",
            format!("{o}/orders?page=0"),
            None,
            400,
            &["query:page:minimum"],
        ),
        case(
            ORDERS,
            "GET",
            format!("{o}/orders?page=x"),
            None,
            400,
            &["query:page:type"],
        ),
        case(
            ORDERS,
            "GET",
            format!("{o}/orders?page_size=501"),
            None,
            400,
            &["query:page_size:maximum"],
        ),
        case(
            ORDERS,
            "GET",
            format!("{o}/orders?page_size=0&status=nope"),
            None,
            400,
            &["query:page_size:minimum", "query:status:enum"],
        ),
        case(
            ORDERS,
            "GET",
            format!("{o}/orders?customer_id=0"),
            None,
            400,
            &["query:customer_id:minimum"],
        ),
        case(
            ORDERS,
            "GET",
            format!("{o}/products/12"),
            None,
            400,
            &["path:sku:pattern"],
        ),
        case(
            ORDERS,
            "GET",
            format!("{o}/products/SKU-1"),
            None,
            400,
            &["path:sku:pattern"],
        ),
        case(
            ORDERS,
            "POST",
            format!("{o}/orders/x/submit"),
            None,
            400,
            &["path:id:type"],
        ),
        // ---- orders: bodies
        case(
            ORDERS,
            "POST",
            format!("{o}/orders"),
            Some(without(order_body(), "lines")),
            400,
            &["body::required"],
        ),
        case(
            ORDERS,
            "POST",
            format!("{o}/orders"),
            Some(without(order_body(), "customer_id")),
            400,
            &["body::required"],
        ),
        case(
            ORDERS,
            "POST",
            format!("{o}/orders"),
            Some(with(order_body(), "/customer_id", json!("42"))),
            400,
            &["body:/customer_id:type"],
        ),
        case(
            ORDERS,
            "POST",
            format!("{o}/orders"),
            Some(with(order_body(), "/customer_id", json!(0))),
            400,
            &["body:/customer_id:minimum"],
        ),
        case(
            ORDERS,
            "POST",
            format!("{o}/orders"),
            Some(with(order_body(), "/customer_id", json!(4.2))),
            400,
            &["body:/customer_id:type"],
        ),
        case(
            ORDERS,
            "POST",
            format!("{o}/orders"),
            Some(with(order_body(), "/currency", json!("JPY"))),
            400,
            &["body:/currency:enum"],
        ),
        case(
            ORDERS,
            "POST",
            format!("{o}/orders"),
            Some(with(order_body(), "/lines", json!([]))),
            400,
            &["body:/lines:minItems"],
        ),
        case(
            ORDERS,
            "POST",
            format!("{o}/orders"),
            Some(with(order_body(), "/lines", json!("SKU-00001"))),
            400,
            &["body:/lines:type"],
        ),
        case(
            ORDERS,
            "POST",
            format!("{o}/orders"),
            Some(with(order_body(), "/lines/0/sku", json!("sku-1"))),
            400,
            &["body:/lines/0/sku:pattern"],
        ),
        case(
            ORDERS,
            "POST",
            format!("{o}/orders"),
            Some(with(order_body(), "/lines/0/quantity", json!(0))),
            400,
            &["body:/lines/0/quantity:minimum"],
        ),
        case(
            ORDERS,
            "POST",
            format!("{o}/orders"),
            Some(with(order_body(), "/lines/0/quantity", json!(1001))),
            400,
            &["body:/lines/0/quantity:maximum"],
        ),
        case(
            ORDERS,
            "POST",
            format!("{o}/orders"),
            Some(with(order_body(), "/lines/0/quantity", json!("3"))),
            400,
            &["body:/lines/0/quantity:type"],
        ),
        case(
            ORDERS,
            "POST",
            format!("{o}/orders"),
            Some(with(order_body(), "/lines/0/unit_price", json!(0))),
            400,
            &["body:/lines/0/unit_price:exclusiveMinimum"],
        ),
        case(
            ORDERS,
            "POST",
            format!("{o}/orders"),
            Some(with(order_body(), "/lines/0/unit_price", json!(-1))),
            400,
            &["body:/lines/0/unit_price:exclusiveMinimum"],
        ),
        case(
            ORDERS,
            "POST",
            format!("{o}/orders"),
            Some(with(
                order_body(),
                "/lines/0",
                json!({ "sku": "SKU-00001", "quantity": 1, "discount": 5 }),
            )),
            400,
            &["body:/lines/0:additionalProperties"],
        ),
        case(
            ORDERS,
            "POST",
            format!("{o}/orders"),
            Some(with(order_body(), "/lines/0", json!({ "quantity": 1 }))),
            400,
            &["body:/lines/0:required"],
        ),
        case(
            ORDERS,
            "POST",
            format!("{o}/orders"),
            Some(
                json!({ "customer_id": 1, "lines": [ { "sku": "SKU-00001", "quantity": 1 } ], "priority": "high" }),
            ),
            400,
            &["body::additionalProperties"],
        ),
        case(
            ORDERS,
            "POST",
            format!("{o}/orders"),
            Some(
                json!({ "customer_id": 1, "lines": [ { "sku": "SKU-00001", "quantity": 1 } ], "contact_email": "nobody" }),
            ),
            400,
            &["body:/contact_email:format"],
        ),
        case(
            ORDERS,
            "POST",
            format!("{o}/orders"),
            Some(
                json!({ "customer_id": 1, "lines": [ { "sku": "SKU-00001", "quantity": 1 } ], "requested_delivery": "24-12-2026" }),
            ),
            400,
            &["body:/requested_delivery:format"],
        ),
        case(
            ORDERS,
            "POST",
            format!("{o}/orders"),
            Some(
                json!({ "customer_id": 1, "lines": [ { "sku": "SKU-00001", "quantity": 1 } ], "reference": "not-a-uuid" }),
            ),
            400,
            &["body:/reference:format"],
        ),
        case(
            ORDERS,
            "POST",
            format!("{o}/orders"),
            Some(
                json!({ "customer_id": 1, "lines": [ { "sku": "SKU-00001", "quantity": 1 } ], "notes": "x".repeat(501) }),
            ),
            400,
            &["body:/notes:maxLength"],
        ),
        case(
            ORDERS,
            "POST",
            format!("{o}/orders"),
            Some(
                json!({ "customer_id": 1, "lines": [ { "sku": "SKU-00001", "quantity": 1 } ], "notes": 5 }),
            ),
            400,
            &["body:/notes:type"],
        ),
        case(
            ORDERS,
            "POST",
            format!("{o}/orders"),
            Some(json!([order_body()])),
            400,
            &["body::type"],
        ),
        case(
            ORDERS,
            "POST",
            format!("{o}/orders"),
            Some(
                json!({ "customer_id": "a", "currency": "X", "lines": [ { "sku": 1, "quantity": -1 } ] }),
            ),
            400,
            &[
                "body:/customer_id:type",
                "body:/currency:enum",
                "body:/lines/0/sku:type",
                "body:/lines/0/quantity:minimum",
            ],
        ),
        case(
            ORDERS,
            "PUT",
            format!("{o}/orders/7"),
            Some(json!({})),
            400,
            &["body::minProperties"],
        ),
        case(
            ORDERS,
            "PUT",
            format!("{o}/orders/7"),
            Some(json!({ "status": "paid" })),
            400,
            &["body:/status:enum"],
        ),
        case(
            ORDERS,
            "PUT",
            format!("{o}/orders/7"),
            Some(json!({ "id": 8 })),
            400,
            &["body::additionalProperties"],
        ),
        case(
            ORDERS,
            "POST",
            format!("{o}/orders"),
            None,
            400,
            &["body::required"],
        ),
        raw(
            ORDERS,
            "POST",
            &format!("{o}/orders"),
            "application/json",
            "{\"customer_id\": 1,",
            400,
            &[],
        ),
        raw(
            ORDERS,
            "POST",
            &format!("{o}/orders"),
            "application/json",
            "{'customer_id': 1}",
            400,
            &[],
        ),
        raw(
            ORDERS,
            "POST",
            &format!("{o}/orders"),
            "application/json",
            "customer_id=1",
            400,
            &[],
        ),
        raw(
            ORDERS,
            "POST",
            &format!("{o}/orders"),
            "application/json; charset=utf-8",
            "{\"customer_id\": 1, \"lines\": [ {\"sku\": \"SKU-00001\", \"quantity\": 2} ] }",
            201,
            &[],
        ),
        raw(
            ORDERS,
            "POST",
            &format!("{o}/orders"),
            "text/plain",
            "{\"customer_id\": 1}",
            415,
            &[],
        ),
        raw(
            ORDERS,
            "POST",
            &format!("{o}/orders"),
            "application/xml",
            "<order/>",
            415,
            &[],
        ),
        raw(
            ORDERS,
            "POST",
            &format!("{o}/orders"),
            "application/x-www-form-urlencoded",
            "customer_id=1",
            415,
            &[],
        ),
        // ---- customers (OpenAPI 3.1, header parameter, merge-patch)
        case(CRM, "GET", format!("{c}/customers"), None, 200, &[]),
        case(
            CRM,
            "GET",
            format!("{c}/customers?q=jansen&segment=smb"),
            None,
            200,
            &[],
        ),
        case(CRM, "GET", format!("{c}/customers/5"), None, 200, &[]),
        case(
            CRM,
            "GET",
            format!("{c}/customers/5/contacts"),
            None,
            200,
            &[],
        ),
        case(
            CRM,
            "POST",
            format!("{c}/customers"),
            Some(
                json!({ "name": "Acme BV", "email": "info@acme.example", "segment": "enterprise", "country": "NL" }),
            ),
            201,
            &[],
        ),
        case(
            CRM,
            "POST",
            format!("{c}/customers"),
            Some(
                json!({ "name": "Acme BV", "email": "info@acme.example", "segment": "smb", "website": null }),
            ),
            201,
            &[],
        ),
        case(
            CRM,
            "POST",
            format!("{c}/customers"),
            Some(
                json!({ "name": "Acme BV", "email": "info@acme.example", "segment": "smb", "website": "https://acme.example/" }),
            ),
            201,
            &[],
        ),
        case(
            CRM,
            "PUT",
            format!("{c}/customers/5"),
            Some(json!({ "name": "B", "email": "b@b.example", "segment": "public" })),
            200,
            &[],
        ),
        case(
            CRM,
            "PATCH",
            format!("{c}/customers/5"),
            Some(json!({ "active": false })),
            200,
            &[],
        ),
        raw(
            CRM,
            "PATCH",
            &format!("{c}/customers/5"),
            "application/merge-patch+json",
            "{\"segment\": \"smb\"}",
            200,
            &[],
        ),
        case(
            CRM,
            "POST",
            format!("{c}/customers/5/contacts"),
            Some(json!({ "name": "Kim", "role": "legal", "phone": "+31 20 123 4567" })),
            201,
            &[],
        ),
        case(
            CRM,
            "GET",
            format!("{c}/customers?segment=government"),
            None,
            400,
            &["query:segment:enum"],
        ),
        case(
            CRM,
            "GET",
            format!("{c}/customers?q={}", "a".repeat(101)),
            None,
            400,
            &["query:q:maxLength"],
        ),
        case(
            CRM,
            "GET",
            format!("{c}/customers/2147483648"),
            None,
            400,
            &["path:id:maximum"],
        ),
        case(
            CRM,
            "GET",
            format!("{c}/customers/five"),
            None,
            400,
            &["path:id:type"],
        ),
        case(
            CRM,
            "POST",
            format!("{c}/customers"),
            Some(json!({ "name": "", "email": "x@y.example", "segment": "smb" })),
            400,
            &["body:/name:minLength"],
        ),
        case(
            CRM,
            "POST",
            format!("{c}/customers"),
            Some(json!({ "name": "A", "email": "not email", "segment": "smb" })),
            400,
            &["body:/email:format"],
        ),
        case(
            CRM,
            "POST",
            format!("{c}/customers"),
            Some(json!({ "name": "A", "email": "a@b.example", "segment": "SMB" })),
            400,
            &["body:/segment:enum"],
        ),
        case(
            CRM,
            "POST",
            format!("{c}/customers"),
            Some(json!({ "name": "A", "email": "a@b.example", "segment": "smb", "country": "nl" })),
            400,
            &["body:/country:pattern"],
        ),
        case(
            CRM,
            "POST",
            format!("{c}/customers"),
            Some(
                json!({ "name": "A", "email": "a@b.example", "segment": "smb", "website": "not a uri" }),
            ),
            400,
            &["body:/website:format"],
        ),
        case(
            CRM,
            "POST",
            format!("{c}/customers"),
            Some(json!({ "name": "A", "email": "a@b.example" })),
            400,
            &["body::required"],
        ),
        case(
            CRM,
            "POST",
            format!("{c}/customers"),
            Some(json!({ "name": "A", "email": "a@b.example", "segment": "smb", "vip": true })),
            400,
            &["body::additionalProperties"],
        ),
        case(
            CRM,
            "POST",
            format!("{c}/customers"),
            Some(json!({ "name": "A", "email": "a@b.example", "segment": "smb", "active": "yes" })),
            400,
            &["body:/active:type"],
        ),
        case(
            CRM,
            "PATCH",
            format!("{c}/customers/5"),
            Some(json!({})),
            400,
            &["body::minProperties"],
        ),
        case(
            CRM,
            "POST",
            format!("{c}/customers/5/contacts"),
            Some(json!({ "name": "Kim", "role": "ceo" })),
            400,
            &["body:/role:enum"],
        ),
        case(
            CRM,
            "POST",
            format!("{c}/customers/5/contacts"),
            Some(json!({ "name": "Kim", "role": "buyer", "phone": "call me" })),
            400,
            &["body:/phone:pattern"],
        ),
        // ---- employees (3.0, nullable, string ids)
        case(
            HR,
            "GET",
            format!("{h}/employees?department=IT"),
            None,
            200,
            &[],
        ),
        case(HR, "GET", format!("{h}/employees/E00012"), None, 200, &[]),
        case(HR, "GET", format!("{h}/departments"), None, 200, &[]),
        case(
            HR,
            "GET",
            format!("{h}/employees/E00012/leave-requests"),
            None,
            200,
            &[],
        ),
        case(
            HR,
            "POST",
            format!("{h}/employees"),
            Some(
                json!({ "given_name": "Sam", "family_name": "Visser", "department": "IT", "start_date": "2027-02-01", "manager_id": null }),
            ),
            201,
            &[],
        ),
        case(
            HR,
            "PATCH",
            format!("{h}/employees/E00012"),
            Some(json!({ "fte": 0.8 })),
            200,
            &[],
        ),
        case(
            HR,
            "POST",
            format!("{h}/employees/E00012/leave-requests"),
            Some(json!({ "from": "2027-03-01", "days": 5 })),
            201,
            &[],
        ),
        case(
            HR,
            "GET",
            format!("{h}/employees?department=Legal"),
            None,
            400,
            &["query:department:enum"],
        ),
        case(
            HR,
            "GET",
            format!("{h}/employees/12"),
            None,
            400,
            &["path:id:pattern"],
        ),
        case(
            HR,
            "POST",
            format!("{h}/employees"),
            Some(
                json!({ "given_name": "Sam", "family_name": "V", "department": "IT", "start_date": "tomorrow" }),
            ),
            400,
            &["body:/start_date:format"],
        ),
        case(
            HR,
            "POST",
            format!("{h}/employees"),
            Some(
                json!({ "given_name": "Sam", "family_name": "V", "department": "IT", "start_date": "2027-02-01", "fte": 1.5 }),
            ),
            400,
            &["body:/fte:maximum"],
        ),
        case(
            HR,
            "POST",
            format!("{h}/employees"),
            Some(
                json!({ "given_name": "Sam", "family_name": "V", "department": "IT", "start_date": "2027-02-01", "manager_id": "boss" }),
            ),
            400,
            &["body:/manager_id:pattern"],
        ),
        case(
            HR,
            "PATCH",
            format!("{h}/employees/E00012"),
            Some(json!({ "salary": 1 })),
            400,
            &["body::additionalProperties"],
        ),
        case(
            HR,
            "POST",
            format!("{h}/employees/E00012/leave-requests"),
            Some(json!({ "from": "2027-03-01", "days": 31 })),
            400,
            &["body:/days:maximum"],
        ),
        case(
            HR,
            "POST",
            format!("{h}/employees/E00012/leave-requests"),
            Some(json!({ "days": 3 })),
            400,
            &["body::required"],
        ),
        // ---- approvals (3.1)
        case(APPROVALS, "GET", "/workflows", None, 200, &[]),
        case(APPROVALS, "GET", "/workflows/travel", None, 200, &[]),
        case(
            APPROVALS,
            "GET",
            "/approvals?status=pending",
            None,
            200,
            &[],
        ),
        case(APPROVALS, "GET", "/approvals/9/history", None, 200, &[]),
        case(APPROVALS, "POST", "/approvals/9/approve", None, 200, &[]),
        case(
            APPROVALS,
            "POST",
            "/approvals/9/reject",
            Some(json!({ "comment": "over budget", "approve": false })),
            200,
            &[],
        ),
        case(
            APPROVALS,
            "POST",
            "/approvals",
            Some(
                json!({ "workflow": "travel", "requested_by": "E00042", "amount": 1200, "reason": null }),
            ),
            201,
            &[],
        ),
        case(
            APPROVALS,
            "GET",
            "/workflows/holiday",
            None,
            400,
            &["path:key:enum"],
        ),
        case(
            APPROVALS,
            "GET",
            "/approvals?status=open",
            None,
            400,
            &["query:status:enum"],
        ),
        case(
            APPROVALS,
            "GET",
            "/approvals/x",
            None,
            400,
            &["path:id:type"],
        ),
        case(
            APPROVALS,
            "POST",
            "/approvals",
            Some(json!({ "workflow": "travel" })),
            400,
            &["body::required"],
        ),
        case(
            APPROVALS,
            "POST",
            "/approvals",
            Some(json!({ "workflow": "travel", "requested_by": "E00042", "amount": -1 })),
            400,
            &["body:/amount:minimum"],
        ),
        case(
            APPROVALS,
            "POST",
            "/approvals",
            Some(
                json!({ "workflow": "travel", "requested_by": "E00042", "due_date": "2027-02-30" }),
            ),
            400,
            &["body:/due_date:format"],
        ),
        case(
            APPROVALS,
            "POST",
            "/approvals/9/approve",
            Some(json!({ "comment": 5 })),
            400,
            &["body:/comment:type"],
        ),
        case(
            APPROVALS,
            "POST",
            "/approvals/9/approve",
            Some(json!({ "reason": "x" })),
            400,
            &["body::additionalProperties"],
        ),
        // ---- undocumented operations are rejected
        case(ORDERS, "GET", format!("{o}/invoices"), None, 404, &[]),
        case(ORDERS, "PATCH", format!("{o}/orders/7"), None, 405, &[]),
    ];
    // Big but valid: 200 lines.
    let lines: Vec<Value> = (1..=200)
        .map(|i| json!({ "sku": format!("SKU-{i:05}"), "quantity": i % 50 + 1 }))
        .collect();
    cases.push(case(
        ORDERS,
        "POST",
        format!("{o}/orders"),
        Some(json!({ "customer_id": 9, "lines": lines })),
        201,
        &[],
    ));
    cases
}

fn reported(problem: &Value) -> Vec<String> {
    problem["violations"]
        .as_array()
        .map(|vs| {
            vs.iter()
                .map(|v| {
                    let loc = v["location"].as_str().unwrap_or("");
                    let at = if loc == "body" {
                        v["pointer"].as_str().unwrap_or("")
                    } else {
                        v["name"].as_str().unwrap_or("")
                    };
                    format!("{loc}:{at}:{}", v["keyword"].as_str().unwrap_or(""))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn the_corpus_is_judged_exactly_and_valid_bodies_pass_unchanged() {
    let sim = example_estate();
    let (dir, key) = example_policies(&sim, |_, t| t);
    let gw = Gateway::start(dir.path(), &[]);
    let c = keyed_client(&key);
    let cases = corpus();
    assert!(cases.len() >= 100, "{} cases", cases.len());
    let mut failures = Vec::new();
    for (i, k) in cases.iter().enumerate() {
        let sim_idx = match k.host {
            ORDERS => 0,
            CRM => 1,
            HR => 2,
            _ => 3,
        };
        let before_bytes = sim_body_bytes(&sim, sim_idx);
        let before_requests = sim.requests(sim_idx);
        let mut req = c
            .request(k.method.parse().unwrap(), format!("{}{}", gw.url(), k.path))
            .header("host", k.host);
        if let Some(ct) = k.content_type {
            req = req.header("content-type", ct);
        }
        if let Some(b) = &k.body {
            req = req.body(b.clone());
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        let problem: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let got = reported(&problem);
        let after_requests = sim.requests(sim_idx);
        let mut why = Vec::new();
        if status != k.status {
            why.push(format!("status {status}, expected {}", k.status));
        }
        for e in &k.expect {
            if !got.iter().any(|g| g == e) {
                why.push(format!("missing violation {e}"));
            }
        }
        if k.status >= 400
            && k.status != 404
            && k.status != 405
            && after_requests != before_requests
        {
            why.push("the upstream saw a refused request".into());
        }
        if k.status < 300 {
            let sent = k.body.as_ref().map_or(0, |b| b.len() as u64);
            let received = sim_body_bytes(&sim, sim_idx) - before_bytes;
            if received != sent {
                why.push(format!(
                    "upstream received {received} body bytes, client sent {sent}"
                ));
            }
        }
        if k.status == 400
            && k.expect.is_empty()
            && problem["type"] != "https://gatehouse.dev/problems/malformed-json"
        {
            why.push(format!("expected a malformed-json problem: {text}"));
        }
        if k.status == 415
            && problem["type"] != "https://gatehouse.dev/problems/unsupported-media-type"
        {
            why.push(format!(
                "expected an unsupported-media-type problem: {text}"
            ));
        }
        if !why.is_empty() {
            failures.push(format!(
                "#{i} {} {}: {} -> {got:?} {}",
                k.method,
                k.path,
                why.join("; "),
                text.chars().take(300).collect::<String>()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

fn sim_body_bytes(sim: &Sim, i: usize) -> u64 {
    let v: Value = serde_json::from_str(&http_get(sim.addrs[i], "/__sim/stats", "sim")).unwrap();
    v["body_bytes"].as_u64().unwrap()
}

#[tokio::test]
async fn malformed_json_reports_line_and_column_and_violations_are_capped() {
    let sim = example_estate();
    let (dir, key) = example_policies(&sim, |rel, t| {
        if rel == "apps/orders.yaml" {
            t.replace("max_violations: 20", "max_violations: 3")
        } else {
            t
        }
    });
    let gw = Gateway::start(dir.path(), &[]);
    let c = keyed_client(&key);
    let url = format!("{}/rest/orders/v1/orders", gw.url());
    let r = c
        .post(&url)
        .header("host", ORDERS)
        .header("content-type", "application/json")
        .body("{\n  \"customer_id\": 1,\n  \"lines\": [ oops ]\n}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["type"], "https://gatehouse.dev/problems/malformed-json");
    assert!(
        p["detail"].as_str().unwrap().contains("line 3 column"),
        "{p}"
    );
    let lines: Vec<Value> = (0..10)
        .map(|_| json!({ "sku": "bad", "quantity": 0 }))
        .collect();
    let r = c
        .post(&url)
        .header("host", ORDERS)
        .json(&json!({ "customer_id": 1, "lines": lines }))
        .send()
        .await
        .unwrap();
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["violations"].as_array().unwrap().len(), 3, "{p}");
}

#[tokio::test]
async fn monitor_mode_forwards_and_records_and_response_drift_is_caught() {
    let sim = example_estate();
    // Orders: requests monitored; getOrder responses enforced, the rest monitored.
    let (dir, key) = example_policies(&sim, |rel, t| {
        if rel == "apps/orders.yaml" {
            t.replace("request: enforce ", "request: monitor ").replace(
                "        submitOrder: { response: enforce }",
                "        getOrder: { response: enforce }",
            )
        } else {
            t
        }
    });
    let gw = Gateway::start(dir.path(), &[]);
    let c = keyed_client(&key);
    let o = format!("{}/rest/orders/v1", gw.url());
    let counters = |gw: &Gateway| {
        let p = gw.admin_json("/v1/policy");
        (
            p["contract"]["request_violations"].as_u64().unwrap(),
            p["contract"]["response_violations"].as_u64().unwrap(),
        )
    };
    let (req0, _) = counters(&gw);

    // Monitor: an invalid request is forwarded untouched and recorded.
    let before = sim.requests(0);
    let r = c
        .get(format!("{o}/orders?status=lost"))
        .header("host", ORDERS)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(sim.requests(0), before + 1);
    let r = c
        .post(format!("{o}/orders"))
        .header("host", ORDERS)
        .json(&json!({ "customer_id": "x", "lines": [] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "the app itself accepted it");
    // A monitored response is judged once it has been relayed, so its
    // count may land just after the client has the response.
    assert!(
        eventually(Duration::from_secs(2), || counters(&gw).1 == 1),
        "the app echoed the invalid create back: that response breaks the contract too"
    );
    let (req1, resp0) = counters(&gw);
    assert_eq!(req1, req0 + 2, "both invalid requests recorded");
    assert_eq!(resp0, 1);

    // Conforming responses: no response violations.
    assert_eq!(
        c.get(format!("{o}/orders/7"))
            .header("host", ORDERS)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(format!("{o}/orders?page_size=3"))
            .header("host", ORDERS)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(counters(&gw).1, resp0);

    // The app is redeployed with drift: listOrders (monitor) passes and is
    // recorded; getOrder (enforce) is replaced by a 502 problem.
    let cfg = reqwest::Client::new()
        .put(format!("{}/__sim/config", sim.url(0)))
        .json(&json!({ "nonconforming": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(cfg.status(), 200);
    let r = c
        .get(format!("{o}/orders?page_size=2"))
        .header("host", ORDERS)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["items"][0]["total"].is_string(),
        "forwarded untouched: {body}"
    );
    assert!(
        eventually(Duration::from_secs(2), || counters(&gw).1 == resp0 + 1),
        "monitor recorded the drift"
    );
    let r = c
        .get(format!("{o}/orders/7"))
        .header("host", ORDERS)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let p: Value = r.json().await.unwrap();
    assert_eq!(
        p["type"],
        "https://gatehouse.dev/problems/upstream-contract-violation"
    );
    assert_eq!(p["request_id"], rid.as_str());
    assert!(
        !p.to_string().contains("SO-0000007"),
        "the withheld body does not leak: {p}"
    );
    assert!(gw
        .log_text()
        .contains("upstream response violates the contract"));
}

#[tokio::test]
async fn bodies_over_64_kib_are_validated_before_the_upstream_sees_them() {
    let sim = Sim::one("approvals");
    let dir = PolicyDir::new();
    dir.write(
        "contracts/bulk.yaml",
        "openapi: 3.1.0\ninfo: { title: bulk, version: '1' }\npaths:\n  /approvals:\n    post:\n      operationId: bulk\n      requestBody:\n        required: true\n        content:\n          application/json:\n            schema:\n              type: object\n              required: [items]\n              properties:\n                items: { type: array, items: { type: object, required: [n], properties: { n: { type: integer } } } }\n      responses:\n        '201': { description: ok }\n",
    );
    dir.write(
        "a.yaml",
        &format!(
            "version: 1\napps:\n  - name: bulk\n    owner: o\n    hosts: [bulk.test]\n    max_request_body: 4MiB\n    upstream: {{ instances: [\"{}\"] }}\n    contract: {{ openapi: contracts/bulk.yaml, max_body: 2MiB }}\n",
            sim.url(0)
        ),
    );
    let gw = Gateway::start(dir.path(), &[]);
    let c = client();
    let items: Vec<Value> = (0..20_000)
        .map(|n| json!({ "n": n, "label": "item" }))
        .collect();
    let good = json!({ "items": items }).to_string();
    assert!(good.len() > 200_000);
    let r = c
        .post(format!("{}/approvals", gw.url()))
        .header("host", "bulk.test")
        .header("content-type", "application/json")
        .body(good.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        sim_body_bytes(&sim, 0),
        good.len() as u64,
        "forwarded byte for byte"
    );
    let mut bad: Value = serde_json::from_str(&good).unwrap();
    bad["items"][19_999]["n"] = json!("last");
    let r = c
        .post(format!("{}/approvals", gw.url()))
        .header("host", "bulk.test")
        .json(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let p: Value = r.json().await.unwrap();
    assert_eq!(reported(&p), vec!["body:/items/19999/n:type".to_string()]);
    // Over the validation cap: 413, unseen by the app.
    let huge =
        json!({ "items": (0..200_000).map(|n| json!({ "n": n })).collect::<Vec<_>>() }).to_string();
    assert!(huge.len() > 2 << 20);
    let r = c
        .post(format!("{}/approvals", gw.url()))
        .header("host", "bulk.test")
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(sim.requests(0), 1, "only the valid request reached the app");
}

#[tokio::test]
async fn random_bytes_and_deep_nesting_never_crash_or_stall_the_gateway() {
    let sim = example_estate();
    let (dir, key) = example_policies(&sim, |_, t| t);
    let gw = Gateway::start(dir.path(), &[]);
    let c = keyed_client(&key);
    let url = format!("{}/rest/orders/v1/orders", gw.url());
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut bodies: Vec<Vec<u8>> = (0..150)
        .map(|i| {
            let len = (next() % 4096) as usize + i % 3;
            (0..len).map(|_| (next() & 0xff) as u8).collect()
        })
        .collect();
    for depth in [64usize, 127, 128, 129, 1_000, 100_000] {
        bodies.push(format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes());
        bodies.push(
            format!(
                "{{\"customer_id\":1,\"lines\":{}{}}}",
                "[".repeat(depth),
                "]".repeat(depth)
            )
            .into_bytes(),
        );
        bodies.push("{\"a\":".repeat(depth).into_bytes());
    }
    for body in bodies {
        let started = std::time::Instant::now();
        let r = c
            .post(&url)
            .header("host", ORDERS)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(matches!(r.status().as_u16(), 400 | 413), "{}", r.status());
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "took {:?}",
            started.elapsed()
        );
    }
    assert_eq!(sim.requests(0), 0);
    let r = c
        .get(format!("{}/rest/orders/v1/orders/1", gw.url()))
        .header("host", ORDERS)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "still serving");
}

#[test]
fn broken_contracts_are_compile_errors_and_never_replace_the_active_bundle() {
    let sim = example_estate();
    let (dir, key) = example_policies(&sim, |_, t| t);
    let gw = Gateway::start(dir.path(), &[]);
    let v1 = gw.policy_version();
    let orders = std::fs::read_to_string(dir.path().join("contracts/orders.openapi.yaml")).unwrap();
    let breakages = [
        (
            "contracts/orders.openapi.yaml",
            orders.replace("openapi: 3.0.1", "openapi: 2.0"),
            "contracts/orders.openapi.yaml: /openapi: unsupported OpenAPI version `2.0`",
        ),
        (
            "contracts/orders.openapi.yaml",
            orders.replace(
                "'#/components/schemas/NewOrder'",
                "'#/components/schemas/NoSuchOrder'",
            ),
            "NoSuchOrder",
        ),
        (
            "contracts/orders.openapi.yaml",
            orders.replace(
                "'common.yaml#/components/responses/NotFound'",
                "'missing.yaml#/components/responses/NotFound'",
            ),
            "missing.yaml",
        ),
        (
            "contracts/orders.openapi.yaml",
            orders.replace(
                "customer_id: { type: integer, minimum: 1, example: 42 }",
                "customer_id: { type: whole-number }",
            ),
            "invalid schema",
        ),
        (
            "contracts/orders.openapi.yaml",
            orders.replace("paths:\n  /orders:", "paths:\n  /orders: [\n"),
            "invalid YAML",
        ),
    ];
    for (n, (file, text, expected)) in breakages.into_iter().enumerate() {
        let rejected = n as u64 + 1;
        dir.write(file, &text);
        let out = std::process::Command::new(bin("gatehouse"))
            .args(["policy", "lint"])
            .arg(dir.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{expected}: {stdout}");
        assert!(stdout.contains(expected), "`{expected}` not in:\n{stdout}");
        assert!(eventually(Duration::from_secs(5), || gw
            .admin_json("/v1/policy")["reloads"]["rejected"]
            .as_u64()
            == Some(rejected)));
        assert_eq!(gw.policy_version(), v1);
    }
    dir.write("contracts/orders.openapi.yaml", &orders);
    let resp = raw_http(
        gw.addr,
        format!("GET /rest/orders/v1/orders/3 HTTP/1.1\r\nHost: {ORDERS}\r\nx-api-key: {key}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
}
