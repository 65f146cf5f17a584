//! Driver matching: who can be offered an order, and how they rank.
//!
//! Pure decisions live in their own modules and have no I/O: [`score`] (the spec's seven
//! factors), [`batch`] (may a carrying driver take a second order), [`assign`] (a dispatch
//! cycle's assignment of a whole market), [`retry_delay`] and [`handover`]. The
//! reads are [`matcher`] (candidates: lookup through the circuit breaker, eligibility,
//! ranking, the candidate's lock), [`carried`] (what drivers carry) and [`offers`] (offers as
//! drivers see them). Making offers and answering them change the order: that is the
//! workflow's ([`crate::workflows::matching`], [`crate::workflows::offers`]).
//!
//! # How an order finds a driver
//! 1. Confirming an order enqueues `match_driver` (round 1). A round looks up available
//!    drivers within 5 km of the restaurant, then 10 km (through the circuit breaker), drops
//!    those who cannot take it, scores the rest and offers the order to the best one: an
//!    `offers` row and an `offer_timeout` job at its expiry, in one transaction.
//! 2. The driver accepts (the order is assigned), declines, or lets the offer expire; a
//!    decline or an expiry enqueues the next `match_driver` at once, which re-scores (drivers
//!    moved) and offers to the next driver. Nobody is offered the same order twice.
//! 3. A round that finds nobody schedules the next round after [`retry_delay`] (15 s, 30 s,
//!    60 s, … capped); after [`DispatchSettings::alert_after_rounds`] it flags the order for
//!    operators (audit row and outbox event) and keeps retrying at the cap.
//!
//! # Per order, or by cycle
//! A market dispatches `per_order` (above) or by `cycle`: every few seconds one process
//! assigns all the market's waiting orders together ([`assign`], run by
//! [`crate::workflows::cycle`]) and offers only the pairs that are due — the driver would
//! arrive close to the food's readiness. There, a `match_driver` job hands the order to the
//! cycle and runs the round above only as a fallback ([`handover`]). Both offer through the
//! same code under the same locks, so the invariants below hold whoever offers.
//!
//! # Invariants, and what holds them
//! - One pending offer per order: a partial unique index, and the order row lock every
//!   writer takes first.
//! - An order is assigned once: accept updates `orders` only `WHERE driver_id IS NULL`, under
//!   the order lock.
//! - A driver carries at most two active orders: accept counts them under the driver's row
//!   lock (lock order everywhere: order, then driver).
//! - A driver holds at most one pending offer: a partial unique index, and the round takes the
//!   driver's row lock (skipping drivers locked by another round) and re-checks under it.
//! - A driver's second order batches with the first under the spec's rules: the round checks
//!   them when it scores and again under the driver's lock; accept checks them once more under
//!   that lock, since the driver may have taken an order between the offer and the answer.
//! - Accept and expiry race on `UPDATE offers … WHERE status = 'pending'`: one wins.
//! - No order is left waiting with nothing scheduled: a pending offer has its timeout job; an
//!   ended offer enqueued a round; a round that offers nothing enqueued the next.

pub mod assign;
pub mod batch;
pub mod carried;
pub mod matcher;
pub mod offers;
pub mod score;

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;

use crate::breaker::{BreakerSettings, CircuitBreaker};
use crate::dispatch::assign::CycleSettings;
use crate::eta::routing::Routing;
use crate::location::LocationService;

/// First search radius around the restaurant (the spec's 5 km).
pub const SEARCH_RADIUS_KM: f64 = 5.0;
/// Search radius when the first finds nobody (the spec's 10 km).
pub const EXPANDED_RADIUS_KM: f64 = 10.0;
/// Name of the spec's matching-latency histogram (confirmed → driver assigned).
pub const MATCH_DURATION: &str = "driver_match_duration_seconds";
/// The spec's buckets for it.
pub const MATCH_BUCKETS: [f64; 7] = [0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0];
/// Offers by outcome (`offered`, `accepted`, `declined`, `expired`, `cancelled`).
pub const OFFERS_TOTAL: &str = "driver_offers_total";
/// Matching rounds an order needed, recorded when it is assigned.
pub const MATCH_ROUNDS: &str = "driver_match_rounds";
/// Order states in which an order waits for a driver (if it has none).
pub const WAITING_STATES: [&str; 3] = ["CONFIRMED", "PREPARING", "READY_FOR_PICKUP"];

/// How matching behaves. The defaults are the spec's figures.
#[derive(Clone, Debug, PartialEq)]
pub struct DispatchSettings {
    /// Lifetime of an order's first offer (the spec's 30 s).
    pub first_offer_ttl: Duration,
    /// Lifetime of later offers (the spec's 20 s).
    pub later_offer_ttl: Duration,
    /// Delay before the second round when the first found nobody; doubles each round.
    pub retry_base: Duration,
    /// Longest delay between rounds.
    pub retry_cap: Duration,
    /// After this many empty rounds the order is flagged for operators.
    pub alert_after_rounds: u32,
    /// How long a driver who was offered an order (and declined it or let it lapse) is not
    /// offered it again. Not for good: in a quiet market every nearby driver may pass on an
    /// order while busy, and it would then wait for ever (the spec's matching starts each
    /// retry with every nearby driver).
    pub reoffer_after: Duration,
    /// Most candidates looked up and scored per search.
    pub candidates: usize,
    /// The candidate lookup's circuit breaker.
    pub breaker: BreakerSettings,
    /// How often a market that dispatches by cycle runs one.
    pub cycle_interval: Duration,
    /// How the cycle decides (commitment slack, pairs per order).
    pub cycle: CycleSettings,
    /// How long after an order is due the per-order fallback waits for the cycle to offer it.
    pub cycle_grace: Duration,
}

impl DispatchSettings {
    /// A cycle market whose last cycle finished longer ago than this is matched per order
    /// until its cycles run again.
    pub fn cycle_stale_after(&self) -> Duration {
        (self.cycle_interval * 3).max(Duration::from_secs(15))
    }
}

impl Default for DispatchSettings {
    fn default() -> Self {
        Self {
            first_offer_ttl: Duration::from_secs(30),
            later_offer_ttl: Duration::from_secs(20),
            retry_base: Duration::from_secs(15),
            retry_cap: Duration::from_secs(120),
            alert_after_rounds: 5,
            reoffer_after: Duration::from_secs(180),
            candidates: 25,
            breaker: BreakerSettings::default(),
            cycle_interval: Duration::from_secs(5),
            cycle: CycleSettings::default(),
            cycle_grace: Duration::from_secs(30),
        }
    }
}

/// The delay before round `round + 1` when round `round` found nobody: `retry_base × 2^(round−1)`,
/// at most `retry_cap`, and the cap once the order has been flagged.
pub fn retry_delay(settings: &DispatchSettings, round: u32) -> Duration {
    if round >= settings.alert_after_rounds {
        return settings.retry_cap;
    }
    crate::jobs::backoff(settings.retry_base, settings.retry_cap, round)
}

/// What a `match_driver` job of an order in a cycle market does: `Some(delay)` hands the
/// order to the cycle, with the per-order fallback after `delay`; `None` runs the per-order
/// round now. The order is due (the cycle must have offered it) once its food is at most the
/// commitment slack from ready; the fallback waits the grace beyond that. A first job hands
/// over; the fallback itself runs the round, unless the restaurant's estimate moved the due
/// time later. A market whose cycles stopped is matched per order.
pub fn handover(
    settings: &DispatchSettings,
    by_cycle: bool,
    cycle_live: bool,
    prep_remaining: Duration,
    after_cycle: bool,
) -> Option<Duration> {
    if !by_cycle || !cycle_live {
        return None;
    }
    let due_in = prep_remaining.saturating_sub(settings.cycle.slack);
    if after_cycle && due_in.is_zero() {
        return None;
    }
    Some(due_in + settings.cycle_grace)
}

/// What matching needs: the database, the location service, the settings and the breaker
/// that guards the candidate lookup. Cheap to clone; one per process.
#[derive(Clone, Debug)]
pub struct Dispatcher {
    pub db: PgPool,
    pub location: LocationService,
    pub routing: Routing,
    pub settings: Arc<DispatchSettings>,
    pub breaker: Arc<CircuitBreaker>,
}

impl Dispatcher {
    /// A dispatcher with a closed breaker.
    pub fn new(
        db: PgPool,
        location: LocationService,
        routing: Routing,
        settings: DispatchSettings,
    ) -> Self {
        let breaker = Arc::new(CircuitBreaker::new("candidate_lookup", settings.breaker));
        Self {
            db,
            location,
            routing,
            settings: Arc::new(settings),
            breaker,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_double_from_15_seconds_up_to_the_cap() {
        let s = DispatchSettings::default();
        let delays: Vec<u64> = (1..=7).map(|r| retry_delay(&s, r).as_secs()).collect();
        assert_eq!(delays, vec![15, 30, 60, 120, 120, 120, 120]);
    }

    #[test]
    fn a_cycle_market_hands_the_order_over_until_it_is_due_plus_the_grace() {
        let s = DispatchSettings::default();
        let min = |m: u64| Duration::from_secs(m * 60);
        // Per-order market, or a cycle market whose cycles stopped: the round runs now.
        assert_eq!(handover(&s, false, true, min(10), false), None);
        assert_eq!(handover(&s, true, false, min(10), false), None);
        // Food ready in 10 min, 3 min of slack: due in 7 min, the fallback 30 s later.
        assert_eq!(
            handover(&s, true, true, min(10), false),
            Some(min(7) + Duration::from_secs(30))
        );
        // The fallback of a due order runs the round.
        assert_eq!(handover(&s, true, true, min(2), true), None);
        assert_eq!(handover(&s, true, true, Duration::ZERO, true), None);
        // A first job of a due order still gives the cycle the grace.
        assert_eq!(
            handover(&s, true, true, Duration::ZERO, false),
            Some(s.cycle_grace)
        );
        // The estimate moved later since the fallback was scheduled: wait again.
        assert_eq!(
            handover(&s, true, true, min(8), true),
            Some(min(5) + s.cycle_grace)
        );
    }

    #[test]
    fn flagged_orders_retry_at_the_cap_and_huge_rounds_do_not_overflow() {
        let s = DispatchSettings {
            retry_cap: Duration::from_secs(45),
            alert_after_rounds: 2,
            ..DispatchSettings::default()
        };
        assert_eq!(retry_delay(&s, 1).as_secs(), 15);
        assert_eq!(retry_delay(&s, 2).as_secs(), 45);
        let unflagged = DispatchSettings {
            alert_after_rounds: u32::MAX,
            ..DispatchSettings::default()
        };
        assert_eq!(retry_delay(&unflagged, 200).as_secs(), 120);
    }
}
