//! `request_review`: scheduled 30 minutes after delivery (the spec), in the delivery's
//! transaction.
//!
//! **Stub until the notifications issue lands**: it skips orders that were cancelled meanwhile
//! and logs; the webhook notification comes with the `notify` job.

use apalis::prelude::{BoxDynError, Data};
use serde::{Deserialize, Serialize};

use crate::jobs::{Job, JobContext, bounded};

/// Arguments of the job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestReview {
    pub order_id: i64,
}

impl Job for RequestReview {
    const QUEUE: &'static str = "courier::request_review";
    const MAX_ATTEMPTS: usize = 5;
}

/// The handler.
pub async fn run(job: RequestReview, ctx: Data<JobContext>) -> Result<(), BoxDynError> {
    bounded(RequestReview::QUEUE, async {
        let status: Option<String> = sqlx::query_scalar("SELECT status FROM orders WHERE id = $1")
            .bind(job.order_id)
            .fetch_optional(&ctx.db)
            .await?;
        if matches!(status.as_deref(), Some("DELIVERED" | "COMPLETED")) {
            tracing::info!(
                order_id = job.order_id,
                "review request due (notifications not implemented yet)"
            );
        }
        Ok(())
    })
    .await
}
