//! `match_driver`: one matching round of an order ([`crate::dispatch::matcher`]). Enqueued
//! when a restaurant confirms an order (one second later, as in the spec), when an offer is
//! declined or expires (at once), and by a round that found nobody (after a backoff).
//!
//! At-least-once safe: the round re-checks the order under its row lock and does nothing if
//! the order no longer waits, already has a pending offer, or belongs to a newer round.

use apalis::prelude::{BoxDynError, Data};
use serde::{Deserialize, Serialize};

use crate::dispatch::matcher::MatchError;
use crate::jobs::{Job, JobContext, JobError, bounded};

/// Arguments of the job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatchDriver {
    pub order_id: i64,
    /// Which matching round this is (1 for the first).
    pub round: u32,
}

impl Job for MatchDriver {
    const QUEUE: &'static str = "courier::match_driver";
    const MAX_ATTEMPTS: usize = 5;
}

/// The handler.
pub async fn run(job: MatchDriver, ctx: Data<JobContext>) -> Result<(), BoxDynError> {
    bounded(MatchDriver::QUEUE, async {
        match ctx.dispatch.run_round(job.order_id, job.round).await {
            Ok(outcome) => {
                tracing::debug!(
                    order_id = job.order_id,
                    round = job.round,
                    ?outcome,
                    "matching round done"
                );
                Ok(())
            }
            Err(MatchError::NotFound(id)) => Err(JobError::Abort(anyhow::anyhow!(
                "order {id} does not exist"
            ))),
            Err(other) => Err(JobError::Retry(other.into())),
        }
    })
    .await
}
