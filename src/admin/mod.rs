//! `courier admin …`: what on-call operators run from a terminal. It talks to Postgres (and
//! Valkey for driver positions) with the same configuration as the server.
//!
//! Every command produces an [`Output`]: a readable table by default, JSON with `--json`.
//! Commands that change something ask for confirmation unless `--yes` (and refuse when
//! standard input is not a terminal); bulk commands show what they would touch with
//! `--dry-run`. Bad input is one line on standard error and a non-zero exit code.
//!
//! One file per command group: [`jobs`], [`orders`], [`drivers`], [`dispatch`] (the
//! dispatch cycles), [`events`] (the outbox relay), [`system`] (workers and cron), [`check`]
//! (the invariants audit); [`table`] renders tables.

pub mod check;
pub mod dispatch;
pub mod drivers;
pub mod events;
pub mod jobs;
pub mod orders;
pub mod system;
pub mod table;

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::Value;
use sqlx::PgPool;

use crate::cron::CronSettings;
use crate::location::LocationService;

/// `courier admin` and its options.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// Do not ask for confirmation.
    #[arg(long, global = true)]
    pub yes: bool,
    #[command(subcommand)]
    pub command: AdminCommand,
}

/// The admin command groups.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Inspect, retry and kill background jobs.
    Jobs {
        #[command(subcommand)]
        command: jobs::JobsCommand,
    },
    /// Live job workers and their last heartbeat.
    Workers,
    /// Cron schedules, their last run and next tick.
    Cron,
    /// An order's story; re-matching, cancelling, stuck orders.
    Orders {
        #[command(subcommand)]
        command: orders::OrdersCommand,
    },
    /// Driver positions and state.
    Drivers {
        #[command(subcommand)]
        command: drivers::DriversCommand,
    },
    /// The dispatch cycles of the markets that run them: what each saw, offered and held.
    Dispatch {
        #[command(subcommand)]
        command: dispatch::DispatchCommand,
    },
    /// The outbox relay: lag, waiting and parked events, publishing one again.
    Events {
        #[command(subcommand)]
        command: events::EventsCommand,
    },
    /// Audit the invariants (one driver per order, one pending offer per order and driver,
    /// captures, cron ticks, event order); fails when any is broken.
    Check,
}

/// What admin commands can reach.
#[derive(Clone, Debug)]
pub struct AdminContext {
    pub db: PgPool,
    pub location: LocationService,
    pub cron: CronSettings,
}

impl AdminContext {
    /// Connects (lazily) with the server's configuration.
    pub fn connect(config: &crate::config::Config) -> anyhow::Result<Self> {
        use anyhow::Context;
        let db = crate::store::pool(&config.database).context("invalid DATABASE_URL")?;
        let valkey = crate::valkey::Valkey::new(&config.valkey).context("invalid VALKEY_URL")?;
        // Admin commands never report positions; the history writer just idles.
        let (history, _task) = crate::location::history::spawn(db.clone());
        Ok(Self {
            location: LocationService::new(valkey, db.clone(), history),
            db,
            cron: config.cron.clone(),
        })
    }
}

/// A command's result: the table and the JSON of the same data.
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    pub text: String,
    pub json: Value,
}

impl Output {
    /// The output as the operator asked for it.
    pub fn render(&self, json: bool) -> String {
        if json {
            serde_json::to_string_pretty(&self.json).unwrap_or_else(|_| "null".to_owned())
        } else {
            self.text.clone()
        }
    }
}

/// An admin failure: one line for the operator.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The input is wrong (unknown id, malformed filter, conflicting flags).
    #[error("{0}")]
    Invalid(String),
    /// The operator said no, or could not be asked.
    #[error("{0}")]
    Declined(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Other(String),
    /// `admin check` found broken invariants: its table, and how many.
    #[error("{report}{failed} invariant(s) broken")]
    Audit { report: String, failed: usize },
}

/// How a changing command gets its go-ahead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Confirm {
    /// `--yes`.
    Yes,
    /// Ask on the terminal.
    Ask,
}

impl Confirm {
    /// Asks `question` unless `--yes`; refuses without a terminal.
    pub fn check(self, question: &str) -> Result<(), AdminError> {
        if self == Confirm::Yes {
            return Ok(());
        }
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return Err(AdminError::Declined(format!(
                "{question} — refusing without --yes (standard input is not a terminal)"
            )));
        }
        let mut stderr = std::io::stderr();
        // A prompt that cannot be written still gets its answer read; nothing is lost.
        let _ = write!(stderr, "{question} Proceed? [y/N] ");
        let _ = stderr.flush();
        let mut answer = String::new();
        stdin
            .lock()
            .read_line(&mut answer)
            .map_err(|e| AdminError::Other(format!("cannot read the answer: {e}")))?;
        if matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
            Ok(())
        } else {
            Err(AdminError::Declined(
                "aborted; nothing was changed".to_owned(),
            ))
        }
    }
}

/// Parses a `--since`/`--older-than` duration (`15m`, `2h`, `7d`).
pub fn parse_duration(flag: &str, raw: &str) -> Result<Duration, AdminError> {
    humantime::parse_duration(raw).map_err(|e| {
        AdminError::Invalid(format!(
            "{flag}: `{raw}` is not a duration like 15m, 2h or 7d ({e})"
        ))
    })
}

/// Runs `args` against `ctx`.
pub async fn execute(ctx: &AdminContext, args: &AdminArgs) -> Result<Output, AdminError> {
    let confirm = if args.yes { Confirm::Yes } else { Confirm::Ask };
    match &args.command {
        AdminCommand::Jobs { command } => jobs::execute(ctx, command, confirm).await,
        AdminCommand::Workers => system::workers(ctx).await,
        AdminCommand::Cron => system::cron(ctx).await,
        AdminCommand::Orders { command } => orders::execute(ctx, command, confirm).await,
        AdminCommand::Drivers { command } => drivers::execute(ctx, command).await,
        AdminCommand::Dispatch { command } => dispatch::execute(ctx, command).await,
        AdminCommand::Events { command } => events::execute(ctx, command, confirm).await,
        AdminCommand::Check => check::check(ctx).await,
    }
}
