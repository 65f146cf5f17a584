//! What can be done to an order, and who does it.

use serde::{Deserialize, Serialize};
use strum::{EnumString, IntoStaticStr, VariantArray};

use crate::domain::ids::{DriverId, RestaurantId, UserId};

/// Something that can be done to an order.
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
)]
#[serde(rename_all = "snake_case")]
#[strum(
    serialize_all = "snake_case",
    parse_err_ty = String,
    parse_err_fn = unknown_action
)]
pub enum Action {
    /// The payment was authorised: the order is placed with its restaurant (system only).
    Authorize,
    Confirm,
    StartPreparing,
    MarkReady,
    PickUp,
    Deliver,
    Cancel,
    AutoComplete,
}

fn unknown_action(s: &str) -> String {
    format!("unknown action `{s}`")
}

impl Action {
    /// Every action.
    pub const ALL: &'static [Action] = Action::VARIANTS;

    /// The action's name in events, audit rows and URLs.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// Who takes an action: a party of the marketplace, an operator, or courier itself (jobs and
/// cron). The API's authentication turns a token into one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Actor {
    Customer(UserId),
    Restaurant(RestaurantId),
    Driver(DriverId),
    Operator(UserId),
    System,
}

impl Actor {
    /// The actor's type as stored in `audit_logs.actor_type` and events.
    pub fn kind(self) -> &'static str {
        match self {
            Actor::Customer(_) => "customer",
            Actor::Restaurant(_) => "restaurant",
            Actor::Driver(_) => "driver",
            Actor::Operator(_) => "operator",
            Actor::System => "system",
        }
    }

    /// The actor's id, if it has one (`audit_logs.actor_id`).
    pub fn id(self) -> Option<i64> {
        match self {
            Actor::Customer(id) | Actor::Operator(id) => Some(id.get()),
            Actor::Restaurant(id) => Some(id.get()),
            Actor::Driver(id) => Some(id.get()),
            Actor::System => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_names_round_trip() {
        for &action in Action::ALL {
            assert_eq!(action.as_str().parse::<Action>(), Ok(action));
            let json = serde_json::to_string(&action).expect("serializes");
            assert_eq!(json, format!("\"{action}\""));
        }
        assert_eq!(
            "fly".parse::<Action>(),
            Err("unknown action `fly`".to_owned())
        );
    }
}
