//! Periodic tidying that needs no job row: purging order idempotency keys past their 24 hours.
//!
//! Every worker process runs it every [`INTERVAL`]; the `DELETE` is idempotent, so several
//! processes at once do no harm. Failures are logged and retried at the next tick.

use std::time::Duration;

use sqlx::PgPool;

use crate::shutdown::CancellationToken;
use crate::workflows::place;

/// How often the housekeeping runs.
pub const INTERVAL: Duration = Duration::from_secs(10 * 60);

/// Runs the housekeeping every [`INTERVAL`] (first right away) until `token` is cancelled.
pub async fn run(db: PgPool, token: CancellationToken) {
    let mut ticks = tokio::time::interval(INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = token.cancelled() => return,
            _ = ticks.tick() => {}
        }
        match place::purge_expired_keys(&db).await {
            Ok(purged) => {
                metrics::counter!("idempotency_keys_purged_total").increment(purged);
                if purged > 0 {
                    tracing::info!(purged, "expired idempotency keys purged");
                }
            }
            Err(error) => tracing::warn!(error = %error, "purging expired idempotency keys failed"),
        }
    }
}
