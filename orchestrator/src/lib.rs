//! The orchestrator behind the `cordon` binary: its command line and the commands' implementations.

pub mod cli;
pub mod rules_cli;
pub mod service;
