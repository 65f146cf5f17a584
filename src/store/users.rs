//! Queries on `users`.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use crate::auth::Role;

/// A user row.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
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

/// Inserts a user and returns it.
pub async fn insert(pool: &PgPool, user: &NewUser<'_>) -> Result<User, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO users (role, name, email, phone) VALUES ($1, $2, $3, $4)
         RETURNING id, role, name, email, phone, created_at",
    )
    .bind(user.role.as_str())
    .bind(user.name)
    .bind(user.email)
    .bind(user.phone)
    .fetch_one(pool)
    .await
}

/// The user with this id, if any.
pub async fn find(pool: &PgPool, id: i64) -> Result<Option<User>, sqlx::Error> {
    sqlx::query_as("SELECT id, role, name, email, phone, created_at FROM users WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
}
