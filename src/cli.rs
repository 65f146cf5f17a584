//! The command line: `serve`, `worker`, `run`, `migrate` and `token issue`.
//!
//! Every flag also reads an environment variable (see the README's configuration table).
//! Errors are printed as one line and turn into a non-zero exit code.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::auth::{Principal, Role, TokenKeys};
use crate::config::{CommonArgs, Config, HttpArgs, HttpSettings, LifecycleArgs, redact_url};
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
        /// Id of the user, driver or restaurant the role acts as.
        #[arg(long)]
        subject: i64,
        /// How long the token is valid, e.g. `30m`, `12h`, `7d` (at most 90 days).
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> ExitCode {
    telemetry::init_logging(&cli.common.log_level, cli.common.log_format);
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
    let config = Config::from_args(&cli.common)?;
    match cli.command {
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
                database = redact_url(&config.database.url),
                created_database = created,
                "migrations applied"
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
            println!("{token}");
            Ok(())
        }
    }
}
