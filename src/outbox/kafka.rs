//! The Kafka sink: every event is a record on one topic, keyed by its order id, in the
//! partition Kafka's default partitioner picks for that key (murmur2, as the Java client), so
//! one order's events stay in one partition and in order; another producer keyed the same way
//! lands in the same partition. The client is `rskafka` (pure Rust, no librdkafka to build).
//!
//! Record: key = the order id in decimal, value = the event JSON, headers `event_id`,
//! `event_type` and `schema_version`. The topic is created (with the configured partitions)
//! when missing.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::BoxFuture;
use rskafka::BackoffConfig;
use rskafka::client::ClientBuilder;
use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::record::Record;
use tokio::sync::Mutex;

use crate::outbox::event::{Published, SCHEMA_VERSION};
use crate::outbox::sink::{Sink, SinkError};

/// Where the Kafka sink produces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaSettings {
    /// Bootstrap brokers, `host:port`.
    pub brokers: Vec<String>,
    pub topic: String,
    /// Partitions of the topic when the relay creates it.
    pub partitions: i32,
    /// Bound on connecting and on producing one batch.
    pub timeout: Duration,
}

/// Kafka's default partitioner's hash (`Utils.murmur2` of the Java client).
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len();
    let mut h: u32 = SEED ^ (length as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition of `key` among `partitions` (Kafka's `toPositive(murmur2(key)) % n`).
pub fn partition_of(key: &[u8], partitions: usize) -> usize {
    let positive = (murmur2(key) & 0x7fff_ffff) as usize;
    positive % partitions.max(1)
}

/// The record key of an order's events.
pub fn record_key(order_id: i64) -> Vec<u8> {
    order_id.to_string().into_bytes()
}

/// The Kafka sink. Connects on first use and again after a failure.
#[derive(Debug)]
pub struct KafkaSink {
    settings: KafkaSettings,
    connected: Mutex<Option<Vec<PartitionClient>>>,
}

impl KafkaSink {
    /// A sink producing to `settings.topic`.
    pub fn new(settings: KafkaSettings) -> Self {
        Self {
            settings,
            connected: Mutex::new(None),
        }
    }

    async fn connect(&self) -> Result<Vec<PartitionClient>, rskafka::client::error::Error> {
        let settings = &self.settings;
        let client = ClientBuilder::new(settings.brokers.clone())
            .client_id("courier-relay")
            .backoff_config(BackoffConfig {
                deadline: Some(settings.timeout),
                ..BackoffConfig::default()
            })
            .build()
            .await?;
        let timeout_ms = i32::try_from(settings.timeout.as_millis()).unwrap_or(i32::MAX);
        let existing = client
            .list_topics()
            .await?
            .into_iter()
            .find(|t| t.name == settings.topic);
        let partitions: Vec<i32> = match existing {
            Some(topic) => topic.partitions.into_iter().collect(),
            None => {
                client
                    .controller_client()?
                    .create_topic(&settings.topic, settings.partitions, 1, timeout_ms)
                    .await?;
                tracing::info!(topic = %settings.topic, partitions = settings.partitions, "created the Kafka topic");
                (0..settings.partitions).collect()
            }
        };
        let mut clients = Vec::with_capacity(partitions.len());
        for partition in partitions {
            clients.push(
                client
                    .partition_client(
                        settings.topic.clone(),
                        partition,
                        UnknownTopicHandling::Retry,
                    )
                    .await?,
            );
        }
        Ok(clients)
    }

    async fn produce(&self, events: &[Published]) -> Result<(), String> {
        let mut connected = self.connected.lock().await;
        if connected.is_none() {
            *connected = Some(self.connect().await.map_err(|e| e.to_string())?);
        }
        let clients = connected.as_ref().map(Vec::as_slice).unwrap_or_default();
        if clients.is_empty() {
            *connected = None;
            return Err(format!("topic {} has no partitions", self.settings.topic));
        }
        let mut per_partition: Vec<Vec<Record>> = vec![Vec::new(); clients.len()];
        let now = chrono::Utc::now();
        for event in events {
            let key = record_key(event.order_id);
            let partition = partition_of(&key, clients.len());
            per_partition[partition].push(Record {
                key: Some(key),
                value: Some(event.body.clone().into_bytes()),
                headers: BTreeMap::from([
                    (
                        "event_id".to_owned(),
                        event.event_id.to_string().into_bytes(),
                    ),
                    (
                        "event_type".to_owned(),
                        event.event_type.clone().into_bytes(),
                    ),
                    (
                        "schema_version".to_owned(),
                        SCHEMA_VERSION.to_string().into_bytes(),
                    ),
                ]),
                timestamp: now,
            });
        }
        let produced = futures::future::join_all(
            clients
                .iter()
                .zip(per_partition)
                .filter(|(_, records)| !records.is_empty())
                .map(|(client, records)| client.produce(records, Compression::NoCompression)),
        )
        .await;
        if let Some(error) = produced.into_iter().find_map(Result::err) {
            // The next batch reconnects: metadata may have moved.
            *connected = None;
            return Err(error.to_string());
        }
        Ok(())
    }
}

impl Sink for KafkaSink {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn publish<'a>(&'a self, events: &'a [Published]) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            let outcome = tokio::time::timeout(self.settings.timeout, self.produce(events))
                .await
                .unwrap_or_else(|_| Err("timed out".to_owned()));
            outcome.map_err(|message| SinkError {
                sink: self.name(),
                message,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_the_java_client() {
        // The vectors of Kafka's own `UtilsTest.testMurmur2`.
        assert_eq!(murmur2(b"21"), -973_932_308);
        assert_eq!(murmur2(b"foobar"), -790_332_482);
        assert_eq!(murmur2(b"a-little-bit-long-string"), -985_981_536);
        assert_eq!(murmur2(b"a-little-bit-longer-string"), -1_486_304_829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"),
            -58_897_971
        );
        assert_eq!(murmur2(b"abc"), 479_470_107);
    }

    #[test]
    fn one_orders_key_always_lands_in_one_partition_and_keys_spread() {
        let first = partition_of(&record_key(42), 6);
        assert!((0..50).all(|_| partition_of(&record_key(42), 6) == first));
        let used: std::collections::BTreeSet<usize> = (1..200)
            .map(|id| partition_of(&record_key(id), 6))
            .collect();
        assert_eq!(used.len(), 6);
        assert_eq!(partition_of(b"x", 0), 0);
    }
}
