//! Offers after they are made: a driver accepts or declines, the timeout expires them,
//! cancelling an order cancels them, a driver going offline declines theirs. Also keeps the
//! driver's load in Valkey (what the nearby search filters on) in step with Postgres.
//!
//! Every writer locks the order row first, then (accept only) the driver row, then changes
//! the offer with `… WHERE status = 'pending'`: whichever of accept, decline, expiry and
//! cancellation comes first wins, the others see a non-pending offer.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use sqlx::{PgConnection, PgPool};

use crate::dispatch::batch::{self, NoBatch};
use crate::dispatch::carried::{carried_orders, conditions, order_points};
use crate::dispatch::{MATCH_DURATION, MATCH_ROUNDS, OFFERS_TOTAL, WAITING_STATES};
use crate::eta::routing::Routing;
use crate::jobs::match_driver::MatchDriver;
use crate::jobs::refresh_eta::RefreshEta;
use crate::jobs::{self, EnqueueError};
use crate::location::{ACTIVE_STATES, LocationService, MAX_ACTIVE_ORDERS};
use crate::notify::{self, Audience};
use crate::workflows::events::{OrderEvent, record};
use crate::workflows::machine::Actor;

/// Where an offer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OfferStatus {
    Pending,
    Accepted,
    Declined,
    Expired,
    Cancelled,
}

impl OfferStatus {
    /// The status as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            OfferStatus::Pending => "pending",
            OfferStatus::Accepted => "accepted",
            OfferStatus::Declined => "declined",
            OfferStatus::Expired => "expired",
            OfferStatus::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for OfferStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OfferStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            OfferStatus::Pending,
            OfferStatus::Accepted,
            OfferStatus::Declined,
            OfferStatus::Expired,
            OfferStatus::Cancelled,
        ]
        .into_iter()
        .find(|o| o.as_str() == s)
        .ok_or_else(|| format!("unknown offer status `{s}`"))
    }
}

/// An offer as drivers and operators see it.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct OfferView {
    pub id: i64,
    pub order_id: i64,
    pub driver_id: i64,
    pub round: i32,
    pub status: String,
    pub score: f64,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub responded_at: Option<DateTime<Utc>>,
    pub restaurant_id: i64,
    pub restaurant_name: String,
    pub restaurant_lat: f64,
    pub restaurant_lon: f64,
    pub delivery_lat: f64,
    pub delivery_lon: f64,
}

const VIEW_QUERY: &str = "
    SELECT f.id, f.order_id, f.driver_id, f.round, f.status, f.score, f.created_at, f.expires_at,
           f.responded_at, r.id AS restaurant_id, r.name AS restaurant_name,
           ST_Y(r.location::geometry) AS restaurant_lat, ST_X(r.location::geometry) AS restaurant_lon,
           ST_Y(o.delivery_location::geometry) AS delivery_lat,
           ST_X(o.delivery_location::geometry) AS delivery_lon
    FROM offers f JOIN orders o ON o.id = f.order_id JOIN restaurants r ON r.id = o.restaurant_id";

/// A driver's pending, unexpired offers, soonest expiry first.
pub async fn pending_for_driver(
    db: &PgPool,
    driver_id: i64,
) -> Result<Vec<OfferView>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{VIEW_QUERY} WHERE f.driver_id = $1 AND f.status = 'pending' AND f.expires_at > now()
         ORDER BY f.expires_at"
    )))
    .bind(driver_id)
    .fetch_all(db)
    .await
}

/// One offer.
pub async fn fetch(
    conn: &mut PgConnection,
    offer_id: i64,
) -> Result<Option<OfferView>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("{VIEW_QUERY} WHERE f.id = $1")))
        .bind(offer_id)
        .fetch_optional(conn)
        .await
}

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
    #[error("could not enqueue: {0}")]
    Enqueue(#[from] EnqueueError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

#[derive(Debug, sqlx::FromRow)]
struct OfferRow {
    order_id: i64,
    driver_id: i64,
    status: String,
    expired: bool,
}

/// Reads the offer, checks it belongs to `driver_id` (when given) and locks its order.
async fn lock_offer(
    conn: &mut PgConnection,
    offer_id: i64,
    driver_id: Option<i64>,
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

/// Ends a pending offer with `status` and enqueues the order's next matching round at once.
/// Returns the offer's round, or `None` if it was not pending.
async fn end_offer(
    conn: &mut PgConnection,
    offer_id: i64,
    status: OfferStatus,
    actor: Actor,
) -> Result<Option<i32>, OfferError> {
    let ended: Option<(i64, i64, i32)> = sqlx::query_as(
        "UPDATE offers SET status = $2, responded_at = now()
         WHERE id = $1 AND status = 'pending'
         RETURNING order_id, driver_id, round",
    )
    .bind(offer_id)
    .bind(status.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    let Some((order_id, driver_id, round)) = ended else {
        return Ok(None);
    };
    jobs::enqueue(
        conn,
        &MatchDriver {
            order_id,
            round: u32::try_from(round).unwrap_or(1),
        },
        std::time::Duration::ZERO,
    )
    .await?;
    record(
        conn,
        &OrderEvent {
            topic: "dispatch",
            order_id,
            event_type: if status == OfferStatus::Expired {
                "offer_expired"
            } else {
                "offer_declined"
            },
            actor,
            details: json!({ "offer_id": offer_id, "driver_id": driver_id, "round": round }),
            publish: false,
        },
    )
    .await?;
    metrics::counter!(OFFERS_TOTAL, "outcome" => status.as_str()).increment(1);
    Ok(Some(round))
}

/// The driver declines: the offer ends and the next round starts at once.
pub async fn decline(db: &PgPool, offer_id: i64, driver_id: i64) -> Result<(), OfferError> {
    let mut tx = crate::store::begin(db).await?;
    let row = lock_offer(&mut tx, offer_id, Some(driver_id)).await?;
    if end_offer(
        &mut tx,
        offer_id,
        OfferStatus::Declined,
        Actor::Driver(driver_id),
    )
    .await?
    .is_none()
    {
        return Err(not_pending(&row));
    }
    tx.commit().await?;
    tracing::info!(
        offer_id,
        order_id = row.order_id,
        driver_id,
        "offer declined"
    );
    Ok(())
}

/// The offer's time is up (the `offer_timeout` job): expires it if still pending and starts
/// the next round. Returns whether it expired it.
pub async fn expire(db: &PgPool, offer_id: i64) -> Result<bool, OfferError> {
    let mut tx = crate::store::begin(db).await?;
    let row = match lock_offer(&mut tx, offer_id, None).await {
        Ok(row) => row,
        // Deleted with its order: nothing to expire.
        Err(OfferError::NotFound) => return Ok(false),
        Err(e) => return Err(e),
    };
    let expired = end_offer(&mut tx, offer_id, OfferStatus::Expired, Actor::System)
        .await?
        .is_some();
    tx.commit().await?;
    if expired {
        tracing::info!(
            offer_id,
            order_id = row.order_id,
            driver_id = row.driver_id,
            "offer expired"
        );
    }
    Ok(expired)
}

/// What an accepted offer did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub order_id: i64,
    pub driver_id: i64,
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
    offer_id: i64,
    driver_id: i64,
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
    let carrying = carried_orders(&mut tx, &[driver_id])
        .await?
        .remove(&driver_id)
        .unwrap_or_default();
    if carrying.len() >= MAX_ACTIVE_ORDERS as usize {
        return Err(OfferError::AtCapacity);
    }
    if let Some(current) = carrying.first() {
        let order = order_points(&mut tx, row.order_id)
            .await?
            .ok_or(OfferError::OrderUnavailable)?;
        // Where the driver is; without a position, where it is headed next.
        let position = match location.last_fix(driver_id).await {
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
    record(
        &mut tx,
        &OrderEvent {
            topic: "dispatch",
            order_id: row.order_id,
            event_type: "driver_assigned",
            actor: Actor::Driver(driver_id),
            details: json!({
                "offer_id": offer_id,
                "driver_id": driver_id,
                "round": rounds,
                "seconds_since_confirmed": since_confirmed,
            }),
            publish: true,
        },
    )
    .await?;
    let customer_id: i64 = sqlx::query_scalar("SELECT customer_id FROM orders WHERE id = $1")
        .bind(row.order_id)
        .fetch_one(&mut *tx)
        .await?;
    notify::enqueue(
        &mut tx,
        row.order_id,
        Audience::Customer,
        Some(customer_id),
        "driver_assigned",
        json!({ "order_id": row.order_id, "driver_id": driver_id }),
    )
    .await?;
    // The ETA now includes the driver's way to the restaurant.
    jobs::enqueue(
        &mut tx,
        &RefreshEta {
            order_id: row.order_id,
        },
        std::time::Duration::ZERO,
    )
    .await?;
    tx.commit().await?;
    metrics::counter!(OFFERS_TOTAL, "outcome" => "accepted").increment(1);
    metrics::histogram!(MATCH_ROUNDS).record(f64::from(rounds));
    if let Some(seconds) = since_confirmed {
        metrics::histogram!(MATCH_DURATION).record(seconds.max(0.0));
    }
    tracing::info!(
        offer_id,
        order_id = row.order_id,
        driver_id,
        "offer accepted; driver assigned"
    );
    sync_driver_load(db, location, driver_id).await;
    Ok(Accepted {
        order_id: row.order_id,
        driver_id,
    })
}

/// Cancels an order's pending offer (the order was cancelled), on the cancel's transaction.
/// Returns the offers cancelled and their drivers.
pub async fn cancel_pending(
    conn: &mut PgConnection,
    order_id: i64,
) -> Result<Vec<(i64, i64)>, sqlx::Error> {
    let cancelled: Vec<(i64, i64)> = sqlx::query_as(
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
    driver_id: i64,
) -> Result<u64, OfferError> {
    let pending: Vec<(i64, i64)> = sqlx::query_as(
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
        .is_some()
        {
            declined += 1;
        }
    }
    Ok(declined)
}

/// Writes a driver's active-order count and tracked order to Valkey, where the nearby search
/// reads them. Best effort: a failure is logged, and matching re-checks capacity in Postgres.
pub async fn sync_driver_load(db: &PgPool, location: &LocationService, driver_id: i64) {
    let load: Result<(i64, Option<i64>), sqlx::Error> = sqlx::query_as(
        "SELECT count(*), min(id) FROM orders WHERE driver_id = $1 AND status = ANY($2)",
    )
    .bind(driver_id)
    .bind(&ACTIVE_STATES[..])
    .fetch_one(db)
    .await;
    let outcome = match load {
        Ok((count, tracking)) => location
            .set_assignment(
                driver_id,
                tracking,
                u32::try_from(count).unwrap_or(u32::MAX),
            )
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(error) = outcome {
        tracing::warn!(
            driver_id,
            error,
            "could not update the driver's load in Valkey"
        );
    }
}
