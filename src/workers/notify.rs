//! `notify`: one webhook delivery attempt ([`crate::notify`]). A retry is a new delayed task
//! with the next attempt number and the same event id.

use apalis::prelude::{BoxDynError, Data};

use crate::jobs::Job;
use crate::jobs::messages::Notify;
use crate::workers::{JobContext, JobError, bounded};

/// The handler.
pub async fn run(job: Notify, ctx: Data<JobContext>) -> Result<(), BoxDynError> {
    bounded(Notify::QUEUE, async {
        ctx.notifier
            .deliver(&ctx.db, &job)
            .await
            .map(|_| ())
            .map_err(|e| JobError::Retry(e.into()))
    })
    .await
}
