//! Extractors that reject bad input with our JSON error shape instead of axum's plain text.
//!
//! Handlers take [`ApiJson`], [`ApiPath`] and [`ApiQuery`] in place of axum's `Json`, `Path`
//! and `Query`: same parsing, but every rejection is an [`ApiError`] with a stable code. The
//! field checks that several create and patch bodies share live here too.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::text::forbidden_char;

/// A JSON request body.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::JsonDataError(e) => ApiError::unprocessable(
            "invalid_body",
            format!(
                "the body does not have the expected fields and types: {}",
                e.body_text()
            ),
        ),
        JsonRejection::JsonSyntaxError(e) => ApiError::bad_request(
            "malformed_json",
            format!("the body is not valid JSON: {}", e.body_text()),
        ),
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be JSON with `Content-Type: application/json`",
        ),
        JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the request body is larger than this server accepts",
            )
        }
        other => ApiError::bad_request("unreadable_body", "the request body could not be read")
            .with_internal(other.body_text()),
    }
}

/// Path parameters.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(ApiPath(value)),
            Err(rejection) => Err(path_rejection(rejection)),
        }
    }
}

fn path_rejection(rejection: PathRejection) -> ApiError {
    match rejection {
        PathRejection::FailedToDeserializePathParams(e) => ApiError::bad_request(
            "invalid_path",
            format!("a path parameter is invalid: {}", e.body_text()),
        ),
        other => ApiError::internal(other.body_text()),
    }
}

/// Query-string parameters.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(query) = parts.uri.query() {
            check_query_text(query)?;
        }
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(query_rejection(rejection)),
        }
    }
}

/// Every query value is a single line: a decoded control character (`%00` and the like) in
/// a name or a value is refused here, for every route at once (see [`crate::text`]).
fn check_query_text(query: &str) -> Result<(), ApiError> {
    let found = url::form_urlencoded::parse(query.as_bytes()).find_map(|(name, value)| {
        forbidden_char(&name, false)
            .or_else(|| forbidden_char(&value, false))
            .map(|c| (name.into_owned(), c))
    });
    match found {
        None => Ok(()),
        Some((name, c)) => Err(ApiError::unprocessable(
            "invalid_query",
            format!(
                "query parameter `{}` must not contain control characters (found U+{:04X})",
                name.chars().filter(|c| !c.is_control()).collect::<String>(),
                u32::from(c)
            ),
        )),
    }
}

fn query_rejection(rejection: QueryRejection) -> ApiError {
    ApiError::bad_request(
        "invalid_query",
        format!("the query string is invalid: {}", rejection.body_text()),
    )
}

/// Where a request came from (peer address and user agent), for the audit log.
#[derive(Debug, Clone)]
pub struct ClientMeta(pub crate::workflows::RequestMeta);

impl<S: Send + Sync> FromRequestParts<S> for ClientMeta {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let ip = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|info| info.0.ip().to_string());
        let user_agent = parts
            .headers
            .get(axum::http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.chars().take(300).collect());
        Ok(ClientMeta(crate::workflows::RequestMeta { ip, user_agent }))
    }
}

/// Bounds of a "near here" search.
#[derive(Debug, Clone, Copy)]
pub struct SearchBounds {
    pub default_radius_km: f64,
    pub max_radius_km: f64,
    pub default_limit: usize,
    pub max_limit: usize,
}

/// A validated "near here" search: a point, a radius and a result limit.
#[derive(Debug, Clone, Copy)]
pub struct NearbySearch {
    pub at: crate::geo::Point,
    pub radius_km: f64,
    pub limit: usize,
}

impl NearbySearch {
    /// Checks the query's values against `bounds`, naming the first bad one.
    pub fn parse(
        lat: f64,
        lon: f64,
        radius_km: Option<f64>,
        limit: Option<usize>,
        bounds: SearchBounds,
    ) -> Result<Self, ApiError> {
        let at = crate::geo::Point::new(lat, lon).ok_or_else(|| {
            ApiError::unprocessable(
                "invalid_coordinates",
                "lat must be in [-90, 90] and lon in [-180, 180]",
            )
        })?;
        let radius_km = radius_km.unwrap_or(bounds.default_radius_km);
        if !(radius_km.is_finite() && radius_km > 0.0 && radius_km <= bounds.max_radius_km) {
            return Err(ApiError::unprocessable(
                "invalid_radius",
                format!(
                    "radius_km must be greater than 0 and at most {}",
                    bounds.max_radius_km
                ),
            ));
        }
        let limit = limit.unwrap_or(bounds.default_limit);
        if !(1..=bounds.max_limit).contains(&limit) {
            return Err(ApiError::unprocessable(
                "invalid_limit",
                format!("limit must be 1 to {}", bounds.max_limit),
            ));
        }
        Ok(Self {
            at,
            radius_km,
            limit,
        })
    }
}

/// For `#[serde(deserialize_with = …)]` on an `Option<Option<T>>` field with
/// `#[serde(default)]`: tells an absent field (`None`) from an explicit `null` (`Some(None)`),
/// as `PATCH` bodies need.
pub fn double_option<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    <Option<T> as serde::Deserialize>::deserialize(deserializer).map(Some)
}

/// A 422 `invalid_field` naming what is wrong.
pub fn invalid_field(message: impl Into<std::borrow::Cow<'static, str>>) -> ApiError {
    ApiError::unprocessable("invalid_field", message)
}

/// A name, if given: trimmed, 1 to `max` characters.
pub fn name_field(value: Option<&str>, max: usize) -> Result<Option<String>, ApiError> {
    match value.map(str::trim) {
        Some(name) if name.is_empty() || name.chars().count() > max => {
            Err(invalid_field(format!("name must be 1 to {max} characters")))
        }
        other => Ok(other.map(str::to_owned)),
    }
}

/// An optional text field of a create or patch body: absent stays `None`, `null` or blank
/// clears it (`Some(None)`), anything else is trimmed and at most `max` characters.
pub fn optional_text(
    value: Option<Option<&str>>,
    max: usize,
    field: &str,
) -> Result<Option<Option<String>>, ApiError> {
    match value {
        Some(Some(text)) => {
            let text = text.trim();
            if text.chars().count() > max {
                return Err(invalid_field(format!(
                    "{field} must be at most {max} characters"
                )));
            }
            Ok(Some((!text.is_empty()).then(|| text.to_owned())))
        }
        Some(None) => Ok(Some(None)),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_with_control_characters_are_refused() {
        assert!(check_query_text("lat=1&lon=2&cuisine=thai+food").is_ok());
        for query in ["cuisine=%00", "cuisine=a%0Ab", "na%00me=x", "status=%1B"] {
            let error = check_query_text(query).expect_err(query);
            assert_eq!(error.code(), "invalid_query");
            assert_eq!(error.status(), StatusCode::UNPROCESSABLE_ENTITY);
        }
    }

    #[test]
    fn names_and_optional_texts_are_trimmed_bounded_and_clearable() {
        assert_eq!(
            name_field(Some("  Ada "), 5).expect("valid"),
            Some("Ada".to_owned())
        );
        assert_eq!(name_field(None, 5).expect("absent"), None);
        for bad in ["   ", "abcdef"] {
            let err = name_field(Some(bad), 5).expect_err("invalid");
            assert_eq!(err.code(), "invalid_field");
        }
        assert_eq!(optional_text(None, 3, "x").expect("absent"), None);
        assert_eq!(optional_text(Some(None), 3, "x").expect("null"), Some(None));
        assert_eq!(
            optional_text(Some(Some("  ")), 3, "x").expect("blank"),
            Some(None)
        );
        assert_eq!(
            optional_text(Some(Some(" ab ")), 3, "x").expect("text"),
            Some(Some("ab".to_owned()))
        );
        let err = optional_text(Some(Some("abcd")), 3, "note").expect_err("long");
        assert!(err.to_string().contains("note"), "{err}");
    }
}
