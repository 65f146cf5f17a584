//! The transition executor: applies one action to one order in one Postgres transaction.
//!
//! The order's row is locked first and the action decided on what it holds then: an action
//! that is still allowed is applied whatever else changed the order meanwhile (a driver
//! accepting while the restaurant starts preparing), and only a caller that sent the version it
//! saw (`If-Match`) gets a conflict when the order moved on.
//!
//! In that transaction: the version-checked update (`WHERE id = $1 AND version = $2`, the
//! per-state timestamp, `version + 1`), the audit row (actor, IP, user agent, before/after), the
//! outbox event (the spec's Kafka payload), the follow-up jobs the new state needs, and (on
//! cancellation) the end of the order's pending driver offer. If any
//! part fails nothing is written: an order never changes state without its audit row, its event
//! and its jobs, and no job exists for a change that rolled back.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use sqlx::{PgConnection, PgPool};

use crate::dispatch::offers;
use crate::jobs::capture_payment::CapturePayment;
use crate::jobs::match_driver::MatchDriver;
use crate::jobs::refresh_eta::RefreshEta;
use crate::jobs::request_review::RequestReview;
use crate::jobs::{self, EnqueueError};
use crate::notify::{self, Audience};
use crate::workflows::OrderStatus;
use crate::workflows::machine::{self, Action, Actor, Parties, Refusal};

/// Delay before the first matching round (the spec's `{ delay: 1000 }`).
pub const MATCH_DELAY: Duration = Duration::from_secs(1);
/// Delay of the review request after delivery (the spec's 30 minutes).
pub const REVIEW_DELAY: Duration = Duration::from_secs(30 * 60);

/// Where a request came from, for the audit log.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RequestMeta {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// One action on one order.
#[derive(Clone, Debug)]
pub struct TransitionRequest {
    pub order_id: i64,
    pub action: Action,
    pub actor: Actor,
    pub meta: RequestMeta,
    /// Why (cancellations); stored on the order and in the audit row.
    pub reason: Option<String>,
    /// The version the caller saw; a different current version is a conflict.
    pub expected_version: Option<i32>,
}

/// The result of an applied transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transitioned {
    pub order_id: i64,
    pub from: OrderStatus,
    pub to: OrderStatus,
    pub version: i32,
    /// The order's driver, if it has one (its load changes when the order ends).
    pub driver_id: Option<i64>,
}

/// Why a transition was not applied. Nothing was written in any case.
#[derive(Debug, thiserror::Error)]
pub enum TransitionError {
    #[error("order not found")]
    NotFound,
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("the order was changed by someone else")]
    Conflict,
    #[error("could not enqueue a follow-up job: {0}")]
    Enqueue(#[from] EnqueueError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// The event written to the outbox for every state change (the spec's `order_status` payload).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusEvent {
    pub event_id: uuid::Uuid,
    pub order_id: i64,
    pub previous_status: Option<OrderStatus>,
    pub new_status: OrderStatus,
    pub action: &'static str,
    pub actor_id: Option<i64>,
    pub actor_type: &'static str,
    pub timestamp: DateTime<Utc>,
}

/// A state change to record: the audit row and the outbox event.
#[derive(Debug)]
pub struct Change<'a> {
    pub order_id: i64,
    pub from: Option<OrderStatus>,
    pub to: OrderStatus,
    pub action: &'static str,
    pub actor: Actor,
    pub meta: &'a RequestMeta,
    pub reason: Option<&'a str>,
}

/// Writes the audit row and the outbox event of `change` on `conn` (the change's transaction).
pub async fn record_change(
    conn: &mut PgConnection,
    change: &Change<'_>,
) -> Result<(), sqlx::Error> {
    let event = StatusEvent {
        event_id: uuid::Uuid::new_v4(),
        order_id: change.order_id,
        previous_status: change.from,
        new_status: change.to,
        action: change.action,
        actor_id: change.actor.id(),
        actor_type: change.actor.kind(),
        timestamp: Utc::now(),
    };
    let changes = json!({ "status": { "from": change.from, "to": change.to } });
    let metadata = json!({
        "action": change.action,
        "ip": change.meta.ip,
        "user_agent": change.meta.user_agent,
        "reason": change.reason,
        "event_id": event.event_id,
    });
    sqlx::query(
        "WITH audit AS (
             INSERT INTO audit_logs (event_type, entity_type, entity_id, actor_type, actor_id, changes, metadata)
             VALUES ('order_status_changed', 'order', $1, $2, $3, $4, $5)
         )
         INSERT INTO outbox (event_id, topic, aggregate_type, aggregate_id, event_type, payload)
         VALUES ($6, 'order_status', 'order', $1, 'order_status_changed', $7)",
    )
    .bind(change.order_id)
    .bind(change.actor.kind())
    .bind(change.actor.id())
    .bind(changes)
    .bind(metadata)
    .bind(event.event_id)
    .bind(sqlx::types::Json(&event))
    .execute(conn)
    .await?;
    Ok(())
}

/// The column stamped when an order enters `status`.
fn timestamp_column(status: OrderStatus) -> &'static str {
    match status {
        OrderStatus::Placed => "placed_at",
        OrderStatus::Confirmed => "confirmed_at",
        OrderStatus::Preparing => "preparing_at",
        OrderStatus::ReadyForPickup => "ready_at",
        OrderStatus::PickedUp => "picked_up_at",
        OrderStatus::Delivered => "delivered_at",
        OrderStatus::Completed => "completed_at",
        OrderStatus::Cancelled => "cancelled_at",
    }
}

/// Enqueues the jobs that entering `status` causes, on the transition's transaction: the
/// workflow's next steps, and the notifications the parties get.
async fn enqueue_follow_ups(
    conn: &mut PgConnection,
    parties: &Parties,
    order_id: i64,
    status: OrderStatus,
) -> Result<(), EnqueueError> {
    let data = json!({ "order_id": order_id, "status": status, "driver_id": parties.driver_id });
    let customer = Some(parties.customer_id);
    match status {
        OrderStatus::Confirmed => {
            jobs::enqueue(conn, &MatchDriver { order_id, round: 1 }, MATCH_DELAY).await?;
            jobs::enqueue(conn, &RefreshEta { order_id }, Duration::ZERO).await?;
            notify::enqueue(
                conn,
                order_id,
                Audience::Customer,
                customer,
                "order_confirmed",
                data,
            )
            .await
        }
        OrderStatus::ReadyForPickup => match parties.driver_id {
            // Without a driver yet, the driver hears of the order when it is assigned.
            Some(driver) => {
                notify::enqueue(
                    conn,
                    order_id,
                    Audience::Driver,
                    Some(driver),
                    "order_ready",
                    data,
                )
                .await
            }
            None => Ok(()),
        },
        OrderStatus::PickedUp => {
            jobs::enqueue(conn, &RefreshEta { order_id }, Duration::ZERO).await?;
            notify::enqueue(
                conn,
                order_id,
                Audience::Customer,
                customer,
                "order_picked_up",
                data,
            )
            .await
        }
        OrderStatus::Delivered => {
            jobs::enqueue(
                conn,
                &CapturePayment {
                    order_id,
                    attempt: 1,
                },
                Duration::ZERO,
            )
            .await?;
            jobs::enqueue(conn, &RequestReview { order_id }, REVIEW_DELAY).await?;
            notify::enqueue(
                conn,
                order_id,
                Audience::Customer,
                customer,
                "order_delivered",
                data,
            )
            .await
        }
        OrderStatus::Cancelled => {
            notify::enqueue(
                conn,
                order_id,
                Audience::Customer,
                customer,
                "order_cancelled",
                data.clone(),
            )
            .await?;
            // The driver on the way must turn back at once.
            if let Some(driver) = parties.driver_id {
                notify::enqueue(
                    conn,
                    order_id,
                    Audience::Driver,
                    Some(driver),
                    "order_cancelled",
                    data.clone(),
                )
                .await?;
            }
            notify::enqueue(
                conn,
                order_id,
                Audience::Restaurant,
                Some(parties.restaurant_id),
                "order_cancelled",
                data,
            )
            .await
        }
        _ => Ok(()),
    }
}

#[derive(sqlx::FromRow)]
struct Current {
    status: String,
    version: i32,
    customer_id: i64,
    restaurant_id: i64,
    driver_id: Option<i64>,
}

/// Applies `request` in one transaction.
pub async fn execute(
    pool: &PgPool,
    request: &TransitionRequest,
) -> Result<Transitioned, TransitionError> {
    let mut tx = crate::store::begin(pool).await?;
    let current: Current = sqlx::query_as(
        "SELECT status, version, customer_id, restaurant_id, driver_id FROM orders WHERE id = $1
         FOR UPDATE",
    )
    .bind(request.order_id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(TransitionError::NotFound)?;
    let from: OrderStatus = current
        .status
        .parse()
        .map_err(|e: crate::workflows::status::UnknownStatus| sqlx::Error::Decode(Box::new(e)))?;
    let parties = Parties {
        customer_id: current.customer_id,
        restaurant_id: current.restaurant_id,
        driver_id: current.driver_id,
    };
    let to = machine::decide(from, &parties, request.action, request.actor)?;
    if request
        .expected_version
        .is_some_and(|v| v != current.version)
    {
        return Err(TransitionError::Conflict);
    }
    let column = timestamp_column(to);
    let updated = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE orders SET status = $1, {column} = now(), version = version + 1, updated_at = now(),
                cancel_reason = COALESCE($4, cancel_reason)
         WHERE id = $2 AND version = $3"
    )))
    .bind(to.as_str())
    .bind(request.order_id)
    .bind(current.version)
    .bind(request.reason.as_deref())
    .execute(&mut *tx)
    .await?;
    if updated.rows_affected() == 0 {
        return Err(TransitionError::Conflict);
    }
    record_change(
        &mut tx,
        &Change {
            order_id: request.order_id,
            from: Some(from),
            to,
            action: request.action.as_str(),
            actor: request.actor,
            meta: &request.meta,
            reason: request.reason.as_deref(),
        },
    )
    .await?;
    enqueue_follow_ups(&mut tx, &parties, request.order_id, to).await?;
    if to == OrderStatus::Cancelled {
        // A driver holding an offer for the order learns it is gone (the offer also leaves
        // its pending list).
        for (offer_id, driver_id) in offers::cancel_pending(&mut tx, request.order_id).await? {
            notify::enqueue(
                &mut tx,
                request.order_id,
                Audience::Driver,
                Some(driver_id),
                "offer_cancelled",
                json!({ "order_id": request.order_id, "offer_id": offer_id }),
            )
            .await?;
        }
    }
    tx.commit().await?;
    metrics::counter!("orders_total", "status" => to.as_str()).increment(1);
    tracing::info!(
        order_id = request.order_id,
        from = %from,
        to = %to,
        action = %request.action,
        actor = request.actor.kind(),
        "order transitioned"
    );
    Ok(Transitioned {
        order_id: request.order_id,
        from,
        to,
        version: current.version + 1,
        driver_id: current.driver_id,
    })
}
