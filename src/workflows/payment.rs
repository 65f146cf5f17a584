//! The order's payment, from authorisation to release (docs/payments.md): the
//! `authorize_payment`, `capture_payment` and `release_payment` jobs, and the expiry of old
//! authorisations. Refunds are [`crate::workflows::refund`].
//!
//! The `payments` row is created with the order (status `authorizing`), with one idempotency
//! key per operation derived from the order (`courier-authorize-<id>`, `courier-capture-<id>`,
//! `courier-release-<id>`). Every job run follows the same three steps:
//!
//! 1. Read the row; if the operation is no longer due (the status moved on, the order is not
//!    in a state that wants it), do nothing.
//! 2. Count the call and call the provider with the operation's key. A worker that dies after
//!    the call re-runs the job, finds the row unchanged and calls again with the same key:
//!    the provider answers with the first result instead of moving money twice.
//! 3. Record the answer in one transaction, under the order's lock, with a `payment_attempts`
//!    row and its effects: the order's transition (authorised → PLACED; declined → CANCELLED
//!    `payment_declined`), the `payment_*` event, or the next attempt after a capped
//!    exponential backoff. Attempts that run out count as a permanent failure.
//!
//! | status | means | next |
//! |---|---|---|
//! | `authorizing` | the order is PAYMENT_PENDING | `authorized`, `authorization_declined`, `authorization_failed`, `released` (cancelled before any request) |
//! | `authorized` | money held | `captured` on delivery, `released` on cancellation |
//! | `captured` | money taken | `partially_refunded`, `refunded` |
//! | `capture_declined`, `capture_failed` | delivered unpaid: an operator looks | `written_off` |

use std::time::Duration;

use serde_json::json;
use sqlx::{PgConnection, PgPool};

use crate::domain::{Action, Actor, OrderId, OrderStatus};
use crate::jobs::Job;
use crate::jobs::messages::{AuthorizePayment, CapturePayment, ReleasePayment};
use crate::location::LocationService;
use crate::payments::{AuthorizeRequest, IntentRequest, Outcome, PaymentProvider, Payments};
use crate::workflows::RequestMeta;
use crate::workflows::effects::{self, AfterCommit, EffectError};
use crate::workflows::steps;
use crate::workflows::transition::{self, TransitionError, TransitionRequest};

/// The cancellation reason of an order whose card was declined (or needs the customer).
pub const DECLINED_REASON: &str = "payment_declined";
/// The cancellation reason of an order whose authorisation failed for good.
pub const FAILED_REASON: &str = "payment_failed";
/// The cancellation reason of an order not delivered while its authorisation held.
pub const EXPIRED_REASON: &str = "authorization_expired";

/// Why a payment run failed (the job retries it).
#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    #[error("could not write the outcome's effects: {0}")]
    Effects(#[from] EffectError),
    #[error("could not move the order: {0}")]
    Transition(#[from] TransitionError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// What a run did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PaymentResult {
    /// The operation was not due, or already ended.
    NothingToDo,
    /// The payment's new status (`authorized`, `captured`, `capture_failed`, …).
    Ended(&'static str),
    /// Attempt `next` is scheduled after `delay`.
    Retrying { next: u32, delay: Duration },
}

/// A provider operation on an order's payment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Authorize,
    Capture,
    Release,
    Refund,
}

impl Operation {
    /// The name stored in `payment_attempts.operation`.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Authorize => "authorize",
            Operation::Capture => "capture",
            Operation::Release => "release",
            Operation::Refund => "refund",
        }
    }
}

/// What an answer means once the attempts are counted (pure).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict<'a> {
    Succeeded(&'a str),
    /// Declined by the provider (`declined`) or failed for good: `(code, message)`.
    Ended {
        declined: bool,
        code: &'a str,
        message: &'a str,
    },
    Retry,
}

/// Whether `outcome` of attempt `attempt` (of at most `max_attempts`) ends the operation.
pub fn verdict(outcome: &Outcome, attempt: u32, max_attempts: u32) -> Verdict<'_> {
    match outcome {
        Outcome::Succeeded { reference } => Verdict::Succeeded(reference),
        Outcome::Declined { code, message } => Verdict::Ended {
            declined: true,
            code,
            message,
        },
        Outcome::Rejected { code, message } => Verdict::Ended {
            declined: false,
            code,
            message,
        },
        Outcome::Retryable { detail, .. } if attempt >= max_attempts => Verdict::Ended {
            declined: false,
            code: "retries_exhausted",
            message: detail,
        },
        Outcome::Retryable { .. } => Verdict::Retry,
    }
}

#[derive(Debug, sqlx::FromRow)]
struct PaymentRow {
    status: String,
    order_status: String,
    customer_id: i64,
    payment_method: Option<String>,
    intent_id: Option<String>,
    authorize_key: Option<String>,
    capture_key: String,
    amount_cents: i64,
    currency: String,
    attempts: i32,
}

async fn load(db: &PgPool, order_id: OrderId) -> Result<Option<PaymentRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT p.status, o.status AS order_status, o.customer_id, p.payment_method, p.intent_id,
                p.authorize_key, p.capture_key, p.amount_cents, p.currency::text AS currency,
                p.attempts
         FROM payments p JOIN orders o ON o.id = p.order_id WHERE p.order_id = $1",
    )
    .bind(order_id)
    .fetch_optional(db)
    .await
}

/// Counts a call to `provider`, committed before the call is made.
async fn count_call(db: &PgPool, order_id: OrderId, provider: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE payments SET attempts = attempts + 1, provider = $2, updated_at = now()
         WHERE order_id = $1",
    )
    .bind(order_id)
    .bind(provider)
    .execute(db)
    .await?;
    Ok(())
}

/// Locks the order (every writer of an order takes its lock first: its events commit in the
/// order they were written) and returns its status and its payment's, if the payment is still
/// `expected`.
async fn lock(
    conn: &mut PgConnection,
    order_id: OrderId,
    expected: &str,
) -> Result<Option<OrderStatus>, sqlx::Error> {
    let row: Option<(String, String)> = sqlx::query_as(
        "SELECT o.status, p.status FROM orders o JOIN payments p ON p.order_id = o.id
         WHERE o.id = $1 FOR UPDATE",
    )
    .bind(order_id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row
        .filter(|(_, payment)| payment == expected)
        .and_then(|(order, _)| order.parse().ok()))
}

/// Writes the `payment_attempts` row of one provider call, and counts it.
pub(crate) async fn record_attempt(
    conn: &mut PgConnection,
    order_id: OrderId,
    operation: Operation,
    refund_id: Option<i64>,
    attempt: u32,
    outcome: &Outcome,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO payment_attempts (order_id, operation, refund_id, attempt, outcome, http_status, detail)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(order_id)
    .bind(operation.as_str())
    .bind(refund_id)
    .bind(i32::try_from(attempt).unwrap_or(i32::MAX))
    .bind(outcome.label())
    .bind(outcome.http_status().map(|s| i16::try_from(s).unwrap_or(i16::MAX)))
    .bind(outcome.detail())
    .execute(conn)
    .await?;
    metrics::counter!(
        "payment_attempts_total",
        "operation" => operation.as_str(),
        "outcome" => outcome.label()
    )
    .increment(1);
    Ok(())
}

/// The `details` of a payment event: which call, and how it ended (`failure`: code, message).
fn call_details(
    payments: &Payments,
    operation: Operation,
    attempt: u32,
    amount_cents: i64,
    failure: Option<(&str, &str)>,
) -> serde_json::Value {
    json!({
        "operation": operation.as_str(),
        "attempt": attempt,
        "provider": payments.provider.name(),
        "amount_cents": amount_cents,
        "code": failure.map(|f| f.0),
        "message": failure.map(|f| f.1),
    })
}

/// Sets the payment's end status (and the failure, if any) of an operation.
async fn end(
    conn: &mut PgConnection,
    order_id: OrderId,
    status: &str,
    failure: Option<(&str, &str)>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE payments SET status = $2, failure_code = $3, failure_message = $4, updated_at = now(),
                captured_at = CASE WHEN $2 = 'captured' THEN now() ELSE captured_at END,
                released_at = CASE WHEN $2 = 'released' THEN now() ELSE released_at END
         WHERE order_id = $1",
    )
    .bind(order_id)
    .bind(status)
    .bind(failure.map(|f| f.0))
    .bind(failure.map(|f| f.1))
    .execute(conn)
    .await?;
    Ok(())
}

fn system_request(
    order_id: OrderId,
    action: Action,
    reason: Option<&str>,
    only_from: Option<OrderStatus>,
) -> TransitionRequest {
    TransitionRequest {
        order_id,
        action,
        actor: Actor::System,
        meta: RequestMeta::default(),
        reason: reason.map(str::to_owned),
        expected_version: None,
        only_from,
        prep_minutes: None,
    }
}

/// Commits `tx` and runs what waits for the commit.
async fn commit(
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    after: AfterCommit,
    db: &PgPool,
    location: &LocationService,
) -> Result<(), sqlx::Error> {
    tx.commit().await?;
    after.run(db, location).await;
    Ok(())
}

/// Attempt `attempt` of authorising `order_id`'s payment. Authorised: the order is placed
/// with its restaurant, which has `confirm_within` to confirm. Declined (or needing the
/// customer's action) or failed for good: the order is cancelled and the customer told. If
/// the customer cancelled meanwhile, a hold that was made is released.
pub async fn authorize(
    db: &PgPool,
    location: &LocationService,
    payments: &Payments,
    confirm_within: Duration,
    order_id: OrderId,
    attempt: u32,
) -> Result<PaymentResult, PaymentError> {
    let Some(row) = load(db, order_id)
        .await?
        .filter(|r| r.status == "authorizing")
    else {
        return Ok(PaymentResult::NothingToDo);
    };
    if row.order_status != OrderStatus::PaymentPending.as_str() && row.attempts == 0 {
        // Cancelled before any request reached the provider: nothing is held.
        let mut tx = crate::store::begin(db).await?;
        if lock(&mut tx, order_id, "authorizing").await?.is_none() {
            return Ok(PaymentResult::NothingToDo);
        }
        end(&mut tx, order_id, "released", None).await?;
        tx.commit().await?;
        return Ok(PaymentResult::Ended("released"));
    }
    count_call(db, order_id, payments.provider.name()).await?;
    let request = AuthorizeRequest {
        order_id,
        idempotency_key: row
            .authorize_key
            .clone()
            .unwrap_or_else(|| format!("courier-authorize-{order_id}")),
        amount_cents: row.amount_cents,
        currency: row.currency.clone(),
        payment_method: row.payment_method.clone().unwrap_or_default(),
    };
    let outcome = payments.provider.authorize(&request).await;

    let mut tx = crate::store::begin(db).await?;
    let Some(order_status) = lock(&mut tx, order_id, "authorizing").await? else {
        // A concurrent run recorded the answer first.
        return Ok(PaymentResult::NothingToDo);
    };
    record_attempt(
        &mut tx,
        order_id,
        Operation::Authorize,
        None,
        attempt,
        &outcome,
    )
    .await?;
    let pending = order_status == OrderStatus::PaymentPending;
    let details = |failure| {
        call_details(
            payments,
            Operation::Authorize,
            attempt,
            row.amount_cents,
            failure,
        )
    };
    let (status, after) = match verdict(&outcome, attempt, payments.settings.max_attempts) {
        Verdict::Succeeded(intent) => {
            sqlx::query(
                "UPDATE payments SET status = 'authorized', intent_id = $2, authorized_at = now(),
                        updated_at = now() WHERE order_id = $1",
            )
            .bind(order_id)
            .bind(intent)
            .execute(&mut *tx)
            .await?;
            let after = if pending {
                let effects = steps::payment_authorized(order_id, confirm_within, details(None));
                let request = system_request(order_id, Action::Authorize, None, None);
                transition::apply_in(&mut tx, &request, effects).await?.1
            } else {
                // The customer cancelled while the request was out.
                let effects = steps::authorized_after_cancel(order_id, details(None));
                effects::apply(&mut tx, effects).await?
            };
            ("authorized", after)
        }
        Verdict::Ended {
            declined,
            code,
            message,
        } => {
            let (status, reason) = if declined {
                ("authorization_declined", DECLINED_REASON)
            } else {
                ("authorization_failed", FAILED_REASON)
            };
            end(&mut tx, order_id, status, Some((code, message))).await?;
            let effects = steps::authorization_refused(
                order_id,
                row.customer_id,
                reason,
                details(Some((code, message))),
            );
            let after = if pending {
                let request = system_request(
                    order_id,
                    Action::Cancel,
                    Some(reason),
                    Some(OrderStatus::PaymentPending),
                );
                transition::apply_in(&mut tx, &request, effects).await?.1
            } else {
                effects::apply(&mut tx, effects).await?
            };
            (status, after)
        }
        Verdict::Retry => {
            let job = |next| AuthorizePayment {
                order_id,
                attempt: next,
            };
            return retry(tx, payments, order_id, attempt, job, &outcome).await;
        }
    };
    commit(tx, after, db, location).await?;
    if pending {
        let to = if status == "authorized" {
            OrderStatus::Placed
        } else {
            OrderStatus::Cancelled
        };
        metrics::counter!("orders_total", "status" => to.as_str()).increment(1);
    }
    tracing::info!(
        order_id = order_id.get(),
        attempt,
        status,
        "payment authorisation ended"
    );
    Ok(PaymentResult::Ended(status))
}

/// Calls the provider for `operation` (a capture or a release) on the payment's authorised
/// intent, then opens the transaction that records the answer, with the attempt written on
/// it. `None`: a concurrent run recorded its answer first.
async fn call_on_hold(
    db: &PgPool,
    payments: &Payments,
    row: &PaymentRow,
    order_id: OrderId,
    operation: Operation,
    attempt: u32,
) -> Result<Option<(sqlx::Transaction<'static, sqlx::Postgres>, Outcome)>, PaymentError> {
    count_call(db, order_id, payments.provider.name()).await?;
    let request = IntentRequest {
        order_id,
        idempotency_key: if operation == Operation::Capture {
            row.capture_key.clone()
        } else {
            format!("courier-release-{order_id}")
        },
        intent_id: row.intent_id.clone(),
        amount_cents: row.amount_cents,
    };
    let outcome = if operation == Operation::Capture {
        payments.provider.capture(&request).await
    } else {
        payments.provider.release(&request).await
    };
    let mut tx = crate::store::begin(db).await?;
    if lock(&mut tx, order_id, "authorized").await?.is_none() {
        return Ok(None);
    }
    record_attempt(&mut tx, order_id, operation, None, attempt, &outcome).await?;
    Ok(Some((tx, outcome)))
}

/// Attempt `attempt` of capturing a delivered order's authorised payment.
pub async fn capture(
    db: &PgPool,
    payments: &Payments,
    order_id: OrderId,
    attempt: u32,
) -> Result<PaymentResult, PaymentError> {
    let delivered = [
        OrderStatus::Delivered.as_str(),
        OrderStatus::Completed.as_str(),
    ];
    let Some(row) = load(db, order_id)
        .await?
        .filter(|r| r.status == "authorized" && delivered.contains(&r.order_status.as_str()))
    else {
        return Ok(PaymentResult::NothingToDo);
    };
    let Some((mut tx, outcome)) =
        call_on_hold(db, payments, &row, order_id, Operation::Capture, attempt).await?
    else {
        return Ok(PaymentResult::NothingToDo);
    };
    let (status, event, failure) = match verdict(&outcome, attempt, payments.settings.max_attempts)
    {
        Verdict::Succeeded(_) => ("captured", "payment_captured", None),
        Verdict::Ended {
            declined: true,
            code,
            message,
        } => (
            "capture_declined",
            "payment_declined",
            Some((code, message)),
        ),
        Verdict::Ended { code, message, .. } => {
            ("capture_failed", "payment_failed", Some((code, message)))
        }
        Verdict::Retry => {
            return retry(
                tx,
                payments,
                order_id,
                attempt,
                |next| CapturePayment {
                    order_id,
                    attempt: next,
                },
                &outcome,
            )
            .await;
        }
    };
    end(&mut tx, order_id, status, failure).await?;
    let details = call_details(
        payments,
        Operation::Capture,
        attempt,
        row.amount_cents,
        failure,
    );
    effects::write(
        &mut tx,
        vec![steps::payment_event(
            order_id,
            event,
            Actor::System,
            details,
        )],
    )
    .await?;
    tx.commit().await?;
    if status == "captured" {
        tracing::info!(order_id = order_id.get(), attempt, "payment captured");
    } else {
        tracing::warn!(
            order_id = order_id.get(),
            attempt,
            status,
            "payment capture ended without a charge"
        );
    }
    Ok(PaymentResult::Ended(status))
}

/// Attempt `attempt` of releasing a cancelled order's hold. A release the provider refuses
/// for good is flagged (`payment_release_failed`) and the payment stays `authorized` for
/// operators; the hold lapses at the provider in any case.
pub async fn release(
    db: &PgPool,
    payments: &Payments,
    order_id: OrderId,
    attempt: u32,
) -> Result<PaymentResult, PaymentError> {
    let Some(row) = load(db, order_id)
        .await?
        .filter(|r| r.status == "authorized" && r.order_status == OrderStatus::Cancelled.as_str())
    else {
        return Ok(PaymentResult::NothingToDo);
    };
    let Some((mut tx, outcome)) =
        call_on_hold(db, payments, &row, order_id, Operation::Release, attempt).await?
    else {
        return Ok(PaymentResult::NothingToDo);
    };
    let details = |failure| {
        call_details(
            payments,
            Operation::Release,
            attempt,
            row.amount_cents,
            failure,
        )
    };
    let (status, event) = match verdict(&outcome, attempt, payments.settings.max_attempts) {
        Verdict::Succeeded(_) => {
            end(&mut tx, order_id, "released", None).await?;
            (
                "released",
                steps::payment_event(order_id, "payment_released", Actor::System, details(None)),
            )
        }
        Verdict::Ended { code, message, .. } => (
            "authorized",
            steps::payment_event(
                order_id,
                "payment_release_failed",
                Actor::System,
                details(Some((code, message))),
            ),
        ),
        Verdict::Retry => {
            return retry(
                tx,
                payments,
                order_id,
                attempt,
                |next| ReleasePayment {
                    order_id,
                    attempt: next,
                },
                &outcome,
            )
            .await;
        }
    };
    effects::write(&mut tx, vec![event]).await?;
    tx.commit().await?;
    tracing::info!(
        order_id = order_id.get(),
        attempt,
        status,
        "payment release ended"
    );
    Ok(PaymentResult::Ended(status))
}

/// Schedules the next attempt (`job(next)`) after the backoff and commits.
pub(crate) async fn retry<J: Into<crate::jobs::messages::Message>>(
    mut tx: sqlx::Transaction<'static, sqlx::Postgres>,
    payments: &Payments,
    order_id: OrderId,
    attempt: u32,
    job: impl FnOnce(u32) -> J,
    outcome: &Outcome,
) -> Result<PaymentResult, PaymentError> {
    let next = attempt + 1;
    let delay = crate::payments::retry_delay(&payments.settings, attempt);
    effects::write(&mut tx, steps::payment_retry(job(next), delay)).await?;
    tx.commit().await?;
    tracing::warn!(order_id = order_id.get(), attempt, next, delay = ?delay, detail = outcome.detail(), "payment provider call will be retried");
    Ok(PaymentResult::Retrying { next, delay })
}

/// Enqueues the authorisation again for orders waiting on it with no `authorize_payment` job
/// scheduled or running — a job killed by hand, say — at most `limit`. Returns how
/// many.
pub async fn revive_authorizations(db: &PgPool, limit: i64) -> Result<u64, PaymentError> {
    let mut tx = crate::store::begin(db).await?;
    let lost: Vec<(OrderId, i32)> = sqlx::query_as(
        "SELECT o.id, p.attempts FROM orders o JOIN payments p ON p.order_id = o.id
         WHERE o.status = 'PAYMENT_PENDING' AND p.status = 'authorizing'
           AND o.created_at < now() - INTERVAL '1 minute'
           AND NOT EXISTS (
               SELECT 1 FROM apalis.jobs j
               WHERE j.job_type = $1 AND j.status IN ('Pending', 'Queued', 'Running')
                 AND (convert_from(j.job, 'UTF8')::jsonb ->> 'order_id')::bigint = o.id)
         ORDER BY o.id LIMIT $2
         FOR UPDATE OF o SKIP LOCKED",
    )
    .bind(AuthorizePayment::QUEUE)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    for &(order_id, attempts) in &lost {
        let job = AuthorizePayment {
            order_id,
            attempt: u32::try_from(attempts).unwrap_or(0) + 1,
        };
        effects::write(&mut tx, steps::payment_retry(job, Duration::ZERO)).await?;
        tracing::warn!(
            order_id = order_id.get(),
            "payment authorisation had no job: enqueued again"
        );
    }
    tx.commit().await?;
    Ok(lost.len() as u64)
}

/// Cancels orders not yet delivered whose authorisation is older than `valid_for` (a card
/// hold lapses after about 7 days; the default leaves a day's margin), at most `limit` per
/// call. Each cancellation releases what is left of the hold. Returns how many.
pub async fn expire_authorizations(
    db: &PgPool,
    location: &LocationService,
    valid_for: Duration,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    let due: Vec<(OrderId, String)> = sqlx::query_as(
        "SELECT o.id, o.status FROM payments p JOIN orders o ON o.id = p.order_id
         WHERE p.status = 'authorized' AND p.authorized_at < now() - make_interval(secs => $1)
           AND o.status IN ('PLACED', 'CONFIRMED', 'PREPARING', 'READY_FOR_PICKUP', 'PICKED_UP')
         ORDER BY p.authorized_at LIMIT $2",
    )
    .bind(valid_for.as_secs_f64())
    .bind(limit)
    .fetch_all(db)
    .await?;
    let mut cancelled = 0;
    for (order_id, status) in due {
        let request = system_request(
            order_id,
            Action::Cancel,
            Some(EXPIRED_REASON),
            status.parse().ok(),
        );
        match transition::execute(db, location, &request).await {
            Ok(_) => cancelled += 1,
            Err(TransitionError::Refused(_) | TransitionError::Conflict) => {}
            Err(error) => {
                tracing::warn!(order_id = order_id.get(), error = %error, "could not cancel an order whose authorisation expired");
            }
        }
    }
    Ok(cancelled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_answers_end_when_the_attempts_run_out() {
        let busy = Outcome::Retryable {
            http_status: Some(503),
            detail: "busy".to_owned(),
        };
        assert_eq!(verdict(&busy, 1, 8), Verdict::Retry);
        assert_eq!(
            verdict(&busy, 8, 8),
            Verdict::Ended {
                declined: false,
                code: "retries_exhausted",
                message: "busy"
            }
        );
        let declined = Outcome::Declined {
            code: "card_declined".to_owned(),
            message: "no".to_owned(),
        };
        assert!(matches!(
            verdict(&declined, 1, 8),
            Verdict::Ended { declined: true, .. }
        ));
        let ok = Outcome::Succeeded {
            reference: "pi_1".to_owned(),
        };
        assert_eq!(verdict(&ok, 8, 8), Verdict::Succeeded("pi_1"));
    }
}
