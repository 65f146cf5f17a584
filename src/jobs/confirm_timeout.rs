//! `confirm_timeout`: enqueued when an order is placed, to run [`CONFIRM_WITHIN`] later. If the
//! restaurant has not confirmed by then, the system cancels the order through the transition
//! executor (audit row and event included), so a customer is never left waiting on a
//! restaurant that is not looking at its tablet.
//!
//! At-least-once safe: if the order has moved on (confirmed, already cancelled), the executor
//! refuses the cancel and the job is a no-op; a lost optimistic-lock race is retried.

use std::time::Duration;

use apalis::prelude::{BoxDynError, Data};
use serde::{Deserialize, Serialize};

use crate::jobs::{Job, JobContext, JobError, bounded};
use crate::workflows::machine::{Action, Actor};
use crate::workflows::transition::{self, RequestMeta, TransitionError, TransitionRequest};

/// How long a restaurant has to confirm a placed order, unless configured otherwise
/// (`COURIER_CONFIRM_TIMEOUT`, [`crate::workflows::place::OrderLimits`]).
pub const CONFIRM_WITHIN: Duration = Duration::from_secs(10 * 60);

/// The cancellation reason recorded when the restaurant never confirmed.
pub const REASON: &str = "the restaurant did not confirm the order in time";

/// Arguments of the job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfirmTimeout {
    pub order_id: i64,
}

impl Job for ConfirmTimeout {
    const QUEUE: &'static str = "courier::confirm_timeout";
    const MAX_ATTEMPTS: usize = 10;
}

/// The handler.
pub async fn run(job: ConfirmTimeout, ctx: Data<JobContext>) -> Result<(), BoxDynError> {
    bounded(ConfirmTimeout::QUEUE, async {
        let request = TransitionRequest {
            order_id: job.order_id,
            action: Action::Cancel,
            actor: Actor::System,
            meta: RequestMeta::default(),
            reason: Some(REASON.to_owned()),
            expected_version: None,
        };
        match transition::execute(&ctx.db, &request).await {
            Ok(_) => {
                tracing::info!(
                    order_id = job.order_id,
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
