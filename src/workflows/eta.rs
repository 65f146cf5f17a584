//! The order's stored ETA (`orders.estimated_delivery_at`, the `refresh_eta` job): computed
//! after the commit of the change that moved it, since routing is an HTTP call, and stored so
//! list views need no routing.
//!
//! At-least-once safe: it writes the ETA as of when it runs; a completed or cancelled order
//! keeps its last ETA. A new value is published (`eta_updated`, [`steps::eta_updated`]) on
//! the same transaction, so live clients see it.

use chrono::Utc;
use sqlx::PgPool;

use crate::domain::OrderId;
use crate::eta::order::{EtaError, order_eta};
use crate::eta::routing::Routing;
use crate::location::LocationService;
use crate::workflows::{effects, steps};

/// Why an ETA could not be refreshed.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error(transparent)]
    Eta(#[from] EtaError),
    #[error(transparent)]
    Effects(#[from] effects::EffectError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// Recomputes and stores the ETA of `order_id`.
pub async fn refresh(
    db: &PgPool,
    location: &LocationService,
    routing: &Routing,
    order_id: OrderId,
) -> Result<(), RefreshError> {
    let Some(eta) = order_eta(db, location, routing, order_id.get(), Utc::now()).await? else {
        return Ok(());
    };
    let mut tx = crate::store::begin(db).await?;
    let changed: Option<OrderId> = sqlx::query_scalar(
        "UPDATE orders SET estimated_delivery_at = $2
         WHERE id = $1 AND status NOT IN ('COMPLETED', 'CANCELLED')
           AND estimated_delivery_at IS DISTINCT FROM $2
         RETURNING id",
    )
    .bind(order_id)
    .bind(eta.eta)
    .fetch_optional(&mut *tx)
    .await?;
    if changed.is_some() {
        effects::write(&mut tx, steps::eta_updated(order_id, &eta)).await?;
    }
    tx.commit().await?;
    Ok(())
}
