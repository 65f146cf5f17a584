//! `request_review`: 30 minutes after delivery, asks the customer for a review
//! ([`crate::workflows::review`]).

use apalis::prelude::{BoxDynError, Data};

use crate::jobs::Job;
use crate::jobs::messages::RequestReview;
use crate::workers::{JobContext, JobError, bounded};
use crate::workflows::review;

/// The handler.
pub async fn run(job: RequestReview, ctx: Data<JobContext>) -> Result<(), BoxDynError> {
    bounded(RequestReview::QUEUE, async {
        review::request(&ctx.db, job.order_id)
            .await
            .map(|_| ())
            .map_err(|e| JobError::Retry(e.into()))
    })
    .await
}
