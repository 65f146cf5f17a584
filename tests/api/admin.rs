//! `courier admin` against real databases and real apalis rows: jobs in every state, retry and
//! kill, workers and cron, an order's story, rematch and cancel, stuck orders, drivers; table
//! and JSON output; bad input as one-line errors with a non-zero exit code.

use std::process::{Command, Stdio};
use std::time::Duration;

use clap::Parser;
use courier::admin::{self, AdminArgs, AdminContext, AdminError, Output};
use courier::auth::Role;
use courier::cron::CronSettings;
use courier::domain::{OfferId, OrderId};
use courier::jobs::Job;
use courier::jobs::messages::ConfirmTimeout;
use courier::workflows::{matching, offers};
use serde_json::{Value, json};

use crate::helpers::{
    RESTAURANT_AT, TestApp, cast, database_url, eventually, fast_dispatch, spawn_app, valkey_url,
};

/// Parses `args` as `courier admin …` would.
#[derive(Debug, Parser)]
struct Harness {
    #[command(flatten)]
    admin: AdminArgs,
}

fn context(app: &TestApp) -> AdminContext {
    AdminContext {
        db: app.db.clone(),
        location: app.state.location.clone(),
        cron: CronSettings::default(),
    }
}

async fn admin(app: &TestApp, args: &[&str]) -> Result<Output, AdminError> {
    let parsed = Harness::try_parse_from(std::iter::once("admin").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("{args:?} does not parse: {e}"));
    admin::execute(&context(app), &parsed.admin).await
}

pub(crate) async fn ok(app: &TestApp, args: &[&str]) -> Output {
    admin(app, args)
        .await
        .unwrap_or_else(|e| panic!("{args:?} failed: {e}"))
}

pub(crate) async fn err(app: &TestApp, args: &[&str]) -> String {
    match admin(app, args).await {
        Ok(out) => panic!("{args:?} should fail, printed:\n{}", out.text),
        Err(e) => e.to_string(),
    }
}

/// The confirm-timeout job of a freshly placed order, and the order.
async fn order_with_job(app: &TestApp) -> (i64, String) {
    let cast = cast(&app.db).await;
    let order = app.placed_order(&cast).await;
    let id: String = sqlx::query_scalar(
        "SELECT id FROM apalis.jobs WHERE job_type = $1
           AND (convert_from(job, 'UTF8')::jsonb ->> 'order_id')::bigint = $2",
    )
    .bind(ConfirmTimeout::QUEUE)
    .bind(order)
    .fetch_one(&app.db)
    .await
    .expect("job");
    (order, id)
}

async fn set_job(app: &TestApp, id: &str, sql_set: &str) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE apalis.jobs SET {sql_set} WHERE id = $1"
    )))
    .bind(id)
    .execute(&app.db)
    .await
    .expect("set job");
}

async fn job_status(app: &TestApp, id: &str) -> String {
    sqlx::query_scalar("SELECT status FROM apalis.jobs WHERE id = $1")
        .bind(id)
        .fetch_one(&app.db)
        .await
        .expect("status")
}

#[tokio::test]
async fn jobs_in_every_state_are_listed_shown_and_counted() {
    let app = spawn_app().await;
    let (_, failed) = order_with_job(&app).await;
    let (_, dead) = order_with_job(&app).await;
    let (_, running) = order_with_job(&app).await;
    let (done_order, done) = order_with_job(&app).await;
    sqlx::query(
        "INSERT INTO apalis.workers (id, worker_type, storage_name, layers, last_seen)
         VALUES ('gone-worker', 'courier::confirm_timeout', 'PostgresStorage', '', now() - INTERVAL '10 minutes')",
    )
    .execute(&app.db)
    .await
    .expect("worker");
    set_job(&app, &failed, "status = 'Failed', attempts = 10, max_attempts = 10, last_result = '{\"Err\": \"database unavailable\"}'").await;
    set_job(&app, &dead, "status = 'Killed', done_at = now()").await;
    set_job(&app, &running, "status = 'Running', lock_by = 'gone-worker', lock_at = now() - INTERVAL '10 minutes', run_at = now() - INTERVAL '10 minutes'").await;
    set_job(&app, &done, "status = 'Done', done_at = now()").await;

    let list = ok(&app, &["jobs", "list", "--status", "failed"]).await;
    assert!(list.text.starts_with("ID"), "{}", list.text);
    assert!(list.text.contains(&failed) && list.text.contains("Failed"));
    assert!(!list.text.contains(&dead));
    let json = ok(
        &app,
        &["--json", "jobs", "list", "--queue", "confirm_timeout"],
    )
    .await;
    assert_eq!(json.json["jobs"].as_array().map(Vec::len), Some(4));
    let by_order = ok(&app, &["jobs", "list", "--order", &done_order.to_string()]).await;
    assert_eq!(by_order.json["jobs"][0]["id"], done.as_str());

    let shown = ok(&app, &["jobs", "show", &failed]).await;
    assert!(shown.text.contains("attempts:     10/10"), "{}", shown.text);
    assert!(shown.text.contains("database unavailable"));
    assert!(shown.json["arguments"]["order_id"].is_i64());
    let running_shown = ok(&app, &["jobs", "show", &running]).await;
    assert!(running_shown.text.contains("gone-worker"));

    let stats = ok(&app, &["--json", "jobs", "stats"]).await;
    let queue = stats.json["queues"]
        .as_array()
        .expect("queues")
        .iter()
        .find(|q| q["queue"] == ConfirmTimeout::QUEUE)
        .expect("the confirm timeout's queue");
    assert_eq!(
        (
            &queue["dead"],
            &queue["running"],
            &queue["stuck_running"],
            &queue["done_last_hour"]
        ),
        (&json!(2), &json!(1), &json!(1), &json!(1)),
        "{queue}"
    );
    let table = ok(&app, &["jobs", "stats"]).await;
    assert!(table.text.contains("confirm_timeout"));
    assert!(table.text.contains("STUCK"));
}

#[tokio::test]
async fn a_failed_job_retried_from_the_cli_runs_again_and_the_order_continues() {
    let app = spawn_app().await;
    let (order, job) = order_with_job(&app).await;
    set_job(
        &app,
        &job,
        "status = 'Failed', attempts = 10, max_attempts = 10, run_at = now() - INTERVAL '1 hour'",
    )
    .await;
    let _workers = app.spawn_workers();
    // Dry run: shows the job, changes nothing.
    let dry = ok(
        &app,
        &[
            "jobs",
            "retry",
            "--queue",
            "confirm_timeout",
            "--status",
            "failed",
            "--dry-run",
        ],
    )
    .await;
    assert!(dry.text.contains(&job) && dry.text.contains("would retry 1 job(s)"));
    assert_eq!(job_status(&app, &job).await, "Failed");
    // Without --yes and without a terminal, nothing happens.
    let refused = err(&app, &["jobs", "retry", &job]).await;
    assert!(refused.contains("--yes"), "{refused}");

    let retried = ok(&app, &["--yes", "--json", "jobs", "retry", &job]).await;
    assert_eq!(retried.json["changed"], 1);
    assert!(
        eventually(Duration::from_secs(15), || async {
            app.status_of(order).await == "CANCELLED"
        })
        .await,
        "the retried timeout job did not run"
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            job_status(&app, &job).await == "Done"
        })
        .await
    );
    // A done job is not retried again.
    let again = err(&app, &["--yes", "jobs", "retry", &job]).await;
    assert!(again.contains("is Done"), "{again}");
}

#[tokio::test]
async fn kill_stops_pending_jobs_and_refuses_running_ones() {
    let app = spawn_app().await;
    let (_, pending) = order_with_job(&app).await;
    let (_, running) = order_with_job(&app).await;
    set_job(&app, &running, "status = 'Running'").await;
    let killed = ok(&app, &["--yes", "jobs", "kill", &pending]).await;
    assert!(killed.text.contains("1 job(s) killed"), "{}", killed.text);
    assert_eq!(job_status(&app, &pending).await, "Killed");
    let refused = err(&app, &["--yes", "jobs", "kill", &running]).await;
    assert!(refused.contains("is Running"), "{refused}");
    assert_eq!(job_status(&app, &running).await, "Running");
}

#[tokio::test]
async fn bad_input_gets_a_clear_one_line_error() {
    let app = spawn_app().await;
    let (_, job) = order_with_job(&app).await;
    let cases: [(&[&str], &str); 9] = [
        (
            &["jobs", "show", "01JBZ8K3M9Q2R5T7V9X1Y3Z5A7"],
            "no job with id",
        ),
        (&["jobs", "show", "nope"], "not a job id"),
        (
            &["jobs", "list", "--queue", "pizza"],
            "unknown queue `pizza`",
        ),
        (&["jobs", "list", "--status", "sleepy"], "unknown status"),
        (&["jobs", "list", "--since", "yesterday-ish"], "--since"),
        (
            &["jobs", "retry", &job, "--queue", "match_driver"],
            "not both",
        ),
        (&["jobs", "retry"], "nothing to retry"),
        (&["jobs", "kill", "--queue", "notify"], "needs --status"),
        (&["orders", "show", "424242"], "no order with id 424242"),
    ];
    for (args, expected) in cases {
        let message = err(&app, args).await;
        assert!(message.contains(expected), "{args:?}: {message}");
        assert!(!message.contains('\n'), "one line: {message}");
    }
}

#[tokio::test]
async fn order_show_tells_the_story_of_two_offers_and_a_timeout() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let drivers = [
        app.online_driver_at(300.0).await,
        app.online_driver_at(1_500.0).await,
    ];
    let order = app.placed_order(&cast).await;
    app.act(order, "confirm", Role::Restaurant, cast.restaurant)
        .await;
    let dispatcher = app.dispatcher(fast_dispatch());
    matching::run_round(&dispatcher, OrderId(order), 1)
        .await
        .expect("round");
    let first: i64 = sqlx::query_scalar("SELECT id FROM offers WHERE order_id = $1")
        .bind(order)
        .fetch_one(&app.db)
        .await
        .expect("offer");
    assert!(
        offers::expire(&app.db, OfferId(first))
            .await
            .expect("expire")
    );
    matching::run_round(&dispatcher, OrderId(order), 1)
        .await
        .expect("round");
    let second: i64 =
        sqlx::query_scalar("SELECT id FROM offers WHERE order_id = $1 AND status = 'pending'")
            .bind(order)
            .fetch_one(&app.db)
            .await
            .expect("second offer");
    let accepted = app
        .post_as(
            &format!("/v1/offers/{second}/accept"),
            Role::Driver,
            drivers[1],
            &json!({}),
        )
        .await;
    assert_eq!(accepted.status().as_u16(), 200);

    let story = ok(&app, &["orders", "show", &order.to_string()]).await;
    let text = &story.text;
    for expected in [
        "PLACED → CONFIRMED by restaurant",
        &format!(
            "offer_made by system driver_id={} offer_id={first}",
            drivers[0]
        ),
        &format!("offer_expired by system driver_id={}", drivers[0]),
        &format!(
            "offer_made by system driver_id={} offer_id={second}",
            drivers[1]
        ),
        &format!("driver_assigned by driver {}", drivers[1]),
        &format!("offer {first} to driver {}", drivers[0]),
        "match_driver",
        "offer_timeout",
    ] {
        assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
    }
    let json = ok(&app, &["--json", "orders", "show", &order.to_string()])
        .await
        .json;
    // In time order: authorised, made, expired, made again, assigned.
    let events: Vec<String> = json["story"]
        .as_array()
        .expect("story")
        .iter()
        .filter(|e| e["kind"] == "event")
        .map(|e| {
            e["what"]
                .as_str()
                .expect("what")
                .split(' ')
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    assert_eq!(
        events,
        [
            "payment_authorized",
            "offer_made",
            "offer_expired",
            "offer_made",
            "driver_assigned"
        ]
    );
    assert!(text.contains("offer_made → driver"), "{text}");
    assert_eq!(json["order"]["driver_id"], drivers[1]);
    let statuses: Vec<&str> = json["offers"]
        .as_array()
        .expect("offers")
        .iter()
        .map(|o| o["status"].as_str().expect("status"))
        .collect();
    assert_eq!(statuses, ["expired", "accepted"]);
    let story: Vec<Value> = json["story"].as_array().expect("story").clone();
    let times: Vec<chrono::DateTime<chrono::Utc>> = story
        .iter()
        .map(|e| e["at"].as_str().expect("at").parse().expect("rfc3339"))
        .collect();
    let mut sorted = times.clone();
    sorted.sort_unstable();
    assert_eq!(times, sorted);
    assert!(json["events"].as_array().is_some_and(|e| e.len() >= 4));
}

#[tokio::test]
async fn rematch_cancel_and_stuck_orders() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let order = app.placed_order(&cast).await;
    app.act(order, "confirm", Role::Restaurant, cast.restaurant)
        .await;
    // The match job is lost and the order idle for an hour: it is stuck.
    sqlx::query("DELETE FROM apalis.jobs WHERE (convert_from(job, 'UTF8')::jsonb ->> 'order_id')::bigint = $1")
        .bind(order)
        .execute(&app.db)
        .await
        .expect("lose jobs");
    sqlx::query("UPDATE orders SET updated_at = now() - INTERVAL '1 hour' WHERE id = $1")
        .bind(order)
        .execute(&app.db)
        .await
        .expect("age");
    let fresh = app.placed_order(&cast).await;
    let stuck = ok(&app, &["--json", "orders", "stuck"]).await;
    let ids: Vec<i64> = stuck.json["orders"]
        .as_array()
        .expect("orders")
        .iter()
        .map(|o| o["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(ids, vec![order]);
    assert!(
        ok(&app, &["orders", "stuck"])
            .await
            .text
            .contains("CONFIRMED")
    );
    assert!(
        err(&app, &["orders", "stuck", "--older-than", "soon"])
            .await
            .contains("--older-than")
    );

    let rematched = ok(&app, &["--yes", "orders", "rematch", &order.to_string()]).await;
    assert!(
        rematched.text.contains("matching enqueued"),
        "{}",
        rematched.text
    );
    assert_eq!(
        app.jobs_for(courier::jobs::messages::MatchDriver::QUEUE, order)
            .await,
        1
    );
    assert_eq!(app.audit_rows(order, "matching_revived").await, 1);
    let placed = err(&app, &["--yes", "orders", "rematch", &fresh.to_string()]).await;
    assert!(placed.contains("is PLACED"), "{placed}");

    let cancelled = ok(
        &app,
        &[
            "--yes",
            "orders",
            "cancel",
            &order.to_string(),
            "--reason",
            "restaurant closed",
            "--operator",
            "9",
        ],
    )
    .await;
    assert!(
        cancelled.text.contains("CONFIRMED → CANCELLED"),
        "{}",
        cancelled.text
    );
    assert_eq!(app.status_of(order).await, "CANCELLED");
    let actor: (String, Option<i64>) = sqlx::query_as(
        "SELECT actor_type, actor_id FROM audit_logs WHERE entity_id = $1 AND metadata ->> 'action' = 'cancel'",
    )
    .bind(order)
    .fetch_one(&app.db)
    .await
    .expect("audit");
    assert_eq!(actor, ("operator".to_owned(), Some(9)));
    let again = err(
        &app,
        &[
            "--yes",
            "orders",
            "cancel",
            &order.to_string(),
            "--reason",
            "x",
        ],
    )
    .await;
    assert!(again.contains("cannot be cancelled"), "{again}");
}

#[tokio::test]
async fn workers_cron_and_drivers() {
    let app = spawn_app().await;
    let _workers = app.spawn_workers();
    // One worker per job queue registers and heartbeats.
    let queues = courier::jobs::messages::QUEUES.len();
    assert!(
        eventually(Duration::from_secs(20), || async {
            let workers = ok(&app, &["--json", "workers"]).await.json;
            workers["workers"]
                .as_array()
                .is_some_and(|w| w.iter().filter(|w| w["alive"] == true).count() >= queues)
        })
        .await
    );
    assert!(ok(&app, &["workers"]).await.text.contains("alive"));
    let cron = ok(&app, &["cron"]).await;
    for task in [
        "auto_complete",
        "stuck_orders",
        "housekeeping",
        "partitions",
    ] {
        assert!(cron.text.contains(task), "{}", cron.text);
    }
    let cron_json = ok(&app, &["--json", "cron"]).await;
    assert!(cron_json.json["cron"][0]["next_tick"].is_string());

    let driver = app.online_driver_at(0.0).await;
    let lat = RESTAURANT_AT.0.to_string();
    let lon = RESTAURANT_AT.1.to_string();
    let nearby = ok(&app, &["--json", "drivers", "nearby", &lat, &lon]).await;
    assert_eq!(nearby.json["drivers"][0]["driver_id"], driver);
    let shown = ok(&app, &["drivers", "show", &driver.to_string()]).await;
    assert!(
        shown.text.contains("online") && shown.text.contains("s ago"),
        "{}",
        shown.text
    );
    assert!(
        err(&app, &["drivers", "show", "999999"])
            .await
            .contains("no driver")
    );
    assert!(
        err(&app, &["drivers", "nearby", "91", "0"])
            .await
            .contains("LAT")
    );
}

#[tokio::test]
async fn the_binary_exits_non_zero_with_one_line_on_bad_input() {
    let app = spawn_app().await;
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_courier"))
            .arg("--dev")
            .args(args)
            .env("DATABASE_URL", database_url(&app.db_name))
            .env("VALKEY_URL", valkey_url())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .output()
            .expect("courier runs")
    };
    let missing = run(&["admin", "jobs", "show", "01JBZ8K3M9Q2R5T7V9X1Y3Z5A7"]);
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: no job with id"), "{stderr}");

    let stats = run(&["admin", "--json", "jobs", "stats"]);
    assert!(
        stats.status.success(),
        "{}",
        String::from_utf8_lossy(&stats.stderr)
    );
    let parsed: Value = serde_json::from_slice(&stats.stdout).expect("JSON on stdout");
    assert!(parsed["queues"].is_array());

    let conflicting = run(&[
        "admin", "jobs", "kill", "--status", "pending", "--queue", "nope",
    ]);
    assert!(!conflicting.status.success());
    assert!(String::from_utf8_lossy(&conflicting.stderr).contains("unknown queue"));
}

#[tokio::test]
async fn check_passes_a_healthy_marketplace_and_names_what_breaks_an_invariant() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let driver = app.online_driver_at(300.0).await;
    let other = app.online_driver_at(600.0).await;
    let order = app.placed_order(&cast).await;
    app.act(order, "confirm", Role::Restaurant, cast.restaurant)
        .await;
    let dispatcher = app.dispatcher(fast_dispatch());
    matching::run_round(&dispatcher, OrderId(order), 1)
        .await
        .expect("round");
    let offer: i64 = sqlx::query_scalar("SELECT id FROM offers WHERE order_id = $1")
        .bind(order)
        .fetch_one(&app.db)
        .await
        .expect("offer");
    assert_eq!(app.accept(offer, driver).await.status().as_u16(), 200);
    let _relay = app.spawn_relay();
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.unpublished().await == 0
        })
        .await,
        "the relay published the order's events"
    );

    let healthy = ok(&app, &["check"]).await;
    assert!(!healthy.text.contains("FAILED"), "{}", healthy.text);
    assert_eq!(healthy.json["failed"], 0);
    assert_eq!(
        healthy.json["checks"].as_array().expect("checks").len(),
        9,
        "{}",
        healthy.text
    );

    // Another driver's name on the order, and a cron tick recorded as run twice.
    sqlx::query("UPDATE orders SET driver_id = $2 WHERE id = $1")
        .bind(order)
        .bind(other)
        .execute(&app.db)
        .await
        .expect("reassigned behind matching's back");
    for _ in 0..2 {
        sqlx::query(
            "INSERT INTO audit_logs (event_type, entity_type, entity_id, actor_type, metadata)
             VALUES ('cron_run', 'cron', 1, 'system',
                     '{\"task\": \"auto_complete\", \"tick\": \"2026-12-04T00:00:00Z\"}')",
        )
        .execute(&app.db)
        .await
        .expect("audit row");
    }
    let broken = err(&app, &["check"]).await;
    assert!(broken.contains("2 invariant(s) broken"), "{broken}");
    for line in [
        "an assigned order's driver is the one who accepted it",
        "each cron tick ran once",
    ] {
        let row = broken
            .lines()
            .find(|l| l.contains(line))
            .unwrap_or_else(|| panic!("no row for {line}: {broken}"));
        assert!(row.contains("FAILED"), "{row}");
    }
    assert!(
        broken
            .lines()
            .find(|l| l.contains("assigned order's driver"))
            .is_some_and(|l| l.contains(&order.to_string())),
        "the broken order is named: {broken}"
    );
    assert!(
        broken.contains("auto_complete 2026-12-04T00:00:00Z"),
        "{broken}"
    );
}
