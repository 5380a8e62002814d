//! `cordon`: the operator's command line (rule authoring tools; the service and its API come next).

use std::process::ExitCode;

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
            ExitCode::from(2)
        }
    }
}
