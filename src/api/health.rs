//! Liveness, readiness and metrics: the endpoints orchestrators and Prometheus call.
//!
//! `/healthz` says the process is alive and never touches a dependency. `/readyz` checks
//! Postgres and Valkey concurrently, each bounded by a timeout, and answers 503 naming the ones
//! that failed; it recovers by itself when they return. `/metrics` renders the process-wide
//! Prometheus recorder.

use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::AppState;
use crate::error::current_request_id;
use crate::telemetry::{SERVICE_NAME, VERSION, metrics_handle};

/// Longest one readiness check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Routes of this group.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
}

/// The process is alive (touches no dependency).
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "meta",
    responses((status = 200, description = "Alive", body = inline(Object), example = json!({"status": "ok", "service": "courier", "version": "0.1.0"}))),
)]
async fn healthz() -> Response {
    axum::Json(json!({ "status": "ok", "service": SERVICE_NAME, "version": VERSION }))
        .into_response()
}

/// Outcome of one dependency check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Check {
    Ok,
    Unreachable,
}

/// Postgres and Valkey answer.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "meta",
    responses((status = 200, description = "Ready", body = inline(Object), example = json!({"status": "ready", "checks": {"postgres": "ok", "valkey": "ok"}}))),
    extensions(("x-error-codes" = json!(["not_ready"]))),
)]
async fn readyz(State(state): State<AppState>) -> Response {
    let postgres = async {
        let ping = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&state.db);
        match tokio::time::timeout(CHECK_TIMEOUT, ping).await {
            Ok(Ok(_)) => Check::Ok,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "readiness: postgres check failed");
                Check::Unreachable
            }
            Err(_) => {
                tracing::warn!("readiness: postgres check timed out");
                Check::Unreachable
            }
        }
    };
    let valkey = async {
        match tokio::time::timeout(CHECK_TIMEOUT, state.valkey.ping()).await {
            Ok(Ok(())) => Check::Ok,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "readiness: valkey check failed");
                Check::Unreachable
            }
            Err(_) => {
                tracing::warn!("readiness: valkey check timed out");
                Check::Unreachable
            }
        }
    };
    let (postgres, valkey) = tokio::join!(postgres, valkey);
    let checks = json!({ "postgres": postgres, "valkey": valkey });
    let failed: Vec<&str> = [("postgres", postgres), ("valkey", valkey)]
        .into_iter()
        .filter(|(_, check)| *check != Check::Ok)
        .map(|(name, _)| name)
        .collect();
    if failed.is_empty() {
        return axum::Json(json!({ "status": "ready", "checks": checks })).into_response();
    }
    let body = json!({
        "status": "unavailable",
        "checks": checks,
        "error": {
            "code": "not_ready",
            "message": format!("not ready: {} unreachable", failed.join(" and ")),
        },
        "request_id": current_request_id(),
    });
    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
}

/// Prometheus metrics of this process.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "meta",
    responses((status = 200, description = "The Prometheus text format", content_type = "text/plain", body = String)),
)]
async fn metrics() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics_handle().render(),
    )
        .into_response()
}
