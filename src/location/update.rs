//! A driver's position report, validated once. Pure: no I/O.

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::geo::Point;

/// How far in the future a report's `recorded_at` may be (clock skew on phones).
pub const MAX_FUTURE_SKEW_MS: i64 = 60_000;
/// How old a report may be and still be accepted: older than the freshness window it would
/// only ever be history, never a live position.
pub const MAX_AGE_MS: i64 = 24 * 3600 * 1000;

/// The range of a driver's position, in the words of every refusal: the geo index ends short of
/// the poles (see [`crate::geo::GEO_INDEX_MAX_LAT`]).
pub const VALID_RANGE: &str = "lat must be in [-85.05112878, 85.05112878] (the range of the geo index) and lon in [-180, 180]";

/// A position report as clients send it.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawUpdate {
    /// Within ±85.05112878.
    #[schema(minimum = -85.05112878, maximum = 85.05112878)]
    pub lat: f64,
    #[schema(minimum = -180, maximum = 180)]
    pub lon: f64,
    /// Degrees clockwise from north, [0, 360).
    #[schema(minimum = 0, exclusive_maximum = 360)]
    pub heading: Option<f64>,
    /// Metres per second, [0, 100].
    #[schema(minimum = 0, maximum = 100)]
    pub speed: Option<f64>,
    /// Metres, [0, 10000].
    #[schema(minimum = 0, maximum = 10000)]
    pub accuracy: Option<f64>,
    /// When the phone took the fix; now when absent. At most a minute ahead and 24 hours old.
    pub recorded_at: Option<DateTime<Utc>>,
}

/// A validated position report.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LocationUpdate {
    pub driver_id: i64,
    pub point: Point,
    /// Degrees clockwise from north, [0, 360).
    pub heading: Option<f32>,
    /// Metres per second, [0, 100].
    pub speed_mps: Option<f32>,
    /// Metres, [0, 10 000].
    pub accuracy_m: Option<f32>,
    /// When the phone took the fix, in unix milliseconds.
    pub recorded_at_ms: i64,
}

impl LocationUpdate {
    /// A bare position fix (no heading, speed or accuracy).
    pub fn position(driver_id: i64, point: Point, recorded_at_ms: i64) -> Self {
        Self {
            driver_id,
            point,
            heading: None,
            speed_mps: None,
            accuracy_m: None,
            recorded_at_ms,
        }
    }
}

/// Why a report was refused: a stable code and a message naming the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Invalid {
    pub code: &'static str,
    pub message: String,
}

fn invalid(code: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        code,
        message: message.into(),
    }
}

/// An optional reading, accepted when finite and `in_range`; `range` words the rule.
fn reading(
    value: Option<f64>,
    in_range: impl Fn(f64) -> bool,
    field: &str,
    range: &str,
) -> Result<Option<f32>, Invalid> {
    match value {
        None => Ok(None),
        // Readings are small (at most 10 000), so f32 keeps them to well under a millimetre.
        Some(v) if v.is_finite() && in_range(v) => Ok(Some(v as f32)),
        Some(_) => Err(invalid(
            "invalid_field",
            format!("{field} must be a number in {range}"),
        )),
    }
}

impl RawUpdate {
    /// Validates the report of `driver_id` received at `now_ms` (unix milliseconds).
    pub fn validate(&self, driver_id: i64, now_ms: i64) -> Result<LocationUpdate, Invalid> {
        let point = Point::new(self.lat, self.lon)
            .filter(|p| p.indexable())
            .ok_or_else(|| invalid("invalid_location", VALID_RANGE))?;
        let recorded_at_ms = self.recorded_at.map_or(now_ms, |t| t.timestamp_millis());
        if recorded_at_ms > now_ms + MAX_FUTURE_SKEW_MS {
            return Err(invalid(
                "recorded_at_in_future",
                "recorded_at is more than a minute in the future",
            ));
        }
        if recorded_at_ms < now_ms - MAX_AGE_MS {
            return Err(invalid(
                "recorded_at_too_old",
                "recorded_at is more than 24 hours in the past",
            ));
        }
        Ok(LocationUpdate {
            driver_id,
            point,
            heading: reading(
                self.heading,
                |v| (0.0..360.0).contains(&v),
                "heading",
                "[0, 360)",
            )?,
            speed_mps: reading(
                self.speed,
                |v| (0.0..=100.0).contains(&v),
                "speed",
                "[0, 100]",
            )?,
            accuracy_m: reading(
                self.accuracy,
                |v| (0.0..=10_000.0).contains(&v),
                "accuracy",
                "[0, 10000]",
            )?,
            recorded_at_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    fn raw(lat: f64, lon: f64) -> RawUpdate {
        RawUpdate {
            lat,
            lon,
            heading: None,
            speed: None,
            accuracy: None,
            recorded_at: None,
        }
    }

    fn at(ms: i64) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp_millis(ms)
    }

    #[test]
    fn a_plain_report_is_stamped_with_the_receipt_time() {
        let update = raw(40.7, -74.0).validate(3, NOW).expect("valid");
        assert_eq!(update.recorded_at_ms, NOW);
        assert_eq!(update.driver_id, 3);
    }

    #[test]
    fn coordinates_must_be_in_the_geo_index_range() {
        for (lat, lon) in [
            (90.01, 0.0),
            (-90.01, 0.0),
            (89.0, 10.0),
            (-85.0512, 0.0),
            (0.0, 180.01),
            (0.0, -180.01),
            (f64::NAN, 0.0),
        ] {
            let refused = raw(lat, lon).validate(1, NOW).expect_err("invalid");
            assert_eq!(refused.code, "invalid_location", "{lat},{lon}");
            assert!(
                refused.message.contains("85.05112878"),
                "{}",
                refused.message
            );
        }
        assert!(raw(85.05112878, 180.0).validate(1, NOW).is_ok());
        assert!(raw(-85.05112878, -180.0).validate(1, NOW).is_ok());
    }

    #[test]
    fn recorded_at_may_be_at_most_a_minute_ahead() {
        let mut update = raw(1.0, 1.0);
        update.recorded_at = at(NOW + MAX_FUTURE_SKEW_MS);
        assert!(update.validate(1, NOW).is_ok());
        update.recorded_at = at(NOW + MAX_FUTURE_SKEW_MS + 1);
        assert_eq!(
            update.validate(1, NOW).expect_err("future").code,
            "recorded_at_in_future"
        );
        update.recorded_at = at(NOW - MAX_AGE_MS - 1);
        assert_eq!(
            update.validate(1, NOW).expect_err("old").code,
            "recorded_at_too_old"
        );
    }

    #[test]
    fn optional_readings_are_bounded() {
        let mut update = raw(1.0, 1.0);
        update.heading = Some(359.9);
        update.speed = Some(100.0);
        update.accuracy = Some(5.0);
        let ok = update.validate(1, NOW).expect("valid");
        assert_eq!(ok.speed_mps, Some(100.0));
        for (heading, speed, accuracy) in [
            (Some(360.0), None, None),
            (None, Some(-1.0), None),
            (None, None, Some(f64::INFINITY)),
        ] {
            let mut bad = raw(1.0, 1.0);
            bad.heading = heading;
            bad.speed = speed;
            bad.accuracy = accuracy;
            assert_eq!(
                bad.validate(1, NOW).expect_err("bounded").code,
                "invalid_field"
            );
        }
    }
}
