//! The simulated apps: realistic JSON REST endpoints over deterministic data.
//!
//! Records are generated from their id (no shared store, no locks), so any
//! instance of an app answers the same for the same id, like replicas of one
//! database-backed app. Writes validate their JSON and echo the result.

use serde_json::{json, Map, Value};

/// A parsed request as the handlers see it.
pub struct Req<'a> {
    /// Path parameters in template order.
    pub params: Vec<&'a str>,
    /// Query string pairs (not decoded beyond `+`).
    pub query: Vec<(&'a str, &'a str)>,
    /// The body parsed as JSON (`None` when empty).
    pub body: Option<Value>,
}

impl Req<'_> {
    fn q(&self, key: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }
    fn page(&self) -> (u64, u64) {
        let page = self
            .q("page")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1)
            .max(1);
        let size = self
            .q("page_size")
            .and_then(|v| v.parse().ok())
            .unwrap_or(20)
            .clamp(1, 500);
        (page, size)
    }
    fn id(&self) -> Option<u64> {
        self.params.first().and_then(|p| p.parse().ok())
    }
}

/// A handler result: status and JSON body.
pub type Reply = (u16, Value);
type Handler = fn(&Req, &Ctx) -> Reply;

/// Behaviour knobs handlers need.
pub struct Ctx {
    /// Bytes of padding per record.
    pub pad: usize,
    /// Break the contract.
    pub drift: bool,
}

/// One endpoint of an app.
pub struct Endpoint {
    /// Method.
    pub method: &'static str,
    /// Template, `{x}` for parameters.
    pub template: &'static str,
    handler: Handler,
}

impl Endpoint {
    /// Match a path; returns parameters on success.
    pub fn matches<'p>(&self, method: &str, path: &'p str) -> Option<Vec<&'p str>> {
        if method != self.method && !(method == "HEAD" && self.method == "GET") {
            return None;
        }
        let mut params = Vec::new();
        let mut ps = path.trim_start_matches('/').split('/');
        for seg in self.template.trim_start_matches('/').split('/') {
            let p = ps.next()?;
            if seg.starts_with('{') {
                if p.is_empty() {
                    return None;
                }
                params.push(p);
            } else if seg != p {
                return None;
            }
        }
        ps.next().is_none().then_some(params)
    }

    /// Run the handler.
    pub fn call(&self, req: &Req, ctx: &Ctx) -> Reply {
        (self.handler)(req, ctx)
    }
}

macro_rules! ep {
    ($m:literal, $t:literal, $h:expr) => {
        Endpoint {
            method: $m,
            template: $t,
            handler: $h,
        }
    };
}

/// The endpoints of an app kind, or `None` for an unknown kind.
pub fn endpoints(kind: &str) -> Option<Vec<Endpoint>> {
    Some(match kind {
        // A Mendix order-management app (published REST service "orders v1").
        "orders" => vec![
            ep!("GET", "/rest/orders/v1/orders", list_orders),
            ep!("POST", "/rest/orders/v1/orders", create_order),
            ep!("GET", "/rest/orders/v1/orders/{id}", get_order),
            ep!("PUT", "/rest/orders/v1/orders/{id}", update_order),
            ep!("DELETE", "/rest/orders/v1/orders/{id}", delete_any),
            ep!("GET", "/rest/orders/v1/orders/{id}/lines", order_lines),
            ep!("POST", "/rest/orders/v1/orders/{id}/submit", submit_order),
            ep!("GET", "/rest/orders/v1/products", list_products),
            ep!("GET", "/rest/orders/v1/products/{sku}", get_product),
        ],
        // An OutSystems CRM app.
        "customers" => vec![
            ep!("GET", "/CRM/rest/v1/customers", list_customers),
            ep!("POST", "/CRM/rest/v1/customers", create_customer),
            ep!("GET", "/CRM/rest/v1/customers/{id}", get_customer),
            ep!("PUT", "/CRM/rest/v1/customers/{id}", update_customer),
            ep!("PATCH", "/CRM/rest/v1/customers/{id}", update_customer),
            ep!(
                "GET",
                "/CRM/rest/v1/customers/{id}/contacts",
                customer_contacts
            ),
            ep!(
                "POST",
                "/CRM/rest/v1/customers/{id}/contacts",
                create_contact
            ),
        ],
        // A Power Apps HR app behind a custom connector.
        "employees" => vec![
            ep!("GET", "/api/hr/employees", list_employees),
            ep!("POST", "/api/hr/employees", create_employee),
            ep!("GET", "/api/hr/employees/{id}", get_employee),
            ep!("PATCH", "/api/hr/employees/{id}", patch_employee),
            ep!("GET", "/api/hr/departments", list_departments),
            ep!("GET", "/api/hr/employees/{id}/leave-requests", list_leave),
            ep!(
                "POST",
                "/api/hr/employees/{id}/leave-requests",
                create_leave
            ),
        ],
        // An approval-workflow app (Retool-style internal tool).
        "approvals" => vec![
            ep!("GET", "/workflows", list_workflows),
            ep!("GET", "/workflows/{key}", get_workflow),
            ep!("GET", "/approvals", list_approvals),
            ep!("POST", "/approvals", create_approval),
            ep!("GET", "/approvals/{id}", get_approval),
            ep!("POST", "/approvals/{id}/approve", decide_approval),
            ep!("POST", "/approvals/{id}/reject", decide_approval),
            ep!("GET", "/approvals/{id}/history", approval_history),
        ],
        _ => return None,
    })
}

/// App kinds known to the simulator.
pub const KINDS: [&str; 4] = ["orders", "customers", "employees", "approvals"];

// ---- deterministic data -------------------------------------------------

const STATUSES: [&str; 5] = ["draft", "submitted", "approved", "shipped", "cancelled"];
const NAMES: [&str; 8] = [
    "Avery", "Blake", "Casey", "Devon", "Emery", "Finley", "Harper", "Jordan",
];
const SURNAMES: [&str; 8] = [
    "Jansen", "de Vries", "Bakker", "Visser", "Smit", "Meijer", "Mulder", "Bos",
];
const DEPARTMENTS: [&str; 5] = ["Finance", "Operations", "Sales", "IT", "People"];

fn pick<T: Copy>(xs: &[T], n: u64) -> T {
    xs[(n % xs.len() as u64) as usize]
}

fn pad(v: &mut Value, ctx: &Ctx) {
    if ctx.pad > 0 {
        if let Value::Object(m) = v {
            m.insert("notes".into(), Value::String("x".repeat(ctx.pad)));
        }
    }
}

fn date(n: u64) -> String {
    format!("2026-{:02}-{:02}", n % 12 + 1, n % 28 + 1)
}

fn order(id: u64, ctx: &Ctx) -> Value {
    let mut v = json!({
        "id": id,
        "number": format!("SO-{id:07}"),
        "customer_id": id % 997 + 1,
        "status": pick(&STATUSES, id),
        "currency": "EUR",
        "total": ((id * 7919) % 100_000) as f64 / 100.0,
        "line_count": id % 9 + 1,
        "created_at": format!("{}T09:{:02}:00Z", date(id), id % 60),
    });
    if ctx.drift {
        // Contract drift after a redeploy: renamed field, number as string, dropped field.
        let m = v.as_object_mut().expect("object literal");
        m.insert(
            "total".into(),
            Value::String(format!("{:.2}", ((id * 7919) % 100_000) as f64 / 100.0)),
        );
        if let Some(s) = m.remove("status") {
            m.insert("state".into(), s);
        }
        m.remove("currency");
    }
    pad(&mut v, ctx);
    v
}

fn customer(id: u64, ctx: &Ctx) -> Value {
    let mut v = json!({
        "id": id,
        "name": format!("{} {}", pick(&NAMES, id), pick(&SURNAMES, id / 8)),
        "email": format!("customer{id}@example.com"),
        "segment": pick(&["smb", "enterprise", "public"], id),
        "country": pick(&["NL", "BE", "DE", "FR"], id),
        "active": !id.is_multiple_of(11),
    });
    if ctx.drift {
        let m = v.as_object_mut().expect("object literal");
        m.insert("id".into(), Value::String(format!("C{id}")));
        m.remove("email");
    }
    pad(&mut v, ctx);
    v
}

fn employee(id: u64, ctx: &Ctx) -> Value {
    let mut v = json!({
        "id": format!("E{id:05}"),
        "given_name": pick(&NAMES, id),
        "family_name": pick(&SURNAMES, id / 3),
        "department": pick(&DEPARTMENTS, id),
        "manager_id": if id > 1 { Value::String(format!("E{:05}", id / 2)) } else { Value::Null },
        "start_date": date(id),
        "fte": if id.is_multiple_of(4) { 0.8 } else { 1.0 },
    });
    if ctx.drift {
        let m = v.as_object_mut().expect("object literal");
        m.insert("fte".into(), Value::String("full-time".into()));
        m.remove("department");
    }
    pad(&mut v, ctx);
    v
}

fn approval(id: u64, ctx: &Ctx) -> Value {
    let mut v = json!({
        "id": id,
        "workflow": pick(&["purchase", "travel", "access", "contract"], id),
        "status": pick(&["pending", "approved", "rejected"], id),
        "requested_by": format!("E{:05}", id % 500 + 1),
        "amount": (id * 31) % 25_000,
        "created_at": format!("{}T10:00:00Z", date(id)),
    });
    if ctx.drift {
        let m = v.as_object_mut().expect("object literal");
        m.insert("status".into(), Value::String("PENDING_REVIEW".into()));
        m.insert("amount".into(), Value::String("n/a".into()));
    }
    pad(&mut v, ctx);
    v
}

fn page_of(
    req: &Req,
    ctx: &Ctx,
    total: u64,
    make: fn(u64, &Ctx) -> Value,
    keep: impl Fn(&Value) -> bool,
) -> Reply {
    let (page, size) = req.page();
    let start = (page - 1) * size + 1;
    let items: Vec<Value> = (start..start + size * 6)
        .filter(|&id| id <= total)
        .map(|id| make(id, ctx))
        .filter(|v| keep(v))
        .take(size as usize)
        .collect();
    (
        200,
        json!({ "items": items, "page": page, "page_size": size, "total": total }),
    )
}

fn body_object(req: &Req) -> Result<Map<String, Value>, Reply> {
    match &req.body {
        Some(Value::Object(m)) => Ok(m.clone()),
        _ => Err((400, json!({ "error": "expected a JSON object body" }))),
    }
}

/// A created record: the full generated record for a new id, overlaid with
/// the fields the client sent (like an app that stores and echoes them).
fn created(req: &Req, mut record: Value) -> Reply {
    match body_object(req) {
        Ok(m) => {
            if let Value::Object(r) = &mut record {
                for (k, v) in m {
                    if k != "id" {
                        r.insert(k, v);
                    }
                }
            }
            (201, record)
        }
        Err(e) => e,
    }
}

fn not_found() -> Reply {
    (404, json!({ "error": "not found" }))
}

fn new_id() -> u64 {
    rand::random::<u32>() as u64 + 1_000_000
}

fn list_orders(req: &Req, ctx: &Ctx) -> Reply {
    let status = req.q("status").map(str::to_string);
    page_of(req, ctx, 50_000, order, move |o| {
        status.as_deref().is_none_or(|s| o["status"] == s)
    })
}
fn create_order(req: &Req, _: &Ctx) -> Reply {
    let mut o = order(
        new_id(),
        &Ctx {
            pad: 0,
            drift: false,
        },
    );
    o["status"] = json!("draft");
    created(req, o)
}
fn get_order(req: &Req, ctx: &Ctx) -> Reply {
    match req.id() {
        Some(id) if (1..=50_000).contains(&id) => (200, order(id, ctx)),
        _ => not_found(),
    }
}
fn update_order(req: &Req, ctx: &Ctx) -> Reply {
    let Some(id) = req.id() else {
        return not_found();
    };
    match body_object(req) {
        Ok(m) => {
            let mut o = order(id, ctx);
            if let Value::Object(om) = &mut o {
                om.extend(m);
            }
            (200, o)
        }
        Err(e) => e,
    }
}
fn delete_any(req: &Req, _: &Ctx) -> Reply {
    match req.id() {
        Some(_) => (204, Value::Null),
        None => not_found(),
    }
}
fn order_lines(req: &Req, ctx: &Ctx) -> Reply {
    let Some(id) = req.id() else {
        return not_found();
    };
    let lines: Vec<Value> = (1..=id % 9 + 1)
        .map(|n| {
            let mut l = json!({ "line": n, "sku": format!("SKU-{:05}", (id * n) % 2000), "quantity": n, "unit_price": 9.95 });
            pad(&mut l, ctx);
            l
        })
        .collect();
    (200, json!({ "order_id": id, "lines": lines }))
}
fn submit_order(req: &Req, ctx: &Ctx) -> Reply {
    let Some(id) = req.id() else {
        return not_found();
    };
    let mut o = order(id, ctx);
    o["status"] = json!("submitted");
    (202, o)
}
fn product(n: u64, ctx: &Ctx) -> Value {
    let mut v = json!({ "sku": format!("SKU-{n:05}"), "name": format!("Product {n}"), "price": (n % 500) as f64 + 0.95, "in_stock": !n.is_multiple_of(7) });
    pad(&mut v, ctx);
    v
}
fn list_products(req: &Req, ctx: &Ctx) -> Reply {
    page_of(req, ctx, 2_000, product, |_| true)
}
fn get_product(req: &Req, ctx: &Ctx) -> Reply {
    match req
        .params
        .first()
        .and_then(|s| s.strip_prefix("SKU-"))
        .and_then(|n| n.parse().ok())
    {
        Some(n) => (200, product(n, ctx)),
        None => not_found(),
    }
}

fn list_customers(req: &Req, ctx: &Ctx) -> Reply {
    let q = req.q("q").map(str::to_ascii_lowercase);
    page_of(req, ctx, 20_000, customer, move |c| {
        q.as_deref().is_none_or(|q| {
            c["name"]
                .as_str()
                .is_some_and(|n| n.to_ascii_lowercase().contains(q))
        })
    })
}
fn create_customer(req: &Req, _: &Ctx) -> Reply {
    created(
        req,
        customer(
            new_id(),
            &Ctx {
                pad: 0,
                drift: false,
            },
        ),
    )
}
fn get_customer(req: &Req, ctx: &Ctx) -> Reply {
    match req.id() {
        Some(id) if (1..=20_000).contains(&id) => (200, customer(id, ctx)),
        _ => not_found(),
    }
}
fn update_customer(req: &Req, ctx: &Ctx) -> Reply {
    let Some(id) = req.id() else {
        return not_found();
    };
    match body_object(req) {
        Ok(m) => {
            let mut c = customer(id, ctx);
            if let Value::Object(cm) = &mut c {
                cm.extend(m);
            }
            (200, c)
        }
        Err(e) => e,
    }
}
fn customer_contacts(req: &Req, ctx: &Ctx) -> Reply {
    let Some(id) = req.id() else {
        return not_found();
    };
    let contacts: Vec<Value> = (1..=id % 4 + 1)
        .map(|n| {
            let mut c = json!({ "id": id * 10 + n, "name": pick(&NAMES, id + n), "role": pick(&["buyer", "finance", "legal"], n) });
            pad(&mut c, ctx);
            c
        })
        .collect();
    (200, json!({ "customer_id": id, "items": contacts }))
}
fn create_contact(req: &Req, _: &Ctx) -> Reply {
    let id = req.id().unwrap_or(1);
    created(
        req,
        json!({ "id": id * 10 + 9, "name": "New contact", "role": "buyer" }),
    )
}

fn list_employees(req: &Req, ctx: &Ctx) -> Reply {
    let dept = req.q("department").map(str::to_string);
    page_of(req, ctx, 5_000, employee, move |e| {
        dept.as_deref().is_none_or(|d| e["department"] == d)
    })
}
fn create_employee(req: &Req, _: &Ctx) -> Reply {
    created(
        req,
        employee(
            new_id(),
            &Ctx {
                pad: 0,
                drift: false,
            },
        ),
    )
}
fn employee_id(req: &Req) -> Option<u64> {
    req.params
        .first()
        .and_then(|p| p.strip_prefix('E'))
        .and_then(|n| n.parse().ok())
}
fn get_employee(req: &Req, ctx: &Ctx) -> Reply {
    match employee_id(req) {
        Some(id) if (1..=5_000).contains(&id) => (200, employee(id, ctx)),
        _ => not_found(),
    }
}
fn patch_employee(req: &Req, ctx: &Ctx) -> Reply {
    let Some(id) = employee_id(req) else {
        return not_found();
    };
    match body_object(req) {
        Ok(m) => {
            let mut e = employee(id, ctx);
            if let Value::Object(em) = &mut e {
                em.extend(m);
            }
            (200, e)
        }
        Err(e) => e,
    }
}
fn list_departments(_: &Req, _: &Ctx) -> Reply {
    let items: Vec<Value> = DEPARTMENTS
        .iter()
        .enumerate()
        .map(|(i, d)| json!({ "id": i + 1, "name": d, "cost_center": format!("CC-{}", 1000 + i) }))
        .collect();
    (200, json!({ "items": items }))
}
fn list_leave(req: &Req, _: &Ctx) -> Reply {
    let Some(id) = employee_id(req) else {
        return not_found();
    };
    let items: Vec<Value> = (0..id % 3)
        .map(|n| json!({ "id": id * 100 + n, "from": date(id + n), "days": n + 1, "status": "approved" }))
        .collect();
    (
        200,
        json!({ "employee_id": format!("E{id:05}"), "items": items }),
    )
}
fn create_leave(req: &Req, _: &Ctx) -> Reply {
    created(
        req,
        json!({ "id": new_id(), "status": "requested", "from": "2026-01-01", "days": 1 }),
    )
}

fn list_workflows(_: &Req, _: &Ctx) -> Reply {
    let items: Vec<Value> = ["purchase", "travel", "access", "contract"]
        .iter()
        .map(|k| json!({ "key": k, "steps": 2, "sla_hours": 48 }))
        .collect();
    (200, json!({ "items": items }))
}
fn get_workflow(req: &Req, _: &Ctx) -> Reply {
    match req.params.first() {
        Some(k) if ["purchase", "travel", "access", "contract"].contains(k) => (
            200,
            json!({ "key": k, "steps": [ { "name": "manager" }, { "name": "finance" } ], "sla_hours": 48 }),
        ),
        _ => not_found(),
    }
}
fn list_approvals(req: &Req, ctx: &Ctx) -> Reply {
    let status = req.q("status").map(str::to_string);
    page_of(req, ctx, 10_000, approval, move |a| {
        status.as_deref().is_none_or(|s| a["status"] == s)
    })
}
fn create_approval(req: &Req, _: &Ctx) -> Reply {
    let mut a = approval(
        new_id(),
        &Ctx {
            pad: 0,
            drift: false,
        },
    );
    a["status"] = json!("pending");
    created(req, a)
}
fn get_approval(req: &Req, ctx: &Ctx) -> Reply {
    match req.id() {
        Some(id) if (1..=10_000).contains(&id) => (200, approval(id, ctx)),
        _ => not_found(),
    }
}
fn decide_approval(req: &Req, ctx: &Ctx) -> Reply {
    let Some(id) = req.id() else {
        return not_found();
    };
    let mut a = approval(id, ctx);
    let decided = if req
        .body
        .as_ref()
        .and_then(|b| b.get("approve"))
        .and_then(Value::as_bool)
        == Some(false)
    {
        "rejected"
    } else {
        "approved"
    };
    a["status"] = json!(decided);
    (200, a)
}
fn approval_history(req: &Req, _: &Ctx) -> Reply {
    let Some(id) = req.id() else {
        return not_found();
    };
    (
        200,
        json!({ "approval_id": id, "events": [ { "at": format!("{}T10:00:00Z", date(id)), "event": "created" } ] }),
    )
}
