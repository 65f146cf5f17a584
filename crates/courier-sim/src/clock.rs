//! Simulated time and space: a clock that runs `speed` times faster than the wall clock, and
//! straight-line movement over a city small enough for a flat-earth approximation; and the
//! staggered ticks the load generators pace their loops with.

use std::time::{Duration, Instant};

/// Simulated time: `speed` simulated seconds per real second, from the simulation's start.
#[derive(Clone, Copy, Debug)]
pub struct SimClock {
    start: Instant,
    speed: f64,
}

impl SimClock {
    pub fn new(speed: f64) -> Self {
        Self {
            start: Instant::now(),
            speed: speed.max(0.01),
        }
    }

    /// The real duration of `simulated`.
    pub fn real(&self, simulated: Duration) -> Duration {
        simulated.div_f64(self.speed)
    }

    /// The simulated duration of `real`.
    pub fn simulated(&self, real: Duration) -> Duration {
        real.mul_f64(self.speed)
    }

    /// Simulated time since the start.
    pub fn now(&self) -> Duration {
        self.simulated(self.start.elapsed())
    }

    /// Waits for `simulated` time.
    pub async fn sleep(&self, simulated: Duration) {
        tokio::time::sleep(self.real(simulated)).await;
    }
}

/// A position.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spot {
    pub lat: f64,
    pub lon: f64,
}

/// Metres per degree of latitude.
const M_PER_DEG: f64 = 111_195.0;

impl Spot {
    /// Distance to `other` in metres (equirectangular: exact enough within a city).
    pub fn distance_m(self, other: Spot) -> f64 {
        let mean_lat = ((self.lat + other.lat) / 2.0).to_radians();
        let dy = (other.lat - self.lat) * M_PER_DEG;
        let dx = (other.lon - self.lon) * M_PER_DEG * mean_lat.cos();
        dx.hypot(dy)
    }

    /// The point `metres` along the straight line towards `target`, or `target` if it is
    /// nearer than that.
    pub fn toward(self, target: Spot, metres: f64) -> Spot {
        let distance = self.distance_m(target);
        if distance <= metres || distance == 0.0 {
            return target;
        }
        let f = metres / distance;
        Spot {
            lat: self.lat + (target.lat - self.lat) * f,
            lon: self.lon + (target.lon - self.lon) * f,
        }
    }

    /// The point `dx_m` east and `dy_m` north of this one.
    pub fn offset(self, dx_m: f64, dy_m: f64) -> Spot {
        Spot {
            lat: self.lat + dy_m / M_PER_DEG,
            lon: self.lon + dx_m / (M_PER_DEG * self.lat.to_radians().cos()),
        }
    }
}

/// Ticks every `period`, the first one offset by `lane / lanes` of a period, skipping ticks
/// it falls behind on: load-generator loops started together then spread their requests
/// evenly instead of firing in synchronized bursts.
pub fn staggered(period: Duration, lane: usize, lanes: usize) -> tokio::time::Interval {
    let offset = period.mul_f64(lane as f64 / lanes.max(1) as f64);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    ticks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulated_time_runs_speed_times_faster() {
        let clock = SimClock::new(10.0);
        assert_eq!(clock.real(Duration::from_secs(60)), Duration::from_secs(6));
        assert_eq!(
            clock.simulated(Duration::from_secs(6)),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn moving_toward_a_point_covers_the_distance_asked_and_stops_there() {
        let a = Spot {
            lat: 40.7,
            lon: -74.0,
        };
        let b = a.offset(3_000.0, 4_000.0);
        assert!((a.distance_m(b) - 5_000.0).abs() < 5.0);
        let step = a.toward(b, 1_000.0);
        assert!((a.distance_m(step) - 1_000.0).abs() < 2.0);
        assert!((step.distance_m(b) - 4_000.0).abs() < 5.0);
        assert_eq!(a.toward(b, 6_000.0), b);
        assert_eq!(b.toward(b, 10.0), b);
    }
}
