//! The location service: where drivers are, who is available near a point, and the history of
//! every accepted fix.
//!
//! # Markets
//! Every driver's state lives under the keys of its market (`loc:{<slug>}:…`, see
//! [`crate::market`]): one hash tag, so every operation is a single Lua script on one slot —
//! atomic, and unchanged on Valkey Cluster, where markets spread over the nodes. A report is
//! placed in the market its position is in ([`crate::store::markets::Markets`], read from
//! memory); a report outside every active market is refused. A search runs in the market of
//! the point searched from. Postgres records each driver's market (`drivers.market_id`,
//! `NULL` until its first report).
//!
//! A driver whose report lands in a market that has no position of it (its first report,
//! a crossing into a neighbouring market, or a return after it went silent) is settled
//! there: if Postgres says it belonged elsewhere, `drivers.market_id` moves, the old market's
//! keys forget it, and its online flag, load and tracked order are written under the new
//! market's keys from Postgres — it arrives with its state, searchable at once if it was.
//! That costs one Postgres round trip per arrival, never one per report.
//!
//! Reports are ingested in groups of up to [`INGEST_GROUP`] per script call, all groups of a
//! market in one pipelined round trip (markets in parallel). Single reports from many
//! requests are coalesced into such groups by [`coalesce`]: at 10K reports/s one script call
//! per report would cost Valkey a read, a script run and a write each, CPU that every other
//! client of the machine then waits for.
//!
//! # Data in Valkey, per market
//! - `avail` — GEO set of **available** drivers only (online, seen within 30 s, fewer than 2
//!   active orders). Offline or loaded drivers are not in it, so searches never wade through them.
//! - `seen` — sorted set driver → last receipt time (ms); the sweeper removes drivers silent for
//!   30 s from `avail` and `seen`, and searches also check it, so a driver whose phone died is
//!   never offered an order even between sweeps.
//! - `d:{id}` — hash lat, lon, recorded_at, updated_at with the spec's 30 s TTL.
//! - `pos` — hash driver → `recorded_at,lat,lon` of its last accepted report: read once per
//!   ingest group for the out-of-order check (instead of one read per driver hash) and once
//!   per search for the positions of the candidates (cheaper than asking `GEOSEARCH` for
//!   coordinates). The sweeper removes drivers from it with `seen`.
//! - `online` — set of drivers who said they are online; `load` — hash driver → active orders;
//!   `tracking` — hash driver → the order whose customer watches them (live tracking).
//! - `state` — a marker that the three above were restored from Postgres.
//! - `rl:location:driver:{id}` — the driver's rate-limit bucket for single reports
//!   ([`crate::ratelimit::GCRA`]), counted by the ingest script itself: the busiest route costs
//!   no round trip of its own for its limit. A driver that changes market starts a new bucket.
//!
//! # Offer notes
//! `offers:{o<n>}:d:{id}` — "this driver was offered an order", set by matching in the offer's
//! transaction and kept for the offer's TTL and a little more; `n` is the driver id modulo
//! [`NOTE_SHARDS`], so notes spread over a cluster whatever the market. A driver's offer poll
//! with no such key is answered empty without asking Postgres: polls are most of what drivers
//! send, and nearly all of them find nothing. Each shard has a `whole` marker, set once its
//! notes were restored from the pending offers in Postgres ([`LocationService::ensure_offer_notes`],
//! run by the sweeper): a Valkey that lost the notes (restarted empty, flushed) lost the
//! markers too, and until the restore polls ask Postgres. A note whose transaction rolled back
//! only costs one Postgres read. What a failover can lose is a note written in the moment
//! before a primary died and not yet replicated: that driver's offer is not seen by its
//! polls and passes to the next driver when it expires.
//!
//! # Postgres is the source of truth
//! Who is online (`drivers.is_active`) and how many orders each driver carries live in Postgres;
//! `online`, `load` and `tracking` are copies that the ingest and search scripts can read. A
//! Valkey that restarted or was flushed has lost them, and with them every driver's
//! availability. So the ingest script refuses to work without the `state` marker, and
//! [`LocationService::ensure_state`] (run then, and by the sweeper every few seconds) rebuilds
//! the copies from Postgres in one transaction and sets the marker. A status change that
//! commits while a rebuild is reading can be overwritten by it; the driver's next status
//! change, or the next rebuild, sets it right.
//!
//! # Out-of-order reports
//! Phones deliver late. A report older than the driver's last accepted one is ignored (and said
//! so, not an error); the comparison and the write are one script, so concurrent reports from
//! one driver cannot interleave.
//!
//! # Searching a dense city
//! A naive `GEOSEARCH … BYRADIUS 5 km` over 100K drivers in one 30×30 km city sorts the ~8,700
//! members inside 5 km on every query (about 11 ms on this machine). Two things bound the work:
//! only available drivers are in the set, and a search starts with a 500 m ring and widens
//! (0.5 → 1 → 2.5 → 5 → 10 km, then the requested radius) only when the ring holds fewer than the
//! wanted drivers — a dense centre is answered from a few hundred members, a sparse suburb
//! still finds drivers far away. The widening happens inside the script, so a search is one
//! round trip however many rings it takes.
//!
//! # History
//! Accepted fixes go to the day-partitioned `driver_locations` table through
//! [`history::HistorySender`] (drained by a [`history::HistoryTask`]): batched multi-row inserts, never on the request path, a bounded
//! buffer whose overflow is counted and logged, and a flush on shutdown.

mod coalesce;
pub mod history;
pub mod scripts;
pub mod sweeper;
pub mod update;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::geo::Point;
use crate::location::coalesce::Coalescer;
use crate::location::history::{HistoryRow, HistorySender};
use crate::location::update::LocationUpdate;
use crate::market::{Market, Snapshot};
use crate::ratelimit::{GCRA, Limit, Verdict};
use crate::store::markets::Markets;
use crate::valkey::{Connection, Valkey};

/// The spec's TTL of a driver's position: silent longer, and the driver is gone.
pub const FRESHNESS: Duration = Duration::from_secs(30);
/// A driver with this many active orders is not available.
pub const MAX_ACTIVE_ORDERS: u32 = 2;
/// How much longer than its offer a driver's offer note lives: the offer's expiry counts from
/// its transaction's start, the note from a moment later.
pub const OFFER_NOTE_SLACK: Duration = Duration::from_secs(5);
/// Hash tags the offer notes are spread over.
pub const NOTE_SHARDS: i64 = 16;
/// Order states in which an order counts against its driver's capacity.
pub const ACTIVE_STATES: [&str; 4] = ["CONFIRMED", "PREPARING", "READY_FOR_PICKUP", "PICKED_UP"];
/// Search rings, in km; the requested radius caps them.
pub const RINGS_KM: [f64; 5] = [0.5, 1.0, 2.5, 5.0, 10.0];
/// Reports per ingest script call: large enough to amortise the shared reads and writes,
/// small enough that one call never blocks Valkey for more than a few milliseconds.
pub const INGEST_GROUP: usize = 200;
/// Name of the spec's geo-query latency histogram.
pub const GEO_QUERY_DURATION: &str = "geo_query_duration_seconds";
/// The spec's buckets for it.
pub const GEO_BUCKETS: [f64; 6] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1];
/// Name of the histogram of single reports per coalesced script call.
pub const INGEST_GROUP_SIZE: &str = "location_ingest_group_size";
/// Buckets for it, up to [`INGEST_GROUP`].
pub const INGEST_GROUP_BUCKETS: [f64; 8] = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0];
/// Name of the counter of drivers that changed market.
pub const MARKET_MOVES: &str = "driver_market_moves_total";
/// How long a process trusts its memory of which market a driver is in, for reads by driver
/// (its last position, its rate-limit bucket); writes ask Postgres.
const DRIVER_MARKET_TTL: Duration = Duration::from_secs(5);

/// What happened to one report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Ingested {
    /// Stored; the driver is searchable.
    Available,
    /// Stored; the driver is offline or fully loaded, so not searchable.
    Unavailable,
    /// Older than the driver's last report: ignored.
    Stale,
}

/// What happened to a report that counts against a rate limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admitted {
    /// Applied (or ignored as stale), with its limit's verdict when it had one.
    Applied(Ingested, Option<Verdict>),
    /// Over its limit: not applied.
    Refused(Verdict),
    /// Outside every active market: not applied, and not counted against a market's bucket.
    Outside,
}

/// An available driver near a point.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct NearbyDriver {
    pub driver_id: i64,
    pub distance_m: f64,
    pub lat: f64,
    pub lon: f64,
    pub active_orders: u32,
}

/// The location service. Cheap to clone.
#[derive(Clone, Debug)]
pub struct LocationService {
    core: Arc<Core>,
    single: Coalescer,
}

/// What writing reports needs; shared by the service and its [`Coalescer`] task, which stops
/// when the last service clone is dropped.
#[derive(Debug)]
struct Core {
    valkey: Valkey,
    db: PgPool,
    history: HistorySender,
    scripts: Scripts,
    markets: Markets,
    /// The keys of each market seen so far, by market id (a slug never changes).
    keys: Mutex<HashMap<i64, Arc<Keys>>>,
    /// Which market each driver was last known in, and when that was learnt.
    driver_markets: Mutex<HashMap<i64, (i64, Instant)>>,
    channel_prefix: String,
    /// Held while restoring a market's driver state, so concurrent callers restore it once.
    restoring: tokio::sync::Mutex<()>,
}

#[derive(Debug)]
struct Scripts {
    ingest: redis::Script,
    set_status: redis::Script,
    set_load: redis::Script,
    sweep: redis::Script,
    nearby: redis::Script,
    leave: redis::Script,
    arrive: redis::Script,
}

/// The keys of one market.
#[derive(Debug)]
struct Keys {
    market: Arc<Market>,
    avail: String,
    seen: String,
    online: String,
    load: String,
    tracking: String,
    pos: String,
    state: String,
    driver_prefix: String,
    limit_prefix: String,
}

impl Keys {
    fn new(valkey: &Valkey, market: Arc<Market>) -> Self {
        let tag = format!("loc:{}:", market.tag());
        let key = |suffix: &str| valkey.key(&format!("{tag}{suffix}"));
        Self {
            avail: key("avail"),
            seen: key("seen"),
            online: key("online"),
            load: key("load"),
            tracking: key("tracking"),
            pos: key("pos"),
            state: key("state"),
            driver_prefix: key("d:"),
            limit_prefix: key("rl:location:driver:"),
            market,
        }
    }

    fn driver(&self, id: i64) -> String {
        format!("{}{id}", self.driver_prefix)
    }

    fn limit(&self, id: i64) -> String {
        format!("{}{id}", self.limit_prefix)
    }
}

/// Now, in unix milliseconds (the unit of every location timestamp).
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn freshness_ms() -> i64 {
    i64::try_from(FRESHNESS.as_millis()).unwrap_or(30_000)
}

/// A Postgres failure met while serving a location operation, as the Valkey error type the
/// operations return (both mean "the location service cannot answer now").
fn postgres_failed(what: &'static str, error: &sqlx::Error) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Client, what, error.to_string()))
}

impl LocationService {
    /// A service on `valkey` and `db` whose history goes to `history`. Starts the task that
    /// coalesces single reports, so it must be called within a Tokio runtime.
    pub fn new(valkey: Valkey, db: PgPool, history: HistorySender) -> Self {
        let core = Arc::new(Core {
            channel_prefix: valkey.key("driver:"),
            markets: Markets::new(db.clone()),
            keys: Mutex::new(HashMap::new()),
            driver_markets: Mutex::new(HashMap::new()),
            valkey,
            db,
            history,
            scripts: Scripts {
                ingest: redis::Script::new(&format!("{GCRA}{}", scripts::INGEST)),
                set_status: redis::Script::new(scripts::SET_STATUS),
                set_load: redis::Script::new(scripts::SET_LOAD),
                sweep: redis::Script::new(scripts::SWEEP),
                nearby: redis::Script::new(scripts::NEARBY),
                leave: redis::Script::new(scripts::LEAVE),
                arrive: redis::Script::new(scripts::ARRIVE),
            },
            restoring: tokio::sync::Mutex::new(()),
        });
        Self {
            single: Coalescer::spawn(core.clone()),
            core,
        }
    }

    /// The Valkey this service keeps drivers in.
    pub fn valkey(&self) -> &Valkey {
        &self.core.valkey
    }

    /// The markets this service places reports in.
    pub fn markets(&self) -> &Markets {
        &self.core.markets
    }

    /// The slug of the market `at` is in, from this process's latest copy of the markets
    /// (`none` outside every market or before the first read): a metrics label.
    pub fn market_label(&self, at: Point) -> String {
        self.core
            .markets
            .latest()
            .and_then(|markets| markets.containing(at).map(|m| m.slug.to_string()))
            .unwrap_or_else(|| "none".to_owned())
    }

    fn conn(&self) -> Connection {
        self.core.valkey.connection()
    }

    /// Applies validated reports, each market's in one pipelined round trip; one outcome per
    /// report, in order: `None` for a report outside every active market. Accepted reports
    /// are queued for history.
    pub async fn ingest(
        &self,
        updates: &[LocationUpdate],
    ) -> redis::RedisResult<Vec<Option<Ingested>>> {
        let reports: Vec<(LocationUpdate, Option<Limit>)> =
            updates.iter().map(|u| (*u, None)).collect();
        self.core
            .ingest(&reports)
            .await
            .into_iter()
            .map(|admitted| match admitted? {
                Admitted::Applied(outcome, _) => Ok(Some(outcome)),
                Admitted::Outside => Ok(None),
                Admitted::Refused(_) => Err(redis::RedisError::from((
                    redis::ErrorKind::UnexpectedReturnType,
                    "the ingest script refused a report that had no limit",
                ))),
            })
            .collect()
    }

    /// Applies one report, counted against `limit` (its driver's bucket) in the same script
    /// call, with the other single reports arriving meanwhile (see [`coalesce`]). Accepted, it
    /// is queued for history.
    pub async fn ingest_one(
        &self,
        update: LocationUpdate,
        limit: Option<Limit>,
    ) -> redis::RedisResult<Admitted> {
        self.single.ingest(update, limit).await
    }

    /// The bucket of a driver's single reports in its market, for counting a report that
    /// never reached the ingest script (refused before it) against the same budget; `None`
    /// for a driver that is in no market yet.
    pub async fn rate_limit_key(&self, driver_id: i64) -> redis::RedisResult<Option<String>> {
        Ok(self
            .core
            .known_keys_of(driver_id)
            .await?
            .map(|keys| keys.limit(driver_id)))
    }

    /// Sets a driver online (searchable again at its last fresh position) or offline (gone
    /// from searches at once). Returns whether the driver is now searchable (never, for a
    /// driver that has not reported a position yet: it is in no market).
    pub async fn set_online(&self, driver_id: i64, online: bool) -> redis::RedisResult<bool> {
        let Some(keys) = self.core.current_keys_of(driver_id).await? else {
            return Ok(false);
        };
        self.core.set_online_in(&keys, driver_id, online).await
    }

    /// Restores each market's online set, loads and tracked orders from Postgres if Valkey
    /// lost them (see the module docs); returns whether it restored any.
    pub async fn ensure_state(&self) -> redis::RedisResult<bool> {
        let mut restored = false;
        for keys in self.core.all_keys().await? {
            restored |= self.core.ensure_state(&keys).await?;
        }
        Ok(restored)
    }

    /// Removes drivers silent for longer than [`FRESHNESS`] from the searchable structures of
    /// every market; returns how many. Safe to run from several processes at once.
    pub async fn sweep(&self) -> redis::RedisResult<u64> {
        const BATCH: u64 = 1_000;
        let mut conn = self.conn();
        let cutoff = now_ms() - freshness_ms();
        let mut removed = 0;
        for keys in self.core.all_keys().await? {
            loop {
                let n: u64 = self
                    .core
                    .scripts
                    .sweep
                    .key(&keys.seen)
                    .key(&keys.avail)
                    .key(&keys.pos)
                    .arg(cutoff)
                    .arg(BATCH)
                    .invoke_async(&mut conn)
                    .await?;
                removed += n;
                if n < BATCH {
                    break;
                }
            }
        }
        Ok(removed)
    }

    /// How many drivers have reported within [`FRESHNESS`], per market slug.
    pub async fn active_counts(&self) -> redis::RedisResult<Vec<(String, u64)>> {
        let mut conn = self.conn();
        let mut counts = Vec::new();
        for keys in self.core.all_keys().await? {
            let count: u64 = redis::cmd("ZCOUNT")
                .arg(&keys.seen)
                .arg(now_ms() - freshness_ms())
                .arg("+inf")
                .query_async(&mut conn)
                .await?;
            counts.push((keys.market.slug.to_string(), count));
        }
        Ok(counts)
    }

    /// How many drivers have reported within [`FRESHNESS`], in all markets.
    pub async fn active_count(&self) -> redis::RedisResult<u64> {
        Ok(self.active_counts().await?.iter().map(|(_, n)| n).sum())
    }

    fn note_key(&self, driver_id: i64) -> String {
        self.core.note_key(driver_id)
    }

    /// Notes that `driver_id` was offered an order that expires within `ttl` (see the module
    /// docs): its offer polls read Postgres until `ttl` and [`OFFER_NOTE_SLACK`] have passed.
    pub async fn note_offer(&self, driver_id: i64, ttl: Duration) -> redis::RedisResult<()> {
        let mut conn = self.conn();
        let px = u64::try_from((ttl + OFFER_NOTE_SLACK).as_millis()).unwrap_or(u64::MAX);
        redis::cmd("SET")
            .arg(self.note_key(driver_id))
            .arg(1)
            .arg("PX")
            .arg(px)
            .query_async(&mut conn)
            .await
    }

    /// Whether `driver_id` may hold a pending offer: false only when no offer was noted for it
    /// and its shard's notes are whole (their marker is there: see the module docs).
    pub async fn may_hold_offer(&self, driver_id: i64) -> redis::RedisResult<bool> {
        let mut conn = self.conn();
        let (noted, whole): (bool, bool) = redis::pipe()
            .exists(self.note_key(driver_id))
            .exists(self.core.notes_marker(driver_id.rem_euclid(NOTE_SHARDS)))
            .query_async(&mut conn)
            .await?;
        Ok(noted || !whole)
    }

    /// Restores the offer notes of every shard whose marker is missing (Valkey lost them)
    /// from the pending offers in Postgres, then sets its marker; returns how many shards it
    /// restored. Run by the sweeper every few seconds, from every process: a restore writes
    /// what Postgres says, so running it twice does no harm.
    pub async fn ensure_offer_notes(&self) -> redis::RedisResult<u64> {
        self.core.ensure_offer_notes().await
    }

    /// Up to `limit` available drivers within `radius_km` of `at`, nearest first, searching
    /// in widening rings (see the module docs) in one script call, in the market `at` is in
    /// (none outside every active market).
    pub async fn find_nearby_drivers(
        &self,
        at: Point,
        radius_km: f64,
        limit: usize,
    ) -> redis::RedisResult<Vec<NearbyDriver>> {
        let snapshot = self.core.snapshot().await?;
        let Some(market) = snapshot.containing(at) else {
            return Ok(Vec::new());
        };
        self.search(market, at, rings(radius_km), limit).await
    }

    /// Every driver of market `market_id` who could take an order now (online, a fresh
    /// position, below capacity), up to `limit`, nearest its centre first: the pool of a
    /// dispatch cycle, in one script call. Empty for a market this process does not know.
    pub async fn available_in(
        &self,
        market_id: i64,
        limit: usize,
    ) -> redis::RedisResult<Vec<NearbyDriver>> {
        let snapshot = self.core.snapshot().await?;
        let Some(market) = snapshot.get(market_id) else {
            return Ok(Vec::new());
        };
        let (centre, radius_km) = (market.center, market.radius_km);
        self.search(market, centre, std::iter::once(radius_km), limit)
            .await
    }

    async fn search(
        &self,
        market: &Arc<Market>,
        at: Point,
        rings: impl Iterator<Item = f64>,
        limit: usize,
    ) -> redis::RedisResult<Vec<NearbyDriver>> {
        let keys = self.core.keys_of(market);
        let mut conn = self.core.valkey.query_connection();
        let mut invocation = self.core.scripts.nearby.prepare_invoke();
        invocation
            .key(&keys.avail)
            .key(&keys.seen)
            .key(&keys.load)
            .key(&keys.pos)
            .arg(at.lon)
            .arg(at.lat)
            .arg(limit)
            .arg(now_ms() - freshness_ms());
        for ring in rings {
            invocation.arg(ring);
        }
        let started = Instant::now();
        let flat: Vec<String> = match invocation.invoke_async(&mut conn).await {
            // The connection broke (Valkey restarted while it was idle): it reconnects on
            // its own, and a search is safe to repeat.
            Err(e) if crate::valkey::is_disconnect(&e) => {
                invocation.invoke_async(&mut conn).await?
            }
            other => other?,
        };
        metrics::histogram!(GEO_QUERY_DURATION, "market" => market.slug.to_string())
            .record(started.elapsed().as_secs_f64());
        Ok(parse_nearby(at, &flat))
    }

    /// Records which order a driver carries, so its reports reach that order's live channel
    /// (`None` stops it), and its number of active orders. A driver at capacity leaves the
    /// searchable set; one below it (an order delivered or cancelled) is searchable again at
    /// once if online with a fresh position. Returns whether the driver is now searchable.
    pub async fn set_assignment(
        &self,
        driver_id: i64,
        tracking_order: Option<i64>,
        active_orders: u32,
    ) -> redis::RedisResult<bool> {
        let Some(keys) = self.core.current_keys_of(driver_id).await? else {
            return Ok(false);
        };
        self.core
            .set_load_in(&keys, driver_id, tracking_order, active_orders)
            .await
    }

    /// A driver's last reported position and when it arrived (unix ms), however old.
    pub async fn last_fix(&self, driver_id: i64) -> redis::RedisResult<Option<(Point, i64)>> {
        let Some(keys) = self.core.known_keys_of(driver_id).await? else {
            return Ok(None);
        };
        let mut conn = self.conn();
        let (lat, lon, updated_at): (Option<f64>, Option<f64>, Option<i64>) = redis::cmd("HMGET")
            .arg(keys.driver(driver_id))
            .arg("lat")
            .arg("lon")
            .arg("updated_at")
            .query_async(&mut conn)
            .await?;
        Ok(match (lat, lon, updated_at) {
            (Some(lat), Some(lon), Some(at)) => Point::new(lat, lon).map(|p| (p, at)),
            _ => None,
        })
    }

    /// A driver's last reported position, if it is fresh (within [`FRESHNESS`]).
    pub async fn position(&self, driver_id: i64) -> redis::RedisResult<Option<Point>> {
        let fix = self.last_fix(driver_id).await?;
        Ok(fix
            .filter(|(_, at)| *at >= now_ms() - freshness_ms())
            .map(|(p, _)| p))
    }

    /// The channel on which a driver carrying an order publishes its positions
    /// (`{"driverId", "orderId" (the order it tracks), "lat", "lon", "timestamp"}`). Channels
    /// are not keys: a cluster delivers them to every node, whatever the market.
    pub fn position_channel(&self, driver_id: i64) -> String {
        format!("{}{driver_id}:location", self.core.channel_prefix)
    }
}

/// A driver that arrived in a market (see the module docs), as Postgres has it.
#[derive(Debug, sqlx::FromRow)]
struct Arrival {
    id: i64,
    old_market: Option<i64>,
    is_active: bool,
    load: i64,
    tracking: Option<i64>,
}

impl Core {
    fn note_key(&self, driver_id: i64) -> String {
        let shard = driver_id.rem_euclid(NOTE_SHARDS);
        self.valkey
            .key(&format!("offers:{{o{shard}}}:d:{driver_id}"))
    }

    fn notes_marker(&self, shard: i64) -> String {
        self.valkey.key(&format!("offers:{{o{shard}}}:whole"))
    }

    /// See [`LocationService::ensure_offer_notes`].
    async fn ensure_offer_notes(&self) -> redis::RedisResult<u64> {
        let mut conn = self.valkey.connection();
        let mut missing = Vec::new();
        for shard in 0..NOTE_SHARDS {
            let whole: bool = redis::cmd("EXISTS")
                .arg(self.notes_marker(shard))
                .query_async(&mut conn)
                .await?;
            if !whole {
                missing.push(shard);
            }
        }
        if missing.is_empty() {
            return Ok(0);
        }
        let pending: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT driver_id, GREATEST(EXTRACT(EPOCH FROM expires_at - now()) * 1000, 0)::bigint
             FROM offers WHERE status = 'pending' AND driver_id % $1 = ANY($2)",
        )
        .bind(NOTE_SHARDS)
        .bind(&missing)
        .fetch_all(&self.db)
        .await
        .map_err(|e| postgres_failed("restoring the offer notes: Postgres failed", &e))?;
        let slack = i64::try_from(OFFER_NOTE_SLACK.as_millis()).unwrap_or(5_000);
        for (driver, left_ms) in &pending {
            let () = redis::cmd("SET")
                .arg(self.note_key(*driver))
                .arg(1)
                .arg("PX")
                .arg(left_ms + slack)
                .query_async(&mut conn)
                .await?;
        }
        for shard in &missing {
            let () = redis::cmd("SET")
                .arg(self.notes_marker(*shard))
                .arg(now_ms())
                .query_async(&mut conn)
                .await?;
        }
        if !pending.is_empty() {
            tracing::warn!(
                shards = missing.len(),
                offers = pending.len(),
                "Valkey had lost offer notes; restored them from Postgres"
            );
        }
        Ok(missing.len() as u64)
    }

    async fn snapshot(&self) -> redis::RedisResult<Snapshot> {
        self.markets
            .snapshot()
            .await
            .map_err(|e| postgres_failed("reading the markets: Postgres failed", &e))
    }

    /// The keys of `market`.
    fn keys_of(&self, market: &Arc<Market>) -> Arc<Keys> {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.entry(market.id)
            .or_insert_with(|| Arc::new(Keys::new(&self.valkey, market.clone())))
            .clone()
    }

    /// The keys of every market, active or not (an inactive market may still hold drivers).
    async fn all_keys(&self) -> redis::RedisResult<Vec<Arc<Keys>>> {
        let snapshot = self.snapshot().await?;
        Ok(snapshot.all().map(|m| self.keys_of(m)).collect())
    }

    fn remember(&self, drivers: impl Iterator<Item = i64>, market_id: i64) {
        let now = Instant::now();
        let mut known = self
            .driver_markets
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if known.len() >= 200_000 {
            known.clear();
        }
        for driver in drivers {
            known.insert(driver, (market_id, now));
        }
    }

    /// The keys of the market Postgres says `driver_id` is in, read now (for writes).
    async fn current_keys_of(&self, driver_id: i64) -> redis::RedisResult<Option<Arc<Keys>>> {
        let market: Option<i64> = sqlx::query_scalar("SELECT market_id FROM drivers WHERE id = $1")
            .bind(driver_id)
            .fetch_optional(&self.db)
            .await
            .map_err(|e| postgres_failed("reading a driver's market: Postgres failed", &e))?
            .flatten();
        let Some(market) = market else {
            return Ok(None);
        };
        self.remember(std::iter::once(driver_id), market);
        let snapshot = self.snapshot().await?;
        Ok(snapshot.get(market).map(|m| self.keys_of(m)))
    }

    /// The keys of the market `driver_id` was last known in, from memory when that is recent
    /// (for reads).
    async fn known_keys_of(&self, driver_id: i64) -> redis::RedisResult<Option<Arc<Keys>>> {
        let known = self
            .driver_markets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&driver_id)
            .filter(|(_, at)| at.elapsed() < DRIVER_MARKET_TTL)
            .map(|(market, _)| *market);
        match known {
            Some(market) => {
                let snapshot = self.snapshot().await?;
                Ok(snapshot.get(market).map(|m| self.keys_of(m)))
            }
            None => self.current_keys_of(driver_id).await,
        }
    }

    async fn set_online_in(
        &self,
        keys: &Keys,
        driver_id: i64,
        online: bool,
    ) -> redis::RedisResult<bool> {
        let mut conn = self.valkey.connection();
        let searchable: i64 = self
            .availability(&self.scripts.set_status, keys, driver_id)
            .arg(driver_id)
            .arg(if online { "1" } else { "0" })
            .arg(now_ms() - freshness_ms())
            .invoke_async(&mut conn)
            .await?;
        Ok(searchable == 1)
    }

    async fn set_load_in(
        &self,
        keys: &Keys,
        driver_id: i64,
        tracking_order: Option<i64>,
        active_orders: u32,
    ) -> redis::RedisResult<bool> {
        let mut conn = self.valkey.connection();
        let searchable: i64 = self
            .availability(&self.scripts.set_load, keys, driver_id)
            .key(&keys.tracking)
            .arg(driver_id)
            .arg(tracking_order.map(|o| o.to_string()).unwrap_or_default())
            .arg(active_orders)
            .arg(now_ms() - freshness_ms())
            .invoke_async(&mut conn)
            .await?;
        Ok(searchable == 1)
    }

    /// `script` called on what decides whether `driver_id` is searchable: the online set, the
    /// available set, the driver's position hash and the loads (its first four keys).
    fn availability<'s>(
        &self,
        script: &'s redis::Script,
        keys: &Keys,
        driver_id: i64,
    ) -> redis::ScriptInvocation<'s> {
        let mut invocation = script.prepare_invoke();
        invocation
            .key(&keys.online)
            .key(&keys.avail)
            .key(keys.driver(driver_id))
            .key(&keys.load);
        invocation
    }

    /// Applies validated reports, each counted against its limit first: each market's in one
    /// pipelined round trip, the markets in parallel. One answer per report, in order; a
    /// market Valkey cannot serve fails only its own reports. Accepted reports are queued for
    /// history.
    pub async fn ingest(
        &self,
        reports: &[(LocationUpdate, Option<Limit>)],
    ) -> Vec<redis::RedisResult<Admitted>> {
        if reports.is_empty() {
            return Vec::new();
        }
        let snapshot = match self.snapshot().await {
            Ok(snapshot) => snapshot,
            Err(error) => return reports.iter().map(|_| Err(error.clone())).collect(),
        };
        let mut answers: Vec<Option<redis::RedisResult<Admitted>>> =
            reports.iter().map(|_| None).collect();
        let mut by_market: HashMap<i64, (Arc<Market>, Vec<usize>)> = HashMap::new();
        for (index, (update, _)) in reports.iter().enumerate() {
            match snapshot.containing(update.point) {
                Some(market) => by_market
                    .entry(market.id)
                    .or_insert_with(|| (market.clone(), Vec::new()))
                    .1
                    .push(index),
                None => answers[index] = Some(Ok(Admitted::Outside)),
            }
        }
        let runs = by_market
            .into_values()
            .map(|(market, indices)| self.ingest_placed(market, reports, indices));
        for (index, answer) in futures::future::join_all(runs).await.into_iter().flatten() {
            answers[index] = Some(answer);
        }
        answers
            .into_iter()
            .map(|answer| {
                answer.unwrap_or_else(|| {
                    Err(redis::RedisError::from((
                        redis::ErrorKind::Client,
                        "a report was left unanswered",
                    )))
                })
            })
            .collect()
    }

    /// Applies the reports at `indices`, all in `market`, and answers each by its index. A
    /// group Valkey refuses (its script rejects one report) is applied again report by
    /// report, so one bad report never fails the others; the refused call wrote nothing, so
    /// no report is counted twice against its limit.
    async fn ingest_placed(
        &self,
        market: Arc<Market>,
        reports: &[(LocationUpdate, Option<Limit>)],
        indices: Vec<usize>,
    ) -> Vec<(usize, redis::RedisResult<Admitted>)> {
        let keys = self.keys_of(&market);
        let group: Vec<(LocationUpdate, Option<Limit>)> =
            indices.iter().map(|&i| reports[i]).collect();
        match self.ingest_market(&keys, &group).await {
            Ok(admitted) => indices
                .into_iter()
                .zip(admitted.into_iter().map(Ok))
                .collect(),
            Err(error) if group.len() > 1 && is_refusal(&error) => {
                tracing::warn!(reports = group.len(), error = %error, "an ingest group was refused; applying its reports one by one");
                let mut answers = Vec::with_capacity(group.len());
                for (index, report) in indices.into_iter().zip(&group) {
                    let answer = self
                        .ingest_market(&keys, std::slice::from_ref(report))
                        .await
                        .and_then(|mut one| {
                            one.pop().ok_or_else(|| {
                                redis::RedisError::from((
                                    redis::ErrorKind::UnexpectedReturnType,
                                    "the ingest script answered no report",
                                ))
                            })
                        });
                    answers.push((index, answer));
                }
                answers
            }
            Err(error) => indices
                .into_iter()
                .map(|index| (index, Err(error.clone())))
                .collect(),
        }
    }

    /// Applies reports that are all in the market of `keys`; settles the drivers new there.
    async fn ingest_market(
        &self,
        keys: &Keys,
        reports: &[(LocationUpdate, Option<Limit>)],
    ) -> redis::RedisResult<Vec<Admitted>> {
        let now = now_ms();
        let ttl = freshness_ms();
        let build = |pipe: &mut redis::Pipeline| {
            for group in reports.chunks(INGEST_GROUP) {
                let cmd = pipe
                    .cmd("EVALSHA")
                    .arg(self.scripts.ingest.get_hash())
                    .arg(7 + group.len() + group.iter().filter(|(_, l)| l.is_some()).count())
                    .arg(&keys.seen)
                    .arg(&keys.avail)
                    .arg(&keys.online)
                    .arg(&keys.load)
                    .arg(&keys.tracking)
                    .arg(&keys.pos)
                    .arg(&keys.state);
                for (u, _) in group {
                    cmd.arg(keys.driver(u.driver_id));
                }
                for (u, _) in group.iter().filter(|(_, limit)| limit.is_some()) {
                    cmd.arg(keys.limit(u.driver_id));
                }
                cmd.arg(now).arg(ttl).arg(&self.channel_prefix);
                for (u, limit) in group {
                    cmd.arg(u.driver_id)
                        .arg(u.point.lat)
                        .arg(u.point.lon)
                        .arg(u.recorded_at_ms)
                        .arg(limit.map_or(0, Limit::interval_ms))
                        .arg(limit.map_or(0, |l| l.burst));
                }
            }
        };
        let mut groups: Vec<Vec<i64>> = self.run_pipeline(&self.scripts.ingest, &build).await?;
        if groups.iter().any(|g| g.first() == Some(&STATE_MISSING)) {
            // Groups that ran before the marker went missing are applied again: a report
            // applied twice ends where it ended once.
            self.ensure_state(keys).await?;
            groups = self.run_pipeline(&self.scripts.ingest, &build).await?;
            if groups.iter().any(|g| g.first() == Some(&STATE_MISSING)) {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::Client,
                    "the driver state went missing again right after its restore",
                )));
            }
        }
        let answers: Vec<i64> = groups.into_iter().flatten().collect();
        if answers.len() != reports.len() * 5 {
            return Err(redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "the ingest script answered a different number of reports",
            )));
        }
        let mut admitted: Vec<Admitted> = reports
            .iter()
            .zip(answers.chunks_exact(5))
            .map(|((_, limit), answer)| admission(*limit, answer))
            .collect();
        let arrived: Vec<i64> = reports
            .iter()
            .zip(answers.chunks_exact(5))
            .filter(|(_, answer)| answer.first() == Some(&NEW_HERE))
            .map(|((update, _), _)| update.driver_id)
            .collect();
        if !arrived.is_empty() {
            let searchable = self.settle(keys, &arrived).await?;
            for ((update, _), admitted) in reports.iter().zip(admitted.iter_mut()) {
                if let (Some(true), Admitted::Applied(outcome @ Ingested::Unavailable, _)) =
                    (searchable.get(&update.driver_id), admitted)
                {
                    *outcome = Ingested::Available;
                }
            }
        }
        self.remember(reports.iter().map(|(u, _)| u.driver_id), keys.market.id);
        for ((update, _), admitted) in reports.iter().zip(&admitted) {
            if matches!(admitted, Admitted::Applied(outcome, _) if *outcome != Ingested::Stale) {
                self.history.record(HistoryRow::from(update));
            }
        }
        Ok(admitted)
    }

    /// Settles drivers that reported in the market of `keys` without a position there: those
    /// Postgres places elsewhere (or nowhere) move here with their state (see the module
    /// docs). Returns, per driver that moved, whether it is now searchable.
    async fn settle(&self, keys: &Keys, drivers: &[i64]) -> redis::RedisResult<HashMap<i64, bool>> {
        let market = keys.market.id;
        let arrivals: Vec<Arrival> = sqlx::query_as(
            "WITH moving AS (
                 SELECT id, market_id FROM drivers
                 WHERE id = ANY($1) AND market_id IS DISTINCT FROM $2
                 ORDER BY id FOR UPDATE
             ), moved AS (
                 UPDATE drivers d SET market_id = $2, updated_at = now()
                 FROM moving WHERE d.id = moving.id
                 RETURNING d.id, moving.market_id AS old_market, d.is_active
             )
             SELECT m.id, m.old_market, m.is_active,
                    count(o.id) AS load, min(o.id) AS tracking
             FROM moved m
             LEFT JOIN orders o ON o.driver_id = m.id AND o.status = ANY($3)
             GROUP BY m.id, m.old_market, m.is_active",
        )
        .bind(drivers)
        .bind(market)
        .bind(&ACTIVE_STATES[..])
        .fetch_all(&self.db)
        .await
        .map_err(|e| postgres_failed("moving drivers between markets: Postgres failed", &e))?;
        let mut searchable = HashMap::new();
        if arrivals.is_empty() {
            return Ok(searchable);
        }
        let snapshot = self.snapshot().await?;
        let mut conn = self.valkey.connection();
        let mut leaving: HashMap<i64, Vec<i64>> = HashMap::new();
        for arrival in &arrivals {
            if let Some(old) = arrival.old_market {
                leaving.entry(old).or_default().push(arrival.id);
            }
        }
        for (old, drivers) in leaving {
            let Some(old) = snapshot.get(old) else {
                continue;
            };
            let old = self.keys_of(old);
            let mut leave = self.scripts.leave.prepare_invoke();
            leave
                .key(&old.avail)
                .key(&old.seen)
                .key(&old.pos)
                .key(&old.online)
                .key(&old.load)
                .key(&old.tracking);
            for driver in &drivers {
                leave.key(old.driver(*driver)).arg(*driver);
            }
            let _: i64 = leave.invoke_async(&mut conn).await?;
            metrics::counter!(MARKET_MOVES, "from" => old.market.slug.to_string(), "to" => keys.market.slug.to_string())
                .increment(drivers.len() as u64);
            tracing::info!(
                drivers = ?drivers,
                from = %old.market.slug,
                to = %keys.market.slug,
                "drivers moved to a neighbouring market"
            );
        }
        let mut arrive = self.scripts.arrive.prepare_invoke();
        arrive
            .key(&keys.online)
            .key(&keys.avail)
            .key(&keys.load)
            .key(&keys.tracking)
            .arg(now_ms() - freshness_ms());
        for arrival in &arrivals {
            arrive
                .key(keys.driver(arrival.id))
                .arg(arrival.id)
                .arg(if arrival.is_active { "1" } else { "0" })
                .arg(arrival.load)
                .arg(arrival.tracking.map(|o| o.to_string()).unwrap_or_default());
        }
        let now: Vec<i64> = arrive.invoke_async(&mut conn).await?;
        for (arrival, now) in arrivals.iter().zip(now) {
            searchable.insert(arrival.id, now == 1);
        }
        Ok(searchable)
    }

    /// Runs a pipeline of `EVALSHA`s of `script`; if Valkey lost its scripts (a restart), loads
    /// the script and retries once; if the connection broke, retries once on the new one.
    async fn run_pipeline<T: redis::FromRedisValue>(
        &self,
        script: &redis::Script,
        build: impl Fn(&mut redis::Pipeline),
    ) -> redis::RedisResult<Vec<T>> {
        let mut conn = self.valkey.connection();
        let mut pipe = redis::pipe();
        build(&mut pipe);
        let mut result = pipe.query_async::<Vec<T>>(&mut conn).await;
        if matches!(&result, Err(e) if crate::valkey::is_disconnect(e)) {
            result = pipe.query_async(&mut conn).await;
        }
        match result {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                script.load_async(&mut conn).await?;
                pipe.query_async(&mut conn).await
            }
            other => other,
        }
    }

    /// See [`LocationService::ensure_state`]; for the market of `keys`.
    async fn ensure_state(&self, keys: &Keys) -> redis::RedisResult<bool> {
        let _restoring = self.restoring.lock().await;
        let mut conn = self.valkey.connection();
        let present: bool = redis::cmd("EXISTS")
            .arg(&keys.state)
            .query_async(&mut conn)
            .await?;
        if present {
            return Ok(false);
        }
        let state = DriverState::load(&self.db, keys.market.id)
            .await
            .map_err(|e| postgres_failed("restoring the driver state: Postgres failed", &e))?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.del(&keys.online).ignore();
        pipe.del(&keys.load).ignore();
        pipe.del(&keys.tracking).ignore();
        if !state.online.is_empty() {
            pipe.sadd(&keys.online, &state.online).ignore();
        }
        if !state.loads.is_empty() {
            let loads: Vec<(i64, i64)> = state.loads.iter().map(|l| (l.0, l.1)).collect();
            let tracking: Vec<(i64, i64)> = state.loads.iter().map(|l| (l.0, l.2)).collect();
            pipe.hset_multiple(&keys.load, &loads).ignore();
            pipe.hset_multiple(&keys.tracking, &tracking).ignore();
        }
        pipe.set(&keys.state, now_ms()).ignore();
        let () = pipe.query_async(&mut conn).await?;
        metrics::counter!("driver_state_restores_total", "market" => keys.market.slug.to_string())
            .increment(1);
        tracing::warn!(
            market = %keys.market.slug,
            online = state.online.len(),
            carrying = state.loads.len(),
            "Valkey had lost the driver state; restored it from Postgres"
        );
        Ok(true)
    }
}

/// Whether Valkey answered with an error of its own (the script refused its input) rather
/// than being unreachable: only then can the reports of a group fare differently alone.
fn is_refusal(error: &redis::RedisError) -> bool {
    matches!(
        error.kind(),
        redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError)
            | redis::ErrorKind::Extension
    )
}

/// Returned by the ingest script for a group when the state marker is missing.
const STATE_MISSING: i64 = -1;
/// The ingest script's code for a report applied for a driver with no position in the market
/// and not online there: it may have arrived from another market (see [`Core::settle`]).
const NEW_HERE: i64 = 4;

/// One report's answer from the ingest script: its code and its limit's verdict.
fn admission(limit: Option<Limit>, answer: &[i64]) -> Admitted {
    let number = |i: usize| answer.get(i).copied().unwrap_or_default();
    let unsigned = |i: usize| u64::try_from(number(i)).unwrap_or_default();
    let verdict =
        limit.map(|limit| Verdict::of(limit, (number(1), unsigned(2), unsigned(3), unsigned(4))));
    match (number(0), verdict) {
        (3, Some(verdict)) => Admitted::Refused(verdict),
        (0, verdict) => Admitted::Applied(Ingested::Stale, verdict),
        (1, verdict) => Admitted::Applied(Ingested::Available, verdict),
        (_, verdict) => Admitted::Applied(Ingested::Unavailable, verdict),
    }
}

/// What Postgres says of a market's drivers: who is online, and per carrying driver its
/// number of active orders and the order its position is published for (the oldest).
#[derive(Debug)]
struct DriverState {
    online: Vec<i64>,
    loads: Vec<(i64, i64, i64)>,
}

impl DriverState {
    async fn load(db: &PgPool, market: i64) -> Result<Self, sqlx::Error> {
        let mut tx = crate::store::begin(db).await?;
        // One snapshot for both reads.
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *tx)
            .await?;
        let online = sqlx::query_scalar(
            "SELECT id FROM drivers WHERE is_active AND market_id = $1 ORDER BY id",
        )
        .bind(market)
        .fetch_all(&mut *tx)
        .await?;
        let loads = sqlx::query_as(
            "SELECT o.driver_id, count(*), min(o.id) FROM orders o
             JOIN drivers d ON d.id = o.driver_id
             WHERE d.market_id = $1 AND o.status = ANY($2) GROUP BY o.driver_id",
        )
        .bind(market)
        .bind(&ACTIVE_STATES[..])
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Self { online, loads })
    }
}

/// The search rings for a radius: the standard rings inside it, then the radius itself.
fn rings(radius_km: f64) -> impl Iterator<Item = f64> {
    RINGS_KM
        .into_iter()
        .filter(move |r| *r < radius_km)
        .chain(std::iter::once(radius_km))
}

/// Parses the flat reply of [`scripts::NEARBY`] (rows of id, active orders, position) into
/// drivers with their distance from `at`, nearest first. A row that does not parse is skipped.
fn parse_nearby(at: Point, flat: &[String]) -> Vec<NearbyDriver> {
    let mut drivers: Vec<NearbyDriver> = flat
        .chunks_exact(3)
        .filter_map(|row| {
            let mut position = row[2].splitn(3, ',').skip(1);
            let point = Point::new(
                position.next()?.parse().ok()?,
                position.next()?.parse().ok()?,
            )?;
            Some(NearbyDriver {
                driver_id: row[0].parse().ok()?,
                distance_m: crate::geo::haversine_m(at, point),
                lat: point.lat,
                lon: point.lon,
                active_orders: row[1].parse().ok()?,
            })
        })
        .collect();
    drivers.sort_by(|a, b| a.distance_m.total_cmp(&b.distance_m));
    drivers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearby_replies_parse_into_drivers_nearest_first() {
        let at = Point {
            lat: 40.7,
            lon: -74.0,
        };
        let flat: Vec<String> = [
            "9",
            "0",
            "1795584960123,40.71,-74.0",
            "7",
            "1",
            "1795584960000,40.7,-74.001",
            "8",
            "0",
            "garbled",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let parsed = parse_nearby(at, &flat);
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].driver_id, 7);
        assert_eq!(parsed[0].active_orders, 1);
        assert_eq!(parsed[0].lon, -74.001);
        assert!((parsed[0].distance_m - 84.3).abs() < 0.5, "{:?}", parsed[0]);
        assert_eq!(parsed[1].driver_id, 9);
        assert_eq!(parsed[1].lat, 40.71);
        assert!(
            (parsed[1].distance_m - 1_111.9).abs() < 0.5,
            "{:?}",
            parsed[1]
        );
    }

    #[test]
    fn rings_widen_up_to_the_requested_radius() {
        assert_eq!(rings(5.0).collect::<Vec<_>>(), [0.5, 1.0, 2.5, 5.0]);
        assert_eq!(rings(3.0).collect::<Vec<_>>(), [0.5, 1.0, 2.5, 3.0]);
        assert_eq!(rings(0.2).collect::<Vec<_>>(), [0.2]);
        assert_eq!(
            rings(20.0).collect::<Vec<_>>(),
            [0.5, 1.0, 2.5, 5.0, 10.0, 20.0]
        );
    }
}
