//! `stuck_orders`: the workflow's safety net. Every confirmed, unassigned order must have a
//! pending offer or a scheduled `match_driver` job; one that has neither (a job deleted by
//! hand, a job that failed for good) gets a new `match_driver` job for its current round. A
//! pending offer long past its expiry (its timeout job lost) is expired, which moves the order
//! on. An order waiting for its payment's authorisation with no `authorize_payment` job
//! scheduled gets one.
//!
//! It also cancels orders not delivered while their payment's authorisation held
//! (`COURIER_AUTHORIZATION_VALID_FOR`, 6 days): the cancellation releases what is left of the
//! hold ([`payment::expire_authorizations`]).

use serde_json::{Value, json};
use sqlx::PgPool;

use crate::cron::CronSettings;
use crate::dispatch::WAITING_STATES;
use crate::domain::{OfferId, OrderId};
use crate::jobs::Job;
use crate::jobs::messages::MatchDriver;
use crate::location::LocationService;
use crate::workflows::{matching, offers, payment};

/// The task's name.
pub const TASK: &str = "stuck_orders";
/// Most orders revived per tick.
const LIMIT: i64 = 1_000;

/// Revives stuck orders; returns counts.
pub async fn run(
    db: &PgPool,
    location: &LocationService,
    settings: &CronSettings,
) -> anyhow::Result<Value> {
    let lost_offers: Vec<OfferId> = sqlx::query_scalar(
        "SELECT id FROM offers WHERE status = 'pending' AND expires_at < now() - INTERVAL '1 minute'
         LIMIT $1",
    )
    .bind(LIMIT)
    .fetch_all(db)
    .await?;
    let mut expired = 0u64;
    for offer in lost_offers {
        if offers::expire(db, offer).await? {
            expired += 1;
        }
    }
    let stuck: Vec<(OrderId, i32)> = sqlx::query_as(
        "SELECT o.id, o.match_round FROM orders o
         WHERE o.status = ANY($1) AND o.driver_id IS NULL
           AND NOT EXISTS (SELECT 1 FROM offers f WHERE f.order_id = o.id AND f.status = 'pending')
           AND NOT EXISTS (
               SELECT 1 FROM apalis.jobs j
               WHERE j.job_type = $2 AND j.status IN ('Pending', 'Queued', 'Running')
                 AND (convert_from(j.job, 'UTF8')::jsonb ->> 'order_id')::bigint = o.id)
         ORDER BY o.id LIMIT $3",
    )
    .bind(&WAITING_STATES[..])
    .bind(MatchDriver::QUEUE)
    .bind(LIMIT)
    .fetch_all(db)
    .await?;
    let revived = stuck.len();
    for (order_id, round) in stuck {
        let round = u32::try_from(round).unwrap_or(1);
        matching::revive(db, order_id, round, None).await?;
        tracing::warn!(
            order_id = order_id.get(),
            round,
            "stuck order: matching revived"
        );
    }
    metrics::counter!("orders_revived_total").increment(revived as u64);
    let authorizations = payment::revive_authorizations(db, LIMIT).await?;
    let authorizations_expired =
        payment::expire_authorizations(db, location, settings.authorization_valid_for, LIMIT)
            .await?;
    metrics::counter!("payment_authorizations_expired_total").increment(authorizations_expired);
    Ok(json!({
        "revived": revived,
        "expired_lost_offers": expired,
        "authorizations_revived": authorizations,
        "authorizations_expired": authorizations_expired,
    }))
}
