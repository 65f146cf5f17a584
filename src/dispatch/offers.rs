//! Offers as drivers and operators read them: a driver's pending offers and one offer with
//! its restaurant and destination. Offers are made and answered by the order's workflow
//! ([`crate::workflows::matching`], [`crate::workflows::offers`]).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

use crate::domain::{DriverId, OfferId, OrderId, RestaurantId};

/// An offer as drivers and operators see it.
#[derive(Clone, Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct OfferView {
    pub id: OfferId,
    pub order_id: OrderId,
    pub driver_id: DriverId,
    pub round: i32,
    pub status: String,
    pub score: f64,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub responded_at: Option<DateTime<Utc>>,
    pub restaurant_id: RestaurantId,
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
    driver_id: DriverId,
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
    offer_id: OfferId,
) -> Result<Option<OfferView>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("{VIEW_QUERY} WHERE f.id = $1")))
        .bind(offer_id)
        .fetch_optional(conn)
        .await
}
