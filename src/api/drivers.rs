//! `/v1/drivers`: location reports (one, or a batch of up to 1,000), online/offline status (going
//! offline declines the driver's pending offers), and
//! the operators' nearby-available-drivers view. The work is in [`crate::location`].

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::AppState;
use crate::api::extract::{ApiJson, ApiPath, ApiQuery, NearbySearch, SearchBounds};
use crate::api::ratelimit::{Charged, refused, set_headers};
use crate::auth::{Principal, Role};
use crate::domain::DriverId;
use crate::error::ApiError;
use crate::location::update::{Invalid, LocationUpdate, RawUpdate, VALID_RANGE};
use crate::location::{Admitted, Ingested, NearbyDriver, now_ms};
use crate::ratelimit::RouteClass;
use crate::store::drivers;
use crate::workflows::offers;

/// Most reports in one batch.
pub const MAX_BATCH: usize = 1_000;
const BOUNDS: SearchBounds = SearchBounds {
    default_radius_km: 5.0,
    max_radius_km: 20.0,
    default_limit: 20,
    max_limit: 100,
};

/// Routes of this group.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(report))
        .routes(routes!(report_batch))
        .routes(routes!(set_status))
        .routes(routes!(nearby))
}

impl From<Invalid> for ApiError {
    fn from(invalid: Invalid) -> Self {
        ApiError::unprocessable(invalid.code, invalid.message)
    }
}

/// A driver acts only for itself.
const OUTSIDE_MARKETS: &str = "the position is outside every market courier serves";

/// A report whose position no active market contains.
fn outside_markets() -> ApiError {
    ApiError::unprocessable("outside_markets", OUTSIDE_MARKETS)
}

fn require_self(principal: &Principal, driver_id: i64) -> Result<(), ApiError> {
    principal.require_role(&[Role::Driver])?;
    if principal.subject != driver_id {
        return Err(ApiError::forbidden(
            "a driver may only report its own location",
        ));
    }
    Ok(())
}

#[derive(Debug, Serialize, ToSchema)]
struct ReportBody {
    driver_id: i64,
    result: Ingested,
}

/// A driver reports its own position. The report counts against the driver's `location` rate
/// limit in the same script call that applies it.
#[utoipa::path(
    post,
    path = "/drivers/{id}/location",
    operation_id = "report_location",
    tag = "drivers",
    params(("id" = i64, Path, description = "The driver's id (the token's subject)")),
    request_body = RawUpdate,
    responses((status = 200, description = "What happened to the report", body = ReportBody)),
    security(("bearer" = ["driver"])),
    extensions(("x-error-codes" = json!(["invalid_location", "outside_markets", "invalid_field", "recorded_at_in_future", "recorded_at_too_old"]))),
)]
async fn report(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<i64>,
    ApiJson(raw): ApiJson<RawUpdate>,
) -> Result<Response, ApiError> {
    require_self(&principal, id)?;
    // The driver exists: authentication checked the token's subject, which `require_self`
    // made sure is this driver.
    let update = raw.validate(id, now_ms())?;
    let limits = state.limiter.limits();
    let limit = limits.enabled.then(|| limits.of(RouteClass::Location));
    let mut response = match state.location.ingest_one(update, limit).await? {
        Admitted::Refused(verdict) => refused(RouteClass::Location, &verdict),
        // Not counted by the script: the rate-limit layer counts it, as any refusal.
        Admitted::Outside => return Err(outside_markets()),
        Admitted::Applied(result, verdict) => {
            let mut response = Json(ReportBody {
                driver_id: id,
                result,
            })
            .into_response();
            if let Some(verdict) = verdict {
                set_headers(response.headers_mut(), &verdict);
            }
            response
        }
    };
    response.extensions_mut().insert(Charged);
    Ok(response)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    /// Each a position report with its `driver_id`; each is checked on its own.
    #[schema(schema_with = batch_items)]
    updates: Vec<serde_json::Value>,
}

/// The schema of `updates`: reports with their driver's id.
fn batch_items() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    let mut item =
        serde_json::to_value(<RawUpdate as utoipa::PartialSchema>::schema()).unwrap_or_default();
    item["properties"]["driver_id"] = serde_json::json!({"type": "integer", "format": "int64"});
    if let Some(required) = item["required"].as_array_mut() {
        required.push("driver_id".into());
    }
    let array = serde_json::json!({
        "type": "array", "items": item, "minItems": 1, "maxItems": MAX_BATCH,
    });
    serde_json::from_value(array).unwrap_or_else(|_| utoipa::openapi::RefOr::T(Default::default()))
}

#[derive(Debug, Serialize, ToSchema)]
struct ItemError {
    code: &'static str,
    message: String,
}

#[derive(Debug, Serialize, ToSchema)]
struct ItemResult {
    index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    driver_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<Ingested>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ItemError>,
}

#[derive(Debug, Serialize, ToSchema)]
struct BatchResponse {
    accepted: usize,
    stale: usize,
    rejected: usize,
    results: Vec<ItemResult>,
}

fn item_error(
    index: usize,
    driver_id: Option<i64>,
    code: &'static str,
    message: String,
) -> ItemResult {
    ItemResult {
        index,
        driver_id,
        result: None,
        error: Some(ItemError { code, message }),
    }
}

/// Parses and validates one batch item; `Err` is its per-item result.
fn check_item(
    principal: &Principal,
    index: usize,
    value: serde_json::Value,
    now: i64,
) -> Result<LocationUpdate, ItemResult> {
    // An item is a report plus its `driver_id`; the report's own type refuses unknown fields.
    let body_error = |e: String| {
        item_error(
            index,
            None,
            "invalid_body",
            format!("the update does not have the expected fields and types: {e}"),
        )
    };
    let serde_json::Value::Object(mut fields) = value else {
        return Err(body_error("expected an object".to_owned()));
    };
    let id = fields
        .remove("driver_id")
        .and_then(|v| v.as_i64())
        .ok_or_else(|| body_error("driver_id must be an integer".to_owned()))?;
    let raw: RawUpdate = serde_json::from_value(serde_json::Value::Object(fields))
        .map_err(|e| body_error(e.to_string()))?;
    if principal.role == Role::Driver && principal.subject != id {
        return Err(item_error(
            index,
            Some(id),
            "forbidden",
            "a driver may only report its own location".to_owned(),
        ));
    }
    raw.validate(id, now)
        .map_err(|e| item_error(index, Some(id), e.code, e.message))
}

/// Each item is validated on its own; the drivers are checked in one query and the valid
/// reports applied in one pipelined round trip.
#[utoipa::path(
    post,
    path = "/drivers/locations:batch",
    operation_id = "report_locations",
    tag = "drivers",
    request_body = BatchBody,
    responses((status = 200, description = "Each report's outcome, in order", body = BatchResponse)),
    security(("bearer" = ["driver", "operator"])),
    extensions(("x-error-codes" = json!(["invalid_batch"]))),
)]
async fn report_batch(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<BatchBody>,
) -> Result<Json<BatchResponse>, ApiError> {
    principal.require_role(&[Role::Driver, Role::Operator])?;
    if body.updates.is_empty() || body.updates.len() > MAX_BATCH {
        return Err(ApiError::unprocessable(
            "invalid_batch",
            format!("a batch holds 1 to {MAX_BATCH} updates"),
        ));
    }
    let now = now_ms();
    let checked: Vec<Result<LocationUpdate, ItemResult>> = body
        .updates
        .into_iter()
        .enumerate()
        .map(|(index, value)| check_item(&principal, index, value, now))
        .collect();
    let ids: Vec<i64> = checked
        .iter()
        .filter_map(|c| c.as_ref().ok().map(|u| u.driver_id))
        .collect();
    let existing = state.subjects.existing_drivers(&ids).await?;
    let mut results: Vec<Option<ItemResult>> = Vec::with_capacity(checked.len());
    let mut valid = Vec::new();
    let mut valid_index = Vec::new();
    for (index, item) in checked.into_iter().enumerate() {
        match item {
            Ok(update) if existing.contains(&update.driver_id) => {
                valid_index.push(index);
                valid.push(update);
                results.push(None);
            }
            Ok(update) => results.push(Some(item_error(
                index,
                Some(update.driver_id),
                "not_found",
                format!("driver {} does not exist", update.driver_id),
            ))),
            Err(result) => results.push(Some(result)),
        }
    }
    let outcomes = state.location.ingest(&valid).await?;
    for ((index, update), outcome) in valid_index.into_iter().zip(&valid).zip(outcomes) {
        results[index] = Some(match outcome {
            Some(outcome) => ItemResult {
                index,
                driver_id: Some(update.driver_id),
                result: Some(outcome),
                error: None,
            },
            None => item_error(
                index,
                Some(update.driver_id),
                "outside_markets",
                OUTSIDE_MARKETS.to_owned(),
            ),
        });
    }
    let results: Vec<ItemResult> = results.into_iter().flatten().collect();
    let stale = results
        .iter()
        .filter(|r| r.result == Some(Ingested::Stale))
        .count();
    let rejected = results.iter().filter(|r| r.error.is_some()).count();
    Ok(Json(BatchResponse {
        accepted: results.len() - stale - rejected,
        stale,
        rejected,
        results,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct StatusBody {
    status: DriverStatus,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
enum DriverStatus {
    Online,
    Offline,
}

#[derive(Debug, Serialize, ToSchema)]
struct StatusResponse {
    driver_id: i64,
    status: DriverStatus,
    /// Whether matching can find the driver right now (online with a fresh position).
    searchable: bool,
}

/// A driver goes online or offline (operators may set any driver's).
#[utoipa::path(
    post,
    path = "/drivers/{id}/status",
    operation_id = "set_driver_status",
    tag = "drivers",
    params(("id" = i64, Path, description = "The driver's id")),
    request_body = StatusBody,
    responses((status = 200, description = "The driver's status now", body = StatusResponse)),
    security(("bearer" = ["driver", "operator"])),
    extensions(("x-error-codes" = json!(["not_found", "jobs_unavailable"]))),
)]
async fn set_status(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<i64>,
    ApiJson(body): ApiJson<StatusBody>,
) -> Result<Json<StatusResponse>, ApiError> {
    if principal.role != Role::Operator {
        require_self(&principal, id)?;
    }
    let online = body.status == DriverStatus::Online;
    let mut tx = crate::store::begin(&state.db).await?;
    // Going offline declines the driver's pending offers (each order moves on at once).
    // Offers first: they lock orders, and the lock order everywhere is order, then driver.
    let declined = if online {
        0
    } else {
        offers::decline_all_for_driver(&mut tx, DriverId(id)).await?
    };
    if !drivers::set_active(&mut tx, DriverId(id), online).await? {
        return Err(ApiError::not_found(format!("driver {id} does not exist")));
    }
    tx.commit().await?;
    let searchable = state.location.set_online(id, online).await?;
    tracing::info!(driver_id = id, online, declined, "driver status changed");
    Ok(Json(StatusResponse {
        driver_id: id,
        status: body.status,
        searchable,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct NearbyQuery {
    #[param(minimum = -85.05112878, maximum = 85.05112878)]
    lat: f64,
    #[param(minimum = -180, maximum = 180)]
    lon: f64,
    /// At most 20; 5 when absent.
    #[param(exclusive_minimum = 0, maximum = 20)]
    radius_km: Option<f64>,
    /// 1 to 100; 20 when absent.
    #[param(minimum = 1, maximum = 100)]
    limit: Option<usize>,
}

#[derive(Debug, Serialize, ToSchema)]
struct NearbyResponse {
    drivers: Vec<NearbyDriver>,
}

/// Available drivers near a point, nearest first.
#[utoipa::path(
    get,
    path = "/drivers/nearby",
    operation_id = "nearby_drivers",
    tag = "drivers",
    params(NearbyQuery),
    responses((status = 200, description = "The drivers", body = NearbyResponse)),
    security(("bearer" = ["operator"])),
    extensions(("x-error-codes" = json!(["invalid_coordinates", "invalid_radius", "invalid_limit", "invalid_location"]))),
)]
async fn nearby(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(q): ApiQuery<NearbyQuery>,
) -> Result<Json<NearbyResponse>, ApiError> {
    principal.require_role(&[Role::Operator])?;
    let search = NearbySearch::parse(q.lat, q.lon, q.radius_km, q.limit, BOUNDS)?;
    if !search.at.indexable() {
        return Err(ApiError::unprocessable("invalid_location", VALID_RANGE));
    }
    let drivers = state
        .location
        .find_nearby_drivers(search.at, search.radius_km, search.limit)
        .await?;
    Ok(Json(NearbyResponse { drivers }))
}
