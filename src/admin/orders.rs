//! `admin orders …`: an order's whole story, re-matching, operator cancel, stuck orders.

use chrono::{DateTime, Utc};
use clap::Subcommand;
use serde::Serialize;
use serde_json::{Value, json};

use crate::admin::{AdminContext, AdminError, Confirm, Output, parse_duration, table};
use crate::dispatch::WAITING_STATES;
use crate::domain::{Action, Actor, OrderId, UserId};
use crate::jobs::Job;
use crate::jobs::messages::MatchDriver;
use crate::workflows::RequestMeta;
use crate::workflows::matching;
use crate::workflows::transition::{self, TransitionError, TransitionRequest};

/// `admin orders …`
#[derive(Debug, Subcommand)]
pub enum OrdersCommand {
    /// The order's story in time order: transitions, offers, jobs and events.
    Show { id: i64 },
    /// Enqueue matching again (only for a confirmed, unassigned order with no pending offer).
    Rematch { id: i64 },
    /// Cancel as an operator, through the workflow (audit row, event, offers withdrawn).
    Cancel {
        id: i64,
        /// Why; recorded on the order.
        #[arg(long)]
        reason: String,
        /// The operator's user id, for the audit log (0: unnamed CLI operator).
        #[arg(long, default_value_t = 0)]
        operator: i64,
    },
    /// Non-terminal orders with nothing scheduled and no pending offer, idle for a while.
    Stuck {
        /// How long without change counts as stuck (e.g. `30m`).
        #[arg(long, default_value = "30m")]
        older_than: String,
    },
}

#[derive(Debug, Serialize, sqlx::FromRow)]
struct OrderSummary {
    id: i64,
    status: String,
    customer_id: i64,
    restaurant_id: i64,
    driver_id: Option<i64>,
    match_round: i32,
    total_cents: i64,
    placed_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    version: i32,
}

async fn summary(ctx: &AdminContext, id: i64) -> Result<OrderSummary, AdminError> {
    sqlx::query_as(
        "SELECT id, status, customer_id, restaurant_id, driver_id, match_round, total_cents,
                placed_at, updated_at, version FROM orders WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&ctx.db)
    .await?
    .ok_or_else(|| AdminError::Invalid(format!("no order with id {id}")))
}

/// One line of an order's story.
#[derive(Debug, Serialize)]
struct Entry {
    at: DateTime<Utc>,
    kind: &'static str,
    what: String,
}

#[derive(Debug, sqlx::FromRow)]
struct AuditRow {
    created_at: DateTime<Utc>,
    event_type: String,
    actor_type: String,
    actor_id: Option<i64>,
    changes: Option<Value>,
    metadata: Option<Value>,
}

#[derive(Debug, Serialize, sqlx::FromRow)]
struct OfferRow {
    id: i64,
    driver_id: i64,
    round: i32,
    status: String,
    score: f64,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    responded_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, sqlx::FromRow)]
struct JobLine {
    id: String,
    queue: String,
    status: String,
    attempts: i32,
    run_at: DateTime<Utc>,
    done_at: Option<DateTime<Utc>>,
    arguments: String,
}

#[derive(Debug, Serialize, sqlx::FromRow)]
struct EventLine {
    topic: String,
    event_type: String,
    created_at: DateTime<Utc>,
    published_at: Option<DateTime<Utc>>,
}

fn actor(kind: &str, id: Option<i64>) -> String {
    id.map_or_else(|| kind.to_owned(), |id| format!("{kind} {id}"))
}

fn describe(row: &AuditRow) -> String {
    let who = actor(&row.actor_type, row.actor_id);
    let meta = row.metadata.clone().unwrap_or(Value::Null);
    if row.event_type == "order_status_changed" {
        let status = row
            .changes
            .as_ref()
            .and_then(|c| c.get("status"))
            .cloned()
            .unwrap_or(Value::Null);
        let from = status["from"].as_str().unwrap_or("-");
        let to = status["to"].as_str().unwrap_or("?");
        let action = meta["action"].as_str().unwrap_or("?");
        let reason = meta["reason"]
            .as_str()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default();
        return format!("{from} → {to} by {who} [{action}]{reason}");
    }
    let detail = |key: &str| meta.get(key).filter(|v| !v.is_null()).map(Value::to_string);
    let mut parts = vec![format!("{} by {who}", row.event_type)];
    for key in [
        "driver_id",
        "offer_id",
        "round",
        "radius_km",
        "reason",
        "code",
    ] {
        if let Some(value) = detail(key) {
            parts.push(format!("{key}={value}"));
        }
    }
    parts.join(" ")
}

/// When a job was enqueued: its id is a ULID, whose first 10 characters are the creation
/// time in milliseconds (Crockford base32).
fn enqueued_at(id: &str) -> Option<DateTime<Utc>> {
    let ulid = ulid::Ulid::from_string(id).ok()?;
    DateTime::from_timestamp_millis(i64::try_from(ulid.timestamp_ms()).ok()?)
}

/// A job's arguments in a few words: a notification's event and audience, else its
/// arguments other than the order id.
fn job_summary(arguments: &str) -> String {
    let Ok(Value::Object(args)) = serde_json::from_str::<Value>(arguments) else {
        return arguments.to_owned();
    };
    if let (Some(event), Some(audience)) = (args.get("event_type"), args.get("audience")) {
        let attempt = args
            .get("attempt")
            .map(Value::to_string)
            .unwrap_or_default();
        return format!(
            "{} → {} (attempt {attempt})",
            event.as_str().unwrap_or("?"),
            audience.as_str().unwrap_or("?")
        );
    }
    args.iter()
        .filter(|(k, _)| k.as_str() != "order_id")
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

async fn show(ctx: &AdminContext, id: i64) -> Result<Output, AdminError> {
    let order = summary(ctx, id).await?;
    let audit: Vec<AuditRow> = sqlx::query_as(
        "SELECT created_at, event_type, actor_type, actor_id, changes, metadata FROM audit_logs
         WHERE entity_type = 'order' AND entity_id = $1 ORDER BY created_at, id",
    )
    .bind(id)
    .fetch_all(&ctx.db)
    .await?;
    let offers: Vec<OfferRow> = sqlx::query_as(
        "SELECT id, driver_id, round, status, score, created_at, expires_at, responded_at
         FROM offers WHERE order_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(&ctx.db)
    .await?;
    let offer_ids: Vec<i64> = offers.iter().map(|o| o.id).collect();
    let jobs: Vec<JobLine> = sqlx::query_as(
        "SELECT id, job_type AS queue, status, attempts, run_at, done_at,
                convert_from(job, 'UTF8') AS arguments
         FROM apalis.jobs
         WHERE (convert_from(job, 'UTF8')::jsonb ->> 'order_id')::bigint = $1
            OR (job_type = 'courier::offer_timeout'
                AND (convert_from(job, 'UTF8')::jsonb ->> 'offer_id')::bigint = ANY($2))
         ORDER BY run_at, id",
    )
    .bind(id)
    .bind(&offer_ids)
    .fetch_all(&ctx.db)
    .await?;
    let events: Vec<EventLine> = sqlx::query_as(
        "SELECT topic, event_type, created_at, published_at FROM outbox
         WHERE aggregate_type = 'order' AND aggregate_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(&ctx.db)
    .await?;

    let mut story: Vec<Entry> = audit
        .iter()
        .map(|row| Entry {
            at: row.created_at,
            kind: if row.event_type == "order_status_changed" {
                "transition"
            } else {
                "event"
            },
            what: describe(row),
        })
        .collect();
    for offer in &offers {
        story.push(Entry {
            at: offer
                .responded_at
                .unwrap_or(offer.expires_at)
                .min(Utc::now()),
            kind: "offer",
            what: format!(
                "offer {} to driver {} (round {}, score {:.1}): {}",
                offer.id, offer.driver_id, offer.round, offer.score, offer.status
            ),
        });
    }
    for job in &jobs {
        let due = if job.run_at > enqueued_at(&job.id).unwrap_or(job.run_at) {
            format!(", due {}", job.run_at.format("%H:%M:%S"))
        } else {
            String::new()
        };
        story.push(Entry {
            at: enqueued_at(&job.id).unwrap_or(job.run_at),
            kind: "job",
            what: format!(
                "{} {} enqueued{due}: {} after {} attempt(s)",
                job.queue.trim_start_matches("courier::"),
                job_summary(&job.arguments),
                job.status,
                job.attempts
            ),
        });
    }
    story.sort_by_key(|e| e.at);
    let mut text = table::fields(&[
        ("order", order.id.to_string()),
        ("status", order.status.clone()),
        ("customer", order.customer_id.to_string()),
        ("restaurant", order.restaurant_id.to_string()),
        (
            "driver",
            order
                .driver_id
                .map_or_else(|| "-".to_owned(), |d| d.to_string()),
        ),
        ("matching round", order.match_round.to_string()),
        ("version", order.version.to_string()),
    ]);
    text.push('\n');
    text.push_str(&table::render(
        &["AT", "KIND", "WHAT"],
        &story
            .iter()
            .map(|e| {
                vec![
                    e.at.format("%H:%M:%S%.3f").to_string(),
                    e.kind.to_owned(),
                    e.what.clone(),
                ]
            })
            .collect::<Vec<_>>(),
    ));
    text.push_str(&format!(
        "\nevents published: {} of {}\n",
        events.iter().filter(|e| e.published_at.is_some()).count(),
        events.len()
    ));
    Ok(Output {
        text,
        json: json!({
            "order": order,
            "story": story,
            "offers": offers,
            "jobs": jobs,
            "events": events,
        }),
    })
}

async fn rematch(ctx: &AdminContext, id: i64, confirm: Confirm) -> Result<Output, AdminError> {
    let order = summary(ctx, id).await?;
    if let Some(driver) = order.driver_id {
        return Err(AdminError::Invalid(format!(
            "order {id} is assigned to driver {driver}; nothing to rematch"
        )));
    }
    if !WAITING_STATES.contains(&order.status.as_str()) {
        return Err(AdminError::Invalid(format!(
            "order {id} is {}; only confirmed, preparing or ready orders are matched",
            order.status
        )));
    }
    let pending: Option<i64> =
        sqlx::query_scalar("SELECT id FROM offers WHERE order_id = $1 AND status = 'pending'")
            .bind(id)
            .fetch_optional(&ctx.db)
            .await?;
    if let Some(offer) = pending {
        return Err(AdminError::Invalid(format!(
            "order {id} has pending offer {offer}; wait for its answer or expiry"
        )));
    }
    confirm.check(&format!("About to enqueue matching for order {id}."))?;
    let round = u32::try_from(order.match_round).unwrap_or(1);
    matching::revive(&ctx.db, OrderId(id), round, Some("admin cli"))
        .await
        .map_err(|e| AdminError::Other(format!("could not enqueue: {e}")))?;
    Ok(Output {
        text: format!("matching enqueued for order {id} (round {round})\n"),
        json: json!({ "order_id": id, "queue": MatchDriver::QUEUE, "round": round }),
    })
}

async fn cancel(
    ctx: &AdminContext,
    id: i64,
    reason: &str,
    operator: i64,
    confirm: Confirm,
) -> Result<Output, AdminError> {
    let reason = reason.trim();
    if reason.is_empty() || reason.chars().count() > 500 {
        return Err(AdminError::Invalid(
            "--reason must be 1 to 500 characters".to_owned(),
        ));
    }
    let order = summary(ctx, id).await?;
    confirm.check(&format!("About to cancel order {id} ({}).", order.status))?;
    let request = TransitionRequest {
        order_id: OrderId(id),
        action: Action::Cancel,
        actor: Actor::Operator(UserId(operator)),
        meta: RequestMeta {
            ip: None,
            user_agent: Some("courier admin".to_owned()),
        },
        reason: Some(reason.to_owned()),
        expected_version: None,
    };
    let done = transition::execute(&ctx.db, &ctx.location, &request)
        .await
        .map_err(|e| match e {
            TransitionError::Refused(refusal) => {
                AdminError::Invalid(format!("order {id} cannot be cancelled: {refusal}"))
            }
            TransitionError::NotFound => AdminError::Invalid(format!("no order with id {id}")),
            other => AdminError::Other(other.to_string()),
        })?;
    Ok(Output {
        text: format!("order {id}: {} → {}\n", done.from, done.to),
        json: json!({ "order_id": id, "from": done.from, "to": done.to, "version": done.version }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ulid_tells_when_its_job_was_enqueued() {
        // `ulid(1469918176385)` starts with 01ARYZ6S41 (the ULID reference implementation).
        let at = enqueued_at("01ARYZ6S41TSV4RRFFQ69G5FAV").expect("time");
        assert_eq!(at.timestamp_millis(), 1_469_918_176_385);
        assert!(enqueued_at("short").is_none());
        assert!(enqueued_at("01ARZ3NDEU!!!!!!!!!!!!!!!!").is_none());
    }

    #[test]
    fn job_summaries_are_short() {
        assert_eq!(job_summary(r#"{"order_id":1,"round":2}"#), "round=2");
        assert_eq!(
            job_summary(
                r#"{"order_id":1,"event_type":"order_ready","audience":"driver","attempt":2}"#
            ),
            "order_ready → driver (attempt 2)"
        );
        assert_eq!(job_summary("not json"), "not json");
    }
}

#[derive(Debug, Serialize, sqlx::FromRow)]
struct StuckRow {
    id: i64,
    status: String,
    driver_id: Option<i64>,
    idle_s: f64,
}

async fn stuck(ctx: &AdminContext, older_than: &str) -> Result<Output, AdminError> {
    let threshold = parse_duration("--older-than", older_than)?;
    let rows: Vec<StuckRow> = sqlx::query_as(
        "SELECT o.id, o.status, o.driver_id, EXTRACT(EPOCH FROM now() - o.updated_at)::float8 AS idle_s
         FROM orders o
         WHERE o.status NOT IN ('COMPLETED', 'CANCELLED')
           AND o.updated_at < now() - make_interval(secs => $1)
           AND NOT EXISTS (SELECT 1 FROM offers f WHERE f.order_id = o.id AND f.status = 'pending')
           AND NOT EXISTS (
               SELECT 1 FROM apalis.jobs j
               WHERE j.status IN ('Pending', 'Queued', 'Running')
                 AND (convert_from(j.job, 'UTF8')::jsonb ->> 'order_id')::bigint = o.id)
         ORDER BY o.updated_at LIMIT 1000",
    )
    .bind(threshold.as_secs_f64())
    .fetch_all(&ctx.db)
    .await?;
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.status.clone(),
                r.driver_id
                    .map_or_else(|| "-".to_owned(), |d| d.to_string()),
                format!("{:.0}m", r.idle_s / 60.0),
            ]
        })
        .collect();
    Ok(Output {
        text: table::render(&["ORDER", "STATUS", "DRIVER", "IDLE"], &table_rows),
        json: json!({ "orders": rows }),
    })
}

/// Runs an `orders` command.
pub async fn execute(
    ctx: &AdminContext,
    command: &OrdersCommand,
    confirm: Confirm,
) -> Result<Output, AdminError> {
    match command {
        OrdersCommand::Show { id } => show(ctx, *id).await,
        OrdersCommand::Rematch { id } => rematch(ctx, *id, confirm).await,
        OrdersCommand::Cancel {
            id,
            reason,
            operator,
        } => cancel(ctx, *id, reason, *operator, confirm).await,
        OrdersCommand::Stuck { older_than } => stuck(ctx, older_than).await,
    }
}
