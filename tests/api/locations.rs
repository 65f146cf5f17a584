//! Driver locations: validation, ownership, out-of-order reports, online/offline, expiry,
//! history batching and its flush on shutdown, live tracking, and nearby-search correctness
//! against a brute-force distance computation.

use std::time::Duration;

use courier::auth::Role;
use courier::geo::{Point, haversine_m};

use crate::helpers::{
    OPERATOR, TestApp, assert_error, insert_driver, insert_user, nearby_ids, spawn_app, valkey_url,
};

const CENTER: (f64, f64) = (40.7128, -74.0060);

/// `N` new drivers, online, each having reported from [`CENTER`].
async fn online_at_center<const N: usize>(app: &TestApp) -> [i64; N] {
    let mut drivers = [0; N];
    for driver in &mut drivers {
        *driver = insert_driver(&app.db).await;
        app.go_online(*driver).await;
        app.report(
            *driver,
            serde_json::json!({"lat": CENTER.0, "lon": CENTER.1}),
        )
        .await;
    }
    drivers
}

#[tokio::test]
async fn bad_reports_get_precise_codes() {
    let app = spawn_app().await;
    let driver = insert_driver(&app.db).await;
    let future = (chrono::Utc::now() + chrono::Duration::seconds(120)).to_rfc3339();
    for (body, status, code) in [
        (
            serde_json::json!({"lat": 91, "lon": 0}),
            422,
            "invalid_location",
        ),
        (
            serde_json::json!({"lat": 0, "lon": -180.5}),
            422,
            "invalid_location",
        ),
        (
            serde_json::json!({"lat": 1, "lon": 1, "recorded_at": future}),
            422,
            "recorded_at_in_future",
        ),
        (
            serde_json::json!({"lat": 1, "lon": 1, "heading": 400}),
            422,
            "invalid_field",
        ),
        (
            serde_json::json!({"lat": 1, "lon": 1, "speed": -3}),
            422,
            "invalid_field",
        ),
        (
            serde_json::json!({"lat": "x", "lon": 1}),
            422,
            "invalid_body",
        ),
        (
            serde_json::json!({"lat": 1, "lon": 1, "altitude": 3}),
            422,
            "invalid_body",
        ),
    ] {
        assert_error(app.report(driver, body).await, status, code).await;
    }
    let body = serde_json::json!({"lat": 1, "lon": 1});
    let theirs = app
        .post_as(
            &format!("/v1/drivers/{}/location", driver + 1),
            Role::Driver,
            driver,
            &body,
        )
        .await;
    assert_error(theirs, 403, "forbidden").await;
    let customer = app
        .post_as(
            &format!("/v1/drivers/{driver}/location"),
            Role::Customer,
            insert_user(&app.db, "customer").await,
            &body,
        )
        .await;
    assert_error(customer, 403, "forbidden").await;
    let unknown = app
        .post_as("/v1/drivers/999999/location", Role::Driver, 999_999, &body)
        .await;
    assert_error(unknown, 401, "unknown_subject").await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM driver_locations")
        .fetch_one(&app.db)
        .await
        .expect("count");
    assert_eq!(rows, 0);
}

#[tokio::test]
async fn an_offline_driver_is_tracked_but_never_searchable() {
    let app = spawn_app().await;
    let driver = insert_driver(&app.db).await;
    let here = serde_json::json!({"lat": CENTER.0, "lon": CENTER.1});
    let body: serde_json::Value = app
        .report(driver, here.clone())
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(body["result"], "unavailable");
    assert!(
        nearby_ids(&app, CENTER.0, CENTER.1, 1.0, 10)
            .await
            .is_empty()
    );

    app.go_online(driver).await;
    assert_eq!(
        nearby_ids(&app, CENTER.0, CENTER.1, 1.0, 10).await,
        vec![driver]
    );
    let body: serde_json::Value = app.report(driver, here).await.json().await.expect("json");
    assert_eq!(body["result"], "available");

    let offline = app
        .post_as(
            &format!("/v1/drivers/{driver}/status"),
            Role::Driver,
            driver,
            &serde_json::json!({"status": "offline"}),
        )
        .await;
    assert_eq!(offline.status().as_u16(), 200);
    assert!(
        nearby_ids(&app, CENTER.0, CENTER.1, 1.0, 10)
            .await
            .is_empty(),
        "offline removes at once"
    );
    let active: bool = sqlx::query_scalar("SELECT is_active FROM drivers WHERE id = $1")
        .bind(driver)
        .fetch_one(&app.db)
        .await
        .expect("driver");
    assert!(!active);
    let bad = app
        .post_as(
            &format!("/v1/drivers/{driver}/status"),
            Role::Driver,
            driver,
            &serde_json::json!({"status": "napping"}),
        )
        .await;
    assert_error(bad, 422, "invalid_body").await;
}

#[tokio::test]
async fn an_older_report_is_ignored_not_an_error() {
    let app = spawn_app().await;
    let driver = insert_driver(&app.db).await;
    app.go_online(driver).await;
    let now = chrono::Utc::now();
    let newer =
        serde_json::json!({"lat": CENTER.0, "lon": CENTER.1, "recorded_at": now.to_rfc3339()});
    let older = serde_json::json!({"lat": CENTER.0 + 0.05, "lon": CENTER.1, "recorded_at": (now - chrono::Duration::seconds(5)).to_rfc3339()});
    assert_eq!(app.report(driver, newer).await.status().as_u16(), 200);
    let late = app.report(driver, older).await;
    assert_eq!(late.status().as_u16(), 200);
    let body: serde_json::Value = late.json().await.expect("json");
    assert_eq!(body["result"], "stale");
    // Still where the newer report put it.
    assert_eq!(
        nearby_ids(&app, CENTER.0, CENTER.1, 0.5, 10).await,
        vec![driver]
    );
}

#[tokio::test]
async fn a_silent_driver_disappears_from_queries_and_the_set() {
    let app = spawn_app().await;
    let [silent, chatty] = online_at_center(&app).await;
    assert_eq!(nearby_ids(&app, CENTER.0, CENTER.1, 1.0, 10).await.len(), 2);

    // Make the silent driver's last report 31 s old, as if its phone died.
    let seen_key = app.state.valkey.key("loc:{default}:seen");
    let avail_key = app.state.valkey.key("loc:{default}:avail");
    let mut conn = app.state.valkey.connection();
    let old = chrono::Utc::now().timestamp_millis() - 31_000;
    let _: () = redis::cmd("ZADD")
        .arg(&seen_key)
        .arg(old)
        .arg(silent)
        .query_async(&mut conn)
        .await
        .expect("ZADD");
    // Queries exclude it before any sweep…
    assert_eq!(
        nearby_ids(&app, CENTER.0, CENTER.1, 1.0, 10).await,
        vec![chatty]
    );
    // …and the sweep removes it from the structures.
    let removed = app.state.location.sweep().await.expect("sweep");
    assert_eq!(removed, 1);
    let in_set: Option<f64> = redis::cmd("ZSCORE")
        .arg(&avail_key)
        .arg(silent)
        .query_async(&mut conn)
        .await
        .expect("ZSCORE");
    assert_eq!(in_set, None);
    let position_kept: bool = redis::cmd("HEXISTS")
        .arg(app.state.valkey.key("loc:{default}:pos"))
        .arg(silent)
        .query_async(&mut conn)
        .await
        .expect("HEXISTS");
    assert!(!position_kept);
    assert_eq!(app.state.location.active_count().await.expect("count"), 1);
    // It comes back with its next report.
    app.report(
        silent,
        serde_json::json!({"lat": CENTER.0, "lon": CENTER.1}),
    )
    .await;
    assert_eq!(nearby_ids(&app, CENTER.0, CENTER.1, 1.0, 10).await.len(), 2);
}

#[tokio::test]
async fn a_driver_with_two_active_orders_is_not_available() {
    let app = spawn_app().await;
    let [busy, free] = online_at_center(&app).await;
    app.state
        .location
        .set_assignment(busy, Some(1), 2)
        .await
        .expect("assign");
    assert_eq!(
        nearby_ids(&app, CENTER.0, CENTER.1, 1.0, 10).await,
        vec![free]
    );
    let body: serde_json::Value = app
        .report(busy, serde_json::json!({"lat": CENTER.0, "lon": CENTER.1}))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(body["result"], "unavailable");
}

#[tokio::test]
async fn a_batch_validates_each_item_on_its_own() {
    let app = spawn_app().await;
    let a = insert_driver(&app.db).await;
    let b = insert_driver(&app.db).await;
    let body = serde_json::json!({"updates": [
        {"driver_id": a, "lat": CENTER.0, "lon": CENTER.1},
        {"driver_id": b, "lat": 95, "lon": CENTER.1},
        {"driver_id": 999_999, "lat": CENTER.0, "lon": CENTER.1},
        {"driver_id": b, "lat": CENTER.0, "lon": CENTER.1, "colour": "red"},
        {"lat": CENTER.0},
        {"driver_id": b, "lat": CENTER.0, "lon": CENTER.1},
    ]});
    let response = app
        .post_as(
            "/v1/drivers/locations:batch",
            Role::Operator,
            OPERATOR,
            &body,
        )
        .await;
    assert_eq!(response.status().as_u16(), 200);
    let result: serde_json::Value = response.json().await.expect("json");
    assert_eq!(result["accepted"], 2);
    assert_eq!(result["rejected"], 4);
    let codes: Vec<String> = result["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| {
            r["error"]["code"].as_str().map_or_else(
                || r["result"].as_str().expect("result").to_owned(),
                str::to_owned,
            )
        })
        .collect();
    assert_eq!(
        codes,
        [
            "unavailable",
            "invalid_location",
            "not_found",
            "invalid_body",
            "invalid_body",
            "unavailable"
        ]
    );

    // A driver may batch only its own reports.
    let own = serde_json::json!({"updates": [
        {"driver_id": a, "lat": CENTER.0, "lon": CENTER.1},
        {"driver_id": b, "lat": CENTER.0, "lon": CENTER.1},
    ]});
    let result: serde_json::Value = app
        .post_as("/v1/drivers/locations:batch", Role::Driver, a, &own)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(result["results"][1]["error"]["code"], "forbidden");

    let too_many = serde_json::json!({"updates": vec![serde_json::json!({"driver_id": a, "lat": 0, "lon": 0}); 1001]});
    let response = app
        .client
        .post(format!("{}/v1/drivers/locations:batch", app.address))
        .bearer_auth(app.token(Role::Operator, OPERATOR))
        .json(&too_many)
        .send()
        .await
        .expect("sent");
    assert_error(response, 422, "invalid_batch").await;
    let empty = app
        .post_as(
            "/v1/drivers/locations:batch",
            Role::Operator,
            OPERATOR,
            &serde_json::json!({"updates": []}),
        )
        .await;
    assert_error(empty, 422, "invalid_batch").await;
    let customer = app
        .post_as(
            "/v1/drivers/locations:batch",
            Role::Customer,
            insert_user(&app.db, "customer").await,
            &own,
        )
        .await;
    assert_error(customer, 403, "forbidden").await;
}

#[tokio::test]
async fn history_is_written_in_batches_and_flushed_on_shutdown() {
    let mut app = spawn_app().await;
    let mut drivers = Vec::new();
    for _ in 0..5 {
        drivers.push(insert_driver(&app.db).await);
    }
    let start = chrono::Utc::now() - chrono::Duration::seconds(60);
    let mut accepted = 0;
    for step in 0..20 {
        let updates: Vec<serde_json::Value> = drivers
            .iter()
            .map(|d| {
                serde_json::json!({"driver_id": d, "lat": CENTER.0 + f64::from(step) * 1e-4, "lon": CENTER.1,
                                   "recorded_at": (start + chrono::Duration::seconds(i64::from(step))).to_rfc3339()})
            })
            .collect();
        let result: serde_json::Value = app
            .post_as(
                "/v1/drivers/locations:batch",
                Role::Operator,
                OPERATOR,
                &serde_json::json!({"updates": updates}),
            )
            .await
            .json()
            .await
            .expect("json");
        accepted += result["accepted"].as_i64().expect("accepted");
    }
    // A stale report is not history.
    let stale = app
        .report(
            drivers[0],
            serde_json::json!({"lat": 0, "lon": 0, "recorded_at": start.to_rfc3339()}),
        )
        .await;
    assert_eq!(
        stale.json::<serde_json::Value>().await.expect("json")["result"],
        "stale"
    );
    assert_eq!(accepted, 100);

    app.shutdown().await;
    assert_eq!(
        app.history_rows().await,
        accepted,
        "every accepted report is in history after shutdown"
    );
    let per_driver: Vec<i64> =
        sqlx::query_scalar("SELECT count(*) FROM driver_locations GROUP BY driver_id")
            .fetch_all(&app.db)
            .await
            .expect("group");
    assert_eq!(per_driver, vec![20; 5]);
}

#[tokio::test]
async fn reports_of_a_driver_carrying_an_order_reach_its_live_channel() {
    let app = spawn_app().await;
    let driver = insert_driver(&app.db).await;
    // A driver is in a market from its first report on.
    app.report(
        driver,
        serde_json::json!({"lat": CENTER.0, "lon": CENTER.1}),
    )
    .await;
    app.state
        .location
        .set_assignment(driver, Some(4242), 1)
        .await
        .expect("assign");
    let client = redis::Client::open(valkey_url()).expect("client");
    let mut pubsub = client.get_async_pubsub().await.expect("pubsub");
    pubsub
        .subscribe(app.state.location.position_channel(driver))
        .await
        .expect("subscribe");
    app.report(
        driver,
        serde_json::json!({"lat": CENTER.0, "lon": CENTER.1}),
    )
    .await;
    let mut messages = pubsub.on_message();
    let message = tokio::time::timeout(
        Duration::from_secs(5),
        futures::StreamExt::next(&mut messages),
    )
    .await
    .expect("a message within 5 s")
    .expect("stream open");
    let payload: serde_json::Value =
        serde_json::from_str(&message.get_payload::<String>().expect("text")).expect("json");
    assert_eq!(payload["driverId"], driver);
    assert_eq!(payload["orderId"], 4242);
    assert_eq!(payload["lat"], CENTER.0);
}

/// A deterministic pseudo-random sequence for the brute-force comparison.
fn lcg(state: &mut u64) -> f64 {
    *state = state
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    (*state >> 11) as f64 / (1u64 << 53) as f64
}

#[tokio::test]
async fn nearby_matches_a_brute_force_search_on_random_points() {
    let app = spawn_app().await;
    let mut seed = 7_u64;
    let mut points = Vec::new();
    let mut updates = Vec::new();
    for _ in 0..400 {
        let driver = insert_driver(&app.db).await;
        let lat = CENTER.0 + (lcg(&mut seed) - 0.5) * 0.16;
        let lon = CENTER.1 + (lcg(&mut seed) - 0.5) * 0.2;
        points.push((driver, Point { lat, lon }));
        updates.push(serde_json::json!({"driver_id": driver, "lat": lat, "lon": lon}));
    }
    // Online in Postgres: each driver's first report places it in its market with that.
    let ids: Vec<i64> = points.iter().map(|(id, _)| *id).collect();
    sqlx::query("UPDATE drivers SET is_active = TRUE WHERE id = ANY($1)")
        .bind(&ids)
        .execute(&app.db)
        .await
        .expect("online");
    let result: serde_json::Value = app
        .post_as(
            "/v1/drivers/locations:batch",
            Role::Operator,
            OPERATOR,
            &serde_json::json!({"updates": updates}),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(result["accepted"], 400);

    let center = Point {
        lat: CENTER.0,
        lon: CENTER.1,
    };
    for (radius_km, limit) in [(0.8, 100), (3.0, 100), (5.0, 25), (5.0, 100)] {
        let mut brute: Vec<(i64, f64)> = points
            .iter()
            .map(|(id, p)| (*id, haversine_m(center, *p)))
            .filter(|(_, d)| *d <= radius_km * 1_000.0)
            .collect();
        brute.sort_by(|a, b| a.1.total_cmp(&b.1));
        let got = nearby_ids(&app, CENTER.0, CENTER.1, radius_km, limit).await;
        // Valkey's geohash and earth radius differ from ours by a few metres: ignore drivers
        // within 10 m of the radius or of the cut-off, where the two may rightly disagree.
        let edge = |d: f64| (d - radius_km * 1_000.0).abs() < 10.0;
        let expected: Vec<i64> = brute
            .iter()
            .take(limit)
            .filter(|(_, d)| !edge(*d))
            .map(|(id, _)| *id)
            .collect();
        let cutoff = brute.get(limit).map(|(_, d)| *d);
        for id in &expected {
            let distance = brute
                .iter()
                .find(|(b, _)| b == id)
                .map(|(_, d)| *d)
                .unwrap_or_default();
            if cutoff.is_some_and(|c| (c - distance).abs() < 10.0) {
                continue;
            }
            assert!(
                got.contains(id),
                "radius {radius_km} km, limit {limit}: driver {id} at {distance:.0} m missing"
            );
        }
        assert!(got.len() <= limit);
        let distances: Vec<f64> = got
            .iter()
            .map(|id| {
                points
                    .iter()
                    .find(|(p, _)| p == id)
                    .map(|(_, p)| haversine_m(center, *p))
                    .unwrap_or_default()
            })
            .collect();
        assert!(
            distances.windows(2).all(|w| w[0] <= w[1]),
            "not nearest first: {distances:?}"
        );
        assert!(distances.iter().all(|d| *d <= radius_km * 1_000.0 + 10.0));
    }

    // Each driver comes with the position it reported (not a geohash approximation) and its
    // exact distance from the search point.
    let body: serde_json::Value = app
        .get_as(
            &format!(
                "/v1/drivers/nearby?lat={}&lon={}&radius_km=2&limit=50",
                CENTER.0, CENTER.1
            ),
            Role::Operator,
            OPERATOR,
        )
        .await
        .json()
        .await
        .expect("json");
    let drivers = body["drivers"].as_array().expect("array");
    assert!(!drivers.is_empty());
    for d in drivers {
        let id = d["driver_id"].as_i64().expect("id");
        let (_, reported) = points.iter().find(|(p, _)| *p == id).expect("known");
        assert_eq!(d["lat"].as_f64(), Some(reported.lat));
        assert_eq!(d["lon"].as_f64(), Some(reported.lon));
        let distance = d["distance_m"].as_f64().expect("distance");
        assert!((distance - haversine_m(center, *reported)).abs() < 1e-6);
        assert_eq!(d["active_orders"], 0);
    }
}

#[tokio::test]
async fn a_driver_twice_in_one_batch_ends_at_its_newest_report() {
    let app = spawn_app().await;
    let driver = insert_driver(&app.db).await;
    app.go_online(driver).await;
    let now = chrono::Utc::now();
    let at = |seconds_ago: i64, lat: f64| {
        serde_json::json!({"driver_id": driver, "lat": lat, "lon": CENTER.1,
                           "recorded_at": (now - chrono::Duration::seconds(seconds_ago)).to_rfc3339()})
    };
    let far = CENTER.0 + 0.05;
    // Newest first, then an older one: the older is stale.
    let body = serde_json::json!({"updates": [at(1, CENTER.0), at(5, far)]});
    let result: serde_json::Value = app
        .post_as(
            "/v1/drivers/locations:batch",
            Role::Operator,
            OPERATOR,
            &body,
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(result["results"][0]["result"], "available");
    assert_eq!(result["results"][1]["result"], "stale");
    assert_eq!(
        nearby_ids(&app, CENTER.0, CENTER.1, 0.5, 10).await,
        vec![driver]
    );
    // In order: both accepted, the later position wins.
    let body = serde_json::json!({"updates": [at(0, CENTER.0), {"driver_id": driver, "lat": far, "lon": CENTER.1}]});
    let result: serde_json::Value = app
        .post_as(
            "/v1/drivers/locations:batch",
            Role::Operator,
            OPERATOR,
            &body,
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(result["accepted"], 2);
    assert!(
        nearby_ids(&app, CENTER.0, CENTER.1, 0.5, 10)
            .await
            .is_empty()
    );
    assert_eq!(nearby_ids(&app, far, CENTER.1, 0.5, 10).await, vec![driver]);
}

/// Groups of more than 20 single reports coalesced so far, by this test process.
async fn large_groups(app: &TestApp) -> f64 {
    app.metric(r#"location_ingest_group_size_bucket{le="+Inf"}"#)
        .await
        - app
            .metric(r#"location_ingest_group_size_bucket{le="20"}"#)
            .await
}

#[tokio::test]
async fn single_reports_arriving_together_share_a_script_call_and_keep_their_own_outcomes() {
    let app = spawn_app().await;
    // 30 online drivers, 10 offline ones, and 10 online ones whose report comes late.
    let mut drivers = Vec::new();
    for i in 0..50 {
        let driver = insert_driver(&app.db).await;
        if !(30..40).contains(&i) {
            app.go_online(driver).await;
        }
        drivers.push(driver);
    }
    let now = chrono::Utc::now();
    for driver in &drivers[40..] {
        let fresh =
            serde_json::json!({"lat": CENTER.0, "lon": CENTER.1, "recorded_at": now.to_rfc3339()});
        assert_eq!(app.report(*driver, fresh).await.status().as_u16(), 200);
    }
    let groups_before = large_groups(&app).await;

    // Hold the Valkey connection the reports go through: a blocking pop on it delays every
    // command queued behind it, so the reports pile up while the first group waits.
    let mut held = app.state.valkey.connection();
    let hold = tokio::spawn(async move {
        let _: Option<(String, String)> = redis::cmd("BLPOP")
            .arg("test:nothing-ever-arrives")
            .arg(0.5)
            .query_async(&mut held)
            .await
            .expect("blpop");
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let position = |i: usize| (CENTER.0 + i as f64 * 0.001, CENTER.1);
    let earlier = (now - chrono::Duration::seconds(10)).to_rfc3339();
    let responses = futures::future::join_all(drivers.iter().enumerate().map(|(i, driver)| {
        let (lat, lon) = position(i);
        let body = if i >= 40 {
            serde_json::json!({"lat": lat, "lon": lon, "recorded_at": earlier})
        } else {
            serde_json::json!({"lat": lat, "lon": lon})
        };
        app.report(*driver, body)
    }))
    .await;
    hold.await.expect("hold task");

    for (i, response) in responses.into_iter().enumerate() {
        assert_eq!(response.status().as_u16(), 200, "report {i}");
        let body: serde_json::Value = response.json().await.expect("json");
        let expected = match i {
            0..30 => "available",
            30..40 => "unavailable",
            _ => "stale",
        };
        assert_eq!(body["result"], expected, "report {i}");
        assert_eq!(body["driver_id"], drivers[i]);
    }
    for (i, driver) in drivers.iter().enumerate() {
        let (point, _) = app
            .state
            .location
            .last_fix(*driver)
            .await
            .expect("valkey")
            .expect("a position");
        let (lat, lon) = if i >= 40 { CENTER } else { position(i) };
        assert!(
            (point.lat - lat).abs() < 1e-9 && (point.lon - lon).abs() < 1e-9,
            "driver {i} at {point:?}"
        );
    }
    assert!(
        large_groups(&app).await > groups_before,
        "the reports queued behind the held connection went out as one group"
    );
}

#[tokio::test]
async fn a_report_while_valkey_is_down_is_a_clear_503() {
    let mut app = crate::helpers::spawn_app_with(crate::helpers::TestAppOptions {
        valkey_url: format!("redis://127.0.0.1:{}", crate::helpers::dead_port()),
        ..crate::helpers::TestAppOptions::default()
    })
    .await;
    let driver = insert_driver(&app.db).await;
    let response = app
        .report(
            driver,
            serde_json::json!({"lat": CENTER.0, "lon": CENTER.1}),
        )
        .await;
    assert_error(response, 503, "cache_unavailable").await;
    // Shutting down flushes the history writer: nothing was queued for it.
    app.shutdown().await;
    assert_eq!(
        app.history_rows().await,
        0,
        "nothing is recorded for a report that was not applied"
    );
}

#[tokio::test]
async fn a_search_widens_its_rings_until_it_has_enough_drivers() {
    let app = spawn_app().await;
    // Drivers 300 m, 3 km and 8 km north of the centre: in the first, the third and the
    // fifth ring.
    let mut drivers = Vec::new();
    for north_m in [300.0, 3_000.0, 8_000.0] {
        let driver = insert_driver(&app.db).await;
        app.go_online(driver).await;
        let lat = CENTER.0 + north_m / 111_320.0;
        let response = app
            .report(driver, serde_json::json!({"lat": lat, "lon": CENTER.1}))
            .await;
        assert_eq!(response.status().as_u16(), 200);
        drivers.push(driver);
    }
    assert_eq!(
        nearby_ids(&app, CENTER.0, CENTER.1, 10.0, 1).await,
        drivers[..1]
    );
    assert_eq!(
        nearby_ids(&app, CENTER.0, CENTER.1, 10.0, 2).await,
        drivers[..2]
    );
    assert_eq!(nearby_ids(&app, CENTER.0, CENTER.1, 10.0, 5).await, drivers);
    assert_eq!(
        nearby_ids(&app, CENTER.0, CENTER.1, 5.0, 5).await,
        drivers[..2]
    );
    assert!(
        nearby_ids(&app, CENTER.0, CENTER.1, 0.2, 5)
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn history_goes_in_small_batches_and_a_lone_row_within_the_flush_interval() {
    use courier::location::history::{self, HistoryRow, SMALL_BATCH_ROWS};
    let app = spawn_app().await;
    let driver = insert_driver(&app.db).await;
    let row = |i: i64| HistoryRow {
        driver_id: driver,
        lat: CENTER.0,
        lon: CENTER.1,
        heading: None,
        speed_mps: None,
        accuracy_m: None,
        recorded_at_ms: chrono::Utc::now().timestamp_millis() - 60_000 + i,
    };
    let (sender, task) = history::spawn(app.db.clone());
    let count = || app.history_rows();

    // A lone row is not held back until a batch fills: it is written within the interval.
    sender.record(row(0));
    assert!(
        crate::helpers::eventually(Duration::from_secs(5), || async { count().await == 1 }).await,
        "a lone row was never written"
    );

    // 550 rows queued at once go as small inserts; rows of one insert share a transaction id.
    for i in 1..=550 {
        sender.record(row(i));
    }
    assert!(
        crate::helpers::eventually(Duration::from_secs(10), || async { count().await == 551 })
            .await,
        "the queued rows were never written"
    );
    task.shutdown().await;
    let inserts: Vec<i64> = sqlx::query_scalar(
        "SELECT count(*) FROM driver_locations GROUP BY xmin::text ORDER BY count(*) DESC",
    )
    .fetch_all(&app.db)
    .await
    .expect("xmins");
    let largest = i64::try_from(SMALL_BATCH_ROWS).expect("small");
    assert!(
        inserts.iter().all(|n| *n <= largest),
        "an insert was larger than a small batch: {inserts:?}"
    );
    assert!(
        inserts.len() <= 1 + 550 / SMALL_BATCH_ROWS + 1,
        "rows were not batched: {} inserts",
        inserts.len()
    );
}
