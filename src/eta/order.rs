//! The ETA of one order: reads what the formula needs (Postgres for the order, Valkey for the
//! driver's position), asks [`Routing`] for the legs, and applies [`estimate`].

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::domain::OrderStatus;
use crate::eta::routing::Routing;
use crate::eta::{Eta, EtaInputs, estimate};
use crate::geo::Point;
use crate::location::LocationService;

#[derive(Debug, sqlx::FromRow)]
struct Facts {
    status: String,
    driver_id: Option<i64>,
    confirmed_at: Option<DateTime<Utc>>,
    delivered_at: Option<DateTime<Utc>>,
    /// Confirmation to the food's expected readiness: the kitchen's estimate, else the
    /// restaurant's usual prep time.
    prep_s: f64,
    r_lat: f64,
    r_lon: f64,
    c_lat: f64,
    c_lon: f64,
}

/// Why an ETA could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum EtaError {
    #[error("order not found")]
    NotFound,
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// The ETA of `order_id` at `now`; `Ok(None)` for completed and cancelled orders. A driver
/// whose position is unknown (Valkey down, phone silent) counts as not yet located.
pub async fn order_eta(
    db: &PgPool,
    location: &LocationService,
    routing: &Routing,
    order_id: i64,
    now: DateTime<Utc>,
) -> Result<Option<Eta>, EtaError> {
    let facts: Facts = sqlx::query_as(
        "SELECT o.status, o.driver_id, o.confirmed_at, o.delivered_at,
                EXTRACT(EPOCH FROM COALESCE(o.food_ready_at - o.confirmed_at,
                                            make_interval(mins => r.prep_time_minutes)))::float8 AS prep_s,
                ST_Y(r.location::geometry) AS r_lat, ST_X(r.location::geometry) AS r_lon,
                ST_Y(o.delivery_location::geometry) AS c_lat, ST_X(o.delivery_location::geometry) AS c_lon
         FROM orders o JOIN restaurants r ON r.id = o.restaurant_id WHERE o.id = $1",
    )
    .bind(order_id)
    .fetch_optional(db)
    .await?
    .ok_or(EtaError::NotFound)?;
    let status: OrderStatus = facts
        .status
        .parse()
        .map_err(|e: crate::domain::UnknownStatus| sqlx::Error::Decode(Box::new(e)))?;
    if matches!(status, OrderStatus::Completed | OrderStatus::Cancelled) {
        return Ok(None);
    }
    let restaurant = Point {
        lat: facts.r_lat,
        lon: facts.r_lon,
    };
    let customer = Point {
        lat: facts.c_lat,
        lon: facts.c_lon,
    };
    let driver_at = match facts.driver_id {
        Some(driver) => location.position(driver).await.unwrap_or_else(|error| {
            tracing::warn!(driver, error = %error, "driver position unavailable for the ETA");
            None
        }),
        None => None,
    };
    let picked_up = status == OrderStatus::PickedUp;
    let to_customer = routing.route(restaurant, customer, now).await;
    let (to_restaurant, driver_to_customer) = match driver_at {
        Some(at) if picked_up => (None, Some(routing.route(at, customer, now).await)),
        Some(at) => (Some(routing.route(at, restaurant, now).await), None),
        None => (None, None),
    };
    let estimated = to_customer.estimated
        || to_restaurant.is_some_and(|l| l.estimated)
        || driver_to_customer.is_some_and(|l| l.estimated);
    let inputs = EtaInputs {
        status,
        confirmed_at: facts.confirmed_at,
        delivered_at: facts.delivered_at,
        prep_time: Duration::try_from_secs_f64(facts.prep_s.max(0.0)).unwrap_or(Duration::ZERO),
        to_restaurant: to_restaurant.map(|l| l.duration),
        restaurant_to_customer: to_customer.duration,
        driver_to_customer: driver_to_customer.map(|l| l.duration),
        estimated,
    };
    Ok(estimate(&inputs, now))
}
