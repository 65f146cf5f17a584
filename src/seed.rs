//! `courier seed`: a realistic synthetic city for development and demos — restaurants with
//! menus and prep times spread over a ~30×30 km area, drivers and customers — deterministic
//! for a given `--seed`; or several such cities, each its own market (`--markets N`). Rows go in with a few multi-row inserts, not one round trip each.
//!
//! It targets an empty database and refuses one that already has restaurants, so it can never
//! mix two cities or duplicate one.

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng as _, SeedableRng};
use sqlx::PgPool;

use crate::market::Snapshot;

/// What to create.
#[derive(Clone, Debug)]
pub struct SeedPlan {
    pub seed: u64,
    pub center_lat: f64,
    pub center_lon: f64,
    /// Side of the square city, in km.
    pub size_km: f64,
    pub restaurants: usize,
    pub drivers: usize,
    pub customers: usize,
    /// How many cities, each its own market: 1 puts one city at the centre, in whatever market
    /// contains it; 2 to [`CITIES`]`.len()` create that many markets from [`CITIES`] (the
    /// centre is then not used) and spread the restaurants over them.
    pub markets: usize,
}

/// The cities `--markets` creates, in order: slug, name, time zone, centre.
pub const CITIES: [(&str, &str, &str, f64, f64); 5] = [
    ("nyc", "New York", "America/New_York", 40.7128, -74.0060),
    ("chicago", "Chicago", "America/Chicago", 41.8781, -87.6298),
    ("houston", "Houston", "America/Chicago", 29.7604, -95.3698),
    ("phoenix", "Phoenix", "America/Phoenix", 33.4484, -112.0740),
    (
        "seattle",
        "Seattle",
        "America/Los_Angeles",
        47.6062,
        -122.3321,
    ),
];

/// What was created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seeded {
    /// The operator account (user 1 in an empty database): `courier token issue --role
    /// operator --subject <it>` gives a token that works.
    pub operator: i64,
    pub restaurants: u64,
    pub menu_items: u64,
    pub drivers: u64,
    pub customers: u64,
}

/// Why seeding failed.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("the database already has restaurants; seed an empty database")]
    NotEmpty,
    #[error("no active market contains the city centre; create one or seed with --markets")]
    OutsideMarkets,
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// The seeded generator: the same sequence on every machine for a seed.
type Rng = StdRng;

/// Uniform in [lo, hi] (integers).
fn range(rng: &mut Rng, lo: i64, hi: i64) -> i64 {
    rng.random_range(lo..=hi.max(lo))
}

/// One of `items` (not empty).
fn pick<'a>(rng: &mut Rng, items: &'a [&'a str]) -> &'a str {
    items.choose(rng).copied().unwrap_or_default()
}

const CUISINES: &[&str] = &[
    "pizza", "sushi", "burgers", "thai", "indian", "mexican", "chinese", "salads", "bakery",
    "korean",
];
const ADJECTIVES: &[&str] = &[
    "Golden", "Little", "Happy", "Blue", "Urban", "Old Town", "Corner", "Green", "Lucky", "Royal",
];
const DISHES: &[&str] = &[
    "Special", "Classic", "Deluxe", "Spicy", "House", "Veggie", "Family", "Chef's", "Crispy",
    "Smoked",
];
const CATEGORIES: &[&str] = &["Starters", "Mains", "Sides", "Desserts", "Drinks"];
const VEHICLES: &[&str] = &["bicycle", "scooter", "car", "motorbike"];

/// A point uniformly inside the square city of side `size_km` around `center`.
fn point_in_city(rng: &mut Rng, center: (f64, f64), size_km: f64) -> (f64, f64) {
    let half = size_km / 2.0;
    let dy_km = (rng.random::<f64>() * 2.0 - 1.0) * half;
    let dx_km = (rng.random::<f64>() * 2.0 - 1.0) * half;
    let lat = center.0 + dy_km / 111.32;
    let lon = center.1 + dx_km / (111.32 * center.0.to_radians().cos());
    (lat, lon)
}

/// The cities to seed, each with its market: the markets of [`CITIES`] created in `tx`, or the
/// one city at the plan's centre in the market that contains it.
async fn cities(
    tx: &mut sqlx::PgConnection,
    plan: &SeedPlan,
) -> Result<Vec<((f64, f64), i64)>, SeedError> {
    if plan.markets <= 1 {
        let rows = crate::store::markets::list_on(&mut *tx).await?;
        let snapshot = Snapshot::new(rows.iter().filter_map(|r| r.market()).collect());
        let center = crate::geo::Point::new(plan.center_lat, plan.center_lon)
            .ok_or(SeedError::OutsideMarkets)?;
        let market = snapshot
            .containing(center)
            .ok_or(SeedError::OutsideMarkets)?;
        return Ok(vec![((plan.center_lat, plan.center_lon), market.id)]);
    }
    let mut cities = Vec::new();
    for (slug, name, zone, lat, lon) in CITIES.iter().take(plan.markets) {
        // The circle reaches the square's corners (half its diagonal is 0.71 of its side).
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO markets (slug, name, time_zone, center, radius_km)
             VALUES ($1, $2, $3, ST_SetSRID(ST_MakePoint($5, $4), 4326)::geography, $6)
             RETURNING id",
        )
        .bind(slug)
        .bind(name)
        .bind(zone)
        .bind(lat)
        .bind(lon)
        .bind(plan.size_km * 0.75)
        .fetch_one(&mut *tx)
        .await?;
        cities.push(((*lat, *lon), id));
    }
    Ok(cities)
}

/// Seeds the city described by `plan` in one transaction.
pub async fn seed(pool: &PgPool, plan: &SeedPlan) -> Result<Seeded, SeedError> {
    let mut rng = Rng::seed_from_u64(plan.seed);
    let mut tx = crate::store::begin(pool).await?;
    let existing: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM restaurants)")
        .fetch_one(&mut *tx)
        .await?;
    if existing {
        return Err(SeedError::NotEmpty);
    }
    let cities = cities(&mut tx, plan).await?;

    let mut names = Vec::with_capacity(plan.restaurants);
    let mut cuisines = Vec::with_capacity(plan.restaurants);
    let mut lats = Vec::with_capacity(plan.restaurants);
    let mut lons = Vec::with_capacity(plan.restaurants);
    let mut prep = Vec::with_capacity(plan.restaurants);
    let mut ratings = Vec::with_capacity(plan.restaurants);
    let mut markets = Vec::with_capacity(plan.restaurants);
    for n in 0..plan.restaurants {
        let (center, market) = cities[n % cities.len()];
        markets.push(market);
        let cuisine = pick(&mut rng, CUISINES);
        names.push(format!("{} {} #{n}", pick(&mut rng, ADJECTIVES), cuisine));
        cuisines.push(cuisine.to_owned());
        let (lat, lon) = point_in_city(&mut rng, center, plan.size_km);
        lats.push(lat);
        lons.push(lon);
        prep.push(i32::try_from(range(&mut rng, 10, 45)).unwrap_or(20));
        ratings.push(3.0 + (range(&mut rng, 0, 20) as f64) / 10.0);
    }
    let restaurant_ids: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO restaurants (name, address, location, cuisine_type, rating, prep_time_minutes,
                                  market_id)
         SELECT name, 'Seed street ' || ord, ST_SetSRID(ST_MakePoint(lon, lat), 4326)::geography,
                cuisine, rating::numeric(2, 1), prep, market
         FROM UNNEST($1::text[], $2::text[], $3::float8[], $4::float8[], $5::int[], $6::float8[],
                     $7::bigint[])
              WITH ORDINALITY AS t(name, cuisine, lat, lon, prep, rating, market, ord)
         ORDER BY ord
         RETURNING id",
    )
    .bind(&names)
    .bind(&cuisines)
    .bind(&lats)
    .bind(&lons)
    .bind(&prep)
    .bind(&ratings)
    .bind(&markets)
    .fetch_all(&mut *tx)
    .await?;

    let (mut item_restaurants, mut item_names, mut item_categories, mut item_prices) =
        (vec![], vec![], vec![], vec![]);
    for (index, id) in restaurant_ids.iter().enumerate() {
        for n in 0..range(&mut rng, 8, 20) {
            item_restaurants.push(*id);
            item_names.push(format!(
                "{} {} {}",
                pick(&mut rng, DISHES),
                cuisines[index],
                n + 1
            ));
            item_categories.push(pick(&mut rng, CATEGORIES).to_owned());
            item_prices.push(range(&mut rng, 299, 2_999));
        }
    }
    let menu_items = sqlx::query(
        "INSERT INTO menu_items (restaurant_id, name, price_cents, category)
         SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::bigint[], $4::text[])",
    )
    .bind(&item_restaurants)
    .bind(&item_names)
    .bind(&item_prices)
    .bind(&item_categories)
    .execute(&mut *tx)
    .await?
    .rows_affected();

    let tag = plan.seed;
    let operator: i64 = sqlx::query_scalar(
        "INSERT INTO users (role, name, email)
         VALUES ('operator', 'Operator', 'operator.' || $1 || '@seed.courier.invalid') RETURNING id",
    )
    .bind(tag.to_string())
    .fetch_one(&mut *tx)
    .await?;
    let customers = sqlx::query(
        "INSERT INTO users (role, name, email)
         SELECT 'customer', 'Customer ' || n, 'customer' || n || '.' || $2 || '@seed.courier.invalid'
         FROM generate_series(1, $1) AS n",
    )
    .bind(i64::try_from(plan.customers).unwrap_or(0))
    .bind(tag.to_string())
    .execute(&mut *tx)
    .await?
    .rows_affected();

    let vehicles: Vec<String> = (0..plan.drivers)
        .map(|_| pick(&mut rng, VEHICLES).to_owned())
        .collect();
    let driver_ratings: Vec<f64> = (0..plan.drivers)
        .map(|_| 4.0 + (range(&mut rng, 0, 10) as f64) / 10.0)
        .collect();
    let deliveries: Vec<i32> = (0..plan.drivers)
        .map(|_| i32::try_from(range(&mut rng, 0, 400)).unwrap_or(0))
        .collect();
    let drivers = sqlx::query(
        "WITH new_users AS (
             INSERT INTO users (role, name, email)
             SELECT 'driver', 'Driver ' || ord, 'driver' || ord || '.' || $4 || '@seed.courier.invalid'
             FROM generate_series(1, cardinality($1::text[])) AS ord
             RETURNING id, substring(email from '^driver([0-9]+)\\.')::bigint AS ord
         )
         INSERT INTO drivers (user_id, vehicle_type, rating, total_deliveries)
         SELECT u.id, t.vehicle, t.rating::numeric(2, 1), t.deliveries
         FROM UNNEST($1::text[], $2::float8[], $3::int[]) WITH ORDINALITY AS t(vehicle, rating, deliveries, ord)
         JOIN new_users u ON u.ord = t.ord",
    )
    .bind(&vehicles)
    .bind(&driver_ratings)
    .bind(&deliveries)
    .bind(tag.to_string())
    .execute(&mut *tx)
    .await?
    .rows_affected();

    tx.commit().await?;
    Ok(Seeded {
        operator,
        restaurants: restaurant_ids.len() as u64,
        menu_items,
        drivers,
        customers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sequence_is_fixed_by_the_seed() {
        let a: Vec<u64> = {
            let mut r = Rng::seed_from_u64(7);
            (0..5).map(|_| r.random::<u64>()).collect()
        };
        let b: Vec<u64> = {
            let mut r = Rng::seed_from_u64(7);
            (0..5).map(|_| r.random::<u64>()).collect()
        };
        let c: Vec<u64> = {
            let mut r = Rng::seed_from_u64(8);
            (0..5).map(|_| r.random::<u64>()).collect()
        };
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn a_seeded_market_reaches_the_corners_of_its_city() {
        let (_, _, _, lat, lon) = CITIES[0];
        let corner = crate::geo::Point {
            lat: lat + 15.0 / 111.32,
            lon: lon + 15.0 / (111.32 * lat.to_radians().cos()),
        };
        let center = crate::geo::Point { lat, lon };
        assert!(crate::geo::haversine_m(center, corner) < 30.0 * 0.75 * 1_000.0);
        // And the cities are far apart: no two circles overlap.
        for (i, a) in CITIES.iter().enumerate() {
            for b in &CITIES[i + 1..] {
                let d = crate::geo::haversine_m(
                    crate::geo::Point { lat: a.3, lon: a.4 },
                    crate::geo::Point { lat: b.3, lon: b.4 },
                );
                assert!(d > 2.0 * 30.0 * 0.75 * 1_000.0, "{} and {}", a.0, b.0);
            }
        }
    }

    #[test]
    fn ranges_and_points_stay_in_bounds() {
        let mut rng = Rng::seed_from_u64(42);
        for _ in 0..10_000 {
            let v = range(&mut rng, 10, 45);
            assert!((10..=45).contains(&v));
            let u = rng.random::<f64>();
            assert!((0.0..1.0).contains(&u));
            let (lat, lon) = point_in_city(&mut rng, (40.0, -74.0), 30.0);
            assert!((lat - 40.0).abs() <= 15.0 / 111.32 + 1e-9);
            assert!((lon + 74.0).abs() <= 15.0 / (111.32 * 40f64.to_radians().cos()) + 1e-9);
        }
    }
}
