//! The Valkey connection and key namespacing.
//!
//! Two multiplexed connections per process ([`redis::aio::ConnectionManager`]): commands from
//! all tasks are pipelined over the main one; latency-sensitive reads (nearby-driver searches)
//! use the second, so they never wait in one socket's FIFO behind a stream of location
//! writes (Valkey serves its clients in turn, so a separate connection is served between
//! them). Both reconnect by themselves when Valkey comes back, so readiness recovers without
//! a restart. The connection is made lazily, so a process starts
//! (and reports not-ready) while Valkey is down. Every key goes through [`Valkey::key`], which
//! puts the configured prefix in front: tenants and parallel tests never see each other's keys.
//!
//! Blocking reads (`XREAD BLOCK`) and subscriptions would stall a shared connection, so they
//! get connections of their own ([`Valkey::blocking_connection`], [`Valkey::pubsub`]): one
//! each per process, never one per client.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use secrecy::{ExposeSecret, SecretString};

/// Where Valkey is and which key prefix this process owns. The URL may carry a password, so
/// it is a secret: `Debug` and logs never print it.
#[derive(Clone, Debug)]
pub struct ValkeySettings {
    pub url: SecretString,
    pub key_prefix: String,
}

/// Longest a single Valkey command may wait for its answer.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A handle to Valkey: cheap to clone, shared by every task of the process.
#[derive(Clone)]
pub struct Valkey {
    client: redis::Client,
    connection: ConnectionManager,
    queries: ConnectionManager,
    prefix: Arc<str>,
}

impl std::fmt::Debug for Valkey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Valkey")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Valkey {
    /// A handle for the configured server and prefix. Does not connect yet.
    pub fn new(settings: &ValkeySettings) -> redis::RedisResult<Self> {
        let client = redis::Client::open(settings.url.expose_secret())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let connection = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?;
        let queries = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
        Ok(Self {
            client,
            connection,
            queries,
            prefix: Arc::from(settings.key_prefix.as_str()),
        })
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

    /// A connection to run commands on (a clone of the shared multiplexed one).
    pub fn connection(&self) -> ConnectionManager {
        self.connection.clone()
    }

    /// The connection for latency-sensitive reads (see the module docs).
    pub fn query_connection(&self) -> ConnectionManager {
        self.queries.clone()
    }

    /// A connection of its own for blocking reads that wait up to `block` for an answer.
    pub async fn blocking_connection(
        &self,
        block: Duration,
    ) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(block + RESPONSE_TIMEOUT));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    /// A connection of its own for subscriptions.
    pub async fn pubsub(&self) -> redis::RedisResult<redis::aio::PubSub> {
        self.client.get_async_pubsub().await
    }

    /// Round trip to the server, bounded by the response timeout.
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

/// Whether `error` means the connection broke (Valkey restarted or the socket died) rather
/// than that the command failed: the connection reconnects by itself, so a command that is
/// safe to repeat may be sent once more.
pub fn is_disconnect(error: &redis::RedisError) -> bool {
    error.is_connection_dropped() && !error.is_timeout()
}
