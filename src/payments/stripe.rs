//! A Stripe-style payment API client, speaking Stripe's documented shapes: form-encoded
//! bodies, `Authorization: Bearer <secret key>`, and an `Idempotency-Key` header on every
//! request, so that a repeated request (a re-run after a crash) returns the first result
//! instead of moving money again.
//!
//! | operation | request | success |
//! |---|---|---|
//! | authorise | `POST /v1/payment_intents` (`confirm=true`, `capture_method=manual`, `error_on_requires_action=true`) | intent `requires_capture` |
//! | capture | `POST /v1/payment_intents/{id}/capture` (`amount_to_capture`) | intent `succeeded` |
//! | release | `POST /v1/payment_intents/{id}/cancel` | intent `canceled` (also: already canceled) |
//! | refund | `POST /v1/refunds` (`payment_intent`, `amount`) | refund `succeeded` or `pending` |
//!
//! Responses are classified by [`classify`] (pure): success, a decline (402, or an intent that
//! needs the customer's action), a permanent rejection (other 4xx), or a retryable failure
//! (409 idempotency conflict, 429, 5xx, timeouts, unreadable success bodies).

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::payments::{AuthorizeRequest, IntentRequest, Outcome};

/// A Stripe-style API. Its `Debug` never prints the key.
#[derive(Clone, Debug)]
pub struct StripeClient {
    base: String,
    secret_key: SecretString,
    http: reqwest::Client,
}

/// The call whose response is classified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Authorize,
    Capture,
    Release,
    Refund,
}

/// A payment intent or a refund: both have an id and a status.
#[derive(Debug, Deserialize)]
struct Object {
    id: String,
    status: String,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Debug, Deserialize)]
struct ErrorDetail {
    #[serde(rename = "type")]
    kind: Option<String>,
    code: Option<String>,
    decline_code: Option<String>,
    message: Option<String>,
    payment_intent: Option<Object>,
}

/// What a 2xx object of `operation` means.
fn classify_object(operation: Operation, object: Object) -> Outcome {
    let done = match operation {
        Operation::Authorize => object.status == "requires_capture",
        Operation::Capture => object.status == "succeeded",
        Operation::Release => object.status == "canceled",
        Operation::Refund => matches!(object.status.as_str(), "succeeded" | "pending"),
    };
    if done {
        return Outcome::Succeeded {
            reference: object.id,
        };
    }
    let needs_customer = operation == Operation::Authorize
        && matches!(
            object.status.as_str(),
            "requires_action" | "requires_payment_method" | "requires_confirmation"
        );
    if needs_customer {
        return Outcome::Declined {
            code: "authentication_required".to_owned(),
            message: format!(
                "payment intent {} is {}: the customer must act",
                object.id, object.status
            ),
        };
    }
    Outcome::Rejected {
        code: "unexpected_status".to_owned(),
        message: format!("{} is {}", object.id, object.status),
    }
}

/// What a response to `operation` means.
pub fn classify(operation: Operation, status: u16, body: &[u8]) -> Outcome {
    if (200..300).contains(&status) {
        return match serde_json::from_slice::<Object>(body) {
            Ok(object) => classify_object(operation, object),
            Err(e) => Outcome::Retryable {
                http_status: Some(status),
                detail: format!("unreadable success body: {e}"),
            },
        };
    }
    let detail = serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .map(|b| b.error);
    // Cancelling an intent that is already canceled is what a release wanted.
    if operation == Operation::Release
        && let Some(intent) = detail
            .as_ref()
            .and_then(|d| d.payment_intent.as_ref())
            .filter(|i| i.status == "canceled")
    {
        return Outcome::Succeeded {
            reference: intent.id.clone(),
        };
    }
    let code = detail
        .as_ref()
        .and_then(|d| {
            d.decline_code
                .clone()
                .or_else(|| d.code.clone())
                .or_else(|| d.kind.clone())
        })
        .unwrap_or_else(|| format!("http_{status}"));
    let message = detail
        .and_then(|d| d.message)
        .unwrap_or_else(|| format!("HTTP {status}"));
    match status {
        402 => Outcome::Declined { code, message },
        409 | 429 | 500..=599 => Outcome::Retryable {
            http_status: Some(status),
            detail: format!("{code}: {message}"),
        },
        _ => Outcome::Rejected { code, message },
    }
}

impl StripeClient {
    /// A client of the API at `base` (e.g. `https://api.stripe.com`).
    pub fn new(base: &str, secret_key: &SecretString, timeout: Duration) -> reqwest::Result<Self> {
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            secret_key: secret_key.clone(),
            http: reqwest::Client::builder()
                .timeout(timeout)
                .connect_timeout(timeout)
                .build()?,
        })
    }

    /// Creates and confirms a manual-capture payment intent for the order's total.
    pub async fn authorize(&self, request: &AuthorizeRequest) -> Outcome {
        let form = form(&[
            ("amount", request.amount_cents.to_string()),
            ("currency", request.currency.to_ascii_lowercase()),
            ("payment_method", request.payment_method.clone()),
            ("confirm", "true".to_owned()),
            ("capture_method", "manual".to_owned()),
            ("error_on_requires_action", "true".to_owned()),
            ("metadata[order_id]", request.order_id.to_string()),
        ]);
        self.post(
            Operation::Authorize,
            "/v1/payment_intents",
            &request.idempotency_key,
            form,
        )
        .await
    }

    /// Captures `amount_cents` of the authorised intent.
    pub async fn capture(&self, request: &IntentRequest) -> Outcome {
        let Some(intent) = request.intent_id.as_deref() else {
            return no_intent();
        };
        let path = format!("/v1/payment_intents/{}/capture", urlencode(intent));
        let body = form(&[("amount_to_capture", request.amount_cents.to_string())]);
        self.post(Operation::Capture, &path, &request.idempotency_key, body)
            .await
    }

    /// Cancels the authorised intent.
    pub async fn release(&self, request: &IntentRequest) -> Outcome {
        let Some(intent) = request.intent_id.as_deref() else {
            return no_intent();
        };
        let path = format!("/v1/payment_intents/{}/cancel", urlencode(intent));
        let body = form(&[("cancellation_reason", "abandoned".to_owned())]);
        self.post(Operation::Release, &path, &request.idempotency_key, body)
            .await
    }

    /// Refunds `amount_cents` of the captured intent.
    pub async fn refund(&self, request: &IntentRequest) -> Outcome {
        let Some(intent) = request.intent_id.as_deref() else {
            return no_intent();
        };
        let body = form(&[
            ("payment_intent", intent.to_owned()),
            ("amount", request.amount_cents.to_string()),
            ("metadata[order_id]", request.order_id.to_string()),
        ]);
        self.post(
            Operation::Refund,
            "/v1/refunds",
            &request.idempotency_key,
            body,
        )
        .await
    }

    async fn post(&self, operation: Operation, path: &str, key: &str, body: String) -> Outcome {
        let sent = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(self.secret_key.expose_secret())
            .header("Idempotency-Key", key)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(e) => {
                return Outcome::Retryable {
                    http_status: None,
                    detail: if e.is_timeout() {
                        "timed out".to_owned()
                    } else {
                        format!("request failed: {e}")
                    },
                };
            }
        };
        let status = response.status().as_u16();
        match response.bytes().await {
            Ok(body) => classify(operation, status, &body),
            Err(e) => Outcome::Retryable {
                http_status: Some(status),
                detail: format!("reading the response failed: {e}"),
            },
        }
    }
}

fn no_intent() -> Outcome {
    Outcome::Rejected {
        code: "no_payment_intent".to_owned(),
        message: "the order has no authorised payment intent".to_owned(),
    }
}

/// A form-encoded body.
fn form(fields: &[(&str, String)]) -> String {
    fields
        .iter()
        .map(|(name, value)| format!("{}={}", urlencode(name), urlencode(value)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Percent-encodes a path segment or a form field (ids are `pi_…`, but never trust input).
fn urlencode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn succeeded(reference: &str) -> Outcome {
        Outcome::Succeeded {
            reference: reference.to_owned(),
        }
    }

    #[test]
    fn each_operation_succeeds_on_its_own_status() {
        let cases = [
            (Operation::Authorize, "requires_capture"),
            (Operation::Capture, "succeeded"),
            (Operation::Release, "canceled"),
            (Operation::Refund, "succeeded"),
            (Operation::Refund, "pending"),
        ];
        for (operation, status) in cases {
            let body = format!(r#"{{"id":"x_1","object":"payment_intent","status":"{status}"}}"#);
            assert_eq!(
                classify(operation, 200, body.as_bytes()),
                succeeded("x_1"),
                "{operation:?}"
            );
        }
        assert!(matches!(
            classify(
                Operation::Capture,
                200,
                br#"{"id":"pi_1","status":"requires_capture"}"#
            ),
            Outcome::Rejected { .. }
        ));
    }

    #[test]
    fn an_authorisation_that_needs_the_customer_is_a_decline() {
        for status in ["requires_action", "requires_payment_method"] {
            let body = format!(r#"{{"id":"pi_1","status":"{status}"}}"#);
            assert!(matches!(
                classify(Operation::Authorize, 200, body.as_bytes()),
                Outcome::Declined { ref code, .. } if code == "authentication_required"
            ));
        }
    }

    #[test]
    fn a_402_is_a_decline_with_the_decline_code() {
        let body = br#"{"error":{"type":"card_error","code":"card_declined","decline_code":"insufficient_funds","message":"Your card has insufficient funds."}}"#;
        assert_eq!(
            classify(Operation::Authorize, 402, body),
            Outcome::Declined {
                code: "insufficient_funds".to_owned(),
                message: "Your card has insufficient funds.".to_owned()
            }
        );
    }

    #[test]
    fn releasing_an_intent_that_is_already_canceled_succeeds() {
        let body = br#"{"error":{"type":"invalid_request_error","code":"payment_intent_unexpected_state","message":"You cannot cancel this PaymentIntent because it has a status of canceled.","payment_intent":{"id":"pi_9","status":"canceled"}}}"#;
        assert_eq!(classify(Operation::Release, 400, body), succeeded("pi_9"));
        assert!(matches!(
            classify(Operation::Capture, 400, body),
            Outcome::Rejected { .. }
        ));
    }

    #[test]
    fn server_errors_rate_limits_and_conflicts_are_retryable() {
        for status in [409, 429, 500, 503] {
            assert!(
                matches!(
                    classify(Operation::Capture, status, b"oops"),
                    Outcome::Retryable { .. }
                ),
                "{status}"
            );
        }
        assert!(matches!(
            classify(Operation::Refund, 200, b"not json"),
            Outcome::Retryable { .. }
        ));
    }

    #[test]
    fn other_client_errors_are_permanent() {
        let body = br#"{"error":{"type":"invalid_request_error","code":"payment_intent_unexpected_state","message":"This PaymentIntent could not be captured."}}"#;
        assert!(matches!(
            classify(Operation::Capture, 400, body),
            Outcome::Rejected { ref code, .. } if code == "payment_intent_unexpected_state"
        ));
        assert!(matches!(
            classify(Operation::Authorize, 401, b""),
            Outcome::Rejected { .. }
        ));
    }

    #[test]
    fn forms_and_path_segments_are_encoded() {
        assert_eq!(urlencode("pi_3Mt-x.1"), "pi_3Mt-x.1");
        assert_eq!(urlencode("pi/../x y"), "pi%2F..%2Fx%20y");
        assert_eq!(
            form(&[
                ("amount", "100".to_owned()),
                ("metadata[order_id]", "7".to_owned())
            ]),
            "amount=100&metadata%5Border_id%5D=7"
        );
    }
}
