//! Restaurants and menus: the nearby search and its per-cell cache, the menu cache, and the
//! restaurant's own writes invalidating both.

use courier::auth::Role;

use crate::helpers::{
    OPERATOR, RESTAURANT_AT, TestApp, assert_error, cast, insert_item, insert_restaurant, spawn_app,
};

async fn nearby(app: &TestApp, query: &str) -> (serde_json::Value, String) {
    let response = app
        .get_as(
            &format!("/v1/restaurants?{query}"),
            Role::Operator,
            OPERATOR,
        )
        .await;
    assert_eq!(response.status().as_u16(), 200);
    let cache = response.headers()["x-cache"]
        .to_str()
        .expect("ascii")
        .to_owned();
    (response.json().await.expect("json"), cache)
}

fn ids(body: &serde_json::Value) -> Vec<i64> {
    body["restaurants"]
        .as_array()
        .expect("array")
        .iter()
        .map(|r| r["id"].as_i64().expect("id"))
        .collect()
}

#[tokio::test]
async fn nearby_restaurants_are_sorted_by_distance_within_the_radius() {
    let app = spawn_app().await;
    let (lat, lon) = RESTAURANT_AT;
    // ~0.5 km, ~1.1 km, ~3.3 km and ~11 km north.
    let near = insert_restaurant(&app.db, "Near", "pizza", lat + 0.0045, lon).await;
    let mid = insert_restaurant(&app.db, "Mid", "sushi", lat + 0.01, lon).await;
    let far = insert_restaurant(&app.db, "Far", "pizza", lat + 0.03, lon).await;
    let _outside = insert_restaurant(&app.db, "Outside", "pizza", lat + 0.1, lon).await;

    let (body, _) = nearby(&app, &format!("lat={lat}&lon={lon}&radius_km=5")).await;
    assert_eq!(ids(&body), vec![near, mid, far]);
    let distances: Vec<f64> = body["restaurants"]
        .as_array()
        .expect("array")
        .iter()
        .map(|r| r["distance_m"].as_f64().expect("distance"))
        .collect();
    assert!((distances[0] - 500.0).abs() < 10.0, "{distances:?}");
    assert!((distances[2] - 3_336.0).abs() < 20.0, "{distances:?}");

    let (pizza, _) = nearby(
        &app,
        &format!("lat={lat}&lon={lon}&radius_km=5&cuisine=PIZZA"),
    )
    .await;
    assert_eq!(ids(&pizza), vec![near, far]);
    let (limited, _) = nearby(&app, &format!("lat={lat}&lon={lon}&radius_km=5&limit=1")).await;
    assert_eq!(ids(&limited), vec![near]);
}

#[tokio::test]
async fn customers_a_few_metres_apart_share_a_cache_entry_but_get_their_own_distances() {
    let app = spawn_app().await;
    let (lat, lon) = RESTAURANT_AT;
    insert_restaurant(&app.db, "Near", "pizza", lat + 0.0045, lon).await;
    let (first, miss) = nearby(&app, &format!("lat={lat}&lon={lon}&radius_km=2")).await;
    assert_eq!(miss, "miss");
    let (second, hit) = nearby(
        &app,
        &format!("lat={}&lon={lon}&radius_km=2", lat + 0.00002),
    )
    .await;
    assert_eq!(hit, "hit");
    let d1 = first["restaurants"][0]["distance_m"].as_f64().expect("d1");
    let d2 = second["restaurants"][0]["distance_m"].as_f64().expect("d2");
    assert!(
        (d1 - d2 - 2.2).abs() < 0.5,
        "moved ~2.2 m closer: {d1} vs {d2}"
    );

    // A restaurant added later is invisible until the 2-minute entry expires (the spec's
    // policy for this cache), but closing one is an explicit write that invalidates at once.
    let newcomer = insert_restaurant(&app.db, "Newcomer", "thai", lat + 0.001, lon).await;
    let (cached, _) = nearby(&app, &format!("lat={lat}&lon={lon}&radius_km=2")).await;
    assert!(!ids(&cached).contains(&newcomer));
    let closed = app
        .post_as(
            &format!("/v1/restaurants/{newcomer}/close"),
            Role::Operator,
            OPERATOR,
            &serde_json::json!({}),
        )
        .await;
    assert_eq!(closed.status().as_u16(), 200);
    let (fresh, state) = nearby(&app, &format!("lat={lat}&lon={lon}&radius_km=2&open=false")).await;
    assert_eq!(state, "miss");
    assert_eq!(ids(&fresh), vec![newcomer]);
}

#[tokio::test]
async fn bad_search_parameters_are_rejected() {
    let app = spawn_app().await;
    for (query, status, code) in [
        ("lat=91&lon=0", 422, "invalid_coordinates"),
        ("lat=0&lon=200", 422, "invalid_coordinates"),
        ("lat=0&lon=0&radius_km=0", 422, "invalid_radius"),
        ("lat=0&lon=0&radius_km=51", 422, "invalid_radius"),
        ("lat=0&lon=0&limit=0", 422, "invalid_limit"),
        ("lat=0&lon=0&limit=101", 422, "invalid_limit"),
        ("lat=north&lon=0", 400, "invalid_query"),
        ("lon=0", 400, "invalid_query"),
        ("lat=0&lon=0&colour=red", 400, "invalid_query"),
    ] {
        let response = app
            .get_as(
                &format!("/v1/restaurants?{query}"),
                Role::Operator,
                OPERATOR,
            )
            .await;
        assert_error(response, status, code).await;
    }
}

#[tokio::test]
async fn a_restaurant_with_its_menu_is_cached_and_a_menu_edit_shows_on_the_next_read() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let path = format!("/v1/restaurants/{}", cast.restaurant);
    let first = app.get_as(&path, Role::Customer, cast.customer).await;
    assert_eq!(first.headers()["x-cache"], "miss");
    let body: serde_json::Value = first.json().await.expect("json");
    assert_eq!(body["menu"].as_array().expect("menu").len(), 2);
    assert_eq!(
        app.get_as(&path, Role::Customer, cast.customer)
            .await
            .headers()["x-cache"],
        "hit"
    );

    let edit = app
        .client
        .patch(format!(
            "{}/v1/restaurants/{}/menu-items/{}",
            app.address, cast.restaurant, cast.burger
        ))
        .bearer_auth(app.token(Role::Restaurant, cast.restaurant))
        .json(&serde_json::json!({"price_cents": 1_500, "description": "double patty"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(edit.status().as_u16(), 200);
    let after = app.get_as(&path, Role::Customer, cast.customer).await;
    assert_eq!(after.headers()["x-cache"], "miss");
    let body: serde_json::Value = after.json().await.expect("json");
    let burger = body["menu"]
        .as_array()
        .expect("menu")
        .iter()
        .find(|m| m["id"] == cast.burger)
        .expect("burger listed")
        .clone();
    assert_eq!(burger["price_cents"], 1_500);
    assert_eq!(burger["description"], "double patty");

    // New orders pay the new price.
    let order: serde_json::Value = app
        .place_order(
            cast.customer,
            "after-edit",
            &crate::helpers::order_body(&cast),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(order["items"][0]["unit_price_cents"], 1_500);

    // Unavailable and deleted items leave the menu at once.
    let hide = app
        .client
        .patch(format!(
            "{}/v1/restaurants/{}/menu-items/{}",
            app.address, cast.restaurant, cast.fries
        ))
        .bearer_auth(app.token(Role::Restaurant, cast.restaurant))
        .json(&serde_json::json!({"is_available": false}))
        .send()
        .await
        .expect("sent");
    assert_eq!(hide.status().as_u16(), 200);
    let deleted = app
        .client
        .delete(format!(
            "{}/v1/restaurants/{}/menu-items/{}",
            app.address, cast.restaurant, cast.burger
        ))
        .bearer_auth(app.token(Role::Restaurant, cast.restaurant))
        .send()
        .await
        .expect("sent");
    assert_eq!(deleted.status().as_u16(), 204);
    let body: serde_json::Value = app
        .get_as(&path, Role::Customer, cast.customer)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(body["menu"].as_array().expect("menu").len(), 0);
    // A deleted item can no longer be ordered, but past orders keep it.
    let refused = app
        .place_order(cast.customer, "deleted", &crate::helpers::order_body(&cast))
        .await;
    assert_error(refused, 422, "unknown_menu_item").await;
}

#[tokio::test]
async fn a_new_menu_item_appears_and_bad_items_are_refused() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let path = format!("/v1/restaurants/{}", cast.restaurant);
    app.get_as(&path, Role::Customer, cast.customer).await;
    let created = app
        .post_as(
            &format!("/v1/restaurants/{}/menu-items", cast.restaurant),
            Role::Restaurant,
            cast.restaurant,
            &serde_json::json!({"name": "Shake", "price_cents": 450, "category": "Drinks"}),
        )
        .await;
    assert_eq!(created.status().as_u16(), 201);
    let body: serde_json::Value = app
        .get_as(&path, Role::Customer, cast.customer)
        .await
        .json()
        .await
        .expect("json");
    assert!(
        body["menu"]
            .as_array()
            .expect("menu")
            .iter()
            .any(|m| m["name"] == "Shake")
    );

    let items = format!("/v1/restaurants/{}/menu-items", cast.restaurant);
    for (body, code) in [
        (serde_json::json!({"name": "No price"}), "invalid_field"),
        (
            serde_json::json!({"name": "Free money", "price_cents": -5}),
            "invalid_field",
        ),
        (
            serde_json::json!({"name": " ", "price_cents": 5}),
            "invalid_field",
        ),
    ] {
        assert_error(
            app.post_as(&items, Role::Restaurant, cast.restaurant, &body)
                .await,
            422,
            code,
        )
        .await;
    }
    let unknown = app
        .post_as(
            &items,
            Role::Restaurant,
            cast.restaurant,
            &serde_json::json!({"name": "X", "price_cents": 5, "colour": 1}),
        )
        .await;
    assert_error(unknown, 422, "invalid_body").await;
}

#[tokio::test]
async fn a_restaurant_manages_only_its_own_menu() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let other = insert_restaurant(
        &app.db,
        "Rival",
        "burgers",
        RESTAURANT_AT.0,
        RESTAURANT_AT.1,
    )
    .await;
    let rival_item = insert_item(&app.db, other, "Rival burger", 999).await;
    let body = serde_json::json!({"name": "Sabotage", "price_cents": 1});
    let items = format!("/v1/restaurants/{}/menu-items", cast.restaurant);
    assert_error(
        app.post_as(&items, Role::Restaurant, other, &body).await,
        403,
        "forbidden",
    )
    .await;
    assert_error(
        app.post_as(&items, Role::Customer, cast.customer, &body)
            .await,
        403,
        "forbidden",
    )
    .await;
    assert_error(
        app.post_as(
            &format!("/v1/restaurants/{}/close", cast.restaurant),
            Role::Restaurant,
            other,
            &serde_json::json!({}),
        )
        .await,
        403,
        "forbidden",
    )
    .await;
    // Its own restaurant, but another restaurant's item: not found, and untouched.
    let cross = app
        .client
        .patch(format!(
            "{}/v1/restaurants/{}/menu-items/{rival_item}",
            app.address, cast.restaurant
        ))
        .bearer_auth(app.token(Role::Restaurant, cast.restaurant))
        .json(&serde_json::json!({"price_cents": 1}))
        .send()
        .await
        .expect("sent");
    assert_error(cross, 404, "not_found").await;
    let price: i64 = sqlx::query_scalar("SELECT price_cents FROM menu_items WHERE id = $1")
        .bind(rival_item)
        .fetch_one(&app.db)
        .await
        .expect("price");
    assert_eq!(price, 999);
    assert_error(
        app.get_as("/v1/restaurants/999999", Role::Operator, OPERATOR)
            .await,
        404,
        "not_found",
    )
    .await;
}

#[tokio::test]
async fn closing_a_restaurant_refuses_new_orders_and_reopening_accepts_them() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let close = format!("/v1/restaurants/{}/close", cast.restaurant);
    assert_eq!(
        app.post_as(
            &close,
            Role::Restaurant,
            cast.restaurant,
            &serde_json::json!({})
        )
        .await
        .status()
        .as_u16(),
        200
    );
    let refused = app
        .place_order(
            cast.customer,
            "while-closed",
            &crate::helpers::order_body(&cast),
        )
        .await;
    assert_error(refused, 409, "restaurant_closed").await;
    let open = format!("/v1/restaurants/{}/open", cast.restaurant);
    assert_eq!(
        app.post_as(
            &open,
            Role::Restaurant,
            cast.restaurant,
            &serde_json::json!({})
        )
        .await
        .status()
        .as_u16(),
        200
    );
    let accepted = app
        .place_order(
            cast.customer,
            "while-open",
            &crate::helpers::order_body(&cast),
        )
        .await;
    assert_eq!(accepted.status().as_u16(), 201);
}

async fn patch_restaurant(
    app: &TestApp,
    id: i64,
    role: Role,
    subject: i64,
    body: &serde_json::Value,
) -> reqwest::Response {
    app.request(reqwest::Method::PATCH, &format!("/v1/restaurants/{id}"))
        .bearer_auth(app.token(role, subject))
        .json(body)
        .send()
        .await
        .expect("request sent")
}

async fn restaurant_count(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM restaurants")
        .fetch_one(&app.db)
        .await
        .expect("count")
}

/// An operator onboards a restaurant: it is found by the nearby search at once (the cached
/// cell is purged), its token (naming the restaurant id) works, and `/v1/me` names its owner.
#[tokio::test]
async fn an_operator_onboards_a_restaurant_that_is_found_and_can_act_at_once() {
    let app = spawn_app().await;
    let (lat, lon) = RESTAURANT_AT;
    let query = format!("lat={lat}&lon={lon}&radius_km=2");
    let (before, _) = nearby(&app, &query).await;
    assert!(ids(&before).is_empty());
    let owner = crate::helpers::insert_user(&app.db, "restaurant").await;

    let body = serde_json::json!({
        "name": " Noodle Bar ", "address": "1 Pell St", "cuisine_type": "ramen",
        "location": {"lat": lat + 0.001, "lon": lon}, "prep_time_minutes": 12,
        "delivery_radius_m": 3000, "owner_user_id": owner,
    });
    let created = app
        .post_as("/v1/restaurants", Role::Operator, OPERATOR, &body)
        .await;
    assert_eq!(created.status().as_u16(), 201);
    let created: serde_json::Value = created.json().await.expect("json");
    let id = created["id"].as_i64().expect("id");
    assert_eq!(created["name"], "Noodle Bar");
    assert_eq!(created["owner_user_id"], owner);
    assert_eq!(created["prep_time_minutes"], 12);
    assert_eq!(created["is_open"], true);

    let (after, cache) = nearby(&app, &query).await;
    assert_eq!(
        ids(&after),
        vec![id],
        "the new restaurant is found (cache: {cache})"
    );
    let me: serde_json::Value = app
        .get_as("/v1/me", Role::Restaurant, id)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(me["restaurant_id"], id);
    assert_eq!(me["user_id"], owner);
    let orders = app
        .get_as(
            &format!("/v1/restaurants/{id}/orders"),
            Role::Restaurant,
            id,
        )
        .await;
    assert_eq!(orders.status().as_u16(), 200);
}

#[tokio::test]
async fn an_operator_changes_a_restaurant_profile_and_readers_see_it_at_once() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let path = format!("/v1/restaurants/{}", cast.restaurant);
    let cached = app.get_as(&path, Role::Operator, OPERATOR).await;
    assert_eq!(cached.status().as_u16(), 200);

    let changed = patch_restaurant(
        &app,
        cast.restaurant,
        Role::Operator,
        OPERATOR,
        &serde_json::json!({"name": "Burger Palace", "prep_time_minutes": 35, "cuisine_type": null}),
    )
    .await;
    assert_eq!(changed.status().as_u16(), 200);
    let shown: serde_json::Value = app
        .get_as(&path, Role::Operator, OPERATOR)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(shown["name"], "Burger Palace");
    assert_eq!(shown["prep_time_minutes"], 35);
    assert!(shown["cuisine_type"].is_null());
    assert_eq!(
        shown["menu"].as_array().expect("menu").len(),
        2,
        "the menu stays"
    );
}

#[tokio::test]
async fn restaurant_onboarding_refuses_bad_input_and_other_roles_and_changes_nothing() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let count = restaurant_count(&app).await;
    let customer = cast.customer;
    let good = serde_json::json!({"name": "Cafe", "location": {"lat": 40.7, "lon": -74.0}});
    for (role, subject) in [
        (Role::Restaurant, cast.restaurant),
        (Role::Customer, customer),
    ] {
        assert_error(
            app.post_as("/v1/restaurants", role, subject, &good).await,
            403,
            "forbidden",
        )
        .await;
        assert_error(
            patch_restaurant(&app, cast.restaurant, role, subject, &good).await,
            403,
            "forbidden",
        )
        .await;
    }
    for (body, code) in [
        (serde_json::json!({"name": "Cafe"}), "invalid_field"),
        (
            serde_json::json!({"name": "Cafe", "location": {"lat": 95.0, "lon": 0.0}}),
            "invalid_location",
        ),
        (
            serde_json::json!({"name": "Cafe", "location": {"lat": 40.7, "lon": -74.0}, "owner_user_id": customer}),
            "invalid_owner",
        ),
        (
            serde_json::json!({"name": "Cafe", "location": {"lat": 40.7, "lon": -74.0}, "stars": 5}),
            "invalid_body",
        ),
    ] {
        let response = app
            .post_as("/v1/restaurants", Role::Operator, OPERATOR, &body)
            .await;
        assert_eq!(response.status().as_u16(), 422, "{body}");
        assert_error(response, 422, code).await;
    }
    assert_error(
        patch_restaurant(
            &app,
            cast.restaurant,
            Role::Operator,
            OPERATOR,
            &serde_json::json!({"is_open": false}),
        )
        .await,
        422,
        "invalid_field",
    )
    .await;
    assert_error(
        patch_restaurant(&app, 999_999, Role::Operator, OPERATOR, &good).await,
        404,
        "not_found",
    )
    .await;
    assert_eq!(restaurant_count(&app).await, count);
    let name: String = sqlx::query_scalar("SELECT name FROM restaurants WHERE id = $1")
        .bind(cast.restaurant)
        .fetch_one(&app.db)
        .await
        .expect("name");
    assert_eq!(name, "Burger Barn");
}
