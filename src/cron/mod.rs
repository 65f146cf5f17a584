//! Cron: periodic tasks on apalis-cron schedules, run once per tick across the fleet.
//!
//! apalis-cron runs a scheduler in every worker process, and every scheduler fires every tick.
//! [`run_tick`] makes a tick run once: it inserts `cron_runs(task, tick)` with `ON CONFLICT DO
//! NOTHING` in a transaction that stays open while the tick's work runs and commits with its
//! summary. A second process's insert waits on the first's uncommitted row and then does
//! nothing; if the first process dies mid-tick its transaction rolls back and the waiting
//! process runs the tick instead. Every run writes a `cron_run` audit row with what it did.
//!
//! The tasks, one file each: [`auto_complete`], [`stuck_orders`], [`housekeeping`],
//! [`partitions`]. Their work is idempotent, so a tick re-run after a crash does no harm.

pub mod auto_complete;
pub mod housekeeping;
pub mod partitions;
pub mod stuck_orders;

use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::{BoxDynError, Data, Monitor, WorkerBuilder};
use apalis_cron::{CronScheduler, Tick};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::location::LocationService;

/// When and how the cron tasks run.
#[derive(Clone, Debug)]
pub struct CronSettings {
    pub auto_complete: cron::Schedule,
    pub stuck_orders: cron::Schedule,
    pub housekeeping: cron::Schedule,
    pub partitions: cron::Schedule,
    /// Delivered orders older than this are completed.
    pub auto_complete_after: Duration,
    /// Orders completed per batch (a tick runs batches until none are left, at most 20).
    pub batch: i64,
    pub location_retention_days: u32,
    pub partitions_ahead_days: u32,
    /// Finished job rows older than this are deleted.
    pub job_retention: Duration,
    /// A `Running` job whose worker has not been seen for this long is made runnable again.
    pub stuck_running_after: Duration,
    /// Published outbox rows older than this are deleted.
    pub outbox_retention: Duration,
    /// An order not delivered this long after its payment was authorised is cancelled
    /// (`stuck_orders`): card holds lapse after about 7 days.
    pub authorization_valid_for: Duration,
}

/// A built-in schedule; a typo here is a bug caught by the unit test of [`CronSettings::default`].
fn builtin(expression: &str) -> cron::Schedule {
    expression
        .parse()
        .unwrap_or_else(|e| panic!("built-in cron schedule `{expression}`: {e}"))
}

impl Default for CronSettings {
    fn default() -> Self {
        Self {
            auto_complete: builtin("0 * * * * *"),
            stuck_orders: builtin("30 * * * * *"),
            housekeeping: builtin("0 */10 * * * *"),
            partitions: builtin("0 5 * * * *"),
            auto_complete_after: Duration::from_secs(3600),
            batch: 500,
            location_retention_days: 30,
            partitions_ahead_days: 3,
            job_retention: Duration::from_secs(7 * 24 * 3600),
            stuck_running_after: Duration::from_secs(120),
            outbox_retention: Duration::from_secs(3 * 24 * 3600),
            authorization_valid_for: Duration::from_secs(6 * 24 * 3600),
        }
    }
}

/// What a cron handler can reach.
#[derive(Clone, Debug)]
pub struct CronContext {
    pub db: PgPool,
    /// Where drivers' loads live (an order's end frees its driver).
    pub location: LocationService,
    pub settings: Arc<CronSettings>,
    /// This process's name in `cron_runs.ran_by`.
    pub process: String,
}

/// Whether this process ran a tick.
#[derive(Clone, Debug, PartialEq)]
pub enum TickOutcome {
    Ran(Value),
    /// Another process has (or is running) this tick.
    Skipped,
}

/// Runs `work` for `task`'s `tick` unless another process has claimed it (see the module docs).
pub async fn run_tick<F, Fut>(
    db: &PgPool,
    task: &'static str,
    tick: DateTime<Utc>,
    process: &str,
    work: F,
) -> anyhow::Result<TickOutcome>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = anyhow::Result<Value>>,
{
    let mut tx = crate::store::begin(db).await?;
    let claimed = sqlx::query(
        "INSERT INTO cron_runs (task, tick, ran_by) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(task)
    .bind(tick)
    .bind(process)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !claimed {
        metrics::counter!("cron_ticks_total", "task" => task, "outcome" => "skipped").increment(1);
        return Ok(TickOutcome::Skipped);
    }
    let summary = work().await?;
    sqlx::query("UPDATE cron_runs SET summary = $3 WHERE task = $1 AND tick = $2")
        .bind(task)
        .bind(tick)
        .bind(&summary)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO audit_logs (event_type, entity_type, entity_id, actor_type, metadata)
         VALUES ('cron_run', 'cron', $1, 'system', $2)",
    )
    .bind(tick.timestamp())
    .bind(json!({ "task": task, "tick": tick, "ran_by": process, "summary": summary }))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    metrics::counter!("cron_ticks_total", "task" => task, "outcome" => "ran").increment(1);
    tracing::info!(task, %tick, %summary, "cron tick done");
    Ok(TickOutcome::Ran(summary))
}

fn tick_time(tick: &Tick) -> DateTime<Utc> {
    i64::try_from(tick.get_timestamp())
        .ok()
        .and_then(|t| DateTime::from_timestamp(t, 0))
        .unwrap_or_else(Utc::now)
}

async fn tick_handler(
    task: &'static str,
    tick: Tick,
    ctx: &CronContext,
) -> Result<(), BoxDynError> {
    let at = tick_time(&tick);
    let settings = ctx.settings.clone();
    let (db, location) = (ctx.db.clone(), ctx.location.clone());
    let outcome = run_tick(&ctx.db, task, at, &ctx.process, || async move {
        match task {
            auto_complete::TASK => auto_complete::run(&db, &location, &settings).await,
            stuck_orders::TASK => stuck_orders::run(&db, &location, &settings).await,
            housekeeping::TASK => housekeeping::run(&db, &settings).await,
            _ => partitions::run(&db, &settings).await,
        }
    })
    .await;
    outcome.map(|_| ()).map_err(|error| {
        metrics::counter!("cron_ticks_total", "task" => task, "outcome" => "failed").increment(1);
        tracing::warn!(task, error = %error, "cron tick failed; the next tick retries");
        error.into()
    })
}

/// Registers the four cron workers on `monitor`.
pub fn register(monitor: Monitor, ctx: CronContext) -> Monitor {
    let tasks = [
        (auto_complete::TASK, ctx.settings.auto_complete.clone()),
        (stuck_orders::TASK, ctx.settings.stuck_orders.clone()),
        (housekeeping::TASK, ctx.settings.housekeeping.clone()),
        (partitions::TASK, ctx.settings.partitions.clone()),
    ];
    tasks
        .into_iter()
        .fold(monitor, |monitor, (task, schedule)| {
            let ctx = ctx.clone();
            monitor.register(move |_restarts| {
                let handler =
                    async |tick: Tick, ctx: Data<CronContext>| -> Result<(), BoxDynError> {
                        tick_handler(task, tick, &ctx).await
                    };
                WorkerBuilder::new(format!("cron-{task}@{}", ctx.process))
                    .backend(CronScheduler::new(schedule.clone()))
                    .data(ctx.clone())
                    .build(handler)
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_schedules_parse() {
        let s = CronSettings::default();
        assert_eq!(s.auto_complete.to_string(), "0 * * * * *");
        assert_eq!(s.housekeeping.to_string(), "0 */10 * * * *");
    }
}
