//! `nightshift`: run everything locally (`nightshift dev`) and operate agents and runs.
use std::process::ExitCode;

use clap::Parser;

/// The allocator of the whole process (the run path allocates per call; see the workspace's
/// `tikv-jemallocator` entry).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = nightshift_cli::Cli::parse();
    match nightshift_cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", nightshift_cli::describe_error(&e));
            ExitCode::from(nightshift_cli::exit_code(&e))
        }
    }
}
