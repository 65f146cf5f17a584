//! Order batching: may a driver who already carries one order take a second? The spec's
//! `checkBatchOpportunity`, as pure functions: [`measure`] computes the figures from positions,
//! [`evaluate`] applies the thresholds, so each threshold is tested at its edge.
//!
//! # Definitions
//! - The driver's **current route** goes from where the driver is, through the current
//!   order's restaurant (unless it is already picked up), to its customer: length `L1`.
//! - The **combined route** goes from the driver, through the current restaurant (unless
//!   picked up), the new order's restaurant, the current customer, then the new customer — the
//!   first customer is served first: length `Lc`.
//! - The new order's **own trip** is its restaurant to its customer: length `L2`.
//! - **Route efficiency** = `L2 / (Lc − L1)`, capped at 1: the part of the extra driving the
//!   batch causes that is useful delivery distance of the new order. 1 means the new order
//!   costs no more driving than its own trip would; 0.5 means half the extra driving is detour.
//! - **Additional delay** to the first customer = the time the combined route takes to reach
//!   the current customer minus the time the current route takes, plus one stop buffer for
//!   the extra pickup.
//! - **Savings** = distance of doing the orders one after the other
//!   (`L1` + current customer → new restaurant + `L2`) minus `Lc`.
//!
//! All lengths and times come from the built-in estimator ([`crate::eta::estimator`]) with the
//! current traffic multiplier: batching compares several route variants per candidate, where a
//! consistent model matters more than a routing call per leg.

use std::time::Duration;

use serde::Serialize;

use crate::eta::estimator::Estimator;
use crate::geo::{Point, haversine_m};

/// Most orders a driver carries at once.
pub const MAX_ORDERS: usize = 2;
/// Farthest apart (great-circle) the two restaurants may be.
pub const MAX_RESTAURANT_GAP_M: f64 = 500.0;
/// Least acceptable route efficiency.
pub const MIN_ROUTE_EFFICIENCY: f64 = 0.7;
/// Longest acceptable additional delay to the first customer.
pub const MAX_ADDITIONAL_DELAY: Duration = Duration::from_secs(5 * 60);
/// Time an extra pickup stop takes (the spec's pickup buffer).
pub const STOP_BUFFER: Duration = Duration::from_secs(3 * 60);

/// An order a driver carries.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CarriedOrder {
    pub restaurant: Point,
    pub customer: Point,
    /// Already collected: the route no longer passes its restaurant.
    pub picked_up: bool,
}

/// The order being matched.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NewOrder {
    pub restaurant: Point,
    pub customer: Point,
}

impl NewOrder {
    /// An order picked up at (`r_lat`, `r_lon`) and delivered to (`c_lat`, `c_lon`), as the
    /// matching queries read them.
    pub fn at(r_lat: f64, r_lon: f64, c_lat: f64, c_lon: f64) -> Self {
        Self {
            restaurant: Point {
                lat: r_lat,
                lon: r_lon,
            },
            customer: Point {
                lat: c_lat,
                lon: c_lon,
            },
        }
    }
}

/// The figures a batching decision rests on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchMetrics {
    pub orders_carried: usize,
    pub restaurant_gap_m: f64,
    pub route_efficiency: f64,
    pub additional_delay: Duration,
    pub savings_m: f64,
}

/// An accepted batch.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Batch {
    pub route_efficiency: f64,
    pub additional_delay_s: f64,
    pub savings_m: f64,
}

/// Why a batch is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum NoBatch {
    #[error("the driver carries no order")]
    NothingCarried,
    #[error("the driver already carries {MAX_ORDERS} orders")]
    Full,
    #[error("the restaurants are more than 500 m apart")]
    RestaurantsTooFar,
    #[error("the combined route is less than 70% efficient")]
    Inefficient,
    #[error("the first customer would wait more than 5 minutes longer")]
    TooMuchDelay,
}

/// Where the driver is and how fast the city moves now.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Conditions<'a> {
    pub driver: Point,
    pub estimator: &'a Estimator,
    /// The traffic multiplier of the current hour.
    pub traffic: f64,
}

/// Measures a batch of `new` onto the route of a driver carrying `carried` (only the first
/// carried order shapes the route; [`evaluate`] refuses more than one).
pub fn measure(at: &Conditions<'_>, carried: &[CarriedOrder], new: &NewOrder) -> BatchMetrics {
    let driver = at.driver;
    let road_m = |a: Point, b: Point| at.estimator.road_m(a, b);
    let route_m = |stops: &[Point]| at.estimator.route_m(stops);
    let Some(current) = carried.first() else {
        return BatchMetrics {
            orders_carried: 0,
            restaurant_gap_m: 0.0,
            route_efficiency: 0.0,
            additional_delay: Duration::ZERO,
            savings_m: 0.0,
        };
    };
    let mut to_first_customer = vec![driver];
    if !current.picked_up {
        to_first_customer.push(current.restaurant);
    }
    let mut combined_to_first = to_first_customer.clone();
    to_first_customer.push(current.customer);
    combined_to_first.extend([new.restaurant, current.customer]);

    let current_m = route_m(&to_first_customer);
    let combined_first_m = route_m(&combined_to_first);
    let combined_m = combined_first_m + road_m(current.customer, new.customer);
    let own_m = road_m(new.restaurant, new.customer);
    let extra_m = combined_m - current_m;
    let route_efficiency = if extra_m <= f64::EPSILON {
        1.0
    } else {
        (own_m / extra_m).min(1.0)
    };
    let additional_delay = at
        .estimator
        .time_for((combined_first_m - current_m).max(0.0))
        .mul_f64(at.traffic)
        + STOP_BUFFER;
    let separate_m = current_m + road_m(current.customer, new.restaurant) + own_m;
    BatchMetrics {
        orders_carried: carried.len(),
        restaurant_gap_m: haversine_m(current.restaurant, new.restaurant),
        route_efficiency,
        additional_delay,
        savings_m: separate_m - combined_m,
    }
}

/// Applies the spec's thresholds, in its order.
pub fn evaluate(metrics: &BatchMetrics) -> Result<Batch, NoBatch> {
    if metrics.orders_carried == 0 {
        return Err(NoBatch::NothingCarried);
    }
    if metrics.orders_carried >= MAX_ORDERS {
        return Err(NoBatch::Full);
    }
    if metrics.restaurant_gap_m > MAX_RESTAURANT_GAP_M {
        return Err(NoBatch::RestaurantsTooFar);
    }
    if metrics.route_efficiency < MIN_ROUTE_EFFICIENCY {
        return Err(NoBatch::Inefficient);
    }
    if metrics.additional_delay > MAX_ADDITIONAL_DELAY {
        return Err(NoBatch::TooMuchDelay);
    }
    Ok(Batch {
        route_efficiency: metrics.route_efficiency,
        additional_delay_s: metrics.additional_delay.as_secs_f64(),
        savings_m: metrics.savings_m,
    })
}

/// [`measure`] then [`evaluate`].
pub fn check(
    at: &Conditions<'_>,
    carried: &[CarriedOrder],
    new: &NewOrder,
) -> Result<Batch, NoBatch> {
    evaluate(&measure(at, carried, new))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok_metrics() -> BatchMetrics {
        BatchMetrics {
            orders_carried: 1,
            restaurant_gap_m: 100.0,
            route_efficiency: 0.9,
            additional_delay: Duration::from_secs(240),
            savings_m: 500.0,
        }
    }

    #[test]
    fn a_driver_with_no_order_or_two_orders_cannot_batch() {
        let none = BatchMetrics {
            orders_carried: 0,
            ..ok_metrics()
        };
        assert_eq!(evaluate(&none), Err(NoBatch::NothingCarried));
        let two = BatchMetrics {
            orders_carried: 2,
            ..ok_metrics()
        };
        assert_eq!(evaluate(&two), Err(NoBatch::Full));
        assert!(evaluate(&ok_metrics()).is_ok());
    }

    #[test]
    fn restaurant_gap_edge_is_500_metres_inclusive() {
        let at = BatchMetrics {
            restaurant_gap_m: 500.0,
            ..ok_metrics()
        };
        assert!(evaluate(&at).is_ok());
        let past = BatchMetrics {
            restaurant_gap_m: 500.001,
            ..ok_metrics()
        };
        assert_eq!(evaluate(&past), Err(NoBatch::RestaurantsTooFar));
    }

    #[test]
    fn efficiency_edge_is_0_7_inclusive() {
        let at = BatchMetrics {
            route_efficiency: 0.7,
            ..ok_metrics()
        };
        assert!(evaluate(&at).is_ok());
        let below = BatchMetrics {
            route_efficiency: 0.699_999,
            ..ok_metrics()
        };
        assert_eq!(evaluate(&below), Err(NoBatch::Inefficient));
    }

    #[test]
    fn delay_edge_is_five_minutes_inclusive() {
        let at = BatchMetrics {
            additional_delay: Duration::from_secs(300),
            ..ok_metrics()
        };
        assert!(evaluate(&at).is_ok());
        let past = BatchMetrics {
            additional_delay: Duration::from_millis(300_001),
            ..ok_metrics()
        };
        assert_eq!(evaluate(&past), Err(NoBatch::TooMuchDelay));
    }

    const R: Point = Point {
        lat: 40.7128,
        lon: -74.0060,
    };

    const ESTIMATOR: Estimator = Estimator::DEFAULT;

    fn from(driver: Point) -> Conditions<'static> {
        Conditions {
            driver,
            estimator: &ESTIMATOR,
            traffic: 1.0,
        }
    }

    fn north(m: f64) -> Point {
        Point {
            lat: R.lat + m / 111_195.0,
            lon: R.lon,
        }
    }

    #[test]
    fn same_restaurant_same_direction_is_a_perfect_batch() {
        // Driver waiting at the restaurant; customers 1 km and 2 km north along one street.
        let current = CarriedOrder {
            restaurant: R,
            customer: north(1_000.0),
            picked_up: false,
        };
        let new = NewOrder {
            restaurant: R,
            customer: north(2_000.0),
        };
        let m = measure(&from(R), &[current], &new);
        assert_eq!(m.orders_carried, 1);
        assert!(m.restaurant_gap_m < 1e-6);
        assert_eq!(m.route_efficiency, 1.0);
        // No detour to the first customer: only the extra stop.
        assert_eq!(m.additional_delay, STOP_BUFFER);
        // Separately: 1 km out, 1 km back, 2 km out; together: 2 km.
        assert!((m.savings_m - 2_000.0 * 1.3).abs() < 5.0, "{}", m.savings_m);
        assert!(check(&from(R), &[current], &new).is_ok());
    }

    #[test]
    fn opposite_directions_are_inefficient() {
        // Customers 1 km north and 1 km south: the new order's own trip is 1 km, the batch
        // adds 2 km (back through the restaurant), efficiency 0.5.
        let current = CarriedOrder {
            restaurant: R,
            customer: north(1_000.0),
            picked_up: true,
        };
        let new = NewOrder {
            restaurant: R,
            customer: north(-1_000.0),
        };
        let m = measure(&from(R), &[current], &new);
        assert!(
            (m.route_efficiency - 0.5).abs() < 1e-3,
            "{}",
            m.route_efficiency
        );
        assert_eq!(check(&from(R), &[current], &new), Err(NoBatch::Inefficient));
    }

    #[test]
    fn a_detour_to_a_far_restaurant_delays_the_first_customer() {
        // Picked up at R, heading 1 km north; the new restaurant is 450 m south (within the
        // gap) but the detour there and back costs ~900 m × 1.3 ≈ 2.8 min, plus the stop.
        let current = CarriedOrder {
            restaurant: R,
            customer: north(1_000.0),
            picked_up: true,
        };
        let new = NewOrder {
            restaurant: north(-450.0),
            customer: north(1_500.0),
        };
        let m = measure(&from(R), &[current], &new);
        assert!(m.restaurant_gap_m <= MAX_RESTAURANT_GAP_M);
        assert!(
            m.additional_delay > MAX_ADDITIONAL_DELAY,
            "{:?}",
            m.additional_delay
        );
        assert_eq!(
            check(&from(R), &[current], &new),
            Err(NoBatch::TooMuchDelay)
        );
    }

    #[test]
    fn traffic_stretches_the_delay() {
        // A detour of ~1 min 45 s at free flow fits; at rush hour (×1.5) plus the stop, not.
        let current = CarriedOrder {
            restaurant: R,
            customer: north(1_000.0),
            picked_up: true,
        };
        let new = NewOrder {
            restaurant: north(-280.0),
            customer: north(1_500.0),
        };
        let free = measure(&from(R), &[current], &new);
        assert!(
            free.additional_delay <= MAX_ADDITIONAL_DELAY,
            "{:?}",
            free.additional_delay
        );
        let rush = measure(
            &Conditions {
                traffic: 1.5,
                ..from(R)
            },
            &[current],
            &new,
        );
        assert!(
            rush.additional_delay > MAX_ADDITIONAL_DELAY,
            "{:?}",
            rush.additional_delay
        );
    }

    #[test]
    fn restaurants_far_apart_are_refused_first() {
        let current = CarriedOrder {
            restaurant: R,
            customer: north(1_000.0),
            picked_up: false,
        };
        let new = NewOrder {
            restaurant: north(600.0),
            customer: north(2_000.0),
        };
        assert_eq!(
            check(&from(R), &[current], &new),
            Err(NoBatch::RestaurantsTooFar)
        );
    }
}
