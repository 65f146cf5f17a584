//! A small city run through the public API by the simulator (`courier-sim`) against the
//! in-process app and real workers, in compressed time: drivers moving and answering offers,
//! restaurants confirming and cooking, customers ordering (some retrying with the same key,
//! some cancelling). The invariants a marketplace must keep are asserted on its report, on
//! the database and on the events the outbox relay published meanwhile.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use courier::cron::CronSettings;
use courier::dispatch::DispatchSettings;
use courier_sim::Settings;

use courier::workflows::place::OrderLimits;

use crate::helpers::{
    OPERATOR, TEST_SECRET, TestAppOptions, WorkerSettings, eventually, fast_dispatch,
    spawn_app_with, stream_entries,
};

#[tokio::test]
async fn a_small_city_runs_through_the_api_and_every_order_ends_sound() {
    // A restaurant that never answers is cancelled after 10 s (10 simulated minutes).
    let app = spawn_app_with(TestAppOptions {
        order_limits: OrderLimits {
            confirm_within: Duration::from_secs(10),
            ..OrderLimits::default()
        },
        ..TestAppOptions::default()
    })
    .await;
    // Auto-complete every second, a second after delivery: the drain is then seconds long.
    // A driver who passed on an order may be offered it again after 5 s (5 simulated minutes).
    let _workers = app.spawn_workers_custom(WorkerSettings {
        dispatch: DispatchSettings {
            reoffer_after: Duration::from_secs(5),
            ..fast_dispatch()
        },
        cron: CronSettings {
            auto_complete: "* * * * * *".parse().expect("a schedule"),
            auto_complete_after: Duration::from_secs(1),
            ..CronSettings::default()
        },
        ..WorkerSettings::default()
    });
    let _relay = app.spawn_relay();
    let mut settings = Settings::new(&app.address, TEST_SECRET, OPERATOR);
    settings.seed = 7;
    settings.plan.drivers = 6;
    settings.plan.restaurants = 3;
    settings.plan.customers = 12;
    settings.plan.side_m = 3_000.0;
    settings.orders_per_minute = 2.0;
    settings.duration = Duration::from_secs(10 * 60);
    settings.speed = 60.0;
    settings.drain = Duration::from_secs(150);
    // Some restaurants never answer, some customers cancel: the drain sees both end.
    settings.behaviour.ignore_confirm = 0.1;
    settings.behaviour.cancel = 0.25;

    let report = courier_sim::run(&settings, &|_| {})
        .await
        .expect("the simulation runs");
    let table = report.table();
    println!("{table}");
    assert!(
        report.violations().is_empty(),
        "{:?}\n{table}",
        report.violations()
    );
    assert!(report.orders_placed >= 5, "the city ordered: {table}");
    assert!(
        report.orders_delivered >= 1,
        "orders were delivered: {table}"
    );
    assert_eq!(report.decisions.party_errors, 0, "{table}");
    assert_eq!(report.transport_errors, 0, "{table}");

    // Each delivered order was captured exactly once, and only delivered ones were.
    let miscaptured: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT o.id, (SELECT count(*) FROM payment_attempts a
                       WHERE a.order_id = o.id AND a.operation = 'capture'
                         AND a.outcome = 'succeeded') AS captures
         FROM orders o
         WHERE (o.delivered_at IS NOT NULL) <> EXISTS (
                   SELECT 1 FROM payments p WHERE p.order_id = o.id AND p.status = 'captured')
            OR (SELECT count(*) FROM payment_attempts a
                WHERE a.order_id = o.id AND a.operation = 'capture' AND a.outcome = 'succeeded') > 1",
    )
    .fetch_all(&app.db)
    .await
    .expect("captures");
    assert!(
        miscaptured.is_empty(),
        "captures per order: {miscaptured:?}\n{table}"
    );
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&app.db)
        .await
        .expect("orders");
    assert_eq!(
        u64::try_from(orders).expect("a count"),
        report.orders_placed,
        "every order in the database is one the simulation placed"
    );

    // Every change of every order reached the events stream, in the order the audit log
    // recorded it.
    assert!(
        eventually(Duration::from_secs(20), || async {
            app.unpublished().await == 0
        })
        .await,
        "the relay left events unpublished"
    );
    let audited: Vec<(i64, String)> = sqlx::query_as(
        "SELECT entity_id, changes -> 'status' ->> 'to' FROM audit_logs
         WHERE event_type = 'order_status_changed' ORDER BY id",
    )
    .fetch_all(&app.db)
    .await
    .expect("audit log");
    let mut expected: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for (order, status) in audited {
        expected.entry(order).or_default().push(status);
    }
    let mut published: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    let mut seen = HashSet::new();
    for entry in stream_entries(app.state.valkey.prefix()).await {
        if entry.event_type == "order_status_changed" && seen.insert(entry.event_id.clone()) {
            published.entry(entry.order_id).or_default().push(
                entry.body["newStatus"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            );
        }
    }
    assert_eq!(published, expected, "{table}");
}
