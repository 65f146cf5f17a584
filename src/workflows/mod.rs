//! The order's workflow: the one writer of the `orders` table. Every change of an order —
//! placement, a transition of its state, a matching round, an offer's answer, its ETA, its
//! payment's outcome, its review request — is a function here, which writes the change and
//! its effects in one transaction and runs what must wait for the commit. API handlers, admin
//! commands, cron tasks and job handlers call these and nothing else to change an order.
//!
//! Read the order's life in [`steps`] (what each change causes: jobs, webhooks, events, the
//! driver's load) and [`machine`] (who may move an order from which state to which).
//!
//! - [`machine`]: the transition table and who may take each action (pure).
//! - [`steps`]: each step's effects (pure).
//! - [`pricing`]: totals and the delivery fee (pure).
//! - [`effects`]: writes effects on the change's transaction; the post-commit Valkey sync.
//! - [`events`]: the audit and outbox rows of an order.
//! - [`place`]: order creation with prices from the menu and idempotency in Postgres.
//! - [`transition`]: one action on one order.
//! - [`matching`]: one matching round; reviving matching; a cycle's offer.
//! - [`cycle`]: a market's dispatch cycle (all its waiting orders at once) and its loop.
//! - [`prep`]: the restaurant's estimate of the food's preparation.
//! - [`offers`]: accept (assignment), decline, expiry, cancellation of offers.
//! - [`eta`]: the stored ETA.
//! - [`payment`]: the payment's authorisation, capture and release, and their outcomes.
//! - [`refund`]: operators' refunds and write-offs.
//! - [`review`]: the review request.

pub mod cycle;
pub mod effects;
pub mod eta;
pub mod events;
pub mod machine;
pub mod matching;
pub mod offers;
pub mod payment;
pub mod place;
pub mod prep;
pub mod pricing;
pub mod refund;
pub mod review;
pub mod steps;
pub mod transition;

pub use events::RequestMeta;
