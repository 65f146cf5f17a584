//! `confirm_timeout`: runs at the placed order's confirm deadline. If the restaurant has not
//! confirmed by then, the system cancels the order through the transition executor (audit
//! row, event and effects included), so a customer is never left waiting on a restaurant that
//! is not looking at its tablet.
//!
//! At-least-once safe: if the order has moved on (confirmed, already cancelled), the executor
//! refuses the cancel and the job is a no-op; a lost optimistic-lock race is retried.

use apalis::prelude::{BoxDynError, Data};

use crate::domain::{Action, Actor, OrderStatus};
use crate::jobs::Job;
use crate::jobs::messages::ConfirmTimeout;
use crate::workers::{JobContext, JobError, bounded};
use crate::workflows::events::RequestMeta;
use crate::workflows::steps::CONFIRM_TIMEOUT_REASON;
use crate::workflows::transition::{self, TransitionError, TransitionRequest};

/// The handler.
pub async fn run(job: ConfirmTimeout, ctx: Data<JobContext>) -> Result<(), BoxDynError> {
    bounded(ConfirmTimeout::QUEUE, async {
        let request = TransitionRequest {
            order_id: job.order_id,
            action: Action::Cancel,
            actor: Actor::System,
            meta: RequestMeta::default(),
            reason: Some(CONFIRM_TIMEOUT_REASON.to_owned()),
            expected_version: None,
            only_from: Some(OrderStatus::Placed),
            prep_minutes: None,
        };
        match transition::execute(&ctx.db, &ctx.dispatch.location, &request).await {
            Ok(_) => {
                tracing::info!(
                    order_id = job.order_id.get(),
                    "order cancelled: restaurant did not confirm"
                );
                Ok(())
            }
            Err(TransitionError::Refused(_)) => Ok(()),
            Err(TransitionError::NotFound) => Err(JobError::Abort(anyhow::anyhow!(
                "order {} does not exist",
                job.order_id
            ))),
            Err(other) => Err(JobError::Retry(other.into())),
        }
    })
    .await
}
