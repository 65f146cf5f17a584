//! The dispatch cycle's decision for a whole market at once. Pure, no I/O.
//!
//! Matching one order at a time ([`crate::workflows::matching`]) gives each order the best
//! driver still free when it is confirmed; the order confirmed first may take the one driver
//! a later order needed far more. The cycle ([`crate::workflows::cycle`]) instead collects
//! every order waiting for a driver and every driver who could take one, and [`plan`]:
//!
//! 1. **Pairs.** For each order, the drivers within [`MAX_PAIR_KM`] of its restaurant who may
//!    take it: not offered it lately, carrying fewer than two orders, and — carrying one —
//!    batching with it under the spec's rules ([`batch::check`]). A driver who carries an
//!    order is thereby one more column of the same problem (the batching option).
//! 2. **Weights.** Each pair is scored with the spec's seven factors ([`score::score`]), less
//!    [`LATE_POINTS_PER_MINUTE`] for each minute the food would wait for the driver: the
//!    spec's distance factor prices driving, this prices the customer's wait. Each order keeps
//!    its best [`CycleSettings::candidates_per_order`] pairs, which bounds the problem.
//! 3. **Solve.** The assignment of orders to drivers (each at most one) that serves the most
//!    orders and, among those, has the highest total weight: Kuhn–Munkres (the `pathfinding`
//!    crate, `O(n²m)` for `n ≤ m`), on the rows and columns that have a pair.
//! 4. **Commit when it matters.** A pair is offered now only if it is *due*: the driver would
//!    reach the restaurant no more than [`CycleSettings::slack`] before the food is ready.
//!    Other pairs are held: the order stays in the pool and the driver stays free, so the next
//!    cycle, a few seconds later, can pair them better (ready-time-aware commitment).
//!
//! [`greedy`] is the per-order choice over the same pairs (orders in turn, each taking its best
//! driver still free): the benchmark measures the cycle against it, and a unit test shows a
//! market where it is provably worse.

use std::collections::HashMap;
use std::time::Duration;

use pathfinding::kuhn_munkres::kuhn_munkres;
use pathfinding::matrix::Matrix;
use serde::Serialize;

use crate::dispatch::batch::{
    self, CarriedOrder, Conditions, MAX_ORDERS, MAX_RESTAURANT_GAP_M, NewOrder,
};
use crate::dispatch::score::{self, Breakdown, Candidate, OrderFacts};
use crate::eta::estimator::Estimator;
use crate::geo::{Point, haversine_m};

/// Farthest a driver may be from the restaurant (the spec's expanded search radius).
pub const MAX_PAIR_KM: f64 = 10.0;
/// Points a pair loses per minute the food waits for its driver.
pub const LATE_POINTS_PER_MINUTE: f64 = 5.0;
/// The weight of a pair that may not be made, far below any real one: the solver serves as
/// many orders as it can before it weighs how well.
const FORBIDDEN: i64 = -1_000_000_000_000;
/// Weights are points in thousandths (the solver needs integers).
const SCALE: f64 = 1_000.0;

/// How the cycle decides.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CycleSettings {
    /// How long before the food is ready a driver may arrive and the order still be offered
    /// now; a pair whose driver would wait longer is held for a later cycle.
    pub slack: Duration,
    /// Pairs kept per order (its best), bounding the problem a large market solves.
    pub candidates_per_order: usize,
}

impl Default for CycleSettings {
    fn default() -> Self {
        Self {
            slack: Duration::from_secs(3 * 60),
            candidates_per_order: 25,
        }
    }
}

/// An order waiting for a driver.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolOrder {
    pub order_id: i64,
    pub order: NewOrder,
    /// How long until the food is ready (zero once ready).
    pub prep_remaining: Duration,
    /// Drivers who may not be offered it now (offered it within the re-offer window).
    pub excluded: Vec<i64>,
}

/// A driver who could take an order: online, fresh, below capacity, no offer pending.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolDriver {
    pub driver_id: i64,
    pub position: Point,
    pub rating: f64,
    pub total_deliveries: i64,
    pub delivered_today: i64,
    pub daily_goal: i64,
    pub carrying: Vec<CarriedOrder>,
}

/// A pair the solver chose.
#[derive(Clone, Debug, PartialEq)]
pub struct Pairing {
    /// Index into the orders given to [`plan`].
    pub order: usize,
    /// Index into the drivers given to [`plan`].
    pub driver: usize,
    pub candidate: Candidate,
    pub breakdown: Breakdown,
    /// The pair's weight: the score less the food's wait.
    pub weight: f64,
    /// Offer now (the driver would not wait long for the food), or hold for a later cycle.
    pub due: bool,
}

/// What a cycle decided.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Pairs to offer now, best weight first.
    pub offers: Vec<Pairing>,
    /// Pairs held: offered later if they are still best when due.
    pub held: Vec<Pairing>,
    /// Orders no driver was paired with (nobody could take them, or others needed the drivers
    /// more).
    pub unmatched: Vec<usize>,
}

/// Why a pair carries its weight, for the offer's record.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Why {
    pub weight: f64,
    pub late_minutes: f64,
    pub wait_minutes: f64,
}

impl Pairing {
    /// The figures behind the pair's weight.
    pub fn why(&self) -> Why {
        let arrival = self.breakdown.arrival_s;
        let ready = self.breakdown.prep_remaining_s;
        Why {
            weight: self.weight,
            late_minutes: (arrival - ready).max(0.0) / 60.0,
            wait_minutes: (ready - arrival).max(0.0) / 60.0,
        }
    }
}

/// A pair's weight: its score less the minutes the food would wait for the driver.
pub fn weight(breakdown: &Breakdown) -> f64 {
    let late_s = (breakdown.arrival_s - breakdown.prep_remaining_s).max(0.0);
    breakdown.total - LATE_POINTS_PER_MINUTE * late_s / 60.0
}

/// Whether a pair should be offered now: its driver would reach the restaurant at most
/// `slack` before the food is ready.
pub fn due(arrival: Duration, prep_remaining: Duration, slack: Duration) -> bool {
    prep_remaining <= arrival + slack
}

/// Every pair that may be made, each order's best `settings.candidates_per_order`:
/// `pairs[order]` holds `(driver index, pairing)`. `arrival(driver, order)` is the driver's
/// driving time to the order's restaurant; `conditions(position)` are the batching
/// conditions at a driver's position.
pub fn pairs<'a>(
    orders: &[PoolOrder],
    drivers: &[PoolDriver],
    arrival: impl Fn(usize, usize) -> Duration,
    conditions: impl Fn(Point) -> Conditions<'a>,
    settings: &CycleSettings,
) -> Vec<Vec<Pairing>> {
    orders
        .iter()
        .enumerate()
        .map(|(o, order)| {
            let facts = OrderFacts {
                restaurant: order.order.restaurant,
                prep_remaining: order.prep_remaining,
            };
            let mut found: Vec<Pairing> = drivers
                .iter()
                .enumerate()
                .filter(|(_, d)| {
                    d.carrying.len() < MAX_ORDERS
                        && !order.excluded.contains(&d.driver_id)
                        && haversine_m(d.position, order.order.restaurant) <= MAX_PAIR_KM * 1_000.0
                })
                .filter_map(|(i, d)| {
                    let batch = match d.carrying.first() {
                        None => None,
                        // The spec's first batching rule, checked before the costlier rest.
                        Some(first)
                            if haversine_m(first.restaurant, order.order.restaurant)
                                > MAX_RESTAURANT_GAP_M =>
                        {
                            return None;
                        }
                        Some(_) => Some(
                            batch::check(&conditions(d.position), &d.carrying, &order.order)
                                .ok()?,
                        ),
                    };
                    let candidate = Candidate {
                        driver_id: d.driver_id,
                        position: d.position,
                        active_orders: u32::try_from(d.carrying.len()).unwrap_or(u32::MAX),
                        rating: d.rating,
                        total_deliveries: d.total_deliveries,
                        delivered_today: d.delivered_today,
                        daily_goal: d.daily_goal,
                        arrival: arrival(i, o),
                        batch,
                    };
                    let breakdown = score::score(&candidate, &facts);
                    Some(Pairing {
                        order: o,
                        driver: i,
                        due: due(candidate.arrival, order.prep_remaining, settings.slack),
                        weight: weight(&breakdown),
                        candidate,
                        breakdown,
                    })
                })
                .collect();
            let best_first = |a: &Pairing, b: &Pairing| {
                b.weight.total_cmp(&a.weight).then(a.driver.cmp(&b.driver))
            };
            if found.len() > settings.candidates_per_order && settings.candidates_per_order > 0 {
                found.select_nth_unstable_by(settings.candidates_per_order - 1, best_first);
            }
            found.truncate(settings.candidates_per_order);
            found.sort_by(best_first);
            found
        })
        .collect()
}

/// [`pairs`] with driving times and batching conditions from `estimator` alone, without
/// traffic: what the benchmark and the tests solve.
pub fn estimated_pairs(
    orders: &[PoolOrder],
    drivers: &[PoolDriver],
    estimator: &Estimator,
    settings: &CycleSettings,
) -> Vec<Vec<Pairing>> {
    let arrival = |d: usize, o: usize| {
        estimator
            .route(drivers[d].position, orders[o].order.restaurant)
            .duration
    };
    let conditions = |driver: Point| Conditions {
        driver,
        estimator,
        traffic: 1.0,
    };
    pairs(orders, drivers, arrival, conditions, settings)
}

/// The assignment of the whole pool: see the module docs.
pub fn plan(pairs: Vec<Vec<Pairing>>, orders: usize) -> Plan {
    // Columns: the drivers some order may take, in a stable order.
    let mut columns: Vec<usize> = pairs.iter().flatten().map(|p| p.driver).collect();
    columns.sort_unstable();
    columns.dedup();
    let column_of: HashMap<usize, usize> =
        columns.iter().enumerate().map(|(c, &d)| (d, c)).collect();
    let rows: Vec<usize> = (0..pairs.len()).filter(|&o| !pairs[o].is_empty()).collect();
    let mut plan = Plan {
        unmatched: (0..orders)
            .filter(|&o| pairs.get(o).is_none_or(Vec::is_empty))
            .collect(),
        ..Plan::default()
    };
    if rows.is_empty() {
        return plan;
    }
    // Kuhn–Munkres needs no more rows than columns: orders are rows when they are fewer.
    let orders_are_rows = rows.len() <= columns.len();
    let (height, width) = if orders_are_rows {
        (rows.len(), columns.len())
    } else {
        (columns.len(), rows.len())
    };
    let mut weights = Matrix::new(height, width, FORBIDDEN);
    for (r, &o) in rows.iter().enumerate() {
        for pairing in &pairs[o] {
            let c = column_of[&pairing.driver];
            let w = (pairing.weight * SCALE).round() as i64;
            if orders_are_rows {
                weights[(r, c)] = w;
            } else {
                weights[(c, r)] = w;
            }
        }
    }
    let (_, assignment) = kuhn_munkres(&weights);
    let mut chosen: Vec<(usize, usize)> = assignment
        .into_iter()
        .enumerate()
        .map(|(a, b)| if orders_are_rows { (a, b) } else { (b, a) })
        .filter(|&(r, c)| weights_at(&weights, orders_are_rows, r, c) != FORBIDDEN)
        .collect();
    chosen.sort_unstable();
    let mut served = vec![false; rows.len()];
    for (r, c) in chosen {
        let driver = columns[c];
        let Some(pairing) = pairs[rows[r]].iter().find(|p| p.driver == driver) else {
            continue;
        };
        served[r] = true;
        if pairing.due {
            plan.offers.push(pairing.clone());
        } else {
            plan.held.push(pairing.clone());
        }
    }
    plan.unmatched.extend(
        rows.iter()
            .zip(&served)
            .filter(|(_, s)| !**s)
            .map(|(&o, _)| o),
    );
    plan.unmatched.sort_unstable();
    plan.offers
        .sort_by(|a, b| b.weight.total_cmp(&a.weight).then(a.order.cmp(&b.order)));
    plan
}

fn weights_at(weights: &Matrix<i64>, orders_are_rows: bool, row: usize, column: usize) -> i64 {
    if orders_are_rows {
        weights[(row, column)]
    } else {
        weights[(column, row)]
    }
}

/// The per-order choice over the same pairs: orders in turn (the order of `pairs`, i.e. of
/// confirmation), each taking its best pair whose driver is still free. What today's
/// per-order matching does when orders arrive together; the cycle is measured against it.
pub fn greedy(pairs: &[Vec<Pairing>]) -> Vec<Pairing> {
    let mut taken = std::collections::HashSet::new();
    pairs
        .iter()
        .filter_map(|candidates| {
            let best = candidates.iter().find(|p| !taken.contains(&p.driver))?;
            taken.insert(best.driver);
            Some(best.clone())
        })
        .collect()
}

/// The total weight of some pairs.
pub fn total_weight(pairs: &[Pairing]) -> f64 {
    pairs.iter().map(|p| p.weight).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const EAST: Point = Point {
        lat: 40.7128,
        lon: -74.0060,
    };

    /// A point `km` north and `east_km` east of [`EAST`].
    fn at(north_km: f64, east_km: f64) -> Point {
        Point {
            lat: EAST.lat + north_km / 111.195,
            lon: EAST.lon + east_km / (111.195 * EAST.lat.to_radians().cos()),
        }
    }

    fn order(id: i64, restaurant: Point, prep_min: u64) -> PoolOrder {
        PoolOrder {
            order_id: id,
            order: NewOrder {
                restaurant,
                customer: at(restaurant_north(restaurant) + 2.0, 0.0),
            },
            prep_remaining: Duration::from_secs(prep_min * 60),
            excluded: Vec::new(),
        }
    }

    fn restaurant_north(p: Point) -> f64 {
        (p.lat - EAST.lat) * 111.195
    }

    fn driver(id: i64, position: Point) -> PoolDriver {
        PoolDriver {
            driver_id: id,
            position,
            rating: 4.5,
            total_deliveries: 100,
            delivered_today: 3,
            daily_goal: 10,
            carrying: Vec::new(),
        }
    }

    fn solve(orders: &[PoolOrder], drivers: &[PoolDriver]) -> (Vec<Vec<Pairing>>, Plan) {
        let pairs = estimated_pairs(
            orders,
            drivers,
            &Estimator::DEFAULT,
            &CycleSettings::default(),
        );
        let plan = plan(pairs.clone(), orders.len());
        (pairs, plan)
    }

    fn assigned(
        pairs: &[Pairing],
        orders: &[PoolOrder],
        drivers: &[PoolDriver],
    ) -> Vec<(i64, i64)> {
        let mut out: Vec<(i64, i64)> = pairs
            .iter()
            .map(|p| (orders[p.order].order_id, drivers[p.driver].driver_id))
            .collect();
        out.sort_unstable();
        out
    }

    /// Two restaurants 2 km apart on a line, food ready now. Driver 1 sits between them, 1 km
    /// from A and 1 km from B; driver 2 is 2 km beyond A, 4 km from B. Order A was confirmed
    /// first. Per order, A takes its best driver — driver 1, 1 km away — and B is left with
    /// driver 2, 4 km away: 5 km of driving while the food waits. Globally, A takes driver 2
    /// (2 km) and B driver 1 (1 km): 3 km. The cycle must find the second.
    #[test]
    fn the_cycle_beats_the_per_order_choice_where_the_first_order_takes_the_driver_the_second_needed()
     {
        let a = at(0.0, 0.0);
        let b = at(2.0, 0.0);
        let orders = [order(10, a, 0), order(11, b, 0)];
        let drivers = [driver(1, at(1.0, 0.0)), driver(2, at(-2.0, 0.0))];
        let (pairs, plan) = solve(&orders, &drivers);

        let greedy = greedy(&pairs);
        assert_eq!(assigned(&greedy, &orders, &drivers), [(10, 1), (11, 2)]);
        assert_eq!(
            assigned(&plan.offers, &orders, &drivers),
            [(10, 2), (11, 1)]
        );
        assert!(plan.held.is_empty() && plan.unmatched.is_empty());

        // Provably worse: the per-order choice has the lower total weight, and more driving.
        assert!(total_weight(&plan.offers) > total_weight(&greedy) + 10.0);
        let km = |ps: &[Pairing]| ps.iter().map(|p| p.breakdown.distance_km).sum::<f64>();
        assert!((km(&greedy) - 5.0).abs() < 0.05, "{}", km(&greedy));
        assert!(
            (km(&plan.offers) - 3.0).abs() < 0.05,
            "{}",
            km(&plan.offers)
        );
        // And the food waits less: the drivers reach both restaurants sooner in total.
        let late = |ps: &[Pairing]| ps.iter().map(|p| p.why().late_minutes).sum::<f64>();
        assert!(late(&plan.offers) < late(&greedy));
    }

    #[test]
    fn a_pair_whose_driver_would_wait_long_for_the_food_is_held_and_the_driver_stays_free() {
        // Food ready in 20 minutes, the driver 1 km away: arriving ~17 min early, beyond the
        // 3-minute slack. A second order is ready now.
        let orders = [order(1, at(0.0, 0.0), 20), order(2, at(0.0, 3.0), 0)];
        let drivers = [driver(7, at(1.0, 0.0)), driver(8, at(0.0, 3.5))];
        let (_, plan) = solve(&orders, &drivers);
        assert_eq!(assigned(&plan.offers, &orders, &drivers), [(2, 8)]);
        assert_eq!(assigned(&plan.held, &orders, &drivers), [(1, 7)]);
        assert!(!plan.held[0].due);
        assert!(plan.held[0].why().wait_minutes > 15.0);
    }

    #[test]
    fn due_is_the_slack_edge() {
        let slack = Duration::from_secs(180);
        let arrival = Duration::from_secs(300);
        assert!(due(arrival, Duration::from_secs(480), slack));
        assert!(!due(arrival, Duration::from_secs(481), slack));
        assert!(due(arrival, Duration::ZERO, slack));
    }

    #[test]
    fn the_food_waiting_for_the_driver_costs_five_points_a_minute() {
        let orders = [order(1, at(0.0, 0.0), 0)];
        let drivers = [driver(1, at(4.0, 0.0))];
        let (pairs, _) = solve(&orders, &drivers);
        let p = &pairs[0][0];
        let late_min = p.breakdown.arrival_s / 60.0;
        assert!((p.weight - (p.breakdown.total - 5.0 * late_min)).abs() < 1e-9);
        assert!((p.why().late_minutes - late_min).abs() < 1e-9);
    }

    #[test]
    fn drivers_too_far_excluded_or_full_are_never_paired() {
        let mut near = order(1, at(0.0, 0.0), 0);
        near.excluded = vec![2];
        let full = PoolDriver {
            carrying: vec![
                CarriedOrder {
                    restaurant: at(0.0, 0.0),
                    customer: at(1.0, 0.0),
                    picked_up: false,
                };
                2
            ],
            ..driver(3, at(0.1, 0.0))
        };
        let drivers = [driver(1, at(11.0, 0.0)), driver(2, at(0.2, 0.0)), full];
        let (pairs, plan) = solve(&[near.clone()], &drivers);
        assert!(pairs[0].is_empty());
        assert_eq!(plan.unmatched, [0]);
        assert!(plan.offers.is_empty());
    }

    #[test]
    fn a_driver_carrying_an_order_is_a_column_when_the_new_one_batches_with_it() {
        let restaurant = at(0.0, 0.0);
        let carrying = CarriedOrder {
            restaurant: at(0.0, 0.2),
            customer: at(3.0, 0.0),
            picked_up: false,
        };
        let busy = PoolDriver {
            carrying: vec![carrying],
            ..driver(5, at(0.05, 0.1))
        };
        let orders = [order(1, restaurant, 0)];
        let (pairs, plan) = solve(&orders, &[busy]);
        assert_eq!(pairs[0].len(), 1);
        let chosen = &plan.offers[0];
        assert_eq!(chosen.candidate.active_orders, 1);
        assert!(chosen.candidate.batch.is_some());
        assert_eq!(chosen.breakdown.load, -15.0);
    }

    #[test]
    fn more_orders_than_drivers_serves_as_many_as_there_are_drivers() {
        let orders: Vec<PoolOrder> = (0..5)
            .map(|i| order(i, at(f64::from(i as u8) * 0.5, 0.0), 0))
            .collect();
        let drivers = [driver(1, at(0.1, 0.0)), driver(2, at(2.1, 0.0))];
        let (_, plan) = solve(&orders, &drivers);
        assert_eq!(plan.offers.len(), 2);
        assert_eq!(plan.unmatched.len(), 3);
        let mut used: Vec<usize> = plan.offers.iter().map(|p| p.driver).collect();
        used.dedup();
        assert_eq!(used.len(), 2);
    }
}
