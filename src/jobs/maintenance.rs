//! Changes of job rows outside a worker's claims and acknowledgements: an operator's retry
//! and kill (`courier admin jobs`), and housekeeping's purge of finished jobs and rescue of
//! jobs left `Running` by dead workers. With [`crate::jobs::enqueue`] and the workers' own
//! store, these are the only writes of `apalis.jobs`.

use sqlx::PgPool;

/// Re-queues the `Failed` or `Killed` jobs among `ids` to run now with fresh attempts, and
/// wakes their workers (an `UPDATE` does not fire apalis's insert trigger, so we send the
/// NOTIFY it would). Returns how many were re-queued.
pub async fn retry(db: &PgPool, ids: &[String]) -> Result<u64, sqlx::Error> {
    let changed = sqlx::query(
        "UPDATE apalis.jobs SET status = 'Pending', attempts = 0, run_at = now(),
                lock_by = NULL, lock_at = NULL, done_at = NULL, last_result = NULL
         WHERE id = ANY($1) AND status IN ('Failed', 'Killed')",
    )
    .bind(ids)
    .execute(db)
    .await?
    .rows_affected();
    sqlx::query(
        "SELECT pg_notify('apalis::job::insert',
             json_build_object('job_type', job_type, 'id', id, 'run_at', run_at)::text)
         FROM apalis.jobs WHERE id = ANY($1)",
    )
    .bind(ids)
    .execute(db)
    .await?;
    Ok(changed)
}

/// Kills the `Pending`, `Queued` or `Failed` jobs among `ids`: they will not run. Returns how
/// many were killed.
pub async fn kill(db: &PgPool, ids: &[String]) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE apalis.jobs SET status = 'Killed', done_at = now(),
                last_result = '{\"Err\": \"killed by an operator\"}'::jsonb
         WHERE id = ANY($1) AND status IN ('Pending', 'Queued', 'Failed')",
    )
    .bind(ids)
    .execute(db)
    .await?
    .rows_affected())
}

/// Deletes up to `batch` jobs that finished (`Done`, `Killed`) more than `retention_s`
/// seconds ago; returns how many.
pub async fn purge_finished(db: &PgPool, retention_s: f64, batch: i64) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM apalis.jobs WHERE id IN (
             SELECT id FROM apalis.jobs
             WHERE status IN ('Done', 'Killed') AND done_at < now() - make_interval(secs => $1)
             LIMIT $2)",
    )
    .bind(retention_s)
    .bind(batch)
    .execute(db)
    .await?
    .rows_affected())
}

/// Makes jobs left `Running` by workers not seen for `after_s` seconds runnable again;
/// returns how many.
pub async fn requeue_orphaned(db: &PgPool, after_s: f64) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE apalis.jobs SET status = 'Pending', lock_by = NULL, lock_at = NULL
         WHERE status = 'Running'
           AND NOT EXISTS (SELECT 1 FROM apalis.workers w
                           WHERE w.id = apalis.jobs.lock_by
                             AND w.last_seen > now() - make_interval(secs => $1))",
    )
    .bind(after_s)
    .execute(db)
    .await?
    .rows_affected())
}
