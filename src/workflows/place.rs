//! Placing an order: validation, prices from the menu, and idempotency enforced in Postgres.
//!
//! One transaction does everything: it claims the idempotency key (`INSERT … ON CONFLICT` on
//! `(customer_id, idempotency_key)`), checks the restaurant and the items, prices the cart from
//! the menu (the client's prices are never read), inserts the order (PAYMENT_PENDING) and its
//! items and its payment (`authorizing`, with the customer's payment method and the keys of its
//! provider calls), writes the audit row and the status event, enqueues the payment's
//! authorisation, and stores the response under the key. The restaurant is asked once the
//! payment is authorised ([`crate::workflows::payment`]). N concurrent requests with one key therefore create exactly one order: the
//! others wait on the key's row lock and then replay the stored response. The same key with a
//! different body is refused. Keys live 24 hours (the spec); an expired key is reclaimed.

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;
use sqlx::PgPool;

use crate::domain::{Actor, OrderId, OrderStatus, UserId};
use crate::store::orders::{self, OrderView};
use crate::workflows::effects::{self, EffectError};
use crate::workflows::events::{Change, RequestMeta, record_change};
use crate::workflows::pricing;
use crate::workflows::steps::{self, CONFIRM_WITHIN};

/// Most lines in one cart.
pub const MAX_LINES: usize = 50;
/// Most units of one item in one line.
pub const MAX_QUANTITY: i32 = 50;
/// Longest idempotency key.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// A validated delivery address.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DeliveryAddress {
    pub lat: f64,
    pub lon: f64,
    pub line1: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line2: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postal_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
}

/// One validated cart line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CartLine {
    pub menu_item_id: i64,
    pub quantity: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub special_instructions: Option<String>,
}

/// A validated order request. Its JSON form is the canonical body the idempotency hash covers.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NewOrder {
    pub restaurant_id: i64,
    pub items: Vec<CartLine>,
    pub delivery_address: DeliveryAddress,
    /// The provider's token of the customer's payment method (`pm_…`).
    pub payment_method: String,
}

/// Why an order could not be placed. Nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    #[error("restaurant {0} does not exist")]
    UnknownRestaurant(i64),
    #[error("restaurant {0} is closed")]
    RestaurantClosed(i64),
    #[error("menu item {0} does not exist")]
    UnknownItem(i64),
    #[error("menu item {0} is not on this restaurant's menu")]
    ItemOfAnotherRestaurant(i64),
    #[error("menu item {0} is currently unavailable")]
    ItemUnavailable(i64),
    #[error(
        "the delivery address is {distance_m:.0} m away; this restaurant delivers within {radius_m} m"
    )]
    OutOfDeliveryRange { distance_m: f64, radius_m: i32 },
    #[error("the order total is above the limit of {max_cents} cents")]
    TotalTooLarge { max_cents: i64 },
    #[error("this idempotency key was used with a different request")]
    IdempotencyKeyReused,
    #[error("could not write the placement's effects: {0}")]
    Effects(#[from] EffectError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// The answer to a place-order request: the stored body, and whether it was replayed.
#[derive(Debug)]
pub struct Placed {
    pub body: serde_json::Value,
    pub replayed: bool,
}

#[derive(sqlx::FromRow)]
struct RestaurantCheck {
    is_open: bool,
    delivery_radius_m: i32,
    distance_m: f64,
}

#[derive(sqlx::FromRow)]
struct MenuRow {
    id: i64,
    restaurant_id: i64,
    name: String,
    price_cents: i64,
    is_available: bool,
}

/// Limits on what one order may be, and how long its restaurant has to confirm it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrderLimits {
    /// Largest total (items and delivery fee), in cents: a typo or an abuse of a hundred
    /// thousand dollars should never reach a restaurant or a payment provider.
    pub max_total_cents: i64,
    /// How long the restaurant has to confirm before the system cancels the order.
    pub confirm_within: Duration,
}

impl Default for OrderLimits {
    fn default() -> Self {
        Self {
            max_total_cents: 500_000,
            confirm_within: CONFIRM_WITHIN,
        }
    }
}

/// Places `order` for `customer_id` under `idempotency_key`.
pub async fn place(
    pool: &PgPool,
    limits: OrderLimits,
    customer_id: UserId,
    idempotency_key: &str,
    order: &NewOrder,
    meta: &RequestMeta,
) -> Result<Placed, PlaceError> {
    let canonical = serde_json::to_string(order).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let mut tx = crate::store::begin(pool).await?;

    // Claim the key. A live key held by a concurrent request blocks here until that request's
    // transaction ends; then there is no row to return and we replay what it stored.
    let claimed: Option<bool> = sqlx::query_scalar(
        "INSERT INTO order_idempotency_keys (customer_id, idempotency_key, request_hash)
         VALUES ($1, $2, encode(sha256(convert_to($3, 'UTF8')), 'hex'))
         ON CONFLICT (customer_id, idempotency_key) DO UPDATE
             SET request_hash = EXCLUDED.request_hash, order_id = NULL, response_status = NULL,
                 response_body = NULL, created_at = now(), expires_at = now() + INTERVAL '24 hours'
             WHERE order_idempotency_keys.expires_at <= now()
         RETURNING true",
    )
    .bind(customer_id)
    .bind(idempotency_key)
    .bind(&canonical)
    .fetch_optional(&mut *tx)
    .await?;
    if claimed.is_none() {
        let (same_request, body): (bool, Option<serde_json::Value>) = sqlx::query_as(
            "SELECT request_hash = encode(sha256(convert_to($3, 'UTF8')), 'hex'), response_body
             FROM order_idempotency_keys WHERE customer_id = $1 AND idempotency_key = $2",
        )
        .bind(customer_id)
        .bind(idempotency_key)
        .bind(&canonical)
        .fetch_one(&mut *tx)
        .await?;
        tx.rollback().await?;
        return match (same_request, body) {
            (false, _) => Err(PlaceError::IdempotencyKeyReused),
            (true, Some(body)) => Ok(Placed {
                body,
                replayed: true,
            }),
            // A committed claim always stores its response in the same transaction.
            (true, None) => Err(PlaceError::Database(sqlx::Error::RowNotFound)),
        };
    }

    let restaurant: RestaurantCheck = sqlx::query_as(
        "SELECT is_open, delivery_radius_m,
                ST_Distance(location, ST_SetSRID(ST_MakePoint($2, $3), 4326)::geography) AS distance_m
         FROM restaurants WHERE id = $1",
    )
    .bind(order.restaurant_id)
    .bind(order.delivery_address.lon)
    .bind(order.delivery_address.lat)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(PlaceError::UnknownRestaurant(order.restaurant_id))?;
    if !restaurant.is_open {
        return Err(PlaceError::RestaurantClosed(order.restaurant_id));
    }
    if restaurant.distance_m > f64::from(restaurant.delivery_radius_m) {
        return Err(PlaceError::OutOfDeliveryRange {
            distance_m: restaurant.distance_m,
            radius_m: restaurant.delivery_radius_m,
        });
    }

    let ids: Vec<i64> = order.items.iter().map(|l| l.menu_item_id).collect();
    let menu: HashMap<i64, MenuRow> = sqlx::query_as::<_, MenuRow>(
        "SELECT id, restaurant_id, name, price_cents, is_available FROM menu_items WHERE id = ANY($1) AND deleted_at IS NULL",
    )
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|row| (row.id, row))
    .collect();
    let mut priced = Vec::with_capacity(order.items.len());
    for line in &order.items {
        let item = menu
            .get(&line.menu_item_id)
            .ok_or(PlaceError::UnknownItem(line.menu_item_id))?;
        if item.restaurant_id != order.restaurant_id {
            return Err(PlaceError::ItemOfAnotherRestaurant(item.id));
        }
        if !item.is_available {
            return Err(PlaceError::ItemUnavailable(item.id));
        }
        priced.push((line, item));
    }
    let amounts: Vec<(i64, i32)> = priced
        .iter()
        .map(|(line, item)| (item.price_cents, line.quantity))
        .collect();
    let too_large = PlaceError::TotalTooLarge {
        max_cents: limits.max_total_cents,
    };
    let fee = pricing::delivery_fee_cents(restaurant.distance_m);
    let (subtotal, total) = pricing::subtotal_cents(&amounts)
        .and_then(|subtotal| Some((subtotal, subtotal.checked_add(fee)?)))
        .filter(|(_, total)| *total <= limits.max_total_cents)
        .ok_or(too_large)?;

    let (order_id, market): (OrderId, String) = sqlx::query_as(
        "INSERT INTO orders (customer_id, restaurant_id, status, subtotal_cents, delivery_fee_cents,
                             total_cents, delivery_address, delivery_location, market_id)
         VALUES ($1, $2, 'PAYMENT_PENDING', $3, $4, $5, $6, ST_SetSRID(ST_MakePoint($7, $8), 4326)::geography,
                 (SELECT market_id FROM restaurants WHERE id = $2))
         RETURNING id, (SELECT slug FROM markets WHERE id = market_id)",
    )
    .bind(customer_id)
    .bind(order.restaurant_id)
    .bind(subtotal)
    .bind(fee)
    .bind(total)
    .bind(sqlx::types::Json(&order.delivery_address))
    .bind(order.delivery_address.lon)
    .bind(order.delivery_address.lat)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO order_items (order_id, menu_item_id, name, quantity, unit_price_cents, special_instructions)
         SELECT $1, * FROM UNNEST($2::bigint[], $3::text[], $4::int[], $5::bigint[], $6::text[])",
    )
    .bind(order_id)
    .bind(priced.iter().map(|(_, item)| item.id).collect::<Vec<_>>())
    .bind(priced.iter().map(|(_, item)| item.name.clone()).collect::<Vec<_>>())
    .bind(priced.iter().map(|(line, _)| line.quantity).collect::<Vec<_>>())
    .bind(priced.iter().map(|(_, item)| item.price_cents).collect::<Vec<_>>())
    .bind(priced.iter().map(|(line, _)| line.special_instructions.clone()).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;

    sqlx::query(
        "INSERT INTO payments (order_id, payment_method, authorize_key, capture_key, amount_cents, currency)
         SELECT id, $2, 'courier-authorize-' || id, 'courier-capture-' || id, total_cents, currency
         FROM orders WHERE id = $1",
    )
    .bind(order_id)
    .bind(&order.payment_method)
    .execute(&mut *tx)
    .await?;
    record_change(
        &mut tx,
        &Change {
            order_id,
            from: None,
            to: OrderStatus::PaymentPending,
            action: "place",
            actor: Actor::Customer(customer_id),
            meta,
            reason: None,
        },
    )
    .await?;
    effects::write(&mut tx, steps::placed(order_id)).await?;

    let view: OrderView = orders::fetch_view(&mut tx, order_id)
        .await?
        .ok_or(PlaceError::Database(sqlx::Error::RowNotFound))?;
    let body = serde_json::to_value(&view).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query(
        "UPDATE order_idempotency_keys SET order_id = $3, response_status = 201, response_body = $4
         WHERE customer_id = $1 AND idempotency_key = $2",
    )
    .bind(customer_id)
    .bind(idempotency_key)
    .bind(order_id)
    .bind(&body)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    metrics::counter!("orders_total", "status" => OrderStatus::PaymentPending.as_str(), "market" => market)
        .increment(1);
    tracing::info!(
        order_id = order_id.get(),
        customer_id = customer_id.get(),
        total_cents = total,
        "order placed"
    );
    Ok(Placed {
        body,
        replayed: false,
    })
}

/// Deletes idempotency keys past their 24 hours; returns how many.
pub async fn purge_expired_keys(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let deleted = sqlx::query("DELETE FROM order_idempotency_keys WHERE expires_at <= now()")
        .execute(pool)
        .await?;
    Ok(deleted.rows_affected())
}
