//! `/v1/users` and `/v1/me`: accounts of customers, restaurant owners, drivers and operators.
//!
//! Operators create and look up users; creating a driver user creates its driver profile in
//! the same transaction (the driver id is what a driver's token names). Any principal can ask
//! who it is: `/v1/me` answers every id it acts as.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::AppState;
use crate::api::extract::{ApiJson, ApiPath};
use crate::auth::{Principal, Role};
use crate::error::ApiError;
use crate::store::users::{self, Identity, NewDriver, NewUser, User};
use crate::text::Line;

const MAX_NAME_CHARS: usize = 200;
const MAX_EMAIL_CHARS: usize = 320;
const MAX_PHONE_CHARS: usize = 32;
const MAX_VEHICLE_CHARS: usize = 50;
/// Highest daily delivery goal a driver profile takes.
const MAX_DAILY_GOAL: i32 = 100;

/// Routes of this group.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_user))
        .routes(routes!(get_user))
        .routes(routes!(me))
}

/// Body of `POST /v1/users`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateUser {
    role: Role,
    name: Line,
    email: Line,
    phone: Option<Line>,
    /// Drivers only: e.g. `bicycle`, `scooter`, `car`.
    vehicle_type: Option<Line>,
    /// Drivers only: deliveries a day the driver aims for (matching's fairness factor);
    /// 10 when absent.
    #[schema(minimum = 0, maximum = 100)]
    daily_delivery_goal: Option<i32>,
}

/// Answer of `POST /v1/users`: the user, and the driver id of a driver.
#[derive(Debug, Serialize, ToSchema)]
struct CreatedUser {
    #[serde(flatten)]
    user: User,
    /// The driver id of a driver user.
    #[serde(skip_serializing_if = "Option::is_none")]
    driver_id: Option<i64>,
}

/// Creates a user; a driver user gets its driver profile in the same transaction.
#[utoipa::path(
    post,
    path = "/users",
    operation_id = "create_user",
    tag = "users",
    request_body = CreateUser,
    responses((status = 201, description = "The user", body = CreatedUser)),
    security(("bearer" = ["operator"])),
    extensions(("x-error-codes" = json!(["invalid_field", "email_taken", "driver_exists"]))),
)]
async fn create_user(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<CreateUser>,
) -> Result<(StatusCode, Json<CreatedUser>), ApiError> {
    principal.require_role(&[Role::Operator])?;
    let (new_user, new_driver) = validate(&body)?;
    let mut tx = crate::store::begin(&state.db).await?;
    let user = users::insert(&mut tx, &new_user).await?;
    let driver_id = match &new_driver {
        Some(driver) => Some(users::insert_driver(&mut tx, user.id, driver).await?),
        None => None,
    };
    tx.commit().await?;
    tracing::info!(user_id = user.id, role = %body.role, driver_id, "user created");
    Ok((StatusCode::CREATED, Json(CreatedUser { user, driver_id })))
}

/// One user.
#[utoipa::path(
    get,
    path = "/users/{id}",
    operation_id = "get_user",
    tag = "users",
    params(("id" = i64, Path, description = "The user's id")),
    responses((status = 200, description = "The user", body = User)),
    security(("bearer" = ["operator"])),
    extensions(("x-error-codes" = json!(["not_found"]))),
)]
async fn get_user(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<User>, ApiError> {
    principal.require_role(&[Role::Operator])?;
    users::find(&state.db, id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("user {id} does not exist")))
}

/// Body of `GET /v1/me`: the token's role and subject, and every id the caller acts as.
#[derive(Debug, Serialize, ToSchema)]
struct Me {
    role: Role,
    /// The id the token names: a user id for customers and operators, a driver id for
    /// drivers, a restaurant id for restaurants.
    subject: i64,
    #[serde(flatten)]
    ids: Identity,
}

/// Who the caller is: its role, its token's subject and every id it acts as.
#[utoipa::path(
    get,
    path = "/me",
    operation_id = "me",
    tag = "users",
    responses((status = 200, description = "The caller", body = Me)),
    security(("bearer" = ["customer", "restaurant", "driver", "operator"])),
)]
async fn me(State(state): State<AppState>, principal: Principal) -> Result<Json<Me>, ApiError> {
    let ids = users::identity(&state.db, principal.role, principal.subject).await?;
    Ok(Json(Me {
        role: principal.role,
        subject: principal.subject,
        ids,
    }))
}

/// Checks a user's fields (and a driver's profile); names the first bad field.
fn validate(body: &CreateUser) -> Result<(NewUser<'_>, Option<NewDriver<'_>>), ApiError> {
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(ApiError::unprocessable(
            "invalid_field",
            format!("name must be 1 to {MAX_NAME_CHARS} characters"),
        ));
    }
    let email = body.email.trim();
    if !is_plausible_email(email) {
        return Err(ApiError::unprocessable(
            "invalid_field",
            "email must look like name@domain and be at most 320 characters",
        ));
    }
    let phone = body
        .phone
        .as_deref()
        .map(str::trim)
        .filter(|p| !p.is_empty());
    if let Some(phone) = phone {
        let allowed = phone
            .chars()
            .all(|c| c.is_ascii_digit() || " +-().".contains(c));
        if !allowed || phone.chars().count() > MAX_PHONE_CHARS {
            return Err(ApiError::unprocessable(
                "invalid_field",
                format!("phone must be at most {MAX_PHONE_CHARS} digits, spaces and + - ( ) ."),
            ));
        }
    }
    let user = NewUser {
        role: body.role,
        name,
        email,
        phone,
    };
    Ok((user, validate_driver(body)?))
}

/// The driver profile of a driver user; driver fields on any other role are refused.
fn validate_driver(body: &CreateUser) -> Result<Option<NewDriver<'_>>, ApiError> {
    let vehicle_type = body
        .vehicle_type
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty());
    if body.role != Role::Driver {
        if vehicle_type.is_some() || body.daily_delivery_goal.is_some() {
            return Err(ApiError::unprocessable(
                "invalid_field",
                "vehicle_type and daily_delivery_goal are for drivers only",
            ));
        }
        return Ok(None);
    }
    if vehicle_type.is_some_and(|v| v.chars().count() > MAX_VEHICLE_CHARS) {
        return Err(ApiError::unprocessable(
            "invalid_field",
            format!("vehicle_type must be at most {MAX_VEHICLE_CHARS} characters"),
        ));
    }
    if let Some(goal) = body.daily_delivery_goal
        && !(0..=MAX_DAILY_GOAL).contains(&goal)
    {
        return Err(ApiError::unprocessable(
            "invalid_field",
            format!("daily_delivery_goal must be 0 to {MAX_DAILY_GOAL}"),
        ));
    }
    Ok(Some(NewDriver {
        vehicle_type,
        daily_delivery_goal: body.daily_delivery_goal,
    }))
}

fn is_plausible_email(email: &str) -> bool {
    if email.chars().count() > MAX_EMAIL_CHARS || email.chars().any(char::is_whitespace) {
        return false;
    }
    match email.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains('@')
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(name: &str, email: &str, phone: Option<&str>) -> CreateUser {
        serde_json::from_value(serde_json::json!({
            "role": "customer", "name": name, "email": email, "phone": phone,
        }))
        .expect("a well-formed body")
    }

    fn driver(vehicle: Option<&str>, goal: Option<i32>) -> CreateUser {
        serde_json::from_value(serde_json::json!({
            "role": "driver", "name": "Dee", "email": "dee@example.com",
            "vehicle_type": vehicle, "daily_delivery_goal": goal,
        }))
        .expect("a well-formed body")
    }

    #[test]
    fn valid_users_pass_trimmed() {
        let b = body("  Ada  ", " ada@example.com ", Some(" +1 (555) 010-2000 "));
        let (user, driver) = validate(&b).expect("valid");
        assert!(driver.is_none(), "a customer has no driver profile");
        assert_eq!(user.name, "Ada");
        assert_eq!(user.email, "ada@example.com");
        assert_eq!(user.phone, Some("+1 (555) 010-2000"));
    }

    #[test]
    fn a_driver_user_brings_its_profile_and_only_a_driver_does() {
        let b = driver(Some(" scooter "), Some(12));
        let (_, profile) = validate(&b).expect("valid");
        let profile = profile.expect("a driver profile");
        assert_eq!(profile.vehicle_type, Some("scooter"));
        assert_eq!(profile.daily_delivery_goal, Some(12));
        let bare = driver(None, None);
        assert!(validate(&bare).expect("valid").1.is_some());

        let mut customer = body("Ada", "a@b.co", None);
        customer.vehicle_type =
            Some(serde_json::from_value(serde_json::json!("car")).expect("line"));
        let err = validate(&customer).expect_err("driver fields on a customer");
        assert_eq!(err.code(), "invalid_field");
    }

    #[test]
    fn bad_fields_are_named() {
        for (b, fragment) in [
            (body(" ", "a@b.co", None), "name"),
            (body(&"n".repeat(201), "a@b.co", None), "name"),
            (body("Ada", "not-an-email", None), "email"),
            (body("Ada", "a@b", None), "email"),
            (body("Ada", "a b@c.de", None), "email"),
            (body("Ada", "a@b.co", Some("call me")), "phone"),
            (driver(Some(&"v".repeat(51)), None), "vehicle_type"),
            (driver(None, Some(101)), "daily_delivery_goal"),
            (driver(None, Some(-1)), "daily_delivery_goal"),
        ] {
            let err = validate(&b).expect_err("invalid");
            assert_eq!(err.code(), "invalid_field");
            assert!(
                err.to_string().contains(fragment),
                "{err} should name {fragment}"
            );
        }
    }
}
