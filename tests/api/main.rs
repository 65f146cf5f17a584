//! The integration tests: one binary, one module per area. Each test spawns its own app on a
//! fresh database and key prefix (see [`helpers`]), against the real Postgres and Valkey that
//! `just test` brings up.

mod admin;
mod architecture;
mod auth;
mod cluster;
mod cron;
mod dispatch_cycle;
mod driver_load;
mod errors;
mod eta;
mod events;
mod health;
mod helpers;
mod isolation;
mod jobs;
mod locations;
mod markets;
mod matching;
mod openapi;
mod orders;
mod payments;
mod probes;
mod ratelimits;
mod restaurants;
mod schema;
mod simulation;
mod stripe;
mod transactions;
mod users;
mod workflow;
