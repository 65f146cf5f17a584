//! Coalescing of single location reports into group script calls.
//!
//! Phones report one position per request, 10K requests/s at peak. Sent one by one, each
//! report costs Valkey a socket read, a script run and a reply of its own, and the server a
//! socket write and a wake-up per report — CPU that the nearby-driver searches sharing the
//! machine then wait for. Instead, requests hand their report to one task: while a script call
//! is in flight, new reports queue; when it returns, everything queued (up to
//! [`INGEST_GROUP`](super::INGEST_GROUP)) goes in the next call. There is no timer: a lone
//! report goes out at once, and groups grow only with load (about the rate times the round
//! trip — a handful at 10K/s). The ingest script applies a group's reports in order and
//! answers each one, so a request gets exactly the outcome it would have had alone — its rate
//! limit included, which the script counts before applying the report.
//!
//! A group's reports go to their markets' keys, one call per market, the markets in parallel
//! ([`Core::ingest`]); a market whose call Valkey refuses (its script rejects one report) is
//! applied again report by report, so one bad report never fails the others that shared its
//! call, and a market Valkey cannot reach fails only its own reports.
//!
//! The queue is bounded (16,384 reports): when Valkey stalls, requests wait for room (and time out
//! through the request deadline) instead of growing memory. The task ends when the last
//! [`Coalescer`] handle is dropped, after answering everything queued.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::location::update::LocationUpdate;
use crate::location::{Admitted, Core, INGEST_GROUP, INGEST_GROUP_SIZE};
use crate::ratelimit::Limit;

/// Reports waiting for a script call, at most.
const QUEUE: usize = 16_384;

/// A report and where its outcome goes.
#[derive(Debug)]
struct Pending {
    update: LocationUpdate,
    limit: Option<Limit>,
    reply: oneshot::Sender<redis::RedisResult<Admitted>>,
}

/// The handle requests use. Cheap to clone.
#[derive(Clone, Debug)]
pub(super) struct Coalescer {
    tx: mpsc::Sender<Pending>,
}

impl Coalescer {
    /// Starts the coalescing task on the current Tokio runtime.
    pub(super) fn spawn(core: Arc<Core>) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(core, rx));
        Self { tx }
    }

    /// Applies `update`, counted against `limit`, with whatever other reports are waiting;
    /// its own answer.
    pub(super) async fn ingest(
        &self,
        update: LocationUpdate,
        limit: Option<Limit>,
    ) -> redis::RedisResult<Admitted> {
        let (reply, outcome) = oneshot::channel();
        self.tx
            .send(Pending {
                update,
                limit,
                reply,
            })
            .await
            .map_err(|_| stopped())?;
        outcome.await.map_err(|_| stopped())?
    }
}

fn stopped() -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Client,
        "the location report queue has stopped",
    ))
}

async fn run(core: Arc<Core>, mut rx: mpsc::Receiver<Pending>) {
    let mut group = Vec::with_capacity(INGEST_GROUP);
    let mut reports = Vec::with_capacity(INGEST_GROUP);
    while rx.recv_many(&mut group, INGEST_GROUP).await > 0 {
        reports.clear();
        reports.extend(group.iter().map(|p| (p.update, p.limit)));
        metrics::histogram!(INGEST_GROUP_SIZE).record(reports.len() as f64);
        let outcomes = core.ingest(&reports).await;
        for (pending, outcome) in group.drain(..).zip(outcomes) {
            // The request may have gone (client away, deadline): nothing to tell.
            let _ = pending.reply.send(outcome);
        }
    }
}
