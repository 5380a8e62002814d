//! Log lines: human-readable by default, one JSON object per line on request. Filtered by
//! `RUST_LOG` (default `info`, the job scheduler's and the SDK's chatter at `warn`). Nothing
//! secret is ever passed to a log macro: tokens and keys are read into variables that no log
//! line names.

use std::io::IsTerminal as _;

use serde::Deserialize;
use tracing_subscriber::fmt::writer::MakeWriterExt as _;
use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `2026-12-01T10:00:00.000Z  INFO message key=value ...`
    #[default]
    Human,
    /// `{"timestamp":...,"level":"INFO","fields":{"message":...,"host_id":...}}`
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "human" => Ok(LogFormat::Human),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("unknown log format {other:?} (expected \"human\" or \"json\")")),
        }
    }
}

/// Installs the process's log subscriber: warnings and errors to standard error, the rest to
/// standard output. Does nothing when a subscriber is already installed (tests and benchmarks
/// start services in one process).
pub fn init(format: LogFormat) {
    // The job scheduler says "Job creator created" and the like at info: not news.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,tokio_cron_scheduler=warn,opentelemetry_sdk=warn"));
    let writer = std::io::stderr.with_max_level(tracing::Level::WARN).or_else(std::io::stdout);
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_writer(writer);
    let _ = match format {
        LogFormat::Human => builder.with_ansi(std::io::stdout().is_terminal()).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
}

/// The log format from `CORDON_LOG_FORMAT` when set, else `configured`.
pub fn format_from_env(configured: LogFormat) -> Result<LogFormat, String> {
    match std::env::var("CORDON_LOG_FORMAT") {
        Ok(text) if !text.is_empty() => text.parse().map_err(|e| format!("CORDON_LOG_FORMAT: {e}")),
        _ => Ok(configured),
    }
}
