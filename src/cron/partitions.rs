//! `partitions`: keeps `driver_locations` partitioned ahead of time (there is no default
//! partition, so a missing day would reject that day's history) and drops days past the
//! retention.

use chrono::{NaiveDate, Utc};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::cron::CronSettings;

/// The task's name.
pub const TASK: &str = "partitions";
const PREFIX: &str = "driver_locations_";

/// The day a partition holds, from its name (`driver_locations_YYYYMMDD`).
pub fn partition_day(name: &str) -> Option<NaiveDate> {
    let digits = name.strip_prefix(PREFIX)?;
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    NaiveDate::parse_from_str(digits, "%Y%m%d").ok()
}

/// Creates the coming days' partitions and drops expired ones; returns what it did.
pub async fn run(db: &PgPool, settings: &CronSettings) -> anyhow::Result<Value> {
    let ensured: Vec<String> = sqlx::query_scalar("SELECT courier_ensure_location_partitions($1)")
        .bind(i32::try_from(settings.partitions_ahead_days + 1).unwrap_or(i32::MAX))
        .fetch_all(db)
        .await?;
    let existing: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i
         JOIN pg_class c ON c.oid = i.inhrelid
         JOIN pg_class p ON p.oid = i.inhparent
         WHERE p.relname = 'driver_locations'",
    )
    .fetch_all(db)
    .await?;
    let oldest_kept =
        Utc::now().date_naive() - chrono::Days::new(u64::from(settings.location_retention_days));
    let mut dropped = Vec::new();
    for name in existing {
        // Only names we create, parsed strictly: nothing else is ever dropped.
        if partition_day(&name).is_some_and(|day| day < oldest_kept) {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP TABLE IF EXISTS \"{name}\""
            )))
            .execute(db)
            .await?;
            tracing::info!(partition = name, "expired location partition dropped");
            dropped.push(name);
        }
    }
    Ok(json!({ "ensured": ensured, "dropped": dropped }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_partition_names_have_a_day() {
        assert_eq!(
            partition_day("driver_locations_20261125"),
            NaiveDate::from_ymd_opt(2026, 11, 25)
        );
        assert_eq!(partition_day("driver_locations_2026112"), None);
        assert_eq!(partition_day("driver_locations_20261332"), None);
        assert_eq!(partition_day("driver_locations_x0261125"), None);
        assert_eq!(partition_day("orders_20261125"), None);
    }
}
