//! Onboarding users — a driver user comes with its driver profile — and `GET /v1/me`, which
//! tells a client every id it acts as.

use courier::auth::Role;

use crate::helpers::{
    OPERATOR, TestApp, assert_error, insert_driver, insert_restaurant, insert_user, spawn_app,
};

/// `GET /v1/me` as `role` `subject`.
async fn me(app: &TestApp, role: Role, subject: i64) -> serde_json::Value {
    let response = app.get_as("/v1/me", role, subject).await;
    assert_eq!(response.status().as_u16(), 200);
    response.json().await.expect("json")
}

#[tokio::test]
async fn an_onboarded_driver_can_use_its_token_at_once() {
    let app = spawn_app().await;
    let body = serde_json::json!({
        "role": "driver", "name": "Dee", "email": "dee@example.com",
        "vehicle_type": "scooter", "daily_delivery_goal": 14,
    });
    let created = app
        .post_as("/v1/users", Role::Operator, OPERATOR, &body)
        .await;
    assert_eq!(created.status().as_u16(), 201);
    let created: serde_json::Value = created.json().await.expect("json");
    let user = created["id"].as_i64().expect("user id");
    let driver = created["driver_id"].as_i64().expect("driver id");
    let (vehicle, goal, active): (Option<String>, i32, bool) = sqlx::query_as(
        "SELECT vehicle_type, daily_delivery_goal, is_active FROM drivers
         WHERE id = $1 AND user_id = $2",
    )
    .bind(driver)
    .bind(user)
    .fetch_one(&app.db)
    .await
    .expect("the driver profile");
    assert_eq!(
        (vehicle.as_deref(), goal, active),
        (Some("scooter"), 14, false)
    );

    let who = me(&app, Role::Driver, driver).await;
    assert_eq!(who["role"], "driver");
    assert_eq!(who["subject"], driver);
    assert_eq!(who["driver_id"], driver);
    assert_eq!(who["user_id"], user);
    // The new driver goes online (200).
    app.go_online(driver).await;
}

#[tokio::test]
async fn driver_fields_on_another_role_are_refused_and_create_nothing() {
    let app = spawn_app().await;
    let body = serde_json::json!({
        "role": "customer", "name": "Cy", "email": "cy@example.com", "vehicle_type": "car",
    });
    assert_error(
        app.post_as("/v1/users", Role::Operator, OPERATOR, &body)
            .await,
        422,
        "invalid_field",
    )
    .await;
    let bad_goal = serde_json::json!({
        "role": "driver", "name": "Cy", "email": "cy@example.com", "daily_delivery_goal": 1000,
    });
    assert_error(
        app.post_as("/v1/users", Role::Operator, OPERATOR, &bad_goal)
            .await,
        422,
        "invalid_field",
    )
    .await;
    let users: i64 =
        sqlx::query_scalar("SELECT count(*) FROM users WHERE email = 'cy@example.com'")
            .fetch_one(&app.db)
            .await
            .expect("count");
    assert_eq!(users, 0);
}

#[tokio::test]
async fn a_driver_user_with_a_taken_email_is_409_and_creates_no_driver() {
    let app = spawn_app().await;
    let body = serde_json::json!({"role": "driver", "name": "Dee", "email": "dee@example.com"});
    let first = app
        .post_as("/v1/users", Role::Operator, OPERATOR, &body)
        .await;
    assert_eq!(first.status().as_u16(), 201);
    let drivers = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM drivers")
            .fetch_one(&app.db)
            .await
            .expect("count")
    };
    let before = drivers().await;
    assert_error(
        app.post_as("/v1/users", Role::Operator, OPERATOR, &body)
            .await,
        409,
        "email_taken",
    )
    .await;
    assert_eq!(drivers().await, before);
}

#[tokio::test]
async fn me_answers_every_id_the_caller_acts_as() {
    let app = spawn_app().await;
    let customer = insert_user(&app.db, "customer").await;
    let who = me(&app, Role::Customer, customer).await;
    assert_eq!(who["user_id"], customer);
    assert!(who["driver_id"].is_null() && who["restaurant_id"].is_null());

    let restaurant = insert_restaurant(&app.db, "Diner", "burgers", 40.7, -74.0).await;
    let who = me(&app, Role::Restaurant, restaurant).await;
    assert_eq!(who["restaurant_id"], restaurant);
    assert!(who["user_id"].is_null(), "a seeded restaurant has no owner");

    let owner = insert_user(&app.db, "restaurant").await;
    sqlx::query("UPDATE restaurants SET owner_user_id = $2 WHERE id = $1")
        .bind(restaurant)
        .bind(owner)
        .execute(&app.db)
        .await
        .expect("owner");
    let who = me(&app, Role::Restaurant, restaurant).await;
    assert_eq!(who["user_id"], owner);

    let driver = insert_driver(&app.db).await;
    let who = me(&app, Role::Driver, driver).await;
    assert_eq!(who["driver_id"], driver);
    assert!(who["user_id"].as_i64().is_some());
}

/// `courier token issue` says which id the role's subject must be, on standard error, and
/// prints only the token on standard output (so `TOKEN=$(courier token issue …)` works).
#[test]
fn token_issue_says_which_id_it_expects() {
    for (role, expected) in [
        ("driver", "a driver id (drivers.id)"),
        ("restaurant", "a restaurant id"),
        ("customer", "a user id"),
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_courier"))
            .args(["--dev", "token", "issue", "--role", role, "--subject", "7"])
            .env("LOG_LEVEL", "error")
            .output()
            .expect("courier runs");
        assert!(output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{role}: {stderr}");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(stdout.trim().split('.').count(), 3, "one JWT: {stdout}");
    }
}
