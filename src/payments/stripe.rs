//! A Stripe-style payment API client: `POST {base}/v1/payment_intents/{id}/capture`,
//! form-encoded, `Authorization: Bearer <secret key>`, and an `Idempotency-Key` header so that
//! a repeated request (a re-run after a crash) returns the first result instead of charging
//! again. Responses are classified by [`classify`] (pure): success, a decline (402), a
//! permanent rejection (other 4xx), or a retryable failure (409 idempotency conflict, 429,
//! 5xx, timeouts, unreadable success bodies).

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::payments::{CaptureOutcome, CaptureRequest};

/// A Stripe-style API. Its `Debug` never prints the key.
#[derive(Clone, Debug)]
pub struct StripeClient {
    base: String,
    secret_key: SecretString,
    http: reqwest::Client,
}

#[derive(Debug, Deserialize)]
struct Intent {
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
}

/// What a capture response means.
pub fn classify(status: u16, body: &[u8]) -> CaptureOutcome {
    if (200..300).contains(&status) {
        return match serde_json::from_slice::<Intent>(body) {
            Ok(intent) if intent.status == "succeeded" => CaptureOutcome::Captured {
                reference: intent.id,
            },
            Ok(intent) => CaptureOutcome::Rejected {
                code: "unexpected_status".to_owned(),
                message: format!("payment intent {} is {}", intent.id, intent.status),
            },
            Err(e) => CaptureOutcome::Retryable {
                http_status: Some(status),
                detail: format!("unreadable success body: {e}"),
            },
        };
    }
    let detail = serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .map(|b| b.error);
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
        402 => CaptureOutcome::Declined { code, message },
        409 | 429 | 500..=599 => CaptureOutcome::Retryable {
            http_status: Some(status),
            detail: format!("{code}: {message}"),
        },
        _ => CaptureOutcome::Rejected { code, message },
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

    /// Captures `request.amount_cents` of the request's payment intent.
    pub async fn capture(&self, request: &CaptureRequest) -> CaptureOutcome {
        let Some(intent) = request.payment_intent_id.as_deref() else {
            return CaptureOutcome::Rejected {
                code: "no_payment_intent".to_owned(),
                message: "the order has no payment intent to capture".to_owned(),
            };
        };
        let url = format!(
            "{}/v1/payment_intents/{}/capture",
            self.base,
            urlencode(intent)
        );
        let body = format!("amount_to_capture={}", request.amount_cents);
        let sent = self
            .http
            .post(url)
            .bearer_auth(self.secret_key.expose_secret())
            .header("Idempotency-Key", &request.idempotency_key)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(e) => {
                return CaptureOutcome::Retryable {
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
            Ok(body) => classify(status, &body),
            Err(e) => CaptureOutcome::Retryable {
                http_status: Some(status),
                detail: format!("reading the response failed: {e}"),
            },
        }
    }
}

/// Percent-encodes a path segment (payment intent ids are `pi_…`, but never trust input).
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

    #[test]
    fn a_succeeded_intent_is_a_capture() {
        let outcome = classify(
            200,
            br#"{"id":"pi_123","object":"payment_intent","status":"succeeded"}"#,
        );
        assert_eq!(
            outcome,
            CaptureOutcome::Captured {
                reference: "pi_123".to_owned()
            }
        );
    }

    #[test]
    fn a_402_is_a_decline_with_the_decline_code() {
        let body = br#"{"error":{"type":"card_error","code":"card_declined","decline_code":"insufficient_funds","message":"Your card has insufficient funds."}}"#;
        assert_eq!(
            classify(402, body),
            CaptureOutcome::Declined {
                code: "insufficient_funds".to_owned(),
                message: "Your card has insufficient funds.".to_owned()
            }
        );
    }

    #[test]
    fn server_errors_rate_limits_and_conflicts_are_retryable() {
        for status in [409, 429, 500, 503] {
            assert!(
                matches!(classify(status, b"oops"), CaptureOutcome::Retryable { .. }),
                "{status}"
            );
        }
        assert!(matches!(
            classify(200, b"not json"),
            CaptureOutcome::Retryable { .. }
        ));
    }

    #[test]
    fn other_client_errors_are_permanent() {
        let body = br#"{"error":{"type":"invalid_request_error","code":"payment_intent_unexpected_state","message":"This PaymentIntent could not be captured."}}"#;
        assert!(matches!(
            classify(400, body),
            CaptureOutcome::Rejected { ref code, .. } if code == "payment_intent_unexpected_state"
        ));
        assert!(matches!(
            classify(401, b""),
            CaptureOutcome::Rejected { .. }
        ));
        assert!(matches!(
            classify(200, br#"{"id":"pi_1","status":"requires_capture"}"#),
            CaptureOutcome::Rejected { .. }
        ));
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(urlencode("pi_3Mt-x.1"), "pi_3Mt-x.1");
        assert_eq!(urlencode("pi/../x y"), "pi%2F..%2Fx%20y");
    }
}
