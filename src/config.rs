//! Every setting courier reads, as clap arguments that each fall back to an environment variable,
//! and the validated [`Config`] built from them.
//!
//! Settings are parsed once, here: the rest of the code receives typed values (URLs that parsed,
//! a secret of a safe length, durations) and never re-reads the environment.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, ValueEnum};

use secrecy::{ExposeSecret, SecretString};

use crate::api::HttpSettings;
use crate::auth::{JwtSecret, MIN_JWT_SECRET_BYTES};
use crate::cron::CronSettings;
use crate::dispatch::DispatchSettings;
use crate::eta::estimator::Estimator;
use crate::eta::routing::RoutingSettings;
use crate::live::LiveSettings;
use crate::notify::WebhookSettings;
use crate::outbox::kafka::KafkaSettings;
use crate::outbox::relay::RelaySettings;
use crate::outbox::{OutboxSettings, SinkKind};
use crate::payments::PaymentSettings;
use crate::ratelimit::Limits;
use crate::store::DatabaseSettings;
use crate::telemetry::LogFormat;
use crate::valkey::ValkeySettings;
use crate::workflows::place::OrderLimits;

/// The development signing secret used when `--dev` is given without `COURIER_JWT_SECRET`.
/// Tokens signed with it are worthless outside a developer's machine, which is the point.
pub const DEV_JWT_SECRET: &str = "courier-development-secret-never-use-in-production";

/// Settings shared by every subcommand: where the data stores are and how to log.
#[derive(Args, Clone, Debug)]
pub struct CommonArgs {
    /// Postgres connection URL (PostGIS must be available in the server).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/courier",
        global = true
    )]
    pub database_url: String,

    /// Largest number of Postgres connections this process opens.
    #[arg(
        long,
        env = "COURIER_DB_MAX_CONNECTIONS",
        default_value_t = 10,
        global = true
    )]
    pub db_max_connections: u32,

    /// Valkey connection URL (`redis://` or `rediss://`).
    #[arg(
        long,
        env = "VALKEY_URL",
        default_value = "redis://127.0.0.1:6380",
        global = true
    )]
    pub valkey_url: String,

    /// Seed nodes of a Valkey Cluster, comma-separated URLs (`redis://host:port,…`). When set,
    /// courier runs on the cluster and `VALKEY_URL` is not used.
    #[arg(long, env = "VALKEY_CLUSTER_NODES", global = true)]
    pub valkey_cluster_nodes: Option<String>,

    /// Prefix of every Valkey key this process writes, so tenants and tests never collide.
    #[arg(
        long,
        env = "COURIER_KEY_PREFIX",
        default_value = "courier:",
        global = true
    )]
    pub key_prefix: String,

    /// HS256 signing secret for bearer tokens (at least 32 bytes). Required unless `--dev`.
    #[arg(
        long,
        env = "COURIER_JWT_SECRET",
        hide_env_values = true,
        global = true
    )]
    pub jwt_secret: Option<String>,

    /// Development mode: allows a built-in signing secret. Never set this in production.
    /// `COURIER_DEV` takes the usual words: 1/0, true/false, yes/no, on/off.
    #[arg(
        long,
        env = "COURIER_DEV",
        global = true,
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub dev: bool,

    /// Log level or filter (e.g. `info`, `courier=debug,sqlx=warn`); `RUST_LOG` wins if set.
    #[arg(long, env = "LOG_LEVEL", default_value = "info", global = true)]
    pub log_level: String,

    /// Lifetime of an order's first offer to a driver, e.g. `30s`.
    #[arg(long, env = "COURIER_OFFER_TTL", default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    pub offer_ttl: Duration,

    /// Lifetime of an order's later offers, e.g. `20s`.
    #[arg(long, env = "COURIER_LATER_OFFER_TTL", default_value = "20s", value_parser = humantime::parse_duration, global = true)]
    pub later_offer_ttl: Duration,

    /// Delay before the second matching round when the first found no driver; doubles per round.
    #[arg(long, env = "COURIER_MATCH_RETRY_BASE", default_value = "15s", value_parser = humantime::parse_duration, global = true)]
    pub match_retry_base: Duration,

    /// Longest delay between matching rounds.
    #[arg(long, env = "COURIER_MATCH_RETRY_CAP", default_value = "2m", value_parser = humantime::parse_duration, global = true)]
    pub match_retry_cap: Duration,

    /// Empty matching rounds after which an order is flagged for operators.
    #[arg(
        long,
        env = "COURIER_MATCH_ALERT_ROUNDS",
        default_value_t = 5,
        global = true
    )]
    pub match_alert_rounds: u32,

    /// How long a driver who passed on an order (declined it or let the offer lapse) is not
    /// offered it again, e.g. `3m`.
    #[arg(long, env = "COURIER_REOFFER_AFTER", default_value = "3m", value_parser = humantime::parse_duration, global = true)]
    pub reoffer_after: Duration,

    /// How often a market that dispatches by cycle (`PATCH /v1/markets/{id}` with
    /// `"dispatch": "cycle"`) runs one, e.g. `5s`.
    #[arg(long, env = "COURIER_DISPATCH_CYCLE", default_value = "5s", value_parser = humantime::parse_duration, global = true)]
    pub dispatch_cycle: Duration,

    /// In a cycle market, how long before the food is ready a driver may arrive and the order
    /// still be offered now; later pairs wait for a later cycle, e.g. `3m`.
    #[arg(long, env = "COURIER_DISPATCH_SLACK", default_value = "3m", value_parser = humantime::parse_duration, global = true)]
    pub dispatch_slack: Duration,

    /// In a cycle market, how long past an order's due time its per-order fallback waits for
    /// the cycle to offer it, e.g. `30s`.
    #[arg(long, env = "COURIER_DISPATCH_GRACE", default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    pub dispatch_grace: Duration,

    /// Base URL of an OSRM routing server (e.g. `http://osrm:5000`); unset, ETAs use the
    /// built-in estimator.
    #[arg(long, env = "COURIER_ROUTING_URL", global = true)]
    pub routing_url: Option<String>,

    /// Longest a routing request may take before the estimator answers instead, e.g. `2s`.
    #[arg(long, env = "COURIER_ROUTING_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration, global = true)]
    pub routing_timeout: Duration,

    /// Average city driving speed of the built-in estimator, km/h.
    #[arg(
        long,
        env = "COURIER_ROUTING_SPEED_KMH",
        default_value_t = 25.0,
        global = true
    )]
    pub routing_speed_kmh: f64,

    /// Largest order total a customer may place, in cents (items and delivery fee).
    #[arg(
        long,
        env = "COURIER_MAX_ORDER_TOTAL_CENTS",
        default_value_t = OrderLimits::default().max_total_cents,
        global = true
    )]
    pub max_order_total_cents: i64,

    /// How long a restaurant has to confirm a placed order before it is cancelled, e.g. `10m`.
    #[arg(long, env = "COURIER_CONFIRM_TIMEOUT", default_value = "10m", value_parser = humantime::parse_duration, global = true)]
    pub confirm_timeout: Duration,

    /// Whether API requests are rate-limited (per principal and route class, shared by every
    /// API process through Valkey).
    #[arg(
        long,
        env = "COURIER_RATE_LIMITS_ENABLED",
        default_value = "true",
        value_parser = clap::builder::BoolishValueParser::new(),
        action = clap::ArgAction::Set,
        global = true
    )]
    pub rate_limits_enabled: bool,

    /// Limits that differ from the defaults, `class=rate/unit:burst,…` (classes: location,
    /// location_batch, order_create, write, read, stream, unauthenticated), e.g.
    /// `location=5/s:10,order_create=6/m:5`.
    #[arg(long, env = "COURIER_RATE_LIMITS", default_value = "", global = true)]
    pub rate_limits: String,

    /// Operators' limits are everyone else's times this (1–1000).
    #[arg(
        long,
        env = "COURIER_RATE_LIMIT_OPERATOR_FACTOR",
        default_value_t = 10,
        global = true
    )]
    pub rate_limit_operator_factor: u32,

    /// Payments, notifications and cron.
    #[command(flatten)]
    pub workflow: WorkflowArgs,

    /// The outbox relay and live streams.
    #[command(flatten)]
    pub events: EventsArgs,

    /// Log format: one JSON object per line, or human-readable text.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Json, global = true)]
    pub log_format: LogFormat,
}

/// Which payment provider captures payments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PaymentProviderKind {
    /// Records captures in Postgres (development).
    Ledger,
    /// A Stripe-style HTTP API.
    Stripe,
}

/// Settings of the workflow's later steps: payments, webhooks and cron.
#[derive(Args, Clone, Debug)]
pub struct WorkflowArgs {
    /// Payment provider.
    #[arg(long, env = "COURIER_PAYMENT_PROVIDER", value_enum, default_value_t = PaymentProviderKind::Ledger, global = true)]
    pub payment_provider: PaymentProviderKind,

    /// Base URL of the Stripe-style payment API.
    #[arg(
        long,
        env = "COURIER_STRIPE_API_URL",
        default_value = "https://api.stripe.com",
        global = true
    )]
    pub stripe_api_url: String,

    /// Secret key of the payment API (required with `--payment-provider stripe`).
    #[arg(
        long,
        env = "COURIER_STRIPE_SECRET_KEY",
        hide_env_values = true,
        global = true
    )]
    pub stripe_secret_key: Option<String>,

    /// Longest a payment request may take, e.g. `10s`.
    #[arg(long, env = "COURIER_PAYMENT_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub payment_timeout: Duration,

    /// Delay before the second capture attempt after a retryable failure; doubles per attempt.
    #[arg(long, env = "COURIER_PAYMENT_RETRY_BASE", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub payment_retry_base: Duration,

    /// Longest delay between capture attempts.
    #[arg(long, env = "COURIER_PAYMENT_RETRY_CAP", default_value = "10m", value_parser = humantime::parse_duration, global = true)]
    pub payment_retry_cap: Duration,

    /// Capture attempts before giving up and flagging the order.
    #[arg(
        long,
        env = "COURIER_PAYMENT_MAX_ATTEMPTS",
        default_value_t = 8,
        global = true
    )]
    pub payment_max_attempts: u32,

    /// How long a payment authorisation is trusted to hold (card holds lapse after about 7
    /// days); an order not delivered by then is cancelled `authorization_expired`, e.g. `6d`.
    #[arg(long, env = "COURIER_AUTHORIZATION_VALID_FOR", default_value = "6d", value_parser = humantime::parse_duration, global = true)]
    pub authorization_valid_for: Duration,

    /// Webhook URL for customer notifications.
    #[arg(long, env = "COURIER_WEBHOOK_CUSTOMER_URL", global = true)]
    pub webhook_customer_url: Option<String>,

    /// Webhook URL for driver notifications.
    #[arg(long, env = "COURIER_WEBHOOK_DRIVER_URL", global = true)]
    pub webhook_driver_url: Option<String>,

    /// Webhook URL for restaurant notifications.
    #[arg(long, env = "COURIER_WEBHOOK_RESTAURANT_URL", global = true)]
    pub webhook_restaurant_url: Option<String>,

    /// Shared secret signing webhooks (at least 16 bytes; required when a webhook URL is set).
    #[arg(
        long,
        env = "COURIER_WEBHOOK_SECRET",
        hide_env_values = true,
        global = true
    )]
    pub webhook_secret: Option<String>,

    /// Attempts per webhook before giving up.
    #[arg(
        long,
        env = "COURIER_WEBHOOK_MAX_ATTEMPTS",
        default_value_t = 8,
        global = true
    )]
    pub webhook_max_attempts: u32,

    /// Schedule (cron with seconds) of auto-completion of delivered orders.
    #[arg(
        long,
        env = "COURIER_CRON_AUTO_COMPLETE",
        default_value = "0 * * * * *",
        global = true
    )]
    pub cron_auto_complete: String,

    /// Schedule of the stuck-order sweep.
    #[arg(
        long,
        env = "COURIER_CRON_STUCK_ORDERS",
        default_value = "30 * * * * *",
        global = true
    )]
    pub cron_stuck_orders: String,

    /// Schedule of job, key and cron housekeeping.
    #[arg(
        long,
        env = "COURIER_CRON_HOUSEKEEPING",
        default_value = "0 */10 * * * *",
        global = true
    )]
    pub cron_housekeeping: String,

    /// Schedule of location-history partition maintenance.
    #[arg(
        long,
        env = "COURIER_CRON_PARTITIONS",
        default_value = "0 5 * * * *",
        global = true
    )]
    pub cron_partitions: String,

    /// Delivered orders older than this are completed, e.g. `1h`.
    #[arg(long, env = "COURIER_AUTO_COMPLETE_AFTER", default_value = "1h", value_parser = humantime::parse_duration, global = true)]
    pub auto_complete_after: Duration,

    /// Days of location history kept.
    #[arg(
        long,
        env = "COURIER_LOCATION_RETENTION_DAYS",
        default_value_t = 30,
        global = true
    )]
    pub location_retention_days: u32,

    /// Days of location-history partitions created ahead.
    #[arg(
        long,
        env = "COURIER_PARTITIONS_AHEAD_DAYS",
        default_value_t = 3,
        global = true
    )]
    pub partitions_ahead_days: u32,

    /// Finished job rows older than this are deleted, e.g. `7d`.
    #[arg(long, env = "COURIER_JOB_RETENTION", default_value = "7d", value_parser = humantime::parse_duration, global = true)]
    pub job_retention: Duration,
}

/// Settings of the outbox relay (`worker`, `run`) and of the live streams (SSE).
#[derive(Args, Clone, Debug)]
pub struct EventsArgs {
    /// Where the relay publishes events, comma-separated: `stream` (Valkey), `kafka`.
    #[arg(
        long,
        env = "COURIER_EVENT_SINKS",
        value_enum,
        value_delimiter = ',',
        default_value = "stream",
        global = true
    )]
    pub event_sinks: Vec<SinkKind>,

    /// Approximate maximum length of the Valkey events stream (`XADD … MAXLEN ~`).
    #[arg(
        long,
        env = "COURIER_EVENT_STREAM_MAX_LEN",
        default_value_t = 500_000,
        global = true
    )]
    pub event_stream_max_len: u64,

    /// Kafka bootstrap brokers, comma-separated `host:port` (required by the kafka sink).
    #[arg(
        long,
        env = "COURIER_KAFKA_BROKERS",
        value_delimiter = ',',
        global = true
    )]
    pub kafka_brokers: Vec<String>,

    /// The Kafka topic of order events.
    #[arg(
        long,
        env = "COURIER_KAFKA_TOPIC",
        default_value = "courier.orders",
        global = true
    )]
    pub kafka_topic: String,

    /// Partitions of the Kafka topic when the relay creates it.
    #[arg(
        long,
        env = "COURIER_KAFKA_PARTITIONS",
        default_value_t = 6,
        global = true
    )]
    pub kafka_partitions: i32,

    /// Bound on connecting to Kafka and producing one batch.
    #[arg(long, env = "COURIER_KAFKA_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub kafka_timeout: Duration,

    /// Outbox rows the relay publishes per batch.
    #[arg(
        long,
        env = "COURIER_RELAY_BATCH",
        default_value_t = 500,
        global = true
    )]
    pub relay_batch: i64,

    /// How often the relay polls besides NOTIFY (and a standby relay tries to lead).
    #[arg(long, env = "COURIER_RELAY_POLL", default_value = "1s", value_parser = humantime::parse_duration, global = true)]
    pub relay_poll: Duration,

    /// How long the relay lets events gather after a notification (fewer, larger batches
    /// under load, at that much latency).
    #[arg(long, env = "COURIER_RELAY_GATHER", default_value = "25ms", value_parser = humantime::parse_duration, global = true)]
    pub relay_gather: Duration,

    /// Published outbox rows older than this are deleted by housekeeping, e.g. `3d`.
    #[arg(long, env = "COURIER_OUTBOX_RETENTION", default_value = "3d", value_parser = humantime::parse_duration, global = true)]
    pub outbox_retention: Duration,

    /// Interval of SSE keep-alive comments.
    #[arg(long, env = "COURIER_SSE_KEEP_ALIVE", default_value = "15s", value_parser = humantime::parse_duration, global = true)]
    pub sse_keep_alive: Duration,
}

fn outbox_settings(args: &EventsArgs) -> Result<OutboxSettings, ConfigError> {
    let invalid = |message: &str| ConfigError::Workflow(message.to_owned());
    if args.event_sinks.is_empty() {
        return Err(invalid("COURIER_EVENT_SINKS needs at least one sink"));
    }
    if !(1_000..=100_000_000).contains(&args.event_stream_max_len) {
        return Err(invalid(
            "COURIER_EVENT_STREAM_MAX_LEN must be 1000 to 100000000",
        ));
    }
    if !(1..=10_000).contains(&args.relay_batch) {
        return Err(invalid("COURIER_RELAY_BATCH must be 1 to 10000"));
    }
    if !(Duration::from_millis(10)..=Duration::from_secs(60)).contains(&args.relay_poll) {
        return Err(invalid("COURIER_RELAY_POLL must be between 10ms and 60s"));
    }
    if args.relay_gather > Duration::from_secs(1) {
        return Err(invalid("COURIER_RELAY_GATHER must be at most 1s"));
    }
    let brokers: Vec<String> = args
        .kafka_brokers
        .iter()
        .map(|b| b.trim().to_owned())
        .filter(|b| !b.is_empty())
        .collect();
    if brokers
        .iter()
        .any(|b| b.contains("://") || !b.contains(':'))
    {
        return Err(invalid(
            "COURIER_KAFKA_BROKERS are host:port pairs, comma-separated",
        ));
    }
    let kafka = if brokers.is_empty() {
        if args.event_sinks.contains(&SinkKind::Kafka) {
            return Err(invalid("the kafka sink needs COURIER_KAFKA_BROKERS"));
        }
        None
    } else {
        if args.kafka_topic.is_empty()
            || args.kafka_topic.len() > 249
            || !args
                .kafka_topic
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(invalid(
                "COURIER_KAFKA_TOPIC: 1 to 249 characters of letters, digits, '.', '_' and '-'",
            ));
        }
        if !(1..=10_000).contains(&args.kafka_partitions) {
            return Err(invalid("COURIER_KAFKA_PARTITIONS must be 1 to 10000"));
        }
        Some(KafkaSettings {
            brokers,
            topic: args.kafka_topic.clone(),
            partitions: args.kafka_partitions,
            timeout: args
                .kafka_timeout
                .clamp(Duration::from_secs(1), Duration::from_secs(120)),
        })
    };
    let mut sinks = args.event_sinks.clone();
    sinks.dedup();
    Ok(OutboxSettings {
        sinks,
        stream_max_len: args.event_stream_max_len,
        kafka,
        relay: RelaySettings {
            batch_size: args.relay_batch,
            poll_interval: args.relay_poll,
            gather: args.relay_gather,
            ..RelaySettings::default()
        },
    })
}

/// Settings of the HTTP server (`serve` and `run`).
#[derive(Args, Clone, Debug)]
pub struct HttpArgs {
    /// Address the HTTP API listens on.
    #[arg(long, env = "COURIER_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Largest accepted request body, in bytes.
    #[arg(long, env = "COURIER_MAX_BODY_BYTES", default_value_t = 256 * 1024)]
    pub max_body_bytes: usize,

    /// Longest a request may take before it is answered with 503 `timeout`, e.g. `30s`.
    #[arg(long, env = "COURIER_REQUEST_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// Longest a connection may take to send a request's headers before it is closed, e.g. `10s`.
    #[arg(long, env = "COURIER_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,
}

/// Settings of process lifetime shared by `serve`, `worker` and `run`.
#[derive(Args, Clone, Debug)]
pub struct LifecycleArgs {
    /// How long in-flight requests and jobs may take to finish after SIGINT/SIGTERM, e.g. `20s`.
    #[arg(long, env = "COURIER_SHUTDOWN_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,

    /// Apply database migrations before starting.
    #[arg(long, env = "COURIER_MIGRATE_ON_START")]
    pub migrate_on_start: bool,
}

/// A configuration error: what is wrong, in words an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("DATABASE_URL is not a valid postgres URL: {0}")]
    DatabaseUrl(String),
    #[error("VALKEY_CLUSTER_NODES holds an entry that is not a redis/valkey URL: {0}")]
    ValkeyClusterNode(String),
    #[error("VALKEY_URL is not a valid redis/valkey URL: {0}")]
    ValkeyUrl(String),
    #[error(
        "no token signing secret: set COURIER_JWT_SECRET (at least {MIN_JWT_SECRET_BYTES} bytes), or pass --dev on a development machine"
    )]
    MissingJwtSecret,
    #[error("COURIER_JWT_SECRET is too short: {0} bytes, at least {MIN_JWT_SECRET_BYTES} required")]
    ShortJwtSecret(usize),
    #[error("COURIER_KEY_PREFIX must be 1 to 64 printable characters without spaces")]
    KeyPrefix,
    #[error("COURIER_DB_MAX_CONNECTIONS must be between 1 and 1000")]
    DbMaxConnections,
    #[error("COURIER_MAX_BODY_BYTES must be between 1 KiB and 64 MiB")]
    MaxBodyBytes,
    #[error("COURIER_HEADER_READ_TIMEOUT must be between 100ms and 5m")]
    HeaderReadTimeout,
    #[error(
        "COURIER_OFFER_TTL and COURIER_LATER_OFFER_TTL must be between 1 second and 10 minutes"
    )]
    OfferTtl,
    #[error(
        "COURIER_MATCH_RETRY_BASE must be at least 1 second and at most COURIER_MATCH_RETRY_CAP (at most 1 hour)"
    )]
    MatchRetry,
    #[error("COURIER_MATCH_ALERT_ROUNDS must be between 1 and 1000")]
    MatchAlertRounds,
    #[error("COURIER_REOFFER_AFTER must be between 1 second and 24 hours")]
    ReofferAfter,
    #[error(
        "COURIER_DISPATCH_CYCLE must be 100 ms to 5 minutes, COURIER_DISPATCH_SLACK at most an hour and COURIER_DISPATCH_GRACE 1 second to 10 minutes"
    )]
    DispatchCycle,
    #[error("COURIER_ROUTING_URL must be an http(s) URL: {0}")]
    RoutingUrl(String),
    #[error("COURIER_ROUTING_TIMEOUT must be between 100 ms and 30 s")]
    RoutingTimeout,
    #[error("COURIER_ROUTING_SPEED_KMH must be between 1 and 200")]
    RoutingSpeed,
    #[error("{0}")]
    Workflow(String),
}

/// Validated settings of one courier process.
#[derive(Clone, Debug)]
pub struct Config {
    pub database: DatabaseSettings,
    pub valkey: ValkeySettings,
    pub jwt_secret: JwtSecret,
    pub dev: bool,
    pub dispatch: DispatchSettings,
    pub routing: RoutingSettings,
    pub payments: PaymentSettings,
    pub webhooks: WebhookSettings,
    pub cron: CronSettings,
    pub order_limits: OrderLimits,
    pub outbox: OutboxSettings,
    pub live: LiveSettings,
    pub rate_limits: Limits,
}

impl Config {
    /// Validates the common arguments into a [`Config`].
    pub fn from_args(args: &CommonArgs) -> Result<Self, ConfigError> {
        url::Url::parse(&args.database_url)
            .ok()
            .filter(|u| matches!(u.scheme(), "postgres" | "postgresql"))
            .ok_or_else(|| ConfigError::DatabaseUrl(redact_url(&args.database_url)))?;
        url::Url::parse(&args.valkey_url)
            .ok()
            .filter(|u| matches!(u.scheme(), "redis" | "rediss" | "valkey" | "valkeys"))
            .ok_or_else(|| ConfigError::ValkeyUrl(redact_url(&args.valkey_url)))?;
        let cluster_nodes = cluster_nodes(args.valkey_cluster_nodes.as_deref())?;
        if !(1..=1000).contains(&args.db_max_connections) {
            return Err(ConfigError::DbMaxConnections);
        }
        validate_key_prefix(&args.key_prefix)?;
        let jwt_secret = jwt_secret(args.jwt_secret.as_deref(), args.dev)?;
        let dispatch = dispatch_settings(args)?;
        let routing = routing_settings(args)?;
        let (payments, webhooks, mut cron) = workflow_settings(&args.workflow)?;
        let outbox = outbox_settings(&args.events)?;
        if args.events.outbox_retention < Duration::from_secs(60) {
            return Err(ConfigError::Workflow(
                "COURIER_OUTBOX_RETENTION must be at least a minute".to_owned(),
            ));
        }
        cron.outbox_retention = args.events.outbox_retention;
        if !(Duration::from_secs(1)..=Duration::from_secs(300))
            .contains(&args.events.sse_keep_alive)
        {
            return Err(ConfigError::Workflow(
                "COURIER_SSE_KEEP_ALIVE must be between 1s and 5m".to_owned(),
            ));
        }
        if !(100..=MAX_ORDER_TOTAL_CAP_CENTS).contains(&args.max_order_total_cents) {
            return Err(ConfigError::Workflow(format!(
                "COURIER_MAX_ORDER_TOTAL_CENTS must be 100 to {MAX_ORDER_TOTAL_CAP_CENTS}"
            )));
        }
        if !(Duration::from_secs(5)..=Duration::from_secs(24 * 3600))
            .contains(&args.confirm_timeout)
        {
            return Err(ConfigError::Workflow(
                "COURIER_CONFIRM_TIMEOUT must be between 5 seconds and 24 hours".to_owned(),
            ));
        }
        Ok(Self {
            database: DatabaseSettings {
                url: args.database_url.clone().into(),
                max_connections: args.db_max_connections,
            },
            valkey: ValkeySettings {
                url: args.valkey_url.clone().into(),
                cluster_nodes,
                key_prefix: args.key_prefix.clone(),
            },
            jwt_secret,
            dev: args.dev,
            dispatch,
            routing,
            payments,
            webhooks,
            cron,
            order_limits: OrderLimits {
                max_total_cents: args.max_order_total_cents,
                confirm_within: args.confirm_timeout,
            },
            outbox,
            live: LiveSettings {
                keep_alive: args.events.sse_keep_alive,
                ..LiveSettings::default()
            },
            rate_limits: rate_limits(args)?,
        })
    }
}

/// The cluster's seed nodes: each a `redis://` or `rediss://` URL; none when unset or blank.
fn cluster_nodes(raw: Option<&str>) -> Result<Vec<SecretString>, ConfigError> {
    raw.unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|node| !node.is_empty())
        .map(|node| {
            url::Url::parse(node)
                .ok()
                .filter(|u| matches!(u.scheme(), "redis" | "rediss" | "valkey" | "valkeys"))
                .map(|_| SecretString::from(node.to_owned()))
                .ok_or_else(|| ConfigError::ValkeyClusterNode(redact_url(node)))
        })
        .collect()
}

fn rate_limits(args: &CommonArgs) -> Result<Limits, ConfigError> {
    if !(1..=1000).contains(&args.rate_limit_operator_factor) {
        return Err(ConfigError::Workflow(
            "COURIER_RATE_LIMIT_OPERATOR_FACTOR must be 1 to 1000".to_owned(),
        ));
    }
    Limits::new(args.rate_limits_enabled, args.rate_limit_operator_factor)
        .with_overrides(&args.rate_limits)
        .map_err(|e| ConfigError::Workflow(format!("COURIER_RATE_LIMITS: {e}")))
}

/// The highest order-total limit that may be configured ($10M): a sanity bound, not a policy.
const MAX_ORDER_TOTAL_CAP_CENTS: i64 = 1_000_000_000;

fn http_url(name: &str, raw: &str) -> Result<String, ConfigError> {
    url::Url::parse(raw)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .map(|_| raw.to_owned())
        .ok_or_else(|| {
            ConfigError::Workflow(format!(
                "{name} must be an http(s) URL: {}",
                redact_url(raw)
            ))
        })
}

fn schedule(name: &str, raw: &str) -> Result<cron::Schedule, ConfigError> {
    raw.parse().map_err(|e| {
        ConfigError::Workflow(format!(
            "{name} is not a cron schedule with seconds (e.g. \"0 * * * * *\"): {e}"
        ))
    })
}

fn workflow_settings(
    args: &WorkflowArgs,
) -> Result<(PaymentSettings, WebhookSettings, CronSettings), ConfigError> {
    let stripe = match args.payment_provider {
        PaymentProviderKind::Ledger => None,
        PaymentProviderKind::Stripe => {
            let key = args
                .stripe_secret_key
                .clone()
                .filter(|k| !k.is_empty())
                .ok_or_else(|| {
                    ConfigError::Workflow(
                        "COURIER_STRIPE_SECRET_KEY is required with COURIER_PAYMENT_PROVIDER=stripe"
                            .to_owned(),
                    )
                })?;
            Some((
                http_url("COURIER_STRIPE_API_URL", &args.stripe_api_url)?,
                key.into(),
            ))
        }
    };
    if args.payment_retry_base.is_zero()
        || args.payment_retry_base > args.payment_retry_cap
        || !(1..=100).contains(&args.payment_max_attempts)
    {
        return Err(ConfigError::Workflow(
            "payment retries: base > 0, base ≤ cap, and 1 to 100 attempts".to_owned(),
        ));
    }
    let payments = PaymentSettings {
        stripe,
        timeout: args.payment_timeout,
        retry_base: args.payment_retry_base,
        retry_cap: args.payment_retry_cap,
        max_attempts: args.payment_max_attempts,
    };
    if !(Duration::from_secs(60)..=Duration::from_secs(30 * 24 * 3600))
        .contains(&args.authorization_valid_for)
    {
        return Err(ConfigError::Workflow(
            "COURIER_AUTHORIZATION_VALID_FOR must be between 1m and 30d".to_owned(),
        ));
    }
    let url = |name: &str, raw: &Option<String>| {
        raw.as_deref()
            .filter(|u| !u.trim().is_empty())
            .map(|u| http_url(name, u))
            .transpose()
    };
    let webhooks = WebhookSettings {
        customer_url: url("COURIER_WEBHOOK_CUSTOMER_URL", &args.webhook_customer_url)?,
        driver_url: url("COURIER_WEBHOOK_DRIVER_URL", &args.webhook_driver_url)?,
        restaurant_url: url(
            "COURIER_WEBHOOK_RESTAURANT_URL",
            &args.webhook_restaurant_url,
        )?,
        secret: args
            .webhook_secret
            .clone()
            .unwrap_or_default()
            .into_bytes()
            .into(),
        max_attempts: args.webhook_max_attempts.clamp(1, 100),
        ..WebhookSettings::default()
    };
    let any_url = webhooks.customer_url.is_some()
        || webhooks.driver_url.is_some()
        || webhooks.restaurant_url.is_some();
    if any_url && webhooks.secret.expose_secret().len() < 16 {
        return Err(ConfigError::Workflow(
            "COURIER_WEBHOOK_SECRET (at least 16 bytes) is required when a webhook URL is set"
                .to_owned(),
        ));
    }
    if !(1..=3650).contains(&args.location_retention_days)
        || !(1..=60).contains(&args.partitions_ahead_days)
    {
        return Err(ConfigError::Workflow(
            "COURIER_LOCATION_RETENTION_DAYS must be 1–3650 and COURIER_PARTITIONS_AHEAD_DAYS 1–60"
                .to_owned(),
        ));
    }
    let cron = CronSettings {
        auto_complete: schedule("COURIER_CRON_AUTO_COMPLETE", &args.cron_auto_complete)?,
        stuck_orders: schedule("COURIER_CRON_STUCK_ORDERS", &args.cron_stuck_orders)?,
        housekeeping: schedule("COURIER_CRON_HOUSEKEEPING", &args.cron_housekeeping)?,
        partitions: schedule("COURIER_CRON_PARTITIONS", &args.cron_partitions)?,
        auto_complete_after: args.auto_complete_after,
        location_retention_days: args.location_retention_days,
        partitions_ahead_days: args.partitions_ahead_days,
        job_retention: args.job_retention,
        authorization_valid_for: args.authorization_valid_for,
        ..CronSettings::default()
    };
    Ok((payments, webhooks, cron))
}

fn routing_settings(args: &CommonArgs) -> Result<RoutingSettings, ConfigError> {
    let osrm_url = args
        .routing_url
        .as_deref()
        .filter(|u| !u.trim().is_empty())
        .map(|raw| {
            url::Url::parse(raw)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https"))
                .map(|_| raw.to_owned())
                .ok_or_else(|| ConfigError::RoutingUrl(redact_url(raw)))
        })
        .transpose()?;
    if !(Duration::from_millis(100)..=Duration::from_secs(30)).contains(&args.routing_timeout) {
        return Err(ConfigError::RoutingTimeout);
    }
    let estimator = Estimator::new(args.routing_speed_kmh).ok_or(ConfigError::RoutingSpeed)?;
    Ok(RoutingSettings {
        osrm_url,
        timeout: args.routing_timeout,
        estimator,
        ..RoutingSettings::default()
    })
}

fn dispatch_settings(args: &CommonArgs) -> Result<DispatchSettings, ConfigError> {
    let ttl = Duration::from_secs(1)..=Duration::from_secs(600);
    if !ttl.contains(&args.offer_ttl) || !ttl.contains(&args.later_offer_ttl) {
        return Err(ConfigError::OfferTtl);
    }
    if args.match_retry_base < Duration::from_secs(1)
        || args.match_retry_base > args.match_retry_cap
        || args.match_retry_cap > Duration::from_secs(3600)
    {
        return Err(ConfigError::MatchRetry);
    }
    if !(1..=1000).contains(&args.match_alert_rounds) {
        return Err(ConfigError::MatchAlertRounds);
    }
    if !(Duration::from_secs(1)..=Duration::from_secs(24 * 3600)).contains(&args.reoffer_after) {
        return Err(ConfigError::ReofferAfter);
    }
    if !(Duration::from_millis(100)..=Duration::from_secs(300)).contains(&args.dispatch_cycle)
        || args.dispatch_slack > Duration::from_secs(3600)
        || !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&args.dispatch_grace)
    {
        return Err(ConfigError::DispatchCycle);
    }
    Ok(DispatchSettings {
        cycle_interval: args.dispatch_cycle,
        cycle: crate::dispatch::assign::CycleSettings {
            slack: args.dispatch_slack,
            ..crate::dispatch::assign::CycleSettings::default()
        },
        cycle_grace: args.dispatch_grace,
        first_offer_ttl: args.offer_ttl,
        later_offer_ttl: args.later_offer_ttl,
        retry_base: args.match_retry_base,
        retry_cap: args.match_retry_cap,
        alert_after_rounds: args.match_alert_rounds,
        reoffer_after: args.reoffer_after,
        ..DispatchSettings::default()
    })
}

impl HttpSettings {
    /// Validates the HTTP arguments.
    pub fn from_args(args: &HttpArgs) -> Result<Self, ConfigError> {
        if !(1024..=64 * 1024 * 1024).contains(&args.max_body_bytes) {
            return Err(ConfigError::MaxBodyBytes);
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(300))
            .contains(&args.header_read_timeout)
        {
            return Err(ConfigError::HeaderReadTimeout);
        }
        Ok(Self {
            listen: args.listen,
            max_body_bytes: args.max_body_bytes,
            request_timeout: args.request_timeout,
            header_read_timeout: args.header_read_timeout,
        })
    }
}

/// Picks the signing secret: the configured one if long enough, the development one only in
/// development mode, otherwise an error.
pub fn jwt_secret(configured: Option<&str>, dev: bool) -> Result<JwtSecret, ConfigError> {
    match configured.filter(|s| !s.is_empty()) {
        Some(secret) if secret.len() < MIN_JWT_SECRET_BYTES => {
            Err(ConfigError::ShortJwtSecret(secret.len()))
        }
        Some(secret) => JwtSecret::from_bytes(secret.as_bytes().to_vec())
            .map_err(|short| ConfigError::ShortJwtSecret(short.0)),
        None if dev => JwtSecret::from_bytes(DEV_JWT_SECRET.as_bytes().to_vec())
            .map_err(|short| ConfigError::ShortJwtSecret(short.0)),
        None => Err(ConfigError::MissingJwtSecret),
    }
}

fn validate_key_prefix(prefix: &str) -> Result<(), ConfigError> {
    let ok = (1..=64).contains(&prefix.len()) && prefix.chars().all(|c| c.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(ConfigError::KeyPrefix)
    }
}

/// The URL with any password replaced by `***`, safe to print in errors and logs.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) => {
            if url.password().is_some() {
                // Setting a password only fails for URLs that cannot have one, and this one has one.
                let _ = url.set_password(Some("***"));
            }
            url.to_string()
        }
        Err(_) => "<unparseable URL>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_is_required_outside_dev_mode() {
        assert!(matches!(
            jwt_secret(None, false),
            Err(ConfigError::MissingJwtSecret)
        ));
        assert!(matches!(
            jwt_secret(Some(""), false),
            Err(ConfigError::MissingJwtSecret)
        ));
    }

    #[test]
    fn dev_mode_falls_back_to_the_dev_secret_but_a_configured_one_wins() {
        let dev = jwt_secret(None, true).expect("dev secret");
        assert_eq!(dev.expose(), DEV_JWT_SECRET.as_bytes());
        let own = "x".repeat(40);
        let chosen = jwt_secret(Some(&own), true).expect("configured secret");
        assert_eq!(chosen.expose(), own.as_bytes());
    }

    #[test]
    fn short_secrets_are_rejected_even_in_dev_mode() {
        assert!(matches!(
            jwt_secret(Some("short"), true),
            Err(ConfigError::ShortJwtSecret(5))
        ));
    }

    #[test]
    fn secret_debug_output_hides_the_secret() {
        let secret = JwtSecret::from_bytes(b"s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t".to_vec())
            .expect("long enough");
        assert_eq!(format!("{secret:?}"), "JwtSecret(..)");
    }

    #[test]
    fn no_secret_of_the_config_shows_in_its_debug_output() {
        #[derive(clap::Parser)]
        struct Harness {
            #[command(flatten)]
            common: CommonArgs,
        }
        let secrets = [
            "db-password-1f2e3d",
            "valkey-password-4c5b6a",
            "jwt-secret-7a8b9c-jwt-secret-7a8b9c-jwt",
            "sk_live_stripe_0d1e2f",
            "webhook-secret-3a4b5c",
        ];
        let database = format!("postgres://app:{}@db:5432/courier", secrets[0]);
        let valkey = format!("redis://:{}@127.0.0.1:6380", secrets[1]);
        let args = <Harness as clap::Parser>::try_parse_from([
            "courier",
            "--database-url",
            &database,
            "--valkey-url",
            &valkey,
            "--jwt-secret",
            secrets[2],
            "--payment-provider",
            "stripe",
            "--stripe-secret-key",
            secrets[3],
            "--webhook-customer-url",
            "https://hooks.example.com/customer",
            "--webhook-secret",
            secrets[4],
        ])
        .expect("arguments parse");
        let config = Config::from_args(&args.common).expect("valid config");
        assert_eq!(config.jwt_secret.expose(), secrets[2].as_bytes());
        let shown = format!("{config:?} {config:#?}");
        assert!(shown.contains("hooks.example.com"), "the config is shown");
        for secret in secrets {
            assert!(!shown.contains(secret), "{secret} leaks: {shown}");
        }
    }

    /// The events settings of `flags` (after the required ones).
    fn events(flags: &[&str]) -> Result<OutboxSettings, ConfigError> {
        #[derive(clap::Parser)]
        struct Harness {
            #[command(flatten)]
            events: EventsArgs,
        }
        let mut argv = vec!["courier"];
        argv.extend_from_slice(flags);
        let args = <Harness as clap::Parser>::try_parse_from(argv).expect("arguments parse");
        outbox_settings(&args.events)
    }

    #[test]
    fn the_stream_is_the_default_sink_and_kafka_needs_brokers_and_a_sane_topic() {
        let default = events(&[]).expect("defaults");
        assert_eq!(default.sinks, [SinkKind::Stream]);
        assert_eq!(default.kafka, None);
        assert!(events(&["--event-sinks", "stream,kafka"]).is_err());
        let both = events(&[
            "--event-sinks",
            "stream,kafka",
            "--kafka-brokers",
            "k1:9092,k2:9092",
            "--kafka-topic",
            "orders.v1",
        ])
        .expect("valid");
        assert_eq!(both.sinks, [SinkKind::Stream, SinkKind::Kafka]);
        let kafka = both.kafka.expect("kafka settings");
        assert_eq!(kafka.brokers, ["k1:9092", "k2:9092"]);
        assert_eq!(kafka.topic, "orders.v1");
        for bad in [
            &["--kafka-brokers", "kafka://k1:9092"][..],
            &["--kafka-brokers", "k1"],
            &["--kafka-brokers", "k1:9092", "--kafka-topic", "bad topic"],
            &["--kafka-brokers", "k1:9092", "--kafka-partitions", "0"],
            &["--relay-batch", "0"],
            &["--relay-poll", "1ms"],
            &["--relay-gather", "2s"],
            &["--event-stream-max-len", "10"],
        ] {
            assert!(events(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn key_prefix_rules() {
        assert!(validate_key_prefix("courier:").is_ok());
        assert!(validate_key_prefix("").is_err());
        assert!(validate_key_prefix("has space").is_err());
        assert!(validate_key_prefix(&"p".repeat(65)).is_err());
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://app:hunter2@db:5432/courier"),
            "postgres://app:***@db:5432/courier"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6380"),
            "redis://127.0.0.1:6380"
        );
        assert_eq!(redact_url("not a url"), "<unparseable URL>");
    }
}
