//! `courier migrate` from nothing: PostGIS, every table with its indexes, today's and
//! tomorrow's location partitions, apalis's schema; and a second run changes nothing.

use courier::store;
use courier::store::DatabaseSettings;
use sqlx::PgPool;

use crate::helpers::{database_url, test_database_name};

async fn names(pool: &PgPool, sql: &'static str) -> Vec<String> {
    sqlx::query_scalar(sql)
        .fetch_all(pool)
        .await
        .expect("catalog query")
}

#[tokio::test]
async fn migrate_builds_the_whole_schema_and_is_idempotent() {
    let name = test_database_name();
    let settings = DatabaseSettings {
        url: database_url(&name).into(),
        max_connections: 2,
    };
    assert!(
        store::ensure_database(&settings)
            .await
            .expect("create database")
    );
    assert!(
        !store::ensure_database(&settings)
            .await
            .expect("already there")
    );
    let pool = store::pool(&settings).expect("pool");
    store::migrate(&pool).await.expect("first migrate");

    let extensions = names(&pool, "SELECT extname::text FROM pg_extension").await;
    assert!(extensions.contains(&"postgis".to_owned()), "{extensions:?}");

    let tables = names(
        &pool,
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .await;
    for table in [
        "users",
        "restaurants",
        "menu_items",
        "drivers",
        "orders",
        "order_items",
        "driver_locations",
        "audit_logs",
        "order_idempotency_keys",
        "outbox",
    ] {
        assert!(
            tables.contains(&table.to_owned()),
            "table {table} missing from {tables:?}"
        );
    }

    let indexes = names(
        &pool,
        "SELECT indexname::text FROM pg_indexes WHERE schemaname = 'public'",
    )
    .await;
    for index in [
        "idx_restaurants_location",
        "idx_restaurants_open",
        "idx_menu_items_restaurant",
        "idx_orders_customer",
        "idx_orders_driver",
        "idx_orders_status",
        "idx_orders_restaurant_status",
        "idx_audit_entity",
        "idx_audit_created",
    ] {
        assert!(indexes.contains(&index.to_owned()), "index {index} missing");
    }
    let gist: String = sqlx::query_scalar(
        "SELECT am.amname::text FROM pg_class c JOIN pg_am am ON am.oid = c.relam
         WHERE c.relname = 'idx_restaurants_location'",
    )
    .fetch_one(&pool)
    .await
    .expect("index access method");
    assert_eq!(gist, "gist");

    let partitioned: String =
        sqlx::query_scalar("SELECT pg_get_partkeydef('driver_locations'::regclass)")
            .fetch_one(&pool)
            .await
            .expect("partition key");
    assert_eq!(partitioned, "RANGE (recorded_at)");
    let partitions = names(
        &pool,
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'driver_locations'::regclass ORDER BY 1",
    )
    .await;
    let today = chrono::Utc::now().date_naive();
    let expected: Vec<String> = [today, today + chrono::Days::new(1)]
        .iter()
        .map(|d| format!("driver_locations_{}", d.format("%Y%m%d")))
        .collect();
    for partition in &expected {
        assert!(
            partitions.contains(partition),
            "{partition} missing from {partitions:?}"
        );
    }
    let default_partition: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = 'driver_locations'::regclass
         AND partdefid <> 0)",
    )
    .fetch_one(&pool)
    .await
    .expect("default partition check");
    assert!(
        !default_partition,
        "driver_locations must have no default partition"
    );

    let apalis_jobs: bool = sqlx::query_scalar("SELECT to_regclass('apalis.jobs') IS NOT NULL")
        .fetch_one(&pool)
        .await
        .expect("apalis.jobs lookup");
    assert!(apalis_jobs);

    let status_check: String = sqlx::query_scalar(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'orders_status_check'",
    )
    .fetch_one(&pool)
    .await
    .expect("status constraint");
    for state in [
        "PLACED",
        "CONFIRMED",
        "PREPARING",
        "READY_FOR_PICKUP",
        "PICKED_UP",
        "DELIVERED",
        "COMPLETED",
        "CANCELLED",
    ] {
        assert!(
            status_check.contains(state),
            "{state} missing from {status_check}"
        );
    }

    let snapshot = |pool: PgPool| async move {
        let ours: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
            .fetch_one(&pool)
            .await
            .expect("our history");
        let theirs: i64 = sqlx::query_scalar("SELECT count(*) FROM apalis._sqlx_migrations")
            .fetch_one(&pool)
            .await
            .expect("apalis history");
        let relations: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_class")
            .fetch_one(&pool)
            .await
            .expect("relations");
        (ours, theirs, relations)
    };
    let before = snapshot(pool.clone()).await;
    store::migrate(&pool).await.expect("second migrate");
    let after = snapshot(pool.clone()).await;
    assert_eq!(before, after, "a second migrate must change nothing");
    assert_eq!(
        before.0,
        i64::try_from(store::MIGRATOR.iter().count()).expect("small")
    );
    pool.close().await;
}
