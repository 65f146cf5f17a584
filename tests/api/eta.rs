//! ETAs and routing: the OSRM client against a local server speaking OSRM's format (success,
//! `NoRoute`, a malformed body, a slow answer, a server error), the fallback to the estimator
//! and its counter, the route cache, traffic in the market's time zone, and the ETA of an
//! order through its life with a pinned clock.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Timelike, Utc};
use courier::auth::Role;
use courier::eta::estimator::Estimator;
use courier::eta::routing::{Routing, RoutingSettings};
use courier::geo::Point;
use courier::jobs::Job;
use courier::jobs::messages::RefreshEta;
use serde_json::{Value, json};

use crate::helpers::{
    M_PER_DEG, TestApp, TestAppOptions, cast, dead_port, eventually, insert_driver, spawn_app,
    spawn_app_with,
};

const OK: u8 = 0;
const NO_ROUTE: u8 = 1;
const MALFORMED: u8 = 2;
const SLOW: u8 = 3;
const SERVER_ERROR: u8 = 4;

/// A routing server that speaks OSRM's `/route` and `/table` format, in a mode the test sets.
#[derive(Clone, Default)]
struct FakeOsrm {
    mode: Arc<AtomicU8>,
    routes: Arc<AtomicUsize>,
    table_sources: Arc<std::sync::Mutex<Vec<usize>>>,
}

impl FakeOsrm {
    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    fn route_calls(&self) -> usize {
        self.routes.load(Ordering::SeqCst)
    }
}

async fn answer(fake: &FakeOsrm, ok: Value) -> Response {
    match fake.mode.load(Ordering::SeqCst) {
        NO_ROUTE => (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"code": "NoRoute", "message": "Impossible route between points"})),
        )
            .into_response(),
        MALFORMED => (StatusCode::OK, "<html>not json</html>").into_response(),
        SERVER_ERROR => (StatusCode::BAD_GATEWAY, "upstream down").into_response(),
        mode => {
            if mode == SLOW {
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            axum::Json(ok).into_response()
        }
    }
}

async fn route(State(fake): State<FakeOsrm>, Path(_coords): Path<String>) -> Response {
    fake.routes.fetch_add(1, Ordering::SeqCst);
    answer(
        &fake,
        json!({"code": "Ok", "routes": [{"duration": 600.0, "distance": 5000.0, "legs": []}], "waypoints": []}),
    )
    .await
}

async fn table(
    State(fake): State<FakeOsrm>,
    Path(_coords): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let n = query.get("sources").map_or(0, |s| s.split(';').count());
    fake.table_sources.lock().expect("lock").push(n);
    answer(
        &fake,
        json!({"code": "Ok", "durations": vec![vec![300.0]; n], "distances": vec![vec![2000.0]; n]}),
    )
    .await
}

async fn spawn_fake_osrm() -> (String, FakeOsrm) {
    let fake = FakeOsrm::default();
    let router = axum::Router::new()
        .route("/route/v1/driving/{coords}", get(route))
        .route("/table/v1/driving/{coords}", get(table))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, router).await });
    (url, fake)
}

fn routing(app: &TestApp, url: &str, cache_ttl: Duration) -> Routing {
    Routing::new(
        &RoutingSettings {
            osrm_url: Some(url.to_owned()),
            timeout: Duration::from_millis(500),
            cache_ttl,
            ..RoutingSettings::default()
        },
        app.state.valkey.clone(),
        app.state.location.markets().clone(),
    )
    .expect("routing")
}

/// 03:00 UTC: no traffic in a UTC market.
fn night() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-02T03:00:00Z")
        .expect("valid")
        .with_timezone(&Utc)
}

fn north(m: f64) -> Point {
    TestApp::north_of_restaurant(m)
}

#[tokio::test]
async fn osrm_answers_are_used_and_every_failure_falls_back_to_the_estimator() {
    let app = spawn_app().await;
    let (url, fake) = spawn_fake_osrm().await;
    // No cache in between: each call reaches the server.
    let routing = routing(&app, &url, Duration::from_secs(300));
    let (from, to) = (north(0.0), north(3_000.0));

    let leg = routing.route(from, to, night()).await;
    assert!(!leg.estimated);
    assert_eq!(leg.duration, Duration::from_secs(600));
    assert_eq!(leg.distance_m, 5000.0);

    let cases = [
        (NO_ROUTE, "no_route"),
        (MALFORMED, "bad_response"),
        (SLOW, "timeout"),
        (SERVER_ERROR, "unavailable"),
    ];
    for (i, (mode, reason)) in cases.into_iter().enumerate() {
        fake.set(mode);
        let series = format!("routing_fallbacks_total{{reason=\"{reason}\"}}");
        let before = app.metric(&series).await;
        // A new pair of points each time: the cache must not answer.
        let to = north(4_000.0 + 500.0 * i as f64);
        let leg = routing.route(from, to, night()).await;
        assert!(leg.estimated, "{reason}");
        let expected = Estimator::DEFAULT.route(
            courier::eta::routing::snap(from),
            courier::eta::routing::snap(to),
        );
        assert_eq!(leg.duration, expected.duration, "{reason}");
        assert!(
            app.metric(&series).await >= before + 1.0,
            "{reason} counted"
        );
    }
    // Four failures in five calls opened the breaker: even a healthy server is not asked
    // until the reset timeout has passed.
    fake.set(OK);
    let series = "routing_fallbacks_total{reason=\"circuit_open\"}";
    let before = app.metric(series).await;
    let calls = fake.route_calls();
    let leg = routing.route(from, north(9_000.0), night()).await;
    assert!(leg.estimated);
    assert_eq!(fake.route_calls(), calls);
    assert!(app.metric(series).await >= before + 1.0);
}

#[tokio::test]
async fn nearby_requests_share_a_cached_route_until_it_expires() {
    let app = spawn_app().await;
    let (url, fake) = spawn_fake_osrm().await;
    let routing = routing(&app, &url, Duration::from_secs(1));
    let (from, to) = (north(0.0), north(2_000.0));
    let first = routing.route(from, to, night()).await;
    // 15 m away at both ends: same grid cells, same entry.
    let close = routing.route(north(15.0), north(2_015.0), night()).await;
    assert_eq!(fake.route_calls(), 1);
    assert_eq!(first, close);
    // The cache keeps durations without traffic: at 08:00 the same entry is 1.5× longer.
    let rush = DateTime::parse_from_rfc3339("2026-03-02T08:00:00Z")
        .expect("valid")
        .with_timezone(&Utc);
    let busy = routing.route(from, to, rush).await;
    assert_eq!(fake.route_calls(), 1);
    assert_eq!(busy.duration, Duration::from_secs(900));
    // 300 m away is another cell: a miss.
    routing.route(north(300.0), to, night()).await;
    assert_eq!(fake.route_calls(), 2);
    // After the TTL the entry is gone.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    routing.route(from, to, night()).await;
    assert_eq!(fake.route_calls(), 3);
}

#[tokio::test]
async fn many_to_one_routes_ask_only_for_what_the_cache_lacks_in_one_request() {
    let app = spawn_app().await;
    let (url, fake) = spawn_fake_osrm().await;
    let routing = routing(&app, &url, Duration::from_secs(300));
    let restaurant = north(0.0);
    let sources = [north(1_000.0), north(2_000.0), north(3_000.0)];
    let legs = routing.routes_to(&sources[..2], restaurant, night()).await;
    assert_eq!(legs.len(), 2);
    assert!(
        legs.iter()
            .all(|l| !l.estimated && l.duration == Duration::from_secs(300))
    );
    let legs = routing.routes_to(&sources, restaurant, night()).await;
    assert_eq!(legs.len(), 3);
    assert_eq!(*fake.table_sources.lock().expect("lock"), vec![2, 1]);
    // A failing table falls back per source, never fails the caller.
    fake.set(MALFORMED);
    let legs = routing
        .routes_to(&[north(5_000.0)], restaurant, night())
        .await;
    assert!(legs[0].estimated);
}

async fn eta_of(app: &TestApp, order: i64, customer: i64) -> Value {
    let response = app
        .get_as(&format!("/v1/orders/{order}"), Role::Customer, customer)
        .await;
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.expect("json");
    body["eta"].clone()
}

fn instant(eta: &Value) -> DateTime<Utc> {
    eta["eta"]
        .as_str()
        .expect("eta instant")
        .parse()
        .expect("rfc3339")
}

async fn confirmed_at(app: &TestApp, order: i64) -> DateTime<Utc> {
    sqlx::query_scalar("SELECT confirmed_at FROM orders WHERE id = $1")
        .bind(order)
        .fetch_one(&app.db)
        .await
        .expect("confirmed_at")
}

/// A market whose local time is now about 02:00, hours away from any traffic peak, so a
/// test that expects traffic-free legs does not depend on when it runs. (In UTC, the tests'
/// default market, the same test would fail from 07:00 to 09:59, 11:00 to 13:59 and 17:00 to
/// 19:59.)
fn off_peak_market() -> chrono_tz::Tz {
    let utc_hour = i32::try_from(Utc::now().hour()).expect("an hour");
    let mut offset = (2 - utc_hour).rem_euclid(24);
    if offset > 14 {
        offset -= 24;
    }
    // IANA's Etc zones have inverted signs: Etc/GMT-3 is UTC+3.
    let name = match offset {
        0 => "Etc/GMT".to_owned(),
        o if o > 0 => format!("Etc/GMT-{o}"),
        o => format!("Etc/GMT+{}", -o),
    };
    name.parse().expect("an Etc zone")
}

#[test]
fn the_off_peak_market_is_at_two_in_the_morning() {
    let local = Utc::now().with_timezone(&off_peak_market());
    assert!((1..=3).contains(&local.hour()), "{local}");
}

#[tokio::test]
async fn an_orders_eta_moves_the_right_way_through_its_life() {
    let app = spawn_app().await;
    app.set_market_time_zone("default", off_peak_market()).await;
    let cast = cast(&app.db).await;
    let order = app.placed_order(&cast).await;
    let leg = Estimator::DEFAULT
        .route(north(0.0), north(0.01 * M_PER_DEG))
        .duration
        .as_secs_f64();

    let placed = eta_of(&app, order, cast.customer).await;
    assert_eq!(
        placed["breakdown"]["preparation_s"], 1200.0,
        "the whole 20 min"
    );
    assert_eq!(placed["breakdown"]["buffers_s"], 300.0);
    assert!((placed["breakdown"]["to_customer_s"].as_f64().expect("leg") - leg).abs() < 1.0);
    assert!((placed["confidence"].as_f64().expect("confidence") - 0.4).abs() < 1e-9);

    assert_eq!(
        app.act(order, "confirm", Role::Restaurant, cast.restaurant)
            .await
            .status()
            .as_u16(),
        200
    );
    // Pin the clock: 5 minutes after confirmation, then 10.
    let t0 = confirmed_at(&app, order).await;
    app.state.clock.set(Some(t0 + chrono::Duration::minutes(5)));
    let at_5 = eta_of(&app, order, cast.customer).await;
    assert_eq!(at_5["breakdown"]["preparation_s"], 900.0);
    app.state
        .clock
        .set(Some(t0 + chrono::Duration::minutes(10)));
    let at_10 = eta_of(&app, order, cast.customer).await;
    assert_eq!(at_10["breakdown"]["preparation_s"], 600.0);
    assert_eq!(
        instant(&at_5),
        instant(&at_10),
        "on schedule, the ETA holds"
    );

    // A driver 5 km away is assigned: the driver (~15 min), not the kitchen (10 min left),
    // sets the pace.
    let driver = app.online_driver_at(5_000.0).await;
    sqlx::query("UPDATE orders SET driver_id = $2 WHERE id = $1")
        .bind(order)
        .bind(driver)
        .execute(&app.db)
        .await
        .expect("assign");
    let assigned = eta_of(&app, order, cast.customer).await;
    let to_restaurant = assigned["breakdown"]["to_restaurant_s"]
        .as_f64()
        .expect("driver leg");
    assert!(
        (900.0..1000.0).contains(&to_restaurant),
        "5 km × 1.3 at 25 km/h: {to_restaurant}"
    );
    assert!(instant(&assigned) > instant(&at_10));
    assert!((assigned["confidence"].as_f64().expect("c") - 0.7).abs() < 1e-9);

    for step in ["start-preparing", "ready"] {
        app.act(order, step, Role::Restaurant, cast.restaurant)
            .await;
    }
    let ready = eta_of(&app, order, cast.customer).await;
    assert_eq!(ready["breakdown"]["preparation_s"], 0.0);
    assert!(instant(&ready) <= instant(&assigned));

    assert_eq!(
        app.act(order, "pickup", Role::Driver, driver)
            .await
            .status()
            .as_u16(),
        200
    );
    let picked = eta_of(&app, order, cast.customer).await;
    assert_eq!(picked["breakdown"]["to_restaurant_s"], 0.0);
    assert_eq!(picked["breakdown"]["buffers_s"], 120.0);
    assert!(instant(&picked) < instant(&ready));

    app.act(order, "deliver", Role::Driver, driver).await;
    let delivered = eta_of(&app, order, cast.customer).await;
    let delivered_at: DateTime<Utc> =
        sqlx::query_scalar("SELECT delivered_at FROM orders WHERE id = $1")
            .bind(order)
            .fetch_one(&app.db)
            .await
            .expect("delivered_at");
    assert_eq!(instant(&delivered), delivered_at);
    assert_eq!(delivered["confidence"], 1.0);

    // Cancelled orders have no ETA.
    let other = app.placed_order(&cast).await;
    app.act(other, "cancel", Role::Customer, cast.customer)
        .await;
    assert_eq!(eta_of(&app, other, cast.customer).await, Value::Null);
}

#[tokio::test]
async fn estimated_delivery_at_is_stored_at_confirmation_and_pickup() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let order = app.placed_order(&cast).await;
    let _workers = app.spawn_workers();
    let stored = || async {
        sqlx::query_scalar::<_, Option<DateTime<Utc>>>(
            "SELECT estimated_delivery_at FROM orders WHERE id = $1",
        )
        .bind(order)
        .fetch_one(&app.db)
        .await
        .expect("order")
    };
    assert_eq!(stored().await, None);
    app.act(order, "confirm", Role::Restaurant, cast.restaurant)
        .await;
    assert!(
        eventually(Duration::from_secs(15), || async {
            stored().await.is_some()
        })
        .await
    );
    let at_confirmation = stored().await.expect("stored");
    // Confirmed now, 20 min prep, ~1.1 km leg, 5 min of buffers: about 26 minutes out.
    let minutes = (at_confirmation - Utc::now()).num_minutes();
    assert!((20..=30).contains(&minutes), "{minutes}");

    let driver = insert_driver(&app.db).await;
    sqlx::query("UPDATE orders SET driver_id = $2 WHERE id = $1")
        .bind(order)
        .bind(driver)
        .execute(&app.db)
        .await
        .expect("assign");
    for step in ["start-preparing", "ready"] {
        app.act(order, step, Role::Restaurant, cast.restaurant)
            .await;
    }
    app.act(order, "pickup", Role::Driver, driver).await;
    assert_eq!(app.jobs_for(RefreshEta::QUEUE, order).await, 2);
    assert!(
        eventually(Duration::from_secs(15), || async {
            stored().await.is_some_and(|at| at < at_confirmation)
        })
        .await,
        "after pickup only the last leg remains"
    );
}

#[tokio::test]
async fn with_the_routing_service_down_orders_still_get_etas() {
    let app = spawn_app_with(TestAppOptions {
        routing: RoutingSettings {
            osrm_url: Some(format!("http://127.0.0.1:{}", dead_port())),
            timeout: Duration::from_millis(500),
            ..RoutingSettings::default()
        },
        ..TestAppOptions::default()
    })
    .await;
    let cast = cast(&app.db).await;
    let order = app.placed_order(&cast).await;
    let series = "routing_fallbacks_total{reason=\"unavailable\"}";
    let before = app.metric(series).await;
    let eta = eta_of(&app, order, cast.customer).await;
    assert!(eta["eta"].is_string());
    assert!(eta["breakdown"]["to_customer_s"].as_f64().expect("leg") > 0.0);
    assert!((eta["confidence"].as_f64().expect("c") - 0.4).abs() < 1e-9);
    assert!(app.metric(series).await >= before + 1.0);
}

#[tokio::test]
async fn traffic_follows_the_markets_clock() {
    let app = spawn_app().await;
    app.set_market_time_zone("default", chrono_tz::Tz::America__New_York)
        .await;
    let cast = cast(&app.db).await;
    let order = app.placed_order(&cast).await;
    let leg = |eta: &Value| eta["breakdown"]["to_customer_s"].as_f64().expect("leg");
    // 12:00 UTC in March is 07:00 in New York: rush hour (×1.5), though lunch (×1.3) in UTC.
    app.state.clock.set(Some(
        DateTime::parse_from_rfc3339("2026-03-02T12:00:00Z")
            .expect("valid")
            .with_timezone(&Utc),
    ));
    let rush = leg(&eta_of(&app, order, cast.customer).await);
    // 03:00 UTC is 22:00 in New York: no traffic.
    app.state.clock.set(Some(night()));
    let free = leg(&eta_of(&app, order, cast.customer).await);
    assert!((rush / free - 1.5).abs() < 1e-6, "{rush} / {free}");
}
