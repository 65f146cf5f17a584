//! The `markets` table, and the snapshot of it every process reads ([`Markets`]).
//!
//! Markets change rarely (an operator adds a city) and are read on the hottest path (each
//! location report is placed in its market), so each process keeps them in memory and reads
//! the table again when its copy is older than [`REFRESH`]: a market created or changed by one
//! process is seen by every other within that time, by the one that made it at once.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use sqlx::PgPool;

use crate::geo::Point;
use crate::market::{Market, MarketSlug, Snapshot};

/// How old a process's copy of the markets may be before it reads them again.
pub const REFRESH: Duration = Duration::from_secs(5);

/// A market row as `GET /v1/markets` shows it.
#[derive(Clone, Debug, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[schema(as = MarketBody)]
pub struct MarketRow {
    pub id: i64,
    /// Lowercase letters, digits and inner dashes; the market's Valkey hash tag.
    pub slug: String,
    pub name: String,
    /// IANA time zone (e.g. `America/New_York`).
    pub time_zone: String,
    pub center_lat: f64,
    pub center_lon: f64,
    pub radius_km: f64,
    pub active: bool,
    /// How orders find drivers: `per_order` (each as it is confirmed) or `cycle` (all waiting
    /// orders together every few seconds).
    #[schema(value_type = DispatchMode)]
    pub dispatch: String,
    /// When its last dispatch cycle finished (cycle markets).
    pub dispatch_cycle_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl MarketRow {
    /// The market, if the row holds a valid one (it always does: rows are written validated).
    pub fn market(&self) -> Option<Market> {
        Some(Market {
            id: self.id,
            slug: MarketSlug::parse(&self.slug)?,
            name: self.name.clone(),
            time_zone: self.time_zone.parse::<Tz>().ok()?,
            center: Point::new(self.center_lat, self.center_lon)?,
            radius_km: self.radius_km,
            active: self.active,
        })
    }
}

const COLUMNS: &str = "id, slug, name, time_zone,
    ST_Y(center::geometry) AS center_lat, ST_X(center::geometry) AS center_lon,
    radius_km, active, dispatch, dispatch_cycle_at, created_at, updated_at";

/// Every market, by id.
pub async fn list(pool: &PgPool) -> Result<Vec<MarketRow>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    list_on(&mut conn).await
}

/// Every market, by id, read on `conn` (e.g. inside a transaction).
pub async fn list_on(conn: &mut sqlx::PgConnection) -> Result<Vec<MarketRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM markets ORDER BY id"
    )))
    .fetch_all(conn)
    .await
}

/// One market.
pub async fn get(pool: &PgPool, id: i64) -> Result<Option<MarketRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM markets WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// How a market's orders find drivers.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum DispatchMode {
    /// Each order is matched on its own as it is confirmed.
    PerOrder,
    /// A cycle every few seconds assigns all the market's waiting orders together.
    Cycle,
}

impl DispatchMode {
    /// As stored in `markets.dispatch`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PerOrder => "per_order",
            Self::Cycle => "cycle",
        }
    }
}

/// A market to create, validated.
#[derive(Clone, Debug)]
pub struct NewMarket {
    pub slug: MarketSlug,
    pub name: String,
    pub time_zone: Tz,
    pub center: Point,
    pub radius_km: f64,
    pub active: bool,
    pub dispatch: DispatchMode,
}

/// Creates a market (`markets_slug_key` when the slug is taken).
pub async fn insert(pool: &PgPool, new: &NewMarket) -> Result<MarketRow, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO markets (slug, name, time_zone, center, radius_km, active, dispatch)
         VALUES ($1, $2, $3, ST_SetSRID(ST_MakePoint($5, $4), 4326)::geography, $6, $7, $8)
         RETURNING {COLUMNS}"
    )))
    .bind(new.slug.as_str())
    .bind(&new.name)
    .bind(new.time_zone.name())
    .bind(new.center.lat)
    .bind(new.center.lon)
    .bind(new.radius_km)
    .bind(new.active)
    .bind(new.dispatch.as_str())
    .fetch_one(pool)
    .await
}

/// Changes to a market, validated; `None` leaves a field as it is. The slug never changes.
#[derive(Clone, Debug, Default)]
pub struct MarketChanges {
    pub name: Option<String>,
    pub time_zone: Option<Tz>,
    pub center: Option<Point>,
    pub radius_km: Option<f64>,
    pub active: Option<bool>,
    pub dispatch: Option<DispatchMode>,
}

/// Applies `changes` to market `id`; `None` when there is no such market.
pub async fn update(
    pool: &PgPool,
    id: i64,
    changes: &MarketChanges,
) -> Result<Option<MarketRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE markets SET
             name = COALESCE($2, name),
             time_zone = COALESCE($3, time_zone),
             center = CASE WHEN $4 THEN ST_SetSRID(ST_MakePoint($6, $5), 4326)::geography
                           ELSE center END,
             radius_km = COALESCE($7, radius_km),
             active = COALESCE($8, active),
             dispatch = COALESCE($9, dispatch),
             updated_at = now()
         WHERE id = $1
         RETURNING {COLUMNS}"
    )))
    .bind(id)
    .bind(&changes.name)
    .bind(changes.time_zone.map(|tz| tz.name()))
    .bind(changes.center.is_some())
    .bind(changes.center.map(|p| p.lat))
    .bind(changes.center.map(|p| p.lon))
    .bind(changes.radius_km)
    .bind(changes.active)
    .bind(changes.dispatch.map(DispatchMode::as_str))
    .fetch_optional(pool)
    .await
}

/// The process's copy of the markets (see the module docs). Cheap to clone.
#[derive(Clone, Debug)]
pub struct Markets {
    db: PgPool,
    copy: Arc<Mutex<Option<(Instant, Snapshot)>>>,
    /// Held while reading the table, so concurrent callers read it once.
    loading: Arc<tokio::sync::Mutex<()>>,
}

impl Markets {
    /// Markets read from `db` when first needed.
    pub fn new(db: PgPool) -> Self {
        Self {
            db,
            copy: Arc::new(Mutex::new(None)),
            loading: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    fn cached(&self, max_age: Duration) -> Option<Snapshot> {
        let copy = self.copy.lock().unwrap_or_else(|p| p.into_inner());
        copy.as_ref()
            .filter(|(at, _)| at.elapsed() < max_age)
            .map(|(_, snapshot)| snapshot.clone())
    }

    /// The markets, at most [`REFRESH`] old. When Postgres cannot be read, an older copy is
    /// used (and the failure logged); without any copy, the error is returned.
    pub async fn snapshot(&self) -> Result<Snapshot, sqlx::Error> {
        if let Some(snapshot) = self.cached(REFRESH) {
            return Ok(snapshot);
        }
        let _loading = self.loading.lock().await;
        if let Some(snapshot) = self.cached(REFRESH) {
            return Ok(snapshot);
        }
        match self.read().await {
            Ok(snapshot) => Ok(snapshot),
            Err(error) => match self.cached(Duration::MAX) {
                Some(stale) => {
                    tracing::warn!(error = %error, "cannot read the markets; using the last copy");
                    Ok(stale)
                }
                None => Err(error),
            },
        }
    }

    /// The latest copy, however old, without waiting (`None` before the first read): for
    /// callers that cannot wait and can do without, like the traffic of a route.
    pub fn latest(&self) -> Option<Snapshot> {
        self.cached(Duration::MAX)
    }

    /// Reads the table now (after this process changed it).
    pub async fn reload(&self) -> Result<Snapshot, sqlx::Error> {
        let _loading = self.loading.lock().await;
        self.read().await
    }

    async fn read(&self) -> Result<Snapshot, sqlx::Error> {
        let rows = list(&self.db).await?;
        let markets: Vec<Market> = rows
            .iter()
            .filter_map(|row| {
                let market = row.market();
                if market.is_none() {
                    tracing::error!(market = row.id, "a market row does not parse; ignored");
                }
                market
            })
            .collect();
        let snapshot = Snapshot::new(markets);
        *self.copy.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), snapshot.clone()));
        Ok(snapshot)
    }
}
