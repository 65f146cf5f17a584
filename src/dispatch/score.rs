//! Multi-factor driver scoring: the spec's seven factors with its weights and caps, each a
//! plain function, and [`rank`] which orders candidates best first. Pure, no I/O.
//!
//! | factor | points |
//! |---|---|
//! | distance to the restaurant | `max(0, 100 − 10 × km)` |
//! | current load | `−15` per active order |
//! | rating | `5 ×` rating (5 stars = 25) |
//! | experience | `total deliveries / 10`, at most 20 |
//! | earnings-goal fairness | `+10` while today's deliveries are below the driver's goal |
//! | route efficiency (carrying an order) | `20 ×` batch route efficiency ([`crate::dispatch::batch`]) |
//! | timing alignment | `−20` when the driver would arrive long before the food is ready |
//!
//! **Timing, and a bug in the spec.** The spec's code penalises `estimatedArrival >
//! prepTimeRemaining` — a driver who arrives *after* the food is ready — while its comment
//! says the penalty is for arriving *before*. We follow the stated intent: a driver who would
//! wait at the restaurant more than [`EARLY_ARRIVAL_SLACK`] for the food loses 20 points,
//! leaving closer-in-time drivers free for orders that are ready now. Arriving late is
//! already penalised by the distance factor.
//!
//! The driver's arrival time is a routing leg ([`crate::eta::routing`], traffic included),
//! computed by the caller for all candidates in one table request.

use std::cmp::Ordering;
use std::time::Duration;

use serde::Serialize;

use crate::dispatch::batch::Batch;
use crate::geo::{Point, haversine_m};

/// How long a driver may wait at the restaurant for the food before timing costs points.
pub const EARLY_ARRIVAL_SLACK: Duration = Duration::from_secs(5 * 60);

/// What scoring knows about a candidate driver.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub driver_id: i64,
    pub position: Point,
    pub active_orders: u32,
    pub rating: f64,
    pub total_deliveries: i64,
    pub delivered_today: i64,
    pub daily_goal: i64,
    /// Driving time to the restaurant.
    pub arrival: Duration,
    /// The batch this order would join, for a driver who carries an order.
    pub batch: Option<Batch>,
}

/// What scoring knows about the order.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OrderFacts {
    pub restaurant: Point,
    /// How long until the food is ready (zero once ready).
    pub prep_remaining: Duration,
}

/// Every factor of one driver's score, kept with the offer to explain the decision later.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Breakdown {
    pub distance_km: f64,
    pub arrival_s: f64,
    pub prep_remaining_s: f64,
    pub distance: f64,
    pub load: f64,
    pub rating: f64,
    pub experience: f64,
    pub fairness: f64,
    pub route_efficiency: f64,
    pub timing: f64,
    pub total: f64,
}

/// Factor 1: closer is better, nothing beyond 10 km.
pub fn distance_points(km: f64) -> f64 {
    (100.0 - km * 10.0).max(0.0)
}

/// Factor 2: a penalty per order already carried.
pub fn load_points(active_orders: u32) -> f64 {
    -15.0 * f64::from(active_orders)
}

/// Factor 3: five points per star.
pub fn rating_points(rating: f64) -> f64 {
    rating.clamp(0.0, 5.0) * 5.0
}

/// Factor 4: a point per ten deliveries, capped at 20.
pub fn experience_points(total_deliveries: i64) -> f64 {
    (total_deliveries.max(0) as f64 / 10.0).min(20.0)
}

/// Factor 5: drivers short of today's goal come first.
pub fn fairness_points(delivered_today: i64, daily_goal: i64) -> f64 {
    if delivered_today < daily_goal {
        10.0
    } else {
        0.0
    }
}

/// Factor 6: for a driver already carrying an order, how well this one fits the route.
pub fn route_points(active_orders: u32, route_efficiency: Option<f64>) -> f64 {
    match (active_orders, route_efficiency) {
        (0, _) | (_, None) => 0.0,
        (_, Some(efficiency)) => efficiency.clamp(0.0, 1.0) * 20.0,
    }
}

/// Factor 7: a penalty for arriving long before the food is ready.
pub fn timing_points(arrival: Duration, prep_remaining: Duration) -> f64 {
    if prep_remaining > arrival + EARLY_ARRIVAL_SLACK {
        -20.0
    } else {
        0.0
    }
}

/// Scores one candidate for one order.
pub fn score(candidate: &Candidate, order: &OrderFacts) -> Breakdown {
    let distance_km = haversine_m(candidate.position, order.restaurant) / 1_000.0;
    let arrival = candidate.arrival;
    let mut b = Breakdown {
        distance_km,
        arrival_s: arrival.as_secs_f64(),
        prep_remaining_s: order.prep_remaining.as_secs_f64(),
        distance: distance_points(distance_km),
        load: load_points(candidate.active_orders),
        rating: rating_points(candidate.rating),
        experience: experience_points(candidate.total_deliveries),
        fairness: fairness_points(candidate.delivered_today, candidate.daily_goal),
        route_efficiency: route_points(
            candidate.active_orders,
            candidate.batch.map(|b| b.route_efficiency),
        ),
        timing: timing_points(arrival, order.prep_remaining),
        total: 0.0,
    };
    b.total =
        b.distance + b.load + b.rating + b.experience + b.fairness + b.route_efficiency + b.timing;
    b
}

/// Scores `candidates` and sorts them best first; ties go to the closer driver, then the
/// lower id, so a ranking is deterministic.
pub fn rank(candidates: Vec<Candidate>, order: &OrderFacts) -> Vec<(Candidate, Breakdown)> {
    let mut scored: Vec<(Candidate, Breakdown)> = candidates
        .into_iter()
        .map(|c| {
            let b = score(&c, order);
            (c, b)
        })
        .collect();
    scored.sort_by(|(ca, a), (cb, b)| {
        b.total
            .partial_cmp(&a.total)
            .unwrap_or(Ordering::Equal)
            .then(
                a.distance_km
                    .partial_cmp(&b.distance_km)
                    .unwrap_or(Ordering::Equal),
            )
            .then(ca.driver_id.cmp(&cb.driver_id))
    });
    scored
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eta::estimator::Estimator;

    const RESTAURANT: Point = Point {
        lat: 40.7128,
        lon: -74.0060,
    };

    fn north_km(km: f64) -> Point {
        Point {
            lat: RESTAURANT.lat + km / 111.195,
            lon: RESTAURANT.lon,
        }
    }

    fn driver(id: i64, km: f64) -> Candidate {
        let position = north_km(km);
        Candidate {
            driver_id: id,
            position,
            arrival: Estimator::DEFAULT.route(position, RESTAURANT).duration,
            active_orders: 0,
            rating: 4.5,
            total_deliveries: 100,
            delivered_today: 3,
            daily_goal: 10,
            batch: None,
        }
    }

    fn ready_order() -> OrderFacts {
        OrderFacts {
            restaurant: RESTAURANT,
            prep_remaining: Duration::ZERO,
        }
    }

    #[test]
    fn distance_factor_is_100_minus_10_per_km_floored_at_zero() {
        assert_eq!(distance_points(0.0), 100.0);
        assert_eq!(distance_points(2.5), 75.0);
        assert_eq!(distance_points(10.0), 0.0);
        assert_eq!(distance_points(12.0), 0.0);
    }

    #[test]
    fn load_factor_is_minus_15_per_order() {
        assert_eq!(load_points(0), 0.0);
        assert_eq!(load_points(1), -15.0);
        assert_eq!(load_points(2), -30.0);
    }

    #[test]
    fn rating_factor_is_5_per_star_within_range() {
        assert_eq!(rating_points(5.0), 25.0);
        assert_eq!(rating_points(3.2), 16.0);
        assert_eq!(rating_points(7.0), 25.0);
        assert_eq!(rating_points(-1.0), 0.0);
    }

    #[test]
    fn experience_factor_is_capped_at_20() {
        assert_eq!(experience_points(0), 0.0);
        assert_eq!(experience_points(55), 5.5);
        assert_eq!(experience_points(200), 20.0);
        assert_eq!(experience_points(10_000), 20.0);
        assert_eq!(experience_points(-5), 0.0);
    }

    #[test]
    fn fairness_factor_favours_drivers_below_their_goal() {
        assert_eq!(fairness_points(3, 10), 10.0);
        assert_eq!(fairness_points(10, 10), 0.0);
        assert_eq!(fairness_points(12, 10), 0.0);
    }

    #[test]
    fn route_factor_counts_only_for_drivers_carrying_an_order() {
        assert_eq!(route_points(0, Some(1.0)), 0.0);
        assert_eq!(route_points(1, Some(0.75)), 15.0);
        assert_eq!(route_points(1, None), 0.0);
        assert_eq!(route_points(1, Some(3.0)), 20.0);
    }

    #[test]
    fn timing_factor_penalises_only_a_long_wait_for_the_food() {
        let arrival = Duration::from_secs(4 * 60);
        // Food ready in 9 min, driver there in 4: a 5-minute wait is within the slack.
        assert_eq!(timing_points(arrival, Duration::from_secs(9 * 60)), 0.0);
        // Food ready in 9 min 1 s: one second past the slack.
        assert_eq!(
            timing_points(arrival, Duration::from_secs(9 * 60 + 1)),
            -20.0
        );
        // Driver late for food that is ready: no timing penalty.
        assert_eq!(timing_points(arrival, Duration::ZERO), 0.0);
    }

    #[test]
    fn score_adds_every_factor() {
        let b = score(&driver(1, 1.0), &ready_order());
        assert!((b.distance_km - 1.0).abs() < 0.01);
        let expected = b.distance + 22.5 + 10.0 + 10.0;
        assert!((b.total - expected).abs() < 1e-9);
        assert_eq!(b.load, 0.0);
        assert_eq!(b.timing, 0.0);
    }

    #[test]
    fn closer_beats_farther_at_equal_rating() {
        let ranked = rank(
            vec![driver(1, 3.0), driver(2, 0.5), driver(3, 1.5)],
            &ready_order(),
        );
        let ids: Vec<i64> = ranked.iter().map(|(c, _)| c.driver_id).collect();
        assert_eq!(ids, vec![2, 3, 1]);
    }

    #[test]
    fn an_overloaded_driver_loses_to_an_idle_one() {
        let idle = driver(1, 1.0);
        let loaded = Candidate {
            driver_id: 2,
            active_orders: 1,
            batch: Some(Batch {
                route_efficiency: 0.5,
                additional_delay_s: 200.0,
                savings_m: 100.0,
            }),
            ..driver(2, 0.8)
        };
        let ranked = rank(vec![loaded, idle], &ready_order());
        assert_eq!(ranked[0].0.driver_id, 1);
        assert_eq!(ranked[1].1.load, -15.0);
        assert_eq!(ranked[1].1.route_efficiency, 10.0);
    }

    #[test]
    fn a_driver_arriving_long_before_the_food_is_penalised() {
        // Food ready in 25 minutes. A driver 300 m away arrives in under a minute and would
        // wait ~24; one 7 km away arrives in ~22 minutes, within the slack.
        let order = OrderFacts {
            restaurant: RESTAURANT,
            prep_remaining: Duration::from_secs(25 * 60),
        };
        let near = score(&driver(1, 0.3), &order);
        let far = score(&driver(2, 7.0), &order);
        assert_eq!(near.timing, -20.0);
        assert_eq!(far.timing, 0.0);
        // The penalty narrows the gap but 6.7 km of distance points still dominate.
        assert!(near.total > far.total);
        // Between two drivers equally near, the one whose arrival fits wins.
        let waiting = score(&driver(3, 1.0), &order);
        let ready_now = score(&driver(4, 1.0), &ready_order());
        assert_eq!(waiting.total + 20.0, ready_now.total);
    }

    #[test]
    fn ties_go_to_the_closer_then_the_lower_id() {
        let a = driver(9, 1.0);
        let b = driver(4, 1.0);
        let ranked = rank(vec![a, b], &ready_order());
        assert_eq!(ranked[0].0.driver_id, 4);
    }
}
