//! Routing: travel times between points, from a [`RoutingProvider`] — the OSRM client when a
//! routing URL is configured, else the built-in [`Estimator`] — with a route cache in Valkey
//! and the estimator as fallback.
//!
//! - **Cache**: provider answers are kept 5 minutes (the spec) under keys of the endpoints
//!   rounded to 0.001° (~100 m), so requests a few metres apart share an entry. Durations are
//!   cached without traffic; the multiplier of the market's current hour is applied after the
//!   cache, so one entry serves every hour. Estimator answers are not cached (they cost less
//!   than a cache read).
//! - **Fallback**: when the provider fails (timeout, HTTP error, malformed answer, no route)
//!   or its circuit breaker is open, the leg comes from the estimator, marked `estimated`;
//!   each fallback is logged and counted in `routing_fallbacks_total{reason}`. Routing never
//!   fails its caller.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use crate::breaker::{BreakerError, BreakerSettings, CircuitBreaker};
use crate::eta::estimator::Estimator;
use crate::eta::osrm::{OsrmClient, RoutingError};
use crate::eta::{Route, traffic_at};
use crate::geo::Point;
use crate::store::markets::Markets;
use crate::valkey::Valkey;

/// How long a provider's route is cached (the spec's 5 minutes).
pub const ROUTE_CACHE_TTL: Duration = Duration::from_secs(5 * 60);
/// Grid of the cache keys, in degrees (~110 m of latitude).
pub const ROUTE_GRID_DEG: f64 = 0.001;
/// Name of the fallback counter.
pub const FALLBACKS: &str = "routing_fallbacks_total";

/// Something that answers routes.
pub trait RoutingProvider: Send + Sync {
    /// The fastest route from `from` to `to`, without traffic.
    fn route(
        &self,
        from: Point,
        to: Point,
    ) -> impl Future<Output = Result<Route, RoutingError>> + Send;

    /// Routes from each of `sources` to each of `destinations` (`None` where there is none).
    fn table(
        &self,
        sources: &[Point],
        destinations: &[Point],
    ) -> impl Future<Output = Result<Vec<Vec<Option<Route>>>, RoutingError>> + Send;
}

impl RoutingProvider for OsrmClient {
    async fn route(&self, from: Point, to: Point) -> Result<Route, RoutingError> {
        OsrmClient::route(self, from, to).await
    }

    async fn table(
        &self,
        sources: &[Point],
        destinations: &[Point],
    ) -> Result<Vec<Vec<Option<Route>>>, RoutingError> {
        OsrmClient::table(self, sources, destinations).await
    }
}

impl RoutingProvider for Estimator {
    async fn route(&self, from: Point, to: Point) -> Result<Route, RoutingError> {
        Ok(Estimator::route(self, from, to))
    }

    async fn table(
        &self,
        sources: &[Point],
        destinations: &[Point],
    ) -> Result<Vec<Vec<Option<Route>>>, RoutingError> {
        Ok(sources
            .iter()
            .map(|&s| {
                destinations
                    .iter()
                    .map(|&to| Some(Estimator::route(self, s, to)))
                    .collect()
            })
            .collect())
    }
}

/// Routing settings.
#[derive(Clone, Debug, PartialEq)]
pub struct RoutingSettings {
    /// Base URL of an OSRM server; `None` uses the estimator only.
    pub osrm_url: Option<String>,
    /// Longest a routing request may take.
    pub timeout: Duration,
    /// The estimator's average speed.
    pub estimator: Estimator,
    /// How long provider routes are cached.
    pub cache_ttl: Duration,
}

impl Default for RoutingSettings {
    fn default() -> Self {
        Self {
            osrm_url: None,
            timeout: Duration::from_secs(2),
            estimator: Estimator::default(),
            cache_ttl: ROUTE_CACHE_TTL,
        }
    }
}

/// A leg with traffic applied.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Leg {
    pub duration: Duration,
    pub distance_m: f64,
    /// Whether the estimator produced it (no provider, or a fallback).
    pub estimated: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct CachedRoute {
    duration_s: f64,
    distance_m: f64,
}

/// The routing service. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Routing {
    osrm: Option<OsrmClient>,
    estimator: Estimator,
    markets: Markets,
    cache_ttl: Duration,
    valkey: Valkey,
    breaker: Arc<CircuitBreaker>,
}

/// `p` snapped to the cache grid.
pub fn snap(p: Point) -> Point {
    let round = |v: f64| (v / ROUTE_GRID_DEG).round() * ROUTE_GRID_DEG;
    Point {
        lat: round(p.lat),
        lon: round(p.lon),
    }
}

impl Routing {
    /// A routing service whose traffic follows the clocks of `markets`; fails only on an
    /// unusable HTTP client configuration.
    pub fn new(
        settings: &RoutingSettings,
        valkey: Valkey,
        markets: Markets,
    ) -> reqwest::Result<Self> {
        let osrm = settings
            .osrm_url
            .as_deref()
            .map(|url| OsrmClient::new(url, settings.timeout))
            .transpose()?;
        Ok(Self {
            osrm,
            estimator: settings.estimator,
            markets,
            cache_ttl: settings.cache_ttl,
            valkey,
            breaker: Arc::new(CircuitBreaker::new("routing", BreakerSettings::default())),
        })
    }

    /// The built-in estimator (batching compares route variants with it).
    pub fn estimator(&self) -> &Estimator {
        &self.estimator
    }

    /// The traffic multiplier at `now` at `at`: by the local hour of the market `at` is in
    /// (this process's latest copy of the markets), or of UTC outside every market.
    pub fn traffic(&self, at: Point, now: DateTime<Utc>) -> f64 {
        let zone = self
            .markets
            .latest()
            .and_then(|markets| markets.containing(at).map(|m| m.time_zone))
            .unwrap_or(Tz::UTC);
        traffic_at(now, zone)
    }

    fn key(&self, from: Point, to: Point) -> String {
        self.valkey.key(&format!(
            "route:{:.3},{:.3}:{:.3},{:.3}",
            from.lat, from.lon, to.lat, to.lon
        ))
    }

    fn leg(&self, route: Route, estimated: bool, traffic: f64) -> Leg {
        Leg {
            duration: route.duration.mul_f64(traffic),
            distance_m: route.distance_m,
            estimated,
        }
    }

    fn fallback(&self, error: &BreakerError<RoutingError>) {
        let reason = match error {
            BreakerError::Open => "circuit_open",
            BreakerError::Timeout(_) => "timeout",
            BreakerError::Failed(e) => e.kind(),
        };
        metrics::counter!(FALLBACKS, "reason" => reason).increment(1);
        tracing::warn!(reason, error = %error, "routing failed; using the built-in estimator");
    }

    async fn cached(&self, keys: &[String]) -> Vec<Option<Route>> {
        let mut conn = self.valkey.connection();
        let raw: Result<Vec<Option<String>>, _> = if keys.len() == 1 {
            conn.get::<_, Option<String>>(&keys[0])
                .await
                .map(|v| vec![v])
        } else {
            conn.mget(keys).await
        };
        match raw {
            Ok(values) => values
                .into_iter()
                .map(|v| {
                    let c: CachedRoute = serde_json::from_str(&v?).ok()?;
                    Some(Route {
                        duration: Duration::try_from_secs_f64(c.duration_s).ok()?,
                        distance_m: c.distance_m,
                    })
                })
                .collect(),
            Err(error) => {
                metrics::counter!("cache_errors_total", "op" => "get").increment(1);
                tracing::warn!(error = %error, "route cache unavailable");
                vec![None; keys.len()]
            }
        }
    }

    /// Caches `entries`: one pipeline per shard (on a cluster, a pipeline's keys share a slot).
    async fn store(&self, entries: &[(String, Route)]) {
        let mut pipes: std::collections::HashMap<u16, redis::Pipeline> =
            std::collections::HashMap::new();
        for (key, route) in entries {
            let value = CachedRoute {
                duration_s: route.duration.as_secs_f64(),
                distance_m: route.distance_m,
            };
            if let Ok(raw) = serde_json::to_string(&value) {
                pipes
                    .entry(self.valkey.shard_of(key))
                    .or_insert_with(redis::pipe)
                    .set_ex(key, raw, self.cache_ttl.as_secs().max(1))
                    .ignore();
            }
        }
        let stored = futures::future::join_all(pipes.into_values().map(|pipe| async move {
            let mut conn = self.valkey.connection();
            pipe.query_async::<()>(&mut conn).await
        }))
        .await;
        if let Some(error) = stored.into_iter().find_map(Result::err) {
            metrics::counter!("cache_errors_total", "op" => "put").increment(1);
            tracing::warn!(error = %error, "could not cache routes");
        }
    }

    /// The leg from `from` to `to` at `now`. Never fails (see the module docs).
    pub async fn route(&self, from: Point, to: Point, now: DateTime<Utc>) -> Leg {
        let traffic = self.traffic(from, now);
        let Some(osrm) = &self.osrm else {
            return self.leg(self.estimator.route(from, to), true, traffic);
        };
        let (from, to) = (snap(from), snap(to));
        let key = self.key(from, to);
        if let Some(Some(route)) = self.cached(std::slice::from_ref(&key)).await.pop() {
            metrics::counter!("route_cache_total", "result" => "hit").increment(1);
            return self.leg(route, false, traffic);
        }
        metrics::counter!("route_cache_total", "result" => "miss").increment(1);
        match self
            .breaker
            .call(RoutingProvider::route(osrm, from, to))
            .await
        {
            Ok(route) => {
                self.store(&[(key, route)]).await;
                self.leg(route, false, traffic)
            }
            Err(error) => {
                self.fallback(&error);
                self.leg(self.estimator.route(from, to), true, traffic)
            }
        }
    }

    /// The legs from each of `sources` to `to` at `now`: cached ones from the cache, the rest
    /// in one table request. Never fails.
    pub async fn routes_to(&self, sources: &[Point], to: Point, now: DateTime<Utc>) -> Vec<Leg> {
        let traffic = self.traffic(to, now);
        let estimate = |from: Point| self.leg(self.estimator.route(from, to), true, traffic);
        let Some(osrm) = &self.osrm else {
            return sources.iter().map(|&s| estimate(s)).collect();
        };
        if sources.is_empty() {
            return Vec::new();
        }
        let to_snapped = snap(to);
        let snapped: Vec<Point> = sources.iter().map(|&s| snap(s)).collect();
        let keys: Vec<String> = snapped.iter().map(|&s| self.key(s, to_snapped)).collect();
        let mut found = self.cached(&keys).await;
        let missing: Vec<usize> = (0..found.len()).filter(|&i| found[i].is_none()).collect();
        if !missing.is_empty() {
            let ask: Vec<Point> = missing.iter().map(|&i| snapped[i]).collect();
            match self
                .breaker
                .call(RoutingProvider::table(osrm, &ask, &[to_snapped]))
                .await
            {
                Ok(routes) => {
                    let mut fresh = Vec::new();
                    let routes = routes
                        .into_iter()
                        .map(|row| row.into_iter().next().flatten());
                    for (&i, route) in missing.iter().zip(routes) {
                        if let Some(route) = route {
                            fresh.push((keys[i].clone(), route));
                            found[i] = Some(route);
                        }
                    }
                    self.store(&fresh).await;
                }
                Err(error) => self.fallback(&error),
            }
        }
        found
            .into_iter()
            .zip(sources)
            .map(|(route, &source)| match route {
                Some(route) => self.leg(route, false, traffic),
                None => estimate(source),
            })
            .collect()
    }

    /// The driving times from each of `sources` to each of `destinations` at `now`, traffic
    /// included, from one table request to the routing engine (not cached: a dispatch
    /// cycle's drivers have moved since the last one). `None` when no engine is configured or
    /// it failed (counted as a fallback): the caller estimates the pairs it needs.
    pub async fn matrix(
        &self,
        sources: &[Point],
        destinations: &[Point],
        now: DateTime<Utc>,
    ) -> Option<Vec<Vec<Option<Duration>>>> {
        let osrm = self.osrm.as_ref()?;
        if sources.is_empty() || destinations.is_empty() {
            return Some(vec![Vec::new(); sources.len()]);
        }
        let snapped = |points: &[Point]| points.iter().map(|&p| snap(p)).collect::<Vec<_>>();
        let (from, to) = (snapped(sources), snapped(destinations));
        let traffic: Vec<f64> = destinations.iter().map(|&d| self.traffic(d, now)).collect();
        match self
            .breaker
            .call(RoutingProvider::table(osrm, &from, &to))
            .await
        {
            Ok(table) => Some(
                table
                    .into_iter()
                    .map(|row| {
                        row.into_iter()
                            .zip(&traffic)
                            .map(|(route, &t)| route.map(|r| r.duration.mul_f64(t)))
                            .collect()
                    })
                    .collect(),
            ),
            Err(error) => {
                self.fallback(&error);
                None
            }
        }
    }

    /// The estimated driving time from `from` to `to` at `now`, traffic included, without
    /// asking the routing engine.
    pub fn estimate(&self, from: Point, to: Point, now: DateTime<Utc>) -> Duration {
        self.estimator
            .route(from, to)
            .duration
            .mul_f64(self.traffic(to, now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_estimator_answers_as_a_provider_for_every_source() {
        let e = Estimator::default();
        let to = Point {
            lat: 40.0,
            lon: -74.0,
        };
        let from = Point {
            lat: 40.02,
            lon: -74.0,
        };
        let single = RoutingProvider::route(&e, from, to).await.expect("route");
        assert_eq!(single, e.route(from, to));
        let table = RoutingProvider::table(&e, &[from, to], &[to])
            .await
            .expect("table");
        assert_eq!(table, vec![vec![Some(single)], vec![Some(e.route(to, to))]]);
    }

    #[test]
    fn nearby_points_snap_to_one_cell_and_distant_ones_do_not() {
        let a = Point {
            lat: 40.71281,
            lon: -74.00602,
        };
        let b = Point {
            lat: 40.71302,
            lon: -74.00581,
        };
        assert_eq!(snap(a), snap(b));
        let c = Point {
            lat: 40.7148,
            lon: -74.006,
        };
        assert_ne!(snap(a), snap(c));
    }
}
