//! Jobs as messages: the [`Job`] trait, every kind's arguments ([`messages`]) and [`enqueue`].
//! A leaf: it knows the domain and nothing else of courier, so whoever causes a job (the
//! order's workflow) and whoever runs it (the handlers in [`crate::workers`]) both import it
//! and neither imports the other.
//!
//! [`enqueue`] writes the job row with `apalis_postgres::queries::push_tasks` on the caller's
//! connection — in practice the transaction of the state change that causes the job — so a job
//! exists if and only if its cause committed. Queue names are explicit ([`Job::QUEUE`]):
//! apalis's default is the Rust type name, which would orphan every stored job on a rename.
//! Task ids are ULIDs: we never set an id, so `push_tasks` generates one (any other id format
//! poisons the queue's fetch). Delays have second granularity: `run_at` is stored in whole
//! seconds, so a task delayed by `d` may become due up to a second early.

pub mod maintenance;
pub mod messages;

use std::time::Duration;

use apalis::prelude::TaskBuilder;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::PgConnection;

pub use messages::Message;

/// A kind of job: its arguments (stored as JSON in `apalis.jobs.job`) and its queue.
pub trait Job: Serialize + DeserializeOwned + Send + Sync + Unpin + 'static {
    /// The queue (`apalis.jobs.job_type`); never change it for an existing kind.
    const QUEUE: &'static str;
    /// How often a transient failure is retried before the job is left `Failed`.
    const MAX_ATTEMPTS: usize;
}

/// Capped exponential backoff: the delay before attempt `attempt + 1` is
/// `base × 2^(attempt − 1)`, at most `cap` (and never an overflow, however large `attempt`).
/// Retries that need a delay are new delayed tasks (see [`crate::workers`]); this is their
/// delay.
pub fn backoff(base: Duration, cap: Duration, attempt: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(20));
    base.checked_mul(factor).map_or(cap, |d| d.min(cap))
}

/// Why a job could not be enqueued. The caller's transaction must then roll back.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    #[error("could not encode job arguments: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("could not insert the job row: {0}")]
    Insert(#[from] apalis_postgres::Error),
}

/// Inserts `job` to run after `delay`, on `conn` (normally the caller's open transaction).
pub async fn enqueue<J: Job>(
    conn: &mut PgConnection,
    job: &J,
    delay: Duration,
) -> Result<(), EnqueueError> {
    let task = TaskBuilder::new(serde_json::to_vec(job)?)
        .max_attempts(J::MAX_ATTEMPTS)
        .run_after(delay)
        .build();
    apalis_postgres::queries::push_tasks(conn, J::QUEUE, vec![task]).await?;
    Ok(())
}

impl Message {
    /// Inserts the job to run after `delay`, on `conn`.
    pub async fn enqueue(
        &self,
        conn: &mut PgConnection,
        delay: Duration,
    ) -> Result<(), EnqueueError> {
        match self {
            Message::ConfirmTimeout(job) => enqueue(conn, job, delay).await,
            Message::MatchDriver(job) => enqueue(conn, job, delay).await,
            Message::OfferTimeout(job) => enqueue(conn, job, delay).await,
            Message::RefreshEta(job) => enqueue(conn, job, delay).await,
            Message::Notify(job) => enqueue(conn, job.as_ref(), delay).await,
            Message::CapturePayment(job) => enqueue(conn, job, delay).await,
            Message::RequestReview(job) => enqueue(conn, job, delay).await,
            Message::AuthorizePayment(job) => enqueue(conn, job, delay).await,
            Message::ReleasePayment(job) => enqueue(conn, job, delay).await,
            Message::RefundPayment(job) => enqueue(conn, job, delay).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_base_up_to_the_cap() {
        let (base, cap) = (Duration::from_secs(10), Duration::from_secs(600));
        let delays: Vec<u64> = (1..=8).map(|a| backoff(base, cap, a).as_secs()).collect();
        assert_eq!(delays, vec![10, 20, 40, 80, 160, 320, 600, 600]);
        assert_eq!(backoff(base, cap, 0).as_secs(), 10);
        assert_eq!(backoff(base, cap, u32::MAX), cap);
    }
}
