//! The lanes of a peak run: one keep-alive connection each, stepping their share of the
//! parties, timing every request into histograms of their own and counting answers by
//! status; merged into one [`Tally`] at the end.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::Rng;
use rand::rngs::StdRng;

use super::{Latency, Shared};
use crate::ledger::{Decisions, Track};
use crate::wire::Conn;

/// Counters every lane adds to while the run goes.
#[derive(Debug, Default)]
pub(super) struct Live {
    pub(super) placed: AtomicU64,
    pub(super) reports: AtomicU64,
}

/// What one lane saw.
#[derive(Debug)]
pub(super) struct Tally {
    pub(super) location: Histogram<u64>,
    pub(super) place: Histogram<u64>,
    pub(super) offer_poll: Histogram<u64>,
    pub(super) other: Histogram<u64>,
    pub(super) statuses: BTreeMap<u16, u64>,
    pub(super) transport_errors: u64,
    pub(super) decisions: Decisions,
    pub(super) tracks: HashMap<i64, Track>,
    pub(super) placed: Vec<i64>,
    pub(super) busy: Duration,
    /// Each wait of a driver at a restaurant for the food (real time).
    pub(super) waits: Vec<Duration>,
}

impl Tally {
    pub(super) fn new() -> anyhow::Result<Self> {
        // 10 µs to 60 s, three significant digits; recorded in microseconds.
        let histogram = || Histogram::<u64>::new_with_bounds(10, 60_000_000, 3);
        Ok(Self {
            location: histogram()?,
            place: histogram()?,
            offer_poll: histogram()?,
            other: histogram()?,
            statuses: BTreeMap::new(),
            transport_errors: 0,
            decisions: Decisions::default(),
            tracks: HashMap::new(),
            placed: Vec::new(),
            busy: Duration::ZERO,
            waits: Vec::new(),
        })
    }

    pub(super) fn merge(&mut self, other: Tally) {
        // The bounds are equal, so adding cannot fail.
        let _ = self.location.add(&other.location);
        let _ = self.place.add(&other.place);
        let _ = self.offer_poll.add(&other.offer_poll);
        let _ = self.other.add(&other.other);
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
        self.transport_errors += other.transport_errors;
        let (a, b) = (&mut self.decisions, other.decisions);
        a.offers_accepted += b.offers_accepted;
        a.offers_declined += b.offers_declined;
        a.offers_ignored += b.offers_ignored;
        a.accepts_refused += b.accepts_refused;
        a.confirms_ignored += b.confirms_ignored;
        a.customer_cancels += b.customer_cancels;
        a.retried_keys += b.retried_keys;
        a.duplicate_orders += b.duplicate_orders;
        a.no_restaurant_nearby += b.no_restaurant_nearby;
        a.went_offline += b.went_offline;
        a.party_errors += b.party_errors;
        for (order, track) in other.tracks {
            let mine = self.tracks.entry(order).or_default();
            mine.offers += track.offers;
            mine.first_offer = match (mine.first_offer, track.first_offer) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            mine.assigned = mine.assigned.or(track.assigned);
        }
        self.placed.extend(other.placed);
        self.busy += other.busy;
        self.waits.extend(other.waits);
    }
}

pub(super) fn latency(h: &Histogram<u64>) -> Latency {
    if h.is_empty() {
        return Latency::default();
    }
    let ms = |us: u64| us as f64 / 1_000.0;
    Latency {
        count: h.len(),
        p50_ms: ms(h.value_at_quantile(0.5)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        max_ms: ms(h.max()),
    }
}

/// Which histogram a request's latency goes to.
#[derive(Clone, Copy, Debug)]
pub(super) enum Kind {
    Location,
    Place,
    OfferPoll,
    Other,
}

/// A lane's connection with its tally: every request goes through [`Lane::call`], which
/// times it and counts its status.
pub(super) struct Lane {
    conn: Conn,
    pub(super) tally: Tally,
}

impl Lane {
    pub(super) fn new(address: SocketAddr) -> anyhow::Result<Self> {
        Ok(Self {
            conn: Conn::new(address),
            tally: Tally::new()?,
        })
    }

    /// Sends a request; the status and body on an answer, `None` on a transport error.
    pub(super) async fn call(
        &mut self,
        kind: Kind,
        method: &str,
        path: &str,
        bearer: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Option<(u16, serde_json::Value)> {
        let sent = Instant::now();
        let answer = self
            .conn
            .send_with(method, path, bearer, headers, body)
            .await;
        let took = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
        match answer {
            Ok((status, body)) => {
                let histogram = match kind {
                    Kind::Location => &mut self.tally.location,
                    Kind::Place => &mut self.tally.place,
                    Kind::OfferPoll => &mut self.tally.offer_poll,
                    Kind::Other => &mut self.tally.other,
                };
                histogram.saturating_record(took);
                *self.tally.statuses.entry(status).or_default() += 1;
                let json = serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
                Some((status, json))
            }
            Err(_) => {
                self.tally.transport_errors += 1;
                None
            }
        }
    }

    /// [`Lane::call`] that counts anything but a 2xx as a party error.
    pub(super) async fn expect(
        &mut self,
        kind: Kind,
        method: &str,
        path: &str,
        bearer: &str,
        body: Option<&str>,
    ) -> Option<serde_json::Value> {
        match self.call(kind, method, path, bearer, &[], body).await {
            Some((status, json)) if (200..300).contains(&status) => Some(json),
            _ => {
                self.tally.decisions.party_errors += 1;
                None
            }
        }
    }
}

/// How often lanes look at their parties.
pub(super) const LANE_TICK: Duration = Duration::from_millis(20);

pub(super) fn between(rng: &mut StdRng, (from, to): (Duration, Duration)) -> Duration {
    if to <= from {
        return from;
    }
    from + (to - from).mul_f64(rng.random::<f64>())
}

/// A party a lane steps: a driver or a restaurant.
pub(super) trait Stepped: Send {
    /// Does what is due now (at most a few requests on `lane`).
    fn step(
        &mut self,
        lane: &mut Lane,
        shared: &Shared,
        rng: &mut StdRng,
    ) -> impl std::future::Future<Output = ()> + Send;
}

/// A lane of drivers or restaurants: each is stepped every [`LANE_TICK`] until the run stops.
pub(super) async fn party_lane<P: Stepped>(
    shared: Arc<Shared>,
    mut parties: Vec<P>,
    mut rng: StdRng,
) -> anyhow::Result<Tally> {
    let mut lane = Lane::new(shared.settings.address)?;
    let mut ticks = tokio::time::interval(LANE_TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while !shared.stop.load(Ordering::Relaxed) {
        ticks.tick().await;
        for party in &mut parties {
            party.step(&mut lane, &shared, &mut rng).await;
        }
    }
    Ok(lane.tally)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use rand::SeedableRng;

    #[test]
    fn tallies_merge_counts_histograms_and_the_earliest_offer() {
        let mut a = Tally::new().expect("tally");
        let mut b = Tally::new().expect("tally");
        a.location.saturating_record(1_000);
        b.location.saturating_record(3_000);
        a.statuses.insert(200, 2);
        b.statuses.insert(200, 1);
        b.statuses.insert(409, 1);
        let early = Utc::now();
        let late = early + chrono::TimeDelta::seconds(5);
        a.tracks.insert(
            7,
            Track {
                first_offer: Some(late),
                offers: 1,
                assigned: None,
            },
        );
        b.tracks.insert(
            7,
            Track {
                first_offer: Some(early),
                offers: 2,
                assigned: Some(late),
            },
        );
        b.decisions.duplicate_orders = 1;
        a.merge(b);
        assert_eq!(a.location.len(), 2);
        assert_eq!(a.statuses, BTreeMap::from([(200, 3), (409, 1)]));
        let track = &a.tracks[&7];
        assert_eq!(track.offers, 3);
        assert_eq!(track.first_offer, Some(early));
        assert_eq!(track.assigned, Some(late));
        assert_eq!(a.decisions.duplicate_orders, 1);
    }

    #[test]
    fn latency_reads_milliseconds_from_microseconds() {
        let mut h = Histogram::<u64>::new_with_bounds(10, 60_000_000, 3).expect("histogram");
        for us in [1_000, 2_000, 3_000, 100_000] {
            h.saturating_record(us);
        }
        let l = latency(&h);
        assert_eq!(l.count, 4);
        assert!((l.p50_ms - 2.0).abs() < 0.01, "{l:?}");
        assert!((l.max_ms - 100.0).abs() < 0.1, "{l:?}");
        assert_eq!(latency(&Histogram::new(3).expect("histogram")).count, 0);
    }

    #[test]
    fn answer_delays_stay_in_their_range() {
        let mut rng = StdRng::seed_from_u64(3);
        let range = (Duration::from_millis(200), Duration::from_millis(1_500));
        for _ in 0..1_000 {
            let d = between(&mut rng, range);
            assert!(d >= range.0 && d <= range.1, "{d:?}");
        }
        assert_eq!(between(&mut rng, (range.1, range.0)), range.1);
    }
}
