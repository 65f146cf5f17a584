//! `courier-bench dispatch`: per-order matching against the dispatch cycle, in one command.
//!
//! 1. **The solve.** A market of `--solve-orders` waiting orders and `--solve-drivers`
//!    drivers (a fifth of them carrying an order) built from a seed: the cycle's pairs (the
//!    cost matrix) and its Kuhn–Munkres solve, timed, beside the per-order greedy choice over
//!    the same pairs in the same run, with both assignments' total weight.
//! 2. **The city.** The simulator twice on the same seed and city, each on a fresh database
//!    with its own `courier run`: once with the market dispatching per order, once by cycle.
//!    courier's timers are its defaults divided by the simulation's speed, and the routing
//!    estimator's speed is the simulated drivers' (so "due" means the same in both clocks);
//!    the restaurants give their prep estimate on confirmation in both runs.
//!
//! It prints the comparison table of `docs/benchmarks.md`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use secrecy::ExposeSecret;

use courier::config::Config;
use courier::dispatch::assign::{self, CycleSettings, Pairing, PoolDriver, PoolOrder};
use courier::dispatch::batch::{CarriedOrder, NewOrder};
use courier::eta::estimator::{DETOUR_FACTOR, Estimator};
use courier::geo::Point;
use courier::valkey::Valkey;
use courier_sim::city::Dispatch;
use courier_sim::report::Report;
use courier_sim::{Settings, Status};

use crate::e2e::fresh_database;
use crate::server::{
    Courier, clear_location_keys, ensure_dedicated, ensure_operator, unlimited, wait_ready,
};

/// Options of the dispatch benchmark.
#[derive(Clone, Debug, clap::Args)]
pub struct DispatchBench {
    /// Orders of the solve's market.
    #[arg(long, default_value_t = 500)]
    pub solve_orders: usize,
    /// Drivers of the solve's market.
    #[arg(long, default_value_t = 2_000)]
    pub solve_drivers: usize,
    /// Times each solve runs (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Only the solve, not the city.
    #[arg(long)]
    pub solve_only: bool,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Drivers of the city. With the defaults, fewer than per-order matching keeps busy (each
    /// offered driver waits at the restaurant for most of the prep time) and more than the
    /// cycle needs: a market at peak, where early commitment costs. With plenty of drivers
    /// (e.g. 36) delivery times are the kitchens' and both modes deliver alike.
    #[arg(long, default_value_t = 22)]
    pub drivers: usize,
    #[arg(long, default_value_t = 12)]
    pub restaurants: usize,
    #[arg(long, default_value_t = 150)]
    pub customers: usize,
    /// Orders per simulated minute.
    #[arg(long, default_value_t = 1.5)]
    pub orders_per_minute: f64,
    /// How long customers order (simulated), e.g. `40m`.
    #[arg(long, default_value = "40m", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Simulated seconds per real second (at most 5: the estimator's speed limit).
    #[arg(long, default_value_t = 5.0)]
    pub speed: f64,
    /// Longest real wait for every order to end.
    #[arg(long, default_value = "8m", value_parser = humantime::parse_duration)]
    pub drain: Duration,
    /// Where the spawned server listens.
    #[arg(long, default_value = "127.0.0.1:18097")]
    pub listen: SocketAddr,
}

/// A point `north_m` north and `east_m` east of `from`.
fn offset(from: Point, north_m: f64, east_m: f64) -> Point {
    Point {
        lat: from.lat + north_m / 111_195.0,
        lon: from.lon + east_m / (111_195.0 * from.lat.to_radians().cos()),
    }
}

/// A market of `orders` × `drivers` in a 12 km square, from `seed`.
fn market(orders: usize, drivers: usize, seed: u64) -> (Vec<PoolOrder>, Vec<PoolDriver>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let centre = Point {
        lat: 40.7128,
        lon: -74.0060,
    };
    let anywhere = |rng: &mut StdRng| {
        offset(
            centre,
            rng.random_range(-6_000.0..6_000.0),
            rng.random_range(-6_000.0..6_000.0),
        )
    };
    let restaurants: Vec<Point> = (0..orders.div_ceil(3).max(1))
        .map(|_| anywhere(&mut rng))
        .collect();
    let pool: Vec<PoolOrder> = (0..orders)
        .map(|i| {
            let restaurant = restaurants[rng.random_range(0..restaurants.len())];
            PoolOrder {
                order_id: i as i64,
                order: NewOrder {
                    restaurant,
                    customer: offset(
                        restaurant,
                        rng.random_range(-3_000.0..3_000.0),
                        rng.random_range(-3_000.0..3_000.0),
                    ),
                },
                prep_remaining: Duration::from_secs(rng.random_range(0..20 * 60)),
                excluded: Vec::new(),
            }
        })
        .collect();
    let fleet: Vec<PoolDriver> = (0..drivers)
        .map(|i| {
            let position = anywhere(&mut rng);
            let carrying = if i % 5 == 0 {
                let restaurant = restaurants[rng.random_range(0..restaurants.len())];
                vec![CarriedOrder {
                    restaurant,
                    customer: offset(restaurant, 1_500.0, 500.0),
                    picked_up: false,
                }]
            } else {
                Vec::new()
            };
            PoolDriver {
                driver_id: i as i64,
                position,
                rating: rng.random_range(3.5..5.0),
                total_deliveries: rng.random_range(0..400),
                delivered_today: rng.random_range(0..12),
                daily_goal: 10,
                carrying,
            }
        })
        .collect();
    (pool, fleet)
}

/// What the solve measured (milliseconds are medians).
struct Solve {
    pairs_ms: f64,
    plan_ms: f64,
    greedy_ms: f64,
    pairs: usize,
    global_weight: f64,
    greedy_weight: f64,
    offered: usize,
    held: usize,
    served: usize,
    greedy_served: usize,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn solve(opts: &DispatchBench) -> Solve {
    let (orders, drivers) = market(opts.solve_orders, opts.solve_drivers, opts.seed);
    let settings = CycleSettings::default();
    let (mut pairs_ms, mut plan_ms, mut greedy_ms) = (Vec::new(), Vec::new(), Vec::new());
    let mut last = None;
    for _ in 0..opts.repeat.max(1) {
        let started = Instant::now();
        let pairs = assign::estimated_pairs(&orders, &drivers, &Estimator::DEFAULT, &settings);
        pairs_ms.push(started.elapsed().as_secs_f64() * 1_000.0);
        let started = Instant::now();
        let greedy: Vec<Pairing> = assign::greedy(&pairs);
        greedy_ms.push(started.elapsed().as_secs_f64() * 1_000.0);
        let count = pairs.iter().map(Vec::len).sum::<usize>();
        let started = Instant::now();
        let plan = assign::plan(pairs, orders.len());
        plan_ms.push(started.elapsed().as_secs_f64() * 1_000.0);
        last = Some((count, plan, greedy));
    }
    let (pairs, plan, greedy) = last.unwrap_or_default();
    let chosen: Vec<Pairing> = plan.offers.iter().chain(&plan.held).cloned().collect();
    Solve {
        pairs_ms: median(pairs_ms),
        plan_ms: median(plan_ms),
        greedy_ms: median(greedy_ms),
        pairs,
        global_weight: assign::total_weight(&chosen),
        greedy_weight: assign::total_weight(&greedy),
        offered: plan.offers.len(),
        held: plan.held.len(),
        served: chosen.len(),
        greedy_served: greedy.len(),
    }
}

/// `default / speed`, as a duration courier parses.
fn scaled(default: Duration, speed: f64) -> String {
    format!(
        "{}ms",
        (default.as_secs_f64() * 1_000.0 / speed).round().max(1.0)
    )
}

/// courier's timers divided by `speed`, and the estimator at the simulated drivers' speed.
fn server_env(speed: f64) -> Vec<(&'static str, String)> {
    let s = |secs: u64| scaled(Duration::from_secs(secs), speed);
    let driver_kmh = courier_sim::parties::Behaviour::default().driver_speed_mps * 3.6;
    vec![
        ("COURIER_OFFER_TTL", s(30)),
        ("COURIER_LATER_OFFER_TTL", s(20)),
        ("COURIER_CONFIRM_TIMEOUT", s(600)),
        ("COURIER_REOFFER_AFTER", s(180)),
        ("COURIER_MATCH_RETRY_BASE", s(15)),
        ("COURIER_MATCH_RETRY_CAP", s(120)),
        ("COURIER_DISPATCH_CYCLE", s(5)),
        ("COURIER_DISPATCH_SLACK", s(180)),
        ("COURIER_DISPATCH_GRACE", s(30)),
        ("COURIER_AUTO_COMPLETE_AFTER", "5s".to_owned()),
        ("COURIER_CRON_AUTO_COMPLETE", "*/5 * * * * *".to_owned()),
        (
            "COURIER_ROUTING_SPEED_KMH",
            format!("{:.1}", driver_kmh * DETOUR_FACTOR * speed),
        ),
        unlimited(),
    ]
}

/// One simulator run with the market dispatching `mode`, on a fresh database and server.
async fn city(config: &Config, opts: &DispatchBench, mode: Dispatch) -> anyhow::Result<Report> {
    let db = fresh_database(config).await?;
    let operator = ensure_operator(&db).await?;
    clear_location_keys(&Valkey::new(&config.valkey)?).await?;
    let logs = PathBuf::from(std::env::var("COURIER_DATA_DIR").unwrap_or_else(|_| ".data".into()));
    std::fs::create_dir_all(&logs)?;
    let server = Courier::start(
        config,
        "run",
        Some(opts.listen),
        &server_env(opts.speed),
        Some(&logs.join(format!("bench-dispatch-{}.log", mode.as_str()))),
    )?;
    let base = format!("http://{}", opts.listen);
    wait_ready(&base).await?;
    let mut settings = Settings::new(&base, config.jwt_secret.expose(), operator);
    settings.seed = opts.seed;
    settings.plan.drivers = opts.drivers;
    settings.plan.restaurants = opts.restaurants;
    settings.plan.customers = opts.customers;
    settings.plan.dispatch = Some(mode);
    settings.orders_per_minute = opts.orders_per_minute;
    settings.duration = opts.duration;
    settings.speed = opts.speed;
    settings.drain = opts.drain;
    println!("  {}: simulating…", mode.as_str());
    let report = courier_sim::run(&settings, &|_: &Status| {}).await;
    server.stop()?;
    let report = report?;
    for violation in report.violations() {
        println!("  {}: invariant failed: {violation}", mode.as_str());
    }
    Ok(report)
}

fn row(name: &str, per_order: f64, cycle: f64, decimals: usize) -> String {
    let change = if per_order.abs() >= 0.05 {
        format!("{:+.1} %", (cycle / per_order - 1.0) * 100.0)
    } else {
        "-".to_owned()
    };
    format!("| {name} | {per_order:.decimals$} | {cycle:.decimals$} | {change} |\n")
}

/// The comparison table (markdown).
fn table(p: &Report, c: &Report, solve: &Solve, opts: &DispatchBench) -> String {
    type Figure = fn(&Report) -> f64;
    let rows: [(&str, Figure, usize); 11] = [
        (
            "click→door mean (sim min)",
            |r| r.click_to_door.mean_sim_min,
            1,
        ),
        ("click→door p50", |r| r.click_to_door.p50_sim_min, 1),
        ("click→door p90", |r| r.click_to_door.p90_sim_min, 1),
        ("orders over 40 min", |r| r.orders_over_target as f64, 0),
        (
            "food waiting (ready→pickup) p50",
            |r| r.ready_to_pickup.p50_sim_min,
            1,
        ),
        ("food waiting p90", |r| r.ready_to_pickup.p90_sim_min, 1),
        (
            "driver wait at restaurant mean",
            |r| r.driver_wait.mean_sim_min,
            1,
        ),
        ("driver wait p90", |r| r.driver_wait.p90_sim_min, 1),
        ("orders per driver-hour", |r| r.orders_per_driver_hour, 2),
        ("offers per order", |r| r.offers_per_order, 2),
        ("orders delivered", |r| r.orders_delivered as f64, 0),
    ];
    let mut out = String::from("| | per order | cycle | cycle vs per order |\n|---|---|---|---|\n");
    for (name, figure, decimals) in rows {
        out += &row(name, figure(p), figure(c), decimals);
    }
    out += &format!(
        "| solve {} orders × {} drivers ({} pairs) | greedy {:.1} ms | cycle {:.1} ms matrix + {:.1} ms solve | weight {:.0} vs {:.0} ({:+.1} %), served {} vs {} |\n",
        opts.solve_orders,
        opts.solve_drivers,
        solve.pairs,
        solve.greedy_ms,
        solve.pairs_ms,
        solve.plan_ms,
        solve.greedy_weight,
        solve.global_weight,
        (solve.global_weight / solve.greedy_weight - 1.0) * 100.0,
        solve.greedy_served,
        solve.served,
    );
    out
}

/// Runs the benchmark.
pub async fn run(config: &Config, opts: &DispatchBench) -> anyhow::Result<()> {
    anyhow::ensure!(
        opts.solve_orders >= 1 && opts.solve_drivers >= 1 && opts.repeat >= 1,
        "--solve-orders, --solve-drivers and --repeat must be at least 1"
    );
    anyhow::ensure!(
        opts.speed >= 1.0 && opts.speed <= 5.0,
        "--speed must be 1 to 5 (the routing estimator is capped at 200 km/h)"
    );
    println!(
        "solving one market of {} orders × {} drivers (seed {})…",
        opts.solve_orders, opts.solve_drivers, opts.seed
    );
    let solved = solve(opts);
    println!(
        "solve: {} pairs; matrix {:.1} ms + Kuhn–Munkres {:.1} ms = {:.1} ms (median of {}); \
         greedy over the same pairs {:.2} ms; {} offered now, {} held; total weight {:.0} vs \
         greedy {:.0}; orders served {} vs {}",
        solved.pairs,
        solved.pairs_ms,
        solved.plan_ms,
        solved.pairs_ms + solved.plan_ms,
        opts.repeat,
        solved.greedy_ms,
        solved.offered,
        solved.held,
        solved.global_weight,
        solved.greedy_weight,
        solved.served,
        solved.greedy_served
    );
    if opts.solve_only {
        return Ok(());
    }
    ensure_dedicated(
        config.database.url.expose_secret(),
        &config.valkey.key_prefix,
    )?;
    println!(
        "the city: {} drivers, {} restaurants, {} customers, {} orders/min for {:?} simulated at {}x, seed {}",
        opts.drivers,
        opts.restaurants,
        opts.customers,
        opts.orders_per_minute,
        opts.duration,
        opts.speed,
        opts.seed
    );
    let per_order = city(config, opts, Dispatch::PerOrder).await?;
    let cycle = city(config, opts, Dispatch::Cycle).await?;
    println!();
    print!("{}", table(&per_order, &cycle, &solved, opts));
    Ok(())
}
