//! Queries on `orders` and `order_items`: the order as clients see it, and scoped listings.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;

use crate::domain::{Actor, DriverId, OrderId, OrderStatus, RestaurantId, UserId};

/// An order as the API returns it: status, timestamps, items, totals, driver.
#[derive(Clone, Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct OrderView {
    pub id: OrderId,
    #[schema(value_type = OrderStatus)]
    pub status: String,
    pub customer_id: UserId,
    pub restaurant_id: RestaurantId,
    pub driver_id: Option<DriverId>,
    #[sqlx(json)]
    pub items: Vec<OrderItemView>,
    pub subtotal_cents: i64,
    pub delivery_fee_cents: i64,
    pub total_cents: i64,
    pub currency: String,
    /// Where it goes: `lat`, `lon`, `line1` and, when given, `line2`, `city`, `postal_code`
    /// and `instructions`.
    pub delivery_address: serde_json::Value,
    pub estimated_delivery_at: Option<DateTime<Utc>>,
    /// When the restaurant was asked (the payment authorised); empty before.
    pub placed_at: Option<DateTime<Utc>>,
    pub confirmed_at: Option<DateTime<Utc>>,
    pub preparing_at: Option<DateTime<Utc>>,
    pub ready_at: Option<DateTime<Utc>>,
    pub picked_up_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub cancelled_at: Option<DateTime<Utc>>,
    pub cancel_reason: Option<String>,
    /// The kitchen's estimate of the food's preparation, in minutes (set on confirmation).
    pub prep_minutes: Option<f64>,
    /// When the food is expected ready, by that estimate.
    pub food_ready_at: Option<DateTime<Utc>>,
    pub version: i32,
}

/// One line of an order.
#[derive(Clone, Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct OrderItemView {
    pub menu_item_id: i64,
    pub name: String,
    pub quantity: i32,
    pub unit_price_cents: i64,
    pub special_instructions: Option<String>,
}

const VIEW_SELECT: &str = "
    SELECT o.id, o.status, o.customer_id, o.restaurant_id, o.driver_id,
           COALESCE((SELECT jsonb_agg(jsonb_build_object(
                        'menu_item_id', i.menu_item_id, 'name', i.name, 'quantity', i.quantity,
                        'unit_price_cents', i.unit_price_cents,
                        'special_instructions', i.special_instructions) ORDER BY i.id)
                     FROM order_items i WHERE i.order_id = o.id), '[]'::jsonb) AS items,
           o.subtotal_cents, o.delivery_fee_cents, o.total_cents, o.currency::text AS currency,
           o.delivery_address, o.estimated_delivery_at, o.placed_at, o.confirmed_at,
           o.preparing_at, o.ready_at, o.picked_up_at, o.delivered_at, o.completed_at,
           o.cancelled_at, o.cancel_reason, o.prep_minutes, o.food_ready_at, o.version
    FROM orders o";

/// The order with this id, if any.
pub async fn fetch_view(
    conn: &mut PgConnection,
    order_id: OrderId,
) -> Result<Option<OrderView>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{VIEW_SELECT} WHERE o.id = $1"
    )))
    .bind(order_id)
    .fetch_optional(conn)
    .await
}

/// Filters of an order listing.
#[derive(Clone, Debug)]
pub struct ListFilter {
    /// Only orders in one of these states (every state when `None`).
    pub statuses: Option<Vec<&'static str>>,
    /// Only orders with an id below this (keyset pagination, newest first).
    pub before_id: Option<i64>,
    pub limit: i64,
}

/// Orders visible to `actor`, newest first.
pub async fn list(
    conn: &mut PgConnection,
    actor: Actor,
    filter: &ListFilter,
) -> Result<Vec<OrderView>, sqlx::Error> {
    let (scope, subject) = match actor {
        Actor::Customer(id) => ("o.customer_id = $1", id.get()),
        // A restaurant sees an order only once it was placed with it (payment authorised).
        Actor::Restaurant(id) => ("o.restaurant_id = $1 AND o.placed_at IS NOT NULL", id.get()),
        Actor::Driver(id) => ("o.driver_id = $1", id.get()),
        Actor::Operator(_) | Actor::System => ("$1::bigint IS NOT NULL", 0),
    };
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{VIEW_SELECT} WHERE {scope}
           AND ($2::text[] IS NULL OR o.status = ANY($2))
           AND ($3::bigint IS NULL OR o.id < $3)
         ORDER BY o.id DESC LIMIT $4"
    )))
    .bind(subject)
    .bind(filter.statuses.as_deref())
    .bind(filter.before_id)
    .bind(filter.limit)
    .fetch_all(conn)
    .await
}
