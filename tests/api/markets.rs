//! Markets: operators manage them, restaurants and driver reports are placed in the market
//! their position is in, reports outside every market are refused, and a driver crossing into
//! a neighbouring market moves there with its state.

use courier::auth::Role;
use serde_json::{Value, json};

use crate::helpers::{OPERATOR, TestApp, assert_error, insert_driver, nearby_ids, spawn_app};

/// Creates a market as an operator; its body.
async fn create_market(app: &TestApp, body: Value) -> Value {
    let response = app
        .post_as("/v1/markets", Role::Operator, OPERATOR, &body)
        .await;
    assert_eq!(response.status().as_u16(), 201);
    response.json().await.expect("json")
}

/// A market around (lat, lon) with a 20 km radius.
fn city(slug: &str, lat: f64, lon: f64) -> Value {
    json!({
        "slug": slug, "name": slug.to_uppercase(), "time_zone": "America/New_York",
        "center": {"lat": lat, "lon": lon}, "radius_km": 20.0,
    })
}

async fn patch_market(app: &TestApp, id: i64, body: Value) -> reqwest::Response {
    app.request(reqwest::Method::PATCH, &format!("/v1/markets/{id}"))
        .bearer_auth(app.token(Role::Operator, OPERATOR))
        .json(&body)
        .send()
        .await
        .expect("sent")
}

async fn market_of_driver(app: &TestApp, driver: i64) -> Option<i64> {
    sqlx::query_scalar("SELECT market_id FROM drivers WHERE id = $1")
        .bind(driver)
        .fetch_one(&app.db)
        .await
        .expect("driver")
}

async fn report_at(app: &TestApp, driver: i64, lat: f64, lon: f64) -> reqwest::Response {
    app.report(driver, json!({"lat": lat, "lon": lon})).await
}

#[tokio::test]
async fn operators_create_list_and_change_markets() {
    let app = spawn_app().await;
    let nyc = create_market(&app, city("nyc", 40.75, -73.98)).await;
    assert_eq!(nyc["slug"], "nyc");
    assert_eq!(nyc["time_zone"], "America/New_York");
    assert_eq!(nyc["active"], true);
    assert!((nyc["center_lat"].as_f64().expect("lat") - 40.75).abs() < 1e-9);

    let listed: Value = app
        .get_as("/v1/markets", Role::Operator, OPERATOR)
        .await
        .json()
        .await
        .expect("json");
    let slugs: Vec<&str> = listed["markets"]
        .as_array()
        .expect("markets")
        .iter()
        .map(|m| m["slug"].as_str().expect("slug"))
        .collect();
    assert_eq!(
        slugs,
        ["default", "nyc"],
        "the migrated default comes first"
    );

    let id = nyc["id"].as_i64().expect("id");
    let changed = patch_market(&app, id, json!({"radius_km": 35.5, "name": "New York"})).await;
    assert_eq!(changed.status().as_u16(), 200);
    let changed: Value = changed.json().await.expect("json");
    assert_eq!(changed["radius_km"], 35.5);
    assert_eq!(changed["name"], "New York");
    assert_eq!(changed["slug"], "nyc");
    let fetched: Value = app
        .get_as(&format!("/v1/markets/{id}"), Role::Operator, OPERATOR)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(fetched["radius_km"], 35.5);
}

#[tokio::test]
async fn bad_markets_are_refused_with_a_clear_error_and_change_nothing() {
    let app = spawn_app().await;
    create_market(&app, city("nyc", 40.75, -73.98)).await;
    let cases = [
        (json!({"slug": "NYC"}), "invalid_market", "slug"),
        (json!({"slug": "-x"}), "invalid_market", "slug"),
        (
            json!({"time_zone": "Mars/Olympus"}),
            "invalid_market",
            "time_zone",
        ),
        (json!({"radius_km": 0.0}), "invalid_market", "radius_km"),
        (json!({"radius_km": 30000.0}), "invalid_market", "radius_km"),
        (
            json!({"center": {"lat": 91.0, "lon": 0.0}}),
            "invalid_market",
            "center",
        ),
        (json!({"name": "   "}), "invalid_market", "name"),
    ];
    for (change, code, field) in cases {
        let mut body = city("boston", 42.36, -71.06);
        for (k, v) in change.as_object().expect("object") {
            body[k] = v.clone();
        }
        let response = app
            .post_as("/v1/markets", Role::Operator, OPERATOR, &body)
            .await;
        let error = assert_error(response, 422, code).await;
        assert!(
            error["error"]["message"]
                .as_str()
                .expect("message")
                .contains(field),
            "{error}"
        );
    }
    let missing = app
        .post_as(
            "/v1/markets",
            Role::Operator,
            OPERATOR,
            &json!({"slug": "x"}),
        )
        .await;
    assert_error(missing, 422, "invalid_market").await;
    let taken = app
        .post_as(
            "/v1/markets",
            Role::Operator,
            OPERATOR,
            &city("nyc", 1.0, 1.0),
        )
        .await;
    assert_error(taken, 409, "market_exists").await;
    let slug_change = patch_market(&app, 2, json!({"slug": "newyork"})).await;
    assert_error(slug_change, 422, "invalid_market").await;
    assert_error(
        patch_market(&app, 999, json!({"active": false})).await,
        404,
        "not_found",
    )
    .await;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM markets")
        .fetch_one(&app.db)
        .await
        .expect("count");
    assert_eq!(count, 2, "only default and nyc");
    for role in [Role::Customer, Role::Driver, Role::Restaurant] {
        let response = app
            .post_as("/v1/markets", role, 1, &city("x", 1.0, 1.0))
            .await;
        assert!(response.status().is_client_error(), "{role:?}");
        assert_ne!(
            response.status().as_u16(),
            422,
            "{role:?} reached validation"
        );
    }
}

#[tokio::test]
async fn reports_and_restaurants_outside_every_market_are_refused() {
    let app = spawn_app().await;
    create_market(&app, city("nyc", 40.75, -73.98)).await;
    // Until the world-wide default market is deactivated, London is in it.
    let driver = insert_driver(&app.db).await;
    assert_eq!(
        report_at(&app, driver, 51.5, -0.12).await.status().as_u16(),
        200
    );
    assert_eq!(
        patch_market(&app, 1, json!({"active": false}))
            .await
            .status()
            .as_u16(),
        200
    );
    let refused = report_at(&app, driver, 51.5, -0.13).await;
    let error = assert_error(refused, 422, "outside_markets").await;
    assert!(
        error["error"]["message"]
            .as_str()
            .expect("message")
            .contains("outside every market")
    );

    let batch = app
        .post_as(
            "/v1/drivers/locations:batch",
            Role::Operator,
            OPERATOR,
            &json!({"updates": [
                {"driver_id": driver, "lat": 51.5, "lon": -0.12},
                {"driver_id": driver, "lat": 40.75, "lon": -73.98},
            ]}),
        )
        .await;
    assert_eq!(batch.status().as_u16(), 200);
    let batch: Value = batch.json().await.expect("json");
    assert_eq!(batch["rejected"], 1);
    assert_eq!(batch["results"][0]["error"]["code"], "outside_markets");
    assert!(batch["results"][1]["result"].is_string(), "{batch}");

    let restaurant = app
        .post_as(
            "/v1/restaurants",
            Role::Operator,
            OPERATOR,
            &json!({"name": "Pub", "location": {"lat": 51.5, "lon": -0.12}}),
        )
        .await;
    assert_error(restaurant, 422, "outside_markets").await;
    let in_nyc = app
        .post_as(
            "/v1/restaurants",
            Role::Operator,
            OPERATOR,
            &json!({"name": "Deli", "location": {"lat": 40.76, "lon": -73.98}}),
        )
        .await;
    assert_eq!(in_nyc.status().as_u16(), 201);
    let in_nyc: Value = in_nyc.json().await.expect("json");
    assert_eq!(in_nyc["market_id"], 2);
    let moved = app
        .request(
            reqwest::Method::PATCH,
            &format!("/v1/restaurants/{}", in_nyc["id"]),
        )
        .bearer_auth(app.token(Role::Operator, OPERATOR))
        .json(&json!({"location": {"lat": 51.5, "lon": -0.12}}))
        .send()
        .await
        .expect("sent");
    assert_error(moved, 422, "outside_markets").await;
}

#[tokio::test]
async fn a_driver_crossing_into_a_neighbouring_market_moves_with_its_state() {
    let app = spawn_app().await;
    // Two overlapping 20 km circles, 30 km apart: Manhattan and Newark.
    let nyc = create_market(&app, city("nyc", 40.75, -73.98)).await;
    let newark = create_market(&app, city("newark", 40.73, -74.33)).await;
    let (nyc, newark) = (
        nyc["id"].as_i64().expect("id"),
        newark["id"].as_i64().expect("id"),
    );
    let driver = insert_driver(&app.db).await;
    assert_eq!(
        market_of_driver(&app, driver).await,
        None,
        "no market before any report"
    );
    app.go_online(driver).await;

    let first: Value = report_at(&app, driver, 40.75, -73.98)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        first["result"], "available",
        "placed in nyc with its online flag"
    );
    assert_eq!(market_of_driver(&app, driver).await, Some(nyc));
    assert_eq!(nearby_ids(&app, 40.75, -73.98, 5.0, 20).await, [driver]);

    // Across the Hudson, nearer Newark's centre.
    let crossed: Value = report_at(&app, driver, 40.735, -74.30)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        crossed["result"], "available",
        "it arrived online, not as a stranger"
    );
    assert_eq!(market_of_driver(&app, driver).await, Some(newark));
    assert_eq!(nearby_ids(&app, 40.735, -74.30, 5.0, 20).await, [driver]);
    assert!(
        nearby_ids(&app, 40.75, -73.98, 5.0, 20).await.is_empty(),
        "nyc forgot it"
    );
    assert_eq!(
        app.metric("driver_market_moves_total{from=\"nyc\",to=\"newark\"}")
            .await,
        1.0
    );

    // Offline in Newark, it crosses back offline: its state goes with it.
    app.post_as(
        &format!("/v1/drivers/{driver}/status"),
        Role::Driver,
        driver,
        &json!({"status": "offline"}),
    )
    .await;
    assert!(nearby_ids(&app, 40.735, -74.30, 5.0, 20).await.is_empty());
    let back: Value = report_at(&app, driver, 40.75, -73.97)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(back["result"], "unavailable", "it arrived offline");
    assert_eq!(market_of_driver(&app, driver).await, Some(nyc));
    assert!(nearby_ids(&app, 40.75, -73.97, 5.0, 20).await.is_empty());
    // Online again, in the market it is now in.
    app.go_online(driver).await;
    assert_eq!(nearby_ids(&app, 40.75, -73.97, 5.0, 20).await, [driver]);
    assert!(nearby_ids(&app, 40.735, -74.30, 5.0, 20).await.is_empty());
}
