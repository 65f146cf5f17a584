//! courier: the backend of a food-delivery marketplace.
//!
//! Orders are durable workflows whose state lives in Postgres and whose steps run as apalis jobs
//! persisted in Postgres; driver locations live in Valkey. This crate is both the library the
//! binary and the integration tests build on and the `courier` command itself.
//!
//! Module map:
//! - [`admin`]: `courier admin …`, the operators' commands.
//! - [`config`]: every setting, parsed and validated once from flags and environment.
//! - [`startup`]: builds the HTTP application ([`startup::Application`]) and the worker process.
//! - [`api`]: the HTTP surface, one router per resource group, merged in one place.
//! - [`auth`]: signed bearer tokens, roles and the principal extractor.
//! - [`error`]: the one API error type and its JSON shape.
//! - [`store`]: the Postgres pool, migrations and SQL queries.
//! - [`valkey`]: the Valkey connection and key namespacing.
//! - [`cache`]: cache-aside on Valkey (restaurants, nearby searches).
//! - [`geo`]: coordinates, distances and cache cells (pure).
//! - [`location`]: driver positions in Valkey, nearby search, expiry, history.
//! - [`dispatch`]: driver matching: scoring, batching, offers, the circuit breaker.
//! - [`eta`]: delivery ETAs, traffic multipliers, routing (OSRM client, estimator, cache).
//! - [`clock`]: the injectable wall clock.
//! - [`cron`]: periodic tasks (auto-completion, stuck orders, housekeeping, partitions), once
//!   per tick across the fleet.
//! - [`jobs`]: apalis workers and their registry.
//! - [`notify`]: signed webhooks to customers, drivers and restaurants.
//! - [`payments`]: payment capture (Stripe-style client, development ledger), exactly once.
//! - [`workflows`]: the order workflow (state machine and transitions).
//! - [`telemetry`]: structured logs and Prometheus metrics.
//! - [`seed`]: the synthetic city of `courier seed`.
//! - [`shutdown`]: signal handling and the shutdown token shared by background tasks.

pub mod admin;
pub mod api;
pub mod auth;
pub mod cache;
pub mod cli;
pub mod clock;
pub mod config;
pub mod cron;
pub mod dispatch;
pub mod error;
pub mod eta;
pub mod geo;
pub mod jobs;
pub mod location;
pub mod notify;
pub mod payments;
pub mod seed;
pub mod shutdown;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod text;
pub mod valkey;
pub mod workflows;
