//! `offer_timeout`: enqueued with every offer, to run when it expires (30 s for an order's
//! first offer, 20 s for later ones). If the driver has not answered, the offer expires and
//! the order's next matching round starts at once, in the same transaction.
//!
//! At-least-once safe: an offer that is no longer pending (accepted, declined, cancelled,
//! already expired) is left alone.

use apalis::prelude::{BoxDynError, Data};
use serde::{Deserialize, Serialize};

use crate::dispatch::offers;
use crate::jobs::{Job, JobContext, JobError, bounded};

/// Arguments of the job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferTimeout {
    pub offer_id: i64,
}

impl Job for OfferTimeout {
    const QUEUE: &'static str = "courier::offer_timeout";
    const MAX_ATTEMPTS: usize = 10;
}

/// The handler.
pub async fn run(job: OfferTimeout, ctx: Data<JobContext>) -> Result<(), BoxDynError> {
    bounded(OfferTimeout::QUEUE, async {
        offers::expire(&ctx.db, job.offer_id)
            .await
            .map(|_| ())
            .map_err(|e| JobError::Retry(e.into()))
    })
    .await
}
