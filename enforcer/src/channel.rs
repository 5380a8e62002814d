//! The agent's command channel over Kafka: reads this host's signed commands from the commands
//! topic (only the partition its host id hashes to), checks each one, applies it, and reports
//! every outcome, every change and a heartbeat to the status topic.
//!
//! A command is applied only if its signature verifies with the configured public key, it names
//! this host, it has not expired, and its generation is newer than the last one applied (kept in
//! sled, so a replay after a restart is refused too). Anything else is refused and reported with
//! the reason; nothing in a message can crash the agent.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use cordon_telemetry::Spans;
use cordon_wire::spec::Exclusion;
use cordon_wire::{Action, Command, Refusal, Status, StatusKind, WIRE_VERSION};
use cordon_wire::{SigningKey, VerifyingKey};
use opentelemetry::trace::{SpanKind, Status as SpanStatus, TraceContextExt as _};
use opentelemetry::{Context as TraceContext, KeyValue};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::exclusion::parse_exclusion;
use crate::health::LastCommand;
use crate::isolation::{self, IsolateRequest, Target};
use crate::store::Store;

/// Where the channel connects and who this host is.
pub struct ChannelSettings {
    pub brokers: String,
    pub commands_topic: String,
    pub status_topic: String,
    /// `fetch.wait.max.ms` of the commands consumer.
    pub fetch_wait_ms: u64,
    pub host_id: String,
    /// Commands signed by any of these are authentic (more than one while keys are rotated).
    pub public_keys: Vec<VerifyingKey>,
    /// This agent's own key: it signs every report.
    pub agent_key: SigningKey,
    /// librdkafka settings for TLS and SASL (`[kafka.tls]`, `[kafka.sasl]`, `[kafka.settings]`).
    pub security: Vec<(String, String)>,
}

/// The consumer's context: counts the brokers it is connected to (from librdkafka's
/// statistics), for the agent's health.
struct BrokerWatch {
    brokers_up: Arc<AtomicI64>,
    client_log: cordon_telemetry::logs::KafkaClientLog,
}

impl ClientContext for BrokerWatch {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        self.client_log.say(level as i32, facility, message);
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        let up = statistics.brokers.values().filter(|b| b.nodeid >= 0 && b.state == "UP").count();
        self.brokers_up.store(i64::try_from(up).unwrap_or(i64::MAX), Ordering::Relaxed);
    }
}

impl ConsumerContext for BrokerWatch {}

pub struct Channel {
    settings: ChannelSettings,
    consumer: BaseConsumer<BrokerWatch>,
    producer: ThreadedProducer<DefaultProducerContext>,
    /// The generation of the last command applied, read from the store at the first command and
    /// kept here: only this channel changes it, and checking a command should not wait on the
    /// store.
    last_generation: Option<u64>,
    /// -1 until the first statistics arrive.
    brokers_up: Arc<AtomicI64>,
    last_command: Option<LastCommand>,
    /// The `sent_at_ms` of the last report: each report's is later than the one before, since
    /// cordon refuses a report not newer than the last it applied (a replay).
    last_sent_at_ms: i64,
    /// The brokers the cluster advertised when the channel connected (`host:port`).
    advertised: Vec<String>,
    spans: Spans,
    /// Refusals reported (and logged) this minute: anyone who can write to the commands topic
    /// can make the agent refuse, and each report would cost a record read and a message.
    refusals: cordon_telemetry::logs::PerMinuteBudget,
    /// Offsets of other hosts' commands are committed at most every [`COMMIT_EVERY`]: their
    /// commands share the partition, and a commit each would make a flood of them slow to skip.
    uncommitted: bool,
    last_commit: std::time::Instant,
}

/// At most this many refused commands a minute are reported (and logged); the rest are counted
/// and said in one line.
pub const MAX_REFUSAL_REPORTS_PER_MINUTE: u32 = 30;

/// At most this many other hosts' messages are skipped in one poll (the agent's loop then checks
/// its deadline and heartbeat before it reads on).
const MAX_SKIPPED_PER_POLL: usize = 10_000;

/// How often the offsets of skipped messages (other hosts' commands) are committed.
const COMMIT_EVERY: Duration = Duration::from_secs(1);

/// What the agent needs besides the channel to apply a command.
pub struct Apply<'a> {
    pub target: &'a Target,
    pub management: &'a [Exclusion],
    pub interfaces: &'a [String],
}

/// What a status report answers: a command applied or refused (with why), or no command at all.
pub enum Answer {
    Applied { command_id: Option<String> },
    Refused { command_id: Option<String>, refusal: Refusal, error: Option<String> },
    /// The state changed without a command (deadline reached, local release, restore).
    Changed,
    Heartbeat,
}

impl Answer {
    /// The report's kind, command id, refusal and error.
    fn into_parts(self) -> (StatusKind, Option<String>, Option<Refusal>, Option<String>) {
        match self {
            Answer::Applied { command_id } => (StatusKind::Applied, command_id, None, None),
            Answer::Refused { command_id, refusal, error } => {
                (StatusKind::Refused, command_id, Some(refusal), error)
            }
            Answer::Changed => (StatusKind::Changed, None, None, None),
            Answer::Heartbeat => (StatusKind::Heartbeat, None, None, None),
        }
    }
}

impl Channel {
    /// Connects, finds this host's partition and starts reading from the last committed offset
    /// (the beginning of the partition the first time: expired and stale commands are refused).
    pub fn connect(settings: ChannelSettings, spans: Spans) -> Result<Channel> {
        let brokers_up = Arc::new(AtomicI64::new(-1));
        let secured = || {
            let mut config = ClientConfig::new();
            for (key, value) in &settings.security {
                config.set(key, value);
            }
            config
        };
        let consumer: BaseConsumer<BrokerWatch> = secured()
            .set("bootstrap.servers", &settings.brokers)
            .set("group.id", format!("cordon-enforcer-{}", settings.host_id))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", settings.fetch_wait_ms.to_string())
            .set("statistics.interval.ms", "5000")
            .create_with_context(BrokerWatch {
                brokers_up: Arc::clone(&brokers_up),
                client_log: cordon_telemetry::logs::KafkaClientLog::default(),
            })
            .context("cannot create the Kafka consumer")?;
        let metadata = match consumer.fetch_metadata(Some(&settings.commands_topic), Duration::from_secs(10)) {
            Ok(metadata) => metadata,
            Err(error) => {
                // The client's own log (why: a TLS alert, a refused connection) is served by a poll.
                let _ = consumer.poll(Duration::from_millis(100));
                return Err(error).with_context(|| format!("cannot reach the Kafka brokers {}", settings.brokers));
            }
        };
        let advertised: Vec<String> =
            metadata.brokers().iter().map(|broker| format!("{}:{}", broker.host(), broker.port())).collect();
        let partitions = metadata
            .topics()
            .iter()
            .find(|t| t.name() == settings.commands_topic)
            .map(|t| t.partitions().len())
            .filter(|n| *n > 0)
            .with_context(|| format!("topic {} does not exist (create it first)", settings.commands_topic))?;
        let partition = cordon_wire::partition_for(
            settings.host_id.as_bytes(),
            u32::try_from(partitions).unwrap_or(u32::MAX),
        );
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(
                &settings.commands_topic,
                i32::try_from(partition).unwrap_or(0),
                Offset::Stored,
            )
            .context("cannot build the partition assignment")?;
        consumer.assign(&assignment).context("cannot read this host's partition")?;
        let producer: ThreadedProducer<DefaultProducerContext> = secured()
            .set("bootstrap.servers", &settings.brokers)
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "0")
            .create()
            .context("cannot create the Kafka producer")?;
        Ok(Channel {
            settings,
            consumer,
            producer,
            last_generation: None,
            brokers_up,
            last_command: None,
            last_sent_at_ms: 0,
            advertised,
            spans,
            refusals: cordon_telemetry::logs::PerMinuteBudget::new(MAX_REFUSAL_REPORTS_PER_MINUTE),
            uncommitted: false,
            last_commit: std::time::Instant::now(),
        })
    }

    /// The brokers the cluster advertised (`host:port`), which librdkafka connects to.
    pub fn advertised(&self) -> &[String] {
        &self.advertised
    }

    /// Connected to at least one broker (as of the last statistics; true until the first
    /// arrive, since connecting fetched the metadata).
    pub fn connected(&self) -> bool {
        self.brokers_up.load(Ordering::Relaxed) != 0
    }

    /// The last command for this host the channel handled, and its outcome.
    pub fn last_command(&self) -> Option<LastCommand> {
        self.last_command.clone()
    }

    pub fn partition(&self) -> Result<i32> {
        let assignment = self.consumer.assignment()?;
        Ok(assignment
            .elements()
            .first()
            .map_or(0, rdkafka::topic_partition_list::TopicPartitionListElem::partition))
    }

    /// Waits up to `timeout` for a message; skips other hosts' messages (up to
    /// [`MAX_SKIPPED_PER_POLL`] at once, without waiting again); applies the first one for this
    /// host and reports the outcome. Returns whether a command for this host was handled.
    pub fn poll(&mut self, timeout: Duration, apply: &Apply<'_>) -> Result<bool> {
        let mut wait = timeout;
        for _ in 0..MAX_SKIPPED_PER_POLL {
            let Some(result) = self.consumer.poll(wait) else {
                self.commit_skipped(true);
                return Ok(false);
            };
            wait = Duration::ZERO;
            let message = match result {
                Ok(message) => message,
                Err(error) => {
                    tracing::error!("reading commands: {error}");
                    return Ok(false);
                }
            };
            // Other hosts share the partition: their commands are not ours to judge, only to skip.
            if message.key() == Some(self.settings.host_id.as_bytes()) {
                // Detached (a copy of one small command) so that handling it may change the channel.
                let message = message.detach();
                return self.take(&message, apply);
            }
            self.uncommitted = true;
            self.commit_skipped(false);
        }
        Ok(false)
    }

    /// Handles one message keyed with this host's id.
    fn take(&mut self, message: &rdkafka::message::OwnedMessage, apply: &Apply<'_>) -> Result<bool> {
        let consume = if self.spans.enabled() {
            let parent = cordon_telemetry::propagation::context_of_message(message);
            parent.and_then(|parent| {
                self.spans.start(
                    "consume command",
                    SpanKind::Consumer,
                    SystemTime::now(),
                    &parent,
                    vec![
                        KeyValue::new("messaging.system", "kafka"),
                        KeyValue::new("messaging.destination.name", message.topic().to_owned()),
                        KeyValue::new("messaging.kafka.partition", i64::from(message.partition())),
                        KeyValue::new("messaging.kafka.offset", message.offset()),
                        KeyValue::new("cordon.host_id", self.settings.host_id.clone()),
                    ],
                )
            })
        } else {
            None
        };
        let payload = message.payload().unwrap_or_default();
        let report = self.handle(payload, apply, consume.as_ref());
        if let Some(report) = &report {
            self.last_command = Some(LastCommand {
                command_id: report.command_id.clone(),
                generation: report.command_id.as_ref().map(|_| report.generation),
                outcome: match (&report.kind, report.refusal) {
                    (StatusKind::Refused, Some(refusal)) => format!("refused: {}", refusal.name()),
                    (StatusKind::Refused, None) => "refused".to_owned(),
                    _ => "applied".to_owned(),
                },
                at_ms: isolation::now_unix_ms(),
            });
            self.report_in(report, consume.as_ref());
        }
        if let Some(consume) = consume {
            consume.span().end();
        }
        if report.is_none() {
            // A refusal held back: skipped like another host's message.
            self.uncommitted = true;
            self.commit_skipped(false);
            return Ok(true);
        }
        let mut offsets = rdkafka::TopicPartitionList::new();
        offsets
            .add_partition_offset(message.topic(), message.partition(), Offset::Offset(message.offset() + 1))
            .context("cannot name the command's offset")?;
        self.consumer.commit(&offsets, CommitMode::Sync).context("cannot commit the command's offset")?;
        self.uncommitted = false;
        self.last_commit = std::time::Instant::now();
        Ok(true)
    }

    /// Commits the offsets of skipped messages, if some are uncommitted and the last commit was
    /// [`COMMIT_EVERY`] ago (or at once when `idle`). A failed commit only means they are
    /// skipped again after a restart.
    fn commit_skipped(&mut self, idle: bool) {
        if !self.uncommitted || (!idle && self.last_commit.elapsed() < COMMIT_EVERY) {
            return;
        }
        if let Err(error) = self.consumer.commit_consumer_state(CommitMode::Async) {
            tracing::debug!("committing skipped commands' offsets: {error}");
        }
        self.uncommitted = false;
        self.last_commit = std::time::Instant::now();
    }

    /// Checks and applies one command; returns the status that answers it, or `None` for a
    /// refusal beyond this minute's [`MAX_REFUSAL_REPORTS_PER_MINUTE`]. `trace`: the command's
    /// "consume command" span, parent of "check command" and "apply".
    fn handle(&mut self, bytes: &[u8], apply: &Apply<'_>, trace: Option<&TraceContext>) -> Option<Status> {
        let check = trace.and_then(|parent| {
            self.spans.start("check command", SpanKind::Internal, SystemTime::now(), parent, Vec::new())
        });
        let checked = self.check(bytes, apply.target);
        if let Some(check) = check {
            let span = check.span();
            match &checked {
                Ok(command) => {
                    span.set_attribute(KeyValue::new("cordon.command_id", command.command_id.clone()));
                    span.set_attribute(KeyValue::new(
                        "cordon.generation",
                        i64::try_from(command.generation).unwrap_or(i64::MAX),
                    ));
                }
                Err((refusal, _)) => {
                    span.set_attribute(KeyValue::new("cordon.refusal", refusal.name()));
                    span.set_status(SpanStatus::error(refusal.to_string()));
                }
            }
            span.end();
        }
        let command = match checked {
            Ok(command) => command,
            Err((refusal, command_id)) => {
                let allowance = self.refusals.take(isolation::now_unix_ms());
                if allowance.unsaid_before > 0 {
                    tracing::warn!(
                        "{} more commands were refused in the last minute, neither reported nor logged one by one \
                         (at most {MAX_REFUSAL_REPORTS_PER_MINUTE} a minute): someone may be flooding the commands \
                         topic.",
                        allowance.unsaid_before
                    );
                }
                if !allowance.say {
                    return None;
                }
                tracing::warn!(
                    command_id = command_id.as_deref().unwrap_or(""),
                    refusal = refusal.name(),
                    "refused a command: {refusal}"
                );
                let answer = Answer::Refused { command_id, refusal, error: None };
                return Some(self.snapshot(apply.target, answer));
            }
        };
        if let Some(trace) = trace {
            trace.span().set_attribute(KeyValue::new("cordon.command_id", command.command_id.clone()));
        }
        let applying = trace.and_then(|parent| {
            self.spans.start(
                "apply",
                SpanKind::Internal,
                SystemTime::now(),
                parent,
                vec![
                    KeyValue::new("cordon.command_id", command.command_id.clone()),
                    KeyValue::new(
                        "cordon.action",
                        if matches!(command.action, Action::Isolate { .. }) { "isolate" } else { "release" },
                    ),
                ],
            )
        });
        let outcome = execute(&command, apply);
        let command_id = Some(command.command_id.clone());
        if let Some(applying) = applying {
            if let Err((_, error)) = &outcome {
                applying.span().set_status(SpanStatus::error(error.clone()));
            }
            applying.span().end();
        }
        match outcome {
            Ok(recorded) => {
                // Recorded on disk by the isolation or release itself, in the same write.
                self.last_generation = Some(command.generation);
                tracing::info!(
                    command_id = %command.command_id,
                    generation = command.generation,
                    trace_id = %trace.map(cordon_telemetry::propagation::trace_id_of).unwrap_or_default(),
                    "applied command {} (generation {}).",
                    command.command_id,
                    command.generation
                );
                // The store as the command left it is known: the report reads only the kernel.
                let local = isolation::status_of(apply.target, recorded);
                Some(self.status_message(Answer::Applied { command_id }, local))
            }
            Err((refusal, error)) => {
                tracing::error!(command_id = %command.command_id, "command {} failed: {error}", command.command_id);
                let answer = Answer::Refused { command_id, refusal, error: Some(error) };
                Some(self.snapshot(apply.target, answer))
            }
        }
    }

    /// Signature, version, host, expiry and generation, in that order.
    fn check(&mut self, bytes: &[u8], target: &Target) -> Result<Command, (Refusal, Option<String>)> {
        let command = cordon_wire::open_with_any(bytes, &self.settings.public_keys)
            .map_err(|refusal| (refusal, None))?;
        let id = Some(command.command_id.clone());
        if command.host_id != self.settings.host_id {
            return Err((Refusal::WrongHost, id));
        }
        if command.expires_at_ms < isolation::now_unix_ms() {
            return Err((Refusal::Expired, id));
        }
        let last = match self.last_generation {
            Some(last) => last,
            None => match Store::open(&target.state_dir).and_then(|s| s.last_command_generation()) {
                Ok(last) => {
                    self.last_generation = Some(last);
                    last
                }
                // Unknown: refuse rather than risk applying a replay.
                Err(_) => u64::MAX,
            },
        };
        if command.generation <= last {
            return Err((Refusal::StaleGeneration, id));
        }
        Ok(command)
    }

    /// The host's state as a status message: one read of the store (it is opened per use, since
    /// the command line opens it too, and an open costs as much as attaching the programs).
    pub fn snapshot(&mut self, target: &Target, answer: Answer) -> Status {
        self.status_message(answer, isolation::status(target))
    }

    /// `local` as a status message answering as `answer` says.
    fn status_message(&mut self, answer: Answer, local: Result<isolation::Status>) -> Status {
        let (kind, command_id, refusal, error) = answer.into_parts();
        let sent_at_ms = isolation::now_unix_ms().max(self.last_sent_at_ms.saturating_add(1));
        self.last_sent_at_ms = sent_at_ms;
        let mut status = Status {
            version: WIRE_VERSION,
            host_id: self.settings.host_id.clone(),
            sent_at_ms,
            kind,
            command_id,
            generation: 0,
            isolated: false,
            mode: None,
            expires_at_ms: None,
            exclusions: Vec::new(),
            tags: Vec::new(),
            refusal,
            error,
            tampering: None,
            packets_dropped: 0,
            packets_allowed: 0,
        };
        match local {
            Ok(local) => {
                status.generation = local.last_command_generation;
                status.isolated = local.isolated;
                status.mode = local.mode;
                status.expires_at_ms = local.expires_at_unix_ms;
                status.exclusions = local.exclusions.iter().map(ToString::to_string).collect();
                status.tags = local.tags.iter().map(|t| (*t).to_owned()).collect();
                status.packets_dropped = local.counters.packets_dropped;
                status.packets_allowed = local.counters.packets_allowed;
            }
            Err(e) => {
                // What this agent last applied, if it knows (no other process applies commands).
                status.generation = self.last_generation.unwrap_or(0);
                let reading = format!("cannot read local status: {e:#}");
                status.error =
                    Some(status.error.map_or(reading.clone(), |first| format!("{first}; {reading}")));
            }
        }
        status
    }

    /// Publishes `status` (keyed by host id, signed with the agent's key); failures are logged,
    /// never fatal.
    pub fn report(&self, status: &Status) {
        self.report_in(status, None);
    }

    /// Publishes `status`; under `trace` ("report status", whose context goes in the message's
    /// headers so that the orchestrator's handling of it joins the trace).
    fn report_in(&self, status: &Status, trace: Option<&TraceContext>) {
        let bytes = cordon_wire::seal_report(status, &self.settings.agent_key);
        let mut record =
            BaseRecord::to(&self.settings.status_topic).key(&self.settings.host_id).payload(&bytes);
        let reporting = trace.and_then(|parent| {
            self.spans.start(
                "report status",
                SpanKind::Producer,
                SystemTime::now(),
                parent,
                vec![
                    KeyValue::new("messaging.system", "kafka"),
                    KeyValue::new("messaging.destination.name", self.settings.status_topic.clone()),
                    KeyValue::new("cordon.host_id", status.host_id.clone()),
                    KeyValue::new("cordon.isolated", status.isolated),
                    KeyValue::new("cordon.generation", i64::try_from(status.generation).unwrap_or(i64::MAX)),
                ],
            )
        });
        if let Some(reporting) = &reporting {
            record = record.headers(cordon_telemetry::propagation::kafka_headers(reporting));
        }
        if let Err((error, _)) = self.producer.send(record) {
            tracing::error!("cannot report status: {error}");
            if let Some(reporting) = &reporting {
                reporting.span().set_status(SpanStatus::error(error.to_string()));
            }
        }
        if let Some(reporting) = reporting {
            reporting.span().end();
        }
    }
}

/// Carries out an authentic command for this host; what the store holds after it.
fn execute(command: &Command, apply: &Apply<'_>) -> Result<isolation::Recorded, (Refusal, String)> {
    let actor = format!("command {}", command.command_id);
    match &command.action {
        Action::Isolate {
            duration_seconds,
            exclusions,
            allowed_processes,
            allow_dns,
            allow_dhcp,
            reason,
        } => {
            let parsed: Result<Vec<_>, _> = exclusions.iter().map(|spec| parse_exclusion(spec)).collect();
            match parsed {
                Err(error) => Err((Refusal::InvalidContent, error.to_string())),
                Ok(exclusions) => {
                    let request = IsolateRequest {
                        duration: duration_seconds.map(Duration::from_secs),
                        exclusions,
                        allowed_processes: allowed_processes.clone(),
                        allow_dns: *allow_dns,
                        allow_dhcp: *allow_dhcp,
                        reason: Some(reason.clone()),
                        interfaces: apply.interfaces.to_vec(),
                        management: apply.management.to_vec(),
                        actor: actor.clone(),
                        command_generation: Some(command.generation),
                        agent_tgid: Some(std::process::id()),
                    };
                    isolation::isolate(apply.target, &request)
                        .map(|outcome| isolation::Recorded::after_command(Some(outcome.record), command.generation))
                        .map_err(|e| (Refusal::Failed, format!("{e:#}")))
                }
            }
        }
        Action::Release { .. } => {
            isolation::release(apply.target, &actor, "released", Some(command.generation))
                .map(|_| isolation::Recorded::after_command(None, command.generation))
                .map_err(|e| (Refusal::Failed, format!("{e:#}")))
        }
    }
}
