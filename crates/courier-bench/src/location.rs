//! `courier-bench location`: the location service under load, measured end to end and against
//! raw Valkey in the same run.
//!
//! One command does everything: it migrates the configured (bench) database, makes sure it
//! holds `--drivers` drivers, clears this key prefix's location keys, starts `courier serve` as a
//! child process, puts every driver online and loads their positions through the batch endpoint
//! (the batch throughput figure), then for `--duration` sends single updates through HTTP at
//! `--rate` while querying nearby drivers at `--query-rate`. It then runs the same operations
//! directly against Valkey (the ingest and nearby scripts, no HTTP, no application) for the
//! baseline, plus one naive `GEOSEARCH … BYRADIUS 5 km` over a single key holding every driver,
//! stops the server with SIGTERM, and compares the history rows written with the updates
//! accepted. It also reports where the CPU went during the update phase (`cpu.rs`): the load
//! generator shares the machine with what it measures. Everything it prints is measured in
//! that run.

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng};
use secrecy::ExposeSecret;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use sqlx::PgPool;

use courier::auth::{Principal, Role, TokenKeys};
use courier::config::Config;
use courier::geo::Point;
use courier::location::history;
use courier::location::update::LocationUpdate;
use courier::location::{Ingested, LocationService};
use courier::store;
use courier::valkey::Valkey;
use courier_sim::clock::staggered;
use courier_sim::wire::Conn;

use crate::cpu;
use crate::server::{
    Courier, clear_location_keys, ensure_dedicated, ensure_operator, valkey_pid, wait_ready,
};

/// How drivers are spread.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Layout {
    /// One dense 30×30 km city.
    Dense,
    /// Five cities of 30×30 km, about 1,000 km apart, with 40/25/15/12/8 % of the drivers,
    /// each its own market.
    Markets,
}

/// Options of the location benchmark.
#[derive(Clone, Debug, clap::Args)]
pub struct LocationBench {
    /// Drivers to load.
    #[arg(long, default_value_t = 100_000)]
    pub drivers: usize,
    /// How drivers are spread.
    #[arg(long, value_enum, default_value_t = Layout::Dense)]
    pub layout: Layout,
    /// Target single updates per second through HTTP.
    #[arg(long, default_value_t = 10_000)]
    pub rate: u32,
    /// Nearby-driver queries per second during the update phase.
    #[arg(long, default_value_t = 200)]
    pub query_rate: u32,
    /// Length of the update phase, e.g. `20s`.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Concurrent connections sending updates.
    #[arg(long, default_value_t = 128)]
    pub concurrency: usize,
    /// Where the spawned server listens.
    #[arg(long, default_value = "127.0.0.1:18080")]
    pub listen: std::net::SocketAddr,
    /// Runs the server without rate limits (they are on, as in production, by default): run
    /// once with and once without to see what the limiter costs.
    #[arg(long)]
    pub no_rate_limits: bool,
}

/// The cities of the `markets` layout are [`courier::seed::CITIES`]; their shares of drivers.
const CITY_WEIGHTS: [f64; 5] = [0.40, 0.25, 0.15, 0.12, 0.08];

/// The centre of city `k` of [`courier::seed::CITIES`].
fn center(k: usize) -> (f64, f64) {
    let (_, _, _, lat, lon) = courier::seed::CITIES[k];
    (lat, lon)
}
const CITY_KM: f64 = 30.0;

/// A small seeded generator (the benchmark must be repeatable).
type Rng = StdRng;

fn point_in(rng: &mut Rng, center: (f64, f64)) -> Point {
    let half = CITY_KM / 2.0;
    let lat = center.0 + (rng.random::<f64>() * 2.0 - 1.0) * half / 111.32;
    let lon = center.1
        + (rng.random::<f64>() * 2.0 - 1.0) * half / (111.32 * center.0.to_radians().cos());
    Point { lat, lon }
}

fn city_of(layout: Layout, index: usize, total: usize) -> (f64, f64) {
    match layout {
        Layout::Dense => center(0),
        Layout::Markets => {
            let share = index as f64 / total.max(1) as f64;
            let mut cumulative = 0.0;
            for (k, weight) in CITY_WEIGHTS.iter().enumerate() {
                cumulative += weight;
                if share < cumulative {
                    return center(k);
                }
            }
            center(CITY_WEIGHTS.len() - 1)
        }
    }
}

/// Latency samples in microseconds.
#[derive(Debug, Default)]
pub(crate) struct Samples(pub(crate) Vec<u64>);

impl Samples {
    pub(crate) fn percentile_ms(&mut self, p: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        self.0.sort_unstable();
        let rank = ((p / 100.0) * (self.0.len() - 1) as f64).round() as usize;
        self.0[rank.min(self.0.len() - 1)] as f64 / 1_000.0
    }

    /// The median and the 99th percentile, in ms.
    pub(crate) fn p50_p99(&mut self) -> (f64, f64) {
        (self.percentile_ms(50.0), self.percentile_ms(99.0))
    }
}

fn elapsed_us(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// The part of a single report's answer the benchmark reads.
#[derive(serde::Deserialize)]
struct ReportAnswer {
    result: Ingested,
}

/// `EVALSHA` calls and microseconds spent in them so far, from `INFO commandstats`.
async fn evalsha_stats(conn: &mut courier::valkey::Connection) -> anyhow::Result<(u64, u64)> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await?;
    Ok(parse_evalsha_stats(&info))
}

fn parse_evalsha_stats(info: &str) -> (u64, u64) {
    let Some(line) = info.lines().find(|l| l.starts_with("cmdstat_evalsha:")) else {
        return (0, 0);
    };
    let field = |name: &str| {
        line.split([':', ','])
            .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("calls"), field("usec"))
}

fn per_call_us(before: (u64, u64), after: (u64, u64)) -> f64 {
    let calls = after.0.saturating_sub(before.0);
    if calls == 0 {
        return f64::NAN;
    }
    after.1.saturating_sub(before.1) as f64 / calls as f64
}

/// Makes sure the database holds at least `n` drivers; returns the first `n` ids.
async fn ensure_drivers(db: &PgPool, n: usize) -> anyhow::Result<Vec<i64>> {
    let have: i64 = sqlx::query_scalar("SELECT count(*) FROM drivers")
        .fetch_one(db)
        .await?;
    let missing = i64::try_from(n)?.saturating_sub(have);
    if missing > 0 {
        sqlx::query(
            "WITH u AS (
                 INSERT INTO users (role, name, email)
                 SELECT 'driver', 'Bench driver', 'bench-' || gen_random_uuid() || '@bench.courier.invalid'
                 FROM generate_series(1, $1)
                 RETURNING id
             )
             INSERT INTO drivers (user_id, vehicle_type, is_active) SELECT id, 'scooter', TRUE FROM u",
        )
        .bind(missing)
        .execute(db)
        .await?;
    }
    Ok(
        sqlx::query_scalar("SELECT id FROM drivers ORDER BY id LIMIT $1")
            .bind(i64::try_from(n)?)
            .fetch_all(db)
            .await?,
    )
}

/// One market per city of the `markets` layout (those `courier seed --markets 5` makes), so
/// each city's drivers live under their own hash tag.
async fn ensure_city_markets(db: &PgPool) -> anyhow::Result<()> {
    for (slug, name, zone, lat, lon) in courier::seed::CITIES {
        sqlx::query(
            "INSERT INTO markets (slug, name, time_zone, center, radius_km)
             VALUES ($1, $2, $3, ST_SetSRID(ST_MakePoint($5, $4), 4326)::geography, $6)
             ON CONFLICT (slug) DO NOTHING",
        )
        .bind(slug)
        .bind(name)
        .bind(zone)
        .bind(lat)
        .bind(lon)
        .bind(CITY_KM * 0.75)
        .execute(db)
        .await?;
    }
    Ok(())
}

/// Runs the benchmark and prints its report.
pub async fn run_location(config: &Config, opts: &LocationBench) -> anyhow::Result<()> {
    anyhow::ensure!(
        opts.drivers >= 1_000 && opts.concurrency >= 1 && opts.rate >= 1,
        "use at least 1,000 drivers, a concurrency and a rate of at least 1"
    );
    ensure_dedicated(
        config.database.url.expose_secret(),
        &config.valkey.key_prefix,
    )?;
    let started_at = chrono::Utc::now();
    store::ensure_database(&config.database).await?;
    let db = store::pool(&config.database)?;
    store::migrate(&db).await?;
    let valkey = Valkey::new(&config.valkey)?;
    println!(
        "preparing {} drivers ({:?} layout)…",
        opts.drivers, opts.layout
    );
    let ids = ensure_drivers(&db, opts.drivers).await?;
    if opts.layout == Layout::Markets {
        ensure_city_markets(&db).await?;
    }
    clear_location_keys(&valkey).await?;
    // Every run starts with an empty history, as a day's partition does at midnight: the
    // cost of an insert grows with the partition's index, so runs that inherited earlier
    // runs' rows would measure each other (docs/benchmarks.md).
    sqlx::query("TRUNCATE driver_locations")
        .execute(&db)
        .await?;
    let (history_sender, history_task) = history::spawn(db.clone());
    let location = LocationService::new(valkey.clone(), db.clone(), history_sender);
    futures::stream::iter(ids.iter().copied())
        .map(|id| {
            let location = location.clone();
            async move { location.set_online(id, true).await }
        })
        .buffer_unordered(64)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::warn!(error = %e, "set_online failed");
            }
        })
        .await;

    let mut rng = Rng::seed_from_u64(42);
    let positions: Vec<Point> = (0..ids.len())
        .map(|i| point_in(&mut rng, city_of(opts.layout, i, ids.len())))
        .collect();

    let limits = if opts.no_rate_limits {
        vec![crate::server::unlimited()]
    } else {
        Vec::new()
    };
    println!(
        "rate limits: {}",
        if opts.no_rate_limits {
            "off"
        } else {
            "on (the defaults)"
        }
    );
    let server = Courier::start(config, "serve", Some(opts.listen), &limits, None)?;
    let base = format!("http://{}", opts.listen);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(opts.concurrency + 8)
        .timeout(Duration::from_secs(10))
        .build()?;
    wait_ready(&base).await?;

    let keys = TokenKeys::new(&config.jwt_secret);
    let now_s = chrono::Utc::now().timestamp();
    let operator = keys.issue(
        Principal {
            role: Role::Operator,
            subject: ensure_operator(&db).await?,
        },
        now_s,
        Duration::from_secs(3600),
    )?;

    // Phase 1: load every position through the batch endpoint.
    let batch_started = Instant::now();
    let accepted_batch = Arc::new(AtomicU64::new(0));
    let chunks: Vec<Vec<serde_json::Value>> = ids
        .chunks(1_000)
        .zip(positions.chunks(1_000))
        .map(|(ids, points)| {
            ids.iter()
                .zip(points)
                .map(|(id, p)| serde_json::json!({"driver_id": id, "lat": p.lat, "lon": p.lon}))
                .collect()
        })
        .collect();
    futures::stream::iter(chunks)
        .map(|updates| {
            let client = client.clone();
            let url = format!("{base}/v1/drivers/locations:batch");
            let operator = operator.clone();
            let accepted = accepted_batch.clone();
            async move {
                let response = client
                    .post(url)
                    .bearer_auth(operator)
                    .json(&serde_json::json!({"updates": updates}))
                    .send()
                    .await?;
                let body: serde_json::Value = response.error_for_status()?.json().await?;
                accepted.fetch_add(body["accepted"].as_u64().unwrap_or(0), Ordering::Relaxed);
                anyhow::Ok(())
            }
        })
        .buffer_unordered(4)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::warn!(error = %e, "batch failed");
            }
        })
        .await;
    let batch_secs = batch_started.elapsed().as_secs_f64();
    let accepted_batch = accepted_batch.load(Ordering::Relaxed);

    // Phase 2: single updates at the target rate, with nearby queries alongside.
    let tokens: Arc<Vec<String>> = Arc::new(
        ids.iter()
            .map(|id| {
                let token = keys.issue(
                    Principal {
                        role: Role::Driver,
                        subject: *id,
                    },
                    now_s,
                    Duration::from_secs(3600),
                )?;
                anyhow::Ok(format!("Bearer {token}"))
            })
            .collect::<anyhow::Result<_>>()?,
    );
    let ids = Arc::new(ids);
    let positions = Arc::new(positions);
    let deadline = Instant::now() + opts.duration;
    let per_task_interval = Duration::from_secs_f64(opts.concurrency as f64 / f64::from(opts.rate));
    let concurrency = opts.concurrency;
    let accepted_single = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::new();
    for task in 0..opts.concurrency {
        let (tokens, ids, positions) = (tokens.clone(), ids.clone(), positions.clone());
        let (accepted, errors, listen) = (accepted_single.clone(), errors.clone(), opts.listen);
        senders.push(tokio::spawn(async move {
            let mut rng = Rng::seed_from_u64(task as u64 + 1);
            let mut samples = Samples::default();
            let mut conn = Conn::new(listen);
            let mut ticks = staggered(per_task_interval, task, concurrency);
            while Instant::now() < deadline {
                ticks.tick().await;
                let i = (rng.random::<f64>() * ids.len() as f64) as usize % ids.len();
                let p = positions[i];
                let body = format!(
                    r#"{{"lat":{},"lon":{}}}"#,
                    p.lat + (rng.random::<f64>() - 0.5) * 1e-3,
                    p.lon + (rng.random::<f64>() - 0.5) * 1e-3
                );
                let path = format!("/v1/drivers/{}/location", ids[i]);
                let sent = Instant::now();
                match conn.send("POST", &path, &tokens[i], Some(&body)).await {
                    Ok((status, answer)) if (200..300).contains(&status) => {
                        samples.0.push(elapsed_us(sent));
                        if serde_json::from_slice::<ReportAnswer>(answer)
                            .is_ok_and(|a| a.result != Ingested::Stale)
                        {
                            accepted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            samples
        }));
    }
    // The queries come from their own connections on their own thread and runtime, as
    // matching would from a worker process: their latency is the server's, not the update
    // generator's task queue. Several loops, so one slow answer does not hold the query rate
    // down.
    const QUERY_LOOPS: u32 = 4;
    let (listen, query_operator) = (opts.listen, format!("Bearer {operator}"));
    let (layout, query_rate) = (opts.layout, opts.query_rate.max(1));
    let query_thread = std::thread::spawn(move || -> anyhow::Result<Samples> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let interval = Duration::from_secs_f64(f64::from(QUERY_LOOPS) / f64::from(query_rate));
            let lanes = (0..QUERY_LOOPS).map(|lane| {
                let operator = query_operator.clone();
                async move {
                    let mut rng = Rng::seed_from_u64(7 + u64::from(lane));
                    let mut samples = Samples::default();
                    let mut conn = Conn::new(listen);
                    let mut ticks = staggered(interval, lane as usize, QUERY_LOOPS as usize);
                    let mut n = 0;
                    while Instant::now() < deadline {
                        ticks.tick().await;
                        let at = point_in(&mut rng, city_of(layout, n % 100, 100));
                        n += 1;
                        let path = format!(
                            "/v1/drivers/nearby?lat={}&lon={}&radius_km=5&limit=20",
                            at.lat, at.lon
                        );
                        let sent = Instant::now();
                        if conn
                            .send("GET", &path, &operator, None)
                            .await
                            .is_ok_and(|(status, _)| (200..300).contains(&status))
                        {
                            samples.0.push(elapsed_us(sent));
                        }
                    }
                    samples
                }
            });
            let mut all = Samples::default();
            for lane in futures::future::join_all(lanes).await {
                all.0.extend(lane.0);
            }
            Ok(all)
        })
    });
    // One connection for the benchmark's own Valkey calls (statistics, the naive search).
    let mut conn = valkey.connection();
    let probe = cpu::Probe::new(&[("server", server.pid())], valkey_pid(&mut conn).await);
    let cpu_before = probe.snapshot();
    let before_phase = evalsha_stats(&mut conn).await?;
    let phase_started = Instant::now();
    let mut update_samples = Samples::default();
    for sender in senders {
        update_samples.0.extend(sender.await?.0);
    }
    let mut query_samples = tokio::task::spawn_blocking(move || query_thread.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the query thread panicked"))??;
    let phase_secs = phase_started.elapsed().as_secs_f64();
    let cpu_after = probe.snapshot();
    let after_phase = evalsha_stats(&mut conn).await?;
    let accepted_single = accepted_single.load(Ordering::Relaxed);

    // Stop the server: it drains and flushes its history.
    server.stop()?;

    // Phase 3: the same operations straight against Valkey.
    let raw_deadline = Instant::now() + opts.duration.min(Duration::from_secs(10));
    let accepted_raw = Arc::new(AtomicU64::new(0));
    let mut raw_tasks = Vec::new();
    for task in 0..opts.concurrency {
        let (location, ids, positions, accepted) = (
            location.clone(),
            ids.clone(),
            positions.clone(),
            accepted_raw.clone(),
        );
        raw_tasks.push(tokio::spawn(async move {
            let mut rng = Rng::seed_from_u64(task as u64 + 1_000);
            let mut samples = Samples::default();
            let mut ticks = staggered(per_task_interval, task, concurrency);
            while Instant::now() < raw_deadline {
                ticks.tick().await;
                let i = (rng.random::<f64>() * ids.len() as f64) as usize % ids.len();
                let update =
                    LocationUpdate::position(ids[i], positions[i], courier::location::now_ms());
                let sent = Instant::now();
                if let Ok(outcome) = location.ingest(&[update]).await {
                    samples.0.push(elapsed_us(sent));
                    if outcome
                        .first()
                        .is_some_and(|o| o.is_some_and(|o| o != Ingested::Stale))
                    {
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            samples
        }));
    }
    let before_ingest = evalsha_stats(&mut conn).await?;
    let raw_started = Instant::now();
    let mut raw_update_samples = Samples::default();
    for task in raw_tasks {
        raw_update_samples.0.extend(task.await?.0);
    }
    let raw_secs = raw_started.elapsed().as_secs_f64();
    let mut accepted_raw = accepted_raw.load(Ordering::Relaxed);
    let after_ingest = evalsha_stats(&mut conn).await?;

    // Steady state for the queries: every driver reported within the last 30 s (as with a
    // report every 10 s), so stale members do not force wider rings.
    let now_ms = courier::location::now_ms();
    for (chunk_ids, chunk_points) in ids.chunks(1_000).zip(positions.chunks(1_000)) {
        let updates: Vec<LocationUpdate> = chunk_ids
            .iter()
            .zip(chunk_points)
            .map(|(id, p)| LocationUpdate::position(*id, *p, now_ms))
            .collect();
        let outcomes = location.ingest(&updates).await?;
        accepted_raw += outcomes
            .iter()
            .filter(|o| o.is_some_and(|o| o != Ingested::Stale))
            .count() as u64;
    }
    // Flush this process's history now, so its inserts do not compete with the queries.
    history_task.shutdown().await;
    let before_nearby = evalsha_stats(&mut conn).await?;

    let mut raw_query_samples = Samples::default();
    let mut rng = Rng::seed_from_u64(7);
    for n in 0..2_000 {
        let at = point_in(&mut rng, city_of(opts.layout, n % 100, 100));
        let sent = Instant::now();
        location.find_nearby_drivers(at, 5.0, 20).await?;
        raw_query_samples.0.push(elapsed_us(sent));
    }
    let after_nearby = evalsha_stats(&mut conn).await?;

    // The naive design for comparison: every driver in one key, one 5 km search.
    let naive_key = valkey.key("loc:{naive}:all");
    for (chunk_ids, chunk_points) in ids.chunks(10_000).zip(positions.chunks(10_000)) {
        let mut cmd = redis::cmd("GEOADD");
        cmd.arg(&naive_key);
        for (id, p) in chunk_ids.iter().zip(chunk_points) {
            cmd.arg(p.lon).arg(p.lat).arg(*id);
        }
        let _: i64 = cmd.query_async(&mut conn).await?;
    }
    let mut naive_samples = Samples::default();
    let mut rng = Rng::seed_from_u64(7);
    for n in 0..200 {
        let at = point_in(&mut rng, city_of(opts.layout, n % 100, 100));
        let sent = Instant::now();
        let _: redis::Value = redis::cmd("GEOSEARCH")
            .arg(&naive_key)
            .arg("FROMLONLAT")
            .arg(at.lon)
            .arg(at.lat)
            .arg("BYRADIUS")
            .arg(5)
            .arg("km")
            .arg("ASC")
            .arg("COUNT")
            .arg(20)
            .arg("WITHDIST")
            .query_async(&mut conn)
            .await?;
        naive_samples.0.push(elapsed_us(sent));
    }
    let _: () = redis::cmd("UNLINK")
        .arg(&naive_key)
        .query_async(&mut conn)
        .await?;

    let history_rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM driver_locations WHERE recorded_at >= $1")
            .bind(started_at)
            .fetch_one(&db)
            .await?;
    let accepted_total = accepted_batch + accepted_single + accepted_raw;

    let update_rate = update_samples.0.len() as f64 / phase_secs;
    let raw_rate = raw_update_samples.0.len() as f64 / raw_secs;
    let (u50, u99) = update_samples.p50_p99();
    let (r50, r99) = raw_update_samples.p50_p99();
    let (q50, q99) = query_samples.p50_p99();
    let (rq50, rq99) = raw_query_samples.p50_p99();
    let (n50, n99) = naive_samples.p50_p99();
    println!();
    println!(
        "location benchmark: {} drivers, {:?} layout, target {}/s for {:?}, {} connections",
        ids.len(),
        opts.layout,
        opts.rate,
        opts.duration,
        opts.concurrency
    );
    println!(
        "{:<44} {:>12} {:>10} {:>10}",
        "operation", "rate/s", "p50 ms", "p99 ms"
    );
    println!(
        "{:<44} {:>12.0} {:>10} {:>10}",
        "batch load via HTTP (1,000 per request)",
        accepted_batch as f64 / batch_secs,
        "-",
        "-"
    );
    println!(
        "{:<44} {:>12.0} {:>10.3} {:>10.3}",
        "single update via HTTP", update_rate, u50, u99
    );
    println!(
        "{:<44} {:>12.0} {:>10.3} {:>10.3}",
        "single update, raw Valkey script", raw_rate, r50, r99
    );
    println!(
        "{:<44} {:>12.0} {:>10.3} {:>10.3}",
        "nearby 5 km top 20 via HTTP (during updates)",
        query_samples.0.len() as f64 / phase_secs,
        q50,
        q99
    );
    println!(
        "{:<44} {:>12} {:>10.3} {:>10.3}",
        "nearby 5 km top 20, raw Valkey (rings)", "-", rq50, rq99
    );
    println!(
        "{:<44} {:>12} {:>10.3} {:>10.3}",
        "naive GEOSEARCH 5 km over all drivers", "-", n50, n99
    );
    println!(
        "ratios: update p99 HTTP/raw {:.1}x, nearby p99 HTTP/raw {:.1}x, naive/rings p50 {:.1}x",
        u99 / r99,
        q99 / rq99,
        n50 / rq50
    );
    println!(
        "Valkey server time per script call (INFO commandstats): ingest {:.1} µs, nearby ring {:.1} µs",
        per_call_us(before_ingest, after_ingest),
        per_call_us(before_nearby, after_nearby)
    );
    let phase_calls = after_phase.0.saturating_sub(before_phase.0);
    let update_calls = phase_calls.saturating_sub(query_samples.0.len() as u64);
    println!(
        "HTTP phase: {phase_calls} script calls for {} single updates and {} searches ({:.1} updates per ingest call)",
        update_samples.0.len(),
        query_samples.0.len(),
        update_samples.0.len() as f64 / update_calls.max(1) as f64
    );
    println!("HTTP phase {}", probe.report(&cpu_before, &cpu_after));
    println!("HTTP update errors: {}", errors.load(Ordering::Relaxed));
    println!(
        "history: {history_rows} rows written, {accepted_total} updates accepted, {} missing",
        accepted_total.saturating_sub(u64::try_from(history_rows).unwrap_or(0))
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let mut samples = Samples((1..=100).map(|ms| ms * 1_000).collect());
        assert_eq!(samples.percentile_ms(50.0), 51.0);
        assert_eq!(samples.percentile_ms(99.0), 99.0);
        assert_eq!(samples.percentile_ms(100.0), 100.0);
        assert!(Samples::default().percentile_ms(50.0).is_nan());
    }

    #[test]
    fn evalsha_stats_parse_from_info() {
        let info = "# Commandstats\r\ncmdstat_get:calls=3,usec=9,usec_per_call=3.00\r\ncmdstat_evalsha:calls=10,usec=250,usec_per_call=25.00,rejected_calls=0\r\n";
        assert_eq!(parse_evalsha_stats(info), (10, 250));
        assert_eq!(parse_evalsha_stats("# Commandstats\r\n"), (0, 0));
        assert_eq!(per_call_us((10, 250), (20, 450)), 20.0);
    }

    #[test]
    fn markets_get_their_shares_of_drivers() {
        let total = 10_000;
        let in_first = (0..total)
            .filter(|i| city_of(Layout::Markets, *i, total) == center(0))
            .count();
        assert_eq!(in_first, 4_000);
        assert!((0..total).all(|i| city_of(Layout::Dense, i, total) == center(0)));
    }

    #[test]
    fn points_stay_inside_their_city() {
        let mut rng = Rng::seed_from_u64(1);
        for _ in 0..1_000 {
            let p = point_in(&mut rng, (40.0, -74.0));
            assert!(
                courier::geo::haversine_m(
                    p,
                    Point {
                        lat: 40.0,
                        lon: -74.0
                    }
                ) <= 15_000.0 * std::f64::consts::SQRT_2 + 1.0
            );
        }
    }
}
