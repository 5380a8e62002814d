//! `cordon serve`: detections from Kafka become isolations on hosts.
//!
//! One loop over a closed set of inputs (a Kafka message on the detections or status topic, a
//! scheduler tick, shutdown). For each detection: validate it (invalid ones go to the
//! dead-letter topic with the reason and the original bytes), evaluate it with the rules engine,
//! record the resulting host states, the engine state and the signed commands (outbox) in sled,
//! flush, then commit the Kafka offset, then send the outbox. Status reports from agents move
//! hosts from isolating to isolated and back. The scheduler releases automatic isolations whose
//! deadline has passed.

pub mod config;
pub mod store;

use std::future::Future;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use self::config::ServiceConfig;
use self::store::{AuditEntry, HostRecord, HostState, OutboxEntry, Store};

/// Wall clock in epoch milliseconds; the only place the service reads it.
pub fn now_ms() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// Everything the loop works with.
struct Service {
    config: ServiceConfig,
    ruleset: rules::Ruleset,
    engine: rules::EngineState,
    store: Store,
    signing_key: cordon_wire::SigningKey,
    producer: FutureProducer,
}

/// Loads the rules directory; every problem is reported at once.
pub fn load_rules(dir: &std::path::Path) -> Result<rules::Ruleset> {
    let (rule_files, policy) = crate::rules_cli::read_directory(dir)?;
    match rules::RuleDirectory::load(&rule_files, policy.as_ref()) {
        Ok(directory) => Ok(directory.ruleset().clone()),
        Err(diagnostics) => {
            let listed: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
            bail!("the rules in {} do not validate:\n{}", dir.display(), listed.join("\n"))
        }
    }
}

/// `cordon serve --config FILE`: resolves the brokers (starting the embedded one when none are
/// configured) and runs until Ctrl-C or SIGTERM.
pub fn run_from_config(path: &std::path::Path) -> Result<()> {
    let config = ServiceConfig::load(path)?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let embedded;
        let brokers = match config.kafka.brokers.as_deref() {
            None | Some("embedded") => {
                embedded = rdkafka::mocking::MockCluster::new(1).context("cannot start the embedded broker")?;
                for topic in [
                    &config.kafka.detections_topic,
                    &config.kafka.dead_letter_topic,
                    &config.kafka.commands_topic,
                    &config.kafka.status_topic,
                ] {
                    embedded.create_topic(topic, 3, 1).with_context(|| format!("cannot create topic {topic}"))?;
                }
                let brokers = embedded.bootstrap_servers();
                println!(
                    "cordon: no brokers configured: embedded Kafka-protocol broker at {brokers}. It keeps nothing \
                     across restarts; configure [kafka] brokers for production."
                );
                brokers
            }
            Some(brokers) => brokers.to_owned(),
        };
        serve(config, &brokers, shutdown_signal()).await
    })
}

/// Completes on Ctrl-C or SIGTERM (systemd and Kubernetes stop services with SIGTERM).
async fn shutdown_signal() {
    let Ok(mut terminate) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

/// `cordon keygen --out DIR`: a new Ed25519 key pair for signing commands.
pub fn keygen(dir: &std::path::Path) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let key = cordon_wire::generate_signing_key();
    let secret = dir.join("signing.key");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&secret)
        .with_context(|| format!("cannot create {} (it must not exist yet)", secret.display()))?;
    writeln!(file, "{}", cordon_wire::key_to_base64(&key.to_bytes()))?;
    std::fs::write(
        dir.join("signing.pub"),
        format!("{}\n", cordon_wire::key_to_base64(key.verifying_key().as_bytes())),
    )
    .with_context(|| format!("cannot write {}/signing.pub", dir.display()))?;
    Ok(())
}

/// Runs the service until `shutdown` completes. `brokers` is the resolved bootstrap list.
pub async fn serve(config: ServiceConfig, brokers: &str, shutdown: impl Future<Output = ()>) -> Result<()> {
    let ruleset = load_rules(&config.rules.dir)?;
    let store = Store::open(&config.state.dir)?;
    let engine = store.engine_state()?;
    let key_text = std::fs::read_to_string(&config.signing.key_file)
        .with_context(|| format!("cannot read the signing key {}", config.signing.key_file.display()))?;
    let signing_key = cordon_wire::signing_key_from_base64(&key_text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", config.signing.key_file.display()))?;
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", &config.kafka.group_id)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .context("cannot create the Kafka consumer")?;
    consumer
        .subscribe(&[&config.kafka.detections_topic, &config.kafka.status_topic])
        .context("cannot subscribe to the detections and status topics")?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("partitioner", "murmur2_random")
        .set("enable.idempotence", "true")
        .create()
        .context("cannot create the Kafka producer")?;
    let mut service = Service { config, ruleset, engine, store, signing_key, producer };
    println!(
        "cordon: serving {} rule(s) from {}.",
        service.ruleset.len(),
        service.config.rules.dir.display()
    );
    service.send_outbox().await;

    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            message = consumer.recv() => match message {
                Ok(message) => {
                    if let Err(error) = service.handle(&message).await {
                        // Nothing committed: the message comes again after a restart.
                        eprintln!("cordon: error: {error:#}");
                        continue;
                    }
                    consumer.commit_message(&message, CommitMode::Sync).context("cannot commit the offset")?;
                    service.send_outbox().await;
                }
                Err(error) => eprintln!("cordon: error: reading Kafka: {error}"),
            },
            _ = tick.tick() => {
                if let Err(error) = service.lift_due(now_ms()) {
                    eprintln!("cordon: error: scheduler: {error:#}");
                }
                service.send_outbox().await;
            }
        }
    }
    Ok(())
}

impl Service {
    async fn handle(&mut self, message: &BorrowedMessage<'_>) -> Result<()> {
        let payload = message.payload().unwrap_or_default();
        if message.topic() == self.config.kafka.status_topic {
            return self.on_status(payload);
        }
        let event = match std::str::from_utf8(payload)
            .map_err(|e| format!("not UTF-8 text: {e}"))
            .and_then(|text| rules::Event::parse(text).map_err(|e| e.to_string()))
        {
            Ok(event) => event,
            Err(reason) => return self.dead_letter(message, &reason).await,
        };
        self.on_detection(&event, now_ms())
    }

    /// Sends an invalid event to the dead-letter topic, with the reason and the original bytes.
    async fn dead_letter(&self, message: &BorrowedMessage<'_>, reason: &str) -> Result<()> {
        let record = serde_json::json!({
            "reason": reason,
            "topic": message.topic(),
            "partition": message.partition(),
            "offset": message.offset(),
            "original_base64": base64::engine::general_purpose::STANDARD.encode(message.payload().unwrap_or_default()),
        });
        let bytes = serde_json::to_vec(&record)?;
        let key = message.key().unwrap_or_default();
        self.producer
            .send(
                FutureRecord::to(&self.config.kafka.dead_letter_topic).key(key).payload(&bytes),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(error, _)| anyhow::anyhow!("cannot write to the dead-letter topic: {error}"))?;
        eprintln!("cordon: dead-lettered an event at offset {}: {reason}", message.offset());
        Ok(())
    }

    /// Evaluates one valid event; records every resulting change and command, durably.
    fn on_detection(&mut self, event: &rules::Event, now: i64) -> Result<()> {
        let tags = self.store.host(event.host())?.map(|h| h.tags).unwrap_or_default();
        let decisions = rules::evaluate(&self.ruleset, &mut self.engine, event, now, &tags);
        for decision in &decisions {
            let previous = self.store.host(&decision.host)?;
            let mut record = previous.clone().unwrap_or_else(|| HostRecord::new(&decision.host, now));
            let from = record.state;
            let isolation = decision.action.isolation();
            record.rules.clone_from(&decision.rules);
            record.event_id = Some(decision.event_id.clone());
            record.mode = Some(if isolation.deadline_ms.is_some() { "automatic" } else { "manual" }.into());
            record.expires_at_ms = isolation.deadline_ms;
            record.updated_at_ms = now;
            match &decision.action {
                rules::Action::Isolate(_) => {
                    record.state = HostState::Isolating;
                    record.generation += 1;
                    self.enqueue_isolate(&record, isolation, now)?;
                }
                rules::Action::RequestApproval(_) => record.state = HostState::PendingApproval,
            }
            record.retag();
            self.store.put_host(previous.as_ref(), &record)?;
            let why: Vec<String> = decision.why.iter().map(|w| format!("{w:?}")).collect();
            self.store.audit(&AuditEntry {
                at_ms: now,
                host: record.host.clone(),
                from,
                to: record.state,
                by: format!("rules {}", decision.rules.join(",")),
                event_id: Some(decision.event_id.clone()),
                why: why.join("; "),
            })?;
            println!(
                "cordon: {} -> {:?} (rules {}, event {}).",
                record.host,
                record.state,
                decision.rules.join(","),
                decision.event_id
            );
        }
        self.store.put_engine_state(&self.engine)?;
        self.store.flush()
    }

    fn enqueue_isolate(&self, record: &HostRecord, isolation: &rules::Isolation, now: i64) -> Result<()> {
        let action = cordon_wire::Action::Isolate {
            duration_seconds: isolation
                .deadline_ms
                .map(|deadline| u64::try_from((deadline - now).max(1_000) / 1_000).unwrap_or(1)),
            exclusions: isolation.exclusions.allow.iter().map(ToString::to_string).collect(),
            allowed_processes: isolation.exclusions.allow_processes.clone(),
            allow_dns: isolation.exclusions.allow_dns,
            allow_dhcp: isolation.exclusions.allow_dhcp,
            reason: format!(
                "rules {} on event {}",
                record.rules.join(","),
                record.event_id.as_deref().unwrap_or("?")
            ),
        };
        self.enqueue(record, action, now)
    }

    fn enqueue(&self, record: &HostRecord, action: cordon_wire::Action, now: i64) -> Result<()> {
        let ttl = i64::try_from(self.config.commands.ttl_seconds).unwrap_or(600) * 1_000;
        let command = cordon_wire::Command {
            version: cordon_wire::WIRE_VERSION,
            command_id: format!("{}-{}", record.host, record.generation),
            host_id: record.host.clone(),
            generation: record.generation,
            issued_at_ms: now,
            expires_at_ms: now + ttl,
            action,
        };
        let envelope = cordon_wire::seal(&command, &self.signing_key);
        self.store.enqueue(&OutboxEntry { host: record.host.clone(), envelope })
    }

    /// Applies an agent's report to its host's record.
    fn on_status(&mut self, payload: &[u8]) -> Result<()> {
        let Ok(status) = serde_json::from_slice::<cordon_wire::Status>(payload) else {
            eprintln!("cordon: ignored an unreadable status report");
            return Ok(());
        };
        let now = now_ms();
        let previous = self.store.host(&status.host_id)?;
        let mut record = previous.clone().unwrap_or_else(|| HostRecord::new(&status.host_id, now));
        let from = record.state;
        // Only a report that has seen the last command we issued can confirm it.
        if status.generation >= record.generation {
            record.state = match (status.isolated, record.state) {
                (true, _) => HostState::Isolated,
                (false, HostState::Isolating | HostState::Isolated | HostState::Releasing) => {
                    HostState::Released
                }
                (false, state) => state,
            };
            if !status.isolated {
                record.expires_at_ms = None;
                record.mode = None;
            }
        }
        record.last_status = Some(status);
        record.updated_at_ms = now;
        record.retag();
        self.store.put_host(previous.as_ref(), &record)?;
        if from != record.state {
            self.store.audit(&AuditEntry {
                at_ms: now,
                host: record.host.clone(),
                from,
                to: record.state,
                by: "agent".into(),
                event_id: None,
                why: "status report".into(),
            })?;
            println!("cordon: {} -> {:?} (agent report).", record.host, record.state);
        }
        self.store.flush()
    }

    /// Issues a release for every automatic isolation whose deadline has passed.
    fn lift_due(&mut self, now: i64) -> Result<()> {
        let due = self.store.due(now)?;
        if due.is_empty() {
            return Ok(());
        }
        for host in due {
            let Some(previous) = self.store.host(&host)? else { continue };
            let mut record = previous.clone();
            let from = record.state;
            record.state = HostState::Releasing;
            record.generation += 1;
            record.expires_at_ms = None;
            record.updated_at_ms = now;
            record.retag();
            self.enqueue(&record, cordon_wire::Action::Release { reason: "deadline reached".into() }, now)?;
            self.engine.release(&host);
            self.store.put_host(Some(&previous), &record)?;
            self.store.audit(&AuditEntry {
                at_ms: now,
                host: host.clone(),
                from,
                to: record.state,
                by: "scheduler".into(),
                event_id: None,
                why: "deadline reached".into(),
            })?;
            println!("cordon: {host} -> Releasing (deadline reached).");
        }
        self.store.put_engine_state(&self.engine)?;
        self.store.flush()
    }

    /// Sends every outbox entry, oldest first; stops at the first failure (retried next tick).
    async fn send_outbox(&self) {
        let entries = match self.store.outbox() {
            Ok(entries) => entries,
            Err(error) => return eprintln!("cordon: error: reading the outbox: {error:#}"),
        };
        for (key, entry) in entries {
            let record =
                FutureRecord::to(&self.config.kafka.commands_topic).key(&entry.host).payload(&entry.envelope);
            match self.producer.send(record, Duration::from_secs(5)).await {
                Ok(_) => {
                    if let Err(error) = self.store.sent(&key) {
                        return eprintln!("cordon: error: {error:#}");
                    }
                }
                Err((error, _)) => {
                    return eprintln!("cordon: error: sending a command to {}: {error}", entry.host)
                }
            }
        }
    }
}
