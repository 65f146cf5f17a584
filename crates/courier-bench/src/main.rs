//! `courier-bench`: courier's benchmarks, kept out of the server binary. Each starts what it
//! measures on a dedicated database and key prefix, prints its figures beside a baseline
//! measured in the same run, and exits; results and commands are in `docs/benchmarks.md`.
//!
//! - `location` ([`location`]): location ingest and nearby search under load, against raw
//!   Valkey;
//! - `jobs` ([`jobs`]): the job layer's drain and latencies, against plain SQL (and
//!   graphile-worker);
//! - `e2e` ([`e2e`]): a whole city at peak — thousands of drivers reporting, orders carried
//!   through the whole workflow — with every process's CPU;
//! - `sse` ([`sse`]): thousands of live SSE clients on one server while orders move: memory
//!   per connection and commit→client latency, against the stream read directly;
//! - `dispatch` ([`dispatch`]): the dispatch cycle's solve at 500 × 2,000 against the
//!   per-order choice, and the simulator's city under per-order matching and under cycles.

mod cpu;
mod dispatch;
mod e2e;
mod jobs;
mod location;
mod server;
mod sse;

use std::process::ExitCode;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use courier::config::{CommonArgs, Config};

/// courier's benchmarks.
#[derive(Debug, Parser)]
#[command(
    name = "courier-bench",
    about = "courier's benchmarks (docs/benchmarks.md)"
)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Location ingest and nearby search under load, against raw Valkey in the same run.
    Location(location::LocationBench),
    /// The job layer: a drain through the worker setup, enqueue→start latency, and plain SQL
    /// claim loops and inserts on the same database in the same run.
    Jobs(jobs::JobsBench),
    /// A whole city at peak through the API: drivers reporting, orders placed and carried
    /// through the workflow by `courier serve` and `courier worker`.
    E2e(e2e::E2eBench),
    /// Live clients: thousands of SSE connections on one server while orders move, against
    /// the same events read straight from the Valkey stream.
    Sse(sse::SseBench),
    /// Dispatch: the cycle's solve against the per-order choice, and the simulated city under
    /// per-order matching and under cycles, on one seed.
    Dispatch(dispatch::DispatchBench),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    courier::telemetry::init_logging(&cli.common.log_level, cli.common.log_format);
    let outcome = async {
        let config = Config::from_args(&cli.common)?;
        match &cli.command {
            Command::Location(options) => location::run_location(&config, options).await,
            Command::Jobs(options) => jobs::run_jobs(&config, options).await,
            Command::E2e(options) => e2e::run(&config, options).await,
            Command::Sse(options) => sse::run(&config, options).await,
            Command::Dispatch(options) => dispatch::run(&config, options).await,
        }
    };
    match outcome.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
