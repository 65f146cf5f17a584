//! The expiry sweeper: every [`SWEEP_EVERY`], the driver state Valkey copies from Postgres is
//! restored if Valkey lost it ([`LocationService::ensure_state`]), and so are the offer notes
//! ([`LocationService::ensure_offer_notes`]), drivers silent for longer than the freshness
//! window leave the searchable set, and the `drivers_active` gauge (the spec's metric,
//! labelled by market) is set to the number of drivers seen within it — each market in turn. The sweep is one idempotent script per batch, so
//! every server process may run it at once without harm.

use std::time::Duration;

use crate::location::LocationService;
use crate::shutdown::CancellationToken;

/// How often the sweeper runs.
pub const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Runs the sweeper until `token` is cancelled.
pub async fn run(service: LocationService, token: CancellationToken) {
    let mut ticks = tokio::time::interval(SWEEP_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = token.cancelled() => return,
            _ = ticks.tick() => {}
        }
        // A Valkey that restarted empty has lost who is online: restore it without waiting
        // for the next location report.
        if let Err(error) = service.ensure_state().await {
            tracing::warn!(error = %error, "checking the driver state in Valkey failed");
        }
        if let Err(error) = service.ensure_offer_notes().await {
            tracing::warn!(error = %error, "checking the offer notes in Valkey failed");
        }
        match service.sweep().await {
            Ok(removed) if removed > 0 => {
                tracing::info!(removed, "stale drivers removed from search")
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(error = %error, "driver sweep failed"),
        }
        match service.active_counts().await {
            Ok(counts) => {
                for (market, active) in counts {
                    // Counts are far below 2^53, so the gauge's f64 is exact.
                    metrics::gauge!("drivers_active", "market" => market).set(active as f64);
                }
            }
            Err(error) => tracing::warn!(error = %error, "counting active drivers failed"),
        }
    }
}
