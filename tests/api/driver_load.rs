//! A driver's load follows the end of its orders at once, whoever ends them: a driver
//! carrying two active orders is out of the nearby search, and is back in it the moment one
//! of them is cancelled by an operator (the CLI) or by the customer, or delivered.

use courier::auth::Role;

use crate::admin::ok;
use crate::helpers::{Cast, RESTAURANT_AT, TestApp, cast, nearby_ids, spawn_app};
use crate::workflow::assign;

/// Driver ids `GET /v1/drivers/nearby` finds within 2 km of the restaurant.
async fn nearby(app: &TestApp) -> Vec<i64> {
    nearby_ids(app, RESTAURANT_AT.0, RESTAURANT_AT.1, 2.0, 50).await
}

/// An online driver near the restaurant carrying two confirmed orders of `cast`, as two
/// accepted offers leave it: assigned in Postgres, a load of 2 in Valkey, out of the search.
/// Returns (driver, first order, second order).
async fn driver_with_two_orders(app: &TestApp, cast: &Cast) -> (i64, i64, i64) {
    let driver = app.online_driver_at(300.0).await;
    assert!(nearby(app).await.contains(&driver), "online and searchable");
    let first = app.confirmed_order(cast).await;
    let second = app.confirmed_order(cast).await;
    for order in [first, second] {
        assign(&app.db, order, driver).await;
    }
    app.state
        .location
        .set_assignment(driver, Some(first), 2)
        .await
        .expect("load");
    assert!(
        !nearby(app).await.contains(&driver),
        "a driver with two active orders is not searchable"
    );
    (driver, first, second)
}

#[tokio::test]
async fn an_operator_cancel_frees_the_driver_at_once() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let (driver, first, second) = driver_with_two_orders(&app, &cast).await;
    ok(
        &app,
        &[
            "--yes",
            "orders",
            "cancel",
            &second.to_string(),
            "--reason",
            "kitchen fire",
            "--operator",
            "9",
        ],
    )
    .await;
    assert_eq!(app.status_of(second).await, "CANCELLED");
    assert!(nearby(&app).await.contains(&driver));
    assert_eq!(
        app.status_of(first).await,
        "CONFIRMED",
        "the other order stays"
    );
}

#[tokio::test]
async fn a_customer_cancel_frees_the_driver_at_once() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let (driver, _, second) = driver_with_two_orders(&app, &cast).await;
    let cancel = app
        .act(second, "cancel", Role::Customer, cast.customer)
        .await;
    assert_eq!(cancel.status().as_u16(), 200);
    assert!(nearby(&app).await.contains(&driver));
}

#[tokio::test]
async fn a_delivery_frees_the_driver_at_once() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let (driver, _, second) = driver_with_two_orders(&app, &cast).await;
    for step in ["start-preparing", "ready"] {
        let response = app
            .act(second, step, Role::Restaurant, cast.restaurant)
            .await;
        assert_eq!(response.status().as_u16(), 200, "{step}");
    }
    let pickup = app.act(second, "pickup", Role::Driver, driver).await;
    assert_eq!(pickup.status().as_u16(), 200);
    assert!(
        !nearby(&app).await.contains(&driver),
        "still two active orders while the second is on its way"
    );
    let deliver = app.act(second, "deliver", Role::Driver, driver).await;
    assert_eq!(deliver.status().as_u16(), 200);
    assert!(nearby(&app).await.contains(&driver));
}
