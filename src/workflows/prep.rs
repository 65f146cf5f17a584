//! The restaurant's estimate of the food's preparation (`orders.prep_minutes`,
//! `orders.food_ready_at`): given when it confirms (or the restaurant's usual prep time) and
//! changed while it cooks. The ETA and dispatch read `food_ready_at`; a cycle market offers an
//! order when its driver would arrive close to it ([`crate::dispatch::assign`]).

use sqlx::{PgConnection, PgPool};

use crate::domain::{Actor, OrderId, OrderStatus};
use crate::workflows::effects::{self, EffectError};
use crate::workflows::steps;

/// Most minutes an estimate may give (`orders_prep_minutes_range`); it must be more than 0.
pub const MAX_PREP_MINUTES: f64 = 180.0;

/// Whether `minutes` is an estimate the order may hold: more than 0, at most
/// [`MAX_PREP_MINUTES`] (fractions allowed).
pub fn valid_minutes(minutes: f64) -> bool {
    minutes.is_finite() && minutes > 0.0 && minutes <= MAX_PREP_MINUTES
}

/// Why an estimate was not changed. Nothing was written in any case.
#[derive(Debug, thiserror::Error)]
pub enum PrepError {
    /// No such order, or not the caller's.
    #[error("no such order")]
    NotFound,
    /// The food is no longer being prepared (or not yet).
    #[error("the prep estimate changes only while the order is CONFIRMED or PREPARING; it is {0}")]
    NotCooking(OrderStatus),
    #[error("could not write the change's effects: {0}")]
    Effects(#[from] EffectError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// Sets the estimate of a confirming order on `tx` (the confirmation's transaction):
/// `minutes`, or the restaurant's usual prep time, from now.
pub async fn on_confirm(
    tx: &mut PgConnection,
    order_id: OrderId,
    minutes: Option<f64>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE orders o
         SET prep_minutes = COALESCE($2, r.prep_time_minutes::float8),
             food_ready_at = now() + make_interval(secs => 60 * COALESCE($2, r.prep_time_minutes::float8))
         FROM restaurants r WHERE o.id = $1 AND r.id = o.restaurant_id",
    )
    .bind(order_id)
    .bind(minutes)
    .execute(tx)
    .await?;
    Ok(())
}

/// The restaurant (or an operator) says the food will be ready `minutes` from now: the
/// estimate, an event and an ETA refresh, in one transaction under the order's lock.
pub async fn update(
    db: &PgPool,
    order_id: OrderId,
    actor: Actor,
    minutes: f64,
) -> Result<(), PrepError> {
    let mut tx = crate::store::begin(db).await?;
    let current: Option<(String, i64)> =
        sqlx::query_as("SELECT status, restaurant_id FROM orders WHERE id = $1 FOR UPDATE")
            .bind(order_id)
            .fetch_optional(&mut *tx)
            .await?;
    let (status, restaurant_id) = current.ok_or(PrepError::NotFound)?;
    let allowed = match actor {
        Actor::Restaurant(id) => id.get() == restaurant_id,
        Actor::Operator(_) => true,
        _ => false,
    };
    if !allowed {
        return Err(PrepError::NotFound);
    }
    let status: OrderStatus = status
        .parse()
        .map_err(|e: crate::domain::UnknownStatus| sqlx::Error::Decode(Box::new(e)))?;
    if !matches!(status, OrderStatus::Confirmed | OrderStatus::Preparing) {
        return Err(PrepError::NotCooking(status));
    }
    sqlx::query(
        "UPDATE orders SET prep_minutes = $2, food_ready_at = now() + make_interval(secs => 60 * $2),
                updated_at = now()
         WHERE id = $1",
    )
    .bind(order_id)
    .bind(minutes)
    .execute(&mut *tx)
    .await?;
    effects::write(&mut tx, steps::prep_estimated(order_id, minutes, actor)).await?;
    tx.commit().await?;
    tracing::info!(order_id = order_id.get(), minutes, "prep estimate updated");
    Ok(())
}
