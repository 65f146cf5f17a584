//! `courier-bench sse`: thousands of live clients on one `courier serve` while orders move.
//!
//! One command: a fresh dedicated database and key prefix, `courier serve` and `courier
//! worker` (whose relay publishes the outbox), restaurants and customers seeded in SQL, and
//! orders placed through the API. Then `--clients` SSE connections open — half follow one
//! order each as its customer (`/v1/orders/{id}/events`), half follow a restaurant
//! (`/v1/restaurants/{id}/orders/stream`, `--per-restaurant` tablets each) — and the server's
//! memory is read before and after, giving the memory per connection. For `--duration`,
//! `--orders-per-second` of the followed orders are confirmed, prepared and made ready
//! through the API; every status change reaches its order's client and its restaurant's.
//!
//! Latency is commit → client: from the event's `timestamp` (taken inside the transaction
//! that commits it) to its arrival at a client, all on this machine's clock. The baseline,
//! measured in the same run on the same events, is the event read straight from the Valkey
//! stream by one `XREAD BLOCK` reader in this process: what is left over is the SSE fan-out
//! (the server's reader, its queues, HTTP).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use secrecy::ExposeSecret;
use sqlx::PgPool;
use tokio::sync::Mutex;

use courier::auth::{Principal, Role, TokenKeys};
use courier::config::Config;
use courier::valkey::Valkey;

use crate::e2e::{fresh_database, quantile};
use crate::server::{Courier, ensure_dedicated, wait_ready};

/// Options of the SSE benchmark.
#[derive(Clone, Debug, clap::Args)]
pub struct SseBench {
    /// Concurrent SSE connections (half order streams, half restaurant streams).
    #[arg(long, default_value_t = 2_000)]
    pub clients: usize,
    /// Restaurant-stream connections per restaurant (tablets in one kitchen).
    #[arg(long, default_value_t = 10)]
    pub per_restaurant: usize,
    /// Followed orders moved on per second (three status changes each).
    #[arg(long, default_value_t = 20.0)]
    pub orders_per_second: f64,
    /// How long orders move, e.g. `30s`.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Where the spawned server listens.
    #[arg(long, default_value = "127.0.0.1:18082")]
    pub listen: SocketAddr,
}

/// Latencies, in ms, gathered by the clients and the baseline reader.
#[derive(Debug, Default)]
struct Gathered {
    sse_ms: Vec<f64>,
    stream_ms: Vec<f64>,
}

/// The latency, in ms, of an event JSON whose `timestamp` is its commit time, received now.
fn latency_ms(event: &serde_json::Value, now: DateTime<Utc>) -> Option<f64> {
    let at: DateTime<Utc> = event["timestamp"].as_str()?.parse().ok()?;
    Some((now - at).as_seconds_f64() * 1000.0)
}

/// A process's resident memory, in KiB (`VmRSS` of /proc).
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read the memory of process {pid}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS line")
}

/// Valkey's connected clients (`INFO clients`).
async fn valkey_clients(valkey: &Valkey) -> anyhow::Result<u64> {
    let mut conn = valkey.connection();
    let info: String = redis::cmd("INFO")
        .arg("clients")
        .query_async(&mut conn)
        .await?;
    info.lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no connected_clients in INFO")
}

/// Restaurants with one dish each, and customers; returns (restaurants, dish per restaurant,
/// customers).
async fn seed(
    db: &PgPool,
    restaurants: usize,
    customers: usize,
) -> anyhow::Result<(Vec<i64>, Vec<i64>, Vec<i64>)> {
    let restaurant_ids: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO restaurants (name, cuisine_type, location, rating, prep_time_minutes,
                                  market_id)
         SELECT 'Kitchen ' || n, 'pizza',
                ST_SetSRID(ST_MakePoint(-73.98 + n * 0.0001, 40.75), 4326)::geography, 4.5, 20,
                (SELECT id FROM markets WHERE slug = 'default')
         FROM generate_series(1, $1) n RETURNING id",
    )
    .bind(i32::try_from(restaurants)?)
    .fetch_all(db)
    .await?;
    let dishes: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO menu_items (restaurant_id, name, price_cents, category)
         SELECT id, 'Margherita', 1200, 'Mains' FROM unnest($1::bigint[]) id RETURNING id",
    )
    .bind(&restaurant_ids)
    .fetch_all(db)
    .await?;
    let customer_ids: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO users (role, name, email)
         SELECT 'customer', 'Customer ' || n, 'sse-' || n || '@bench.courier.invalid'
         FROM generate_series(1, $1) n RETURNING id",
    )
    .bind(i32::try_from(customers)?)
    .fetch_all(db)
    .await?;
    Ok((restaurant_ids, dishes, customer_ids))
}

/// Reads an SSE response to its end, recording each status change's latency; signals `opened`
/// once the first event (the snapshot) arrived.
async fn follow(
    response: reqwest::Response,
    gathered: Arc<Mutex<Gathered>>,
    opened: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
) {
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    let mut first = true;
    while let Some(Ok(chunk)) = body.next().await {
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            if first && block.contains("event: snapshot") {
                first = false;
                opened.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if !block.contains("event: order_status_changed") {
                continue;
            }
            let now = Utc::now();
            let data = block.lines().find_map(|l| l.strip_prefix("data: "));
            let event: Option<serde_json::Value> = data.and_then(|d| serde_json::from_str(d).ok());
            if let Some(ms) = event.as_ref().and_then(|e| latency_ms(e, now)) {
                gathered.lock().await.sse_ms.push(ms);
                received.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The baseline: the stream read straight from Valkey, each status change's latency.
async fn read_stream(valkey: Valkey, gathered: Arc<Mutex<Gathered>>, stop: Arc<AtomicBool>) {
    let Ok(mut conn) = valkey.blocking_connection(Duration::from_secs(1)).await else {
        return;
    };
    let key = valkey.key(courier::outbox::sink::STREAM_SUFFIX);
    let mut last = "$".to_owned();
    while !stop.load(Ordering::Relaxed) {
        let reply: Result<Option<redis::streams::StreamReadReply>, _> = redis::cmd("XREAD")
            .arg("BLOCK")
            .arg(1000)
            .arg("STREAMS")
            .arg(&key)
            .arg(&last)
            .query_async(&mut conn)
            .await;
        let Ok(reply) = reply else { return };
        let now = Utc::now();
        for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
            last.clone_from(&entry.id);
            if entry.get::<String>("type").as_deref() != Some("order_status_changed") {
                continue;
            }
            let event: Option<serde_json::Value> = entry
                .get::<String>("event")
                .and_then(|b| serde_json::from_str(&b).ok());
            if let Some(ms) = event.as_ref().and_then(|e| latency_ms(e, now)) {
                gathered.lock().await.stream_ms.push(ms);
            }
        }
    }
}

/// Places an order of `customer` at `restaurant`; returns its id.
async fn place(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    restaurant: i64,
    dish: i64,
) -> anyhow::Result<i64> {
    let response = http
        .post(format!("{base}/v1/orders"))
        .bearer_auth(token)
        .header("x-idempotency-key", uuid::Uuid::new_v4().to_string())
        .json(&serde_json::json!({
            "restaurant_id": restaurant,
            "items": [{"menu_item_id": dish, "quantity": 1}],
            "delivery_address": {"lat": 40.76, "lon": -73.98, "line1": "1 Bench Street", "city": "New York"},
            "payment_method": "pm_card_visa"
        }))
        .send()
        .await?;
    anyhow::ensure!(
        response.status().is_success(),
        "placing an order: {}",
        response.status()
    );
    let body: serde_json::Value = response.json().await?;
    body["id"].as_i64().context("no order id")
}

/// How long an order's payment may take to be authorised before the restaurant gives up.
const AUTHORIZED_WITHIN: Duration = Duration::from_secs(30);

/// Confirms, prepares and readies `order` as its restaurant, once its payment is authorised
/// (until then the restaurant does not see it: 404).
async fn advance(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    order: i64,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + AUTHORIZED_WITHIN;
    for action in ["confirm", "start-preparing", "ready"] {
        let response = loop {
            let response = http
                .post(format!("{base}/v1/orders/{order}/{action}"))
                .bearer_auth(token)
                .send()
                .await?;
            let unseen = response.status() == reqwest::StatusCode::NOT_FOUND;
            if !unseen || tokio::time::Instant::now() >= deadline {
                break response;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        anyhow::ensure!(
            response.status().is_success(),
            "{action} of order {order}: {}",
            response.status()
        );
    }
    Ok(())
}

/// Runs the benchmark and prints its report.
pub async fn run(config: &Config, opts: &SseBench) -> anyhow::Result<()> {
    anyhow::ensure!(
        opts.clients >= 2 && opts.per_restaurant >= 1 && opts.orders_per_second > 0.0,
        "use at least 2 clients, 1 client per restaurant and a positive order rate"
    );
    ensure_dedicated(
        config.database.url.expose_secret(),
        &config.valkey.key_prefix,
    )?;
    let order_clients = opts.clients / 2;
    let restaurant_clients = opts.clients - order_clients;
    let restaurants = restaurant_clients.div_ceil(opts.per_restaurant).max(1);
    let moved =
        ((opts.orders_per_second * opts.duration.as_secs_f64()).ceil() as usize).min(order_clients);

    println!("preparing a fresh database and key prefix…");
    let db = fresh_database(config).await?;
    let valkey = Valkey::new(&config.valkey)?;
    let mut conn = valkey.connection();
    let _: () = redis::cmd("DEL")
        .arg(valkey.key(courier::outbox::sink::STREAM_SUFFIX))
        .query_async(&mut conn)
        .await?;
    let (restaurant_ids, dishes, customers) = seed(&db, restaurants, order_clients).await?;

    let logs = PathBuf::from(std::env::var("COURIER_DATA_DIR").unwrap_or_else(|_| ".data".into()));
    std::fs::create_dir_all(&logs)?;
    let server = Courier::start(
        config,
        "serve",
        Some(opts.listen),
        &[crate::server::unlimited()],
        Some(&logs.join("bench-sse-serve.log")),
    )?;
    let worker = Courier::start(
        config,
        "worker",
        None,
        &[("COURIER_RELAY_POLL", "1s".to_owned())],
        Some(&logs.join("bench-sse-worker.log")),
    )?;
    let base = format!("http://{}", opts.listen);
    wait_ready(&base).await?;

    let keys = TokenKeys::new(&config.jwt_secret);
    let now = Utc::now().timestamp();
    let token = |role: Role, subject: i64| {
        keys.issue(Principal { role, subject }, now, Duration::from_secs(3600))
    };
    let http = reqwest::Client::new();
    println!("placing {order_clients} orders to follow…");
    let mut orders = Vec::with_capacity(order_clients);
    for (i, customer) in customers.iter().enumerate() {
        let r = i % restaurant_ids.len();
        let order = place(
            &http,
            &base,
            &token(Role::Customer, *customer)?,
            restaurant_ids[r],
            dishes[r],
        )
        .await?;
        orders.push((order, *customer, restaurant_ids[r]));
    }
    // Everything placed so far is published before anyone connects.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        .fetch_one(&db)
        .await?
        > 0
    {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the relay did not publish the placed orders within a minute"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = rss_kib(server.pid())?;
    let valkey_before = valkey_clients(&valkey).await?;
    println!("opening {} SSE connections…", opts.clients);
    let gathered = Arc::new(Mutex::new(Gathered::default()));
    let opened = Arc::new(AtomicU64::new(0));
    let received = Arc::new(AtomicU64::new(0));
    // One connection per stream, as separate apps would have.
    let streams = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let mut followers = Vec::with_capacity(opts.clients);
    let mut targets: Vec<(String, String)> = orders
        .iter()
        .map(|(order, customer, _)| {
            Ok((
                format!("{base}/v1/orders/{order}/events"),
                token(Role::Customer, *customer)?,
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    for i in 0..restaurant_clients {
        let restaurant = restaurant_ids[i % restaurant_ids.len()];
        targets.push((
            format!("{base}/v1/restaurants/{restaurant}/orders/stream"),
            token(Role::Restaurant, restaurant)?,
        ));
    }
    for (url, bearer) in targets {
        let response = streams.get(url).bearer_auth(bearer).send().await?;
        anyhow::ensure!(
            response.status().is_success(),
            "opening a stream: {}",
            response.status()
        );
        followers.push(tokio::spawn(follow(
            response,
            gathered.clone(),
            opened.clone(),
            received.clone(),
        )));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while opened.load(Ordering::Relaxed) < opts.clients as u64 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "only {} of {} streams sent their snapshot",
            opened.load(Ordering::Relaxed),
            opts.clients
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_open = rss_kib(server.pid())?;
    let valkey_open = valkey_clients(&valkey).await?;

    println!(
        "moving {moved} orders on at {}/s for {:?} (three status changes each)…",
        opts.orders_per_second, opts.duration
    );
    let stop = Arc::new(AtomicBool::new(false));
    let baseline = tokio::spawn(read_stream(valkey.clone(), gathered.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let per_restaurant: HashMap<i64, usize> =
        (0..restaurant_clients).fold(HashMap::new(), |mut acc, i| {
            *acc.entry(restaurant_ids[i % restaurant_ids.len()])
                .or_default() += 1;
            acc
        });
    let mut expected = 0u64;
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / opts.orders_per_second));
    let mut moves = Vec::with_capacity(moved);
    for (order, _, restaurant) in orders.iter().take(moved).copied() {
        ticks.tick().await;
        expected += 3 * (1 + per_restaurant.get(&restaurant).copied().unwrap_or(0) as u64);
        let (http, base, bearer) = (
            http.clone(),
            base.clone(),
            token(Role::Restaurant, restaurant)?,
        );
        moves.push(tokio::spawn(async move {
            advance(&http, &base, &bearer, order).await
        }));
    }
    for result in futures::future::join_all(moves).await {
        result??;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while received.load(Ordering::Relaxed) < expected && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let _ = baseline.await;
    let rss_flow = rss_kib(server.pid())?;
    for follower in &followers {
        follower.abort();
    }
    server.stop()?;
    worker.stop()?;

    let gathered = gathered.lock().await;
    let got = received.load(Ordering::Relaxed);
    let per_conn = (rss_open.saturating_sub(rss_before)) as f64 / opts.clients as f64;
    let (sse50, sse99) = (
        quantile(&gathered.sse_ms, 0.5),
        quantile(&gathered.sse_ms, 0.99),
    );
    let (st50, st99) = (
        quantile(&gathered.stream_ms, 0.5),
        quantile(&gathered.stream_ms, 0.99),
    );
    println!();
    println!(
        "clients: {} on one server process ({order_clients} order streams, {restaurant_clients} restaurant streams over {restaurants} restaurants)",
        opts.clients
    );
    println!(
        "memory: server RSS {:.1} MiB before → {:.1} MiB with every stream open ({per_conn:.1} KiB per connection); {:.1} MiB after the flow",
        rss_before as f64 / 1024.0,
        rss_open as f64 / 1024.0,
        rss_flow as f64 / 1024.0
    );
    println!("Valkey connections: {valkey_before} before, {valkey_open} with every stream open");
    println!(
        "deliveries: {got} of {expected} expected status changes reached their clients ({} status changes read from the stream)",
        gathered.stream_ms.len()
    );
    println!("commit → SSE client:               p50 {sse50:7.1} ms   p99 {sse99:7.1} ms");
    println!("commit → stream (baseline, XREAD): p50 {st50:7.1} ms   p99 {st99:7.1} ms");
    println!(
        "ratio SSE / stream:                p50 {:7.2}      p99 {:7.2}",
        sse50 / st50.max(0.001),
        sse99 / st99.max(0.001)
    );
    anyhow::ensure!(
        got >= expected,
        "{} status changes never reached their clients",
        expected - got
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_is_measured_from_the_events_timestamp() {
        let at: DateTime<Utc> = "2026-12-03T10:00:00Z".parse().unwrap_or_default();
        let event = serde_json::json!({ "timestamp": "2026-12-03T09:59:59.750Z" });
        assert_eq!(latency_ms(&event, at), Some(250.0));
        assert_eq!(latency_ms(&serde_json::json!({}), at), None);
    }
}
