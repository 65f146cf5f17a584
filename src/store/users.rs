//! Queries on `users`, a driver's profile created with its user, and who a principal is.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

use crate::auth::Role;

/// A user row.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct User {
    pub id: i64,
    pub role: String,
    pub name: String,
    pub email: String,
    pub phone: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// The fields of a user to create, already validated.
#[derive(Debug, Clone)]
pub struct NewUser<'a> {
    pub role: Role,
    pub name: &'a str,
    pub email: &'a str,
    pub phone: Option<&'a str>,
}

/// A driver's profile, created with its user.
#[derive(Debug, Clone)]
pub struct NewDriver<'a> {
    pub vehicle_type: Option<&'a str>,
    pub daily_delivery_goal: Option<i32>,
}

/// Inserts a user and returns it.
pub async fn insert(conn: &mut PgConnection, user: &NewUser<'_>) -> Result<User, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO users (role, name, email, phone) VALUES ($1, $2, $3, $4)
         RETURNING id, role, name, email, phone, created_at",
    )
    .bind(user.role.as_str())
    .bind(user.name)
    .bind(user.email)
    .bind(user.phone)
    .fetch_one(conn)
    .await
}

/// Inserts the driver profile of user `user_id` (offline until it goes online); returns the
/// driver id.
pub async fn insert_driver(
    conn: &mut PgConnection,
    user_id: i64,
    driver: &NewDriver<'_>,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO drivers (user_id, vehicle_type, daily_delivery_goal)
         VALUES ($1, $2, COALESCE($3, 10)) RETURNING id",
    )
    .bind(user_id)
    .bind(driver.vehicle_type)
    .bind(driver.daily_delivery_goal)
    .fetch_one(conn)
    .await
}

/// Every id a principal acts as (see `GET /v1/me`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Identity {
    /// The person's user (a restaurant without an owner has none).
    pub user_id: Option<i64>,
    pub driver_id: Option<i64>,
    pub restaurant_id: Option<i64>,
}

/// The ids behind a principal: a customer or operator is its user; a driver has its driver id
/// and its user; a restaurant has its id and its owner's user, if it has an owner.
pub async fn identity(pool: &PgPool, role: Role, subject: i64) -> Result<Identity, sqlx::Error> {
    let query = match role {
        Role::Customer | Role::Operator => {
            "SELECT id AS user_id, NULL::bigint AS driver_id, NULL::bigint AS restaurant_id
             FROM users WHERE id = $1"
        }
        Role::Driver => {
            "SELECT d.user_id, d.id AS driver_id, NULL::bigint AS restaurant_id
             FROM drivers d WHERE d.id = $1"
        }
        Role::Restaurant => {
            "SELECT r.owner_user_id AS user_id, NULL::bigint AS driver_id, r.id AS restaurant_id
             FROM restaurants r WHERE r.id = $1"
        }
    };
    Ok(sqlx::query_as(query)
        .bind(subject)
        .fetch_optional(pool)
        .await?
        .unwrap_or_default())
}

/// The user with this id, if any.
pub async fn find(pool: &PgPool, id: i64) -> Result<Option<User>, sqlx::Error> {
    sqlx::query_as("SELECT id, role, name, email, phone, created_at FROM users WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
}
