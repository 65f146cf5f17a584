//! The development payment provider: payment intents in `ledger_intents`, and every keyed
//! request with its answer in `ledger_requests`, so a repeated idempotency key replays the
//! first answer exactly as a real provider does. The whole flow (authorise, capture, release,
//! refund, re-runs) works on a laptop and in the simulator with no payment account.
//!
//! Payment methods follow Stripe's test tokens: `pm_card_chargeDeclined…` is declined
//! (`…InsufficientFunds` with that decline code), `pm_card_authenticationRequired` needs the
//! customer's action (a decline here), and any other `pm_…` token authorises.

use sqlx::{PgConnection, PgPool};

use crate::payments::{AuthorizeRequest, IntentRequest, Outcome};

/// Payments recorded in Postgres.
#[derive(Clone, Debug)]
pub struct LedgerProvider {
    db: PgPool,
}

const INTENT_PREFIX: &str = "ledger_pi_";

/// What a test token does at authorisation (pure).
pub fn token_decline(payment_method: &str) -> Option<Outcome> {
    let decline = |code: &str, message: &str| Outcome::Declined {
        code: code.to_owned(),
        message: message.to_owned(),
    };
    if payment_method.starts_with("pm_card_chargeDeclinedInsufficientFunds") {
        Some(decline(
            "insufficient_funds",
            "Your card has insufficient funds.",
        ))
    } else if payment_method.starts_with("pm_card_chargeDeclined") {
        Some(decline("card_declined", "Your card was declined."))
    } else if payment_method.starts_with("pm_card_authenticationRequired") {
        Some(decline(
            "authentication_required",
            "This payment needs the customer's authentication.",
        ))
    } else {
        None
    }
}

fn intent_number(intent: Option<&str>) -> Option<i64> {
    intent?.strip_prefix(INTENT_PREFIX)?.parse().ok()
}

fn rejected(code: &str, message: String) -> Outcome {
    Outcome::Rejected {
        code: code.to_owned(),
        message,
    }
}

/// One keyed request.
enum Operation<'a> {
    Authorize(&'a AuthorizeRequest),
    Capture(&'a IntentRequest),
    Release(&'a IntentRequest),
    Refund(&'a IntentRequest),
}

impl Operation<'_> {
    fn name(&self) -> &'static str {
        match self {
            Operation::Authorize(_) => "authorize",
            Operation::Capture(_) => "capture",
            Operation::Release(_) => "release",
            Operation::Refund(_) => "refund",
        }
    }

    fn key_and_order(&self) -> (&str, i64) {
        match self {
            Operation::Authorize(r) => (&r.idempotency_key, r.order_id.get()),
            Operation::Capture(r) | Operation::Release(r) | Operation::Refund(r) => {
                (&r.idempotency_key, r.order_id.get())
            }
        }
    }

    /// Does it, on the request's transaction.
    async fn perform(&self, conn: &mut PgConnection) -> Result<Outcome, sqlx::Error> {
        match self {
            Operation::Authorize(request) => {
                if let Some(declined) = token_decline(&request.payment_method) {
                    return Ok(declined);
                }
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO ledger_intents (order_id, payment_method, amount_cents, currency, status)
                     VALUES ($1, $2, $3, $4, 'requires_capture') RETURNING id",
                )
                .bind(request.order_id)
                .bind(&request.payment_method)
                .bind(request.amount_cents)
                .bind(&request.currency)
                .fetch_one(conn)
                .await?;
                Ok(Outcome::Succeeded {
                    reference: format!("{INTENT_PREFIX}{id}"),
                })
            }
            Operation::Capture(request) => {
                let captured = sqlx::query(
                    "UPDATE ledger_intents SET status = 'succeeded', captured_cents = $2
                     WHERE id = $1 AND status = 'requires_capture' AND amount_cents >= $2",
                )
                .bind(intent_number(request.intent_id.as_deref()))
                .bind(request.amount_cents)
                .execute(conn)
                .await?;
                Ok(if captured.rows_affected() == 1 {
                    succeeded(request.intent_id.as_deref())
                } else {
                    rejected(
                        "payment_intent_unexpected_state",
                        "the intent is not authorised for this amount".to_owned(),
                    )
                })
            }
            Operation::Release(request) => {
                let released: Option<String> = sqlx::query_scalar(
                    "UPDATE ledger_intents SET status = 'canceled'
                     WHERE id = $1 AND status IN ('requires_capture', 'canceled') RETURNING status",
                )
                .bind(intent_number(request.intent_id.as_deref()))
                .fetch_optional(conn)
                .await?;
                Ok(match released {
                    Some(_) => succeeded(request.intent_id.as_deref()),
                    None => rejected(
                        "payment_intent_unexpected_state",
                        "only an authorised intent can be canceled".to_owned(),
                    ),
                })
            }
            Operation::Refund(request) => {
                let intent = intent_number(request.intent_id.as_deref());
                let refunded: Option<i64> = sqlx::query_scalar(
                    "UPDATE ledger_intents SET refunded_cents = refunded_cents + $2
                     WHERE id = $1 AND status = 'succeeded' AND refunded_cents + $2 <= captured_cents
                     RETURNING refunded_cents",
                )
                .bind(intent)
                .bind(request.amount_cents)
                .fetch_optional(conn)
                .await?;
                Ok(match refunded {
                    Some(total) => Outcome::Succeeded {
                        reference: format!("ledger_re_{}_{total}", intent.unwrap_or_default()),
                    },
                    None => rejected(
                        "charge_already_refunded",
                        "the refund exceeds what is left of the capture".to_owned(),
                    ),
                })
            }
        }
    }
}

impl LedgerProvider {
    /// A ledger on `db`.
    pub fn new(db: PgPool) -> Self {
        Self { db }
    }

    /// Runs `operation` once per key: a repeated key returns the first answer. Requests with
    /// one key are serialised by a transaction-scoped advisory lock on the key.
    async fn keyed(&self, operation: Operation<'_>) -> Outcome {
        let (key, order_id) = operation.key_and_order();
        let run = async {
            let mut tx = crate::store::begin(&self.db).await?;
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 7))")
                .bind(key)
                .execute(&mut *tx)
                .await?;
            let replay: Option<sqlx::types::Json<Outcome>> = sqlx::query_scalar(
                "SELECT outcome FROM ledger_requests WHERE idempotency_key = $1",
            )
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(first) = replay {
                return Ok(first.0);
            }
            let outcome = operation.perform(&mut tx).await?;
            sqlx::query(
                "INSERT INTO ledger_requests (idempotency_key, operation, order_id, outcome)
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(key)
            .bind(operation.name())
            .bind(order_id)
            .bind(sqlx::types::Json(&outcome))
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(outcome)
        };
        run.await.unwrap_or_else(|e| Outcome::Retryable {
            http_status: None,
            detail: format!("ledger unavailable: {e}"),
        })
    }

    /// Holds the amount on a new intent, unless the test token declines.
    pub async fn authorize(&self, request: &AuthorizeRequest) -> Outcome {
        self.keyed(Operation::Authorize(request)).await
    }

    /// Captures up to the authorised amount.
    pub async fn capture(&self, request: &IntentRequest) -> Outcome {
        self.keyed(Operation::Capture(request)).await
    }

    /// Cancels an authorised intent (an already canceled one stays so).
    pub async fn release(&self, request: &IntentRequest) -> Outcome {
        self.keyed(Operation::Release(request)).await
    }

    /// Refunds part or all of what was captured.
    pub async fn refund(&self, request: &IntentRequest) -> Outcome {
        self.keyed(Operation::Refund(request)).await
    }
}

fn succeeded(intent: Option<&str>) -> Outcome {
    Outcome::Succeeded {
        reference: intent.unwrap_or_default().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_tokens_decline_as_stripes_do() {
        assert!(token_decline("pm_card_visa").is_none());
        assert!(matches!(
            token_decline("pm_card_chargeDeclinedInsufficientFunds"),
            Some(Outcome::Declined { ref code, .. }) if code == "insufficient_funds"
        ));
        assert!(matches!(
            token_decline("pm_card_chargeDeclined"),
            Some(Outcome::Declined { ref code, .. }) if code == "card_declined"
        ));
        assert!(matches!(
            token_decline("pm_card_authenticationRequired"),
            Some(Outcome::Declined { ref code, .. }) if code == "authentication_required"
        ));
    }

    #[test]
    fn only_ledger_intent_ids_name_an_intent() {
        assert_eq!(intent_number(Some("ledger_pi_42")), Some(42));
        assert_eq!(intent_number(Some("pi_42")), None);
        assert_eq!(intent_number(None), None);
    }
}
