//! The built-in travel-time estimator: great-circle distance stretched by a detour factor, at
//! a configured average speed. Pure functions, no I/O.
//!
//! It is the routing provider when no routing service is configured, the fallback when the
//! service fails, and what batching uses to compare route variants (several legs per
//! candidate, where consistency matters more than precision). 1.3 is the usual ratio of road
//! to great-circle distance in a street grid; 25 km/h (the default speed) is a typical urban
//! average including lights and parking.

use std::time::Duration;

use crate::eta::Route;
use crate::geo::{Point, haversine_m};

/// Road distance over great-circle distance in a city.
pub const DETOUR_FACTOR: f64 = 1.3;
/// Default average driving speed in a city, km/h.
pub const DEFAULT_SPEED_KMH: f64 = 25.0;

/// The estimator, at an average speed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimator {
    speed_kmh: f64,
}

impl Default for Estimator {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl Estimator {
    /// The estimator at [`DEFAULT_SPEED_KMH`].
    pub const DEFAULT: Estimator = Estimator {
        speed_kmh: DEFAULT_SPEED_KMH,
    };

    /// An estimator at `speed_kmh`, if it is a plausible speed (1–200 km/h).
    pub fn new(speed_kmh: f64) -> Option<Self> {
        (speed_kmh.is_finite() && (1.0..=200.0).contains(&speed_kmh)).then_some(Self { speed_kmh })
    }

    /// Estimated road distance between two points, in metres.
    pub fn road_m(&self, from: Point, to: Point) -> f64 {
        haversine_m(from, to) * DETOUR_FACTOR
    }

    /// Time to drive `road_m` metres.
    pub fn time_for(&self, road_m: f64) -> Duration {
        let metres_per_second = self.speed_kmh * 1_000.0 / 3_600.0;
        Duration::from_secs_f64((road_m / metres_per_second).max(0.0))
    }

    /// Road length of a route through `stops` in order.
    pub fn route_m(&self, stops: &[Point]) -> f64 {
        stops.windows(2).map(|w| self.road_m(w[0], w[1])).sum()
    }

    /// The estimated route between two points (without traffic).
    pub fn route(&self, from: Point, to: Point) -> Route {
        let distance_m = self.road_m(from, to);
        Route {
            duration: self.time_for(distance_m),
            distance_m,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kilometre_of_road_takes_144_seconds_at_25_kmh() {
        let e = Estimator::default();
        assert_eq!(e.time_for(1_000.0).as_secs(), 144);
        assert_eq!(e.time_for(0.0), Duration::ZERO);
        let fast = Estimator::new(50.0).expect("valid speed");
        assert_eq!(fast.time_for(1_000.0).as_secs(), 72);
        assert!(Estimator::new(0.0).is_none());
        assert!(Estimator::new(f64::NAN).is_none());
    }

    #[test]
    fn routes_add_their_legs_with_the_detour_factor() {
        let e = Estimator::default();
        let a = Point {
            lat: 40.0,
            lon: -74.0,
        };
        let b = Point {
            lat: 40.01,
            lon: -74.0,
        };
        let c = Point {
            lat: 40.02,
            lon: -74.0,
        };
        let legs = e.road_m(a, b) + e.road_m(b, c);
        assert!((e.route_m(&[a, b, c]) - legs).abs() < 1e-6);
        assert_eq!(e.route_m(&[a]), 0.0);
        assert!((e.road_m(a, b) - haversine_m(a, b) * 1.3).abs() < 1e-9);
        let route = e.route(a, b);
        assert_eq!(route.duration, e.time_for(route.distance_m));
    }
}
