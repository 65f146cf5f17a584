//! Background jobs: apalis workers on Postgres storage, one file per job kind, and the
//! registry that builds the worker process's [`Monitor`].
//!
//! Jobs are enqueued by the workflow in the same transaction as the state change that causes
//! them (`apalis_postgres::queries::push_tasks` on the transaction), so a crash can neither lose
//! a job nor run one for a change that rolled back. The registry is empty until the workflow
//! issues add job kinds; the worker process already runs it and drains it on shutdown.

use std::time::Duration;

use apalis::prelude::Monitor;

use crate::shutdown::CancellationToken;

/// Builds the monitor with every registered worker.
pub fn monitor(drain: Duration) -> Monitor {
    Monitor::new().shutdown_timeout(drain)
}

/// Runs the job workers until `token` is cancelled, then lets running jobs finish within the
/// monitor's drain time.
pub async fn run(token: CancellationToken, drain: Duration) -> anyhow::Result<()> {
    let monitor = monitor(drain);
    tracing::info!("job workers started");
    let signal = token.clone();
    monitor
        .run_with_signal(async move {
            signal.cancelled().await;
            Ok(())
        })
        .await?;
    // A monitor with no workers returns at once; the process still runs until told to stop.
    token.cancelled().await;
    tracing::info!("job workers stopped");
    Ok(())
}
