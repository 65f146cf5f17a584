//! `request_review`: scheduled 30 minutes after delivery (the spec), in the delivery's
//! transaction. Asks the customer for a review with a `review_requested` notification —
//! unless the order was cancelled or its payment refunded meanwhile.
//!
//! At-least-once safe: under the order's row lock it writes a `review_requested` audit row
//! with the notification, and does nothing if that row already exists.

use apalis::prelude::{BoxDynError, Data};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::jobs::{Job, JobContext, JobError, bounded};
use crate::notify::{self, Audience};
use crate::workflows::events::{OrderEvent, record};
use crate::workflows::machine::Actor;

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
        let mut tx = crate::store::begin(&ctx.db).await?;
        // Lock first, then check in a new statement: it then sees a concurrent run's audit row.
        sqlx::query("SELECT 1 FROM orders WHERE id = $1 FOR UPDATE")
            .bind(job.order_id)
            .execute(&mut *tx)
            .await?;
        let due: Option<(bool, i64)> = sqlx::query_as(
            "SELECT o.status IN ('DELIVERED', 'COMPLETED')
                    AND NOT EXISTS (SELECT 1 FROM payments p WHERE p.order_id = o.id AND p.status = 'refunded')
                    AND NOT EXISTS (SELECT 1 FROM audit_logs a WHERE a.entity_type = 'order'
                                    AND a.entity_id = o.id AND a.event_type = 'review_requested'),
                    o.customer_id
             FROM orders o WHERE o.id = $1",
        )
        .bind(job.order_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((true, customer_id)) = due else {
            return Ok(());
        };
        notify::enqueue(
            &mut tx,
            job.order_id,
            Audience::Customer,
            Some(customer_id),
            "review_requested",
            json!({ "order_id": job.order_id }),
        )
        .await
        .map_err(|e| JobError::Retry(e.into()))?;
        record(
            &mut tx,
            &OrderEvent {
                order_id: job.order_id,
                topic: "notifications",
                event_type: "review_requested",
                actor: Actor::System,
                details: json!({}),
                publish: false,
            },
        )
        .await?;
        tx.commit().await?;
        tracing::info!(order_id = job.order_id, "review requested");
        Ok(())
    })
    .await
}
