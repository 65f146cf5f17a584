//! The restaurants of a peak run: each lists its new orders, confirms and starts preparing
//! at once (a few never answer), and marks the food ready after its prep time.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rand::Rng;
use rand::rngs::StdRng;
use serde::Deserialize;

use super::Shared;
use super::lane::{Kind, Lane, Stepped};

/// A listed resource: its id.
#[derive(Deserialize)]
pub(super) struct Listed {
    pub(super) id: i64,
}

#[derive(Deserialize)]
struct OrderList {
    orders: Vec<Listed>,
}

/// What a restaurant does next with an order.
#[derive(Clone, Copy, Debug)]
pub(super) enum Kitchen {
    /// Confirm, then start preparing at once.
    Confirm,
    Ready,
}

/// One restaurant of a lane.
pub(super) struct Cook {
    pub(super) id: i64,
    pub(super) bearer: String,
    pub(super) prep: Duration,
    pub(super) next_poll: Instant,
    pub(super) seen: HashSet<i64>,
    pub(super) todo: Vec<(Instant, i64, Kitchen)>,
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

impl Stepped for Cook {
    async fn step(&mut self, lane: &mut Lane, shared: &Shared, rng: &mut StdRng) {
        step_restaurant(self, lane, shared, rng).await;
    }
}
