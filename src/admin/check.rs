//! `admin check`: audits the marketplace's invariants in what Postgres (and the event stream
//! in Valkey) recorded — after an incident, a deploy, or a run of many processes at once.
//!
//! Each check is one query that lists what breaks the rule, so an empty answer is a pass and
//! a failure names the orders, drivers or ticks to look at (`admin orders show <id>`). The
//! command fails (non-zero exit) when any check does.

use std::collections::{BTreeSet, HashMap, HashSet};

use redis::streams::StreamRangeReply;
use serde_json::json;

use crate::admin::{AdminContext, AdminError, Output, table};
use crate::location::{ACTIVE_STATES, MAX_ACTIVE_ORDERS};
use crate::outbox::sink::STREAM_SUFFIX;

/// One rule and the query that lists what breaks it (ids, as text).
struct Rule {
    name: &'static str,
    query: &'static str,
}

const RULES: &[Rule] = &[
    Rule {
        name: "an order is accepted by one driver at most",
        query: "SELECT order_id::text FROM offers WHERE status = 'accepted'
                GROUP BY order_id HAVING count(*) > 1",
    },
    Rule {
        name: "an assigned order's driver is the one who accepted it",
        query: "SELECT o.id::text FROM orders o
                JOIN offers f ON f.order_id = o.id AND f.status = 'accepted'
                WHERE o.driver_id IS DISTINCT FROM f.driver_id",
    },
    Rule {
        name: "one pending offer per order",
        query: "SELECT order_id::text FROM offers WHERE status = 'pending'
                GROUP BY order_id HAVING count(*) > 1",
    },
    Rule {
        name: "one pending offer per driver",
        query: "SELECT driver_id::text FROM offers WHERE status = 'pending'
                GROUP BY driver_id HAVING count(*) > 1",
    },
    Rule {
        name: "each payment captured once (the development provider's books)",
        query: "SELECT order_id::text FROM ledger_requests WHERE operation = 'capture'
                GROUP BY order_id HAVING count(*) > 1
                UNION
                SELECT order_id::text FROM ledger_intents WHERE captured_cents > amount_cents",
    },
    Rule {
        name: "each cron tick ran once",
        query: "SELECT (metadata ->> 'task') || ' ' || (metadata ->> 'tick') FROM audit_logs
                WHERE event_type = 'cron_run'
                GROUP BY metadata ->> 'task', metadata ->> 'tick' HAVING count(*) > 1",
    },
    Rule {
        name: "an order's events are published in order",
        query: "SELECT DISTINCT aggregate_id::text FROM (
                    SELECT aggregate_id, published_at,
                           lag(published_at) OVER (PARTITION BY aggregate_id ORDER BY id) AS before
                    FROM outbox WHERE published_at IS NOT NULL) e
                WHERE published_at < before",
    },
];

/// Most stream entries read to check their order.
const STREAM_READ_LIMIT: usize = 1_000_000;

/// Runs every check.
pub async fn check(ctx: &AdminContext) -> Result<Output, AdminError> {
    let mut results: Vec<(String, Vec<String>)> = Vec::new();
    for rule in RULES {
        let broken: Vec<String> = sqlx::query_scalar(rule.query).fetch_all(&ctx.db).await?;
        results.push((rule.name.to_owned(), broken));
    }
    let overloaded: Vec<String> = sqlx::query_scalar(
        "SELECT driver_id::text FROM orders
         WHERE driver_id IS NOT NULL AND status = ANY($1)
         GROUP BY driver_id HAVING count(*) > $2",
    )
    .bind(&ACTIVE_STATES[..])
    .bind(i64::from(MAX_ACTIVE_ORDERS))
    .fetch_all(&ctx.db)
    .await?;
    results.push((
        format!("a driver carries {MAX_ACTIVE_ORDERS} orders at most"),
        overloaded,
    ));
    results.push((
        "the event stream carries each order's events in order".to_owned(),
        stream_out_of_order(ctx).await?,
    ));

    let failed = results
        .iter()
        .filter(|(_, broken)| !broken.is_empty())
        .count();
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|(name, broken)| {
            let sample: Vec<&str> = broken.iter().take(5).map(String::as_str).collect();
            vec![
                name.clone(),
                if broken.is_empty() { "ok" } else { "FAILED" }.to_owned(),
                broken.len().to_string(),
                sample.join(", "),
            ]
        })
        .collect();
    let text = table::render(&["INVARIANT", "RESULT", "BROKEN", "FIRST"], &rows);
    let json = json!({
        "failed": failed,
        "checks": results.iter().map(|(name, broken)| json!({
            "invariant": name, "ok": broken.is_empty(), "broken": broken,
        })).collect::<Vec<_>>(),
    });
    if failed > 0 {
        return Err(AdminError::Audit {
            report: text,
            failed,
        });
    }
    Ok(Output { text, json })
}

/// Orders one of whose events first appears in the Valkey stream after a later event of the
/// same order, read from the start of the stream. A batch the relay published again (after a
/// failure it could not tell from success) repeats events already seen: that is delivery at
/// least once, which consumers dedupe by `sequence`, not disorder.
async fn stream_out_of_order(ctx: &AdminContext) -> Result<Vec<String>, AdminError> {
    let valkey = ctx.location.valkey();
    let key = valkey.key(STREAM_SUFFIX);
    let mut conn = valkey.connection();
    let mut seen: HashMap<i64, (i64, HashSet<i64>)> = HashMap::new();
    let mut broken = BTreeSet::new();
    let mut from = "-".to_owned();
    let mut read = 0;
    while read < STREAM_READ_LIMIT {
        let page: StreamRangeReply = redis::cmd("XRANGE")
            .arg(&key)
            .arg(&from)
            .arg("+")
            .arg("COUNT")
            .arg(1_000)
            .query_async(&mut conn)
            .await
            .map_err(|e| AdminError::Other(format!("reading the event stream: {e}")))?;
        let Some(tail) = page.ids.last().map(|entry| entry.id.clone()) else {
            break;
        };
        for entry in &page.ids {
            let (Some(order), Some(sequence)) =
                (entry.get::<i64>("order_id"), entry.get::<i64>("sequence"))
            else {
                continue;
            };
            let (latest, sequences) = seen.entry(order).or_insert((i64::MIN, HashSet::new()));
            if sequences.insert(sequence) && sequence < *latest {
                broken.insert(order);
            }
            *latest = (*latest).max(sequence);
        }
        read += page.ids.len();
        from = format!("({tail}");
        if page.ids.len() < 1_000 {
            break;
        }
    }
    Ok(broken.into_iter().map(|order| order.to_string()).collect())
}
