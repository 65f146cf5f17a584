//! `/v1/orders/{id}/refunds`: operators refund a captured payment, in full or in part, exactly
//! once per `X-Idempotency-Key` ([`crate::workflows::refund`]); operators and the order's
//! customer list the refunds with the payment's standing. The refund is paid back by a job:
//! the request answers `202 Accepted` with the refund `pending`.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::AppState;
use crate::api::extract::{ApiJson, ApiPath};
use crate::api::orders::{REPLAYED_HEADER, idempotency_key, visible_order};
use crate::auth::{Principal, Role};
use crate::domain::OrderId;
use crate::error::ApiError;
use crate::text::Text;
use crate::workflows::refund::{self, MAX_REASON_CHARS, RefundAsk, RefundError, RefundView};

/// Routes of this group.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(create, list))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RefundBody {
    /// Cents to refund; all that is left when absent.
    #[schema(minimum = 1)]
    amount_cents: Option<i64>,
    reason: Text,
}

impl From<RefundError> for ApiError {
    fn from(error: RefundError) -> Self {
        let message = error.to_string();
        match error {
            RefundError::NoPayment(_) | RefundError::NotCaptured(_) => {
                ApiError::conflict("payment_not_captured", message)
            }
            RefundError::NothingLeft => ApiError::conflict("nothing_to_refund", message),
            RefundError::TooLarge { .. } => ApiError::unprocessable("refund_too_large", message),
            RefundError::InvalidAmount => ApiError::unprocessable("invalid_amount", message),
            RefundError::KeyReused => ApiError::unprocessable("idempotency_key_reused", message),
            RefundError::Effects(e) => e.into(),
            RefundError::Database(e) => e.into(),
        }
    }
}

/// Refunds the order's captured payment, in full or in part, exactly once per
/// `X-Idempotency-Key`; a job pays it back.
#[utoipa::path(
    post,
    path = "/orders/{id}/refunds",
    operation_id = "create_refund",
    tag = "payments",
    params(
        ("id" = i64, Path, description = "The order's id"),
        ("X-Idempotency-Key" = String, Header, description = "1 to 255 visible ASCII characters; the same key refunds once"),
    ),
    request_body = RefundBody,
    responses((status = 202, description = "The refund, pending (or the one the key asked before)", body = RefundView)),
    security(("bearer" = ["operator"])),
    extensions(("x-error-codes" = json!(["not_found", "missing_idempotency_key", "invalid_idempotency_key", "invalid_reason", "invalid_amount", "refund_too_large", "idempotency_key_reused", "payment_not_captured", "nothing_to_refund", "jobs_unavailable"]))),
)]
async fn create(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<i64>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<RefundBody>,
) -> Result<Response, ApiError> {
    principal.require_role(&[Role::Operator])?;
    let key = idempotency_key(&headers)?;
    let reason = body.reason.trim().to_owned();
    if reason.is_empty() || reason.chars().count() > MAX_REASON_CHARS {
        return Err(ApiError::unprocessable(
            "invalid_reason",
            format!("reason must be 1 to {MAX_REASON_CHARS} characters"),
        ));
    }
    visible_order(&state, principal, id).await?;
    let ask = RefundAsk {
        order_id: OrderId(id),
        amount_cents: body.amount_cents,
        reason,
        actor: principal.actor(),
        request_key: key,
    };
    let (refund, replayed) = refund::request(&state.db, &ask).await?;
    let mut response = (StatusCode::ACCEPTED, Json(refund)).into_response();
    if replayed {
        response
            .headers_mut()
            .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    }
    Ok(response)
}

#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
struct PaymentView {
    status: String,
    amount_cents: i64,
    refunded_cents: i64,
    currency: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = RefundList)]
struct ListBody {
    payment: Option<PaymentView>,
    refunds: Vec<RefundView>,
}

/// The order's payment and its refunds.
#[utoipa::path(
    get,
    path = "/orders/{id}/refunds",
    operation_id = "list_refunds",
    tag = "payments",
    params(("id" = i64, Path, description = "The order's id")),
    responses((status = 200, description = "The payment and its refunds", body = ListBody)),
    security(("bearer" = ["customer", "operator"])),
    extensions(("x-error-codes" = json!(["not_found"]))),
)]
async fn list(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<ListBody>, ApiError> {
    principal.require_role(&[Role::Operator, Role::Customer])?;
    visible_order(&state, principal, id).await?;
    let payment = sqlx::query_as(
        "SELECT status, amount_cents, refunded_cents, currency::text AS currency
         FROM payments WHERE order_id = $1",
    )
    .bind(id)
    .fetch_optional(&state.db)
    .await?;
    let refunds = refund::list(&state.db, OrderId(id)).await?;
    Ok(Json(ListBody { payment, refunds }))
}
