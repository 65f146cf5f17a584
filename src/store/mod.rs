//! Postgres: the connection pool, migrations, and the SQL queries of each resource
//! (one file per resource group).
//!
//! Our migrations live in `migrations/` and keep their history in `public._sqlx_migrations`;
//! apalis's own migrations keep theirs in the `apalis` schema. [`migrate`] runs both, then makes
//! sure today's and tomorrow's `driver_locations` partitions exist. Running it twice is a no-op.

pub mod drivers;
pub mod markets;
pub mod orders;
pub mod restaurants;
pub mod users;

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

use secrecy::{ExposeSecret, SecretString};

/// Where Postgres is and how many connections to open. The URL may carry a password, so it
/// is a secret: `Debug` and logs never print it.
#[derive(Clone, Debug)]
pub struct DatabaseSettings {
    pub url: SecretString,
    pub max_connections: u32,
}

/// Longest a request waits for a pooled connection before failing with 503.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// Starts a transaction on a pooled connection, safely even if the caller is cancelled.
///
/// sqlx 0.9.0's `Pool::begin` is not: a future dropped while its `BEGIN` is in flight (a client
/// that disconnects, a timeout) returns the connection to the pool inside a transaction that
/// nothing will end (transact-rs/sqlx#4393). The next borrower's statements then silently run
/// inside it, hold its locks, and are lost when the connection closes. Here the `BEGIN` runs in
/// a task of its own, which always finishes: if our caller is gone by then, the transaction is
/// dropped there and rolled back the normal way. Every transaction of ours starts here (an
/// architecture test checks).
pub async fn begin(
    pool: &PgPool,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    let pool = pool.clone();
    tokio::spawn(async move { pool.begin().await })
        .await
        .map_err(|_| sqlx::Error::WorkerCrashed)?
}

/// Days of `driver_locations` partitions created at migrate time: today and tomorrow.
const PARTITION_DAYS_AT_MIGRATE: i32 = 2;

/// Our embedded migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A pool for the configured database. Connections are opened on first use, so a process
/// starts (and reports not-ready) while Postgres is down.
pub fn pool(settings: &DatabaseSettings) -> Result<PgPool, sqlx::Error> {
    let options = PgConnectOptions::from_str(settings.url.expose_secret())?
        .application_name("courier")
        .log_slow_statements(log::LevelFilter::Warn, Duration::from_millis(500));
    Ok(PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_lazy_with(options))
}

/// The pool job handlers use, beside `db` (same database, `size` connections): a handler that finds
/// every connection busy waits for one — for as long as its run may last — where a request
/// would give up after [`ACQUIRE_TIMEOUT`]. A worker under load then queues its jobs instead
/// of failing them: failing spent one of a job's few attempts on the worker's own congestion,
/// and a peak run killed matching rounds and payment captures that way, leaving orders with
/// no driver or never completed (`docs/benchmarks.md`, "End to end").
pub fn handler_pool(db: &PgPool, size: u32, wait: Duration) -> PgPool {
    PgPoolOptions::new()
        .max_connections(size)
        .acquire_timeout(wait)
        .connect_lazy_with((*db.connect_options()).clone())
}

/// Creates the configured database if it does not exist yet (connecting to the server's
/// `postgres` database to do so). Returns whether it was created.
pub async fn ensure_database(settings: &DatabaseSettings) -> Result<bool, sqlx::Error> {
    let target = PgConnectOptions::from_str(settings.url.expose_secret())?;
    let name = target.get_database().unwrap_or("postgres").to_owned();
    let mut admin = target.database("postgres").connect().await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await?;
    if exists {
        admin.close().await?;
        return Ok(false);
    }
    let created = sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE {}",
        quote_ident(&name)
    )))
    .execute(&mut admin)
    .await;
    admin.close().await?;
    match created {
        Ok(_) => Ok(true),
        // Another process created it between our check and our CREATE: that is fine.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => Ok(false),
        Err(e) => Err(e),
    }
}

/// Applies apalis's migrations and then ours, and creates today's and tomorrow's location partitions.
pub async fn migrate(pool: &PgPool) -> Result<(), MigrateError> {
    // Migrations are slow statements by nature: run ours on a connection that does not log
    // each one as a slow-query warning.
    let options = (*pool.connect_options())
        .clone()
        .log_slow_statements(log::LevelFilter::Off, Duration::from_secs(0));
    // apalis's first: ours tune its tables (migrations/…008).
    apalis_postgres::PostgresStorage::<()>::setup(pool)
        .await
        .map_err(|e| MigrateError::Apalis(e.to_string()))?;
    let mut conn = options.connect().await?;
    MIGRATOR
        .run(&mut conn)
        .await
        .map_err(MigrateError::Courier)?;
    conn.close().await?;
    ensure_location_partitions(pool, PARTITION_DAYS_AT_MIGRATE).await?;
    Ok(())
}

/// Creates the `driver_locations` partitions of `days` UTC days starting today; returns their
/// names. Idempotent.
pub async fn ensure_location_partitions(
    pool: &PgPool,
    days: i32,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT courier_ensure_location_partitions($1)")
        .bind(days)
        .fetch_all(pool)
        .await
}

/// A migration failure, naming whose migrations failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("courier migrations failed: {0}")]
    Courier(#[source] sqlx::migrate::MigrateError),
    #[error("apalis migrations failed: {0}")]
    Apalis(String),
    #[error("creating location partitions failed: {0}")]
    Partitions(#[from] sqlx::Error),
}

/// Quotes an SQL identifier (for the few statements that cannot take bind parameters).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::quote_ident;

    #[test]
    fn identifiers_are_quoted_and_escaped() {
        assert_eq!(quote_ident("courier"), "\"courier\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
    }
}
