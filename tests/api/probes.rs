//! Regressions from an outside probe (faults, abuse and a replayed city): each test failed on
//! the code before its fix. Grouped by what broke.

use std::time::Duration;

use courier::auth::Role;
use courier::domain::{DriverId, OrderId};
use courier::geo::Point;
use courier::location::update::LocationUpdate;
use courier::location::{Admitted, Ingested, now_ms};
use courier::ratelimit::Limit;
use courier::workflows::matching::{self, RoundOutcome};
use futures::future::join_all;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{
    Cast, OPERATOR, RESTAURANT_AT, TEST_HEADER_READ_TIMEOUT, TEST_SECRET, TestApp, TestAppOptions,
    assert_error, cast, database_url, dead_port, eventually, fast_dispatch, insert_driver,
    insert_item, insert_restaurant, order_body, spawn_app, spawn_app_with, start_valkey,
    valkey_url,
};

/// Reports from `north_m` metres north of the restaurant; the `result`.
async fn report_near_restaurant(app: &TestApp, driver: i64, north_m: f64) -> String {
    let at = TestApp::north_of_restaurant(north_m);
    let response = app
        .report(driver, json!({"lat": at.lat, "lon": at.lon}))
        .await;
    assert_eq!(response.status().as_u16(), 200);
    let body: serde_json::Value = response.json().await.expect("json");
    body["result"].as_str().expect("result").to_owned()
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(&app.db)
        .await
        .expect("count")
}

// --- 1. A position outside the geo index never fails anyone else's report -----------------------

#[tokio::test]
async fn a_polar_report_is_refused_alone_and_never_fails_other_drivers() {
    let app = spawn_app().await;
    let mut honest = Vec::new();
    for _ in 0..10 {
        let driver = insert_driver(&app.db).await;
        app.go_online(driver).await;
        honest.push(driver);
    }
    let polar = insert_driver(&app.db).await;
    app.go_online(polar).await;
    for round in 0..5 {
        let polar_report = app.report(polar, json!({"lat": 89.0, "lon": 10.0}));
        let honest_reports = join_all(honest.iter().enumerate().map(|(i, &driver)| {
            let at = TestApp::north_of_restaurant(100.0 * (i + round) as f64);
            app.report(driver, json!({"lat": at.lat, "lon": at.lon}))
        }));
        let (polar_answer, honest_answers) = tokio::join!(polar_report, honest_reports);
        let body = assert_error(polar_answer, 422, "invalid_location").await;
        let message = body["error"]["message"].as_str().expect("message");
        assert!(message.contains("85.05112878"), "{message}");
        for answer in honest_answers {
            assert_eq!(answer.status().as_u16(), 200, "an honest report failed");
        }
    }
    // The refused position was never written anywhere.
    assert_eq!(
        app.state.location.last_fix(polar).await.expect("valkey"),
        None
    );
    let nearby = app
        .get_as("/v1/drivers/nearby?lat=89&lon=10", Role::Operator, OPERATOR)
        .await;
    assert_error(nearby, 422, "invalid_location").await;
}

#[tokio::test]
async fn a_report_valkey_refuses_fails_alone_in_its_coalesced_group() {
    // Validation keeps such positions out; this drives one past it to show the group
    // isolation that holds for any report Valkey refuses.
    let app = spawn_app().await;
    let mut drivers = Vec::new();
    for _ in 0..12 {
        let driver = insert_driver(&app.db).await;
        app.go_online(driver).await;
        drivers.push(driver);
    }
    let location = &app.state.location;
    let now = now_ms();
    let bad = LocationUpdate::position(
        drivers[0],
        Point {
            lat: 89.0,
            lon: 10.0,
        },
        now,
    );
    let good = drivers[1..]
        .iter()
        .map(|&d| LocationUpdate::position(d, TestApp::north_of_restaurant(200.0), now));
    // Each honest report may pass its limit once a minute: the group the polar report spoiled
    // must not have counted them, or their second try, alone, would be refused.
    let once = Limit::new(1, Duration::from_secs(60), 1).expect("a limit");
    let (bad, good) = tokio::join!(
        location.ingest_one(bad, Some(once)),
        join_all(good.map(|u| location.ingest_one(u, Some(once))))
    );
    assert!(bad.is_err(), "the polar report must fail: {bad:?}");
    for outcome in good {
        match outcome.expect("an honest report") {
            Admitted::Applied(Ingested::Available, Some(verdict)) => {
                assert!(verdict.allowed && verdict.remaining == 0, "{verdict:?}");
            }
            other => panic!("an honest report, applied within its limit: {other:?}"),
        }
    }
    assert_eq!(location.last_fix(drivers[0]).await.expect("valkey"), None);
}

#[tokio::test]
async fn two_concurrent_batches_store_every_valid_item_and_refuse_only_the_polar_one() {
    let mut app = spawn_app().await;
    let mut drivers = Vec::new();
    for _ in 0..10 {
        drivers.push(insert_driver(&app.db).await);
    }
    let polar = insert_driver(&app.db).await;
    let item = |driver: i64, north_m: f64| {
        let at = TestApp::north_of_restaurant(north_m);
        json!({"driver_id": driver, "lat": at.lat, "lon": at.lon})
    };
    let first: Vec<_> = drivers[..5].iter().map(|&d| item(d, 100.0)).collect();
    let mut second: Vec<_> = drivers[5..].iter().map(|&d| item(d, 300.0)).collect();
    second.insert(2, json!({"driver_id": polar, "lat": -89.5, "lon": 0.0}));
    let (first, second) = (json!({ "updates": first }), json!({ "updates": second }));
    let (a, b) = tokio::join!(
        app.post_as(
            "/v1/drivers/locations:batch",
            Role::Operator,
            OPERATOR,
            &first
        ),
        app.post_as(
            "/v1/drivers/locations:batch",
            Role::Operator,
            OPERATOR,
            &second
        ),
    );
    assert_eq!(a.status().as_u16(), 200);
    assert_eq!(b.status().as_u16(), 200);
    let a: serde_json::Value = a.json().await.expect("json");
    let b: serde_json::Value = b.json().await.expect("json");
    assert_eq!(
        (a["accepted"].as_i64(), a["rejected"].as_i64()),
        (Some(5), Some(0))
    );
    assert_eq!(
        (b["accepted"].as_i64(), b["rejected"].as_i64()),
        (Some(5), Some(1))
    );
    assert_eq!(b["results"][2]["error"]["code"], "invalid_location");
    for &driver in &drivers {
        assert!(
            app.state
                .location
                .last_fix(driver)
                .await
                .expect("valkey")
                .is_some(),
            "driver {driver} stored"
        );
    }
    assert_eq!(
        app.state.location.last_fix(polar).await.expect("valkey"),
        None
    );
    app.shutdown().await;
    assert_eq!(app.history_rows().await, 10);
}

// --- 2. Metric labels come from closed sets -------------------------------------------------------

#[tokio::test]
async fn made_up_methods_never_become_metric_labels() {
    let app = spawn_app().await;
    for i in 0..20 {
        let method = reqwest::Method::from_bytes(format!("Q{i}").as_bytes()).expect("a token");
        let response = app
            .request(method, &format!("/made/up/{i}"))
            .send()
            .await
            .expect("sent");
        assert!(response.status().is_client_error());
    }
    let text = app.metrics_text().await;
    assert!(
        !text.contains("method=\"Q1\""),
        "a made-up method became a label"
    );
    assert!(!text.contains("/made/up"), "a raw path became a label");
    assert!(
        text.lines()
            .any(|l| l.starts_with("http_request_duration_seconds_count")
                && l.contains("method=\"other\"")
                && l.contains("route=\"unmatched\"")),
        "made-up methods share the `other` label"
    );
}

// --- 3. Valkey that lost its data is rebuilt from Postgres ----------------------------------------

/// Deletes every key of `app` from the shared test Valkey: what a restart without persistence
/// or a flush does to this app (other tests' keys stay).
async fn lose_valkey_data(app: &TestApp) {
    let client = redis::Client::open(valkey_url()).expect("valkey url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("valkey");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", app.state.valkey.prefix()))
        .query_async(&mut conn)
        .await
        .expect("keys");
    assert!(!keys.is_empty());
    let () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut conn)
        .await
        .expect("del");
}

#[tokio::test]
async fn after_valkey_loses_its_data_matching_works_without_drivers_resending_their_status() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let driver = app.online_driver_at(300.0).await;
    // A second driver carries an order: its load must come back too.
    let (_, loaded) = app.picked_up_order(&cast).await;
    app.go_online(loaded).await;

    lose_valkey_data(&app).await;

    // Phones go on reporting positions; nobody re-sends `online`.
    assert_eq!(
        report_near_restaurant(&app, driver, 300.0).await,
        "available"
    );
    assert_eq!(
        report_near_restaurant(&app, loaded, 200.0).await,
        "available"
    );
    let nearby = app
        .state
        .location
        .find_nearby_drivers(TestApp::north_of_restaurant(0.0), 1.0, 10)
        .await
        .expect("search");
    let load_of = |id: i64| {
        nearby
            .iter()
            .find(|d| d.driver_id == id)
            .map(|d| d.active_orders)
    };
    assert_eq!(load_of(driver), Some(0));
    assert_eq!(load_of(loaded), Some(1));

    // An order confirmed afterwards gets an offer in its first round.
    let order = app.confirmed_order(&cast).await;
    let outcome = matching::run_round(&app.dispatcher(fast_dispatch()), OrderId(order), 1)
        .await
        .expect("round");
    assert!(
        matches!(outcome, RoundOutcome::Offered { driver_id, .. } if [driver, loaded].contains(&driver_id.get())),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn the_driver_state_is_restored_once_even_without_a_report() {
    let app = spawn_app().await;
    let driver = app.online_driver_at(300.0).await;
    lose_valkey_data(&app).await;
    let location = &app.state.location;
    let restored = join_all((0..4).map(|_| location.ensure_state())).await;
    let restored: Vec<bool> = restored.into_iter().map(|r| r.expect("restore")).collect();
    assert_eq!(restored.iter().filter(|r| **r).count(), 1, "{restored:?}");
    // The driver is online again: its next report makes it available at once.
    assert_eq!(
        report_near_restaurant(&app, driver, 300.0).await,
        "available"
    );
}

#[tokio::test]
async fn the_first_search_after_a_valkey_restart_reconnects_instead_of_failing() {
    let port = dead_port();
    let server = start_valkey(port);
    let app = spawn_app_with(TestAppOptions {
        valkey_url: format!("redis://127.0.0.1:{port}"),
        ..TestAppOptions::default()
    })
    .await;
    let driver = app.online_driver_at(300.0).await;
    let at = TestApp::north_of_restaurant(0.0);
    let path = format!(
        "/v1/drivers/nearby?lat={}&lon={}&radius_km=2",
        at.lat, at.lon
    );
    let before = app.get_as(&path, Role::Operator, OPERATOR).await;
    assert_eq!(before.status().as_u16(), 200);

    drop(server);
    let _server = start_valkey(port);
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.state.valkey.ping().await.is_ok()
        })
        .await,
        "Valkey is back"
    );
    // The search connection sat idle through the restart: its first request must still work.
    let after = app.get_as(&path, Role::Operator, OPERATOR).await;
    assert_eq!(after.status().as_u16(), 200);
    assert_eq!(
        report_near_restaurant(&app, driver, 300.0).await,
        "available"
    );
    let found: serde_json::Value = app
        .get_as(&path, Role::Operator, OPERATOR)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(found["drivers"][0]["driver_id"], driver);
}

// --- 4. Control characters in text are refused where text is parsed -------------------------------

#[tokio::test]
async fn a_nul_character_in_any_text_field_is_a_422_and_changes_nothing() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let order = app.placed_order(&cast).await;
    let nul = "bad\u{0}text";
    let mut bodies = Vec::new();
    for field in ["line1", "line2", "city", "postal_code", "instructions"] {
        let mut body = order_body(&cast);
        body["delivery_address"][field] = json!(nul);
        bodies.push(body);
    }
    let mut body = order_body(&cast);
    body["items"][0]["special_instructions"] = json!(nul);
    bodies.push(body);
    for (i, body) in bodies.iter().enumerate() {
        let response = app
            .place_order(cast.customer, &format!("nul-{i}"), body)
            .await;
        assert_error(response, 422, "invalid_body").await;
    }
    assert_eq!(count(&app, "SELECT count(*) FROM orders").await, 1);

    for body in [
        json!({"role": "customer", "name": nul, "email": "a@example.com"}),
        json!({"role": "customer", "name": "Ann", "email": "a\u{0}@example.com"}),
        json!({"role": "customer", "name": "Ann", "email": "a@example.com", "phone": "\u{1b}1"}),
    ] {
        let response = app
            .post_as("/v1/users", Role::Operator, OPERATOR, &body)
            .await;
        assert_error(response, 422, "invalid_body").await;
    }
    assert_eq!(count(&app, "SELECT count(*) FROM users").await, 2);

    let items_before = count(&app, "SELECT count(*) FROM menu_items").await;
    for body in [
        json!({"name": nul, "price_cents": 100}),
        json!({"name": "Soup", "price_cents": 100, "description": nul}),
        json!({"name": "Soup", "price_cents": 100, "category": nul}),
    ] {
        let response = app
            .post_as(
                &format!("/v1/restaurants/{}/menu-items", cast.restaurant),
                Role::Restaurant,
                cast.restaurant,
                &body,
            )
            .await;
        assert_error(response, 422, "invalid_body").await;
    }
    assert_eq!(
        count(&app, "SELECT count(*) FROM menu_items").await,
        items_before
    );

    let cancel = app
        .post_as(
            &format!("/v1/orders/{order}/cancel"),
            Role::Customer,
            cast.customer,
            &json!({"reason": nul}),
        )
        .await;
    assert_error(cancel, 422, "invalid_body").await;
    assert_eq!(app.status_of(order).await, "PLACED");

    for path in [
        format!(
            "/v1/restaurants?lat={}&lon={}&cuisine=%00",
            RESTAURANT_AT.0, RESTAURANT_AT.1
        ),
        "/v1/orders?status=%00".to_owned(),
    ] {
        let response = app.get_as(&path, Role::Customer, cast.customer).await;
        assert_error(response, 422, "invalid_query").await;
    }
    // Line breaks stay allowed where text may span lines.
    let mut body = order_body(&cast);
    body["delivery_address"]["instructions"] = json!("ring twice\nthen wait");
    let response = app.place_order(cast.customer, "multi-line", &body).await;
    assert_eq!(response.status().as_u16(), 201);
}

// --- 5. A token's subject must exist, in the token's role ----------------------------------------

#[tokio::test]
async fn tokens_for_missing_subjects_or_the_wrong_role_are_refused() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let body = order_body(&cast);
    let place = |subject: i64, key: &'static str| app.place_order(subject, key, &body);
    let missing = place(999_999, "missing").await;
    assert_error(missing, 401, "unknown_subject").await;

    let driver = insert_driver(&app.db).await;
    let driver_user: i64 = sqlx::query_scalar("SELECT user_id FROM drivers WHERE id = $1")
        .bind(driver)
        .fetch_one(&app.db)
        .await
        .expect("driver user");
    let impostor = place(driver_user, "impostor").await;
    assert_error(impostor, 403, "subject_role_mismatch").await;
    assert_eq!(count(&app, "SELECT count(*) FROM orders").await, 0);

    for (role, subject) in [
        (Role::Driver, 999_999),
        (Role::Restaurant, 999_999),
        (Role::Operator, cast.customer),
    ] {
        let response = app.get_as("/v1/me", role, subject).await;
        assert!(
            matches!(response.status().as_u16(), 401 | 403),
            "{role} {subject}: {}",
            response.status()
        );
    }
    // The real customer goes through.
    let ok = place(cast.customer, "real").await;
    assert_eq!(ok.status().as_u16(), 201);
}

#[tokio::test]
async fn tokens_that_are_not_valid_yet_are_refused() {
    #[derive(serde::Serialize)]
    struct Claims {
        sub: String,
        role: &'static str,
        iss: &'static str,
        iat: i64,
        exp: i64,
        #[serde(skip_serializing_if = "Option::is_none")]
        nbf: Option<i64>,
    }
    let app = spawn_app().await;
    let now = chrono::Utc::now().timestamp();
    let mint = |iat: i64, nbf: Option<i64>| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &Claims {
                sub: OPERATOR.to_string(),
                role: "operator",
                iss: "courier",
                iat,
                exp: now + 7_200,
                nbf,
            },
            &jsonwebtoken::EncodingKey::from_secret(TEST_SECRET),
        )
        .expect("signed")
    };
    for token in [mint(now + 3_600, None), mint(now, Some(now + 3_600))] {
        let response = app
            .request(reqwest::Method::GET, "/v1/me")
            .bearer_auth(token)
            .send()
            .await
            .expect("sent");
        assert_error(response, 401, "token_not_yet_valid").await;
    }
    let fine = app
        .request(reqwest::Method::GET, "/v1/me")
        .bearer_auth(mint(now - 10, Some(now - 10)))
        .send()
        .await
        .expect("sent");
    assert_eq!(fine.status().as_u16(), 200);
}

// --- 6. One pending offer per driver; a second order must batch ----------------------------------

#[tokio::test]
async fn concurrent_rounds_for_many_orders_near_few_drivers_give_each_driver_one_offer() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let mut drivers = Vec::new();
    for north_m in [200.0, 400.0, 600.0] {
        drivers.push(app.online_driver_at(north_m).await);
    }
    let mut orders = Vec::new();
    for _ in 0..8 {
        orders.push(app.confirmed_order(&cast).await);
    }
    let dispatcher = app.dispatcher(fast_dispatch());
    let outcomes = join_all(
        orders
            .iter()
            .map(|&order| matching::run_round(&dispatcher, OrderId(order), 1)),
    )
    .await;
    let mut offered = Vec::new();
    for outcome in outcomes {
        match outcome.expect("round") {
            RoundOutcome::Offered { driver_id, .. } => offered.push(driver_id.get()),
            RoundOutcome::Rescheduled { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    offered.sort_unstable();
    assert_eq!(offered, drivers, "each driver offered exactly one order");
    let most: i64 = count(
        &app,
        "SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM offers
         WHERE status = 'pending' GROUP BY driver_id) t",
    )
    .await;
    assert_eq!(most, 1);
    // Every order is either offered or has its next round scheduled.
    for &order in &orders {
        let offers: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM offers WHERE order_id = $1 AND status = 'pending'",
        )
        .bind(order)
        .fetch_one(&app.db)
        .await
        .expect("offers");
        let next = app.jobs_for("courier::match_driver", order).await;
        assert!(
            offers == 1 || next >= 2,
            "order {order} left with nothing to do"
        );
    }
}

#[tokio::test]
async fn accepting_a_second_order_rechecks_the_batching_rules() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let driver = app.online_driver_at(300.0).await;
    let first = app.confirmed_order(&cast).await;
    sqlx::query("UPDATE orders SET driver_id = $2 WHERE id = $1")
        .bind(first)
        .bind(driver)
        .execute(&app.db)
        .await
        .expect("assign the first order");
    // A restaurant 2 km away: its order does not batch with the first (restaurants > 500 m).
    let far = insert_restaurant(
        &app.db,
        "Far Diner",
        "diner",
        RESTAURANT_AT.0 + 0.018,
        RESTAURANT_AT.1,
    )
    .await;
    let far_cast = Cast {
        restaurant: far,
        burger: insert_item(&app.db, far, "Pie", 900).await,
        fries: insert_item(&app.db, far, "Tea", 300).await,
        customer: cast.customer,
    };
    let second = app.confirmed_order(&far_cast).await;
    // The offer a round made while the driver was still idle (the race a replay showed).
    let offer: i64 = sqlx::query_scalar(
        "INSERT INTO offers (order_id, driver_id, round, score, score_breakdown, expires_at)
         VALUES ($1, $2, 1, 90, '{\"batch\": null}', now() + interval '60 seconds') RETURNING id",
    )
    .bind(second)
    .bind(driver)
    .fetch_one(&app.db)
    .await
    .expect("offer");
    let answer = app
        .post_as(
            &format!("/v1/offers/{offer}/accept"),
            Role::Driver,
            driver,
            &json!({}),
        )
        .await;
    let body = assert_error(answer, 409, "cannot_batch").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("500 m"),
        "{body}"
    );
    let carried: Option<i64> = sqlx::query_scalar("SELECT driver_id FROM orders WHERE id = $1")
        .bind(second)
        .fetch_one(&app.db)
        .await
        .expect("order");
    assert_eq!(carried, None);
}

// --- 7. Without If-Match, an action applies if it is still allowed --------------------------------

#[tokio::test]
async fn an_action_without_if_match_survives_an_unrelated_concurrent_change() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let order = app.confirmed_order(&cast).await;
    let driver = insert_driver(&app.db).await;
    // Someone else (an accept) changes the order and holds its row until it commits.
    let mut other = app.db.begin().await.expect("tx");
    sqlx::query("UPDATE orders SET driver_id = $2, version = version + 1 WHERE id = $1")
        .bind(order)
        .bind(driver)
        .execute(&mut *other)
        .await
        .expect("concurrent change");
    let start = tokio::spawn({
        let client = app.client.clone();
        let url = format!("{}/v1/orders/{order}/start-preparing", app.address);
        let token = app.token(Role::Restaurant, cast.restaurant);
        async move { client.post(url).bearer_auth(token).send().await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    other.commit().await.expect("commit");
    let answer = start.await.expect("joined").expect("sent");
    assert_eq!(answer.status().as_u16(), 200);
    assert_eq!(app.status_of(order).await, "PREPARING");

    // With a stale If-Match the caller asked for the check, and gets the conflict.
    let stale = app
        .client
        .post(format!("{}/v1/orders/{order}/ready", app.address))
        .bearer_auth(app.token(Role::Restaurant, cast.restaurant))
        .header("if-match", "1")
        .send()
        .await
        .expect("sent");
    assert_error(stale, 409, "conflict").await;
}

// --- 9. The assigned driver hears of a cancellation ----------------------------------------------

async fn notifications(app: &TestApp, order: i64, audience: &str, event: &str) -> Vec<i64> {
    sqlx::query_scalar(
        "SELECT (convert_from(job, 'UTF8')::jsonb ->> 'recipient_id')::bigint FROM apalis.jobs
         WHERE job_type = 'courier::notify'
           AND (convert_from(job, 'UTF8')::jsonb ->> 'order_id')::bigint = $1
           AND convert_from(job, 'UTF8')::jsonb ->> 'audience' = $2
           AND convert_from(job, 'UTF8')::jsonb ->> 'event_type' = $3",
    )
    .bind(order)
    .bind(audience)
    .bind(event)
    .fetch_all(&app.db)
    .await
    .expect("notifications")
}

#[tokio::test]
async fn a_customer_cancel_tells_the_assigned_driver_and_the_offered_one() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let driver = app.online_driver_at(300.0).await;
    let assigned = app.confirmed_order(&cast).await;
    let outcome = matching::run_round(&app.dispatcher(fast_dispatch()), OrderId(assigned), 1)
        .await
        .expect("round");
    let RoundOutcome::Offered { offer_id, .. } = outcome else {
        panic!("{outcome:?}");
    };
    let accepted = app
        .post_as(
            &format!("/v1/offers/{offer_id}/accept"),
            Role::Driver,
            driver,
            &json!({}),
        )
        .await;
    assert_eq!(accepted.status().as_u16(), 200);
    let cancel = app
        .post_as(
            &format!("/v1/orders/{assigned}/cancel"),
            Role::Customer,
            cast.customer,
            &json!({"reason": "changed my mind"}),
        )
        .await;
    assert_eq!(cancel.status().as_u16(), 200);
    assert_eq!(
        notifications(&app, assigned, "driver", "order_cancelled").await,
        vec![driver]
    );

    // A driver holding a pending offer for the order hears too, and the offer is gone.
    let offered = app.confirmed_order(&cast).await;
    let outcome = matching::run_round(&app.dispatcher(fast_dispatch()), OrderId(offered), 1)
        .await
        .expect("round");
    let RoundOutcome::Offered {
        driver_id: DriverId(other),
        ..
    } = outcome
    else {
        panic!("{outcome:?}");
    };
    let cancel = app
        .post_as(
            &format!("/v1/orders/{offered}/cancel"),
            Role::Customer,
            cast.customer,
            &json!({}),
        )
        .await;
    assert_eq!(cancel.status().as_u16(), 200);
    assert_eq!(
        notifications(&app, offered, "driver", "offer_cancelled").await,
        vec![other]
    );
    let pending: serde_json::Value = app
        .get_as(&format!("/v1/drivers/{other}/offers"), Role::Driver, other)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(pending["offers"], json!([]));
}

// --- 10. Smaller ones -----------------------------------------------------------------------------

#[tokio::test]
async fn location_history_survives_a_postgres_outage() {
    let mut app = spawn_app().await;
    let driver = insert_driver(&app.db).await;
    app.go_online(driver).await;
    // Warm the caches the request path reads from Postgres (driver and token subject).
    report_near_restaurant(&app, driver, 0.0).await;
    let admin = sqlx::PgPool::connect(&database_url("postgres"))
        .await
        .expect("admin connection");
    let name = &app.db_name;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {name} WITH ALLOW_CONNECTIONS false"
    )))
    .execute(&admin)
    .await
    .expect("refuse connections");
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(name)
        .execute(&admin)
        .await
        .expect("cut the app off");
    // Two waves, ten seconds of outage in all: longer than a write's own retry (each attempt
    // waits up to the pool's 3 s acquire timeout), so batches fail and must be held.
    for wave in 0..2 {
        for i in 1..=10 {
            let north_m = f64::from(wave * 10 + i) * 10.0;
            assert_eq!(
                report_near_restaurant(&app, driver, north_m).await,
                "available"
            );
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {name} WITH ALLOW_CONNECTIONS true"
    )))
    .execute(&admin)
    .await
    .expect("allow connections");
    admin.close().await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM driver_locations")
                .fetch_one(&app.db)
                .await
                .is_ok_and(|n| n == 21)
        })
        .await,
        "every fix reported during the outage is written once Postgres is back"
    );
    app.shutdown().await;
    assert_eq!(app.history_rows().await, 21);
}

#[tokio::test]
async fn a_connection_that_never_finishes_its_headers_is_closed() {
    let app = spawn_app().await;
    let address = app.address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: courier\r\nX-Slow: ")
        .await
        .expect("write");
    let mut buffer = [0u8; 256];
    let closed = tokio::time::timeout(TEST_HEADER_READ_TIMEOUT * 5, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server kept the connection open");
}

#[tokio::test]
async fn an_order_above_the_configured_total_is_refused() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let caviar = insert_item(&app.db, cast.restaurant, "Caviar", 25_000_001).await;
    let body = json!({
        "restaurant_id": cast.restaurant,
        "items": [{"menu_item_id": caviar, "quantity": 1}],
        "delivery_address": {"lat": RESTAURANT_AT.0 + 0.01, "lon": RESTAURANT_AT.1, "line1": "1 Test Street"},
        "payment_method": "pm_card_visa"
    });
    let response = app.place_order(cast.customer, "caviar", &body).await;
    let refused = assert_error(response, 422, "total_too_large").await;
    let message = refused["error"]["message"].as_str().expect("message");
    assert!(message.contains("500000"), "{message}");
    assert_eq!(count(&app, "SELECT count(*) FROM orders").await, 0);
}

#[test]
fn courier_dev_takes_the_usual_false_and_true_words() {
    let run = |dev: &str, secret: Option<&str>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_courier"));
        command
            .args(["token", "issue", "--role", "operator", "--subject", "1"])
            .env("COURIER_DEV", dev)
            .env("LOG_LEVEL", "error")
            .env_remove("COURIER_JWT_SECRET");
        if let Some(secret) = secret {
            command.env("COURIER_JWT_SECRET", secret);
        }
        command.output().expect("courier runs")
    };
    let secret = "a-production-secret-of-at-least-32-bytes";
    for word in ["0", "false", "no", "off"] {
        let with_secret = run(word, Some(secret));
        assert!(
            with_secret.status.success(),
            "COURIER_DEV={word}: {}",
            String::from_utf8_lossy(&with_secret.stderr)
        );
        // Off means off: no built-in secret.
        let without = run(word, None);
        assert!(!without.status.success());
        let stderr = String::from_utf8_lossy(&without.stderr);
        assert!(stderr.contains("no token signing secret"), "{stderr}");
    }
    for word in ["1", "true", "yes", "on"] {
        let dev = run(word, None);
        assert!(
            dev.status.success(),
            "COURIER_DEV={word}: {}",
            String::from_utf8_lossy(&dev.stderr)
        );
    }
}
