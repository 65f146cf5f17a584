//! Events leave the database: the transactional outbox's relay and its sinks.
//!
//! Every change of an order writes its event to the `outbox` table on the change's own
//! transaction ([`crate::workflows::events`]). The [`relay`] publishes those rows, in order
//! per order and at least once, to the configured [`sink`]s — a Valkey stream (the default;
//! the SSE endpoints read it) and Kafka ([`kafka`]) — as the JSON of [`event`]. This module
//! also answers operators (lag, parked events, releasing one) and prunes what was published
//! long enough ago. `docs/events.md` is the consumers' contract.

pub mod event;
pub mod kafka;
pub mod relay;
pub mod sink;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use crate::outbox::kafka::{KafkaSettings, KafkaSink};
use crate::outbox::relay::{Relay, RelaySettings};
use crate::outbox::sink::{Sink, StreamSink};
use crate::valkey::Valkey;

/// Which sinks the relay publishes to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, clap::ValueEnum, strum::Display)]
#[strum(serialize_all = "snake_case")]
pub enum SinkKind {
    /// The Valkey stream `<prefix>events:orders`.
    Stream,
    /// A Kafka topic.
    Kafka,
}

/// The relay's configuration.
#[derive(Clone, Debug)]
pub struct OutboxSettings {
    pub sinks: Vec<SinkKind>,
    /// `MAXLEN ~` of the Valkey stream.
    pub stream_max_len: u64,
    /// Required when `sinks` has Kafka.
    pub kafka: Option<KafkaSettings>,
    pub relay: RelaySettings,
}

impl Default for OutboxSettings {
    fn default() -> Self {
        Self {
            sinks: vec![SinkKind::Stream],
            stream_max_len: 500_000,
            kafka: None,
            relay: RelaySettings::default(),
        }
    }
}

/// The relay for `settings`, publishing `db`'s outbox.
pub fn relay(db: PgPool, valkey: &Valkey, settings: &OutboxSettings) -> anyhow::Result<Relay> {
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    for kind in &settings.sinks {
        match kind {
            SinkKind::Stream => sinks.push(Box::new(StreamSink::new(
                valkey.clone(),
                settings.stream_max_len,
            ))),
            SinkKind::Kafka => {
                let kafka = settings
                    .kafka
                    .clone()
                    .ok_or_else(|| anyhow::anyhow!("the kafka sink needs COURIER_KAFKA_BROKERS"))?;
                sinks.push(Box::new(KafkaSink::new(kafka)));
            }
        }
    }
    Ok(Relay::new(db, sinks, settings.relay.clone()))
}

/// The outbox at a glance.
#[derive(Clone, Debug, PartialEq, Serialize, sqlx::FromRow)]
pub struct Stats {
    pub unpublished: i64,
    /// Age of the oldest unpublished, unparked event: the relay's lag.
    pub lag_seconds: f64,
    pub parked: i64,
    pub published_last_hour: i64,
    pub total: i64,
}

/// Counts for `courier admin events stats`.
pub async fn stats(db: &PgPool) -> Result<Stats, sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE published_at IS NULL AND parked_at IS NULL) AS unpublished,
                COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)
                    FILTER (WHERE published_at IS NULL AND parked_at IS NULL)), 0)::float8
                    AS lag_seconds,
                count(*) FILTER (WHERE parked_at IS NOT NULL) AS parked,
                count(*) FILTER (WHERE published_at > now() - INTERVAL '1 hour')
                    AS published_last_hour,
                count(*) AS total
         FROM outbox",
    )
    .fetch_one(db)
    .await
}

/// One outbox row for operators.
#[derive(Clone, Debug, PartialEq, Serialize, sqlx::FromRow)]
pub struct EventRow {
    pub id: i64,
    pub event_id: uuid::Uuid,
    pub order_id: i64,
    pub event_type: String,
    pub created_at: DateTime<Utc>,
    pub published_at: Option<DateTime<Utc>>,
    pub parked_at: Option<DateTime<Utc>>,
    pub attempts: i32,
    pub last_error: Option<String>,
}

/// Which rows to list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    /// Not yet published (waiting, failing or parked).
    Pending,
    /// Parked only.
    Parked,
    /// Everything, newest first.
    All,
}

/// Outbox rows, oldest pending first (newest first for [`Which::All`]).
pub async fn list(
    db: &PgPool,
    which: Which,
    order_id: Option<i64>,
    limit: i64,
) -> Result<Vec<EventRow>, sqlx::Error> {
    let (filter, order) = match which {
        Which::Pending => ("published_at IS NULL", "id"),
        Which::Parked => ("parked_at IS NOT NULL", "id"),
        Which::All => ("TRUE", "id DESC"),
    };
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT id, event_id, aggregate_id AS order_id, event_type, created_at, published_at,
                parked_at, attempts, last_error
         FROM outbox WHERE {filter} AND ($1::bigint IS NULL OR aggregate_id = $1)
         ORDER BY {order} LIMIT $2"
    )))
    .bind(order_id)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// What releasing an event found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Released {
    /// It was parked or failing: the relay publishes it next.
    Released,
    /// It was published already: it goes out once more (consumers dedupe on its id).
    Republished,
    NotFound,
}

/// Releases a parked or failing event, or publishes a published one again.
pub async fn release(db: &PgPool, event_id: uuid::Uuid) -> Result<Released, sqlx::Error> {
    let was_published: Option<bool> = sqlx::query_scalar(
        "UPDATE outbox o SET parked_at = NULL, published_at = NULL, attempts = 0, last_error = NULL
         FROM (SELECT id, published_at IS NOT NULL AS was FROM outbox WHERE event_id = $1 FOR UPDATE) old
         WHERE o.id = old.id
         RETURNING old.was",
    )
    .bind(event_id)
    .fetch_optional(db)
    .await?;
    Ok(match was_published {
        None => Released::NotFound,
        Some(true) => Released::Republished,
        Some(false) => Released::Released,
    })
}

/// Deletes up to `batch` rows published more than `retention` ago; returns how many. Rows
/// are old in id order, so the oldest ids are read first (through the primary key).
pub async fn prune_published(
    db: &PgPool,
    retention: Duration,
    batch: i64,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM outbox WHERE id IN (
             SELECT id FROM outbox
             WHERE published_at < now() - make_interval(secs => $1)
             ORDER BY id LIMIT $2)",
    )
    .bind(retention.as_secs_f64())
    .bind(batch)
    .execute(db)
    .await?
    .rows_affected())
}
