//! The travel-time model matching uses until the ETA estimator exists: straight-line distance
//! stretched by a road factor, at an average city speed. Pure functions, no I/O.
//!
//! Why this model: matching compares drivers with each other and with the food's remaining
//! prep time; it needs a consistent, cheap estimate for dozens of candidates per round, not a
//! routing call per candidate. 1.3 is the usual ratio of road to great-circle distance in a
//! street grid; 25 km/h is a typical urban average including lights and parking.

use std::time::Duration;

use crate::geo::{Point, haversine_m};

/// Road distance over great-circle distance in a city.
pub const ROAD_FACTOR: f64 = 1.3;
/// Average driving speed in a city, km/h.
pub const CITY_SPEED_KMH: f64 = 25.0;

/// Estimated road distance between two points, in metres.
pub fn road_m(from: Point, to: Point) -> f64 {
    haversine_m(from, to) * ROAD_FACTOR
}

/// Time to drive `road_m` metres at [`CITY_SPEED_KMH`].
pub fn drive_time_for(road_m: f64) -> Duration {
    let metres_per_second = CITY_SPEED_KMH * 1_000.0 / 3_600.0;
    Duration::from_secs_f64((road_m / metres_per_second).max(0.0))
}

/// Estimated driving time between two points.
pub fn drive_time(from: Point, to: Point) -> Duration {
    drive_time_for(road_m(from, to))
}

/// Road length of a route through `stops` in order.
pub fn route_m(stops: &[Point]) -> f64 {
    stops.windows(2).map(|w| road_m(w[0], w[1])).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kilometre_of_road_takes_144_seconds() {
        assert_eq!(drive_time_for(1_000.0).as_secs(), 144);
        assert_eq!(drive_time_for(0.0), Duration::ZERO);
    }

    #[test]
    fn routes_add_their_legs() {
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
        let legs = road_m(a, b) + road_m(b, c);
        assert!((route_m(&[a, b, c]) - legs).abs() < 1e-6);
        assert_eq!(route_m(&[a]), 0.0);
        assert!((road_m(a, b) - haversine_m(a, b) * 1.3).abs() < 1e-9);
    }
}
