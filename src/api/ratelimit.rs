//! Rate limits at the API's edge ([`crate::ratelimit`] keeps the budgets in Valkey):
//!
//! - [`per_principal`], inside authentication: each request counts against its principal's
//!   budget for the route's class (`location`, `order_create`, `read`, …); operators get a
//!   multiple of every limit.
//! - [`per_ip`], outside authentication: a request refused for its token counts against its
//!   client IP's `unauthenticated` budget; once that is spent the answer is 429, not 401.
//!
//! A driver's single location report is counted by the location ingest script itself (no round
//! trip of its own): its handler marks the response [`Charged`], and [`per_principal`] counts
//! here only the reports refused before they reached the script (a bad body, another driver's
//! id), against the same bucket.
//!
//! A limited response carries `RateLimit-Limit` (the burst), `RateLimit-Remaining` and
//! `RateLimit-Reset` (seconds until the budget is whole again); a refusal is 429
//! `rate_limited` with `Retry-After`. When Valkey cannot answer, reads and location reports go
//! through unlimited (fail open) and order creation is refused with 503 (fail closed); see
//! [`RouteClass::fails_open`].

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::api::AppState;
use crate::auth::{Principal, Role};
use crate::error::ApiError;
use crate::ratelimit::{RouteClass, Verdict};

/// The class of a request by `method` to the route template `route`.
fn class_of(method: &Method, route: &str) -> RouteClass {
    match (method, route) {
        (&Method::POST, "/v1/drivers/{id}/location") => RouteClass::Location,
        (&Method::POST, "/v1/drivers/locations:batch") => RouteClass::LocationBatch,
        (&Method::POST, "/v1/orders") => RouteClass::OrderCreate,
        (&Method::GET, r) if r.ends_with("/stream") || r.ends_with("/events") => RouteClass::Stream,
        (&Method::GET | &Method::HEAD, _) => RouteClass::Read,
        _ => RouteClass::Write,
    }
}

/// Whole seconds, rounded up (a client told 0 would retry at once).
fn seconds(duration: std::time::Duration) -> u64 {
    duration
        .as_millis()
        .div_ceil(1000)
        .try_into()
        .unwrap_or(u64::MAX)
}

/// Marks a response whose request was already counted against its limit (by the location
/// ingest script).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Charged;

/// The `RateLimit-*` headers of `verdict`.
pub(crate) fn set_headers(headers: &mut HeaderMap, verdict: &Verdict) {
    let pairs = [
        ("ratelimit-limit", u64::from(verdict.limit.burst)),
        ("ratelimit-remaining", verdict.remaining),
        ("ratelimit-reset", seconds(verdict.reset)),
    ];
    for (name, value) in pairs {
        headers.insert(name, HeaderValue::from(value));
    }
}

/// The 429 of a refused request.
pub(crate) fn refused(class: RouteClass, verdict: &Verdict) -> Response {
    metrics::counter!("rate_limited_total", "class" => class.as_str()).increment(1);
    let retry = seconds(verdict.retry_after).max(1);
    let mut response = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!(
            "too many {} requests; retry in {retry} s",
            class.as_str().replace('_', " ")
        ),
    )
    .into_response();
    set_headers(response.headers_mut(), verdict);
    response
        .headers_mut()
        .insert("retry-after", HeaderValue::from(retry));
    response
}

/// Checks one request of `class` against the bucket at `key`; `Err` is the response to send
/// instead.
async fn check(
    state: &AppState,
    class: RouteClass,
    key: String,
    operator: bool,
) -> Result<Option<Verdict>, Response> {
    let limits = state.limiter.limits();
    let mut limit = limits.of(class);
    if operator {
        limit = limit.scaled(limits.operator_factor);
    }
    match state.limiter.check(key, limit).await {
        Ok(verdict) if verdict.allowed => Ok(Some(verdict)),
        Ok(verdict) => Err(refused(class, &verdict)),
        Err(error) => {
            metrics::counter!("rate_limit_errors_total", "class" => class.as_str()).increment(1);
            if class.fails_open() {
                tracing::warn!(class = class.as_str(), error = %error, "rate limiter unavailable: request let through");
                Ok(None)
            } else {
                let mut response = ApiError::unavailable(
                    "rate_limiter_unavailable",
                    "this request cannot be admitted right now; nothing was changed; retry shortly",
                )
                .with_internal(error)
                .into_response();
                response
                    .headers_mut()
                    .insert("retry-after", HeaderValue::from(1u64));
                Err(response)
            }
        }
    }
}

/// Route layer inside authentication: counts the request against its principal's budget.
pub async fn per_principal(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let (Some(principal), Some(route)) = (
        request.extensions().get::<Principal>().copied(),
        request.extensions().get::<MatchedPath>().cloned(),
    ) else {
        return next.run(request).await;
    };
    if !state.limiter.limits().enabled {
        return next.run(request).await;
    }
    let class = class_of(request.method(), route.as_str());
    let who = format!("{}:{}", principal.role, principal.subject);
    let operator = principal.role == Role::Operator;
    if class == RouteClass::Location {
        let response = next.run(request).await;
        if response.extensions().get::<Charged>().is_some() {
            return response;
        }
        // A driver's reports are counted in its market's bucket, which the ingest script
        // shares; a driver in no market yet (or when that cannot be read) in the limiter's.
        let market_bucket = if principal.role == Role::Driver {
            state
                .location
                .rate_limit_key(principal.subject)
                .await
                .ok()
                .flatten()
        } else {
            None
        };
        let key = market_bucket.unwrap_or_else(|| state.limiter.key(class, &who));
        return match check(&state, class, key, operator).await {
            Ok(verdict) => with_headers(response, verdict),
            Err(refusal) => refusal,
        };
    }
    match check(&state, class, state.limiter.key(class, &who), operator).await {
        Ok(verdict) => with_headers(next.run(request).await, verdict),
        Err(response) => response,
    }
}

fn with_headers(mut response: Response, verdict: Option<Verdict>) -> Response {
    if let Some(verdict) = verdict {
        set_headers(response.headers_mut(), &verdict);
    }
    response
}

/// Layer outside authentication: a request refused for its token (401) counts against its
/// client IP's `unauthenticated` budget, and is answered 429 once that is spent.
pub async fn per_ip(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let ip = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip());
    let response = next.run(request).await;
    let (true, Some(ip)) = (
        response.status() == StatusCode::UNAUTHORIZED && state.limiter.limits().enabled,
        ip,
    ) else {
        return response;
    };
    let key = state
        .limiter
        .key(RouteClass::Unauthenticated, &format!("ip:{ip}"));
    match check(&state, RouteClass::Unauthenticated, key, false).await {
        Ok(_) => response,
        Err(refusal) => refusal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn routes_fall_in_their_classes() {
        let cases = [
            (
                Method::POST,
                "/v1/drivers/{id}/location",
                RouteClass::Location,
            ),
            (
                Method::POST,
                "/v1/drivers/locations:batch",
                RouteClass::LocationBatch,
            ),
            (Method::POST, "/v1/orders", RouteClass::OrderCreate),
            (Method::GET, "/v1/orders", RouteClass::Read),
            (Method::GET, "/v1/orders/{id}/events", RouteClass::Stream),
            (
                Method::GET,
                "/v1/restaurants/{id}/orders/stream",
                RouteClass::Stream,
            ),
            (Method::POST, "/v1/orders/{id}/confirm", RouteClass::Write),
            (Method::PATCH, "/v1/restaurants/{id}", RouteClass::Write),
        ];
        for (method, route, class) in cases {
            assert_eq!(class_of(&method, route), class, "{method} {route}");
        }
    }

    #[test]
    fn waits_round_up_to_whole_seconds() {
        assert_eq!(seconds(Duration::ZERO), 0);
        assert_eq!(seconds(Duration::from_millis(1)), 1);
        assert_eq!(seconds(Duration::from_millis(1000)), 1);
        assert_eq!(seconds(Duration::from_millis(1001)), 2);
    }
}
