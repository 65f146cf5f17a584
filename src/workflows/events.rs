//! Order events other than status changes (offers, assignment, payments, flags for
//! operators): an audit row always, and an outbox event when someone outside must hear of it.
//! Written on the transaction of the change they describe.

use serde_json::Value;
use sqlx::PgConnection;

use crate::workflows::machine::Actor;

/// An event of an order.
#[derive(Debug)]
pub struct OrderEvent {
    pub order_id: i64,
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
