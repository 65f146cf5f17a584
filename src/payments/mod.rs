//! Payment capture on delivery, exactly once.
//!
//! A [`PaymentProvider`] captures an order's payment: the Stripe-style HTTP client
//! ([`stripe`]) in production, the Postgres [`ledger`] in development. [`capture`] is the body
//! of the `capture_payment` job:
//!
//! 1. The order's `payments` row is created once (primary key on the order) with an
//!    idempotency key derived from the order (`courier-capture-<order id>`).
//! 2. A row that is no longer `pending` means the capture already ended: nothing is done.
//! 3. The provider is called with that idempotency key. If the worker dies after the call and
//!    before recording the outcome, the job re-runs, finds the row still `pending` and calls
//!    again with the same key: the provider answers with the first capture instead of
//!    charging twice.
//! 4. The outcome is recorded in one transaction with a `payment_attempts` row and an order
//!    event: captured; declined (permanent: no retry, `payment_declined` event); rejected
//!    (permanent, e.g. no payment intent: `payment_failed`); retryable (timeout, 5xx, 429: a
//!    new delayed task with capped exponential backoff, until the attempts run out, then
//!    `payment_failed` for operators).

pub mod ledger;
pub mod stripe;

use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;

use crate::jobs::capture_payment::CapturePayment;
use crate::jobs::{self, EnqueueError};
use crate::payments::ledger::LedgerProvider;
use crate::payments::stripe::StripeClient;
use crate::workflows::events::{OrderEvent, record};
use crate::workflows::machine::Actor;

/// A capture to make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureRequest {
    pub order_id: i64,
    pub idempotency_key: String,
    pub amount_cents: i64,
    pub currency: String,
    pub payment_intent_id: Option<String>,
}

/// What the provider said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaptureOutcome {
    /// Captured (now or by an earlier request with the same key).
    Captured { reference: String },
    /// The payment method was declined: permanent.
    Declined { code: String, message: String },
    /// The request can never succeed as it is (no intent, wrong state): permanent.
    Rejected { code: String, message: String },
    /// Try again later.
    Retryable {
        http_status: Option<u16>,
        detail: String,
    },
}

/// Something that captures payments.
pub trait PaymentProvider: Send + Sync {
    /// Captures `request`; the same idempotency key must never capture twice.
    fn capture(&self, request: &CaptureRequest) -> impl Future<Output = CaptureOutcome> + Send;
}

impl PaymentProvider for StripeClient {
    async fn capture(&self, request: &CaptureRequest) -> CaptureOutcome {
        StripeClient::capture(self, request).await
    }
}

impl PaymentProvider for LedgerProvider {
    async fn capture(&self, request: &CaptureRequest) -> CaptureOutcome {
        LedgerProvider::capture(self, request).await
    }
}

/// The configured provider.
#[derive(Clone, Debug)]
pub enum Provider {
    Ledger(LedgerProvider),
    Stripe(StripeClient),
}

impl Provider {
    fn name(&self) -> &'static str {
        match self {
            Provider::Ledger(_) => "ledger",
            Provider::Stripe(_) => "stripe",
        }
    }
}

impl PaymentProvider for Provider {
    async fn capture(&self, request: &CaptureRequest) -> CaptureOutcome {
        match self {
            Provider::Ledger(p) => p.capture(request).await,
            Provider::Stripe(p) => p.capture(request).await,
        }
    }
}

/// Which provider, and how to retry.
#[derive(Clone, Debug, PartialEq)]
pub struct PaymentSettings {
    /// `None` uses the ledger; `Some((base URL, secret key))` the Stripe-style API.
    pub stripe: Option<(String, String)>,
    pub timeout: Duration,
    /// Delay before the second attempt; doubles per attempt.
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// Attempts before the capture is given up and flagged.
    pub max_attempts: u32,
}

impl Default for PaymentSettings {
    fn default() -> Self {
        Self {
            stripe: None,
            timeout: Duration::from_secs(10),
            retry_base: Duration::from_secs(10),
            retry_cap: Duration::from_secs(600),
            max_attempts: 8,
        }
    }
}

/// Delay before attempt `attempt + 1`: `base × 2^(attempt−1)`, at most `cap`.
pub fn retry_delay(settings: &PaymentSettings, attempt: u32) -> Duration {
    jobs::backoff(settings.retry_base, settings.retry_cap, attempt)
}

/// Payments: the provider and the settings. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Payments {
    pub provider: Provider,
    pub settings: PaymentSettings,
}

impl Payments {
    /// The configured provider on `db`.
    pub fn new(db: PgPool, settings: PaymentSettings) -> reqwest::Result<Self> {
        let provider = match &settings.stripe {
            Some((base, key)) => Provider::Stripe(StripeClient::new(base, key, settings.timeout)?),
            None => Provider::Ledger(LedgerProvider::new(db)),
        };
        Ok(Self { provider, settings })
    }
}

/// Why a capture run failed (the job retries it).
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("could not enqueue the next attempt: {0}")]
    Enqueue(#[from] EnqueueError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// What a run did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaptureResult {
    /// The order is not delivered, or the capture already ended.
    NothingToDo,
    Captured,
    Declined,
    Failed,
    /// Attempt `next` is scheduled after `delay`.
    Retrying {
        next: u32,
        delay: Duration,
    },
}

#[derive(Debug, sqlx::FromRow)]
struct PaymentRow {
    status: String,
    idempotency_key: String,
    amount_cents: i64,
    currency: String,
    payment_intent_id: Option<String>,
}

/// Attempt `attempt` of capturing `order_id`'s payment (see the module docs).
pub async fn capture(
    db: &PgPool,
    payments: &Payments,
    order_id: i64,
    attempt: u32,
) -> Result<CaptureResult, CaptureError> {
    sqlx::query(
        "INSERT INTO payments (order_id, provider, idempotency_key, amount_cents, currency)
         SELECT id, $2, 'courier-capture-' || id, total_cents, currency
         FROM orders WHERE id = $1 AND status IN ('DELIVERED', 'COMPLETED')
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(order_id)
    .bind(payments.provider.name())
    .execute(db)
    .await?;
    let row: Option<PaymentRow> = sqlx::query_as(
        "SELECT p.status, p.idempotency_key, p.amount_cents, p.currency, o.payment_intent_id
         FROM payments p JOIN orders o ON o.id = p.order_id WHERE p.order_id = $1",
    )
    .bind(order_id)
    .fetch_optional(db)
    .await?;
    let Some(row) = row.filter(|r| r.status == "pending") else {
        return Ok(CaptureResult::NothingToDo);
    };
    sqlx::query(
        "UPDATE payments SET attempts = attempts + 1, updated_at = now() WHERE order_id = $1",
    )
    .bind(order_id)
    .execute(db)
    .await?;
    let request = CaptureRequest {
        order_id,
        idempotency_key: row.idempotency_key,
        amount_cents: row.amount_cents,
        currency: row.currency,
        payment_intent_id: row.payment_intent_id,
    };
    let outcome = payments.provider.capture(&request).await;
    record_outcome(db, payments, order_id, attempt, &outcome).await
}

async fn record_outcome(
    db: &PgPool,
    payments: &Payments,
    order_id: i64,
    attempt: u32,
    outcome: &CaptureOutcome,
) -> Result<CaptureResult, CaptureError> {
    let mut tx = crate::store::begin(db).await?;
    let (label, http_status, detail) = match outcome {
        CaptureOutcome::Captured { reference } => ("captured", None, reference.clone()),
        CaptureOutcome::Declined { code, message } => {
            ("declined", Some(402), format!("{code}: {message}"))
        }
        CaptureOutcome::Rejected { code, message } => {
            ("rejected", None, format!("{code}: {message}"))
        }
        CaptureOutcome::Retryable {
            http_status,
            detail,
        } => ("retryable", *http_status, detail.clone()),
    };
    sqlx::query(
        "INSERT INTO payment_attempts (order_id, attempt, outcome, http_status, detail)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(order_id)
    .bind(i32::try_from(attempt).unwrap_or(i32::MAX))
    .bind(label)
    .bind(http_status.map(|s| i16::try_from(s).unwrap_or(i16::MAX)))
    .bind(&detail)
    .execute(&mut *tx)
    .await?;
    metrics::counter!("payment_capture_attempts_total", "outcome" => label).increment(1);
    let give_up = attempt >= payments.settings.max_attempts;
    let (status, code, message, event, result) = match outcome {
        CaptureOutcome::Captured { .. } => (
            "captured",
            None,
            None,
            "payment_captured",
            CaptureResult::Captured,
        ),
        CaptureOutcome::Declined { code, message } => (
            "declined",
            Some(code.as_str()),
            Some(message.as_str()),
            "payment_declined",
            CaptureResult::Declined,
        ),
        CaptureOutcome::Rejected { code, message } => (
            "failed",
            Some(code.as_str()),
            Some(message.as_str()),
            "payment_failed",
            CaptureResult::Failed,
        ),
        CaptureOutcome::Retryable { detail, .. } if give_up => (
            "failed",
            Some("retries_exhausted"),
            Some(detail.as_str()),
            "payment_failed",
            CaptureResult::Failed,
        ),
        CaptureOutcome::Retryable { .. } => {
            let next = attempt + 1;
            let delay = retry_delay(&payments.settings, attempt);
            jobs::enqueue(
                &mut tx,
                &CapturePayment {
                    order_id,
                    attempt: next,
                },
                delay,
            )
            .await?;
            tx.commit().await?;
            tracing::warn!(order_id, attempt, next, delay = ?delay, detail, "payment capture will be retried");
            return Ok(CaptureResult::Retrying { next, delay });
        }
    };
    let updated = sqlx::query(
        "UPDATE payments SET status = $2, provider_reference = $3, failure_code = $4,
                failure_message = $5, updated_at = now(),
                captured_at = CASE WHEN $2 = 'captured' THEN now() END
         WHERE order_id = $1 AND status = 'pending'",
    )
    .bind(order_id)
    .bind(status)
    .bind(matches!(outcome, CaptureOutcome::Captured { .. }).then_some(detail.as_str()))
    .bind(code)
    .bind(message)
    .execute(&mut *tx)
    .await?;
    if updated.rows_affected() == 0 {
        // A concurrent run recorded the end first.
        return Ok(CaptureResult::NothingToDo);
    }
    record(
        &mut tx,
        &OrderEvent {
            order_id,
            topic: "payments",
            event_type: event,
            actor: Actor::System,
            details: json!({
                "attempt": attempt,
                "provider": payments.provider.name(),
                "code": code,
                "message": message,
            }),
            publish: true,
        },
    )
    .await?;
    tx.commit().await?;
    if status == "captured" {
        tracing::info!(order_id, attempt, "payment captured");
    } else {
        tracing::warn!(
            order_id,
            attempt,
            status,
            code,
            "payment capture ended without a charge"
        );
    }
    Ok(result)
}
