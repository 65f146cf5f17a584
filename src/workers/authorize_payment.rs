//! `authorize_payment`: authorises a new order's payment ([`crate::workflows::payment`]); the
//! order then leaves PAYMENT_PENDING, placed with its restaurant or cancelled. Each retry of
//! a failed call is a new delayed task with the next attempt number.

use apalis::prelude::{BoxDynError, Data};

use crate::jobs::Job;
use crate::jobs::messages::AuthorizePayment;
use crate::workers::{JobContext, JobError, bounded};
use crate::workflows::payment;

/// The handler.
pub async fn run(job: AuthorizePayment, ctx: Data<JobContext>) -> Result<(), BoxDynError> {
    bounded(AuthorizePayment::QUEUE, async {
        let result = payment::authorize(
            &ctx.db,
            &ctx.dispatch.location,
            &ctx.payments,
            ctx.confirm_within,
            job.order_id,
            job.attempt,
        )
        .await
        .map_err(|e| JobError::Retry(e.into()))?;
        tracing::debug!(
            order_id = job.order_id.get(),
            attempt = job.attempt,
            ?result,
            "authorisation run done"
        );
        Ok(())
    })
    .await
}
