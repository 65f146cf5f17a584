//! `match_driver`: one matching round of an order ([`crate::workflows::matching`]).
//!
//! At-least-once safe: the round re-checks the order under its row lock and does nothing if
//! the order no longer waits, already has a pending offer, or belongs to a newer round.

use apalis::prelude::{BoxDynError, Data};

use crate::jobs::Job;
use crate::jobs::messages::MatchDriver;
use crate::workers::{JobContext, JobError, bounded};
use crate::workflows::matching::{self, MatchError};

/// The handler.
pub async fn run(job: MatchDriver, ctx: Data<JobContext>) -> Result<(), BoxDynError> {
    bounded(MatchDriver::QUEUE, async {
        match matching::run_job(&ctx.dispatch, &job).await {
            Ok(outcome) => {
                tracing::debug!(
                    order_id = job.order_id.get(),
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
