//! `POST /v1/restaurants` and `PATCH /v1/restaurants/{id}`: operators put a restaurant on the
//! marketplace and keep its profile (name, address, location, cuisine, prep time, delivery
//! radius, owner). Menus and opening hours are the restaurant's own business
//! ([`super::restaurants`]).
//!
//! A restaurant's token names the restaurant id, whether or not it has an owner; an owner is a
//! user of the `restaurant` role. Every change purges the restaurant's cache entry and every
//! nearby-search entry in the same request, as opening and closing do.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::AppState;
use crate::api::extract::{
    ApiJson, ApiPath, double_option, invalid_field, name_field, optional_text,
};
use crate::auth::{Principal, Role};
use crate::cache;
use crate::error::ApiError;
use crate::geo::Point;
use crate::store::restaurants::{self, NewRestaurant, RestaurantChanges, RestaurantProfile};
use crate::text::Line;

const MAX_NAME_CHARS: usize = 200;
const MAX_ADDRESS_CHARS: usize = 500;
const MAX_CUISINE_CHARS: usize = 50;
/// The schema's bounds (`restaurants_prep_time_range`, `restaurants_delivery_radius_range`).
const PREP_MINUTES: std::ops::RangeInclusive<i32> = 1..=240;
const RADIUS_M: std::ops::RangeInclusive<i32> = 100..=50_000;
const DEFAULT_PREP_MINUTES: i32 = 20;
const DEFAULT_RADIUS_M: i32 = 8_000;

/// Routes of this group.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create))
        .routes(routes!(update))
}

#[derive(Clone, Copy, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct LocationBody {
    lat: f64,
    lon: f64,
}

/// Body of `POST /v1/restaurants` (`name` and `location` required) and of `PATCH` (any
/// subset; `null` clears `address`, `cuisine_type` and `owner_user_id`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ProfileBody {
    name: Option<Line>,
    #[serde(default, deserialize_with = "double_option")]
    address: Option<Option<Line>>,
    location: Option<LocationBody>,
    #[serde(default, deserialize_with = "double_option")]
    cuisine_type: Option<Option<Line>>,
    #[schema(minimum = 1, maximum = 240)]
    prep_time_minutes: Option<i32>,
    #[schema(minimum = 100, maximum = 50_000)]
    delivery_radius_m: Option<i32>,
    #[serde(default, deserialize_with = "double_option")]
    owner_user_id: Option<Option<i64>>,
    /// Create only: whether it takes orders at once (default true).
    is_open: Option<bool>,
}

/// Validates the fields present in `body`; names the first bad one.
fn validate(body: ProfileBody) -> Result<RestaurantChanges, ApiError> {
    let name = name_field(body.name.as_deref(), MAX_NAME_CHARS)?;
    let location = match body.location {
        Some(at) => Some(
            Point::new(at.lat, at.lon)
                .filter(|p| p.indexable())
                .ok_or_else(|| {
                    ApiError::unprocessable(
                        "invalid_location",
                        "location must have lat within ±85.05112878 and lon within ±180",
                    )
                })?,
        ),
        None => None,
    };
    if body
        .prep_time_minutes
        .is_some_and(|m| !PREP_MINUTES.contains(&m))
    {
        return Err(invalid_field(format!(
            "prep_time_minutes must be {} to {}",
            PREP_MINUTES.start(),
            PREP_MINUTES.end()
        )));
    }
    if body
        .delivery_radius_m
        .is_some_and(|m| !RADIUS_M.contains(&m))
    {
        return Err(invalid_field(format!(
            "delivery_radius_m must be {} to {}",
            RADIUS_M.start(),
            RADIUS_M.end()
        )));
    }
    Ok(RestaurantChanges {
        name,
        address: optional_text(
            body.address.as_ref().map(|a| a.as_deref()),
            MAX_ADDRESS_CHARS,
            "address",
        )?,
        location,
        cuisine_type: optional_text(
            body.cuisine_type.as_ref().map(|c| c.as_deref()),
            MAX_CUISINE_CHARS,
            "cuisine_type",
        )?,
        prep_time_minutes: body.prep_time_minutes,
        delivery_radius_m: body.delivery_radius_m,
        owner_user_id: body.owner_user_id,
        market_id: None,
    })
}

/// The market `location` is in (see [`crate::market`]).
async fn market_of(state: &AppState, location: Point) -> Result<i64, ApiError> {
    let markets = state.location.markets().snapshot().await?;
    markets.containing(location).map(|m| m.id).ok_or_else(|| {
        ApiError::unprocessable(
            "outside_markets",
            "the location is outside every market courier serves",
        )
    })
}

/// A named owner must be a user of the `restaurant` role.
async fn check_owner(state: &AppState, owner: Option<Option<i64>>) -> Result<(), ApiError> {
    if let Some(Some(owner)) = owner
        && !restaurants::is_restaurant_user(&state.db, owner).await?
    {
        return Err(ApiError::unprocessable(
            "invalid_owner",
            format!("owner_user_id {owner} is not a user with the restaurant role"),
        ));
    }
    Ok(())
}

/// Puts a restaurant on the marketplace (`name` and `location` required).
#[utoipa::path(
    post,
    path = "/restaurants",
    operation_id = "create_restaurant",
    tag = "restaurants",
    request_body = ProfileBody,
    responses((status = 201, description = "The restaurant", body = RestaurantProfile)),
    security(("bearer" = ["operator"])),
    extensions(("x-error-codes" = json!(["invalid_field", "invalid_location", "outside_markets", "invalid_owner"]))),
)]
async fn create(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<ProfileBody>,
) -> Result<(StatusCode, Json<RestaurantProfile>), ApiError> {
    principal.require_role(&[Role::Operator])?;
    let is_open = body.is_open.unwrap_or(true);
    let fields = validate(body)?;
    let (Some(name), Some(location)) = (fields.name, fields.location) else {
        return Err(invalid_field("name and location are required"));
    };
    check_owner(&state, fields.owner_user_id).await?;
    let market_id = market_of(&state, location).await?;
    let new = NewRestaurant {
        name,
        address: fields.address.flatten(),
        location,
        cuisine_type: fields.cuisine_type.flatten(),
        prep_time_minutes: fields.prep_time_minutes.unwrap_or(DEFAULT_PREP_MINUTES),
        delivery_radius_m: fields.delivery_radius_m.unwrap_or(DEFAULT_RADIUS_M),
        is_open,
        owner_user_id: fields.owner_user_id.flatten(),
        market_id,
    };
    let restaurant = restaurants::insert(&state.db, &new).await?;
    cache::purge_restaurant(&state.valkey, restaurant.id, true).await;
    tracing::info!(restaurant_id = restaurant.id, "restaurant created");
    Ok((StatusCode::CREATED, Json(restaurant)))
}

/// Changes a restaurant's profile: any subset of the fields; `null` clears `address`,
/// `cuisine_type` and `owner_user_id`.
#[utoipa::path(
    patch,
    path = "/restaurants/{id}",
    operation_id = "update_restaurant",
    tag = "restaurants",
    params(("id" = i64, Path, description = "The restaurant's id")),
    request_body = ProfileBody,
    responses((status = 200, description = "The restaurant", body = RestaurantProfile)),
    security(("bearer" = ["operator"])),
    extensions(("x-error-codes" = json!(["not_found", "invalid_field", "invalid_location", "outside_markets", "invalid_owner"]))),
)]
async fn update(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<i64>,
    ApiJson(body): ApiJson<ProfileBody>,
) -> Result<Json<RestaurantProfile>, ApiError> {
    principal.require_role(&[Role::Operator])?;
    if body.is_open.is_some() {
        return Err(invalid_field(
            "is_open is changed with POST /v1/restaurants/{id}/open or /close",
        ));
    }
    let mut changes = validate(body)?;
    check_owner(&state, changes.owner_user_id).await?;
    if let Some(location) = changes.location {
        changes.market_id = Some(market_of(&state, location).await?);
    }
    let restaurant = restaurants::update(&state.db, id, &changes)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("restaurant {id} does not exist")))?;
    cache::purge_restaurant(&state.valkey, id, true).await;
    tracing::info!(restaurant_id = id, "restaurant profile changed");
    Ok(Json(restaurant))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: serde_json::Value) -> ProfileBody {
        serde_json::from_value(json).expect("a well-formed body")
    }

    #[test]
    fn fields_are_trimmed_and_blank_optional_text_clears() {
        let changes = validate(body(serde_json::json!({
            "name": "  Noodle Bar ", "address": "  ", "cuisine_type": " ramen ",
            "location": {"lat": 40.7, "lon": -74.0}, "owner_user_id": null,
        })))
        .expect("valid");
        assert_eq!(changes.name.as_deref(), Some("Noodle Bar"));
        assert_eq!(changes.address, Some(None));
        assert_eq!(changes.cuisine_type, Some(Some("ramen".to_owned())));
        assert_eq!(changes.owner_user_id, Some(None));
        assert_eq!(changes.prep_time_minutes, None);
        let absent = validate(body(serde_json::json!({}))).expect("an empty patch");
        assert_eq!(absent.address, None);
        assert_eq!(absent.owner_user_id, None);
    }

    #[test]
    fn bad_fields_are_named() {
        for (json, code, fragment) in [
            (serde_json::json!({"name": " "}), "invalid_field", "name"),
            (
                serde_json::json!({"location": {"lat": 89.0, "lon": 0.0}}),
                "invalid_location",
                "lat",
            ),
            (
                serde_json::json!({"prep_time_minutes": 0}),
                "invalid_field",
                "prep_time_minutes",
            ),
            (
                serde_json::json!({"delivery_radius_m": 99}),
                "invalid_field",
                "delivery_radius_m",
            ),
            (
                serde_json::json!({"cuisine_type": "x".repeat(51)}),
                "invalid_field",
                "cuisine_type",
            ),
        ] {
            let err = validate(body(json)).expect_err("invalid");
            assert_eq!(err.code(), code);
            assert!(
                err.to_string().contains(fragment),
                "{err} should name {fragment}"
            );
        }
    }
}
