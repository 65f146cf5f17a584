//! Rate limits: one budget shared by two server processes (this test's and a `courier serve`
//! child on the same Valkey), `Retry-After` and `RateLimit-*` headers, operators' multiple,
//! a driver's location reports counted by the ingest script (and refused ones before it),
//! per-IP limits for bad tokens, and the behaviour with Valkey gone (reads open, order
//! creation closed).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use courier::auth::Role;
use courier::ratelimit::Limits;
use serde_json::Value;

use crate::helpers::{
    TEST_SECRET, TestApp, TestAppOptions, cast, database_url, dead_port, eventually, insert_driver,
    order_body, spawn_app_with,
};

/// `courier serve` on `app`'s database and Valkey key prefix, with `limits`.
struct ServerProcess {
    child: Child,
    address: String,
}

impl ServerProcess {
    async fn start(app: &TestApp, limits: &str) -> Self {
        let port = dead_port();
        let child = Command::new(env!("CARGO_BIN_EXE_courier"))
            .arg("serve")
            .env("DATABASE_URL", database_url(&app.db_name))
            .env("VALKEY_URL", crate::helpers::valkey_url())
            .env("COURIER_KEY_PREFIX", app.state.valkey.prefix())
            .env(
                "COURIER_JWT_SECRET",
                std::str::from_utf8(TEST_SECRET).expect("ascii"),
            )
            .env("COURIER_LISTEN", format!("127.0.0.1:{port}"))
            .env("COURIER_RATE_LIMITS", limits)
            .env("LOG_LEVEL", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("courier serve starts");
        let address = format!("http://127.0.0.1:{port}");
        let up = eventually(Duration::from_secs(30), || {
            let url = format!("{address}/healthz");
            async move {
                reqwest::get(url)
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        })
        .await;
        assert!(up, "courier serve did not come up");
        Self { child, address }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn limits(overrides: &str) -> Limits {
    Limits::new(true, 10)
        .with_overrides(overrides)
        .expect("valid limits")
}

async fn me(app: &TestApp, base: &str, role: Role, subject: i64) -> reqwest::Response {
    app.client
        .get(format!("{base}/v1/me"))
        .bearer_auth(app.token(role, subject))
        .send()
        .await
        .expect("sent")
}

fn header(response: &reqwest::Response, name: &str) -> Option<u64> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn two_server_processes_share_one_budget_and_both_refuse_with_retry_after() {
    let overrides = "read=1/m:3";
    let app = spawn_app_with(TestAppOptions {
        rate_limits: limits(overrides),
        ..TestAppOptions::default()
    })
    .await;
    let cast = cast(&app.db).await;
    let other = ServerProcess::start(&app, overrides).await;
    let bases = [app.address.as_str(), other.address.as_str()];

    // Three allowed, whichever process answers, each saying what is left.
    for (i, remaining) in [2, 1, 0].into_iter().enumerate() {
        let response = me(&app, bases[i % 2], Role::Customer, cast.customer).await;
        assert_eq!(response.status().as_u16(), 200, "request {i}");
        assert_eq!(header(&response, "ratelimit-limit"), Some(3));
        assert_eq!(header(&response, "ratelimit-remaining"), Some(remaining));
        assert!(header(&response, "ratelimit-reset").is_some_and(|s| s > 0));
    }
    // Then both refuse, with the standard body and when to come back.
    for base in bases {
        let response = me(&app, base, Role::Customer, cast.customer).await;
        assert_eq!(response.status().as_u16(), 429, "{base}");
        let retry = header(&response, "retry-after").expect("Retry-After");
        assert!((1..=60).contains(&retry), "one a minute: {retry}");
        assert_eq!(header(&response, "ratelimit-remaining"), Some(0));
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["error"]["code"], "rate_limited");
        assert!(body["error"]["message"].is_string());
    }
    // Another principal has a budget of its own, and an operator ten times as much.
    assert_eq!(
        me(&app, bases[1], Role::Restaurant, cast.restaurant)
            .await
            .status()
            .as_u16(),
        200
    );
    let operator = me(&app, bases[0], Role::Operator, 1).await;
    assert_eq!(operator.status().as_u16(), 200);
    assert_eq!(header(&operator, "ratelimit-limit"), Some(30));
    // Health checks are never limited.
    for _ in 0..5 {
        let health = reqwest::get(format!("{}/healthz", bases[1]))
            .await
            .expect("health");
        assert_eq!(health.status().as_u16(), 200);
    }
}

#[tokio::test]
async fn a_drivers_location_reports_share_one_budget_in_both_processes() {
    let overrides = "location=1/m:3";
    let app = spawn_app_with(TestAppOptions {
        rate_limits: limits(overrides),
        ..TestAppOptions::default()
    })
    .await;
    let driver = insert_driver(&app.db).await;
    let other_driver = insert_driver(&app.db).await;
    let other = ServerProcess::start(&app, overrides).await;
    let report = |base: &str, driver: i64, lat: f64| {
        let app = &app;
        let url = format!("{base}/v1/drivers/{driver}/location");
        async move {
            app.client
                .post(url)
                .bearer_auth(app.token(Role::Driver, driver))
                .json(&serde_json::json!({"lat": lat, "lon": -74.0}))
                .send()
                .await
                .expect("sent")
        }
    };
    // Two reports through the ingest script (one per process), each saying what is left.
    let first = report(&app.address, driver, 40.70).await;
    assert_eq!(first.status().as_u16(), 200);
    assert_eq!(header(&first, "ratelimit-limit"), Some(3));
    assert_eq!(header(&first, "ratelimit-remaining"), Some(2));
    let second = report(&other.address, driver, 40.71).await;
    assert_eq!(second.status().as_u16(), 200);
    assert_eq!(header(&second, "ratelimit-remaining"), Some(1));
    // A report refused before the script (a position off the index) counts all the same.
    let invalid = report(&app.address, driver, 89.0).await;
    assert_eq!(invalid.status().as_u16(), 422);
    assert_eq!(header(&invalid, "ratelimit-remaining"), Some(0));
    // The budget is spent: both processes refuse, and the refused report is not applied.
    for base in [app.address.as_str(), other.address.as_str()] {
        let refused = report(base, driver, 40.72).await;
        assert_eq!(refused.status().as_u16(), 429, "{base}");
        let retry = header(&refused, "retry-after").expect("Retry-After");
        assert!((1..=60).contains(&retry), "one a minute: {retry}");
        let body: Value = refused.json().await.expect("json");
        assert_eq!(body["error"]["code"], "rate_limited");
    }
    let (at, _) = app
        .state
        .location
        .last_fix(driver)
        .await
        .expect("valkey")
        .expect("a position");
    assert!(
        (at.lat - 40.71).abs() < 1e-9,
        "the last allowed report stands: {at:?}"
    );
    // Another driver has a budget of its own.
    assert_eq!(
        report(&other.address, other_driver, 40.7)
            .await
            .status()
            .as_u16(),
        200
    );
}

#[tokio::test]
async fn orders_are_limited_per_customer_and_bad_tokens_per_ip() {
    let app = spawn_app_with(TestAppOptions {
        rate_limits: limits("order_create=1/m:2,unauthenticated=1/m:2"),
        ..TestAppOptions::default()
    })
    .await;
    let cast = cast(&app.db).await;
    let body = order_body(&cast);
    let mut statuses = Vec::new();
    for i in 0..4 {
        let response = app
            .place_order(cast.customer, &format!("key-{i}"), &body)
            .await;
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, [201, 201, 429, 429]);
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&app.db)
        .await
        .expect("count");
    assert_eq!(orders, 2, "a refused request writes nothing");

    let bad = |token: &'static str| {
        let app = &app;
        async move {
            app.client
                .get(format!("{}/v1/me", app.address))
                .bearer_auth(token)
                .send()
                .await
                .expect("sent")
        }
    };
    assert_eq!(bad("not-a-token").await.status().as_u16(), 401);
    assert_eq!(bad("still-not-one").await.status().as_u16(), 401);
    let refused = bad("again").await;
    assert_eq!(refused.status().as_u16(), 429);
    assert!(header(&refused, "retry-after").is_some());
    // A valid token from the same address is not held back by the bad ones.
    assert_eq!(
        me(&app, &app.address, Role::Restaurant, cast.restaurant)
            .await
            .status()
            .as_u16(),
        200
    );
}

#[tokio::test]
async fn with_valkey_gone_reads_go_through_and_order_creation_is_refused() {
    let app = spawn_app_with(TestAppOptions {
        valkey_url: format!("redis://127.0.0.1:{}", dead_port()),
        rate_limits: limits(""),
        ..TestAppOptions::default()
    })
    .await;
    let cast = cast(&app.db).await;
    let read = me(&app, &app.address, Role::Customer, cast.customer).await;
    assert_eq!(read.status().as_u16(), 200, "reads fail open");
    assert!(read.headers().get("ratelimit-limit").is_none());
    let placed = app
        .place_order(cast.customer, "while-valkey-is-down", &order_body(&cast))
        .await;
    assert_eq!(placed.status().as_u16(), 503, "order creation fails closed");
    assert!(header(&placed, "retry-after").is_some());
    let body: Value = placed.json().await.expect("json");
    assert_eq!(body["error"]["code"], "rate_limiter_unavailable");
    assert!(
        !body
            .to_string()
            .to_lowercase()
            .contains("connection refused"),
        "internals leaked: {body}"
    );
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&app.db)
        .await
        .expect("count");
    assert_eq!(orders, 0);
}
