//! The HTTP API: one router per resource group, merged here into one [`Router`].
//!
//! Each group's router is an [`OpenApiRouter`]: a route is added with the annotation that
//! describes it, so the served routes and the document at `/openapi.json` ([`openapi`]) come
//! from one list, [`described_routes`].
//!
//! Layers, outermost first: [`middleware::observe`] (request id, access log, latency metric,
//! request timeout, and a guarantee that every error body has our JSON shape), panic capture,
//! and the body size limit. Everything under `/v1` additionally sits behind
//! [`crate::auth::require_auth`].

pub mod drivers;
pub mod extract;
pub mod health;
pub mod live;
pub mod markets;
pub mod middleware;
pub mod offers;
pub mod onboarding;
pub mod openapi;
pub mod orders;
pub mod payments;
pub mod ratelimit;
pub mod restaurants;
pub mod users;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{StatusCode, Uri};
use sqlx::PgPool;
use tower_http::catch_panic::CatchPanicLayer;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::subjects::Subjects;
use crate::auth::{self, Authenticator, TokenKeys};
use crate::clock::Clock;
use crate::error::ApiError;
use crate::eta::routing::Routing;
use crate::live::Hub;
use crate::location::LocationService;
use crate::ratelimit::RateLimiter;
use crate::valkey::Valkey;
use crate::workflows::place::OrderLimits;

/// HTTP server settings, validated.
#[derive(Clone, Debug)]
pub struct HttpSettings {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    pub header_read_timeout: Duration,
}

/// What every handler can reach: the data stores and the token keys. Cloned for every
/// request (axum's `State`), so it is one `Arc`: a clone is a reference-count increment, not
/// a dozen of them and an allocation (the profile of the location benchmark showed that).
#[derive(Clone, Debug)]
pub struct AppState(Arc<Shared>);

/// The contents of [`AppState`].
#[derive(Debug)]
pub struct Shared {
    pub db: PgPool,
    pub valkey: Valkey,
    pub tokens: TokenKeys,
    /// Which token subjects exist (every request's principal is checked against it).
    pub subjects: Subjects,
    pub location: LocationService,
    pub routing: Routing,
    /// Limits on placing an order.
    pub order_limits: OrderLimits,
    /// The wall clock for time-dependent answers (ETAs); tests pin it.
    pub clock: Clock,
    /// Live events for the SSE endpoints.
    pub live: Hub,
    /// Rate limits shared by every API process.
    pub limiter: RateLimiter,
}

impl AppState {
    /// The state holding `shared`.
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The routes under `/v1`: every resource group.
fn v1_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(users::router())
        .merge(drivers::router())
        .merge(restaurants::router())
        .merge(onboarding::router())
        .merge(markets::router())
        .merge(orders::router())
        .merge(offers::router())
        .merge(payments::router())
        .merge(live::router())
}

/// The routes outside `/v1`: probes, metrics and this API's document.
fn public_routes() -> OpenApiRouter<AppState> {
    health::router()
        .routes(routes!(openapi::openapi_json))
        .routes(routes!(openapi::docs))
}

/// Every route the server serves, each with its description.
pub(crate) fn described_routes() -> OpenApiRouter<AppState> {
    public_routes().nest("/v1", v1_routes())
}

/// The whole API.
pub fn router(state: AppState, http: &HttpSettings) -> Router {
    // Install the metrics recorder before the first request, so no measurement is dropped.
    crate::telemetry::metrics_handle();
    let v1 = Router::from(v1_routes())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            ratelimit::per_principal,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Authenticator {
                keys: state.tokens.clone(),
                subjects: state.subjects.clone(),
            },
            auth::require_auth,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            ratelimit::per_ip,
        ));
    Router::from(public_routes())
        .nest("/v1", v1)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(axum::middleware::from_fn(middleware::record_route))
        .layer(DefaultBodyLimit::max(http.max_body_bytes))
        .layer(CatchPanicLayer::custom(middleware::panic_response))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(middleware::ObserveSettings {
                request_timeout: http.request_timeout,
            }),
            middleware::observe,
        ))
        .with_state(state)
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}", uri.path()))
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this method is not allowed on this route",
    )
}
