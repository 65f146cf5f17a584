//! `auto_complete`: delivered orders older than the configured delay (default 1 h) whose
//! payment is settled become COMPLETED through the transition executor (audit row and event),
//! in bounded batches.
//!
//! The rule: an order completes only once its payment is settled — captured (refunds
//! included), or a failed capture an operator has written off. COMPLETED is the end of the
//! story, so an order whose capture is still pending or retrying waits (it completes on the
//! first tick after the capture), and one whose capture failed for good stays DELIVERED with
//! its `payment_failed` or `payment_declined` event until an operator writes it off
//! (`courier admin orders write-off`), rather than being closed unpaid. The transition
//! executor checks the same rule under the order's lock.

use serde_json::{Value, json};
use sqlx::PgPool;

use crate::cron::CronSettings;
use crate::domain::{Action, Actor, OrderId};
use crate::location::LocationService;
use crate::workflows::RequestMeta;
use crate::workflows::machine::SETTLED_PAYMENTS;
use crate::workflows::transition::{self, TransitionError, TransitionRequest};

/// The task's name.
pub const TASK: &str = "auto_complete";
/// Most batches per tick; the rest waits for the next tick.
const MAX_BATCHES: usize = 20;

/// Completes due orders; returns counts.
pub async fn run(
    db: &PgPool,
    location: &LocationService,
    settings: &CronSettings,
) -> anyhow::Result<Value> {
    let (mut completed, mut skipped, mut failed) = (0u64, 0u64, 0u64);
    for _ in 0..MAX_BATCHES {
        let due: Vec<OrderId> = sqlx::query_scalar(
            "SELECT o.id FROM orders o
             WHERE o.status = 'DELIVERED' AND o.delivered_at < now() - make_interval(secs => $1)
               AND EXISTS (SELECT 1 FROM payments p
                           WHERE p.order_id = o.id AND p.status = ANY($3))
             ORDER BY o.delivered_at LIMIT $2",
        )
        .bind(settings.auto_complete_after.as_secs_f64())
        .bind(settings.batch)
        .bind(&SETTLED_PAYMENTS[..])
        .fetch_all(db)
        .await?;
        for &order_id in &due {
            let request = TransitionRequest {
                order_id,
                action: Action::AutoComplete,
                actor: Actor::System,
                meta: RequestMeta::default(),
                reason: None,
                expected_version: None,
                only_from: None,
                prep_minutes: None,
            };
            match transition::execute(db, location, &request).await {
                Ok(_) => completed += 1,
                Err(TransitionError::Refused(_) | TransitionError::Conflict) => skipped += 1,
                Err(error) => {
                    failed += 1;
                    tracing::warn!(order_id = order_id.get(), error = %error, "auto-complete failed");
                }
            }
        }
        if due.len() < usize::try_from(settings.batch).unwrap_or(usize::MAX) || failed > 0 {
            break;
        }
    }
    metrics::counter!("orders_auto_completed_total").increment(completed);
    Ok(json!({ "completed": completed, "skipped": skipped, "failed": failed }))
}
