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

/// A failure that repeats (a broker down fails every poll and every send, a collector down every
/// export), said once, then at most every `every` with how many were not said, and its end said
/// once: news is never lost and the log is never flooded.
#[derive(Debug)]
pub struct Throttled {
    every: std::time::Duration,
    /// When the failure was last said; `None` while nothing is failing.
    pub(crate) last_said: Option<std::time::Instant>,
    unsaid: u64,
}

impl Throttled {
    pub fn new(every: std::time::Duration) -> Throttled {
        Throttled { every, last_said: None, unsaid: 0 }
    }

    /// Notes a failure; returns, when it is to be said now, the suffix that counts the failures
    /// not said since the last time (empty when there were none).
    pub fn failure(&mut self, noun: &str) -> Option<String> {
        if self.last_said.is_some_and(|at| at.elapsed() < self.every) {
            self.unsaid += 1;
            return None;
        }
        let repeats =
            if self.unsaid > 0 { format!(" ({} more {noun} since the last report)", self.unsaid) } else { String::new() };
        self.last_said = Some(std::time::Instant::now());
        self.unsaid = 0;
        Some(repeats)
    }

    /// Notes a success; returns whether it ends a failure (to be said, once).
    pub fn success(&mut self) -> bool {
        self.unsaid = 0;
        self.last_said.take().is_some()
    }
}


/// Says something about a key (a host, a facility) at most once a minute: a flood of the same
/// trouble is visible without filling the log. Remembers at most `max_keys`; past it the memory
/// starts over (one line per key per minute at most, still).
pub struct OncePerMinute {
    last_said_ms: std::collections::HashMap<String, i64>,
    max_keys: usize,
}

impl OncePerMinute {
    pub fn new(max_keys: usize) -> OncePerMinute {
        OncePerMinute { last_said_ms: std::collections::HashMap::new(), max_keys }
    }

    /// Whether something about `key` should be said at `now_ms`; if so, it counts as said.
    pub fn due(&mut self, key: &str, now_ms: i64) -> bool {
        if self.last_said_ms.get(key).is_some_and(|last| now_ms - last < 60_000) {
            return false;
        }
        if self.last_said_ms.len() >= self.max_keys {
            self.last_said_ms.clear();
        }
        self.last_said_ms.insert(key.to_owned(), now_ms);
        true
    }
}

/// At most `per_minute` lines a minute in all, whatever their keys (a flood of forged reports each
/// for another invented host passes [`OncePerMinute`] every time), and how many were left unsaid.
pub struct PerMinuteBudget {
    per_minute: u32,
    window_start_ms: i64,
    said: u32,
    unsaid: u64,
}

/// What [`PerMinuteBudget::take`] allows.
#[derive(Debug, PartialEq, Eq)]
pub struct Allowance {
    /// Whether this line may be said.
    pub say: bool,
    /// How many lines the budget held back in the minute that just ended (say that first).
    pub unsaid_before: u64,
}

impl PerMinuteBudget {
    pub fn new(per_minute: u32) -> PerMinuteBudget {
        PerMinuteBudget { per_minute, window_start_ms: i64::MIN, said: 0, unsaid: 0 }
    }

    /// One more line at `now_ms`.
    pub fn take(&mut self, now_ms: i64) -> Allowance {
        let mut unsaid_before = 0;
        if now_ms.saturating_sub(self.window_start_ms) >= 60_000 {
            unsaid_before = std::mem::take(&mut self.unsaid);
            (self.window_start_ms, self.said) = (now_ms, 0);
        }
        let say = self.said < self.per_minute;
        if say {
            self.said += 1;
        } else {
            self.unsaid += 1;
        }
        Allowance { say, unsaid_before }
    }
}

/// The Kafka client's own warnings and errors (librdkafka's log: a TLS handshake that failed, a
/// connection the broker closed, a broker that does not resolve), into this process's log: the
/// details cordon's own errors cannot give. Each facility is said at most once a minute, so a
/// client that retries every second does not flood the log.
pub struct KafkaClientLog {
    said: std::sync::Mutex<OncePerMinute>,
    since: std::time::Instant,
}

impl Default for KafkaClientLog {
    fn default() -> Self {
        KafkaClientLog { said: std::sync::Mutex::new(OncePerMinute::new(256)), since: std::time::Instant::now() }
    }
}

impl KafkaClientLog {
    /// `severity`: syslog's, as librdkafka gives it (3 error, 4 warning; others are not said).
    pub fn say(&self, severity: i32, facility: &str, message: &str) {
        if severity > 4 {
            return;
        }
        let now_ms = i64::try_from(self.since.elapsed().as_millis()).unwrap_or(i64::MAX);
        if !self.said.lock().unwrap_or_else(std::sync::PoisonError::into_inner).due(facility, now_ms) {
            return;
        }
        if severity <= 3 {
            tracing::error!("Kafka client ({facility}): {message} (said once a minute)");
        } else {
            tracing::warn!("Kafka client ({facility}): {message} (said once a minute)");
        }
    }
}

#[cfg(test)]
mod throttled_tests {
    use super::{Allowance, OncePerMinute, PerMinuteBudget, Throttled};

    #[test]
    fn a_budget_says_at_most_so_many_a_minute_and_counts_the_rest() {
        let mut budget = PerMinuteBudget::new(2);
        let said = |say, unsaid_before| Allowance { say, unsaid_before };
        assert_eq!(budget.take(1_000), said(true, 0));
        assert_eq!(budget.take(1_001), said(true, 0));
        assert_eq!(budget.take(1_002), said(false, 0));
        assert_eq!(budget.take(60_999), said(false, 0));
        assert_eq!(budget.take(61_000), said(true, 2), "the next minute says what the last held back");
        assert_eq!(budget.take(61_001), said(true, 0));
    }

    #[test]
    fn said_once_per_key_per_minute() {
        let mut notes = OncePerMinute::new(10);
        assert!(notes.due("h", 1_000));
        assert!(!notes.due("h", 60_999));
        assert!(notes.due("other", 1_001));
        assert!(notes.due("h", 61_000));
    }

    #[test]
    fn a_repeated_failure_is_said_once_then_with_its_count_and_its_end_once() {
        let mut throttled = Throttled::new(std::time::Duration::from_hours(1));
        assert_eq!(throttled.failure("failures").as_deref(), Some(""));
        assert_eq!(throttled.failure("failures"), None);
        assert_eq!(throttled.failure("failures"), None);
        throttled.last_said = std::time::Instant::now().checked_sub(std::time::Duration::from_hours(1));
        assert_eq!(throttled.failure("failures").as_deref(), Some(" (2 more failures since the last report)"));
        assert!(throttled.success());
        assert!(!throttled.success(), "the end is said once");
    }
}
