//! Driver matching on the real stack: offers to the best driver, expiry to the next, accept
//! and decline, radius expansion and backoff rounds, cancellation and going offline, the
//! circuit breaker, and the invariants under concurrency.

use std::time::Duration;

use courier::auth::Role;
use courier::breaker::{BreakerSettings, BreakerState};
use courier::dispatch::DispatchSettings;
use courier::domain::{OfferId, OrderId};
use courier::jobs::Job;
use courier::jobs::messages::MatchDriver;
use courier::jobs::messages::OfferTimeout;
use courier::workflows::matching::{self, RoundOutcome};
use courier::workflows::offers;
use serde_json::json;

use crate::helpers::{
    RESTAURANT_AT, TestApp, assert_error, cast, eventually, fast_dispatch, insert_driver, spawn_app,
};

/// `(offer id, driver id, status)` of every offer of `order`, oldest first.
async fn offers_of(app: &TestApp, order: i64) -> Vec<(i64, i64, String)> {
    sqlx::query_as("SELECT id, driver_id, status FROM offers WHERE order_id = $1 ORDER BY id")
        .bind(order)
        .fetch_all(&app.db)
        .await
        .expect("offers")
}

async fn driver_of(app: &TestApp, order: i64) -> Option<i64> {
    sqlx::query_scalar("SELECT driver_id FROM orders WHERE id = $1")
        .bind(order)
        .fetch_one(&app.db)
        .await
        .expect("order")
}

/// Audit rows of `order` with `event_type`, their metadata oldest first.
async fn audit(app: &TestApp, order: i64, event_type: &str) -> Vec<serde_json::Value> {
    sqlx::query_scalar(
        "SELECT metadata FROM audit_logs WHERE entity_id = $1 AND event_type = $2 ORDER BY id",
    )
    .bind(order)
    .bind(event_type)
    .fetch_all(&app.db)
    .await
    .expect("audit rows")
}

/// Match-driver jobs of `order` not yet run.
async fn pending_rounds(app: &TestApp, order: i64) -> Vec<i64> {
    sqlx::query_scalar(
        "SELECT (convert_from(job, 'UTF8')::jsonb ->> 'round')::bigint FROM apalis.jobs
         WHERE job_type = $1 AND status = 'Pending'
           AND (convert_from(job, 'UTF8')::jsonb ->> 'order_id')::bigint = $2
         ORDER BY run_at",
    )
    .bind(MatchDriver::QUEUE)
    .bind(order)
    .fetch_all(&app.db)
    .await
    .expect("jobs")
}

async fn decline(app: &TestApp, offer: i64, driver: i64) -> reqwest::Response {
    app.post_as(
        &format!("/v1/offers/{offer}/decline"),
        Role::Driver,
        driver,
        &json!({}),
    )
    .await
}

/// A driver's offers as its own poll lists them: their ids.
async fn polled_offers(app: &TestApp, driver: i64) -> Vec<i64> {
    let listed: serde_json::Value = app
        .get_as(
            &format!("/v1/drivers/{driver}/offers"),
            Role::Driver,
            driver,
        )
        .await
        .json()
        .await
        .expect("json");
    listed["offers"]
        .as_array()
        .expect("offers")
        .iter()
        .map(|o| o["id"].as_i64().expect("id"))
        .collect()
}

#[tokio::test]
async fn offer_polls_read_postgres_only_for_drivers_noted_as_offered() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let driver = app.online_driver_at(300.0).await;
    let order = app.confirmed_order(&cast).await;
    // Matching notes the driver as it makes the offer: the poll finds it.
    let (made, _) = offered(&round_one(&app, order).await);
    assert_eq!(polled_offers(&app, driver).await, vec![made]);

    // An offer row no round made (so never noted) is not looked for once the notes are
    // whole: the poll is answered from Valkey alone.
    app.state
        .location
        .ensure_offer_notes()
        .await
        .expect("notes checked");
    let other = app.online_driver_at(600.0).await;
    let second = app.confirmed_order(&cast).await;
    let unnoted = insert_offer(&app, second, other).await;
    assert_eq!(polled_offers(&app, other).await, Vec::<i64>::new());
    // Once noted, it is.
    app.state
        .location
        .note_offer(other, Duration::from_secs(30))
        .await
        .expect("note");
    assert_eq!(polled_offers(&app, other).await, vec![unnoted]);

    // A Valkey that lost the notes has lost their markers too: polls go to Postgres, so no
    // pending offer is hidden…
    let mut valkey = app.state.valkey.connection();
    let notes: Vec<String> = redis::cmd("KEYS")
        .arg(app.state.valkey.key("offers:*"))
        .query_async(&mut valkey)
        .await
        .expect("keys");
    assert!(notes.len() > 16, "notes and the 16 markers: {notes:?}");
    let _: () = redis::cmd("DEL")
        .arg(&notes)
        .query_async(&mut valkey)
        .await
        .expect("flush");
    assert_eq!(polled_offers(&app, driver).await, vec![made]);
    assert_eq!(polled_offers(&app, other).await, vec![unnoted]);
    // …until they are restored from the pending offers in Postgres, every shard of them.
    assert_eq!(
        app.state
            .location
            .ensure_offer_notes()
            .await
            .expect("restored"),
        16
    );
    let restored: Vec<String> = redis::cmd("KEYS")
        .arg(app.state.valkey.key("offers:*:d:*"))
        .query_async(&mut valkey)
        .await
        .expect("keys");
    assert_eq!(restored.len(), 2, "{restored:?}");
    assert_eq!(polled_offers(&app, driver).await, vec![made]);
    assert_eq!(polled_offers(&app, other).await, vec![unnoted]);
    assert_eq!(
        app.state
            .location
            .ensure_offer_notes()
            .await
            .expect("checked"),
        0,
        "nothing left to restore"
    );
}

/// Inserts a pending offer directly (to set up races matching itself would never create).
async fn insert_offer(app: &TestApp, order: i64, driver: i64) -> i64 {
    try_insert_offer(app, order, driver)
        .await
        .expect("insert offer")
}

/// Inserts a pending offer directly, as far as the schema allows.
async fn try_insert_offer(app: &TestApp, order: i64, driver: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO offers (order_id, driver_id, round, score, score_breakdown, expires_at)
         VALUES ($1, $2, 1, 100, '{}', now() + interval '60 seconds') RETURNING id",
    )
    .bind(order)
    .bind(driver)
    .fetch_one(&app.db)
    .await
}

/// Available drivers within 1 km of the restaurant.
async fn available_near_restaurant(app: &TestApp) -> Vec<courier::location::NearbyDriver> {
    app.state
        .location
        .find_nearby_drivers(
            courier::geo::Point {
                lat: RESTAURANT_AT.0,
                lon: RESTAURANT_AT.1,
            },
            1.0,
            10,
        )
        .await
        .expect("search")
}

/// How many of `answers` are 200s; every other must be a 409 with `conflict_code`.
async fn successes(answers: Vec<reqwest::Response>, conflict_code: &str) -> usize {
    let mut ok = 0;
    for answer in answers {
        match answer.status().as_u16() {
            200 => ok += 1,
            409 => {
                let body: serde_json::Value = answer.json().await.expect("json");
                assert_eq!(body["error"]["code"], conflict_code);
            }
            status => panic!("unexpected {status}"),
        }
    }
    ok
}

/// Round 1 of `order` with the test settings.
async fn round_one(app: &TestApp, order: i64) -> RoundOutcome {
    matching::run_round(&app.dispatcher(fast_dispatch()), OrderId(order), 1)
        .await
        .expect("round")
}

fn offered(outcome: &RoundOutcome) -> (i64, i64) {
    match outcome {
        RoundOutcome::Offered {
            offer_id,
            driver_id,
            ..
        } => (offer_id.get(), driver_id.get()),
        other => panic!("expected an offer, got {other:?}"),
    }
}

#[tokio::test]
async fn the_best_driver_is_offered_first_then_the_next_after_a_timeout_and_accepts() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let nearest = app.online_driver_at(300.0).await;
    let second = app.online_driver_at(1_500.0).await;
    let third = app.online_driver_at(4_000.0).await;
    let order = app.confirmed_order(&cast).await;
    let _workers = app.spawn_workers_with(DispatchSettings {
        first_offer_ttl: Duration::from_secs(2),
        later_offer_ttl: Duration::from_secs(60),
        ..fast_dispatch()
    });

    // The nearest driver sees the offer.
    assert!(
        eventually(Duration::from_secs(15), || async {
            offers_of(&app, order).await.len() == 1
        })
        .await
    );
    let first = offers_of(&app, order).await;
    assert_eq!(first[0].1, nearest);
    let listed = app
        .get_as(
            &format!("/v1/drivers/{nearest}/offers"),
            Role::Driver,
            nearest,
        )
        .await;
    assert_eq!(listed.status().as_u16(), 200);
    let listed: serde_json::Value = listed.json().await.expect("json");
    assert_eq!(listed["offers"][0]["order_id"], order);
    assert_eq!(listed["offers"][0]["restaurant_id"], cast.restaurant);

    // Nobody answers: it expires and the next-best driver gets the order.
    assert!(
        eventually(Duration::from_secs(20), || async {
            offers_of(&app, order).await.len() == 2
        })
        .await
    );
    let both = offers_of(&app, order).await;
    assert_eq!(both[0].2, "expired");
    assert_eq!((both[1].1, both[1].2.as_str()), (second, "pending"));
    assert_error(app.accept(both[0].0, nearest).await, 409, "offer_expired").await;

    let accepted = app.accept(both[1].0, second).await;
    assert_eq!(accepted.status().as_u16(), 200);
    let body: serde_json::Value = accepted.json().await.expect("json");
    assert_eq!(body["offer"]["status"], "accepted");
    assert_eq!(body["order"]["driver_id"], second);

    // The customer sees the driver; the trail says what happened.
    let seen = app
        .get_as(
            &format!("/v1/orders/{order}"),
            Role::Customer,
            cast.customer,
        )
        .await;
    let seen: serde_json::Value = seen.json().await.expect("json");
    assert_eq!(seen["driver_id"], second);
    assert_eq!(audit(&app, order, "offer_made").await.len(), 2);
    assert_eq!(audit(&app, order, "offer_expired").await.len(), 1);
    assert_eq!(audit(&app, order, "driver_assigned").await.len(), 1);
    assert_eq!(app.outbox_events(order, "driver_assigned").await, 1);
    let breakdown = &audit(&app, order, "offer_made").await[0]["breakdown"];
    assert!(breakdown["distance_km"].as_f64().expect("distance") < 0.35);
    assert!(breakdown["total"].as_f64().is_some());
    // The third driver was never bothered, and the assigned driver can pick up.
    assert!(offers_of(&app, order).await.iter().all(|o| o.1 != third));
    assert_eq!(
        app.act(order, "pickup", Role::Driver, second)
            .await
            .status()
            .as_u16(),
        409,
        "confirmed, not ready: the state machine still rules"
    );
}

#[tokio::test]
async fn empty_rounds_back_off_flag_the_order_and_the_radius_expands_to_10_km() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let order = app.confirmed_order(&cast).await;
    let _workers = app.spawn_workers();

    // No driver anywhere: rounds 1, 2, 3 find nobody; after the third the order is flagged.
    assert!(
        eventually(Duration::from_secs(30), || async {
            app.outbox_events(order, "order_unmatched").await == 1
        })
        .await
    );
    let empty = audit(&app, order, "match_round_empty").await;
    assert!(empty.len() >= 3, "{empty:?}");
    let rounds: Vec<i64> = empty
        .iter()
        .map(|m| m["round"].as_i64().expect("round"))
        .collect();
    assert_eq!(&rounds[..3], &[1, 2, 3]);
    let delays: Vec<f64> = empty
        .iter()
        .map(|m| m["retry_in_s"].as_f64().expect("delay"))
        .collect();
    assert_eq!(
        &delays[..3],
        &[1.0, 2.0, 2.0],
        "base 1 s, doubling, capped at 2 s"
    );
    assert!(empty.iter().all(|m| m["radius_km"] == 10.0));
    assert_eq!(audit(&app, order, "order_unmatched").await.len(), 1);
    // The job table holds every round, each scheduled later than the one before.
    let scheduled: Vec<(i64, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT (convert_from(job, 'UTF8')::jsonb ->> 'round')::bigint, run_at FROM apalis.jobs
         WHERE job_type = $1 AND (convert_from(job, 'UTF8')::jsonb ->> 'order_id')::bigint = $2
         ORDER BY run_at",
    )
    .bind(MatchDriver::QUEUE)
    .bind(order)
    .fetch_all(&app.db)
    .await
    .expect("jobs");
    let job_rounds: Vec<i64> = scheduled.iter().map(|(r, _)| *r).collect();
    assert_eq!(&job_rounds[..4], &[1, 2, 3, 4]);
    assert!(scheduled.windows(2).all(|w| w[1].1 > w[0].1));

    // A driver appears 7 km away: beyond 5 km, within 10. The next round offers to them.
    let far = app.online_driver_at(7_000.0).await;
    assert!(
        eventually(Duration::from_secs(15), || async {
            !offers_of(&app, order).await.is_empty()
        })
        .await
    );
    assert_eq!(offers_of(&app, order).await[0].1, far);
    let made = audit(&app, order, "offer_made").await;
    assert_eq!(made[0]["radius_km"], 10.0);
    // Flagged once only, even though rounds kept running.
    assert_eq!(app.outbox_events(order, "order_unmatched").await, 1);
}

#[tokio::test]
async fn a_round_at_5_km_does_not_look_further() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let near = app.online_driver_at(2_000.0).await;
    let _far = app.online_driver_at(7_000.0).await;
    let order = app.confirmed_order(&cast).await;
    let dispatcher = app.dispatcher(fast_dispatch());
    let (_, driver) = offered(
        &matching::run_round(&dispatcher, OrderId(order), 1)
            .await
            .expect("round"),
    );
    assert_eq!(driver, near);
    assert_eq!(audit(&app, order, "offer_made").await[0]["radius_km"], 5.0);
    assert_eq!(
        app.jobs_for(MatchDriver::QUEUE, order).await,
        1,
        "only the confirm's job"
    );
}

#[tokio::test]
async fn concurrent_rounds_make_exactly_one_offer() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    for north in [200.0, 400.0, 600.0] {
        app.online_driver_at(north).await;
    }
    let order = app.confirmed_order(&cast).await;
    let dispatcher = app.dispatcher(fast_dispatch());
    let rounds = (0..10).map(|_| {
        let dispatcher = dispatcher.clone();
        async move {
            matching::run_round(&dispatcher, OrderId(order), 1)
                .await
                .expect("round")
        }
    });
    let outcomes = futures::future::join_all(rounds).await;
    let made = outcomes
        .iter()
        .filter(|o| matches!(o, RoundOutcome::Offered { .. }))
        .count();
    assert_eq!(made, 1, "{outcomes:?}");
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, RoundOutcome::Offered { .. } | RoundOutcome::OfferPending)),
        "{outcomes:?}"
    );
    assert_eq!(offers_of(&app, order).await.len(), 1);
    let timeouts: i64 = sqlx::query_scalar("SELECT count(*) FROM apalis.jobs WHERE job_type = $1")
        .bind(OfferTimeout::QUEUE)
        .fetch_one(&app.db)
        .await
        .expect("count");
    assert_eq!(timeouts, 1);
    // The schema refuses a second pending offer whatever the code does.
    let second: i64 = sqlx::query_scalar(
        "SELECT id FROM drivers WHERE id <> (SELECT driver_id FROM offers WHERE order_id = $1) LIMIT 1",
    )
    .bind(order)
    .fetch_one(&app.db)
    .await
    .expect("another driver");
    let error = try_insert_offer(&app, order, second)
        .await
        .expect_err("one pending offer per order");
    assert!(error.to_string().contains("offers_one_pending_per_order"));
}

#[tokio::test]
async fn racing_accepts_of_one_offer_assign_the_order_once() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let driver = app.online_driver_at(300.0).await;
    let other = app.online_driver_at(900.0).await;
    let order = app.confirmed_order(&cast).await;
    let (offer, offered_to) = offered(&round_one(&app, order).await);
    assert_eq!(offered_to, driver);
    assert_error(app.accept(offer, other).await, 404, "not_found").await;
    let answers = futures::future::join_all((0..10).map(|_| app.accept(offer, driver))).await;
    let ok = successes(answers, "offer_already_accepted").await;
    assert_eq!(ok, 1);
    assert_eq!(driver_of(&app, order).await, Some(driver));
    assert_eq!(audit(&app, order, "driver_assigned").await.len(), 1);
    let version: i32 = sqlx::query_scalar("SELECT version FROM orders WHERE id = $1")
        .bind(order)
        .fetch_one(&app.db)
        .await
        .expect("version");
    assert_eq!(version, 4, "created 1, placed 2, confirmed 3, assigned 4");
    // The driver's load reached Valkey: a search now reports one active order.
    let nearby = available_near_restaurant(&app).await;
    let me = nearby
        .iter()
        .find(|d| d.driver_id == driver)
        .expect("still available");
    assert_eq!(me.active_orders, 1);
}

#[tokio::test]
async fn a_driver_never_holds_more_than_two_orders_or_two_pending_offers() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let driver = app.online_driver_at(300.0).await;
    // Orders from the same restaurant to the same door batch under every rule.
    for _ in 0..2 {
        let order = app.confirmed_order(&cast).await;
        let offer = insert_offer(&app, order, driver).await;
        assert_eq!(app.accept(offer, driver).await.status().as_u16(), 200);
    }
    let third = app.confirmed_order(&cast).await;
    let offer = insert_offer(&app, third, driver).await;
    assert_error(app.accept(offer, driver).await, 409, "driver_at_capacity").await;
    // That offer is still pending: the schema refuses the driver a second one.
    let fourth = app.confirmed_order(&cast).await;
    let refused = try_insert_offer(&app, fourth, driver)
        .await
        .expect_err("a second pending offer");
    let sqlx::Error::Database(refused) = refused else {
        panic!("not a constraint violation: {refused}");
    };
    assert_eq!(refused.constraint(), Some("offers_one_pending_per_driver"));
    let carried: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE driver_id = $1")
        .bind(driver)
        .fetch_one(&app.db)
        .await
        .expect("count");
    assert_eq!(carried, 2);
    // Fully loaded: gone from the available set.
    let nearby = available_near_restaurant(&app).await;
    assert!(nearby.iter().all(|d| d.driver_id != driver));
}

#[tokio::test]
async fn accept_and_timeout_racing_on_one_offer_have_exactly_one_winner() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let (mut accepted, mut expired) = (0, 0);
    for _ in 0..8 {
        let driver = insert_driver(&app.db).await;
        let order = app.confirmed_order(&cast).await;
        let offer = insert_offer(&app, order, driver).await;
        let rounds_before = pending_rounds(&app, order).await.len();
        let (answer, expiry) = tokio::join!(
            app.accept(offer, driver),
            offers::expire(&app.db, OfferId(offer))
        );
        let expiry = expiry.expect("expire runs");
        let status: String = sqlx::query_scalar("SELECT status FROM offers WHERE id = $1")
            .bind(offer)
            .fetch_one(&app.db)
            .await
            .expect("offer");
        match answer.status().as_u16() {
            200 => {
                assert!(!expiry, "the timeout must not also win");
                assert_eq!(status, "accepted");
                assert_eq!(driver_of(&app, order).await, Some(driver));
                assert_eq!(pending_rounds(&app, order).await.len(), rounds_before);
                accepted += 1;
            }
            409 => {
                assert!(expiry);
                assert_eq!(status, "expired");
                assert_eq!(driver_of(&app, order).await, None);
                // The expiry moved the order on.
                assert_eq!(pending_rounds(&app, order).await.len(), rounds_before + 1);
                expired += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(accepted + expired, 8);
}

#[tokio::test]
async fn every_ended_offer_leaves_a_next_offer_or_a_scheduled_round() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let only = app.online_driver_at(300.0).await;
    let order = app.confirmed_order(&cast).await;
    let dispatcher = app.dispatcher(fast_dispatch());
    // The confirm's own round-1 job is pending; run round 1 by hand (no workers).
    let (offer, _) = offered(
        &matching::run_round(&dispatcher, OrderId(order), 1)
            .await
            .expect("round"),
    );
    assert!(
        offers::expire(&app.db, OfferId(offer))
            .await
            .expect("expire")
    );
    assert!(
        !offers::expire(&app.db, OfferId(offer))
            .await
            .expect("twice"),
        "at-least-once safe"
    );
    assert_eq!(pending_rounds(&app, order).await, vec![1, 1]);
    // The only driver was offered already: this round finds nobody and schedules round 2.
    let next = matching::run_round(&dispatcher, OrderId(order), 1)
        .await
        .expect("round");
    assert!(
        matches!(next, RoundOutcome::Rescheduled { round: 2, .. }),
        "{next:?}"
    );
    assert_eq!(pending_rounds(&app, order).await, vec![1, 1, 2]);
    // A duplicate delivery of round 1 starts no second retry chain.
    let duplicate = matching::run_round(&dispatcher, OrderId(order), 1)
        .await
        .expect("round");
    assert_eq!(duplicate, RoundOutcome::Superseded);
    assert_eq!(pending_rounds(&app, order).await, vec![1, 1, 2]);
    assert_eq!(
        offers_of(&app, order).await,
        vec![(offer, only, "expired".to_owned())]
    );
}

#[tokio::test]
async fn a_decline_moves_the_order_to_the_next_driver_at_once() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let first = app.online_driver_at(300.0).await;
    let second = app.online_driver_at(800.0).await;
    let order = app.confirmed_order(&cast).await;
    let dispatcher = app.dispatcher(fast_dispatch());
    let (offer, driver) = offered(
        &matching::run_round(&dispatcher, OrderId(order), 1)
            .await
            .expect("round"),
    );
    assert_eq!(driver, first);

    assert_error(decline(&app, offer, second).await, 404, "not_found").await;
    let customer = app
        .post_as(
            &format!("/v1/offers/{offer}/decline"),
            Role::Customer,
            cast.customer,
            &json!({}),
        )
        .await;
    assert_error(customer, 403, "forbidden").await;
    assert_error(decline(&app, 999_999, first).await, 404, "not_found").await;

    let declined = decline(&app, offer, first).await;
    assert_eq!(declined.status().as_u16(), 200);
    let body: serde_json::Value = declined.json().await.expect("json");
    assert_eq!(body["offer"]["status"], "declined");
    assert_error(decline(&app, offer, first).await, 409, "offer_declined").await;
    assert_error(app.accept(offer, first).await, 409, "offer_declined").await;
    assert_eq!(audit(&app, order, "offer_declined").await.len(), 1);

    let (next_offer, next_driver) = offered(
        &matching::run_round(&dispatcher, OrderId(order), 1)
            .await
            .expect("round"),
    );
    assert_eq!(next_driver, second);
    let made = audit(&app, order, "offer_made").await;
    assert_eq!(
        made[1]["expires_in_s"], 3.0,
        "later offers use the later TTL"
    );
    assert!(next_offer > offer);
}

/// A driver who passed on an order is not offered it again within the re-offer window, and is
/// after it: with one driver near, an order that driver declined would otherwise wait for ever
/// (the city simulator found such orders stuck at `READY_FOR_PICKUP`).
#[tokio::test]
async fn a_driver_who_passed_on_an_order_is_offered_it_again_after_the_reoffer_window() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let driver = app.online_driver_at(300.0).await;
    let order = app.confirmed_order(&cast).await;
    let window = Duration::from_secs(2);
    let dispatcher = app.dispatcher(DispatchSettings {
        reoffer_after: window,
        ..fast_dispatch()
    });
    let (offer, offered_to) = offered(
        &matching::run_round(&dispatcher, OrderId(order), 1)
            .await
            .expect("round"),
    );
    assert_eq!(offered_to, driver);
    assert_eq!(decline(&app, offer, driver).await.status().as_u16(), 200);

    let next = match matching::run_round(&dispatcher, OrderId(order), 1)
        .await
        .expect("round")
    {
        RoundOutcome::Rescheduled { round, .. } => round,
        other => panic!("within the window nobody may be offered the order: {other:?}"),
    };
    assert_eq!(offers_of(&app, order).await.len(), 1);

    tokio::time::sleep(window + Duration::from_millis(200)).await;
    let (again, offered_to) = offered(
        &matching::run_round(&dispatcher, OrderId(order), next)
            .await
            .expect("round"),
    );
    assert_eq!(
        offered_to, driver,
        "after the window the driver is offered it again"
    );
    assert!(again > offer);
    assert_eq!(app.accept(again, driver).await.status().as_u16(), 200);
    assert_eq!(driver_of(&app, order).await, Some(driver));
}

#[tokio::test]
async fn cancelling_the_order_withdraws_its_offer() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let driver = app.online_driver_at(300.0).await;
    let order = app.confirmed_order(&cast).await;
    let (offer, _) = offered(&round_one(&app, order).await);
    let cancelled = app
        .act(order, "cancel", Role::Customer, cast.customer)
        .await;
    assert_eq!(cancelled.status().as_u16(), 200);
    assert_eq!(offers_of(&app, order).await[0].2, "cancelled");
    assert_error(app.accept(offer, driver).await, 409, "offer_cancelled").await;
    assert_eq!(polled_offers(&app, driver).await, Vec::<i64>::new());
    // The timeout job, when it fires, finds nothing to do.
    assert!(
        !offers::expire(&app.db, OfferId(offer))
            .await
            .expect("expire")
    );
    assert_eq!(round_one(&app, order).await, RoundOutcome::NotWaiting);
}

#[tokio::test]
async fn going_offline_declines_the_drivers_offers() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let driver = app.online_driver_at(300.0).await;
    let order = app.confirmed_order(&cast).await;
    let (offer, _) = offered(&round_one(&app, order).await);
    let stranger = insert_driver(&app.db).await;
    assert_error(
        app.get_as(
            &format!("/v1/drivers/{driver}/offers"),
            Role::Driver,
            stranger,
        )
        .await,
        403,
        "forbidden",
    )
    .await;
    let offline = app
        .post_as(
            &format!("/v1/drivers/{driver}/status"),
            Role::Driver,
            driver,
            &json!({"status": "offline"}),
        )
        .await;
    assert_eq!(offline.status().as_u16(), 200);
    assert_eq!(
        offers_of(&app, order).await,
        vec![(offer, driver, "declined".to_owned())]
    );
    assert_eq!(pending_rounds(&app, order).await, vec![1, 1]);
    // Offline drivers are not candidates.
    let next = matching::run_round(&app.dispatcher(fast_dispatch()), OrderId(order), 1)
        .await
        .expect("round");
    assert!(matches!(next, RoundOutcome::Rescheduled { .. }), "{next:?}");
}

#[tokio::test]
async fn an_open_breaker_schedules_a_retry_instead_of_failing_hot() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let order = app.confirmed_order(&cast).await;
    let dispatcher = app.dispatcher_without_valkey(DispatchSettings {
        breaker: BreakerSettings {
            timeout: Duration::from_secs(2),
            min_calls: 2,
            ..BreakerSettings::default()
        },
        ..fast_dispatch()
    });
    // Two failed lookups (one per round) open the breaker.
    for round in 1..=2 {
        let outcome = matching::run_round(&dispatcher, OrderId(order), round)
            .await
            .expect("round");
        assert!(
            matches!(outcome, RoundOutcome::Rescheduled { .. }),
            "{outcome:?}"
        );
    }
    assert_eq!(
        dispatcher.breaker.state_at(std::time::Instant::now()),
        BreakerState::Open
    );
    let outcome = matching::run_round(&dispatcher, OrderId(order), 3)
        .await
        .expect("round");
    assert!(
        matches!(outcome, RoundOutcome::Rescheduled { round: 4, .. }),
        "{outcome:?}"
    );
    let reasons: Vec<String> = audit(&app, order, "match_round_empty")
        .await
        .iter()
        .map(|m| m["reason"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(reasons[0], "candidate lookup failed");
    assert_eq!(reasons[2], "candidate lookup circuit open");
    assert_eq!(pending_rounds(&app, order).await.last(), Some(&4));
}
