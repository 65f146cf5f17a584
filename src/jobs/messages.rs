//! The job kinds' arguments: what each job is told, stored as JSON in `apalis.jobs.job` under
//! its queue. Who enqueues each, and why, is the order's workflow (`src/workflows/`); what each
//! does is its handler in `src/workers/`.
//!
//! A queue name or a field's JSON form is a stored format: jobs enqueued by the previous
//! release must still decode.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::{Audience, OfferId, OrderId};
use crate::jobs::Job;

/// Cancels a placed order its restaurant did not confirm in time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfirmTimeout {
    pub order_id: OrderId,
}

impl Job for ConfirmTimeout {
    const QUEUE: &'static str = "courier::confirm_timeout";
    const MAX_ATTEMPTS: usize = 10;
}

/// One matching round of an order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatchDriver {
    pub order_id: OrderId,
    /// Which matching round this is (1 for the first).
    pub round: u32,
    /// The per-order fallback of an order its market's dispatch cycle was given: it runs the
    /// round only if the cycle has not offered the order by then (absent in jobs of earlier
    /// releases: `false`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub after_cycle: bool,
}

impl MatchDriver {
    /// Round `round` of `order_id`.
    pub fn new(order_id: OrderId, round: u32) -> Self {
        Self {
            order_id,
            round,
            after_cycle: false,
        }
    }
}

impl Job for MatchDriver {
    const QUEUE: &'static str = "courier::match_driver";
    const MAX_ATTEMPTS: usize = 5;
}

/// Expires an offer its driver did not answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferTimeout {
    pub offer_id: OfferId,
}

impl Job for OfferTimeout {
    const QUEUE: &'static str = "courier::offer_timeout";
    const MAX_ATTEMPTS: usize = 10;
}

/// Recomputes an order's ETA.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshEta {
    pub order_id: OrderId,
}

impl Job for RefreshEta {
    const QUEUE: &'static str = "courier::refresh_eta";
    const MAX_ATTEMPTS: usize = 5;
}

/// One webhook delivery attempt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Notify {
    /// Stable across retries: receivers dedupe on it.
    pub event_id: uuid::Uuid,
    pub order_id: OrderId,
    pub audience: Audience,
    /// The customer's user id, the driver's or the restaurant's id, as the audience says.
    pub recipient_id: Option<i64>,
    pub event_type: String,
    pub data: Value,
    pub created_at: DateTime<Utc>,
    pub attempt: u32,
}

impl Job for Notify {
    const QUEUE: &'static str = "courier::notify";
    const MAX_ATTEMPTS: usize = 5;
}

fn first_attempt() -> u32 {
    1
}

/// Captures a delivered order's payment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapturePayment {
    pub order_id: OrderId,
    /// Which attempt this is (1 for the first).
    #[serde(default = "first_attempt")]
    pub attempt: u32,
}

impl Job for CapturePayment {
    const QUEUE: &'static str = "courier::capture_payment";
    const MAX_ATTEMPTS: usize = 10;
}

/// Authorises a new order's payment (it then leaves PAYMENT_PENDING).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizePayment {
    pub order_id: OrderId,
    /// Which attempt this is (1 for the first).
    pub attempt: u32,
}

impl Job for AuthorizePayment {
    const QUEUE: &'static str = "courier::authorize_payment";
    const MAX_ATTEMPTS: usize = 10;
}

/// Releases the hold on a cancelled order's payment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleasePayment {
    pub order_id: OrderId,
    /// Which attempt this is (1 for the first).
    pub attempt: u32,
}

impl Job for ReleasePayment {
    const QUEUE: &'static str = "courier::release_payment";
    const MAX_ATTEMPTS: usize = 10;
}

/// Pays back one refund an operator asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundPayment {
    pub refund_id: i64,
    pub order_id: OrderId,
    /// Which attempt this is (1 for the first).
    pub attempt: u32,
}

impl Job for RefundPayment {
    const QUEUE: &'static str = "courier::refund_payment";
    const MAX_ATTEMPTS: usize = 10;
}

/// Asks the customer for a review.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestReview {
    pub order_id: OrderId,
}

impl Job for RequestReview {
    const QUEUE: &'static str = "courier::request_review";
    const MAX_ATTEMPTS: usize = 5;
}

/// Every queue courier runs.
pub const QUEUES: [&str; 10] = [
    AuthorizePayment::QUEUE,
    ConfirmTimeout::QUEUE,
    MatchDriver::QUEUE,
    OfferTimeout::QUEUE,
    RefreshEta::QUEUE,
    CapturePayment::QUEUE,
    Notify::QUEUE,
    RequestReview::QUEUE,
    ReleasePayment::QUEUE,
    RefundPayment::QUEUE,
];

/// A job of any kind, as the workflow's effects carry it.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    ConfirmTimeout(ConfirmTimeout),
    MatchDriver(MatchDriver),
    OfferTimeout(OfferTimeout),
    RefreshEta(RefreshEta),
    Notify(Box<Notify>),
    CapturePayment(CapturePayment),
    RequestReview(RequestReview),
    AuthorizePayment(AuthorizePayment),
    ReleasePayment(ReleasePayment),
    RefundPayment(RefundPayment),
}

macro_rules! message_from {
    ($($kind:ident),+) => {$(
        impl From<$kind> for Message {
            fn from(job: $kind) -> Self {
                Message::$kind(job)
            }
        }
    )+};
}

message_from!(
    ConfirmTimeout,
    MatchDriver,
    OfferTimeout,
    RefreshEta,
    CapturePayment,
    RequestReview,
    AuthorizePayment,
    ReleasePayment,
    RefundPayment
);

impl From<Notify> for Message {
    fn from(job: Notify) -> Self {
        Message::Notify(Box::new(job))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_arguments_keep_their_stored_json_form() {
        let job = MatchDriver::new(OrderId(7), 2);
        assert_eq!(
            serde_json::to_string(&job).expect("encodes"),
            r#"{"order_id":7,"round":2}"#
        );
        let fallback = MatchDriver {
            after_cycle: true,
            ..job.clone()
        };
        let encoded = serde_json::to_string(&fallback).expect("encodes");
        assert_eq!(encoded, r#"{"order_id":7,"round":2,"after_cycle":true}"#);
        let decoded: MatchDriver = serde_json::from_str(&encoded).expect("decodes");
        assert_eq!(decoded, fallback);
        let old: CapturePayment = serde_json::from_str(r#"{"order_id":7}"#).expect("decodes");
        assert_eq!(old.attempt, 1);
        let unique: std::collections::BTreeSet<_> = QUEUES.into_iter().collect();
        assert_eq!(unique.len(), QUEUES.len());
    }
}
