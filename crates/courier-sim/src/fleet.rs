//! The city at peak, for the end-to-end benchmark: thousands of drivers reporting every
//! second and tens of orders a second carried through the whole workflow, from one process
//! on the same two cores as the server it measures.
//!
//! The parties are those of [`crate::parties`] — drivers roam, poll their offers, accept
//! after a human delay (some decline, some ignore), drive to the restaurant, wait for the food,
//! pick up, drive to the customer and deliver; restaurants confirm, prepare and mark ready;
//! customers browse and order with idempotency keys (some retried, a few cancelled) — but
//! they are built to be cheap per request, because every cycle the load generator spends is
//! taken from the system under test:
//! - no task per party: each party is a small state machine, and a fixed number of **lanes**
//!   (one keep-alive connection each, [`crate::wire::Conn`]) step their share of the parties
//!   every few milliseconds, making only the requests that are due;
//! - requests are written by hand and answers parsed only where a field is needed;
//! - latencies go into histograms per lane, merged at the end.
//!
//! Drivers move and cook at `speed` times real time; the server's timers are its own settings
//! (the benchmark starts the server with timers that suit the run). Customers do not watch
//! their orders: a poll per order is what a pushed order stream replaces.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use serde_json::json;

use crate::api::{Api, As};
use crate::city::{City, Plan};
use crate::clock::Spot;
use crate::ledger::{Decisions, Track};
use crate::report::{Gathered, OrderView, Report};
use crate::wire::Conn;

/// Everything a peak run is set up with.
#[derive(Clone, Debug)]
pub struct FleetSettings {
    /// The server's address (plain HTTP).
    pub address: SocketAddr,
    /// The server's token signing secret (HS256).
    pub jwt_secret: Vec<u8>,
    /// The operator (a user id) that builds the city and reads the orders at the end.
    pub operator: i64,
    pub seed: u64,
    pub center: Spot,
    pub city_side_m: f64,
    pub drivers: usize,
    pub restaurants: usize,
    pub customers: usize,
    /// Orders placed per real second, over the whole city.
    pub orders_per_second: f64,
    /// How long customers order (real time).
    pub duration: Duration,
    /// Simulated seconds per real second, for travel and cooking.
    pub speed: f64,
    /// Longest wait (real) for every order to end once ordering stops.
    pub drain: Duration,
    /// How often each driver reports its position (real time).
    pub report_every: Duration,
    /// How often a driver asks for its offers (real time).
    pub offer_poll: Duration,
    /// How often a restaurant lists its new orders, and a waiting driver reads its order.
    pub restaurant_poll: Duration,
    /// Connections (and lanes) sending the drivers' location reports.
    pub report_lanes: usize,
    /// Connections (and lanes) for everything else drivers do (offers, pickups, deliveries).
    pub driver_lanes: usize,
    pub behaviour: FleetBehaviour,
}

/// How the parties of a peak run behave.
#[derive(Clone, Copy, Debug)]
pub struct FleetBehaviour {
    /// Chance a driver accepts an offer; of the rest, `decline` decline and the others let it
    /// time out.
    pub accept: f64,
    pub decline: f64,
    /// A driver's delay before answering an offer, real time (uniform).
    pub answer_delay: (Duration, Duration),
    /// Chance a restaurant never answers an order (the confirm timeout cancels it).
    pub ignore_confirm: f64,
    /// Chance a customer cancels soon after ordering.
    pub cancel: f64,
    /// Chance an order request is sent twice with the same idempotency key.
    pub retry_key: f64,
    /// Drivers' speed in the city, metres per second (simulated).
    pub driver_speed_mps: f64,
}

impl Default for FleetBehaviour {
    fn default() -> Self {
        Self {
            accept: 0.85,
            decline: 0.1,
            answer_delay: (Duration::from_millis(200), Duration::from_millis(1_500)),
            ignore_confirm: 0.005,
            cancel: 0.01,
            retry_key: 0.02,
            driver_speed_mps: 8.0,
        }
    }
}

/// A latency distribution and how many requests it holds.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// What a peak run measured, beside the simulation's [`Report`].
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct FleetReport {
    /// Real seconds customers ordered for.
    pub ordering_s: f64,
    /// Orders placed per real second while customers ordered.
    pub placed_per_s: f64,
    /// Orders delivered per real second while deliveries flowed steadily (see
    /// `steady_delivery_rate`).
    pub delivered_per_s: f64,
    /// Location reports answered per real second while customers ordered, and their latency.
    pub location_per_s: f64,
    pub location: Latency,
    /// Order placements (`POST /v1/orders`).
    pub place: Latency,
    /// Offer polls (`GET /v1/drivers/{id}/offers`).
    pub offer_poll: Latency,
    /// Every other request of the parties.
    pub other: Latency,
    /// From the restaurant's confirmation (which starts matching) to the first offer.
    pub confirmed_to_first_offer: crate::report::Spread,
    /// Real seconds the drain took.
    pub drain_s: f64,
    pub report: Report,
}

/// A live status line.
#[derive(Clone, Copy, Debug)]
pub struct FleetStatus {
    pub phase: &'static str,
    pub elapsed: Duration,
    pub placed: u64,
    pub location_reports: u64,
    pub open_orders: usize,
}

/// Counters every lane adds to while the run goes.
#[derive(Debug, Default)]
struct Live {
    placed: AtomicU64,
    reports: AtomicU64,
}

/// What one lane saw.
#[derive(Debug)]
struct Tally {
    location: Histogram<u64>,
    place: Histogram<u64>,
    offer_poll: Histogram<u64>,
    other: Histogram<u64>,
    statuses: BTreeMap<u16, u64>,
    transport_errors: u64,
    decisions: Decisions,
    tracks: HashMap<i64, Track>,
    placed: Vec<i64>,
    busy: Duration,
}

impl Tally {
    fn new() -> anyhow::Result<Self> {
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
        })
    }

    fn merge(&mut self, other: Tally) {
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
    }
}

fn latency(h: &Histogram<u64>) -> Latency {
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
enum Kind {
    Location,
    Place,
    OfferPoll,
    Other,
}

/// A lane's connection with its tally: every request goes through [`Lane::call`], which
/// times it and counts its status.
struct Lane {
    conn: Conn,
    tally: Tally,
}

impl Lane {
    fn new(address: SocketAddr) -> anyhow::Result<Self> {
        Ok(Self {
            conn: Conn::new(address),
            tally: Tally::new()?,
        })
    }

    /// Sends a request; the status and body on an answer, `None` on a transport error.
    async fn call(
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
    async fn expect(
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
const LANE_TICK: Duration = Duration::from_millis(20);

/// The same interval of `period`, each lane's first tick offset by its share of a period.
fn staggered(period: Duration, lane: usize, lanes: usize) -> tokio::time::Interval {
    let offset = period.mul_f64(lane as f64 / lanes.max(1) as f64);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    ticks
}

fn between(rng: &mut StdRng, (from, to): (Duration, Duration)) -> Duration {
    if to <= from {
        return from;
    }
    from + (to - from).mul_f64(rng.random::<f64>())
}

#[derive(Deserialize)]
struct OfferAnswer {
    offers: Vec<OfferSeen>,
}

#[derive(Deserialize)]
struct OfferSeen {
    id: i64,
    order_id: i64,
    created_at: DateTime<Utc>,
    restaurant_lat: f64,
    restaurant_lon: f64,
    delivery_lat: f64,
    delivery_lon: f64,
}

/// Where a driver is in its work.
#[derive(Clone, Copy, Debug)]
enum Phase {
    Idle,
    /// Will answer `offer` at `at`.
    Answering {
        offer: i64,
        order: i64,
        accept: bool,
        at: Instant,
        pickup: Spot,
        dropoff: Spot,
    },
    ToRestaurant {
        order: i64,
        pickup: Spot,
        dropoff: Spot,
        since: Instant,
    },
    Waiting {
        order: i64,
        dropoff: Spot,
        check: Instant,
        since: Instant,
    },
    ToCustomer {
        order: i64,
        dropoff: Spot,
        since: Instant,
    },
}

/// Where a driver is, written by the lane that moves it and read by the lane that reports
/// it (each coordinate as the bits of an `f64`).
#[derive(Debug, Default)]
struct Position {
    lat: AtomicU64,
    lon: AtomicU64,
}

impl Position {
    fn store(&self, at: Spot) {
        self.lat.store(at.lat.to_bits(), Ordering::Relaxed);
        self.lon.store(at.lon.to_bits(), Ordering::Relaxed);
    }

    fn load(&self) -> Spot {
        Spot {
            lat: f64::from_bits(self.lat.load(Ordering::Relaxed)),
            lon: f64::from_bits(self.lon.load(Ordering::Relaxed)),
        }
    }
}

/// One driver of a lane.
struct Agent {
    id: i64,
    /// Its place in [`Shared::positions`].
    slot: usize,
    bearer: String,
    at: Spot,
    waypoint: Spot,
    moved: Instant,
    next_poll: Instant,
    phase: Phase,
    /// The phase to go back to once an offer is answered (a busy driver declines and carries
    /// on).
    resume: Phase,
    decided: HashSet<i64>,
}

/// Shared, read-only context of every lane.
struct Shared {
    settings: FleetSettings,
    plan: Plan,
    live: Live,
    /// Every driver's position, by slot.
    positions: Vec<Position>,
    /// Set when every lane must stop.
    stop: AtomicBool,
    /// Set when customers stop ordering.
    closing: AtomicBool,
}

impl Agent {
    fn target(&self) -> Spot {
        match self.phase {
            Phase::ToRestaurant { pickup, .. } => pickup,
            Phase::ToCustomer { dropoff, .. } => dropoff,
            Phase::Waiting { .. } | Phase::Answering { .. } => self.at,
            Phase::Idle => self.waypoint,
        }
    }

    /// Moves toward the current target for the time since the last move.
    fn advance(&mut self, now: Instant, shared: &Shared, rng: &mut StdRng) {
        let simulated = now.duration_since(self.moved).as_secs_f64() * shared.settings.speed;
        self.moved = now;
        let target = self.target();
        self.at = self.at.toward(
            target,
            shared.settings.behaviour.driver_speed_mps * simulated,
        );
        if matches!(self.phase, Phase::Idle) && self.at == self.waypoint {
            self.waypoint = shared.plan.somewhere(rng);
        }
        shared.positions[self.slot].store(self.at);
    }
}

/// Reads a driver's offers. An idle driver takes the first new one to answer (accept or
/// decline after its delay) or lets it time out; a driver already carrying an order declines
/// at once (the simulated driver carries one order at a time).
async fn poll_offers(
    agent: &mut Agent,
    lane: &mut Lane,
    shared: &Shared,
    rng: &mut StdRng,
    now: Instant,
) {
    let path = format!("/v1/drivers/{}/offers", agent.id);
    let Some(answer) = lane
        .expect(Kind::OfferPoll, "GET", &path, &agent.bearer, None)
        .await
    else {
        return;
    };
    let Ok(offers) = serde_json::from_value::<OfferAnswer>(answer) else {
        lane.tally.decisions.party_errors += 1;
        return;
    };
    let b = &shared.settings.behaviour;
    for offer in offers.offers {
        if !agent.decided.insert(offer.id) {
            continue;
        }
        let track = lane.tally.tracks.entry(offer.order_id).or_default();
        track.offers += 1;
        if track
            .first_offer
            .is_none_or(|first| offer.created_at < first)
        {
            track.first_offer = Some(offer.created_at);
        }
        let roll: f64 = rng.random();
        let idle = matches!(agent.phase, Phase::Idle);
        if idle && roll >= b.accept + b.decline {
            lane.tally.decisions.offers_ignored += 1;
            continue;
        }
        agent.resume = agent.phase;
        agent.phase = Phase::Answering {
            offer: offer.id,
            order: offer.order_id,
            accept: idle && roll < b.accept,
            at: if idle {
                now + between(rng, b.answer_delay)
            } else {
                now
            },
            pickup: Spot {
                lat: offer.restaurant_lat,
                lon: offer.restaurant_lon,
            },
            dropoff: Spot {
                lat: offer.delivery_lat,
                lon: offer.delivery_lon,
            },
        };
        return;
    }
}

/// Steps one driver: moves it, polls its offers if due, then whatever its phase asks for.
async fn step_driver(agent: &mut Agent, lane: &mut Lane, shared: &Shared, rng: &mut StdRng) {
    let now = Instant::now();
    agent.advance(now, shared, rng);
    let s = &shared.settings;
    if now >= agent.next_poll && !matches!(agent.phase, Phase::Answering { .. }) {
        agent.next_poll = now + s.offer_poll;
        poll_offers(agent, lane, shared, rng, now).await;
    }
    match agent.phase {
        Phase::Answering {
            offer,
            order,
            accept,
            at,
            pickup,
            dropoff,
        } if now >= at => {
            agent.phase = agent.resume;
            let verb = if accept { "accept" } else { "decline" };
            let path = format!("/v1/offers/{offer}/{verb}");
            let answer = lane
                .call(Kind::Other, "POST", &path, &agent.bearer, &[], Some("{}"))
                .await;
            let ok = answer.is_some_and(|(status, _)| (200..300).contains(&status));
            if !accept {
                lane.tally.decisions.offers_declined += 1;
            } else if ok {
                lane.tally.decisions.offers_accepted += 1;
                lane.tally.tracks.entry(order).or_default().assigned = Some(Utc::now());
                agent.phase = Phase::ToRestaurant {
                    order,
                    pickup,
                    dropoff,
                    since: now,
                };
            } else {
                lane.tally.decisions.accepts_refused += 1;
            }
        }
        Phase::ToRestaurant {
            order,
            pickup,
            dropoff,
            since,
        } if agent.at == pickup => {
            agent.phase = Phase::Waiting {
                order,
                dropoff,
                check: now,
                since,
            };
        }
        Phase::Waiting {
            order,
            dropoff,
            check,
            since,
        } if now >= check => {
            let path = format!("/v1/orders/{order}");
            let Some(view) = lane
                .expect(Kind::Other, "GET", &path, &agent.bearer, None)
                .await
            else {
                agent.phase = Phase::Waiting {
                    order,
                    dropoff,
                    check: now + s.restaurant_poll,
                    since,
                };
                return;
            };
            match view["status"].as_str() {
                Some("READY_FOR_PICKUP") => {
                    let path = format!("/v1/orders/{order}/pickup");
                    let picked = lane
                        .call(Kind::Other, "POST", &path, &agent.bearer, &[], Some("{}"))
                        .await;
                    agent.phase = if picked.is_some_and(|(status, _)| (200..300).contains(&status))
                    {
                        Phase::ToCustomer {
                            order,
                            dropoff,
                            since,
                        }
                    } else {
                        Phase::Waiting {
                            order,
                            dropoff,
                            check: now + s.restaurant_poll,
                            since,
                        }
                    };
                }
                Some("CONFIRMED" | "PREPARING") => {
                    agent.phase = Phase::Waiting {
                        order,
                        dropoff,
                        check: now + s.restaurant_poll,
                        since,
                    };
                }
                _ => {
                    // Cancelled (or taken out of its hands): back to work.
                    lane.tally.busy += now.duration_since(since).mul_f64(s.speed);
                    agent.phase = Phase::Idle;
                }
            }
        }
        Phase::ToCustomer {
            order,
            dropoff,
            since,
        } if agent.at == dropoff => {
            let path = format!("/v1/orders/{order}/deliver");
            let delivered = lane
                .call(Kind::Other, "POST", &path, &agent.bearer, &[], Some("{}"))
                .await;
            if delivered.is_some_and(|(status, _)| (200..300).contains(&status)) {
                lane.tally.busy += now.duration_since(since).mul_f64(s.speed);
                agent.phase = Phase::Idle;
            } else {
                lane.tally.decisions.party_errors += 1;
            }
        }
        _ => {}
    }
}

/// A lane of location reports: the drivers of `slots` (id, bearer, slot), each reporting its
/// current position every `report_every`, one request at a time and evenly spread; when
/// answers are slower than the schedule, reports are skipped (the achieved rate shows it).
async fn report_lane(
    shared: Arc<Shared>,
    slots: Vec<(i64, String, usize)>,
    lane_index: usize,
    lanes: usize,
) -> anyhow::Result<Tally> {
    let mut lane = Lane::new(shared.settings.address)?;
    if slots.is_empty() {
        return Ok(lane.tally);
    }
    let speed = shared.settings.behaviour.driver_speed_mps;
    let period = shared.settings.report_every.div_f64(slots.len() as f64);
    let mut ticks = staggered(period, lane_index, lanes);
    let mut next = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        ticks.tick().await;
        let (id, bearer, slot) = &slots[next];
        next = (next + 1) % slots.len();
        let at = shared.positions[*slot].load();
        let body = format!(r#"{{"lat":{},"lon":{},"speed":{speed}}}"#, at.lat, at.lon);
        let path = format!("/v1/drivers/{id}/location");
        if lane
            .expect(Kind::Location, "POST", &path, bearer, Some(&body))
            .await
            .is_some()
        {
            shared.live.reports.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(lane.tally)
}

/// A lane of drivers, until the run stops.
async fn driver_lane(
    shared: Arc<Shared>,
    mut agents: Vec<Agent>,
    mut rng: StdRng,
) -> anyhow::Result<Tally> {
    let mut lane = Lane::new(shared.settings.address)?;
    let mut ticks = tokio::time::interval(LANE_TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while !shared.stop.load(Ordering::Relaxed) {
        ticks.tick().await;
        for agent in &mut agents {
            step_driver(agent, &mut lane, &shared, &mut rng).await;
        }
    }
    Ok(lane.tally)
}

#[derive(Deserialize)]
struct Listed {
    id: i64,
}

#[derive(Deserialize)]
struct OrderList {
    orders: Vec<Listed>,
}

/// What a restaurant does next with an order.
#[derive(Clone, Copy, Debug)]
enum Kitchen {
    /// Confirm, then start preparing at once.
    Confirm,
    Ready,
}

/// One restaurant of a lane.
struct Cook {
    id: i64,
    bearer: String,
    prep: Duration,
    next_poll: Instant,
    seen: HashSet<i64>,
    todo: Vec<(Instant, i64, Kitchen)>,
}

async fn step_restaurant(cook: &mut Cook, lane: &mut Lane, shared: &Shared, rng: &mut StdRng) {
    let now = Instant::now();
    let s = &shared.settings;
    if now >= cook.next_poll {
        cook.next_poll = now + s.restaurant_poll;
        let path = format!("/v1/restaurants/{}/orders?status=placed&limit=100", cook.id);
        if let Some(list) = lane
            .expect(Kind::Other, "GET", &path, &cook.bearer, None)
            .await
            .and_then(|json| serde_json::from_value::<OrderList>(json).ok())
        {
            for order in list.orders {
                if !cook.seen.insert(order.id) {
                    continue;
                }
                if rng.random_bool(s.behaviour.ignore_confirm) {
                    lane.tally.decisions.confirms_ignored += 1;
                } else {
                    cook.todo.push((now, order.id, Kitchen::Confirm));
                }
            }
        }
    }
    let mut i = 0;
    while i < cook.todo.len() {
        let (at, order, step) = cook.todo[i];
        if now < at {
            i += 1;
            continue;
        }
        cook.todo.swap_remove(i);
        let actions: &[&str] = match step {
            Kitchen::Confirm => &["confirm", "start-preparing"],
            Kitchen::Ready => &["ready"],
        };
        let mut done = true;
        for action in actions {
            let path = format!("/v1/orders/{order}/{action}");
            let answer = lane
                .call(Kind::Other, "POST", &path, &cook.bearer, &[], Some("{}"))
                .await;
            if !answer.is_some_and(|(status, _)| (200..300).contains(&status)) {
                // Cancelled meanwhile (by its customer or a timeout): nothing more to do.
                done = false;
                break;
            }
        }
        if done && matches!(step, Kitchen::Confirm) {
            let prep = cook.prep.mul_f64(rng.random_range(0.8..1.3) / s.speed);
            cook.todo.push((now + prep, order, Kitchen::Ready));
        }
    }
}

/// A lane of restaurants, until the run stops.
async fn restaurant_lane(
    shared: Arc<Shared>,
    mut cooks: Vec<Cook>,
    mut rng: StdRng,
) -> anyhow::Result<Tally> {
    let mut lane = Lane::new(shared.settings.address)?;
    let mut ticks = tokio::time::interval(LANE_TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while !shared.stop.load(Ordering::Relaxed) {
        ticks.tick().await;
        for cook in &mut cooks {
            step_restaurant(cook, &mut lane, &shared, &mut rng).await;
        }
    }
    Ok(lane.tally)
}

/// A lane of customers placing `per_second` orders a second until ordering closes, then
/// sending the cancellations still due until the run stops.
async fn customer_lane(
    shared: Arc<Shared>,
    city: Arc<City>,
    bearers: Arc<Vec<String>>,
    per_second: f64,
    lane_index: usize,
    lanes: usize,
    mut rng: StdRng,
) -> anyhow::Result<Tally> {
    let mut lane = Lane::new(shared.settings.address)?;
    let period = Duration::from_secs_f64(1.0 / per_second.max(0.001));
    let mut ticks = staggered(period, lane_index, lanes);
    let mut cancels: Vec<(Instant, i64, usize)> = Vec::new();
    let b = shared.settings.behaviour;
    while !shared.stop.load(Ordering::Relaxed) {
        ticks.tick().await;
        let now = Instant::now();
        let mut i = 0;
        while i < cancels.len() {
            if now < cancels[i].0 {
                i += 1;
                continue;
            }
            let (_, order, who) = cancels.swap_remove(i);
            let path = format!("/v1/orders/{order}/cancel");
            let answer = lane
                .call(
                    Kind::Other,
                    "POST",
                    &path,
                    &bearers[who],
                    &[],
                    Some(r#"{"reason":"changed my mind"}"#),
                )
                .await;
            if answer.is_some_and(|(status, _)| (200..300).contains(&status)) {
                lane.tally.decisions.customer_cancels += 1;
            }
        }
        if shared.closing.load(Ordering::Relaxed) {
            if cancels.is_empty() {
                break;
            }
            continue;
        }
        let who = rng.random_range(0..city.customers.len());
        let customer = city.customers[who];
        let path = format!(
            "/v1/restaurants?lat={}&lon={}&radius_km=5&open=true&limit=10",
            customer.at.lat, customer.at.lon
        );
        let nearby: Vec<i64> = lane
            .expect(Kind::Other, "GET", &path, &bearers[who], None)
            .await
            .and_then(|json| {
                serde_json::from_value::<Vec<Listed>>(json["restaurants"].clone()).ok()
            })
            .map(|listed| listed.into_iter().map(|r| r.id).collect())
            .unwrap_or_default();
        let ours: Vec<&crate::city::Restaurant> = city
            .restaurants
            .iter()
            .filter(|r| nearby.contains(&r.id))
            .collect();
        if ours.is_empty() {
            lane.tally.decisions.no_restaurant_nearby += 1;
            continue;
        }
        let restaurant = ours[rng.random_range(0..ours.len())];
        let lines = rng.random_range(1..=3.min(restaurant.menu.len()));
        let items: Vec<serde_json::Value> = restaurant.menu[..lines]
            .iter()
            .map(|id| json!({"menu_item_id": id, "quantity": rng.random_range(1..=2)}))
            .collect();
        let body = json!({
            "restaurant_id": restaurant.id,
            "items": items,
            "delivery_address": {"lat": customer.at.lat, "lon": customer.at.lon, "line1": "1 Peak Street"},
        })
        .to_string();
        let key = uuid::Uuid::new_v4().to_string();
        let headers = [("x-idempotency-key", key.as_str())];
        let tries = if rng.random_bool(b.retry_key) { 2 } else { 1 };
        let mut first: Option<i64> = None;
        for attempt in 0..tries {
            let answer = lane
                .call(
                    Kind::Place,
                    "POST",
                    "/v1/orders",
                    &bearers[who],
                    &headers,
                    Some(&body),
                )
                .await;
            let Some(id) = answer
                .filter(|(status, _)| (200..300).contains(status))
                .and_then(|(_, json)| json["id"].as_i64())
            else {
                lane.tally.decisions.party_errors += 1;
                continue;
            };
            if attempt > 0 {
                lane.tally.decisions.retried_keys += 1;
            }
            match first {
                None => {
                    first = Some(id);
                    lane.tally.placed.push(id);
                    shared.live.placed.fetch_add(1, Ordering::Relaxed);
                }
                Some(earlier) if earlier != id => {
                    lane.tally.decisions.duplicate_orders += 1;
                    lane.tally.placed.push(id);
                }
                Some(_) => {}
            }
        }
        if let Some(order) = first
            && rng.random_bool(b.cancel)
        {
            let after = Duration::from_secs(rng.random_range(5..=60))
                .div_f64(shared.settings.speed.max(0.001));
            cancels.push((now + after, order, who));
        }
    }
    Ok(lane.tally)
}

/// Deliveries per second while deliveries flow steadily: from the first placement plus the
/// 90th percentile of placement-to-delivery (every order placed early enough is delivered by
/// then) to the last placement plus the 10th percentile (orders keep arriving until then).
/// Only orders delivered in that window count, so the ramp-up and the drain's tail stay out.
/// 0 when nothing was delivered or the window is empty (an ordering period shorter than the
/// spread of delivery times).
fn steady_delivery_rate(views: &[OrderView]) -> f64 {
    let (Some(first), Some(last)) = (
        views.iter().map(|v| v.placed_at).min(),
        views.iter().map(|v| v.placed_at).max(),
    ) else {
        return 0.0;
    };
    let mut to_door: Vec<chrono::TimeDelta> = views
        .iter()
        .filter_map(|v| Some(v.delivered_at? - v.placed_at))
        .collect();
    if to_door.is_empty() {
        return 0.0;
    }
    to_door.sort_unstable();
    let at = |q: f64| to_door[((to_door.len() - 1) as f64 * q).round() as usize];
    let (from, to) = (first + at(0.9), last + at(0.1));
    if to <= from {
        return 0.0;
    }
    let delivered = views
        .iter()
        .filter_map(|v| v.delivered_at)
        .filter(|at| *at >= from && *at < to)
        .count();
    delivered as f64 / (to - from).as_seconds_f64()
}

/// Puts every driver online, a few at a time.
async fn go_online(api: &Api, drivers: &[crate::city::Driver]) -> anyhow::Result<()> {
    use futures::{StreamExt, TryStreamExt};
    futures::stream::iter(drivers.iter().map(|d| d.id))
        .map(|id| async move {
            api.post(
                As::Driver(id),
                &format!("/drivers/{id}/status"),
                &json!({"status": "online"}),
            )
            .await?
            .ok::<serde_json::Value>()
            .map(drop)
        })
        .buffer_unordered(32)
        .try_collect::<()>()
        .await
}

/// Runs a city at peak; `progress` is called about once a second.
pub async fn run(
    settings: &FleetSettings,
    progress: &(dyn Fn(&FleetStatus) + Sync),
) -> anyhow::Result<FleetReport> {
    let base_url = format!("http://{}", settings.address);
    let api = Api::new(&base_url, &settings.jwt_secret)?;
    let mut rng = StdRng::seed_from_u64(settings.seed);
    let tag = format!("peak{}-{}", settings.seed, uuid::Uuid::new_v4().simple());
    let plan = Plan {
        center: settings.center,
        side_m: settings.city_side_m,
        restaurants: settings.restaurants,
        customers: settings.customers,
        drivers: settings.drivers,
    };
    let started = Instant::now();
    progress(&FleetStatus {
        phase: "building the city",
        elapsed: Duration::ZERO,
        placed: 0,
        location_reports: 0,
        open_orders: 0,
    });
    let city = Arc::new(crate::city::build(&api, settings.operator, &plan, &tag, &mut rng).await?);
    anyhow::ensure!(
        !city.customers.is_empty() && !city.restaurants.is_empty() && !city.drivers.is_empty(),
        "a peak run needs drivers, restaurants and customers"
    );
    let shared = Arc::new(Shared {
        settings: settings.clone(),
        plan,
        live: Live::default(),
        positions: city.drivers.iter().map(|_| Position::default()).collect(),
        stop: AtomicBool::new(false),
        closing: AtomicBool::new(false),
    });
    progress(&FleetStatus {
        phase: "drivers going online",
        elapsed: started.elapsed(),
        placed: 0,
        location_reports: 0,
        open_orders: 0,
    });
    go_online(&api, &city.drivers).await?;

    // Drivers: positions reported by the report lanes, everything else done by the driver
    // lanes; both deal the drivers round-robin.
    let now = Instant::now();
    let report_lanes = settings.report_lanes.clamp(1, city.drivers.len());
    let mut reported: Vec<Vec<(i64, String, usize)>> =
        (0..report_lanes).map(|_| Vec::new()).collect();
    let lanes = settings.driver_lanes.clamp(1, city.drivers.len());
    let mut dealt: Vec<Vec<Agent>> = (0..lanes).map(|_| Vec::new()).collect();
    for (slot, driver) in city.drivers.iter().enumerate() {
        let bearer = api.bearer(As::Driver(driver.id))?;
        shared.positions[slot].store(driver.start);
        reported[slot % report_lanes].push((driver.id, bearer.clone(), slot));
        dealt[slot % lanes].push(Agent {
            id: driver.id,
            slot,
            bearer,
            at: driver.start,
            waypoint: plan.somewhere(&mut rng),
            moved: now,
            next_poll: now + settings.offer_poll.mul_f64(rng.random()),
            phase: Phase::Idle,
            resume: Phase::Idle,
            decided: HashSet::new(),
        });
    }
    let mut tasks = Vec::new();
    for (i, slots) in reported.into_iter().enumerate() {
        tasks.push(tokio::spawn(report_lane(
            shared.clone(),
            slots,
            i,
            report_lanes,
        )));
    }
    for agents in dealt {
        let seeded = StdRng::seed_from_u64(rng.random());
        tasks.push(tokio::spawn(driver_lane(shared.clone(), agents, seeded)));
    }
    // Three restaurants a lane: each lists its new orders every `restaurant_poll` and acts on
    // them, which fits in a lane even when answers take a few hundred milliseconds.
    let kitchen_lanes = city.restaurants.len().div_ceil(3).clamp(1, 256);
    let mut kitchens: Vec<Vec<Cook>> = (0..kitchen_lanes).map(|_| Vec::new()).collect();
    for (i, restaurant) in city.restaurants.iter().enumerate() {
        kitchens[i % kitchen_lanes].push(Cook {
            id: restaurant.id,
            bearer: api.bearer(As::Restaurant(restaurant.id))?,
            prep: restaurant.prep,
            next_poll: now + settings.restaurant_poll.mul_f64(rng.random()),
            seen: HashSet::new(),
            todo: Vec::new(),
        });
    }
    for cooks in kitchens {
        let seeded = StdRng::seed_from_u64(rng.random());
        tasks.push(tokio::spawn(restaurant_lane(shared.clone(), cooks, seeded)));
    }
    let bearers: Arc<Vec<String>> = Arc::new(
        city.customers
            .iter()
            .map(|c| api.bearer(As::Customer(c.id)))
            .collect::<anyhow::Result<_>>()?,
    );
    // A lane per order a second: a browse and a placement fit in a second even when the
    // server answers slowly, so a slow answer does not hold the rate down.
    let customer_lanes = (settings.orders_per_second.ceil() as usize).clamp(1, 256);
    let per_lane = settings.orders_per_second / customer_lanes as f64;
    // Every driver reports once before orders flow.
    tokio::time::sleep(settings.report_every).await;
    let ordering_started = Instant::now();
    let reports_before = shared.live.reports.load(Ordering::Relaxed);
    for i in 0..customer_lanes {
        let seeded = StdRng::seed_from_u64(rng.random());
        tasks.push(tokio::spawn(customer_lane(
            shared.clone(),
            city.clone(),
            bearers.clone(),
            per_lane,
            i,
            customer_lanes,
            seeded,
        )));
    }
    while ordering_started.elapsed() < settings.duration {
        tokio::time::sleep(
            Duration::from_secs(1)
                .min(settings.duration.saturating_sub(ordering_started.elapsed())),
        )
        .await;
        progress(&FleetStatus {
            phase: "ordering",
            elapsed: started.elapsed(),
            placed: shared.live.placed.load(Ordering::Relaxed),
            location_reports: shared.live.reports.load(Ordering::Relaxed),
            open_orders: 0,
        });
    }
    shared.closing.store(true, Ordering::Relaxed);
    let ordering_s = ordering_started.elapsed().as_secs_f64();
    let reports_during = shared.live.reports.load(Ordering::Relaxed) - reports_before;
    let placed = shared.live.placed.load(Ordering::Relaxed);

    // Drain: the parties go on until every order has ended, or the drain runs out. The
    // customers' lanes end by themselves once their cancellations are sent.
    let operator = As::Operator(settings.operator);
    let drain_started = Instant::now();
    let mut customer_tallies = Vec::new();
    let driver_and_restaurant_tasks = tasks.len() - customer_lanes;
    for task in tasks.drain(driver_and_restaurant_tasks..) {
        customer_tallies.push(task.await??);
    }
    let mut placed_ids: Vec<i64> = customer_tallies
        .iter()
        .flat_map(|t| t.placed.iter().copied())
        .collect();
    placed_ids.sort_unstable();
    let mut views = crate::read_orders(&api, operator, &placed_ids).await?;
    let position: HashMap<i64, usize> = views.iter().enumerate().map(|(i, v)| (v.id, i)).collect();
    loop {
        let open: Vec<i64> = views
            .iter()
            .filter(|v| !v.is_terminal())
            .map(|v| v.id)
            .collect();
        progress(&FleetStatus {
            phase: "draining",
            elapsed: started.elapsed(),
            placed,
            location_reports: shared.live.reports.load(Ordering::Relaxed),
            open_orders: open.len(),
        });
        if open.is_empty() || drain_started.elapsed() >= settings.drain {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        for view in crate::read_orders(&api, operator, &open).await? {
            if let Some(&at) = position.get(&view.id) {
                views[at] = view;
            }
        }
    }
    let drain_s = drain_started.elapsed().as_secs_f64();
    shared.stop.store(true, Ordering::Relaxed);
    let mut tally = Tally::new()?;
    for task in tasks {
        tally.merge(task.await??);
    }
    for customer in customer_tallies {
        tally.merge(customer);
    }

    let drivers_holding = if views.iter().all(OrderView::is_terminal) {
        crate::ghost_loads(&api, operator, &city.drivers).await?
    } else {
        Vec::new()
    };
    let delivered_per_s = steady_delivery_rate(&views);
    let confirmed_to_offer: Vec<Duration> = views
        .iter()
        .filter_map(|v| {
            let offered = tally.tracks.get(&v.id)?.first_offer?;
            (offered - v.confirmed_at?).to_std().ok()
        })
        .collect();
    let mut statuses = api.statuses();
    for (status, n) in &tally.statuses {
        *statuses.entry(*status).or_default() += n;
    }
    let simulated = Duration::from_secs_f64(ordering_s + drain_s).mul_f64(settings.speed);
    let report = Report::build(Gathered {
        speed: settings.speed,
        simulated,
        drivers: city.drivers.len(),
        restaurants: city.restaurants.len(),
        customers: city.customers.len(),
        views: &views,
        tracks: &tally.tracks,
        decisions: &tally.decisions,
        busy: tally.busy,
        drivers_holding,
        http: statuses,
        transport_errors: api.transport_errors() + tally.transport_errors,
    });
    Ok(FleetReport {
        ordering_s,
        placed_per_s: placed as f64 / ordering_s.max(0.001),
        delivered_per_s,
        location_per_s: reports_during as f64 / ordering_s.max(0.001),
        location: latency(&tally.location),
        place: latency(&tally.place),
        offer_poll: latency(&tally.offer_poll),
        other: latency(&tally.other),
        confirmed_to_first_offer: crate::report::Spread::of(&confirmed_to_offer, settings.speed),
        drain_s,
        report,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn view(id: i64, placed_s: i64, delivered_s: Option<i64>) -> OrderView {
        let at = |s: i64| DateTime::<Utc>::UNIX_EPOCH + chrono::TimeDelta::seconds(s);
        OrderView {
            id,
            status: "COMPLETED".into(),
            placed_at: at(placed_s),
            confirmed_at: None,
            ready_at: None,
            picked_up_at: None,
            delivered_at: delivered_s.map(at),
            cancel_reason: None,
        }
    }

    #[test]
    fn the_steady_delivery_rate_leaves_out_the_ramp_and_the_tail() {
        // One order a second for 100 s, delivered 20 s (even ids) or 30 s (odd) later: the
        // window runs from 30 s to 119 s, and one delivery a second lands in it.
        let views: Vec<OrderView> = (0..100)
            .map(|i| view(i, i, Some(i + if i % 2 == 0 { 20 } else { 30 })))
            .collect();
        let rate = steady_delivery_rate(&views);
        assert!((rate - 1.0).abs() < 0.02, "{rate}");
        // Cancelled orders deliver nothing: half of them cancelled, half the rate.
        let halved: Vec<OrderView> = views
            .iter()
            .cloned()
            .map(|mut v| {
                if v.id % 4 >= 2 {
                    v.delivered_at = None;
                }
                v
            })
            .collect();
        let rate = steady_delivery_rate(&halved);
        assert!((rate - 0.5).abs() < 0.03, "{rate}");
        assert_eq!(steady_delivery_rate(&[]), 0.0);
        assert_eq!(steady_delivery_rate(&[view(1, 0, None)]), 0.0);
        // Ordering shorter than the spread of delivery times: no steady window.
        assert_eq!(
            steady_delivery_rate(&[view(1, 0, Some(10)), view(2, 1, Some(60))]),
            0.0
        );
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
