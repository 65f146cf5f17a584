//! One matching round of one order (the `match_driver` job): search candidates without locks
//! ([`Dispatcher::search`]), then, under the order's row lock, offer the order to the best
//! candidate still free — an `offers` row and its effects ([`steps::offer_made`]) — or, when
//! nobody can take it, schedule the next round ([`steps::round_empty`]). Safe to run twice or
//! concurrently for one order: the decision is re-checked under the lock, so at most one offer
//! is made, and only the job of the order's current round schedules the next round.

use std::time::Duration;

use serde_json::json;
use sqlx::{PgConnection, PgPool};

use crate::dispatch::batch::NewOrder;
use crate::dispatch::matcher::{OrderRow, Search, load_order};
use crate::dispatch::score::{Breakdown, Candidate};
use crate::dispatch::{Dispatcher, EXPANDED_RADIUS_KM, OFFERS_TOTAL, handover, retry_delay};
use crate::domain::{DriverId, OfferId, OrderId};
use crate::jobs::messages::MatchDriver;
use crate::workflows::effects::{self, EffectError};
use crate::workflows::steps::{self, EmptyRound, OfferTerms};

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
        offer_id: OfferId,
        driver_id: DriverId,
        score: f64,
    },
    /// Nobody could take the order; `round` is scheduled after `delay`.
    Rescheduled { round: u32, delay: Duration },
    /// The order's market dispatches by cycle: the cycle offers it, and this round runs as
    /// the fallback after `fallback_in` if it has not.
    HandedToCycle { fallback_in: Duration },
}

/// Why a round failed; the job retries it.
#[derive(Debug, thiserror::Error)]
pub enum MatchError {
    #[error("order {0} does not exist")]
    NotFound(OrderId),
    #[error("could not write the round's effects: {0}")]
    Effects(#[from] EffectError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("valkey error: {0}")]
    Valkey(#[from] redis::RedisError),
}

async fn load(
    dispatcher: &Dispatcher,
    conn: &mut PgConnection,
    order_id: OrderId,
    lock: bool,
) -> Result<OrderRow, MatchError> {
    load_order(
        conn,
        order_id,
        lock,
        dispatcher.settings.cycle_stale_after(),
    )
    .await?
    .ok_or(MatchError::NotFound(order_id))
}

/// Runs matching round `round` for `order_id` (a first job, not a cycle's fallback).
pub async fn run_round(
    dispatcher: &Dispatcher,
    order_id: OrderId,
    round: u32,
) -> Result<RoundOutcome, MatchError> {
    run_job(dispatcher, &MatchDriver::new(order_id, round)).await
}

/// Runs the matching round of a `match_driver` job; in a market that dispatches by cycle,
/// first hands the order to the cycle ([`crate::dispatch::handover`]).
pub async fn run_job(
    dispatcher: &Dispatcher,
    job: &MatchDriver,
) -> Result<RoundOutcome, MatchError> {
    let (order_id, round, after_cycle) = (job.order_id, job.round, job.after_cycle);
    let order = {
        let mut conn = dispatcher.db.acquire().await?;
        load(dispatcher, &mut conn, order_id, false).await?
    };
    if !order.waiting() {
        return Ok(RoundOutcome::NotWaiting);
    }
    if order.offer_pending() {
        return Ok(RoundOutcome::OfferPending);
    }
    let (by_cycle, cycle_live) = order.cycle();
    if let Some(fallback_in) = handover(
        &dispatcher.settings,
        by_cycle,
        cycle_live,
        order.prep_remaining(),
        after_cycle,
    ) {
        let mut tx = crate::store::begin(&dispatcher.db).await?;
        effects::write(
            &mut tx,
            steps::handed_to_cycle(order_id, round, fallback_in),
        )
        .await?;
        tx.commit().await?;
        return Ok(RoundOutcome::HandedToCycle { fallback_in });
    }
    let search = dispatcher.search(order_id, &order).await;

    let mut tx = crate::store::begin(&dispatcher.db).await?;
    let locked = load(dispatcher, &mut tx, order_id, true).await?;
    if !locked.waiting() {
        return Ok(RoundOutcome::NotWaiting);
    }
    if locked.offer_pending() {
        return Ok(RoundOutcome::OfferPending);
    }
    let current_round = locked.match_round();
    let outcome = match search {
        Ok(Search {
            radius_km,
            found,
            ranked,
        }) if !ranked.is_empty() => {
            let round_facts = RoundFacts {
                round: current_round,
                radius_km,
                found,
                cycle: None,
            };
            match offer(
                dispatcher,
                &mut tx,
                order_id,
                locked.new_order(),
                &round_facts,
                &ranked,
            )
            .await?
            {
                Some(offered) => offered,
                None if current_round != round => return Ok(RoundOutcome::Superseded),
                None => {
                    let reason = "every eligible driver was taken meanwhile";
                    reschedule(
                        dispatcher, &mut tx, order_id, round, radius_km, found, reason,
                    )
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
            reschedule(
                dispatcher, &mut tx, order_id, round, radius_km, found, &reason,
            )
            .await?
        }
    };
    tx.commit().await?;
    match &outcome {
        RoundOutcome::Offered { .. } => offered(dispatcher, order_id, &order, &outcome, None),
        RoundOutcome::Rescheduled { round, delay } => {
            tracing::info!(order_id = order_id.get(), next_round = round, delay = ?delay, "no driver; next round scheduled");
        }
        _ => {}
    }
    Ok(outcome)
}

/// Counts and logs an offer once committed.
fn offered(
    dispatcher: &Dispatcher,
    order_id: OrderId,
    order: &OrderRow,
    outcome: &RoundOutcome,
    cycle: Option<i64>,
) {
    let RoundOutcome::Offered {
        offer_id,
        driver_id,
        score,
    } = outcome
    else {
        return;
    };
    let market = dispatcher.location.market_label(order.restaurant());
    metrics::counter!(OFFERS_TOTAL, "outcome" => "offered", "market" => market).increment(1);
    tracing::info!(
        order_id = order_id.get(),
        offer_id = offer_id.get(),
        driver_id = driver_id.get(),
        score,
        cycle,
        "order offered"
    );
}

/// Offers `order_id` to the driver a dispatch cycle paired it with, in one transaction under
/// the order's lock, as a round's offer is made (the same checks of the driver under its lock,
/// the same record, the same effects), its record naming the cycle and why (`note`). `None`
/// when the order or the driver moved on since the cycle read them (the next cycle sees them
/// as they are).
pub async fn offer_from_cycle(
    dispatcher: &Dispatcher,
    order_id: OrderId,
    pairing: &(Candidate, Breakdown),
    note: CycleNote,
) -> Result<Option<RoundOutcome>, MatchError> {
    let mut tx = crate::store::begin(&dispatcher.db).await?;
    let locked = load(dispatcher, &mut tx, order_id, true).await?;
    if !locked.waiting() || locked.offer_pending() {
        return Ok(None);
    }
    let cycle = note.id;
    let facts = RoundFacts {
        round: locked.match_round(),
        radius_km: crate::dispatch::assign::MAX_PAIR_KM,
        found: note.drivers_available,
        cycle: Some(note),
    };
    let outcome = offer(
        dispatcher,
        &mut tx,
        order_id,
        locked.new_order(),
        &facts,
        std::slice::from_ref(pairing),
    )
    .await?;
    match outcome {
        Some(outcome @ RoundOutcome::Offered { .. }) => {
            tx.commit().await?;
            offered(dispatcher, order_id, &locked, &outcome, Some(cycle));
            Ok(Some(outcome))
        }
        _ => Ok(None),
    }
}

/// A dispatch cycle's account of one of its offers.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CycleNote {
    /// The cycle (`dispatch_cycles.id`).
    pub id: i64,
    pub orders_pooled: usize,
    pub drivers_available: usize,
    /// Why this driver: the pair's weight and the food's wait it implies.
    #[serde(flatten)]
    pub why: crate::dispatch::assign::Why,
}

/// The round an offer is made in, for its record.
struct RoundFacts {
    round: u32,
    radius_km: f64,
    found: usize,
    /// The dispatch cycle that made it, if one did.
    cycle: Option<CycleNote>,
}

async fn offer(
    dispatcher: &Dispatcher,
    tx: &mut PgConnection,
    order_id: OrderId,
    order: NewOrder,
    facts: &RoundFacts,
    ranked: &[(Candidate, Breakdown)],
) -> Result<Option<RoundOutcome>, MatchError> {
    let Some((best, breakdown, batch)) = dispatcher.lock_candidate(tx, order, ranked).await? else {
        return Ok(None);
    };
    let settings = &dispatcher.settings;
    let offered_before: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM offers WHERE order_id = $1)")
            .bind(order_id)
            .fetch_one(&mut *tx)
            .await?;
    let ttl = if offered_before {
        settings.later_offer_ttl
    } else {
        settings.first_offer_ttl
    };
    let why = match &facts.cycle {
        Some(cycle) => format!(
            "cycle {}: the market-wide assignment of {} orders to {} drivers gave this driver \
             (weight {:.1}: score {:.1} less the food's wait of {:.1} min)",
            cycle.id,
            cycle.orders_pooled,
            cycle.drivers_available,
            cycle.why.weight,
            breakdown.total,
            cycle.why.late_minutes
        ),
        None => format!(
            "best score ({:.1}) of {} eligible drivers",
            breakdown.total,
            ranked.len()
        ),
    };
    let details = json!({
        "round": facts.round,
        "dispatch": if facts.cycle.is_some() { "cycle" } else { "per_order" },
        "cycle": facts.cycle,
        "why": why,
        "radius_km": facts.radius_km,
        "candidates_found": facts.found,
        "candidates_eligible": ranked.len(),
        "breakdown": breakdown,
        "batch": batch,
    });
    let driver = DriverId(best.driver_id);
    let offer: Option<(OfferId, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "INSERT INTO offers (order_id, driver_id, round, score, score_breakdown, expires_at)
         SELECT $1, $2, $3, $4, $5, now() + make_interval(secs => $6)
         WHERE NOT EXISTS (SELECT 1 FROM offers
                           WHERE order_id = $1 AND driver_id = $2
                             AND created_at > now() - $7::interval)
         RETURNING id, expires_at",
    )
    .bind(order_id)
    .bind(driver)
    .bind(i32::try_from(facts.round).unwrap_or(i32::MAX))
    .bind(breakdown.total)
    .bind(&details)
    .bind(ttl.as_secs_f64())
    .bind(settings.reoffer_after)
    .fetch_optional(&mut *tx)
    .await?;
    // The driver was offered this order since the search (and answered already): whoever
    // ended that offer enqueued the next round.
    let Some((offer_id, expires_at)) = offer else {
        return Ok(Some(RoundOutcome::Superseded));
    };
    let terms = offer_terms(tx, order_id, order, expires_at).await?;
    // Before the commit, so the driver's polls find the offer the moment it exists; if
    // Valkey refuses, the round fails and is retried (the driver would not see it).
    dispatcher.location.note_offer(driver.get(), ttl).await?;
    let effects = steps::offer_made(order_id, offer_id, driver, ttl, &terms, details);
    effects::write(tx, effects).await?;
    Ok(Some(RoundOutcome::Offered {
        offer_id,
        driver_id: driver,
        score: breakdown.total,
    }))
}

/// The pickup and drop-off of an offer, for the driver to decide on.
async fn offer_terms(
    tx: &mut PgConnection,
    order_id: OrderId,
    order: NewOrder,
    expires_at: chrono::DateTime<chrono::Utc>,
) -> Result<OfferTerms, sqlx::Error> {
    let (restaurant_id, name, address, delivery_address, delivery_fee_cents): (
        i64,
        String,
        Option<String>,
        serde_json::Value,
        i64,
    ) = sqlx::query_as(
        "SELECT r.id, r.name, r.address, o.delivery_address, o.delivery_fee_cents
         FROM orders o JOIN restaurants r ON r.id = o.restaurant_id WHERE o.id = $1",
    )
    .bind(order_id)
    .fetch_one(&mut *tx)
    .await?;
    Ok(OfferTerms {
        pickup: json!({
            "restaurant_id": restaurant_id,
            "name": name,
            "address": address,
            "lat": order.restaurant.lat,
            "lon": order.restaurant.lon,
        }),
        dropoff: json!({
            "address": delivery_address,
            "lat": order.customer.lat,
            "lon": order.customer.lon,
        }),
        delivery_fee_cents,
        expires_at,
    })
}

async fn reschedule(
    dispatcher: &Dispatcher,
    tx: &mut PgConnection,
    order_id: OrderId,
    round: u32,
    radius_km: f64,
    found: usize,
    reason: &str,
) -> Result<RoundOutcome, MatchError> {
    let settings = &dispatcher.settings;
    let next = round.saturating_add(1);
    let delay = retry_delay(settings, round);
    sqlx::query("UPDATE orders SET match_round = $2 WHERE id = $1")
        .bind(order_id)
        .bind(i32::try_from(next).unwrap_or(i32::MAX))
        .execute(&mut *tx)
        .await?;
    let flag = round == settings.alert_after_rounds;
    let empty = EmptyRound {
        round,
        radius_km,
        candidates_found: found,
        reason,
        retry_in: delay,
        flag,
        retry_every: settings.retry_cap,
    };
    effects::write(tx, steps::round_empty(order_id, &empty)).await?;
    if flag {
        metrics::counter!("orders_unmatched_total").increment(1);
        tracing::warn!(
            order_id = order_id.get(),
            rounds = round,
            "order unmatched; flagged for operators"
        );
    }
    Ok(RoundOutcome::Rescheduled { round: next, delay })
}

/// Starts matching again for a waiting order with nothing scheduled (a job deleted by hand,
/// one that failed for good): a `match_driver` job for its current round, and the
/// `matching_revived` event (`via` the operators' CLI, or the cron task), in one transaction.
pub async fn revive(
    db: &PgPool,
    order_id: OrderId,
    round: u32,
    via: Option<&str>,
) -> Result<(), EffectError> {
    let mut tx = crate::store::begin(db).await?;
    effects::write(&mut tx, steps::matching_revived(order_id, round, via)).await?;
    tx.commit().await?;
    Ok(())
}
