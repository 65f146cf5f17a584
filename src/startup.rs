//! Building and running the processes: the HTTP [`Application`] and the worker.
//!
//! [`Application::build`] binds its listener first (port 0 picks a free port, which the tests
//! use) and then serves until told to stop. Connections to Postgres and Valkey are lazy, so the
//! process starts even when a dependency is down and `/readyz` says which one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::ConnectInfo;
use tokio::net::TcpListener;

use crate::api::HttpSettings;
use crate::api::{self, AppState, Shared};
use crate::auth::TokenKeys;
use crate::auth::subjects::Subjects;
use crate::clock::Clock;
use crate::config::Config;
use crate::dispatch::Dispatcher;
use crate::eta::routing::Routing;
use crate::live::Hub;
use crate::location::history::{self, HistoryTask};
use crate::location::{LocationService, sweeper};
use crate::notify::Notifier;
use crate::payments::Payments;
use crate::ratelimit::RateLimiter;
use crate::shutdown::{self, CancellationToken};
use crate::valkey::Valkey;
use crate::{outbox, store, workers};

impl AppState {
    /// Connects (lazily) to the configured data stores and starts the background tasks the
    /// state needs (location history writer, driver sweeper), owned by the returned guard.
    pub fn from_config(config: &Config) -> anyhow::Result<(Self, Background)> {
        let db = store::pool(&config.database).context("invalid DATABASE_URL")?;
        let valkey = Valkey::new(&config.valkey).context("invalid VALKEY_URL")?;
        let (history_sender, history) = history::spawn(db.clone());
        let location = LocationService::new(valkey.clone(), db.clone(), history_sender);
        let routing = Routing::new(&config.routing, valkey.clone(), location.markets().clone())
            .context("cannot build the routing client")?;
        let sweeper_stop = CancellationToken::new();
        let sweeper = tokio::spawn(sweeper::run(location.clone(), sweeper_stop.clone()));
        let live = Hub::new(valkey.clone(), location.clone(), config.live.clone());
        let valkey_for_limits = valkey.clone();
        let state = Self::new(Shared {
            subjects: Subjects::new(db.clone()),
            db,
            valkey,
            tokens: TokenKeys::new(&config.jwt_secret),
            location,
            routing,
            order_limits: config.order_limits,
            clock: Clock::default(),
            live,
            limiter: RateLimiter::new(valkey_for_limits, config.rate_limits.clone()),
        });
        Ok((
            state,
            Background {
                history,
                sweeper_stop,
                sweeper,
            },
        ))
    }
}

/// Background tasks owned by a process: stop them with [`Background::shutdown`] once nothing
/// produces work for them any more (after the HTTP server drained).
#[derive(Debug)]
pub struct Background {
    history: HistoryTask,
    sweeper_stop: CancellationToken,
    sweeper: tokio::task::JoinHandle<()>,
}

impl Background {
    /// Stops the sweeper and flushes the location history.
    pub async fn shutdown(self) {
        self.sweeper_stop.cancel();
        let _ = self.sweeper.await;
        self.history.shutdown().await;
    }
}

/// The HTTP API, bound to its port and ready to serve.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    state: AppState,
    router: axum::Router,
    header_read_timeout: Duration,
}

impl Application {
    /// Binds the listener and builds the router.
    pub async fn build(state: AppState, http: &HttpSettings) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(http.listen)
            .await
            .with_context(|| format!("cannot listen on {}", http.listen))?;
        let local_addr = listener.local_addr()?;
        let router = api::router(state.clone(), http);
        Ok(Self {
            listener,
            local_addr,
            state,
            router,
            header_read_timeout: http.header_read_timeout,
        })
    }

    /// The address actually bound (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The port actually bound.
    pub fn port(&self) -> u16 {
        self.local_addr.port()
    }

    /// The state handlers share.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `token` is cancelled, then stops accepting and waits for in-flight
    /// requests to finish (idle connections are closed).
    ///
    /// The accept loop is ours rather than `axum::serve`'s for one setting it does not expose:
    /// a connection must send a request's headers within `COURIER_HEADER_READ_TIMEOUT` (the
    /// first request's, or the next one on a kept-alive connection), so clients that open
    /// connections and trickle bytes, or send nothing, cannot hold them for long.
    pub async fn run_until_stopped(self, token: CancellationToken) -> std::io::Result<()> {
        tracing::info!(addr = %self.local_addr, "HTTP API listening");
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(self.header_read_timeout);
        let connections = hyper_util::server::graceful::GracefulShutdown::new();
        loop {
            let (stream, peer) = tokio::select! {
                () = token.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        accept_failed(&error).await;
                        continue;
                    }
                },
            };
            let service = tower::ServiceExt::map_request(
                self.router.clone(),
                move |mut request: axum::http::Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(peer));
                    request
                },
            );
            let connection = http.serve_connection(
                hyper_util::rt::TokioIo::new(stream),
                hyper_util::service::TowerToHyperService::new(service),
            );
            let connection = connections.watch(connection);
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%peer, error = %error, "connection ended with an error");
                }
            });
        }
        drop(self.listener);
        // Live streams never finish by themselves: end them so the drain can complete.
        self.state.live.close();
        connections.shutdown().await;
        Ok(())
    }
}

/// A failed accept: connection-level errors (the peer gave up) are routine; anything else (out
/// of file descriptors) is logged and waited out, so the loop does not spin.
async fn accept_failed(error: &std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::ConnectionRefused
    ) {
        return;
    }
    tracing::error!(error = %error, "accepting a connection failed");
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// What the workers need, built from the process's state and configuration.
pub fn job_context(state: &AppState, config: &Config) -> anyhow::Result<workers::JobContext> {
    let db = store::handler_pool(
        &state.db,
        config.database.max_connections,
        workers::JOB_TIMEOUT,
    );
    Ok(workers::JobContext {
        db: db.clone(),
        dispatch: Dispatcher::new(
            db.clone(),
            state.location.clone(),
            state.routing.clone(),
            config.dispatch.clone(),
        ),
        payments: Payments::new(db, config.payments.clone())
            .context("cannot build the payment client")?,
        notifier: Notifier::new(config.webhooks.clone())
            .context("cannot build the webhook client")?,
        cron: Arc::new(config.cron.clone()),
        confirm_within: config.order_limits.confirm_within,
    })
}

/// Connections of a worker process's own pool (beside its job handlers').
pub const WORKER_OWN_CONNECTIONS: u32 = 4;

/// Which parts a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parts {
    /// The HTTP API only (`courier serve`).
    Api,
    /// Job workers and cron only (`courier worker`).
    Worker,
    /// Both (`courier run`).
    All,
}

/// Runs the chosen parts until SIGINT/SIGTERM, then drains each for at most `drain`.
pub async fn run_process(
    config: &Config,
    http: Option<&HttpSettings>,
    parts: Parts,
    migrate_on_start: bool,
    drain: Duration,
) -> anyhow::Result<()> {
    if config.dev {
        tracing::warn!("development mode: never run with --dev/COURIER_DEV in production");
    }
    // A worker serves no requests: its own pool (the markets, the location service's reads
    // and writes of driver state) needs few connections, and the job handlers get the
    // configured number in a pool of their own (docs/scaling.md, "Connections per process").
    let mut own = config.clone();
    if parts == Parts::Worker {
        own.database.max_connections = config.database.max_connections.min(WORKER_OWN_CONNECTIONS);
    }
    let (state, background) = AppState::from_config(&own)?;
    if migrate_on_start {
        store::ensure_database(&config.database).await?;
        store::migrate(&state.db).await?;
        tracing::info!("migrations applied");
    }
    let token = CancellationToken::new();
    shutdown::cancel_on_signal(token.clone());

    let api = async {
        match (parts, http) {
            (Parts::Api | Parts::All, Some(http)) => {
                let app = Application::build(state.clone(), http).await?;
                let served = shutdown::run_with_drain(
                    "http",
                    app.run_until_stopped(token.clone()),
                    &token,
                    drain,
                )
                .await;
                if let Some(result) = served {
                    result?;
                }
                Ok(())
            }
            (Parts::Api | Parts::All, None) => {
                anyhow::bail!("HTTP settings are required to serve the API")
            }
            (Parts::Worker, _) => Ok(()),
        }
    };
    let worker = async {
        if parts == Parts::Api {
            return Ok(());
        }
        // The monitor bounds its own drain; the outer bound is a backstop a little longer.
        let backstop = drain + Duration::from_secs(1);
        match shutdown::run_with_drain(
            "worker",
            workers::run(job_context(&state, config)?, token.clone(), drain),
            &token,
            backstop,
        )
        .await
        {
            Some(result) => result,
            None => Ok(()),
        }
    };
    // The outbox relay runs beside the workers (one of all relays leads; see outbox::relay).
    let relay = async {
        if parts == Parts::Api {
            return Ok(());
        }
        outbox::relay(state.db.clone(), &state.valkey, &config.outbox)?
            .run(token.clone())
            .await;
        Ok(())
    };
    // Whichever part fails first stops the others too.
    let cancel_on_error = |result: anyhow::Result<()>| {
        if result.is_err() {
            token.cancel();
        }
        result
    };
    let (api, worker, relay) = tokio::join!(
        async { cancel_on_error(api.await) },
        async { cancel_on_error(worker.await) },
        async { cancel_on_error(relay.await) }
    );
    // Requests have drained: nothing produces history any more, so flush it.
    background.shutdown().await;
    api.and(worker).and(relay)
}
