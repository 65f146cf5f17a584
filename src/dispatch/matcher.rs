//! Who can take an order: look up candidates (5 km, then 10 km), keep those who can take the
//! order, score them ([`Dispatcher::search`]), and, under the order's lock, take the best one
//! still free ([`Dispatcher::lock_candidate`]). A matching round
//! ([`crate::workflows::matching`]) makes the offer or schedules the next round.

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use sqlx::PgConnection;

use crate::breaker::BreakerError;
use crate::dispatch::batch::{self, Batch, NewOrder};
use crate::dispatch::carried::{carried_orders, conditions};
use crate::dispatch::score::{self, Breakdown, Candidate, OrderFacts};
use crate::dispatch::{Dispatcher, EXPANDED_RADIUS_KM, SEARCH_RADIUS_KM, WAITING_STATES};
use crate::domain::OrderId;
use crate::eta::routing::Routing;
use crate::geo::Point;
use crate::location::NearbyDriver;

/// What matching reads of an order: where it waits, and whether it still waits.
#[derive(Debug, sqlx::FromRow)]
pub struct OrderRow {
    status: String,
    has_driver: bool,
    match_round: i32,
    /// Seconds until the food is expected ready (negative once past), from the restaurant's
    /// estimate; `None` before confirmation.
    prep_remaining_s: Option<f64>,
    prep_time_minutes: i32,
    /// The order's market dispatches by cycle.
    by_cycle: bool,
    /// That market's last cycle finished recently.
    cycle_live: bool,
    r_lat: f64,
    r_lon: f64,
    c_lat: f64,
    c_lon: f64,
    offer_pending: bool,
}

impl OrderRow {
    /// Whether the order waits for a driver: unassigned, in a waiting state.
    pub fn waiting(&self) -> bool {
        !self.has_driver && WAITING_STATES.contains(&self.status.as_str())
    }

    /// Where the order is picked up.
    pub fn restaurant(&self) -> Point {
        Point {
            lat: self.r_lat,
            lon: self.r_lon,
        }
    }

    /// How long until the food is ready: zero once it is (or was expected to be), the
    /// restaurant's whole prep time before confirmation.
    pub fn prep_remaining(&self) -> Duration {
        if self.status == "READY_FOR_PICKUP" {
            return Duration::ZERO;
        }
        let seconds = self
            .prep_remaining_s
            .unwrap_or(f64::from(self.prep_time_minutes) * 60.0);
        Duration::try_from_secs_f64(seconds.max(0.0)).unwrap_or(Duration::ZERO)
    }

    fn facts(&self) -> OrderFacts {
        OrderFacts {
            restaurant: self.restaurant(),
            prep_remaining: self.prep_remaining(),
        }
    }

    /// Whether the order's market dispatches by cycle, and its cycles run.
    pub fn cycle(&self) -> (bool, bool) {
        (self.by_cycle, self.cycle_live)
    }

    /// The order's round counter (`orders.match_round`).
    pub fn match_round(&self) -> u32 {
        u32::try_from(self.match_round).unwrap_or(1)
    }

    /// Whether an offer for it is pending.
    pub fn offer_pending(&self) -> bool {
        self.offer_pending
    }

    /// Where it is picked up and delivered.
    pub fn new_order(&self) -> NewOrder {
        NewOrder::at(self.r_lat, self.r_lon, self.c_lat, self.c_lon)
    }
}

/// When an order's food is expected ready, in SQL over `o` (orders) and `r` (restaurants):
/// the restaurant's estimate, else its usual prep time after confirmation.
pub const FOOD_READY_AT: &str =
    "COALESCE(o.food_ready_at, o.confirmed_at + make_interval(mins => r.prep_time_minutes))";

const ORDER_QUERY: &str = "
    SELECT o.status, o.driver_id IS NOT NULL AS has_driver, o.match_round,
           EXTRACT(EPOCH FROM COALESCE(o.food_ready_at,
                   o.confirmed_at + make_interval(mins => r.prep_time_minutes)) - now())::float8
               AS prep_remaining_s,
           r.prep_time_minutes,
           m.dispatch = 'cycle' AS by_cycle,
           COALESCE(m.dispatch_cycle_at > now() - $2::interval, FALSE) AS cycle_live,
           ST_Y(r.location::geometry) AS r_lat, ST_X(r.location::geometry) AS r_lon,
           ST_Y(o.delivery_location::geometry) AS c_lat, ST_X(o.delivery_location::geometry) AS c_lon,
           EXISTS (SELECT 1 FROM offers f WHERE f.order_id = o.id AND f.status = 'pending') AS offer_pending
    FROM orders o JOIN restaurants r ON r.id = o.restaurant_id JOIN markets m ON m.id = o.market_id
    WHERE o.id = $1";

/// Reads the order; with `lock`, first takes its row lock and then reads in a new statement,
/// so the pending-offer check sees offers committed while we waited for the lock (a single
/// `SELECT … FOR UPDATE` would evaluate that subquery on its older snapshot).
/// `stale_after` is how old a market's last cycle may be for its cycles to count as running.
pub async fn load_order(
    conn: &mut PgConnection,
    order_id: OrderId,
    lock: bool,
    stale_after: Duration,
) -> Result<Option<OrderRow>, sqlx::Error> {
    if lock {
        sqlx::query("SELECT 1 FROM orders WHERE id = $1 FOR UPDATE")
            .bind(order_id)
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query_as(ORDER_QUERY)
        .bind(order_id)
        .bind(stale_after)
        .fetch_optional(conn)
        .await
}

/// What scoring reads of a driver in Postgres.
#[derive(Debug, sqlx::FromRow)]
pub struct DriverRow {
    pub id: i64,
    pub rating: f64,
    pub total_deliveries: i64,
    pub daily_goal: i64,
    pub delivered_today: i64,
    /// Holding a pending offer, or (with an order) offered that order within the re-offer
    /// window.
    pub excluded: bool,
}

/// The facts of the active drivers among `ids`, in one query; `order` marks those offered
/// that order within `reoffer_after` as excluded, besides those holding a pending offer.
pub async fn driver_facts(
    conn: &mut PgConnection,
    ids: &[i64],
    order: Option<OrderId>,
    reoffer_after: Duration,
) -> Result<Vec<DriverRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT d.id, d.rating::float8 AS rating, d.total_deliveries::int8 AS total_deliveries,
                d.daily_delivery_goal::int8 AS daily_goal,
                (SELECT count(*) FROM orders o
                  WHERE o.driver_id = d.id AND o.delivered_at >= date_trunc('day', now())) AS delivered_today,
                EXISTS (SELECT 1 FROM offers f
                         WHERE f.driver_id = d.id
                           AND (f.status = 'pending'
                                OR (f.order_id = $2 AND f.created_at > now() - $3::interval)))
                    AS excluded
         FROM drivers d WHERE d.id = ANY($1) AND d.is_active",
    )
    .bind(ids)
    .bind(order)
    .bind(reoffer_after)
    .fetch_all(conn)
    .await
}

/// A search that found candidates, and what the round can tell operators about it.
#[derive(Debug)]
pub struct Search {
    /// The radius of the last ring searched.
    pub radius_km: f64,
    /// Drivers found nearby.
    pub found: usize,
    /// Those who can take the order, best first, with their scores.
    pub ranked: Vec<(Candidate, Breakdown)>,
}

/// Turns nearby drivers into eligible, scored candidates: two queries for all of them
/// (driver facts, orders they carry), never one per driver.
async fn eligible(
    conn: &mut PgConnection,
    routing: &Routing,
    order_id: OrderId,
    order: &OrderRow,
    nearby: &[NearbyDriver],
    reoffer_after: Duration,
) -> Result<Vec<(Candidate, Breakdown)>, sqlx::Error> {
    if nearby.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = nearby.iter().map(|d| d.driver_id).collect();
    let drivers = driver_facts(&mut *conn, &ids, Some(order_id), reoffer_after).await?;
    let carried = carried_orders(&mut *conn, &ids).await?;
    let positions: HashMap<i64, &NearbyDriver> = nearby.iter().map(|d| (d.driver_id, d)).collect();
    let new_order = order.new_order();
    let now = Utc::now();
    let conditions = |driver: Point| conditions(routing, driver, now);
    // Who can take the order at all: not excluded, and idle or carrying one order this one
    // batches with under every rule.
    let mut able = Vec::new();
    for d in drivers.into_iter().filter(|d| !d.excluded) {
        let Some(at) = positions.get(&d.id) else {
            continue;
        };
        let position = Point {
            lat: at.lat,
            lon: at.lon,
        };
        let carrying = carried.get(&d.id).map_or(&[][..], Vec::as_slice);
        let batch = if carrying.is_empty() {
            None
        } else {
            match batch::check(&conditions(position), carrying, &new_order) {
                Ok(batch) => Some(batch),
                Err(_) => continue,
            }
        };
        able.push((
            d,
            position,
            u32::try_from(carrying.len()).unwrap_or(u32::MAX),
            batch,
        ));
    }
    // Arrival times for all of them in one routing request.
    let sources: Vec<Point> = able.iter().map(|(_, p, _, _)| *p).collect();
    let arrivals = routing
        .routes_to(&sources, order.facts().restaurant, now)
        .await;
    let candidates = able
        .into_iter()
        .zip(arrivals)
        .map(|((d, position, active_orders, batch), leg)| Candidate {
            driver_id: d.id,
            position,
            active_orders,
            rating: d.rating,
            total_deliveries: d.total_deliveries,
            delivered_today: d.delivered_today,
            daily_goal: d.daily_goal,
            arrival: leg.duration,
            batch,
        })
        .collect();
    Ok(score::rank(candidates, &order.facts()))
}

impl Dispatcher {
    async fn lookup(
        &self,
        at: Point,
        radius_km: f64,
    ) -> Result<Vec<NearbyDriver>, BreakerError<redis::RedisError>> {
        self.breaker
            .call(
                self.location
                    .find_nearby_drivers(at, radius_km, self.settings.candidates),
            )
            .await
    }

    /// Candidates within 5 km, else within 10 km. `Err` carries why the lookup failed.
    pub async fn search(&self, order_id: OrderId, order: &OrderRow) -> Result<Search, String> {
        let at = order.facts().restaurant;
        let mut last = Search {
            radius_km: SEARCH_RADIUS_KM,
            found: 0,
            ranked: Vec::new(),
        };
        for radius_km in [SEARCH_RADIUS_KM, EXPANDED_RADIUS_KM] {
            let nearby = self.lookup(at, radius_km).await.map_err(|e| {
                tracing::warn!(order_id = order_id.get(), error = %e, "candidate lookup failed");
                match e {
                    BreakerError::Open => "candidate lookup circuit open".to_owned(),
                    BreakerError::Timeout(_) => "candidate lookup timed out".to_owned(),
                    BreakerError::Failed(_) => "candidate lookup failed".to_owned(),
                }
            })?;
            let mut conn = self.db.acquire().await.map_err(|e| {
                tracing::warn!(order_id = order_id.get(), error = %e, "database unavailable for scoring");
                "database unavailable".to_owned()
            })?;
            let ranked = eligible(
                &mut conn,
                &self.routing,
                order_id,
                order,
                &nearby,
                self.settings.reoffer_after,
            )
            .await
            .map_err(|e| {
                tracing::warn!(order_id = order_id.get(), error = %e, "candidate facts query failed");
                "candidate facts unavailable".to_owned()
            })?;
            last = Search {
                radius_km,
                found: nearby.len(),
                ranked,
            };
            if !last.ranked.is_empty() {
                break;
            }
        }
        Ok(last)
    }

    /// The best-ranked candidate that can still take the order, under its row lock: not
    /// locked by another round or an accept right now (`SKIP LOCKED`: no waiting, so rounds
    /// for different orders never deadlock), still online, holding no pending offer, and
    /// carrying the orders it was scored with, with which this one still batches. `None` when
    /// every candidate was taken meanwhile.
    pub async fn lock_candidate<'a>(
        &self,
        tx: &mut PgConnection,
        order: NewOrder,
        ranked: &'a [(Candidate, Breakdown)],
    ) -> Result<Option<(&'a Candidate, &'a Breakdown, Option<Batch>)>, sqlx::Error> {
        for (candidate, breakdown) in ranked {
            let locked: Option<i32> = sqlx::query_scalar(
                "SELECT 1 FROM drivers WHERE id = $1 AND is_active FOR UPDATE SKIP LOCKED",
            )
            .bind(candidate.driver_id)
            .fetch_optional(&mut *tx)
            .await?;
            if locked.is_none() {
                continue;
            }
            // A new statement, so it sees an offer committed by whoever held the lock before.
            let busy: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM offers WHERE driver_id = $1 AND status = 'pending')",
            )
            .bind(candidate.driver_id)
            .fetch_one(&mut *tx)
            .await?;
            if busy {
                continue;
            }
            let carrying = carried_orders(&mut *tx, &[candidate.driver_id])
                .await?
                .remove(&candidate.driver_id)
                .unwrap_or_default();
            if u32::try_from(carrying.len()).ok() != Some(candidate.active_orders) {
                continue;
            }
            let batch = if carrying.is_empty() {
                None
            } else {
                let at = conditions(&self.routing, candidate.position, Utc::now());
                match batch::check(&at, &carrying, &order) {
                    Ok(batch) => Some(batch),
                    Err(_) => continue,
                }
            };
            return Ok(Some((candidate, breakdown, batch)));
        }
        Ok(None)
    }
}
