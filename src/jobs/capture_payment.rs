//! `capture_payment`: enqueued when an order is delivered, in the delivery's transaction; each
//! retry of a failed capture is a new delayed task with the next attempt number. The work,
//! and why it never charges twice, is in [`crate::payments`].

use apalis::prelude::{BoxDynError, Data};
use serde::{Deserialize, Serialize};

use crate::jobs::{Job, JobContext, JobError, bounded};
use crate::payments;

fn first_attempt() -> u32 {
    1
}

/// Arguments of the job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapturePayment {
    pub order_id: i64,
    /// Which attempt this is (1 for the first).
    #[serde(default = "first_attempt")]
    pub attempt: u32,
}

impl Job for CapturePayment {
    const QUEUE: &'static str = "courier::capture_payment";
    const MAX_ATTEMPTS: usize = 10;
}

/// The handler.
pub async fn run(job: CapturePayment, ctx: Data<JobContext>) -> Result<(), BoxDynError> {
    bounded(CapturePayment::QUEUE, async {
        let result = payments::capture(&ctx.db, &ctx.payments, job.order_id, job.attempt)
            .await
            .map_err(|e| JobError::Retry(e.into()))?;
        tracing::debug!(
            order_id = job.order_id,
            attempt = job.attempt,
            ?result,
            "capture run done"
        );
        Ok(())
    })
    .await
}
