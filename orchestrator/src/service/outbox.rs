//! The outbox: everything the service must put on Kafka (signed commands for the agents, dead
//! letters), kept in sled until the broker has acknowledged it, and the sender task that sends it
//! off the loop.
//!
//! The loop appends to the outbox in the same flush as the change that causes an entry, and then
//! publishes how far the outbox is durable; the sender sends only durable entries, oldest first
//! (one host's commands in order), and removes what the broker acknowledged. Commands are kept
//! unsigned and signed by the sender as they go out (Ed25519 is deterministic: a command resent
//! after a restart is the same envelope), so the loop never spends its time signing. Each fact
//! has one owner: the loop appends, the sender removes. The loop never waits for the broker:
//! while it is down, entries wait here and the API, deadlines and jobs go on. An entry the broker can never
//! take (larger than the message limit, refused for good) is parked, told to the loop (which
//! records the failure on the host) and never blocks the entries behind it.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use base64::Engine as _;
use opentelemetry::trace::{Status as SpanStatus, TraceContextExt as _};
use opentelemetry::{Context as TraceContext, KeyValue};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use sha2::Digest as _;
use tokio::sync::{mpsc, watch};

use super::events::{CommandRefusedForGood, DeadLetterRefused, FailpointAborting, OutboxNotUpdated, KafkaWorksAgain, SendFailed};
use super::lifecycle::HostRecord;
use super::observe::Metrics;
use super::store::{DeadLetterEntry, OutboxEntry, Outgoing, Store};

/// The longest a send waits for the broker's acknowledgement before it is tried again (the
/// producer's `message.timeout.ms`).
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// How often entries that could not be sent are tried again.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// Room kept below the message limit for the key, headers and the record's framing.
const FRAMING_BYTES: usize = 4_096;

/// The longest reason a dead letter carries (a reason quotes parts of hostile input).
const MAX_REASON_BYTES: usize = 2_048;

/// A Kafka key longer than this is replaced, in the dead letter, by its SHA-256.
const MAX_KEY_BYTES: usize = 1_024;

/// Why a message went to the dead-letter topic (the `reason` label of its metric).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeadLetterKind {
    /// Not a valid detection (not UTF-8, not JSON, a required field missing).
    Invalid,
    /// Larger than `[kafka] max_detection_bytes`.
    Oversized,
    /// A host id the API would refuse too.
    BadHostId,
    /// Valid, but handling it failed.
    Failed,
}

impl DeadLetterKind {
    pub fn name(self) -> &'static str {
        match self {
            DeadLetterKind::Invalid => "invalid",
            DeadLetterKind::Oversized => "oversized",
            DeadLetterKind::BadHostId => "bad_host_id",
            DeadLetterKind::Failed => "failed",
        }
    }
}

/// What the loop is told about an entry the broker can never take.
#[derive(Debug)]
pub struct Parked {
    pub host: String,
    /// The parked command's generation (to tell whether it is still the host's current one).
    pub generation: Option<u64>,
    pub command_id: Option<String>,
    pub reason: String,
}

/// The outcome of putting a command in the outbox.
#[derive(Debug)]
pub enum Enqueued {
    /// In the outbox; goes out once durable.
    Queued { command_id: String },
    /// Sealed, it would be larger than the broker takes: kept out of the outbox.
    TooLarge { command_id: String, reason: String },
}

/// The loop's side of the outbox: puts commands (unsigned) and dead letters in sled, and tells
/// the sender how far the outbox is durable.
pub struct Outbox {
    store: Store,
    ttl_ms: i64,
    max_message_bytes: usize,
    /// The key after the newest entry appended, and after the newest known to be durable: the
    /// sender sends entries with keys below the durable one.
    appended: u64,
    durable: u64,
    publish: watch::Sender<u64>,
    /// The "produce command" span of each traced command, for the sender to carry and end.
    spans: mpsc::UnboundedSender<(u64, TraceContext)>,
    metrics: Arc<Metrics>,
}

/// How the sender is set up (what the loop does not need).
pub struct SenderConfig {
    pub producer: FutureProducer,
    pub commands_topic: String,
    pub dead_letter_topic: String,
    pub failpoint: Option<String>,
    /// Once fenced by a twin, nothing more is sent.
    pub fence: super::lease::Fence,
}

impl Outbox {
    /// The outbox over `store`, and its sender, ready to be spawned. Every entry already in the
    /// store is durable (it was read back from disk), so the sender may send it at once.
    pub fn new(
        store: Store,
        signing_key: cordon_wire::SigningKey,
        ttl_seconds: u64,
        max_message_bytes: usize,
        metrics: Arc<Metrics>,
        sender: SenderConfig,
        parked: mpsc::Sender<Parked>,
    ) -> Result<(Outbox, Sender)> {
        let durable = store.outbox_end()?;
        let (publish, watermark) = watch::channel(durable);
        let (spans, spans_rx) = mpsc::unbounded_channel();
        let sender = Sender {
            store: store.clone(),
            signing_key,
            config: sender,
            watermark,
            spans: spans_rx,
            in_flight: HashMap::new(),
            parked,
            metrics: Arc::clone(&metrics),
            errors: SendErrors::default(),
            max_message_bytes,
        };
        let outbox = Outbox {
            store,
            ttl_ms: i64::try_from(ttl_seconds).unwrap_or(600).saturating_mul(1_000),
            max_message_bytes,
            appended: durable,
            durable,
            publish,
            spans,
            metrics,
        };
        Ok((outbox, sender))
    }

    /// Puts the command that `record`'s last step issued in the outbox (not yet durable; the
    /// sender signs it). `produce`: the command's span, if traced; ended when the broker has it.
    pub fn command(
        &mut self,
        record: &HostRecord,
        action: cordon_wire::Action,
        now: i64,
        produce: Option<TraceContext>,
    ) -> Result<Enqueued> {
        let command = cordon_wire::Command {
            version: cordon_wire::WIRE_VERSION,
            command_id: record.command_id(),
            host_id: record.host.clone(),
            generation: record.generation,
            issued_at_ms: now,
            expires_at_ms: now.saturating_add(self.ttl_ms),
            action,
        };
        let text = serde_json::to_string(&command).context("cannot serialize a command")?;
        let sealed_len = cordon_wire::sealed_len(&text);
        self.metrics.commands_issued.add(1);
        let limit = self.max_message_bytes.saturating_sub(FRAMING_BYTES);
        if sealed_len > limit {
            self.metrics.commands_parked.add("too_large", 1);
            if let Some(produce) = produce {
                produce.span().set_status(SpanStatus::error("too large to send"));
                produce.span().end();
            }
            return Ok(Enqueued::TooLarge {
                command_id: command.command_id,
                reason: format!(
                    "the signed command is {sealed_len} bytes, more than the {limit} a message may carry ([kafka] \
                     max_message_bytes {} less {FRAMING_BYTES} for framing); it was not sent",
                    self.max_message_bytes
                ),
            });
        }
        let key = self.store.enqueue(&OutboxEntry { host: record.host.clone(), command: Outgoing::Unsigned(text) })?;
        self.appended = self.appended.max(key.saturating_add(1));
        if let Some(produce) = produce {
            // The sender is gone only when the service stops; the span then ends unsent.
            let _ = self.spans.send((key, produce));
        }
        Ok(Enqueued::Queued { command_id: command.command_id })
    }

    /// Puts a dead letter for `message` in the outbox (not yet durable): the reason, where the
    /// message was, its size and hash, and as much of its bytes as fits one message.
    pub fn dead_letter(&mut self, message: &OwnedMessage, kind: DeadLetterKind, reason: &str) -> Result<()> {
        let record = dead_letter_record(message, kind, reason, self.max_message_bytes);
        let original_key = message.key().unwrap_or_default();
        let key = if original_key.len() > MAX_KEY_BYTES {
            format!("sha256:{}", hex(&sha2::Sha256::digest(original_key))).into_bytes()
        } else {
            original_key.to_vec()
        };
        let id = self.store.enqueue_dead_letter(&DeadLetterEntry { key, record })?;
        self.appended = self.appended.max(id.saturating_add(1));
        self.metrics.dead_letters.add(kind.name(), 1);
        Ok(())
    }

    /// Everything appended so far is durable (the store was just flushed).
    pub fn made_durable(&mut self) {
        self.durable = self.appended;
    }

    /// The store was opened again after a failed write: what it holds is durable, and what
    /// was appended since the last flush is gone.
    pub fn reopened(&mut self) -> Result<()> {
        let end = self.store.outbox_end()?;
        self.appended = end.max(self.durable);
        self.durable = self.appended;
        Ok(())
    }

    /// Lets the sender send what is durable.
    pub fn send(&self) {
        let durable = self.durable;
        self.publish.send_if_modified(|watermark| {
            let newer = *watermark < durable;
            *watermark = durable.max(*watermark);
            newer
        });
    }
}

impl Outgoing {
    /// The envelope as it goes on the wire: signed now, or as an earlier version sealed it.
    fn sealed(&self, key: &cordon_wire::SigningKey) -> Cow<'_, [u8]> {
        match self {
            Outgoing::Unsigned(text) => Cow::Owned(cordon_wire::seal_text(text.clone(), key)),
            Outgoing::Sealed(envelope) => Cow::Borrowed(envelope),
        }
    }

    /// How many bytes go on the wire, without signing.
    fn sealed_len(&self) -> usize {
        match self {
            Outgoing::Unsigned(text) => cordon_wire::sealed_len(text),
            Outgoing::Sealed(envelope) => envelope.len(),
        }
    }

    /// The command, read back (`None` if a sealed one does not parse).
    fn command(&self) -> Option<cordon_wire::Command> {
        match self {
            Outgoing::Unsigned(text) => serde_json::from_str(text).ok(),
            Outgoing::Sealed(envelope) => serde_json::from_slice::<cordon_wire::Envelope>(envelope)
                .ok()
                .and_then(|envelope| serde_json::from_str(&envelope.payload).ok()),
        }
    }
}

/// The dead-letter record: JSON with the reason, the message's place, its size and SHA-256, and
/// its bytes in base64, cut to fit `max_message_bytes` (`original_truncated` says so).
pub fn dead_letter_record(
    message: &OwnedMessage,
    kind: DeadLetterKind,
    reason: &str,
    max_message_bytes: usize,
) -> Vec<u8> {
    let original = message.payload().unwrap_or_default();
    // Room for the original: the limit less framing and the other fields (at most ~3 KiB).
    let room = max_message_bytes.saturating_sub(FRAMING_BYTES + MAX_REASON_BYTES + 1_024);
    let kept = original.len().min(room / 4 * 3);
    let record = serde_json::json!({
        "reason": cut(reason, MAX_REASON_BYTES),
        "kind": kind.name(),
        "topic": message.topic(),
        "partition": message.partition(),
        "offset": message.offset(),
        "original_size": original.len(),
        "original_sha256": hex(&sha2::Sha256::digest(original)),
        "original_truncated": kept < original.len(),
        "original_base64": base64::engine::general_purpose::STANDARD.encode(&original[..kept]),
    });
    serde_json::to_vec(&record).unwrap_or_default()
}

/// `text` cut to at most `limit` bytes, on a character boundary, marked when cut.
fn cut(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_owned();
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes in all)", &text[..end], text.len())
}

/// Lower-case hexadecimal.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut text, b| {
        let _ = write!(text, "{b:02x}");
        text
    })
}

/// A send error the broker will give again however often it is tried.
fn permanent(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidRecord
        )
    )
}

/// The sender task: sends the durable outbox, off the loop.
pub struct Sender {
    store: Store,
    /// Commands are signed here, as they go out.
    signing_key: cordon_wire::SigningKey,
    config: SenderConfig,
    watermark: watch::Receiver<u64>,
    spans: mpsc::UnboundedReceiver<(u64, TraceContext)>,
    in_flight: HashMap<u64, TraceContext>,
    parked: mpsc::Sender<Parked>,
    metrics: Arc<Metrics>,
    errors: SendErrors,
    max_message_bytes: usize,
}

/// What one round of sending left behind.
#[derive(PartialEq, Eq)]
enum Round {
    /// Everything durable was sent or parked.
    Done,
    /// Some entries failed for now: try again soon.
    Retry,
}

/// An entry handed to the producer, waiting for its acknowledgement.
enum Pending<'a> {
    Command { key: u64, entry: &'a OutboxEntry },
    DeadLetter { key: u64, entry: &'a DeadLetterEntry },
}

impl Sender {
    /// Sends until the outbox's loop side is gone (the service stops).
    pub async fn run(mut self) {
        loop {
            let round = self.round().await;
            let changed = if round == Round::Retry {
                tokio::select! {
                    changed = self.watermark.changed() => changed,
                    () = tokio::time::sleep(RETRY_EVERY) => Ok(()),
                }
            } else {
                self.watermark.changed().await
            };
            if changed.is_err() {
                return;
            }
        }
    }

    async fn round(&mut self) -> Round {
        if self.store.fault().is_some() || self.config.fence.reason().is_some() {
            // The store cannot be written (the loop reopens it; the entries wait), or a twin
            // took over (its own outbox sends).
            return Round::Retry;
        }
        let up_to = *self.watermark.borrow_and_update();
        while let Ok((key, span)) = self.spans.try_recv() {
            self.in_flight.insert(key, span);
        }
        let (commands, dead_letters) = match (self.store.outbox_up_to(up_to), self.store.dead_letters_up_to(up_to)) {
            (Ok(commands), Ok(dead_letters)) => (commands, dead_letters),
            (Err(error), _) | (_, Err(error)) => {
                OutboxNotUpdated { doing: "reading the outbox", error: &error }.emit();
                return Round::Retry;
            }
        };
        self.metrics.outbox_waiting.set(i64::try_from(commands.len() + dead_letters.len()).unwrap_or(i64::MAX));
        if commands.is_empty() && dead_letters.is_empty() {
            return Round::Done;
        }
        if self.config.failpoint.as_deref() == Some("before-send") {
            FailpointAborting("before-send").emit();
            std::process::abort();
        }
        let mut round = Round::Done;
        // A host whose command could not be handed over this round: its later commands wait, so
        // that one host's commands reach its partition in order.
        let mut held: HashSet<&str> = HashSet::new();
        let mut deliveries = Vec::with_capacity(commands.len() + dead_letters.len());
        for (key, entry) in &commands {
            if held.contains(entry.host.as_str()) {
                continue;
            }
            // Signed here, only when it goes (the producer copies it).
            let envelope = entry.command.sealed(&self.signing_key);
            let trace = self.in_flight.get(key);
            let mut record = FutureRecord::to(&self.config.commands_topic).key(&entry.host).payload(&*envelope);
            if let Some(trace) = trace {
                record = record.headers(cordon_telemetry::propagation::kafka_headers(trace));
            }
            match self.config.producer.send_result(record) {
                Ok(delivery) => deliveries.push((Pending::Command { key: *key, entry }, delivery)),
                Err((error, _)) if permanent(&error) => self.park_command(*key, entry, &error).await,
                Err((error, _)) => {
                    self.errors.say(&format!("sending a command to {}", entry.host), &error);
                    held.insert(&entry.host);
                    round = Round::Retry;
                }
            }
        }
        for (key, entry) in &dead_letters {
            let record = FutureRecord::to(&self.config.dead_letter_topic).key(&entry.key).payload(&entry.record);
            match self.config.producer.send_result(record) {
                Ok(delivery) => deliveries.push((Pending::DeadLetter { key: *key, entry }, delivery)),
                Err((error, _)) if permanent(&error) => self.shrink_dead_letter(*key, entry, &error),
                Err((error, _)) => {
                    self.errors.say("writing to the dead-letter topic", &error);
                    round = Round::Retry;
                    break;
                }
            }
        }
        let (removed, settled) = self.settle(deliveries).await;
        if settled == Round::Retry {
            round = Round::Retry;
        }
        if removed > 0 {
            if round == Round::Done {
                self.errors.recovered();
            }
            if let Err(error) = self.store.flush() {
                OutboxNotUpdated { doing: "flushing the sent entries' removal", error: &error }.emit();
            }
        }
        round
    }

    /// Waits for the broker's answer to each entry handed over: removes what it acknowledged,
    /// parks what it refuses for good. Returns how many were removed.
    async fn settle(&mut self, deliveries: Vec<(Pending<'_>, rdkafka::producer::DeliveryFuture)>) -> (usize, Round) {
        let mut round = Round::Done;
        let mut removed = 0;
        for (pending, delivery) in deliveries {
            let error = match delivery.await {
                Ok(Ok(_)) => None,
                Ok(Err((error, _))) => Some(error),
                Err(_) => Some(KafkaError::Canceled),
            };
            match (pending, error) {
                (Pending::Command { key, .. }, None) => {
                    if let Err(error) = self.store.sent(key) {
                        OutboxNotUpdated { doing: "removing a sent command", error: &error }.emit();
                    }
                    if let Some(trace) = self.in_flight.remove(&key) {
                        trace.span().end();
                    }
                    self.metrics.commands_sent.add(1);
                    removed += 1;
                }
                (Pending::DeadLetter { key, .. }, None) => {
                    if let Err(error) = self.store.dead_letter_sent(key) {
                        OutboxNotUpdated { doing: "removing a sent dead letter", error: &error }.emit();
                    }
                    removed += 1;
                }
                (Pending::Command { key, entry }, Some(error)) if permanent(&error) => {
                    self.park_command(key, entry, &error).await;
                }
                (Pending::DeadLetter { key, entry }, Some(error)) if permanent(&error) => {
                    self.shrink_dead_letter(key, entry, &error);
                }
                (Pending::Command { key, entry }, Some(error)) => {
                    self.errors.say(&format!("sending a command to {}", entry.host), &error);
                    if let Some(trace) = self.in_flight.get(&key) {
                        trace.span().add_event(
                            "send failed; the command stays in the outbox",
                            vec![KeyValue::new("error", error.to_string())],
                        );
                    }
                    round = Round::Retry;
                }
                (Pending::DeadLetter { .. }, Some(error)) => {
                    self.errors.say("writing to the dead-letter topic", &error);
                    round = Round::Retry;
                }
            }
        }
        (removed, round)
    }

    /// Moves a command the broker will never take out of the outbox and tells the loop.
    async fn park_command(&mut self, key: u64, entry: &OutboxEntry, error: &KafkaError) {
        let command = entry.command.command();
        let size = entry.command.sealed_len();
        let reason = format!(
            "the broker refuses the command for good ({error}; {size} bytes, [kafka] max_message_bytes {}); it is \
             parked, not sent",
            self.max_message_bytes
        );
        let parked = self.store.park(key, &reason);
        CommandRefusedForGood { host: &entry.host, reason: &reason, not_parked: parked.as_ref().err() }
            .emit(&self.metrics);
        if parked.is_err() {
            return;
        }
        if let Some(trace) = self.in_flight.remove(&key) {
            trace.span().set_status(SpanStatus::error(reason.clone()));
            trace.span().end();
        }
        let parked = Parked {
            host: entry.host.clone(),
            generation: command.as_ref().map(|c| c.generation),
            command_id: command.map(|c| c.command_id),
            reason,
        };
        // The loop is gone only when the service stops; the entry stays parked either way.
        let _ = self.parked.send(parked).await;
    }

    /// A dead letter the broker refuses as too large (its limit is below ours): kept without the
    /// original bytes (their size and hash stay); parked if even that is refused.
    fn shrink_dead_letter(&mut self, key: u64, entry: &DeadLetterEntry, error: &KafkaError) {
        let mut record: serde_json::Value = serde_json::from_slice(&entry.record).unwrap_or_default();
        let shrunk = record.get("original_base64").is_some_and(|b| b.as_str() != Some(""));
        if shrunk {
            record["original_base64"] = serde_json::Value::String(String::new());
            record["original_truncated"] = serde_json::Value::Bool(true);
            let smaller = DeadLetterEntry { key: entry.key.clone(), record: serde_json::to_vec(&record).unwrap_or_default() };
            match self.store.replace_dead_letter(key, &smaller) {
                Ok(()) => DeadLetterRefused::Shrunk { error }.emit(),
                Err(error) => OutboxNotUpdated { doing: "shrinking a dead letter", error: &error }.emit(),
            }
        } else {
            DeadLetterRefused::Parked { error }.emit();
            if let Err(error) = self.store.park_dead_letter(key, &error.to_string()) {
                OutboxNotUpdated { doing: "parking a dead letter", error: &error }.emit();
            }
        }
    }
}

/// Send errors, said once and then at most every 30 s (a broker that is down fails every send),
/// with what they mean.
struct SendErrors(cordon_telemetry::logs::Throttled);

impl Default for SendErrors {
    fn default() -> Self {
        SendErrors(cordon_telemetry::logs::Throttled::new(Duration::from_secs(30)))
    }
}

impl SendErrors {
    fn say(&mut self, what: &str, error: &KafkaError) {
        let Some(repeats) = self.0.failure("errors") else { return };
        SendFailed { what, error, retry_every: RETRY_EVERY, repeats: &repeats }.emit();
    }

    fn recovered(&mut self) {
        if self.0.success() {
            KafkaWorksAgain::Sending.emit();
        }
    }
}

/// How the producer must be set up for the outbox: idempotent (one host's commands in order,
/// no duplicates from retries), bounded waits, and the message limit the outbox checks against.
pub fn producer(brokers: &str, max_message_bytes: usize, security: &[(String, String)]) -> Result<FutureProducer> {
    let mut config = rdkafka::ClientConfig::new();
    for (key, value) in security {
        config.set(key, value);
    }
    config
        .set("bootstrap.servers", brokers)
        .set("partitioner", "murmur2_random")
        .set("enable.idempotence", "true")
        // Commands go out at once: a flood still batches, behind the requests in flight.
        .set("linger.ms", "0")
        .set("message.max.bytes", max_message_bytes.to_string())
        .set("message.timeout.ms", SEND_TIMEOUT.as_millis().to_string())
        .create()
        .context("cannot create the Kafka producer")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Timestamp;

    #[test]
    fn a_queued_command_goes_out_signed_and_one_sealed_by_an_earlier_version_as_it_was() {
        let key = cordon_wire::generate_signing_key();
        let command = cordon_wire::Command {
            version: cordon_wire::WIRE_VERSION,
            command_id: "web-01-3".into(),
            host_id: "web-01".into(),
            generation: 3,
            issued_at_ms: 1,
            expires_at_ms: 600_001,
            action: cordon_wire::Action::Release { reason: "operator o: done".into() },
        };
        let unsigned = Outgoing::Unsigned(serde_json::to_string(&command).unwrap());
        let envelope = unsigned.sealed(&key);
        assert_eq!(cordon_wire::open(&envelope, &key.verifying_key()), Ok(command.clone()));
        let Outgoing::Unsigned(text) = &unsigned else { unreachable!() };
        assert_eq!(envelope.len(), cordon_wire::sealed_len(text), "the size checked when it was queued");
        assert_eq!((unsigned.sealed_len(), unsigned.command()), (envelope.len(), Some(command.clone())));
        // Sealed with the key of the time; sent as it is, whatever the key now.
        let earlier = Outgoing::Sealed(cordon_wire::seal(&command, &cordon_wire::generate_signing_key()));
        let Outgoing::Sealed(bytes) = &earlier else { unreachable!() };
        assert_eq!(&*earlier.sealed(&key), bytes.as_slice());
        assert_eq!((earlier.sealed_len(), earlier.command()), (bytes.len(), Some(command)));
    }

    fn message(payload: Vec<u8>) -> OwnedMessage {
        OwnedMessage::new(Some(payload), Some(b"k".to_vec()), "edr.detections".into(), Timestamp::NotAvailable, 2, 77, None)
    }

    #[test]
    fn a_dead_letter_fits_the_limit_and_keeps_size_hash_and_a_prefix() {
        let original: Vec<u8> = (0..800_000u32).map(|i| b'a' + u8::try_from(i % 26).unwrap()).collect();
        let bytes = dead_letter_record(&message(original.clone()), DeadLetterKind::Invalid, "bad", 1_000_000);
        assert!(bytes.len() <= 1_000_000 - FRAMING_BYTES, "{} bytes", bytes.len());
        let record: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(record["original_size"], 800_000);
        assert_eq!(record["original_truncated"], true);
        assert_eq!(record["original_sha256"], hex(&sha2::Sha256::digest(&original)));
        let kept = base64::engine::general_purpose::STANDARD.decode(record["original_base64"].as_str().unwrap()).unwrap();
        assert!(kept.len() > 600_000 && original.starts_with(&kept), "{} bytes kept", kept.len());
        assert_eq!((record["partition"].as_i64(), record["offset"].as_i64()), (Some(2), Some(77)));
    }

    #[test]
    fn a_small_dead_letter_keeps_everything_and_a_long_reason_is_cut() {
        let reason = "é".repeat(5_000);
        let bytes = dead_letter_record(&message(b"{}".to_vec()), DeadLetterKind::Failed, &reason, 1_000_000);
        let record: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!((record["original_truncated"].as_bool(), record["original_base64"].as_str()), (Some(false), Some("e30=")));
        let said = record["reason"].as_str().unwrap();
        assert!(said.len() < MAX_REASON_BYTES + 64 && said.ends_with("(10000 bytes in all)"), "{said}");
        assert_eq!(record["kind"], "failed");
    }
}
