//! The simulated parties, one task each, acting only through the public API:
//! - **drivers** go online, move about and report their position, poll their offers, accept
//!   (after a human delay), decline or ignore them, drive to the restaurant, wait for the food,
//!   pick it up, drive to the customer and deliver; some go offline for a while mid-shift;
//! - **restaurants** poll their placed orders, confirm after a short delay (a few never
//!   answer, so courier's confirm timeout cancels), prepare, and mark ready after their prep
//!   time with noise;
//! - **customers** browse nearby restaurants, read a menu, order with an idempotency key
//!   (retrying some requests with the same key, as flaky networks do), then watch their order
//!   until it ends; a few cancel early.
//!
//! Delays are simulated time ([`SimClock`]); polling runs at a fixed real tick.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::api::{Api, As};
use crate::city::{City, Customer, Driver, Plan, Restaurant};
use crate::clock::{SimClock, Spot};
use crate::ledger::Ledger;

/// How the parties behave.
#[derive(Clone, Copy, Debug)]
pub struct Behaviour {
    /// Chance a driver accepts an offer; of the rest, `decline` decline and the others let it
    /// time out.
    pub accept: f64,
    pub decline: f64,
    /// Chance a restaurant never answers an order (courier's confirm timeout cancels it).
    pub ignore_confirm: f64,
    /// Chance a customer cancels soon after ordering.
    pub cancel: f64,
    /// Chance a customer's order request is sent twice with the same idempotency key.
    pub retry_key: f64,
    /// Chance per simulated hour that an idle driver goes offline for a few minutes.
    pub offline_per_hour: f64,
    /// Drivers' speed in the city, metres per second (simulated).
    pub driver_speed_mps: f64,
    /// How often drivers report their position (simulated).
    pub report_every: Duration,
    /// How often parties poll (real time).
    pub tick: Duration,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            accept: 0.8,
            decline: 0.1,
            ignore_confirm: 0.02,
            cancel: 0.03,
            retry_key: 0.1,
            offline_per_hour: 0.2,
            driver_speed_mps: 8.0,
            report_every: Duration::from_secs(4),
            tick: Duration::from_millis(250),
        }
    }
}

/// What every party task shares.
#[derive(Clone, Debug)]
pub struct Ctx {
    pub api: Api,
    pub clock: SimClock,
    pub ledger: Arc<Ledger>,
    pub behaviour: Behaviour,
    pub plan: Plan,
    pub city: Arc<City>,
    /// Cancelled when the simulation ends: every party stops.
    pub stop: CancellationToken,
    /// Cancelled when the ordering period ends: customers stop ordering.
    pub closing: CancellationToken,
}

impl Ctx {
    /// Waits `simulated` time; false if the simulation stopped meanwhile.
    async fn pause(&self, simulated: Duration) -> bool {
        tokio::select! {
            () = self.stop.cancelled() => false,
            () = self.clock.sleep(simulated) => true,
        }
    }

    /// Waits one real polling tick; false if the simulation stopped meanwhile.
    async fn tick(&self) -> bool {
        tokio::select! {
            () = self.stop.cancelled() => false,
            () = tokio::time::sleep(self.behaviour.tick) => true,
        }
    }

    fn error(&self, what: &str, error: &anyhow::Error) {
        self.ledger.count(|d| d.party_errors += 1);
        eprintln!("courier-sim: {what}: {error:#}");
    }
}

fn seconds(rng: &mut StdRng, from: u64, to: u64) -> Duration {
    Duration::from_secs(rng.random_range(from..=to))
}

/// A driver's offers, as `GET /v1/drivers/{id}/offers` lists them.
#[derive(Deserialize)]
pub(crate) struct Offers {
    pub(crate) offers: Vec<Offer>,
}

/// An offer: the fields the parties act on.
#[derive(Deserialize)]
pub(crate) struct Offer {
    pub(crate) id: i64,
    pub(crate) order_id: i64,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) restaurant_lat: f64,
    pub(crate) restaurant_lon: f64,
    pub(crate) delivery_lat: f64,
    pub(crate) delivery_lon: f64,
}

#[derive(Deserialize)]
struct OrderState {
    status: String,
}

/// A driver's shift, until the simulation stops.
pub async fn driver(ctx: Ctx, driver: Driver, mut rng: StdRng) {
    let me = As::Driver(driver.id);
    let mut at = driver.start;
    let mut waypoint = ctx.plan.somewhere_in(driver.city, &mut rng);
    let mut decided: HashSet<i64> = HashSet::new();
    let mut since_report = Duration::MAX;
    if let Err(error) = set_online(&ctx, driver.id, true).await {
        ctx.error("a driver going online", &error);
    }
    while ctx.tick().await {
        let step = ctx.clock.simulated(ctx.behaviour.tick);
        at = at.toward(
            waypoint,
            ctx.behaviour.driver_speed_mps * step.as_secs_f64(),
        );
        if at == waypoint {
            waypoint = ctx.plan.somewhere_in(driver.city, &mut rng);
        }
        since_report = since_report.saturating_add(step);
        if since_report >= ctx.behaviour.report_every {
            since_report = Duration::ZERO;
            report(&ctx, driver.id, at).await;
        }
        let offline_chance = ctx.behaviour.offline_per_hour * step.as_secs_f64() / 3600.0;
        if rng.random_bool(offline_chance.clamp(0.0, 1.0)) {
            ctx.ledger.count(|d| d.went_offline += 1);
            let away = seconds(&mut rng, 120, 300);
            let went = set_online(&ctx, driver.id, false).await;
            if !ctx.pause(away).await {
                return;
            }
            if let Err(error) = went.and(set_online(&ctx, driver.id, true).await) {
                ctx.error("a driver going offline and back", &error);
            }
            since_report = Duration::MAX;
            continue;
        }
        let offers = match ctx
            .api
            .get(me, &format!("/drivers/{}/offers", driver.id))
            .await
        {
            Ok(answer) => match answer.ok::<Offers>() {
                Ok(offers) => offers.offers,
                Err(error) => {
                    ctx.error("a driver's offers", &error);
                    continue;
                }
            },
            Err(error) => {
                ctx.error("a driver's offers", &error);
                continue;
            }
        };
        for offer in offers {
            if !decided.insert(offer.id) {
                continue;
            }
            ctx.ledger.offer_seen(offer.order_id, offer.created_at);
            let roll: f64 = rng.random();
            if roll < ctx.behaviour.accept {
                if !ctx.pause(seconds(&mut rng, 2, 10)).await {
                    return;
                }
                match ctx
                    .api
                    .post(me, &format!("/offers/{}/accept", offer.id), &json!({}))
                    .await
                {
                    Ok(answer) if answer.status.is_success() => {
                        ctx.ledger.count(|d| d.offers_accepted += 1);
                        ctx.ledger.assigned(offer.order_id);
                        let started = ctx.clock.now();
                        let pickup = Spot {
                            lat: offer.restaurant_lat,
                            lon: offer.restaurant_lon,
                        };
                        let dropoff = Spot {
                            lat: offer.delivery_lat,
                            lon: offer.delivery_lon,
                        };
                        let carried =
                            carry(&ctx, driver.id, &mut at, offer.order_id, pickup, dropoff).await;
                        ctx.ledger.busy_for(ctx.clock.now().saturating_sub(started));
                        if let Err(error) = carried {
                            ctx.error("a delivery", &error);
                        }
                        since_report = Duration::MAX;
                        break;
                    }
                    Ok(_) => ctx.ledger.count(|d| d.accepts_refused += 1),
                    Err(error) => ctx.error("an accept", &error),
                }
            } else if roll < ctx.behaviour.accept + ctx.behaviour.decline {
                if !ctx.pause(seconds(&mut rng, 1, 5)).await {
                    return;
                }
                ctx.ledger.count(|d| d.offers_declined += 1);
                if let Err(error) = ctx
                    .api
                    .post(me, &format!("/offers/{}/decline", offer.id), &json!({}))
                    .await
                {
                    ctx.error("a decline", &error);
                }
            } else {
                ctx.ledger.count(|d| d.offers_ignored += 1);
            }
        }
    }
}

async fn set_online(ctx: &Ctx, driver: i64, online: bool) -> anyhow::Result<()> {
    let status = if online { "online" } else { "offline" };
    ctx.api
        .post(
            As::Driver(driver),
            &format!("/drivers/{driver}/status"),
            &json!({ "status": status }),
        )
        .await?
        .ok::<serde_json::Value>()
        .map(drop)
}

async fn report(ctx: &Ctx, driver: i64, at: Spot) {
    let body = json!({"lat": at.lat, "lon": at.lon, "speed": ctx.behaviour.driver_speed_mps});
    if let Err(error) = ctx
        .api
        .post(
            As::Driver(driver),
            &format!("/drivers/{driver}/location"),
            &body,
        )
        .await
    {
        ctx.error("a location report", &error);
    }
}

/// The order's status as the driver sees it.
async fn status_of(ctx: &Ctx, driver: i64, order: i64) -> anyhow::Result<String> {
    Ok(ctx
        .api
        .get(As::Driver(driver), &format!("/orders/{order}"))
        .await?
        .ok::<OrderState>()?
        .status)
}

/// Drives from `at` to `target`, reporting on the way; false if the simulation stopped.
async fn drive(ctx: &Ctx, driver: i64, at: &mut Spot, target: Spot) -> bool {
    let mut since_report = Duration::ZERO;
    while *at != target {
        if !ctx.tick().await {
            return false;
        }
        let step = ctx.clock.simulated(ctx.behaviour.tick);
        *at = at.toward(target, ctx.behaviour.driver_speed_mps * step.as_secs_f64());
        since_report += step;
        if since_report >= ctx.behaviour.report_every {
            since_report = Duration::ZERO;
            report(ctx, driver, *at).await;
        }
    }
    report(ctx, driver, *at).await;
    true
}

/// One accepted order: to the restaurant, wait for the food, pick up, to the customer,
/// deliver. Stops early if the order is cancelled meanwhile.
async fn carry(
    ctx: &Ctx,
    driver: i64,
    at: &mut Spot,
    order: i64,
    pickup: Spot,
    dropoff: Spot,
) -> anyhow::Result<()> {
    let me = As::Driver(driver);
    if !drive(ctx, driver, at, pickup).await {
        return Ok(());
    }
    let arrived = std::time::Instant::now();
    loop {
        match status_of(ctx, driver, order).await?.as_str() {
            "READY_FOR_PICKUP" => {
                ctx.ledger.waited(arrived.elapsed());
                break;
            }
            "CANCELLED" | "COMPLETED" | "DELIVERED" | "PICKED_UP" => return Ok(()),
            _ => {
                if !ctx.tick().await {
                    return Ok(());
                }
            }
        }
    }
    let picked = ctx
        .api
        .post(me, &format!("/orders/{order}/pickup"), &json!({}))
        .await?;
    if !picked.status.is_success() {
        return Ok(());
    }
    if !drive(ctx, driver, at, dropoff).await {
        return Ok(());
    }
    ctx.api
        .post(me, &format!("/orders/{order}/deliver"), &json!({}))
        .await?;
    Ok(())
}

#[derive(Deserialize)]
struct OrderList {
    orders: Vec<Listed>,
}

#[derive(Deserialize)]
struct Listed {
    id: i64,
}

/// A restaurant's day: answer each placed order, cook, hand over.
pub async fn restaurant(ctx: Ctx, restaurant: Restaurant, mut rng: StdRng) {
    let me = As::Restaurant(restaurant.id);
    let path = format!(
        "/restaurants/{}/orders?status=placed&limit=100",
        restaurant.id
    );
    let mut seen: HashSet<i64> = HashSet::new();
    while ctx.tick().await {
        let placed = match ctx
            .api
            .get(me, &path)
            .await
            .and_then(|a| a.ok::<OrderList>())
        {
            Ok(list) => list.orders,
            Err(error) => {
                ctx.error("a restaurant's orders", &error);
                continue;
            }
        };
        for order in placed {
            if !seen.insert(order.id) {
                continue;
            }
            if rng.random_bool(ctx.behaviour.ignore_confirm) {
                ctx.ledger.count(|d| d.confirms_ignored += 1);
                continue;
            }
            let task_rng = StdRng::seed_from_u64(rng.random());
            tokio::spawn(cook(ctx.clone(), restaurant.clone(), order.id, task_rng));
        }
    }
}

/// Confirm (with the kitchen's estimate of the food, within 10% of the truth), prepare,
/// ready; stops at the first refusal (the order was cancelled meanwhile).
async fn cook(ctx: Ctx, restaurant: Restaurant, order: i64, mut rng: StdRng) {
    let me = As::Restaurant(restaurant.id);
    let prep = restaurant.prep.mul_f64(rng.random_range(0.8..1.3));
    let start = seconds(&mut rng, 5, 30);
    // The server keeps real time: the estimate is in real minutes.
    let estimate = ctx.clock.real(start + prep).as_secs_f64() * rng.random_range(0.9..1.1) / 60.0;
    let confirm =
        json!({ "prep_minutes": (estimate * 100.0).round().clamp(1.0, 18_000.0) / 100.0 });
    let steps = [
        ("confirm", seconds(&mut rng, 10, 60), confirm),
        ("start-preparing", start, json!({})),
        ("ready", prep, json!({})),
    ];
    for (action, delay, body) in steps {
        if !ctx.pause(delay).await {
            return;
        }
        match ctx
            .api
            .post(me, &format!("/orders/{order}/{action}"), &body)
            .await
        {
            Ok(answer) if answer.status.is_success() => {}
            Ok(_) => return,
            Err(error) => {
                ctx.error("a restaurant step", &error);
                return;
            }
        }
    }
}

#[derive(Deserialize)]
struct Nearby {
    restaurants: Vec<Listed>,
}

#[derive(Deserialize)]
struct Menu {
    menu: Vec<Listed>,
}

#[derive(Deserialize)]
struct Placed {
    id: i64,
}

/// Customers ordering at `per_minute` simulated orders a minute (exponential gaps) until the
/// ordering period closes; each order's customer runs in a task of its own.
pub async fn customers(ctx: Ctx, per_minute: f64, mut rng: StdRng) {
    let mean_gap = 60.0 / per_minute.max(0.001);
    loop {
        let gap = -mean_gap * (1.0 - rng.random::<f64>()).ln();
        tokio::select! {
            () = ctx.closing.cancelled() => return,
            () = ctx.clock.sleep(Duration::from_secs_f64(gap)) => {}
        }
        if ctx.city.customers.is_empty() {
            return;
        }
        let customer = ctx.city.customers[rng.random_range(0..ctx.city.customers.len())];
        let task_rng = StdRng::seed_from_u64(rng.random());
        tokio::spawn(order_once(ctx.clone(), customer, task_rng));
    }
}

/// One customer's order: browse, read a menu, order (perhaps twice with the same key),
/// perhaps cancel.
async fn order_once(ctx: Ctx, customer: Customer, mut rng: StdRng) {
    if let Err(error) = try_order(&ctx, customer, &mut rng).await {
        ctx.error("a customer's order", &error);
    }
}

async fn try_order(ctx: &Ctx, customer: Customer, rng: &mut StdRng) -> anyhow::Result<()> {
    let me = As::Customer(customer.id);
    let nearby: Nearby = ctx
        .api
        .get(
            me,
            &format!(
                "/restaurants?lat={}&lon={}&radius_km=5&open=true&limit=10",
                customer.at.lat, customer.at.lon
            ),
        )
        .await?
        .ok()?;
    let ours: Vec<i64> = nearby
        .restaurants
        .iter()
        .map(|r| r.id)
        .filter(|id| ctx.city.restaurants.iter().any(|r| r.id == *id))
        .collect();
    if ours.is_empty() {
        ctx.ledger.count(|d| d.no_restaurant_nearby += 1);
        return Ok(());
    }
    let restaurant = ours[rng.random_range(0..ours.len())];
    let menu: Menu = ctx
        .api
        .get(me, &format!("/restaurants/{restaurant}"))
        .await?
        .ok()?;
    anyhow::ensure!(
        !menu.menu.is_empty(),
        "restaurant {restaurant} has an empty menu"
    );
    let lines = rng.random_range(1..=3.min(menu.menu.len()));
    let items: Vec<serde_json::Value> = (0..lines)
        .map(|i| json!({"menu_item_id": menu.menu[i].id, "quantity": rng.random_range(1..=2)}))
        .collect();
    let body = json!({
        "restaurant_id": restaurant,
        "items": items,
        "delivery_address": {"lat": customer.at.lat, "lon": customer.at.lon, "line1": "1 Sim Street"},
        "payment_method": "pm_card_visa",
    });
    let key = uuid::Uuid::new_v4().to_string();
    let headers = [("x-idempotency-key", key.as_str())];
    let placed: Placed = ctx
        .api
        .call(me, reqwest::Method::POST, "/orders", Some(&body), &headers)
        .await?
        .ok()?;
    ctx.ledger.placed(placed.id);
    if rng.random_bool(ctx.behaviour.retry_key) {
        ctx.ledger.count(|d| d.retried_keys += 1);
        let again: Placed = ctx
            .api
            .call(me, reqwest::Method::POST, "/orders", Some(&body), &headers)
            .await?
            .ok()?;
        if again.id != placed.id {
            ctx.ledger.count(|d| d.duplicate_orders += 1);
            ctx.ledger.placed(again.id);
        }
    }
    if rng.random_bool(ctx.behaviour.cancel) {
        if !ctx.pause(seconds(rng, 5, 90)).await {
            return Ok(());
        }
        let cancelled = ctx
            .api
            .post(
                me,
                &format!("/orders/{}/cancel", placed.id),
                &json!({"reason": "changed my mind"}),
            )
            .await?;
        if cancelled.status.is_success() {
            ctx.ledger.count(|d| d.customer_cancels += 1);
        }
        return Ok(());
    }
    watch(ctx, me, placed.id, rng).await
}

/// A customer watching its order (with its ETA) every couple of simulated minutes until it
/// ends or the simulation stops.
async fn watch(ctx: &Ctx, me: As, order: i64, rng: &mut StdRng) -> anyhow::Result<()> {
    loop {
        if !ctx.pause(seconds(rng, 60, 180)).await {
            return Ok(());
        }
        let state: OrderState = ctx.api.get(me, &format!("/orders/{order}")).await?.ok()?;
        if matches!(state.status.as_str(), "COMPLETED" | "CANCELLED") {
            return Ok(());
        }
    }
}
