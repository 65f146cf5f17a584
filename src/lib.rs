//! courier: the backend of a food-delivery marketplace.
//!
//! Orders are durable workflows whose state lives in Postgres and whose steps run as apalis jobs
//! persisted in Postgres; driver locations live in Valkey. This crate is both the library the
//! binary and the integration tests build on and the `courier` command itself.
//!
//! Module map, from the ground up (each imports only its own floor and below; the map with the
//! order's steps is `docs/architecture.md`, and the `architecture` tests hold the code to it):
//! 1. [`domain`] (ids, order states and actions, actors, roles, offer states), [`geo`],
//!    [`clock`], [`shutdown`], [`text`]: vocabulary and pure helpers.
//! 2. [`jobs`] (job messages and `enqueue`), [`error`] (the API error), [`valkey`],
//!    [`breaker`] (the circuit breaker).
//! 3. [`store`] (pool, migrations, queries), [`location`] (positions in Valkey, nearby
//!    search), [`cache`], [`auth`] (tokens → actors), [`ratelimit`] (limits shared through
//!    Valkey).
//! 4. [`eta`] (routing and ETAs), [`notify`] (webhooks), [`payments`] (providers),
//!    [`outbox`] (the relay that publishes order events to Valkey Streams and Kafka).
//! 5. [`dispatch`]: candidates and scoring; [`live`]: the in-process fan-out of live events
//!    to SSE clients.
//! 6. [`workflows`]: the order's one writer — every change of an order and its effects;
//!    [`telemetry`], [`seed`].
//! 7. The edges that call it: [`api`] (HTTP), [`workers`] (job handlers), [`cron`].
//! 8. [`config`]: every setting, parsed once from flags and environment.
//! 9. [`admin`] (`courier admin …`), [`startup`] (the server and worker processes).
//! 10. [`cli`]: the command line.

pub mod admin;
pub mod api;
pub mod auth;
pub mod breaker;
pub mod cache;
pub mod cli;
pub mod clock;
pub mod config;
pub mod cron;
pub mod dispatch;
pub mod domain;
pub mod error;
pub mod eta;
pub mod geo;
pub mod jobs;
pub mod live;
pub mod location;
pub mod market;
pub mod notify;
pub mod outbox;
pub mod payments;
pub mod ratelimit;
pub mod seed;
pub mod shutdown;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod text;
pub mod valkey;
pub mod workers;
pub mod workflows;
