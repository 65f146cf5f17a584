//! `capture_payment`: captures a delivered order's authorised payment ([`crate::workflows::payment`]).
//! Each retry of a failed capture is a new delayed task with the next attempt number.

use apalis::prelude::{BoxDynError, Data};

use crate::jobs::Job;
use crate::jobs::messages::CapturePayment;
use crate::workers::{JobContext, JobError, bounded};
use crate::workflows::payment;

/// The handler.
pub async fn run(job: CapturePayment, ctx: Data<JobContext>) -> Result<(), BoxDynError> {
    bounded(CapturePayment::QUEUE, async {
        let result = payment::capture(&ctx.db, &ctx.payments, job.order_id, job.attempt)
            .await
            .map_err(|e| JobError::Retry(e.into()))?;
        tracing::debug!(
            order_id = job.order_id.get(),
            attempt = job.attempt,
            ?result,
            "capture run done"
        );
        Ok(())
    })
    .await
}
