//! The parties of the marketplace: the roles a token can carry, and the audiences of
//! notifications.

use serde::{Deserialize, Serialize};
use strum::{EnumString, IntoStaticStr, VariantArray};

/// What a principal is to the marketplace.
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
#[serde(rename_all = "lowercase")]
#[strum(
    serialize_all = "lowercase",
    parse_err_ty = String,
    parse_err_fn = unknown_role
)]
pub enum Role {
    Customer,
    Restaurant,
    Driver,
    Operator,
}

fn unknown_role(s: &str) -> String {
    format!("unknown role `{s}` (expected customer, restaurant, driver or operator)")
}

impl Role {
    /// The role's name as it appears in tokens and the database.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// What a token's subject is for this role: the id it must name.
    pub fn subject_kind(self) -> &'static str {
        match self {
            Role::Customer | Role::Operator => "a user id (users.id)",
            Role::Restaurant => "a restaurant id (restaurants.id), not its owner's user id",
            Role::Driver => "a driver id (drivers.id), not the driver's user id",
        }
    }
}

/// Who a notification is for.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, IntoStaticStr, strum::Display,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Audience {
    Customer,
    Driver,
    Restaurant,
}

impl Audience {
    /// The audience's name.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_and_unknown_ones_say_what_is_expected() {
        for &role in Role::VARIANTS {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
            let json = serde_json::to_string(&role).expect("serializes");
            assert_eq!(json, format!("\"{role}\""));
        }
        let error = "admin".parse::<Role>().expect_err("not a role");
        assert!(error.contains("expected customer"), "{error}");
        assert_eq!(Audience::Restaurant.as_str(), "restaurant");
    }
}
