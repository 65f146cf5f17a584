//! Cross-cutting request handling: request ids, access logs, the latency metric, the request
//! timeout, panic capture, and the guarantee that no error leaves in a non-JSON shape.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Response, header};
use axum::middleware::Next;
use axum::response::IntoResponse;

use crate::error::{ApiError, with_request_id};
use crate::telemetry::HTTP_REQUEST_DURATION;

/// The request-id header, read from requests and set on every response.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Longest client-supplied request id we honour; longer or odd ones are replaced.
const MAX_REQUEST_ID_LEN: usize = 128;

/// Settings of [`observe`].
#[derive(Debug, Clone)]
pub struct ObserveSettings {
    pub request_timeout: Duration,
}

/// The route template a request matched, carried from the router to [`observe`].
#[derive(Clone)]
struct RouteLabel(Arc<str>);

/// Route layer: records the matched route template (e.g. `/v1/users/{id}`) on the response,
/// so the latency metric is labelled by route and not by raw path.
pub async fn record_route(
    matched: Option<MatchedPath>,
    request: Request,
    next: Next,
) -> Response<Body> {
    let label = matched.map(|m| RouteLabel(Arc::from(m.as_str())));
    let mut response = next.run(request).await;
    if let Some(label) = label {
        response.extensions_mut().insert(label);
    }
    response
}

/// Outermost layer of every request.
pub async fn observe(
    State(settings): State<Arc<ObserveSettings>>,
    request: Request,
    next: Next,
) -> Response<Body> {
    let started = Instant::now();
    let request_id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_acceptable_request_id(v))
        .map(str::to_owned)
        .unwrap_or_else(new_request_id);
    let method = request.method().clone();
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        method = %method,
        path = %request.uri().path(),
        principal = tracing::field::Empty,
    );

    let handled = with_request_id(request_id.clone(), async move {
        let response = match tokio::time::timeout(settings.request_timeout, next.run(request)).await
        {
            Ok(response) => response,
            Err(_) => ApiError::unavailable("timeout", "the request took too long; retry shortly")
                .into_response(),
        };
        ensure_json_error(response)
    });
    let mut response = tracing::Instrument::instrument(handled, span.clone()).await;

    // Labels without per-request allocations where the values are known: the route is the
    // router's shared string, common methods and statuses are static.
    let route: metrics::SharedString = response
        .extensions()
        .get::<RouteLabel>()
        .map_or(metrics::SharedString::const_str("unmatched"), |l| {
            metrics::SharedString::from_shared(l.0.clone())
        });
    let status = response.status();
    let elapsed = started.elapsed();
    metrics::histogram!(
        HTTP_REQUEST_DURATION,
        "method" => method_label(&method),
        "route" => route.clone(),
        "status_code" => status_label(status),
    )
    .record(elapsed.as_secs_f64());
    let route: &str = &route;
    span.in_scope(|| {
        let latency_ms = elapsed.as_secs_f64() * 1000.0;
        if status.is_server_error() {
            tracing::error!(
                status = status.as_u16(),
                route,
                latency_ms,
                "request finished"
            );
        } else if status.is_client_error() {
            tracing::info!(
                status = status.as_u16(),
                route,
                latency_ms,
                "request finished"
            );
        } else {
            tracing::debug!(
                status = status.as_u16(),
                route,
                latency_ms,
                "request finished"
            );
        }
    });
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

/// Request ids are echoed into headers and logs: accept only short, visible ASCII.
/// A fresh request id, UUID-shaped: a random half drawn once per process and a counter, so
/// ids are unique across processes without a random-number syscall per request.
fn new_request_id() -> String {
    static PROCESS: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let process = *PROCESS.get_or_init(|| uuid::Uuid::new_v4().as_u64_pair().0);
    uuid::Uuid::from_u64_pair(process, NEXT.fetch_add(1, Ordering::Relaxed)).to_string()
}

fn method_label(method: &axum::http::Method) -> metrics::SharedString {
    use axum::http::Method;
    let known = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::HEAD,
        Method::OPTIONS,
    ];
    const NAMES: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];
    // Anyone can send any method name: label values come from this closed set, or every
    // made-up method would be a new series kept for the life of the process.
    let name = known
        .iter()
        .position(|m| m == method)
        .map_or("other", |i| NAMES[i]);
    metrics::SharedString::const_str(name)
}

fn status_label(status: axum::http::StatusCode) -> metrics::SharedString {
    const COMMON: [(u16, &str); 16] = [
        (200, "200"),
        (201, "201"),
        (204, "204"),
        (400, "400"),
        (401, "401"),
        (403, "403"),
        (404, "404"),
        (405, "405"),
        (409, "409"),
        (413, "413"),
        (415, "415"),
        (422, "422"),
        (429, "429"),
        (500, "500"),
        (502, "502"),
        (503, "503"),
    ];
    // Statuses are ours to choose, but a closed set keeps the series bounded whatever a
    // layer answers: the common ones by code, the rest by class.
    let code = status.as_u16();
    let name = COMMON
        .iter()
        .find(|(c, _)| *c == code)
        .map_or(status_class(code), |(_, name)| name);
    metrics::SharedString::const_str(name)
}

fn status_class(code: u16) -> &'static str {
    match code {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

fn is_acceptable_request_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_REQUEST_ID_LEN && id.bytes().all(|b| b.is_ascii_graphic())
}

/// Error responses that did not come from [`ApiError`] (a rejection we did not wrap, a layer's
/// own answer) are rewritten into our JSON shape, with a code derived from the status.
fn ensure_json_error(response: Response<Body>) -> Response<Body> {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (code, message) = match status.as_u16() {
        400 => ("bad_request", "the request is malformed"),
        401 => ("unauthorized", "authentication is required"),
        403 => ("forbidden", "this action is not allowed"),
        404 => ("not_found", "no such resource"),
        405 => (
            "method_not_allowed",
            "this method is not allowed on this route",
        ),
        408 => ("timeout", "the request took too long"),
        413 => ("payload_too_large", "the request body is too large"),
        415 => (
            "unsupported_media_type",
            "the request body has an unsupported content type",
        ),
        422 => ("invalid_body", "the request body is invalid"),
        429 => ("rate_limited", "too many requests; slow down"),
        s if s >= 500 => (
            "internal_error",
            "an internal error occurred; it has been logged",
        ),
        _ => ("bad_request", "the request was refused"),
    };
    let mut rewritten = ApiError::new(status, code, message).into_response();
    for (name, value) in response.headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            rewritten.headers_mut().insert(name.clone(), value.clone());
        }
    }
    rewritten
}

/// Answer for a handler that panicked: a logged 500 in our JSON shape.
pub fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response<Body> {
    let detail = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    ApiError::internal(format!("handler panicked: {detail}")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn generated_request_ids_are_unique_uuids() {
        let (a, b) = (new_request_id(), new_request_id());
        assert_ne!(a, b);
        assert!(uuid::Uuid::parse_str(&a).is_ok());
        assert_eq!(a[..18], b[..18], "one process prefix");
    }

    #[test]
    fn labels_of_common_methods_and_statuses_are_static() {
        use axum::http::{Method, StatusCode};
        assert_eq!(&*method_label(&Method::POST), "POST");
        assert_eq!(&*status_label(StatusCode::CONFLICT), "409");
        assert_eq!(&*status_label(StatusCode::IM_A_TEAPOT), "4xx");
        assert_eq!(&*status_label(StatusCode::GATEWAY_TIMEOUT), "5xx");
        assert_eq!(&*status_label(StatusCode::SWITCHING_PROTOCOLS), "1xx");
    }

    #[test]
    fn made_up_methods_share_one_label() {
        use axum::http::Method;
        for name in ["Q1", "Q2", "BREW", "PROPFIND"] {
            let method = Method::from_bytes(name.as_bytes()).expect("a token");
            assert_eq!(&*method_label(&method), "other");
        }
    }

    #[test]
    fn request_ids_are_checked() {
        assert!(is_acceptable_request_id("abc-123"));
        assert!(!is_acceptable_request_id(""));
        assert!(!is_acceptable_request_id("has space"));
        assert!(!is_acceptable_request_id(&"a".repeat(129)));
        assert!(!is_acceptable_request_id("naïve"));
    }

    #[test]
    fn plain_error_responses_become_json() {
        let plain = Response::builder()
            .status(StatusCode::METHOD_NOT_ALLOWED)
            .header(header::ALLOW, "GET")
            .body(Body::from("Method Not Allowed"))
            .expect("valid response");
        let rewritten = ensure_json_error(plain);
        assert_eq!(rewritten.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(
            rewritten
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some("application/json")
        );
        assert_eq!(
            rewritten
                .headers()
                .get(header::ALLOW)
                .and_then(|v| v.to_str().ok()),
            Some("GET")
        );
    }

    #[test]
    fn successes_pass_untouched() {
        let ok = Response::builder()
            .status(StatusCode::OK)
            .body(Body::from("fine"))
            .expect("valid response");
        let same = ensure_json_error(ok);
        assert!(same.headers().get(header::CONTENT_TYPE).is_none());
    }
}
