//! The domain's vocabulary, the ground floor every other module builds on: ids as types, the
//! order's states and actions, who acts, the parties' roles, offer states. Plain values with
//! their string forms (derived, not written by hand) and no I/O; this module imports nothing
//! else from courier.

pub mod action;
pub mod ids;
pub mod offer;
pub mod party;
pub mod status;

pub use action::{Action, Actor};
pub use ids::{DriverId, OfferId, OrderId, RestaurantId, UserId};
pub use offer::OfferStatus;
pub use party::{Audience, Role};
pub use status::{OrderStatus, UnknownStatus};
