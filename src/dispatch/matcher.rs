//! One matching round of one order: look up candidates (5 km, then 10 km), keep those who can
//! take the order, score them, and offer the order to the best — or, when nobody can, schedule
//! the next round. Run by the `match_driver` job; safe to run twice or concurrently for one
//! order (see [`run_round`]).

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use sqlx::PgConnection;

use chrono::Utc;

use crate::dispatch::batch::{self, Batch, NewOrder};
use crate::dispatch::breaker::BreakerError;
use crate::dispatch::carried::{carried_orders, conditions};
use crate::dispatch::score::{self, Breakdown, Candidate, OrderFacts};
use crate::dispatch::{
    Dispatcher, EXPANDED_RADIUS_KM, OFFERS_TOTAL, SEARCH_RADIUS_KM, WAITING_STATES, retry_delay,
};
use crate::eta::routing::Routing;
use crate::geo::Point;
use crate::jobs::match_driver::MatchDriver;
use crate::jobs::offer_timeout::OfferTimeout;
use crate::jobs::{self, EnqueueError};
use crate::location::NearbyDriver;
use crate::notify::{self, Audience};
use crate::workflows::events::{OrderEvent, record};
use crate::workflows::machine::Actor;

/// What a round did.
#[derive(Clone, Debug, PartialEq)]
pub enum RoundOutcome {
    /// The order no longer waits for a driver (assigned, cancelled, delivered…).
    NotWaiting,
    /// An offer is already pending; its expiry or answer moves matching on.
    OfferPending,
    /// A newer round or a concurrent job owns the order's matching.
    Superseded,
    /// The order was offered.
    Offered {
        offer_id: i64,
        driver_id: i64,
        score: f64,
    },
    /// Nobody could take the order; `round` is scheduled after `delay`.
    Rescheduled { round: u32, delay: Duration },
}

/// Why a round failed; the job retries it.
#[derive(Debug, thiserror::Error)]
pub enum MatchError {
    #[error("order {0} does not exist")]
    NotFound(i64),
    #[error("could not enqueue: {0}")]
    Enqueue(#[from] EnqueueError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("valkey error: {0}")]
    Valkey(#[from] redis::RedisError),
}

#[derive(Debug, sqlx::FromRow)]
struct OrderRow {
    status: String,
    has_driver: bool,
    match_round: i32,
    elapsed_since_confirmed_s: Option<f64>,
    prep_time_minutes: i32,
    r_lat: f64,
    r_lon: f64,
    c_lat: f64,
    c_lon: f64,
    offer_pending: bool,
}

impl OrderRow {
    fn waiting(&self) -> bool {
        !self.has_driver && WAITING_STATES.contains(&self.status.as_str())
    }

    fn facts(&self) -> OrderFacts {
        let prep_remaining = if self.status == "READY_FOR_PICKUP" {
            Duration::ZERO
        } else {
            let total = f64::from(self.prep_time_minutes) * 60.0;
            let elapsed = self.elapsed_since_confirmed_s.unwrap_or(0.0);
            Duration::from_secs_f64((total - elapsed).max(0.0))
        };
        OrderFacts {
            restaurant: Point {
                lat: self.r_lat,
                lon: self.r_lon,
            },
            prep_remaining,
        }
    }

    fn new_order(&self) -> NewOrder {
        NewOrder {
            restaurant: Point {
                lat: self.r_lat,
                lon: self.r_lon,
            },
            customer: Point {
                lat: self.c_lat,
                lon: self.c_lon,
            },
        }
    }
}

const ORDER_QUERY: &str = "
    SELECT o.status, o.driver_id IS NOT NULL AS has_driver, o.match_round,
           EXTRACT(EPOCH FROM now() - o.confirmed_at)::float8 AS elapsed_since_confirmed_s,
           r.prep_time_minutes,
           ST_Y(r.location::geometry) AS r_lat, ST_X(r.location::geometry) AS r_lon,
           ST_Y(o.delivery_location::geometry) AS c_lat, ST_X(o.delivery_location::geometry) AS c_lon,
           EXISTS (SELECT 1 FROM offers f WHERE f.order_id = o.id AND f.status = 'pending') AS offer_pending
    FROM orders o JOIN restaurants r ON r.id = o.restaurant_id
    WHERE o.id = $1";

/// Reads the order; with `lock`, first takes its row lock and then reads in a new statement,
/// so the pending-offer check sees offers committed while we waited for the lock (a single
/// `SELECT … FOR UPDATE` would evaluate that subquery on its older snapshot).
async fn load_order(
    conn: &mut PgConnection,
    order_id: i64,
    lock: bool,
) -> Result<OrderRow, MatchError> {
    if lock {
        sqlx::query("SELECT 1 FROM orders WHERE id = $1 FOR UPDATE")
            .bind(order_id)
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query_as(ORDER_QUERY)
        .bind(order_id)
        .fetch_optional(conn)
        .await?
        .ok_or(MatchError::NotFound(order_id))
}

#[derive(Debug, sqlx::FromRow)]
struct DriverRow {
    id: i64,
    rating: f64,
    total_deliveries: i64,
    daily_goal: i64,
    delivered_today: i64,
    /// Offered this order within the re-offer window, or holding another pending offer.
    excluded: bool,
}

/// A search that found candidates, and what the round can tell operators about it.
#[derive(Debug)]
struct Search {
    radius_km: f64,
    found: usize,
    ranked: Vec<(Candidate, Breakdown)>,
}

/// Turns nearby drivers into eligible, scored candidates: two queries for all of them
/// (driver facts, orders they carry), never one per driver.
async fn eligible(
    conn: &mut PgConnection,
    routing: &Routing,
    order_id: i64,
    order: &OrderRow,
    nearby: &[NearbyDriver],
    reoffer_after: Duration,
) -> Result<Vec<(Candidate, Breakdown)>, sqlx::Error> {
    if nearby.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = nearby.iter().map(|d| d.driver_id).collect();
    let drivers: Vec<DriverRow> = sqlx::query_as(
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
    .bind(&ids)
    .bind(order_id)
    .bind(reoffer_after)
    .fetch_all(&mut *conn)
    .await?;
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
    async fn search(&self, order_id: i64, order: &OrderRow) -> Result<Search, String> {
        let at = order.facts().restaurant;
        let mut last = Search {
            radius_km: SEARCH_RADIUS_KM,
            found: 0,
            ranked: Vec::new(),
        };
        for radius_km in [SEARCH_RADIUS_KM, EXPANDED_RADIUS_KM] {
            let nearby = self.lookup(at, radius_km).await.map_err(|e| {
                tracing::warn!(order_id, error = %e, "candidate lookup failed");
                match e {
                    BreakerError::Open => "candidate lookup circuit open".to_owned(),
                    BreakerError::Timeout(_) => "candidate lookup timed out".to_owned(),
                    BreakerError::Failed(_) => "candidate lookup failed".to_owned(),
                }
            })?;
            let mut conn = self.db.acquire().await.map_err(|e| {
                tracing::warn!(order_id, error = %e, "database unavailable for scoring");
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
                tracing::warn!(order_id, error = %e, "candidate facts query failed");
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

    /// Runs matching round `round` for `order_id`.
    ///
    /// The search runs without locks; the decision is re-checked under the order's row lock
    /// before anything is written, so concurrent or repeated runs make at most one offer, and
    /// only the job of the order's current round schedules the next round.
    pub async fn run_round(&self, order_id: i64, round: u32) -> Result<RoundOutcome, MatchError> {
        let order = {
            let mut conn = self.db.acquire().await?;
            load_order(&mut conn, order_id, false).await?
        };
        if !order.waiting() {
            return Ok(RoundOutcome::NotWaiting);
        }
        if order.offer_pending {
            return Ok(RoundOutcome::OfferPending);
        }
        let search = self.search(order_id, &order).await;

        let mut tx = crate::store::begin(&self.db).await?;
        let locked = load_order(&mut tx, order_id, true).await?;
        if !locked.waiting() {
            return Ok(RoundOutcome::NotWaiting);
        }
        if locked.offer_pending {
            return Ok(RoundOutcome::OfferPending);
        }
        let current_round = u32::try_from(locked.match_round).unwrap_or(1);
        let outcome = match search {
            Ok(Search {
                radius_km,
                found,
                ranked,
            }) if !ranked.is_empty() => {
                match self
                    .offer(
                        &mut tx,
                        order_id,
                        locked.new_order(),
                        current_round,
                        radius_km,
                        found,
                        &ranked,
                    )
                    .await?
                {
                    Some(offered) => offered,
                    None if current_round != round => return Ok(RoundOutcome::Superseded),
                    None => {
                        let reason = "every eligible driver was taken meanwhile";
                        self.reschedule(&mut tx, order_id, round, radius_km, found, reason)
                            .await?
                    }
                }
            }
            other => {
                if current_round != round {
                    return Ok(RoundOutcome::Superseded);
                }
                let (radius_km, found, reason) = match other {
                    Ok(s) => (s.radius_km, s.found, "no eligible driver".to_owned()),
                    Err(reason) => (EXPANDED_RADIUS_KM, 0, reason),
                };
                self.reschedule(&mut tx, order_id, round, radius_km, found, &reason)
                    .await?
            }
        };
        tx.commit().await?;
        match &outcome {
            RoundOutcome::Offered {
                offer_id,
                driver_id,
                score,
            } => {
                metrics::counter!(OFFERS_TOTAL, "outcome" => "offered").increment(1);
                tracing::info!(order_id, offer_id, driver_id, score, "order offered");
            }
            RoundOutcome::Rescheduled { round, delay } => {
                tracing::info!(order_id, next_round = round, delay = ?delay, "no driver; next round scheduled");
            }
            _ => {}
        }
        Ok(outcome)
    }

    /// The best-ranked candidate that can still take the order, under its row lock: not
    /// locked by another round or an accept right now (`SKIP LOCKED`: no waiting, so rounds
    /// for different orders never deadlock), still online, holding no pending offer, and
    /// carrying the orders it was scored with, with which this one still batches. `None` when
    /// every candidate was taken meanwhile.
    async fn lock_candidate<'a>(
        &self,
        tx: &mut PgConnection,
        order: NewOrder,
        ranked: &'a [(Candidate, Breakdown)],
    ) -> Result<Option<(&'a Candidate, &'a Breakdown, Option<Batch>)>, MatchError> {
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

    #[allow(clippy::too_many_arguments)]
    async fn offer(
        &self,
        tx: &mut PgConnection,
        order_id: i64,
        order: NewOrder,
        round: u32,
        radius_km: f64,
        found: usize,
        ranked: &[(Candidate, Breakdown)],
    ) -> Result<Option<RoundOutcome>, MatchError> {
        let Some((best, breakdown, batch)) = self.lock_candidate(tx, order, ranked).await? else {
            return Ok(None);
        };
        let offered_before: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM offers WHERE order_id = $1)")
                .bind(order_id)
                .fetch_one(&mut *tx)
                .await?;
        let ttl = if offered_before {
            self.settings.later_offer_ttl
        } else {
            self.settings.first_offer_ttl
        };
        let details = json!({
            "round": round,
            "radius_km": radius_km,
            "candidates_found": found,
            "candidates_eligible": ranked.len(),
            "breakdown": breakdown,
            "batch": batch,
        });
        let offer_id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO offers (order_id, driver_id, round, score, score_breakdown, expires_at)
             SELECT $1, $2, $3, $4, $5, now() + make_interval(secs => $6)
             WHERE NOT EXISTS (SELECT 1 FROM offers
                               WHERE order_id = $1 AND driver_id = $2
                                 AND created_at > now() - $7::interval)
             RETURNING id",
        )
        .bind(order_id)
        .bind(best.driver_id)
        .bind(i32::try_from(round).unwrap_or(i32::MAX))
        .bind(breakdown.total)
        .bind(&details)
        .bind(ttl.as_secs_f64())
        .bind(self.settings.reoffer_after)
        .fetch_optional(&mut *tx)
        .await?;
        // The driver was offered this order since the search (and answered already): whoever
        // ended that offer enqueued the next round.
        let Some(offer_id) = offer_id else {
            return Ok(Some(RoundOutcome::Superseded));
        };
        // Before the commit, so the driver's polls find the offer the moment it exists; if
        // Valkey refuses, the round fails and is retried (the driver would not see it).
        self.location.note_offer(best.driver_id, ttl).await?;
        jobs::enqueue(tx, &OfferTimeout { offer_id }, ttl).await?;
        notify::enqueue(
            tx,
            order_id,
            Audience::Driver,
            Some(best.driver_id),
            "offer_made",
            json!({ "order_id": order_id, "offer_id": offer_id, "expires_in_s": ttl.as_secs_f64() }),
        )
        .await?;
        let mut event_details = details.clone();
        if let Some(fields) = event_details.as_object_mut() {
            fields.insert("offer_id".to_owned(), offer_id.into());
            fields.insert("driver_id".to_owned(), best.driver_id.into());
            fields.insert("expires_in_s".to_owned(), ttl.as_secs_f64().into());
        }
        record(
            tx,
            &OrderEvent {
                topic: "dispatch",
                order_id,
                event_type: "offer_made",
                actor: Actor::System,
                details: event_details,
                publish: true,
            },
        )
        .await?;
        Ok(Some(RoundOutcome::Offered {
            offer_id,
            driver_id: best.driver_id,
            score: breakdown.total,
        }))
    }

    async fn reschedule(
        &self,
        tx: &mut PgConnection,
        order_id: i64,
        round: u32,
        radius_km: f64,
        found: usize,
        reason: &str,
    ) -> Result<RoundOutcome, MatchError> {
        let next = round.saturating_add(1);
        let delay = retry_delay(&self.settings, round);
        sqlx::query("UPDATE orders SET match_round = $2 WHERE id = $1")
            .bind(order_id)
            .bind(i32::try_from(next).unwrap_or(i32::MAX))
            .execute(&mut *tx)
            .await?;
        jobs::enqueue(
            tx,
            &MatchDriver {
                order_id,
                round: next,
            },
            delay,
        )
        .await?;
        record(
            tx,
            &OrderEvent {
                topic: "dispatch",
                order_id,
                event_type: "match_round_empty",
                actor: Actor::System,
                details: json!({
                    "round": round,
                    "radius_km": radius_km,
                    "candidates_found": found,
                    "reason": reason,
                    "next_round": next,
                    "retry_in_s": delay.as_secs_f64(),
                }),
                publish: false,
            },
        )
        .await?;
        if round == self.settings.alert_after_rounds {
            record(
                tx,
                &OrderEvent {
                    topic: "dispatch",
                    order_id,
                    event_type: "order_unmatched",
                    actor: Actor::System,
                    details: json!({
                        "rounds": round,
                        "reason": reason,
                        "retry_every_s": self.settings.retry_cap.as_secs_f64(),
                    }),
                    publish: true,
                },
            )
            .await?;
            metrics::counter!("orders_unmatched_total").increment(1);
            tracing::warn!(
                order_id,
                rounds = round,
                "order unmatched; flagged for operators"
            );
        }
        Ok(RoundOutcome::Rescheduled { round: next, delay })
    }
}
