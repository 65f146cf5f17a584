//! `courier-sim`: runs a simulated city against a courier server and prints its KPIs (see the
//! library docs). Exits 1 when an invariant failed.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use courier_sim::clock::Spot;
use courier_sim::{Settings, Status};

/// The development signing secret of `courier --dev` (see courier's `config.rs`).
const DEV_JWT_SECRET: &str = "courier-development-secret-never-use-in-production";

#[derive(Debug, Parser)]
#[command(
    name = "courier-sim",
    about = "Run a simulated city against a courier server"
)]
struct Cli {
    /// The server, or several API processes of one deployment, comma-separated: each party
    /// sticks to one of them.
    #[arg(long, env = "COURIER_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The server's token signing secret; the development secret when absent.
    #[arg(long, env = "COURIER_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// The operator's user id (`courier seed` makes user 1 an operator).
    #[arg(long, default_value_t = 1)]
    operator: i64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 40)]
    drivers: usize,
    #[arg(long, default_value_t = 10)]
    restaurants: usize,
    #[arg(long, default_value_t = 80)]
    customers: usize,
    /// Cities, each a market the run creates (1: one city in whatever market contains it).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=20))]
    markets: u16,
    /// Orders per simulated minute (a driver takes about 20 simulated minutes an order:
    /// offered at confirmation, it waits for the food).
    #[arg(long, default_value_t = 1.5)]
    orders_per_minute: f64,
    /// How long customers order, in simulated time, e.g. `20m`.
    #[arg(long, default_value = "20m", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Simulated seconds per real second.
    #[arg(long, default_value_t = 10.0)]
    speed: f64,
    /// Longest real wait for every order to end after ordering stops, e.g. `2m`.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    drain: Duration,
    /// City centre latitude and longitude.
    #[arg(long, default_value_t = 40.7128)]
    lat: f64,
    #[arg(long, default_value_t = -74.0060)]
    lon: f64,
    /// Every city a market the run creates, dispatching this way (`per-order` or `cycle`);
    /// without it, markets dispatch as the server's do.
    #[arg(long, value_enum)]
    dispatch: Option<courier_sim::city::Dispatch>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Also write the report as JSON to this file (the table is printed as usual).
    #[arg(long)]
    json_out: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("courier-sim: {error}");
            return ExitCode::FAILURE;
        }
    };
    let secret = cli
        .jwt_secret
        .clone()
        .unwrap_or_else(|| DEV_JWT_SECRET.to_owned());
    let mut settings = Settings::new(&cli.url, secret.as_bytes(), cli.operator);
    settings.seed = cli.seed;
    settings.plan.drivers = cli.drivers;
    settings.plan.restaurants = cli.restaurants;
    settings.plan.customers = cli.customers;
    settings.plan.cities = usize::from(cli.markets);
    settings.plan.dispatch = cli.dispatch;
    settings.orders_per_minute = cli.orders_per_minute;
    settings.duration = cli.duration;
    settings.speed = cli.speed;
    settings.drain = cli.drain;
    settings.plan.center = Spot {
        lat: cli.lat,
        lon: cli.lon,
    };
    let live = !cli.json;
    let progress = move |status: &Status| {
        if live {
            let mut err = std::io::stderr();
            let _ = write!(
                err,
                "\r{:<18} simulated {:>5.1} min  orders {:>6}  open {:>6}   ",
                status.phase,
                status.simulated.as_secs_f64() / 60.0,
                status.orders,
                status.open_orders
            );
            let _ = err.flush();
        }
    };
    let report = match runtime.block_on(courier_sim::run(&settings, &progress)) {
        Ok(report) => report,
        Err(error) => {
            eprintln!("\ncourier-sim: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(path) = &cli.json_out {
        let written = serde_json::to_string_pretty(&report)
            .map_err(std::io::Error::other)
            .and_then(|json| std::fs::write(path, json));
        if let Err(error) = written {
            eprintln!("courier-sim: cannot write {}: {error}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if cli.json {
        match serde_json::to_string_pretty(&report) {
            Ok(json) => println!("{json}"),
            Err(error) => {
                eprintln!("courier-sim: {error}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        eprintln!();
        print!("{}", report.table());
    }
    let violations = report.violations();
    for violation in &violations {
        eprintln!("courier-sim: invariant failed: {violation}");
    }
    if violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
