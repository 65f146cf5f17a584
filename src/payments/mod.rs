//! Payment providers: a [`PaymentProvider`] authorises an order's total on the customer's
//! payment method, captures it, releases the hold, and refunds — the Stripe-style HTTP client
//! ([`stripe`]) in production, the Postgres [`ledger`] in development and the simulator.
//! Every request carries an idempotency key derived from the order (or the refund), so the
//! same key never moves money twice. When each call is made, and what an outcome leads to, is
//! the order's workflow ([`crate::workflows::payment`]).

pub mod ledger;
pub mod stripe;

use std::time::Duration;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::domain::OrderId;
use crate::payments::ledger::LedgerProvider;
use crate::payments::stripe::StripeClient;

/// Authorise `amount_cents` on `payment_method`, for capture later.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthorizeRequest {
    pub order_id: OrderId,
    pub idempotency_key: String,
    pub amount_cents: i64,
    pub currency: String,
    pub payment_method: String,
}

/// Capture, release (cancel) or refund an authorised intent. `amount_cents` is what to
/// capture or refund; a release ignores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IntentRequest {
    pub order_id: OrderId,
    pub idempotency_key: String,
    pub intent_id: Option<String>,
    pub amount_cents: i64,
}

/// What the provider said.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Done (now or by an earlier request with the same key); `reference` is the intent's id
    /// (the refund's, for a refund).
    Succeeded { reference: String },
    /// The payment method was declined, or needs the customer's action: permanent.
    Declined { code: String, message: String },
    /// The request can never succeed as it is (no intent, wrong state): permanent.
    Rejected { code: String, message: String },
    /// Try again later.
    Retryable {
        http_status: Option<u16>,
        detail: String,
    },
}

impl Outcome {
    /// The label stored in `payment_attempts.outcome`.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Succeeded { .. } => "succeeded",
            Outcome::Declined { .. } => "declined",
            Outcome::Rejected { .. } => "rejected",
            Outcome::Retryable { .. } => "retryable",
        }
    }

    /// The HTTP status worth recording, if any.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            Outcome::Declined { .. } => Some(402),
            Outcome::Retryable { http_status, .. } => *http_status,
            Outcome::Succeeded { .. } | Outcome::Rejected { .. } => None,
        }
    }

    /// One line for the attempt's record and the logs.
    pub fn detail(&self) -> String {
        match self {
            Outcome::Succeeded { reference } => reference.clone(),
            Outcome::Declined { code, message } | Outcome::Rejected { code, message } => {
                format!("{code}: {message}")
            }
            Outcome::Retryable { detail, .. } => detail.clone(),
        }
    }
}

/// Something that moves a customer's money.
pub trait PaymentProvider: Send + Sync {
    /// Authorises (holds) the amount; the same key never authorises twice.
    fn authorize(&self, request: &AuthorizeRequest) -> impl Future<Output = Outcome> + Send;
    /// Captures the amount of the authorised intent.
    fn capture(&self, request: &IntentRequest) -> impl Future<Output = Outcome> + Send;
    /// Cancels the authorised intent, releasing the hold.
    fn release(&self, request: &IntentRequest) -> impl Future<Output = Outcome> + Send;
    /// Refunds the amount of the captured intent.
    fn refund(&self, request: &IntentRequest) -> impl Future<Output = Outcome> + Send;
}

/// The configured provider.
#[derive(Clone, Debug)]
pub enum Provider {
    Ledger(LedgerProvider),
    Stripe(StripeClient),
}

impl Provider {
    /// The provider's name, as stored in `payments.provider`.
    pub fn name(&self) -> &'static str {
        match self {
            Provider::Ledger(_) => "ledger",
            Provider::Stripe(_) => "stripe",
        }
    }
}

impl PaymentProvider for Provider {
    async fn authorize(&self, request: &AuthorizeRequest) -> Outcome {
        match self {
            Provider::Ledger(p) => p.authorize(request).await,
            Provider::Stripe(p) => p.authorize(request).await,
        }
    }

    async fn capture(&self, request: &IntentRequest) -> Outcome {
        match self {
            Provider::Ledger(p) => p.capture(request).await,
            Provider::Stripe(p) => p.capture(request).await,
        }
    }

    async fn release(&self, request: &IntentRequest) -> Outcome {
        match self {
            Provider::Ledger(p) => p.release(request).await,
            Provider::Stripe(p) => p.release(request).await,
        }
    }

    async fn refund(&self, request: &IntentRequest) -> Outcome {
        match self {
            Provider::Ledger(p) => p.refund(request).await,
            Provider::Stripe(p) => p.refund(request).await,
        }
    }
}

/// Which provider, and how to retry.
#[derive(Clone, Debug)]
pub struct PaymentSettings {
    /// `None` uses the ledger; `Some((base URL, secret key))` the Stripe-style API.
    pub stripe: Option<(String, SecretString)>,
    pub timeout: Duration,
    /// Delay before the second attempt; doubles per attempt.
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// Attempts before a call is given up and flagged (an authorisation: the order is
    /// cancelled; a capture or a refund: it waits for an operator).
    pub max_attempts: u32,
}

impl Default for PaymentSettings {
    fn default() -> Self {
        Self {
            stripe: None,
            timeout: Duration::from_secs(10),
            retry_base: Duration::from_secs(10),
            retry_cap: Duration::from_secs(600),
            max_attempts: 8,
        }
    }
}

/// Delay before attempt `attempt + 1`: `base × 2^(attempt−1)`, at most `cap`.
pub fn retry_delay(settings: &PaymentSettings, attempt: u32) -> Duration {
    crate::jobs::backoff(settings.retry_base, settings.retry_cap, attempt)
}

/// Payments: the provider and the settings. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Payments {
    pub provider: Provider,
    pub settings: PaymentSettings,
}

impl Payments {
    /// The configured provider on `db`.
    pub fn new(db: PgPool, settings: PaymentSettings) -> reqwest::Result<Self> {
        let provider = match &settings.stripe {
            Some((base, key)) => Provider::Stripe(StripeClient::new(base, key, settings.timeout)?),
            None => Provider::Ledger(LedgerProvider::new(db)),
        };
        Ok(Self { provider, settings })
    }
}

/// A payment method token as clients send it: the provider's id (`pm_…`), 4 to 255 letters,
/// digits and underscores.
pub fn valid_payment_method(token: &str) -> bool {
    (4..=255).contains(&token.len())
        && token.starts_with("pm_")
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payment_methods_are_provider_tokens() {
        assert!(valid_payment_method("pm_card_visa"));
        assert!(valid_payment_method("pm_1NxYz2AbCdEf"));
        for bad in [
            "",
            "pm_",
            "card_visa",
            "pm_card visa",
            "pm_x&amount=1",
            "pm_é",
        ] {
            assert!(!valid_payment_method(bad), "{bad}");
        }
        assert!(!valid_payment_method(&format!("pm_{}", "a".repeat(253))));
    }

    #[test]
    fn outcomes_keep_their_stored_form() {
        let outcome = Outcome::Declined {
            code: "card_declined".to_owned(),
            message: "no".to_owned(),
        };
        let json = serde_json::to_value(&outcome).expect("encodes");
        assert_eq!(json["outcome"], "declined");
        assert_eq!(
            serde_json::from_value::<Outcome>(json).expect("decodes"),
            outcome
        );
        assert_eq!(outcome.label(), "declined");
        assert_eq!(outcome.http_status(), Some(402));
    }
}
