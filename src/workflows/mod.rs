//! The order workflow: an order's life as a state machine whose state lives in Postgres.
//!
//! This module owns the order states and (as the orders issue lands) the transitions between
//! them, who may take each, and the jobs each transition enqueues in its own transaction.

pub mod status;

pub use status::OrderStatus;
