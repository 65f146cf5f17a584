//! `admin workers` and `admin cron`: who is running, and what the schedules did and will do.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};

use crate::admin::{AdminContext, AdminError, Output, table};
use crate::cron::{auto_complete, housekeeping, partitions, stuck_orders};
use crate::workers::WORKER_DEAD_AFTER;

#[derive(Debug, Serialize, sqlx::FromRow)]
struct WorkerRow {
    id: String,
    queue: String,
    last_seen: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    alive: bool,
}

/// Workers, live first.
pub async fn workers(ctx: &AdminContext) -> Result<Output, AdminError> {
    // Alive: heartbeating within apalis's own limit.
    let rows: Vec<WorkerRow> = sqlx::query_as(
        "SELECT id, worker_type AS queue, last_seen, started_at,
                last_seen > now() - make_interval(secs => $1) AS alive
         FROM apalis.workers ORDER BY alive DESC, worker_type, id",
    )
    .bind(WORKER_DEAD_AFTER.as_secs_f64())
    .fetch_all(&ctx.db)
    .await?;
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|w| {
            vec![
                w.id.clone(),
                w.queue.trim_start_matches("courier::").to_owned(),
                w.last_seen.format("%Y-%m-%d %H:%M:%S").to_string(),
                if w.alive { "alive" } else { "gone" }.to_owned(),
            ]
        })
        .collect();
    Ok(Output {
        text: table::render(&["WORKER", "QUEUE", "LAST SEEN", "STATE"], &table_rows),
        json: json!({ "workers": rows }),
    })
}

#[derive(Debug, Serialize, sqlx::FromRow)]
struct LastRun {
    tick: DateTime<Utc>,
    ran_by: String,
    summary: Option<Value>,
}

/// Each cron task: schedule, last run, next tick.
pub async fn cron(ctx: &AdminContext) -> Result<Output, AdminError> {
    let tasks = [
        (auto_complete::TASK, &ctx.cron.auto_complete),
        (stuck_orders::TASK, &ctx.cron.stuck_orders),
        (housekeeping::TASK, &ctx.cron.housekeeping),
        (partitions::TASK, &ctx.cron.partitions),
    ];
    let mut rows = Vec::new();
    let mut entries = Vec::new();
    for (task, schedule) in tasks {
        let last: Option<LastRun> = sqlx::query_as(
            "SELECT tick, ran_by, summary FROM cron_runs WHERE task = $1 ORDER BY tick DESC LIMIT 1",
        )
        .bind(task)
        .fetch_optional(&ctx.db)
        .await?;
        let next = schedule.upcoming(Utc).next();
        rows.push(vec![
            task.to_owned(),
            schedule.to_string(),
            last.as_ref().map_or_else(
                || "never".to_owned(),
                |l| l.tick.format("%Y-%m-%d %H:%M:%S").to_string(),
            ),
            next.map_or_else(
                || "-".to_owned(),
                |n| n.format("%Y-%m-%d %H:%M:%S").to_string(),
            ),
            last.as_ref()
                .and_then(|l| l.summary.as_ref())
                .map_or_else(|| "-".to_owned(), Value::to_string),
        ]);
        entries.push(json!({
            "task": task,
            "schedule": schedule.to_string(),
            "last_run": last,
            "next_tick": next,
        }));
    }
    Ok(Output {
        text: table::render(
            &["TASK", "SCHEDULE", "LAST RUN", "NEXT TICK", "LAST SUMMARY"],
            &rows,
        ),
        json: json!({ "cron": entries }),
    })
}
