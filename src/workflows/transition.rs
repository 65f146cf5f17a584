//! The transition executor: applies one action to one order in one Postgres transaction.
//!
//! The order's row is locked first and the action decided on what it holds then: an action
//! that is still allowed is applied whatever else changed the order meanwhile (a driver
//! accepting while the restaurant starts preparing), and only a caller that sent the version it
//! saw (`If-Match`) gets a conflict when the order moved on.
//!
//! The order's payment is read under the same lock: an order completes only once its payment
//! is settled ([`machine::payment_allows`]).
//!
//! In that transaction: the version-checked update (`WHERE id = $1 AND version = $2`, the
//! per-state timestamp, `version + 1`), the audit row (actor, IP, user agent, before/after), the
//! outbox event (the spec's Kafka payload), the follow-up jobs the new state needs, and (on
//! cancellation) the end of the order's pending driver offer. If any
//! part fails nothing is written: an order never changes state without its audit row, its event
//! and its jobs, and no job exists for a change that rolled back.

use sqlx::{PgConnection, PgPool};

use crate::domain::{Action, Actor, DriverId, OrderId, OrderStatus};
use crate::location::LocationService;
use crate::workflows::effects::{self, AfterCommit, Effect, EffectError};
use crate::workflows::events::{Change, RequestMeta, record_change};
use crate::workflows::machine::{self, Parties, PaymentStanding, Refusal};
use crate::workflows::{offers, prep, steps};

/// One action on one order.
#[derive(Clone, Debug)]
pub struct TransitionRequest {
    pub order_id: OrderId,
    pub action: Action,
    pub actor: Actor,
    pub meta: RequestMeta,
    /// Why (cancellations); stored on the order and in the audit row.
    pub reason: Option<String>,
    /// The version the caller saw; a different current version is a conflict.
    pub expected_version: Option<i32>,
    /// For a system job that may act in one state only (the confirm timeout cancels only a
    /// PLACED order): in any other state the action is refused.
    pub only_from: Option<OrderStatus>,
    /// The restaurant's estimate of the food's preparation, with a confirmation (else its
    /// usual prep time): [`crate::workflows::prep`].
    pub prep_minutes: Option<f64>,
}

/// The result of an applied transition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transitioned {
    pub order_id: OrderId,
    pub from: OrderStatus,
    pub to: OrderStatus,
    pub version: i32,
    /// The order's market (its slug), for metrics.
    pub market: String,
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
    #[error("could not write the change's effects: {0}")]
    Effects(#[from] EffectError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// The column stamped when an order enters `status`.
fn timestamp_column(status: OrderStatus) -> &'static str {
    match status {
        OrderStatus::PaymentPending => "created_at",
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

#[derive(sqlx::FromRow)]
struct Current {
    status: String,
    version: i32,
    customer_id: crate::domain::UserId,
    restaurant_id: crate::domain::RestaurantId,
    driver_id: Option<DriverId>,
    placed: bool,
    payment_status: Option<String>,
    market: String,
}

/// Applies `request` in one transaction with its effects, then (a driver's order that ended)
/// writes the driver's load to `location`.
pub async fn execute(
    pool: &PgPool,
    location: &LocationService,
    request: &TransitionRequest,
) -> Result<Transitioned, TransitionError> {
    let mut tx = crate::store::begin(pool).await?;
    let (done, after) = apply_in(&mut tx, request, Vec::new()).await?;
    tx.commit().await?;
    metrics::counter!("orders_total", "status" => done.to.as_str(), "market" => done.market.clone())
        .increment(1);
    after.run(pool, location).await;
    tracing::info!(
        order_id = request.order_id.get(),
        from = %done.from,
        to = %done.to,
        action = %request.action,
        actor = request.actor.kind(),
        "order transitioned"
    );
    Ok(done)
}

/// Applies `request` on `tx`, an open transaction of a caller that writes more of the same
/// change (the payment workflow records the provider's answer with the transition it causes),
/// together with `extra` effects. The caller commits, counts and runs the [`AfterCommit`].
pub async fn apply_in(
    tx: &mut PgConnection,
    request: &TransitionRequest,
    extra: Vec<Effect>,
) -> Result<(Transitioned, AfterCommit), TransitionError> {
    let current: Current = sqlx::query_as(
        "SELECT o.status, o.version, o.customer_id, o.restaurant_id, o.driver_id,
                o.placed_at IS NOT NULL AS placed, p.status AS payment_status,
                m.slug AS market
         FROM orders o JOIN markets m ON m.id = o.market_id
         LEFT JOIN payments p ON p.order_id = o.id
         WHERE o.id = $1 FOR UPDATE OF o",
    )
    .bind(request.order_id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(TransitionError::NotFound)?;
    let from: OrderStatus = current
        .status
        .parse()
        .map_err(|e: crate::domain::UnknownStatus| sqlx::Error::Decode(Box::new(e)))?;
    let parties = Parties {
        customer_id: current.customer_id,
        restaurant_id: current.restaurant_id,
        driver_id: current.driver_id,
        placed: current.placed,
    };
    let to = machine::decide(from, &parties, request.action, request.actor)?;
    if request.only_from.is_some_and(|only| only != from) {
        return Err(TransitionError::Refused(Refusal::InvalidTransition {
            status: from,
            action: request.action,
            allowed: Vec::new(),
        }));
    }
    machine::payment_allows(
        request.action,
        PaymentStanding::of(current.payment_status.as_deref()),
    )?;
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
    if to == OrderStatus::Confirmed {
        prep::on_confirm(&mut *tx, request.order_id, request.prep_minutes).await?;
    }
    record_change(
        &mut *tx,
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
    let mut effects = steps::entered(request.order_id, &parties, to);
    if to == OrderStatus::Cancelled {
        // A driver holding an offer for the order learns it is gone (the offer also leaves
        // its pending list).
        let cancelled = offers::cancel_pending(&mut *tx, request.order_id).await?;
        effects.extend(steps::offers_cancelled(request.order_id, &cancelled));
    }
    effects.extend(extra);
    let after = effects::apply(&mut *tx, effects).await?;
    let done = Transitioned {
        order_id: request.order_id,
        from,
        to,
        version: current.version + 1,
        market: current.market,
    };
    Ok((done, after))
}
