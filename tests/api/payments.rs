//! Payments end to end against a local server that speaks Stripe's API ([`crate::stripe`]):
//! authorisation at placement, capture on delivery, release on cancellation, declines, a worker
//! killed right after a request, retries with growing delays, refunds by operators, and the
//! rule that an order completes only once its payment is settled. Also webhooks (signed; a
//! failing endpoint blocks nobody) and review requests.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use chrono::{DateTime, Utc};
use courier::auth::Role;
use courier::cron::{CronSettings, auto_complete};
use courier::domain::{Action, Actor, OrderId};
use courier::jobs::Job;
use courier::jobs::messages::{CapturePayment, ConfirmTimeout, RequestReview};
use courier::notify::{Audience, WebhookSettings, signature};
use courier::payments::{PaymentSettings, Payments};
use courier::workers::request_review;
use courier::workflows::RequestMeta;
use courier::workflows::machine::Refusal;
use courier::workflows::payment::{self, PaymentResult};
use courier::workflows::transition::{self, TransitionError, TransitionRequest};
use serde_json::{Value, json};

use crate::helpers::{
    Cast, TestApp, WorkerProcess, WorkerSettings, cast, eventually, order_body, spawn_app,
};
use crate::stripe::{self, Mode, Op};

async fn deliver(app: &TestApp, order: i64, driver: i64) {
    assert_eq!(
        app.act(order, "deliver", Role::Driver, driver)
            .await
            .status()
            .as_u16(),
        200
    );
}

async fn payment_status(app: &TestApp, order: i64) -> Option<String> {
    sqlx::query_scalar("SELECT status FROM payments WHERE order_id = $1")
        .bind(order)
        .fetch_optional(&app.db)
        .await
        .expect("payment")
}

async fn intent_of(app: &TestApp, order: i64) -> Option<String> {
    sqlx::query_scalar("SELECT intent_id FROM payments WHERE order_id = $1")
        .bind(order)
        .fetch_one(&app.db)
        .await
        .expect("payment")
}

/// `operation outcome` of each provider call for `order`, in order.
async fn calls(app: &TestApp, order: i64) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT operation || ' ' || outcome FROM payment_attempts WHERE order_id = $1 ORDER BY id",
    )
    .bind(order)
    .fetch_all(&app.db)
    .await
    .expect("attempts")
}

async fn total_of(app: &TestApp, order: i64) -> i64 {
    sqlx::query_scalar("SELECT total_cents FROM orders WHERE id = $1")
        .bind(order)
        .fetch_one(&app.db)
        .await
        .expect("total")
}

/// Places an order of `cast` paying with `method`; returns its id.
async fn place_paying(app: &TestApp, cast: &Cast, method: &str) -> i64 {
    let mut body = order_body(cast);
    body["payment_method"] = json!(method);
    let response = app
        .place_order(cast.customer, &uuid::Uuid::new_v4().to_string(), &body)
        .await;
    assert_eq!(response.status().as_u16(), 201);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["status"], "PAYMENT_PENDING");
    assert_eq!(body["placed_at"], Value::Null);
    body["id"].as_i64().expect("id")
}

async fn status_becomes(app: &TestApp, order: i64, status: &str) -> bool {
    eventually(Duration::from_secs(30), || async {
        app.status_of(order).await == status
    })
    .await
}

/// An order authorised at the fake provider and picked up; no workers run.
async fn stripe_picked_up(app: &TestApp, cast: &Cast, url: &str) -> (i64, i64) {
    let order = app.unpaid_order(cast).await;
    assert_eq!(
        app.authorize_with(order, stripe::settings(url)).await,
        PaymentResult::Ended("authorized")
    );
    let driver = app.pick_up(cast, order).await;
    (order, driver)
}

#[tokio::test]
async fn stripe_authorizes_at_placement_and_captures_the_intent_once_on_delivery() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let (url, fake) = stripe::spawn().await;
    let _workers = app.spawn_workers_custom(stripe::workers(&url));
    let order = place_paying(&app, &cast, "pm_card_visa").await;
    assert!(status_becomes(&app, order, "PLACED").await);

    let authorize = fake.requests(Op::Authorize);
    assert_eq!(authorize.len(), 1);
    let total = total_of(&app, order).await;
    let form = &authorize[0].form;
    assert_eq!(authorize[0].key, format!("courier-authorize-{order}"));
    assert_eq!(form["amount"], total.to_string());
    assert_eq!(form["currency"], "usd");
    assert_eq!(form["payment_method"], "pm_card_visa");
    assert_eq!(form["capture_method"], "manual");
    assert_eq!(form["confirm"], "true");
    assert_eq!(form["metadata[order_id]"], order.to_string());
    let intent = intent_of(&app, order).await.expect("an intent");
    assert_eq!(
        payment_status(&app, order).await.as_deref(),
        Some("authorized")
    );
    // The restaurant's clock starts now, and it sees the order.
    assert_eq!(app.jobs_for(ConfirmTimeout::QUEUE, order).await, 1);
    let placed_at: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT placed_at FROM orders WHERE id = $1")
            .bind(order)
            .fetch_one(&app.db)
            .await
            .expect("placed_at");
    assert!(placed_at.is_some());

    let driver = app.pick_up(&cast, order).await;
    deliver(&app, order, driver).await;
    assert!(
        eventually(Duration::from_secs(30), || async {
            payment_status(&app, order).await.as_deref() == Some("captured")
        })
        .await
    );
    let captures = fake.requests(Op::Capture);
    assert_eq!(captures.len(), 1, "one capture request");
    assert_eq!(captures[0].intent.as_deref(), Some(intent.as_str()));
    assert_eq!(captures[0].key, format!("courier-capture-{order}"));
    assert_eq!(captures[0].form["amount_to_capture"], total.to_string());
    assert_eq!(fake.intent_status(&intent), Some("succeeded"));
    assert!(fake.requests(Op::Cancel).is_empty());
    assert_eq!(
        calls(&app, order).await,
        ["authorize succeeded", "capture succeeded"]
    );
    for event in ["payment_authorized", "payment_captured"] {
        assert_eq!(app.outbox_events(order, event).await, 1, "{event}");
    }
    // Completed once delivered long enough: the payment is settled.
    sqlx::query("UPDATE orders SET delivered_at = now() - INTERVAL '2 hours' WHERE id = $1")
        .bind(order)
        .execute(&app.db)
        .await
        .expect("age");
    auto_complete::run(&app.db, &app.state.location, &CronSettings::default())
        .await
        .expect("auto-complete");
    assert_eq!(app.status_of(order).await, "COMPLETED");
}

#[tokio::test]
async fn a_customer_cancel_after_authorization_cancels_the_intent_once() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let (url, fake) = stripe::spawn().await;
    let _workers = app.spawn_workers_custom(stripe::workers(&url));
    let order = place_paying(&app, &cast, "pm_card_visa").await;
    assert!(status_becomes(&app, order, "PLACED").await);
    let intent = intent_of(&app, order).await.expect("an intent");
    assert_eq!(
        app.act(order, "cancel", Role::Customer, cast.customer)
            .await
            .status()
            .as_u16(),
        200
    );
    assert!(
        eventually(Duration::from_secs(30), || async {
            payment_status(&app, order).await.as_deref() == Some("released")
        })
        .await
    );
    let context = app.job_context(stripe::workers(&url));
    for _ in 0..2 {
        assert_eq!(
            payment::release(&app.db, &context.payments, OrderId(order), 1)
                .await
                .expect("re-run"),
            PaymentResult::NothingToDo
        );
    }
    let cancels = fake.requests(Op::Cancel);
    assert_eq!(cancels.len(), 1, "one cancel of the intent");
    assert_eq!(cancels[0].intent.as_deref(), Some(intent.as_str()));
    assert_eq!(cancels[0].key, format!("courier-release-{order}"));
    assert_eq!(fake.intent_status(&intent), Some("canceled"));
    assert!(fake.requests(Op::Capture).is_empty());
    assert_eq!(app.outbox_events(order, "payment_released").await, 1);
    assert_eq!(
        calls(&app, order).await,
        ["authorize succeeded", "release succeeded"]
    );
}

/// A webhook receiver: records each request's audience and body.
async fn spawn_receiver() -> (String, Receiver) {
    let receiver = Receiver::default();
    let router = axum::Router::new()
        .route("/hooks/{audience}", post(receive))
        .with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}/hooks", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, router).await });
    (base, receiver)
}

impl Receiver {
    /// `(audience, type)` of each webhook about `order`.
    fn about(&self, order: i64) -> Vec<(String, String)> {
        self.received
            .lock()
            .expect("lock")
            .iter()
            .filter_map(|(audience, _, body)| {
                let json: Value = serde_json::from_slice(body).ok()?;
                let kind = json["type"].as_str()?.to_owned();
                (json["order_id"] == order).then(|| (audience.clone(), kind))
            })
            .collect()
    }
}

#[tokio::test]
async fn a_declined_card_cancels_the_order_and_its_restaurant_is_never_asked() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let (url, fake) = stripe::spawn().await;
    let (hooks, receiver) = spawn_receiver().await;
    let _workers = app.spawn_workers_custom(WorkerSettings {
        webhooks: WebhookSettings {
            customer_url: Some(format!("{hooks}/customer")),
            restaurant_url: Some(format!("{hooks}/restaurant")),
            secret: b"whsec_a-shared-secret-for-tests".to_vec().into(),
            ..WorkerSettings::default().webhooks
        },
        ..stripe::workers(&url)
    });
    let paid = place_paying(&app, &cast, "pm_card_visa").await;
    let declined = place_paying(&app, &cast, "pm_card_chargeDeclinedInsufficientFunds").await;
    assert!(
        status_becomes(&app, declined, "CANCELLED").await,
        "{:?} {:?} {:?}",
        app.status_of(declined).await,
        payment_status(&app, declined).await,
        calls(&app, declined).await
    );
    assert!(status_becomes(&app, paid, "PLACED").await);

    let (reason, placed_at): (Option<String>, Option<DateTime<Utc>>) =
        sqlx::query_as("SELECT cancel_reason, placed_at FROM orders WHERE id = $1")
            .bind(declined)
            .fetch_one(&app.db)
            .await
            .expect("order");
    assert_eq!(reason.as_deref(), Some("payment_declined"));
    assert_eq!(placed_at, None, "never placed with the restaurant");
    assert_eq!(
        payment_status(&app, declined).await.as_deref(),
        Some("authorization_declined")
    );
    let code: Option<String> =
        sqlx::query_scalar("SELECT failure_code FROM payments WHERE order_id = $1")
            .bind(declined)
            .fetch_one(&app.db)
            .await
            .expect("code");
    assert_eq!(code.as_deref(), Some("insufficient_funds"));
    assert_eq!(app.jobs_for(ConfirmTimeout::QUEUE, declined).await, 0);
    assert_eq!(app.outbox_events(declined, "payment_declined").await, 1);
    // The customer is told; the restaurant hears of the paid order only.
    assert!(
        eventually(Duration::from_secs(20), || async {
            receiver
                .about(declined)
                .contains(&("customer".to_owned(), "payment_declined".to_owned()))
                && receiver
                    .about(paid)
                    .contains(&("restaurant".to_owned(), "order_placed".to_owned()))
        })
        .await,
        "{:?} {:?}",
        receiver.about(declined),
        receiver.about(paid)
    );
    assert!(
        receiver
            .about(declined)
            .iter()
            .all(|(audience, _)| audience == "customer"),
        "{:?}",
        receiver.about(declined)
    );
    // The restaurant's list, its order view and the confirm action know nothing of it.
    let listed: Value = app
        .client
        .get(format!(
            "{}/v1/restaurants/{}/orders",
            app.address, cast.restaurant
        ))
        .bearer_auth(app.token(Role::Restaurant, cast.restaurant))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    let ids: Vec<i64> = listed["orders"]
        .as_array()
        .expect("orders")
        .iter()
        .filter_map(|o| o["id"].as_i64())
        .collect();
    assert_eq!(ids, [paid]);
    let seen = app
        .client
        .get(format!("{}/v1/orders/{declined}", app.address))
        .bearer_auth(app.token(Role::Restaurant, cast.restaurant))
        .send()
        .await
        .expect("show");
    assert_eq!(seen.status().as_u16(), 404);
    assert_eq!(
        app.act(declined, "confirm", Role::Restaurant, cast.restaurant)
            .await
            .status()
            .as_u16(),
        404
    );
    assert!(fake.requests(Op::Cancel).is_empty(), "nothing was held");
    assert_eq!(fake.intents(), 1);
}

#[tokio::test]
async fn a_restaurant_cannot_confirm_an_order_whose_payment_is_pending() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let order = app.unpaid_order(&cast).await;
    let confirm = app
        .act(order, "confirm", Role::Restaurant, cast.restaurant)
        .await;
    assert_eq!(confirm.status().as_u16(), 404);
    let body: Value = confirm.json().await.expect("json");
    assert_eq!(body["error"]["code"], "not_found");
    // The customer sees it waiting, and may cancel it; nothing was held, so nothing is released.
    let shown: Value = app
        .client
        .get(format!("{}/v1/orders/{order}", app.address))
        .bearer_auth(app.token(Role::Customer, cast.customer))
        .send()
        .await
        .expect("show")
        .json()
        .await
        .expect("json");
    assert_eq!(shown["status"], "PAYMENT_PENDING");
    assert_eq!(
        app.act(order, "cancel", Role::Customer, cast.customer)
            .await
            .status()
            .as_u16(),
        200
    );
    assert_eq!(app.authorize(order).await, PaymentResult::Ended("released"));
    assert_eq!(app.status_of(order).await, "CANCELLED");
    assert!(
        calls(&app, order).await.is_empty(),
        "the provider was never called"
    );
    // A bad payment method is refused before anything is written.
    let mut body = order_body(&cast);
    for bad in [
        json!("card_4242"),
        json!(""),
        json!(42),
        json!("pm_x&amount=1"),
    ] {
        body["payment_method"] = bad.clone();
        let refused = app
            .place_order(cast.customer, &uuid::Uuid::new_v4().to_string(), &body)
            .await;
        assert!(refused.status().is_client_error(), "{bad}");
        let error: Value = refused.json().await.expect("json");
        assert!(error["error"]["code"].is_string(), "{bad}: {error}");
    }
    let mut missing = order_body(&cast);
    missing
        .as_object_mut()
        .expect("object")
        .remove("payment_method");
    let refused = app
        .place_order(cast.customer, &uuid::Uuid::new_v4().to_string(), &missing)
        .await;
    assert_eq!(refused.status().as_u16(), 422);
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&app.db)
        .await
        .expect("count");
    assert_eq!(orders, 1);
}

#[tokio::test]
async fn a_worker_killed_right_after_the_authorize_request_authorizes_once() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let (url, fake) = stripe::spawn().await;
    fake.set_mode(Mode::HangAfter(Op::Authorize));
    let env = stripe::worker_env(&url);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let worker = WorkerProcess::start(&app, &env);
    let order = place_paying(&app, &cast, "pm_card_visa").await;
    // The provider authorised; the worker dies before it hears back.
    tokio::time::timeout(Duration::from_secs(60), fake.performed.notified())
        .await
        .expect("the worker called the provider");
    worker.kill();
    assert_eq!(
        payment_status(&app, order).await.as_deref(),
        Some("authorizing")
    );
    assert_eq!(app.status_of(order).await, "PAYMENT_PENDING");

    fake.set_mode(Mode::Ok);
    let _rescuer = app.spawn_workers_custom(stripe::workers(&url));
    assert!(
        eventually(Duration::from_secs(90), || async {
            app.status_of(order).await == "PLACED"
        })
        .await,
        "the re-run did not place the order"
    );
    let requests = fake.requests(Op::Authorize);
    assert_eq!(requests.len(), 2, "the re-run asked again");
    assert!(
        requests
            .iter()
            .all(|r| r.key == format!("courier-authorize-{order}")),
        "with the same idempotency key"
    );
    assert_eq!(fake.intents(), 1, "one authorisation at the provider");
    assert_eq!(intent_of(&app, order).await.as_deref(), Some("pi_fake_1"));
    assert_eq!(calls(&app, order).await, ["authorize succeeded"]);
    assert_eq!(app.jobs_for(ConfirmTimeout::QUEUE, order).await, 1);
}

#[tokio::test]
async fn a_worker_killed_right_after_the_capture_request_never_charges_twice() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let (url, fake) = stripe::spawn().await;
    let (order, driver) = stripe_picked_up(&app, &cast, &url).await;
    fake.set_mode(Mode::HangAfter(Op::Capture));
    let env = stripe::worker_env(&url);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let worker = WorkerProcess::start(&app, &env);
    deliver(&app, order, driver).await;
    tokio::time::timeout(Duration::from_secs(60), fake.performed.notified())
        .await
        .expect("the worker called the provider");
    worker.kill();
    assert_eq!(
        payment_status(&app, order).await.as_deref(),
        Some("authorized")
    );

    fake.set_mode(Mode::Ok);
    let _rescuer = app.spawn_workers_custom(stripe::workers(&url));
    assert!(
        eventually(Duration::from_secs(90), || async {
            payment_status(&app, order).await.as_deref() == Some("captured")
        })
        .await,
        "the re-run did not record the capture"
    );
    let captures = fake.requests(Op::Capture);
    assert_eq!(captures.len(), 2, "the re-run asked again");
    assert_eq!(captures[0].key, captures[1].key);
    assert_eq!(
        fake.intent_status(&intent_of(&app, order).await.expect("intent")),
        Some("succeeded")
    );
    assert_eq!(
        calls(&app, order).await,
        ["authorize succeeded", "capture succeeded"]
    );
    assert_eq!(app.outbox_events(order, "payment_captured").await, 1);
}

#[tokio::test]
async fn a_503_is_retried_with_growing_delays_then_succeeds() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let (url, fake) = stripe::spawn().await;
    let (order, driver) = stripe_picked_up(&app, &cast, &url).await;
    fake.set_mode(Mode::Unavailable(Op::Capture, 2));
    let _workers = app.spawn_workers_custom(stripe::workers(&url));
    deliver(&app, order, driver).await;
    assert!(
        eventually(Duration::from_secs(30), || async {
            payment_status(&app, order).await.as_deref() == Some("captured")
        })
        .await
    );
    assert_eq!(
        calls(&app, order).await,
        [
            "authorize succeeded",
            "capture retryable",
            "capture retryable",
            "capture succeeded"
        ]
    );
    assert_eq!(fake.requests(Op::Capture).len(), 3);
    let runs: Vec<(i64, DateTime<Utc>)> = sqlx::query_as(
        "SELECT (convert_from(job, 'UTF8')::jsonb ->> 'attempt')::bigint, run_at FROM apalis.jobs
         WHERE job_type = $1 AND (convert_from(job, 'UTF8')::jsonb ->> 'order_id')::bigint = $2
         ORDER BY run_at",
    )
    .bind(CapturePayment::QUEUE)
    .bind(order)
    .fetch_all(&app.db)
    .await
    .expect("jobs");
    assert_eq!(runs.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 2, 3]);
    // Each retry is scheduled after a delay from its failed attempt: 1 s, then 2 s.
    let failed_at: Vec<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT created_at FROM payment_attempts WHERE order_id = $1 AND operation = 'capture'
         ORDER BY id",
    )
    .bind(order)
    .fetch_all(&app.db)
    .await
    .expect("attempt times");
    let first_delay = runs[1].1 - failed_at[0];
    let second_delay = runs[2].1 - failed_at[1];
    // apalis stores `run_at` in whole seconds, so a delay lands up to a second early.
    let within = |d: chrono::Duration, secs: i64| {
        d > chrono::Duration::seconds(secs - 1)
            && d <= chrono::Duration::milliseconds(secs * 1000 + 500)
    };
    assert!(within(first_delay, 1), "{first_delay}");
    assert!(within(second_delay, 2), "{second_delay}");
    assert!(second_delay > first_delay);
}

/// Whether `order` may complete now: the system's auto-complete, straight through the
/// executor.
async fn try_complete(app: &TestApp, order: i64) -> Result<(), TransitionError> {
    let request = TransitionRequest {
        order_id: OrderId(order),
        action: Action::AutoComplete,
        actor: Actor::System,
        meta: RequestMeta::default(),
        reason: None,
        expected_version: None,
        only_from: None,
        prep_minutes: None,
    };
    transition::execute(&app.db, &app.state.location, &request)
        .await
        .map(|_| ())
}

#[tokio::test]
async fn an_order_never_completes_while_its_capture_is_pending_or_retrying() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let (url, fake) = stripe::spawn().await;
    let (order, driver) = stripe_picked_up(&app, &cast, &url).await;
    deliver(&app, order, driver).await;
    sqlx::query("UPDATE orders SET delivered_at = now() - INTERVAL '2 hours' WHERE id = $1")
        .bind(order)
        .execute(&app.db)
        .await
        .expect("age");
    let cron = CronSettings::default();
    let not_settled = |result: Result<(), TransitionError>| {
        matches!(
            result,
            Err(TransitionError::Refused(Refusal::PaymentNotSettled))
        )
    };
    // Pending: delivered, the capture not yet run.
    auto_complete::run(&app.db, &app.state.location, &cron)
        .await
        .expect("tick");
    assert_eq!(app.status_of(order).await, "DELIVERED");
    assert!(not_settled(try_complete(&app, order).await));

    // Retrying: the provider is down.
    fake.set_mode(Mode::Unavailable(Op::Capture, 10));
    let payments = Payments::new(
        app.db.clone(),
        PaymentSettings {
            max_attempts: 2,
            ..stripe::settings(&url)
        },
    )
    .expect("payments");
    let first = payment::capture(&app.db, &payments, OrderId(order), 1)
        .await
        .expect("attempt 1");
    assert!(
        matches!(first, PaymentResult::Retrying { next: 2, .. }),
        "{first:?}"
    );
    auto_complete::run(&app.db, &app.state.location, &cron)
        .await
        .expect("tick");
    assert_eq!(app.status_of(order).await, "DELIVERED");
    assert!(not_settled(try_complete(&app, order).await));

    // Failed for good: still not closed, until an operator writes it off.
    let last = payment::capture(&app.db, &payments, OrderId(order), 2)
        .await
        .expect("attempt 2");
    assert_eq!(last, PaymentResult::Ended("capture_failed"));
    auto_complete::run(&app.db, &app.state.location, &cron)
        .await
        .expect("tick");
    assert_eq!(app.status_of(order).await, "DELIVERED");
    assert!(not_settled(try_complete(&app, order).await));
    crate::admin::ok(
        &app,
        &[
            "--yes",
            "orders",
            "write-off",
            &order.to_string(),
            "--reason",
            "provider outage; customer contacted",
        ],
    )
    .await;
    assert_eq!(
        payment_status(&app, order).await.as_deref(),
        Some("written_off")
    );
    auto_complete::run(&app.db, &app.state.location, &cron)
        .await
        .expect("tick");
    assert_eq!(app.status_of(order).await, "COMPLETED");
    assert_eq!(app.outbox_events(order, "payment_written_off").await, 1);
}

/// `courier admin --yes orders refund ID ARGS…`
fn refund_args<'a>(id: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut argv = vec!["--yes", "orders", "refund", id];
    argv.extend_from_slice(args);
    argv
}

#[tokio::test]
async fn refunds_partial_then_full_and_a_third_is_refused() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let (url, fake) = stripe::spawn().await;
    let (order, driver) = stripe_picked_up(&app, &cast, &url).await;
    let _workers = app.spawn_workers_custom(stripe::workers(&url));
    deliver(&app, order, driver).await;
    assert!(
        eventually(Duration::from_secs(30), || async {
            payment_status(&app, order).await.as_deref() == Some("captured")
        })
        .await
    );
    let total = total_of(&app, order).await;
    let id = order.to_string();
    let partial = refund_args(&id, &["--amount", "500", "--reason", "cold fries"]);
    let partial = crate::admin::ok(&app, &partial).await;
    assert!(partial.text.contains("succeeded"), "{}", partial.text);
    assert_eq!(
        payment_status(&app, order).await.as_deref(),
        Some("partially_refunded")
    );
    let rest = refund_args(&id, &["--reason", "order never arrived complete"]);
    let rest = crate::admin::ok(&app, &rest).await;
    assert!(rest.text.contains("succeeded"), "{}", rest.text);
    assert_eq!(
        payment_status(&app, order).await.as_deref(),
        Some("refunded")
    );
    let third = refund_args(&id, &["--amount", "1", "--reason", "again"]);
    let third = crate::admin::err(&app, &third).await;
    assert!(third.contains("nothing is left to refund"), "{third}");

    let refunds = fake.requests(Op::Refund);
    assert_eq!(refunds.len(), 2, "two refund requests at the provider");
    assert_eq!(fake.refunds(), 2);
    assert_eq!(refunds[0].form["amount"], "500");
    assert_eq!(refunds[1].form["amount"], (total - 500).to_string());
    assert_ne!(refunds[0].key, refunds[1].key);
    let refunded: i64 =
        sqlx::query_scalar("SELECT refunded_cents FROM payments WHERE order_id = $1")
            .bind(order)
            .fetch_one(&app.db)
            .await
            .expect("refunded");
    assert_eq!(refunded, total);
    assert_eq!(app.outbox_events(order, "payment_refunded").await, 2);

    let story = crate::admin::ok(&app, &["orders", "show", &id]).await;
    for needle in [
        "cold fries",
        "order never arrived complete",
        "refund (refund",
        "payment_refunded",
        "refunded",
    ] {
        assert!(story.text.contains(needle), "{needle} in:\n{}", story.text);
    }
    assert_eq!(story.json["refunds"].as_array().map(Vec::len), Some(2));
    assert_eq!(story.json["refunds"][0]["amount_cents"], 500);
    assert_eq!(story.json["refunds"][1]["amount_cents"], total - 500);
    assert_eq!(story.json["payment"]["status"], "refunded");
}

#[tokio::test]
async fn the_refund_route_is_for_operators_replays_a_repeated_key_and_refuses_too_much() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let (order, driver) = app.picked_up_order(&cast).await;
    let refund = |role: Role, subject: i64, key: Option<&str>, body: Value| {
        let app = &app;
        let key = key.map(str::to_owned);
        async move {
            let mut request = app
                .client
                .post(format!("{}/v1/orders/{order}/refunds", app.address))
                .bearer_auth(app.token(role, subject))
                .json(&body);
            if let Some(key) = key {
                request = request.header("x-idempotency-key", key);
            }
            let response = request.send().await.expect("sent");
            let status = response.status().as_u16();
            let replayed = response.headers().contains_key("idempotent-replayed");
            let body: Value = response.json().await.expect("json");
            (status, body, replayed)
        }
    };
    let ask = json!({ "amount_cents": 300, "reason": "missing drink" });
    // Not captured yet.
    let (status, body, _) = refund(Role::Operator, 1, Some("k1"), ask.clone()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("payment_not_captured"))
    );
    let _workers = app.spawn_workers();
    deliver(&app, order, driver).await;
    assert!(
        eventually(Duration::from_secs(30), || async {
            payment_status(&app, order).await.as_deref() == Some("captured")
        })
        .await
    );
    let total = total_of(&app, order).await;
    let (status, _, _) = refund(Role::Customer, cast.customer, Some("k1"), ask.clone()).await;
    assert_eq!(status, 403);
    let (status, body, _) = refund(Role::Operator, 1, None, ask.clone()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("missing_idempotency_key"))
    );
    let (status, body, _) = refund(
        Role::Operator,
        1,
        Some("k2"),
        json!({ "amount_cents": total + 1, "reason": "too much" }),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("refund_too_large"))
    );
    let (status, body, _) = refund(
        Role::Operator,
        1,
        Some("k3"),
        json!({ "amount_cents": 0, "reason": "x" }),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("invalid_amount"))
    );

    let (status, first, replayed) = refund(Role::Operator, 1, Some("k1"), ask.clone()).await;
    assert_eq!((status, replayed), (202, false));
    assert_eq!(first["amount_cents"], 300);
    let (status, again, replayed) = refund(Role::Operator, 1, Some("k1"), ask.clone()).await;
    assert_eq!((status, replayed), (202, true));
    assert_eq!(again["id"], first["id"]);
    let (status, body, _) = refund(
        Role::Operator,
        1,
        Some("k1"),
        json!({ "amount_cents": 301, "reason": "missing drink" }),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("idempotency_key_reused"))
    );
    assert!(
        eventually(Duration::from_secs(30), || async {
            payment_status(&app, order).await.as_deref() == Some("partially_refunded")
        })
        .await
    );
    let listed: Value = app
        .client
        .get(format!("{}/v1/orders/{order}/refunds", app.address))
        .bearer_auth(app.token(Role::Customer, cast.customer))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(listed["payment"]["refunded_cents"], 300);
    assert_eq!(listed["refunds"].as_array().map(Vec::len), Some(1));
    assert_eq!(listed["refunds"][0]["status"], "succeeded");
    // The ledger paid back once.
    let ledger: i64 =
        sqlx::query_scalar("SELECT refunded_cents FROM ledger_intents WHERE order_id = $1")
            .bind(order)
            .fetch_one(&app.db)
            .await
            .expect("ledger");
    assert_eq!(ledger, 300);
}

#[tokio::test]
async fn the_ledger_captures_once_however_often_the_job_runs() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let (order, driver) = app.picked_up_order(&cast).await;
    let _workers = app.spawn_workers();
    deliver(&app, order, driver).await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            payment_status(&app, order).await.as_deref() == Some("captured")
        })
        .await
    );
    let context = app.job_context(WorkerSettings::default());
    for _ in 0..3 {
        let again = payment::capture(&app.db, &context.payments, OrderId(order), 1)
            .await
            .expect("re-run");
        assert_eq!(again, PaymentResult::NothingToDo);
    }
    let (count, status, captured): (i64, String, i64) = sqlx::query_as(
        "SELECT count(*) OVER (), status, captured_cents FROM ledger_intents WHERE order_id = $1",
    )
    .bind(order)
    .fetch_one(&app.db)
    .await
    .expect("ledger");
    let total = total_of(&app, order).await;
    assert_eq!((count, status.as_str(), captured), (1, "succeeded", total));
    // An order that is not delivered is never charged.
    let other = app.placed_order(&cast).await;
    assert_eq!(
        payment::capture(&app.db, &context.payments, OrderId(other), 1)
            .await
            .expect("run"),
        PaymentResult::NothingToDo
    );
    assert_eq!(
        payment_status(&app, other).await.as_deref(),
        Some("authorized")
    );
}

/// A webhook receiver: records each request's headers and body; one path always fails.
#[derive(Clone, Default)]
struct Receiver {
    received: Arc<Mutex<Vec<(String, HeaderMap, Bytes)>>>,
}

async fn receive(
    State(receiver): State<Receiver>,
    Path(audience): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    receiver
        .received
        .lock()
        .expect("lock")
        .push((audience.clone(), headers, body));
    if audience == "driver" {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::NO_CONTENT
    }
}

#[tokio::test]
async fn webhooks_are_signed_and_a_failing_endpoint_blocks_nobody() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let receiver = Receiver::default();
    let router = axum::Router::new()
        .route("/hooks/{audience}", post(receive))
        .with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}/hooks", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, router).await });
    let secret = b"whsec_a-shared-secret-for-tests".to_vec();
    let _workers = app.spawn_workers_custom(WorkerSettings {
        webhooks: WebhookSettings {
            customer_url: Some(format!("{base}/customer")),
            driver_url: Some(format!("{base}/driver")),
            restaurant_url: None,
            secret: secret.clone().into(),
            max_attempts: 2,
            ..WorkerSettings::default().webhooks
        },
        ..WorkerSettings::default()
    });
    let (order, _driver) = app.picked_up_order(&cast).await;

    let delivered = |event: &'static str| {
        let app = &app;
        async move {
            sqlx::query_scalar::<_, String>(
                "SELECT outcome FROM notification_deliveries WHERE order_id = $1 AND event_type = $2 ORDER BY id",
            )
            .bind(order)
            .bind(event)
            .fetch_all(&app.db)
            .await
            .expect("deliveries")
        }
    };
    // The customer hears of confirmation and pickup although the driver endpoint fails.
    assert!(
        eventually(Duration::from_secs(20), || async {
            delivered("order_picked_up").await == ["delivered"]
                && delivered("order_confirmed").await == ["delivered"]
        })
        .await
    );
    // The driver's "ready" fails, is retried once, then given up.
    assert!(
        eventually(Duration::from_secs(20), || async {
            delivered("order_ready").await == ["retrying", "gave_up"]
        })
        .await,
        "{:?}",
        delivered("order_ready").await
    );

    let received = receiver.received.lock().expect("lock").clone();
    let ready: Vec<_> = received.iter().filter(|(a, _, _)| a == "driver").collect();
    assert_eq!(ready.len(), 2);
    let ids: Vec<&str> = ready
        .iter()
        .map(|(_, h, _)| h["courier-event-id"].to_str().expect("id"))
        .collect();
    assert_eq!(ids[0], ids[1], "a retry carries the same event id");
    for (audience, headers, body) in &received {
        // Recompute the signature as a receiver would.
        let header = headers["courier-signature"].to_str().expect("signature");
        let t: i64 = header
            .split(',')
            .find_map(|p| p.strip_prefix("t="))
            .and_then(|t| t.parse().ok())
            .expect("timestamp");
        assert_eq!(header, signature(&secret, t, body), "{audience}");
        assert!((Utc::now().timestamp() - t).abs() < 300);
        assert_ne!(header, signature(b"wrong-secret-wrong-secret", t, body));
        let json: Value = serde_json::from_slice(body).expect("json body");
        assert_eq!(json["order_id"], order);
        assert_eq!(json["recipient"]["type"], audience.as_str());
        assert_eq!(
            json["id"],
            headers["courier-event-id"].to_str().expect("id")
        );
    }
    let customer_events: Vec<String> = received
        .iter()
        .filter(|(a, _, _)| a == "customer")
        .map(|(_, _, b)| {
            serde_json::from_slice::<Value>(b).expect("json")["type"]
                .as_str()
                .expect("type")
                .to_owned()
        })
        .collect();
    assert!(customer_events.contains(&"order_confirmed".to_owned()));
    assert!(customer_events.contains(&"order_picked_up".to_owned()));
    let _ = Audience::Restaurant;
}

#[tokio::test]
async fn a_review_is_requested_once_and_not_for_a_cancelled_order() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let (order, driver) = app.picked_up_order(&cast).await;
    deliver(&app, order, driver).await;
    let context = app.job_context(WorkerSettings::default());
    for _ in 0..2 {
        request_review::run(
            RequestReview {
                order_id: OrderId(order),
            },
            apalis::prelude::Data::new(context.clone()),
        )
        .await
        .expect("runs");
    }
    assert_eq!(app.audit_rows(order, "review_requested").await, 1);
    let notified: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM apalis.jobs WHERE job_type = 'courier::notify'
           AND convert_from(job, 'UTF8')::jsonb ->> 'event_type' = 'review_requested'
           AND (convert_from(job, 'UTF8')::jsonb ->> 'order_id')::bigint = $1",
    )
    .bind(order)
    .fetch_one(&app.db)
    .await
    .expect("count");
    assert_eq!(notified, 1);

    let cancelled = app.placed_order(&cast).await;
    app.act(cancelled, "cancel", Role::Customer, cast.customer)
        .await;
    request_review::run(
        RequestReview {
            order_id: OrderId(cancelled),
        },
        apalis::prelude::Data::new(context),
    )
    .await
    .expect("runs");
    assert_eq!(app.audit_rows(cancelled, "review_requested").await, 0);
}
