//! The development payment provider: records captures in the `ledger_captures` table,
//! deduplicated by the idempotency key exactly as a real provider would, so the whole
//! capture path (including re-runs) works on a laptop with no payment account.

use sqlx::PgPool;

use crate::payments::{CaptureOutcome, CaptureRequest};

/// Captures recorded in Postgres.
#[derive(Clone, Debug)]
pub struct LedgerProvider {
    db: PgPool,
}

impl LedgerProvider {
    /// A ledger on `db`.
    pub fn new(db: PgPool) -> Self {
        Self { db }
    }

    /// Records the capture once per idempotency key; a repeat returns the first record.
    pub async fn capture(&self, request: &CaptureRequest) -> CaptureOutcome {
        let recorded: Result<i64, sqlx::Error> = sqlx::query_scalar(
            "WITH inserted AS (
                 INSERT INTO ledger_captures (idempotency_key, order_id, amount_cents, currency)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (idempotency_key) DO NOTHING
                 RETURNING id
             )
             SELECT id FROM inserted
             UNION ALL
             SELECT id FROM ledger_captures WHERE idempotency_key = $1
             LIMIT 1",
        )
        .bind(&request.idempotency_key)
        .bind(request.order_id)
        .bind(request.amount_cents)
        .bind(&request.currency)
        .fetch_one(&self.db)
        .await;
        match recorded {
            Ok(id) => CaptureOutcome::Captured {
                reference: format!("ledger_{id}"),
            },
            Err(e) => CaptureOutcome::Retryable {
                http_status: None,
                detail: format!("ledger unavailable: {e}"),
            },
        }
    }
}
