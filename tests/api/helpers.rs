//! Test harness: every test gets a fresh database and its own Valkey key prefix, and the app
//! built in process on port 0, so tests run in parallel and never see each other's data.
//!
//! Databases are cheap: the migrations run once per test run into a template database (named by
//! a hash of the migrations, built under an advisory lock so parallel test processes agree), and
//! each test's database is `CREATE DATABASE … TEMPLATE` of it. `just test` drops leftovers of
//! earlier runs before it starts.

use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use courier::api::AppState;
use courier::api::HttpSettings;
use courier::auth::JwtSecret;
use courier::auth::{Principal, Role, TokenKeys};
use courier::config::Config;
use courier::cron::CronSettings;
use courier::dispatch::{DispatchSettings, Dispatcher};
use courier::domain::OrderId;
use courier::eta::routing::RoutingSettings;
use courier::live::LiveSettings;
use courier::notify::{Notifier, WebhookSettings};
use courier::outbox::OutboxSettings;
use courier::payments::{PaymentSettings, Payments};
use courier::ratelimit::Limits;
use courier::shutdown::CancellationToken;
use courier::startup::{Application, Background};
use courier::store;
use courier::store::DatabaseSettings;
use courier::valkey::ValkeySettings;
use courier::workers::JobContext;
use courier::workflows::payment::{self, PaymentResult};
use courier::workflows::place::OrderLimits;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use tokio::sync::OnceCell;

/// Prefix of every database the tests create; `just test` drops leftovers by it.
pub const TEST_DB_PREFIX: &str = "courier_test_";

/// A new test database name: the prefix, the creation time (unix seconds) and a random part.
/// `ops/drop-test-databases` drops only names older than an hour, so a concurrent run on the
/// same server keeps its databases.
pub fn test_database_name() -> String {
    format!(
        "{TEST_DB_PREFIX}{}_{}",
        chrono::Utc::now().timestamp(),
        uuid::Uuid::new_v4().simple()
    )
}

/// The signing secret of test tokens.
pub const TEST_SECRET: &[u8] = b"integration-test-secret-integration-test-secret";

/// How long the test app waits for a request's headers (10 s in production). It also closes
/// idle kept-alive connections, so the test client drops its idle ones sooner.
pub const TEST_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Request-body limit of the test app (the production default).
pub const TEST_MAX_BODY_BYTES: usize = 256 * 1024;

/// The Postgres server the tests use (its database part is ignored).
pub fn server_url() -> String {
    std::env::var("COURIER_TEST_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/courier".to_owned())
}

/// The Valkey server the tests use.
pub fn valkey_url() -> String {
    std::env::var("COURIER_TEST_VALKEY_URL")
        .or_else(|_| std::env::var("VALKEY_URL"))
        .unwrap_or_else(|_| "redis://127.0.0.1:6380".to_owned())
}

fn connect_options(database: &str) -> PgConnectOptions {
    PgConnectOptions::from_str(&server_url())
        .expect("COURIER_TEST_DATABASE_URL is a valid postgres URL")
        .database(database)
        .log_statements(log::LevelFilter::Trace)
}

/// URL of `database` on the test server.
pub fn database_url(database: &str) -> String {
    let mut url = url::Url::parse(&server_url()).expect("valid URL");
    url.set_path(database);
    url.to_string()
}

/// Name of the template database for the current migrations.
fn template_name() -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for migration in store::MIGRATOR.iter() {
        for byte in migration
            .checksum
            .iter()
            .copied()
            .chain(migration.version.to_le_bytes())
        {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("courier_template_{TEMPLATE_CONTENT}_{hash:016x}")
}

static TEMPLATE: OnceCell<String> = OnceCell::const_new();

/// What the template holds beyond the migrations; part of its name, so a change rebuilds it.
const TEMPLATE_CONTENT: &str = "op1";

/// The operator every test database starts with (user 1): tokens must name a subject that
/// exists in its role, and most tests need an operator.
pub const OPERATOR: i64 = 1;

/// Creates (once per run, and only if missing) the migrated template database.
async fn template() -> &'static str {
    TEMPLATE
        .get_or_init(|| async {
            let name = template_name();
            let mut admin = PgConnection::connect_with(&connect_options("postgres"))
                .await
                .expect("test Postgres reachable (run `just services-up`)");
            // Serialise template builds across test processes.
            sqlx::query("SELECT pg_advisory_lock(4242001)")
                .execute(&mut admin)
                .await
                .expect("advisory lock");
            let exists: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                    .bind(&name)
                    .fetch_one(&mut admin)
                    .await
                    .expect("query pg_database");
            if !exists {
                let building = format!("{name}_building");
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {building} WITH (FORCE)"
                )))
                .execute(&mut admin)
                .await
                .expect("drop stale template");
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {building}")))
                    .execute(&mut admin)
                    .await
                    .expect("create template");
                let pool = PgPool::connect_with(connect_options(&building))
                    .await
                    .expect("connect to template");
                store::migrate(&pool).await.expect("migrations apply");
                let operator: i64 = sqlx::query_scalar(
                    "INSERT INTO users (role, name, email)
                     VALUES ('operator', 'Test operator', 'operator@example.com') RETURNING id",
                )
                .fetch_one(&pool)
                .await
                .expect("insert the test operator");
                assert_eq!(operator, OPERATOR);
                pool.close().await;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "ALTER DATABASE {building} RENAME TO {name}"
                )))
                .execute(&mut admin)
                .await
                .expect("publish template");
            }
            sqlx::query("SELECT pg_advisory_unlock(4242001)")
                .execute(&mut admin)
                .await
                .expect("advisory unlock");
            admin.close().await.ok();
            name
        })
        .await
}

/// Creates a fresh, migrated database and returns its name.
pub async fn fresh_database() -> String {
    let template = template().await;
    let name = test_database_name();
    let mut admin = PgConnection::connect_with(&connect_options("postgres"))
        .await
        .expect("test Postgres reachable");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE {name} TEMPLATE {template}"
    )))
    .execute(&mut admin)
    .await
    .expect("create test database from template");
    admin.close().await.ok();
    name
}

/// A running app and handles to what it talks to.
#[derive(Debug)]
pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub db: PgPool,
    pub db_name: String,
    pub state: AppState,
    pub keys: TokenKeys,
    stop: CancellationToken,
    background: Option<Background>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// How to build a test app; the defaults are a healthy app on the test servers.
#[derive(Debug, Clone)]
pub struct TestAppOptions {
    pub valkey_url: String,
    /// Seed nodes of a Valkey Cluster to run on instead of `valkey_url` (none by default).
    pub valkey_cluster_nodes: Vec<String>,
    /// Routing (OSRM URL, market time zone); the estimator in UTC by default.
    pub routing: RoutingSettings,
    /// Overrides the database URL (e.g. a dead port) instead of a fresh database.
    pub database_url: Option<String>,
    /// Order total cap and confirm timeout.
    pub order_limits: OrderLimits,
    /// Rate limits: off unless a test is about them.
    pub rate_limits: Limits,
}

impl Default for TestAppOptions {
    fn default() -> Self {
        Self {
            valkey_url: valkey_url(),
            valkey_cluster_nodes: Vec::new(),
            routing: RoutingSettings::default(),
            database_url: None,
            order_limits: OrderLimits::default(),
            rate_limits: Limits::disabled(),
        }
    }
}

/// Spawns the app on a fresh database with a fresh key prefix.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(TestAppOptions::default()).await
}

/// Spawns the app with `options`.
pub async fn spawn_app_with(options: TestAppOptions) -> TestApp {
    let (db_name, database_url) = match options.database_url {
        Some(url) => ("(none)".to_owned(), url),
        None => {
            let name = fresh_database().await;
            let url = database_url(&name);
            (name, url)
        }
    };
    let config = Config {
        database: DatabaseSettings {
            url: database_url.into(),
            max_connections: 10,
        },
        valkey: ValkeySettings {
            url: options.valkey_url.into(),
            cluster_nodes: options
                .valkey_cluster_nodes
                .iter()
                .map(|n| n.clone().into())
                .collect(),
            key_prefix: format!("test:{}:", uuid::Uuid::new_v4().simple()),
        },
        jwt_secret: JwtSecret::from_bytes(TEST_SECRET.to_vec()).expect("long enough"),
        dev: false,
        dispatch: DispatchSettings::default(),
        routing: options.routing.clone(),
        payments: PaymentSettings::default(),
        webhooks: WebhookSettings::default(),
        cron: CronSettings::default(),
        order_limits: options.order_limits,
        outbox: OutboxSettings::default(),
        live: LiveSettings::default(),
        rate_limits: options.rate_limits.clone(),
    };
    let (state, background) = AppState::from_config(&config).expect("valid config");
    let http = HttpSettings {
        listen: "127.0.0.1:0".parse().expect("valid address"),
        max_body_bytes: TEST_MAX_BODY_BYTES,
        request_timeout: Duration::from_secs(10),
        header_read_timeout: TEST_HEADER_READ_TIMEOUT,
    };
    let app = Application::build(state.clone(), &http)
        .await
        .expect("app builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let stop = CancellationToken::new();
    tokio::spawn(app.run_until_stopped(stop.clone()));
    TestApp {
        address,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_idle_timeout(TEST_HEADER_READ_TIMEOUT / 2)
            .build()
            .expect("client builds"),
        db: state.db.clone(),
        db_name,
        keys: state.tokens.clone(),
        state,
        stop,
        background: Some(background),
    }
}

impl TestApp {
    /// Reports `driver` at `here` until `reader` carries a `driver_position` event (the first
    /// reports may come before the stream's subscription is made); its data, or `None` after
    /// 20 reports.
    pub async fn report_until_position(
        &self,
        reader: &mut SseReader,
        driver: i64,
        here: courier::geo::Point,
    ) -> Option<serde_json::Value> {
        for _ in 0..20 {
            self.report(
                driver,
                serde_json::json!({"lat": here.lat, "lon": here.lon}),
            )
            .await;
            while let Some(event) = reader.next(Duration::from_millis(500)).await {
                if event.event == "driver_position" {
                    return Some(event.json());
                }
            }
        }
        None
    }

    /// `POST /v1/offers/{offer}/accept` as `driver`.
    pub async fn accept(&self, offer: i64, driver: i64) -> reqwest::Response {
        self.post_as(
            &format!("/v1/offers/{offer}/accept"),
            Role::Driver,
            driver,
            &serde_json::json!({}),
        )
        .await
    }

    /// Sets the time zone of the market `slug` and has this app read the markets again.
    pub async fn set_market_time_zone(&self, slug: &str, zone: chrono_tz::Tz) {
        sqlx::query("UPDATE markets SET time_zone = $2 WHERE slug = $1")
            .bind(slug)
            .bind(zone.name())
            .execute(&self.db)
            .await
            .expect("market updated");
        self.state
            .location
            .markets()
            .reload()
            .await
            .expect("markets read");
    }

    /// The whole `/metrics` page.
    pub async fn metrics_text(&self) -> String {
        self.request(reqwest::Method::GET, "/metrics")
            .send()
            .await
            .expect("sent")
            .text()
            .await
            .expect("text")
    }

    /// The value of a series in `/metrics`, e.g. `name{label="v"}` (0 when absent).
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.metrics_text().await;
        text.lines()
            .find_map(|l| l.strip_prefix(series).map(str::trim))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    /// Stops the HTTP server and the background tasks as a process shutdown does (flushing
    /// the location history).
    pub async fn shutdown(&mut self) {
        self.stop.cancel();
        if let Some(background) = self.background.take() {
            background.shutdown().await;
        }
    }

    /// A valid token for `role` acting as `subject`.
    pub fn token(&self, role: Role, subject: i64) -> String {
        self.keys
            .issue(
                Principal { role, subject },
                chrono::Utc::now().timestamp(),
                Duration::from_secs(600),
            )
            .expect("token issued")
    }

    /// `GET path` with a bearer token for (role, subject).
    pub async fn get_as(&self, path: &str, role: Role, subject: i64) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.address))
            .bearer_auth(self.token(role, subject))
            .send()
            .await
            .expect("request sent")
    }

    /// `POST path` with a JSON body and a bearer token for (role, subject).
    pub async fn post_as(
        &self,
        path: &str,
        role: Role,
        subject: i64,
        body: &serde_json::Value,
    ) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.address))
            .bearer_auth(self.token(role, subject))
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    /// A request builder for `method path` without credentials.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.address))
    }
}

/// Asserts `response` is an error in our shape with `status` and `code`; returns its body.
pub async fn assert_error(
    response: reqwest::Response,
    status: u16,
    code: &str,
) -> serde_json::Value {
    assert_eq!(response.status().as_u16(), status, "unexpected status");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "content-type {content_type}"
    );
    assert!(
        response.headers().contains_key("x-request-id"),
        "x-request-id missing"
    );
    let body: serde_json::Value = response.json().await.expect("JSON body");
    assert_eq!(body["error"]["code"], code, "body: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "message missing: {body}"
    );
    assert!(body["request_id"].is_string(), "request_id missing: {body}");
    body
}

/// A TCP port on which nothing listens.
pub fn dead_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    port
}

/// Inserts a user with `role` and returns its id.
pub async fn insert_user(db: &PgPool, role: &str) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO users (role, name, email) VALUES ($1, 'Test ' || $1, $2) RETURNING id",
    )
    .bind(role)
    .bind(format!(
        "{role}-{}@example.com",
        uuid::Uuid::new_v4().simple()
    ))
    .fetch_one(db)
    .await
    .expect("insert user")
}

/// Inserts an open restaurant at (lat, lon) delivering within 8 km, in the smallest active
/// market containing it; returns its id.
pub async fn insert_restaurant(db: &PgPool, name: &str, cuisine: &str, lat: f64, lon: f64) -> i64 {
    sqlx::query_scalar(
        "WITH at AS (SELECT ST_SetSRID(ST_MakePoint($4, $3), 4326)::geography AS p)
         INSERT INTO restaurants (name, cuisine_type, location, rating, prep_time_minutes, market_id)
         SELECT $1, $2, at.p, 4.5, 20,
                (SELECT id FROM markets
                 WHERE active AND ST_DWithin(center, at.p, radius_km * 1000)
                 ORDER BY radius_km, ST_Distance(center, at.p) LIMIT 1)
         FROM at RETURNING id",
    )
    .bind(name)
    .bind(cuisine)
    .bind(lat)
    .bind(lon)
    .fetch_one(db)
    .await
    .expect("insert restaurant")
}

/// Inserts an available menu item; returns its id.
pub async fn insert_item(db: &PgPool, restaurant_id: i64, name: &str, price_cents: i64) -> i64 {
    sqlx::query_scalar("INSERT INTO menu_items (restaurant_id, name, price_cents, category) VALUES ($1, $2, $3, 'Mains') RETURNING id")
        .bind(restaurant_id)
        .bind(name)
        .bind(price_cents)
        .fetch_one(db)
        .await
        .expect("insert menu item")
}

/// Inserts a driver (with its user); returns the driver id.
pub async fn insert_driver(db: &PgPool) -> i64 {
    let user = insert_user(db, "driver").await;
    sqlx::query_scalar(
        "INSERT INTO drivers (user_id, vehicle_type) VALUES ($1, 'bicycle') RETURNING id",
    )
    .bind(user)
    .fetch_one(db)
    .await
    .expect("insert driver")
}

/// A restaurant in Manhattan with two dishes, and a customer: the usual cast of an order test.
#[derive(Debug, Clone, Copy)]
pub struct Cast {
    pub restaurant: i64,
    pub burger: i64,
    pub fries: i64,
    pub customer: i64,
}

/// Restaurant position of [`Cast`].
pub const RESTAURANT_AT: (f64, f64) = (40.7128, -74.0060);

/// Creates a [`Cast`].
pub async fn cast(db: &PgPool) -> Cast {
    let restaurant = insert_restaurant(
        db,
        "Burger Barn",
        "burgers",
        RESTAURANT_AT.0,
        RESTAURANT_AT.1,
    )
    .await;
    Cast {
        restaurant,
        burger: insert_item(db, restaurant, "Burger", 1_250).await,
        fries: insert_item(db, restaurant, "Fries", 399).await,
        customer: insert_user(db, "customer").await,
    }
}

/// A valid order body for `cast`, delivering about 1.1 km north of the restaurant.
pub fn order_body(cast: &Cast) -> serde_json::Value {
    serde_json::json!({
        "restaurant_id": cast.restaurant,
        "items": [
            {"menu_item_id": cast.burger, "quantity": 2, "special_instructions": "no onions"},
            {"menu_item_id": cast.fries, "quantity": 1}
        ],
        "delivery_address": {"lat": RESTAURANT_AT.0 + 0.01, "lon": RESTAURANT_AT.1, "line1": "1 Test Street", "city": "New York"},
        "payment_method": "pm_card_visa"
    })
}

impl TestApp {
    /// `POST /v1/orders` as `customer` with `key`.
    pub async fn place_order(
        &self,
        customer: i64,
        key: &str,
        body: &serde_json::Value,
    ) -> reqwest::Response {
        self.client
            .post(format!("{}/v1/orders", self.address))
            .bearer_auth(self.token(Role::Customer, customer))
            .header("x-idempotency-key", key)
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    /// Places an order for `cast` and returns its id; it waits in PAYMENT_PENDING.
    pub async fn unpaid_order(&self, cast: &Cast) -> i64 {
        let response = self
            .place_order(
                cast.customer,
                &uuid::Uuid::new_v4().to_string(),
                &order_body(cast),
            )
            .await;
        assert_eq!(response.status().as_u16(), 201);
        let body: serde_json::Value = response.json().await.expect("json");
        body["id"].as_i64().expect("order id")
    }

    /// Runs the `authorize_payment` job's work for `order` once, on the ledger (as a worker
    /// would); returns what it did.
    pub async fn authorize(&self, order: i64) -> PaymentResult {
        self.authorize_with(order, WorkerSettings::default().payments)
            .await
    }

    /// Runs the `authorize_payment` job's work for `order` once with `settings`.
    pub async fn authorize_with(&self, order: i64, settings: PaymentSettings) -> PaymentResult {
        let payments = Payments::new(self.db.clone(), settings).expect("payments");
        payment::authorize(
            &self.db,
            &self.state.location,
            &payments,
            self.state.order_limits.confirm_within,
            OrderId(order),
            1,
        )
        .await
        .expect("authorisation runs")
    }

    /// Places an order for `cast`, authorises its payment on the ledger, and returns its id:
    /// the order is PLACED with its restaurant.
    /// (Workers that run may authorise it first.)
    pub async fn placed_order(&self, cast: &Cast) -> i64 {
        let order = self.unpaid_order(cast).await;
        let authorized = self.authorize(order).await;
        assert!(
            matches!(
                authorized,
                PaymentResult::Ended("authorized") | PaymentResult::NothingToDo
            ),
            "{authorized:?}"
        );
        assert!(
            eventually(Duration::from_secs(20), || async {
                self.status_of(order).await == "PLACED"
            })
            .await,
            "order {order} was not placed"
        );
        order
    }

    /// `POST /v1/orders/{id}/{action}` as (role, subject) with an empty body.
    pub async fn act(
        &self,
        order: i64,
        action: &str,
        role: Role,
        subject: i64,
    ) -> reqwest::Response {
        self.client
            .post(format!("{}/v1/orders/{order}/{action}", self.address))
            .bearer_auth(self.token(role, subject))
            .send()
            .await
            .expect("request sent")
    }

    /// A location report `body` from `driver`, as that driver.
    pub async fn report(&self, driver: i64, body: serde_json::Value) -> reqwest::Response {
        self.post_as(
            &format!("/v1/drivers/{driver}/location"),
            Role::Driver,
            driver,
            &body,
        )
        .await
    }

    /// An order of `cast`, placed and confirmed by its restaurant (matching is enqueued).
    pub async fn confirmed_order(&self, cast: &Cast) -> i64 {
        let id = self.placed_order(cast).await;
        let confirmed = self
            .act(id, "confirm", Role::Restaurant, cast.restaurant)
            .await;
        assert_eq!(confirmed.status().as_u16(), 200);
        id
    }

    /// Rows in the location history.
    pub async fn history_rows(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM driver_locations")
            .fetch_one(&self.db)
            .await
            .expect("count")
    }

    /// The order's current status, read from the database.
    pub async fn status_of(&self, order: i64) -> String {
        sqlx::query_scalar("SELECT status FROM orders WHERE id = $1")
            .bind(order)
            .fetch_one(&self.db)
            .await
            .expect("order exists")
    }

    /// How many job rows of `queue` mention `order` in their arguments.
    pub async fn jobs_for(&self, queue: &str, order: i64) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM apalis.jobs
             WHERE job_type = $1 AND (convert_from(job, 'UTF8')::jsonb ->> 'order_id')::bigint = $2",
        )
        .bind(queue)
        .bind(order)
        .fetch_one(&self.db)
        .await
        .expect("count jobs")
    }

    /// Audit rows of `order` whose metadata names `action`.
    pub async fn audit_rows(&self, order: i64, action: &str) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM audit_logs WHERE entity_type = 'order' AND entity_id = $1 AND metadata ->> 'action' = $2",
        )
        .bind(order)
        .bind(action)
        .fetch_one(&self.db)
        .await
        .expect("count audit rows")
    }

    /// Runs the job workers in process on this app's database until the guard is dropped.
    pub fn spawn_workers(&self) -> WorkerGuard {
        self.spawn_workers_with(fast_dispatch())
    }

    /// A dispatcher on this app's database and Valkey.
    pub fn dispatcher(&self, settings: DispatchSettings) -> Dispatcher {
        self.dispatcher_on(self.db.clone(), settings)
    }

    /// A dispatcher on this app's database whose Valkey is down (nothing listens on its port):
    /// every driver lookup fails.
    pub fn dispatcher_without_valkey(&self, settings: DispatchSettings) -> Dispatcher {
        let dead = courier::valkey::Valkey::new(&courier::valkey::ValkeySettings {
            url: format!("redis://127.0.0.1:{}", dead_port()).into(),
            cluster_nodes: Vec::new(),
            key_prefix: "dead:".to_owned(),
        })
        .expect("valid url");
        let (sender, _history) = courier::location::history::spawn(self.db.clone());
        Dispatcher::new(
            self.db.clone(),
            courier::location::LocationService::new(dead, self.db.clone(), sender),
            self.state.routing.clone(),
            settings,
        )
    }

    /// A dispatcher on `db` and this app's Valkey.
    fn dispatcher_on(&self, db: sqlx::PgPool, settings: DispatchSettings) -> Dispatcher {
        Dispatcher::new(
            db,
            self.state.location.clone(),
            self.state.routing.clone(),
            settings,
        )
    }

    /// Runs the job workers with `settings` for matching.
    pub fn spawn_workers_with(&self, settings: DispatchSettings) -> WorkerGuard {
        self.spawn_workers_custom(WorkerSettings {
            dispatch: settings,
            ..WorkerSettings::default()
        })
    }

    /// The workers' context with `settings`.
    pub fn job_context(&self, settings: WorkerSettings) -> JobContext {
        let db = courier::store::handler_pool(&self.db, 10, courier::workers::JOB_TIMEOUT);
        JobContext {
            db: db.clone(),
            dispatch: self.dispatcher_on(db.clone(), settings.dispatch),
            payments: Payments::new(db, settings.payments).expect("payments"),
            notifier: Notifier::new(settings.webhooks).expect("notifier"),
            cron: Arc::new(settings.cron),
            confirm_within: self.state.order_limits.confirm_within,
        }
    }

    /// Runs the job workers (and cron) with `settings`.
    pub fn spawn_workers_custom(&self, settings: WorkerSettings) -> WorkerGuard {
        let stop = CancellationToken::new();
        tokio::spawn(courier::workers::run(
            self.job_context(settings),
            stop.clone(),
            Duration::from_secs(2),
        ));
        WorkerGuard(stop)
    }
}

/// Everything the workers can be configured with.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub dispatch: DispatchSettings,
    pub payments: PaymentSettings,
    pub webhooks: WebhookSettings,
    pub cron: CronSettings,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            dispatch: fast_dispatch(),
            payments: PaymentSettings {
                retry_base: Duration::from_secs(1),
                retry_cap: Duration::from_secs(4),
                ..PaymentSettings::default()
            },
            webhooks: WebhookSettings {
                retry_base: Duration::from_secs(1),
                retry_cap: Duration::from_secs(2),
                timeout: Duration::from_secs(2),
                ..WebhookSettings::default()
            },
            cron: CronSettings::default(),
        }
    }
}

/// Matching settings for tests: offers live 3 s, empty rounds retry after 1 s then 2 s, and an
/// order is flagged after 3 empty rounds.
pub fn fast_dispatch() -> DispatchSettings {
    DispatchSettings {
        first_offer_ttl: Duration::from_secs(3),
        later_offer_ttl: Duration::from_secs(3),
        retry_base: Duration::from_secs(1),
        retry_cap: Duration::from_secs(2),
        alert_after_rounds: 3,
        ..DispatchSettings::default()
    }
}

/// Metres per degree of latitude.
pub const M_PER_DEG: f64 = 111_195.0;

impl TestApp {
    /// `POST /v1/drivers/{driver}/status` online, as the driver.
    pub async fn go_online(&self, driver: i64) {
        let response = self
            .post_as(
                &format!("/v1/drivers/{driver}/status"),
                Role::Driver,
                driver,
                &serde_json::json!({"status": "online"}),
            )
            .await;
        assert_eq!(response.status().as_u16(), 200);
    }

    /// The point `north_m` metres north of the restaurant of [`Cast`].
    pub fn north_of_restaurant(north_m: f64) -> courier::geo::Point {
        courier::geo::Point {
            lat: RESTAURANT_AT.0 + north_m / M_PER_DEG,
            lon: RESTAURANT_AT.1,
        }
    }

    /// A new driver, online, who reported from `north_m` metres north of the restaurant of
    /// [`Cast`] (and is therefore searchable).
    pub async fn online_driver_at(&self, north_m: f64) -> i64 {
        let driver = insert_driver(&self.db).await;
        self.go_online(driver).await;
        let reported = self
            .post_as(
                &format!("/v1/drivers/{driver}/location"),
                Role::Driver,
                driver,
                &serde_json::json!({"lat": Self::north_of_restaurant(north_m).lat, "lon": RESTAURANT_AT.1}),
            )
            .await;
        assert_eq!(reported.status().as_u16(), 200);
        let body: serde_json::Value = reported.json().await.expect("json");
        assert_eq!(body["result"], "available");
        driver
    }

    /// An order of `cast` taken to PICKED_UP by a directly assigned driver (with a payment
    /// intent); returns (order, driver).
    pub async fn picked_up_order(&self, cast: &Cast) -> (i64, i64) {
        let order = self.placed_order(cast).await;
        let driver = self.pick_up(cast, order).await;
        (order, driver)
    }

    /// Takes a PLACED `order` of `cast` to PICKED_UP (confirmed, a new driver assigned,
    /// prepared, ready, picked up); returns the driver.
    pub async fn pick_up(&self, cast: &Cast, order: i64) -> i64 {
        let driver = insert_driver(&self.db).await;
        self.act(order, "confirm", Role::Restaurant, cast.restaurant)
            .await;
        sqlx::query("UPDATE orders SET driver_id = $2 WHERE id = $1")
            .bind(order)
            .bind(driver)
            .execute(&self.db)
            .await
            .expect("assign");
        for step in ["start-preparing", "ready"] {
            self.act(order, step, Role::Restaurant, cast.restaurant)
                .await;
        }
        assert_eq!(
            self.act(order, "pickup", Role::Driver, driver)
                .await
                .status()
                .as_u16(),
            200
        );
        driver
    }

    /// Outbox events of `order` with `event_type`.
    pub async fn outbox_events(&self, order: i64, event_type: &str) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM outbox WHERE aggregate_id = $1 AND event_type = $2",
        )
        .bind(order)
        .bind(event_type)
        .fetch_one(&self.db)
        .await
        .expect("outbox")
    }
}

/// The Kafka-protocol broker the tests use (`just test` starts tansu through `ops/`).
pub fn kafka_brokers() -> Vec<String> {
    std::env::var("COURIER_TEST_KAFKA_BROKERS")
        .or_else(|_| std::env::var("KAFKA_BROKERS"))
        .unwrap_or_else(|_| "127.0.0.1:19092".to_owned())
        .split(',')
        .map(str::to_owned)
        .collect()
}

/// One entry of the orders' event stream: its fields.
#[derive(Clone, Debug)]
pub struct Entry {
    pub order_id: i64,
    pub event_id: String,
    pub event_type: String,
    pub sequence: i64,
    pub body: serde_json::Value,
}

/// Every entry of the orders' event stream under `prefix`, oldest first.
pub async fn stream_entries(prefix: &str) -> Vec<Entry> {
    let client = redis::Client::open(valkey_url()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(format!("{prefix}events:orders"))
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .expect("XRANGE");
    reply
        .ids
        .into_iter()
        .map(|e| {
            let body: String = e.get("event").expect("event field");
            Entry {
                order_id: e.get("order_id").expect("order_id"),
                event_id: e.get("event_id").expect("event_id"),
                event_type: e.get("type").expect("type"),
                sequence: e.get("sequence").expect("sequence"),
                body: serde_json::from_str(&body).expect("json"),
            }
        })
        .collect()
}

impl TestApp {
    /// Runs the outbox relay in process with `settings` until the guard is dropped.
    pub fn spawn_relay_with(&self, settings: &OutboxSettings) -> WorkerGuard {
        let stop = CancellationToken::new();
        let relay = courier::outbox::relay(self.db.clone(), &self.state.valkey, settings)
            .expect("relay builds");
        tokio::spawn(relay.run(stop.clone()));
        WorkerGuard(stop)
    }

    /// Runs the outbox relay (to the Valkey stream, polling every 100 ms) in process.
    pub fn spawn_relay(&self) -> WorkerGuard {
        let mut settings = OutboxSettings::default();
        settings.relay.poll_interval = Duration::from_millis(100);
        self.spawn_relay_with(&settings)
    }

    /// Outbox rows not yet published.
    pub async fn unpublished(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(&self.db)
            .await
            .expect("count")
    }

    /// Opens an SSE stream at `path` as (role, subject), with `Last-Event-ID` when given.
    pub async fn sse(
        &self,
        path: &str,
        role: Role,
        subject: i64,
        last_event_id: Option<&str>,
    ) -> reqwest::Response {
        let mut request = reqwest::Client::new()
            .get(format!("{}{path}", self.address))
            .bearer_auth(self.token(role, subject))
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        request.send().await.expect("request sent")
    }
}

impl TestApp {
    /// Opens the SSE stream at `path` as (role, subject) and reads its first event, which
    /// must be the snapshot.
    pub async fn follow(&self, path: &str, role: Role, subject: i64) -> (SseReader, SseEvent) {
        let mut reader = SseReader::new(self.sse(path, role, subject, None).await);
        let snapshot = reader
            .next(Duration::from_secs(20))
            .await
            .expect("a first event");
        assert_eq!(snapshot.event, "snapshot");
        (reader, snapshot)
    }
}

/// One Server-Sent Event.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SseEvent {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

impl SseEvent {
    /// The data as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{e}: {}", self.data))
    }
}

/// Reads Server-Sent Events off a response, as a browser's `EventSource` would.
pub struct SseReader {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
    /// Whether the server ended the stream.
    pub ended: bool,
}

impl SseReader {
    /// A reader of `response` (which must be a 200 event stream).
    pub fn new(response: reqwest::Response) -> Self {
        assert_eq!(response.status().as_u16(), 200);
        assert!(
            response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("text/event-stream"))
        );
        Self {
            body: futures::StreamExt::boxed(response.bytes_stream()),
            buffer: String::new(),
            ended: false,
        }
    }

    /// The next event (comments skipped), waiting at most `within`; `None` on timeout or end.
    pub async fn next(&mut self, within: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent::default();
                let mut data = Vec::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event.event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("id:") {
                        event.id = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push(v.strip_prefix(' ').unwrap_or(v).to_owned());
                    }
                }
                if !data.is_empty() || !event.event.is_empty() {
                    event.data = data.join("\n");
                    return Some(event);
                }
            }
            let chunk = tokio::time::timeout_at(deadline, futures::StreamExt::next(&mut self.body))
                .await
                .ok()?;
            match chunk {
                Some(Ok(bytes)) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                _ => {
                    self.ended = true;
                    return None;
                }
            }
        }
    }

    /// Events until one named `name` (inclusive), within `within` in all.
    pub async fn until(&mut self, name: &str, within: Duration) -> Vec<SseEvent> {
        let deadline = tokio::time::Instant::now() + within;
        let mut seen = Vec::new();
        while let Some(event) = self
            .next(deadline.saturating_duration_since(tokio::time::Instant::now()))
            .await
        {
            let done = event.event == name;
            seen.push(event);
            if done {
                return seen;
            }
        }
        panic!("no `{name}` event within {within:?}; got {seen:?}");
    }
}

/// Stops in-process workers when dropped.
#[derive(Debug)]
pub struct WorkerGuard(CancellationToken);

impl Drop for WorkerGuard {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// Polls `check` every 200 ms until it returns true or `within` passes; returns the last result.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A `courier worker` process on the test's database.
pub struct WorkerProcess(Child);

impl WorkerProcess {
    /// Starts `courier worker` on `app`'s database and key prefix, with extra `env`.
    pub fn start(app: &TestApp, env: &[(&str, &str)]) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_courier"))
            .args(["--dev", "worker"])
            .env("DATABASE_URL", database_url(&app.db_name))
            .env("VALKEY_URL", valkey_url())
            .env("COURIER_KEY_PREFIX", format!("test:{}:", app.db_name))
            .env("LOG_LEVEL", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("courier worker starts");
        Self(child)
    }

    /// SIGKILL: no drain, no goodbye — a crash.
    pub fn kill(mut self) {
        self.0.kill().expect("kill");
        self.0.wait().expect("reap");
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The valkey-server binary: `VALKEY_SERVER` (which `just test` sets from `ops/valkey-bin`),
/// else one on PATH.
fn valkey_server_binary() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("VALKEY_SERVER") {
        return path.into();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("valkey-server"))
        .find(|p| p.exists())
        .expect("no valkey-server found: run the tests with `just test`, or set VALKEY_SERVER")
}

/// A private valkey-server, killed when dropped.
#[derive(Debug)]
pub struct ValkeyProcess(Child);

impl Drop for ValkeyProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a private, empty valkey-server on `port` (no persistence).
pub fn start_valkey(port: u16) -> ValkeyProcess {
    let child = Command::new(valkey_server_binary())
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("valkey-server starts");
    ValkeyProcess(child)
}

/// The ids of the available drivers `GET /v1/drivers/nearby` lists, as an operator.
pub async fn nearby_ids(
    app: &TestApp,
    lat: f64,
    lon: f64,
    radius_km: f64,
    limit: usize,
) -> Vec<i64> {
    let response = app
        .get_as(
            &format!("/v1/drivers/nearby?lat={lat}&lon={lon}&radius_km={radius_km}&limit={limit}"),
            Role::Operator,
            OPERATOR,
        )
        .await;
    assert_eq!(response.status().as_u16(), 200);
    let body: serde_json::Value = response.json().await.expect("json");
    body["drivers"]
        .as_array()
        .expect("array")
        .iter()
        .map(|d| d["driver_id"].as_i64().expect("id"))
        .collect()
}
