//! The customers of a peak run: lanes placing orders at the target rate — a nearby search,
//! then the order with an idempotency key (some sent twice), a few cancelled soon after.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rand::Rng;
use rand::rngs::StdRng;
use serde_json::json;

use super::Shared;
use super::kitchens::Listed;
use super::lane::{Kind, Lane, Tally};
use crate::city::City;
use crate::clock::staggered;

/// A lane of customers placing `per_second` orders a second until ordering closes, then
/// sending the cancellations still due until the run stops.
pub(super) async fn customer_lane(
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
            "payment_method": "pm_card_visa",
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
