//! The dispatch cycle of a market: every few seconds, offer the orders waiting for a driver
//! as one assignment of the whole market ([`crate::dispatch::assign`]) instead of one order
//! at a time.
//!
//! # One cycle ([`run_cycle`])
//! 1. A `dispatch_cycles` row (`running`), so an operator sees it (`courier admin dispatch
//!    cycles`) and the offers can name it.
//! 2. The pool: the market's orders waiting for a driver with no pending offer (one query,
//!    with the drivers each may not be offered again yet), and its available drivers (one
//!    Valkey script call, through the candidate lookup's circuit breaker) with their facts and
//!    the orders they carry (two queries).
//! 3. Driving times of every driver to every pooled restaurant: one routing table request,
//!    or the built-in estimator when there is no engine or it failed.
//! 4. The plan: pairs, the solve, and which pairs are due.
//! 5. Each due pair offered in its own transaction, exactly as a matching round offers
//!    ([`matching::offer_from_cycle`]): the order's lock, the driver's lock and re-checks,
//!    the offer row, its timeout job, the driver's note and the events. A pair whose order or
//!    driver moved on since step 2 is skipped (`raced`), never forced.
//! 6. The row is finished (`done` with its figures, or `failed` with the error) and the
//!    market's `dispatch_cycle_at` set: `match_driver` jobs of the market hand their orders
//!    to the cycle only while that is recent.
//!
//! # Who runs it ([`run`])
//! Every worker process loops every [`DispatchSettings::cycle_interval`]; each market's cycle
//! runs under a Postgres advisory lock taken with `pg_try_advisory_lock`, so across the fleet
//! one process runs a market's cycle at a time and the others skip it. A crashed process's
//! lock goes with its connection. The invariants of matching hold whoever offers: every offer
//! is made under the order's and the driver's row locks, whether by a cycle, a concurrent
//! cycle of another process, or a per-order round.
//!
//! # When a cycle cannot run
//! Orders are never left to the cycle alone: each `match_driver` job of a cycle market
//! schedules the per-order round as a fallback for when the order is due plus a grace
//! ([`crate::dispatch::handover`]), and a market whose cycles stopped finishing is matched per
//! order at once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::Serialize;
use sqlx::PgPool;

use crate::breaker::BreakerError;
use crate::dispatch::assign::{self, PoolDriver, PoolOrder};
use crate::dispatch::batch::NewOrder;
use crate::dispatch::carried::{carried_orders, conditions};
use crate::dispatch::matcher::{FOOD_READY_AT, driver_facts};
use crate::dispatch::{Dispatcher, WAITING_STATES};
use crate::domain::OrderId;
use crate::geo::Point;
use crate::shutdown::CancellationToken;
use crate::workflows::matching::{self, CycleNote, MatchError, RoundOutcome};

/// Most orders one cycle pools (the oldest first); the rest wait for the next.
pub const MAX_POOL_ORDERS: i64 = 1_000;
/// Most drivers one cycle reads (nearest the market's centre first).
pub const MAX_POOL_DRIVERS: usize = 4_000;
/// The advisory lock class of dispatch cycles (the key is the market's id).
pub const CYCLE_LOCK: i32 = 0x0C1C;
/// Name of the histogram of cycle durations, by market.
pub const CYCLE_DURATION: &str = "dispatch_cycle_duration_seconds";

/// What one cycle did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CycleReport {
    pub id: i64,
    pub orders_pooled: usize,
    pub drivers_available: usize,
    pub offered: usize,
    pub held: usize,
    pub unmatched: usize,
    pub raced: usize,
    pub routing_estimated: bool,
    pub table_ms: f64,
    pub solve_ms: f64,
}

/// Why a cycle failed; recorded on its row, and the next cycle tries again.
#[derive(Debug, thiserror::Error)]
pub enum CycleError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The driver lookup failed, timed out, or its circuit breaker is open (the one the
    /// per-order rounds use).
    #[error("driver lookup: {0}")]
    Lookup(#[from] BreakerError<redis::RedisError>),
    #[error("offer failed: {0}")]
    Offer(#[from] MatchError),
}

#[derive(sqlx::FromRow)]
struct PoolRow {
    id: i64,
    status: String,
    prep_remaining_s: Option<f64>,
    r_lat: f64,
    r_lon: f64,
    c_lat: f64,
    c_lon: f64,
    excluded: Vec<i64>,
}

impl PoolRow {
    fn pool_order(&self) -> PoolOrder {
        let prep_remaining = if self.status == "READY_FOR_PICKUP" {
            0.0
        } else {
            self.prep_remaining_s.unwrap_or(0.0).max(0.0)
        };
        PoolOrder {
            order_id: self.id,
            order: NewOrder::at(self.r_lat, self.r_lon, self.c_lat, self.c_lon),
            prep_remaining: Duration::try_from_secs_f64(prep_remaining).unwrap_or(Duration::ZERO),
            excluded: self.excluded.clone(),
        }
    }
}

/// The market's orders waiting for a driver with no pending offer, oldest first.
async fn pool_orders(
    db: &PgPool,
    market_id: i64,
    reoffer_after: Duration,
) -> Result<Vec<PoolOrder>, sqlx::Error> {
    let rows: Vec<PoolRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT o.id, o.status,
                EXTRACT(EPOCH FROM {FOOD_READY_AT} - now())::float8 AS prep_remaining_s,
                ST_Y(r.location::geometry) AS r_lat, ST_X(r.location::geometry) AS r_lon,
                ST_Y(o.delivery_location::geometry) AS c_lat, ST_X(o.delivery_location::geometry) AS c_lon,
                ARRAY(SELECT f.driver_id FROM offers f
                       WHERE f.order_id = o.id AND f.created_at > now() - $2::interval) AS excluded
         FROM orders o JOIN restaurants r ON r.id = o.restaurant_id
         WHERE o.market_id = $1 AND o.status = ANY($3) AND o.driver_id IS NULL
           AND NOT EXISTS (SELECT 1 FROM offers f WHERE f.order_id = o.id AND f.status = 'pending')
         ORDER BY o.confirmed_at, o.id
         LIMIT $4"
    )))
    .bind(market_id)
    .bind(reoffer_after)
    .bind(&WAITING_STATES[..])
    .bind(MAX_POOL_ORDERS)
    .fetch_all(db)
    .await?;
    Ok(rows.iter().map(PoolRow::pool_order).collect())
}

/// The market's drivers who could take an order now, with their facts and what they carry.
async fn pool_drivers(
    dispatcher: &Dispatcher,
    market_id: i64,
) -> Result<Vec<PoolDriver>, CycleError> {
    let nearby = dispatcher
        .breaker
        .call(
            dispatcher
                .location
                .available_in(market_id, MAX_POOL_DRIVERS),
        )
        .await?;
    if nearby.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = nearby.iter().map(|d| d.driver_id).collect();
    let mut conn = dispatcher.db.acquire().await?;
    let facts = driver_facts(&mut conn, &ids, None, dispatcher.settings.reoffer_after).await?;
    let mut carried = carried_orders(&mut conn, &ids).await?;
    let positions: HashMap<i64, Point> = nearby
        .iter()
        .map(|d| {
            (
                d.driver_id,
                Point {
                    lat: d.lat,
                    lon: d.lon,
                },
            )
        })
        .collect();
    Ok(facts
        .into_iter()
        .filter(|d| !d.excluded)
        .filter_map(|d| {
            Some(PoolDriver {
                driver_id: d.id,
                position: *positions.get(&d.id)?,
                rating: d.rating,
                total_deliveries: d.total_deliveries,
                delivered_today: d.delivered_today,
                daily_goal: d.daily_goal,
                carrying: carried.remove(&d.id).unwrap_or_default(),
            })
        })
        .collect())
}

/// Runs one cycle of market `market_id` (the caller holds the market's cycle lock).
pub async fn run_cycle(dispatcher: &Dispatcher, market_id: i64) -> Result<CycleReport, CycleError> {
    let started = Instant::now();
    let id: i64 =
        sqlx::query_scalar("INSERT INTO dispatch_cycles (market_id) VALUES ($1) RETURNING id")
            .bind(market_id)
            .fetch_one(&dispatcher.db)
            .await?;
    let result = cycle(dispatcher, market_id, id).await;
    let market = dispatcher
        .location
        .markets()
        .snapshot()
        .await
        .ok()
        .and_then(|s| s.get(market_id).map(|m| m.slug.to_string()))
        .unwrap_or_else(|| market_id.to_string());
    metrics::histogram!(CYCLE_DURATION, "market" => market.clone())
        .record(started.elapsed().as_secs_f64());
    match &result {
        Ok(report) => {
            sqlx::query(
                "WITH done AS (
                     UPDATE dispatch_cycles SET status = 'done', finished_at = now(),
                            orders_pooled = $2, drivers_available = $3, offered = $4, held = $5,
                            unmatched = $6, raced = $7, routing_estimated = $8,
                            table_ms = $9, solve_ms = $10
                     WHERE id = $1 RETURNING market_id)
                 UPDATE markets SET dispatch_cycle_at = now() WHERE id = (SELECT market_id FROM done)",
            )
            .bind(id)
            .bind(count(report.orders_pooled))
            .bind(count(report.drivers_available))
            .bind(count(report.offered))
            .bind(count(report.held))
            .bind(count(report.unmatched))
            .bind(count(report.raced))
            .bind(report.routing_estimated)
            .bind(report.table_ms)
            .bind(report.solve_ms)
            .execute(&dispatcher.db)
            .await?;
            metrics::counter!("dispatch_cycles_total", "market" => market, "outcome" => "done")
                .increment(1);
            if report.offered + report.raced > 0 {
                tracing::info!(cycle = id, market_id, ?report, "dispatch cycle offered");
            }
        }
        Err(error) => {
            tracing::warn!(cycle = id, market_id, error = %error, "dispatch cycle failed");
            metrics::counter!("dispatch_cycles_total", "market" => market, "outcome" => "failed")
                .increment(1);
            sqlx::query(
                "UPDATE dispatch_cycles SET status = 'failed', finished_at = now(), error = $2
                 WHERE id = $1",
            )
            .bind(id)
            .bind(error.to_string())
            .execute(&dispatcher.db)
            .await?;
        }
    }
    result.map(|r| CycleReport { id, ..r })
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn millis(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1_000.0
}

async fn cycle(
    dispatcher: &Dispatcher,
    market_id: i64,
    id: i64,
) -> Result<CycleReport, CycleError> {
    let settings = &dispatcher.settings;
    let orders = pool_orders(&dispatcher.db, market_id, settings.reoffer_after).await?;
    let mut report = CycleReport {
        orders_pooled: orders.len(),
        ..CycleReport::default()
    };
    if orders.is_empty() {
        return Ok(report);
    }
    let drivers = pool_drivers(dispatcher, market_id).await?;
    report.drivers_available = drivers.len();
    if drivers.is_empty() {
        report.unmatched = orders.len();
        return Ok(report);
    }
    // One table request: every driver to every pooled restaurant.
    let now = Utc::now();
    let routing = &dispatcher.routing;
    let mut restaurants: Vec<Point> = Vec::new();
    let mut restaurant_of: Vec<usize> = Vec::with_capacity(orders.len());
    for order in &orders {
        let at = order.order.restaurant;
        let index = restaurants
            .iter()
            .position(|&r| r == at)
            .unwrap_or_else(|| {
                restaurants.push(at);
                restaurants.len() - 1
            });
        restaurant_of.push(index);
    }
    let sources: Vec<Point> = drivers.iter().map(|d| d.position).collect();
    let table_started = Instant::now();
    let table = routing.matrix(&sources, &restaurants, now).await;
    report.table_ms = millis(table_started);
    report.routing_estimated = table.is_none();
    let traffic: Vec<f64> = restaurants
        .iter()
        .map(|&r| routing.traffic(r, now))
        .collect();
    let arrival = |d: usize, o: usize| {
        let r = restaurant_of[o];
        table.as_ref().and_then(|t| t[d][r]).unwrap_or_else(|| {
            routing
                .estimator()
                .route(sources[d], restaurants[r])
                .duration
                .mul_f64(traffic[r])
        })
    };
    let solve_started = Instant::now();
    let pairs = assign::pairs(
        &orders,
        &drivers,
        arrival,
        |driver| conditions(routing, driver, now),
        &settings.cycle,
    );
    let plan = assign::plan(pairs, orders.len());
    report.solve_ms = millis(solve_started);
    report.held = plan.held.len();
    report.unmatched = plan.unmatched.len();
    for pairing in &plan.offers {
        let order_id = OrderId(orders[pairing.order].order_id);
        let note = CycleNote {
            id,
            orders_pooled: orders.len(),
            drivers_available: drivers.len(),
            why: pairing.why(),
        };
        let made = matching::offer_from_cycle(
            dispatcher,
            order_id,
            &(pairing.candidate.clone(), pairing.breakdown.clone()),
            note,
        )
        .await?;
        match made {
            Some(RoundOutcome::Offered { .. }) => report.offered += 1,
            _ => report.raced += 1,
        }
    }
    Ok(report)
}

/// Runs market `market_id`'s cycle if no other process is running it: `None` when the
/// market's lock is held elsewhere.
pub async fn run_if_free(
    dispatcher: &Dispatcher,
    market_id: i64,
) -> Result<Option<CycleReport>, CycleError> {
    // The lock lives on this connection for the cycle, and is released on it after.
    let mut lock = dispatcher.db.acquire().await?;
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2::int4)")
        .bind(CYCLE_LOCK)
        .bind(i32::try_from(market_id).unwrap_or(i32::MAX))
        .fetch_one(&mut *lock)
        .await?;
    if !got {
        return Ok(None);
    }
    let result = run_cycle(dispatcher, market_id).await;
    let released = sqlx::query("SELECT pg_advisory_unlock($1, $2::int4)")
        .bind(CYCLE_LOCK)
        .bind(i32::try_from(market_id).unwrap_or(i32::MAX))
        .execute(&mut *lock)
        .await;
    if let Err(error) = released {
        // The connection is suspect: drop it rather than return it to the pool with the lock.
        tracing::warn!(market_id, error = %error, "could not release a dispatch cycle lock");
        lock.detach();
    }
    result.map(Some)
}

/// The markets that dispatch by cycle.
async fn cycle_markets(db: &PgPool) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM markets WHERE active AND dispatch = 'cycle' ORDER BY id")
        .fetch_all(db)
        .await
}

/// Runs every cycle market's cycle every `settings.cycle_interval` until `stop`.
pub async fn run(dispatcher: Dispatcher, stop: CancellationToken) {
    let interval = dispatcher.settings.cycle_interval;
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let markets = match cycle_markets(&dispatcher.db).await {
            Ok(markets) => markets,
            Err(error) => {
                tracing::warn!(error = %error, "could not list the cycle markets");
                continue;
            }
        };
        for market_id in markets {
            if stop.is_cancelled() {
                return;
            }
            if let Err(error) = run_if_free(&dispatcher, market_id).await {
                tracing::warn!(market_id, error = %error, "dispatch cycle did not run");
            }
        }
    }
}
