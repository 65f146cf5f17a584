//! `refund_payment`: pays back one refund an operator asked for
//! ([`crate::workflows::refund`]).

use apalis::prelude::{BoxDynError, Data};

use crate::jobs::Job;
use crate::jobs::messages::RefundPayment;
use crate::workers::{JobContext, JobError, bounded};
use crate::workflows::refund;

/// The handler.
pub async fn run(job: RefundPayment, ctx: Data<JobContext>) -> Result<(), BoxDynError> {
    bounded(RefundPayment::QUEUE, async {
        let result = refund::run(
            &ctx.db,
            &ctx.payments,
            job.refund_id,
            job.order_id,
            job.attempt,
        )
        .await
        .map_err(|e| JobError::Retry(e.into()))?;
        tracing::debug!(
            refund_id = job.refund_id,
            attempt = job.attempt,
            ?result,
            "refund run done"
        );
        Ok(())
    })
    .await
}
