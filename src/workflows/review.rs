//! The review request (the `request_review` job, 30 minutes after delivery): the customer is
//! asked for a review — unless the order was cancelled or its payment refunded meanwhile.
//!
//! At-least-once safe: under the order's row lock it writes a `review_requested` audit row
//! with the notification, and does nothing if that row already exists.

use sqlx::PgPool;

use crate::domain::{OrderId, UserId};
use crate::workflows::effects::{self, EffectError};
use crate::workflows::steps;

/// Asks the customer of `order_id` for a review if it is due; returns whether it asked.
pub async fn request(db: &PgPool, order_id: OrderId) -> Result<bool, EffectError> {
    let mut tx = crate::store::begin(db).await?;
    // Lock first, then check in a new statement: it then sees a concurrent run's audit row.
    sqlx::query("SELECT 1 FROM orders WHERE id = $1 FOR UPDATE")
        .bind(order_id)
        .execute(&mut *tx)
        .await?;
    let due: Option<(bool, UserId)> = sqlx::query_as(
        "SELECT o.status IN ('DELIVERED', 'COMPLETED')
                AND NOT EXISTS (SELECT 1 FROM payments p WHERE p.order_id = o.id AND p.status = 'refunded')
                AND NOT EXISTS (SELECT 1 FROM audit_logs a WHERE a.entity_type = 'order'
                                AND a.entity_id = o.id AND a.event_type = 'review_requested'),
                o.customer_id
         FROM orders o WHERE o.id = $1",
    )
    .bind(order_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((true, customer)) = due else {
        return Ok(false);
    };
    effects::write(&mut tx, steps::review_due(order_id, customer.get())).await?;
    tx.commit().await?;
    tracing::info!(order_id = order_id.get(), "review requested");
    Ok(true)
}
