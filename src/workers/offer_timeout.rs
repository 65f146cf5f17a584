//! `offer_timeout`: runs when an offer expires (30 s for an order's first offer, 20 s for
//! later ones). If the driver has not answered, the offer expires and the order's next
//! matching round starts at once ([`crate::workflows::offers::expire`]).
//!
//! At-least-once safe: an offer that is no longer pending (accepted, declined, cancelled,
//! already expired) is left alone.

use apalis::prelude::{BoxDynError, Data};

use crate::jobs::Job;
use crate::jobs::messages::OfferTimeout;
use crate::workers::{JobContext, JobError, bounded};
use crate::workflows::offers;

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
