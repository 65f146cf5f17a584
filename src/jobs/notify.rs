//! `notify`: one webhook delivery attempt ([`crate::notify`]). Enqueued in the transaction of
//! the change it tells about; a retry is a new delayed task with the next attempt number and
//! the same event id.

use apalis::prelude::{BoxDynError, Data};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::jobs::{Job, JobContext, JobError, bounded};
use crate::notify::Audience;

/// Arguments of the job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Notify {
    /// Stable across retries: receivers dedupe on it.
    pub event_id: uuid::Uuid,
    pub order_id: i64,
    pub audience: Audience,
    pub recipient_id: Option<i64>,
    pub event_type: String,
    pub data: Value,
    pub created_at: DateTime<Utc>,
    pub attempt: u32,
}

impl Job for Notify {
    const QUEUE: &'static str = "courier::notify";
    const MAX_ATTEMPTS: usize = 5;
}

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
