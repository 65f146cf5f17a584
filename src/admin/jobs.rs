//! `admin jobs …`: list, show, retry, kill and stats over `apalis.jobs`.
//!
//! apalis-postgres has no retry or kill, so they are plain SQL ([`crate::jobs::maintenance`]);
//! a retry wakes the workers at once with the NOTIFY apalis's insert trigger would send.

use chrono::{DateTime, Utc};
use clap::Subcommand;
use serde::Serialize;
use serde_json::{Value, json};

use crate::admin::{AdminContext, AdminError, Confirm, Output, parse_duration, table};
use crate::jobs::maintenance;
use crate::jobs::messages::QUEUES;

/// `admin jobs …`
#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Jobs, newest first.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// Most rows.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// One job in full.
    Show { id: String },
    /// Re-queue failed or killed jobs with their attempts reset: by id, or by filter.
    Retry {
        ids: Vec<String>,
        #[command(flatten)]
        filter: FilterArgs,
        /// Show what would be retried, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Stop pending or failed jobs from running: by id, or by filter.
    Kill {
        ids: Vec<String>,
        #[command(flatten)]
        filter: FilterArgs,
        /// Show what would be killed, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Per queue: pending, running, failed, dead, done in the last hour, oldest pending, stuck.
    Stats,
}

/// Job filters.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FilterArgs {
    /// Queue, e.g. `match_driver` or `courier::match_driver`.
    #[arg(long)]
    pub queue: Option<String>,
    /// pending, queued, running, done, failed, killed (or dead).
    #[arg(long)]
    pub status: Option<String>,
    /// Jobs about this order.
    #[arg(long)]
    pub order: Option<i64>,
    /// Only jobs due within this long ago (e.g. `2h`).
    #[arg(long)]
    pub since: Option<String>,
}

impl FilterArgs {
    fn is_empty(&self) -> bool {
        self.queue.is_none()
            && self.status.is_none()
            && self.order.is_none()
            && self.since.is_none()
    }
}

/// A validated filter.
#[derive(Debug, Default)]
struct Filter {
    queue: Option<String>,
    status: Option<&'static str>,
    order: Option<i64>,
    since_s: Option<f64>,
}

/// The full queue name for `raw`.
pub fn queue_name(raw: &str) -> Result<String, AdminError> {
    let full = if raw.contains("::") {
        raw.to_owned()
    } else {
        format!("courier::{raw}")
    };
    if QUEUES.contains(&full.as_str()) {
        Ok(full)
    } else {
        let known: Vec<&str> = QUEUES
            .iter()
            .map(|q| q.trim_start_matches("courier::"))
            .collect();
        Err(AdminError::Invalid(format!(
            "unknown queue `{raw}` (known: {})",
            known.join(", ")
        )))
    }
}

/// apalis's status for `raw`.
pub fn status_name(raw: &str) -> Result<&'static str, AdminError> {
    match raw.to_ascii_lowercase().as_str() {
        "pending" => Ok("Pending"),
        "queued" => Ok("Queued"),
        "running" => Ok("Running"),
        "done" => Ok("Done"),
        "failed" => Ok("Failed"),
        "killed" | "dead" => Ok("Killed"),
        _ => Err(AdminError::Invalid(format!(
            "unknown status `{raw}` (pending, queued, running, done, failed, killed)"
        ))),
    }
}

/// A job id is a ULID: 26 characters of Crockford base32.
fn check_id(id: &str) -> Result<(), AdminError> {
    let ok = id.len() == 26
        && id
            .chars()
            .all(|c| c.is_ascii_digit() || (c.is_ascii_uppercase() && !"ILOU".contains(c)));
    if ok {
        Ok(())
    } else {
        Err(AdminError::Invalid(format!(
            "`{id}` is not a job id (a 26-character ULID)"
        )))
    }
}

impl FilterArgs {
    fn validate(&self) -> Result<Filter, AdminError> {
        Ok(Filter {
            queue: self.queue.as_deref().map(queue_name).transpose()?,
            status: self.status.as_deref().map(status_name).transpose()?,
            order: self.order,
            since_s: self
                .since
                .as_deref()
                .map(|s| parse_duration("--since", s).map(|d| d.as_secs_f64()))
                .transpose()?,
        })
    }
}

/// A job row as operators see it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct JobRow {
    pub id: String,
    pub queue: String,
    pub status: String,
    pub attempts: i32,
    pub max_attempts: i32,
    pub run_at: DateTime<Utc>,
    pub lock_at: Option<DateTime<Utc>>,
    pub lock_by: Option<String>,
    pub done_at: Option<DateTime<Utc>>,
    pub arguments: Option<String>,
    pub last_result: Option<String>,
}

const JOB_COLUMNS: &str = "id, job_type AS queue, status, attempts, max_attempts, run_at, lock_at,
    lock_by, done_at, convert_from(job, 'UTF8') AS arguments, last_result::text AS last_result";

const FILTER_SQL: &str = "($1::text IS NULL OR job_type = $1)
    AND ($2::text IS NULL OR status = $2)
    AND ($3::bigint IS NULL OR (convert_from(job, 'UTF8')::jsonb ->> 'order_id')::bigint = $3)
    AND ($4::float8 IS NULL OR run_at > now() - make_interval(secs => $4))";

async fn select(
    ctx: &AdminContext,
    filter: &Filter,
    limit: i64,
) -> Result<Vec<JobRow>, AdminError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {JOB_COLUMNS} FROM apalis.jobs WHERE {FILTER_SQL} ORDER BY run_at DESC, id DESC LIMIT $5"
    )))
    .bind(filter.queue.as_deref())
    .bind(filter.status)
    .bind(filter.order)
    .bind(filter.since_s)
    .bind(limit)
    .fetch_all(&ctx.db)
    .await?)
}

async fn by_ids(ctx: &AdminContext, ids: &[String]) -> Result<Vec<JobRow>, AdminError> {
    for id in ids {
        check_id(id)?;
    }
    let rows: Vec<JobRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {JOB_COLUMNS} FROM apalis.jobs WHERE id = ANY($1) ORDER BY id"
    )))
    .bind(ids)
    .fetch_all(&ctx.db)
    .await?;
    if let Some(missing) = ids.iter().find(|id| rows.iter().all(|r| &r.id != *id)) {
        return Err(AdminError::Invalid(format!("no job with id {missing}")));
    }
    Ok(rows)
}

fn short_time(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(
        || "-".to_owned(),
        |t| t.format("%Y-%m-%d %H:%M:%S").to_string(),
    )
}

fn list_output(rows: &[JobRow]) -> Output {
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                r.queue.trim_start_matches("courier::").to_owned(),
                r.status.clone(),
                format!("{}/{}", r.attempts, r.max_attempts),
                short_time(Some(r.run_at)),
                r.arguments.clone().unwrap_or_default(),
            ]
        })
        .collect();
    Output {
        text: table::render(
            &["ID", "QUEUE", "STATUS", "ATTEMPTS", "RUN AT", "ARGUMENTS"],
            &table_rows,
        ),
        json: json!({ "jobs": rows }),
    }
}

/// Runs a `jobs` command.
pub async fn execute(
    ctx: &AdminContext,
    command: &JobsCommand,
    confirm: Confirm,
) -> Result<Output, AdminError> {
    match command {
        JobsCommand::List { filter, limit } => {
            if !(1..=10_000).contains(limit) {
                return Err(AdminError::Invalid("--limit must be 1 to 10000".to_owned()));
            }
            let rows = select(ctx, &filter.validate()?, *limit).await?;
            Ok(list_output(&rows))
        }
        JobsCommand::Show { id } => {
            let row = by_ids(ctx, std::slice::from_ref(id)).await?.remove(0);
            let arguments: Value = row
                .arguments
                .as_deref()
                .and_then(|a| serde_json::from_str(a).ok())
                .unwrap_or(Value::Null);
            let text = table::fields(&[
                ("id", row.id.clone()),
                ("queue", row.queue.clone()),
                ("status", row.status.clone()),
                ("attempts", format!("{}/{}", row.attempts, row.max_attempts)),
                ("run at", short_time(Some(row.run_at))),
                ("locked at", short_time(row.lock_at)),
                (
                    "locked by",
                    row.lock_by.clone().unwrap_or_else(|| "-".to_owned()),
                ),
                ("done at", short_time(row.done_at)),
                ("arguments", arguments.to_string()),
                (
                    "last result",
                    row.last_result.clone().unwrap_or_else(|| "-".to_owned()),
                ),
            ]);
            Ok(Output {
                text,
                json: json!({ "job": row, "arguments": arguments }),
            })
        }
        JobsCommand::Retry {
            ids,
            filter,
            dry_run,
        } => change(ctx, Change::Retry, ids, filter, *dry_run, confirm).await,
        JobsCommand::Kill {
            ids,
            filter,
            dry_run,
        } => change(ctx, Change::Kill, ids, filter, *dry_run, confirm).await,
        JobsCommand::Stats => stats(ctx).await,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    Retry,
    Kill,
}

impl Change {
    fn verb(self) -> &'static str {
        match self {
            Change::Retry => "retry",
            Change::Kill => "kill",
        }
    }

    /// The statuses a job may have for this change.
    fn eligible_statuses(self) -> &'static [&'static str] {
        match self {
            Change::Retry => &["Failed", "Killed"],
            Change::Kill => &["Pending", "Queued", "Failed"],
        }
    }
}

async fn change(
    ctx: &AdminContext,
    what: Change,
    ids: &[String],
    filter: &FilterArgs,
    dry_run: bool,
    confirm: Confirm,
) -> Result<Output, AdminError> {
    let targets = match (ids.is_empty(), filter.is_empty()) {
        (false, false) => {
            return Err(AdminError::Invalid(format!(
                "give job ids or filters to {}, not both",
                what.verb()
            )));
        }
        (true, true) => {
            return Err(AdminError::Invalid(format!(
                "nothing to {}: give job ids, or --queue and --status (and optionally --since, --order)",
                what.verb()
            )));
        }
        (false, true) => {
            let rows = by_ids(ctx, ids).await?;
            if let Some(bad) = rows
                .iter()
                .find(|r| !what.eligible_statuses().contains(&r.status.as_str()))
            {
                return Err(AdminError::Invalid(format!(
                    "job {} is {}; only {} jobs can be {}",
                    bad.id,
                    bad.status,
                    what.eligible_statuses().join("/").to_lowercase(),
                    if what == Change::Retry {
                        "retried"
                    } else {
                        "killed"
                    }
                )));
            }
            rows
        }
        (true, false) => {
            let valid = filter.validate()?;
            let Some(status) = valid.status else {
                return Err(AdminError::Invalid(format!(
                    "a bulk {} needs --status (one of {})",
                    what.verb(),
                    what.eligible_statuses().join(", ").to_lowercase()
                )));
            };
            if valid.queue.is_none() {
                return Err(AdminError::Invalid(format!(
                    "a bulk {} needs --queue",
                    what.verb()
                )));
            }
            if !what.eligible_statuses().contains(&status) {
                return Err(AdminError::Invalid(format!(
                    "{status} jobs cannot be {}",
                    if what == Change::Retry {
                        "retried"
                    } else {
                        "killed"
                    }
                )));
            }
            select(ctx, &valid, 100_000).await?
        }
    };
    let ids: Vec<String> = targets.iter().map(|r| r.id.clone()).collect();
    let mut out = list_output(&targets);
    if dry_run || ids.is_empty() {
        out.text = format!("{}would {} {} job(s)\n", out.text, what.verb(), ids.len());
        out.json["dry_run"] = json!(dry_run);
        out.json["changed"] = json!(0);
        return Ok(out);
    }
    confirm.check(&format!("About to {} {} job(s).", what.verb(), ids.len()))?;
    let changed = match what {
        Change::Retry => maintenance::retry(&ctx.db, &ids).await?,
        Change::Kill => maintenance::kill(&ctx.db, &ids).await?,
    };
    tracing::warn!(
        action = what.verb(),
        changed,
        ?ids,
        "jobs changed by an operator"
    );
    out.text = format!(
        "{}{} job(s) {}\n",
        out.text,
        changed,
        if what == Change::Retry {
            "re-queued"
        } else {
            "killed"
        }
    );
    out.json["dry_run"] = json!(false);
    out.json["changed"] = json!(changed);
    Ok(out)
}

#[derive(Debug, Serialize, sqlx::FromRow)]
struct QueueStats {
    queue: String,
    pending: i64,
    scheduled: i64,
    running: i64,
    failed: i64,
    dead: i64,
    done_last_hour: i64,
    oldest_pending_s: Option<f64>,
    stuck_running: i64,
}

async fn stats(ctx: &AdminContext) -> Result<Output, AdminError> {
    let rows: Vec<QueueStats> = sqlx::query_as(
        "SELECT j.job_type AS queue,
                count(*) FILTER (WHERE j.status IN ('Pending', 'Queued') AND j.run_at <= now()) AS pending,
                count(*) FILTER (WHERE j.status = 'Pending' AND j.run_at > now()) AS scheduled,
                count(*) FILTER (WHERE j.status = 'Running') AS running,
                count(*) FILTER (WHERE j.status = 'Failed' AND j.attempts < j.max_attempts) AS failed,
                count(*) FILTER (WHERE j.status = 'Killed'
                                    OR (j.status = 'Failed' AND j.attempts >= j.max_attempts)) AS dead,
                count(*) FILTER (WHERE j.status = 'Done' AND j.done_at > now() - INTERVAL '1 hour') AS done_last_hour,
                EXTRACT(EPOCH FROM now() - min(j.run_at) FILTER (
                    WHERE j.status IN ('Pending', 'Queued') AND j.run_at <= now()))::float8 AS oldest_pending_s,
                count(*) FILTER (WHERE j.status = 'Running' AND NOT EXISTS (
                    SELECT 1 FROM apalis.workers w WHERE w.id = j.lock_by
                      AND w.last_seen > now() - make_interval(secs => $1))) AS stuck_running
         FROM apalis.jobs j GROUP BY j.job_type ORDER BY j.job_type",
    )
    .bind(crate::workers::WORKER_DEAD_AFTER.as_secs_f64())
    .fetch_all(&ctx.db)
    .await?;
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|s| {
            vec![
                s.queue.trim_start_matches("courier::").to_owned(),
                s.pending.to_string(),
                s.scheduled.to_string(),
                s.running.to_string(),
                s.failed.to_string(),
                s.dead.to_string(),
                s.done_last_hour.to_string(),
                s.oldest_pending_s
                    .map_or_else(|| "-".to_owned(), |s| format!("{s:.0}s")),
                s.stuck_running.to_string(),
            ]
        })
        .collect();
    Ok(Output {
        text: table::render(
            &[
                "QUEUE",
                "PENDING",
                "SCHEDULED",
                "RUNNING",
                "FAILED",
                "DEAD",
                "DONE 1H",
                "OLDEST PENDING",
                "STUCK",
            ],
            &table_rows,
        ),
        json: json!({ "queues": rows }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_accept_short_and_full_names_only_if_known() {
        assert_eq!(
            queue_name("match_driver").ok().as_deref(),
            Some("courier::match_driver")
        );
        assert_eq!(
            queue_name("courier::notify").ok().as_deref(),
            Some("courier::notify")
        );
        assert!(queue_name("nope").is_err());
        assert!(queue_name("courier::cron").is_err());
    }

    #[test]
    fn statuses_and_ids_are_checked() {
        assert_eq!(status_name("DEAD").ok(), Some("Killed"));
        assert!(status_name("sleeping").is_err());
        assert!(check_id("01JBZ8K3M9Q2R5T7V9X1Y3Z5A7").is_ok());
        assert!(check_id("not-a-ulid").is_err());
        assert!(check_id("01JBZ8K3M9Q2R5T7V9X1Y3Z5AI").is_err());
    }
}
