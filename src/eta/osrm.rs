//! An OSRM HTTP client: `GET {base}/route/v1/driving/{lon},{lat};{lon},{lat}` for one route and
//! `GET {base}/table/v1/driving/{coords}?sources=…&destinations=…` for many-to-one, as the
//! OSRM HTTP API documents. Responses are parsed and validated here ([`parse_route`],
//! [`parse_table`], pure); anything unexpected is an error, never a made-up duration.

use std::time::Duration;

use serde::Deserialize;

use crate::eta::Route;
use crate::geo::Point;

/// The longest plausible route duration; anything longer is a bad response.
const MAX_DURATION_S: f64 = 48.0 * 3600.0;

/// Why the routing service gave no route.
#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    /// The service answered that no route exists (`NoRoute`, `NoSegment`…).
    #[error("no route: {0}")]
    NoRoute(String),
    /// The service did not answer in time.
    #[error("routing service timed out")]
    Timeout,
    /// The service could not be reached or answered with an HTTP error.
    #[error("routing service unavailable: {0}")]
    Unavailable(String),
    /// The answer was not what OSRM documents.
    #[error("malformed routing response: {0}")]
    BadResponse(String),
}

impl RoutingError {
    /// A label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            RoutingError::NoRoute(_) => "no_route",
            RoutingError::Timeout => "timeout",
            RoutingError::Unavailable(_) => "unavailable",
            RoutingError::BadResponse(_) => "bad_response",
        }
    }
}

#[derive(Debug, Deserialize)]
struct RouteResponse {
    code: String,
    message: Option<String>,
    routes: Option<Vec<RouteLeg>>,
}

#[derive(Debug, Deserialize)]
struct RouteLeg {
    duration: f64,
    distance: f64,
}

#[derive(Debug, Deserialize)]
struct TableResponse {
    code: String,
    message: Option<String>,
    durations: Option<Vec<Vec<Option<f64>>>>,
    distances: Option<Vec<Vec<Option<f64>>>>,
}

fn check_code(code: &str, message: Option<&str>) -> Result<(), RoutingError> {
    match code {
        "Ok" => Ok(()),
        "NoRoute" | "NoSegment" | "NoTable" => {
            Err(RoutingError::NoRoute(message.unwrap_or(code).to_owned()))
        }
        other => Err(RoutingError::BadResponse(format!(
            "code {other}: {}",
            message.unwrap_or("")
        ))),
    }
}

fn valid(duration_s: f64, distance_m: f64) -> Result<Route, RoutingError> {
    if !duration_s.is_finite()
        || !distance_m.is_finite()
        || duration_s < 0.0
        || distance_m < 0.0
        || duration_s > MAX_DURATION_S
    {
        return Err(RoutingError::BadResponse(format!(
            "implausible route: {duration_s} s, {distance_m} m"
        )));
    }
    Ok(Route {
        duration: Duration::from_secs_f64(duration_s),
        distance_m,
    })
}

/// Parses a `/route` response body.
pub fn parse_route(body: &[u8]) -> Result<Route, RoutingError> {
    let parsed: RouteResponse =
        serde_json::from_slice(body).map_err(|e| RoutingError::BadResponse(e.to_string()))?;
    check_code(&parsed.code, parsed.message.as_deref())?;
    let leg = parsed
        .routes
        .and_then(|r| r.into_iter().next())
        .ok_or_else(|| RoutingError::BadResponse("no routes in an Ok response".to_owned()))?;
    valid(leg.duration, leg.distance)
}

/// Parses a `/table` response of `rows` sources to `columns` destinations: `table[i][j]` is
/// the route from source `i` to destination `j`, `None` where OSRM found none (`null`).
pub fn parse_table(
    body: &[u8],
    rows: usize,
    columns: usize,
) -> Result<Vec<Vec<Option<Route>>>, RoutingError> {
    let parsed: TableResponse =
        serde_json::from_slice(body).map_err(|e| RoutingError::BadResponse(e.to_string()))?;
    check_code(&parsed.code, parsed.message.as_deref())?;
    let durations = parsed
        .durations
        .ok_or_else(|| RoutingError::BadResponse("no durations".to_owned()))?;
    if durations.len() != rows || durations.iter().any(|row| row.len() != columns) {
        return Err(RoutingError::BadResponse(format!(
            "expected a {rows}×{columns} table"
        )));
    }
    let distances = parsed.distances.unwrap_or_default();
    durations
        .iter()
        .enumerate()
        .map(|(i, row)| {
            row.iter()
                .enumerate()
                .map(|(j, cell)| match *cell {
                    None => Ok(None),
                    Some(duration) => {
                        let distance = distances
                            .get(i)
                            .and_then(|r| r.get(j).copied().flatten())
                            .unwrap_or(0.0);
                        valid(duration, distance).map(Some)
                    }
                })
                .collect()
        })
        .collect()
}

/// An OSRM server.
#[derive(Clone, Debug)]
pub struct OsrmClient {
    base: String,
    http: reqwest::Client,
}

fn coordinates(points: &[Point]) -> String {
    points
        .iter()
        .map(|p| format!("{:.6},{:.6}", p.lon, p.lat))
        .collect::<Vec<_>>()
        .join(";")
}

impl OsrmClient {
    /// A client of the server at `base` (e.g. `http://osrm:5000`), each request bounded by
    /// `timeout`.
    pub fn new(base: &str, timeout: Duration) -> reqwest::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            http,
        })
    }

    async fn get(&self, url: String) -> Result<Vec<u8>, RoutingError> {
        let response = self.http.get(url).send().await.map_err(|e| {
            if e.is_timeout() {
                RoutingError::Timeout
            } else {
                RoutingError::Unavailable(e.to_string())
            }
        })?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| {
            if e.is_timeout() {
                RoutingError::Timeout
            } else {
                RoutingError::Unavailable(e.to_string())
            }
        })?;
        // OSRM answers NoRoute and friends with 400 and a JSON body: let the parser read it.
        if status.is_server_error() {
            return Err(RoutingError::Unavailable(format!("HTTP {status}")));
        }
        Ok(body.to_vec())
    }

    /// The fastest route from `from` to `to`.
    pub async fn route(&self, from: Point, to: Point) -> Result<Route, RoutingError> {
        let url = format!(
            "{}/route/v1/driving/{}?overview=false",
            self.base,
            coordinates(&[from, to])
        );
        parse_route(&self.get(url).await?)
    }

    /// Routes from each of `sources` to each of `destinations`, in one request.
    pub async fn table(
        &self,
        sources: &[Point],
        destinations: &[Point],
    ) -> Result<Vec<Vec<Option<Route>>>, RoutingError> {
        let mut points = sources.to_vec();
        points.extend_from_slice(destinations);
        let list = |range: std::ops::Range<usize>| {
            range.map(|i| i.to_string()).collect::<Vec<_>>().join(";")
        };
        let url = format!(
            "{}/table/v1/driving/{}?sources={}&destinations={}&annotations=duration,distance",
            self.base,
            coordinates(&points),
            list(0..sources.len()),
            list(sources.len()..points.len()),
        );
        parse_table(&self.get(url).await?, sources.len(), destinations.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ok_route_parses_to_its_first_route() {
        let body = br#"{"code":"Ok","routes":[{"duration":612.4,"distance":5012.9,"legs":[]},{"duration":1,"distance":1}],"waypoints":[]}"#;
        let route = parse_route(body).expect("route");
        assert_eq!(route.duration, Duration::from_secs_f64(612.4));
        assert_eq!(route.distance_m, 5012.9);
    }

    #[test]
    fn no_route_and_bad_bodies_are_errors() {
        let no_route = br#"{"code":"NoRoute","message":"Impossible route between points"}"#;
        assert!(matches!(
            parse_route(no_route),
            Err(RoutingError::NoRoute(_))
        ));
        assert!(matches!(
            parse_route(b"<html>bad gateway</html>"),
            Err(RoutingError::BadResponse(_))
        ));
        assert!(matches!(
            parse_route(br#"{"code":"Ok","routes":[]}"#),
            Err(RoutingError::BadResponse(_))
        ));
        assert!(matches!(
            parse_route(br#"{"code":"Ok","routes":[{"duration":-5,"distance":10}]}"#),
            Err(RoutingError::BadResponse(_))
        ));
        assert!(matches!(
            parse_route(br#"{"code":"InvalidQuery","message":"Query string malformed"}"#),
            Err(RoutingError::BadResponse(_))
        ));
    }

    #[test]
    fn tables_give_one_route_per_source_and_none_where_unreachable() {
        let body = br#"{"code":"Ok","durations":[[120.5],[null],[600]],"distances":[[900],[null],[4000]]}"#;
        let routes = parse_table(body, 3, 1).expect("table");
        assert_eq!(routes[0][0].map(|r| r.distance_m), Some(900.0));
        assert!(routes[1][0].is_none());
        assert_eq!(routes[2][0].map(|r| r.duration.as_secs()), Some(600));
        assert!(matches!(
            parse_table(body, 2, 1),
            Err(RoutingError::BadResponse(_))
        ));
        // Two sources to two destinations: row by source, column by destination.
        let square =
            br#"{"code":"Ok","durations":[[1,2],[3,null]],"distances":[[10,20],[30,null]]}"#;
        let table = parse_table(square, 2, 2).expect("table");
        assert_eq!(table[0][1].map(|r| r.distance_m), Some(20.0));
        assert_eq!(table[1][0].map(|r| r.duration.as_secs()), Some(3));
        assert!(table[1][1].is_none());
        assert!(matches!(
            parse_table(square, 2, 3),
            Err(RoutingError::BadResponse(_))
        ));
    }

    #[test]
    fn coordinates_are_lon_lat_pairs() {
        let p = Point {
            lat: 40.7128,
            lon: -74.006,
        };
        assert_eq!(
            coordinates(&[p, p]),
            "-74.006000,40.712800;-74.006000,40.712800"
        );
    }
}
