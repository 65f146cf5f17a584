//! Every error leaves in one JSON shape: `{"error":{"code","message"},"request_id"}`.

use courier::auth::Role;

use crate::helpers::{OPERATOR, TEST_MAX_BODY_BYTES, assert_error, spawn_app};

#[tokio::test]
async fn malformed_json_is_400() {
    let app = spawn_app().await;
    let response = app
        .request(reqwest::Method::POST, "/v1/users")
        .bearer_auth(app.token(Role::Operator, OPERATOR))
        .header("content-type", "application/json")
        .body("{\"role\": \"customer\",")
        .send()
        .await
        .expect("sent");
    assert_error(response, 400, "malformed_json").await;
}

#[tokio::test]
async fn wrong_types_and_unknown_fields_are_422() {
    let app = spawn_app().await;
    for body in [
        serde_json::json!({"role": "customer", "name": 42, "email": "a@b.co"}),
        serde_json::json!({"role": "emperor", "name": "Ada", "email": "a@b.co"}),
        serde_json::json!({"role": "customer", "name": "Ada"}),
        serde_json::json!({"role": "customer", "name": "Ada", "email": "a@b.co", "admin": true}),
    ] {
        let response = app
            .post_as("/v1/users", Role::Operator, OPERATOR, &body)
            .await;
        assert_error(response, 422, "invalid_body").await;
    }
}

#[tokio::test]
async fn invalid_field_values_are_422_naming_the_field() {
    let app = spawn_app().await;
    let body = serde_json::json!({"role": "customer", "name": "Ada", "email": "not-an-email"});
    let response = app
        .post_as("/v1/users", Role::Operator, OPERATOR, &body)
        .await;
    let error = assert_error(response, 422, "invalid_field").await;
    assert!(
        error["error"]["message"]
            .as_str()
            .expect("message")
            .contains("email")
    );
}

#[tokio::test]
async fn a_body_without_json_content_type_is_415() {
    let app = spawn_app().await;
    let response = app
        .request(reqwest::Method::POST, "/v1/users")
        .bearer_auth(app.token(Role::Operator, OPERATOR))
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .expect("sent");
    assert_error(response, 415, "unsupported_media_type").await;
}

#[tokio::test]
async fn an_oversized_body_is_413() {
    let app = spawn_app().await;
    let huge = serde_json::json!({
        "role": "customer",
        "name": "x".repeat(TEST_MAX_BODY_BYTES + 1),
        "email": "a@b.co",
    });
    let response = app
        .post_as("/v1/users", Role::Operator, OPERATOR, &huge)
        .await;
    assert_error(response, 413, "payload_too_large").await;
}

#[tokio::test]
async fn an_unknown_route_is_404() {
    let app = spawn_app().await;
    let response = app
        .request(reqwest::Method::GET, "/no/such/route")
        .send()
        .await
        .expect("sent");
    assert_error(response, 404, "not_found").await;
    let response = app
        .get_as("/v1/nothing-here", Role::Operator, OPERATOR)
        .await;
    assert_error(response, 404, "not_found").await;
}

#[tokio::test]
async fn a_wrong_method_is_405() {
    let app = spawn_app().await;
    let response = app
        .request(reqwest::Method::DELETE, "/healthz")
        .send()
        .await
        .expect("sent");
    assert_error(response, 405, "method_not_allowed").await;
    let response = app
        .request(reqwest::Method::PUT, "/v1/me")
        .bearer_auth(app.token(Role::Operator, OPERATOR))
        .send()
        .await
        .expect("sent");
    assert_error(response, 405, "method_not_allowed").await;
}

#[tokio::test]
async fn a_malformed_path_parameter_is_400() {
    let app = spawn_app().await;
    let response = app
        .get_as("/v1/users/not-a-number", Role::Operator, OPERATOR)
        .await;
    assert_error(response, 400, "invalid_path").await;
}

#[tokio::test]
async fn a_missing_resource_is_404() {
    let app = spawn_app().await;
    let response = app
        .get_as("/v1/users/999999", Role::Operator, OPERATOR)
        .await;
    assert_error(response, 404, "not_found").await;
}

#[tokio::test]
async fn a_duplicate_email_maps_its_constraint_to_409() {
    let app = spawn_app().await;
    let body = serde_json::json!({"role": "customer", "name": "Ada", "email": "ada@example.com"});
    let first = app
        .post_as("/v1/users", Role::Operator, OPERATOR, &body)
        .await;
    assert_eq!(first.status().as_u16(), 201);
    let shouted = serde_json::json!({"role": "driver", "name": "Ada", "email": "ADA@example.com"});
    let second = app
        .post_as("/v1/users", Role::Operator, OPERATOR, &shouted)
        .await;
    let error = assert_error(second, 409, "email_taken").await;
    assert!(
        !error.to_string().contains("users_email_key"),
        "constraint name leaked: {error}"
    );
}
