//! What a batching decision rests on besides the pure rules of [`crate::dispatch::batch`]: the
//! orders drivers carry and where an order is picked up and delivered (from Postgres), and the
//! conditions of the moment (estimator and traffic). Shared by the matching round (scoring, and
//! its re-check under the driver's lock) and by accept (its re-check under the same lock).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::dispatch::batch::{CarriedOrder, Conditions, NewOrder};
use crate::eta::routing::Routing;
use crate::geo::Point;
use crate::location::ACTIVE_STATES;

/// The conditions a batching decision for a driver at `driver` is made under at `now`: the
/// routing's estimator and the traffic of that hour in the driver's market.
pub fn conditions(routing: &Routing, driver: Point, now: DateTime<Utc>) -> Conditions<'_> {
    Conditions {
        driver,
        estimator: routing.estimator(),
        traffic: routing.traffic(driver, now),
    }
}

#[derive(Debug, sqlx::FromRow)]
struct CarriedRow {
    driver_id: i64,
    picked_up: bool,
    r_lat: f64,
    r_lon: f64,
    c_lat: f64,
    c_lon: f64,
}

/// The active orders of each of `drivers`, oldest first, in one query.
pub async fn carried_orders(
    conn: &mut PgConnection,
    drivers: &[i64],
) -> Result<HashMap<i64, Vec<CarriedOrder>>, sqlx::Error> {
    let rows: Vec<CarriedRow> = sqlx::query_as(
        "SELECT o.driver_id, o.status = 'PICKED_UP' AS picked_up,
                ST_Y(r.location::geometry) AS r_lat, ST_X(r.location::geometry) AS r_lon,
                ST_Y(o.delivery_location::geometry) AS c_lat, ST_X(o.delivery_location::geometry) AS c_lon
         FROM orders o JOIN restaurants r ON r.id = o.restaurant_id
         WHERE o.driver_id = ANY($1) AND o.status = ANY($2) ORDER BY o.id",
    )
    .bind(drivers)
    .bind(&ACTIVE_STATES[..])
    .fetch_all(conn)
    .await?;
    let mut carried: HashMap<i64, Vec<CarriedOrder>> = HashMap::new();
    for row in rows {
        carried
            .entry(row.driver_id)
            .or_default()
            .push(CarriedOrder {
                restaurant: Point {
                    lat: row.r_lat,
                    lon: row.r_lon,
                },
                customer: Point {
                    lat: row.c_lat,
                    lon: row.c_lon,
                },
                picked_up: row.picked_up,
            });
    }
    Ok(carried)
}

/// Where `order_id` is picked up and delivered, if it exists.
pub async fn order_points(
    conn: &mut PgConnection,
    order_id: i64,
) -> Result<Option<NewOrder>, sqlx::Error> {
    let row: Option<(f64, f64, f64, f64)> = sqlx::query_as(
        "SELECT ST_Y(r.location::geometry), ST_X(r.location::geometry),
                ST_Y(o.delivery_location::geometry), ST_X(o.delivery_location::geometry)
         FROM orders o JOIN restaurants r ON r.id = o.restaurant_id WHERE o.id = $1",
    )
    .bind(order_id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|(r_lat, r_lon, c_lat, c_lon)| NewOrder {
        restaurant: Point {
            lat: r_lat,
            lon: r_lon,
        },
        customer: Point {
            lat: c_lat,
            lon: c_lon,
        },
    }))
}
