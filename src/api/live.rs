//! Server-Sent Events: an order's life as it happens, a driver's offers the moment they are
//! made, a restaurant's new orders — so no client polls. Authorization is the REST routes':
//! an order's stream is for its customer, restaurant, assigned driver and operators (others
//! get 404, as on `GET /v1/orders/{id}`); a driver's and a restaurant's stream for that
//! driver or restaurant and operators (403 otherwise).
//!
//! Every stream starts with a `snapshot` event (the current state from Postgres) whose id is
//! the events stream's position when it was taken, then sends each event (`event:` its
//! `eventType`, `id:` its stream entry id, `data:` the published JSON; `docs/events.md`).
//! An order's stream resumes from `Last-Event-ID` with the events missed (replayed from the
//! stream; a snapshot when they are no longer there), adds `driver_position` events (no id)
//! while a driver is on the way, and ends once the order is completed or cancelled. It sends
//! each event once, even when the relay published it twice.
//! Keep-alive comments flow on idle streams. A client that cannot keep up is disconnected
//! and resumes.

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::AppState;
use crate::api::extract::ApiPath;
use crate::api::orders::visible_order;
use crate::auth::Principal;
use crate::dispatch::offers as offer_views;
use crate::domain::{Actor, DriverId, OrderStatus, RestaurantId, Role};
use crate::error::ApiError;
use crate::live::entry::{EntryId, StreamEvent, Topic, is_newer};
use crate::live::{Hub, Item, Subscription};
use crate::store::orders::{self, ListFilter, OrderView};
use crate::store::{drivers, restaurants};

/// The live routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(order_events))
        .routes(routes!(driver_stream))
        .routes(routes!(restaurant_stream))
}

/// Active orders a driver's or restaurant's snapshot lists at most.
const SNAPSHOT_ORDERS: i64 = 200;

type EventStream = Sse<
    axum::response::sse::KeepAliveStream<
        futures::stream::BoxStream<'static, Result<Event, Infallible>>,
    >,
>;

fn sse(hub: &Hub, stream: impl Stream<Item = Event> + Send + 'static) -> EventStream {
    use futures::StreamExt;
    Sse::new(stream.map(Ok).boxed())
        .keep_alive(KeepAlive::new().interval(hub.settings().keep_alive))
}

fn last_event_id(headers: &HeaderMap) -> Result<Option<EntryId>, ApiError> {
    let Some(raw) = headers.get("last-event-id") else {
        return Ok(None);
    };
    raw.to_str()
        .ok()
        .and_then(EntryId::parse)
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_last_event_id",
                "Last-Event-ID must be an event id this stream sent, like 1700000000000-0",
            )
        })
}

fn stream_event(event: &StreamEvent) -> Event {
    Event::default()
        .event(event.event_type.as_str())
        .id(event.id.to_string())
        .data(&*event.body)
}

fn snapshot(id: Option<EntryId>, data: &serde_json::Value) -> Event {
    let event = Event::default().event("snapshot").data(data.to_string());
    match id {
        Some(id) => event.id(id.to_string()),
        None => event,
    }
}

/// Where an order stands for its stream: whose positions to send, and whether it ended.
#[derive(Clone, Debug, PartialEq)]
struct Tracker {
    status: Option<OrderStatus>,
    driver: Option<i64>,
    /// The highest sequence taken in: a duplicate the relay published twice is not sent again.
    sequence: i64,
}

impl Tracker {
    fn of(view: &OrderView) -> Self {
        Self {
            status: view.status.parse().ok(),
            driver: view.driver_id.map(DriverId::get),
            sequence: 0,
        }
    }

    /// Takes `event` in; `false` when it is a duplicate of one taken in before.
    fn absorb(&mut self, event: &StreamEvent) -> bool {
        if event.sequence <= self.sequence {
            return false;
        }
        self.sequence = event.sequence;
        if let Some(status) = event.new_status.as_deref().and_then(|s| s.parse().ok()) {
            self.status = Some(status);
        }
        if event.driver_id.is_some() {
            self.driver = event.driver_id;
        }
        true
    }

    /// The driver whose positions the stream carries: assigned, and not yet delivered.
    fn followed(&self) -> Option<i64> {
        self.driver.filter(|_| {
            self.status.is_some_and(|s| {
                s.is_active() && !matches!(s, OrderStatus::PaymentPending | OrderStatus::Placed)
            })
        })
    }

    fn ended(&self) -> bool {
        self.status.is_some_and(OrderStatus::is_terminal)
    }
}

struct OrderStream {
    hub: Hub,
    events: Subscription,
    positions: Option<(i64, Subscription)>,
    queue: VecDeque<Event>,
    seen: Option<EntryId>,
    tracker: Tracker,
    done: bool,
}

enum Next {
    Event(Option<Item>),
    Position(Option<Item>),
}

impl OrderStream {
    fn follow(&mut self) {
        let wanted = self.tracker.followed();
        if self.positions.as_ref().map(|(d, _)| *d) != wanted {
            self.positions = wanted.map(|d| (d, self.hub.subscribe(Topic::Position(d))));
        }
    }

    fn push(&mut self, event: &StreamEvent) {
        self.seen = Some(event.id);
        if !self.tracker.absorb(event) {
            return;
        }
        self.done |= event.ends_order();
        self.queue.push_back(stream_event(event));
    }

    async fn next(mut self) -> Option<(Event, Self)> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some((event, self));
            }
            if self.done {
                return None;
            }
            let next = match &mut self.positions {
                Some((_, positions)) => tokio::select! {
                    item = self.events.next() => Next::Event(item),
                    item = positions.next() => Next::Position(item),
                },
                None => Next::Event(self.events.next().await),
            };
            match next {
                Next::Event(None) => return None,
                Next::Event(Some(Item::Event(event))) => {
                    if is_newer(event.id, self.seen) {
                        self.push(&event);
                        self.follow();
                    }
                }
                Next::Event(Some(Item::Position(_))) => {}
                Next::Position(Some(Item::Position(position))) => {
                    self.queue
                        .push_back(Event::default().event("driver_position").data(&*position));
                }
                Next::Position(_) => self.positions = None,
            }
        }
    }
}

/// An order's life as it happens: a `snapshot`, then each event; resumes from
/// `Last-Event-ID`; ends when the order is completed or cancelled.
#[utoipa::path(
    get,
    path = "/orders/{id}/events",
    operation_id = "order_events",
    tag = "live",
    params(
        ("id" = i64, Path, description = "The order's id"),
        ("Last-Event-ID" = Option<String>, Header, description = "The id of the last event received, to resume after it"),
    ),
    responses((status = 200, description = "Server-Sent Events (`docs/events.md`)", content_type = "text/event-stream", body = String)),
    security(("bearer" = ["customer", "restaurant", "driver", "operator"])),
    extensions(("x-error-codes" = json!(["not_found", "invalid_last_event_id"]))),
)]
async fn order_events(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<i64>,
    headers: HeaderMap,
) -> Result<EventStream, ApiError> {
    let resume = last_event_id(&headers)?;
    // Subscribed before anything is read, so nothing falls between the reads and the feed.
    let events = state.live.subscribe(Topic::Order(id));
    let tail = state.live.tail().await?;
    let view = visible_order(&state, principal, id).await?;
    let mut stream = OrderStream {
        hub: state.live.clone(),
        events,
        positions: None,
        queue: VecDeque::new(),
        seen: None,
        tracker: Tracker::of(&view),
        done: false,
    };
    // A resume point the stream still covers (and not beyond its end) replays what was missed.
    let replayed = match resume {
        Some(after) if tail.is_some_and(|tail| after <= tail) => state
            .live
            .replay(id, after)
            .await?
            .map(|events| (after, events)),
        _ => None,
    };
    match replayed {
        Some((after, missed)) => {
            stream.seen = Some(after);
            for event in &missed {
                stream.push(event);
            }
            // The order ended but its last event is not in the stream yet: say where it stands.
            if Tracker::of(&view).ended() && !stream.done {
                stream
                    .queue
                    .push_back(snapshot(None, &json!({ "order": view })));
                stream.done = true;
            }
        }
        None => {
            stream.seen = tail;
            stream.done = stream.tracker.ended();
            stream
                .queue
                .push_back(snapshot(tail, &json!({ "order": view })));
        }
    }
    stream.follow();
    Ok(sse(
        &state.live,
        futures::stream::unfold(stream, OrderStream::next),
    ))
}

/// A driver's or a restaurant's feed: a snapshot, then every newer event of its topic.
struct Feed {
    events: Subscription,
    first: Option<Event>,
    seen: Option<EntryId>,
}

impl Feed {
    async fn next(mut self) -> Option<(Event, Self)> {
        if let Some(first) = self.first.take() {
            return Some((first, self));
        }
        loop {
            match self.events.next().await? {
                Item::Event(event) if is_newer(event.id, self.seen) => {
                    self.seen = Some(event.id);
                    return Some((stream_event(&event), self));
                }
                Item::Event(_) | Item::Position(_) => {}
            }
        }
    }
}

fn feed(
    state: &AppState,
    events: Subscription,
    tail: Option<EntryId>,
    data: &serde_json::Value,
) -> EventStream {
    let feed = Feed {
        events,
        first: Some(snapshot(tail, data)),
        seen: tail,
    };
    sse(&state.live, futures::stream::unfold(feed, Feed::next))
}

fn active_orders() -> ListFilter {
    ListFilter {
        statuses: Some(
            OrderStatus::ALL
                .iter()
                .filter(|s| s.is_active())
                .map(|s| s.as_str())
                .collect(),
        ),
        before_id: None,
        limit: SNAPSHOT_ORDERS,
    }
}

/// `GET /v1/drivers/{id}/offers/stream`: the driver's offers (made, expired, declined,
/// cancelled) and its orders' changes.
#[utoipa::path(
    get,
    path = "/drivers/{id}/offers/stream",
    operation_id = "driver_stream",
    tag = "live",
    params(("id" = i64, Path, description = "The driver's id")),
    responses((status = 200, description = "Server-Sent Events (`docs/events.md`)", content_type = "text/event-stream", body = String)),
    security(("bearer" = ["driver", "operator"])),
    extensions(("x-error-codes" = json!(["not_found"]))),
)]
async fn driver_stream(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<i64>,
) -> Result<EventStream, ApiError> {
    principal.require_role(&[Role::Driver, Role::Operator])?;
    if principal.role == Role::Driver && principal.subject != id {
        return Err(ApiError::forbidden(
            "a driver may only follow its own offers",
        ));
    }
    let events = state.live.subscribe(Topic::Driver(id));
    let tail = state.live.tail().await?;
    if !drivers::exists(&state.db, DriverId(id)).await? {
        return Err(ApiError::not_found(format!("driver {id} does not exist")));
    }
    let offers = offer_views::pending_for_driver(&state.db, DriverId(id)).await?;
    let orders = {
        let mut conn = state.db.acquire().await?;
        orders::list(&mut conn, Actor::Driver(DriverId(id)), &active_orders()).await?
    };
    Ok(feed(
        &state,
        events,
        tail,
        &json!({ "offers": offers, "orders": orders }),
    ))
}

/// `GET /v1/restaurants/{id}/orders/stream`: the restaurant's new orders and their changes.
#[utoipa::path(
    get,
    path = "/restaurants/{id}/orders/stream",
    operation_id = "restaurant_stream",
    tag = "live",
    params(("id" = i64, Path, description = "The restaurant's id")),
    responses((status = 200, description = "Server-Sent Events (`docs/events.md`)", content_type = "text/event-stream", body = String)),
    security(("bearer" = ["restaurant", "operator"])),
    extensions(("x-error-codes" = json!(["not_found"]))),
)]
async fn restaurant_stream(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<i64>,
) -> Result<EventStream, ApiError> {
    principal.require_role(&[Role::Restaurant, Role::Operator])?;
    if principal.role == Role::Restaurant && principal.subject != id {
        return Err(ApiError::forbidden(
            "a restaurant may only follow its own orders",
        ));
    }
    let events = state.live.subscribe(Topic::Restaurant(id));
    let tail = state.live.tail().await?;
    if !restaurants::exists(&state.db, id).await? {
        return Err(ApiError::not_found(format!(
            "restaurant {id} does not exist"
        )));
    }
    let orders = {
        let mut conn = state.db.acquire().await?;
        orders::list(
            &mut conn,
            Actor::Restaurant(RestaurantId(id)),
            &active_orders(),
        )
        .await?
    };
    Ok(feed(&state, events, tail, &json!({ "orders": orders })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(sequence: i64, new_status: Option<&str>, driver: Option<i64>) -> StreamEvent {
        StreamEvent {
            id: EntryId::default(),
            order_id: 1,
            sequence,
            event_type: "order_status_changed".to_owned(),
            body: "{}".into(),
            restaurant_id: Some(2),
            driver_id: driver,
            offer_driver: None,
            new_status: new_status.map(str::to_owned),
            previous_status: None,
        }
    }

    #[test]
    fn positions_flow_from_assignment_until_delivery() {
        let mut tracker = Tracker {
            status: Some(OrderStatus::Confirmed),
            driver: None,
            sequence: 0,
        };
        assert_eq!(tracker.followed(), None);
        assert!(tracker.absorb(&event(1, None, Some(9))));
        assert_eq!(tracker.followed(), Some(9));
        assert!(tracker.absorb(&event(2, Some("PICKED_UP"), Some(9))));
        assert_eq!(tracker.followed(), Some(9));
        assert!(tracker.absorb(&event(3, Some("DELIVERED"), Some(9))));
        assert_eq!(tracker.followed(), None);
        assert!(!tracker.ended());
        assert!(tracker.absorb(&event(4, Some("COMPLETED"), Some(9))));
        assert!(tracker.ended());
    }

    #[test]
    fn a_duplicate_publication_is_taken_in_once() {
        let mut tracker = Tracker {
            status: Some(OrderStatus::Placed),
            driver: None,
            sequence: 0,
        };
        assert!(tracker.absorb(&event(5, Some("CONFIRMED"), None)));
        assert!(!tracker.absorb(&event(5, Some("CONFIRMED"), None)));
        assert!(!tracker.absorb(&event(4, Some("PLACED"), None)));
        assert_eq!(tracker.status, Some(OrderStatus::Confirmed));
    }

    #[test]
    fn last_event_id_must_be_a_stream_id() {
        let mut headers = HeaderMap::new();
        assert!(matches!(last_event_id(&headers), Ok(None)));
        headers.insert("last-event-id", "1700000000000-2".parse().expect("header"));
        assert!(matches!(
            last_event_id(&headers),
            Ok(Some(EntryId {
                ms: 1_700_000_000_000,
                seq: 2
            }))
        ));
        headers.insert("last-event-id", "yesterday".parse().expect("header"));
        assert!(last_event_id(&headers).is_err());
    }
}
