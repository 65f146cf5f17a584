//! The job handlers: apalis 1.0 workers on Postgres storage (`apalis.jobs`), one file per job
//! kind, and the [`Monitor`] that runs them and the [`crate::cron`] tasks. A handler decodes
//! its message ([`crate::jobs::messages`]) and calls the order's workflow or the service that
//! does the work; what enqueues each kind is the workflow's business.
//!
//! # apalis 1.0's sharp edges, and what we do about them
//! (Queue names and task ids: see [`crate::jobs`].)
//! - **Claims and acknowledgements**: apalis-postgres's worker path spends three round trips
//!   per claim of 10 and two more updates per job; workers run on our own backend
//!   ([`store`]) over the same tables, one statement per claim of up to
//!   [`store::CLAIM_BATCH`] and one per flush of outcomes.
//! - **Polling**: plain storage polls every 30 s. Workers are woken by apalis's insert NOTIFY
//!   (listened to inside [`store::JobStore`], which remembers one that arrives mid-claim:
//!   apalis's own stream strategy drops it) **and** by `.poll_with_interval(1 s)`, because
//!   NOTIFY does not fire for delayed tasks or retries.
//! - **Retries**: `RetryAfterError`/`DeferredError` retry in a hot loop ignoring max_attempts,
//!   and database-level retries (a plain `Err`) have no backoff. Handlers therefore return a
//!   plain error only for transient failures, bounded by an explicit `Job::MAX_ATTEMPTS`; a
//!   job that needs backoff enqueues a new delayed task and returns `Ok`; permanent failures
//!   return `AbortError` (the row becomes `Killed`). [`JobError`] says which.
//! - **Timeouts**: a tower `.timeout()` or a caught panic leaves the row `Running` and it can
//!   re-run past max_attempts, so each handler bounds itself with [`bounded`]
//!   (`tokio::time::timeout` → a transient error).
//! - **Worker crashes**: any backend error ends a worker, so workers run under a [`Monitor`]
//!   that restarts them, with a shutdown timeout. Worker names are unique per process (queue,
//!   host, pid and an instance number): apalis rescues a crashed worker's `Running` jobs only
//!   when no live worker holds its name. A dead worker's jobs go back to `Pending` once it has
//!   missed [`MISSED_HEARTBEATS`] heartbeats of [`HEARTBEAT_INTERVAL`] (30 s).
//! - **At-least-once delivery**: every handler locks the order row (or relies on the
//!   transition executor's optimistic lock) and does nothing if the order has moved on.

pub mod authorize_payment;
pub mod capture_payment;
pub mod confirm_timeout;
pub mod match_driver;
pub mod notify;
pub mod offer_timeout;
pub mod refresh_eta;
pub mod refund_payment;
pub mod release_payment;
pub mod request_review;
pub mod store;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use apalis::prelude::{
    AbortError, BackendExt, BoxDynError, IntervalStrategy, Monitor, PollWith, WorkerBuilder,
    WorkerBuilderExt,
};
use apalis_postgres::Pubsub;
use sqlx::PgPool;

use crate::cron::{self, CronContext, CronSettings};
use crate::dispatch::Dispatcher;
use crate::jobs::Job;
use crate::jobs::messages::{
    AuthorizePayment, CapturePayment, ConfirmTimeout, MatchDriver, Notify, OfferTimeout,
    RefreshEta, RefundPayment, ReleasePayment, RequestReview,
};
use crate::notify::Notifier;
use crate::payments::Payments;
use crate::shutdown::CancellationToken;

/// How often a worker tells Postgres it is alive.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);
/// Missed heartbeats after which a worker counts as dead and its running jobs are re-queued.
pub const MISSED_HEARTBEATS: usize = 3;
/// How long a worker may go without a heartbeat before it counts as dead (apalis's own rule).
pub const WORKER_DEAD_AFTER: Duration =
    Duration::from_secs(HEARTBEAT_INTERVAL.as_secs() * MISSED_HEARTBEATS as u64);
/// The fallback poll interval (NOTIFY covers immediate inserts).
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Most jobs one worker runs at once: two claims' worth, so the next batch is claimed while
/// the last of the previous one finishes, but slow handlers (webhooks, routing) cannot pile up
/// without bound.
pub const WORKER_CONCURRENCY: usize = 2 * store::CLAIM_BATCH;
/// Longest one job run may take before it counts as a transient failure.
pub const JOB_TIMEOUT: Duration = Duration::from_secs(60);

/// What went wrong in a job, and so what happens next.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Transient (database unavailable, timeout): apalis retries, up to the kind's max attempts.
    #[error("transient failure: {0:#}")]
    Retry(anyhow::Error),
    /// Permanent: retrying cannot help; the job row becomes `Killed`.
    #[error("permanent failure: {0:#}")]
    Abort(anyhow::Error),
}

impl From<sqlx::Error> for JobError {
    fn from(error: sqlx::Error) -> Self {
        JobError::Retry(error.into())
    }
}

impl JobError {
    /// The error apalis acts on.
    fn into_apalis(self) -> BoxDynError {
        match self {
            JobError::Retry(e) => e.into(),
            JobError::Abort(e) => Box::new(AbortError::new(Box::<
                dyn std::error::Error + Send + Sync,
            >::from(format!("{e:#}")))),
        }
    }
}

/// Runs a handler body bounded by [`JOB_TIMEOUT`], logging failures, and converts the outcome
/// into what apalis expects.
pub async fn bounded<F>(queue: &'static str, body: F) -> Result<(), BoxDynError>
where
    F: Future<Output = Result<(), JobError>>,
{
    let outcome = match tokio::time::timeout(JOB_TIMEOUT, body).await {
        Ok(outcome) => outcome,
        Err(_) => Err(JobError::Retry(anyhow::anyhow!(
            "timed out after {JOB_TIMEOUT:?}"
        ))),
    };
    let label = match &outcome {
        Ok(()) => "ok",
        Err(JobError::Retry(_)) => "retry",
        Err(JobError::Abort(_)) => "abort",
    };
    metrics::counter!("jobs_processed_total", "queue" => queue, "outcome" => label).increment(1);
    outcome.map_err(|error| {
        tracing::warn!(queue, error = %error, "job failed");
        error.into_apalis()
    })
}

/// What every job handler can reach.
#[derive(Clone, Debug)]
pub struct JobContext {
    pub db: PgPool,
    /// Driver matching (location service, routing, settings, circuit breaker).
    pub dispatch: Dispatcher,
    /// Payment capture.
    pub payments: Payments,
    /// Webhook notifications.
    pub notifier: Notifier,
    /// Cron schedules and settings.
    pub cron: Arc<CronSettings>,
    /// How long a restaurant has to confirm an order once its payment is authorised.
    pub confirm_within: Duration,
}

/// The backend every worker of kind `K` polls.
pub type WorkerBackend<K> = PollWith<store::JobStore<K>, IntervalStrategy>;

/// The backend a worker of kind `K` polls, as `courier worker` sets it up: our
/// [`store::JobStore`] claiming up to `claim` jobs at a time ([`store::CLAIM_BATCH`] in
/// production; the job benchmark also measures other sizes), woken by apalis's insert NOTIFY
/// and by a [`POLL_INTERVAL`] poll (NOTIFY misses delayed tasks and retries). `queue` is the
/// [`queue_pool`]. The job benchmark builds its worker through here too.
pub fn worker_backend<K: Job>(queue: &PgPool, claim: usize) -> WorkerBackend<K> {
    let config = store::StoreConfig {
        queue: K::QUEUE,
        batch: claim,
        heartbeat: HEARTBEAT_INTERVAL,
        dead_after: WORKER_DEAD_AFTER,
    };
    let inserts = Pubsub::new(queue.clone(), K::QUEUE.to_owned());
    store::JobStore::new(queue, config, inserts).poll_with_interval(POLL_INTERVAL)
}

/// A worker name unique in the fleet: queue, host, pid and an instance number (tests run
/// several monitors in one process).
pub fn worker_name(queue: &str) -> String {
    static INSTANCE: AtomicUsize = AtomicUsize::new(0);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    let instance = INSTANCE.fetch_add(1, Ordering::Relaxed);
    format!("{queue}@{host}:{}:{instance}", std::process::id())
}

/// The pool of the job layer's own statements for `kinds` workers, on the same database as
/// `db`: per kind, one connection its insert listener holds for good, one for its claims and
/// heartbeats (a worker issues those one at a time) and one for its acknowledgement writer,
/// and one to spare. Handlers use `db`, so a worker's claims, acknowledgements and heartbeats
/// never wait behind its own busy handlers for a connection (a heartbeat that waits too long
/// gets the worker's jobs rescued and run twice).
///
/// The pool is opened whole, in the background, and kept whole: sqlx opens a new connection
/// rather than wait for one that is on its way back, so a pool that grows on demand made a
/// claim wait for a connect now and then (90 ms on the bench machine: the idle tail of
/// enqueue→start in `docs/benchmarks.md`).
pub fn queue_pool(db: &PgPool, kinds: usize) -> PgPool {
    let size = u32::try_from(3 * kinds + 1).unwrap_or(u32::MAX);
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(size)
        .min_connections(size)
        .connect_lazy_with((*db.connect_options()).clone())
}

/// Builds the monitor with one worker per job kind, restarting workers that fail.
pub fn monitor(ctx: JobContext, drain: Duration) -> Monitor {
    // One worker per `(kind, handler)`, all on one queue pool sized from the same list.
    macro_rules! workers {
        ($monitor:expr, $(($kind:ty, $handler:path)),+ $(,)?) => {{
            let queue = queue_pool(&ctx.db, [$(<$kind as Job>::QUEUE),+].len());
            let monitor = $monitor;
            $(
                let monitor = {
                    let (ctx, queue) = (ctx.clone(), queue.clone());
                    monitor.register(move |_restarts| {
                        WorkerBuilder::new(worker_name(<$kind as Job>::QUEUE))
                            .backend(worker_backend::<$kind>(&queue, store::CLAIM_BATCH))
                            .concurrency(WORKER_CONCURRENCY)
                            .data(ctx.clone())
                            .build($handler)
                    })
                };
            )+
            monitor
        }};
    }
    let monitor = Monitor::new()
        .shutdown_timeout(drain)
        .should_restart(|worker, error| {
            tracing::error!(worker = worker.name(), error = %error, "job worker failed; restarting");
            true
        });
    let monitor = workers!(
        monitor,
        (ConfirmTimeout, confirm_timeout::run),
        (MatchDriver, match_driver::run),
        (OfferTimeout, offer_timeout::run),
        (RefreshEta, refresh_eta::run),
        (Notify, notify::run),
        (CapturePayment, capture_payment::run),
        (RequestReview, request_review::run),
        (AuthorizePayment, authorize_payment::run),
        (ReleasePayment, release_payment::run),
        (RefundPayment, refund_payment::run),
    );
    let process = worker_name("cron");
    cron::register(
        monitor,
        CronContext {
            db: ctx.db.clone(),
            location: ctx.dispatch.location.clone(),
            settings: ctx.cron.clone(),
            process,
        },
    )
}

/// Runs the job workers and cron until `token` is cancelled, then lets running jobs finish
/// within the monitor's drain time.
pub async fn run(ctx: JobContext, token: CancellationToken, drain: Duration) -> anyhow::Result<()> {
    // The dispatch cycles of the markets that use them run beside the job workers.
    let cycles = tokio::spawn(crate::workflows::cycle::run(
        ctx.dispatch.clone(),
        token.clone(),
    ));
    let monitor = monitor(ctx, drain);
    tracing::info!("job workers started");
    let signal = token.clone();
    monitor
        .run_with_signal(async move {
            signal.cancelled().await;
            Ok(())
        })
        .await?;
    let _ = cycles.await;
    tracing::info!("job workers stopped");
    Ok(())
}
