//! `refresh_eta`: recomputes an order's stored ETA ([`crate::workflows::eta`]) after the
//! change that moved it (confirmation, driver assignment, pickup).

use apalis::prelude::{BoxDynError, Data};

use crate::eta::order::EtaError;
use crate::jobs::Job;
use crate::jobs::messages::RefreshEta;
use crate::workers::{JobContext, JobError, bounded};
use crate::workflows::eta::{self, RefreshError};

/// The handler.
pub async fn run(job: RefreshEta, ctx: Data<JobContext>) -> Result<(), BoxDynError> {
    bounded(RefreshEta::QUEUE, async {
        let dispatch = &ctx.dispatch;
        match eta::refresh(&ctx.db, &dispatch.location, &dispatch.routing, job.order_id).await {
            Ok(()) => Ok(()),
            Err(RefreshError::Eta(EtaError::NotFound)) => Err(JobError::Abort(anyhow::anyhow!(
                "order {} does not exist",
                job.order_id
            ))),
            Err(RefreshError::Eta(EtaError::Database(e)) | RefreshError::Database(e)) => {
                Err(e.into())
            }
            Err(RefreshError::Effects(e)) => Err(JobError::Retry(e.into())),
        }
    })
    .await
}
