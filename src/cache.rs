//! Cache-aside on Valkey, as the spec's step 8 describes: JSON values under prefixed keys with a
//! TTL, read first, filled on a miss, deleted when the data behind them changes.
//!
//! The cache is an optimisation, never a source of truth: when Valkey fails, reads fall through
//! to Postgres and writes of cache entries are skipped (each counted in
//! `cache_errors_total{op}` and logged), so a Valkey outage slows requests instead of failing
//! them.

use std::time::Duration;

use redis::AsyncCommands;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::valkey::Valkey;

/// TTL of a restaurant with its menu (the spec's 5 minutes).
pub const RESTAURANT_TTL: Duration = Duration::from_secs(5 * 60);
/// TTL of a nearby-restaurants cell (the spec's 2 minutes).
pub const NEARBY_TTL: Duration = Duration::from_secs(2 * 60);

/// Key of a restaurant with its menu.
pub fn restaurant_key(valkey: &Valkey, restaurant_id: i64) -> String {
    valkey.key(&format!("cache:restaurant_full:{restaurant_id}"))
}

/// Key of the counter whose value is part of every nearby-restaurants key: bumping it
/// invalidates every cell at once (an open/close changes results in cells we cannot list).
pub fn nearby_generation_key(valkey: &Valkey) -> String {
    valkey.key("cache:nearby:generation")
}

fn failed(op: &'static str, error: &redis::RedisError) {
    metrics::counter!("cache_errors_total", "op" => op).increment(1);
    tracing::warn!(op, error = %error, "cache operation failed; continuing without the cache");
}

/// The cached value under `key`, or `None` on a miss, an undecodable entry or a Valkey error.
pub async fn get<T: DeserializeOwned>(valkey: &Valkey, key: &str) -> Option<T> {
    let mut conn = valkey.connection();
    match conn.get::<_, Option<String>>(key).await {
        Ok(Some(raw)) => serde_json::from_str(&raw).ok(),
        Ok(None) => None,
        Err(error) => {
            failed("get", &error);
            None
        }
    }
}

/// Stores `value` under `key` for `ttl`.
pub async fn put<T: Serialize>(valkey: &Valkey, key: &str, value: &T, ttl: Duration) {
    let Ok(raw) = serde_json::to_string(value) else {
        return;
    };
    let mut conn = valkey.connection();
    if let Err(error) = conn.set_ex::<_, _, ()>(key, raw, ttl.as_secs()).await {
        failed("put", &error);
    }
}

/// Deletes `keys`.
pub async fn invalidate(valkey: &Valkey, keys: &[String]) {
    let mut conn = valkey.connection();
    if let Err(error) = conn.del::<_, ()>(keys).await {
        failed("invalidate", &error);
    }
}

/// The current nearby-cache generation (0 when unset or unreadable).
pub async fn nearby_generation(valkey: &Valkey) -> u64 {
    let mut conn = valkey.connection();
    match conn
        .get::<_, Option<u64>>(nearby_generation_key(valkey))
        .await
    {
        Ok(generation) => generation.unwrap_or(0),
        Err(error) => {
            failed("get", &error);
            0
        }
    }
}

/// Invalidates every nearby-restaurants entry.
pub async fn bump_nearby_generation(valkey: &Valkey) {
    let mut conn = valkey.connection();
    if let Err(error) = conn
        .incr::<_, _, ()>(nearby_generation_key(valkey), 1)
        .await
    {
        failed("invalidate", &error);
    }
}

/// Purges what a change to restaurant `restaurant_id` can make stale: its cached entry (with
/// its menu) and, when the change shows in nearby searches too (hours, name, place, cuisine),
/// every nearby-restaurants entry.
pub async fn purge_restaurant(valkey: &Valkey, restaurant_id: i64, nearby_too: bool) {
    invalidate(valkey, &[restaurant_key(valkey, restaurant_id)]).await;
    if nearby_too {
        bump_nearby_generation(valkey).await;
    }
}
