//! Delivery ETAs: the spec's `calculateDeliveryETA` as a pure function of the order's state,
//! its legs and the time ([`estimate`]), the traffic multipliers by the market's local hour,
//! and the routing that produces the legs ([`routing`]: an OSRM client, the built-in
//! [`estimator`], a route cache in Valkey).
//!
//! # The formula, by status
//! `ETA = now + max(driver → restaurant, remaining prep) + restaurant → customer + buffers`
//! - PLACED: no driver, and the kitchen has not started: the whole prep time.
//! - CONFIRMED, PREPARING: prep counts down to the kitchen's estimate (`food_ready_at`, given
//!   on confirmation and updated while it cooks; the restaurant's `prep_time_minutes` after
//!   `confirmed_at` for orders without one); the driver's time to the restaurant once one is
//!   assigned.
//! - READY_FOR_PICKUP: no prep time left.
//! - PICKED_UP: only the final leg (from the driver's position when known, else from the
//!   restaurant) and the drop-off buffer: the pickup is done.
//! - DELIVERED: the delivery time itself. COMPLETED and CANCELLED have no ETA.
//!
//! Buffers: 3 minutes for the pickup, 2 for the handoff (the spec's).
//!
//! # Confidence
//! A number in [0, 1] saying how much of the estimate rests on facts rather than guesses:
//! 0.5 while the restaurant has not confirmed, 0.6 confirmed without a driver, 0.8 with a
//! driver whose position is known, 0.9 after pickup, 1.0 once delivered; 0.1 less when a leg
//! came from the built-in estimator instead of the routing service.
//!
//! # Traffic
//! Route durations are multiplied by 1.5 from 07:00 to 09:59 and 17:00 to 19:59, by 1.3 from
//! 11:00 to 13:59 (the spec's `hour >= 7 && hour <= 9` etc.), else 1.0 — in the market's time
//! zone (configured), never the server's. The multiplier is applied after the route cache, so
//! one cached route serves every hour.

pub mod estimator;
pub mod order;
pub mod osrm;
pub mod routing;

use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use crate::domain::OrderStatus;

/// Time the driver spends collecting the order.
pub const PICKUP_BUFFER: Duration = Duration::from_secs(3 * 60);
/// Time the driver spends handing the order over.
pub const DROPOFF_BUFFER: Duration = Duration::from_secs(2 * 60);

/// A route between two points.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Route {
    pub duration: Duration,
    pub distance_m: f64,
}

/// The traffic multiplier at a local hour (0–23).
pub fn traffic_multiplier(local_hour: u32) -> f64 {
    match local_hour {
        7..=9 | 17..=19 => 1.5,
        11..=13 => 1.3,
        _ => 1.0,
    }
}

/// The traffic multiplier at `now` in the market's time zone.
pub fn traffic_at(now: DateTime<Utc>, market: Tz) -> f64 {
    traffic_multiplier(now.with_timezone(&market).hour())
}

/// What an ETA is computed from. Leg durations already include traffic.
#[derive(Clone, Debug, PartialEq)]
pub struct EtaInputs {
    pub status: OrderStatus,
    pub confirmed_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    /// The restaurant's prep time for this order.
    pub prep_time: Duration,
    /// Driver → restaurant, when a driver is assigned and its position is known.
    pub to_restaurant: Option<Duration>,
    /// Restaurant → customer.
    pub restaurant_to_customer: Duration,
    /// Driver → customer, when the driver's position is known (used after pickup).
    pub driver_to_customer: Option<Duration>,
    /// Whether any leg came from the built-in estimator.
    pub estimated: bool,
}

/// Each part of an ETA, in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Breakdown {
    pub to_restaurant_s: f64,
    pub preparation_s: f64,
    pub to_customer_s: f64,
    pub buffers_s: f64,
}

/// An estimated delivery time.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Eta {
    pub eta: DateTime<Utc>,
    pub breakdown: Breakdown,
    pub confidence: f64,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// The ETA of an order at `now`; `None` for completed and cancelled orders.
pub fn estimate(inputs: &EtaInputs, now: DateTime<Utc>) -> Option<Eta> {
    let fallback_penalty = if inputs.estimated { 0.1 } else { 0.0 };
    let (to_restaurant, preparation, to_customer, buffers, confidence) = match inputs.status {
        OrderStatus::Completed | OrderStatus::Cancelled => return None,
        OrderStatus::Delivered => {
            let at = inputs.delivered_at.unwrap_or(now);
            return Some(Eta {
                eta: at,
                breakdown: Breakdown {
                    to_restaurant_s: 0.0,
                    preparation_s: 0.0,
                    to_customer_s: 0.0,
                    buffers_s: 0.0,
                },
                confidence: 1.0,
            });
        }
        OrderStatus::PickedUp => (
            Duration::ZERO,
            Duration::ZERO,
            inputs
                .driver_to_customer
                .unwrap_or(inputs.restaurant_to_customer),
            DROPOFF_BUFFER,
            0.9,
        ),
        status => {
            let preparation = match (status, inputs.confirmed_at) {
                (OrderStatus::Placed, _) | (_, None) => inputs.prep_time,
                (OrderStatus::ReadyForPickup, _) => Duration::ZERO,
                (_, Some(confirmed)) => {
                    let elapsed = (now - confirmed).to_std().unwrap_or(Duration::ZERO);
                    inputs.prep_time.saturating_sub(elapsed)
                }
            };
            let confidence = match (status, inputs.to_restaurant) {
                (OrderStatus::Placed, _) => 0.5,
                (_, None) => 0.6,
                (_, Some(_)) => 0.8,
            };
            (
                inputs.to_restaurant.unwrap_or(Duration::ZERO),
                preparation,
                inputs.restaurant_to_customer,
                PICKUP_BUFFER + DROPOFF_BUFFER,
                confidence,
            )
        }
    };
    let total = to_restaurant.max(preparation) + to_customer + buffers;
    let eta = now + chrono::Duration::from_std(total).unwrap_or(chrono::Duration::MAX);
    Some(Eta {
        eta,
        breakdown: Breakdown {
            to_restaurant_s: secs(to_restaurant),
            preparation_s: secs(preparation),
            to_customer_s: secs(to_customer),
            buffers_s: secs(buffers),
        },
        confidence: confidence - fallback_penalty,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(h: u32, m: u32) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(&format!("2026-03-02T{h:02}:{m:02}:00Z"))
            .expect("valid")
            .with_timezone(&Utc)
    }

    fn min(m: u64) -> Duration {
        Duration::from_secs(m * 60)
    }

    fn inputs(status: OrderStatus) -> EtaInputs {
        EtaInputs {
            status,
            confirmed_at: Some(at(12, 0)),
            delivered_at: None,
            prep_time: min(20),
            to_restaurant: None,
            restaurant_to_customer: min(10),
            driver_to_customer: None,
            estimated: false,
        }
    }

    fn total_min(eta: &Eta, now: DateTime<Utc>) -> i64 {
        (eta.eta - now).num_minutes()
    }

    #[test]
    fn placed_orders_wait_for_the_whole_prep_time() {
        let now = at(12, 0);
        let eta = estimate(
            &EtaInputs {
                confirmed_at: None,
                ..inputs(OrderStatus::Placed)
            },
            now,
        )
        .expect("eta");
        // 20 prep + 10 drive + 3 + 2 buffers.
        assert_eq!(total_min(&eta, now), 35);
        assert_eq!(eta.breakdown.to_restaurant_s, 0.0);
        assert_eq!(eta.breakdown.buffers_s, 300.0);
        assert_eq!(eta.confidence, 0.5);
    }

    #[test]
    fn prep_counts_down_from_confirmation() {
        let i = inputs(OrderStatus::Preparing);
        let at_5 = estimate(&i, at(12, 5)).expect("eta");
        assert_eq!(at_5.breakdown.preparation_s, 15.0 * 60.0);
        let at_25 = estimate(&i, at(12, 25)).expect("eta");
        assert_eq!(at_25.breakdown.preparation_s, 0.0, "never negative");
        // The ETA instant stays put while the kitchen is on time…
        assert_eq!(at_5.eta, estimate(&i, at(12, 10)).expect("eta").eta);
        // …and slips once the food is late.
        assert!(at_25.eta > at_5.eta);
        assert_eq!(at_5.confidence, 0.6);
    }

    #[test]
    fn a_driver_farther_than_the_food_sets_the_pace() {
        let now = at(12, 5);
        let far = estimate(
            &EtaInputs {
                to_restaurant: Some(min(25)),
                ..inputs(OrderStatus::Confirmed)
            },
            now,
        )
        .expect("eta");
        // max(25 driver, 15 prep) + 10 + 5.
        assert_eq!(total_min(&far, now), 40);
        let near = estimate(
            &EtaInputs {
                to_restaurant: Some(min(4)),
                ..inputs(OrderStatus::Confirmed)
            },
            now,
        )
        .expect("eta");
        assert_eq!(total_min(&near, now), 30);
        assert_eq!(near.confidence, 0.8);
    }

    #[test]
    fn ready_orders_have_no_prep_time() {
        let now = at(12, 5);
        let eta = estimate(
            &EtaInputs {
                to_restaurant: Some(min(4)),
                ..inputs(OrderStatus::ReadyForPickup)
            },
            now,
        )
        .expect("eta");
        assert_eq!(eta.breakdown.preparation_s, 0.0);
        assert_eq!(total_min(&eta, now), 19);
    }

    #[test]
    fn after_pickup_only_the_final_leg_and_the_handoff_remain() {
        let now = at(12, 30);
        let eta = estimate(
            &EtaInputs {
                to_restaurant: Some(min(4)),
                driver_to_customer: Some(min(6)),
                ..inputs(OrderStatus::PickedUp)
            },
            now,
        )
        .expect("eta");
        assert_eq!(total_min(&eta, now), 8);
        assert_eq!(eta.breakdown.to_restaurant_s, 0.0);
        assert_eq!(eta.breakdown.buffers_s, 120.0);
        assert_eq!(eta.confidence, 0.9);
        // Without the driver's position, the restaurant's leg stands in.
        let unknown = estimate(&inputs(OrderStatus::PickedUp), now).expect("eta");
        assert_eq!(total_min(&unknown, now), 12);
    }

    #[test]
    fn delivered_orders_show_the_delivery_and_terminal_ones_nothing() {
        let delivered = estimate(
            &EtaInputs {
                delivered_at: Some(at(12, 40)),
                ..inputs(OrderStatus::Delivered)
            },
            at(13, 0),
        )
        .expect("eta");
        assert_eq!(delivered.eta, at(12, 40));
        assert_eq!(delivered.confidence, 1.0);
        assert!(estimate(&inputs(OrderStatus::Completed), at(13, 0)).is_none());
        assert!(estimate(&inputs(OrderStatus::Cancelled), at(13, 0)).is_none());
    }

    #[test]
    fn estimated_legs_lower_the_confidence() {
        let eta = estimate(
            &EtaInputs {
                estimated: true,
                ..inputs(OrderStatus::Confirmed)
            },
            at(12, 5),
        )
        .expect("eta");
        assert!((eta.confidence - 0.5).abs() < 1e-9);
    }

    #[test]
    fn traffic_multipliers_change_on_the_hour_boundaries() {
        let cases = [
            (6, 1.0),
            (7, 1.5),
            (9, 1.5),
            (10, 1.0),
            (11, 1.3),
            (13, 1.3),
            (14, 1.0),
            (16, 1.0),
            (17, 1.5),
            (19, 1.5),
            (20, 1.0),
            (0, 1.0),
        ];
        for (hour, expected) in cases {
            assert_eq!(traffic_multiplier(hour), expected, "hour {hour}");
        }
        assert_eq!(traffic_at(at(6, 59), Tz::UTC), 1.0);
        assert_eq!(traffic_at(at(7, 0), Tz::UTC), 1.5);
        assert_eq!(traffic_at(at(9, 59), Tz::UTC), 1.5);
        assert_eq!(traffic_at(at(10, 0), Tz::UTC), 1.0);
    }

    #[test]
    fn traffic_follows_the_markets_clock_not_utc() {
        // 12:00 UTC on 2 March is 07:00 in New York (EST, UTC−5): rush hour there, lunch in UTC.
        let noon_utc = at(12, 0);
        assert_eq!(traffic_at(noon_utc, Tz::UTC), 1.3);
        assert_eq!(traffic_at(noon_utc, Tz::America__New_York), 1.5);
        // In July New York is on EDT (UTC−4): 11:00 UTC is 07:00 local.
        let july = DateTime::parse_from_rfc3339("2026-07-01T11:00:00Z")
            .expect("valid")
            .with_timezone(&Utc);
        assert_eq!(traffic_at(july, Tz::America__New_York), 1.5);
        assert_eq!(traffic_at(july, Tz::Asia__Kolkata), 1.0, "16:30 in India");
    }
}
