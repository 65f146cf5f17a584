//! Entries of the orders' event stream as the live streams see them: their ids (which are the
//! SSE event ids a client resumes from) and who hears of each. Pure: no I/O.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use serde_json::Value;

/// A Valkey stream entry id, `<ms>-<seq>`; ordered as the stream orders them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct EntryId {
    pub ms: u64,
    pub seq: u64,
}

impl EntryId {
    /// Parses `<ms>-<seq>` (what `Last-Event-ID` carries); `None` when it is not one.
    pub fn parse(raw: &str) -> Option<Self> {
        let (ms, seq) = raw.trim().split_once('-')?;
        Some(Self {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Who listens: one order's stream, a driver's, a restaurant's, or a driver's positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Topic {
    Order(i64),
    Driver(i64),
    Restaurant(i64),
    Position(i64),
}

/// Events an order's stream carries (its parties may all see them).
pub const ORDER_EVENTS: &[&str] = &[
    "order_status_changed",
    "driver_assigned",
    "eta_updated",
    "payment_authorized",
    "payment_captured",
    "payment_declined",
    "payment_failed",
    "payment_released",
    "payment_refunded",
];
/// Events of one offer, for the driver it was made to.
pub const OFFER_EVENTS: &[&str] = &[
    "offer_made",
    "offer_expired",
    "offer_declined",
    "offer_cancelled",
];
/// Events of an order a restaurant's and the assigned driver's streams carry.
const PARTY_EVENTS: &[&str] = &["order_status_changed", "driver_assigned"];

/// One entry of the stream.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamEvent {
    pub id: EntryId,
    pub order_id: i64,
    /// The outbox sequence: increases along one order's events; a duplicate repeats it.
    pub sequence: i64,
    pub event_type: String,
    /// The event's JSON, as published.
    pub body: Arc<str>,
    pub restaurant_id: Option<i64>,
    /// The order's driver when published.
    pub driver_id: Option<i64>,
    /// For offer events: the driver the offer was made to.
    pub offer_driver: Option<i64>,
    /// For status changes: the new status.
    pub new_status: Option<String>,
    /// For status changes: the status before.
    pub previous_status: Option<String>,
}

impl StreamEvent {
    /// The entry `id` with the JSON `body` (the stream's `event` field); `None` when the body
    /// is not an event.
    pub fn parse(id: EntryId, body: &str) -> Option<Self> {
        let json: Value = serde_json::from_str(body).ok()?;
        let int = |v: &Value| v.as_i64();
        Some(Self {
            id,
            order_id: int(&json["orderId"])?,
            sequence: int(&json["sequence"]).unwrap_or(0),
            event_type: json["eventType"].as_str()?.to_owned(),
            restaurant_id: int(&json["restaurantId"]),
            driver_id: int(&json["driverId"]),
            offer_driver: int(&json["details"]["driver_id"]),
            new_status: json["newStatus"].as_str().map(str::to_owned),
            previous_status: json["previousStatus"].as_str().map(str::to_owned),
            body: Arc::from(body),
        })
    }

    /// The topics that hear of this event.
    pub fn topics(&self) -> Vec<Topic> {
        let kind = self.event_type.as_str();
        let mut topics = Vec::with_capacity(3);
        if ORDER_EVENTS.contains(&kind) {
            topics.push(Topic::Order(self.order_id));
        }
        if PARTY_EVENTS.contains(&kind) {
            // The restaurant hears of an order once it is placed with it (payment authorised),
            // so not of its creation nor of its cancellation before then.
            let before_placed = match (self.previous_status.as_deref(), self.new_status.as_deref())
            {
                (_, Some("PAYMENT_PENDING")) => true,
                (Some("PAYMENT_PENDING"), to) => to != Some("PLACED"),
                _ => false,
            };
            topics.extend(
                self.restaurant_id
                    .filter(|_| !before_placed)
                    .map(Topic::Restaurant),
            );
            topics.extend(self.driver_id.map(Topic::Driver));
        }
        if OFFER_EVENTS.contains(&kind) {
            topics.extend(self.offer_driver.map(Topic::Driver));
        }
        topics
    }

    /// Whether this event ends its order's stream (the order completed or was cancelled).
    pub fn ends_order(&self) -> bool {
        matches!(self.new_status.as_deref(), Some("COMPLETED" | "CANCELLED"))
    }
}

/// Whether `id` is newer than `seen` (nothing seen: everything is new).
pub fn is_newer(id: EntryId, seen: Option<EntryId>) -> bool {
    seen.is_none_or(|seen| id.cmp(&seen) == Ordering::Greater)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(body: Value) -> StreamEvent {
        StreamEvent::parse(EntryId { ms: 5, seq: 1 }, &body.to_string()).unwrap_or_else(|| {
            panic!("an event: {body}");
        })
    }

    #[test]
    fn ids_parse_print_and_order_like_the_stream() {
        let id = EntryId::parse("1700000000000-3").unwrap_or_default();
        assert_eq!(
            id,
            EntryId {
                ms: 1_700_000_000_000,
                seq: 3
            }
        );
        assert_eq!(id.to_string(), "1700000000000-3");
        assert!(EntryId { ms: 2, seq: 0 } > EntryId { ms: 1, seq: 9 });
        for bad in ["", "12", "a-1", "1-b", "-1", "1-", "1-2-3"] {
            assert_eq!(EntryId::parse(bad), None, "{bad}");
        }
        assert!(is_newer(id, None));
        assert!(!is_newer(id, Some(id)));
    }

    #[test]
    fn status_changes_reach_the_order_its_restaurant_and_its_driver() {
        let e = event(json!({
            "orderId": 7, "eventType": "order_status_changed", "restaurantId": 2,
            "driverId": 9, "newStatus": "PICKED_UP"
        }));
        assert_eq!(
            e.topics(),
            [Topic::Order(7), Topic::Restaurant(2), Topic::Driver(9)]
        );
        assert!(!e.ends_order());
        let cancelled = event(json!({
            "orderId": 7, "eventType": "order_status_changed", "restaurantId": 2,
            "driverId": null, "newStatus": "CANCELLED"
        }));
        assert_eq!(cancelled.topics(), [Topic::Order(7), Topic::Restaurant(2)]);
        assert!(cancelled.ends_order());
    }

    #[test]
    fn the_restaurant_hears_nothing_of_an_order_before_its_payment_is_authorised() {
        let created = event(json!({
            "orderId": 7, "eventType": "order_status_changed", "restaurantId": 2,
            "previousStatus": null, "newStatus": "PAYMENT_PENDING"
        }));
        assert_eq!(created.topics(), [Topic::Order(7)]);
        let declined = event(json!({
            "orderId": 7, "eventType": "order_status_changed", "restaurantId": 2,
            "previousStatus": "PAYMENT_PENDING", "newStatus": "CANCELLED"
        }));
        assert_eq!(declined.topics(), [Topic::Order(7)]);
        let placed = event(json!({
            "orderId": 7, "eventType": "order_status_changed", "restaurantId": 2,
            "previousStatus": "PAYMENT_PENDING", "newStatus": "PLACED"
        }));
        assert_eq!(placed.topics(), [Topic::Order(7), Topic::Restaurant(2)]);
    }

    #[test]
    fn offers_reach_only_the_driver_they_were_made_to() {
        let e = event(json!({
            "orderId": 7, "eventType": "offer_made", "restaurantId": 2, "driverId": null,
            "details": {"driver_id": 4}
        }));
        assert_eq!(e.topics(), [Topic::Driver(4)]);
        let internal = event(json!({"orderId": 7, "eventType": "order_unmatched"}));
        assert!(internal.topics().is_empty());
    }

    #[test]
    fn bodies_that_are_not_events_are_refused() {
        let id = EntryId::default();
        assert_eq!(StreamEvent::parse(id, "not json"), None);
        assert_eq!(StreamEvent::parse(id, "{\"eventType\": \"x\"}"), None);
    }
}
