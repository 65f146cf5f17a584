//! `/v1/drivers`: location reports (one, or a batch of up to 1,000), online/offline status (going
//! offline declines the driver's pending offers), and
//! the operators' nearby-available-drivers view. The work is in [`crate::location`].

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::api::AppState;
use crate::api::extract::{ApiJson, ApiPath, ApiQuery, NearbySearch, SearchBounds};
use crate::auth::{Principal, Role};
use crate::domain::DriverId;
use crate::error::ApiError;
use crate::location::update::{Invalid, LocationUpdate, RawUpdate, VALID_RANGE};
use crate::location::{Ingested, NearbyDriver, now_ms};
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
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/drivers/{id}/location", post(report))
        .route("/drivers/locations:batch", post(report_batch))
        .route("/drivers/{id}/status", post(set_status))
        .route("/drivers/nearby", get(nearby))
}

impl From<Invalid> for ApiError {
    fn from(invalid: Invalid) -> Self {
        ApiError::unprocessable(invalid.code, invalid.message)
    }
}

/// A driver acts only for itself.
fn require_self(principal: &Principal, driver_id: i64) -> Result<(), ApiError> {
    principal.require_role(&[Role::Driver])?;
    if principal.subject != driver_id {
        return Err(ApiError::forbidden(
            "a driver may only report its own location",
        ));
    }
    Ok(())
}

#[derive(Debug, Serialize)]
struct ReportBody {
    driver_id: i64,
    result: Ingested,
}

async fn report(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<i64>,
    ApiJson(raw): ApiJson<RawUpdate>,
) -> Result<Json<ReportBody>, ApiError> {
    require_self(&principal, id)?;
    // The driver exists: authentication checked the token's subject, which `require_self`
    // made sure is this driver.
    let update = raw.validate(id, now_ms())?;
    let result = state.location.ingest_one(update).await?;
    Ok(Json(ReportBody {
        driver_id: id,
        result,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    updates: Vec<serde_json::Value>,
}

#[derive(Debug, Serialize)]
struct ItemError {
    code: &'static str,
    message: String,
}

#[derive(Debug, Serialize)]
struct ItemResult {
    index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    driver_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<Ingested>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ItemError>,
}

#[derive(Debug, Serialize)]
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
        results[index] = Some(ItemResult {
            index,
            driver_id: Some(update.driver_id),
            result: Some(outcome),
            error: None,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusBody {
    status: DriverStatus,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum DriverStatus {
    Online,
    Offline,
}

#[derive(Debug, Serialize)]
struct StatusResponse {
    driver_id: i64,
    status: DriverStatus,
    /// Whether matching can find the driver right now (online with a fresh position).
    searchable: bool,
}

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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NearbyQuery {
    lat: f64,
    lon: f64,
    radius_km: Option<f64>,
    limit: Option<usize>,
}

#[derive(Debug, Serialize)]
struct NearbyResponse {
    drivers: Vec<NearbyDriver>,
}

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
