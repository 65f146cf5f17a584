//! `admin dispatch cycles`: the recent dispatch cycles of the markets that use them — when
//! each ran, what it saw (orders pooled, drivers available), what it did (offered, held for a
//! later cycle, unmatched, raced by another writer) and how long the routing table and the
//! solve took; a failed cycle with its error.

use chrono::{DateTime, Utc};
use clap::Subcommand;
use serde::Serialize;
use serde_json::json;

use crate::admin::{AdminContext, AdminError, Output, table};

/// `admin dispatch …`
#[derive(Debug, Subcommand)]
pub enum DispatchCommand {
    /// The latest dispatch cycles, newest first.
    Cycles {
        /// Only this market (its slug).
        #[arg(long)]
        market: Option<String>,
        /// How many (1 to 500).
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
}

#[derive(Debug, Serialize, sqlx::FromRow)]
struct CycleRow {
    id: i64,
    market: String,
    started_at: DateTime<Utc>,
    duration_ms: Option<f64>,
    status: String,
    orders_pooled: i32,
    drivers_available: i32,
    offered: i32,
    held: i32,
    unmatched: i32,
    raced: i32,
    routing_estimated: bool,
    table_ms: Option<f64>,
    solve_ms: Option<f64>,
    error: Option<String>,
}

fn ms(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"))
}

/// Runs a `dispatch` command.
pub async fn execute(ctx: &AdminContext, command: &DispatchCommand) -> Result<Output, AdminError> {
    let DispatchCommand::Cycles { market, limit } = command;
    if !(1..=500).contains(limit) {
        return Err(AdminError::Invalid("--limit must be 1 to 500".to_owned()));
    }
    let cycles: Vec<CycleRow> = sqlx::query_as(
        "SELECT c.id, m.slug AS market, c.started_at,
                EXTRACT(EPOCH FROM c.finished_at - c.started_at)::float8 * 1000 AS duration_ms,
                c.status, c.orders_pooled, c.drivers_available, c.offered, c.held, c.unmatched,
                c.raced, c.routing_estimated, c.table_ms, c.solve_ms, c.error
         FROM dispatch_cycles c JOIN markets m ON m.id = c.market_id
         WHERE $1::text IS NULL OR m.slug = $1
         ORDER BY c.id DESC LIMIT $2",
    )
    .bind(market.as_deref())
    .bind(limit)
    .fetch_all(&ctx.db)
    .await?;
    let rows: Vec<Vec<String>> = cycles
        .iter()
        .map(|c| {
            vec![
                c.id.to_string(),
                c.market.clone(),
                c.started_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                c.status.clone(),
                c.orders_pooled.to_string(),
                c.drivers_available.to_string(),
                c.offered.to_string(),
                c.held.to_string(),
                c.unmatched.to_string(),
                c.raced.to_string(),
                format!(
                    "{}{}",
                    ms(c.table_ms),
                    if c.routing_estimated { " (est.)" } else { "" }
                ),
                ms(c.solve_ms),
                ms(c.duration_ms),
                c.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let text = if rows.is_empty() {
        "no dispatch cycles (no market dispatches by cycle, or none has run yet)\n".to_owned()
    } else {
        table::render(
            &[
                "CYCLE",
                "MARKET",
                "STARTED",
                "STATUS",
                "POOLED",
                "DRIVERS",
                "OFFERED",
                "HELD",
                "UNMATCHED",
                "RACED",
                "TABLE MS",
                "SOLVE MS",
                "TOTAL MS",
                "ERROR",
            ],
            &rows,
        )
    };
    Ok(Output {
        text,
        json: json!({ "cycles": cycles }),
    })
}
