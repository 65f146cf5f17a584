//! Structured logs and Prometheus metrics.
//!
//! Logs are one JSON object per line carrying `service` and `version` on every line (the spec's
//! pino base fields), with the level taken from `RUST_LOG` if set, else `LOG_LEVEL`. Metrics go
//! through the `metrics` facade into one process-wide Prometheus recorder, which apalis's
//! prometheus layer shares; `GET /metrics` renders it.

use std::fmt;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing::Subscriber;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{Format, Json, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::dispatch::{MATCH_BUCKETS, MATCH_DURATION};
use crate::location::{GEO_BUCKETS, GEO_QUERY_DURATION, INGEST_GROUP_BUCKETS, INGEST_GROUP_SIZE};

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// The service name written on every log line.
pub const SERVICE_NAME: &str = "courier";

/// The version written on every log line: `APP_VERSION` at build time, else the crate version.
pub const VERSION: &str = match option_env!("APP_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};

/// Name of the HTTP latency histogram (the spec's metric).
pub const HTTP_REQUEST_DURATION: &str = "http_request_duration_seconds";

/// The spec's buckets for `http_request_duration_seconds`.
pub const HTTP_BUCKETS: [f64; 8] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// Installs the global log subscriber. Safe to call more than once: later calls do nothing.
pub fn init_logging(level: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let result = match format {
        LogFormat::Json => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .fmt_fields(JsonFields::new())
            .event_format(WithServiceFields::new(
                tracing_subscriber::fmt::format().json().flatten_event(true),
            ))
            .try_init(),
        LogFormat::Pretty => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init(),
    };
    // An error only means a subscriber is already installed (a second call in tests).
    drop(result);
}

/// Wraps the JSON formatter so that every line starts with the service name and version.
struct WithServiceFields {
    inner: Format<Json>,
    prefix: String,
}

impl WithServiceFields {
    fn new(inner: Format<Json>) -> Self {
        let prefix = format!(
            "{{\"service\":{},\"version\":{},",
            serde_json::Value::from(SERVICE_NAME),
            serde_json::Value::from(VERSION)
        );
        Self { inner, prefix }
    }
}

impl<S, N> FormatEvent<S, N> for WithServiceFields
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => {
                writer.write_str(&self.prefix)?;
                writer.write_str(rest)
            }
            None => writer.write_str(&line),
        }
    }
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        // The spec's buckets; a histogram without buckets would be exported as a summary.
        let buckets: [(&str, &[f64]); 4] = [
            (HTTP_REQUEST_DURATION, &HTTP_BUCKETS),
            (GEO_QUERY_DURATION, &GEO_BUCKETS),
            (INGEST_GROUP_SIZE, &INGEST_GROUP_BUCKETS),
            (MATCH_DURATION, &MATCH_BUCKETS),
        ];
        let builder = buckets
            .into_iter()
            .try_fold(PrometheusBuilder::new(), |builder, (name, buckets)| {
                builder.set_buckets_for_metric(Matcher::Full(name.to_owned()), buckets)
            })
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics may be incomplete");
        }
        metrics::describe_histogram!(
            HTTP_REQUEST_DURATION,
            metrics::Unit::Seconds,
            "Duration of HTTP requests"
        );
        metrics::describe_histogram!(
            GEO_QUERY_DURATION,
            metrics::Unit::Seconds,
            "Valkey geo query latency"
        );
        metrics::describe_histogram!(
            INGEST_GROUP_SIZE,
            metrics::Unit::Count,
            "Single location reports per coalesced Valkey script call"
        );
        metrics::describe_histogram!(
            MATCH_DURATION,
            metrics::Unit::Seconds,
            "Time from confirmation to driver assignment"
        );
        metrics::gauge!("courier_build_info", "version" => VERSION).set(1.0);
        handle
    })
}
