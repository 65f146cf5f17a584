//! Where published events go: one small trait, [`Sink`], and the default sink, a Valkey stream
//! ([`StreamSink`]). The relay hands every sink the same batch in order; a sink returns only
//! when the whole batch is stored, or fails and the relay retries the batch (so a sink may see
//! an event twice — with the same `eventId` and `sequence`).

use futures::future::BoxFuture;

use crate::outbox::event::Published;
use crate::valkey::Valkey;

/// The suffix (after the key prefix) of the orders' event stream.
pub const STREAM_SUFFIX: &str = "events:orders";

/// A sink failed to store a batch; nothing of it counts as published.
#[derive(Debug, thiserror::Error)]
#[error("{sink}: {message}")]
pub struct SinkError {
    pub sink: &'static str,
    pub message: String,
}

/// A destination of published events.
pub trait Sink: Send + Sync + std::fmt::Debug {
    /// Its name in logs, metrics and config (`stream`, `kafka`).
    fn name(&self) -> &'static str;

    /// Stores `events`, in order; per order id the order must be kept.
    fn publish<'a>(&'a self, events: &'a [Published]) -> BoxFuture<'a, Result<(), SinkError>>;
}

/// The orders' stream in Valkey: `XADD <prefix>events:orders MAXLEN ~ <max_len> * …` with the
/// fields `event` (the JSON body), `order_id`, `event_id`, `type` and `sequence`. Consumer
/// groups and the SSE endpoints read it; `MAXLEN ~` keeps it near `max_len` entries.
#[derive(Clone, Debug)]
pub struct StreamSink {
    valkey: Valkey,
    key: String,
    max_len: u64,
}

impl StreamSink {
    /// The sink writing `valkey`'s orders stream, trimmed to about `max_len` entries.
    pub fn new(valkey: Valkey, max_len: u64) -> Self {
        Self {
            key: valkey.key(STREAM_SUFFIX),
            valkey,
            max_len,
        }
    }
}

impl Sink for StreamSink {
    fn name(&self) -> &'static str {
        "stream"
    }

    fn publish<'a>(&'a self, events: &'a [Published]) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            if events.is_empty() {
                return Ok(());
            }
            let mut pipe = redis::pipe();
            for event in events {
                pipe.cmd("XADD")
                    .arg(&self.key)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(self.max_len)
                    .arg("*")
                    .arg("event")
                    .arg(&event.body)
                    .arg("order_id")
                    .arg(event.order_id)
                    .arg("event_id")
                    .arg(event.event_id.to_string())
                    .arg("type")
                    .arg(&event.event_type)
                    .arg("sequence")
                    .arg(event.sequence)
                    .ignore();
            }
            let mut conn = self.valkey.connection();
            pipe.query_async::<()>(&mut conn)
                .await
                .map_err(|e| SinkError {
                    sink: self.name(),
                    message: e.to_string(),
                })
        })
    }
}
