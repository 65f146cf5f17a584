//! Live streams for clients: one reader of the orders' event stream and one subscription
//! connection per process, fanned out in process to every SSE connection
//! ([`crate::api::live`]). A client never costs a Valkey connection.
//!
//! - [`Hub`] owns the two readers (started with the first subscriber) and a registry of
//!   subscribers by [`Topic`]. Each subscriber has a bounded queue; one that falls behind is
//!   dropped (its stream ends) rather than slowing the rest, and resumes with `Last-Event-ID`.
//! - [`Hub::replay`] reads what a reconnecting client missed from the stream itself.
//! - Driver positions come from the location service's per-driver channel
//!   ([`LocationService::position_channel`]), subscribed while someone follows that driver.

pub mod entry;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use redis::streams::{StreamRangeReply, StreamReadReply};
use tokio::sync::{mpsc, watch};

use crate::live::entry::{EntryId, StreamEvent, Topic};
use crate::location::LocationService;
use crate::outbox::sink::STREAM_SUFFIX;
use crate::shutdown::CancellationToken;
use crate::valkey::Valkey;

/// How the live streams behave.
#[derive(Clone, Debug)]
pub struct LiveSettings {
    /// Interval of keep-alive comments on an idle stream.
    pub keep_alive: Duration,
    /// Items a subscriber may have queued before it is dropped as too slow.
    pub queue: usize,
    /// Most stream entries a resume reads before it gives up and sends a snapshot instead.
    pub replay_limit: usize,
}

impl Default for LiveSettings {
    fn default() -> Self {
        Self {
            keep_alive: Duration::from_secs(15),
            queue: 256,
            replay_limit: 50_000,
        }
    }
}

/// What a subscriber receives.
#[derive(Clone, Debug)]
pub enum Item {
    /// An entry of the orders' stream.
    Event(Arc<StreamEvent>),
    /// A driver's position report (the location service's JSON).
    Position(Arc<str>),
}

/// How long a blocking stream read waits.
const BLOCK: Duration = Duration::from_secs(5);
/// Entries per stream read.
const READ_COUNT: usize = 500;

enum Command {
    Subscribe(String),
    Unsubscribe(String),
}

#[derive(Default)]
struct Registry {
    topics: HashMap<Topic, HashMap<u64, mpsc::Sender<Item>>>,
}

#[derive(Debug)]
struct Inner {
    valkey: Valkey,
    location: LocationService,
    key: String,
    settings: LiveSettings,
    registry: Mutex<Registry>,
    next_id: AtomicU64,
    started: AtomicBool,
    commands: mpsc::UnboundedSender<Command>,
    command_rx: Mutex<Option<mpsc::UnboundedReceiver<Command>>>,
    /// Where the stream reader began (the stream's tail then), once it did: a subscriber
    /// reads its own starting point after it, so the reader delivers everything after that.
    origin: watch::Sender<Option<EntryId>>,
    closed: CancellationToken,
}

/// Counts topics rather than listing every subscriber.
impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("topics", &self.topics.len())
            .finish()
    }
}

/// The process's fan-out of live events. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Hub(Arc<Inner>);

/// One subscriber's queue; leaving the registry when dropped.
#[derive(Debug)]
pub struct Subscription {
    hub: Hub,
    topic: Topic,
    id: u64,
    rx: mpsc::Receiver<Item>,
}

impl Subscription {
    /// The next item; `None` when the hub dropped this subscriber (too slow, or shutdown).
    pub async fn next(&mut self) -> Option<Item> {
        tokio::select! {
            item = self.rx.recv() => item,
            () = self.hub.0.closed.cancelled() => None,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.leave(self.topic, self.id);
    }
}

impl Hub {
    /// A hub reading `valkey`'s orders stream; it connects when the first client subscribes.
    pub fn new(valkey: Valkey, location: LocationService, settings: LiveSettings) -> Self {
        let (commands, command_rx) = mpsc::unbounded_channel();
        Self(Arc::new(Inner {
            key: valkey.key(STREAM_SUFFIX),
            valkey,
            location,
            settings,
            registry: Mutex::new(Registry::default()),
            next_id: AtomicU64::new(1),
            started: AtomicBool::new(false),
            commands,
            command_rx: Mutex::new(Some(command_rx)),
            origin: watch::Sender::new(None),
            closed: CancellationToken::new(),
        }))
    }

    /// The settings.
    pub fn settings(&self) -> &LiveSettings {
        &self.0.settings
    }

    /// Ends every subscription and stops the readers (shutdown).
    pub fn close(&self) {
        self.0.closed.cancel();
    }

    /// Whether the hub was closed.
    pub fn is_closed(&self) -> bool {
        self.0.closed.is_cancelled()
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        // A panic while holding the lock leaves the registry consistent (plain inserts and
        // removals), so a poisoned lock is used as is.
        self.0
            .registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Subscribers now (all topics).
    pub fn subscribers(&self) -> usize {
        self.registry().topics.values().map(HashMap::len).sum()
    }

    /// Subscribes to `topic`.
    pub fn subscribe(&self, topic: Topic) -> Subscription {
        self.start();
        let id = self.0.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.0.settings.queue);
        let first = {
            let mut registry = self.registry();
            let subscribers = registry.topics.entry(topic).or_default();
            subscribers.insert(id, tx);
            subscribers.len() == 1
        };
        if let (true, Topic::Position(driver)) = (first, topic) {
            let _ = self
                .0
                .commands
                .send(Command::Subscribe(self.0.location.position_channel(driver)));
        }
        metrics::gauge!("live_subscribers").increment(1.0);
        Subscription {
            hub: self.clone(),
            topic,
            id,
            rx,
        }
    }

    fn leave(&self, topic: Topic, id: u64) {
        let (removed, last) = {
            let mut registry = self.registry();
            let Some(subscribers) = registry.topics.get_mut(&topic) else {
                return;
            };
            let removed = subscribers.remove(&id).is_some();
            let last = subscribers.is_empty();
            if last {
                registry.topics.remove(&topic);
            }
            (removed, last)
        };
        if removed {
            metrics::gauge!("live_subscribers").decrement(1.0);
        }
        if let (true, Topic::Position(driver)) = (last, topic) {
            let _ = self.0.commands.send(Command::Unsubscribe(
                self.0.location.position_channel(driver),
            ));
        }
    }

    /// Hands `item` to every subscriber of `topics`; drops those whose queue is full.
    fn dispatch(&self, topics: &[Topic], item: &Item) {
        let mut registry = self.registry();
        let mut dropped = 0u64;
        for topic in topics {
            let Some(subscribers) = registry.topics.get_mut(topic) else {
                continue;
            };
            subscribers.retain(|_, tx| match tx.try_send(item.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    dropped += 1;
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
        }
        if dropped > 0 {
            metrics::counter!("live_subscribers_dropped_total").increment(dropped);
            metrics::gauge!("live_subscribers").decrement(dropped as f64);
        }
    }

    /// Starts the readers once.
    fn start(&self) {
        if self.0.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let commands = self
            .0
            .command_rx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        tokio::spawn(read_stream(self.clone()));
        if let Some(commands) = commands {
            tokio::spawn(read_positions(self.clone(), commands));
        }
    }

    /// The newest entry of the stream now (`None` when it is empty): where a new subscriber
    /// starts. It waits (at most [`BLOCK`]) for the stream reader to have begun, so the reader
    /// delivers every entry after it.
    pub async fn tail(&self) -> redis::RedisResult<Option<EntryId>> {
        self.start();
        let mut origin = self.0.origin.subscribe();
        let began = tokio::time::timeout(BLOCK, origin.wait_for(Option::is_some))
            .await
            .is_ok_and(|r| r.is_ok());
        if !began {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "the events stream reader has not started",
            )));
        }
        self.read_tail().await
    }

    async fn read_tail(&self) -> redis::RedisResult<Option<EntryId>> {
        let mut conn = self.0.valkey.connection();
        let reply: StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(&self.0.key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await?;
        Ok(reply.ids.first().and_then(|e| EntryId::parse(&e.id)))
    }

    /// The events of `order_id` after `after`, oldest first, when the stream still holds
    /// everything since then (`None`: `after` was trimmed away, or is further back than the
    /// replay limit, or is in the future — the caller sends a snapshot instead).
    pub async fn replay(
        &self,
        order_id: i64,
        after: EntryId,
    ) -> redis::RedisResult<Option<Vec<Arc<StreamEvent>>>> {
        let mut conn = self.0.valkey.connection();
        let first: StreamRangeReply = redis::cmd("XRANGE")
            .arg(&self.0.key)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await?;
        let oldest = first.ids.first().and_then(|e| EntryId::parse(&e.id));
        // Entries just after `after` may have been trimmed away (or the stream was lost).
        if oldest.is_none_or(|oldest| oldest > after) {
            return Ok(None);
        }
        let mut events = Vec::new();
        let mut cursor = after;
        let mut read = 0usize;
        loop {
            let page: StreamRangeReply = redis::cmd("XRANGE")
                .arg(&self.0.key)
                .arg(format!("({cursor}"))
                .arg("+")
                .arg("COUNT")
                .arg(READ_COUNT)
                .query_async(&mut conn)
                .await?;
            let count = page.ids.len();
            for entry in page.ids {
                let Some(id) = EntryId::parse(&entry.id) else {
                    continue;
                };
                cursor = id;
                let matches = entry.get::<i64>("order_id") == Some(order_id);
                if let (true, Some(body)) = (matches, entry.get::<String>("event"))
                    && let Some(event) = StreamEvent::parse(id, &body)
                {
                    events.push(Arc::new(event));
                }
            }
            read += count;
            if count < READ_COUNT {
                return Ok(Some(events));
            }
            if read >= self.0.settings.replay_limit {
                return Ok(None);
            }
        }
    }
}

/// Reads the orders' stream from its tail on, for as long as the hub lives.
async fn read_stream(hub: Hub) {
    let inner = &hub.0;
    let mut last: Option<EntryId> = None;
    while !inner.closed.is_cancelled() {
        let mut conn = match inner.valkey.blocking_connection(BLOCK).await {
            Ok(conn) => conn,
            Err(error) => {
                tracing::warn!(error = %error, "live events: cannot connect to Valkey; retrying");
                pause(&inner.closed).await;
                continue;
            }
        };
        loop {
            if last.is_none() {
                match hub.read_tail().await {
                    Ok(tail) => {
                        let tail = tail.unwrap_or_default();
                        last = Some(tail);
                        inner.origin.send_replace(Some(tail));
                    }
                    Err(error) => {
                        tracing::warn!(error = %error, "live events: cannot read the stream's tail");
                        break;
                    }
                }
            }
            let from = last.unwrap_or_default().to_string();
            let mut command = redis::cmd("XREAD");
            command
                .arg("COUNT")
                .arg(READ_COUNT)
                .arg("BLOCK")
                .arg(BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&inner.key)
                .arg(&from);
            let read = command.query_async::<Option<StreamReadReply>>(&mut conn);
            let reply = tokio::select! {
                () = inner.closed.cancelled() => return,
                reply = read => reply,
            };
            let reply = match reply {
                Ok(reply) => reply,
                Err(error) => {
                    tracing::warn!(error = %error, "live events: reading the stream failed; reconnecting");
                    break;
                }
            };
            for key in reply.map(|r| r.keys).unwrap_or_default() {
                for entry in key.ids {
                    let Some(id) = EntryId::parse(&entry.id) else {
                        continue;
                    };
                    last = Some(id);
                    let Some(event) = entry
                        .get::<String>("event")
                        .and_then(|body| StreamEvent::parse(id, &body))
                    else {
                        continue;
                    };
                    let topics = event.topics();
                    if !topics.is_empty() {
                        hub.dispatch(&topics, &Item::Event(Arc::new(event)));
                    }
                }
            }
        }
        pause(&inner.closed).await;
    }
}

/// Relays driver positions from the channels someone follows.
async fn read_positions(hub: Hub, mut commands: mpsc::UnboundedReceiver<Command>) {
    let inner = &hub.0;
    while !inner.closed.is_cancelled() {
        let pubsub = match inner.valkey.pubsub().await {
            Ok(pubsub) => pubsub,
            Err(error) => {
                tracing::warn!(error = %error, "live positions: cannot connect to Valkey; retrying");
                pause(&inner.closed).await;
                continue;
            }
        };
        let (mut sink, mut messages) = pubsub.split();
        // Whatever is followed now, including subscriptions asked for while disconnected.
        while commands.try_recv().is_ok() {}
        let followed: Vec<String> = hub
            .registry()
            .topics
            .keys()
            .filter_map(|t| match t {
                Topic::Position(driver) => Some(inner.location.position_channel(*driver)),
                _ => None,
            })
            .collect();
        let mut healthy = true;
        for channel in followed {
            healthy &= sink.subscribe(channel).await.is_ok();
        }
        while healthy {
            tokio::select! {
                () = inner.closed.cancelled() => return,
                command = commands.recv() => {
                    let done = match command {
                        Some(Command::Subscribe(channel)) => sink.subscribe(channel).await,
                        Some(Command::Unsubscribe(channel)) => sink.unsubscribe(channel).await,
                        None => return,
                    };
                    healthy = done.is_ok();
                }
                message = messages.next() => {
                    let Some(message) = message else {
                        healthy = false;
                        continue;
                    };
                    let Ok(payload) = message.get_payload::<String>() else {
                        continue;
                    };
                    let driver = serde_json::from_str::<serde_json::Value>(&payload)
                        .ok()
                        .and_then(|v| v["driverId"].as_i64());
                    if let Some(driver) = driver {
                        hub.dispatch(&[Topic::Position(driver)], &Item::Position(Arc::from(payload)));
                    }
                }
            }
        }
        tracing::warn!("live positions: the subscription connection dropped; reconnecting");
        pause(&inner.closed).await;
    }
}

async fn pause(closed: &CancellationToken) {
    tokio::select! {
        () = closed.cancelled() => {}
        () = tokio::time::sleep(Duration::from_secs(1)) => {}
    }
}
