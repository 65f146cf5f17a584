//! The simulation's report: KPIs from the final state of every order (as the API shows it to
//! an operator) and what the parties saw, the invariants that must hold, and its printed
//! table.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::api::FailureWindow;
use crate::ledger::{Decisions, Track};

/// An order as `GET /v1/orders/{id}` shows it, the fields the report needs.
#[derive(Clone, Debug, Deserialize)]
pub struct OrderView {
    pub id: i64,
    pub status: String,
    /// `None` for an order cancelled before its payment was authorised: it never was placed.
    pub placed_at: Option<DateTime<Utc>>,
    pub confirmed_at: Option<DateTime<Utc>>,
    pub ready_at: Option<DateTime<Utc>>,
    pub picked_up_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub cancel_reason: Option<String>,
}

impl OrderView {
    /// Whether the workflow has ended (completed or cancelled).
    pub fn is_terminal(&self) -> bool {
        matches!(self.status.as_str(), "COMPLETED" | "CANCELLED")
    }
}

/// Percentiles of one duration, in simulated minutes and in real seconds.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Spread {
    pub count: u64,
    pub mean_sim_min: f64,
    pub p50_sim_min: f64,
    pub p90_sim_min: f64,
    pub p99_sim_min: f64,
    pub p50_real_s: f64,
    pub p99_real_s: f64,
}

impl Spread {
    /// The spread of `real` durations with time compressed `speed` times.
    pub fn of(real: &[Duration], speed: f64) -> Spread {
        // 1 ms to a day, three significant digits.
        let Ok(mut histogram) = Histogram::<u64>::new_with_bounds(1, 86_400_000, 3) else {
            return Spread::default();
        };
        for duration in real {
            let ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
            histogram.saturating_record(ms);
        }
        if histogram.is_empty() {
            return Spread::default();
        }
        let at = |q: f64| histogram.value_at_quantile(q) as f64 / 1_000.0;
        Spread {
            count: histogram.len(),
            mean_sim_min: histogram.mean() / 1_000.0 * speed / 60.0,
            p50_sim_min: at(0.5) * speed / 60.0,
            p90_sim_min: at(0.9) * speed / 60.0,
            p99_sim_min: at(0.99) * speed / 60.0,
            p50_real_s: at(0.5),
            p99_real_s: at(0.99),
        }
    }
}

/// The first ten of `items`, and how many more there are.
fn first_few<T: std::fmt::Display>(items: &[T]) -> String {
    let shown: Vec<String> = items.iter().take(10).map(ToString::to_string).collect();
    match items.len().saturating_sub(10) {
        0 => shown.join(", "),
        more => format!("{} and {more} more", shown.join(", ")),
    }
}

/// The delivery-time target orders are counted against (simulated minutes).
pub const TARGET_MINUTES: f64 = 40.0;

/// The whole report (`--json` prints it as is).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub speed: f64,
    pub simulated_minutes: f64,
    pub drivers: usize,
    pub restaurants: usize,
    pub customers: usize,
    pub orders_placed: u64,
    pub orders_delivered: u64,
    pub orders_completed: u64,
    /// Cancelled orders by their recorded reason.
    pub cancelled: BTreeMap<String, u64>,
    /// Must be empty: orders neither completed nor cancelled after the drain, with their
    /// status, e.g. `17 READY_FOR_PICKUP`.
    pub not_terminal_after_drain: Vec<String>,
    /// Must be empty: drivers the server still counts as carrying an order once every order
    /// has ended (listed with an active order, or answered `unavailable` when online).
    pub drivers_holding_orders: Vec<i64>,
    pub click_to_door: Spread,
    /// Delivered orders whose click-to-door took more than [`TARGET_MINUTES`] simulated.
    pub orders_over_target: u64,
    /// Food waiting for its driver: ready to picked up.
    pub ready_to_pickup: Spread,
    /// Drivers waiting for the food: arrival at the restaurant to the food ready.
    pub driver_wait: Spread,
    pub placed_to_first_offer: Spread,
    pub placed_to_assigned: Spread,
    pub offers_per_order: f64,
    pub orders_per_driver_hour: f64,
    pub driver_utilisation: f64,
    /// Answers by HTTP status; no 5xx may appear.
    pub http: BTreeMap<u16, u64>,
    pub http_5xx: u64,
    pub transport_errors: u64,
    /// When the 5xx answers and transport errors happened (seconds since the run began).
    pub failures: FailureWindow,
    /// What the parties decided and saw; `duplicate_orders` (a retried idempotency key that
    /// made a second order) must be 0.
    #[serde(flatten)]
    pub decisions: Decisions,
}

/// What the report is built from.
#[derive(Debug)]
pub struct Gathered<'a> {
    pub speed: f64,
    pub simulated: Duration,
    pub drivers: usize,
    pub restaurants: usize,
    pub customers: usize,
    pub views: &'a [OrderView],
    pub tracks: &'a HashMap<i64, Track>,
    pub decisions: &'a Decisions,
    pub busy: Duration,
    /// Each wait of a driver at a restaurant for the food (real time).
    pub driver_waits: &'a [Duration],
    pub drivers_holding: Vec<i64>,
    pub http: BTreeMap<u16, u64>,
    pub transport_errors: u64,
    pub failures: FailureWindow,
}

fn between(from: DateTime<Utc>, to: Option<DateTime<Utc>>) -> Option<Duration> {
    to.and_then(|to| (to - from).to_std().ok())
}

impl Report {
    /// Computes the KPIs.
    pub fn build(g: Gathered<'_>) -> Report {
        let mut click_to_door = Vec::new();
        let mut ready_to_pickup = Vec::new();
        let mut first_offer = Vec::new();
        let mut assigned = Vec::new();
        let mut cancelled: BTreeMap<String, u64> = BTreeMap::new();
        let (mut delivered, mut completed, mut offers, mut offered) = (0, 0, 0u64, 0u64);
        let mut not_terminal = Vec::new();
        for view in g.views {
            if !view.is_terminal() {
                not_terminal.push(format!("{} {}", view.id, view.status));
            }
            match view.status.as_str() {
                "CANCELLED" => {
                    let reason = view.cancel_reason.clone().unwrap_or_else(|| "none".into());
                    *cancelled.entry(reason).or_default() += 1;
                }
                "COMPLETED" => completed += 1,
                _ => {}
            }
            let Some(placed_at) = view.placed_at else {
                continue;
            };
            if let Some(door) = between(placed_at, view.delivered_at) {
                delivered += 1;
                click_to_door.push(door);
            }
            if let (Some(ready), Some(waited)) = (view.ready_at, view.picked_up_at)
                && let Some(waited) = between(ready, Some(waited))
            {
                ready_to_pickup.push(waited);
            }
            if let Some(track) = g.tracks.get(&view.id) {
                if track.offers > 0 {
                    offers += u64::from(track.offers);
                    offered += 1;
                }
                first_offer.extend(between(placed_at, track.first_offer));
                assigned.extend(between(placed_at, track.assigned));
            }
        }
        let driver_hours = g.drivers as f64 * g.simulated.as_secs_f64() / 3_600.0;
        let d = g.decisions;
        Report {
            speed: g.speed,
            simulated_minutes: g.simulated.as_secs_f64() / 60.0,
            drivers: g.drivers,
            restaurants: g.restaurants,
            customers: g.customers,
            orders_placed: g.views.len() as u64,
            orders_delivered: delivered,
            orders_completed: completed,
            cancelled,
            not_terminal_after_drain: not_terminal,
            drivers_holding_orders: g.drivers_holding,
            orders_over_target: click_to_door
                .iter()
                .filter(|d| d.as_secs_f64() * g.speed / 60.0 > TARGET_MINUTES)
                .count() as u64,
            click_to_door: Spread::of(&click_to_door, g.speed),
            ready_to_pickup: Spread::of(&ready_to_pickup, g.speed),
            driver_wait: Spread::of(g.driver_waits, g.speed),
            placed_to_first_offer: Spread::of(&first_offer, g.speed),
            placed_to_assigned: Spread::of(&assigned, g.speed),
            offers_per_order: if offered == 0 {
                0.0
            } else {
                offers as f64 / offered as f64
            },
            orders_per_driver_hour: if driver_hours > 0.0 {
                delivered as f64 / driver_hours
            } else {
                0.0
            },
            driver_utilisation: if driver_hours > 0.0 {
                g.busy.as_secs_f64() / 3_600.0 / driver_hours
            } else {
                0.0
            },
            http_5xx: g.http.range(500..600).map(|(_, n)| n).sum(),
            http: g.http,
            transport_errors: g.transport_errors,
            failures: g.failures,
            decisions: d.clone(),
        }
    }

    /// The invariants that failed, in words; empty when the run was sound.
    pub fn violations(&self) -> Vec<String> {
        let mut failed = Vec::new();
        if !self.not_terminal_after_drain.is_empty() {
            failed.push(format!(
                "{} orders were neither completed nor cancelled after the drain: {}",
                self.not_terminal_after_drain.len(),
                first_few(&self.not_terminal_after_drain)
            ));
        }
        if self.http_5xx > 0 {
            failed.push(format!("{} answers were 5xx", self.http_5xx));
        }
        if self.decisions.duplicate_orders > 0 {
            failed.push(format!(
                "{} retried idempotency keys made a second order",
                self.decisions.duplicate_orders
            ));
        }
        if !self.drivers_holding_orders.is_empty() {
            failed.push(format!(
                "{} drivers still hold orders after every order ended: {}",
                self.drivers_holding_orders.len(),
                first_few(&self.drivers_holding_orders)
            ));
        }
        failed
    }

    /// The KPI table.
    pub fn table(&self) -> String {
        let d = &self.decisions;
        let spread = |name: &str, s: &Spread| {
            format!(
                "{name:<28} {:>8} {:>10.1} {:>10.1} {:>10.1} {:>10.2} {:>10.2}\n",
                s.count, s.p50_sim_min, s.p90_sim_min, s.p99_sim_min, s.p50_real_s, s.p99_real_s
            )
        };
        let mut out = String::new();
        out.push_str(&format!(
            "city: {} drivers, {} restaurants, {} customers; {:.0} simulated minutes at {}x\n\n",
            self.drivers, self.restaurants, self.customers, self.simulated_minutes, self.speed
        ));
        out.push_str(&format!(
            "{:<28} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10}\n",
            "duration", "orders", "p50 min", "p90 min", "p99 min", "p50 real s", "p99 real s"
        ));
        out.push_str(&spread("click to door", &self.click_to_door));
        out.push_str(&spread(
            "food waiting (ready→pickup)",
            &self.ready_to_pickup,
        ));
        out.push_str(&spread("driver waiting for food", &self.driver_wait));
        out.push_str(&spread("placed → first offer", &self.placed_to_first_offer));
        out.push_str(&spread("placed → assigned", &self.placed_to_assigned));
        out.push('\n');
        out.push_str(&format!(
            "orders: {} placed, {} delivered, {} completed, cancelled {:?}\n",
            self.orders_placed, self.orders_delivered, self.orders_completed, self.cancelled
        ));
        out.push_str(&format!(
            "click to door: mean {:.1} min, {} orders over {TARGET_MINUTES} min\n",
            self.click_to_door.mean_sim_min, self.orders_over_target
        ));
        out.push_str(&format!(
            "offers per order {:.2}; orders per driver-hour {:.2}; driver utilisation {:.0} %\n",
            self.offers_per_order,
            self.orders_per_driver_hour,
            self.driver_utilisation * 100.0
        ));
        out.push_str(&format!(
            "parties: offers accepted {} / declined {} / ignored {} / accept refused {}; confirms ignored {}; customer cancels {}; retried keys {}; drivers went offline {}\n",
            d.offers_accepted,
            d.offers_declined,
            d.offers_ignored,
            d.accepts_refused,
            d.confirms_ignored,
            d.customer_cancels,
            d.retried_keys,
            d.went_offline
        ));
        out.push_str(&format!(
            "HTTP answers by status {:?}; transport errors {}; party errors {}\n",
            self.http, self.transport_errors, d.party_errors
        ));
        if let (Some(first), Some(last)) = (self.failures.first_s, self.failures.last_s) {
            out.push_str(&format!(
                "failed requests (5xx and transport errors): {} from {first:.1} s to {last:.1} s after the start ({:.1} s)\n",
                self.failures.count,
                last - first
            ));
        }
        out.push_str(&format!(
            "invariants: not terminal after the drain {} (must be 0); 5xx {} (must be 0); duplicate orders {} (must be 0); drivers holding ended orders {} (must be 0)\n",
            self.not_terminal_after_drain.len(),
            self.http_5xx,
            self.decisions.duplicate_orders,
            self.drivers_holding_orders.len()
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_are_in_simulated_minutes_and_real_seconds() {
        let real: Vec<Duration> = (1..=100).map(Duration::from_secs).collect();
        let spread = Spread::of(&real, 10.0);
        assert_eq!(spread.count, 100);
        assert!((spread.p50_real_s - 50.0).abs() < 0.1, "{spread:?}");
        assert!(
            (spread.p50_sim_min - 50.0 * 10.0 / 60.0).abs() < 0.1,
            "{spread:?}"
        );
        assert!((spread.p99_real_s - 99.0).abs() < 0.1, "{spread:?}");
        assert_eq!(Spread::of(&[], 10.0), Spread::default());
    }

    fn view(id: i64, status: &str, minutes_to_door: Option<i64>) -> OrderView {
        let placed_at = Utc::now();
        OrderView {
            id,
            status: status.to_owned(),
            placed_at: Some(placed_at),
            confirmed_at: None,
            ready_at: None,
            picked_up_at: None,
            delivered_at: minutes_to_door.map(|m| placed_at + chrono::Duration::minutes(m)),
            cancel_reason: (status == "CANCELLED").then(|| "changed my mind".to_owned()),
        }
    }

    fn gathered<'a>(
        views: &'a [OrderView],
        tracks: &'a HashMap<i64, Track>,
        decisions: &'a Decisions,
    ) -> Gathered<'a> {
        Gathered {
            speed: 10.0,
            simulated: Duration::from_secs(600),
            drivers: 2,
            restaurants: 1,
            customers: 1,
            views,
            tracks,
            decisions,
            busy: Duration::from_secs(300),
            driver_waits: &[],
            drivers_holding: Vec::new(),
            http: BTreeMap::from([(200, 10)]),
            transport_errors: 0,
            failures: FailureWindow::default(),
        }
    }

    #[test]
    fn an_order_cancelled_before_it_was_placed_counts_only_as_cancelled() {
        let (tracks, decisions) = (HashMap::new(), Decisions::default());
        let mut never_placed = view(2, "CANCELLED", None);
        never_placed.placed_at = None;
        let views = [view(1, "COMPLETED", Some(30)), never_placed];
        let report = Report::build(gathered(&views, &tracks, &decisions));
        assert_eq!(report.orders_placed, 2);
        assert_eq!(report.cancelled.get("changed my mind"), Some(&1));
        assert_eq!(report.click_to_door.count, 1);
        assert!(report.violations().is_empty(), "{:?}", report.violations());
    }

    #[test]
    fn orders_over_40_minutes_the_mean_and_driver_waits_are_in_simulated_time() {
        let (tracks, decisions) = (HashMap::new(), Decisions::default());
        // At 10x, 3 and 5 real minutes are 30 and 50 simulated.
        let views = [view(1, "COMPLETED", Some(3)), view(2, "COMPLETED", Some(5))];
        let waits = [Duration::from_secs(30), Duration::from_secs(90)];
        let report = Report::build(Gathered {
            driver_waits: &waits,
            ..gathered(&views, &tracks, &decisions)
        });
        assert_eq!(report.orders_over_target, 1);
        assert!(
            (report.click_to_door.mean_sim_min - 40.0).abs() < 0.1,
            "{report:?}"
        );
        assert_eq!(report.driver_wait.count, 2);
        assert!(
            (report.driver_wait.mean_sim_min - 10.0).abs() < 0.1,
            "{report:?}"
        );
        assert!(report.table().contains("1 orders over 40 min"));
    }

    #[test]
    fn long_lists_are_cut_to_their_first_ten() {
        assert_eq!(first_few(&[1, 2, 3]), "1, 2, 3");
        let many: Vec<i64> = (1..=25).collect();
        assert_eq!(
            first_few(&many),
            "1, 2, 3, 4, 5, 6, 7, 8, 9, 10 and 15 more"
        );
        assert_eq!(first_few::<i64>(&[]), "");
    }

    #[test]
    fn a_sound_run_has_no_violations_and_each_broken_invariant_is_named() {
        let (tracks, decisions) = (HashMap::new(), Decisions::default());
        let views = [view(1, "COMPLETED", Some(3)), view(2, "CANCELLED", None)];
        let sound = Report::build(gathered(&views, &tracks, &decisions));
        assert!(sound.violations().is_empty(), "{:?}", sound.violations());
        assert_eq!(sound.orders_delivered, 1);
        assert_eq!(sound.cancelled.get("changed my mind"), Some(&1));
        assert!((sound.driver_utilisation - 0.25).abs() < 1e-9);

        let stuck = [view(3, "PREPARING", None)];
        let mut broken = Report::build(gathered(&stuck, &tracks, &decisions));
        broken.http = BTreeMap::from([(500, 1)]);
        broken.http_5xx = 1;
        broken.decisions.duplicate_orders = 1;
        broken.drivers_holding_orders = vec![7];
        let failed = broken.violations();
        assert_eq!(failed.len(), 4, "{failed:?}");
        assert!(failed[0].contains("3 PREPARING"), "{failed:?}");
    }
}
