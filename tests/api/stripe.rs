//! A local server that speaks Stripe's payment API as documented: form-encoded requests,
//! `Authorization: Bearer <secret key>`, an `Idempotency-Key` on every POST (the first
//! response to a key is replayed for that key, 2xx and 4xx alike), payment intents with
//! manual capture (`requires_capture` → `succeeded` | `canceled`), refunds against captured
//! intents, Stripe's test payment methods (`pm_card_chargeDeclined…` is declined with a 402
//! `card_error`), and Stripe's error shapes. It records every request for the tests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use courier::payments::PaymentSettings;
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::helpers::WorkerSettings;

pub const SECRET_KEY: &str = "sk_test_courier";

/// Which call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Authorize,
    Capture,
    Cancel,
    Refund,
}

/// How the server behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Ok,
    /// 503 for this many requests of `Op`, then as `Ok`.
    Unavailable(Op, usize),
    /// Performs the call of `Op`, signals the test, and never answers.
    HangAfter(Op),
}

/// One request as received.
#[derive(Clone, Debug)]
pub struct Request {
    pub op: Op,
    pub key: String,
    pub intent: Option<String>,
    pub form: HashMap<String, String>,
}

#[derive(Debug)]
struct Intent {
    amount: i64,
    status: &'static str,
    captured: i64,
    refunded: i64,
}

#[derive(Default)]
struct Books {
    mode: Option<Mode>,
    intents: HashMap<String, Intent>,
    replies: HashMap<String, (u16, Value)>,
    requests: Vec<Request>,
    refunds: usize,
}

/// The server's books, shared with the test.
#[derive(Clone)]
pub struct FakeStripe {
    books: Arc<Mutex<Books>>,
    /// Signalled when a `HangAfter` call was performed.
    pub performed: Arc<Notify>,
}

impl FakeStripe {
    fn books(&self) -> std::sync::MutexGuard<'_, Books> {
        self.books.lock().expect("lock")
    }

    pub fn set_mode(&self, mode: Mode) {
        self.books().mode = Some(mode);
    }

    /// The requests of `op`, in order.
    pub fn requests(&self, op: Op) -> Vec<Request> {
        self.books()
            .requests
            .iter()
            .filter(|r| r.op == op)
            .cloned()
            .collect()
    }

    /// How many payment intents exist.
    pub fn intents(&self) -> usize {
        self.books().intents.len()
    }

    /// The status of intent `id`.
    pub fn intent_status(&self, id: &str) -> Option<&'static str> {
        self.books().intents.get(id).map(|i| i.status)
    }

    /// How many refunds were made.
    pub fn refunds(&self) -> usize {
        self.books().refunds
    }
}

fn error(status: StatusCode, kind: &str, code: &str, message: &str, extra: Value) -> (u16, Value) {
    let mut error = json!({ "type": kind, "code": code, "message": message });
    if let (Value::Object(error), Value::Object(extra)) = (&mut error, extra) {
        error.extend(extra);
    }
    (status.as_u16(), json!({ "error": error }))
}

fn intent_json(id: &str, intent: &Intent) -> Value {
    json!({
        "id": id, "object": "payment_intent", "amount": intent.amount,
        "amount_received": intent.captured, "capture_method": "manual", "status": intent.status,
    })
}

/// Performs `op` on the books.
fn perform(
    books: &mut Books,
    op: Op,
    intent: Option<&str>,
    form: &HashMap<String, String>,
) -> (u16, Value) {
    let amount = |name: &str| form.get(name).and_then(|v| v.parse::<i64>().ok());
    match op {
        Op::Authorize => {
            let complete = form.get("confirm").map(String::as_str) == Some("true")
                && form.get("capture_method").map(String::as_str) == Some("manual")
                && form.contains_key("currency");
            let (Some(amount), Some(method), true) =
                (amount("amount"), form.get("payment_method"), complete)
            else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "parameter_missing",
                    "Missing required param.",
                    json!({}),
                );
            };
            if method.starts_with("pm_card_chargeDeclined") {
                let decline = if method.ends_with("InsufficientFunds") {
                    "insufficient_funds"
                } else {
                    "generic_decline"
                };
                return error(
                    StatusCode::PAYMENT_REQUIRED,
                    "card_error",
                    "card_declined",
                    "Your card was declined.",
                    json!({ "decline_code": decline }),
                );
            }
            let id = format!("pi_fake_{}", books.intents.len() + 1);
            let intent = Intent {
                amount,
                status: "requires_capture",
                captured: 0,
                refunded: 0,
            };
            let body = intent_json(&id, &intent);
            books.intents.insert(id, intent);
            (200, body)
        }
        Op::Capture | Op::Cancel => {
            let Some(id) = intent else {
                return error(
                    StatusCode::NOT_FOUND,
                    "invalid_request_error",
                    "resource_missing",
                    "No such payment_intent",
                    json!({}),
                );
            };
            let Some(found) = books.intents.get_mut(id) else {
                return error(
                    StatusCode::NOT_FOUND,
                    "invalid_request_error",
                    "resource_missing",
                    "No such payment_intent",
                    json!({}),
                );
            };
            if found.status != "requires_capture" {
                let body = intent_json(id, found);
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "payment_intent_unexpected_state",
                    &format!("This PaymentIntent's status is {}.", found.status),
                    json!({ "payment_intent": body }),
                );
            }
            if op == Op::Cancel {
                found.status = "canceled";
            } else {
                let take = amount("amount_to_capture").unwrap_or(found.amount);
                if take > found.amount {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request_error",
                        "amount_too_large",
                        "Amount to capture is too large.",
                        json!({}),
                    );
                }
                found.status = "succeeded";
                found.captured = take;
            }
            (200, intent_json(id, found))
        }
        Op::Refund => {
            let found = form
                .get("payment_intent")
                .and_then(|id| books.intents.get_mut(id));
            let Some(found) = found.filter(|i| i.status == "succeeded") else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "charge_not_captured",
                    "This PaymentIntent has no captured charge.",
                    json!({}),
                );
            };
            let take = amount("amount").unwrap_or(found.captured - found.refunded);
            if take <= 0 || found.refunded + take > found.captured {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "charge_already_refunded",
                    "The refund exceeds the charge.",
                    json!({}),
                );
            }
            found.refunded += take;
            books.refunds += 1;
            (
                200,
                json!({ "id": format!("re_fake_{}", books.refunds), "object": "refund", "amount": take, "status": "succeeded" }),
            )
        }
    }
}

async fn handle(
    fake: FakeStripe,
    op: Op,
    intent: Option<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if header("authorization") != Some(&format!("Bearer {SECRET_KEY}")) {
        let (status, body) = error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "api_key_invalid",
            "Invalid API Key provided.",
            json!({}),
        );
        return (
            StatusCode::from_u16(status).unwrap_or(StatusCode::UNAUTHORIZED),
            axum::Json(body),
        )
            .into_response();
    }
    if header("content-type") != Some("application/x-www-form-urlencoded") {
        return (StatusCode::BAD_REQUEST, "form-encoded bodies only").into_response();
    }
    let Some(key) = header("idempotency-key").map(str::to_owned) else {
        return (StatusCode::BAD_REQUEST, "no idempotency key").into_response();
    };
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let (status, reply, hang) = {
        let mut books = fake.books.lock().expect("lock");
        books.requests.push(Request {
            op,
            key: key.clone(),
            intent: intent.clone(),
            form: form.clone(),
        });
        if let Some((status, reply)) = books.replies.get(&key).cloned() {
            (status, reply, false)
        } else {
            let mode = books.mode.unwrap_or(Mode::Ok);
            if let Mode::Unavailable(failing, n) = mode
                && failing == op
                && n > 0
            {
                books.mode = Some(Mode::Unavailable(failing, n - 1));
                return (StatusCode::SERVICE_UNAVAILABLE, "try later").into_response();
            }
            let (status, reply) = perform(&mut books, op, intent.as_deref(), &form);
            books.replies.insert(key, (status, reply.clone()));
            (status, reply, mode == Mode::HangAfter(op))
        }
    };
    if hang {
        fake.performed.notify_one();
        std::future::pending::<()>().await;
    }
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
        axum::Json(reply),
    )
        .into_response()
}

/// Starts the server; returns its base URL and its books.
pub async fn spawn() -> (String, FakeStripe) {
    let fake = FakeStripe {
        books: Arc::default(),
        performed: Arc::new(Notify::new()),
    };
    let router = axum::Router::new()
        .route(
            "/v1/payment_intents",
            post(|State(f): State<FakeStripe>, h: HeaderMap, b: Bytes| {
                handle(f, Op::Authorize, None, h, b)
            }),
        )
        .route(
            "/v1/payment_intents/{id}/capture",
            post(
                |State(f): State<FakeStripe>, Path(id): Path<String>, h: HeaderMap, b: Bytes| {
                    handle(f, Op::Capture, Some(id), h, b)
                },
            ),
        )
        .route(
            "/v1/payment_intents/{id}/cancel",
            post(
                |State(f): State<FakeStripe>, Path(id): Path<String>, h: HeaderMap, b: Bytes| {
                    handle(f, Op::Cancel, Some(id), h, b)
                },
            ),
        )
        .route(
            "/v1/refunds",
            post(|State(f): State<FakeStripe>, h: HeaderMap, b: Bytes| {
                handle(f, Op::Refund, None, h, b)
            }),
        )
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, router).await });
    (url, fake)
}

/// Payment settings for the server at `url`: short timeouts, retries after 1 s then 2 s.
pub fn settings(url: &str) -> PaymentSettings {
    PaymentSettings {
        stripe: Some((url.to_owned(), SECRET_KEY.to_owned().into())),
        timeout: Duration::from_secs(2),
        ..WorkerSettings::default().payments
    }
}

/// Worker settings that pay through the server at `url`.
pub fn workers(url: &str) -> WorkerSettings {
    WorkerSettings {
        payments: settings(url),
        ..WorkerSettings::default()
    }
}

/// The environment of a `courier worker` process that pays through the server at `url`.
pub fn worker_env(url: &str) -> [(&'static str, String); 3] {
    [
        ("COURIER_PAYMENT_PROVIDER", "stripe".to_owned()),
        ("COURIER_STRIPE_API_URL", url.to_owned()),
        ("COURIER_STRIPE_SECRET_KEY", SECRET_KEY.to_owned()),
    ]
}
