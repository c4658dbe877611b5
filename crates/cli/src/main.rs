//! `nightshift`: run everything locally (`nightshift dev`) and operate agents and runs.
use std::process::ExitCode;

use clap::Parser;

#[global_allocator]
static ALLOCATOR: nightshift_rpc::Allocator = nightshift_rpc::Allocator {};

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
