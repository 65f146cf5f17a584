//! `admin orders …`: an order's whole story (its payment, provider calls and refunds
//! included), re-matching, operator cancel, refunds, payment write-offs, stuck orders.

use std::time::Duration;

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
use crate::workflows::refund::{self, RefundAsk, RefundError, WriteOffError};
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
    /// Refund a captured payment, in full or in part, exactly once per request (`--key`).
    Refund {
        id: i64,
        /// Cents to refund; all that is left when absent.
        #[arg(long)]
        amount: Option<i64>,
        /// Why; recorded with the refund and in the audit log.
        #[arg(long)]
        reason: String,
        /// The request's key: running the command again with the same key replays the first
        /// request instead of refunding twice (a fresh key when absent).
        #[arg(long)]
        key: Option<String>,
        /// The operator's user id, for the audit log (0: unnamed CLI operator).
        #[arg(long, default_value_t = 0)]
        operator: i64,
        /// How long to wait for the provider's answer (`0s`: do not wait).
        #[arg(long, default_value = "30s")]
        wait: String,
    },
    /// Write off a capture that failed for good: the payment counts as settled and the
    /// delivered order can complete.
    WriteOff {
        id: i64,
        /// What was decided; recorded in the audit log.
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
    placed_at: Option<DateTime<Utc>>,
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
        "dispatch",
        "prep_minutes",
        "radius_km",
        "reason",
        "code",
        "refund_id",
        "amount_cents",
        "refunded_cents",
    ] {
        if let Some(value) = detail(key) {
            parts.push(format!("{key}={value}"));
        }
    }
    // Which cycle made an offer, and why this driver (cycle offers and rounds alike).
    if let Some(cycle) = meta.get("cycle").and_then(|c| c.get("id")) {
        parts.push(format!("cycle={cycle}"));
    }
    if let Some(why) = meta.get("why").and_then(Value::as_str) {
        parts.push(format!("— {why}"));
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

#[derive(Debug, Serialize, sqlx::FromRow)]
struct PaymentLine {
    status: String,
    provider: Option<String>,
    intent_id: Option<String>,
    amount_cents: i64,
    refunded_cents: i64,
    attempts: i32,
    failure_code: Option<String>,
    failure_message: Option<String>,
    authorized_at: Option<DateTime<Utc>>,
    captured_at: Option<DateTime<Utc>>,
    released_at: Option<DateTime<Utc>>,
    written_off_at: Option<DateTime<Utc>>,
}

impl PaymentLine {
    /// One line: status, amount, refunds, intent, failure.
    fn summary(&self) -> String {
        let mut line = format!("{} {}", self.status, cents(self.amount_cents));
        if self.refunded_cents > 0 {
            line.push_str(&format!(", refunded {}", cents(self.refunded_cents)));
        }
        if let Some(intent) = &self.intent_id {
            line.push_str(&format!(
                " ({} {intent})",
                self.provider.as_deref().unwrap_or("?")
            ));
        }
        if let Some(code) = &self.failure_code {
            line.push_str(&format!(
                "; {code}: {}",
                self.failure_message.as_deref().unwrap_or("")
            ));
        }
        line
    }
}

#[derive(Debug, Serialize, sqlx::FromRow)]
struct CallLine {
    operation: String,
    refund_id: Option<i64>,
    attempt: i32,
    outcome: String,
    http_status: Option<i16>,
    detail: Option<String>,
    created_at: DateTime<Utc>,
}

/// `1234` → `12.34`.
fn cents(amount: i64) -> String {
    format!("{}.{:02}", amount / 100, (amount % 100).abs())
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
    let payment: Option<PaymentLine> = sqlx::query_as(
        "SELECT status, provider, intent_id, amount_cents, refunded_cents, attempts, failure_code,
                failure_message, authorized_at, captured_at, released_at, written_off_at
         FROM payments WHERE order_id = $1",
    )
    .bind(id)
    .fetch_optional(&ctx.db)
    .await?;
    let calls: Vec<CallLine> = sqlx::query_as(
        "SELECT operation, refund_id, attempt, outcome, http_status, detail, created_at
         FROM payment_attempts WHERE order_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(&ctx.db)
    .await?;
    let refunds = refund::list(&ctx.db, OrderId(id)).await?;
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
    for call in &calls {
        let refund = call
            .refund_id
            .map(|r| format!(" (refund {r})"))
            .unwrap_or_default();
        let status = call
            .http_status
            .map(|s| format!(" HTTP {s}"))
            .unwrap_or_default();
        story.push(Entry {
            at: call.created_at,
            kind: "payment",
            what: format!(
                "{}{refund} attempt {}: {}{status} {}",
                call.operation,
                call.attempt,
                call.outcome,
                call.detail.as_deref().unwrap_or("")
            )
            .trim_end()
            .to_owned(),
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
        (
            "payment",
            payment
                .as_ref()
                .map_or_else(|| "-".to_owned(), PaymentLine::summary),
        ),
    ]);
    if !refunds.is_empty() {
        text.push('\n');
        text.push_str(&table::render(
            &["REFUND", "AMOUNT", "STATUS", "BY", "REASON", "REFERENCE"],
            &refunds
                .iter()
                .map(|r| {
                    vec![
                        r.id.to_string(),
                        cents(r.amount_cents),
                        r.status.clone(),
                        actor("operator", r.requested_by),
                        r.reason.clone(),
                        r.provider_reference
                            .clone()
                            .or_else(|| r.failure_code.clone())
                            .unwrap_or_else(|| "-".to_owned()),
                    ]
                })
                .collect::<Vec<_>>(),
        ));
    }
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
            "payment": payment,
            "payment_calls": calls,
            "refunds": refunds,
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
        only_from: None,
        prep_minutes: None,
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

fn operator_reason(reason: &str) -> Result<String, AdminError> {
    let reason = reason.trim();
    if reason.is_empty() || reason.chars().count() > refund::MAX_REASON_CHARS {
        return Err(AdminError::Invalid(format!(
            "--reason must be 1 to {} characters",
            refund::MAX_REASON_CHARS
        )));
    }
    Ok(reason.to_owned())
}

/// The refund's key: given, or fresh.
fn refund_key(key: Option<&str>) -> Result<String, AdminError> {
    match key.map(str::trim) {
        None => Ok(uuid::Uuid::new_v4().to_string()),
        Some(k) if !k.is_empty() && k.len() <= refund::MAX_KEY_LEN => Ok(k.to_owned()),
        Some(_) => Err(AdminError::Invalid(format!(
            "--key must be 1 to {} characters",
            refund::MAX_KEY_LEN
        ))),
    }
}

/// What operators are told when a refund is refused.
pub fn refund_refusal(id: i64, error: RefundError) -> AdminError {
    match error {
        RefundError::Database(e) => AdminError::Database(e),
        RefundError::Effects(e) => AdminError::Other(e.to_string()),
        other => AdminError::Invalid(format!("order {id}: no refund: {other}")),
    }
}

#[derive(Clone, Copy, Debug)]
struct RefundArgs<'a> {
    amount: Option<i64>,
    reason: &'a str,
    key: Option<&'a str>,
    operator: i64,
    wait: &'a str,
}

async fn refund(
    ctx: &AdminContext,
    id: i64,
    args: RefundArgs<'_>,
    confirm: Confirm,
) -> Result<Output, AdminError> {
    let reason = operator_reason(args.reason)?;
    let key = refund_key(args.key)?;
    let wait = parse_duration("--wait", args.wait)?;
    if args.amount.is_some_and(|a| a <= 0) {
        return Err(AdminError::Invalid(
            "--amount is a positive number of cents".to_owned(),
        ));
    }
    summary(ctx, id).await?;
    let what = args
        .amount
        .map_or_else(|| "all that is left".to_owned(), cents);
    confirm.check(&format!("About to refund {what} of order {id}."))?;
    let ask = RefundAsk {
        order_id: OrderId(id),
        amount_cents: args.amount,
        reason,
        actor: Actor::Operator(UserId(args.operator)),
        request_key: key,
    };
    let (mut refund, replayed) = refund::request(&ctx.db, &ask)
        .await
        .map_err(|e| refund_refusal(id, e))?;
    let deadline = tokio::time::Instant::now() + wait;
    while refund.status == "pending" && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Some(now) = refund::list(&ctx.db, OrderId(id))
            .await?
            .into_iter()
            .find(|r| r.id == refund.id)
        {
            refund = now;
        }
    }
    let note = match refund.status.as_str() {
        "pending" => " (the provider has not answered yet: see `admin orders show`)".to_owned(),
        "failed" => format!(
            ": {} {}",
            refund.failure_code.as_deref().unwrap_or(""),
            refund.failure_message.as_deref().unwrap_or("")
        ),
        _ => String::new(),
    };
    let again = if replayed { " (replayed)" } else { "" };
    Ok(Output {
        text: format!(
            "order {id}: refund {} of {}{again}: {}{note}\n",
            refund.id,
            cents(refund.amount_cents),
            refund.status
        ),
        json: json!({ "refund": refund, "replayed": replayed }),
    })
}

async fn write_off(
    ctx: &AdminContext,
    id: i64,
    reason: &str,
    operator: i64,
    confirm: Confirm,
) -> Result<Output, AdminError> {
    let reason = operator_reason(reason)?;
    summary(ctx, id).await?;
    confirm.check(&format!(
        "About to write off the failed payment of order {id}."
    ))?;
    refund::write_off(
        &ctx.db,
        OrderId(id),
        Actor::Operator(UserId(operator)),
        &reason,
    )
    .await
    .map_err(|e| match e {
        WriteOffError::Database(e) => AdminError::Database(e),
        WriteOffError::Effects(e) => AdminError::Other(e.to_string()),
        other => AdminError::Invalid(format!("order {id}: {other}")),
    })?;
    Ok(Output {
        text: format!("order {id}: payment written off; the order can complete\n"),
        json: json!({ "order_id": id, "payment": "written_off" }),
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
        OrdersCommand::Refund {
            id,
            amount,
            reason,
            key,
            operator,
            wait,
        } => {
            let args = RefundArgs {
                amount: *amount,
                reason,
                key: key.as_deref(),
                operator: *operator,
                wait,
            };
            refund(ctx, *id, args, confirm).await
        }
        OrdersCommand::WriteOff {
            id,
            reason,
            operator,
        } => write_off(ctx, *id, reason, *operator, confirm).await,
        OrdersCommand::Stuck { older_than } => stuck(ctx, older_than).await,
    }
}
