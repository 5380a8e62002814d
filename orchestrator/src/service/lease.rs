//! Exactly one active `cordon serve` per `instance_id`. Two services started with the same id
//! (a standby started while the first still runs, a copy on a second machine) would both lift
//! deadlines and send commands from two stores. Kafka fences a second static group member on
//! some brokers, not on all (tansu 0.6 does not), and does not stop a fenced service's clock
//! or API; so cordon keeps its own lease: each service reads the lease topic to its end, then
//! publishes one claim, signed with the command signing key, that names the claim it read last
//! (see `cordon_wire::lease`), and reads every claim after it. A claim for its `instance_id` made
//! by a later start fences it: it stops acting (takes no input, lifts no deadline, sends nothing,
//! refuses writes, `/readyz` not ready), says why, and stays so until it is restarted. Only a
//! holder of the signing key can fence cordon; a claim replayed from an earlier start succeeds an
//! earlier one and fences nobody; no clock decides the order.

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
use super::events::LeaseTopicRead;
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

/// The service stopped before the watcher was done.
struct Stopped;

/// What the watcher needs to claim and to recognise claims.
struct Watcher {
    instance_id: String,
    incarnation: String,
    started_at_ms: i64,
    key: cordon_wire::SigningKey,
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
        instance_id: kafka.instance_id.clone(),
        incarnation,
        started_at_ms: now_ms(),
        key: key.clone(),
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
            LeaseTopicRead::Unreadable { topic: &self.topic }.emit();
            return;
        }
        let mut refused = cordon_telemetry::logs::Throttled::new(Duration::from_mins(1));
        let Ok(succeeds) = self.last_claim(consumer, &mut refused) else { return };
        let ours = Lease::new(&self.instance_id, &self.incarnation, self.started_at_ms, succeeds);
        let sealed = seal_lease(&ours, &self.key);
        // Claimed once this start's claim is read back from the topic, at this offset.
        let mut our_offset: Option<i64> = None;
        let mut next_claim = std::time::Instant::now();
        while !self.stopped() {
            if our_offset.is_none() && std::time::Instant::now() >= next_claim {
                self.publish(producer, &sealed);
                next_claim = std::time::Instant::now() + Duration::from_secs(5);
            }
            let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) else { continue };
            let Some(claim) = self.claim_in(&message, &mut refused) else { continue };
            if claim == ours {
                if our_offset.is_none() {
                    LeaseTopicRead::Claimed { instance_id: &ours.instance_id, incarnation: &ours.incarnation, topic: &self.topic }
                        .emit();
                }
                our_offset.get_or_insert(message.offset());
            } else if claim.fences(message.offset(), &ours, our_offset) {
                self.fenced_by(&claim, &ours);
                return;
            }
        }
    }

    /// Reads the lease topic to its end; the incarnation of the last claim for this
    /// `instance_id` (`None` when there is none).
    fn last_claim(
        &self,
        consumer: &BaseConsumer,
        refused: &mut cordon_telemetry::logs::Throttled,
    ) -> Result<Option<String>, Stopped> {
        let mut unreachable = cordon_telemetry::logs::Throttled::new(Duration::from_mins(1));
        let end = loop {
            if self.stopped() {
                return Err(Stopped);
            }
            match consumer.fetch_watermarks(&self.topic, 0, Duration::from_secs(5)) {
                Ok((_, high)) => break high,
                Err(error) => {
                    if let Some(repeats) = unreachable.failure("attempts") {
                        LeaseTopicRead::EndNotReadYet { topic: &self.topic, error: &error, repeats: &repeats }.emit();
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        };
        let mut last = None;
        let mut next = 0;
        while next < end {
            if self.stopped() {
                return Err(Stopped);
            }
            let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) else { continue };
            next = message.offset() + 1;
            if let Some(claim) = self.claim_in(&message, refused) {
                if claim.instance_id == self.instance_id {
                    last = Some(claim.incarnation);
                }
            }
        }
        Ok(last)
    }

    /// The claim `message` holds, if it is one (a message that is not is said, throttled).
    fn claim_in(
        &self,
        message: &rdkafka::message::BorrowedMessage<'_>,
        refused: &mut cordon_telemetry::logs::Throttled,
    ) -> Option<Lease> {
        match open_lease(message.payload().unwrap_or_default(), &self.key.verifying_key()) {
            Ok(claim) => Some(claim),
            Err(refusal) => {
                if let Some(repeats) = refused.failure("messages") {
                    let (topic, offset) = (&self.topic, message.offset());
                    LeaseTopicRead::NotAClaim { topic, offset, refusal: &refusal, repeats: &repeats }.emit();
                }
                None
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
                        LeaseTopicRead::TopicMissing { topic: &self.topic, instance_id: &self.instance_id }.emit();
                    }
                    return known;
                }
                Err(error) => {
                    if let Some(repeats) = unreachable.failure("attempts") {
                        LeaseTopicRead::MetadataNotReadYet { error: &error, repeats: &repeats }.emit();
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
        false
    }

    /// Publishes this start's claim (again, if it was not read back yet).
    fn publish(&self, producer: &BaseProducer, sealed: &[u8]) {
        let record = BaseRecord::to(&self.topic).key(&self.instance_id).payload(sealed);
        if producer.send(record).is_ok() {
            let _ = producer.flush(Duration::from_secs(5));
        }
    }

    fn fenced_by(&self, claim: &Lease, ours: &Lease) {
        let why = format!(
            "fenced: another cordon serve with instance_id {} started later (incarnation {}, at {} ms on its clock; \
             this one is incarnation {}, started at {} ms)",
            claim.instance_id, claim.incarnation, claim.started_at_ms, ours.incarnation, ours.started_at_ms
        );
        self.fence.set(why);
    }
}
