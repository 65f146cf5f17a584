//! Queries on `drivers`: whether one exists, and its online flag (the source of truth that
//! Valkey's online set copies).

use sqlx::{PgConnection, PgPool};

use crate::domain::DriverId;

/// Whether driver `id` exists.
pub async fn exists(pool: &PgPool, id: DriverId) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM drivers WHERE id = $1)")
        .bind(id)
        .fetch_one(pool)
        .await
}

/// Sets whether driver `id` is online, on `conn` (the status change's transaction). Returns
/// whether the driver exists.
pub async fn set_active(
    conn: &mut PgConnection,
    id: DriverId,
    online: bool,
) -> Result<bool, sqlx::Error> {
    let updated =
        sqlx::query("UPDATE drivers SET is_active = $2, updated_at = now() WHERE id = $1")
            .bind(id)
            .bind(online)
            .execute(conn)
            .await?;
    Ok(updated.rows_affected() > 0)
}
