//! The `courier` command: parses the command line and hands over to [`courier::cli`].

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = courier::cli::Cli::parse();
    courier::cli::run(cli).await
}
