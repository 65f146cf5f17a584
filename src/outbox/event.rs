//! The published event: an outbox row turned into the JSON that leaves the database (schema
//! version [`SCHEMA_VERSION`], documented in `docs/events.md`). Pure: no I/O.

use chrono::{DateTime, Utc};
use serde_json::Value;

/// The version of the published event's schema. Consumers check it; a change that removes or
/// retypes a field increments it, added fields do not.
pub const SCHEMA_VERSION: u32 = 1;

/// An outbox row as the relay reads it, with the order's parties as they are when published.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct OutboxRow {
    pub id: i64,
    pub event_id: uuid::Uuid,
    pub topic: String,
    pub event_type: String,
    pub aggregate_id: i64,
    pub payload: sqlx::types::Json<Value>,
    pub created_at: DateTime<Utc>,
    pub customer_id: Option<i64>,
    pub restaurant_id: Option<i64>,
    pub driver_id: Option<i64>,
}

/// One event ready for the sinks.
#[derive(Clone, Debug, PartialEq)]
pub struct Published {
    /// The outbox row's id: increasing along one order's events.
    pub sequence: i64,
    pub event_id: uuid::Uuid,
    pub order_id: i64,
    pub event_type: String,
    /// The JSON body.
    pub body: String,
}

impl Published {
    /// The event of `row`: its stored payload with the envelope's fields added
    /// (`schemaVersion`, `sequence`, `topic`, `eventType`, `orderId` and the parties).
    pub fn from_row(row: &OutboxRow) -> Self {
        let mut body = match &row.payload.0 {
            Value::Object(fields) => fields.clone(),
            other => {
                let mut fields = serde_json::Map::new();
                fields.insert("data".to_owned(), other.clone());
                fields
            }
        };
        let envelope = [
            ("schemaVersion", Value::from(SCHEMA_VERSION)),
            ("eventId", row.event_id.to_string().into()),
            ("sequence", row.id.into()),
            ("topic", row.topic.clone().into()),
            ("eventType", row.event_type.clone().into()),
            ("orderId", row.aggregate_id.into()),
            ("customerId", row.customer_id.into()),
            ("restaurantId", row.restaurant_id.into()),
            ("driverId", row.driver_id.into()),
        ];
        for (key, value) in envelope {
            body.insert(key.to_owned(), value);
        }
        if !body.contains_key("timestamp") {
            body.insert("timestamp".to_owned(), row.created_at.to_rfc3339().into());
        }
        Self {
            sequence: row.id,
            event_id: row.event_id,
            order_id: row.aggregate_id,
            event_type: row.event_type.clone(),
            body: Value::Object(body).to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(payload: Value) -> OutboxRow {
        OutboxRow {
            id: 17,
            event_id: uuid::Uuid::nil(),
            topic: "order_status".to_owned(),
            event_type: "order_status_changed".to_owned(),
            aggregate_id: 5,
            payload: sqlx::types::Json(payload),
            created_at: DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default(),
            customer_id: Some(1),
            restaurant_id: Some(2),
            driver_id: None,
        }
    }

    #[test]
    fn the_envelope_keeps_the_payload_and_adds_version_sequence_and_parties() {
        let published = Published::from_row(&row(json!({
            "newStatus": "CONFIRMED", "timestamp": "then", "eventId": "overwritten"
        })));
        let body: Value = serde_json::from_str(&published.body).unwrap_or_default();
        assert_eq!(body["schemaVersion"], 1);
        assert_eq!(body["sequence"], 17);
        assert_eq!(body["eventId"], uuid::Uuid::nil().to_string());
        assert_eq!(body["eventType"], "order_status_changed");
        assert_eq!(body["topic"], "order_status");
        assert_eq!(body["orderId"], 5);
        assert_eq!(body["customerId"], 1);
        assert_eq!(body["restaurantId"], 2);
        assert_eq!(body["driverId"], Value::Null);
        assert_eq!(body["newStatus"], "CONFIRMED");
        assert_eq!(body["timestamp"], "then");
        assert_eq!((published.sequence, published.order_id), (17, 5));
    }

    #[test]
    fn a_payload_that_is_not_an_object_is_kept_under_data_with_a_timestamp() {
        let published = Published::from_row(&row(json!([1, 2])));
        let body: Value = serde_json::from_str(&published.body).unwrap_or_default();
        assert_eq!(body["data"], json!([1, 2]));
        assert!(
            body["timestamp"]
                .as_str()
                .is_some_and(|t| t.starts_with("2023-11-14"))
        );
    }
}
