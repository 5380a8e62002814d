//! `cordon`: the service (`serve`), the operators' commands against its API, and the rule
//! authoring tools. Exit codes: 0 done; 1 could not be done (or `rules check|test` found
//! problems); 2 bad command line or input.

use std::process::ExitCode;

/// mimalloc: parsing and dropping detections is mostly allocation, and the service's
/// throughput gained from it (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use orchestrator::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match orchestrator::cli::run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error)
            if error
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            match error.downcast_ref::<orchestrator::client::ApiRefusal>() {
                // The request was malformed or its credentials wrong: bad input.
                Some(refusal) if matches!(refusal.status, 400 | 401) => ExitCode::from(2),
                // Refused in the host's state, or the service failed: could not be done.
                Some(_) => ExitCode::FAILURE,
                None => ExitCode::from(2),
            }
        }
    }
}
