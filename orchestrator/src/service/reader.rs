//! The reader thread: consumes the detections and status topics (partitions assigned by the
//! service itself), has each batch's detections parsed through the rule set's projection off the
//! loop by parser threads, and hands the batches to the loop in order; the loop alone commits
//! offsets.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{ClientConfig, ClientContext, TopicPartitionList};
use tokio::sync::mpsc;

use super::config::{self, ServiceConfig};
use super::events::{
    ConsumerCloseHung, KafkaReadFailed, KafkaWorksAgain, ParserStopped, PartitionsAssigned, PartitionsNotAssigned,
    PartitionsNotListedYet, TopicMissing,
};
use super::lease;
use super::observe::Metrics;
use super::outbox::DeadLetterKind;

/// The consumer's context: reads librdkafka's statistics into the consumer-lag and brokers-up
/// metrics, and says what the client logs.
pub(super) struct GroupLog {
    metrics: Arc<Metrics>,
    detections_topic: String,
    client_log: cordon_telemetry::logs::KafkaClientLog,
}

impl ClientContext for GroupLog {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        self.client_log.say(level as i32, facility, message);
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        let up = statistics.brokers.values().filter(|b| b.nodeid >= 0 && b.state == "UP").count();
        self.metrics.kafka_brokers_up.set(i64::try_from(up).unwrap_or(i64::MAX));
        if let Some(topic) = statistics.topics.get(&self.detections_topic) {
            // -1: not known yet (no offset or no watermark for the partition).
            let lag: i64 =
                topic.partitions.values().filter(|p| p.partition >= 0).map(|p| p.consumer_lag.max(0)).sum();
            self.metrics.consumer_lag.set(lag);
        }
    }
}

impl ConsumerContext for GroupLog {}

pub(super) type DetectionConsumer = BaseConsumer<GroupLog>;

/// At most this many Kafka messages are handled per durable write.
pub(super) const MAX_BATCH: usize = 5_000;

/// The projection the reader thread parses detections through; the loop replaces it when the
/// rules change.
pub(super) type SharedProjection = Arc<std::sync::Mutex<Arc<rules::Projection>>>;

/// The consumer of detections and agents' reports. It joins no group: the reader assigns it
/// every partition of both topics itself ([`Assignment`]), and commits offsets under the group
/// id. One service per `instance_id` acts (the lease), so the group's balancing is not needed,
/// and without it a restart reads at once: no rebalance, no wait for a crashed predecessor's
/// session to expire, and none of the group protocol's faults (on tansu 0.6, static membership
/// could lose the group for good after a crash loop, and dynamic membership gave a restart an
/// empty assignment until its dead predecessor expired; both found by the chaos soak, shown by
/// `a_service_killed_twenty_times_at_random_moments_takes_its_partitions_back`).
pub(super) fn detection_consumer(
    kafka: &config::KafkaSection,
    brokers: &str,
    metrics: Arc<Metrics>,
) -> Result<DetectionConsumer> {
    let mut client = ClientConfig::new();
    for (key, value) in kafka.client_settings()? {
        client.set(key, value);
    }
    let consumer: DetectionConsumer = client
        .set("bootstrap.servers", brokers)
        .set("group.id", &kafka.group_id)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", kafka.fetch_wait_ms.to_string())
        // When the prefetched messages pass librdkafka's threshold (`queued.min.messages`), it
        // postpones the next fetch by this much (1 s by default): a service that reads a little
        // slower than the broker delivers drained the queue and sat idle ~400 ms of every 2 s.
        .set("fetch.queue.backoff.ms", kafka.fetch_wait_ms.to_string())
        // Consumer lag and broker connections for the metrics and /readyz.
        .set("statistics.interval.ms", "2000")
        .create_with_context(GroupLog {
            metrics,
            detections_topic: kafka.detections_topic.clone(),
            client_log: cordon_telemetry::logs::KafkaClientLog::default(),
        })
        .context("cannot create the Kafka consumer")?;
    Ok(consumer)
}

/// Where the loop puts the batches it is done with: the parser thread that parsed a batch frees
/// it, where its memory was allocated. Freeing a batch's parsed events took a third of the loop's
/// time, most of it mimalloc handing memory back across threads.
pub(super) type HandledBatches = std::sync::mpsc::Sender<ConsumedBatch>;

/// Starts the reader thread (see [`read_batches`]).
pub(super) fn start_reader(
    consumer: &Arc<DetectionConsumer>,
    assignment: Assignment,
    input: &InputRules,
    brokers: &str,
    batches: mpsc::Sender<ConsumedBatch>,
    projection: &SharedProjection,
) -> Result<(std::thread::JoinHandle<()>, HandledBatches)> {
    let (consumer, brokers, projection) = (Arc::clone(consumer), brokers.to_owned(), Arc::clone(projection));
    let (handled, handled_batches) = std::sync::mpsc::channel();
    let parsers = Parsers::start(input).context("cannot start the parser threads")?;
    let reader = std::thread::Builder::new()
        .name("cordon-reader".into())
        .spawn(move || {
            let channels = Channels { batches, handled: handled_batches };
            read_batches(&consumer, assignment, parsers, &brokers, &channels, &projection);
        })
        .context("cannot start the Kafka reader thread")?;
    Ok((reader, handled))
}

/// The reader's ends of its channels with the loop.
struct Channels {
    /// Batches to handle, in order.
    batches: mpsc::Sender<ConsumedBatch>,
    /// Batches handled, to free.
    handled: std::sync::mpsc::Receiver<ConsumedBatch>,
}

/// What the reader needs to tell detections from reports, read each topic's alert format and
/// refuse what is too large.
#[derive(Clone)]
pub(super) struct InputRules {
    status_topic: String,
    /// The alert format of each alert topic (`[kafka] detections_topic` and `[[inputs]]`): a
    /// handful, looked up for every message (no hashing of its topic's name).
    formats: BTreeMap<String, rules::Format>,
    /// A detection larger than this is not parsed.
    max_detection_bytes: usize,
}

impl InputRules {
    pub(super) fn of(config: &ServiceConfig) -> InputRules {
        InputRules {
            status_topic: config.kafka.status_topic.clone(),
            formats: config.alert_topics().into_iter().collect(),
            max_detection_bytes: config.kafka.max_detection_bytes,
        }
    }
}

/// Stops the reader (within one poll once nobody takes its batches), then closes the consumer:
/// it must not outlive the broker it reads (the embedded one goes when `serve` returns).
pub(super) async fn stop_reading(
    batches: mpsc::Receiver<ConsumedBatch>,
    reader: std::thread::JoinHandle<()>,
    consumer: Arc<DetectionConsumer>,
) {
    drop(batches);
    let _ = tokio::task::spawn_blocking(move || reader.join()).await;
    close_consumer(consumer);
}

/// The partitions the reader consumes: every partition of the detections and status topics,
/// assigned by the service itself (see [`detection_consumer`]), from the offsets committed
/// under the group id. Looked up at start (again every second until the broker answers) and
/// every 30 s after, so partitions added to a topic are read without a restart.
pub(super) struct Assignment {
    topics: Vec<String>,
    assigned: std::collections::BTreeSet<(String, i32)>,
    next_check: std::time::Instant,
    missing_topic: cordon_telemetry::logs::Throttled,
    /// A fenced service takes no partition, not even one added later.
    fence: lease::Fence,
}

impl Assignment {
    pub(super) fn new(topics: &[String], fence: lease::Fence) -> Assignment {
        Assignment {
            topics: topics.to_vec(),
            assigned: std::collections::BTreeSet::new(),
            next_check: std::time::Instant::now(),
            missing_topic: cordon_telemetry::logs::Throttled::new(Duration::from_mins(1)),
            fence,
        }
    }

    /// Assigns the partitions not assigned yet, when a check is due.
    fn refresh(&mut self, consumer: &DetectionConsumer) {
        if std::time::Instant::now() < self.next_check || self.fence.reason().is_some() {
            return;
        }
        let settled = match self.new_partitions(consumer) {
            Ok(new) if new.count() == 0 => true,
            Ok(new) => match consumer.incremental_assign(&new) {
                Ok(()) => {
                    for element in new.elements() {
                        self.assigned.insert((element.topic().to_owned(), element.partition()));
                    }
                    let partitions: Vec<String> = self.assigned.iter().map(|(t, p)| format!("{t}/{p}")).collect();
                    PartitionsAssigned { partitions: &partitions }.emit(&consumer.context().metrics);
                    true
                }
                Err(error) => {
                    PartitionsNotAssigned { partitions: &new, error: &error }.emit();
                    false
                }
            },
            // An unreachable broker is said by the reader's poll; a missing topic here.
            Err(error) if error.downcast_ref::<rdkafka::error::KafkaError>().is_some() => {
                PartitionsNotListedYet { topics: &self.topics, error: &error }.emit();
                false
            }
            Err(error) => {
                if let Some(repeats) = self.missing_topic.failure("attempts") {
                    let what = if self.assigned.is_empty() {
                        "nothing is consumed until it exists"
                    } else {
                        "still consuming what was assigned"
                    };
                    TopicMissing { error: &error, what, repeats: &repeats }.emit();
                }
                false
            }
        };
        self.next_check = std::time::Instant::now() + Duration::from_secs(if settled { 30 } else { 1 });
    }

    /// The partitions the broker lists for the topics that are not assigned yet, from their
    /// committed offsets.
    fn new_partitions(&self, consumer: &DetectionConsumer) -> Result<TopicPartitionList> {
        let mut new = TopicPartitionList::new();
        for topic in &self.topics {
            // Short: the reader polls (and says why the broker does not answer) in between.
            let metadata = consumer.fetch_metadata(Some(topic), Duration::from_millis(500))?;
            let listed = metadata.topics().iter().find(|t| t.name() == topic);
            let Some(listed) = listed.filter(|t| t.error().is_none() && !t.partitions().is_empty()) else {
                bail!("the broker does not list the topic {topic} (create it with `cordon topics`)");
            };
            for partition in listed.partitions() {
                if !self.assigned.contains(&(topic.clone(), partition.id())) {
                    new.add_partition_offset(topic, partition.id(), rdkafka::Offset::Stored)?;
                }
            }
        }
        Ok(new)
    }
}

/// Closes the consumer on a thread of its own and waits at most 5 s: librdkafka can hang in a
/// close (librdkafka issue 4041; seen here when the service was stopped while it was joining a
/// group), and a stop must not hang. Exiting without the close loses nothing: offsets are
/// committed only after their state is durable.
pub(super) fn close_consumer(consumer: Arc<DetectionConsumer>) {
    let (closed, done) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new().name("cordon-close".into()).spawn(move || {
        drop(consumer);
        let _ = closed.send(());
    });
    let waited = Duration::from_secs(5);
    if spawned.is_ok() && done.recv_timeout(waited).is_err() {
        ConsumerCloseHung { waited }.emit();
    }
}

/// A detection as the reader parsed it, or why it is not one.
pub(super) type Parsed = Result<rules::Event, (DeadLetterKind, String)>;

/// Messages consumed together, with their detections already parsed (`None` for agents'
/// reports) by a parser thread, so that parsing overlaps the loop's work.
pub(super) struct ConsumedBatch {
    pub messages: Vec<OwnedMessage>,
    pub events: Vec<Option<Parsed>>,
    /// The parser thread that parsed it, and frees it once it is handled.
    parser: usize,
    /// The projection the detections were parsed through (the rule set's when the batch was
    /// read; the loop parses again if the rules changed since: [`ConsumedBatch::parse_again`]).
    pub projection: Arc<rules::Projection>,
    /// When the first message of the batch arrived: where a detection's trace starts.
    pub received_at: SystemTime,
    /// Events parsed through an earlier projection, kept for the parser thread to free with the
    /// batch (where they were allocated).
    superseded: Vec<Vec<Option<Parsed>>>,
}

impl ConsumedBatch {
    /// Parses the detections again through `projection` (the rules changed since the batch was
    /// read, and the new rules may look at fields the old projection left out).
    pub(super) fn parse_again(&mut self, input: &InputRules, projection: &Arc<rules::Projection>) {
        let events = parse_batch(&self.messages, input, projection);
        self.superseded.push(std::mem::replace(&mut self.events, events));
        self.projection = Arc::clone(projection);
    }
}

/// The reader thread: consumes batches of up to [`MAX_BATCH`] messages, has their detections
/// parsed by the parser threads (one batch each at a time, in turn) and hands the batches to the
/// loop in the order they were read, until the loop goes away. Only the loop commits offsets,
/// after the batch's changes are durable.
fn read_batches(
    consumer: &DetectionConsumer,
    mut assignment: Assignment,
    mut parsers: Parsers,
    brokers: &str,
    channels: &Channels,
    projection: &SharedProjection,
) {
    let mut errors = ReadErrors::new(brokers);
    // Batches being parsed, oldest first: each goes to the loop once it and those before it are.
    let mut parsing: VecDeque<std::sync::mpsc::Receiver<ConsumedBatch>> = VecDeque::new();
    let pass_on = |parsed: std::sync::mpsc::Receiver<ConsumedBatch>| {
        if let Ok(batch) = parsed.recv() {
            channels.batches.blocking_send(batch).is_ok()
        } else {
            ParserStopped.emit();
            false
        }
    };
    while !channels.batches.is_closed() {
        while let Ok(handled) = channels.handled.try_recv() {
            parsers.free(handled);
        }
        assignment.refresh(consumer);
        let mut messages = Vec::new();
        // While a batch is being parsed, nothing new is waited for: it goes on as soon as it is.
        let wait = if parsing.is_empty() { Duration::from_millis(100) } else { Duration::ZERO };
        let first = consumer.poll(wait);
        if let Some(Ok(message)) = first {
            messages.push(message.detach());
        } else {
            if let Some(Err(error)) = first {
                errors.say(&error);
            }
            if let Some(parsed) = parsing.pop_front() {
                if !pass_on(parsed) {
                    return;
                }
            }
            continue;
        }
        let received_at = SystemTime::now();
        errors.recovered();
        while messages.len() < MAX_BATCH {
            match consumer.poll(Duration::ZERO) {
                Some(Ok(message)) => messages.push(message.detach()),
                Some(Err(error)) => {
                    errors.say(&error);
                    break;
                }
                None => break,
            }
        }
        let projection = Arc::clone(&projection.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        parsing.push_back(parsers.parse(messages, projection, received_at));
        while parsing.len() >= parsers.count() {
            if !parsing.pop_front().is_some_and(pass_on) {
                return;
            }
        }
    }
}

/// The parser threads, one per core: each parses the detections of a batch at a time and frees
/// the batches it parsed once the loop is done with them (memory goes back to the thread that
/// allocated it, the cheap way in mimalloc). Parsing is most of the reading: one thread for it
/// capped the service at ~50,000 events/s with Sigma rules.
struct Parsers {
    threads: Vec<std::sync::mpsc::Sender<ParserJob>>,
    /// The parser whose turn is next.
    next: usize,
}

enum ParserJob {
    Parse {
        messages: Vec<OwnedMessage>,
        projection: Arc<rules::Projection>,
        received_at: SystemTime,
        parsed: std::sync::mpsc::SyncSender<ConsumedBatch>,
    },
    Free(ConsumedBatch),
}

impl Parsers {
    fn start(input: &InputRules) -> std::io::Result<Parsers> {
        let count = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let mut threads = Vec::with_capacity(count);
        for parser in 0..count {
            let (jobs, work) = std::sync::mpsc::channel();
            let input = input.clone();
            std::thread::Builder::new().name(format!("cordon-parse-{parser}")).spawn(move || {
                for job in work {
                    match job {
                        ParserJob::Parse { messages, projection, received_at, parsed } => {
                            let events = parse_batch(&messages, &input, &projection);
                            let batch = ConsumedBatch {
                                messages,
                                events,
                                parser,
                                projection,
                                received_at,
                                superseded: Vec::new(),
                            };
                            // The reader gone: the batch is freed here.
                            let _ = parsed.send(batch);
                        }
                        ParserJob::Free(batch) => drop(batch),
                    }
                }
            })?;
            threads.push(jobs);
        }
        Ok(Parsers { threads, next: 0 })
    }

    fn count(&self) -> usize {
        self.threads.len()
    }

    /// Has the next parser in turn parse `messages`; the batch comes out of the receiver.
    fn parse(
        &mut self,
        messages: Vec<OwnedMessage>,
        projection: Arc<rules::Projection>,
        received_at: SystemTime,
    ) -> std::sync::mpsc::Receiver<ConsumedBatch> {
        let (parsed, batch) = std::sync::mpsc::sync_channel(1);
        let parser = self.next;
        self.next = (parser + 1) % self.threads.len();
        let job = ParserJob::Parse { messages, projection, received_at, parsed };
        // A parser that stopped drops the job, and the receiver says so.
        let _ = self.threads[parser].send(job);
        batch
    }

    /// Frees a handled batch on the thread that parsed it.
    fn free(&self, batch: ConsumedBatch) {
        if let Some(thread) = self.threads.get(batch.parser) {
            let _ = thread.send(ParserJob::Free(batch));
        }
    }
}

/// Kafka read errors, said once and then at most every 30 s (librdkafka reports an unreachable
/// broker on every poll), with what they mean for the service and what to check.
struct ReadErrors<'a> {
    brokers: &'a str,
    throttled: cordon_telemetry::logs::Throttled,
}

impl<'a> ReadErrors<'a> {
    fn new(brokers: &'a str) -> ReadErrors<'a> {
        ReadErrors { brokers, throttled: cordon_telemetry::logs::Throttled::new(Duration::from_secs(30)) }
    }

    fn say(&mut self, error: &rdkafka::error::KafkaError) {
        let Some(repeats) = self.throttled.failure("errors") else { return };
        let unreachable = matches!(
            error.rdkafka_error_code(),
            Some(
                rdkafka::types::RDKafkaErrorCode::AllBrokersDown
                    | rdkafka::types::RDKafkaErrorCode::BrokerTransportFailure
            )
        );
        let tls = matches!(
            error.rdkafka_error_code(),
            Some(rdkafka::types::RDKafkaErrorCode::SSL | rdkafka::types::RDKafkaErrorCode::Authentication)
        );
        let hint = if unreachable {
            format!(
                "; cannot reach the Kafka brokers {} (check [kafka] brokers and that they listen). Retrying; \
                 deadlines and the API go on, commands wait in the outbox",
                self.brokers
            )
        } else if tls {
            format!(
                "; TLS or SASL with the Kafka brokers {} failed: check [kafka.tls] ca_file (the CA that issued the \
                 brokers' certificates), cert_file and key_file (a client certificate the brokers accept) and \
                 [kafka.sasl]. Retrying; deadlines and the API go on, commands wait in the outbox",
                self.brokers
            )
        } else {
            String::new()
        };
        KafkaReadFailed { error, hint: &hint, repeats: &repeats }.emit();
    }

    /// A message arrived: the next error is news again.
    fn recovered(&mut self) {
        if self.throttled.success() {
            KafkaWorksAgain::Reading.emit();
        }
    }
}

/// One detection, checked as the API checks its input: its size first (before any parsing), then
/// its text and fields, then its host id.
fn parse_detection(message: &OwnedMessage, input: &InputRules, projection: &rules::Projection) -> Parsed {
    let payload = message.payload().unwrap_or_default();
    if payload.len() > input.max_detection_bytes {
        return Err((
            DeadLetterKind::Oversized,
            format!(
                "the detection is {} bytes, more than the {} allowed ([kafka] max_detection_bytes); not parsed",
                payload.len(),
                input.max_detection_bytes
            ),
        ));
    }
    let text = std::str::from_utf8(payload)
        .map_err(|e| (DeadLetterKind::Invalid, format!("not UTF-8 text: {e}")))?;
    let format = input.formats.get(message.topic()).copied().unwrap_or_default();
    // OCSF's reasons are said as they always were; another format's say which format it is.
    let said = |what: String| if format == rules::Format::Ocsf { what } else { format!("{format} alert: {what}") };
    let event = rules::Event::parse_projected_as(text, projection, format)
        .map_err(|e| (DeadLetterKind::Invalid, said(e.to_string())))?;
    crate::api::check_host_id(event.host()).map_err(|problem| {
        let field = if format == rules::Format::Ocsf { "device.uid" } else { "host" };
        (DeadLetterKind::BadHostId, said(format!("{field}: {problem}")))
    })?;
    Ok(event)
}

/// Parses the detections of a batch (`None` for agents' reports), in the batch's order.
pub(super) fn parse_batch(
    messages: &[OwnedMessage],
    input: &InputRules,
    projection: &rules::Projection,
) -> Vec<Option<Parsed>> {
    messages
        .iter()
        .map(|message| (message.topic() != input.status_topic).then(|| parse_detection(message, input, projection)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules_reading(field: &str) -> rules::Ruleset {
        let text = format!(
            "id: r\ntitle: r\ndetection: {{sel: {{{field}: x}}, condition: sel}}\nresponse: {{isolate: {{mode: manual}}}}\n"
        );
        let files = [rules::SourceFile { name: "r.yaml".into(), text }];
        rules::RuleDirectory::load(&files, None).unwrap_or_else(|d| panic!("{}", d[0])).ruleset().clone()
    }

    #[test]
    fn a_batch_parsed_again_keeps_the_fields_the_new_rules_read_and_its_old_events_for_the_parser() {
        let input = InputRules {
            status_topic: "cordon.status".into(),
            formats: BTreeMap::from([("edr.detections".to_owned(), rules::Format::Ocsf)]),
            max_detection_bytes: 1 << 20,
        };
        let text = br#"{"time":1,"severity_id":5,"device":{"uid":"web-01"},"finding_info":{"uid":"e1"},
            "process":{"name":"x"},"actor":{"user":{"name":"x"}}}"#;
        let message = |topic: &str, offset| {
            OwnedMessage::new(Some(text.to_vec()), None, topic.into(), rdkafka::Timestamp::NotAvailable, 0, offset, None)
        };
        let messages = vec![message("edr.detections", 0), message("cordon.status", 1)];
        let old = Arc::new(rules_reading("process.name").projection().clone());
        let events = parse_batch(&messages, &input, &old);
        let mut batch =
            ConsumedBatch { messages, events, parser: 0, projection: old, received_at: SystemTime::now(), superseded: Vec::new() };
        let fields = |batch: &ConsumedBatch| match &batch.events[0] {
            Some(Ok(event)) => event.fields().root().to_value(),
            other => panic!("expected a detection, got {other:?}"),
        };
        assert!(fields(&batch).get("actor").is_none(), "left out by the old rules");
        let new = Arc::new(rules_reading("actor.user.name").projection().clone());
        batch.parse_again(&input, &new);
        assert_eq!(fields(&batch)["actor"]["user"]["name"], "x");
        assert!(batch.events[1].is_none(), "an agent's report is still not a detection");
        assert!(Arc::ptr_eq(&batch.projection, &new), "parsed once for these rules");
        assert_eq!(batch.superseded.len(), 1, "the old events go back to their parser with the batch");
    }
}
