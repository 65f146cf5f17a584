//! `refresh_eta`: recomputes an order's ETA and stores it in `orders.estimated_delivery_at`,
//! so list views need no routing. Enqueued in the transaction of each change that moves the
//! ETA: confirmation, driver assignment and pickup. Routing is an HTTP call, so it runs here,
//! after the commit, never inside the transition's transaction.
//!
//! At-least-once safe: it writes the ETA as of when it runs; a completed or cancelled order
//! keeps its last ETA.

use apalis::prelude::{BoxDynError, Data};
use chrono::Utc;
use serde::{Deserialize, Serialize};

use crate::eta::order::{EtaError, order_eta};
use crate::jobs::{Job, JobContext, JobError, bounded};

/// Arguments of the job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshEta {
    pub order_id: i64,
}

impl Job for RefreshEta {
    const QUEUE: &'static str = "courier::refresh_eta";
    const MAX_ATTEMPTS: usize = 5;
}

/// The handler.
pub async fn run(job: RefreshEta, ctx: Data<JobContext>) -> Result<(), BoxDynError> {
    bounded(RefreshEta::QUEUE, async {
        let dispatch = &ctx.dispatch;
        let eta = match order_eta(
            &ctx.db,
            &dispatch.location,
            &dispatch.routing,
            job.order_id,
            Utc::now(),
        )
        .await
        {
            Ok(eta) => eta,
            Err(EtaError::NotFound) => {
                return Err(JobError::Abort(anyhow::anyhow!(
                    "order {} does not exist",
                    job.order_id
                )));
            }
            Err(EtaError::Database(e)) => return Err(e.into()),
        };
        if let Some(eta) = eta {
            sqlx::query(
                "UPDATE orders SET estimated_delivery_at = $2
                 WHERE id = $1 AND status NOT IN ('COMPLETED', 'CANCELLED')",
            )
            .bind(job.order_id)
            .bind(eta.eta)
            .execute(&ctx.db)
            .await?;
        }
        Ok(())
    })
    .await
}
