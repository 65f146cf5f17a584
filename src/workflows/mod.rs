//! The order workflow: an order's life as a state machine whose state lives in Postgres.
//!
//! - [`status`]: the states.
//! - [`machine`]: the transition table and who may take each action (pure).
//! - [`pricing`]: totals and the delivery fee (pure).
//! - [`transition`]: the executor that applies an action in one transaction with its audit
//!   row, outbox event and follow-up jobs.
//! - [`events`]: order events other than status changes (audit row and outbox event).
//! - [`place`]: order creation with prices from the menu and idempotency in Postgres.

pub mod events;
pub mod machine;
pub mod place;
pub mod pricing;
pub mod status;
pub mod transition;

pub use status::OrderStatus;
