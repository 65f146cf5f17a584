//! The relay: reads unpublished outbox rows in id order, hands each batch to every sink, and
//! marks the rows published. At least once: a crash between a sink's write and the mark
//! publishes the batch again, with the same event ids and sequences.
//!
//! # One leader
//! Every worker process runs a relay, and exactly one of them leads: the one holding a
//! Postgres session advisory lock ([`LEADER_LOCK`]) on a connection of its own. The others
//! try again every few seconds. A leader that dies (SIGKILL, lost network) loses its session
//! and so the lock, and a standby takes over within its retry interval. With one leader the
//! rows go out in id order, and one order's rows are in id order because every writer of an
//! order holds the order's row lock until it commits: per-order order holds.
//!
//! The leader wakes on `NOTIFY courier_outbox` (a trigger on the table) and polls as well, in
//! case a notification is lost with its listening connection. After a notification it waits
//! a moment (`gather`, 25 ms) before reading, so that under load one batch carries the events
//! of many commits rather than one statement pair per commit.

use std::time::{Duration, Instant};

use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool};

use crate::outbox::event::{OutboxRow, Published};
use crate::outbox::sink::Sink;
use crate::shutdown::CancellationToken;

/// The advisory lock key the leading relay holds ("courier outbox").
pub const LEADER_LOCK: i64 = 0x636f_7572_6f75_7462;
/// The channel the outbox trigger notifies.
pub const CHANNEL: &str = "courier_outbox";

/// How the relay runs.
#[derive(Clone, Debug)]
pub struct RelaySettings {
    /// Rows per batch.
    pub batch_size: i64,
    /// Polling interval (besides NOTIFY); also a standby's retry interval for the lock.
    pub poll_interval: Duration,
    /// An event larger than this is parked instead of published.
    pub max_event_bytes: usize,
    /// How long the relay lets events gather after a notification before it reads them.
    pub gather: Duration,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            batch_size: 500,
            poll_interval: Duration::from_secs(1),
            max_event_bytes: 1024 * 1024,
            gather: Duration::from_millis(25),
        }
    }
}

/// The relay of one process.
#[derive(Debug)]
pub struct Relay {
    db: PgPool,
    sinks: Vec<Box<dyn Sink>>,
    settings: RelaySettings,
}

/// Backoff after a failed publish: 0.5 s doubling to 30 s.
fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(6);
    Duration::from_millis(500 * (1u64 << exp)).min(Duration::from_secs(30))
}

impl Relay {
    /// A relay publishing `db`'s outbox to `sinks`.
    pub fn new(db: PgPool, sinks: Vec<Box<dyn Sink>>, settings: RelaySettings) -> Self {
        Self {
            db,
            sinks,
            settings,
        }
    }

    /// Runs until `token` is cancelled: waits for leadership, then publishes.
    pub async fn run(self, token: CancellationToken) {
        let names: Vec<&str> = self.sinks.iter().map(|s| s.name()).collect();
        tracing::info!(sinks = ?names, "outbox relay started");
        loop {
            match self.lead(&token).await {
                Ok(()) => break,
                Err(error) => {
                    metrics::gauge!("outbox_relay_leader").set(0.0);
                    tracing::warn!(error = %error, "outbox relay lost its connection; retrying");
                    tokio::select! {
                        () = token.cancelled() => break,
                        () = tokio::time::sleep(self.settings.poll_interval) => {}
                    }
                }
            }
        }
        metrics::gauge!("outbox_relay_leader").set(0.0);
        tracing::info!("outbox relay stopped");
    }

    /// Waits for the lock, then publishes until cancelled (`Ok`) or the connection fails.
    async fn lead(&self, token: &CancellationToken) -> Result<(), sqlx::Error> {
        let mut conn = self.db.acquire().await?.detach();
        loop {
            let leading: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(LEADER_LOCK)
                .fetch_one(&mut conn)
                .await?;
            if leading {
                break;
            }
            tokio::select! {
                () = token.cancelled() => return Ok(()),
                () = tokio::time::sleep(self.settings.poll_interval) => {}
            }
        }
        metrics::gauge!("outbox_relay_leader").set(1.0);
        tracing::info!("outbox relay leads");
        let mut listener = PgListener::connect_with(&self.db).await?;
        listener.listen(CHANNEL).await?;
        let mut failures = 0u32;
        loop {
            if token.is_cancelled() {
                return Ok(());
            }
            match self.publish_batch(&mut conn).await? {
                Batch::Full => {
                    failures = 0;
                    continue;
                }
                Batch::Partial => failures = 0,
                Batch::Failed => {
                    failures += 1;
                    tokio::select! {
                        () = token.cancelled() => return Ok(()),
                        () = tokio::time::sleep(backoff(failures)) => {}
                    }
                    continue;
                }
            }
            tokio::select! {
                () = token.cancelled() => return Ok(()),
                notified = listener.recv() => {
                    notified?;
                    tokio::select! {
                        () = token.cancelled() => return Ok(()),
                        () = tokio::time::sleep(self.settings.gather) => {}
                    }
                }
                () = tokio::time::sleep(self.settings.poll_interval) => {}
            }
        }
    }

    /// Publishes the oldest unpublished rows once.
    async fn publish_batch(&self, conn: &mut PgConnection) -> Result<Batch, sqlx::Error> {
        let rows: Vec<OutboxRow> = sqlx::query_as(
            "SELECT o.id, o.event_id, o.topic, o.event_type, o.aggregate_id, o.payload,
                    o.created_at, ord.customer_id, ord.restaurant_id, ord.driver_id
             FROM outbox o LEFT JOIN orders ord ON ord.id = o.aggregate_id
             WHERE o.published_at IS NULL AND o.parked_at IS NULL
             ORDER BY o.id LIMIT $1",
        )
        .bind(self.settings.batch_size)
        .fetch_all(&mut *conn)
        .await?;
        let lag = rows.first().map_or(0.0, |r| {
            (chrono::Utc::now() - r.created_at)
                .as_seconds_f64()
                .max(0.0)
        });
        metrics::gauge!("outbox_lag_seconds").set(lag);
        if rows.is_empty() {
            return Ok(Batch::Partial);
        }
        let full = i64::try_from(rows.len()).unwrap_or(i64::MAX) >= self.settings.batch_size;
        let (events, oversized) = split_oversized(
            rows.iter().map(Published::from_row).collect(),
            self.settings.max_event_bytes,
        );
        if !oversized.is_empty() {
            park(conn, &oversized, self.settings.max_event_bytes).await?;
        }
        let next = if full { Batch::Full } else { Batch::Partial };
        if events.is_empty() {
            // Everything read was parked: no sink needs to hear of it.
            return Ok(next);
        }
        let started = Instant::now();
        for sink in &self.sinks {
            if let Err(error) = sink.publish(&events).await {
                metrics::counter!("outbox_publish_errors_total", "sink" => sink.name())
                    .increment(1);
                tracing::warn!(error = %error, events = events.len(), "publishing events failed; retrying");
                if let Some(first) = events.first() {
                    sqlx::query(
                        "UPDATE outbox SET attempts = attempts + 1, last_error = $2 WHERE id = $1",
                    )
                    .bind(first.sequence)
                    .bind(error.to_string())
                    .execute(&mut *conn)
                    .await?;
                }
                return Ok(Batch::Failed);
            }
        }
        let ids: Vec<i64> = events.iter().map(|e| e.sequence).collect();
        sqlx::query(
            "UPDATE outbox SET published_at = now(), attempts = attempts + 1, last_error = NULL
             WHERE id = ANY($1)",
        )
        .bind(&ids)
        .execute(&mut *conn)
        .await?;
        metrics::counter!("outbox_published_total").increment(ids.len() as u64);
        metrics::histogram!("outbox_publish_seconds").record(started.elapsed().as_secs_f64());
        Ok(next)
    }
}

/// What one batch did.
enum Batch {
    /// As many rows as a batch holds: there may be more.
    Full,
    /// Fewer: wait for the next notification.
    Partial,
    /// A sink failed: back off.
    Failed,
}

/// Splits off the events larger than `max_bytes` (their sequences).
fn split_oversized(events: Vec<Published>, max_bytes: usize) -> (Vec<Published>, Vec<i64>) {
    let (fit, oversized): (Vec<_>, Vec<_>) =
        events.into_iter().partition(|e| e.body.len() <= max_bytes);
    (fit, oversized.into_iter().map(|e| e.sequence).collect())
}

async fn park(conn: &mut PgConnection, ids: &[i64], max_bytes: usize) -> Result<(), sqlx::Error> {
    tracing::error!(
        rows = ?ids,
        max_bytes,
        "outbox events too large for the sinks were parked; see `courier admin events list --parked`"
    );
    metrics::counter!("outbox_parked_total").increment(ids.len() as u64);
    sqlx::query("UPDATE outbox SET parked_at = now(), last_error = $2 WHERE id = ANY($1)")
        .bind(ids)
        .bind(format!(
            "larger than the {max_bytes}-byte limit of an event"
        ))
        .execute(conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(sequence: i64, size: usize) -> Published {
        Published {
            sequence,
            event_id: uuid::Uuid::nil(),
            order_id: 1,
            event_type: "x".to_owned(),
            body: "a".repeat(size),
        }
    }

    #[test]
    fn oversized_events_are_split_off_and_the_rest_keep_their_order() {
        let (fit, oversized) = split_oversized(vec![event(1, 10), event(2, 100), event(3, 10)], 50);
        assert_eq!(fit.iter().map(|e| e.sequence).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(oversized, [2]);
    }

    #[test]
    fn backoff_doubles_from_half_a_second_to_thirty() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(6), Duration::from_secs(16));
        assert_eq!(backoff(60), Duration::from_secs(30));
    }
}
