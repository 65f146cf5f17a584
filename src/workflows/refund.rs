//! Refunds and write-offs: what operators decide about a payment after the fact.
//!
//! A refund request ([`request`]) is one transaction under the order's lock: it checks the
//! payment was captured, claims the request's key (`(order, request key)` is unique, so a
//! repeated request replays the first one), checks the amount against what is left (the
//! captured amount less what was refunded and what is pending), inserts the refund, the
//! `refund_requested` event and the `refund_payment` job. The job ([`run`]) calls the provider
//! with `courier-refund-<refund id>`, so a re-run after a crash never pays back twice, and
//! records the answer with the payment's refunded total.
//!
//! A capture that failed for good leaves the order DELIVERED; an operator who has looked at it
//! writes it off ([`write_off`]), and the order can complete.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;

use crate::domain::{Actor, OrderId};
use crate::jobs::messages::RefundPayment;
use crate::payments::{IntentRequest, PaymentProvider, Payments};
use crate::workflows::effects::{self, EffectError};
use crate::workflows::payment::{self, Operation, PaymentError, PaymentResult, Verdict};
use crate::workflows::steps;

/// Longest refund reason or write-off note.
pub const MAX_REASON_CHARS: usize = 500;
/// Longest refund request key.
pub const MAX_KEY_LEN: usize = 255;

/// A refund an operator asks for.
#[derive(Clone, Debug)]
pub struct RefundAsk {
    pub order_id: OrderId,
    /// `None`: all that is left.
    pub amount_cents: Option<i64>,
    pub reason: String,
    pub actor: Actor,
    /// The request's key: the same key again replays the first request.
    pub request_key: String,
}

/// A refund, as operators see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct RefundView {
    pub id: i64,
    pub order_id: i64,
    pub amount_cents: i64,
    pub reason: String,
    pub status: String,
    pub requested_by: Option<i64>,
    pub provider_reference: Option<String>,
    pub failure_code: Option<String>,
    pub failure_message: Option<String>,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const REFUND_SELECT: &str = "SELECT id, order_id, amount_cents, reason, status, requested_by,
        provider_reference, failure_code, failure_message, attempts, created_at, updated_at
    FROM payment_refunds";

/// Why a refund was not requested. Nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum RefundError {
    #[error("order {0} has no payment")]
    NoPayment(OrderId),
    #[error("the order's payment is {0}; only a captured payment can be refunded")]
    NotCaptured(String),
    #[error(
        "nothing is left to refund: the capture is refunded in full or its refunds are pending"
    )]
    NothingLeft,
    #[error("{remaining} cents are left to refund")]
    TooLarge { remaining: i64 },
    #[error("a refund amount is a positive number of cents")]
    InvalidAmount,
    #[error("this request key was used for a different refund")]
    KeyReused,
    #[error("could not write the refund's effects: {0}")]
    Effects(#[from] EffectError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// The refunds of `order_id`, oldest first.
pub async fn list(db: &PgPool, order_id: OrderId) -> Result<Vec<RefundView>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{REFUND_SELECT} WHERE order_id = $1 ORDER BY id"
    )))
    .bind(order_id)
    .fetch_all(db)
    .await
}

/// Asks for a refund (see the module docs); returns it and whether it was replayed.
pub async fn request(db: &PgPool, ask: &RefundAsk) -> Result<(RefundView, bool), RefundError> {
    if ask.amount_cents.is_some_and(|a| a <= 0) {
        return Err(RefundError::InvalidAmount);
    }
    let mut tx = crate::store::begin(db).await?;
    let payment: Option<(String, i64, i64)> = sqlx::query_as(
        "SELECT p.status, p.amount_cents, p.refunded_cents
         FROM orders o JOIN payments p ON p.order_id = o.id WHERE o.id = $1 FOR UPDATE",
    )
    .bind(ask.order_id)
    .fetch_optional(&mut *tx)
    .await?;
    let (status, captured, refunded) = payment.ok_or(RefundError::NoPayment(ask.order_id))?;
    let earlier: Option<RefundView> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{REFUND_SELECT} WHERE order_id = $1 AND request_key = $2"
    )))
    .bind(ask.order_id)
    .bind(&ask.request_key)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(earlier) = earlier {
        let same = ask.amount_cents.is_none_or(|a| a == earlier.amount_cents)
            && ask.reason == earlier.reason;
        return if same {
            Ok((earlier, true))
        } else {
            Err(RefundError::KeyReused)
        };
    }
    if !matches!(
        status.as_str(),
        "captured" | "partially_refunded" | "refunded"
    ) {
        return Err(RefundError::NotCaptured(status));
    }
    let pending: i64 = sqlx::query_scalar(
        "SELECT COALESCE(sum(amount_cents), 0)::bigint FROM payment_refunds
         WHERE order_id = $1 AND status = 'pending'",
    )
    .bind(ask.order_id)
    .fetch_one(&mut *tx)
    .await?;
    let remaining = captured - refunded - pending;
    if remaining <= 0 {
        return Err(RefundError::NothingLeft);
    }
    let amount = ask.amount_cents.unwrap_or(remaining);
    if amount > remaining {
        return Err(RefundError::TooLarge { remaining });
    }
    let refund: RefundView = sqlx::query_as(
        "INSERT INTO payment_refunds (order_id, request_key, amount_cents, reason, requested_by)
         VALUES ($1, $2, $3, $4, $5)
         RETURNING id, order_id, amount_cents, reason, status, requested_by, provider_reference,
                   failure_code, failure_message, attempts, created_at, updated_at",
    )
    .bind(ask.order_id)
    .bind(&ask.request_key)
    .bind(amount)
    .bind(&ask.reason)
    .bind(ask.actor.id())
    .fetch_one(&mut *tx)
    .await?;
    let details = json!({
        "refund_id": refund.id,
        "amount_cents": amount,
        "reason": ask.reason,
        "left_after_cents": remaining - amount,
    });
    effects::write(
        &mut tx,
        vec![
            steps::payment_event(ask.order_id, "refund_requested", ask.actor, details),
            crate::workflows::effects::Effect::job(
                RefundPayment {
                    refund_id: refund.id,
                    order_id: ask.order_id,
                    attempt: 1,
                },
                std::time::Duration::ZERO,
            ),
        ],
    )
    .await?;
    tx.commit().await?;
    tracing::info!(
        order_id = ask.order_id.get(),
        refund_id = refund.id,
        amount_cents = amount,
        actor = ask.actor.kind(),
        "refund requested"
    );
    Ok((refund, false))
}

#[derive(sqlx::FromRow)]
struct DueRefund {
    status: String,
    amount_cents: i64,
    intent_id: Option<String>,
    customer_id: i64,
}

/// Attempt `attempt` of paying back refund `refund_id` of `order_id`.
pub async fn run(
    db: &PgPool,
    payments: &Payments,
    refund_id: i64,
    order_id: OrderId,
    attempt: u32,
) -> Result<PaymentResult, PaymentError> {
    let due: Option<DueRefund> = sqlx::query_as(
        "SELECT r.status, r.amount_cents, p.intent_id, o.customer_id
         FROM payment_refunds r JOIN payments p ON p.order_id = r.order_id
         JOIN orders o ON o.id = r.order_id
         WHERE r.id = $1 AND r.order_id = $2",
    )
    .bind(refund_id)
    .bind(order_id)
    .fetch_optional(db)
    .await?;
    let Some(due) = due.filter(|d| d.status == "pending") else {
        return Ok(PaymentResult::NothingToDo);
    };
    sqlx::query(
        "UPDATE payment_refunds SET attempts = attempts + 1, updated_at = now() WHERE id = $1",
    )
    .bind(refund_id)
    .execute(db)
    .await?;
    let request = IntentRequest {
        order_id,
        idempotency_key: format!("courier-refund-{refund_id}"),
        intent_id: due.intent_id,
        amount_cents: due.amount_cents,
    };
    let outcome = payments.provider.refund(&request).await;

    let mut tx = crate::store::begin(db).await?;
    sqlx::query("SELECT 1 FROM orders WHERE id = $1 FOR UPDATE")
        .bind(order_id)
        .execute(&mut *tx)
        .await?;
    let still: Option<String> =
        sqlx::query_scalar("SELECT status FROM payment_refunds WHERE id = $1 FOR UPDATE")
            .bind(refund_id)
            .fetch_optional(&mut *tx)
            .await?;
    if still.as_deref() != Some("pending") {
        return Ok(PaymentResult::NothingToDo);
    }
    payment::record_attempt(
        &mut tx,
        order_id,
        Operation::Refund,
        Some(refund_id),
        attempt,
        &outcome,
    )
    .await?;
    let status = match payment::verdict(&outcome, attempt, payments.settings.max_attempts) {
        Verdict::Succeeded(reference) => {
            sqlx::query(
                "UPDATE payment_refunds SET status = 'succeeded', provider_reference = $2,
                        updated_at = now() WHERE id = $1",
            )
            .bind(refund_id)
            .bind(reference)
            .execute(&mut *tx)
            .await?;
            let refunded: i64 = sqlx::query_scalar(
                "UPDATE payments SET refunded_cents = refunded_cents + $2, updated_at = now(),
                        status = CASE WHEN refunded_cents + $2 >= amount_cents THEN 'refunded'
                                      ELSE 'partially_refunded' END
                 WHERE order_id = $1 RETURNING refunded_cents",
            )
            .bind(order_id)
            .bind(due.amount_cents)
            .fetch_one(&mut *tx)
            .await?;
            let details = json!({
                "refund_id": refund_id,
                "amount_cents": due.amount_cents,
                "refunded_cents": refunded,
                "attempt": attempt,
                "provider": payments.provider.name(),
            });
            effects::write(&mut tx, steps::refunded(order_id, due.customer_id, details)).await?;
            "succeeded"
        }
        Verdict::Ended { code, message, .. } => {
            sqlx::query(
                "UPDATE payment_refunds SET status = 'failed', failure_code = $2,
                        failure_message = $3, updated_at = now() WHERE id = $1",
            )
            .bind(refund_id)
            .bind(code)
            .bind(message)
            .execute(&mut *tx)
            .await?;
            let details = json!({
                "refund_id": refund_id,
                "amount_cents": due.amount_cents,
                "code": code,
                "message": message,
            });
            effects::write(
                &mut tx,
                vec![steps::payment_event(
                    order_id,
                    "refund_failed",
                    Actor::System,
                    details,
                )],
            )
            .await?;
            "failed"
        }
        Verdict::Retry => {
            return payment::retry(
                tx,
                payments,
                order_id,
                attempt,
                |next| RefundPayment {
                    refund_id,
                    order_id,
                    attempt: next,
                },
                &outcome,
            )
            .await;
        }
    };
    tx.commit().await?;
    tracing::info!(
        order_id = order_id.get(),
        refund_id,
        attempt,
        status,
        "refund ended"
    );
    Ok(PaymentResult::Ended(if status == "succeeded" {
        "refunded"
    } else {
        "refund_failed"
    }))
}

/// Why a write-off was refused. Nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum WriteOffError {
    #[error("order {0} has no payment")]
    NoPayment(OrderId),
    #[error("the order's payment is {0}; only a capture that failed can be written off")]
    NotFailed(String),
    #[error("could not write the write-off's effects: {0}")]
    Effects(#[from] EffectError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// An operator has seen a capture that failed for good and writes it off: the payment counts
/// as settled and the delivered order may complete.
pub async fn write_off(
    db: &PgPool,
    order_id: OrderId,
    operator: Actor,
    reason: &str,
) -> Result<(), WriteOffError> {
    let mut tx = crate::store::begin(db).await?;
    let status: Option<String> = sqlx::query_scalar(
        "SELECT p.status FROM orders o JOIN payments p ON p.order_id = o.id
         WHERE o.id = $1 FOR UPDATE",
    )
    .bind(order_id)
    .fetch_optional(&mut *tx)
    .await?;
    let status = status.ok_or(WriteOffError::NoPayment(order_id))?;
    if !matches!(status.as_str(), "capture_declined" | "capture_failed") {
        return Err(WriteOffError::NotFailed(status));
    }
    sqlx::query(
        "UPDATE payments SET status = 'written_off', written_off_at = now(), written_off_by = $2,
                write_off_reason = $3, updated_at = now() WHERE order_id = $1",
    )
    .bind(order_id)
    .bind(operator.id())
    .bind(reason)
    .execute(&mut *tx)
    .await?;
    let details = json!({ "was": status, "reason": reason });
    effects::write(
        &mut tx,
        vec![steps::payment_event(
            order_id,
            "payment_written_off",
            operator,
            details,
        )],
    )
    .await?;
    tx.commit().await?;
    tracing::warn!(
        order_id = order_id.get(),
        was = status,
        "payment written off"
    );
    Ok(())
}
