//! What a step of the order's life causes besides its own row change, as data: jobs to
//! enqueue, webhooks to send, audit and outbox rows, and — once the step has committed — the
//! driver's load to write to Valkey. The steps ([`crate::workflows::steps`]) say which effects
//! each change has; [`Effects::apply`] writes them on the change's transaction, so a job, a
//! notification or an event exists if and only if its cause committed, and
//! [`AfterCommit::run`] does what must wait for the commit.

use std::time::Duration;

use chrono::Utc;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};

use crate::domain::{Audience, DriverId, OrderId};
use crate::jobs::messages::Notify;
use crate::jobs::{EnqueueError, Message};
use crate::location::{ACTIVE_STATES, LocationService};
use crate::workflows::events::{self, OrderEvent};

/// One effect of a change.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// A job to run after `delay`.
    Job { job: Message, delay: Duration },
    /// A webhook to a party of the order (a `notify` job).
    Notify {
        order_id: OrderId,
        audience: Audience,
        recipient_id: Option<i64>,
        event_type: &'static str,
        data: Value,
    },
    /// An audit row, and an outbox event when it is published.
    Event(OrderEvent),
    /// After the commit: the driver's active orders, counted in Postgres, written to Valkey
    /// (where the nearby search and matching's capacity filter read them).
    SyncDriverLoad(DriverId),
}

impl Effect {
    /// A job to run after `delay`.
    pub fn job(job: impl Into<Message>, delay: Duration) -> Self {
        Effect::Job {
            job: job.into(),
            delay,
        }
    }
}

/// Why the effects could not be written. The change's transaction must then roll back.
#[derive(Debug, thiserror::Error)]
pub enum EffectError {
    #[error("could not enqueue: {0}")]
    Enqueue(#[from] EnqueueError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// Writes the effects of a change that frees or loads no driver (placement, offers, matching
/// rounds, payments, reviews): nothing waits for its commit. A driver-load effect here would
/// be lost, so it is refused in debug builds and the tests.
pub async fn write(conn: &mut PgConnection, effects: Vec<Effect>) -> Result<(), EffectError> {
    debug_assert!(
        !effects
            .iter()
            .any(|e| matches!(e, Effect::SyncDriverLoad(_))),
        "a change that moves a driver's load must run its AfterCommit: use `apply`"
    );
    let _nothing_after = apply(conn, effects).await?;
    Ok(())
}

/// Writes `effects` on `conn` (the change's open transaction) and returns what must wait for
/// the commit.
pub async fn apply(
    conn: &mut PgConnection,
    effects: Vec<Effect>,
) -> Result<AfterCommit, EffectError> {
    let mut after = AfterCommit::default();
    for effect in effects {
        match effect {
            Effect::Job { job, delay } => job.enqueue(conn, delay).await?,
            Effect::Notify {
                order_id,
                audience,
                recipient_id,
                event_type,
                data,
            } => {
                let job = Notify {
                    event_id: uuid::Uuid::new_v4(),
                    order_id,
                    audience,
                    recipient_id,
                    event_type: event_type.to_owned(),
                    data,
                    created_at: Utc::now(),
                    attempt: 1,
                };
                crate::jobs::enqueue(conn, &job, Duration::ZERO).await?;
            }
            Effect::Event(event) => events::record(conn, &event).await?,
            Effect::SyncDriverLoad(driver) => {
                if !after.drivers.contains(&driver) {
                    after.drivers.push(driver);
                }
            }
        }
    }
    Ok(after)
}

/// What a change does once committed.
#[derive(Debug, Default, PartialEq, Eq)]
#[must_use = "the driver's load in Valkey is stale until this runs"]
pub struct AfterCommit {
    drivers: Vec<DriverId>,
}

impl AfterCommit {
    /// Writes each affected driver's load to Valkey. Best effort: a failure is logged, and
    /// matching re-checks capacity in Postgres.
    pub async fn run(self, db: &PgPool, location: &LocationService) {
        for driver in self.drivers {
            sync_driver_load(db, location, driver).await;
        }
    }
}

/// Writes a driver's active-order count and tracked order to Valkey.
async fn sync_driver_load(db: &PgPool, location: &LocationService, driver: DriverId) {
    let load: Result<(i64, Option<i64>), sqlx::Error> = sqlx::query_as(
        "SELECT count(*), min(id) FROM orders WHERE driver_id = $1 AND status = ANY($2)",
    )
    .bind(driver)
    .bind(&ACTIVE_STATES[..])
    .fetch_one(db)
    .await;
    let outcome = match load {
        Ok((count, tracking)) => location
            .set_assignment(
                driver.get(),
                tracking,
                u32::try_from(count).unwrap_or(u32::MAX),
            )
            .await
            .map(|_searchable| ())
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(error) = outcome {
        tracing::warn!(
            driver_id = driver.get(),
            error,
            "could not update the driver's load in Valkey"
        );
    }
}
