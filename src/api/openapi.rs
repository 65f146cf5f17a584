//! The API's contract: the OpenAPI 3.1 document, generated from the handlers' own annotations
//! (`#[utoipa::path]` beside each handler, collected by the routers that serve them, so a route
//! cannot be served without being described), and served at `/openapi.json` with a browsable
//! page at `/docs`.
//!
//! Handlers name only the error codes of their own logic (`x-error-codes`). This module adds
//! the ones every route of a kind can answer — authentication and rate limits under `/v1`, body,
//! path and query rejections where a route takes them, `forbidden` where only some roles may
//! call it, and the 5xx of a dependency — and turns each status's codes into a response whose
//! schema names exactly those codes. [`CATALOGUE`] is every code the API answers, with its
//! status and meaning; `docs/openapi.json` is the document, committed, and a test keeps it equal
//! to what the code generates.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use axum::response::{Html, IntoResponse, Response};
use serde_json::{Map, Value, json};
use utoipa::openapi::OpenApi;

/// One error code: the status it comes with and what it means.
#[derive(Clone, Copy, Debug)]
pub struct ErrorCode {
    pub code: &'static str,
    pub status: u16,
    pub meaning: &'static str,
}

const fn code(code: &'static str, status: u16, meaning: &'static str) -> ErrorCode {
    ErrorCode {
        code,
        status,
        meaning,
    }
}

/// Every error code the API answers. A code may come with two statuses (`invalid_query`: an
/// unparsable query is 400, a control character in a value 422).
pub const CATALOGUE: &[ErrorCode] = &[
    // The request's form.
    code("malformed_json", 400, "the body is not valid JSON"),
    code("unreadable_body", 400, "the body could not be read"),
    code("invalid_path", 400, "a path parameter is not of its type"),
    code("invalid_query", 400, "the query string does not parse"),
    code(
        "invalid_query",
        422,
        "a query value holds a control character",
    ),
    code(
        "invalid_body",
        422,
        "the body lacks a field, has an unknown one, or one of the wrong type",
    ),
    code(
        "unsupported_media_type",
        415,
        "the body is not `application/json`",
    ),
    code(
        "payload_too_large",
        413,
        "the body is larger than the server accepts",
    ),
    code(
        "missing_idempotency_key",
        400,
        "the `X-Idempotency-Key` header is required",
    ),
    code(
        "invalid_idempotency_key",
        400,
        "`X-Idempotency-Key` must be 1 to 255 visible ASCII characters",
    ),
    code(
        "invalid_if_match",
        400,
        "`If-Match` must be the order's version number",
    ),
    code(
        "invalid_last_event_id",
        400,
        "`Last-Event-ID` must be an id this stream sent",
    ),
    // Who calls.
    code(
        "missing_token",
        401,
        "no `Authorization: Bearer` token was sent",
    ),
    code(
        "invalid_token",
        401,
        "the token is malformed or its signature is wrong",
    ),
    code("token_expired", 401, "the token has expired"),
    code("token_not_yet_valid", 401, "the token is not valid yet"),
    code("unknown_subject", 401, "the token's subject does not exist"),
    code(
        "subject_role_mismatch",
        403,
        "the token's subject exists in another role",
    ),
    code(
        "forbidden",
        403,
        "the caller's role, or its identity, may not do this",
    ),
    code(
        "rate_limited",
        429,
        "over the rate limit; retry after `Retry-After` seconds",
    ),
    // What the request names.
    code(
        "not_found",
        404,
        "no such resource (or not visible to the caller)",
    ),
    code("invalid_field", 422, "a field's value is out of its bounds"),
    code(
        "invalid_coordinates",
        422,
        "lat must be in [-90, 90] and lon in [-180, 180]",
    ),
    code(
        "invalid_location",
        422,
        "a location outside the indexable range (lat within ±85.05112878)",
    ),
    code(
        "outside_markets",
        422,
        "the position is outside every active market",
    ),
    code("invalid_radius", 422, "radius_km out of its bounds"),
    code("invalid_limit", 422, "limit out of its bounds"),
    code(
        "invalid_cursor",
        422,
        "cursor is not a next_cursor this listing returned",
    ),
    code(
        "invalid_status",
        422,
        "status is not an order state, `active` or `all`",
    ),
    code(
        "invalid_cuisine",
        422,
        "cuisine is longer than 50 characters",
    ),
    code(
        "invalid_owner",
        422,
        "owner_user_id is not a user of the restaurant role",
    ),
    code("invalid_batch", 422, "a batch holds 1 to 1,000 updates"),
    code(
        "recorded_at_in_future",
        422,
        "recorded_at is more than a minute ahead",
    ),
    code(
        "recorded_at_too_old",
        422,
        "recorded_at is more than 24 hours old",
    ),
    code("email_taken", 409, "a user with this email exists"),
    code("driver_exists", 409, "the user is already a driver"),
    code("market_exists", 409, "a market with this slug exists"),
    code(
        "invalid_market",
        422,
        "a market field is out of its bounds (slug, name, time zone, centre, radius)",
    ),
    // Orders.
    code("unknown_restaurant", 422, "the restaurant does not exist"),
    code("empty_cart", 422, "an order needs at least one item"),
    code("too_many_items", 422, "too many lines in one order"),
    code("invalid_quantity", 422, "a quantity is out of its bounds"),
    code(
        "invalid_address",
        422,
        "delivery_address.line1 is empty or too long",
    ),
    code(
        "invalid_payment_method",
        422,
        "payment_method is not a provider token (`pm_…`)",
    ),
    code("unknown_menu_item", 422, "a menu item does not exist"),
    code(
        "item_not_on_menu",
        422,
        "a menu item belongs to another restaurant",
    ),
    code(
        "out_of_delivery_range",
        422,
        "the address is beyond the restaurant's delivery radius",
    ),
    code(
        "total_too_large",
        422,
        "the order's total is over the limit",
    ),
    code(
        "idempotency_key_reused",
        422,
        "the idempotency key was used for a different request",
    ),
    code(
        "restaurant_closed",
        409,
        "the restaurant is not taking orders",
    ),
    code("item_unavailable", 409, "a menu item is not available now"),
    code(
        "invalid_transition",
        409,
        "the order's state does not allow this action now",
    ),
    code(
        "invalid_state",
        409,
        "the order's state does not allow this change now",
    ),
    code(
        "conflict",
        409,
        "the order changed since the version in `If-Match`",
    ),
    code(
        "payment_not_settled",
        409,
        "the order's payment is not settled",
    ),
    // Offers.
    code("offer_expired", 409, "the offer has expired"),
    code(
        "offer_already_accepted",
        409,
        "the offer was already accepted",
    ),
    code("offer_declined", 409, "the offer was declined"),
    code("offer_cancelled", 409, "the offer was withdrawn"),
    code(
        "driver_at_capacity",
        409,
        "the driver carries as many orders as allowed",
    ),
    code(
        "cannot_batch",
        409,
        "the order does not batch with the one carried",
    ),
    code(
        "order_unavailable",
        409,
        "the order no longer needs a driver",
    ),
    // Refunds.
    code("invalid_reason", 422, "reason must be 1 to 500 characters"),
    code("invalid_amount", 422, "amount_cents must be positive"),
    code(
        "refund_too_large",
        422,
        "more than the captured amount less what is refunded or pending",
    ),
    code(
        "payment_not_captured",
        409,
        "the order's payment was not captured",
    ),
    code(
        "nothing_to_refund",
        409,
        "everything captured is refunded or pending",
    ),
    // Dependencies.
    code(
        "timeout",
        503,
        "the request took longer than the server allows; retry",
    ),
    code(
        "database_unavailable",
        503,
        "the database is unavailable; retry",
    ),
    code(
        "cache_unavailable",
        503,
        "a backing service is unavailable; retry",
    ),
    code(
        "jobs_unavailable",
        503,
        "the workflow could not be scheduled; nothing changed; retry",
    ),
    code(
        "rate_limiter_unavailable",
        503,
        "the rate limiter is unavailable and this route fails closed; retry",
    ),
    code("not_ready", 503, "a dependency is unreachable"),
    code(
        "internal_error",
        500,
        "a bug; it has been logged with the request id",
    ),
];

/// The roles a token can carry, as the document names them.
const ROLES: [&str; 4] = ["customer", "restaurant", "driver", "operator"];

/// The name of the bearer security scheme.
pub const BEARER: &str = "bearer";

/// The document, as served and committed.
pub fn document() -> &'static Value {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    DOCUMENT.get_or_init(|| complete(super::described_routes().into_openapi()))
}

/// The document as pretty JSON with a final newline: `docs/openapi.json` holds exactly this.
pub fn document_text() -> String {
    let mut text = serde_json::to_string_pretty(document()).unwrap_or_default();
    text.push('\n');
    text
}

/// `GET /openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json", body = Object)),
)]
pub(crate) async fn openapi_json() -> Response {
    axum::Json(document()).into_response()
}

/// `GET /docs`: the document, browsable (Scalar's page, which loads its script from the
/// jsDelivr CDN; the document itself is embedded).
#[utoipa::path(
    get,
    path = "/docs",
    operation_id = "docs",
    tag = "meta",
    responses((status = 200, description = "A browsable page of this API's document", content_type = "text/html", body = String)),
)]
pub(crate) async fn docs() -> Response {
    static PAGE: OnceLock<String> = OnceLock::new();
    let page = PAGE.get_or_init(|| {
        utoipa_scalar::Scalar::new(document().clone())
            .title("courier API")
            .to_html()
    });
    Html(page.as_str()).into_response()
}

/// Adds what the handlers leave to this module: the bearer scheme, the error responses of
/// every operation, the roles in its description and the rate-limit headers.
fn complete(mut openapi: OpenApi) -> Value {
    openapi.info.title = "courier".to_owned();
    openapi.info.description = Some(DESCRIPTION.to_owned());
    let mut doc = serde_json::to_value(&openapi).unwrap_or_default();
    let schemes = json!({
        BEARER: {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "A token naming a role and a subject (`just token ROLE SUBJECT` mints one in development). Each operation lists the roles it accepts as this scheme's scopes.",
        }
    });
    let components = doc
        .as_object_mut()
        .map(|d| d.entry("components").or_insert_with(|| json!({})));
    if let Some(Value::Object(components)) = components {
        components.insert("securitySchemes".to_owned(), schemes);
        let schemas = components.entry("schemas").or_insert_with(|| json!({}));
        if let Value::Object(schemas) = schemas {
            schemas.insert("Error".to_owned(), error_schema());
        }
    }
    if let Some(Value::Object(paths)) = doc.get_mut("paths") {
        for (path, item) in paths.iter_mut() {
            let Value::Object(item) = item else { continue };
            for operation in item.values_mut() {
                if let Value::Object(operation) = operation {
                    complete_operation(path, operation);
                }
            }
        }
    }
    sorted(doc)
}

const DESCRIPTION: &str = "The REST API of courier, a food-delivery marketplace: customers place orders, restaurants confirm and prepare them, drivers report positions and deliver, operators run the market.\n\nEvery error answers `{\"error\":{\"code\":\"…\",\"message\":\"…\"},\"request_id\":\"…\"}`; each operation lists the codes it can answer under each status. Routes under `/v1` take a bearer token; they are rate limited per caller and route class, and answer `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` headers (429 `rate_limited` with `Retry-After` when over). Lists page with `cursor` (pass back the `next_cursor` of the previous page; absent on the last page).";

/// The shape of every error body.
fn error_schema() -> Value {
    json!({
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string", "description": "Stable and machine-readable."},
                    "message": {"type": "string", "description": "For people; may change."},
                },
            },
            "request_id": {"type": "string", "description": "The id of the request in the server's logs."},
        },
    })
}

/// The codes an operation answers besides its handler's own.
fn implied_codes(
    path: &str,
    operation: &Map<String, Value>,
    roles: &[String],
) -> Vec<&'static str> {
    let mut codes = vec!["internal_error", "timeout"];
    let parameters: Vec<&str> = operation
        .get("parameters")
        .and_then(Value::as_array)
        .map(|ps| {
            ps.iter()
                .filter_map(|p| p.get("in").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    if parameters.contains(&"path") {
        codes.push("invalid_path");
    }
    if parameters.contains(&"query") {
        codes.push("invalid_query");
    }
    if operation.contains_key("requestBody") {
        codes.extend([
            "malformed_json",
            "unreadable_body",
            "invalid_body",
            "unsupported_media_type",
            "payload_too_large",
        ]);
    }
    if path.starts_with("/v1/") {
        codes.extend([
            "missing_token",
            "invalid_token",
            "token_expired",
            "token_not_yet_valid",
            "unknown_subject",
            "subject_role_mismatch",
            "rate_limited",
            "database_unavailable",
            "cache_unavailable",
        ]);
        if roles.len() < ROLES.len() {
            codes.push("forbidden");
        }
    }
    codes
}

/// The roles of an operation's bearer requirement, if it has one.
fn roles_of(operation: &Map<String, Value>) -> Option<Vec<String>> {
    let requirement = operation.get("security")?.as_array()?.first()?;
    let scopes = requirement.get(BEARER)?.as_array()?;
    Some(
        scopes
            .iter()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect(),
    )
}

fn complete_operation(path: &str, operation: &mut Map<String, Value>) {
    let roles = roles_of(operation);
    let own: Vec<String> = operation
        .remove("x-error-codes")
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    let mut codes: BTreeSet<&str> = implied_codes(path, operation, roles.as_deref().unwrap_or(&[]))
        .into_iter()
        .collect();
    codes.extend(own.iter().map(String::as_str));
    if let Some(roles) = &roles {
        let line = format!("Roles: {}.", roles.join(", "));
        let description = match operation.get("description").and_then(Value::as_str) {
            Some(d) if !d.is_empty() => format!("{d}\n\n{line}"),
            _ => line,
        };
        operation.insert("description".to_owned(), Value::String(description));
    }
    let mut by_status: BTreeMap<u16, Vec<&ErrorCode>> = BTreeMap::new();
    for code in &codes {
        for entry in CATALOGUE.iter().filter(|e| e.code == *code) {
            by_status.entry(entry.status).or_default().push(entry);
        }
    }
    let responses = operation.entry("responses").or_insert_with(|| json!({}));
    let Value::Object(responses) = responses else {
        return;
    };
    let limited = path.starts_with("/v1/");
    for (status, entries) in by_status {
        let description = entries
            .iter()
            .map(|e| format!("`{}`: {}", e.code, e.meaning))
            .collect::<Vec<_>>()
            .join("; ");
        let names: Vec<&str> = entries.iter().map(|e| e.code).collect();
        let mut response = json!({
            "description": description,
            "content": {"application/json": {"schema": {
                "allOf": [
                    {"$ref": "#/components/schemas/Error"},
                    {"type": "object", "properties": {"error": {"type": "object", "properties": {"code": {"enum": names}}}}},
                ],
            }}},
        });
        if status == 429 {
            response["headers"] = json!({
                "Retry-After": {"description": "Seconds until a retry can succeed.", "schema": {"type": "integer"}},
            });
        }
        responses.insert(status.to_string(), response);
    }
    if limited {
        for (status, response) in responses.iter_mut() {
            if status.starts_with('2') {
                response["headers"] = rate_limit_headers();
            }
        }
    }
}

fn rate_limit_headers() -> Value {
    json!({
        "RateLimit-Limit": {"description": "Requests the caller's budget holds for this route class.", "schema": {"type": "integer"}},
        "RateLimit-Remaining": {"description": "Requests left in the budget now.", "schema": {"type": "integer"}},
        "RateLimit-Reset": {"description": "Seconds until the budget is full again.", "schema": {"type": "integer"}},
    })
}

/// `value` with every object's keys in order, so the document reads the same on every run.
fn sorted(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let entries: BTreeMap<String, Value> =
                map.into_iter().map(|(k, v)| (k, sorted(v))).collect();
            Value::Object(entries.into_iter().collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_one_meaning_per_status() {
        let mut seen = BTreeSet::new();
        for entry in CATALOGUE {
            assert!(
                seen.insert((entry.code, entry.status)),
                "{} is listed twice with {}",
                entry.code,
                entry.status
            );
            assert!(
                (400..600).contains(&entry.status),
                "{} has status {}",
                entry.code,
                entry.status
            );
        }
    }

    #[test]
    fn an_operation_gets_the_codes_of_its_kind_grouped_by_status() {
        let mut operation: Map<String, Value> = serde_json::from_value(json!({
            "parameters": [{"in": "path", "name": "id"}],
            "requestBody": {},
            "security": [{"bearer": ["operator"]}],
            "x-error-codes": ["not_found", "invalid_query"],
            "responses": {"200": {"description": "ok"}},
        }))
        .expect("an operation");
        complete_operation("/v1/things/{id}", &mut operation);
        assert!(!operation.contains_key("x-error-codes"));
        let codes = |status: &str| -> Vec<String> {
            serde_json::from_value(
                operation["responses"][status]["content"]["application/json"]["schema"]["allOf"][1]
                    ["properties"]["error"]["properties"]["code"]["enum"]
                    .clone(),
            )
            .expect("codes")
        };
        assert_eq!(codes("404"), ["not_found"]);
        assert_eq!(codes("403"), ["forbidden", "subject_role_mismatch"]);
        assert_eq!(
            codes("400"),
            [
                "invalid_path",
                "invalid_query",
                "malformed_json",
                "unreadable_body"
            ]
        );
        assert_eq!(codes("422"), ["invalid_body", "invalid_query"]);
        assert!(operation["responses"]["429"]["headers"]["Retry-After"].is_object());
        assert!(operation["responses"]["200"]["headers"]["RateLimit-Remaining"].is_object());
        assert_eq!(operation["description"], "Roles: operator.");
    }

    #[test]
    fn routes_outside_v1_carry_no_auth_or_rate_limit_codes() {
        let mut operation: Map<String, Value> = serde_json::from_value(json!({
            "responses": {"200": {"description": "ok"}},
        }))
        .expect("an operation");
        complete_operation("/healthz", &mut operation);
        let responses = operation["responses"].as_object().expect("responses");
        assert!(!responses.contains_key("401") && !responses.contains_key("429"));
        assert!(responses["200"].get("headers").is_none());
        assert!(responses.contains_key("500") && responses.contains_key("503"));
    }
}
