//! The states an order can be in: the spec's states plus COMPLETED and CANCELLED, and
//! PAYMENT_PENDING before PLACED (the payment is being authorised; the restaurant does not
//! see the order yet).
//! The same list is the `orders_status_check` constraint of the schema.

use serde::{Deserialize, Serialize};
use strum::{EnumString, IntoStaticStr, VariantArray};

/// An order's state.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    EnumString,
    IntoStaticStr,
    VariantArray,
    strum::Display,
    utoipa::ToSchema,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[strum(
    serialize_all = "SCREAMING_SNAKE_CASE",
    parse_err_ty = UnknownStatus,
    parse_err_fn = UnknownStatus::new
)]
pub enum OrderStatus {
    PaymentPending,
    Placed,
    Confirmed,
    Preparing,
    ReadyForPickup,
    PickedUp,
    Delivered,
    Completed,
    Cancelled,
}

impl OrderStatus {
    /// Every state, in workflow order.
    pub const ALL: &'static [OrderStatus] = OrderStatus::VARIANTS;

    /// The state's name as stored in `orders.status`.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Whether the order's workflow has ended.
    pub fn is_terminal(self) -> bool {
        matches!(self, OrderStatus::Completed | OrderStatus::Cancelled)
    }

    /// Whether someone still has to act on the order: it is neither delivered nor ended. A
    /// restaurant's and a driver's "active orders".
    pub fn is_active(self) -> bool {
        !matches!(
            self,
            OrderStatus::Delivered | OrderStatus::Completed | OrderStatus::Cancelled
        )
    }
}

/// A string that names no order state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown order status `{0}`")]
pub struct UnknownStatus(pub String);

impl UnknownStatus {
    fn new(s: &str) -> Self {
        UnknownStatus(s.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for &status in OrderStatus::ALL {
            assert_eq!(status.as_str().parse::<OrderStatus>(), Ok(status));
            let json = serde_json::to_string(&status).expect("serializes");
            assert_eq!(json, format!("\"{}\"", status.as_str()));
        }
        assert!("SHIPPED".parse::<OrderStatus>().is_err());
    }

    #[test]
    fn active_orders_are_those_not_yet_delivered_or_ended() {
        let active: Vec<&str> = OrderStatus::ALL
            .iter()
            .copied()
            .filter(|s| s.is_active())
            .map(OrderStatus::as_str)
            .collect();
        assert_eq!(
            active,
            [
                "PAYMENT_PENDING",
                "PLACED",
                "CONFIRMED",
                "PREPARING",
                "READY_FOR_PICKUP",
                "PICKED_UP"
            ]
        );
        assert!(
            OrderStatus::ALL
                .iter()
                .copied()
                .all(|s| !(s.is_active() && s.is_terminal()))
        );
    }

    #[test]
    fn only_completed_and_cancelled_are_terminal() {
        let terminal: Vec<_> = OrderStatus::ALL
            .iter()
            .copied()
            .filter(|s| s.is_terminal())
            .collect();
        assert_eq!(
            terminal,
            vec![OrderStatus::Completed, OrderStatus::Cancelled]
        );
    }
}
