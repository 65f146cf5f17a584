//! `housekeeping`: what apalis and our own tables never clean up by themselves.
//! - Finished job rows (`Done`, `Killed`) older than the retention are deleted; `Failed` rows
//!   stay for operators.
//! - Jobs left `Running` by a worker that stopped heartbeating (apalis leaves a timed-out or
//!   panicked task in `Running`) become `Pending` again; every handler is idempotent.
//! - Order idempotency keys past their 24 hours are purged; `cron_runs` older than a week too,
//!   and `dispatch_cycles` (one row per market every few seconds) older than a day.
//! - Outbox rows published longer ago than `COURIER_OUTBOX_RETENTION` are deleted (rows not
//!   yet published, or parked, stay).

use serde_json::{Value, json};
use sqlx::PgPool;

use crate::cron::CronSettings;
use crate::jobs::maintenance;
use crate::outbox;
use crate::workflows::place;

/// The task's name.
pub const TASK: &str = "housekeeping";
/// Rows deleted per statement, so no statement holds locks for long.
const DELETE_BATCH: i64 = 10_000;

/// Tidies; returns counts.
pub async fn run(db: &PgPool, settings: &CronSettings) -> anyhow::Result<Value> {
    let mut jobs_deleted = 0u64;
    loop {
        let deleted =
            maintenance::purge_finished(db, settings.job_retention.as_secs_f64(), DELETE_BATCH)
                .await?;
        jobs_deleted += deleted;
        if deleted < u64::try_from(DELETE_BATCH).unwrap_or(u64::MAX) {
            break;
        }
    }
    let requeued =
        maintenance::requeue_orphaned(db, settings.stuck_running_after.as_secs_f64()).await?;
    if requeued > 0 {
        tracing::warn!(
            requeued,
            "jobs stuck in Running on dead workers made runnable again"
        );
    }
    let keys_purged = place::purge_expired_keys(db).await?;
    let cron_runs_deleted =
        sqlx::query("DELETE FROM cron_runs WHERE started_at < now() - INTERVAL '7 days'")
            .execute(db)
            .await?
            .rows_affected();
    let cycles_deleted =
        sqlx::query("DELETE FROM dispatch_cycles WHERE started_at < now() - INTERVAL '1 day'")
            .execute(db)
            .await?
            .rows_affected();
    let mut events_pruned = 0u64;
    loop {
        let deleted = outbox::prune_published(db, settings.outbox_retention, DELETE_BATCH).await?;
        events_pruned += deleted;
        if deleted < u64::try_from(DELETE_BATCH).unwrap_or(u64::MAX) {
            break;
        }
    }
    metrics::counter!("outbox_pruned_total").increment(events_pruned);
    metrics::counter!("jobs_deleted_total").increment(jobs_deleted);
    metrics::counter!("jobs_requeued_total").increment(requeued);
    metrics::counter!("idempotency_keys_purged_total").increment(keys_purged);
    Ok(json!({
        "jobs_deleted": jobs_deleted,
        "jobs_requeued": requeued,
        "idempotency_keys_purged": keys_purged,
        "cron_runs_deleted": cron_runs_deleted,
        "dispatch_cycles_deleted": cycles_deleted,
        "outbox_events_pruned": events_pruned,
    }))
}
