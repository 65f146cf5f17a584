//! What the simulated parties saw, gathered for the report: the orders placed, when each
//! first reached a driver as an offer, when a driver took it, and how the parties' own
//! decisions went (declined, ignored, cancelled, duplicates).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};

/// One order as the simulation followed it.
#[derive(Clone, Debug, Default)]
pub struct Track {
    /// The server's `created_at` of the first offer any driver saw for it.
    pub first_offer: Option<DateTime<Utc>>,
    /// Offers of it that drivers saw.
    pub offers: u32,
    /// When a driver's accept was answered 200.
    pub assigned: Option<DateTime<Utc>>,
}

/// Counters of the parties' decisions (reported as they are).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Decisions {
    pub offers_accepted: u64,
    pub offers_declined: u64,
    pub offers_ignored: u64,
    pub accepts_refused: u64,
    pub confirms_ignored: u64,
    pub customer_cancels: u64,
    pub retried_keys: u64,
    pub duplicate_orders: u64,
    pub no_restaurant_nearby: u64,
    pub went_offline: u64,
    pub party_errors: u64,
}

/// Everything gathered, behind one lock (the parties touch it a few times per order).
#[derive(Debug, Default)]
pub struct Ledger {
    inner: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    orders: HashMap<i64, Track>,
    decisions: Decisions,
    /// Simulated time drivers spent carrying an order, in total.
    busy: Duration,
    /// Each wait of a driver at a restaurant for the food (real time).
    waits: Vec<Duration>,
}

impl Ledger {
    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> Option<R> {
        self.inner.lock().ok().map(|mut state| f(&mut state))
    }

    pub fn placed(&self, order: i64) {
        self.with(|s| {
            s.orders.entry(order).or_default();
        });
    }

    pub fn offer_seen(&self, order: i64, created_at: DateTime<Utc>) {
        self.with(|s| {
            let track = s.orders.entry(order).or_default();
            track.offers += 1;
            if track.first_offer.is_none_or(|first| created_at < first) {
                track.first_offer = Some(created_at);
            }
        });
    }

    pub fn assigned(&self, order: i64) {
        self.with(|s| s.orders.entry(order).or_default().assigned = Some(Utc::now()));
    }

    /// A driver waited `real` at a restaurant before the food was ready.
    pub fn waited(&self, real: Duration) {
        self.with(|s| s.waits.push(real));
    }

    /// Every driver's waits at restaurants (real time).
    pub fn waits(&self) -> Vec<Duration> {
        self.with(|s| s.waits.clone()).unwrap_or_default()
    }

    pub fn busy_for(&self, simulated: Duration) {
        self.with(|s| s.busy += simulated);
    }

    /// Counts a decision.
    pub fn count(&self, decision: impl FnOnce(&mut Decisions)) {
        self.with(|s| decision(&mut s.decisions));
    }

    /// How many orders were placed so far.
    pub fn orders_placed(&self) -> usize {
        self.with(|s| s.orders.len()).unwrap_or(0)
    }

    /// The ids of every order placed.
    pub fn order_ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self
            .with(|s| s.orders.keys().copied().collect())
            .unwrap_or_default();
        ids.sort_unstable();
        ids
    }

    /// A copy of everything gathered: orders, decisions, busy driver time.
    pub fn snapshot(&self) -> (HashMap<i64, Track>, Decisions, Duration) {
        self.with(|s| (s.orders.clone(), s.decisions.clone(), s.busy))
            .unwrap_or_default()
    }
}
