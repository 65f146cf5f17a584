//! Our Postgres backend for apalis workers: the same `apalis.jobs` and `apalis.workers` tables,
//! statuses and rescue rules as apalis-postgres (whose migrations, enqueue path and listener we
//! keep), with the hot path — claiming jobs and recording their outcome — written for
//! throughput.
//!
//! # Why not `apalis_postgres::PostgresStorage`
//! Its worker path spends round trips, not CPU: every claim is `BEGIN`, `apalis.get_jobs`,
//! `COMMIT`; every job is then updated twice more after the claim (`Queued` → `Running` when it
//! starts, → `Done` when it ends), each flush of those events again inside `BEGIN … COMMIT`,
//! and every update of a job row rewrites all of its indexes. `docs/benchmarks.md` ("Job
//! layer") has the figures. Here:
//! - **claim**: one autocommit statement takes up to [`CLAIM_BATCH`] due jobs, oldest first
//!   (`FOR UPDATE SKIP LOCKED`, the same predicate and partial index as apalis), straight to
//!   `Running` under this worker's name. Claimed jobs start at once (the worker's concurrency
//!   bounds how many are claimed), so the separate `Running` update carries no information.
//! - **acknowledge**: the outcomes gathered since the last flush are written by one
//!   autocommit `UPDATE … FROM unnest(…)`, only where the row is still locked by this worker
//!   (a job rescued from a worker presumed dead is not overwritten by that worker's late ack).
//!   apalis's state machine waits for each flush before it claims or hands out the next job,
//!   so the worker would have one statement in flight at a time; the flushes are handed to a
//!   writer task of the worker's own ([`AckWriter`]) instead, and the worker claims and runs
//!   jobs while they are written. A flush that fails ends the worker at its next step (as a
//!   failed flush always did), so its heartbeat stops and its unacknowledged jobs are
//!   rescued; a worker that closes first waits for every flush handed over.
//! - **wake-up**: the insert NOTIFY is listened to here, and one that arrives while a claim is
//!   in flight is not lost (see [`JobStore`]).
//! - **rescue**: apalis's statement, served by our partial index of the jobs in flight
//!   (migration `…009`) instead of a scan of every job the queue's dead workers ever ran.
//!
//! # What stays as it was
//! - The driving state machine is apalis's own [`Persisted`]: register, heartbeat, fetch,
//!   event flushes and the graceful-shutdown release of claimed jobs that never started.
//! - Rescue: a worker that misses its heartbeats for [`WORKER_DEAD_AFTER`] has its `Running`
//!   (and legacy `Queued`) jobs put back to `Pending` by any live worker of the same queue
//!   (apalis's own `reenqueue_orphaned`), so a killed worker's batch runs again elsewhere.
//! - Statuses, `attempts`, `max_attempts`, `last_result` and the retry rule (a `Failed` job
//!   with attempts left is claimable again) are apalis's, so `courier admin jobs` and every
//!   job handler see the same rows as before.
//!
//! [`WORKER_DEAD_AFTER`]: super::WORKER_DEAD_AFTER

use std::marker::PhantomData;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use apalis::prelude::{Backend, Status, Task, TaskBuilder, TaskId, WorkerContext};
use apalis_codec::json::JsonCodec;
use apalis_core::backend::finalize::Durable;
use apalis_core::backend::persistence::{
    Persisted, Persistence, State, TaskEvent, TaskPersistLayer,
};
use apalis_core::backend::{BackendConfig, WireFormatBackend};
use apalis_postgres::{Error, Pubsub};
use futures::future::BoxFuture;
use futures::{FutureExt, Stream};
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};

/// Most jobs one claim takes. Measured in `courier-bench jobs`: 100 per claim reaches the
/// plain SQL loop's range, while claims of 10 spend the worker's time on round trips.
pub const CLAIM_BATCH: usize = 100;

/// Where a worker's jobs come from and how it stays alive.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// The queue (`apalis.jobs.job_type`).
    pub queue: &'static str,
    /// Most jobs per claim.
    pub batch: usize,
    /// How often the worker records that it is alive.
    pub heartbeat: Duration,
    /// How long another worker may be silent before its jobs are rescued.
    pub dead_after: Duration,
}

/// Flushes handed to the writer and not yet taken: beyond this, handing one over waits
/// (so a writer that falls behind slows its worker down instead of queueing without bound).
const ACKS_IN_FLIGHT: usize = 4;

/// Most outcomes one acknowledgement statement writes when flushes queued up behind it are
/// written together.
const ACK_ROWS: usize = 4 * CLAIM_BATCH;

/// The statements behind one worker (see the module docs).
#[derive(Clone, Debug)]
pub struct JobTable {
    pool: PgPool,
    config: StoreConfig,
    acks: AckWriter,
}

/// One claimed row.
#[derive(sqlx::FromRow)]
struct Claimed {
    id: String,
    job: Vec<u8>,
    attempts: i32,
    max_attempts: i32,
    priority: i32,
    run_at: i64,
}

impl Claimed {
    fn into_task(self, queue: &str) -> Result<Task<Vec<u8>>, Error> {
        let task_id = TaskId::from_str(&self.id).map_err(Error::TaskIdError)?;
        Ok(TaskBuilder::new(self.job)
            .task_id(task_id)
            .queue(queue.into())
            .status(Status::Running)
            .attempt(usize::try_from(self.attempts).unwrap_or_default())
            .max_attempts(usize::try_from(self.max_attempts).unwrap_or_default())
            .priority(usize::try_from(self.priority).unwrap_or_default())
            .run_at_timestamp(u64::try_from(self.run_at).unwrap_or_default())
            .build())
    }
}

/// Claims up to `$3` due jobs of queue `$2` for worker `$1`: apalis's predicate and order
/// (so its partial fetch index), straight to `Running`.
const CLAIM: &str = "
WITH next AS (
    SELECT id FROM apalis.jobs
    WHERE (status = 'Pending' OR (status = 'Failed' AND attempts < max_attempts))
      AND run_at < now()
      AND job_type = $2
    ORDER BY priority DESC, run_at ASC
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
UPDATE apalis.jobs AS j
SET status = 'Running', lock_by = $1, lock_at = now()
FROM next
WHERE j.id = next.id
RETURNING j.id, j.job, j.attempts, j.max_attempts, j.priority,
          extract(epoch FROM j.run_at)::bigint AS run_at";

/// Records outcomes of jobs still locked by worker `$5`.
const ACKNOWLEDGE: &str = "
UPDATE apalis.jobs AS j
SET status = r.status, attempts = r.attempt, last_result = r.result, done_at = now()
FROM unnest($1::text[], $2::text[], $3::int4[], $4::jsonb[]) AS r(id, status, attempt, result)
WHERE j.id = r.id AND j.lock_by = $5";

/// Registers (or re-registers) worker `$1` of queue `$2`, as apalis's own registry row.
const REGISTER: &str = "
INSERT INTO apalis.workers (id, worker_type, storage_name, layers, last_seen)
VALUES ($1, $2, 'courier', $3, now())
ON CONFLICT (id) DO UPDATE
SET worker_type = EXCLUDED.worker_type, storage_name = EXCLUDED.storage_name,
    layers = EXCLUDED.layers, last_seen = now()";

/// One outcome: job id, status, attempt and result.
type Row = (String, String, i32, Value);

/// The outcome columns of a flush, one entry per job (sorted by id, so two flushes that
/// touch the same rows lock them in the same order).
#[derive(Debug, Default, PartialEq)]
struct Outcomes {
    ids: Vec<String>,
    statuses: Vec<String>,
    attempts: Vec<i32>,
    results: Vec<Value>,
}

impl Outcomes {
    fn len(&self) -> usize {
        self.ids.len()
    }

    /// Adds `other`'s rows, keeping the whole sorted by id.
    fn merge(self, other: Outcomes) -> Outcomes {
        let mut rows = self.into_rows();
        rows.extend(other.into_rows());
        Self::from_rows(rows)
    }

    fn into_rows(self) -> Vec<Row> {
        let mut rows = Vec::with_capacity(self.ids.len());
        let columns = self.ids.into_iter().zip(self.statuses).zip(self.attempts);
        for (((id, status), attempt), result) in columns.zip(self.results) {
            rows.push((id, status, attempt, result));
        }
        rows
    }

    fn from_rows(mut rows: Vec<Row>) -> Outcomes {
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        let mut outcomes = Outcomes::default();
        for (id, status, attempt, result) in rows {
            outcomes.ids.push(id);
            outcomes.statuses.push(status);
            outcomes.attempts.push(attempt);
            outcomes.results.push(result);
        }
        outcomes
    }

    /// Collects the completions among `events` (the only events our layer emits).
    fn from_events(events: Vec<TaskEvent<Value>>) -> Self {
        let rows: Vec<Row> = events
            .into_iter()
            .filter_map(|event| match event {
                TaskEvent::Complete(done) => {
                    let result = match done.result {
                        Ok(value) => serde_json::json!({ "Ok": value }),
                        Err(error) => serde_json::json!({ "Err": error }),
                    };
                    Some((
                        done.task_id.to_string(),
                        done.status.to_string(),
                        i32::try_from(done.attempt).unwrap_or(i32::MAX),
                        result,
                    ))
                }
                _ => None,
            })
            .collect();
        Self::from_rows(rows)
    }
}

impl Persistence for JobTable {
    type Compact = Vec<u8>;
    type Response = Value;
    type Error = Error;

    async fn register(&mut self, worker: &WorkerContext) -> Result<(), Error> {
        let rescued = self.rescue().await?;
        sqlx::query(REGISTER)
            .bind(worker.name())
            .bind(self.config.queue)
            .bind(worker.get_service())
            .execute(&self.pool)
            .await?;
        log_rescued(self.config.queue, rescued);
        Ok(())
    }

    async fn heartbeat(&mut self, worker: &WorkerContext) -> Result<(), Error> {
        apalis_postgres::queries::keep_alive(
            &mut *self.pool.acquire().await?,
            self.config.queue,
            worker,
        )
        .await?;
        let rescued = self.rescue().await?;
        log_rescued(self.config.queue, rescued);
        Ok(())
    }

    async fn fetch_next(&mut self, worker: &WorkerContext) -> Result<Vec<Task<Vec<u8>>>, Error> {
        self.acks.check()?;
        let rows: Vec<Claimed> = sqlx::query_as(CLAIM)
            .bind(worker.name())
            .bind(self.config.queue)
            .bind(i32::try_from(self.config.batch).unwrap_or(i32::MAX))
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|row| row.into_task(self.config.queue))
            .collect()
    }

    async fn handle_events(
        &mut self,
        events: Vec<TaskEvent<Value>>,
        worker: &WorkerContext,
    ) -> Result<(), Error> {
        let outcomes = Outcomes::from_events(events);
        if outcomes.ids.is_empty() {
            return self.acks.check();
        }
        self.acks.hand_over(worker.name(), outcomes).await
    }

    async fn reenqueue_abandoned(
        &mut self,
        tasks: Vec<Task<Vec<u8>>>,
        worker: &WorkerContext,
    ) -> Result<u64, Error> {
        let ids: Vec<String> = tasks
            .iter()
            .filter_map(|task| task.task_id().map(ToString::to_string))
            .collect();
        apalis_postgres::queries::reenqueue_abandoned(
            &mut *self.pool.acquire().await?,
            self.config.queue,
            worker.name(),
            &ids,
        )
        .await
    }

    async fn push_tasks(&mut self, tasks: Vec<Task<Vec<u8>>>) -> Result<(), Error> {
        let mut conn = self.pool.acquire().await?;
        apalis_postgres::queries::push_tasks(&mut *conn, self.config.queue, tasks).await
    }
}

impl JobTable {
    /// Puts the jobs of this queue's dead workers back to `Pending` (apalis's rule and
    /// statement); returns how many.
    async fn rescue(&self) -> Result<u64, Error> {
        apalis_postgres::queries::reenqueue_orphaned(
            &mut *self.pool.acquire().await?,
            self.config.queue,
            self.config.dead_after.as_secs(),
        )
        .await
    }
}

/// The writer task of one worker's acknowledgements, and the way to it (see the module docs).
/// The task ends when the last handle is dropped.
#[derive(Clone, Debug)]
struct AckWriter {
    flushes: mpsc::Sender<AckMessage>,
    /// Why the writer stopped, until a caller takes it to end the worker.
    failure: Arc<Mutex<Option<Error>>>,
}

#[derive(Debug)]
enum AckMessage {
    /// Outcomes of jobs locked by `worker`.
    Write { worker: String, outcomes: Outcomes },
    /// Answered once everything handed over before it is written.
    Barrier(oneshot::Sender<()>),
}

impl AckWriter {
    /// Starts the writer on `pool`. Needs a Tokio runtime.
    fn spawn(pool: PgPool, queue: &'static str) -> Self {
        let (flushes, received) = mpsc::channel(ACKS_IN_FLIGHT);
        let failure = Arc::new(Mutex::new(None));
        tokio::spawn(write_acks(pool, queue, received, failure.clone()));
        Self { flushes, failure }
    }

    /// Queues `outcomes` for writing; fails if the writer has stopped.
    async fn hand_over(&self, worker: &str, outcomes: Outcomes) -> Result<(), Error> {
        let message = AckMessage::Write {
            worker: worker.to_owned(),
            outcomes,
        };
        match self.flushes.send(message).await {
            Ok(()) => self.check(),
            Err(_) => Err(self.stopped()),
        }
    }

    /// Waits until everything handed over so far is written.
    async fn drain(self) -> Result<(), Error> {
        let (done, written) = oneshot::channel();
        if self.flushes.send(AckMessage::Barrier(done)).await.is_err() {
            return Err(self.stopped());
        }
        written.await.map_err(|_| self.stopped())
    }

    /// Fails if the writer has stopped.
    fn check(&self) -> Result<(), Error> {
        if self.flushes.is_closed() {
            Err(self.stopped())
        } else {
            Ok(())
        }
    }

    /// The writer's failure the first time it is asked for, then a plain account of it.
    fn stopped(&self) -> Error {
        let failure = self.failure.lock().map(|mut slot| slot.take());
        failure.ok().flatten().unwrap_or_else(|| {
            Error::Database(sqlx::Error::Protocol(
                "the acknowledgement writer of this worker has stopped".into(),
            ))
        })
    }
}

/// The writer task: writes each flush, together with those queued behind it (up to
/// [`ACK_ROWS`] outcomes of one worker), and stops at the first failure, leaving it in
/// `failure` for the worker to end on.
async fn write_acks(
    pool: PgPool,
    queue: &'static str,
    mut received: mpsc::Receiver<AckMessage>,
    failure: Arc<Mutex<Option<Error>>>,
) {
    // A flush taken from the channel that did not fit the last statement.
    let mut held = None;
    loop {
        let first = match held.take() {
            Some(message) => message,
            None => match received.recv().await {
                Some(message) => message,
                None => return,
            },
        };
        let mut barriers = Vec::new();
        let mut batch: Option<(String, Outcomes)> = None;
        let mut message = Some(first);
        while let Some(current) = message {
            match current {
                AckMessage::Barrier(done) => barriers.push(done),
                AckMessage::Write { worker, outcomes } => match &mut batch {
                    Some((held_by, rows)) if *held_by == worker && rows.len() < ACK_ROWS => {
                        *rows = std::mem::take(rows).merge(outcomes);
                    }
                    Some(_) => {
                        held = Some(AckMessage::Write { worker, outcomes });
                        break;
                    }
                    None => batch = Some((worker, outcomes)),
                },
            }
            message = received.try_recv().ok();
        }
        if let Some((worker, outcomes)) = batch
            && let Err(error) = acknowledge(&pool, &worker, &outcomes).await
        {
            tracing::error!(queue, %error, "could not record job outcomes; the worker stops");
            if let Ok(mut slot) = failure.lock() {
                *slot = Some(error);
            }
            return;
        }
        for done in barriers {
            let _ = done.send(());
        }
    }
}

/// Writes `outcomes` of jobs still locked by `worker`.
async fn acknowledge(pool: &PgPool, worker: &str, outcomes: &Outcomes) -> Result<(), Error> {
    sqlx::query(ACKNOWLEDGE)
        .bind(&outcomes.ids)
        .bind(&outcomes.statuses)
        .bind(&outcomes.attempts)
        .bind(&outcomes.results)
        .bind(worker)
        .execute(pool)
        .await?;
    Ok(())
}

fn log_rescued(queue: &str, rescued: u64) {
    if rescued > 0 {
        tracing::warn!(
            queue,
            rescued,
            "re-queued the jobs of workers that stopped heartbeating"
        );
    }
}

/// A worker's backend: [`JobTable`] driven by apalis's [`Persisted`] state machine, woken by
/// apalis's insert NOTIFY, decoding job arguments of type `Args` as JSON.
///
/// # Why the listener lives here and not in a `PollWith<_, StreamStrategy<_>>`
/// apalis's stream strategy takes a notification and drops it, whatever the backend is doing.
/// If a claim is already in flight, its snapshot may predate the insert that notified: the
/// claim comes back empty, the worker parks, and the job waits for the next wake (another
/// insert, or the fallback poll). Here a notification that arrives while a claim is in flight
/// is remembered, and an empty claim is followed at once by another.
pub struct JobStore<Args> {
    persistence: Persisted<JobTable>,
    config: StoreConfig,
    codec: JsonCodec,
    inserts: Pubsub,
    /// An insert was announced after the claim in flight (or the last one) began.
    unclaimed_insert: bool,
    /// On close, the wait for the acknowledgement writer to finish.
    closing: Option<BoxFuture<'static, Result<(), Error>>>,
    _args: PhantomData<fn() -> Args>,
}

impl<Args> std::fmt::Debug for JobStore<Args> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobStore")
            .field("config", &self.config)
            .field("state", self.persistence.state())
            .field("unclaimed_insert", &self.unclaimed_insert)
            .finish_non_exhaustive()
    }
}

impl<Args> JobStore<Args> {
    /// A backend for one worker of `config.queue`, woken by `inserts` (apalis's insert
    /// listener for that queue). Starts the worker's acknowledgement writer, so it needs a
    /// Tokio runtime.
    pub fn new(pool: &PgPool, config: StoreConfig, inserts: Pubsub) -> Self {
        Self {
            persistence: Persisted::new(JobTable {
                pool: pool.clone(),
                config: config.clone(),
                acks: AckWriter::spawn(pool.clone(), config.queue),
            }),
            config,
            codec: JsonCodec::default(),
            inserts,
            unclaimed_insert: false,
            closing: None,
            _args: PhantomData,
        }
    }

    /// Takes every insert notification that has arrived, registering for the next; says
    /// whether there was any. A listener that ended (it could not connect) is replaced by a
    /// fresh one, which tries again on the next wake; the fallback poll covers the gap.
    fn take_notifications(&mut self, cx: &mut Context<'_>) -> bool {
        let mut any = false;
        loop {
            match Pin::new(&mut self.inserts).poll_next(cx) {
                Poll::Ready(Some(Ok(_))) => any = true,
                Poll::Ready(Some(Err(error))) => {
                    tracing::warn!(queue = self.config.queue, %error, "insert listener failed");
                }
                Poll::Ready(None) => {
                    tracing::warn!(
                        queue = self.config.queue,
                        "insert listener ended; reconnecting on the next poll"
                    );
                    self.inserts = self.inserts.clone();
                    return any;
                }
                Poll::Pending => return any,
            }
        }
    }
}

impl<Args> Backend for JobStore<Args> {
    type Task = Task<Vec<u8>>;
    type Error = Error;

    fn poll_ready(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Result<(), Error>> {
        self.persistence
            .poll_ready(cx, worker, self.config.heartbeat)
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Option<Result<Task<Vec<u8>>, Error>>> {
        loop {
            let notified = self.take_notifications(cx);
            if matches!(self.persistence.state(), State::Ready) {
                // A claim starts now: it sees every insert announced so far.
                self.unclaimed_insert = false;
            } else if notified {
                self.unclaimed_insert = true;
            }
            match self.persistence.poll_next(cx, worker) {
                Poll::Pending
                    if self.unclaimed_insert
                        && matches!(self.persistence.state(), State::Ready) =>
                {
                    // The claim came back empty but an insert was announced meanwhile.
                    continue;
                }
                other => return other,
            }
        }
    }

    /// apalis's close (which hands the last outcomes to the writer), then the wait for the
    /// writer to write everything it was handed.
    fn poll_close(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Result<(), Error>> {
        if self.closing.is_none() {
            match self.persistence.poll_close(cx, worker) {
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
            self.closing = Some(self.persistence.acks.clone().drain().boxed());
        }
        match self.closing.as_mut() {
            Some(closing) => closing.poll_unpin(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl<Args> BackendConfig for JobStore<Args> {
    type Args = Args;
    type Id = TaskId;
    type Kind = Durable;
    type Config = StoreConfig;
    type Layer = TaskPersistLayer<JsonCodec<Value>, Value>;

    fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Completions only: claims are already `Running`, so no lock events.
    fn middleware(&mut self, _: &mut WorkerContext) -> Self::Layer {
        self.persistence
            .layer(JsonCodec::<Value>::default(), self.config.batch)
            .persist_results(true)
            .lock_tasks(false)
    }
}

impl<Args> WireFormatBackend for JobStore<Args> {
    type Codec = JsonCodec;
    type Compact = Vec<u8>;

    fn codec(&self) -> &JsonCodec {
        &self.codec
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apalis::prelude::TaskResult;

    fn done(
        id: &str,
        attempt: usize,
        status: Status,
        result: Result<Value, String>,
    ) -> TaskEvent<Value> {
        TaskEvent::Complete(TaskResult {
            task_id: TaskId::from_str(id).expect("id"),
            attempt,
            status,
            result,
        })
    }

    #[test]
    fn outcomes_keep_completions_sorted_by_id_with_apalis_result_shape() {
        let a = "01KBAAAAAAAAAAAAAAAAAAAAAA";
        let b = "01KBBBBBBBBBBBBBBBBBBBBBBB";
        let outcomes = Outcomes::from_events(vec![
            done(b, 2, Status::Failed, Err("boom".into())),
            TaskEvent::Lock {
                task_id: TaskId::from_str(a).expect("id"),
            },
            done(a, 1, Status::Done, Ok(Value::Null)),
        ]);
        assert_eq!(outcomes.ids, vec![a.to_owned(), b.to_owned()]);
        assert_eq!(outcomes.statuses, vec!["Done", "Failed"]);
        assert_eq!(outcomes.attempts, vec![1, 2]);
        assert_eq!(
            outcomes.results,
            vec![
                serde_json::json!({"Ok": null}),
                serde_json::json!({"Err": "boom"})
            ]
        );
    }

    #[test]
    fn merged_outcomes_stay_sorted_by_id() {
        let (a, b, c) = (
            "01KBAAAAAAAAAAAAAAAAAAAAAA",
            "01KBBBBBBBBBBBBBBBBBBBBBBB",
            "01KBCCCCCCCCCCCCCCCCCCCCCC",
        );
        let first = Outcomes::from_events(vec![
            done(c, 1, Status::Done, Ok(Value::Null)),
            done(a, 1, Status::Done, Ok(Value::Null)),
        ]);
        let second = Outcomes::from_events(vec![done(b, 3, Status::Killed, Err("no".into()))]);
        let merged = first.merge(second);
        assert_eq!(merged.len(), 3);
        assert_eq!(merged.ids, vec![a.to_owned(), b.to_owned(), c.to_owned()]);
        assert_eq!(merged.statuses, vec!["Done", "Killed", "Done"]);
        assert_eq!(merged.attempts, vec![1, 3, 1]);
        assert_eq!(merged.results[1], serde_json::json!({"Err": "no"}));
    }

    #[test]
    fn no_completions_make_no_outcomes() {
        let outcomes = Outcomes::from_events(vec![TaskEvent::Lock {
            task_id: TaskId::from_str("01KBAAAAAAAAAAAAAAAAAAAAAA").expect("id"),
        }]);
        assert_eq!(outcomes, Outcomes::default());
    }
}
