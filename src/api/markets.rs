//! `/v1/markets`: operators add the cities courier serves and keep them (name, time zone,
//! circle, active). A market's slug names its Valkey hash tag, so it is set once and never
//! changes; what a market decides is [`crate::market`].
//!
//! Every process reads the markets again within [`crate::store::markets::REFRESH`]; the one
//! that made a change reads them at once, so its next request already sees it.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::AppState;
use crate::api::extract::{ApiJson, ApiPath, name_field};
use crate::auth::{Principal, Role};
use crate::error::ApiError;
use crate::geo::Point;
use crate::market::{MAX_RADIUS_KM, MarketSlug};
use crate::store::markets::{self, DispatchMode, MarketChanges, MarketRow, NewMarket};
use crate::text::Line;

const MAX_NAME_CHARS: usize = 100;

/// Routes of this group.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(get_one, update))
}

#[derive(Clone, Copy, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = MarketCenter)]
struct CenterBody {
    #[schema(minimum = -90, maximum = 90)]
    lat: f64,
    #[schema(minimum = -180, maximum = 180)]
    lon: f64,
}

/// Body of `POST /v1/markets` (all but `active` required) and of `PATCH` (any subset but
/// `slug`, which never changes).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct MarketBody {
    /// 1 to 32 of `a-z`, `0-9` and inner `-`.
    #[schema(pattern = "^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")]
    slug: Option<Line>,
    name: Option<Line>,
    /// An IANA time zone, e.g. `America/New_York`.
    time_zone: Option<Line>,
    center: Option<CenterBody>,
    /// Radius of the market's circle, km (0 < radius ≤ 20,100; 20,100 covers the earth).
    #[schema(exclusive_minimum = 0, maximum = 20_100)]
    radius_km: Option<f64>,
    /// Whether reports and restaurants are placed in it (default true).
    active: Option<bool>,
    /// How its orders find drivers (default `per_order`): `cycle` runs a dispatch cycle for
    /// the whole market every few seconds.
    dispatch: Option<DispatchMode>,
}

fn invalid_market(message: impl Into<std::borrow::Cow<'static, str>>) -> ApiError {
    ApiError::unprocessable("invalid_market", message)
}

/// The fields of `body` other than the slug, validated; names the first bad one.
fn changes(body: &MarketBody) -> Result<MarketChanges, ApiError> {
    let name = name_field(body.name.as_deref(), MAX_NAME_CHARS)
        .map_err(|_| invalid_market(format!("name must be 1 to {MAX_NAME_CHARS} characters")))?;
    let time_zone = body
        .time_zone
        .as_deref()
        .map(|zone| {
            zone.trim().parse::<Tz>().map_err(|_| {
                invalid_market("time_zone must be an IANA time zone, e.g. America/New_York")
            })
        })
        .transpose()?;
    let center = body
        .center
        .map(|c| {
            Point::new(c.lat, c.lon).ok_or_else(|| {
                invalid_market("center.lat must be in [-90, 90] and center.lon in [-180, 180]")
            })
        })
        .transpose()?;
    if body
        .radius_km
        .is_some_and(|r| !(r.is_finite() && r > 0.0 && r <= MAX_RADIUS_KM))
    {
        return Err(invalid_market(format!(
            "radius_km must be more than 0 and at most {MAX_RADIUS_KM}"
        )));
    }
    Ok(MarketChanges {
        name,
        time_zone,
        center,
        radius_km: body.radius_km,
        active: body.active,
        dispatch: body.dispatch,
    })
}

/// The markets, by id.
#[derive(Debug, Serialize, ToSchema)]
struct MarketList {
    markets: Vec<MarketRow>,
}

/// Adds a market. Restaurants and driver reports inside its circle belong to it from the next
/// refresh of each process (at once in this one), where no smaller market contains them.
#[utoipa::path(
    post,
    path = "/markets",
    operation_id = "create_market",
    tag = "markets",
    request_body = MarketBody,
    responses((status = 201, description = "The market", body = MarketRow)),
    security(("bearer" = ["operator"])),
    extensions(("x-error-codes" = json!(["invalid_market", "market_exists"]))),
)]
async fn create(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<MarketBody>,
) -> Result<(StatusCode, Json<MarketRow>), ApiError> {
    principal.require_role(&[Role::Operator])?;
    let slug = body
        .slug
        .as_deref()
        .map(|raw| {
            MarketSlug::parse(raw)
                .ok_or_else(|| invalid_market("slug must be 1 to 32 of a-z, 0-9 and inner dashes"))
        })
        .transpose()?;
    let fields = changes(&body)?;
    let (Some(slug), Some(name), Some(time_zone), Some(center), Some(radius_km)) = (
        slug,
        fields.name,
        fields.time_zone,
        fields.center,
        fields.radius_km,
    ) else {
        return Err(invalid_market(
            "slug, name, time_zone, center and radius_km are required",
        ));
    };
    let new = NewMarket {
        slug,
        name,
        time_zone,
        center,
        radius_km,
        active: fields.active.unwrap_or(true),
        dispatch: fields.dispatch.unwrap_or(DispatchMode::PerOrder),
    };
    let market = markets::insert(&state.db, &new).await?;
    state.location.markets().reload().await?;
    tracing::info!(market = %market.slug, "market created");
    Ok((StatusCode::CREATED, Json(market)))
}

/// Every market, active or not.
#[utoipa::path(
    get,
    path = "/markets",
    operation_id = "list_markets",
    tag = "markets",
    responses((status = 200, description = "The markets", body = MarketList)),
    security(("bearer" = ["operator"])),
)]
async fn list(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<MarketList>, ApiError> {
    principal.require_role(&[Role::Operator])?;
    Ok(Json(MarketList {
        markets: markets::list(&state.db).await?,
    }))
}

/// One market.
#[utoipa::path(
    get,
    path = "/markets/{id}",
    operation_id = "get_market",
    tag = "markets",
    params(("id" = i64, Path, description = "The market's id")),
    responses((status = 200, description = "The market", body = MarketRow)),
    security(("bearer" = ["operator"])),
    extensions(("x-error-codes" = json!(["not_found"]))),
)]
async fn get_one(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<MarketRow>, ApiError> {
    principal.require_role(&[Role::Operator])?;
    markets::get(&state.db, id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("market {id} does not exist")))
}

/// Changes a market: any subset of the fields but `slug`. Deactivated, it takes no new
/// reports or restaurants; its drivers move out with their next report, if another market
/// contains them, and are refused otherwise.
#[utoipa::path(
    patch,
    path = "/markets/{id}",
    operation_id = "update_market",
    tag = "markets",
    params(("id" = i64, Path, description = "The market's id")),
    request_body = MarketBody,
    responses((status = 200, description = "The market", body = MarketRow)),
    security(("bearer" = ["operator"])),
    extensions(("x-error-codes" = json!(["not_found", "invalid_market"]))),
)]
async fn update(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<i64>,
    ApiJson(body): ApiJson<MarketBody>,
) -> Result<Json<MarketRow>, ApiError> {
    principal.require_role(&[Role::Operator])?;
    if body.slug.is_some() {
        return Err(invalid_market(
            "slug never changes: it names the market's keys",
        ));
    }
    let fields = changes(&body)?;
    let market = markets::update(&state.db, id, &fields)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("market {id} does not exist")))?;
    state.location.markets().reload().await?;
    tracing::info!(market = %market.slug, "market changed");
    Ok(Json(market))
}
