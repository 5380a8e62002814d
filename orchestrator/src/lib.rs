//! The orchestrator behind the `cordon` binary: the service, its operator API and client, and the
//! rule authoring tools.

pub mod api;
pub mod cli;
pub mod client;
pub mod keygen;
pub mod rules_cli;
pub mod service;
pub mod sigma_cli;
pub mod topics;
