//! The city at peak, for the end-to-end benchmark: thousands of drivers reporting every
//! second and tens of orders a second carried through the whole workflow, from one process
//! on the same two cores as the server it measures.
//!
//! The parties are those of [`crate::parties`] — drivers roam, poll their offers, accept
//! after a human delay (some decline, some ignore), drive to the restaurant, wait for the food,
//! pick up, drive to the customer and deliver; restaurants confirm, prepare and mark ready;
//! customers browse and order with idempotency keys (some retried, a few cancelled) — but
//! they are built to be cheap per request, because every cycle the load generator spends is
//! taken from the system under test:
//! - no task per party: each party is a small state machine, and a fixed number of **lanes**
//!   (one keep-alive connection each, [`crate::wire::Conn`]) step their share of the parties
//!   every few milliseconds, making only the requests that are due;
//! - requests are written by hand and answers parsed only where a field is needed;
//! - latencies go into histograms per lane, merged at the end.
//!
//! Here: the settings, the run and its report; [`lane`] the connections that step the parties
//! and what they tally; [`drivers`], [`kitchens`] and [`customers`] the parties.
//!
//! Drivers move and cook at `speed` times real time; the server's timers are its own settings
//! (the benchmark starts the server with timers that suit the run). Customers do not watch
//! their orders: a poll per order is what a pushed order stream replaces.

mod customers;
mod drivers;
mod kitchens;
mod lane;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::api::{Api, As};
use crate::city::Plan;
use crate::report::{Gathered, OrderView, Report};
use customers::customer_lane;
use drivers::{Agent, Phase, Position, report_lane};
use kitchens::Cook;
use lane::{Live, Tally, latency, party_lane};

/// Everything a peak run is set up with.
#[derive(Clone, Debug)]
pub struct FleetSettings {
    /// The server's address (plain HTTP).
    pub address: SocketAddr,
    /// The server's token signing secret (HS256).
    pub jwt_secret: Vec<u8>,
    /// The operator (a user id) that builds the city and reads the orders at the end.
    pub operator: i64,
    pub seed: u64,
    /// The city's shape and population.
    pub plan: Plan,
    /// Orders placed per real second, over the whole city.
    pub orders_per_second: f64,
    /// How long customers order (real time).
    pub duration: Duration,
    /// Simulated seconds per real second, for travel and cooking.
    pub speed: f64,
    /// Longest wait (real) for every order to end once ordering stops.
    pub drain: Duration,
    /// How often each driver reports its position (real time).
    pub report_every: Duration,
    /// How often a driver asks for its offers (real time).
    pub offer_poll: Duration,
    /// How often a restaurant lists its new orders, and a waiting driver reads its order.
    pub restaurant_poll: Duration,
    /// Connections (and lanes) sending the drivers' location reports.
    pub report_lanes: usize,
    /// Connections (and lanes) for everything else drivers do (offers, pickups, deliveries).
    pub driver_lanes: usize,
    pub behaviour: FleetBehaviour,
}

/// How the parties of a peak run behave.
#[derive(Clone, Copy, Debug)]
pub struct FleetBehaviour {
    /// Chance a driver accepts an offer; of the rest, `decline` decline and the others let it
    /// time out.
    pub accept: f64,
    pub decline: f64,
    /// A driver's delay before answering an offer, real time (uniform).
    pub answer_delay: (Duration, Duration),
    /// Chance a restaurant never answers an order (the confirm timeout cancels it).
    pub ignore_confirm: f64,
    /// Chance a customer cancels soon after ordering.
    pub cancel: f64,
    /// Chance an order request is sent twice with the same idempotency key.
    pub retry_key: f64,
    /// Drivers' speed in the city, metres per second (simulated).
    pub driver_speed_mps: f64,
}

impl Default for FleetBehaviour {
    fn default() -> Self {
        Self {
            accept: 0.85,
            decline: 0.1,
            answer_delay: (Duration::from_millis(200), Duration::from_millis(1_500)),
            ignore_confirm: 0.005,
            cancel: 0.01,
            retry_key: 0.02,
            driver_speed_mps: 8.0,
        }
    }
}

/// A latency distribution and how many requests it holds.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// What a peak run measured, beside the simulation's [`Report`].
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct FleetReport {
    /// Real seconds customers ordered for.
    pub ordering_s: f64,
    /// Orders placed per real second while customers ordered.
    pub placed_per_s: f64,
    /// Orders delivered per real second while deliveries flowed steadily (see
    /// `steady_delivery_rate`).
    pub delivered_per_s: f64,
    /// Location reports answered per real second while customers ordered, and their latency.
    pub location_per_s: f64,
    pub location: Latency,
    /// Order placements (`POST /v1/orders`).
    pub place: Latency,
    /// Offer polls (`GET /v1/drivers/{id}/offers`).
    pub offer_poll: Latency,
    /// Every other request of the parties.
    pub other: Latency,
    /// From the restaurant's confirmation (which starts matching) to the first offer.
    pub confirmed_to_first_offer: crate::report::Spread,
    /// Real seconds the drain took.
    pub drain_s: f64,
    pub report: Report,
}

/// A live status line. Its phase is one of [`BUILDING`], [`GOING_ONLINE`], [`ORDERING`]
/// (announced once the moment ordering starts, then about once a second), [`ORDERING_OVER`]
/// (once, the moment it stops) and [`DRAINING`].
#[derive(Clone, Copy, Debug)]
pub struct FleetStatus {
    pub phase: &'static str,
    pub elapsed: Duration,
    pub placed: u64,
    pub location_reports: u64,
    pub open_orders: usize,
}

/// The phases of a run, as [`FleetStatus`] names them.
pub const BUILDING: &str = "building the city";
pub const GOING_ONLINE: &str = "drivers going online";
pub const ORDERING: &str = "ordering";
pub const ORDERING_OVER: &str = "ordering over";
pub const DRAINING: &str = "draining";

/// Shared, read-only context of every lane.
struct Shared {
    settings: FleetSettings,
    plan: Plan,
    live: Live,
    /// Every driver's position, by slot.
    positions: Vec<Position>,
    /// Set when every lane must stop.
    stop: AtomicBool,
    /// Set when customers stop ordering.
    closing: AtomicBool,
}

/// Deliveries per second while deliveries flow steadily: from the first placement plus the
/// 90th percentile of placement-to-delivery (every order placed early enough is delivered by
/// then) to the last placement plus the 10th percentile (orders keep arriving until then).
/// Only orders delivered in that window count, so the ramp-up and the drain's tail stay out.
/// 0 when nothing was delivered or the window is empty (an ordering period shorter than the
/// spread of delivery times).
fn steady_delivery_rate(views: &[OrderView]) -> f64 {
    let (Some(first), Some(last)) = (
        views.iter().filter_map(|v| v.placed_at).min(),
        views.iter().filter_map(|v| v.placed_at).max(),
    ) else {
        return 0.0;
    };
    let mut to_door: Vec<chrono::TimeDelta> = views
        .iter()
        .filter_map(|v| Some(v.delivered_at? - v.placed_at?))
        .collect();
    if to_door.is_empty() {
        return 0.0;
    }
    to_door.sort_unstable();
    let at = |q: f64| to_door[((to_door.len() - 1) as f64 * q).round() as usize];
    let (from, to) = (first + at(0.9), last + at(0.1));
    if to <= from {
        return 0.0;
    }
    let delivered = views
        .iter()
        .filter_map(|v| v.delivered_at)
        .filter(|at| *at >= from && *at < to)
        .count();
    delivered as f64 / (to - from).as_seconds_f64()
}

/// Puts every driver online, a few at a time.
async fn go_online(api: &Api, drivers: &[crate::city::Driver]) -> anyhow::Result<()> {
    use futures::{StreamExt, TryStreamExt};
    futures::stream::iter(drivers.iter().map(|d| d.id))
        .map(|id| async move {
            api.post(
                As::Driver(id),
                &format!("/drivers/{id}/status"),
                &json!({"status": "online"}),
            )
            .await?
            .ok::<serde_json::Value>()
            .map(drop)
        })
        .buffer_unordered(32)
        .try_collect::<()>()
        .await
}

/// Runs a city at peak; `progress` is called about once a second.
pub async fn run(
    settings: &FleetSettings,
    progress: &(dyn Fn(&FleetStatus) + Sync),
) -> anyhow::Result<FleetReport> {
    let base_url = format!("http://{}", settings.address);
    let api = Api::new(&base_url, &settings.jwt_secret)?;
    let mut rng = StdRng::seed_from_u64(settings.seed);
    let tag = format!("peak{}-{}", settings.seed, uuid::Uuid::new_v4().simple());
    let plan = settings.plan;
    let started = Instant::now();
    progress(&FleetStatus {
        phase: BUILDING,
        elapsed: Duration::ZERO,
        placed: 0,
        location_reports: 0,
        open_orders: 0,
    });
    let city = Arc::new(crate::city::build(&api, settings.operator, &plan, &tag, &mut rng).await?);
    anyhow::ensure!(
        !city.customers.is_empty() && !city.restaurants.is_empty() && !city.drivers.is_empty(),
        "a peak run needs drivers, restaurants and customers"
    );
    let shared = Arc::new(Shared {
        settings: settings.clone(),
        plan,
        live: Live::default(),
        positions: city.drivers.iter().map(|_| Position::default()).collect(),
        stop: AtomicBool::new(false),
        closing: AtomicBool::new(false),
    });
    progress(&FleetStatus {
        phase: GOING_ONLINE,
        elapsed: started.elapsed(),
        placed: 0,
        location_reports: 0,
        open_orders: 0,
    });
    go_online(&api, &city.drivers).await?;

    // Drivers: positions reported by the report lanes, everything else done by the driver
    // lanes; both deal the drivers round-robin.
    let now = Instant::now();
    let report_lanes = settings.report_lanes.clamp(1, city.drivers.len());
    let mut reported: Vec<Vec<(i64, String, usize)>> =
        (0..report_lanes).map(|_| Vec::new()).collect();
    let lanes = settings.driver_lanes.clamp(1, city.drivers.len());
    let mut dealt: Vec<Vec<Agent>> = (0..lanes).map(|_| Vec::new()).collect();
    for (slot, driver) in city.drivers.iter().enumerate() {
        let bearer = api.bearer(As::Driver(driver.id))?;
        shared.positions[slot].store(driver.start);
        reported[slot % report_lanes].push((driver.id, bearer.clone(), slot));
        dealt[slot % lanes].push(Agent {
            id: driver.id,
            slot,
            bearer,
            at: driver.start,
            city: driver.city,
            waypoint: plan.somewhere_in(driver.city, &mut rng),
            moved: now,
            next_poll: now + settings.offer_poll.mul_f64(rng.random()),
            phase: Phase::Idle,
            resume: Phase::Idle,
            decided: HashSet::new(),
        });
    }
    let mut tasks = Vec::new();
    for (i, slots) in reported.into_iter().enumerate() {
        tasks.push(tokio::spawn(report_lane(
            shared.clone(),
            slots,
            i,
            report_lanes,
        )));
    }
    for agents in dealt {
        let seeded = StdRng::seed_from_u64(rng.random());
        tasks.push(tokio::spawn(party_lane(shared.clone(), agents, seeded)));
    }
    // Three restaurants a lane: each lists its new orders every `restaurant_poll` and acts on
    // them, which fits in a lane even when answers take a few hundred milliseconds.
    let kitchen_lanes = city.restaurants.len().div_ceil(3).clamp(1, 256);
    let mut kitchens: Vec<Vec<Cook>> = (0..kitchen_lanes).map(|_| Vec::new()).collect();
    for (i, restaurant) in city.restaurants.iter().enumerate() {
        kitchens[i % kitchen_lanes].push(Cook {
            id: restaurant.id,
            bearer: api.bearer(As::Restaurant(restaurant.id))?,
            prep: restaurant.prep,
            next_poll: now + settings.restaurant_poll.mul_f64(rng.random()),
            seen: HashSet::new(),
            todo: Vec::new(),
        });
    }
    for cooks in kitchens {
        let seeded = StdRng::seed_from_u64(rng.random());
        tasks.push(tokio::spawn(party_lane(shared.clone(), cooks, seeded)));
    }
    let bearers: Arc<Vec<String>> = Arc::new(
        city.customers
            .iter()
            .map(|c| api.bearer(As::Customer(c.id)))
            .collect::<anyhow::Result<_>>()?,
    );
    // A lane per order a second: a browse and a placement fit in a second even when the
    // server answers slowly, so a slow answer does not hold the rate down.
    let customer_lanes = (settings.orders_per_second.ceil() as usize).clamp(1, 256);
    let per_lane = settings.orders_per_second / customer_lanes as f64;
    // Every driver reports once before orders flow.
    tokio::time::sleep(settings.report_every).await;
    let ordering_started = Instant::now();
    let reports_before = shared.live.reports.load(Ordering::Relaxed);
    progress(&FleetStatus {
        phase: ORDERING,
        elapsed: started.elapsed(),
        placed: 0,
        location_reports: reports_before,
        open_orders: 0,
    });
    for i in 0..customer_lanes {
        let seeded = StdRng::seed_from_u64(rng.random());
        tasks.push(tokio::spawn(customer_lane(
            shared.clone(),
            city.clone(),
            bearers.clone(),
            per_lane,
            i,
            customer_lanes,
            seeded,
        )));
    }
    while ordering_started.elapsed() < settings.duration {
        tokio::time::sleep(
            Duration::from_secs(1)
                .min(settings.duration.saturating_sub(ordering_started.elapsed())),
        )
        .await;
        progress(&FleetStatus {
            phase: ORDERING,
            elapsed: started.elapsed(),
            placed: shared.live.placed.load(Ordering::Relaxed),
            location_reports: shared.live.reports.load(Ordering::Relaxed),
            open_orders: 0,
        });
    }
    shared.closing.store(true, Ordering::Relaxed);
    let ordering_s = ordering_started.elapsed().as_secs_f64();
    let reports_during = shared.live.reports.load(Ordering::Relaxed) - reports_before;
    let placed = shared.live.placed.load(Ordering::Relaxed);
    progress(&FleetStatus {
        phase: ORDERING_OVER,
        elapsed: started.elapsed(),
        placed,
        location_reports: reports_before + reports_during,
        open_orders: 0,
    });

    // Drain: the parties go on until every order has ended, or the drain runs out. The
    // customers' lanes end by themselves once their cancellations are sent.
    let operator = As::Operator(settings.operator);
    let drain_started = Instant::now();
    let mut customer_tallies = Vec::new();
    let driver_and_restaurant_tasks = tasks.len() - customer_lanes;
    for task in tasks.drain(driver_and_restaurant_tasks..) {
        customer_tallies.push(task.await??);
    }
    let mut placed_ids: Vec<i64> = customer_tallies
        .iter()
        .flat_map(|t| t.placed.iter().copied())
        .collect();
    placed_ids.sort_unstable();
    let location_reports = || shared.live.reports.load(Ordering::Relaxed);
    let views = crate::drain(&api, operator, &placed_ids, settings.drain, |open| {
        progress(&FleetStatus {
            phase: DRAINING,
            elapsed: started.elapsed(),
            placed,
            location_reports: location_reports(),
            open_orders: open,
        })
    })
    .await?;
    let drain_s = drain_started.elapsed().as_secs_f64();
    shared.stop.store(true, Ordering::Relaxed);
    let mut tally = Tally::new()?;
    for task in tasks {
        tally.merge(task.await??);
    }
    for customer in customer_tallies {
        tally.merge(customer);
    }

    let drivers_holding = if views.iter().all(OrderView::is_terminal) {
        crate::ghost_loads(&api, operator, &city.drivers).await?
    } else {
        Vec::new()
    };
    let delivered_per_s = steady_delivery_rate(&views);
    let confirmed_to_offer: Vec<Duration> = views
        .iter()
        .filter_map(|v| {
            let offered = tally.tracks.get(&v.id)?.first_offer?;
            (offered - v.confirmed_at?).to_std().ok()
        })
        .collect();
    let mut statuses = api.statuses();
    for (status, n) in &tally.statuses {
        *statuses.entry(*status).or_default() += n;
    }
    let simulated = Duration::from_secs_f64(ordering_s + drain_s).mul_f64(settings.speed);
    let report = Report::build(Gathered {
        speed: settings.speed,
        simulated,
        drivers: city.drivers.len(),
        restaurants: city.restaurants.len(),
        customers: city.customers.len(),
        views: &views,
        tracks: &tally.tracks,
        decisions: &tally.decisions,
        busy: tally.busy,
        driver_waits: &tally.waits,
        drivers_holding,
        http: statuses,
        transport_errors: api.transport_errors() + tally.transport_errors,
        // The fleet's own clients keep counts, not times: only the setup client's are timed.
        failures: api.failure_window(),
    });
    Ok(FleetReport {
        ordering_s,
        placed_per_s: placed as f64 / ordering_s.max(0.001),
        delivered_per_s,
        location_per_s: reports_during as f64 / ordering_s.max(0.001),
        location: latency(&tally.location),
        place: latency(&tally.place),
        offer_poll: latency(&tally.offer_poll),
        other: latency(&tally.other),
        confirmed_to_first_offer: crate::report::Spread::of(&confirmed_to_offer, settings.speed),
        drain_s,
        report,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(id: i64, placed_s: i64, delivered_s: Option<i64>) -> OrderView {
        let at =
            |s: i64| chrono::DateTime::<chrono::Utc>::UNIX_EPOCH + chrono::TimeDelta::seconds(s);
        OrderView {
            id,
            status: "COMPLETED".into(),
            placed_at: Some(at(placed_s)),
            confirmed_at: None,
            ready_at: None,
            picked_up_at: None,
            delivered_at: delivered_s.map(at),
            cancel_reason: None,
        }
    }

    #[test]
    fn the_steady_delivery_rate_leaves_out_the_ramp_and_the_tail() {
        // One order a second for 100 s, delivered 20 s (even ids) or 30 s (odd) later: the
        // window runs from 30 s to 119 s, and one delivery a second lands in it.
        let views: Vec<OrderView> = (0..100)
            .map(|i| view(i, i, Some(i + if i % 2 == 0 { 20 } else { 30 })))
            .collect();
        let rate = steady_delivery_rate(&views);
        assert!((rate - 1.0).abs() < 0.02, "{rate}");
        // Cancelled orders deliver nothing: half of them cancelled, half the rate.
        let halved: Vec<OrderView> = views
            .iter()
            .cloned()
            .map(|mut v| {
                if v.id % 4 >= 2 {
                    v.delivered_at = None;
                }
                v
            })
            .collect();
        let rate = steady_delivery_rate(&halved);
        assert!((rate - 0.5).abs() < 0.03, "{rate}");
        assert_eq!(steady_delivery_rate(&[]), 0.0);
        assert_eq!(steady_delivery_rate(&[view(1, 0, None)]), 0.0);
        // Ordering shorter than the spread of delivery times: no steady window.
        assert_eq!(
            steady_delivery_rate(&[view(1, 0, Some(10)), view(2, 1, Some(60))]),
            0.0
        );
    }
}
