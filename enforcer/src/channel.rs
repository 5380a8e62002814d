//! The agent's command channel over Kafka: reads this host's signed commands from the commands
//! topic (only the partition its host id hashes to), checks each one, applies it, and reports
//! every outcome, every change and a heartbeat to the status topic.
//!
//! A command is applied only if its signature verifies with the configured public key, it names
//! this host, it has not expired, and its generation is newer than the last one applied (kept in
//! sled, so a replay after a restart is refused too). Anything else is refused and reported with
//! the reason; nothing in a message can crash the agent.

use std::time::Duration;

use anyhow::{Context, Result};
use cordon_wire::spec::Exclusion;
use cordon_wire::VerifyingKey;
use cordon_wire::{Action, Command, Refusal, Status, StatusKind, WIRE_VERSION};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

use crate::exclusion::parse_exclusion;
use crate::isolation::{self, IsolateRequest, Target};
use crate::store::{Mode, Store};

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
}

pub struct Channel {
    settings: ChannelSettings,
    consumer: BaseConsumer,
    producer: ThreadedProducer<DefaultProducerContext>,
    /// The generation of the last command applied, read from the store once and kept here:
    /// only this channel changes it, and checking a command should not wait on the store.
    last_generation: std::cell::Cell<Option<u64>>,
}

/// What the agent needs besides the channel to apply a command.
pub struct Apply<'a> {
    pub target: &'a Target,
    pub management: &'a [Exclusion],
    pub interfaces: &'a [String],
}

impl Channel {
    /// Connects, finds this host's partition and starts reading from the last committed offset
    /// (the beginning of the partition the first time: expired and stale commands are refused).
    pub fn connect(settings: ChannelSettings) -> Result<Channel> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &settings.brokers)
            .set("group.id", format!("cordon-enforcer-{}", settings.host_id))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", settings.fetch_wait_ms.to_string())
            .create()
            .context("cannot create the Kafka consumer")?;
        let metadata = consumer
            .fetch_metadata(Some(&settings.commands_topic), Duration::from_secs(10))
            .with_context(|| format!("cannot reach the Kafka brokers {}", settings.brokers))?;
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
        let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", &settings.brokers)
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "0")
            .create()
            .context("cannot create the Kafka producer")?;
        Ok(Channel { settings, consumer, producer, last_generation: std::cell::Cell::new(None) })
    }

    pub fn partition(&self) -> Result<i32> {
        let assignment = self.consumer.assignment()?;
        Ok(assignment
            .elements()
            .first()
            .map_or(0, rdkafka::topic_partition_list::TopicPartitionListElem::partition))
    }

    /// Waits up to `timeout` for one message; applies it if it is for this host and reports the
    /// outcome. Returns whether a command for this host was handled.
    pub fn poll(&self, timeout: Duration, apply: &Apply<'_>) -> Result<bool> {
        let Some(result) = self.consumer.poll(timeout) else { return Ok(false) };
        let message = match result {
            Ok(message) => message,
            Err(error) => {
                eprintln!("cordon-enforcer: error: reading commands: {error}");
                return Ok(false);
            }
        };
        // Other hosts share the partition: their commands are not ours to judge.
        let ours = message.key() == Some(self.settings.host_id.as_bytes());
        if ours {
            let payload = message.payload().unwrap_or_default();
            let report = self.handle(payload, apply);
            self.report(&report);
        }
        self.consumer
            .commit_message(&message, CommitMode::Sync)
            .context("cannot commit the command's offset")?;
        Ok(ours)
    }

    /// Checks and applies one command; returns the status that answers it.
    fn handle(&self, bytes: &[u8], apply: &Apply<'_>) -> Status {
        let command = match self.check(bytes, apply.target) {
            Ok(command) => command,
            Err((refusal, command_id)) => {
                eprintln!("cordon-enforcer: refused a command: {refusal}");
                return self.snapshot(apply.target, StatusKind::Refused, command_id, Some(refusal), None);
            }
        };
        let actor = format!("command {}", command.command_id);
        let outcome = match &command.action {
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
                        };
                        isolation::isolate(apply.target, &request)
                            .map(|_| ())
                            .map_err(|e| (Refusal::InvalidContent, format!("{e:#}")))
                    }
                }
            }
            Action::Release { .. } => isolation::release(apply.target, &actor, "released")
                .map(|_| ())
                .map_err(|e| (Refusal::InvalidContent, format!("{e:#}"))),
        };
        let command_id = Some(command.command_id.clone());
        match outcome {
            Ok(()) => {
                self.last_generation.set(Some(command.generation));
                if let Err(error) = Store::open(&apply.target.state_dir)
                    .and_then(|s| s.set_last_generation(command.generation))
                {
                    eprintln!(
                        "cordon-enforcer: error: cannot record generation {}: {error:#}",
                        command.generation
                    );
                }
                println!(
                    "cordon-enforcer: applied command {} (generation {}).",
                    command.command_id, command.generation
                );
                self.snapshot(apply.target, StatusKind::Applied, command_id, None, None)
            }
            Err((_, error)) => {
                eprintln!("cordon-enforcer: error: command {} failed: {error}", command.command_id);
                self.snapshot(
                    apply.target,
                    StatusKind::Refused,
                    command_id,
                    Some(Refusal::InvalidContent),
                    Some(error),
                )
            }
        }
    }

    /// Signature, version, host, expiry and generation, in that order.
    fn check(&self, bytes: &[u8], target: &Target) -> Result<Command, (Refusal, Option<String>)> {
        let command = cordon_wire::open_with_any(bytes, &self.settings.public_keys)
            .map_err(|refusal| (refusal, None))?;
        let id = Some(command.command_id.clone());
        if command.host_id != self.settings.host_id {
            return Err((Refusal::WrongHost, id));
        }
        if command.expires_at_ms < isolation::now_unix_ms() {
            return Err((Refusal::Expired, id));
        }
        let last = match self.last_generation.get() {
            Some(last) => last,
            None => match Store::open(&target.state_dir).and_then(|s| s.last_generation()) {
                Ok(last) => {
                    self.last_generation.set(Some(last));
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

    /// The host's state as a status message.
    pub fn snapshot(
        &self,
        target: &Target,
        kind: StatusKind,
        command_id: Option<String>,
        refusal: Option<Refusal>,
        error: Option<String>,
    ) -> Status {
        let generation = Store::open(&target.state_dir).and_then(|s| s.last_generation()).unwrap_or(0);
        let mut status = Status {
            version: WIRE_VERSION,
            host_id: self.settings.host_id.clone(),
            sent_at_ms: isolation::now_unix_ms(),
            kind,
            command_id,
            generation,
            isolated: false,
            mode: None,
            expires_at_ms: None,
            exclusions: Vec::new(),
            tags: Vec::new(),
            refusal,
            error,
            packets_dropped: 0,
            packets_allowed: 0,
        };
        match isolation::status(target) {
            Ok(local) => {
                status.isolated = local.isolated;
                status.mode = local.mode.map(|m| match m {
                    Mode::Automatic => "automatic".to_owned(),
                    Mode::Manual => "manual".to_owned(),
                });
                status.expires_at_ms = local.expires_at_unix_ms;
                status.exclusions = local.exclusions;
                status.tags = local.tags.iter().map(|t| (*t).to_owned()).collect();
                status.packets_dropped = local.counters.packets_dropped;
                status.packets_allowed = local.counters.packets_allowed;
            }
            Err(e) => {
                let reading = format!("cannot read local status: {e:#}");
                status.error =
                    Some(status.error.map_or(reading.clone(), |first| format!("{first}; {reading}")));
            }
        }
        status
    }

    /// Publishes `status` (keyed by host id); failures are logged, never fatal.
    pub fn report(&self, status: &Status) {
        let Ok(bytes) = serde_json::to_vec(status) else { return };
        let record = BaseRecord::to(&self.settings.status_topic).key(&self.settings.host_id).payload(&bytes);
        if let Err((error, _)) = self.producer.send(record) {
            eprintln!("cordon-enforcer: error: cannot report status: {error}");
        }
    }
}
