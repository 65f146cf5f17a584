//! The order's stored ETA (`orders.estimated_delivery_at`, the `refresh_eta` job): computed
//! after the commit of the change that moved it, since routing is an HTTP call, and stored so
//! list views need no routing.
//!
//! At-least-once safe: it writes the ETA as of when it runs; a completed or cancelled order
//! keeps its last ETA.

use chrono::Utc;
use sqlx::PgPool;

use crate::domain::OrderId;
use crate::eta::order::{EtaError, order_eta};
use crate::eta::routing::Routing;
use crate::location::LocationService;

/// Recomputes and stores the ETA of `order_id`.
pub async fn refresh(
    db: &PgPool,
    location: &LocationService,
    routing: &Routing,
    order_id: OrderId,
) -> Result<(), EtaError> {
    let Some(eta) = order_eta(db, location, routing, order_id.get(), Utc::now()).await? else {
        return Ok(());
    };
    sqlx::query(
        "UPDATE orders SET estimated_delivery_at = $2
         WHERE id = $1 AND status NOT IN ('COMPLETED', 'CANCELLED')",
    )
    .bind(order_id)
    .bind(eta.eta)
    .execute(db)
    .await?;
    Ok(())
}
