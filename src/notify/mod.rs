//! Notifications as signed webhooks: each is an apalis `notify` job (one per event and
//! audience), so a slow or dead endpoint delays only its own deliveries.
//!
//! # The webhook
//! `POST <audience URL>` with a JSON body
//! `{"id": <event uuid>, "type": "order_ready", "created_at": …, "order_id": …,
//! "recipient": {"type": "driver", "id": 7}, "data": {…}}` and headers:
//! - `Courier-Event-Id: <event uuid>` — the same on every retry: receivers dedupe on it;
//! - `Courier-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>` —
//!   receivers recompute it over the raw body with the shared secret, compare in constant
//!   time, and reject timestamps more than 5 minutes old (replays).
//!
//! # Outcomes
//! A 2xx is delivered. 408, 429, 5xx, timeouts and connection errors are retried as new
//! delayed tasks with capped exponential backoff, up to the configured attempts; other 4xx
//! give up at once (the endpoint refuses this event). An audience without a URL is skipped.
//! Every attempt is a `notification_deliveries` row.

use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::Serialize;
use serde_json::Value;
use sha2::Sha256;
use sqlx::{PgConnection, PgPool};

use secrecy::{ExposeSecret, SecretSlice};

pub use crate::domain::Audience;
use crate::domain::OrderId;
use crate::jobs::messages::Notify;
use crate::jobs::{self, EnqueueError};

/// Header carrying the event id.
pub const EVENT_ID_HEADER: &str = "Courier-Event-Id";
/// Header carrying the signature.
pub const SIGNATURE_HEADER: &str = "Courier-Signature";

/// Where webhooks go and how they are retried.
#[derive(Clone, Debug)]
pub struct WebhookSettings {
    pub customer_url: Option<String>,
    pub driver_url: Option<String>,
    pub restaurant_url: Option<String>,
    /// The shared signing secret (required when any URL is set). `Debug` never prints it.
    pub secret: SecretSlice<u8>,
    pub timeout: Duration,
    pub retry_base: Duration,
    pub retry_cap: Duration,
    pub max_attempts: u32,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            customer_url: None,
            driver_url: None,
            restaurant_url: None,
            secret: Vec::new().into(),
            timeout: Duration::from_secs(5),
            retry_base: Duration::from_secs(5),
            retry_cap: Duration::from_secs(300),
            max_attempts: 8,
        }
    }
}

impl WebhookSettings {
    fn url(&self, audience: Audience) -> Option<&str> {
        match audience {
            Audience::Customer => self.customer_url.as_deref(),
            Audience::Driver => self.driver_url.as_deref(),
            Audience::Restaurant => self.restaurant_url.as_deref(),
        }
    }
}

/// The `Courier-Signature` value for `body` signed at `timestamp` (unix seconds).
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// Delay before attempt `attempt + 1`.
pub fn retry_delay(settings: &WebhookSettings, attempt: u32) -> Duration {
    jobs::backoff(settings.retry_base, settings.retry_cap, attempt)
}

/// The webhook body.
#[derive(Debug, Serialize)]
struct Body<'a> {
    id: uuid::Uuid,
    #[serde(rename = "type")]
    event_type: &'a str,
    created_at: DateTime<Utc>,
    order_id: OrderId,
    recipient: Recipient,
    data: &'a Value,
}

#[derive(Debug, Serialize)]
struct Recipient {
    #[serde(rename = "type")]
    audience: Audience,
    id: Option<i64>,
}

/// The webhook sender. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Notifier {
    settings: WebhookSettings,
    http: reqwest::Client,
}

/// What one attempt did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    Skipped,
    Retrying { next: u32, delay: Duration },
    GaveUp,
}

impl Notifier {
    /// A notifier with `settings`.
    pub fn new(settings: WebhookSettings) -> reqwest::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .build()?;
        Ok(Self { settings, http })
    }

    /// Sends `job` once and records the attempt; schedules the next attempt when it may
    /// succeed later.
    pub async fn deliver(&self, db: &PgPool, job: &Notify) -> Result<Delivery, NotifyError> {
        let Some(url) = self.settings.url(job.audience) else {
            self.record(
                db,
                job,
                "skipped",
                None,
                "no URL configured for this audience",
            )
            .await?;
            return Ok(Delivery::Skipped);
        };
        let body = serde_json::to_vec(&Body {
            id: job.event_id,
            event_type: &job.event_type,
            created_at: job.created_at,
            order_id: job.order_id,
            recipient: Recipient {
                audience: job.audience,
                id: job.recipient_id,
            },
            data: &job.data,
        })
        .map_err(|e| NotifyError::Encode(e.to_string()))?;
        let signed = signature(
            self.settings.secret.expose_secret(),
            Utc::now().timestamp(),
            &body,
        );
        let sent = self
            .http
            .post(url)
            .header("Content-Type", "application/json")
            .header(EVENT_ID_HEADER, job.event_id.to_string())
            .header(SIGNATURE_HEADER, signed)
            .body(body)
            .send()
            .await;
        let (status, detail) = match sent {
            Ok(response) => (Some(response.status().as_u16()), String::new()),
            Err(e) if e.is_timeout() => (None, "timed out".to_owned()),
            Err(e) => (None, format!("request failed: {e}")),
        };
        let permanent = status.is_some_and(|s| (400..500).contains(&s) && s != 408 && s != 429);
        let delivery = match status {
            Some(s) if (200..300).contains(&s) => Delivery::Delivered,
            _ if permanent || job.attempt >= self.settings.max_attempts => Delivery::GaveUp,
            _ => Delivery::Retrying {
                next: job.attempt + 1,
                delay: retry_delay(&self.settings, job.attempt),
            },
        };
        let mut tx = crate::store::begin(db).await?;
        let outcome = match &delivery {
            Delivery::Delivered => "delivered",
            Delivery::Skipped => "skipped",
            Delivery::GaveUp => "gave_up",
            Delivery::Retrying { next, delay } => {
                let again = Notify {
                    attempt: *next,
                    ..job.clone()
                };
                jobs::enqueue(&mut tx, &again, *delay).await?;
                "retrying"
            }
        };
        record_attempt(&mut tx, job, outcome, status, &detail).await?;
        tx.commit().await?;
        metrics::counter!("webhook_deliveries_total", "audience" => job.audience.as_str(), "outcome" => outcome)
            .increment(1);
        if delivery == Delivery::GaveUp {
            tracing::warn!(event_id = %job.event_id, audience = job.audience.as_str(), status, detail, "webhook given up");
        }
        Ok(delivery)
    }

    async fn record(
        &self,
        db: &PgPool,
        job: &Notify,
        outcome: &str,
        status: Option<u16>,
        detail: &str,
    ) -> Result<(), sqlx::Error> {
        let mut conn = db.acquire().await?;
        record_attempt(&mut conn, job, outcome, status, detail).await
    }
}

async fn record_attempt(
    conn: &mut PgConnection,
    job: &Notify,
    outcome: &str,
    status: Option<u16>,
    detail: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO notification_deliveries
             (event_id, order_id, audience, event_type, attempt, outcome, http_status, detail)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(job.event_id)
    .bind(job.order_id)
    .bind(job.audience.as_str())
    .bind(&job.event_type)
    .bind(i32::try_from(job.attempt).unwrap_or(i32::MAX))
    .bind(outcome)
    .bind(status.map(|s| i16::try_from(s).unwrap_or(i16::MAX)))
    .bind((!detail.is_empty()).then_some(detail))
    .execute(conn)
    .await?;
    Ok(())
}

/// Why a delivery run failed (the job retries it).
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("could not encode the webhook: {0}")]
    Encode(String),
    #[error("could not enqueue the next attempt: {0}")]
    Enqueue(#[from] EnqueueError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_of_timestamp_dot_body() {
        // RFC 4231-style check against an independently computed value:
        // HMAC-SHA256("secret", "1700000000.{}").
        let sig = signature(b"secret", 1_700_000_000, b"{}");
        assert!(sig.starts_with("t=1700000000,v1="));
        assert_eq!(sig.len(), "t=1700000000,v1=".len() + 64);
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(b"secret").expect("key");
        mac.update(b"1700000000.{}");
        assert_eq!(
            sig,
            format!(
                "t=1700000000,v1={}",
                hex::encode(mac.finalize().into_bytes())
            )
        );
        assert_ne!(sig, signature(b"other", 1_700_000_000, b"{}"));
        assert_ne!(sig, signature(b"secret", 1_700_000_001, b"{}"));
    }

    #[test]
    fn webhook_retries_back_off_up_to_the_cap() {
        let s = WebhookSettings::default();
        let delays: Vec<u64> = (1..=8).map(|a| retry_delay(&s, a).as_secs()).collect();
        assert_eq!(delays, vec![5, 10, 20, 40, 80, 160, 300, 300]);
    }
}
