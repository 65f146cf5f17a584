//! Markets: the cities courier serves, and the shard key of everything local to one.
//!
//! A market is a circle (a centre and a radius) with an IANA time zone. Every restaurant and
//! order belongs to one; a driver belongs to the one its position is in. The market decides
//! - which Valkey keys a driver's state lives under: all keys of a market share the hash tag
//!   `{<slug>}` ([`Market::tag`]), so its scripts are atomic on one node and markets spread over
//!   a cluster;
//! - the local hour that sets the traffic multiplier of its routes;
//! - the `market` label of its metrics.
//!
//! Circles may overlap (a metro area inside a country-wide market, two neighbouring cities):
//! a point belongs to the smallest active market that contains it, the nearer centre breaking
//! a tie ([`Snapshot::containing`]). The migrated `default` market covers the whole earth, so
//! any market created later wins inside its own circle.
//!
//! Pure: the types, their validation and the resolution rule. The table and the cached
//! snapshot every process reads are [`crate::store::markets`].

use std::sync::Arc;

use chrono_tz::Tz;
use serde::Serialize;

use crate::geo::{Point, haversine_m};

/// Largest radius of a market, in km: a circle this large covers the whole earth.
pub const MAX_RADIUS_KM: f64 = 20_100.0;

/// A market's slug: 1 to 32 of `a-z`, `0-9` and inner `-`. It names the market's Valkey hash
/// tag, so it never changes once the market exists.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct MarketSlug(String);

impl MarketSlug {
    /// The slug, if `raw` is one.
    pub fn parse(raw: &str) -> Option<Self> {
        let ok = (1..=32).contains(&raw.len())
            && raw
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !raw.starts_with('-')
            && !raw.ends_with('-');
        ok.then(|| Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for MarketSlug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One market.
#[derive(Clone, Debug, PartialEq)]
pub struct Market {
    pub id: i64,
    pub slug: MarketSlug,
    pub name: String,
    pub time_zone: Tz,
    pub center: Point,
    pub radius_km: f64,
    pub active: bool,
}

impl Market {
    /// Whether `point` is inside the market's circle.
    pub fn contains(&self, point: Point) -> bool {
        haversine_m(self.center, point) <= self.radius_km * 1_000.0
    }

    /// The part of every Valkey key of this market that puts them in one cluster slot.
    pub fn tag(&self) -> String {
        format!("{{{}}}", self.slug)
    }
}

/// The markets as one process last read them; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Smallest first (then by id), so the first active one containing a point is its market.
    markets: Arc<Vec<Arc<Market>>>,
}

impl Snapshot {
    /// A snapshot of `markets`.
    pub fn new(mut markets: Vec<Market>) -> Self {
        markets.sort_by(|a, b| a.radius_km.total_cmp(&b.radius_km).then(a.id.cmp(&b.id)));
        Self {
            markets: Arc::new(markets.into_iter().map(Arc::new).collect()),
        }
    }

    /// The market `point` belongs to: the smallest active market containing it, the nearer
    /// centre first among equal radii; `None` when no active market contains it.
    pub fn containing(&self, point: Point) -> Option<&Arc<Market>> {
        let mut found: Option<(&Arc<Market>, f64)> = None;
        for market in self.markets.iter().filter(|m| m.active) {
            if let Some((best, _)) = found
                && market.radius_km > best.radius_km
            {
                break;
            }
            let distance = haversine_m(market.center, point);
            if distance > market.radius_km * 1_000.0 {
                continue;
            }
            if found.is_none_or(|(_, nearest)| distance < nearest) {
                found = Some((market, distance));
            }
        }
        found.map(|(market, _)| market)
    }

    /// The market with id `id`, active or not.
    pub fn get(&self, id: i64) -> Option<&Arc<Market>> {
        self.markets.iter().find(|m| m.id == id)
    }

    /// Every market, active or not, smallest first.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Market>> {
        self.markets.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn market(id: i64, slug: &str, lat: f64, lon: f64, radius_km: f64) -> Market {
        Market {
            id,
            slug: MarketSlug::parse(slug).expect("valid slug"),
            name: slug.to_owned(),
            time_zone: Tz::UTC,
            center: Point { lat, lon },
            radius_km,
            active: true,
        }
    }

    #[test]
    fn slugs_are_short_lowercase_words_with_inner_dashes() {
        for good in ["nyc", "sao-paulo", "a", "x1", &"a".repeat(32)] {
            assert!(MarketSlug::parse(good).is_some(), "{good}");
        }
        for bad in [
            "",
            "NYC",
            "-nyc",
            "nyc-",
            "ny c",
            "ny{c}",
            "ñandú",
            &"a".repeat(33),
        ] {
            assert!(MarketSlug::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn a_point_belongs_to_the_smallest_active_market_containing_it() {
        let world = market(1, "default", 0.0, 0.0, MAX_RADIUS_KM);
        let nyc = market(2, "nyc", 40.75, -73.98, 30.0);
        let newark = market(3, "newark", 40.73, -74.17, 30.0);
        let mut closed = market(4, "manhattan", 40.78, -73.97, 5.0);
        closed.active = false;
        let markets = Snapshot::new(vec![world, nyc, newark, closed]);
        let slug = |lat, lon| {
            markets
                .containing(Point { lat, lon })
                .map(|m| m.slug.to_string())
        };
        // Midtown: inside nyc and newark's circles and the inactive manhattan; nyc is nearer.
        assert_eq!(slug(40.75, -73.98).as_deref(), Some("nyc"));
        // Downtown Newark: inside both 30 km circles, nearer newark's centre.
        assert_eq!(slug(40.735, -74.172).as_deref(), Some("newark"));
        // Far from both cities: only the world contains it.
        assert_eq!(slug(51.5, -0.12).as_deref(), Some("default"));
    }

    #[test]
    fn a_point_outside_every_active_market_has_none() {
        let mut world = market(1, "default", 0.0, 0.0, MAX_RADIUS_KM);
        world.active = false;
        let markets = Snapshot::new(vec![world, market(2, "nyc", 40.75, -73.98, 30.0)]);
        assert!(
            markets
                .containing(Point {
                    lat: 51.5,
                    lon: -0.12
                })
                .is_none()
        );
        // 31 km east of the centre: outside the 30 km circle.
        let east = Point {
            lat: 40.75,
            lon: -73.98 + 31.0 / (111.32 * 40.75_f64.to_radians().cos()),
        };
        assert!(markets.containing(east).is_none());
        assert_eq!(markets.get(1).map(|m| m.active), Some(false));
        assert_eq!(markets.all().count(), 2);
    }

    #[test]
    fn a_market_tag_is_its_slug_in_braces() {
        assert_eq!(market(2, "nyc", 0.0, 0.0, 1.0).tag(), "{nyc}");
    }
}
