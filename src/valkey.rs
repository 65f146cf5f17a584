//! The Valkey connection and key namespacing, on one node or on a Valkey Cluster.
//!
//! # One node or a cluster
//! [`ValkeySettings`] names either one server (`VALKEY_URL`) or the seed nodes of a cluster
//! (`VALKEY_CLUSTER_NODES`). Every caller gets a [`Connection`], which runs commands, scripts
//! and pipelines on either: on a cluster it routes each by its first key's slot, follows
//! `MOVED` after a failover, and refreshes its view of the slots by itself. What the rest of
//! courier must keep for the cluster is that a script's keys, and a pipeline's, share one
//! hash tag (`{…}`): the location keys of a market share the market's tag
//! ([`crate::location`]); rate-limit checks are grouped by [`Valkey::shard_of`] their key.
//!
//! # Connections
//! Two multiplexed connections per process: commands from all tasks are pipelined over the
//! main one; latency-sensitive reads (nearby-driver searches) use the second, so they never
//! wait in one socket's FIFO behind a stream of location writes (Valkey serves its clients in
//! turn, so a separate connection is served between them). On a cluster each is a connection
//! to every node. Both reconnect by themselves when Valkey comes back, so readiness recovers
//! without a restart. The connections are made lazily, so a process starts (and reports
//! not-ready) while Valkey is down. Every key goes through [`Valkey::key`], which puts the
//! configured prefix in front: tenants and parallel tests never see each other's keys.
//!
//! Blocking reads (`XREAD BLOCK`) and subscriptions would stall a shared connection, so they
//! get connections of their own ([`Valkey::blocking_connection`], [`Valkey::pubsub`]): one
//! each per process, never one per client. A cluster broadcasts every `PUBLISH` to all its
//! nodes, so a subscription on any one node hears every channel; [`Valkey::pubsub`] takes the
//! first seed node that answers.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use secrecy::{ExposeSecret, SecretString};

/// Where Valkey is and which key prefix this process owns. URLs may carry a password, so they
/// are secrets: `Debug` and logs never print them.
#[derive(Clone, Debug)]
pub struct ValkeySettings {
    /// The one server, when `cluster_nodes` is empty.
    pub url: SecretString,
    /// Seed nodes of a Valkey Cluster (any of its nodes; the rest are discovered). When not
    /// empty, courier runs on the cluster and `url` is not used.
    pub cluster_nodes: Vec<SecretString>,
    pub key_prefix: String,
}

/// Longest a single Valkey command may wait for its answer.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Attempts of a cluster command after its first failure (a node down, a slot moved), and the
/// longest pause between them: a failover takes a few seconds, in which a command fails fast
/// and its caller decides (a search is retried, a report is answered 503).
const CLUSTER_RETRIES: u32 = 3;
const CLUSTER_MAX_RETRY_WAIT_MS: u64 = 400;

/// What the process connects to.
#[derive(Clone)]
enum Backend {
    Node(redis::Client),
    Cluster {
        client: Box<ClusterClient>,
        nodes: Vec<SecretString>,
    },
}

/// A handle to Valkey: cheap to clone, shared by every task of the process.
#[derive(Clone)]
pub struct Valkey {
    backend: Arc<Backend>,
    connection: Connection,
    queries: Connection,
    prefix: Arc<str>,
}

impl std::fmt::Debug for Valkey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Valkey")
            .field("cluster", &self.is_cluster())
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// A connection to one Valkey node or to a cluster; runs commands, scripts and pipelines on
/// either (see the module docs). Cheap to clone: clones share the underlying connection.
#[derive(Clone)]
pub enum Connection {
    /// The shared, self-reconnecting connection to one node.
    Node(ConnectionManager),
    /// A dedicated connection to one node (blocking reads).
    Dedicated(MultiplexedConnection),
    /// Connections to every node of a cluster.
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Node(_) => "Connection::Node",
            Self::Dedicated(_) => "Connection::Dedicated",
            Self::Cluster(_) => "Connection::Cluster",
        })
    }
}

impl redis::aio::ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Node(c) => c.req_packed_command(cmd),
            Self::Dedicated(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Node(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Dedicated(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Node(c) => c.get_db(),
            Self::Dedicated(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

impl Valkey {
    /// A handle for the configured server (or cluster) and prefix. Does not connect yet.
    pub fn new(settings: &ValkeySettings) -> redis::RedisResult<Self> {
        let (backend, connection, queries) = if settings.cluster_nodes.is_empty() {
            let client = redis::Client::open(settings.url.expose_secret())?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(RESPONSE_TIMEOUT))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_millis(500));
            let connection =
                ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?;
            let queries = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
            (
                Backend::Node(client),
                Connection::Node(connection),
                Connection::Node(queries),
            )
        } else {
            let client = cluster_client(&settings.cluster_nodes, RESPONSE_TIMEOUT)?;
            let connection =
                client.get_pending_async_connection_with_config(cluster_config(RESPONSE_TIMEOUT));
            let queries =
                client.get_pending_async_connection_with_config(cluster_config(RESPONSE_TIMEOUT));
            (
                Backend::Cluster {
                    client: Box::new(client),
                    nodes: settings.cluster_nodes.clone(),
                },
                Connection::Cluster(connection),
                Connection::Cluster(queries),
            )
        };
        Ok(Self {
            backend: Arc::new(backend),
            connection,
            queries,
            prefix: Arc::from(settings.key_prefix.as_str()),
        })
    }

    /// Whether this process runs on a Valkey Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(*self.backend, Backend::Cluster { .. })
    }

    /// The full key for `suffix` under this process's prefix.
    pub fn key(&self, suffix: &str) -> String {
        let mut key = String::with_capacity(self.prefix.len() + suffix.len());
        key.push_str(&self.prefix);
        key.push_str(suffix);
        key
    }

    /// The prefix every key of this process starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Which keys may share a script call or pipeline: on a cluster, keys of one slot; on one
    /// node, all keys (always 0).
    pub fn shard_of(&self, key: &str) -> u16 {
        if self.is_cluster() { slot(key) } else { 0 }
    }

    /// A connection to run commands on (a clone of the shared multiplexed one).
    pub fn connection(&self) -> Connection {
        self.connection.clone()
    }

    /// The connection for latency-sensitive reads (see the module docs).
    pub fn query_connection(&self) -> Connection {
        self.queries.clone()
    }

    /// A connection of its own for blocking reads that wait up to `block` for an answer.
    pub async fn blocking_connection(&self, block: Duration) -> redis::RedisResult<Connection> {
        match &*self.backend {
            Backend::Node(client) => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(block + RESPONSE_TIMEOUT));
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map(Connection::Dedicated)
            }
            Backend::Cluster { client, .. } => client
                .get_async_connection_with_config(cluster_config(block + RESPONSE_TIMEOUT))
                .await
                .map(Connection::Cluster),
        }
    }

    /// A connection of its own for subscriptions: to the one node, or to the first seed node
    /// of the cluster that answers (a cluster broadcasts every message to all its nodes).
    pub async fn pubsub(&self) -> redis::RedisResult<redis::aio::PubSub> {
        match &*self.backend {
            Backend::Node(client) => client.get_async_pubsub().await,
            Backend::Cluster { nodes, .. } => {
                let mut last = None;
                for node in nodes {
                    let attempt = async {
                        let client = redis::Client::open(node.expose_secret())?;
                        tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub())
                            .await
                            .map_err(|_| {
                                redis::RedisError::from((
                                    redis::ErrorKind::Io,
                                    "connecting for a subscription timed out",
                                ))
                            })?
                    };
                    match attempt.await {
                        Ok(pubsub) => return Ok(pubsub),
                        Err(error) => last = Some(error),
                    }
                }
                Err(last.unwrap_or_else(|| {
                    redis::RedisError::from((
                        redis::ErrorKind::InvalidClientConfig,
                        "no cluster node to subscribe on",
                    ))
                }))
            }
        }
    }

    /// Round trip to the server (on a cluster, to one of its nodes), bounded by the response
    /// timeout. A cluster with a primary down is still reachable, and with
    /// `cluster-require-full-coverage no` its other slots keep serving: the process stays
    /// ready, and only the markets on the lost node fail until its replica takes over.
    pub async fn ping(&self) -> redis::RedisResult<()> {
        let mut conn = self.connection();
        let pong: String = redis::cmd("PING").query_async(&mut conn).await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "unexpected PING reply",
                pong,
            )))
        }
    }
}

fn cluster_client(nodes: &[SecretString], response: Duration) -> redis::RedisResult<ClusterClient> {
    ClusterClientBuilder::new(nodes.iter().map(|n| n.expose_secret().to_owned()))
        .connection_timeout(CONNECT_TIMEOUT)
        .response_timeout(response)
        .retries(CLUSTER_RETRIES)
        .min_retry_wait(50)
        .max_retry_wait(CLUSTER_MAX_RETRY_WAIT_MS)
        .overall_response_timeout(Some(response * 2))
        .build()
}

fn cluster_config(response: Duration) -> redis::cluster::ClusterConfig {
    redis::cluster::ClusterConfig::new()
        .set_connection_timeout(CONNECT_TIMEOUT)
        .set_response_timeout(response)
}

/// Whether `error` means the connection broke (Valkey restarted or the socket died) rather
/// than that the command failed: the connection reconnects by itself, so a command that is
/// safe to repeat may be sent once more.
pub fn is_disconnect(error: &redis::RedisError) -> bool {
    error.is_connection_dropped() && !error.is_timeout()
}

/// The cluster slot of `key`: CRC16 (XMODEM) of its hash tag — the part between the first
/// `{` and the next `}`, when not empty — or of the whole key, modulo 16384.
pub fn slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let hashed = bytes
        .iter()
        .position(|b| *b == b'{')
        .and_then(|open| {
            let rest = &bytes[open + 1..];
            rest.iter()
                .position(|b| *b == b'}')
                .filter(|close| *close > 0)
                .map(|close| &rest[..close])
        })
        .unwrap_or(bytes);
    crc16(hashed) % 16_384
}

fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for byte in bytes {
        crc ^= u16::from(*byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_those_valkey_computes() {
        // Values from Valkey's `CLUSTER KEYSLOT`.
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("123456789"), 12739);
        assert_eq!(slot("{user1000}.following"), slot("user1000"));
        assert_eq!(slot("courier:loc:{nyc}:avail"), slot("nyc"));
        // An empty tag does not count: the whole key is hashed.
        assert_eq!(slot("a{}b"), crc16(b"a{}b") % 16_384);
        // Only the first tag counts.
        assert_eq!(slot("x{a}{b}"), slot("a"));
    }
}
