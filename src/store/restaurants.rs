//! Queries on `restaurants` and `menu_items`.

use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::geo::Point;

/// A restaurant near a point, as the nearby search returns it (and caches it per cell).
#[derive(Clone, Debug, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct NearbyRestaurant {
    pub id: i64,
    pub name: String,
    pub cuisine_type: Option<String>,
    pub rating: Option<f64>,
    pub prep_time_minutes: i32,
    pub is_open: bool,
    pub lat: f64,
    pub lon: f64,
}

/// Most candidates one cell query returns.
pub const NEARBY_CANDIDATE_CAP: i64 = 1_000;

/// Restaurants within `radius_m` of `center`, optionally of one cuisine, nearest first, at most
/// [`NEARBY_CANDIDATE_CAP`].
pub async fn within(
    pool: &PgPool,
    center: Point,
    radius_m: f64,
    cuisine: Option<&str>,
) -> Result<Vec<NearbyRestaurant>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, name, cuisine_type, rating::float8 AS rating, prep_time_minutes, is_open,
                ST_Y(location::geometry) AS lat, ST_X(location::geometry) AS lon
         FROM restaurants
         WHERE ST_DWithin(location, ST_SetSRID(ST_MakePoint($1, $2), 4326)::geography, $3)
           AND ($4::text IS NULL OR lower(cuisine_type) = lower($4))
         ORDER BY location <-> ST_SetSRID(ST_MakePoint($1, $2), 4326)::geography
         LIMIT $5",
    )
    .bind(center.lon)
    .bind(center.lat)
    .bind(radius_m)
    .bind(cuisine)
    .bind(NEARBY_CANDIDATE_CAP)
    .fetch_all(pool)
    .await
}

/// A menu item.
#[derive(Clone, Debug, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct MenuItem {
    pub id: i64,
    pub restaurant_id: i64,
    pub name: String,
    pub description: Option<String>,
    pub price_cents: i64,
    pub category: Option<String>,
    pub is_available: bool,
}

/// A restaurant with its available menu (the cache-aside entry of the spec's step 8).
#[derive(Clone, Debug, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct RestaurantWithMenu {
    pub id: i64,
    pub name: String,
    pub address: Option<String>,
    pub cuisine_type: Option<String>,
    pub rating: Option<f64>,
    pub prep_time_minutes: i32,
    pub delivery_radius_m: i32,
    pub is_open: bool,
    pub lat: f64,
    pub lon: f64,
    #[sqlx(json)]
    pub menu: Vec<MenuItem>,
}

/// The restaurant with its available menu, in one round trip.
pub async fn with_menu(pool: &PgPool, id: i64) -> Result<Option<RestaurantWithMenu>, sqlx::Error> {
    sqlx::query_as(
        "SELECT r.id, r.name, r.address, r.cuisine_type, r.rating::float8 AS rating,
                r.prep_time_minutes, r.delivery_radius_m, r.is_open,
                ST_Y(r.location::geometry) AS lat, ST_X(r.location::geometry) AS lon,
                COALESCE((SELECT jsonb_agg(jsonb_build_object(
                              'id', m.id, 'restaurant_id', m.restaurant_id, 'name', m.name,
                              'description', m.description, 'price_cents', m.price_cents,
                              'category', m.category, 'is_available', m.is_available)
                              ORDER BY m.category NULLS LAST, m.name, m.id)
                          FROM menu_items m
                          WHERE m.restaurant_id = r.id AND m.is_available AND m.deleted_at IS NULL),
                         '[]'::jsonb) AS menu
         FROM restaurants r WHERE r.id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// Whether a restaurant with this id exists.
pub async fn exists(pool: &PgPool, id: i64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM restaurants WHERE id = $1)")
        .bind(id)
        .fetch_one(pool)
        .await
}

/// Fields of a menu item to create or change; `None` leaves a field as it is on update.
#[derive(Clone, Debug, Default)]
pub struct MenuItemFields {
    pub name: Option<String>,
    /// `Some(None)` clears the description.
    pub description: Option<Option<String>>,
    pub price_cents: Option<i64>,
    /// `Some(None)` clears the category.
    pub category: Option<Option<String>>,
    pub is_available: Option<bool>,
}

const ITEM_COLUMNS: &str =
    "id, restaurant_id, name, description, price_cents, category, is_available";

/// Creates a menu item (name and price must be set).
pub async fn insert_item(
    pool: &PgPool,
    restaurant_id: i64,
    f: &MenuItemFields,
) -> Result<MenuItem, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO menu_items (restaurant_id, name, description, price_cents, category, is_available)
         VALUES ($1, $2, $3, $4, $5, COALESCE($6, TRUE)) RETURNING {ITEM_COLUMNS}"
    )))
    .bind(restaurant_id)
    .bind(f.name.as_deref())
    .bind(f.description.clone().flatten())
    .bind(f.price_cents)
    .bind(f.category.clone().flatten())
    .bind(f.is_available)
    .fetch_one(pool)
    .await
}

/// Changes the given fields of a live item of the restaurant; `None` if there is no such item.
pub async fn update_item(
    pool: &PgPool,
    restaurant_id: i64,
    item_id: i64,
    f: &MenuItemFields,
) -> Result<Option<MenuItem>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE menu_items SET
             name = COALESCE($3, name),
             description = CASE WHEN $4 THEN $5 ELSE description END,
             price_cents = COALESCE($6, price_cents),
             category = CASE WHEN $7 THEN $8 ELSE category END,
             is_available = COALESCE($9, is_available),
             updated_at = now()
         WHERE id = $2 AND restaurant_id = $1 AND deleted_at IS NULL
         RETURNING {ITEM_COLUMNS}"
    )))
    .bind(restaurant_id)
    .bind(item_id)
    .bind(f.name.as_deref())
    .bind(f.description.is_some())
    .bind(f.description.clone().flatten())
    .bind(f.price_cents)
    .bind(f.category.is_some())
    .bind(f.category.clone().flatten())
    .bind(f.is_available)
    .fetch_optional(pool)
    .await
}

/// Soft-deletes a live item of the restaurant; returns whether there was one.
pub async fn delete_item(
    pool: &PgPool,
    restaurant_id: i64,
    item_id: i64,
) -> Result<bool, sqlx::Error> {
    let deleted = sqlx::query(
        "UPDATE menu_items SET deleted_at = now(), is_available = FALSE, updated_at = now()
         WHERE id = $2 AND restaurant_id = $1 AND deleted_at IS NULL",
    )
    .bind(restaurant_id)
    .bind(item_id)
    .execute(pool)
    .await?;
    Ok(deleted.rows_affected() == 1)
}

/// Opens or closes a restaurant; returns whether it exists.
pub async fn set_open(pool: &PgPool, id: i64, open: bool) -> Result<bool, sqlx::Error> {
    let updated =
        sqlx::query("UPDATE restaurants SET is_open = $2, updated_at = now() WHERE id = $1")
            .bind(id)
            .bind(open)
            .execute(pool)
            .await?;
    Ok(updated.rows_affected() == 1)
}

/// A restaurant's profile as operators manage it (`POST`/`PATCH /v1/restaurants`).
#[derive(Clone, Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct RestaurantProfile {
    pub id: i64,
    pub owner_user_id: Option<i64>,
    pub name: String,
    pub address: Option<String>,
    pub cuisine_type: Option<String>,
    pub rating: Option<f64>,
    pub prep_time_minutes: i32,
    pub delivery_radius_m: i32,
    pub is_open: bool,
    pub lat: f64,
    pub lon: f64,
    /// The market its location is in.
    pub market_id: i64,
}

const PROFILE_COLUMNS: &str = "id, owner_user_id, name, address, cuisine_type,
    rating::float8 AS rating, prep_time_minutes, delivery_radius_m, is_open,
    ST_Y(location::geometry) AS lat, ST_X(location::geometry) AS lon, market_id";

/// Fields of a restaurant to create, already validated.
#[derive(Clone, Debug)]
pub struct NewRestaurant {
    pub name: String,
    pub address: Option<String>,
    pub location: Point,
    pub cuisine_type: Option<String>,
    pub prep_time_minutes: i32,
    pub delivery_radius_m: i32,
    pub is_open: bool,
    pub owner_user_id: Option<i64>,
    /// The market `location` is in.
    pub market_id: i64,
}

/// Creates a restaurant; returns its profile.
pub async fn insert(pool: &PgPool, new: &NewRestaurant) -> Result<RestaurantProfile, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO restaurants (name, address, location, cuisine_type, prep_time_minutes,
                                  delivery_radius_m, is_open, owner_user_id, market_id)
         VALUES ($1, $2, ST_SetSRID(ST_MakePoint($4, $3), 4326)::geography, $5, $6, $7, $8, $9,
                 $10)
         RETURNING {PROFILE_COLUMNS}"
    )))
    .bind(&new.name)
    .bind(&new.address)
    .bind(new.location.lat)
    .bind(new.location.lon)
    .bind(&new.cuisine_type)
    .bind(new.prep_time_minutes)
    .bind(new.delivery_radius_m)
    .bind(new.is_open)
    .bind(new.owner_user_id)
    .bind(new.market_id)
    .fetch_one(pool)
    .await
}

/// Changes to a restaurant's profile, already validated; `None` leaves a field as it is,
/// `Some(None)` clears a nullable one.
#[derive(Clone, Debug, Default)]
pub struct RestaurantChanges {
    pub name: Option<String>,
    pub address: Option<Option<String>>,
    pub location: Option<Point>,
    pub cuisine_type: Option<Option<String>>,
    pub prep_time_minutes: Option<i32>,
    pub delivery_radius_m: Option<i32>,
    pub owner_user_id: Option<Option<i64>>,
    /// The market of a new `location`.
    pub market_id: Option<i64>,
}

/// Applies `changes` to restaurant `id`; its profile after, or `None` if there is none.
pub async fn update(
    pool: &PgPool,
    id: i64,
    changes: &RestaurantChanges,
) -> Result<Option<RestaurantProfile>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE restaurants SET
             name = COALESCE($2, name),
             address = CASE WHEN $3 THEN $4 ELSE address END,
             location = CASE WHEN $5 THEN ST_SetSRID(ST_MakePoint($7, $6), 4326)::geography
                             ELSE location END,
             cuisine_type = CASE WHEN $8 THEN $9 ELSE cuisine_type END,
             prep_time_minutes = COALESCE($10, prep_time_minutes),
             delivery_radius_m = COALESCE($11, delivery_radius_m),
             owner_user_id = CASE WHEN $12 THEN $13 ELSE owner_user_id END,
             market_id = COALESCE($14, market_id),
             updated_at = now()
         WHERE id = $1
         RETURNING {PROFILE_COLUMNS}"
    )))
    .bind(id)
    .bind(&changes.name)
    .bind(changes.address.is_some())
    .bind(changes.address.clone().flatten())
    .bind(changes.location.is_some())
    .bind(changes.location.map(|p| p.lat))
    .bind(changes.location.map(|p| p.lon))
    .bind(changes.cuisine_type.is_some())
    .bind(changes.cuisine_type.clone().flatten())
    .bind(changes.prep_time_minutes)
    .bind(changes.delivery_radius_m)
    .bind(changes.owner_user_id.is_some())
    .bind(changes.owner_user_id.flatten())
    .bind(changes.market_id)
    .fetch_optional(pool)
    .await
}

/// Whether user `id` exists and has the restaurant role (may own a restaurant).
pub async fn is_restaurant_user(pool: &PgPool, id: i64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE id = $1 AND role = 'restaurant')")
        .bind(id)
        .fetch_one(pool)
        .await
}
