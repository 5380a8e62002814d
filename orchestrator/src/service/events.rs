//! What the service logs and counts, one struct per happening: a handler says what happened
//! (`StoreRefusedWrite { .. }.emit(&metrics)`) and the struct knows its log line, its fields and
//! its counters, so handlers read as the domain and each log line is written once.

use std::path::Path;
use std::time::Duration;

use super::observe::Metrics;
use super::profiles;
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

/// A test failpoint (`CORDON_FAILPOINT`) is about to abort the process.
pub(super) struct FailpointAborting<'a>(pub &'a str);

impl FailpointAborting<'_> {
    pub fn emit(&self) {
        tracing::warn!("failpoint {}: aborting", self.0);
    }
}

/// The sender could not read or update the outbox in the store; the entries stay and the next
/// round tries again.
pub(super) struct OutboxNotUpdated<'a> {
    pub doing: &'static str,
    pub error: &'a anyhow::Error,
}

impl OutboxNotUpdated<'_> {
    pub fn emit(&self) {
        let error = self.error;
        tracing::error!(error = %format!("{error:#}"), "{}: {error:#}", self.doing);
    }
}

/// The broker refuses a command for good (larger than its limit, ...): parked, not sent, and
/// counted; or, when the store could not park it, said with why (the next round tries again).
pub(super) struct CommandRefusedForGood<'a> {
    pub host: &'a str,
    pub reason: &'a str,
    /// Why the store could not park it, if it could not.
    pub not_parked: Option<&'a anyhow::Error>,
}

impl CommandRefusedForGood<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        let (host, reason) = (self.host, self.reason);
        match self.not_parked {
            None => {
                metrics.commands_parked.add("refused_by_broker", 1);
                tracing::error!(host_id = %host, "{host}: {reason}");
            }
            Some(error) => tracing::error!(
                host_id = %host,
                error = %format!("{error:#}"),
                "{host}: {reason}; it could not be parked either ({error:#}): tried again next round"
            ),
        }
    }
}

/// The broker refused a dead letter as too large: it goes again without the original bytes, or,
/// refused even so, is parked.
pub(super) enum DeadLetterRefused<'a> {
    Shrunk { error: &'a rdkafka::error::KafkaError },
    Parked { error: &'a rdkafka::error::KafkaError },
}

impl DeadLetterRefused<'_> {
    pub fn emit(&self) {
        match self {
            Self::Shrunk { error } => {
                tracing::warn!(error = %error, "the broker refused a dead letter ({error}): sending it without the original bytes");
            }
            Self::Parked { error } => {
                tracing::error!(error = %error, "the broker refuses a dead letter even without the original bytes ({error}); parked");
            }
        }
    }
}

/// Sending to Kafka failed; the entry stays in the outbox. Said at most every `retry_every` by
/// the sender's throttle, with how many failures were not said (`repeats`).
pub(super) struct SendFailed<'a> {
    pub what: &'a str,
    pub error: &'a rdkafka::error::KafkaError,
    pub retry_every: Duration,
    pub repeats: &'a str,
}

impl SendFailed<'_> {
    pub fn emit(&self) {
        let error = self.error;
        tracing::error!(
            error = %error,
            "{}: {error}; it stays in the outbox and is tried again every {} s (the service goes on){}.",
            self.what,
            self.retry_every.as_secs(),
            self.repeats
        );
    }
}

/// Kafka works again after failures: the reader got a message, or the sender emptied the
/// outbox.
pub(super) enum KafkaWorksAgain {
    Reading,
    Sending,
}

impl KafkaWorksAgain {
    pub fn emit(&self) {
        match self {
            Self::Reading => tracing::info!("reading Kafka again."),
            Self::Sending => tracing::info!("sending to Kafka again: the outbox is empty."),
        }
    }
}

/// The reader consumes these partitions now (all it was assigned).
pub(super) struct PartitionsAssigned<'a> {
    pub partitions: &'a [String],
}

impl PartitionsAssigned<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        metrics.consumer_partitions.set(i64::try_from(self.partitions.len()).unwrap_or(i64::MAX));
        tracing::info!("consuming {}.", self.partitions.join(", "));
    }
}

/// The consumer refused the assignment of new partitions; tried again in 1 s.
pub(super) struct PartitionsNotAssigned<'a> {
    pub partitions: &'a rdkafka::TopicPartitionList,
    pub error: &'a rdkafka::error::KafkaError,
}

impl PartitionsNotAssigned<'_> {
    pub fn emit(&self) {
        let (partitions, error) = (self.partitions, self.error);
        tracing::error!(
            error = %error,
            "cannot assign the partitions {partitions:?} to the consumer: {error}; trying again in 1 s."
        );
    }
}

/// The broker does not list a topic the reader consumes (said at most every minute by the
/// reader's throttle, with the count not said); `what` says what is consumed meanwhile.
pub(super) struct TopicMissing<'a> {
    pub error: &'a anyhow::Error,
    pub what: &'static str,
    pub repeats: &'a str,
}

impl TopicMissing<'_> {
    pub fn emit(&self) {
        tracing::warn!("{}: {}{}.", self.error, self.what, self.repeats);
    }
}

/// The Kafka consumer did not close within `waited`; the service stops without it.
pub(super) struct ConsumerCloseHung {
    pub waited: Duration,
}

impl ConsumerCloseHung {
    pub fn emit(&self) {
        tracing::warn!(
            "the Kafka consumer did not close within {} s (a known librdkafka hang); stopping without it: nothing is \
             lost.",
            self.waited.as_secs()
        );
    }
}

/// A parser thread stopped: the reader reads no detection from now on.
pub(super) struct ParserStopped;

impl ParserStopped {
    #[expect(clippy::unused_self, reason = "every happening has the one shape: the struct, then emit()")]
    pub fn emit(&self) {
        tracing::error!("a parser thread stopped; no detection is read from now on.");
    }
}

/// Reading Kafka failed (said at most every 30 s by the reader's throttle): the error, what it
/// means for the service and what to check (`hint`), and the count not said (`repeats`).
pub(super) struct KafkaReadFailed<'a> {
    pub error: &'a rdkafka::error::KafkaError,
    pub hint: &'a str,
    pub repeats: &'a str,
}

impl KafkaReadFailed<'_> {
    pub fn emit(&self) {
        let error = self.error;
        tracing::error!(error = %error, "reading Kafka: {error}{}{}.", self.hint, self.repeats);
    }
}

/// The broker did not answer the reader's look at its topics' partitions yet (the reader's poll
/// says why it does not answer); debug only.
pub(super) struct PartitionsNotListedYet<'a> {
    pub topics: &'a [String],
    pub error: &'a anyhow::Error,
}

impl PartitionsNotListedYet<'_> {
    pub fn emit(&self) {
        tracing::debug!("cannot read the partitions of {} yet: {}", self.topics.join(" and "), self.error);
    }
}

/// The once-only move of isolations an earlier version kept in the rules engine's state into the
/// hosts' records: a host skipped (its record unreadable), the move not committed (tried again
/// when the state is next read), or done.
pub(super) enum LegacyIsolationsAdopted<'a> {
    HostSkipped { host: &'a str, error: &'a anyhow::Error },
    NotCommitted { error: &'a anyhow::Error },
    Done { hosts: usize },
}

impl LegacyIsolationsAdopted<'_> {
    pub fn emit(&self) {
        match self {
            Self::HostSkipped { host, error } => {
                tracing::warn!(host_id = %host, "{host}: who isolated it is not carried over: {error:#}");
            }
            Self::NotCommitted { error } => tracing::error!(
                "cannot move the hosts' isolations out of the rules engine's state (tried again when it is next \
                 read): {error:#}"
            ),
            Self::Done { hosts } => tracing::info!(
                "{hosts} host record(s) now keep who isolated them (the rules engine's state kept it before)."
            ),
        }
    }
}

/// A host record the store could not read when it opened: its deadline, unanswered command and
/// agent's silence are not watched.
pub(super) struct UnreadableRecordNotWatched<'a> {
    pub host: &'a str,
    pub error: &'a anyhow::Error,
}

impl UnreadableRecordNotWatched<'_> {
    pub fn emit(&self) {
        let Self { host, error } = self;
        tracing::error!(
            host_id = %host,
            "{host}: its record is unreadable, so cordon does not watch its deadline, its unanswered command or its \
             agent's silence (its agent still lifts a timed isolation at its own deadline): {error:#}"
        );
    }
}

/// Shadow rules are in force: what they decide is recorded, never done.
pub(super) struct ShadowRulesInForce<'a> {
    pub rule_ids: &'a [&'a str],
}

impl ShadowRulesInForce<'_> {
    pub fn emit(&self) {
        tracing::info!(
            "{} shadow rule(s) ({}): what they decide is recorded, never done.",
            self.rule_ids.len(),
            self.rule_ids.join(", ")
        );
    }
}

/// The sender did not end its round within `waited` of the stop: what it had not sent stays in
/// the outbox for the next start.
pub(super) struct SenderStoppedLate;

impl SenderStoppedLate {
    #[expect(clippy::unused_self, reason = "every happening has the one shape: the struct, then emit()")]
    pub fn emit(&self) {
        tracing::warn!("stopped with commands still on their way to the broker; they stay in the outbox.");
    }
}

/// What the service serves, said once it is ready to: operators (and tests) wait for the last
/// line, `... API on URL.`
pub(super) struct Serving<'a> {
    pub telemetry: &'a str,
    pub policy: &'a profiles::PolicyVersion,
    /// Where the console is served, when it is.
    pub console: Option<String>,
    pub rules: usize,
    pub rules_dir: &'a Path,
    pub api: String,
}

impl Serving<'_> {
    pub fn emit(&self) {
        tracing::info!("telemetry: {}.", self.telemetry);
        let policy = self.policy;
        tracing::info!(
            "isolation policy version {} ({} profile(s); automatic isolations without a duration last {}).",
            policy.version,
            policy.policy.profiles.len(),
            profiles::format_seconds(policy.policy.profile_for(&[]).automatic_duration_seconds)
        );
        if let Some(console) = &self.console {
            tracing::info!("console on {console}/console (sign in with an API token).");
        }
        tracing::info!("serving {} rule(s) from {}; API on {}.", self.rules, self.rules_dir.display(), self.api);
    }
}

/// No rules are in force: detections decide nothing, only operators isolate.
pub(super) struct NoRulesInForce<'a> {
    pub rules_dir: &'a Path,
}

impl NoRulesInForce<'_> {
    pub fn emit(&self) {
        tracing::warn!(
            "no rules in force (no rule files in {}): detections are read but decide nothing; only operators' \
             isolations (API, CLI, console) will happen. Add rule files there to respond automatically.",
            self.rules_dir.display()
        );
    }
}

/// Another service holds this one's lease (`why`): it stops acting until restarted.
pub(super) struct ServiceFenced<'a> {
    pub why: &'a str,
}

impl ServiceFenced<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        metrics.fenced.set(1);
        metrics.consumer_partitions.set(0);
        tracing::error!(
            "{}. This service stops acting: it takes no detections or reports, lifts no deadline, sends no \
             command and refuses operators' changes until it is restarted; its API still answers reads. Stop one of \
             the two (or give them different [kafka] instance_id and state).",
            self.why
        );
    }
}

/// The state store still refuses writes after a retry (said at most as often as the fault's
/// throttle allows, with the count not said).
pub(super) struct StoreStillRefusing<'a> {
    pub error: &'a anyhow::Error,
    pub repeats: &'a str,
}

impl StoreStillRefusing<'_> {
    pub fn emit(&self) {
        let error = self.error;
        tracing::error!("the state store still cannot be written: {error:#}{}.", self.repeats);
    }
}

/// A command is larger than the broker takes: never sent; the host's record says why.
pub(super) struct CommandTooLarge<'a> {
    pub host: &'a str,
    pub command_id: &'a str,
    pub reason: &'a str,
}

impl CommandTooLarge<'_> {
    pub fn emit(&self) {
        tracing::error!(host_id = %self.host, "{}: command {}: {}", self.host, self.command_id, self.reason);
    }
}

/// The broker did not take a handled batch's offsets: its changes are durable, so its messages
/// come again after a restart and are deduplicated then.
pub(super) struct OffsetsNotCommitted<'a> {
    pub error: &'a rdkafka::error::KafkaError,
}

impl OffsetsNotCommitted<'_> {
    pub fn emit(&self) {
        let error = self.error;
        tracing::warn!(
            error = %error,
            "cannot commit the offsets of a handled batch ({error}); its messages may be read again."
        );
    }
}

/// What the lease watcher (the fence against a twin service) runs into on the lease topic.
/// Repeating failures are throttled by the watcher (`repeats` counts those not said).
pub(super) enum LeaseTopicRead<'a> {
    /// The topic cannot be assigned: a twin would not be fenced.
    Unreadable { topic: &'a str },
    /// This start's claim was read back: the lease is ours.
    Claimed { instance_id: &'a str, incarnation: &'a str, topic: &'a str },
    EndNotReadYet { topic: &'a str, error: &'a dyn std::fmt::Display, repeats: &'a str },
    NotAClaim { topic: &'a str, offset: i64, refusal: &'a dyn std::fmt::Display, repeats: &'a str },
    TopicMissing { topic: &'a str, instance_id: &'a str },
    MetadataNotReadYet { error: &'a dyn std::fmt::Display, repeats: &'a str },
}

impl LeaseTopicRead<'_> {
    pub fn emit(&self) {
        match self {
            Self::Unreadable { topic } => {
                tracing::error!("cannot read the lease topic {topic}: a twin of this service would not be fenced.");
            }
            Self::Claimed { instance_id, incarnation, topic } => {
                tracing::info!("claimed the lease for instance_id {instance_id} (incarnation {incarnation}) on {topic}.");
            }
            Self::EndNotReadYet { topic, error, repeats } => {
                tracing::warn!("cannot read the end of the lease topic {topic} yet: {error}{repeats}");
            }
            Self::NotAClaim { topic, offset, refusal, repeats } => tracing::warn!(
                "a message on the lease topic {topic} at offset {offset} is not a claim of cordon's ({refusal}): \
                 ignored{repeats}."
            ),
            Self::TopicMissing { topic, instance_id } => tracing::warn!(
                "the lease topic {topic} does not exist (create it with `cordon topics`): another cordon serve \
                 started with instance_id {instance_id} would not be fenced off."
            ),
            Self::MetadataNotReadYet { error, repeats } => {
                tracing::debug!("cannot read the lease topic's metadata yet: {error}{repeats}");
            }
        }
    }
}

/// What starting the service says beside its `Serving` lines.
pub(super) enum Starting<'a> {
    /// No `[kafka] brokers`: the embedded broker, which keeps nothing across restarts.
    EmbeddedBroker { brokers: &'a str },
    ApiTokenCreated { path: &'a Path },
    /// The state store's disk is full: tried again every 2 s (said once), then opened.
    StoreHasNoRoom { error: &'a anyhow::Error },
    StoreHasRoomAgain { dir: &'a Path },
    /// Rules' `allow:` and a profile of the policy in force would not fit an agent's kernel
    /// tables: the service starts anyway, those isolations are refused by the agents.
    RulesDoNotFit { policy_version: u64, misfits: &'a [String] },
    /// An HTTP server (API or console) stopped.
    ServerStopped { address: std::net::SocketAddr, error: &'a dyn std::fmt::Display },
}

impl Starting<'_> {
    pub fn emit(&self) {
        match self {
            Self::EmbeddedBroker { brokers } => tracing::warn!(
                "no brokers configured: embedded Kafka-protocol broker at {brokers}. It keeps nothing across \
                 restarts; configure [kafka] brokers for production."
            ),
            Self::ApiTokenCreated { path } => {
                tracing::info!("created an API token in {} (readable by its owner only).", path.display());
            }
            Self::StoreHasNoRoom { error } => tracing::error!("{error:#}; trying again every 2 s."),
            Self::StoreHasRoomAgain { dir } => {
                tracing::info!("the state store's disk has room again: opened {}.", dir.display());
            }
            Self::RulesDoNotFit { policy_version, misfits } => tracing::error!(
                "with the isolation policy in force (version {policy_version}), rules would not fit an agent's kernel \
                 tables: {}. Fix the rules or the policy.",
                misfits.join("; ")
            ),
            Self::ServerStopped { address, error } => tracing::error!("the server on {address} stopped: {error}"),
        }
    }
}

/// The wall clock and cordon's own (monotonic) clock: a step of `step_ms` said once, or their
/// agreeing again.
pub(super) struct WallClockStepped {
    pub step_ms: i64,
}

impl WallClockStepped {
    pub fn emit(&self) {
        if self.step_ms.abs() <= super::clock::STEP_MS {
            tracing::info!("the wall clock agrees with cordon's clock again.");
            return;
        }
        #[expect(clippy::cast_precision_loss, reason = "seconds for a person")]
        let seconds = self.step_ms as f64 / 1e3;
        tracing::warn!(
            step_ms = self.step_ms,
            "the wall clock stepped: it is now {seconds:+.1} s from cordon's clock. cordon keeps counting on the \
             monotonic clock, so no isolation ends early and none later than the step; times in the audit trail \
             follow cordon's clock until the service restarts."
        );
    }
}

/// What the API's TLS acceptor runs into: an accept failing, a connection closed at once while
/// too many handshakes are under way (throttled: `repeats` counts those not said), a handshake
/// failing or too slow (debug only: any client can cause them).
pub(super) enum TlsAccept<'a> {
    AcceptFailed { error: &'a std::io::Error },
    TooManyHandshakes { peer: std::net::SocketAddr, under_way: usize, timeout: Duration, repeats: &'a str },
    HandshakeFailed { peer: std::net::SocketAddr, error: &'a std::io::Error },
    HandshakeTooSlow { peer: std::net::SocketAddr, timeout: Duration },
}

impl TlsAccept<'_> {
    pub fn emit(&self) {
        match self {
            Self::AcceptFailed { error } => tracing::warn!("the API cannot accept a connection: {error}"),
            Self::TooManyHandshakes { peer, under_way, timeout, repeats } => tracing::warn!(
                "the API closed a connection from {peer} at once: {under_way} TLS handshakes are already under way (a \
                 client flooding the API? each waits at most {timeout:?}; said once a minute){repeats}"
            ),
            Self::HandshakeFailed { peer, error } => tracing::debug!("TLS handshake with {peer} failed: {error}"),
            Self::HandshakeTooSlow { peer, timeout } => {
                tracing::debug!("TLS handshake with {peer} took longer than {timeout:?}");
            }
        }
    }
}

/// An operator signed in to the console.
pub(super) struct ConsoleSignIn<'a> {
    pub operator: &'a str,
    pub role: &'static str,
    pub peer: &'a dyn std::fmt::Display,
}

impl ConsoleSignIn<'_> {
    pub fn emit(&self) {
        tracing::info!(operator = %self.operator, role = self.role, "console sign-in from {}.", self.peer);
    }
}

/// A call to the API (`via` "API" or "console") could not be kept in the API-call trail; the
/// call itself was answered.
pub(super) struct ApiCallNotRecorded<'a> {
    pub via: &'static str,
    pub error: &'a anyhow::Error,
}

impl ApiCallNotRecorded<'_> {
    pub fn emit(&self) {
        let error = self.error;
        tracing::error!(error = %format!("{error:#}"), "cannot record a call to the {}: {error:#}", self.via);
    }
}
