//! The history writer: every accepted fix goes to the day-partitioned `driver_locations`
//! table, in batches, off the request path.
//!
//! Requests hand rows to a bounded channel ([`HistorySender::record`] never waits). One task
//! looks at the channel every [`POLL_EVERY`] (not on every row: at 10K rows/s that would be
//! 10K wake-ups a second) and writes multi-row `INSERT … SELECT FROM UNNEST`s of
//! [`SMALL_BATCH_ROWS`] rows, back to back while that many are waiting, and whatever is left
//! once its oldest row has waited [`FLUSH_EVERY`]. Only when Postgres has fallen behind (more
//! than [`BACKLOG_ROWS`] waiting) do batches grow, up to [`BATCH_ROWS`], to catch up.
//!
//! Small batches matter on a shared machine: a 1,000-row insert is 15–40 ms of one core's time
//! in Postgres (half of it the foreign-key check), and requests served meanwhile queue for the
//! other core. With 1,000-row batches the nearby-search p99 under 10K updates/s was
//! 6.4–6.7 ms; with 100-row batches 3.5–5.1 ms, for the same Postgres CPU
//! (`docs/benchmarks.md`).
//!
//! # Postgres unavailable
//! A batch that fails because Postgres is unreachable (or any failure that is not the data's
//! fault) is kept and retried with a growing pause (up to [`MAX_RETRY_PAUSE`]) while new rows
//! wait in the buffer: a Postgres outage or restart loses no history as long as the buffer
//! ([`BUFFER_ROWS`], ten seconds of peak load, hours of a quiet night) has room and the process
//! lives. Past that, new rows are dropped — counted in `location_history_dropped_total` and
//! logged at most once a second — rather than slowing ingest or growing without bound; so is a
//! batch Postgres refuses for its content (after creating missing day partitions and trying
//! once more), and whatever cannot be written at shutdown. History is a record for analysis,
//! not the live position (that is in Valkey): the API accepts a report whether or not its
//! history row is written yet. [`HistoryTask::shutdown`] stops accepting, drains the buffer and
//! flushes it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::location::update::LocationUpdate;
use crate::shutdown::CancellationToken;

/// Rows written per insert, at most (when catching up).
pub const BATCH_ROWS: usize = 1_000;
/// Rows written per insert while Postgres keeps up.
pub const SMALL_BATCH_ROWS: usize = 100;
/// Rows waiting beyond which batches grow to [`BATCH_ROWS`]: two seconds behind at 10K
/// reports/s. A lower mark backfires: every short stall of Postgres (a checkpoint, an fsync)
/// would then be followed by big inserts, the bursts small batches are there to avoid.
pub const BACKLOG_ROWS: usize = 20_000;
/// Longest a row waits before its batch is written.
pub const FLUSH_EVERY: Duration = Duration::from_millis(500);
/// How often the writer collects queued rows.
pub const POLL_EVERY: Duration = Duration::from_millis(10);
/// Rows the buffer holds before new ones are dropped.
pub const BUFFER_ROWS: usize = 100_000;
/// First pause after a failed write; it doubles per failure up to [`MAX_RETRY_PAUSE`].
pub const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(250);
/// Longest pause between attempts to write a held batch.
pub const MAX_RETRY_PAUSE: Duration = Duration::from_secs(5);

/// One row of `driver_locations`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HistoryRow {
    pub driver_id: i64,
    pub lat: f64,
    pub lon: f64,
    pub heading: Option<f32>,
    pub speed_mps: Option<f32>,
    pub accuracy_m: Option<f32>,
    pub recorded_at_ms: i64,
}

impl From<&LocationUpdate> for HistoryRow {
    fn from(u: &LocationUpdate) -> Self {
        Self {
            driver_id: u.driver_id,
            lat: u.point.lat,
            lon: u.point.lon,
            heading: u.heading,
            speed_mps: u.speed_mps,
            accuracy_m: u.accuracy_m,
            recorded_at_ms: u.recorded_at_ms,
        }
    }
}

/// The handle requests use. Cheap to clone.
#[derive(Clone, Debug)]
pub struct HistorySender {
    tx: mpsc::Sender<HistoryRow>,
    stats: Arc<Stats>,
}

#[derive(Debug, Default)]
struct Stats {
    dropped: AtomicU64,
    last_drop_log_s: AtomicU64,
}

impl HistorySender {
    /// Queues a row; drops (and counts) it when the buffer is full or closed.
    pub fn record(&self, row: HistoryRow) {
        if self.tx.try_send(row).is_err() {
            self.stats.drop_rows(1, "history buffer full or closed");
        }
    }
}

impl Stats {
    fn drop_rows(&self, n: u64, why: &str) {
        metrics::counter!("location_history_dropped_total").increment(n);
        let total = self.dropped.fetch_add(n, Ordering::Relaxed) + n;
        let now_s = u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0);
        if self.last_drop_log_s.swap(now_s, Ordering::Relaxed) != now_s {
            tracing::warn!(dropped_total = total, why, "location history rows dropped");
        }
    }
}

/// The writer task; shut it down to flush.
#[derive(Debug)]
pub struct HistoryTask {
    stop: CancellationToken,
    handle: JoinHandle<()>,
}

impl HistoryTask {
    /// Stops the writer after writing every row queued so far.
    pub async fn shutdown(self) {
        self.stop.cancel();
        if let Err(error) = self.handle.await {
            tracing::error!(error = %error, "location history writer panicked");
        }
    }
}

/// Starts the writer on `db`.
pub fn spawn(db: PgPool) -> (HistorySender, HistoryTask) {
    let (tx, rx) = mpsc::channel(BUFFER_ROWS);
    let stats = Arc::new(Stats::default());
    let stop = CancellationToken::new();
    let handle = tokio::spawn(run(db, rx, stop.clone(), stats.clone()));
    (HistorySender { tx, stats }, HistoryTask { stop, handle })
}

async fn run(
    db: PgPool,
    mut rx: mpsc::Receiver<HistoryRow>,
    stop: CancellationToken,
    stats: Arc<Stats>,
) {
    let mut batch = Vec::with_capacity(BATCH_ROWS);
    let mut oldest: Option<Instant> = None;
    let mut retry = Retry::default();
    let mut ticks = tokio::time::interval(POLL_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        if retry.waiting(Instant::now()) {
            continue;
        }
        // Write batch after batch while full ones are waiting.
        let open = loop {
            let limit = batch_limit(rx.len());
            let open = collect(&mut rx, &mut batch, limit);
            if batch.is_empty() {
                break open;
            }
            let since = *oldest.get_or_insert_with(Instant::now);
            if open && !is_due(batch.len(), limit, since.elapsed()) {
                break open;
            }
            match write(&db, &mut batch, &stats).await {
                Written::Done => {
                    oldest = None;
                    retry = Retry::default();
                }
                Written::Held => {
                    retry.failed(Instant::now());
                    break open;
                }
            }
        };
        if !open {
            break;
        }
    }
    // Drain what is queued, then flush; what cannot be written now is lost.
    rx.close();
    while rx.recv_many(&mut batch, BATCH_ROWS).await > 0 {
        if batch.len() >= BATCH_ROWS {
            write_or_drop(&db, &mut batch, &stats).await;
        }
    }
    write_or_drop(&db, &mut batch, &stats).await;
    tracing::info!("location history flushed");
}

/// The pause after failed writes.
#[derive(Debug, Default)]
struct Retry {
    pause: Option<Duration>,
    until: Option<Instant>,
}

impl Retry {
    /// Whether the writer should still wait at `now`.
    fn waiting(&self, now: Instant) -> bool {
        self.until.is_some_and(|until| now < until)
    }

    /// A write failed at `now`: pause, twice as long as last time, at most [`MAX_RETRY_PAUSE`].
    fn failed(&mut self, now: Instant) {
        let pause = self
            .pause
            .map_or(FIRST_RETRY_PAUSE, |p| (p * 2).min(MAX_RETRY_PAUSE));
        self.pause = Some(pause);
        self.until = Some(now + pause);
    }
}

/// What became of a batch.
#[derive(Debug, PartialEq, Eq)]
enum Written {
    /// Written, or dropped for good; the batch is empty.
    Done,
    /// Postgres could not take it now; the batch is kept for a later attempt.
    Held,
}

/// Whether a failed insert may succeed later as it is: anything but Postgres refusing the
/// rows themselves (data exceptions, constraint violations, errors in the statement).
fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => !matches!(
            db.code().as_deref().map(|code| code.get(..2)),
            Some(Some("22" | "23" | "42"))
        ),
        _ => true,
    }
}

async fn write_or_drop(db: &PgPool, batch: &mut Vec<HistoryRow>, stats: &Stats) {
    if write(db, batch, stats).await == Written::Held {
        stats.drop_rows(batch.len() as u64, "Postgres unavailable at shutdown");
        batch.clear();
    }
}

/// Moves queued rows into `batch` until it holds `limit`; false once the channel is closed
/// and empty.
fn collect(rx: &mut mpsc::Receiver<HistoryRow>, batch: &mut Vec<HistoryRow>, limit: usize) -> bool {
    while batch.len() < limit {
        match rx.try_recv() {
            Ok(row) => batch.push(row),
            Err(mpsc::error::TryRecvError::Empty) => return true,
            Err(mpsc::error::TryRecvError::Disconnected) => return false,
        }
    }
    true
}

/// The most rows the next batch takes when `waiting` rows are queued.
fn batch_limit(waiting: usize) -> usize {
    if waiting > BACKLOG_ROWS {
        BATCH_ROWS
    } else {
        SMALL_BATCH_ROWS
    }
}

/// Whether a batch of `rows` (of at most `limit`), the oldest collected `waited` ago, should
/// be written now.
fn is_due(rows: usize, limit: usize, waited: Duration) -> bool {
    rows >= limit || waited >= FLUSH_EVERY
}

/// Writes and empties `batch`, retrying once after making sure the day partitions exist;
/// keeps it when Postgres is unavailable.
async fn write(db: &PgPool, batch: &mut Vec<HistoryRow>, stats: &Stats) -> Written {
    if batch.is_empty() {
        return Written::Done;
    }
    let mut result = insert(db, batch).await;
    if let Err(error) = &result {
        tracing::warn!(error = %error, rows = batch.len(), "writing location history failed; retrying");
        // A fix for a day without a partition fails the whole batch: create yesterday's to
        // tomorrow's (idempotent) and try again.
        let _ = sqlx::query("SELECT courier_create_location_partition((now() AT TIME ZONE 'UTC')::date + d) FROM generate_series(-1, 1) AS d")
            .execute(db)
            .await;
        result = insert(db, batch).await;
    }
    match result {
        Ok(()) => metrics::counter!("location_history_written_total").increment(batch.len() as u64),
        Err(error) if is_transient(&error) => {
            tracing::warn!(error = %error, rows = batch.len(), "location history held until Postgres answers");
            return Written::Held;
        }
        Err(error) => {
            tracing::error!(error = %error, rows = batch.len(), "location history batch lost");
            stats.drop_rows(batch.len() as u64, "insert failed");
        }
    }
    batch.clear();
    Written::Done
}

async fn insert(db: &PgPool, batch: &[HistoryRow]) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO driver_locations (driver_id, location, heading, speed_mps, accuracy_m, recorded_at)
         SELECT driver_id, ST_SetSRID(ST_MakePoint(lon, lat), 4326)::geography, heading, speed, accuracy,
                to_timestamp(recorded_ms / 1000.0)
         FROM UNNEST($1::bigint[], $2::float8[], $3::float8[], $4::real[], $5::real[], $6::real[], $7::bigint[])
              AS t(driver_id, lat, lon, heading, speed, accuracy, recorded_ms)",
    )
    .bind(batch.iter().map(|r| r.driver_id).collect::<Vec<_>>())
    .bind(batch.iter().map(|r| r.lat).collect::<Vec<_>>())
    .bind(batch.iter().map(|r| r.lon).collect::<Vec<_>>())
    .bind(batch.iter().map(|r| r.heading).collect::<Vec<_>>())
    .bind(batch.iter().map(|r| r.speed_mps).collect::<Vec<_>>())
    .bind(batch.iter().map(|r| r.accuracy_m).collect::<Vec<_>>())
    .bind(batch.iter().map(|r| r.recorded_at_ms).collect::<Vec<_>>())
    .execute(db)
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_due_when_full_or_old_enough() {
        let almost = FLUSH_EVERY - Duration::from_millis(1);
        assert!(!is_due(1, SMALL_BATCH_ROWS, Duration::ZERO));
        assert!(!is_due(SMALL_BATCH_ROWS - 1, SMALL_BATCH_ROWS, almost));
        assert!(is_due(SMALL_BATCH_ROWS, SMALL_BATCH_ROWS, Duration::ZERO));
        assert!(!is_due(SMALL_BATCH_ROWS, BATCH_ROWS, almost));
        assert!(is_due(1, SMALL_BATCH_ROWS, FLUSH_EVERY));
    }

    #[test]
    fn pauses_after_failures_double_up_to_the_cap() {
        let start = Instant::now();
        let mut retry = Retry::default();
        assert!(!retry.waiting(start));
        retry.failed(start);
        assert!(retry.waiting(start + FIRST_RETRY_PAUSE / 2));
        assert!(!retry.waiting(start + FIRST_RETRY_PAUSE));
        for _ in 0..10 {
            retry.failed(start);
        }
        assert_eq!(retry.pause, Some(MAX_RETRY_PAUSE));
        assert!(retry.waiting(start + MAX_RETRY_PAUSE - Duration::from_millis(1)));
    }

    #[test]
    fn only_failures_of_the_rows_themselves_are_final() {
        assert!(is_transient(&sqlx::Error::PoolTimedOut));
        assert!(is_transient(&sqlx::Error::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused
        ))));
    }

    #[test]
    fn batches_grow_only_behind_a_backlog() {
        assert_eq!(batch_limit(0), SMALL_BATCH_ROWS);
        assert_eq!(batch_limit(BACKLOG_ROWS), SMALL_BATCH_ROWS);
        assert_eq!(batch_limit(BACKLOG_ROWS + 1), BATCH_ROWS);
    }
}
