//! Cron: a tick runs once across processes; auto-completion, partition maintenance, job
//! housekeeping and the stuck-order sweep each do what they say, and only that.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::Utc;
use courier::auth::Role;
use courier::cron::{
    self, CronSettings, TickOutcome, auto_complete, housekeeping, partitions, stuck_orders,
};
use courier::domain::OrderId;
use courier::jobs::Job;
use courier::jobs::messages::{AuthorizePayment, MatchDriver, ReleasePayment};
use courier::payments::{PaymentSettings, Payments};
use courier::workflows::payment;
use serde_json::json;

use crate::helpers::{Cast, TestApp, WorkerSettings, cast, spawn_app};

/// An order taken to DELIVERED.
async fn delivered_order(app: &TestApp, cast: &Cast) -> i64 {
    let (order, driver) = app.picked_up_order(cast).await;
    let delivered = app.act(order, "deliver", Role::Driver, driver).await;
    assert_eq!(delivered.status().as_u16(), 200);
    order
}

#[tokio::test]
async fn a_tick_claimed_by_many_processes_at_once_runs_once() {
    let app = spawn_app().await;
    let tick = Utc::now();
    let runs = Arc::new(AtomicUsize::new(0));
    let attempts = (0..6).map(|i| {
        let db = app.db.clone();
        let runs = runs.clone();
        async move {
            cron::run_tick(
                &db,
                "test_task",
                tick,
                &format!("process-{i}"),
                || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    // Long enough that the others arrive while this one holds the claim.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok(json!({ "did": "work" }))
                },
            )
            .await
            .expect("tick")
        }
    });
    let outcomes = futures::future::join_all(attempts).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| matches!(o, TickOutcome::Ran(_)))
            .count(),
        1
    );
    let audit: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_logs WHERE event_type = 'cron_run' AND metadata ->> 'task' = 'test_task'",
    )
    .fetch_one(&app.db)
    .await
    .expect("audit");
    assert_eq!(audit, 1);
}

#[tokio::test]
async fn a_tick_whose_work_fails_is_left_for_another_process() {
    let app = spawn_app().await;
    let tick = Utc::now();
    let failed = cron::run_tick(&app.db, "flaky", tick, "a", || async {
        anyhow::bail!("database went away")
    })
    .await;
    assert!(failed.is_err());
    let retried = cron::run_tick(&app.db, "flaky", tick, "b", || async { Ok(json!({})) })
        .await
        .expect("tick");
    assert!(matches!(retried, TickOutcome::Ran(_)));
    let ran_by: String = sqlx::query_scalar("SELECT ran_by FROM cron_runs WHERE task = 'flaky'")
        .fetch_one(&app.db)
        .await
        .expect("row");
    assert_eq!(ran_by, "b");
}

#[tokio::test]
async fn two_worker_fleets_running_cron_do_each_tick_once() {
    let app = spawn_app().await;
    let every_second = || WorkerSettings {
        cron: CronSettings {
            stuck_orders: "* * * * * *".parse().expect("schedule"),
            ..CronSettings::default()
        },
        ..WorkerSettings::default()
    };
    let first = app.spawn_workers_custom(every_second());
    let second = app.spawn_workers_custom(every_second());
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    drop((first, second));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rows, ticks): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT tick) FROM cron_runs WHERE task = 'stuck_orders'",
    )
    .fetch_one(&app.db)
    .await
    .expect("runs");
    assert!(ticks >= 3, "{ticks} ticks");
    assert_eq!(rows, ticks);
    let (audit, audited_ticks): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT metadata ->> 'tick') FROM audit_logs
         WHERE event_type = 'cron_run' AND metadata ->> 'task' = 'stuck_orders'",
    )
    .fetch_one(&app.db)
    .await
    .expect("audit");
    assert_eq!((audit, audited_ticks), (ticks, ticks), "one run per tick");
    let processes: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT ran_by) FROM cron_runs WHERE task = 'stuck_orders'",
    )
    .fetch_one(&app.db)
    .await
    .expect("processes");
    assert!((1..=2).contains(&processes));
}

#[tokio::test]
async fn auto_complete_moves_only_orders_past_the_delay() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let old = delivered_order(&app, &cast).await;
    let recent = delivered_order(&app, &cast).await;
    capture(&app, old).await;
    capture(&app, recent).await;
    delivered_ago(&app, old, 61).await;
    let summary = run_auto_complete(&app).await;
    assert_eq!(summary["completed"], 1);
    assert_eq!(app.status_of(old).await, "COMPLETED");
    assert_eq!(app.status_of(recent).await, "DELIVERED");
    assert_eq!(app.audit_rows(old, "auto_complete").await, 1);
    let again = run_auto_complete(&app).await;
    assert_eq!(again["completed"], 0);
}

/// Backdates `order`'s delivery by `minutes`.
async fn delivered_ago(app: &TestApp, order: i64, minutes: i32) {
    sqlx::query("UPDATE orders SET delivered_at = now() - make_interval(mins => $2) WHERE id = $1")
        .bind(order)
        .bind(minutes)
        .execute(&app.db)
        .await
        .expect("age");
}

/// One `auto_complete` run with the default settings; its summary.
async fn run_auto_complete(app: &TestApp) -> serde_json::Value {
    auto_complete::run(&app.db, &app.state.location, &CronSettings::default())
        .await
        .expect("runs")
}

/// Captures `order`'s payment the way the `capture_payment` job does, with the ledger.
async fn capture(app: &TestApp, order: i64) {
    let payments = Payments::new(app.db.clone(), PaymentSettings::default()).expect("ledger");
    let result = payment::capture(&app.db, &payments, OrderId(order), 1)
        .await
        .expect("capture runs");
    assert_eq!(
        payment_status(app, order).await.as_deref(),
        Some("captured"),
        "{result:?}"
    );
}

async fn payment_status(app: &TestApp, order: i64) -> Option<String> {
    sqlx::query_scalar("SELECT status FROM payments WHERE order_id = $1")
        .bind(order)
        .fetch_optional(&app.db)
        .await
        .expect("payment status")
}

async fn set_payment(app: &TestApp, order: i64, status: &str) {
    sqlx::query("UPDATE payments SET status = $2 WHERE order_id = $1")
        .bind(order)
        .bind(status)
        .execute(&app.db)
        .await
        .expect("payment status set");
}

#[tokio::test]
async fn an_order_completes_only_once_its_payment_is_captured() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let order = delivered_order(&app, &cast).await;
    delivered_ago(&app, order, 120).await;
    // The capture has not run (or is still retrying): the order waits, past its delay.
    let summary = run_auto_complete(&app).await;
    assert_eq!(summary["completed"], 0);
    assert_eq!(app.status_of(order).await, "DELIVERED");
    assert_eq!(
        payment_status(&app, order).await.as_deref(),
        Some("authorized")
    );
    // A capture that failed for good keeps it DELIVERED too.
    for failed in ["capture_failed", "capture_declined"] {
        set_payment(&app, order, failed).await;
        run_auto_complete(&app).await;
        assert_eq!(app.status_of(order).await, "DELIVERED");
    }
    // Once captured, the next tick completes it.
    set_payment(&app, order, "authorized").await;
    capture(&app, order).await;
    let summary = run_auto_complete(&app).await;
    assert_eq!(summary["completed"], 1);
    assert_eq!(app.status_of(order).await, "COMPLETED");
}

#[tokio::test]
async fn partitions_exist_for_the_coming_days_and_old_ones_are_dropped() {
    let app = spawn_app().await;
    sqlx::query("SELECT courier_create_location_partition(current_date - 40)")
        .execute(&app.db)
        .await
        .expect("old partition");
    let settings = CronSettings {
        partitions_ahead_days: 3,
        location_retention_days: 30,
        ..CronSettings::default()
    };
    let summary = partitions::run(&app.db, &settings).await.expect("runs");
    assert_eq!(summary["dropped"].as_array().map(Vec::len), Some(1));
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'driver_locations'",
    )
    .fetch_all(&app.db)
    .await
    .expect("partitions");
    let today = Utc::now().date_naive();
    for ahead in 0..=3 {
        let day = today + chrono::Days::new(ahead);
        let name = format!("driver_locations_{}", day.format("%Y%m%d"));
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    assert!(
        names
            .iter()
            .all(|n| partitions::partition_day(n)
                .is_some_and(|d| d >= today - chrono::Days::new(30)))
    );
}

#[tokio::test]
async fn housekeeping_deletes_old_finished_jobs_and_requeues_jobs_of_dead_workers() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let order = app.placed_order(&cast).await;
    // Two jobs exist for the order (confirm timeout): make one old and done, and one stuck
    // Running on a worker that stopped heartbeating ten minutes ago.
    sqlx::query(
        "INSERT INTO apalis.workers (id, worker_type, storage_name, layers, last_seen)
         VALUES ('dead-worker', 'courier::confirm_timeout', 'PostgresStorage', '', now() - INTERVAL '10 minutes')",
    )
    .execute(&app.db)
    .await
    .expect("dead worker");
    let mut conn = app.db.acquire().await.expect("conn");
    courier::jobs::enqueue(
        &mut conn,
        &courier::jobs::messages::ConfirmTimeout {
            order_id: OrderId(order),
        },
        Duration::ZERO,
    )
    .await
    .expect("second job");
    drop(conn);
    // The authorisation's job ran in the test's process (not as a job): drop it.
    sqlx::query("DELETE FROM apalis.jobs WHERE job_type <> 'courier::confirm_timeout'")
        .execute(&app.db)
        .await
        .expect("other jobs");
    let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM apalis.jobs ORDER BY id")
        .fetch_all(&app.db)
        .await
        .expect("ids");
    assert_eq!(ids.len(), 2);
    sqlx::query(
        "UPDATE apalis.jobs SET status = 'Done', done_at = now() - INTERVAL '8 days' WHERE id = $1",
    )
    .bind(&ids[0])
    .execute(&app.db)
    .await
    .expect("old done job");
    sqlx::query("UPDATE apalis.jobs SET status = 'Running', lock_by = 'dead-worker', lock_at = now() - INTERVAL '10 minutes' WHERE id = $1")
        .bind(&ids[1])
        .execute(&app.db)
        .await
        .expect("stuck job");

    let summary = housekeeping::run(&app.db, &CronSettings::default())
        .await
        .expect("runs");
    assert_eq!(summary["jobs_deleted"], 1);
    assert_eq!(summary["jobs_requeued"], 1);
    let left: Vec<(String, String, Option<String>)> =
        sqlx::query_as("SELECT id, status, lock_by FROM apalis.jobs")
            .fetch_all(&app.db)
            .await
            .expect("jobs");
    assert_eq!(left, vec![(ids[1].clone(), "Pending".to_owned(), None)]);
}

#[tokio::test]
async fn the_stuck_order_sweep_revives_an_order_whose_match_job_was_deleted() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let order = app.placed_order(&cast).await;
    app.act(order, "confirm", Role::Restaurant, cast.restaurant)
        .await;
    let healthy = app.placed_order(&cast).await;
    app.act(healthy, "confirm", Role::Restaurant, cast.restaurant)
        .await;
    sqlx::query(
        "DELETE FROM apalis.jobs WHERE job_type = $1
           AND (convert_from(job, 'UTF8')::jsonb ->> 'order_id')::bigint = $2",
    )
    .bind(MatchDriver::QUEUE)
    .bind(order)
    .execute(&app.db)
    .await
    .expect("delete by hand");
    assert_eq!(app.jobs_for(MatchDriver::QUEUE, order).await, 0);

    let summary = stuck_orders::run(&app.db, &app.state.location, &CronSettings::default())
        .await
        .expect("runs");
    assert_eq!(summary["revived"], 1);
    assert_eq!(app.jobs_for(MatchDriver::QUEUE, order).await, 1);
    assert_eq!(
        app.jobs_for(MatchDriver::QUEUE, healthy).await,
        1,
        "untouched"
    );
    assert_eq!(app.audit_rows(order, "matching_revived").await, 1);
    // Now it has a job: nothing more to do.
    let again = stuck_orders::run(&app.db, &app.state.location, &CronSettings::default())
        .await
        .expect("runs");
    assert_eq!(again["revived"], 0);
}

#[tokio::test]
async fn the_sweep_revives_a_lost_authorisation_and_cancels_orders_whose_hold_expired() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    // A PAYMENT_PENDING order whose authorisation job was killed by hand.
    let waiting = app.unpaid_order(&cast).await;
    sqlx::query("DELETE FROM apalis.jobs WHERE job_type = $1")
        .bind(AuthorizePayment::QUEUE)
        .execute(&app.db)
        .await
        .expect("delete by hand");
    sqlx::query("UPDATE orders SET created_at = now() - INTERVAL '5 minutes' WHERE id = $1")
        .bind(waiting)
        .execute(&app.db)
        .await
        .expect("age");
    // Two authorised orders: one held for 7 days and still not delivered, one fresh.
    let stale = app.placed_order(&cast).await;
    app.act(stale, "confirm", Role::Restaurant, cast.restaurant)
        .await;
    let fresh = app.placed_order(&cast).await;
    sqlx::query(
        "UPDATE payments SET authorized_at = now() - INTERVAL '7 days' WHERE order_id = $1",
    )
    .bind(stale)
    .execute(&app.db)
    .await
    .expect("age the hold");

    let summary = stuck_orders::run(&app.db, &app.state.location, &CronSettings::default())
        .await
        .expect("runs");
    assert_eq!(summary["authorizations_revived"], 1);
    assert_eq!(summary["authorizations_expired"], 1);
    assert_eq!(app.jobs_for(AuthorizePayment::QUEUE, waiting).await, 1);
    assert_eq!(app.status_of(stale).await, "CANCELLED");
    let reason: Option<String> =
        sqlx::query_scalar("SELECT cancel_reason FROM orders WHERE id = $1")
            .bind(stale)
            .fetch_one(&app.db)
            .await
            .expect("reason");
    assert_eq!(reason.as_deref(), Some("authorization_expired"));
    assert_eq!(app.jobs_for(ReleasePayment::QUEUE, stale).await, 1);
    assert_eq!(app.status_of(fresh).await, "PLACED");
    // The release frees the hold; the revived authorisation places the waiting order.
    let payments = Payments::new(app.db.clone(), PaymentSettings::default()).expect("ledger");
    assert_eq!(
        payment::release(&app.db, &payments, OrderId(stale), 1)
            .await
            .expect("release"),
        payment::PaymentResult::Ended("released")
    );
    assert_eq!(
        app.authorize(waiting).await,
        payment::PaymentResult::Ended("authorized")
    );
    let again = stuck_orders::run(&app.db, &app.state.location, &CronSettings::default())
        .await
        .expect("runs");
    assert_eq!(again["authorizations_revived"], 0);
    assert_eq!(again["authorizations_expired"], 0);
}
