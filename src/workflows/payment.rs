//! Capturing a delivered order's payment, exactly once (the `capture_payment` job): the
//! order's `payments` row, the provider's answer ([`crate::payments`]) and the outcome with its
//! effects — the next attempt after a backoff, or the `payment_*` event.
//!
//! 1. The order's `payments` row is created once (primary key on the order) with an
//!    idempotency key derived from the order (`courier-capture-<order id>`).
//! 2. A row that is no longer `pending` means the capture already ended: nothing is done.
//! 3. The provider is called with that idempotency key. If the worker dies after the call and
//!    before recording the outcome, the job re-runs, finds the row still `pending` and calls
//!    again with the same key: the provider answers with the first capture instead of
//!    charging twice.
//! 4. The outcome is recorded in one transaction with a `payment_attempts` row and its
//!    effects: captured; declined (permanent: no retry, `payment_declined` event); rejected
//!    (permanent, e.g. no payment intent: `payment_failed`); retryable (timeout, 5xx, 429: a
//!    new delayed task with capped exponential backoff, until the attempts run out, then
//!    `payment_failed` for operators).

use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;

use crate::domain::OrderId;
use crate::payments::{CaptureOutcome, CaptureRequest, PaymentProvider, Payments, retry_delay};
use crate::workflows::effects::{self, EffectError};
use crate::workflows::steps;

/// Why a capture run failed (the job retries it).
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("could not write the outcome's effects: {0}")]
    Effects(#[from] EffectError),
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
    order_id: OrderId,
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
    order_id: OrderId,
    attempt: u32,
    outcome: &CaptureOutcome,
) -> Result<CaptureResult, CaptureError> {
    let mut tx = crate::store::begin(db).await?;
    // The order's lock, as every writer of the order takes it: its events commit, and so
    // are published, in the order they were written (docs/events.md).
    sqlx::query("SELECT 1 FROM orders WHERE id = $1 FOR UPDATE")
        .bind(order_id)
        .execute(&mut *tx)
        .await?;
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
            let effects = steps::capture_retry(order_id, next, delay);
            effects::write(&mut tx, effects).await?;
            tx.commit().await?;
            tracing::warn!(order_id = order_id.get(), attempt, next, delay = ?delay, detail, "payment capture will be retried");
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
    let details = json!({
        "attempt": attempt,
        "provider": payments.provider.name(),
        "code": code,
        "message": message,
    });
    effects::write(&mut tx, steps::capture_ended(order_id, event, details)).await?;
    tx.commit().await?;
    if status == "captured" {
        tracing::info!(order_id = order_id.get(), attempt, "payment captured");
    } else {
        tracing::warn!(
            order_id = order_id.get(),
            attempt,
            status,
            code,
            "payment capture ended without a charge"
        );
    }
    Ok(result)
}
