//! `admin events`: the outbox relay from the operator's side — how far behind it is, which
//! events wait or were parked, and releasing one (or publishing one again).

use clap::Subcommand;
use serde_json::json;

use crate::admin::{AdminContext, AdminError, Confirm, Output, table};
use crate::outbox::{self, Released, Which};

/// `courier admin events …`.
#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Unpublished, parked and recently published events, and the relay's lag.
    Stats,
    /// Events waiting to be published (or `--parked`, or `--all` newest first).
    List {
        /// Only parked events (a sink refused them for good).
        #[arg(long, conflicts_with = "all")]
        parked: bool,
        /// Every event, newest first.
        #[arg(long)]
        all: bool,
        /// Only this order's events.
        #[arg(long)]
        order: Option<i64>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Release a parked or failing event, or publish a published one again, by its event id.
    Retry { event_id: String },
}

/// Runs `command`.
pub async fn execute(
    ctx: &AdminContext,
    command: &EventsCommand,
    confirm: Confirm,
) -> Result<Output, AdminError> {
    match command {
        EventsCommand::Stats => stats(ctx).await,
        EventsCommand::List {
            parked,
            all,
            order,
            limit,
        } => {
            if !(1..=1000).contains(limit) {
                return Err(AdminError::Invalid("--limit must be 1 to 1000".to_owned()));
            }
            let which = match (parked, all) {
                (true, _) => Which::Parked,
                (_, true) => Which::All,
                _ => Which::Pending,
            };
            list(ctx, which, *order, *limit).await
        }
        EventsCommand::Retry { event_id } => retry(ctx, event_id, confirm).await,
    }
}

async fn stats(ctx: &AdminContext) -> Result<Output, AdminError> {
    let stats = outbox::stats(&ctx.db).await?;
    let text = table::fields(&[
        ("unpublished", stats.unpublished.to_string()),
        ("lag", format!("{:.1}s", stats.lag_seconds)),
        ("parked", stats.parked.to_string()),
        ("published last hour", stats.published_last_hour.to_string()),
        ("rows kept", stats.total.to_string()),
    ]);
    Ok(Output {
        text,
        json: json!({ "events": stats }),
    })
}

async fn list(
    ctx: &AdminContext,
    which: Which,
    order: Option<i64>,
    limit: i64,
) -> Result<Output, AdminError> {
    let rows = outbox::list(&ctx.db, which, order, limit).await?;
    let time = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map_or_else(
            || "-".to_owned(),
            |t| t.format("%m-%d %H:%M:%S").to_string(),
        )
    };
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let state = if r.parked_at.is_some() {
                "parked"
            } else if r.published_at.is_some() {
                "published"
            } else if r.last_error.is_some() {
                "failing"
            } else {
                "waiting"
            };
            vec![
                r.event_id.to_string(),
                r.order_id.to_string(),
                r.event_type.clone(),
                time(Some(r.created_at)),
                state.to_owned(),
                r.attempts.to_string(),
                r.last_error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    Ok(Output {
        text: table::render(
            &[
                "EVENT",
                "ORDER",
                "TYPE",
                "CREATED",
                "STATE",
                "ATTEMPTS",
                "LAST ERROR",
            ],
            &table_rows,
        ),
        json: json!({ "events": rows }),
    })
}

async fn retry(ctx: &AdminContext, raw: &str, confirm: Confirm) -> Result<Output, AdminError> {
    let event_id = uuid::Uuid::parse_str(raw.trim())
        .map_err(|_| AdminError::Invalid(format!("`{raw}` is not an event id (a UUID)")))?;
    confirm.check(&format!("Publish event {event_id} (again)?"))?;
    let outcome = outbox::release(&ctx.db, event_id).await?;
    let said = match outcome {
        Released::NotFound => {
            return Err(AdminError::Invalid(format!(
                "no event {event_id} in the outbox"
            )));
        }
        Released::Released => "released: the relay publishes it next",
        Released::Republished => {
            "it was published already: the relay publishes it again (consumers dedupe on its id)"
        }
    };
    Ok(Output {
        text: format!("event {event_id} {said}\n"),
        json: json!({ "event_id": event_id, "republished": outcome == Released::Republished }),
    })
}
