//! Authentication and authorisation on `/v1`: no token, malformed header, bad signature,
//! expired token, wrong role.

use std::time::Duration;

use courier::auth::JwtSecret;
use courier::auth::{Principal, Role, TokenKeys};

use crate::helpers::{
    OPERATOR, assert_error, insert_driver, insert_restaurant, insert_user, spawn_app,
};

#[tokio::test]
async fn a_valid_token_reaches_the_handler_with_its_principal() {
    let app = spawn_app().await;
    let driver = insert_driver(&app.db).await;
    let response = app.get_as("/v1/me", Role::Driver, driver).await;
    assert_eq!(response.status().as_u16(), 200);
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["role"], "driver");
    assert_eq!(body["subject"], driver);
}

#[tokio::test]
async fn no_token_is_401() {
    let app = spawn_app().await;
    let response = app
        .request(reqwest::Method::GET, "/v1/me")
        .send()
        .await
        .expect("sent");
    assert_eq!(
        response
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer")
    );
    assert_error(response, 401, "missing_token").await;
}

#[tokio::test]
async fn a_header_that_is_not_bearer_is_401() {
    let app = spawn_app().await;
    for header in [
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer    ",
        "token-without-scheme",
    ] {
        let response = app
            .request(reqwest::Method::GET, "/v1/me")
            .header("authorization", header)
            .send()
            .await
            .expect("sent");
        assert_error(response, 401, "invalid_token").await;
    }
}

#[tokio::test]
async fn a_token_signed_with_another_secret_is_401() {
    let app = spawn_app().await;
    let other = TokenKeys::new(
        &JwtSecret::from_bytes(b"some-other-secret-some-other-secret-0000".to_vec()).expect("long"),
    );
    let forged = other
        .issue(
            Principal {
                role: Role::Operator,
                subject: 1,
            },
            chrono::Utc::now().timestamp(),
            Duration::from_secs(60),
        )
        .expect("issued");
    let response = app
        .request(reqwest::Method::GET, "/v1/me")
        .bearer_auth(forged)
        .send()
        .await
        .expect("sent");
    assert_error(response, 401, "invalid_token").await;
}

#[tokio::test]
async fn a_tampered_token_is_401() {
    let app = spawn_app().await;
    let token = app.token(Role::Customer, 5);
    // Swap the payload for one claiming the operator role, keeping the original signature.
    let mut parts: Vec<&str> = token.split('.').collect();
    let operator = app.token(Role::Operator, 5);
    let forged_payload = operator.split('.').nth(1).expect("payload").to_owned();
    parts[1] = &forged_payload;
    let response = app
        .request(reqwest::Method::GET, "/v1/me")
        .bearer_auth(parts.join("."))
        .send()
        .await
        .expect("sent");
    assert_error(response, 401, "invalid_token").await;
}

#[tokio::test]
async fn an_expired_token_is_401() {
    let app = spawn_app().await;
    let expired = app
        .keys
        .issue(
            Principal {
                role: Role::Operator,
                subject: 1,
            },
            chrono::Utc::now().timestamp() - 7200,
            Duration::from_secs(60),
        )
        .expect("issued");
    let response = app
        .request(reqwest::Method::GET, "/v1/me")
        .bearer_auth(expired)
        .send()
        .await
        .expect("sent");
    assert_error(response, 401, "token_expired").await;
}

#[tokio::test]
async fn the_wrong_role_is_403_and_changes_nothing() {
    let app = spawn_app().await;
    let body = serde_json::json!({"role": "customer", "name": "Eve", "email": "eve@example.com"});
    let subjects = [
        (Role::Customer, insert_user(&app.db, "customer").await),
        (Role::Driver, insert_driver(&app.db).await),
        (
            Role::Restaurant,
            insert_restaurant(&app.db, "Diner", "burgers", 40.7, -74.0).await,
        ),
    ];
    for (role, subject) in subjects {
        let response = app.post_as("/v1/users", role, subject, &body).await;
        assert_error(response, 403, "forbidden").await;
    }
    let users: i64 =
        sqlx::query_scalar("SELECT count(*) FROM users WHERE email = 'eve@example.com'")
            .fetch_one(&app.db)
            .await
            .expect("count");
    assert_eq!(users, 0);

    let created = app
        .post_as("/v1/users", Role::Operator, OPERATOR, &body)
        .await;
    assert_eq!(created.status().as_u16(), 201);
}
