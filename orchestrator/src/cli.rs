//! The `cordon` command line: one subcommand group per area (`rules` today; `serve`, `isolate`… next).

use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::rules_cli;

#[derive(Debug, Parser)]
#[command(
    name = "cordon",
    version,
    about = "Event-driven response orchestrator: detections in, host isolations out"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Author response rules: validate a rules directory, replay events through it, run its tests.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Run the service: detections from Kafka in, signed isolation commands out.
    Serve {
        /// cordon.toml
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Write a new command-signing key pair: DIR/signing.key (secret) and DIR/signing.pub.
    Keygen {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Validate every rule file and policy.yaml in DIR; report every problem as `FILE:LINE:COLUMN`.
    Check {
        /// The rules directory (*.yaml and *.yml files; policy.yaml is the policy).
        dir: PathBuf,
    },
    /// Run the rules' `tests:`, or with --events replay NDJSON events and print the decisions.
    Test {
        /// The rules directory.
        dir: PathBuf,
        /// NDJSON events to replay in file order, each at its own `time` (`-` reads standard input).
        #[arg(long, value_name = "FILE")]
        events: Option<PathBuf>,
        /// Print one JSON object per line (a decision with --events, a test result without).
        #[arg(long)]
        json: bool,
    },
}

/// Runs a parsed command line. Ok(false) means the command ran and found problems (exit 1).
pub fn run(cli: Cli) -> anyhow::Result<bool> {
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let mut out = stdout.lock();
    let mut err = stderr.lock();
    let ok = match cli.command {
        Command::Rules(RulesCommand::Check { dir }) => rules_cli::check(&dir, &mut out, &mut err)?,
        Command::Rules(RulesCommand::Test { dir, events: Some(events), json }) => {
            rules_cli::replay(&dir, &events, json, &mut out, &mut err)?
        }
        Command::Rules(RulesCommand::Test { dir, events: None, json }) => {
            rules_cli::run_tests(&dir, json, &mut out, &mut err)?
        }
        Command::Serve { config } => {
            drop((out, err));
            crate::service::run_from_config(&config)?;
            return Ok(true);
        }
        Command::Keygen { out: dir } => {
            crate::service::keygen(&dir)?;
            writeln!(out, "Wrote {0}/signing.key (keep it secret) and {0}/signing.pub.", dir.display())?;
            true
        }
    };
    out.flush()?;
    Ok(ok)
}
