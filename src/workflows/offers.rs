//! A driver's answer to an offer, and the other ways an offer ends: the driver accepts (the
//! order is assigned) or declines, the timeout expires it, cancelling the order cancels it, a
//! driver going offline declines theirs. Each ends the offer and writes its effects
//! ([`steps`]) in one transaction.
//!
//! Every writer locks the order row first, then (accept only) the driver row, then changes
//! the offer with `… WHERE status = 'pending'`: whichever of accept, decline, expiry and
//! cancellation comes first wins, the others see a non-pending offer.

use chrono::Utc;
use sqlx::{PgConnection, PgPool};

use crate::dispatch::batch::{self, NoBatch};
use crate::dispatch::carried::{carried_orders, conditions, order_points};
use crate::dispatch::{MATCH_DURATION, MATCH_ROUNDS, OFFERS_TOTAL, WAITING_STATES};
use crate::domain::{Actor, DriverId, OfferId, OfferStatus, OrderId};
use crate::eta::routing::Routing;
use crate::location::{LocationService, MAX_ACTIVE_ORDERS};
use crate::workflows::effects::{self, EffectError};
use crate::workflows::steps;

/// Why a driver's answer was refused. Nothing was written in any case.
#[derive(Debug, thiserror::Error)]
pub enum OfferError {
    #[error("offer not found")]
    NotFound,
    #[error("the offer was made to another driver")]
    NotYours,
    #[error("the offer is {0}")]
    NotPending(OfferStatus),
    #[error("the offer has expired")]
    Expired,
    #[error("the driver already carries {MAX_ACTIVE_ORDERS} orders")]
    AtCapacity,
    #[error("the order does not batch with the one the driver carries: {0}")]
    CannotBatch(NoBatch),
    #[error("the order no longer needs a driver")]
    OrderUnavailable,
    #[error("could not write the answer's effects: {0}")]
    Effects(#[from] EffectError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

#[derive(Debug, sqlx::FromRow)]
struct OfferRow {
    order_id: OrderId,
    driver_id: DriverId,
    status: String,
    expired: bool,
}

/// Reads the offer, checks it belongs to `driver_id` (when given) and locks its order.
async fn lock_offer(
    conn: &mut PgConnection,
    offer_id: OfferId,
    driver_id: Option<DriverId>,
) -> Result<OfferRow, OfferError> {
    let row: OfferRow = sqlx::query_as(
        "SELECT order_id, driver_id, status, expires_at <= now() AS expired FROM offers WHERE id = $1",
    )
    .bind(offer_id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(OfferError::NotFound)?;
    if driver_id.is_some_and(|d| d != row.driver_id) {
        return Err(OfferError::NotYours);
    }
    sqlx::query("SELECT 1 FROM orders WHERE id = $1 FOR UPDATE")
        .bind(row.order_id)
        .execute(&mut *conn)
        .await?;
    // Re-read under the lock: the status may have changed while we waited.
    let row: OfferRow = sqlx::query_as(
        "SELECT order_id, driver_id, status, expires_at <= now() AS expired FROM offers WHERE id = $1",
    )
    .bind(offer_id)
    .fetch_one(&mut *conn)
    .await?;
    Ok(row)
}

fn not_pending(row: &OfferRow) -> OfferError {
    row.status
        .parse()
        .map_or(OfferError::NotFound, OfferError::NotPending)
}

/// Ends a pending offer with `status` and writes its effects (the order's next matching
/// round at once). Returns whether it was pending.
async fn end_offer(
    conn: &mut PgConnection,
    offer_id: OfferId,
    status: OfferStatus,
    actor: Actor,
) -> Result<bool, OfferError> {
    let ended: Option<(OrderId, DriverId, i32)> = sqlx::query_as(
        "UPDATE offers SET status = $2, responded_at = now()
         WHERE id = $1 AND status = 'pending'
         RETURNING order_id, driver_id, round",
    )
    .bind(offer_id)
    .bind(status.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    let Some((order_id, driver_id, round)) = ended else {
        return Ok(false);
    };
    let round = u32::try_from(round).unwrap_or(1);
    let effects = steps::offer_ended(order_id, offer_id, driver_id, round, status, actor);
    effects::write(conn, effects).await?;
    metrics::counter!(OFFERS_TOTAL, "outcome" => status.as_str()).increment(1);
    Ok(true)
}

/// The driver declines: the offer ends and the next round starts at once.
pub async fn decline(
    db: &PgPool,
    offer_id: OfferId,
    driver_id: DriverId,
) -> Result<(), OfferError> {
    let mut tx = crate::store::begin(db).await?;
    let row = lock_offer(&mut tx, offer_id, Some(driver_id)).await?;
    if !end_offer(
        &mut tx,
        offer_id,
        OfferStatus::Declined,
        Actor::Driver(driver_id),
    )
    .await?
    {
        return Err(not_pending(&row));
    }
    tx.commit().await?;
    tracing::info!(
        offer_id = offer_id.get(),
        order_id = row.order_id.get(),
        driver_id = driver_id.get(),
        "offer declined"
    );
    Ok(())
}

/// The offer's time is up (the `offer_timeout` job): expires it if still pending and starts
/// the next round. Returns whether it expired it.
pub async fn expire(db: &PgPool, offer_id: OfferId) -> Result<bool, OfferError> {
    let mut tx = crate::store::begin(db).await?;
    let row = match lock_offer(&mut tx, offer_id, None).await {
        Ok(row) => row,
        // Deleted with its order: nothing to expire.
        Err(OfferError::NotFound) => return Ok(false),
        Err(e) => return Err(e),
    };
    let expired = end_offer(&mut tx, offer_id, OfferStatus::Expired, Actor::System).await?;
    tx.commit().await?;
    if expired {
        tracing::info!(
            offer_id = offer_id.get(),
            order_id = row.order_id.get(),
            driver_id = row.driver_id.get(),
            "offer expired"
        );
    }
    Ok(expired)
}

/// What an accepted offer did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub order_id: OrderId,
    pub driver_id: DriverId,
}

/// The driver accepts: in one transaction the offer becomes accepted and the order is
/// assigned (audit row and `driver_assigned` event), provided the offer is pending and
/// unexpired, the order still waits for a driver, and the driver carries fewer than
/// [`MAX_ACTIVE_ORDERS`] orders, with which this one batches under the spec's rules (checked
/// under the driver's lock: the driver may have taken an order since the offer was made). Then
/// the driver's load is updated in Valkey.
pub async fn accept(
    db: &PgPool,
    location: &LocationService,
    routing: &Routing,
    offer_id: OfferId,
    driver_id: DriverId,
) -> Result<Accepted, OfferError> {
    let mut tx = crate::store::begin(db).await?;
    let row = lock_offer(&mut tx, offer_id, Some(driver_id)).await?;
    if row.status != OfferStatus::Pending.as_str() {
        return Err(not_pending(&row));
    }
    if row.expired {
        return Err(OfferError::Expired);
    }
    sqlx::query("SELECT 1 FROM drivers WHERE id = $1 FOR UPDATE")
        .bind(driver_id)
        .execute(&mut *tx)
        .await?;
    let carrying = carried_orders(&mut tx, &[driver_id.get()])
        .await?
        .remove(&driver_id.get())
        .unwrap_or_default();
    if carrying.len() >= MAX_ACTIVE_ORDERS as usize {
        return Err(OfferError::AtCapacity);
    }
    if let Some(current) = carrying.first() {
        let order = order_points(&mut tx, row.order_id.get())
            .await?
            .ok_or(OfferError::OrderUnavailable)?;
        // Where the driver is; without a position, where it is headed next.
        let position = match location.last_fix(driver_id.get()).await {
            Ok(Some((point, _))) => point,
            _ if current.picked_up => current.customer,
            _ => current.restaurant,
        };
        let at = conditions(routing, position, Utc::now());
        batch::check(&at, &carrying, &order).map_err(OfferError::CannotBatch)?;
    }
    let accepted = sqlx::query(
        "UPDATE offers SET status = 'accepted', responded_at = now()
         WHERE id = $1 AND status = 'pending' AND expires_at > now()",
    )
    .bind(offer_id)
    .execute(&mut *tx)
    .await?;
    if accepted.rows_affected() == 0 {
        return Err(OfferError::Expired);
    }
    let assigned: Option<(i32, Option<f64>)> = sqlx::query_as(
        "UPDATE orders SET driver_id = $2, version = version + 1, updated_at = now()
         WHERE id = $1 AND driver_id IS NULL AND status = ANY($3)
         RETURNING match_round, EXTRACT(EPOCH FROM now() - confirmed_at)::float8",
    )
    .bind(row.order_id)
    .bind(driver_id)
    .bind(&WAITING_STATES[..])
    .fetch_optional(&mut *tx)
    .await?;
    let Some((rounds, since_confirmed)) = assigned else {
        return Err(OfferError::OrderUnavailable);
    };
    let customer_id: i64 = sqlx::query_scalar("SELECT customer_id FROM orders WHERE id = $1")
        .bind(row.order_id)
        .fetch_one(&mut *tx)
        .await?;
    let effects = steps::assigned(
        row.order_id,
        customer_id,
        driver_id,
        offer_id,
        rounds,
        since_confirmed,
    );
    let after = effects::apply(&mut tx, effects).await?;
    tx.commit().await?;
    metrics::counter!(OFFERS_TOTAL, "outcome" => "accepted").increment(1);
    metrics::histogram!(MATCH_ROUNDS).record(f64::from(rounds));
    if let Some(seconds) = since_confirmed {
        metrics::histogram!(MATCH_DURATION).record(seconds.max(0.0));
    }
    tracing::info!(
        offer_id = offer_id.get(),
        order_id = row.order_id.get(),
        driver_id = driver_id.get(),
        "offer accepted; driver assigned"
    );
    after.run(db, location).await;
    Ok(Accepted {
        order_id: row.order_id,
        driver_id,
    })
}

/// Cancels an order's pending offer (the order was cancelled), on the cancel's transaction.
/// Returns the offers cancelled and their drivers.
pub async fn cancel_pending(
    conn: &mut PgConnection,
    order_id: OrderId,
) -> Result<Vec<(OfferId, DriverId)>, sqlx::Error> {
    let cancelled: Vec<(OfferId, DriverId)> = sqlx::query_as(
        "UPDATE offers SET status = 'cancelled', responded_at = now()
         WHERE order_id = $1 AND status = 'pending'
         RETURNING id, driver_id",
    )
    .bind(order_id)
    .fetch_all(conn)
    .await?;
    if !cancelled.is_empty() {
        metrics::counter!(OFFERS_TOTAL, "outcome" => "cancelled").increment(cancelled.len() as u64);
    }
    Ok(cancelled)
}

/// Declines every pending offer of a driver who went offline, each moving its order on; on
/// `conn` (the status change's transaction). Orders are locked in id order, so two of these
/// never deadlock. Returns how many offers were declined.
pub async fn decline_all_for_driver(
    conn: &mut PgConnection,
    driver_id: DriverId,
) -> Result<u64, OfferError> {
    let pending: Vec<(OfferId, OrderId)> = sqlx::query_as(
        "SELECT id, order_id FROM offers WHERE driver_id = $1 AND status = 'pending' ORDER BY order_id",
    )
    .bind(driver_id)
    .fetch_all(&mut *conn)
    .await?;
    let mut declined = 0;
    for (offer_id, order_id) in pending {
        sqlx::query("SELECT 1 FROM orders WHERE id = $1 FOR UPDATE")
            .bind(order_id)
            .execute(&mut *conn)
            .await?;
        if end_offer(
            conn,
            offer_id,
            OfferStatus::Declined,
            Actor::Driver(driver_id),
        )
        .await?
        {
            declined += 1;
        }
    }
    Ok(declined)
}
