//! What the service logs and counts, one struct per happening: a handler says what happened
//! (`StoreRefusedWrite { .. }.emit(&metrics)`) and the struct knows its log line, its fields and
//! its counters, so handlers read as the domain and each log line is written once.

use std::path::Path;
use std::time::Duration;

use super::observe::Metrics;
use super::Transition;

/// An event was put in the dead-letter topic's outbox, with why (its first 512 characters said).
pub(super) struct EventDeadLettered<'a> {
    pub message: &'a rdkafka::message::OwnedMessage,
    pub reason: &'a str,
}

impl EventDeadLettered<'_> {
    pub fn emit(&self) {
        use rdkafka::Message as _;
        let message = self.message;
        let shown: String = self.reason.chars().take(512).collect();
        tracing::warn!(
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset(),
            "dead-lettered an event at offset {} ({} bytes): {shown}",
            message.offset(),
            message.payload().map_or(0, <[u8]>::len)
        );
    }
}

/// An agent reported its isolation undone, not by cordon (newly, for this host): said as an
/// error and counted.
pub(super) struct HostTampered<'a> {
    pub host: &'a str,
    pub tampering: &'a super::lifecycle::Tampering,
}

impl HostTampered<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        metrics.hosts_tampered.add(1);
        tracing::error!(
            host_id = %self.host,
            "{}: TAMPERED: {}; {}",
            self.host,
            self.tampering.what,
            self.tampering.response
        );
    }
}

/// The agent confirmed an isolation a detection began: the detection-to-enforced latency.
pub(super) struct DetectionEnforced {
    /// When cordon consumed the detection (cordon's clock).
    pub detected_at_ms: i64,
    pub enforced_at_ms: i64,
}

impl DetectionEnforced {
    pub fn emit(&self, metrics: &Metrics) {
        #[allow(clippy::cast_precision_loss, reason = "milliseconds of latency")]
        let seconds = (self.enforced_at_ms - self.detected_at_ms).max(0) as f64 / 1e3;
        metrics.detection_to_enforced.observe(seconds);
    }
}

/// A command is sent again: its agent has not answered it.
pub(super) struct CommandResent<'a> {
    pub record: &'a super::lifecycle::HostRecord,
}

impl CommandResent<'_> {
    pub fn emit(&self) {
        let record = self.record;
        tracing::info!(
            host_id = %record.host,
            "{}: resending command {} (no answer from its agent, attempt {}).",
            record.host,
            record.generation,
            record.resends
        );
    }
}

/// The retention job removed old audit entries and API call records (said when it removed any).
pub(super) struct RetentionApplied(pub super::store::RetentionOutcome);

impl RetentionApplied {
    pub fn emit(&self) {
        let outcome = &self.0;
        if outcome.audit_entries + outcome.api_calls > 0 {
            tracing::info!(
                "retention: removed {} audit entries and {} API call records ([state] *_retention_days, \
                 audit_max_per_host).",
                outcome.audit_entries,
                outcome.api_calls
            );
        }
    }
}

/// A new version of the isolation policy is in force (durable), with what it changed and how
/// many isolations in force it updated live.
pub(super) struct PolicyChanged<'a> {
    pub version: &'a super::profiles::PolicyVersion,
    pub changes: &'a [super::profiles::Change],
    pub updated: usize,
}

impl PolicyChanged<'_> {
    pub fn emit(&self) {
        let version = self.version;
        let listed: Vec<String> = self.changes.iter().map(ToString::to_string).collect();
        tracing::info!(
            "isolation policy version {} by {}: {}; {} isolation(s) in force updated live. Changes: {}",
            version.version,
            version.author,
            version.reason,
            self.updated,
            if listed.is_empty() { "none".to_owned() } else { listed.join("; ") }
        );
    }
}

/// A status report was refused (counted where it is judged): said once a minute per host, and at
/// most [`super::agents::MAX_REFUSAL_LINES_PER_MINUTE`] lines a minute in all, with how many went
/// unsaid before.
pub(super) struct ReportRefused<'a> {
    pub host: &'a str,
    pub refusal: cordon_wire::ReportRefusal,
    /// What became of the key that signed it (a claim on the host), and what to do about it.
    pub claim_note: &'a str,
    pub allowance: cordon_telemetry::logs::Allowance,
}

impl ReportRefused<'_> {
    pub fn emit(&self) {
        if self.allowance.unsaid_before > 0 {
            tracing::warn!(
                "{} more refused status reports (other hosts) were not said in the last minute: more than {} \
                 a minute are not logged one by one (all are counted in cordon_status_refused_total)",
                self.allowance.unsaid_before,
                super::agents::MAX_REFUSAL_LINES_PER_MINUTE
            );
        }
        if self.allowance.say {
            tracing::warn!(
                host_id = %self.host,
                reason = self.refusal.name(),
                "refused a status report for {:?}: {}{} (said once a minute per host; all are counted \
                 in cordon_status_refused_total)",
                self.host,
                self.refusal,
                self.claim_note
            );
        }
    }
}

/// A host's move is durable (its audit entry committed): one line per move, with the ids its
/// spans carry, so a log search finds the move from a trace and the other way round.
pub(super) struct TransitionDurable<'a>(pub &'a Transition);

impl TransitionDurable<'_> {
    pub fn emit(&self) {
        let Transition { audit, event_id, command_id, trace_id } = self.0;
        tracing::info!(
            host_id = %audit.host,
            state = audit.to.name(),
            event_id = event_id.as_deref().unwrap_or(""),
            command_id = command_id.as_deref().unwrap_or(""),
            trace_id = %trace_id,
            "{}: {} -> {} by {} (generation {}): {}",
            audit.host,
            audit.from.name(),
            audit.to.name(),
            audit.by,
            audit.generation,
            audit.why
        );
    }
}

/// The rules decided something about a host (counted by mode and by rule).
pub(super) struct DecisionMade<'a> {
    /// `automatic`, `manual` or `approve`.
    pub mode: &'static str,
    pub rules: &'a [String],
}

impl<'a> DecisionMade<'a> {
    pub fn of(decision: &'a rules::Decision) -> DecisionMade<'a> {
        let mode = match &decision.action {
            rules::Action::RequestApproval(_) => "approve",
            rules::Action::Isolate(isolation) => isolation.mode.name(),
        };
        DecisionMade { mode, rules: &decision.rules }
    }

    pub fn emit(&self, metrics: &Metrics) {
        metrics.decisions.add(self.mode, 1);
        for rule in self.rules {
            metrics.rule_matches.add(rule, 1);
        }
    }
}

/// The state store refused a write: the service stops taking input until it can write again.
pub(super) struct StoreRefusedWrite<'a> {
    pub dir: &'a Path,
    pub error: &'a str,
    /// Whether the store was already refusing writes (then only the new refusal is said).
    pub again: bool,
    pub retry_every: Duration,
}

impl StoreRefusedWrite<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        let error = self.error;
        if self.again {
            tracing::error!(error, "the state store refused a write again: {error}.");
            return;
        }
        tracing::error!(
            error,
            dir = %self.dir.display(),
            "the state store in {} cannot be written: {error}. Not ready: no detections or reports are taken \
             (nothing uncommitted is lost: it comes again), operators' changes are refused and no deadline is \
             lifted until it can; trying again every {} s (free space on its disk).",
            self.dir.display(),
            self.retry_every.as_secs()
        );
        metrics.state_store_faults.add(1);
        metrics.state_store_failing.set(1);
    }
}

/// The state store takes writes again after a fault.
pub(super) struct StoreWritable {
    pub after: Duration,
}

impl StoreWritable {
    pub fn emit(&self, metrics: &Metrics) {
        metrics.state_store_failing.set(0);
        tracing::info!(
            after_seconds = self.after.as_secs(),
            "the state store takes writes again (after {} s): taking input again.",
            self.after.as_secs()
        );
    }
}

/// A valid detection whose handling failed after its evaluation: dead-lettered, the batch goes on.
pub(super) struct DetectionFailed<'a> {
    pub event_id: &'a str,
    pub host: &'a str,
    pub error: &'a anyhow::Error,
}

impl DetectionFailed<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        let error = self.error;
        tracing::warn!(
            event_id = self.event_id,
            host_id = self.host,
            error = %format!("{error:#}"),
            "detection {} on {} could not be handled ({error:#}); dead-lettered, the batch goes on.",
            self.event_id,
            self.host
        );
        metrics.events_failed.add(1);
    }
}

/// A new rule set is in force.
pub(super) struct RulesReloaded<'a> {
    pub why: &'a str,
    pub rules: usize,
    pub dir: &'a Path,
}

impl RulesReloaded<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        tracing::info!(
            rules = self.rules,
            why = self.why,
            "rules reloaded after {}: {} rule(s) from {}.",
            self.why,
            self.rules,
            self.dir.display()
        );
        metrics.rules_loaded.set(i64::try_from(self.rules).unwrap_or(i64::MAX));
    }
}

/// The rules directory did not load (or would not fit the agents' tables): the running rules stay.
pub(super) struct RulesNotReloaded<'a> {
    pub why: &'a str,
    pub running: usize,
    pub error: &'a anyhow::Error,
}

impl RulesNotReloaded<'_> {
    pub fn emit(&self) {
        let error = self.error;
        tracing::error!(
            why = self.why,
            error = %format!("{error:#}"),
            "rules NOT reloaded after {}; the {} running rule(s) stay in force. {error:#}",
            self.why,
            self.running
        );
    }
}
