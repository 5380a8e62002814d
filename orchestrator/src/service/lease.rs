//! Exactly one active `cordon serve` per `instance_id`. Two services started with the same id
//! (a standby started while the first still runs, a copy on a second machine) would both lift
//! deadlines and send commands from two stores. Kafka fences a second static group member on
//! some brokers, not on all (tansu 0.6 does not), and does not stop a fenced service's clock
//! or API; so cordon keeps its own lease: each service publishes one claim when it starts, signed
//! with the command signing key, on the lease topic, and reads every claim there. A claim for
//! its `instance_id` made by a later start fences it: it stops acting (takes no input, lifts
//! no deadline, sends nothing, refuses writes, `/readyz` not ready), says why, and stays so
//! until it is restarted. Only a holder of the signing key can fence cordon; a claim replayed
//! from an earlier start is older than the service it would fence.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result};
use cordon_wire::lease::{open_lease, seal_lease, Lease};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::config::KafkaSection;
use super::now_ms;

/// Whether this service was fenced by a twin, and why: set by the lease watcher, read by the
/// loop, the sender and the API.
#[derive(Clone, Default)]
pub struct Fence(Arc<Mutex<Option<String>>>);

impl Fence {
    /// Why this service no longer acts, if it was fenced.
    pub fn reason(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn set(&self, why: String) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert(why);
    }
}

/// The lease watcher's thread; stopped with the service.
pub struct LeaseWatch {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LeaseWatch {
    /// Stops the watcher (within one poll) and waits for it.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What the watcher needs to claim and to recognise claims.
struct Watcher {
    ours: Lease,
    sealed: Vec<u8>,
    verifying_key: cordon_wire::VerifyingKey,
    topic: String,
    fence: Fence,
    stop: Arc<AtomicBool>,
}

/// Claims the lease for this start and watches for later claims, on a thread of its own.
pub fn start(
    kafka: &KafkaSection,
    brokers: &str,
    key: &cordon_wire::SigningKey,
    fence: Fence,
) -> Result<LeaseWatch> {
    let incarnation = super::outbox::hex(&cordon_wire::generate_signing_key().to_bytes()[..8]);
    let ours = Lease::new(&kafka.instance_id, &incarnation, now_ms());
    let mut client = ClientConfig::new();
    for (name, value) in kafka.client_settings()? {
        client.set(name, value);
    }
    client.set("bootstrap.servers", brokers);
    let consumer: BaseConsumer = client
        .clone()
        .set("group.id", format!("{}-lease-{incarnation}", kafka.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .context("cannot create the lease topic's consumer")?;
    let producer: BaseProducer = client
        .set("message.timeout.ms", "10000")
        .create()
        .context("cannot create the lease topic's producer")?;
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = Watcher {
        sealed: seal_lease(&ours, key),
        ours,
        verifying_key: key.verifying_key(),
        topic: kafka.lease_topic.clone(),
        fence,
        stop: Arc::clone(&stop),
    };
    let thread = std::thread::Builder::new()
        .name("cordon-lease".into())
        .spawn(move || watcher.run(&consumer, &producer))
        .context("cannot start the lease thread")?;
    Ok(LeaseWatch { stop, thread: Some(thread) })
}

impl Watcher {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn run(&self, consumer: &BaseConsumer, producer: &BaseProducer) {
        if !self.wait_for_topic(consumer) {
            return;
        }
        let mut assignment = TopicPartitionList::new();
        if assignment.add_partition_offset(&self.topic, 0, Offset::Beginning).is_err()
            || consumer.assign(&assignment).is_err()
        {
            tracing::error!("cannot read the lease topic {}: a twin of this service would not be fenced.", self.topic);
            return;
        }
        // Claimed once this start's claim is read back from the topic.
        let mut claimed = false;
        let mut next_claim = std::time::Instant::now();
        let mut refused = cordon_telemetry::logs::Throttled::new(Duration::from_mins(1));
        while !self.stopped() {
            if !claimed && std::time::Instant::now() >= next_claim {
                self.publish(producer);
                next_claim = std::time::Instant::now() + Duration::from_secs(5);
            }
            let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) else { continue };
            match open_lease(message.payload().unwrap_or_default(), &self.verifying_key) {
                Ok(claim) if claim == self.ours => {
                    if !claimed {
                        tracing::info!(
                            "claimed the lease for instance_id {} (incarnation {}) on {}.",
                            self.ours.instance_id,
                            self.ours.incarnation,
                            self.topic
                        );
                    }
                    claimed = true;
                }
                Ok(claim) if claim.instance_id == self.ours.instance_id && claim.supersedes(&self.ours) => {
                    self.fenced_by(&claim);
                    return;
                }
                Ok(_) => {}
                Err(refusal) => {
                    if let Some(repeats) = refused.failure("messages") {
                        tracing::warn!(
                            "a message on the lease topic {} at offset {} is not a claim of cordon's ({refusal}): \
                             ignored{repeats}.",
                            self.topic,
                            message.offset()
                        );
                    }
                }
            }
        }
    }

    /// Waits until the broker knows the lease topic; false if it has none (said once) or the
    /// service stops first.
    fn wait_for_topic(&self, consumer: &BaseConsumer) -> bool {
        let mut unreachable = cordon_telemetry::logs::Throttled::new(Duration::from_mins(1));
        while !self.stopped() {
            match consumer.fetch_metadata(Some(&self.topic), Duration::from_secs(5)) {
                Ok(metadata) => {
                    let known = metadata
                        .topics()
                        .iter()
                        .any(|topic| topic.name() == self.topic && topic.error().is_none() && !topic.partitions().is_empty());
                    if !known {
                        tracing::warn!(
                            "the lease topic {} does not exist (create it with `cordon topics`): another cordon serve \
                             started with instance_id {} would not be fenced off.",
                            self.topic,
                            self.ours.instance_id
                        );
                    }
                    return known;
                }
                Err(error) => {
                    if let Some(repeats) = unreachable.failure("attempts") {
                        tracing::debug!("cannot read the lease topic's metadata yet: {error}{repeats}");
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
        false
    }

    /// Publishes this start's claim (again, if it was not read back yet).
    fn publish(&self, producer: &BaseProducer) {
        let record = BaseRecord::to(&self.topic).key(&self.ours.instance_id).payload(&self.sealed);
        if producer.send(record).is_ok() {
            let _ = producer.flush(Duration::from_secs(5));
        }
    }

    fn fenced_by(&self, claim: &Lease) {
        let why = format!(
            "fenced: another cordon serve with instance_id {} started later (at {} ms, incarnation {}; this one \
             started at {} ms, incarnation {})",
            claim.instance_id, claim.started_at_ms, claim.incarnation, self.ours.started_at_ms, self.ours.incarnation
        );
        self.fence.set(why);
    }
}
