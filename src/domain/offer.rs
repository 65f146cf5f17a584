//! Where a driver's offer is.

use serde::Serialize;
use strum::{EnumString, IntoStaticStr};

/// Where an offer is (`offers.status`).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Serialize, EnumString, IntoStaticStr, strum::Display,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum OfferStatus {
    Pending,
    Accepted,
    Declined,
    Expired,
    Cancelled,
}

impl OfferStatus {
    /// The status as stored.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offer_states_are_stored_in_snake_case() {
        assert_eq!(OfferStatus::Pending.as_str(), "pending");
        assert_eq!("expired".parse::<OfferStatus>(), Ok(OfferStatus::Expired));
        assert!("gone".parse::<OfferStatus>().is_err());
    }
}
