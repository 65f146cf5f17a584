//! `admin drivers …`: available drivers near a point, and one driver's state.

use chrono::{DateTime, Utc};
use clap::Subcommand;
use serde::Serialize;
use serde_json::json;

use crate::admin::{AdminContext, AdminError, Output, table};
use crate::geo::Point;
use crate::location::ACTIVE_STATES;

/// `admin drivers …`
#[derive(Debug, Subcommand)]
pub enum DriversCommand {
    /// Available drivers near a point, nearest first.
    Nearby {
        #[arg(allow_negative_numbers = true)]
        lat: f64,
        #[arg(allow_negative_numbers = true)]
        lon: f64,
        #[arg(long, default_value_t = 5.0)]
        radius_km: f64,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// A driver: status, position and age of the last fix, active orders.
    Show { id: i64 },
}

#[derive(Debug, Serialize, sqlx::FromRow)]
struct DriverRow {
    id: i64,
    user_id: i64,
    is_active: bool,
    rating: f64,
    total_deliveries: i32,
    updated_at: DateTime<Utc>,
}

/// Runs a `drivers` command.
pub async fn execute(ctx: &AdminContext, command: &DriversCommand) -> Result<Output, AdminError> {
    match command {
        DriversCommand::Nearby {
            lat,
            lon,
            radius_km,
            limit,
        } => {
            let at = Point::new(*lat, *lon).ok_or_else(|| {
                AdminError::Invalid("LAT must be in [-90, 90] and LON in [-180, 180]".to_owned())
            })?;
            let radius_ok = radius_km.is_finite() && (0.01..=50.0).contains(radius_km);
            if !(radius_ok && (1..=500).contains(limit)) {
                return Err(AdminError::Invalid(
                    "--radius-km must be 0.01 to 50 and --limit 1 to 500".to_owned(),
                ));
            }
            let drivers = ctx
                .location
                .find_nearby_drivers(at, *radius_km, *limit)
                .await
                .map_err(|e| AdminError::Other(format!("valkey unavailable: {e}")))?;
            let rows: Vec<Vec<String>> = drivers
                .iter()
                .map(|d| {
                    vec![
                        d.driver_id.to_string(),
                        format!("{:.0}", d.distance_m),
                        format!("{:.5},{:.5}", d.lat, d.lon),
                        d.active_orders.to_string(),
                    ]
                })
                .collect();
            Ok(Output {
                text: table::render(
                    &["DRIVER", "DISTANCE M", "POSITION", "ACTIVE ORDERS"],
                    &rows,
                ),
                json: json!({ "drivers": drivers }),
            })
        }
        DriversCommand::Show { id } => {
            let driver: DriverRow = sqlx::query_as(
                "SELECT id, user_id, is_active, rating::float8 AS rating, total_deliveries, updated_at
                 FROM drivers WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(&ctx.db)
            .await?
            .ok_or_else(|| AdminError::Invalid(format!("no driver with id {id}")))?;
            let active: Vec<(i64, String)> = sqlx::query_as(
                "SELECT id, status FROM orders WHERE driver_id = $1 AND status = ANY($2) ORDER BY id",
            )
            .bind(id)
            .bind(&ACTIVE_STATES[..])
            .fetch_all(&ctx.db)
            .await?;
            let fix = ctx
                .location
                .last_fix(*id)
                .await
                .map_err(|e| AdminError::Other(format!("valkey unavailable: {e}")))?;
            let age_s = fix.map(|(_, at_ms)| (crate::location::now_ms() - at_ms) as f64 / 1000.0);
            let text = table::fields(&[
                ("driver", driver.id.to_string()),
                (
                    "status",
                    if driver.is_active {
                        "online"
                    } else {
                        "offline"
                    }
                    .to_owned(),
                ),
                ("rating", format!("{:.1}", driver.rating)),
                ("deliveries", driver.total_deliveries.to_string()),
                (
                    "position",
                    fix.map_or_else(
                        || "unknown".to_owned(),
                        |(p, _)| format!("{:.5},{:.5}", p.lat, p.lon),
                    ),
                ),
                (
                    "last fix",
                    age_s.map_or_else(|| "-".to_owned(), |a| format!("{a:.0}s ago")),
                ),
                (
                    "active orders",
                    if active.is_empty() {
                        "none".to_owned()
                    } else {
                        active
                            .iter()
                            .map(|(o, s)| format!("{o} ({s})"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    },
                ),
            ]);
            Ok(Output {
                text,
                json: json!({
                    "driver": driver,
                    "position": fix.map(|(p, _)| json!({"lat": p.lat, "lon": p.lon})),
                    "last_fix_age_s": age_s,
                    "active_orders": active.iter().map(|(o, s)| json!({"id": o, "status": s})).collect::<Vec<_>>(),
                }),
            })
        }
    }
}
