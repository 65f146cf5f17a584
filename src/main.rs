//! The `courier` command: parses the command line and hands over to [`courier::cli`].

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of glibc's malloc: the request path allocates and frees small buffers
/// across threads, where glibc's arenas spent a sixth of the server's CPU (see
/// `docs/benchmarks.md`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = courier::cli::Cli::parse();
    courier::cli::run(cli).await
}
