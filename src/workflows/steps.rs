//! The order's life, step by step: what each change causes. Pure functions from a change to
//! its [`Effect`]s — jobs, webhooks, events, the driver's load — with no I/O; the executors
//! ([`crate::workflows::place`], [`transition`](crate::workflows::transition),
//! [`matching`](crate::workflows::matching), [`offers`](crate::workflows::offers),
//! [`payment`](crate::workflows::payment), [`review`](crate::workflows::review)) write the
//! change and [apply](crate::workflows::effects::apply) these in the same transaction.
//!
//! | step | jobs it enqueues | webhooks |
//! |---|---|---|
//! | created (PAYMENT_PENDING) | `authorize_payment` at once | — |
//! | payment authorised → PLACED | `confirm_timeout` at the confirm deadline | restaurant (`order_placed`) |
//! | authorisation declined or failed → CANCELLED | — | customer (`payment_declined` / `payment_failed`) |
//! | authorisation failed, retryable | `authorize_payment` (next attempt) after the backoff | — |
//! | confirmed | `match_driver` round 1 after 1 s, `refresh_eta` | customer |
//! | ready for pickup | — | the driver, if assigned |
//! | picked up | `refresh_eta` | customer |
//! | delivered | `capture_payment`, `request_review` after 30 min | customer |
//! | cancelled | `release_payment` (pending offers end) | customer, driver, restaurant (if it was asked); drivers with an offer |
//! | release failed, retryable | `release_payment` (next attempt) after the backoff | — |
//! | refund requested | `refund_payment` | — |
//! | refund failed, retryable | `refund_payment` (next attempt) after the backoff | — |
//! | refunded | — | customer |
//! | offer made | `offer_timeout` at its expiry | the driver (pickup, drop-off, expiry) |
//! | offer declined / expired | `match_driver` (same round) at once | — |
//! | driver assigned | `refresh_eta` | customer |
//! | round found nobody | `match_driver` (next round) after the backoff | — |
//! | matching revived | `match_driver` (current round) at once | — |
//! | handed to the market's dispatch cycle | `match_driver` (same round, the fallback) when the order is due, plus the grace | — |
//! | prep estimate updated | `refresh_eta` | — |
//! | capture failed, retryable | `capture_payment` (next attempt) after the backoff | — |
//! | review due | — | customer |
//! | ETA changed | — | — |
//!
//! Events published to the outbox (and so to the streams, Kafka and the SSE clients): every
//! status change, `offer_made`, `offer_expired`, `offer_declined`, `offer_cancelled`,
//! `driver_assigned`, `order_unmatched`, `eta_updated` and the payment outcomes
//! (`payment_authorized`, `payment_declined`, `payment_failed`, `payment_captured`,
//! `payment_released`, `payment_release_failed`, `payment_refunded`, `refund_failed`,
//! `payment_written_off`).
//!
//! A driver whose active orders change (assigned, delivered, cancelled) has its load written
//! to Valkey after the commit.

use std::time::Duration;

use serde_json::{Value, json};

use crate::domain::{Actor, Audience, DriverId, OfferId, OfferStatus, OrderId, OrderStatus};
use crate::jobs::messages::{
    AuthorizePayment, CapturePayment, ConfirmTimeout, MatchDriver, OfferTimeout, RefreshEta,
    ReleasePayment,
};
use crate::workflows::effects::Effect;
use crate::workflows::events::OrderEvent;
use crate::workflows::machine::Parties;

/// Delay before the first matching round (the spec's `{ delay: 1000 }`).
pub const MATCH_DELAY: Duration = Duration::from_secs(1);
/// Delay of the review request after delivery (the spec's 30 minutes).
pub const REVIEW_DELAY: Duration = Duration::from_secs(30 * 60);
/// How long a restaurant has to confirm a placed order, unless configured otherwise
/// (`COURIER_CONFIRM_TIMEOUT`, [`crate::workflows::place::OrderLimits`]).
pub const CONFIRM_WITHIN: Duration = Duration::from_secs(10 * 60);
/// The cancellation reason recorded when the restaurant never confirmed.
pub const CONFIRM_TIMEOUT_REASON: &str = "the restaurant did not confirm the order in time";

fn notify(
    order_id: OrderId,
    audience: Audience,
    recipient_id: Option<i64>,
    event_type: &'static str,
    data: Value,
) -> Effect {
    Effect::Notify {
        order_id,
        audience,
        recipient_id,
        event_type,
        data,
    }
}

fn dispatch_event(
    order_id: OrderId,
    event_type: &'static str,
    actor: Actor,
    details: Value,
    publish: bool,
) -> Effect {
    Effect::Event(OrderEvent {
        order_id,
        topic: "dispatch",
        event_type,
        actor,
        details,
        publish,
    })
}

/// A new order (PAYMENT_PENDING): its payment is authorised at once.
pub fn placed(order_id: OrderId) -> Vec<Effect> {
    vec![Effect::job(
        AuthorizePayment {
            order_id,
            attempt: 1,
        },
        Duration::ZERO,
    )]
}

/// The payment was authorised and the order placed with its restaurant, which has
/// `confirm_within` to confirm it.
pub fn payment_authorized(
    order_id: OrderId,
    confirm_within: Duration,
    details: Value,
) -> Vec<Effect> {
    vec![
        Effect::job(ConfirmTimeout { order_id }, confirm_within),
        payment_event(order_id, "payment_authorized", Actor::System, details),
    ]
}

/// A hold was made for an order the customer cancelled while the request was out: it is
/// released at once.
pub fn authorized_after_cancel(order_id: OrderId, details: Value) -> Vec<Effect> {
    vec![
        payment_event(order_id, "payment_authorized", Actor::System, details),
        Effect::job(
            ReleasePayment {
                order_id,
                attempt: 1,
            },
            Duration::ZERO,
        ),
    ]
}

/// The authorisation ended without a hold (`payment_declined`, `payment_failed`): the
/// customer is told why (the order's cancellation is its own step).
pub fn authorization_refused(
    order_id: OrderId,
    customer: i64,
    event_type: &'static str,
    details: Value,
) -> Vec<Effect> {
    let mut data = json!({ "order_id": order_id });
    if let (Value::Object(data), Value::Object(details)) = (&mut data, &details) {
        for key in ["code", "message"] {
            data.insert(
                key.to_owned(),
                details.get(key).cloned().unwrap_or(Value::Null),
            );
        }
    }
    vec![
        payment_event(order_id, event_type, Actor::System, details),
        notify(
            order_id,
            Audience::Customer,
            Some(customer),
            event_type,
            data,
        ),
    ]
}

/// A call to the provider that may succeed later (`job`, the next attempt) is tried again
/// after `delay`.
pub fn payment_retry(
    job: impl Into<crate::jobs::messages::Message>,
    delay: Duration,
) -> Vec<Effect> {
    vec![Effect::job(job, delay)]
}

/// A payment event (`payment_*`, `refund_*`), published.
pub fn payment_event(
    order_id: OrderId,
    event_type: &'static str,
    actor: Actor,
    details: Value,
) -> Effect {
    Effect::Event(OrderEvent {
        order_id,
        topic: "payments",
        event_type,
        actor,
        details,
        publish: true,
    })
}

/// A refund was paid back: the customer hears of it.
pub fn refunded(order_id: OrderId, customer: i64, details: Value) -> Vec<Effect> {
    let data = json!({
        "order_id": order_id,
        "refund_id": details["refund_id"],
        "amount_cents": details["amount_cents"],
        "refunded_cents": details["refunded_cents"],
    });
    vec![
        payment_event(order_id, "payment_refunded", Actor::System, details),
        notify(
            order_id,
            Audience::Customer,
            Some(customer),
            "payment_refunded",
            data,
        ),
    ]
}

/// An order that entered `status`: the workflow's next steps and the parties' webhooks.
pub fn entered(order_id: OrderId, parties: &Parties, status: OrderStatus) -> Vec<Effect> {
    let data = json!({
        "order_id": order_id,
        "status": status,
        "customer_id": parties.customer_id,
        "restaurant_id": parties.restaurant_id,
        "driver_id": parties.driver_id,
    });
    let customer = Some(parties.customer_id.get());
    let driver = parties.driver_id.map(DriverId::get);
    let mut effects = match status {
        OrderStatus::Confirmed => vec![
            Effect::job(MatchDriver::new(order_id, 1), MATCH_DELAY),
            Effect::job(RefreshEta { order_id }, Duration::ZERO),
            notify(
                order_id,
                Audience::Customer,
                customer,
                "order_confirmed",
                data,
            ),
        ],
        // Without a driver yet, the driver hears of the order when it is assigned.
        OrderStatus::Placed => vec![notify(
            order_id,
            Audience::Restaurant,
            Some(parties.restaurant_id.get()),
            "order_placed",
            data,
        )],
        OrderStatus::ReadyForPickup => driver
            .map(|d| notify(order_id, Audience::Driver, Some(d), "order_ready", data))
            .into_iter()
            .collect(),
        OrderStatus::PickedUp => vec![
            Effect::job(RefreshEta { order_id }, Duration::ZERO),
            notify(
                order_id,
                Audience::Customer,
                customer,
                "order_picked_up",
                data,
            ),
        ],
        OrderStatus::Delivered => vec![
            Effect::job(
                CapturePayment {
                    order_id,
                    attempt: 1,
                },
                Duration::ZERO,
            ),
            Effect::job(
                crate::jobs::messages::RequestReview { order_id },
                REVIEW_DELAY,
            ),
            notify(
                order_id,
                Audience::Customer,
                customer,
                "order_delivered",
                data,
            ),
        ],
        OrderStatus::Cancelled => {
            let mut effects = vec![notify(
                order_id,
                Audience::Customer,
                customer,
                "order_cancelled",
                data.clone(),
            )];
            // The driver on the way must turn back at once.
            if let Some(d) = driver {
                effects.push(notify(
                    order_id,
                    Audience::Driver,
                    Some(d),
                    "order_cancelled",
                    data.clone(),
                ));
            }
            // A restaurant that was never asked (the payment was still pending) hears nothing.
            if parties.placed {
                effects.push(notify(
                    order_id,
                    Audience::Restaurant,
                    Some(parties.restaurant_id.get()),
                    "order_cancelled",
                    data,
                ));
            }
            // Any hold on the customer's money is released (the job checks there is one).
            effects.push(Effect::job(
                ReleasePayment {
                    order_id,
                    attempt: 1,
                },
                Duration::ZERO,
            ));
            effects
        }
        OrderStatus::PaymentPending | OrderStatus::Preparing | OrderStatus::Completed => Vec::new(),
    };
    // A delivered or cancelled order stops counting against its driver's capacity.
    let ends_a_load = matches!(status, OrderStatus::Delivered | OrderStatus::Cancelled);
    if let Some(driver) = parties.driver_id.filter(|_| ends_a_load) {
        effects.push(Effect::SyncDriverLoad(driver));
    }
    effects
}

/// The pending offers of a cancelled order ended: each driver learns the order is gone.
pub fn offers_cancelled(order_id: OrderId, offers: &[(OfferId, DriverId)]) -> Vec<Effect> {
    offers
        .iter()
        .flat_map(|(offer_id, driver)| {
            [
                notify(
                    order_id,
                    Audience::Driver,
                    Some(driver.get()),
                    "offer_cancelled",
                    json!({ "order_id": order_id, "offer_id": offer_id }),
                ),
                dispatch_event(
                    order_id,
                    "offer_cancelled",
                    Actor::System,
                    json!({ "offer_id": offer_id, "driver_id": driver }),
                    true,
                ),
            ]
        })
        .collect()
}

/// What a driver needs to decide on an offer: where to pick up, where to drop off, what it
/// pays and until when it stands.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct OfferTerms {
    pub pickup: Value,
    pub dropoff: Value,
    pub delivery_fee_cents: i64,
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

/// An offer was made to `driver`; it lapses after `ttl`. `details` is the round's account
/// (radius, candidates, score breakdown).
pub fn offer_made(
    order_id: OrderId,
    offer_id: OfferId,
    driver: DriverId,
    ttl: Duration,
    terms: &OfferTerms,
    mut details: Value,
) -> Vec<Effect> {
    let offer = json!({
        "order_id": order_id,
        "offer_id": offer_id,
        "driver_id": driver,
        "expires_at": terms.expires_at,
        "expires_in_s": ttl.as_secs_f64(),
        "pickup": terms.pickup,
        "dropoff": terms.dropoff,
        "delivery_fee_cents": terms.delivery_fee_cents,
    });
    if let (Some(fields), Value::Object(offer)) = (details.as_object_mut(), &offer) {
        for (key, value) in offer {
            if key != "order_id" {
                fields.insert(key.clone(), value.clone());
            }
        }
    }
    vec![
        Effect::job(OfferTimeout { offer_id }, ttl),
        notify(
            order_id,
            Audience::Driver,
            Some(driver.get()),
            "offer_made",
            offer,
        ),
        dispatch_event(order_id, "offer_made", Actor::System, details, true),
    ]
}

/// A pending offer ended unanswered (`Declined` or `Expired`): matching goes on at once, in
/// the same round (nobody is offered the order twice within the re-offer window).
pub fn offer_ended(
    order_id: OrderId,
    offer_id: OfferId,
    driver: DriverId,
    round: u32,
    status: OfferStatus,
    actor: Actor,
) -> Vec<Effect> {
    let event_type = if status == OfferStatus::Expired {
        "offer_expired"
    } else {
        "offer_declined"
    };
    vec![
        Effect::job(MatchDriver::new(order_id, round), Duration::ZERO),
        dispatch_event(
            order_id,
            event_type,
            actor,
            json!({ "offer_id": offer_id, "driver_id": driver, "round": round }),
            true,
        ),
    ]
}

/// The order was assigned to `driver` (who accepted `offer_id`).
pub fn assigned(
    order_id: OrderId,
    customer: i64,
    driver: DriverId,
    offer_id: OfferId,
    rounds: i32,
    seconds_since_confirmed: Option<f64>,
) -> Vec<Effect> {
    vec![
        dispatch_event(
            order_id,
            "driver_assigned",
            Actor::Driver(driver),
            json!({
                "offer_id": offer_id,
                "driver_id": driver,
                "round": rounds,
                "seconds_since_confirmed": seconds_since_confirmed,
            }),
            true,
        ),
        notify(
            order_id,
            Audience::Customer,
            Some(customer),
            "driver_assigned",
            json!({ "order_id": order_id, "driver_id": driver }),
        ),
        // The ETA now includes the driver's way to the restaurant.
        Effect::job(RefreshEta { order_id }, Duration::ZERO),
        Effect::SyncDriverLoad(driver),
    ]
}

/// What a round that found nobody reports.
#[derive(Clone, Debug, PartialEq)]
pub struct EmptyRound<'a> {
    pub round: u32,
    pub radius_km: f64,
    pub candidates_found: usize,
    pub reason: &'a str,
    /// The delay before the next round.
    pub retry_in: Duration,
    /// Whether this round flags the order for operators (it is the alert round).
    pub flag: bool,
    /// The delay between rounds from now on (for the flag's event).
    pub retry_every: Duration,
}

/// Round `round` found nobody: the next round is scheduled, and at the alert round the order
/// is flagged for operators.
pub fn round_empty(order_id: OrderId, empty: &EmptyRound<'_>) -> Vec<Effect> {
    let next = empty.round.saturating_add(1);
    let mut effects = vec![
        Effect::job(MatchDriver::new(order_id, next), empty.retry_in),
        dispatch_event(
            order_id,
            "match_round_empty",
            Actor::System,
            json!({
                "round": empty.round,
                "radius_km": empty.radius_km,
                "candidates_found": empty.candidates_found,
                "reason": empty.reason,
                "next_round": next,
                "retry_in_s": empty.retry_in.as_secs_f64(),
            }),
            false,
        ),
    ];
    if empty.flag {
        effects.push(dispatch_event(
            order_id,
            "order_unmatched",
            Actor::System,
            json!({
                "rounds": empty.round,
                "reason": empty.reason,
                "retry_every_s": empty.retry_every.as_secs_f64(),
            }),
            true,
        ));
    }
    effects
}

/// Matching of a waiting order with nothing scheduled starts again at its current round;
/// `via` says who noticed (the operators' CLI), when not the safety-net cron task.
pub fn matching_revived(order_id: OrderId, round: u32, via: Option<&str>) -> Vec<Effect> {
    let mut details = json!({ "round": round });
    if let (Some(via), Some(fields)) = (via, details.as_object_mut()) {
        fields.insert("via".to_owned(), via.into());
    }
    vec![
        Effect::job(MatchDriver::new(order_id, round), Duration::ZERO),
        dispatch_event(order_id, "matching_revived", Actor::System, details, false),
    ]
}

/// Round `round` of an order in a market that dispatches by cycle: the cycle will offer it;
/// the per-order round runs after `delay` (the order's due time plus the grace) only if it
/// has not.
pub fn handed_to_cycle(order_id: OrderId, round: u32, delay: Duration) -> Vec<Effect> {
    vec![Effect::job(
        MatchDriver {
            after_cycle: true,
            ..MatchDriver::new(order_id, round)
        },
        delay,
    )]
}

/// The restaurant changed its estimate of the food's preparation: the ETA follows.
pub fn prep_estimated(order_id: OrderId, minutes: f64, actor: Actor) -> Vec<Effect> {
    vec![
        Effect::job(RefreshEta { order_id }, Duration::ZERO),
        dispatch_event(
            order_id,
            "prep_estimate_updated",
            actor,
            json!({ "prep_minutes": minutes }),
            true,
        ),
    ]
}

/// The order's ETA changed (`refresh_eta`).
pub fn eta_updated(order_id: OrderId, eta: &crate::eta::Eta) -> Vec<Effect> {
    vec![Effect::Event(OrderEvent {
        order_id,
        topic: "eta",
        event_type: "eta_updated",
        actor: Actor::System,
        details: json!({
            "estimated_delivery_at": eta.eta,
            "confidence": eta.confidence,
            "breakdown": eta.breakdown,
        }),
        publish: true,
    })]
}

/// The review request is due: the customer is asked.
pub fn review_due(order_id: OrderId, customer: i64) -> Vec<Effect> {
    vec![
        notify(
            order_id,
            Audience::Customer,
            Some(customer),
            "review_requested",
            json!({ "order_id": order_id }),
        ),
        Effect::Event(OrderEvent {
            order_id,
            topic: "notifications",
            event_type: "review_requested",
            actor: Actor::System,
            details: json!({}),
            publish: false,
        }),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{RestaurantId, UserId};
    use crate::jobs::Message;

    const ORDER: OrderId = OrderId(5);

    fn parties(driver: Option<i64>) -> Parties {
        Parties {
            customer_id: UserId(1),
            restaurant_id: RestaurantId(2),
            driver_id: driver.map(DriverId),
            placed: true,
        }
    }

    /// Each effect in short: `job <queue> <delay s>`, `notify <audience> <type>`,
    /// `event <type>`, `sync <driver>`.
    fn summary(effects: &[Effect]) -> Vec<String> {
        effects
            .iter()
            .map(|e| match e {
                Effect::Job { job, delay } => {
                    let name = match job {
                        Message::ConfirmTimeout(_) => "confirm_timeout".to_owned(),
                        Message::MatchDriver(j) => format!("match_driver#{}", j.round),
                        Message::OfferTimeout(_) => "offer_timeout".to_owned(),
                        Message::RefreshEta(_) => "refresh_eta".to_owned(),
                        Message::Notify(_) => "notify".to_owned(),
                        Message::CapturePayment(j) => format!("capture_payment#{}", j.attempt),
                        Message::RequestReview(_) => "request_review".to_owned(),
                        Message::AuthorizePayment(j) => format!("authorize_payment#{}", j.attempt),
                        Message::ReleasePayment(j) => format!("release_payment#{}", j.attempt),
                        Message::RefundPayment(j) => format!("refund_payment#{}", j.attempt),
                    };
                    format!("job {name} {}", delay.as_secs())
                }
                Effect::Notify {
                    audience,
                    event_type,
                    ..
                } => format!("notify {audience} {event_type}"),
                Effect::Event(event) => format!("event {}", event.event_type),
                Effect::SyncDriverLoad(driver) => format!("sync {driver}"),
            })
            .collect()
    }

    #[test]
    fn confirmation_starts_matching_a_second_later_and_refreshes_the_eta() {
        assert_eq!(
            summary(&entered(ORDER, &parties(None), OrderStatus::Confirmed)),
            [
                "job match_driver#1 1",
                "job refresh_eta 0",
                "notify customer order_confirmed"
            ]
        );
    }

    #[test]
    fn delivery_captures_the_payment_asks_for_a_review_later_and_frees_the_driver() {
        assert_eq!(
            summary(&entered(ORDER, &parties(Some(9)), OrderStatus::Delivered)),
            [
                "job capture_payment#1 0",
                "job request_review 1800",
                "notify customer order_delivered",
                "sync 9"
            ]
        );
    }

    #[test]
    fn a_cancelled_order_tells_every_party_and_frees_its_driver() {
        assert_eq!(
            summary(&entered(ORDER, &parties(Some(9)), OrderStatus::Cancelled)),
            [
                "notify customer order_cancelled",
                "notify driver order_cancelled",
                "notify restaurant order_cancelled",
                "job release_payment#1 0",
                "sync 9"
            ]
        );
        assert_eq!(
            summary(&entered(ORDER, &parties(None), OrderStatus::Cancelled)),
            [
                "notify customer order_cancelled",
                "notify restaurant order_cancelled",
                "job release_payment#1 0"
            ]
        );
    }

    #[test]
    fn the_restaurant_hears_of_an_order_only_once_its_payment_is_authorised() {
        assert_eq!(summary(&placed(ORDER)), ["job authorize_payment#1 0"]);
        assert_eq!(
            summary(&payment_authorized(
                ORDER,
                Duration::from_secs(600),
                json!({})
            )),
            ["job confirm_timeout 600", "event payment_authorized"]
        );
        assert_eq!(
            summary(&entered(ORDER, &parties(None), OrderStatus::Placed)),
            ["notify restaurant order_placed"]
        );
        assert_eq!(
            summary(&authorized_after_cancel(ORDER, json!({}))),
            ["event payment_authorized", "job release_payment#1 0"]
        );
        let never_asked = Parties {
            placed: false,
            ..parties(None)
        };
        assert_eq!(
            summary(&entered(ORDER, &never_asked, OrderStatus::Cancelled)),
            ["notify customer order_cancelled", "job release_payment#1 0"]
        );
        let declined = authorization_refused(
            ORDER,
            1,
            "payment_declined",
            json!({ "code": "card_declined", "message": "no", "attempt": 1 }),
        );
        assert_eq!(
            summary(&declined),
            ["event payment_declined", "notify customer payment_declined"]
        );
        let Effect::Notify { data, .. } = &declined[1] else {
            panic!("a webhook");
        };
        assert_eq!(data["code"], "card_declined");
        assert!(data.get("attempt").is_none());
    }

    #[test]
    fn steps_that_keep_a_driver_busy_leave_its_load_alone() {
        for status in [
            OrderStatus::Preparing,
            OrderStatus::ReadyForPickup,
            OrderStatus::PickedUp,
        ] {
            let effects = summary(&entered(ORDER, &parties(Some(9)), status));
            assert!(
                !effects.iter().any(|e| e.starts_with("sync")),
                "{status}: {effects:?}"
            );
        }
        assert_eq!(
            summary(&entered(
                ORDER,
                &parties(Some(9)),
                OrderStatus::ReadyForPickup
            )),
            ["notify driver order_ready"]
        );
        assert!(entered(ORDER, &parties(None), OrderStatus::ReadyForPickup).is_empty());
    }

    #[test]
    fn offers_time_out_and_unanswered_ones_move_matching_on_in_the_same_round() {
        let terms = OfferTerms {
            pickup: json!({ "lat": 1.0, "lon": 2.0 }),
            dropoff: json!({ "lat": 3.0, "lon": 4.0 }),
            delivery_fee_cents: 299,
            expires_at: chrono::DateTime::from_timestamp(1_700_000_030, 0).unwrap_or_default(),
        };
        let made = offer_made(
            ORDER,
            OfferId(3),
            DriverId(9),
            Duration::from_secs(30),
            &terms,
            json!({ "round": 1 }),
        );
        assert_eq!(
            summary(&made),
            [
                "job offer_timeout 30",
                "notify driver offer_made",
                "event offer_made"
            ]
        );
        let Effect::Event(event) = &made[2] else {
            panic!("an event");
        };
        assert_eq!(event.details["offer_id"], 3);
        assert_eq!(event.details["round"], 1);
        assert_eq!(event.details["pickup"]["lat"], 1.0);
        assert!(event.publish);
        let Effect::Notify { data, .. } = &made[1] else {
            panic!("a webhook");
        };
        assert_eq!(data["dropoff"]["lon"], 4.0);
        assert_eq!(data["expires_at"], "2023-11-14T22:13:50Z");
        assert_eq!(data["delivery_fee_cents"], 299);
        let ended = offer_ended(
            ORDER,
            OfferId(3),
            DriverId(9),
            2,
            OfferStatus::Expired,
            Actor::System,
        );
        assert_eq!(
            summary(&ended),
            ["job match_driver#2 0", "event offer_expired"]
        );
    }

    #[test]
    fn assignment_refreshes_the_eta_and_the_drivers_load() {
        assert_eq!(
            summary(&assigned(ORDER, 1, DriverId(9), OfferId(3), 1, Some(4.0))),
            [
                "event driver_assigned",
                "notify customer driver_assigned",
                "job refresh_eta 0",
                "sync 9"
            ]
        );
    }

    #[test]
    fn an_empty_round_schedules_the_next_and_the_alert_round_flags_the_order() {
        let empty = EmptyRound {
            round: 5,
            radius_km: 10.0,
            candidates_found: 0,
            reason: "no eligible driver",
            retry_in: Duration::from_secs(120),
            flag: true,
            retry_every: Duration::from_secs(120),
        };
        assert_eq!(
            summary(&round_empty(ORDER, &empty)),
            [
                "job match_driver#6 120",
                "event match_round_empty",
                "event order_unmatched"
            ]
        );
        let quiet = EmptyRound {
            flag: false,
            ..empty
        };
        assert_eq!(summary(&round_empty(ORDER, &quiet)).len(), 2);
    }
}
