//! `capture_payment`: enqueued when an order is delivered, in the delivery's transaction.
//!
//! **Stub until the payments issue lands**: it checks that the order is delivered (at-least-once:
//! a re-run or a stale job is a no-op) and logs; the provider call, its idempotency key and the
//! capture record come with `PaymentProvider`.

use apalis::prelude::{BoxDynError, Data};
use serde::{Deserialize, Serialize};

use crate::jobs::{Job, JobContext, bounded};

/// Arguments of the job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapturePayment {
    pub order_id: i64,
}

impl Job for CapturePayment {
    const QUEUE: &'static str = "courier::capture_payment";
    const MAX_ATTEMPTS: usize = 10;
}

/// The handler.
pub async fn run(job: CapturePayment, ctx: Data<JobContext>) -> Result<(), BoxDynError> {
    bounded(CapturePayment::QUEUE, async {
        let delivered: Option<bool> = sqlx::query_scalar(
            "SELECT status IN ('DELIVERED', 'COMPLETED') FROM orders WHERE id = $1",
        )
        .bind(job.order_id)
        .fetch_optional(&ctx.db)
        .await?;
        if delivered == Some(true) {
            tracing::info!(
                order_id = job.order_id,
                "payment capture due (provider not implemented yet)"
            );
        }
        Ok(())
    })
    .await
}
