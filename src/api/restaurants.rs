//! `/v1/restaurants`: the nearby search, a restaurant with its menu, and the restaurant's own
//! menu and opening controls.
//!
//! Reads are cache-aside in Valkey (the spec's step 8): a restaurant with its menu for 5
//! minutes, nearby searches for 2 minutes per grid cell — the cell's candidates are cached and
//! each request computes its own exact distances from them, so customers a few metres apart
//! share an entry and still get correct distances. Every write invalidates what it changed in
//! the same request. A restaurant principal (subject = restaurant id) may only touch its own
//! restaurant; operators may touch any.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::AppState;
use crate::api::extract::{
    ApiJson, ApiPath, ApiQuery, NearbySearch, SearchBounds, double_option, invalid_field,
    name_field, optional_text,
};
use crate::auth::{Principal, Role};
use crate::cache;
use crate::error::ApiError;
use crate::geo::{self, Point};
use crate::store::restaurants::{
    self, MenuItem, MenuItemFields, NearbyRestaurant, RestaurantWithMenu,
};
use crate::text::{Line, Text};

/// Radius and result bounds of the nearby search.
const BOUNDS: SearchBounds = SearchBounds {
    default_radius_km: 5.0,
    max_radius_km: 50.0,
    default_limit: 20,
    max_limit: 100,
};
const MAX_NAME_CHARS: usize = 200;
const MAX_DESCRIPTION_CHARS: usize = 2_000;
const MAX_CATEGORY_CHARS: usize = 50;
/// Highest menu price: $10,000.
const MAX_PRICE_CENTS: i64 = 1_000_000;

/// Routes of this group.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(nearby))
        .routes(routes!(show))
        .routes(routes!(open))
        .routes(routes!(close))
        .routes(routes!(create_item))
        .routes(routes!(update_item, delete_item))
}

/// Query of `GET /v1/restaurants`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct NearbyQuery {
    #[param(minimum = -90, maximum = 90)]
    lat: f64,
    #[param(minimum = -180, maximum = 180)]
    lon: f64,
    /// At most 50; 5 when absent.
    #[param(exclusive_minimum = 0, maximum = 50)]
    radius_km: Option<f64>,
    /// One cuisine, in any case (at most 50 characters).
    #[param(max_length = 50)]
    cuisine: Option<String>,
    /// Only open (`true`) or closed (`false`) restaurants.
    open: Option<bool>,
    /// 1 to 100; 20 when absent.
    #[param(minimum = 1, maximum = 100)]
    limit: Option<usize>,
}

/// One result of the nearby search.
#[derive(Debug, Serialize, ToSchema)]
struct NearbyResult {
    #[serde(flatten)]
    restaurant: NearbyRestaurant,
    distance_m: f64,
}

#[derive(Debug, Serialize, ToSchema)]
struct NearbyBody {
    restaurants: Vec<NearbyResult>,
}

fn cache_header(response: &mut Response, hit: bool) {
    response.headers_mut().insert(
        "x-cache",
        HeaderValue::from_static(if hit { "hit" } else { "miss" }),
    );
}

/// Restaurants near a point, nearest first (cached per area; `X-Cache` says hit or miss).
#[utoipa::path(
    get,
    path = "/restaurants",
    operation_id = "nearby_restaurants",
    tag = "restaurants",
    params(NearbyQuery),
    responses((status = 200, description = "The restaurants", body = NearbyBody)),
    security(("bearer" = ["customer", "restaurant", "driver", "operator"])),
    extensions(("x-error-codes" = json!(["invalid_coordinates", "invalid_radius", "invalid_limit", "invalid_cuisine"]))),
)]
async fn nearby(
    State(state): State<AppState>,
    _principal: Principal,
    ApiQuery(q): ApiQuery<NearbyQuery>,
) -> Result<Response, ApiError> {
    let NearbySearch {
        at: point,
        radius_km,
        limit,
    } = NearbySearch::parse(q.lat, q.lon, q.radius_km, q.limit, BOUNDS)?;
    let cuisine = q
        .cuisine
        .as_deref()
        .map(str::trim)
        .filter(|c| !c.is_empty());
    if cuisine.is_some_and(|c| c.chars().count() > MAX_CATEGORY_CHARS) {
        return Err(ApiError::unprocessable(
            "invalid_cuisine",
            "cuisine is at most 50 characters",
        ));
    }
    let radius_m = radius_km * 1_000.0;

    let cell = geo::cell_of(point);
    let generation = cache::nearby_generation(&state.valkey).await;
    let key = state.valkey.key(&format!(
        "cache:nearby:{generation}:{}:{}:{}:{}",
        cell.0,
        cell.1,
        radius_m.round(),
        cuisine.map(str::to_lowercase).unwrap_or_default()
    ));
    let (candidates, hit) = match cache::get::<Vec<NearbyRestaurant>>(&state.valkey, &key).await {
        Some(candidates) => (candidates, true),
        None => {
            let center = geo::cell_center(cell);
            let candidates = restaurants::within(
                &state.db,
                center,
                radius_m + geo::CELL_HALF_DIAGONAL_M,
                cuisine,
            )
            .await?;
            cache::put(&state.valkey, &key, &candidates, cache::NEARBY_TTL).await;
            (candidates, false)
        }
    };
    let mut results: Vec<NearbyResult> = candidates
        .into_iter()
        .filter(|r| q.open.is_none_or(|open| r.is_open == open))
        .filter_map(|restaurant| {
            let distance_m = geo::haversine_m(
                point,
                Point {
                    lat: restaurant.lat,
                    lon: restaurant.lon,
                },
            );
            (distance_m <= radius_m).then_some(NearbyResult {
                restaurant,
                distance_m,
            })
        })
        .collect();
    results.sort_by(|a, b| a.distance_m.total_cmp(&b.distance_m));
    results.truncate(limit);
    let mut response = Json(NearbyBody {
        restaurants: results,
    })
    .into_response();
    cache_header(&mut response, hit);
    Ok(response)
}

/// A restaurant with its available menu.
#[utoipa::path(
    get,
    path = "/restaurants/{id}",
    operation_id = "get_restaurant",
    tag = "restaurants",
    params(("id" = i64, Path, description = "The restaurant's id")),
    responses((status = 200, description = "The restaurant and its menu", body = RestaurantWithMenu)),
    security(("bearer" = ["customer", "restaurant", "driver", "operator"])),
    extensions(("x-error-codes" = json!(["not_found"]))),
)]
async fn show(
    State(state): State<AppState>,
    _principal: Principal,
    ApiPath(id): ApiPath<i64>,
) -> Result<Response, ApiError> {
    let key = cache::restaurant_key(&state.valkey, id);
    if let Some(cached) = cache::get::<RestaurantWithMenu>(&state.valkey, &key).await {
        let mut response = Json(cached).into_response();
        cache_header(&mut response, true);
        return Ok(response);
    }
    let restaurant = restaurants::with_menu(&state.db, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("restaurant {id} does not exist")))?;
    cache::put(&state.valkey, &key, &restaurant, cache::RESTAURANT_TTL).await;
    let mut response = Json(restaurant).into_response();
    cache_header(&mut response, false);
    Ok(response)
}

/// Operators may manage any restaurant; a restaurant principal only its own.
fn require_owner(principal: &Principal, restaurant_id: i64) -> Result<(), ApiError> {
    principal.require_role(&[Role::Restaurant, Role::Operator])?;
    if principal.role == Role::Restaurant && principal.subject != restaurant_id {
        return Err(ApiError::forbidden(
            "a restaurant may only manage its own menu and hours",
        ));
    }
    Ok(())
}

#[derive(Debug, Serialize, ToSchema)]
struct OpenBody {
    id: i64,
    is_open: bool,
}

async fn set_open(
    state: &AppState,
    principal: &Principal,
    id: i64,
    open: bool,
) -> Result<Json<OpenBody>, ApiError> {
    require_owner(principal, id)?;
    if !restaurants::set_open(&state.db, id, open).await? {
        return Err(ApiError::not_found(format!(
            "restaurant {id} does not exist"
        )));
    }
    cache::purge_restaurant(&state.valkey, id, true).await;
    tracing::info!(restaurant_id = id, open, "restaurant hours changed");
    Ok(Json(OpenBody { id, is_open: open }))
}

/// The restaurant takes orders.
#[utoipa::path(
    post,
    path = "/restaurants/{id}/open",
    operation_id = "open_restaurant",
    tag = "restaurants",
    params(("id" = i64, Path, description = "The restaurant's id")),
    responses((status = 200, description = "Open", body = OpenBody)),
    security(("bearer" = ["restaurant", "operator"])),
    extensions(("x-error-codes" = json!(["not_found"]))),
)]
async fn open(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<OpenBody>, ApiError> {
    set_open(&state, &principal, id, true).await
}

/// The restaurant stops taking orders.
#[utoipa::path(
    post,
    path = "/restaurants/{id}/close",
    operation_id = "close_restaurant",
    tag = "restaurants",
    params(("id" = i64, Path, description = "The restaurant's id")),
    responses((status = 200, description = "Closed", body = OpenBody)),
    security(("bearer" = ["restaurant", "operator"])),
    extensions(("x-error-codes" = json!(["not_found"]))),
)]
async fn close(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<OpenBody>, ApiError> {
    set_open(&state, &principal, id, false).await
}

/// Body of `POST` (all required fields) and `PATCH` (any subset) on menu items.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = MenuItemFields)]
struct ItemBody {
    name: Option<Line>,
    #[serde(default, deserialize_with = "double_option")]
    description: Option<Option<Text>>,
    #[schema(minimum = 0, maximum = 1_000_000)]
    price_cents: Option<i64>,
    #[serde(default, deserialize_with = "double_option")]
    category: Option<Option<Line>>,
    is_available: Option<bool>,
}

/// Validates and trims the fields present in `body`.
fn validate_item(body: ItemBody) -> Result<MenuItemFields, ApiError> {
    let name = name_field(body.name.as_deref(), MAX_NAME_CHARS)?;
    let description = optional_text(
        body.description.as_ref().map(|d| d.as_deref()),
        MAX_DESCRIPTION_CHARS,
        "description",
    )?;
    let category = optional_text(
        body.category.as_ref().map(|c| c.as_deref()),
        MAX_CATEGORY_CHARS,
        "category",
    )?;
    if body
        .price_cents
        .is_some_and(|p| !(0..=MAX_PRICE_CENTS).contains(&p))
    {
        return Err(invalid_field(format!(
            "price_cents must be 0 to {MAX_PRICE_CENTS}"
        )));
    }
    Ok(MenuItemFields {
        name,
        description,
        price_cents: body.price_cents,
        category,
        is_available: body.is_available,
    })
}

/// Adds a menu item (`name` and `price_cents` required).
#[utoipa::path(
    post,
    path = "/restaurants/{id}/menu-items",
    operation_id = "create_menu_item",
    tag = "restaurants",
    params(("id" = i64, Path, description = "The restaurant's id")),
    request_body = ItemBody,
    responses((status = 201, description = "The item", body = MenuItem)),
    security(("bearer" = ["restaurant", "operator"])),
    extensions(("x-error-codes" = json!(["not_found", "invalid_field"]))),
)]
async fn create_item(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<i64>,
    ApiJson(body): ApiJson<ItemBody>,
) -> Result<(StatusCode, Json<MenuItem>), ApiError> {
    require_owner(&principal, id)?;
    let fields = validate_item(body)?;
    if fields.name.is_none() || fields.price_cents.is_none() {
        return Err(invalid_field(
            "name and price_cents are required".to_owned(),
        ));
    }
    if !restaurants::exists(&state.db, id).await? {
        return Err(ApiError::not_found(format!(
            "restaurant {id} does not exist"
        )));
    }
    let item = restaurants::insert_item(&state.db, id, &fields).await?;
    cache::purge_restaurant(&state.valkey, id, false).await;
    tracing::info!(restaurant_id = id, item_id = item.id, "menu item created");
    Ok((StatusCode::CREATED, Json(item)))
}

/// Changes a menu item: any subset of the fields; `null` clears `description` and `category`.
#[utoipa::path(
    patch,
    path = "/restaurants/{id}/menu-items/{item_id}",
    operation_id = "update_menu_item",
    tag = "restaurants",
    params(
        ("id" = i64, Path, description = "The restaurant's id"),
        ("item_id" = i64, Path, description = "The item's id"),
    ),
    request_body = ItemBody,
    responses((status = 200, description = "The item", body = MenuItem)),
    security(("bearer" = ["restaurant", "operator"])),
    extensions(("x-error-codes" = json!(["not_found", "invalid_field"]))),
)]
async fn update_item(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((id, item_id)): ApiPath<(i64, i64)>,
    ApiJson(body): ApiJson<ItemBody>,
) -> Result<Json<MenuItem>, ApiError> {
    require_owner(&principal, id)?;
    let fields = validate_item(body)?;
    let item = restaurants::update_item(&state.db, id, item_id, &fields)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!("restaurant {id} has no menu item {item_id}"))
        })?;
    cache::purge_restaurant(&state.valkey, id, false).await;
    tracing::info!(restaurant_id = id, item_id, "menu item updated");
    Ok(Json(item))
}

/// Removes a menu item.
#[utoipa::path(
    delete,
    path = "/restaurants/{id}/menu-items/{item_id}",
    operation_id = "delete_menu_item",
    tag = "restaurants",
    params(
        ("id" = i64, Path, description = "The restaurant's id"),
        ("item_id" = i64, Path, description = "The item's id"),
    ),
    responses((status = 204, description = "Removed")),
    security(("bearer" = ["restaurant", "operator"])),
    extensions(("x-error-codes" = json!(["not_found"]))),
)]
async fn delete_item(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((id, item_id)): ApiPath<(i64, i64)>,
) -> Result<StatusCode, ApiError> {
    require_owner(&principal, id)?;
    if !restaurants::delete_item(&state.db, id, item_id).await? {
        return Err(ApiError::not_found(format!(
            "restaurant {id} has no menu item {item_id}"
        )));
    }
    cache::purge_restaurant(&state.valkey, id, false).await;
    tracing::info!(restaurant_id = id, item_id, "menu item deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: serde_json::Value) -> ItemBody {
        serde_json::from_value(json).expect("parses")
    }

    #[test]
    fn absent_null_and_present_fields_are_distinguished() {
        let absent = validate_item(body(serde_json::json!({}))).expect("valid");
        assert_eq!(absent.description, None);
        let cleared = validate_item(body(serde_json::json!({"description": null}))).expect("valid");
        assert_eq!(cleared.description, Some(None));
        let set =
            validate_item(body(serde_json::json!({"description": "  crispy "}))).expect("valid");
        assert_eq!(set.description, Some(Some("crispy".to_owned())));
    }

    #[test]
    fn bad_fields_are_rejected() {
        for json in [
            serde_json::json!({"name": "  "}),
            serde_json::json!({"name": "x".repeat(201)}),
            serde_json::json!({"price_cents": -1}),
            serde_json::json!({"price_cents": MAX_PRICE_CENTS + 1}),
            serde_json::json!({"category": "c".repeat(51)}),
        ] {
            assert_eq!(
                validate_item(body(json)).expect_err("invalid").code(),
                "invalid_field"
            );
        }
    }

    #[test]
    fn restaurants_manage_only_their_own() {
        let own = Principal {
            role: Role::Restaurant,
            subject: 4,
        };
        assert!(require_owner(&own, 4).is_ok());
        assert_eq!(
            require_owner(&own, 5).expect_err("other").code(),
            "forbidden"
        );
        let operator = Principal {
            role: Role::Operator,
            subject: 1,
        };
        assert!(require_owner(&operator, 5).is_ok());
        let customer = Principal {
            role: Role::Customer,
            subject: 4,
        };
        assert_eq!(
            require_owner(&customer, 4).expect_err("customer").code(),
            "forbidden"
        );
    }
}
