//! Driver offers: a driver's pending offers ([`crate::dispatch::offers`]), and accepting or
//! declining one ([`crate::workflows::offers`]).

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::AppState;
use crate::api::extract::ApiPath;
use crate::auth::{Principal, Role};
use crate::dispatch::offers::{self as offer_views, OfferView};
use crate::domain::{DriverId, OfferId, OfferStatus};
use crate::error::ApiError;
use crate::store::orders::{self as order_store, OrderView};
use crate::workflows::offers::{self, OfferError};

/// Routes of this group.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(pending))
        .routes(routes!(accept))
        .routes(routes!(decline))
}

impl From<OfferError> for ApiError {
    fn from(error: OfferError) -> Self {
        match error {
            // Another driver's offer is answered as one that does not exist: a driver must
            // not learn which offer ids are live.
            OfferError::NotFound | OfferError::NotYours => ApiError::not_found("no such offer"),
            OfferError::Expired | OfferError::NotPending(OfferStatus::Expired) => {
                ApiError::conflict("offer_expired", "the offer has expired")
            }
            OfferError::NotPending(OfferStatus::Accepted) => {
                ApiError::conflict("offer_already_accepted", "the offer was already accepted")
            }
            OfferError::NotPending(OfferStatus::Declined) => {
                ApiError::conflict("offer_declined", "the offer was declined")
            }
            OfferError::NotPending(OfferStatus::Cancelled | OfferStatus::Pending) => {
                ApiError::conflict(
                    "offer_cancelled",
                    "the offer was withdrawn (order cancelled)",
                )
            }
            OfferError::AtCapacity => ApiError::conflict(
                "driver_at_capacity",
                format!(
                    "you already carry {} orders; deliver one first",
                    crate::location::MAX_ACTIVE_ORDERS
                ),
            ),
            OfferError::CannotBatch(reason) => ApiError::conflict(
                "cannot_batch",
                format!("this order does not batch with the one you carry: {reason}"),
            ),
            OfferError::OrderUnavailable => {
                ApiError::conflict("order_unavailable", "the order no longer needs a driver")
            }
            OfferError::Effects(e) => e.into(),
            OfferError::Database(e) => e.into(),
        }
    }
}

/// Only drivers answer offers, and only their own.
fn require_driver(principal: &Principal) -> Result<DriverId, ApiError> {
    principal.require_role(&[Role::Driver])?;
    Ok(DriverId(principal.subject))
}

#[derive(Debug, Serialize, ToSchema)]
struct PendingBody {
    offers: Vec<OfferView>,
}

/// A driver's pending offers.
#[utoipa::path(
    get,
    path = "/drivers/{id}/offers",
    operation_id = "pending_offers",
    tag = "offers",
    params(("id" = i64, Path, description = "The driver's id")),
    responses((status = 200, description = "The pending offers", body = PendingBody)),
    security(("bearer" = ["driver", "operator"])),
)]
async fn pending(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<PendingBody>, ApiError> {
    principal.require_role(&[Role::Driver, Role::Operator])?;
    if principal.role == Role::Driver && principal.subject != id {
        return Err(ApiError::forbidden("a driver may only see its own offers"));
    }
    // Nearly every poll finds nothing: Valkey says so without a Postgres read. If Valkey
    // cannot answer, Postgres does.
    if let Ok(false) = state.location.may_hold_offer(id).await {
        return Ok(Json(PendingBody { offers: Vec::new() }));
    }
    let offers = offer_views::pending_for_driver(&state.db, DriverId(id)).await?;
    Ok(Json(PendingBody { offers }))
}

#[derive(Debug, Serialize, ToSchema)]
struct AnswerBody {
    offer: OfferView,
    /// The order, after an accept.
    #[serde(skip_serializing_if = "Option::is_none")]
    order: Option<OrderView>,
}

async fn answer_body(
    state: &AppState,
    offer_id: OfferId,
    with_order: bool,
) -> Result<Json<AnswerBody>, ApiError> {
    let mut conn = state.db.acquire().await?;
    let offer = offer_views::fetch(&mut conn, offer_id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such offer"))?;
    let order = if with_order {
        order_store::fetch_view(&mut conn, offer.order_id).await?
    } else {
        None
    };
    Ok(Json(AnswerBody { offer, order }))
}

/// The driver takes the offer: the order is assigned to it.
#[utoipa::path(
    post,
    path = "/offers/{id}/accept",
    operation_id = "accept_offer",
    tag = "offers",
    params(("id" = i64, Path, description = "The offer's id")),
    responses((status = 200, description = "The offer, accepted, and the order", body = AnswerBody)),
    security(("bearer" = ["driver"])),
    extensions(("x-error-codes" = json!(["not_found", "offer_expired", "offer_already_accepted", "offer_declined", "offer_cancelled", "driver_at_capacity", "cannot_batch", "order_unavailable", "jobs_unavailable"]))),
)]
async fn accept(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<AnswerBody>, ApiError> {
    let driver_id = require_driver(&principal)?;
    let offer_id = OfferId(id);
    offers::accept(
        &state.db,
        &state.location,
        &state.routing,
        offer_id,
        driver_id,
    )
    .await?;
    answer_body(&state, offer_id, true).await
}

/// The driver turns the offer down: matching moves on.
#[utoipa::path(
    post,
    path = "/offers/{id}/decline",
    operation_id = "decline_offer",
    tag = "offers",
    params(("id" = i64, Path, description = "The offer's id")),
    responses((status = 200, description = "The offer, declined", body = AnswerBody)),
    security(("bearer" = ["driver"])),
    extensions(("x-error-codes" = json!(["not_found", "offer_expired", "offer_already_accepted", "offer_declined", "offer_cancelled", "order_unavailable", "jobs_unavailable"]))),
)]
async fn decline(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<AnswerBody>, ApiError> {
    let driver_id = require_driver(&principal)?;
    let offer_id = OfferId(id);
    offers::decline(&state.db, offer_id, driver_id).await?;
    answer_body(&state, offer_id, false).await
}
