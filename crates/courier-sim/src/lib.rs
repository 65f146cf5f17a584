//! `courier-sim`: a city of drivers, restaurants and customers driving a courier server
//! through its public API, as real client apps would — real tokens, real endpoints, no back
//! door into the database. It builds its city through the operator endpoints, runs it in
//! compressed time for a while, stops taking orders, waits for every order to end (the
//! drain), and reports the marketplace's KPIs and the invariants that must hold: no order
//! left unfinished, no 5xx, no duplicate order from a retried idempotency key, no driver left
//! holding an order that ended.
//!
//! The server's own timers (offer TTLs, the confirm timeout, the auto-complete delay) are the
//! server's settings: to compress a whole run, start the server with them scaled down by the
//! same `speed` (`just demo` does).
//!
//! Runs are deterministic in their decisions for a given `seed` (which restaurant, which
//! items, accept or decline); timings depend on the machine.

pub mod api;
pub mod city;
pub mod clock;
pub mod fleet;
pub mod ledger;
pub mod parties;
pub mod report;
pub mod wire;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use crate::api::{Api, As};
use crate::city::Plan;
use crate::clock::{SimClock, Spot};
use crate::ledger::Ledger;
use crate::parties::{Behaviour, Ctx};
use crate::report::{Gathered, OrderView, Report};

/// Everything a run is set up with.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The server, e.g. `http://127.0.0.1:8080`.
    pub base_url: String,
    /// The server's token signing secret (HS256).
    pub jwt_secret: Vec<u8>,
    /// The operator (a user id) that builds the city and reads the orders at the end.
    pub operator: i64,
    pub seed: u64,
    /// The city's shape and population.
    pub plan: Plan,
    /// Orders per simulated minute, over the whole city.
    pub orders_per_minute: f64,
    /// How long customers order (simulated).
    pub duration: Duration,
    /// Simulated seconds per real second.
    pub speed: f64,
    /// Longest wait (real) for every order to end once ordering stops.
    pub drain: Duration,
    pub behaviour: Behaviour,
}

impl Settings {
    /// A small city around `center` for `base_url`, with the given secret and operator.
    pub fn new(base_url: &str, jwt_secret: &[u8], operator: i64) -> Self {
        Self {
            base_url: base_url.to_owned(),
            jwt_secret: jwt_secret.to_vec(),
            operator,
            seed: 1,
            plan: Plan {
                center: Spot {
                    lat: 40.7128,
                    lon: -74.0060,
                },
                side_m: 6_000.0,
                restaurants: 10,
                customers: 80,
                drivers: 40,
                cities: 1,
                dispatch: None,
            },
            orders_per_minute: 1.5,
            duration: Duration::from_secs(20 * 60),
            speed: 10.0,
            drain: Duration::from_secs(120),
            behaviour: Behaviour::default(),
        }
    }
}

/// A line of live status, for a progress display.
#[derive(Clone, Debug)]
pub struct Status {
    pub phase: &'static str,
    pub simulated: Duration,
    pub orders: usize,
    pub open_orders: usize,
}

/// Runs one simulation; `progress` is called about once a second.
pub async fn run(
    settings: &Settings,
    progress: &(dyn Fn(&Status) + Sync),
) -> anyhow::Result<Report> {
    let api = Api::new(&settings.base_url, &settings.jwt_secret)?;
    let mut rng = StdRng::seed_from_u64(settings.seed);
    let tag = format!("sim{}-{}", settings.seed, uuid::Uuid::new_v4().simple());
    let plan = settings.plan;
    progress(&Status {
        phase: "building the city",
        simulated: Duration::ZERO,
        orders: 0,
        open_orders: 0,
    });
    let city = Arc::new(city::build(&api, settings.operator, &plan, &tag, &mut rng).await?);
    let ctx = Ctx {
        api: api.clone(),
        clock: SimClock::new(settings.speed),
        ledger: Arc::new(Ledger::default()),
        behaviour: settings.behaviour,
        plan,
        city: city.clone(),
        stop: CancellationToken::new(),
        closing: CancellationToken::new(),
    };
    let mut tasks = Vec::new();
    for driver in &city.drivers {
        let seeded = StdRng::seed_from_u64(rng.random());
        tasks.push(tokio::spawn(parties::driver(ctx.clone(), *driver, seeded)));
    }
    for restaurant in &city.restaurants {
        let seeded = StdRng::seed_from_u64(rng.random());
        tasks.push(tokio::spawn(parties::restaurant(
            ctx.clone(),
            restaurant.clone(),
            seeded,
        )));
    }
    let seeded = StdRng::seed_from_u64(rng.random());
    tasks.push(tokio::spawn(parties::customers(
        ctx.clone(),
        settings.orders_per_minute,
        seeded,
    )));

    // Ordering period.
    let real_duration = ctx.clock.real(settings.duration);
    let started = Instant::now();
    while started.elapsed() < real_duration {
        tokio::time::sleep(
            Duration::from_secs(1).min(real_duration.saturating_sub(started.elapsed())),
        )
        .await;
        progress(&Status {
            phase: "ordering",
            simulated: ctx.clock.now(),
            orders: ctx.ledger.orders_placed(),
            open_orders: 0,
        });
    }
    ctx.closing.cancel();

    // Drain: parties go on working until every order has ended, or the drain runs out.
    let operator = As::Operator(settings.operator);
    let views = drain(
        &api,
        operator,
        &ctx.ledger.order_ids(),
        settings.drain,
        |open| {
            progress(&Status {
                phase: "draining",
                simulated: ctx.clock.now(),
                orders: ctx.ledger.orders_placed(),
                open_orders: open,
            })
        },
    )
    .await?;
    let simulated = ctx.clock.now();
    ctx.stop.cancel();
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    }

    let drivers_holding = if views.iter().all(OrderView::is_terminal) {
        ghost_loads(&api, operator, &city.drivers).await?
    } else {
        Vec::new()
    };
    let (tracks, decisions, busy) = ctx.ledger.snapshot();
    Ok(Report::build(Gathered {
        speed: settings.speed,
        simulated,
        drivers: city.drivers.len(),
        restaurants: city.restaurants.len(),
        customers: city.customers.len(),
        views: &views,
        tracks: &tracks,
        decisions: &decisions,
        busy,
        driver_waits: &ctx.ledger.waits(),
        drivers_holding,
        http: api.statuses(),
        transport_errors: api.transport_errors(),
        failures: api.failure_window(),
    }))
}

/// Drivers the server still counts as carrying an order once every order has ended: each
/// driver goes online and reports where it is, and must be answered `available` (an online
/// driver is unavailable only while it carries orders).
pub(crate) async fn ghost_loads(
    api: &Api,
    operator: As,
    drivers: &[city::Driver],
) -> anyhow::Result<Vec<i64>> {
    use futures::{StreamExt, TryStreamExt};
    let checked: Vec<Option<i64>> = futures::stream::iter(drivers.iter().copied())
        .map(|driver| holds_an_order(api, operator, driver))
        .buffered(16)
        .try_collect()
        .await?;
    Ok(checked.into_iter().flatten().collect())
}

/// `Some(driver id)` if the server counts `driver` as carrying an order.
async fn holds_an_order(
    api: &Api,
    operator: As,
    driver: city::Driver,
) -> anyhow::Result<Option<i64>> {
    let me = As::Driver(driver.id);
    let listed: serde_json::Value = api
        .get(
            operator,
            &format!("/drivers/{}/orders?status=active", driver.id),
        )
        .await?
        .ok()?;
    let online = serde_json::json!({"status": "online"});
    api.post(me, &format!("/drivers/{}/status", driver.id), &online)
        .await?
        .ok::<serde_json::Value>()?;
    let at = serde_json::json!({"lat": driver.start.lat, "lon": driver.start.lon});
    let reported: serde_json::Value = api
        .post(me, &format!("/drivers/{}/location", driver.id), &at)
        .await?
        .ok()?;
    let carries = listed["orders"].as_array().is_some_and(|o| !o.is_empty());
    Ok((carries || reported["result"] != "available").then_some(driver.id))
}

/// Waits for orders to end: reads every order of `ids` once, then, once a second, those
/// still open, until none is or `limit` has passed; `each_round` hears how many are open
/// before each wait. The orders' last views, in the order of `ids`.
pub(crate) async fn drain(
    api: &Api,
    operator: As,
    ids: &[i64],
    limit: Duration,
    mut each_round: impl FnMut(usize),
) -> anyhow::Result<Vec<OrderView>> {
    let started = Instant::now();
    let mut views = read_orders(api, operator, ids).await?;
    let position: std::collections::HashMap<i64, usize> =
        views.iter().enumerate().map(|(i, v)| (v.id, i)).collect();
    loop {
        let open: Vec<i64> = views
            .iter()
            .filter(|v| !v.is_terminal())
            .map(|v| v.id)
            .collect();
        each_round(open.len());
        if open.is_empty() || started.elapsed() >= limit {
            return Ok(views);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        for view in read_orders(api, operator, &open).await? {
            if let Some(&at) = position.get(&view.id) {
                views[at] = view;
            }
        }
    }
}

/// The current view of each order, as an operator reads it.
pub(crate) async fn read_orders(
    api: &Api,
    operator: As,
    ids: &[i64],
) -> anyhow::Result<Vec<OrderView>> {
    use futures::{StreamExt, TryStreamExt};
    futures::stream::iter(ids.iter().copied())
        .map(|id| async move {
            api.get(operator, &format!("/orders/{id}"))
                .await?
                .ok::<OrderView>()
        })
        .buffered(64)
        .try_collect()
        .await
}
