//! The drivers of a peak run: where each is ([`Position`], read by the report lanes), what
//! it is doing ([`Phase`]), and one step of its work — polling its offers, answering one,
//! driving, waiting for the food, picking up, delivering — plus the lanes that only report
//! positions.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use chrono::Utc;
use rand::Rng;
use rand::rngs::StdRng;

use super::Shared;
use super::lane::{Kind, Lane, Stepped, Tally, between};
use crate::clock::{Spot, staggered};
use crate::parties::Offers;

/// Where a driver is in its work.
#[derive(Clone, Copy, Debug)]
pub(super) enum Phase {
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
        /// When it reached the restaurant.
        arrived: Instant,
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
pub(super) struct Position {
    lat: AtomicU64,
    lon: AtomicU64,
}

impl Position {
    pub(super) fn store(&self, at: Spot) {
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
pub(super) struct Agent {
    pub(super) id: i64,
    /// Its place in [`Shared::positions`].
    pub(super) slot: usize,
    pub(super) bearer: String,
    pub(super) at: Spot,
    /// The city it works in.
    pub(super) city: usize,
    pub(super) waypoint: Spot,
    pub(super) moved: Instant,
    pub(super) next_poll: Instant,
    pub(super) phase: Phase,
    /// The phase to go back to once an offer is answered (a busy driver declines and carries
    /// on).
    pub(super) resume: Phase,
    pub(super) decided: HashSet<i64>,
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
            self.waypoint = shared.plan.somewhere_in(self.city, rng);
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
    let Ok(offers) = serde_json::from_value::<Offers>(answer) else {
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
                arrived: now,
            };
        }
        Phase::Waiting {
            order,
            dropoff,
            check,
            since,
            arrived,
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
                    arrived,
                };
                return;
            };
            match view["status"].as_str() {
                Some("READY_FOR_PICKUP") => {
                    lane.tally.waits.push(now.duration_since(arrived));
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
                            arrived,
                        }
                    };
                }
                Some("CONFIRMED" | "PREPARING") => {
                    agent.phase = Phase::Waiting {
                        order,
                        dropoff,
                        check: now + s.restaurant_poll,
                        since,
                        arrived,
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
pub(super) async fn report_lane(
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

impl Stepped for Agent {
    async fn step(&mut self, lane: &mut Lane, shared: &Shared, rng: &mut StdRng) {
        step_driver(self, lane, shared, rng).await;
    }
}
