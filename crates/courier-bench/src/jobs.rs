//! `courier-bench jobs`: the durable workflow's job layer, measured beside what Postgres allows
//! in the same run.
//!
//! A job kind of its own (`courier::bench_noop`, registered only here) is drained through the
//! very worker setup `courier worker` uses ([`worker_backend`](courier::workers::worker_backend):
//! the same storage settings, NOTIFY plus a 1 s poll, the same pool size, the same handler
//! wrapper). In the same run, on the same database:
//! - **drain**: `--jobs` rows inserted up front, then one worker started; jobs/s until the last
//!   of them ran, and each party's CPU meanwhile — for each [`Layer`] in turn, so the "before"
//!   (apalis-postgres's storage) and each change are measured as pairs in the same run;
//! - **enqueue→start**: single jobs enqueued in their own transactions, the production path,
//!   timed from just before the insert to the handler's start — while the worker is idle, and
//!   while it drains;
//! - **plain SQL loops**: the same rows claimed with apalis's own claim statement (`FOR UPDATE
//!   SKIP LOCKED`, same predicate and order, so the same index) and marked done by four loops,
//!   a job and a hundred jobs per round trip — what Postgres allows on this machine for any job
//!   layer on this table;
//! - **transactional enqueue**: business transactions that update a row and enqueue a job
//!   through [`courier::jobs::enqueue`], against the same transactions inserting a plain row;
//! - with `--peer graphile`: graphile-worker (npm) draining as many no-op jobs on the same
//!   database, with its defaults and tuned.
//!
//! Every figure is printed with its ratio to the plain SQL loop measured in the same run, and
//! the drain with its ratio to the peers.

use secrecy::ExposeSecret;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use apalis::prelude::{
    BackendExt, BoxDynError, Data, Monitor, TaskBuilder, WorkerBuilder, WorkerBuilderExt,
};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::cpu;
use crate::location::Samples;
use courier::config::Config;
use courier::jobs::{self, Job};
use courier::shutdown::CancellationToken;
use courier::store;
use courier::store::DatabaseSettings;
use courier::workers::{self, bounded, worker_backend, worker_name};

/// Options of the job benchmark.
#[derive(Clone, Debug, clap::Args)]
pub struct JobsBench {
    /// Jobs per drain (and per plain-SQL run).
    #[arg(long, default_value_t = 20_000)]
    pub jobs: usize,
    /// Single enqueues timed for enqueue→start, in each of the two phases.
    #[arg(long, default_value_t = 200)]
    pub probes: usize,
    /// Business transactions per enqueue-path measurement.
    #[arg(long, default_value_t = 5_000)]
    pub transactions: usize,
    /// Also drain the same number of jobs with a peer job queue on the same database.
    #[arg(long, value_enum)]
    pub peer: Option<Peer>,
}

/// A peer job queue to measure beside courier's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Peer {
    /// graphile-worker (npm), with its defaults and tuned (a 100-job local queue and batched
    /// completion), installed under the data directory on first use.
    Graphile,
}

/// The graphile-worker release the peer runs.
const GRAPHILE_VERSION: &str = "0.18.0";

/// Drains `jobs` no-op jobs with graphile-worker in each of its two setups; jobs/s of each.
/// Node runs `ops/bench/graphile-peer.mjs` from a directory of its own under the data directory
/// (`COURIER_DATA_DIR`, default `.data`), where graphile-worker is installed from npm if missing.
fn graphile(database_url: &str, jobs: usize) -> anyhow::Result<(f64, f64)> {
    use std::process::Command;
    let data = std::env::var("COURIER_DATA_DIR").unwrap_or_else(|_| ".data".to_owned());
    let dir = std::path::Path::new(&data).join("graphile");
    std::fs::create_dir_all(&dir)?;
    let installed = std::fs::read_to_string(dir.join("node_modules/graphile-worker/package.json"))
        .is_ok_and(|p| p.contains(&format!("\"version\": \"{GRAPHILE_VERSION}\"")));
    if !installed {
        eprintln!(
            "installing graphile-worker {GRAPHILE_VERSION} from npm into {}…",
            dir.display()
        );
        let status = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--silent"])
            .arg(format!("graphile-worker@{GRAPHILE_VERSION}"))
            .current_dir(&dir)
            .status()
            .context("running npm (is Node.js installed?)")?;
        anyhow::ensure!(status.success(), "npm install graphile-worker failed");
    }
    // Node resolves packages next to the script, so the script runs from that directory.
    std::fs::copy("ops/bench/graphile-peer.mjs", dir.join("peer.mjs"))
        .context("copying ops/bench/graphile-peer.mjs (run from the repository root)")?;
    let drain = |mode: &str| -> anyhow::Result<f64> {
        let output = Command::new("node")
            .args(["peer.mjs", &jobs.to_string(), mode])
            .env("DATABASE_URL", database_url)
            .current_dir(&dir)
            .output()
            .context("running node")?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        anyhow::ensure!(
            output.status.success(),
            "graphile-worker ({mode}) failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("jobs_per_s="))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("graphile-worker ({mode}) printed no rate: {stdout}"))
    };
    Ok((drain("defaults")?, drain("tuned")?))
}

/// The benchmark's job: nothing to do but say when it was enqueued.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchNoop {
    /// Unix microseconds just before the job row was inserted; 0 for bulk rows.
    pub enqueued_us: i64,
}

impl Job for BenchNoop {
    const QUEUE: &'static str = "courier::bench_noop";
    const MAX_ATTEMPTS: usize = 1;
}

/// What the handler saw.
#[derive(Debug, Default)]
struct Recorder {
    ran: AtomicU64,
    /// Bulk rows (no enqueue time) among `ran`.
    bulk: AtomicU64,
    latencies_us: std::sync::Mutex<Vec<u64>>,
}

impl Recorder {
    fn take_latencies(&self) -> Samples {
        Samples(
            self.latencies_us
                .lock()
                .map(|mut l| std::mem::take(&mut *l))
                .unwrap_or_default(),
        )
    }
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// The handler, wrapped like every production handler.
async fn noop(job: BenchNoop, recorder: Data<Arc<Recorder>>) -> Result<(), BoxDynError> {
    bounded(BenchNoop::QUEUE, async {
        if job.enqueued_us > 0 {
            let waited = u64::try_from(now_us() - job.enqueued_us).unwrap_or(0);
            if let Ok(mut latencies) = recorder.latencies_us.lock() {
                latencies.push(waited);
            }
        }
        if job.enqueued_us == 0 {
            recorder.bulk.fetch_add(1, Ordering::Relaxed);
        }
        recorder.ran.fetch_add(1, Ordering::Relaxed);
        Ok(())
    })
    .await
}

/// Which job layer a bench worker runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layer {
    /// What `courier worker` runs: [`worker_backend`].
    Courier,
    /// Our [`JobStore`] with another claim size (for the paired effect of the claim size).
    Store { batch: usize },
    /// apalis-postgres's own `PostgresStorage`, as `courier worker` ran it before our store
    /// (its default claim of 10, NOTIFY + 1 s poll, our heartbeat settings): the "before".
    ApalisPostgres,
}

impl Layer {
    fn label(self) -> String {
        match self {
            Layer::Courier => format!(
                "courier worker: our store, {} per claim",
                workers::store::CLAIM_BATCH
            ),
            Layer::Store { batch } => format!("our store, {batch} per claim"),
            Layer::ApalisPostgres => {
                "before: apalis-postgres PostgresStorage (10 per claim)".to_owned()
            }
        }
    }
}

/// A running worker for the bench kind; stopped on [`Worker::stop`].
struct Worker {
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<Result<(), apalis::prelude::MonitorError>>,
}

impl Worker {
    fn start(db: &PgPool, recorder: &Arc<Recorder>, layer: Layer) -> Self {
        let (db, recorder) = (db.clone(), recorder.clone());
        let queue = workers::queue_pool(&db, 1);
        let name = || worker_name(BenchNoop::QUEUE);
        let monitor = match layer {
            Layer::Courier => Monitor::new().register(move |_restarts| {
                WorkerBuilder::new(name())
                    .backend(worker_backend::<BenchNoop>(
                        &queue,
                        workers::store::CLAIM_BATCH,
                    ))
                    .concurrency(workers::WORKER_CONCURRENCY)
                    .data(recorder.clone())
                    .build(noop)
            }),
            Layer::Store { batch } => Monitor::new().register(move |_restarts| {
                WorkerBuilder::new(name())
                    .backend(worker_backend::<BenchNoop>(&queue, batch))
                    .data(recorder.clone())
                    .build(noop)
            }),
            Layer::ApalisPostgres => Monitor::new().register(move |_restarts| {
                let config = apalis_postgres::Config::default()
                    .queue(BenchNoop::QUEUE)
                    .heartbeat_interval(workers::HEARTBEAT_INTERVAL)
                    .missed_heartbeats(workers::MISSED_HEARTBEATS);
                WorkerBuilder::new(name())
                    .backend(
                        apalis_postgres::PostgresStorage::<BenchNoop>::new(&db)
                            .with_config(config)
                            .with_pubsub()
                            .poll_with_interval(workers::POLL_INTERVAL),
                    )
                    .data(recorder.clone())
                    .build(noop)
            }),
        };
        let stop = CancellationToken::new();
        let signal = stop.clone();
        let handle = tokio::spawn(async move {
            monitor
                .run_with_signal(async move {
                    signal.cancelled().await;
                    Ok(())
                })
                .await
        });
        Self { stop, handle }
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.handle.await??;
        Ok(())
    }
}

/// Waits until `recorder` has seen `n` jobs (bounded: a stuck layer fails the run).
async fn wait_for(recorder: &Recorder, n: u64, limit: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    while recorder.ran.load(Ordering::Relaxed) < n {
        anyhow::ensure!(
            started.elapsed() < limit,
            "only {} of {n} jobs ran within {limit:?}",
            recorder.ran.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

/// Removes every row of the bench kind, then vacuums the job table: each drain leaves tens of
/// thousands of dead rows, and without this every measurement would pay for the ones before
/// it (more so where autovacuum is off or behind).
async fn clear(db: &PgPool) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM apalis.jobs WHERE job_type = $1")
        .bind(BenchNoop::QUEUE)
        .execute(db)
        .await?;
    sqlx::raw_sql("VACUUM (ANALYZE) apalis.jobs")
        .execute(db)
        .await?;
    Ok(())
}

/// How many bench jobs are `Done`, and how many are not.
async fn bench_jobs_done(db: &PgPool) -> anyhow::Result<(i64, i64)> {
    Ok(sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'Done'), count(*) FILTER (WHERE status <> 'Done')
         FROM apalis.jobs WHERE job_type = $1",
    )
    .bind(BenchNoop::QUEUE)
    .fetch_one(db)
    .await?)
}

/// Inserts `n` pending bench jobs, 1,000 per statement, through apalis's own insert.
async fn insert_bulk(db: &PgPool, n: usize) -> anyhow::Result<()> {
    let mut conn = db.acquire().await?;
    let body = serde_json::to_vec(&BenchNoop { enqueued_us: 0 })?;
    let mut left = n;
    while left > 0 {
        let batch = left.min(1_000);
        let tasks = (0..batch)
            .map(|_| {
                TaskBuilder::new(body.clone())
                    .max_attempts(BenchNoop::MAX_ATTEMPTS)
                    .build()
            })
            .collect();
        apalis_postgres::queries::push_tasks(&mut *conn, BenchNoop::QUEUE, tasks).await?;
        left -= batch;
    }
    Ok(())
}

/// One single job enqueued the production way: in its own transaction. Returns how long the
/// enqueue itself took (µs), mostly its commit's wait for the WAL flush.
async fn enqueue_probe(db: &PgPool) -> anyhow::Result<u64> {
    let started = Instant::now();
    let mut tx = store::begin(db).await?;
    jobs::enqueue(
        &mut tx,
        &BenchNoop {
            enqueued_us: now_us(),
        },
        Duration::ZERO,
    )
    .await?;
    tx.commit().await?;
    Ok(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX))
}

/// Up to `probes` single enqueues, one every `gap`, stopping early once `until` says so;
/// returns how long each enqueue took (so also how many were inserted).
async fn trickle(
    db: &PgPool,
    probes: usize,
    gap: Duration,
    until: impl Fn() -> bool,
) -> anyhow::Result<Samples> {
    let mut ticks = tokio::time::interval(gap);
    let mut took = Vec::with_capacity(probes);
    for _ in 0..probes {
        ticks.tick().await;
        if until() {
            break;
        }
        took.push(enqueue_probe(db).await?);
    }
    Ok(Samples(took))
}

/// Claims and completes every pending bench job with `loops` concurrent loops of `batch` jobs
/// per claim; jobs/s.
async fn plain_sql_loop(db: &PgPool, n: usize, loops: usize, batch: i64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let workers = (0..loops).map(|lane| {
        let db = db.clone();
        async move {
            let name = format!("bench-sql-{lane}");
            // Claimed rows name their worker, as apalis's do (a foreign key).
            sqlx::query(
                "INSERT INTO apalis.workers (id, worker_type, storage_name, last_seen)
                 VALUES ($1, $2, 'bench-sql', now())
                 ON CONFLICT (id) DO UPDATE SET last_seen = now()",
            )
            .bind(&name)
            .bind(BenchNoop::QUEUE)
            .execute(&db)
            .await?;
            loop {
                // The claim of apalis's `get_jobs`, statement for statement, so the same
                // partial index serves it; then the completion, with no result stored.
                let ids: Vec<String> = sqlx::query_scalar(
                    "WITH claimed AS (
                         SELECT id FROM apalis.jobs
                         WHERE (status = 'Pending' OR (status = 'Failed' AND attempts < max_attempts))
                           AND run_at < now() AND job_type = $1
                         ORDER BY priority DESC, run_at ASC
                         LIMIT $3 FOR UPDATE SKIP LOCKED)
                     UPDATE apalis.jobs j SET status = 'Running', lock_by = $2, lock_at = now()
                     FROM claimed WHERE j.id = claimed.id
                     RETURNING j.id",
                )
                .bind(BenchNoop::QUEUE)
                .bind(&name)
                .bind(batch)
                .fetch_all(&db)
                .await?;
                if ids.is_empty() {
                    return anyhow::Ok(());
                }
                sqlx::query(
                    "UPDATE apalis.jobs SET status = 'Done', done_at = now() WHERE id = ANY($1)",
                )
                .bind(&ids)
                .execute(&db)
                .await?;
            }
        }
    });
    for result in futures::future::join_all(workers).await {
        result?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (done, _) = bench_jobs_done(db).await?;
    anyhow::ensure!(
        usize::try_from(done)? == n,
        "the SQL loop finished {done} of {n} jobs"
    );
    Ok(n as f64 / elapsed)
}

/// `n` business transactions from `lanes` concurrent tasks, each updating a row and then
/// running `extra` on the same transaction; transactions/s.
async fn transactions<F>(db: &PgPool, n: usize, lanes: usize, extra: F) -> anyhow::Result<f64>
where
    F: Fn(&mut sqlx::PgConnection, usize) -> futures::future::BoxFuture<'_, anyhow::Result<()>>
        + Sync,
{
    let next = AtomicU64::new(0);
    let started = Instant::now();
    let lanes = (0..lanes).map(|_| async {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= n as u64 {
                return anyhow::Ok(());
            }
            let i = usize::try_from(i)?;
            let mut tx = store::begin(db).await?;
            sqlx::query("UPDATE bench_business SET n = n + 1 WHERE id = $1")
                .bind(i64::try_from(i % 1_000)?)
                .execute(&mut *tx)
                .await?;
            extra(&mut tx, i).await?;
            tx.commit().await?;
        }
    });
    for result in futures::future::join_all(lanes).await {
        result?;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

fn line(label: &str, rate: Option<f64>, latency: Option<(f64, f64)>, baseline: f64) -> String {
    let rate_text = rate.map_or("-".to_owned(), |r| format!("{r:.0}"));
    let (p50, p99) = latency.map_or(("-".to_owned(), "-".to_owned()), |(a, b)| {
        (format!("{a:.2}"), format!("{b:.2}"))
    });
    let ratio = rate.map_or("-".to_owned(), |r| format!("{:.2}x", r / baseline));
    format!("{label:<60} {rate_text:>8} {p50:>8} {p99:>8} {ratio:>9}")
}

/// Puts back (or drops again) the two indexes apalis-postgres creates that duplicate others on
/// `apalis.jobs`; migration `…008` drops them.
async fn duplicate_indexes(db: &PgPool, present: bool) -> anyhow::Result<()> {
    let sql = if present {
        "CREATE UNIQUE INDEX IF NOT EXISTS unique_job_id ON apalis.jobs (id);
         CREATE INDEX IF NOT EXISTS lidx ON apalis.jobs (lock_by)"
    } else {
        "DROP INDEX IF EXISTS apalis.unique_job_id; DROP INDEX IF EXISTS apalis.lidx"
    };
    sqlx::raw_sql(sql).execute(db).await?;
    Ok(())
}

/// One layer's figures: enqueue→start while idle and during its drain, the drain's rate, and
/// the CPU report of the drain.
struct Drained {
    idle: (f64, f64),
    /// The idle probes' enqueue alone (its commit): the floor under `idle`.
    idle_enqueue: (f64, f64),
    rate: f64,
    under_drain: (f64, f64),
    cpu: String,
}

/// Measures `layer`: `probes` single enqueues while its worker is idle, then a drain of `n`
/// bulk-inserted jobs with `probes` more single enqueues meanwhile.
///
/// The worker gets a pool of its own, closed afterwards: apalis-postgres's storage begins
/// transactions with sqlx's `Pool::begin`, which can leave a connection inside an open
/// transaction when a worker stops mid-`BEGIN` (see [`store::begin`]), and that must not leak
/// into the next measurement.
async fn drain(
    db: &PgPool,
    settings: &DatabaseSettings,
    layer: Layer,
    n: usize,
    probes: usize,
) -> anyhow::Result<Drained> {
    let limit = Duration::from_secs(600);
    let worker_db = store::pool(settings)?;
    let recorder = Arc::new(Recorder::default());
    let worker = Worker::start(&worker_db, &recorder, layer);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_enqueue = trickle(db, probes, Duration::from_millis(20), || false)
        .await?
        .p50_p99();
    wait_for(&recorder, probes as u64, limit).await?;
    let idle = recorder.take_latencies().p50_p99();
    worker.stop().await?;
    clear(db).await?;

    insert_bulk(db, n).await?;
    let recorder = Arc::new(Recorder::default());
    let probe = cpu::Probe::this_process_and_postgres("courier worker");
    let before = probe.snapshot();
    let started = Instant::now();
    let worker = Worker::start(&worker_db, &recorder, layer);
    // Probes every 5 ms while the backlog drains (not after: then they would time an idle
    // worker again).
    let (trickle_db, seen) = (db.clone(), recorder.clone());
    let during = tokio::spawn(async move {
        trickle(&trickle_db, probes, Duration::from_millis(5), || {
            seen.bulk.load(Ordering::Relaxed) >= n as u64
        })
        .await
    });
    while recorder.bulk.load(Ordering::Relaxed) < n as u64 {
        anyhow::ensure!(
            started.elapsed() < limit,
            "only {} of {n} jobs ran within {limit:?}",
            recorder.bulk.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let after = probe.snapshot();
    let sent = during.await??.0.len();
    wait_for(&recorder, (n + sent) as u64, limit).await?;
    let under_drain = recorder.take_latencies().p50_p99();
    worker.stop().await?;
    let (_, unfinished) = bench_jobs_done(db).await?;
    anyhow::ensure!(
        unfinished == 0,
        "{unfinished} jobs not Done after the drain"
    );
    worker_db.close().await;
    clear(db).await?;
    Ok(Drained {
        idle,
        idle_enqueue,
        rate,
        under_drain,
        cpu: probe.report(&before, &after),
    })
}

/// Runs the benchmark on the configured (bench) database.
pub async fn run_jobs(config: &Config, opts: &JobsBench) -> anyhow::Result<()> {
    anyhow::ensure!(
        opts.jobs >= 1_000 && opts.probes >= 10 && opts.transactions >= 100,
        "use at least 1,000 jobs, 10 probes and 100 transactions"
    );
    store::ensure_database(&config.database).await?;
    let db = store::pool(&config.database)?;
    store::migrate(&db).await?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS bench_business (id BIGINT PRIMARY KEY, n BIGINT NOT NULL);
         INSERT INTO bench_business SELECT g, 0 FROM generate_series(0, 999) g ON CONFLICT DO NOTHING;
         CREATE TABLE IF NOT EXISTS bench_plain_rows (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
             kind TEXT NOT NULL, body JSONB NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    .execute(&db)
    .await
    .context("creating the bench tables")?;
    clear(&db).await?;
    let n = opts.jobs;
    eprintln!("job benchmark: {n} jobs per drain, {} probes", opts.probes);

    // 1–2. Each layer: enqueue→start while idle, then the drain.
    // The "before" and the courier layer also run with apalis's duplicate indexes back (which
    // migration …008 drops), for that change's paired effect.
    let mut layers = Vec::new();
    for (layer, duplicates) in [
        (Layer::ApalisPostgres, true),
        (Layer::Courier, true),
        (Layer::ApalisPostgres, false),
        (Layer::Store { batch: 10 }, false),
        (Layer::Courier, false),
    ] {
        let label = if duplicates {
            format!("{}, with apalis's duplicate indexes", layer.label())
        } else {
            layer.label()
        };
        eprintln!("draining with {label}");
        duplicate_indexes(&db, duplicates).await?;
        let figures = drain(&db, &config.database, layer, n, opts.probes).await;
        duplicate_indexes(&db, false).await?;
        layers.push((layer, duplicates, label, figures?));
    }

    // 3. The plain SQL loops on the same rows.
    insert_bulk(&db, n).await?;
    let sql_1 = plain_sql_loop(&db, n, 4, 1).await?;
    clear(&db).await?;
    insert_bulk(&db, n).await?;
    let sql_100 = plain_sql_loop(&db, n, 4, 100).await?;
    clear(&db).await?;

    // 4. The transactional enqueue path.
    let tx_n = opts.transactions;
    let with_job = transactions(&db, tx_n, 4, |conn, _| {
        Box::pin(async move {
            jobs::enqueue(
                conn,
                &BenchNoop { enqueued_us: 0 },
                Duration::from_secs(3600),
            )
            .await?;
            Ok(())
        })
    })
    .await?;
    let body = serde_json::json!({ "enqueued_us": 0 });
    let with_row = transactions(&db, tx_n, 4, |conn, _| {
        let body = body.clone();
        Box::pin(async move {
            sqlx::query("INSERT INTO bench_plain_rows (kind, body) VALUES ($1, $2)")
                .bind(BenchNoop::QUEUE)
                .bind(body)
                .execute(conn)
                .await?;
            Ok(())
        })
    })
    .await?;
    clear(&db).await?;
    sqlx::query("TRUNCATE bench_plain_rows")
        .execute(&db)
        .await?;

    // 5. The peer, on the same database.
    let peer = match opts.peer {
        Some(Peer::Graphile) => {
            let url = config.database.url.expose_secret().to_owned();
            Some(tokio::task::spawn_blocking(move || graphile(&url, n)).await??)
        }
        None => None,
    };

    println!();
    println!(
        "job benchmark: {n} no-op jobs per drain, {} single enqueues timed per phase, {tx_n} business transactions",
        opts.probes
    );
    println!(
        "{:<60} {:>8} {:>8} {:>8} {:>9}",
        "operation", "jobs/s", "p50 ms", "p99 ms", "vs SQL 1"
    );
    for (_, _, label, figures) in &layers {
        println!(
            "{}",
            line(&format!("drain: {label}"), Some(figures.rate), None, sql_1)
        );
    }
    println!(
        "{}",
        line(
            "plain SQL loop, SKIP LOCKED, 1 per claim, 4 loops",
            Some(sql_1),
            None,
            sql_1
        )
    );
    println!(
        "{}",
        line(
            "plain SQL loop, SKIP LOCKED, 100 per claim, 4 loops",
            Some(sql_100),
            None,
            sql_1
        )
    );
    if let Some((defaults, tuned)) = peer {
        let label = |setup: &str| format!("graphile-worker {GRAPHILE_VERSION}, {setup}");
        println!(
            "{}",
            line(
                &label("defaults (concurrency 10)"),
                Some(defaults),
                None,
                sql_1
            )
        );
        println!(
            "{}",
            line(
                &label("local queue 100, batched completion"),
                Some(tuned),
                None,
                sql_1
            )
        );
    }
    for (_, _, label, figures) in &layers {
        println!(
            "{}",
            line(
                &format!("enqueue→start, idle: {label}"),
                None,
                Some(figures.idle),
                sql_1
            )
        );
        println!(
            "{}",
            line(
                &format!("enqueue alone (its commit), idle: {label}"),
                None,
                Some(figures.idle_enqueue),
                sql_1
            )
        );
        println!(
            "{}",
            line(
                &format!("enqueue→start, during the drain: {label}"),
                None,
                Some(figures.under_drain),
                sql_1
            )
        );
    }
    println!(
        "transactional enqueue: {with_job:.0} tx/s with a job row, {with_row:.0} tx/s with a plain row ({:.2}x)",
        with_job / with_row
    );
    for (_, _, label, figures) in &layers {
        println!("during the drain ({label}): {}", figures.cpu);
    }
    let courier = layers
        .iter()
        .find(|(layer, duplicates, _, _)| *layer == Layer::Courier && !duplicates)
        .map(|(_, _, _, figures)| figures.rate)
        .context("the courier layer was not measured")?;
    let mut ratios = format!("courier drain ÷ SQL loop of 100: {:.2}x", courier / sql_100);
    for (layer, duplicates, label, figures) in &layers {
        if *layer != Layer::Courier || *duplicates {
            ratios.push_str(&format!("; ÷ {label}: {:.2}x", courier / figures.rate));
        }
    }
    if let Some((defaults, tuned)) = peer {
        ratios.push_str(&format!(
            "; ÷ graphile defaults: {:.2}x; ÷ graphile tuned: {:.2}x",
            courier / defaults,
            courier / tuned
        ));
    }
    println!("{ratios}");
    Ok(())
}
