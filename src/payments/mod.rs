//! Payment providers: a [`PaymentProvider`] captures an order's payment — the Stripe-style
//! HTTP client ([`stripe`]) in production, the Postgres [`ledger`] in development — with an
//! idempotency key, so the same key never charges twice. What is captured when, and what an
//! outcome leads to, is the order's workflow ([`crate::workflows::payment`]).

pub mod ledger;
pub mod stripe;

use std::time::Duration;

use secrecy::SecretString;
use sqlx::PgPool;

use crate::payments::ledger::LedgerProvider;
use crate::payments::stripe::StripeClient;

/// A capture to make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureRequest {
    pub order_id: crate::domain::OrderId,
    pub idempotency_key: String,
    pub amount_cents: i64,
    pub currency: String,
    pub payment_intent_id: Option<String>,
}

/// What the provider said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaptureOutcome {
    /// Captured (now or by an earlier request with the same key).
    Captured { reference: String },
    /// The payment method was declined: permanent.
    Declined { code: String, message: String },
    /// The request can never succeed as it is (no intent, wrong state): permanent.
    Rejected { code: String, message: String },
    /// Try again later.
    Retryable {
        http_status: Option<u16>,
        detail: String,
    },
}

/// Something that captures payments.
pub trait PaymentProvider: Send + Sync {
    /// Captures `request`; the same idempotency key must never capture twice.
    fn capture(&self, request: &CaptureRequest) -> impl Future<Output = CaptureOutcome> + Send;
}

impl PaymentProvider for StripeClient {
    async fn capture(&self, request: &CaptureRequest) -> CaptureOutcome {
        StripeClient::capture(self, request).await
    }
}

impl PaymentProvider for LedgerProvider {
    async fn capture(&self, request: &CaptureRequest) -> CaptureOutcome {
        LedgerProvider::capture(self, request).await
    }
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
    async fn capture(&self, request: &CaptureRequest) -> CaptureOutcome {
        match self {
            Provider::Ledger(p) => p.capture(request).await,
            Provider::Stripe(p) => p.capture(request).await,
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
    /// Attempts before the capture is given up and flagged.
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
