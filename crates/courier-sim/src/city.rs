//! The city the simulation runs in, put on the marketplace through the public API as an
//! operator would: restaurants (each adding its own menu), customers, and drivers (each
//! created with its driver profile). Every name and email carries the run's tag, so runs
//! never collide on the same database.

use std::time::Duration;

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use rand::Rng;
use rand::rngs::StdRng;
use serde::Deserialize;
use serde_json::json;

use crate::api::{Api, As};
use crate::clock::Spot;

/// How many setup requests run at once.
const SETUP_CONCURRENCY: usize = 16;

/// A restaurant and its menu (item id, price).
#[derive(Clone, Debug)]
pub struct Restaurant {
    pub id: i64,
    pub at: Spot,
    pub prep: Duration,
    pub menu: Vec<i64>,
}

/// A customer and where it lives.
#[derive(Clone, Copy, Debug)]
pub struct Customer {
    pub id: i64,
    pub at: Spot,
}

/// A driver, where its shift starts, and the city it works in.
#[derive(Clone, Copy, Debug)]
pub struct Driver {
    pub id: i64,
    pub start: Spot,
    pub city: usize,
}

/// Everyone in the city.
#[derive(Clone, Debug)]
pub struct City {
    pub restaurants: Vec<Restaurant>,
    pub customers: Vec<Customer>,
    pub drivers: Vec<Driver>,
}

/// The city's shape and population.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub center: Spot,
    /// Side of the square city.
    pub side_m: f64,
    pub restaurants: usize,
    pub customers: usize,
    pub drivers: usize,
    /// Cities, each its own market: 1 (the default) runs one city in whatever market contains
    /// it; more lay out that many cities of the same shape side by side, eastwards, four sides
    /// apart, each a market the run creates, and spread everyone over them in turn.
    pub cities: usize,
    /// How the run's markets dispatch: with a mode, every city is a market the run creates
    /// with it (even one city); without, markets dispatch as the server's default.
    pub dispatch: Option<Dispatch>,
}

/// A market's dispatch mode (`markets.dispatch`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dispatch {
    /// Each order matched on its own as it is confirmed.
    PerOrder,
    /// A cycle every few seconds assigns the market's waiting orders together.
    Cycle,
}

impl Dispatch {
    /// As the API names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PerOrder => "per_order",
            Self::Cycle => "cycle",
        }
    }
}

impl Plan {
    /// The centre of city `k`.
    pub fn center_of(&self, k: usize) -> Spot {
        self.center.offset(0.0, 4.0 * self.side_m * k as f64)
    }

    /// A point drawn evenly over city `k`.
    pub fn somewhere_in(&self, k: usize, rng: &mut StdRng) -> Spot {
        let half = self.side_m / 2.0;
        self.center_of(k)
            .offset(rng.random_range(-half..half), rng.random_range(-half..half))
    }

    /// The city of the `i`-th restaurant, customer or driver.
    pub fn city_of(&self, i: usize) -> usize {
        i % self.cities.max(1)
    }
}

#[derive(Deserialize)]
struct Created {
    id: i64,
    #[serde(default)]
    driver_id: Option<i64>,
}

const CUISINES: [&str; 6] = ["burgers", "pizza", "ramen", "tacos", "salads", "curry"];
const DISHES: [(&str, i64); 5] = [
    ("House special", 1_450),
    ("Small plate", 650),
    ("Side", 350),
    ("Dessert", 500),
    ("Drink", 250),
];

/// Creates one market per city of `plan`: its circle reaches the corners of the city's square,
/// its slug is the run's tag and the city's number, and it dispatches as the plan says.
async fn create_markets(api: &Api, operator: As, plan: &Plan, tag: &str) -> anyhow::Result<()> {
    for k in 0..plan.cities {
        let center = plan.center_of(k);
        let mut body = json!({
            "slug": format!("{}-{k}", market_prefix(tag)),
            "name": format!("{tag} city {k}"),
            "time_zone": "America/New_York",
            "center": {"lat": center.lat, "lon": center.lon},
            "radius_km": plan.side_m * 0.75 / 1_000.0,
        });
        if let Some(dispatch) = plan.dispatch {
            body["dispatch"] = dispatch.as_str().into();
        }
        let _: serde_json::Value = api
            .post(operator, "/markets", &body)
            .await?
            .ok()
            .context("create a market")?;
    }
    Ok(())
}

/// The start of this run's market slugs: the tag cut to what a slug may hold.
fn market_prefix(tag: &str) -> String {
    tag.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .map(|c| c.to_ascii_lowercase())
        .take(24)
        .collect::<String>()
        .trim_end_matches('-')
        .to_owned()
}

/// Creates the city of `plan` through the API as operator `operator`; `tag` marks this run.
pub async fn build(
    api: &Api,
    operator: i64,
    plan: &Plan,
    tag: &str,
    rng: &mut StdRng,
) -> anyhow::Result<City> {
    let operator = As::Operator(operator);
    if plan.cities > 1 || plan.dispatch.is_some() {
        create_markets(api, operator, plan, tag).await?;
    }
    let restaurant_specs: Vec<(Spot, u64, &str)> = (0..plan.restaurants)
        .map(|i| {
            (
                plan.somewhere_in(plan.city_of(i), rng),
                rng.random_range(8..=25),
                CUISINES[i % CUISINES.len()],
            )
        })
        .collect();
    let restaurants: Vec<Restaurant> =
        futures::stream::iter(restaurant_specs.into_iter().enumerate())
            .map(|(i, (at, prep_minutes, cuisine))| async move {
                let body = json!({
                    "name": format!("{tag} kitchen {i}"),
                    "cuisine_type": cuisine,
                    "location": {"lat": at.lat, "lon": at.lon},
                    "prep_time_minutes": prep_minutes,
                    "delivery_radius_m": 10_000,
                });
                let created: Created = api
                    .post(operator, "/restaurants", &body)
                    .await?
                    .ok()
                    .context("create a restaurant")?;
                let mut menu = Vec::with_capacity(DISHES.len());
                for (name, price) in DISHES {
                    let item: Created = api
                        .post(
                            As::Restaurant(created.id),
                            &format!("/restaurants/{}/menu-items", created.id),
                            &json!({"name": name, "price_cents": price, "category": "Mains"}),
                        )
                        .await?
                        .ok()
                        .context("add a menu item")?;
                    menu.push(item.id);
                }
                anyhow::Ok(Restaurant {
                    id: created.id,
                    at,
                    prep: Duration::from_secs(prep_minutes * 60),
                    menu,
                })
            })
            .buffered(SETUP_CONCURRENCY)
            .try_collect()
            .await?;

    let customer_homes: Vec<Spot> = (0..plan.customers)
        .map(|i| plan.somewhere_in(plan.city_of(i), rng))
        .collect();
    let customers: Vec<Customer> = futures::stream::iter(customer_homes.into_iter().enumerate())
        .map(|(i, at)| async move {
            let body = json!({
                "role": "customer",
                "name": format!("{tag} customer {i}"),
                "email": format!("{tag}-customer-{i}@sim.courier.test"),
            });
            let created: Created = api
                .post(operator, "/users", &body)
                .await?
                .ok()
                .context("create a customer")?;
            anyhow::Ok(Customer { id: created.id, at })
        })
        .buffered(SETUP_CONCURRENCY)
        .try_collect()
        .await?;

    let driver_starts: Vec<Spot> = (0..plan.drivers)
        .map(|i| plan.somewhere_in(plan.city_of(i), rng))
        .collect();
    let drivers: Vec<Driver> = futures::stream::iter(driver_starts.into_iter().enumerate())
        .map(|(i, start)| async move {
            let body = json!({
                "role": "driver",
                "name": format!("{tag} driver {i}"),
                "email": format!("{tag}-driver-{i}@sim.courier.test"),
                "vehicle_type": if i % 3 == 0 { "car" } else { "scooter" },
            });
            let created: Created = api
                .post(operator, "/users", &body)
                .await?
                .ok()
                .context("create a driver")?;
            let id = created
                .driver_id
                .context("a driver user comes with its driver id")?;
            anyhow::Ok(Driver {
                id,
                start,
                city: plan.city_of(i),
            })
        })
        .buffered(SETUP_CONCURRENCY)
        .try_collect()
        .await?;

    Ok(City {
        restaurants,
        customers,
        drivers,
    })
}
