//! Ids as types: an order id is not a driver id, so `accept(offer, driver)` cannot be called
//! with its arguments swapped. Each is a transparent `i64` in Postgres (`BIGINT` columns), in
//! JSON (job arguments, API bodies) and in logs.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

macro_rules! ids {
    ($($(#[$doc:meta])* $name:ident),+ $(,)?) => {$(
        $(#[$doc])*
        #[derive(
            Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
            sqlx::Type, utoipa::ToSchema,
        )]
        #[serde(transparent)]
        #[sqlx(transparent)]
        pub struct $name(pub i64);

        impl $name {
            /// The id as stored.
            pub fn get(self) -> i64 {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = std::num::ParseIntError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.parse().map(Self)
            }
        }

        impl From<$name> for i64 {
            fn from(id: $name) -> i64 {
                id.0
            }
        }
    )+};
}

ids! {
    /// `orders.id`.
    OrderId,
    /// `drivers.id` (not the driver's user id).
    DriverId,
    /// `restaurants.id` (not its owner's user id).
    RestaurantId,
    /// `users.id`: customers and operators.
    UserId,
    /// `offers.id`.
    OfferId,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_plain_numbers_in_json_and_text() {
        let id = OrderId(42);
        assert_eq!(serde_json::to_string(&id).expect("serializes"), "42");
        assert_eq!(serde_json::from_str::<OrderId>("42").expect("parses"), id);
        assert_eq!(id.to_string(), "42");
        assert_eq!("42".parse::<OrderId>(), Ok(id));
        assert!("x".parse::<DriverId>().is_err());
    }
}
