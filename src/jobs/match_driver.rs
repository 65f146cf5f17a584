//! `match_driver`: enqueued when a restaurant confirms an order (one second later, as in the
//! spec). It finds the best available driver and offers the order.
//!
//! **Stub until the matching issue lands**: this handler already does the at-least-once part —
//! it locks the order and does nothing if the order is no longer waiting for a driver — and
//! then only logs that matching is not implemented yet. Scoring, offers, radius expansion and
//! retry rounds come with `src/dispatch/`.

use apalis::prelude::{BoxDynError, Data};
use serde::{Deserialize, Serialize};

use crate::jobs::{Job, JobContext, bounded};

/// Arguments of the job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatchDriver {
    pub order_id: i64,
    /// Which matching round this is (1 for the first).
    pub round: u32,
}

impl Job for MatchDriver {
    const QUEUE: &'static str = "courier::match_driver";
    const MAX_ATTEMPTS: usize = 5;
}

/// The handler.
pub async fn run(job: MatchDriver, ctx: Data<JobContext>) -> Result<(), BoxDynError> {
    bounded(MatchDriver::QUEUE, async {
        let mut tx = ctx.db.begin().await?;
        let waiting: Option<bool> = sqlx::query_scalar(
            "SELECT status IN ('CONFIRMED', 'PREPARING', 'READY_FOR_PICKUP') AND driver_id IS NULL
             FROM orders WHERE id = $1 FOR UPDATE",
        )
        .bind(job.order_id)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        if waiting == Some(true) {
            tracing::info!(
                order_id = job.order_id,
                round = job.round,
                "order awaits a driver (matching not implemented yet)"
            );
        }
        Ok(())
    })
    .await
}
