//! `courier-bench e2e`: a whole city at peak on this machine — `courier serve` and `courier
//! worker` as separate processes, Postgres, Valkey and the load generator
//! ([`courier_sim::fleet`]) sharing the cores — measured end to end.
//!
//! One command does everything: it makes the dedicated database afresh (its name must contain
//! `bench`), migrates it, clears its key prefix, starts the server and the worker with timers
//! that suit a compressed run, builds the city through the API, lets every driver report,
//! then places orders at `--orders-per-second` for `--duration` while every driver reports
//! once a second, and waits for every order to end. Meanwhile it samples the job queue's lag
//! (the oldest due job's age) every second and every process's CPU over the ordering window.
//! It prints the sustained rates beside their targets, the latencies, the KPIs and the
//! invariants (no order left open, no 5xx, no duplicate order, each delivered order captured
//! once, no driver holding an ended order), and names the bottleneck it measured.

use secrecy::ExposeSecret;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use sqlx::ConnectOptions;
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;

use courier::config::Config;
use courier::store;
use courier::valkey::Valkey;
use courier_sim::city::Plan;
use courier_sim::clock::Spot;
use courier_sim::fleet::{self, FleetBehaviour, FleetReport, FleetSettings};

use crate::cpu;
use crate::server::{
    Courier, clear_location_keys, ensure_dedicated, ensure_operator, valkey_pid, wait_ready,
};

/// Options of the end-to-end benchmark.
#[derive(Clone, Debug, clap::Args)]
pub struct E2eBench {
    /// Drivers, each reporting its position every `--report-every`.
    #[arg(long, default_value_t = 10_000)]
    pub drivers: usize,
    #[arg(long, default_value_t = 300)]
    pub restaurants: usize,
    #[arg(long, default_value_t = 5_000)]
    pub customers: usize,
    /// Orders placed per second.
    #[arg(long, default_value_t = 100.0)]
    pub orders_per_second: f64,
    /// How long orders are placed, e.g. `60s`.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Simulated seconds per real second for travel and cooking (a 20-minute delivery takes
    /// 20 s at 60).
    #[arg(long, default_value_t = 60.0)]
    pub speed: f64,
    /// Longest wait for every order to end once ordering stops.
    #[arg(long, default_value = "3m", value_parser = humantime::parse_duration)]
    pub drain: Duration,
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub report_every: Duration,
    /// How often a driver asks for its offers.
    #[arg(long, default_value = "4s", value_parser = humantime::parse_duration)]
    pub offer_poll: Duration,
    /// How often a restaurant lists its new orders.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    pub restaurant_poll: Duration,
    /// Connections sending the drivers' location reports.
    #[arg(long, default_value_t = 256)]
    pub report_lanes: usize,
    /// Connections for the rest of what drivers do (offer polls, answers, pickups, deliveries).
    #[arg(long, default_value_t = 256)]
    pub driver_lanes: usize,
    /// Side of the square city, in km.
    #[arg(long, default_value_t = 12.0)]
    pub city_km: f64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Where the spawned server listens.
    #[arg(long, default_value = "127.0.0.1:18081")]
    pub listen: SocketAddr,
    /// Also print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// courier's timers for a compressed run: offers that a polling driver can still answer, a
/// restaurant that never answers cancelled within the drain, completion soon after delivery.
fn server_timers() -> Vec<(&'static str, String)> {
    [
        ("COURIER_OFFER_TTL", "10s"),
        ("COURIER_LATER_OFFER_TTL", "8s"),
        ("COURIER_CONFIRM_TIMEOUT", "30s"),
        ("COURIER_REOFFER_AFTER", "20s"),
        ("COURIER_MATCH_RETRY_BASE", "2s"),
        ("COURIER_MATCH_RETRY_CAP", "10s"),
        ("COURIER_AUTO_COMPLETE_AFTER", "5s"),
        ("COURIER_CRON_AUTO_COMPLETE", "*/5 * * * * *"),
    ]
    .into_iter()
    .map(|(name, value)| (name, value.to_owned()))
    .collect()
}

/// Drops and recreates the benchmark's database, then migrates it.
pub(crate) async fn fresh_database(config: &Config) -> anyhow::Result<PgPool> {
    let target = PgConnectOptions::from_str(config.database.url.expose_secret())?;
    let name = target.get_database().unwrap_or("postgres").to_owned();
    let mut admin = target.clone().database("postgres").connect().await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
        name.replace('"', "\"\"")
    )))
    .execute(&mut admin)
    .await
    .context("drop the benchmark database")?;
    drop(admin);
    store::ensure_database(&config.database).await?;
    let db = store::pool(&config.database)?;
    store::migrate(&db).await?;
    Ok(db)
}

/// The job queue's lag, sampled once a second until stopped: the age of the oldest job that
/// is due and not yet claimed (0 when none is waiting), in seconds.
async fn sample_queue_lag(db: PgPool, stop: Arc<AtomicBool>) -> Vec<f64> {
    let mut samples = Vec::new();
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    while !stop.load(Ordering::Relaxed) {
        ticks.tick().await;
        let lag: Result<Option<f64>, _> = sqlx::query_scalar(
            "SELECT EXTRACT(EPOCH FROM now() - min(run_at))::float8 FROM apalis.jobs
             WHERE status IN ('Pending', 'Queued') AND run_at <= now()",
        )
        .fetch_one(&db)
        .await;
        if let Ok(lag) = lag {
            samples.push(lag.unwrap_or(0.0).max(0.0));
        }
    }
    samples
}

/// Postgres's work counters at one moment: commits and rows written in the benchmark's
/// database, and WAL written by the whole server.
#[derive(Clone, Copy, Debug, Default, sqlx::FromRow)]
struct PgCounters {
    commits: i64,
    rows_written: i64,
    wal_bytes: f64,
}

/// Postgres's counters every second until stopped, each with when it was read.
async fn sample_postgres(
    db: PgPool,
    stop: Arc<AtomicBool>,
) -> Vec<(std::time::Instant, PgCounters)> {
    let mut samples = Vec::new();
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    while !stop.load(Ordering::Relaxed) {
        ticks.tick().await;
        let counters: Result<PgCounters, _> = sqlx::query_as(
            "SELECT d.xact_commit AS commits,
                    d.tup_inserted + d.tup_updated + d.tup_deleted AS rows_written,
                    w.wal_bytes::float8 AS wal_bytes
             FROM pg_stat_database d, pg_stat_wal w WHERE d.datname = current_database()",
        )
        .fetch_one(&db)
        .await;
        if let Ok(counters) = counters {
            samples.push((std::time::Instant::now(), counters));
        }
    }
    samples
}

/// What Postgres did per second between `from` and `to` (the samples nearest inside them):
/// commits, rows written and WAL bytes; `None` without two samples in the window.
fn postgres_rates(
    samples: &[(std::time::Instant, PgCounters)],
    from: std::time::Instant,
    to: std::time::Instant,
) -> Option<(f64, f64, f64)> {
    let first = samples.iter().find(|(at, _)| *at >= from)?;
    let last = samples.iter().rev().find(|(at, _)| *at <= to)?;
    let seconds = last.0.checked_duration_since(first.0)?.as_secs_f64();
    (seconds > 0.0).then(|| {
        (
            (last.1.commits - first.1.commits) as f64 / seconds,
            (last.1.rows_written - first.1.rows_written) as f64 / seconds,
            (last.1.wal_bytes - first.1.wal_bytes) / seconds,
        )
    })
}

/// Where Postgres spends its time, sampled: every 50 ms until stopped, the statements active
/// on the benchmark's database (other than the sampler's own), counted by their first 90
/// characters with whitespace collapsed. A statement's share of the samples is its share of
/// the database's busy time, waits included.
async fn sample_statements(db: PgPool, stop: Arc<AtomicBool>) -> (u64, HashMap<String, u64>) {
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut samples = 0;
    let mut ticks = tokio::time::interval(Duration::from_millis(50));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while !stop.load(Ordering::Relaxed) {
        ticks.tick().await;
        let active: Result<Vec<String>, _> = sqlx::query_scalar(
            "SELECT query FROM pg_stat_activity
             WHERE datname = current_database() AND state = 'active'
               AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
        )
        .fetch_all(&db)
        .await;
        let Ok(active) = active else { continue };
        samples += 1;
        for query in active {
            *seen.entry(statement_key(&query)).or_default() += 1;
        }
    }
    (samples, seen)
}

/// A statement's first 90 characters, whitespace collapsed.
fn statement_key(query: &str) -> String {
    query
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(90)
        .collect()
}

/// Whether the server runs autovacuum.
async fn autovacuum_on(db: &PgPool) -> anyhow::Result<bool> {
    let setting: String = sqlx::query_scalar("SHOW autovacuum").fetch_one(db).await?;
    Ok(setting == "on")
}

/// Stands in for autovacuum on a server that runs without it (as this project's development
/// machine does): every 10 s, vacuums each table whose dead rows passed autovacuum's default
/// threshold (50 plus a fifth of its live rows). Without it the job table's dead rows pile up
/// during a run and every claim and acknowledgement pays for them, which no production
/// server would show.
async fn vacuum_like_autovacuum(db: PgPool, stop: Arc<AtomicBool>) {
    let mut ticks = tokio::time::interval(Duration::from_secs(10));
    while !stop.load(Ordering::Relaxed) {
        ticks.tick().await;
        let due: Result<Vec<String>, _> = sqlx::query_scalar(
            "SELECT format('%I.%I', schemaname, relname) FROM pg_stat_user_tables
             WHERE n_dead_tup > 50 + 0.2 * n_live_tup",
        )
        .fetch_all(&db)
        .await;
        for table in due.unwrap_or_default() {
            let vacuumed = sqlx::query(sqlx::AssertSqlSafe(format!("VACUUM {table}")))
                .execute(&db)
                .await;
            if let Err(error) = vacuumed {
                tracing::warn!(%table, %error, "vacuum failed");
            }
        }
    }
}

/// Jobs that failed and will be retried, and jobs that are dead (killed or out of attempts).
async fn failed_and_dead(db: &PgPool) -> anyhow::Result<(i64, i64)> {
    Ok(sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'Failed' AND attempts < max_attempts),
                count(*) FILTER (WHERE status = 'Killed'
                                    OR (status = 'Failed' AND attempts >= max_attempts))
         FROM apalis.jobs",
    )
    .fetch_one(db)
    .await?)
}

/// Delivered orders, and the orders whose payment went wrong: completed without a capture,
/// captured though never delivered, or captured more than once. (A delivered order whose
/// capture is still to come is not wrong yet: it is not terminal either, and counts there.)
async fn captures(db: &PgPool) -> anyhow::Result<(i64, Vec<i64>)> {
    let delivered: i64 =
        sqlx::query_scalar("SELECT count(*) FROM orders WHERE delivered_at IS NOT NULL")
            .fetch_one(db)
            .await?;
    let wrong: Vec<i64> = sqlx::query_scalar(
        "WITH c AS (
             SELECT o.id, o.status, o.delivered_at,
                    EXISTS (SELECT 1 FROM payments p
                             WHERE p.order_id = o.id AND p.status = 'captured') AS captured,
                    (SELECT count(*) FROM payment_attempts a
                      WHERE a.order_id = o.id AND a.operation = 'capture'
                        AND a.outcome = 'succeeded') AS captures
             FROM orders o)
         SELECT id FROM c
          WHERE (status = 'COMPLETED' AND NOT captured)
             OR (delivered_at IS NULL AND captured)
             OR captures > 1
          ORDER BY id",
    )
    .fetch_all(db)
    .await?;
    Ok((delivered, wrong))
}

/// The `p`-quantile of `samples` (nearest rank); 0 when empty.
pub(crate) fn quantile(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p * (sorted.len() - 1) as f64).round() as usize).min(sorted.len() - 1);
    sorted[rank]
}

/// What held the run back, from what it measured: the machine's cores, the job queue, or
/// nothing (the targets held).
fn bottleneck(report: &FleetReport, opts: &E2eBench, shares: &cpu::Shares, lag_p99: f64) -> String {
    let wanted_orders = opts.orders_per_second;
    let wanted_reports = opts.drivers as f64 / opts.report_every.as_secs_f64().max(0.001);
    let short_orders = report.placed_per_s < 0.95 * wanted_orders;
    let short_reports = report.location_per_s < 0.95 * wanted_reports;
    let slow_offer = report.report.placed_to_first_offer.p99_real_s >= 2.0;
    if !short_orders && !short_reports && !slow_offer {
        return "none: every target held".to_owned();
    }
    let mut causes = Vec::new();
    if let Some(busy) = shares.machine_busy
        && busy >= 90.0
    {
        let (name, cpu) = shares.busiest().unwrap_or(("?", 0.0));
        causes.push(format!(
            "the machine's cores ({busy:.0} % busy; the busiest process is {name} at {cpu:.0} % of a core)"
        ));
    }
    if lag_p99 >= 1.0 {
        causes.push(format!(
            "the job queue (p99 of the oldest due job's age {lag_p99:.1} s)"
        ));
    }
    if causes.is_empty() {
        causes.push(format!(
            "neither the cores nor the job queue: the load generator's lanes (placement p99 {:.0} ms, location p99 {:.0} ms)",
            report.place.p99_ms, report.location.p99_ms
        ));
    }
    causes.join("; and ")
}

/// Runs the benchmark and prints its report.
pub async fn run(config: &Config, opts: &E2eBench) -> anyhow::Result<()> {
    anyhow::ensure!(
        opts.drivers >= 10
            && opts.restaurants >= 1
            && opts.customers >= 1
            && opts.orders_per_second > 0.0
            && opts.speed >= 1.0,
        "use at least 10 drivers, a restaurant, a customer, a positive order rate and a speed of at least 1"
    );
    ensure_dedicated(
        config.database.url.expose_secret(),
        &config.valkey.key_prefix,
    )?;
    println!("preparing a fresh database and key prefix…");
    let db = fresh_database(config).await?;
    let operator = ensure_operator(&db).await?;
    let valkey = Valkey::new(&config.valkey)?;
    clear_location_keys(&valkey).await?;

    let logs = PathBuf::from(std::env::var("COURIER_DATA_DIR").unwrap_or_else(|_| ".data".into()));
    std::fs::create_dir_all(&logs)?;
    let timers = server_timers();
    let server_env: Vec<_> = timers
        .iter()
        .cloned()
        .chain([crate::server::unlimited()])
        .collect();
    let server = Courier::start(
        config,
        "serve",
        Some(opts.listen),
        &server_env,
        Some(&logs.join("bench-e2e-serve.log")),
    )?;
    let worker = Courier::start(
        config,
        "worker",
        None,
        &timers,
        Some(&logs.join("bench-e2e-worker.log")),
    )?;
    wait_ready(&format!("http://{}", opts.listen)).await?;

    let settings = FleetSettings {
        address: opts.listen,
        jwt_secret: config.jwt_secret.expose().to_vec(),
        operator,
        seed: opts.seed,
        plan: Plan {
            center: Spot {
                lat: 40.7128,
                lon: -74.0060,
            },
            side_m: opts.city_km * 1_000.0,
            restaurants: opts.restaurants,
            customers: opts.customers,
            drivers: opts.drivers,
            cities: 1,
            dispatch: None,
        },
        orders_per_second: opts.orders_per_second,
        duration: opts.duration,
        speed: opts.speed,
        drain: opts.drain,
        report_every: opts.report_every,
        offer_poll: opts.offer_poll,
        restaurant_poll: opts.restaurant_poll,
        report_lanes: opts.report_lanes,
        driver_lanes: opts.driver_lanes,
        behaviour: FleetBehaviour::default(),
    };
    let mut conn = valkey.connection();
    let probe = cpu::Probe::new(
        &[
            ("courier serve", server.pid()),
            ("courier worker", worker.pid()),
        ],
        valkey_pid(&mut conn).await,
    );
    // The CPU window is the ordering period: the run announces its start and its end.
    type Mark = Option<(cpu::Snapshot, std::time::Instant)>;
    let window: std::sync::Mutex<(Mark, Mark)> = std::sync::Mutex::new((None, None));
    let stop_sampling = Arc::new(AtomicBool::new(false));
    let lag_task = tokio::spawn(sample_queue_lag(db.clone(), stop_sampling.clone()));
    let statements_task = tokio::spawn(sample_statements(db.clone(), stop_sampling.clone()));
    let postgres_task = tokio::spawn(sample_postgres(db.clone(), stop_sampling.clone()));
    let vacuum_task = if autovacuum_on(&db).await? {
        None
    } else {
        println!(
            "autovacuum is off on this server: the benchmark vacuums tables past autovacuum's default threshold every 10 s"
        );
        Some(tokio::spawn(vacuum_like_autovacuum(
            db.clone(),
            stop_sampling.clone(),
        )))
    };
    let progress = |status: &fleet::FleetStatus| {
        if let Ok(mut window) = window.lock() {
            if status.phase == fleet::ORDERING && window.0.is_none() {
                window.0 = Some((probe.snapshot(), std::time::Instant::now()));
            }
            if status.phase == fleet::ORDERING_OVER {
                window.1 = Some((probe.snapshot(), std::time::Instant::now()));
            }
        }
        if status.elapsed.as_secs().is_multiple_of(5) || status.phase != fleet::ORDERING {
            eprintln!(
                "  {:>4} s {:<18} placed {:>6}  location reports {:>8}  open {:>5}",
                status.elapsed.as_secs(),
                status.phase,
                status.placed,
                status.location_reports,
                status.open_orders
            );
        }
    };
    let outcome = fleet::run(&settings, &progress).await;
    stop_sampling.store(true, Ordering::Relaxed);
    let lag = lag_task.await.unwrap_or_default();
    let (statement_samples, statements) = statements_task.await.unwrap_or_default();
    let postgres = postgres_task.await.unwrap_or_default();
    if let Some(task) = vacuum_task {
        let _ = task.await;
    }
    worker.stop()?;
    server.stop()?;
    let report = outcome?;
    let (shares, postgres_load) = match window.into_inner() {
        Ok((Some((before, from)), Some((after, to)))) => (
            probe.shares(&before, &after),
            postgres_rates(&postgres, from, to),
        ),
        _ => (cpu::Shares::default(), None),
    };
    let (failed, dead) = failed_and_dead(&db).await?;
    let (delivered, miscaptured) = captures(&db).await?;
    let (lag_p50, lag_p99, lag_max) = (
        quantile(&lag, 0.5),
        quantile(&lag, 0.99),
        lag.iter().copied().fold(0.0, f64::max),
    );

    let r = &report.report;
    let wanted_reports = opts.drivers as f64 / opts.report_every.as_secs_f64();
    println!();
    println!(
        "end-to-end benchmark: {} drivers, {} restaurants, {} customers; {} orders/s for {:?} at {}x",
        opts.drivers,
        opts.restaurants,
        opts.customers,
        opts.orders_per_second,
        opts.duration,
        opts.speed
    );
    println!(
        "{:<40} {:>10} {:>10} {:>7}",
        "sustained while ordering", "target/s", "achieved/s", "ratio"
    );
    let rate = |name: &str, target: f64, achieved: f64| {
        println!(
            "{name:<40} {target:>10.0} {achieved:>10.1} {:>7.2}",
            achieved / target.max(0.001)
        );
    };
    rate("orders placed", opts.orders_per_second, report.placed_per_s);
    rate(
        "orders delivered (steady state)",
        opts.orders_per_second,
        report.delivered_per_s,
    );
    rate("location reports", wanted_reports, report.location_per_s);
    println!();
    println!(
        "{:<40} {:>10} {:>10} {:>10}",
        "latency (client)", "requests", "p50 ms", "p99 ms"
    );
    for (name, l) in [
        ("location report", &report.location),
        ("order placement", &report.place),
        ("offer poll", &report.offer_poll),
        ("every other request", &report.other),
    ] {
        println!(
            "{name:<40} {:>10} {:>10.2} {:>10.2}",
            l.count, l.p50_ms, l.p99_ms
        );
    }
    println!();
    println!(
        "placed → first offer: p50 {:.2} s, p99 {:.2} s (target p99 < 2 s); confirmed → first offer: p50 {:.2} s, p99 {:.2} s",
        r.placed_to_first_offer.p50_real_s,
        r.placed_to_first_offer.p99_real_s,
        report.confirmed_to_first_offer.p50_real_s,
        report.confirmed_to_first_offer.p99_real_s
    );
    println!(
        "job queue lag (oldest due job's age, sampled each second): p50 {lag_p50:.2} s, p99 {lag_p99:.2} s, max {lag_max:.2} s"
    );
    println!("ordering window {}", shares.line());
    if let Some((commits, rows, wal)) = postgres_load {
        let per_order = report.placed_per_s.max(0.001);
        println!(
            "Postgres while ordering: {commits:.0} commits/s, {rows:.0} rows written/s, {:.2} MB/s of WAL; per order placed {:.1} commits, {:.1} rows, {:.1} kB of WAL (location history included)",
            wal / 1e6,
            commits / per_order,
            rows / per_order,
            wal / per_order / 1e3
        );
    }
    let mut busiest: Vec<(String, u64)> = statements.into_iter().collect();
    busiest.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    println!(
        "Postgres: statements most often active ({statement_samples} samples, 50 ms apart; average active at once, then the statement):"
    );
    for (statement, n) in busiest.iter().take(8) {
        println!(
            "  {:>6.2}  {statement}",
            *n as f64 / statement_samples.max(1) as f64
        );
    }
    println!(
        "jobs failed {failed}, dead {dead}; delivered orders {delivered}, payments wrong {} (must be 0); drain took {:.0} s",
        miscaptured.len(),
        report.drain_s
    );
    println!();
    print!("{}", r.table());
    println!();
    println!(
        "bottleneck: {}",
        bottleneck(&report, opts, &shares, lag_p99)
    );
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    let mut failures = r.violations();
    if dead > 0 {
        failures.push(format!("{dead} jobs are dead (their work was lost)"));
    }
    if !miscaptured.is_empty() {
        failures.push(format!(
            "{} orders whose payment went wrong (completed uncaptured, captured undelivered or twice)",
            miscaptured.len()
        ));
    }
    anyhow::ensure!(
        failures.is_empty(),
        "invariants failed: {}",
        failures.join("; ")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_rates_count_only_the_samples_inside_the_window() {
        let start = std::time::Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let sample = |s: u64, commits: i64| {
            (
                at(s),
                PgCounters {
                    commits,
                    rows_written: commits * 3,
                    wal_bytes: commits as f64 * 1_000.0,
                },
            )
        };
        let samples = [
            sample(0, 0),
            sample(1, 50),
            sample(3, 250),
            sample(4, 1_000),
        ];
        // The window opens at 0.5 s and closes at 3.5 s: samples at 1 s and 3 s count.
        let (commits, rows, wal) = postgres_rates(
            &samples,
            start + Duration::from_millis(500),
            start + Duration::from_millis(3_500),
        )
        .expect("two samples inside");
        assert_eq!(commits, 100.0);
        assert_eq!(rows, 300.0);
        assert_eq!(wal, 100_000.0);
        assert!(postgres_rates(&samples, at(5), at(6)).is_none());
    }

    #[test]
    fn quantiles_pick_the_nearest_rank() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&samples, 0.5), 51.0);
        assert_eq!(quantile(&samples, 0.99), 99.0);
        assert_eq!(quantile(&[], 0.99), 0.0);
    }

    #[test]
    fn statements_are_keyed_by_their_start_with_whitespace_collapsed() {
        assert_eq!(
            statement_key("SELECT id\n   FROM offers\tWHERE driver_id = $1"),
            "SELECT id FROM offers WHERE driver_id = $1"
        );
        assert_eq!(statement_key(&"x ".repeat(100)).len(), 90);
    }

    fn options() -> E2eBench {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            bench: E2eBench,
        }
        Cli::parse_from(["e2e"]).bench
    }

    #[test]
    fn the_bottleneck_is_named_from_what_was_measured() {
        let opts = options();
        let mut report = FleetReport {
            placed_per_s: 100.0,
            location_per_s: 10_000.0,
            ..FleetReport::default()
        };
        report.report.placed_to_first_offer.p99_real_s = 1.5;
        let calm = cpu::Shares::default();
        assert_eq!(
            bottleneck(&report, &opts, &calm, 0.1),
            "none: every target held"
        );

        report.location_per_s = 7_000.0;
        let busy = cpu::Shares {
            parties: vec![
                ("courier serve", 54.0, 0.0, false),
                ("Postgres", 76.0, 0.0, false),
            ],
            machine_busy: Some(100.0),
        };
        let named = bottleneck(&report, &opts, &busy, 65.0);
        assert!(named.contains("the machine's cores (100 % busy"), "{named}");
        assert!(named.contains("Postgres at 76 %"), "{named}");
        assert!(
            named.contains("the job queue (p99 of the oldest due job's age 65.0 s)"),
            "{named}"
        );

        let lanes = bottleneck(&report, &opts, &calm, 0.0);
        assert!(
            lanes.starts_with("neither the cores nor the job queue"),
            "{lanes}"
        );
    }

    #[test]
    fn the_server_timers_are_durations() {
        for (name, value) in server_timers() {
            if !name.starts_with("COURIER_CRON") {
                assert!(humantime::parse_duration(&value).is_ok(), "{name}={value}");
            }
        }
    }
}
