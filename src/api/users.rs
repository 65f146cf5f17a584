//! `/v1/users` and `/v1/me`: accounts of customers, restaurant owners, drivers and operators.
//!
//! Operators create and look up users; any principal can ask who it is.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::api::AppState;
use crate::api::extract::{ApiJson, ApiPath};
use crate::auth::{Principal, Role};
use crate::error::ApiError;
use crate::store::users::{self, NewUser, User};
use crate::text::Line;

const MAX_NAME_CHARS: usize = 200;
const MAX_EMAIL_CHARS: usize = 320;
const MAX_PHONE_CHARS: usize = 32;

/// Routes of this group.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/users", post(create_user))
        .route("/users/{id}", get(get_user))
        .route("/me", get(me))
}

/// Body of `POST /v1/users`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateUser {
    role: Role,
    name: Line,
    email: Line,
    phone: Option<Line>,
}

async fn create_user(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<CreateUser>,
) -> Result<(StatusCode, Json<User>), ApiError> {
    principal.require_role(&[Role::Operator])?;
    let new_user = validate(&body)?;
    let user = users::insert(&state.db, &new_user).await?;
    tracing::info!(user_id = user.id, role = %body.role, "user created");
    Ok((StatusCode::CREATED, Json(user)))
}

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

/// Body of `GET /v1/me`.
#[derive(Debug, Serialize)]
struct Me {
    role: Role,
    subject: i64,
}

async fn me(principal: Principal) -> Json<Me> {
    Json(Me {
        role: principal.role,
        subject: principal.subject,
    })
}

/// Checks a user's fields; names the first bad field.
fn validate(body: &CreateUser) -> Result<NewUser<'_>, ApiError> {
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
    Ok(NewUser {
        role: body.role,
        name,
        email,
        phone,
    })
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

    #[test]
    fn valid_users_pass_trimmed() {
        let b = body("  Ada  ", " ada@example.com ", Some(" +1 (555) 010-2000 "));
        let user = validate(&b).expect("valid");
        assert_eq!(user.name, "Ada");
        assert_eq!(user.email, "ada@example.com");
        assert_eq!(user.phone, Some("+1 (555) 010-2000"));
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
