//! Placing orders: prices from the menu, every validation code, idempotency under concurrency,
//! and that a placed order starts its workflow (audit row, event, confirmation-timeout job).

use courier::auth::Role;
use courier::jobs::Job;
use courier::jobs::messages::{AuthorizePayment, ConfirmTimeout};

use crate::helpers::{
    OPERATOR, RESTAURANT_AT, assert_error, cast, insert_driver, insert_item, insert_restaurant,
    insert_user, order_body, spawn_app,
};

async fn order_count(db: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(db)
        .await
        .expect("count")
}

#[tokio::test]
async fn an_order_is_priced_from_the_menu_and_starts_its_workflow() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let response = app
        .place_order(cast.customer, "key-1", &order_body(&cast))
        .await;
    assert_eq!(response.status().as_u16(), 201);
    let order: serde_json::Value = response.json().await.expect("json");
    // Placed with the restaurant once its payment is authorised.
    assert_eq!(order["status"], "PAYMENT_PENDING");
    assert_eq!(order["placed_at"], serde_json::Value::Null);
    assert_eq!(order["subtotal_cents"], 2 * 1_250 + 399);
    // ~1.1 km: inside the base distance.
    assert_eq!(order["delivery_fee_cents"], 199);
    assert_eq!(order["total_cents"], 2 * 1_250 + 399 + 199);
    assert_eq!(order["items"][0]["unit_price_cents"], 1_250);
    assert_eq!(order["items"][0]["name"], "Burger");
    assert_eq!(order["items"][0]["special_instructions"], "no onions");
    assert_eq!(order["delivery_address"]["line1"], "1 Test Street");
    assert_eq!(order["version"], 1);
    let id = order["id"].as_i64().expect("id");

    assert_eq!(app.audit_rows(id, "place").await, 1);
    let event: serde_json::Value =
        sqlx::query_scalar("SELECT payload FROM outbox WHERE aggregate_id = $1")
            .bind(id)
            .fetch_one(&app.db)
            .await
            .expect("one event");
    assert_eq!(event["newStatus"], "PAYMENT_PENDING");
    assert_eq!(event["actorType"], "customer");
    assert_eq!(event["orderId"], id);
    assert_eq!(app.jobs_for(AuthorizePayment::QUEUE, id).await, 1);
    assert_eq!(app.jobs_for(ConfirmTimeout::QUEUE, id).await, 0);
    // Authorised: the restaurant's ten minutes start.
    assert_eq!(
        app.authorize(id).await,
        courier::workflows::payment::PaymentResult::Ended("authorized")
    );
    assert_eq!(app.status_of(id).await, "PLACED");
    assert_eq!(app.jobs_for(ConfirmTimeout::QUEUE, id).await, 1);
    let delay_minutes: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM run_at - now())::float8 / 60 FROM apalis.jobs WHERE job_type = $1",
    )
    .bind(ConfirmTimeout::QUEUE)
    .fetch_one(&app.db)
    .await
    .expect("run_at");
    assert!(
        (9.0..=10.1).contains(&delay_minutes),
        "confirmation timeout in {delay_minutes} min"
    );
}

#[tokio::test]
async fn a_client_price_is_refused_not_trusted() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let mut body = order_body(&cast);
    body["items"][0]["price"] = serde_json::json!(1);
    let response = app.place_order(cast.customer, "k", &body).await;
    assert_error(response, 422, "invalid_body").await;
    let mut body = order_body(&cast);
    body["total"] = serde_json::json!(1);
    let response = app.place_order(cast.customer, "k", &body).await;
    assert_error(response, 422, "invalid_body").await;
    assert_eq!(order_count(&app.db).await, 0);
}

#[tokio::test]
async fn each_bad_request_has_its_own_code_and_writes_nothing() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let other = insert_restaurant(
        &app.db,
        "Other",
        "sushi",
        RESTAURANT_AT.0,
        RESTAURANT_AT.1 + 0.001,
    )
    .await;
    let foreign_item = insert_item(&app.db, other, "Nigiri", 900).await;
    let gone = insert_item(&app.db, cast.restaurant, "Seasonal", 500).await;
    sqlx::query("UPDATE menu_items SET is_available = FALSE WHERE id = $1")
        .bind(gone)
        .execute(&app.db)
        .await
        .expect("mark unavailable");
    let closed =
        insert_restaurant(&app.db, "Closed", "thai", RESTAURANT_AT.0, RESTAURANT_AT.1).await;
    let closed_item = insert_item(&app.db, closed, "Curry", 1_100).await;
    sqlx::query("UPDATE restaurants SET is_open = FALSE WHERE id = $1")
        .bind(closed)
        .execute(&app.db)
        .await
        .expect("close");

    let base = order_body(&cast);
    let with = |path: &[&str], value: serde_json::Value| {
        let mut body = base.clone();
        let mut target = &mut body;
        for (i, key) in path.iter().enumerate() {
            if i + 1 == path.len() {
                target[*key] = value.clone();
            } else {
                target = &mut target[*key];
            }
        }
        body
    };
    let item =
        |id: i64, quantity: i64| serde_json::json!([{"menu_item_id": id, "quantity": quantity}]);
    let cases: Vec<(serde_json::Value, u16, &str)> = vec![
        (
            with(&["restaurant_id"], serde_json::json!(999_999)),
            422,
            "unknown_restaurant",
        ),
        (
            serde_json::json!({"restaurant_id": closed, "items": [{"menu_item_id": closed_item, "quantity": 1}],
                            "delivery_address": base["delivery_address"], "payment_method": "pm_card_visa"}),
            409,
            "restaurant_closed",
        ),
        (with(&["items"], item(999_999, 1)), 422, "unknown_menu_item"),
        (with(&["items"], item(gone, 1)), 409, "item_unavailable"),
        (
            with(&["items"], item(foreign_item, 1)),
            422,
            "item_not_on_menu",
        ),
        (
            with(&["items"], item(cast.burger, 0)),
            422,
            "invalid_quantity",
        ),
        (
            with(&["items"], item(cast.burger, 51)),
            422,
            "invalid_quantity",
        ),
        (
            with(&["items"], item(cast.burger, 10_000_000_000)),
            422,
            "invalid_quantity",
        ),
        (with(&["items"], serde_json::json!([])), 422, "empty_cart"),
        (
            with(
                &["delivery_address", "lat"],
                serde_json::json!(RESTAURANT_AT.0 + 0.2),
            ),
            422,
            "out_of_delivery_range",
        ),
        (
            with(&["delivery_address", "lat"], serde_json::json!(91.0)),
            422,
            "invalid_coordinates",
        ),
        (
            with(&["delivery_address", "lon"], serde_json::json!(-181.0)),
            422,
            "invalid_coordinates",
        ),
        (
            with(&["delivery_address", "lat"], serde_json::json!("north")),
            422,
            "invalid_body",
        ),
        (
            with(&["delivery_address", "line1"], serde_json::json!("  ")),
            422,
            "invalid_address",
        ),
    ];
    for (n, (body, status, code)) in cases.into_iter().enumerate() {
        let response = app
            .place_order(cast.customer, &format!("case-{n}"), &body)
            .await;
        assert_error(response, status, code).await;
    }
    assert_eq!(order_count(&app.db).await, 0);
    let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM order_idempotency_keys")
        .fetch_one(&app.db)
        .await
        .expect("count keys");
    assert_eq!(
        keys, 0,
        "a refused request must not hold its idempotency key"
    );
}

#[tokio::test]
async fn the_idempotency_key_is_required_and_bounded() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let missing = app
        .client
        .post(format!("{}/v1/orders", app.address))
        .bearer_auth(app.token(Role::Customer, cast.customer))
        .json(&order_body(&cast))
        .send()
        .await
        .expect("sent");
    assert_error(missing, 400, "missing_idempotency_key").await;
    let long = app
        .place_order(cast.customer, &"k".repeat(256), &order_body(&cast))
        .await;
    assert_error(long, 400, "invalid_idempotency_key").await;
    let spaced = app
        .place_order(cast.customer, "has space", &order_body(&cast))
        .await;
    assert_error(spaced, 400, "invalid_idempotency_key").await;
    assert_eq!(order_count(&app.db).await, 0);
}

#[tokio::test]
async fn only_customers_place_orders() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let subjects = [
        (Role::Restaurant, cast.restaurant),
        (Role::Driver, insert_driver(&app.db).await),
        (Role::Operator, OPERATOR),
    ];
    for (role, subject) in subjects {
        let response = app
            .client
            .post(format!("{}/v1/orders", app.address))
            .bearer_auth(app.token(role, subject))
            .header("x-idempotency-key", "k")
            .json(&order_body(&cast))
            .send()
            .await
            .expect("sent");
        assert_error(response, 403, "forbidden").await;
    }
}

#[tokio::test]
async fn fifty_concurrent_requests_with_one_key_make_one_order_and_fifty_identical_bodies() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let body = order_body(&cast);
    let requests = (0..50).map(|_| {
        let app = &app;
        let body = &body;
        async move {
            let response = app.place_order(cast.customer, "same-key", body).await;
            (
                response.status().as_u16(),
                response.text().await.expect("body"),
            )
        }
    });
    let answers = futures::future::join_all(requests).await;
    assert_eq!(order_count(&app.db).await, 1);
    let first = &answers[0].1;
    for (status, text) in &answers {
        assert_eq!(*status, 201);
        assert_eq!(text, first, "every answer must be byte-identical");
    }
    let order: serde_json::Value = serde_json::from_str(first).expect("json");
    let id = order["id"].as_i64().expect("id");
    assert_eq!(app.audit_rows(id, "place").await, 1);
    assert_eq!(app.jobs_for(AuthorizePayment::QUEUE, id).await, 1);

    // A later retry is replayed and says so.
    let again = app.place_order(cast.customer, "same-key", &body).await;
    assert_eq!(
        again
            .headers()
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    assert_eq!(again.text().await.expect("body"), *first);
}

#[tokio::test]
async fn the_same_key_with_another_body_is_refused_and_keys_are_per_customer() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let first = app
        .place_order(cast.customer, "k1", &order_body(&cast))
        .await;
    assert_eq!(first.status().as_u16(), 201);
    let mut changed = order_body(&cast);
    changed["items"][0]["quantity"] = serde_json::json!(3);
    let reused = app.place_order(cast.customer, "k1", &changed).await;
    assert_error(reused, 422, "idempotency_key_reused").await;
    assert_eq!(order_count(&app.db).await, 1);

    let other_customer = crate::helpers::insert_user(&app.db, "customer").await;
    let theirs = app
        .place_order(other_customer, "k1", &order_body(&cast))
        .await;
    assert_eq!(theirs.status().as_u16(), 201);
    assert_eq!(order_count(&app.db).await, 2);
}

#[tokio::test]
async fn an_expired_key_can_be_used_again() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    assert_eq!(
        app.place_order(cast.customer, "old", &order_body(&cast))
            .await
            .status()
            .as_u16(),
        201
    );
    sqlx::query("UPDATE order_idempotency_keys SET expires_at = now() - INTERVAL '1 second'")
        .execute(&app.db)
        .await
        .expect("expire");
    let again = app
        .place_order(cast.customer, "old", &order_body(&cast))
        .await;
    assert_eq!(again.status().as_u16(), 201);
    assert!(again.headers().get("idempotent-replayed").is_none());
    assert_eq!(order_count(&app.db).await, 2);
    let purged = courier::workflows::place::purge_expired_keys(&app.db)
        .await
        .expect("purge");
    assert_eq!(purged, 0, "the reclaimed key is live again");
}

#[tokio::test]
async fn orders_are_visible_only_to_their_parties() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let id = app.placed_order(&cast).await;
    let path = format!("/v1/orders/{id}");
    assert_eq!(
        app.get_as(&path, Role::Customer, cast.customer)
            .await
            .status()
            .as_u16(),
        200
    );
    assert_eq!(
        app.get_as(&path, Role::Restaurant, cast.restaurant)
            .await
            .status()
            .as_u16(),
        200
    );
    assert_eq!(
        app.get_as(&path, Role::Operator, OPERATOR)
            .await
            .status()
            .as_u16(),
        200
    );
    assert_error(
        app.get_as(
            &path,
            Role::Customer,
            insert_user(&app.db, "customer").await,
        )
        .await,
        404,
        "not_found",
    )
    .await;
    assert_error(
        app.get_as(
            &path,
            Role::Restaurant,
            insert_restaurant(&app.db, "Rival", "pizza", 40.7, -74.0).await,
        )
        .await,
        404,
        "not_found",
    )
    .await;
    let stranger = insert_driver(&app.db).await;
    assert_error(
        app.get_as(&path, Role::Driver, stranger).await,
        404,
        "not_found",
    )
    .await;

    let mine: serde_json::Value = app
        .get_as("/v1/orders", Role::Customer, cast.customer)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(mine["orders"].as_array().expect("array").len(), 1);
    let theirs: serde_json::Value = app
        .get_as(
            "/v1/orders",
            Role::Customer,
            insert_user(&app.db, "customer").await,
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(theirs["orders"].as_array().expect("array").len(), 0);
    let placed: serde_json::Value = app
        .get_as(
            "/v1/orders?status=placed",
            Role::Restaurant,
            cast.restaurant,
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(placed["orders"][0]["id"], id);
    let delivered: serde_json::Value = app
        .get_as("/v1/orders?status=DELIVERED", Role::Operator, OPERATOR)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(delivered["orders"].as_array().expect("array").len(), 0);
    assert_error(
        app.get_as("/v1/orders?status=SHIPPED", Role::Operator, OPERATOR)
            .await,
        422,
        "invalid_status",
    )
    .await;
    assert_error(
        app.get_as("/v1/orders?limit=0", Role::Operator, OPERATOR)
            .await,
        422,
        "invalid_limit",
    )
    .await;
}

#[tokio::test]
async fn listing_pages_newest_first() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(app.placed_order(&cast).await);
    }
    let page: serde_json::Value = app
        .get_as("/v1/orders?limit=2", Role::Customer, cast.customer)
        .await
        .json()
        .await
        .expect("json");
    let got: Vec<i64> = page["orders"]
        .as_array()
        .expect("array")
        .iter()
        .map(|o| o["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(got, vec![ids[2], ids[1]]);
    let next = page["next_cursor"].as_str().expect("next page");
    let rest: serde_json::Value = app
        .get_as(
            &format!("/v1/orders?limit=2&cursor={next}"),
            Role::Customer,
            cast.customer,
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(rest["orders"][0]["id"], ids[0]);
    assert!(rest.get("next_cursor").is_none());
    for bad in ["abc", "-1", "0"] {
        assert_error(
            app.get_as(
                &format!("/v1/orders?cursor={bad}"),
                Role::Customer,
                cast.customer,
            )
            .await,
            422,
            "invalid_cursor",
        )
        .await;
    }
}

/// Ids of the orders in a listing, in its order.
async fn listed(response: reqwest::Response) -> Vec<i64> {
    assert_eq!(response.status().as_u16(), 200);
    let body: serde_json::Value = response.json().await.expect("json");
    body["orders"]
        .as_array()
        .expect("array")
        .iter()
        .map(|o| o["id"].as_i64().expect("id"))
        .collect()
}

#[tokio::test]
async fn a_restaurant_lists_its_own_orders_newest_first_by_status() {
    let app = spawn_app().await;
    let other = cast(&app.db).await;
    let cast = cast(&app.db).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(app.placed_order(&cast).await);
    }
    app.placed_order(&other).await;
    app.act(ids[0], "confirm", Role::Restaurant, cast.restaurant)
        .await;
    let path = format!("/v1/restaurants/{}/orders", cast.restaurant);

    let all = listed(app.get_as(&path, Role::Restaurant, cast.restaurant).await).await;
    assert_eq!(all, vec![ids[2], ids[1], ids[0]]);
    let placed = listed(
        app.get_as(
            &format!("{path}?status=placed"),
            Role::Restaurant,
            cast.restaurant,
        )
        .await,
    )
    .await;
    assert_eq!(placed, vec![ids[2], ids[1]]);
    let by_operator = listed(
        app.get_as(
            &format!("{path}?status=CONFIRMED"),
            Role::Operator,
            OPERATOR,
        )
        .await,
    )
    .await;
    assert_eq!(by_operator, vec![ids[0]]);
    let page = app
        .get_as(
            &format!("{path}?limit=2"),
            Role::Restaurant,
            cast.restaurant,
        )
        .await;
    let body: serde_json::Value = page.json().await.expect("json");
    assert_eq!(body["next_cursor"], ids[1].to_string());

    assert_error(
        app.get_as(&path, Role::Restaurant, other.restaurant).await,
        403,
        "forbidden",
    )
    .await;
    assert_error(
        app.get_as(&path, Role::Customer, cast.customer).await,
        403,
        "forbidden",
    )
    .await;
    assert_error(
        app.get_as("/v1/restaurants/999999/orders", Role::Operator, OPERATOR)
            .await,
        404,
        "not_found",
    )
    .await;
    assert_error(
        app.get_as(
            &format!("{path}?status=shipped"),
            Role::Restaurant,
            cast.restaurant,
        )
        .await,
        422,
        "invalid_status",
    )
    .await;
}

#[tokio::test]
async fn a_driver_lists_its_active_orders_by_default() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let (order, driver) = app.picked_up_order(&cast).await;
    let path = format!("/v1/drivers/{driver}/orders");
    assert_eq!(
        listed(app.get_as(&path, Role::Driver, driver).await).await,
        vec![order]
    );
    assert_eq!(
        app.act(order, "deliver", Role::Driver, driver)
            .await
            .status()
            .as_u16(),
        200
    );
    assert!(
        listed(app.get_as(&path, Role::Driver, driver).await)
            .await
            .is_empty(),
        "a delivered order is no longer active"
    );
    assert_eq!(
        listed(
            app.get_as(&format!("{path}?status=all"), Role::Driver, driver)
                .await
        )
        .await,
        vec![order]
    );
    assert_eq!(
        listed(
            app.get_as(
                &format!("{path}?status=delivered"),
                Role::Operator,
                OPERATOR
            )
            .await
        )
        .await,
        vec![order]
    );

    let stranger = insert_driver(&app.db).await;
    assert_error(
        app.get_as(&path, Role::Driver, stranger).await,
        403,
        "forbidden",
    )
    .await;
    assert_error(
        app.get_as("/v1/drivers/999999/orders", Role::Operator, OPERATOR)
            .await,
        404,
        "not_found",
    )
    .await;
}
