//! `/healthz`, `/readyz` (including failure and recovery of Valkey) and `/metrics`.

use std::time::Duration;

use crate::helpers::{TestAppOptions, dead_port, spawn_app, spawn_app_with, start_valkey};

#[tokio::test]
async fn healthz_answers_without_touching_dependencies() {
    let app = spawn_app_with(TestAppOptions {
        valkey_url: format!("redis://127.0.0.1:{}", dead_port()),
        database_url: Some(format!(
            "postgres://postgres@127.0.0.1:{}/none",
            dead_port()
        )),
        ..TestAppOptions::default()
    })
    .await;
    let response = app
        .request(reqwest::Method::GET, "/healthz")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status().as_u16(), 200);
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["status"], "ok");
    assert_eq!(body["service"], "courier");
}

#[tokio::test]
async fn readyz_is_200_when_postgres_and_valkey_answer() {
    let app = spawn_app().await;
    let response = app
        .request(reqwest::Method::GET, "/readyz")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status().as_u16(), 200);
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["checks"]["postgres"], "ok");
    assert_eq!(body["checks"]["valkey"], "ok");
}

#[tokio::test]
async fn readyz_is_503_naming_valkey_when_it_is_down() {
    let app = spawn_app_with(TestAppOptions {
        valkey_url: format!("redis://127.0.0.1:{}", dead_port()),
        database_url: None,
        ..TestAppOptions::default()
    })
    .await;
    let response = app
        .request(reqwest::Method::GET, "/readyz")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status().as_u16(), 503);
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["checks"]["valkey"], "unreachable");
    assert_eq!(body["checks"]["postgres"], "ok");
    assert_eq!(body["error"]["code"], "not_ready");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("valkey") && !message.contains("postgres"),
        "{message}"
    );
}

#[tokio::test]
async fn readyz_is_503_naming_postgres_when_it_is_down() {
    let app = spawn_app_with(TestAppOptions {
        valkey_url: crate::helpers::valkey_url(),
        database_url: Some(format!(
            "postgres://postgres@127.0.0.1:{}/none",
            dead_port()
        )),
        ..TestAppOptions::default()
    })
    .await;
    let response = app
        .request(reqwest::Method::GET, "/readyz")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status().as_u16(), 503);
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["checks"]["postgres"], "unreachable");
    assert_eq!(body["checks"]["valkey"], "ok");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("postgres") && !message.contains("valkey"),
        "{message}"
    );
}

async fn ready_status(app: &crate::helpers::TestApp) -> u16 {
    app.request(reqwest::Method::GET, "/readyz")
        .send()
        .await
        .expect("sent")
        .status()
        .as_u16()
}

/// Polls `/readyz` until it answers `want` (bounded), returning the last status seen.
async fn wait_for_ready_status(app: &crate::helpers::TestApp, want: u16) -> u16 {
    let mut last = 0;
    for _ in 0..100 {
        last = ready_status(app).await;
        if last == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    last
}

#[tokio::test]
async fn readiness_follows_valkey_going_away_and_coming_back_without_a_restart() {
    let port = dead_port();
    let server = start_valkey(port);
    let app = spawn_app_with(TestAppOptions {
        valkey_url: format!("redis://127.0.0.1:{port}"),
        database_url: None,
        ..TestAppOptions::default()
    })
    .await;
    assert_eq!(
        wait_for_ready_status(&app, 200).await,
        200,
        "ready while Valkey runs"
    );

    drop(server);
    assert_eq!(
        wait_for_ready_status(&app, 503).await,
        503,
        "not ready once Valkey stops"
    );

    let _server = start_valkey(port);
    assert_eq!(
        wait_for_ready_status(&app, 200).await,
        200,
        "ready again once Valkey returns, same process"
    );
}

#[tokio::test]
async fn metrics_expose_request_latency_with_the_spec_buckets() {
    let app = spawn_app().await;
    app.request(reqwest::Method::GET, "/healthz")
        .send()
        .await
        .expect("sent");
    let response = app
        .request(reqwest::Method::GET, "/metrics")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status().as_u16(), 200);
    let text = response.text().await.expect("text");
    let healthz_line = text
        .lines()
        .find(|l| {
            l.starts_with("http_request_duration_seconds_bucket")
                && l.contains("route=\"/healthz\"")
                && l.contains("method=\"GET\"")
                && l.contains("status_code=\"200\"")
        })
        .unwrap_or_else(|| panic!("no healthz latency series in:\n{text}"));
    assert!(healthz_line.contains("le="), "{healthz_line}");
    for bucket in [
        "0.01", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "+Inf",
    ] {
        assert!(
            text.contains(&format!("le=\"{bucket}\"")),
            "bucket {bucket} missing"
        );
    }
}

#[tokio::test]
async fn request_ids_are_generated_or_honoured() {
    let app = spawn_app().await;
    let generated = app
        .request(reqwest::Method::GET, "/healthz")
        .send()
        .await
        .expect("sent");
    let id = generated.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "generated id {id}");

    let honoured = app
        .request(reqwest::Method::GET, "/healthz")
        .header("x-request-id", "trace-abc-123")
        .send()
        .await
        .expect("sent");
    assert_eq!(honoured.headers()["x-request-id"], "trace-abc-123");

    let replaced = app
        .request(reqwest::Method::GET, "/healthz")
        .header("x-request-id", "x".repeat(500))
        .send()
        .await
        .expect("sent");
    assert_ne!(
        replaced.headers()["x-request-id"].to_str().expect("ascii"),
        "x".repeat(500)
    );
}
