//! The dispatch cycle on the real stack: a market switched to cycles by the API, the global
//! assignment beating the order-by-order choice, ready-time-aware holding and the prep
//! estimate that releases it, the `match_driver` hand-over and its fallback, the fleet-wide
//! lock, the loop in the workers, and matching's invariants under concurrent cycles, rounds
//! and accepts.

use std::time::Duration;

use courier::auth::Role;
use courier::dispatch::DispatchSettings;
use courier::domain::OrderId;
use courier::jobs::Job;
use courier::jobs::messages::MatchDriver;
use courier::workflows::cycle;
use courier::workflows::matching::{self, RoundOutcome};
use serde_json::{Value, json};

use crate::helpers::{
    Cast, M_PER_DEG, RESTAURANT_AT, TestApp, assert_error, cast, eventually, fast_dispatch,
    insert_item, insert_restaurant, spawn_app,
};

const OPERATOR: i64 = 1;
/// The migrated default market every test's restaurants are in.
const MARKET: i64 = 1;

/// Switches the default market to cycle dispatch through the API (after an unknown mode is
/// refused).
async fn use_cycles(app: &TestApp) {
    let unknown = app
        .request(reqwest::Method::PATCH, &format!("/v1/markets/{MARKET}"))
        .bearer_auth(app.token(Role::Operator, OPERATOR))
        .json(&json!({"dispatch": "batch"}))
        .send()
        .await
        .expect("sent");
    assert_error(unknown, 422, "invalid_body").await;
    let response = app
        .request(reqwest::Method::PATCH, &format!("/v1/markets/{MARKET}"))
        .bearer_auth(app.token(Role::Operator, OPERATOR))
        .json(&json!({"dispatch": "cycle"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["dispatch"], "cycle");
}

/// A second cast whose restaurant is `north_m` metres north of the first's.
async fn cast_north(app: &TestApp, north_m: f64, customer: i64) -> Cast {
    let restaurant = insert_restaurant(
        &app.db,
        "Taco Stand",
        "mexican",
        RESTAURANT_AT.0 + north_m / M_PER_DEG,
        RESTAURANT_AT.1,
    )
    .await;
    Cast {
        restaurant,
        burger: insert_item(&app.db, restaurant, "Taco", 900).await,
        fries: insert_item(&app.db, restaurant, "Nachos", 500).await,
        customer,
    }
}

/// Places `cast`'s order and confirms it with a prep estimate of `prep_minutes`.
async fn confirmed_with_prep(app: &TestApp, cast: &Cast, prep_minutes: i64) -> i64 {
    let order = app.placed_order(cast).await;
    let response = app
        .post_as(
            &format!("/v1/orders/{order}/confirm"),
            Role::Restaurant,
            cast.restaurant,
            &json!({"prep_minutes": prep_minutes}),
        )
        .await;
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["prep_minutes"].as_f64(), Some(prep_minutes as f64));
    order
}

/// `(order, driver)` of every pending offer.
async fn pending(app: &TestApp) -> Vec<(i64, i64)> {
    sqlx::query_as(
        "SELECT order_id, driver_id FROM offers WHERE status = 'pending' ORDER BY order_id",
    )
    .fetch_all(&app.db)
    .await
    .expect("offers")
}

/// The `offer_made` audit details of `order`.
async fn offer_made(app: &TestApp, order: i64) -> Vec<Value> {
    sqlx::query_scalar(
        "SELECT metadata FROM audit_logs WHERE entity_id = $1 AND event_type = 'offer_made' ORDER BY id",
    )
    .bind(order)
    .fetch_all(&app.db)
    .await
    .expect("audit")
}

/// Asserts that a round offered the order to `driver`.
fn assert_offered_to(outcome: &RoundOutcome, driver: i64) {
    assert!(
        matches!(outcome, RoundOutcome::Offered { driver_id, .. } if driver_id.get() == driver),
        "{outcome:?}"
    );
}

/// Matching settings with the cycle's loop fast.
fn cycle_dispatch() -> DispatchSettings {
    DispatchSettings {
        cycle_interval: Duration::from_millis(200),
        ..fast_dispatch()
    }
}

#[tokio::test]
async fn a_cycle_gives_each_order_the_driver_the_market_needs_it_to_have_and_says_so() {
    let app = spawn_app().await;
    use_cycles(&app).await;
    // Restaurant A (the cast's) and B, 2 km north. Driver 1 sits between them, 1 km from
    // each; driver 2 is 2 km south of A, 4 km from B. Order A is confirmed first: order by
    // order, A takes driver 1 and B gets driver 2 from 4 km away. The cycle pairs A with
    // driver 2 and B with driver 1.
    let a = cast(&app.db).await;
    let b = cast_north(&app, 2_000.0, a.customer).await;
    let between = app.online_driver_at(1_000.0).await;
    let south = app.online_driver_at(-2_000.0).await;
    let order_a = confirmed_with_prep(&app, &a, 1).await;
    let order_b = confirmed_with_prep(&app, &b, 1).await;

    let dispatcher = app.dispatcher(fast_dispatch());
    let report = cycle::run_if_free(&dispatcher, MARKET)
        .await
        .expect("cycle runs")
        .expect("the lock was free");
    assert_eq!(
        (
            report.orders_pooled,
            report.drivers_available,
            report.offered
        ),
        (2, 2, 2),
        "{report:?}"
    );
    assert_eq!(pending(&app).await, [(order_a, south), (order_b, between)]);

    // The story names the cycle and why.
    let made = offer_made(&app, order_b).await;
    assert_eq!(made.len(), 1);
    assert_eq!(made[0]["dispatch"], "cycle");
    assert_eq!(made[0]["cycle"]["id"], report.id);
    assert_eq!(made[0]["cycle"]["orders_pooled"], 2);
    assert!(
        made[0]["why"]
            .as_str()
            .expect("why")
            .starts_with(&format!("cycle {}", report.id))
    );
    let story = crate::admin::ok(&app, &["orders", "show", &order_b.to_string()]).await;
    assert!(
        story.text.contains(&format!("cycle={}", report.id)),
        "{}",
        story.text
    );

    // Operators see the cycle, and the market when its last cycle finished.
    let cycles = crate::admin::ok(&app, &["dispatch", "cycles", "--market", "default"]).await;
    assert_eq!(cycles.json["cycles"][0]["id"], report.id);
    assert_eq!(cycles.json["cycles"][0]["status"], "done");
    assert_eq!(cycles.json["cycles"][0]["offered"], 2);
    let finished: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT dispatch_cycle_at FROM markets WHERE id = $1")
            .bind(MARKET)
            .fetch_one(&app.db)
            .await
            .expect("market");
    assert!(finished.is_some());

    // A second cycle finds nothing to do: both orders have their offer.
    let again = cycle::run_if_free(&dispatcher, MARKET)
        .await
        .expect("cycle runs")
        .expect("free");
    assert_eq!((again.orders_pooled, again.offered), (0, 0));
}

#[tokio::test]
async fn an_order_is_held_until_its_driver_would_arrive_close_to_the_food_and_the_kitchen_can_move_that()
 {
    let app = spawn_app().await;
    use_cycles(&app).await;
    let cast = cast(&app.db).await;
    let _driver = app.online_driver_at(300.0).await;
    let order = confirmed_with_prep(&app, &cast, 30).await;
    let ready_at: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT food_ready_at FROM orders WHERE id = $1")
            .bind(order)
            .fetch_one(&app.db)
            .await
            .expect("order");
    let minutes = (ready_at - chrono::Utc::now()).num_seconds() as f64 / 60.0;
    assert!((29.0..=30.0).contains(&minutes), "{minutes}");

    let dispatcher = app.dispatcher(fast_dispatch());
    let held = cycle::run_if_free(&dispatcher, MARKET)
        .await
        .expect("runs")
        .expect("free");
    assert_eq!(
        (held.orders_pooled, held.offered, held.held),
        (1, 0, 1),
        "{held:?}"
    );
    assert!(pending(&app).await.is_empty());

    // Bad estimates change nothing: out of range, not a number, an unknown field, another
    // restaurant's order (it does not exist for it), a customer, and `prep_minutes` on
    // another step than confirm.
    let path = format!("/v1/orders/{order}/prep-estimate");
    let other = insert_restaurant(&app.db, "Other", "thai", 40.7, -74.0).await;
    let start = format!("/v1/orders/{order}/start-preparing");
    let (kitchen, customer) = (
        (Role::Restaurant, cast.restaurant),
        (Role::Customer, cast.customer),
    );
    let refusals = [
        (
            &path,
            kitchen,
            json!({"prep_minutes": 0}),
            422,
            "invalid_field",
        ),
        (
            &path,
            kitchen,
            json!({"prep_minutes": 180.5}),
            422,
            "invalid_field",
        ),
        (
            &path,
            kitchen,
            json!({"prep_minutes": -5}),
            422,
            "invalid_field",
        ),
        (
            &path,
            kitchen,
            json!({"prep_minutes": "ten"}),
            422,
            "invalid_body",
        ),
        (&path, kitchen, json!({"minutes": 3}), 422, "invalid_body"),
        (
            &path,
            (Role::Restaurant, other),
            json!({"prep_minutes": 2}),
            404,
            "not_found",
        ),
        (
            &path,
            customer,
            json!({"prep_minutes": 2}),
            403,
            "forbidden",
        ),
        (
            &start,
            kitchen,
            json!({"prep_minutes": 5}),
            422,
            "invalid_field",
        ),
    ];
    for (at, (role, subject), body, status, code) in refusals {
        assert_error(app.post_as(at, role, subject, &body).await, status, code).await;
    }
    let unchanged: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT food_ready_at FROM orders WHERE id = $1")
            .bind(order)
            .fetch_one(&app.db)
            .await
            .expect("order");
    assert_eq!(unchanged, ready_at);

    // The kitchen is faster than it thought: a minute and a half. The order is due, and the
    // cycle offers it.
    let updated = app
        .post_as(
            &path,
            Role::Restaurant,
            cast.restaurant,
            &json!({"prep_minutes": 1.5}),
        )
        .await;
    assert_eq!(updated.status().as_u16(), 200);
    let body: Value = updated.json().await.expect("json");
    assert_eq!(body["prep_minutes"].as_f64(), Some(1.5));
    assert_eq!(app.outbox_events(order, "prep_estimate_updated").await, 1);
    let offered = cycle::run_if_free(&dispatcher, MARKET)
        .await
        .expect("runs")
        .expect("free");
    assert_eq!((offered.offered, offered.held), (1, 0), "{offered:?}");
    assert_eq!(pending(&app).await.len(), 1);

    // Once the order is cancelled, the estimate no longer changes.
    let cancelled = app
        .act(order, "cancel", Role::Customer, cast.customer)
        .await;
    assert_eq!(cancelled.status().as_u16(), 200);
    assert_error(
        app.post_as(
            &path,
            Role::Restaurant,
            cast.restaurant,
            &json!({"prep_minutes": 2}),
        )
        .await,
        409,
        "invalid_state",
    )
    .await;
}

#[tokio::test]
async fn match_driver_hands_a_cycle_markets_order_over_and_falls_back_when_cycles_stop() {
    let app = spawn_app().await;
    use_cycles(&app).await;
    let cast = cast(&app.db).await;
    let driver = app.online_driver_at(300.0).await;
    let order = confirmed_with_prep(&app, &cast, 10).await;
    let dispatcher = app.dispatcher(fast_dispatch());
    let settings = fast_dispatch();
    let live = |ago_s: i64| {
        sqlx::query("UPDATE markets SET dispatch_cycle_at = now() - make_interval(secs => $1) WHERE id = $2")
            .bind(ago_s as f64)
            .bind(MARKET)
            .execute(&app.db)
    };
    live(1).await.expect("cycles run");

    // The first job hands the order over: the fallback waits until it is due (10 min of prep
    // less 3 of slack) plus the grace.
    let outcome = matching::run_round(&dispatcher, OrderId(order), 1)
        .await
        .expect("job");
    let RoundOutcome::HandedToCycle { fallback_in } = outcome else {
        panic!("{outcome:?}");
    };
    let expected = Duration::from_secs(7 * 60) + settings.cycle_grace;
    assert!(
        fallback_in <= expected && fallback_in + Duration::from_secs(5) >= expected,
        "{fallback_in:?}"
    );
    let fallbacks: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM apalis.jobs WHERE job_type = $1
           AND (convert_from(job, 'UTF8')::jsonb ->> 'order_id')::bigint = $2
           AND (convert_from(job, 'UTF8')::jsonb ->> 'after_cycle')::boolean
           AND run_at > now() + interval '7 minutes'",
    )
    .bind(MatchDriver::QUEUE)
    .bind(order)
    .fetch_one(&app.db)
    .await
    .expect("jobs");
    assert_eq!(fallbacks, 1);
    assert!(pending(&app).await.is_empty(), "the job offered nothing");

    // The fallback of a not-yet-due order waits again.
    let fallback = MatchDriver {
        after_cycle: true,
        ..MatchDriver::new(OrderId(order), 1)
    };
    assert!(matches!(
        matching::run_job(&dispatcher, &fallback)
            .await
            .expect("job"),
        RoundOutcome::HandedToCycle { .. }
    ));

    // Cycles stopped (the last finished a minute ago): the job matches the order itself.
    live(60).await.expect("stale");
    let outcome = matching::run_round(&dispatcher, OrderId(order), 1)
        .await
        .expect("job");
    assert_offered_to(&outcome, driver);
    assert_eq!(offer_made(&app, order).await[0]["dispatch"], "per_order");
}

#[tokio::test]
async fn the_fallback_of_a_due_order_the_cycle_did_not_offer_runs_the_round() {
    let app = spawn_app().await;
    use_cycles(&app).await;
    let cast = cast(&app.db).await;
    let driver = app.online_driver_at(300.0).await;
    let order = confirmed_with_prep(&app, &cast, 1).await;
    sqlx::query("UPDATE markets SET dispatch_cycle_at = now() WHERE id = $1")
        .bind(MARKET)
        .execute(&app.db)
        .await
        .expect("live");
    let fallback = MatchDriver {
        after_cycle: true,
        ..MatchDriver::new(OrderId(order), 1)
    };
    let outcome = matching::run_job(&app.dispatcher(fast_dispatch()), &fallback)
        .await
        .expect("job");
    assert_offered_to(&outcome, driver);
}

#[tokio::test]
async fn a_cycle_that_cannot_read_its_drivers_fails_on_record_and_the_market_is_matched_per_order()
{
    let app = spawn_app().await;
    use_cycles(&app).await;
    let cast = cast(&app.db).await;
    let driver = app.online_driver_at(300.0).await;
    let order = confirmed_with_prep(&app, &cast, 1).await;
    let stale = "UPDATE markets SET dispatch_cycle_at = now() - interval '1 minute' WHERE id = $1";
    sqlx::query(stale)
        .bind(MARKET)
        .execute(&app.db)
        .await
        .expect("last cycle a minute ago");
    let broken = app.dispatcher_without_valkey(fast_dispatch());
    let failed = cycle::run_if_free(&broken, MARKET).await;
    assert!(
        matches!(failed, Err(cycle::CycleError::Lookup(_))),
        "{failed:?}"
    );
    let cycles = crate::admin::ok(&app, &["dispatch", "cycles"]).await;
    assert_eq!(cycles.json["cycles"][0]["status"], "failed");
    let error = cycles.json["cycles"][0]["error"].as_str().expect("error");
    assert!(error.starts_with("driver lookup"), "{error}");
    assert!(pending(&app).await.is_empty());
    // The failed cycle did not count as one that ran: the order's job matches it itself.
    let live: bool = sqlx::query_scalar(
        "SELECT dispatch_cycle_at > now() - interval '30 seconds' FROM markets WHERE id = $1",
    )
    .bind(MARKET)
    .fetch_one(&app.db)
    .await
    .expect("market");
    assert!(!live);
    let outcome = matching::run_round(&app.dispatcher(fast_dispatch()), OrderId(order), 1)
        .await
        .expect("job");
    assert_offered_to(&outcome, driver);
}

#[tokio::test]
async fn one_process_runs_a_markets_cycle_at_a_time() {
    let app = spawn_app().await;
    use_cycles(&app).await;
    let mut holder = app.db.acquire().await.expect("connection");
    sqlx::query("SELECT pg_advisory_lock($1, $2::int4)")
        .bind(cycle::CYCLE_LOCK)
        .bind(MARKET as i32)
        .execute(&mut *holder)
        .await
        .expect("lock");
    let dispatcher = app.dispatcher(fast_dispatch());
    assert!(
        cycle::run_if_free(&dispatcher, MARKET)
            .await
            .expect("runs")
            .is_none()
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM dispatch_cycles")
        .fetch_one(&app.db)
        .await
        .expect("count");
    assert_eq!(rows, 0, "a skipped cycle leaves no row");
    sqlx::query("SELECT pg_advisory_unlock_all()")
        .execute(&mut *holder)
        .await
        .expect("unlock");
    assert!(
        cycle::run_if_free(&dispatcher, MARKET)
            .await
            .expect("runs")
            .is_some()
    );
}

#[tokio::test]
async fn the_workers_run_the_cycle_and_its_offer_is_accepted_as_any_other() {
    let app = spawn_app().await;
    use_cycles(&app).await;
    let cast = cast(&app.db).await;
    let driver = app.online_driver_at(300.0).await;
    let _workers = app.spawn_workers_with(cycle_dispatch());
    // Until the market's first cycle finishes, its orders are matched per order.
    assert!(
        eventually(Duration::from_secs(20), || async {
            sqlx::query_scalar::<_, bool>(
                "SELECT dispatch_cycle_at IS NOT NULL FROM markets WHERE id = $1",
            )
            .bind(MARKET)
            .fetch_one(&app.db)
            .await
            .expect("market")
        })
        .await,
        "no cycle finished"
    );
    let order = confirmed_with_prep(&app, &cast, 1).await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            !pending(&app).await.is_empty()
        })
        .await,
        "the cycle offered nothing"
    );
    assert_eq!(offer_made(&app, order).await[0]["dispatch"], "cycle");
    let offer: i64 = sqlx::query_scalar("SELECT id FROM offers WHERE order_id = $1")
        .bind(order)
        .fetch_one(&app.db)
        .await
        .expect("offer");
    assert_eq!(app.accept(offer, driver).await.status().as_u16(), 200);
    let assigned: Option<i64> = sqlx::query_scalar("SELECT driver_id FROM orders WHERE id = $1")
        .bind(order)
        .fetch_one(&app.db)
        .await
        .expect("order");
    assert_eq!(assigned, Some(driver));
}

#[tokio::test]
async fn concurrent_cycles_rounds_and_accepts_keep_matchings_invariants() {
    let app = spawn_app().await;
    use_cycles(&app).await;
    let cast = cast(&app.db).await;
    let mut drivers = Vec::new();
    for north in [150.0, 300.0, 450.0, 600.0] {
        drivers.push(app.online_driver_at(north).await);
    }
    let mut orders = Vec::new();
    for _ in 0..6 {
        orders.push(confirmed_with_prep(&app, &cast, 1).await);
    }
    let dispatcher = app.dispatcher(fast_dispatch());
    // Four cycles at once (bypassing the lock, as two processes racing would), beside a
    // per-order round for every order.
    let cycles = (0..4).map(|_| {
        let dispatcher = dispatcher.clone();
        async move { cycle::run_cycle(&dispatcher, MARKET).await.expect("cycle") }
    });
    let rounds = orders.iter().map(|&order| {
        let dispatcher = dispatcher.clone();
        async move {
            matching::run_round(&dispatcher, OrderId(order), 1)
                .await
                .expect("round")
        }
    });
    let (reports, _) = tokio::join!(
        futures::future::join_all(cycles),
        futures::future::join_all(rounds)
    );
    let offers = pending(&app).await;
    // No order and no driver holds more than one offer.
    assert!(
        !offers.is_empty() && offers.len() <= drivers.len(),
        "{offers:?} {reports:?}"
    );
    let mut by_order: Vec<i64> = offers.iter().map(|(o, _)| *o).collect();
    by_order.dedup();
    assert_eq!(by_order.len(), offers.len());
    let mut by_driver: Vec<i64> = offers.iter().map(|(_, d)| *d).collect();
    by_driver.sort_unstable();
    by_driver.dedup();
    assert_eq!(by_driver.len(), offers.len());

    // Everyone accepts at once while more cycles run; then the cycles offer the rest.
    let ids: Vec<(i64, i64)> =
        sqlx::query_as("SELECT id, driver_id FROM offers WHERE status = 'pending'")
            .fetch_all(&app.db)
            .await
            .expect("offers");
    let accepts = ids.iter().map(|&(offer, driver)| app.accept(offer, driver));
    let more = (0..3).map(|_| {
        let dispatcher = dispatcher.clone();
        async move { cycle::run_cycle(&dispatcher, MARKET).await.expect("cycle") }
    });
    let (answers, _) = tokio::join!(
        futures::future::join_all(accepts),
        futures::future::join_all(more)
    );
    assert!(answers.iter().all(|a| a.status().as_u16() == 200));
    cycle::run_cycle(&dispatcher, MARKET).await.expect("cycle");
    let loads: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT driver_id, count(*) FROM orders WHERE driver_id IS NOT NULL GROUP BY driver_id",
    )
    .fetch_all(&app.db)
    .await
    .expect("loads");
    assert!(loads.iter().all(|(_, n)| *n <= 2), "{loads:?}");
    // And the audit of every invariant passes.
    crate::admin::ok(&app, &["check"]).await;
}
