//! The one error type of the HTTP API.
//!
//! Every failure a client sees is an [`ApiError`]: an HTTP status, a stable machine-readable
//! `code`, and a `message` meant for the client. What went wrong inside (a database error, a
//! timeout's cause) goes in a separate internal detail that is logged with the request id and
//! never returned. The body is always
//! `{"error":{"code":"…","message":"…"},"request_id":"…"}`.

use std::borrow::Cow;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

tokio::task_local! {
    static REQUEST_ID: String;
}

/// Runs `work` as the handling of request `id`: errors it answers carry that id.
pub async fn with_request_id<F: Future>(id: String, work: F) -> F::Output {
    REQUEST_ID.scope(id, work).await
}

/// The id of the request being handled on this task, if any.
pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// An error answered to an API client.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: Cow<'static, str>,
    internal: Option<String>,
}

impl ApiError {
    /// An error with the given status, stable code and client-facing message.
    pub fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            internal: None,
        }
    }

    /// Attaches a detail that is logged but never sent to the client.
    #[must_use]
    pub fn with_internal(mut self, detail: impl std::fmt::Display) -> Self {
        self.internal = Some(detail.to_string());
        self
    }

    /// 400: the request is malformed.
    pub fn bad_request(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 401: no valid credentials.
    pub fn unauthorized(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }

    /// 403: valid credentials that do not allow this.
    pub fn forbidden(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404: no such resource.
    pub fn not_found(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 409: the request conflicts with the current state.
    pub fn conflict(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    /// 422: well-formed but invalid content.
    pub fn unprocessable(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    /// 503: a dependency is unavailable; the client may retry.
    pub fn unavailable(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }

    /// 500: a bug or an unexpected failure. The client learns nothing of the cause.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "an internal error occurred; it has been logged",
        )
        .with_internal(detail)
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The stable error code.
    pub fn code(&self) -> &'static str {
        self.code
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

/// The JSON body of every error response.
#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    pub error: ErrorDetail<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// The `error` member of [`ErrorBody`].
#[derive(Debug, Serialize)]
pub struct ErrorDetail<'a> {
    pub code: &'a str,
    pub message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let request_id = current_request_id();
        let internal = self.internal.as_deref().unwrap_or("");
        if self.status.is_server_error() {
            tracing::error!(
                status = self.status.as_u16(),
                code = self.code,
                internal,
                "request failed"
            );
        } else if !internal.is_empty() {
            tracing::info!(
                status = self.status.as_u16(),
                code = self.code,
                internal,
                "request rejected"
            );
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: &self.message,
            },
            request_id,
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Maps the names of database constraints to the domain errors they stand for. A violation of
/// a constraint not listed here is a bug in our validation and answers 500.
fn constraint_error(constraint: &str) -> Option<ApiError> {
    let error = match constraint {
        "users_email_key" => {
            ApiError::conflict("email_taken", "a user with this email already exists")
        }
        "drivers_user_id_key" => ApiError::conflict(
            "driver_exists",
            "this user is already registered as a driver",
        ),
        "markets_slug_key" => {
            ApiError::conflict("market_exists", "a market with this slug already exists")
        }
        _ => return None,
    };
    Some(error)
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::RowNotFound => ApiError::not_found("no such resource"),
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) => ApiError::unavailable(
                "database_unavailable",
                "the database is unavailable; retry shortly",
            )
            .with_internal(&error),
            sqlx::Error::Database(db) => db
                .constraint()
                .and_then(constraint_error)
                .map(|e| e.with_internal(&error))
                .unwrap_or_else(|| ApiError::internal(&error)),
            _ => ApiError::internal(&error),
        }
    }
}

impl From<redis::RedisError> for ApiError {
    fn from(error: redis::RedisError) -> Self {
        ApiError::unavailable(
            "cache_unavailable",
            "a backing service is unavailable; retry shortly",
        )
        .with_internal(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_hide_their_detail() {
        let err = ApiError::internal("connection refused to 10.0.0.5:5432");
        assert_eq!(err.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!err.to_string().contains("10.0.0.5"));
    }

    #[test]
    fn known_constraints_map_to_domain_errors() {
        let err = constraint_error("users_email_key").expect("mapped");
        assert_eq!(err.status(), StatusCode::CONFLICT);
        assert_eq!(err.code(), "email_taken");
        assert!(constraint_error("some_other_constraint").is_none());
    }
}
