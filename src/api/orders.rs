//! `/v1/orders`: placing orders (customers, with `X-Idempotency-Key`), reading them (each
//! principal sees its own), and the workflow's actions, each applied by the transition
//! executor. Also the order lists of one party, `/v1/restaurants/{id}/orders` and
//! `/v1/drivers/{id}/orders`, which page through the same view.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::AppState;
use crate::api::extract::{ApiJson, ApiPath, ApiQuery, ClientMeta};
use crate::auth::{Principal, Role};
use crate::domain::OrderStatus;
use crate::domain::{Action, Actor, DriverId, OrderId, RestaurantId, UserId};
use crate::error::ApiError;
use crate::eta::Eta;
use crate::eta::order::{EtaError, order_eta};
use crate::geo::Point;
use crate::store::orders::{self, ListFilter, OrderView};
use crate::store::{drivers, restaurants};
use crate::text::{Line, Text};
use crate::workflows::effects::EffectError;
use crate::workflows::machine::{Parties, Refusal};
use crate::workflows::place::{
    self, CartLine, DeliveryAddress, MAX_IDEMPOTENCY_KEY_LEN, MAX_LINES, MAX_QUANTITY, NewOrder,
    PlaceError,
};
use crate::workflows::prep;
use crate::workflows::transition::{self, TransitionError, TransitionRequest};

/// The idempotency header of `POST /v1/orders`.
pub const IDEMPOTENCY_HEADER: &str = "x-idempotency-key";
/// Set on a response replayed for a repeated idempotency key.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

const MAX_TEXT_CHARS: usize = 200;
const MAX_INSTRUCTIONS_CHARS: usize = 500;
const MAX_REASON_CHARS: usize = 500;
const DEFAULT_LIST_LIMIT: i64 = 20;
const MAX_LIST_LIMIT: i64 = 100;

/// Routes of this group.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(show))
        .routes(routes!(confirm))
        .routes(routes!(start_preparing))
        .routes(routes!(ready))
        .routes(routes!(pickup))
        .routes(routes!(deliver))
        .routes(routes!(cancel))
        .routes(routes!(estimate_prep))
        .routes(routes!(list_for_restaurant))
        .routes(routes!(list_for_driver))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    restaurant_id: i64,
    /// 1 to 50 lines.
    #[schema(min_items = 1, max_items = 50)]
    items: Vec<ItemBody>,
    delivery_address: AddressBody,
    /// The payment provider's token of the customer's payment method (`pm_…`).
    #[schema(pattern = "^pm_[A-Za-z0-9_]+$", max_length = 255)]
    payment_method: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = OrderLine)]
struct ItemBody {
    menu_item_id: i64,
    #[schema(minimum = 1, maximum = 50)]
    quantity: i64,
    special_instructions: Option<Text>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct AddressBody {
    #[schema(minimum = -90, maximum = 90)]
    lat: f64,
    #[schema(minimum = -180, maximum = 180)]
    lon: f64,
    line1: Line,
    line2: Option<Line>,
    city: Option<Line>,
    postal_code: Option<Line>,
    instructions: Option<Text>,
}

fn optional_text(
    value: Option<impl std::ops::Deref<Target = str>>,
    max: usize,
    field: &str,
) -> Result<Option<String>, ApiError> {
    let value = value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    if value.as_ref().is_some_and(|v| v.chars().count() > max) {
        return Err(ApiError::unprocessable(
            "invalid_field",
            format!("{field} must be at most {max} characters"),
        ));
    }
    Ok(value)
}

/// Parses the body once into a [`NewOrder`], naming the first problem.
fn validate(body: CreateBody) -> Result<NewOrder, ApiError> {
    if body.restaurant_id <= 0 {
        return Err(ApiError::unprocessable(
            "unknown_restaurant",
            format!("restaurant {} does not exist", body.restaurant_id),
        ));
    }
    if body.items.is_empty() {
        return Err(ApiError::unprocessable(
            "empty_cart",
            "an order needs at least one item",
        ));
    }
    if body.items.len() > MAX_LINES {
        return Err(ApiError::unprocessable(
            "too_many_items",
            format!("an order has at most {MAX_LINES} lines"),
        ));
    }
    let mut items = Vec::with_capacity(body.items.len());
    for item in body.items {
        let quantity = i32::try_from(item.quantity)
            .ok()
            .filter(|q| (1..=MAX_QUANTITY).contains(q))
            .ok_or_else(|| {
                ApiError::unprocessable(
                    "invalid_quantity",
                    format!(
                        "quantity must be 1 to {MAX_QUANTITY}, got {}",
                        item.quantity
                    ),
                )
            })?;
        items.push(CartLine {
            menu_item_id: item.menu_item_id,
            quantity,
            special_instructions: optional_text(
                item.special_instructions,
                MAX_INSTRUCTIONS_CHARS,
                "special_instructions",
            )?,
        });
    }
    let a = body.delivery_address;
    let point = Point::new(a.lat, a.lon).ok_or_else(|| {
        ApiError::unprocessable(
            "invalid_coordinates",
            "delivery_address.lat must be in [-90, 90] and lon in [-180, 180]",
        )
    })?;
    let line1 = a.line1.trim().to_owned();
    if line1.is_empty() || line1.chars().count() > MAX_TEXT_CHARS {
        return Err(ApiError::unprocessable(
            "invalid_address",
            format!("delivery_address.line1 must be 1 to {MAX_TEXT_CHARS} characters"),
        ));
    }
    let payment_method = body.payment_method.trim().to_owned();
    if !crate::payments::valid_payment_method(&payment_method) {
        return Err(ApiError::unprocessable(
            "invalid_payment_method",
            "payment_method must be the payment provider's token of the customer's payment method (`pm_…`, letters, digits and underscores, at most 255)",
        ));
    }
    Ok(NewOrder {
        restaurant_id: body.restaurant_id,
        payment_method,
        items,
        delivery_address: DeliveryAddress {
            lat: point.lat,
            lon: point.lon,
            line1,
            line2: optional_text(a.line2, MAX_TEXT_CHARS, "delivery_address.line2")?,
            city: optional_text(a.city, MAX_TEXT_CHARS, "delivery_address.city")?,
            postal_code: optional_text(a.postal_code, 20, "delivery_address.postal_code")?,
            instructions: optional_text(
                a.instructions,
                MAX_INSTRUCTIONS_CHARS,
                "delivery_address.instructions",
            )?,
        },
    })
}

/// The idempotency key: present, 1 to 255 visible ASCII characters.
pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<String, ApiError> {
    let raw = headers.get(IDEMPOTENCY_HEADER).ok_or_else(|| {
        ApiError::bad_request(
            "missing_idempotency_key",
            "this request requires an X-Idempotency-Key header",
        )
    })?;
    raw.to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY_LEN && k.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_idempotency_key",
                format!("X-Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters"),
            )
        })
}

impl From<PlaceError> for ApiError {
    fn from(error: PlaceError) -> Self {
        let message = error.to_string();
        match error {
            PlaceError::UnknownRestaurant(_) => {
                ApiError::unprocessable("unknown_restaurant", message)
            }
            PlaceError::RestaurantClosed(_) => ApiError::conflict("restaurant_closed", message),
            PlaceError::UnknownItem(_) => ApiError::unprocessable("unknown_menu_item", message),
            PlaceError::ItemOfAnotherRestaurant(_) => {
                ApiError::unprocessable("item_not_on_menu", message)
            }
            PlaceError::ItemUnavailable(_) => ApiError::conflict("item_unavailable", message),
            PlaceError::OutOfDeliveryRange { .. } => {
                ApiError::unprocessable("out_of_delivery_range", message)
            }
            PlaceError::TotalTooLarge { .. } => ApiError::unprocessable("total_too_large", message),
            PlaceError::IdempotencyKeyReused => {
                ApiError::unprocessable("idempotency_key_reused", message)
            }
            PlaceError::Effects(e) => e.into(),
            PlaceError::Database(e) => e.into(),
        }
    }
}

impl From<EffectError> for ApiError {
    fn from(error: EffectError) -> Self {
        match error {
            EffectError::Enqueue(e) => ApiError::unavailable(
                "jobs_unavailable",
                "the order workflow is unavailable; nothing was changed; retry shortly",
            )
            .with_internal(e),
            EffectError::Database(e) => e.into(),
        }
    }
}

/// Places an order, exactly once per `X-Idempotency-Key`: a repeat answers the first order
/// (with `Idempotent-Replayed: true`). The order starts `PAYMENT_PENDING` while the payment is
/// authorised, then goes to the restaurant.
#[utoipa::path(
    post,
    path = "/orders",
    operation_id = "create_order",
    tag = "orders",
    params(("X-Idempotency-Key" = String, Header, description = "1 to 255 visible ASCII characters; the same key places the order once")),
    request_body = CreateBody,
    responses((status = 201, description = "The order (or the one the key placed before)", body = OrderView)),
    security(("bearer" = ["customer"])),
    extensions(("x-error-codes" = json!(["missing_idempotency_key", "invalid_idempotency_key", "unknown_restaurant", "empty_cart", "too_many_items", "invalid_quantity", "invalid_coordinates", "invalid_address", "invalid_field", "invalid_payment_method", "unknown_menu_item", "item_not_on_menu", "out_of_delivery_range", "total_too_large", "idempotency_key_reused", "restaurant_closed", "item_unavailable", "jobs_unavailable", "rate_limiter_unavailable"]))),
)]
async fn create(
    State(state): State<AppState>,
    principal: Principal,
    meta: ClientMeta,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateBody>,
) -> Result<Response, ApiError> {
    principal.require_role(&[Role::Customer])?;
    let key = idempotency_key(&headers)?;
    let order = validate(body)?;
    let placed = place::place(
        &state.db,
        state.order_limits,
        UserId(principal.subject),
        &key,
        &order,
        &meta.0,
    )
    .await?;
    let mut response = (StatusCode::CREATED, Json(placed.body)).into_response();
    if placed.replayed {
        response
            .headers_mut()
            .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    }
    Ok(response)
}

impl From<TransitionError> for ApiError {
    fn from(error: TransitionError) -> Self {
        match error {
            TransitionError::NotFound | TransitionError::Refused(Refusal::NotVisible) => {
                ApiError::not_found("no such order")
            }
            TransitionError::Refused(refusal @ Refusal::Forbidden { .. }) => {
                ApiError::forbidden(refusal.to_string())
            }
            TransitionError::Refused(Refusal::InvalidTransition {
                status,
                action,
                allowed,
            }) => {
                let allowed: Vec<&str> = allowed.iter().map(|a| a.as_str()).collect();
                let allowed = if allowed.is_empty() {
                    "none".to_owned()
                } else {
                    allowed.join(", ")
                };
                ApiError::conflict(
                    "invalid_transition",
                    format!(
                        "cannot {action} an order that is {status}; actions allowed to you now: {allowed}"
                    ),
                )
            }
            TransitionError::Refused(refusal @ Refusal::PaymentNotSettled) => {
                ApiError::conflict("payment_not_settled", refusal.to_string())
            }
            TransitionError::Conflict => ApiError::conflict(
                "conflict",
                "the order was changed by someone else; reload it and retry",
            ),
            TransitionError::Effects(e) => e.into(),
            TransitionError::Database(e) => e.into(),
        }
    }
}

/// Optional body of a transition: why (cancellations); with a confirmation, the kitchen's
/// estimate of the food's preparation in minutes (0 < minutes ≤ 180, fractions allowed; the
/// restaurant's usual prep time when absent).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct TransitionBody {
    reason: Option<Text>,
    prep_minutes: Option<f64>,
}

/// A prep estimate in the accepted range, or 422 `invalid_field`.
fn prep_minutes(raw: f64) -> Result<f64, ApiError> {
    if prep::valid_minutes(raw) {
        Ok(raw)
    } else {
        Err(ApiError::unprocessable(
            "invalid_field",
            format!(
                "prep_minutes must be more than 0 and at most {}",
                prep::MAX_PREP_MINUTES
            ),
        ))
    }
}

/// `If-Match: <version>`: the version the client saw.
fn expected_version(headers: &HeaderMap) -> Result<Option<i32>, ApiError> {
    headers
        .get("if-match")
        .map(|v| {
            v.to_str()
                .ok()
                .map(|s| s.trim().trim_matches('"'))
                .and_then(|s| s.parse::<i32>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_if_match",
                        "If-Match must be the order's version number",
                    )
                })
        })
        .transpose()
}

/// Applies `action` as `principal` and answers with the order as it now is.
async fn apply(
    state: &AppState,
    principal: Principal,
    meta: ClientMeta,
    headers: &HeaderMap,
    id: i64,
    action: Action,
    body: &Bytes,
) -> Result<Json<OrderView>, ApiError> {
    let body: TransitionBody = if body.iter().all(u8::is_ascii_whitespace) {
        TransitionBody::default()
    } else {
        serde_json::from_slice(body).map_err(|e| {
            if e.is_syntax() || e.is_eof() {
                ApiError::bad_request("malformed_json", format!("the body is not valid JSON: {e}"))
            } else {
                ApiError::unprocessable(
                    "invalid_body",
                    format!("the body does not have the expected fields and types: {e}"),
                )
            }
        })?
    };
    let reason = optional_text(body.reason, MAX_REASON_CHARS, "reason")?;
    let prep_minutes = match body.prep_minutes {
        Some(_) if action != Action::Confirm => {
            return Err(ApiError::unprocessable(
                "invalid_field",
                "prep_minutes is given only when confirming",
            ));
        }
        raw => raw.map(prep_minutes).transpose()?,
    };
    let request = TransitionRequest {
        order_id: OrderId(id),
        action,
        actor: principal.actor(),
        meta: meta.0,
        reason,
        expected_version: expected_version(headers)?,
        only_from: None,
        prep_minutes,
    };
    transition::execute(&state.db, &state.location, &request).await?;
    let mut conn = state.db.acquire().await?;
    let view = orders::fetch_view(&mut conn, OrderId(id))
        .await?
        .ok_or_else(|| ApiError::not_found("no such order"))?;
    Ok(Json(view))
}

/// A handler applying one action, with its description: `If-Match` and the optional
/// `reason` body of every transition, the roles that may take it.
macro_rules! transition_handler {
    ($(#[$doc:meta])* $name:ident, $action:expr, $path:literal, $operation:literal, [$($role:literal),+]) => {
        $(#[$doc])*
        #[utoipa::path(
            post,
            path = $path,
            operation_id = $operation,
            tag = "orders",
            params(
                ("id" = i64, Path, description = "The order's id"),
                ("If-Match" = Option<i32>, Header, description = "The order's version the client saw; 409 `conflict` if it changed"),
            ),
            request_body(content = Option<TransitionBody>, description = "Optional: `reason`, why (kept with a cancellation); `prep_minutes`, only when confirming: the kitchen's estimate (0 < minutes ≤ 180, default the restaurant's prep time)"),
            responses((status = 200, description = "The order as it now is", body = OrderView)),
            security(("bearer" = [$($role),+])),
            extensions(("x-error-codes" = json!(["not_found", "invalid_transition", "conflict", "invalid_if_match", "invalid_field", "jobs_unavailable"]))),
        )]
        async fn $name(
            State(state): State<AppState>,
            principal: Principal,
            meta: ClientMeta,
            headers: HeaderMap,
            ApiPath(id): ApiPath<i64>,
            body: Bytes,
        ) -> Result<Json<OrderView>, ApiError> {
            apply(&state, principal, meta, &headers, id, $action, &body).await
        }
    };
}

transition_handler!(
    /// The restaurant accepts the order.
    confirm, Action::Confirm, "/orders/{id}/confirm", "confirm_order", ["restaurant"]
);
transition_handler!(
    /// The restaurant starts cooking.
    start_preparing, Action::StartPreparing, "/orders/{id}/start-preparing", "start_preparing_order",
    ["restaurant"]
);
transition_handler!(
    /// The food is ready for pickup.
    ready, Action::MarkReady, "/orders/{id}/ready", "order_ready", ["restaurant"]
);
transition_handler!(
    /// The assigned driver has the food.
    pickup, Action::PickUp, "/orders/{id}/pickup", "pick_up_order", ["driver"]
);
transition_handler!(
    /// The assigned driver handed the food over.
    deliver, Action::Deliver, "/orders/{id}/deliver", "deliver_order", ["driver"]
);
transition_handler!(
    /// Cancels the order (who may, and until when, depends on its state).
    cancel, Action::Cancel, "/orders/{id}/cancel", "cancel_order", ["customer", "operator"]
);

/// A new estimate of the food's preparation.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct PrepBody {
    /// Minutes from now until the food is ready (more than 0, at most 180; fractions allowed).
    prep_minutes: f64,
}

/// The kitchen's new estimate: the food will be ready `prep_minutes` from now. Allowed while
/// the order is CONFIRMED or PREPARING; the ETA and dispatch follow it.
#[utoipa::path(
    post,
    path = "/orders/{id}/prep-estimate",
    operation_id = "estimate_prep",
    tag = "orders",
    params(("id" = i64, Path, description = "The order's id")),
    request_body = PrepBody,
    responses((status = 200, description = "The order as it now is", body = OrderView)),
    security(("bearer" = ["restaurant", "operator"])),
    extensions(("x-error-codes" = json!(["not_found", "invalid_state", "invalid_field"]))),
)]
async fn estimate_prep(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<i64>,
    ApiJson(body): ApiJson<PrepBody>,
) -> Result<Json<OrderView>, ApiError> {
    principal.require_role(&[Role::Restaurant, Role::Operator])?;
    let minutes = prep_minutes(body.prep_minutes)?;
    prep::update(&state.db, OrderId(id), principal.actor(), minutes)
        .await
        .map_err(|e| match e {
            prep::PrepError::NotFound => ApiError::not_found("no such order"),
            refused @ prep::PrepError::NotCooking(_) => {
                ApiError::conflict("invalid_state", refused.to_string())
            }
            prep::PrepError::Effects(e) => e.into(),
            prep::PrepError::Database(e) => e.into(),
        })?;
    let mut conn = state.db.acquire().await?;
    let view = orders::fetch_view(&mut conn, OrderId(id))
        .await?
        .ok_or_else(|| ApiError::not_found("no such order"))?;
    Ok(Json(view))
}

/// An order with its live ETA.
#[derive(Debug, Serialize, ToSchema)]
struct ShowBody {
    #[serde(flatten)]
    order: OrderView,
    /// Absent for completed and cancelled orders.
    #[serde(skip_serializing_if = "Option::is_none")]
    eta: Option<Eta>,
}

/// Order `id` if `principal` may see it: its parties and operators. Anyone else gets the 404
/// of an order that does not exist.
pub(crate) async fn visible_order(
    state: &AppState,
    principal: Principal,
    id: i64,
) -> Result<OrderView, ApiError> {
    let mut conn = state.db.acquire().await?;
    let view = orders::fetch_view(&mut conn, OrderId(id))
        .await?
        .ok_or_else(|| ApiError::not_found("no such order"))?;
    let parties = Parties {
        customer_id: view.customer_id,
        restaurant_id: view.restaurant_id,
        driver_id: view.driver_id,
        placed: view.placed_at.is_some(),
    };
    if !parties.visible_to(principal.actor()) {
        return Err(ApiError::not_found("no such order"));
    }
    Ok(view)
}

/// An order with its live ETA, to its customer, its restaurant, its driver and operators.
#[utoipa::path(
    get,
    path = "/orders/{id}",
    operation_id = "get_order",
    tag = "orders",
    params(("id" = i64, Path, description = "The order's id")),
    responses((status = 200, description = "The order", body = ShowBody)),
    security(("bearer" = ["customer", "restaurant", "driver", "operator"])),
    extensions(("x-error-codes" = json!(["not_found"]))),
)]
async fn show(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<ShowBody>, ApiError> {
    let view = visible_order(&state, principal, id).await?;
    let eta = order_eta(
        &state.db,
        &state.location,
        &state.routing,
        id,
        state.clock.now(),
    )
    .await
    .map_err(|e| match e {
        EtaError::NotFound => ApiError::not_found("no such order"),
        EtaError::Database(e) => e.into(),
    })?;
    Ok(Json(ShowBody { order: view, eta }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// An order state (any case), `active` or `all`.
    status: Option<String>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
    /// 1 to 100; 20 when absent.
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = OrderPage)]
struct ListBody {
    orders: Vec<OrderView>,
    /// Pass as `cursor` to get the next page; absent on the last page. Opaque: clients pass
    /// it back as it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// `GET /v1/orders`: the caller's own orders (every order for operators), every state by
/// default.
#[utoipa::path(
    get,
    path = "/orders",
    operation_id = "list_orders",
    tag = "orders",
    params(ListQuery),
    responses((status = 200, description = "A page of orders, newest first", body = ListBody)),
    security(("bearer" = ["customer", "restaurant", "driver", "operator"])),
    extensions(("x-error-codes" = json!(["invalid_status", "invalid_cursor", "invalid_limit"]))),
)]
async fn list(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<ListBody>, ApiError> {
    list_page(&state, principal.actor(), &q, StatusChoice::All).await
}

/// `GET /v1/restaurants/{id}/orders`: a restaurant's incoming and past orders (that restaurant
/// or an operator), every state by default.
#[utoipa::path(
    get,
    path = "/restaurants/{id}/orders",
    operation_id = "list_restaurant_orders",
    tag = "orders",
    params(("id" = i64, Path, description = "The restaurant's id"), ListQuery),
    responses((status = 200, description = "A page of orders, newest first", body = ListBody)),
    security(("bearer" = ["restaurant", "operator"])),
    extensions(("x-error-codes" = json!(["not_found", "invalid_status", "invalid_cursor", "invalid_limit"]))),
)]
async fn list_for_restaurant(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<ListBody>, ApiError> {
    principal.require_role(&[Role::Restaurant, Role::Operator])?;
    if principal.role == Role::Restaurant && principal.subject != id {
        return Err(ApiError::forbidden(
            "a restaurant may only list its own orders",
        ));
    }
    if !restaurants::exists(&state.db, id).await? {
        return Err(ApiError::not_found(format!(
            "restaurant {id} does not exist"
        )));
    }
    list_page(
        &state,
        Actor::Restaurant(RestaurantId(id)),
        &q,
        StatusChoice::All,
    )
    .await
}

/// `GET /v1/drivers/{id}/orders`: the orders assigned to a driver (that driver or an
/// operator), only the active ones by default.
#[utoipa::path(
    get,
    path = "/drivers/{id}/orders",
    operation_id = "list_driver_orders",
    tag = "orders",
    params(("id" = i64, Path, description = "The driver's id"), ListQuery),
    responses((status = 200, description = "A page of orders, newest first", body = ListBody)),
    security(("bearer" = ["driver", "operator"])),
    extensions(("x-error-codes" = json!(["not_found", "invalid_status", "invalid_cursor", "invalid_limit"]))),
)]
async fn list_for_driver(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<ListBody>, ApiError> {
    principal.require_role(&[Role::Driver, Role::Operator])?;
    if principal.role == Role::Driver && principal.subject != id {
        return Err(ApiError::forbidden("a driver may only list its own orders"));
    }
    if !drivers::exists(&state.db, DriverId(id)).await? {
        return Err(ApiError::not_found(format!("driver {id} does not exist")));
    }
    list_page(
        &state,
        Actor::Driver(DriverId(id)),
        &q,
        StatusChoice::Active,
    )
    .await
}

/// What a listing's `status` parameter asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StatusChoice {
    /// `all`: every state.
    All,
    /// `active`: orders neither delivered nor ended ([`OrderStatus::is_active`]).
    Active,
    /// One state, by its name in any case.
    One(OrderStatus),
}

impl StatusChoice {
    /// Parses the `status` parameter; `default` when it is absent.
    fn parse(raw: Option<&str>, default: StatusChoice) -> Result<StatusChoice, ApiError> {
        let Some(raw) = raw.map(str::trim) else {
            return Ok(default);
        };
        if raw.eq_ignore_ascii_case("all") {
            return Ok(StatusChoice::All);
        }
        if raw.eq_ignore_ascii_case("active") {
            return Ok(StatusChoice::Active);
        }
        raw.to_ascii_uppercase()
            .parse::<OrderStatus>()
            .map(StatusChoice::One)
            .map_err(|e| {
                ApiError::unprocessable(
                    "invalid_status",
                    format!("{e}: give an order state, `active` or `all`"),
                )
            })
    }

    /// The states listed, `None` for all.
    fn statuses(self) -> Option<Vec<&'static str>> {
        match self {
            StatusChoice::All => None,
            StatusChoice::Active => Some(
                OrderStatus::ALL
                    .iter()
                    .copied()
                    .filter(|s| s.is_active())
                    .map(OrderStatus::as_str)
                    .collect(),
            ),
            StatusChoice::One(status) => Some(vec![status.as_str()]),
        }
    }
}

/// One page of the orders `scope` sees, newest first.
async fn list_page(
    state: &AppState,
    scope: Actor,
    q: &ListQuery,
    default: StatusChoice,
) -> Result<Json<ListBody>, ApiError> {
    let statuses = StatusChoice::parse(q.status.as_deref(), default)?.statuses();
    let limit = q.limit.unwrap_or(DEFAULT_LIST_LIMIT);
    if !(1..=MAX_LIST_LIMIT).contains(&limit) {
        return Err(ApiError::unprocessable(
            "invalid_limit",
            format!("limit must be 1 to {MAX_LIST_LIMIT}"),
        ));
    }
    let before_id = q
        .cursor
        .as_deref()
        .map(|c| {
            c.parse::<i64>().ok().filter(|id| *id > 0).ok_or_else(|| {
                ApiError::unprocessable(
                    "invalid_cursor",
                    "cursor must be a next_cursor this listing returned",
                )
            })
        })
        .transpose()?;
    let filter = ListFilter {
        statuses,
        before_id,
        limit,
    };
    let mut conn = state.db.acquire().await?;
    let orders = orders::list(&mut conn, scope, &filter).await?;
    let next_cursor = (orders.len() == usize::try_from(limit).unwrap_or(usize::MAX))
        .then(|| orders.last().map(|o| o.id.get().to_string()))
        .flatten();
    Ok(Json(ListBody {
        orders,
        next_cursor,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_parameter_takes_a_state_active_or_all_in_any_case() {
        let parse = |raw| StatusChoice::parse(raw, StatusChoice::Active);
        assert_eq!(parse(None).expect("default"), StatusChoice::Active);
        assert_eq!(parse(Some("ALL")).expect("all"), StatusChoice::All);
        assert_eq!(
            parse(Some(" active ")).expect("active"),
            StatusChoice::Active
        );
        assert_eq!(
            parse(Some("ready_for_pickup")).expect("a state"),
            StatusChoice::One(OrderStatus::ReadyForPickup)
        );
        let err = parse(Some("shipped")).expect_err("not a state");
        assert_eq!(err.code(), "invalid_status");
        assert_eq!(StatusChoice::All.statuses(), None);
        assert_eq!(
            StatusChoice::One(OrderStatus::Placed).statuses(),
            Some(vec!["PLACED"])
        );
        let active = StatusChoice::Active.statuses().expect("a list");
        assert!(active.contains(&"PICKED_UP") && !active.contains(&"DELIVERED"));
    }
}
