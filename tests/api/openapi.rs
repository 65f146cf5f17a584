//! The API's contract: the committed `docs/openapi.json` is what the code generates, the server
//! serves it and a page for it, and the document lists exactly the routes the router serves.

use std::collections::BTreeSet;
use std::path::Path;

use courier::api::openapi;
use courier::auth::Role;

use crate::helpers::{cast, insert_driver, insert_user, spawn_app};

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// `(method, path)` of every operation in `document`.
fn operations(document: &serde_json::Value) -> BTreeSet<(String, String)> {
    document["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .expect("a path item")
                .keys()
                .filter(|m| METHODS.contains(&m.as_str()))
                .map(move |m| (m.clone(), path.clone()))
        })
        .collect()
}

#[test]
fn the_committed_document_is_what_the_code_generates() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == openapi::document_text(),
        "docs/openapi.json is not what the code generates: run `cargo run -q -- openapi > docs/openapi.json` and review the change"
    );
}

#[test]
fn the_document_is_openapi_3_1_with_unique_operation_ids_and_known_error_codes() {
    let document = openapi::document();
    assert_eq!(document["openapi"], "3.1.0");
    let mut ids = BTreeSet::new();
    let known: BTreeSet<&str> = openapi::CATALOGUE.iter().map(|c| c.code).collect();
    for (method, path) in operations(document) {
        let operation = &document["paths"][&path][&method];
        let id = operation["operationId"].as_str().expect("an operationId");
        assert!(ids.insert(id.to_owned()), "{id} is used twice");
        let responses = operation["responses"].as_object().expect("responses");
        assert!(
            responses.keys().any(|s| s.starts_with('2')),
            "{method} {path} documents no success"
        );
        for (status, response) in responses {
            if status.starts_with('2') {
                continue;
            }
            let codes = response["content"]["application/json"]["schema"]["allOf"][1]["properties"]
                ["error"]["properties"]["code"]["enum"]
                .as_array()
                .unwrap_or_else(|| panic!("{method} {path} {status} names no codes"));
            for code in codes {
                let code = code.as_str().expect("a code");
                assert!(known.contains(code), "{method} {path}: unknown code {code}");
            }
        }
        if path.starts_with("/v1/") {
            let roles = operation["security"][0][openapi::BEARER]
                .as_array()
                .unwrap_or_else(|| panic!("{method} {path} names no roles"));
            assert!(!roles.is_empty(), "{method} {path} names no roles");
            assert!(responses.contains_key("401") && responses.contains_key("429"));
        }
    }
}

/// A path with every `{parameter}` filled in.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|segment| {
            if segment.starts_with('{') {
                "1"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn the_document_lists_exactly_the_routes_the_router_serves() {
    let app = spawn_app().await;
    let document: serde_json::Value = app
        .client
        .get(format!("{}/openapi.json", app.address))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        &document,
        openapi::document(),
        "/openapi.json serves the document"
    );
    let documented = operations(&document);
    let paths: BTreeSet<&String> = documented.iter().map(|(_, p)| p).collect();
    for path in paths {
        let url = format!("{}{}", app.address, concrete(path));
        for method in METHODS {
            let response = app
                .client
                .request(method.to_uppercase().parse().expect("a method"), &url)
                .send()
                .await
                .expect("request");
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            if documented.contains(&(method.to_owned(), path.clone())) {
                assert!(
                    status != 405 && !body.contains("no route for"),
                    "documented {method} {path} is not served: {status} {body}"
                );
                if path.starts_with("/v1/") {
                    assert_eq!(status, 401, "{method} {path} without a token: {body}");
                }
            } else {
                assert_eq!(
                    status, 405,
                    "{method} {path} is served but not documented: {body}"
                );
            }
        }
    }
    let response = app
        .client
        .get(format!("{}/v1/not-a-route", app.address))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn the_docs_page_shows_the_document() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(format!("{}/docs", app.address))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    assert!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/html"))
    );
    let page = response.text().await.expect("a page");
    assert!(page.contains("courier API") && page.contains("/v1/orders/{id}/refunds"));
}

/// A role the document does not list for an operation is refused it: with real ids (an order
/// placed by the cast's customer, its restaurant and menu item, a driver, a user), no request
/// of an unlisted role succeeds.
#[tokio::test]
async fn no_role_the_document_leaves_out_can_call_an_operation() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let order = app.placed_order(&cast).await;
    let driver = insert_driver(&app.db).await;
    let operator = insert_user(&app.db, "operator").await;
    let subjects = [
        ("customer", Role::Customer, cast.customer),
        ("restaurant", Role::Restaurant, cast.restaurant),
        ("driver", Role::Driver, driver),
        ("operator", Role::Operator, operator),
    ];
    let document = openapi::document();
    let mut checked = 0;
    for (method, path) in operations(document) {
        let Some(roles) =
            document["paths"][&path][&method]["security"][0][openapi::BEARER].as_array()
        else {
            continue;
        };
        let url = path.replace("{item_id}", &cast.burger.to_string()).replace(
            "{id}",
            &match path.split('/').nth(2) {
                Some("orders") => order,
                Some("restaurants") => cast.restaurant,
                Some("drivers") => driver,
                Some("users") => cast.customer,
                _ => 1,
            }
            .to_string(),
        );
        for (name, role, subject) in subjects {
            if roles.iter().any(|r| r == name) {
                continue;
            }
            let response = app
                .client
                .request(
                    method.to_uppercase().parse().expect("a method"),
                    format!("{}{url}", app.address),
                )
                .bearer_auth(app.token(role, subject))
                .header("x-idempotency-key", format!("roles-{checked}"))
                .json(&serde_json::json!({}))
                .send()
                .await
                .expect("request");
            let status = response.status();
            assert!(
                status.is_client_error(),
                "{name} may call {method} {path}, which does not list it: {status}"
            );
            checked += 1;
        }
    }
    assert!(checked > 50, "only {checked} refusals checked");
}
