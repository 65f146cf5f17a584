//! The states an order can be in: the spec's states plus COMPLETED and CANCELLED.
//! The same list is the `orders_status_check` constraint of the schema.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An order's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
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
    pub const ALL: [OrderStatus; 8] = [
        OrderStatus::Placed,
        OrderStatus::Confirmed,
        OrderStatus::Preparing,
        OrderStatus::ReadyForPickup,
        OrderStatus::PickedUp,
        OrderStatus::Delivered,
        OrderStatus::Completed,
        OrderStatus::Cancelled,
    ];

    /// The state's name as stored in `orders.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Placed => "PLACED",
            OrderStatus::Confirmed => "CONFIRMED",
            OrderStatus::Preparing => "PREPARING",
            OrderStatus::ReadyForPickup => "READY_FOR_PICKUP",
            OrderStatus::PickedUp => "PICKED_UP",
            OrderStatus::Delivered => "DELIVERED",
            OrderStatus::Completed => "COMPLETED",
            OrderStatus::Cancelled => "CANCELLED",
        }
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

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no order state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown order status `{0}`")]
pub struct UnknownStatus(pub String);

impl FromStr for OrderStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OrderStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for status in OrderStatus::ALL {
            assert_eq!(status.as_str().parse::<OrderStatus>(), Ok(status));
            let json = serde_json::to_string(&status).expect("serializes");
            assert_eq!(json, format!("\"{}\"", status.as_str()));
        }
        assert!("SHIPPED".parse::<OrderStatus>().is_err());
    }

    #[test]
    fn active_orders_are_those_not_yet_delivered_or_ended() {
        let active: Vec<&str> = OrderStatus::ALL
            .into_iter()
            .filter(|s| s.is_active())
            .map(OrderStatus::as_str)
            .collect();
        assert_eq!(
            active,
            [
                "PLACED",
                "CONFIRMED",
                "PREPARING",
                "READY_FOR_PICKUP",
                "PICKED_UP"
            ]
        );
        assert!(
            OrderStatus::ALL
                .into_iter()
                .all(|s| !(s.is_active() && s.is_terminal()))
        );
    }

    #[test]
    fn only_completed_and_cancelled_are_terminal() {
        let terminal: Vec<_> = OrderStatus::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .collect();
        assert_eq!(
            terminal,
            vec![OrderStatus::Completed, OrderStatus::Cancelled]
        );
    }
}
