//! The order's history as rows: each status change ([`record_change`]: an audit row and the
//! spec's `order_status` outbox event) and every other event of an order ([`record`]: offers,
//! assignment, payments, flags for operators — an audit row always, an outbox event when
//! someone outside must hear of it). Written on the transaction of the change they describe.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::PgConnection;

use crate::domain::{Actor, OrderId, OrderStatus};

/// Where a request came from, for the audit log.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RequestMeta {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// The event written to the outbox for every state change (the spec's `order_status` payload).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusEvent {
    pub event_id: uuid::Uuid,
    pub order_id: OrderId,
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
    pub order_id: OrderId,
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

/// An event of an order.
#[derive(Clone, Debug, PartialEq)]
pub struct OrderEvent {
    pub order_id: OrderId,
    /// The outbox topic (`dispatch`, `payments`).
    pub topic: &'static str,
    /// `offer_made`, `driver_assigned`, `payment_captured`, …; also the audit row's
    /// `metadata.action`.
    pub event_type: &'static str,
    pub actor: Actor,
    pub details: Value,
    /// Whether to write an outbox event too.
    pub publish: bool,
}

/// Writes `event` on `conn`.
pub async fn record(conn: &mut PgConnection, event: &OrderEvent) -> Result<(), sqlx::Error> {
    let event_id = uuid::Uuid::new_v4();
    let mut metadata = event.details.clone();
    if let Value::Object(fields) = &mut metadata {
        fields.insert("action".to_owned(), Value::from(event.event_type));
        fields.insert("event_id".to_owned(), Value::from(event_id.to_string()));
    }
    let payload = serde_json::json!({
        "eventId": event_id,
        "eventType": event.event_type,
        "orderId": event.order_id,
        "actorType": event.actor.kind(),
        "actorId": event.actor.id(),
        "details": event.details,
        "timestamp": chrono::Utc::now(),
    });
    sqlx::query(
        "WITH audit AS (
             INSERT INTO audit_logs (event_type, entity_type, entity_id, actor_type, actor_id, metadata)
             VALUES ($2, 'order', $1, $3, $4, $5)
         )
         INSERT INTO outbox (event_id, topic, aggregate_type, aggregate_id, event_type, payload)
         SELECT $6, $9, 'order', $1, $2, $7 WHERE $8",
    )
    .bind(event.order_id)
    .bind(event.event_type)
    .bind(event.actor.kind())
    .bind(event.actor.id())
    .bind(metadata)
    .bind(event_id)
    .bind(payload)
    .bind(event.publish)
    .bind(event.topic)
    .execute(conn)
    .await?;
    Ok(())
}
