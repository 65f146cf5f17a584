//! The order workflow over HTTP: the whole happy path with its audit rows, events and jobs; who
//! may do what; racing transitions; and a transition whose job enqueue fails.

use courier::auth::Role;
use courier::jobs::Job;
use courier::jobs::messages::CapturePayment;
use courier::jobs::messages::MatchDriver;
use courier::jobs::messages::RequestReview;

use crate::helpers::{
    OPERATOR, assert_error, cast, insert_driver, insert_restaurant, insert_user, spawn_app,
};

pub(crate) async fn assign(db: &sqlx::PgPool, order: i64, driver: i64) {
    // Assignment through offers is tested in `matching`; here the driver is set directly.
    sqlx::query("UPDATE orders SET driver_id = $2 WHERE id = $1")
        .bind(order)
        .bind(driver)
        .execute(db)
        .await
        .expect("assign driver");
}

#[tokio::test]
async fn an_order_goes_from_placed_to_delivered_leaving_a_full_trail() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let driver = insert_driver(&app.db).await;
    let id = app.placed_order(&cast).await;

    let confirmed = app
        .act(id, "confirm", Role::Restaurant, cast.restaurant)
        .await;
    assert_eq!(confirmed.status().as_u16(), 200);
    let body: serde_json::Value = confirmed.json().await.expect("json");
    assert_eq!(body["status"], "CONFIRMED");
    assert_eq!(body["version"], 3, "created 1, placed 2, confirmed 3");
    assert!(body["confirmed_at"].is_string());
    assert_eq!(app.jobs_for(MatchDriver::QUEUE, id).await, 1);

    assert_eq!(
        app.act(id, "start-preparing", Role::Restaurant, cast.restaurant)
            .await
            .status()
            .as_u16(),
        200
    );
    assert_eq!(
        app.act(id, "ready", Role::Restaurant, cast.restaurant)
            .await
            .status()
            .as_u16(),
        200
    );
    // No driver yet: drivers do not even see the order.
    assert_error(
        app.act(id, "pickup", Role::Driver, driver).await,
        404,
        "not_found",
    )
    .await;
    assign(&app.db, id, driver).await;
    assert_eq!(
        app.act(id, "pickup", Role::Driver, driver)
            .await
            .status()
            .as_u16(),
        200
    );
    let delivered = app.act(id, "deliver", Role::Driver, driver).await;
    assert_eq!(delivered.status().as_u16(), 200);
    let body: serde_json::Value = delivered.json().await.expect("json");
    assert_eq!(body["status"], "DELIVERED");
    assert_eq!(body["version"], 7);
    for column in [
        "placed_at",
        "confirmed_at",
        "preparing_at",
        "ready_at",
        "picked_up_at",
        "delivered_at",
    ] {
        assert!(body[column].is_string(), "{column} not stamped");
    }

    assert_eq!(app.jobs_for(CapturePayment::QUEUE, id).await, 1);
    assert_eq!(app.jobs_for(RequestReview::QUEUE, id).await, 1);
    let review_in_minutes: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM run_at - now())::float8 / 60 FROM apalis.jobs WHERE job_type = $1",
    )
    .bind(RequestReview::QUEUE)
    .fetch_one(&app.db)
    .await
    .expect("run_at");
    assert!(
        (29.0..=30.1).contains(&review_in_minutes),
        "{review_in_minutes}"
    );

    for action in [
        "place",
        "authorize",
        "payment_authorized",
        "confirm",
        "start_preparing",
        "mark_ready",
        "pick_up",
        "deliver",
    ] {
        assert_eq!(
            app.audit_rows(id, action).await,
            1,
            "audit rows for {action}"
        );
    }
    let statuses: Vec<String> = sqlx::query_scalar(
        "SELECT payload ->> 'newStatus' FROM outbox
         WHERE aggregate_id = $1 AND event_type = 'order_status_changed' ORDER BY id",
    )
    .bind(id)
    .fetch_all(&app.db)
    .await
    .expect("events");
    assert_eq!(
        statuses,
        [
            "PAYMENT_PENDING",
            "PLACED",
            "CONFIRMED",
            "PREPARING",
            "READY_FOR_PICKUP",
            "PICKED_UP",
            "DELIVERED"
        ]
    );
    let audit: serde_json::Value = sqlx::query_scalar(
        "SELECT jsonb_build_object('actor_type', actor_type, 'actor_id', actor_id, 'changes', changes, 'metadata', metadata)
         FROM audit_logs WHERE entity_id = $1 AND metadata ->> 'action' = 'deliver'",
    )
    .bind(id)
    .fetch_one(&app.db)
    .await
    .expect("audit row");
    assert_eq!(audit["actor_type"], "driver");
    assert_eq!(audit["actor_id"], driver);
    assert_eq!(audit["changes"]["status"]["from"], "PICKED_UP");
    assert_eq!(audit["changes"]["status"]["to"], "DELIVERED");
    assert_eq!(audit["metadata"]["ip"], "127.0.0.1");

    // Terminal for everyone but operators and the system.
    assert_error(
        app.act(id, "cancel", Role::Customer, cast.customer).await,
        409,
        "invalid_transition",
    )
    .await;
}

#[tokio::test]
async fn roles_and_ownership_are_enforced_over_http() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let id = app.placed_order(&cast).await;
    // Wrong role for the action.
    assert_error(
        app.act(id, "confirm", Role::Customer, cast.customer).await,
        403,
        "forbidden",
    )
    .await;
    assert_error(
        app.act(id, "confirm", Role::Operator, OPERATOR).await,
        403,
        "forbidden",
    )
    .await;
    // Another restaurant: not its order.
    assert_error(
        app.act(
            id,
            "confirm",
            Role::Restaurant,
            insert_restaurant(&app.db, "Rival", "pizza", 40.7, -74.0).await,
        )
        .await,
        404,
        "not_found",
    )
    .await;
    // Right role, wrong state: the message names the state and what is allowed.
    let early = app
        .act(id, "ready", Role::Restaurant, cast.restaurant)
        .await;
    let body = assert_error(early, 409, "invalid_transition").await;
    let message = body["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("PLACED") && message.contains("confirm"),
        "{message}"
    );

    assert_eq!(
        app.act(id, "confirm", Role::Restaurant, cast.restaurant)
            .await
            .status()
            .as_u16(),
        200
    );
    assert_eq!(
        app.act(id, "start-preparing", Role::Restaurant, cast.restaurant)
            .await
            .status()
            .as_u16(),
        200
    );
    // Too late for the customer; an operator may still cancel, with a reason.
    assert_error(
        app.act(id, "cancel", Role::Customer, cast.customer).await,
        409,
        "invalid_transition",
    )
    .await;
    let cancelled = app
        .client
        .post(format!("{}/v1/orders/{id}/cancel", app.address))
        .bearer_auth(app.token(Role::Operator, OPERATOR))
        .json(&serde_json::json!({"reason": "kitchen fire"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(cancelled.status().as_u16(), 200);
    let body: serde_json::Value = cancelled.json().await.expect("json");
    assert_eq!(body["status"], "CANCELLED");
    assert_eq!(body["cancel_reason"], "kitchen fire");
    assert_error(
        app.act(id, "confirm", Role::Restaurant, cast.restaurant)
            .await,
        409,
        "invalid_transition",
    )
    .await;
}

#[tokio::test]
async fn a_customer_cancels_its_own_order_while_it_is_placed() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let id = app.placed_order(&cast).await;
    assert_error(
        app.act(
            id,
            "cancel",
            Role::Customer,
            insert_user(&app.db, "customer").await,
        )
        .await,
        404,
        "not_found",
    )
    .await;
    assert_eq!(
        app.act(id, "cancel", Role::Customer, cast.customer)
            .await
            .status()
            .as_u16(),
        200
    );
    assert_eq!(app.status_of(id).await, "CANCELLED");
    assert_error(
        app.act(999_999, "cancel", Role::Customer, cast.customer)
            .await,
        404,
        "not_found",
    )
    .await;
}

#[tokio::test]
async fn transition_bodies_and_versions_are_checked() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let id = app.placed_order(&cast).await;
    let post = |body: &'static str, if_match: Option<&'static str>| {
        let mut request = app
            .client
            .post(format!("{}/v1/orders/{id}/cancel", app.address))
            .bearer_auth(app.token(Role::Customer, cast.customer))
            .body(body);
        if let Some(version) = if_match {
            request = request.header("if-match", version);
        }
        request.send()
    };
    assert_error(post("{", None).await.expect("sent"), 400, "malformed_json").await;
    assert_error(
        post("{\"why\": 1}", None).await.expect("sent"),
        422,
        "invalid_body",
    )
    .await;
    assert_error(
        post("", Some("abc")).await.expect("sent"),
        400,
        "invalid_if_match",
    )
    .await;
    assert_error(post("", Some("7")).await.expect("sent"), 409, "conflict").await;
    assert_eq!(app.status_of(id).await, "PLACED");
    assert_eq!(
        post("", Some("2")).await.expect("sent").status().as_u16(),
        200
    );
}

#[tokio::test]
async fn racing_transitions_on_one_order_have_exactly_one_winner() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let id = app.placed_order(&cast).await;
    let attempts = (0..20).map(|_| {
        let app = &app;
        async move {
            app.act(id, "confirm", Role::Restaurant, cast.restaurant)
                .await
                .status()
                .as_u16()
        }
    });
    let statuses = futures::future::join_all(attempts).await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 409),
        "{statuses:?}"
    );
    let transitions: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_logs WHERE entity_id = $1 AND metadata ->> 'action' = 'confirm'",
    )
    .bind(id)
    .fetch_one(&app.db)
    .await
    .expect("count");
    assert_eq!(transitions, 1);
    let version: i32 = sqlx::query_scalar("SELECT version FROM orders WHERE id = $1")
        .bind(id)
        .fetch_one(&app.db)
        .await
        .expect("version");
    assert_eq!(version, 3);
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE aggregate_id = $1")
        .bind(id)
        .fetch_one(&app.db)
        .await
        .expect("events");
    assert_eq!(events, 4, "created, placed, payment authorised, confirmed");
    assert_eq!(app.status_of(id).await, "CONFIRMED");
    assert_eq!(
        app.jobs_for(MatchDriver::QUEUE, id).await,
        1,
        "one matching job, not one per request"
    );
}

#[tokio::test]
async fn a_transition_whose_job_cannot_be_enqueued_changes_nothing() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let id = app.placed_order(&cast).await;
    sqlx::query("ALTER TABLE apalis.jobs RENAME TO jobs_away")
        .execute(&app.db)
        .await
        .expect("rename");
    let refused = app
        .act(id, "confirm", Role::Restaurant, cast.restaurant)
        .await;
    let body = assert_error(refused, 503, "jobs_unavailable").await;
    assert!(
        !body.to_string().contains("jobs_away"),
        "internals leaked: {body}"
    );
    assert_eq!(app.status_of(id).await, "PLACED");
    assert_eq!(app.audit_rows(id, "confirm").await, 0);
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE aggregate_id = $1")
        .bind(id)
        .fetch_one(&app.db)
        .await
        .expect("events");
    assert_eq!(events, 3, "only the events of its creation and placement");

    // A new order cannot be placed either, and leaves nothing behind.
    let placed = app
        .place_order(
            cast.customer,
            "during-outage",
            &crate::helpers::order_body(&cast),
        )
        .await;
    assert_error(placed, 503, "jobs_unavailable").await;
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&app.db)
        .await
        .expect("count");
    assert_eq!(orders, 1);

    sqlx::query("ALTER TABLE apalis.jobs_away RENAME TO jobs")
        .execute(&app.db)
        .await
        .expect("rename back");
    assert_eq!(
        app.act(id, "confirm", Role::Restaurant, cast.restaurant)
            .await
            .status()
            .as_u16(),
        200
    );
    assert_eq!(app.jobs_for(MatchDriver::QUEUE, id).await, 1);
}
