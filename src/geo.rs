//! Plain geometry on the WGS84 sphere: coordinate validation, great-circle distance, and the
//! grid cells that let nearby-restaurant searches a few metres apart share one cache entry.
//! Pure functions, no I/O.

/// Mean Earth radius in metres (the one haversine distances use).
pub const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// Size of a cache cell, in degrees of latitude and longitude (about 550 m north–south).
pub const CELL_DEG: f64 = 0.005;

/// Upper bound on the distance from any point of a cell to its centre, in metres: half the
/// diagonal of a 0.005° × 0.005° cell at the equator (where cells are widest) is about 393 m.
pub const CELL_HALF_DIAGONAL_M: f64 = 400.0;

/// Largest latitude (north or south) that Valkey's geo index can hold: its geohashes cover the
/// Web Mercator square, so `GEOADD` and `GEOSEARCH` refuse points nearer the poles.
pub const GEO_INDEX_MAX_LAT: f64 = 85.051_128_78;

/// A validated position.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    pub lat: f64,
    pub lon: f64,
}

impl Point {
    /// A point, if `lat` is in [-90, 90] and `lon` in [-180, 180] (both finite).
    pub fn new(lat: f64, lon: f64) -> Option<Self> {
        let ok = lat.is_finite()
            && lon.is_finite()
            && (-90.0..=90.0).contains(&lat)
            && (-180.0..=180.0).contains(&lon);
        ok.then_some(Self { lat, lon })
    }

    /// Whether Valkey's geo index can hold this point (|lat| ≤ [`GEO_INDEX_MAX_LAT`]).
    pub fn indexable(self) -> bool {
        self.lat.abs() <= GEO_INDEX_MAX_LAT
    }
}

/// Great-circle distance between two points, in metres.
pub fn haversine_m(a: Point, b: Point) -> f64 {
    let (lat1, lat2) = (a.lat.to_radians(), b.lat.to_radians());
    let dlat = lat2 - lat1;
    let dlon = (b.lon - a.lon).to_radians();
    let h = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlon / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * h.sqrt().min(1.0).asin()
}

/// The grid cell containing `p`, as integer indices.
pub fn cell_of(p: Point) -> (i64, i64) {
    // |lat| ≤ 90 and |lon| ≤ 180, so the indices are small and the casts exact.
    (
        (p.lat / CELL_DEG).floor() as i64,
        (p.lon / CELL_DEG).floor() as i64,
    )
}

/// The centre of a cell.
pub fn cell_center(cell: (i64, i64)) -> Point {
    Point {
        lat: ((cell.0 as f64) + 0.5) * CELL_DEG,
        lon: ((cell.1 as f64) + 0.5) * CELL_DEG,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(lat: f64, lon: f64) -> Point {
        Point::new(lat, lon).expect("valid")
    }

    #[test]
    fn coordinates_are_validated() {
        assert!(Point::new(90.0, 180.0).is_some());
        assert!(Point::new(-90.0, -180.0).is_some());
        assert!(Point::new(90.1, 0.0).is_none());
        assert!(Point::new(0.0, -180.1).is_none());
        assert!(Point::new(f64::NAN, 0.0).is_none());
        assert!(Point::new(0.0, f64::INFINITY).is_none());
    }

    #[test]
    fn haversine_matches_known_distances() {
        // One degree of latitude is about 111.2 km.
        let d = haversine_m(p(0.0, 0.0), p(1.0, 0.0));
        assert!((d - 111_195.0).abs() < 10.0, "{d}");
        assert_eq!(haversine_m(p(40.0, -74.0), p(40.0, -74.0)), 0.0);
        // Symmetric.
        let (a, b) = (p(40.7128, -74.006), p(40.7306, -73.9352));
        assert!((haversine_m(a, b) - haversine_m(b, a)).abs() < 1e-6);
    }

    #[test]
    fn every_point_is_within_the_half_diagonal_of_its_cell_centre() {
        for (lat, lon) in [
            (0.0, 0.0),
            (0.0049, 0.0049),
            (40.71, -74.0),
            (-33.9, 151.2),
            (0.00001, 179.999),
        ] {
            let point = p(lat, lon);
            let centre = cell_center(cell_of(point));
            assert!(
                haversine_m(point, centre) <= CELL_HALF_DIAGONAL_M,
                "{lat},{lon}"
            );
        }
    }

    #[test]
    fn points_metres_apart_share_a_cell() {
        assert_eq!(
            cell_of(p(40.71201, -74.00601)),
            cell_of(p(40.71203, -74.00604))
        );
    }
}
