//! The command line: `serve`, `worker`, `run`, `migrate`, `seed`, `admin` and `token issue`.
//! (The benchmarks are `courier-bench`, a crate of their own.)
//!
//! Every flag also reads an environment variable (see the README's configuration table).
//! Errors are printed as one line and turn into a non-zero exit code.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use secrecy::ExposeSecret;

use crate::api::HttpSettings;
use crate::auth::{Principal, Role, TokenKeys};
use crate::config::{CommonArgs, Config, HttpArgs, LifecycleArgs, redact_url};
use crate::startup::{Parts, run_process};
use crate::{store, telemetry};

/// courier: the backend of a food-delivery marketplace.
#[derive(Debug, Parser)]
#[command(name = "courier", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub common: CommonArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API.
    Serve {
        #[command(flatten)]
        http: HttpArgs,
        #[command(flatten)]
        lifecycle: LifecycleArgs,
    },
    /// Run the job workers and cron schedules.
    Worker {
        #[command(flatten)]
        lifecycle: LifecycleArgs,
    },
    /// Serve the API and run the workers in one process (the development default).
    Run {
        #[command(flatten)]
        http: HttpArgs,
        #[command(flatten)]
        lifecycle: LifecycleArgs,
    },
    /// Create the database if missing and apply all migrations (courier's and apalis's).
    Migrate,
    /// Fill an empty database with a synthetic city (restaurants, menus, drivers, customers).
    Seed {
        /// Seed of the generator: the same seed gives the same city.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Latitude of the city centre.
        #[arg(long, default_value_t = 40.7128, allow_negative_numbers = true)]
        center_lat: f64,
        /// Longitude of the city centre.
        #[arg(long, default_value_t = -74.0060, allow_negative_numbers = true)]
        center_lon: f64,
        /// Side of the square city, in km.
        #[arg(long, default_value_t = 30.0)]
        size_km: f64,
        /// Number of restaurants.
        #[arg(long, default_value_t = 300)]
        restaurants: usize,
        /// Number of drivers.
        #[arg(long, default_value_t = 500)]
        drivers: usize,
        /// Number of customers.
        #[arg(long, default_value_t = 1000)]
        customers: usize,
        /// Cities, each its own market (1 to 5): more than one creates the markets `nyc`,
        /// `chicago`, `houston`, `phoenix` and `seattle` (in that order) and spreads the
        /// restaurants over them; the centre is then not used.
        #[arg(long, default_value_t = 1)]
        markets: usize,
    },
    /// Operators' commands: jobs, workers, cron, orders, drivers.
    Admin(crate::admin::AdminArgs),
    /// Print the API's OpenAPI 3.1 document (what `/openapi.json` serves and
    /// `docs/openapi.json` holds).
    Openapi,
    /// Bearer tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

/// `courier token …`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Mint a signed token and print it on standard output.
    Issue {
        /// The role the token grants.
        #[arg(long, value_enum)]
        role: Role,
        /// The id the role acts as: a user id for customer and operator, a driver id
        /// (drivers.id, not its user id) for driver, a restaurant id for restaurant.
        /// `GET /v1/me` answers every id a token's holder acts as.
        #[arg(long)]
        subject: i64,
        /// How long the token is valid, e.g. `30m`, `12h`, `7d` (at most 90 days).
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> ExitCode {
    // Admin output is for people and scripts: logs stay off unless RUST_LOG asks for them,
    // and an error is the one line below.
    let level = if matches!(cli.command, Command::Admin(_)) {
        "off"
    } else {
        cli.common.log_level.as_str()
    };
    telemetry::init_logging(level, cli.common.log_format);
    match execute(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "courier failed");
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(cli: Cli) -> anyhow::Result<()> {
    if let Command::Openapi = cli.command {
        use std::io::Write as _;
        // Written, not printed: a reader that stops early (`| head`) is not a failure.
        let text = crate::api::openapi::document_text();
        return match std::io::stdout().write_all(text.as_bytes()) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            other => other.map_err(Into::into),
        };
    }
    let config = Config::from_args(&cli.common)?;
    match cli.command {
        Command::Openapi => Ok(()),
        Command::Admin(args) => {
            let ctx = crate::admin::AdminContext::connect(&config)?;
            let output = crate::admin::execute(&ctx, &args).await?;
            print!("{}", output.render(args.json));
            if args.json {
                println!();
            }
            Ok(())
        }
        Command::Serve { http, lifecycle } => {
            let http = HttpSettings::from_args(&http)?;
            run_process(
                &config,
                Some(&http),
                Parts::Api,
                lifecycle.migrate_on_start,
                lifecycle.shutdown_timeout,
            )
            .await
        }
        Command::Worker { lifecycle } => {
            run_process(
                &config,
                None,
                Parts::Worker,
                lifecycle.migrate_on_start,
                lifecycle.shutdown_timeout,
            )
            .await
        }
        Command::Run { http, lifecycle } => {
            let http = HttpSettings::from_args(&http)?;
            run_process(
                &config,
                Some(&http),
                Parts::All,
                lifecycle.migrate_on_start,
                lifecycle.shutdown_timeout,
            )
            .await
        }
        Command::Migrate => {
            let created = store::ensure_database(&config.database).await?;
            let pool = store::pool(&config.database)?;
            store::migrate(&pool).await?;
            tracing::info!(
                database = redact_url(config.database.url.expose_secret()),
                created_database = created,
                "migrations applied"
            );
            Ok(())
        }
        Command::Seed {
            seed,
            center_lat,
            center_lon,
            size_km,
            restaurants,
            drivers,
            customers,
            markets,
        } => {
            if !(1..=crate::seed::CITIES.len()).contains(&markets) {
                anyhow::bail!("--markets must be 1 to {}", crate::seed::CITIES.len());
            }
            if crate::geo::Point::new(center_lat, center_lon).is_none()
                || !(0.1..=500.0).contains(&size_km)
            {
                anyhow::bail!(
                    "the centre must be valid coordinates and --size-km between 0.1 and 500"
                );
            }
            if restaurants > 100_000 || drivers > 1_000_000 || customers > 1_000_000 {
                anyhow::bail!("at most 100,000 restaurants and 1,000,000 drivers or customers");
            }
            let pool = store::pool(&config.database)?;
            let plan = crate::seed::SeedPlan {
                seed,
                center_lat,
                center_lon,
                size_km,
                restaurants,
                drivers,
                customers,
                markets,
            };
            let seeded = crate::seed::seed(&pool, &plan).await?;
            println!(
                "seeded {} restaurants, {} menu items, {} drivers, {} customers and operator user {}",
                seeded.restaurants,
                seeded.menu_items,
                seeded.drivers,
                seeded.customers,
                seeded.operator
            );
            Ok(())
        }
        Command::Token {
            command: TokenCommand::Issue { role, subject, ttl },
        } => {
            let keys = TokenKeys::new(&config.jwt_secret);
            let token = keys.issue(
                Principal { role, subject },
                chrono::Utc::now().timestamp(),
                ttl,
            )?;
            eprintln!(
                "courier: a {role} token for subject {subject}, which must be {}; valid for {}",
                role.subject_kind(),
                humantime::format_duration(ttl)
            );
            println!("{token}");
            Ok(())
        }
    }
}
