//! Payment capture, webhooks and review requests: a local server speaking the Stripe-style
//! capture API (idempotency keys honoured as Stripe does) and a webhook receiver that checks
//! signatures; a worker killed right after the capture request; declines; 503s retried with
//! growing delays; a failing endpoint that blocks nobody.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chrono::{DateTime, Utc};
use courier::auth::Role;
use courier::domain::OrderId;
use courier::jobs::Job;
use courier::jobs::messages::CapturePayment;
use courier::jobs::messages::RequestReview;
use courier::notify::{Audience, WebhookSettings, signature};
use courier::payments::PaymentSettings;
use courier::workers::request_review;
use courier::workflows::payment::{self, CaptureResult};
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::helpers::{TestApp, WorkerProcess, WorkerSettings, cast, eventually, spawn_app};

const SECRET_KEY: &str = "sk_test_courier";

/// How the fake payment API answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Ok,
    Decline,
    /// 503 this many times, then OK.
    Unavailable(usize),
    /// Performs the capture, signals the test, and never answers.
    HangAfterCapture,
}

#[derive(Clone)]
struct FakeStripe {
    mode: Arc<Mutex<Mode>>,
    requests: Arc<AtomicUsize>,
    /// Idempotency key → the response of the capture it made.
    captures: Arc<Mutex<HashMap<String, Value>>>,
    captured: Arc<Notify>,
}

impl FakeStripe {
    fn captures(&self) -> usize {
        self.captures.lock().expect("lock").len()
    }
}

async fn capture(
    State(fake): State<FakeStripe>,
    Path(intent): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    fake.requests.fetch_add(1, Ordering::SeqCst);
    let authorised = headers.get("authorization").and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {SECRET_KEY}"));
    let form = headers.get("content-type").and_then(|v| v.to_str().ok())
        == Some("application/x-www-form-urlencoded");
    let Some(key) = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    else {
        return (StatusCode::BAD_REQUEST, "no idempotency key").into_response();
    };
    if !authorised || !form || !body.starts_with(b"amount_to_capture=") {
        return (StatusCode::UNAUTHORIZED, "bad request shape").into_response();
    }
    // Stripe replays the first response for a key it has seen.
    if let Some(first) = fake.captures.lock().expect("lock").get(&key).cloned() {
        return axum::Json(first).into_response();
    }
    let mode = *fake.mode.lock().expect("lock");
    match mode {
        Mode::Decline => (
            StatusCode::PAYMENT_REQUIRED,
            axum::Json(json!({"error": {"type": "card_error", "code": "card_declined",
                "decline_code": "insufficient_funds", "message": "Your card has insufficient funds."}})),
        )
            .into_response(),
        Mode::Unavailable(n) if n > 0 => {
            *fake.mode.lock().expect("lock") = Mode::Unavailable(n - 1);
            (StatusCode::SERVICE_UNAVAILABLE, "try later").into_response()
        }
        Mode::HangAfterCapture | Mode::Ok | Mode::Unavailable(_) => {
            let response = json!({"id": intent, "object": "payment_intent", "status": "succeeded"});
            fake.captures
                .lock()
                .expect("lock")
                .insert(key, response.clone());
            if mode == Mode::HangAfterCapture {
                fake.captured.notify_one();
                std::future::pending::<()>().await;
            }
            axum::Json(response).into_response()
        }
    }
}

async fn spawn_fake_stripe(mode: Mode) -> (String, FakeStripe) {
    let fake = FakeStripe {
        mode: Arc::new(Mutex::new(mode)),
        requests: Arc::default(),
        captures: Arc::default(),
        captured: Arc::new(Notify::new()),
    };
    let router = axum::Router::new()
        .route("/v1/payment_intents/{intent}/capture", post(capture))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, router).await });
    (url, fake)
}

fn stripe_workers(url: &str) -> WorkerSettings {
    WorkerSettings {
        payments: PaymentSettings {
            stripe: Some((url.to_owned(), SECRET_KEY.to_owned().into())),
            timeout: Duration::from_secs(2),
            ..WorkerSettings::default().payments
        },
        ..WorkerSettings::default()
    }
}

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

async fn attempts(app: &TestApp, order: i64) -> Vec<String> {
    sqlx::query_scalar("SELECT outcome FROM payment_attempts WHERE order_id = $1 ORDER BY id")
        .bind(order)
        .fetch_all(&app.db)
        .await
        .expect("attempts")
}

#[tokio::test]
async fn a_worker_killed_right_after_the_capture_request_never_charges_twice() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let (url, fake) = spawn_fake_stripe(Mode::HangAfterCapture).await;
    let (order, driver) = app.picked_up_order(&cast).await;
    let worker = WorkerProcess::start(
        &app,
        &[
            ("COURIER_PAYMENT_PROVIDER", "stripe"),
            ("COURIER_STRIPE_API_URL", &url),
            ("COURIER_STRIPE_SECRET_KEY", SECRET_KEY),
        ],
    );
    deliver(&app, order, driver).await;
    // The provider captured; the worker dies before it hears back.
    tokio::time::timeout(Duration::from_secs(60), fake.captured.notified())
        .await
        .expect("the worker called the provider");
    worker.kill();
    assert_eq!(
        payment_status(&app, order).await.as_deref(),
        Some("pending")
    );

    *fake.mode.lock().expect("lock") = Mode::Ok;
    let _rescuer = app.spawn_workers_custom(stripe_workers(&url));
    assert!(
        eventually(Duration::from_secs(90), || async {
            payment_status(&app, order).await.as_deref() == Some("captured")
        })
        .await,
        "the re-run did not record the capture"
    );
    assert_eq!(fake.captures(), 1, "one capture at the provider");
    assert_eq!(
        fake.requests.load(Ordering::SeqCst),
        2,
        "the re-run asked again"
    );
    assert_eq!(attempts(&app, order).await, vec!["captured"]);
    assert_eq!(app.outbox_events(order, "payment_captured").await, 1);
    let reference: Option<String> =
        sqlx::query_scalar("SELECT provider_reference FROM payments WHERE order_id = $1")
            .bind(order)
            .fetch_one(&app.db)
            .await
            .expect("reference");
    assert_eq!(reference, Some(format!("pi_test_{order}")));
}

#[tokio::test]
async fn a_declined_capture_is_recorded_and_not_retried() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let (url, fake) = spawn_fake_stripe(Mode::Decline).await;
    let (order, driver) = app.picked_up_order(&cast).await;
    let _workers = app.spawn_workers_custom(stripe_workers(&url));
    deliver(&app, order, driver).await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            payment_status(&app, order).await.as_deref() == Some("declined")
        })
        .await
    );
    let (code, message): (Option<String>, Option<String>) =
        sqlx::query_as("SELECT failure_code, failure_message FROM payments WHERE order_id = $1")
            .bind(order)
            .fetch_one(&app.db)
            .await
            .expect("payment");
    assert_eq!(code.as_deref(), Some("insufficient_funds"));
    assert!(message.is_some_and(|m| m.contains("insufficient funds")));
    assert_eq!(app.outbox_events(order, "payment_declined").await, 1);
    // Longer than the retry base: nothing more happens.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(fake.requests.load(Ordering::SeqCst), 1);
    assert_eq!(attempts(&app, order).await, vec!["declined"]);
    assert_eq!(app.jobs_for(CapturePayment::QUEUE, order).await, 1);
}

#[tokio::test]
async fn a_503_is_retried_with_growing_delays_then_succeeds() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let (url, fake) = spawn_fake_stripe(Mode::Unavailable(2)).await;
    let (order, driver) = app.picked_up_order(&cast).await;
    let _workers = app.spawn_workers_custom(stripe_workers(&url));
    deliver(&app, order, driver).await;
    assert!(
        eventually(Duration::from_secs(30), || async {
            payment_status(&app, order).await.as_deref() == Some("captured")
        })
        .await
    );
    assert_eq!(
        attempts(&app, order).await,
        vec!["retryable", "retryable", "captured"]
    );
    assert_eq!(fake.captures(), 1);
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
        "SELECT created_at FROM payment_attempts WHERE order_id = $1 ORDER BY id",
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
        assert_eq!(again, CaptureResult::NothingToDo);
    }
    let (count, amount): (i64, i64) = sqlx::query_as(
        "SELECT count(*), max(amount_cents) FROM ledger_captures WHERE order_id = $1",
    )
    .bind(order)
    .fetch_one(&app.db)
    .await
    .expect("ledger");
    let total: i64 = sqlx::query_scalar("SELECT total_cents FROM orders WHERE id = $1")
        .bind(order)
        .fetch_one(&app.db)
        .await
        .expect("total");
    assert_eq!((count, amount), (1, total));
    // An order that is not delivered is never charged.
    let other = app.placed_order(&cast).await;
    assert_eq!(
        payment::capture(&app.db, &context.payments, OrderId(other), 1)
            .await
            .expect("run"),
        CaptureResult::NothingToDo
    );
    assert_eq!(payment_status(&app, other).await, None);
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
