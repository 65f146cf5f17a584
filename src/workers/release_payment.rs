//! `release_payment`: releases the hold on a cancelled order's payment
//! ([`crate::workflows::payment`]). Enqueued by every cancellation; a payment that holds
//! nothing (never authorised, already captured) is left alone.

use apalis::prelude::{BoxDynError, Data};

use crate::jobs::Job;
use crate::jobs::messages::ReleasePayment;
use crate::workers::{JobContext, JobError, bounded};
use crate::workflows::payment;

/// The handler.
pub async fn run(job: ReleasePayment, ctx: Data<JobContext>) -> Result<(), BoxDynError> {
    bounded(ReleasePayment::QUEUE, async {
        let result = payment::release(&ctx.db, &ctx.payments, job.order_id, job.attempt)
            .await
            .map_err(|e| JobError::Retry(e.into()))?;
        tracing::debug!(
            order_id = job.order_id.get(),
            attempt = job.attempt,
            ?result,
            "release run done"
        );
        Ok(())
    })
    .await
}
